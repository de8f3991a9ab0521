//! `Idempotency-Key`: a client that retries a command with the same key gets the
//! first response, and the same key with a different request is refused (422).
//!
//! Two mechanisms, each covering what the other cannot:
//! - The command id of every command is derived from (principal, key), so the
//!   command side and the event store write a retried command at most once, even
//!   when two copies race or the process dies between writing and answering.
//! - The first response (and a fingerprint of the request: method, path and
//!   canonical body) is kept in the `api_idempotency_keys` table, so a retry is
//!   answered without running the command again, refusals included, and a key reused
//!   for another request is recognised even when it would write the same events.
//!
//! Responses that say "try again" (5xx, 409 conflict after retries, overload) are not
//! kept: retrying them with the same key is what a client should do.
//!
//! A key belongs to its principal (`role:sub`): the same key sent by another
//! customer is another request and never sees the first one's response. A retry that
//! arrives while the first request still runs in this process is answered 409 with
//! `Retry-After` ([`InFlight`]) instead of running the command a second time. Keys
//! expire after the configured TTL (24 h by default): an expired key is looked up as
//! new, and a periodic sweep deletes expired rows in bounded batches.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use deadpool_postgres::{ClientWrapper, Object, Pool};
use eventstore::{Migration, StoreError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};
use tokio_util::task::task_tracker::TaskTrackerToken;
use uuid::Uuid;

use super::problem::ApiError;

/// The API's own schema, applied with `eventstore::migrate` as component `api`.
pub const API_MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "idempotency_keys",
        sql: include_str!("../../migrations/0001_idempotency_keys.sql"),
    },
    Migration {
        version: 2,
        name: "idempotency_key_ids",
        sql: include_str!("../../migrations/0002_idempotency_key_ids.sql"),
    },
];

/// Most lookups (or records) answered by one statement. Every command looks its key
/// up and records its response, so under load these are batched like the event
/// store's appends: one round trip and one commit for many requests.
pub const KEYS_BATCH_MAX: usize = 1_024;
/// Most lookups or records waiting for their batch.
pub const KEYS_QUEUE_MAX: usize = 65_536;
/// How long a batch of records waits for more before it is written, in milliseconds.
pub const RECORD_GATHER_MS: u64 = 2;
/// How long a request waits for room in a queue, or for its batch, in milliseconds.
pub const KEYS_WAIT_MS: u64 = 5_000;

/// Namespace of command ids derived from idempotency keys.
const COMMAND_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1d3f_0c52_8e4b_4a07_b6a9_2f5e_7c11_d0a3);

/// Most expired keys one statement of a sweep deletes: short transactions that do
/// not hold up the inserts of live requests.
pub const PURGE_BATCH_ROWS: i64 = 5_000;
/// Most batches one sweep runs; what is left waits for the next sweep.
pub const PURGE_BATCHES_MAX: u32 = 200;
/// Most commands one process runs at once under idempotency keys; past it a new
/// key is answered 503 (this is far above what the command side admits).
pub const IN_FLIGHT_KEYS_MAX: usize = 65_536;
/// `Retry-After` of a retry that arrives while the first request still runs, in
/// seconds.
pub const IN_FLIGHT_RETRY_AFTER_SECS: u32 = 1;

// Rows older than the TTL ($2, seconds) are expired even before the sweep deletes
// them: the last column says whether a row found is still live. The lateral
// subquery with `LIMIT 1` can only be planned as one primary-key probe per key, so
// the statement is prepared once with a generic plan. (A join on the keys with the
// TTL in its `WHERE`, planned while the table was small, scanned every key younger
// than the TTL instead: 38 ms a lookup at 100,000 keys, against 0.3 ms.)
const LOOKUP_KEYS: &str = "SELECT k.i, t.fingerprint, t.status, t.response, \
            t.created_at >= now() - make_interval(secs => $2) \
     FROM unnest($1::uuid[]) WITH ORDINALITY AS k(id, i) \
     CROSS JOIN LATERAL (SELECT fingerprint, status, response, created_at \
                         FROM api_idempotency_keys \
                         WHERE key_id = k.id LIMIT 1) AS t";
// A batch of records is first written as plain rows: a key is recorded once, so a
// conflict is rare (a retry that raced its first request in another process, or a
// key whose expired row is not swept yet), and a plain insert checks the primary key
// while it inserts, where `ON CONFLICT` probes it first and inserts after.
const INSERT_KEYS: &str =
    "INSERT INTO api_idempotency_keys (key_id, principal, key, fingerprint, status, response) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::int2[], \
                          $6::json[])";
// A batch that met a recorded key is written again like this: a first writer wins,
// except over an expired row.
const UPSERT_KEYS: &str =
    "INSERT INTO api_idempotency_keys AS t (key_id, principal, key, fingerprint, status, \
                                           response) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::bytea[], $5::int2[], \
                          $6::json[]) \
     ON CONFLICT (key_id) DO UPDATE \
         SET fingerprint = excluded.fingerprint, status = excluded.status, \
             response = excluded.response, created_at = now() \
         WHERE t.created_at < now() - make_interval(secs => $7)";
const PURGE_KEYS: &str = "DELETE FROM api_idempotency_keys WHERE ctid = ANY(ARRAY( \
         SELECT ctid FROM api_idempotency_keys \
         WHERE created_at < now() - make_interval(secs => $1) LIMIT $2))";

/// The statement the event store checks guarded appends' keys with
/// (`PostgresConfig::kept_answers`): those of the keys in `$1` whose answer is kept
/// and not expired after `ttl`. Written like [`LOOKUP_KEYS`], so that it can only be
/// planned as one primary-key probe per key, whatever the table's statistics when the
/// appender prepares it. (With `key_id = ANY($1)` and the TTL in one `WHERE`, three of
/// five runs of `commerce bench http-commands` fell to 3,700–12,000 commands/s, where
/// this form held above 16,000.)
pub fn kept_answers_statement(ttl: Duration) -> String {
    format!(
        "SELECT k.id FROM unnest($1::uuid[]) AS k(id) \
         CROSS JOIN LATERAL (SELECT created_at FROM api_idempotency_keys \
                             WHERE key_id = k.id LIMIT 1) AS t \
         WHERE t.created_at >= now() - make_interval(secs => {})",
        ttl.as_secs_f64()
    )
}

/// What the table knows of a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Prior {
    /// Never seen (or its outcome was not kept).
    New,
    /// Seen with the same request: its first response.
    Answered { status: StatusCode, body: Value },
    /// Seen with another request.
    Mismatch,
}

struct Lookup {
    key_id: Uuid,
    fingerprint: [u8; 32],
}

struct Record {
    key_id: Uuid,
    principal: String,
    key: String,
    fingerprint: [u8; 32],
    status: i16,
    body: Value,
    /// Released once the record's batch is written (or failed): the key's claim in
    /// this process, so a retry meanwhile is answered from memory, and a token that
    /// keeps a graceful shutdown waiting for the write.
    _held: (InFlightClaim, TaskTrackerToken),
}

type Job<Q, A> = (Q, oneshot::Sender<Result<A, ApiError>>);

#[derive(Clone)]
pub struct IdempotencyKeys {
    pool: Pool,
    ttl: Duration,
    lookups: mpsc::Sender<Job<Lookup, Prior>>,
    records: mpsc::Sender<Job<Record, ()>>,
    in_flight: Arc<InFlight>,
}

/// The keys whose first request is running in this process, and, from its answer
/// until that answer is kept in the table, the answer itself. Across processes a
/// concurrent retry is not refused here, but the command id derived from the key
/// still makes the log write it once.
#[derive(Default)]
pub struct InFlight {
    keys: Mutex<HashMap<(String, String), Option<Answer>>>,
}

/// A first response given but perhaps not kept yet.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    fingerprint: [u8; 32],
    status: StatusCode,
    body: Value,
}

/// What a request finds of its key in this process.
pub enum Claim {
    /// The key is this request's until the claim is dropped.
    Claimed(InFlightClaim),
    /// A request with this key is running (the caller answers 409).
    Running,
    /// A request with this key was answered and its response is being kept: this
    /// is what the table will say.
    Answered(Prior),
}

/// A claim on a key while its request runs; dropping it releases the key.
pub struct InFlightClaim {
    owner: Arc<InFlight>,
    entry: Option<(String, String)>,
}

impl InFlightClaim {
    /// The request was answered: until the claim is dropped (once the answer is
    /// kept), retries get this answer from memory.
    pub fn answered(&self, fingerprint: &[u8; 32], status: StatusCode, body: &Value) {
        if let Some(entry) = &self.entry {
            if let Some(slot) = self.owner.lock().get_mut(entry) {
                *slot = Some(Answer {
                    fingerprint: *fingerprint,
                    status,
                    body: body.clone(),
                });
            }
        }
    }
}

impl Drop for InFlightClaim {
    fn drop(&mut self) {
        if let Some(entry) = self.entry.take() {
            self.owner.lock().remove(&entry);
        }
    }
}

impl InFlight {
    fn claim(
        this: &Arc<InFlight>,
        principal: &str,
        key: &str,
        fingerprint: &[u8; 32],
        max: usize,
    ) -> Result<Claim, ApiError> {
        let entry = (principal.to_owned(), key.to_owned());
        let mut keys = this.lock();
        match keys.get(&entry) {
            Some(None) => return Ok(Claim::Running),
            Some(Some(answer)) if &answer.fingerprint == fingerprint => {
                return Ok(Claim::Answered(Prior::Answered {
                    status: answer.status,
                    body: answer.body.clone(),
                }))
            }
            Some(Some(_)) => return Ok(Claim::Answered(Prior::Mismatch)),
            None => {}
        }
        if keys.len() >= max {
            return Err(StoreError::Overloaded("idempotency keys in flight".into()).into());
        }
        keys.insert(entry.clone(), None);
        Ok(Claim::Claimed(InFlightClaim {
            owner: this.clone(),
            entry: Some(entry),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Option<Answer>>> {
        // Each holder does one map operation: a panic cannot leave it half-changed.
        self.keys
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl IdempotencyKeys {
    /// Runs the API's migrations on the log's database and starts the two tasks
    /// that batch lookups and records. The tasks end with the last clone.
    pub async fn connect(pool: Pool, ttl: Duration) -> Result<Self, StoreError> {
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let client: &mut tokio_postgres::Client = &mut client;
        eventstore::migrate(client, "api", API_MIGRATIONS).await?;
        let ttl_secs = ttl.as_secs_f64();
        let lookups = spawn_batcher(None, {
            let session = Arc::new(Session::new(
                pool.clone(),
                // See LOOKUP_KEYS: its generic plan probes the primary key, and a
                // custom plan (which an array parameter would otherwise get on every
                // call) costs a planning per batch.
                "SET plan_cache_mode = force_generic_plan",
                &[LOOKUP_KEYS],
            ));
            move |batch| lookup_batch(session.clone(), batch, ttl_secs)
        });
        // Records are off the answer's path (a retry meanwhile is answered from
        // memory), so they gather for a while: fewer, larger statements.
        let records = spawn_batcher(Some(Duration::from_millis(RECORD_GATHER_MS)), {
            // The record is a shortcut, not the truth: the command's events were
            // committed durably by the log, and the command id makes a retry harmless
            // even if a crash loses the record. So its commit does not wait for its
            // WAL flush (a fsync per batch); it is visible to the next lookup at once
            // all the same. Set for the session, a batch of records is one statement
            // (two if it met a recorded key).
            let session = Arc::new(Session::new(
                pool.clone(),
                "SET synchronous_commit = off",
                &[INSERT_KEYS, UPSERT_KEYS],
            ));
            move |batch| {
                let session = session.clone();
                async move {
                    let kept = record_batch(session, batch, ttl_secs).await;
                    if let Err(e) = &kept {
                        // Only the retries' shortcut is lost (the command ids still
                        // make retries harmless).
                        tracing::warn!(detail = %e.detail, "cannot keep idempotent responses");
                    }
                    kept
                }
            }
        });
        Ok(IdempotencyKeys {
            pool,
            ttl,
            lookups,
            records,
            in_flight: Arc::default(),
        })
    }

    /// Claims `key` of `principal` for a request (with `fingerprint`) about to run,
    /// unless a request with that key runs in this process already, or was answered
    /// and its answer is still being kept.
    pub fn claim(
        &self,
        principal: &str,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<Claim, ApiError> {
        InFlight::claim(
            &self.in_flight,
            principal,
            key,
            fingerprint,
            IN_FLIGHT_KEYS_MAX,
        )
    }

    /// How long a key's first response is kept.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The command id for `key` of `principal`: the same on every retry.
    pub fn command_id(principal: &str, key: &str) -> Uuid {
        Uuid::new_v5(
            &COMMAND_ID_NAMESPACE,
            format!("{principal}\n{key}").as_bytes(),
        )
    }

    /// The row id of `key` of `principal` in the table: the first half of SHA-256
    /// over both (as migration 2 computes it for the rows before it).
    pub fn key_id(principal: &str, key: &str) -> Uuid {
        let mut hash = Sha256::new();
        hash.update(principal.as_bytes());
        hash.update(b"\n");
        hash.update(key.as_bytes());
        let digest: [u8; 32] = hash.finalize().into();
        let mut id = [0u8; 16];
        id.copy_from_slice(&digest[..16]);
        Uuid::from_bytes(id)
    }

    /// The fingerprint of a command request: method, path and (canonical) body.
    pub fn fingerprint(method: &str, path: &str, body: Option<&[u8; 32]>) -> [u8; 32] {
        let mut hash = Sha256::new();
        hash.update(method.as_bytes());
        hash.update(b" ");
        hash.update(path.as_bytes());
        if let Some(body) = body {
            hash.update(b"\n");
            hash.update(body);
        }
        hash.finalize().into()
    }

    /// What the table knows of the key whose row id is `key_id` ([`Self::key_id`]).
    pub async fn lookup(&self, key_id: Uuid, fingerprint: &[u8; 32]) -> Result<Prior, ApiError> {
        let lookup = Lookup {
            key_id,
            fingerprint: *fingerprint,
        };
        submit(&self.lookups, lookup).await
    }

    /// Keeps the first response of `key` of `principal` (row id `key_id`; a
    /// concurrent first writer wins) without waiting: the record joins the next batch,
    /// and `claim` and `token` are released once that batch is written. A batch that
    /// fails is logged; only a retry's shortcut is lost, since the command id derived
    /// from the key makes a retry harmless.
    ///
    /// No task waits on the write: a task and its wake-ups per command were a
    /// measurable part of an HTTP command's cost (see docs/benchmarks.md).
    #[allow(clippy::too_many_arguments)]
    pub fn keep(
        &self,
        key_id: Uuid,
        principal: String,
        key: String,
        fingerprint: &[u8; 32],
        status: StatusCode,
        body: Value,
        claim: InFlightClaim,
        token: TaskTrackerToken,
    ) {
        let record = Record {
            key_id,
            principal,
            key,
            fingerprint: *fingerprint,
            status: status.as_u16() as i16,
            body,
            _held: (claim, token),
        };
        // The answer goes unread: the batch logs its own failure.
        let job = (record, oneshot::channel().0);
        match self.records.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                // A full queue: wait for room on a task of its own, as long as a
                // lookup would wait.
                let records = self.records.clone();
                tokio::spawn(async move {
                    let wait = Duration::from_millis(KEYS_WAIT_MS);
                    if tokio::time::timeout(wait, records.send(job)).await.is_err() {
                        tracing::warn!("cannot keep an idempotent response: the queue is full");
                    }
                });
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                tracing::warn!("cannot keep an idempotent response: the keys have stopped");
            }
        }
    }

    /// Deletes expired keys in batches of [`PURGE_BATCH_ROWS`], at most
    /// [`PURGE_BATCHES_MAX`] batches; returns how many rows went.
    pub async fn purge_expired(&self) -> Result<u64, ApiError> {
        let client = client(&self.pool).await?;
        let statement = client.prepare_cached(PURGE_KEYS).await.map_err(db_error)?;
        let ttl_secs = self.ttl.as_secs_f64();
        let mut purged = 0;
        for _ in 0..PURGE_BATCHES_MAX {
            let deleted = client
                .execute(&statement, &[&ttl_secs, &PURGE_BATCH_ROWS])
                .await
                .map_err(db_error)?;
            purged += deleted;
            if deleted < PURGE_BATCH_ROWS as u64 {
                break;
            }
        }
        Ok(purged)
    }
}

/// Queues one job and waits for its answer, both bounded by [`KEYS_WAIT_MS`].
async fn submit<Q, A>(queue: &mpsc::Sender<Job<Q, A>>, job: Q) -> Result<A, ApiError> {
    let wait = Duration::from_millis(KEYS_WAIT_MS);
    let overloaded = || ApiError::from(StoreError::Overloaded("idempotency keys".into()));
    let (reply, answer) = oneshot::channel();
    tokio::time::timeout(wait, queue.send((job, reply)))
        .await
        .map_err(|_| overloaded())?
        .map_err(|_| ApiError::from(StoreError::Unavailable("idempotency keys stopped".into())))?;
    tokio::time::timeout(wait, answer)
        .await
        .map_err(|_| overloaded())?
        .map_err(|_| ApiError::from(StoreError::Unavailable("idempotency keys stopped".into())))?
}

/// A task that takes whatever jobs are queued (up to [`KEYS_BATCH_MAX`]), runs them
/// as one batch, and answers each. While a batch runs, the next one gathers; with a
/// `gather` window, a batch also waits that long for more jobs before it runs.
fn spawn_batcher<Q, A, F, Fut>(gather: Option<Duration>, run: F) -> mpsc::Sender<Job<Q, A>>
where
    Q: Send + 'static,
    A: Send + 'static,
    F: Fn(Vec<Q>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<Vec<A>, ApiError>> + Send,
{
    let (tx, mut rx) = mpsc::channel::<Job<Q, A>>(KEYS_QUEUE_MAX);
    tokio::spawn(async move {
        let mut jobs = Vec::with_capacity(KEYS_BATCH_MAX);
        while rx.recv_many(&mut jobs, KEYS_BATCH_MAX).await > 0 {
            if let Some(window) = gather {
                tokio::time::sleep(window).await;
                while jobs.len() < KEYS_BATCH_MAX {
                    match rx.try_recv() {
                        Ok(job) => jobs.push(job),
                        Err(_) => break,
                    }
                }
            }
            let (queries, replies): (Vec<Q>, Vec<_>) =
                std::mem::take(&mut jobs).into_iter().unzip();
            match run(queries).await {
                Ok(answers) => {
                    debug_assert_eq!(answers.len(), replies.len());
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(e) => {
                    for reply in replies {
                        let _ = reply.send(Err(e.clone()));
                    }
                }
            }
        }
    });
    tx
}

/// A connection taken out of the pool for one batcher, with a session setting of its
/// own (which must not reach the pool's other users) and its statements prepared:
/// each batch is then a single round trip. A broken connection is replaced at the
/// next batch.
struct Session {
    pool: Pool,
    setup: &'static str,
    sql: &'static [&'static str],
    open: tokio::sync::Mutex<Option<(ClientWrapper, Vec<Statement>)>>,
}

impl Session {
    fn new(pool: Pool, setup: &'static str, sql: &'static [&'static str]) -> Self {
        Session {
            pool,
            setup,
            sql,
            open: tokio::sync::Mutex::new(None),
        }
    }

    /// Runs the `which`th statement of the session: `Err` if no connection could be
    /// set up, else the statement's own outcome.
    async fn query(
        &self,
        which: usize,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Result<Vec<Row>, tokio_postgres::Error>, ApiError> {
        let mut open = self.open.lock().await;
        if open.as_ref().is_some_and(|(client, _)| client.is_closed()) {
            *open = None;
        }
        let (client, statements) = match open.as_mut() {
            Some(open) => open,
            None => {
                let client = Object::take(client(&self.pool).await?);
                client.batch_execute(self.setup).await.map_err(db_error)?;
                let mut statements = Vec::with_capacity(self.sql.len());
                for sql in self.sql {
                    statements.push(client.prepare(sql).await.map_err(db_error)?);
                }
                open.insert((client, statements))
            }
        };
        Ok(client.query(&statements[which], params).await)
    }
}

async fn lookup_batch(
    session: Arc<Session>,
    batch: Vec<Lookup>,
    ttl_secs: f64,
) -> Result<Vec<Prior>, ApiError> {
    let ids: Vec<Uuid> = batch.iter().map(|l| l.key_id).collect();
    let rows = session
        .query(0, &[&ids, &ttl_secs])
        .await?
        .map_err(db_error)?;
    let mut answers = vec![Prior::New; batch.len()];
    for row in rows {
        let ordinal: i64 = row.get(0);
        let live: bool = row.get(4);
        let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .filter(|i| *i < batch.len() && live)
        else {
            continue;
        };
        let stored: &[u8] = row.get(1);
        answers[slot] = if stored != batch[slot].fingerprint.as_slice() {
            Prior::Mismatch
        } else {
            let status: i16 = row.get(2);
            let status = u16::try_from(status)
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .ok_or_else(|| ApiError::internal(format!("stored status {status} is not HTTP")))?;
            Prior::Answered {
                status,
                body: row.get(3),
            }
        };
    }
    Ok(answers)
}

async fn record_batch(
    session: Arc<Session>,
    batch: Vec<Record>,
    ttl_secs: f64,
) -> Result<Vec<()>, ApiError> {
    let ids: Vec<Uuid> = batch.iter().map(|r| r.key_id).collect();
    let principals: Vec<&str> = batch.iter().map(|r| r.principal.as_str()).collect();
    let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
    let fingerprints: Vec<&[u8]> = batch.iter().map(|r| r.fingerprint.as_slice()).collect();
    let statuses: Vec<i16> = batch.iter().map(|r| r.status).collect();
    let bodies: Vec<&Value> = batch.iter().map(|r| &r.body).collect();
    let rows: [&(dyn ToSql + Sync); 6] =
        [&ids, &principals, &keys, &fingerprints, &statuses, &bodies];
    match session.query(0, &rows).await? {
        Ok(_) => {}
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let mut params = rows.to_vec();
            params.push(&ttl_secs);
            session.query(1, &params).await?.map_err(db_error)?;
        }
        Err(e) => return Err(db_error(e)),
    }
    Ok(vec![(); batch.len()])
}

async fn client(pool: &Pool) -> Result<deadpool_postgres::Object, ApiError> {
    pool.get()
        .await
        .map_err(|e| ApiError::from(StoreError::Unavailable(e.to_string())))
}

fn db_error(e: tokio_postgres::Error) -> ApiError {
    eventstore::db_error(e).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_are_stable_per_principal_and_key() {
        let a = IdempotencyKeys::command_id("customer:alice", "k1");
        assert_eq!(a, IdempotencyKeys::command_id("customer:alice", "k1"));
        assert_ne!(a, IdempotencyKeys::command_id("customer:bob", "k1"));
        assert_ne!(a, IdempotencyKeys::command_id("customer:alice", "k2"));
    }

    fn claimed(claim: Result<Claim, ApiError>) -> Option<InFlightClaim> {
        match claim.expect("claim") {
            Claim::Claimed(claim) => Some(claim),
            Claim::Running | Claim::Answered(_) => None,
        }
    }

    #[test]
    fn a_key_is_claimed_once_until_released_and_per_principal() {
        let in_flight = Arc::new(InFlight::default());
        let fp = [1u8; 32];
        let first = claimed(InFlight::claim(&in_flight, "customer:alice", "k", &fp, 10))
            .expect("the first claim");
        assert!(matches!(
            InFlight::claim(&in_flight, "customer:alice", "k", &fp, 10),
            Ok(Claim::Running)
        ));
        // The same key of another principal is another request.
        let bobs = claimed(InFlight::claim(&in_flight, "customer:bob", "k", &fp, 10));
        assert!(bobs.is_some());
        drop(first);
        assert!(claimed(InFlight::claim(&in_flight, "customer:alice", "k", &fp, 10)).is_some());
        // Bounded: past the most in flight, a new key is refused as overload.
        let held: Vec<_> = (0..9)
            .map(|i| InFlight::claim(&in_flight, "p", &i.to_string(), &fp, 10).unwrap())
            .collect();
        let refused = InFlight::claim(&in_flight, "p", "one-more", &fp, 10).err();
        assert_eq!(refused.map(|e| e.code), Some("overloaded"));
        drop(held);
    }

    #[test]
    fn an_answer_being_kept_is_given_to_a_retry_from_memory() {
        let in_flight = Arc::new(InFlight::default());
        let fp = [1u8; 32];
        let claim = claimed(InFlight::claim(&in_flight, "customer:alice", "k", &fp, 10))
            .expect("the first claim");
        let body = serde_json::json!({"cart_id": "c1"});
        claim.answered(&fp, StatusCode::CREATED, &body);
        match InFlight::claim(&in_flight, "customer:alice", "k", &fp, 10) {
            Ok(Claim::Answered(prior)) => assert_eq!(
                prior,
                Prior::Answered {
                    status: StatusCode::CREATED,
                    body
                }
            ),
            _ => panic!("the answer, from memory"),
        }
        // The same key with another request is a mismatch.
        assert!(matches!(
            InFlight::claim(&in_flight, "customer:alice", "k", &[2u8; 32], 10),
            Ok(Claim::Answered(Prior::Mismatch))
        ));
        // Once kept (the claim dropped), the table answers: the key is free here.
        drop(claim);
        assert!(claimed(InFlight::claim(&in_flight, "customer:alice", "k", &fp, 10)).is_some());
    }

    #[test]
    fn fingerprints_cover_method_path_and_body() {
        let body = [7u8; 32];
        let base = IdempotencyKeys::fingerprint("POST", "/v1/carts", Some(&body));
        assert_ne!(
            base,
            IdempotencyKeys::fingerprint("PUT", "/v1/carts", Some(&body))
        );
        assert_ne!(
            base,
            IdempotencyKeys::fingerprint("POST", "/v1/cart", Some(&body))
        );
        assert_ne!(
            base,
            IdempotencyKeys::fingerprint("POST", "/v1/carts", None)
        );
    }
}
