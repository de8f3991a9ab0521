//! Erasure in the read models: once a customer's data key is destroyed, the personal
//! fields the read models copied from their events are overwritten with the erased
//! marker. Only `read_models.orders.shipping_address` holds any (the address of each
//! order); a rebuild after the key is gone produces the same erased rows, since it
//! decodes the sealed fields as erased.

use eventstore::privacy::ERASED;
use eventstore::PostgresStore;
use uuid::Uuid;

use crate::error::{db_error, ProjectionError};

/// Overwrites the personal fields of every order address of `customer` with the
/// erased marker (fields that are null stay null), and moves the `orders`
/// projection's generation so a live runner drops the rows it cached. Returns the
/// orders changed.
pub async fn erase_customer(
    store: &PostgresStore,
    customer: Uuid,
    personal_fields: &[&str],
) -> Result<u64, ProjectionError> {
    let mut client = store.connection().await?;
    let tx = client.transaction().await.map_err(db_error)?;
    let fields: Vec<&str> = personal_fields.to_vec();
    let erased = serde_json::Value::String(ERASED.to_owned());
    let changed = tx
        .execute(
            "UPDATE read_models.orders o SET shipping_address = (
                 SELECT jsonb_object_agg(e.key,
                     CASE WHEN e.key = ANY($2) AND e.value <> 'null'::jsonb THEN $3::jsonb
                          ELSE e.value END)
                 FROM jsonb_each(o.shipping_address) AS e)
             WHERE o.customer_id = $1",
            &[&customer, &fields, &erased],
        )
        .await
        .map_err(db_error)?;
    // The live runner keeps rows it wrote while the generation does not move; an
    // order's next event must start from the erased row, not the cached one.
    tx.execute(
        "UPDATE projection_checkpoints SET generation = generation + 1 WHERE name = 'orders'",
        &[],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
    Ok(changed)
}
