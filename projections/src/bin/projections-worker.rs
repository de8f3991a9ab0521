//! A projection worker process for the crash tests: runs every projection against
//! `DATABASE_URL` until it is killed (or stdin closes).
//!
//! `PROJECTIONS_PAUSE_BEFORE_COMMIT_MS` makes every batch sleep inside its transaction
//! so that a kill lands mid-batch; `PROJECTIONS_BATCH_MAX_EVENTS` sets the batch size.

use std::time::Duration;

use eventstore::{PostgresConfig, PostgresStore};
use projections::{Runner, RunnerConfig};

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let Ok(url) = std::env::var("DATABASE_URL") else {
        eprintln!("projections-worker: DATABASE_URL is not set");
        std::process::exit(2);
    };
    let store = match PostgresStore::connect(PostgresConfig::new(url)).await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("projections-worker: {e}");
            std::process::exit(1);
        }
    };
    let mut config = RunnerConfig {
        owner: format!("worker-{}", std::process::id()),
        lease_retry_interval: Duration::from_millis(50),
        idle_poll_interval: Duration::from_millis(100),
        pause_before_commit: env_number("PROJECTIONS_PAUSE_BEFORE_COMMIT_MS")
            .map(Duration::from_millis),
        ..RunnerConfig::default()
    };
    if let Some(n) = env_number("PROJECTIONS_BATCH_MAX_EVENTS") {
        config.catch_up_batch_max_events = n as usize;
        config.live_batch_max_events = n as usize;
    }
    let runner = match Runner::start(store, config).await {
        Ok(runner) => runner,
        Err(e) => {
            eprintln!("projections-worker: {e}");
            std::process::exit(1);
        }
    };
    // Runs until killed; a closed stdin (the parent went away) stops it cleanly.
    let _ = tokio::task::spawn_blocking(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
    })
    .await;
    runner.stop().await;
}
