//! The checkout saga inside `commerce serve`: its runner (which follows the log and
//! runs each checkout's steps) and its timer worker (deadlines, payment retries,
//! reservation expiries), on the engine's database, talking to the payment provider
//! at `--psp-url`, or to a sandbox provider started in this process when none is
//! given. Every engine process runs both; the runner's lease lets one process at a
//! time apply checkouts, and timers are harmless to fire twice.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use eventstore::privacy::{KeyVault, PrivateStore};
use eventstore::EventStore;
use sagas::psp::{HttpGateway, HttpGatewayConfig, Sandbox};
use sagas::{PaymentGateway, PostgresSagaStore, SagaConfig, SagaRunner, SystemClock, TimerWorker};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::AppState;

/// The saga's settings on the command line.
#[derive(Debug, Clone, Args)]
pub struct SagaArgs {
    /// The payment provider's base URL (e.g. the sandbox of `commerce psp`). Without
    /// it, a sandbox provider runs inside this process on a free local port.
    #[arg(long, env = "COMMERCE_PSP_URL")]
    pub psp_url: Option<String>,
    /// How long one request to the payment provider may take before it counts as a
    /// failed attempt (a timeout, outcome unknown), in milliseconds. Five failed
    /// attempts in a row open the circuit breaker.
    #[arg(long, env = "COMMERCE_PSP_REQUEST_TIMEOUT_MS", default_value_t = sagas::psp::REQUEST_TIMEOUT_MS)]
    pub psp_request_timeout_ms: u64,
    /// How long a stock reservation holds before it expires, in seconds.
    #[arg(long, env = "COMMERCE_RESERVATION_TTL_SECS", default_value_t = sagas::config::RESERVATION_TTL_SECS)]
    pub reservation_ttl_secs: u64,
    /// How long a checkout may take to be confirmed before it is cancelled, in seconds.
    #[arg(long, env = "COMMERCE_CHECKOUT_TIMEOUT_SECS", default_value_t = sagas::config::CHECKOUT_TIMEOUT_SECS)]
    pub checkout_timeout_secs: u64,
}

impl SagaArgs {
    fn gateway_config(&self, url: &str) -> HttpGatewayConfig {
        HttpGatewayConfig {
            request_timeout_ms: self.psp_request_timeout_ms.max(1),
            ..HttpGatewayConfig::new(url)
        }
    }

    pub fn config(&self) -> SagaConfig {
        SagaConfig {
            reservation_ttl: Duration::from_secs(self.reservation_ttl_secs),
            checkout_timeout: Duration::from_secs(self.checkout_timeout_secs),
            ..SagaConfig::default()
        }
    }
}

/// The log as the saga and the checkout queries read it: personal fields (the
/// checkout's shipping address) opened, or erased once the customer was forgotten.
pub fn private_reader(state: &AppState) -> PrivateStore {
    PrivateStore::new(
        Arc::new(state.store().clone()),
        KeyVault::new(state.store().pool().clone()),
        commands::PERSONAL_DATA,
    )
}

/// The running runner and timer worker.
pub struct SagaWorkers {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    sandbox: Option<Sandbox>,
}

impl SagaWorkers {
    /// Starts both workers on `state`'s database and command side.
    pub async fn start(state: &AppState, args: &SagaArgs) -> Result<SagaWorkers> {
        let config = args.config();
        let (gateway, sandbox): (Arc<dyn PaymentGateway>, Option<Sandbox>) = match &args.psp_url {
            Some(url) => (
                Arc::new(
                    HttpGateway::new(args.gateway_config(url))
                        .context("cannot build the payment client")?,
                ),
                None,
            ),
            None => {
                let sandbox = Sandbox::start(([127, 0, 0, 1], 0).into())
                    .await
                    .context("cannot start the sandbox payment provider")?;
                eprintln!(
                    "commerce: no --psp-url; payments go to a sandbox provider at {}",
                    sandbox.url()
                );
                let gateway = HttpGateway::new(args.gateway_config(sandbox.url()))
                    .context("cannot build the payment client")?;
                (Arc::new(gateway), Some(sandbox))
            }
        };
        let saga_store = Arc::new(
            PostgresSagaStore::connect(state.store().pool().clone())
                .await
                .context("cannot open the saga's tables")?,
        );
        // Checkout events carry a sealed address: the runner reads through the
        // reader that opens personal fields.
        let reader: Arc<dyn EventStore> = Arc::new(private_reader(state));
        let clock = Arc::new(SystemClock);
        let runner = SagaRunner::new(
            reader,
            state.commands().clone(),
            gateway,
            saga_store.clone(),
            clock.clone(),
            config.clone(),
        );
        let timers = TimerWorker::new(state.commands().clone(), saga_store, clock, config);
        let (stop, stopped) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(runner.run(stopped.clone())),
            tokio::spawn(timers.run(stopped)),
        ];
        Ok(SagaWorkers {
            stop,
            tasks,
            sandbox,
        })
    }

    /// Stops both workers (a batch in flight is dropped; the next start resumes from
    /// the checkpoint) and the in-process sandbox, if any.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        if let Some(sandbox) = self.sandbox {
            sandbox.shutdown().await;
        }
    }
}
