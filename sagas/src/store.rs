//! The saga's durable state outside the log: the runner's checkpoint (the last log
//! position whose steps all ran), the timers (deadlines and retries as rows, so a
//! crash never loses one), and the lease that lets one process at a time run the
//! saga. PostgreSQL in production, memory in tests and simulation.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use deadpool_postgres::{ClientWrapper, Object, Pool};
use domain::{CheckoutId, CheckoutTimer, Sku};
use eventstore::{migrate, Migration};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::SagaError;

/// The saga's schema, applied with the event store's migration runner under the
/// component name `sagas`.
pub const SAGAS_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "saga_checkpoint_and_timers",
    sql: include_str!("../migrations/0001_saga_checkpoint_and_timers.sql"),
}];

/// Names the timers' ids (UUID v5), so every process derives the same id for the
/// same deadline and scheduling one twice keeps one row.
const TIMER_NAMESPACE: Uuid = Uuid::from_u128(0x6a1f_4c0e_9d2b_4f7a_8e3c_5b1d_2a9f_7c41);

/// What a timer does when it fires.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum TimerAction {
    /// Tell a checkout that one of its deadlines passed.
    Checkout {
        checkout_id: CheckoutId,
        timer: CheckoutTimer,
    },
    /// Expire the SKU's reservations that are due.
    ExpireReservations { sku: Sku },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub id: Uuid,
    pub due_at: DateTime<Utc>,
    pub action: TimerAction,
}

impl Timer {
    pub fn for_checkout(
        checkout_id: CheckoutId,
        timer: CheckoutTimer,
        due_at: DateTime<Utc>,
    ) -> Self {
        let name = match timer {
            CheckoutTimer::Deadline => "deadline".to_owned(),
            CheckoutTimer::PaymentRetry { operation, attempt } => {
                format!("retry:{}:{attempt}", operation.as_str())
            }
        };
        Timer {
            id: Uuid::new_v5(checkout_id.as_uuid(), name.as_bytes()),
            due_at,
            action: TimerAction::Checkout { checkout_id, timer },
        }
    }

    /// One timer per SKU and second: reservations of a SKU that expire in the same
    /// second share it, so a busy SKU does not get a row per reservation.
    pub fn expire_reservations(sku: Sku, expires_at: DateTime<Utc>) -> Self {
        let second = expires_at
            .duration_round_up(TimeDelta::seconds(1))
            .unwrap_or(expires_at);
        let name = format!("expire:{sku}:{}", second.timestamp());
        Timer {
            id: Uuid::new_v5(&TIMER_NAMESPACE, name.as_bytes()),
            due_at: second,
            action: TimerAction::ExpireReservations { sku },
        }
    }
}

#[async_trait]
pub trait SagaStore: Send + Sync + 'static {
    /// The last log position whose steps have all run (0 at first).
    async fn checkpoint(&self) -> Result<u64, SagaError>;

    /// Moves the checkpoint from `from` to `to`. False if it was not at `from`:
    /// another runner moved it, and this one must start over from there.
    async fn advance(&self, from: u64, to: u64) -> Result<bool, SagaError>;

    /// Keeps the timers (a timer already scheduled stays as it is).
    async fn schedule(&self, timers: &[Timer]) -> Result<(), SagaError>;

    /// Up to `limit` timers due at `now`, earliest first.
    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Timer>, SagaError>;

    /// Forgets timers: fired ones, and ones that could no longer do anything.
    async fn complete(&self, ids: &[Uuid]) -> Result<(), SagaError>;

    /// When the earliest timer is due, if any (simulation moves its clock there).
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, SagaError>;

    /// Whether this process holds (or now takes) the lease to run the saga.
    async fn try_lease(&self) -> Result<bool, SagaError>;
}

/// The saga's state in memory: one process, one runner.
#[derive(Default)]
pub struct MemorySagaStore {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    checkpoint: u64,
    timers: BTreeMap<Uuid, Timer>,
}

impl MemorySagaStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryInner> {
        // Each holder does a few map operations and no awaits: a panic cannot leave
        // the state half-changed.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn pending_timers(&self) -> usize {
        self.lock().timers.len()
    }
}

#[async_trait]
impl SagaStore for MemorySagaStore {
    async fn checkpoint(&self) -> Result<u64, SagaError> {
        Ok(self.lock().checkpoint)
    }

    async fn advance(&self, from: u64, to: u64) -> Result<bool, SagaError> {
        let mut inner = self.lock();
        if inner.checkpoint != from {
            return Ok(false);
        }
        inner.checkpoint = to;
        Ok(true)
    }

    async fn schedule(&self, timers: &[Timer]) -> Result<(), SagaError> {
        let mut inner = self.lock();
        for timer in timers {
            inner
                .timers
                .entry(timer.id)
                .or_insert_with(|| timer.clone());
        }
        Ok(())
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Timer>, SagaError> {
        let inner = self.lock();
        let mut due: Vec<Timer> = inner
            .timers
            .values()
            .filter(|t| t.due_at <= now)
            .cloned()
            .collect();
        due.sort_by(|a, b| a.due_at.cmp(&b.due_at).then(a.id.cmp(&b.id)));
        due.truncate(limit);
        Ok(due)
    }

    async fn complete(&self, ids: &[Uuid]) -> Result<(), SagaError> {
        let mut inner = self.lock();
        for id in ids {
            inner.timers.remove(id);
        }
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, SagaError> {
        Ok(self.lock().timers.values().map(|t| t.due_at).min())
    }

    async fn try_lease(&self) -> Result<bool, SagaError> {
        Ok(true)
    }
}

/// The advisory lock key of the saga runner's lease: FNV-1a over a fixed text, the
/// same scheme as the projections' leases, so every process computes the same key.
fn lease_key() -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"commerce.sagas.checkout.apply" {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    (hash >> 1) as i64
}

const CHECKPOINT_NAME: &str = "checkout";

const SELECT_CHECKPOINT: &str = "SELECT position FROM saga_checkpoints WHERE name = $1";
const ADVANCE_CHECKPOINT: &str =
    "UPDATE saga_checkpoints SET position = $3, updated_at = now() WHERE name = $1 AND position = $2";
const INSERT_CHECKPOINT: &str =
    "INSERT INTO saga_checkpoints (name, position) VALUES ($1, 0) ON CONFLICT (name) DO NOTHING";
const INSERT_TIMERS: &str = "INSERT INTO saga_timers (id, due_at, action) \
     SELECT * FROM unnest($1::uuid[], $2::timestamptz[], $3::jsonb[]) ON CONFLICT (id) DO NOTHING";
const SELECT_DUE: &str =
    "SELECT id, due_at, action FROM saga_timers WHERE due_at <= $1 ORDER BY due_at, id LIMIT $2";
const DELETE_TIMERS: &str = "DELETE FROM saga_timers WHERE id = ANY($1::uuid[])";
const SELECT_NEXT_DUE: &str = "SELECT min(due_at) FROM saga_timers";

/// The saga's state in the engine's PostgreSQL database.
pub struct PostgresSagaStore {
    pool: Pool,
    /// The connection holding the lease's session lock, taken out of the pool for
    /// good: when it closes, PostgreSQL releases the lock and a standby takes over.
    lease: tokio::sync::Mutex<Option<Arc<ClientWrapper>>>,
}

fn db_error(e: impl std::fmt::Display) -> SagaError {
    SagaError::Database(e.to_string())
}

impl PostgresSagaStore {
    /// Runs the saga's migrations and creates the checkpoint row.
    pub async fn connect(pool: Pool) -> Result<Self, SagaError> {
        {
            let mut client = pool.get().await.map_err(db_error)?;
            migrate(&mut client, "sagas", SAGAS_MIGRATIONS)
                .await
                .map_err(db_error)?;
            client
                .execute(INSERT_CHECKPOINT, &[&CHECKPOINT_NAME])
                .await
                .map_err(db_error)?;
        }
        Ok(PostgresSagaStore {
            pool,
            lease: tokio::sync::Mutex::new(None),
        })
    }

    async fn client(&self) -> Result<Object, SagaError> {
        self.pool.get().await.map_err(db_error)
    }
}

#[async_trait]
impl SagaStore for PostgresSagaStore {
    async fn checkpoint(&self) -> Result<u64, SagaError> {
        let client = self.client().await?;
        let row = client
            .query_one(SELECT_CHECKPOINT, &[&CHECKPOINT_NAME])
            .await
            .map_err(db_error)?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    async fn advance(&self, from: u64, to: u64) -> Result<bool, SagaError> {
        let client = self.client().await?;
        let updated = client
            .execute(
                ADVANCE_CHECKPOINT,
                &[&CHECKPOINT_NAME, &(from as i64), &(to as i64)],
            )
            .await
            .map_err(db_error)?;
        Ok(updated == 1)
    }

    async fn schedule(&self, timers: &[Timer]) -> Result<(), SagaError> {
        if timers.is_empty() {
            return Ok(());
        }
        let ids: Vec<Uuid> = timers.iter().map(|t| t.id).collect();
        let due: Vec<DateTime<Utc>> = timers.iter().map(|t| t.due_at).collect();
        let actions: Vec<serde_json::Value> = timers
            .iter()
            .map(|t| serde_json::to_value(&t.action).map_err(db_error))
            .collect::<Result<_, _>>()?;
        let client = self.client().await?;
        client
            .execute(INSERT_TIMERS, &[&ids, &due, &actions])
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn due(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Timer>, SagaError> {
        let client = self.client().await?;
        let rows = client
            .query(SELECT_DUE, &[&now, &(limit as i64)])
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let action: serde_json::Value = row.get(2);
                Ok(Timer {
                    id: row.get(0),
                    due_at: row.get(1),
                    action: serde_json::from_value(action).map_err(db_error)?,
                })
            })
            .collect()
    }

    async fn complete(&self, ids: &[Uuid]) -> Result<(), SagaError> {
        if ids.is_empty() {
            return Ok(());
        }
        let client = self.client().await?;
        client
            .execute(DELETE_TIMERS, &[&ids])
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<DateTime<Utc>>, SagaError> {
        let client = self.client().await?;
        let row = client
            .query_one(SELECT_NEXT_DUE, &[])
            .await
            .map_err(db_error)?;
        Ok(row.get(0))
    }

    async fn try_lease(&self) -> Result<bool, SagaError> {
        let mut lease = self.lease.lock().await;
        if let Some(client) = lease.as_ref() {
            if !client.is_closed() {
                return Ok(true);
            }
            *lease = None;
        }
        let client = Arc::new(Object::take(self.client().await?));
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&lease_key()])
            .await
            .map_err(db_error)?;
        if row.get::<_, bool>(0) {
            *lease = Some(client);
            Ok(true)
        } else {
            Ok(false)
        }
    }
}
