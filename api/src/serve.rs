//! `commerce serve`: the HTTP API on the database of `DATABASE_URL`, or on a managed
//! local PostgreSQL in the data directory. Stops gracefully on SIGTERM or ctrl-c:
//! the listener closes, in-flight requests (and so their commands) finish, then the
//! managed server stops.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use projections::{Runner, RunnerConfig};
use tokio::net::TcpListener;

use crate::http::auth::{KeyMaterial, KeySpec, TokenRules, CLOCK_LEEWAY_SECS};
use crate::http::limits::{self, ConnectionLimits, RateLimit};
use crate::http::{self, AppState, Authenticator, ServerConfig};
use crate::managed_pg::ManagedPostgres;
use crate::token::{hs256_secret, DataDirArg, SecretArg};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "COMMERCE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub data_dir: DataDirArg,
    #[command(flatten)]
    pub secret: SecretArg,
    #[command(flatten)]
    pub esdb: crate::esdb::EsdbArgs,
    /// PEM file with an RSA public key: accept RS256 tokens signed with its private
    /// key. Without --jwt-secret, only RS256 tokens are then accepted.
    #[arg(long, env = "COMMERCE_JWT_PUBLIC_KEY", value_name = "PEM_FILE")]
    pub jwt_public_key: Option<PathBuf>,
    /// A verification key selected by the token's `kid`: `KID=hs256:SECRET_FILE` or
    /// `KID=rs256:PEM_FILE`. Repeat it to rotate keys: add the new key, move the
    /// issuer to it, drop the old one once its tokens have expired. The key's
    /// algorithm is the only one its tokens may use.
    #[arg(
        long = "jwt-key",
        env = "COMMERCE_JWT_KEYS",
        value_delimiter = ',',
        value_name = "KID=ALG:FILE"
    )]
    pub jwt_keys: Vec<String>,
    /// The issuer (`iss`) every token must carry.
    #[arg(long, env = "COMMERCE_JWT_ISSUER", default_value = crate::http::auth::DEFAULT_ISSUER)]
    pub jwt_issuer: String,
    /// The audience (`aud`) every token must carry.
    #[arg(long, env = "COMMERCE_JWT_AUDIENCE", default_value = crate::http::auth::DEFAULT_AUDIENCE)]
    pub jwt_audience: String,
    /// Clock skew tolerated on a token's `exp`, `nbf` and `iat`, in seconds.
    #[arg(long, env = "COMMERCE_JWT_LEEWAY_SECS", default_value_t = CLOCK_LEEWAY_SECS)]
    pub jwt_leeway_secs: u64,
    /// Largest request body in bytes; larger ones get a 413.
    #[arg(long, env = "COMMERCE_BODY_LIMIT_BYTES", default_value_t = http::BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,
    /// Longest a request may take, in seconds.
    #[arg(long, env = "COMMERCE_REQUEST_TIMEOUT_SECS", default_value_t = http::REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    /// How long the first response to an Idempotency-Key is kept, in seconds.
    #[arg(long, env = "COMMERCE_IDEMPOTENCY_KEY_TTL_SECS", default_value_t = http::IDEMPOTENCY_KEY_TTL_SECS)]
    pub idempotency_key_ttl_secs: u64,
    /// The folder of this process's search index (default: `search` in the data
    /// directory). Each process needs its own; a missing or unusable index is
    /// rebuilt from the log at start-up.
    #[arg(long, env = "COMMERCE_SEARCH_DIR", value_name = "DIR")]
    pub search_dir: Option<PathBuf>,
    /// The checkout saga: payment provider and deadlines.
    #[command(flatten)]
    pub saga: crate::saga::SagaArgs,
    /// Secret shared with the payment provider, which signs its callbacks to
    /// `POST /v1/payments/webhooks` with it; without one, callbacks are refused.
    /// Prefer the environment variable to the flag (flags show in `ps`).
    #[arg(long, env = "COMMERCE_PSP_WEBHOOK_SECRET", hide_env_values = true)]
    pub psp_webhook_secret: Option<String>,
    /// How far a callback's signed timestamp may be from this server's clock, in
    /// seconds (the replay window).
    #[arg(long, env = "COMMERCE_PSP_WEBHOOK_TOLERANCE_SECS", default_value_t = sagas::psp::webhook::WEBHOOK_TOLERANCE_SECS)]
    pub psp_webhook_tolerance_secs: u64,
    /// Commands one principal may send per second, sustained (0 turns the limit
    /// off); past it, 429 with Retry-After.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_PRINCIPAL_PER_SEC", default_value_t = limits::PRINCIPAL_COMMANDS_PER_SEC)]
    pub rate_limit_principal_per_sec: f64,
    /// Commands one principal may send at once before the sustained rate applies.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_PRINCIPAL_BURST", default_value_t = limits::PRINCIPAL_COMMANDS_BURST)]
    pub rate_limit_principal_burst: u32,
    /// Commands one client IP address may send per second, sustained (0 turns the
    /// limit off).
    #[arg(long, env = "COMMERCE_RATE_LIMIT_IP_PER_SEC", default_value_t = limits::IP_COMMANDS_PER_SEC)]
    pub rate_limit_ip_per_sec: f64,
    /// Commands one client IP address may send at once.
    #[arg(long, env = "COMMERCE_RATE_LIMIT_IP_BURST", default_value_t = limits::IP_COMMANDS_BURST)]
    pub rate_limit_ip_burst: u32,
    /// Most connections open at once; further ones wait to be accepted.
    #[arg(long, env = "COMMERCE_MAX_CONNECTIONS", default_value_t = limits::CONNECTIONS_MAX)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers; also how long an idle
    /// keep-alive connection stays open.
    #[arg(long, env = "COMMERCE_HEADER_READ_TIMEOUT_SECS", default_value_t = limits::HEADER_READ_TIMEOUT_SECS)]
    pub header_read_timeout_secs: u64,
    /// Largest request head (request line and headers) in bytes; larger gets 431.
    #[arg(long, env = "COMMERCE_HEADER_MAX_BYTES", default_value_t = limits::HEADER_MAX_BYTES)]
    pub header_max_bytes: usize,
    /// Most headers in one request; more gets 431.
    #[arg(long, env = "COMMERCE_HEADERS_MAX", default_value_t = limits::HEADERS_MAX)]
    pub headers_max: usize,
    /// Most carts one account (customer or guest) keeps open; 0 turns it off.
    #[arg(long, env = "COMMERCE_OPEN_CARTS_MAX", default_value_t = http::caps::OPEN_CARTS_MAX)]
    pub open_carts_max: u32,
    /// Most units of one SKU one account holds across its open carts and the carts
    /// being checked out (held in reservations); 0 turns it off.
    #[arg(long, env = "COMMERCE_SKU_UNITS_MAX", default_value_t = http::caps::SKU_UNITS_MAX)]
    pub sku_units_max: u64,
    /// Most checkouts one account has in flight at once; 0 turns it off.
    #[arg(long, env = "COMMERCE_CHECKOUTS_IN_FLIGHT_MAX", default_value_t = http::caps::CHECKOUTS_IN_FLIGHT_MAX)]
    pub checkouts_in_flight_max: u32,
    /// Longest a read-model query with `?after=` waits for its projection to reach
    /// that position, in milliseconds; past it the answer is marked stale.
    #[arg(long, env = "COMMERCE_READ_WAIT_MAX_MS", default_value_t = http::READ_WAIT_MAX_MS)]
    pub read_wait_max_ms: u64,
    /// Longest one read-model query (lists, histories, sales) may run, in
    /// milliseconds, before PostgreSQL cancels it and the answer is 503 query-timeout.
    #[arg(long, env = "COMMERCE_READ_STATEMENT_TIMEOUT_MS", default_value_t = http::READ_STATEMENT_TIMEOUT_MS)]
    pub read_statement_timeout_ms: u64,
    /// Most connections the read-model queries hold at once (their own pool).
    #[arg(long, env = "COMMERCE_READ_POOL_MAX_CONNECTIONS", default_value_t = http::READ_POOL_MAX_CONNECTIONS)]
    pub read_pool_max_connections: usize,
    /// How often expired idempotency keys are swept, in seconds.
    #[arg(long, env = "COMMERCE_IDEMPOTENCY_PURGE_EVERY_SECS", default_value_t = http::IDEMPOTENCY_PURGE_EVERY_SECS)]
    pub idempotency_purge_every_secs: u64,
    /// The database role the engine runs as once migrations are done: it may append
    /// events but never update, delete or truncate them. The role is made by the
    /// migrations; the connecting user must be allowed to `SET ROLE` to it. Give an
    /// empty value to run as the connecting user.
    #[arg(long, env = "COMMERCE_DATABASE_ROLE", default_value = DATABASE_ROLE)]
    pub database_role: String,
    /// Run migrations with this URL (the schema's owner), and the engine with
    /// DATABASE_URL: a login that is a member of the engine's role only, so that not
    /// even a `RESET ROLE` gives it the owner's rights.
    #[arg(
        long,
        env = "COMMERCE_MIGRATE_DATABASE_URL",
        hide_env_values = true,
        value_name = "URL"
    )]
    pub migrate_database_url: Option<String>,
}

/// The role the event store's migrations create for the engine.
pub const DATABASE_ROLE: &str = "commerce_engine";

impl ServeArgs {
    fn server_config(&self) -> ServerConfig {
        ServerConfig {
            body_limit_bytes: self.body_limit_bytes,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            idempotency_key_ttl: Duration::from_secs(self.idempotency_key_ttl_secs),
            saga: self.saga.config(),
            payment_webhooks: self.psp_webhook_secret.as_ref().map(|secret| {
                sagas::psp::WebhookConfig {
                    secret: secret.clone().into_bytes(),
                    tolerance_secs: self.psp_webhook_tolerance_secs,
                }
            }),
            idempotency_purge_every: Duration::from_secs(self.idempotency_purge_every_secs.max(1)),
            read_wait_max: Duration::from_millis(self.read_wait_max_ms),
            read_statement_timeout: Duration::from_millis(self.read_statement_timeout_ms.max(1)),
            read_pool_max_connections: self.read_pool_max_connections.max(1),
            principal_rate_limit: Some(RateLimit {
                per_sec: self.rate_limit_principal_per_sec,
                burst: self.rate_limit_principal_burst,
            }),
            ip_rate_limit: Some(RateLimit {
                per_sec: self.rate_limit_ip_per_sec,
                burst: self.rate_limit_ip_burst,
            }),
            connections: ConnectionLimits {
                max_connections: self.max_connections,
                header_read_timeout: Duration::from_secs(self.header_read_timeout_secs.max(1)),
                header_max_bytes: self.header_max_bytes,
                headers_max: self.headers_max,
            },
            account_caps: http::caps::AccountCaps {
                open_carts_max: self.open_carts_max,
                sku_units_max: self.sku_units_max,
                checkouts_in_flight_max: self.checkouts_in_flight_max,
            },
            database_role: Some(self.database_role.clone()).filter(|r| !r.is_empty()),
            migrate_database_url: self.migrate_database_url.clone(),
            ..ServerConfig::default()
        }
    }

    fn authenticator(&self) -> Result<Authenticator> {
        let public_key = self
            .jwt_public_key
            .as_ref()
            .map(|path| read_key_file(path))
            .transpose()?;
        let mut keys = self
            .jwt_keys
            .iter()
            .map(|spec| parse_key_spec(spec))
            .collect::<Result<Vec<_>>>()?;
        // With only public keys or a key set configured, do not also accept HS256
        // tokens signed with a generated local secret.
        let explicit = self.secret.jwt_secret.as_deref();
        if explicit.is_some() || (public_key.is_none() && keys.is_empty()) {
            let secret = hs256_secret(explicit, &self.data_dir.resolve())?;
            keys.push(KeySpec {
                kid: None,
                material: KeyMaterial::Hs256(secret),
            });
        }
        if let Some(pem) = public_key {
            keys.push(KeySpec {
                kid: None,
                material: KeyMaterial::Rs256Pem(pem),
            });
        }
        let rules = TokenRules {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            leeway_secs: self.jwt_leeway_secs,
        };
        Ok(Authenticator::with_keys(keys, rules)?)
    }
}

fn read_key_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

/// `KID=hs256:FILE` or `KID=rs256:FILE` (a secret file is trimmed of its newline).
fn parse_key_spec(spec: &str) -> Result<KeySpec> {
    let usage = || format!("--jwt-key {spec:?}: expected KID=hs256:FILE or KID=rs256:FILE");
    let (kid, rest) = spec.split_once('=').with_context(usage)?;
    let (algorithm, path) = rest.split_once(':').with_context(usage)?;
    let bytes = read_key_file(Path::new(path))?;
    let material = match algorithm.to_ascii_lowercase().as_str() {
        "hs256" => KeyMaterial::Hs256(String::from_utf8_lossy(&bytes).trim().as_bytes().to_vec()),
        "rs256" => KeyMaterial::Rs256Pem(bytes),
        _ => bail!(usage()),
    };
    Ok(KeySpec {
        kid: Some(kid.to_owned()),
        material,
    })
}

pub async fn run(args: ServeArgs, database_url: Option<String>) -> Result<()> {
    let authenticator = args.authenticator()?;
    let (url, managed) = match database_url {
        Some(url) => (url, None),
        None => {
            let data_dir = args.data_dir.resolve();
            let server = ManagedPostgres::start(&data_dir).await?;
            eprintln!(
                "commerce: using the managed PostgreSQL in {}",
                data_dir.display()
            );
            (server.database_url(), Some(server))
        }
    };
    let served = serve(&args, &url, authenticator).await;
    if let Some(server) = managed {
        if let Err(e) = server.stop().await {
            eprintln!("commerce: cannot stop the managed PostgreSQL: {e}");
        }
    }
    served
}

async fn serve(args: &ServeArgs, database_url: &str, authenticator: Authenticator) -> Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener.local_addr()?;
    serve_on(
        listener,
        args,
        database_url,
        authenticator,
        async move {
            println!("commerce: serving http://{address}");
        },
        shutdown_signal(),
    )
    .await?;
    eprintln!("commerce: stopped");
    Ok(())
}

/// Runs the engine on a bound listener until `shutdown` resolves: the HTTP API and
/// the workers beside it (the projections that keep the read models). `ready` runs
/// once everything has started. `commerce serve` and `commerce demo` both start the
/// engine here, so the demo shows exactly what a deployment runs.
pub async fn serve_on(
    listener: TcpListener,
    args: &ServeArgs,
    database_url: &str,
    authenticator: Authenticator,
    ready: impl Future<Output = ()>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let state = AppState::connect(database_url, authenticator, args.server_config())
        .await
        .context("cannot open the event store")?;
    let projections = Runner::start(state.store().clone(), RunnerConfig::default())
        .await
        .context("cannot start the projections")?;
    let search_dir = args
        .search_dir
        .clone()
        .unwrap_or_else(|| args.data_dir.resolve().join("search"));
    let (search, search_task) = projections::search::SearchIndex::start(
        state.store().clone(),
        projections::search::SearchConfig::new(&search_dir),
        Some(std::sync::Arc::new(report_search_progress)),
    )
    .await
    .with_context(|| format!("cannot open the search index in {}", search_dir.display()))?;
    state.set_search(search);
    let saga = crate::saga::SagaWorkers::start(&state, &args.saga)
        .await
        .context("cannot start the checkout saga")?;
    let esdb = crate::esdb::cli::start(&args.esdb, std::sync::Arc::new(state.store().clone()))
        .await
        .context("cannot start the EventStoreDB gRPC endpoint")?;
    ready.await;
    let served = http::serve(listener, state, shutdown).await;
    if let Some(esdb) = esdb {
        esdb.stop().await?;
    }
    saga.stop().await;
    search_task.stop().await;
    projections.stop().await;
    served?;
    Ok(())
}

/// Progress lines of the search index's catch-up (a rebuild after a missing or
/// damaged index takes a while).
fn report_search_progress(progress: projections::search::SearchProgress) {
    if progress.done {
        eprintln!(
            "commerce: search index ready at log position {} ({} products indexed)",
            progress.position, progress.products
        );
    } else {
        eprintln!(
            "commerce: building the search index: position {} of {} ({:.0} events/s)",
            progress.position, progress.head, progress.events_per_sec
        );
    }
}

/// Resolves on SIGTERM or ctrl-c (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    eprintln!("commerce: shutting down, finishing requests in flight");
}
