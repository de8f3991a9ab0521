//! The checkout's decisions as specifications, without I/O: each path of the saga
//! (the happy path and every compensation) driven through `Checkout::decide` and
//! `react`, with the outcome of each step chosen by the test. Every event goes
//! through the storage round trip, so what is recorded also decodes.

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::{
    Aggregate, Allocation, CartId, Checkout, CheckoutCommand, CheckoutEvent, CheckoutId,
    CheckoutOutcome, CheckoutStatus, CheckoutTimer, Currency, CustomerId, DomainEvent, LineItem,
    LineStock, Money, MoneyState, PaymentOperation, PaymentSettlement, Quantity, ReservedLine,
    SettleFailure, ShippingAddress, Sku, UnavailableLine, WarehouseId,
};
use sagas::react::{Compensation, Settle};
use sagas::{react, Step};
use uuid::Uuid;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
}

fn sku(code: &str) -> Sku {
    Sku::parse(code).unwrap()
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}

fn address() -> ShippingAddress {
    ShippingAddress::parse(domain::AddressInput {
        name: "Ada Lovelace".into(),
        line1: "1 Analytical Row".into(),
        line2: None,
        city: "London".into(),
        postal_code: "N1 9GU".into(),
        country: "GB".into(),
        email: None,
        phone: None,
    })
    .unwrap()
}

const ID: u128 = 0xc0ffee;

fn checkout_id() -> CheckoutId {
    CheckoutId::from_uuid(Uuid::from_u128(ID))
}

fn cart_id() -> CartId {
    CartId::from_uuid(Uuid::from_u128(7))
}

/// A checkout driven by hand: each recorded outcome is decided, its events stored
/// and read back, folded, and reacted to.
struct Flow {
    state: Checkout,
    events: Vec<CheckoutEvent>,
}

impl Flow {
    fn started() -> (Flow, Vec<Step>) {
        let mut flow = Flow {
            state: Checkout::default(),
            events: vec![],
        };
        let steps = flow.record(CheckoutCommand::Start {
            checkout_id: checkout_id(),
            cart_id: cart_id(),
            customer_id: CustomerId::from_uuid(Uuid::from_u128(42)),
            shipping_address: address(),
            payment_method: "tok_visa".into(),
            started_at: at(0),
            deadline: at(600),
        });
        (flow, steps)
    }

    /// Decides `command`, stores its events, and returns the steps they call for.
    fn record(&mut self, command: CheckoutCommand) -> Vec<Step> {
        let events = self
            .state
            .decide(&command)
            .unwrap_or_else(|e| panic!("{} refused: {e}", command.name()));
        let mut steps = vec![];
        for event in events {
            let data = serde_json::to_string(&event.to_data()).unwrap();
            let stored = CheckoutEvent::from_stored(
                event.event_type(),
                event.schema_version(),
                serde_json::from_str(&data).unwrap(),
            )
            .unwrap();
            assert_eq!(stored, event);
            self.state = std::mem::take(&mut self.state).evolve(&stored);
            steps.extend(react(&self.state, &stored));
            self.events.push(stored);
        }
        steps
    }

    fn status(&self) -> CheckoutStatus {
        self.state.status().unwrap()
    }

    /// Up to a placed order of two lines (A: 2 x 10.00, B: 1 x 5.00).
    fn placed() -> (Flow, Vec<Step>) {
        let (mut flow, _) = Flow::started();
        let steps = flow.record(CheckoutCommand::RecordOrderPlaced {
            checkout_id: checkout_id(),
            lines: vec![line("A", 2, 1000), line("B", 1, 500)],
            at: at(1),
        });
        (flow, steps)
    }

    fn reserved() -> (Flow, Vec<Step>) {
        let (mut flow, _) = Flow::placed();
        let steps = flow.record(CheckoutCommand::RecordStockReservation {
            checkout_id: checkout_id(),
            reserved: vec![reserved("A", 2), reserved("B", 1)],
            unavailable: vec![],
            at: at(2),
        });
        (flow, steps)
    }

    fn authorized() -> (Flow, Vec<Step>) {
        let (mut flow, _) = Flow::reserved();
        let steps = flow.record(CheckoutCommand::RecordPaymentAuthorized {
            checkout_id: checkout_id(),
            provider_ref: "psp_1".into(),
            at: at(3),
        });
        (flow, steps)
    }

    fn confirmed() -> (Flow, Vec<Step>) {
        let (mut flow, _) = Flow::authorized();
        let steps = flow.record(CheckoutCommand::RecordOrderConfirmed {
            checkout_id: checkout_id(),
            at: at(4),
        });
        (flow, steps)
    }

    fn captured() -> (Flow, Vec<Step>) {
        let (mut flow, _) = Flow::confirmed();
        let steps = flow.record(CheckoutCommand::RecordPaymentCaptured {
            checkout_id: checkout_id(),
            at: at(5),
        });
        (flow, steps)
    }

    fn completed() -> (Flow, Vec<Step>) {
        let (mut flow, _) = Flow::captured();
        flow.record(CheckoutCommand::RecordStockCommit {
            checkout_id: checkout_id(),
            committed: vec![sku("A"), sku("B")],
            failed: vec![],
            at: at(6),
        });
        let steps = flow.record(CheckoutCommand::RecordCartClosed {
            checkout_id: checkout_id(),
            at: at(7),
        });
        (flow, steps)
    }

    /// Records what `compensation` asks for as done, with `payment` for the money.
    fn compensated(&mut self, c: &Compensation, payment: Option<PaymentSettlement>) -> Vec<Step> {
        self.record(CheckoutCommand::RecordCompensation {
            checkout_id: checkout_id(),
            released: c.release.iter().map(|l| l.sku.clone()).collect(),
            restocked: c.restock.iter().map(|l| l.sku.clone()).collect(),
            payment,
            order_closed: c.close_order.is_some(),
            cart_reopened: c.reopen_cart.is_some(),
            settle_failure: None,
            at: at(50),
        })
    }
}

fn line(code: &str, quantity: u32, unit: i64) -> LineItem {
    LineItem {
        sku: sku(code),
        quantity: Quantity::new(quantity).unwrap(),
        unit_price: eur(unit),
    }
}

fn reserved(code: &str, quantity: u32) -> ReservedLine {
    ReservedLine {
        sku: sku(code),
        allocations: vec![Allocation {
            warehouse: WarehouseId::parse("main").unwrap(),
            quantity: Quantity::new(quantity).unwrap(),
        }],
    }
}

fn only_compensation(steps: Vec<Step>) -> Compensation {
    match <[Step; 1]>::try_from(steps) {
        Ok([Step::Compensate(c)]) => c,
        Ok([other]) => panic!("expected a compensation, got {other:?}"),
        Err(steps) => panic!("expected one compensation, got {steps:?}"),
    }
}

fn skus(lines: impl IntoIterator<Item = Sku>) -> Vec<String> {
    lines.into_iter().map(|s| s.to_string()).collect()
}

#[test]
fn the_happy_path_places_reserves_authorizes_confirms_captures_commits_and_closes() {
    let (flow, steps) = Flow::started();
    assert_eq!(flow.status(), CheckoutStatus::Placing);
    assert_eq!(
        steps[0],
        Step::ScheduleTimer {
            checkout_id: checkout_id(),
            timer: CheckoutTimer::Deadline,
            at: at(600)
        }
    );
    assert!(matches!(&steps[1], Step::PlaceOrder { cart_id: c, .. } if *c == cart_id()));

    let (flow, steps) = Flow::placed();
    assert_eq!(flow.status(), CheckoutStatus::Reserving);
    assert_eq!(flow.state.total(), Some(eur(2500)));
    let [Step::ReserveStock { lines, .. }] = steps.as_slice() else {
        panic!("{steps:?}")
    };
    assert_eq!(skus(lines.iter().map(|l| l.sku.clone())), ["A", "B"]);
    assert_eq!(
        lines[0].reservation_id,
        Checkout::reservation_id(checkout_id(), &sku("A"))
    );

    let (flow, steps) = Flow::reserved();
    assert_eq!(flow.status(), CheckoutStatus::Authorizing);
    let [Step::AuthorizePayment {
        amount,
        attempt,
        payment_method,
        ..
    }] = steps.as_slice()
    else {
        panic!("{steps:?}")
    };
    assert_eq!((*amount, *attempt), (eur(2500), 1));
    assert_eq!(payment_method, "tok_visa");

    let (flow, steps) = Flow::authorized();
    assert_eq!(flow.status(), CheckoutStatus::Confirming);
    let [Step::ConfirmOrder {
        amount,
        provider_ref,
        reservations,
        ..
    }] = steps.as_slice()
    else {
        panic!("{steps:?}")
    };
    assert_eq!((*amount, provider_ref.as_str()), (eur(2500), "psp_1"));
    assert_eq!(
        reservations,
        &[
            Checkout::reservation_id(checkout_id(), &sku("A")),
            Checkout::reservation_id(checkout_id(), &sku("B")),
        ]
    );

    let (flow, steps) = Flow::confirmed();
    assert_eq!(flow.status(), CheckoutStatus::Capturing);
    assert!(matches!(
        steps.as_slice(),
        [Step::CapturePayment { provider_ref, attempt: 1, .. }] if provider_ref == "psp_1"
    ));

    let (flow, steps) = Flow::captured();
    assert_eq!(flow.status(), CheckoutStatus::Committing);
    assert!(matches!(
        steps.as_slice(),
        [Step::CommitStock { lines, cart_id: Some(cart), .. }]
            if lines.len() == 2 && *cart == flow.state.cart_id().unwrap()
    ));

    let (flow, steps) = Flow::completed();
    assert_eq!(flow.status(), CheckoutStatus::Completed);
    assert!(steps.is_empty());
    assert_eq!(flow.state.money(), Some(MoneyState::Captured));
    assert!(flow
        .state
        .lines()
        .iter()
        .all(|l| l.stock == LineStock::Committed));
}

#[test]
fn a_line_out_of_stock_releases_what_was_reserved_and_rejects_without_payment() {
    let (mut flow, _) = Flow::placed();
    let steps = flow.record(CheckoutCommand::RecordStockReservation {
        checkout_id: checkout_id(),
        reserved: vec![reserved("A", 2)],
        unavailable: vec![UnavailableLine {
            sku: sku("B"),
            reason: "1 requested, 0 available".into(),
        }],
        at: at(2),
    });
    let c = only_compensation(steps);
    assert_eq!(skus(c.release.iter().map(|l| l.sku.clone())), ["A"]);
    assert_eq!(c.settle, None, "no payment was attempted");
    assert_eq!(
        c.close_order.map(|(_, o)| o),
        Some(CheckoutOutcome::Rejected)
    );
    assert_eq!(c.reopen_cart, Some(cart_id()));
    assert_eq!(flow.status(), CheckoutStatus::Compensating);

    let steps = flow.compensated(&c, None);
    assert!(steps.is_empty());
    assert_eq!(flow.status(), CheckoutStatus::Rejected);
    assert!(flow.state.reason().unwrap().contains("out of stock: B"));
    assert!(!flow
        .events
        .iter()
        .any(|e| matches!(e, CheckoutEvent::CheckoutPaymentAuthorized { .. })));
}

#[test]
fn a_declined_payment_releases_everything_and_rejects() {
    let (mut flow, _) = Flow::reserved();
    let steps = flow.record(CheckoutCommand::RecordPaymentDeclined {
        checkout_id: checkout_id(),
        reason: "insufficient funds".into(),
        at: at(3),
    });
    let c = only_compensation(steps);
    assert_eq!(skus(c.release.iter().map(|l| l.sku.clone())), ["A", "B"]);
    assert_eq!(c.settle, None, "a declined authorization holds no money");
    flow.compensated(&c, None);
    assert_eq!(flow.status(), CheckoutStatus::Rejected);
    assert_eq!(flow.state.money(), Some(MoneyState::Declined));
}

#[test]
fn a_provider_timeout_is_retried_with_a_timer_then_given_up_and_the_authorization_settled() {
    let (mut flow, _) = Flow::reserved();
    let steps = flow.record(CheckoutCommand::RecordPaymentFailed {
        checkout_id: checkout_id(),
        operation: PaymentOperation::Authorize,
        attempt: 1,
        error: "payment provider timed out".into(),
        retry_at: Some(at(10)),
        at: at(3),
    });
    let retry = CheckoutTimer::PaymentRetry {
        operation: PaymentOperation::Authorize,
        attempt: 2,
    };
    assert_eq!(
        steps,
        [Step::ScheduleTimer {
            checkout_id: checkout_id(),
            timer: retry,
            at: at(10)
        }]
    );
    // A stale timer (another attempt) fires nothing.
    let stale = CheckoutTimer::PaymentRetry {
        operation: PaymentOperation::Authorize,
        attempt: 5,
    };
    assert!(flow
        .state
        .decide(&CheckoutCommand::FireTimer {
            checkout_id: checkout_id(),
            timer: stale,
            at: at(10)
        })
        .unwrap()
        .is_empty());
    let steps = flow.record(CheckoutCommand::FireTimer {
        checkout_id: checkout_id(),
        timer: retry,
        at: at(10),
    });
    assert!(matches!(
        steps.as_slice(),
        [Step::AuthorizePayment { attempt: 2, .. }]
    ));

    let steps = flow.record(CheckoutCommand::RecordPaymentFailed {
        checkout_id: checkout_id(),
        operation: PaymentOperation::Authorize,
        attempt: 2,
        error: "payment provider unavailable: down".into(),
        retry_at: None,
        at: at(11),
    });
    let c = only_compensation(steps);
    assert_eq!(c.release.len(), 2);
    let settle = c
        .settle
        .clone()
        .expect("the authorization may have gone through");
    assert_eq!(settle.provider_ref, None, "asked again with the same key");
    assert_eq!(
        c.close_order.map(|(_, o)| o),
        Some(CheckoutOutcome::Cancelled)
    );
    flow.compensated(&c, Some(PaymentSettlement::NothingTaken));
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
}

#[test]
fn the_deadline_cancels_and_a_late_authorization_is_voided() {
    let (mut flow, _) = Flow::reserved();
    let steps = flow.record(CheckoutCommand::FireTimer {
        checkout_id: checkout_id(),
        timer: CheckoutTimer::Deadline,
        at: at(600),
    });
    let first = only_compensation(steps);
    assert!(matches!(
        &first.settle,
        Some(Settle {
            provider_ref: None,
            ..
        })
    ));
    // The authorization answers after the deadline: it is recorded, and undone.
    let steps = flow.record(CheckoutCommand::RecordPaymentAuthorized {
        checkout_id: checkout_id(),
        provider_ref: "psp_late".into(),
        at: at(601),
    });
    let c = only_compensation(steps);
    let settle = c.settle.clone().unwrap();
    assert_eq!(settle.provider_ref.as_deref(), Some("psp_late"));
    assert!(!settle.captured);
    assert_eq!(flow.status(), CheckoutStatus::Compensating);
    flow.compensated(&c, Some(PaymentSettlement::Voided));
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
    assert_eq!(
        flow.state.money(),
        Some(MoneyState::Settled(PaymentSettlement::Voided))
    );
    // The first compensation's outcome arriving afterwards changes nothing.
    assert!(flow
        .state
        .decide(&CheckoutCommand::RecordCompensation {
            checkout_id: checkout_id(),
            released: vec![sku("A")],
            restocked: vec![],
            payment: Some(PaymentSettlement::Voided),
            order_closed: true,
            cart_reopened: true,
            settle_failure: None,
            at: at(700),
        })
        .unwrap()
        .is_empty());
}

#[test]
fn the_deadline_after_confirmation_changes_nothing() {
    let (flow, _) = Flow::confirmed();
    let events = flow
        .state
        .decide(&CheckoutCommand::FireTimer {
            checkout_id: checkout_id(),
            timer: CheckoutTimer::Deadline,
            at: at(600),
        })
        .unwrap();
    assert!(events.is_empty());
}

#[test]
fn a_failed_capture_is_retried_then_voided_and_cancelled() {
    let (mut flow, _) = Flow::confirmed();
    let steps = flow.record(CheckoutCommand::RecordPaymentFailed {
        checkout_id: checkout_id(),
        operation: PaymentOperation::Capture,
        attempt: 1,
        error: "payment provider timed out".into(),
        retry_at: Some(at(20)),
        at: at(5),
    });
    assert!(matches!(steps.as_slice(), [Step::ScheduleTimer { .. }]));
    let steps = flow.record(CheckoutCommand::FireTimer {
        checkout_id: checkout_id(),
        timer: CheckoutTimer::PaymentRetry {
            operation: PaymentOperation::Capture,
            attempt: 2,
        },
        at: at(20),
    });
    assert!(matches!(
        steps.as_slice(),
        [Step::CapturePayment { attempt: 2, .. }]
    ));
    let steps = flow.record(CheckoutCommand::RecordPaymentFailed {
        checkout_id: checkout_id(),
        operation: PaymentOperation::Capture,
        attempt: 2,
        error: "payment provider refused the request".into(),
        retry_at: None,
        at: at(21),
    });
    let c = only_compensation(steps);
    let settle = c.settle.clone().unwrap();
    assert_eq!(settle.provider_ref.as_deref(), Some("psp_1"));
    assert!(!settle.captured, "void, refund if captured after all");
    assert_eq!(c.release.len(), 2);
    assert_eq!(
        c.close_order.map(|(_, o)| o),
        Some(CheckoutOutcome::Cancelled)
    );
    flow.compensated(&c, Some(PaymentSettlement::Voided));
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
}

#[test]
fn an_order_cancelled_after_capture_is_refunded_and_restocked() {
    let (mut flow, _) = Flow::completed();
    let steps = flow.record(CheckoutCommand::NoteOrderCancelled {
        checkout_id: checkout_id(),
        reason: "customer changed their mind".into(),
        at: at(100),
    });
    let c = only_compensation(steps);
    assert!(c.release.is_empty());
    assert_eq!(skus(c.restock.iter().map(|l| l.sku.clone())), ["A", "B"]);
    assert!(matches!(&c.settle, Some(Settle { captured: true, .. })));
    assert_eq!(c.close_order, None, "the order is cancelled already");
    assert_eq!(c.reopen_cart, None, "the cart was closed");
    flow.compensated(&c, Some(PaymentSettlement::Refunded));
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
    assert!(flow
        .state
        .lines()
        .iter()
        .all(|l| l.stock == LineStock::Restocked));
}

#[test]
fn a_commit_that_lost_to_expiry_refunds_and_restocks_what_was_committed() {
    let (mut flow, _) = Flow::captured();
    let steps = flow.record(CheckoutCommand::RecordStockCommit {
        checkout_id: checkout_id(),
        committed: vec![sku("A")],
        failed: vec![UnavailableLine {
            sku: sku("B"),
            reason: "reservation expired".into(),
        }],
        at: at(6),
    });
    let c = only_compensation(steps);
    assert_eq!(skus(c.restock.iter().map(|l| l.sku.clone())), ["A"]);
    assert!(c.release.is_empty());
    assert!(matches!(&c.settle, Some(Settle { captured: true, .. })));
    flow.compensated(&c, Some(PaymentSettlement::Refunded));
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
}

#[test]
fn settling_is_retried_and_then_left_for_a_person() {
    let (mut flow, _) = Flow::captured();
    let c = only_compensation(flow.record(CheckoutCommand::NoteOrderCancelled {
        checkout_id: checkout_id(),
        reason: "fraud".into(),
        at: at(10),
    }));
    flow.compensated(&c, None);
    let steps = flow.record(CheckoutCommand::RecordPaymentFailed {
        checkout_id: checkout_id(),
        operation: PaymentOperation::Settle,
        attempt: 1,
        error: "payment provider timed out".into(),
        retry_at: Some(at(30)),
        at: at(11),
    });
    assert!(matches!(steps.as_slice(), [Step::ScheduleTimer { .. }]));
    assert_eq!(flow.status(), CheckoutStatus::Compensating);
    let steps = flow.record(CheckoutCommand::FireTimer {
        checkout_id: checkout_id(),
        timer: CheckoutTimer::PaymentRetry {
            operation: PaymentOperation::Settle,
            attempt: 2,
        },
        at: at(30),
    });
    let c = only_compensation(steps);
    assert_eq!(c.attempt, 2);
    assert!(
        c.release.is_empty() && c.close_order.is_none(),
        "only the money is left"
    );
    flow.record(CheckoutCommand::RecordPaymentFailed {
        checkout_id: checkout_id(),
        operation: PaymentOperation::Settle,
        attempt: 2,
        error: "payment provider timed out".into(),
        retry_at: None,
        at: at(31),
    });
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
    assert_eq!(flow.state.money(), Some(MoneyState::Abandoned));
}

/// A compensation step whose refund failed records what it undid and the failed call
/// as one decision (one append): a step cut off between two records, then run again
/// with another answer from the provider, would otherwise leave the failure (and its
/// retry) unrecorded and the checkout compensating for ever.
#[test]
fn a_failed_refund_is_recorded_with_the_compensation_in_one_decision() {
    let (mut flow, _) = Flow::completed();
    let c = only_compensation(flow.record(CheckoutCommand::NoteOrderCancelled {
        checkout_id: checkout_id(),
        reason: "changed my mind".into(),
        at: at(100),
    }));
    let before = flow.events.len();
    let record = CheckoutCommand::RecordCompensation {
        checkout_id: checkout_id(),
        released: vec![],
        restocked: c.restock.iter().map(|l| l.sku.clone()).collect(),
        payment: None,
        order_closed: false,
        cart_reopened: false,
        settle_failure: Some(SettleFailure {
            attempt: 1,
            error: "payment provider timed out".into(),
            retry_at: Some(at(130)),
        }),
        at: at(101),
    };
    let steps = flow.record(record.clone());
    let types: Vec<&str> = flow.events[before..]
        .iter()
        .map(|e| e.event_type())
        .collect();
    assert_eq!(types, ["CheckoutCompensated", "CheckoutPaymentFailed"]);
    assert!(matches!(steps.as_slice(), [Step::ScheduleTimer { .. }]));
    assert_eq!(flow.status(), CheckoutStatus::Compensating);
    // The same record again (a re-run of the step) changes nothing.
    assert!(flow.state.decide(&record).unwrap().is_empty());
    // The retry refunds: the checkout ends cancelled.
    let c = only_compensation(flow.record(CheckoutCommand::FireTimer {
        checkout_id: checkout_id(),
        timer: CheckoutTimer::PaymentRetry {
            operation: PaymentOperation::Settle,
            attempt: 2,
        },
        at: at(130),
    }));
    assert_eq!(c.attempt, 2);
    flow.compensated(&c, Some(PaymentSettlement::Refunded));
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
}

#[test]
fn a_refused_order_ends_rejected_with_nothing_to_undo() {
    let (mut flow, _) = Flow::started();
    let steps = flow.record(CheckoutCommand::RecordOrderRefused {
        checkout_id: checkout_id(),
        reason: "the cart is empty".into(),
        at: at(1),
    });
    assert!(steps.is_empty());
    assert_eq!(flow.status(), CheckoutStatus::Rejected);
}

#[test]
fn an_order_withdrawn_before_confirmation_cancels_and_settles() {
    let (mut flow, _) = Flow::authorized();
    let c = only_compensation(flow.record(CheckoutCommand::RecordOrderWithdrawn {
        checkout_id: checkout_id(),
        reason: "the order was cancelled: by staff".into(),
        at: at(4),
    }));
    assert_eq!(c.close_order, None);
    assert!(matches!(
        &c.settle,
        Some(Settle {
            provider_ref: Some(_),
            captured: false,
            ..
        })
    ));
    flow.compensated(&c, Some(PaymentSettlement::Voided));
    assert_eq!(flow.status(), CheckoutStatus::Cancelled);
}

#[test]
fn repeated_outcomes_decide_to_no_events() {
    let (flow, _) = Flow::completed();
    let repeats = [
        CheckoutCommand::RecordOrderPlaced {
            checkout_id: checkout_id(),
            lines: vec![line("A", 2, 1000)],
            at: at(9),
        },
        CheckoutCommand::RecordStockReservation {
            checkout_id: checkout_id(),
            reserved: vec![reserved("A", 2), reserved("B", 1)],
            unavailable: vec![],
            at: at(9),
        },
        CheckoutCommand::RecordPaymentAuthorized {
            checkout_id: checkout_id(),
            provider_ref: "psp_other".into(),
            at: at(9),
        },
        CheckoutCommand::RecordPaymentCaptured {
            checkout_id: checkout_id(),
            at: at(9),
        },
        CheckoutCommand::RecordCartClosed {
            checkout_id: checkout_id(),
            at: at(9),
        },
        CheckoutCommand::FireTimer {
            checkout_id: checkout_id(),
            timer: CheckoutTimer::Deadline,
            at: at(9),
        },
    ];
    for command in repeats {
        assert_eq!(
            flow.state.decide(&command).unwrap(),
            vec![],
            "{} after completion",
            command.name()
        );
    }
    assert!(flow
        .state
        .decide(&CheckoutCommand::Start {
            checkout_id: checkout_id(),
            cart_id: cart_id(),
            customer_id: CustomerId::from_uuid(Uuid::from_u128(42)),
            shipping_address: address(),
            payment_method: "tok_visa".into(),
            started_at: at(0),
            deadline: at(600),
        })
        .is_err());
}

#[test]
fn the_same_event_and_state_always_give_the_same_steps() {
    let (flow, steps) = Flow::reserved();
    let last = flow.events.last().unwrap();
    assert_eq!(react(&flow.state, last), steps);
    assert_eq!(react(&Checkout::default(), last), vec![]);
}

#[test]
fn bad_input_is_refused() {
    let (flow, _) = Flow::started();
    let other = CheckoutId::from_uuid(Uuid::from_u128(1));
    assert!(flow
        .state
        .decide(&CheckoutCommand::RecordOrderConfirmed {
            checkout_id: other,
            at: at(1)
        })
        .is_err());
    let empty = Checkout::default().decide(&CheckoutCommand::Start {
        checkout_id: checkout_id(),
        cart_id: cart_id(),
        customer_id: CustomerId::from_uuid(Uuid::from_u128(42)),
        shipping_address: address(),
        payment_method: " ".into(),
        started_at: at(0),
        deadline: at(600),
    });
    assert!(empty.is_err());
    let backwards = Checkout::default().decide(&CheckoutCommand::Start {
        checkout_id: checkout_id(),
        cart_id: cart_id(),
        customer_id: CustomerId::from_uuid(Uuid::from_u128(42)),
        shipping_address: address(),
        payment_method: "tok".into(),
        started_at: at(10),
        deadline: at(0) - Duration::seconds(1),
    });
    assert!(backwards.is_err());
}
