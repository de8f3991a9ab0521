use domain::{
    Aggregate, Cart, CartCommand, CartEvent, CartId, CartOwner, CartStatus, DomainError, LineItem,
    Money, Quantity, MAX_CART_LINES,
};

use crate::support::{apply, currency, decide_one, eur, given, id, qty, refusal, sku, usd};

fn cid() -> CartId {
    id(1)
}

fn create_for(owner: CartOwner) -> CartCommand {
    CartCommand::CreateCart {
        cart_id: cid(),
        owner,
        currency: currency("EUR"),
    }
}

fn create() -> CartCommand {
    create_for(CartOwner::Customer(id(7)))
}

fn add(code: &str, n: u32, price: Money) -> CartCommand {
    CartCommand::AddLine {
        cart_id: cid(),
        sku: sku(code),
        quantity: qty(n),
        unit_price: price,
    }
}

fn line(code: &str, n: u32, price: Money) -> LineItem {
    LineItem {
        sku: sku(code),
        quantity: qty(n),
        unit_price: price,
    }
}

fn check_out() -> CartCommand {
    CartCommand::CheckOut { cart_id: cid() }
}

fn with_lines() -> Cart {
    given(&[create(), add("A", 2, eur(500)), add("B", 1, eur(1_250))])
}

#[test]
fn stream_id_is_cart_dash_uuid() {
    assert_eq!(Cart::CATEGORY, "cart");
    assert_eq!(
        Cart::stream_id(&cid()),
        "cart-00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(check_out().stream_id(), Cart::stream_id(&cid()));
}

#[test]
fn a_new_cart_is_open_empty_and_in_its_currency() {
    let cart: Cart = given(&[create_for(CartOwner::Guest(id(3)))]);
    assert_eq!(cart.status(), Some(CartStatus::Open));
    assert_eq!(cart.owner(), Some(CartOwner::Guest(id(3))));
    assert_eq!(cart.total(), Ok(eur(0)));
    assert_eq!(
        refusal(&cart, &create()),
        DomainError::AlreadyExists { aggregate: "cart" }
    );
}

#[test]
fn lines_need_an_existing_cart() {
    assert_eq!(
        refusal(&Cart::default(), &add("A", 1, eur(1))),
        DomainError::NotFound { aggregate: "cart" }
    );
}

#[test]
fn adding_lines_sums_the_total() {
    let cart = with_lines();
    assert_eq!(cart.lines().len(), 2);
    assert_eq!(cart.total(), Ok(eur(2 * 500 + 1_250)));
}

#[test]
fn adding_the_same_sku_again_increases_its_quantity_at_the_latest_price() {
    let cart = apply(with_lines(), &add("A", 3, eur(450))).unwrap();
    assert_eq!(cart.lines().len(), 2);
    assert_eq!(cart.line(&sku("A")), Some(&line("A", 5, eur(450))));
}

#[test]
fn a_line_in_another_currency_is_refused() {
    assert_eq!(
        refusal(&with_lines(), &add("C", 1, usd(100))),
        DomainError::CurrencyMismatch {
            expected: currency("EUR"),
            actual: currency("USD")
        }
    );
}

#[test]
fn a_unit_price_must_be_positive() {
    assert!(matches!(
        refusal(&with_lines(), &add("C", 1, eur(0))),
        DomainError::Invalid {
            field: "unit_price",
            ..
        }
    ));
}

#[test]
fn a_line_holds_at_most_a_million_units() {
    let cart: Cart = given(&[create(), add("A", Quantity::MAX, eur(1))]);
    assert_eq!(
        refusal(&cart, &add("A", 1, eur(1))),
        DomainError::QuantityOutOfRange {
            value: i128::from(Quantity::MAX) + 1,
            max: Quantity::MAX
        }
    );
}

#[test]
fn a_cart_holds_at_most_a_hundred_lines() {
    let mut commands = vec![create()];
    commands.extend((0..MAX_CART_LINES).map(|i| add(&format!("S{i}"), 1, eur(1))));
    let full: Cart = given(&commands);
    assert_eq!(
        refusal(&full, &add("ONE-MORE", 1, eur(1))),
        DomainError::LimitExceeded {
            limit: "cart_lines",
            max: MAX_CART_LINES
        }
    );
    assert!(
        full.decide(&add("S0", 1, eur(1))).is_ok(),
        "an existing line can still grow"
    );
}

#[test]
fn a_total_that_would_overflow_is_refused() {
    let cart: Cart = given(&[create(), add("A", 1, eur(i64::MAX / 2))]);
    assert_eq!(
        refusal(&cart, &add("B", 2, eur(i64::MAX / 2))),
        DomainError::Overflow
    );
    assert_eq!(
        refusal(&cart, &add("A", 1_000, eur(i64::MAX / 2))),
        DomainError::Overflow
    );
}

#[test]
fn changing_a_quantity_sets_it() {
    let command = CartCommand::ChangeQuantity {
        cart_id: cid(),
        sku: sku("A"),
        quantity: qty(9),
    };
    let cart = apply(with_lines(), &command).unwrap();
    assert_eq!(cart.line(&sku("A")).map(|l| l.quantity), Some(qty(9)));
    assert_eq!(cart.total(), Ok(eur(9 * 500 + 1_250)));
}

#[test]
fn changing_or_removing_a_missing_line_is_refused() {
    let change = CartCommand::ChangeQuantity {
        cart_id: cid(),
        sku: sku("Z"),
        quantity: qty(1),
    };
    let remove = CartCommand::RemoveLine {
        cart_id: cid(),
        sku: sku("Z"),
    };
    for command in [change, remove] {
        assert_eq!(
            refusal(&with_lines(), &command),
            DomainError::LineNotFound { sku: sku("Z") }
        );
    }
}

#[test]
fn removing_a_line_drops_it_from_the_total() {
    let cart = apply(
        with_lines(),
        &CartCommand::RemoveLine {
            cart_id: cid(),
            sku: sku("A"),
        },
    )
    .unwrap();
    assert_eq!(cart.lines(), [line("B", 1, eur(1_250))]);
    assert_eq!(cart.total(), Ok(eur(1_250)));
}

#[test]
fn merging_a_guest_cart_keeps_the_larger_quantity_per_sku() {
    let merge = CartCommand::MergeGuestCart {
        cart_id: cid(),
        guest_cart_id: id(2),
        lines: vec![
            line("A", 5, eur(490)),
            line("B", 1, eur(1_000)),
            line("C", 4, eur(300)),
        ],
    };
    assert_eq!(
        decide_one(&with_lines(), &merge),
        CartEvent::GuestCartMerged {
            guest_cart_id: id(2),
            lines: vec![line("A", 5, eur(500)), line("C", 4, eur(300))],
        }
    );
    let cart = apply(with_lines(), &merge).unwrap();
    assert_eq!(
        cart.lines(),
        [
            line("A", 5, eur(500)),
            line("B", 1, eur(1_250)),
            line("C", 4, eur(300))
        ]
    );
}

#[test]
fn only_a_customer_cart_can_absorb_a_guest_cart() {
    let guest_cart: Cart = given(&[create_for(CartOwner::Guest(id(3)))]);
    let merge = CartCommand::MergeGuestCart {
        cart_id: cid(),
        guest_cart_id: id(2),
        lines: vec![],
    };
    assert!(matches!(
        refusal(&guest_cart, &merge),
        DomainError::Invalid { field: "owner", .. }
    ));
    let itself = CartCommand::MergeGuestCart {
        cart_id: cid(),
        guest_cart_id: cid(),
        lines: vec![],
    };
    assert!(matches!(
        refusal(&with_lines(), &itself),
        DomainError::Invalid {
            field: "guest_cart_id",
            ..
        }
    ));
}

#[test]
fn merging_lines_in_another_currency_is_refused() {
    let merge = CartCommand::MergeGuestCart {
        cart_id: cid(),
        guest_cart_id: id(2),
        lines: vec![line("C", 1, usd(1))],
    };
    assert_eq!(refusal(&with_lines(), &merge).code(), "currency-mismatch");
}

#[test]
fn checking_out_locks_the_cart_and_records_its_total() {
    assert_eq!(
        decide_one(&with_lines(), &check_out()),
        CartEvent::CartCheckedOut { total: eur(2_250) }
    );
    let cart = apply(with_lines(), &check_out()).unwrap();
    assert_eq!(cart.status(), Some(CartStatus::CheckedOut));
    let commands = [
        add("C", 1, eur(1)),
        CartCommand::ChangeQuantity {
            cart_id: cid(),
            sku: sku("A"),
            quantity: qty(1),
        },
        CartCommand::RemoveLine {
            cart_id: cid(),
            sku: sku("A"),
        },
        CartCommand::MergeGuestCart {
            cart_id: cid(),
            guest_cart_id: id(2),
            lines: vec![],
        },
    ];
    for command in commands {
        assert_eq!(
            refusal(&cart, &command),
            DomainError::CartLocked {
                status: "checked_out"
            }
        );
    }
}

#[test]
fn checking_out_an_empty_cart_is_refused() {
    let cart: Cart = given(&[create()]);
    assert_eq!(refusal(&cart, &check_out()), DomainError::CartEmpty);
}

#[test]
fn a_checked_out_cart_can_be_reopened_or_closed_but_not_abandoned() {
    let checked_out = apply(with_lines(), &check_out()).unwrap();
    let reopened = apply(checked_out.clone(), &CartCommand::Reopen { cart_id: cid() }).unwrap();
    assert_eq!(reopened.status(), Some(CartStatus::Open));
    let closed = apply(
        checked_out.clone(),
        &CartCommand::Close {
            cart_id: cid(),
            order_id: id(9),
        },
    )
    .unwrap();
    assert_eq!(closed.status(), Some(CartStatus::Closed));
    assert_eq!(
        refusal(&checked_out, &CartCommand::Abandon { cart_id: cid() }),
        DomainError::InvalidTransition {
            from: "checked_out",
            command: "Abandon"
        }
    );
}

#[test]
fn an_open_cart_cannot_be_closed_without_checkout() {
    assert_eq!(
        refusal(
            &with_lines(),
            &CartCommand::Close {
                cart_id: cid(),
                order_id: id(9)
            }
        ),
        DomainError::InvalidTransition {
            from: "open",
            command: "Close"
        }
    );
}

#[test]
fn closed_and_abandoned_carts_take_no_further_commands() {
    let closed = given::<Cart>(&[
        create(),
        add("A", 1, eur(1)),
        check_out(),
        CartCommand::Close {
            cart_id: cid(),
            order_id: id(9),
        },
    ]);
    let abandoned = given::<Cart>(&[create(), CartCommand::Abandon { cart_id: cid() }]);
    for cart in [closed, abandoned] {
        for command in [
            add("A", 1, eur(1)),
            check_out(),
            CartCommand::Reopen { cart_id: cid() },
            CartCommand::Abandon { cart_id: cid() },
            CartCommand::Close {
                cart_id: cid(),
                order_id: id(9),
            },
        ] {
            assert!(
                cart.decide(&command).is_err(),
                "{command:?} accepted on {:?}",
                cart.status()
            );
        }
    }
}

#[test]
fn a_command_for_another_cart_is_a_routing_error() {
    assert_eq!(
        refusal(&with_lines(), &CartCommand::CheckOut { cart_id: id(2) }).code(),
        "wrong-stream"
    );
}
