//! The conformance suite on the in-memory store.

use std::sync::Arc;

use eventstore::{EventStore, MemoryStore};

async fn memory_store() -> (Arc<dyn EventStore>, ()) {
    (Arc::new(MemoryStore::new()), ())
}

eventstore::conformance_suite!(memory_store);
