//! What queries answer with, and how a state is rebuilt from its stream for them:
//! read the events, decode each with the domain's `from_stored` (which upcasts old
//! schema versions), fold them with `Aggregate::replay`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::{
    Aggregate, Cart, CartOwner, DomainEvent, Inventory, LineItem, Money, Order, OrderStatus,
    Product,
};
use eventstore::{Direction, EventStore, RecordedEvent};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::problem::ApiError;

/// Events per read while replaying a stream.
const REPLAY_PAGE_EVENTS: usize = 1_000;
/// Longest stream a query replays. Carts and orders are bounded far below this
/// (100 lines); a stream past it is answered with a 500, not an unbounded read.
const REPLAY_MAX_EVENTS: u64 = 100_000;

/// A state rebuilt from its stream, and the version it reflects.
pub struct Replayed<A> {
    pub state: A,
    pub version: u64,
}

pub async fn replay<A: Aggregate>(
    store: &dyn EventStore,
    stream_id: &str,
) -> Result<Replayed<A>, ApiError> {
    let mut events = Vec::new();
    let mut version = 0;
    loop {
        let page = store
            .read_stream(
                stream_id,
                version + 1,
                Direction::Forward,
                REPLAY_PAGE_EVENTS,
            )
            .await?;
        for recorded in &page {
            let event = A::Event::from_stored(
                &recorded.event_type,
                recorded.schema_version,
                recorded.data.clone(),
            )
            .map_err(|e| {
                ApiError::internal(format!(
                    "{stream_id} event {} cannot be read: {e}",
                    recorded.version
                ))
            })?;
            events.push(event);
            version = recorded.version;
        }
        if page.len() < REPLAY_PAGE_EVENTS {
            break;
        }
        if version >= REPLAY_MAX_EVENTS {
            return Err(ApiError::internal(format!(
                "{stream_id} has more than {REPLAY_MAX_EVENTS} events to replay"
            )));
        }
    }
    Ok(Replayed {
        state: A::replay(&events),
        version,
    })
}

/// An amount in minor units of its currency.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MoneyView {
    pub minor: i64,
    #[schema(example = "EUR")]
    pub currency: String,
}

impl From<Money> for MoneyView {
    fn from(m: Money) -> Self {
        MoneyView {
            minor: m.minor,
            currency: m.currency.to_string(),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct LineView {
    pub sku: String,
    pub quantity: u32,
    pub unit_price: MoneyView,
    /// `quantity * unit_price`; absent only if it would overflow.
    pub total: Option<MoneyView>,
}

impl From<&LineItem> for LineView {
    fn from(line: &LineItem) -> Self {
        LineView {
            sku: line.sku.to_string(),
            quantity: line.quantity.get(),
            unit_price: line.unit_price.into(),
            total: line.total().ok().map(Into::into),
        }
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CartView {
    pub cart_id: Uuid,
    /// `customer` or `guest`.
    pub owner_kind: String,
    pub owner_id: Uuid,
    pub currency: String,
    /// `open`, `checked_out`, `abandoned` or `closed`.
    pub status: String,
    pub lines: Vec<LineView>,
    pub total: Option<MoneyView>,
    /// The stream version this view reflects.
    pub version: u64,
}

impl CartView {
    pub fn of(cart: &Cart, version: u64) -> Option<Self> {
        let (owner_kind, owner_id) = match cart.owner()? {
            CartOwner::Customer(id) => ("customer", *id.as_uuid()),
            CartOwner::Guest(token) => ("guest", *token.as_uuid()),
        };
        Some(CartView {
            cart_id: *cart.id()?.as_uuid(),
            owner_kind: owner_kind.to_owned(),
            owner_id,
            currency: cart.currency()?.to_string(),
            status: cart.status()?.as_str().to_owned(),
            lines: cart.lines().iter().map(LineView::from).collect(),
            total: cart.total().ok().map(Into::into),
            version,
        })
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AddressView {
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    pub country: String,
    pub email: Option<String>,
    pub phone: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct OrderView {
    pub order_id: Uuid,
    pub customer_id: Uuid,
    pub cart_id: Uuid,
    /// `placed`, `stock_reserved`, `payment_authorized`, `confirmed`, `shipped`,
    /// `delivered`, `cancelled` or `rejected`.
    pub status: String,
    /// Why the order was cancelled or rejected.
    pub reason: Option<String>,
    pub lines: Vec<LineView>,
    pub total: MoneyView,
    pub shipping_address: AddressView,
    pub placed_at: DateTime<Utc>,
    pub status_changed_at: DateTime<Utc>,
    pub payment_id: Option<Uuid>,
    pub tracking_number: Option<String>,
    pub version: u64,
}

impl OrderView {
    pub fn of(order: &Order, version: u64) -> Option<Self> {
        let status = order.status()?;
        let reason = match status {
            OrderStatus::Cancelled { reason } | OrderStatus::Rejected { reason } => {
                Some(reason.clone())
            }
            OrderStatus::Placed
            | OrderStatus::StockReserved
            | OrderStatus::PaymentAuthorized
            | OrderStatus::Confirmed
            | OrderStatus::Shipped
            | OrderStatus::Delivered => None,
        };
        let address = order.shipping_address()?;
        Some(OrderView {
            order_id: *order.id()?.as_uuid(),
            customer_id: *order.customer_id()?.as_uuid(),
            cart_id: *order.cart_id()?.as_uuid(),
            status: status.as_str().to_owned(),
            reason,
            lines: order.lines().iter().map(LineView::from).collect(),
            total: order.total()?.into(),
            shipping_address: AddressView {
                name: address.name().to_owned(),
                line1: address.line1().to_owned(),
                line2: address.line2().map(str::to_owned),
                city: address.city().to_owned(),
                postal_code: address.postal_code().to_owned(),
                country: address.country().to_string(),
                email: address.email().map(str::to_owned),
                phone: address.phone().map(str::to_owned),
            },
            placed_at: order.placed_at()?,
            status_changed_at: order.status_changed_at()?,
            payment_id: order.payment_id().map(|p| *p.as_uuid()),
            tracking_number: order.tracking_number().map(str::to_owned),
            version,
        })
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SkuView {
    pub sku: String,
    pub attributes: BTreeMap<String, String>,
    /// The SKU's own prices, one per currency (the product's apply otherwise).
    pub prices: Vec<MoneyView>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProductView {
    pub product_id: Uuid,
    pub title: String,
    pub description: String,
    pub brand: String,
    pub category: Vec<String>,
    /// `draft`, `published`, `unpublished` or `discontinued`.
    pub status: String,
    pub skus: Vec<SkuView>,
    /// Product-wide prices, one per currency.
    pub prices: Vec<MoneyView>,
    pub version: u64,
}

impl ProductView {
    pub fn of(product: &Product, version: u64) -> Option<Self> {
        Some(ProductView {
            product_id: *product.id()?.as_uuid(),
            title: product.title()?.to_owned(),
            description: product.description()?.to_owned(),
            brand: product.brand()?.to_owned(),
            category: product.category().to_vec(),
            status: product.status()?.as_str().to_owned(),
            skus: product
                .skus()
                .iter()
                .map(|s| SkuView {
                    sku: s.sku.to_string(),
                    attributes: s.attributes.clone(),
                    prices: s.prices.values().copied().map(Into::into).collect(),
                })
                .collect(),
            prices: product
                .product_prices()?
                .values()
                .copied()
                .map(Into::into)
                .collect(),
            version,
        })
    }
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WarehouseView {
    pub warehouse: String,
    pub priority: u32,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StockView {
    pub sku: String,
    pub on_hand: u64,
    pub reserved: u64,
    pub available: u64,
    pub active_reservations: usize,
    pub warehouses: Vec<WarehouseView>,
    pub version: u64,
}

impl StockView {
    pub fn of(sku: &str, inventory: &Inventory, version: u64) -> Self {
        StockView {
            sku: sku.to_owned(),
            on_hand: inventory.on_hand(),
            reserved: inventory.reserved(),
            available: inventory.available(),
            active_reservations: inventory.active_reservations(),
            warehouses: inventory
                .warehouses()
                .map(|(id, stock)| WarehouseView {
                    warehouse: id.to_string(),
                    priority: stock.priority(),
                    on_hand: stock.on_hand(),
                    reserved: stock.reserved(),
                    available: stock.available(),
                })
                .collect(),
            version,
        }
    }
}

/// A stored event as auditors read it: the store's envelope.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EventView {
    /// Global position in the log, gapless from 1.
    pub position: u64,
    pub stream_id: String,
    /// Version within the stream, from 1.
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
    /// Command, correlation and causation ids and the actor.
    pub metadata: Value,
    pub recorded_at: DateTime<Utc>,
    /// SHA-256 chaining this event to the one before it, hex.
    pub hash: String,
}

impl From<RecordedEvent> for EventView {
    fn from(e: RecordedEvent) -> Self {
        EventView {
            position: e.position,
            stream_id: e.stream_id,
            version: e.version,
            event_id: e.event_id,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: e.data,
            metadata: serde_json::to_value(&e.metadata).unwrap_or(Value::Null),
            recorded_at: e.recorded_at,
            hash: hex::encode(e.hash),
        }
    }
}
