use domain::{
    Aggregate, Allocation, DecodeError, DomainError, DomainEvent, Inventory, InventoryCommand,
    InventoryEvent, Quantity, ReservationId, ReservationOutcome, DEFAULT_WAREHOUSE_PRIORITY,
    EXPIRE_MAX_RESERVATIONS, MAX_WAREHOUSES_PER_SKU,
};
use serde_json::json;

use crate::support::{apply, at, decide_one, given, id, qty, refusal, sku, warehouse};

const SKU: &str = "TR-42";

fn receive(wh: &str, n: u32) -> InventoryCommand {
    InventoryCommand::ReceiveStock {
        sku: sku(SKU),
        warehouse: warehouse(wh),
        quantity: qty(n),
    }
}

fn priority(wh: &str, priority: u32) -> InventoryCommand {
    InventoryCommand::SetWarehousePriority {
        sku: sku(SKU),
        warehouse: warehouse(wh),
        priority,
    }
}

fn adjust(wh: &str, delta: i64) -> InventoryCommand {
    InventoryCommand::AdjustStock {
        sku: sku(SKU),
        warehouse: warehouse(wh),
        delta,
        reason: "stocktake".into(),
    }
}

fn reserve(reservation: u128, n: u32, expires: i64) -> InventoryCommand {
    InventoryCommand::ReserveStock {
        sku: sku(SKU),
        reservation_id: id(reservation),
        order_id: id(1_000 + reservation),
        quantity: qty(n),
        expires_at: at(expires),
    }
}

fn release(reservation: u128) -> InventoryCommand {
    InventoryCommand::ReleaseReservation {
        sku: sku(SKU),
        reservation_id: id(reservation),
    }
}

fn commit(reservation: u128) -> InventoryCommand {
    InventoryCommand::CommitReservation {
        sku: sku(SKU),
        reservation_id: id(reservation),
    }
}

fn expire(now: i64) -> InventoryCommand {
    InventoryCommand::ExpireReservations {
        sku: sku(SKU),
        now: at(now),
    }
}

fn allocations(event: &InventoryEvent) -> Vec<(String, u32)> {
    match event {
        InventoryEvent::StockReserved { allocations, .. } => allocations
            .iter()
            .map(|a| (a.warehouse.to_string(), a.quantity.get()))
            .collect(),
        other => panic!("not a reservation: {other:?}"),
    }
}

#[test]
fn stream_id_is_inventory_dash_sku() {
    assert_eq!(Inventory::CATEGORY, "inventory");
    assert_eq!(Inventory::stream_id(&sku(SKU)), "inventory-TR-42");
    assert_eq!(reserve(1, 1, 0).stream_id(), "inventory-TR-42");
}

#[test]
fn receiving_stock_adds_to_on_hand_and_available() {
    let inventory: Inventory =
        given(&[receive("main", 10), receive("main", 5), receive("east", 3)]);
    assert_eq!(inventory.on_hand(), 18);
    assert_eq!(inventory.available(), 18);
    assert_eq!(inventory.reserved(), 0);
    let main = inventory.warehouse(&warehouse("main")).unwrap();
    assert_eq!(
        (main.on_hand(), main.priority()),
        (15, DEFAULT_WAREHOUSE_PRIORITY)
    );
}

#[test]
fn reserving_more_than_available_is_refused() {
    let inventory: Inventory = given(&[receive("main", 3), reserve(1, 2, 60)]);
    assert_eq!(
        refusal(&inventory, &reserve(2, 2, 60)),
        DomainError::OutOfStock {
            sku: sku(SKU),
            requested: 2,
            available: 1
        }
    );
}

#[test]
fn reserving_on_a_sku_never_stocked_is_out_of_stock() {
    assert_eq!(
        refusal(&Inventory::default(), &reserve(1, 1, 60)),
        DomainError::OutOfStock {
            sku: sku(SKU),
            requested: 1,
            available: 0
        }
    );
}

#[test]
fn reservation_prefers_the_lower_priority_number() {
    let inventory: Inventory = given(&[
        receive("big", 100),
        receive("near", 5),
        priority("big", 2),
        priority("near", 1),
    ]);
    assert_eq!(
        allocations(&decide_one(&inventory, &reserve(1, 4, 60))),
        [("near".into(), 4)]
    );
}

#[test]
fn among_equal_priorities_reservation_prefers_the_most_available_stock() {
    let inventory: Inventory = given(&[receive("a", 5), receive("b", 9), receive("c", 7)]);
    assert_eq!(
        allocations(&decide_one(&inventory, &reserve(1, 4, 60))),
        [("b".into(), 4)]
    );
}

#[test]
fn a_reservation_splits_across_warehouses_when_one_is_not_enough() {
    let inventory: Inventory = given(&[
        receive("a", 5),
        receive("b", 9),
        priority("a", 1),
        priority("b", 2),
    ]);
    let event = decide_one(&inventory, &reserve(1, 12, 60));
    assert_eq!(allocations(&event), [("a".into(), 5), ("b".into(), 7)]);
    let inventory = inventory.evolve(&event);
    assert_eq!(inventory.available(), 2);
    assert_eq!(inventory.warehouse(&warehouse("a")).unwrap().available(), 0);
    assert_eq!(inventory.warehouse(&warehouse("b")).unwrap().reserved(), 7);
}

#[test]
fn reserved_stock_is_not_available_to_others() {
    let inventory: Inventory = given(&[receive("main", 10), reserve(1, 7, 60)]);
    assert_eq!(
        (
            inventory.on_hand(),
            inventory.reserved(),
            inventory.available()
        ),
        (10, 7, 3)
    );
    let reservation = inventory.reservation(&id(1)).unwrap();
    assert_eq!(reservation.quantity, qty(7));
    assert_eq!(reservation.order_id, id(1_001));
    assert_eq!(
        reservation.allocations,
        [Allocation {
            warehouse: warehouse("main"),
            quantity: qty(7)
        }]
    );
}

#[test]
fn a_reservation_id_is_accepted_only_once() {
    let active: Inventory = given(&[receive("main", 10), reserve(1, 1, 60)]);
    assert_eq!(
        refusal(&active, &reserve(1, 1, 60)),
        DomainError::ReservationExists {
            reservation_id: id(1)
        }
    );
    let released: Inventory = given(&[receive("main", 10), reserve(1, 1, 60), release(1)]);
    assert_eq!(
        refusal(&released, &reserve(1, 1, 60)),
        DomainError::ReservationExists {
            reservation_id: id(1)
        }
    );
}

#[test]
fn releasing_a_reservation_makes_its_stock_available_again() {
    let inventory: Inventory = given(&[receive("main", 10), reserve(1, 7, 60), release(1)]);
    assert_eq!(
        (
            inventory.on_hand(),
            inventory.reserved(),
            inventory.available()
        ),
        (10, 0, 10)
    );
    assert_eq!(
        inventory.reservation_outcome(&id(1)),
        Some(ReservationOutcome::Released)
    );
    assert_eq!(inventory.active_reservations(), 0);
}

#[test]
fn committing_a_reservation_takes_its_units_out_of_on_hand() {
    let inventory: Inventory = given(&[
        receive("a", 4),
        receive("b", 10),
        priority("a", 0),
        reserve(1, 6, 60),
        commit(1),
    ]);
    assert_eq!(
        (
            inventory.on_hand(),
            inventory.reserved(),
            inventory.available()
        ),
        (8, 0, 8)
    );
    assert_eq!(inventory.warehouse(&warehouse("a")).unwrap().on_hand(), 0);
    assert_eq!(inventory.warehouse(&warehouse("b")).unwrap().on_hand(), 8);
    assert_eq!(
        inventory.reservation_outcome(&id(1)),
        Some(ReservationOutcome::Committed)
    );
}

#[test]
fn releasing_or_committing_an_unknown_reservation_is_refused() {
    let inventory: Inventory = given(&[receive("main", 10)]);
    for command in [release(9), commit(9)] {
        assert_eq!(
            refusal(&inventory, &command),
            DomainError::ReservationUnknown {
                reservation_id: id(9)
            }
        );
    }
}

#[test]
fn committing_an_expired_reservation_reports_that_it_expired() {
    let inventory: Inventory = given(&[receive("main", 10), reserve(1, 2, 60), expire(60)]);
    assert_eq!(
        refusal(&inventory, &commit(1)),
        DomainError::ReservationEnded {
            reservation_id: id(1),
            outcome: ReservationOutcome::Expired
        }
    );
    assert_eq!(
        refusal(&inventory, &release(1)).code(),
        "reservation-ended",
        "releasing twice is visible to the caller too"
    );
}

#[test]
fn expiring_ends_every_reservation_due_by_now_and_no_other() {
    let inventory: Inventory = given(&[
        receive("main", 10),
        reserve(1, 1, 30),
        reserve(2, 2, 60),
        reserve(3, 3, 61),
    ]);
    assert_eq!(inventory.next_expiry(), Some(at(30)));
    let events = inventory.decide(&expire(60)).unwrap();
    let expired: Vec<ReservationId> = events
        .iter()
        .map(|e| match e {
            InventoryEvent::ReservationExpired {
                reservation_id,
                expired_at,
                ..
            } => {
                assert_eq!(*expired_at, at(60));
                *reservation_id
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(expired, [id(1), id(2)]);
    let inventory = apply(inventory, &expire(60)).unwrap();
    assert_eq!((inventory.reserved(), inventory.available()), (3, 7));
    assert!(!inventory.has_expired_reservations(at(60)));
    assert!(inventory.has_expired_reservations(at(61)));
}

#[test]
fn expiring_with_nothing_due_decides_nothing() {
    let inventory: Inventory = given(&[receive("main", 10), reserve(1, 1, 30)]);
    assert_eq!(inventory.decide(&expire(29)), Ok(vec![]));
}

#[test]
fn one_expiry_command_ends_a_bounded_number_of_reservations() {
    let mut commands = vec![receive("main", 1_000_000)];
    let total = EXPIRE_MAX_RESERVATIONS as u128 + 5;
    commands.extend((0..total).map(|n| reserve(n, 1, 0)));
    let inventory: Inventory = given(&commands);
    assert_eq!(
        inventory.decide(&expire(0)).unwrap().len(),
        EXPIRE_MAX_RESERVATIONS
    );
    let inventory = apply(inventory, &expire(0)).unwrap();
    assert!(inventory.has_expired_reservations(at(0)));
    assert_eq!(inventory.decide(&expire(0)).unwrap().len(), 5);
}

#[test]
fn a_negative_adjustment_cannot_take_stock_below_what_is_reserved() {
    let inventory: Inventory = given(&[receive("main", 10), reserve(1, 7, 60)]);
    assert_eq!(
        refusal(&inventory, &adjust("main", -4)),
        DomainError::AdjustmentExceedsAvailable {
            warehouse: warehouse("main"),
            delta: -4,
            available: 3
        }
    );
    let inventory = apply(inventory, &adjust("main", -3)).unwrap();
    assert_eq!((inventory.on_hand(), inventory.available()), (7, 0));
}

#[test]
fn a_negative_adjustment_cannot_make_stock_negative() {
    assert_eq!(
        refusal(&Inventory::default(), &adjust("ghost", -1)),
        DomainError::AdjustmentExceedsAvailable {
            warehouse: warehouse("ghost"),
            delta: -1,
            available: 0
        }
    );
}

#[test]
fn a_positive_adjustment_adds_stock() {
    let inventory: Inventory = given(&[adjust("found", 3)]);
    assert_eq!(inventory.available(), 3);
}

#[test]
fn an_adjustment_needs_a_bounded_non_zero_delta_and_a_reason() {
    for delta in [0, 1_000_001, -1_000_001, i64::MIN] {
        assert_eq!(
            refusal(&Inventory::default(), &adjust("main", delta)).code(),
            "quantity-out-of-range"
        );
    }
    let no_reason = InventoryCommand::AdjustStock {
        sku: sku(SKU),
        warehouse: warehouse("main"),
        delta: 1,
        reason: " ".into(),
    };
    assert!(matches!(
        refusal(&Inventory::default(), &no_reason),
        DomainError::Invalid {
            field: "reason",
            ..
        }
    ));
}

#[test]
fn the_number_of_warehouses_per_sku_is_bounded() {
    let commands: Vec<_> = (0..MAX_WAREHOUSES_PER_SKU)
        .map(|i| receive(&format!("w{i}"), 1))
        .collect();
    let inventory: Inventory = given(&commands);
    assert_eq!(
        refusal(&inventory, &receive("one-more", 1)),
        DomainError::LimitExceeded {
            limit: "warehouses",
            max: MAX_WAREHOUSES_PER_SKU
        }
    );
    assert!(
        inventory.decide(&receive("w0", 1)).is_ok(),
        "known warehouses still take stock"
    );
}

#[test]
fn a_refused_reservation_changes_nothing() {
    let inventory: Inventory = given(&[receive("a", 2), receive("b", 2)]);
    let before = inventory.clone();
    assert!(apply(inventory.clone(), &reserve(1, 5, 60)).is_err());
    assert_eq!(inventory, before);
    assert_eq!(inventory.reservation_outcome(&id(1)), None);
    assert!(
        inventory.decide(&reserve(1, 4, 60)).is_ok(),
        "the id stays unused after a refusal"
    );
}

#[test]
fn a_reservation_of_the_maximum_quantity_works() {
    let inventory: Inventory = given(&[
        receive("main", Quantity::MAX),
        receive("main", Quantity::MAX),
    ]);
    let inventory = apply(inventory, &reserve(1, Quantity::MAX, 60)).unwrap();
    assert_eq!(inventory.available(), u64::from(Quantity::MAX));
}

#[test]
fn stock_received_v1_without_warehouse_is_upcast_to_the_main_warehouse() {
    let stored_v1 = json!({ "quantity": 12 });
    let event = InventoryEvent::from_stored("StockReceived", 1, stored_v1).unwrap();
    assert_eq!(
        event,
        InventoryEvent::StockReceived {
            warehouse: warehouse("main"),
            quantity: qty(12)
        }
    );
    assert_eq!(event.schema_version(), 2);
    assert_eq!(
        event.to_data(),
        json!({ "warehouse": "main", "quantity": 12 })
    );
}

#[test]
fn a_v1_stock_received_replays_into_the_main_warehouse() {
    let event = InventoryEvent::from_stored("StockReceived", 1, json!({ "quantity": 5 })).unwrap();
    let inventory = Inventory::replay([&event]);
    assert_eq!(
        inventory.warehouse(&warehouse("main")).unwrap().on_hand(),
        5
    );
}

#[test]
fn versions_without_an_upcaster_are_refused() {
    assert_eq!(
        InventoryEvent::from_stored(
            "StockReceived",
            3,
            json!({ "quantity": 1, "warehouse": "main" })
        ),
        Err(DecodeError::UnsupportedVersion {
            event_type: "StockReceived".into(),
            schema_version: 3
        })
    );
    assert_eq!(
        InventoryEvent::from_stored("StockAdjusted", 0, json!({})),
        Err(DecodeError::UnsupportedVersion {
            event_type: "StockAdjusted".into(),
            schema_version: 0
        })
    );
}

#[test]
fn a_malformed_v1_payload_is_refused_not_defaulted() {
    assert!(matches!(
        InventoryEvent::from_stored("StockReceived", 1, json!({ "quantity": 0 })),
        Err(DecodeError::Malformed { .. })
    ));
    assert!(matches!(
        InventoryEvent::from_stored("StockReceived", 1, json!(12)),
        Err(DecodeError::Malformed { .. })
    ));
}
