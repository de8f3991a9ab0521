use std::sync::Arc;

use commands::{CommandContext, CommandError, Commands, Committed, Limits, MemorySnapshots};
use domain::{Inventory, InventoryCommand, InventoryEvent};
use eventstore::{EventStore, MemoryStore, StoreError};
use uuid::Uuid;

use crate::support::{on_both_stores, qty, reserve, sku, warehouse, Backend};

on_both_stores!(
    every_event_carries_who_sent_the_command_and_why,
    repeating_a_command_id_returns_the_first_outcome_and_writes_once,
    another_process_recognises_a_repeated_command_id,
    a_repeat_of_a_command_appended_in_a_batch_gets_the_first_outcome,
);

fn receive(code: &str, n: u32) -> InventoryCommand {
    InventoryCommand::ReceiveStock {
        sku: sku(code),
        warehouse: warehouse("main"),
        quantity: qty(n),
    }
}

async fn every_event_carries_who_sent_the_command_and_why(backend: Backend) {
    let env = backend.env().await;
    let checkout = CommandContext::new("system:checkout");
    let context = CommandContext {
        command_id: Uuid::now_v7(),
        correlation_id: checkout.correlation_id,
        causation_id: Some(checkout.command_id),
        actor: "customer:42".into(),
        guard: None,
    };

    let written = env
        .commands
        .inventory()
        .execute(receive("KEY", 3), &context)
        .await
        .unwrap();

    let log = env.stream(&Inventory::stream_id(&sku("KEY"))).await;
    assert_eq!(log.len(), 1);
    let metadata = &log[0].metadata;
    assert_eq!(metadata.command_id, Some(context.command_id));
    assert_eq!(metadata.correlation_id, Some(checkout.correlation_id));
    assert_eq!(metadata.causation_id, Some(checkout.command_id));
    assert_eq!(metadata.actor.as_deref(), Some("customer:42"));
    assert_eq!(written.positions.map(|p| p.first), Some(log[0].position));
    assert_eq!(log[0].event_type, "StockReceived");
    assert_eq!(log[0].schema_version, 2);
}

async fn repeating_a_command_id_returns_the_first_outcome_and_writes_once(backend: Backend) {
    let env = backend.env().await;
    let context = CommandContext::new("staff:7");
    let inventory = env.commands.inventory();

    let first = inventory
        .execute(receive("BOLT", 5), &context)
        .await
        .unwrap();
    let repeat = inventory
        .execute(receive("BOLT", 5), &context)
        .await
        .unwrap();

    assert!(!first.replayed);
    assert!(repeat.replayed);
    assert_eq!(repeat.positions, first.positions);
    assert_eq!(repeat.stream_version, first.stream_version);
    assert_eq!(env.inventory("BOLT").await.on_hand(), 5);
    assert_eq!(
        env.event_types(&Inventory::stream_id(&sku("BOLT"))).await,
        ["StockReceived"]
    );
}

async fn another_process_recognises_a_repeated_command_id(backend: Backend) {
    let env = backend.env().await;
    let context = CommandContext::new("staff:7");
    let first = env
        .commands
        .inventory()
        .execute(receive("NUT", 5), &context)
        .await
        .unwrap();
    env.commands
        .inventory()
        .execute(receive("NUT", 1), &CommandContext::new("staff:7"))
        .await
        .unwrap();

    let repeat = env
        .another_process()
        .inventory()
        .execute(receive("NUT", 5), &context)
        .await
        .unwrap();

    assert!(repeat.replayed);
    assert_eq!(repeat.positions, first.positions);
    assert_eq!(repeat.stream_version, 1);

    // A process that remembers no command ids: the store answers the repeat.
    let forgetful = Commands::new(
        env.store.clone(),
        env.snapshots.clone(),
        Limits {
            recent_commands_per_stream: 0,
            ..Limits::default()
        },
    );
    let from_store = forgetful
        .inventory()
        .execute(receive("NUT", 5), &context)
        .await
        .unwrap();
    assert!(from_store.replayed);
    assert_eq!(from_store.positions, first.positions);
    assert_eq!(from_store.stream_version, 1);
    assert_eq!(env.inventory("NUT").await.on_hand(), 6);
    assert_eq!(
        forgetful
            .inventory()
            .load(&Inventory::stream_id(&sku("NUT")))
            .await
            .unwrap()
            .version,
        2
    );
}

async fn a_repeat_of_a_command_appended_in_a_batch_gets_the_first_outcome(backend: Backend) {
    let env = backend.env().await;
    env.receive("WASHER", 100).await;
    let sent: Vec<(InventoryCommand, CommandContext)> = (0..100)
        .map(|_| (reserve("WASHER", 1), CommandContext::new("customer:9")))
        .collect();
    let mut tasks = Vec::new();
    for (command, context) in sent.clone() {
        let commands = env.commands.clone();
        tasks.push(tokio::spawn(async move {
            commands.inventory().execute(command, &context).await
        }));
    }
    let mut firsts: Vec<Committed<InventoryEvent>> = Vec::new();
    for task in tasks {
        firsts.push(task.await.unwrap().expect("stock for everyone"));
    }

    for process in [env.commands.clone(), env.another_process()] {
        for ((command, context), first) in sent.iter().zip(&firsts) {
            let repeat = process
                .inventory()
                .execute(command.clone(), context)
                .await
                .unwrap();
            assert!(repeat.replayed, "{repeat:?}");
            assert_eq!(repeat.positions, first.positions);
            assert_eq!(repeat.stream_version, first.stream_version);
        }
    }
    let replayed: Inventory = env.replay(&Inventory::stream_id(&sku("WASHER"))).await;
    assert_eq!(replayed.reserved(), 100);
    assert_eq!(
        env.stream(&Inventory::stream_id(&sku("WASHER")))
            .await
            .len(),
        101
    );
}

/// Commands that carry the key of the request they answer: one whose key has a kept
/// answer fails with its key and writes nothing, while one beside it in the same
/// burst on the stream (most likely in the same round, so the same append) is
/// decided again and written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_whose_request_was_answered_writes_nothing() {
    let answered = Uuid::new_v4();
    let store =
        Arc::new(MemoryStore::new().with_kept_answers(Arc::new(move |key| *key == answered)));
    let commands = Commands::new(
        store.clone(),
        Arc::new(MemorySnapshots::new()),
        Limits::default(),
    );
    let guarded = |guard| CommandContext {
        guard: Some(guard),
        ..CommandContext::new("customer:1")
    };
    let inventory = commands.inventory();
    let (a, b, c) = (
        guarded(answered),
        guarded(Uuid::new_v4()),
        CommandContext::new("staff:1"),
    );
    let (first, second, third) = tokio::join!(
        inventory.execute(receive("BOLT", 2), &a),
        inventory.execute(receive("BOLT", 3), &b),
        inventory.execute(receive("BOLT", 4), &c),
    );
    match first {
        Err(CommandError::Store(StoreError::AlreadyAnswered { keys })) => {
            assert_eq!(keys, vec![answered])
        }
        other => panic!("expected the answered key, got {other:?}"),
    }
    second.expect("a key without an answer");
    third.expect("no key");
    let log = store.read_all(0, 10, None).await.expect("log");
    let received: Vec<u64> = log
        .iter()
        .map(|e| e.data["quantity"].as_u64().expect("quantity"))
        .collect();
    assert_eq!(received, vec![3, 4]);
}
