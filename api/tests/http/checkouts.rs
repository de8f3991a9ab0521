//! Checkouts through the HTTP API with the saga running beside the server and a
//! sandbox payment provider on a real socket: the happy path, a declined card, a
//! SKU out of stock, the status query and its event stream, and bad input.

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::commands::address;
use crate::support::{admin, customer, new_key, spawn_app, TestApp, SKU};

/// A cart of `quantity` units of the seeded SKU (100 in stock), owned by alice.
async fn cart_of(app: &TestApp, quantity: u32) -> (String, String) {
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    app.post(
        &format!("/v1/carts/{cart}/lines"),
        &alice,
        json!({"product_id": product, "sku": SKU, "quantity": quantity}),
    )
    .await
    .ok(202);
    (alice, cart.to_string())
}

async fn check_out(app: &TestApp, token: &str, cart: &str, card: &str) -> String {
    let started = app
        .post(
            &format!("/v1/carts/{cart}/checkout"),
            token,
            json!({"shipping_address": address(), "payment_method": card}),
        )
        .await;
    started.ok(202)["ids"]["checkout_id"]
        .as_str()
        .expect("a checkout id")
        .to_owned()
}

async fn stock(app: &TestApp) -> Value {
    app.get(&format!("/v1/inventory/{SKU}"), &admin())
        .await
        .ok(200)
        .clone()
}

#[tokio::test]
async fn a_checkout_is_accepted_at_once_and_completes_paid_with_its_stock_committed() {
    let app = spawn_app().await;
    let (alice, cart) = cart_of(&app, 3).await;
    let checkout = check_out(&app, &alice, &cart, "tok_visa").await;
    let pending = app.get(&format!("/v1/checkouts/{checkout}"), &alice).await;
    assert_eq!(
        pending.ok(200)["status"],
        "placing",
        "nothing runs without the saga"
    );

    let saga = app.start_saga().await;
    let view = app
        .wait_for_checkout(&checkout, &alice, &["completed", "rejected", "cancelled"])
        .await;
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["payment"], "captured");
    assert_eq!(view["order_id"], checkout);
    assert_eq!(view["lines"][0]["stock"], "committed");
    let order = app.get(&format!("/v1/orders/{checkout}"), &alice).await;
    assert_eq!(order.ok(200)["status"], "confirmed");
    let cart_view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(cart_view.ok(200)["status"], "closed");
    let stock = stock(&app).await;
    assert_eq!(stock["on_hand"], 97, "{stock}");
    assert_eq!(stock["reserved"], 0, "{stock}");
    saga.stop().await;

    // Money movements are events on the payment stream, once each.
    let events = app.events_after(0).await;
    let count = |t: &str| events.iter().filter(|e| e["event_type"] == t).count();
    assert_eq!(count("PaymentAuthorized"), 1);
    assert_eq!(count("PaymentCaptured"), 1);
    assert_eq!(count("ReservationCommitted"), 1);
    assert_eq!(count("CheckoutCompleted"), 1);
}

#[tokio::test]
async fn a_declined_card_rejects_the_checkout_and_releases_the_stock() {
    let app = spawn_app().await;
    let (alice, cart) = cart_of(&app, 2).await;
    let saga = app.start_saga().await;
    let checkout = check_out(&app, &alice, &cart, "tok_decline").await;
    let view = app
        .wait_for_checkout(&checkout, &alice, &["rejected", "cancelled", "completed"])
        .await;
    assert_eq!(view["status"], "rejected", "{view}");
    assert_eq!(view["payment"], "declined");
    assert!(view["reason"].as_str().unwrap().contains("declined"));
    assert_eq!(view["lines"][0]["stock"], "released");
    saga.stop().await;
    let stock = stock(&app).await;
    assert_eq!(
        (stock["on_hand"].clone(), stock["reserved"].clone()),
        (json!(100), json!(0))
    );
    let order = app.get(&format!("/v1/orders/{checkout}"), &alice).await;
    assert_eq!(order.ok(200)["status"], "rejected");
    // The customer gets the cart back.
    let cart_view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(cart_view.ok(200)["status"], "open");
}

#[tokio::test]
async fn a_sku_out_of_stock_rejects_without_asking_for_payment() {
    let app = spawn_app().await;
    let (alice, cart) = cart_of(&app, 101).await;
    let saga = app.start_saga().await;
    let checkout = check_out(&app, &alice, &cart, "tok_visa").await;
    let view = app
        .wait_for_checkout(&checkout, &alice, &["rejected", "cancelled", "completed"])
        .await;
    saga.stop().await;
    assert_eq!(view["status"], "rejected", "{view}");
    assert_eq!(view["payment"], "none");
    assert!(view["reason"].as_str().unwrap().contains("out of stock"));
    let events = app.events_after(0).await;
    assert!(!events
        .iter()
        .any(|e| e["event_type"].as_str().unwrap().starts_with("Payment")));
}

#[tokio::test]
async fn the_event_stream_sends_each_step_and_ends_with_the_checkout() {
    let app = spawn_app().await;
    let (alice, cart) = cart_of(&app, 1).await;
    let saga = app.start_saga().await;
    let checkout = check_out(&app, &alice, &cart, "tok_visa").await;
    let reply = app
        .http
        .get(app.url(&format!("/v1/checkouts/{checkout}/events")))
        .bearer_auth(&alice)
        .send()
        .await
        .expect("the stream opens");
    assert_eq!(reply.status(), 200);
    assert!(reply.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    // The stream ends by itself once the checkout completes.
    let body = reply.text().await.expect("the stream ends");
    saga.stop().await;
    let types: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(types.first(), Some(&"CheckoutStarted"), "{body}");
    assert_eq!(types.last(), Some(&"CheckoutCompleted"), "{body}");
    assert!(types.contains(&"CheckoutPaymentCaptured"));
    let last: Value = serde_json::from_str(
        body.lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .next_back()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(last["status"], "completed");

    // Resuming after the last version sends nothing more and ends.
    let version = last["version"].as_u64().unwrap();
    let resumed = app
        .http
        .get(app.url(&format!("/v1/checkouts/{checkout}/events")))
        .bearer_auth(&alice)
        .header("last-event-id", version.to_string())
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!resumed.contains("event: "), "{resumed}");
}

#[tokio::test]
async fn bad_checkouts_are_refused_and_change_nothing() {
    let app = spawn_app().await;
    let (alice, cart) = cart_of(&app, 1).await;
    let head = app.head().await;
    let path = format!("/v1/carts/{cart}/checkout");
    let missing = app
        .post(&path, &alice, json!({"shipping_address": address()}))
        .await;
    assert_eq!(missing.status.as_u16(), 422, "{}", missing.body);
    let blank = app
        .post(
            &path,
            &alice,
            json!({"shipping_address": address(), "payment_method": "  "}),
        )
        .await;
    assert_eq!(blank.problem(422, "invalid")["field"], "payment_method");
    let bob = app
        .command(
            Method::POST,
            &path,
            &customer("bob"),
            &new_key(),
            Some(json!({"shipping_address": address(), "payment_method": "tok_visa"})),
        )
        .await;
    bob.problem(404, "not-found");
    assert_eq!(app.head().await, head, "nothing was appended");

    // A cart checked out once cannot be checked out again under another key.
    check_out(&app, &alice, &cart, "tok_visa").await;
    let again = app
        .post(
            &path,
            &alice,
            json!({"shipping_address": address(), "payment_method": "tok_visa"}),
        )
        .await;
    assert_eq!(again.status.as_u16(), 409, "{}", again.body);

    app.get("/v1/checkouts/not-a-uuid", &alice)
        .await
        .problem(400, "invalid-parameter");
    app.get(&format!("/v1/checkouts/{}", Uuid::new_v4()), &alice)
        .await
        .problem(404, "not-found");
    app.get(&format!("/v1/checkouts/{}/events", Uuid::new_v4()), &alice)
        .await
        .problem(404, "not-found");
}
