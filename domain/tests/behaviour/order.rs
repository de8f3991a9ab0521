use domain::{
    AddressInput, Aggregate, DomainError, LineItem, Money, Order, OrderCommand, OrderEvent,
    OrderId, OrderStatus, ShippingAddress, MAX_ORDER_LINES,
};

use crate::support::{apply, at, decide_one, eur, given, id, qty, refusal, sku, usd};

fn oid() -> OrderId {
    id(1)
}

pub fn address() -> ShippingAddress {
    ShippingAddress::parse(AddressInput {
        name: "Grace Hopper".into(),
        line1: "1 Navy Way".into(),
        line2: None,
        city: "Arlington".into(),
        postal_code: "22202".into(),
        country: "US".into(),
        email: Some("grace@example.org".into()),
        phone: Some("+1 555 0100".into()),
    })
    .unwrap()
}

fn line(code: &str, n: u32, price: Money) -> LineItem {
    LineItem {
        sku: sku(code),
        quantity: qty(n),
        unit_price: price,
    }
}

fn place_with(lines: Vec<LineItem>) -> OrderCommand {
    OrderCommand::PlaceOrder {
        order_id: oid(),
        customer_id: id(7),
        cart_id: id(8),
        lines,
        shipping_address: address(),
        placed_at: at(0),
    }
}

fn place() -> OrderCommand {
    place_with(vec![line("A", 2, eur(1_000)), line("B", 1, eur(550))])
}

fn reserved() -> OrderCommand {
    OrderCommand::MarkStockReserved {
        order_id: oid(),
        reservations: vec![id(11), id(12)],
        at: at(1),
    }
}

fn authorized(amount: Money) -> OrderCommand {
    OrderCommand::MarkPaymentAuthorized {
        order_id: oid(),
        payment_id: id(21),
        amount,
        at: at(2),
    }
}

fn confirm() -> OrderCommand {
    OrderCommand::Confirm {
        order_id: oid(),
        at: at(3),
    }
}

fn ship() -> OrderCommand {
    OrderCommand::Ship {
        order_id: oid(),
        tracking_number: Some("1Z999".into()),
        at: at(4),
    }
}

fn deliver() -> OrderCommand {
    OrderCommand::MarkDelivered {
        order_id: oid(),
        at: at(5),
    }
}

fn cancel() -> OrderCommand {
    OrderCommand::Cancel {
        order_id: oid(),
        reason: "changed my mind".into(),
        at: at(9),
    }
}

fn reject() -> OrderCommand {
    OrderCommand::Reject {
        order_id: oid(),
        reason: "payment declined".into(),
        at: at(9),
    }
}

/// One of every command, for "takes no further transitions" checks.
fn every_command() -> Vec<OrderCommand> {
    vec![
        place(),
        reserved(),
        authorized(eur(2_550)),
        confirm(),
        ship(),
        deliver(),
        cancel(),
        reject(),
    ]
}

#[test]
fn stream_id_is_order_dash_uuid() {
    assert_eq!(Order::CATEGORY, "order");
    assert_eq!(
        Order::stream_id(&oid()),
        "order-00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(confirm().stream_id(), Order::stream_id(&oid()));
}

#[test]
fn placing_an_order_records_its_lines_and_total() {
    match decide_one(&Order::default(), &place()) {
        OrderEvent::OrderPlaced {
            total,
            placed_at,
            lines,
            ..
        } => {
            assert_eq!(total, eur(2_550));
            assert_eq!(placed_at, at(0));
            assert_eq!(lines.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    let order: Order = given(&[place()]);
    assert_eq!(order.status(), Some(&OrderStatus::Placed));
    assert_eq!(order.total(), Some(eur(2_550)));
    assert_eq!(
        order.shipping_address().map(|a| a.city()),
        Some("Arlington")
    );
    assert_eq!(
        refusal(&order, &place()),
        DomainError::AlreadyExists { aggregate: "order" }
    );
}

#[test]
fn an_order_needs_lines_with_distinct_skus_in_one_currency() {
    let empty = Order::default();
    assert!(matches!(
        refusal(&empty, &place_with(vec![])),
        DomainError::Invalid { field: "lines", .. }
    ));
    assert_eq!(
        refusal(
            &empty,
            &place_with(vec![line("A", 1, eur(1)), line("A", 2, eur(1))])
        ),
        DomainError::DuplicateSku { sku: sku("A") }
    );
    assert_eq!(
        refusal(
            &empty,
            &place_with(vec![line("A", 1, eur(1)), line("B", 1, usd(1))])
        )
        .code(),
        "currency-mismatch"
    );
    assert!(matches!(
        refusal(&empty, &place_with(vec![line("A", 1, eur(0))])),
        DomainError::Invalid {
            field: "unit_price",
            ..
        }
    ));
    let too_many = (0..=MAX_ORDER_LINES)
        .map(|i| line(&format!("S{i}"), 1, eur(1)))
        .collect();
    assert_eq!(
        refusal(&empty, &place_with(too_many)).code(),
        "limit-exceeded"
    );
}

#[test]
fn an_order_total_that_would_overflow_is_refused() {
    let lines = vec![line("A", 2, eur(i64::MAX / 2 + 1))];
    assert_eq!(
        refusal(&Order::default(), &place_with(lines)),
        DomainError::Overflow
    );
}

#[test]
fn the_happy_path_runs_from_placed_to_delivered() {
    let order: Order = given(&[
        place(),
        reserved(),
        authorized(eur(2_550)),
        confirm(),
        ship(),
        deliver(),
    ]);
    assert_eq!(order.status(), Some(&OrderStatus::Delivered));
    assert_eq!(order.status_changed_at(), Some(at(5)));
    assert_eq!(order.reservations(), [id(11), id(12)]);
    assert_eq!(order.payment_id(), Some(id(21)));
    assert_eq!(order.tracking_number(), Some("1Z999"));
}

#[test]
fn transitions_record_their_timestamp() {
    let order: Order = given(&[place(), reserved()]);
    assert_eq!(
        decide_one(&order, &authorized(eur(2_550))),
        OrderEvent::OrderPaymentAuthorized {
            payment_id: id(21),
            amount: eur(2_550),
            at: at(2)
        }
    );
}

#[test]
fn skipping_a_step_is_an_invalid_transition() {
    let placed: Order = given(&[place()]);
    assert_eq!(
        refusal(&placed, &confirm()),
        DomainError::InvalidTransition {
            from: "placed",
            command: "Confirm"
        }
    );
    assert_eq!(
        refusal(&placed, &authorized(eur(2_550))),
        DomainError::InvalidTransition {
            from: "placed",
            command: "MarkPaymentAuthorized"
        }
    );
    assert_eq!(refusal(&placed, &ship()).code(), "invalid-transition");
}

#[test]
fn the_authorized_amount_must_equal_the_order_total() {
    let order: Order = given(&[place(), reserved()]);
    assert_eq!(
        refusal(&order, &authorized(eur(2_549))),
        DomainError::AmountMismatch {
            expected: eur(2_550),
            actual: eur(2_549)
        }
    );
    assert_eq!(
        refusal(&order, &authorized(usd(2_550))).code(),
        "currency-mismatch"
    );
}

#[test]
fn an_order_is_paid_at_most_once() {
    let paid: Order = given(&[place(), reserved(), authorized(eur(2_550))]);
    assert_eq!(
        refusal(&paid, &authorized(eur(2_550))),
        DomainError::InvalidTransition {
            from: "payment_authorized",
            command: "MarkPaymentAuthorized"
        }
    );
}

#[test]
fn stock_reservation_needs_distinct_reservation_ids() {
    let placed: Order = given(&[place()]);
    for reservations in [vec![], vec![id(1), id(1)]] {
        let command = OrderCommand::MarkStockReserved {
            order_id: oid(),
            reservations,
            at: at(1),
        };
        assert!(matches!(
            refusal(&placed, &command),
            DomainError::Invalid {
                field: "reservations",
                ..
            }
        ));
    }
}

#[test]
fn a_cancelled_order_takes_no_further_transitions() {
    let cancelled: Order = given(&[place(), reserved(), cancel()]);
    assert_eq!(
        cancelled.status(),
        Some(&OrderStatus::Cancelled {
            reason: "changed my mind".into()
        })
    );
    assert!(cancelled.status().unwrap().is_terminal());
    for command in every_command() {
        assert!(cancelled.decide(&command).is_err(), "{command:?}");
    }
}

#[test]
fn rejected_and_delivered_orders_take_no_further_transitions() {
    let rejected: Order = given(&[place(), reject()]);
    let delivered: Order = given(&[
        place(),
        reserved(),
        authorized(eur(2_550)),
        confirm(),
        ship(),
        deliver(),
    ]);
    for order in [rejected, delivered] {
        for command in every_command() {
            assert!(
                order.decide(&command).is_err(),
                "{command:?} on {:?}",
                order.status()
            );
        }
    }
}

#[test]
fn a_shipped_order_cannot_be_cancelled() {
    let shipped: Order = given(&[
        place(),
        reserved(),
        authorized(eur(2_550)),
        confirm(),
        ship(),
    ]);
    assert_eq!(
        refusal(&shipped, &cancel()),
        DomainError::InvalidTransition {
            from: "shipped",
            command: "Cancel"
        }
    );
}

#[test]
fn a_confirmed_order_can_be_cancelled_but_not_rejected() {
    let confirmed: Order = given(&[place(), reserved(), authorized(eur(2_550)), confirm()]);
    assert_eq!(
        refusal(&confirmed, &reject()),
        DomainError::InvalidTransition {
            from: "confirmed",
            command: "Reject"
        }
    );
    let cancelled = apply(confirmed, &cancel()).unwrap();
    assert_eq!(cancelled.status_changed_at(), Some(at(9)));
}

#[test]
fn cancelling_needs_a_reason() {
    let placed: Order = given(&[place()]);
    let command = OrderCommand::Cancel {
        order_id: oid(),
        reason: "".into(),
        at: at(1),
    };
    assert!(matches!(
        refusal(&placed, &command),
        DomainError::Invalid {
            field: "reason",
            ..
        }
    ));
}

#[test]
fn transitions_before_placement_find_no_order() {
    assert_eq!(
        refusal(&Order::default(), &confirm()),
        DomainError::NotFound { aggregate: "order" }
    );
}
