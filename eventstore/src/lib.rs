//! The event log. Knows nothing of commerce: streams of JSON events, appended with
//! optimistic concurrency and read back in one global order.
//!
//! Two stores keep one contract, checked by one conformance suite
//! ([`testing::conformance`] with the `testing` feature):
//! - [`PostgresStore`]: the production log. All appends of a process go through one
//!   appender task that batches them into one transaction (group commit) under a lock
//!   on the single `log_head` row, so global positions are gapless and commit order
//!   equals position order: a reader of `position > checkpoint` never skips an event.
//! - [`MemoryStore`]: the same rules in memory, for unit tests and simulation.
//!
//! Every stored event carries a SHA-256 hash chained to the event before it
//! ([`hash`]), so an auditor can prove the log was not edited.

pub mod audit;
pub mod canonical_json;
mod canonical_text;
pub mod hash;
mod memory;
mod postgres;
mod prepare;
pub mod privacy;
mod scratch;
mod subscription;
mod types;

#[cfg(feature = "testing")]
pub mod testing;

use std::time::Duration;

use async_trait::async_trait;

pub use canonical_json::CanonicalJson;
pub use memory::MemoryStore;
pub use postgres::{
    db_error, migrate, Migration, PostgresConfig, PostgresStore, EVENTSTORE_MIGRATIONS,
    LOG_WRITERS_LOCK_KEY,
};
pub use scratch::{recreate_database, ScratchDatabase};
pub use subscription::{Subscription, SubscriptionOptions};
pub use types::*;

/// The contract of an event store.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends events to one stream if its version satisfies `request.expected`.
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, StoreError>;

    /// Several appends decided one after the other, in order, each on its own expected
    /// version (a later one sees what the earlier ones wrote), each with its own result.
    /// The PostgreSQL store writes them in one group commit.
    async fn append_batch(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Vec<Result<AppendResult, StoreError>> {
        let mut results = Vec::with_capacity(requests.len());
        for request in requests {
            results.push(self.append(request).await);
        }
        results
    }

    /// Up to `limit` events of a stream. Forward: versions `>= from_version` ascending.
    /// Backward: versions `<= from_version` descending (`u64::MAX` reads from the end).
    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of the whole log with `position > after`, ascending,
    /// optionally only those whose stream category equals `category`.
    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `limit` events of the log with `position > after` that `filter` matches,
    /// ascending, from at most `window` positions. Returns them with the position the
    /// read looked up to (`after` when nothing new is committed): every match up to it
    /// was returned, so a reader following the log from a checkpoint moves it there
    /// even when nothing matched, and a stretch without matches is read once.
    ///
    /// The default reads the window whole and filters it here; a store that can
    /// filter where the events are kept sends only the matches.
    async fn read_all_matching(
        &self,
        after: u64,
        limit: usize,
        filter: &LogFilter<'_>,
        window: u64,
    ) -> Result<(Vec<RecordedEvent>, u64), StoreError> {
        let window = usize::try_from(window).unwrap_or(usize::MAX);
        let events = self.read_all(after, window, None).await?;
        let mut looked = events.last().map_or(after, |e| e.position);
        let mut matched: Vec<RecordedEvent> = Vec::new();
        for event in events {
            if !filter.matches(&event) {
                continue;
            }
            if matched.len() == limit {
                looked = matched.last().map_or(after, |e| e.position);
                break;
            }
            matched.push(event);
        }
        Ok((matched, looked))
    }

    /// The current version of a stream (0 if it does not exist).
    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError>;

    /// The position of the last committed event (0 for an empty log). Every position
    /// up to it is committed.
    async fn head(&self) -> Result<u64, StoreError>;

    /// Waits until the head passes `known`, or `timeout` elapses; returns the head.
    async fn wait_for_head(&self, known: u64, timeout: Duration) -> Result<u64, StoreError>;
}
