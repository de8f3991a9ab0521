//! Events between the protocol's shape and the log's.
//!
//! The log holds JSON. An event appended through the endpoint keeps its bytes exactly:
//! - JSON that is already canonical (compact, keys sorted bytewise: what the log gives
//!   back) is stored as JSON, so projections and audits read it like any other event;
//! - other JSON (other key order, white space) is stored as a JSON string holding the
//!   text;
//! - anything else (binary content) is stored as a base64 string.
//!
//! How it was stored, the content type and the custom metadata (the same three ways)
//! go in the event's custom metadata under `$esdb`. Events the engine wrote itself have
//! no `$esdb`: their data is served as canonical JSON and their envelope metadata
//! (command, correlation, causation, actor) as the custom metadata.

use std::collections::HashMap;

use base64::Engine;
use bytes::Bytes;
use eventstore::{Metadata, NewEvent, RecordedEvent, StoreError};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::proto::event_store::client::uuid as proto_uuid;
use super::proto::streams::read_resp::read_event;
use super::proto::{ProtoUuid, StreamIdentifier};

/// The key of the event metadata's custom object that this endpoint owns.
pub const ESDB_KEY: &str = "$esdb";
pub const CONTENT_TYPE_JSON: &str = "application/json";
pub const CONTENT_TYPE_BINARY: &str = "application/octet-stream";
/// Largest `data` of one event, in bytes: base64 of it stays under the log's 1 MiB.
pub const EVENT_DATA_MAX_BYTES: usize = 768 << 10;
/// Largest custom metadata of one event, in bytes: its base64 stays under the log's
/// 16 KiB of metadata.
pub const EVENT_CUSTOM_METADATA_MAX_BYTES: usize = 8 << 10;
/// Longest content type accepted, in bytes.
pub const CONTENT_TYPE_MAX_BYTES: usize = 128;

/// .NET ticks (100 ns) per second: the protocol's unit of `created`.
const TICKS_PER_SECOND: i64 = 10_000_000;

/// How a field's bytes are kept in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Json,
    Text,
    Base64,
}

impl Encoding {
    fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Text => "text",
            Encoding::Base64 => "base64",
        }
    }

    fn parse(name: &str) -> Result<Self, StoreError> {
        match name {
            "json" => Ok(Encoding::Json),
            "text" => Ok(Encoding::Text),
            "base64" => Ok(Encoding::Base64),
            other => Err(StoreError::Corrupt(format!(
                "unknown $esdb encoding {other:?}"
            ))),
        }
    }
}

/// Keeps `bytes` as JSON when it is canonical JSON, else as text or base64.
fn encode(bytes: &[u8], json_allowed: bool) -> (Encoding, Value) {
    if json_allowed {
        if let Ok(value) = serde_json::from_slice::<Value>(bytes) {
            if serde_json::to_vec(&value).is_ok_and(|canonical| canonical == bytes) {
                return (Encoding::Json, value);
            }
        }
    }
    match std::str::from_utf8(bytes) {
        // The store refuses NUL in JSON strings; such text goes as base64.
        Ok(text) if json_allowed && !text.contains('\0') => {
            (Encoding::Text, Value::String(text.to_owned()))
        }
        _ => (
            Encoding::Base64,
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

fn decode(encoding: Encoding, value: &Value) -> Result<Vec<u8>, StoreError> {
    match (encoding, value) {
        (Encoding::Json, value) => serde_json::to_vec(value)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise JSON: {e}"))),
        (Encoding::Text, Value::String(text)) => Ok(text.clone().into_bytes()),
        (Encoding::Base64, Value::String(text)) => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| StoreError::Corrupt(format!("bad base64 in an esdb event: {e}"))),
        (encoding, _) => Err(StoreError::Corrupt(format!(
            "an esdb event's {} field is not a string",
            encoding.name()
        ))),
    }
}

/// An event as a client proposed it, checked.
#[derive(Debug, Clone)]
pub struct Proposed {
    pub id: Uuid,
    pub event_type: String,
    pub content_type: String,
    pub data: Bytes,
    pub custom_metadata: Bytes,
}

impl Proposed {
    /// Checks what the protocol leaves open: an id, a type, sizes.
    pub fn parse(
        id: Option<ProtoUuid>,
        metadata: &HashMap<String, String>,
        data: Bytes,
        custom_metadata: Bytes,
    ) -> Result<Self, String> {
        let id = id
            .ok_or("an event without an id")
            .and_then(|id| uuid_from_proto(&id).ok_or("an event id that is not a UUID"))?;
        let event_type = metadata
            .get("type")
            .filter(|t| !t.is_empty())
            .ok_or_else(|| format!("event {id} has no type"))?
            .clone();
        let content_type = metadata
            .get("content-type")
            .cloned()
            .unwrap_or_else(|| CONTENT_TYPE_BINARY.to_owned());
        if content_type.is_empty() || content_type.len() > CONTENT_TYPE_MAX_BYTES {
            return Err(format!(
                "event {id}: a content type is 1 to {CONTENT_TYPE_MAX_BYTES} bytes"
            ));
        }
        if content_type == CONTENT_TYPE_JSON && serde_json::from_slice::<Value>(&data).is_err() {
            return Err(format!(
                "event {id} says application/json but its data is not JSON"
            ));
        }
        Ok(Proposed {
            id,
            event_type,
            content_type,
            data,
            custom_metadata,
        })
    }

    /// Whether the event is over the endpoint's size limits.
    pub fn oversized(&self) -> bool {
        self.data.len() > EVENT_DATA_MAX_BYTES
            || self.custom_metadata.len() > EVENT_CUSTOM_METADATA_MAX_BYTES
    }

    pub fn size_bytes(&self) -> usize {
        self.data.len() + self.custom_metadata.len()
    }

    /// The event for the log, recorded as appended by `actor`.
    pub fn into_new_event(self, actor: &str) -> NewEvent {
        let is_json = self.content_type == CONTENT_TYPE_JSON;
        let (data_encoding, data) = encode(&self.data, is_json);
        let mut esdb = Map::new();
        esdb.insert("content_type".into(), Value::String(self.content_type));
        esdb.insert("data".into(), Value::String(data_encoding.name().into()));
        if !self.custom_metadata.is_empty() {
            let (encoding, value) = encode(&self.custom_metadata, true);
            esdb.insert(
                "custom_metadata".into(),
                json!({"encoding": encoding.name(), "value": value}),
            );
        }
        NewEvent {
            event_id: self.id,
            event_type: self.event_type,
            schema_version: 1,
            data: data.into(),
            metadata: Metadata {
                actor: Some(actor.to_owned()),
                custom: Value::Object(Map::from_iter([(ESDB_KEY.to_owned(), Value::Object(esdb))])),
                ..Metadata::default()
            },
        }
    }
}

/// A stored event's bytes as the protocol shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    pub content_type: String,
    pub data: Vec<u8>,
    pub custom_metadata: Vec<u8>,
}

/// The content type, data and custom metadata of a stored event.
pub fn served(event: &RecordedEvent) -> Result<Served, StoreError> {
    let Some(esdb) = event.metadata.custom.get(ESDB_KEY) else {
        // Written by the engine: JSON data; the envelope's metadata as custom metadata.
        let data = serde_json::to_vec(&event.data)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise JSON: {e}")))?;
        let custom_metadata = serde_json::to_vec(&event.metadata)
            .map_err(|e| StoreError::Corrupt(format!("cannot serialise metadata: {e}")))?;
        return Ok(Served {
            content_type: CONTENT_TYPE_JSON.to_owned(),
            data,
            custom_metadata,
        });
    };
    let field = |name: &str| {
        esdb.get(name)
            .and_then(Value::as_str)
            .ok_or_else(|| StoreError::Corrupt(format!("$esdb.{name} is missing")))
    };
    let content_type = field("content_type")?.to_owned();
    let data = decode(Encoding::parse(field("data")?)?, &event.data)?;
    let custom_metadata = match esdb.get("custom_metadata") {
        None | Some(Value::Null) => Vec::new(),
        Some(custom) => {
            let encoding = custom
                .get("encoding")
                .and_then(Value::as_str)
                .ok_or_else(|| StoreError::Corrupt("$esdb.custom_metadata.encoding".into()))?;
            decode(
                Encoding::parse(encoding)?,
                custom.get("value").unwrap_or(&Value::Null),
            )?
        }
    };
    Ok(Served {
        content_type,
        data,
        custom_metadata,
    })
}

/// How the client asked for event ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UuidFormat {
    Structured,
    String,
}

pub fn uuid_to_proto(id: Uuid, format: UuidFormat) -> ProtoUuid {
    let value = match format {
        UuidFormat::String => proto_uuid::Value::String(id.to_string()),
        UuidFormat::Structured => {
            let n = id.as_u128();
            proto_uuid::Value::Structured(proto_uuid::Structured {
                most_significant_bits: (n >> 64) as u64 as i64,
                least_significant_bits: n as u64 as i64,
            })
        }
    };
    ProtoUuid { value: Some(value) }
}

pub fn uuid_from_proto(id: &ProtoUuid) -> Option<Uuid> {
    match id.value.as_ref()? {
        proto_uuid::Value::Structured(s) => {
            let n = (u128::from(s.most_significant_bits as u64) << 64)
                | u128::from(s.least_significant_bits as u64);
            Some(Uuid::from_u128(n))
        }
        proto_uuid::Value::String(s) => s.parse().ok(),
    }
}

/// A stream's 0-based revision for the log's 1-based version.
pub fn revision_of(version: u64) -> u64 {
    version.saturating_sub(1)
}

/// The protocol's `created`: .NET ticks since the Unix epoch, as text.
pub fn created_ticks(event: &RecordedEvent) -> String {
    let at = event.recorded_at;
    let ticks = at.timestamp() * TICKS_PER_SECOND + i64::from(at.timestamp_subsec_nanos() / 100);
    ticks.to_string()
}

pub fn stream_identifier(stream: &str) -> StreamIdentifier {
    StreamIdentifier {
        stream_name: Bytes::copy_from_slice(stream.as_bytes()),
    }
}

/// A stored event as the protocol's record.
pub fn recorded_to_proto(
    event: &RecordedEvent,
    format: UuidFormat,
) -> Result<read_event::RecordedEvent, StoreError> {
    let served = served(event)?;
    let metadata = HashMap::from([
        ("type".to_owned(), event.event_type.clone()),
        ("content-type".to_owned(), served.content_type),
        ("created".to_owned(), created_ticks(event)),
    ]);
    Ok(read_event::RecordedEvent {
        id: Some(uuid_to_proto(event.event_id, format)),
        stream_identifier: Some(stream_identifier(&event.stream_id)),
        stream_revision: revision_of(event.version),
        prepare_position: event.position,
        commit_position: event.position,
        metadata,
        custom_metadata: Bytes::from(served.custom_metadata),
        data: Bytes::from(served.data),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn stored(new: NewEvent) -> RecordedEvent {
        RecordedEvent {
            position: 7,
            stream_id: "acme-1".into(),
            version: 3,
            event_id: new.event_id,
            event_type: new.event_type,
            schema_version: 1,
            // Through the store and back: the value, not the text, survives.
            data: serde_json::from_str(&new.data.to_value().to_string()).unwrap(),
            metadata: new.metadata,
            recorded_at: Utc::now(),
            hash: [0; 32],
        }
    }

    fn round_trip(content_type: &str, data: &[u8], custom: &[u8]) -> Served {
        let metadata = HashMap::from([
            ("type".to_owned(), "Thing".to_owned()),
            ("content-type".to_owned(), content_type.to_owned()),
        ]);
        let proposed = Proposed::parse(
            Some(uuid_to_proto(Uuid::new_v4(), UuidFormat::Structured)),
            &metadata,
            Bytes::copy_from_slice(data),
            Bytes::copy_from_slice(custom),
        )
        .unwrap();
        served(&stored(proposed.into_new_event("esdb:test"))).unwrap()
    }

    #[test]
    fn canonical_json_is_stored_as_json_and_served_unchanged() {
        let event = Proposed::parse(
            Some(uuid_to_proto(Uuid::new_v4(), UuidFormat::String)),
            &HashMap::from([
                ("type".to_owned(), "Thing".to_owned()),
                ("content-type".to_owned(), CONTENT_TYPE_JSON.to_owned()),
            ]),
            Bytes::from_static(br#"{"a":1,"b":[true,null]}"#),
            Bytes::new(),
        )
        .unwrap()
        .into_new_event("esdb:test");
        assert_eq!(event.data, json!({"a": 1, "b": [true, null]}).into());
        let served = served(&stored(event)).unwrap();
        assert_eq!(served.data, br#"{"a":1,"b":[true,null]}"#);
        assert!(served.custom_metadata.is_empty());
    }

    #[test]
    fn other_json_text_and_binary_round_trip_byte_for_byte() {
        let served = round_trip(
            CONTENT_TYPE_JSON,
            b"{ \"b\": 1, \"a\": 2 }",
            b"{\"z\":1, \"a\":0}",
        );
        assert_eq!(served.data, b"{ \"b\": 1, \"a\": 2 }");
        assert_eq!(served.custom_metadata, b"{\"z\":1, \"a\":0}");
        assert_eq!(served.content_type, CONTENT_TYPE_JSON);

        let bytes = [0u8, 159, 146, 150, 255, 10];
        let served = round_trip(CONTENT_TYPE_BINARY, &bytes, &[1, 2, 0]);
        assert_eq!(served.data, bytes);
        assert_eq!(served.custom_metadata, [1, 2, 0]);
        assert_eq!(served.content_type, CONTENT_TYPE_BINARY);
    }

    #[test]
    fn uuids_convert_both_ways_in_both_formats() {
        let id = Uuid::new_v4();
        for format in [UuidFormat::Structured, UuidFormat::String] {
            assert_eq!(uuid_from_proto(&uuid_to_proto(id, format)), Some(id));
        }
    }

    #[test]
    fn json_content_that_is_not_json_is_refused() {
        let metadata = HashMap::from([
            ("type".to_owned(), "Thing".to_owned()),
            ("content-type".to_owned(), CONTENT_TYPE_JSON.to_owned()),
        ]);
        let id = Some(uuid_to_proto(Uuid::new_v4(), UuidFormat::String));
        assert!(
            Proposed::parse(id, &metadata, Bytes::from_static(b"{nope"), Bytes::new()).is_err()
        );
    }
}
