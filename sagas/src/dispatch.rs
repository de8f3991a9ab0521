//! Runs one step of the saga: the commands on the other aggregates and the calls to
//! the payment provider, then the outcome as a command on the checkout stream.
//!
//! Every command id is derived from the checkout and the step (never random), and
//! every provider call carries an idempotency key derived the same way, so a step run
//! twice (a crash before its outcome was recorded, a duplicate reaction) gets the
//! first answers. A refusal that may just mean "done already" (releasing a released
//! reservation, confirming a confirmed order) is checked against the aggregate's
//! state before it counts as a failure. Errors of the store or the command side fail
//! the step, and with it the runner's batch, which is retried from the checkpoint.

use chrono::{DateTime, Utc};
use commands::{CartAction, CommandContext, CommandError, Commands, PlaceOrder};
use domain::{
    CartStatus, Checkout, CheckoutCommand, CheckoutId, CheckoutOutcome, CheckoutStatus,
    DomainError, InventoryCommand, InventoryEvent, LineStock, Order, OrderCommand, OrderStatus,
    Payment, PaymentCommand, PaymentOperation, PaymentSettlement, PaymentStatus,
    ReservationOutcome, ReservedLine, SettleFailure, Sku, UnavailableLine,
};
use futures::future::join_all;
use uuid::Uuid;

use crate::react::{Compensation, Settle, StockLine};
use crate::store::Timer;
use crate::{
    Authorization, AuthorizeRequest, GatewayError, MoneyMovement, PaymentGateway, SagaConfig,
    SagaError, Step,
};

/// Who the saga's commands are from, in every event's metadata.
pub const SAGA_ACTOR: &str = "system:checkout";

/// How a held line was given back.
enum Released {
    Released,
    /// Committed after all (a late commit): its units were put back on hand.
    Restocked,
}

/// What a dispatched step hands back to the runner.
#[derive(Debug, Default)]
pub(crate) struct StepResult {
    /// Outcomes to record on the checkout stream, in order.
    pub record: Vec<CheckoutCommand>,
    /// Timers to schedule before the checkpoint moves past the event.
    pub timers: Vec<Timer>,
}

pub(crate) struct Dispatcher<'a> {
    pub commands: &'a Commands,
    pub gateway: &'a dyn PaymentGateway,
    pub config: &'a SagaConfig,
    pub now: DateTime<Utc>,
}

/// The context of one sub-command of a checkout: the command id is a name-based UUID
/// of the checkout and `name`, the same on every run.
fn context(checkout_id: CheckoutId, causation: Uuid, name: &str) -> CommandContext {
    CommandContext {
        command_id: Uuid::new_v5(checkout_id.as_uuid(), name.as_bytes()),
        correlation_id: *checkout_id.as_uuid(),
        causation_id: Some(causation),
        actor: SAGA_ACTOR.to_owned(),
        guard: None,
    }
}

fn key(checkout_id: CheckoutId, operation: &str) -> String {
    format!("checkout-{checkout_id}-{operation}")
}

/// A refusal by the domain, as text for the checkout's record.
fn refusal(error: &CommandError) -> Option<String> {
    error.rejection().map(|e| e.to_string())
}

/// Whether a command failed only because the domain refused it (so the state, not a
/// retry, says what happened).
fn refused(result: &Result<impl Sized, CommandError>) -> bool {
    matches!(result, Err(CommandError::Rejected(_)))
}

impl Dispatcher<'_> {
    pub async fn run(&self, step: Step, causation: Uuid) -> Result<StepResult, SagaError> {
        if let Some((checkout_id, wants)) = forward_only(&step) {
            // A step decided on the state as of an older event, while the checkout
            // has moved on since: it began compensating (the deadline fired, the
            // order was cancelled), and going forward would only give the
            // compensation more to undo; or a step before already did this one's
            // work (a confirmation captures, a commit closes the cart) and recorded
            // its outcome. Skipping leaves nothing outstanding either way.
            //
            // The state this process holds will do, without a read of the log: the
            // check saves work, it does not make the step safe. Compensation can
            // begin right after any check, and then the step's recorded outcome is a
            // late fact the compensation undoes (`react` compensates again). A
            // state this process holds may be behind the log, never ahead of it, and
            // a checkout never moves backwards: only a state past `wants` skips.
            let now = self.held_checkout(checkout_id).await?;
            if now
                .status()
                .is_some_and(|s| progress(s).is_none_or(|p| Some(p) > progress(wants)))
            {
                return Ok(StepResult::default());
            }
        }
        match step {
            Step::ScheduleTimer {
                checkout_id,
                timer,
                at,
            } => Ok(StepResult {
                record: vec![],
                timers: vec![Timer::for_checkout(checkout_id, timer, at)],
            }),
            Step::PlaceOrder {
                checkout_id,
                cart_id,
                order_id,
                shipping_address,
            } => {
                let ctx = |name| context(checkout_id, causation, name);
                // Checked out already: by the HTTP start, which locks the cart before
                // the checkout exists, or by this step before a crash. The cart as
                // this process holds it says so without a command the cart would
                // refuse; a held state behind the log shows it open, and then the
                // command below finds out.
                let held = self.commands.peek_cart(cart_id).await?.state;
                let checked_out = if held.status() == Some(CartStatus::CheckedOut) {
                    Ok(())
                } else {
                    self.commands
                        .cart(CartAction::CheckOut { cart_id }, &ctx("cart-check-out"))
                        .await
                        .map(drop)
                };
                if let Err(error) = checked_out {
                    let Some(why) = refusal(&error) else {
                        return Err(error.into());
                    };
                    // Refused because this step checked it out before: go on.
                    let cart = self.commands.load_cart(cart_id).await?.state;
                    if cart.status() != Some(CartStatus::CheckedOut) {
                        return Ok(record(CheckoutCommand::RecordOrderRefused {
                            checkout_id,
                            reason: format!("the cart cannot be checked out: {why}"),
                            at: self.now,
                        }));
                    }
                }
                let placed = self
                    .commands
                    .place_order(
                        PlaceOrder {
                            order_id,
                            cart_id,
                            shipping_address,
                            placed_at: self.now,
                        },
                        &ctx("place-order"),
                    )
                    .await;
                // Placed just now: this process holds the order as it wrote it.
                let order = match placed {
                    Ok(_) => {
                        self.commands
                            .orders()
                            .peek(&Order::stream_id(&order_id))
                            .await?
                            .state
                    }
                    Err(_) => self.load_order(order_id).await?,
                };
                if order.id().is_none() {
                    let why = match placed {
                        Err(error) => match refusal(&error) {
                            Some(why) => why,
                            None => return Err(error.into()),
                        },
                        Ok(_) => "the order was not placed".to_owned(),
                    };
                    // Refused for good: give the customer the cart back.
                    let reopened = self
                        .commands
                        .cart(CartAction::Reopen { cart_id }, &ctx("cart-reopen-refused"))
                        .await;
                    if let Err(error) = reopened {
                        if refusal(&error).is_none() {
                            return Err(error.into());
                        }
                    }
                    return Ok(record(CheckoutCommand::RecordOrderRefused {
                        checkout_id,
                        reason: format!("the order was refused: {why}"),
                        at: self.now,
                    }));
                }
                Ok(record(CheckoutCommand::RecordOrderPlaced {
                    checkout_id,
                    lines: order.lines().to_vec(),
                    at: self.now,
                }))
            }
            Step::ReserveStock {
                checkout_id,
                order_id,
                lines,
            } => {
                let expires_at = self.now + self.config.reservation_ttl;
                // Every line's answer recorded already: by the placement's step, which
                // reserves right after placing (see the runner), or by this step before
                // a crash. Nothing is left to ask; the expiry timers of what is held
                // come again, in case that run's never got stored (a timer finds
                // nothing to expire once the reservation has ended). A state held
                // behind the log shows the lines pending, and then the commands below
                // repeat the first answers.
                let held = self.held_checkout(checkout_id).await?;
                let answered = |line: &StockLine| {
                    held.lines()
                        .iter()
                        .any(|l| l.sku == line.sku && l.stock != LineStock::Pending)
                };
                if lines.iter().all(answered) {
                    let timers = held
                        .lines()
                        .iter()
                        .filter(|l| l.stock == LineStock::Reserved)
                        .map(|l| Timer::expire_reservations(l.sku.clone(), expires_at))
                        .collect();
                    return Ok(StepResult {
                        record: vec![],
                        timers,
                    });
                }
                let reservations = lines
                    .iter()
                    .map(|line| self.reserve(checkout_id, causation, order_id, line, expires_at));
                let mut reserved = Vec::new();
                let mut unavailable = Vec::new();
                for outcome in join_all(reservations).await {
                    match outcome? {
                        Ok(line) => reserved.push(line),
                        Err(line) => unavailable.push(line),
                    }
                }
                // Expiry timers for what is held, before the outcome is recorded: a
                // crash in between leaves a timer that finds nothing to expire.
                let timers = reserved
                    .iter()
                    .map(|r: &ReservedLine| Timer::expire_reservations(r.sku.clone(), expires_at))
                    .collect();
                Ok(StepResult {
                    record: vec![CheckoutCommand::RecordStockReservation {
                        checkout_id,
                        reserved,
                        unavailable,
                        at: self.now,
                    }],
                    timers,
                })
            }
            Step::AuthorizePayment {
                checkout_id,
                order_id,
                payment_id,
                amount,
                payment_method,
                attempt,
            } => {
                let ctx = |name| context(checkout_id, causation, name);
                if attempt == 1 {
                    // An order closed from outside (cancelled by its customer) is not
                    // paid for. The order as this process holds it will do: one held
                    // behind the log shows it open, and the confirmation then finds
                    // out (the compensation voids the authorization).
                    let order = self
                        .commands
                        .orders()
                        .peek(&Order::stream_id(&order_id))
                        .await?
                        .state;
                    if let Some(why) = order_closed(&order) {
                        return Ok(record(CheckoutCommand::RecordOrderWithdrawn {
                            checkout_id,
                            reason: why,
                            at: self.now,
                        }));
                    }
                }
                let answer = self
                    .gateway
                    .authorize(AuthorizeRequest {
                        idempotency_key: key(checkout_id, "authorize"),
                        payment_id,
                        amount,
                        payment_method,
                    })
                    .await;
                match answer {
                    Ok(Authorization::Approved { provider_ref }) => {
                        self.record_payment(
                            PaymentCommand::Authorize {
                                payment_id,
                                order_id,
                                amount,
                                provider_ref: provider_ref.clone(),
                                at: self.now,
                            },
                            &ctx("payment-authorized"),
                        )
                        .await?;
                        Ok(record(CheckoutCommand::RecordPaymentAuthorized {
                            checkout_id,
                            provider_ref,
                            at: self.now,
                        }))
                    }
                    Ok(Authorization::Declined {
                        provider_ref,
                        reason,
                    }) => {
                        self.record_payment(
                            PaymentCommand::RecordDecline {
                                payment_id,
                                order_id,
                                amount,
                                provider_ref,
                                reason: reason.clone(),
                                at: self.now,
                            },
                            &ctx("payment-declined"),
                        )
                        .await?;
                        Ok(record(CheckoutCommand::RecordPaymentDeclined {
                            checkout_id,
                            reason,
                            at: self.now,
                        }))
                    }
                    Err(GatewayError::Refused { code, message }) => {
                        Ok(record(CheckoutCommand::RecordPaymentDeclined {
                            checkout_id,
                            reason: format!("{code}: {message}"),
                            at: self.now,
                        }))
                    }
                    Err(error) => Ok(record(self.payment_failed(
                        checkout_id,
                        PaymentOperation::Authorize,
                        attempt,
                        &error,
                        self.deadline_of(checkout_id).await?,
                    ))),
                }
            }
            Step::ConfirmOrder {
                checkout_id,
                order_id,
                payment_id,
                amount,
                provider_ref,
                reservations,
            } => {
                if let Some(withdrawn) = self
                    .confirm_order(
                        checkout_id,
                        causation,
                        order_id,
                        payment_id,
                        amount,
                        reservations,
                    )
                    .await?
                {
                    return Ok(record(withdrawn));
                }
                // The capture follows at once, and both outcomes are recorded in one
                // append. Its first try is the one `CapturePayment` would make (the
                // same idempotency key and command ids), so a re-run of either step
                // finds what the other did.
                let captured = self
                    .capture(checkout_id, causation, payment_id, provider_ref, amount, 1)
                    .await?;
                Ok(StepResult {
                    record: vec![
                        CheckoutCommand::RecordOrderConfirmed {
                            checkout_id,
                            at: self.now,
                        },
                        captured,
                    ],
                    timers: vec![],
                })
            }
            Step::CapturePayment {
                checkout_id,
                payment_id,
                provider_ref,
                amount,
                attempt,
            } => Ok(record(
                self.capture(
                    checkout_id,
                    causation,
                    payment_id,
                    provider_ref,
                    amount,
                    attempt,
                )
                .await?,
            )),
            Step::CommitStock {
                checkout_id,
                lines,
                cart_id,
            } => {
                let commits = lines
                    .iter()
                    .map(|line| self.commit(checkout_id, causation, line));
                let mut committed = Vec::new();
                let mut failed = Vec::new();
                for outcome in join_all(commits).await {
                    match outcome? {
                        Ok(sku) => committed.push(sku),
                        Err(line) => failed.push(line),
                    }
                }
                let all_committed = failed.is_empty();
                let mut result = record(CheckoutCommand::RecordStockCommit {
                    checkout_id,
                    committed,
                    failed,
                    at: self.now,
                });
                // Every line committed: the cart is closed in the same step, and both
                // outcomes are recorded in one append (as `CloseCart` would).
                if let (true, Some(cart_id)) = (all_committed, cart_id) {
                    let order_id = Checkout::order_id(checkout_id);
                    result.record.push(
                        self.close_cart(checkout_id, causation, cart_id, order_id)
                            .await?,
                    );
                }
                Ok(result)
            }
            Step::CloseCart {
                checkout_id,
                cart_id,
                order_id,
            } => Ok(record(
                self.close_cart(checkout_id, causation, cart_id, order_id)
                    .await?,
            )),
            Step::Compensate(compensation) => self.compensate(compensation, causation).await,
        }
    }

    /// Records the reserved stock and the authorization on the order and confirms
    /// it. `Some`: the order could not be confirmed (it was closed), with the outcome
    /// to record.
    async fn confirm_order(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        order_id: domain::OrderId,
        payment_id: domain::PaymentId,
        amount: domain::Money,
        reservations: Vec<domain::ReservationId>,
    ) -> Result<Option<CheckoutCommand>, SagaError> {
        let ctx = |name| context(checkout_id, causation, name);
        let orders = self.commands.orders();
        // All three handed to the order's stream task together (queued in this order
        // at their first poll), so they are decided in one round and written in one
        // append, each on the state after the ones before. A mark the order already
        // has (a re-run, or a checkout from before the marks moved here) is refused,
        // and the next is decided as before.
        let stock = ctx("order-stock-reserved");
        let mark = ctx("order-payment-authorized");
        let confirm = ctx("order-confirm");
        let (reserved, marked, confirmed) = futures::join!(
            orders.execute(
                OrderCommand::MarkStockReserved {
                    order_id,
                    reservations,
                    at: self.now,
                },
                &stock,
            ),
            orders.execute(
                OrderCommand::MarkPaymentAuthorized {
                    order_id,
                    payment_id,
                    amount,
                    at: self.now,
                },
                &mark,
            ),
            orders.execute(
                OrderCommand::Confirm {
                    order_id,
                    at: self.now,
                },
                &confirm,
            ),
        );
        if !refused(&reserved) {
            reserved?;
        }
        if !refused(&marked) {
            marked?;
        }
        if !refused(&confirmed) {
            confirmed?;
            return Ok(None);
        }
        let order = self.load_order(order_id).await?;
        if matches!(order.status(), Some(OrderStatus::Confirmed)) {
            return Ok(None);
        }
        let why = order_closed(&order).unwrap_or_else(|| {
            format!(
                "the order is {}",
                order.status().map_or("missing", OrderStatus::as_str)
            )
        });
        Ok(Some(CheckoutCommand::RecordOrderWithdrawn {
            checkout_id,
            reason: why,
            at: self.now,
        }))
    }

    /// Try `attempt` of the capture, and its outcome to record.
    async fn capture(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        payment_id: domain::PaymentId,
        provider_ref: String,
        amount: domain::Money,
        attempt: u32,
    ) -> Result<CheckoutCommand, SagaError> {
        let answer = self
            .gateway
            .capture(MoneyMovement {
                idempotency_key: key(checkout_id, "capture"),
                provider_ref,
                amount,
            })
            .await;
        match answer {
            Ok(_) => {
                self.record_payment(
                    PaymentCommand::Capture {
                        payment_id,
                        amount,
                        at: self.now,
                    },
                    &context(checkout_id, causation, "payment-captured"),
                )
                .await?;
                Ok(CheckoutCommand::RecordPaymentCaptured {
                    checkout_id,
                    at: self.now,
                })
            }
            Err(error) => Ok(self.payment_failed(
                checkout_id,
                PaymentOperation::Capture,
                attempt,
                &error,
                None,
            )),
        }
    }

    /// Closes the cart the checkout paid for, and the outcome to record. A cart
    /// that went elsewhere does not hold the checkout back: the order is paid and
    /// its stock committed.
    async fn close_cart(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        cart_id: domain::CartId,
        order_id: domain::OrderId,
    ) -> Result<CheckoutCommand, SagaError> {
        let closed = self
            .commands
            .cart(
                CartAction::Close { cart_id, order_id },
                &context(checkout_id, causation, "cart-close"),
            )
            .await;
        if let Err(error) = closed {
            if refusal(&error).is_none() {
                return Err(error.into());
            }
            let cart = self.commands.load_cart(cart_id).await?.state;
            if cart.status() != Some(CartStatus::Closed) {
                tracing::warn!(%checkout_id, %cart_id, %error, "the cart could not be closed");
            }
        }
        Ok(CheckoutCommand::RecordCartClosed {
            checkout_id,
            at: self.now,
        })
    }

    /// The checkout as this process holds it: no read of the log, possibly behind
    /// it, never ahead.
    async fn held_checkout(&self, checkout_id: CheckoutId) -> Result<Checkout, SagaError> {
        Ok(self
            .commands
            .checkouts()
            .peek(&Checkout::stream_id(&checkout_id))
            .await?
            .state)
    }

    async fn load_order(&self, order_id: domain::OrderId) -> Result<Order, SagaError> {
        Ok(self
            .commands
            .orders()
            .load(&Order::stream_id(&order_id))
            .await?
            .state)
    }

    async fn load_payment(&self, payment_id: domain::PaymentId) -> Result<Payment, SagaError> {
        Ok(self
            .commands
            .payments()
            .load(&Payment::stream_id(&payment_id))
            .await?
            .state)
    }

    async fn deadline_of(
        &self,
        checkout_id: CheckoutId,
    ) -> Result<Option<DateTime<Utc>>, SagaError> {
        Ok(self
            .commands
            .checkouts()
            .load(&Checkout::stream_id(&checkout_id))
            .await?
            .state
            .deadline())
    }

    /// The failure of try `attempt`, with the time of the next try unless the saga
    /// gives up: the error is not retryable, the tries are used up, or the next try
    /// would fall after `deadline`.
    fn payment_failed(
        &self,
        checkout_id: CheckoutId,
        operation: PaymentOperation,
        attempt: u32,
        error: &GatewayError,
        deadline: Option<DateTime<Utc>>,
    ) -> CheckoutCommand {
        let (error, retry_at) = self.failure(checkout_id, operation, attempt, error, deadline);
        CheckoutCommand::RecordPaymentFailed {
            checkout_id,
            operation,
            attempt,
            error,
            retry_at,
            at: self.now,
        }
    }

    /// A failed payment call's text (bounded) and when to try again, if at all.
    fn failure(
        &self,
        checkout_id: CheckoutId,
        operation: PaymentOperation,
        attempt: u32,
        error: &GatewayError,
        deadline: Option<DateTime<Utc>>,
    ) -> (String, Option<DateTime<Utc>>) {
        let retry_at = (error.is_retryable() && attempt < self.config.attempts_max(operation))
            .then(|| self.now + self.config.backoff(checkout_id.as_uuid(), attempt))
            .filter(|at| deadline.is_none_or(|deadline| *at < deadline));
        let mut text = error.to_string();
        text.truncate(400);
        (text, retry_at)
    }

    /// Records a money movement on the Payment stream. A refusal means the stream
    /// already holds it (a re-run step), which the state confirms.
    async fn record_payment(
        &self,
        command: PaymentCommand,
        context: &CommandContext,
    ) -> Result<(), SagaError> {
        let payment_id = command.payment_id();
        let name = command.name();
        let result = self.commands.payments().execute(command, context).await;
        match result {
            Ok(_) => Ok(()),
            Err(CommandError::Rejected(error)) => {
                let payment = self.load_payment(payment_id).await?;
                tracing::debug!(%payment_id, command = name, %error,
                    status = ?payment.status(), "payment movement already recorded");
                Ok(())
            }
            Err(error) => Err(error.into()),
        }
    }

    /// One line's reservation: `Ok` with where the stock was taken from, or the
    /// reason it could not be reserved.
    async fn reserve(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        order_id: domain::OrderId,
        line: &StockLine,
        expires_at: DateTime<Utc>,
    ) -> Result<Result<ReservedLine, UnavailableLine>, SagaError> {
        let inventory = self.commands.inventory();
        let result = inventory
            .execute(
                InventoryCommand::ReserveStock {
                    sku: line.sku.clone(),
                    reservation_id: line.reservation_id,
                    order_id,
                    quantity: line.quantity,
                    expires_at,
                },
                &context(checkout_id, causation, &format!("reserve:{}", line.sku)),
            )
            .await;
        let unavailable = |reason: String| {
            Ok(Err(UnavailableLine {
                sku: line.sku.clone(),
                reason,
            }))
        };
        match result {
            Ok(committed) => {
                for event in &committed.events {
                    if let InventoryEvent::StockReserved { allocations, .. } = event {
                        return Ok(Ok(ReservedLine {
                            sku: line.sku.clone(),
                            allocations: allocations.clone(),
                        }));
                    }
                }
                // A replay of the first outcome carries no events: the stream says.
                self.held(line).await
            }
            Err(CommandError::Rejected(DomainError::ReservationExists { .. })) => {
                self.held(line).await
            }
            Err(CommandError::Rejected(error)) => unavailable(error.to_string()),
            Err(error) => Err(error.into()),
        }
    }

    /// The reservation of `line` as the SKU's stream holds it.
    async fn held(
        &self,
        line: &StockLine,
    ) -> Result<Result<ReservedLine, UnavailableLine>, SagaError> {
        let inventory = self
            .commands
            .inventory()
            .load(&domain::Inventory::stream_id(&line.sku))
            .await?
            .state;
        Ok(match inventory.reservation(&line.reservation_id) {
            Some(reservation) => Ok(ReservedLine {
                sku: line.sku.clone(),
                allocations: reservation.allocations.clone(),
            }),
            None => Err(UnavailableLine {
                sku: line.sku.clone(),
                reason: match inventory.reservation_outcome(&line.reservation_id) {
                    Some(outcome) => format!("the reservation was {outcome}"),
                    None => "the reservation is unknown".to_owned(),
                },
            }),
        })
    }

    async fn commit(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        line: &StockLine,
    ) -> Result<Result<Sku, UnavailableLine>, SagaError> {
        let result = self
            .commands
            .inventory()
            .execute(
                InventoryCommand::CommitReservation {
                    sku: line.sku.clone(),
                    reservation_id: line.reservation_id,
                },
                &context(checkout_id, causation, &format!("commit:{}", line.sku)),
            )
            .await;
        match result {
            Ok(_)
            | Err(CommandError::Rejected(DomainError::ReservationEnded {
                outcome: ReservationOutcome::Committed,
                ..
            })) => Ok(Ok(line.sku.clone())),
            Err(CommandError::Rejected(error)) => Ok(Err(UnavailableLine {
                sku: line.sku.clone(),
                reason: error.to_string(),
            })),
            Err(error) => Err(error.into()),
        }
    }

    async fn compensate(&self, c: Compensation, causation: Uuid) -> Result<StepResult, SagaError> {
        let checkout_id = c.checkout_id;
        let ctx = |name: &str| context(checkout_id, causation, name);
        let releases = c
            .release
            .iter()
            .map(|line| self.release(checkout_id, causation, line));
        let mut released = Vec::new();
        let mut restocked = Vec::new();
        for (line, outcome) in c.release.iter().zip(join_all(releases).await) {
            match outcome? {
                Released::Released => released.push(line.sku.clone()),
                Released::Restocked => restocked.push(line.sku.clone()),
            }
        }
        for line in &c.restock {
            self.restock(checkout_id, causation, &line.sku, &line.allocations)
                .await?;
            restocked.push(line.sku.clone());
        }
        let mut order_closed = false;
        if let Some((order_id, outcome)) = c.close_order {
            let reason = c.reason.clone();
            let cancel = || async {
                self.commands
                    .orders()
                    .execute(
                        OrderCommand::Cancel {
                            order_id,
                            reason: reason.clone(),
                            at: self.now,
                        },
                        &ctx("order-cancel"),
                    )
                    .await
            };
            let closed = match outcome {
                CheckoutOutcome::Rejected => {
                    let rejected = self
                        .commands
                        .orders()
                        .execute(
                            OrderCommand::Reject {
                                order_id,
                                reason: reason.clone(),
                                at: self.now,
                            },
                            &ctx("order-reject"),
                        )
                        .await;
                    // Past the point where an order can be rejected: cancel it.
                    if refused(&rejected) {
                        cancel().await
                    } else {
                        rejected
                    }
                }
                CheckoutOutcome::Cancelled => cancel().await,
            };
            match closed {
                Ok(_) => order_closed = true,
                Err(CommandError::Rejected(error)) => {
                    let order = self.load_order(order_id).await?;
                    order_closed = order_closed_reason(&order).is_some();
                    if !order_closed {
                        tracing::warn!(%checkout_id, %order_id, %error, "the order cannot be closed");
                    }
                }
                Err(error) => return Err(error.into()),
            }
        }
        let mut cart_reopened = false;
        if let Some(cart_id) = c.reopen_cart {
            let reopened = self
                .commands
                .cart(CartAction::Reopen { cart_id }, &ctx("cart-reopen"))
                .await;
            match reopened {
                Ok(_) => cart_reopened = true,
                Err(error) => {
                    if refusal(&error).is_none() {
                        return Err(error.into());
                    }
                    // Reopened before, or moved on (abandoned, closed): nothing held.
                    cart_reopened = true;
                }
            }
        }
        let (payment, settle_failure) = match &c.settle {
            None => (None, None),
            Some(settle) => match self.settle(checkout_id, causation, settle).await? {
                Ok(settlement) => (Some(settlement), None),
                Err(error) => {
                    let (error, retry_at) = self.failure(
                        checkout_id,
                        PaymentOperation::Settle,
                        c.attempt,
                        &error,
                        None,
                    );
                    (
                        None,
                        Some(SettleFailure {
                            attempt: c.attempt,
                            error,
                            retry_at,
                        }),
                    )
                }
            },
        };
        // One command: the undoing and a failed settling call are recorded together.
        Ok(StepResult {
            record: vec![CheckoutCommand::RecordCompensation {
                checkout_id,
                released,
                restocked,
                payment,
                order_closed,
                cart_reopened,
                settle_failure,
                at: self.now,
            }],
            timers: vec![],
        })
    }

    /// Puts committed units back on hand in the warehouses they left. The command id
    /// is the same on every run, so the command side answers a repeat with the first
    /// outcome (the stream remembers its recent command ids, and the store every id
    /// of a single-command append).
    async fn restock(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        sku: &Sku,
        allocations: &[domain::Allocation],
    ) -> Result<(), SagaError> {
        for allocation in allocations {
            let name = format!("restock:{sku}:{}", allocation.warehouse);
            let result = self
                .commands
                .inventory()
                .execute(
                    InventoryCommand::AdjustStock {
                        sku: sku.clone(),
                        warehouse: allocation.warehouse.clone(),
                        delta: i64::from(allocation.quantity.get()),
                        reason: format!("restock: checkout {checkout_id} was cancelled"),
                    },
                    &context(checkout_id, causation, &name),
                )
                .await;
            if !refused(&result) {
                result?;
            }
        }
        Ok(())
    }

    /// Releases one line's reservation, or restocks it if it was committed.
    async fn release(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        line: &StockLine,
    ) -> Result<Released, SagaError> {
        let result = self
            .commands
            .inventory()
            .execute(
                InventoryCommand::ReleaseReservation {
                    sku: line.sku.clone(),
                    reservation_id: line.reservation_id,
                },
                &context(checkout_id, causation, &format!("release:{}", line.sku)),
            )
            .await;
        match result {
            Ok(_)
            | Err(CommandError::Rejected(DomainError::ReservationEnded {
                outcome: ReservationOutcome::Released | ReservationOutcome::Expired,
                ..
            })) => Ok(Released::Released),
            Err(CommandError::Rejected(DomainError::ReservationEnded {
                outcome: ReservationOutcome::Committed,
                ..
            })) => {
                // Committed by a commit step that ran again after the compensation
                // began: put the units back on hand instead.
                self.restock(checkout_id, causation, &line.sku, &line.allocations)
                    .await?;
                Ok(Released::Restocked)
            }
            Err(CommandError::Rejected(error)) => {
                // Never reserved under this id: nothing is held.
                tracing::warn!(%checkout_id, sku = %line.sku, %error, "reservation not found to release");
                Ok(Released::Released)
            }
            Err(error) => Err(error.into()),
        }
    }

    /// Gives the money back: finds out whether an unanswered authorization went
    /// through, voids an authorization, refunds a capture. `Err` is a provider
    /// failure worth retrying later.
    async fn settle(
        &self,
        checkout_id: CheckoutId,
        causation: Uuid,
        s: &Settle,
    ) -> Result<Result<PaymentSettlement, GatewayError>, SagaError> {
        let ctx = |name: &str| context(checkout_id, causation, name);
        let provider_ref = match &s.provider_ref {
            Some(provider_ref) => provider_ref.clone(),
            // The same key as the authorization: the provider answers with what it
            // did then, or authorizes now, and either way it is voided below.
            None => {
                let answer = self
                    .gateway
                    .authorize(AuthorizeRequest {
                        idempotency_key: key(checkout_id, "authorize"),
                        payment_id: s.payment_id,
                        amount: s.amount,
                        payment_method: s.payment_method.clone(),
                    })
                    .await;
                match answer {
                    Ok(Authorization::Approved { provider_ref }) => {
                        self.record_payment(
                            PaymentCommand::Authorize {
                                payment_id: s.payment_id,
                                order_id: s.order_id,
                                amount: s.amount,
                                provider_ref: provider_ref.clone(),
                                at: self.now,
                            },
                            &ctx("payment-authorized"),
                        )
                        .await?;
                        provider_ref
                    }
                    Ok(Authorization::Declined {
                        provider_ref,
                        reason,
                    }) => {
                        self.record_payment(
                            PaymentCommand::RecordDecline {
                                payment_id: s.payment_id,
                                order_id: s.order_id,
                                amount: s.amount,
                                provider_ref,
                                reason,
                                at: self.now,
                            },
                            &ctx("payment-declined"),
                        )
                        .await?;
                        return Ok(Ok(PaymentSettlement::NothingTaken));
                    }
                    Err(GatewayError::Refused { .. }) => {
                        return Ok(Ok(PaymentSettlement::NothingTaken))
                    }
                    Err(error) => return Ok(Err(error)),
                }
            }
        };
        if !s.captured {
            let voided = self
                .gateway
                .void(MoneyMovement {
                    idempotency_key: key(checkout_id, "void"),
                    provider_ref: provider_ref.clone(),
                    amount: s.amount,
                })
                .await;
            match voided {
                Ok(_) => {
                    self.record_payment(
                        PaymentCommand::Void {
                            payment_id: s.payment_id,
                            at: self.now,
                        },
                        &ctx("payment-voided"),
                    )
                    .await?;
                    return Ok(Ok(PaymentSettlement::Voided));
                }
                // Not voidable: captured after all (a capture whose answer was
                // lost, or one a confirming step made as compensation began, before
                // any capture was recorded), or lapsed at the provider. The refund
                // tells which: the provider refuses it when nothing was captured.
                Err(GatewayError::Refused { .. }) => {}
                Err(error) => return Ok(Err(error)),
            }
        }
        let refunded = self
            .gateway
            .refund(MoneyMovement {
                idempotency_key: key(checkout_id, "refund"),
                provider_ref,
                amount: s.amount,
            })
            .await;
        match refunded {
            Ok(_) => {
                let payment = self.load_payment(s.payment_id).await?;
                if payment.status() == Some(PaymentStatus::Authorized) {
                    self.record_payment(
                        PaymentCommand::Capture {
                            payment_id: s.payment_id,
                            amount: s.amount,
                            at: self.now,
                        },
                        &ctx("payment-captured"),
                    )
                    .await?;
                }
                self.record_payment(
                    PaymentCommand::Refund {
                        payment_id: s.payment_id,
                        refund_id: Checkout::refund_id(checkout_id),
                        amount: s.amount,
                        at: self.now,
                    },
                    &ctx("payment-refunded"),
                )
                .await?;
                Ok(Ok(PaymentSettlement::Refunded))
            }
            // Nothing was captured: the authorization lapsed or was voided.
            Err(GatewayError::Refused { .. }) => Ok(Ok(PaymentSettlement::NothingTaken)),
            Err(error) => Ok(Err(error)),
        }
    }
}

/// The checkout of a step that only moves a checkout forward and whose skipping
/// leaves nothing for a compensation to wait for, with the status it moves on from.
fn forward_only(step: &Step) -> Option<(CheckoutId, CheckoutStatus)> {
    match step {
        Step::ConfirmOrder { checkout_id, .. } => Some((*checkout_id, CheckoutStatus::Confirming)),
        Step::CapturePayment { checkout_id, .. } => Some((*checkout_id, CheckoutStatus::Capturing)),
        Step::CommitStock { checkout_id, .. } => Some((*checkout_id, CheckoutStatus::Committing)),
        Step::CloseCart { checkout_id, .. } => Some((*checkout_id, CheckoutStatus::Closing)),
        Step::ScheduleTimer { .. }
        | Step::PlaceOrder { .. }
        | Step::ReserveStock { .. }
        | Step::AuthorizePayment { .. }
        | Step::Compensate(_) => None,
    }
}

/// How far forward a checkout is; `None` once it compensates or has ended so.
fn progress(status: CheckoutStatus) -> Option<u8> {
    use CheckoutStatus as S;
    match status {
        S::Placing => Some(0),
        S::Reserving => Some(1),
        S::Authorizing => Some(2),
        S::Confirming => Some(3),
        S::Capturing => Some(4),
        S::Committing => Some(5),
        S::Closing => Some(6),
        S::Completed => Some(7),
        S::Compensating | S::Rejected | S::Cancelled => None,
    }
}

fn record(command: CheckoutCommand) -> StepResult {
    StepResult {
        record: vec![command],
        timers: vec![],
    }
}

/// Why the order takes no more of the saga's steps, if it was closed.
fn order_closed(order: &Order) -> Option<String> {
    order_closed_reason(order).or_else(|| {
        order
            .id()
            .is_none()
            .then(|| "the order does not exist".to_owned())
    })
}

fn order_closed_reason(order: &Order) -> Option<String> {
    match order.status()? {
        OrderStatus::Cancelled { reason } => Some(format!("the order was cancelled: {reason}")),
        OrderStatus::Rejected { reason } => Some(format!("the order was rejected: {reason}")),
        OrderStatus::Placed
        | OrderStatus::StockReserved
        | OrderStatus::PaymentAuthorized
        | OrderStatus::Confirmed
        | OrderStatus::Shipped
        | OrderStatus::Delivered => None,
    }
}
