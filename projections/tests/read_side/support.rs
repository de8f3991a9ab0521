//! Helpers shared by the read side's tests.

use std::time::{Duration, Instant};

use domain::DomainEvent;
use eventstore::{
    AppendRequest, EventStore, ExpectedVersion, Metadata, NewEvent, PostgresConfig, PostgresStore,
    ScratchDatabase,
};
use projections::workload::{Shop, ShopConfig};
use projections::{Projection, Runner, RunnerConfig};
use tokio_postgres::Client;
use uuid::Uuid;

pub type TestResult = anyhow::Result<()>;

/// A fresh database with the event store and the read side's schema.
pub struct TestDb {
    pub db: ScratchDatabase,
    pub store: PostgresStore,
}

impl TestDb {
    pub async fn new() -> anyhow::Result<TestDb> {
        let db = eventstore::testing::test_database().await?;
        let store = PostgresStore::connect(PostgresConfig::new(db.url.clone())).await?;
        let mut client = store.connection().await?;
        projections::migrate(&mut client).await?;
        Ok(TestDb { db, store })
    }

    pub async fn client(&self) -> anyhow::Result<deadpool_postgres::Object> {
        Ok(self.store.connection().await?)
    }

    /// Appends domain events to one stream, whatever its version.
    pub async fn append<E: DomainEvent>(
        &self,
        stream_id: &str,
        events: &[E],
    ) -> anyhow::Result<u64> {
        let request = AppendRequest {
            stream_id: stream_id.to_owned(),
            expected: ExpectedVersion::Any,
            events: events
                .iter()
                .map(|e| NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: e.event_type().to_owned(),
                    schema_version: e.schema_version(),
                    data: e.to_data().into(),
                    metadata: Metadata::default(),
                })
                .collect(),
            command_id: None,
            preconditions: Vec::new(),
            guards: Vec::new(),
        };
        Ok(self.store.append(request).await?.last_position)
    }

    /// Appends `events` events of a synthetic shop, in group commits.
    pub async fn append_workload(&self, shop: &mut Shop, events: usize) -> anyhow::Result<()> {
        let appends = shop.next_appends(events);
        for chunk in appends.chunks(500) {
            for result in self.store.append_batch(chunk.to_vec()).await {
                result?;
            }
        }
        Ok(())
    }

    /// Runs every projection in this process until each has applied the head.
    pub async fn project(&self, config: RunnerConfig) -> anyhow::Result<()> {
        let runner = Runner::start(self.store.clone(), config).await?;
        let caught_up = self.wait_caught_up(Duration::from_secs(30)).await;
        runner.stop().await;
        caught_up
    }

    /// Waits until every projection's checkpoint is at the head.
    pub async fn wait_caught_up(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let statuses = projections::status(&self.store).await?;
            if statuses.iter().all(|s| s.lag == 0) {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "projections did not catch up: {statuses:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A runner that reacts quickly, with small batches so that histories span batches.
pub fn quick_runner(batch: usize) -> RunnerConfig {
    RunnerConfig {
        catch_up_batch_max_events: batch,
        live_batch_max_events: batch,
        lease_retry_interval: Duration::from_millis(50),
        idle_poll_interval: Duration::from_millis(50),
        failed_recheck_interval: Duration::from_millis(50),
        ..RunnerConfig::default()
    }
}

pub fn shop(seed: u64) -> Shop {
    Shop::new(ShopConfig {
        seed,
        products: 12,
        customers: 40,
        concurrent_sessions: 8,
        ..ShopConfig::default()
    })
}

/// Every row of a projection's tables, as text, in a stable order.
pub async fn rows(
    client: &Client,
    projection: Projection,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut tables = Vec::new();
    for table in projection.tables() {
        let rows = client
            .query(
                &format!("SELECT t::text FROM read_models.{table} t ORDER BY 1"),
                &[],
            )
            .await?;
        tables.push((
            table.to_string(),
            rows.iter().map(|r| r.get::<_, String>(0)).collect(),
        ));
    }
    Ok(tables)
}

/// Every row of every projection.
pub async fn all_rows(client: &Client) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut all = Vec::new();
    for projection in Projection::ALL {
        all.extend(rows(client, projection).await?);
    }
    Ok(all)
}

/// Asserts two snapshots are equal, naming the first table and row that differ.
pub fn assert_same_rows(live: &[(String, Vec<String>)], rebuilt: &[(String, Vec<String>)]) {
    for ((table, a), (_, b)) in live.iter().zip(rebuilt) {
        if a != b {
            let first = a
                .iter()
                .zip(b)
                .find(|(x, y)| x != y)
                .map(|(x, y)| format!("live    {x}\nrebuilt {y}"))
                .unwrap_or_default();
            panic!(
                "{table} differs: {} live rows, {} rebuilt\n{first}",
                a.len(),
                b.len()
            );
        }
    }
    assert_eq!(live.len(), rebuilt.len());
}
