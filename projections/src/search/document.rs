//! What the index keeps of a product and of a SKU's stock, how events change it, and
//! the document it becomes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::{InventoryEvent, ProductEvent, ProductStatus};
use serde::{Deserialize, Serialize};
use tantivy::schema::Facet;
use tantivy::TantivyDocument;
use uuid::Uuid;

use super::schema::{price_key, Fields};
use crate::inventory::model::stock_changes;

/// A product as the index keeps it (in its `state` field).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ProductState {
    pub product_id: Uuid,
    pub title: String,
    pub description: String,
    pub brand: String,
    pub category: Vec<String>,
    pub status: ProductStatus,
    /// Product-wide prices: currency -> minor units.
    pub base_prices: BTreeMap<String, i64>,
    pub skus: Vec<SkuState>,
    pub created_at: DateTime<Utc>,
    /// The log position of the creation.
    pub seq: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SkuState {
    pub sku: String,
    pub attributes: BTreeMap<String, String>,
    /// The SKU's own prices: currency -> minor units.
    pub own_prices: BTreeMap<String, i64>,
    /// The SKU's stock over all warehouses (kept here rather than in a document of
    /// its own once the SKU's product is known).
    pub stock: StockState,
}

impl SkuState {
    fn new(sku: &str, attributes: &BTreeMap<String, String>) -> SkuState {
        SkuState {
            sku: sku.to_owned(),
            attributes: attributes.clone(),
            own_prices: BTreeMap::new(),
            stock: StockState::default(),
        }
    }
}

/// The stock of one SKU over all warehouses: inside its product's state, or in a
/// document of its own while no product has the SKU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub(crate) struct StockState {
    pub available: i64,
}

impl StockState {
    /// Applies an inventory event; returns whether the SKU crossed zero (in stock
    /// to out of stock or back).
    pub(crate) fn apply(&mut self, event: &InventoryEvent) -> bool {
        let before = self.in_stock();
        for (_, on_hand, reserved, _) in stock_changes(event) {
            self.available += on_hand - reserved;
        }
        before != self.in_stock()
    }

    pub(crate) fn in_stock(self) -> bool {
        self.available > 0
    }
}

/// Why an event cannot be applied to the index's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused(pub String);

impl ProductState {
    /// The state a `ProductCreated` starts; the stock of each SKU is filled in by
    /// the caller, from stock received before the product existed.
    pub(crate) fn created(
        product_id: Uuid,
        event: &ProductEvent,
        recorded_at: DateTime<Utc>,
        position: u64,
    ) -> Option<ProductState> {
        let ProductEvent::ProductCreated {
            title,
            description,
            brand,
            category,
            skus,
            ..
        } = event
        else {
            return None;
        };
        Some(ProductState {
            product_id,
            title: title.clone(),
            description: description.clone(),
            brand: brand.clone(),
            category: category.clone(),
            status: ProductStatus::Draft,
            base_prices: BTreeMap::new(),
            skus: skus
                .iter()
                .map(|v| SkuState::new(v.sku.as_str(), &v.attributes))
                .collect(),
            created_at: recorded_at,
            seq: position,
        })
    }

    /// Applies a product event after the creation. Returns the SKU a `SkuAdded`
    /// added, so the caller can look its stock up.
    pub(crate) fn apply(&mut self, event: &ProductEvent) -> Result<Option<&str>, Refused> {
        match event {
            ProductEvent::ProductCreated { .. } => {
                return Err(Refused(format!(
                    "product {} is created twice",
                    self.product_id
                )))
            }
            ProductEvent::SkuAdded { sku, attributes } => {
                if self.skus.iter().any(|s| s.sku == sku.as_str()) {
                    return Err(Refused(format!("SKU {sku} is added twice")));
                }
                self.skus.push(SkuState::new(sku.as_str(), attributes));
                return Ok(self.skus.last().map(|s| s.sku.as_str()));
            }
            ProductEvent::PriceSet { sku, price } => {
                let currency = price.currency.as_str().to_owned();
                match sku {
                    None => {
                        self.base_prices.insert(currency, price.minor);
                    }
                    // Like the aggregate, a price for a SKU the product lacks changes
                    // nothing.
                    Some(sku) => {
                        if let Some(s) = self.skus.iter_mut().find(|s| s.sku == sku.as_str()) {
                            s.own_prices.insert(currency, price.minor);
                        }
                    }
                }
            }
            ProductEvent::ProductPublished {} => self.status = ProductStatus::Published,
            ProductEvent::ProductUnpublished {} => self.status = ProductStatus::Unpublished,
            ProductEvent::ProductDiscontinued {} => self.status = ProductStatus::Discontinued,
        }
        Ok(None)
    }

    pub(crate) fn visible(&self) -> bool {
        self.status == ProductStatus::Published
    }

    pub(crate) fn in_stock(&self) -> bool {
        self.skus.iter().any(|s| s.stock.in_stock())
    }

    /// The lowest price of any SKU per currency (its own, else the product-wide one).
    pub(crate) fn price_from(&self) -> BTreeMap<String, i64> {
        let mut from: BTreeMap<String, i64> = BTreeMap::new();
        for sku in &self.skus {
            let prices = self
                .base_prices
                .iter()
                .filter(|(c, _)| !sku.own_prices.contains_key(*c))
                .chain(sku.own_prices.iter());
            for (currency, &minor) in prices {
                from.entry(currency.clone())
                    .and_modify(|m| *m = (*m).min(minor))
                    .or_insert(minor);
            }
        }
        from
    }

    pub(crate) fn document(&self, fields: &Fields) -> TantivyDocument {
        let mut doc = TantivyDocument::new();
        doc.add_bytes(fields.product_id, self.product_id.as_bytes());
        if self.visible() {
            doc.add_u64(fields.visible, 1);
        }
        doc.add_text(fields.title, &self.title);
        doc.add_text(fields.brand_text, &self.brand);
        doc.add_text(fields.description, &self.description);
        let category = self.category.join(" ");
        for text in [&self.title, &self.brand, &self.description, &category] {
            doc.add_text(fields.text, text);
        }
        doc.add_text(fields.category_text, category);
        doc.add_text(fields.brand, &self.brand);
        if !self.category.is_empty() {
            doc.add_facet(fields.category, category_facet(&self.category));
        }
        for sku in &self.skus {
            doc.add_text(fields.sku, &sku.sku);
            for (name, value) in &sku.attributes {
                doc.add_text(fields.attribute, attribute_term(name, value));
            }
        }
        for (currency, minor) in self.price_from() {
            if let Some(key) = price_key(&currency, minor) {
                doc.add_u64(fields.price, key);
            }
        }
        doc.add_u64(fields.in_stock, u64::from(self.in_stock()));
        doc.add_u64(fields.seq, self.seq);
        doc.add_bytes(fields.state, &state_bytes(self));
        doc
    }
}

/// The stock document of a SKU.
pub(crate) fn stock_document(fields: &Fields, sku: &str, stock: StockState) -> TantivyDocument {
    let mut doc = TantivyDocument::new();
    doc.add_text(fields.stock_sku, sku);
    doc.add_bytes(fields.state, &state_bytes(&stock));
    doc
}

fn state_bytes(state: &impl Serialize) -> Vec<u8> {
    // Plain data of strings, numbers and maps with string keys: serialising cannot
    // fail.
    serde_json::to_vec(state).unwrap_or_default()
}

/// The facet of a category path; `/` inside a segment is escaped by `Facet`.
pub(crate) fn category_facet(path: &[String]) -> Facet {
    Facet::from_path(path.iter().map(String::as_str))
}

/// The term of an attribute filter.
pub(crate) fn attribute_term(name: &str, value: &str) -> String {
    format!("{name}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{Currency, Money, ProductId, Sku, SkuVariant};

    fn created() -> ProductState {
        let id = ProductId::from_uuid(Uuid::from_u128(7));
        let event = ProductEvent::ProductCreated {
            product_id: id,
            title: "Trail runner".into(),
            description: String::new(),
            brand: "Acme".into(),
            category: vec!["Shoes".into()],
            skus: vec![
                SkuVariant {
                    sku: Sku::parse("A-1").unwrap(),
                    attributes: BTreeMap::new(),
                },
                SkuVariant {
                    sku: Sku::parse("A-2").unwrap(),
                    attributes: BTreeMap::new(),
                },
            ],
        };
        ProductState::created(*id.as_uuid(), &event, Utc::now(), 1).unwrap()
    }

    #[test]
    fn price_from_is_the_lowest_sku_price_per_currency() {
        let mut p = created();
        let eur = Currency::parse("EUR").unwrap();
        p.apply(&ProductEvent::PriceSet {
            sku: None,
            price: Money::new(2_000, eur),
        })
        .unwrap();
        p.apply(&ProductEvent::PriceSet {
            sku: Some(Sku::parse("A-2").unwrap()),
            price: Money::new(2_500, eur),
        })
        .unwrap();
        assert_eq!(p.price_from()["EUR"], 2_000);
        p.apply(&ProductEvent::PriceSet {
            sku: Some(Sku::parse("A-1").unwrap()),
            price: Money::new(1_500, eur),
        })
        .unwrap();
        assert_eq!(p.price_from()["EUR"], 1_500);
    }

    #[test]
    fn only_published_products_are_visible() {
        let mut p = created();
        assert!(!p.visible());
        p.apply(&ProductEvent::ProductPublished {}).unwrap();
        assert!(p.visible());
        p.apply(&ProductEvent::ProductDiscontinued {}).unwrap();
        assert!(!p.visible());
    }
}
