//! The catalog entry of one product: its SKUs (variants with attributes), its
//! descriptive fields and its prices per currency, plus the publishing lifecycle
//! `draft -> published <-> unpublished`, and `discontinued` as the terminal state
//! from any of them. A price set on the product applies to every SKU without a price
//! of its own in that currency.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{
    codec, text, Aggregate, Currency, DecodeError, DomainError, DomainEvent, Money, ProductId, Sku,
};

pub const MAX_SKUS_PER_PRODUCT: u32 = 100;
const MAX_TITLE_CHARS: usize = 200;
const MAX_DESCRIPTION_CHARS: usize = 5_000;
const MAX_BRAND_CHARS: usize = 100;
const MAX_CATEGORY_DEPTH: u32 = 8;
const MAX_CATEGORY_SEGMENT_CHARS: usize = 64;
const MAX_ATTRIBUTES_PER_SKU: u32 = 32;
const MAX_ATTRIBUTE_NAME_CHARS: usize = 64;
const MAX_ATTRIBUTE_VALUE_CHARS: usize = 200;

/// A SKU as it is created: its code and its distinguishing attributes
/// (`{"size": "42", "colour": "blue"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuVariant {
    pub sku: Sku,
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Where a price applies: the whole product (the default for every SKU) or one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "sku", rename_all = "snake_case")]
pub enum PriceTarget {
    Product,
    Sku(Sku),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProductStatus {
    Draft,
    Published,
    Unpublished,
    Discontinued,
}

impl ProductStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Draft => "draft",
            Self::Published => "published",
            Self::Unpublished => "unpublished",
            Self::Discontinued => "discontinued",
        }
    }
}

/// One SKU of a product as the state holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProductSku {
    pub sku: Sku,
    pub attributes: BTreeMap<String, String>,
    pub prices: BTreeMap<Currency, Money>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductCommand {
    CreateProduct {
        product_id: ProductId,
        title: String,
        description: String,
        brand: String,
        /// From the root down, e.g. `["Shoes", "Running"]`.
        category: Vec<String>,
        skus: Vec<SkuVariant>,
    },
    AddSku {
        product_id: ProductId,
        variant: SkuVariant,
    },
    SetPrice {
        product_id: ProductId,
        target: PriceTarget,
        price: Money,
    },
    Publish {
        product_id: ProductId,
    },
    Unpublish {
        product_id: ProductId,
    },
    Discontinue {
        product_id: ProductId,
    },
}

impl ProductCommand {
    pub fn product_id(&self) -> ProductId {
        match self {
            Self::CreateProduct { product_id, .. }
            | Self::AddSku { product_id, .. }
            | Self::SetPrice { product_id, .. }
            | Self::Publish { product_id }
            | Self::Unpublish { product_id }
            | Self::Discontinue { product_id } => *product_id,
        }
    }

    pub fn stream_id(&self) -> String {
        Product::stream_id(&self.product_id())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateProduct { .. } => "CreateProduct",
            Self::AddSku { .. } => "AddSku",
            Self::SetPrice { .. } => "SetPrice",
            Self::Publish { .. } => "Publish",
            Self::Unpublish { .. } => "Unpublish",
            Self::Discontinue { .. } => "Discontinue",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProductEvent {
    ProductCreated {
        product_id: ProductId,
        title: String,
        description: String,
        brand: String,
        category: Vec<String>,
        skus: Vec<SkuVariant>,
    },
    SkuAdded {
        sku: Sku,
        attributes: BTreeMap<String, String>,
    },
    /// `sku: None` sets the product-wide price in `price.currency`.
    PriceSet {
        sku: Option<Sku>,
        price: Money,
    },
    ProductPublished {},
    ProductUnpublished {},
    ProductDiscontinued {},
}

impl ProductEvent {
    /// Every event type with its current schema version.
    pub const TYPES: &'static [(&'static str, u32)] = &[
        ("ProductCreated", 1),
        ("SkuAdded", 1),
        ("PriceSet", 1),
        ("ProductPublished", 1),
        ("ProductUnpublished", 1),
        ("ProductDiscontinued", 1),
    ];
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::ProductCreated { .. } => "ProductCreated",
            Self::SkuAdded { .. } => "SkuAdded",
            Self::PriceSet { .. } => "PriceSet",
            Self::ProductPublished {} => "ProductPublished",
            Self::ProductUnpublished {} => "ProductUnpublished",
            Self::ProductDiscontinued {} => "ProductDiscontinued",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            Self::ProductCreated { .. }
            | Self::SkuAdded { .. }
            | Self::PriceSet { .. }
            | Self::ProductPublished {}
            | Self::ProductUnpublished {}
            | Self::ProductDiscontinued {} => 1,
        }
    }

    fn to_data(&self) -> serde_json::Value {
        codec::to_data(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        data: serde_json::Value,
    ) -> Result<Self, DecodeError> {
        codec::from_stored(
            Self::TYPES,
            event_type,
            schema_version,
            data,
            codec::no_upcasts,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ProductData {
    id: ProductId,
    title: String,
    description: String,
    brand: String,
    category: Vec<String>,
    skus: Vec<ProductSku>,
    prices: BTreeMap<Currency, Money>,
    status: ProductStatus,
}

/// The state of one `product-<uuid>` stream; empty until `ProductCreated`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    data: Option<ProductData>,
}

impl Product {
    pub fn stream_id(id: &ProductId) -> String {
        crate::uuid_stream_name(Self::CATEGORY, id.as_uuid())
    }

    pub fn id(&self) -> Option<ProductId> {
        self.data.as_ref().map(|d| d.id)
    }
    pub fn status(&self) -> Option<ProductStatus> {
        self.data.as_ref().map(|d| d.status)
    }
    pub fn title(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.title.as_str())
    }
    pub fn description(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.description.as_str())
    }
    pub fn brand(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.brand.as_str())
    }
    pub fn category(&self) -> &[String] {
        self.data.as_ref().map_or(&[], |d| d.category.as_slice())
    }
    pub fn skus(&self) -> &[ProductSku] {
        self.data.as_ref().map_or(&[], |d| d.skus.as_slice())
    }
    /// The product-wide prices, one per currency.
    pub fn product_prices(&self) -> Option<&BTreeMap<Currency, Money>> {
        self.data.as_ref().map(|d| &d.prices)
    }

    /// The price a cart should use for `sku` in `currency`: the SKU's own price, else
    /// the product's; `None` if the SKU is not part of the product or has no price.
    pub fn price_for(&self, sku: &Sku, currency: Currency) -> Option<Money> {
        let data = self.data.as_ref()?;
        let entry = data.skus.iter().find(|s| &s.sku == sku)?;
        entry
            .prices
            .get(&currency)
            .or_else(|| data.prices.get(&currency))
            .copied()
    }

    /// Published products are the only ones that can be put in a cart.
    pub fn is_sellable(&self) -> bool {
        self.status() == Some(ProductStatus::Published)
    }

    /// The created, not discontinued product that `command` may change.
    fn changeable(&self, command: &ProductCommand) -> Result<&ProductData, DomainError> {
        let data = self.data.as_ref().ok_or(DomainError::NotFound {
            aggregate: Self::CATEGORY,
        })?;
        if data.id != command.product_id() {
            return Err(DomainError::WrongStream {
                expected: Self::stream_id(&data.id),
                actual: command.stream_id(),
            });
        }
        if data.status == ProductStatus::Discontinued {
            return Err(DomainError::InvalidTransition {
                from: data.status.as_str(),
                command: command.name(),
            });
        }
        Ok(data)
    }
}

fn check_variant(variant: &SkuVariant) -> Result<(), DomainError> {
    if variant.attributes.len() > MAX_ATTRIBUTES_PER_SKU as usize {
        return Err(DomainError::LimitExceeded {
            limit: "sku_attributes",
            max: MAX_ATTRIBUTES_PER_SKU,
        });
    }
    for (name, value) in &variant.attributes {
        text::required("attribute_name", name, MAX_ATTRIBUTE_NAME_CHARS)?;
        text::required("attribute_value", value, MAX_ATTRIBUTE_VALUE_CHARS)?;
    }
    Ok(())
}

fn check_category(category: &[String]) -> Result<(), DomainError> {
    if category.is_empty() {
        return Err(DomainError::invalid("category", "needs at least one level"));
    }
    if category.len() > MAX_CATEGORY_DEPTH as usize {
        return Err(DomainError::LimitExceeded {
            limit: "category_depth",
            max: MAX_CATEGORY_DEPTH,
        });
    }
    category
        .iter()
        .try_for_each(|segment| text::required("category", segment, MAX_CATEGORY_SEGMENT_CHARS))
}

impl Aggregate for Product {
    type Command = ProductCommand;
    type Event = ProductEvent;
    const CATEGORY: &'static str = "product";

    fn decide(&self, command: &ProductCommand) -> Result<Vec<ProductEvent>, DomainError> {
        match command {
            ProductCommand::CreateProduct {
                product_id,
                title,
                description,
                brand,
                category,
                skus,
            } => {
                if self.data.is_some() {
                    return Err(DomainError::AlreadyExists {
                        aggregate: Self::CATEGORY,
                    });
                }
                text::required("title", title, MAX_TITLE_CHARS)?;
                text::bounded("description", description, MAX_DESCRIPTION_CHARS, true)?;
                text::required("brand", brand, MAX_BRAND_CHARS)?;
                check_category(category)?;
                if skus.is_empty() {
                    return Err(DomainError::invalid(
                        "skus",
                        "a product needs at least one SKU",
                    ));
                }
                if skus.len() > MAX_SKUS_PER_PRODUCT as usize {
                    return Err(DomainError::LimitExceeded {
                        limit: "product_skus",
                        max: MAX_SKUS_PER_PRODUCT,
                    });
                }
                for (i, variant) in skus.iter().enumerate() {
                    check_variant(variant)?;
                    if skus[..i].iter().any(|earlier| earlier.sku == variant.sku) {
                        return Err(DomainError::DuplicateSku {
                            sku: variant.sku.clone(),
                        });
                    }
                }
                Ok(vec![ProductEvent::ProductCreated {
                    product_id: *product_id,
                    title: title.clone(),
                    description: description.clone(),
                    brand: brand.clone(),
                    category: category.clone(),
                    skus: skus.clone(),
                }])
            }
            ProductCommand::AddSku { variant, .. } => {
                let data = self.changeable(command)?;
                check_variant(variant)?;
                if data.skus.iter().any(|s| s.sku == variant.sku) {
                    return Err(DomainError::DuplicateSku {
                        sku: variant.sku.clone(),
                    });
                }
                if data.skus.len() >= MAX_SKUS_PER_PRODUCT as usize {
                    return Err(DomainError::LimitExceeded {
                        limit: "product_skus",
                        max: MAX_SKUS_PER_PRODUCT,
                    });
                }
                Ok(vec![ProductEvent::SkuAdded {
                    sku: variant.sku.clone(),
                    attributes: variant.attributes.clone(),
                }])
            }
            ProductCommand::SetPrice { target, price, .. } => {
                let data = self.changeable(command)?;
                if !price.is_positive() {
                    return Err(DomainError::invalid(
                        "price",
                        format!("must be positive, got {price}"),
                    ));
                }
                let sku = match target {
                    PriceTarget::Product => None,
                    PriceTarget::Sku(sku) => {
                        if !data.skus.iter().any(|s| &s.sku == sku) {
                            return Err(DomainError::UnknownSku { sku: sku.clone() });
                        }
                        Some(sku.clone())
                    }
                };
                Ok(vec![ProductEvent::PriceSet { sku, price: *price }])
            }
            ProductCommand::Publish { .. } => {
                let data = self.changeable(command)?;
                match data.status {
                    ProductStatus::Draft | ProductStatus::Unpublished => {}
                    ProductStatus::Published | ProductStatus::Discontinued => {
                        return Err(DomainError::InvalidTransition {
                            from: data.status.as_str(),
                            command: command.name(),
                        })
                    }
                }
                if data.prices.is_empty() {
                    if let Some(unpriced) = data.skus.iter().find(|s| s.prices.is_empty()) {
                        return Err(DomainError::MissingPrice {
                            sku: unpriced.sku.clone(),
                        });
                    }
                }
                Ok(vec![ProductEvent::ProductPublished {}])
            }
            ProductCommand::Unpublish { .. } => {
                let data = self.changeable(command)?;
                match data.status {
                    ProductStatus::Published => Ok(vec![ProductEvent::ProductUnpublished {}]),
                    ProductStatus::Draft
                    | ProductStatus::Unpublished
                    | ProductStatus::Discontinued => Err(DomainError::InvalidTransition {
                        from: data.status.as_str(),
                        command: command.name(),
                    }),
                }
            }
            ProductCommand::Discontinue { .. } => {
                self.changeable(command)?;
                Ok(vec![ProductEvent::ProductDiscontinued {}])
            }
        }
    }

    fn evolve(mut self, event: &ProductEvent) -> Self {
        match event {
            ProductEvent::ProductCreated {
                product_id,
                title,
                description,
                brand,
                category,
                skus,
            } => {
                self.data = Some(ProductData {
                    id: *product_id,
                    title: title.clone(),
                    description: description.clone(),
                    brand: brand.clone(),
                    category: category.clone(),
                    skus: skus
                        .iter()
                        .map(|v| ProductSku {
                            sku: v.sku.clone(),
                            attributes: v.attributes.clone(),
                            prices: BTreeMap::new(),
                        })
                        .collect(),
                    prices: BTreeMap::new(),
                    status: ProductStatus::Draft,
                });
            }
            ProductEvent::SkuAdded { sku, attributes } => {
                if let Some(data) = &mut self.data {
                    data.skus.push(ProductSku {
                        sku: sku.clone(),
                        attributes: attributes.clone(),
                        prices: BTreeMap::new(),
                    });
                }
            }
            ProductEvent::PriceSet { sku, price } => {
                if let Some(data) = &mut self.data {
                    let prices = match sku {
                        None => Some(&mut data.prices),
                        Some(sku) => data
                            .skus
                            .iter_mut()
                            .find(|s| &s.sku == sku)
                            .map(|s| &mut s.prices),
                    };
                    if let Some(prices) = prices {
                        prices.insert(price.currency, *price);
                    }
                }
            }
            ProductEvent::ProductPublished {} => self.set_status(ProductStatus::Published),
            ProductEvent::ProductUnpublished {} => self.set_status(ProductStatus::Unpublished),
            ProductEvent::ProductDiscontinued {} => self.set_status(ProductStatus::Discontinued),
        }
        self
    }
}

impl Product {
    fn set_status(&mut self, status: ProductStatus) {
        if let Some(data) = &mut self.data {
            data.status = status;
        }
    }
}
