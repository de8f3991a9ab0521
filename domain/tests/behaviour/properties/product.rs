use std::collections::BTreeMap;

use domain::{
    Currency, Money, PriceTarget, Product, ProductCommand, ProductEvent, ProductId, ProductStatus,
    SkuVariant,
};
use proptest::prelude::*;

use crate::support::{id, sku};

/// Mostly product 1, sometimes 2: commands for the wrong stream must be refused.
fn product_id() -> impl Strategy<Value = ProductId> + Clone {
    prop::sample::select(vec![1_u128, 1, 1, 1, 1, 1, 1, 1, 1, 2]).prop_map(id::<ProductId>)
}

fn variant() -> impl Strategy<Value = SkuVariant> + Clone {
    prop::sample::select(vec!["A", "B", "C"]).prop_map(|c| SkuVariant {
        sku: sku(c),
        attributes: BTreeMap::new(),
    })
}

fn create(
    skus: std::ops::Range<usize>,
    titles: Vec<&'static str>,
) -> impl Strategy<Value = ProductCommand> {
    (
        product_id(),
        prop::collection::vec(variant(), skus),
        prop::sample::select(titles),
    )
        .prop_map(|(product_id, skus, title)| ProductCommand::CreateProduct {
            product_id,
            title: title.into(),
            description: String::new(),
            brand: "Acme".into(),
            category: vec!["Shoes".into()],
            skus,
        })
}

fn command() -> impl Strategy<Value = ProductCommand> {
    let product = product_id();
    let code = prop::sample::select(vec!["A", "B", "C"]);
    let price = (
        prop::sample::select(vec!["EUR", "USD"]),
        prop::sample::select(vec![-5_i64, 0, 100, 2_500]),
    )
        .prop_map(|(c, minor)| Money::new(minor, Currency::parse(c).unwrap()));
    let target = prop_oneof![
        Just(PriceTarget::Product),
        code.prop_map(|c| PriceTarget::Sku(sku(c)))
    ];
    prop_oneof![
        1 => create(0..4, vec!["Shoe", " "]),
        2 => (product.clone(), variant()).prop_map(|(product_id, variant)| ProductCommand::AddSku { product_id, variant }),
        4 => (product.clone(), target, price).prop_map(|(product_id, target, price)| ProductCommand::SetPrice { product_id, target, price }),
        3 => product.clone().prop_map(|product_id| ProductCommand::Publish { product_id }),
        2 => product.clone().prop_map(|product_id| ProductCommand::Unpublish { product_id }),
        1 => product.prop_map(|product_id| ProductCommand::Discontinue { product_id }),
    ]
}

proptest! {
    #[test]
    fn products_keep_unique_skus_positive_prices_and_end_when_discontinued(
        commands in crate::properties::history(create(1..4, vec!["Shoe"]), command(), 40)
    ) {
        crate::properties::run::<Product>(&commands, |before, after, events| {
            assert_ne!(before.status(), Some(ProductStatus::Discontinued), "discontinued is terminal");
            if before.id().is_some() {
                assert_eq!(after.id(), before.id(), "a command for another product is refused");
            }
            let skus = after.skus();
            for (i, s) in skus.iter().enumerate() {
                assert!(!skus[..i].iter().any(|t| t.sku == s.sku), "SKUs are unique");
                assert!(s.prices.values().all(Money::is_positive));
            }
            assert!(after.product_prices().unwrap().values().all(Money::is_positive));
            if events.contains(&ProductEvent::ProductPublished {}) {
                for s in skus {
                    let priced = !s.prices.is_empty() || !after.product_prices().unwrap().is_empty();
                    assert!(priced, "published with an unpriced SKU");
                }
            }
        });
    }
}
