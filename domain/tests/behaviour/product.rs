use std::collections::BTreeMap;

use domain::{
    Aggregate, DomainError, PriceTarget, Product, ProductCommand, ProductEvent, ProductId,
    ProductStatus, SkuVariant, MAX_SKUS_PER_PRODUCT,
};

use crate::support::{currency, decide_one, eur, given, id, refusal, sku, usd};

fn pid() -> ProductId {
    id(1)
}

fn variant(code: &str) -> SkuVariant {
    SkuVariant {
        sku: sku(code),
        attributes: BTreeMap::from([("size".to_owned(), code.to_owned())]),
    }
}

fn create(skus: &[&str]) -> ProductCommand {
    ProductCommand::CreateProduct {
        product_id: pid(),
        title: "Trail runner".into(),
        description: "Light shoe\nfor rough paths".into(),
        brand: "Acme".into(),
        category: vec!["Shoes".into(), "Running".into()],
        skus: skus.iter().map(|s| variant(s)).collect(),
    }
}

fn price(target: PriceTarget, price: domain::Money) -> ProductCommand {
    ProductCommand::SetPrice {
        product_id: pid(),
        target,
        price,
    }
}

fn created() -> Product {
    given(&[create(&["TR-41", "TR-42"])])
}

fn published() -> Product {
    given(&[
        create(&["TR-41", "TR-42"]),
        price(PriceTarget::Product, eur(8_900)),
        ProductCommand::Publish { product_id: pid() },
    ])
}

#[test]
fn stream_id_is_product_dash_uuid() {
    assert_eq!(Product::CATEGORY, "product");
    assert_eq!(
        Product::stream_id(&pid()),
        "product-00000000-0000-0000-0000-000000000001"
    );
    assert_eq!(create(&["A"]).stream_id(), Product::stream_id(&pid()));
}

#[test]
fn creating_a_product_records_its_details_as_a_draft() {
    let product = created();
    assert_eq!(product.id(), Some(pid()));
    assert_eq!(product.status(), Some(ProductStatus::Draft));
    assert_eq!(product.title(), Some("Trail runner"));
    assert_eq!(product.brand(), Some("Acme"));
    assert_eq!(product.category(), ["Shoes", "Running"]);
    assert_eq!(product.skus().len(), 2);
    assert_eq!(product.skus()[1].attributes["size"], "TR-42");
}

#[test]
fn creating_a_product_twice_is_refused() {
    assert_eq!(
        refusal(&created(), &create(&["X"])),
        DomainError::AlreadyExists {
            aggregate: "product"
        }
    );
}

#[test]
fn a_product_needs_a_title_within_limits() {
    for title in ["", "   ", &"x".repeat(201)] {
        let mut command = create(&["A"]);
        if let ProductCommand::CreateProduct { title: t, .. } = &mut command {
            *t = title.to_owned();
        }
        assert!(matches!(
            refusal(&Product::default(), &command),
            DomainError::Invalid { field: "title", .. }
        ));
    }
}

#[test]
fn a_product_needs_a_brand_and_a_category() {
    let mut no_brand = create(&["A"]);
    let mut no_category = create(&["A"]);
    let mut too_deep = create(&["A"]);
    if let ProductCommand::CreateProduct { brand, .. } = &mut no_brand {
        brand.clear();
    }
    if let ProductCommand::CreateProduct { category, .. } = &mut no_category {
        category.clear();
    }
    if let ProductCommand::CreateProduct { category, .. } = &mut too_deep {
        *category = vec!["c".into(); 9];
    }
    let empty = Product::default();
    assert!(matches!(
        refusal(&empty, &no_brand),
        DomainError::Invalid { field: "brand", .. }
    ));
    assert!(matches!(
        refusal(&empty, &no_category),
        DomainError::Invalid {
            field: "category",
            ..
        }
    ));
    assert!(matches!(
        refusal(&empty, &too_deep),
        DomainError::LimitExceeded {
            limit: "category_depth",
            ..
        }
    ));
}

#[test]
fn a_product_needs_at_least_one_sku_and_at_most_the_limit() {
    assert!(matches!(
        refusal(&Product::default(), &create(&[])),
        DomainError::Invalid { field: "skus", .. }
    ));
    let codes: Vec<String> = (0..=MAX_SKUS_PER_PRODUCT)
        .map(|i| format!("S{i}"))
        .collect();
    let codes: Vec<&str> = codes.iter().map(String::as_str).collect();
    assert!(matches!(
        refusal(&Product::default(), &create(&codes)),
        DomainError::LimitExceeded {
            limit: "product_skus",
            ..
        }
    ));
}

#[test]
fn skus_must_be_unique_within_a_product() {
    assert_eq!(
        refusal(&Product::default(), &create(&["A", "B", "A"])),
        DomainError::DuplicateSku { sku: sku("A") }
    );
}

#[test]
fn a_sku_can_be_added_later_but_not_twice() {
    let product = created();
    let add = ProductCommand::AddSku {
        product_id: pid(),
        variant: variant("TR-43"),
    };
    assert_eq!(
        decide_one(&product, &add),
        ProductEvent::SkuAdded {
            sku: sku("TR-43"),
            attributes: variant("TR-43").attributes
        }
    );
    let product: Product = given(&[create(&["TR-41", "TR-42"]), add.clone()]);
    assert_eq!(product.skus().len(), 3);
    assert_eq!(
        refusal(&product, &add),
        DomainError::DuplicateSku { sku: sku("TR-43") }
    );
}

#[test]
fn attributes_are_bounded() {
    let mut attributes = BTreeMap::new();
    attributes.insert(String::new(), "x".to_owned());
    let add = ProductCommand::AddSku {
        product_id: pid(),
        variant: SkuVariant {
            sku: sku("N"),
            attributes,
        },
    };
    assert!(matches!(
        refusal(&created(), &add),
        DomainError::Invalid {
            field: "attribute_name",
            ..
        }
    ));
}

#[test]
fn a_price_must_be_positive() {
    for minor in [0, -100] {
        assert!(matches!(
            refusal(&created(), &price(PriceTarget::Product, eur(minor))),
            DomainError::Invalid { field: "price", .. }
        ));
    }
}

#[test]
fn a_price_for_a_sku_outside_the_product_is_refused() {
    assert_eq!(
        refusal(&created(), &price(PriceTarget::Sku(sku("OTHER")), eur(100))),
        DomainError::UnknownSku { sku: sku("OTHER") }
    );
}

#[test]
fn a_sku_price_overrides_the_product_price_in_its_currency() {
    let product: Product = given(&[
        create(&["TR-41", "TR-42"]),
        price(PriceTarget::Product, eur(8_900)),
        price(PriceTarget::Sku(sku("TR-42")), eur(9_500)),
        price(PriceTarget::Sku(sku("TR-42")), usd(9_900)),
    ]);
    let eur_code = currency("EUR");
    assert_eq!(product.price_for(&sku("TR-41"), eur_code), Some(eur(8_900)));
    assert_eq!(product.price_for(&sku("TR-42"), eur_code), Some(eur(9_500)));
    assert_eq!(
        product.price_for(&sku("TR-42"), currency("USD")),
        Some(usd(9_900))
    );
    assert_eq!(product.price_for(&sku("TR-41"), currency("USD")), None);
    assert_eq!(product.price_for(&sku("NOPE"), eur_code), None);
}

#[test]
fn setting_a_price_again_replaces_it() {
    let product: Product = given(&[
        create(&["A"]),
        price(PriceTarget::Product, eur(100)),
        price(PriceTarget::Product, eur(120)),
    ]);
    assert_eq!(
        product.price_for(&sku("A"), currency("EUR")),
        Some(eur(120))
    );
}

#[test]
fn publishing_needs_a_price_for_every_sku() {
    let partly_priced: Product = given(&[
        create(&["A", "B"]),
        price(PriceTarget::Sku(sku("A")), eur(100)),
    ]);
    assert_eq!(
        refusal(
            &partly_priced,
            &ProductCommand::Publish { product_id: pid() }
        ),
        DomainError::MissingPrice { sku: sku("B") }
    );
}

#[test]
fn a_published_product_can_be_unpublished_and_published_again() {
    let product = published();
    assert!(product.is_sellable());
    let product: Product = given(&[
        create(&["A"]),
        price(PriceTarget::Product, eur(1)),
        ProductCommand::Publish { product_id: pid() },
        ProductCommand::Unpublish { product_id: pid() },
    ]);
    assert_eq!(product.status(), Some(ProductStatus::Unpublished));
    assert!(!product.is_sellable());
    assert_eq!(
        decide_one(&product, &ProductCommand::Publish { product_id: pid() }),
        ProductEvent::ProductPublished {}
    );
}

#[test]
fn publishing_twice_or_unpublishing_a_draft_is_an_invalid_transition() {
    assert_eq!(
        refusal(&published(), &ProductCommand::Publish { product_id: pid() }),
        DomainError::InvalidTransition {
            from: "published",
            command: "Publish"
        }
    );
    assert_eq!(
        refusal(&created(), &ProductCommand::Unpublish { product_id: pid() }),
        DomainError::InvalidTransition {
            from: "draft",
            command: "Unpublish"
        }
    );
}

#[test]
fn a_discontinued_product_takes_no_further_changes() {
    let product: Product = given(&[
        create(&["A"]),
        ProductCommand::Discontinue { product_id: pid() },
    ]);
    assert_eq!(product.status(), Some(ProductStatus::Discontinued));
    let commands = [
        ProductCommand::AddSku {
            product_id: pid(),
            variant: variant("B"),
        },
        price(PriceTarget::Product, eur(100)),
        ProductCommand::Publish { product_id: pid() },
        ProductCommand::Unpublish { product_id: pid() },
        ProductCommand::Discontinue { product_id: pid() },
    ];
    for command in commands {
        assert_eq!(
            refusal(&product, &command),
            DomainError::InvalidTransition {
                from: "discontinued",
                command: command.name()
            }
        );
    }
}

#[test]
fn commands_before_creation_find_no_product() {
    assert_eq!(
        refusal(
            &Product::default(),
            &ProductCommand::Publish { product_id: pid() }
        ),
        DomainError::NotFound {
            aggregate: "product"
        }
    );
}

#[test]
fn a_command_for_another_product_is_a_routing_error() {
    let error = refusal(&created(), &ProductCommand::Publish { product_id: id(2) });
    assert_eq!(error.code(), "wrong-stream");
}
