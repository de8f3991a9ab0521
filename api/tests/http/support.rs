//! The server under test: the real router on a random port of 127.0.0.1, on a
//! database of its own, spoken to over HTTP.

use std::time::Duration;

use api::http::auth::{mint_hs256, Claims};
use api::http::{AppState, Authenticator, Role, ServerConfig};
use eventstore::testing::test_database;
use eventstore::{EventStore, PostgresStore, ScratchDatabase};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use uuid::Uuid;

pub const SECRET: &[u8] = b"integration-tests-secret-of-32-bytes-or-more";
/// The body limit the test server runs with.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;
pub const PROBLEM_TYPE_BASE: &str = "https://commerce.example/problems/";

/// The seeded catalog: one published product with one SKU priced in EUR, in stock.
pub const SKU: &str = "SHOE-42";
pub const PRICE_MINOR: i64 = 1_999;

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub store: PostgresStore,
    /// The server's state (shared with the running server: a search index set on
    /// it is served).
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    // Dropped last: the database goes once the server is gone.
    _db: ScratchDatabase,
}

pub struct Reply {
    pub status: StatusCode,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts this is a problem document with `status` and `code`, and returns it.
    #[track_caller]
    pub fn problem(&self, status: u16, code: &str) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(
            self.content_type, "application/problem+json",
            "{}",
            self.body
        );
        assert_eq!(
            self.body["type"],
            format!("{PROBLEM_TYPE_BASE}{code}"),
            "{}",
            self.body
        );
        assert_eq!(self.body["status"], status);
        assert!(self.body["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(self.body["detail"].as_str().is_some_and(|d| !d.is_empty()));
        &self.body
    }

    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        &self.body
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(ServerConfig {
        body_limit_bytes: BODY_LIMIT_BYTES,
        ..ServerConfig::default()
    })
    .await
}

pub async fn spawn_app_with(config: ServerConfig) -> TestApp {
    let authenticator = Authenticator::new(Some(SECRET), None).expect("a valid secret");
    spawn_app_with_authenticator(config, authenticator).await
}

pub async fn spawn_app_with_authenticator(
    config: ServerConfig,
    authenticator: Authenticator,
) -> TestApp {
    let db = test_database().await.expect("a test database");
    let state = AppState::connect(&db.url, authenticator, config)
        .await
        .expect("the app connects");
    let store = state.store().clone();
    let shared_state = state.clone();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    let base = format!("http://{}", listener.local_addr().expect("an address"));
    let (shutdown, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(api::http::serve(listener, state, async {
        let _ = stop.await;
    }));
    TestApp {
        base,
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("a client"),
        store,
        state: shared_state,
        shutdown: Some(shutdown),
        server: Some(server),
        _db: db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

pub fn token(role: Role, sub: &str) -> String {
    token_expiring(role, sub, chrono::Utc::now().timestamp() + 600)
}

pub fn token_expiring(role: Role, sub: &str, exp: i64) -> String {
    let claims = Claims::new(sub, role, exp.max(0) as u64);
    mint_hs256(SECRET, &claims).expect("a token")
}

pub fn admin() -> String {
    token(Role::Admin, "ops")
}

pub fn auditor() -> String {
    token(Role::Auditor, "audit")
}

pub fn customer(name: &str) -> String {
    token(Role::Customer, name)
}

pub fn new_key() -> String {
    Uuid::new_v4().to_string()
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let headers = response.headers().clone();
        let content_type = headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = response.bytes().await.expect("a body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            content_type,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Reply {
        self.send(self.http.get(self.url(path)).bearer_auth(token))
            .await
    }

    /// A command with a JSON body (or none) and an idempotency key.
    pub async fn command(
        &self,
        method: Method,
        path: &str,
        token: &str,
        key: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self
            .http
            .request(method, self.url(path))
            .bearer_auth(token)
            .header("idempotency-key", key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.command(Method::POST, path, token, &new_key(), Some(body))
            .await
    }

    /// The log's head position, read from the store.
    pub async fn head(&self) -> u64 {
        self.store.head().await.expect("the head")
    }

    /// Events appended after `after`, read over HTTP as an auditor.
    pub async fn events_after(&self, after: u64) -> Vec<Value> {
        let reply = self
            .get(&format!("/v1/events?after={after}&limit=1000"), &auditor())
            .await;
        reply.ok(200)["events"]
            .as_array()
            .expect("an events array")
            .clone()
    }

    /// A published product with [`SKU`] at [`PRICE_MINOR`] EUR and 100 in stock.
    pub async fn seed_catalog(&self) -> Uuid {
        let product_id = Uuid::new_v4();
        let admin = admin();
        self.post(
            "/v1/products",
            &admin,
            json!({
                "product_id": product_id,
                "title": "Running shoe",
                "brand": "Acme",
                "category": ["shoes", "running"],
                "skus": [{"sku": SKU, "attributes": {"size": "42"}}]
            }),
        )
        .await
        .ok(201);
        self.command(
            Method::PUT,
            &format!("/v1/products/{product_id}/prices"),
            &admin,
            &new_key(),
            Some(json!({"price": {"minor": PRICE_MINOR, "currency": "EUR"}})),
        )
        .await
        .ok(202);
        self.command(
            Method::POST,
            &format!("/v1/products/{product_id}/publish"),
            &admin,
            &new_key(),
            None,
        )
        .await
        .ok(202);
        self.post(
            &format!("/v1/inventory/{SKU}/receipts"),
            &admin,
            json!({"quantity": 100}),
        )
        .await
        .ok(202);
        product_id
    }

    /// A cart of `owner` (a customer token) in `currency`.
    pub async fn create_cart(&self, owner: &str, currency: &str) -> Uuid {
        let cart_id = Uuid::new_v4();
        self.post(
            "/v1/carts",
            owner,
            json!({"cart_id": cart_id, "currency": currency}),
        )
        .await
        .ok(201);
        cart_id
    }
}

/// The checkout saga beside a test app.
impl TestApp {
    /// Starts the saga's runner and timer worker on the app's database, paying
    /// through a sandbox provider started in-process (a real HTTP service).
    pub async fn start_saga(&self) -> api::saga::SagaWorkers {
        let args = api::saga::SagaArgs {
            psp_url: None,
            psp_request_timeout_ms: sagas::psp::REQUEST_TIMEOUT_MS,
            reservation_ttl_secs: sagas::config::RESERVATION_TTL_SECS,
            checkout_timeout_secs: sagas::config::CHECKOUT_TIMEOUT_SECS,
        };
        api::saga::SagaWorkers::start(&self.state, &args)
            .await
            .expect("the saga starts")
    }

    /// Puts `quantity` of [`SKU`] in a new cart of `customer`, checks it out to
    /// `shipping_address` with a good card, runs the saga until the checkout has
    /// completed (asserted), and returns the cart's id and the checkout's (which is
    /// the order's too).
    pub async fn complete_checkout(
        &self,
        customer: &str,
        product: Uuid,
        quantity: u32,
        shipping_address: Value,
    ) -> (Uuid, String) {
        let cart = self.create_cart(customer, "EUR").await;
        self.post(
            &format!("/v1/carts/{cart}/lines"),
            customer,
            json!({"product_id": product, "sku": SKU, "quantity": quantity}),
        )
        .await
        .ok(202);
        let placed = self
            .post(
                &format!("/v1/carts/{cart}/checkout"),
                customer,
                json!({"shipping_address": shipping_address, "payment_method": "tok_visa"}),
            )
            .await;
        // The saga places the order under the checkout's id, and pays for it.
        let checkout = placed.ok(202)["ids"]["checkout_id"]
            .as_str()
            .expect("a checkout id")
            .to_owned();
        let saga = self.start_saga().await;
        let done = self
            .wait_for_checkout(&checkout, customer, &["completed", "rejected", "cancelled"])
            .await;
        assert_eq!(done["status"], "completed", "{done}");
        saga.stop().await;
        (cart, checkout)
    }

    /// Waits (up to `CHECKOUT_WAIT_SECS`) until the checkout's status is one of
    /// `statuses`, and returns its view.
    pub async fn wait_for_checkout(
        &self,
        checkout_id: &str,
        token: &str,
        statuses: &[&str],
    ) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(CHECKOUT_WAIT_SECS);
        loop {
            let view = self
                .get(&format!("/v1/checkouts/{checkout_id}"), token)
                .await;
            let view = view.ok(200).clone();
            if statuses.iter().any(|s| view["status"] == *s) {
                return view;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "checkout {checkout_id} is still {} after {CHECKOUT_WAIT_SECS} s: {view}",
                view["status"]
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// How long a test waits for a checkout to reach a status.
pub const CHECKOUT_WAIT_SECS: u64 = 30;
