//! One checkout: the process that takes a checked-out cart to a paid, confirmed order,
//! or undoes what it did. Its stream (`checkout-<uuid>`) is the saga's state: the
//! customer's request, then one fact per step the saga ran (order placed, stock
//! reserved, payment authorized, ...) and, when a step fails, a compensation that
//! releases, voids, refunds and restocks until nothing is held.
//!
//! The aggregate only records: it calls no one. The saga (`sagas`) reads each event,
//! decides the next step (`sagas::react`), runs it against the other aggregates and
//! the payment provider, and records the step's outcome here. So the rules of *what
//! happened* live here, and every outcome is decided against the current state:
//!
//! - A fact that the checkout has moved past (a step re-run after a crash, a timer
//!   that fired late) is a repeat and decides to no events, never to an error, so
//!   re-running a step is harmless.
//! - A fact that arrives while compensating (an authorization that answered after the
//!   deadline) is still recorded, so the compensation also undoes it.
//! - The checkout ends `rejected` or `cancelled` only when nothing is outstanding:
//!   no reservation held, no step in flight, no money taken that was not given back,
//!   the order closed and the cart reopened. `completed` is not final: an order
//!   cancelled after capture starts a compensation (refund, restock) from there.
//!
//! The checkout shares its UUID with the order it places, and derives its payment id
//! and each line's reservation id from it, so every id a re-run step uses is the
//! same as the first run's.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::line_item::sum;
use crate::{
    codec, text, Aggregate, Allocation, CartId, CheckoutId, CustomerId, DecodeError, DomainError,
    DomainEvent, LineItem, Money, OrderId, PaymentId, Quantity, RefundId, ReservationId,
    ShippingAddress, Sku,
};

const MAX_REASON_CHARS: usize = 500;
/// Longest payment method token accepted (a provider's token, never card data).
pub const MAX_PAYMENT_METHOD_CHARS: usize = 200;
const MAX_PROVIDER_REF_CHARS: usize = 128;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutStatus {
    /// The cart is being checked out and the order placed.
    Placing,
    Reserving,
    Authorizing,
    Confirming,
    Capturing,
    Committing,
    /// Paid and committed; the cart is being closed.
    Closing,
    Completed,
    Compensating,
    Rejected,
    Cancelled,
}

impl CheckoutStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Placing => "placing",
            Self::Reserving => "reserving",
            Self::Authorizing => "authorizing",
            Self::Confirming => "confirming",
            Self::Capturing => "capturing",
            Self::Committing => "committing",
            Self::Closing => "closing",
            Self::Completed => "completed",
            Self::Compensating => "compensating",
            Self::Rejected => "rejected",
            Self::Cancelled => "cancelled",
        }
    }

    /// Rejected and cancelled checkouts take no further steps.
    pub fn is_terminal(self) -> bool {
        match self {
            Self::Rejected | Self::Cancelled => true,
            Self::Placing
            | Self::Reserving
            | Self::Authorizing
            | Self::Confirming
            | Self::Capturing
            | Self::Committing
            | Self::Closing
            | Self::Completed
            | Self::Compensating => false,
        }
    }

    /// Before the order is confirmed, the checkout's deadline cancels it; from then
    /// on (and once it compensates) the deadline does nothing.
    pub fn before_confirmation(self) -> bool {
        matches!(
            self,
            Self::Placing | Self::Reserving | Self::Authorizing | Self::Confirming
        )
    }
}

/// How a compensated checkout ends: `rejected` when the shop could not fulfil it (no
/// stock, payment declined, order refused), `cancelled` otherwise (timeout, provider
/// down, capture failed, order cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutOutcome {
    Rejected,
    Cancelled,
}

/// A call to the payment provider that may fail and be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentOperation {
    Authorize,
    Capture,
    /// Giving money back during a compensation: void, refund, or first find out
    /// whether an authorization that timed out went through.
    Settle,
}

impl PaymentOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Authorize => "authorize",
            Self::Capture => "capture",
            Self::Settle => "settle",
        }
    }
}

/// A durable deadline of one checkout, fired by the saga's timer worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "timer")]
pub enum CheckoutTimer {
    /// The checkout must be confirmed by its deadline, or it is cancelled.
    Deadline,
    /// The next try of a payment call that failed with a retryable error.
    PaymentRetry {
        operation: PaymentOperation,
        attempt: u32,
    },
}

/// How the money of a compensated checkout was given back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentSettlement {
    /// The authorization was voided before capture.
    Voided,
    /// The captured amount was refunded in full.
    Refunded,
    /// The provider holds nothing for this checkout (declined, or never reached it).
    NothingTaken,
}

/// Where the checkout's money stands, as far as it knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MoneyState {
    /// Nothing was asked of the provider.
    None,
    /// An authorization was asked for and its answer is not known yet.
    Authorizing,
    Authorized,
    Declined,
    Captured,
    Settled(PaymentSettlement),
    /// Settling failed past every retry: a person must look at the provider.
    Abandoned,
}

impl MoneyState {
    /// Money the provider may hold that a compensation must give back.
    pub fn needs_settling(self) -> bool {
        match self {
            Self::Authorizing | Self::Authorized | Self::Captured => true,
            Self::None | Self::Declined | Self::Settled(_) | Self::Abandoned => false,
        }
    }
}

/// The stock of one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineStock {
    /// Not reserved yet (or the reservation's answer is not known yet).
    Pending,
    Reserved,
    /// Could not be reserved; nothing is held.
    Unavailable,
    Committed,
    Released,
    /// Committed, then put back on hand after a cancellation.
    Restocked,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStage {
    /// Placement not answered yet.
    Placing,
    Placed,
    Confirmed,
    /// Refused at placement: there is no order.
    Refused,
    /// Rejected or cancelled.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartStage {
    /// Not checked out by this checkout (or handed back at a refused placement).
    Open,
    CheckedOut,
    Closed,
    Reopened,
}

/// One reserved line as the inventory answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    pub sku: Sku,
    pub allocations: Vec<Allocation>,
}

/// A line whose stock could not be reserved (or committed), and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnavailableLine {
    pub sku: Sku,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckoutLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
    pub reservation_id: ReservationId,
    pub stock: LineStock,
    /// The warehouses the reservation took from (empty until reserved).
    pub allocations: Vec<Allocation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckoutCommand {
    Start {
        checkout_id: CheckoutId,
        cart_id: CartId,
        customer_id: CustomerId,
        shipping_address: ShippingAddress,
        /// The provider's token for the customer's payment method.
        payment_method: String,
        started_at: DateTime<Utc>,
        /// Not confirmed by then: cancelled.
        deadline: DateTime<Utc>,
    },
    RecordOrderPlaced {
        checkout_id: CheckoutId,
        lines: Vec<LineItem>,
        at: DateTime<Utc>,
    },
    /// The cart could not be checked out or the order was refused; nothing is held.
    RecordOrderRefused {
        checkout_id: CheckoutId,
        reason: String,
        at: DateTime<Utc>,
    },
    /// The answer of every line's reservation.
    RecordStockReservation {
        checkout_id: CheckoutId,
        reserved: Vec<ReservedLine>,
        unavailable: Vec<UnavailableLine>,
        at: DateTime<Utc>,
    },
    RecordPaymentAuthorized {
        checkout_id: CheckoutId,
        provider_ref: String,
        at: DateTime<Utc>,
    },
    RecordPaymentDeclined {
        checkout_id: CheckoutId,
        reason: String,
        at: DateTime<Utc>,
    },
    /// A payment call failed; `retry_at` is when to try `attempt + 1`, `None` when the
    /// saga gives up (deadline or attempts exhausted).
    RecordPaymentFailed {
        checkout_id: CheckoutId,
        operation: PaymentOperation,
        attempt: u32,
        error: String,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    FireTimer {
        checkout_id: CheckoutId,
        timer: CheckoutTimer,
        at: DateTime<Utc>,
    },
    RecordOrderConfirmed {
        checkout_id: CheckoutId,
        at: DateTime<Utc>,
    },
    /// The order refused a step of the saga (it was cancelled from outside).
    RecordOrderWithdrawn {
        checkout_id: CheckoutId,
        reason: String,
        at: DateTime<Utc>,
    },
    RecordPaymentCaptured {
        checkout_id: CheckoutId,
        at: DateTime<Utc>,
    },
    /// The answer of every line's commit.
    RecordStockCommit {
        checkout_id: CheckoutId,
        committed: Vec<Sku>,
        failed: Vec<UnavailableLine>,
        at: DateTime<Utc>,
    },
    RecordCartClosed {
        checkout_id: CheckoutId,
        at: DateTime<Utc>,
    },
    /// The order stream says the order was cancelled (by the customer or staff).
    NoteOrderCancelled {
        checkout_id: CheckoutId,
        reason: String,
        at: DateTime<Utc>,
    },
    /// What one compensation step undid, and the payment call that failed, if one
    /// did: both are decided (and appended) together, so a step cut off after its
    /// first record cannot leave a failure unrecorded.
    RecordCompensation {
        checkout_id: CheckoutId,
        released: Vec<Sku>,
        restocked: Vec<Sku>,
        payment: Option<PaymentSettlement>,
        order_closed: bool,
        cart_reopened: bool,
        settle_failure: Option<SettleFailure>,
        at: DateTime<Utc>,
    },
}

/// A settling payment call (void or refund) that failed during a compensation step:
/// recorded as `CheckoutPaymentFailed` with operation `settle`; `retry_at` is when to
/// try `attempt + 1`, `None` when the saga gives up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleFailure {
    pub attempt: u32,
    pub error: String,
    pub retry_at: Option<DateTime<Utc>>,
}

impl CheckoutCommand {
    pub fn checkout_id(&self) -> CheckoutId {
        match self {
            Self::Start { checkout_id, .. }
            | Self::RecordOrderPlaced { checkout_id, .. }
            | Self::RecordOrderRefused { checkout_id, .. }
            | Self::RecordStockReservation { checkout_id, .. }
            | Self::RecordPaymentAuthorized { checkout_id, .. }
            | Self::RecordPaymentDeclined { checkout_id, .. }
            | Self::RecordPaymentFailed { checkout_id, .. }
            | Self::FireTimer { checkout_id, .. }
            | Self::RecordOrderConfirmed { checkout_id, .. }
            | Self::RecordOrderWithdrawn { checkout_id, .. }
            | Self::RecordPaymentCaptured { checkout_id, .. }
            | Self::RecordStockCommit { checkout_id, .. }
            | Self::RecordCartClosed { checkout_id, .. }
            | Self::NoteOrderCancelled { checkout_id, .. }
            | Self::RecordCompensation { checkout_id, .. } => *checkout_id,
        }
    }

    pub fn stream_id(&self) -> String {
        Checkout::stream_id(&self.checkout_id())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Start { .. } => "Start",
            Self::RecordOrderPlaced { .. } => "RecordOrderPlaced",
            Self::RecordOrderRefused { .. } => "RecordOrderRefused",
            Self::RecordStockReservation { .. } => "RecordStockReservation",
            Self::RecordPaymentAuthorized { .. } => "RecordPaymentAuthorized",
            Self::RecordPaymentDeclined { .. } => "RecordPaymentDeclined",
            Self::RecordPaymentFailed { .. } => "RecordPaymentFailed",
            Self::FireTimer { .. } => "FireTimer",
            Self::RecordOrderConfirmed { .. } => "RecordOrderConfirmed",
            Self::RecordOrderWithdrawn { .. } => "RecordOrderWithdrawn",
            Self::RecordPaymentCaptured { .. } => "RecordPaymentCaptured",
            Self::RecordStockCommit { .. } => "RecordStockCommit",
            Self::RecordCartClosed { .. } => "RecordCartClosed",
            Self::NoteOrderCancelled { .. } => "NoteOrderCancelled",
            Self::RecordCompensation { .. } => "RecordCompensation",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CheckoutEvent {
    CheckoutStarted {
        checkout_id: CheckoutId,
        cart_id: CartId,
        customer_id: CustomerId,
        /// Boxed only to keep the other variants small; stored as a plain object.
        shipping_address: Box<ShippingAddress>,
        payment_method: String,
        started_at: DateTime<Utc>,
        deadline: DateTime<Utc>,
    },
    CheckoutOrderPlaced {
        lines: Vec<LineItem>,
        total: Money,
        at: DateTime<Utc>,
    },
    CheckoutOrderRefused {
        reason: String,
        at: DateTime<Utc>,
    },
    CheckoutStockReserved {
        reserved: Vec<ReservedLine>,
        at: DateTime<Utc>,
    },
    CheckoutStockUnavailable {
        reserved: Vec<ReservedLine>,
        unavailable: Vec<UnavailableLine>,
        at: DateTime<Utc>,
    },
    CheckoutPaymentAuthorized {
        provider_ref: String,
        at: DateTime<Utc>,
    },
    CheckoutPaymentDeclined {
        reason: String,
        at: DateTime<Utc>,
    },
    CheckoutPaymentFailed {
        operation: PaymentOperation,
        attempt: u32,
        error: String,
        retry_at: Option<DateTime<Utc>>,
        at: DateTime<Utc>,
    },
    CheckoutPaymentRetryDue {
        operation: PaymentOperation,
        attempt: u32,
        at: DateTime<Utc>,
    },
    CheckoutOrderConfirmed {
        at: DateTime<Utc>,
    },
    CheckoutOrderWithdrawn {
        reason: String,
        at: DateTime<Utc>,
    },
    CheckoutPaymentCaptured {
        at: DateTime<Utc>,
    },
    CheckoutStockCommitted {
        at: DateTime<Utc>,
    },
    CheckoutCommitFailed {
        committed: Vec<Sku>,
        failed: Vec<UnavailableLine>,
        at: DateTime<Utc>,
    },
    CheckoutCompleted {
        at: DateTime<Utc>,
    },
    CheckoutDeadlinePassed {
        at: DateTime<Utc>,
    },
    CheckoutOrderCancelled {
        reason: String,
        at: DateTime<Utc>,
    },
    CheckoutCompensationStarted {
        outcome: CheckoutOutcome,
        reason: String,
        at: DateTime<Utc>,
    },
    CheckoutCompensated {
        released: Vec<Sku>,
        restocked: Vec<Sku>,
        payment: Option<PaymentSettlement>,
        order_closed: bool,
        cart_reopened: bool,
        at: DateTime<Utc>,
    },
    CheckoutRejected {
        reason: String,
        at: DateTime<Utc>,
    },
    CheckoutCancelled {
        reason: String,
        at: DateTime<Utc>,
    },
}

impl CheckoutEvent {
    /// Every event type with its current schema version.
    pub const TYPES: &'static [(&'static str, u32)] = &[
        ("CheckoutStarted", 1),
        ("CheckoutOrderPlaced", 1),
        ("CheckoutOrderRefused", 1),
        ("CheckoutStockReserved", 1),
        ("CheckoutStockUnavailable", 1),
        ("CheckoutPaymentAuthorized", 1),
        ("CheckoutPaymentDeclined", 1),
        ("CheckoutPaymentFailed", 1),
        ("CheckoutPaymentRetryDue", 1),
        ("CheckoutOrderConfirmed", 1),
        ("CheckoutOrderWithdrawn", 1),
        ("CheckoutPaymentCaptured", 1),
        ("CheckoutStockCommitted", 1),
        ("CheckoutCommitFailed", 1),
        ("CheckoutCompleted", 1),
        ("CheckoutDeadlinePassed", 1),
        ("CheckoutOrderCancelled", 1),
        ("CheckoutCompensationStarted", 1),
        ("CheckoutCompensated", 1),
        ("CheckoutRejected", 1),
        ("CheckoutCancelled", 1),
    ];
}

impl DomainEvent for CheckoutEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::CheckoutStarted { .. } => "CheckoutStarted",
            Self::CheckoutOrderPlaced { .. } => "CheckoutOrderPlaced",
            Self::CheckoutOrderRefused { .. } => "CheckoutOrderRefused",
            Self::CheckoutStockReserved { .. } => "CheckoutStockReserved",
            Self::CheckoutStockUnavailable { .. } => "CheckoutStockUnavailable",
            Self::CheckoutPaymentAuthorized { .. } => "CheckoutPaymentAuthorized",
            Self::CheckoutPaymentDeclined { .. } => "CheckoutPaymentDeclined",
            Self::CheckoutPaymentFailed { .. } => "CheckoutPaymentFailed",
            Self::CheckoutPaymentRetryDue { .. } => "CheckoutPaymentRetryDue",
            Self::CheckoutOrderConfirmed { .. } => "CheckoutOrderConfirmed",
            Self::CheckoutOrderWithdrawn { .. } => "CheckoutOrderWithdrawn",
            Self::CheckoutPaymentCaptured { .. } => "CheckoutPaymentCaptured",
            Self::CheckoutStockCommitted { .. } => "CheckoutStockCommitted",
            Self::CheckoutCommitFailed { .. } => "CheckoutCommitFailed",
            Self::CheckoutCompleted { .. } => "CheckoutCompleted",
            Self::CheckoutDeadlinePassed { .. } => "CheckoutDeadlinePassed",
            Self::CheckoutOrderCancelled { .. } => "CheckoutOrderCancelled",
            Self::CheckoutCompensationStarted { .. } => "CheckoutCompensationStarted",
            Self::CheckoutCompensated { .. } => "CheckoutCompensated",
            Self::CheckoutRejected { .. } => "CheckoutRejected",
            Self::CheckoutCancelled { .. } => "CheckoutCancelled",
        }
    }

    fn schema_version(&self) -> u32 {
        // Every checkout event is at its first version; `TYPES` is the table.
        1
    }

    fn to_data(&self) -> serde_json::Value {
        codec::to_data(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        data: serde_json::Value,
    ) -> Result<Self, DecodeError> {
        codec::from_stored(
            Self::TYPES,
            event_type,
            schema_version,
            data,
            codec::no_upcasts,
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct CheckoutData {
    id: CheckoutId,
    cart_id: CartId,
    customer_id: CustomerId,
    shipping_address: ShippingAddress,
    payment_method: String,
    started_at: DateTime<Utc>,
    deadline: DateTime<Utc>,
    status: CheckoutStatus,
    status_changed_at: DateTime<Utc>,
    lines: Vec<CheckoutLine>,
    total: Option<Money>,
    money: MoneyState,
    provider_ref: Option<String>,
    /// A capture was asked for and may have gone through even though it failed.
    capture_attempted: bool,
    /// The last failed attempt of the payment call in progress (0: none failed).
    failed_attempt: u32,
    order: OrderStage,
    cart: CartStage,
    outcome: Option<CheckoutOutcome>,
    /// Why the checkout failed (the first cause), or why it was refused.
    reason: Option<String>,
}

/// The state of one `checkout-<uuid>` stream; empty until `CheckoutStarted`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    data: Option<CheckoutData>,
}

impl Checkout {
    pub fn stream_id(id: &CheckoutId) -> String {
        crate::uuid_stream_name(Self::CATEGORY, id.as_uuid())
    }

    /// The order a checkout places has the checkout's UUID.
    pub fn order_id(id: CheckoutId) -> OrderId {
        OrderId::from_uuid(*id.as_uuid())
    }

    /// The checkout of an order placed by a checkout.
    pub fn of_order(order_id: OrderId) -> CheckoutId {
        CheckoutId::from_uuid(*order_id.as_uuid())
    }

    /// The one payment of a checkout.
    pub fn payment_id(id: CheckoutId) -> PaymentId {
        PaymentId::from_uuid(Uuid::new_v5(id.as_uuid(), b"payment"))
    }

    /// The one refund a compensation may make (always the whole captured amount).
    pub fn refund_id(id: CheckoutId) -> RefundId {
        RefundId::from_uuid(Uuid::new_v5(id.as_uuid(), b"refund"))
    }

    /// The reservation of one line: one per SKU, as an order has one line per SKU.
    pub fn reservation_id(id: CheckoutId, sku: &Sku) -> ReservationId {
        let name = format!("reservation:{sku}");
        ReservationId::from_uuid(Uuid::new_v5(id.as_uuid(), name.as_bytes()))
    }

    pub fn id(&self) -> Option<CheckoutId> {
        self.data.as_ref().map(|d| d.id)
    }
    pub fn cart_id(&self) -> Option<CartId> {
        self.data.as_ref().map(|d| d.cart_id)
    }
    pub fn customer_id(&self) -> Option<CustomerId> {
        self.data.as_ref().map(|d| d.customer_id)
    }
    pub fn shipping_address(&self) -> Option<&ShippingAddress> {
        self.data.as_ref().map(|d| &d.shipping_address)
    }
    pub fn payment_method(&self) -> Option<&str> {
        self.data.as_ref().map(|d| d.payment_method.as_str())
    }
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.data.as_ref().map(|d| d.started_at)
    }
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.data.as_ref().map(|d| d.deadline)
    }
    pub fn status(&self) -> Option<CheckoutStatus> {
        self.data.as_ref().map(|d| d.status)
    }
    pub fn status_changed_at(&self) -> Option<DateTime<Utc>> {
        self.data.as_ref().map(|d| d.status_changed_at)
    }
    pub fn lines(&self) -> &[CheckoutLine] {
        self.data.as_ref().map_or(&[], |d| d.lines.as_slice())
    }
    pub fn total(&self) -> Option<Money> {
        self.data.as_ref().and_then(|d| d.total)
    }
    pub fn money(&self) -> Option<MoneyState> {
        self.data.as_ref().map(|d| d.money)
    }
    pub fn provider_ref(&self) -> Option<&str> {
        self.data.as_ref().and_then(|d| d.provider_ref.as_deref())
    }
    pub fn capture_attempted(&self) -> bool {
        self.data.as_ref().is_some_and(|d| d.capture_attempted)
    }
    pub fn order_stage(&self) -> Option<OrderStage> {
        self.data.as_ref().map(|d| d.order)
    }
    pub fn cart_stage(&self) -> Option<CartStage> {
        self.data.as_ref().map(|d| d.cart)
    }
    pub fn outcome(&self) -> Option<CheckoutOutcome> {
        self.data.as_ref().and_then(|d| d.outcome)
    }
    pub fn reason(&self) -> Option<&str> {
        self.data.as_ref().and_then(|d| d.reason.as_deref())
    }

    /// Whether a compensation still has something to undo or wait for: a
    /// reservation held or unanswered, money to give back, an order to close, a cart
    /// to reopen, or a placement not answered yet.
    pub fn compensation_outstanding(&self) -> bool {
        self.data.as_ref().is_some_and(CheckoutData::outstanding)
    }

    fn start(&self, command: &CheckoutCommand) -> Result<Vec<CheckoutEvent>, DomainError> {
        let CheckoutCommand::Start {
            checkout_id,
            cart_id,
            customer_id,
            shipping_address,
            payment_method,
            started_at,
            deadline,
        } = command
        else {
            return Ok(vec![]);
        };
        if self.data.is_some() {
            return Err(DomainError::AlreadyExists {
                aggregate: Self::CATEGORY,
            });
        }
        text::required("payment_method", payment_method, MAX_PAYMENT_METHOD_CHARS)?;
        if deadline <= started_at {
            return Err(DomainError::invalid(
                "deadline",
                "must be after the start of the checkout",
            ));
        }
        Ok(vec![CheckoutEvent::CheckoutStarted {
            checkout_id: *checkout_id,
            cart_id: *cart_id,
            customer_id: *customer_id,
            shipping_address: Box::new(shipping_address.clone()),
            payment_method: payment_method.clone(),
            started_at: *started_at,
            deadline: *deadline,
        }])
    }

    fn existing(&self, command: &CheckoutCommand) -> Result<&CheckoutData, DomainError> {
        let data = self.data.as_ref().ok_or(DomainError::NotFound {
            aggregate: Self::CATEGORY,
        })?;
        if data.id != command.checkout_id() {
            return Err(DomainError::WrongStream {
                expected: Self::stream_id(&data.id),
                actual: command.stream_id(),
            });
        }
        Ok(data)
    }
}

impl CheckoutData {
    fn outstanding(&self) -> bool {
        self.lines.iter().any(|l| {
            matches!(
                l.stock,
                LineStock::Pending | LineStock::Reserved | LineStock::Committed
            )
        }) || self.money.needs_settling()
            || matches!(
                self.order,
                OrderStage::Placing | OrderStage::Placed | OrderStage::Confirmed
            )
            || self.cart == CartStage::CheckedOut
    }

    fn line_mut(&mut self, sku: &Sku) -> Option<&mut CheckoutLine> {
        self.lines.iter_mut().find(|l| &l.sku == sku)
    }
}

fn reason(field: &'static str, value: &str) -> Result<(), DomainError> {
    text::required(field, value, MAX_REASON_CHARS)
}

/// The events that start a compensation, followed by its end when nothing is
/// outstanding (the state after `facts` is computed here to know).
fn compensate(
    state: &Checkout,
    mut facts: Vec<CheckoutEvent>,
    outcome: CheckoutOutcome,
    why: &str,
    at: DateTime<Utc>,
) -> Vec<CheckoutEvent> {
    facts.push(CheckoutEvent::CheckoutCompensationStarted {
        outcome,
        reason: why.to_owned(),
        at,
    });
    finish_if_settled(state, facts, at)
}

/// Appends the terminal event if, after `events`, a compensating checkout has
/// nothing outstanding.
fn finish_if_settled(
    state: &Checkout,
    mut events: Vec<CheckoutEvent>,
    at: DateTime<Utc>,
) -> Vec<CheckoutEvent> {
    let after = events.iter().fold(state.clone(), Checkout::evolve);
    let Some(data) = after.data.as_ref() else {
        return events;
    };
    if data.status != CheckoutStatus::Compensating || data.outstanding() {
        return events;
    }
    let why = data.reason.clone().unwrap_or_else(|| "compensated".into());
    events.push(match data.outcome {
        Some(CheckoutOutcome::Rejected) => CheckoutEvent::CheckoutRejected { reason: why, at },
        Some(CheckoutOutcome::Cancelled) | None => {
            CheckoutEvent::CheckoutCancelled { reason: why, at }
        }
    });
    events
}

impl Aggregate for Checkout {
    type Command = CheckoutCommand;
    type Event = CheckoutEvent;
    const CATEGORY: &'static str = "checkout";

    fn decide(&self, command: &CheckoutCommand) -> Result<Vec<CheckoutEvent>, DomainError> {
        use CheckoutStatus as S;
        if let CheckoutCommand::Start { .. } = command {
            return self.start(command);
        }
        let data = self.existing(command)?;
        let status = data.status;
        Ok(match command {
            // Handled above; a started checkout refuses a second start.
            CheckoutCommand::Start { .. } => return self.start(command),
            CheckoutCommand::RecordOrderPlaced { lines, at, .. } => {
                if data.order != OrderStage::Placing {
                    return Ok(vec![]);
                }
                let first = lines.first().ok_or_else(|| {
                    DomainError::invalid("lines", "an order needs at least one line")
                })?;
                let total = sum(first.unit_price.currency, lines)?;
                let placed = CheckoutEvent::CheckoutOrderPlaced {
                    lines: lines.clone(),
                    total,
                    at: *at,
                };
                // Placed after a compensation started (a placement that answered
                // late): the compensation now also closes the order and the cart.
                finish_if_settled(self, vec![placed], *at)
            }
            CheckoutCommand::RecordOrderRefused {
                reason: why, at, ..
            } => {
                if data.order != OrderStage::Placing {
                    return Ok(vec![]);
                }
                reason("reason", why)?;
                let refused = CheckoutEvent::CheckoutOrderRefused {
                    reason: why.clone(),
                    at: *at,
                };
                if status == S::Placing {
                    compensate(self, vec![refused], CheckoutOutcome::Rejected, why, *at)
                } else {
                    finish_if_settled(self, vec![refused], *at)
                }
            }
            CheckoutCommand::RecordStockReservation {
                reserved,
                unavailable,
                at,
                ..
            } => {
                for line in reserved
                    .iter()
                    .map(|r| &r.sku)
                    .chain(unavailable.iter().map(|u| &u.sku))
                {
                    if !data.lines.iter().any(|l| &l.sku == line) {
                        return Err(DomainError::UnknownSku { sku: line.clone() });
                    }
                }
                let pending = |sku: &Sku| {
                    data.lines
                        .iter()
                        .any(|l| &l.sku == sku && l.stock == LineStock::Pending)
                };
                let reserved: Vec<ReservedLine> = reserved
                    .iter()
                    .filter(|r| pending(&r.sku))
                    .cloned()
                    .collect();
                let unavailable: Vec<UnavailableLine> = unavailable
                    .iter()
                    .filter(|u| pending(&u.sku))
                    .cloned()
                    .collect();
                if reserved.is_empty() && unavailable.is_empty() {
                    return Ok(vec![]);
                }
                let answered = reserved.len() + unavailable.len();
                let all_answered = answered
                    == data
                        .lines
                        .iter()
                        .filter(|l| l.stock == LineStock::Pending)
                        .count();
                if !all_answered {
                    return Err(DomainError::invalid(
                        "reserved",
                        "every pending line needs an answer",
                    ));
                }
                if let Some(first) = unavailable.first() {
                    let why = format!("out of stock: {}: {}", first.sku, first.reason);
                    let fact = CheckoutEvent::CheckoutStockUnavailable {
                        reserved,
                        unavailable,
                        at: *at,
                    };
                    if status == S::Reserving {
                        compensate(self, vec![fact], CheckoutOutcome::Rejected, &why, *at)
                    } else {
                        finish_if_settled(self, vec![fact], *at)
                    }
                } else {
                    let fact = CheckoutEvent::CheckoutStockReserved { reserved, at: *at };
                    finish_if_settled(self, vec![fact], *at)
                }
            }
            CheckoutCommand::RecordPaymentAuthorized {
                provider_ref, at, ..
            } => {
                if data.money != MoneyState::Authorizing {
                    return Ok(vec![]);
                }
                text::required("provider_ref", provider_ref, MAX_PROVIDER_REF_CHARS)?;
                vec![CheckoutEvent::CheckoutPaymentAuthorized {
                    provider_ref: provider_ref.clone(),
                    at: *at,
                }]
            }
            CheckoutCommand::RecordPaymentDeclined {
                reason: why, at, ..
            } => {
                if data.money != MoneyState::Authorizing {
                    return Ok(vec![]);
                }
                reason("reason", why)?;
                let fact = CheckoutEvent::CheckoutPaymentDeclined {
                    reason: why.clone(),
                    at: *at,
                };
                if status == S::Authorizing {
                    let why = format!("payment declined: {why}");
                    compensate(self, vec![fact], CheckoutOutcome::Rejected, &why, *at)
                } else {
                    finish_if_settled(self, vec![fact], *at)
                }
            }
            CheckoutCommand::RecordPaymentFailed {
                operation,
                attempt,
                error,
                retry_at,
                at,
                ..
            } => {
                let in_progress = match operation {
                    PaymentOperation::Authorize => status == S::Authorizing,
                    PaymentOperation::Capture => status == S::Capturing,
                    PaymentOperation::Settle => {
                        status == S::Compensating && data.money.needs_settling()
                    }
                };
                if !in_progress || *attempt <= data.failed_attempt {
                    return Ok(vec![]);
                }
                reason("error", error)?;
                let fact = CheckoutEvent::CheckoutPaymentFailed {
                    operation: *operation,
                    attempt: *attempt,
                    error: error.clone(),
                    retry_at: *retry_at,
                    at: *at,
                };
                match (operation, retry_at) {
                    (_, Some(_)) => vec![fact],
                    (PaymentOperation::Authorize, None) => {
                        let why = format!("payment provider unavailable: {error}");
                        compensate(self, vec![fact], CheckoutOutcome::Cancelled, &why, *at)
                    }
                    (PaymentOperation::Capture, None) => {
                        let why = format!("capture failed: {error}");
                        compensate(self, vec![fact], CheckoutOutcome::Cancelled, &why, *at)
                    }
                    (PaymentOperation::Settle, None) => finish_if_settled(self, vec![fact], *at),
                }
            }
            CheckoutCommand::FireTimer { timer, at, .. } => match timer {
                CheckoutTimer::Deadline => {
                    if !status.before_confirmation() {
                        return Ok(vec![]);
                    }
                    let fact = CheckoutEvent::CheckoutDeadlinePassed { at: *at };
                    compensate(
                        self,
                        vec![fact],
                        CheckoutOutcome::Cancelled,
                        "the checkout timed out",
                        *at,
                    )
                }
                CheckoutTimer::PaymentRetry { operation, attempt } => {
                    let waiting = match operation {
                        PaymentOperation::Authorize => status == S::Authorizing,
                        PaymentOperation::Capture => status == S::Capturing,
                        PaymentOperation::Settle => {
                            status == S::Compensating && data.money.needs_settling()
                        }
                    };
                    if !waiting || *attempt != data.failed_attempt + 1 {
                        return Ok(vec![]);
                    }
                    vec![CheckoutEvent::CheckoutPaymentRetryDue {
                        operation: *operation,
                        attempt: *attempt,
                        at: *at,
                    }]
                }
            },
            CheckoutCommand::RecordOrderConfirmed { at, .. } => {
                if data.order != OrderStage::Placed || status != S::Confirming {
                    return Ok(vec![]);
                }
                vec![CheckoutEvent::CheckoutOrderConfirmed { at: *at }]
            }
            CheckoutCommand::RecordOrderWithdrawn {
                reason: why, at, ..
            } => {
                if status == S::Compensating || status.is_terminal() {
                    return Ok(vec![]);
                }
                reason("reason", why)?;
                let fact = CheckoutEvent::CheckoutOrderWithdrawn {
                    reason: why.clone(),
                    at: *at,
                };
                let why = format!("the order was withdrawn: {why}");
                compensate(self, vec![fact], CheckoutOutcome::Cancelled, &why, *at)
            }
            CheckoutCommand::RecordPaymentCaptured { at, .. } => {
                if data.money != MoneyState::Authorized || !data.capture_attempted {
                    return Ok(vec![]);
                }
                vec![CheckoutEvent::CheckoutPaymentCaptured { at: *at }]
            }
            CheckoutCommand::RecordStockCommit {
                committed,
                failed,
                at,
                ..
            } => {
                if status != S::Committing {
                    return Ok(vec![]);
                }
                for sku in committed.iter().chain(failed.iter().map(|f| &f.sku)) {
                    if !data.lines.iter().any(|l| &l.sku == sku) {
                        return Err(DomainError::UnknownSku { sku: sku.clone() });
                    }
                }
                match failed.first() {
                    None => {
                        let all = data
                            .lines
                            .iter()
                            .all(|l| l.stock == LineStock::Committed || committed.contains(&l.sku));
                        if !all {
                            return Err(DomainError::invalid(
                                "committed",
                                "every reserved line needs an answer",
                            ));
                        }
                        vec![CheckoutEvent::CheckoutStockCommitted { at: *at }]
                    }
                    Some(first) => {
                        let why = format!(
                            "stock could not be committed: {}: {}",
                            first.sku, first.reason
                        );
                        let fact = CheckoutEvent::CheckoutCommitFailed {
                            committed: committed.clone(),
                            failed: failed.clone(),
                            at: *at,
                        };
                        compensate(self, vec![fact], CheckoutOutcome::Cancelled, &why, *at)
                    }
                }
            }
            CheckoutCommand::RecordCartClosed { at, .. } => {
                if status != S::Closing {
                    return Ok(vec![]);
                }
                vec![CheckoutEvent::CheckoutCompleted { at: *at }]
            }
            CheckoutCommand::NoteOrderCancelled {
                reason: why, at, ..
            } => {
                if status == S::Compensating
                    || status.is_terminal()
                    || !matches!(data.order, OrderStage::Placed | OrderStage::Confirmed)
                {
                    return Ok(vec![]);
                }
                reason("reason", why)?;
                let fact = CheckoutEvent::CheckoutOrderCancelled {
                    reason: why.clone(),
                    at: *at,
                };
                let why = format!("the order was cancelled: {why}");
                compensate(self, vec![fact], CheckoutOutcome::Cancelled, &why, *at)
            }
            CheckoutCommand::RecordCompensation {
                released,
                restocked,
                payment,
                order_closed,
                cart_reopened,
                settle_failure,
                at,
                ..
            } => {
                if status != S::Compensating {
                    return Ok(vec![]);
                }
                // The failed call, as `RecordPaymentFailed` (operation settle) would
                // record it.
                let failed = match settle_failure {
                    Some(failure)
                        if payment.is_none()
                            && data.money.needs_settling()
                            && failure.attempt > data.failed_attempt =>
                    {
                        reason("error", &failure.error)?;
                        Some(CheckoutEvent::CheckoutPaymentFailed {
                            operation: PaymentOperation::Settle,
                            attempt: failure.attempt,
                            error: failure.error.clone(),
                            retry_at: failure.retry_at,
                            at: *at,
                        })
                    }
                    _ => None,
                };
                let released: Vec<Sku> = released
                    .iter()
                    .filter(|sku| {
                        data.lines
                            .iter()
                            .any(|l| &l.sku == *sku && l.stock == LineStock::Reserved)
                    })
                    .cloned()
                    .collect();
                // A reserved line may come back restocked: committed by a late
                // commit, then put back on hand.
                let restocked: Vec<Sku> = restocked
                    .iter()
                    .filter(|sku| {
                        data.lines.iter().any(|l| {
                            &l.sku == *sku
                                && matches!(l.stock, LineStock::Committed | LineStock::Reserved)
                        })
                    })
                    .cloned()
                    .collect();
                let payment = payment.filter(|_| data.money.needs_settling());
                let order_closed = *order_closed
                    && matches!(data.order, OrderStage::Placed | OrderStage::Confirmed);
                let cart_reopened = *cart_reopened && data.cart == CartStage::CheckedOut;
                let mut facts = Vec::new();
                if !released.is_empty()
                    || !restocked.is_empty()
                    || payment.is_some()
                    || order_closed
                    || cart_reopened
                {
                    facts.push(CheckoutEvent::CheckoutCompensated {
                        released,
                        restocked,
                        payment,
                        order_closed,
                        cart_reopened,
                        at: *at,
                    });
                }
                facts.extend(failed);
                finish_if_settled(self, facts, *at)
            }
        })
    }

    fn evolve(mut self, event: &CheckoutEvent) -> Self {
        if let CheckoutEvent::CheckoutStarted {
            checkout_id,
            cart_id,
            customer_id,
            shipping_address,
            payment_method,
            started_at,
            deadline,
        } = event
        {
            self.data = Some(CheckoutData {
                id: *checkout_id,
                cart_id: *cart_id,
                customer_id: *customer_id,
                shipping_address: ShippingAddress::clone(shipping_address),
                payment_method: payment_method.clone(),
                started_at: *started_at,
                deadline: *deadline,
                status: CheckoutStatus::Placing,
                status_changed_at: *started_at,
                lines: Vec::new(),
                total: None,
                money: MoneyState::None,
                provider_ref: None,
                capture_attempted: false,
                failed_attempt: 0,
                order: OrderStage::Placing,
                cart: CartStage::Open,
                outcome: None,
                reason: None,
            });
            return self;
        }
        let Some(data) = &mut self.data else {
            return self;
        };
        let compensating = data.status == CheckoutStatus::Compensating;
        // The status a fact moves the checkout to, unless it is compensating.
        let mut next: Option<(CheckoutStatus, DateTime<Utc>)> = None;
        match event {
            CheckoutEvent::CheckoutStarted { .. } => {}
            CheckoutEvent::CheckoutOrderPlaced { lines, total, at } => {
                let id = data.id;
                data.lines = lines
                    .iter()
                    .map(|line| CheckoutLine {
                        sku: line.sku.clone(),
                        quantity: line.quantity,
                        unit_price: line.unit_price,
                        reservation_id: Checkout::reservation_id(id, &line.sku),
                        // Placed after a compensation started: nothing will be
                        // reserved for it.
                        stock: if compensating {
                            LineStock::Unavailable
                        } else {
                            LineStock::Pending
                        },
                        allocations: Vec::new(),
                    })
                    .collect();
                data.total = Some(*total);
                data.order = OrderStage::Placed;
                data.cart = CartStage::CheckedOut;
                next = Some((CheckoutStatus::Reserving, *at));
            }
            CheckoutEvent::CheckoutOrderRefused { .. } => {
                data.order = OrderStage::Refused;
            }
            CheckoutEvent::CheckoutStockReserved { reserved, at } => {
                for line in reserved {
                    if let Some(l) = data.line_mut(&line.sku) {
                        l.stock = LineStock::Reserved;
                        l.allocations = line.allocations.clone();
                    }
                }
                data.money = MoneyState::Authorizing;
                data.failed_attempt = 0;
                next = Some((CheckoutStatus::Authorizing, *at));
            }
            CheckoutEvent::CheckoutStockUnavailable {
                reserved,
                unavailable,
                ..
            } => {
                for line in reserved {
                    if let Some(l) = data.line_mut(&line.sku) {
                        l.stock = LineStock::Reserved;
                        l.allocations = line.allocations.clone();
                    }
                }
                for line in unavailable {
                    if let Some(l) = data.line_mut(&line.sku) {
                        l.stock = LineStock::Unavailable;
                    }
                }
            }
            CheckoutEvent::CheckoutPaymentAuthorized { provider_ref, at } => {
                data.money = MoneyState::Authorized;
                data.provider_ref = Some(provider_ref.clone());
                data.failed_attempt = 0;
                next = Some((CheckoutStatus::Confirming, *at));
            }
            CheckoutEvent::CheckoutPaymentDeclined { .. } => {
                data.money = MoneyState::Declined;
            }
            CheckoutEvent::CheckoutPaymentFailed {
                operation,
                attempt,
                retry_at,
                ..
            } => {
                data.failed_attempt = *attempt;
                if *operation == PaymentOperation::Settle && retry_at.is_none() {
                    data.money = MoneyState::Abandoned;
                }
            }
            CheckoutEvent::CheckoutPaymentRetryDue { .. } => {}
            CheckoutEvent::CheckoutOrderConfirmed { at } => {
                data.order = OrderStage::Confirmed;
                data.capture_attempted = true;
                data.failed_attempt = 0;
                next = Some((CheckoutStatus::Capturing, *at));
            }
            // An authorization asked for (or about to be) stays `authorizing`: the
            // compensation finds out from the provider whether it went through.
            CheckoutEvent::CheckoutOrderWithdrawn { .. }
            | CheckoutEvent::CheckoutOrderCancelled { .. } => {
                data.order = OrderStage::Closed;
            }
            CheckoutEvent::CheckoutPaymentCaptured { at } => {
                data.money = MoneyState::Captured;
                data.failed_attempt = 0;
                next = Some((CheckoutStatus::Committing, *at));
            }
            CheckoutEvent::CheckoutStockCommitted { at } => {
                for line in &mut data.lines {
                    if line.stock == LineStock::Reserved {
                        line.stock = LineStock::Committed;
                    }
                }
                next = Some((CheckoutStatus::Closing, *at));
            }
            CheckoutEvent::CheckoutCommitFailed {
                committed, failed, ..
            } => {
                for sku in committed {
                    if let Some(l) = data.line_mut(sku) {
                        l.stock = LineStock::Committed;
                    }
                }
                for line in failed {
                    // The reservation ended (expired) before the commit: nothing held.
                    if let Some(l) = data.line_mut(&line.sku) {
                        l.stock = LineStock::Unavailable;
                    }
                }
            }
            CheckoutEvent::CheckoutCompleted { at } => {
                data.cart = CartStage::Closed;
                next = Some((CheckoutStatus::Completed, *at));
            }
            CheckoutEvent::CheckoutDeadlinePassed { .. } => {}
            CheckoutEvent::CheckoutCompensationStarted {
                outcome,
                reason,
                at,
            } => {
                data.outcome = Some(*outcome);
                data.reason = Some(reason.clone());
                data.failed_attempt = 0;
                data.status = CheckoutStatus::Compensating;
                data.status_changed_at = *at;
            }
            CheckoutEvent::CheckoutCompensated {
                released,
                restocked,
                payment,
                order_closed,
                cart_reopened,
                ..
            } => {
                for sku in released {
                    if let Some(l) = data.line_mut(sku) {
                        l.stock = LineStock::Released;
                    }
                }
                for sku in restocked {
                    if let Some(l) = data.line_mut(sku) {
                        l.stock = LineStock::Restocked;
                    }
                }
                if let Some(settlement) = payment {
                    data.money = MoneyState::Settled(*settlement);
                    data.failed_attempt = 0;
                }
                if *order_closed {
                    data.order = OrderStage::Closed;
                }
                if *cart_reopened {
                    data.cart = CartStage::Reopened;
                }
            }
            CheckoutEvent::CheckoutRejected { at, .. } => {
                data.status = CheckoutStatus::Rejected;
                data.status_changed_at = *at;
            }
            CheckoutEvent::CheckoutCancelled { at, .. } => {
                data.status = CheckoutStatus::Cancelled;
                data.status_changed_at = *at;
            }
        }
        if let Some((status, at)) = next {
            if !compensating && !data.status.is_terminal() {
                data.status = status;
                data.status_changed_at = at;
            }
        }
        self
    }
}
