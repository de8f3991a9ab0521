//! The HTTP API (axum): commands, queries straight from the event streams, audit
//! reads of the log, health, metrics and the OpenAPI document.
//!
//! Every route is registered through [`RouteTable`], which remembers what it serves,
//! so a test can hold the router against the OpenAPI document. Every error leaves as
//! `application/problem+json` ([`problem`]), including those of layers below the
//! handlers (unknown routes, the body limit, the timeout), which [`bare_errors`]
//! rewrites.

pub mod auth;
mod command;
pub mod extract;
pub mod idempotency;
pub mod metrics;
pub mod openapi;
pub mod problem;
mod routes;
mod views;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter, MethodRouter};
use axum::Router;
use commands::{Commands, Limits};
use domain::{CartId, CartOwner};
use eventstore::{PostgresConfig, PostgresStore};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use auth::{Authenticator, Claims, Principal, Role};
use idempotency::IdempotencyKeys;
use problem::{ApiError, PROBLEM_CONTENT_TYPE};

/// Default largest request body, in bytes.
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;
/// Default time one request may take, in seconds; a little above the command
/// side's own reply timeout, so a slow command answers with its own problem first.
pub const REQUEST_TIMEOUT_SECS: u64 = 35;
/// Most events one JSON page of an audit read returns.
pub const PAGE_MAX_EVENTS: usize = 1_000;
/// Events per store read while streaming NDJSON.
pub const NDJSON_PAGE_EVENTS: usize = 1_000;
/// How long an idempotency key's first response is kept, in seconds.
pub const IDEMPOTENCY_KEY_TTL_SECS: u64 = 24 * 60 * 60;
/// How often expired idempotency keys are purged, in seconds.
const IDEMPOTENCY_PURGE_EVERY_SECS: u64 = 600;

/// The server's bounds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub page_max_events: usize,
    pub ndjson_page_events: usize,
    pub idempotency_key_ttl: Duration,
    /// Bounds of the command side.
    pub command_limits: Limits,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            body_limit_bytes: BODY_LIMIT_BYTES,
            request_timeout: Duration::from_secs(REQUEST_TIMEOUT_SECS),
            page_max_events: PAGE_MAX_EVENTS,
            ndjson_page_events: NDJSON_PAGE_EVENTS,
            idempotency_key_ttl: Duration::from_secs(IDEMPOTENCY_KEY_TTL_SECS),
            command_limits: Limits::default(),
        }
    }
}

/// What every handler shares. Cloning is cheap.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    store: PostgresStore,
    in_flight: TaskTracker,
    commands: Commands,
    cart_owners: CartOwners,
    authenticator: Authenticator,
    idempotency: IdempotencyKeys,
    metrics: PrometheusHandle,
    config: ServerConfig,
}

impl AppState {
    /// Opens the event store at `database_url` (running every component's
    /// migrations) and the command side on it.
    pub async fn connect(
        database_url: &str,
        authenticator: Authenticator,
        config: ServerConfig,
    ) -> anyhow::Result<Self> {
        let store = PostgresStore::connect(PostgresConfig::new(database_url)).await?;
        let commands = Commands::on_postgres(store.clone(), config.command_limits.clone()).await?;
        let idempotency = IdempotencyKeys::connect(store.pool().clone()).await?;
        Ok(AppState {
            inner: Arc::new(Inner {
                store,
                in_flight: TaskTracker::new(),
                commands,
                cart_owners: CartOwners::default(),
                authenticator,
                idempotency,
                metrics: metrics::handle(),
                config,
            }),
        })
    }

    pub fn store(&self) -> &PostgresStore {
        &self.inner.store
    }

    /// The commands running now; shutdown waits for them.
    pub(crate) fn in_flight(&self) -> &TaskTracker {
        &self.inner.in_flight
    }

    pub fn commands(&self) -> &Commands {
        &self.inner.commands
    }

    /// Owners of carts seen lately (an owner never changes, so these never go stale).
    pub(crate) fn cart_owners(&self) -> &CartOwners {
        &self.inner.cart_owners
    }

    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.authenticator
    }

    pub(crate) fn idempotency(&self) -> &IdempotencyKeys {
        &self.inner.idempotency
    }

    pub(crate) fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }
}

/// Most cart owners remembered; past it the memory starts over.
const CART_OWNERS_MAX: usize = 100_000;

/// Who owns each cart seen lately, so that checking a customer's right to change a
/// cart does not read the cart's stream on every command. A cart's owner is fixed
/// when it is created, so an entry can never be wrong, only missing.
#[derive(Default)]
pub(crate) struct CartOwners {
    owners: std::sync::Mutex<std::collections::HashMap<CartId, CartOwner>>,
}

impl CartOwners {
    fn lock(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<CartId, CartOwner>> {
        // A panic while holding this lock cannot leave the map half-updated: the
        // holders do one map operation each.
        self.owners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn get(&self, cart_id: CartId) -> Option<CartOwner> {
        self.lock().get(&cart_id).copied()
    }

    pub(crate) fn remember(&self, cart_id: CartId, owner: CartOwner) {
        let mut owners = self.lock();
        if owners.len() >= CART_OWNERS_MAX {
            owners.clear();
        }
        owners.insert(cart_id, owner);
    }
}

/// The router under construction, and the (method, path) pairs it serves.
pub struct RouteTable {
    router: Router<AppState>,
    served: Vec<(Method, &'static str)>,
}

impl RouteTable {
    fn new() -> Self {
        RouteTable {
            router: Router::new(),
            served: Vec::new(),
        }
    }

    /// Serves `handler` for `method` on `path` (paths with the same template merge).
    fn add(mut self, method: Method, path: &'static str, handler: MethodRouter<AppState>) -> Self {
        self.served.push((method, path));
        self.router = self.router.route(path, handler);
        self
    }

    fn get<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::GET, path, on(MethodFilter::GET, handler))
    }

    fn post<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::POST, path, on(MethodFilter::POST, handler))
    }

    fn put<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::PUT, path, on(MethodFilter::PUT, handler))
    }

    fn delete<H, T>(self, path: &'static str, handler: H) -> Self
    where
        H: axum::handler::Handler<T, AppState>,
        T: 'static,
    {
        self.add(Method::DELETE, path, on(MethodFilter::DELETE, handler))
    }

    /// The (method, path template) pairs the router serves.
    pub fn served(&self) -> &[(Method, &'static str)] {
        &self.served
    }
}

/// Every route of the API.
pub fn route_table() -> RouteTable {
    routes::register(RouteTable::new())
}

/// The (method, path template) pairs the API serves.
pub fn served_routes() -> Vec<(Method, &'static str)> {
    route_table().served
}

/// The whole application: routes, then the layers every request passes.
pub fn router(state: AppState) -> Router {
    let config = state.config().clone();
    let table = route_table();
    table
        .router
        .fallback(|| async { ApiError::not_found("route") })
        // Innermost first: each layer wraps the ones above it. Router::layer applies
        // after routing, so the metrics see the matched route template.
        .layer(DefaultBodyLimit::max(config.body_limit_bytes))
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::SERVICE_UNAVAILABLE,
            config.request_timeout,
        ))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(bare_errors))
        .layer(middleware::from_fn(metrics::track))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// Rewrites error responses that layers below the handlers produce with a bare
/// body (404/405 of routing, 413 of the body limit, the timeout, a caught panic)
/// into problem documents, so clients see one error format.
async fn bare_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()));
    if is_problem {
        return response;
    }
    let code = problem::code_for_bare_status(status);
    let detail = match (status, code) {
        (StatusCode::SERVICE_UNAVAILABLE, _) => {
            "the request took longer than the server allows".to_owned()
        }
        (StatusCode::PAYLOAD_TOO_LARGE, _) => {
            "the request body is larger than the server accepts".to_owned()
        }
        (StatusCode::METHOD_NOT_ALLOWED, _) => "this route does not serve that method".to_owned(),
        _ => status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_owned(),
    };
    let code = if status == StatusCode::SERVICE_UNAVAILABLE {
        "request-timeout"
    } else {
        code
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut rewritten = ApiError::new(status, code, detail).into_response();
    if let Some(allow) = allow {
        rewritten.headers_mut().insert(header::ALLOW, allow);
    }
    rewritten
}

/// Serves the API on `listener` until `shutdown` resolves, then lets in-flight
/// requests finish (graceful shutdown). A background task purges expired
/// idempotency keys meanwhile.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let purge = tokio::spawn(purge_idempotency_keys(state.clone()));
    let result = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown)
        .await;
    purge.abort();
    // Commands whose clients hung up run on; let them finish too (bounded).
    let in_flight = state.in_flight();
    in_flight.close();
    let timeout = state.config().request_timeout;
    if tokio::time::timeout(timeout, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = in_flight.len(),
            "commands still running at shutdown"
        );
    }
    result
}

async fn purge_idempotency_keys(state: AppState) {
    let mut every = tokio::time::interval(Duration::from_secs(IDEMPOTENCY_PURGE_EVERY_SECS));
    loop {
        every.tick().await;
        let ttl = state.config().idempotency_key_ttl;
        match state.idempotency().purge_older_than(ttl).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged expired idempotency keys"),
            Err(e) => tracing::warn!(detail = %e.detail, "cannot purge idempotency keys"),
        }
    }
}

/// A JSON response with a status.
pub(crate) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => {
            let mut response = (status, bytes).into_response();
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            response
        }
        Err(e) => ApiError::internal(format!("cannot encode the response: {e}")).into_response(),
    }
}
