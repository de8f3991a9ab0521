use domain::{DomainError, Inventory, InventoryCommand, InventoryEvent, ReservationOutcome};
use uuid::Uuid;

use crate::support::{at, ctx, on_both_stores, qty, rejection, reserve, sku, warehouse, Backend};

on_both_stores!(
    receiving_reserving_releasing_and_committing_stock_keeps_every_count,
    reserving_more_than_is_available_is_refused_with_the_numbers,
    a_reservation_id_is_accepted_only_once,
    expiring_when_nothing_is_due_writes_nothing,
);

async fn receiving_reserving_releasing_and_committing_stock_keeps_every_count(backend: Backend) {
    let env = backend.env().await;
    let inventory = env.commands.inventory();
    env.receive("TEE-M", 10).await;
    let first = reserve("TEE-M", 3);
    let second = reserve("TEE-M", 2);
    let id_of = |command: &InventoryCommand| match command {
        InventoryCommand::ReserveStock { reservation_id, .. } => *reservation_id,
        other => panic!("not a reservation: {other:?}"),
    };
    let (first_id, second_id) = (id_of(&first), id_of(&second));

    let reserved = inventory.execute(first, &ctx()).await.unwrap();
    inventory.execute(second, &ctx()).await.unwrap();
    inventory
        .execute(
            InventoryCommand::ReleaseReservation {
                sku: sku("TEE-M"),
                reservation_id: first_id,
            },
            &ctx(),
        )
        .await
        .unwrap();
    let committed = inventory
        .execute(
            InventoryCommand::CommitReservation {
                sku: sku("TEE-M"),
                reservation_id: second_id,
            },
            &ctx(),
        )
        .await
        .unwrap();

    match reserved.events.as_slice() {
        [InventoryEvent::StockReserved {
            quantity,
            allocations,
            ..
        }] => {
            assert_eq!(*quantity, qty(3));
            assert_eq!(allocations.len(), 1);
            assert_eq!(allocations[0].warehouse, warehouse("main"));
        }
        other => panic!("expected one StockReserved, got {other:?}"),
    }
    assert_eq!(committed.stream_version, 5);
    let stream = Inventory::stream_id(&sku("TEE-M"));
    assert_eq!(
        env.event_types(&stream).await,
        [
            "StockReceived",
            "StockReserved",
            "StockReserved",
            "ReservationReleased",
            "ReservationCommitted"
        ]
    );
    let replayed: Inventory = env.replay(&stream).await;
    assert_eq!(
        (
            replayed.on_hand(),
            replayed.reserved(),
            replayed.available()
        ),
        (8, 0, 8)
    );
    assert_eq!(
        replayed.reservation_outcome(&first_id),
        Some(ReservationOutcome::Released)
    );
    assert_eq!(
        replayed.reservation_outcome(&second_id),
        Some(ReservationOutcome::Committed)
    );
    assert_eq!(env.inventory("TEE-M").await, replayed);
}

async fn reserving_more_than_is_available_is_refused_with_the_numbers(backend: Backend) {
    let env = backend.env().await;
    env.receive("MUG", 10).await;

    let refused = env
        .commands
        .inventory()
        .execute(reserve("MUG", 11), &ctx())
        .await;

    assert_eq!(
        rejection(refused),
        DomainError::OutOfStock {
            sku: sku("MUG"),
            requested: 11,
            available: 10
        }
    );
    assert_eq!(
        env.event_types(&Inventory::stream_id(&sku("MUG"))).await,
        ["StockReceived"]
    );
}

async fn a_reservation_id_is_accepted_only_once(backend: Backend) {
    let env = backend.env().await;
    env.receive("PEN", 10).await;
    let reservation_id = Uuid::now_v7().into();
    let command = InventoryCommand::ReserveStock {
        sku: sku("PEN"),
        reservation_id,
        order_id: Uuid::now_v7().into(),
        quantity: qty(1),
        expires_at: at(60),
    };
    let inventory = env.commands.inventory();
    inventory.execute(command.clone(), &ctx()).await.unwrap();

    // A new command id: not a repeat for the store, so the domain decides.
    let again = inventory.execute(command, &ctx()).await;

    assert_eq!(
        rejection(again),
        DomainError::ReservationExists { reservation_id }
    );
    assert_eq!(env.inventory("PEN").await.reserved(), 1);
}

async fn expiring_when_nothing_is_due_writes_nothing(backend: Backend) {
    let env = backend.env().await;
    env.receive("CUP", 4).await;
    env.commands
        .inventory()
        .execute(reserve("CUP", 1), &ctx())
        .await
        .unwrap();

    let nothing = env
        .commands
        .inventory()
        .execute(
            InventoryCommand::ExpireReservations {
                sku: sku("CUP"),
                now: at(0),
            },
            &ctx(),
        )
        .await
        .unwrap();

    assert!(nothing.events.is_empty());
    assert_eq!(nothing.positions, None);
    assert_eq!(nothing.stream_version, 2);
    let expired = env
        .commands
        .inventory()
        .execute(
            InventoryCommand::ExpireReservations {
                sku: sku("CUP"),
                now: at(7_200),
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(expired.events.len(), 1);
    assert_eq!(expired.stream_version, 3);
    assert_eq!(env.inventory("CUP").await.available(), 4);
}
