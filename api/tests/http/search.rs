//! `GET /v1/search` and `/v1/search/suggest`: products appear and disappear within a
//! second of the command, typos and partial words find them, bad parameters are
//! problems, and a process without an index says so.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use projections::search::{SearchConfig, SearchIndex, SearchTask};
use reqwest::Method;
use uuid::Uuid;

use crate::support::{admin, customer, new_key, spawn_app, TestApp};

/// A folder under the system's temp dir, removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn with_search(app: &TestApp) -> (SearchTask, TempDir) {
    let dir = TempDir(std::env::temp_dir().join(format!("commerce-search-{}", Uuid::new_v4())));
    let config = SearchConfig {
        writer_heap_bytes: 32 * 1024 * 1024,
        writer_threads: 1,
        idle_poll_interval: Duration::from_millis(50),
        ..SearchConfig::new(&dir.0)
    };
    let (index, task) = SearchIndex::start(app.store.clone(), config, None)
        .await
        .expect("the search index starts");
    app.state.set_search(index);
    (task, dir)
}

/// Polls the search until `found` says yes, for at most `within`; returns how long
/// it took.
async fn until(
    app: &TestApp,
    path: &str,
    within: Duration,
    found: impl Fn(&serde_json::Value) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let reply = app.get(path, &customer("shopper")).await;
        if reply.status.as_u16() == 200 && found(&reply.body) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{path}: not within {within:?}: {}",
            reply.body
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn titles(body: &serde_json::Value) -> Vec<String> {
    body["hits"]
        .as_array()
        .map(|hits| {
            hits.iter()
                .filter_map(|h| h["title"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_published_product_is_found_within_a_second_and_gone_once_unpublished() {
    let app = spawn_app().await;
    let (task, _dir) = with_search(&app).await;
    let product_id = app.seed_catalog().await;
    let within = Duration::from_secs(1);
    // Misspelt and partial words find it; facets count it.
    until(&app, "/v1/search?q=runing%20sho", within, |b| {
        titles(b) == ["Running shoe"]
    })
    .await;
    // The stock receipt is the seed's last command.
    let in_stock = "/v1/search?q=shoe&currency=EUR&in_stock=true";
    until(&app, in_stock, within, |b| b["total"] == 1).await;
    let reply = app.get(in_stock, &customer("shopper")).await;
    let body = reply.ok(200);
    assert_eq!(body["hits"][0]["product_id"], product_id.to_string());
    assert_eq!(
        body["hits"][0]["price_from"]["EUR"],
        crate::support::PRICE_MINOR
    );
    assert_eq!(
        body["facets"]["brands"][0],
        serde_json::json!({"value": "Acme", "count": 1})
    );
    assert_eq!(
        body["facets"]["categories"][0],
        serde_json::json!({"value": "shoes", "count": 1})
    );
    assert_eq!(body["facets"]["in_stock"], 1);
    let suggest = app
        .get("/v1/search/suggest?q=runn", &customer("shopper"))
        .await;
    assert_eq!(suggest.ok(200)["suggestions"][0]["title"], "Running shoe");

    app.command(
        Method::POST,
        &format!("/v1/products/{product_id}/unpublish"),
        &admin(),
        &new_key(),
        None,
    )
    .await
    .ok(202);
    until(&app, "/v1/search?q=running", within, |b| b["total"] == 0).await;
    app.command(
        Method::POST,
        &format!("/v1/products/{product_id}/publish"),
        &admin(),
        &new_key(),
        None,
    )
    .await
    .ok(202);
    until(&app, "/v1/search?q=running", within, |b| b["total"] == 1).await;
    app.command(
        Method::POST,
        &format!("/v1/products/{product_id}/discontinue"),
        &admin(),
        &new_key(),
        None,
    )
    .await
    .ok(202);
    until(&app, "/v1/search?q=running", within, |b| b["total"] == 0).await;
    task.stop().await;
}

#[tokio::test]
async fn bad_search_parameters_are_problems() {
    let app = spawn_app().await;
    let (task, _dir) = with_search(&app).await;
    app.seed_catalog().await;
    let shopper = customer("shopper");
    for (path, field) in [
        ("/v1/search?q=shoe&sort=cheapest", "sort"),
        ("/v1/search?q=shoe&sort=price_asc", "currency"),
        (
            "/v1/search?currency=EUR&price_min=500&price_max=100",
            "price_min",
        ),
        ("/v1/search?price_min=-1&currency=EUR", "price_min"),
        ("/v1/search?limit=101", "limit"),
        ("/v1/search?limit=0", "limit"),
        ("/v1/search?offset=9990&limit=20", "offset"),
        ("/v1/search?currency=euro", "currency"),
        ("/v1/search?attributes=size", "attributes"),
        ("/v1/search?catgory=shoes", "catgory"),
        ("/v1/search/suggest?q=run&limit=21", "limit"),
    ] {
        let reply = app.get(path, &shopper).await;
        let problem = reply.problem(400, "invalid-parameter");
        assert_eq!(problem["field"], field, "{path}: {problem}");
    }
    // Signed-in roles only, like reading the catalog.
    let anonymous = app.send(app.http.get(app.url("/v1/search?q=shoe"))).await;
    assert_eq!(anonymous.status.as_u16(), 401);
    task.stop().await;
}

#[tokio::test]
async fn a_process_without_a_search_index_answers_503() {
    let app = spawn_app().await;
    let reply = app.get("/v1/search?q=shoe", &customer("shopper")).await;
    reply.problem(503, "search-unavailable");
}
