//! `commerce bench flash-sale`: one SKU with 1,000 units and 20,000 concurrent
//! reservations of one unit each, through the command pipeline on PostgreSQL,
//! against the same demand as plain `UPDATE stock SET qty = qty - 1 WHERE ... AND
//! qty >= 1` statements from 16 connections. Both must sell exactly the stock; the
//! pipeline's result is then checked against the log itself.
//!
//! The demand comes from `clients` tasks that each send their share of the 20,000
//! commands back to back (`--clients 20000` is one task per command). The sale is
//! run `trials` times, each on a fresh SKU and a fresh stock row, pipeline and
//! baseline taking turns, and the medians are compared: on a small shared machine a
//! single run of a tenth of a second says more about the neighbours than about the
//! code.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use commands::{CommandContext, CommandError, Commands, Limits};
use domain::{
    Aggregate, DomainError, DomainEvent, Inventory, InventoryCommand, InventoryEvent, Quantity,
    Sku, WarehouseId,
};
use eventstore::{Direction, EventStore, PostgresConfig, PostgresStore, ScratchDatabase};
use serde_json::json;
use tokio::sync::{watch, Barrier};
use tokio_postgres::NoTls;
use uuid::Uuid;

use super::{process_cpu_ns, round2, Percentiles};

const STOCK: u32 = 1_000;
const DEMAND: usize = 20_000;
/// Connections of the baseline, as many as a typical application pool.
const BASELINE_CONNECTIONS: usize = 16;
const TARGET_RATIO: f64 = 20.0;

struct Trial {
    sold: u64,
    out_of_stock: u64,
    rate: f64,
    seconds: f64,
    latency: Percentiles,
    /// CPU time of this process per command (all its threads), where the system
    /// tells it; the pipeline's only, as the baseline's work is the server's.
    cpu_us_per_command: Option<f64>,
}

pub async fn run(database_url: &str, clients: usize, trials: usize) -> Result<()> {
    ensure!(
        (1..=DEMAND).contains(&clients),
        "clients must be 1..={DEMAND}"
    );
    ensure!(trials >= 1, "at least one trial");
    let db = ScratchDatabase::create(database_url, "bench_flash_sale").await?;
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone())).await?;
    let (fsync, synchronous_commit) = durability(&db.url).await?;
    println!(
        "flash-sale benchmark: {STOCK} units of one SKU, {DEMAND} one-unit reservations from \
         {clients} concurrent clients, {trials} trial(s) (fsync={fsync}, \
         synchronous_commit={synchronous_commit}, {} runtime worker thread(s))",
        super::runtime_workers()
    );
    let commands = Commands::on_postgres(store.clone(), Limits::default()).await?;
    let baseline_table = BaselineTable::create(&db.url).await?;

    let mut pipeline = Vec::with_capacity(trials);
    let mut baseline = Vec::with_capacity(trials);
    let mut appends = 0;
    let mut conflicts = 0;
    for trial in 0..trials {
        let sku = Sku::parse(format!("FLASH-{trial}"))?;
        receive_stock(&commands, &sku).await?;
        let before = commands.inventory().stats();
        let outcome = run_pipeline(&commands, &sku, clients).await?;
        let after = commands.inventory().stats();
        appends = after.appends - before.appends;
        conflicts = after.conflicts - before.conflicts;
        ensure!(
            outcome.sold == u64::from(STOCK)
                && outcome.out_of_stock == DEMAND as u64 - outcome.sold,
            "trial {trial}: the pipeline sold {} and refused {} of {DEMAND} for a stock of {STOCK}",
            outcome.sold,
            outcome.out_of_stock
        );
        let replayed = replay_inventory(&store, &Inventory::stream_id(&sku)).await?;
        ensure!(
            replayed.reserved == u64::from(STOCK)
                && replayed.available == 0
                && replayed.reservations == u64::from(STOCK),
            "trial {trial}: the log disagrees: reserved {}, available {}, {} reservation events",
            replayed.reserved,
            replayed.available,
            replayed.reservations
        );
        println!(
            "  trial {trial}: pipeline {:>8.0} reservations/s ({:.3} s, {:.2} us CPU each, \
             {appends} appends, {conflicts} conflicts, p50 {:.2} ms, p99 {:.2} ms; log: \
             reserved {}, available {})",
            outcome.rate,
            outcome.seconds,
            outcome.cpu_us_per_command.unwrap_or(f64::NAN),
            outcome.latency.p50_ms,
            outcome.latency.p99_ms,
            replayed.reserved,
            replayed.available
        );
        pipeline.push(outcome);

        let outcome = baseline_table.run(trial).await?;
        ensure!(
            outcome.sold == u64::from(STOCK),
            "trial {trial}: the baseline sold {} for a stock of {STOCK}",
            outcome.sold
        );
        println!(
            "  trial {trial}: baseline {:>8.0} statements/s   ({:.3} s, sold {}, p50 {:.2} ms, \
             p99 {:.2} ms)",
            outcome.rate,
            outcome.seconds,
            outcome.sold,
            outcome.latency.p50_ms,
            outcome.latency.p99_ms
        );
        baseline.push(outcome);
    }

    let value = median(&pipeline);
    let base = median(&baseline);
    let mut cpu: Vec<f64> = pipeline
        .iter()
        .filter_map(|t| t.cpu_us_per_command)
        .collect();
    cpu.sort_by(f64::total_cmp);
    let cpu_us_per_reservation = cpu.get(cpu.len() / 2).map(|us| round2(*us));
    let ratio = value.rate / base.rate.max(1.0);
    println!(
        "  median pipeline {:.0} reservations/s vs median baseline ({BASELINE_CONNECTIONS} \
         connections) {:.0} statements/s: {ratio:.1}x (target {TARGET_RATIO}x); every trial \
         sold exactly {STOCK}, refused {} as out of stock, and replayed from the log",
        value.rate,
        base.rate,
        DEMAND as u64 - u64::from(STOCK),
    );
    let line = json!({
        "bench": "flash-sale",
        "unit": "reservations/s",
        "value": value.rate.round(),
        "baseline": base.rate.round(),
        "ratio": round2(ratio),
        "sold": value.sold,
        "stock": STOCK,
        "out_of_stock": value.out_of_stock,
        "commands": DEMAND,
        "clients": clients,
        "trials": trials,
        "values": pipeline.iter().map(|t| t.rate.round()).collect::<Vec<_>>(),
        "baselines": baseline.iter().map(|t| t.rate.round()).collect::<Vec<_>>(),
        "p50_ms": round2(value.latency.p50_ms),
        "p99_ms": round2(value.latency.p99_ms),
        "cpu_us_per_reservation": cpu_us_per_reservation,
        "appends_last_trial": appends,
        "conflicts_last_trial": conflicts,
        "baseline_sold": base.sold,
        "baseline_connections": BASELINE_CONNECTIONS,
        "log_verified": true,
        "fsync": fsync,
        "synchronous_commit": synchronous_commit,
        "target_ratio": TARGET_RATIO,
        "worker_threads": super::runtime_workers(),
    });

    // Let the stream tasks and the store's connections end before the database goes.
    drop(commands);
    drop(store);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    drop(db);
    println!("{line}");
    Ok(())
}

/// The trial with the median rate.
fn median(trials: &[Trial]) -> &Trial {
    let mut order: Vec<&Trial> = trials.iter().collect();
    order.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    order[order.len() / 2]
}

/// The server's durability settings, which the figures depend on.
async fn durability(url: &str) -> Result<(String, String)> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(connection);
    let fsync: String = client.query_one("SHOW fsync", &[]).await?.get(0);
    let synchronous_commit: String = client
        .query_one("SHOW synchronous_commit", &[])
        .await?
        .get(0);
    Ok((fsync, synchronous_commit))
}

async fn receive_stock(commands: &Commands, sku: &Sku) -> Result<()> {
    commands
        .inventory()
        .execute(
            InventoryCommand::ReceiveStock {
                sku: sku.clone(),
                warehouse: WarehouseId::parse("main")?,
                quantity: Quantity::new(STOCK)?,
            },
            &CommandContext::new("system:bench"),
        )
        .await?;
    Ok(())
}

/// What one client of the pipeline saw.
#[derive(Default)]
struct Tally {
    sold: u64,
    out_of_stock: u64,
    first_error: Option<CommandError>,
    latencies: Vec<u32>,
}

/// `clients` tasks, released at once, each sending its share of the reservations
/// one after the other; the clock runs from the release to the last answer.
///
/// A client builds each command just before sending it and keeps only a count of
/// the outcomes, as a client of a server would. Commands built ahead for the whole
/// sale (20,000 of them, on the thread that runs the benchmark) and outcomes kept
/// until the end cost the clients more than the pipeline's own work: every command
/// was read from memory long out of the cache, and its strings were freed on another
/// thread than the one that allocated them.
async fn run_pipeline(commands: &Commands, sku: &Sku, clients: usize) -> Result<Trial> {
    let (go, gate) = watch::channel(false);
    let ready = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::with_capacity(clients);
    for client in 0..clients {
        let share = DEMAND / clients + usize::from(client < DEMAND % clients);
        let commands = commands.clone();
        let sku = sku.clone();
        let ready = ready.clone();
        let mut gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let expires_at = chrono::Utc::now() + chrono::Duration::minutes(15);
            let mut tally = Tally {
                latencies: Vec::with_capacity(share),
                ..Tally::default()
            };
            ready.wait().await;
            // The sender lives until every task is joined.
            let _ = gate.wait_for(|open| *open).await;
            // One clock read per command: a command's latency runs from the
            // previous one's answer (building a command takes well under a
            // microsecond).
            let mut sent = Instant::now();
            for _ in 0..share {
                // Random ids: a time-ordered one reads the clock and takes a lock.
                let command = InventoryCommand::ReserveStock {
                    sku: sku.clone(),
                    reservation_id: Uuid::new_v4().into(),
                    order_id: Uuid::new_v4().into(),
                    quantity: Quantity::ONE,
                    expires_at,
                };
                let command_id = Uuid::new_v4();
                let context = CommandContext {
                    command_id,
                    correlation_id: command_id,
                    causation_id: None,
                    actor: "customer:bench".to_owned(),
                    guard: None,
                };
                let outcome = commands.inventory().execute(command, &context).await;
                let answered = Instant::now();
                tally.latencies.push(micros_between(sent, answered));
                sent = answered;
                match outcome {
                    Ok(_) => tally.sold += 1,
                    Err(CommandError::Rejected(DomainError::OutOfStock { .. })) => {
                        tally.out_of_stock += 1
                    }
                    Err(e) => {
                        tally.first_error.get_or_insert(e);
                    }
                }
            }
            tally
        }));
    }
    // Every client is waiting at the gate: the clock and the CPU count start as it
    // opens, not while the worker is still starting clients.
    ready.wait().await;
    let cpu_before = process_cpu_ns();
    let started = Instant::now();
    let go = open_gate(go).await?;
    let mut sold = 0u64;
    let mut out_of_stock = 0u64;
    let mut latencies = Vec::with_capacity(DEMAND);
    let mut first_error: Option<CommandError> = None;
    for task in tasks {
        let tally = task.await?;
        sold += tally.sold;
        out_of_stock += tally.out_of_stock;
        latencies.extend(tally.latencies);
        if let Some(e) = tally.first_error {
            first_error.get_or_insert(e);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_us_per_command = cpu_before
        .zip(process_cpu_ns())
        .map(|(before, after)| after.saturating_sub(before) as f64 / 1_000.0 / DEMAND as f64);
    drop(go);
    if let Some(e) = first_error {
        anyhow::bail!("a reservation failed unexpectedly: {e}");
    }
    Ok(Trial {
        sold,
        out_of_stock,
        rate: DEMAND as f64 / seconds,
        seconds,
        latency: Percentiles::of(&mut latencies),
        cpu_us_per_command,
    })
}

/// Opens the gate the clients wait at, and hands its sender back (the clients'
/// `wait_for` ends with an error once it is dropped). It opens on a runtime worker,
/// where the clients run, so every client is woken into that worker's own queue at
/// once. The benchmark's thread is outside the runtime: opened from there, the
/// wake-ups would go one by one through the runtime's shared queue while the worker
/// already runs the first clients, and the burst's first commands would reach the
/// stream a few at a time.
async fn open_gate(go: watch::Sender<bool>) -> Result<watch::Sender<bool>> {
    tokio::spawn(async move { go.send(true).map(|()| go) })
        .await?
        .context("open the gate")
}

fn micros_since(start: Instant) -> u32 {
    micros_between(start, Instant::now())
}

fn micros_between(start: Instant, end: Instant) -> u32 {
    (end - start).as_micros().min(u128::from(u32::MAX)) as u32
}

/// The baseline's plain stock table, one row per trial.
struct BaselineTable {
    url: String,
}

impl BaselineTable {
    async fn create(url: &str) -> Result<Self> {
        let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(
                "CREATE TABLE stock (sku text PRIMARY KEY, qty integer NOT NULL CHECK (qty >= 0))",
            )
            .await?;
        Ok(BaselineTable {
            url: url.to_owned(),
        })
    }

    /// The same demand as single-row updates: each statement is its own
    /// transaction, and the row lock serialises the ones that sell.
    async fn run(&self, trial: usize) -> Result<Trial> {
        let sku = format!("FLASH-{trial}");
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(connection);
        client
            .execute(
                "INSERT INTO stock (sku, qty) VALUES ($1, $2)",
                &[&sku, &(STOCK as i32)],
            )
            .await?;
        drop(client);

        let (go, gate) = watch::channel(false);
        let per_connection = DEMAND / BASELINE_CONNECTIONS;
        let mut tasks = Vec::with_capacity(BASELINE_CONNECTIONS);
        for i in 0..BASELINE_CONNECTIONS {
            // The last connection takes the remainder: exactly DEMAND in total.
            let statements = if i + 1 == BASELINE_CONNECTIONS {
                DEMAND - per_connection * (BASELINE_CONNECTIONS - 1)
            } else {
                per_connection
            };
            let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
            tokio::spawn(connection);
            let update = client
                .prepare("UPDATE stock SET qty = qty - 1 WHERE sku = $1 AND qty >= 1")
                .await?;
            let mut gate = gate.clone();
            let sku = sku.clone();
            tasks.push(tokio::spawn(async move {
                let _ = gate.wait_for(|open| *open).await;
                let mut sold = 0u64;
                let mut latencies = Vec::with_capacity(statements);
                for _ in 0..statements {
                    let sent = Instant::now();
                    sold += client.execute(&update, &[&sku]).await?;
                    latencies.push(micros_since(sent));
                }
                Ok::<_, tokio_postgres::Error>((sold, latencies))
            }));
        }
        let started = Instant::now();
        let go = open_gate(go).await?;
        let mut sold = 0u64;
        let mut latencies = Vec::with_capacity(DEMAND);
        for task in tasks {
            let (n, mut l) = task.await??;
            sold += n;
            latencies.append(&mut l);
        }
        let seconds = started.elapsed().as_secs_f64();
        drop(go);
        Ok(Trial {
            sold,
            out_of_stock: DEMAND as u64 - sold,
            rate: DEMAND as f64 / seconds,
            seconds,
            latency: Percentiles::of(&mut latencies),
            cpu_us_per_command: None,
        })
    }
}

struct Replayed {
    reservations: u64,
    reserved: u64,
    available: u64,
}

/// The inventory rebuilt from the log alone, without the command side's caches or
/// snapshots.
async fn replay_inventory(store: &PostgresStore, stream_id: &str) -> Result<Replayed> {
    let mut events = Vec::new();
    let mut next = 1;
    loop {
        let page = store
            .read_stream(stream_id, next, Direction::Forward, 10_000)
            .await?;
        let Some(last) = page.last() else { break };
        next = last.version + 1;
        for recorded in &page {
            events.push(InventoryEvent::from_stored(
                &recorded.event_type,
                recorded.schema_version,
                recorded.data.clone(),
            )?);
        }
    }
    let reservations = events
        .iter()
        .filter(|e| matches!(e, InventoryEvent::StockReserved { .. }))
        .count() as u64;
    let inventory = Inventory::replay(&events);
    Ok(Replayed {
        reservations,
        reserved: inventory.reserved(),
        available: inventory.available(),
    })
}
