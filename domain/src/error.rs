//! The one error type of the crate: why a value could not be parsed or a command was
//! refused. Each variant carries what a caller needs to act on it, and `code()` gives
//! the stable kebab-case name that the HTTP layer maps to a problem type. The serde
//! form is the variant's fields plus `"code"`, so the API can render it as is.

use serde::Serialize;

use crate::{Currency, Money, RefundId, ReservationId, ReservationOutcome, Sku, WarehouseId};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize)]
#[serde(tag = "code", rename_all = "kebab-case")]
pub enum DomainError {
    /// A field's value breaks a format or length rule.
    #[error("invalid {field}: {reason}")]
    Invalid { field: &'static str, reason: String },

    /// A quantity outside `1..=max` (a command's quantity, a delta, or a line that
    /// would grow past the bound).
    #[error("quantity {value} is outside 1..={max}")]
    QuantityOutOfRange { value: i128, max: u32 },

    /// A bounded collection would grow past its bound (`limit` names which one:
    /// `cart_lines`, `order_lines`, `product_skus`, `sku_attributes`, `warehouses`,
    /// `refunds`, `category_depth`, `reservations`).
    #[error("{limit} would exceed its limit of {max}")]
    LimitExceeded { limit: &'static str, max: u32 },

    /// Integer arithmetic on money or stock would overflow.
    #[error("arithmetic overflow")]
    Overflow,

    #[error("currency mismatch: expected {expected}, got {actual}")]
    CurrencyMismatch {
        expected: Currency,
        actual: Currency,
    },

    /// A creating command hit a stream that already has a history.
    #[error("{aggregate} already exists")]
    AlreadyExists { aggregate: &'static str },

    /// A command needs a stream that has no history yet.
    #[error("{aggregate} not found")]
    NotFound { aggregate: &'static str },

    /// The command names another aggregate than the state it was decided against: a
    /// routing bug in the caller, never a user error.
    #[error("command for {actual} decided against {expected}")]
    WrongStream { expected: String, actual: String },

    /// The command is not allowed in the aggregate's current status.
    #[error("{command} is not allowed when {from}")]
    InvalidTransition {
        from: &'static str,
        command: &'static str,
    },

    #[error("SKU {sku} appears twice")]
    DuplicateSku { sku: Sku },

    #[error("SKU {sku} is not part of this product")]
    UnknownSku { sku: Sku },

    /// Publishing needs a price for every SKU (its own or the product's).
    #[error("SKU {sku} has no price")]
    MissingPrice { sku: Sku },

    #[error("SKU {sku}: requested {requested}, available {available}")]
    OutOfStock {
        sku: Sku,
        requested: u32,
        available: u64,
    },

    /// A negative adjustment larger than what the warehouse has unreserved.
    #[error("adjusting {warehouse} by {delta} exceeds its available {available}")]
    AdjustmentExceedsAvailable {
        warehouse: WarehouseId,
        delta: i64,
        available: u64,
    },

    /// Reservation ids are single use: this one was seen before (active or ended).
    #[error("reservation {reservation_id} already exists")]
    ReservationExists { reservation_id: ReservationId },

    #[error("reservation {reservation_id} is unknown")]
    ReservationUnknown { reservation_id: ReservationId },

    /// The reservation existed but was already released, committed or expired.
    #[error("reservation {reservation_id} has already ended ({outcome})")]
    ReservationEnded {
        reservation_id: ReservationId,
        outcome: ReservationOutcome,
    },

    /// Lines can change only while the cart is open.
    #[error("cart is {status}: lines cannot change")]
    CartLocked { status: &'static str },

    #[error("cart is empty")]
    CartEmpty,

    #[error("no line for SKU {sku}")]
    LineNotFound { sku: Sku },

    /// An amount that must equal another one (the order total) does not.
    #[error("amount mismatch: expected {expected}, got {actual}")]
    AmountMismatch { expected: Money, actual: Money },

    #[error("capture of {requested} exceeds the authorized {authorized}")]
    ExceedsAuthorized { authorized: Money, requested: Money },

    #[error("refund of {requested} exceeds the refundable {refundable}")]
    RefundExceedsCaptured { refundable: Money, requested: Money },

    #[error("refund {refund_id} already exists")]
    RefundExists { refund_id: RefundId },
}

impl DomainError {
    /// A stable kebab-case code per variant; equal to the `"code"` field of the serde
    /// form.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Invalid { .. } => "invalid",
            Self::QuantityOutOfRange { .. } => "quantity-out-of-range",
            Self::LimitExceeded { .. } => "limit-exceeded",
            Self::Overflow => "overflow",
            Self::CurrencyMismatch { .. } => "currency-mismatch",
            Self::AlreadyExists { .. } => "already-exists",
            Self::NotFound { .. } => "not-found",
            Self::WrongStream { .. } => "wrong-stream",
            Self::InvalidTransition { .. } => "invalid-transition",
            Self::DuplicateSku { .. } => "duplicate-sku",
            Self::UnknownSku { .. } => "unknown-sku",
            Self::MissingPrice { .. } => "missing-price",
            Self::OutOfStock { .. } => "out-of-stock",
            Self::AdjustmentExceedsAvailable { .. } => "adjustment-exceeds-available",
            Self::ReservationExists { .. } => "reservation-exists",
            Self::ReservationUnknown { .. } => "reservation-unknown",
            Self::ReservationEnded { .. } => "reservation-ended",
            Self::CartLocked { .. } => "cart-locked",
            Self::CartEmpty => "cart-empty",
            Self::LineNotFound { .. } => "line-not-found",
            Self::AmountMismatch { .. } => "amount-mismatch",
            Self::ExceedsAuthorized { .. } => "exceeds-authorized",
            Self::RefundExceedsCaptured { .. } => "refund-exceeds-captured",
            Self::RefundExists { .. } => "refund-exists",
        }
    }

    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}
