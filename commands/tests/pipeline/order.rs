use commands::{CartAction, PlaceOrder};
use domain::{
    CartId, CartOwner, CustomerId, DomainError, Order, OrderCommand, OrderId, OrderStatus,
    PaymentId,
};
use uuid::Uuid;

use crate::support::{
    address, at, ctx, currency, eur, on_both_stores, qty, rejection, sku, Backend, Env,
};

on_both_stores!(
    an_order_placed_from_a_checked_out_cart_goes_all_the_way_to_delivery,
    an_illegal_order_transition_is_a_typed_refusal,
    an_open_cart_cannot_be_ordered,
    an_order_is_not_placed_from_a_cart_another_process_reopened,
);

/// A customer's cart with two hats at 25.00 EUR, checked out when `check_out`.
async fn cart_with_hats(env: &Env, check_out: bool) -> (CartId, CustomerId) {
    let product_id = env.published_product(&["HAT"], eur(2_500)).await;
    let customer_id: CustomerId = Uuid::now_v7().into();
    let cart_id: CartId = Uuid::now_v7().into();
    let mut actions = vec![
        CartAction::Create {
            cart_id,
            owner: CartOwner::Customer(customer_id),
            currency: currency("EUR"),
        },
        CartAction::AddItem {
            cart_id,
            product_id,
            sku: sku("HAT"),
            quantity: qty(2),
        },
    ];
    if check_out {
        actions.push(CartAction::CheckOut { cart_id });
    }
    for action in actions {
        env.commands.cart(action, &ctx()).await.unwrap();
    }
    (cart_id, customer_id)
}

async fn place(env: &Env, cart_id: CartId) -> Result<OrderId, commands::CommandError> {
    place_as(env, cart_id, Uuid::now_v7().into()).await
}

async fn place_as(
    env: &Env,
    cart_id: CartId,
    order_id: OrderId,
) -> Result<OrderId, commands::CommandError> {
    env.commands
        .place_order(
            PlaceOrder {
                order_id,
                cart_id,
                shipping_address: address(),
                placed_at: at(0),
            },
            &ctx(),
        )
        .await
        .map(|_| order_id)
}

async fn an_order_placed_from_a_checked_out_cart_goes_all_the_way_to_delivery(backend: Backend) {
    let env = backend.env().await;
    let (cart_id, customer_id) = cart_with_hats(&env, true).await;
    let order_id = place(&env, cart_id).await.unwrap();
    let orders = env.commands.orders();
    let steps = [
        OrderCommand::MarkStockReserved {
            order_id,
            reservations: vec![Uuid::now_v7().into()],
            at: at(1),
        },
        OrderCommand::MarkPaymentAuthorized {
            order_id,
            payment_id: PaymentId::from(Uuid::now_v7()),
            amount: eur(5_000),
            at: at(2),
        },
        OrderCommand::Confirm {
            order_id,
            at: at(3),
        },
        OrderCommand::Ship {
            order_id,
            tracking_number: Some("TRACK-1".into()),
            at: at(4),
        },
        OrderCommand::MarkDelivered {
            order_id,
            at: at(5),
        },
    ];
    let mut statuses = Vec::new();
    for step in steps {
        orders.execute(step, &ctx()).await.unwrap();
        let loaded = orders.load(&Order::stream_id(&order_id)).await.unwrap();
        statuses.push(
            loaded
                .state
                .status()
                .map(OrderStatus::as_str)
                .unwrap_or("none"),
        );
    }

    assert_eq!(
        statuses,
        [
            "stock_reserved",
            "payment_authorized",
            "confirmed",
            "shipped",
            "delivered"
        ]
    );
    let order: Order = env.replay(&Order::stream_id(&order_id)).await;
    assert_eq!(order.customer_id(), Some(customer_id));
    assert_eq!(order.cart_id(), Some(cart_id));
    assert_eq!(order.total(), Some(eur(5_000)));
    assert_eq!(order.lines().len(), 1);
    assert_eq!(order.lines()[0].unit_price, eur(2_500));
    assert_eq!(order.lines()[0].quantity, qty(2));
    assert_eq!(order.tracking_number(), Some("TRACK-1"));
    assert_eq!(env.event_types(&Order::stream_id(&order_id)).await.len(), 6);
}

async fn an_illegal_order_transition_is_a_typed_refusal(backend: Backend) {
    let env = backend.env().await;
    let (cart_id, _) = cart_with_hats(&env, true).await;
    let order_id = place(&env, cart_id).await.unwrap();

    let early = env
        .commands
        .orders()
        .execute(
            OrderCommand::Confirm {
                order_id,
                at: at(1),
            },
            &ctx(),
        )
        .await;

    assert_eq!(
        rejection(early),
        DomainError::InvalidTransition {
            from: "placed",
            command: "Confirm"
        }
    );
    let orders = env.commands.orders();
    orders
        .execute(
            OrderCommand::MarkStockReserved {
                order_id,
                reservations: vec![Uuid::now_v7().into()],
                at: at(1),
            },
            &ctx(),
        )
        .await
        .unwrap();
    let wrong_amount = orders
        .execute(
            OrderCommand::MarkPaymentAuthorized {
                order_id,
                payment_id: Uuid::now_v7().into(),
                amount: eur(1),
                at: at(2),
            },
            &ctx(),
        )
        .await;
    assert_eq!(
        rejection(wrong_amount),
        DomainError::AmountMismatch {
            expected: eur(5_000),
            actual: eur(1)
        }
    );
    assert_eq!(
        env.event_types(&Order::stream_id(&order_id)).await,
        ["OrderPlaced", "OrderStockReserved"]
    );
}

async fn an_open_cart_cannot_be_ordered(backend: Backend) {
    let env = backend.env().await;
    let (cart_id, _) = cart_with_hats(&env, false).await;

    let refused = place(&env, cart_id).await;

    assert_eq!(
        rejection(refused),
        DomainError::InvalidTransition {
            from: "open",
            command: "PlaceOrder"
        }
    );
}

/// This process holds the cart checked out; another reopens it. The order, decided
/// on the held cart, names it as a precondition, so nothing is written: the cart is
/// read again and the order refused.
async fn an_order_is_not_placed_from_a_cart_another_process_reopened(backend: Backend) {
    let env = backend.env().await;
    let (cart_id, _) = cart_with_hats(&env, true).await;
    env.another_process()
        .cart(CartAction::Reopen { cart_id }, &ctx())
        .await
        .unwrap();
    let order_id: OrderId = Uuid::now_v7().into();
    let placed = place_as(&env, cart_id, order_id).await;
    assert!(
        matches!(
            rejection(placed),
            DomainError::InvalidTransition { from: "open", .. }
        ),
        "refused on the reopened cart"
    );
    assert!(env.stream(&Order::stream_id(&order_id)).await.is_empty());
}
