//! The storage form of events, across aggregates.

use domain::{
    CartEvent, CheckoutEvent, DecodeError, DomainEvent, InventoryEvent, OrderEvent, PaymentEvent,
    ProductEvent,
};
use serde_json::json;

use crate::support::{at, eur, id, qty, sku, stored, warehouse};

fn check_table<E: DomainEvent + std::fmt::Debug + PartialEq>(types: &[(&str, u32)], samples: &[E]) {
    for sample in samples {
        assert!(
            types.contains(&(sample.event_type(), sample.schema_version())),
            "{} v{} is not in the type table",
            sample.event_type(),
            sample.schema_version()
        );
        assert_eq!(&stored(sample), sample);
    }
    let mut names: Vec<&str> = types.iter().map(|(name, _)| *name).collect();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), types.len(), "duplicate type names");
}

#[test]
fn to_data_holds_the_fields_without_the_type_name() {
    let event = InventoryEvent::StockReceived {
        warehouse: warehouse("east"),
        quantity: qty(3),
    };
    assert_eq!(event.event_type(), "StockReceived");
    assert_eq!(
        event.to_data(),
        json!({ "warehouse": "east", "quantity": 3 })
    );
    assert_eq!(ProductEvent::ProductPublished {}.to_data(), json!({}));
    assert_eq!(
        CartEvent::CartLineRemoved { sku: sku("A") }.to_data(),
        json!({ "sku": "A" })
    );
}

#[test]
fn money_and_times_are_stored_as_plain_numbers_and_strings() {
    let event = PaymentEvent::PaymentCaptured {
        amount: eur(1_999),
        at: at(0),
    };
    assert_eq!(
        event.to_data(),
        json!({ "amount": { "minor": 1999, "currency": "EUR" }, "at": "2023-11-14T22:13:20Z" })
    );
}

#[test]
fn an_unknown_event_type_is_refused() {
    assert_eq!(
        OrderEvent::from_stored("OrderTeleported", 1, json!({})),
        Err(DecodeError::UnknownType("OrderTeleported".into()))
    );
    assert_eq!(
        PaymentEvent::from_stored("StockReceived", 2, json!({})),
        Err(DecodeError::UnknownType("StockReceived".into())),
        "an event of another aggregate is unknown here"
    );
}

#[test]
fn a_payload_that_fails_validation_is_malformed() {
    let bad_sku =
        CartEvent::from_stored("CartLineRemoved", 1, json!({ "sku": "no spaces allowed" }));
    assert!(matches!(bad_sku, Err(DecodeError::Malformed { .. })));
    let missing_field = PaymentEvent::from_stored("PaymentVoided", 1, json!({}));
    assert!(matches!(missing_field, Err(DecodeError::Malformed { .. })));
}

#[test]
fn type_tables_list_every_sampled_event_at_its_current_version() {
    check_table(
        InventoryEvent::TYPES,
        &[
            InventoryEvent::StockReceived {
                warehouse: warehouse("main"),
                quantity: qty(1),
            },
            InventoryEvent::StockAdjusted {
                warehouse: warehouse("main"),
                delta: -1,
                reason: "r".into(),
            },
            InventoryEvent::WarehousePrioritySet {
                warehouse: warehouse("main"),
                priority: 1,
            },
            InventoryEvent::ReservationReleased {
                reservation_id: id(1),
                order_id: id(2),
                allocations: vec![],
            },
            InventoryEvent::ReservationCommitted {
                reservation_id: id(1),
                order_id: id(2),
                allocations: vec![],
            },
            InventoryEvent::ReservationExpired {
                reservation_id: id(1),
                order_id: id(2),
                allocations: vec![],
                expired_at: at(0),
            },
        ],
    );
    check_table(
        ProductEvent::TYPES,
        &[
            ProductEvent::ProductPublished {},
            ProductEvent::ProductDiscontinued {},
        ],
    );
    check_table(
        CartEvent::TYPES,
        &[
            CartEvent::CartReopened {},
            CartEvent::CartClosed { order_id: id(1) },
        ],
    );
    check_table(
        OrderEvent::TYPES,
        &[OrderEvent::OrderConfirmed { at: at(0) }],
    );
    check_table(
        PaymentEvent::TYPES,
        &[PaymentEvent::PaymentVoided { at: at(0) }],
    );
}

#[test]
fn event_type_names_are_unique_across_aggregates() {
    let mut all: Vec<&str> = [
        ProductEvent::TYPES,
        InventoryEvent::TYPES,
        CartEvent::TYPES,
        OrderEvent::TYPES,
        PaymentEvent::TYPES,
        CheckoutEvent::TYPES,
    ]
    .iter()
    .flat_map(|types| types.iter().map(|(name, _)| *name))
    .collect();
    let count = all.len();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), count);
}

#[test]
fn only_stock_received_is_past_its_first_version() {
    let evolved: Vec<(&str, u32)> = [
        ProductEvent::TYPES,
        InventoryEvent::TYPES,
        CartEvent::TYPES,
        OrderEvent::TYPES,
        PaymentEvent::TYPES,
        CheckoutEvent::TYPES,
    ]
    .iter()
    .flat_map(|types| types.iter().copied())
    .filter(|&(_, version)| version != 1)
    .collect();
    assert_eq!(evolved, [("StockReceived", 2)]);
}
