//! The seam between the checkout saga and a payment provider.
//!
//! Every call carries an idempotency key chosen by the caller and derived from the
//! checkout (never random), so a call repeated after a timeout, a lost response or a
//! crash is answered with the provider's first result instead of moving money twice.

use async_trait::async_trait;
use domain::{Money, PaymentId};

/// Authorize `amount` on the card behind `payment_method` (a provider token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizeRequest {
    pub idempotency_key: String,
    pub payment_id: PaymentId,
    pub amount: Money,
    pub payment_method: String,
}

/// Capture, void or refund an authorization the provider knows as `provider_ref`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneyMovement {
    pub idempotency_key: String,
    pub provider_ref: String,
    pub amount: Money,
}

/// What the provider said to an authorization it answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    Approved {
        provider_ref: String,
    },
    Declined {
        provider_ref: String,
        reason: String,
    },
}

/// The provider's receipt for a capture, void or refund it carried out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub provider_ref: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No answer in time: the provider may or may not have acted. Retrying with the
    /// same idempotency key is safe and tells which.
    #[error("payment provider timed out")]
    Timeout,
    /// The provider (or the path to it) is down, or the circuit breaker is open:
    /// nothing was done. Retrying later is safe.
    #[error("payment provider unavailable: {0}")]
    Unavailable(String),
    /// The provider refused the request itself (unknown authorization, amount over
    /// what is left, already voided). Retrying the same request will not help.
    #[error("payment provider refused the request: {code}: {message}")]
    Refused { code: String, message: String },
}

impl GatewayError {
    /// Whether the same call may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable(_))
    }
}

#[async_trait]
pub trait PaymentGateway: Send + Sync {
    async fn authorize(&self, request: AuthorizeRequest) -> Result<Authorization, GatewayError>;
    async fn capture(&self, request: MoneyMovement) -> Result<Receipt, GatewayError>;
    async fn void(&self, request: MoneyMovement) -> Result<Receipt, GatewayError>;
    async fn refund(&self, request: MoneyMovement) -> Result<Receipt, GatewayError>;
}
