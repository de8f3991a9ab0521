//! Which streams are whose: commerce streams, metadata streams (`$$name`), and the
//! event types the protocol reserves.

use domain::{Aggregate, Cart, Inventory, Order, Payment, Product};

/// Categories written only by the engine's command handlers and process managers:
/// the domain's aggregates, and the checkout process manager's own streams.
pub const COMMERCE_CATEGORIES: [&str; 6] = [
    Product::CATEGORY,
    Inventory::CATEGORY,
    Cart::CATEGORY,
    Order::CATEGORY,
    Payment::CATEGORY,
    "checkout",
];

/// The event type of a stream's metadata, in its `$$name` stream.
pub const METADATA_EVENT_TYPE: &str = "$metadata";
/// The event type that tombstones a stream, appended to the stream itself.
pub const TOMBSTONE_EVENT_TYPE: &str = "$streamDeleted";
/// The prefix of metadata streams.
pub const METADATA_STREAM_PREFIX: &str = "$$";

pub fn is_commerce_stream(stream: &str) -> bool {
    COMMERCE_CATEGORIES.contains(&eventstore::category_of(stream))
}

/// `s` for its metadata stream `$$s`, else the stream itself.
pub fn original_stream(stream: &str) -> &str {
    stream
        .strip_prefix(METADATA_STREAM_PREFIX)
        .unwrap_or(stream)
}

pub fn is_metadata_stream(stream: &str) -> bool {
    stream.starts_with(METADATA_STREAM_PREFIX)
}

pub fn metadata_stream_of(stream: &str) -> String {
    format!("{METADATA_STREAM_PREFIX}{stream}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commerce_streams_are_the_domains_categories() {
        assert!(is_commerce_stream("inventory-SKU-1"));
        assert!(is_commerce_stream("order-0190"));
        assert!(is_commerce_stream("checkout-1"));
        assert!(!is_commerce_stream("orders_sync-1"));
        assert!(!is_commerce_stream("$$order-1"));
        assert_eq!(original_stream("$$order-1"), "order-1");
    }
}
