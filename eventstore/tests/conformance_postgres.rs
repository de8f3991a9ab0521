//! The conformance suite on PostgreSQL: each case gets a database of its own on the
//! server the project's scripts start (or `DATABASE_URL`).

use std::sync::Arc;

use eventstore::testing::test_database;
use eventstore::ScratchDatabase;
use eventstore::{EventStore, PostgresConfig, PostgresStore};

async fn postgres_store() -> (Arc<dyn EventStore>, ScratchDatabase) {
    let db = test_database().await.expect("a test database");
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("connect to the test database");
    (Arc::new(store), db)
}

eventstore::conformance_suite!(postgres_store);

/// Two stores on one database stand for two engine processes: each appender's memory
/// of stream versions must give way to what the other wrote.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_appending_to_one_stream_see_each_others_versions() {
    use eventstore::{AppendRequest, ExpectedVersion, NewEvent, StoreError};
    let db = test_database().await.expect("a test database");
    let a = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("store a");
    let b = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("store b");
    let append = |expected| AppendRequest {
        stream_id: "inventory-SKU1".into(),
        expected,
        events: vec![NewEvent::new("StockReserved", serde_json::json!({}))],
        command_id: None,
        preconditions: Vec::new(),
    };
    a.append(append(ExpectedVersion::NoStream))
        .await
        .expect("a creates the stream");
    b.append(append(ExpectedVersion::Exact(1)))
        .await
        .expect("b appends at 1");
    let err = a
        .append(append(ExpectedVersion::Exact(1)))
        .await
        .expect_err("a's view of the stream is stale");
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 2, .. }),
        "{err:?}"
    );
    let ok = a
        .append(append(ExpectedVersion::Exact(2)))
        .await
        .expect("a appends at 2");
    assert_eq!((ok.first_position, ok.stream_version), (3, 3));
    let err = b
        .append(append(ExpectedVersion::Exact(2)))
        .await
        .expect_err("b's view is stale too");
    assert!(
        matches!(err, StoreError::WrongExpectedVersion { actual: 3, .. }),
        "{err:?}"
    );
    let log = a.read_all(0, 10, None).await.expect("log");
    assert_eq!(
        log.iter().map(|e| e.version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    eventstore::hash::verify_chain(eventstore::hash::GENESIS_HASH, &log).expect("one chain");
}

/// Three stores on one database, each with its own appender chaining batches onto
/// its own: their chains keep breaking on each other's appends, and the log must
/// still come out gapless, in commit order, with every append at its expected
/// version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_writing_and_following_at_once_see_one_gapless_order() {
    let db = test_database().await.expect("a test database");
    let mut stores: Vec<Arc<dyn EventStore>> = Vec::new();
    for _ in 0..3 {
        let store = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
            .await
            .expect("store");
        stores.push(Arc::new(store));
    }
    eventstore::testing::conformance::writers_and_subscribers_on_stores_see_one_gapless_order(
        &stores,
    )
    .await;
}

/// A subscriber that never hears a notification still sees every event another
/// process commits, by polling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_without_notifications_follows_by_polling() {
    use eventstore::{AppendRequest, ExpectedVersion, NewEvent, Subscription, SubscriptionOptions};
    use std::time::Duration;
    let db = test_database().await.expect("a test database");
    let writer = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("writer");
    let mut deaf = PostgresConfig::new(db.url.clone());
    deaf.listen_for_commits = false;
    let reader: Arc<dyn EventStore> = Arc::new(PostgresStore::connect(deaf).await.expect("reader"));
    let options = SubscriptionOptions {
        poll_interval: Duration::from_millis(50),
        ..SubscriptionOptions::default()
    };
    let mut subscription = Subscription::new(reader, 0, options);
    let appends = tokio::spawn(async move {
        for i in 0..30u64 {
            writer
                .append(AppendRequest {
                    stream_id: format!("order-{}", i % 3),
                    expected: ExpectedVersion::Any,
                    events: vec![NewEvent::new("OrderNoted", serde_json::json!({ "i": i }))],
                    command_id: None,
                    preconditions: Vec::new(),
                })
                .await
                .expect("append");
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    });
    let mut seen = Vec::new();
    while seen.len() < 30 {
        let batch = tokio::time::timeout(Duration::from_secs(10), subscription.next_batch())
            .await
            .expect("polling kept up")
            .expect("batch");
        seen.extend(batch.into_iter().map(|e| e.position));
    }
    appends.await.expect("writer");
    assert_eq!(seen, (1..=30).collect::<Vec<u64>>());
}
