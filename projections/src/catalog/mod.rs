//! The product catalog: `read_models.catalog_products` (one row per product),
//! `catalog_skus` (its SKUs and their attributes), `catalog_prices` (the price of
//! every SKU per currency: its own or the product-wide one) and `catalog_stock`
//! (every SKU's stock summed over warehouses).

pub(crate) mod model;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::ProductStatus;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_postgres::{Client, Row};
use uuid::Uuid;

use crate::page::Select;
use crate::{Page, PageRequest, ProjectionError};

/// A product in a listing.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProductSummary {
    pub product_id: Uuid,
    pub title: String,
    pub brand: String,
    pub category: Vec<String>,
    pub status: String,
    pub sku_count: i32,
    /// The lowest SKU price per currency, in minor units ("from 19.99").
    pub price_from: BTreeMap<String, i64>,
    /// Units available over all its SKUs.
    pub available: i64,
    pub updated_at: DateTime<Utc>,
}

/// One product with all its SKUs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProductDetail {
    pub product_id: Uuid,
    pub title: String,
    pub description: String,
    pub brand: String,
    pub category: Vec<String>,
    pub status: String,
    /// Product-wide prices per currency, in minor units.
    pub base_prices: BTreeMap<String, i64>,
    pub skus: Vec<SkuDetail>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SkuDetail {
    pub sku: String,
    pub attributes: BTreeMap<String, String>,
    pub prices: Vec<SkuPrice>,
    pub on_hand: i64,
    pub reserved: i64,
    pub available: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkuPrice {
    pub currency: String,
    pub price_minor: i64,
    /// The SKU's own price (else the product-wide one).
    pub own: bool,
}

/// Which products to list; every field narrows the result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct CatalogFilter {
    pub status: Option<ProductStatus>,
    pub brand: Option<String>,
    /// A category at any level of the path.
    pub category: Option<String>,
    /// Words in the title (case-insensitive substring).
    pub text: Option<String>,
    /// Only products with a price in this currency.
    pub currency: Option<String>,
    /// Only products with at least one unit available.
    #[serde(default)]
    pub in_stock: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum CatalogSort {
    #[default]
    Title,
    /// Most recently changed first.
    RecentlyUpdated,
    /// Most recently created first.
    Newest,
}

/// A listed product's columns, with its prices and stock summed from the other
/// tables: computed for the page's rows only (`Select::page_around`).
const SUMMARY_COLUMNS: &str = "p.product_id, p.title, p.brand, p.category, p.status, \
     p.sku_count, p.updated_at, \
     (SELECT jsonb_object_agg(currency, price_minor) FROM ( \
         SELECT c.currency, min(c.price_minor) AS price_minor \
         FROM read_models.catalog_prices c WHERE c.product_id = p.product_id \
         GROUP BY c.currency) m), \
     (SELECT COALESCE(sum(s.available), 0)::bigint FROM read_models.catalog_skus k \
      JOIN read_models.catalog_stock s ON s.sku = k.sku WHERE k.product_id = p.product_id)";

fn summary_from(row: &Row) -> Result<ProductSummary, ProjectionError> {
    let prices: Option<Value> = row.get(7);
    Ok(ProductSummary {
        product_id: row.get(0),
        title: row.get(1),
        brand: row.get(2),
        category: row.get(3),
        status: row.get(4),
        sku_count: row.get(5),
        updated_at: row.get(6),
        price_from: parse_json("price_from", prices.unwrap_or(Value::Null))?,
        available: row.get(8),
    })
}

/// Escapes `%`, `_` and `\` so user text matches literally inside LIKE.
fn like_pattern(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 2);
    escaped.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped.push('%');
    escaped
}

/// A page of products.
pub async fn list(
    client: &Client,
    filter: &CatalogFilter,
    sort: CatalogSort,
    page: PageRequest,
) -> Result<Page<ProductSummary>, ProjectionError> {
    let mut select = Select::new("SELECT p.* FROM read_models.catalog_products p");
    select.and_some(
        "p.status = $?",
        filter.status.map(|s| s.as_str().to_owned()),
    );
    select.and_some("p.brand = $?", filter.brand.clone());
    // `@>` rather than `= ANY`: the form the category's GIN index serves.
    select.and_some("p.category @> ARRAY[$?]::text[]", filter.category.clone());
    select.and_some("p.title ILIKE $?", filter.text.as_deref().map(like_pattern));
    select.and_some(
        "EXISTS (SELECT 1 FROM read_models.catalog_prices c \
         WHERE c.product_id = p.product_id AND c.currency = $?)",
        filter.currency.clone(),
    );
    if filter.in_stock {
        select.and(
            "EXISTS (SELECT 1 FROM read_models.catalog_skus k \
             JOIN read_models.catalog_stock s ON s.sku = k.sku \
             WHERE k.product_id = p.product_id AND s.available > $?)",
            0_i64,
        );
    }
    let order = match sort {
        CatalogSort::Title => "p.title, p.product_id",
        CatalogSort::RecentlyUpdated => "p.updated_at DESC, p.product_id",
        CatalogSort::Newest => "p.created_at DESC, p.product_id",
    };
    select
        .page_around(
            client,
            order,
            page,
            Some((SUMMARY_COLUMNS, "p")),
            summary_from,
        )
        .await
}

/// One product with its SKUs, prices and stock; `None` if the catalog has no such
/// product.
pub async fn get(
    client: &Client,
    product_id: Uuid,
) -> Result<Option<ProductDetail>, ProjectionError> {
    let Some(row) = client
        .query_opt(
            "SELECT title, description, brand, category, status, base_prices, created_at, \
             updated_at FROM read_models.catalog_products WHERE product_id = $1",
            &[&product_id],
        )
        .await
        .map_err(crate::error::db_error)?
    else {
        return Ok(None);
    };
    let skus = client
        .query(
            "SELECT k.sku, k.attributes, COALESCE(s.on_hand, 0), COALESCE(s.reserved, 0), \
             COALESCE(s.available, 0), \
             (SELECT COALESCE(jsonb_agg(jsonb_build_array(c.currency, c.price_minor, c.own) \
                      ORDER BY c.currency), '[]') \
              FROM read_models.catalog_prices c \
              WHERE c.product_id = k.product_id AND c.sku = k.sku) \
             FROM read_models.catalog_skus k \
             LEFT JOIN read_models.catalog_stock s ON s.sku = k.sku \
             WHERE k.product_id = $1 ORDER BY k.line_no",
            &[&product_id],
        )
        .await
        .map_err(crate::error::db_error)?;
    let skus = skus
        .iter()
        .map(|row| {
            let prices: Vec<(String, i64, bool)> = parse_json("prices", row.get(5))?;
            Ok(SkuDetail {
                sku: row.get(0),
                attributes: parse_json("attributes", row.get(1))?,
                on_hand: row.get(2),
                reserved: row.get(3),
                available: row.get(4),
                prices: prices
                    .into_iter()
                    .map(|(currency, price_minor, own)| SkuPrice {
                        currency,
                        price_minor,
                        own,
                    })
                    .collect(),
            })
        })
        .collect::<Result<_, ProjectionError>>()?;
    Ok(Some(ProductDetail {
        product_id,
        title: row.get(0),
        description: row.get(1),
        brand: row.get(2),
        category: row.get(3),
        status: row.get(4),
        base_prices: parse_json("base_prices", row.get(5))?,
        created_at: row.get(6),
        updated_at: row.get(7),
        skus,
    }))
}

fn parse_json<T: serde::de::DeserializeOwned + Default>(
    column: &str,
    value: Value,
) -> Result<T, ProjectionError> {
    if value.is_null() {
        return Ok(T::default());
    }
    serde_json::from_value(value)
        .map_err(|e| ProjectionError::Database(format!("column {column} does not parse: {e}")))
}
