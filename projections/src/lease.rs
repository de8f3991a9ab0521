//! Who applies a projection: the process holding its PostgreSQL advisory lock.
//!
//! The locks are session locks on one dedicated connection per runner. If the
//! process dies or the connection breaks, PostgreSQL ends the session and releases
//! them, and a standby runner's next attempt takes over. A runner notices it lost its
//! connection (and so its locks) before its next batch; a batch already under way
//! when that happens is harmless, because the successor and the stale holder
//! serialise on the checkpoint row and the second of them finds it moved.

use std::sync::Arc;

use deadpool_postgres::{ClientWrapper, Object, Pool};
use tokio::sync::Mutex;

use crate::error::{db_error, pool_error, ProjectionError};
use crate::Projection;

/// The advisory lock key of a projection's lease (`scope` "apply") or of its rebuild
/// ("rebuild"): FNV-1a over a fixed text, so every process computes the same key.
pub(crate) fn lock_key(scope: &str, projection: Projection) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in format!("commerce.projections.{scope}.{}", projection.name()).bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Positive, so `pg_locks` shows it as (classid, objid) = (high, low) halves.
    (hash >> 1) as i64
}

/// Proof that this runner held a projection's lock on connection `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Lease {
    key: i64,
    epoch: u64,
}

struct Session {
    client: Arc<ClientWrapper>,
    epoch: u64,
}

/// The lock connection of one runner, reopened when it breaks (every lease taken
/// on the broken one is then void).
pub(crate) struct Leases {
    pool: Pool,
    session: Mutex<Option<Session>>,
    epochs: std::sync::atomic::AtomicU64,
}

impl Leases {
    pub(crate) fn new(pool: Pool) -> Self {
        Leases {
            pool,
            session: Mutex::new(None),
            epochs: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The live lock connection, opened if there is none.
    async fn session(&self) -> Result<(Arc<ClientWrapper>, u64), ProjectionError> {
        let mut session = self.session.lock().await;
        if let Some(s) = session.as_ref() {
            if !s.client.is_closed() {
                return Ok((s.client.clone(), s.epoch));
            }
        }
        // Taken out of the pool for good: when it closes, its locks go with it.
        let client = Object::take(self.pool.get().await.map_err(pool_error)?);
        let epoch = self
            .epochs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        let client = Arc::new(client);
        *session = Some(Session {
            client: client.clone(),
            epoch,
        });
        Ok((client, epoch))
    }

    /// Takes the lease of `projection` if no other session holds it.
    pub(crate) async fn try_acquire(
        &self,
        projection: Projection,
    ) -> Result<Option<Lease>, ProjectionError> {
        let key = lock_key("apply", projection);
        let (client, epoch) = self.session().await?;
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await
            .map_err(db_error)?;
        Ok(row.get::<_, bool>(0).then_some(Lease { key, epoch }))
    }

    /// Whether `lease` still holds: its connection is the current one and alive.
    pub(crate) async fn holds(&self, lease: &Lease) -> bool {
        let session = self.session.lock().await;
        session
            .as_ref()
            .is_some_and(|s| s.epoch == lease.epoch && !s.client.is_closed())
    }

    /// Gives `lease` up (best effort: a broken connection has released it anyway).
    pub(crate) async fn release(&self, lease: Lease) {
        if !self.holds(&lease).await {
            return;
        }
        if let Ok((client, epoch)) = self.session().await {
            if epoch == lease.epoch {
                let _ = client
                    .execute("SELECT pg_advisory_unlock($1)", &[&lease.key])
                    .await;
            }
        }
    }
}
