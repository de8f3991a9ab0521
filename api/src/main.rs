//! `commerce`: the engine's binary. Serves the HTTP API, mints tokens, runs the demo
//! and the benchmarks; every subcommand is described by `commerce --help`.

mod audit;
mod bench;
mod privacy_cli;
mod projections_cli;
mod psp_cli;
mod status;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// See `mimalloc` in `api/Cargo.toml`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The server the project's scripts start (`scripts/pg.sh`).
const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5433/postgres";

#[derive(Parser)]
#[command(name = "commerce", version, about = "An event-sourced commerce engine")]
struct Cli {
    /// PostgreSQL server. `serve` without it runs a managed local PostgreSQL in its
    /// data directory; `status` and the benchmarks default to the scripts' server
    /// (postgres://postgres@127.0.0.1:5433/postgres; benchmarks create their own
    /// databases on it).
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    database_url: Option<String>,

    /// Worker threads of the engine's async runtime. Default: one per core, except
    /// `bench http-commands` and `bench flash-sale`, which leave a core to the
    /// PostgreSQL server they run beside (one fewer, at least one). With PostgreSQL
    /// on the same machine, fewer workers than cores can serve more commands: see
    /// docs/operations.md.
    #[arg(long, env = "COMMERCE_WORKER_THREADS", global = true)]
    worker_threads: Option<std::num::NonZeroUsize>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (JSON; OpenAPI document at /openapi.json).
    Serve(Box<api::serve::ServeArgs>),
    /// Mint an HS256 bearer token for local use, with the secret `serve` verifies.
    Token(api::token::TokenArgs),
    /// Run the demo: a shop that runs itself (catalog, shoppers, a flash sale)
    /// through the HTTP API, ending with a report checked against the event log.
    Demo(Box<api::demo::DemoArgs>),
    /// Show the event log's status: head position, streams, chain check of the tail.
    Status,
    /// Verify the hash chain, or export the log as verifiable NDJSON.
    Audit {
        #[command(subcommand)]
        audit: audit::Audit,
    },
    /// The read models: status, and rebuilds into shadow tables.
    Projections {
        #[command(subcommand)]
        projections: projections_cli::Projections,
    },
    /// Erase a customer's personal data (destroys their data key).
    Privacy {
        #[command(subcommand)]
        privacy: privacy_cli::Privacy,
    },
    /// Run the sandbox payment provider (an HTTP card processor with test tokens).
    Psp(psp_cli::PspArgs),
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
    if let Command::Token(args) = cli.command {
        return api::token::run(args);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match (&cli.worker_threads, &cli.command) {
        (Some(n), _) => n.get(),
        (None, Command::Bench { bench }) => bench.worker_threads(cores),
        (None, _) => cores,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let database_url = cli.database_url;
        let or_default = |url: Option<String>| url.unwrap_or_else(|| DEFAULT_DATABASE_URL.into());
        match cli.command {
            Command::Serve(args) => api::serve::run(*args, database_url).await,
            Command::Token(_) => Ok(()),
            Command::Demo(args) => api::demo::run(*args, database_url).await,
            Command::Status => status::run(&or_default(database_url)).await,
            Command::Audit { audit } => audit::run(audit, &or_default(database_url)).await,
            Command::Projections { projections } => {
                projections_cli::run(projections, &or_default(database_url)).await
            }
            Command::Bench { bench } => bench::run(bench, &or_default(database_url)).await,
            Command::Privacy { privacy } => {
                privacy_cli::run(privacy, &or_default(database_url)).await
            }
            Command::Psp(args) => psp_cli::run(args).await,
        }
    })
}
