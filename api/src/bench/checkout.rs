//! `commerce bench checkout`: completed checkouts per second end to end. Customers'
//! 3-line carts are filled beforehand (not measured); then `connections` keep-alive
//! clients post `POST /v1/carts/{id}/checkout` (JWT, Idempotency-Key, JSON) and the
//! saga runs each checkout inside the same process: order, three reservations (over
//! two warehouses), authorization and capture at the sandbox payment provider over a
//! real HTTP socket, confirmation, commits, cart closed. The clock runs from the
//! first request until every checkout has ended.
//!
//! The baseline, measured in the same run, is what the provider alone allows: an
//! authorization and a capture per checkout from the same number of clients, with
//! nothing else.
//!
//! Afterwards the log is checked: `oversold` counts SKUs whose committed units exceed
//! what they received, `violations` counts checkouts that broke an invariant
//! (completed without exactly one capture of the total or with a reservation not
//! committed; ended otherwise with money kept or stock held). Both must be 0.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use api::chaos::shop::{self, Catalog, LogCheck};
use api::http::auth::{mint_hs256, Claims};
use api::http::{self, AppState, Authenticator, Role, ServerConfig};
use api::saga::{SagaArgs, SagaWorkers};
use domain::{CartId, CheckoutId, Currency, Money};
use eventstore::{EventStore, ScratchDatabase};
use sagas::psp::{HttpGateway, HttpGatewayConfig, Sandbox};
use sagas::{AuthorizeRequest, MoneyMovement, PaymentGateway};
use serde_json::json;
use tokio::net::TcpListener;
use uuid::Uuid;

use super::wire::Wire;
use super::{round2, round3, CpuMeter};

/// Completed checkouts per second the issue asks for on this machine.
const TARGET_CHECKOUTS_PER_SEC: f64 = 2_000.0;
const SKUS: [&str; 3] = ["BENCH-CO-A", "BENCH-CO-B", "BENCH-CO-C"];
const PRICE_MINOR: i64 = 1_500;
/// How long the run may take to settle after the last request before it fails.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the provider-only baseline runs.
const BASELINE: Duration = Duration::from_secs(5);

pub async fn run(database_url: &str, checkouts: usize, connections: usize) -> Result<()> {
    ensure!(
        checkouts > 0 && connections > 0,
        "--checkouts and --connections must be positive"
    );
    let db = ScratchDatabase::create(database_url, "bench_checkout").await?;
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let authenticator = Authenticator::new(Some(secret.as_bytes()), None)?;
    let state = AppState::connect(&db.url, authenticator, ServerConfig::default()).await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(http::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into()).await?;
    println!(
        "checkout benchmark: {checkouts} checkouts of 3-line carts over HTTP from {connections} connections, saga and sandbox provider ({}) in this process, fsync on",
        sandbox.url()
    );

    // Stock enough for every checkout, split over two warehouses per SKU.
    let commands = state.commands().clone();
    let catalog = Catalog {
        skus: &SKUS,
        price_minor: PRICE_MINOR,
        // Each warehouse holds a little over half of what the run needs.
        units_per_warehouse: checkouts as u32 / 2 + 1,
    };
    let product_id = shop::seed(&commands, &catalog).await?;
    let started_setup = Instant::now();
    let mut carts = Vec::with_capacity(checkouts);
    for i in 0..checkouts {
        carts.push(
            shop::fill_cart(&commands, product_id, &catalog)
                .await
                .with_context(|| format!("cart {i}"))?,
        );
    }
    println!(
        "  {} carts filled in {:.1} s (not measured)",
        carts.len(),
        started_setup.elapsed().as_secs_f64()
    );

    let saga = SagaWorkers::start(
        &state,
        &SagaArgs {
            psp_url: Some(sandbox.url().to_owned()),
            psp_request_timeout_ms: sagas::psp::REQUEST_TIMEOUT_MS,
            reservation_ttl_secs: sagas::config::RESERVATION_TTL_SECS,
            checkout_timeout_secs: sagas::config::CHECKOUT_TIMEOUT_SECS,
        },
    )
    .await?;
    let token = |sub: &str| -> Result<String> {
        let exp = chrono::Utc::now().timestamp() as u64 + 3_600;
        Ok(mint_hs256(
            secret.as_bytes(),
            &Claims::new(sub, Role::Customer, exp),
        )?)
    };
    let mut requests = Vec::with_capacity(checkouts);
    for (customer, cart) in &carts {
        requests.push((token(&customer.to_string())?, *cart));
    }
    // The set-up holds no checkout: the count of ended ones starts past it, so the
    // harness's first look does not read the whole set-up from the server.
    let setup_head = state.store().head().await?;
    let meter = CpuMeter::start();
    let started = Instant::now();
    let accepted = post_checkouts(addr, requests, connections).await?;
    let posted = started.elapsed();
    let ended = shop::wait_until_ended(
        state.store(),
        setup_head,
        accepted.len() as u64,
        SETTLE_TIMEOUT,
    )
    .await
    .with_context(|| format!("after {:.0} s", started.elapsed().as_secs_f64()))?;
    let took = started.elapsed();
    // A checkout's share, against what the cores give one at the target rate.
    let cpu = meter.stop().and_then(|spent| spent.per(ended.completed));
    let budget_ms = std::thread::available_parallelism().map_or(0.0, |cores| {
        cores.get() as f64 * 1e3 / TARGET_CHECKOUTS_PER_SEC
    });
    saga.stop().await;
    let rate = ended.completed as f64 / took.as_secs_f64();
    println!(
        "  {} checkouts accepted in {:.2} s ({:.0}/s); all ended after {:.2} s: {} completed, {} rejected, {} cancelled",
        accepted.len(),
        posted.as_secs_f64(),
        accepted.len() as f64 / posted.as_secs_f64(),
        took.as_secs_f64(),
        ended.completed,
        ended.rejected,
        ended.cancelled
    );
    println!("  end to end: {rate:.0} completed checkouts/s");
    if let Some(cpu) = &cpu {
        println!(
            "  CPU a completed checkout: {:.3} ms in this process (engine, saga, provider, clients), {:.3} ms on the whole machine (PostgreSQL and the kernel too); the cores were busy {:.0}% of the run; {TARGET_CHECKOUTS_PER_SEC} checkouts/s leaves {:.3} ms",
            cpu.process_ms,
            cpu.machine_ms,
            cpu.busy_share * 100.0,
            budget_ms
        );
    }

    let baseline = provider_only(sandbox.url(), connections).await?;
    println!(
        "  baseline, the sandbox provider alone (authorize + capture per checkout): {baseline:.0} checkouts/s"
    );
    let LogCheck {
        oversold,
        violations,
        ..
    } = shop::check(state.store(), &commands, &accepted, &SKUS).await?;
    println!("  log check: oversold {oversold}, violations {violations}");
    let _ = stop.send(());
    server.await??;
    sandbox.shutdown().await;
    // The scratch database goes before the summary: dropping it ends the pooled
    // connections, whose tasks log that as they stop, and the JSON line must be the
    // last line of the output.
    drop((commands, state));
    drop(db);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ratio = if baseline > 0.0 { rate / baseline } else { 0.0 };
    println!(
        "  {:.2}x the provider-only rate; target {TARGET_CHECKOUTS_PER_SEC} checkouts/s: {}",
        ratio,
        if rate >= TARGET_CHECKOUTS_PER_SEC {
            "met"
        } else {
            "not met"
        }
    );
    println!(
        "{}",
        json!({
            "bench": "checkout",
            "unit": "completed checkouts/s",
            "value": round2(rate),
            "baseline": round2(baseline),
            "baseline_what": "authorize + capture at the sandbox provider alone, same clients",
            "ratio": round2(ratio),
            "checkouts": checkouts,
            "connections": connections,
            "completed": ended.completed,
            "rejected": ended.rejected,
            "cancelled": ended.cancelled,
            "seconds": round2(took.as_secs_f64()),
            "oversold": oversold,
            "violations": violations,
            "target": TARGET_CHECKOUTS_PER_SEC,
            "process_cpu_ms_per_checkout": cpu.as_ref().map(|c| round3(c.process_ms)),
            "machine_cpu_ms_per_checkout": cpu.as_ref().map(|c| round3(c.machine_ms)),
            "cores_busy_share": cpu.as_ref().map(|c| round2(c.busy_share)),
        })
    );
    ensure!(
        oversold == 0 && violations == 0,
        "the log breaks the checkout's invariants"
    );
    Ok(())
}

/// Posts every checkout from `connections` clients; returns the accepted ids.
async fn post_checkouts(
    addr: SocketAddr,
    requests: Vec<(String, CartId)>,
    connections: usize,
) -> Result<Vec<CheckoutId>> {
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicU64::new(0));
    let body = Arc::new(
        json!({
            "shipping_address": {"name": "Bench Customer", "line1": "1 Load Street",
                "city": "Berlin", "postal_code": "10115", "country": "DE"},
            "payment_method": "tok_visa",
        })
        .to_string(),
    );
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let requests = requests.clone();
            let next = next.clone();
            let body = body.clone();
            tokio::spawn(async move {
                let mut wire = Wire::connect(addr).await?;
                let mut accepted = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some((token, cart)) = requests.get(i) else {
                        return Ok::<_, anyhow::Error>(accepted);
                    };
                    let request = format!(
                        "POST /v1/carts/{cart}/checkout HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {token}\r\nidempotency-key: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        Uuid::new_v4().hyphenated(),
                        body.len()
                    );
                    let answer = wire.exchange(request.as_bytes()).await?;
                    let reply = wire.body(&answer);
                    ensure!(
                        answer.status == 202,
                        "checkout answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(reply)
                    );
                    let reply: Accepted = serde_json::from_slice(reply)?;
                    let id = CheckoutId::parse(reply.ids.checkout_id)
                        .ok()
                        .context("no checkout id")?;
                    accepted.push(id);
                }
            })
        })
        .collect();
    let mut accepted = Vec::new();
    for task in tasks {
        accepted.extend(task.await??);
    }
    Ok(accepted)
}

/// What the benchmark reads of a checkout's 202 answer.
#[derive(serde::Deserialize)]
struct Accepted<'a> {
    #[serde(borrow)]
    ids: AcceptedIds<'a>,
}

#[derive(serde::Deserialize)]
struct AcceptedIds<'a> {
    checkout_id: &'a str,
}

/// Authorize + capture per "checkout" against the sandbox alone.
async fn provider_only(url: &str, connections: usize) -> Result<f64> {
    let gateway = Arc::new(HttpGateway::new(HttpGatewayConfig::new(url))?);
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + BASELINE;
    let started = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let gateway = gateway.clone();
            let done = done.clone();
            tokio::spawn(async move {
                let amount = Money::new(3 * PRICE_MINOR, Currency::parse("EUR")?);
                while Instant::now() < deadline {
                    let key = Uuid::new_v4();
                    let authorized = gateway
                        .authorize(AuthorizeRequest {
                            idempotency_key: format!("{key}-authorize"),
                            payment_id: domain::PaymentId::from_uuid(key),
                            amount,
                            payment_method: "tok_visa".into(),
                        })
                        .await?;
                    let sagas::Authorization::Approved { provider_ref } = authorized else {
                        anyhow::bail!("the sandbox declined tok_visa");
                    };
                    gateway
                        .capture(MoneyMovement {
                            idempotency_key: format!("{key}-capture"),
                            provider_ref,
                            amount,
                        })
                        .await?;
                    done.fetch_add(1, Ordering::Relaxed);
                }
                Ok::<_, anyhow::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
