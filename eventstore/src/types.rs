//! The store's vocabulary: what an append asks for, what a stored event looks like,
//! and the errors a caller can act on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::canonical_json::CanonicalJson;

/// Longest stream id accepted, in bytes.
pub const STREAM_ID_MAX_BYTES: usize = 200;
/// Longest event type accepted, in bytes.
pub const EVENT_TYPE_MAX_BYTES: usize = 128;
/// Most events one append may carry.
pub const APPEND_MAX_EVENTS: usize = 10_000;
/// Most preconditions (streams read) one append may carry.
pub const APPEND_MAX_PRECONDITIONS: usize = 64;
/// Most guard keys one append carries ([`AppendRequest::guards`]).
pub const APPEND_MAX_GUARDS: usize = APPEND_MAX_EVENTS;
/// Largest serialized `data` of one event, in bytes.
pub const EVENT_DATA_MAX_BYTES: usize = 1 << 20;
/// Largest serialized metadata of one event, in bytes.
pub const EVENT_METADATA_MAX_BYTES: usize = 16 << 10;
/// Largest stream version or position: PostgreSQL's `bigint`.
pub const VERSION_MAX: u64 = i64::MAX as u64;
/// Longest actor string in metadata, in bytes.
pub const ACTOR_MAX_BYTES: usize = 256;

/// What the writer believes the stream's version to be. A stream's version is the
/// number of events in it: 0 for a stream that does not exist, `n` after its n-th
/// event. Version `v` of a stream is its v-th event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExpectedVersion {
    /// Append whatever the stream holds.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must hold at least one event.
    StreamExists,
    /// The stream's version must be exactly this (0 means: no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` satisfies this expectation.
    pub fn admits(self, current: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => current == 0,
            ExpectedVersion::StreamExists => current > 0,
            ExpectedVersion::Exact(n) => current == n,
        }
    }

    /// Parses a signed version as it comes from outside (JSON, query strings):
    /// negative and larger-than-bigint values are refused.
    pub fn exact_from_i128(n: i128) -> Result<Self, StoreError> {
        if n < 0 || n > VERSION_MAX as i128 {
            return Err(StoreError::invalid(
                "expected_version",
                format!("must be between 0 and {VERSION_MAX}, got {n}"),
            ));
        }
        Ok(ExpectedVersion::Exact(n as u64))
    }
}

/// Who caused an event and why. Stored as a JSON object beside the event.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The principal that issued the command, e.g. `customer:42` or `system:checkout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Anything else a writer wants to keep with the event; a JSON object or null.
    #[serde(default, skip_serializing_if = "Value::is_null")]
    pub custom: Value,
}

/// An event a writer proposes.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: EventData,
    pub metadata: Metadata,
}

impl NewEvent {
    /// An event with a fresh time-ordered (v7) id: ids that grow with time keep the
    /// unique index on event ids append-mostly, which is far cheaper than random ids.
    pub fn new(event_type: impl Into<String>, data: impl Into<EventData>) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            data: data.into(),
            metadata: Metadata::default(),
        }
    }
}

/// A proposed event's data: a JSON value, or JSON text already in the log's
/// canonical form, which the command layer writes straight from its typed events
/// (see [`CanonicalJson`]). The store keeps the canonical text either way; two data
/// are equal when their canonical texts are.
#[derive(Debug, Clone)]
pub enum EventData {
    Value(Value),
    Canonical(CanonicalJson),
}

impl EventData {
    /// The data as a JSON value (canonical text is parsed).
    pub fn to_value(&self) -> Value {
        match self {
            EventData::Value(value) => value.clone(),
            EventData::Canonical(text) => text.to_value(),
        }
    }

    /// The data as a JSON value to change in place; canonical text is parsed once
    /// and the data holds the value from then on.
    pub fn value_mut(&mut self) -> &mut Value {
        if let EventData::Canonical(text) = self {
            *self = EventData::Value(text.to_value());
        }
        match self {
            EventData::Value(value) => value,
            EventData::Canonical(_) => unreachable!("replaced by its value above"),
        }
    }

    /// The canonical text, and the value it came from when the data was one.
    pub(crate) fn into_canonical(self) -> (CanonicalJson, Option<Value>) {
        match self {
            EventData::Value(value) => (CanonicalJson::from_value(&value), Some(value)),
            EventData::Canonical(text) => (text, None),
        }
    }

    fn canonical_bytes(&self) -> std::borrow::Cow<'_, [u8]> {
        match self {
            EventData::Value(value) => std::borrow::Cow::Owned(crate::hash::canonical_json(value)),
            EventData::Canonical(text) => std::borrow::Cow::Borrowed(text.as_bytes()),
        }
    }
}

impl PartialEq for EventData {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (EventData::Value(a), EventData::Value(b)) => a == b,
            _ => self.canonical_bytes() == other.canonical_bytes(),
        }
    }
}

impl From<Value> for EventData {
    fn from(value: Value) -> Self {
        EventData::Value(value)
    }
}

impl From<CanonicalJson> for EventData {
    fn from(text: CanonicalJson) -> Self {
        EventData::Canonical(text)
    }
}

/// One append: events for one stream, checked against an expected version, and
/// optionally made idempotent by a command id.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendRequest {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub events: Vec<NewEvent>,
    /// Repeating an append with the same command id returns the first result and
    /// writes nothing; the same id with other events is refused.
    pub command_id: Option<Uuid>,
    /// Other streams the append's decision read: it is written only if each is still
    /// at the version read ([`StoreError::StreamMoved`] otherwise), checked in the
    /// same commit as the expected version. A writer that read a product's price
    /// from memory appends with the product at that version instead of asking the
    /// database whether its copy is current. At most [`APPEND_MAX_PRECONDITIONS`].
    pub preconditions: Vec<Precondition>,
    /// Keys of requests the writer answers with this append (an API's idempotency
    /// keys). If the store's record of kept answers holds any of them, the request was
    /// answered before: the append is refused with [`StoreError::AlreadyAnswered`]
    /// and nothing is written, checked in the same commit as the expected version. So
    /// a writer need not look a new key up before it writes, only when its append is
    /// refused. A store without such a record (`PostgresConfig::kept_answers`,
    /// [`crate::MemoryStore::with_kept_answers`]) finds none. At most
    /// [`APPEND_MAX_GUARDS`].
    pub guards: Vec<Uuid>,
}

/// A stream an append depends on, at the version its writer read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Precondition {
    pub stream_id: String,
    pub version: u64,
}

/// What an append wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// Global position of the first event written.
    pub first_position: u64,
    /// Global position of the last event written.
    pub last_position: u64,
    /// The stream's version after the append.
    pub stream_version: u64,
}

/// An event as stored: the envelope every reader sees.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    pub position: u64,
    pub stream_id: String,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub data: Value,
    pub metadata: Metadata,
    pub recorded_at: DateTime<Utc>,
    /// SHA-256 over the previous event's hash and this event (see [`crate::hash`]).
    #[serde(with = "hex_bytes")]
    pub hash: [u8; 32],
}

impl RecordedEvent {
    /// The stream category: the stream id up to its first `-`.
    pub fn category(&self) -> &str {
        category_of(&self.stream_id)
    }
}

/// Which events of the log a reader wants: those of the streams of `categories`, and
/// those of `event_types` in any stream.
#[derive(Debug, Clone, Copy)]
pub struct LogFilter<'a> {
    pub categories: &'a [&'a str],
    pub event_types: &'a [&'a str],
}

impl LogFilter<'_> {
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.categories.contains(&event.category())
            || self.event_types.contains(&event.event_type.as_str())
    }
}

/// The prefix of a stream id before its first `-` (the whole id if it has none).
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split('-').next().unwrap_or(stream_id)
}

/// Which way a stream is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Forward,
    Backward,
}

/// Errors of the event store. Every variant is something a caller can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream_id} is at version {actual}, expected {expected:?}")]
    WrongExpectedVersion {
        stream_id: String,
        expected: ExpectedVersion,
        actual: u64,
    },
    /// A stream named in the append's preconditions has moved: what the writer read
    /// is stale, and nothing was written.
    #[error("stream {stream_id} is at version {actual}, the append read it at {read}")]
    StreamMoved {
        stream_id: String,
        read: u64,
        actual: u64,
    },
    /// Keys among the append's guards that have a kept answer. Nothing was written.
    #[error("{} of the append's keys already has an answer", keys.len())]
    AlreadyAnswered { keys: Vec<Uuid> },
    #[error("command {command_id} was already appended with other events")]
    CommandIdReused { command_id: Uuid },
    #[error("event id {event_id} is already in the log")]
    DuplicateEventId { event_id: Uuid },
    #[error("invalid {field}: {reason}")]
    InvalidRequest { field: &'static str, reason: String },
    /// The database could not be reached, or an append's outcome is unknown (the
    /// connection broke during commit). Retrying with the same command id is safe.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    #[error("event store is overloaded: {0}")]
    Overloaded(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::InvalidRequest {
            field,
            reason: reason.into(),
        }
    }

    /// True for errors worth retrying as they are (the log may be reachable again).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_) | StoreError::Overloaded(_))
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let text = String::deserialize(d)?;
        let mut out = [0u8; 32];
        hex::decode_to_slice(text, &mut out).map_err(serde::de::Error::custom)?;
        Ok(out)
    }
}
