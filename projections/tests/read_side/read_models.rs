//! Each read model's rows after a known history. The runner uses batches of two
//! events, so every history is folded across several batches (rows loaded, cached
//! and written back many times).

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use domain::{
    AddressInput, Allocation, CartEvent, CartId, CartOwner, Currency, CustomerId, GuestToken,
    InventoryEvent, LineItem, Money, OrderEvent, OrderId, PaymentId, ProductEvent, ProductId,
    Quantity, ReservationId, ShippingAddress, Sku, SkuVariant, WarehouseId,
};
use projections::{carts, catalog, inventory, orders, sales, PageRequest};
use uuid::Uuid;

use crate::support::{quick_runner, TestDb, TestResult};

fn sku(s: &str) -> Sku {
    Sku::parse(s).unwrap()
}
fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap())
}
fn usd(minor: i64) -> Money {
    Money::new(minor, Currency::parse("USD").unwrap())
}
fn qty(n: u32) -> Quantity {
    Quantity::new(n).unwrap()
}
fn wh(s: &str) -> WarehouseId {
    WarehouseId::parse(s).unwrap()
}
fn at(day: u32, hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 5, day, hour, 0, 0).unwrap()
}
fn alloc(warehouse: &str, n: u32) -> Allocation {
    Allocation {
        warehouse: wh(warehouse),
        quantity: qty(n),
    }
}
fn line(s: &str, n: u32, price: Money) -> LineItem {
    LineItem {
        sku: sku(s),
        quantity: qty(n),
        unit_price: price,
    }
}
fn address() -> Box<ShippingAddress> {
    Box::new(
        ShippingAddress::parse(AddressInput {
            name: "Ada Lovelace".into(),
            line1: "1 Analytical Way".into(),
            line2: None,
            city: "London".into(),
            postal_code: "N1 9GU".into(),
            country: "GB".into(),
            email: None,
            phone: None,
        })
        .unwrap(),
    )
}

#[tokio::test]
async fn catalog_holds_products_skus_effective_prices_and_stock() -> TestResult {
    let t = TestDb::new().await?;
    let id = ProductId::from_uuid(Uuid::from_u128(1));
    let stream = format!("product-{id}");
    t.append(
        &stream,
        &[
            ProductEvent::ProductCreated {
                product_id: id,
                title: "Trail runner".into(),
                description: "A shoe".into(),
                brand: "Acme".into(),
                category: vec!["Shoes".into(), "Running".into()],
                skus: vec![
                    SkuVariant {
                        sku: sku("TR-42"),
                        attributes: BTreeMap::from([("size".into(), "42".into())]),
                    },
                    SkuVariant {
                        sku: sku("TR-43"),
                        attributes: BTreeMap::new(),
                    },
                ],
            },
            ProductEvent::PriceSet {
                sku: None,
                price: eur(10_000),
            },
            ProductEvent::PriceSet {
                sku: Some(sku("TR-42")),
                price: eur(9_000),
            },
            ProductEvent::PriceSet {
                sku: None,
                price: usd(12_000),
            },
            ProductEvent::ProductPublished {},
        ],
    )
    .await?;
    t.append(
        "inventory-TR-42",
        &[
            InventoryEvent::StockReceived {
                warehouse: wh("A"),
                quantity: qty(10),
            },
            InventoryEvent::StockReceived {
                warehouse: wh("B"),
                quantity: qty(5),
            },
            InventoryEvent::StockReserved {
                reservation_id: ReservationId::from_uuid(Uuid::from_u128(9)),
                order_id: OrderId::from_uuid(Uuid::from_u128(8)),
                quantity: qty(4),
                expires_at: at(1, 12),
                allocations: vec![alloc("A", 4)],
            },
        ],
    )
    .await?;
    // Added after the stock arrived: its price follows the product-wide ones.
    t.append(
        &stream,
        &[
            ProductEvent::SkuAdded {
                sku: sku("TR-44"),
                attributes: BTreeMap::new(),
            },
            ProductEvent::PriceSet {
                sku: None,
                price: eur(11_000),
            },
        ],
    )
    .await?;
    t.project(quick_runner(2)).await?;

    let client = t.client().await?;
    let product = catalog::get(&client, *id.as_uuid())
        .await?
        .expect("the product");
    assert_eq!(product.title, "Trail runner");
    assert_eq!(product.status, "published");
    assert_eq!(product.category, vec!["Shoes", "Running"]);
    assert_eq!(
        product.base_prices,
        BTreeMap::from([("EUR".into(), 11_000), ("USD".into(), 12_000)])
    );
    let skus: Vec<(&str, i64, i64, i64)> = product
        .skus
        .iter()
        .map(|s| (s.sku.as_str(), s.on_hand, s.reserved, s.available))
        .collect();
    assert_eq!(
        skus,
        vec![("TR-42", 15, 4, 11), ("TR-43", 0, 0, 0), ("TR-44", 0, 0, 0)]
    );
    let prices = |n: usize| -> Vec<(String, i64, bool)> {
        product.skus[n]
            .prices
            .iter()
            .map(|p| (p.currency.clone(), p.price_minor, p.own))
            .collect()
    };
    assert_eq!(
        prices(0),
        vec![("EUR".into(), 9_000, true), ("USD".into(), 12_000, false)]
    );
    assert_eq!(
        prices(2),
        vec![("EUR".into(), 11_000, false), ("USD".into(), 12_000, false)]
    );
    assert_eq!(product.skus[0].attributes["size"], "42");

    let listed = catalog::list(
        &client,
        &catalog::CatalogFilter {
            category: Some("Running".into()),
            in_stock: true,
            ..Default::default()
        },
        catalog::CatalogSort::Title,
        PageRequest::default(),
    )
    .await?;
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].available, 11);
    assert_eq!(listed.items[0].sku_count, 3);
    assert_eq!(
        listed.items[0].price_from,
        BTreeMap::from([("EUR".into(), 9_000), ("USD".into(), 12_000)])
    );
    Ok(())
}

#[tokio::test]
async fn inventory_levels_follow_receipts_reservations_and_their_ends() -> TestResult {
    let t = TestDb::new().await?;
    let order = OrderId::from_uuid(Uuid::from_u128(1));
    let r = |n: u128| ReservationId::from_uuid(Uuid::from_u128(n));
    t.append(
        "inventory-MUG-1",
        &[
            InventoryEvent::StockReceived {
                warehouse: wh("north"),
                quantity: qty(10),
            },
            InventoryEvent::StockReceived {
                warehouse: wh("south"),
                quantity: qty(6),
            },
            InventoryEvent::WarehousePrioritySet {
                warehouse: wh("south"),
                priority: 1,
            },
            InventoryEvent::StockReserved {
                reservation_id: r(1),
                order_id: order,
                quantity: qty(8),
                expires_at: at(1, 12),
                allocations: vec![alloc("south", 6), alloc("north", 2)],
            },
            InventoryEvent::StockReserved {
                reservation_id: r(2),
                order_id: order,
                quantity: qty(3),
                expires_at: at(1, 12),
                allocations: vec![alloc("north", 3)],
            },
            InventoryEvent::ReservationCommitted {
                reservation_id: r(1),
                order_id: order,
                allocations: vec![alloc("south", 6), alloc("north", 2)],
            },
            InventoryEvent::ReservationExpired {
                reservation_id: r(2),
                order_id: order,
                allocations: vec![alloc("north", 3)],
                expired_at: at(1, 13),
            },
            InventoryEvent::StockAdjusted {
                warehouse: wh("north"),
                delta: -1,
                reason: "damaged".into(),
            },
            InventoryEvent::StockReserved {
                reservation_id: r(3),
                order_id: order,
                quantity: qty(2),
                expires_at: at(1, 14),
                allocations: vec![alloc("north", 2)],
            },
        ],
    )
    .await?;
    t.project(quick_runner(2)).await?;

    let client = t.client().await?;
    let levels: Vec<(String, i32, i64, i64, i64)> = inventory::for_sku(&client, "MUG-1")
        .await?
        .into_iter()
        .map(|l| (l.warehouse, l.priority, l.on_hand, l.reserved, l.available))
        .collect();
    assert_eq!(
        levels,
        vec![("north".into(), 100, 7, 2, 5), ("south".into(), 1, 0, 0, 0)]
    );
    let low = inventory::levels(
        &client,
        &inventory::LevelFilter {
            available_below: Some(1),
            ..Default::default()
        },
        inventory::LevelSort::Sku,
        PageRequest::default(),
    )
    .await?;
    assert_eq!(low.items.len(), 1);
    assert_eq!(low.items[0].warehouse, "south");
    Ok(())
}

#[tokio::test]
async fn carts_hold_current_lines_totals_and_lifecycle() -> TestResult {
    let t = TestDb::new().await?;
    let customer = CustomerId::from_uuid(Uuid::from_u128(7));
    let cart = CartId::from_uuid(Uuid::from_u128(1));
    let guest_cart = CartId::from_uuid(Uuid::from_u128(2));
    let order = OrderId::from_uuid(Uuid::from_u128(3));
    t.append(
        &format!("cart-{cart}"),
        &[
            CartEvent::CartCreated {
                cart_id: cart,
                owner: CartOwner::Customer(customer),
                currency: Currency::parse("EUR")?,
            },
            CartEvent::CartLineAdded {
                sku: sku("A"),
                quantity: qty(1),
                unit_price: eur(500),
            },
            CartEvent::CartLineAdded {
                sku: sku("B"),
                quantity: qty(2),
                unit_price: eur(300),
            },
            // The same SKU again: the line grows and takes the new price.
            CartEvent::CartLineAdded {
                sku: sku("A"),
                quantity: qty(2),
                unit_price: eur(450),
            },
            CartEvent::CartLineAdded {
                sku: sku("C"),
                quantity: qty(1),
                unit_price: eur(100),
            },
            CartEvent::CartLineRemoved { sku: sku("B") },
            CartEvent::CartLineQuantityChanged {
                sku: sku("C"),
                quantity: qty(4),
            },
            CartEvent::GuestCartMerged {
                guest_cart_id: guest_cart,
                lines: vec![line("D", 1, eur(1_000))],
            },
            CartEvent::CartCheckedOut { total: eur(3_750) },
            CartEvent::CartClosed { order_id: order },
        ],
    )
    .await?;
    t.append(
        &format!("cart-{guest_cart}"),
        &[
            CartEvent::CartCreated {
                cart_id: guest_cart,
                owner: CartOwner::Guest(GuestToken::from_uuid(Uuid::from_u128(5))),
                currency: Currency::parse("EUR")?,
            },
            CartEvent::CartLineAdded {
                sku: sku("D"),
                quantity: qty(1),
                unit_price: eur(1_000),
            },
            CartEvent::CartAbandoned {},
        ],
    )
    .await?;
    t.project(quick_runner(2)).await?;

    let client = t.client().await?;
    let view = carts::get(&client, *cart.as_uuid())
        .await?
        .expect("the cart");
    let lines: Vec<(&str, i64, i64, i64)> = view
        .lines
        .iter()
        .map(|l| {
            (
                l.sku.as_str(),
                l.quantity,
                l.unit_price_minor,
                l.line_total_minor,
            )
        })
        .collect();
    assert_eq!(
        lines,
        vec![
            ("A", 3, 450, 1_350),
            ("C", 4, 100, 400),
            ("D", 1, 1_000, 1_000)
        ]
    );
    assert_eq!(view.cart.status, "closed");
    assert_eq!(view.cart.owner_kind, "customer");
    assert_eq!(view.cart.customer_id, Some(*customer.as_uuid()));
    assert_eq!(
        (
            view.cart.line_count,
            view.cart.item_count,
            view.cart.total_minor
        ),
        (3, 8, 2_750)
    );
    assert_eq!(view.cart.checked_out_total_minor, Some(3_750));
    assert_eq!(view.cart.order_id, Some(*order.as_uuid()));
    assert!(view.cart.checked_out_at.is_some() && view.cart.ended_at.is_some());

    let guest = carts::get(&client, *guest_cart.as_uuid())
        .await?
        .expect("the guest cart");
    assert_eq!(guest.cart.status, "abandoned");
    assert_eq!(guest.cart.owner_kind, "guest");
    assert_eq!(guest.cart.customer_id, None);
    let abandoned = carts::list(
        &client,
        &carts::CartFilter {
            status: Some(domain::CartStatus::Abandoned),
            ..Default::default()
        },
        carts::CartSort::RecentlyUpdated,
        PageRequest::default(),
    )
    .await?;
    assert_eq!(abandoned.items.len(), 1);
    Ok(())
}

/// Two orders of one customer: one delivered, one cancelled after confirmation.
async fn append_two_orders(t: &TestDb, customer: CustomerId) -> anyhow::Result<(OrderId, OrderId)> {
    let first = OrderId::from_uuid(Uuid::from_u128(11));
    let second = OrderId::from_uuid(Uuid::from_u128(12));
    t.append(
        &format!("order-{first}"),
        &[
            OrderEvent::OrderPlaced {
                order_id: first,
                customer_id: customer,
                cart_id: CartId::from_uuid(Uuid::from_u128(21)),
                lines: vec![line("A", 2, eur(1_000)), line("B", 1, eur(500))],
                shipping_address: address(),
                total: eur(2_500),
                placed_at: at(3, 10),
            },
            OrderEvent::OrderStockReserved {
                reservations: vec![ReservationId::from_uuid(Uuid::from_u128(31))],
                at: at(3, 11),
            },
            OrderEvent::OrderPaymentAuthorized {
                payment_id: PaymentId::from_uuid(Uuid::from_u128(41)),
                amount: eur(2_500),
                at: at(3, 12),
            },
            OrderEvent::OrderConfirmed { at: at(4, 9) },
            OrderEvent::OrderShipped {
                tracking_number: Some("TRK1".into()),
                at: at(5, 9),
            },
            OrderEvent::OrderDelivered { at: at(6, 9) },
        ],
    )
    .await?;
    t.append(
        &format!("order-{second}"),
        &[
            OrderEvent::OrderPlaced {
                order_id: second,
                customer_id: customer,
                cart_id: CartId::from_uuid(Uuid::from_u128(22)),
                lines: vec![line("A", 1, eur(900))],
                shipping_address: address(),
                total: eur(900),
                placed_at: at(4, 15),
            },
            OrderEvent::OrderConfirmed { at: at(4, 16) },
            OrderEvent::OrderCancelled {
                reason: "customer asked".into(),
                at: at(5, 8),
            },
        ],
    )
    .await?;
    Ok((first, second))
}

#[tokio::test]
async fn orders_record_status_totals_transition_times_and_customer_history() -> TestResult {
    let t = TestDb::new().await?;
    let customer = CustomerId::from_uuid(Uuid::from_u128(7));
    let (first, second) = append_two_orders(&t, customer).await?;
    t.project(quick_runner(2)).await?;

    let client = t.client().await?;
    let view = orders::get(&client, *first.as_uuid())
        .await?
        .expect("the order");
    let o = &view.order;
    assert_eq!(o.status, "delivered");
    assert_eq!((o.total_minor, o.line_count, o.item_count), (2_500, 2, 3));
    assert_eq!(o.currency, "EUR");
    assert_eq!(o.ship_country, "GB");
    assert_eq!(
        (o.placed_at, o.stock_reserved_at, o.payment_authorized_at),
        (at(3, 10), Some(at(3, 11)), Some(at(3, 12)))
    );
    assert_eq!(
        (o.confirmed_at, o.shipped_at, o.delivered_at, o.cancelled_at),
        (Some(at(4, 9)), Some(at(5, 9)), Some(at(6, 9)), None)
    );
    assert_eq!(view.tracking_number.as_deref(), Some("TRK1"));
    assert_eq!(view.payment_id, Some(Uuid::from_u128(41)));
    assert_eq!(view.shipping_address["city"], "London");
    let lines: Vec<(i32, &str, i64, i64)> = view
        .lines
        .iter()
        .map(|l| (l.line_no, l.sku.as_str(), l.quantity, l.line_total_minor))
        .collect();
    assert_eq!(lines, vec![(1, "A", 2, 2_000), (2, "B", 1, 500)]);

    let cancelled = orders::get(&client, *second.as_uuid())
        .await?
        .expect("the order");
    assert_eq!(cancelled.order.status, "cancelled");
    assert_eq!(
        cancelled.order.status_reason.as_deref(),
        Some("customer asked")
    );
    assert_eq!(cancelled.order.confirmed_at, Some(at(4, 16)));
    assert_eq!(cancelled.order.cancelled_at, Some(at(5, 8)));

    let mine = orders::for_customer(&client, *customer.as_uuid(), PageRequest::default()).await?;
    let ids: Vec<Uuid> = mine.items.iter().map(|o| o.order_id).collect();
    assert_eq!(ids, vec![*second.as_uuid(), *first.as_uuid()]);

    let history = orders::customer_history(&client, *customer.as_uuid()).await?;
    assert_eq!(history.len(), 1);
    let h = &history[0];
    assert_eq!(
        (
            h.orders_placed,
            h.orders_confirmed,
            h.orders_delivered,
            h.orders_cancelled,
            h.orders_rejected
        ),
        (2, 2, 1, 1, 0)
    );
    assert_eq!(
        (h.placed_total_minor, h.confirmed_total_minor),
        (3_400, 2_500)
    );
    assert_eq!((h.first_order_at, h.last_order_at), (at(3, 10), at(4, 15)));
    Ok(())
}

#[tokio::test]
async fn sales_count_units_and_revenue_per_day_sku_and_currency() -> TestResult {
    let t = TestDb::new().await?;
    append_two_orders(&t, CustomerId::from_uuid(Uuid::from_u128(7))).await?;
    t.project(quick_runner(2)).await?;

    let client = t.client().await?;
    let days = sales::daily(
        &client,
        &sales::SalesFilter::default(),
        sales::SalesSort::Day,
        PageRequest::default(),
    )
    .await?;
    let day = |d: u32| NaiveDate::from_ymd_opt(2026, 5, d).unwrap();
    let rows: Vec<_> = days
        .items
        .iter()
        .map(|s| {
            (
                s.day,
                s.sku.as_str(),
                (s.orders_placed, s.units_ordered, s.revenue_ordered_minor),
                (s.units_sold, s.revenue_sold_minor),
                (
                    s.cancellations,
                    s.units_cancelled,
                    s.revenue_cancelled_minor,
                ),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (day(3), "A", (1, 2, 2_000), (0, 0), (0, 0, 0)),
            (day(3), "B", (1, 1, 500), (0, 0), (0, 0, 0)),
            // First order confirmed on the 4th; the second placed and confirmed.
            (day(4), "A", (1, 1, 900), (3, 2_900), (0, 0, 0)),
            (day(4), "B", (0, 0, 0), (1, 500), (0, 0, 0)),
            (day(5), "A", (0, 0, 0), (0, 0), (1, 1, 900)),
        ]
    );
    // Nothing is left open: one order delivered, the other cancelled.
    let open: i64 = client
        .query_one("SELECT count(*) FROM read_models.sales_open_orders", &[])
        .await?
        .get(0);
    assert_eq!(open, 0);
    let top = sales::top_skus(
        &client,
        &sales::SalesFilter::default(),
        PageRequest::default(),
    )
    .await?;
    assert_eq!(top.items[0].sku, "A");
    assert_eq!(top.items[0].revenue_sold_minor, 2_900);
    Ok(())
}
