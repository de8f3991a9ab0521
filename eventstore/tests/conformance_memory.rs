//! The conformance suite on the in-memory store.

use std::sync::Arc;

use eventstore::{EventStore, MemoryStore};

async fn memory_store() -> (Arc<dyn EventStore>, ()) {
    (Arc::new(MemoryStore::new()), ())
}

eventstore::conformance_suite!(memory_store);

#[tokio::test]
async fn guarded_appends_are_refused_once_a_key_has_an_answer() {
    let answered = uuid::Uuid::new_v4();
    let store = MemoryStore::new().with_kept_answers(Arc::new(move |key| *key == answered));
    eventstore::testing::conformance::guarded_appends_are_refused_once_a_key_has_an_answer(
        Arc::new(store),
        answered,
    )
    .await;
}
