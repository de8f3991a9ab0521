//! A shadow's first write: every row is new and the tables are empty, so rows go in
//! with a binary `COPY` instead of `INSERT ... ON CONFLICT` (no conflict check, no
//! arrays to unpack), and each table's primary key is built once after the load, in
//! one sort, instead of row by row. The key is dropped and added again inside the
//! write's transaction, under its own name, so an interrupted write leaves the
//! table as it was and the swapped-in table is the live one, index for index.

use deadpool_postgres::Transaction;
use futures::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};

use crate::apply::ApplyError;

/// One row's values, in the order of the table's `columns`.
pub(crate) type Row<'a> = Vec<&'a (dyn ToSql + Sync)>;

/// Copies `rows` into the empty table `table` (schema-qualified) and builds its
/// primary key afterwards. `columns` lists the columns as in a `COPY` statement,
/// `types` their types.
pub(crate) async fn copy_new_rows<'a>(
    tx: &Transaction<'_>,
    table: &str,
    columns: &str,
    types: &[Type],
    rows: Vec<Row<'a>>,
) -> Result<u64, ApplyError> {
    let key = tx
        .query_opt(
            "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = $1::text::regclass AND contype = 'p'",
            &[&table],
        )
        .await?;
    if let Some(key) = &key {
        let name: &str = key.get(0);
        tx.batch_execute(&format!("ALTER TABLE {table} DROP CONSTRAINT {name}"))
            .await?;
    }
    let sink = tx
        .copy_in(&format!(
            "COPY {table} ({columns}) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    let writer = BinaryCopyInWriter::new(sink, types);
    pin_mut!(writer);
    for row in rows {
        debug_assert_eq!(row.len(), types.len());
        writer.as_mut().write(&row).await?;
    }
    let copied = writer.finish().await?;
    if let Some(key) = &key {
        let name: &str = key.get(0);
        let definition: &str = key.get(1);
        tx.batch_execute(&format!(
            "ALTER TABLE {table} ADD CONSTRAINT {name} {definition}"
        ))
        .await?;
    }
    Ok(copied)
}
