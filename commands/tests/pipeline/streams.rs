use std::time::{Duration, Instant};

use commands::{CommandError, Limits};
use domain::{DomainError, Inventory, Product, ProductId};
use eventstore::{AppendRequest, AppendResult, Direction, EventStore, RecordedEvent, StoreError};

use crate::support::{create_product, ctx, on_both_stores, rejection, reserve, Backend};

on_both_stores!(
    an_idle_stream_parks_its_state_and_the_next_command_finds_it_in_the_cache,
    the_cache_of_idle_states_keeps_at_most_its_bound,
    a_store_that_does_not_answer_gives_a_timeout_and_the_stream_recovers,
    dropping_the_command_side_ends_its_stream_tasks,
    a_command_that_begins_its_stream_is_decided_without_loading_it,
    a_stream_presumed_new_that_exists_is_loaded_and_decided_again,
    a_repeated_command_that_begins_its_stream_gets_the_first_outcome_elsewhere,
);

fn quickly_idle(cache_max_streams: usize) -> Limits {
    Limits {
        stream_idle_timeout: Duration::from_millis(50),
        cache_max_streams,
        ..Limits::default()
    }
}

/// Waits (bounded) until no stream of the inventory handler has a running task.
async fn all_idle(env: &crate::support::Env) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.commands.inventory().live_streams() > 0 {
        assert!(Instant::now() < deadline, "stream tasks did not retire");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn an_idle_stream_parks_its_state_and_the_next_command_finds_it_in_the_cache(
    backend: Backend,
) {
    let env = backend.env_with(quickly_idle(16)).await;
    env.receive("PARK", 5).await;
    all_idle(&env).await;
    let inventory = env.commands.inventory();
    assert_eq!(inventory.cached_streams(), 1);

    let reserved = inventory.execute(reserve("PARK", 2), &ctx()).await.unwrap();

    assert_eq!(reserved.stream_version, 2);
    assert_eq!(
        inventory.stats().loads,
        1,
        "the second task took the cached state"
    );
    assert_eq!(inventory.stats().events_read, 0);
    assert_eq!(inventory.live_streams(), 1);
    assert_eq!(inventory.cached_streams(), 0);
}

async fn the_cache_of_idle_states_keeps_at_most_its_bound(backend: Backend) {
    let env = backend.env_with(quickly_idle(2)).await;
    for code in ["C-1", "C-2", "C-3"] {
        env.receive(code, 1).await;
    }
    all_idle(&env).await;

    assert_eq!(env.commands.inventory().cached_streams(), 2);
    for code in ["C-1", "C-2", "C-3"] {
        assert_eq!(env.inventory(code).await.on_hand(), 1);
    }
}

/// A store whose appends of reservations never come back.
struct Unanswering {
    inner: std::sync::Arc<dyn EventStore>,
}

#[async_trait::async_trait]
impl EventStore for Unanswering {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, StoreError> {
        if request
            .events
            .iter()
            .any(|e| e.event_type == "StockReserved")
        {
            std::future::pending::<()>().await;
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

    async fn wait_for_head(&self, known: u64, timeout: Duration) -> Result<u64, StoreError> {
        self.inner.wait_for_head(known, timeout).await
    }
}

async fn a_store_that_does_not_answer_gives_a_timeout_and_the_stream_recovers(backend: Backend) {
    let limits = Limits {
        store_call_timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let env = backend
        .env_wrapped(limits, |inner| std::sync::Arc::new(Unanswering { inner }))
        .await;
    env.receive("SLOW", 5).await;
    let inventory = env.commands.inventory();

    let started = Instant::now();
    let outcome = inventory.execute(reserve("SLOW", 1), &ctx()).await;

    assert_eq!(
        outcome,
        Err(CommandError::Timeout {
            stream: Inventory::stream_id(&crate::support::sku("SLOW")),
            timeout_ms: 200
        })
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The stream is not stuck: what does not need the hanging call still works.
    let refused = inventory.execute(reserve("SLOW", 6), &ctx()).await;
    assert!(matches!(
        refused,
        Err(CommandError::Rejected(DomainError::OutOfStock {
            available: 5,
            ..
        }))
    ));
}

async fn dropping_the_command_side_ends_its_stream_tasks(backend: Backend) {
    let env = backend.env().await;
    let before = std::sync::Arc::strong_count(&env.store);
    let process = env.another_process();
    for code in ["END-1", "END-2"] {
        process
            .inventory()
            .execute(
                domain::InventoryCommand::ReceiveStock {
                    sku: crate::support::sku(code),
                    warehouse: crate::support::warehouse("main"),
                    quantity: crate::support::qty(1),
                },
                &ctx(),
            )
            .await
            .unwrap();
    }
    assert_eq!(process.inventory().live_streams(), 2);

    drop(process);

    // Each task held the store through its handler; all of them let go, well
    // before they would have retired for being idle.
    let deadline = Instant::now() + Duration::from_secs(2);
    while std::sync::Arc::strong_count(&env.store) > before {
        assert!(
            Instant::now() < deadline,
            "stream tasks still hold the store"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_command_that_begins_its_stream_is_decided_without_loading_it(backend: Backend) {
    let env = backend.env().await;
    let product_id: ProductId = uuid::Uuid::now_v7().into();
    let products = env.commands.products();

    let created = products
        .execute(create_product(product_id, &["NEW-1"]), &ctx())
        .await
        .unwrap();

    assert_eq!(created.stream_version, 1);
    assert_eq!(products.stats().loads, 0, "a new stream is not loaded");
    assert_eq!(products.stats().events_read, 0);
    assert_eq!(products.stats().conflicts, 0);
    assert_eq!(
        env.event_types(&Product::stream_id(&product_id)).await,
        ["ProductCreated"]
    );
}

async fn a_stream_presumed_new_that_exists_is_loaded_and_decided_again(backend: Backend) {
    let env = backend.env().await;
    let product_id: ProductId = uuid::Uuid::now_v7().into();
    env.commands
        .products()
        .execute(create_product(product_id, &["OLD-1"]), &ctx())
        .await
        .unwrap();
    // A process that does not hold the stream presumes it new: its append expecting
    // no stream is refused, and the command is decided again on the loaded stream.
    let other = env.another_process();

    let again = other
        .products()
        .execute(create_product(product_id, &["OLD-1"]), &ctx())
        .await;

    assert!(
        matches!(rejection(again), DomainError::AlreadyExists { .. }),
        "decided on the loaded stream"
    );
    let stats = other.products().stats();
    assert_eq!(stats.loads, 1);
    assert_eq!(stats.conflicts, 0, "a wrong guess is not a conflict");
    assert_eq!(stats.appends, 0);
    assert_eq!(
        env.event_types(&Product::stream_id(&product_id)).await,
        ["ProductCreated"]
    );
}

async fn a_repeated_command_that_begins_its_stream_gets_the_first_outcome_elsewhere(
    backend: Backend,
) {
    let env = backend.env().await;
    let product_id: ProductId = uuid::Uuid::now_v7().into();
    let context = ctx();
    let first = env
        .commands
        .products()
        .execute(create_product(product_id, &["TWICE-1"]), &context)
        .await
        .unwrap();
    // The same command id again from a process that does not hold the stream (a step
    // re-run after a crash), with other contents: decided on the empty state, its
    // events differ from the first ones, which the store refuses; the stream is then
    // loaded and the repeat answered with the first outcome.
    let mut again = create_product(product_id, &["TWICE-1"]);
    if let domain::ProductCommand::CreateProduct { title, .. } = &mut again {
        *title = "Another title".into();
    }
    let other = env.another_process();

    let repeated = other.products().execute(again, &context).await.unwrap();

    assert!(repeated.replayed);
    assert_eq!(repeated.positions, first.positions);
    assert_eq!(other.products().stats().conflicts, 0);
    assert_eq!(
        env.event_types(&Product::stream_id(&product_id)).await,
        ["ProductCreated"]
    );
}
