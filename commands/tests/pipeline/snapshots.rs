use std::time::{Duration, Instant};

use commands::{Limits, Snapshot, SnapshotStore, StreamAggregate};
use domain::{
    Aggregate, Cart, CartCommand, CartOwner, Inventory, InventoryCommand, Order, OrderCommand,
    Payment, PaymentCommand, PriceTarget, Product, ProductCommand,
};
use uuid::Uuid;

use crate::support::{
    address, at, create_product, ctx, currency, eur, on_both_stores, qty, reserve, sku, warehouse,
    Backend,
};

on_both_stores!(
    a_long_stream_is_loaded_from_its_snapshot_and_only_the_events_after_it,
    a_due_snapshot_is_written_when_the_stream_pauses,
    an_unreadable_snapshot_is_ignored_and_the_whole_stream_replayed,
    a_snapshot_of_another_state_schema_is_ignored,
    a_large_state_is_snapshot_less_often,
);

/// A snapshot every ten events, written only once a second ten have passed: the
/// stream never pauses long enough for an earlier one, so it is at version 20.
fn every_ten_events() -> Limits {
    Limits {
        snapshot_every_events: 10,
        snapshot_pause: Duration::from_secs(3_600),
        ..Limits::default()
    }
}

/// Waits (bounded) until the snapshot store holds a snapshot of at least `version`.
async fn snapshot_at(snapshots: &dyn SnapshotStore, stream: &str, version: u64) -> Snapshot {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(snapshot) = snapshots.load(stream).await.unwrap() {
            if snapshot.version >= version {
                return snapshot;
            }
        }
        assert!(
            Instant::now() < deadline,
            "no snapshot of {stream} at {version}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_long_stream_is_loaded_from_its_snapshot_and_only_the_events_after_it(backend: Backend) {
    let env = backend.env_with(every_ten_events()).await;
    env.receive("HOT", 100).await;
    let inventory = env.commands.inventory();
    for _ in 0..24 {
        inventory.execute(reserve("HOT", 1), &ctx()).await.unwrap();
    }
    let stream = Inventory::stream_id(&sku("HOT"));
    let snapshot = snapshot_at(env.snapshots.as_ref(), &stream, 20).await;
    assert_eq!(snapshot.version, 20);
    assert_eq!(snapshot.state_schema, Inventory::SNAPSHOT_SCHEMA);

    let fresh = env.another_process();
    let loaded = fresh.inventory().load(&stream).await.unwrap();

    let stats = fresh.inventory().stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.events_read, 5, "only the events after the snapshot");
    assert_eq!(loaded.version, 25);
    assert_eq!(loaded.state, env.replay::<Inventory>(&stream).await);
    assert_eq!(loaded.state.reserved(), 24);
}

async fn a_large_state_is_snapshot_less_often(backend: Backend) {
    // Every byte of the last snapshot stretches the interval by ten events: after the
    // first snapshot (at 20, when none was known), the next falls due hundreds of
    // events later.
    let env = backend
        .env_with(Limits {
            snapshot_bytes_per_interval: 1,
            ..every_ten_events()
        })
        .await;
    env.receive("BIG", 100).await;
    let inventory = env.commands.inventory();
    for _ in 0..24 {
        inventory.execute(reserve("BIG", 1), &ctx()).await.unwrap();
    }
    let stream = Inventory::stream_id(&sku("BIG"));
    let first = snapshot_at(env.snapshots.as_ref(), &stream, 20).await;
    assert_eq!(first.version, 20);
    // Unstretched, these would write snapshots at 40 and 60.
    for _ in 0..40 {
        inventory.execute(reserve("BIG", 1), &ctx()).await.unwrap();
    }
    inventory.load(&stream).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(inventory.stats().snapshots, 1);
    let last = env
        .snapshots
        .load(&stream)
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(last.version, 20);
}

async fn a_due_snapshot_is_written_when_the_stream_pauses(backend: Backend) {
    let env = backend
        .env_with(Limits {
            snapshot_every_events: 10,
            snapshot_pause: Duration::from_millis(10),
            // Longer than `snapshot_at` waits: an idle task that parks writes a due
            // snapshot too, and it is the pause that is under test.
            stream_idle_timeout: Duration::from_secs(60),
            ..Limits::default()
        })
        .await;
    env.receive("CALM", 100).await;
    let inventory = env.commands.inventory();
    for _ in 0..12 {
        inventory.execute(reserve("CALM", 1), &ctx()).await.unwrap();
    }
    // Due at version 10 and never overdue (20): written at a pause, either one
    // between two commands or the one after the last. Either way it is the only
    // snapshot, since the next would be due at 20 at the earliest.
    let stream = Inventory::stream_id(&sku("CALM"));
    let snapshot = snapshot_at(env.snapshots.as_ref(), &stream, 10).await;
    assert!(
        (10..=13).contains(&snapshot.version),
        "{}",
        snapshot.version
    );

    let fresh = env.another_process();
    let loaded = fresh.inventory().load(&stream).await.unwrap();

    assert_eq!(loaded.version, 13);
    assert_eq!(
        fresh.inventory().stats().events_read,
        13 - snapshot.version,
        "only the events after the snapshot"
    );
    assert_eq!(loaded.state, env.replay::<Inventory>(&stream).await);
}

async fn an_unreadable_snapshot_is_ignored_and_the_whole_stream_replayed(backend: Backend) {
    let env = backend.env().await;
    env.receive("GLUE", 1).await;
    env.receive("GLUE", 2).await;
    env.receive("GLUE", 3).await;
    let stream = Inventory::stream_id(&sku("GLUE"));
    env.snapshots
        .save(Snapshot {
            stream_id: stream.clone(),
            version: 2,
            state_schema: Inventory::SNAPSHOT_SCHEMA,
            state: b"{ not json".to_vec(),
        })
        .await
        .unwrap();

    let fresh = env.another_process();
    let loaded = fresh.inventory().load(&stream).await.unwrap();

    assert_eq!(loaded.version, 3);
    assert_eq!(loaded.state.on_hand(), 6);
    assert_eq!(fresh.inventory().stats().events_read, 3);
}

async fn a_snapshot_of_another_state_schema_is_ignored(backend: Backend) {
    let env = backend.env().await;
    env.receive("TAPE", 4).await;
    env.receive("TAPE", 4).await;
    let stream = Inventory::stream_id(&sku("TAPE"));
    // Readable, but written by a build whose state meant something else.
    let mut other = Inventory::default();
    for event in other
        .decide(&InventoryCommand::ReceiveStock {
            sku: sku("TAPE"),
            warehouse: warehouse("main"),
            quantity: qty(1_000),
        })
        .unwrap()
    {
        other = other.evolve(&event);
    }
    env.snapshots
        .save(Snapshot {
            stream_id: stream.clone(),
            version: 1,
            state_schema: Inventory::SNAPSHOT_SCHEMA + 1,
            state: serde_json::to_vec(&other).unwrap(),
        })
        .await
        .unwrap();

    let loaded = env
        .another_process()
        .inventory()
        .load(&stream)
        .await
        .unwrap();

    assert_eq!(loaded.state.on_hand(), 8);
}

/// The state after `commands`, each of which must be accepted.
fn given<A: Aggregate>(commands: &[A::Command]) -> A {
    commands.iter().fold(A::default(), |state, command| {
        let events = state.decide(command).expect("an accepted command");
        events.iter().fold(state, |s, e| s.evolve(e))
    })
}

fn round_trips<A: StreamAggregate + PartialEq + std::fmt::Debug>(state: A) {
    let bytes = serde_json::to_vec(&state).expect("the state serialises");
    let back: A = serde_json::from_slice(&bytes).expect("the snapshot reads back");
    assert_eq!(back, state);
}

#[test]
fn every_aggregate_state_reads_back_from_its_snapshot_form() {
    let product_id = Uuid::from_u128(1).into();
    round_trips(given::<Product>(&[
        create_product(product_id, &["A-1", "A-2"]),
        ProductCommand::SetPrice {
            product_id,
            target: PriceTarget::Sku(sku("A-2")),
            price: eur(500),
        },
    ]));
    let mut inventory_commands = vec![InventoryCommand::ReceiveStock {
        sku: sku("A-1"),
        warehouse: warehouse("north"),
        quantity: qty(9),
    }];
    inventory_commands.extend((0..3).map(|_| reserve("A-1", 2)));
    let inventory: Inventory = given(&inventory_commands);
    let expire = InventoryCommand::ExpireReservations {
        sku: sku("A-1"),
        now: at(7_200),
    };
    let mut inventory_with_ended = inventory.clone();
    for event in inventory.decide(&reserve("A-1", 1)).unwrap() {
        inventory_with_ended = inventory_with_ended.evolve(&event);
    }
    for event in inventory_with_ended.decide(&expire).unwrap() {
        inventory_with_ended = inventory_with_ended.evolve(&event);
    }
    assert_eq!(inventory_with_ended.active_reservations(), 0);
    round_trips(inventory);
    round_trips(inventory_with_ended);
    let cart_id = Uuid::from_u128(2).into();
    round_trips(given::<Cart>(&[
        CartCommand::CreateCart {
            cart_id,
            owner: CartOwner::Guest(Uuid::from_u128(3).into()),
            currency: currency("EUR"),
        },
        CartCommand::AddLine {
            cart_id,
            sku: sku("A-1"),
            quantity: qty(2),
            unit_price: eur(500),
        },
    ]));
    let order_id = Uuid::from_u128(4).into();
    round_trips(given::<Order>(&[OrderCommand::PlaceOrder {
        order_id,
        customer_id: Uuid::from_u128(5).into(),
        cart_id,
        lines: vec![domain::LineItem {
            sku: sku("A-1"),
            quantity: qty(2),
            unit_price: eur(500),
        }],
        shipping_address: address(),
        placed_at: at(0),
    }]));
    let payment_id = Uuid::from_u128(6).into();
    round_trips(given::<Payment>(&[
        PaymentCommand::Authorize {
            payment_id,
            order_id,
            amount: eur(1_000),
            provider_ref: "psp-1".into(),
            at: at(0),
        },
        PaymentCommand::Capture {
            payment_id,
            amount: eur(1_000),
            at: at(1),
        },
    ]));
}
