//! Where the read models live, and the SQL that creates, fills and swaps them.
//!
//! Live tables are in the schema `read_models`, created by this crate's migrations
//! (component `projections`). A read model's migration files are written without a
//! schema name; the migration runs them with `search_path` set to `read_models`, and a
//! rebuild runs the same files in its shadow schema `rebuild_<projection>`, so the
//! shadow tables are the live ones, column for column and index name for index name.
//!
//! Each read-model file puts its secondary indexes after a `-- secondary indexes`
//! line: a rebuild creates those only once the shadow is filled, because building an
//! index in one sort is much cheaper than maintaining it row by row.

use eventstore::Migration;
use tokio_postgres::{Client, GenericClient};

use crate::error::{db_error, ProjectionError};
use crate::Projection;

/// The schema every live read model table is in.
pub const READ_MODELS_SCHEMA: &str = "read_models";

/// The component name of this crate's migrations in `schema_migrations`.
pub const MIGRATION_COMPONENT: &str = "projections";

const SECONDARY_INDEXES_MARKER: &str = "-- secondary indexes";

macro_rules! read_model_migration {
    ($file:literal) => {
        concat!(
            "SET LOCAL search_path TO read_models;\n",
            include_str!(concat!("../migrations/", $file)),
            "\nSET LOCAL search_path TO DEFAULT;\n"
        )
    };
}

/// This crate's schema: bookkeeping first, then one migration per read model.
pub const PROJECTIONS_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "projections",
        sql: include_str!("../migrations/0001_projections.sql"),
    },
    Migration {
        version: 2,
        name: "catalog",
        sql: read_model_migration!("0002_catalog.sql"),
    },
    Migration {
        version: 3,
        name: "inventory",
        sql: read_model_migration!("0003_inventory.sql"),
    },
    Migration {
        version: 4,
        name: "carts",
        sql: read_model_migration!("0004_carts.sql"),
    },
    Migration {
        version: 5,
        name: "orders",
        sql: read_model_migration!("0005_orders.sql"),
    },
    Migration {
        version: 6,
        name: "sales",
        sql: read_model_migration!("0006_sales.sql"),
    },
    Migration {
        version: 7,
        name: "cart_owners",
        sql: read_model_migration!("0007_cart_owners.sql"),
    },
    Migration {
        version: 8,
        name: "catalog_categories",
        sql: read_model_migration!("0008_catalog_categories.sql"),
    },
];

/// The read-model files of each projection, in version order, without the
/// `search_path` wrapper. A later change to a read model adds a file here too.
const READ_MODEL_FILES: &[(Projection, i32, &str)] = &[
    (
        Projection::Catalog,
        2,
        include_str!("../migrations/0002_catalog.sql"),
    ),
    (
        Projection::Inventory,
        3,
        include_str!("../migrations/0003_inventory.sql"),
    ),
    (
        Projection::Carts,
        4,
        include_str!("../migrations/0004_carts.sql"),
    ),
    (
        Projection::Orders,
        5,
        include_str!("../migrations/0005_orders.sql"),
    ),
    (
        Projection::Sales,
        6,
        include_str!("../migrations/0006_sales.sql"),
    ),
    (
        Projection::Carts,
        7,
        include_str!("../migrations/0007_cart_owners.sql"),
    ),
    (
        Projection::Catalog,
        8,
        include_str!("../migrations/0008_catalog_categories.sql"),
    ),
];

/// Applies the migrations not applied yet and makes sure every projection has its
/// checkpoint row. Safe to call from several processes at once.
pub async fn migrate(client: &mut Client) -> Result<(), ProjectionError> {
    eventstore::migrate(client, MIGRATION_COMPONENT, PROJECTIONS_MIGRATIONS).await?;
    let names: Vec<&str> = Projection::ALL.iter().map(|p| p.name()).collect();
    client
        .execute(
            "INSERT INTO projection_checkpoints (name) SELECT unnest($1::text[]) \
             ON CONFLICT (name) DO NOTHING",
            &[&names],
        )
        .await
        .map_err(db_error)?;
    Ok(())
}

/// The version of a projection's table layout: its latest read-model migration.
pub(crate) fn schema_version(projection: Projection) -> i32 {
    READ_MODEL_FILES
        .iter()
        .filter(|(p, _, _)| *p == projection)
        .map(|(_, version, _)| *version)
        .max()
        .unwrap_or(0)
}

/// The schema a rebuild of `projection` fills.
pub(crate) fn shadow_schema(projection: Projection) -> String {
    format!("rebuild_{}", projection.name())
}

fn files(projection: Projection) -> impl Iterator<Item = (&'static str, &'static str)> {
    READ_MODEL_FILES
        .iter()
        .filter(move |(p, _, _)| *p == projection)
        .map(|(_, _, sql)| {
            sql.split_once(SECONDARY_INDEXES_MARKER)
                .unwrap_or((sql, ""))
        })
}

/// Drops whatever is left of an earlier shadow and creates empty shadow tables
/// (primary keys only).
pub(crate) async fn create_shadow(
    client: &impl GenericClient,
    projection: Projection,
) -> Result<(), ProjectionError> {
    let schema = shadow_schema(projection);
    let mut sql = format!(
        "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}; \
         SET LOCAL search_path TO {schema};\n"
    );
    for (tables, _) in files(projection) {
        sql.push_str(tables);
        sql.push('\n');
    }
    sql.push_str("SET LOCAL search_path TO DEFAULT;");
    client.batch_execute(&sql).await.map_err(db_error)
}

/// Creates the shadow's secondary indexes, all or none (call on a client outside a
/// transaction, after [`shadow_is_indexed`] said they are missing).
pub(crate) async fn index_shadow(
    client: &impl GenericClient,
    projection: Projection,
) -> Result<(), ProjectionError> {
    let schema = shadow_schema(projection);
    let mut sql = format!("SET LOCAL search_path TO {schema};\n");
    let mut any = false;
    for (_, indexes) in files(projection) {
        for statement in indexes.split(';').map(str::trim) {
            let statement = strip_comments(statement);
            if statement.is_empty() {
                continue;
            }
            // `CREATE INDEX ON t (...)` names the index itself, the same way the
            // migration did, so the swapped-in index names are the live ones.
            sql.push_str(&statement);
            sql.push_str(";\n");
            any = true;
        }
    }
    if !any {
        return Ok(());
    }
    sql.push_str("SET LOCAL search_path TO DEFAULT;");
    // One transaction, so an interrupted run leaves no half of the indexes behind.
    client
        .batch_execute(&format!("BEGIN; {sql} COMMIT;"))
        .await
        .map_err(db_error)
}

fn strip_comments(sql: &str) -> String {
    sql.lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// Whether the shadow of `projection` has its secondary indexes already.
pub(crate) async fn shadow_is_indexed(
    client: &impl GenericClient,
    projection: Projection,
) -> Result<bool, ProjectionError> {
    let expected: usize = files(projection)
        .map(|(_, indexes)| {
            indexes
                .split(';')
                .filter(|s| !strip_comments(s).is_empty())
                .count()
        })
        .sum();
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND indexname NOT LIKE '%_pkey'",
            &[&shadow_schema(projection)],
        )
        .await
        .map_err(db_error)?;
    Ok(row.get::<_, i64>(0) as usize >= expected)
}

/// Inside the swap transaction: replaces the live tables of `projection` by its
/// shadow tables. Queries that arrive meanwhile wait for the commit and then read the
/// new tables; none sees a half-built model.
pub(crate) async fn swap_in(
    client: &impl GenericClient,
    projection: Projection,
) -> Result<(), ProjectionError> {
    let shadow = shadow_schema(projection);
    let live: Vec<String> = projection
        .tables()
        .iter()
        .map(|t| format!("{READ_MODELS_SCHEMA}.{t}"))
        .collect();
    let mut sql = format!("DROP TABLE IF EXISTS {};\n", live.join(", "));
    for table in projection.tables() {
        sql.push_str(&format!(
            "ALTER TABLE {shadow}.{table} SET SCHEMA {READ_MODELS_SCHEMA};\n"
        ));
    }
    sql.push_str(&format!("DROP SCHEMA {shadow};"));
    client.batch_execute(&sql).await.map_err(db_error)
}
