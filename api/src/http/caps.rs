//! Per-account caps (OWASP API6, unrestricted access to sensitive business flows):
//! how many carts one customer (or guest) keeps open at once, how many checkouts
//! they have in flight (a checked-out cart whose saga has not closed or reopened it),
//! and how many units of one SKU they hold across their open carts and the carts
//! being checked out, whose units the saga holds in reservations (stock hoarding).
//!
//! The counts come from the `carts` read model that `commerce serve` keeps, so a cap
//! lags the log by the projection's delay: a burst may pass it by what the read
//! model has not seen yet, which the per-principal rate limit bounds. Where no
//! projection runs, the read model stays empty and the caps admit everything. Staff
//! acting on a customer's cart are not capped.

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::{Method, StatusCode};
use domain::CartOwner;
use serde::Deserialize;
use uuid::Uuid;

use super::problem::ApiError;
use super::{AppState, Principal, Role};

/// Default most open carts of one account.
pub const OPEN_CARTS_MAX: u32 = 20;
/// Default most units of one SKU across one account's open and checking-out carts.
pub const SKU_UNITS_MAX: u64 = 100;
/// Default most checkouts of one account in flight at once.
pub const CHECKOUTS_IN_FLIGHT_MAX: u32 = 3;

/// The caps, from configuration; zero turns one off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountCaps {
    pub open_carts_max: u32,
    pub sku_units_max: u64,
    pub checkouts_in_flight_max: u32,
}

impl AccountCaps {
    /// No caps (the library's default; `commerce serve` turns them on).
    pub const OFF: AccountCaps = AccountCaps {
        open_carts_max: 0,
        sku_units_max: 0,
        checkouts_in_flight_max: 0,
    };
}

impl Default for AccountCaps {
    fn default() -> Self {
        AccountCaps {
            open_carts_max: OPEN_CARTS_MAX,
            sku_units_max: SKU_UNITS_MAX,
            checkouts_in_flight_max: CHECKOUTS_IN_FLIGHT_MAX,
        }
    }
}

// An owner is `coalesce(customer_id, guest_token)` (a cart has exactly one of them),
// the expression of the index these counts use (`carts_owner_status_idx`).
const OPEN_CARTS: &str = "SELECT count(*) FROM read_models.carts \
     WHERE coalesce(customer_id, guest_token) = $1 AND status = 'open'";
/// A checked-out cart is a checkout in flight until the saga closes it (order
/// placed) or reopens it (checkout failed).
const CHECKOUTS_IN_FLIGHT: &str = "SELECT count(*) FROM read_models.carts \
     WHERE coalesce(customer_id, guest_token) = $1 AND status = 'checked_out'";
/// Units of a SKU in the account's open carts and those being checked out (held in
/// reservations), except the cart being changed when
/// its line's quantity is set (`$3`; a nil id excludes nothing).
const SKU_UNITS: &str = "SELECT coalesce(sum(l.quantity), 0)::bigint \
     FROM read_models.cart_lines l JOIN read_models.carts c ON c.cart_id = l.cart_id \
     WHERE coalesce(c.customer_id, c.guest_token) = $1 \
       AND c.status IN ('open', 'checked_out') \
       AND l.sku = $2 AND c.cart_id <> $3";

/// The part of an add-line or set-quantity body the caps read, as the domain's
/// types: anything else (a body that does not parse, a quantity out of range) is
/// left to the handler to refuse precisely.
#[derive(Deserialize)]
struct LineBody {
    sku: Option<domain::Sku>,
    quantity: Option<domain::Quantity>,
}

/// Checks the caps that apply to `route`, reading the body where the cap needs it,
/// and hands the request back (with its body) if they pass.
pub async fn check(
    state: &AppState,
    principal: &Principal,
    route: &str,
    request: Request,
) -> Result<Request, ApiError> {
    let caps = state.config().account_caps;
    if principal.role != Role::Customer {
        return Ok(request);
    }
    let Some(owner) = principal.cart_owner().map(owner_uuid) else {
        return Ok(request);
    };
    let method = request.method().clone();
    match (method, route) {
        (Method::POST, "/v1/carts") if caps.open_carts_max > 0 => {
            let open = count(state, OPEN_CARTS, &[&owner]).await?;
            if open >= i64::from(caps.open_carts_max) {
                return Err(too_many_carts(caps.open_carts_max));
            }
            Ok(request)
        }
        (Method::POST, "/v1/carts/{cart_id}/checkout") if caps.checkouts_in_flight_max > 0 => {
            let in_flight = count(state, CHECKOUTS_IN_FLIGHT, &[&owner]).await?;
            if in_flight >= i64::from(caps.checkouts_in_flight_max) {
                return Err(too_many_checkouts(caps.checkouts_in_flight_max));
            }
            Ok(request)
        }
        (Method::POST, "/v1/carts/{cart_id}/lines")
        | (Method::PUT, "/v1/carts/{cart_id}/lines/{sku}")
            if caps.sku_units_max > 0 =>
        {
            let adds = request.method() == Method::POST;
            let cart_in_path = request
                .uri()
                .path()
                .split('/')
                .nth(3)
                .and_then(|id| Uuid::parse_str(id).ok());
            let sku_in_path = request.uri().path().split('/').nth(5).map(str::to_owned);
            let (parts, body) = request.into_parts();
            let limit = state.config().body_limit_bytes;
            let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "the request body is larger than the server accepts",
                )
            })?;
            let line: Option<LineBody> = serde_json::from_slice(&bytes).ok();
            let request = Request::from_parts(parts, Body::from(bytes));
            let Some(line) = line else {
                return Ok(request);
            };
            let sku = line.sku.map(|sku| sku.as_str().to_owned()).or(sku_in_path);
            let (Some(sku), Some(quantity)) = (sku, line.quantity.map(|q| u64::from(q.get())))
            else {
                return Ok(request);
            };
            // Setting a line's quantity replaces what that cart holds; adding grows it.
            let except = if adds {
                Uuid::nil()
            } else {
                cart_in_path.unwrap_or_else(Uuid::nil)
            };
            let held = count(state, SKU_UNITS, &[&owner, &sku, &except]).await?;
            let held = u64::try_from(held).unwrap_or(0);
            if held.saturating_add(quantity) > caps.sku_units_max {
                return Err(too_many_units(&sku, held, quantity, caps.sku_units_max));
            }
            Ok(request)
        }
        _ => Ok(request),
    }
}

fn owner_uuid(owner: CartOwner) -> Uuid {
    match owner {
        CartOwner::Guest(token) => *token.as_uuid(),
        CartOwner::Customer(customer) => *customer.as_uuid(),
    }
}

/// Longest a cap's count may take, in milliseconds: a read model that does not
/// answer refuses the command (503) rather than holding it or letting it past.
pub const COUNT_TIMEOUT_MS: u64 = 2_000;

async fn count(
    state: &AppState,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<i64, ApiError> {
    let counted = async {
        let client = state.store().connection().await?;
        let row = match client.prepare_cached(sql).await {
            Ok(statement) => client.query_one(&statement, params).await,
            Err(e) => Err(e),
        };
        Ok::<_, ApiError>(row)
    };
    let row =
        match tokio::time::timeout(std::time::Duration::from_millis(COUNT_TIMEOUT_MS), counted)
            .await
        {
            Ok(row) => row?,
            Err(_) => {
                return Err(ApiError::from(eventstore::StoreError::Unavailable(
                    format!("the carts read model did not answer within {COUNT_TIMEOUT_MS} ms"),
                )))
            }
        };
    match row {
        Ok(row) => Ok(row.get(0)),
        // No read models in this database (a process that runs no projections):
        // nothing to count against.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => Ok(0),
        Err(e) => Err(read_model_error(e)),
    }
}

fn read_model_error(e: tokio_postgres::Error) -> ApiError {
    ApiError::from(eventstore::StoreError::Unavailable(format!(
        "the carts read model: {e}"
    )))
}

fn too_many_carts(max: u32) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "open-carts-limit",
        format!("an account may keep at most {max} carts open; check out or empty one first"),
    );
    error.extensions.insert("max".into(), max.into());
    error
}

fn too_many_checkouts(max: u32) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "checkouts-in-flight-limit",
        format!("an account may have at most {max} checkouts in flight; wait for one to finish"),
    );
    error.extensions.insert("max".into(), max.into());
    error
}

fn too_many_units(sku: &str, held: u64, requested: u64, max: u64) -> ApiError {
    let mut error = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "sku-units-limit",
        format!(
            "an account may hold at most {max} units of {sku} across its open carts \
             ({held} held, {requested} asked for)"
        ),
    )
    .with_field("quantity");
    error.extensions.insert("sku".into(), sku.into());
    error.extensions.insert("held".into(), held.into());
    error.extensions.insert("max".into(), max.into());
    error
}
