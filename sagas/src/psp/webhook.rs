//! Provider callbacks (webhooks), both ends of the signature scheme, and the
//! engine's inbox that records each authentic event once.
//!
//! The provider signs `"{timestamp}.{body}"` with HMAC-SHA256 under a secret shared
//! with the merchant, and sends `Psp-Signature: t=<unix seconds>,v1=<hex>` (several
//! `v1` entries are allowed while a secret is being rotated). The engine accepts a
//! callback only if one signature matches (compared in constant time) and the
//! timestamp is within the replay window of its clock, so a captured request cannot
//! be replayed later. Within the window, a replay or an honest redelivery carries an
//! event id already recorded: the inbox acknowledges it without a second effect.

use deadpool_postgres::Pool;
use eventstore::{Migration, StoreError};
use ring::hmac;

use super::wire::WebhookEvent;

/// Header carrying the signature of a callback.
pub const SIGNATURE_HEADER: &str = "psp-signature";
/// Default replay window: how far a callback's timestamp may be from the receiver's
/// clock, either way, in seconds.
pub const WEBHOOK_TOLERANCE_SECS: u64 = 300;
/// Longest signature header looked at, in bytes.
const SIGNATURE_HEADER_MAX_BYTES: usize = 1_024;
/// Most `v1` signatures looked at in one header.
const SIGNATURES_MAX: usize = 4;
/// Longest event id and event type accepted, in bytes.
const EVENT_ID_MAX_BYTES: usize = 255;
const EVENT_TYPE_MAX_BYTES: usize = 100;

/// The inbox's schema, applied with `eventstore::migrate` as component `psp_webhooks`.
pub const WEBHOOK_MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "webhook_events",
    sql: include_str!("migrations/0001_webhook_events.sql"),
}];

const INSERT_EVENT: &str = "INSERT INTO psp_webhook_events \
     (event_id, event_type, object_id, payload, signed_at) \
     VALUES ($1, $2, $3, $4, to_timestamp($5::float8)) \
     ON CONFLICT (event_id) DO NOTHING";
const SELECT_EVENT: &str = "SELECT event_type, object_id, payload, \
     extract(epoch FROM signed_at)::int8 FROM psp_webhook_events WHERE event_id = $1";

/// Why a callback was not accepted. Nothing is recorded for any of them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the callback has no Psp-Signature header")]
    MissingSignature,
    #[error("the Psp-Signature header is malformed: {0}")]
    MalformedSignature(&'static str),
    #[error(
        "the callback's timestamp is {skew_secs} s from now, outside the {tolerance_secs} s window"
    )]
    StaleTimestamp { skew_secs: i64, tolerance_secs: u64 },
    #[error("no signature of the callback matches")]
    BadSignature,
    #[error("the callback's body is not a provider event: {0}")]
    MalformedEvent(String),
}

impl WebhookError {
    /// A stable code for each reason (the API's problem types).
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingSignature => "webhook-signature-missing",
            Self::MalformedSignature(_) => "webhook-signature-malformed",
            Self::StaleTimestamp { .. } => "webhook-timestamp-stale",
            Self::BadSignature => "webhook-signature-invalid",
            Self::MalformedEvent(_) => "webhook-event-malformed",
        }
    }
}

/// The value of the signature header for `body` sent at `timestamp` (Unix seconds).
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_payload(timestamp, body));
    format!("t={timestamp},v1={}", hex::encode(tag.as_ref()))
}

fn signed_payload(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(body.len() + 21);
    payload.extend_from_slice(timestamp.to_string().as_bytes());
    payload.push(b'.');
    payload.extend_from_slice(body);
    payload
}

/// The engine's side of the webhook contract: the secret shared with the provider
/// and the replay window.
#[derive(Clone)]
pub struct WebhookConfig {
    pub secret: Vec<u8>,
    pub tolerance_secs: u64,
}

impl WebhookConfig {
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        WebhookConfig {
            secret: secret.into(),
            tolerance_secs: WEBHOOK_TOLERANCE_SECS,
        }
    }

    pub fn verifier(&self) -> WebhookVerifier {
        WebhookVerifier::new(&self.secret, self.tolerance_secs)
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("WebhookConfig")
            .field("tolerance_secs", &self.tolerance_secs)
            .finish_non_exhaustive()
    }
}

/// Checks callbacks against the shared secret and the replay window.
#[derive(Clone)]
pub struct WebhookVerifier {
    key: hmac::Key,
    tolerance_secs: u64,
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        f.debug_struct("WebhookVerifier")
            .field("tolerance_secs", &self.tolerance_secs)
            .finish_non_exhaustive()
    }
}

/// A callback that passed [`WebhookVerifier::verify`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedWebhook {
    pub event: WebhookEvent,
    /// The signed timestamp, Unix seconds.
    pub signed_at: i64,
}

impl WebhookVerifier {
    pub fn new(secret: &[u8], tolerance_secs: u64) -> Self {
        WebhookVerifier {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            tolerance_secs,
        }
    }

    /// Accepts `body` if `header` holds a matching signature made within the replay
    /// window around `now` (Unix seconds), and the body is a provider event.
    pub fn verify(
        &self,
        header: Option<&[u8]>,
        body: &[u8],
        now: i64,
    ) -> Result<VerifiedWebhook, WebhookError> {
        let header = header.ok_or(WebhookError::MissingSignature)?;
        let (timestamp, signatures) = parse_signature_header(header)?;
        let payload = signed_payload(timestamp, body);
        // Every candidate is compared in full and in constant time; which one matched
        // (or that none did) is the only thing that leaks.
        let matched = signatures
            .iter()
            .any(|tag| hmac::verify(&self.key, &payload, tag).is_ok());
        if !matched {
            return Err(WebhookError::BadSignature);
        }
        // After the signature, so the timestamp checked is one the provider signed.
        let skew_secs = now.saturating_sub(timestamp);
        if skew_secs.unsigned_abs() > self.tolerance_secs {
            return Err(WebhookError::StaleTimestamp {
                skew_secs,
                tolerance_secs: self.tolerance_secs,
            });
        }
        let event: WebhookEvent = serde_json::from_slice(body)
            .map_err(|e| WebhookError::MalformedEvent(e.to_string()))?;
        if event.id.is_empty() || event.id.len() > EVENT_ID_MAX_BYTES {
            return Err(WebhookError::MalformedEvent(format!(
                "the event id must be 1 to {EVENT_ID_MAX_BYTES} bytes"
            )));
        }
        if event.event_type.is_empty() || event.event_type.len() > EVENT_TYPE_MAX_BYTES {
            return Err(WebhookError::MalformedEvent(format!(
                "the event type must be 1 to {EVENT_TYPE_MAX_BYTES} bytes"
            )));
        }
        Ok(VerifiedWebhook {
            event,
            signed_at: timestamp,
        })
    }
}

/// `t=<unix>,v1=<hex>[,v1=<hex>…]`; unknown schemes are skipped, as a newer
/// provider may add some.
fn parse_signature_header(header: &[u8]) -> Result<(i64, Vec<Vec<u8>>), WebhookError> {
    if header.len() > SIGNATURE_HEADER_MAX_BYTES {
        return Err(WebhookError::MalformedSignature("too long"));
    }
    let header =
        std::str::from_utf8(header).map_err(|_| WebhookError::MalformedSignature("not UTF-8"))?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (scheme, value) =
            part.trim()
                .split_once('=')
                .ok_or(WebhookError::MalformedSignature(
                    "an entry is not key=value",
                ))?;
        match scheme {
            "t" => {
                if timestamp.is_some() {
                    return Err(WebhookError::MalformedSignature("more than one timestamp"));
                }
                let t = value.parse::<i64>().map_err(|_| {
                    WebhookError::MalformedSignature("the timestamp is not a number")
                })?;
                timestamp = Some(t);
            }
            "v1" => {
                if signatures.len() == SIGNATURES_MAX {
                    return Err(WebhookError::MalformedSignature("too many signatures"));
                }
                let tag = hex::decode(value)
                    .map_err(|_| WebhookError::MalformedSignature("a signature is not hex"))?;
                signatures.push(tag);
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(WebhookError::MalformedSignature("no timestamp"))?;
    if signatures.is_empty() {
        return Err(WebhookError::MalformedSignature("no v1 signature"));
    }
    Ok((timestamp, signatures))
}

/// Whether the inbox took an event or had it already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    New,
    Duplicate,
}

/// An event as the inbox holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct InboxEntry {
    pub event_type: String,
    pub object_id: Option<String>,
    pub payload: serde_json::Value,
    pub signed_at: i64,
}

/// The provider events the engine has accepted, each once, in PostgreSQL (so the
/// dedupe holds across processes and restarts).
#[derive(Clone)]
pub struct WebhookInbox {
    pool: Pool,
}

impl WebhookInbox {
    /// Opens the inbox on `pool`, creating its table if needed.
    pub async fn connect(pool: Pool) -> Result<Self, StoreError> {
        let mut client = pool.get().await.map_err(pool_error)?;
        let client: &mut tokio_postgres::Client = &mut client;
        eventstore::migrate(client, "psp_webhooks", WEBHOOK_MIGRATIONS).await?;
        Ok(WebhookInbox { pool })
    }

    /// Records a verified event unless its id is already in; says which.
    pub async fn record(&self, webhook: &VerifiedWebhook) -> Result<Recorded, StoreError> {
        let event = &webhook.event;
        let object_id = event
            .data
            .get("id")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
        let client = self.pool.get().await.map_err(pool_error)?;
        let inserted = client
            .execute(
                INSERT_EVENT,
                &[
                    &event.id,
                    &event.event_type,
                    &object_id,
                    &serde_json::to_value(event).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    &(webhook.signed_at as f64),
                ],
            )
            .await
            .map_err(query_error)?;
        Ok(if inserted == 1 {
            Recorded::New
        } else {
            Recorded::Duplicate
        })
    }

    /// The recorded event with `event_id`, if any.
    pub async fn get(&self, event_id: &str) -> Result<Option<InboxEntry>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let row = client
            .query_opt(SELECT_EVENT, &[&event_id])
            .await
            .map_err(query_error)?;
        Ok(row.map(|row| InboxEntry {
            event_type: row.get(0),
            object_id: row.get(1),
            payload: row.get(2),
            signed_at: row.get(3),
        }))
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn query_error(e: tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) => StoreError::Database(format!("{} ({})", db.message(), db.code().code())),
        None => StoreError::Unavailable(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"whsec_test";
    const BODY: &[u8] =
        br#"{"id":"evt_1","type":"authorization.captured","created":1,"data":{"id":"auth_1"}}"#;

    #[test]
    fn a_signed_callback_within_the_window_is_accepted() {
        let header = sign(SECRET, 1_000, BODY);
        let verifier = WebhookVerifier::new(SECRET, 300);
        let verified = verifier
            .verify(Some(header.as_bytes()), BODY, 1_200)
            .unwrap();
        assert_eq!(verified.event.id, "evt_1");
        assert_eq!(verified.signed_at, 1_000);
    }

    #[test]
    fn another_secret_a_changed_body_or_an_old_timestamp_is_refused() {
        let verifier = WebhookVerifier::new(SECRET, 300);
        let other = sign(b"another secret", 1_000, BODY);
        assert_eq!(
            verifier.verify(Some(other.as_bytes()), BODY, 1_000),
            Err(WebhookError::BadSignature)
        );
        let header = sign(SECRET, 1_000, BODY);
        let mut changed = BODY.to_vec();
        changed[8] = b'2';
        assert_eq!(
            verifier.verify(Some(header.as_bytes()), &changed, 1_000),
            Err(WebhookError::BadSignature)
        );
        assert!(matches!(
            verifier.verify(Some(header.as_bytes()), BODY, 1_301),
            Err(WebhookError::StaleTimestamp { skew_secs: 301, .. })
        ));
        assert!(matches!(
            verifier.verify(Some(header.as_bytes()), BODY, 699),
            Err(WebhookError::StaleTimestamp {
                skew_secs: -301,
                ..
            })
        ));
    }

    #[test]
    fn a_rotated_secret_is_accepted_through_its_second_signature() {
        let old = sign(b"old secret", 1_000, BODY);
        let new = sign(SECRET, 1_000, BODY);
        let v1_new = new.split_once(",v1=").unwrap().1;
        let header = format!("{old},v1={v1_new}");
        let verifier = WebhookVerifier::new(SECRET, 300);
        assert!(verifier
            .verify(Some(header.as_bytes()), BODY, 1_000)
            .is_ok());
    }

    #[test]
    fn malformed_headers_are_refused_before_any_hmac() {
        let verifier = WebhookVerifier::new(SECRET, 300);
        for header in [
            "",
            "t=1",
            "v1=00",
            "t=x,v1=00",
            "t=1,v1=zz",
            "t=1,t=2,v1=00",
        ] {
            assert!(
                matches!(
                    verifier.verify(Some(header.as_bytes()), BODY, 1),
                    Err(WebhookError::MalformedSignature(_))
                ),
                "{header:?}"
            );
        }
        assert_eq!(
            verifier.verify(None, BODY, 1),
            Err(WebhookError::MissingSignature)
        );
    }
}
