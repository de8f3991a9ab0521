//! Audit reads: the log and single streams, paged and as NDJSON.

use serde_json::{json, Value};

use crate::support::*;

/// A log with a few streams: the seeded catalog plus `carts` carts of alice's with
/// one line each.
async fn busy_app(carts: usize) -> (TestApp, Vec<String>) {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let mut ids = Vec::new();
    for _ in 0..carts {
        let cart = app.create_cart(&alice, "EUR").await;
        app.post(
            &format!("/v1/carts/{cart}/lines"),
            &alice,
            json!({"product_id": product, "sku": SKU, "quantity": 1}),
        )
        .await
        .ok(202);
        ids.push(cart.to_string());
    }
    (app, ids)
}

fn positions(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_log_pages_through_every_event_once_in_order() {
    let (app, _) = busy_app(3).await;
    let head = app.head().await;
    let mut after = 0;
    let mut seen = Vec::new();
    for _ in 0..=head {
        let page = app
            .get(&format!("/v1/events?after={after}&limit=3"), &auditor())
            .await;
        let page = page.ok(200);
        let events = page["events"].as_array().unwrap();
        if events.is_empty() {
            assert_eq!(page["next_after"], after);
            break;
        }
        assert!(events.len() <= 3);
        seen.extend(positions(events));
        after = page["next_after"].as_u64().unwrap();
        assert_eq!(page["head"], head);
    }
    assert_eq!(seen, (1..=head).collect::<Vec<_>>());
}

#[tokio::test]
async fn the_log_filters_by_category() {
    let (app, carts) = busy_app(2).await;
    let page = app
        .get("/v1/events?category=cart&limit=1000", &auditor())
        .await;
    let events = page.ok(200)["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 4);
    assert!(events
        .iter()
        .all(|e| e["stream_id"].as_str().unwrap().starts_with("cart-")));
    assert!(events
        .iter()
        .any(|e| e["stream_id"] == format!("cart-{}", carts[1])));
    let hashes = events
        .iter()
        .all(|e| e["hash"].as_str().unwrap().len() == 64);
    assert!(hashes);
}

#[tokio::test]
async fn a_stream_pages_forwards_and_backwards() {
    let (app, carts) = busy_app(1).await;
    let alice = customer("alice");
    let cart = &carts[0];
    for quantity in 2..=4 {
        app.command(
            reqwest::Method::PUT,
            &format!("/v1/carts/{cart}/lines/{SKU}"),
            &alice,
            &new_key(),
            Some(json!({"quantity": quantity})),
        )
        .await
        .ok(202);
    }
    let stream = format!("/v1/streams/cart-{cart}/events");
    let first = app.get(&format!("{stream}?limit=2"), &auditor()).await;
    let first = first.ok(200);
    let versions: Vec<u64> = first["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2]);
    assert_eq!(first["next_from_version"], 3);
    let rest = app
        .get(&format!("{stream}?from_version=3&limit=10"), &auditor())
        .await;
    assert_eq!(rest.ok(200)["events"].as_array().unwrap().len(), 3);
    assert_eq!(rest.body["next_from_version"], Value::Null);

    let backward = app
        .get(&format!("{stream}?direction=backward&limit=2"), &auditor())
        .await;
    let backward = backward.ok(200);
    let versions: Vec<u64> = backward["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [5, 4]);
    assert_eq!(backward["next_from_version"], 3);
}

#[tokio::test]
async fn ndjson_streams_the_same_events_as_the_pages() {
    let (app, _) = busy_app(3).await;
    let pages = app.events_after(0).await;
    for request in [
        app.http.get(app.url("/v1/events.ndjson")),
        app.http
            .get(app.url("/v1/events"))
            .header("accept", "application/x-ndjson"),
    ] {
        let response = request.bearer_auth(auditor()).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-ndjson");
        let text = response.text().await.unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines, pages);
    }
    // A range and a category.
    let text = app
        .http
        .get(app.url("/v1/events.ndjson?after=2&limit=3&category=cart"))
        .bearer_auth(auditor())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(lines
        .iter()
        .all(|e| e["stream_id"].as_str().unwrap().starts_with("cart-")));
}

#[tokio::test]
async fn ndjson_reads_the_store_in_pages() {
    let app = spawn_app_with(api::http::ServerConfig {
        ndjson_page_events: 2,
        ..api::http::ServerConfig::default()
    })
    .await;
    app.seed_catalog().await;
    let head = app.head().await;
    let text = app
        .http
        .get(app.url("/v1/events.ndjson"))
        .bearer_auth(auditor())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let seen: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["position"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seen, (1..=head).collect::<Vec<_>>());
}

#[tokio::test]
async fn bad_paging_parameters_are_400_problems() {
    let (app, _) = busy_app(0).await;
    for query in [
        "limit=0",
        "limit=1001",
        "after=-1",
        "after=abc",
        "catgory=cart",
        "category=a-b",
    ] {
        app.get(&format!("/v1/events?{query}"), &auditor())
            .await
            .problem(400, "invalid-parameter");
    }
    app.get("/v1/streams/cart-x/events?direction=sideways", &auditor())
        .await
        .problem(400, "invalid-parameter");
}
