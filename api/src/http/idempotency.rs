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

use std::future::Future;
use std::time::Duration;

use axum::http::StatusCode;
use deadpool_postgres::Pool;
use eventstore::{Migration, StoreError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::problem::ApiError;

/// The API's own schema, applied with `eventstore::migrate` as component `api`.
pub const API_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "idempotency_keys",
    sql: include_str!("../../migrations/0001_idempotency_keys.sql"),
}];

/// Most lookups (or records) answered by one statement. Every command looks its key
/// up and records its response, so under load these are batched like the event
/// store's appends: one round trip and one commit for many requests.
pub const KEYS_BATCH_MAX: usize = 1_024;
/// Most lookups or records waiting for their batch.
pub const KEYS_QUEUE_MAX: usize = 65_536;
/// How long a request waits for room in a queue, or for its batch, in milliseconds.
pub const KEYS_WAIT_MS: u64 = 5_000;

/// Namespace of command ids derived from idempotency keys.
const COMMAND_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1d3f_0c52_8e4b_4a07_b6a9_2f5e_7c11_d0a3);

const LOOKUP_KEYS: &str = "SELECT k.i, t.fingerprint, t.status, t.response \
     FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(principal, key, i) \
     JOIN api_idempotency_keys t ON t.principal = k.principal AND t.key = k.key";
const INSERT_KEYS: &str =
    "INSERT INTO api_idempotency_keys (principal, key, fingerprint, status, response) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[], $4::int2[], $5::jsonb[]) \
     ON CONFLICT (principal, key) DO NOTHING";
const PURGE_KEYS: &str =
    "DELETE FROM api_idempotency_keys WHERE created_at < now() - make_interval(secs => $1)";

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
    principal: String,
    key: String,
    fingerprint: [u8; 32],
}

struct Record {
    principal: String,
    key: String,
    fingerprint: [u8; 32],
    status: i16,
    body: Value,
}

type Job<Q, A> = (Q, oneshot::Sender<Result<A, ApiError>>);

#[derive(Clone)]
pub struct IdempotencyKeys {
    pool: Pool,
    lookups: mpsc::Sender<Job<Lookup, Prior>>,
    records: mpsc::Sender<Job<Record, ()>>,
}

impl IdempotencyKeys {
    /// Runs the API's migrations on the log's database and starts the two tasks
    /// that batch lookups and records. The tasks end with the last clone.
    pub async fn connect(pool: Pool) -> Result<Self, StoreError> {
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let client: &mut tokio_postgres::Client = &mut client;
        eventstore::migrate(client, "api", API_MIGRATIONS).await?;
        let lookups = spawn_batcher({
            let pool = pool.clone();
            move |batch| lookup_batch(pool.clone(), batch)
        });
        let records = spawn_batcher({
            let pool = pool.clone();
            move |batch| record_batch(pool.clone(), batch)
        });
        Ok(IdempotencyKeys {
            pool,
            lookups,
            records,
        })
    }

    /// The command id for `key` of `principal`: the same on every retry.
    pub fn command_id(principal: &str, key: &str) -> Uuid {
        Uuid::new_v5(
            &COMMAND_ID_NAMESPACE,
            format!("{principal}\n{key}").as_bytes(),
        )
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

    pub async fn lookup(
        &self,
        principal: &str,
        key: &str,
        fingerprint: &[u8; 32],
    ) -> Result<Prior, ApiError> {
        let lookup = Lookup {
            principal: principal.to_owned(),
            key: key.to_owned(),
            fingerprint: *fingerprint,
        };
        submit(&self.lookups, lookup).await
    }

    /// Keeps the first response of a key (a concurrent first writer wins), and
    /// returns once it is committed.
    pub async fn record(
        &self,
        principal: &str,
        key: &str,
        fingerprint: &[u8; 32],
        status: StatusCode,
        body: &Value,
    ) -> Result<(), ApiError> {
        let record = Record {
            principal: principal.to_owned(),
            key: key.to_owned(),
            fingerprint: *fingerprint,
            status: status.as_u16() as i16,
            body: body.clone(),
        };
        submit(&self.records, record).await
    }

    /// Forgets keys older than `ttl`; returns how many.
    pub async fn purge_older_than(&self, ttl: Duration) -> Result<u64, ApiError> {
        let client = client(&self.pool).await?;
        client
            .execute(PURGE_KEYS, &[&ttl.as_secs_f64()])
            .await
            .map_err(db_error)
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
/// as one batch, and answers each. While a batch runs, the next one gathers.
fn spawn_batcher<Q, A, F, Fut>(run: F) -> mpsc::Sender<Job<Q, A>>
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

async fn lookup_batch(pool: Pool, batch: Vec<Lookup>) -> Result<Vec<Prior>, ApiError> {
    let client = client(&pool).await?;
    let statement = client.prepare_cached(LOOKUP_KEYS).await.map_err(db_error)?;
    let principals: Vec<&str> = batch.iter().map(|l| l.principal.as_str()).collect();
    let keys: Vec<&str> = batch.iter().map(|l| l.key.as_str()).collect();
    let rows = client
        .query(&statement, &[&principals, &keys])
        .await
        .map_err(db_error)?;
    let mut answers = vec![Prior::New; batch.len()];
    for row in rows {
        let ordinal: i64 = row.get(0);
        let Some(slot) = usize::try_from(ordinal - 1)
            .ok()
            .filter(|i| *i < batch.len())
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

async fn record_batch(pool: Pool, batch: Vec<Record>) -> Result<Vec<()>, ApiError> {
    let mut client = client(&pool).await?;
    let principals: Vec<&str> = batch.iter().map(|r| r.principal.as_str()).collect();
    let keys: Vec<&str> = batch.iter().map(|r| r.key.as_str()).collect();
    let fingerprints: Vec<&[u8]> = batch.iter().map(|r| r.fingerprint.as_slice()).collect();
    let statuses: Vec<i16> = batch.iter().map(|r| r.status).collect();
    let bodies: Vec<&Value> = batch.iter().map(|r| &r.body).collect();
    let tx = client.transaction().await.map_err(db_error)?;
    // The record is a shortcut, not the truth: the command's events were committed
    // durably by the log, and the command id makes a retry harmless even if a crash
    // loses the record. So the record's commit does not wait for its WAL flush (a
    // fsync per batch on the response path); it is visible to the next lookup at
    // once all the same.
    tx.batch_execute("SET LOCAL synchronous_commit TO OFF")
        .await
        .map_err(db_error)?;
    let statement = tx.prepare_cached(INSERT_KEYS).await.map_err(db_error)?;
    tx.execute(
        &statement,
        &[&principals, &keys, &fingerprints, &statuses, &bodies],
    )
    .await
    .map_err(db_error)?;
    tx.commit().await.map_err(db_error)?;
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
