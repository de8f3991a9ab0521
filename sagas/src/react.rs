//! The saga's decisions, pure: given a checkout's state right after one of its
//! events, which steps to run next. No clock, no I/O: the runner dispatches the steps
//! and records each one's outcome back on the checkout stream, which produces the
//! next event. Because the state passed in is the state *as of* the event (not the
//! latest), re-processing an event after a crash yields the very same steps, and the
//! steps' command ids and idempotency keys (derived from the checkout) make running
//! them again harmless.

use chrono::{DateTime, Utc};
use domain::{
    Allocation, CartId, CartStage, Checkout, CheckoutEvent, CheckoutId, CheckoutOutcome,
    CheckoutStatus, CheckoutTimer, LineStock, Money, MoneyState, OrderId, OrderStage, PaymentId,
    PaymentOperation, Quantity, ReservationId, ShippingAddress, Sku,
};

/// One line to reserve or commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StockLine {
    pub sku: Sku,
    pub quantity: Quantity,
    pub reservation_id: ReservationId,
    /// Where the reservation took the units from (empty before it is made).
    pub allocations: Vec<Allocation>,
}

/// A committed line to put back on hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestockLine {
    pub sku: Sku,
    pub allocations: Vec<Allocation>,
}

/// The money a compensation gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    pub payment_id: PaymentId,
    pub order_id: OrderId,
    pub amount: Money,
    pub payment_method: String,
    /// `None`: an authorization was asked for and its answer is unknown; the same
    /// idempotency key tells whether it went through.
    pub provider_ref: Option<String>,
    /// The capture is known to have gone through: refund. Otherwise void, and
    /// refund if the provider refuses the void.
    pub captured: bool,
}

/// Everything a compensating checkout still has to undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compensation {
    pub checkout_id: CheckoutId,
    pub release: Vec<StockLine>,
    pub restock: Vec<RestockLine>,
    pub settle: Option<Settle>,
    /// The order to close, and how (reject or cancel).
    pub close_order: Option<(OrderId, CheckoutOutcome)>,
    pub reason: String,
    pub reopen_cart: Option<CartId>,
    /// The try of the payment settlement (1 for the first).
    pub attempt: u32,
}

/// A step of the checkout saga. Each ends with one outcome recorded on the checkout
/// stream (except `ScheduleTimer`, which writes a durable timer row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    ScheduleTimer {
        checkout_id: CheckoutId,
        timer: CheckoutTimer,
        at: DateTime<Utc>,
    },
    /// Check the cart out and place its order with the cart's lines and prices.
    PlaceOrder {
        checkout_id: CheckoutId,
        cart_id: CartId,
        order_id: OrderId,
        shipping_address: ShippingAddress,
    },
    ReserveStock {
        checkout_id: CheckoutId,
        order_id: OrderId,
        lines: Vec<StockLine>,
    },
    /// Ask the provider for an authorization (unless the order was closed first).
    AuthorizePayment {
        checkout_id: CheckoutId,
        order_id: OrderId,
        payment_id: PaymentId,
        amount: Money,
        payment_method: String,
        attempt: u32,
    },
    /// Tell the order its stock is reserved and its payment authorized, and confirm
    /// it (one append on the order's stream), then capture the payment (the first
    /// try of [`Step::CapturePayment`], in the same step).
    ConfirmOrder {
        checkout_id: CheckoutId,
        order_id: OrderId,
        payment_id: PaymentId,
        amount: Money,
        provider_ref: String,
        reservations: Vec<ReservationId>,
    },
    CapturePayment {
        checkout_id: CheckoutId,
        payment_id: PaymentId,
        provider_ref: String,
        amount: Money,
        attempt: u32,
    },
    /// Commit every reserved line, then, if all were committed, close the cart
    /// ([`Step::CloseCart`], in the same step).
    CommitStock {
        checkout_id: CheckoutId,
        lines: Vec<StockLine>,
        cart_id: Option<CartId>,
    },
    CloseCart {
        checkout_id: CheckoutId,
        cart_id: CartId,
        order_id: OrderId,
    },
    Compensate(Compensation),
}

impl Step {
    /// A short stable name, for logs, metrics and command ids.
    pub fn name(&self) -> &'static str {
        match self {
            Self::ScheduleTimer { .. } => "schedule-timer",
            Self::PlaceOrder { .. } => "place-order",
            Self::ReserveStock { .. } => "reserve-stock",
            Self::AuthorizePayment { .. } => "authorize-payment",
            Self::ConfirmOrder { .. } => "confirm-order",
            Self::CapturePayment { .. } => "capture-payment",
            Self::CommitStock { .. } => "commit-stock",
            Self::CloseCart { .. } => "close-cart",
            Self::Compensate(_) => "compensate",
        }
    }
}

/// The steps that `event` calls for, given the checkout's state right after it.
pub fn react(state: &Checkout, event: &CheckoutEvent) -> Vec<Step> {
    let (Some(id), Some(status)) = (state.id(), state.status()) else {
        return Vec::new();
    };
    let compensating = status == CheckoutStatus::Compensating;
    // A fact that answered late, while compensating, may have left something to undo.
    let compensate_if_needed = || {
        if compensating && state.compensation_outstanding() {
            vec![Step::Compensate(compensation(state, id, 1))]
        } else {
            Vec::new()
        }
    };
    match event {
        CheckoutEvent::CheckoutStarted {
            cart_id,
            shipping_address,
            deadline,
            ..
        } => vec![
            Step::ScheduleTimer {
                checkout_id: id,
                timer: CheckoutTimer::Deadline,
                at: *deadline,
            },
            Step::PlaceOrder {
                checkout_id: id,
                cart_id: *cart_id,
                order_id: Checkout::order_id(id),
                shipping_address: ShippingAddress::clone(shipping_address),
            },
        ],
        CheckoutEvent::CheckoutOrderPlaced { .. } => match status {
            CheckoutStatus::Reserving => vec![Step::ReserveStock {
                checkout_id: id,
                order_id: Checkout::order_id(id),
                lines: lines_in(state, LineStock::Pending),
            }],
            _ => compensate_if_needed(),
        },
        CheckoutEvent::CheckoutStockReserved { .. } => match status {
            CheckoutStatus::Authorizing => authorize(state, id, 1),
            _ => compensate_if_needed(),
        },
        CheckoutEvent::CheckoutPaymentAuthorized { .. } => match status {
            CheckoutStatus::Confirming => match (state.total(), state.provider_ref()) {
                (Some(amount), Some(provider_ref)) => vec![Step::ConfirmOrder {
                    checkout_id: id,
                    order_id: Checkout::order_id(id),
                    payment_id: Checkout::payment_id(id),
                    amount,
                    provider_ref: provider_ref.to_owned(),
                    reservations: state.lines().iter().map(|l| l.reservation_id).collect(),
                }],
                _ => Vec::new(),
            },
            _ => compensate_if_needed(),
        },
        CheckoutEvent::CheckoutOrderConfirmed { .. } => capture(state, id, 1),
        CheckoutEvent::CheckoutPaymentCaptured { .. } => match status {
            CheckoutStatus::Committing => vec![Step::CommitStock {
                checkout_id: id,
                lines: lines_in(state, LineStock::Reserved),
                cart_id: state.cart_id(),
            }],
            _ => compensate_if_needed(),
        },
        CheckoutEvent::CheckoutStockCommitted { .. } => match state.cart_id() {
            Some(cart_id) if status == CheckoutStatus::Closing => vec![Step::CloseCart {
                checkout_id: id,
                cart_id,
                order_id: Checkout::order_id(id),
            }],
            _ => Vec::new(),
        },
        CheckoutEvent::CheckoutPaymentFailed {
            operation,
            attempt,
            retry_at: Some(at),
            ..
        } => vec![Step::ScheduleTimer {
            checkout_id: id,
            timer: CheckoutTimer::PaymentRetry {
                operation: *operation,
                attempt: attempt + 1,
            },
            at: *at,
        }],
        CheckoutEvent::CheckoutPaymentRetryDue {
            operation, attempt, ..
        } => match operation {
            PaymentOperation::Authorize => authorize(state, id, *attempt),
            PaymentOperation::Capture => capture(state, id, *attempt),
            PaymentOperation::Settle => vec![Step::Compensate(compensation(state, id, *attempt))],
        },
        CheckoutEvent::CheckoutStockUnavailable { .. } => compensate_if_needed(),
        CheckoutEvent::CheckoutCompensationStarted { .. } => compensate_if_needed(),
        // Facts that need nothing further: a failure that gave up is followed by the
        // compensation it starts (in the same append), the end states need nothing.
        CheckoutEvent::CheckoutPaymentFailed { retry_at: None, .. }
        | CheckoutEvent::CheckoutOrderRefused { .. }
        | CheckoutEvent::CheckoutPaymentDeclined { .. }
        | CheckoutEvent::CheckoutOrderWithdrawn { .. }
        | CheckoutEvent::CheckoutCommitFailed { .. }
        | CheckoutEvent::CheckoutCompleted { .. }
        | CheckoutEvent::CheckoutDeadlinePassed { .. }
        | CheckoutEvent::CheckoutOrderCancelled { .. }
        | CheckoutEvent::CheckoutCompensated { .. }
        | CheckoutEvent::CheckoutRejected { .. }
        | CheckoutEvent::CheckoutCancelled { .. } => Vec::new(),
    }
}

fn lines_in(state: &Checkout, stock: LineStock) -> Vec<StockLine> {
    state
        .lines()
        .iter()
        .filter(|l| l.stock == stock)
        .map(|l| StockLine {
            sku: l.sku.clone(),
            quantity: l.quantity,
            reservation_id: l.reservation_id,
            allocations: l.allocations.clone(),
        })
        .collect()
}

fn authorize(state: &Checkout, id: CheckoutId, attempt: u32) -> Vec<Step> {
    if state.status() != Some(CheckoutStatus::Authorizing) {
        return Vec::new();
    }
    let (Some(amount), Some(payment_method)) = (state.total(), state.payment_method()) else {
        return Vec::new();
    };
    vec![Step::AuthorizePayment {
        checkout_id: id,
        order_id: Checkout::order_id(id),
        payment_id: Checkout::payment_id(id),
        amount,
        payment_method: payment_method.to_owned(),
        attempt,
    }]
}

fn capture(state: &Checkout, id: CheckoutId, attempt: u32) -> Vec<Step> {
    if state.status() != Some(CheckoutStatus::Capturing) {
        return Vec::new();
    }
    let (Some(amount), Some(provider_ref)) = (state.total(), state.provider_ref()) else {
        return Vec::new();
    };
    vec![Step::CapturePayment {
        checkout_id: id,
        payment_id: Checkout::payment_id(id),
        provider_ref: provider_ref.to_owned(),
        amount,
        attempt,
    }]
}

/// What is left to undo, from the state.
pub fn compensation(state: &Checkout, id: CheckoutId, attempt: u32) -> Compensation {
    let money = state.money().unwrap_or(MoneyState::None);
    let settle = match (
        money.needs_settling(),
        state.total(),
        state.payment_method(),
    ) {
        (true, Some(amount), Some(payment_method)) => Some(Settle {
            payment_id: Checkout::payment_id(id),
            order_id: Checkout::order_id(id),
            amount,
            payment_method: payment_method.to_owned(),
            provider_ref: match money {
                MoneyState::Authorizing => None,
                _ => state.provider_ref().map(str::to_owned),
            },
            captured: money == MoneyState::Captured,
        }),
        _ => None,
    };
    let close_order = match state.order_stage() {
        Some(OrderStage::Placed | OrderStage::Confirmed) => Some((
            Checkout::order_id(id),
            state.outcome().unwrap_or(CheckoutOutcome::Cancelled),
        )),
        Some(OrderStage::Placing | OrderStage::Refused | OrderStage::Closed) | None => None,
    };
    Compensation {
        checkout_id: id,
        release: lines_in(state, LineStock::Reserved),
        restock: state
            .lines()
            .iter()
            .filter(|l| l.stock == LineStock::Committed)
            .map(|l| RestockLine {
                sku: l.sku.clone(),
                allocations: l.allocations.clone(),
            })
            .collect(),
        settle,
        close_order,
        reason: state.reason().unwrap_or("compensated").to_owned(),
        reopen_cart: match state.cart_stage() {
            Some(CartStage::CheckedOut) => state.cart_id(),
            Some(CartStage::Open | CartStage::Closed | CartStage::Reopened) | None => None,
        },
        attempt,
    }
}
