//! Commands end to end: the catalog, stock, a cart from creation to order, guest
//! carts merged at sign-in, and Idempotency-Key retries.

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

pub fn address() -> Value {
    json!({"name": "Alice Doe", "line1": "Main Street 1", "city": "Berlin",
           "postal_code": "10115", "country": "DE"})
}

#[tokio::test]
async fn a_customer_shops_from_cart_to_cancelled_order() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");

    let created = app
        .post("/v1/carts", &alice, json!({"currency": "EUR"}))
        .await;
    let created = created.ok(201);
    let cart = created["ids"]["cart_id"].as_str().unwrap().to_owned();
    assert_eq!(created["position"], app.head().await);

    let added = app
        .post(
            &format!("/v1/carts/{cart}/lines"),
            &alice,
            json!({"product_id": product, "sku": SKU, "quantity": 2}),
        )
        .await;
    assert_eq!(added.ok(202)["position"], app.head().await);
    assert_eq!(
        added.body["streams"][0]["stream_id"],
        format!("cart-{cart}")
    );
    assert_eq!(added.body["streams"][0]["version"], 2);

    app.command(
        Method::PUT,
        &format!("/v1/carts/{cart}/lines/{SKU}"),
        &alice,
        &new_key(),
        Some(json!({"quantity": 3})),
    )
    .await
    .ok(202);

    let view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    let view = view.ok(200);
    assert_eq!(view["status"], "open");
    assert_eq!(view["lines"][0]["quantity"], 3);
    // The price is the catalog's.
    assert_eq!(view["lines"][0]["unit_price"]["minor"], PRICE_MINOR);
    assert_eq!(view["total"]["minor"], 3 * PRICE_MINOR);
    assert_eq!(view["version"], 3);

    let head = app.head().await;
    let checked_out = app
        .post(
            &format!("/v1/carts/{cart}/checkout"),
            &alice,
            json!({"shipping_address": address(), "payment_method": "tok_visa"}),
        )
        .await;
    let checked_out = checked_out.ok(202);
    let checkout = checked_out["ids"]["checkout_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let order = checked_out["ids"]["order_id"].as_str().unwrap().to_owned();
    assert_eq!(order, checkout, "the order shares the checkout's id");
    // The cart is locked and the checkout started; the saga does the rest.
    assert_eq!(checked_out["position"], head + 2);
    let cart_view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(cart_view.ok(200)["status"], "checked_out");

    let saga = app.start_saga().await;
    let done = app
        .wait_for_checkout(&checkout, &alice, &["completed", "rejected", "cancelled"])
        .await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["payment"], "captured");
    let order_view = app.get(&format!("/v1/orders/{order}"), &alice).await;
    let order_view = order_view.ok(200);
    assert_eq!(order_view["status"], "confirmed");
    assert_eq!(order_view["total"]["minor"], 3 * PRICE_MINOR);
    assert_eq!(order_view["cart_id"], cart);
    let cart_view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(cart_view.ok(200)["status"], "closed");

    app.post(
        &format!("/v1/orders/{order}/cancel"),
        &alice,
        json!({"reason": "changed my mind"}),
    )
    .await
    .ok(202);
    let order_view = app.get(&format!("/v1/orders/{order}"), &alice).await;
    assert_eq!(order_view.ok(200)["status"], "cancelled");
    assert_eq!(order_view.body["reason"], "changed my mind");
    // Cancelled after capture: the saga refunds and puts the stock back.
    let undone = app
        .wait_for_checkout(&checkout, &alice, &["cancelled"])
        .await;
    assert_eq!(undone["payment"], "refunded");
    saga.stop().await;

    // Every event carries who caused it.
    let events = app.events_after(0).await;
    let cancelled = events
        .iter()
        .find(|e| e["event_type"] == "OrderCancelled")
        .unwrap();
    assert_eq!(cancelled["metadata"]["actor"], "customer:alice");
    let refunded = events
        .iter()
        .find(|e| e["event_type"] == "PaymentRefunded")
        .unwrap();
    assert_eq!(refunded["metadata"]["actor"], "system:checkout");
}

#[tokio::test]
async fn a_guest_cart_is_merged_into_the_customers_cart() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let guest_token = Uuid::new_v4();
    let guest = customer(&format!("guest:{guest_token}"));
    let alice = customer("alice");
    let guest_cart = app.create_cart(&guest, "EUR").await;
    app.post(
        &format!("/v1/carts/{guest_cart}/lines"),
        &guest,
        json!({"product_id": product, "sku": SKU, "quantity": 4}),
    )
    .await
    .ok(202);
    let cart = app.create_cart(&alice, "EUR").await;

    // A wrong guest token does not reveal the guest cart.
    app.post(
        &format!("/v1/carts/{cart}/merge"),
        &alice,
        json!({"guest_cart_id": guest_cart, "guest_token": Uuid::new_v4()}),
    )
    .await
    .problem(404, "not-found");

    app.post(
        &format!("/v1/carts/{cart}/merge"),
        &alice,
        json!({"guest_cart_id": guest_cart, "guest_token": guest_token}),
    )
    .await
    .ok(202);
    let view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(view.ok(200)["lines"][0]["quantity"], 4);
    let guest_view = app.get(&format!("/v1/carts/{guest_cart}"), &guest).await;
    assert_eq!(guest_view.ok(200)["status"], "abandoned");
}

#[tokio::test]
async fn stock_is_received_adjusted_and_read() {
    let app = spawn_app().await;
    app.seed_catalog().await;
    app.post(
        &format!("/v1/inventory/{SKU}/adjustments"),
        &admin(),
        json!({"delta": -3, "reason": "damaged in the warehouse"}),
    )
    .await
    .ok(202);
    app.post(
        &format!("/v1/inventory/{SKU}/receipts"),
        &admin(),
        json!({"warehouse": "east", "quantity": 10}),
    )
    .await
    .ok(202);
    let stock = app
        .get(&format!("/v1/inventory/{SKU}"), &customer("alice"))
        .await;
    let stock = stock.ok(200);
    assert_eq!(stock["on_hand"], 107);
    assert_eq!(stock["available"], 107);
    assert_eq!(stock["warehouses"].as_array().unwrap().len(), 2);
    // Taking more than there is is refused by the domain.
    app.post(
        &format!("/v1/inventory/{SKU}/adjustments"),
        &admin(),
        json!({"warehouse": "east", "delta": -11, "reason": "count"}),
    )
    .await
    .problem(409, "adjustment-exceeds-available");
}

#[tokio::test]
async fn the_catalog_is_built_through_the_api() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    app.post(
        &format!("/v1/products/{product}/skus"),
        &admin(),
        json!({"sku": "SHOE-43", "attributes": {"size": "43"}}),
    )
    .await
    .ok(202);
    let view = app
        .get(&format!("/v1/products/{product}"), &customer("alice"))
        .await;
    let view = view.ok(200);
    assert_eq!(view["status"], "published");
    assert_eq!(view["skus"].as_array().unwrap().len(), 2);
    assert_eq!(view["prices"][0]["minor"], PRICE_MINOR);
    // Publishing twice is a transition the product refuses.
    app.command(
        Method::POST,
        &format!("/v1/products/{product}/publish"),
        &admin(),
        &new_key(),
        None,
    )
    .await
    .problem(409, "invalid-transition");
}

#[tokio::test]
async fn a_retry_with_the_same_key_gets_the_first_response_and_writes_once() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    let path = format!("/v1/carts/{cart}/lines");
    let body = json!({"product_id": product, "sku": SKU, "quantity": 1});
    let key = new_key();

    let first = app
        .command(Method::POST, &path, &alice, &key, Some(body.clone()))
        .await;
    first.ok(202);
    assert!(first.headers.get("idempotent-replayed").is_none());
    let head = app.head().await;

    let retry = app
        .command(Method::POST, &path, &alice, &key, Some(body.clone()))
        .await;
    assert_eq!(retry.ok(202), &first.body);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
    assert_eq!(app.head().await, head, "the retry wrote again");

    // Same key, different body: refused, nothing written.
    let other = json!({"product_id": product, "sku": SKU, "quantity": 2});
    app.command(Method::POST, &path, &alice, &key, Some(other))
        .await
        .problem(422, "idempotency-key-reused");
    // Same key on another route: refused as well.
    app.command(
        Method::POST,
        "/v1/carts",
        &alice,
        &key,
        Some(json!({"currency": "EUR"})),
    )
    .await
    .problem(422, "idempotency-key-reused");
    assert_eq!(app.head().await, head);

    // Keys belong to their principal: bob's same key is a new command of his.
    let bob = customer("bob");
    app.command(
        Method::POST,
        "/v1/carts",
        &bob,
        &key,
        Some(json!({"currency": "EUR"})),
    )
    .await
    .ok(201);

    let view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(view.ok(200)["lines"][0]["quantity"], 1);
}

#[tokio::test]
async fn a_refusal_is_replayed_to_a_retry_too() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    let path = format!("/v1/carts/{cart}/lines");
    let key = new_key();
    let body = json!({"product_id": product, "sku": "SHOE-99", "quantity": 1});
    let first = app
        .command(Method::POST, &path, &alice, &key, Some(body.clone()))
        .await;
    first.problem(422, "unknown-sku");
    let retry = app
        .command(Method::POST, &path, &alice, &key, Some(body))
        .await;
    assert_eq!(retry.problem(422, "unknown-sku"), &first.body);
    assert_eq!(retry.headers["idempotent-replayed"], "true");
}

#[tokio::test]
async fn concurrent_copies_of_one_command_write_once() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    let head = app.head().await;
    let path = format!("/v1/carts/{cart}/lines");
    let key = new_key();
    let body = json!({"product_id": product, "sku": SKU, "quantity": 1});
    let copies = (0..8).map(|_| app.command(Method::POST, &path, &alice, &key, Some(body.clone())));
    let replies = futures::future::join_all(copies).await;
    // A copy that arrives while the first one runs is told so (409, retry later);
    // the others get the first response.
    let answered: Vec<_> = replies
        .iter()
        .filter(|r| {
            r.status.as_u16() != 409 || r.problem(409, "idempotency-key-in-flight").is_null()
        })
        .collect();
    assert!(!answered.is_empty());
    for reply in &answered {
        assert_eq!(reply.ok(202), &answered[0].body);
    }
    assert_eq!(app.head().await, head + 1);
}

#[tokio::test]
async fn a_checkout_whose_client_hangs_up_completes_once_and_its_retry_answers() {
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
    let path = format!("/v1/carts/{cart}/checkout");
    let key = new_key();
    let body = json!({"shipping_address": address(), "payment_method": "tok_visa"});
    // The client gives up almost at once (the server may or may not have started).
    let _ = app
        .http
        .post(app.url(&path))
        .bearer_auth(&alice)
        .header("idempotency-key", &key)
        .json(&body)
        .timeout(std::time::Duration::from_millis(2))
        .send()
        .await;
    // While the first request still runs, the key is in flight (409): retry after.
    let mut retry = app
        .command(Method::POST, &path, &alice, &key, Some(body.clone()))
        .await;
    for _ in 0..100 {
        if retry.status != 409 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        retry = app
            .command(Method::POST, &path, &alice, &key, Some(body.clone()))
            .await;
    }
    let checkout = retry.ok(202)["ids"]["checkout_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.get(&format!("/v1/checkouts/{checkout}"), &alice)
        .await
        .ok(200);
    let events = app.events_after(0).await;
    let count = |event_type: &str| {
        events
            .iter()
            .filter(|e| e["event_type"] == event_type)
            .count()
    };
    assert_eq!(count("CartCheckedOut"), 1);
    assert_eq!(count("CheckoutStarted"), 1);
}
