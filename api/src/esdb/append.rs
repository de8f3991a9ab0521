//! Appends, deletes and tombstones: the protocol's expected revisions mapped onto the
//! log's expected versions, with the rules on who writes what.
//!
//! Revisions are 0-based (a stream's first event is revision 0), the log's versions
//! 1-based: revision `r` is version `r + 1`. Every append carries a command id derived
//! from the stream and its event ids, so a client that repeats an append (same event
//! ids) gets the first result and nothing is written twice, as EventStoreDB's
//! idempotent writes promise.

use std::sync::Arc;

use eventstore::{
    AppendRequest, AppendResult, Direction, EventStore, ExpectedVersion, NewEvent, StoreError,
};
use serde_json::{json, Value};
use tonic::Status;
use uuid::Uuid;

use super::auth::{Principal, Role};
use super::codec::{self, Proposed};
use super::errors;
use super::state::{self, StreamHead, StreamMetadata};
use super::streams_rules::{
    is_metadata_stream, metadata_stream_of, METADATA_EVENT_TYPE, TOMBSTONE_EVENT_TYPE,
};

/// How often a write that read the stream first (a delete, a tombstone, an append to a
/// soft-deleted stream) is tried again when another writer moved the stream between
/// the read and the write.
pub const APPEND_CONFLICT_RETRIES: usize = 5;
/// Largest total of data and custom metadata in one append, in bytes.
pub const APPEND_MAX_BYTES: usize = 16 << 20;

/// Names the command ids of appends made through this endpoint (UUID v5).
const COMMAND_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_3c2e_9b4d_4e8a_a0c7_5d2e_1f3b_8c90);

/// The protocol's expected revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    Any,
    NoStream,
    StreamExists,
    /// The revision (0-based) of the stream's last event.
    Revision(u64),
}

impl Expected {
    /// As EventStoreDB writes it in its wrong-expected-version messages.
    pub fn describe(self) -> String {
        match self {
            Expected::Any => "Any".into(),
            Expected::NoStream => "NoStream".into(),
            Expected::StreamExists => "StreamExists".into(),
            Expected::Revision(r) => r.to_string(),
        }
    }
}

/// A stream's current revision as the protocol tells it: `None` when it has no stream.
pub type CurrentRevision = Option<u64>;

fn current_revision(version: u64) -> CurrentRevision {
    version.checked_sub(1)
}

pub fn describe_current(current: CurrentRevision) -> String {
    current.map_or_else(|| "NoStream".to_owned(), |r| r.to_string())
}

/// What an append achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    Success {
        current_revision: u64,
        position: u64,
    },
    WrongExpectedVersion {
        current: CurrentRevision,
        expected: Expected,
    },
}

/// Checks a stream name as the protocol sends it.
pub fn stream_name(bytes: Option<&[u8]>) -> Result<String, Status> {
    let bytes = bytes.ok_or_else(|| errors::invalid_argument("no stream identifier"))?;
    let name = std::str::from_utf8(bytes)
        .map_err(|_| errors::invalid_argument("a stream name must be UTF-8"))?;
    if name.is_empty() {
        return Err(errors::invalid_argument("the stream name is empty"));
    }
    if name == "$all" {
        return Err(errors::invalid_argument("$all is read, not written"));
    }
    Ok(name.to_owned())
}

/// Who may write `stream` at all: commerce streams nobody, `$` system streams (other
/// than metadata streams) admins only, the rest as the role allows.
fn authorize_write(principal: &Principal, stream: &str) -> Result<(), Status> {
    if stream.starts_with('$') && !is_metadata_stream(stream) && principal.role != Role::Admin {
        return Err(errors::access_denied(format!(
            "{stream} is a system stream"
        )));
    }
    principal.may_write(stream)
}

/// Checks the events of an append against the protocol's reserved types and the sizes.
fn check_events(stream: &str, events: &[Proposed]) -> Result<(), Status> {
    if events.len() > eventstore::APPEND_MAX_EVENTS {
        return Err(errors::invalid_argument(format!(
            "at most {} events per append",
            eventstore::APPEND_MAX_EVENTS
        )));
    }
    let mut total = 0usize;
    for event in events {
        if event.oversized() {
            return Err(errors::maximum_append_size_exceeded(
                codec::EVENT_DATA_MAX_BYTES,
            ));
        }
        total += event.size_bytes();
        if event.event_type == TOMBSTONE_EVENT_TYPE {
            return Err(errors::invalid_argument(format!(
                "{TOMBSTONE_EVENT_TYPE} is written by Tombstone, not appended"
            )));
        }
        if is_metadata_stream(stream) {
            if event.event_type != METADATA_EVENT_TYPE {
                return Err(errors::invalid_argument(format!(
                    "a metadata stream holds {METADATA_EVENT_TYPE} events only"
                )));
            }
            StreamMetadata::parse(&event.data).map_err(errors::invalid_argument)?;
        } else if event.event_type == METADATA_EVENT_TYPE {
            return Err(errors::invalid_argument(format!(
                "{METADATA_EVENT_TYPE} events go to the metadata stream $${stream}"
            )));
        }
    }
    if total > APPEND_MAX_BYTES {
        return Err(errors::maximum_append_size_exceeded(APPEND_MAX_BYTES));
    }
    Ok(())
}

/// The command id of an append: the same stream and event ids give the same id.
fn command_id(stream: &str, events: &[NewEvent]) -> Uuid {
    let mut name = Vec::with_capacity(stream.len() + 1 + events.len() * 16);
    name.extend_from_slice(stream.as_bytes());
    name.push(0);
    for event in events {
        name.extend_from_slice(event.event_id.as_bytes());
    }
    Uuid::new_v5(&COMMAND_ID_NAMESPACE, &name)
}

/// The stream's metadata, unless it is itself a metadata stream.
async fn metadata_of(store: &Arc<dyn EventStore>, stream: &str) -> Result<StreamMetadata, Status> {
    if is_metadata_stream(stream) {
        return Ok(StreamMetadata::default());
    }
    state::stream_metadata(store, stream)
        .await
        .map_err(errors::from_store)
}

/// Appends `events` to `stream` as `principal`, if the stream's revision is `expected`.
pub async fn append(
    store: &Arc<dyn EventStore>,
    principal: &Principal,
    stream: &str,
    expected: Expected,
    events: Vec<Proposed>,
) -> Result<AppendOutcome, Status> {
    authorize_write(principal, stream)?;
    check_events(stream, &events)?;
    let actor = principal.actor();
    let events: Vec<NewEvent> = events
        .into_iter()
        .map(|e| e.into_new_event(&actor))
        .collect();
    let command_id = command_id(stream, &events);
    let request = |expected: ExpectedVersion, events: Vec<NewEvent>| AppendRequest {
        stream_id: stream.to_owned(),
        expected,
        events,
        command_id: Some(command_id),
        preconditions: Vec::new(),
        guards: Vec::new(),
    };
    let success = |result: AppendResult| AppendOutcome::Success {
        current_revision: codec::revision_of(result.stream_version),
        position: result.last_position,
    };

    match expected {
        // No read first: an exact revision is the fast path (and a repeat of an append
        // is answered by its command id). A tombstone moves the version, so it shows
        // as a conflict.
        Expected::Revision(r) => {
            // Tried once: the events move into the request rather than being copied.
            let once = request(ExpectedVersion::Exact(r.saturating_add(1)), events);
            match store.append(once).await {
                Ok(result) => Ok(success(result)),
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    let head = head_of(store, stream).await?;
                    Ok(AppendOutcome::WrongExpectedVersion {
                        current: current_revision(head.version.max(actual)),
                        expected,
                    })
                }
                Err(e) => Err(errors::from_store(e)),
            }
        }
        Expected::NoStream => {
            let mut attempt = ExpectedVersion::NoStream;
            for _ in 0..APPEND_CONFLICT_RETRIES {
                match store.append(request(attempt, events.clone())).await {
                    Ok(result) => return Ok(success(result)),
                    Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                        let head = head_of(store, stream).await?;
                        // A soft-deleted stream counts as no stream: it goes on from
                        // where it was.
                        if metadata_of(store, stream).await?.soft_deleted(head.version) {
                            attempt = ExpectedVersion::Exact(head.version);
                            continue;
                        }
                        return Ok(AppendOutcome::WrongExpectedVersion {
                            current: current_revision(head.version.max(actual)),
                            expected,
                        });
                    }
                    Err(e) => return Err(errors::from_store(e)),
                }
            }
            Err(Status::aborted("the stream kept moving; try again"))
        }
        Expected::Any | Expected::StreamExists => {
            let head = head_of(store, stream).await?;
            let attempt = if expected == Expected::StreamExists {
                let deleted = head.version > 0
                    && metadata_of(store, stream).await?.soft_deleted(head.version);
                if head.version == 0 || deleted {
                    return Ok(AppendOutcome::WrongExpectedVersion {
                        current: None,
                        expected,
                    });
                }
                ExpectedVersion::StreamExists
            } else {
                ExpectedVersion::Any
            };
            match store.append(request(attempt, events.clone())).await {
                Ok(result) => {
                    let first = result.stream_version + 1 - events.len() as u64;
                    refuse_if_tombstoned_meanwhile(store, principal, stream, head.version, first)
                        .await?;
                    Ok(success(result))
                }
                Err(StoreError::WrongExpectedVersion { actual, .. }) => {
                    Ok(AppendOutcome::WrongExpectedVersion {
                        current: current_revision(actual),
                        expected,
                    })
                }
                Err(e) => Err(errors::from_store(e)),
            }
        }
    }
}

/// Most events between a read of a stream's head and an append that a check for a
/// tombstone committed in between reads.
const TOMBSTONE_CHECK_MAX_EVENTS: usize = 10_000;

/// An append that expected "any" or "stream exists" was checked against the stream's
/// head, then appended without a version: a tombstone may have committed in between.
/// If one did, the stream is closed again by another tombstone after the events (the
/// log is append-only, so they stay in `$all`) and the append is refused.
async fn refuse_if_tombstoned_meanwhile(
    store: &Arc<dyn EventStore>,
    principal: &Principal,
    stream: &str,
    seen_version: u64,
    first_written: u64,
) -> Result<(), Status> {
    if first_written <= seen_version + 1 {
        // Nothing came between (or this is a repeat answered by its command id).
        return Ok(());
    }
    let between = (first_written - seen_version - 1) as usize;
    let events = store
        .read_stream(
            stream,
            seen_version + 1,
            Direction::Forward,
            between.min(TOMBSTONE_CHECK_MAX_EVENTS),
        )
        .await
        .map_err(errors::from_store)?;
    if !events.iter().any(state::is_tombstone) {
        return Ok(());
    }
    let close_again = AppendRequest {
        stream_id: stream.to_owned(),
        expected: ExpectedVersion::Any,
        events: vec![tombstone_event(principal)],
        command_id: None,
        preconditions: Vec::new(),
        guards: Vec::new(),
    };
    store
        .append(close_again)
        .await
        .map_err(errors::from_store)?;
    Err(errors::stream_deleted(stream))
}

fn tombstone_event(principal: &Principal) -> NewEvent {
    Proposed {
        id: Uuid::now_v7(),
        event_type: TOMBSTONE_EVENT_TYPE.into(),
        content_type: codec::CONTENT_TYPE_JSON.into(),
        data: bytes::Bytes::from_static(b"{}"),
        custom_metadata: Default::default(),
    }
    .into_new_event(&principal.actor())
}

/// The stream's head; a tombstoned stream is the protocol's stream-deleted error.
async fn head_of(store: &Arc<dyn EventStore>, stream: &str) -> Result<StreamHead, Status> {
    let head = state::stream_head(store, stream)
        .await
        .map_err(errors::from_store)?;
    if head.tombstoned {
        return Err(errors::stream_deleted(stream));
    }
    Ok(head)
}

/// Whether a stream at `head` (soft-deleted or not) satisfies `expected` for a delete.
fn admits(expected: Expected, version: u64, soft_deleted: bool) -> bool {
    let exists = version > 0 && !soft_deleted;
    match expected {
        Expected::Any => true,
        Expected::NoStream => !exists,
        Expected::StreamExists => exists,
        Expected::Revision(r) => exists && version == r.saturating_add(1),
    }
}

/// Soft delete: the stream's metadata gets `$tb` past its last revision, so reads find
/// no stream; appends later go on from the old revision. Returns the position of the
/// metadata event (none when there was nothing to delete).
pub async fn delete(
    store: &Arc<dyn EventStore>,
    principal: &Principal,
    stream: &str,
    expected: Expected,
) -> Result<Option<u64>, Status> {
    if is_metadata_stream(stream) {
        return Err(errors::invalid_argument(
            "a metadata stream cannot be deleted",
        ));
    }
    authorize_write(principal, stream)?;
    for _ in 0..APPEND_CONFLICT_RETRIES {
        let head = head_of(store, stream).await?;
        let metadata = metadata_of(store, stream).await?;
        let soft_deleted = metadata.soft_deleted(head.version);
        if !admits(expected, head.version, soft_deleted) {
            let current = if soft_deleted {
                None
            } else {
                current_revision(head.version)
            };
            return Err(errors::wrong_expected_version(
                stream,
                expected.describe(),
                describe_current(current),
            ));
        }
        if head.version == 0 || soft_deleted {
            return Ok(None);
        }
        let mut raw = metadata.raw.clone();
        raw.insert("$tb".into(), json!(head.version));
        let event = metadata_event(principal, Value::Object(raw));
        let request = AppendRequest {
            stream_id: metadata_stream_of(stream),
            expected: ExpectedVersion::Exact(metadata.metadata_version),
            events: vec![event],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        };
        match store.append(request).await {
            Ok(result) => return Ok(Some(result.last_position)),
            Err(StoreError::WrongExpectedVersion { .. }) => continue,
            Err(e) => return Err(errors::from_store(e)),
        }
    }
    Err(Status::aborted(
        "the stream's metadata kept changing; try again",
    ))
}

fn metadata_event(principal: &Principal, metadata: Value) -> NewEvent {
    let data = serde_json::to_vec(&metadata).unwrap_or_default();
    Proposed {
        id: Uuid::now_v7(),
        event_type: METADATA_EVENT_TYPE.into(),
        content_type: codec::CONTENT_TYPE_JSON.into(),
        data: data.into(),
        custom_metadata: Default::default(),
    }
    .into_new_event(&principal.actor())
}

/// Tombstone: a `$streamDeleted` event closes the stream for good. Returns its position.
pub async fn tombstone(
    store: &Arc<dyn EventStore>,
    principal: &Principal,
    stream: &str,
    expected: Expected,
) -> Result<u64, Status> {
    if is_metadata_stream(stream) {
        return Err(errors::invalid_argument(
            "a metadata stream cannot be tombstoned",
        ));
    }
    authorize_write(principal, stream)?;
    for _ in 0..APPEND_CONFLICT_RETRIES {
        let head = head_of(store, stream).await?;
        let soft_deleted =
            head.version > 0 && metadata_of(store, stream).await?.soft_deleted(head.version);
        if !admits(expected, head.version, soft_deleted) {
            let current = if soft_deleted {
                None
            } else {
                current_revision(head.version)
            };
            return Err(errors::wrong_expected_version(
                stream,
                expected.describe(),
                describe_current(current),
            ));
        }
        let event = tombstone_event(principal);
        let request = AppendRequest {
            stream_id: stream.to_owned(),
            expected: if head.version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(head.version)
            },
            events: vec![event],
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        };
        match store.append(request).await {
            Ok(result) => return Ok(result.last_position),
            Err(StoreError::WrongExpectedVersion { .. }) => continue,
            Err(e) => return Err(errors::from_store(e)),
        }
    }
    Err(Status::aborted("the stream kept moving; try again"))
}
