//! `commerce bench psp`: payments (an authorization, then its capture) through
//! `HttpGateway` against the sandbox provider over real sockets, with faults injected
//! (a share of 503s on every POST and a share of cards whose answers are lost), against
//! the same two POSTs sent bare (no retries, no breaker) to a sandbox without faults.
//! Afterwards every payment is checked against the provider's ledger: authorized once
//! and captured once, for its amount.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use domain::{Currency, Money, PaymentId};
use sagas::psp::wire::AuthorizationStatus;
use sagas::psp::{HttpGateway, HttpGatewayConfig, Sandbox, SandboxConfig};
use sagas::{Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway};
use serde_json::json;
use uuid::Uuid;

use super::{round2, Percentiles};

/// Times the bench re-runs a call that failed retryably (as the checkout saga's
/// timers would), with the same idempotency key.
const CALL_RUNS_MAX: u32 = 20;
/// Pause between those runs, in milliseconds.
const CALL_RERUN_PAUSE_MS: u64 = 50;
/// The bench's client: enough attempts to ride out the injected faults, a breaker
/// that opens only on a long run of failures.
const ATTEMPTS: u32 = 4;
const BREAKER_FAILURE_THRESHOLD: u32 = 20;
const BREAKER_COOLDOWN_MS: u64 = 200;

struct Side {
    payments: Vec<(String, i64)>,
    latencies_us: Vec<u32>,
    rate: f64,
}

pub async fn run(
    duration: Duration,
    clients: usize,
    fail_rate: f64,
    lost_share: f64,
) -> Result<()> {
    ensure!(clients > 0, "at least one client");
    ensure!(
        (0.0..=1.0).contains(&lost_share),
        "--lost-share must be between 0 and 1"
    );
    println!(
        "psp benchmark: {clients} clients, {}s per side; faults: {:.0}% of POSTs answer 503, {:.0}% of cards lose each first answer",
        duration.as_secs(),
        fail_rate * 100.0,
        lost_share * 100.0
    );
    let any_port = "127.0.0.1:0".parse()?;
    let faulty = Sandbox::start_with(
        any_port,
        SandboxConfig {
            fail_rate,
            seed: 42,
            ..SandboxConfig::default()
        },
    )
    .await?;
    let gateway = Arc::new(HttpGateway::new(HttpGatewayConfig {
        max_attempts: ATTEMPTS,
        breaker_failure_threshold: BREAKER_FAILURE_THRESHOLD,
        breaker_cooldown_ms: BREAKER_COOLDOWN_MS,
        ..HttpGatewayConfig::new(faulty.url())
    })?);
    let reruns = Arc::new(AtomicU64::new(0));
    let measured = drive(clients, duration, {
        let gateway = gateway.clone();
        let reruns = reruns.clone();
        move |client, n| {
            let gateway = gateway.clone();
            let reruns = reruns.clone();
            async move { pay(&gateway, client, n, lost_share, &reruns).await }
        }
    })
    .await?;
    let stats = faulty.stats();

    // Every payment the client completed moved money exactly once.
    for (reference, amount) in &measured.payments {
        let authorizations = faulty.authorizations_for(reference);
        ensure!(
            authorizations.len() == 1,
            "payment {reference}: {} authorizations",
            authorizations.len()
        );
        let view = &authorizations[0];
        ensure!(
            view.status == AuthorizationStatus::Captured
                && view.capture_count == 1
                && view.captured_amount == *amount,
            "payment {reference}: {view:?}"
        );
    }
    faulty.shutdown().await;

    let clean = Sandbox::start(any_port).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    let base = clean.url().to_owned();
    let baseline = drive(clients, duration, move |client, n| {
        let http = http.clone();
        let base = base.clone();
        async move { pay_bare(&http, &base, client, n).await }
    })
    .await?;
    clean.shutdown().await;

    let mut latency = measured.latencies_us;
    let latency = Percentiles::of(&mut latency);
    let mut baseline_latency = baseline.latencies_us;
    let baseline_latency = Percentiles::of(&mut baseline_latency);
    println!(
        "  HttpGateway, faults on: {:>8.0} payments/s   p50 {:>6.2} ms   p99 {:>7.2} ms   ({} payments)",
        measured.rate,
        latency.p50_ms,
        latency.p99_ms,
        measured.payments.len()
    );
    println!(
        "  baseline, bare POSTs, no faults: {:>8.0} payments/s   p50 {:>6.2} ms   p99 {:>7.2} ms   ({} payments)",
        baseline.rate,
        baseline_latency.p50_ms,
        baseline_latency.p99_ms,
        baseline.payments.len()
    );
    println!(
        "  provider: {} requests, {} injected 503s, {} answers dropped, {} replayed; {} calls re-run after the client gave up",
        stats.requests,
        stats.injected_unavailable,
        stats.dropped_responses,
        stats.replayed,
        reruns.load(Ordering::Relaxed)
    );
    println!(
        "  checked against the provider's ledger: {} payments authorized once and captured once",
        measured.payments.len()
    );
    let line = json!({
        "bench": "psp",
        "unit": "payments/s",
        "value": measured.rate.round(),
        "baseline": baseline.rate.round(),
        "ratio": round2(measured.rate / baseline.rate.max(1.0)),
        "p50_ms": round2(latency.p50_ms),
        "p99_ms": round2(latency.p99_ms),
        "baseline_p99_ms": round2(baseline_latency.p99_ms),
        "clients": clients,
        "fail_rate": fail_rate,
        "lost_share": lost_share,
        "payments": measured.payments.len(),
        "baseline_payments": baseline.payments.len(),
        "requests": stats.requests,
        "injected_503": stats.injected_unavailable,
        "dropped_answers": stats.dropped_responses,
        "replayed": stats.replayed,
        "reruns": reruns.load(Ordering::Relaxed),
        "money_moved_once": true,
    });
    println!("{line}");
    Ok(())
}

/// Runs `clients` loops of `payment(client, n)` for `duration`; each returns the
/// payment's reference and amount.
async fn drive<F, Fut>(clients: usize, duration: Duration, payment: F) -> Result<Side>
where
    F: Fn(usize, u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<(String, i64)>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let stop = stop.clone();
            let payment = payment.clone();
            tokio::spawn(async move {
                let mut payments = Vec::new();
                let mut latencies = Vec::new();
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    payments.push(payment(client, n).await?);
                    latencies.push(began.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
                    n += 1;
                }
                Ok::<_, anyhow::Error>((payments, latencies))
            })
        })
        .collect();
    tokio::time::sleep(duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut side = Side {
        payments: Vec::new(),
        latencies_us: Vec::new(),
        rate: 0.0,
    };
    for task in tasks {
        let (payments, latencies) = task.await.context("a client panicked")??;
        side.payments.extend(payments);
        side.latencies_us.extend(latencies);
    }
    side.rate = side.payments.len() as f64 / started.elapsed().as_secs_f64();
    Ok(side)
}

fn amount_of(n: u64) -> i64 {
    1_000 + (n % 100) as i64
}

async fn pay(
    gateway: &HttpGateway,
    client: usize,
    n: u64,
    lost_share: f64,
    reruns: &AtomicU64,
) -> Result<(String, i64)> {
    let eur = Currency::parse("EUR")?;
    let payment_id = PaymentId::from_uuid(Uuid::new_v4());
    let amount = Money::new(amount_of(n), eur);
    // Spread the lost-answer cards evenly over the run.
    let lost = (n as f64 * lost_share).floor() != ((n + 1) as f64 * lost_share).floor();
    let request = AuthorizeRequest {
        idempotency_key: format!("bench-{client}-{n}-authorize"),
        payment_id,
        amount,
        payment_method: if lost {
            "tok_lost_response"
        } else {
            "tok_visa"
        }
        .into(),
    };
    let authorization = until_done(reruns, || gateway.authorize(request.clone())).await?;
    let Authorization::Approved { provider_ref } = authorization else {
        anyhow::bail!("payment {payment_id} declined: {authorization:?}");
    };
    let capture = MoneyMovement {
        idempotency_key: format!("bench-{client}-{n}-capture"),
        provider_ref,
        amount,
    };
    until_done(reruns, || gateway.capture(capture.clone())).await?;
    Ok((payment_id.to_string(), amount.minor))
}

/// Re-runs a call that failed retryably, with the same request (so the same key).
async fn until_done<T, Fut>(reruns: &AtomicU64, call: impl Fn() -> Fut) -> Result<T>
where
    Fut: std::future::Future<Output = Result<T, GatewayError>>,
{
    let mut runs = 0;
    loop {
        match call().await {
            Ok(answer) => return Ok(answer),
            Err(e) if e.is_retryable() && runs + 1 < CALL_RUNS_MAX => {
                runs += 1;
                reruns.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(CALL_RERUN_PAUSE_MS)).await;
            }
            Err(e) => return Err(e).context("a payment call failed for good"),
        }
    }
}

async fn pay_bare(
    http: &reqwest::Client,
    base: &str,
    client: usize,
    n: u64,
) -> Result<(String, i64)> {
    let reference = Uuid::new_v4().to_string();
    let amount = amount_of(n);
    let authorization: serde_json::Value = http
        .post(format!("{base}/v1/authorizations"))
        .header("idempotency-key", format!("bare-{client}-{n}-authorize"))
        .json(&json!({"amount": amount, "currency": "EUR", "payment_method": "tok_visa", "reference": reference}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let id = authorization["id"]
        .as_str()
        .context("an authorization id")?;
    http.post(format!("{base}/v1/authorizations/{id}/capture"))
        .header("idempotency-key", format!("bare-{client}-{n}-capture"))
        .json(&json!({"amount": amount, "currency": "EUR"}))
        .send()
        .await?
        .error_for_status()?;
    Ok((reference, amount))
}
