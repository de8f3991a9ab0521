//! `commerce bench append`: group-commit appends against one INSERT per transaction.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use eventstore::hash::{verify_chain, GENESIS_HASH};
use eventstore::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, PostgresConfig, PostgresStore,
    ScratchDatabase,
};
use serde_json::json;
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::{round2, CpuMeter, CpuSpent, Percentiles};

const LEVELS: [usize; 3] = [1, 16, 256];
/// Connections of the naive baseline (the design note's "16 clients").
const BASELINE_CONNECTIONS: usize = 16;

pub(super) struct Level {
    pub(super) appenders: usize,
    pub(super) events: u64,
    pub(super) rate: f64,
    pub(super) latency: Percentiles,
    /// The CPU the level took, where it can be read.
    pub(super) cpu: Option<CpuSpent>,
}

pub async fn run(database_url: &str, duration: Duration) -> Result<()> {
    let db = ScratchDatabase::create(database_url, "bench_append").await?;
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone())).await?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    println!(
        "append benchmark: one small event per append, fsync on, {}s per level",
        duration.as_secs()
    );

    let mut levels = Vec::new();
    for appenders in LEVELS {
        let level = run_level(&store, appenders, duration).await?;
        println!(
            "  {:>3} appenders: {:>9.0} events/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} events)",
            level.appenders, level.rate, level.latency.p50_ms, level.latency.p99_ms, level.events
        );
        levels.push(level);
    }

    let (baseline_events, baseline_rate, mut baseline_latency) =
        run_naive(&db.url, duration).await?;
    let baseline = Percentiles::of(&mut baseline_latency);
    println!(
        "  baseline, one INSERT per transaction, {BASELINE_CONNECTIONS} connections: {:>9.0} events/s   p50 {:>6.2} ms   p99 {:>6.2} ms",
        baseline_rate, baseline.p50_ms, baseline.p99_ms
    );

    // Correctness: the log holds exactly what was acknowledged, gapless and chained.
    let appended: u64 = levels.iter().map(|l| l.events).sum();
    let head = store.head().await?;
    let mut after = 0;
    let mut previous = GENESIS_HASH;
    let mut counted = 0u64;
    loop {
        let page = store.read_all(after, 50_000, None).await?;
        let Some(last) = page.last() else { break };
        ensure!(
            page.first().map(|e| e.position) == Some(after + 1),
            "gap in the log after {after}"
        );
        after = last.position;
        counted += page.len() as u64;
        previous = verify_chain(previous, &page)
            .map_err(|b| anyhow::anyhow!("hash chain broken at {}", b.position))?;
    }
    ensure!(
        head == appended && counted == appended,
        "acknowledged {appended}, log holds {counted} (head {head})"
    );

    let top = levels.last().context("no levels ran")?;
    println!(
        "  256 appenders vs baseline: {:.1}x; log verified: {counted} events, gapless, chain intact",
        top.rate / baseline_rate.max(1.0)
    );
    let mut line = json!({
        "bench": "append",
        "unit": "events/s",
        "value": top.rate.round(),
        "baseline": baseline_rate.round(),
        "p50_ms": round2(top.latency.p50_ms),
        "p99_ms": round2(top.latency.p99_ms),
        "events": appended,
        "baseline_events": baseline_events,
        "chain_verified": true,
        "gapless": true,
    });
    for level in &levels {
        line[format!("rate_{}", level.appenders)] = json!(level.rate.round());
        line[format!("p99_ms_{}", level.appenders)] = json!(round2(level.latency.p99_ms));
    }
    println!("{line}");
    Ok(())
}

/// `appenders` tasks appending one small event per append to streams of their own,
/// through `store`, for `duration`.
pub(super) async fn run_level(
    store: &Arc<dyn EventStore>,
    appenders: usize,
    duration: Duration,
) -> Result<Level> {
    let meter = CpuMeter::start();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(appenders);
    for i in 0..appenders {
        let store = store.clone();
        let stream = format!("bench{appenders}-{i}");
        tasks.push(tokio::spawn(async move {
            let mut version = 0u64;
            let mut latencies = Vec::with_capacity(1 << 14);
            while Instant::now() < deadline {
                let event = NewEvent::new(
                    "StockReserved",
                    json!({"sku": "SKU-1", "qty": 1, "n": version}),
                );
                let request = AppendRequest {
                    stream_id: stream.clone(),
                    expected: ExpectedVersion::Exact(version),
                    events: vec![event],
                    command_id: Some(Uuid::now_v7()),
                    preconditions: Vec::new(),
                    guards: Vec::new(),
                };
                let sent = Instant::now();
                let result = store.append(request).await?;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                version = result.stream_version;
            }
            Ok::<_, eventstore::StoreError>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = meter.stop();
    let events = all.len() as u64;
    Ok(Level {
        appenders,
        events,
        rate: events as f64 / elapsed,
        latency: Percentiles::of(&mut all),
        cpu,
    })
}

/// The naive way: a sequence for the position, one INSERT per transaction.
async fn run_naive(url: &str, duration: Duration) -> Result<(u64, f64, Vec<u32>)> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(
            "CREATE TABLE naive_events (
                 position bigserial PRIMARY KEY, stream_id text NOT NULL, version bigint NOT NULL,
                 event_id uuid NOT NULL UNIQUE, event_type text NOT NULL, data json NOT NULL,
                 metadata json NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now(),
                 UNIQUE (stream_id, version))",
        )
        .await?;
    drop(client);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::new();
    for i in 0..BASELINE_CONNECTIONS {
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            let (client, connection) = tokio_postgres::connect(&url, NoTls).await?;
            tokio::spawn(connection);
            let insert = client
                .prepare(
                    "INSERT INTO naive_events (stream_id, version, event_id, event_type, data, metadata) \
                     VALUES ($1, $2, $3, 'StockReserved', $4, $5)",
                )
                .await?;
            let stream = format!("naive-{i}");
            let mut latencies = Vec::new();
            let mut version = 0i64;
            while Instant::now() < deadline {
                version += 1;
                let data = json!({"sku": "SKU-1", "qty": 1, "n": version});
                let metadata = json!({"command_id": Uuid::new_v4()});
                let sent = Instant::now();
                client
                    .execute(&insert, &[&stream, &version, &Uuid::new_v4(), &data, &metadata])
                    .await?;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
            }
            Ok::<_, tokio_postgres::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let events = all.len() as u64;
    Ok((events, events as f64 / elapsed, all))
}
