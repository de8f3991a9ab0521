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
