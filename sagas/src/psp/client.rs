//! [`HttpGateway`]: the engine's client of the payment provider's HTTP API.
//!
//! Every call is bounded: each attempt has a timeout, a call makes at most
//! `max_attempts` attempts with jittered exponential pauses between them, and a
//! circuit breaker ([`super::breaker`]) stops sending while the provider keeps
//! failing. Every attempt of a call carries the same idempotency key, so a retry
//! after a timeout or a lost answer gets the provider's first result instead of
//! moving money again.
//!
//! The worst case of one call is `max_attempts × request_timeout_ms` plus
//! `(max_attempts − 1) × backoff_max_ms` (plus connection set-up, itself bounded by
//! `connect_timeout_ms` within each attempt).

use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::breaker::{BreakerState, CircuitBreaker};
use super::wire::{
    AuthorizationStatus, AuthorizationView, CreateAuthorization, CreateCapture, CreateRefund,
    ErrorBody, RefundView, IDEMPOTENCY_KEY_HEADER,
};
use crate::gateway::{
    Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway, Receipt,
};

/// Default time to set up a connection, in milliseconds.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// Default time one attempt may take, connection included, in milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 5_000;
/// Default attempts per call, the first included.
pub const MAX_ATTEMPTS: u32 = 4;
/// Default pause before the first retry, in milliseconds (doubled per retry,
/// jittered).
pub const BACKOFF_INITIAL_MS: u64 = 100;
/// Default longest pause between attempts, in milliseconds.
pub const BACKOFF_MAX_MS: u64 = 2_000;
/// Default consecutive failed attempts that open the circuit breaker.
pub const BREAKER_FAILURE_THRESHOLD: u32 = 5;
/// Default time the breaker stays open before a probe, in milliseconds.
pub const BREAKER_COOLDOWN_MS: u64 = 10_000;
/// Longest error message kept from a provider's answer, in bytes.
const ERROR_MESSAGE_MAX_BYTES: usize = 500;

/// How [`HttpGateway`] talks to the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpGatewayConfig {
    /// The provider's base URL, e.g. `http://127.0.0.1:8090`.
    pub base_url: String,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    pub max_attempts: u32,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub breaker_failure_threshold: u32,
    pub breaker_cooldown_ms: u64,
}

impl HttpGatewayConfig {
    /// The defaults above, for the provider at `base_url`.
    pub fn new(base_url: impl Into<String>) -> Self {
        HttpGatewayConfig {
            base_url: base_url.into(),
            connect_timeout_ms: CONNECT_TIMEOUT_MS,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            max_attempts: MAX_ATTEMPTS,
            backoff_initial_ms: BACKOFF_INITIAL_MS,
            backoff_max_ms: BACKOFF_MAX_MS,
            breaker_failure_threshold: BREAKER_FAILURE_THRESHOLD,
            breaker_cooldown_ms: BREAKER_COOLDOWN_MS,
        }
    }
}

/// The HTTP client could not be built (its TLS set-up failed).
#[derive(Debug, thiserror::Error)]
#[error("cannot build the payment provider's HTTP client: {0}")]
pub struct ClientBuildError(#[from] reqwest::Error);

/// The payment gateway over the provider's HTTP API.
#[derive(Debug)]
pub struct HttpGateway {
    http: reqwest::Client,
    base_url: String,
    config: HttpGatewayConfig,
    breaker: CircuitBreaker,
}

/// How one attempt ended.
enum Attempt {
    /// A 2xx answer's body.
    Answered(bytes::Bytes),
    /// The provider refused the request on its merits (4xx): final.
    Refused { code: String, message: String },
    /// No answer in time, the connection dropped after the request went out, or a
    /// 5xx other than 503: the provider may have acted.
    Ambiguous(String),
    /// The request was not carried out (refused connection, 503, 429): nothing moved.
    NotDone {
        detail: String,
        retry_after: Option<Duration>,
    },
}

impl Attempt {
    fn label(&self) -> &'static str {
        match self {
            Self::Answered(_) => "answered",
            Self::Refused { .. } => "refused",
            Self::Ambiguous(_) => "ambiguous",
            Self::NotDone { .. } => "not_done",
        }
    }
}

/// `commerce_psp_attempts_total{operation, outcome}`: every attempt, and every call
/// the open breaker stopped (`breaker_open`).
fn count_attempt(operation: &'static str, outcome: &'static str) {
    metrics::counter!("commerce_psp_attempts_total", "operation" => operation, "outcome" => outcome)
        .increment(1);
}

impl HttpGateway {
    pub fn new(config: HttpGatewayConfig) -> Result<Self, ClientBuildError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .build()?;
        Ok(HttpGateway {
            http,
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            breaker: CircuitBreaker::new(
                config.breaker_failure_threshold,
                Duration::from_millis(config.breaker_cooldown_ms),
            ),
            config,
        })
    }

    pub fn config(&self) -> &HttpGatewayConfig {
        &self.config
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// POSTs `body` to `path` under `idempotency_key`, retrying what may be retried.
    async fn post<B: Serialize, R: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        idempotency_key: &str,
        body: &B,
    ) -> Result<R, GatewayError> {
        let started = std::time::Instant::now();
        let result = self
            .post_with_retries(operation, path, idempotency_key, body)
            .await;
        metrics::histogram!("commerce_psp_call_duration_seconds", "operation" => operation)
            .record(started.elapsed().as_secs_f64());
        result
    }

    async fn post_with_retries<B: Serialize, R: DeserializeOwned>(
        &self,
        operation: &'static str,
        path: &str,
        idempotency_key: &str,
        body: &B,
    ) -> Result<R, GatewayError> {
        let url = format!("{}{path}", self.base_url);
        let body = serde_json::to_vec(body).map_err(|e| GatewayError::Refused {
            code: "unencodable_request".into(),
            message: e.to_string(),
        })?;
        // Whether any attempt may have reached the provider and been carried out:
        // then giving up is a timeout (outcome unknown), not "nothing was done".
        let mut ambiguous = false;
        let mut last_failure = String::new();
        let attempts = self.config.max_attempts.max(1);
        for attempt in 1..=attempts {
            let Some(permit) = self.breaker.try_acquire() else {
                count_attempt(operation, "breaker_open");
                tracing::debug!(path, attempt, "payment provider circuit open: not sending");
                return Err(if ambiguous {
                    GatewayError::Timeout
                } else {
                    GatewayError::Unavailable("circuit breaker open".into())
                });
            };
            let outcome = self.attempt(&url, idempotency_key, body.clone()).await;
            count_attempt(operation, outcome.label());
            let retry_after = match outcome {
                Attempt::Answered(bytes) => {
                    permit.record(true);
                    return serde_json::from_slice(&bytes).map_err(|e| {
                        // The provider acted but its answer cannot be read: the
                        // outcome is as unknown as after a timeout.
                        tracing::warn!(path, error = %e, "unreadable answer from the payment provider");
                        GatewayError::Timeout
                    });
                }
                Attempt::Refused { code, message } => {
                    permit.record(true);
                    return Err(GatewayError::Refused { code, message });
                }
                Attempt::Ambiguous(detail) => {
                    permit.record(false);
                    ambiguous = true;
                    last_failure = detail;
                    None
                }
                Attempt::NotDone {
                    detail,
                    retry_after,
                } => {
                    permit.record(false);
                    last_failure = detail;
                    retry_after
                }
            };
            tracing::debug!(path, attempt, failure = %last_failure, "payment provider attempt failed");
            if attempt < attempts {
                tokio::time::sleep(self.backoff(attempt, retry_after)).await;
            }
        }
        Err(if ambiguous {
            GatewayError::Timeout
        } else {
            GatewayError::Unavailable(last_failure)
        })
    }

    async fn attempt(&self, url: &str, idempotency_key: &str, body: Vec<u8>) -> Attempt {
        let sent = self
            .http
            .post(url)
            .header(IDEMPOTENCY_KEY_HEADER, idempotency_key)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(response) => response,
            Err(e) if e.is_connect() => {
                return Attempt::NotDone {
                    detail: format!("cannot connect: {e}"),
                    retry_after: None,
                }
            }
            Err(e) if e.is_timeout() => return Attempt::Ambiguous("timed out".into()),
            Err(e) => return Attempt::Ambiguous(format!("no answer: {e}")),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let bytes = match response.bytes().await {
            Ok(bytes) => bytes,
            Err(e) if e.is_timeout() => return Attempt::Ambiguous("timed out".into()),
            Err(e) => return Attempt::Ambiguous(format!("answer cut short: {e}")),
        };
        match status.as_u16() {
            200..=299 => Attempt::Answered(bytes),
            429 | 503 => Attempt::NotDone {
                detail: format!("{status}: {}", error_of(&bytes).1),
                retry_after,
            },
            400..=499 => {
                let (code, message) = error_of(&bytes);
                Attempt::Refused { code, message }
            }
            _ => Attempt::Ambiguous(format!("{status}: {}", error_of(&bytes).1)),
        }
    }

    /// The pause after failed attempt number `attempt` (1-based): exponential from
    /// `backoff_initial_ms`, capped at `backoff_max_ms`, half of it jittered so
    /// clients that failed together do not retry together; at least what the
    /// provider's `Retry-After` asks, within the cap.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.config.backoff_max_ms;
        let exponential = self
            .config
            .backoff_initial_ms
            .saturating_mul(1u64 << (attempt - 1).min(32))
            .min(cap);
        let jittered =
            exponential / 2 + rand::rng().random_range(0..=exponential - exponential / 2);
        let asked = retry_after.map_or(0, |d| d.as_millis() as u64).min(cap);
        Duration::from_millis(jittered.max(asked))
    }
}

/// The `(code, message)` of a provider's error answer, or a stand-in if it has none.
fn error_of(bytes: &[u8]) -> (String, String) {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(body) => {
            let mut message = body.error.message;
            if message.len() > ERROR_MESSAGE_MAX_BYTES {
                let mut end = ERROR_MESSAGE_MAX_BYTES;
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                message.truncate(end);
            }
            (body.error.code, message)
        }
        Err(_) => (
            "unknown_error".into(),
            "the provider's answer carries no error document".into(),
        ),
    }
}

#[async_trait]
impl PaymentGateway for HttpGateway {
    async fn authorize(&self, request: AuthorizeRequest) -> Result<Authorization, GatewayError> {
        let body = CreateAuthorization {
            amount: request.amount.minor,
            currency: request.amount.currency.to_string(),
            payment_method: request.payment_method,
            reference: request.payment_id.to_string(),
        };
        let view: AuthorizationView = self
            .post(
                "authorize",
                "/v1/authorizations",
                &request.idempotency_key,
                &body,
            )
            .await?;
        Ok(match view.status {
            AuthorizationStatus::Declined => Authorization::Declined {
                reason: view.decline_code.unwrap_or_else(|| "declined".into()),
                provider_ref: view.id,
            },
            // A replay of a key whose authorization was captured or voided since still
            // answers with the first result, which was an approval.
            AuthorizationStatus::Authorized
            | AuthorizationStatus::Captured
            | AuthorizationStatus::Voided => Authorization::Approved {
                provider_ref: view.id,
            },
        })
    }

    async fn capture(&self, request: MoneyMovement) -> Result<Receipt, GatewayError> {
        let body = CreateCapture {
            amount: request.amount.minor,
            currency: request.amount.currency.to_string(),
        };
        let path = format!(
            "/v1/authorizations/{}/capture",
            path_segment(&request.provider_ref)?
        );
        let view: AuthorizationView = self
            .post("capture", &path, &request.idempotency_key, &body)
            .await?;
        Ok(Receipt {
            provider_ref: view.id,
        })
    }

    async fn void(&self, request: MoneyMovement) -> Result<Receipt, GatewayError> {
        let path = format!(
            "/v1/authorizations/{}/void",
            path_segment(&request.provider_ref)?
        );
        let view: AuthorizationView = self
            .post(
                "void",
                &path,
                &request.idempotency_key,
                &serde_json::json!({}),
            )
            .await?;
        Ok(Receipt {
            provider_ref: view.id,
        })
    }

    async fn refund(&self, request: MoneyMovement) -> Result<Receipt, GatewayError> {
        let body = CreateRefund {
            authorization: request.provider_ref,
            amount: request.amount.minor,
            currency: request.amount.currency.to_string(),
        };
        let refund: RefundView = self
            .post("refund", "/v1/refunds", &request.idempotency_key, &body)
            .await?;
        Ok(Receipt {
            provider_ref: refund.id,
        })
    }
}

/// A provider reference as one path segment: the sandbox's ids are ASCII letters,
/// digits and `_`; anything else is refused rather than escaped into another path.
fn path_segment(provider_ref: &str) -> Result<&str, GatewayError> {
    let ok = !provider_ref.is_empty()
        && provider_ref.len() <= 128
        && provider_ref
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(provider_ref)
    } else {
        Err(GatewayError::Refused {
            code: "invalid_provider_ref".into(),
            message: format!("{provider_ref:?} is not a provider reference"),
        })
    }
}
