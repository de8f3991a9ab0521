//! `commerce demo`: a shop that runs itself. It starts the engine exactly as
//! `commerce serve` does (on a database of its own), seeds a catalog through the
//! public API, sends simulated shoppers through HTTP with real tokens, runs a flash
//! sale, and ends with a report taken from the event log: orders by outcome, units
//! sold against stock (oversell), checkout rate and latency, projection lag, and the
//! hash chain verified. Its last line is the report as one JSON object.

mod catalog;
mod client;
mod progress;
mod report;
mod shoppers;

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use eventstore::{PostgresConfig, PostgresStore};
use serde_json::json;
use tokio::net::TcpListener;

use crate::http::Authenticator;
use crate::managed_pg::ManagedPostgres;
use crate::serve::{serve_on, shutdown_signal, ServeArgs};
use crate::token::hs256_secret;

/// Longest wait for the projections to reach the log's head before the report.
const PROJECTIONS_SETTLE_MAX: Duration = Duration::from_secs(30);
const PROJECTIONS_POLL_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub serve: ServeArgs,
    /// Leave the engine running after the report, until ctrl-c or SIGTERM.
    #[arg(long)]
    pub keep_running: bool,
    /// The demo's database, created anew on each run (an older one of that name is
    /// dropped) on the server of DATABASE_URL, or on the managed PostgreSQL.
    #[arg(long, default_value = "commerce_demo")]
    pub database: String,
    /// Products to seed (two SKUs each).
    #[arg(long, default_value_t = 2_000)]
    pub products: usize,
    /// Shoppers who browse, fill carts, merge a guest cart and check out.
    #[arg(long, default_value_t = 300)]
    pub shoppers: usize,
    /// Shoppers in the flash sale, each after one unit.
    #[arg(long, default_value_t = 2_000)]
    pub flash_shoppers: usize,
    /// Units of the flash sale's SKU in stock.
    #[arg(long, default_value_t = 300)]
    pub flash_units: u32,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Seed of the shoppers' choices (the same seed, the same shop).
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub async fn run(args: DemoArgs, database_url: Option<String>) -> Result<()> {
    ensure!(args.products >= 1, "--products must be at least 1");
    ensure!(args.flash_units >= 1, "--flash-units must be at least 1");
    ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    let (admin_url, managed) = match database_url {
        Some(url) => (url, None),
        None => {
            let data_dir = args.serve.data_dir.resolve();
            let server = ManagedPostgres::start(&data_dir).await?;
            eprintln!(
                "demo: using the managed PostgreSQL in {}",
                data_dir.display()
            );
            (server.database_url(), Some(server))
        }
    };
    let result = run_on(&args, &admin_url).await;
    if let Some(server) = managed {
        if let Err(e) = server.stop().await {
            eprintln!("demo: cannot stop the managed PostgreSQL: {e}");
        }
    }
    result
}

async fn run_on(args: &DemoArgs, admin_url: &str) -> Result<()> {
    let began = Instant::now();
    let url = eventstore::recreate_database(admin_url, &args.database)
        .await
        .context("cannot create the demo's database")?;
    let secret = hs256_secret(
        args.serve.secret.jwt_secret.as_deref(),
        &args.serve.data_dir.resolve(),
    )?;
    let authenticator = Authenticator::new(Some(&secret), None)?;
    let listener = TcpListener::bind(args.serve.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.serve.listen))?;
    let base = format!("http://{}", listener.local_addr()?);

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (ready, started) = tokio::sync::oneshot::channel::<()>();
    let engine = {
        let mut serve_args = args.serve.clone();
        // A search index of the demo's own: `commerce serve` keeps its index beside
        // it, and two processes never share one.
        serve_args
            .search_dir
            .get_or_insert_with(|| args.serve.data_dir.resolve().join("demo-search"));
        // Every simulated shopper comes from 127.0.0.1, which a real shop's
        // thousands of customers never share: the per-address limit is off here.
        // The per-principal limit stays as configured.
        serve_args.rate_limit_ip_per_sec = 0.0;
        let url = url.clone();
        tokio::spawn(async move {
            serve_on(
                listener,
                &serve_args,
                &url,
                authenticator,
                async move {
                    let _ = ready.send(());
                },
                async move {
                    let _ = stopped.await;
                },
            )
            .await
        })
    };
    if started.await.is_err() {
        return match engine.await {
            Ok(Err(e)) => Err(e.context("the engine did not start")),
            _ => Err(anyhow::anyhow!("the engine did not start")),
        };
    }
    println!("demo: the engine serves {base} (OpenAPI at {base}/openapi.json)");
    println!("demo: database {}", args.database);

    let outcome = drive(args, &base, &url, secret, began).await;
    if outcome.is_ok() && args.keep_running {
        println!("demo: the engine keeps running at {base}; ctrl-c stops it");
        shutdown_signal().await;
    }
    let _ = stop.send(());
    match engine.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("demo: the engine stopped with an error: {e:#}"),
        Err(e) => eprintln!("demo: the engine task failed: {e}"),
    }
    outcome
}

async fn drive(
    args: &DemoArgs,
    base: &str,
    url: &str,
    secret: Vec<u8>,
    began: Instant,
) -> Result<()> {
    let client = client::Client::new(base.to_string(), secret)?;
    let catalog = catalog::seed(
        &client,
        args.products,
        args.flash_units,
        args.concurrency,
        args.seed,
    )
    .await?;
    println!(
        "demo: seeded {} products ({} SKUs, {} units in {} warehouses) through the API",
        args.products + 1,
        catalog.skus.len() + 1,
        catalog.units_received,
        catalog::WAREHOUSES.len()
    );

    let shopping_began = Instant::now();
    let shopping = shoppers::shop(
        &client,
        &catalog,
        args.shoppers,
        args.concurrency,
        args.seed,
    )
    .await;
    let shopping_took = shopping_began.elapsed();
    let (flash, flash_took) = shoppers::flash_sale(
        &client,
        &catalog.flash,
        args.flash_shoppers,
        args.concurrency,
    )
    .await;

    let store = PostgresStore::connect(PostgresConfig::new(url)).await?;
    let lag = settle_projections(&store).await?;
    let figures = report::from_log(&store).await?;
    let (chain_verified, chain_events) = report::chain_verified(&store).await?;
    let head = eventstore::EventStore::head(&store).await?;
    let auditor = client.token(crate::http::Role::Auditor, "demo-report")?;
    let read_model = report::orders_read_model(&client, &auditor, head).await?;
    let (flash_stocked, flash_sold) = figures
        .sku
        .get(&catalog.flash.sku)
        .copied()
        .unwrap_or_default();

    let mut latencies: Vec<u32> = shopping
        .checkout_ms
        .iter()
        .chain(&flash.checkout_ms)
        .copied()
        .collect();
    latencies.sort_unstable();
    let percentile = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let checkouts = shopping.checkouts + flash.checkouts;
    let checkouts_per_sec = checkouts as f64 / (shopping_took + flash_took).as_secs_f64();
    let client_errors = shopping.failed + flash.failed;

    println!();
    println!("== report (from the event log) ==");
    println!(
        "orders: {} placed, {} confirmed, {} cancelled ({} after confirmation), {} rejected",
        figures.orders_placed,
        figures.orders_confirmed,
        figures.orders_cancelled,
        figures.orders_cancelled_after_confirmation,
        figures.orders_rejected
    );
    println!(
        "stock: {} units sold of {} received; oversold: {}",
        figures.units_sold, figures.units_stocked, figures.oversold
    );
    println!(
        "flash sale: {} shoppers for {} units of {}: {} sold, {} turned away",
        args.flash_shoppers,
        flash_stocked,
        catalog.flash.sku,
        flash_sold,
        flash.rejected + flash.failed + flash.cancelled
    );
    println!(
        "checkouts: {checkouts} in {:.1} s of shopping, {checkouts_per_sec:.0}/s, p50 {} ms, p99 {} ms",
        (shopping_took + flash_took).as_secs_f64(),
        percentile(0.50),
        percentile(0.99)
    );
    println!(
        "shoppers: {} searches, {} products viewed, {} guest carts merged on login, {} orders cancelled by their customer",
        shopping.searches, shopping.browsed, shopping.merges, shopping.cancelled_by_customer
    );
    if let Some(error) = shopping.first_error.as_ref().or(flash.first_error.as_ref()) {
        println!("shopper errors: {client_errors} (first: {error})");
    }
    println!("projections: lag {lag} events after the run");
    // The orders read model, over HTTP, against the log's final states.
    let read_models_agree = match &read_model {
        Some(statuses) => {
            let count = |status: &str| statuses.get(status).copied().unwrap_or(0);
            let read_placed: u64 = statuses.values().sum();
            let agree = read_placed == figures.orders_placed
                && count("confirmed") == figures.orders_confirmed
                && count("cancelled") == figures.orders_cancelled
                && count("rejected") == figures.orders_rejected;
            println!(
                "orders read model (GET /v1/orders?after={head}): {read_placed} orders, {} confirmed, {} cancelled, {} rejected: {}",
                count("confirmed"),
                count("cancelled"),
                count("rejected"),
                if agree { "equal to the log" } else { "DIFFERS FROM THE LOG" }
            );
            agree
        }
        None => {
            println!("orders read model: not compared (stale, or too many orders to page through)");
            false
        }
    };
    println!(
        "hash chain: {} over {chain_events} events",
        if chain_verified { "verified" } else { "BROKEN" }
    );
    println!("took {:.1} s", began.elapsed().as_secs_f64());
    println!();
    println!("next, with the engine up (commerce demo --keep-running):");
    println!("  TOKEN=$(commerce token --role auditor --sub me)");
    println!("  curl -H \"Authorization: Bearer $TOKEN\" '{base}/v1/events?limit=5'");
    println!(
        "  curl -H \"Authorization: Bearer $TOKEN\" '{base}/v1/streams/inventory-{}/events'",
        catalog.flash.sku
    );
    println!("  curl -H \"Authorization: Bearer $TOKEN\" '{base}/v1/sales/top-skus?limit=5'");
    println!(
        "  curl -H \"Authorization: Bearer $TOKEN\" '{base}/v1/orders?status=cancelled&limit=5'"
    );
    println!("  curl -H \"Authorization: Bearer $TOKEN\" '{base}/v1/admin/projections'");
    println!("and on the demo's database (DATABASE_URL={url}):");
    println!("  commerce audit verify");
    println!("  commerce projections rebuild --all");
    println!();
    let line = json!({
        "demo": "commerce",
        "orders_placed": figures.orders_placed,
        "orders_confirmed": figures.orders_confirmed,
        "orders_cancelled": figures.orders_cancelled,
        "orders_rejected": figures.orders_rejected,
        "units_sold": figures.units_sold,
        "units_stocked": figures.units_stocked,
        "oversold": figures.oversold,
        "flash_units": flash_stocked,
        "flash_sold": flash_sold,
        "checkouts": checkouts,
        "checkouts_per_sec": (checkouts_per_sec * 10.0).round() / 10.0,
        "checkout_p99_ms": percentile(0.99),
        "client_errors": client_errors,
        "projection_lag": lag,
        "read_models_agree": read_models_agree,
        "events": figures.events,
        "chain_verified": chain_verified,
        "seconds": (began.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    });
    println!("{line}");
    Ok(())
}

/// Waits (bounded) until every projection has applied the whole log; returns the
/// largest lag left.
async fn settle_projections(store: &PostgresStore) -> Result<u64> {
    let deadline = Instant::now() + PROJECTIONS_SETTLE_MAX;
    loop {
        let statuses = projections::status(store).await?;
        let lag = statuses.iter().map(|s| s.lag).max().unwrap_or(0);
        if lag == 0 || Instant::now() >= deadline {
            return Ok(lag);
        }
        tokio::time::sleep(PROJECTIONS_POLL_INTERVAL).await;
    }
}
