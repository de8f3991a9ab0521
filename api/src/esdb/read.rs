//! The Read call: a stream or `$all`, forwards or backwards, a count of events or a
//! subscription (catch up, then live).
//!
//! Answers go through a bounded channel to the client, so a slow reader slows the
//! reading task down instead of filling memory. Subscriptions read by version (a
//! stream) or by position (`$all`) and wait for the log's head to move when they find
//! nothing, reading the head before the log so no commit slips between: the same seam-
//! less loop as the store's own subscriptions. A stream's truncation (`$tb`,
//! `$maxCount`, `$maxAge`, a soft delete) hides events from stream reads; `$all` shows
//! the whole log, as EventStoreDB does before a scavenge.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use eventstore::{Direction, EventStore, RecordedEvent, StoreError};
use tokio::sync::{mpsc, watch};
use tonic::Status;
use uuid::Uuid;

use super::codec::{self, UuidFormat};
use super::errors;
use super::filter::EventFilter;
use super::proto::streams::read_resp::{self, Content};
use super::proto::streams::ReadResp;
use super::state::{self, StreamMetadata};
use super::streams_rules::{is_metadata_stream, TOMBSTONE_EVENT_TYPE};

/// Most events read from the log per query.
pub const READ_PAGE_MAX_EVENTS: usize = 500;
/// How long a subscription waits for a commit notification before asking for the head.
pub const SUBSCRIPTION_POLL_INTERVAL: Duration = Duration::from_millis(500);

pub type Replies = mpsc::Sender<Result<ReadResp, Status>>;

/// Where a stream read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamStart {
    Start,
    End,
    Revision(u64),
}

/// Where a `$all` read starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllStart {
    Start,
    End,
    Position(u64),
}

/// What to do once the start is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Read { direction: Direction, count: u64 },
    Subscribe,
}

/// The reply could not be delivered: the client went away.
struct Gone;

async fn send(replies: &Replies, content: Content) -> Result<(), Gone> {
    replies
        .send(Ok(ReadResp {
            content: Some(content),
        }))
        .await
        .map_err(|_| Gone)
}

async fn send_event(
    replies: &Replies,
    event: &RecordedEvent,
    format: UuidFormat,
) -> Result<(), Gone> {
    let recorded = match codec::recorded_to_proto(event, format) {
        Ok(recorded) => recorded,
        Err(e) => {
            let _ = replies.send(Err(errors::from_store(e))).await;
            return Err(Gone);
        }
    };
    send(
        replies,
        Content::Event(read_resp::ReadEvent {
            event: Some(recorded),
            link: None,
            position: Some(read_resp::read_event::Position::CommitPosition(
                event.position,
            )),
        }),
    )
    .await
}

async fn fail(replies: &Replies, status: Status) {
    let _ = replies.send(Err(status)).await;
}

fn store_failed(e: StoreError) -> Status {
    errors::from_store(e)
}

/// What a stream read needs to know before it starts (a tombstone is an error of the
/// call itself, reported before any reply).
pub struct StreamView {
    pub version: u64,
    pub metadata: StreamMetadata,
}

impl StreamView {
    pub async fn load(store: &Arc<dyn EventStore>, stream: &str) -> Result<Self, Status> {
        let head = state::stream_head(store, stream)
            .await
            .map_err(store_failed)?;
        if head.tombstoned {
            return Err(errors::stream_deleted(stream));
        }
        let metadata = if is_metadata_stream(stream) || head.version == 0 {
            StreamMetadata::default()
        } else {
            state::stream_metadata(store, stream)
                .await
                .map_err(store_failed)?
        };
        Ok(StreamView {
            version: head.version,
            metadata,
        })
    }

    fn not_found(&self) -> bool {
        self.version == 0 || self.metadata.soft_deleted(self.version)
    }
}

/// Reads or subscribes to a stream, answering on `replies` until done (or, for a
/// subscription, until the client goes or `stopping` turns true).
#[allow(clippy::too_many_arguments)] // one call's parameters, each from the request
pub async fn stream(
    store: Arc<dyn EventStore>,
    stream: String,
    view: StreamView,
    start: StreamStart,
    mode: Mode,
    format: UuidFormat,
    replies: Replies,
    mut stopping: watch::Receiver<bool>,
) {
    let result = match mode {
        Mode::Read { direction, count } => {
            read_stream(
                &store, &stream, &view, start, direction, count, format, &replies,
            )
            .await
        }
        Mode::Subscribe => {
            subscribe_stream(
                &store,
                &stream,
                &view,
                start,
                format,
                &replies,
                &mut stopping,
            )
            .await
        }
    };
    if let Err(ReadError::Failed(status)) = result {
        fail(&replies, status).await;
    }
}

enum ReadError {
    Gone,
    Failed(Status),
}

impl From<Gone> for ReadError {
    fn from(_: Gone) -> Self {
        ReadError::Gone
    }
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Failed(store_failed(e))
    }
}

#[allow(clippy::too_many_arguments)] // one read's parameters, each from the request
async fn read_stream(
    store: &Arc<dyn EventStore>,
    stream: &str,
    view: &StreamView,
    start: StreamStart,
    direction: Direction,
    count: u64,
    format: UuidFormat,
    replies: &Replies,
) -> Result<(), ReadError> {
    if view.not_found() {
        send(
            replies,
            Content::StreamNotFound(read_resp::StreamNotFound {
                stream_identifier: Some(codec::stream_identifier(stream)),
            }),
        )
        .await?;
        return Ok(());
    }
    let first_visible = view.metadata.first_visible_version(view.version);
    let oldest = view.metadata.oldest_visible(Utc::now());
    let visible = |event: &RecordedEvent| {
        event.version >= first_visible
            && event.event_type != TOMBSTONE_EVENT_TYPE
            && oldest.is_none_or(|t| event.recorded_at >= t)
    };
    let mut remaining = count;
    match direction {
        Direction::Forward => {
            let mut next = match start {
                StreamStart::Start => 1,
                StreamStart::End => view.version.saturating_add(1),
                StreamStart::Revision(r) => r.saturating_add(1),
            }
            .max(first_visible);
            while remaining > 0 {
                let limit = remaining.min(READ_PAGE_MAX_EVENTS as u64) as usize;
                let page = store
                    .read_stream(stream, next, Direction::Forward, limit)
                    .await?;
                for event in &page {
                    next = event.version + 1;
                    if visible(event) {
                        send_event(replies, event, format).await?;
                        remaining -= 1;
                    }
                }
                if page.len() < limit {
                    break;
                }
            }
        }
        Direction::Backward => {
            let mut next = match start {
                StreamStart::Start => 1,
                StreamStart::End => view.version,
                StreamStart::Revision(r) => r.saturating_add(1).min(view.version),
            };
            'pages: while remaining > 0 && next >= first_visible && next > 0 {
                let limit = remaining.min(READ_PAGE_MAX_EVENTS as u64) as usize;
                let page = store
                    .read_stream(stream, next, Direction::Backward, limit)
                    .await?;
                for event in &page {
                    if event.version < first_visible
                        || oldest.is_some_and(|t| event.recorded_at < t)
                    {
                        // Everything older is hidden too.
                        break 'pages;
                    }
                    if visible(event) {
                        send_event(replies, event, format).await?;
                        remaining -= 1;
                    }
                    next = event.version - 1;
                }
                if page.len() < limit {
                    break;
                }
            }
        }
    }
    Ok(())
}

async fn confirm(replies: &Replies) -> Result<(), Gone> {
    send(
        replies,
        Content::Confirmation(read_resp::SubscriptionConfirmation {
            subscription_id: Uuid::new_v4().to_string(),
        }),
    )
    .await
}

/// Waits for the head to pass `known`, the client to go or the server to stop.
async fn wait_for_commits(
    store: &Arc<dyn EventStore>,
    known: u64,
    replies: &Replies,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), ReadError> {
    tokio::select! {
        () = replies.closed() => Err(ReadError::Gone),
        () = stopped(stopping) => Err(ReadError::Failed(
            Status::unavailable("the server is shutting down"),
        )),
        head = store.wait_for_head(known, SUBSCRIPTION_POLL_INTERVAL) => {
            head?;
            Ok(())
        }
    }
}

/// Resolves once the server is stopping (the guard `wait_for` returns is not `Send`, so
/// it is dropped here).
pub async fn stopped(stopping: &mut watch::Receiver<bool>) {
    let _ = stopping.wait_for(|stopping| *stopping).await;
}

async fn subscribe_stream(
    store: &Arc<dyn EventStore>,
    stream: &str,
    view: &StreamView,
    start: StreamStart,
    format: UuidFormat,
    replies: &Replies,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), ReadError> {
    confirm(replies).await?;
    let first_visible = view.metadata.first_visible_version(view.version);
    let mut next = match start {
        StreamStart::Start => first_visible,
        StreamStart::End => view.version.saturating_add(1),
        // From a revision means after it.
        StreamStart::Revision(r) => r.saturating_add(2).max(first_visible),
    };
    let mut caught_up = false;
    loop {
        let head = store.head().await?;
        let page = store
            .read_stream(stream, next, Direction::Forward, READ_PAGE_MAX_EVENTS)
            .await?;
        for event in &page {
            if state::is_tombstone(event) {
                return Err(ReadError::Failed(errors::stream_deleted(stream)));
            }
            send_event(replies, event, format).await?;
            next = event.version + 1;
        }
        if page.len() < READ_PAGE_MAX_EVENTS {
            if !caught_up {
                caught_up = true;
                send(replies, Content::CaughtUp(read_resp::CaughtUp {})).await?;
            }
            wait_for_commits(store, head, replies, stopping).await?;
        }
    }
}

/// Reads or subscribes to `$all`, answering on `replies` until done.
pub async fn all(
    store: Arc<dyn EventStore>,
    start: AllStart,
    mode: Mode,
    filter: Option<EventFilter>,
    format: UuidFormat,
    replies: Replies,
    mut stopping: watch::Receiver<bool>,
) {
    let result = match mode {
        Mode::Read { direction, count } => {
            read_all(
                &store,
                start,
                direction,
                count,
                filter.as_ref(),
                format,
                &replies,
            )
            .await
        }
        Mode::Subscribe => {
            subscribe_all(
                &store,
                start,
                filter.as_ref(),
                format,
                &replies,
                &mut stopping,
            )
            .await
        }
    };
    if let Err(ReadError::Failed(status)) = result {
        fail(&replies, status).await;
    }
}

async fn read_all(
    store: &Arc<dyn EventStore>,
    start: AllStart,
    direction: Direction,
    count: u64,
    filter: Option<&EventFilter>,
    format: UuidFormat,
    replies: &Replies,
) -> Result<(), ReadError> {
    let matches = |event: &RecordedEvent| filter.is_none_or(|f| f.matches(event));
    let mut remaining = count;
    match direction {
        Direction::Forward => {
            // From a position includes the event at it.
            let mut after = match start {
                AllStart::Start => 0,
                AllStart::End => store.head().await?,
                AllStart::Position(p) => p.saturating_sub(1),
            };
            while remaining > 0 {
                let page = store.read_all(after, READ_PAGE_MAX_EVENTS, None).await?;
                for event in &page {
                    after = event.position;
                    if matches(event) {
                        send_event(replies, event, format).await?;
                        remaining -= 1;
                        if remaining == 0 {
                            break;
                        }
                    }
                }
                if page.len() < READ_PAGE_MAX_EVENTS {
                    break;
                }
            }
        }
        Direction::Backward => {
            // Positions are gapless up to the head, so the events before `before` are
            // the window of positions just below it, read forwards and turned round.
            let head = store.head().await?;
            let mut before = match start {
                AllStart::Start => 1,
                AllStart::End => head.saturating_add(1),
                AllStart::Position(p) => p.min(head.saturating_add(1)),
            };
            while remaining > 0 && before > 1 {
                let from = before.saturating_sub(READ_PAGE_MAX_EVENTS as u64).max(1);
                let window = (before - from) as usize;
                let mut page = store.read_all(from - 1, window, None).await?;
                page.reverse();
                for event in &page {
                    if matches(event) {
                        send_event(replies, event, format).await?;
                        remaining -= 1;
                        if remaining == 0 {
                            break;
                        }
                    }
                }
                before = from;
            }
        }
    }
    Ok(())
}

async fn subscribe_all(
    store: &Arc<dyn EventStore>,
    start: AllStart,
    filter: Option<&EventFilter>,
    format: UuidFormat,
    replies: &Replies,
    stopping: &mut watch::Receiver<bool>,
) -> Result<(), ReadError> {
    confirm(replies).await?;
    let mut after = match start {
        AllStart::Start => 0,
        AllStart::End => store.head().await?,
        // From a position means after it.
        AllStart::Position(p) => p,
    };
    let checkpoint_interval = filter.map(EventFilter::checkpoint_interval);
    let mut scanned_since_checkpoint = 0u64;
    let mut caught_up = false;
    loop {
        let head = store.head().await?;
        let page = store.read_all(after, READ_PAGE_MAX_EVENTS, None).await?;
        for event in &page {
            after = event.position;
            if filter.is_none_or(|f| f.matches(event)) {
                send_event(replies, event, format).await?;
            }
            if let Some(interval) = checkpoint_interval {
                scanned_since_checkpoint += 1;
                if scanned_since_checkpoint >= interval {
                    scanned_since_checkpoint = 0;
                    send(replies, checkpoint(after)).await?;
                }
            }
        }
        if page.len() < READ_PAGE_MAX_EVENTS {
            if !caught_up {
                caught_up = true;
                send(replies, Content::CaughtUp(read_resp::CaughtUp {})).await?;
            }
            // At the head, a filtered subscription says how far it has looked, so a
            // client that keeps checkpoints need not scan the skipped events again.
            if checkpoint_interval.is_some() && scanned_since_checkpoint > 0 {
                scanned_since_checkpoint = 0;
                send(replies, checkpoint(after)).await?;
            }
            wait_for_commits(store, head.max(after), replies, stopping).await?;
        }
    }
}

fn checkpoint(position: u64) -> Content {
    Content::Checkpoint(read_resp::Checkpoint {
        commit_position: position,
        prepare_position: position,
    })
}
