//! Sales analytics: `read_models.sales_daily`, per day (UTC), SKU and currency: units
//! and revenue ordered (by the day an order was placed), sold (the day it was
//! confirmed) and cancelled (the day it was cancelled or rejected).

pub(crate) mod model;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use tokio_postgres::{Client, Row};

use crate::page::Select;
use crate::{Page, PageRequest, ProjectionError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DailySales {
    pub day: NaiveDate,
    pub sku: String,
    pub currency: String,
    pub orders_placed: i32,
    pub units_ordered: i64,
    pub revenue_ordered_minor: i64,
    pub units_sold: i64,
    pub revenue_sold_minor: i64,
    pub cancellations: i32,
    pub units_cancelled: i64,
    pub revenue_cancelled_minor: i64,
}

/// Totals of one SKU over a period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SkuSales {
    pub sku: String,
    pub currency: String,
    pub units_ordered: i64,
    pub units_sold: i64,
    pub revenue_sold_minor: i64,
    pub cancellations: i64,
    pub units_cancelled: i64,
}

/// Which days to list; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct SalesFilter {
    /// First day included.
    pub from: Option<NaiveDate>,
    /// Last day included.
    pub to: Option<NaiveDate>,
    pub sku: Option<String>,
    pub currency: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum SalesSort {
    /// By day, then SKU.
    #[default]
    Day,
    /// Highest sold revenue first.
    RevenueDesc,
}

const SELECT_DAILY: &str = "SELECT day, sku, currency, orders_placed, units_ordered, \
     revenue_ordered_minor, units_sold, revenue_sold_minor, cancellations, units_cancelled, \
     revenue_cancelled_minor FROM read_models.sales_daily";

fn daily_from(row: &Row) -> Result<DailySales, ProjectionError> {
    Ok(DailySales {
        day: row.get(0),
        sku: row.get(1),
        currency: row.get(2),
        orders_placed: row.get(3),
        units_ordered: row.get(4),
        revenue_ordered_minor: row.get(5),
        units_sold: row.get(6),
        revenue_sold_minor: row.get(7),
        cancellations: row.get(8),
        units_cancelled: row.get(9),
        revenue_cancelled_minor: row.get(10),
    })
}

fn filtered(base: &str, filter: &SalesFilter) -> Select {
    let mut select = Select::new(base);
    select.and_some("day >= $?", filter.from);
    select.and_some("day <= $?", filter.to);
    select.and_some("sku = $?", filter.sku.clone());
    select.and_some("currency = $?", filter.currency.clone());
    select
}

/// A page of per-day figures.
pub async fn daily(
    client: &Client,
    filter: &SalesFilter,
    sort: SalesSort,
    page: PageRequest,
) -> Result<Page<DailySales>, ProjectionError> {
    let order = match sort {
        SalesSort::Day => "day, sku, currency",
        SalesSort::RevenueDesc => "revenue_sold_minor DESC, day, sku, currency",
    };
    filtered(SELECT_DAILY, filter)
        .page(client, order, page, daily_from)
        .await
}

/// The SKUs with the highest sold revenue over the filtered days, per currency.
pub async fn top_skus(
    client: &Client,
    filter: &SalesFilter,
    page: PageRequest,
) -> Result<Page<SkuSales>, ProjectionError> {
    // The filters apply to the rows before grouping, so the grouping wraps them.
    let inner = filtered(
        "SELECT sku, currency, units_ordered, units_sold, revenue_sold_minor, \
         cancellations, units_cancelled FROM read_models.sales_daily",
        filter,
    );
    let select = inner.wrap(
        "SELECT sku, currency, sum(units_ordered)::bigint, sum(units_sold)::bigint, \
         sum(revenue_sold_minor)::bigint, sum(cancellations)::bigint, \
         sum(units_cancelled)::bigint FROM (",
        ") d GROUP BY sku, currency",
    );
    select
        .page(client, "4 DESC, sku, currency", page, |row| {
            Ok(SkuSales {
                sku: row.get(0),
                currency: row.get(1),
                units_ordered: row.get(2),
                units_sold: row.get(3),
                revenue_sold_minor: row.get(4),
                cancellations: row.get(5),
                units_cancelled: row.get(6),
            })
        })
        .await
}
