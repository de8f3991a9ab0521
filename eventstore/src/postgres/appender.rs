//! Group commit: one task per process owns a connection, drains the queue of
//! appends, and writes each drained batch in one transaction.
//!
//! Per batch, four round trips and one fsync:
//! 1. `BEGIN`, take the writers' advisory lock ([`LOG_WRITERS_LOCK_KEY`]) and the
//!    `log_head` row lock, and read the versions of the batch's streams
//!    and the first results of its command ids (pipelined: sent together, answered in
//!    order, all after the lock is held).
//! 2. In memory, decide every append in arrival order against those versions (and the
//!    appends before it in the batch); assign positions and versions to the accepted
//!    ones. Then `COPY` the events in binary, chaining their hashes as the rows are
//!    encoded, and insert the command results, move the head, `NOTIFY` and `COMMIT`
//!    (pipelined again).
//!
//! Each append succeeds or fails on its own expected version. If the transaction
//! itself fails (say, an event id that is already in the log), nothing of the batch
//! is written and its appends are retried one per transaction, so only the faulty
//! one fails.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::SinkExt;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, CopyInSink, NoTls, Statement};
use uuid::Uuid;

use super::versions::STREAM_VERSIONS_SQL;
use super::{advance_head, db_error, PostgresConfig, LOG_WRITERS_LOCK_KEY, NOTIFY_CHANNEL};
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
    lock_writers: Statement,
    share_writers: Statement,
    lock_head: Statement,
    clock: Statement,
    stream_versions: Statement,
    commands: Statement,
    copy_events: Statement,
    move_head: Statement,
    advance_head: Statement,
    existing_event: Statement,
}

struct Connection {
    client: Client,
    statements: Statements,
    /// [`PostgresConfig::kept_answers`], and its statement once prepared.
    kept_answers_sql: Option<String>,
    kept_answers: tokio::sync::OnceCell<Statement>,
}

impl Connection {
    /// The statement that finds which of `guards` have a kept answer; `None` when
    /// there is nothing to look up. Prepared on first use: the record it reads
    /// belongs to the store's user, which may create it after the store starts.
    async fn kept_answers(&self, guards: &[Uuid]) -> Result<Option<&Statement>, StoreError> {
        let Some(sql) = self.kept_answers_sql.as_deref() else {
            return Ok(None);
        };
        if guards.is_empty() {
            return Ok(None);
        }
        self.kept_answers
            .get_or_try_init(|| self.client.prepare(sql))
            .await
            .map(Some)
            .map_err(db_error)
    }
}

/// The guard keys of `batch`'s appends, each once.
fn batch_guards(batch: &[AppendJob]) -> Vec<Uuid> {
    let mut keys: Vec<Uuid> = batch
        .iter()
        .flat_map(|j| j.append.guards.iter().copied())
        .collect();
    keys.sort_unstable();
    keys.dedup();
    keys
}

/// The rows of the kept-answers statement for `guards` (none without a statement).
async fn read_kept_answers(
    client: &Client,
    statement: Option<&Statement>,
    guards: &Vec<Uuid>,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    match statement {
        Some(statement) => client.query(statement, &[guards]).await,
        None => Ok(Vec::new()),
    }
}

/// The keys in rows of the kept-answers statement.
fn answered_keys(rows: &[tokio_postgres::Row]) -> HashSet<Uuid> {
    rows.iter().map(|row| row.get(0)).collect()
}

pub(crate) async fn run(
    pg: tokio_postgres::Config,
    config: PostgresConfig,
    mut jobs: mpsc::Receiver<Vec<AppendJob>>,
    head: Arc<watch::Sender<u64>>,
) {
    let mut appender = Appender {
        pg,
        config,
        head,
        cache: VersionCache::default(),
        slots: [Slot::default(), Slot::default()],
        in_flight: VecDeque::with_capacity(2),
        next: 0,
        tip: None,
        unchained_until: None,
        last_head_move: None,
    };
    let mut batch: Vec<AppendJob> = Vec::new();
    let mut previous_batch_len = 0usize;
    loop {
        // Wait for one append (settling commits as they end), then take whatever else
        // is already queued, up to the batch bound: under load the queue fills while
        // the previous batch commits.
        let first = if appender.in_flight.is_empty() {
            jobs.recv().await
        } else {
            tokio::select! {
                job = jobs.recv() => job,
                (slot, commit) = appender.oldest_commit() => {
                    appender.settled(slot, commit).await;
                    continue;
                }
            }
        };
        let Some(first) = first else {
            appender.drain().await;
            return;
        };
        let mut events: usize = first.iter().map(|j| j.append.events.len()).sum();
        batch.extend(first);
        let mut lingered = 0;
        loop {
            while events < appender.config.append_batch_max_events {
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
                || events >= appender.config.append_batch_max_events
                || lingered >= APPEND_LINGER_YIELDS_MAX
            {
                break;
            }
            tokio::task::yield_now().await;
            lingered += 1;
        }
        previous_batch_len = batch.len();
        appender.write(std::mem::take(&mut batch), events).await;
    }
}

/// Where the log's chain ends once the batches this appender has sent commit: the
/// position, hash and time the next chained batch continues from.
#[derive(Clone, Copy)]
struct Tip {
    position: u64,
    hash: [u8; 32],
    recorded_at: DateTime<Utc>,
}

/// How long batches are written the ordinary way after a chained one was refused
/// (most likely another process appending: chaining would keep colliding with it).
const UNCHAINED_AFTER_REFUSAL: Duration = Duration::from_secs(1);

/// Two connections, taking turns: while one commits a batch (the fsync, about a
/// millisecond here), the other copies the next batch's rows in. See [`chain_batch`].
struct Appender {
    pg: tokio_postgres::Config,
    config: PostgresConfig,
    head: Arc<watch::Sender<u64>>,
    cache: VersionCache,
    slots: [Slot; 2],
    /// Slots whose commit is running, oldest first.
    in_flight: VecDeque<usize>,
    /// The slot the next batch goes to.
    next: usize,
    /// `None` when the next batch must lock the head and read it (at start, after a
    /// failure): chaining needs a tip this appender wrote itself.
    tip: Option<Tip>,
    unchained_until: Option<Instant>,
    /// Resolves once the last chained batch's head move has run (holding the head
    /// row's lock), or failed.
    last_head_move: Option<oneshot::Receiver<()>>,
}

#[derive(Default)]
struct Slot {
    connection: Option<Arc<Connection>>,
    /// The chained batch whose head move and commit run on this connection.
    committing: Option<JoinHandle<Commit>>,
}

/// How a chained batch's commit ended.
enum Commit {
    /// Committed, and its appends answered.
    Done,
    /// Rolled back (the head was not where the batch expected, or it waited too
    /// long for it): its appends are still to be answered.
    Refused(Vec<AppendJob>),
    /// The connection failed or the commit timed out: its appends were answered with
    /// the error, since the outcome is unknown.
    Lost,
}

impl Appender {
    /// Writes `batch` and answers its appends, now or when its commit ends.
    async fn write(&mut self, batch: Vec<AppendJob>, events: usize) {
        let slot = self.next;
        self.next = 1 - slot;
        // The slot's connection is free once the batch it took two batches ago has
        // settled (normally long since).
        while self.slots[slot].committing.is_some() {
            let Some(&oldest) = self.in_flight.front() else {
                break;
            };
            let commit = self.oldest_commit().await.1;
            self.settled(oldest, commit).await;
        }
        let conn = match self.connection(slot).await {
            Ok(conn) => conn,
            Err(e) => return answer_all(batch, &e),
        };
        let chainable = self
            .unchained_until
            .is_none_or(|until| Instant::now() >= until);
        let tip = self
            .tip
            .filter(|tip| chainable && self.cache.head == Some(tip.position));
        let Some(tip) = tip else {
            self.drain().await;
            return self.write_locked(slot, batch, events).await;
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            self.config.append_batch_timeout,
            chain_batch(&conn, &batch, &mut self.cache, tip),
        )
        .await;
        match outcome {
            Ok(Ok(chained)) => {
                tracing::debug!(
                    appends = batch.len(),
                    events,
                    micros = started.elapsed().as_micros() as u64,
                    "chained batch copied"
                );
                self.tip = (!chained.cache_dropped).then_some(chained.tip);
                let (moved, head_move) = oneshot::channel();
                let task = commit_chained(
                    conn,
                    batch,
                    chained.results,
                    Chain {
                        from: tip,
                        to: chained.tip,
                        ahead: self.last_head_move.replace(head_move),
                        moved,
                    },
                    self.head.clone(),
                    self.config.append_batch_timeout,
                );
                self.slots[slot].committing = Some(tokio::spawn(task));
                self.in_flight.push_back(slot);
            }
            Ok(Err(unchained)) => {
                // Nothing was committed. Write the batch the ordinary way (which
                // waits for the batch ahead to commit); only a failure of the database
                // stops chaining for a while.
                self.tip = None;
                self.cache.invalidate();
                if conn.client.is_closed() {
                    self.slots[slot].connection = None;
                }
                if let Unchained::Failed(e) = unchained {
                    tracing::debug!(error = %e, "a chained batch failed; writing it again");
                    self.unchained_until = Some(Instant::now() + UNCHAINED_AFTER_REFUSAL);
                }
                self.drain().await;
                self.write_locked(slot, batch, events).await;
            }
            Err(_) => {
                self.slots[slot].connection = None;
                self.tip = None;
                self.cache.invalidate();
                answer_all(batch, &commit_timed_out());
            }
        }
    }

    /// Settles every running commit.
    async fn drain(&mut self) {
        while let Some(&slot) = self.in_flight.front() {
            let commit = self.oldest_commit().await.1;
            self.settled(slot, commit).await;
        }
    }

    /// The end of the oldest running commit. Cancel safe: the handle is only polled.
    async fn oldest_commit(&mut self) -> (usize, Commit) {
        let Some(&slot) = self.in_flight.front() else {
            return std::future::pending().await;
        };
        let commit = match self.slots[slot].committing.as_mut() {
            Some(handle) => handle.await.unwrap_or(Commit::Lost),
            None => Commit::Done,
        };
        (slot, commit)
    }

    /// Acts on the end of `slot`'s commit, the oldest one running.
    async fn settled(&mut self, slot: usize, commit: Commit) {
        debug_assert_eq!(self.in_flight.front(), Some(&slot));
        self.in_flight.pop_front();
        self.slots[slot].committing = None;
        match commit {
            Commit::Done => {}
            Commit::Lost => {
                self.slots[slot].connection = None;
                self.tip = None;
                self.cache.invalidate();
            }
            Commit::Refused(mut jobs) => {
                // A batch chained onto this one cannot commit either (its head move
                // expects this one's): wait for it and write both again, in order.
                while let Some(&later) = self.in_flight.front() {
                    let commit = self.oldest_commit().await.1;
                    self.in_flight.pop_front();
                    self.slots[later].committing = None;
                    match commit {
                        Commit::Refused(more) => jobs.extend(more),
                        Commit::Lost => self.slots[later].connection = None,
                        Commit::Done => {}
                    }
                }
                tracing::debug!(
                    appends = jobs.len(),
                    "a chained commit was refused; writing it again"
                );
                self.tip = None;
                self.cache.invalidate();
                self.unchained_until = Some(Instant::now() + UNCHAINED_AFTER_REFUSAL);
                let events = jobs.iter().map(|j| j.append.events.len()).sum();
                self.write_locked(slot, jobs, events).await;
            }
        }
    }

    /// The slot's connection, opened if need be.
    async fn connection(&mut self, slot: usize) -> Result<Arc<Connection>, StoreError> {
        if let Some(conn) = &self.slots[slot].connection {
            return Ok(conn.clone());
        }
        let conn = Arc::new(connect(&self.pg, self.config.kept_answers.clone()).await?);
        self.slots[slot].connection = Some(conn.clone());
        Ok(conn)
    }

    /// The ordinary way: lock the head first, then write (see [`write_batch`]). If
    /// the batch fails as a whole, its appends are written one per transaction, so
    /// only the one at fault fails. Nothing may be in flight: a chained batch's rows
    /// sit at the positions this one would read as free, and its head move would wait
    /// for this lock while this waits for its rows.
    async fn write_locked(&mut self, slot: usize, mut batch: Vec<AppendJob>, events: usize) {
        debug_assert!(self.in_flight.is_empty());
        self.tip = None;
        // Locked batches commit before the next batch starts: nothing to wait for.
        self.last_head_move = None;
        let conn = match self.connection(slot).await {
            Ok(conn) => conn,
            Err(e) => return answer_all(batch, &e),
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            self.config.append_batch_timeout,
            write_batch(&conn, &batch, &mut self.cache, CommandIds::AssumeNew),
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
                    advance_head(&self.head, last);
                }
                self.tip = Some(written.tip);
                for (job, result) in batch.drain(..).zip(written.results) {
                    let _ = job.reply.send(result);
                }
            }
            Ok(Err(e)) if conn.client.is_closed() || e.is_transient() => {
                // The outcome of the commit is unknown: report it, drop the connection.
                self.slots[slot].connection = None;
                answer_all(batch, &e);
            }
            Ok(Err(_)) => {
                // The batch failed as a whole: retry each append alone, so only the one
                // at fault fails.
                for job in batch.drain(..) {
                    let single = std::slice::from_ref(&job);
                    let result = match write_batch(
                        &conn,
                        single,
                        &mut self.cache,
                        CommandIds::Checked,
                    )
                    .await
                    {
                        Ok(mut written) => {
                            if let Some(last) = written.last_position {
                                advance_head(&self.head, last);
                            }
                            self.tip = Some(written.tip);
                            written.results.pop().unwrap_or_else(|| {
                                Err(StoreError::Database("no result for an append".into()))
                            })
                        }
                        Err(e) => {
                            self.tip = None;
                            Err(explain_failure(&conn, &job.append, e).await)
                        }
                    };
                    let _ = job.reply.send(result);
                }
            }
            Err(_) => {
                self.slots[slot].connection = None;
                answer_all(batch, &commit_timed_out());
            }
        }
    }
}

fn answer_all(batch: Vec<AppendJob>, e: &StoreError) {
    for job in batch {
        let _ = job.reply.send(Err(e.clone()));
    }
}

fn commit_timed_out() -> StoreError {
    StoreError::Unavailable("a group commit timed out; its outcome is unknown".into())
}

/// Why a batch was not chained; it is then written the ordinary way.
enum Unchained {
    /// Deciding it needs reads under the lock (an append refused on its expected
    /// version may be the repeat of a written command: its id is looked up).
    NeedsLock,
    /// The database refused the batch (an event id or command id already in the
    /// log, rows of another process at its positions, a lost connection).
    Failed(StoreError),
}

/// A chained batch whose rows are in, ready for its head move and commit.
struct Chained {
    results: Vec<Result<AppendResult, StoreError>>,
    tip: Tip,
    /// The version cache was full and started afresh: streams of the batch ahead are
    /// no longer in it, so the next batch must not be chained.
    cache_dropped: bool,
}

/// Chaining: the batch is written on top of `tip`, where the batch ahead (committing
/// on the other connection) leaves the chain, without waiting for that commit. Its
/// transaction copies its rows in at the positions after `tip`, deciding every append
/// against the version cache (which already holds the batch ahead's streams) and the
/// table for streams not in it; then [`commit_chained`] moves the head with
/// `log_advance_head`, which takes the head row's lock (waiting for the batch ahead
/// to end) and moves it only if it is at `tip`, position and hash. So:
/// - positions stay gapless and commit in order: this batch commits only after the
///   one ahead committed, and only if nothing else moved the head in between;
/// - if the batch ahead fails, this one fails too and both are written again;
/// - another process's appends break the chain: its rows take the positions first
///   (this COPY then fails on the primary key) or its head move comes first (the
///   head check fails). Either way the batch is written again the ordinary way, and
///   chaining pauses for [`UNCHAINED_AFTER_REFUSAL`].
/// - the transaction holds the writers' advisory lock shared from its first
///   statement: a batch written the ordinary way (another process's, or this one's
///   after a failure) takes it exclusively before the head, so it waits for this
///   batch to end instead of locking the head and then waiting for these rows while
///   this batch's head move waits for it. Two chained batches of different processes
///   can still wait for each other's rows and head move; `log_advance_head`'s lock
///   timeout ends that.
///
/// Refusals are answered only if the batch commits, so a refusal decided against
/// the batch ahead's versions stands only if that batch is in the log.
///
/// Two round trips: `BEGIN`, the shared lock, the clock, the versions of uncached streams and the
/// `COPY` statement; then the rows.
async fn chain_batch(
    conn: &Connection,
    batch: &[AppendJob],
    cache: &mut VersionCache,
    tip: Tip,
) -> Result<Chained, Unchained> {
    let st = &conn.statements;
    let client = &conn.client;
    let stream_ids = batch_streams(batch);
    let uncached: Vec<&str> = stream_ids
        .iter()
        .copied()
        .filter(|s| !cache.versions.contains_key(*s))
        .collect();
    let guards = batch_guards(batch);
    let kept_answers = conn
        .kept_answers(&guards)
        .await
        .map_err(Unchained::Failed)?;
    let version_params: [&(dyn ToSql + Sync); 1] = [&uncached];
    // Streams of the batch ahead, and of every batch since the cache last started
    // afresh, are cached: under load most batches have nothing to read.
    let read_versions = async {
        if uncached.is_empty() {
            Ok(Vec::new())
        } else {
            client.query(&st.stream_versions, &version_params).await
        }
    };
    let (begin, shared, clock_row, version_rows, answer_rows, sink) = futures::join!(
        client.batch_execute("BEGIN"),
        client.execute(&st.share_writers, &[&LOG_WRITERS_LOCK_KEY]),
        client.query_one(&st.clock, &[]),
        read_versions,
        read_kept_answers(client, kept_answers, &guards),
        client.copy_in::<_, Bytes>(&st.copy_events),
    );
    let read = (|| {
        begin?;
        shared?;
        Ok::<_, tokio_postgres::Error>((clock_row?, version_rows?, answer_rows?, sink?))
    })();
    let (clock_row, version_rows, answer_rows, sink) = match read {
        Ok(read) => read,
        Err(e) => return Err(Unchained::Failed(rollback(client, e).await)),
    };
    let clock: DateTime<Utc> = clock_row.get(0);
    let recorded_at = clock.max(tip.recorded_at);
    let mut versions: HashMap<&str, u64> = HashMap::with_capacity(stream_ids.len());
    for stream in &stream_ids {
        if let Some(v) = cache.versions.get(*stream) {
            versions.insert(stream, *v);
        }
    }
    add_read_versions(&mut versions, &stream_ids, &version_rows);
    let answered = answered_keys(&answer_rows);
    let plan = plan_batch(
        batch,
        versions,
        &mut HashMap::new(),
        tip.position,
        &answered,
    );
    let suspect = batch.iter().zip(&plan.results).any(|(job, r)| {
        job.append.command_id.is_some()
            && matches!(
                r,
                Err(StoreError::WrongExpectedVersion { .. } | StoreError::StreamMoved { .. })
            )
    });
    let nothing = EventColumns::default();
    let rows = if suspect { &nothing } else { &plan.events };
    let hash = match write_rows(sink, rows, recorded_at, tip.hash).await {
        Ok((_, hash)) => hash,
        Err(e) => return Err(Unchained::Failed(rollback(client, e).await)),
    };
    if suspect {
        let _ = client.batch_execute("ROLLBACK").await;
        return Err(Unchained::NeedsLock);
    }
    let cache_dropped = remember(cache, &plan.versions, plan.position);
    Ok(Chained {
        results: plan.results,
        tip: Tip {
            position: plan.position,
            hash,
            recorded_at,
        },
        cache_dropped,
    })
}

/// Where a chained batch moves the head, and its place in the order of head moves.
struct Chain {
    from: Tip,
    to: Tip,
    /// The head move of the batch ahead. The two transactions run on different
    /// connections and tasks, so nothing else orders them: a head move that ran first
    /// would find the head short of `from` and fail. Once the one ahead has run, it
    /// holds the head row's lock until its commit, and this one waits for that.
    ahead: Option<oneshot::Receiver<()>>,
    /// Told once this batch's head move has run.
    moved: oneshot::Sender<()>,
}

/// The second half of a chained batch, on a task of its own: move the head from
/// `from` to `to` (after the batch ahead's head move, waiting for its commit) and
/// commit; then answer the appends.
async fn commit_chained(
    conn: Arc<Connection>,
    batch: Vec<AppendJob>,
    results: Vec<Result<AppendResult, StoreError>>,
    chain: Chain,
    head: Arc<watch::Sender<u64>>,
    limit: Duration,
) -> Commit {
    let Chain {
        from,
        to,
        ahead,
        moved,
    } = chain;
    let client = &conn.client;
    let from_position = from.position as i64;
    let from_hash = from.hash.as_slice();
    let to_position = to.position as i64;
    let to_hash = to.hash.as_slice();
    let params: [&(dyn ToSql + Sync); 6] = [
        &from_position,
        &from_hash,
        &to_position,
        &to_hash,
        &to.recorded_at,
        &NOTIFY_CHANNEL,
    ];
    let committed = tokio::time::timeout(limit, async {
        if let Some(ahead) = ahead {
            // An error (the batch ahead gone) is as good: its head move is over.
            let _ = ahead.await;
        }
        let head_moved = async {
            let result = client.execute(&conn.statements.advance_head, &params).await;
            let _ = moved.send(());
            result
        };
        let (head_moved, committed) = futures::join!(head_moved, client.batch_execute("COMMIT"));
        // After a failed statement, COMMIT ends the transaction as a rollback.
        head_moved?;
        committed
    })
    .await;
    match committed {
        Ok(Ok(())) => {
            if to.position > from.position {
                advance_head(&head, to.position);
            }
            for (job, result) in batch.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
            Commit::Done
        }
        Ok(Err(e)) if e.as_db_error().is_some() && !client.is_closed() => {
            tracing::debug!(
                error = %e.as_db_error().map_or_else(|| e.to_string(), |d| d.message().to_owned()),
                "a chained batch's head move was refused"
            );
            Commit::Refused(batch)
        }
        Ok(Err(e)) => {
            answer_all(batch, &db_error(e));
            Commit::Lost
        }
        Err(_) => {
            answer_all(batch, &commit_timed_out());
            Commit::Lost
        }
    }
}

async fn connect(
    pg: &tokio_postgres::Config,
    kept_answers_sql: Option<String>,
) -> Result<Connection, StoreError> {
    let (client, connection) = pg.connect(NoTls).await.map_err(db_error)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "appender connection ended");
        }
    });
    // Every statement of a batch is prepared once and runs thousands of times a
    // second. With an array parameter the planner's estimate for a custom plan
    // always beats the generic one, so it would plan the stream-versions lookup
    // afresh on every batch (about 5% of the backend's time under load).
    client
        .batch_execute("SET plan_cache_mode = force_generic_plan")
        .await
        .map_err(db_error)?;
    let prepare = |sql: &'static str| {
        let client = &client;
        async move { client.prepare(sql).await.map_err(db_error) }
    };
    let statements = Statements {
        lock_writers: prepare("SELECT pg_advisory_xact_lock($1)").await?,
        share_writers: prepare("SELECT pg_advisory_xact_lock_shared($1)").await?,
        lock_head: prepare("SELECT position, hash, recorded_at FROM log_head FOR UPDATE").await?,
        // Sent right behind the lock, so it runs once the lock is held: events are
        // stamped with the time they were ordered, not when their transaction began
        // (which, for a transaction that waited on the lock, may be before the time
        // of the batch ahead of it).
        clock: prepare("SELECT clock_timestamp()").await?,
        stream_versions: prepare(STREAM_VERSIONS_SQL).await?,
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
        advance_head: prepare("SELECT log_advance_head($1, $2, $3, $4, $5, $6)").await?,
        existing_event: prepare(
            "SELECT event_id FROM events WHERE event_id = ANY($1::uuid[]) LIMIT 1",
        )
        .await?,
    };
    Ok(Connection {
        client,
        statements,
        kept_answers_sql,
        kept_answers: tokio::sync::OnceCell::new(),
    })
}

struct Written {
    results: Vec<Result<AppendResult, StoreError>>,
    last_position: Option<u64>,
    /// The chain's end after this transaction: where a chained batch may continue.
    tip: Tip,
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

    let stream_ids = batch_streams(batch);
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
    // first poll, so the server sees BEGIN, the locks, then the reads (empty lookups
    // are cheap no-ops). The writers' lock, exclusive, waits for every chained batch
    // in flight (of any process) to end, so no uncommitted rows lie past the head.
    let guards = batch_guards(batch);
    let kept_answers = conn.kept_answers(&guards).await?;
    let version_params: [&(dyn ToSql + Sync); 1] = [&uncached];
    let command_params: [&(dyn ToSql + Sync); 1] = [&command_ids];
    let (begin, writers, head_row, clock_row, version_rows, command_rows, answer_rows) = futures::join!(
        client.batch_execute("BEGIN"),
        client.execute(&st.lock_writers, &[&LOG_WRITERS_LOCK_KEY]),
        client.query_one(&st.lock_head, &[]),
        client.query_one(&st.clock, &[]),
        client.query(&st.stream_versions, &version_params),
        client.query(&st.commands, &command_params),
        read_kept_answers(client, kept_answers, &guards),
    );
    let read = (|| {
        begin?;
        writers?;
        Ok::<_, tokio_postgres::Error>((
            head_row?,
            clock_row?,
            version_rows?,
            command_rows?,
            answer_rows?,
        ))
    })();
    let (head_row, clock_row, mut version_rows, command_rows, answer_rows) = match read {
        Ok(rows) => rows,
        Err(e) => return Err(rollback(client, e).await),
    };
    let answered = answered_keys(&answer_rows);

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
    add_read_versions(&mut versions, &stream_ids, &version_rows);
    let mut commands = stored_commands(&command_rows);
    let mut plan = plan_batch(
        batch,
        versions.clone(),
        &mut commands.clone(),
        head_position as u64,
        &answered,
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
                    &answered,
                );
            }
        }
    }
    let Plan {
        events,
        results,
        position,
        versions,
    } = plan;

    if events.positions.is_empty() {
        // Nothing to write (all conflicts or replays): release the lock.
        client.batch_execute("ROLLBACK").await.map_err(db_error)?;
        remember(cache, &versions, head_position as u64);
        return Ok(Written {
            results,
            last_position: None,
            tip: Tip {
                position: head_position as u64,
                hash: previous_hash,
                recorded_at: last_recorded_at,
            },
        });
    }

    let head = position as i64;

    // Round trip 2: the writes, the head, the notification (delivered on commit), and
    // the commit itself.
    // Round trips 2 and 3: the events by binary COPY (the cheapest bulk path into
    // PostgreSQL), then the command results, the head, the notification (delivered
    // on commit) and the commit itself, pipelined.
    let (copied, last_hash) =
        match copy_events(client, &st.copy_events, &events, recorded_at, previous_hash).await {
            Ok(copied) => copied,
            Err(e) => return Err(rollback(client, e).await),
        };
    let head_hash = last_hash.as_slice();
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
                tip: Tip {
                    position,
                    hash: last_hash,
                    recorded_at,
                },
            })
        }
        Err(e) => Err(rollback(client, e).await),
    }
}

/// The streams a batch appends to and the streams its appends read (their
/// preconditions), sorted, each once.
fn batch_streams(batch: &[AppendJob]) -> Vec<&str> {
    let mut stream_ids: Vec<&str> = batch
        .iter()
        .flat_map(|j| {
            std::iter::once(j.append.stream_id.as_str())
                .chain(j.append.preconditions.iter().map(|p| p.stream_id.as_str()))
        })
        .collect();
    stream_ids.sort_unstable();
    stream_ids.dedup();
    stream_ids
}

/// Adds the versions read by `stream_versions` (rows of stream id and version) for
/// streams of `stream_ids`, borrowing their names from it.
fn add_read_versions<'a>(
    versions: &mut HashMap<&'a str, u64>,
    stream_ids: &[&'a str],
    rows: &[tokio_postgres::Row],
) {
    for row in rows {
        let stream: &str = row.get(0);
        let version: i64 = row.get(1);
        if let Ok(i) = stream_ids.binary_search(&stream) {
            versions.insert(stream_ids[i], version as u64);
        }
    }
}

/// A batch decided in memory: the rows to write and each append's result.
struct Plan<'a> {
    events: EventColumns<'a>,
    results: Vec<Result<AppendResult, StoreError>>,
    /// The head after the batch.
    position: u64,
    /// Every stream's version after the batch.
    versions: HashMap<&'a str, u64>,
}

/// Decides each append in arrival order against the streams' versions (and the
/// appends before it); accepted ones get positions and versions. Their hashes are
/// chained as the rows are sent (`write_rows`).
fn plan_batch<'a>(
    batch: &'a [AppendJob],
    mut versions: HashMap<&'a str, u64>,
    commands: &mut HashMap<Uuid, StoredCommand>,
    head_position: u64,
    answered: &HashSet<Uuid>,
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
        let is_answered = |key: &Uuid| answered.contains(key);
        let first_version = match decide(append, current, version_of, previous, is_answered) {
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
            events.positions.push(position as i64);
            events.stream_ids.push(&append.stream_id);
            events.versions.push(version as i64);
            events.event_ids.push(event.event_id);
            events.types.push(&event.event_type);
            events.schema_versions.push(event.schema_version as i32);
            events.data.push(RawJson(&event.canonical_data));
            events.metadata.push(RawJson(&event.canonical_metadata));
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
/// Returns whether the cache was full and started afresh.
fn remember(cache: &mut VersionCache, versions: &HashMap<&str, u64>, head: u64) -> bool {
    let full = cache.versions.len() + versions.len() > VERSION_CACHE_MAX_STREAMS;
    if full {
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
    full
}

/// Copies `events` and returns how many were copied and the chain's hash after
/// them, `previous` being the hash before them.
async fn copy_events(
    client: &Client,
    copy: &Statement,
    events: &EventColumns<'_>,
    recorded_at: DateTime<Utc>,
    previous: [u8; 32],
) -> Result<(u64, [u8; 32]), tokio_postgres::Error> {
    let sink = client.copy_in(copy).await?;
    write_rows(sink, events, recorded_at, previous).await
}

/// About how much of a `COPY` is encoded before it is handed to the connection.
const COPY_CHUNK_BYTES: usize = 32 * 1024;

/// Writes `events` into a started binary `COPY`, chaining their hashes from
/// `previous`, and ends it. Returns how many rows were copied and the last hash.
///
/// The rows go out in chunks of about [`COPY_CHUNK_BYTES`]: the server parses and
/// inserts one chunk while the next is hashed and encoded, where a batch encoded
/// whole would leave the server idle meanwhile (a flash sale's append of 500
/// reservations spends about half a millisecond hashing and encoding). Handing a
/// chunk over waits for the connection to take the one before, which lets it write
/// that one to the socket.
async fn write_rows(
    sink: CopyInSink<Bytes>,
    events: &EventColumns<'_>,
    recorded_at: DateTime<Utc>,
    mut previous: [u8; 32],
) -> Result<(u64, [u8; 32]), tokio_postgres::Error> {
    let mut sink = std::pin::pin!(sink);
    let rows = events.positions.len();
    // Room for the rows (about 400 bytes each) up to a chunk and a row more.
    let mut out = BytesMut::with_capacity((64 + rows * 400).min(COPY_CHUNK_BYTES + 4096));
    out.put_slice(b"PGCOPY\n\xff\r\n\0");
    out.put_i32(0); // flags
    out.put_i32(0); // header extension
    for i in 0..rows {
        // An encoding error is a bug (every value is of its column's type). The row
        // is replaced by one of a single column, which the server refuses, failing
        // the COPY and with it the batch.
        previous = match encode_row(&mut out, events, i, recorded_at, &previous) {
            Ok(hash) => hash,
            Err(e) => {
                tracing::error!(error = %e, "an event row does not encode");
                out.put_i16(1); // a row of one column where 13 are expected
                out.put_i32(-1);
                previous
            }
        };
        if out.len() >= COPY_CHUNK_BYTES && i + 1 < rows {
            let chunk = out.split().freeze();
            sink.send(chunk).await?;
            out.reserve(COPY_CHUNK_BYTES + 4096);
        }
    }
    out.put_i16(-1);
    sink.send(out.freeze()).await?;
    let copied = sink.as_mut().finish().await?;
    Ok((copied, previous))
}

/// Appends row `i` of `events` to `out` in `COPY`'s binary format and returns its
/// hash, chained to `previous`.
fn encode_row(
    out: &mut BytesMut,
    events: &EventColumns<'_>,
    i: usize,
    recorded_at: DateTime<Utc>,
    previous: &[u8; 32],
) -> Result<[u8; 32], Box<dyn std::error::Error + Sync + Send>> {
    const COLUMNS: i16 = 13;
    let hash = chain_hash(
        previous,
        &ChainedFields {
            position: events.positions[i] as u64,
            stream_id: events.stream_ids[i],
            version: events.versions[i] as u64,
            event_id: events.event_ids[i],
            event_type: events.types[i],
            schema_version: events.schema_versions[i] as u32,
            canonical_data: events.data[i].0,
            canonical_metadata: events.metadata[i].0,
            recorded_at,
        },
    );
    let start = out.len();
    let field = |out: &mut BytesMut, value: &dyn ToSql, ty: &Type| {
        let at = out.len();
        out.put_i32(0);
        match value.to_sql_checked(ty, out)? {
            IsNull::Yes => {
                out.truncate(at);
                out.put_i32(-1);
            }
            IsNull::No => {
                let length = i32::try_from(out.len() - at - 4)?;
                out[at..at + 4].copy_from_slice(&length.to_be_bytes());
            }
        }
        Ok::<_, Box<dyn std::error::Error + Sync + Send>>(())
    };
    let row = |out: &mut BytesMut| {
        out.put_i16(COLUMNS);
        field(out, &events.positions[i], &Type::INT8)?;
        field(out, &events.stream_ids[i], &Type::TEXT)?;
        field(out, &events.versions[i], &Type::INT8)?;
        field(out, &events.event_ids[i], &Type::UUID)?;
        field(out, &events.types[i], &Type::TEXT)?;
        field(out, &events.schema_versions[i], &Type::INT4)?;
        field(out, &events.data[i], &Type::JSON)?;
        field(out, &events.metadata[i], &Type::JSON)?;
        field(out, &recorded_at, &Type::TIMESTAMPTZ)?;
        field(out, &hash.as_slice(), &Type::BYTEA)?;
        field(out, &events.command_ids[i], &Type::UUID)?;
        field(out, &events.fingerprints[i], &Type::BYTEA)?;
        field(out, &events.append_sizes[i], &Type::INT4)
    };
    if let Err(e) = row(out) {
        out.truncate(start);
        return Err(e);
    }
    Ok(hash)
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
