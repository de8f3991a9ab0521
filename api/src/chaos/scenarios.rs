//! Fault scenarios: the engine (`serve_on`: HTTP, projections, search, the checkout
//! saga) runs in this process on a database of its own, reaching PostgreSQL and the
//! sandbox payment provider through a [`FaultProxy`] each. Writers send stock
//! receipts (each a logical command with its own `Idempotency-Key`, retried with the
//! same key until it is acknowledged) and customers check out filled carts, while
//! one path misbehaves for a while and then heals.
//!
//! Afterwards the scenario counts, from the log: acknowledged commands, those found
//! where their answer said, lost ones (acknowledged, not in the log) and duplicated
//! ones (written more than once); how refusals looked (a 503 problem+json, and how
//! long the slowest took); whether `/ready` reported a database outage and whether
//! the payment provider's circuit breaker opened and closed again; how long the
//! engine took to acknowledge a command after the heal; and the checkout invariants
//! (every checkout ended, no oversell, no double charge, no stock held).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use commands::{Commands, Limits};
use domain::{CheckoutId, Payment};
use eventstore::{Direction, EventStore, PostgresConfig, PostgresStore, ScratchDatabase};
use sagas::psp::Sandbox;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

use super::proxy::{Fault, FaultProxy};
use super::shop::{self, Catalog};
use crate::http::auth::{mint_hs256, Claims};
use crate::http::idempotency::IdempotencyKeys;
use crate::http::{Authenticator, Role};
use crate::managed_pg::ManagedPostgres;
use crate::serve::{serve_on, ServeArgs};

/// A refusal must come within this long: the engine fails fast, it does not hang.
pub const FAIL_FAST_MAX: Duration = Duration::from_secs(10);
/// How long a [`Fault::Delay`] holds each chunk: longer than the engine's store and
/// payment-provider timeouts (5 s each), so that calls time out under it.
pub const DELAY: Duration = Duration::from_secs(8);
/// Shortest fault of a payment provider that stops answering (see
/// [`Scenario::fault_for`]).
pub const SILENT_PROVIDER_FAULT_MIN: Duration = Duration::from_secs(20);
/// The engine's timeout per request to the payment provider in the scenarios
/// (`--psp-request-timeout-ms`; 5 s by default): the sandbox answers in
/// milliseconds, and a shorter timeout lets the breaker's five failures in a row
/// come within a short fault.
pub const PSP_REQUEST_TIMEOUT: Duration = Duration::from_secs(1);
/// Traffic between the engine's restart and its second SIGKILL.
const KILL_PAUSE: Duration = Duration::from_millis(1_500);
/// Longest wait for a restarted engine to answer `/ready` with 200.
const ENGINE_START_MAX: Duration = Duration::from_secs(60);
/// The clients give up on a request after this; one that reaches it counts as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// How often `/ready` and `/metrics` are looked at during the run.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A writer's pause after a refusal before it retries the same command.
const RETRY_PAUSE: Duration = Duration::from_millis(100);
/// The checkout carts' SKUs.
const SKUS: [&str; 2] = ["CHAOS-A", "CHAOS-B"];
const PRICE_MINOR: i64 = 2_500;
/// Problem types a refusal under a fault may carry: the store or the engine is
/// unavailable for now, or the request ran out of time.
const REFUSAL_TYPES: [&str; 3] = [
    "https://commerce.example/problems/store-unavailable",
    "https://commerce.example/problems/timeout",
    "https://commerce.example/problems/overloaded",
];
const KEY_IN_FLIGHT: &str = "https://commerce.example/problems/idempotency-key-in-flight";
/// `commerce_psp_breaker_state` values.
const BREAKER_CLOSED: f64 = 0.0;
const BREAKER_OPEN: f64 = 2.0;

/// Which path a proxy fault is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// The engine's connections to PostgreSQL.
    Postgres,
    /// The engine's connections to the payment provider.
    PaymentProvider,
}

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// A proxy fault on one path.
    Proxy { path: Path, fault: Fault },
    /// The PostgreSQL server stopped the way a crash stops it (`pg_ctl stop -m
    /// immediate`), then started again: the scenario runs on a server of its own
    /// (the machine's PostgreSQL binaries, see `managed_pg`).
    PostgresCrash,
    /// `commerce serve` (a process of its own) SIGKILLed under load, restarted,
    /// SIGKILLed again a moment later, and restarted.
    EngineKill,
}

impl Scenario {
    /// `postgres-delay`, `psp-blackhole`, `postgres-crash`, ...
    pub fn name(&self) -> String {
        match self {
            Scenario::Proxy { path, fault } => {
                let path = match path {
                    Path::Postgres => "postgres",
                    Path::PaymentProvider => "psp",
                };
                format!("{path}-{}", fault.name())
            }
            Scenario::PostgresCrash => "postgres-crash".into(),
            Scenario::EngineKill => "engine-sigkill".into(),
        }
    }

    /// Every proxy mode on both paths, then the database's crash and the engine's.
    pub fn all() -> Vec<Scenario> {
        [Path::Postgres, Path::PaymentProvider]
            .into_iter()
            .flat_map(|path| {
                [
                    Fault::Delay(DELAY),
                    Fault::Drop,
                    Fault::Reset,
                    Fault::Blackhole,
                ]
                .into_iter()
                .map(move |fault| Scenario::Proxy { path, fault })
            })
            .chain([Scenario::PostgresCrash, Scenario::EngineKill])
            .collect()
    }

    /// How long the fault lasts. A provider that stops answering (delay, black hole)
    /// fails each payment attempt only at the client's request timeout
    /// ([`PSP_REQUEST_TIMEOUT`]), and the saga runner applies a batch's steps before
    /// it takes the next, so few attempts overlap: the breaker's five failures in a
    /// row take a few rounds of timeouts.
    pub fn fault_for(&self, settings: &Settings) -> Duration {
        match self {
            Scenario::Proxy {
                path: Path::PaymentProvider,
                fault: Fault::Delay(_) | Fault::Blackhole,
            } => settings.fault_for.max(SILENT_PROVIDER_FAULT_MIN),
            _ => settings.fault_for,
        }
    }

    /// Whether the fault keeps the engine from its database.
    fn cuts_off_the_database(&self) -> bool {
        matches!(
            self,
            Scenario::Proxy {
                path: Path::Postgres,
                ..
            } | Scenario::PostgresCrash
        )
    }
}

/// The load and the timing of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Concurrent writers of stock receipts.
    pub writers: usize,
    /// Carts checked out, spread over the run until the heal.
    pub checkouts: usize,
    /// Traffic before the fault.
    pub steady: Duration,
    /// How long the fault lasts.
    pub fault_for: Duration,
    /// Traffic after the heal.
    pub after: Duration,
    /// Longest wait for everything to settle after the heal.
    pub settle_max: Duration,
    /// The `commerce` binary, which the engine-kill scenario runs as a process of
    /// its own (`commerce serve`) so that it can SIGKILL it.
    pub engine_binary: Option<std::path::PathBuf>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            writers: 8,
            checkouts: 40,
            steady: Duration::from_secs(1),
            fault_for: Duration::from_secs(10),
            after: Duration::from_secs(1),
            settle_max: Duration::from_secs(180),
            engine_binary: None,
        }
    }
}

/// What a scenario found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub scenario: String,
    /// Commands acknowledged: stock receipts answered 2xx and checkouts accepted.
    pub acknowledged: u64,
    /// Of those, found in the log where their answer said.
    pub found: u64,
    pub lost: u64,
    /// Events written beyond one write per acknowledged command (a receipt written
    /// twice, a cart checked out twice).
    pub duplicated: u64,
    /// Answers other than 2xx.
    pub refused: u64,
    /// Refusals that were not a 503 problem+json of an expected type.
    pub bad_refusals: u64,
    /// Answers other than 2xx by status and problem type, e.g. `503 store-unavailable`.
    pub refusals_by_kind: std::collections::BTreeMap<String, u64>,
    /// The slowest refusal: what it answered, e.g. `receipt 503 timeout`.
    pub slowest_refusal_kind: String,
    pub slowest_refusal: Duration,
    /// Requests that got no answer within the client's timeout.
    pub hung: u64,
    /// Requests whose connection failed (refused or reset): the engine was down.
    pub unanswered: u64,
    /// SKUs that still hold reserved units once every checkout has ended.
    pub stuck_reservations: u64,
    pub ready_reported_outage: bool,
    pub breaker_opened: bool,
    pub breaker_closed_after: bool,
    /// From the heal to the first command acknowledged after it.
    pub recovery: Option<Duration>,
    pub checkouts_completed: u64,
    pub checkouts_not_completed: u64,
    pub oversold: u64,
    /// Checkouts that broke an invariant (see [`shop::LogCheck`]), plus payments the
    /// provider captured more than once or holds money for that the log gave back.
    pub violations: u64,
}

impl Report {
    /// Why the scenario failed, if it did.
    pub fn failures(&self, scenario: Scenario) -> Vec<String> {
        let mut failures = Vec::new();
        let mut expect = |ok: bool, what: String| {
            if !ok {
                failures.push(what);
            }
        };
        expect(
            self.lost == 0,
            format!("{} acknowledged commands lost", self.lost),
        );
        expect(
            self.duplicated == 0,
            format!("{} duplicated writes", self.duplicated),
        );
        expect(self.hung == 0, format!("{} requests hung", self.hung));
        expect(
            scenario == Scenario::EngineKill || self.unanswered == 0,
            format!("{} requests found no engine", self.unanswered),
        );
        expect(
            self.stuck_reservations == 0,
            format!("{} SKUs still hold reservations", self.stuck_reservations),
        );
        expect(
            self.bad_refusals == 0,
            format!(
                "{} refusals were not a 503 problem: {:?}",
                self.bad_refusals, self.refusals_by_kind
            ),
        );
        expect(
            self.slowest_refusal <= FAIL_FAST_MAX,
            format!(
                "a refusal took {:?} ({})",
                self.slowest_refusal, self.slowest_refusal_kind
            ),
        );
        expect(self.recovery.is_some(), "no command after the heal".into());
        expect(
            self.oversold == 0,
            format!("{} SKUs oversold", self.oversold),
        );
        expect(
            self.violations == 0,
            format!("{} checkout invariant violations", self.violations),
        );
        if scenario == Scenario::EngineKill {
            // Killed, the engine answers nothing at all: what counts is that it
            // comes back and its work is whole.
        } else if scenario.cuts_off_the_database() {
            expect(self.refused > 0, "the fault refused no command".into());
            expect(
                self.ready_reported_outage,
                "/ready did not report the outage".into(),
            );
        } else {
            expect(
                self.breaker_opened,
                "the circuit breaker never opened".into(),
            );
            expect(
                self.breaker_closed_after,
                "the circuit breaker did not close after the heal".into(),
            );
        }
        failures
    }
}

/// One request's fate as its client saw it.
#[derive(Debug, Clone)]
struct Attempt {
    /// `receipt` or `checkout`.
    what: &'static str,
    status: Option<u16>,
    /// No answer because the client's timeout ran out (else: the connection failed).
    timed_out: bool,
    took: Duration,
    problem_type: Option<String>,
}

/// An acknowledged stock receipt.
#[derive(Debug, Clone)]
struct Receipt {
    sku: String,
    command_id: Uuid,
    position: u64,
    at: Instant,
}

/// What the clients saw, shared by their tasks.
#[derive(Default)]
struct Seen {
    attempts: Vec<Attempt>,
    receipts: Vec<Receipt>,
    /// Accepted checkouts and when.
    checkouts: Vec<(CheckoutId, Instant)>,
}

/// Runs `scenario` on a new database of the server at `admin_url`.
pub async fn run(admin_url: &str, scenario: Scenario, settings: &Settings) -> Result<Report> {
    let data_dir = std::env::temp_dir().join(format!("commerce-chaos-{}", Uuid::new_v4()));
    let server = match scenario {
        Scenario::PostgresCrash => Some(CrashableServer::start(data_dir.join("postgres")).await?),
        Scenario::Proxy { .. } | Scenario::EngineKill => None,
    };
    let outcome = run_on(admin_url, scenario, settings, server.as_ref(), &data_dir).await;
    if let Some(server) = server {
        server.stop().await;
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut report = outcome?;
    report.scenario = scenario.name();
    Ok(report)
}

async fn run_on(
    admin_url: &str,
    scenario: Scenario,
    settings: &Settings,
    server: Option<&CrashableServer>,
    data_dir: &std::path::Path,
) -> Result<Report> {
    let admin_url = server.map_or_else(|| admin_url.to_owned(), |s| s.url.clone());
    let db = ScratchDatabase::create(&admin_url, "chaos").await?;
    // The managed server listens on a Unix socket only: a crash scenario needs no
    // proxy in front of it.
    let postgres = match server {
        None => Some(FaultProxy::start(postgres_address(&db.url).await?).await?),
        Some(_) => None,
    };
    let engine_url = match &postgres {
        Some(proxy) => through(&db.url, proxy.address())?,
        None => db.url.clone(),
    };
    let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into()).await?;
    let provider = FaultProxy::start(sandbox.local_addr()).await?;
    let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let launch = Launch {
        database_url: engine_url,
        psp_url: format!("http://{}", provider.address()),
        data_dir: data_dir.to_owned(),
        secret: secret.clone(),
    };
    let engine = match scenario {
        Scenario::EngineKill => {
            let binary = settings
                .engine_binary
                .clone()
                .context("the engine-kill scenario needs the `commerce` binary")?;
            Engine::spawn(launch, binary).await?
        }
        _ => Engine::start(launch).await?,
    };
    let paths = Paths {
        postgres: postgres.as_ref(),
        provider: &provider,
        sandbox: &sandbox,
        server,
        engine: &engine,
    };
    let outcome = drive(&db, &engine, &secret, scenario, settings, paths).await;
    engine.stop().await;
    sandbox.shutdown().await;
    outcome
}

async fn drive(
    db: &ScratchDatabase,
    engine: &Engine,
    secret: &str,
    scenario: Scenario,
    settings: &Settings,
    paths: Paths<'_>,
) -> Result<Report> {
    // The shop, written directly (not through the proxy).
    let store = PostgresStore::connect(PostgresConfig::new(&db.url)).await?;
    let commands = Commands::on_postgres(store.clone(), Limits::default()).await?;
    let catalog = Catalog {
        skus: &SKUS,
        price_minor: PRICE_MINOR,
        units_per_warehouse: settings.checkouts as u32 / 2 + 1,
    };
    let product_id = shop::seed(&commands, &catalog).await?;
    let mut carts = Vec::with_capacity(settings.checkouts);
    for _ in 0..settings.checkouts {
        carts.push(shop::fill_cart(&commands, product_id, &catalog).await?);
    }
    let client = reqwest::Client::builder().timeout(CLIENT_TIMEOUT).build()?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));

    let mut tasks = Vec::new();
    for w in 0..settings.writers {
        let token = token(secret, Role::Admin, &format!("chaos-writer-{w}"))?;
        tasks.push(tokio::spawn(write_receipts(
            client.clone(),
            engine.base.clone(),
            token,
            format!("chaos-writer-{w}"),
            format!("CHAOS-W{w}"),
            seen.clone(),
            stop.clone(),
        )));
    }
    let checkout_window = settings.steady + scenario.fault_for(settings);
    tasks.push(tokio::spawn(post_checkouts(
        client.clone(),
        engine.base.clone(),
        carts
            .iter()
            .map(|(customer, cart)| {
                Ok((token(secret, Role::Customer, &customer.to_string())?, *cart))
            })
            .collect::<Result<Vec<_>>>()?,
        checkout_window,
        seen.clone(),
    )));

    tokio::time::sleep(settings.steady).await;
    let watched = Arc::new(Mutex::new(Watched::default()));
    let stop_watching = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_engine(
        client.clone(),
        engine.base.clone(),
        watched.clone(),
        stop_watching.clone(),
    ));
    paths.break_down(scenario).await?;
    let mut report = Report::default();
    tokio::time::sleep(scenario.fault_for(settings)).await;
    paths.heal(scenario).await?;
    let healed = Instant::now();
    tokio::time::sleep(settings.after).await;
    stop.store(true, Ordering::Relaxed);

    // Everything settles: writers finish the command they are on, every checkout
    // ends, and the breaker closes again.
    let settle = async {
        for task in tasks {
            task.await??;
        }
        let accepted = seen.lock().expect("not poisoned").checkouts.len() as u64;
        shop::wait_until_ended(&store, 0, accepted, settings.settle_max).await?;
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(settings.settle_max, settle)
        .await
        .context("the run did not settle")??;
    if !scenario.cuts_off_the_database() {
        // The breaker closes once a probe gets through after its cooldown.
        let deadline = Instant::now() + settings.settle_max;
        while Instant::now() < deadline {
            let seen = *watched.lock().expect("not poisoned");
            if !seen.breaker_opened || seen.breaker_closed_after_open {
                break;
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
    stop_watching.store(true, Ordering::Relaxed);
    watcher.await?;
    let seen_by_watcher = *watched.lock().expect("not poisoned");
    report.ready_reported_outage = seen_by_watcher.ready_reported_outage;
    report.breaker_opened = seen_by_watcher.breaker_opened;
    report.breaker_closed_after = seen_by_watcher.breaker_closed_after_open;

    let seen = std::mem::take(&mut *seen.lock().expect("not poisoned"));
    count_attempts(&seen.attempts, &mut report);
    report.recovery = seen
        .receipts
        .iter()
        .map(|r| r.at)
        .chain(seen.checkouts.iter().map(|(_, at)| *at))
        .filter(|at| *at >= healed)
        .min()
        .map(|at| at - healed);
    count_receipts(&store, &seen.receipts, settings.writers, &mut report).await?;
    count_checkouts(&store, &commands, &seen.checkouts, &mut report).await?;
    report.violations += provider_violations(&commands, paths.sandbox, &seen.checkouts).await?;
    Ok(report)
}

/// The proxies in front of PostgreSQL and the provider, the provider itself, and
/// the scenario's own server when it crashes one.
#[derive(Clone, Copy)]
struct Paths<'a> {
    postgres: Option<&'a FaultProxy>,
    provider: &'a FaultProxy,
    sandbox: &'a Sandbox,
    server: Option<&'a CrashableServer>,
    engine: &'a Engine,
}

impl Paths<'_> {
    async fn break_down(&self, scenario: Scenario) -> Result<()> {
        match scenario {
            Scenario::Proxy {
                path: Path::Postgres,
                fault,
            } => self
                .postgres
                .context("no proxy before PostgreSQL")?
                .set(fault),
            Scenario::Proxy {
                path: Path::PaymentProvider,
                fault,
            } => self.provider.set(fault),
            Scenario::PostgresCrash => self.server.context("no server to crash")?.crash().await?,
            Scenario::EngineKill => {
                self.engine.kill().await?;
                self.engine.restart().await?;
                tokio::time::sleep(KILL_PAUSE).await;
                self.engine.kill().await?;
            }
        }
        Ok(())
    }

    async fn heal(&self, scenario: Scenario) -> Result<()> {
        match scenario {
            Scenario::Proxy {
                path: Path::Postgres,
                ..
            } => self.postgres.context("no proxy before PostgreSQL")?.heal(),
            Scenario::Proxy {
                path: Path::PaymentProvider,
                ..
            } => self.provider.heal(),
            Scenario::EngineKill => self.engine.restart().await?,
            Scenario::PostgresCrash => {
                self.server
                    .context("no server to restart")?
                    .restart()
                    .await?
            }
        }
        Ok(())
    }
}

/// A PostgreSQL server of the scenario's own, which it may crash and restart.
struct CrashableServer {
    data_dir: std::path::PathBuf,
    url: String,
    running: tokio::sync::Mutex<Option<ManagedPostgres>>,
}

impl CrashableServer {
    async fn start(data_dir: std::path::PathBuf) -> Result<CrashableServer> {
        let server = ManagedPostgres::start(&data_dir)
            .await
            .context("the crash scenario needs PostgreSQL's server binaries")?;
        Ok(CrashableServer {
            url: server.database_url(),
            data_dir,
            running: tokio::sync::Mutex::new(Some(server)),
        })
    }

    async fn crash(&self) -> Result<()> {
        if let Some(server) = self.running.lock().await.as_ref() {
            server.stop_immediately().await?;
        }
        Ok(())
    }

    async fn restart(&self) -> Result<()> {
        let server = ManagedPostgres::start(&self.data_dir).await?;
        *self.running.lock().await = Some(server);
        Ok(())
    }

    async fn stop(self) {
        if let Some(server) = self.running.into_inner() {
            if let Err(e) = server.stop().await {
                tracing::warn!(error = %e, "cannot stop the scenario's PostgreSQL");
            }
        }
    }
}

/// One writer: stock receipts for its own SKU until told to stop, each retried with
/// its key until acknowledged (a command under way is finished before stopping).
async fn write_receipts(
    client: reqwest::Client,
    base: String,
    token: String,
    principal: String,
    sku: String,
    seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let scope = format!("admin:{principal}");
    while !stop.load(Ordering::Relaxed) {
        let key = Uuid::new_v4().to_string();
        let command_id = IdempotencyKeys::command_id(&scope, &key);
        loop {
            let began = Instant::now();
            let answer = client
                .post(format!("{base}/v1/inventory/{sku}/receipts"))
                .bearer_auth(&token)
                .header("Idempotency-Key", &key)
                .json(&json!({"warehouse": "main", "quantity": 1}))
                .send()
                .await;
            let (attempt, body) = attempt("receipt", answer, began).await;
            let acknowledged = attempt.status.is_some_and(|s| (200..300).contains(&s));
            seen.lock().expect("not poisoned").attempts.push(attempt);
            if acknowledged {
                let position = body["position"]
                    .as_u64()
                    .context("an acknowledgement carries its position")?;
                seen.lock().expect("not poisoned").receipts.push(Receipt {
                    sku: sku.clone(),
                    command_id,
                    position,
                    at: Instant::now(),
                });
                break;
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
    Ok(())
}

/// Posts one checkout after another, spread over `window`, each retried with its key
/// until accepted.
async fn post_checkouts(
    client: reqwest::Client,
    base: String,
    carts: Vec<(String, domain::CartId)>,
    window: Duration,
    seen: Arc<Mutex<Seen>>,
) -> Result<()> {
    let pace = window / (carts.len().max(1) as u32);
    let body = json!({
        "shipping_address": {"name": "Chaos Customer", "line1": "1 Fault Lane",
            "city": "Berlin", "postal_code": "10115", "country": "DE"},
        "payment_method": "tok_visa",
    });
    for (token, cart) in carts {
        let next = Instant::now() + pace;
        let key = Uuid::new_v4().to_string();
        loop {
            let began = Instant::now();
            let answer = client
                .post(format!("{base}/v1/carts/{cart}/checkout"))
                .bearer_auth(&token)
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            let (attempt, body) = attempt("checkout", answer, began).await;
            let status = attempt.status;
            seen.lock().expect("not poisoned").attempts.push(attempt);
            if status == Some(202) {
                let id = body["ids"]["checkout_id"]
                    .as_str()
                    .and_then(|id| CheckoutId::parse(id).ok())
                    .context("an accepted checkout carries its id")?;
                seen.lock()
                    .expect("not poisoned")
                    .checkouts
                    .push((id, Instant::now()));
                break;
            }
            if status.is_some_and(|s| (400..500).contains(&s) && s != 409 && s != 429) {
                bail!("checkout of cart {cart} refused for good: {status:?} {body}");
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
        tokio::time::sleep_until(next.into()).await;
    }
    Ok(())
}

async fn attempt(
    what: &'static str,
    answer: reqwest::Result<reqwest::Response>,
    began: Instant,
) -> (Attempt, Value) {
    match answer {
        Ok(response) => {
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            let problem_type = body["type"].as_str().map(str::to_owned);
            (
                Attempt {
                    what,
                    status: Some(status),
                    timed_out: false,
                    took: began.elapsed(),
                    problem_type,
                },
                body,
            )
        }
        Err(e) => (
            Attempt {
                what,
                status: None,
                timed_out: e.is_timeout(),
                took: began.elapsed(),
                problem_type: None,
            },
            Value::Null,
        ),
    }
}

fn count_attempts(attempts: &[Attempt], report: &mut Report) {
    for attempt in attempts {
        match attempt.status {
            None if attempt.timed_out => report.hung += 1,
            None => report.unanswered += 1,
            Some(status) if (200..300).contains(&status) => {}
            Some(status) => {
                report.refused += 1;
                report.slowest_refusal = report.slowest_refusal.max(attempt.took);
                let kind = attempt
                    .problem_type
                    .as_deref()
                    .map_or("-", |t| t.rsplit('/').next().unwrap_or(t));
                let kind = format!("{} {status} {kind}", attempt.what);
                if attempt.took >= report.slowest_refusal {
                    report.slowest_refusal_kind = kind.clone();
                }
                *report.refusals_by_kind.entry(kind).or_default() += 1;
                let problem = attempt.problem_type.as_deref();
                // A retry that arrives while the command it repeats still runs in
                // the background (its client was answered `503 timeout`) is told so.
                let expected = (status == 503
                    && problem.is_some_and(|t| REFUSAL_TYPES.contains(&t)))
                    || (status == 409 && problem == Some(KEY_IN_FLIGHT));
                if !expected {
                    report.bad_refusals += 1;
                }
            }
        }
    }
}

/// Each acknowledged receipt must be in the log at its position, once; the writers'
/// streams must hold nothing else.
async fn count_receipts(
    store: &PostgresStore,
    receipts: &[Receipt],
    writers: usize,
    report: &mut Report,
) -> Result<()> {
    report.acknowledged += receipts.len() as u64;
    let mut written: HashMap<Uuid, u64> = HashMap::new();
    for w in 0..writers {
        let stream = format!("inventory-CHAOS-W{w}");
        let mut from = 1;
        loop {
            let page = store
                .read_stream(&stream, from, Direction::Forward, 10_000)
                .await?;
            let Some(last) = page.last() else { break };
            from = last.version + 1;
            for event in &page {
                let command = event.metadata.command_id.unwrap_or_default();
                *written.entry(command).or_default() += 1;
            }
        }
    }
    for receipt in receipts {
        let event = store.read_all(receipt.position - 1, 1, None).await?;
        let at_position = event.first().is_some_and(|e| {
            e.position == receipt.position
                && e.stream_id == format!("inventory-{}", receipt.sku)
                && e.metadata.command_id == Some(receipt.command_id)
        });
        if at_position {
            report.found += 1;
        } else {
            report.lost += 1;
        }
    }
    let acknowledged: HashSet<Uuid> = receipts.iter().map(|r| r.command_id).collect();
    for (command, events) in written {
        // One event per receipt; an event of a command never acknowledged is one
        // written behind a refusal that the retry did not find.
        report.duplicated += if acknowledged.contains(&command) {
            events - 1
        } else {
            events
        };
    }
    Ok(())
}

/// Each accepted checkout must exist once per cart and end within the invariants.
async fn count_checkouts(
    store: &PostgresStore,
    commands: &Commands,
    checkouts: &[(CheckoutId, Instant)],
    report: &mut Report,
) -> Result<()> {
    report.acknowledged += checkouts.len() as u64;
    let client = store.connection().await?;
    let started: i64 = client
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'CheckoutStarted'",
            &[],
        )
        .await?
        .get(0);
    let accepted: Vec<CheckoutId> = checkouts.iter().map(|(id, _)| *id).collect();
    for id in &accepted {
        let stream = domain::Checkout::stream_id(id);
        let first = store.read_stream(&stream, 1, Direction::Forward, 1).await?;
        if first
            .first()
            .is_some_and(|e| e.event_type == "CheckoutStarted")
        {
            report.found += 1;
        } else {
            report.lost += 1;
        }
    }
    report.duplicated += (started as u64).saturating_sub(accepted.len() as u64);
    let check = shop::check(store, commands, &accepted, &SKUS).await?;
    report.checkouts_completed = check.completed;
    report.checkouts_not_completed = check.not_completed;
    report.oversold = check.oversold;
    report.stuck_reservations = check.stuck_reservations;
    report.violations += check.violations;
    Ok(())
}

/// Payments the provider's books disagree with the log on: captured more than once,
/// money kept that the log says was given back (or never taken), or a hold left on
/// the card of a checkout that has ended.
async fn provider_violations(
    commands: &Commands,
    sandbox: &Sandbox,
    checkouts: &[(CheckoutId, Instant)],
) -> Result<u64> {
    let mut violations = 0;
    for (id, _) in checkouts {
        let payment_id = domain::Checkout::payment_id(*id);
        let payment = commands
            .payments()
            .load(&Payment::stream_id(&payment_id))
            .await?
            .state;
        let kept_in_log =
            payment.captured().map_or(0, |m| m.minor) - payment.refunded().map_or(0, |m| m.minor);
        let authorizations = sandbox.authorizations_for(&payment_id.to_string());
        let captures: u32 = authorizations.iter().map(|a| a.capture_count).sum();
        let kept_by_provider: i64 = authorizations
            .iter()
            .map(|a| a.captured_amount - a.refunded_amount)
            .sum();
        let holds = authorizations
            .iter()
            .filter(|a| a.status == sagas::psp::wire::AuthorizationStatus::Authorized)
            .count();
        if captures > 1 || kept_by_provider != kept_in_log || holds > 0 {
            violations += 1;
        }
    }
    Ok(violations)
}

/// What a scenario's engine is started with.
#[derive(Clone)]
struct Launch {
    database_url: String,
    psp_url: String,
    data_dir: std::path::PathBuf,
    secret: String,
}

impl Launch {
    /// `commerce serve`'s arguments: the scenario's paths, rate limits off (every
    /// client of the run comes from 127.0.0.1 and a few principals send many
    /// commands; the limits are not what a scenario is about), and the provider
    /// timeout of [`PSP_REQUEST_TIMEOUT`].
    fn arguments(&self, listen: &str) -> Vec<std::ffi::OsString> {
        let psp_timeout = PSP_REQUEST_TIMEOUT.as_millis().to_string();
        let search_dir = self.data_dir.join("search");
        [
            "--listen".as_ref(),
            listen.as_ref(),
            "--psp-url".as_ref(),
            self.psp_url.as_ref(),
            "--data-dir".as_ref(),
            self.data_dir.as_os_str(),
            "--search-dir".as_ref(),
            search_dir.as_os_str(),
            "--rate-limit-ip-per-sec".as_ref(),
            "0".as_ref(),
            "--rate-limit-principal-per-sec".as_ref(),
            "0".as_ref(),
            "--psp-request-timeout-ms".as_ref(),
            psp_timeout.as_ref(),
        ]
        .into_iter()
        .map(std::ffi::OsStr::to_owned)
        .collect()
    }
}

/// The engine of a scenario, serving on a port of 127.0.0.1: inside this process,
/// or as a `commerce serve` process of its own that can be killed and restarted on
/// the same port.
struct Engine {
    base: String,
    running: tokio::sync::Mutex<Running>,
}

enum Running {
    InProcess {
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<Result<()>>,
    },
    Process {
        binary: std::path::PathBuf,
        launch: Launch,
        listen: String,
        child: Option<std::process::Child>,
    },
}

/// `commerce serve`'s options, as a scenario's engine is started with them.
#[derive(Parser)]
struct EngineOptions {
    #[command(flatten)]
    serve: ServeArgs,
}

impl Engine {
    /// The engine inside this process, on a free port.
    async fn start(launch: Launch) -> Result<Engine> {
        let arguments = std::iter::once("commerce".into()).chain(launch.arguments("127.0.0.1:0"));
        let args = EngineOptions::try_parse_from(arguments)?.serve;
        let authenticator = Authenticator::new(Some(launch.secret.as_bytes()), None)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready, started) = tokio::sync::oneshot::channel::<()>();
        let url = launch.database_url.clone();
        let task = tokio::spawn(async move {
            serve_on(
                listener,
                &args,
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
        });
        if started.await.is_err() {
            return match task.await {
                Ok(Err(e)) => Err(e.context("the engine did not start")),
                _ => bail!("the engine did not start"),
            };
        }
        Ok(Engine {
            base,
            running: tokio::sync::Mutex::new(Running::InProcess { stop, task }),
        })
    }

    /// `commerce serve` as a process of its own, on a port that stays its own
    /// across restarts.
    async fn spawn(launch: Launch, binary: std::path::PathBuf) -> Result<Engine> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let engine = Engine {
            base: format!("http://{listen}"),
            running: tokio::sync::Mutex::new(Running::Process {
                binary,
                launch,
                listen,
                child: None,
            }),
        };
        engine.restart().await?;
        Ok(engine)
    }

    /// Starts the engine's process again and waits until `/ready` says 200.
    async fn restart(&self) -> Result<()> {
        {
            let mut running = self.running.lock().await;
            let Running::Process {
                binary,
                launch,
                listen,
                child,
            } = &mut *running
            else {
                bail!("only an engine process restarts");
            };
            *child = Some(
                std::process::Command::new(&*binary)
                    .arg("serve")
                    .args(launch.arguments(listen))
                    .env("DATABASE_URL", &launch.database_url)
                    .env("COMMERCE_JWT_SECRET", &launch.secret)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .with_context(|| format!("cannot run {}", binary.display()))?,
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + ENGINE_START_MAX;
        loop {
            let ready = client.get(format!("{}/ready", self.base)).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return Ok(());
            }
            if let Running::Process {
                child: Some(child), ..
            } = &mut *self.running.lock().await
            {
                if let Some(status) = child.try_wait()? {
                    bail!("the engine exited at start: {status}");
                }
            }
            anyhow::ensure!(Instant::now() < deadline, "the engine did not become ready");
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }

    /// SIGKILLs the engine's process and reaps it.
    async fn kill(&self) -> Result<()> {
        if let Running::Process {
            child: Some(child), ..
        } = &mut *self.running.lock().await
        {
            // `Child::kill` sends SIGKILL on Unix.
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    async fn stop(self) {
        match self.running.into_inner() {
            Running::InProcess { stop, task } => {
                let _ = stop.send(());
                match task.await {
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "the scenario's engine stopped with an error")
                    }
                    Err(e) => tracing::warn!(error = %e, "the scenario's engine panicked"),
                    Ok(Ok(())) => {}
                }
            }
            Running::Process {
                child: Some(mut child),
                ..
            } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Running::Process { child: None, .. } => {}
        }
    }
}

/// What `/ready` and the breaker gauge said over the run, from the fault on.
#[derive(Debug, Default, Clone, Copy)]
struct Watched {
    ready_reported_outage: bool,
    breaker_opened: bool,
    breaker_closed_after_open: bool,
}

/// Samples `/ready` and `/metrics` until told to stop.
async fn watch_engine(
    client: reqwest::Client,
    base: String,
    watched: Arc<Mutex<Watched>>,
    stop: Arc<AtomicBool>,
) {
    while !stop.load(Ordering::Relaxed) {
        let probe = probe(&client, &base).await;
        {
            let mut watched = watched.lock().expect("not poisoned");
            watched.ready_reported_outage |= probe.ready == Some(503);
            watched.breaker_opened |= probe.breaker == Some(BREAKER_OPEN);
            watched.breaker_closed_after_open |=
                watched.breaker_opened && probe.breaker == Some(BREAKER_CLOSED);
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

/// What `/ready` and the breaker gauge of `/metrics` said at one moment.
struct Probe {
    ready: Option<u16>,
    breaker: Option<f64>,
}

async fn probe(client: &reqwest::Client, base: &str) -> Probe {
    let ready = client
        .get(format!("{base}/ready"))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16());
    let metrics = match client.get(format!("{base}/metrics")).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    let breaker = metrics
        .lines()
        .find_map(|line| line.strip_prefix("commerce_psp_breaker_state "))
        .and_then(|value| value.trim().parse().ok());
    Probe { ready, breaker }
}

fn token(secret: &str, role: Role, subject: &str) -> Result<String> {
    let exp = chrono::Utc::now().timestamp() as u64 + 3_600;
    Ok(mint_hs256(
        secret.as_bytes(),
        &Claims::new(subject, role, exp),
    )?)
}

/// The address of the PostgreSQL server that `url` names.
async fn postgres_address(url: &str) -> Result<SocketAddr> {
    let config: tokio_postgres::Config = url.parse()?;
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => bail!("the fault proxy needs a TCP host in the database URL"),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let address = tokio::net::lookup_host((host.as_str(), port))
        .await?
        .next()
        .with_context(|| format!("cannot resolve {host}"))?;
    Ok(address)
}

/// `url` with its host and port replaced by `proxy`'s, as a key-value string.
fn through(url: &str, proxy: SocketAddr) -> Result<String> {
    let config: tokio_postgres::Config = url.parse()?;
    let mut parts = vec![
        format!("host={}", proxy.ip()),
        format!("port={}", proxy.port()),
    ];
    if let Some(user) = config.get_user() {
        parts.push(format!("user={user}"));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!("password={}", String::from_utf8_lossy(password)));
    }
    if let Some(dbname) = config.get_dbname() {
        parts.push(format!("dbname={dbname}"));
    }
    Ok(parts.join(" "))
}
