//! Who may do what: tokens, roles, and customers seeing only their own carts.

use api::http::Role;
use reqwest::Method;
use serde_json::json;
use uuid::Uuid;

use crate::support::*;

#[tokio::test]
async fn a_request_without_a_token_is_a_401_problem() {
    let app = spawn_app().await;
    let reply = app.send(app.http.get(app.url("/v1/events"))).await;
    reply.problem(401, "token-missing");
    let reply = app
        .send(
            app.http
                .post(app.url("/v1/carts"))
                .header("idempotency-key", "k")
                .json(&json!({"currency": "EUR"})),
        )
        .await;
    reply.problem(401, "token-missing");
}

#[tokio::test]
async fn expired_badly_signed_and_malformed_tokens_are_401_problems() {
    let app = spawn_app().await;
    let expired = token_expiring(Role::Admin, "ops", chrono::Utc::now().timestamp() - 600);
    let reply = app.get("/v1/events", &expired).await;
    assert_eq!(
        reply.problem(401, "token-expired")["detail"],
        "the token has expired"
    );

    let foreign = {
        let claims = api::http::auth::Claims::new(
            "ops",
            Role::Admin,
            (chrono::Utc::now().timestamp() + 600) as u64,
        );
        api::http::auth::mint_hs256(b"some-other-secret-that-is-long-enough!", &claims).unwrap()
    };
    app.get("/v1/events", &foreign)
        .await
        .problem(401, "token-signature");
    app.get("/v1/events", "not-a-jwt")
        .await
        .problem(401, "token-malformed");
    let reply = app
        .send(
            app.http
                .get(app.url("/v1/events"))
                .header("authorization", "Basic b3BzOm9wcw=="),
        )
        .await;
    reply.problem(401, "token-malformed");
}

#[tokio::test]
async fn another_customers_cart_is_a_404_and_never_the_data() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let bob = customer("bob");
    let cart = app.create_cart(&alice, "EUR").await;
    app.get(&format!("/v1/carts/{cart}"), &alice).await.ok(200);

    let head = app.head().await;
    let seen_by_bob = app.get(&format!("/v1/carts/{cart}"), &bob).await;
    let nonexistent = app
        .get(&format!("/v1/carts/{}", Uuid::new_v4()), &bob)
        .await;
    seen_by_bob.problem(404, "not-found");
    nonexistent.problem(404, "not-found");
    // The same answer as for a cart that does not exist: nothing to probe.
    assert_eq!(seen_by_bob.body, nonexistent.body);

    app.post(
        &format!("/v1/carts/{cart}/lines"),
        &bob,
        json!({"product_id": product, "sku": SKU, "quantity": 1}),
    )
    .await
    .problem(404, "not-found");
    app.command(
        Method::DELETE,
        &format!("/v1/carts/{cart}/lines/{SKU}"),
        &bob,
        &new_key(),
        None,
    )
    .await
    .problem(404, "not-found");
    assert!(app.events_after(head).await.is_empty());

    // Staff see it.
    app.get(&format!("/v1/carts/{cart}"), &admin())
        .await
        .ok(200);
    app.get(&format!("/v1/carts/{cart}"), &auditor())
        .await
        .ok(200);
}

#[tokio::test]
async fn another_customers_checkout_and_order_are_a_404() {
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
    let checkout = app
        .post(
            &format!("/v1/carts/{cart}/checkout"),
            &alice,
            json!({"shipping_address": crate::commands::address(), "payment_method": "tok_visa"}),
        )
        .await
        .ok(202)["ids"]["checkout_id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.get(&format!("/v1/checkouts/{checkout}"), &alice)
        .await
        .ok(200);
    app.get(&format!("/v1/checkouts/{checkout}"), &customer("bob"))
        .await
        .problem(404, "not-found");
    let saga = app.start_saga().await;
    app.wait_for_checkout(&checkout, &alice, &["completed"])
        .await;
    saga.stop().await;
    let order = &checkout;
    app.get(&format!("/v1/orders/{order}"), &alice)
        .await
        .ok(200);
    app.get(&format!("/v1/orders/{order}"), &customer("bob"))
        .await
        .problem(404, "not-found");
    app.post(
        &format!("/v1/orders/{order}/cancel"),
        &customer("bob"),
        json!({"reason": "not mine"}),
    )
    .await
    .problem(404, "not-found");
}

#[tokio::test]
async fn only_admins_change_the_catalog_and_stock() {
    let app = spawn_app().await;
    let head = app.head().await;
    let body = json!({
        "title": "Shoe", "brand": "Acme", "category": ["shoes"], "skus": [{"sku": "A-1"}]
    });
    for who in [customer("alice"), auditor(), token(Role::Analyst, "bi")] {
        app.post("/v1/products", &who, body.clone())
            .await
            .problem(403, "forbidden");
        app.post("/v1/inventory/A-1/receipts", &who, json!({"quantity": 5}))
            .await
            .problem(403, "forbidden");
    }
    assert!(app.events_after(head).await.is_empty());
}

#[tokio::test]
async fn only_auditors_and_admins_read_the_log() {
    let app = spawn_app().await;
    for who in [customer("alice"), token(Role::Analyst, "bi")] {
        app.get("/v1/events", &who).await.problem(403, "forbidden");
        app.get("/v1/streams/cart-x/events", &who)
            .await
            .problem(403, "forbidden");
    }
    app.get("/v1/events", &admin()).await.ok(200);
    app.get("/v1/events", &auditor()).await.ok(200);
}
