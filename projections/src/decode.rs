//! From stored events to the domain's events. Decoded once per batch and shared by
//! every projection that reads the batch; a projection only looks at the categories
//! it reads, so an event it cannot decode stops only the projections that need it.

use std::ops::BitOr;

use serde::de::DeserializeOwned;

use chrono::{DateTime, Utc};
use domain::{
    CartEvent, CartId, DomainEvent, InventoryEvent, OrderEvent, OrderId, ProductEvent, ProductId,
    Sku,
};
use eventstore::{category_of, RecordedEvent};

/// The stream categories read models are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Category {
    Product,
    Inventory,
    Cart,
    Order,
}

impl Category {
    pub(crate) fn of(stream_id: &str) -> Option<Category> {
        match category_of(stream_id) {
            "product" => Some(Category::Product),
            "inventory" => Some(Category::Inventory),
            "cart" => Some(Category::Cart),
            "order" => Some(Category::Order),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Category::Product => 1,
            Category::Inventory => 2,
            Category::Cart => 4,
            Category::Order => 8,
        }
    }
}

/// A set of categories.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Categories(u8);

impl Categories {
    pub(crate) fn contains(self, category: Category) -> bool {
        self.0 & category.bit() != 0
    }
    pub(crate) fn union(self, other: Categories) -> Categories {
        Categories(self.0 | other.0)
    }
}

impl From<Category> for Categories {
    fn from(c: Category) -> Self {
        Categories(c.bit())
    }
}

impl BitOr for Category {
    type Output = Categories;
    fn bitor(self, rhs: Category) -> Categories {
        Categories(self.bit() | rhs.bit())
    }
}

/// A domain event with the identity of its stream.
#[derive(Debug, Clone)]
pub(crate) enum ShopEvent {
    Product { id: ProductId, event: ProductEvent },
    Inventory { sku: Sku, event: InventoryEvent },
    Cart { id: CartId, event: CartEvent },
    Order { id: OrderId, event: OrderEvent },
}

/// One event of a category some projection reads.
#[derive(Debug, Clone)]
pub(crate) struct Decoded {
    pub position: u64,
    /// The event's version in its stream: 1 for the first event of a stream.
    pub version: u64,
    pub recorded_at: DateTime<Utc>,
    pub category: Category,
    /// The event, or why it could not be decoded (a poison event).
    pub event: Result<ShopEvent, String>,
}

/// Events read from the log, decoded for the categories asked for.
#[derive(Debug, Clone, Default)]
pub(crate) struct Batch {
    pub events: Vec<Decoded>,
    /// The position of the last event read, whether or not it was decoded.
    pub last_position: u64,
}

impl Batch {
    /// Decodes `events` (ascending positions), keeping the categories in `wanted`.
    pub(crate) fn decode(events: Vec<RecordedEvent>, wanted: Categories) -> Batch {
        let last_position = events.last().map_or(0, |e| e.position);
        let events = events
            .into_iter()
            .filter_map(|e| decode(e, wanted))
            .collect();
        Batch {
            events,
            last_position,
        }
    }
}

impl Batch {
    /// The events after `after` up to and including `upto`, as a batch ending at
    /// `upto` (to apply part of a batch).
    pub(crate) fn slice(&self, after: u64, upto: u64) -> Batch {
        Batch {
            events: self
                .events
                .iter()
                .filter(|e| e.position > after && e.position <= upto)
                .cloned()
                .collect(),
            last_position: upto,
        }
    }
}

/// The event if its category is in `wanted`.
pub(crate) fn decode(event: RecordedEvent, wanted: Categories) -> Option<Decoded> {
    let category = Category::of(&event.stream_id)?;
    if !wanted.contains(category) {
        return None;
    }
    let decoded = decode_event(
        category,
        &event.stream_id,
        &event.event_type,
        event.schema_version,
        event.data,
    );
    Some(Decoded {
        position: event.position,
        version: event.version,
        recorded_at: event.recorded_at,
        category,
        event: decoded,
    })
}

/// Decodes an event from its stored parts, `json` being the text of its data.
///
/// The usual case, an event at its type's current schema version, is deserialised
/// straight from the text into the domain's event enum (serde's external tagging,
/// `{"Type": data}`, exactly as `DomainEvent::from_stored` does from a parsed value);
/// anything else (older versions to upcast, unknown types) goes through
/// `from_stored`, so the domain's upcasting and errors apply unchanged. `buf` is
/// scratch space kept between calls.
pub(crate) fn decode_text(
    category: Category,
    stream_id: &str,
    event_type: &str,
    schema_version: u32,
    json: &[u8],
    buf: &mut Vec<u8>,
) -> Result<ShopEvent, String> {
    fn fast<E: DomainEvent + DeserializeOwned>(
        types: &[(&str, u32)],
        event_type: &str,
        schema_version: u32,
        json: &[u8],
        buf: &mut Vec<u8>,
    ) -> Result<E, String> {
        let current = types
            .iter()
            .any(|&(t, v)| t == event_type && v == schema_version);
        if current {
            // The type is one of the enum's own names: plain identifiers, no escaping.
            buf.clear();
            buf.extend_from_slice(b"{\"");
            buf.extend_from_slice(event_type.as_bytes());
            buf.extend_from_slice(b"\":");
            buf.extend_from_slice(json);
            buf.push(b'}');
            return serde_json::from_slice(buf).map_err(|e| {
                domain::DecodeError::Malformed {
                    event_type: event_type.to_owned(),
                    reason: e.to_string(),
                }
                .to_string()
            });
        }
        let data = serde_json::from_slice(json).map_err(|e| {
            domain::DecodeError::Malformed {
                event_type: event_type.to_owned(),
                reason: e.to_string(),
            }
            .to_string()
        })?;
        E::from_stored(event_type, schema_version, data).map_err(|e| e.to_string())
    }
    let id = stream_id
        .split_once('-')
        .map(|(_, id)| id)
        .ok_or_else(|| format!("stream id {stream_id:?} has no id"))?;
    let bad_id = |e: domain::DomainError| format!("stream id {stream_id:?}: {e}");
    Ok(match category {
        Category::Product => ShopEvent::Product {
            id: ProductId::parse(id).map_err(bad_id)?,
            event: fast(ProductEvent::TYPES, event_type, schema_version, json, buf)?,
        },
        Category::Inventory => ShopEvent::Inventory {
            sku: Sku::parse(id).map_err(bad_id)?,
            event: fast(InventoryEvent::TYPES, event_type, schema_version, json, buf)?,
        },
        Category::Cart => ShopEvent::Cart {
            id: CartId::parse(id).map_err(bad_id)?,
            event: fast(CartEvent::TYPES, event_type, schema_version, json, buf)?,
        },
        Category::Order => ShopEvent::Order {
            id: OrderId::parse(id).map_err(bad_id)?,
            event: fast(OrderEvent::TYPES, event_type, schema_version, json, buf)?,
        },
    })
}

fn decode_event(
    category: Category,
    stream_id: &str,
    event_type: &str,
    schema_version: u32,
    data: serde_json::Value,
) -> Result<ShopEvent, String> {
    // The category was found before the first '-', so the id follows it.
    let id = stream_id
        .split_once('-')
        .map(|(_, id)| id)
        .ok_or_else(|| format!("stream id {stream_id:?} has no id"))?;
    let bad_id = |e: domain::DomainError| format!("stream id {stream_id:?}: {e}");
    let bad_event = |e: domain::DecodeError| e.to_string();
    Ok(match category {
        Category::Product => ShopEvent::Product {
            id: ProductId::parse(id).map_err(bad_id)?,
            event: ProductEvent::from_stored(event_type, schema_version, data)
                .map_err(bad_event)?,
        },
        Category::Inventory => ShopEvent::Inventory {
            sku: Sku::parse(id).map_err(bad_id)?,
            event: InventoryEvent::from_stored(event_type, schema_version, data)
                .map_err(bad_event)?,
        },
        Category::Cart => ShopEvent::Cart {
            id: CartId::parse(id).map_err(bad_id)?,
            event: CartEvent::from_stored(event_type, schema_version, data).map_err(bad_event)?,
        },
        Category::Order => ShopEvent::Order {
            id: OrderId::parse(id).map_err(bad_id)?,
            event: OrderEvent::from_stored(event_type, schema_version, data).map_err(bad_event)?,
        },
    })
}
