use std::cmp::Reverse;

use domain::{
    Aggregate, Allocation, Inventory, InventoryCommand, InventoryEvent, Quantity, ReservationId,
    Sku, WarehouseId,
};
use proptest::prelude::*;

use crate::support::{at, id, sku, warehouse};

fn flash() -> Sku {
    sku("FLASH-1")
}

fn command() -> impl Strategy<Value = InventoryCommand> {
    let wh = prop::sample::select(vec!["w1", "w2", "w3"]).prop_map(warehouse);
    let reservation = (1_u128..=6).prop_map(id::<ReservationId>);
    let quantity = (1_u32..=12).prop_map(|n| Quantity::new(n).unwrap());
    let time = (0_i64..=6).prop_map(at);
    prop_oneof![
        3 => (wh.clone(), quantity.clone()).prop_map(|(warehouse, quantity)| {
            InventoryCommand::ReceiveStock { sku: flash(), warehouse, quantity }
        }),
        2 => (wh.clone(), -8_i64..=8).prop_map(|(warehouse, delta)| {
            InventoryCommand::AdjustStock { sku: flash(), warehouse, delta, reason: "count".into() }
        }),
        1 => (wh, 0_u32..=3).prop_map(|(warehouse, priority)| {
            InventoryCommand::SetWarehousePriority { sku: flash(), warehouse, priority }
        }),
        5 => (reservation.clone(), quantity, time.clone()).prop_map(|(reservation_id, quantity, expires_at)| {
            InventoryCommand::ReserveStock { sku: flash(), reservation_id, order_id: id(99), quantity, expires_at }
        }),
        2 => reservation.clone().prop_map(|reservation_id| {
            InventoryCommand::ReleaseReservation { sku: flash(), reservation_id }
        }),
        2 => reservation.prop_map(|reservation_id| {
            InventoryCommand::CommitReservation { sku: flash(), reservation_id }
        }),
        1 => time.prop_map(|now| InventoryCommand::ExpireReservations { sku: flash(), now }),
    ]
}

fn assert_invariants(inventory: &Inventory) {
    let mut reserved_by_reservations = 0_u64;
    for n in 1..=6 {
        let rid: ReservationId = id(n);
        if let Some(reservation) = inventory.reservation(&rid) {
            assert_eq!(
                inventory.reservation_outcome(&rid),
                None,
                "active and ended at once"
            );
            let allocated: u32 = reservation
                .allocations
                .iter()
                .map(|a| a.quantity.get())
                .sum();
            assert_eq!(
                allocated,
                reservation.quantity.get(),
                "allocations cover the reservation exactly"
            );
            reserved_by_reservations += u64::from(allocated);
        }
    }
    for (_, stock) in inventory.warehouses() {
        assert!(
            stock.reserved() <= stock.on_hand(),
            "reserved <= on hand per warehouse"
        );
        assert_eq!(stock.available(), stock.on_hand() - stock.reserved());
    }
    assert_eq!(
        inventory.reserved(),
        reserved_by_reservations,
        "reserved stock belongs to active reservations"
    );
    assert_eq!(
        inventory.available(),
        inventory.on_hand() - inventory.reserved()
    );
}

/// Warehouses are drawn in preference order (priority, then most available, then
/// id); every one but the last is emptied, and no better warehouse is skipped.
fn assert_allocated_by_preference(before: &Inventory, allocations: &[Allocation]) {
    let preference = |id: &WarehouseId| {
        let stock = before
            .warehouse(id)
            .expect("allocated from a known warehouse");
        (stock.priority(), Reverse(stock.available()), id.clone())
    };
    let keys: Vec<_> = allocations
        .iter()
        .map(|a| preference(&a.warehouse))
        .collect();
    assert!(
        keys.windows(2).all(|pair| pair[0] < pair[1]),
        "in preference order: {keys:?}"
    );
    if let Some((last, full)) = allocations.split_last() {
        for allocation in full {
            let stock = before.warehouse(&allocation.warehouse).unwrap();
            assert_eq!(
                u64::from(allocation.quantity.get()),
                stock.available(),
                "a split empties the earlier warehouses"
            );
        }
        let last_key = preference(&last.warehouse);
        for (id, stock) in before.warehouses() {
            if stock.available() > 0 && !allocations.iter().any(|a| &a.warehouse == id) {
                assert!(preference(id) > last_key, "{id} was skipped");
            }
        }
    }
}

proptest! {
    #[test]
    fn stock_is_never_negative_nor_over_reserved(commands in prop::collection::vec(command(), 1..60)) {
        crate::properties::run::<Inventory>(&commands, |before, after, events| {
            assert_invariants(after);
            for event in events {
                if let InventoryEvent::StockReserved { reservation_id, allocations, .. } = event {
                    assert!(before.reservation(reservation_id).is_none());
                    assert!(before.reservation_outcome(reservation_id).is_none(), "reservation ids are single use");
                    assert_allocated_by_preference(before, allocations);
                }
            }
        });
    }
}

proptest! {
    #[test]
    fn expiry_leaves_nothing_due(commands in prop::collection::vec(command(), 1..40), now in 0_i64..=6) {
        let mut inventory = Inventory::default();
        for command in &commands {
            if let Ok(events) = inventory.decide(command) {
                inventory = events.iter().fold(inventory, |s, e| s.evolve(e));
            }
        }
        let expire = InventoryCommand::ExpireReservations { sku: flash(), now: at(now) };
        let events = inventory.decide(&expire).unwrap();
        let inventory = events.iter().fold(inventory, |s, e| s.evolve(e));
        prop_assert!(!inventory.has_expired_reservations(at(now)));
        assert_invariants(&inventory);
    }
}
