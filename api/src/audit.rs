//! `commerce audit`: verify the hash chain and export verifiable NDJSON
//! (`docs/audit.md` describes the format and how to check it independently).

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use api::time_travel::{aggregate_as_of, AsOf};
use chrono::{DateTime, Utc};
use clap::Subcommand;
use eventstore::audit::AuditTrail;
use eventstore::audit::{export, position_at, verify_log_postgres};
use eventstore::privacy::{KeyVault, PrivateStore};
use eventstore::{EventStore, PostgresConfig, PostgresStore};

#[derive(Subcommand)]
pub enum Audit {
    /// Recompute the hash chain and report the first position that does not match.
    Verify {
        /// The first position to check (it chains to the stored hash before it).
        #[arg(long, default_value_t = 1)]
        from: u64,
    },
    /// An aggregate's state as it was at a moment or version, replayed from its events,
    /// with the events that led there (JSON on standard output).
    Aggregate {
        /// The aggregate's stream, e.g. `order-<uuid>` or `inventory-<sku>`.
        stream: String,
        /// The state as of this moment (RFC 3339): events recorded at or before it.
        #[arg(long, conflicts_with = "version")]
        at: Option<String>,
        /// The state after this version of the stream.
        #[arg(long)]
        version: Option<u64>,
    },
    /// Write envelopes (with their hashes) as NDJSON to standard output or a file.
    Export {
        /// First event: a position or an RFC 3339 time (first event at or after it).
        #[arg(long, default_value = "1")]
        from: String,
        /// Last event, inclusive: a position or an RFC 3339 time; the head if absent.
        #[arg(long)]
        to: Option<String>,
        /// Only events of this stream category (e.g. `order`).
        #[arg(long)]
        category: Option<String>,
        /// Write here instead of standard output.
        #[arg(long)]
        output: Option<std::path::PathBuf>,
    },
}

pub async fn run(audit: Audit, database_url: &str) -> Result<()> {
    let store = PostgresStore::connect(PostgresConfig::new(database_url))
        .await
        .with_context(|| format!("cannot open the event store at {database_url}"))?;
    let pg = store.clone();
    let store: Arc<dyn EventStore> = Arc::new(store);
    match audit {
        Audit::Verify { from } => {
            let report = verify_log_postgres(&pg, from, |_, _| {}).await?;
            let verdict = match report.first_break {
                None => "intact".to_owned(),
                Some(p) => format!("BROKEN at position {p}"),
            };
            eprintln!(
                "verified {} events (positions {}..={}) at {:.0} events/s: {verdict}",
                report.checked,
                report.from,
                report.last_position,
                report.events_per_sec()
            );
            println!("{}", serde_json::to_string(&report)?);
            record_cli(
                &pg,
                "audit.verify",
                serde_json::json!({
                    "from": report.from, "checked": report.checked,
                    "first_break": report.first_break,
                }),
            )
            .await?;
            match report.first_break {
                Some(position) => bail!("the hash chain is broken at position {position}"),
                None => Ok(()),
            }
        }
        Audit::Aggregate {
            stream,
            at,
            version,
        } => {
            let as_of = match (at, version) {
                (Some(at), _) => AsOf::Time(
                    DateTime::parse_from_rfc3339(&at)
                        .with_context(|| format!("{at:?} is not an RFC 3339 time"))?
                        .with_timezone(&Utc),
                ),
                (None, Some(version)) => AsOf::Version(version),
                (None, None) => AsOf::Latest,
            };
            // Personal fields opened, or erased once their customer was forgotten.
            let reader = PrivateStore::new(
                store.clone(),
                KeyVault::connect(pg.pool().clone()).await?,
                commands::PERSONAL_DATA,
            );
            let found = aggregate_as_of(&reader, &stream, as_of).await?;
            eprintln!(
                "{} {} at version {} of {} ({} events listed, {} left out)",
                found.aggregate,
                found.stream_id,
                found.version,
                found.stream_version,
                found.events.len(),
                found.events_omitted
            );
            println!("{}", serde_json::to_string_pretty(&found)?);
            Ok(())
        }
        Audit::Export {
            from,
            to,
            category,
            output,
        } => {
            let from = bound(store.as_ref(), &from, Bound::From).await?;
            let to = match to {
                Some(to) => bound(store.as_ref(), &to, Bound::To).await?,
                None => store.head().await?,
            };
            let mut out: Box<dyn Write + Send> = match &output {
                Some(path) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(path)
                        .with_context(|| format!("cannot write {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            let written =
                export(store.as_ref(), from, to, category.as_deref(), out.as_mut()).await?;
            eprintln!("exported {written} events (positions {from}..={to})");
            record_cli(
                &pg,
                "audit.export",
                serde_json::json!({
                    "from": from, "to": to, "category": category, "events": written,
                    "output": output.as_ref().map(|p| p.display().to_string()),
                }),
            )
            .await
        }
    }
}

enum Bound {
    From,
    To,
}

/// A position, or the position of a moment: `--from` is the first event recorded at
/// or after it, `--to` the last event recorded before it.
async fn bound(store: &dyn EventStore, text: &str, which: Bound) -> Result<u64> {
    if let Ok(position) = text.parse::<u64>() {
        return Ok(position);
    }
    let at: DateTime<Utc> = DateTime::parse_from_rfc3339(text)
        .with_context(|| format!("{text:?} is neither a position nor an RFC 3339 time"))?
        .with_timezone(&Utc);
    let first_at_or_after = position_at(store, at).await?;
    Ok(match which {
        Bound::From => first_at_or_after,
        Bound::To => first_at_or_after.saturating_sub(1),
    })
}

/// The actor of a command-line operation: `cli:<user>` (the login running it).
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".to_owned());
    format!("cli:{user}")
}

/// Records a command-line operation in the audit trail (creating the trail's table
/// if needed). An operation that cannot be recorded fails the command: the work is
/// done, but the operator must know it is not on the record.
pub async fn record_cli(
    store: &PostgresStore,
    action: &str,
    details: serde_json::Value,
) -> Result<()> {
    let trail = AuditTrail::connect(store.pool().clone())
        .await
        .context("cannot open the audit trail")?;
    trail
        .record(&cli_actor(), action, &details)
        .await
        .context("cannot record the operation in the audit trail")?;
    Ok(())
}
