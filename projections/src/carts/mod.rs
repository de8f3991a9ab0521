//! Carts: `read_models.carts` (one row per cart: owner, status, totals, times) and
//! `read_models.cart_lines` (its current lines).

pub(crate) mod model;

use chrono::{DateTime, Utc};
use domain::CartStatus;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::error::db_error;
use crate::page::Select;
use crate::{Page, PageRequest, ProjectionError};

/// A cart without its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CartSummary {
    pub cart_id: Uuid,
    /// `guest` or `customer`.
    pub owner_kind: String,
    pub customer_id: Option<Uuid>,
    pub guest_token: Option<Uuid>,
    pub currency: String,
    pub status: String,
    pub line_count: i32,
    pub item_count: i64,
    pub total_minor: i64,
    pub checked_out_total_minor: Option<i64>,
    pub order_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
    pub checked_out_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// A cart with its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartView {
    #[serde(flatten)]
    pub cart: CartSummary,
    pub lines: Vec<CartLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CartLine {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_minor: i64,
    pub line_total_minor: i64,
}

/// Which carts to list; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CartFilter {
    pub customer_id: Option<Uuid>,
    pub status: Option<CartStatus>,
    pub currency: Option<String>,
    /// Only carts last changed before this time (stale carts).
    pub updated_before: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CartSort {
    /// Most recently changed first.
    #[default]
    RecentlyUpdated,
    /// Largest total first.
    TotalDesc,
}

const SELECT_CART: &str =
    "SELECT cart_id, owner_kind, customer_id, guest_token, currency, status, \
     line_count, item_count, total_minor, checked_out_total_minor, order_id, created_at, \
     checked_out_at, ended_at, updated_at FROM read_models.carts";

fn cart_from(row: &Row) -> Result<CartSummary, ProjectionError> {
    Ok(CartSummary {
        cart_id: row.get(0),
        owner_kind: row.get(1),
        customer_id: row.get(2),
        guest_token: row.get(3),
        currency: row.get(4),
        status: row.get(5),
        line_count: row.get(6),
        item_count: row.get(7),
        total_minor: row.get(8),
        checked_out_total_minor: row.get(9),
        order_id: row.get(10),
        created_at: row.get(11),
        checked_out_at: row.get(12),
        ended_at: row.get(13),
        updated_at: row.get(14),
    })
}

/// One cart with its lines in the order they were added.
pub async fn get(client: &Client, cart_id: Uuid) -> Result<Option<CartView>, ProjectionError> {
    let mut select = Select::new(SELECT_CART);
    select.and("cart_id = $?", cart_id);
    let Some(cart) = select.all(client, "cart_id", cart_from).await?.pop() else {
        return Ok(None);
    };
    let lines = client
        .query(
            "SELECT sku, quantity, unit_price_minor, line_total_minor \
             FROM read_models.cart_lines WHERE cart_id = $1 ORDER BY line_no",
            &[&cart_id],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| CartLine {
            sku: row.get(0),
            quantity: row.get(1),
            unit_price_minor: row.get(2),
            line_total_minor: row.get(3),
        })
        .collect();
    Ok(Some(CartView { cart, lines }))
}

/// A page of carts.
pub async fn list(
    client: &Client,
    filter: &CartFilter,
    sort: CartSort,
    page: PageRequest,
) -> Result<Page<CartSummary>, ProjectionError> {
    let mut select = Select::new(SELECT_CART);
    select.and_some("customer_id = $?", filter.customer_id);
    select.and_some("status = $?", filter.status.map(|s| s.as_str().to_owned()));
    select.and_some("currency = $?", filter.currency.clone());
    select.and_some("updated_at < $?", filter.updated_before);
    let order = match sort {
        CartSort::RecentlyUpdated => "updated_at DESC, cart_id",
        CartSort::TotalDesc => "total_minor DESC, cart_id",
    };
    select.page(client, order, page, cart_from).await
}
