//! `POST /v1/payments/webhooks`: only authentic, fresh callbacks are recorded, and
//! each provider event id once.

use std::time::{Duration, Instant};

use api::http::ServerConfig;
use domain::{Currency, Money, PaymentId};
use sagas::psp::webhook::{sign, SIGNATURE_HEADER};
use sagas::psp::{
    HttpGateway, HttpGatewayConfig, Sandbox, SandboxConfig, WebhookConfig, WebhookTarget,
};
use sagas::{AuthorizeRequest, MoneyMovement, PaymentGateway};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::{spawn_app, spawn_app_with, Reply, TestApp, BODY_LIMIT_BYTES};

const SECRET: &[u8] = b"whsec_integration_tests";
const TOLERANCE_SECS: u64 = 300;
const ROUTE: &str = "/v1/payments/webhooks";

async fn app() -> TestApp {
    spawn_app_with(ServerConfig {
        body_limit_bytes: BODY_LIMIT_BYTES,
        payment_webhooks: Some(WebhookConfig {
            secret: SECRET.to_vec(),
            tolerance_secs: TOLERANCE_SECS,
        }),
        ..ServerConfig::default()
    })
    .await
}

fn event(id: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "type": "authorization.captured",
        "created": chrono::Utc::now().timestamp(),
        "data": {"id": "auth_1", "status": "captured", "captured_amount": 1999}
    }))
    .unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn deliver(app: &TestApp, body: &[u8], signature: Option<&str>) -> Reply {
    let mut request = app
        .http
        .post(app.url(ROUTE))
        .header("content-type", "application/json")
        .body(body.to_vec());
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    app.send(request).await
}

/// Rows of the inbox (all of them, or those of one event id).
async fn recorded(app: &TestApp, event_id: Option<&str>) -> i64 {
    let client = app.store.connection().await.unwrap();
    let row = client
        .query_one(
            "SELECT count(*) FROM psp_webhook_events WHERE $1::text IS NULL OR event_id = $1",
            &[&event_id],
        )
        .await
        .unwrap();
    row.get(0)
}

#[tokio::test]
async fn an_authentic_callback_is_recorded_and_a_duplicate_id_changes_nothing() {
    let app = app().await;
    let body = event("evt_dup");
    let first = deliver(&app, &body, Some(&sign(SECRET, now(), &body))).await;
    assert_eq!(first.ok(200)["event_id"], "evt_dup");
    assert_eq!(first.body["duplicate"], false);
    assert_eq!(recorded(&app, Some("evt_dup")).await, 1);

    // The provider redelivers the same event later, signed afresh: acknowledged so
    // it stops, not recorded again.
    let again = deliver(&app, &body, Some(&sign(SECRET, now() + 1, &body))).await;
    assert_eq!(again.ok(200)["duplicate"], true);
    assert_eq!(recorded(&app, None).await, 1);
}

#[tokio::test]
async fn a_replayed_request_within_the_window_has_no_second_effect() {
    let app = app().await;
    let body = event("evt_replayed");
    let signature = sign(SECRET, now(), &body);
    deliver(&app, &body, Some(&signature)).await.ok(200);
    let replay = deliver(&app, &body, Some(&signature)).await;
    assert_eq!(replay.ok(200)["duplicate"], true);
    assert_eq!(recorded(&app, None).await, 1);
}

#[tokio::test]
async fn a_bad_or_missing_signature_is_refused_and_records_nothing() {
    let app = app().await;
    let body = event("evt_forged");
    let forged = deliver(&app, &body, Some(&sign(b"not the secret", now(), &body))).await;
    assert_eq!(
        forged.problem(401, "webhook-signature-invalid")["field"],
        "Psp-Signature"
    );
    // A genuine signature over other bytes.
    let other = event("evt_other");
    deliver(&app, &body, Some(&sign(SECRET, now(), &other)))
        .await
        .problem(401, "webhook-signature-invalid");
    deliver(&app, &body, None)
        .await
        .problem(401, "webhook-signature-missing");
    deliver(&app, &body, Some("v1=abc"))
        .await
        .problem(401, "webhook-signature-malformed");
    // Authentic but not an event.
    let junk = b"[1, 2, 3]";
    deliver(&app, junk, Some(&sign(SECRET, now(), junk)))
        .await
        .problem(400, "webhook-event-malformed");
    assert_eq!(recorded(&app, None).await, 0);
}

#[tokio::test]
async fn a_timestamp_outside_the_replay_window_is_refused() {
    let app = app().await;
    let body = event("evt_stale");
    let window = TOLERANCE_SECS as i64;
    for signed_at in [now() - window - 5, now() + window + 5] {
        let reply = deliver(&app, &body, Some(&sign(SECRET, signed_at, &body))).await;
        reply.problem(401, "webhook-timestamp-stale");
    }
    assert_eq!(recorded(&app, None).await, 0);
    // Inside the window it goes through.
    deliver(&app, &body, Some(&sign(SECRET, now() - window + 30, &body)))
        .await
        .ok(200);
}

#[tokio::test]
async fn without_a_secret_every_callback_is_refused() {
    let app = spawn_app().await;
    let body = event("evt_unconfigured");
    deliver(&app, &body, Some(&sign(SECRET, now(), &body)))
        .await
        .problem(401, "webhooks-not-configured");
    assert_eq!(recorded(&app, None).await, 0);
}

#[tokio::test]
async fn the_sandbox_providers_callbacks_reach_the_inbox() {
    let app = app().await;
    let sandbox = Sandbox::start_with(
        "127.0.0.1:0".parse().unwrap(),
        SandboxConfig {
            webhook: Some(WebhookTarget::new(app.url(ROUTE), SECRET)),
            ..SandboxConfig::default()
        },
    )
    .await
    .unwrap();
    let gateway = HttpGateway::new(HttpGatewayConfig::new(sandbox.url())).unwrap();
    let eur = Money::new(4_200, Currency::parse("EUR").unwrap());
    let authorization = gateway
        .authorize(AuthorizeRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            payment_id: PaymentId::from_uuid(Uuid::new_v4()),
            amount: eur,
            payment_method: "tok_visa".into(),
        })
        .await
        .unwrap();
    let sagas::Authorization::Approved { provider_ref } = authorization else {
        panic!("{authorization:?}");
    };
    gateway
        .capture(MoneyMovement {
            idempotency_key: Uuid::new_v4().to_string(),
            provider_ref: provider_ref.clone(),
            amount: eur,
        })
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while sandbox.stats().webhooks_delivered < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sandbox.stats().webhooks_delivered, 2);
    let client = app.store.connection().await.unwrap();
    let rows = client
        .query(
            "SELECT event_type, payload FROM psp_webhook_events WHERE object_id = $1 \
             ORDER BY received_at",
            &[&provider_ref],
        )
        .await
        .unwrap();
    let types: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        types,
        ["authorization.authorized", "authorization.captured"]
    );
    let payload: Value = rows[1].get(1);
    assert_eq!(payload["data"]["captured_amount"], 4_200);
}

/// `commerce psp` as its own process, signing callbacks to the API, stopped with
/// SIGTERM.
#[tokio::test]
async fn commerce_psp_serves_the_sandbox_and_its_callbacks_reach_the_api() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let app = app().await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_commerce"))
        .args([
            "psp",
            "--listen",
            "127.0.0.1:0",
            "--webhook-url",
            &app.url(ROUTE),
        ])
        .env(
            "COMMERCE_PSP_WEBHOOK_SECRET",
            String::from_utf8(SECRET.to_vec()).unwrap(),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("commerce: sandbox payment provider at ") {
                let _ = tx.send(url.to_owned());
            }
        }
    });
    let url = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("commerce psp prints its address");

    let gateway = HttpGateway::new(HttpGatewayConfig::new(url)).unwrap();
    let authorization = gateway
        .authorize(AuthorizeRequest {
            idempotency_key: Uuid::new_v4().to_string(),
            payment_id: PaymentId::from_uuid(Uuid::new_v4()),
            amount: Money::new(1_000, Currency::parse("EUR").unwrap()),
            payment_method: "tok_decline".into(),
        })
        .await
        .unwrap();
    let sagas::Authorization::Declined { provider_ref, .. } = authorization else {
        panic!("{authorization:?}");
    };
    let client = app.store.connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let event_type = loop {
        let row = client
            .query_opt(
                "SELECT event_type FROM psp_webhook_events WHERE object_id = $1",
                &[&provider_ref],
            )
            .await
            .unwrap();
        match row {
            Some(row) => break row.get::<_, String>(0),
            None if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            None => panic!("the callback did not arrive"),
        }
    };
    assert_eq!(event_type, "authorization.declined");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "commerce psp did not stop");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status}");
}
