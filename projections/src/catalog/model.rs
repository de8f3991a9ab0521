//! The `catalog` projection: products with their SKUs and prices, and stock per SKU.

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use domain::{ProductEvent, ProductId, ProductStatus};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::apply::{poison, ApplyError, ReadModel, ROW_CACHE_MAX_ROWS};
use crate::cache::BatchRows;
use crate::decode::{Decoded, ShopEvent};
use crate::inventory::model::stock_changes;

const LOAD_PRODUCTS: &str = "SELECT product_id, title, description, brand, category, status, \
     base_prices, created_at, updated_at, position \
     FROM {schema}.catalog_products WHERE product_id = ANY($1)";
const LOAD_SKUS: &str = "SELECT product_id, sku, attributes FROM {schema}.catalog_skus \
     WHERE product_id = ANY($1) ORDER BY product_id, line_no";
const LOAD_OWN_PRICES: &str = "SELECT product_id, sku, currency, price_minor \
     FROM {schema}.catalog_prices WHERE product_id = ANY($1) AND own";
const LOAD_STOCK: &str = "SELECT sku, on_hand, reserved, updated_at, position \
     FROM {schema}.catalog_stock WHERE sku = ANY($1)";

const UPSERT_PRODUCTS: &str = "INSERT INTO {schema}.catalog_products \
     (product_id, title, description, brand, category, status, base_prices, sku_count, \
      created_at, updated_at, position) \
     SELECT u.product_id, u.title, u.description, u.brand, \
            ARRAY(SELECT jsonb_array_elements_text(u.category)), u.status, u.base_prices, \
            u.sku_count, u.created_at, u.updated_at, u.position \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::text[], \
                 $7::jsonb[], $8::int4[], $9::timestamptz[], $10::timestamptz[], $11::int8[]) \
          AS u(product_id, title, description, brand, category, status, base_prices, \
               sku_count, created_at, updated_at, position) \
     ON CONFLICT (product_id) DO UPDATE SET title = EXCLUDED.title, \
     description = EXCLUDED.description, brand = EXCLUDED.brand, \
     category = EXCLUDED.category, status = EXCLUDED.status, \
     base_prices = EXCLUDED.base_prices, sku_count = EXCLUDED.sku_count, \
     created_at = EXCLUDED.created_at, updated_at = EXCLUDED.updated_at, \
     position = EXCLUDED.position";
const DELETE_SKUS: &str = "DELETE FROM {schema}.catalog_skus WHERE product_id = ANY($1)";
const INSERT_SKUS: &str =
    "INSERT INTO {schema}.catalog_skus (product_id, sku, line_no, attributes) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::jsonb[])";
const DELETE_PRICES: &str = "DELETE FROM {schema}.catalog_prices WHERE product_id = ANY($1)";
const INSERT_PRICES: &str = "INSERT INTO {schema}.catalog_prices \
     (product_id, sku, currency, price_minor, own) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::int8[], $5::bool[])";
const UPSERT_STOCK: &str = "INSERT INTO {schema}.catalog_stock \
     (sku, on_hand, reserved, updated_at, position) \
     SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::timestamptz[], $5::int8[]) \
     ON CONFLICT (sku) DO UPDATE SET on_hand = EXCLUDED.on_hand, \
     reserved = EXCLUDED.reserved, updated_at = EXCLUDED.updated_at, \
     position = EXCLUDED.position";

/// One product as the catalog tables hold it.
#[derive(Debug, Clone, PartialEq)]
struct ProductRow {
    title: String,
    description: String,
    brand: String,
    category: Vec<String>,
    status: String,
    /// Product-wide prices: currency -> minor units.
    base_prices: BTreeMap<String, i64>,
    skus: Vec<SkuRow>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    position: i64,
    /// Whether `catalog_skus` / `catalog_prices` rows are stored for it already.
    stored: bool,
    skus_changed: bool,
    prices_changed: bool,
}

#[derive(Debug, Clone, PartialEq)]
struct SkuRow {
    sku: String,
    attributes: BTreeMap<String, String>,
    /// The SKU's own prices: currency -> minor units.
    own_prices: BTreeMap<String, i64>,
}

/// Stock of one SKU over all warehouses.
#[derive(Debug, Clone, PartialEq)]
struct StockRow {
    on_hand: i64,
    reserved: i64,
    updated_at: DateTime<Utc>,
    position: i64,
}

pub(crate) struct CatalogModel {
    sql: Sql,
    products: BatchRows<Uuid, ProductRow>,
    stock: BatchRows<String, StockRow>,
}

struct Sql {
    load_products: String,
    load_skus: String,
    load_own_prices: String,
    load_stock: String,
    upsert_products: String,
    delete_skus: String,
    insert_skus: String,
    delete_prices: String,
    insert_prices: String,
    upsert_stock: String,
}

impl CatalogModel {
    pub(crate) fn new(schema: &str) -> Self {
        let sql = |s: &str| s.replace("{schema}", schema);
        CatalogModel {
            sql: Sql {
                load_products: sql(LOAD_PRODUCTS),
                load_skus: sql(LOAD_SKUS),
                load_own_prices: sql(LOAD_OWN_PRICES),
                load_stock: sql(LOAD_STOCK),
                upsert_products: sql(UPSERT_PRODUCTS),
                delete_skus: sql(DELETE_SKUS),
                insert_skus: sql(INSERT_SKUS),
                delete_prices: sql(DELETE_PRICES),
                insert_prices: sql(INSERT_PRICES),
                upsert_stock: sql(UPSERT_STOCK),
            },
            products: BatchRows::new(ROW_CACHE_MAX_ROWS),
            stock: BatchRows::new(ROW_CACHE_MAX_ROWS),
        }
    }

    async fn load_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let products = self.products.take_missing();
        if !products.is_empty() {
            let mut loaded: BTreeMap<Uuid, ProductRow> = BTreeMap::new();
            let statement = tx.prepare_cached(&self.sql.load_products).await?;
            for row in tx.query(&statement, &[&products]).await? {
                let base_prices: Value = row.get(6);
                let base_prices = serde_json::from_value(base_prices)
                    .map_err(|e| ApplyError::Database(corrupt("base_prices", e)))?;
                loaded.insert(
                    row.get(0),
                    ProductRow {
                        title: row.get(1),
                        description: row.get(2),
                        brand: row.get(3),
                        category: row.get(4),
                        status: row.get(5),
                        base_prices,
                        skus: Vec::new(),
                        created_at: row.get(7),
                        updated_at: row.get(8),
                        position: row.get(9),
                        stored: true,
                        skus_changed: false,
                        prices_changed: false,
                    },
                );
            }
            let statement = tx.prepare_cached(&self.sql.load_skus).await?;
            for row in tx.query(&statement, &[&products]).await? {
                let id: Uuid = row.get(0);
                let attributes: Value = row.get(2);
                let attributes = serde_json::from_value(attributes)
                    .map_err(|e| ApplyError::Database(corrupt("attributes", e)))?;
                if let Some(product) = loaded.get_mut(&id) {
                    product.skus.push(SkuRow {
                        sku: row.get(1),
                        attributes,
                        own_prices: BTreeMap::new(),
                    });
                }
            }
            let statement = tx.prepare_cached(&self.sql.load_own_prices).await?;
            for row in tx.query(&statement, &[&products]).await? {
                let id: Uuid = row.get(0);
                let sku: &str = row.get(1);
                let sku_row = loaded
                    .get_mut(&id)
                    .and_then(|p| p.skus.iter_mut().find(|s| s.sku == sku));
                if let Some(sku_row) = sku_row {
                    sku_row.own_prices.insert(row.get(2), row.get(3));
                }
            }
            for (id, product) in loaded {
                self.products.loaded(id, product);
            }
        }
        let skus = self.stock.take_missing();
        if !skus.is_empty() {
            let statement = tx.prepare_cached(&self.sql.load_stock).await?;
            for row in tx.query(&statement, &[&skus]).await? {
                self.stock.loaded(
                    row.get(0),
                    StockRow {
                        on_hand: row.get(1),
                        reserved: row.get(2),
                        updated_at: row.get(3),
                        position: row.get(4),
                    },
                );
            }
        }
        Ok(())
    }

    fn fold_event(&mut self, event: &Decoded) -> Result<(), ApplyError> {
        match &event.event {
            Ok(ShopEvent::Product { id, event: e }) => self.fold_product(event, *id, e),
            Ok(ShopEvent::Inventory { sku, event: e }) => {
                let Some(row) = self.stock.get_mut(sku.as_str()) else {
                    return Err(poison(event, "SKU was not prepared for the batch"));
                };
                let row = row.get_or_insert(StockRow {
                    on_hand: 0,
                    reserved: 0,
                    updated_at: event.recorded_at,
                    position: 0,
                });
                for (_, on_hand, reserved, _) in stock_changes(e) {
                    row.on_hand += on_hand;
                    row.reserved += reserved;
                }
                row.updated_at = event.recorded_at;
                row.position = event.position as i64;
                if row.reserved < 0 || row.reserved > row.on_hand {
                    return Err(poison(
                        event,
                        format!(
                            "SKU {sku} would have {} on hand and {} reserved",
                            row.on_hand, row.reserved
                        ),
                    ));
                }
                Ok(())
            }
            Ok(ShopEvent::Cart { .. } | ShopEvent::Order { .. }) => Ok(()),
            Err(reason) => Err(poison(event, reason.clone())),
        }
    }

    fn fold_product(
        &mut self,
        event: &Decoded,
        id: ProductId,
        product_event: &ProductEvent,
    ) -> Result<(), ApplyError> {
        let Some(row) = self.products.get_mut(id.as_uuid()) else {
            return Err(poison(event, "product was not prepared for the batch"));
        };
        if let ProductEvent::ProductCreated {
            product_id,
            title,
            description,
            brand,
            category,
            skus,
        } = product_event
        {
            if row.is_some() {
                return Err(poison(event, format!("product {id} is created twice")));
            }
            if *product_id != id {
                return Err(poison(
                    event,
                    format!("product {product_id} in stream of {id}"),
                ));
            }
            *row = Some(ProductRow {
                title: title.clone(),
                description: description.clone(),
                brand: brand.clone(),
                category: category.clone(),
                status: ProductStatus::Draft.as_str().to_owned(),
                base_prices: BTreeMap::new(),
                skus: skus
                    .iter()
                    .map(|v| SkuRow {
                        sku: v.sku.as_str().to_owned(),
                        attributes: v.attributes.clone(),
                        own_prices: BTreeMap::new(),
                    })
                    .collect(),
                created_at: event.recorded_at,
                updated_at: event.recorded_at,
                position: event.position as i64,
                stored: false,
                skus_changed: true,
                prices_changed: true,
            });
            return Ok(());
        }
        let Some(product) = row else {
            return Err(poison(event, format!("product {id} does not exist")));
        };
        match product_event {
            ProductEvent::ProductCreated { .. } => {}
            ProductEvent::SkuAdded { sku, attributes } => {
                if product.skus.iter().any(|s| s.sku == sku.as_str()) {
                    return Err(poison(event, format!("SKU {sku} is added twice")));
                }
                product.skus.push(SkuRow {
                    sku: sku.as_str().to_owned(),
                    attributes: attributes.clone(),
                    own_prices: BTreeMap::new(),
                });
                product.skus_changed = true;
                product.prices_changed = true;
            }
            ProductEvent::PriceSet { sku, price } => {
                let currency = price.currency.as_str().to_owned();
                match sku {
                    None => {
                        product.base_prices.insert(currency, price.minor);
                    }
                    // Like the aggregate, a price for a SKU the product lacks changes
                    // nothing.
                    Some(sku) => {
                        if let Some(s) = product.skus.iter_mut().find(|s| s.sku == sku.as_str()) {
                            s.own_prices.insert(currency, price.minor);
                        }
                    }
                }
                product.prices_changed = true;
            }
            ProductEvent::ProductPublished {} => {
                product.status = ProductStatus::Published.as_str().to_owned()
            }
            ProductEvent::ProductUnpublished {} => {
                product.status = ProductStatus::Unpublished.as_str().to_owned()
            }
            ProductEvent::ProductDiscontinued {} => {
                product.status = ProductStatus::Discontinued.as_str().to_owned()
            }
        }
        product.updated_at = event.recorded_at;
        product.position = event.position as i64;
        Ok(())
    }

    async fn write_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let mut ids = Vec::new();
        let mut titles = Vec::new();
        let mut descriptions = Vec::new();
        let mut brands = Vec::new();
        let mut categories = Vec::new();
        let mut statuses = Vec::new();
        let mut base_prices = Vec::new();
        let mut sku_counts = Vec::new();
        let mut created = Vec::new();
        let mut updated = Vec::new();
        let mut positions = Vec::new();
        // Child rows of products whose SKUs or prices changed are replaced whole.
        let mut replace_skus = Vec::new();
        let mut replace_prices = Vec::new();
        let mut sku_rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut price_rows = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (id, p) in self.products.iter() {
            ids.push(*id);
            titles.push(p.title.as_str());
            descriptions.push(p.description.as_str());
            brands.push(p.brand.as_str());
            categories.push(json!(p.category));
            statuses.push(p.status.as_str());
            base_prices.push(json!(p.base_prices));
            sku_counts.push(p.skus.len() as i32);
            created.push(p.created_at);
            updated.push(p.updated_at);
            positions.push(p.position);
            if p.skus_changed {
                if p.stored {
                    replace_skus.push(*id);
                }
                for (n, s) in p.skus.iter().enumerate() {
                    sku_rows.0.push(*id);
                    sku_rows.1.push(s.sku.as_str());
                    sku_rows.2.push(n as i32 + 1);
                    sku_rows.3.push(json!(s.attributes));
                }
            }
            if p.prices_changed {
                if p.stored {
                    replace_prices.push(*id);
                }
                for s in &p.skus {
                    let currencies: BTreeSet<&String> =
                        s.own_prices.keys().chain(p.base_prices.keys()).collect();
                    for currency in currencies {
                        let (price, own) = match s.own_prices.get(currency) {
                            Some(price) => (*price, true),
                            None => (p.base_prices[currency], false),
                        };
                        price_rows.0.push(*id);
                        price_rows.1.push(s.sku.as_str());
                        price_rows.2.push(currency.as_str());
                        price_rows.3.push(price);
                        price_rows.4.push(own);
                    }
                }
            }
        }
        if !ids.is_empty() {
            let statement = tx.prepare_cached(&self.sql.upsert_products).await?;
            tx.execute(
                &statement,
                &[
                    &ids,
                    &titles,
                    &descriptions,
                    &brands,
                    &categories,
                    &statuses,
                    &base_prices,
                    &sku_counts,
                    &created,
                    &updated,
                    &positions,
                ],
            )
            .await?;
        }
        if !replace_skus.is_empty() {
            let statement = tx.prepare_cached(&self.sql.delete_skus).await?;
            tx.execute(&statement, &[&replace_skus]).await?;
        }
        if !sku_rows.0.is_empty() {
            let statement = tx.prepare_cached(&self.sql.insert_skus).await?;
            tx.execute(
                &statement,
                &[&sku_rows.0, &sku_rows.1, &sku_rows.2, &sku_rows.3],
            )
            .await?;
        }
        if !replace_prices.is_empty() {
            let statement = tx.prepare_cached(&self.sql.delete_prices).await?;
            tx.execute(&statement, &[&replace_prices]).await?;
        }
        if !price_rows.0.is_empty() {
            let statement = tx.prepare_cached(&self.sql.insert_prices).await?;
            tx.execute(
                &statement,
                &[
                    &price_rows.0,
                    &price_rows.1,
                    &price_rows.2,
                    &price_rows.3,
                    &price_rows.4,
                ],
            )
            .await?;
        }

        let mut skus = Vec::new();
        let mut on_hands = Vec::new();
        let mut reserveds = Vec::new();
        let mut updated = Vec::new();
        let mut positions = Vec::new();
        for (sku, s) in self.stock.iter() {
            skus.push(sku.as_str());
            on_hands.push(s.on_hand);
            reserveds.push(s.reserved);
            updated.push(s.updated_at);
            positions.push(s.position);
        }
        if !skus.is_empty() {
            let statement = tx.prepare_cached(&self.sql.upsert_stock).await?;
            tx.execute(
                &statement,
                &[&skus, &on_hands, &reserveds, &updated, &positions],
            )
            .await?;
        }
        Ok(())
    }
}

fn corrupt(column: &str, e: serde_json::Error) -> crate::ProjectionError {
    crate::ProjectionError::Database(format!("catalog column {column} does not parse: {e}"))
}

#[async_trait]
impl ReadModel for CatalogModel {
    fn touch(&mut self, events: &[&Decoded]) {
        for event in events {
            match &event.event {
                Ok(ShopEvent::Product { id, .. }) => {
                    self.products.touch(id.as_uuid(), event.version == 1)
                }
                Ok(ShopEvent::Inventory { sku, .. }) => {
                    self.stock.touch(sku.as_str(), event.version == 1)
                }
                Ok(ShopEvent::Cart { .. } | ShopEvent::Order { .. }) | Err(_) => {}
            }
        }
    }

    fn needs_load(&self) -> bool {
        self.products.needs_load() || self.stock.needs_load()
    }

    async fn load(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        self.load_rows(tx).await
    }

    fn fold(&mut self, events: &[&Decoded]) -> Result<(), ApplyError> {
        events.iter().try_for_each(|event| self.fold_event(event))
    }

    async fn write(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        self.write_rows(tx).await
    }

    fn committed(&mut self) {
        self.products.for_each_mut(|p| {
            p.stored = true;
            p.skus_changed = false;
            p.prices_changed = false;
        });
        self.products.committed();
        self.stock.committed();
    }

    fn forget(&mut self) {
        self.products.forget();
        self.stock.forget();
    }
}
