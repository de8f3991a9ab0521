use domain::{
    Aggregate, DomainError, Money, Payment, PaymentCommand, PaymentEvent, PaymentId, PaymentStatus,
};

use crate::support::{apply, at, decide_one, eur, given, id, refusal, usd};

fn pid() -> PaymentId {
    id(1)
}

fn authorize(amount: Money) -> PaymentCommand {
    PaymentCommand::Authorize {
        payment_id: pid(),
        order_id: id(2),
        amount,
        provider_ref: "psp_123".into(),
        at: at(0),
    }
}

fn decline() -> PaymentCommand {
    PaymentCommand::RecordDecline {
        payment_id: pid(),
        order_id: id(2),
        amount: eur(5_000),
        provider_ref: "psp_124".into(),
        reason: "insufficient funds".into(),
        at: at(0),
    }
}

fn capture(amount: Money) -> PaymentCommand {
    PaymentCommand::Capture {
        payment_id: pid(),
        amount,
        at: at(1),
    }
}

fn void() -> PaymentCommand {
    PaymentCommand::Void {
        payment_id: pid(),
        at: at(1),
    }
}

fn refund(refund: u128, amount: Money) -> PaymentCommand {
    PaymentCommand::Refund {
        payment_id: pid(),
        refund_id: id(refund),
        amount,
        at: at(2),
    }
}

fn captured(amount: Money) -> Payment {
    given(&[authorize(eur(5_000)), capture(amount)])
}

#[test]
fn stream_id_is_payment_dash_uuid() {
    assert_eq!(Payment::CATEGORY, "payment");
    assert_eq!(
        Payment::stream_id(&pid()),
        "payment-00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(void().stream_id(), Payment::stream_id(&pid()));
}

#[test]
fn an_authorization_records_amount_order_and_provider_reference() {
    let payment: Payment = given(&[authorize(eur(5_000))]);
    assert_eq!(payment.status(), Some(PaymentStatus::Authorized));
    assert_eq!(payment.authorized(), Some(eur(5_000)));
    assert_eq!(payment.order_id(), Some(id(2)));
    assert_eq!(payment.provider_ref(), Some("psp_123"));
    assert_eq!(
        refusal(&payment, &authorize(eur(5_000))),
        DomainError::AlreadyExists {
            aggregate: "payment"
        }
    );
}

#[test]
fn an_authorization_needs_a_positive_amount_and_a_provider_reference() {
    assert!(matches!(
        refusal(&Payment::default(), &authorize(eur(0))),
        DomainError::Invalid {
            field: "amount",
            ..
        }
    ));
    let no_ref = PaymentCommand::Authorize {
        payment_id: pid(),
        order_id: id(2),
        amount: eur(1),
        provider_ref: "".into(),
        at: at(0),
    };
    assert!(matches!(
        refusal(&Payment::default(), &no_ref),
        DomainError::Invalid {
            field: "provider_ref",
            ..
        }
    ));
}

#[test]
fn a_declined_payment_takes_no_further_commands() {
    let declined: Payment = given(&[decline()]);
    assert_eq!(declined.status(), Some(PaymentStatus::Declined));
    assert_eq!(declined.decline_reason(), Some("insufficient funds"));
    assert_eq!(
        refusal(&declined, &capture(eur(1))),
        DomainError::InvalidTransition {
            from: "declined",
            command: "Capture"
        }
    );
    assert_eq!(refusal(&declined, &void()).code(), "invalid-transition");
    assert_eq!(
        refusal(&declined, &authorize(eur(1))).code(),
        "already-exists"
    );
}

#[test]
fn capturing_part_of_the_authorization_is_allowed() {
    let payment = captured(eur(4_000));
    assert_eq!(payment.status(), Some(PaymentStatus::Captured));
    assert_eq!(payment.captured(), Some(eur(4_000)));
}

#[test]
fn capturing_more_than_authorized_is_refused() {
    let payment: Payment = given(&[authorize(eur(5_000))]);
    assert_eq!(
        refusal(&payment, &capture(eur(5_001))),
        DomainError::ExceedsAuthorized {
            authorized: eur(5_000),
            requested: eur(5_001)
        }
    );
    assert_eq!(
        refusal(&payment, &capture(usd(10))).code(),
        "currency-mismatch"
    );
    assert_eq!(refusal(&payment, &capture(eur(0))).code(), "invalid");
}

#[test]
fn a_payment_is_captured_at_most_once() {
    assert_eq!(
        refusal(&captured(eur(100)), &capture(eur(100))),
        DomainError::InvalidTransition {
            from: "captured",
            command: "Capture"
        }
    );
}

#[test]
fn a_payment_can_be_voided_only_before_capture() {
    let authorized: Payment = given(&[authorize(eur(5_000))]);
    assert_eq!(
        decide_one(&authorized, &void()),
        PaymentEvent::PaymentVoided { at: at(1) }
    );
    let voided = apply(authorized, &void()).unwrap();
    assert_eq!(voided.status(), Some(PaymentStatus::Voided));
    assert_eq!(
        refusal(&voided, &capture(eur(1))).code(),
        "invalid-transition"
    );
    assert_eq!(
        refusal(&captured(eur(5_000)), &void()),
        DomainError::InvalidTransition {
            from: "captured",
            command: "Void"
        }
    );
}

#[test]
fn partial_refunds_add_up_to_at_most_the_captured_amount() {
    let payment = given::<Payment>(&[
        authorize(eur(5_000)),
        capture(eur(4_000)),
        refund(10, eur(1_500)),
        refund(11, eur(2_000)),
    ]);
    assert_eq!(payment.refunded(), Some(eur(3_500)));
    assert_eq!(payment.refunds(), [id(10), id(11)]);
    assert_eq!(
        refusal(&payment, &refund(12, eur(501))),
        DomainError::RefundExceedsCaptured {
            refundable: eur(500),
            requested: eur(501)
        }
    );
    let fully = apply(payment, &refund(12, eur(500))).unwrap();
    assert_eq!(fully.refunded(), Some(eur(4_000)));
}

#[test]
fn a_refund_id_is_used_once() {
    let payment = apply(captured(eur(5_000)), &refund(10, eur(1))).unwrap();
    assert_eq!(
        refusal(&payment, &refund(10, eur(1))),
        DomainError::RefundExists { refund_id: id(10) }
    );
}

#[test]
fn refunding_before_capture_is_an_invalid_transition() {
    let payment: Payment = given(&[authorize(eur(5_000))]);
    assert_eq!(
        refusal(&payment, &refund(10, eur(1))),
        DomainError::InvalidTransition {
            from: "authorized",
            command: "Refund"
        }
    );
}

#[test]
fn commands_before_authorization_find_no_payment() {
    assert_eq!(
        refusal(&Payment::default(), &capture(eur(1))),
        DomainError::NotFound {
            aggregate: "payment"
        }
    );
}
