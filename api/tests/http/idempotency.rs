//! Idempotency keys as payment APIs keep them: scoped to the principal, one
//! execution while a retry races the first request, and expiry with a sweep.

use std::time::Duration;

use api::http::ServerConfig;
use reqwest::Method;
use serde_json::json;

use crate::support::*;

const REPLAYED: &str = "idempotent-replayed";

/// A server whose keys expire after a second, swept every `purge_every`.
async fn spawn_app_with_short_keys(purge_every: Duration) -> TestApp {
    spawn_app_with(ServerConfig {
        idempotency_key_ttl: Duration::from_secs(1),
        idempotency_purge_every: purge_every,
        ..ServerConfig::default()
    })
    .await
}

/// Alice's first request under a new key, a cart in EUR: her token, the key, the
/// body and the cart.
async fn alices_first_cart(
    app: &TestApp,
) -> (String, String, serde_json::Value, serde_json::Value) {
    let alice = customer("alice");
    let key = new_key();
    let body = json!({"currency": "EUR"});
    let first = app
        .command(Method::POST, "/v1/carts", &alice, &key, Some(body.clone()))
        .await;
    let cart = first.ok(201)["ids"]["cart_id"].clone();
    (alice, key, body, cart)
}

/// Retries a cart's creation with `key` and asserts that the first response is
/// replayed: the cart it names.
async fn cart_replayed(
    app: &TestApp,
    who: &str,
    key: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let retry = app
        .command(Method::POST, "/v1/carts", who, key, Some(body))
        .await;
    assert_eq!(
        retry.headers.get(REPLAYED).map(|v| v.as_bytes()),
        Some(&b"true"[..]),
        "{}",
        retry.body
    );
    retry.ok(201)["ids"]["cart_id"].clone()
}

#[tokio::test]
async fn the_same_key_from_another_customer_is_another_request() {
    let app = spawn_app().await;
    let bob = customer("bob");
    let (alice, key, body, alices_cart) = alices_first_cart(&app).await;
    let head = app.head().await;

    let bobs = app
        .command(Method::POST, "/v1/carts", &bob, &key, Some(body.clone()))
        .await;
    assert!(bobs.headers.get(REPLAYED).is_none(), "bob got a replay");
    let bobs_cart = bobs.ok(201)["ids"]["cart_id"].clone();
    assert_ne!(bobs_cart, alices_cart, "bob was answered with alice's cart");
    assert_eq!(
        app.events_after(head).await.len(),
        1,
        "bob's cart was written"
    );
    // Bob cannot read alice's cart through the shared key either.
    app.get(
        &format!("/v1/carts/{}", alices_cart.as_str().unwrap()),
        &bob,
    )
    .await
    .problem(404, "not-found");

    // Each retry gets its own principal's first response.
    assert_eq!(cart_replayed(&app, &alice, &key, body).await, alices_cart);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_while_the_first_request_runs_is_a_409_and_runs_nothing() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    let path = format!("/v1/carts/{cart}/lines");
    let body = json!({"product_id": product, "sku": SKU, "quantity": 1});
    // Concurrent copies of one request: one runs, the others see it running (409)
    // or, once it is done, its response. Repeated until a copy met it running.
    let mut saw_in_flight = false;
    for _round in 0..20 {
        let key = new_key();
        let head = app.head().await;
        let copies =
            (0..16).map(|_| app.command(Method::POST, &path, &alice, &key, Some(body.clone())));
        let replies = futures::future::join_all(copies).await;
        for reply in &replies {
            match reply.status.as_u16() {
                202 => {}
                409 => {
                    reply.problem(409, "idempotency-key-in-flight");
                    assert_eq!(reply.headers["retry-after"], "1");
                    assert_eq!(reply.body["field"], "Idempotency-Key");
                    saw_in_flight = true;
                }
                other => panic!("unexpected {other}: {}", reply.body),
            }
        }
        assert!(replies.iter().any(|r| r.status.as_u16() == 202));
        let written = app.events_after(head).await;
        assert_eq!(written.len(), 1, "the command ran more than once");
        if saw_in_flight {
            break;
        }
    }
    assert!(saw_in_flight, "no copy ever met the first one running");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_expire_after_the_ttl_and_the_sweep_deletes_them_in_batches() {
    let app = spawn_app_with_short_keys(Duration::from_millis(200)).await;
    let client = app.store.connection().await.expect("a connection");
    // Many expired rows of other principals: more than one batch of the sweep.
    client
        .execute(
            "INSERT INTO api_idempotency_keys \
                 (key_id, principal, key, fingerprint, status, response, created_at) \
             SELECT gen_random_uuid(), 'customer:old', i::text, '\\x00', 201, '{}', \
                    now() - interval '2 days' \
             FROM generate_series(1, 12000) AS i",
            &[],
        )
        .await
        .expect("old keys");

    let (alice, key, body, _) = alices_first_cart(&app).await;
    let retry = app
        .command(Method::POST, "/v1/carts", &alice, &key, Some(body.clone()))
        .await;
    assert_eq!(retry.headers[REPLAYED], "true");
    let head = app.head().await;

    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Expired: not answered from the table any more; the command id derived from
    // the key still keeps the log from writing the cart twice.
    let late = app
        .command(Method::POST, "/v1/carts", &alice, &key, Some(body))
        .await;
    assert!(late.headers.get(REPLAYED).is_none(), "{}", late.body);
    assert_eq!(
        app.head().await,
        head,
        "the expired key ran the command again"
    );

    // The sweep empties the table of expired rows, batch after batch.
    count_reaches(
        &client,
        "SELECT count(*) FROM api_idempotency_keys",
        &[],
        0,
        "expired keys are still there",
    )
    .await;
}

/// Waits (up to 10 s) until `sql`, a count, gives `expected`.
async fn count_reaches(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    expected: i64,
    failure: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let count: i64 = client.query_one(sql, params).await.expect("count").get(0);
        if count == expected {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{failure}: {count}, not {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the first response to `key` is kept in the table (`recent`: kept in
/// the last second).
async fn kept(client: &tokio_postgres::Client, key: &str, recent: bool) {
    count_reaches(
        client,
        "SELECT count(*) FROM api_idempotency_keys WHERE key = $1 \
         AND (NOT $2 OR created_at > now() - interval '1 second')",
        &[&key, &recent],
        1,
        "the response was never kept",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_tables_connections_are_replaced_when_lost_and_kept_responses_still_answer() {
    let app = spawn_app().await;
    let (alice, key, body, cart) = alices_first_cart(&app).await;
    let mut client = app.store.connection().await.expect("a connection");
    let client: &mut tokio_postgres::Client = &mut client;
    kept(client, &key, false).await;

    // Every other connection to the database goes: the lookups' and the records'
    // own among them.
    let ended: i64 = client
        .query_one(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()) AS t",
            &[],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(ended >= 2, "only {ended} connections were ended");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The kept response is looked up through a new connection.
    assert_eq!(cart_replayed(&app, &alice, &key, body.clone()).await, cart);

    // A new key's response is kept through a new connection too, and answers its
    // retry.
    let other = new_key();
    let second = app
        .command(
            Method::POST,
            "/v1/carts",
            &alice,
            &other,
            Some(body.clone()),
        )
        .await;
    let second_cart = second.ok(201)["ids"]["cart_id"].clone();
    assert_ne!(second_cart, cart);
    kept(client, &other, false).await;
    assert_eq!(cart_replayed(&app, &alice, &other, body).await, second_cart);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_whose_row_expired_but_was_not_swept_is_kept_again_for_its_next_request() {
    let app = spawn_app_with_short_keys(Duration::from_secs(3_600)).await;
    let mut client = app.store.connection().await.expect("a connection");
    let client: &mut tokio_postgres::Client = &mut client;
    let (alice, key, body, _) = alices_first_cart(&app).await;
    kept(client, &key, false).await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;

    // Expired: the request runs again, and its response replaces the old row.
    let late = app
        .command(Method::POST, "/v1/carts", &alice, &key, Some(body.clone()))
        .await;
    assert!(late.headers.get(REPLAYED).is_none(), "{}", late.body);
    let cart = late.ok(201)["ids"]["cart_id"].clone();
    kept(client, &key, true).await;
    assert_eq!(cart_replayed(&app, &alice, &key, body).await, cart);
}

#[tokio::test]
async fn migration_2_gives_the_rows_before_it_the_ids_the_server_looks_them_up_by() {
    use api::http::idempotency::{IdempotencyKeys, API_MIGRATIONS};
    let db = eventstore::testing::test_database()
        .await
        .expect("a test database");
    let (mut client, connection) = tokio_postgres::connect(&db.url, tokio_postgres::NoTls)
        .await
        .expect("a connection");
    tokio::spawn(connection);
    eventstore::migrate(&mut client, "api", &API_MIGRATIONS[..1])
        .await
        .expect("migration 1");
    let rows = [("customer:alice", "k-1"), ("customer:bøb", "clé 2")];
    for (principal, key) in rows {
        client
            .execute(
                "INSERT INTO api_idempotency_keys (principal, key, fingerprint, status, response) \
                 VALUES ($1, $2, '\\x00', 201, '{\"ids\": {}}')",
                &[&principal, &key],
            )
            .await
            .expect("a row of migration 1");
    }
    eventstore::migrate(&mut client, "api", API_MIGRATIONS)
        .await
        .expect("migration 2");
    for (principal, key) in rows {
        let row = client
            .query_one(
                "SELECT key_id, pg_typeof(response)::text, response::text \
                 FROM api_idempotency_keys WHERE principal = $1 AND key = $2",
                &[&principal, &key],
            )
            .await
            .expect("the row");
        let id: uuid::Uuid = row.get(0);
        assert_eq!(
            id,
            IdempotencyKeys::key_id(principal, key),
            "{principal} {key}"
        );
        assert_eq!(row.get::<_, String>(1), "json");
        assert_eq!(row.get::<_, String>(2), "{\"ids\": {}}");
    }
}

/// Adding a line runs without looking its key up first: its append carries the key,
/// and the event store refuses it if the key has a kept answer. Here another process
/// answered the key (its row is copied from an answer of this one to the same
/// request under another key): the request gets that answer and writes nothing. A
/// key kept for another request gets the 422, and writes nothing either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_whose_key_another_process_answered_writes_nothing() {
    let app = spawn_app().await;
    let product = app.seed_catalog().await;
    let alice = customer("alice");
    let cart = app.create_cart(&alice, "EUR").await;
    let path = format!("/v1/carts/{cart}/lines");
    let body = json!({"product_id": product, "sku": SKU, "quantity": 1});
    let mut client = app.store.connection().await.expect("a connection");
    let client: &mut tokio_postgres::Client = &mut client;

    let first_key = new_key();
    let first = app
        .command(Method::POST, &path, &alice, &first_key, Some(body.clone()))
        .await;
    let answer = first.ok(202).clone();
    kept(client, &first_key, false).await;

    let answered_elsewhere = new_key();
    let key_id =
        api::http::idempotency::IdempotencyKeys::key_id("customer:alice", &answered_elsewhere);
    let copied = client
        .execute(
            "INSERT INTO api_idempotency_keys (key_id, principal, key, fingerprint, status, response) \
             SELECT $1, principal, $2, fingerprint, status, response FROM api_idempotency_keys \
             WHERE key = $3",
            &[&key_id, &answered_elsewhere, &first_key],
        )
        .await
        .expect("the other process's answer");
    assert_eq!(copied, 1);
    let reused_elsewhere = new_key();
    let key_id =
        api::http::idempotency::IdempotencyKeys::key_id("customer:alice", &reused_elsewhere);
    client
        .execute(
            "INSERT INTO api_idempotency_keys (key_id, principal, key, fingerprint, status, response) \
             VALUES ($1, 'customer:alice', $2, '\\x00', 202, '{\"ids\": {}}')",
            &[&key_id, &reused_elsewhere],
        )
        .await
        .expect("an answer to another request");
    let head = app.head().await;

    let retry = app
        .command(
            Method::POST,
            &path,
            &alice,
            &answered_elsewhere,
            Some(body.clone()),
        )
        .await;
    assert_eq!(retry.ok(202), &answer);
    assert_eq!(retry.headers[REPLAYED], "true");
    app.command(Method::POST, &path, &alice, &reused_elsewhere, Some(body))
        .await
        .problem(422, "idempotency-key-reused");
    assert_eq!(app.head().await, head, "a request answered before wrote");
    let view = app.get(&format!("/v1/carts/{cart}"), &alice).await;
    assert_eq!(view.ok(200)["lines"][0]["quantity"], 1);
}
