//! The hash chain and canonical JSON.
//!
//! Every event's hash is `SHA-256(previous hash || encoding of the event)`, the first
//! event's previous hash being 32 zero bytes. The encoding is length-prefixed, so no
//! two different events encode alike:
//!
//! ```text
//! position        u64 big-endian
//! stream_id       u32 BE length, UTF-8 bytes
//! version         u64 BE
//! event_id        16 bytes
//! event_type      u32 BE length, UTF-8 bytes
//! schema_version  u32 BE
//! data            u32 BE length, canonical JSON
//! metadata        u32 BE length, canonical JSON
//! recorded_at     i64 BE, microseconds since the Unix epoch
//! ```
//!
//! Canonical JSON is compact, with object keys sorted by their UTF-8 bytes, so the
//! hash depends on the value, not on how it is printed: logs written before the
//! columns became `json` hold `jsonb`'s text (keys by length, spaces after `:` and
//! `,`), and verify the same.

use std::io::Write;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::types::RecordedEvent;

/// The hash before the first event.
pub const GENESIS_HASH: [u8; 32] = [0u8; 32];

/// The fields of an event that the chain covers, borrowed.
pub struct ChainedFields<'a> {
    pub position: u64,
    pub stream_id: &'a str,
    pub version: u64,
    pub event_id: Uuid,
    pub event_type: &'a str,
    pub schema_version: u32,
    pub canonical_data: &'a [u8],
    pub canonical_metadata: &'a [u8],
    pub recorded_at: DateTime<Utc>,
}

/// The hash of one event chained to `previous`.
pub fn chain_hash(previous: &[u8; 32], fields: &ChainedFields<'_>) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(previous);
    h.update(fields.position.to_be_bytes());
    update_prefixed(&mut h, fields.stream_id.as_bytes());
    h.update(fields.version.to_be_bytes());
    h.update(fields.event_id.as_bytes());
    update_prefixed(&mut h, fields.event_type.as_bytes());
    h.update(fields.schema_version.to_be_bytes());
    update_prefixed(&mut h, fields.canonical_data);
    update_prefixed(&mut h, fields.canonical_metadata);
    h.update(fields.recorded_at.timestamp_micros().to_be_bytes());
    h.finalize().into()
}

fn update_prefixed(h: &mut Sha256, bytes: &[u8]) {
    // Lengths are bounded by the append limits (well under 4 GiB).
    h.update((bytes.len() as u32).to_be_bytes());
    h.update(bytes);
}

/// Recomputes the hash a stored event should carry, given its predecessor's hash.
pub fn expected_hash(previous: &[u8; 32], event: &RecordedEvent) -> [u8; 32] {
    let data = canonical_json(&event.data);
    let metadata = canonical_metadata(&event.metadata);
    chain_hash(
        previous,
        &ChainedFields {
            position: event.position,
            stream_id: &event.stream_id,
            version: event.version,
            event_id: event.event_id,
            event_type: &event.event_type,
            schema_version: event.schema_version,
            canonical_data: &data,
            canonical_metadata: &metadata,
            recorded_at: event.recorded_at,
        },
    )
}

/// Where a run of events breaks the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub position: u64,
    pub stored: [u8; 32],
    pub expected: [u8; 32],
}

/// Walks events in position order from the hash before the first of them, returning
/// the last hash, or the first event whose stored hash does not match.
pub fn verify_chain<'a>(
    previous: [u8; 32],
    events: impl IntoIterator<Item = &'a RecordedEvent>,
) -> Result<[u8; 32], ChainBreak> {
    let mut prev = previous;
    for event in events {
        let expected = expected_hash(&prev, event);
        if expected != event.hash {
            return Err(ChainBreak {
                position: event.position,
                stored: event.hash,
                expected,
            });
        }
        prev = event.hash;
    }
    Ok(prev)
}

#[cfg(test)]
pub(crate) fn metadata_value(metadata: &crate::types::Metadata) -> Value {
    // Serializing a struct of plain fields to a Value cannot fail.
    serde_json::to_value(metadata).unwrap_or(Value::Null)
}

/// The canonical JSON of `metadata` as serialized, written straight from the fields:
/// every event of every append has metadata, and building a `Value` for it first
/// (a map and a string per field) cost more than writing it.
pub(crate) fn canonical_metadata(metadata: &crate::types::Metadata) -> Vec<u8> {
    // The keys in bytewise order, each present as `Metadata`'s serialization has it.
    fn key(out: &mut Vec<u8>, key: &str) {
        // A comma before every key but the first (`out` holds only the `{` then).
        if out.len() > 1 {
            out.push(b',');
        }
        write_string(key, out);
        out.push(b':');
    }
    fn id(out: &mut Vec<u8>, name: &str, id: Option<Uuid>) {
        if let Some(id) = id {
            key(out, name);
            out.push(b'"');
            let mut text = Uuid::encode_buffer();
            out.extend_from_slice(id.hyphenated().encode_lower(&mut text).as_bytes());
            out.push(b'"');
        }
    }
    // Room for an actor and three ids (about 200 bytes) without growing.
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    if let Some(actor) = &metadata.actor {
        key(&mut out, "actor");
        write_string(actor, &mut out);
    }
    id(&mut out, "causation_id", metadata.causation_id);
    id(&mut out, "command_id", metadata.command_id);
    id(&mut out, "correlation_id", metadata.correlation_id);
    if !metadata.custom.is_null() {
        key(&mut out, "custom");
        write_canonical(&metadata.custom, &mut out);
    }
    out.push(b'}');
    out
}

/// Compact JSON with object keys sorted bytewise; numbers as serde_json prints them,
/// negative zero as zero (PostgreSQL's numeric has no negative zero).
pub fn canonical_json(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    write_canonical(value, &mut out);
    out
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if n.as_f64() == Some(0.0) && !n.is_u64() && !n.is_i64() {
                out.extend_from_slice(b"0.0");
            } else {
                // As `to_string` prints it, without the string.
                let _ = write!(out, "{n}");
            }
        }
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            out.push(b'{');
            let mut entry = |i: usize, key: &str, value: &Value| {
                if i > 0 {
                    out.push(b',');
                }
                write_string(key, out);
                out.push(b':');
                write_canonical(value, out);
            };
            // serde_json keeps a map's keys in order (a `BTreeMap`, whose order on
            // strings is bytewise) unless some crate turns on its `preserve_order`
            // feature; only then are they sorted here.
            let ordered = map
                .keys()
                .zip(map.keys().skip(1))
                .all(|(a, b)| a.as_bytes() < b.as_bytes());
            if ordered {
                for (i, (key, value)) in map.iter().enumerate() {
                    entry(i, key, value);
                }
            } else {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort_unstable_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
                for (i, key) in keys.into_iter().enumerate() {
                    entry(i, key, &map[key]);
                }
            }
            out.push(b'}');
        }
    }
}

pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
    // Most strings (keys, ids, SKUs, times) need no escape: copied as they are.
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
        return;
    }
    // serde_json's string escaping is deterministic; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Fingerprint of an append for idempotency: the stream and each event's type,
/// schema version and canonical data. Event ids and metadata are left out, so a
/// retried command that mints fresh event ids is still recognised as the same one.
pub(crate) fn fingerprint<'a>(
    stream_id: &str,
    events: impl IntoIterator<Item = (&'a str, u32, &'a [u8])>,
) -> [u8; 32] {
    let mut h = Sha256::new();
    update_prefixed(&mut h, stream_id.as_bytes());
    for (event_type, schema_version, data) in events {
        update_prefixed(&mut h, event_type.as_bytes());
        h.update(schema_version.to_be_bytes());
        update_prefixed(&mut h, data);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_drops_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": [1, 2.5, "x"], "a": {"z": null, "y": true} }"#)
                .expect("valid json");
        assert_eq!(
            String::from_utf8(canonical_json(&v)).expect("utf8"),
            r#"{"a":{"y":true,"z":null},"b":[1,2.5,"x"]}"#
        );
    }

    #[test]
    fn metadata_is_written_as_its_serialization_in_canonical_form() {
        use crate::types::Metadata;
        let id = |n: u128| Some(Uuid::from_u128(n));
        let cases = [
            Metadata::default(),
            Metadata {
                command_id: id(1),
                ..Metadata::default()
            },
            Metadata {
                command_id: id(0x0190_0000_0000_7000_8000_0000_0000_00ab),
                correlation_id: id(2),
                causation_id: id(3),
                actor: Some("customer:\"7\"\n\u{e9}".into()),
                custom: json!({"z": [1, -0.0, 2.5e300], "a": {"y": null, "b": "\u{1}"}}),
            },
            Metadata {
                actor: Some(String::new()),
                custom: json!({}),
                ..Metadata::default()
            },
        ];
        for metadata in cases {
            assert_eq!(
                String::from_utf8(canonical_metadata(&metadata)).expect("utf8"),
                String::from_utf8(canonical_json(&metadata_value(&metadata))).expect("utf8"),
                "{metadata:?}"
            );
        }
    }

    #[test]
    fn canonical_json_is_stable_across_a_text_round_trip() {
        let v = json!({"name": "caf\u{e9} \"quoted\"\n", "n": -12, "big": 18446744073709551615u64, "f": 0.1});
        let reparsed: Value =
            serde_json::from_slice(&canonical_json(&v)).expect("canonical output parses");
        assert_eq!(canonical_json(&v), canonical_json(&reparsed));
    }
}
