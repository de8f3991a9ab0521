//! What the protocol knows of a stream beyond its events: whether it is tombstoned,
//! and its metadata (`$maxCount`, `$maxAge`, `$tb`, custom keys), kept as EventStoreDB
//! keeps them: the tombstone is a `$streamDeleted` event appended to the stream itself,
//! the metadata the last `$metadata` event of the stream `$$name`. Both are in the log,
//! so nothing is ever rewritten: truncation and deletion only hide events from reads.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventstore::{Direction, EventStore, RecordedEvent, StoreError};
use serde_json::{Map, Value};

use super::codec;
use super::streams_rules::{is_metadata_stream, metadata_stream_of, TOMBSTONE_EVENT_TYPE};

/// A stream's last version (1-based; 0: no events) and whether it is tombstoned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    pub version: u64,
    pub tombstoned: bool,
}

pub async fn stream_head(
    store: &Arc<dyn EventStore>,
    stream: &str,
) -> Result<StreamHead, StoreError> {
    let last = store
        .read_stream(stream, u64::MAX, Direction::Backward, 1)
        .await?;
    Ok(match last.first() {
        None => StreamHead {
            version: 0,
            tombstoned: false,
        },
        Some(event) => StreamHead {
            version: event.version,
            tombstoned: is_tombstone(event),
        },
    })
}

pub fn is_tombstone(event: &RecordedEvent) -> bool {
    event.event_type == TOMBSTONE_EVENT_TYPE && !is_metadata_stream(&event.stream_id)
}

/// A stream's metadata, as its last `$metadata` event set it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamMetadata {
    /// The whole JSON object, custom keys included (kept when a delete adds `$tb`).
    pub raw: Map<String, Value>,
    pub max_count: Option<u64>,
    pub max_age_secs: Option<u64>,
    /// Events with a revision below this are hidden.
    pub truncate_before: Option<u64>,
    /// The version of the metadata stream (0: no metadata was ever set).
    pub metadata_version: u64,
}

impl StreamMetadata {
    /// Parses and checks a metadata object as a client writes it.
    pub fn parse(bytes: &[u8]) -> Result<Map<String, Value>, String> {
        let value: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("metadata is not JSON: {e}"))?;
        let Value::Object(raw) = value else {
            return Err("metadata must be a JSON object".into());
        };
        for key in ["$maxCount", "$maxAge", "$tb"] {
            match raw.get(key) {
                None | Some(Value::Null) => {}
                Some(v) if v.as_u64().is_some_and(|n| n <= eventstore::VERSION_MAX) => {}
                Some(v) => return Err(format!("{key} must be a non-negative integer, got {v}")),
            }
        }
        if raw.get("$maxCount").and_then(Value::as_u64) == Some(0) {
            return Err("$maxCount must be at least 1".into());
        }
        Ok(raw)
    }

    fn from_raw(raw: Map<String, Value>, metadata_version: u64) -> Self {
        let number = |key: &str| raw.get(key).and_then(Value::as_u64);
        StreamMetadata {
            max_count: number("$maxCount"),
            max_age_secs: number("$maxAge"),
            truncate_before: number("$tb"),
            metadata_version,
            raw,
        }
    }

    /// Whether a soft delete hides every event of a stream at `version`: its
    /// truncate-before is past the last revision.
    pub fn soft_deleted(&self, version: u64) -> bool {
        version > 0 && self.truncate_before.is_some_and(|tb| tb >= version)
    }

    /// The first version (1-based) reads show, for a stream at `version`.
    pub fn first_visible_version(&self, version: u64) -> u64 {
        let mut first = 1;
        if let Some(tb) = self.truncate_before {
            first = first.max(tb.saturating_add(1));
        }
        if let Some(max_count) = self.max_count {
            first = first.max(version.saturating_sub(max_count).saturating_add(1));
        }
        first
    }

    /// Events recorded before this are hidden (`$maxAge`, in seconds as EventStoreDB
    /// counts it).
    pub fn oldest_visible(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let secs = i64::try_from(self.max_age_secs?).ok()?;
        now.checked_sub_signed(chrono::Duration::try_seconds(secs)?)
    }
}

/// The metadata of `stream` (not itself a metadata stream).
pub async fn stream_metadata(
    store: &Arc<dyn EventStore>,
    stream: &str,
) -> Result<StreamMetadata, StoreError> {
    let last = store
        .read_stream(
            &metadata_stream_of(stream),
            u64::MAX,
            Direction::Backward,
            1,
        )
        .await?;
    let Some(event) = last.first() else {
        return Ok(StreamMetadata::default());
    };
    let bytes = codec::served(event)?.data;
    // Metadata was checked when written; an unreadable one hides nothing.
    let raw = StreamMetadata::parse(&bytes).unwrap_or_default();
    Ok(StreamMetadata::from_raw(raw, event.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(json: &str) -> StreamMetadata {
        StreamMetadata::from_raw(StreamMetadata::parse(json.as_bytes()).unwrap(), 1)
    }

    #[test]
    fn truncate_before_and_max_count_hide_the_oldest_events() {
        assert_eq!(metadata("{}").first_visible_version(10), 1);
        assert_eq!(metadata(r#"{"$tb":4}"#).first_visible_version(10), 5);
        assert_eq!(metadata(r#"{"$maxCount":3}"#).first_visible_version(10), 8);
        assert_eq!(
            metadata(r#"{"$maxCount":3,"$tb":8}"#).first_visible_version(10),
            9
        );
        assert_eq!(metadata(r#"{"$maxCount":30}"#).first_visible_version(10), 1);
    }

    #[test]
    fn a_truncate_before_past_the_last_revision_is_a_soft_delete() {
        let deleted = metadata(r#"{"$tb":10}"#);
        assert!(deleted.soft_deleted(10));
        assert!(!deleted.soft_deleted(11));
        assert!(!metadata("{}").soft_deleted(10));
    }

    #[test]
    fn malformed_metadata_is_refused() {
        for bad in [
            "[]",
            "nope",
            r#"{"$maxCount":-1}"#,
            r#"{"$maxCount":0}"#,
            r#"{"$tb":"x"}"#,
        ] {
            assert!(StreamMetadata::parse(bad.as_bytes()).is_err(), "{bad}");
        }
    }
}
