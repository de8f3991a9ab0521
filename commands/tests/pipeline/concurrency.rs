use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use commands::{CommandError, Commands, Limits, CONFLICT_ATTEMPTS_MAX};
use domain::{DomainError, Inventory, InventoryCommand, InventoryEvent, ReservationId};
use eventstore::{
    AppendRequest, AppendResult, Direction, EventStore, ExpectedVersion, NewEvent, RecordedEvent,
    StoreError,
};
use serde_json::json;

use crate::support::{ctx, on_both_stores, reserve, sku, Backend};

on_both_stores!(
    many_concurrent_reservations_of_one_sku_sell_exactly_the_stock,
    two_processes_reserving_one_sku_lose_no_update_and_never_oversell,
    a_refusal_is_decided_on_the_current_stream_not_on_a_stale_copy,
    a_write_by_another_process_is_a_conflict_that_reloads_and_decides_again,
    a_stream_that_keeps_moving_gives_up_after_the_bounded_attempts,
    a_write_landing_before_a_batched_append_fails_the_whole_batch_not_only_its_first_command,
    a_command_the_store_refuses_fails_alone_and_not_its_batch,
);

#[derive(Debug, Default)]
struct Tally {
    sold: Vec<ReservationId>,
    out_of_stock: usize,
    conflicts: usize,
    other: Vec<CommandError>,
}

/// `demand` reservations of one unit each, sent at once from as many tasks, spread
/// over `processes` round robin.
async fn rush(processes: &[Commands], code: &str, demand: usize) -> Tally {
    let start = Arc::new(tokio::sync::Barrier::new(demand));
    let mut tasks = Vec::with_capacity(demand);
    for i in 0..demand {
        let commands = processes[i % processes.len()].clone();
        let start = start.clone();
        let command = reserve(code, 1);
        tasks.push(tokio::spawn(async move {
            let InventoryCommand::ReserveStock { reservation_id, .. } = &command else {
                unreachable!("reserve() builds a reservation");
            };
            let reservation_id = *reservation_id;
            start.wait().await;
            let outcome = commands.inventory().execute(command, &ctx()).await;
            (reservation_id, outcome)
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        let (reservation_id, outcome) = task.await.expect("the task ran");
        match outcome {
            Ok(_) => tally.sold.push(reservation_id),
            Err(CommandError::Rejected(DomainError::OutOfStock { .. })) => tally.out_of_stock += 1,
            Err(CommandError::Conflict { .. }) => tally.conflicts += 1,
            Err(other) => tally.other.push(other),
        }
    }
    tally
}

fn reserved_ids(events: &[RecordedEvent]) -> HashSet<ReservationId> {
    events
        .iter()
        .filter(|e| e.event_type == "StockReserved")
        .map(|e| {
            serde_json::from_value(e.data["reservation_id"].clone()).expect("a reservation id")
        })
        .collect()
}

async fn many_concurrent_reservations_of_one_sku_sell_exactly_the_stock(backend: Backend) {
    let env = backend.env().await;
    env.receive("FLASH", 50).await;

    let tally = rush(std::slice::from_ref(&env.commands), "FLASH", 400).await;

    assert!(
        tally.other.is_empty(),
        "unexpected errors: {:?}",
        tally.other
    );
    assert_eq!(
        tally.conflicts, 0,
        "one process never conflicts with itself"
    );
    assert_eq!(tally.sold.len(), 50);
    assert_eq!(tally.out_of_stock, 350);
    let stream = Inventory::stream_id(&sku("FLASH"));
    let log = env.stream(&stream).await;
    let versions: Vec<u64> = log.iter().map(|e| e.version).collect();
    assert_eq!(versions, (1..=51).collect::<Vec<u64>>());
    assert_eq!(reserved_ids(&log), tally.sold.iter().copied().collect());
    let replayed: Inventory = env.replay(&stream).await;
    assert_eq!((replayed.reserved(), replayed.available()), (50, 0));
    assert_eq!(replayed.active_reservations(), 50);
}

async fn two_processes_reserving_one_sku_lose_no_update_and_never_oversell(backend: Backend) {
    let env = backend.env().await;
    env.receive("DUO", 60).await;
    let processes = [env.commands.clone(), env.another_process()];

    let tally = rush(&processes, "DUO", 300).await;

    assert!(
        tally.other.is_empty(),
        "unexpected errors: {:?}",
        tally.other
    );
    assert_eq!(tally.sold.len() + tally.out_of_stock + tally.conflicts, 300);
    assert!(tally.sold.len() <= 60, "oversold: {}", tally.sold.len());
    if tally.out_of_stock > 0 {
        // A refusal is only given on a state confirmed current: by then all 60 units
        // were reserved.
        assert_eq!(tally.sold.len(), 60);
    }
    let stream = Inventory::stream_id(&sku("DUO"));
    let log = env.stream(&stream).await;
    assert_eq!(reserved_ids(&log), tally.sold.iter().copied().collect());
    let replayed: Inventory = env.replay(&stream).await;
    assert_eq!(replayed.reserved(), tally.sold.len() as u64);
    assert_eq!(replayed.available(), 60 - tally.sold.len() as u64);
}

async fn a_refusal_is_decided_on_the_current_stream_not_on_a_stale_copy(backend: Backend) {
    let env = backend.env().await;
    env.receive("LAST", 1).await;
    let inventory = env.commands.inventory();
    inventory.execute(reserve("LAST", 1), &ctx()).await.unwrap();
    assert!(out_of_stock(
        &inventory.execute(reserve("LAST", 1), &ctx()).await
    ));
    // A refusal after a refusal: its freshness read starts before it is decided.
    assert!(out_of_stock(
        &inventory.execute(reserve("LAST", 1), &ctx()).await
    ));

    // Another process restocks; this process still holds the sold-out state.
    env.another_process()
        .inventory()
        .execute(
            InventoryCommand::ReceiveStock {
                sku: sku("LAST"),
                warehouse: crate::support::warehouse("main"),
                quantity: crate::support::qty(5),
            },
            &ctx(),
        )
        .await
        .unwrap();
    let after_restock = inventory.execute(reserve("LAST", 2), &ctx()).await.unwrap();

    assert_eq!(after_restock.stream_version, 4);
    assert_eq!(env.inventory("LAST").await.available(), 3);
}

async fn a_write_by_another_process_is_a_conflict_that_reloads_and_decides_again(backend: Backend) {
    let env = backend.env().await;
    env.receive("SHARED", 10).await;
    let inventory = env.commands.inventory();
    inventory
        .execute(reserve("SHARED", 1), &ctx())
        .await
        .unwrap();
    env.another_process()
        .inventory()
        .execute(reserve("SHARED", 4), &ctx())
        .await
        .unwrap();

    let third = inventory
        .execute(reserve("SHARED", 5), &ctx())
        .await
        .unwrap();

    assert_eq!(third.stream_version, 4);
    assert_eq!(inventory.stats().conflicts, 1);
    assert_eq!(env.inventory("SHARED").await.available(), 0);
    let refused = inventory.execute(reserve("SHARED", 1), &ctx()).await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(DomainError::OutOfStock {
            available: 0,
            ..
        }))
    ));
}

/// A store through which, before every reservation is appended, another writer
/// receives one unit on the same stream.
struct MovingStream {
    inner: Arc<dyn EventStore>,
}

#[async_trait]
impl EventStore for MovingStream {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, StoreError> {
        if request
            .events
            .iter()
            .any(|e| e.event_type == "StockReserved")
        {
            let mut foreign =
                NewEvent::new("StockReceived", json!({"warehouse": "main", "quantity": 1}));
            foreign.schema_version = 2;
            self.inner
                .append(AppendRequest {
                    stream_id: request.stream_id.clone(),
                    expected: ExpectedVersion::Any,
                    events: vec![foreign],
                    command_id: None,
                    preconditions: Vec::new(),
                    guards: Vec::new(),
                })
                .await?;
        }
        self.inner.append(request).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_stream(stream_id, from_version, direction, limit)
            .await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit, category).await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        self.inner.stream_version(stream_id).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }

    async fn wait_for_head(
        &self,
        known: u64,
        timeout: std::time::Duration,
    ) -> Result<u64, StoreError> {
        self.inner.wait_for_head(known, timeout).await
    }
}

async fn a_stream_that_keeps_moving_gives_up_after_the_bounded_attempts(backend: Backend) {
    let env = backend
        .env_wrapped(Limits::default(), |inner| Arc::new(MovingStream { inner }))
        .await;
    env.receive("BUSY", 3).await;

    let outcome = env
        .commands
        .inventory()
        .execute(reserve("BUSY", 1), &ctx())
        .await;

    let stream = Inventory::stream_id(&sku("BUSY"));
    assert_eq!(
        outcome,
        Err(CommandError::Conflict {
            stream: stream.clone(),
            attempts: CONFLICT_ATTEMPTS_MAX
        })
    );
    let types = env.event_types(&stream).await;
    assert_eq!(types.len(), 1 + CONFLICT_ATTEMPTS_MAX as usize);
    assert!(types.iter().all(|t| t == "StockReceived"), "{types:?}");
    let replayed: Inventory = env.replay(&stream).await;
    assert_eq!(replayed.on_hand(), 3 + u64::from(CONFLICT_ATTEMPTS_MAX));
    assert_eq!(
        env.commands.inventory().stats().conflicts,
        u64::from(CONFLICT_ATTEMPTS_MAX)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_on_one_stream_becomes_a_few_large_appends_on_postgres() {
    let env = Backend::Postgres.env().await;
    env.receive("BURST", 2_000).await;
    let before = env.commands.inventory().stats();

    let tally = rush(std::slice::from_ref(&env.commands), "BURST", 2_000).await;

    assert!(
        tally.other.is_empty(),
        "unexpected errors: {:?}",
        tally.other
    );
    assert_eq!(tally.sold.len(), 2_000);
    let after = env.commands.inventory().stats();
    let appends = after.appends - before.appends;
    assert_eq!(after.appended_commands - before.appended_commands, 2_000);
    assert!(
        appends <= 50,
        "2,000 reservations took {appends} appends; expected a few large ones"
    );
    let events: Vec<InventoryEvent> = env
        .stream(&Inventory::stream_id(&sku("BURST")))
        .await
        .iter()
        .skip(1)
        .map(|e| {
            <InventoryEvent as domain::DomainEvent>::from_stored(
                &e.event_type,
                e.schema_version,
                e.data.clone(),
            )
            .unwrap()
        })
        .collect();
    assert_eq!(events.len(), 2_000);
}

/// A store that holds the first `StockReceived` append back for a moment, so the
/// commands sent meanwhile queue up and are decided in one round; and that, if
/// asked, lets another writer reserve `foreign_units` on the stream just before the
/// first reservation append. It records how many events that append carried.
struct Choreographed {
    inner: Arc<dyn EventStore>,
    foreign_units: Option<u32>,
    held_back: std::sync::atomic::AtomicBool,
    meddled: std::sync::atomic::AtomicBool,
    first_reservation_events: std::sync::atomic::AtomicUsize,
}

impl Choreographed {
    fn new(inner: Arc<dyn EventStore>, foreign_units: Option<u32>) -> Self {
        Choreographed {
            inner,
            foreign_units,
            held_back: false.into(),
            meddled: false.into(),
            first_reservation_events: 0.into(),
        }
    }
}

#[async_trait]
impl EventStore for Choreographed {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, StoreError> {
        use std::sync::atomic::Ordering::SeqCst;
        let has = |t: &str| request.events.iter().any(|e| e.event_type == t);
        if has("StockReceived") && !self.held_back.swap(true, SeqCst) {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        if has("StockReserved") && !self.meddled.swap(true, SeqCst) {
            self.first_reservation_events
                .store(request.events.len(), SeqCst);
            if let Some(units) = self.foreign_units {
                let foreign = InventoryEvent::StockReserved {
                    reservation_id: uuid::Uuid::now_v7().into(),
                    order_id: uuid::Uuid::now_v7().into(),
                    quantity: crate::support::qty(units),
                    expires_at: crate::support::at(60),
                    allocations: vec![domain::Allocation {
                        warehouse: crate::support::warehouse("main"),
                        quantity: crate::support::qty(units),
                    }],
                };
                use domain::DomainEvent;
                self.inner
                    .append(AppendRequest {
                        stream_id: request.stream_id.clone(),
                        expected: ExpectedVersion::Any,
                        events: vec![NewEvent::new(foreign.event_type(), foreign.to_data())],
                        command_id: None,
                        preconditions: Vec::new(),
                        guards: Vec::new(),
                    })
                    .await?;
            }
        }
        self.inner.append(request).await
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner
            .read_stream(stream_id, from_version, direction, limit)
            .await
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.inner.read_all(after, limit, category).await
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        self.inner.stream_version(stream_id).await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.inner.head().await
    }

    async fn wait_for_head(
        &self,
        known: u64,
        timeout: std::time::Duration,
    ) -> Result<u64, StoreError> {
        self.inner.wait_for_head(known, timeout).await
    }
}

/// Receives `stock` units of `code` (held back by the store), and meanwhile queues
/// `commands` in order; returns their outcomes in that order.
async fn queued_behind_a_slow_receive(
    commands: &Commands,
    code: &str,
    stock: u32,
    queued: Vec<(InventoryCommand, commands::CommandContext)>,
) -> Vec<Result<commands::Committed<InventoryEvent>, CommandError>> {
    let receiving = {
        let commands = commands.clone();
        let code = code.to_owned();
        tokio::spawn(async move {
            commands
                .inventory()
                .execute(
                    InventoryCommand::ReceiveStock {
                        sku: sku(&code),
                        warehouse: crate::support::warehouse("main"),
                        quantity: crate::support::qty(stock),
                    },
                    &ctx(),
                )
                .await
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mut tasks = Vec::new();
    for (command, context) in queued {
        let commands = commands.clone();
        tasks.push(tokio::spawn(async move {
            commands.inventory().execute(command, &context).await
        }));
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    receiving.await.unwrap().expect("stock received");
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

fn out_of_stock<T: std::fmt::Debug>(outcome: &Result<T, CommandError>) -> bool {
    matches!(
        outcome,
        Err(CommandError::Rejected(DomainError::OutOfStock { .. }))
    )
}

async fn a_write_landing_before_a_batched_append_fails_the_whole_batch_not_only_its_first_command(
    backend: Backend,
) {
    let store = std::sync::OnceLock::new();
    let env = backend
        .env_wrapped(Limits::default(), |inner| {
            let wrapped = Arc::new(Choreographed::new(inner, Some(3)));
            let _ = store.set(wrapped.clone());
            wrapped
        })
        .await;
    let queued = vec![
        (reserve("RACE", 1), ctx()),
        (reserve("RACE", 1), ctx()),
        (reserve("RACE", 2), ctx()),
    ];

    let outcomes = queued_behind_a_slow_receive(&env.commands, "RACE", 4, queued).await;

    let choreographed = store.get().expect("the wrapped store");
    assert_eq!(
        choreographed
            .first_reservation_events
            .load(std::sync::atomic::Ordering::SeqCst),
        3,
        "the three reservations were decided in one round"
    );
    // Another writer reserved 3 of the 4 units before the round's append: the round
    // is decided again on the current stream, and only one unit is left.
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(out_of_stock(&outcomes[1]), "{:?}", outcomes[1]);
    assert!(out_of_stock(&outcomes[2]), "{:?}", outcomes[2]);
    let replayed: Inventory = env.replay(&Inventory::stream_id(&sku("RACE"))).await;
    assert_eq!((replayed.on_hand(), replayed.reserved()), (4, 4));
    assert_eq!(env.commands.inventory().stats().conflicts, 1);
}

async fn a_command_the_store_refuses_fails_alone_and_not_its_batch(backend: Backend) {
    let store = std::sync::OnceLock::new();
    let env = backend
        .env_wrapped(Limits::default(), |inner| {
            let wrapped = Arc::new(Choreographed::new(inner, None));
            let _ = store.set(wrapped.clone());
            wrapped
        })
        .await;
    // The store refuses metadata with an actor past its bound.
    let too_long = commands::CommandContext::new("x".repeat(eventstore::ACTOR_MAX_BYTES + 1));
    let queued = vec![
        (reserve("SOLO", 1), ctx()),
        (reserve("SOLO", 1), too_long),
        (reserve("SOLO", 1), ctx()),
    ];

    let outcomes = queued_behind_a_slow_receive(&env.commands, "SOLO", 10, queued).await;

    let choreographed = store.get().expect("the wrapped store");
    assert_eq!(
        choreographed
            .first_reservation_events
            .load(std::sync::atomic::Ordering::SeqCst),
        3
    );
    assert!(outcomes[0].is_ok(), "{:?}", outcomes[0]);
    assert!(
        matches!(
            &outcomes[1],
            Err(CommandError::Store(StoreError::InvalidRequest { .. }))
        ),
        "{:?}",
        outcomes[1]
    );
    assert!(outcomes[2].is_ok(), "{:?}", outcomes[2]);
    let replayed: Inventory = env.replay(&Inventory::stream_id(&sku("SOLO"))).await;
    assert_eq!(replayed.reserved(), 2);
}
