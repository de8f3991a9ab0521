//! `commerce bench NAME`: benchmarks that set up their own database, print a readable
//! summary, and end with one JSON line (`bench`, `unit`, `value`, `baseline`, and the
//! counts that prove the run was correct).

mod append;
mod chaos;
mod checkout;
mod esdb_append;
mod flash_sale;
mod http_commands;
mod psp;
mod rebuild;
mod search;
mod verify;
mod wire;

use std::time::{Duration, Instant};

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
    /// Fault scenarios against a local engine under load: a TCP proxy delays, drops,
    /// resets or black-holes its connections to PostgreSQL and to the payment
    /// provider, then heals; per scenario, acknowledged, lost and duplicated commands
    /// and the recovery time. `value` is the scenarios passed.
    Chaos {
        /// Concurrent writers of stock receipts.
        #[arg(long, default_value_t = 8)]
        writers: usize,
        /// Carts checked out during each scenario.
        #[arg(long, default_value_t = 40)]
        checkouts: usize,
        /// How long each fault lasts.
        #[arg(long, default_value_t = 10)]
        fault_seconds: u64,
        /// Run only the scenarios whose name contains this (e.g. `postgres`, `reset`).
        #[arg(long)]
        only: Option<String>,
    },
    /// Completed checkouts/s end to end: 3-line carts checked out over HTTP, the saga
    /// and the sandbox payment provider (over a real socket) in this process; the log
    /// is checked afterwards (`oversold`, `violations` must be 0).
    Checkout {
        #[arg(long, default_value_t = 20_000)]
        checkouts: usize,
        /// Concurrent keep-alive connections posting checkouts.
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// 64 official EventStoreDB clients appending one small event per call through the
    /// gRPC endpoint, against 64 in-process appenders in the same run.
    EsdbAppend {
        /// How long each side runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
    },
    /// One SKU, 1,000 units, 20,000 concurrent one-unit reservations through the
    /// command pipeline, against `UPDATE ... WHERE qty >= 1` on a plain table.
    FlashSale {
        /// Concurrent clients sharing the 20,000 commands (20000: one per command).
        #[arg(long, default_value_t = 500)]
        clients: usize,
        /// Runs of the sale (fresh SKU each), pipeline and baseline in turn; the
        /// medians are reported.
        #[arg(long, default_value_t = 5)]
        trials: usize,
    },
    /// Add-to-cart commands over HTTP (a JWT per customer, an Idempotency-Key per
    /// request) from `connections` keep-alive connections, against the same command
    /// through the pipeline in-process.
    HttpCommands {
        /// How long the measured run lasts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent keep-alive connections of the load generator.
        #[arg(long, default_value_t = 64)]
        connections: usize,
    },
    /// Payments (authorize, then capture) through the engine's payment client
    /// against the sandbox provider with faults injected, against the same POSTs
    /// sent bare to a sandbox without faults; checks every payment moved money once.
    Psp {
        /// How long each side runs.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent payments.
        #[arg(long, default_value_t = 32)]
        clients: usize,
        /// Share of the provider's POSTs answered 503.
        #[arg(long, default_value_t = 0.1)]
        fail_rate: f64,
        /// Share of payments on a card whose first answers are lost.
        #[arg(long, default_value_t = 0.1)]
        lost_share: f64,
    },
    /// Rebuild every read model from a log of at least `events` events of the
    /// domain's workload, against reading and decoding the log alone.
    Rebuild {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
    },
    /// A generated catalog of `products` products in the log: the search index's
    /// build rate from the log, then query latency p50/p99 over a mix of keyword,
    /// typo, filter and facet queries, against exact one-word queries.
    Search {
        #[arg(long, default_value_t = 1_000_000)]
        products: usize,
        /// Timed queries (after a warm-up).
        #[arg(long, default_value_t = 2_000)]
        queries: usize,
        /// Keep the generated log in the database `bench_search_log_{products}` and,
        /// when it is there from an earlier run, use it instead of appending again
        /// (the index is still built from the log, and checked against it).
        #[arg(long)]
        keep_log: bool,
        /// Indexing threads of the index writer (default: the search index's own).
        #[arg(long)]
        writer_threads: Option<usize>,
    },
    /// Verify the hash chain and export NDJSON over a log of `events` events,
    /// against reading the log alone.
    Verify {
        #[arg(long, default_value_t = 2_000_000)]
        events: u64,
    },
}

impl Bench {
    /// The runtime's worker threads when `--worker-threads` is not given, on a
    /// machine of `cores`.
    ///
    /// The benchmarks whose process is the engine and its load generator alone
    /// leave a core to PostgreSQL, which runs on the same machine. On two cores, one
    /// worker served about 8% more commands over HTTP (14% more in-process) and
    /// `flash-sale` spent a third less CPU a reservation: a single worker wakes no
    /// other thread and frees its own memory, and PostgreSQL's backends find a core
    /// between their round trips. `checkout` (whose process also runs the sandbox
    /// payment provider and the saga) and `esdb-append` (the official client's gRPC
    /// stack) ran slower with one, so the others keep one worker per core. Figures
    /// in docs/benchmarks.md.
    pub fn worker_threads(&self, cores: usize) -> usize {
        match self {
            Bench::HttpCommands { .. } | Bench::FlashSale { .. } => cores.saturating_sub(1).max(1),
            _ => cores,
        }
    }
}

pub async fn run(bench: Bench, database_url: &str) -> Result<()> {
    if cfg!(debug_assertions) {
        eprintln!("warning: this is a debug build; benchmark figures need `cargo run --release`");
    }
    match bench {
        Bench::Append { seconds } => append::run(database_url, Duration::from_secs(seconds)).await,
        Bench::Chaos {
            writers,
            checkouts,
            fault_seconds,
            only,
        } => {
            let settings = api::chaos::scenarios::Settings {
                writers,
                checkouts,
                fault_for: Duration::from_secs(fault_seconds),
                engine_binary: Some(std::env::current_exe()?),
                ..Default::default()
            };
            chaos::run(database_url, &settings, only.as_deref()).await
        }
        Bench::Checkout {
            checkouts,
            connections,
        } => checkout::run(database_url, checkouts, connections).await,
        Bench::EsdbAppend { seconds } => {
            esdb_append::run(database_url, Duration::from_secs(seconds)).await
        }
        Bench::HttpCommands {
            seconds,
            connections,
        } => http_commands::run(database_url, Duration::from_secs(seconds), connections).await,
        Bench::FlashSale { clients, trials } => {
            flash_sale::run(database_url, clients, trials).await
        }
        Bench::Psp {
            seconds,
            clients,
            fail_rate,
            lost_share,
        } => psp::run(Duration::from_secs(seconds), clients, fail_rate, lost_share).await,
        Bench::Rebuild { events } => rebuild::run(database_url, events).await,
        Bench::Search {
            products,
            queries,
            keep_log,
            writer_threads,
        } => search::run(database_url, products, queries, keep_log, writer_threads).await,
        Bench::Verify { events } => verify::run(database_url, events).await,
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

/// The worker threads of the runtime the benchmark runs on.
pub fn runtime_workers() -> usize {
    tokio::runtime::Handle::current().metrics().num_workers()
}

/// Nanoseconds of CPU this process's threads have run, from Linux's per-thread
/// scheduler statistics (`getrusage` has no nanoseconds and the tick-based counters
/// are too coarse for a trial of a tenth of a second); `None` elsewhere. The tokio
/// workers live through the whole run, so a difference covers what they did.
pub(crate) fn process_cpu_ns() -> Option<u64> {
    let mut total = 0u64;
    for thread in std::fs::read_dir("/proc/self/task").ok()? {
        let Ok(thread) = thread else { continue };
        // A thread that ended meanwhile has no file any more: skip it.
        let Ok(stats) = std::fs::read_to_string(thread.path().join("schedstat")) else {
            continue;
        };
        total += stats.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(total)
}

/// The machine's cores, busy and in all, from the first line of `/proc/stat` (every
/// process, the kernel included; in the kernel's ticks); `None` elsewhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CoreTicks {
    busy: u64,
    total: u64,
}

impl CoreTicks {
    pub(crate) fn read() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().next()?.strip_prefix("cpu ")?;
        // user nice system idle iowait irq softirq steal (guest time is inside user).
        let ticks: Vec<u64> = line
            .split_whitespace()
            .take(8)
            .map(|n| n.parse().ok())
            .collect::<Option<_>>()?;
        let [user, nice, system, idle, iowait, irq, softirq, steal] = ticks[..] else {
            return None;
        };
        let busy = user + nice + system + irq + softirq + steal;
        Some(CoreTicks {
            busy,
            total: busy + idle + iowait,
        })
    }

    /// The share of the cores' time that was busy between `earlier` and this reading.
    pub(crate) fn busy_share_since(&self, earlier: &CoreTicks) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| busy as f64 / total as f64)
    }
}

/// CPU spent between [`CpuMeter::start`] and [`CpuMeter::stop`], by this process's
/// threads and by the machine's cores.
pub(crate) struct CpuMeter {
    process_ns: Option<u64>,
    cores: Option<CoreTicks>,
    started: Instant,
}

/// What [`CpuMeter`] measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct CpuSpent {
    /// This process's threads, in milliseconds.
    pub(crate) process_ms: f64,
    /// Every core's busy time (every process, the kernel included), in milliseconds:
    /// only meaningful on an otherwise quiet machine.
    pub(crate) machine_ms: f64,
    /// The share of the cores' time that was busy.
    pub(crate) busy_share: f64,
}

impl CpuSpent {
    /// The same spent on each of `units` (checkouts, events); `None` for none.
    pub(crate) fn per(self, units: u64) -> Option<CpuSpent> {
        let n = units as f64;
        (units > 0).then(|| CpuSpent {
            process_ms: self.process_ms / n,
            machine_ms: self.machine_ms / n,
            busy_share: self.busy_share,
        })
    }
}

impl CpuMeter {
    pub(crate) fn start() -> Self {
        CpuMeter {
            process_ns: process_cpu_ns(),
            cores: CoreTicks::read(),
            started: Instant::now(),
        }
    }

    /// `None` where the counters cannot be read (not Linux).
    pub(crate) fn stop(&self) -> Option<CpuSpent> {
        let wall = self.started.elapsed();
        let process_ns = process_cpu_ns()?.checked_sub(self.process_ns?)?;
        let busy_share = CoreTicks::read()?.busy_share_since(&self.cores?)?;
        let cores = std::thread::available_parallelism().ok()?.get() as f64;
        Some(CpuSpent {
            process_ms: process_ns as f64 / 1e6,
            machine_ms: wall.as_secs_f64() * 1e3 * cores * busy_share,
            busy_share,
        })
    }
}

/// Rounds to three decimals, for the JSON line.
pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Rounds a figure for display and JSON.
pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::{CoreTicks, CpuSpent};

    #[test]
    fn cpu_spent_per_unit_divides_the_times_and_keeps_the_busy_share() {
        let spent = CpuSpent {
            process_ms: 600.0,
            machine_ms: 900.0,
            busy_share: 0.75,
        };
        let each = spent.per(300).unwrap();
        assert_eq!(
            (each.process_ms, each.machine_ms, each.busy_share),
            (2.0, 3.0, 0.75)
        );
        assert!(spent.per(0).is_none(), "nothing done, no share");
    }

    #[test]
    fn the_cores_busy_share_counts_every_busy_column_and_not_idle_or_iowait() {
        let before = CoreTicks::parse("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        // +60 user, +10 nice, +20 system, +5 irq, +5 softirq: 100 busy; +90 idle,
        // +10 iowait: 100 not.
        let after = CoreTicks::parse("cpu  160 10 70 890 60 5 5 0 0 0\n").unwrap();
        assert_eq!(after.busy_share_since(&before), Some(0.5));
        assert_eq!(before.busy_share_since(&after), None, "counters only grow");
        assert_eq!(after.busy_share_since(&after), None, "no time passed");
    }

    #[test]
    fn a_stat_file_of_another_shape_gives_nothing() {
        assert!(CoreTicks::parse("").is_none());
        assert!(CoreTicks::parse("cpu0 1 2 3 4 5 6 7 8\n").is_none());
        assert!(CoreTicks::parse("cpu  1 2 3\n").is_none());
        assert!(CoreTicks::parse("cpu  1 2 x 4 5 6 7 8\n").is_none());
    }
}
