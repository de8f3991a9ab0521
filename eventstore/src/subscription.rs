//! Catch-up subscriptions that turn live without a seam.
//!
//! A subscription only ever reads `position > last delivered`, in position order.
//! Because every position up to the store's head is committed (the head lock makes
//! commit order equal position order), reading by position can neither skip nor
//! repeat an event, so catching up and following live are the same loop: read a
//! batch; if there was none, wait for the head to move (a notification, or the poll
//! interval as a fallback) and read again.

use std::sync::Arc;
use std::time::Duration;

use crate::types::{RecordedEvent, StoreError};
use crate::EventStore;

/// How a subscription reads.
#[derive(Debug, Clone)]
pub struct SubscriptionOptions {
    /// Most events handed out per batch.
    pub batch_max_events: usize,
    /// Only events of this stream category.
    pub category: Option<String>,
    /// How long to wait for a notification before looking at the head again.
    pub poll_interval: Duration,
}

impl Default for SubscriptionOptions {
    fn default() -> Self {
        SubscriptionOptions {
            batch_max_events: 1_000,
            category: None,
            poll_interval: Duration::from_millis(500),
        }
    }
}

/// A reader of the log from a position onwards.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    after: u64,
    options: SubscriptionOptions,
}

impl Subscription {
    /// Follows the log from the first event after position `after` (0: from the start).
    pub fn new(store: Arc<dyn EventStore>, after: u64, options: SubscriptionOptions) -> Self {
        Subscription {
            store,
            after,
            options,
        }
    }

    /// The position of the last event handed out.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The next non-empty batch of events, waiting as long as it takes.
    pub async fn next_batch(&mut self) -> Result<Vec<RecordedEvent>, StoreError> {
        loop {
            // The head is read before the log: an event that commits after this read
            // moves the head past `known`, so the wait below cannot sleep through it.
            let head = self.store.head().await?;
            if let Some(batch) = self.try_next_batch().await? {
                return Ok(batch);
            }
            let known = head.max(self.after);
            self.store
                .wait_for_head(known, self.options.poll_interval)
                .await?;
        }
    }

    /// The next batch if one is there now, without waiting.
    pub async fn try_next_batch(&mut self) -> Result<Option<Vec<RecordedEvent>>, StoreError> {
        let events = self
            .store
            .read_all(
                self.after,
                self.options.batch_max_events,
                self.options.category.as_deref(),
            )
            .await?;
        let Some(last) = events.last() else {
            return Ok(None);
        };
        debug_assert!(events.windows(2).all(|w| w[0].position < w[1].position));
        debug_assert!(events[0].position > self.after);
        self.after = last.position;
        Ok(Some(events))
    }
}
