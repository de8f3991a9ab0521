use commands::{CartAction, CartFacts, CommandError, Committed};
use domain::{
    Cart, CartEvent, CartId, CartOwner, CartStatus, DomainError, LineItem, PriceTarget,
    ProductCommand, ProductStatus,
};
use uuid::Uuid;

use crate::support::{
    create_product, ctx, currency, eur, on_both_stores, qty, rejection, sku, usd, Backend, Env,
};

on_both_stores!(
    adding_an_item_takes_the_catalog_price_in_the_cart_currency,
    an_item_of_an_unpublished_product_is_refused,
    an_item_without_a_price_in_the_cart_currency_is_refused,
    a_sku_that_is_not_part_of_the_product_is_refused,
    merging_a_guest_cart_keeps_the_larger_quantity_and_abandons_the_guest_cart,
    checking_out_locks_the_cart_with_its_total,
    a_price_or_status_changed_by_another_process_is_read_before_the_line_is_added,
    a_carts_owner_and_currency_are_known_to_every_process_and_to_no_unknown_cart,
);

async fn open_cart(env: &Env, owner: CartOwner, code: &str) -> CartId {
    let cart_id: CartId = Uuid::now_v7().into();
    env.commands
        .cart(
            CartAction::Create {
                cart_id,
                owner,
                currency: currency(code),
            },
            &ctx(),
        )
        .await
        .unwrap();
    cart_id
}

fn customer() -> CartOwner {
    CartOwner::Customer(Uuid::now_v7().into())
}

fn guest() -> CartOwner {
    CartOwner::Guest(Uuid::now_v7().into())
}

async fn try_add(
    env: &Env,
    cart_id: CartId,
    product_id: domain::ProductId,
    code: &str,
    n: u32,
) -> Result<Committed<CartEvent>, CommandError> {
    env.commands
        .cart(
            CartAction::AddItem {
                cart_id,
                product_id,
                sku: sku(code),
                quantity: qty(n),
            },
            &ctx(),
        )
        .await
}

async fn add(env: &Env, cart_id: CartId, product_id: domain::ProductId, code: &str, n: u32) {
    try_add(env, cart_id, product_id, code, n).await.unwrap();
}

async fn adding_an_item_takes_the_catalog_price_in_the_cart_currency(backend: Backend) {
    let env = backend.env().await;
    let product_id = env
        .published_product(&["SOCK-S", "SOCK-L"], eur(1_299))
        .await;
    let products = env.commands.products();
    for (target, price) in [
        (PriceTarget::Sku(sku("SOCK-L")), eur(1_499)),
        (PriceTarget::Product, usd(1_399)),
    ] {
        products
            .execute(
                ProductCommand::SetPrice {
                    product_id,
                    target,
                    price,
                },
                &ctx(),
            )
            .await
            .unwrap();
    }
    let euro_cart = open_cart(&env, customer(), "EUR").await;
    let dollar_cart = open_cart(&env, customer(), "USD").await;

    let added = try_add(&env, euro_cart, product_id, "SOCK-S", 2)
        .await
        .unwrap();
    add(&env, euro_cart, product_id, "SOCK-L", 1).await;
    add(&env, dollar_cart, product_id, "SOCK-L", 1).await;

    assert_eq!(
        added.events,
        [CartEvent::CartLineAdded {
            sku: sku("SOCK-S"),
            quantity: qty(2),
            unit_price: eur(1_299),
        }]
    );
    let cart: Cart = env.replay(&Cart::stream_id(&euro_cart)).await;
    let prices: Vec<_> = cart.lines().iter().map(|l| l.unit_price).collect();
    assert_eq!(prices, [eur(1_299), eur(1_499)]);
    assert_eq!(cart.total().unwrap(), eur(2 * 1_299 + 1_499));
    let dollars: Cart = env.replay(&Cart::stream_id(&dollar_cart)).await;
    assert_eq!(dollars.lines()[0].unit_price, usd(1_399));
}

async fn an_item_of_an_unpublished_product_is_refused(backend: Backend) {
    let env = backend.env().await;
    let product_id = env.published_product(&["BAG-1"], eur(4_999)).await;
    env.commands
        .products()
        .execute(ProductCommand::Unpublish { product_id }, &ctx())
        .await
        .unwrap();
    let draft_id = Uuid::now_v7().into();
    env.commands
        .products()
        .execute(create_product(draft_id, &["BAG-2"]), &ctx())
        .await
        .unwrap();
    let cart_id = open_cart(&env, customer(), "EUR").await;

    for (product_id, code, status) in [
        (product_id, "BAG-1", ProductStatus::Unpublished),
        (draft_id, "BAG-2", ProductStatus::Draft),
    ] {
        let refused = try_add(&env, cart_id, product_id, code, 1).await;
        assert_eq!(
            refused,
            Err(CommandError::ProductNotSellable {
                product_id,
                status: status.as_str()
            })
        );
    }
    assert_eq!(
        env.event_types(&Cart::stream_id(&cart_id)).await,
        ["CartCreated"]
    );
}

async fn an_item_without_a_price_in_the_cart_currency_is_refused(backend: Backend) {
    let env = backend.env().await;
    let product_id = env.published_product(&["BELT"], eur(2_500)).await;
    let cart_id = open_cart(&env, customer(), "GBP").await;

    let refused = try_add(&env, cart_id, product_id, "BELT", 1).await;

    assert_eq!(
        refused,
        Err(CommandError::PriceMissing {
            sku: sku("BELT"),
            currency: currency("GBP")
        })
    );
}

async fn a_sku_that_is_not_part_of_the_product_is_refused(backend: Backend) {
    let env = backend.env().await;
    let product_id = env.published_product(&["SCARF"], eur(1_900)).await;
    let cart_id = open_cart(&env, customer(), "EUR").await;

    let refused = try_add(&env, cart_id, product_id, "GLOVE", 1).await;

    assert_eq!(
        rejection(refused),
        DomainError::UnknownSku { sku: sku("GLOVE") }
    );
}

async fn merging_a_guest_cart_keeps_the_larger_quantity_and_abandons_the_guest_cart(
    backend: Backend,
) {
    let env = backend.env().await;
    let product_id = env
        .published_product(&["CAP-RED", "CAP-BLUE", "CAP-GREEN"], eur(1_000))
        .await;
    let customer_cart = open_cart(&env, customer(), "EUR").await;
    let guest_cart = open_cart(&env, guest(), "EUR").await;
    add(&env, customer_cart, product_id, "CAP-RED", 3).await;
    add(&env, customer_cart, product_id, "CAP-BLUE", 1).await;
    add(&env, guest_cart, product_id, "CAP-RED", 1).await;
    add(&env, guest_cart, product_id, "CAP-BLUE", 4).await;
    add(&env, guest_cart, product_id, "CAP-GREEN", 2).await;

    let merged = env
        .commands
        .cart(
            CartAction::MergeGuestCart {
                cart_id: customer_cart,
                guest_cart_id: guest_cart,
            },
            &ctx(),
        )
        .await
        .unwrap();

    assert_eq!(merged.events.len(), 1);
    let cart: Cart = env.replay(&Cart::stream_id(&customer_cart)).await;
    let lines: Vec<(String, u32)> = cart
        .lines()
        .iter()
        .map(|l: &LineItem| (l.sku.to_string(), l.quantity.get()))
        .collect();
    assert_eq!(
        lines,
        [
            ("CAP-RED".to_owned(), 3),
            ("CAP-BLUE".to_owned(), 4),
            ("CAP-GREEN".to_owned(), 2)
        ]
    );
    let abandoned: Cart = env.replay(&Cart::stream_id(&guest_cart)).await;
    assert_eq!(abandoned.status(), Some(CartStatus::Abandoned));
    let again = env
        .commands
        .cart(
            CartAction::MergeGuestCart {
                cart_id: customer_cart,
                guest_cart_id: guest_cart,
            },
            &ctx(),
        )
        .await;
    assert_eq!(
        rejection(again),
        DomainError::CartLocked {
            status: "abandoned"
        }
    );
}

async fn checking_out_locks_the_cart_with_its_total(backend: Backend) {
    let env = backend.env().await;
    let product_id = env.published_product(&["LAMP"], eur(3_450)).await;
    let cart_id = open_cart(&env, customer(), "EUR").await;
    add(&env, cart_id, product_id, "LAMP", 2).await;

    let checked_out = env
        .commands
        .cart(CartAction::CheckOut { cart_id }, &ctx())
        .await
        .unwrap();

    assert_eq!(
        checked_out.events,
        [CartEvent::CartCheckedOut { total: eur(6_900) }]
    );
    let locked = try_add(&env, cart_id, product_id, "LAMP", 1).await;
    assert_eq!(
        rejection(locked),
        DomainError::CartLocked {
            status: "checked_out"
        }
    );
    let cart = env.commands.load_cart(cart_id).await.unwrap();
    assert_eq!(cart.version, 3);
    assert_eq!(cart.state.status(), Some(CartStatus::CheckedOut));
}

/// This process prices lines from the product it holds in memory, without asking the
/// log whether that copy is current; another process changing the product meanwhile
/// must still be seen: a changed price is caught by the append's precondition (the
/// line is priced again), and a refusal is only given on a product read from the log.
async fn a_price_or_status_changed_by_another_process_is_read_before_the_line_is_added(
    backend: Backend,
) {
    let env = backend.env().await;
    let product_id = env.published_product(&["HAT-1"], eur(2_000)).await;
    let cart_id = open_cart(&env, customer(), "EUR").await;
    // This process now holds the product at 20.00.
    add(&env, cart_id, product_id, "HAT-1", 1).await;

    let other = env.another_process();
    other
        .products()
        .execute(
            ProductCommand::SetPrice {
                product_id,
                target: PriceTarget::Product,
                price: eur(2_500),
            },
            &ctx(),
        )
        .await
        .unwrap();
    let second_cart = open_cart(&env, customer(), "EUR").await;
    let added = try_add(&env, second_cart, product_id, "HAT-1", 1)
        .await
        .unwrap();
    assert_eq!(
        added.events,
        [CartEvent::CartLineAdded {
            sku: sku("HAT-1"),
            quantity: qty(1),
            unit_price: eur(2_500),
        }],
        "the price set by the other process"
    );
    let cart: Cart = env.replay(&Cart::stream_id(&second_cart)).await;
    assert_eq!(cart.lines()[0].unit_price, eur(2_500));

    // Unpublished elsewhere, then published again elsewhere: this process still
    // holds it unpublished after the first refusal, and must not keep refusing.
    other
        .products()
        .execute(ProductCommand::Unpublish { product_id }, &ctx())
        .await
        .unwrap();
    let refused = try_add(&env, cart_id, product_id, "HAT-1", 1).await;
    assert_eq!(
        refused,
        Err(CommandError::ProductNotSellable {
            product_id,
            status: ProductStatus::Unpublished.as_str()
        })
    );
    other
        .products()
        .execute(ProductCommand::Publish { product_id }, &ctx())
        .await
        .unwrap();
    add(&env, cart_id, product_id, "HAT-1", 2).await;
    let cart: Cart = env.replay(&Cart::stream_id(&cart_id)).await;
    // One line for the SKU, at the price of the latest add.
    assert_eq!(cart.lines()[0].quantity, qty(3));
    assert_eq!(cart.lines()[0].unit_price, eur(2_500));
}

/// The owner and currency of a cart are remembered by the process that created it,
/// read from the log by another, and a cart that does not exist has none (nothing is
/// remembered for it: once created elsewhere, it is found).
async fn a_carts_owner_and_currency_are_known_to_every_process_and_to_no_unknown_cart(
    backend: Backend,
) {
    let env = backend.env().await;
    let owner = customer();
    let cart_id = open_cart(&env, owner, "USD").await;
    let facts = Some(CartFacts {
        owner,
        currency: currency("USD"),
    });
    assert_eq!(env.commands.cart_facts(cart_id).await.unwrap(), facts);
    let other = env.another_process();
    assert_eq!(other.cart_facts(cart_id).await.unwrap(), facts);

    // A line added through the other process is priced in the cart's currency.
    let product_id = env.published_product(&["CAP-1"], usd(1_500)).await;
    let added = other
        .cart(
            CartAction::AddItem {
                cart_id,
                product_id,
                sku: sku("CAP-1"),
                quantity: qty(2),
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(
        added.events,
        [CartEvent::CartLineAdded {
            sku: sku("CAP-1"),
            quantity: qty(2),
            unit_price: usd(1_500),
        }]
    );

    // A create repeated with its command id but other facts is answered with the
    // first outcome, and the facts stay the first ones.
    let first = ctx();
    let repeated_id: CartId = Uuid::now_v7().into();
    let create = |owner, code| CartAction::Create {
        cart_id: repeated_id,
        owner,
        currency: currency(code),
    };
    env.commands
        .cart(create(owner, "USD"), &first)
        .await
        .unwrap();
    let repeat = env
        .commands
        .cart(create(guest(), "EUR"), &first)
        .await
        .unwrap();
    assert!(repeat.replayed);
    assert_eq!(env.commands.cart_facts(repeated_id).await.unwrap(), facts);

    let unknown: CartId = Uuid::now_v7().into();
    assert_eq!(other.cart_facts(unknown).await.unwrap(), None);
    let guest_owner = guest();
    env.commands
        .cart(
            CartAction::Create {
                cart_id: unknown,
                owner: guest_owner,
                currency: currency("EUR"),
            },
            &ctx(),
        )
        .await
        .unwrap();
    assert_eq!(
        other.cart_facts(unknown).await.unwrap(),
        Some(CartFacts {
            owner: guest_owner,
            currency: currency("EUR"),
        })
    );
}
