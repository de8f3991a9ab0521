//! Stock per SKU and warehouse: `read_models.inventory_levels` (on hand, reserved,
//! available = on hand - reserved, allocation priority).

pub(crate) mod model;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Row};

use crate::page::Select;
use crate::{Page, PageRequest, ProjectionError};

/// Stock of one SKU in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StockLevel {
    pub sku: String,
    pub warehouse: String,
    pub priority: i32,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
    pub updated_at: DateTime<Utc>,
}

/// Which levels to list; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct LevelFilter {
    pub sku: Option<String>,
    pub warehouse: Option<String>,
    /// Only levels with fewer units available than this (low stock).
    pub available_below: Option<i64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum LevelSort {
    /// By SKU, then warehouse.
    #[default]
    Sku,
    /// Least available first.
    AvailableAsc,
    /// Most available first.
    AvailableDesc,
}

const SELECT_LEVEL: &str = "SELECT sku, warehouse, priority, on_hand, reserved, available, \
     updated_at FROM read_models.inventory_levels";

fn level_from(row: &Row) -> Result<StockLevel, ProjectionError> {
    Ok(StockLevel {
        sku: row.get(0),
        warehouse: row.get(1),
        priority: row.get(2),
        on_hand: row.get(3),
        reserved: row.get(4),
        available: row.get(5),
        updated_at: row.get(6),
    })
}

/// A page of stock levels.
pub async fn levels(
    client: &Client,
    filter: &LevelFilter,
    sort: LevelSort,
    page: PageRequest,
) -> Result<Page<StockLevel>, ProjectionError> {
    let mut select = Select::new(SELECT_LEVEL);
    select.and_some("sku = $?", filter.sku.clone());
    select.and_some("warehouse = $?", filter.warehouse.clone());
    select.and_some("available < $?", filter.available_below);
    let order = match sort {
        LevelSort::Sku => "sku, warehouse",
        LevelSort::AvailableAsc => "available, sku, warehouse",
        LevelSort::AvailableDesc => "available DESC, sku, warehouse",
    };
    select.page(client, order, page, level_from).await
}

/// Every warehouse's stock of one SKU, by warehouse.
pub async fn for_sku(client: &Client, sku: &str) -> Result<Vec<StockLevel>, ProjectionError> {
    let mut select = Select::new(SELECT_LEVEL);
    select.and("sku = $?", sku.to_owned());
    select.all(client, "warehouse", level_from).await
}
