//! The checkout saga across real crashes: checkouts posted over HTTP to a `commerce
//! serve` process on PostgreSQL (paying at a sandbox provider over a real socket),
//! which is SIGKILLed several times mid-run and restarted. Once everything settles,
//! the invariants are checked from the event log: every checkout ended; a completed
//! one was captured once for its total with every reservation committed; any other
//! kept no money and holds no stock; no SKU committed more than it received.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use api::chaos::shop::{self, Catalog};
use api::http::auth::{mint_hs256, Claims};
use api::http::Role;
use commands::{CartAction, CommandContext, Commands, Limits};
use domain::{
    CartId, CartOwner, Checkout, CheckoutId, CheckoutStatus, Currency, CustomerId, Inventory,
    LineStock, Payment, PaymentStatus, Quantity, ReservationOutcome, Sku,
};
use eventstore::testing::test_database;
use eventstore::{PostgresConfig, PostgresStore};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sagas::psp::Sandbox;
use serde_json::json;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_commerce");
const SKUS: [&str; 3] = ["CRASH-A", "CRASH-B", "CRASH-C"];
const CHECKOUTS: usize = 120;
const KILLS: usize = 3;
const START_TIMEOUT: Duration = Duration::from_secs(60);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);

fn secret() -> String {
    "a-test-secret-of-at-least-thirty-two-bytes!".into()
}

struct Engine {
    child: Child,
    base: String,
}

fn start_engine(database_url: &str, psp_url: &str, data_dir: &std::path::Path) -> Engine {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--psp-url", psp_url])
        .env("DATABASE_URL", database_url)
        .env("COMMERCE_JWT_SECRET", secret())
        .env("COMMERCE_DATA_DIR", data_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("commerce serve starts");
    let stdout = child.stdout.take().expect("its stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(address) = line.strip_prefix("commerce: serving ") {
                let _ = tx.send(address.to_owned());
            }
        }
    });
    match rx.recv_timeout(START_TIMEOUT) {
        Ok(base) => Engine { child, base },
        Err(_) => {
            let _ = child.kill();
            panic!("commerce serve did not start");
        }
    }
}

fn sigkill(mut engine: Engine) {
    kill(Pid::from_raw(engine.child.id() as i32), Signal::SIGKILL).expect("SIGKILL");
    let _ = engine.child.wait();
}

#[tokio::test]
async fn checkouts_survive_the_engine_being_killed_and_restarted() {
    let db = test_database().await.unwrap();
    let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into()).await.unwrap();
    let data_dir = std::env::temp_dir().join(format!("commerce-crash-{}", Uuid::new_v4()));
    let mut engine = start_engine(&db.url, sandbox.url(), &data_dir);

    let store = PostgresStore::connect(PostgresConfig::new(&db.url))
        .await
        .unwrap();
    let commands = Commands::on_postgres(store.clone(), Limits::default())
        .await
        .unwrap();
    // Scarce: about two thirds of the demand, over two warehouses.
    let catalog = Catalog {
        skus: &SKUS,
        price_minor: 990,
        units_per_warehouse: CHECKOUTS as u32 / 3,
    };
    let product_id = shop::seed(&commands, &catalog).await.unwrap();
    let mut carts = Vec::new();
    for i in 0..CHECKOUTS {
        let customer = CustomerId::from_uuid(Uuid::new_v4());
        let cart_id = CartId::from_uuid(Uuid::new_v4());
        let context = CommandContext::new(format!("customer:{customer}"));
        commands
            .cart(
                CartAction::Create {
                    cart_id,
                    owner: CartOwner::Customer(customer),
                    currency: Currency::parse("EUR").unwrap(),
                },
                &context.follow_up("create"),
            )
            .await
            .unwrap();
        for sku in &SKUS[..1 + i % 3] {
            commands
                .cart(
                    CartAction::AddItem {
                        cart_id,
                        product_id,
                        sku: Sku::parse(*sku).unwrap(),
                        quantity: Quantity::new(1).unwrap(),
                    },
                    &context.follow_up(sku),
                )
                .await
                .unwrap();
        }
        let exp = chrono::Utc::now().timestamp() as u64 + 3_600;
        let token = mint_hs256(
            secret().as_bytes(),
            &Claims::new(customer.to_string(), Role::Customer, exp),
        )
        .unwrap();
        carts.push((token, cart_id, Uuid::new_v4().to_string()));
    }

    // Post every checkout (each retried with its own key until accepted), killing
    // and restarting the engine every few dozen requests.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let body = json!({
        "shipping_address": {"name": "Crash Test", "line1": "1 Kill Street", "city": "Berlin",
            "postal_code": "10115", "country": "DE"},
        "payment_method": "tok_visa",
    });
    let mut accepted: Vec<CheckoutId> = Vec::new();
    let mut kills = 0;
    for (n, (token, cart, key)) in carts.iter().enumerate() {
        if n > 0 && n % (CHECKOUTS / (KILLS + 1)) == 0 && kills < KILLS {
            // Let the saga get into the middle of things, then kill it.
            tokio::time::sleep(Duration::from_millis(150)).await;
            sigkill(engine);
            kills += 1;
            engine = start_engine(&db.url, sandbox.url(), &data_dir);
        }
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let reply = client
                .post(format!("{}/v1/carts/{cart}/checkout", engine.base))
                .bearer_auth(token)
                .header("idempotency-key", key)
                .json(&body)
                .send()
                .await;
            if let Ok(reply) = reply {
                let status = reply.status();
                let value: serde_json::Value = reply.json().await.unwrap_or_default();
                if status == 202 {
                    let id = value["ids"]["checkout_id"].as_str().unwrap();
                    accepted.push(CheckoutId::parse(id).unwrap());
                    break;
                }
                assert!(
                    status == 409 || status.is_server_error(),
                    "checkout answered {status}: {value}"
                );
            }
            assert!(Instant::now() < deadline, "checkout {n} was never accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert_eq!(kills, KILLS);

    // The last engine settles everything.
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut states = Vec::new();
    for id in &accepted {
        loop {
            let checkout = Checkout::stream_id(id);
            let fresh = Commands::on_postgres(store.clone(), Limits::default())
                .await
                .unwrap();
            let state = fresh.checkouts().load(&checkout).await.unwrap().state;
            if matches!(
                state.status(),
                Some(
                    CheckoutStatus::Completed
                        | CheckoutStatus::Rejected
                        | CheckoutStatus::Cancelled
                )
            ) {
                states.push((*id, state));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "checkout {id} did not settle: {:?}",
                state.status()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    sigkill(engine);
    sandbox.shutdown().await;

    // The invariants, from the log.
    let fresh = Commands::on_postgres(store.clone(), Limits::default())
        .await
        .unwrap();
    let mut completed = 0;
    for (id, checkout) in &states {
        let payment = fresh
            .payments()
            .load(&Payment::stream_id(&Checkout::payment_id(*id)))
            .await
            .unwrap()
            .state;
        for line in checkout.lines() {
            let inventory = fresh
                .inventory()
                .load(&Inventory::stream_id(&line.sku))
                .await
                .unwrap()
                .state;
            let outcome = inventory.reservation_outcome(&line.reservation_id);
            match checkout.status() {
                Some(CheckoutStatus::Completed) => {
                    assert_eq!(outcome, Some(ReservationOutcome::Committed), "{id}")
                }
                _ => {
                    assert!(
                        inventory.reservation(&line.reservation_id).is_none(),
                        "{id}"
                    );
                    if outcome == Some(ReservationOutcome::Committed) {
                        assert_eq!(line.stock, LineStock::Restocked, "{id}");
                    }
                }
            }
        }
        match checkout.status() {
            Some(CheckoutStatus::Completed) => {
                completed += 1;
                assert_eq!(payment.status(), Some(PaymentStatus::Captured), "{id}");
                assert_eq!(payment.captured(), checkout.total(), "{id}");
            }
            _ => assert!(
                !matches!(payment.status(), Some(PaymentStatus::Authorized))
                    && (payment.status() != Some(PaymentStatus::Captured)
                        || payment.refunded() == payment.captured()),
                "{id}: money kept: {:?}",
                payment.status()
            ),
        }
    }
    eprintln!(
        "{} checkouts, {completed} completed, {} rejected or cancelled, {KILLS} SIGKILLs",
        states.len(),
        states.len() - completed
    );
    assert!(completed > 0, "some checkouts completed");
    for sku in SKUS {
        let inventory = fresh
            .inventory()
            .load(&Inventory::stream_id(&Sku::parse(sku).unwrap()))
            .await
            .unwrap()
            .state;
        assert_eq!(inventory.reserved(), 0, "{sku} still holds reservations");
    }
    let _ = std::fs::remove_dir_all(&data_dir);
}
