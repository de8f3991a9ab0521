//! The runner: one task per projection, each applying the log to its read model while
//! it holds the projection's lease, and waiting for the lease while another process
//! holds it.
//!
//! Catch-up reads large batches; once the checkpoint is near the head, batches are
//! small and the task waits for the head to move (the store's commit notifications,
//! with its poll as the fallback), so reading and live following are one loop.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Object;
use eventstore::privacy::KeyVault;
use eventstore::{EventStore, PostgresStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::apply::{Applier, BatchError, Cursor, Target};
use crate::decode::Batch;
use crate::error::{db_error, ProjectionError};
use crate::lease::{Lease, Leases};
use crate::Projection;

/// How a runner works. Every wait and batch has its bound here.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Written to the checkpoint row as the projection's owner, e.g. `host:pid`.
    pub owner: String,
    /// The projections this runner applies.
    pub projections: Vec<Projection>,
    /// Most events per batch while the checkpoint is far behind the head.
    pub catch_up_batch_max_events: usize,
    /// Most events per batch near the head (short transactions, low latency).
    pub live_batch_max_events: usize,
    /// How often a standby runner tries to take a lease.
    pub lease_retry_interval: Duration,
    /// Longest wait for the head to move before looking again.
    pub idle_poll_interval: Duration,
    /// Longest pause between retries after the database failed.
    pub retry_backoff_max: Duration,
    /// How often a failed projection looks whether it was told to retry.
    pub failed_recheck_interval: Duration,
    /// Fault injection for crash tests: sleep inside every batch transaction, after
    /// the writes and before the commit. `None` in production.
    pub pause_before_commit: Option<Duration>,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            owner: format!("pid-{}", std::process::id()),
            projections: Projection::ALL.to_vec(),
            catch_up_batch_max_events: 5_000,
            live_batch_max_events: 500,
            lease_retry_interval: Duration::from_secs(1),
            idle_poll_interval: Duration::from_millis(500),
            retry_backoff_max: Duration::from_secs(5),
            failed_recheck_interval: Duration::from_secs(2),
            pause_before_commit: None,
        }
    }
}

/// Projection tasks running in this process.
pub struct Runner {
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Runner {
    /// Migrates the read side's schema and starts one task per projection.
    pub async fn start(
        store: PostgresStore,
        config: RunnerConfig,
    ) -> Result<Runner, ProjectionError> {
        {
            let mut client = store.connection().await?;
            crate::migrate(&mut client).await?;
        }
        let (shutdown, stop) = watch::channel(false);
        let leases = Arc::new(Leases::new(store.pool().clone()));
        let vault = KeyVault::connect(store.pool().clone()).await?;
        let config = Arc::new(config);
        let tasks = config
            .projections
            .iter()
            .map(|&projection| {
                let task = ProjectionTask {
                    projection,
                    store: store.clone(),
                    vault: vault.clone(),
                    leases: leases.clone(),
                    config: config.clone(),
                    stop: stop.clone(),
                };
                tokio::spawn(task.run())
            })
            .collect();
        Ok(Runner { shutdown, tasks })
    }

    /// Stops every task after its current batch and gives the leases up.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

struct ProjectionTask {
    projection: Projection,
    store: PostgresStore,
    /// Opens sealed personal fields before decoding (erased once their key is gone).
    vault: KeyVault,
    leases: Arc<Leases>,
    config: Arc<RunnerConfig>,
    stop: watch::Receiver<bool>,
}

/// Why leading a projection ended.
enum LeadEnd {
    Stopped,
    LeaseLost,
}

impl ProjectionTask {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.retry_backoff_max);
        while !*self.stop.borrow() {
            let wait = match self.leases.try_acquire(self.projection).await {
                Ok(Some(lease)) => {
                    tracing::info!(projection = %self.projection, "took the lease");
                    let end = self.lead(&lease).await;
                    self.leases.release(lease).await;
                    match end {
                        Ok(LeadEnd::Stopped) => return,
                        // A lost lock connection hints at trouble on this side:
                        // give a standby the first chance to take over.
                        Ok(LeadEnd::LeaseLost) => {
                            tracing::warn!(projection = %self.projection, "lost the lease");
                            backoff.reset();
                            self.config.lease_retry_interval
                        }
                        Err(e) => {
                            tracing::warn!(projection = %self.projection, error = %e, "projection interrupted");
                            backoff.next()
                        }
                    }
                }
                Ok(None) => self.config.lease_retry_interval,
                Err(e) => {
                    tracing::warn!(projection = %self.projection, error = %e, "cannot try the lease");
                    backoff.next()
                }
            };
            self.sleep(wait).await;
        }
    }

    /// Sleeps, or returns early when told to stop.
    async fn sleep(&mut self, duration: Duration) {
        let _ = tokio::time::timeout(duration, self.stop.wait_for(|stop| *stop)).await;
    }

    /// Applies the projection while the lease holds.
    async fn lead(&mut self, lease: &Lease) -> Result<LeadEnd, ProjectionError> {
        let mut applier = Applier::new(
            self.projection,
            Target::Live {
                owner: self.config.owner.clone(),
            },
        );
        applier.pause_before_commit = self.config.pause_before_commit;
        let mut client = self.store.connection().await?;
        let mut cursor = applier.cursor(&client).await?.ok_or_else(|| {
            ProjectionError::Database(format!("no checkpoint row for {}", self.projection))
        })?;
        let mut failed = checkpoint_failed(&client, self.projection).await?;
        let mut backoff = Backoff::new(self.config.retry_backoff_max);
        loop {
            if *self.stop.borrow() {
                return Ok(LeadEnd::Stopped);
            }
            if !self.leases.holds(lease).await {
                return Ok(LeadEnd::LeaseLost);
            }
            if failed {
                self.sleep(self.config.failed_recheck_interval).await;
                failed = checkpoint_failed(&client, self.projection).await?;
                if !failed {
                    tracing::info!(projection = %self.projection, "retrying after a failure");
                    applier.forget();
                    cursor = applier.cursor(&client).await?.unwrap_or(cursor);
                }
                continue;
            }
            let head = self.store.head().await?;
            if head <= cursor.position {
                let wait = self
                    .store
                    .wait_for_head(cursor.position, self.config.idle_poll_interval);
                tokio::select! {
                    result = wait => { result?; }
                    _ = self.stop.wait_for(|stop| *stop) => {}
                }
                continue;
            }
            let limit = if head - cursor.position > self.config.live_batch_max_events as u64 {
                self.config.catch_up_batch_max_events
            } else {
                self.config.live_batch_max_events
            };
            let mut events = self.store.read_all(cursor.position, limit, None).await?;
            if events.is_empty() {
                continue;
            }
            self.vault
                .open_all(events.iter_mut().map(|e| &mut e.data))
                .await?;
            let batch = Batch::decode(events, self.projection.categories());
            match applier.apply_batch(&mut client, cursor, &batch).await {
                Ok(next) => {
                    cursor = next;
                    backoff.reset();
                }
                Err(BatchError::Moved(found)) => {
                    tracing::info!(projection = %self.projection, position = found.position, "checkpoint moved by another writer");
                    cursor = found;
                }
                Err(BatchError::Poison { position, reason }) => {
                    cursor = self
                        .stop_at_poison(&mut applier, &mut client, cursor, &batch, position, reason)
                        .await?;
                    failed = true;
                }
                Err(BatchError::Database(e)) if e.is_transient() => {
                    tracing::warn!(projection = %self.projection, error = %e, "batch failed, retrying");
                    self.sleep(backoff.next()).await;
                    client = self.store.connection().await?;
                }
                Err(BatchError::Database(e)) => {
                    // Something in the batch makes the database refuse it: find the
                    // event, one at a time.
                    tracing::warn!(projection = %self.projection, error = %e, "batch refused, isolating the event");
                    match self
                        .isolate(&mut applier, &mut client, cursor, &batch)
                        .await?
                    {
                        Isolated::Applied(next) => cursor = next,
                        Isolated::Moved(found) => cursor = found,
                        Isolated::Refused(next, position, reason) => {
                            cursor = next;
                            record_failure(&client, self.projection, cursor, position, &reason)
                                .await?;
                            failed = true;
                        }
                    }
                }
            }
        }
    }

    /// Applies the part of `batch` before the poison event, then marks the projection
    /// failed at it.
    async fn stop_at_poison(
        &self,
        applier: &mut Applier,
        client: &mut Object,
        cursor: Cursor,
        batch: &Batch,
        position: u64,
        reason: String,
    ) -> Result<Cursor, ProjectionError> {
        tracing::error!(projection = %self.projection, position, reason = %reason, "poison event: projection stopped");
        let mut cursor = cursor;
        if position - 1 > cursor.position {
            match applier
                .apply_batch(client, cursor, &batch.slice(cursor.position, position - 1))
                .await
            {
                Ok(next) => cursor = next,
                Err(BatchError::Moved(found)) => return Ok(found),
                Err(BatchError::Poison { .. }) => {}
                Err(BatchError::Database(e)) => return Err(e),
            }
        }
        record_failure(client, self.projection, cursor, position, &reason).await?;
        Ok(cursor)
    }

    async fn isolate(
        &self,
        applier: &mut Applier,
        client: &mut Object,
        cursor: Cursor,
        batch: &Batch,
    ) -> Result<Isolated, ProjectionError> {
        let categories = self.projection.categories();
        let mut cursor = cursor;
        let positions: Vec<u64> = batch
            .events
            .iter()
            .filter(|e| e.position > cursor.position && categories.contains(e.category))
            .map(|e| e.position)
            .chain(std::iter::once(batch.last_position))
            .collect();
        for upto in positions {
            if upto <= cursor.position {
                continue;
            }
            match applier
                .apply_batch(client, cursor, &batch.slice(cursor.position, upto))
                .await
            {
                Ok(next) => cursor = next,
                Err(BatchError::Moved(found)) => return Ok(Isolated::Moved(found)),
                Err(BatchError::Poison { position, reason }) => {
                    return Ok(Isolated::Refused(cursor, position, reason))
                }
                Err(BatchError::Database(e)) if e.is_transient() => return Err(e),
                Err(BatchError::Database(e)) => {
                    return Ok(Isolated::Refused(cursor, upto, e.to_string()))
                }
            }
        }
        Ok(Isolated::Applied(cursor))
    }
}

enum Isolated {
    Applied(Cursor),
    Moved(Cursor),
    /// Applied up to the cursor; the event at the position was refused.
    Refused(Cursor, u64, String),
}

async fn checkpoint_failed(
    client: &Object,
    projection: Projection,
) -> Result<bool, ProjectionError> {
    let row = client
        .query_opt(
            "SELECT status = 'failed' FROM projection_checkpoints WHERE name = $1",
            &[&projection.name()],
        )
        .await
        .map_err(db_error)?;
    Ok(row.is_some_and(|r| r.get(0)))
}

/// Marks the projection failed at `position`, unless its checkpoint moved meanwhile.
async fn record_failure(
    client: &Object,
    projection: Projection,
    cursor: Cursor,
    position: u64,
    reason: &str,
) -> Result<(), ProjectionError> {
    client
        .execute(
            "UPDATE projection_checkpoints SET status = 'failed', error = $3, \
             error_position = $4, updated_at = now() \
             WHERE name = $1 AND position = $2 AND generation = $5",
            &[
                &projection.name(),
                &(cursor.position as i64),
                &reason,
                &(position as i64),
                &cursor.generation,
            ],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// Doubling pauses from 100 ms up to a bound.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    fn next(&mut self) -> Duration {
        let pause = self.next;
        self.next = (self.next * 2).min(self.max);
        pause
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}
