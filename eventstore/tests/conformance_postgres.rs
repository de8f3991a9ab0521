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
        guards: Vec::new(),
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

/// Another process's chained batch is in flight: its rows are copied in past the head
/// and its head move is still to come. A batch written under the head lock (a store's
/// first) must wait for it to end rather than lock the head and then wait for those
/// rows, which would leave the chained head move waiting for the head until its lock
/// timeout, or the two deadlocked. The head move goes through, and the locked batch
/// lands after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_batch_waits_for_another_process_chained_batch() {
    use eventstore::{AppendRequest, ExpectedVersion, NewEvent, LOG_WRITERS_LOCK_KEY};
    use std::time::Duration;
    let db = test_database().await.expect("a test database");
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("store");

    // The other process's chained batch, statement by statement.
    let (chained, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    chained.batch_execute("BEGIN").await.expect("begin");
    chained
        .execute(
            "SELECT pg_advisory_xact_lock_shared($1)",
            &[&LOG_WRITERS_LOCK_KEY],
        )
        .await
        .expect("the writers' lock, shared");
    let head = chained
        .query_one("SELECT position, hash FROM log_head", &[])
        .await
        .expect("head");
    let (position, hash): (i64, Vec<u8>) = (head.get(0), head.get(1));
    assert_eq!(position, 0);
    let new_hash = vec![7u8; 32];
    chained
        .execute(
            "INSERT INTO events (position, stream_id, version, event_id, event_type, \
                                 schema_version, data, metadata, recorded_at, hash) \
             VALUES (1, 'inventory-chained', 1, gen_random_uuid(), 'StockReserved', 1, \
                     '{}', '{}', clock_timestamp(), $1)",
            &[&new_hash],
        )
        .await
        .expect("the chained row, past the head");

    let appending = tokio::spawn(async move {
        store
            .append(AppendRequest {
                stream_id: "inventory-locked".into(),
                expected: ExpectedVersion::NoStream,
                events: vec![NewEvent::new("StockReserved", serde_json::json!({}))],
                command_id: None,
                preconditions: Vec::new(),
                guards: Vec::new(),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !appending.is_finished(),
        "the locked batch waits for the chained one"
    );
    chained
        .execute(
            "SELECT log_advance_head($1, $2, 1, $3, clock_timestamp(), 'commerce_events')",
            &[&position, &hash, &new_hash],
        )
        .await
        .expect("the chained head move finds the head free");
    chained.batch_execute("COMMIT").await.expect("commit");

    let written = tokio::time::timeout(Duration::from_secs(30), appending)
        .await
        .expect("the locked batch ends")
        .expect("task")
        .expect("the locked batch is written");
    assert_eq!(
        (written.first_position, written.stream_version),
        (2, 1),
        "after the chained batch"
    );
}

/// Guard keys checked against a table of kept answers, as an API keeps its
/// idempotency keys' answers. The table is created after the store starts, as the
/// API's migrations do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guarded_appends_are_refused_once_a_key_has_an_answer() {
    let db = test_database().await.expect("a test database");
    let mut config = PostgresConfig::new(db.url.clone());
    config.kept_answers = Some("SELECT key FROM kept_answers WHERE key = ANY($1)".into());
    let store = PostgresStore::connect(config).await.expect("store");
    let (client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let answered = uuid::Uuid::new_v4();
    client
        .batch_execute("CREATE TABLE kept_answers (key uuid PRIMARY KEY)")
        .await
        .expect("the table");
    client
        .execute("INSERT INTO kept_answers VALUES ($1)", &[&answered])
        .await
        .expect("a kept answer");
    eventstore::testing::conformance::guarded_appends_are_refused_once_a_key_has_an_answer(
        Arc::new(store),
        answered,
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
                    guards: Vec::new(),
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
