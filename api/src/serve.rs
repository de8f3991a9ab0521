//! `commerce serve`: the HTTP API on the database of `DATABASE_URL`, or on a managed
//! local PostgreSQL in the data directory. Stops gracefully on SIGTERM or ctrl-c:
//! the listener closes, in-flight requests (and so their commands) finish, then the
//! managed server stops.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use projections::{Runner, RunnerConfig};
use tokio::net::TcpListener;

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
    /// Largest request body in bytes; larger ones get a 413.
    #[arg(long, env = "COMMERCE_BODY_LIMIT_BYTES", default_value_t = http::BODY_LIMIT_BYTES)]
    pub body_limit_bytes: usize,
    /// Longest a request may take, in seconds.
    #[arg(long, env = "COMMERCE_REQUEST_TIMEOUT_SECS", default_value_t = http::REQUEST_TIMEOUT_SECS)]
    pub request_timeout_secs: u64,
    /// How long the first response to an Idempotency-Key is kept, in seconds.
    #[arg(long, env = "COMMERCE_IDEMPOTENCY_KEY_TTL_SECS", default_value_t = http::IDEMPOTENCY_KEY_TTL_SECS)]
    pub idempotency_key_ttl_secs: u64,
}

impl ServeArgs {
    fn server_config(&self) -> ServerConfig {
        ServerConfig {
            body_limit_bytes: self.body_limit_bytes,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            idempotency_key_ttl: Duration::from_secs(self.idempotency_key_ttl_secs),
            ..ServerConfig::default()
        }
    }

    fn authenticator(&self) -> Result<Authenticator> {
        let public_key = self
            .jwt_public_key
            .as_ref()
            .map(|path| {
                std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
            })
            .transpose()?;
        // With only a public key configured, do not also accept HS256 tokens signed
        // with a generated local secret.
        let secret = match (&self.secret.jwt_secret, &public_key) {
            (None, Some(_)) => None,
            (explicit, _) => Some(hs256_secret(explicit.as_deref(), &self.data_dir.resolve())?),
        };
        Ok(Authenticator::new(
            secret.as_deref(),
            public_key.as_deref(),
        )?)
    }
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
    let esdb = crate::esdb::cli::start(&args.esdb, std::sync::Arc::new(state.store().clone()))
        .await
        .context("cannot start the EventStoreDB gRPC endpoint")?;
    ready.await;
    let served = http::serve(listener, state, shutdown).await;
    if let Some(esdb) = esdb {
        esdb.stop().await?;
    }
    projections.stop().await;
    served?;
    Ok(())
}

/// Resolves on SIGTERM or ctrl-c (SIGINT).
pub(crate) async fn shutdown_signal() {
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
