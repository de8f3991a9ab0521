//! Abuse limits: command rate limits per principal and per address (429 with
//! `Retry-After`), request heads and bodies bounded in size, slow and idle clients
//! disconnected, and every list paged with a largest page.

use std::time::{Duration, Instant};

use api::http::limits::{ConnectionLimits, RateLimit};
use api::http::ServerConfig;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

fn cart() -> serde_json::Value {
    json!({"currency": "EUR"})
}

#[tokio::test]
async fn commands_past_a_principals_rate_are_429_with_retry_after() {
    let app = spawn_app_with(ServerConfig {
        principal_rate_limit: Some(RateLimit {
            per_sec: 0.5,
            burst: 3,
        }),
        ..ServerConfig::default()
    })
    .await;
    let alice = customer("alice");
    for _ in 0..3 {
        app.post("/v1/carts", &alice, cart()).await.ok(201);
    }
    let head = app.head().await;
    let refused = app.post("/v1/carts", &alice, cart()).await;
    let problem = refused.problem(429, "rate-limited");
    assert_eq!(problem["scope"], "principal");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    assert_eq!(app.head().await, head, "a refused command wrote something");
    // Another principal has a bucket of its own, and reads are not commands.
    app.post("/v1/carts", &customer("bob"), cart())
        .await
        .ok(201);
    app.get("/v1/events", &admin()).await.ok(200);

    let metrics = app.send(app.http.get(app.url("/metrics"))).await;
    assert!(metrics
        .body
        .as_str()
        .unwrap()
        .contains("commerce_rate_limited_total{scope=\"principal\"}"));
}

#[tokio::test]
async fn commands_past_an_addresss_rate_are_429_whoever_sends_them() {
    let app = spawn_app_with(ServerConfig {
        ip_rate_limit: Some(RateLimit {
            per_sec: 0.5,
            burst: 3,
        }),
        ..ServerConfig::default()
    })
    .await;
    app.post("/v1/carts", &customer("alice"), cart())
        .await
        .ok(201);
    app.post("/v1/carts", &customer("bob"), cart())
        .await
        .ok(201);
    app.post("/v1/carts", &customer("carol"), cart())
        .await
        .ok(201);
    // Refused before the token is even looked at.
    let refused = app.post("/v1/carts", "not-a-token", cart()).await;
    assert_eq!(refused.problem(429, "rate-limited")["scope"], "ip");
    assert!(refused.headers.contains_key("retry-after"));
}

/// Sends raw bytes on a fresh connection and returns what came back before the
/// server closed it (or `wait` passed).
async fn raw_exchange(app: &TestApp, request: &[u8], wait: Duration) -> (String, Duration) {
    let address = app.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let started = Instant::now();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(wait, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => received.extend_from_slice(&buf[..n]),
            Err(_) => panic!(
                "the server kept the connection open for {wait:?}: {}",
                String::from_utf8_lossy(&received)
            ),
        }
    }
    (
        String::from_utf8_lossy(&received).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn oversized_heads_and_bodies_are_refused() {
    let app = spawn_app_with(ServerConfig {
        body_limit_bytes: BODY_LIMIT_BYTES,
        connections: ConnectionLimits {
            header_max_bytes: 8 * 1024,
            headers_max: 32,
            ..ConnectionLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    let big_header = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: {}\r\n\r\n",
        "a".repeat(16 * 1024)
    );
    let (reply, _) = raw_exchange(&app, big_header.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    let many: String = (0..40).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many_headers = format!("GET /health HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let (reply, _) = raw_exchange(&app, many_headers.as_bytes(), Duration::from_secs(5)).await;
    assert!(reply.starts_with("HTTP/1.1 431"), "{reply}");

    let head = app.head().await;
    let body = json!({"currency": "EUR", "padding": "x".repeat(BODY_LIMIT_BYTES)});
    app.post("/v1/carts", &customer("alice"), body)
        .await
        .problem(413, "payload-too-large");
    assert_eq!(app.head().await, head);
    // A normal request on the same server is fine.
    app.send(app.http.get(app.url("/health"))).await.ok(200);
}

#[tokio::test]
async fn slow_and_idle_clients_are_disconnected() {
    let app = spawn_app_with(ServerConfig {
        connections: ConnectionLimits {
            header_read_timeout: Duration::from_secs(1),
            ..ConnectionLimits::default()
        },
        ..ServerConfig::default()
    })
    .await;
    // Headers that never end (slowloris).
    let (reply, took) = raw_exchange(
        &app,
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        Duration::from_secs(5),
    )
    .await;
    assert!(!reply.contains("200 OK"), "{reply}");
    assert!(took < Duration::from_secs(4), "{took:?}");

    // A keep-alive connection left idle after its request.
    let (reply, took) = raw_exchange(
        &app,
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[tokio::test]
async fn every_list_refuses_a_page_larger_than_its_limit() {
    let app = spawn_app().await;
    let auditor = auditor();
    for (list, largest) in [
        ("/v1/events", 1_000),
        ("/v1/streams/cart-x/events", 1_000),
        (
            "/v1/audit/trail",
            eventstore::audit::TRAIL_PAGE_MAX_ENTRIES as u64,
        ),
    ] {
        app.get(&format!("{list}?limit={largest}"), &auditor)
            .await
            .ok(200);
        for bad in [0, largest + 1] {
            let reply = app.get(&format!("{list}?limit={bad}"), &auditor).await;
            assert_eq!(
                reply.problem(400, "invalid-parameter")["field"],
                "limit",
                "{list}?limit={bad}"
            );
        }
    }
    app.get("/v1/events.ndjson?limit=0", &auditor)
        .await
        .problem(400, "invalid-parameter");
}

/// Waits until the carts read model has applied the log up to its head.
async fn carts_read_model_caught_up(app: &TestApp) {
    let head = app.head().await as i64;
    let client = app.store.connection().await.expect("a connection");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let applied: Option<i64> = client
            .query_opt(
                "SELECT position FROM projection_checkpoints WHERE name = 'carts'",
                &[],
            )
            .await
            .expect("the checkpoint")
            .map(|row| row.get(0));
        if applied.is_some_and(|p| p >= head) {
            return;
        }
        assert!(Instant::now() < deadline, "the carts read model lags");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_is_capped_in_open_carts_and_units_of_one_sku() {
    let app = spawn_app_with(ServerConfig {
        account_caps: api::http::caps::AccountCaps {
            open_carts_max: 2,
            sku_units_max: 5,
            checkouts_in_flight_max: 0,
        },
        ..ServerConfig::default()
    })
    .await;
    let projections =
        projections::Runner::start(app.store.clone(), projections::RunnerConfig::default())
            .await
            .expect("the projections run");
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let first = app.create_cart(&alice, "EUR").await;
    let second = app.create_cart(&alice, "EUR").await;
    carts_read_model_caught_up(&app).await;
    let head = app.head().await;
    let refused = app.post("/v1/carts", &alice, cart()).await;
    assert_eq!(refused.problem(429, "open-carts-limit")["max"], 2);
    assert_eq!(app.head().await, head, "a refused cart was written");
    // Another account is not affected.
    app.create_cart(&customer("bob"), "EUR").await;

    let line = |quantity: u64| json!({"product_id": product, "sku": SKU, "quantity": quantity});
    app.post(&format!("/v1/carts/{first}/lines"), &alice, line(3))
        .await
        .ok(202);
    carts_read_model_caught_up(&app).await;
    // 3 held in the first cart: 3 more in the second would hold 6 of at most 5.
    let hoarding = app
        .post(&format!("/v1/carts/{second}/lines"), &alice, line(3))
        .await;
    let problem = hoarding.problem(422, "sku-units-limit");
    assert_eq!(
        (problem["held"].clone(), problem["max"].clone()),
        (json!(3), json!(5))
    );
    assert_eq!(problem["field"], "quantity");
    app.post(&format!("/v1/carts/{second}/lines"), &alice, line(2))
        .await
        .ok(202);
    carts_read_model_caught_up(&app).await;
    // Setting a line replaces what that cart holds: 2 elsewhere + 3 here is 5.
    let set = |quantity: u64| json!({"quantity": quantity});
    app.command(
        reqwest::Method::PUT,
        &format!("/v1/carts/{first}/lines/{SKU}"),
        &alice,
        &new_key(),
        Some(set(4)),
    )
    .await
    .problem(422, "sku-units-limit");
    app.command(
        reqwest::Method::PUT,
        &format!("/v1/carts/{first}/lines/{SKU}"),
        &alice,
        &new_key(),
        Some(set(3)),
    )
    .await
    .ok(202);
    // Staff acting on the cart are not capped.
    app.post(&format!("/v1/carts/{first}/lines"), &admin(), line(10))
        .await
        .ok(202);
    projections.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_is_capped_in_checkouts_in_flight() {
    let app = spawn_app_with(ServerConfig {
        account_caps: api::http::caps::AccountCaps {
            checkouts_in_flight_max: 1,
            ..api::http::caps::AccountCaps::OFF
        },
        ..ServerConfig::default()
    })
    .await;
    // No saga runs here: a checkout stays in flight (its cart checked out).
    let projections =
        projections::Runner::start(app.store.clone(), projections::RunnerConfig::default())
            .await
            .expect("the projections run");
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let mut carts = Vec::new();
    for _ in 0..2 {
        let cart = app.create_cart(&alice, "EUR").await;
        app.post(
            &format!("/v1/carts/{cart}/lines"),
            &alice,
            json!({"product_id": product, "sku": SKU, "quantity": 1}),
        )
        .await
        .ok(202);
        carts.push(cart);
    }
    let checkout =
        json!({"shipping_address": crate::commands::address(), "payment_method": "tok_visa"});
    app.post(
        &format!("/v1/carts/{}/checkout", carts[0]),
        &alice,
        checkout.clone(),
    )
    .await
    .ok(202);
    carts_read_model_caught_up(&app).await;
    let head = app.head().await;
    let refused = app
        .post(
            &format!("/v1/carts/{}/checkout", carts[1]),
            &alice,
            checkout,
        )
        .await;
    assert_eq!(refused.problem(429, "checkouts-in-flight-limit")["max"], 1);
    assert_eq!(app.head().await, head, "a refused checkout wrote something");
    projections.stop().await;
}
