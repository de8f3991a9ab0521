//! The one error type of the crate. Each variant says what the caller should do:
//! show a refusal, back off and retry with the same command id, or alert someone.

use domain::{Currency, DecodeError, DomainError, ProductId, Sku};
use eventstore::StoreError;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    /// The aggregate refused the command; nothing was written.
    #[error("refused: {0}")]
    Rejected(#[from] DomainError),

    /// The product exists but is not published, so it cannot go into a cart.
    #[error("product {product_id} is {status}, not for sale")]
    ProductNotSellable {
        product_id: ProductId,
        status: &'static str,
    },

    /// The catalog has no price for the SKU in the cart's currency.
    #[error("SKU {sku} has no price in {currency}")]
    PriceMissing { sku: Sku, currency: Currency },

    /// Other writers changed the stream before every one of `attempts` appends.
    /// Nothing was written; retrying later with the same command id is safe.
    #[error("stream {stream} changed under each of {attempts} attempts")]
    Conflict { stream: String, attempts: u32 },

    /// The stream's queue stayed full, or too many streams are active. Nothing was
    /// written; back off and retry.
    #[error("stream {stream} is overloaded: {reason}")]
    Overloaded {
        stream: String,
        reason: &'static str,
    },

    /// A call to the store did not answer within `Limits::store_call_timeout`. The
    /// outcome is unknown; retrying with the same command id is safe.
    #[error("the store did not answer for stream {stream} within {timeout_ms} ms")]
    Timeout { stream: String, timeout_ms: u64 },

    /// The stream's task ended before answering (a bug, or shutdown). The outcome is
    /// unknown; retrying with the same command id is safe.
    #[error("the task of stream {stream} stopped before answering")]
    Stopped { stream: String },

    /// The event store failed; `StoreError::is_transient` says whether to retry.
    #[error("event store: {0}")]
    Store(#[from] StoreError),

    /// An event of the stream cannot be read by this build: the stream is stuck
    /// until a build that knows the event is deployed.
    #[error("stream {stream}, event {version}: {source}")]
    Decode {
        stream: String,
        version: u64,
        #[source]
        source: DecodeError,
    },
}

impl CommandError {
    /// A stable kebab-case name per variant (the domain's code for `Rejected`), for
    /// the HTTP layer's problem types and for metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Rejected(e) => e.code(),
            Self::ProductNotSellable { .. } => "product-not-sellable",
            Self::PriceMissing { .. } => "price-missing",
            Self::Conflict { .. } => "conflict",
            Self::Overloaded { .. } => "overloaded",
            Self::Timeout { .. } => "timeout",
            Self::Stopped { .. } => "stopped",
            Self::Store(_) => "store",
            Self::Decode { .. } => "decode",
        }
    }

    /// The domain's refusal, if this is one.
    pub fn rejection(&self) -> Option<&DomainError> {
        match self {
            Self::Rejected(e) => Some(e),
            Self::ProductNotSellable { .. }
            | Self::PriceMissing { .. }
            | Self::Conflict { .. }
            | Self::Overloaded { .. }
            | Self::Timeout { .. }
            | Self::Stopped { .. }
            | Self::Store(_)
            | Self::Decode { .. } => None,
        }
    }
}
