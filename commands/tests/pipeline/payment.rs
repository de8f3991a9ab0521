use domain::{DomainError, Payment, PaymentCommand, PaymentId, PaymentStatus};
use uuid::Uuid;

use crate::support::{at, ctx, eur, on_both_stores, rejection, Backend, Env};

on_both_stores!(
    a_payment_is_authorized_captured_and_refunded_in_parts,
    refunding_more_than_was_captured_is_refused,
    a_payment_is_captured_at_most_once,
);

async fn authorized_and_captured(env: &Env, authorized: i64, captured: i64) -> PaymentId {
    let payment_id: PaymentId = Uuid::now_v7().into();
    let payments = env.commands.payments();
    payments
        .execute(
            PaymentCommand::Authorize {
                payment_id,
                order_id: Uuid::now_v7().into(),
                amount: eur(authorized),
                provider_ref: "psp-123".into(),
                at: at(0),
            },
            &ctx(),
        )
        .await
        .unwrap();
    payments
        .execute(
            PaymentCommand::Capture {
                payment_id,
                amount: eur(captured),
                at: at(1),
            },
            &ctx(),
        )
        .await
        .unwrap();
    payment_id
}

fn refund(payment_id: PaymentId, minor: i64) -> PaymentCommand {
    PaymentCommand::Refund {
        payment_id,
        refund_id: Uuid::now_v7().into(),
        amount: eur(minor),
        at: at(2),
    }
}

async fn a_payment_is_authorized_captured_and_refunded_in_parts(backend: Backend) {
    let env = backend.env().await;
    let payment_id = authorized_and_captured(&env, 10_000, 8_000).await;
    let payments = env.commands.payments();

    payments
        .execute(refund(payment_id, 3_000), &ctx())
        .await
        .unwrap();
    let last = payments
        .execute(refund(payment_id, 5_000), &ctx())
        .await
        .unwrap();

    assert_eq!(last.stream_version, 4);
    let stream = Payment::stream_id(&payment_id);
    assert_eq!(
        env.event_types(&stream).await,
        [
            "PaymentAuthorized",
            "PaymentCaptured",
            "PaymentRefunded",
            "PaymentRefunded"
        ]
    );
    let payment: Payment = env.replay(&stream).await;
    assert_eq!(payment.status(), Some(PaymentStatus::Captured));
    assert_eq!(payment.captured(), Some(eur(8_000)));
    assert_eq!(payment.refunded(), Some(eur(8_000)));
    assert_eq!(payment.refunds().len(), 2);
}

async fn refunding_more_than_was_captured_is_refused(backend: Backend) {
    let env = backend.env().await;
    let payment_id = authorized_and_captured(&env, 5_000, 5_000).await;
    let payments = env.commands.payments();
    payments
        .execute(refund(payment_id, 4_000), &ctx())
        .await
        .unwrap();

    let too_much = payments.execute(refund(payment_id, 1_001), &ctx()).await;

    assert_eq!(
        rejection(too_much),
        DomainError::RefundExceedsCaptured {
            refundable: eur(1_000),
            requested: eur(1_001)
        }
    );
    let payment: Payment = env.replay(&Payment::stream_id(&payment_id)).await;
    assert_eq!(payment.refunded(), Some(eur(4_000)));
}

async fn a_payment_is_captured_at_most_once(backend: Backend) {
    let env = backend.env().await;
    let payment_id = authorized_and_captured(&env, 5_000, 2_000).await;

    let again = env
        .commands
        .payments()
        .execute(
            PaymentCommand::Capture {
                payment_id,
                amount: eur(1_000),
                at: at(3),
            },
            &ctx(),
        )
        .await;

    assert_eq!(
        rejection(again),
        DomainError::InvalidTransition {
            from: "captured",
            command: "Capture"
        }
    );
}
