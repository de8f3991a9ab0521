//! The payment client against the sandbox provider, over real sockets: every test
//! token, idempotent replays, lost answers, timeouts, 503s, the circuit breaker, the
//! provider's limits under concurrency, and its signed webhooks.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use domain::{Currency, Money, PaymentId};
use sagas::psp::wire::{AuthorizationStatus, AuthorizationView, WebhookEvent};
use sagas::psp::{
    BreakerState, HttpGateway, HttpGatewayConfig, Recorded, Sandbox, SandboxConfig, WebhookInbox,
    WebhookTarget, WebhookVerifier,
};
use sagas::{
    Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway, Receipt,
};
use serde_json::{json, Value};
use uuid::Uuid;

const ANY_PORT: &str = "127.0.0.1:0";

fn any_port() -> SocketAddr {
    ANY_PORT.parse().expect("an address")
}

async fn sandbox_with(config: SandboxConfig) -> Sandbox {
    Sandbox::start_with(any_port(), config)
        .await
        .expect("the sandbox starts")
}

async fn sandbox() -> Sandbox {
    sandbox_with(SandboxConfig::default()).await
}

/// Short bounds, so failures are quick to provoke.
fn config(sandbox: &Sandbox) -> HttpGatewayConfig {
    HttpGatewayConfig {
        request_timeout_ms: 2_000,
        max_attempts: 4,
        backoff_initial_ms: 10,
        backoff_max_ms: 40,
        breaker_failure_threshold: 100,
        breaker_cooldown_ms: 300,
        ..HttpGatewayConfig::new(sandbox.url())
    }
}

fn gateway(config: HttpGatewayConfig) -> HttpGateway {
    HttpGateway::new(config).expect("a client")
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

fn authorize_request(token: &str, minor: i64) -> AuthorizeRequest {
    AuthorizeRequest {
        idempotency_key: format!("authorize-{}", Uuid::new_v4()),
        payment_id: PaymentId::from_uuid(Uuid::new_v4()),
        amount: eur(minor),
        payment_method: token.into(),
    }
}

fn movement(provider_ref: &str, minor: i64) -> MoneyMovement {
    MoneyMovement {
        idempotency_key: Uuid::new_v4().to_string(),
        provider_ref: provider_ref.into(),
        amount: eur(minor),
    }
}

fn approved(authorization: Authorization) -> String {
    match authorization {
        Authorization::Approved { provider_ref } => provider_ref,
        other => panic!("expected an approval, got {other:?}"),
    }
}

#[track_caller]
fn refused(result: Result<Receipt, GatewayError>, expected_code: &str) {
    match result {
        Err(GatewayError::Refused { code, .. }) => assert_eq!(code, expected_code),
        other => panic!("expected a refusal {expected_code}, got {other:?}"),
    }
}

async fn authorized(gateway: &HttpGateway, minor: i64) -> String {
    approved(
        gateway
            .authorize(authorize_request("tok_visa", minor))
            .await
            .expect("an answer"),
    )
}

#[tokio::test]
async fn tok_visa_is_approved_and_the_provider_reports_it() {
    let sandbox = sandbox().await;
    let gateway = gateway(config(&sandbox));
    let request = authorize_request("tok_visa", 1_999);
    let reference = request.payment_id.to_string();
    let provider_ref = approved(gateway.authorize(request).await.unwrap());

    let view: AuthorizationView = reqwest::get(format!(
        "{}/v1/authorizations/{provider_ref}",
        sandbox.url()
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(view.status, AuthorizationStatus::Authorized);
    assert_eq!((view.amount, view.currency.as_str()), (1_999, "EUR"));
    assert_eq!(view.reference, reference);
    assert_eq!(sandbox.authorizations_for(&reference), vec![view]);
}

#[tokio::test]
async fn declining_tokens_are_declined_with_their_reason_and_cannot_be_captured() {
    let sandbox = sandbox().await;
    let gateway = gateway(config(&sandbox));
    for (token, reason) in [
        ("tok_decline", "card_declined"),
        ("tok_insufficient_funds", "insufficient_funds"),
    ] {
        let answer = gateway
            .authorize(authorize_request(token, 500))
            .await
            .unwrap();
        let Authorization::Declined {
            provider_ref,
            reason: got,
        } = answer
        else {
            panic!("{token} was not declined: {answer:?}");
        };
        assert_eq!(got, reason);
        refused(
            gateway.capture(movement(&provider_ref, 500)).await,
            "authorization_declined",
        );
    }
}

#[tokio::test]
async fn an_unknown_token_is_refused_and_nothing_is_recorded() {
    let sandbox = sandbox().await;
    let gateway = gateway(config(&sandbox));
    let request = authorize_request("tok_nonsense", 500);
    let reference = request.payment_id.to_string();
    match gateway.authorize(request).await {
        Err(GatewayError::Refused { code, .. }) => assert_eq!(code, "unknown_payment_method"),
        other => panic!("{other:?}"),
    }
    assert!(sandbox.authorizations_for(&reference).is_empty());
}

#[tokio::test]
async fn a_repeated_idempotency_key_replays_the_first_answer_and_another_body_is_refused() {
    let sandbox = sandbox().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/authorizations", sandbox.url());
    let body = json!({"amount": 700, "currency": "EUR", "payment_method": "tok_visa", "reference": "order-7"});
    let post = |body: Value| {
        http.post(&url)
            .header("Idempotency-Key", "key-7")
            .json(&body)
            .send()
    };
    let first = post(body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();

    let second = post(body.clone()).await.unwrap();
    assert_eq!(second.status(), 201);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.json::<Value>().await.unwrap(), first);

    let mut other = body;
    other["amount"] = json!(701);
    let reused = post(other).await.unwrap();
    assert_eq!(reused.status(), 422);
    let reused: Value = reused.json().await.unwrap();
    assert_eq!(reused["error"]["code"], "idempotency_key_reused");

    assert_eq!(sandbox.authorizations_for("order-7").len(), 1);
    assert_eq!(sandbox.stats().replayed, 1);
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_codes_and_change_nothing() {
    let sandbox = sandbox().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/authorizations", sandbox.url());
    let good = json!({"amount": 100, "currency": "EUR", "payment_method": "tok_visa", "reference": "r-bad"});
    let cases = [
        (None, good.clone(), 400, "idempotency_key_missing"),
        (Some("k1"), json!({"amount": 100}), 400, "invalid_request"),
        (
            Some("k2"),
            json!({"amount": 0, "currency": "EUR", "payment_method": "tok_visa", "reference": "r-bad"}),
            400,
            "invalid_amount",
        ),
        (
            Some("k3"),
            json!({"amount": 1, "currency": "eur", "payment_method": "tok_visa", "reference": "r-bad"}),
            400,
            "invalid_currency",
        ),
        (
            Some("k4"),
            json!({"amount": 1, "currency": "EUR", "payment_method": "tok_visa", "reference": "x".repeat(20_000)}),
            413,
            "body_too_large",
        ),
    ];
    for (key, body, status, code) in cases {
        let mut request = http.post(&url).json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{code}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code);
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let missing = reqwest::get(format!("{}/v1/authorizations/auth_nope", sandbox.url()))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert!(sandbox.authorizations_for("r-bad").is_empty());
}

#[tokio::test]
async fn a_lost_answer_is_retried_and_returns_the_first_result_with_money_moved_once() {
    let sandbox = sandbox().await;
    let gateway = gateway(config(&sandbox));
    let request = authorize_request("tok_lost_response", 2_500);
    let reference = request.payment_id.to_string();
    let provider_ref = approved(gateway.authorize(request.clone()).await.unwrap());
    // The first answer was dropped, the retry got it replayed.
    let stats = sandbox.stats();
    assert_eq!(stats.dropped_responses, 1);
    assert_eq!(stats.replayed, 1);
    let authorizations = sandbox.authorizations_for(&reference);
    assert_eq!(authorizations.len(), 1);
    assert_eq!(authorizations[0].id, provider_ref);

    let capture = movement(&provider_ref, 2_500);
    let receipt = gateway.capture(capture.clone()).await.unwrap();
    assert_eq!(receipt.provider_ref, provider_ref);
    assert_eq!(sandbox.stats().dropped_responses, 2);
    // Calling again (as a saga re-running its step would) still moves nothing more.
    assert_eq!(gateway.capture(capture).await.unwrap(), receipt);
    let view = sandbox.authorization(&provider_ref).unwrap();
    assert_eq!(view.status, AuthorizationStatus::Captured);
    assert_eq!((view.capture_count, view.captured_amount), (1, 2_500));

    let refund = gateway
        .refund(movement(&provider_ref, 1_000))
        .await
        .unwrap();
    let view = sandbox.authorization(&provider_ref).unwrap();
    assert_eq!(view.refunds.len(), 1);
    assert_eq!(view.refunds[0].id, refund.provider_ref);
    assert_eq!(view.refunded_amount, 1_000);
}

#[tokio::test]
async fn a_lost_answer_without_retries_left_is_a_timeout_and_a_later_call_learns_the_outcome() {
    let sandbox = sandbox().await;
    let once = gateway(HttpGatewayConfig {
        max_attempts: 1,
        ..config(&sandbox)
    });
    let request = authorize_request("tok_lost_response", 300);
    let reference = request.payment_id.to_string();
    assert_eq!(
        once.authorize(request.clone()).await,
        Err(GatewayError::Timeout)
    );
    // The provider did act: the money is held.
    let held = sandbox.authorizations_for(&reference);
    assert_eq!(held.len(), 1);
    // The same key later answers with that authorization, and makes no second one.
    let provider_ref = approved(once.authorize(request).await.unwrap());
    assert_eq!(provider_ref, held[0].id);
    assert_eq!(sandbox.authorizations_for(&reference).len(), 1);
}

#[tokio::test]
async fn a_hanging_provider_times_out_within_the_bound() {
    let sandbox = sandbox_with(SandboxConfig {
        hang_ms: 10_000,
        ..SandboxConfig::default()
    })
    .await;
    let config = HttpGatewayConfig {
        request_timeout_ms: 300,
        max_attempts: 2,
        backoff_initial_ms: 20,
        backoff_max_ms: 20,
        ..config(&sandbox)
    };
    let bound = Duration::from_millis(2 * 300 + 20);
    let gateway = gateway(config);
    let started = Instant::now();
    let result = gateway.authorize(authorize_request("tok_hang", 100)).await;
    let took = started.elapsed();
    assert_eq!(result, Err(GatewayError::Timeout));
    assert!(
        took >= Duration::from_millis(600),
        "gave up early: {took:?}"
    );
    assert!(
        took < bound + Duration::from_millis(400),
        "took {took:?}, bound {bound:?}"
    );
    let stats = sandbox.stats();
    assert_eq!(stats.hung, 2, "both attempts reached the provider");
}

#[tokio::test]
async fn flaky_503s_are_retried_until_the_provider_answers() {
    let sandbox = sandbox_with(SandboxConfig {
        flaky_fail_rate: 0.5,
        seed: 7,
        ..SandboxConfig::default()
    })
    .await;
    let gateway = gateway(HttpGatewayConfig {
        max_attempts: 12,
        ..config(&sandbox)
    });
    let mut references = Vec::new();
    for _ in 0..8 {
        let request = authorize_request("tok_flaky", 100);
        references.push(request.payment_id.to_string());
        approved(gateway.authorize(request).await.unwrap());
    }
    assert!(
        sandbox.stats().injected_unavailable > 0,
        "the seed should fail some attempts"
    );
    for reference in references {
        assert_eq!(sandbox.authorizations_for(&reference).len(), 1);
    }
}

#[tokio::test]
async fn retries_are_bounded_and_503s_alone_mean_nothing_was_done() {
    let sandbox = sandbox_with(SandboxConfig {
        flaky_fail_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let gateway = gateway(config(&sandbox));
    let request = authorize_request("tok_flaky", 100);
    let reference = request.payment_id.to_string();
    match gateway.authorize(request).await {
        Err(GatewayError::Unavailable(detail)) => assert!(detail.contains("503"), "{detail}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        sandbox.stats().requests,
        4,
        "max_attempts requests, no more"
    );
    assert!(sandbox.authorizations_for(&reference).is_empty());
}

#[tokio::test]
async fn the_breaker_opens_fails_fast_without_the_socket_then_half_opens_and_closes() {
    let sandbox = sandbox_with(SandboxConfig {
        flaky_fail_rate: 1.0,
        ..SandboxConfig::default()
    })
    .await;
    let gateway = gateway(HttpGatewayConfig {
        max_attempts: 1,
        breaker_failure_threshold: 3,
        breaker_cooldown_ms: 300,
        ..config(&sandbox)
    });
    for _ in 0..3 {
        assert!(matches!(
            gateway.authorize(authorize_request("tok_flaky", 100)).await,
            Err(GatewayError::Unavailable(_))
        ));
    }
    assert_eq!(gateway.breaker_state(), BreakerState::Open);
    assert_eq!(sandbox.stats().requests, 3);

    // Open: even a healthy card fails at once, and nothing reaches the provider.
    let started = Instant::now();
    let fast = gateway.authorize(authorize_request("tok_visa", 100)).await;
    assert!(started.elapsed() < Duration::from_millis(50));
    assert_eq!(
        fast,
        Err(GatewayError::Unavailable("circuit breaker open".into()))
    );
    assert_eq!(sandbox.stats().requests, 3);

    // After the cool-down one probe goes through; its failure opens the breaker again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(gateway.breaker_state(), BreakerState::HalfOpen);
    assert!(gateway
        .authorize(authorize_request("tok_flaky", 100))
        .await
        .is_err());
    assert_eq!(sandbox.stats().requests, 4);
    assert_eq!(gateway.breaker_state(), BreakerState::Open);
    assert!(gateway
        .authorize(authorize_request("tok_visa", 100))
        .await
        .is_err());
    assert_eq!(sandbox.stats().requests, 4);

    // A successful probe closes it.
    tokio::time::sleep(Duration::from_millis(350)).await;
    approved(
        gateway
            .authorize(authorize_request("tok_visa", 100))
            .await
            .unwrap(),
    );
    assert_eq!(gateway.breaker_state(), BreakerState::Closed);
    approved(
        gateway
            .authorize(authorize_request("tok_visa", 100))
            .await
            .unwrap(),
    );
    assert_eq!(sandbox.stats().requests, 6);
}

#[tokio::test]
async fn a_provider_that_is_not_listening_opens_the_breaker() {
    let address = {
        let listener = std::net::TcpListener::bind(ANY_PORT).unwrap();
        listener.local_addr().unwrap()
    };
    let gateway = gateway(HttpGatewayConfig {
        max_attempts: 2,
        backoff_initial_ms: 1,
        backoff_max_ms: 1,
        breaker_failure_threshold: 4,
        ..HttpGatewayConfig::new(format!("http://{address}"))
    });
    for _ in 0..2 {
        match gateway.authorize(authorize_request("tok_visa", 100)).await {
            Err(GatewayError::Unavailable(detail)) => assert!(detail.contains("connect")),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(gateway.breaker_state(), BreakerState::Open);
}

#[tokio::test]
async fn capture_is_at_most_the_authorized_amount_and_once() {
    let sandbox = sandbox().await;
    let gateway = gateway(config(&sandbox));
    let provider_ref = authorized(&gateway, 1_000).await;
    refused(
        gateway.capture(movement(&provider_ref, 1_001)).await,
        "amount_exceeds_authorized",
    );
    let mut other_currency = movement(&provider_ref, 100);
    other_currency.amount = Money::new(100, Currency::parse("USD").unwrap());
    refused(gateway.capture(other_currency).await, "currency_mismatch");
    gateway.capture(movement(&provider_ref, 800)).await.unwrap();
    refused(
        gateway.capture(movement(&provider_ref, 100)).await,
        "already_captured",
    );
    refused(
        gateway.void(movement(&provider_ref, 0)).await,
        "already_captured",
    );
    let view = sandbox.authorization(&provider_ref).unwrap();
    assert_eq!((view.captured_amount, view.capture_count), (800, 1));
}

#[tokio::test]
async fn refunds_never_exceed_the_capture() {
    let sandbox = sandbox().await;
    let gateway = gateway(config(&sandbox));
    let provider_ref = authorized(&gateway, 1_000).await;
    refused(
        gateway.refund(movement(&provider_ref, 100)).await,
        "not_captured",
    );
    gateway.capture(movement(&provider_ref, 800)).await.unwrap();
    gateway.refund(movement(&provider_ref, 500)).await.unwrap();
    refused(
        gateway.refund(movement(&provider_ref, 301)).await,
        "amount_exceeds_captured",
    );
    gateway.refund(movement(&provider_ref, 300)).await.unwrap();
    refused(
        gateway.refund(movement(&provider_ref, 1)).await,
        "amount_exceeds_captured",
    );
    let view = sandbox.authorization(&provider_ref).unwrap();
    assert_eq!((view.refunded_amount, view.refunds.len()), (800, 2));
}

#[tokio::test]
async fn a_void_is_only_before_capture_and_ends_the_authorization() {
    let sandbox = sandbox().await;
    let gateway = gateway(config(&sandbox));
    let provider_ref = authorized(&gateway, 1_000).await;
    let void = movement(&provider_ref, 1_000);
    let receipt = gateway.void(void.clone()).await.unwrap();
    assert_eq!(receipt.provider_ref, provider_ref);
    assert_eq!(gateway.void(void).await.unwrap(), receipt, "a replay");
    refused(
        gateway.void(movement(&provider_ref, 1_000)).await,
        "already_voided",
    );
    refused(
        gateway.capture(movement(&provider_ref, 1_000)).await,
        "already_voided",
    );
    refused(
        gateway.capture(movement("auth_unknown", 1_000)).await,
        "authorization_not_found",
    );
    assert_eq!(
        sandbox.authorization(&provider_ref).unwrap().status,
        AuthorizationStatus::Voided
    );
}

#[tokio::test]
async fn racing_captures_and_refunds_keep_the_limits() {
    let sandbox = sandbox().await;
    let gateway = Arc::new(gateway(config(&sandbox)));
    let provider_ref = authorized(&gateway, 1_000).await;

    let captures = (0..16).map(|_| {
        let gateway = gateway.clone();
        let movement = movement(&provider_ref, 1_000);
        tokio::spawn(async move { gateway.capture(movement).await })
    });
    let captured = futures_ok(captures).await;
    assert_eq!(captured, 1, "exactly one capture wins");

    let refunds = (0..16).map(|_| {
        let gateway = gateway.clone();
        let movement = movement(&provider_ref, 100);
        tokio::spawn(async move { gateway.refund(movement).await })
    });
    assert_eq!(futures_ok(refunds).await, 10, "refunds stop at the capture");
    let view = sandbox.authorization(&provider_ref).unwrap();
    assert_eq!((view.capture_count, view.refunded_amount), (1, 1_000));
}

#[tokio::test]
async fn racing_calls_with_one_key_authorize_once() {
    let sandbox = sandbox().await;
    let gateway = Arc::new(gateway(config(&sandbox)));
    let request = authorize_request("tok_visa", 100);
    let reference = request.payment_id.to_string();
    let calls = (0..12).map(|_| {
        let gateway = gateway.clone();
        let request = request.clone();
        tokio::spawn(async move { gateway.authorize(request).await })
    });
    let mut refs = Vec::new();
    for call in calls {
        refs.push(approved(call.await.unwrap().unwrap()));
    }
    refs.dedup();
    assert_eq!(refs.len(), 1);
    assert_eq!(sandbox.authorizations_for(&reference).len(), 1);
}

/// How many of the spawned calls succeeded.
async fn futures_ok(
    calls: impl Iterator<Item = tokio::task::JoinHandle<Result<Receipt, GatewayError>>>,
) -> usize {
    let mut ok = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(GatewayError::Refused { .. }) => {}
            Err(other) => panic!("a call failed without a refusal: {other:?}"),
        }
    }
    ok
}

/// A merchant endpoint that verifies the sandbox's signatures and keeps the events.
async fn webhook_receiver(secret: &'static [u8]) -> (String, Arc<Mutex<Vec<WebhookEvent>>>) {
    use axum::http::{HeaderMap, StatusCode};
    let received = Arc::new(Mutex::new(Vec::new()));
    let verifier = WebhookVerifier::new(secret, 60);
    let kept = received.clone();
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let kept = kept.clone();
            let verifier = verifier.clone();
            async move {
                let signature = headers
                    .get(sagas::psp::webhook::SIGNATURE_HEADER)
                    .map(|v| v.as_bytes());
                match verifier.verify(signature, &body, chrono::Utc::now().timestamp()) {
                    Ok(verified) => {
                        kept.lock().unwrap().push(verified.event);
                        StatusCode::OK
                    }
                    Err(_) => StatusCode::UNAUTHORIZED,
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(ANY_PORT).await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, received)
}

#[tokio::test]
async fn the_sandbox_sends_signed_webhooks_for_money_movements() {
    const SECRET: &[u8] = b"whsec_sandbox_test";
    let (url, received) = webhook_receiver(SECRET).await;
    let sandbox = sandbox_with(SandboxConfig {
        webhook: Some(WebhookTarget::new(url, SECRET)),
        ..SandboxConfig::default()
    })
    .await;
    let gateway = gateway(config(&sandbox));
    let provider_ref = authorized(&gateway, 900).await;
    gateway.capture(movement(&provider_ref, 900)).await.unwrap();
    gateway.refund(movement(&provider_ref, 400)).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    while sandbox.stats().webhooks_delivered < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let events = received.lock().unwrap().clone();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "authorization.authorized",
            "authorization.captured",
            "refund.created"
        ]
    );
    assert_eq!(events[1].data["id"], provider_ref);
    assert_eq!(events[2].data["authorization"], provider_ref);
    assert_eq!(sandbox.stats().webhooks_failed, 0);
}

#[tokio::test]
async fn the_inbox_records_an_event_once_across_connections() {
    let db = eventstore::testing::test_database()
        .await
        .expect("a test database");
    let store = eventstore::PostgresStore::connect(eventstore::PostgresConfig::new(&db.url))
        .await
        .unwrap();
    let inbox = WebhookInbox::connect(store.pool().clone()).await.unwrap();
    // A second process opening the same inbox finds the table made.
    let other = WebhookInbox::connect(store.pool().clone()).await.unwrap();
    let body = serde_json::to_vec(&json!({
        "id": "evt_once", "type": "authorization.captured", "created": 1,
        "data": {"id": "auth_1", "status": "captured"}
    }))
    .unwrap();
    let now = chrono::Utc::now().timestamp();
    let header = sagas::psp::webhook::sign(b"secret", now, &body);
    let verified = WebhookVerifier::new(b"secret", 60)
        .verify(Some(header.as_bytes()), &body, now)
        .unwrap();
    assert_eq!(inbox.record(&verified).await.unwrap(), Recorded::New);
    assert_eq!(other.record(&verified).await.unwrap(), Recorded::Duplicate);
    let entry = inbox.get("evt_once").await.unwrap().unwrap();
    assert_eq!(entry.event_type, "authorization.captured");
    assert_eq!(entry.object_id.as_deref(), Some("auth_1"));
    assert_eq!(entry.signed_at, now);
    assert_eq!(entry.payload["data"]["status"], "captured");
}
