//! `commerce bench esdb-append`: official EventStoreDB clients appending through the
//! gRPC endpoint, against the same appends made in-process, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use api::esdb::{EsdbConfig, EsdbServer, Users};
use esdb::{AppendToStreamOptions, Client, ClientSettings, EventData, ExpectedRevision};
use eventstore::{Direction, EventStore, PostgresConfig, PostgresStore, ScratchDatabase};
use serde_json::json;
use tokio::net::TcpListener;

use super::append::run_level;
use super::{round2, round3, CpuMeter, CpuSpent, Percentiles};

/// Official clients appending side by side, each with a connection of its own.
pub const CLIENTS: usize = 64;
const USER: &str = "bench";
const PASSWORD: &str = "bench-password";

pub async fn run(database_url: &str, duration: Duration) -> Result<()> {
    let db = ScratchDatabase::create(database_url, "bench_esdb_append").await?;
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone())).await?;
    let store: Arc<dyn EventStore> = Arc::new(store);
    println!(
        "esdb-append benchmark: {CLIENTS} official clients, one small event per append, fsync on, {}s each",
        duration.as_secs()
    );

    let baseline = run_level(&store, CLIENTS, duration).await?;
    println!(
        "  baseline, {CLIENTS} in-process appenders: {:>9.0} events/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} events)",
        baseline.rate, baseline.latency.p50_ms, baseline.latency.p99_ms, baseline.events
    );

    let users = Users::new([format!("{USER}:{PASSWORD}:admin")
        .parse()
        .map_err(anyhow::Error::msg)?])
    .map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server = EsdbServer::spawn(listener, store.clone(), EsdbConfig { users, tls: None })?;
    let grpc = run_clients(server.address.port(), duration).await;
    server.stop().await?;
    let (events, rate, mut latencies, cpu) = grpc?;
    let latency = Percentiles::of(&mut latencies);
    println!(
        "  gRPC, {CLIENTS} official clients:        {:>9.0} events/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} events)",
        rate, latency.p50_ms, latency.p99_ms, events
    );
    // An event's share.
    let baseline_cpu = baseline.cpu.and_then(|spent| spent.per(baseline.events));
    let grpc_cpu = cpu.and_then(|spent| spent.per(events));
    for (what, cpu) in [("in-process", baseline_cpu), ("gRPC", grpc_cpu)] {
        if let Some(cpu) = cpu {
            println!(
                "  CPU an event, {what}: {:.1} µs in this process (clients included), {:.1} µs on the whole machine (PostgreSQL and the kernel too); cores busy {:.0}%",
                cpu.process_ms * 1e3,
                cpu.machine_ms * 1e3,
                cpu.busy_share * 100.0
            );
        }
    }

    // Correctness: every acknowledged append is in its stream, in order.
    let mut counted = 0u64;
    for i in 0..CLIENTS {
        let stream = stream_name(i);
        let last = store
            .read_stream(&stream, u64::MAX, Direction::Backward, 1)
            .await?;
        counted += last.first().map_or(0, |e| e.version);
    }
    ensure!(
        counted == events,
        "acknowledged {events} appends, the streams hold {counted} events"
    );
    let head = store.head().await?;
    let acknowledged = baseline.events + events + CLIENTS as u64;
    ensure!(
        head == acknowledged,
        "the log holds {head} events, {acknowledged} were acknowledged (with one warm-up append per client)"
    );
    let ratio = rate / baseline.rate.max(1.0);
    println!(
        "  gRPC vs in-process: {ratio:.2} (target 0.5); log verified: {head} events, each stream complete"
    );
    let line = json!({
        "bench": "esdb-append",
        "unit": "events/s",
        "value": rate.round(),
        "baseline": baseline.rate.round(),
        "ratio": round2(ratio),
        "p50_ms": round2(latency.p50_ms),
        "p99_ms": round2(latency.p99_ms),
        "baseline_p99_ms": round2(baseline.latency.p99_ms),
        "clients": CLIENTS,
        "events": events,
        "baseline_events": baseline.events,
        "process_cpu_us_per_event": grpc_cpu.map(|c| round3(c.process_ms * 1e3)),
        "machine_cpu_us_per_event": grpc_cpu.map(|c| round3(c.machine_ms * 1e3)),
        "cores_busy_share": grpc_cpu.map(|c| round2(c.busy_share)),
        "baseline_process_cpu_us_per_event": baseline_cpu.map(|c| round3(c.process_ms * 1e3)),
        "baseline_machine_cpu_us_per_event": baseline_cpu.map(|c| round3(c.machine_ms * 1e3)),
        "baseline_cores_busy_share": baseline_cpu.map(|c| round2(c.busy_share)),
    });
    println!("{line}");
    Ok(())
}

fn stream_name(client: usize) -> String {
    format!("benchesdb-{client}")
}

/// The official clients, each appending to its own stream with the exact revision.
async fn run_clients(
    port: u16,
    duration: Duration,
) -> Result<(u64, f64, Vec<u32>, Option<CpuSpent>)> {
    let settings: ClientSettings = format!("esdb://{USER}:{PASSWORD}@127.0.0.1:{port}?tls=false")
        .parse()
        .context("a connection string")?;
    let clients = (0..CLIENTS)
        .map(|_| Client::new(settings.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    // Connect every client before the clock starts, all at once: a client's first call
    // waits out its discovery interval (500 ms by default) before it connects.
    futures::future::try_join_all(clients.iter().enumerate().map(|(i, client)| async move {
        client
            .append_to_stream(
                format!("benchwarmup-{i}"),
                &AppendToStreamOptions::default(),
                EventData::json("Warmup", &json!({}))?,
            )
            .await?;
        Ok::<_, anyhow::Error>(())
    }))
    .await?;
    let meter = CpuMeter::start();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(CLIENTS);
    for (i, client) in clients.into_iter().enumerate() {
        let stream = stream_name(i);
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(1 << 14);
            let mut expected = ExpectedRevision::NoStream;
            let mut n = 0u64;
            while Instant::now() < deadline {
                let event =
                    EventData::json("StockReserved", &json!({"sku": "SKU-1", "qty": 1, "n": n}))?;
                let options = AppendToStreamOptions::default().expected_revision(expected);
                let sent = Instant::now();
                let written = client
                    .append_to_stream(stream.as_str(), &options, event)
                    .await?;
                latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                expected = ExpectedRevision::Exact(written.next_expected_version);
                n += 1;
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = meter.stop();
    let events = all.len() as u64;
    Ok((events, events as f64 / elapsed, all, cpu))
}
