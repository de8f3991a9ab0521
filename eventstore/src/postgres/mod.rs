//! The PostgreSQL store.
//!
//! Appends go through one [`appender`] task per process (group commit under the
//! `log_head` lock); reads use a connection pool; a listener task follows
//! `LISTEN commerce_events` so subscribers wake as soon as a batch commits, with
//! polling as the fallback when notifications are lost.

mod appender;
pub(crate) mod batches;
mod listener;
mod migrate;
mod versions;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_postgres::{NoTls, Row};
use uuid::Uuid;

pub use migrate::{migrate, Migration, EVENTSTORE_MIGRATIONS};

use crate::prepare::{prepare, validate_stream_id};
use crate::types::{
    AppendRequest, AppendResult, Direction, LogFilter, Metadata, RecordedEvent, StoreError,
};
use crate::EventStore;

/// The channel the appender notifies on after each commit; the payload is the head.
pub(crate) const NOTIFY_CHANNEL: &str = "commerce_events";

/// The advisory lock key of the log's writers (`pg_advisory_xact_lock*`). A chained
/// batch (written without the `log_head` lock) holds it shared from its first
/// statement to its commit; a batch written under the `log_head` lock takes it
/// exclusively first. So a writer holding `log_head` never meets the uncommitted rows
/// of a chained batch, which would wait for that lock: the two could not deadlock.
/// Anything else that writes the log must take it exclusively too.
pub const LOG_WRITERS_LOCK_KEY: i64 = 0x636f_6d6d_6c6f_6777; // "commlogw"

/// How to reach PostgreSQL and how hard to push it.
#[derive(Debug, Clone)]
pub struct PostgresConfig {
    /// A libpq-style URL or key-value string.
    pub url: String,
    /// Most pooled connections for reads.
    pub pool_max_size: usize,
    /// Most events one group commit writes.
    pub append_batch_max_events: usize,

    /// Most appends waiting for the appender before new ones are refused.
    pub append_queue_max_requests: usize,
    /// How long an append may wait for room in the queue.
    pub append_enqueue_timeout: Duration,
    /// How long one group commit may take before its connection is dropped.
    pub append_batch_timeout: Duration,
    /// How long to wait for a connection to open.
    pub connect_timeout: Duration,
    /// Follow other processes' commits with `LISTEN`; without it, subscribers in this
    /// process notice them by polling only.
    pub listen_for_commits: bool,
    /// The record of kept answers that appends' guard keys are checked against
    /// ([`crate::AppendRequest::guards`]): a statement that takes the keys as one
    /// `uuid[]` parameter and returns, in its first column, those with a kept answer
    /// (an API's table of idempotency keys, say). Prepared on the first append that
    /// carries guards; without it, no guard key has an answer.
    pub kept_answers: Option<String>,
}

impl PostgresConfig {
    pub fn new(url: impl Into<String>) -> Self {
        PostgresConfig {
            url: url.into(),
            pool_max_size: 16,
            append_batch_max_events: 8_192,

            append_queue_max_requests: 65_536,
            append_enqueue_timeout: Duration::from_secs(5),
            append_batch_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            listen_for_commits: true,
            kept_answers: None,
        }
    }

    pub(crate) fn pg_config(&self) -> Result<tokio_postgres::Config, StoreError> {
        let mut config: tokio_postgres::Config = self
            .url
            .parse()
            .map_err(|e| StoreError::invalid("database_url", format!("{e}")))?;
        config.connect_timeout(self.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("commerce");
        }
        Ok(config)
    }
}

/// The PostgreSQL event store. Cloning shares the pool and the appender.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    appends: mpsc::Sender<Vec<appender::AppendJob>>,
    versions: mpsc::Sender<versions::VersionRead>,
    head: watch::Receiver<u64>,
    head_tx: Arc<watch::Sender<u64>>,
    enqueue_timeout: Duration,
    _tasks: Arc<Tasks>,
}

/// Background tasks that end with the last clone of the store.
struct Tasks {
    listener: Option<JoinHandle<()>>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        if let Some(listener) = &self.listener {
            listener.abort();
        }
    }
}

impl PostgresStore {
    /// Connects, runs the store's migrations and starts the appender and listener.
    pub async fn connect(config: PostgresConfig) -> Result<Self, StoreError> {
        let pg = config.pg_config()?;
        let (mut client, connection) = pg.connect(NoTls).await.map_err(db_error)?;
        let driver = tokio::spawn(connection);
        migrate(&mut client, "eventstore", EVENTSTORE_MIGRATIONS).await?;
        let head: i64 = client
            .query_one("SELECT position FROM log_head", &[])
            .await
            .map_err(db_error)?
            .get(0);
        drop(client);
        let _ = driver.await;

        let manager = Manager::from_config(
            pg.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_max_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(config.connect_timeout))
            .create_timeout(Some(config.connect_timeout))
            .build()
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;

        let (head_tx, head_rx) = watch::channel(head as u64);
        let head_tx = Arc::new(head_tx);
        let (appends, jobs) = mpsc::channel(config.append_queue_max_requests);
        tokio::spawn(appender::run(
            pg.clone(),
            config.clone(),
            jobs,
            head_tx.clone(),
        ));
        let (versions, reads) = mpsc::channel(versions::VERSION_QUEUE_MAX);
        tokio::spawn(versions::run(pool.clone(), reads));
        let listener = if config.listen_for_commits {
            Some(tokio::spawn(listener::run(pg, head_tx.clone())))
        } else {
            None
        };
        Ok(PostgresStore {
            pool,
            appends,
            versions,
            head: head_rx,
            head_tx,
            enqueue_timeout: config.append_enqueue_timeout,
            _tasks: Arc::new(Tasks { listener }),
        })
    }

    /// A pooled connection, for components that keep their own tables beside the log
    /// (projections, sagas).
    pub async fn connection(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))
    }

    /// The pool itself, shared with components that keep their own tables.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }
}

/// Moves the head watch forward (never back: notifications may arrive out of order).
pub(crate) fn advance_head(head: &watch::Sender<u64>, position: u64) {
    head.send_if_modified(|h| {
        let moved = position > *h;
        if moved {
            *h = position;
        }
        moved
    });
}

const SELECT_EVENT: &str =
    "SELECT position, stream_id, version, event_id, event_type, schema_version, \
                            data, metadata, recorded_at, hash FROM events";

/// Decodes one row of [`SELECT_EVENT`].
pub(crate) fn event_from_row(row: &Row) -> Result<RecordedEvent, StoreError> {
    // Straight from the column's text into the struct, without a `Value` between.
    let metadata: Metadata = row
        .try_get::<_, tokio_postgres::types::Json<Metadata>>(7)
        .map_err(|e| StoreError::Corrupt(format!("metadata: {e}")))?
        .0;
    let hash: &[u8] = row.get(9);
    let hash: [u8; 32] = hash
        .try_into()
        .map_err(|_| StoreError::Corrupt(format!("hash of length {}", hash.len())))?;
    let position: i64 = row.get(0);
    let version: i64 = row.get(2);
    let schema_version: i32 = row.get(5);
    let recorded_at: DateTime<Utc> = row.get(8);
    let event_id: Uuid = row.get(3);
    Ok(RecordedEvent {
        position: position as u64,
        stream_id: row.get(1),
        version: version as u64,
        event_id,
        event_type: row.get(4),
        schema_version: schema_version as u32,
        data: row.get(6),
        metadata,
        recorded_at,
        hash,
    })
}

/// Maps a driver error. No SQLSTATE means the connection itself failed. A server
/// that is unreachable (class 08), out of connections or resources (53), or shutting
/// down, crashing or starting up (57P) is `Unavailable` too: the request may succeed
/// later, so the edge answers 503 rather than 500.
pub fn db_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            let message = format!("{} ({code})", db.message());
            if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
                StoreError::Unavailable(message)
            } else {
                StoreError::Database(message)
            }
        }
        None => StoreError::Unavailable(e.to_string()),
    }
}

/// Clamps a caller's limit to what a query may return in one go.
fn sql_limit(limit: usize) -> i64 {
    limit.min(100_000) as i64
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(&self, request: AppendRequest) -> Result<AppendResult, StoreError> {
        self.append_batch(vec![request])
            .await
            .pop()
            .unwrap_or_else(|| Err(StoreError::Database("no result for an append".into())))
    }

    async fn append_batch(
        &self,
        requests: Vec<AppendRequest>,
    ) -> Vec<Result<AppendResult, StoreError>> {
        // Validation and JSON canonicalisation run here, on the caller's task, so the
        // single appender task only does what needs the lock.
        let mut results: Vec<Option<Result<AppendResult, StoreError>>> = Vec::new();
        let mut jobs = Vec::with_capacity(requests.len());
        let mut answers = Vec::with_capacity(requests.len());
        for request in requests {
            match prepare(request) {
                Ok(append) => {
                    let (reply, answer) = oneshot::channel();
                    jobs.push(appender::AppendJob { append, reply });
                    answers.push((results.len(), answer));
                    results.push(None);
                }
                Err(e) => results.push(Some(Err(e))),
            }
        }
        if !jobs.is_empty() {
            // One message, so the appends land in the same group commit, in order.
            let sent = tokio::time::timeout(self.enqueue_timeout, self.appends.send(jobs)).await;
            let failure = match sent {
                Ok(Ok(())) => None,
                Ok(Err(_)) => Some(StoreError::Unavailable("the appender has stopped".into())),
                Err(_) => Some(StoreError::Overloaded(
                    "the append queue stayed full".into(),
                )),
            };
            for (slot, answer) in answers {
                let result = match &failure {
                    Some(e) => Err(e.clone()),
                    None => answer.await.unwrap_or_else(|_| {
                        Err(StoreError::Unavailable(
                            "the appender stopped mid-append".into(),
                        ))
                    }),
                };
                results[slot] = Some(result);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(StoreError::Database("no result".into()))))
            .collect()
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        from_version: u64,
        direction: Direction,
        limit: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        validate_stream_id(stream_id)?;
        let client = self.connection().await?;
        let from = from_version.min(i64::MAX as u64) as i64;
        let sql = match direction {
            Direction::Forward => format!(
                "{SELECT_EVENT} WHERE stream_id = $1 AND version >= $2 ORDER BY version LIMIT $3"
            ),
            Direction::Backward => format!(
                "{SELECT_EVENT} WHERE stream_id = $1 AND version <= $2 ORDER BY version DESC LIMIT $3"
            ),
        };
        let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
        let rows = client
            .query(&statement, &[&stream_id, &from, &sql_limit(limit)])
            .await
            .map_err(db_error)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_all(
        &self,
        after: u64,
        limit: usize,
        category: Option<&str>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let client = self.connection().await?;
        let after = after.min(i64::MAX as u64) as i64;
        let rows = match category {
            None => {
                let sql = format!("{SELECT_EVENT} WHERE position > $1 ORDER BY position LIMIT $2");
                let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
                client.query(&statement, &[&after, &sql_limit(limit)]).await
            }
            Some(category) => {
                // A category is the range of stream ids from `{category}-` up to
                // `{category}.` ('.' follows '-'), which the (stream_id, version) index
                // serves; the planner picks it or the position order, whichever is
                // cheaper for the category's size. A stream id without '-' is its own
                // category. Planned on every call (a statement of its own, not the
                // cached one): a cached generic plan cannot know the category's size,
                // and categories range from a handful of streams to most of the log.
                let sql = format!(
                    "{SELECT_EVENT} WHERE position > $1 \
                     AND ((stream_id >= $3 AND stream_id < $4) OR stream_id = $5) \
                     ORDER BY position LIMIT $2"
                );
                let low = format!("{category}-");
                let high = format!("{category}.");
                client
                    .query(
                        sql.as_str(),
                        &[&after, &sql_limit(limit), &low, &high, &category],
                    )
                    .await
            }
        }
        .map_err(db_error)?;
        rows.iter().map(event_from_row).collect()
    }

    async fn read_all_matching(
        &self,
        after: u64,
        limit: usize,
        filter: &LogFilter<'_>,
        window: u64,
    ) -> Result<(Vec<RecordedEvent>, u64), StoreError> {
        // Every position up to the head is committed: the window ends there at most.
        let upto = after.saturating_add(window).min(self.head().await?);
        let limit = sql_limit(limit);
        if upto <= after || limit == 0 {
            return Ok((Vec::new(), after));
        }
        let client = self.connection().await?;
        // The filter is tested on each row of the range of positions: no index serves
        // it, so the plan (prepared once) is always that range.
        let sql = format!(
            "{SELECT_EVENT} WHERE position > $1 AND position <= $2 \
             AND (split_part(stream_id, '-', 1) = ANY($3) OR event_type = ANY($4)) \
             ORDER BY position LIMIT $5"
        );
        let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
        let to_i64 = |p: u64| p.min(i64::MAX as u64) as i64;
        let rows = client
            .query(
                &statement,
                &[
                    &to_i64(after),
                    &to_i64(upto),
                    &filter.categories,
                    &filter.event_types,
                    &limit,
                ],
            )
            .await
            .map_err(db_error)?;
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let looked = match events.last() {
            Some(last) if events.len() as i64 >= limit => last.position,
            _ => upto,
        };
        Ok((events, looked))
    }

    async fn stream_version(&self, stream_id: &str) -> Result<u64, StoreError> {
        // Read together with the other calls of the moment (see `versions`).
        let stopped = || StoreError::Unavailable("the version reader has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.versions
            .send(versions::VersionRead {
                stream_id: stream_id.to_owned(),
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.unwrap_or_else(|_| Err(stopped()))
    }

    async fn head(&self) -> Result<u64, StoreError> {
        // `log_head` is row-locked while a batch commits, but a plain read never waits
        // on a row lock: it sees the last committed head.
        let client = self.connection().await?;
        let statement = client
            .prepare_cached("SELECT position FROM log_head")
            .await
            .map_err(db_error)?;
        let head: i64 = client
            .query_one(&statement, &[])
            .await
            .map_err(db_error)?
            .get(0);
        advance_head(&self.head_tx, head as u64);
        Ok(head as u64)
    }

    async fn wait_for_head(&self, known: u64, timeout: Duration) -> Result<u64, StoreError> {
        let mut head = self.head.clone();
        if let Ok(Ok(h)) = tokio::time::timeout(timeout, head.wait_for(|h| *h > known)).await {
            return Ok(*h);
        }
        // Polling fallback: a notification may have been lost (listener reconnecting,
        // another process's commit): ask the database.
        self.head().await
    }
}
