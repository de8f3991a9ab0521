//! `commerce bench NAME`: benchmarks that set up their own database, print a readable
//! summary, and end with one JSON line (`bench`, `unit`, `value`, `baseline`, and the
//! counts that prove the run was correct).

mod append;

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Bench {
    /// Event store appends: events/s and latency with 1, 16 and 256 concurrent
    /// appenders (one small event per append), against one INSERT per transaction.
    Append {
        /// How long each concurrency level (and the baseline) runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
}

pub async fn run(bench: Bench, database_url: &str) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark figures need `cargo run --release`");
    }
    match bench {
        Bench::Append { seconds } => append::run(database_url, Duration::from_secs(seconds)).await,
    }
}

/// Latency percentiles of a set of samples in microseconds.
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Percentiles {
    pub fn of(samples: &mut [u32]) -> Percentiles {
        if samples.is_empty() {
            return Percentiles {
                p50_ms: 0.0,
                p99_ms: 0.0,
            };
        }
        samples.sort_unstable();
        let at = |q: f64| {
            let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
            f64::from(samples[i]) / 1000.0
        };
        Percentiles {
            p50_ms: at(0.50),
            p99_ms: at(0.99),
        }
    }
}

/// Rounds a figure for display and JSON.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
