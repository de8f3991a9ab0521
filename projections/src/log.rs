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
use eventstore::PostgresStore;
use futures::{pin_mut, TryStreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::binary_copy::{BinaryCopyOutRow, BinaryCopyOutStream};
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::Client;

use crate::decode::{decode_text, Batch, Categories, Category, Decoded};
use crate::error::{db_error, ProjectionError};

/// Positions per COPY: small enough that PostgreSQL reads the range through the
/// primary key in order, rather than sorting the whole table.
const COPY_RANGE_EVENTS: u64 = 200_000;

/// The text of a `json` value, which is its binary form, borrowed from the row.
struct JsonText<'a>(&'a [u8]);

impl<'a> FromSql<'a> for JsonText<'a> {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(JsonText(raw))
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
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
        let rows = copy_range(client, from, to).await?;
        pin_mut!(rows);
        while let Some(row) = rows.try_next().await.map_err(db_error)? {
            let position = row.try_get::<i64>(0).map_err(db_error)? as u64;
            if position != last + 1 {
                return Err(gap(last));
            }
            last = position;
            batch.last_position = position;
            in_batch += 1;
            if let Some(event) = decode_row(&row, position, vault, categories, &mut buf).await? {
                batch.events.push(event);
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

/// The events after `from` up to `to`, as binary COPY rows.
async fn copy_range(
    client: &Client,
    from: u64,
    to: u64,
) -> Result<BinaryCopyOutStream, ProjectionError> {
    let sql = format!(
        "COPY (SELECT position, stream_id, version, event_type, schema_version, data, \
         recorded_at FROM events WHERE position > {from} AND position <= {to} \
         ORDER BY position) TO STDOUT (FORMAT binary)"
    );
    let stream = client.copy_out(sql.as_str()).await.map_err(db_error)?;
    Ok(BinaryCopyOutStream::new(
        stream,
        &[
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::TEXT,
            Type::INT4,
            Type::JSON,
            Type::TIMESTAMPTZ,
        ],
    ))
}

/// The event of a COPY row at `position` if its category is in `categories`.
async fn decode_row(
    row: &BinaryCopyOutRow,
    position: u64,
    vault: Option<&KeyVault>,
    categories: Categories,
    buf: &mut Vec<u8>,
) -> Result<Option<Decoded>, ProjectionError> {
    let stream_id: &str = row.try_get(1).map_err(db_error)?;
    let Some(category) = Category::of(stream_id).filter(|c| categories.contains(*c)) else {
        return Ok(None);
    };
    let event_type: &str = row.try_get(3).map_err(db_error)?;
    let schema_version = row.try_get::<i32>(4).map_err(db_error)? as u32;
    let json: JsonText = row.try_get(5).map_err(db_error)?;
    let recorded_at: DateTime<Utc> = row.try_get(6).map_err(db_error)?;
    // Sealed personal fields are opened (or erased) before decoding; the few events
    // that carry them take the slower way through a value.
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
    Ok(Some(Decoded {
        position,
        version: row.try_get::<i64>(2).map_err(db_error)? as u64,
        recorded_at,
        category,
        event: decode_text(category, stream_id, event_type, schema_version, json, buf),
    }))
}

/// Reads the events after `after` up to `upto` on `readers` connections of `store`
/// at once, each reading and decoding every `readers`-th range of
/// `batch_max_events` positions, and hands the batches in log order to every
/// sender. Reading and decoding are most of a rebuild's work outside the read
/// models, and this spreads them over the machine's cores. Returns early (without
/// error) when a receiver has gone.
pub(crate) async fn copy_batches_in_parallel(
    store: &PostgresStore,
    readers: usize,
    after: u64,
    upto: u64,
    batch_max_events: usize,
    categories: Categories,
    senders: &[mpsc::Sender<Arc<Batch>>],
) -> Result<(), ProjectionError> {
    let readers = readers.max(1) as u64;
    let range = batch_max_events.max(1) as u64;
    let vault = KeyVault::connect(store.pool().clone()).await?;
    let mut tasks = Vec::new();
    let mut batches = Vec::new();
    for reader in 0..readers {
        // One batch decoded ahead per reader: the order of hand-over keeps the rest
        // waiting.
        let (sender, receiver) = mpsc::channel::<Batch>(1);
        batches.push(receiver);
        let (store, vault) = (store.clone(), vault.clone());
        tasks.push(AbortOnDrop(tokio::spawn(async move {
            let client = store.connection().await?;
            let mut buf = Vec::with_capacity(4096);
            let mut from = after + reader * range;
            while from < upto {
                let to = upto.min(from + range);
                let batch = read_range(&client, &vault, from, to, categories, &mut buf).await?;
                if sender.send(batch).await.is_err() {
                    break;
                }
                from += readers * range;
            }
            Ok::<_, ProjectionError>(())
        })));
    }
    let mut from = after;
    let mut turn = 0;
    while from < upto {
        let Some(batch) = batches[turn].recv().await else {
            // The reader of this range ended early: its error says why.
            break;
        };
        from = batch.last_position;
        if !send(senders, batch).await {
            return Ok(());
        }
        turn = (turn + 1) % batches.len();
    }
    drop(batches);
    for mut task in tasks {
        match (&mut task.0).await {
            Ok(result) => result?,
            Err(e) => {
                return Err(ProjectionError::Database(format!(
                    "log reader panicked: {e}"
                )))
            }
        }
    }
    Ok(())
}

/// The events after `from` up to `to`, decoded for `categories` into one batch.
async fn read_range(
    client: &Client,
    vault: &KeyVault,
    from: u64,
    to: u64,
    categories: Categories,
    buf: &mut Vec<u8>,
) -> Result<Batch, ProjectionError> {
    let rows = copy_range(client, from, to).await?;
    pin_mut!(rows);
    let mut batch = Batch {
        events: Vec::with_capacity((to - from) as usize),
        last_position: from,
    };
    while let Some(row) = rows.try_next().await.map_err(db_error)? {
        let position = row.try_get::<i64>(0).map_err(db_error)? as u64;
        if position != batch.last_position + 1 {
            return Err(gap(batch.last_position));
        }
        batch.last_position = position;
        if let Some(event) = decode_row(&row, position, Some(vault), categories, buf).await? {
            batch.events.push(event);
        }
    }
    // Every position up to the head is committed, so the range is complete.
    if batch.last_position != to {
        return Err(gap(batch.last_position));
    }
    Ok(batch)
}

/// A task that ends with its handle: when a rebuild or a read is dropped
/// (interrupted), its tasks stop too instead of reading or writing on.
pub(crate) struct AbortOnDrop<T>(pub JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
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
