use domain::{
    Cart, CartCommand, CartId, CartOwner, CartStatus, Currency, LineItem, Money, Quantity,
    MAX_CART_LINES,
};
use proptest::prelude::*;

use crate::support::{id, sku};

fn money() -> impl Strategy<Value = Money> {
    (
        prop::sample::select(vec!["EUR", "EUR", "EUR", "USD"]),
        prop::sample::select(vec![0_i64, 1, 999, 25_000, i64::MAX / 3]),
    )
        .prop_map(|(c, minor)| Money::new(minor, Currency::parse(c).unwrap()))
}

/// Mostly cart 1, sometimes 2: commands for the wrong stream must be refused.
fn cart_id() -> impl Strategy<Value = CartId> + Clone {
    prop::sample::select(vec![1_u128, 1, 1, 1, 1, 1, 1, 1, 1, 2]).prop_map(id::<CartId>)
}

fn create() -> impl Strategy<Value = CartCommand> {
    let owner = prop_oneof![
        Just(CartOwner::Customer(id(7))),
        Just(CartOwner::Guest(id(8)))
    ];
    (cart_id(), owner).prop_map(|(cart_id, owner)| CartCommand::CreateCart {
        cart_id,
        owner,
        currency: Currency::parse("EUR").unwrap(),
    })
}

fn command() -> impl Strategy<Value = CartCommand> {
    let cart = cart_id();
    let code = prop::sample::select(vec!["A", "B", "C", "D"]).prop_map(sku);
    let quantity = prop::sample::select(vec![1_u32, 2, 7, 999_999, Quantity::MAX])
        .prop_map(|n| Quantity::new(n).unwrap());
    let line = (code.clone(), quantity.clone(), money()).prop_map(|(sku, quantity, unit_price)| {
        LineItem {
            sku,
            quantity,
            unit_price,
        }
    });
    prop_oneof![
        1 => create(),
        8 => (cart.clone(), code.clone(), quantity.clone(), money())
            .prop_map(|(cart_id, sku, quantity, unit_price)| CartCommand::AddLine { cart_id, sku, quantity, unit_price }),
        3 => (cart.clone(), code.clone(), quantity).prop_map(|(cart_id, sku, quantity)| CartCommand::ChangeQuantity { cart_id, sku, quantity }),
        2 => (cart.clone(), code).prop_map(|(cart_id, sku)| CartCommand::RemoveLine { cart_id, sku }),
        2 => (cart.clone(), prop::collection::vec(line, 0..4))
            .prop_map(|(cart_id, lines)| CartCommand::MergeGuestCart { cart_id, guest_cart_id: id(3), lines }),
        2 => cart.clone().prop_map(|cart_id| CartCommand::CheckOut { cart_id }),
        1 => cart.clone().prop_map(|cart_id| CartCommand::Reopen { cart_id }),
        1 => cart.clone().prop_map(|cart_id| CartCommand::Abandon { cart_id }),
        1 => cart.prop_map(|cart_id| CartCommand::Close { cart_id, order_id: id(9) }),
    ]
}

proptest! {
    #[test]
    fn cart_total_is_the_checked_sum_of_its_lines(commands in crate::properties::history(create(), command(), 50)) {
        crate::properties::run::<Cart>(&commands, |before, after, _| {
            assert!(
                !matches!(before.status(), Some(CartStatus::Closed | CartStatus::Abandoned)),
                "closed and abandoned carts are terminal"
            );
            if before.status() == Some(CartStatus::CheckedOut) {
                assert_eq!(before.lines(), after.lines(), "a checked-out cart's lines are locked");
            }
            let currency = after.currency().unwrap();
            let lines = after.lines();
            assert!(lines.len() <= MAX_CART_LINES as usize);
            let mut expected = 0_i128;
            for (i, line) in lines.iter().enumerate() {
                assert!(!lines[..i].iter().any(|l| l.sku == line.sku), "one line per SKU");
                assert_eq!(line.unit_price.currency, currency, "one currency per cart");
                assert!(line.unit_price.is_positive());
                expected += i128::from(line.unit_price.minor) * i128::from(line.quantity.get());
            }
            let total = after.total().expect("an accepted cart has a total");
            assert_eq!(i128::from(total.minor), expected);
            assert_eq!(total.currency, currency);
        });
    }
}
