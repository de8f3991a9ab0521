//! `commerce`: the engine's binary. Serves the HTTP API, runs the demo, and runs the
//! benchmarks; every subcommand is described by `commerce --help`.

mod bench;
mod status;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The server the project's scripts start (`scripts/pg.sh`).
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5433/postgres";

#[derive(Parser)]
#[command(name = "commerce", version, about = "An event-sourced commerce engine")]
struct Cli {
    /// PostgreSQL server (benchmarks create their own databases on it).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, global = true)]
    database_url: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the demo: the event store's status until the shop demo lands.
    Demo,
    /// Show the event log's status: head position, streams, chain check of the tail.
    Status,
    /// Run a benchmark (release build; it sets up its own database).
    Bench {
        #[command(subcommand)]
        bench: bench::Bench,
    },
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("commerce: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Demo | Command::Status => status::run(&cli.database_url).await,
            Command::Bench { bench } => bench::run(bench, &cli.database_url).await,
        }
    })
}
