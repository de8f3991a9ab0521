//! Every kind of bad input gets a 4xx problem document naming what is wrong, and
//! the log shows that nothing was appended.

use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

/// An app with a catalog and an open EUR cart of alice's.
async fn shop() -> (TestApp, Uuid, Uuid) {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let cart = app.create_cart(&customer("alice"), "EUR").await;
    (app, product, cart)
}

async fn assert_nothing_appended(app: &TestApp, head: u64) {
    assert_eq!(app.head().await, head, "the store's head moved");
    let appended = app.events_after(head).await;
    assert!(appended.is_empty(), "appended: {appended:?}");
}

async fn add_line_raw(app: &TestApp, cart: Uuid, content_type: &str, body: Vec<u8>) -> Reply {
    app.send(
        app.http
            .post(app.url(&format!("/v1/carts/{cart}/lines")))
            .bearer_auth(customer("alice"))
            .header("idempotency-key", new_key())
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

async fn add_line(app: &TestApp, cart: Uuid, body: Value) -> Reply {
    app.post(&format!("/v1/carts/{cart}/lines"), &customer("alice"), body)
        .await
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let (app, _, cart) = shop().await;
    let head = app.head().await;
    for body in [&b"{\"sku\": "[..], b"not json", b"", b"{\"quantity\": 1,}"] {
        add_line_raw(&app, cart, "application/json", body.to_vec())
            .await
            .problem(400, "malformed-json");
    }
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn unknown_fields_are_refused_and_named() {
    let (app, product, cart) = shop().await;
    let head = app.head().await;
    let reply = add_line(
        &app,
        cart,
        json!({"product_id": product, "sku": SKU, "quantity": 1, "colour": "red"}),
    )
    .await;
    assert_eq!(reply.problem(422, "unknown-field")["field"], "colour");
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn a_price_in_a_cart_request_is_refused() {
    let (app, product, cart) = shop().await;
    let head = app.head().await;
    let reply = add_line(
        &app,
        cart,
        json!({"product_id": product, "sku": SKU, "quantity": 1,
               "price": {"minor": 1, "currency": "EUR"}}),
    )
    .await;
    assert_eq!(reply.problem(422, "unknown-field")["field"], "price");
    let reply = add_line(
        &app,
        cart,
        json!({"product_id": product, "sku": SKU, "quantity": 1, "unit_price": 1}),
    )
    .await;
    assert_eq!(reply.problem(422, "unknown-field")["field"], "unit_price");
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn zero_negative_absurd_and_overflowing_quantities_are_refused() {
    let (app, product, cart) = shop().await;
    let head = app.head().await;
    for quantity in [
        "0",
        "-1",
        "1000001",
        "4294967296",
        "99999999999999999999999999",
        "1.5",
        "\"3\"",
    ] {
        let body = format!(r#"{{"product_id":"{product}","sku":"{SKU}","quantity":{quantity}}}"#);
        let reply = add_line_raw(&app, cart, "application/json", body.into_bytes()).await;
        assert_eq!(
            reply.problem(422, "invalid-field")["field"],
            "quantity",
            "quantity {quantity}"
        );
    }
    // The same bounds hold for changing a line and receiving stock.
    let reply = app
        .command(
            Method::PUT,
            &format!("/v1/carts/{cart}/lines/{SKU}"),
            &customer("alice"),
            &new_key(),
            Some(json!({"quantity": 0})),
        )
        .await;
    assert_eq!(reply.problem(422, "invalid-field")["field"], "quantity");
    let reply = app
        .post(
            &format!("/v1/inventory/{SKU}/receipts"),
            &admin(),
            json!({"quantity": -5}),
        )
        .await;
    assert_eq!(reply.problem(422, "invalid-field")["field"], "quantity");
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn an_unknown_sku_or_product_is_refused() {
    let (app, product, cart) = shop().await;
    let head = app.head().await;
    let reply = add_line(
        &app,
        cart,
        json!({"product_id": product, "sku": "NO-SUCH-SKU", "quantity": 1}),
    )
    .await;
    assert_eq!(reply.problem(422, "unknown-sku")["field"], "sku");
    let reply = add_line(
        &app,
        cart,
        json!({"product_id": Uuid::new_v4(), "sku": SKU, "quantity": 1}),
    )
    .await;
    assert_eq!(reply.problem(422, "unknown-product")["field"], "product_id");
    let reply = add_line(
        &app,
        cart,
        json!({"product_id": product, "sku": "has space", "quantity": 1}),
    )
    .await;
    assert_eq!(reply.problem(422, "invalid-field")["field"], "sku");
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn over_long_strings_are_refused() {
    let (app, _, _) = shop().await;
    let head = app.head().await;
    let reply = app
        .post(
            "/v1/products",
            &admin(),
            json!({"title": "t".repeat(201), "brand": "Acme", "category": ["shoes"],
                   "skus": [{"sku": "LONG-1"}]}),
        )
        .await;
    assert_eq!(reply.problem(422, "invalid")["field"], "title");
    let reply = app
        .post(
            "/v1/products",
            &admin(),
            json!({"title": "Shoe", "brand": "Acme", "category": ["shoes"],
                   "skus": [{"sku": "S".repeat(65)}]}),
        )
        .await;
    assert_eq!(reply.problem(422, "invalid-field")["field"], "skus[0].sku");
    let reply = app
        .post(
            &format!("/v1/inventory/{SKU}/adjustments"),
            &admin(),
            json!({"delta": -1, "reason": "r".repeat(201)}),
        )
        .await;
    assert_eq!(reply.problem(422, "invalid")["field"], "reason");
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn a_wrong_content_type_is_a_415() {
    let (app, product, cart) = shop().await;
    let head = app.head().await;
    let body = json!({"product_id": product, "sku": SKU, "quantity": 1}).to_string();
    for content_type in ["text/plain", "application/x-www-form-urlencoded", ""] {
        add_line_raw(&app, cart, content_type, body.clone().into_bytes())
            .await
            .problem(415, "unsupported-media-type");
    }
    // With parameters, JSON is still JSON.
    add_line_raw(
        &app,
        cart,
        "application/json; charset=utf-8",
        body.into_bytes(),
    )
    .await
    .ok(202);
    assert_eq!(app.head().await, head + 1);
}

#[tokio::test]
async fn an_oversized_body_is_a_413() {
    let (app, product, cart) = shop().await;
    let head = app.head().await;
    let padding = "x".repeat(BODY_LIMIT_BYTES + 1);
    let body = json!({"product_id": product, "sku": SKU, "quantity": 1, "note": padding});
    add_line_raw(
        &app,
        cart,
        "application/json",
        body.to_string().into_bytes(),
    )
    .await
    .problem(413, "payload-too-large");
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn a_mismatched_currency_is_refused() {
    let (app, product, _) = shop().await;
    let usd_cart = app.create_cart(&customer("alice"), "USD").await;
    let head = app.head().await;
    // The catalog prices the SKU in EUR only: a USD cart cannot take it.
    let reply = add_line(
        &app,
        usd_cart,
        json!({"product_id": product, "sku": SKU, "quantity": 1}),
    )
    .await;
    assert_eq!(reply.problem(422, "price-missing")["field"], "currency");
    // A currency that is not ISO 4217's shape.
    let reply = app
        .post("/v1/carts", &customer("alice"), json!({"currency": "euro"}))
        .await;
    assert_eq!(reply.problem(422, "invalid-field")["field"], "currency");
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn a_command_without_an_idempotency_key_is_a_400() {
    let (app, product, cart) = shop().await;
    let head = app.head().await;
    let reply = app
        .send(
            app.http
                .post(app.url(&format!("/v1/carts/{cart}/lines")))
                .bearer_auth(customer("alice"))
                .json(&json!({"product_id": product, "sku": SKU, "quantity": 1})),
        )
        .await;
    assert_eq!(
        reply.problem(400, "idempotency-key-required")["field"],
        "Idempotency-Key"
    );
    assert_nothing_appended(&app, head).await;
}

#[tokio::test]
async fn bad_ids_in_paths_and_bad_addresses_are_refused() {
    let (app, _, cart) = shop().await;
    let head = app.head().await;
    app.get("/v1/carts/not-a-uuid", &customer("alice"))
        .await
        .problem(400, "invalid-parameter");
    let reply = app
        .post(
            &format!("/v1/carts/{cart}/checkout"),
            &customer("alice"),
            json!({"shipping_address": {"name": "A", "line1": "Street 1", "city": "Berlin",
                   "postal_code": "10115", "country": "Germany"}, "payment_method": "tok_visa"}),
        )
        .await;
    assert_eq!(
        reply.problem(422, "invalid")["field"],
        "shipping_address.country"
    );
    assert_nothing_appended(&app, head).await;
}
