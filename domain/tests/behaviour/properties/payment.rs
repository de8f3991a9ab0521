use domain::{Money, Payment, PaymentCommand, PaymentEvent, PaymentId, PaymentStatus, RefundId};
use proptest::prelude::*;

use crate::support::{at, eur, id, usd};

fn amount() -> BoxedStrategy<Money> {
    prop::sample::select(vec![
        eur(-1),
        eur(0),
        eur(1),
        eur(250),
        eur(1_000),
        eur(5_000),
        eur(6_000),
        usd(100),
    ])
    .boxed()
}

/// Mostly payment 1, sometimes 2: commands for the wrong stream must be refused.
fn payment_id() -> impl Strategy<Value = PaymentId> + Clone {
    prop::sample::select(vec![1_u128, 1, 1, 1, 1, 1, 1, 1, 1, 2]).prop_map(id::<PaymentId>)
}

/// Authorize (mostly) or RecordDecline.
fn open() -> impl Strategy<Value = PaymentCommand> {
    let time = (0_i64..100).prop_map(at);
    prop_oneof![
        4 => (payment_id(), amount(), time.clone()).prop_map(|(payment_id, amount, at)| PaymentCommand::Authorize {
            payment_id, order_id: id(5), amount, provider_ref: "psp".into(), at,
        }),
        1 => (payment_id(), amount(), time).prop_map(|(payment_id, amount, at)| PaymentCommand::RecordDecline {
            payment_id, order_id: id(5), amount, provider_ref: "psp".into(), reason: "declined".into(), at,
        }),
    ]
}

fn command() -> impl Strategy<Value = PaymentCommand> {
    let payment = payment_id();
    let refund = (1_u128..=4).prop_map(id::<RefundId>);
    let time = (0_i64..100).prop_map(at);
    prop_oneof![
        1 => open(),
        3 => (payment.clone(), amount(), time.clone()).prop_map(|(payment_id, amount, at)| PaymentCommand::Capture { payment_id, amount, at }),
        1 => (payment.clone(), time.clone()).prop_map(|(payment_id, at)| PaymentCommand::Void { payment_id, at }),
        5 => (payment, refund, amount(), time).prop_map(|(payment_id, refund_id, amount, at)| PaymentCommand::Refund { payment_id, refund_id, amount, at }),
    ]
}

proptest! {
    #[test]
    fn captures_stay_within_authorization_and_refunds_within_capture(
        commands in crate::properties::history(open(), command(), 40)
    ) {
        let mut captures = 0;
        crate::properties::run::<Payment>(&commands, |before, after, events| {
            assert!(
                !matches!(before.status(), Some(PaymentStatus::Declined | PaymentStatus::Voided)),
                "declined and voided payments are terminal"
            );
            captures += events.iter().filter(|e| matches!(e, PaymentEvent::PaymentCaptured { .. })).count();
            assert!(captures <= 1, "captured twice");
            let authorized = after.authorized().unwrap();
            assert!(authorized.is_positive());
            let refunded = after.refunded().unwrap();
            match after.captured() {
                Some(captured) => {
                    assert_eq!(captured.currency, authorized.currency);
                    assert!(captured.is_positive() && captured.minor <= authorized.minor, "captured <= authorized");
                    assert!(refunded.minor <= captured.minor, "refunded <= captured");
                }
                None => assert_eq!(refunded.minor, 0, "nothing refunded before capture"),
            }
            assert!(refunded.minor >= 0);
        });
    }
}
