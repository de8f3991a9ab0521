//! The endpoint's flags on `commerce serve`, and starting and stopping it beside the
//! HTTP API.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use eventstore::EventStore;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{serve, EsdbConfig, TlsIdentity, UserEntry, Users};

#[derive(Debug, Clone, Default, Args)]
pub struct EsdbArgs {
    /// Serve the EventStoreDB-compatible gRPC endpoint on this address (off without
    /// it; EventStoreDB's usual one is 127.0.0.1:2113). Needs at least one --esdb-user.
    #[arg(long, env = "COMMERCE_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,
    /// A user of the gRPC endpoint: NAME:PASSWORD:ROLE, ROLE one of admin, auditor,
    /// integrator. Repeatable; the environment variable takes a comma-separated list.
    #[arg(
        long = "esdb-user",
        env = "COMMERCE_ESDB_USERS",
        value_delimiter = ',',
        hide_env_values = true,
        value_name = "NAME:PASSWORD:ROLE"
    )]
    pub esdb_users: Vec<UserEntry>,
    /// PEM certificate chain: serve the gRPC endpoint over TLS (with --esdb-tls-key).
    #[arg(
        long,
        env = "COMMERCE_ESDB_TLS_CERT",
        value_name = "PEM_FILE",
        requires = "esdb_tls_key"
    )]
    pub esdb_tls_cert: Option<PathBuf>,
    /// PEM private key of --esdb-tls-cert.
    #[arg(
        long,
        env = "COMMERCE_ESDB_TLS_KEY",
        value_name = "PEM_FILE",
        requires = "esdb_tls_cert"
    )]
    pub esdb_tls_key: Option<PathBuf>,
}

impl EsdbArgs {
    fn config(&self) -> Result<EsdbConfig> {
        let users = Users::new(self.esdb_users.iter().cloned()).map_err(anyhow::Error::msg)?;
        if users.is_empty() {
            bail!("--grpc-listen needs at least one --esdb-user NAME:PASSWORD:ROLE");
        }
        let tls = match (&self.esdb_tls_cert, &self.esdb_tls_key) {
            (Some(cert), Some(key)) => Some(TlsIdentity {
                certificate_pem: std::fs::read(cert)
                    .with_context(|| format!("cannot read {}", cert.display()))?,
                key_pem: std::fs::read(key)
                    .with_context(|| format!("cannot read {}", key.display()))?,
            }),
            _ => None,
        };
        if let Some(identity) = &tls {
            super::tls::check(identity).context("--esdb-tls-cert and --esdb-tls-key")?;
        }
        Ok(EsdbConfig { users, tls })
    }
}

/// How long calls in flight may take to finish once the endpoint stops.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// A running endpoint.
pub struct EsdbServer {
    pub address: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), super::ServeError>>,
}

impl EsdbServer {
    /// Serves on `listener` in a task of its own.
    pub fn spawn(
        listener: TcpListener,
        store: Arc<dyn EventStore>,
        config: EsdbConfig,
    ) -> Result<Self> {
        let address = listener.local_addr()?;
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, store, config, async {
            let _ = stop.await;
        }));
        Ok(EsdbServer {
            address,
            shutdown,
            task,
        })
    }

    /// Stops accepting calls, lets the calls in flight end, and waits for the server.
    /// Subscriptions end with an unavailable status; whatever is still running after
    /// [`SHUTDOWN_GRACE`] is cut.
    pub async fn stop(mut self) -> Result<()> {
        let _ = self.shutdown.send(());
        match tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task).await {
            Ok(served) => served.context("the gRPC endpoint panicked")??,
            Err(_) => self.task.abort(),
        }
        Ok(())
    }
}

/// Starts the endpoint when `--grpc-listen` asks for it.
pub async fn start(args: &EsdbArgs, store: Arc<dyn EventStore>) -> Result<Option<EsdbServer>> {
    let Some(address) = args.grpc_listen else {
        return Ok(None);
    };
    let config = args.config()?;
    let scheme = if config.tls.is_some() {
        "true"
    } else {
        "false"
    };
    let listener = TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on {address}"))?;
    let server = EsdbServer::spawn(listener, store, config)?;
    println!(
        "commerce: serving the EventStoreDB protocol on esdb://{}?tls={scheme}",
        server.address
    );
    Ok(Some(server))
}
