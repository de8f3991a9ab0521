//! Queries over the read models (`projections`): the catalog, stock levels, carts,
//! orders, a customer's order history and sales analytics, paged, filtered and
//! sorted. Unlike the single-resource reads (`GET /v1/orders/{id}`), which replay a
//! stream and are always current, these answer from tables the projections keep, a
//! little behind the log.
//!
//! Read-your-writes: a command's answer carries the log `position` it wrote; a query
//! given `?after=<position>` waits (at most [`ServerConfig::read_wait_max`]) until
//! the read model has applied it. Every answer says which position it reflects, and
//! `stale: true` when the wait ran out first: the answer is then older than the
//! caller's write.
//!
//! Customers see their own carts, orders and history only, and only published
//! products; staff see everything their role may read (`policy`).
//!
//! The queries run on a pool of their own ([`pool`]): read-only sessions whose
//! statements PostgreSQL cancels past [`ServerConfig::read_statement_timeout`]
//! (`503 query-timeout`). A filter no index serves (a title substring, a category
//! no product has) reads the whole table; the timeout bounds what one request can
//! cost, and the pool's size how many of them run at once, beside a command side
//! whose connections they never take.
//!
//! [`ServerConfig::read_wait_max`]: crate::http::ServerConfig::read_wait_max
//! [`ServerConfig::read_statement_timeout`]: crate::http::ServerConfig::read_statement_timeout

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use domain::{CartStatus, ProductStatus};
use projections::carts::{CartFilter, CartSort, CartSummary};
use projections::catalog::{CatalogFilter, CatalogSort, ProductSummary};
use projections::inventory::{LevelFilter, LevelSort, StockLevel};
use projections::orders::{CustomerHistory, OrderFilter, OrderSort, OrderSummary};
use projections::sales::{DailySales, SalesFilter, SalesSort, SkuSales};
use projections::{Page, PageRequest, Projection};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::http::extract::QueryParams;
use crate::http::problem::{ApiError, Problem};
use crate::http::{json_response, AppState, Principal, Role};

/// Items per page unless `limit` says otherwise.
const PAGE_DEFAULT_ITEMS: u32 = 50;
/// Longest a query waits for a connection of the read pool, and for one to open.
const READ_POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The read-model queries' pool on `database_url`: read-only sessions with the
/// configured statement timeout (added to the URL's own session options, such as
/// the engine's role).
pub(crate) fn pool(
    database_url: &str,
    config: &crate::http::ServerConfig,
) -> anyhow::Result<deadpool_postgres::Pool> {
    let mut pg: tokio_postgres::Config = database_url.parse()?;
    let options = format!(
        "{} -c statement_timeout={} -c default_transaction_read_only=on",
        pg.get_options().unwrap_or(""),
        config.read_statement_timeout.as_millis()
    );
    pg.options(options.trim_start());
    pg.connect_timeout(READ_POOL_WAIT);
    if pg.get_application_name().is_none() {
        pg.application_name("commerce-reads");
    }
    let manager = deadpool_postgres::Manager::from_config(
        pg,
        tokio_postgres::NoTls,
        deadpool_postgres::ManagerConfig {
            recycling_method: deadpool_postgres::RecyclingMethod::Fast,
        },
    );
    Ok(deadpool_postgres::Pool::builder(manager)
        .max_size(config.read_pool_max_connections.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(READ_POOL_WAIT))
        .create_timeout(Some(READ_POOL_WAIT))
        .build()?)
}

/// One page of a read model, and how fresh it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ReadPage<T> {
    pub items: Vec<T>,
    pub offset: u64,
    pub limit: u32,
    /// Whether a next page has at least one item.
    pub has_more: bool,
    /// The read model's checkpoint when it was read: every event up to this log
    /// position is in the answer.
    pub position: u64,
    /// True if `after` was given and the read model had not reached it within the
    /// wait bound: the answer is older than the caller's write.
    pub stale: bool,
}

/// A customer's order history: one entry per currency they ordered in.
#[derive(Debug, Serialize, ToSchema)]
pub struct CustomerHistoryResponse {
    pub customer_id: Uuid,
    pub currencies: Vec<CustomerHistory>,
    /// As in a page: the log position the answer reflects.
    pub position: u64,
    /// As in a page: `after` was not reached within the wait bound.
    pub stale: bool,
}

/// The position a read model reflects, once it has been waited for.
struct Freshness {
    position: u64,
    stale: bool,
}

impl<T> ReadPage<T> {
    fn of(page: Page<T>, freshness: Freshness) -> Self {
        ReadPage {
            items: page.items,
            offset: page.offset,
            limit: page.limit,
            has_more: page.has_more,
            position: freshness.position,
            stale: freshness.stale,
        }
    }
}

/// A connection to the read models, and the position the answer will reflect.
struct ReadModel {
    client: deadpool_postgres::Object,
    freshness: Freshness,
}

impl ReadModel {
    /// Waits until `projection` has applied `after` (at most the configured bound),
    /// then opens a connection and reads the checkpoint the answer will reflect.
    /// The checkpoint is read before the query, so the answer holds at least every
    /// event up to it.
    async fn open(
        state: &AppState,
        projection: Projection,
        after: Option<u64>,
    ) -> Result<Self, ApiError> {
        if let Some(after) = after {
            state
                .checkpoints()
                .wait_until(projection, after, state.config().read_wait_max)
                .await;
        }
        let client = state.read_pool().get().await.map_err(|e| {
            ApiError::from(eventstore::StoreError::Unavailable(format!(
                "no connection for the read models: {e}"
            )))
        })?;
        let position: i64 = client
            .query_opt(
                "SELECT position FROM projection_checkpoints WHERE name = $1",
                &[&projection.name()],
            )
            .await
            .map_err(|e| ApiError::from(eventstore::StoreError::Unavailable(e.to_string())))?
            .map_or(0, |row| row.get(0));
        let position = position as u64;
        let stale = after.is_some_and(|after| position < after);
        Ok(ReadModel {
            client,
            freshness: Freshness { position, stale },
        })
    }

    /// The 200 answer with a page the read model gave.
    fn answer<T: Serialize>(
        self,
        found: Result<Page<T>, projections::ProjectionError>,
    ) -> Result<Response, ApiError> {
        Ok(json_response(
            StatusCode::OK,
            &ReadPage::of(found?, self.freshness),
        ))
    }
}

fn page(offset: Option<u64>, limit: Option<u32>) -> PageRequest {
    PageRequest::new(offset.unwrap_or(0), limit.unwrap_or(PAGE_DEFAULT_ITEMS))
}

/// The customer a customer's query is confined to: their own id, which a
/// `customer_id` parameter may repeat but not change. Staff may name anyone, or no
/// one (everyone).
fn confine(principal: &Principal, asked: Option<Uuid>) -> Result<Option<Uuid>, ApiError> {
    if principal.role != Role::Customer {
        return Ok(asked);
    }
    let own = principal.customer_id().ok_or_else(|| {
        ApiError::forbidden("a guest reads its cart by id; sign in to list carts and orders")
    })?;
    let own = *own.as_uuid();
    match asked {
        Some(other) if other != own => Err(ApiError::forbidden(
            "a customer may read their own carts and orders only",
        )),
        _ => Ok(Some(own)),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ProductsQuery {
    /// `draft`, `published`, `unpublished` or `discontinued`. Customers see
    /// published products only.
    #[param(value_type = Option<String>)]
    pub status: Option<ProductStatus>,
    /// Exactly this brand.
    pub brand: Option<String>,
    /// A category at any level of the product's path.
    pub category: Option<String>,
    /// Words in the title (case-insensitive substring).
    pub text: Option<String>,
    /// Only products with a price in this currency (ISO 4217).
    pub currency: Option<String>,
    /// Only products with a unit available.
    pub in_stock: Option<bool>,
    /// `title` (default), `recently_updated` or `newest`.
    pub sort: Option<CatalogSort>,
    /// Items to skip (at most 100,000).
    pub offset: Option<u64>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<u32>,
    /// Wait until the catalog has applied this log position (read-your-writes).
    pub after: Option<u64>,
}

/// The product catalog from its read model: SKU counts, prices from, units
/// available. Any role; customers see published products only.
#[utoipa::path(get, path = "/v1/products", tag = "catalog", params(ProductsQuery),
    responses((status = 200, body = ReadPage<ProductSummary>),
        (status = "default", description = "A problem: `invalid-parameter` (unknown status or sort, page too deep or too large), `forbidden` (a customer asking for unpublished products)", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn products(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<ProductsQuery>,
) -> Result<Response, ApiError> {
    let status = match (principal.role, query.status) {
        (Role::Customer, None | Some(ProductStatus::Published)) => Some(ProductStatus::Published),
        (Role::Customer, Some(_)) => {
            return Err(ApiError::forbidden("customers see published products only"))
        }
        (_, status) => status,
    };
    let filter = CatalogFilter {
        status,
        brand: query.brand,
        category: query.category,
        text: query.text,
        currency: query.currency,
        in_stock: query.in_stock.unwrap_or(false),
    };
    let read = ReadModel::open(&state, Projection::Catalog, query.after).await?;
    let found = projections::catalog::list(
        &read.client,
        &filter,
        query.sort.unwrap_or_default(),
        page(query.offset, query.limit),
    )
    .await;
    read.answer(found)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StockLevelsQuery {
    pub sku: Option<String>,
    pub warehouse: Option<String>,
    /// Only levels with fewer units available than this (low stock).
    pub available_below: Option<i64>,
    /// `sku` (default), `available_asc` or `available_desc`.
    pub sort: Option<LevelSort>,
    /// Items to skip (at most 100,000).
    pub offset: Option<u64>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<u32>,
    /// Wait until the inventory read model has applied this log position.
    pub after: Option<u64>,
}

/// Stock per SKU and warehouse: on hand, reserved, available. Staff.
#[utoipa::path(get, path = "/v1/inventory", tag = "inventory", params(StockLevelsQuery),
    responses((status = 200, body = ReadPage<StockLevel>),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn stock_levels(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<StockLevelsQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Auditor, Role::Analyst])?;
    let filter = LevelFilter {
        sku: query.sku,
        warehouse: query.warehouse,
        available_below: query.available_below,
    };
    let read = ReadModel::open(&state, Projection::Inventory, query.after).await?;
    let found = projections::inventory::levels(
        &read.client,
        &filter,
        query.sort.unwrap_or_default(),
        page(query.offset, query.limit),
    )
    .await;
    read.answer(found)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CartsQuery {
    /// Staff: one customer's carts. A customer's own id at most.
    pub customer_id: Option<Uuid>,
    /// `open`, `checked_out`, `abandoned` or `closed`.
    #[param(value_type = Option<String>)]
    pub status: Option<CartStatus>,
    pub currency: Option<String>,
    /// Only carts last changed before this time (stale carts), RFC 3339.
    pub updated_before: Option<DateTime<Utc>>,
    /// `recently_updated` (default) or `total_desc`.
    pub sort: Option<CartSort>,
    /// Items to skip (at most 100,000).
    pub offset: Option<u64>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<u32>,
    /// Wait until the carts read model has applied this log position.
    pub after: Option<u64>,
}

/// Carts with their totals: a customer's own, or any for staff (admin, auditor).
/// Guests read their cart by id.
#[utoipa::path(get, path = "/v1/carts", tag = "carts", params(CartsQuery),
    responses((status = 200, body = ReadPage<CartSummary>),
        (status = "default", description = "A problem: `forbidden` for another customer's carts or a guest", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn carts(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<CartsQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Customer, Role::Admin, Role::Auditor])?;
    let filter = CartFilter {
        customer_id: confine(&principal, query.customer_id)?,
        status: query.status,
        currency: query.currency,
        updated_before: query.updated_before,
    };
    let read = ReadModel::open(&state, Projection::Carts, query.after).await?;
    let found = projections::carts::list(
        &read.client,
        &filter,
        query.sort.unwrap_or_default(),
        page(query.offset, query.limit),
    )
    .await;
    read.answer(found)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OrdersQuery {
    /// Staff: one customer's orders. A customer's own id at most.
    pub customer_id: Option<Uuid>,
    /// `placed`, `stock_reserved`, `payment_authorized`, `confirmed`, `shipped`,
    /// `delivered`, `cancelled` or `rejected`.
    pub status: Option<String>,
    pub currency: Option<String>,
    /// Placed at or after this time, RFC 3339.
    pub placed_from: Option<DateTime<Utc>>,
    /// Placed before this time, RFC 3339.
    pub placed_before: Option<DateTime<Utc>>,
    /// Only orders with a line of this SKU.
    pub sku: Option<String>,
    /// `newest` (default), `oldest` or `total_desc`.
    pub sort: Option<OrderSort>,
    /// Items to skip (at most 100,000).
    pub offset: Option<u64>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<u32>,
    /// Wait until the orders read model has applied this log position.
    pub after: Option<u64>,
}

/// Orders with their status and the time of each transition: a customer's own, or
/// any for staff (admin, auditor).
#[utoipa::path(get, path = "/v1/orders", tag = "orders", params(OrdersQuery),
    responses((status = 200, body = ReadPage<OrderSummary>),
        (status = "default", description = "A problem: `invalid-parameter` (unknown status), `forbidden` for another customer's orders or a guest", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn orders(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<OrdersQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Customer, Role::Admin, Role::Auditor])?;
    let filter = OrderFilter {
        customer_id: confine(&principal, query.customer_id)?,
        status: query.status,
        currency: query.currency,
        placed_from: query.placed_from,
        placed_before: query.placed_before,
        sku: query.sku,
    };
    let read = ReadModel::open(&state, Projection::Orders, query.after).await?;
    let found = projections::orders::list(
        &read.client,
        &filter,
        query.sort.unwrap_or_default(),
        page(query.offset, query.limit),
    )
    .await;
    read.answer(found)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AfterQuery {
    /// Wait until the read model has applied this log position.
    pub after: Option<u64>,
}

/// A customer's order history per currency: orders placed, confirmed, delivered,
/// cancelled, rejected, and totals. The customer (`me` names their own), or staff
/// (admin, auditor).
#[utoipa::path(get, path = "/v1/customers/{customer_id}/history", tag = "orders",
    params(("customer_id" = String, Path, description = "The customer's id, or `me`"), AfterQuery),
    responses((status = 200, body = CustomerHistoryResponse),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn customer_history(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    QueryParams(query): QueryParams<AfterQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Customer, Role::Admin, Role::Auditor])?;
    let customer_id = match (raw_id.as_str(), principal.customer_id()) {
        // A customer's own history, without knowing the id derived from their `sub`.
        ("me", Some(own)) => *own.as_uuid(),
        ("me", None) => {
            return Err(ApiError::bad_parameter(
                "customer_id",
                "`me` names a signed-in customer; give the customer's id",
            ))
        }
        _ => Uuid::parse_str(&raw_id)
            .map_err(|e| ApiError::bad_parameter("customer_id", e.to_string()))?,
    };
    // Another customer's history is a 404, as their orders are.
    if !principal.may_see_customer(Some(domain::CustomerId::from_uuid(customer_id))) {
        return Err(ApiError::not_found("customer"));
    }
    let read = ReadModel::open(&state, Projection::Orders, query.after).await?;
    let currencies = projections::orders::customer_history(&read.client, customer_id).await?;
    let freshness = read.freshness;
    Ok(json_response(
        StatusCode::OK,
        &CustomerHistoryResponse {
            customer_id,
            currencies,
            position: freshness.position,
            stale: freshness.stale,
        },
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SalesQuery {
    /// First day included (UTC), `YYYY-MM-DD`.
    pub from: Option<NaiveDate>,
    /// Last day included (UTC), `YYYY-MM-DD`.
    pub to: Option<NaiveDate>,
    pub sku: Option<String>,
    pub currency: Option<String>,
    /// Daily figures: `day` (default) or `revenue_desc`. Top SKUs are always by
    /// sold revenue.
    pub sort: Option<SalesSort>,
    /// Items to skip (at most 100,000).
    pub offset: Option<u64>,
    /// Items per page, 1..=500 (default 50).
    pub limit: Option<u32>,
    /// Wait until the sales read model has applied this log position.
    pub after: Option<u64>,
}

impl SalesQuery {
    fn filter(&self) -> Result<SalesFilter, ApiError> {
        if let (Some(from), Some(to)) = (self.from, self.to) {
            if from > to {
                return Err(ApiError::bad_parameter(
                    "from",
                    format!("from {from} is after to {to}"),
                ));
            }
        }
        Ok(SalesFilter {
            from: self.from,
            to: self.to,
            sku: self.sku.clone(),
            currency: self.currency.clone(),
        })
    }
}

/// Sales per day (UTC), SKU and currency: units and revenue ordered, sold
/// (confirmed) and cancelled. Staff (admin, auditor, analyst).
#[utoipa::path(get, path = "/v1/sales/daily", tag = "analytics", params(SalesQuery),
    responses((status = 200, body = ReadPage<DailySales>),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn sales_daily(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<SalesQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Auditor, Role::Analyst])?;
    let filter = query.filter()?;
    let read = ReadModel::open(&state, Projection::Sales, query.after).await?;
    let found = projections::sales::daily(
        &read.client,
        &filter,
        query.sort.unwrap_or_default(),
        page(query.offset, query.limit),
    )
    .await;
    read.answer(found)
}

/// The SKUs with the highest sold revenue over the filtered days, per currency.
/// Staff (admin, auditor, analyst).
#[utoipa::path(get, path = "/v1/sales/top-skus", tag = "analytics", params(SalesQuery),
    responses((status = 200, body = ReadPage<SkuSales>),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn top_skus(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<SalesQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin, Role::Auditor, Role::Analyst])?;
    if query.sort.is_some() {
        return Err(ApiError::bad_parameter(
            "sort",
            "top SKUs are always sorted by sold revenue",
        ));
    }
    let filter = query.filter()?;
    let read = ReadModel::open(&state, Projection::Sales, query.after).await?;
    let found =
        projections::sales::top_skus(&read.client, &filter, page(query.offset, query.limit)).await;
    read.answer(found)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use eventstore::testing::test_database;

    use crate::http::ServerConfig;

    #[tokio::test]
    async fn read_sessions_are_read_only_and_cancel_a_statement_past_the_timeout() {
        let db = test_database().await.expect("a test database");
        let config = ServerConfig {
            read_statement_timeout: Duration::from_millis(200),
            ..ServerConfig::default()
        };
        let pool = super::pool(&db.url, &config).expect("a pool");
        let client = pool.get().await.expect("a connection");
        let show = |name: &'static str| {
            let client = &client;
            async move {
                let row = client.query_one(&format!("SHOW {name}"), &[]).await;
                row.expect("a setting").get::<_, String>(0)
            }
        };
        assert_eq!(show("statement_timeout").await, "200ms");
        assert_eq!(show("default_transaction_read_only").await, "on");

        let write = client
            .batch_execute("CREATE TABLE read_sessions_write (x int)")
            .await
            .expect_err("a read session cannot write");
        assert_eq!(
            write.code(),
            Some(&tokio_postgres::error::SqlState::READ_ONLY_SQL_TRANSACTION)
        );
        let slow = client
            .query("SELECT pg_sleep(5)", &[])
            .await
            .expect_err("cancelled by the statement timeout");
        assert_eq!(
            slow.code(),
            Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
        );
    }
}
