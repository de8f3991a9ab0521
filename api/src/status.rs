//! `commerce status`: what the event log holds, and whether its hash chain holds.

use std::sync::Arc;

use anyhow::{Context, Result};
use eventstore::hash::{verify_chain, GENESIS_HASH};
use eventstore::{EventStore, PostgresConfig, PostgresStore};

/// Events whose chain `status` checks, counted back from the head.
const STATUS_CHAIN_CHECK_EVENTS: u64 = 10_000;

pub async fn run(database_url: &str) -> Result<()> {
    let store = PostgresStore::connect(PostgresConfig::new(database_url))
        .await
        .with_context(|| format!("cannot open the event store at {database_url}"))?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    let head = store.head().await?;
    let from = head.saturating_sub(STATUS_CHAIN_CHECK_EVENTS);
    let previous = if from == 0 {
        GENESIS_HASH
    } else {
        store
            .read_all(from - 1, 1, None)
            .await?
            .first()
            .map(|e| e.hash)
            .context("the log has a gap before the checked tail")?
    };
    let tail = store
        .read_all(from, STATUS_CHAIN_CHECK_EVENTS as usize, None)
        .await?;
    let chain = match verify_chain(previous, &tail) {
        Ok(_) => "intact".to_owned(),
        Err(b) => format!("BROKEN at position {}", b.position),
    };
    println!("event store: {database_url}");
    println!("  head position: {head}");
    println!("  hash chain of the last {} events: {chain}", tail.len());
    println!(
        "{}",
        serde_json::json!({"head": head, "checked": tail.len(), "chain_verified": chain == "intact"})
    );
    Ok(())
}
