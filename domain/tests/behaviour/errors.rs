use domain::{DomainError, ReservationOutcome};

use crate::support::{currency, eur, id, sku, warehouse};

fn one_of_each() -> Vec<DomainError> {
    vec![
        DomainError::Invalid {
            field: "title",
            reason: "must not be blank".into(),
        },
        DomainError::QuantityOutOfRange {
            value: 0,
            max: 1_000_000,
        },
        DomainError::LimitExceeded {
            limit: "cart_lines",
            max: 100,
        },
        DomainError::Overflow,
        DomainError::CurrencyMismatch {
            expected: currency("EUR"),
            actual: currency("USD"),
        },
        DomainError::AlreadyExists { aggregate: "cart" },
        DomainError::NotFound { aggregate: "order" },
        DomainError::WrongStream {
            expected: "cart-1".into(),
            actual: "cart-2".into(),
        },
        DomainError::InvalidTransition {
            from: "cancelled",
            command: "Ship",
        },
        DomainError::DuplicateSku { sku: sku("A") },
        DomainError::UnknownSku { sku: sku("A") },
        DomainError::MissingPrice { sku: sku("A") },
        DomainError::OutOfStock {
            sku: sku("A"),
            requested: 3,
            available: 2,
        },
        DomainError::AdjustmentExceedsAvailable {
            warehouse: warehouse("main"),
            delta: -3,
            available: 2,
        },
        DomainError::ReservationExists {
            reservation_id: id(1),
        },
        DomainError::ReservationUnknown {
            reservation_id: id(1),
        },
        DomainError::ReservationEnded {
            reservation_id: id(1),
            outcome: ReservationOutcome::Expired,
        },
        DomainError::CartLocked {
            status: "checked_out",
        },
        DomainError::CartEmpty,
        DomainError::LineNotFound { sku: sku("A") },
        DomainError::AmountMismatch {
            expected: eur(2),
            actual: eur(1),
        },
        DomainError::ExceedsAuthorized {
            authorized: eur(1),
            requested: eur(2),
        },
        DomainError::RefundExceedsCaptured {
            refundable: eur(1),
            requested: eur(2),
        },
        DomainError::RefundExists { refund_id: id(1) },
    ]
}

#[test]
fn every_error_serialises_with_its_stable_code() {
    for error in one_of_each() {
        let json = serde_json::to_value(&error).unwrap();
        assert_eq!(json["code"], error.code(), "{error:?}");
    }
}

#[test]
fn error_codes_are_unique_kebab_case() {
    let mut codes: Vec<&str> = one_of_each().iter().map(DomainError::code).collect();
    for code in &codes {
        assert!(
            code.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
            "{code}"
        );
    }
    let count = codes.len();
    codes.sort_unstable();
    codes.dedup();
    assert_eq!(codes.len(), count);
}

#[test]
fn errors_carry_what_the_caller_needs_in_their_serde_form() {
    let json = serde_json::to_value(DomainError::OutOfStock {
        sku: sku("TR-42"),
        requested: 3,
        available: 2,
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({ "code": "out-of-stock", "sku": "TR-42", "requested": 3, "available": 2 })
    );
    assert_eq!(
        DomainError::OutOfStock {
            sku: sku("TR-42"),
            requested: 3,
            available: 2
        }
        .to_string(),
        "SKU TR-42: requested 3, available 2"
    );
}
