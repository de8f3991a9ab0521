//! The chain verified from a binary `COPY` of the PostgreSQL log: what `commerce audit
//! verify` and `GET /v1/audit/verify` run.
//!
//! Two cores are shared by PostgreSQL's backend, which spends most of its time copying
//! rows out, and this process. So the reader task does as
//! little as it can: each row arrives as one message (a `Bytes`, not copied), the
//! reader takes the position out of it and passes pages of rows on. The hashing
//! threads decode the rest of each row in place and write canonical JSON straight
//! from the stored `json` text ([`crate::canonical_text`]), parsing into values only text
//! that needs it. SHA-256 itself is cheap: `sha2` uses the CPU's SHA extensions when
//! it finds them at run time.

use std::time::Instant;

use bytes::{Buf, Bytes};
use chrono::{DateTime, Utc};
use futures::{pin_mut, TryStreamExt};
use tokio_postgres::types::{FromSql, Type};

use super::{hash_before, VerifyReport, AUDIT_PAGE_EVENTS};
use crate::canonical_text::{metadata_member, CanonicalWriter};
use crate::hash::{canonical_json, canonical_metadata, chain_hash, ChainedFields};
use crate::postgres::db_error;
use crate::types::{Metadata, StoreError};
use crate::EventStore;

/// `COPY` statements run at once, each on its own connection: PostgreSQL's backend
/// writing the rows is the slowest stage, and one backend uses one core.
pub const VERIFY_COPY_READERS: usize = 2;
/// Positions per `COPY`: the readers take turns, range by range, so each is at most a
/// few ranges ahead of the hashing; each range is read through the primary key.
pub const VERIFY_COPY_RANGE_EVENTS: u64 = 2 * AUDIT_PAGE_EVENTS as u64;
/// Messages (pages of [`AUDIT_PAGE_EVENTS`] and ends of ranges) each reader may have
/// waiting for the hashing threads: two ranges.
const VERIFY_READER_MESSAGES_AHEAD: usize =
    2 * (VERIFY_COPY_RANGE_EVENTS as usize / AUDIT_PAGE_EVENTS + 1);

/// The columns the chain covers, in the order of [`ChainedFields`], then the hash.
const COPY_COLUMNS: &str = "position, stream_id, version, event_id, event_type, \
                            schema_version, data, metadata, recorded_at, hash";
const COPY_COLUMN_COUNT: i16 = 10;
/// The start of a binary `COPY`: the signature, 32 bits of flags and the length of a
/// header extension, sent with the first row.
const COPY_SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// The end of a binary `COPY`: a field count of -1, in a message of its own.
const COPY_TRAILER: &[u8] = &[0xff, 0xff];

/// One row of the `COPY` as PostgreSQL sent it: a 16-bit field count, then each field
/// as a 32-bit length and its bytes. Only the position is read on arrival.
struct CopiedRow {
    position: u64,
    fields: Bytes,
}

impl CopiedRow {
    fn new(fields: Bytes) -> Result<Self, StoreError> {
        // The field count, then the position: the first field, 8 bytes long.
        let Some(head) = fields.get(..14).filter(|head| {
            head[..2] == COPY_COLUMN_COUNT.to_be_bytes() && head[2..6] == 8i32.to_be_bytes()
        }) else {
            return Err(StoreError::Corrupt(
                "a row of the verification's COPY is not in the expected form".into(),
            ));
        };
        let mut position = [0u8; 8];
        position.copy_from_slice(&head[6..]);
        let position = i64::from_be_bytes(position);
        let position = u64::try_from(position)
            .map_err(|_| StoreError::Corrupt(format!("position {position} in the log")))?;
        Ok(CopiedRow { position, fields })
    }

    /// The row's columns, borrowed from its message.
    fn decode(&self) -> Result<StoredEvent<'_>, StoreError> {
        let failed = |what: String| {
            StoreError::Corrupt(format!("reading position {}: {what}", self.position))
        };
        let mut rest = &self.fields[2..];
        let mut next = || -> Result<&[u8], StoreError> {
            let (length, after) = rest
                .split_first_chunk::<4>()
                .ok_or_else(|| failed("the row ends early".into()))?;
            let length = usize::try_from(i32::from_be_bytes(*length))
                .map_err(|_| failed("a column is NULL".into()))?;
            let (field, after) = after
                .split_at_checked(length)
                .ok_or_else(|| failed("a column runs past the row".into()))?;
            rest = after;
            Ok(field)
        };
        let column = |ty: &Type| failed(format!("a {ty} column does not decode"));
        fn read<'a, T: FromSql<'a>>(
            ty: &Type,
            raw: &'a [u8],
            failed: impl Fn(&Type) -> StoreError,
        ) -> Result<T, StoreError> {
            T::from_sql(ty, raw).map_err(|_| failed(ty))
        }
        let _position: i64 = read(&Type::INT8, next()?, column)?;
        let event = StoredEvent {
            stream_id: read(&Type::TEXT, next()?, column)?,
            version: read::<i64>(&Type::INT8, next()?, column)? as u64,
            event_id: read(&Type::UUID, next()?, column)?,
            event_type: read(&Type::TEXT, next()?, column)?,
            schema_version: read::<i32>(&Type::INT4, next()?, column)? as u32,
            // A `json` column's binary form is its text.
            data: next()?,
            metadata: next()?,
            recorded_at: read(&Type::TIMESTAMPTZ, next()?, column)?,
            hash: read(&Type::BYTEA, next()?, column)?,
        };
        if !rest.is_empty() {
            return Err(failed("the row has more columns than asked for".into()));
        }
        Ok(event)
    }

    /// The row's stored hash, if it decodes to 32 bytes.
    fn stored_hash(&self) -> Option<[u8; 32]> {
        self.decode().ok()?.hash.try_into().ok()
    }
}

/// A stored event's columns, borrowed from its row.
struct StoredEvent<'a> {
    stream_id: &'a str,
    version: u64,
    event_id: uuid::Uuid,
    event_type: &'a str,
    schema_version: u32,
    data: &'a [u8],
    metadata: &'a [u8],
    recorded_at: DateTime<Utc>,
    hash: &'a [u8],
}

/// One hashing thread's buffers, reused from event to event.
#[derive(Default)]
struct Hasher {
    writer: CanonicalWriter,
    data: Vec<u8>,
    metadata: Vec<u8>,
}

impl Hasher {
    /// The hash `event` should carry after `previous`, or `None` if its stored JSON
    /// does not parse (which breaks the chain as surely as a wrong hash).
    fn expected_hash(
        &mut self,
        previous: &[u8; 32],
        position: u64,
        event: &StoredEvent<'_>,
    ) -> Option<[u8; 32]> {
        self.data.clear();
        if self.writer.write(event.data, &mut self.data).is_none() {
            let data: serde_json::Value = serde_json::from_slice(event.data).ok()?;
            self.data = canonical_json(&data);
        }
        self.metadata.clear();
        if self
            .writer
            .write_object(event.metadata, metadata_member, &mut self.metadata)
            .is_none()
        {
            let metadata: Metadata = serde_json::from_slice(event.metadata).ok()?;
            self.metadata = canonical_metadata(&metadata);
        }
        Some(chain_hash(
            previous,
            &ChainedFields {
                position,
                stream_id: event.stream_id,
                version: event.version,
                event_id: event.event_id,
                event_type: event.event_type,
                schema_version: event.schema_version,
                canonical_data: &self.data,
                canonical_metadata: &self.metadata,
                recorded_at: event.recorded_at,
            },
        ))
    }
}

/// [`super::verify_log`] for the PostgreSQL store, faster: reader tasks stream the
/// rows with binary `COPY` (only the hashed columns, [`VERIFY_COPY_READERS`] ranges at
/// once) while each page, in position order, is decoded and hashed on two threads.
/// Same report, same verdicts.
pub async fn verify_log_postgres(
    store: &crate::PostgresStore,
    from: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, StoreError> {
    let started = Instant::now();
    let from = from.max(1);
    let head = store.head().await?;
    let mut previous = hash_before(store, from).await?;
    // Range `i` (positions after `from - 1 + i * RANGE`) is read by reader `i % READERS`
    // and hashed in turn.
    let ranges = (head + 1)
        .saturating_sub(from)
        .div_ceil(VERIFY_COPY_RANGE_EVENTS);
    let mut readers = Readers(Vec::with_capacity(VERIFY_COPY_READERS));
    let mut inboxes = Vec::with_capacity(VERIFY_COPY_READERS);
    for reader in 0..VERIFY_COPY_READERS as u64 {
        let (tx, rx) = tokio::sync::mpsc::channel(VERIFY_READER_MESSAGES_AHEAD);
        let store = store.clone();
        let mine = (reader..ranges).step_by(VERIFY_COPY_READERS);
        readers.0.push(tokio::spawn(async move {
            if let Err(e) = read_ranges(&store, from, head, mine, &tx).await {
                let _ = tx.send(Err(e)).await;
            }
        }));
        inboxes.push(rx);
    }

    let mut report = VerifyReport {
        from,
        checked: 0,
        last_position: from - 1,
        first_break: None,
        elapsed_secs: 0.0,
    };
    let mut range = 0;
    while range < ranges {
        let inbox = &mut inboxes[(range % VERIFY_COPY_READERS as u64) as usize];
        let mut page = match inbox.recv().await {
            Some(Ok(Read::Page(page))) => page,
            Some(Ok(Read::RangeDone)) => {
                range += 1;
                continue;
            }
            Some(Err(e)) => return Err(e),
            // A reader only stops early after sending its error.
            None => break,
        };
        // A missing position is a break there; check the events before it first.
        let mut expected_position = report.last_position + 1;
        let contiguous = page
            .iter()
            .take_while(|row| {
                let ok = row.position == expected_position;
                expected_position += 1;
                ok
            })
            .count();
        let gap = contiguous < page.len();
        page.truncate(contiguous);
        let count = page.len() as u64;
        let last = page.last().map(|row| row.position);
        match verify_page(previous, page).await? {
            Ok(last_hash) => {
                report.checked += count;
                if let Some(last) = last {
                    report.last_position = last;
                }
                previous = last_hash;
                if gap {
                    report.first_break = Some(report.last_position + 1);
                    break;
                }
                progress(report.checked, report.last_position);
            }
            Err(position) => {
                report.checked += position - report.last_position;
                report.last_position = position;
                report.first_break = Some(position);
                break;
            }
        }
    }
    drop(readers);
    if report.first_break.is_none() && report.last_position < head {
        report.first_break = Some(report.last_position + 1);
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The reader tasks, stopped when the verification ends, however it ends.
struct Readers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Readers {
    fn drop(&mut self) {
        for reader in &self.0 {
            reader.abort();
        }
    }
}

/// What a reader passes on: pages of rows in position order, each range closed by
/// its end so that the hashing knows when to turn to the next reader.
enum Read {
    Page(Vec<CopiedRow>),
    RangeDone,
}

/// Reads the `ranges` (indices into the ranges of [`VERIFY_COPY_RANGE_EVENTS`]
/// positions after `from - 1`, up to `head`) with one `COPY` each, as pages of at
/// most [`AUDIT_PAGE_EVENTS`] rows.
async fn read_ranges(
    store: &crate::PostgresStore,
    from: u64,
    head: u64,
    ranges: impl Iterator<Item = u64>,
    out: &tokio::sync::mpsc::Sender<Result<Read, StoreError>>,
) -> Result<(), StoreError> {
    let client = store.connection().await?;
    for range in ranges {
        let after = from - 1 + range * VERIFY_COPY_RANGE_EVENTS;
        let to = head.min(after + VERIFY_COPY_RANGE_EVENTS);
        let sql = format!(
            "COPY (SELECT {COPY_COLUMNS} FROM events WHERE position > {after} \
             AND position <= {to} ORDER BY position) TO STDOUT (FORMAT binary)"
        );
        let stream = client.copy_out(sql.as_str()).await.map_err(db_error)?;
        pin_mut!(stream);
        let mut page = Vec::with_capacity(AUDIT_PAGE_EVENTS);
        let mut first = true;
        loop {
            let Some(mut message) = stream.try_next().await.map_err(db_error)? else {
                return Err(StoreError::Corrupt(
                    "the verification's COPY ended without its trailer".into(),
                ));
            };
            if first {
                skip_copy_header(&mut message)?;
                first = false;
            }
            if message.as_ref() == COPY_TRAILER {
                break;
            }
            page.push(CopiedRow::new(message)?);
            if page.len() == AUDIT_PAGE_EVENTS {
                let full = std::mem::replace(&mut page, Vec::with_capacity(AUDIT_PAGE_EVENTS));
                if out.send(Ok(Read::Page(full))).await.is_err() {
                    return Ok(());
                }
            }
        }
        if stream.try_next().await.map_err(db_error)?.is_some() {
            return Err(StoreError::Corrupt(
                "the verification's COPY sent data after its trailer".into(),
            ));
        }
        if !page.is_empty() && out.send(Ok(Read::Page(page))).await.is_err() {
            return Ok(());
        }
        if out.send(Ok(Read::RangeDone)).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

fn skip_copy_header(message: &mut Bytes) -> Result<(), StoreError> {
    let bad = || StoreError::Corrupt("the verification's COPY has no binary header".into());
    if !message.starts_with(COPY_SIGNATURE) || message.len() < COPY_SIGNATURE.len() + 8 {
        return Err(bad());
    }
    message.advance(COPY_SIGNATURE.len());
    let _flags = message.get_u32();
    let extension = message.get_u32() as usize;
    if message.len() < extension {
        return Err(bad());
    }
    message.advance(extension);
    Ok(())
}

/// Verifies one page of rows on two threads: `Ok` holds the last row's hash,
/// `Err(position)` the first break (a wrong or malformed hash, or JSON that does not
/// parse).
async fn verify_page(
    previous: [u8; 32],
    page: Vec<CopiedRow>,
) -> Result<Result<[u8; 32], u64>, StoreError> {
    fn walk(previous: [u8; 32], rows: &[CopiedRow]) -> Result<Result<[u8; 32], u64>, StoreError> {
        let mut hasher = Hasher::default();
        let mut prev = previous;
        for row in rows {
            let event = row.decode()?;
            let Ok(stored) = <[u8; 32]>::try_from(event.hash) else {
                return Ok(Err(row.position));
            };
            if hasher.expected_hash(&prev, row.position, &event) != Some(stored) {
                return Ok(Err(row.position));
            }
            prev = stored;
        }
        Ok(Ok(prev))
    }
    tokio::task::spawn_blocking(move || {
        let mid = page.len() / 2;
        if mid == 0 {
            return walk(previous, &page);
        }
        let (left, right) = page.split_at(mid);
        // The right half chains to the stored hash before it; a malformed one is a
        // break the left half reports.
        let Some(right_previous) = left[left.len() - 1].stored_hash() else {
            return walk(previous, left);
        };
        let (l, r) = std::thread::scope(|scope| {
            let l = scope.spawn(|| walk(previous, left));
            let r = walk(right_previous, right);
            (l.join(), r)
        });
        // A panic while hashing is a bug, not a verdict on the log: pass it on.
        let l = l.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match l? {
            Ok(_) => r,
            Err(position) => Ok(Err(position)),
        }
    })
    .await
    .map_err(|e| StoreError::Corrupt(format!("verification task failed: {e}")))?
}
