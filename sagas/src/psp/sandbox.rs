//! The sandbox payment provider: a card processor's API over real HTTP, with an
//! in-memory ledger ([`super::ledger`]) and test tokens that approve, decline, hang,
//! fail with 503, or act and then drop the connection before answering.
//!
//! It serves its own hyper connections (axum routes inside) rather than
//! `axum::serve`, so a handler can close the very connection its request came on
//! without writing an answer: that is what a lost response looks like to a client.
//!
//! `commerce psp` runs it as a service; tests start it in-process on port 0:
//!
//! ```no_run
//! # async fn example() -> std::io::Result<()> {
//! let sandbox = sagas::psp::Sandbox::start("127.0.0.1:0".parse().unwrap()).await?;
//! let url = sandbox.url(); // "http://127.0.0.1:PORT"
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use super::ledger::{Answer, Decision, Ledger, Operation, TestToken};
use super::webhook;
use super::wire::{
    AuthorizationList, AuthorizationView, CreateAuthorization, CreateCapture, CreateRefund,
    WebhookEvent, IDEMPOTENCY_KEY_HEADER, IDEMPOTENCY_KEY_MAX_BYTES, REPLAYED_HEADER,
};

/// Default address of `commerce psp`.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Default share of `tok_flaky` requests answered 503.
pub const FLAKY_FAIL_RATE: f64 = 0.5;
/// Default time `tok_hang` holds its answer, in milliseconds: well past the
/// client's default per-call timeout.
pub const HANG_MS: u64 = 30_000;
/// Default bound of the ledger: authorizations plus kept answers.
pub const LEDGER_MAX_ENTRIES: usize = 1_000_000;
/// Largest request body, in bytes.
pub const BODY_LIMIT_BYTES: usize = 16 * 1024;
/// Most connections served at once; further ones wait to be accepted.
pub const CONNECTIONS_MAX: usize = 1_024;
/// Most webhook events waiting to be sent; past it new ones are dropped (and
/// counted), as a real provider's delivery backlog would drop nothing but a sandbox
/// must stay bounded.
pub const WEBHOOK_QUEUE_MAX: usize = 10_000;
/// Attempts to deliver one webhook event.
pub const WEBHOOK_MAX_ATTEMPTS: u32 = 5;
/// Time one webhook delivery may take, in milliseconds.
pub const WEBHOOK_TIMEOUT_MS: u64 = 5_000;
/// Wait before the first redelivery of a webhook event, doubled each time, in ms.
pub const WEBHOOK_BACKOFF_MS: u64 = 200;
/// Pause after a failed accept (e.g. out of file descriptors), in milliseconds.
const ACCEPT_BACKOFF_MS: u64 = 50;

/// Where and how the sandbox sends signed provider events.
#[derive(Clone)]
pub struct WebhookTarget {
    pub url: String,
    pub secret: Vec<u8>,
    pub max_attempts: u32,
    pub timeout_ms: u64,
    pub backoff_ms: u64,
}

impl WebhookTarget {
    pub fn new(url: impl Into<String>, secret: impl Into<Vec<u8>>) -> Self {
        WebhookTarget {
            url: url.into(),
            secret: secret.into(),
            max_attempts: WEBHOOK_MAX_ATTEMPTS,
            timeout_ms: WEBHOOK_TIMEOUT_MS,
            backoff_ms: WEBHOOK_BACKOFF_MS,
        }
    }
}

impl std::fmt::Debug for WebhookTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookTarget")
            .field("url", &self.url)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// The sandbox's switches.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Share (0 to 1) of every POST answered 503 before anything is done.
    pub fail_rate: f64,
    /// Share (0 to 1) of requests on `tok_flaky` answered 503 before anything is done.
    pub flaky_fail_rate: f64,
    /// How long `tok_hang` holds its answer, in milliseconds.
    pub hang_ms: u64,
    /// Seed of the fault injection's random numbers; the same seed and the same
    /// sequence of requests fail the same ones.
    pub seed: u64,
    pub ledger_max_entries: usize,
    pub body_limit_bytes: usize,
    /// Send signed events here, if set.
    pub webhook: Option<WebhookTarget>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            fail_rate: 0.0,
            flaky_fail_rate: FLAKY_FAIL_RATE,
            hang_ms: HANG_MS,
            seed: 0x5eed,
            ledger_max_entries: LEDGER_MAX_ENTRIES,
            body_limit_bytes: BODY_LIMIT_BYTES,
            webhook: None,
        }
    }
}

impl SandboxConfig {
    fn check(&self) -> std::io::Result<()> {
        let rate_ok = |rate: f64| (0.0..=1.0).contains(&rate);
        if !rate_ok(self.fail_rate) || !rate_ok(self.flaky_fail_rate) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "fail rates must be between 0 and 1",
            ));
        }
        Ok(())
    }
}

/// What the sandbox has done, for tests and the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SandboxStats {
    /// HTTP requests received, of any kind.
    pub requests: u64,
    /// Requests answered with an injected 503.
    pub injected_unavailable: u64,
    /// Connections dropped after carrying a request out (`tok_lost_response`).
    pub dropped_responses: u64,
    /// Answers held by `tok_hang`.
    pub hung: u64,
    /// Answers replayed for a repeated idempotency key.
    pub replayed: u64,
    pub webhooks_delivered: u64,
    /// Events given up on after every attempt, or dropped from a full queue.
    pub webhooks_failed: u64,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    injected_unavailable: AtomicU64,
    dropped_responses: AtomicU64,
    hung: AtomicU64,
    replayed: AtomicU64,
    webhooks_delivered: AtomicU64,
    webhooks_failed: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> SandboxStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SandboxStats {
            requests: get(&self.requests),
            injected_unavailable: get(&self.injected_unavailable),
            dropped_responses: get(&self.dropped_responses),
            hung: get(&self.hung),
            replayed: get(&self.replayed),
            webhooks_delivered: get(&self.webhooks_delivered),
            webhooks_failed: get(&self.webhooks_failed),
        }
    }
}

/// The ledger and the fault injection's random numbers, under one lock.
struct Books {
    ledger: Ledger,
    rng: StdRng,
}

struct Shared {
    books: Mutex<Books>,
    config: SandboxConfig,
    counters: Counters,
    webhooks: Option<mpsc::Sender<WebhookEvent>>,
    shutdown: watch::Receiver<bool>,
}

impl Shared {
    fn books(&self) -> MutexGuard<'_, Books> {
        // The ledger is changed only by whole decisions that cannot panic halfway
        // (their debug assertions aside), so a poisoned lock still holds good books.
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running sandbox. Dropping it stops it; [`Sandbox::shutdown`] also waits.
pub struct Sandbox {
    address: SocketAddr,
    url: String,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Sandbox {
    /// Starts a sandbox with the default switches on `address` (port 0 picks one).
    pub async fn start(address: SocketAddr) -> std::io::Result<Sandbox> {
        Self::start_with(address, SandboxConfig::default()).await
    }

    pub async fn start_with(
        address: SocketAddr,
        config: SandboxConfig,
    ) -> std::io::Result<Sandbox> {
        config.check()?;
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let (webhooks, webhook_queue) = match &config.webhook {
            Some(_) => {
                let (sender, queue) = mpsc::channel(WEBHOOK_QUEUE_MAX);
                (Some(sender), Some(queue))
            }
            None => (None, None),
        };
        let shared = Arc::new(Shared {
            books: Mutex::new(Books {
                ledger: Ledger::new(config.ledger_max_entries),
                rng: StdRng::seed_from_u64(config.seed),
            }),
            config: config.clone(),
            counters: Counters::default(),
            webhooks,
            shutdown: shutdown_rx.clone(),
        });
        if let (Some(target), Some(queue)) = (config.webhook, webhook_queue) {
            tasks.push(tokio::spawn(send_webhooks(
                target,
                queue,
                shared.clone(),
                shutdown_rx.clone(),
            )));
        }
        tasks.push(tokio::spawn(accept(
            listener,
            routes(shared.clone()),
            shared.clone(),
            shutdown_rx,
        )));
        tracing::info!(%address, "sandbox payment provider listening");
        Ok(Sandbox {
            address,
            url: format!("http://{address}"),
            shared,
            shutdown,
            tasks,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    /// `http://host:port`, the base URL for [`super::HttpGatewayConfig`].
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn stats(&self) -> SandboxStats {
        self.shared.counters.snapshot()
    }

    /// The provider's view of an authorization (as `GET /v1/authorizations/{id}`).
    pub fn authorization(&self, id: &str) -> Option<AuthorizationView> {
        self.shared.books().ledger.authorization(id)
    }

    /// Every authorization made with merchant reference `reference`.
    pub fn authorizations_for(&self, reference: &str) -> Vec<AuthorizationView> {
        self.shared.books().ledger.by_reference(reference)
    }

    /// Stops accepting, ends open connections (hanging answers included) and the
    /// webhook sender, and waits for them.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

fn routes(shared: Arc<Shared>) -> Router {
    let body_limit = shared.config.body_limit_bytes;
    Router::new()
        .route(
            "/v1/authorizations",
            post(create_authorization).get(list_authorizations),
        )
        .route("/v1/authorizations/{id}", get(get_authorization))
        .route("/v1/authorizations/{id}/capture", post(capture))
        .route("/v1/authorizations/{id}/void", post(void))
        .route("/v1/refunds", post(refund))
        .fallback(|| async { answer(Answer::error(404, "not_found", "no such route")) })
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(shared)
}

/// Closes the connection a request came on, before anything is written back.
#[derive(Clone)]
struct ConnectionKill(Arc<Mutex<Option<oneshot::Sender<()>>>>);

impl ConnectionKill {
    fn fire(&self) {
        let sender = self.0.lock().unwrap_or_else(PoisonError::into_inner).take();
        if let Some(sender) = sender {
            let _ = sender.send(());
        }
    }
}

async fn accept(
    listener: TcpListener,
    router: Router,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    loop {
        if connections.len() >= CONNECTIONS_MAX {
            tokio::select! {
                _ = connections.join_next() => continue,
                _ = shutdown.changed() => break,
            }
        }
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    connections.spawn(serve_connection(stream, router.clone(), shared.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sandbox cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = shutdown.changed() => break,
        }
    }
    connections.shutdown().await;
}

async fn serve_connection(stream: TcpStream, router: Router, shared: Arc<Shared>) {
    let (kill, killed) = oneshot::channel();
    let kill = ConnectionKill(Arc::new(Mutex::new(Some(kill))));
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        Counters::bump(&shared.counters.requests);
        request.extensions_mut().insert(kill.clone());
        let mut router = router.clone();
        async move {
            let response: Result<Response, Infallible> =
                tower_service::Service::call(&mut router, request.map(Body::new)).await;
            response
        }
    });
    let connection =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        served = connection => {
            if let Err(e) = served {
                tracing::debug!(error = %e, "sandbox connection ended with an error");
            }
        }
        // Dropping the connection closes the socket with nothing written back.
        Ok(()) = killed => {}
    }
}

fn answer(answer: Answer) -> Response {
    let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(answer.body)).into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Result<String, Answer> {
    let key = headers.get(IDEMPOTENCY_KEY_HEADER).ok_or_else(|| {
        Answer::error(
            400,
            "idempotency_key_missing",
            "every POST needs an Idempotency-Key header",
        )
    })?;
    match key.to_str() {
        Ok(key) if !key.is_empty() && key.len() <= IDEMPOTENCY_KEY_MAX_BYTES => Ok(key.to_owned()),
        _ => Err(Answer::error(
            400,
            "idempotency_key_invalid",
            format!(
                "an Idempotency-Key is 1 to {IDEMPOTENCY_KEY_MAX_BYTES} visible ASCII characters"
            ),
        )),
    }
}

/// A request body: over the size limit, or not read in full, it is refused as such.
type RequestBody = Result<Bytes, BytesRejection>;

fn read_body(body: RequestBody) -> Result<Bytes, Answer> {
    body.map_err(|rejection| {
        let status = rejection.status().as_u16();
        let code = if status == 413 {
            "body_too_large"
        } else {
            "invalid_request"
        };
        Answer::error(status, code, rejection.body_text())
    })
}

fn parse_body<T: DeserializeOwned>(body: RequestBody) -> Result<T, Answer> {
    let body = read_body(body)?;
    serde_json::from_slice(&body).map_err(|e| {
        Answer::error(
            400,
            "invalid_request",
            format!("the body is not a valid request: {e}"),
        )
    })
}

async fn create_authorization(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let operation = parse_body::<CreateAuthorization>(body).map(Operation::Authorize);
    execute(shared, kill, &headers, operation).await
}

async fn capture(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let operation = parse_body::<CreateCapture>(body).map(|body| Operation::Capture {
        authorization: id,
        body,
    });
    execute(shared, kill, &headers, operation).await
}

async fn void(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    // A void takes no fields; an empty body or `{}` both do.
    let operation = read_body(body)
        .and_then(|body| {
            if body.iter().all(u8::is_ascii_whitespace) {
                Ok(())
            } else {
                parse_body::<EmptyBody>(Ok(body)).map(|_| ())
            }
        })
        .map(|()| Operation::Void { authorization: id });
    execute(shared, kill, &headers, operation).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptyBody {}

async fn refund(
    State(shared): State<Arc<Shared>>,
    Extension(kill): Extension<ConnectionKill>,
    headers: HeaderMap,
    body: RequestBody,
) -> Response {
    let operation = parse_body::<CreateRefund>(body).map(Operation::Refund);
    execute(shared, kill, &headers, operation).await
}

async fn get_authorization(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match shared.books().ledger.authorization(&id) {
        Some(view) => answer(Answer {
            status: 200,
            body: serde_json::to_value(view).unwrap_or_default(),
        }),
        None => answer(Answer::error(
            404,
            "authorization_not_found",
            format!("no authorization {id:?}"),
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    reference: String,
}

async fn list_authorizations(
    State(shared): State<Arc<Shared>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return answer(Answer::error(
            400,
            "invalid_request",
            "list authorizations with ?reference=…",
        ));
    };
    let data = shared.books().ledger.by_reference(&query.reference);
    answer(Answer {
        status: 200,
        body: serde_json::to_value(AuthorizationList { data }).unwrap_or_default(),
    })
}

/// What to do with an answer on its way out.
enum Delivery {
    Now,
    Hang,
    Drop,
}

async fn execute(
    shared: Arc<Shared>,
    kill: ConnectionKill,
    headers: &HeaderMap,
    operation: Result<Operation, Answer>,
) -> Response {
    let prepared = idempotency_key(headers).and_then(|key| Ok((key, operation?)));
    let (key, operation) = match prepared {
        Ok(prepared) => prepared,
        Err(refusal) => return answer(refusal),
    };
    let now = chrono::Utc::now().timestamp();
    let config = &shared.config;
    let decision = {
        let mut books = shared.books();
        let Books { ledger, rng } = &mut *books;
        ledger.execute(&key, operation, now, |token| {
            let rate = match token {
                Some(TestToken::Flaky) => config.fail_rate.max(config.flaky_fail_rate),
                _ => config.fail_rate,
            };
            rate > 0.0 && rng.random_bool(rate)
        })
    };
    let (reply, delivery, replayed) = match decision {
        Decision::Fresh {
            answer,
            token,
            authorize,
            events,
        } => {
            for event in events {
                enqueue_webhook(&shared, event);
            }
            let delivery = match token {
                Some(TestToken::Hang) if authorize => Delivery::Hang,
                Some(TestToken::LostResponse) => Delivery::Drop,
                _ => Delivery::Now,
            };
            (answer, delivery, false)
        }
        Decision::Replayed {
            answer,
            token,
            authorize,
        } => {
            Counters::bump(&shared.counters.replayed);
            let delivery = match token {
                Some(TestToken::Hang) if authorize => Delivery::Hang,
                _ => Delivery::Now,
            };
            (answer, delivery, true)
        }
        Decision::KeyReused => (
            Answer::error(
                422,
                "idempotency_key_reused",
                "this Idempotency-Key was used with a different request",
            ),
            Delivery::Now,
            false,
        ),
        Decision::Unavailable => {
            Counters::bump(&shared.counters.injected_unavailable);
            (
                Answer::error(503, "temporarily_unavailable", "try again later"),
                Delivery::Now,
                false,
            )
        }
        Decision::Full => (
            Answer::error(
                507,
                "sandbox_full",
                "the sandbox's ledger is full; restart it",
            ),
            Delivery::Now,
            false,
        ),
    };
    match delivery {
        Delivery::Now => {}
        Delivery::Hang => {
            Counters::bump(&shared.counters.hung);
            let mut shutdown = shared.shutdown.clone();
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(config.hang_ms)) => {}
                _ = shutdown.changed() => {}
            }
        }
        Delivery::Drop => {
            Counters::bump(&shared.counters.dropped_responses);
            kill.fire();
            // The connection task drops this future with the connection.
            std::future::pending::<()>().await;
        }
    }
    let mut response = answer(reply);
    if replayed {
        response
            .headers_mut()
            .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    }
    response
}

fn enqueue_webhook(shared: &Shared, event: WebhookEvent) {
    let Some(sender) = &shared.webhooks else {
        return;
    };
    if sender.try_send(event).is_err() {
        Counters::bump(&shared.counters.webhooks_failed);
        tracing::warn!("sandbox webhook queue is full; event dropped");
    }
}

/// Delivers events one at a time, at least once: an event whose delivery failed is
/// retried with doubling pauses up to the target's attempts, then given up.
async fn send_webhooks(
    target: WebhookTarget,
    mut queue: mpsc::Receiver<WebhookEvent>,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match reqwest::Client::builder()
        .timeout(Duration::from_millis(target.timeout_ms))
        .build()
    {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(error = %e, "sandbox cannot build its webhook client");
            return;
        }
    };
    loop {
        let event = tokio::select! {
            event = queue.recv() => match event {
                Some(event) => event,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let delivered = tokio::select! {
            delivered = deliver(&client, &target, &event) => delivered,
            _ = shutdown.changed() => return,
        };
        let counter = if delivered {
            &shared.counters.webhooks_delivered
        } else {
            tracing::warn!(event_id = %event.id, "sandbox gave up delivering a webhook");
            &shared.counters.webhooks_failed
        };
        Counters::bump(counter);
    }
}

async fn deliver(client: &reqwest::Client, target: &WebhookTarget, event: &WebhookEvent) -> bool {
    let Ok(body) = serde_json::to_vec(event) else {
        return false;
    };
    let mut pause = Duration::from_millis(target.backoff_ms);
    for attempt in 1..=target.max_attempts.max(1) {
        // Signed afresh on each attempt: the timestamp says when it was sent.
        let signature = webhook::sign(&target.secret, chrono::Utc::now().timestamp(), &body);
        let sent = client
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(webhook::SIGNATURE_HEADER, signature)
            .body(body.clone())
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => return true,
            Ok(response) => {
                tracing::debug!(
                    attempt,
                    status = response.status().as_u16(),
                    "webhook refused"
                )
            }
            Err(e) => tracing::debug!(attempt, error = %e, "webhook not delivered"),
        }
        if attempt < target.max_attempts {
            tokio::time::sleep(pause).await;
            pause = pause.saturating_mul(2);
        }
    }
    false
}
