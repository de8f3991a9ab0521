//! The command side of the engine: runs domain deciders against the event store.
