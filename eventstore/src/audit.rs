//! What auditors do with the log: verify its hash chain over any range, find the
//! position of a moment, and export envelopes as NDJSON that another tool can verify
//! on its own (the recipe is in `docs/audit.md`). Also the audit trail: who ran the
//! operations that are not appends (rebuilds, exports, verifications, erasures),
//! since appends carry their actor in their own metadata.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::hash::{verify_chain, GENESIS_HASH};
use crate::postgres::{db_error, migrate, Migration};
use crate::types::{RecordedEvent, StoreError};
use crate::EventStore;

mod verify_copy;

pub use verify_copy::{verify_log_postgres, VERIFY_COPY_RANGE_EVENTS, VERIFY_COPY_READERS};

/// Events read per page while verifying or exporting.
pub const AUDIT_PAGE_EVENTS: usize = 10_000;

/// The outcome of a chain verification.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    /// The first position checked.
    pub from: u64,
    /// How many events were checked (up to and including a break).
    pub checked: u64,
    /// The last position checked.
    pub last_position: u64,
    /// The first position whose stored hash does not match its recomputed one, or
    /// that is missing from the log.
    pub first_break: Option<u64>,
    pub elapsed_secs: f64,
}

impl VerifyReport {
    pub fn intact(&self) -> bool {
        self.first_break.is_none()
    }

    pub fn events_per_sec(&self) -> f64 {
        self.checked as f64 / self.elapsed_secs.max(1e-9)
    }
}

/// The hash an event at `position` chains to: the stored hash of the event before it.
async fn hash_before(store: &dyn EventStore, position: u64) -> Result<[u8; 32], StoreError> {
    if position <= 1 {
        return Ok(GENESIS_HASH);
    }
    let before = store.read_all(position - 2, 1, None).await?;
    match before.first() {
        Some(e) if e.position == position - 1 => Ok(e.hash),
        _ => Err(StoreError::Corrupt(format!(
            "position {} is missing from the log",
            position - 1
        ))),
    }
}

/// Recomputes the chain from `from` (1: the whole log) to the head as it is when the
/// verification starts. Pages are read ahead while the previous page is hashed, and
/// each page is hashed on two threads: an event's expected hash depends only on the
/// stored hash before it, so a page splits into independent halves.
pub async fn verify_log(
    store: Arc<dyn EventStore>,
    from: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<VerifyReport, StoreError> {
    let started = Instant::now();
    let from = from.max(1);
    let head = store.head().await?;
    let mut previous = hash_before(store.as_ref(), from).await?;
    let (pages_tx, mut pages) =
        tokio::sync::mpsc::channel::<Result<Vec<RecordedEvent>, StoreError>>(2);
    let reader = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut after = from - 1;
            while after < head {
                let limit = AUDIT_PAGE_EVENTS.min((head - after) as usize);
                let page = store.read_all(after, limit, None).await;
                let last = match &page {
                    Ok(p) => p.last().map(|e| e.position),
                    Err(_) => None,
                };
                let failed = page.is_err();
                if pages_tx.send(page).await.is_err() || failed {
                    return;
                }
                match last {
                    Some(last) => after = last,
                    None => return,
                }
            }
        })
    };

    let mut report = VerifyReport {
        from,
        checked: 0,
        last_position: from - 1,
        first_break: None,
        elapsed_secs: 0.0,
    };
    while let Some(page) = pages.recv().await {
        let page = page?;
        let expected_first = report.last_position + 1;
        if page.first().map(|e| e.position) != Some(expected_first) {
            report.first_break = Some(expected_first);
            break;
        }
        if let Some(gap) = page.windows(2).find(|w| w[1].position != w[0].position + 1) {
            // Check up to the gap, then report the missing position.
            let upto = page
                .iter()
                .position(|e| e.position == gap[0].position)
                .map_or(0, |i| i + 1);
            let checked = verify_page(previous, page[..upto].to_vec()).await?;
            report.checked += upto as u64;
            report.last_position = gap[0].position;
            report.first_break = Some(checked.err().unwrap_or(gap[0].position + 1));
            break;
        }
        let count = page.len() as u64;
        let last = page.last().map_or(report.last_position, |e| e.position);
        let last_hash = page.last().map_or(previous, |e| e.hash);
        match verify_page(previous, page).await? {
            Ok(()) => {
                report.checked += count;
                report.last_position = last;
                previous = last_hash;
                progress(report.checked, last);
            }
            Err(position) => {
                report.checked += position - report.last_position;
                report.last_position = position;
                report.first_break = Some(position);
                break;
            }
        }
    }
    reader.abort();
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Verifies one page on two threads; `Err(position)` is the first break.
async fn verify_page(
    previous: [u8; 32],
    page: Vec<RecordedEvent>,
) -> Result<Result<(), u64>, StoreError> {
    tokio::task::spawn_blocking(move || {
        let mid = page.len() / 2;
        if mid == 0 {
            return verify_chain(previous, &page)
                .map(|_| ())
                .map_err(|b| b.position);
        }
        let (left, right) = page.split_at(mid);
        let right_previous = left[left.len() - 1].hash;
        let (l, r) = std::thread::scope(|scope| {
            let l = scope.spawn(|| verify_chain(previous, left));
            let r = verify_chain(right_previous, right);
            (l.join(), r)
        });
        // A panic while hashing is a bug, not a verdict on the log: pass it on.
        let l = l.unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        match (l, r) {
            (Ok(_), Ok(_)) => Ok(()),
            (Err(b), _) | (Ok(_), Err(b)) => Err(b.position),
        }
    })
    .await
    .map_err(|e| StoreError::Corrupt(format!("verification task failed: {e}")))
}

/// The first position whose event was recorded at or after `at`; the head + 1 when
/// there is none. Binary search: `recorded_at` never goes back in position order.
pub async fn position_at(store: &dyn EventStore, at: DateTime<Utc>) -> Result<u64, StoreError> {
    let head = store.head().await?;
    let (mut low, mut high) = (1u64, head + 1);
    while low < high {
        let mid = low + (high - low) / 2;
        let event = store.read_all(mid - 1, 1, None).await?;
        match event.first() {
            Some(e) if e.recorded_at >= at => high = mid,
            Some(_) => low = mid + 1,
            None => high = mid,
        }
    }
    Ok(low)
}

/// One line of an export: the envelope plus the hash it chains to.
#[derive(Serialize)]
struct ExportLine<'a> {
    #[serde(flatten)]
    event: &'a RecordedEvent,
    previous_hash: String,
}

/// Writes the events with positions in `from..=to` (optionally of one category) as
/// NDJSON, one envelope per line with its `previous_hash`, so each line can be checked
/// on its own even when a category filter leaves gaps. Returns the lines written.
pub async fn export(
    store: &dyn EventStore,
    from: u64,
    to: u64,
    category: Option<&str>,
    out: &mut (dyn Write + Send),
) -> Result<u64, StoreError> {
    let from = from.max(1);
    let mut previous = hash_before(store, from).await?;
    let mut after = from - 1;
    let mut written = 0;
    while after < to {
        let limit = AUDIT_PAGE_EVENTS.min((to - after) as usize);
        let page = store.read_all(after, limit, None).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            if category.is_none_or(|c| event.category() == c) {
                let line = ExportLine {
                    event,
                    previous_hash: hex::encode(previous),
                };
                serde_json::to_writer(&mut *out, &line)
                    .and_then(|_| out.write_all(b"\n").map_err(serde_json::Error::io))
                    .map_err(|e| StoreError::Unavailable(format!("writing the export: {e}")))?;
                written += 1;
            }
            previous = event.hash;
        }
    }
    out.flush()
        .map_err(|e| StoreError::Unavailable(format!("writing the export: {e}")))?;
    Ok(written)
}

/// The audit trail's schema (component `audit`).
pub const AUDIT_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "audit_trail",
    sql: include_str!("../migrations/audit/0001_audit_trail.sql"),
}];

/// Most trail entries one read returns.
pub const TRAIL_PAGE_MAX_ENTRIES: i64 = 1_000;

/// One operation in the audit trail.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrailEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `role:subject` of a token, or `cli:<user>` for the command line.
    pub actor: String,
    /// What was done: `projections.rebuild`, `audit.export`, `audit.verify`,
    /// `privacy.forget`, ...
    pub action: String,
    pub details: serde_json::Value,
}

/// The audit trail: a table of its own, append-only by use.
#[derive(Clone)]
pub struct AuditTrail {
    pool: deadpool_postgres::Pool,
}

impl AuditTrail {
    /// The trail in `pool`'s database, creating its table if needed.
    pub async fn connect(pool: deadpool_postgres::Pool) -> Result<Self, StoreError> {
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        migrate(&mut client, "audit", AUDIT_MIGRATIONS).await?;
        Ok(AuditTrail { pool })
    }

    /// The trail in a database whose `audit_trail` table exists already.
    pub fn new(pool: deadpool_postgres::Pool) -> Self {
        AuditTrail { pool }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// Records that `actor` did `action`; returns the entry's id.
    pub async fn record(
        &self,
        actor: &str,
        action: &str,
        details: &serde_json::Value,
    ) -> Result<i64, StoreError> {
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO audit_trail (actor, action, details) VALUES ($1, $2, $3) RETURNING id",
                &[&actor, &action, details],
            )
            .await
            .map_err(db_error)?;
        Ok(row.get(0))
    }

    /// Up to `limit` entries with an id above `after`, oldest first.
    pub async fn read(&self, after: i64, limit: i64) -> Result<Vec<TrailEntry>, StoreError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT id, at, actor, action, details FROM audit_trail WHERE id > $1 \
                 ORDER BY id LIMIT $2",
                &[&after, &limit.clamp(1, TRAIL_PAGE_MAX_ENTRIES)],
            )
            .await
            .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|row| TrailEntry {
                id: row.get(0),
                at: row.get(1),
                actor: row.get(2),
                action: row.get(3),
                details: row.get(4),
            })
            .collect())
    }
}
