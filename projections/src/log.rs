//! A lean reader of the log for rebuilds.
//!
//! `EventStore::read_all` hands out the whole envelope (metadata parsed, hash, event
//! id) as parsed JSON values; a rebuild needs none of that and reads millions of
//! events, so it copies only the columns projections use out of the `events` table
//! (`COPY ... TO STDOUT (FORMAT binary)`, one query per range, streamed) and decodes
//! the data text straight into the domain's events. It relies on what the event store
//! guarantees of that table (docs/architecture.md): every position up to the head is
//! committed, in order, and rows never change. The live runner keeps to `read_all`.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use eventstore::privacy::{text_may_contain_marker, KeyVault};
use futures::{pin_mut, TryStreamExt};
use tokio::sync::mpsc;
use tokio_postgres::binary_copy::BinaryCopyOutStream;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Client;

use crate::decode::{decode_text, Batch, Categories, Category, Decoded};
use crate::error::{db_error, ProjectionError};

/// Positions per COPY: small enough that PostgreSQL reads the range through the
/// primary key in order, rather than sorting the whole table.
const COPY_RANGE_EVENTS: u64 = 200_000;

/// The text of a `jsonb` value as its binary form carries it: a version byte (1),
/// then JSON.
struct JsonText<'a>(&'a [u8]);

impl<'a> FromSql<'a> for JsonText<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        match raw.split_first() {
            Some((1, text)) => Ok(JsonText(text)),
            _ => Err("unsupported jsonb format version".into()),
        }
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }
}

/// Streams the events after `after` up to `upto` in batches of `batch_max_events`,
/// decoded for `categories`, to every sender. Returns early (without error) when a
/// receiver has gone.
pub(crate) async fn copy_batches(
    client: &Client,
    after: u64,
    upto: u64,
    batch_max_events: usize,
    categories: Categories,
    senders: &[mpsc::Sender<Arc<Batch>>],
) -> Result<(), ProjectionError> {
    copy_opened_batches(
        client,
        None,
        after,
        upto,
        batch_max_events,
        categories,
        senders,
    )
    .await
}

/// [`copy_batches`], opening sealed personal fields with `vault` first (erased where
/// their key is gone). Without a vault, an event with sealed fields does not decode.
pub(crate) async fn copy_opened_batches(
    client: &Client,
    vault: Option<&KeyVault>,
    after: u64,
    upto: u64,
    batch_max_events: usize,
    categories: Categories,
    senders: &[mpsc::Sender<Arc<Batch>>],
) -> Result<(), ProjectionError> {
    let mut buf = Vec::with_capacity(4096);
    // Reserved up front: growing a vector of tens of thousands of events copies it.
    let new_batch = || Batch {
        events: Vec::with_capacity(batch_max_events),
        last_position: 0,
    };
    let mut batch = new_batch();
    let mut in_batch = 0usize;
    let mut from = after;
    let mut last = after;
    while from < upto {
        let to = upto.min(from + COPY_RANGE_EVENTS);
        let sql = format!(
            "COPY (SELECT position, stream_id, version, event_type, schema_version, data, \
             recorded_at FROM events WHERE position > {from} AND position <= {to} \
             ORDER BY position) TO STDOUT (FORMAT binary)"
        );
        let stream = client.copy_out(sql.as_str()).await.map_err(db_error)?;
        let rows = BinaryCopyOutStream::new(
            stream,
            &[
                Type::INT8,
                Type::TEXT,
                Type::INT8,
                Type::TEXT,
                Type::INT4,
                Type::JSONB,
                Type::TIMESTAMPTZ,
            ],
        );
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await.map_err(db_error)? {
            let position = row.try_get::<i64>(0).map_err(db_error)? as u64;
            let stream_id: &str = row.try_get(1).map_err(db_error)?;
            if position != last + 1 {
                return Err(gap(last));
            }
            last = position;
            batch.last_position = position;
            in_batch += 1;
            if let Some(category) = Category::of(stream_id).filter(|c| categories.contains(*c)) {
                let event_type: &str = row.try_get(3).map_err(db_error)?;
                let schema_version = row.try_get::<i32>(4).map_err(db_error)? as u32;
                let json: JsonText = row.try_get(5).map_err(db_error)?;
                let recorded_at: DateTime<Utc> = row.try_get(6).map_err(db_error)?;
                // Sealed personal fields are opened (or erased) before decoding; the
                // few events that carry them take the slower way through a value.
                let opened;
                let json = if let Some(vault) = vault.filter(|_| text_may_contain_marker(json.0)) {
                    let mut value: serde_json::Value = serde_json::from_slice(json.0)
                        .map_err(|e| ProjectionError::Database(format!("event data: {e}")))?;
                    vault.open(&mut value).await?;
                    opened = serde_json::to_vec(&value)
                        .map_err(|e| ProjectionError::Database(format!("event data: {e}")))?;
                    &opened[..]
                } else {
                    json.0
                };
                batch.events.push(Decoded {
                    position,
                    version: row.try_get::<i64>(2).map_err(db_error)? as u64,
                    recorded_at,
                    category,
                    event: decode_text(
                        category,
                        stream_id,
                        event_type,
                        schema_version,
                        json,
                        &mut buf,
                    ),
                });
            }
            if in_batch == batch_max_events {
                if !send(senders, std::mem::replace(&mut batch, new_batch())).await {
                    return Ok(());
                }
                in_batch = 0;
            }
        }
        // Every position up to the head is committed, so the range is complete.
        if last != to {
            return Err(gap(last));
        }
        from = to;
    }
    if in_batch > 0 {
        send(senders, batch).await;
    }
    Ok(())
}

fn gap(last: u64) -> ProjectionError {
    ProjectionError::Database(format!("the log has no event at position {}", last + 1))
}

async fn send(senders: &[mpsc::Sender<Arc<Batch>>], batch: Batch) -> bool {
    let batch = Arc::new(batch);
    for sender in senders {
        if sender.send(batch.clone()).await.is_err() {
            return false;
        }
    }
    true
}
