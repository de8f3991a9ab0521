//! Orders: `read_models.orders` (one row per order: status, totals, the time of each
//! transition), `read_models.order_lines`, and `read_models.customer_orders` (a
//! customer's order history per currency: counts, totals, first and last order).

pub(crate) mod model;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::error::db_error;
use crate::page::Select;
use crate::{Page, PageRequest, ProjectionError};

pub use model::status::ALL as ORDER_STATUSES;

/// An order without its lines and address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct OrderSummary {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub cart_id: Uuid,
    pub status: String,
    /// Why it was cancelled or rejected.
    pub status_reason: Option<String>,
    pub currency: String,
    pub total_minor: i64,
    pub line_count: i32,
    pub item_count: i64,
    pub ship_country: String,
    pub placed_at: DateTime<Utc>,
    pub stock_reserved_at: Option<DateTime<Utc>>,
    pub payment_authorized_at: Option<DateTime<Utc>>,
    pub confirmed_at: Option<DateTime<Utc>>,
    pub shipped_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub rejected_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// An order with everything the read model has on it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OrderView {
    #[serde(flatten)]
    pub order: OrderSummary,
    pub payment_id: Option<Uuid>,
    pub tracking_number: Option<String>,
    /// As the order carries it (name, lines, city, postal code, country, email, phone).
    pub shipping_address: Value,
    pub lines: Vec<OrderLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderLine {
    pub line_no: i32,
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// A customer's order history in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CustomerHistory {
    pub customer_id: Uuid,
    pub currency: String,
    pub orders_placed: i32,
    pub orders_confirmed: i32,
    pub orders_delivered: i32,
    pub orders_cancelled: i32,
    pub orders_rejected: i32,
    pub placed_total_minor: i64,
    /// Totals of confirmed orders that were not cancelled afterwards.
    pub confirmed_total_minor: i64,
    pub first_order_at: DateTime<Utc>,
    pub last_order_at: DateTime<Utc>,
}

/// Which orders to list; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct OrderFilter {
    pub customer_id: Option<Uuid>,
    /// One of [`ORDER_STATUSES`].
    pub status: Option<String>,
    pub currency: Option<String>,
    /// Placed at or after this time.
    pub placed_from: Option<DateTime<Utc>>,
    /// Placed before this time.
    pub placed_before: Option<DateTime<Utc>>,
    /// Only orders with a line of this SKU.
    pub sku: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OrderSort {
    /// Most recently placed first.
    #[default]
    Newest,
    Oldest,
    /// Largest total first.
    TotalDesc,
}

const SELECT_ORDER: &str = "SELECT order_id, customer_id, cart_id, status, status_reason, \
     currency, total_minor, line_count, item_count, ship_country, placed_at, \
     stock_reserved_at, payment_authorized_at, confirmed_at, shipped_at, delivered_at, \
     cancelled_at, rejected_at, updated_at, payment_id, tracking_number, shipping_address \
     FROM read_models.orders o";

fn summary_from(row: &Row) -> Result<OrderSummary, ProjectionError> {
    Ok(OrderSummary {
        order_id: row.get(0),
        customer_id: row.get(1),
        cart_id: row.get(2),
        status: row.get(3),
        status_reason: row.get(4),
        currency: row.get(5),
        total_minor: row.get(6),
        line_count: row.get(7),
        item_count: row.get(8),
        ship_country: row.get(9),
        placed_at: row.get(10),
        stock_reserved_at: row.get(11),
        payment_authorized_at: row.get(12),
        confirmed_at: row.get(13),
        shipped_at: row.get(14),
        delivered_at: row.get(15),
        cancelled_at: row.get(16),
        rejected_at: row.get(17),
        updated_at: row.get(18),
    })
}

/// One order with its lines; `None` if the read model has no such order.
pub async fn get(client: &Client, order_id: Uuid) -> Result<Option<OrderView>, ProjectionError> {
    let mut select = Select::new(SELECT_ORDER);
    select.and("order_id = $?", order_id);
    let rows = select
        .all(client, "order_id", |row| {
            Ok((summary_from(row)?, row.get(19), row.get(20), row.get(21)))
        })
        .await?;
    let Some((order, payment_id, tracking_number, shipping_address)) = rows.into_iter().next()
    else {
        return Ok(None);
    };
    let lines = client
        .query(
            "SELECT line_no, sku, quantity, unit_price_minor, line_total_minor \
             FROM read_models.order_lines WHERE order_id = $1 ORDER BY line_no",
            &[&order_id],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| OrderLine {
            line_no: row.get(0),
            sku: row.get(1),
            quantity: row.get(2),
            unit_price_minor: row.get(3),
            line_total_minor: row.get(4),
        })
        .collect();
    Ok(Some(OrderView {
        order,
        payment_id,
        tracking_number,
        shipping_address,
        lines,
    }))
}

/// A page of orders.
pub async fn list(
    client: &Client,
    filter: &OrderFilter,
    sort: OrderSort,
    page: PageRequest,
) -> Result<Page<OrderSummary>, ProjectionError> {
    if let Some(status) = &filter.status {
        if !ORDER_STATUSES.contains(&status.as_str()) {
            return Err(ProjectionError::InvalidQuery {
                field: "status",
                reason: format!("{status:?} is not one of {}", ORDER_STATUSES.join(", ")),
            });
        }
    }
    let mut select = Select::new(SELECT_ORDER);
    select.and_some("customer_id = $?", filter.customer_id);
    select.and_some("status = $?", filter.status.clone());
    select.and_some("currency = $?", filter.currency.clone());
    select.and_some("placed_at >= $?", filter.placed_from);
    select.and_some("placed_at < $?", filter.placed_before);
    select.and_some(
        "EXISTS (SELECT 1 FROM read_models.order_lines l \
         WHERE l.order_id = o.order_id AND l.sku = $?)",
        filter.sku.clone(),
    );
    let order = match sort {
        OrderSort::Newest => "placed_at DESC, order_id",
        OrderSort::Oldest => "placed_at, order_id",
        OrderSort::TotalDesc => "total_minor DESC, order_id",
    };
    select.page(client, order, page, summary_from).await
}

/// A customer's orders, most recent first.
pub async fn for_customer(
    client: &Client,
    customer_id: Uuid,
    page: PageRequest,
) -> Result<Page<OrderSummary>, ProjectionError> {
    let filter = OrderFilter {
        customer_id: Some(customer_id),
        ..OrderFilter::default()
    };
    list(client, &filter, OrderSort::Newest, page).await
}

/// A customer's order history, one entry per currency they ordered in.
pub async fn customer_history(
    client: &Client,
    customer_id: Uuid,
) -> Result<Vec<CustomerHistory>, ProjectionError> {
    let mut select = Select::new(
        "SELECT customer_id, currency, orders_placed, orders_confirmed, orders_delivered, \
         orders_cancelled, orders_rejected, placed_total_minor, confirmed_total_minor, \
         first_order_at, last_order_at FROM read_models.customer_orders",
    );
    select.and("customer_id = $?", customer_id);
    select
        .all(client, "currency", |row| {
            Ok(CustomerHistory {
                customer_id: row.get(0),
                currency: row.get(1),
                orders_placed: row.get(2),
                orders_confirmed: row.get(3),
                orders_delivered: row.get(4),
                orders_cancelled: row.get(5),
                orders_rejected: row.get(6),
                placed_total_minor: row.get(7),
                confirmed_total_minor: row.get(8),
                first_order_at: row.get(9),
                last_order_at: row.get(10),
            })
        })
        .await
}
