//! `commerce psp`: the sandbox payment provider as a service of its own, until
//! SIGTERM or ctrl-c. Its test tokens and switches are in `docs/operations.md`.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use clap::Args;
use sagas::psp::sandbox::{self, DEFAULT_LISTEN};
use sagas::psp::{Sandbox, SandboxConfig, WebhookTarget};

#[derive(Debug, Clone, Args)]
pub struct PspArgs {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, env = "COMMERCE_PSP_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// Share (0 to 1) of every POST answered 503 before anything is done.
    #[arg(long, default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Share (0 to 1) of requests on `tok_flaky` answered 503.
    #[arg(long, default_value_t = sandbox::FLAKY_FAIL_RATE)]
    pub flaky_fail_rate: f64,
    /// How long `tok_hang` holds its answer, in milliseconds.
    #[arg(long, default_value_t = sandbox::HANG_MS)]
    pub hang_ms: u64,
    /// Seed of the fault injection (same seed, same requests: same failures).
    #[arg(long, default_value_t = SandboxConfig::default().seed)]
    pub seed: u64,
    /// Most authorizations plus remembered idempotency keys held in memory.
    #[arg(long, default_value_t = sandbox::LEDGER_MAX_ENTRIES)]
    pub ledger_max_entries: usize,
    /// Send signed events (authorized, declined, captured, voided, refunded) here,
    /// e.g. http://127.0.0.1:8080/v1/payments/webhooks.
    #[arg(long, env = "COMMERCE_PSP_WEBHOOK_URL", requires = "webhook_secret")]
    pub webhook_url: Option<String>,
    /// The secret the events are signed with (the engine's
    /// COMMERCE_PSP_WEBHOOK_SECRET).
    #[arg(long, env = "COMMERCE_PSP_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<String>,
}

pub async fn run(args: PspArgs) -> Result<()> {
    let config = SandboxConfig {
        fail_rate: args.fail_rate,
        flaky_fail_rate: args.flaky_fail_rate,
        hang_ms: args.hang_ms,
        seed: args.seed,
        ledger_max_entries: args.ledger_max_entries,
        webhook: match (args.webhook_url, args.webhook_secret) {
            (Some(url), Some(secret)) => Some(WebhookTarget::new(url, secret.into_bytes())),
            _ => None,
        },
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::start_with(args.listen, config)
        .await
        .with_context(|| format!("cannot start the sandbox provider on {}", args.listen))?;
    println!("commerce: sandbox payment provider at {}", sandbox.url());
    api::serve::shutdown_signal().await;
    let stats = sandbox.stats();
    sandbox.shutdown().await;
    eprintln!(
        "commerce: sandbox stopped after {} requests ({} injected 503s, {} dropped answers, {} webhooks delivered)",
        stats.requests, stats.injected_unavailable, stats.dropped_responses, stats.webhooks_delivered
    );
    Ok(())
}
