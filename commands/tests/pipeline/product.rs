use domain::{DomainError, PriceTarget, Product, ProductCommand, ProductStatus};
use uuid::Uuid;

use crate::support::{create_product, ctx, eur, on_both_stores, sku, usd, Backend};

on_both_stores!(
    creating_pricing_and_publishing_a_product_writes_each_step_in_order,
    publishing_a_product_without_any_price_is_refused_and_writes_nothing,
    creating_a_product_twice_is_refused,
);

async fn creating_pricing_and_publishing_a_product_writes_each_step_in_order(backend: Backend) {
    let env = backend.env().await;
    let products = env.commands.products();
    let product_id = Uuid::now_v7().into();
    let stream = Product::stream_id(&product_id);

    let created = products
        .execute(create_product(product_id, &["SHOE-42", "SHOE-43"]), &ctx())
        .await
        .unwrap();
    assert_eq!(created.stream_id, stream);
    assert_eq!(created.stream_version, 1);
    let priced = products
        .execute(
            ProductCommand::SetPrice {
                product_id,
                target: PriceTarget::Product,
                price: eur(8_999),
            },
            &ctx(),
        )
        .await
        .unwrap();
    let sku_priced = products
        .execute(
            ProductCommand::SetPrice {
                product_id,
                target: PriceTarget::Sku(sku("SHOE-43")),
                price: usd(10_999),
            },
            &ctx(),
        )
        .await
        .unwrap();
    let published = products
        .execute(ProductCommand::Publish { product_id }, &ctx())
        .await
        .unwrap();

    assert_eq!(
        [
            priced.stream_version,
            sku_priced.stream_version,
            published.stream_version
        ],
        [2, 3, 4]
    );
    let first = created.positions.unwrap().first;
    assert!(published.positions.unwrap().last > first);
    assert_eq!(
        env.event_types(&stream).await,
        ["ProductCreated", "PriceSet", "PriceSet", "ProductPublished"]
    );
    let product: Product = env.replay(&stream).await;
    assert_eq!(product.status(), Some(ProductStatus::Published));
    assert_eq!(
        product.price_for(&sku("SHOE-42"), eur(0).currency),
        Some(eur(8_999))
    );
    assert_eq!(
        product.price_for(&sku("SHOE-43"), usd(0).currency),
        Some(usd(10_999))
    );
    assert_eq!(products.load(&stream).await.unwrap().state, product);
}

async fn publishing_a_product_without_any_price_is_refused_and_writes_nothing(backend: Backend) {
    let env = backend.env().await;
    let products = env.commands.products();
    let product_id = Uuid::now_v7().into();
    products
        .execute(create_product(product_id, &["HAT-1"]), &ctx())
        .await
        .unwrap();

    let refused = products
        .execute(ProductCommand::Publish { product_id }, &ctx())
        .await;

    assert_eq!(
        crate::support::rejection(refused),
        DomainError::MissingPrice { sku: sku("HAT-1") }
    );
    let stream = Product::stream_id(&product_id);
    assert_eq!(env.event_types(&stream).await, ["ProductCreated"]);
    assert_eq!(products.load(&stream).await.unwrap().version, 1);
}

async fn creating_a_product_twice_is_refused(backend: Backend) {
    let env = backend.env().await;
    let products = env.commands.products();
    let product_id = Uuid::now_v7().into();
    products
        .execute(create_product(product_id, &["CAP-1"]), &ctx())
        .await
        .unwrap();

    let again = products
        .execute(create_product(product_id, &["CAP-2"]), &ctx())
        .await;

    assert_eq!(
        crate::support::rejection(again),
        DomainError::AlreadyExists {
            aggregate: "product"
        }
    );
}
