//! `commerce bench esdb-append`: official EventStoreDB clients appending through the
//! gRPC endpoint, against the same appends made in-process, in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use api::esdb::{EsdbConfig, EsdbServer, Users};
use esdb::{AppendToStreamOptions, Client, ClientSettings, EventData, ExpectedRevision};
use eventstore::{
    Direction, EventStore, MemoryStore, PostgresConfig, PostgresStore, ScratchDatabase,
};
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
    let grpc = through_endpoint(&store, &users, duration).await?;
    // The same clients against the endpoint on the in-memory store: what the official
    // client, HTTP/2, tonic and the endpoint cost a call when the store writes nothing
    // to disk.
    let memory: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let stack = through_endpoint(&memory, &users, duration).await?;
    for (what, phase) in [("gRPC, PostgreSQL", &grpc), ("gRPC, in memory", &stack)] {
        println!(
            "  {what:<17} {CLIENTS} official clients: {:>9.0} events/s   p50 {:>6.2} ms   p99 {:>6.2} ms   ({} events)",
            phase.rate, phase.latency.p50_ms, phase.latency.p99_ms, phase.events
        );
    }
    // An event's share.
    let baseline_cpu = baseline.cpu.and_then(|spent| spent.per(baseline.events));
    for (what, cpu) in [
        ("in-process", baseline_cpu),
        ("gRPC", grpc.cpu),
        ("gRPC in memory", stack.cpu),
    ] {
        if let Some(cpu) = cpu {
            println!(
                "  CPU an event, {what}: {:.1} µs in this process (clients included), {:.1} µs on the whole machine (PostgreSQL and the kernel too); cores busy {:.0}%",
                cpu.process_ms * 1e3,
                cpu.machine_ms * 1e3,
                cpu.busy_share * 100.0
            );
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ceiling = match (stack.cpu, baseline_cpu) {
        (Some(stack), Some(append)) => ceiling_ratio(
            cores as f64,
            stack.machine_ms * 1e3,
            append.machine_ms * 1e3,
            baseline.rate,
        ),
        _ => None,
    };
    if let Some(ceiling) = ceiling {
        println!(
            "  most the gRPC path could reach with the cores never idle, at the stack's cost plus an in-process append's: {ceiling:.2} of the in-process rate"
        );
    }

    // Correctness: every acknowledged append is in its stream, in order, and the log
    // holds nothing else (beside each client's warm-up append).
    verify(
        &store,
        grpc.events,
        baseline.events + grpc.events + CLIENTS as u64,
    )
    .await?;
    verify(&memory, stack.events, stack.events + CLIENTS as u64).await?;
    let head = store.head().await?;
    let ratio = grpc.rate / baseline.rate.max(1.0);
    println!(
        "  gRPC vs in-process: {ratio:.2} (target 0.5); log verified: {head} events, each stream complete"
    );
    let line = json!({
        "bench": "esdb-append",
        "unit": "events/s",
        "value": grpc.rate.round(),
        "baseline": baseline.rate.round(),
        "ratio": round2(ratio),
        "p50_ms": round2(grpc.latency.p50_ms),
        "p99_ms": round2(grpc.latency.p99_ms),
        "baseline_p99_ms": round2(baseline.latency.p99_ms),
        "clients": CLIENTS,
        "events": grpc.events,
        "baseline_events": baseline.events,
        "process_cpu_us_per_event": grpc.cpu.map(|c| round3(c.process_ms * 1e3)),
        "machine_cpu_us_per_event": grpc.cpu.map(|c| round3(c.machine_ms * 1e3)),
        "cores_busy_share": grpc.cpu.map(|c| round2(c.busy_share)),
        "baseline_process_cpu_us_per_event": baseline_cpu.map(|c| round3(c.process_ms * 1e3)),
        "baseline_machine_cpu_us_per_event": baseline_cpu.map(|c| round3(c.machine_ms * 1e3)),
        "baseline_cores_busy_share": baseline_cpu.map(|c| round2(c.busy_share)),
        "memory_events_per_s": stack.rate.round(),
        "memory_p99_ms": round2(stack.latency.p99_ms),
        "memory_process_cpu_us_per_event": stack.cpu.map(|c| round3(c.process_ms * 1e3)),
        "memory_machine_cpu_us_per_event": stack.cpu.map(|c| round3(c.machine_ms * 1e3)),
        "memory_cores_busy_share": stack.cpu.map(|c| round2(c.busy_share)),
        "ceiling_ratio": ceiling.map(round2),
    });
    println!("{line}");
    Ok(())
}

/// One run of the official clients against the endpoint.
struct Phase {
    events: u64,
    rate: f64,
    latency: Percentiles,
    /// An event's share of the CPU spent.
    cpu: Option<CpuSpent>,
}

/// Serves `store` through the endpoint on a random port while the official clients
/// append for `duration`.
async fn through_endpoint(
    store: &Arc<dyn EventStore>,
    users: &Users,
    duration: Duration,
) -> Result<Phase> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let server = EsdbServer::spawn(
        listener,
        store.clone(),
        EsdbConfig {
            users: users.clone(),
            tls: None,
        },
    )?;
    let run = run_clients(server.address.port(), duration).await;
    server.stop().await?;
    let (events, rate, mut latencies, cpu) = run?;
    Ok(Phase {
        events,
        rate,
        latency: Percentiles::of(&mut latencies),
        cpu: cpu.and_then(|spent| spent.per(events)),
    })
}

/// The most the gRPC path could carry, as a share of the in-process rate
/// (`baseline_rate` events/s), if the `cores` never idled and a call cost the
/// machine what a call costs through the endpoint on the in-memory store
/// (`stack_us`) plus what an in-process append costs it (`append_us`, PostgreSQL's
/// work included). The in-memory store's own append is in both, so the figure is a
/// little low; the idle time of a closed loop waiting for its commits is in neither,
/// which makes it high. `None` without costs.
fn ceiling_ratio(cores: f64, stack_us: f64, append_us: f64, baseline_rate: f64) -> Option<f64> {
    let per_call_us = stack_us + append_us;
    (per_call_us > 0.0 && baseline_rate > 0.0).then(|| cores * 1e6 / per_call_us / baseline_rate)
}

/// Checks that the clients' streams hold exactly the `acknowledged` appends, and the
/// log exactly `head` events.
async fn verify(store: &Arc<dyn EventStore>, acknowledged: u64, head: u64) -> Result<()> {
    let mut counted = 0u64;
    for i in 0..CLIENTS {
        let last = store
            .read_stream(&stream_name(i), u64::MAX, Direction::Backward, 1)
            .await?;
        counted += last.first().map_or(0, |e| e.version);
    }
    ensure!(
        counted == acknowledged,
        "acknowledged {acknowledged} appends, the streams hold {counted} events"
    );
    let held = store.head().await?;
    ensure!(
        held == head,
        "the log holds {held} events, {head} were acknowledged (with one warm-up append per client)"
    );
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

#[cfg(test)]
mod tests {
    use super::ceiling_ratio;

    #[test]
    fn the_ceiling_is_the_calls_the_cores_carry_at_both_costs_against_the_baseline() {
        // Two cores, 60 + 40 µs a call: 20,000 calls/s, half of 40,000 in-process.
        let ceiling = ceiling_ratio(2.0, 60.0, 40.0, 40_000.0).unwrap();
        assert!((ceiling - 0.5).abs() < 1e-12, "{ceiling}");
        // Costlier calls, a lower ceiling.
        assert!(ceiling_ratio(2.0, 80.0, 40.0, 40_000.0).unwrap() < ceiling);
        assert_eq!(
            ceiling_ratio(2.0, 0.0, 0.0, 40_000.0),
            None,
            "no cost measured"
        );
        assert_eq!(ceiling_ratio(2.0, 60.0, 40.0, 0.0), None, "no baseline");
    }
}
