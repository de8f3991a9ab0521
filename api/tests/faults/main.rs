//! Faults on a real PostgreSQL of the test's own: the server is stopped the way a
//! crash stops it (`pg_ctl stop -m immediate`) while commands stream in, then
//! started again. The engine must answer fast with 503 while the database is gone,
//! report the outage on `/ready`, reconnect by itself, and keep every append it
//! acknowledged, with no append half-written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::http::{self, AppState, Authenticator, Role, ServerConfig};
use api::managed_pg::{find_bindir, ManagedPostgres};
use eventstore::{EventStore, PostgresConfig, PostgresStore};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use uuid::Uuid;

const SECRET: &[u8] = b"fault-tests-secret-of-at-least-32-bytes";
const WRITERS: usize = 8;
/// Traffic before the crash and after recovery.
const STEADY: Duration = Duration::from_millis(1_500);
/// How long the database stays down.
const OUTAGE: Duration = Duration::from_secs(3);
/// A request may take this long while the database is down ("fail fast").
const FAIL_FAST_MAX: Duration = Duration::from_secs(10);
/// The client gives up after this; a request that reaches it counts as hung.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for the engine to be ready again after the restart.
const RECOVERY_MAX: Duration = Duration::from_secs(60);

/// One command's fate as its client saw it.
#[derive(Debug, Clone)]
struct Sent {
    sku: String,
    status: Option<u16>,
    took: Duration,
    body: Value,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_crash_loses_no_acknowledged_append_and_the_engine_recovers() {
    if find_bindir().is_none() {
        eprintln!("skipped: no PostgreSQL server binaries on this machine");
        return;
    }
    let data_dir = std::env::temp_dir().join(format!("commerce-faults-{}", Uuid::new_v4()));
    let server = ManagedPostgres::start(&data_dir).await.unwrap();
    let url = server.database_url();
    let state = AppState::connect(
        &url,
        Authenticator::new(Some(SECRET), None).unwrap(),
        ServerConfig::default(),
    )
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let engine = tokio::spawn(http::serve(listener, state, async {
        let _ = server_stopped.await;
    }));
    let admin = api::token::mint(SECRET, Role::Admin, "fault-admin".into(), 600).unwrap();
    let client = reqwest::Client::builder()
        .timeout(CLIENT_TIMEOUT)
        .build()
        .unwrap();

    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let stop_writers = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, base, admin) = (client.clone(), base.clone(), admin.clone());
            let (sent, stop) = (sent.clone(), stop_writers.clone());
            tokio::spawn(async move {
                let sku = format!("FAULT-{w}");
                while !stop.load(Ordering::Relaxed) {
                    let began = Instant::now();
                    let answer = client
                        .post(format!("{base}/v1/inventory/{sku}/receipts"))
                        .bearer_auth(&admin)
                        .header("Idempotency-Key", Uuid::new_v4().to_string())
                        .json(&json!({"warehouse": "main", "quantity": 1}))
                        .send()
                        .await;
                    let (status, body) = match answer {
                        Ok(response) => {
                            let status = response.status().as_u16();
                            (Some(status), response.json().await.unwrap_or(Value::Null))
                        }
                        Err(_) => (None, Value::Null),
                    };
                    let failed = status.is_none_or(|s| s >= 300);
                    sent.lock().unwrap().push(Sent {
                        sku: sku.clone(),
                        status,
                        took: began.elapsed(),
                        body,
                    });
                    if failed {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect();

    tokio::time::sleep(STEADY).await;
    let before_crash = acknowledged(&sent).len();
    assert!(before_crash > 0, "no command succeeded before the crash");

    server.stop_immediately().await.unwrap();
    let outage_began = Instant::now();
    let mut ready_reported_outage = false;
    while outage_began.elapsed() < OUTAGE {
        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        ready_reported_outage |= ready.status() == 503;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready_reported_outage, "/ready never reported the outage");

    let server = ManagedPostgres::start(&data_dir).await.unwrap();
    let recovery_began = Instant::now();
    loop {
        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        if ready.status() == 200 {
            break;
        }
        assert!(
            recovery_began.elapsed() < RECOVERY_MAX,
            "the engine did not become ready again"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Commands succeed again without a restart of the engine.
    let acks_when_ready = acknowledged(&sent).len();
    while acknowledged(&sent).len() <= acks_when_ready {
        assert!(
            recovery_began.elapsed() < RECOVERY_MAX,
            "no command succeeded after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(STEADY).await;
    stop_writers.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let _ = stop_server.send(());
    engine.await.unwrap().unwrap();

    let sent = sent.lock().unwrap().clone();
    let failures: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status.is_none_or(|c| c >= 300))
        .collect();
    assert!(!failures.is_empty(), "the outage refused no command");
    for failure in &failures {
        assert!(
            failure.status.is_some(),
            "a request hung until the client gave up: {failure:?}"
        );
        assert!(
            failure.took < FAIL_FAST_MAX,
            "a refusal took {:?}: {failure:?}",
            failure.took
        );
        assert_eq!(failure.status, Some(503), "{failure:?}");
        assert_eq!(
            failure.body["type"], "https://commerce.example/problems/store-unavailable",
            "{failure:?}"
        );
    }

    // Every acknowledged append is in the log where its answer said.
    let store = PostgresStore::connect(PostgresConfig::new(&url))
        .await
        .unwrap();
    let acks: Vec<&Sent> = sent
        .iter()
        .filter(|s| s.status.is_some_and(|c| c < 300))
        .collect();
    for ack in &acks {
        let position = ack.body["position"]
            .as_u64()
            .expect("an ack carries its position");
        let event = store.read_all(position - 1, 1, None).await.unwrap();
        let event = event
            .first()
            .expect("an acknowledged position is in the log");
        assert_eq!(event.position, position);
        assert_eq!(event.stream_id, format!("inventory-{}", ack.sku));
        assert_eq!(event.event_type, "StockReceived");
        assert_eq!(
            Some(event.version),
            ack.body["streams"][0]["version"].as_u64(),
            "{ack:?}"
        );
    }
    // No append is half-written: each idempotency record's size is the number of
    // events its command wrote.
    let client_db = store.connection().await.unwrap();
    let torn = client_db
        .query_one(
            "SELECT count(*) FROM events e \
             WHERE e.command_id IS NOT NULL AND e.append_size <> \
               (SELECT count(*) FROM events x WHERE x.metadata->>'command_id' = e.command_id::text)",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(torn, 0, "appends with missing events");
    drop(client_db);
    let report =
        eventstore::audit::verify_log(Arc::new(store) as Arc<dyn EventStore>, 1, |_, _| {})
            .await
            .unwrap();
    assert_eq!(report.first_break, None);
    assert!(report.checked as usize >= acks.len());

    server.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&data_dir);
}

fn acknowledged(sent: &Mutex<Vec<Sent>>) -> Vec<Sent> {
    sent.lock()
        .unwrap()
        .iter()
        .filter(|s| s.status.is_some_and(|c| c < 300))
        .cloned()
        .collect()
}

/// Every mode of the TCP fault proxy, on the path to PostgreSQL and on the path to
/// the payment provider, then a PostgreSQL crash, then `commerce serve` SIGKILLed
/// twice, with stock receipts and checkouts under way: commands fail fast with a 503
/// problem while PostgreSQL is unreachable, `/ready` says so, the provider's circuit
/// breaker opens and closes again, and once the path heals nothing acknowledged is
/// missing, nothing is written twice, every checkout ends within its invariants (no
/// oversell, no double charge) and no reservation is left. The scenarios run one
/// after another: the breaker's gauge in `/metrics` belongs to the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_fault_scenario_fails_fast_and_heals_without_loss_or_duplicates() {
    use api::chaos::scenarios::{self, Scenario, Settings};
    let admin_url = eventstore::testing::admin_url();
    // A lighter load and shorter faults than the benchmark's: every effect the test
    // asserts shows within them (the store's timeouts are 5 s).
    let settings = Settings {
        writers: 6,
        checkouts: 24,
        fault_for: Duration::from_secs(7),
        engine_binary: Some(env!("CARGO_BIN_EXE_commerce").into()),
        ..Settings::default()
    };
    let mut failed = Vec::new();
    for scenario in Scenario::all() {
        let report = scenarios::run(&admin_url, scenario, &settings)
            .await
            .unwrap_or_else(|e| panic!("{}: {e:#}", scenario.name()));
        eprintln!("{report:?}");
        let failures = report.failures(scenario);
        if !failures.is_empty() {
            failed.push(format!("{}: {}", scenario.name(), failures.join("; ")));
        }
        assert!(
            report.acknowledged > 0,
            "{}: nothing acknowledged",
            scenario.name()
        );
    }
    assert!(failed.is_empty(), "{failed:#?}");
}
