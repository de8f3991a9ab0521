//! The read-model queries (`/v1/products`, `/v1/inventory`, `/v1/carts`,
//! `/v1/orders`, `/v1/customers/{id}/history`, `/v1/sales/*`) with the projections
//! running beside the server: read-your-writes through `?after=`, each customer
//! confined to their own data, bad parameters refused, and rebuilds started over
//! HTTP.

use std::time::Duration;

use api::http::ServerConfig;
use projections::{Runner, RunnerConfig};
use reqwest::Method;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::support::*;

/// How long a test waits for a rebuild started over HTTP to end.
const REBUILD_WAIT_SECS: u64 = 60;

async fn start_projections(app: &TestApp) -> Runner {
    Runner::start(app.store.clone(), RunnerConfig::default())
        .await
        .expect("the projections start")
}

fn address() -> Value {
    json!({"name": "Ann", "line1": "1 Main St", "city": "Lyon", "postal_code": "69001",
        "country": "FR", "email": "ann@example.com"})
}

fn position(reply: &Reply) -> u64 {
    reply.body["position"].as_u64().expect("a position")
}

fn items(reply: &Reply) -> Vec<Value> {
    reply.body["items"].as_array().expect("items").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_given_the_position_a_command_wrote_sees_that_write() {
    let app = spawn_app().await;
    let projections = start_projections(&app).await;
    let product = app.seed_catalog().await;
    let ann = customer("ann");
    let cart = app.create_cart(&ann, "EUR").await;
    let added = app
        .post(
            &format!("/v1/carts/{cart}/lines"),
            &ann,
            json!({"product_id": product, "sku": SKU, "quantity": 3}),
        )
        .await;
    let wrote = added.ok(202)["position"].as_u64().expect("a position");

    let carts = app.get(&format!("/v1/carts?after={wrote}"), &ann).await;
    carts.ok(200);
    assert_eq!(carts.body["stale"], false, "{}", carts.body);
    assert!(position(&carts) >= wrote, "{}", carts.body);
    let mine = items(&carts);
    assert_eq!(mine.len(), 1, "{}", carts.body);
    assert_eq!(mine[0]["cart_id"], cart.to_string());
    assert_eq!(mine[0]["item_count"], 3);
    assert_eq!(mine[0]["total_minor"], 3 * PRICE_MINOR);

    // The catalog and the stock levels, read after the same position.
    let catalog = app.get(&format!("/v1/products?after={wrote}"), &ann).await;
    catalog.ok(200);
    let products = items(&catalog);
    assert_eq!(products.len(), 1, "{}", catalog.body);
    assert_eq!(products[0]["product_id"], product.to_string());
    assert_eq!(products[0]["price_from"]["EUR"], PRICE_MINOR);
    assert_eq!(products[0]["available"], 100);
    let levels = app
        .get(
            &format!("/v1/inventory?sku={SKU}&after={wrote}"),
            &token(api::http::Role::Analyst, "bi"),
        )
        .await;
    levels.ok(200);
    let levels = items(&levels);
    assert_eq!(levels.len(), 1);
    assert_eq!(levels[0]["on_hand"], 100);
    projections.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_model_behind_the_asked_position_answers_what_it_has_and_says_so() {
    let app = spawn_app_with(ServerConfig {
        read_wait_max: Duration::from_millis(200),
        ..ServerConfig::default()
    })
    .await;
    // No projection runs: the read models stay at position 0.
    let product = app.seed_catalog().await;
    let wrote = app.head().await;
    assert!(wrote > 0);

    let stale = app
        .get(&format!("/v1/products?after={wrote}"), &admin())
        .await;
    stale.ok(200);
    assert_eq!(stale.body["stale"], true, "{}", stale.body);
    assert_eq!(position(&stale), 0);
    assert!(items(&stale).is_empty());
    // Without `after` nothing was asked for, so nothing is stale.
    let current = app.get("/v1/products", &admin()).await;
    assert_eq!(current.ok(200)["stale"], false);

    // Once the catalog catches up, the same query is fresh and holds the product.
    let projections = start_projections(&app).await;
    let fresh = app
        .get(&format!("/v1/products?after={wrote}"), &admin())
        .await;
    let fresh = loop_until_fresh(&app, &format!("/v1/products?after={wrote}"), fresh).await;
    assert_eq!(items(&fresh)[0]["product_id"], product.to_string());
    projections.stop().await;
}

/// Repeats a query (bounded) until it is not stale: the projection started just now
/// may need longer than one wait bound to catch up.
async fn loop_until_fresh(app: &TestApp, path: &str, mut reply: Reply) -> Reply {
    for _ in 0..50 {
        if reply.ok(200)["stale"] == false {
            return reply;
        }
        reply = app.get(path, &admin()).await;
    }
    panic!("{path} is still stale: {}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn customers_read_their_own_carts_orders_and_history_and_staff_read_all() {
    let app = spawn_app().await;
    let projections = start_projections(&app).await;
    let product = app.seed_catalog().await;
    let ann = customer("ann");
    let bob = customer("bob");
    let (_, order) = app.complete_checkout(&ann, product, 2, address()).await;
    let bob_cart = app.create_cart(&bob, "EUR").await;
    let head = app.head().await;

    let orders = app.get(&format!("/v1/orders?after={head}"), &ann).await;
    orders.ok(200);
    assert_eq!(orders.body["stale"], false);
    let ann_orders = items(&orders);
    assert_eq!(ann_orders.len(), 1, "{}", orders.body);
    assert_eq!(ann_orders[0]["order_id"], order);
    assert_eq!(ann_orders[0]["status"], "confirmed");
    assert_eq!(ann_orders[0]["total_minor"], 2 * PRICE_MINOR);
    let ann_id = ann_orders[0]["customer_id"]
        .as_str()
        .expect("a customer id")
        .to_owned();

    // Bob sees none of Ann's orders, and may not ask for them.
    let none = app.get(&format!("/v1/orders?after={head}"), &bob).await;
    assert!(items(&none).is_empty(), "{}", none.body);
    app.get(&format!("/v1/orders?customer_id={ann_id}"), &bob)
        .await
        .problem(403, "forbidden");
    app.get(&format!("/v1/customers/{ann_id}/history"), &bob)
        .await
        .problem(404, "not-found");
    let bob_carts = app.get(&format!("/v1/carts?after={head}"), &bob).await;
    let bob_carts = items(&bob_carts);
    assert_eq!(bob_carts.len(), 1);
    assert_eq!(bob_carts[0]["cart_id"], bob_cart.to_string());
    // A guest has no order history to list.
    app.get(
        "/v1/orders",
        &customer(&format!("guest:{}", Uuid::new_v4())),
    )
    .await
    .problem(403, "forbidden");

    let history = app
        .get(
            &format!("/v1/customers/{ann_id}/history?after={head}"),
            &ann,
        )
        .await;
    // `me` is the caller's own history; staff must name the customer.
    let own = app
        .get(&format!("/v1/customers/me/history?after={head}"), &ann)
        .await;
    assert_eq!(own.ok(200)["customer_id"], ann_id.as_str());
    assert_eq!(own.body["currencies"], history.body["currencies"]);
    app.get("/v1/customers/me/history", &admin())
        .await
        .problem(400, "invalid-parameter");
    let currencies = history.ok(200)["currencies"]
        .as_array()
        .expect("currencies")
        .clone();
    assert_eq!(currencies.len(), 1, "{}", history.body);
    assert_eq!(currencies[0]["currency"], "EUR");
    assert_eq!(currencies[0]["orders_placed"], 1);
    assert_eq!(currencies[0]["orders_confirmed"], 1);
    assert_eq!(currencies[0]["confirmed_total_minor"], 2 * PRICE_MINOR);

    // Staff see every customer's carts and orders; analysts see sales, not orders.
    let all_carts = app
        .get(&format!("/v1/carts?after={head}"), &auditor())
        .await;
    assert_eq!(items(&all_carts).len(), 2, "{}", all_carts.body);
    let confirmed = app
        .get("/v1/orders?status=confirmed&sku=SHOE-42", &admin())
        .await;
    assert_eq!(items(&confirmed).len(), 1);
    let analyst = token(api::http::Role::Analyst, "bi");
    let daily = app
        .get(&format!("/v1/sales/daily?after={head}&sku={SKU}"), &analyst)
        .await;
    let days = items(&daily);
    assert_eq!(days.len(), 1, "{}", daily.body);
    assert_eq!(days[0]["units_sold"], 2);
    assert_eq!(days[0]["revenue_sold_minor"], 2 * PRICE_MINOR);
    let top = app
        .get(&format!("/v1/sales/top-skus?after={head}"), &analyst)
        .await;
    let top = items(&top);
    assert_eq!(top[0]["sku"], SKU);
    assert_eq!(top[0]["units_sold"], 2);
    projections.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_query_parameters_are_refused_by_name() {
    let app = spawn_app().await;
    let admin = admin();
    let cases = [
        ("/v1/orders?limit=0", "limit"),
        ("/v1/orders?limit=501", "limit"),
        ("/v1/orders?offset=100001", "offset"),
        ("/v1/orders?status=lost", "status"),
        ("/v1/orders?sort=cheapest", "sort"),
        ("/v1/orders?placed_from=yesterday", "placed_from"),
        ("/v1/orders?after=-1", "after"),
        ("/v1/carts?colour=red", "colour"),
        ("/v1/products?status=sold", "status"),
        ("/v1/sales/daily?from=2026-02-01&to=2026-01-01", "from"),
        ("/v1/sales/top-skus?sort=day", "sort"),
        ("/v1/customers/not-a-uuid/history", "customer_id"),
    ];
    for (path, field) in cases {
        let reply = app.get(path, &admin).await;
        let problem = reply.problem(400, "invalid-parameter");
        assert_eq!(problem["field"], field, "{path}: {problem}");
    }
    // A customer asks for products that are not on sale.
    app.get("/v1/products?status=draft", &customer("ann"))
        .await
        .problem(403, "forbidden");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_started_over_http_swaps_in_read_models_equal_to_the_live_ones() {
    let app = spawn_app().await;
    let projections = start_projections(&app).await;
    let product = app.seed_catalog().await;
    app.complete_checkout(&customer("ann"), product, 1, address())
        .await;
    let cart = app.create_cart(&customer("bob"), "EUR").await;
    app.post(
        &format!("/v1/carts/{cart}/lines"),
        &customer("bob"),
        json!({"product_id": product, "sku": SKU, "quantity": 2}),
    )
    .await
    .ok(202);
    let head = app.head().await;
    let paths = [
        format!("/v1/products?after={head}"),
        format!("/v1/inventory?after={head}"),
        format!("/v1/carts?after={head}"),
        format!("/v1/orders?after={head}"),
        format!("/v1/sales/daily?after={head}"),
    ];
    let mut live = Vec::new();
    for path in &paths {
        let reply = app.get(path, &admin()).await;
        assert_eq!(reply.ok(200)["stale"], false, "{path}");
        live.push(reply.body["items"].clone());
    }

    // Bad requests start nothing.
    let analyst = token(api::http::Role::Analyst, "bi");
    let unknown = app
        .post(
            "/v1/admin/projections/rebuild",
            &analyst,
            json!({"projections": ["catalog", "wishlists"]}),
        )
        .await;
    assert_eq!(
        unknown.problem(422, "invalid-field")["field"],
        "projections[1]"
    );
    app.post("/v1/admin/projections/rebuild", &analyst, json!({}))
        .await
        .problem(422, "invalid-field");
    app.post(
        "/v1/admin/projections/rebuild",
        &auditor(),
        json!({"all": true}),
    )
    .await
    .problem(403, "forbidden");
    let before = app.get("/v1/admin/projections", &analyst).await;
    assert_eq!(before.ok(200)["rebuild"], Value::Null);

    let started = app
        .command(
            Method::POST,
            "/v1/admin/projections/rebuild",
            &analyst,
            &new_key(),
            Some(json!({"all": true, "fresh": true})),
        )
        .await;
    started.ok(202);
    assert_eq!(started.body["state"], "running");
    assert_eq!(
        started.body["projections"].as_array().map(Vec::len),
        Some(5)
    );
    assert_eq!(
        started
            .headers
            .get("location")
            .and_then(|v| v.to_str().ok()),
        Some("/v1/admin/projections")
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(REBUILD_WAIT_SECS);
    let job = loop {
        let status = app.get("/v1/admin/projections", &analyst).await;
        let job = status.ok(200)["rebuild"].clone();
        if job["state"] != "running" {
            break job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "rebuild still running: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(job["state"], "done", "{job}");
    assert_eq!(job["id"], started.body["id"]);
    assert_eq!(job["resumed_from"], 0);
    assert!(
        job["position"].as_u64().expect("a position") >= head,
        "{job}"
    );
    assert_eq!(job["requested_by"], "analyst:bi");

    for (path, before) in paths.iter().zip(&live) {
        let reply = app.get(path, &admin()).await;
        assert_eq!(&reply.ok(200)["items"], before, "{path} after the rebuild");
    }
    // The trail holds the rebuild, with who asked for it.
    let trail = app.get("/v1/audit/trail", &auditor()).await;
    let entries = trail.ok(200)["entries"]
        .as_array()
        .expect("entries")
        .clone();
    assert!(
        entries
            .iter()
            .any(|e| e["action"] == "projections.rebuild" && e["actor"] == "analyst:bi"),
        "{}",
        trail.body
    );
    // The projections' gauges are scraped with the status.
    let metrics = app.send(app.http.get(app.url("/metrics"))).await;
    let text = metrics.body.as_str().expect("text").to_owned();
    assert!(
        text.contains("commerce_projection_lag_events{projection=\"orders\"}"),
        "{text}"
    );
    projections.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_query_past_the_read_statement_timeout_is_cancelled_and_answered_503() {
    let app = spawn_app_with(ServerConfig {
        read_statement_timeout: Duration::from_millis(100),
        ..ServerConfig::default()
    })
    .await;
    // 300,000 products written straight into the catalog's table (no log behind
    // them: this is about the query alone). A title substring that no product has
    // reads every one of them, and every title's 200-odd characters: short titles
    // were all read within the bound on a fast machine.
    let client = app.store.connection().await.expect("a connection");
    client
        .batch_execute(
            "INSERT INTO read_models.catalog_products SELECT gen_random_uuid(), \
             'Product ' || i || ' ' || repeat('trail running shoe, ', 10), '', \
             'Brand ' || (i % 50), ARRAY['Shoes'], 'published', \
             '{}', 1, now(), now(), i FROM generate_series(1, 300000) i; \
             ANALYZE read_models.catalog_products",
        )
        .await
        .expect("the products");
    let broad = app.get("/v1/products?text=no-such-title", &admin()).await;
    let problem = broad.problem(503, "query-timeout");
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("narrow")),
        "{problem}"
    );
    // A query an index serves answers within the same bound (a category probe of
    // the GIN index finds no product without reading any).
    let narrow = app.get("/v1/products?category=Boots", &admin()).await;
    assert_eq!(narrow.ok(200)["items"], json!([]), "{}", narrow.body);
}
