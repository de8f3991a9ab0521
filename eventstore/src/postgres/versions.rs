//! Stream versions read together: concurrent [`crate::EventStore::stream_version`]
//! calls share one statement.
//!
//! A command that writes nothing (a load, a refused or repeated command) is answered
//! only once a read of its stream's version confirms the state it was decided on.
//! Under load thousands a second arrive from different streams at once (a checkout
//! makes about three). Each as a statement of its own costs a round trip, a pooled
//! connection, and a wake-up of a server backend for an index probe of microseconds.
//! Here the reads waiting in the queue share one statement for their streams
//! ([`STREAM_VERSIONS_SQL`], the probe the appender uses), with at most
//! [`READS_IN_FLIGHT`] statements out at once (see [`batches`]).
//!
//! A read is answered by a statement sent after it was asked for, so it sees every
//! commit that ended before the call, as a statement of its own would.

use std::collections::HashMap;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use super::{batches, db_error};
use crate::types::StoreError;

/// The latest version of each stream in a `text[]` of stream ids; streams with no
/// events have no row.
pub(crate) const STREAM_VERSIONS_SQL: &str =
    "SELECT s.id, v.version FROM unnest($1::text[]) AS s(id) \
     CROSS JOIN LATERAL (SELECT version FROM events WHERE stream_id = s.id \
                         ORDER BY version DESC LIMIT 1) AS v";

/// The latest version of one stream; no row for a stream with no events.
const STREAM_VERSION_SQL: &str =
    "SELECT version FROM events WHERE stream_id = $1 ORDER BY version DESC LIMIT 1";

/// Most statements of version reads running at once. Two keep a read from waiting
/// behind a slow one, and still leave the reads arriving meanwhile to gather.
const READS_IN_FLIGHT: usize = 2;
/// Most streams one statement reads.
const READ_BATCH_MAX: usize = 1_024;
/// Most reads waiting for a statement.
pub(crate) const VERSION_QUEUE_MAX: usize = 65_536;

pub(crate) struct VersionRead {
    pub stream_id: String,
    pub reply: oneshot::Sender<Result<u64, StoreError>>,
}

/// Answers reads until every sender is gone.
pub(crate) async fn run(pool: Pool, reads: mpsc::Receiver<VersionRead>) {
    batches::serve(reads, READS_IN_FLIGHT, READ_BATCH_MAX, move |batch| {
        let pool = pool.clone();
        async move { answer(&pool, batch).await }
    })
    .await;
}

async fn answer(pool: &Pool, batch: Vec<VersionRead>) {
    match versions(pool, &batch).await {
        Ok(versions) => {
            for read in batch {
                let version = versions.get(read.stream_id.as_str()).copied().unwrap_or(0);
                let _ = read.reply.send(Ok(version));
            }
        }
        Err(e) => {
            for read in batch {
                let _ = read.reply.send(Err(e.clone()));
            }
        }
    }
}

/// The latest version of each stream of `batch` that has events.
async fn versions(pool: &Pool, batch: &[VersionRead]) -> Result<HashMap<String, u64>, StoreError> {
    let mut ids: Vec<&str> = batch.iter().map(|r| r.stream_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let client = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
    if let [id] = ids[..] {
        // One stream (a hot stream's rounds, a quiet moment): the plain probe, which
        // the server plans in a fraction of the time of the array's.
        let statement = client
            .prepare_cached(STREAM_VERSION_SQL)
            .await
            .map_err(db_error)?;
        let row = client
            .query_opt(&statement, &[&id])
            .await
            .map_err(db_error)?;
        return Ok(row
            .map(|row| (id.to_owned(), row.get::<_, i64>(0) as u64))
            .into_iter()
            .collect());
    }
    let statement = client
        .prepare_cached(STREAM_VERSIONS_SQL)
        .await
        .map_err(db_error)?;
    let rows = client.query(&statement, &[&ids]).await.map_err(db_error)?;
    Ok(rows
        .iter()
        .map(|row| (row.get::<_, String>(0), row.get::<_, i64>(1) as u64))
        .collect())
}
