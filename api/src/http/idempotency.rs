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

use std::time::Duration;

use axum::http::StatusCode;
use deadpool_postgres::Pool;
use eventstore::{Migration, StoreError};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::problem::ApiError;

/// The API's own schema, applied with `eventstore::migrate` as component `api`.
pub const API_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "idempotency_keys",
    sql: include_str!("../../migrations/0001_idempotency_keys.sql"),
}];

/// Namespace of command ids derived from idempotency keys.
const COMMAND_ID_NAMESPACE: Uuid = Uuid::from_u128(0x1d3f_0c52_8e4b_4a07_b6a9_2f5e_7c11_d0a3);

const SELECT_KEY: &str =
    "SELECT fingerprint, status, response FROM api_idempotency_keys WHERE principal = $1 AND key = $2";
const INSERT_KEY: &str =
    "INSERT INTO api_idempotency_keys (principal, key, fingerprint, status, response) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (principal, key) DO NOTHING";
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

#[derive(Clone)]
pub struct IdempotencyKeys {
    pool: Pool,
}

impl IdempotencyKeys {
    /// Runs the API's migrations on the log's database.
    pub async fn connect(pool: Pool) -> Result<Self, StoreError> {
        let mut client = pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let client: &mut tokio_postgres::Client = &mut client;
        eventstore::migrate(client, "api", API_MIGRATIONS).await?;
        Ok(IdempotencyKeys { pool })
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
        let client = self.client().await?;
        let statement = client.prepare_cached(SELECT_KEY).await.map_err(db_error)?;
        let Some(row) = client
            .query_opt(&statement, &[&principal, &key])
            .await
            .map_err(db_error)?
        else {
            return Ok(Prior::New);
        };
        let stored: &[u8] = row.get(0);
        if stored != fingerprint.as_slice() {
            return Ok(Prior::Mismatch);
        }
        let status: i16 = row.get(1);
        let status = u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .ok_or_else(|| ApiError::internal(format!("stored status {status} is not HTTP")))?;
        Ok(Prior::Answered {
            status,
            body: row.get(2),
        })
    }

    /// Keeps the first response of a key; a concurrent first writer wins.
    pub async fn record(
        &self,
        principal: &str,
        key: &str,
        fingerprint: &[u8; 32],
        status: StatusCode,
        body: &Value,
    ) -> Result<(), ApiError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(INSERT_KEY).await.map_err(db_error)?;
        let status = status.as_u16() as i16;
        client
            .execute(
                &statement,
                &[&principal, &key, &fingerprint.as_slice(), &status, body],
            )
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Forgets keys older than `ttl`; returns how many.
    pub async fn purge_older_than(&self, ttl: Duration) -> Result<u64, ApiError> {
        let client = self.client().await?;
        client
            .execute(PURGE_KEYS, &[&ttl.as_secs_f64()])
            .await
            .map_err(db_error)
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, ApiError> {
        self.pool
            .get()
            .await
            .map_err(|e| ApiError::from(StoreError::Unavailable(e.to_string())))
    }
}

fn db_error(e: tokio_postgres::Error) -> ApiError {
    let error = match e.as_db_error() {
        Some(db) => StoreError::Database(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Unavailable(e.to_string()),
    };
    error.into()
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
