//! The in-memory store: the same contract as PostgreSQL, for tests and simulation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::hash::{chain_hash, ChainedFields, GENESIS_HASH};
use crate::prepare::{decide, prepare, validate_stream_id, Decision, StoredCommand};
use crate::types::{
    category_of, AppendRequest, AppendResult, Direction, RecordedEvent, StoreError,
};
use crate::EventStore;

/// An event store held in memory. Cloning shares the same log.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Mutex<Inner>>,
    head_tx: Arc<watch::Sender<u64>>,
    kept_answers: Option<KeptAnswers>,
}

/// Whether a guard key has a kept answer (see [`AppendRequest::guards`]).
pub type KeptAnswers = Arc<dyn Fn(&Uuid) -> bool + Send + Sync>;

#[derive(Default)]
struct Inner {
    /// `log[i]` is the event at position `i + 1`.
    log: Vec<RecordedEvent>,
    /// Positions of each stream's events, in version order.
    streams: HashMap<String, Vec<u64>>,
    commands: HashMap<Uuid, StoredCommand>,
    event_ids: std::collections::HashSet<Uuid>,
    last_recorded_at: Option<DateTime<Utc>>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        let (head_tx, _) = watch::channel(0);
        MemoryStore {
            inner: Arc::new(Mutex::new(Inner::default())),
            head_tx: Arc::new(head_tx),
            kept_answers: None,
        }
    }

    /// Refuses appends whose guard keys `kept` says have a kept answer.
    pub fn with_kept_answers(mut self, kept: KeptAnswers) -> Self {
        self.kept_answers = Some(kept);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves no half-applied append (every append
        // is checked before anything is pushed), so a poisoned lock is still sound.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, StoreError> {
        let append = prepare(request)?;
        let mut inner = self.lock();
        let current = inner
            .streams
            .get(&append.stream_id)
            .map_or(0, |p| p.len() as u64);
        let previous = append
            .command_id
            .and_then(|id| inner.commands.get(&id).copied());
        let version_of = |stream: &str| inner.streams.get(stream).map_or(0, |p| p.len() as u64);
        let answered = |key: &Uuid| self.kept_answers.as_ref().is_some_and(|kept| kept(key));
        let first_version = match decide(&append, current, version_of, previous.as_ref(), answered)?
        {
            Decision::Replay(result) => return Ok(result),
            Decision::Write { first_version } => first_version,
        };
        if let Some(dup) = append
            .events
            .iter()
            .find(|e| inner.event_ids.contains(&e.event_id))
        {
            return Err(StoreError::DuplicateEventId {
                event_id: dup.event_id,
            });
        }
        // Microsecond precision, like PostgreSQL's timestamptz, and never going back.
        let now = Utc::now();
        let now = DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now);
        let recorded_at = inner.last_recorded_at.map_or(now, |last| last.max(now));
        inner.last_recorded_at = Some(recorded_at);

        let first_position = inner.log.len() as u64 + 1;
        let mut previous_hash = inner.log.last().map_or(GENESIS_HASH, |e| e.hash);
        let count = append.events.len() as u64;
        for (i, event) in append.events.into_iter().enumerate() {
            let position = first_position + i as u64;
            let version = first_version + i as u64;
            let hash = chain_hash(
                &previous_hash,
                &ChainedFields {
                    position,
                    stream_id: &append.stream_id,
                    version,
                    event_id: event.event_id,
                    event_type: &event.event_type,
                    schema_version: event.schema_version,
                    canonical_data: &event.canonical_data,
                    canonical_metadata: &event.canonical_metadata,
                    recorded_at,
                },
            );
            previous_hash = hash;
            inner.event_ids.insert(event.event_id);
            inner.log.push(RecordedEvent {
                position,
                stream_id: append.stream_id.clone(),
                version,
                event_id: event.event_id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                data: event.data.unwrap_or_else(|| {
                    serde_json::from_slice(&event.canonical_data).expect("canonical JSON parses")
                }),
                metadata: event.metadata,
                recorded_at,
                hash,
            });
        }
        let last_position = first_position + count - 1;
        inner
            .streams
            .entry(append.stream_id)
            .or_default()
            .extend(first_position..=last_position);
        let result = AppendResult {
            first_position,
            last_position,
            stream_version: first_version + count - 1,
        };
        if let Some(command_id) = append.command_id {
            inner.commands.insert(
                command_id,
                StoredCommand {
                    fingerprint: append.fingerprint,
                    result,
                },
            );
        }
        drop(inner);
        self.head_tx.send_replace(last_position);
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_stream_id(stream_id)?;
        let inner = self.lock();
        let Some(positions) = inner.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        let len = positions.len() as u64;
        let event_at =
            |version: u64| inner.log[(positions[(version - 1) as usize] - 1) as usize].clone();
        let events = match direction {
            Direction::Forward => (from_version.max(1)..=len)
                .take(limit)
                .map(event_at)
                .collect(),
            Direction::Backward => {
                let top = from_version.min(len);
                (1..=top).rev().take(limit).map(event_at).collect()
            }
        };
        Ok(events)
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let inner = self.lock();
        let start = (after as usize).min(inner.log.len());
        let events = inner.log[start..]
            .iter()
            .filter(|e| category.is_none_or(|c| category_of(&e.stream_id) == c))
            .take(limit)
            .cloned()
            .collect();
        Ok(events)
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        Ok(self
            .lock()
            .streams
            .get(stream_id)
            .map_or(0, |p| p.len() as u64))
    }

    async fn head(&self) -> Result<u64, StoreError> {
        Ok(self.lock().log.len() as u64)
    }

    async fn wait_for_head(&self, known: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut rx = self.head_tx.subscribe();
        let wait = rx.wait_for(|head| *head > known);
        // Timing out is an answer, not an error: the caller gets the head as it is.
        let _ = tokio::time::timeout(timeout, wait).await;
        let head = *self.head_tx.borrow();
        Ok(head)
    }
}
