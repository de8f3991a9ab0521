//! `commerce privacy`: erase a customer's personal data (crypto-shredding).

use anyhow::{Context, Result};
use clap::Subcommand;
use eventstore::{PostgresConfig, PostgresStore};
use uuid::Uuid;

#[derive(Subcommand)]
pub enum Privacy {
    /// Destroy a customer's data key: their names, addresses, e-mail and phone read
    /// as "[erased]" in every replay, projection, export and rebuild from now on;
    /// the read models' copies are erased too. Totals, SKUs and the hash chain stay.
    Forget {
        /// The customer id (a UUID).
        customer: Uuid,
    },
}

pub async fn run(command: Privacy, database_url: &str) -> Result<()> {
    let store = PostgresStore::connect(PostgresConfig::new(database_url))
        .await
        .with_context(|| format!("cannot open the event store at {database_url}"))?;
    match command {
        Privacy::Forget { customer } => {
            // The keys table exists once any engine process ran; make sure here too.
            eventstore::privacy::KeyVault::connect(store.pool().clone()).await?;
            {
                let mut client = store.connection().await?;
                projections::migrate(&mut client).await?;
            }
            let forgotten = api::privacy::forget_customer(&store, customer).await?;
            eprintln!(
                "customer {customer}: key {}, {} orders erased in the read models",
                if forgotten.key_destroyed {
                    "destroyed"
                } else {
                    "already gone"
                },
                forgotten.orders_erased
            );
            crate::audit::record_cli(&store, "privacy.forget", serde_json::to_value(&forgotten)?)
                .await?;
            println!("{}", serde_json::to_string(&forgotten)?);
            Ok(())
        }
    }
}
