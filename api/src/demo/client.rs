//! The demo's HTTP client: what a shop's front end does against the public API.
//! Every command carries a fresh `Idempotency-Key`, and an answer that invites a
//! retry (a 5xx, a `conflict`, a 429) is retried with the same key, so a command is
//! carried out at most once however often it is sent.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::{Method, StatusCode};
use serde_json::Value;
use uuid::Uuid;

use crate::http::Role;

/// Most sends of one command (the first and its retries).
const COMMAND_ATTEMPTS_MAX: u32 = 20;
/// Longest pause a `Retry-After` may ask for before the next send.
const RETRY_AFTER_MAX: Duration = Duration::from_secs(5);
/// First pause before a retry; doubled for each further one.
const RETRY_BACKOFF_FIRST: Duration = Duration::from_millis(25);
/// Tokens outlive the longest demo run.
const TOKEN_TTL_SECS: u64 = 4 * 3_600;
/// A request that takes longer than this counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer of the API: its status and JSON body (`Null` when it had none).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub body: Value,
    /// The `Retry-After` of a 429 or 503, in whole seconds.
    pub retry_after: Option<Duration>,
}

impl Answer {
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }

    /// The problem type of a refusal (`conflict`, `out-of-stock`, …).
    pub fn problem_type(&self) -> Option<&str> {
        let kind = self.body.get("type")?.as_str()?;
        Some(kind.rsplit('/').next().unwrap_or(kind))
    }

    /// An id the command answered with (`ids.order_id`, …).
    pub fn id(&self, name: &str) -> Option<&str> {
        self.body.get("ids")?.get(name)?.as_str()
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    secret: Vec<u8>,
}

impl Client {
    pub fn new(base: String, secret: Vec<u8>) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(256)
            .build()?;
        Ok(Client { http, base, secret })
    }

    pub fn token(&self, role: Role, sub: impl Into<String>) -> Result<String> {
        crate::token::mint(&self.secret, role, sub.into(), TOKEN_TTL_SECS)
    }

    /// A query: GET `path` with `token`.
    pub async fn get(&self, token: &str, path: &str) -> Result<Answer> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(token)
            .send()
            .await
            .with_context(|| format!("GET {path}"))?;
        answer(response).await
    }

    /// A command, retried with the same idempotency key while the answer invites it.
    pub async fn command(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let key = Uuid::new_v4().to_string();
        let mut backoff = RETRY_BACKOFF_FIRST;
        for attempt in 1..=COMMAND_ATTEMPTS_MAX {
            let mut request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(token)
                .header("Idempotency-Key", &key);
            if let Some(body) = body {
                request = request.json(body);
            }
            let answer = match request.send().await {
                Ok(response) => answer(response).await?,
                Err(e) if attempt < COMMAND_ATTEMPTS_MAX => {
                    tracing::debug!(path, error = %e, "command not answered; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(RETRY_AFTER_MAX);
                    continue;
                }
                Err(e) => return Err(e).with_context(|| format!("{method} {path}")),
            };
            let retry = answer.status.is_server_error()
                || answer.status == StatusCode::TOO_MANY_REQUESTS
                || (answer.status == StatusCode::CONFLICT
                    && answer.problem_type() == Some("conflict"));
            if !retry || attempt == COMMAND_ATTEMPTS_MAX {
                return Ok(answer);
            }
            // Rate limits say when to come back; otherwise back off exponentially.
            let pause = answer.retry_after.unwrap_or(backoff).min(RETRY_AFTER_MAX);
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(RETRY_AFTER_MAX);
        }
        bail!("{method} {path}: no answer after {COMMAND_ATTEMPTS_MAX} attempts")
    }

    /// A command that must succeed (seeding): any refusal is an error.
    pub async fn must(
        &self,
        token: &str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Answer> {
        let answer = self.command(token, method.clone(), path, body).await?;
        if !answer.is_success() {
            bail!(
                "{method} {path} answered {}: {}",
                answer.status,
                answer.body
            );
        }
        Ok(answer)
    }
}

async fn answer(response: reqwest::Response) -> Result<Answer> {
    let status = response.status();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let bytes = response.bytes().await.context("reading an answer")?;
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    };
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}
