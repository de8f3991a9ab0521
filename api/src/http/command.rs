//! The path every command request takes: look its `Idempotency-Key` up, run the
//! command with a command id derived from the key, keep the response, answer.

use std::collections::BTreeMap;
use std::future::Future;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::{CommandContext, Committed};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::extract::IdempotencyKey;
use super::idempotency::{Claim, IdempotencyKeys, Prior};
use super::problem::ApiError;
use super::{json_response, metrics, AppState, Principal};

/// The header on a response that repeats the first response to its key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest a client waits for a command's answer, in milliseconds. Each store call
/// of a command is bounded (5 s), but a command may queue behind a round that waits
/// on its own call, and then record its response: past this the client gets `503
/// timeout` at once, while the command finishes (or gives up) in the background and
/// a retry with the same key gets its answer (or `409` while it still runs).
pub const COMMAND_ANSWER_MAX_MS: u64 = 7_000;

/// What a command wrote.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CommandAccepted {
    /// The ids the command touched, by name (`cart_id`, `order_id`, `product_id`,
    /// `sku`, ...).
    #[schema(value_type = std::collections::HashMap<String, String>)]
    pub ids: BTreeMap<&'static str, String>,
    /// The global log position of the last event written; wait for a read model to
    /// pass it to read your own write. Absent if the command wrote nothing.
    pub position: Option<u64>,
    /// Each stream written, with its version afterwards.
    pub streams: Vec<StreamWritten>,
    /// Whether every command of the pipeline appended events of its own just now (none
    /// was a repeat answered with its first outcome, none decided to no events). Not
    /// part of the response.
    #[serde(skip)]
    #[schema(ignore)]
    fresh: Option<bool>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StreamWritten {
    pub stream_id: String,
    pub version: u64,
}

impl CommandAccepted {
    pub fn new() -> Self {
        CommandAccepted {
            ids: BTreeMap::new(),
            position: None,
            streams: Vec::new(),
            fresh: None,
        }
    }

    /// True if every command of the pipeline appended events of its own just now.
    pub fn wrote_fresh(&self) -> bool {
        self.fresh == Some(true)
    }

    pub fn id(mut self, name: &'static str, value: impl ToString) -> Self {
        self.ids.insert(name, value.to_string());
        self
    }

    /// Adds what one command of the pipeline wrote.
    pub fn wrote<E>(mut self, committed: &Committed<E>) -> Self {
        self.fresh = Some(
            self.fresh.unwrap_or(true) && committed.positions.is_some() && !committed.replayed,
        );
        if let Some(positions) = committed.positions {
            self.position = Some(
                self.position
                    .map_or(positions.last, |p| p.max(positions.last)),
            );
        }
        self.streams.push(StreamWritten {
            stream_id: committed.stream_id.clone(),
            version: committed.stream_version,
        });
        self
    }
}

/// Everything a command request carries besides its body: who sends it (401 if
/// nobody), its `Idempotency-Key` (400 if missing), the request id (the command's
/// correlation id when it is a UUID), and the method and path it was sent to.
pub struct CommandMeta {
    pub principal: Principal,
    pub key: IdempotencyKey,
    request_id: Option<Uuid>,
    method: Method,
    path: String,
    check: KeyCheck,
}

impl FromRequestParts<AppState> for CommandMeta {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // The address's limit was applied by the access layer (`policy`).
        let principal = Principal::from_request_parts(parts, state).await?;
        state.principal_limiter().admit(&principal.actor())?;
        let key = IdempotencyKey::from_request_parts(parts, state).await?;
        let request_id = parts
            .headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Uuid::parse_str(v).ok());
        Ok(CommandMeta {
            principal,
            key,
            request_id,
            method: parts.method.clone(),
            path: parts.uri.path().to_owned(),
            check: KeyCheck::Before,
        })
    }
}

impl CommandMeta {
    /// For a command whose every append carries the key as its guard
    /// (`CommandContext::guard`; the command side passes it on to each append), which
    /// the event store refuses if the key has a kept answer: [`Self::run`] then looks
    /// the key up only when the command did not append events of its own (refused by
    /// the domain or by that guard, a repeat, nothing to write), not on the way of
    /// every new request. The lookup is a trip through the batcher and the database
    /// that a request would otherwise wait for (see docs/benchmarks.md).
    pub fn guarded(mut self) -> Self {
        self.check = KeyCheck::Guarded;
        self
    }

    /// Runs `execute` once per idempotency key and answers with its response.
    /// `command` names the command for metrics; `body` is the request body's
    /// fingerprint, if it has one. The key is looked up before the command runs,
    /// unless the command is [`Self::guarded`].
    pub async fn run<F, Fut>(
        self,
        state: AppState,
        command: &'static str,
        body: Option<&[u8; 32]>,
        execute: F,
    ) -> Response
    where
        F: FnOnce(CommandContext) -> Fut,
        Fut: Future<Output = Result<(StatusCode, CommandAccepted), ApiError>> + Send + 'static,
    {
        let check = self.check;
        let scope = self.principal.actor();
        let key = self.key.0.as_str();
        let fingerprint = IdempotencyKeys::fingerprint(self.method.as_str(), &self.path, body);
        let keys = state.idempotency();
        // Claimed before the lookup: a retry that arrives once the first request has
        // released its claim finds the first response recorded.
        let deadline =
            tokio::time::Instant::now() + std::time::Duration::from_millis(COMMAND_ANSWER_MAX_MS);
        let claim = match keys.claim(&scope, key, &fingerprint) {
            Ok(Claim::Claimed(claim)) => claim,
            Ok(Claim::Running) => {
                metrics::command_outcome(command, "idempotency-key-in-flight");
                return key_in_flight().into_response();
            }
            Ok(Claim::Answered(prior)) => return answer_prior(command, prior),
            Err(e) => {
                metrics::command_outcome(command, e.code);
                return e.into_response();
            }
        };
        // The key's row id, for its lookup now and its record later.
        let key_id = IdempotencyKeys::key_id(&scope, key);
        if check == KeyCheck::Before {
            match keys.lookup(key_id, &fingerprint).await {
                Ok(Prior::New) => {}
                Ok(prior) => return answer_prior(command, prior),
                Err(e) => {
                    metrics::command_outcome(command, e.code);
                    return e.into_response();
                }
            }
        }
        let command_id = IdempotencyKeys::command_id(&scope, key);
        let context = CommandContext {
            command_id,
            correlation_id: self.request_id.unwrap_or(command_id),
            causation_id: None,
            actor: scope.clone(),
            guard: (check == KeyCheck::Guarded).then_some(key_id),
        };
        // The command and the keeping of its response run in a task of their own, so
        // a client that hangs up midway (which drops this future) cannot cut a
        // command in two (a checkout between its cart and its order), and shutdown
        // waits for them (`AppState::in_flight`).
        let keys = keys.clone();
        let key = key.to_owned();
        let work = execute(context);
        let tracker = state.in_flight().clone();
        let finish = async move {
            let started = std::time::Instant::now();
            let outcome = work.await;
            metrics::command_duration(command, started.elapsed());
            // A guarded command that wrote nothing of its own may be the retry of a
            // request answered before (its append refused by the guard, or a repeat of
            // its command id): that answer stands.
            let wrote_fresh = matches!(&outcome, Ok((_, accepted)) if accepted.wrote_fresh());
            if check == KeyCheck::Guarded && !wrote_fresh {
                match keys.lookup(key_id, &fingerprint).await {
                    Ok(Prior::New) => {}
                    Ok(prior) => return Ok(Finished::Prior(prior)),
                    Err(e) => {
                        metrics::command_outcome(command, e.code);
                        return Err(e);
                    }
                }
            }
            let (status, body) = match outcome {
                Ok((status, accepted)) => {
                    metrics::command_outcome(command, "accepted");
                    let body = serde_json::to_value(&accepted)
                        .map_err(|e| ApiError::internal(e.to_string()))?;
                    (status, body)
                }
                Err(error) => {
                    metrics::command_outcome(command, error.code);
                    if !worth_keeping(&error) {
                        return Err(error);
                    }
                    let body = serde_json::to_value(error.problem()).unwrap_or(Value::Null);
                    (error.status, body)
                }
            };
            // The answer does not wait for the response to be kept: the command's
            // events are committed already, and the claim on the key is held until
            // the response is kept, so a retry in between is answered from memory
            // rather than run again. A retry after a crash in between
            // finds no response kept and runs again, which the command id derived
            // from the key makes harmless.
            claim.answered(&fingerprint, status, &body);
            keys.keep(
                key_id,
                scope,
                key,
                &fingerprint,
                status,
                body.clone(),
                claim,
                tracker.token(),
            );
            Ok(Finished::Answered(status, body))
        };
        // Dropping the task's handle at the deadline leaves the task running.
        match tokio::time::timeout_at(deadline, state.in_flight().spawn(finish)).await {
            Ok(Ok(Ok(Finished::Answered(status, body)))) => respond(status, &body),
            Ok(Ok(Ok(Finished::Prior(prior)))) => answer_prior(command, prior),
            Ok(Ok(Err(error))) => error.into_response(),
            Ok(Err(e)) => {
                ApiError::internal(format!("the command's task failed: {e}")).into_response()
            }
            Err(_) => {
                metrics::command_outcome(command, "answer-timeout");
                answer_timeout().into_response()
            }
        }
    }
}

/// When a command's idempotency key is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyCheck {
    /// Before the command runs.
    Before,
    /// Only if the command, whose appends carry the key as a guard, wrote nothing of
    /// its own.
    Guarded,
}

/// How a command's task ended.
enum Finished {
    /// With this response, now kept.
    Answered(StatusCode, Value),
    /// The request was answered before.
    Prior(Prior),
}

/// The answer to a retry whose first response is known.
fn answer_prior(command: &'static str, prior: Prior) -> Response {
    match prior {
        Prior::Answered { status, body } => {
            metrics::command_outcome(command, "replayed");
            replayed(status, &body)
        }
        Prior::Mismatch => {
            metrics::command_outcome(command, "idempotency-key-reused");
            key_reused().into_response()
        }
        Prior::New => {
            debug_assert!(false, "a retry's prior is known");
            ApiError::internal("the first response of this key is unknown").into_response()
        }
    }
}

/// Refusals that a retry would meet again are kept; answers that invite a retry
/// (server errors, conflicts after retries, overload) and key mismatches are not.
fn worth_keeping(error: &ApiError) -> bool {
    error.status.is_client_error()
        && error.retry_after_secs.is_none()
        && error.code != "idempotency-key-reused"
}

fn answer_timeout() -> ApiError {
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "timeout",
        format!(
            "the command did not finish within {COMMAND_ANSWER_MAX_MS} ms; its outcome is unknown: retry with the same Idempotency-Key"
        ),
    );
    error.retry_after_secs = Some(1);
    error
}

fn key_in_flight() -> ApiError {
    let mut error = ApiError::new(
        StatusCode::CONFLICT,
        "idempotency-key-in-flight",
        "a request with this Idempotency-Key is still running; retry after it finishes",
    )
    .with_field("Idempotency-Key");
    error.retry_after_secs = Some(super::idempotency::IN_FLIGHT_RETRY_AFTER_SECS);
    error
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency-key-reused",
        "this Idempotency-Key was already used for a different request",
    )
    .with_field("Idempotency-Key")
}

fn respond(status: StatusCode, body: &Value) -> Response {
    let mut response = json_response(status, body);
    if !status.is_success() {
        response.headers_mut().insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static(super::problem::PROBLEM_CONTENT_TYPE),
        );
    }
    response
}

fn replayed(status: StatusCode, body: &Value) -> Response {
    let mut response = respond(status, body);
    response
        .headers_mut()
        .insert(REPLAYED_HEADER, HeaderValue::from_static("true"));
    response
}
