//! `commerce bench verify`: hash-chain verification and export rates over a log of
//! millions of events, against the raw rate of reading that log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use eventstore::audit::{export, verify_log, verify_log_postgres};
use eventstore::{
    AppendRequest, EventStore, ExpectedVersion, NewEvent, PostgresConfig, PostgresStore,
    ScratchDatabase,
};
use serde_json::json;

/// Events per append while the log is generated, and appends per group commit.
const EVENTS_PER_APPEND: usize = 100;
const APPENDS_PER_BATCH: usize = 80;
/// Concurrent writers while the log is generated.
const WRITERS: usize = 4;

pub async fn run(database_url: &str, events: u64) -> Result<()> {
    let db = ScratchDatabase::create(database_url, "bench_verify").await?;
    let pg = PostgresStore::connect(PostgresConfig::new(db.url.clone())).await?;
    let store: Arc<dyn EventStore> = Arc::new(pg.clone());
    println!("verify benchmark: {events} events");

    let started = Instant::now();
    generate(&store, events).await?;
    let generated = started.elapsed();
    let head = store.head().await?;
    ensure!(head == events, "generated {head} events, wanted {events}");
    println!(
        "  generated the log: {events} events in {:.1}s ({:.0} events/s)",
        generated.as_secs_f64(),
        events as f64 / generated.as_secs_f64()
    );

    // Baseline: reading the log, page by page, with nothing else done.
    let started = Instant::now();
    let mut after = 0;
    let mut read = 0u64;
    loop {
        let page = store
            .read_all(after, eventstore::audit::AUDIT_PAGE_EVENTS, None)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len() as u64;
    }
    let read_rate = read as f64 / started.elapsed().as_secs_f64();
    println!("  reading the log (baseline): {read_rate:>9.0} events/s");

    // The generic verification (any store, through read_all), then the PostgreSQL
    // one (binary COPY on several connections, canonical JSON written from the stored
    // text on the hashing threads) that the CLI and the endpoint use.
    let generic = verify_log(store.clone(), 1, |_, _| {}).await?;
    ensure!(
        generic.intact(),
        "chain broken at {:?}",
        generic.first_break
    );
    println!(
        "  verifying through read_all:  {:>9.0} events/s",
        generic.events_per_sec()
    );
    let report = verify_log_postgres(&pg, 1, |_, _| {}).await?;
    ensure!(report.intact(), "chain broken at {:?}", report.first_break);
    ensure!(
        report.checked == events,
        "verified {} of {events}",
        report.checked
    );
    println!(
        "  verifying the hash chain:   {:>9.0} events/s ({} events, intact)",
        report.events_per_sec(),
        report.checked
    );

    let started = Instant::now();
    let mut sink = std::io::sink();
    let exported = export(store.as_ref(), 1, head, None, &mut sink).await?;
    let export_rate = exported as f64 / started.elapsed().as_secs_f64();
    ensure!(exported == events, "exported {exported} of {events}");
    println!("  exporting NDJSON:           {export_rate:>9.0} events/s");

    println!(
        "{}",
        json!({
            "bench": "verify",
            "unit": "events/s",
            "value": report.events_per_sec().round(),
            "baseline": read_rate.round(),
            "generic_verify_rate": generic.events_per_sec().round(),
            "export_rate": export_rate.round(),
            "events": events,
            "verified": report.checked,
            "chain_verified": report.intact(),
        })
    );
    Ok(())
}

/// Appends `events` small commerce-shaped events: big appends, several in flight, so
/// the log fills at the store's bulk rate.
async fn generate(store: &Arc<dyn EventStore>, events: u64) -> Result<()> {
    let appends = events.div_ceil(EVENTS_PER_APPEND as u64);
    let per_writer = appends.div_ceil(WRITERS as u64);
    let mut tasks = Vec::new();
    for writer in 0..WRITERS as u64 {
        let store = store.clone();
        let first = writer * per_writer;
        let last = (first + per_writer).min(appends);
        tasks.push(tokio::spawn(async move {
            let mut next = first;
            while next < last {
                let upto = (next + APPENDS_PER_BATCH as u64).min(last);
                let requests = (next..upto)
                    .map(|append| {
                        let size = if append == appends - 1 {
                            (events - append * EVENTS_PER_APPEND as u64) as usize
                        } else {
                            EVENTS_PER_APPEND
                        };
                        AppendRequest {
                            stream_id: format!("inventory-SKU{append}"),
                            expected: ExpectedVersion::NoStream,
                            events: (0..size)
                                .map(|i| {
                                    NewEvent::new(
                                        "StockReserved",
                                        json!({
                                            "reservation_id": uuid::Uuid::now_v7(),
                                            "quantity": 1 + i % 3,
                                            "warehouse": "main",
                                        }),
                                    )
                                })
                                .collect(),
                            command_id: None,
                            preconditions: Vec::new(),
                            guards: Vec::new(),
                        }
                    })
                    .collect();
                for result in store.append_batch(requests).await {
                    result?;
                }
                next = upto;
            }
            Ok::<_, eventstore::StoreError>(())
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(600), task).await???;
    }
    Ok(())
}
