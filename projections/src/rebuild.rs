//! Rebuilds without downtime: fill shadow tables from position 0, catch up to the
//! head, then swap them in within one transaction while the live projection keeps
//! serving.
//!
//! The log is read once for all projections being rebuilt: a reader task reads and
//! decodes pages ahead and hands each page to one task per projection, which applies
//! it to its shadow with its own connection (so PostgreSQL works on several batches at
//! once) and moves the shadow's checkpoint (`projection_rebuilds`) in the same
//! transaction. An interrupted rebuild leaves its shadow and checkpoint behind; the
//! next one resumes from there, unless the read model's schema changed meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{ClientWrapper, Object};
use eventstore::privacy::KeyVault;
use eventstore::{EventStore, PostgresStore};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::apply::{Applier, BatchError, Cursor, Target};
use crate::decode::{Batch, Categories};
use crate::error::{db_error, ProjectionError};
use crate::lease::lock_key;
use crate::log::AbortOnDrop;
use crate::schema::{self, create_shadow, index_shadow, shadow_is_indexed, shadow_schema};
use crate::Projection;

/// Events per batch while building a shadow. Large, because a row touched by many
/// events (a SKU's stock, a day's sales) is written once per batch: at 10,000 the
/// rebuild wrote a fifth more rows than at 50,000. A decoded batch of this size takes
/// some tens of MB, and at most three are in memory (read ahead, being applied,
/// being filled).
pub const REBUILD_BATCH_MAX_EVENTS: usize = 50_000;
/// Log events a projection folds in memory before writing: every row is written
/// once per write however many events change it, and a log of a few million events
/// folds into a few hundred MB of rows, so a rebuild of such a log writes once, at
/// the end. The bound keeps a much longer log from holding every row in memory; an
/// interrupted rebuild resumes from its last write.
pub const REBUILD_WRITE_MAX_EVENTS: u64 = 5_000_000;
/// Connections reading and decoding the log at once, at most (one per core).
const LOG_READERS_MAX: usize = 4;
/// Batches the reader may be ahead of the slowest projection.
const READ_AHEAD_PAGES: usize = 1;
/// The build stops catching up and swaps when the head is at most this far ahead;
/// the swap applies the rest inside its transaction.
const SWAP_GAP_MAX_EVENTS: u64 = 2 * REBUILD_BATCH_MAX_EVENTS as u64;
/// Catch-up rounds before the swap; each round reads what was appended during the
/// one before, so they shrink quickly unless appends outpace the rebuild.
const CATCH_UP_ROUNDS_MAX: usize = 8;
/// Attempts per batch when the database fails transiently.
const BATCH_ATTEMPTS_MAX: usize = 5;
/// How long the swap waits for queries on the live tables to finish.
const SWAP_LOCK_TIMEOUT_SECS: u32 = 30;
/// How often progress is reported.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
pub struct RebuildOptions {
    pub batch_max_events: usize,
    /// Log events a projection folds in memory before it writes its rows to the
    /// shadow and moves the shadow's checkpoint.
    pub write_max_events: u64,
    /// Drop a leftover shadow and start from 0 instead of resuming it.
    pub fresh: bool,
}

impl Default for RebuildOptions {
    fn default() -> Self {
        RebuildOptions {
            batch_max_events: REBUILD_BATCH_MAX_EVENTS,
            write_max_events: REBUILD_WRITE_MAX_EVENTS,
            fresh: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum RebuildPhase {
    /// Filling the shadow tables from the log.
    Building,
    /// Creating the shadow's secondary indexes.
    Indexing,
    /// Catching up the last events and swapping the tables in.
    Swapping,
    Done,
}

/// What a progress callback is told, a few times a second.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildProgress {
    pub phase: RebuildPhase,
    pub projections: Vec<Projection>,
    /// Events applied by this run (the slowest projection's).
    pub events_done: u64,
    /// Events this run has to apply up to the head as last seen.
    pub events_total: u64,
    pub events_per_sec: f64,
    pub eta: Option<Duration>,
    pub elapsed: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RebuildReport {
    pub projections: Vec<Projection>,
    /// Where the shadows started (0, or where an interrupted rebuild had got to).
    pub resumed_from: u64,
    /// The checkpoint the rebuilt read models were swapped in at.
    pub position: u64,
    /// Log events read and applied by this run.
    pub events: u64,
    pub elapsed: Duration,
    pub events_per_sec: f64,
}

/// Rebuilds `projections` (all of them for `Projection::ALL`) and swaps the rebuilt
/// tables in. `progress` is called from this task a few times a second.
pub async fn rebuild(
    store: &PostgresStore,
    projections: &[Projection],
    options: &RebuildOptions,
    mut progress: impl FnMut(&RebuildProgress) + Send,
) -> Result<RebuildReport, ProjectionError> {
    let started = Instant::now();
    if projections.is_empty() {
        return Err(ProjectionError::InvalidQuery {
            field: "projections",
            reason: "name at least one projection to rebuild".to_owned(),
        });
    }
    let mut projections = projections.to_vec();
    projections.sort();
    projections.dedup();
    let bounds = Bounds {
        batch_max_events: options.batch_max_events.clamp(1, 100_000),
        write_max_events: options.write_max_events.max(1),
    };

    // The rebuild locks live on a connection of their own, taken out of the pool so
    // that they end with it, whatever happens.
    let mut control = Object::take(store.connection().await?);
    crate::migrate(&mut control).await?;
    for (n, &projection) in projections.iter().enumerate() {
        let key = lock_key("rebuild", projection);
        let row = control
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(db_error)?;
        if !row.get::<_, bool>(0) {
            for &locked in &projections[..n] {
                let _ = control
                    .execute(
                        "SELECT pg_advisory_unlock($1)",
                        &[&lock_key("rebuild", locked)],
                    )
                    .await;
            }
            return Err(ProjectionError::RebuildInProgress(projection));
        }
    }

    let mut workers = Vec::new();
    for &projection in &projections {
        let position = prepare_shadow(&mut control, projection, options.fresh).await?;
        workers.push(Worker {
            applier: Applier::new(projection, Target::Shadow),
            client: store.connection().await?,
            cursor: Cursor {
                position,
                generation: 0,
            },
        });
    }
    let resumed_from = workers.iter().map(|w| w.cursor.position).min().unwrap_or(0);
    let categories = projections
        .iter()
        .fold(Categories::default(), |c, p| c.union(p.categories()));

    let mut report = Reporter {
        projections: projections.clone(),
        started,
        resumed_from,
        total: 0,
    };
    // The first round builds up to the head; later ones catch up with what was
    // appended meanwhile, until the rest is small enough for the swap.
    for round in 0..CATCH_UP_ROUNDS_MAX {
        let head = store.head().await?;
        let gap = head.saturating_sub(min_position(&workers));
        if gap == 0 || (round > 0 && gap <= SWAP_GAP_MAX_EVENTS) {
            break;
        }
        report.total = head - resumed_from;
        workers = build_round(
            store,
            workers,
            categories,
            head,
            bounds,
            &report,
            &mut progress,
        )
        .await?;
    }

    progress(&report.progress(RebuildPhase::Indexing, min_position(&workers)));
    // Each projection's indexes on its worker's connection, all at once.
    futures::future::try_join_all(workers.iter().map(|worker| async move {
        let projection = worker.applier.projection;
        if !shadow_is_indexed(&**worker.client, projection).await? {
            index_shadow(&**worker.client, projection).await?;
        }
        Ok::<_, ProjectionError>(())
    }))
    .await?;
    // Indexing took a while: catch up once more before the swap.
    let head = store.head().await?;
    if head > min_position(&workers) + SWAP_GAP_MAX_EVENTS {
        report.total = head - resumed_from;
        workers = build_round(
            store,
            workers,
            categories,
            head,
            bounds,
            &report,
            &mut progress,
        )
        .await?;
    }

    progress(&report.progress(RebuildPhase::Swapping, min_position(&workers)));
    let position = swap(store, &mut control, workers).await?;
    let done = report.progress(RebuildPhase::Done, position);
    progress(&done);
    Ok(RebuildReport {
        projections,
        resumed_from,
        position,
        events: position.saturating_sub(resumed_from),
        elapsed: started.elapsed(),
        events_per_sec: done.events_per_sec,
    })
}

/// Where the shadow of `projection` starts: a matching leftover is resumed,
/// anything else is dropped and created anew at 0.
async fn prepare_shadow(
    control: &mut ClientWrapper,
    projection: Projection,
    fresh: bool,
) -> Result<u64, ProjectionError> {
    let version = schema::schema_version(projection);
    let leftover = control
        .query_opt(
            "SELECT r.position FROM projection_rebuilds r WHERE r.name = $1 \
             AND r.schema_version = $2 \
             AND EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $3)",
            &[&projection.name(), &version, &shadow_schema(projection)],
        )
        .await
        .map_err(db_error)?;
    if let (Some(row), false) = (leftover, fresh) {
        let position = row.get::<_, i64>(0) as u64;
        tracing::info!(projection = %projection, position, "resuming the shadow of an interrupted rebuild");
        return Ok(position);
    }
    let tx = control.transaction().await.map_err(db_error)?;
    create_shadow(&*tx, projection).await?;
    tx.execute(
        "INSERT INTO projection_rebuilds (name, position, schema_version) VALUES ($1, 0, $2) \
         ON CONFLICT (name) DO UPDATE SET position = 0, schema_version = $2, \
         events_per_sec = 0, started_at = now(), updated_at = now()",
        &[&projection.name(), &version],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(0)
}

/// How many events a round reads per batch and folds per write.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    batch_max_events: usize,
    write_max_events: u64,
}

struct Worker {
    applier: Applier,
    client: Object,
    cursor: Cursor,
}

fn min_position(workers: &[Worker]) -> u64 {
    workers.iter().map(|w| w.cursor.position).min().unwrap_or(0)
}

struct Reporter {
    projections: Vec<Projection>,
    started: Instant,
    resumed_from: u64,
    total: u64,
}

impl Reporter {
    fn progress(&self, phase: RebuildPhase, position: u64) -> RebuildProgress {
        let elapsed = self.started.elapsed();
        let done = position.saturating_sub(self.resumed_from);
        let rate = done as f64 / elapsed.as_secs_f64().max(1e-3);
        let left = self.total.saturating_sub(done);
        RebuildProgress {
            phase,
            projections: self.projections.clone(),
            events_done: done,
            events_total: self.total.max(done),
            events_per_sec: rate,
            eta: (rate > 0.0).then(|| Duration::from_secs_f64(left as f64 / rate)),
            elapsed,
        }
    }
}

/// Applies the log up to `head` to every worker's shadow.
async fn build_round(
    store: &PostgresStore,
    workers: Vec<Worker>,
    categories: Categories,
    head: u64,
    bounds: Bounds,
    report: &Reporter,
    progress: &mut (impl FnMut(&RebuildProgress) + Send),
) -> Result<Vec<Worker>, ProjectionError> {
    let from = min_position(&workers);
    let positions: Vec<Arc<AtomicU64>> = workers
        .iter()
        .map(|w| Arc::new(AtomicU64::new(w.cursor.position)))
        .collect();
    let mut senders = Vec::new();
    let mut tasks: Vec<AbortOnDrop<Result<Worker, ProjectionError>>> = Vec::new();
    for (worker, position) in workers.into_iter().zip(&positions) {
        let (sender, receiver) = mpsc::channel::<Arc<Batch>>(READ_AHEAD_PAGES);
        senders.push(sender);
        tasks.push(AbortOnDrop(tokio::spawn(apply_batches(
            worker,
            receiver,
            position.clone(),
            bounds.write_max_events,
        ))));
    }
    let reader = AbortOnDrop(tokio::spawn(read_log(
        store.clone(),
        from,
        head,
        bounds.batch_max_events,
        categories,
        senders,
    )));

    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    let mut reader = Some(reader);
    loop {
        ticker.tick().await;
        let slowest = positions
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .min()
            .unwrap_or(head);
        progress(&report.progress(RebuildPhase::Building, slowest));
        if let Some(r) = reader.as_mut().filter(|r| r.0.is_finished()) {
            (&mut r.0)
                .await
                .map_err(|e| ProjectionError::Database(format!("log reader panicked: {e}")))??;
            reader = None;
        }
        // Once the log is read, the workers write what they folded: wait for all of
        // them. A worker that ends before that failed, and the rest stop with it.
        let finished = tasks.iter().filter(|t| t.0.is_finished()).count();
        if finished == tasks.len() || (reader.is_some() && finished > 0) {
            break;
        }
    }
    let mut workers = Vec::new();
    let mut failure = None;
    for mut task in tasks {
        match (&mut task.0).await {
            Ok(Ok(worker)) => workers.push(worker),
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => {
                failure = failure.or(Some(ProjectionError::Database(format!(
                    "rebuild worker panicked: {e}"
                ))))
            }
        }
    }
    if let Some(mut reader) = reader {
        // A worker ended early (the reader stops when its channel closes), or the
        // reader ended just after it was last looked at.
        match (&mut reader.0).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = failure.or(Some(e)),
            Err(e) => {
                failure = failure.or(Some(ProjectionError::Database(format!(
                    "log reader panicked: {e}"
                ))))
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(workers),
    }
}

/// Reads and decodes the log after `from` up to `head`, handing every batch to every
/// worker.
async fn read_log(
    store: PostgresStore,
    from: u64,
    head: u64,
    batch_max_events: usize,
    categories: Categories,
    senders: Vec<mpsc::Sender<Arc<Batch>>>,
) -> Result<(), ProjectionError> {
    let readers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(LOG_READERS_MAX);
    crate::log::copy_batches_in_parallel(
        &store,
        readers,
        from,
        head,
        batch_max_events,
        categories,
        &senders,
    )
    .await
}

/// Folds every batch into the worker's rows in memory and writes them to the shadow
/// (moving its checkpoint) once `write_max_events` events are folded, and when the
/// batches end. `position` tells progress how far the fold has got.
async fn apply_batches(
    mut worker: Worker,
    mut batches: mpsc::Receiver<Arc<Batch>>,
    position: Arc<AtomicU64>,
    write_max_events: u64,
) -> Result<Worker, ProjectionError> {
    let mut staged = worker.cursor.position;
    while let Some(batch) = batches.recv().await {
        if batch.last_position <= staged {
            continue;
        }
        worker
            .applier
            .stage(&mut worker.client, &batch, staged)
            .await
            .map_err(|e| worker.error(e))?;
        staged = batch.last_position;
        if staged - worker.cursor.position >= write_max_events {
            write_staged(&mut worker, staged).await?;
        }
        position.store(staged, Ordering::Relaxed);
    }
    if staged > worker.cursor.position {
        write_staged(&mut worker, staged).await?;
    }
    Ok(worker)
}

/// Writes what the worker folded up to `upto`, trying again when the database
/// fails transiently.
async fn write_staged(worker: &mut Worker, upto: u64) -> Result<(), ProjectionError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        match worker
            .applier
            .write_staged(&mut worker.client, worker.cursor, upto)
            .await
        {
            Ok(next) => {
                worker.cursor = next;
                return Ok(());
            }
            Err(BatchError::Database(e)) if e.is_transient() && attempts < BATCH_ATTEMPTS_MAX => {
                tracing::warn!(projection = %worker.applier.projection, error = %e, "rebuild write failed, retrying");
                tokio::time::sleep(Duration::from_millis(200 * attempts as u64)).await;
            }
            Err(e) => return Err(worker.error(e)),
        }
    }
}

impl Worker {
    fn error(&self, e: BatchError) -> ProjectionError {
        match e {
            BatchError::Poison { position, reason } => ProjectionError::Poison {
                projection: self.applier.projection,
                position,
                reason,
            },
            BatchError::Moved(found) => ProjectionError::Database(format!(
                "the shadow of {} moved to {} under this rebuild",
                self.applier.projection, found.position
            )),
            BatchError::Database(e) => e,
        }
    }
}

/// In one transaction: catch every shadow up to its live checkpoint, replace the
/// live tables, and move the checkpoints. Returns the lowest swapped-in position.
async fn swap(
    store: &PostgresStore,
    control: &mut ClientWrapper,
    workers: Vec<Worker>,
) -> Result<u64, ProjectionError> {
    // Opened before the transaction: it may create the keys table on first use.
    let vault = KeyVault::connect(store.pool().clone()).await?;
    let tx = control.transaction().await.map_err(db_error)?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT_SECS}s'"
    ))
    .await
    .map_err(db_error)?;
    let mut lowest = u64::MAX;
    // Workers are in projection order, so concurrent swaps lock rows in one order.
    for mut worker in workers {
        let projection = worker.applier.projection;
        let row = tx
            .query_one(
                "SELECT position FROM projection_checkpoints WHERE name = $1 FOR UPDATE",
                &[&projection.name()],
            )
            .await
            .map_err(db_error)?;
        let live = row.get::<_, i64>(0) as u64;
        let mut shadow = worker.cursor.position;
        while shadow < live {
            let limit = REBUILD_BATCH_MAX_EVENTS.min((live - shadow) as usize);
            let mut events = store.read_all(shadow, limit, None).await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            vault
                .open_all(events.iter_mut().map(|e| &mut e.data))
                .await?;
            let batch = Batch::decode(events, projection.categories());
            worker.applier.apply_in(&tx, &batch, shadow).await?;
            shadow = last;
        }
        schema::swap_in(&*tx, projection).await?;
        tx.execute(
            "UPDATE projection_checkpoints SET position = $2, generation = generation + 1, \
             status = 'running', error = NULL, error_position = NULL, updated_at = now() \
             WHERE name = $1",
            &[&projection.name(), &(shadow as i64)],
        )
        .await
        .map_err(db_error)?;
        tx.execute(
            "DELETE FROM projection_rebuilds WHERE name = $1",
            &[&projection.name()],
        )
        .await
        .map_err(db_error)?;
        lowest = lowest.min(shadow);
    }
    tx.commit().await.map_err(db_error)?;
    Ok(if lowest == u64::MAX { 0 } else { lowest })
}
