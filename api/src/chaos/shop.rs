//! A small shop for load runs (`commerce bench checkout`, `commerce bench chaos`, the
//! fault tests): one product whose SKUs are stocked in two warehouses, customers'
//! carts filled through the command side, and the checkout invariants checked from
//! the log once every checkout has ended.

use anyhow::{Context, Result};
use commands::{CartAction, CommandContext, Commands};
use domain::{
    CartId, CartOwner, Checkout, CheckoutId, CheckoutStatus, Currency, CustomerId, Inventory,
    InventoryCommand, InventoryEvent, LineStock, Money, PaymentStatus, PriceTarget, ProductCommand,
    ProductId, Quantity, ReservationOutcome, Sku, SkuVariant, WarehouseId,
};
use eventstore::{Direction, EventStore, PostgresStore};
use uuid::Uuid;

/// The shop's two warehouses.
pub const WAREHOUSES: [&str; 2] = ["north", "south"];
/// Events read per page when the log is checked.
const PAGE_EVENTS: usize = 10_000;

/// The product for sale: its SKUs, its price, and what each warehouse holds of each.
pub struct Catalog<'a> {
    pub skus: &'a [&'a str],
    pub price_minor: i64,
    pub units_per_warehouse: u32,
}

/// Creates, prices and publishes the product, and receives its stock.
pub async fn seed(commands: &Commands, catalog: &Catalog<'_>) -> Result<ProductId> {
    let admin = CommandContext::new("admin:shop");
    let product_id = ProductId::from_uuid(Uuid::new_v4());
    let products = commands.products();
    products
        .execute(
            ProductCommand::CreateProduct {
                product_id,
                title: "Load bundle".into(),
                description: "Several parts.".into(),
                brand: "Load".into(),
                category: vec!["Load".into()],
                skus: catalog
                    .skus
                    .iter()
                    .map(|sku| {
                        Ok(SkuVariant {
                            sku: Sku::parse(*sku)?,
                            attributes: Default::default(),
                        })
                    })
                    .collect::<Result<_>>()?,
            },
            &admin.follow_up("create"),
        )
        .await?;
    products
        .execute(
            ProductCommand::SetPrice {
                product_id,
                target: PriceTarget::Product,
                price: Money::new(catalog.price_minor, Currency::parse("EUR")?),
            },
            &admin.follow_up("price"),
        )
        .await?;
    products
        .execute(
            ProductCommand::Publish { product_id },
            &admin.follow_up("publish"),
        )
        .await?;
    for sku in catalog.skus {
        for warehouse in WAREHOUSES {
            commands
                .inventory()
                .execute(
                    InventoryCommand::ReceiveStock {
                        sku: Sku::parse(*sku)?,
                        warehouse: WarehouseId::parse(warehouse)?,
                        quantity: Quantity::new(catalog.units_per_warehouse)?,
                    },
                    &admin.follow_up(&format!("receive:{sku}:{warehouse}")),
                )
                .await?;
        }
    }
    Ok(product_id)
}

/// A new customer's cart with one unit of each of the catalog's SKUs.
pub async fn fill_cart(
    commands: &Commands,
    product_id: ProductId,
    catalog: &Catalog<'_>,
) -> Result<(CustomerId, CartId)> {
    let customer = CustomerId::from_uuid(Uuid::new_v4());
    let cart_id = CartId::from_uuid(Uuid::new_v4());
    let context = CommandContext::new(format!("customer:{customer}"));
    commands
        .cart(
            CartAction::Create {
                cart_id,
                owner: CartOwner::Customer(customer),
                currency: Currency::parse("EUR")?,
            },
            &context.follow_up("create"),
        )
        .await
        .with_context(|| format!("cart {cart_id}"))?;
    for sku in catalog.skus {
        commands
            .cart(
                CartAction::AddItem {
                    cart_id,
                    product_id,
                    sku: Sku::parse(*sku)?,
                    quantity: Quantity::new(1)?,
                },
                &context.follow_up(sku),
            )
            .await?;
    }
    Ok((customer, cart_id))
}

/// What the log says of a set of checkouts once they have ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogCheck {
    /// SKUs whose committed units exceed the units they received.
    pub oversold: u64,
    /// Checkouts that broke an invariant: completed without exactly one capture of
    /// the total or with a reservation not committed; ended otherwise with money kept
    /// or stock held; or not ended at all.
    pub violations: u64,
    pub completed: u64,
    /// Rejected or cancelled.
    pub not_completed: u64,
    /// SKUs that still hold reserved units (once every checkout has ended, none
    /// should).
    pub stuck_reservations: u64,
}

/// Checks the checkout invariants of `accepted` and the stock of `skus`, from the log.
pub async fn check(
    store: &PostgresStore,
    commands: &Commands,
    accepted: &[CheckoutId],
    skus: &[&str],
) -> Result<LogCheck> {
    let mut figures = LogCheck::default();
    for id in accepted {
        let checkout = commands
            .checkouts()
            .load(&Checkout::stream_id(id))
            .await?
            .state;
        let payment = commands
            .payments()
            .load(&domain::Payment::stream_id(&Checkout::payment_id(*id)))
            .await?
            .state;
        let mut inventories = Vec::new();
        for line in checkout.lines() {
            inventories.push(
                commands
                    .inventory()
                    .load(&Inventory::stream_id(&line.sku))
                    .await?
                    .state,
            );
        }
        let lines = checkout.lines().iter().zip(&inventories);
        let ok = match checkout.status() {
            Some(CheckoutStatus::Completed) => {
                figures.completed += 1;
                payment.status() == Some(PaymentStatus::Captured)
                    && payment.captured() == checkout.total()
                    && lines.into_iter().all(|(line, inventory)| {
                        inventory.reservation_outcome(&line.reservation_id)
                            == Some(ReservationOutcome::Committed)
                    })
            }
            Some(CheckoutStatus::Rejected | CheckoutStatus::Cancelled) => {
                figures.not_completed += 1;
                let money_returned = match payment.status() {
                    Some(PaymentStatus::Authorized) => false,
                    Some(PaymentStatus::Captured) => payment.refunded() == payment.captured(),
                    Some(PaymentStatus::Declined | PaymentStatus::Voided) | None => true,
                };
                money_returned
                    && lines.into_iter().all(|(line, inventory)| {
                        inventory.reservation(&line.reservation_id).is_none()
                            && (inventory.reservation_outcome(&line.reservation_id)
                                != Some(ReservationOutcome::Committed)
                                || line.stock == LineStock::Restocked)
                    })
            }
            _ => false,
        };
        if !ok {
            figures.violations += 1;
        }
    }
    for sku in skus {
        let sku = Sku::parse(*sku)?;
        let (received, committed) = stock_flow(store, &sku).await?;
        if committed > received {
            figures.oversold += 1;
        }
        let inventory = commands
            .inventory()
            .load(&Inventory::stream_id(&sku))
            .await?
            .state;
        if inventory.reserved() > 0 {
            figures.stuck_reservations += 1;
        }
    }
    Ok(figures)
}

/// (units received, units committed to orders) of one SKU, from its stream.
async fn stock_flow(store: &PostgresStore, sku: &Sku) -> Result<(u64, u64)> {
    let mut committed = 0u64;
    let mut received = 0u64;
    let stream = Inventory::stream_id(sku);
    let mut from = 1;
    loop {
        let page = store
            .read_stream(&stream, from, Direction::Forward, PAGE_EVENTS)
            .await?;
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        for recorded in &page {
            let event = <InventoryEvent as domain::DomainEvent>::from_stored(
                &recorded.event_type,
                recorded.schema_version,
                recorded.data.clone(),
            )?;
            match event {
                InventoryEvent::ReservationCommitted { allocations, .. } => {
                    committed += allocations
                        .iter()
                        .map(|a| u64::from(a.quantity.get()))
                        .sum::<u64>();
                }
                InventoryEvent::StockReceived { quantity, .. } => {
                    received += u64::from(quantity.get());
                }
                InventoryEvent::StockAdjusted { delta, .. } if delta > 0 => {
                    received += delta.unsigned_abs();
                }
                _ => {}
            }
        }
    }
    Ok((received, committed))
}

/// How the checkouts of a run ended, counted from their end events.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    pub completed: u64,
    pub rejected: u64,
    pub cancelled: u64,
}

impl Ended {
    pub fn total(&self) -> u64 {
        self.completed + self.rejected + self.cancelled
    }
}

/// How often [`wait_until_ended`] looks at the log.
const ENDED_POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// Waits until the log holds `expected` ended checkouts after position `after` (a
/// head read before the first of them was asked for, or 0), for at most `timeout`.
///
/// Each look reads only the events committed since the one before: positions commit
/// in order, so what a reader sees of the log is always a prefix of it, and counting
/// what lies past the last position seen counts every event once. (Counting the
/// whole checkout category on every look cost tens of milliseconds of the server's
/// time per look by the end of a benchmark run, taken from the system it measures.)
pub async fn wait_until_ended(
    store: &PostgresStore,
    mut after: u64,
    expected: u64,
    timeout: std::time::Duration,
) -> Result<Ended> {
    let deadline = std::time::Instant::now() + timeout;
    let mut ended = Ended::default();
    loop {
        match count_ended_after(store, after).await {
            Ok((last, more)) => {
                after = last;
                ended.completed += more.completed;
                ended.rejected += more.rejected;
                ended.cancelled += more.cancelled;
                if ended.total() >= expected {
                    return Ok(ended);
                }
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "only {} of {expected} checkouts ended",
                    ended.total()
                );
            }
            Err(e) => anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "cannot count the ended checkouts: {e}"
            ),
        }
        tokio::time::sleep(ENDED_POLL).await;
    }
}

/// The checkouts that ended in the events after position `after`, and the log's
/// head they were counted up to.
async fn count_ended_after(store: &PostgresStore, after: u64) -> Result<(u64, Ended)> {
    let client = store.connection().await?;
    let after = i64::try_from(after)?;
    // Every event up to the head has committed (the head moves in the transaction
    // that commits its events), so the events are counted up to a head read first.
    // With both bounds known, the scan is that range of positions only. The category
    // is tested on a prefix no index serves: statistics taken before the run began
    // hold no checkout, and the planner would then read the whole category by its
    // stream index on every look.
    let last: i64 = client
        .query_one("SELECT position FROM log_head", &[])
        .await?
        .get(0);
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE event_type = 'CheckoutCompleted'), \
                    count(*) FILTER (WHERE event_type = 'CheckoutRejected'), \
                    count(*) FILTER (WHERE event_type = 'CheckoutCancelled') \
             FROM events WHERE position > $1 AND position <= $2 \
               AND left(stream_id, 9) = 'checkout-' \
               AND event_type IN ('CheckoutCompleted', 'CheckoutRejected', 'CheckoutCancelled')",
            &[&after, &last],
        )
        .await?;
    Ok((
        u64::try_from(last)?,
        Ended {
            completed: row.get::<_, i64>(0) as u64,
            rejected: row.get::<_, i64>(1) as u64,
            cancelled: row.get::<_, i64>(2) as u64,
        },
    ))
}
