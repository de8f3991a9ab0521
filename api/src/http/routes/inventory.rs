//! Stock per SKU: admins receive and adjust it; anyone signed in reads it (rebuilt
//! from the SKU's stream).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::{Inventory, InventoryCommand, Quantity, Sku, WarehouseId, DEFAULT_WAREHOUSE};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::http::command::{CommandAccepted, CommandMeta};
use crate::http::extract::JsonBody;
use crate::http::problem::{ApiError, Problem};
use crate::http::views::{replay, StockView};
use crate::http::{json_response, AppState, Principal, Role};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceiveStockRequest {
    /// The warehouse receiving the goods (default `main`).
    #[schema(value_type = Option<String>)]
    pub warehouse: Option<WarehouseId>,
    /// 1..=1,000,000 units.
    #[schema(value_type = u32, minimum = 1, maximum = 1000000)]
    pub quantity: Quantity,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdjustStockRequest {
    #[schema(value_type = Option<String>)]
    pub warehouse: Option<WarehouseId>,
    /// Non-zero, at most 1,000,000 either way; may not take a warehouse below what
    /// it has reserved.
    pub delta: i64,
    /// Why (a count, damage, loss): 1..=200 characters.
    pub reason: String,
}

pub(crate) fn sku(raw: &str) -> Result<Sku, ApiError> {
    Sku::parse(raw).map_err(|e| ApiError::bad_parameter("sku", e.to_string()))
}

fn warehouse(requested: Option<WarehouseId>) -> Result<WarehouseId, ApiError> {
    match requested {
        Some(w) => Ok(w),
        None => WarehouseId::parse(DEFAULT_WAREHOUSE).map_err(ApiError::from),
    }
}

/// Stock arrived at a warehouse. Admins only.
#[utoipa::path(post, path = "/v1/inventory/{sku}/receipts", tag = "inventory", request_body = ReceiveStockRequest,
    params(("sku" = String, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn receive(
    State(state): State<AppState>,
    Path(raw_sku): Path<String>,
    meta: CommandMeta,
    body: JsonBody<ReceiveStockRequest>,
) -> Response {
    let sku = match meta
        .principal
        .require(&[Role::Admin])
        .and_then(|()| sku(&raw_sku))
    {
        Ok(sku) => sku,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    meta.run(
        state.clone(),
        "ReceiveStock",
        Some(&fingerprint),
        |context| async move {
            let command = InventoryCommand::ReceiveStock {
                sku: sku.clone(),
                warehouse: warehouse(request.warehouse)?,
                quantity: request.quantity,
            };
            let committed = state
                .commands()
                .inventory()
                .execute(command, &context)
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                CommandAccepted::new().id("sku", sku).wrote(&committed),
            ))
        },
    )
    .await
}

/// A correction after a count, damage or loss. Admins only.
#[utoipa::path(post, path = "/v1/inventory/{sku}/adjustments", tag = "inventory", request_body = AdjustStockRequest,
    params(("sku" = String, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn adjust(
    State(state): State<AppState>,
    Path(raw_sku): Path<String>,
    meta: CommandMeta,
    body: JsonBody<AdjustStockRequest>,
) -> Response {
    let sku = match meta
        .principal
        .require(&[Role::Admin])
        .and_then(|()| sku(&raw_sku))
    {
        Ok(sku) => sku,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    meta.run(
        state.clone(),
        "AdjustStock",
        Some(&fingerprint),
        |context| async move {
            let command = InventoryCommand::AdjustStock {
                sku: sku.clone(),
                warehouse: warehouse(request.warehouse)?,
                delta: request.delta,
                reason: request.reason,
            };
            let committed = state
                .commands()
                .inventory()
                .execute(command, &context)
                .await?;
            Ok((
                StatusCode::ACCEPTED,
                CommandAccepted::new().id("sku", sku).wrote(&committed),
            ))
        },
    )
    .await
}

/// A SKU's stock as its stream says now. Any role.
#[utoipa::path(get, path = "/v1/inventory/{sku}", tag = "inventory",
    params(("sku" = String, Path)),
    responses((status = 200, body = StockView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    _principal: Principal,
    Path(raw_sku): Path<String>,
) -> Result<Response, ApiError> {
    let sku = sku(&raw_sku)?;
    let replayed = replay::<Inventory>(state.store(), &Inventory::stream_id(&sku)).await?;
    if replayed.version == 0 {
        return Err(ApiError::not_found("SKU in stock"));
    }
    Ok(json_response(
        StatusCode::OK,
        &StockView::of(sku.as_str(), &replayed.state, replayed.version),
    ))
}
