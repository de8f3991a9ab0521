//! The sandbox provider's HTTP API as JSON types, shared by the sandbox and the
//! engine's client so the two cannot drift apart. Amounts are integer minor units
//! with an ISO-4217 currency code, as card processors take them.

use serde::{Deserialize, Serialize};

/// Header carrying the caller's idempotency key on every POST.
pub const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";
/// Header set (to `true`) on a response replayed for a repeated idempotency key.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// Longest idempotency key the provider accepts, in bytes.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 255;

/// `POST /v1/authorizations`: hold `amount` on the card behind `payment_method`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateAuthorization {
    pub amount: i64,
    pub currency: String,
    /// A card token; the sandbox's test tokens are listed in `docs/operations.md`.
    pub payment_method: String,
    /// The merchant's own reference (the engine sends its payment id).
    pub reference: String,
}

/// `POST /v1/authorizations/{id}/capture`: take `amount` (at most what was
/// authorized) from the hold, once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCapture {
    pub amount: i64,
    pub currency: String,
}

/// `POST /v1/refunds`: give back part or all of a captured authorization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRefund {
    pub authorization: String,
    pub amount: i64,
    pub currency: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthorizationStatus {
    Authorized,
    Declined,
    Captured,
    Voided,
}

/// An authorization as the provider reports it (`GET /v1/authorizations/{id}`, and
/// the answer to every POST on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationView {
    pub id: String,
    pub status: AuthorizationStatus,
    pub amount: i64,
    pub currency: String,
    pub payment_method: String,
    pub reference: String,
    /// Why the card was declined (`card_declined`, `insufficient_funds`).
    pub decline_code: Option<String>,
    pub captured_amount: i64,
    pub refunded_amount: i64,
    /// How many captures the provider carried out: 0 or 1, never more.
    pub capture_count: u32,
    pub refunds: Vec<RefundView>,
    /// Seconds since the Unix epoch.
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundView {
    pub id: String,
    pub authorization: String,
    pub amount: i64,
    pub currency: String,
    pub created: i64,
}

/// `GET /v1/authorizations?reference=…`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationList {
    pub data: Vec<AuthorizationView>,
}

/// Every error answer: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, machine-readable (`amount_exceeds_authorized`, `idempotency_key_reused`).
    pub code: String,
    pub message: String,
}

/// A provider event, as posted to the merchant's webhook URL and signed (see
/// [`super::webhook`]). `data` is the object the event is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Unique per event; a redelivery carries the same id.
    pub id: String,
    /// `authorization.authorized`, `authorization.declined`, `authorization.captured`,
    /// `authorization.voided`, `refund.created`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    pub data: serde_json::Value,
}
