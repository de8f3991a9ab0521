//! Time travel and chain verification for auditors, over HTTP with a real database.

use reqwest::Method;
use serde_json::{json, Value};

use crate::support::*;

fn address() -> Value {
    json!({"name": "Alice Doe", "line1": "Main Street 1", "city": "Berlin",
           "postal_code": "10115", "country": "DE", "email": "alice@example.com"})
}

fn versions(events: &Value) -> Vec<u64> {
    events
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["version"].as_u64().expect("version"))
        .collect()
}

#[tokio::test]
async fn an_aggregate_is_replayed_as_of_a_version_or_a_moment() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    app.post(
        &format!("/v1/carts/{cart}/lines"),
        &alice,
        json!({"product_id": product, "sku": SKU, "quantity": 1}),
    )
    .await
    .ok(202);
    let path = format!("/v1/audit/aggregates/cart-{cart}");
    let after_one_line = app.get(&path, &auditor()).await.ok(200).clone();
    let moment = after_one_line["last_recorded_at"]
        .as_str()
        .expect("a time")
        .to_owned();
    app.command(
        Method::PUT,
        &format!("/v1/carts/{cart}/lines/{SKU}"),
        &alice,
        &new_key(),
        Some(json!({"quantity": 3})),
    )
    .await
    .ok(202);

    let now = app.get(&path, &auditor()).await.ok(200).clone();
    assert_eq!(now["aggregate"], "cart");
    assert_eq!(
        (&now["version"], &now["stream_version"]),
        (&json!(3), &json!(3))
    );
    assert_eq!(versions(&now["events"]), [1, 2, 3]);
    assert_eq!(now["state"]["data"]["lines"][0]["quantity"], 3);

    let by_version = app
        .get(&format!("{path}?version=2"), &admin())
        .await
        .ok(200)
        .clone();
    assert_eq!(by_version["version"], 2);
    assert_eq!(versions(&by_version["events"]), [1, 2]);
    assert_eq!(by_version["state"]["data"]["lines"][0]["quantity"], 1);
    assert_eq!(by_version["state"], after_one_line["state"]);

    let at = app
        .send(
            app.http
                .get(app.url(&path))
                .query(&[("at", moment.as_str())])
                .bearer_auth(auditor()),
        )
        .await
        .ok(200)
        .clone();
    assert_eq!(at["version"], 2);
    assert_eq!(at["state"], after_one_line["state"]);

    let before = app.get(&format!("{path}?version=0"), &auditor()).await;
    let before = before.ok(200);
    assert_eq!(before["version"], 0);
    assert_eq!(before["events"], json!([]));
    assert_eq!(before["state"], json!({"data": null}));
}

#[tokio::test]
async fn every_aggregate_type_travels_in_time() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    // The saga places the order under the checkout's id, and pays for it.
    let (cart, order) = app.complete_checkout(&alice, product, 2, address()).await;
    let events = app.events_after(0).await;
    let payment = events
        .iter()
        .filter_map(|e| e["stream_id"].as_str())
        .find(|s| s.starts_with("payment-"))
        .expect("a payment stream")
        .to_owned();
    for (stream, aggregate) in [
        (format!("product-{product}"), "product"),
        (format!("inventory-{SKU}"), "inventory"),
        (format!("cart-{cart}"), "cart"),
        (format!("order-{order}"), "order"),
        (payment, "payment"),
        (format!("checkout-{order}"), "checkout"),
    ] {
        let reply = app
            .get(
                &format!("/v1/audit/aggregates/{stream}?version=1"),
                &auditor(),
            )
            .await;
        let reply = reply.ok(200);
        assert_eq!(reply["aggregate"], aggregate, "{stream}");
        assert_eq!(reply["version"], 1, "{stream}");
        assert_eq!(reply["events"].as_array().map(Vec::len), Some(1));
        assert!(reply["state"].is_object(), "{stream}: {reply}");
    }
    let order_now = app
        .get(&format!("/v1/audit/aggregates/order-{order}"), &auditor())
        .await;
    let order_now = order_now.ok(200);
    assert_eq!(order_now["events"][0]["event_type"], "OrderPlaced");
    assert_eq!(
        order_now["state"]["data"]["total"]["minor"].as_i64(),
        Some(2 * PRICE_MINOR),
        "{order_now}"
    );
}

#[tokio::test]
async fn time_travel_refuses_what_it_cannot_answer() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    let stream = format!("inventory-{SKU}");
    app.get(
        &format!("/v1/audit/aggregates/{stream}"),
        &customer("alice"),
    )
    .await
    .problem(403, "forbidden");
    app.get(
        &format!("/v1/audit/aggregates/{stream}?version=99"),
        &auditor(),
    )
    .await
    .problem(404, "version-past-end");
    app.get("/v1/audit/aggregates/inventory-NOPE-1", &auditor())
        .await
        .problem(404, "not-found");
    app.get("/v1/audit/aggregates/shelf-1", &auditor())
        .await
        .problem(400, "not-an-aggregate");
    app.get(
        &format!("/v1/audit/aggregates/{stream}?at=yesterday"),
        &auditor(),
    )
    .await
    .problem(400, "invalid-parameter");
    app.get(
        &format!("/v1/audit/aggregates/{stream}?at=2026-01-01T00:00:00Z&version=1"),
        &auditor(),
    )
    .await
    .problem(400, "invalid-parameter");
}

#[tokio::test]
async fn auditors_verify_the_chain_and_find_a_forged_row() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    let head = app.head().await;
    let report = app.get("/v1/audit/verify", &auditor()).await;
    let report = report.ok(200);
    assert_eq!(report["intact"], true);
    assert_eq!(report["checked"], head);
    let client = app.store.connection().await.expect("a connection");
    client
        .batch_execute(
            "ALTER TABLE events DISABLE TRIGGER events_no_update_or_delete;
             UPDATE events SET data = jsonb_set(data::jsonb, '{forged}', 'true')::json WHERE position = 3;
             ALTER TABLE events ENABLE TRIGGER events_no_update_or_delete;",
        )
        .await
        .expect("tamper");
    let report = app.get("/v1/audit/verify", &auditor()).await;
    let report = report.ok(200);
    assert_eq!(
        (report["intact"].clone(), report["first_break"].clone()),
        (json!(false), json!(3))
    );
    let tail = app.get("/v1/audit/verify?from=4", &auditor()).await;
    assert_eq!(tail.ok(200)["intact"], true);
    app.get("/v1/audit/verify", &customer("alice"))
        .await
        .problem(403, "forbidden");
    app.get("/v1/audit/verify?from=0", &auditor())
        .await
        .problem(400, "invalid-parameter");
}
