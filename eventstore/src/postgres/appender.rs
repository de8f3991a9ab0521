//! Group commit: one task per process owns a connection, drains the queue of
//! appends, and writes each drained batch in one transaction.
//!
//! Per batch, four round trips and one fsync:
//! 1. `BEGIN`, lock the `log_head` row, and read the versions of the batch's streams
//!    and the first results of its command ids (pipelined: sent together, answered in
//!    order, all after the lock is held).
//! 2. In memory, decide every append in arrival order against those versions (and the
//!    appends before it in the batch); assign positions, versions and hashes to the
//!    accepted ones. Then `COPY` the events in binary, and insert the command results,
//!    move the head, `NOTIFY` and `COMMIT` (pipelined again).
//!
//! Each append succeeds or fails on its own expected version. If the transaction
//! itself fails (say, an event id that is already in the log), nothing of the batch
//! is written and its appends are retried one per transaction, so only the faulty
//! one fails.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls, Statement};
use uuid::Uuid;

use super::{advance_head, db_error, PostgresConfig, NOTIFY_CHANNEL};
use crate::hash::{chain_hash, ChainedFields};
use crate::prepare::{decide, Decision, PreparedAppend, StoredCommand};
use crate::types::{AppendResult, StoreError};

/// Most times the appender yields to let a batch fill up before it commits.
const APPEND_LINGER_YIELDS_MAX: usize = 64;

pub(crate) struct AppendJob {
    pub append: PreparedAppend,
    pub reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

struct Statements {
    lock_head: Statement,
    clock: Statement,
    stream_versions: Statement,
    commands: Statement,
    copy_events: Statement,
    move_head: Statement,
    existing_event: Statement,
}

struct Connection {
    client: Client,
    statements: Statements,
}

pub(crate) async fn run(
    pg: tokio_postgres::Config,
    config: PostgresConfig,
    mut jobs: mpsc::Receiver<Vec<AppendJob>>,
    head: Arc<watch::Sender<u64>>,
) {
    let mut cache = VersionCache::default();
    let mut connection: Option<Connection> = None;
    let mut batch: Vec<AppendJob> = Vec::new();
    let mut previous_batch_len = 0usize;
    loop {
        // Wait for one append, then take whatever else is already queued, up to the
        // batch bound: under load the queue fills while the previous batch commits.
        let Some(first) = jobs.recv().await else {
            return;
        };
        let mut events: usize = first.iter().map(|j| j.append.events.len()).sum();
        batch.extend(first);
        let mut lingered = 0;
        loop {
            while events < config.append_batch_max_events {
                match jobs.try_recv() {
                    Ok(submission) => {
                        events += submission
                            .iter()
                            .map(|j| j.append.events.len())
                            .sum::<usize>();
                        batch.extend(submission);
                    }
                    Err(_) => break,
                }
            }
            // The writers the previous commit answered are usually sending their next
            // append right now. A few yields (microseconds, no timer) let them join
            // this batch instead of paying a whole extra commit for a handful.
            if batch.len() * 10 >= previous_batch_len * 9
                || events >= config.append_batch_max_events
                || lingered >= APPEND_LINGER_YIELDS_MAX
            {
                break;
            }
            tokio::task::yield_now().await;
            lingered += 1;
        }
        previous_batch_len = batch.len();

        if connection.is_none() {
            match connect(&pg).await {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    for job in batch.drain(..) {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                    continue;
                }
            }
        }
        let Some(conn) = connection.as_ref() else {
            continue;
        };
        let started = std::time::Instant::now();
        let outcome = tokio::time::timeout(
            config.append_batch_timeout,
            write_batch(conn, &batch, &mut cache, CommandIds::AssumeNew),
        )
        .await;
        tracing::debug!(
            appends = batch.len(),
            events,
            micros = started.elapsed().as_micros() as u64,
            "group commit"
        );
        match outcome {
            Ok(Ok(written)) => {
                if let Some(last) = written.last_position {
                    advance_head(&head, last);
                }
                for (job, result) in batch.drain(..).zip(written.results) {
                    let _ = job.reply.send(result);
                }
            }
            Ok(Err(e)) if conn.client.is_closed() || e.is_transient() => {
                // The outcome of the commit is unknown: report it, drop the connection.
                connection = None;
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
            Ok(Err(_)) => {
                // The batch failed as a whole: retry each append alone, so only the one
                // at fault fails.
                for job in batch.drain(..) {
                    let single = std::slice::from_ref(&job);
                    let result =
                        match write_batch(conn, single, &mut cache, CommandIds::Checked).await {
                            Ok(mut written) => {
                                if let Some(last) = written.last_position {
                                    advance_head(&head, last);
                                }
                                written.results.pop().unwrap_or_else(|| {
                                    Err(StoreError::Database("no result for an append".into()))
                                })
                            }
                            Err(e) => Err(explain_failure(conn, &job.append, e).await),
                        };
                    let _ = job.reply.send(result);
                }
            }
            Err(_) => {
                connection = None;
                let e = StoreError::Unavailable(
                    "a group commit timed out; its outcome is unknown".into(),
                );
                for job in batch.drain(..) {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn connect(pg: &tokio_postgres::Config) -> Result<Connection, StoreError> {
    let (client, connection) = pg.connect(NoTls).await.map_err(db_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "appender connection ended");
        }
    });
    let prepare = |sql: &'static str| {
        let client = &client;
        async move { client.prepare(sql).await.map_err(db_error) }
    };
    let statements = Statements {
        lock_head: prepare("SELECT position, hash, recorded_at FROM log_head FOR UPDATE").await?,
        // Sent right behind the lock, so it runs once the lock is held: events are
        // stamped with the time they were ordered, not when their transaction began
        // (which, for a transaction that waited on the lock, may be before the time
        // of the batch ahead of it).
        clock: prepare("SELECT clock_timestamp()").await?,
        stream_versions: prepare(
            "SELECT s.id, v.version FROM unnest($1::text[]) AS s(id) \
             CROSS JOIN LATERAL (SELECT version FROM events WHERE stream_id = s.id \
                                 ORDER BY version DESC LIMIT 1) AS v",
        )
        .await?,
        commands: prepare(
            "SELECT command_id, fingerprint, position, version, append_size \
             FROM events WHERE command_id = ANY($1::uuid[])",
        )
        .await?,
        copy_events: prepare(
            "COPY events (position, stream_id, version, event_id, event_type, schema_version, \
                          data, metadata, recorded_at, hash, command_id, fingerprint, \
                          append_size) FROM STDIN (FORMAT binary)",
        )
        .await?,
        // The notification is delivered when the transaction commits, never before.
        move_head: prepare(
            "WITH moved AS (UPDATE log_head SET position = $1, hash = $2, recorded_at = $4 \
                            RETURNING position) \
             SELECT pg_notify($3, position::text) FROM moved",
        )
        .await?,
        existing_event: prepare(
            "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[]) LIMIT 1",
        )
        .await?,
    };
    Ok(Connection { client, statements })
}

struct Written {
    results: Vec<Result<AppendResult, StoreError>>,
    last_position: Option<u64>,
}

/// Rows of one batch, column by column, ready for `unnest`.
#[derive(Default)]
struct EventColumns<'a> {
    positions: Vec<i64>,
    stream_ids: Vec<&'a str>,
    versions: Vec<i64>,
    event_ids: Vec<Uuid>,
    types: Vec<&'a str>,
    schema_versions: Vec<i32>,
    data: Vec<RawJson<'a>>,
    metadata: Vec<RawJson<'a>>,
    hashes: Vec<Vec<u8>>,
    /// Set on the first event of an append with a command id, `None` elsewhere.
    command_ids: Vec<Option<Uuid>>,
    fingerprints: Vec<Option<&'a [u8]>>,
    append_sizes: Vec<Option<i32>>,
}

/// What the appender knows of stream versions without asking. It is exact while the
/// log's head is where this appender's last commit left it (no other process has
/// appended since); when the head has moved, it is dropped and rebuilt from the table.
#[derive(Default)]
pub(crate) struct VersionCache {
    head: Option<u64>,
    versions: HashMap<String, u64>,
}

/// Streams whose versions the appender remembers before it starts afresh.
const VERSION_CACHE_MAX_STREAMS: usize = 200_000;

impl VersionCache {
    fn invalidate(&mut self) {
        self.head = None;
        self.versions.clear();
    }
}

/// How a batch treats command ids. Repeats are rare, so batches assume every command
/// id is new and let the unique index on `events.command_id` catch a repeat (which
/// fails the batch and sends its appends through `Checked`, one by one).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandIds {
    AssumeNew,
    Checked,
}

async fn write_batch(
    conn: &Connection,
    batch: &[AppendJob],
    cache: &mut VersionCache,
    command_check: CommandIds,
) -> Result<Written, StoreError> {
    let st = &conn.statements;
    let client = &conn.client;

    // The streams appended to and the streams the appends read (their preconditions).
    let mut stream_ids: Vec<&str> = batch
        .iter()
        .flat_map(|j| {
            std::iter::once(j.append.stream_id.as_str())
                .chain(j.append.preconditions.iter().map(|p| p.stream_id.as_str()))
        })
        .collect();
    stream_ids.sort_unstable();
    stream_ids.dedup();
    let uncached: Vec<&str> = match cache.head {
        Some(_) => stream_ids
            .iter()
            .copied()
            .filter(|s| !cache.versions.contains_key(*s))
            .collect(),
        None => stream_ids.clone(),
    };
    let command_ids: Vec<Uuid> = match command_check {
        CommandIds::Checked => batch.iter().filter_map(|j| j.append.command_id).collect(),
        CommandIds::AssumeNew => Vec::new(),
    };

    // Round trip 1. `futures::join!` polls in order, and each query is sent on its
    // first poll, so the server sees BEGIN, the lock, then the reads (empty lookups
    // are cheap no-ops).
    let version_params: [&(dyn ToSql + Sync); 1] = [&uncached];
    let command_params: [&(dyn ToSql + Sync); 1] = [&command_ids];
    let (begin, head_row, clock_row, version_rows, command_rows) = futures::join!(
        client.batch_execute("BEGIN"),
        client.query_one(&st.lock_head, &[]),
        client.query_one(&st.clock, &[]),
        client.query(&st.stream_versions, &version_params),
        client.query(&st.commands, &command_params),
    );
    let read = (|| {
        begin?;
        Ok::<_, tokio_postgres::Error>((head_row?, clock_row?, version_rows?, command_rows?))
    })();
    let (head_row, clock_row, mut version_rows, command_rows) = match read {
        Ok(rows) => rows,
        Err(e) => return Err(rollback(client, e).await),
    };

    let head_position: i64 = head_row.get(0);
    let head_hash: &[u8] = head_row.get(1);
    let last_recorded_at: DateTime<Utc> = head_row.get(2);
    let clock: DateTime<Utc> = clock_row.get(0);
    let recorded_at = clock.max(last_recorded_at);
    let previous_hash: [u8; 32] = head_hash
        .try_into()
        .map_err(|_| StoreError::Corrupt("log_head hash is not 32 bytes".into()))?;
    // What the cache says holds if its head is the head this transaction locked.
    // Otherwise another process appended (or a commit whose outcome was unknown went
    // through): drop the cache and read the rest of the batch's streams.
    let mut versions: HashMap<&str, u64> = HashMap::with_capacity(stream_ids.len());
    let stale = if cache.head == Some(head_position as u64) {
        for stream in &stream_ids {
            if let Some(v) = cache.versions.get(*stream) {
                versions.insert(stream, *v);
            }
        }
        false
    } else {
        cache.invalidate();
        true
    };
    if stale {
        let rest: Vec<&str> = stream_ids
            .iter()
            .copied()
            .filter(|s| uncached.binary_search(s).is_err())
            .collect();
        if !rest.is_empty() {
            match client.query(&st.stream_versions, &[&rest]).await {
                Ok(rows) => version_rows.extend(rows),
                Err(e) => return Err(rollback(client, e).await),
            }
        }
    }
    for row in &version_rows {
        let stream: &str = row.get(0);
        let version: i64 = row.get(1);
        if let Ok(i) = stream_ids.binary_search(&stream) {
            versions.insert(stream_ids[i], version as u64);
        }
    }
    let mut commands = stored_commands(&command_rows);
    let mut plan = plan_batch(
        batch,
        versions.clone(),
        &mut commands.clone(),
        head_position as u64,
        previous_hash,
        recorded_at,
    );
    if command_check == CommandIds::AssumeNew {
        // A refused append may be the repeat of one already written (its expected
        // version no longer holds because it was written): look its command id up.
        let suspects: Vec<Uuid> = batch
            .iter()
            .zip(&plan.results)
            .filter(|(_, r)| {
                matches!(
                    r,
                    Err(StoreError::WrongExpectedVersion { .. } | StoreError::StreamMoved { .. })
                )
            })
            .filter_map(|(job, _)| job.append.command_id)
            .collect();
        if !suspects.is_empty() {
            let rows = match client.query(&st.commands, &[&suspects]).await {
                Ok(rows) => rows,
                Err(e) => return Err(rollback(client, e).await),
            };
            if !rows.is_empty() {
                commands.extend(stored_commands(&rows));
                plan = plan_batch(
                    batch,
                    versions,
                    &mut commands,
                    head_position as u64,
                    previous_hash,
                    recorded_at,
                );
            }
        }
    }
    let Plan {
        events,
        results,
        position,
        previous_hash,
        versions,
    } = plan;

    if events.positions.is_empty() {
        // Nothing to write (all conflicts or replays): release the lock.
        client.batch_execute("ROLLBACK").await.map_err(db_error)?;
        remember(cache, &versions, head_position as u64);
        return Ok(Written {
            results,
            last_position: None,
        });
    }

    let head = position as i64;

    // Round trip 2: the writes, the head, the notification (delivered on commit), and
    // the commit itself.
    // Round trips 2 and 3: the events by binary COPY (the cheapest bulk path into
    // PostgreSQL), then the command results, the head, the notification (delivered
    // on commit) and the commit itself, pipelined.
    let copied = match copy_events(client, &st.copy_events, &events, recorded_at).await {
        Ok(n) => n,
        Err(e) => return Err(rollback(client, e).await),
    };
    let head_hash = previous_hash.as_slice();
    let head_params: [&(dyn ToSql + Sync); 4] = [&head, &head_hash, &NOTIFY_CHANNEL, &recorded_at];
    let (moved, committed) = futures::join!(
        client.query_one(&st.move_head, &head_params),
        client.batch_execute("COMMIT"),
    );
    let outcome = (|| {
        moved?;
        committed?;
        Ok::<_, tokio_postgres::Error>(copied)
    })();
    match outcome {
        Ok(copied) => {
            debug_assert_eq!(copied as usize, events.positions.len());
            remember(cache, &versions, position);
            Ok(Written {
                results,
                last_position: Some(position),
            })
        }
        Err(e) => Err(rollback(client, e).await),
    }
}

/// A batch decided in memory: the rows to write and each append's result.
struct Plan<'a> {
    events: EventColumns<'a>,
    results: Vec<Result<AppendResult, StoreError>>,
    /// The head after the batch.
    position: u64,
    /// The chain's hash after the batch.
    previous_hash: [u8; 32],
    /// Every stream's version after the batch.
    versions: HashMap<&'a str, u64>,
}

/// Decides each append in arrival order against the streams' versions (and the
/// appends before it); accepted ones get positions, versions and hashes.
fn plan_batch<'a>(
    batch: &'a [AppendJob],
    mut versions: HashMap<&'a str, u64>,
    commands: &mut HashMap<Uuid, StoredCommand>,
    head_position: u64,
    mut previous_hash: [u8; 32],
    recorded_at: DateTime<Utc>,
) -> Plan<'a> {
    let mut position = head_position;
    let mut events = EventColumns::default();
    let mut results = Vec::with_capacity(batch.len());
    for job in batch {
        let append = &job.append;
        let current = versions
            .get(append.stream_id.as_str())
            .copied()
            .unwrap_or(0);
        let previous = append.command_id.and_then(|id| commands.get(&id));
        let version_of = |stream: &str| versions.get(stream).copied().unwrap_or(0);
        let first_version = match decide(append, current, version_of, previous) {
            Ok(Decision::Replay(result)) => {
                results.push(Ok(result));
                continue;
            }
            Ok(Decision::Write { first_version }) => first_version,
            Err(e) => {
                results.push(Err(e));
                continue;
            }
        };
        let first_position = position + 1;
        for (i, event) in append.events.iter().enumerate() {
            position += 1;
            let version = first_version + i as u64;
            let hash = chain_hash(
                &previous_hash,
                &ChainedFields {
                    position,
                    stream_id: &append.stream_id,
                    version,
                    event_id: event.event_id,
                    event_type: &event.event_type,
                    schema_version: event.schema_version,
                    canonical_data: &event.canonical_data,
                    canonical_metadata: &event.canonical_metadata,
                    recorded_at,
                },
            );
            previous_hash = hash;
            events.positions.push(position as i64);
            events.stream_ids.push(&append.stream_id);
            events.versions.push(version as i64);
            events.event_ids.push(event.event_id);
            events.types.push(&event.event_type);
            events.schema_versions.push(event.schema_version as i32);
            events.data.push(RawJson(&event.canonical_data));
            events.metadata.push(RawJson(&event.canonical_metadata));
            events.hashes.push(hash.to_vec());
            events.command_ids.push(None);
            events.fingerprints.push(None);
            events.append_sizes.push(None);
        }
        let stream_version = first_version + append.events.len() as u64 - 1;
        versions.insert(&append.stream_id, stream_version);
        let result = AppendResult {
            first_position,
            last_position: position,
            stream_version,
        };
        if let Some(command_id) = append.command_id {
            commands.insert(
                command_id,
                StoredCommand {
                    fingerprint: append.fingerprint,
                    result,
                },
            );
            let first = events.positions.len() - append.events.len();
            events.command_ids[first] = Some(command_id);
            events.fingerprints[first] = Some(&append.fingerprint);
            events.append_sizes[first] = Some(append.events.len() as i32);
        }
        results.push(Ok(result));
    }
    Plan {
        events,
        results,
        position,
        previous_hash,
        versions,
    }
}

fn stored_commands(rows: &[tokio_postgres::Row]) -> HashMap<Uuid, StoredCommand> {
    rows.iter()
        .map(|r| {
            let fingerprint: &[u8] = r.get(1);
            let mut fp = [0u8; 32];
            if fingerprint.len() == 32 {
                fp.copy_from_slice(fingerprint);
            }
            let first_position = r.get::<_, i64>(2) as u64;
            let first_version = r.get::<_, i64>(3) as u64;
            let size = u64::from(r.get::<_, i32>(4).max(1).unsigned_abs());
            let result = AppendResult {
                first_position,
                last_position: first_position + size - 1,
                stream_version: first_version + size - 1,
            };
            (
                r.get(0),
                StoredCommand {
                    fingerprint: fp,
                    result,
                },
            )
        })
        .collect()
}

/// After a commit (or a read under the lock) at `head`, the batch's versions are exact.
fn remember(cache: &mut VersionCache, versions: &HashMap<&str, u64>, head: u64) {
    if cache.versions.len() + versions.len() > VERSION_CACHE_MAX_STREAMS {
        cache.invalidate();
    }
    for (stream, version) in versions {
        match cache.versions.get_mut(*stream) {
            Some(v) => *v = *version,
            None => {
                cache.versions.insert((*stream).to_owned(), *version);
            }
        }
    }
    cache.head = Some(head);
}

async fn copy_events(
    client: &Client,
    copy: &Statement,
    events: &EventColumns<'_>,
    recorded_at: DateTime<Utc>,
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(copy).await?;
    let writer = BinaryCopyInWriter::new(
        sink,
        &[
            Type::INT8,
            Type::TEXT,
            Type::INT8,
            Type::UUID,
            Type::TEXT,
            Type::INT4,
            Type::JSON,
            Type::JSON,
            Type::TIMESTAMPTZ,
            Type::BYTEA,
            Type::UUID,
            Type::BYTEA,
            Type::INT4,
        ],
    );
    futures::pin_mut!(writer);
    for i in 0..events.positions.len() {
        let hash = events.hashes[i].as_slice();
        writer
            .as_mut()
            .write(&[
                &events.positions[i],
                &events.stream_ids[i],
                &events.versions[i],
                &events.event_ids[i],
                &events.types[i],
                &events.schema_versions[i],
                &events.data[i],
                &events.metadata[i],
                &recorded_at,
                &hash,
                &events.command_ids[i],
                &events.fingerprints[i],
                &events.append_sizes[i],
            ])
            .await?;
    }
    writer.finish().await
}

/// Ends a failed transaction (a COMMIT after an error already rolled back; the extra
/// ROLLBACK is then a harmless warning) and maps the error.
async fn rollback(client: &Client, e: tokio_postgres::Error) -> StoreError {
    if !client.is_closed() {
        let _ = client.batch_execute("ROLLBACK").await;
    }
    db_error(e)
}

/// Names the cause of a single append's failure where the database can tell it.
async fn explain_failure(conn: &Connection, append: &PreparedAppend, e: StoreError) -> StoreError {
    let ids: Vec<Uuid> = append.events.iter().map(|e| e.event_id).collect();
    match conn
        .client
        .query_opt(&conn.statements.existing_event, &[&ids])
        .await
    {
        Ok(Some(row)) => StoreError::DuplicateEventId {
            event_id: row.get(0),
        },
        _ => e,
    }
}

/// JSON that is already canonical text, sent as `json` without re-serializing.
#[derive(Debug)]
struct RawJson<'a>(&'a [u8]);

impl ToSql for RawJson<'_> {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // json's binary format is the text itself.
        out.put_slice(self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSON
    }

    to_sql_checked!();
}
