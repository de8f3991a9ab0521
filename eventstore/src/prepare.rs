//! Validation of appends and the decision every store makes for one append against
//! the stream's current version. Shared by the memory and PostgreSQL stores so both
//! refuse and accept exactly the same requests.

use std::collections::HashSet;

use serde_json::Value;
use uuid::Uuid;

use crate::hash::{canonical_metadata, fingerprint};
use crate::types::{
    AppendRequest, AppendResult, ExpectedVersion, Metadata, Precondition, StoreError,
    ACTOR_MAX_BYTES, APPEND_MAX_EVENTS, APPEND_MAX_GUARDS, APPEND_MAX_PRECONDITIONS,
    EVENT_DATA_MAX_BYTES, EVENT_METADATA_MAX_BYTES, EVENT_TYPE_MAX_BYTES, STREAM_ID_MAX_BYTES,
    VERSION_MAX,
};

/// An append that passed validation, with its JSON already in canonical form.
#[derive(Debug, Clone)]
pub(crate) struct PreparedAppend {
    pub stream_id: String,
    pub expected: ExpectedVersion,
    pub command_id: Option<Uuid>,
    /// What the append writes, to tell a repeat of `command_id` from another use of
    /// it; zeros without a command id.
    pub fingerprint: [u8; 32],
    pub events: Vec<PreparedEvent>,
    pub preconditions: Vec<Precondition>,
    pub guards: Vec<Uuid>,
}

#[derive(Debug, Clone)]
pub(crate) struct PreparedEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    /// The data as the writer gave it, when that was a JSON value (the memory store
    /// keeps it); otherwise only its canonical text.
    pub data: Option<Value>,
    pub metadata: Metadata,
    pub canonical_data: Vec<u8>,
    pub canonical_metadata: Vec<u8>,
}

/// The first result of an append that carried a command id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StoredCommand {
    pub fingerprint: [u8; 32],
    pub result: AppendResult,
}

/// What a store must do with one append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A repeat of an append already made: answer with its first result.
    Replay(AppendResult),
    /// Write the events, the first at this stream version.
    Write { first_version: u64 },
}

pub(crate) fn prepare(request: AppendRequest) -> Result<PreparedAppend, StoreError> {
    validate_stream_id(&request.stream_id)?;
    if request.events.is_empty() {
        return Err(StoreError::invalid(
            "events",
            "an append needs at least one event",
        ));
    }
    if request.events.len() > APPEND_MAX_EVENTS {
        return Err(StoreError::invalid(
            "events",
            format!(
                "at most {APPEND_MAX_EVENTS} events per append, got {}",
                request.events.len()
            ),
        ));
    }
    if let ExpectedVersion::Exact(n) = request.expected {
        let room = VERSION_MAX.saturating_sub(request.events.len() as u64);
        if n > room {
            return Err(StoreError::invalid(
                "expected_version",
                format!("{n} is beyond the largest stream version"),
            ));
        }
    }
    if request.preconditions.len() > APPEND_MAX_PRECONDITIONS {
        return Err(StoreError::invalid(
            "preconditions",
            format!(
                "at most {APPEND_MAX_PRECONDITIONS} per append, got {}",
                request.preconditions.len()
            ),
        ));
    }
    for precondition in &request.preconditions {
        validate_stream_id(&precondition.stream_id)?;
    }
    if request.guards.len() > APPEND_MAX_GUARDS {
        return Err(StoreError::invalid(
            "guards",
            format!(
                "at most {APPEND_MAX_GUARDS} per append, got {}",
                request.guards.len()
            ),
        ));
    }
    let mut seen = HashSet::with_capacity(request.events.len());
    let mut events = Vec::with_capacity(request.events.len());
    for event in request.events {
        if !seen.insert(event.event_id) {
            return Err(StoreError::DuplicateEventId {
                event_id: event.event_id,
            });
        }
        validate_event_type(&event.event_type)?;
        let (canonical_data, data) = event.data.into_canonical();
        if canonical_data.has_nul() {
            return Err(StoreError::invalid(
                "data",
                "strings must not contain NUL characters",
            ));
        }
        validate_metadata(&event.metadata)?;
        let canonical_data = canonical_data.into_bytes();
        if canonical_data.len() > EVENT_DATA_MAX_BYTES {
            return Err(StoreError::invalid(
                "data",
                format!(
                    "at most {EVENT_DATA_MAX_BYTES} bytes per event, got {}",
                    canonical_data.len()
                ),
            ));
        }
        let canonical_metadata = canonical_metadata(&event.metadata);
        if canonical_metadata.len() > EVENT_METADATA_MAX_BYTES {
            return Err(StoreError::invalid(
                "metadata",
                format!("at most {EVENT_METADATA_MAX_BYTES} bytes per event"),
            ));
        }
        events.push(PreparedEvent {
            event_id: event.event_id,
            event_type: event.event_type,
            schema_version: event.schema_version,
            data,
            metadata: event.metadata,
            canonical_data,
            canonical_metadata,
        });
    }
    // Compared only with the first result of the same command id: an append without
    // one (a round of several commands, or a flash sale's 500 reservations) skips
    // hashing all its data a second time.
    let fingerprint = if request.command_id.is_some() {
        fingerprint(
            &request.stream_id,
            events.iter().map(|e| {
                (
                    e.event_type.as_str(),
                    e.schema_version,
                    e.canonical_data.as_slice(),
                )
            }),
        )
    } else {
        [0; 32]
    };
    Ok(PreparedAppend {
        stream_id: request.stream_id,
        expected: request.expected,
        command_id: request.command_id,
        fingerprint,
        events,
        preconditions: request.preconditions,
        guards: request.guards,
    })
}

/// Decides one append against the stream's current version, the current versions
/// of the streams it read (`version_of`), the command id's first result, if any, and
/// which of its guard keys have a kept answer (`answered`). Guards are checked first
/// (the request was answered: nothing else matters), then a repeat of the command's
/// first events (with an exact expected version it would otherwise look like a
/// conflict), then the expected version, and only then a command id used before
/// with other events: an append decided on a state the stream has moved past is a
/// conflict whatever its command id, so the writer loads the stream and decides
/// again, and finds there what the first use of the id did.
pub(crate) fn decide(
    append: &PreparedAppend,
    current_version: u64,
    version_of: impl Fn(&str) -> u64,
    previous: Option<&StoredCommand>,
    answered: impl Fn(&Uuid) -> bool,
) -> Result<Decision, StoreError> {
    let keys: Vec<Uuid> = append
        .guards
        .iter()
        .filter(|key| answered(key))
        .copied()
        .collect();
    if !keys.is_empty() {
        return Err(StoreError::AlreadyAnswered { keys });
    }
    let reused = match (append.command_id, previous) {
        (Some(_), Some(previous)) if previous.fingerprint == append.fingerprint => {
            return Ok(Decision::Replay(previous.result));
        }
        (Some(command_id), Some(_)) => Some(command_id),
        _ => None,
    };
    if !append.expected.admits(current_version) {
        return Err(StoreError::WrongExpectedVersion {
            stream_id: append.stream_id.clone(),
            expected: append.expected,
            actual: current_version,
        });
    }
    if let Some(command_id) = reused {
        return Err(StoreError::CommandIdReused { command_id });
    }
    for precondition in &append.preconditions {
        let actual = version_of(&precondition.stream_id);
        if actual != precondition.version {
            return Err(StoreError::StreamMoved {
                stream_id: precondition.stream_id.clone(),
                read: precondition.version,
                actual,
            });
        }
    }
    if current_version > VERSION_MAX - append.events.len() as u64 {
        return Err(StoreError::invalid(
            "events",
            "the stream would pass its largest version",
        ));
    }
    Ok(Decision::Write {
        first_version: current_version + 1,
    })
}

pub(crate) fn validate_stream_id(stream_id: &str) -> Result<(), StoreError> {
    if stream_id.is_empty() {
        return Err(StoreError::invalid("stream_id", "must not be empty"));
    }
    if stream_id.len() > STREAM_ID_MAX_BYTES {
        return Err(StoreError::invalid(
            "stream_id",
            format!(
                "at most {STREAM_ID_MAX_BYTES} bytes, got {}",
                stream_id.len()
            ),
        ));
    }
    if stream_id
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(StoreError::invalid(
            "stream_id",
            "must not contain white space or control characters",
        ));
    }
    Ok(())
}

fn validate_event_type(event_type: &str) -> Result<(), StoreError> {
    if event_type.is_empty() || event_type.len() > EVENT_TYPE_MAX_BYTES {
        return Err(StoreError::invalid(
            "event_type",
            format!("must be 1 to {EVENT_TYPE_MAX_BYTES} bytes"),
        ));
    }
    if event_type
        .chars()
        .any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(StoreError::invalid(
            "event_type",
            "must not contain white space or control characters",
        ));
    }
    Ok(())
}

fn validate_metadata(metadata: &Metadata) -> Result<(), StoreError> {
    if !(metadata.custom.is_null() || metadata.custom.is_object()) {
        return Err(StoreError::invalid(
            "metadata",
            "custom metadata must be a JSON object",
        ));
    }
    if !json_strings_are_storable(&metadata.custom) {
        return Err(StoreError::invalid(
            "metadata",
            "strings must not contain NUL characters",
        ));
    }
    if let Some(actor) = &metadata.actor {
        if actor.len() > ACTOR_MAX_BYTES || actor.contains('\0') {
            return Err(StoreError::invalid(
                "metadata.actor",
                format!("at most {ACTOR_MAX_BYTES} bytes, no NUL characters"),
            ));
        }
    }
    Ok(())
}

/// PostgreSQL cannot turn U+0000 in a string or key into `text` or `jsonb`, so an event
/// holding one would break `->>` and any cast of the log; it is refused up front (a
/// `jsonb` column, as the log had before, would fail a whole group commit on it).
pub(crate) fn json_strings_are_storable(value: &Value) -> bool {
    match value {
        Value::String(s) => !s.contains('\0'),
        Value::Array(items) => items.iter().all(json_strings_are_storable),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| !k.contains('\0') && json_strings_are_storable(v)),
        Value::Null | Value::Bool(_) | Value::Number(_) => true,
    }
}
