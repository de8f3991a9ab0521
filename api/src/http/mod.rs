//! The HTTP API (axum): commands, queries straight from the event streams, audit
//! reads of the log, health, metrics and the OpenAPI document.
//!
//! Every route is registered through [`RouteTable`], which remembers what it serves,
//! so a test can hold the router against the OpenAPI document. Every error leaves as
//! `application/problem+json` ([`problem`]), including those of layers below the
//! handlers (unknown routes, the body limit, the timeout), which [`bare_errors`]
//! rewrites.

pub mod auth;
pub mod caps;
mod command;
pub mod extract;
pub mod idempotency;
pub mod limits;
pub mod metrics;
pub mod openapi;
pub mod policy;
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
use limits::{ConnectionLimits, RateLimit, RateLimiter};
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
pub const IDEMPOTENCY_PURGE_EVERY_SECS: u64 = 600;
/// Longest a read-model query waits for its projection to reach the `after`
/// position it was given, in milliseconds; past it the query answers with what the
/// read model has, marked stale.
pub const READ_WAIT_MAX_MS: u64 = 2_000;
/// Longest one read-model query may run, in milliseconds, before PostgreSQL cancels
/// it (`503 query-timeout`).
pub const READ_STATEMENT_TIMEOUT_MS: u64 = 3_000;
/// Most connections the read-model queries hold at once: a pool of their own, so a
/// burst of broad queries waits for its own connections, not the command side's.
pub const READ_POOL_MAX_CONNECTIONS: usize = 8;

/// The server's bounds.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub body_limit_bytes: usize,
    pub request_timeout: Duration,
    pub page_max_events: usize,
    pub ndjson_page_events: usize,
    pub idempotency_key_ttl: Duration,
    /// How often the sweep of expired idempotency keys runs.
    pub idempotency_purge_every: Duration,
    /// Longest a read-model query waits for `?after=` (read-your-writes).
    pub read_wait_max: Duration,
    /// Longest one read-model query may run before PostgreSQL cancels it.
    pub read_statement_timeout: Duration,
    /// Connections of the read-model queries' own pool.
    pub read_pool_max_connections: usize,
    /// Bounds of the command side.
    pub command_limits: Limits,
    /// The payment provider's webhook secret and replay window (`None`: callbacks
    /// are refused with 401).
    pub payment_webhooks: Option<sagas::psp::WebhookConfig>,
    /// The checkout saga's deadlines and bounds (the checkout timeout starts here).
    pub saga: sagas::SagaConfig,
    /// Token-bucket limit of commands per principal (`None`: unlimited).
    pub principal_rate_limit: Option<RateLimit>,
    /// Token-bucket limit of commands per client IP address (`None`: unlimited).
    pub ip_rate_limit: Option<RateLimit>,
    /// What hyper enforces on each connection before a handler runs.
    pub connections: ConnectionLimits,
    /// Per-account caps on open carts and units of one SKU held (off by default;
    /// `commerce serve` turns them on).
    pub account_caps: caps::AccountCaps,
    /// The role the engine's sessions run as once migrations are done (created by
    /// the event store's migration 3): it may append events but never change them.
    /// `None` runs as the connecting user.
    pub database_role: Option<String>,
    /// Where migrations run, as the schema's owner, when the engine's own login
    /// (the `database_url` given to [`AppState::connect`]) may not run them.
    pub migrate_database_url: Option<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            body_limit_bytes: BODY_LIMIT_BYTES,
            request_timeout: Duration::from_secs(REQUEST_TIMEOUT_SECS),
            page_max_events: PAGE_MAX_EVENTS,
            ndjson_page_events: NDJSON_PAGE_EVENTS,
            idempotency_key_ttl: Duration::from_secs(IDEMPOTENCY_KEY_TTL_SECS),
            idempotency_purge_every: Duration::from_secs(IDEMPOTENCY_PURGE_EVERY_SECS),
            read_wait_max: Duration::from_millis(READ_WAIT_MAX_MS),
            read_statement_timeout: Duration::from_millis(READ_STATEMENT_TIMEOUT_MS),
            read_pool_max_connections: READ_POOL_MAX_CONNECTIONS,
            command_limits: Limits::default(),
            payment_webhooks: None,
            saga: sagas::SagaConfig::default(),
            principal_rate_limit: None,
            ip_rate_limit: None,
            connections: ConnectionLimits::default(),
            account_caps: caps::AccountCaps::OFF,
            database_role: None,
            migrate_database_url: None,
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
    authenticator: Authenticator,
    idempotency: IdempotencyKeys,
    payment_webhooks: routes::webhooks::PaymentWebhooks,
    principal_limiter: RateLimiter,
    ip_limiter: RateLimiter,
    metrics: PrometheusHandle,
    config: ServerConfig,
    /// This process's product search, once started (`commerce serve` starts it).
    search: std::sync::OnceLock<projections::search::SearchIndex>,
    /// The read models' checkpoints, for queries that wait for a position.
    checkpoints: projections::CheckpointWatch,
    /// Read-only sessions with a statement timeout, for the read-model queries.
    read_pool: deadpool_postgres::Pool,
    /// The rebuild started through the admin API, if any, and how it went.
    rebuilds: routes::read_side::RebuildJobs,
}

impl AppState {
    /// Opens the event store at `database_url` (running every component's
    /// migrations) and the command side on it.
    ///
    /// With a [`ServerConfig::migrate_database_url`] or a
    /// [`ServerConfig::database_role`], migrations run first as the owner (everything
    /// this function opens migrates its own tables), then the engine opens again with
    /// its own login or role, which cannot change the log's history.
    pub async fn connect(
        database_url: &str,
        authenticator: Authenticator,
        config: ServerConfig,
    ) -> anyhow::Result<Self> {
        if config.migrate_database_url.is_none() && config.database_role.is_none() {
            return Self::open(database_url, authenticator, config).await;
        }
        let owner_url = config
            .migrate_database_url
            .clone()
            .unwrap_or_else(|| database_url.to_owned());
        let owner_config = ServerConfig {
            database_role: None,
            migrate_database_url: None,
            ..config.clone()
        };
        let owner = Self::open(&owner_url, authenticator.clone(), owner_config).await?;
        {
            // The workers that run beside the API (`serve`) create their tables here
            // too, as the owner: the engine's role creates none.
            let mut client = owner.store().connection().await?;
            let client: &mut tokio_postgres::Client = &mut client;
            projections::migrate(client).await?;
            eventstore::migrate(client, "sagas", sagas::SAGAS_MIGRATIONS).await?;
        }
        drop(owner);
        let engine_url = match &config.database_role {
            Some(role) => with_session_role(database_url, role)?,
            None => database_url.to_owned(),
        };
        Self::open(&engine_url, authenticator, config).await
    }

    async fn open(
        database_url: &str,
        authenticator: Authenticator,
        config: ServerConfig,
    ) -> anyhow::Result<Self> {
        let mut store_config = PostgresConfig::new(database_url);
        // Guarded commands' appends are refused once their key has a kept answer
        // (`CommandMeta::guarded`).
        store_config.kept_answers = Some(idempotency::kept_answers_statement(
            config.idempotency_key_ttl,
        ));
        let store = PostgresStore::connect(store_config).await?;
        let commands = Commands::on_postgres(store.clone(), config.command_limits.clone()).await?;
        // The trail of rebuilds, exports and erasures (`/v1/audit/trail`).
        eventstore::audit::AuditTrail::connect(store.pool().clone()).await?;
        // The read models the query routes serve (a no-op once applied).
        {
            let mut client = store.connection().await?;
            projections::migrate(&mut client).await?;
        }
        let idempotency =
            IdempotencyKeys::connect(store.pool().clone(), config.idempotency_key_ttl).await?;
        let payment_webhooks = routes::webhooks::PaymentWebhooks::connect(
            store.pool().clone(),
            config.payment_webhooks.as_ref(),
        )
        .await?;
        let checkpoints = projections::CheckpointWatch::new(store.pool().clone());
        let read_pool = routes::reads::pool(database_url, &config)?;
        Ok(AppState {
            inner: Arc::new(Inner {
                store,
                in_flight: TaskTracker::new(),
                commands,
                authenticator,
                idempotency,
                payment_webhooks,
                principal_limiter: RateLimiter::new("principal", config.principal_rate_limit),
                ip_limiter: RateLimiter::new("ip", config.ip_rate_limit),
                metrics: metrics::handle(),
                config,
                search: std::sync::OnceLock::new(),
                checkpoints,
                read_pool,
                rebuilds: routes::read_side::RebuildJobs::default(),
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

    pub fn authenticator(&self) -> &Authenticator {
        &self.inner.authenticator
    }

    pub(crate) fn idempotency(&self) -> &IdempotencyKeys {
        &self.inner.idempotency
    }

    /// The payment provider's callbacks: their verifier and inbox.
    pub(crate) fn payment_webhooks(&self) -> &routes::webhooks::PaymentWebhooks {
        &self.inner.payment_webhooks
    }

    /// Commands per principal.
    pub(crate) fn principal_limiter(&self) -> &RateLimiter {
        &self.inner.principal_limiter
    }

    /// Commands per client IP address.
    pub(crate) fn ip_limiter(&self) -> &RateLimiter {
        &self.inner.ip_limiter
    }

    pub(crate) fn metrics(&self) -> &PrometheusHandle {
        &self.inner.metrics
    }

    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// Serves search from `index`; a process sets it once (later calls are ignored).
    pub fn set_search(&self, index: projections::search::SearchIndex) {
        let _ = self.inner.search.set(index);
    }

    /// The product search, if this process runs one.
    pub fn search(&self) -> Option<&projections::search::SearchIndex> {
        self.inner.search.get()
    }

    pub(crate) fn checkpoints(&self) -> &projections::CheckpointWatch {
        &self.inner.checkpoints
    }

    pub(crate) fn read_pool(&self) -> &deadpool_postgres::Pool {
        &self.inner.read_pool
    }

    pub(crate) fn rebuilds(&self) -> &routes::read_side::RebuildJobs {
        &self.inner.rebuilds
    }
}

/// `database_url` with `role` set on every session it opens (the libpq `options`
/// parameter `-c role=...`, the same as `SET ROLE` right after connecting).
pub fn with_session_role(database_url: &str, role: &str) -> anyhow::Result<String> {
    anyhow::ensure!(
        !role.is_empty()
            && role
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "the database role must be a plain lower-case name, got {role:?}"
    );
    if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        let separator = if database_url.contains('?') { '&' } else { '?' };
        Ok(format!(
            "{database_url}{separator}options=-c%20role%3D{role}"
        ))
    } else {
        Ok(format!("{database_url} options='-c role={role}'"))
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
        // After routing (the route template is known), before any extractor.
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            policy::enforce,
        ))
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
///
/// Connections are served by hyper directly rather than `axum::serve`, which sets
/// no timer and so no header read timeout: here a client gets
/// [`ConnectionLimits::header_read_timeout`] to send each request's headers (which
/// also closes keep-alive connections idle that long), heads are bounded in size
/// and header count (431 past them), and at most
/// [`ConnectionLimits::max_connections`] are open at once.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let purge = tokio::spawn(purge_idempotency_keys(state.clone()));
    let app = router(state.clone());
    let limits = state.config().connections.clone();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            permit = open.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off, do not spin.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let service = tower::ServiceExt::map_request(
            app.clone(),
            move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request
                    .extensions_mut()
                    .insert(axum::extract::ConnectInfo(remote));
                request.map(axum::body::Body::new)
            },
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .max_headers(limits.headers_max)
            .max_buf_size(limits.header_max_bytes.max(HYPER_MIN_BUF_BYTES));
        let connection = builder.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(service),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    purge.abort();
    let timeout = state.config().request_timeout;
    if tokio::time::timeout(timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at shutdown");
    }
    // Commands whose clients hung up run on; let them finish too (bounded).
    let in_flight = state.in_flight();
    in_flight.close();
    if tokio::time::timeout(timeout, in_flight.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            running = in_flight.len(),
            "commands still running at shutdown"
        );
    }
    Ok(())
}

/// How long to wait after a failed accept, in milliseconds.
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;
/// hyper's smallest read buffer, which bounds the request head.
const HYPER_MIN_BUF_BYTES: usize = 8 * 1024;

async fn purge_idempotency_keys(state: AppState) {
    let mut every = tokio::time::interval(state.config().idempotency_purge_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        match state.idempotency().purge_expired().await {
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
