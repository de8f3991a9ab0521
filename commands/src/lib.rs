//! The command side of the engine: runs the domain's deciders against the event
//! store. For each command: load the stream's state, decide, append the events with
//! the version the decision was made on as the expected version, and answer with
//! the events and the log positions they got. This crate does the I/O that `domain`
//! must not do, and none of the rules: those stay in `decide`.
//!
//! - [`Handler`] runs the commands of one aggregate type. Every command goes to the
//!   task of its stream (`stream.rs`), which owns the stream's state and decides the
//!   queued commands back to back, so a burst on one hot stream becomes a few large
//!   appends. States of idle streams wait in a bounded cache.
//! - A state is loaded from the latest [`Snapshot`] plus the events after it;
//!   snapshots of long streams fall due every [`SNAPSHOT_EVERY_EVENTS`] and are
//!   written at the stream's next pause ([`SNAPSHOT_PAUSE_MS`]).
//! - A conflict (another process wrote the stream) reloads and decides again, at
//!   most [`CONFLICT_ATTEMPTS_MAX`] times, then fails as [`CommandError::Conflict`].
//! - Every event's metadata carries the [`CommandContext`]: command id, correlation
//!   id, causation id and actor. A repeated command id gets the first outcome.
//! - [`Commands`] bundles the handlers of the shop and the commands that read one
//!   aggregate to decide on another: a cart line's price comes from the product
//!   ([`CartAction::AddItem`]), an order's lines from the checked-out cart.
//!
//! Stored events of older schema versions are upcast by the domain on load
//! (`DomainEvent::from_stored`), so the pipeline only ever decides on current shapes.

mod aggregate;
mod cache;
mod cart;
mod context;
mod error;
mod handler;
mod privacy;
mod shop;
mod snapshot;
mod stream;

pub use aggregate::StreamAggregate;
pub use cart::{CartAction, CartFacts, CART_FACTS_MAX};
pub use context::CommandContext;
pub use error::CommandError;
pub use handler::{
    Committed, Handler, HandlerStats, Limits, Loaded, Positions, CACHE_MAX_STREAMS,
    CONFLICT_ATTEMPTS_MAX, ENQUEUE_TIMEOUT_MS, LIVE_STREAMS_MAX, LOAD_PAGE_EVENTS,
    RECENT_COMMANDS_PER_STREAM, SNAPSHOT_BYTES_PER_INTERVAL, SNAPSHOT_EVERY_EVENTS,
    SNAPSHOT_PAUSE_MS, STORE_CALL_TIMEOUT_MS, STREAM_BATCH_MAX_COMMANDS, STREAM_BATCH_MAX_EVENTS,
    STREAM_IDLE_TIMEOUT_MS, STREAM_MAILBOX_MAX_COMMANDS,
};
pub use privacy::{ADDRESS_PERSONAL_FIELDS, PERSONAL_DATA};
pub use shop::{Commands, PlaceOrder};
pub use snapshot::{
    MemorySnapshots, PostgresSnapshots, Snapshot, SnapshotStore, COMMANDS_MIGRATIONS,
};
