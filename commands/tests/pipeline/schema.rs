use commands::CommandError;
use domain::{Inventory, InventoryEvent, WarehouseId, DEFAULT_WAREHOUSE};
use eventstore::{AppendRequest, ExpectedVersion, NewEvent};
use serde_json::json;

use crate::support::{ctx, on_both_stores, reserve, sku, Backend};

on_both_stores!(
    a_stock_received_event_stored_at_v1_is_loaded_as_v2_in_the_default_warehouse,
    an_event_this_build_cannot_read_stops_the_stream_with_a_decode_error,
);

async fn a_stock_received_event_stored_at_v1_is_loaded_as_v2_in_the_default_warehouse(
    backend: Backend,
) {
    let env = backend.env().await;
    let stream = Inventory::stream_id(&sku("OLD-1"));
    // Written by a build from before warehouses: schema v1 had only a quantity.
    let mut v1 = NewEvent::new("StockReceived", json!({ "quantity": 7 }));
    v1.schema_version = 1;
    env.store
        .append(AppendRequest {
            stream_id: stream.clone(),
            expected: ExpectedVersion::NoStream,
            events: vec![v1],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        })
        .await
        .unwrap();

    let loaded = env.commands.inventory().load(&stream).await.unwrap();
    let reserved = env
        .commands
        .inventory()
        .execute(reserve("OLD-1", 7), &ctx())
        .await
        .unwrap();

    let main = WarehouseId::parse(DEFAULT_WAREHOUSE).unwrap();
    assert_eq!(loaded.version, 1);
    assert_eq!(loaded.state.warehouse(&main).map(|w| w.on_hand()), Some(7));
    match reserved.events.as_slice() {
        [InventoryEvent::StockReserved { allocations, .. }] => {
            assert_eq!(allocations.len(), 1);
            assert_eq!(allocations[0].warehouse, main);
        }
        other => panic!("expected one reservation, got {other:?}"),
    }
    let log = env.stream(&stream).await;
    assert_eq!(
        log[0].schema_version, 1,
        "the log itself is never rewritten"
    );
}

async fn an_event_this_build_cannot_read_stops_the_stream_with_a_decode_error(backend: Backend) {
    let env = backend.env().await;
    env.receive("ODD", 2).await;
    let stream = Inventory::stream_id(&sku("ODD"));
    env.store
        .append(AppendRequest {
            stream_id: stream.clone(),
            expected: ExpectedVersion::Exact(1),
            events: vec![NewEvent::new("StockTeleported", json!({ "quantity": 1 }))],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        })
        .await
        .unwrap();

    let outcome = env
        .another_process()
        .inventory()
        .execute(reserve("ODD", 1), &ctx())
        .await;

    match outcome {
        Err(CommandError::Decode {
            stream: s, version, ..
        }) => assert_eq!((s, version), (stream.clone(), 2)),
        other => panic!("expected a decode error, got {other:?}"),
    }
    assert_eq!(env.stream(&stream).await.len(), 2);
}
