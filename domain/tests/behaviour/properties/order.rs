use domain::{LineItem, Money, Order, OrderCommand, OrderEvent, OrderId};
use proptest::prelude::*;

use crate::order::address;
use crate::support::{at, eur, id, qty, sku, usd};

const TOTAL: i64 = 2 * 1_000 + 3 * 250;

fn lines() -> Vec<LineItem> {
    vec![
        LineItem {
            sku: sku("A"),
            quantity: qty(2),
            unit_price: eur(1_000),
        },
        LineItem {
            sku: sku("B"),
            quantity: qty(3),
            unit_price: eur(250),
        },
    ]
}

/// Mostly order 1, sometimes 2: commands for the wrong stream must be refused.
fn order_id() -> impl Strategy<Value = OrderId> + Clone {
    prop::sample::select(vec![1_u128, 1, 1, 1, 1, 1, 1, 1, 1, 2]).prop_map(id::<OrderId>)
}

fn place() -> impl Strategy<Value = OrderCommand> {
    (
        order_id(),
        prop::bool::weighted(0.9),
        (0_i64..100).prop_map(at),
    )
        .prop_map(
            |(order_id, with_lines, placed_at)| OrderCommand::PlaceOrder {
                order_id,
                customer_id: id(7),
                cart_id: id(8),
                lines: if with_lines { lines() } else { vec![] },
                shipping_address: address(),
                placed_at,
            },
        )
}

fn command() -> impl Strategy<Value = OrderCommand> {
    let order = order_id();
    let time = (0_i64..100).prop_map(at);
    let amount: BoxedStrategy<Money> = prop::sample::select(vec![
        eur(TOTAL),
        eur(TOTAL),
        eur(TOTAL),
        eur(TOTAL - 1),
        usd(TOTAL),
    ])
    .boxed();
    prop_oneof![
        1 => place(),
        3 => (order.clone(), time.clone()).prop_map(|(order_id, at)| OrderCommand::MarkStockReserved { order_id, reservations: vec![id(11), id(12)], at }),
        3 => (order.clone(), amount, time.clone()).prop_map(|(order_id, amount, at)| OrderCommand::MarkPaymentAuthorized { order_id, payment_id: id(21), amount, at }),
        3 => (order.clone(), time.clone()).prop_map(|(order_id, at)| OrderCommand::Confirm { order_id, at }),
        3 => (order.clone(), time.clone()).prop_map(|(order_id, at)| OrderCommand::Ship { order_id, tracking_number: None, at }),
        3 => (order.clone(), time.clone()).prop_map(|(order_id, at)| OrderCommand::MarkDelivered { order_id, at }),
        1 => (order.clone(), time.clone()).prop_map(|(order_id, at)| OrderCommand::Cancel { order_id, reason: "customer".into(), at }),
        1 => (order, time).prop_map(|(order_id, at)| OrderCommand::Reject { order_id, reason: "no stock".into(), at }),
    ]
}

proptest! {
    #[test]
    fn an_order_is_paid_at_most_once_and_ends_for_good(commands in crate::properties::history(place(), command(), 40)) {
        let mut payments = 0;
        crate::properties::run::<Order>(&commands, |before, after, events| {
            if let Some(status) = before.status() {
                assert!(!status.is_terminal(), "{status:?} took a transition");
            }
            payments += events.iter().filter(|e| matches!(e, OrderEvent::OrderPaymentAuthorized { .. })).count();
            assert!(payments <= 1, "paid twice");
            assert_eq!(after.total(), Some(eur(TOTAL)), "total is the sum of the lines");
            if before.id().is_some() {
                assert_eq!(after.id(), before.id(), "a command for another order is refused");
            }
            if let [OrderEvent::OrderPaymentAuthorized { amount, .. }] = events {
                assert_eq!(*amount, eur(TOTAL));
            }
        });
    }
}
