//! `commerce demo`, shortened: the report's figures agree with the event log, read
//! here independently of the demo's own report code.

use std::collections::HashMap;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eventstore::testing::{admin_url, test_database};
use eventstore::{EventStore, PostgresConfig, PostgresStore};
use serde_json::Value;

use crate::support::SECRET;

const BIN: &str = env!("CARGO_BIN_EXE_commerce");
/// The shortened demo takes seconds; this bounds a hang.
const DEMO_TIMEOUT: Duration = Duration::from_secs(300);
const FLASH_UNITS: i64 = 12;

#[tokio::test(flavor = "multi_thread")]
async fn a_short_demo_reports_what_the_event_log_holds() {
    let db = test_database().await.unwrap();
    let mut child = Command::new(BIN)
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--database",
            &db.name,
            "--products",
            "40",
            "--shoppers",
            "30",
            "--flash-shoppers",
            "60",
            "--flash-units",
            &FLASH_UNITS.to_string(),
            "--concurrency",
            "8",
        ])
        .env("DATABASE_URL", admin_url())
        .env(
            "COMMERCE_JWT_SECRET",
            String::from_utf8(SECRET.to_vec()).unwrap(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = String::new();
        stdout.read_to_string(&mut out).unwrap();
        out
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > DEMO_TIMEOUT {
            let _ = child.kill();
            panic!("the demo did not finish in {DEMO_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = reader.join().unwrap();
    assert!(status.success(), "the demo failed:\n{out}");
    let last = out.lines().last().expect("the demo printed nothing");
    let report: Value = serde_json::from_str(last).expect("the last line is JSON");

    let store = PostgresStore::connect(PostgresConfig::new(&db.url))
        .await
        .unwrap();
    let log = Log::read(&store).await;
    assert_eq!(report["events"], log.events, "{out}");
    // The orders read model, counted over HTTP by the demo, equals the log.
    assert_eq!(report["read_models_agree"], true, "{out}");
    assert_eq!(report["orders_placed"], log.final_states.len(), "{out}");
    for (field, state) in [
        ("orders_confirmed", "OrderConfirmed"),
        ("orders_cancelled", "OrderCancelled"),
        ("orders_rejected", "OrderRejected"),
    ] {
        let count = log.final_states.values().filter(|s| **s == state).count();
        assert_eq!(report[field], count, "{field}\n{out}");
    }
    let (flash_stocked, flash_sold) = log.stock["DEMO-FLASH-1"];
    assert_eq!(flash_stocked, FLASH_UNITS);
    assert_eq!(report["flash_units"], flash_stocked);
    assert_eq!(report["flash_sold"], flash_sold);
    // More shoppers than units, all paying with a good card: every unit sells once.
    assert_eq!(flash_sold, FLASH_UNITS, "{out}");
    let oversold: i64 = log
        .stock
        .values()
        .map(|(stocked, sold)| (sold - stocked).max(0))
        .sum();
    assert_eq!(oversold, 0);
    assert_eq!(report["oversold"], 0);
    assert!(
        report["orders_confirmed"].as_u64().unwrap() >= FLASH_UNITS as u64,
        "{out}"
    );
    assert_eq!(report["chain_verified"], true);
    assert_eq!(report["projection_lag"], 0, "{out}");
}

/// What the test reads from the log itself.
struct Log {
    events: u64,
    /// Order stream -> the last of its confirmed/cancelled/rejected events (or
    /// `OrderPlaced`).
    final_states: HashMap<String, String>,
    /// SKU -> (units received and adjusted, units committed).
    stock: HashMap<String, (i64, i64)>,
}

impl Log {
    async fn read(store: &PostgresStore) -> Log {
        let mut log = Log {
            events: 0,
            final_states: HashMap::new(),
            stock: HashMap::new(),
        };
        let mut after = 0;
        loop {
            let page = store.read_all(after, 5_000, None).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            log.events += page.len() as u64;
            for event in page {
                let kind = event.event_type.as_str();
                if let Some(sku) = event.stream_id.strip_prefix("inventory-") {
                    let entry = log.stock.entry(sku.to_string()).or_default();
                    match kind {
                        "StockReceived" => entry.0 += event.data["quantity"].as_i64().unwrap(),
                        "StockAdjusted" => entry.0 += event.data["delta"].as_i64().unwrap(),
                        "ReservationCommitted" => {
                            entry.1 += event.data["allocations"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .map(|a| a["quantity"].as_i64().unwrap())
                                .sum::<i64>()
                        }
                        _ => {}
                    }
                } else if event.stream_id.starts_with("order-") {
                    match kind {
                        "OrderPlaced" | "OrderConfirmed" | "OrderCancelled" | "OrderRejected" => {
                            log.final_states.insert(event.stream_id, kind.to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
        log
    }
}
