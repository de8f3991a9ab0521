//! What every projection is doing, for `commerce projections status` and the admin
//! API: checkpoint, head, lag, speed, state, error.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use eventstore::{EventStore, PostgresStore};
use serde::Serialize;
use tokio_postgres::Client;

use crate::error::db_error;
use crate::lease::lock_key;
use crate::{Projection, ProjectionError};

/// A projection this far behind the head counts as catching up.
pub const CATCHING_UP_LAG_EVENTS: u64 = 1_000;
/// A rate older than this is stale: the projection has had nothing to do since.
const RATE_STALE_SECS: i64 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum ProjectionState {
    /// Applied by some process and near the head.
    Running,
    /// Applied by some process, more than [`CATCHING_UP_LAG_EVENTS`] behind.
    CatchingUp,
    /// Stopped at an event it cannot apply (see `error`), until [`retry`] or a rebuild.
    Failed,
    /// A rebuild is filling its shadow tables (the live tables keep serving).
    Rebuilding,
    /// No process holds its lease: nothing applies it.
    Stopped,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProjectionStatus {
    pub projection: Projection,
    pub state: ProjectionState,
    /// The last log position applied.
    pub checkpoint: u64,
    /// The log's head when asked.
    pub head: u64,
    /// `head - checkpoint`.
    pub lag: u64,
    /// Over the last few seconds of applying (0 when idle).
    pub events_per_sec: f64,
    pub error: Option<String>,
    pub error_position: Option<u64>,
    /// The runner that applied the last batch.
    pub owner: Option<String>,
    /// The PostgreSQL backend holding the projection's lease, if any.
    pub lease_pid: Option<i32>,
    pub updated_at: DateTime<Utc>,
    pub rebuild: Option<RebuildStatus>,
}

/// A rebuild in progress or interrupted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RebuildStatus {
    /// How far the shadow tables are.
    pub position: u64,
    pub events_per_sec: f64,
    /// Whether a process is running it now (else it was interrupted and the next
    /// rebuild resumes it).
    pub active: bool,
    pub started_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Advisory locks held in this database: key -> backend pid.
async fn advisory_locks(client: &Client) -> Result<HashMap<i64, i32>, ProjectionError> {
    let rows = client
        .query(
            "SELECT (classid::bigint << 32) | objid::bigint, pid FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND objsubid = 1 \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .map_err(db_error)?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// The status of every projection, in [`Projection::ALL`] order.
pub async fn status(store: &PostgresStore) -> Result<Vec<ProjectionStatus>, ProjectionError> {
    let head = store.head().await?;
    let client = store.connection().await?;
    let locks = advisory_locks(&client).await?;
    let rows = client
        .query(
            "SELECT c.name, c.position, c.status, c.error, c.error_position, c.owner, \
             CASE WHEN c.updated_at > now() - make_interval(secs => $1) \
                  THEN c.events_per_sec ELSE 0 END, c.updated_at, \
             r.position, r.events_per_sec, r.started_at, r.updated_at \
             FROM projection_checkpoints c \
             LEFT JOIN projection_rebuilds r ON r.name = c.name",
            &[&(RATE_STALE_SECS as f64)],
        )
        .await
        .map_err(db_error)?;
    let mut statuses = Vec::new();
    for row in rows {
        let name: &str = row.get(0);
        // Rows of projections this build does not know are left out.
        let Ok(projection) = Projection::parse(name) else {
            continue;
        };
        let checkpoint = row.get::<_, i64>(1) as u64;
        let failed = row.get::<_, &str>(2) == "failed";
        let lease_pid = locks.get(&lock_key("apply", projection)).copied();
        let rebuilding = locks.contains_key(&lock_key("rebuild", projection));
        let rebuild = row.get::<_, Option<i64>>(8).map(|position| RebuildStatus {
            position: position as u64,
            events_per_sec: row.get(9),
            active: rebuilding,
            started_at: row.get(10),
            updated_at: row.get(11),
        });
        let lag = head.saturating_sub(checkpoint);
        let state = if failed {
            ProjectionState::Failed
        } else if rebuilding {
            ProjectionState::Rebuilding
        } else if lease_pid.is_none() {
            ProjectionState::Stopped
        } else if lag > CATCHING_UP_LAG_EVENTS {
            ProjectionState::CatchingUp
        } else {
            ProjectionState::Running
        };
        statuses.push(ProjectionStatus {
            projection,
            state,
            checkpoint,
            head,
            lag,
            events_per_sec: row.get(6),
            error: row.get(3),
            error_position: row.get::<_, Option<i64>>(4).map(|p| p as u64),
            owner: row.get(5),
            lease_pid,
            updated_at: row.get(7),
            rebuild,
        });
    }
    statuses.sort_by_key(|s| s.projection);
    Ok(statuses)
}

/// Clears a projection's failure so its runner tries the event again (after the
/// code or the data that made it fail was fixed). Returns whether it was failed.
pub async fn retry(client: &Client, projection: Projection) -> Result<bool, ProjectionError> {
    let changed = client
        .execute(
            "UPDATE projection_checkpoints SET status = 'running', error = NULL, \
             error_position = NULL, updated_at = now() \
             WHERE name = $1 AND status = 'failed'",
            &[&projection.name()],
        )
        .await
        .map_err(db_error)?;
    Ok(changed > 0)
}
