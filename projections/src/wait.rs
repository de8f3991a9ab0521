//! Read-your-writes: a query waits until a read model has applied the position the
//! client's command wrote.
//!
//! One poller per process reads every checkpoint while someone is waiting (and only
//! then), at most once per poll interval, and wakes all waiters at once, so a burst
//! of waiting requests costs one small query per interval, not one per request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{watch, Notify};

use crate::Projection;

/// How often the poller reads the checkpoints while someone waits.
pub const CHECKPOINT_POLL_INTERVAL: Duration = Duration::from_millis(10);
/// How long the poller sleeps between looks at whether anyone is waiting.
const IDLE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

type Positions = HashMap<Projection, u64>;

/// Waits for read models to reach log positions. Cheap to clone; the poller task
/// ends with the last clone.
#[derive(Clone)]
pub struct CheckpointWatch {
    positions: watch::Receiver<Positions>,
    waiters: Arc<AtomicUsize>,
    wake: Arc<Notify>,
}

impl CheckpointWatch {
    /// Starts the poller on `pool` (the store's pool: `PostgresStore::pool`).
    pub fn new(pool: Pool) -> Self {
        let (sender, positions) = watch::channel(Positions::new());
        let waiters = Arc::new(AtomicUsize::new(0));
        let wake = Arc::new(Notify::new());
        tokio::spawn(poll(pool, sender, waiters.clone(), wake.clone()));
        CheckpointWatch {
            positions,
            waiters,
            wake,
        }
    }

    /// The last checkpoint seen of `projection` (it may have moved since).
    pub fn position(&self, projection: Projection) -> Option<u64> {
        self.positions.borrow().get(&projection).copied()
    }

    /// Waits until `projection` has applied `position`, at most `timeout`. Returns
    /// whether it did; on `false` the read model is older than the caller's write,
    /// and the caller answers with what it has and says so.
    pub async fn wait_until(
        &self,
        projection: Projection,
        position: u64,
        timeout: Duration,
    ) -> bool {
        let reached =
            |positions: &Positions| positions.get(&projection).is_some_and(|p| *p >= position);
        if position == 0 || reached(&self.positions.borrow()) {
            return true;
        }
        let _waiting = Waiting::new(&self.waiters);
        self.wake.notify_one();
        let mut positions = self.positions.clone();
        tokio::time::timeout(timeout, positions.wait_for(reached))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Counts a waiter while it lives.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::SeqCst);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn poll(
    pool: Pool,
    sender: watch::Sender<Positions>,
    waiters: Arc<AtomicUsize>,
    wake: Arc<Notify>,
) {
    loop {
        if sender.is_closed() {
            return;
        }
        if waiters.load(Ordering::SeqCst) == 0 {
            let _ = tokio::time::timeout(IDLE_CHECK_INTERVAL, wake.notified()).await;
            continue;
        }
        match read_positions(&pool).await {
            Ok(positions) => {
                sender.send_replace(positions);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read projection checkpoints"),
        }
        tokio::time::sleep(CHECKPOINT_POLL_INTERVAL).await;
    }
}

async fn read_positions(pool: &Pool) -> Result<Positions, crate::ProjectionError> {
    let client = pool.get().await.map_err(crate::error::pool_error)?;
    let rows = client
        .query("SELECT name, position FROM projection_checkpoints", &[])
        .await
        .map_err(crate::error::db_error)?;
    Ok(rows
        .iter()
        .filter_map(|row| {
            let name: &str = row.get(0);
            let position: i64 = row.get(1);
            Projection::parse(name).ok().map(|p| (p, position as u64))
        })
        .collect())
}
