//! The database itself keeps the log append-only: the role the engine runs as
//! (`commerce_engine`, made by migration 3) may read and append events but cannot
//! update, delete or truncate them, nor switch the triggers off; the triggers refuse
//! the same to the owner; and after every refused attempt the hash chain verifies.

use std::sync::Arc;

use eventstore::audit::verify_log;
use eventstore::testing::test_database;
use eventstore::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, PostgresConfig, PostgresStore,
};
use serde_json::json;
use tokio_postgres::error::SqlState;

/// The same database, reached with the engine's role set for every session.
fn as_engine(url: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}options=-c%20role%3Dcommerce_engine")
}

async fn append(store: &PostgresStore, count: u64) {
    for i in 0..count {
        store
            .append(AppendRequest {
                stream_id: format!("cart-{}", i % 4),
                expected: ExpectedVersion::Any,
                events: vec![NewEvent::new("Noted", json!({ "i": i }))],
                command_id: None,
                preconditions: Vec::new(),
                guards: Vec::new(),
            })
            .await
            .expect("append");
    }
}

const ATTEMPTS: &[&str] = &[
    "UPDATE events SET data = '{\"i\": 999}' WHERE position = 3",
    "DELETE FROM events WHERE position = 3",
    "TRUNCATE events",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_role_appends_but_cannot_change_history_and_the_log_still_verifies() {
    let db = test_database().await.expect("a test database");
    // The owner migrates; the engine connects afterwards under its own role.
    let owner = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("the owner migrates");
    let engine = PostgresStore::connect(PostgresConfig::new(as_engine(&db.url)))
        .await
        .expect("the engine connects with its role");
    append(&engine, 40).await;

    let client = engine.connection().await.expect("a connection");
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    assert_eq!(role, "commerce_engine");
    let mut attempts: Vec<&str> = ATTEMPTS.to_vec();
    // Only the owner may switch the triggers off; the engine is not the owner.
    attempts.push("ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete");
    for sql in attempts {
        let error = client
            .batch_execute(sql)
            .await
            .expect_err(&format!("the engine's role ran {sql}"));
        assert_eq!(
            error.code(),
            Some(&SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}: {error}"
        );
    }

    // The owner has the privileges, and the triggers still refuse.
    let owner_client = owner.connection().await.expect("a connection");
    for sql in ATTEMPTS {
        let error = owner_client
            .batch_execute(sql)
            .await
            .expect_err(&format!("the owner ran {sql}"));
        let message = error
            .as_db_error()
            .map(|e| e.message().to_owned())
            .unwrap_or_default();
        assert!(message.contains("append-only"), "{sql}: {error}");
    }

    // Nothing changed: every event is there and the chain verifies.
    let store: Arc<dyn EventStore> = Arc::new(engine.clone());
    let report = verify_log(store.clone(), 1, |_, _| {})
        .await
        .expect("verify");
    assert!(report.intact(), "{report:?}");
    assert_eq!((report.checked, report.last_position), (40, 40));
    let third = store
        .read_all(2, 1, None)
        .await
        .expect("read")
        .pop()
        .expect("event 3");
    assert_eq!(third.data, json!({ "i": 2 }));

    // And the engine goes on appending.
    append(&engine, 5).await;
    assert_eq!(engine.head().await.expect("head"), 45);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_role_reads_and_writes_the_other_tables() {
    let db = test_database().await.expect("a test database");
    let _owner = PostgresStore::connect(PostgresConfig::new(db.url.clone()))
        .await
        .expect("the owner migrates");
    // A table a later migration of another component creates, as the owner.
    let (owner_client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("the owner connects");
    tokio::spawn(connection);
    owner_client
        .batch_execute("CREATE TABLE later_table (id bigserial PRIMARY KEY, note text)")
        .await
        .expect("the owner creates a table");
    let engine = PostgresStore::connect(PostgresConfig::new(as_engine(&db.url)))
        .await
        .expect("the engine connects");
    let client = engine.connection().await.expect("a connection");
    client
        .batch_execute(
            "INSERT INTO later_table (note) VALUES ('a');
             UPDATE later_table SET note = 'b';
             DELETE FROM later_table;",
        )
        .await
        .expect("the engine writes other components' tables");
    let error = client
        .batch_execute("CREATE TABLE engine_table (id int)")
        .await
        .expect_err("the engine's role creates no tables");
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
}
