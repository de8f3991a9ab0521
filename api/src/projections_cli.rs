//! `commerce projections`: the read side's status, and rebuilds for analysts.

use std::io::IsTerminal;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use eventstore::{PostgresConfig, PostgresStore};
use projections::{Projection, RebuildOptions, RebuildPhase};

#[derive(Subcommand)]
pub enum Projections {
    /// Each projection's checkpoint, lag, rate, state and last error.
    Status,
    /// Rebuild read models into shadow tables and swap them in while the live ones
    /// keep serving. Safe to interrupt: a re-run resumes the leftover shadow.
    Rebuild {
        /// Projections to rebuild: catalog, inventory, carts, orders, sales.
        names: Vec<String>,
        /// Rebuild every projection.
        #[arg(long)]
        all: bool,
        /// Drop a leftover shadow and start from position 0.
        #[arg(long)]
        fresh: bool,
    },
}

pub async fn run(command: Projections, database_url: &str) -> Result<()> {
    let store = PostgresStore::connect(PostgresConfig::new(database_url))
        .await
        .with_context(|| format!("cannot open the event store at {database_url}"))?;
    match command {
        Projections::Status => {
            let mut client = store.connection().await?;
            projections::migrate(&mut client).await?;
            drop(client);
            let statuses = projections::status(&store).await?;
            println!(
                "{:<10} {:<12} {:>12} {:>12} {:>10} {:>10}  error",
                "projection", "state", "checkpoint", "head", "lag", "events/s"
            );
            for s in &statuses {
                println!(
                    "{:<10} {:<12} {:>12} {:>12} {:>10} {:>10.0}  {}",
                    s.projection.to_string(),
                    format!("{:?}", s.state).to_lowercase(),
                    s.checkpoint,
                    s.head,
                    s.lag,
                    s.events_per_sec,
                    s.error.as_deref().unwrap_or("")
                );
            }
            println!("{}", serde_json::to_string(&statuses)?);
            Ok(())
        }
        Projections::Rebuild { names, all, fresh } => {
            let chosen: Vec<Projection> = if all {
                Projection::ALL.to_vec()
            } else {
                names
                    .iter()
                    .map(|n| n.parse::<Projection>())
                    .collect::<Result<_, _>>()?
            };
            if chosen.is_empty() {
                bail!("name the projections to rebuild, or pass --all");
            }
            let terminal = std::io::stderr().is_terminal();
            let options = RebuildOptions {
                fresh,
                ..RebuildOptions::default()
            };
            let mut last_line = std::time::Instant::now();
            let report = projections::rebuild(&store, &chosen, &options, |p| {
                // A line that redraws itself on a terminal; one line a second otherwise.
                if !terminal
                    && p.phase == RebuildPhase::Building
                    && last_line.elapsed().as_secs() < 1
                {
                    return;
                }
                last_line = std::time::Instant::now();
                let percent = 100.0 * p.events_done as f64 / p.events_total.max(1) as f64;
                let eta = p
                    .eta
                    .map_or("-".to_owned(), |d| format!("{}s", d.as_secs()));
                let line = format!(
                    "{:?}: {}/{} events ({percent:.0}%), {:.0} events/s, ETA {eta}",
                    p.phase, p.events_done, p.events_total, p.events_per_sec
                );
                if terminal {
                    eprint!("\r\x1b[2K{line}");
                } else {
                    eprintln!("{line}");
                }
            })
            .await?;
            if terminal {
                eprintln!();
            }
            eprintln!(
                "rebuilt {} from position {} to {}: {} events at {:.0} events/s",
                chosen
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
                report.resumed_from,
                report.position,
                report.events,
                report.events_per_sec
            );
            crate::audit::record_cli(
                &store,
                "projections.rebuild",
                serde_json::json!({
                    "projections": chosen.iter().map(|p| p.to_string()).collect::<Vec<_>>(),
                    "fresh": fresh,
                    "from": report.resumed_from,
                    "to": report.position,
                    "events": report.events,
                }),
            )
            .await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}
