//! `commerce bench rebuild`: rebuild every read model from a log of the domain's own
//! workload, against reading and decoding the same log without projecting it.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use domain::{CartEvent, DomainEvent, InventoryEvent, OrderEvent, PaymentEvent, ProductEvent};
use eventstore::{category_of, EventStore, PostgresConfig, PostgresStore, ScratchDatabase};
use projections::workload::{Shop, ShopConfig, ShopStats};
use projections::{Projection, RebuildOptions, RebuildPhase};
use serde_json::json;

use super::round2;

/// Shops appending side by side (disjoint streams), as several engine nodes would.
const SHOPS: u32 = 4;
/// Events per `append_batch` call (one group commit each).
const APPEND_BATCH_EVENTS: usize = 2_000;
/// Events the baseline reads per page, as the rebuild does.
const READ_PAGE_EVENTS: usize = projections::REBUILD_BATCH_MAX_EVENTS;

pub async fn run(database_url: &str, events: u64) -> Result<()> {
    let db = ScratchDatabase::create(database_url, "bench_rebuild").await?;
    let store = PostgresStore::connect(PostgresConfig::new(db.url.clone())).await?;
    println!("rebuild benchmark: every read model from a log of the domain's workload");

    let started = Instant::now();
    let stats = generate(&store, events).await?;
    let generated = store.head().await?;
    let generate_secs = started.elapsed().as_secs_f64();
    println!(
        "  log: {generated} events from {SHOPS} shops in {generate_secs:.1}s ({:.0} events/s): \
         {} carts, {} orders placed, {} confirmed, {} delivered, {} cancelled, {} rejected",
        generated as f64 / generate_secs,
        stats.carts,
        stats.orders_placed,
        stats.orders_confirmed,
        stats.orders_delivered,
        stats.orders_cancelled,
        stats.orders_rejected,
    );
    ensure!(
        stats.refused_commands == 0,
        "the workload had {} commands refused",
        stats.refused_commands
    );

    let (read, read_secs) = read_and_decode(&store).await?;
    let baseline = read as f64 / read_secs;
    println!(
        "  baseline, read_all pages of {READ_PAGE_EVENTS} and decode only: {read} events in \
         {read_secs:.1}s, {baseline:.0} events/s"
    );

    let mut last_report = Instant::now();
    // When each phase began, from the start of the rebuild.
    let mut phases: Vec<(RebuildPhase, f64)> = Vec::new();
    let report = projections::rebuild(&store, &Projection::ALL, &RebuildOptions::default(), |p| {
        if phases.last().map(|(phase, _)| *phase) != Some(p.phase) {
            phases.push((p.phase, p.elapsed.as_secs_f64()));
        }
        if last_report.elapsed().as_secs() >= 5 || p.phase != RebuildPhase::Building {
            last_report = Instant::now();
            eprintln!(
                "  .. {:?}: {}/{} events, {:.0} events/s",
                p.phase, p.events_done, p.events_total, p.events_per_sec
            );
        }
    })
    .await?;
    let rate = report.events as f64 / report.elapsed.as_secs_f64();
    println!(
        "  rebuild of {} read models: {} events in {:.1}s, {rate:.0} events/s ({:.2}x the \
         baseline's rate)",
        report.projections.len(),
        report.events,
        report.elapsed.as_secs_f64(),
        rate / baseline
    );
    // Seconds spent in each phase: building (reading, folding and writing the
    // shadows), indexing, swapping.
    let phase_secs = |phase: RebuildPhase| {
        let at = phases.iter().position(|(p, _)| *p == phase)?;
        let end = phases
            .get(at + 1)
            .map_or(report.elapsed.as_secs_f64(), |(_, t)| *t);
        Some(round2(end - phases[at].1))
    };
    let (building, indexing, swapping) = (
        phase_secs(RebuildPhase::Building),
        phase_secs(RebuildPhase::Indexing),
        phase_secs(RebuildPhase::Swapping),
    );
    let secs = |s: Option<f64>| s.map_or("-".to_owned(), |s| format!("{s:.1}s"));
    println!(
        "  phases: building {}, indexing {}, swapping {}",
        secs(building),
        secs(indexing),
        secs(swapping)
    );

    // Correctness: every projection is at the head, and the models agree with what
    // the workload did.
    let statuses = projections::status(&store).await?;
    ensure!(
        statuses.iter().all(|s| s.checkpoint == generated),
        "not every projection reached the head: {statuses:?}"
    );
    let client = store.connection().await?;
    let count = |sql: &'static str| {
        let client = &client;
        async move {
            let n: i64 = client.query_one(sql, &[]).await?.get(0);
            anyhow::Ok(n as u64)
        }
    };
    let orders = count("SELECT count(*) FROM read_models.orders").await?;
    let confirmed =
        count("SELECT count(*) FROM read_models.orders WHERE confirmed_at IS NOT NULL").await?;
    let carts = count("SELECT count(*) FROM read_models.carts").await?;
    let sold =
        count("SELECT COALESCE(sum(units_sold), 0)::bigint FROM read_models.sales_daily").await?;
    let lines_sold = count(
        "SELECT COALESCE(sum(l.quantity), 0)::bigint FROM read_models.order_lines l \
         JOIN read_models.orders o USING (order_id) WHERE o.confirmed_at IS NOT NULL",
    )
    .await?;
    ensure!(
        orders == stats.orders_placed
            && carts == stats.carts
            && confirmed == stats.orders_confirmed,
        "read models disagree with the workload: {orders} orders, {carts} carts, \
         {confirmed} confirmed; workload {stats:?}"
    );
    ensure!(
        sold == lines_sold,
        "sales count {sold} units sold, confirmed order lines {lines_sold}"
    );
    println!(
        "  verified: all projections at {generated}; {orders} orders, {carts} carts, \
         {sold} units sold agree with the workload"
    );

    let line = json!({
        "bench": "rebuild",
        "unit": "events/s",
        "value": rate.round(),
        "events": report.events,
        "baseline": baseline.round(),
        "ratio": round2(rate / baseline),
        "seconds": round2(report.elapsed.as_secs_f64()),
        "building_seconds": building,
        "indexing_seconds": indexing,
        "swapping_seconds": swapping,
        "projections": report.projections.len(),
        "generate_events_per_sec": (generated as f64 / generate_secs).round(),
        "orders": orders,
        "carts": carts,
        "units_sold": sold,
        "verified": true,
    });
    println!("{line}");
    Ok(())
}

/// Appends at least `events` events from `SHOPS` shops at once.
async fn generate(store: &PostgresStore, events: u64) -> Result<ShopStats> {
    let store: Arc<dyn EventStore> = Arc::new(store.clone());
    let per_shop = events.div_ceil(u64::from(SHOPS));
    let mut tasks = Vec::new();
    for shard in 0..SHOPS {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut shop = Shop::new(ShopConfig {
                seed: 42,
                shard,
                products: 500,
                customers: 20_000,
                concurrent_sessions: 64,
                ..ShopConfig::default()
            });
            while shop.stats().events < per_shop {
                let appends = shop.next_appends(APPEND_BATCH_EVENTS);
                for result in store.append_batch(appends).await {
                    result.context("appending the workload")?;
                }
            }
            anyhow::Ok(shop.stats().clone())
        }));
    }
    let mut total = ShopStats::default();
    for task in tasks {
        let s = task.await??;
        total.events += s.events;
        total.appends += s.appends;
        total.carts += s.carts;
        total.orders_placed += s.orders_placed;
        total.orders_confirmed += s.orders_confirmed;
        total.orders_cancelled += s.orders_cancelled;
        total.orders_rejected += s.orders_rejected;
        total.orders_delivered += s.orders_delivered;
        total.refused_commands += s.refused_commands;
    }
    Ok(total)
}

/// Reads the whole log in pages and decodes every event into its domain type.
async fn read_and_decode(store: &PostgresStore) -> Result<(u64, f64)> {
    let started = Instant::now();
    let mut after = 0;
    let mut read = 0u64;
    loop {
        let page = store.read_all(after, READ_PAGE_EVENTS, None).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        read += page.len() as u64;
        for event in page {
            let (t, v, data) = (event.event_type.as_str(), event.schema_version, event.data);
            let decoded = match category_of(&event.stream_id) {
                "product" => ProductEvent::from_stored(t, v, data).map(|_| ()),
                "inventory" => InventoryEvent::from_stored(t, v, data).map(|_| ()),
                "cart" => CartEvent::from_stored(t, v, data).map(|_| ()),
                "order" => OrderEvent::from_stored(t, v, data).map(|_| ()),
                "payment" => PaymentEvent::from_stored(t, v, data).map(|_| ()),
                _ => Ok(()),
            };
            decoded.with_context(|| format!("decoding the event at {}", event.position))?;
        }
    }
    Ok((read, started.elapsed().as_secs_f64()))
}
