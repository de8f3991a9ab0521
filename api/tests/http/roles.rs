//! Function-level authorization and mass assignment, route by route:
//! - every operation of the served OpenAPI document, called by each kind of caller,
//!   against an explicit matrix of who may call what (a route missing from the
//!   matrix fails the test, named);
//! - fields a client may not set (prices, statuses, owners, totals) refused on every
//!   command that takes a body, with nothing written;
//! - the server running as the engine's database role.

use api::http::{Role, ServerConfig};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

/// Who may call an operation.
#[derive(Debug, Clone, Copy)]
enum May {
    /// Anyone, without a token.
    Anyone,
    /// A token with one of these roles.
    Roles(&'static [Role]),
}

const ALL_ROLES: May = May::Roles(&[Role::Customer, Role::Admin, Role::Auditor, Role::Analyst]);
const ADMIN: May = May::Roles(&[Role::Admin]);
const CUSTOMER: May = May::Roles(&[Role::Customer]);
const SHOPPERS: May = May::Roles(&[Role::Customer, Role::Admin]);
const READERS: May = May::Roles(&[Role::Customer, Role::Admin, Role::Auditor]);
const AUDIT: May = May::Roles(&[Role::Auditor, Role::Admin]);
const STAFF_READERS: May = May::Roles(&[Role::Admin, Role::Auditor, Role::Analyst]);
const REBUILDERS: May = May::Roles(&[Role::Admin, Role::Analyst]);

/// The expected matrix: every operation and who may call it.
const EXPECTED: &[(&str, &str, May)] = &[
    ("GET", "/health", May::Anyone),
    ("GET", "/ready", May::Anyone),
    ("GET", "/metrics", May::Anyone),
    ("GET", "/openapi.json", May::Anyone),
    ("POST", "/v1/products", ADMIN),
    ("GET", "/v1/products", ALL_ROLES),
    ("GET", "/v1/products/{product_id}", ALL_ROLES),
    ("POST", "/v1/products/{product_id}/skus", ADMIN),
    ("PUT", "/v1/products/{product_id}/prices", ADMIN),
    ("POST", "/v1/products/{product_id}/publish", ADMIN),
    ("POST", "/v1/products/{product_id}/unpublish", ADMIN),
    ("POST", "/v1/products/{product_id}/discontinue", ADMIN),
    ("GET", "/v1/inventory", STAFF_READERS),
    ("GET", "/v1/inventory/{sku}", ALL_ROLES),
    ("POST", "/v1/inventory/{sku}/receipts", ADMIN),
    ("POST", "/v1/inventory/{sku}/adjustments", ADMIN),
    ("POST", "/v1/carts", CUSTOMER),
    ("GET", "/v1/carts", READERS),
    ("GET", "/v1/carts/{cart_id}", READERS),
    ("POST", "/v1/carts/{cart_id}/lines", SHOPPERS),
    ("PUT", "/v1/carts/{cart_id}/lines/{sku}", SHOPPERS),
    ("DELETE", "/v1/carts/{cart_id}/lines/{sku}", SHOPPERS),
    ("POST", "/v1/carts/{cart_id}/merge", SHOPPERS),
    ("POST", "/v1/carts/{cart_id}/checkout", SHOPPERS),
    ("GET", "/v1/orders", READERS),
    ("GET", "/v1/orders/{order_id}", READERS),
    ("GET", "/v1/customers/{customer_id}/history", READERS),
    ("GET", "/v1/sales/daily", STAFF_READERS),
    ("GET", "/v1/sales/top-skus", STAFF_READERS),
    ("GET", "/v1/admin/projections", STAFF_READERS),
    ("POST", "/v1/admin/projections/rebuild", REBUILDERS),
    ("GET", "/v1/checkouts/{checkout_id}", READERS),
    ("GET", "/v1/checkouts/{checkout_id}/events", READERS),
    ("POST", "/v1/orders/{order_id}/cancel", SHOPPERS),
    ("GET", "/v1/streams/{stream_id}/events", AUDIT),
    ("GET", "/v1/events", AUDIT),
    ("GET", "/v1/events.ndjson", AUDIT),
    ("GET", "/v1/audit/aggregates/{stream_id}", AUDIT),
    ("GET", "/v1/audit/verify", AUDIT),
    ("GET", "/v1/audit/trail", AUDIT),
    ("POST", "/v1/admin/customers/{customer_id}/forget", ADMIN),
    ("GET", "/v1/search", ALL_ROLES),
    ("GET", "/v1/search/suggest", ALL_ROLES),
    // Authenticated by the provider's signature, not by a token.
    ("POST", "/v1/payments/webhooks", May::Anyone),
];

/// The (method, path template) operations of the document the server serves.
async fn documented_operations(app: &TestApp) -> Vec<(String, String)> {
    let document = app.send(app.http.get(app.url("/openapi.json"))).await;
    let paths = document.ok(200)["paths"]
        .as_object()
        .expect("paths")
        .clone();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations.sort();
    operations
}

/// A concrete URL for a path template: fresh ids, a plausible SKU and stream.
fn concrete(path: &str) -> String {
    path.replace("{product_id}", &Uuid::new_v4().to_string())
        .replace("{cart_id}", &Uuid::new_v4().to_string())
        .replace("{order_id}", &Uuid::new_v4().to_string())
        .replace("{checkout_id}", &Uuid::new_v4().to_string())
        .replace("{customer_id}", &Uuid::new_v4().to_string())
        .replace("{sku}", "MATRIX-1")
        .replace("{stream_id}", "cart-matrix")
}

/// True if the reply is a refusal of who is calling (401 for the token, 403).
fn refused(reply: &Reply) -> Option<&'static str> {
    let problem_type = reply.body["type"].as_str().unwrap_or("");
    let code = problem_type.strip_prefix(PROBLEM_TYPE_BASE).unwrap_or("");
    match reply.status.as_u16() {
        401 if code.starts_with("token-") => Some("401"),
        403 if code == "forbidden" => Some("403"),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_route_admits_exactly_the_roles_of_the_matrix() {
    let app = spawn_app().await;
    let operations = documented_operations(&app).await;
    let missing: Vec<String> = operations
        .iter()
        .filter(|(m, p)| !EXPECTED.iter().any(|(em, ep, _)| em == m && ep == p))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert!(
        missing.is_empty(),
        "routes in the OpenAPI document with no row in the expected matrix of \
         api/tests/http/roles.rs (add who may call each): {missing:?}"
    );

    let callers: Vec<(&str, Option<Role>, Option<String>)> = vec![
        ("anonymous", None, None),
        (
            "customer",
            Some(Role::Customer),
            Some(customer("matrix-customer")),
        ),
        ("admin", Some(Role::Admin), Some(admin())),
        ("auditor", Some(Role::Auditor), Some(auditor())),
        (
            "analyst",
            Some(Role::Analyst),
            Some(token(Role::Analyst, "bi")),
        ),
    ];
    let mut wrong = Vec::new();
    for (method, path) in &operations {
        let may = EXPECTED
            .iter()
            .find(|(m, p, _)| m == method && p == path)
            .map(|(_, _, may)| *may)
            .expect("checked above");
        for (name, role, token) in &callers {
            let method: Method = method.parse().expect("a method");
            let mut request = app
                .http
                .request(method.clone(), app.url(&concrete(path)))
                .header("idempotency-key", new_key());
            if method != Method::GET {
                request = request.json(&json!({}));
            }
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            let reply = app.send(request).await;
            let allowed = match (may, role) {
                (May::Anyone, _) => true,
                (May::Roles(_), None) => false,
                (May::Roles(roles), Some(role)) => roles.contains(role),
            };
            let outcome = refused(&reply);
            let as_expected = matches!(
                (allowed, role, outcome),
                (true, _, None) | (false, None, Some("401")) | (false, Some(_), Some("403"))
            );
            if !as_expected {
                wrong.push(format!(
                    "{method} {path} as {name}: expected {}, got {} {}",
                    if allowed { "allowed" } else { "refused" },
                    reply.status,
                    reply.body["type"]
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_a_client_may_not_set_are_refused_on_every_command() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    let admin = admin();
    let line = json!({"product_id": product, "sku": SKU, "quantity": 1});
    let address = crate::commands::address();
    // Each command with a valid body plus one field the server owns.
    let cases: Vec<(Method, String, &String, Value, &str)> = vec![
        (
            Method::POST,
            "/v1/products".into(),
            &admin,
            json!({"title": "T", "brand": "B", "category": ["c"],
                   "skus": [{"sku": "MA-1"}], "status": "published"}),
            "status",
        ),
        (
            Method::POST,
            format!("/v1/products/{product}/skus"),
            &admin,
            json!({"sku": "MA-2", "price": {"minor": 1, "currency": "EUR"}}),
            "price",
        ),
        (
            Method::PUT,
            format!("/v1/products/{product}/prices"),
            &admin,
            json!({"price": {"minor": 100, "currency": "EUR"}, "owner": "someone"}),
            "owner",
        ),
        (
            Method::POST,
            format!("/v1/inventory/{SKU}/receipts"),
            &admin,
            json!({"quantity": 1, "available": 1000000}),
            "available",
        ),
        (
            Method::POST,
            format!("/v1/inventory/{SKU}/adjustments"),
            &admin,
            json!({"delta": 1, "reason": "count", "reserved": 0}),
            "reserved",
        ),
        (
            Method::POST,
            "/v1/carts".into(),
            &alice,
            json!({"currency": "EUR", "owner": {"customer": Uuid::new_v4()}}),
            "owner",
        ),
        (
            Method::POST,
            "/v1/carts".into(),
            &alice,
            json!({"currency": "EUR", "customer_id": Uuid::new_v4()}),
            "customer_id",
        ),
        (
            Method::POST,
            format!("/v1/carts/{cart}/lines"),
            &alice,
            with_field(&line, "unit_price", json!({"minor": 1, "currency": "EUR"})),
            "unit_price",
        ),
        (
            Method::POST,
            format!("/v1/carts/{cart}/lines"),
            &alice,
            with_field(&line, "price", json!(1)),
            "price",
        ),
        (
            Method::PUT,
            format!("/v1/carts/{cart}/lines/{SKU}"),
            &alice,
            json!({"quantity": 2, "line_total": 1}),
            "line_total",
        ),
        (
            Method::POST,
            format!("/v1/carts/{cart}/merge"),
            &alice,
            json!({"guest_cart_id": Uuid::new_v4(), "guest_token": Uuid::new_v4(),
                   "status": "open"}),
            "status",
        ),
        (
            Method::POST,
            format!("/v1/carts/{cart}/checkout"),
            &alice,
            json!({"shipping_address": address, "total": {"minor": 1, "currency": "EUR"}}),
            "total",
        ),
        (
            Method::POST,
            format!("/v1/carts/{cart}/checkout"),
            &alice,
            json!({"shipping_address": address, "totals": {}}),
            "totals",
        ),
        (
            Method::POST,
            format!("/v1/orders/{}/cancel", Uuid::new_v4()),
            &alice,
            json!({"reason": "changed my mind", "status": "refunded"}),
            "status",
        ),
    ];
    let head = app.head().await;
    for (method, path, who, body, field) in cases {
        let reply = app
            .command(method.clone(), &path, who, &new_key(), Some(body))
            .await;
        assert_eq!(
            reply.status.as_u16(),
            422,
            "{method} {path}: {}",
            reply.body
        );
        let problem = reply.problem(422, "unknown-field");
        assert_eq!(problem["field"], field, "{method} {path}");
    }
    assert!(
        app.events_after(head).await.is_empty(),
        "a refused command wrote events"
    );
}

fn with_field(body: &Value, name: &str, value: Value) -> Value {
    let mut body = body.clone();
    body[name] = value;
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_runs_as_the_engine_role_which_cannot_change_events() {
    let app = spawn_app_with(ServerConfig {
        database_role: Some("commerce_engine".into()),
        ..ServerConfig::default()
    })
    .await;
    // The whole shop works under the role: catalog, stock, carts, idempotency keys.
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
    let client = app.store.connection().await.expect("a connection");
    let role: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("current_user")
        .get(0);
    assert_eq!(role, "commerce_engine");
    for sql in [
        "UPDATE events SET data = '{}' WHERE position = 1",
        "DELETE FROM events WHERE position = 1",
        "TRUNCATE events",
    ] {
        let error = client.batch_execute(sql).await.expect_err(sql);
        assert_eq!(
            error.code(),
            Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE),
            "{sql}"
        );
    }
    let verified = app.get("/v1/audit/verify", &auditor()).await;
    assert_eq!(verified.ok(200)["intact"], true, "{}", verified.body);
}
