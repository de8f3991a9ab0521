//! Snapshots of long streams, so that loading a hot aggregate (a flash-sale SKU with
//! millions of events) reads one row plus the events after it, never its whole
//! history. A snapshot is a cache of a replay: if it is missing, unreadable or of
//! an older state schema, the state is rebuilt from the log, and a failed write only
//! costs a longer replay later. One row per stream keeps the latest snapshot only.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use async_trait::async_trait;
use deadpool_postgres::Pool;
use eventstore::{db_error, migrate, Migration, StoreError};

/// The state of one stream after its event `version`, in the aggregate's snapshot
/// form `state_schema` (see `StreamAggregate::SNAPSHOT_SCHEMA`), as JSON text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub stream_id: String,
    pub version: u64,
    pub state_schema: u32,
    pub state: Vec<u8>,
}

#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    /// The latest snapshot of the stream, if any.
    async fn load(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError>;

    /// Keeps `snapshot` as the stream's latest, unless a later one of the same state
    /// schema is stored already (two writers may race; the later version wins).
    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError>;
}

/// Snapshots in memory, for tests and simulation.
#[derive(Default)]
pub struct MemorySnapshots {
    snapshots: Mutex<HashMap<String, Snapshot>>,
}

impl MemorySnapshots {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SnapshotStore for MemorySnapshots {
    async fn load(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        // A panic elsewhere cannot leave a half-written entry: inserts are single calls.
        let snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Ok(snapshots.get(stream_id).cloned())
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let mut snapshots = self
            .snapshots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let newer = snapshots.get(&snapshot.stream_id).is_none_or(|stored| {
            stored.version < snapshot.version || stored.state_schema != snapshot.state_schema
        });
        if newer {
            snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }
}

/// The command side's own schema, applied with the event store's migration runner
/// under the component name `commands`.
pub const COMMANDS_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "aggregate_snapshots",
        sql: include_str!("../migrations/0001_aggregate_snapshots.sql"),
    },
    Migration {
        version: 2,
        name: "snapshot_compression",
        sql: include_str!("../migrations/0002_snapshot_compression.sql"),
    },
];

const LOAD_SNAPSHOT: &str =
    "SELECT version, state_schema, state FROM aggregate_snapshots WHERE stream_id = $1";

// The WHERE keeps a slow writer from replacing a later snapshot with an earlier one;
// a snapshot of another state schema (a new build) always replaces the old form.
const SAVE_SNAPSHOT: &str =
    "INSERT INTO aggregate_snapshots (stream_id, version, state_schema, state) \
     VALUES ($1, $2, $3, $4) \
     ON CONFLICT (stream_id) DO UPDATE \
     SET version = EXCLUDED.version, state_schema = EXCLUDED.state_schema, \
         state = EXCLUDED.state, taken_at = now() \
     WHERE aggregate_snapshots.version < EXCLUDED.version \
        OR aggregate_snapshots.state_schema <> EXCLUDED.state_schema";

/// Snapshots in the `aggregate_snapshots` table, beside the event log, through the
/// event store's connection pool (reads and snapshot writes share it; appends have
/// their own connection).
#[derive(Clone)]
pub struct PostgresSnapshots {
    pool: Pool,
}

impl PostgresSnapshots {
    /// Applies the command side's migrations and returns the store.
    pub async fn connect(pool: Pool) -> Result<Self, StoreError> {
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        migrate(&mut client, "commands", COMMANDS_MIGRATIONS).await?;
        Ok(PostgresSnapshots { pool })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }
}

#[async_trait]
impl SnapshotStore for PostgresSnapshots {
    async fn load(&self, stream_id: &str) -> Result<Option<Snapshot>, StoreError> {
        let client = self.client().await?;
        let statement = client
            .prepare_cached(LOAD_SNAPSHOT)
            .await
            .map_err(db_error)?;
        let row = client
            .query_opt(&statement, &[&stream_id])
            .await
            .map_err(db_error)?;
        Ok(row.map(|row| {
            let version: i64 = row.get(0);
            let state_schema: i32 = row.get(1);
            Snapshot {
                stream_id: stream_id.to_owned(),
                version: u64::try_from(version).unwrap_or(0),
                state_schema: u32::try_from(state_schema).unwrap_or(0),
                state: row.get(2),
            }
        }))
    }

    async fn save(&self, snapshot: Snapshot) -> Result<(), StoreError> {
        let version = i64::try_from(snapshot.version).map_err(|_| StoreError::InvalidRequest {
            field: "version",
            reason: format!("{} is beyond bigint", snapshot.version),
        })?;
        let state_schema =
            i32::try_from(snapshot.state_schema).map_err(|_| StoreError::InvalidRequest {
                field: "state_schema",
                reason: format!("{} is beyond integer", snapshot.state_schema),
            })?;
        let client = self.client().await?;
        let statement = client
            .prepare_cached(SAVE_SNAPSHOT)
            .await
            .map_err(db_error)?;
        client
            .execute(
                &statement,
                &[
                    &snapshot.stream_id,
                    &version,
                    &state_schema,
                    &snapshot.state,
                ],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }
}
