//! Erasing a customer (crypto-shredding, `docs/privacy.md`), shared by
//! `POST /v1/admin/customers/{id}/forget` and `commerce privacy forget`.

use eventstore::privacy::KeyVault;
use eventstore::PostgresStore;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// What forgetting a customer did.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Forgotten {
    pub customer_id: Uuid,
    /// Whether a data key was destroyed (false: the customer had none, or it was
    /// destroyed before).
    pub key_destroyed: bool,
    /// Orders in the read models whose address fields were erased.
    pub orders_erased: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error(transparent)]
    Store(#[from] eventstore::StoreError),
    #[error("erasing the read models: {0}")]
    ReadModels(#[from] projections::ProjectionError),
}

/// Destroys the customer's data key, so every sealed field of theirs in the log
/// reads as erased from now on, then erases the copies the read models hold. The
/// events, their totals and SKUs, and the hash chain are untouched. Repeating it is
/// harmless.
pub async fn forget_customer(
    store: &PostgresStore,
    customer_id: Uuid,
) -> Result<Forgotten, ForgetError> {
    let vault = KeyVault::new(store.pool().clone());
    let key_destroyed = vault.forget(&customer_id.to_string()).await?;
    let orders_erased =
        projections::erase_customer(store, customer_id, commands::ADDRESS_PERSONAL_FIELDS).await?;
    Ok(Forgotten {
        customer_id,
        key_destroyed,
        orders_erased,
    })
}
