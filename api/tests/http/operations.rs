//! Health, readiness, metrics, the OpenAPI document, and the errors of routing.

use std::collections::BTreeSet;

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn health_and_ready_answer_without_a_token() {
    let app = spawn_app().await;
    let health = app.send(app.http.get(app.url("/health"))).await;
    assert_eq!(health.ok(200)["status"], "ok");
    let ready = app.send(app.http.get(app.url("/ready"))).await;
    assert_eq!(ready.ok(200)["status"], "ready");
    assert_eq!(ready.body["head"], 0);
}

#[tokio::test]
async fn metrics_count_requests_by_route_with_latency_histograms() {
    let app = spawn_app().await;
    let cart = app.create_cart(&customer("alice"), "EUR").await;
    app.get(&format!("/v1/carts/{cart}"), &customer("alice"))
        .await
        .ok(200);
    let reply = app.send(app.http.get(app.url("/metrics"))).await;
    assert_eq!(reply.status, 200);
    assert!(reply.content_type.starts_with("text/plain"));
    let text = reply.body.as_str().unwrap();
    assert!(
        text.contains(
            r#"http_requests_total{method="GET",route="/v1/carts/{cart_id}",status="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(text.contains(r#"commerce_commands_total{command="CreateCart",outcome="accepted"}"#));
}

#[tokio::test]
async fn methods_outside_the_standard_set_share_one_metrics_label() {
    let app = spawn_app().await;
    for method in [&b"BREW"[..], b"WHEN"] {
        let method = reqwest::Method::from_bytes(method).unwrap();
        let reply = app.send(app.http.request(method, app.url("/health"))).await;
        assert!(reply.status.is_client_error(), "{}", reply.status);
    }
    let reply = app.send(app.http.get(app.url("/metrics"))).await;
    let text = reply.body.as_str().unwrap();
    assert!(
        text.contains(r#"http_requests_total{method="OTHER""#),
        "{text}"
    );
    assert!(!text.contains(r#"method="BREW""#), "{text}");
    assert!(!text.contains(r#"method="WHEN""#), "{text}");
}

#[tokio::test]
async fn the_openapi_document_describes_every_served_route() {
    let app = spawn_app().await;
    let doc = app.send(app.http.get(app.url("/openapi.json"))).await;
    let doc = doc.ok(200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let served: BTreeSet<(String, String)> = api::http::served_routes()
        .into_iter()
        .map(|(method, path)| (method.as_str().to_owned(), path.to_owned()))
        .collect();
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "served but not documented: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented but not served: {unserved:?}"
    );
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    assert!(doc["components"]["schemas"]["Problem"].is_object());
}

#[tokio::test]
async fn every_served_route_answers_and_unknown_ones_are_problems() {
    let app = spawn_app().await;
    // Each served (method, path) is routed: with no token it is a 401 or a 2xx,
    // never the router's 404 or 405.
    for (method, path) in api::http::served_routes() {
        let path = path
            .replace("{product_id}", &uuid::Uuid::nil().to_string())
            .replace("{cart_id}", &uuid::Uuid::nil().to_string())
            .replace("{order_id}", &uuid::Uuid::nil().to_string())
            .replace("{sku}", "SKU-1")
            .replace("{stream_id}", "cart-x");
        let reply = app
            .send(
                app.http
                    .request(method.clone(), app.url(&path))
                    .json(&json!({})),
            )
            .await;
        assert!(
            reply.status.is_success() || reply.status == 401,
            "{method} {path}: {}",
            reply.status
        );
    }
    app.send(app.http.get(app.url("/v1/nothing-here")))
        .await
        .problem(404, "not-found");
    app.send(app.http.delete(app.url("/health")))
        .await
        .problem(405, "method-not-allowed");
}

#[tokio::test]
async fn a_slow_request_is_cut_off_with_a_problem() {
    let app = spawn_app_with(api::http::ServerConfig {
        request_timeout: std::time::Duration::from_millis(500),
        ..api::http::ServerConfig::default()
    })
    .await;
    // The log's table is locked, so the read below waits past its budget however
    // fast the machine is (and the client gives up after 10 s, should the server
    // not cut it off).
    let mut client = app.store.connection().await.expect("a connection");
    let client: &mut tokio_postgres::Client = &mut client;
    let lock = client.transaction().await.expect("a transaction");
    lock.batch_execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("the lock");
    let reply = app
        .send(
            app.http
                .get(app.url("/v1/events"))
                .bearer_auth(auditor())
                .timeout(std::time::Duration::from_secs(10)),
        )
        .await;
    lock.rollback().await.expect("the lock released");
    reply.problem(503, "request-timeout");

    // Once the lock is gone, the same read fits in the budget.
    let reply = app
        .send(app.http.get(app.url("/v1/events")).bearer_auth(auditor()))
        .await;
    reply.ok(200);
}
