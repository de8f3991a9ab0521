//! Versioned schema migrations, run at start-up, idempotently and safely when several
//! processes start at once (an advisory lock serialises them).

use tokio_postgres::Client;

use super::db_error;
use crate::types::StoreError;

/// One numbered migration of one component's schema.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// The event store's own schema.
pub const EVENTSTORE_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "events",
        sql: include_str!("../../migrations/0001_events.sql"),
    },
    Migration {
        version: 2,
        name: "append_only",
        sql: include_str!("../../migrations/0002_append_only.sql"),
    },
    Migration {
        version: 3,
        name: "engine_role",
        sql: include_str!("../../migrations/0003_engine_role.sql"),
    },
    Migration {
        version: 4,
        name: "json_columns",
        sql: include_str!("../../migrations/0004_json_columns.sql"),
    },
    Migration {
        version: 5,
        name: "chained_head",
        sql: include_str!("../../migrations/0005_chained_head.sql"),
    },
];

/// Arbitrary but fixed: the advisory lock key all migrating processes agree on.
const MIGRATION_LOCK_KEY: i64 = 0x636f_6d6d_6572_6365; // "commerce"

/// Applies every migration of `component` not applied yet, in version order, in one
/// transaction. Returns how many were applied.
pub async fn migrate(
    client: &mut Client,
    component: &str,
    migrations: &[Migration],
) -> Result<usize, StoreError> {
    debug_assert!(migrations.windows(2).all(|w| w[0].version < w[1].version));
    let tx = client.transaction().await.map_err(db_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .map_err(db_error)?;
    // Checked before creating: the engine's role, which has no CREATE on the schema,
    // runs this too, and even `CREATE TABLE IF NOT EXISTS` needs that privilege.
    let exists: bool = tx
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await
        .map_err(db_error)?
        .get(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE schema_migrations (
                 component  text        NOT NULL,
                 version    integer     NOT NULL,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (component, version)
             )",
        )
        .await
        .map_err(db_error)?;
    }
    let applied: Vec<i32> = tx
        .query(
            "SELECT version FROM schema_migrations WHERE component = $1",
            &[&component],
        )
        .await
        .map_err(db_error)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut count = 0;
    for migration in migrations.iter().filter(|m| !applied.contains(&m.version)) {
        tx.batch_execute(migration.sql).await.map_err(db_error)?;
        tx.execute(
            "INSERT INTO schema_migrations (component, version, name) VALUES ($1, $2, $3)",
            &[&component, &migration.version, &migration.name],
        )
        .await
        .map_err(db_error)?;
        count += 1;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(count)
}
