//! The commerce domain. Every aggregate is a pure decider: `decide(&state, &command)`
//! returns the events a command produces or a typed [`DomainError`], and
//! `evolve(state, &event)` folds one event into the state. Nothing in this crate does
//! I/O, reads a clock or draws a random number: time, ids and catalog prices arrive
//! inside the commands, so the same command against the same state always decides
//! the same way and a replay of the log rebuilds the same state.
//!
//! Value types ([`Sku`], [`Quantity`], [`Money`], the id newtypes, ...) are parsed once
//! at the edge, including when serde deserialises them, so a value that exists is
//! valid. The aggregates are [`Product`], [`Inventory`] (one stream per SKU),
//! [`Cart`], [`Order`], [`Payment`] and [`Checkout`] (the checkout saga's state); each command names the stream it targets
//! (`command.stream_id()`), and the stored shape of every event is described in
//! `docs/events.md`.
//!
//! The aggregate states serialise with serde as well, for the command side's
//! snapshots: a snapshot is only a cache of a replay, and the log stays the truth.

use serde_json::Value;

mod address;
mod cart;
mod checkout;
mod codec;
mod codes;
mod error;
mod ids;
mod inventory;
mod line_item;
mod money;
mod order;
mod payment;
mod product;
mod quantity;
mod text;

pub use address::{AddressInput, CountryCode, ShippingAddress};
pub use cart::{Cart, CartCommand, CartEvent, CartOwner, CartStatus, MAX_CART_LINES};
pub use checkout::{
    CartStage, Checkout, CheckoutCommand, CheckoutEvent, CheckoutLine, CheckoutOutcome,
    CheckoutStatus, CheckoutTimer, LineStock, MoneyState, OrderStage, PaymentOperation,
    PaymentSettlement, ReservedLine, SettleFailure, UnavailableLine, MAX_PAYMENT_METHOD_CHARS,
};
pub use codes::{Sku, WarehouseId};
pub use error::DomainError;
pub use ids::{
    CartId, CheckoutId, CustomerId, GuestToken, OrderId, PaymentId, ProductId, RefundId,
    ReservationId,
};
pub use inventory::{
    Allocation, Inventory, InventoryCommand, InventoryEvent, Reservation, ReservationOutcome,
    WarehouseStock, DEFAULT_WAREHOUSE, DEFAULT_WAREHOUSE_PRIORITY, EXPIRE_MAX_RESERVATIONS,
    MAX_WAREHOUSES_PER_SKU,
};
pub use line_item::LineItem;
pub use money::{Currency, Money};
pub use order::{Order, OrderCommand, OrderEvent, OrderStatus, MAX_ORDER_LINES};
pub use payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus, MAX_REFUNDS_PER_PAYMENT};
pub use product::{
    PriceTarget, Product, ProductCommand, ProductEvent, ProductSku, ProductStatus, SkuVariant,
    MAX_SKUS_PER_PRODUCT,
};
pub use quantity::Quantity;

/// An aggregate: the state of one event stream plus the rules that guard it.
pub trait Aggregate: Default + Clone + Send + Sync + 'static {
    type Command: Send + Sync;
    type Event: DomainEvent + Clone + Send + Sync;

    /// The stream category, the prefix before the first `-` of every stream id of
    /// this aggregate (`inventory-SKU123`).
    const CATEGORY: &'static str;

    fn decide(&self, command: &Self::Command) -> Result<Vec<Self::Event>, DomainError>;
    fn evolve(self, event: &Self::Event) -> Self;

    /// Folds a whole history into a state, starting from `Default`.
    fn replay<'a, I>(events: I) -> Self
    where
        I: IntoIterator<Item = &'a Self::Event>,
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}

/// `<category>-<id>`: the id of an aggregate's stream.
pub(crate) fn stream_name(category: &str, id: &str) -> String {
    let mut name = String::with_capacity(category.len() + 1 + id.len());
    name.push_str(category);
    name.push('-');
    name.push_str(id);
    name
}

/// `<category>-<uuid>`, built without the formatting machinery: every command
/// computes the id of its stream.
pub(crate) fn uuid_stream_name(category: &str, id: &uuid::Uuid) -> String {
    let mut buffer = uuid::Uuid::encode_buffer();
    stream_name(category, id.hyphenated().encode_lower(&mut buffer))
}

/// How an event enum crosses the storage boundary: a stable type name, the schema
/// version of its current shape, and its fields as JSON. `from_stored` upcasts older
/// schema versions to the current shape.
pub trait DomainEvent: Sized {
    fn event_type(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    fn to_data(&self) -> Value;
    fn from_stored(event_type: &str, schema_version: u32, data: Value)
        -> Result<Self, DecodeError>;
}

/// An event that this build cannot read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("event {event_type} has unsupported schema version {schema_version}")]
    UnsupportedVersion {
        event_type: String,
        schema_version: u32,
    },
    #[error("event {event_type} is malformed: {reason}")]
    Malformed { event_type: String, reason: String },
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;

    #[test]
    fn stream_ids_are_the_category_a_dash_and_the_id() {
        let id = Uuid::parse_str("0192f3a4-5b6c-7d8e-9f01-23456789abcd").unwrap();
        let text = "0192f3a4-5b6c-7d8e-9f01-23456789abcd";
        let streams = [
            ("cart", Cart::stream_id(&CartId::from_uuid(id))),
            ("order", Order::stream_id(&OrderId::from_uuid(id))),
            ("payment", Payment::stream_id(&PaymentId::from_uuid(id))),
            ("product", Product::stream_id(&ProductId::from_uuid(id))),
            ("checkout", Checkout::stream_id(&CheckoutId::from_uuid(id))),
        ];
        for (category, stream) in streams {
            assert_eq!(stream, format!("{category}-{text}"));
        }
        let sku = Sku::parse("FLASH-1").unwrap();
        assert_eq!(Inventory::stream_id(&sku), "inventory-FLASH-1");
    }
}
