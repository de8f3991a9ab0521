//! A synthetic shop: a fast, seeded stream of valid appends from the domain's own
//! deciders, for the read side's tests and `commerce bench rebuild`.
//!
//! The shop sets up a catalog (products with SKUs and prices, stock in several
//! warehouses), then runs many shopping sessions side by side, one command per step:
//! carts filled and abandoned or checked out, orders placed, stock reserved,
//! payments authorized or declined, orders confirmed, shipped, delivered, cancelled,
//! rejected, reservations committed, released and expired, plus price changes and
//! stock corrections in between. Every event comes out of an aggregate's `decide`, so
//! the log is one the command side could have written. Several shops with different
//! `shard`s write disjoint streams and may append concurrently.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Duration, TimeZone, Utc};
use domain::{
    AddressInput, Aggregate, Cart, CartCommand, CartId, CartOwner, Currency, CustomerId,
    DomainError, DomainEvent, GuestToken, Inventory, InventoryCommand, Money, Order, OrderCommand,
    OrderId, Payment, PaymentCommand, PaymentId, PriceTarget, Product, ProductCommand, ProductId,
    Quantity, ReservationId, ShippingAddress, Sku, SkuVariant, WarehouseId,
};
use eventstore::{AppendRequest, ExpectedVersion, Metadata, NewEvent};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

/// The shape of a synthetic shop.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    pub seed: u64,
    /// Part of every SKU and of the id seed: shops with different shards share no
    /// stream.
    pub shard: u32,
    pub products: usize,
    pub warehouses: usize,
    pub customers: usize,
    /// Sessions in flight at once (their events interleave in the log).
    pub concurrent_sessions: usize,
    /// Business time of the first event.
    pub start: DateTime<Utc>,
    /// The business clock moves by up to this much per step.
    pub step_max_secs: i64,
}

impl Default for ShopConfig {
    fn default() -> Self {
        ShopConfig {
            seed: 1,
            shard: 0,
            products: 40,
            warehouses: 3,
            customers: 500,
            concurrent_sessions: 16,
            start: Utc
                .with_ymd_and_hms(2026, 3, 1, 8, 0, 0)
                .single()
                .expect("a valid date"),
            step_max_secs: 20,
        }
    }
}

/// What a shop has produced so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShopStats {
    pub events: u64,
    pub appends: u64,
    pub carts: u64,
    pub orders_placed: u64,
    pub orders_confirmed: u64,
    pub orders_cancelled: u64,
    pub orders_rejected: u64,
    pub orders_delivered: u64,
    /// Commands the domain refused: a bug in this generator if not 0.
    pub refused_commands: u64,
}

struct Stream<A> {
    id: String,
    state: A,
    version: u64,
}

impl<A: Aggregate> Stream<A> {
    fn new(id: String) -> Self {
        Stream {
            id,
            state: A::default(),
            version: 0,
        }
    }
}

/// Decides `command` on `stream` and queues the events as one append.
fn run<A: Aggregate>(
    out: &mut Vec<AppendRequest>,
    stream: &mut Stream<A>,
    command: A::Command,
) -> Result<usize, DomainError> {
    let events = stream.state.decide(&command)?;
    if events.is_empty() {
        return Ok(0);
    }
    let new_events = events
        .iter()
        .map(|e| NewEvent {
            event_id: Uuid::now_v7(),
            event_type: e.event_type().to_owned(),
            schema_version: e.schema_version(),
            data: e.to_data().into(),
            metadata: Metadata {
                actor: Some("system:workload".to_owned()),
                ..Metadata::default()
            },
        })
        .collect();
    for event in &events {
        stream.state = std::mem::take(&mut stream.state).evolve(event);
    }
    out.push(AppendRequest {
        stream_id: stream.id.clone(),
        expected: ExpectedVersion::Exact(stream.version),
        events: new_events,
        command_id: None,
        preconditions: Vec::new(),
        guards: Vec::new(),
    });
    stream.version += events.len() as u64;
    Ok(events.len())
}

/// How a session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Abandon,
    StayOpen,
    OutOfStock,
    Declined,
    Expired,
    Cancelled,
    CancelledAfterConfirm,
    Confirmed,
    Shipped,
    Delivered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Fill {
        lines_left: u8,
    },
    CheckOut,
    Place,
    Reserve {
        line: usize,
    },
    Expire {
        line: usize,
    },
    MarkReserved,
    Authorize,
    MarkAuthorized,
    Cancel,
    Confirm,
    Commit {
        line: usize,
    },
    CloseCart,
    Capture,
    CancelConfirmed,
    Refund,
    Ship,
    Deliver,
    /// The order failed: release what is reserved, then reject it.
    Release {
        line: usize,
    },
    Reject,
    VoidPayment,
    Reopen,
    AbandonCart,
    Done,
}

struct Session {
    customer: CustomerId,
    currency: Currency,
    fate: Fate,
    stage: Stage,
    cart: Stream<Cart>,
    order: Option<Stream<Order>>,
    payment: Option<Stream<Payment>>,
    /// Reservations held, per order line.
    reservations: Vec<(Sku, ReservationId)>,
    reject_reason: &'static str,
}

/// A synthetic shop; see the module documentation.
pub struct Shop {
    config: ShopConfig,
    rng: StdRng,
    clock: DateTime<Utc>,
    products: Vec<Stream<Product>>,
    inventory: BTreeMap<Sku, Stream<Inventory>>,
    /// Sellable SKUs with their product's index.
    skus: Vec<(usize, Sku)>,
    sessions: Vec<Session>,
    addresses: HashMap<CustomerId, ShippingAddress>,
    stats: ShopStats,
    set_up: bool,
    /// The number of the next product `catalog_appends` makes.
    catalog_next: usize,
}

const COUNTRIES: [&str; 5] = ["DE", "FR", "NL", "US", "GB"];
const CITIES: [&str; 5] = ["Berlin", "Lyon", "Utrecht", "Boston", "Leeds"];
const BRANDS: [&str; 6] = [
    "Acme",
    "Northwind",
    "Umbrella",
    "Globex",
    "Initech",
    "Hooli",
];
const CATEGORIES: [&str; 4] = ["Shoes", "Shirts", "Bags", "Hats"];
/// Words of titles and descriptions, so that searches have a vocabulary to find.
const ADJECTIVES: [&str; 16] = [
    "classic",
    "vintage",
    "waterproof",
    "lightweight",
    "premium",
    "rugged",
    "slim",
    "breathable",
    "organic",
    "insulated",
    "urban",
    "trail",
    "summer",
    "winter",
    "essential",
    "deluxe",
];
/// Nouns per category, in the order of `CATEGORIES`.
const NOUNS: [[&str; 6]; 4] = [
    ["sneaker", "runner", "boot", "sandal", "loafer", "trainer"],
    ["shirt", "polo", "blouse", "tunic", "henley", "oxford"],
    [
        "backpack",
        "tote",
        "duffel",
        "satchel",
        "messenger",
        "clutch",
    ],
    ["beanie", "cap", "fedora", "bucket", "visor", "beret"],
];
const COLOURS: [&str; 8] = [
    "black", "white", "navy", "olive", "crimson", "grey", "sand", "teal",
];
const MATERIALS: [&str; 6] = ["cotton", "leather", "canvas", "wool", "linen", "nylon"];

impl Shop {
    pub fn new(config: ShopConfig) -> Shop {
        let rng = StdRng::seed_from_u64(config.seed ^ (u64::from(config.shard) << 32));
        Shop {
            clock: config.start,
            config,
            rng,
            products: Vec::new(),
            inventory: BTreeMap::new(),
            skus: Vec::new(),
            sessions: Vec::new(),
            addresses: HashMap::new(),
            stats: ShopStats::default(),
            set_up: false,
            catalog_next: 0,
        }
    }

    pub fn stats(&self) -> &ShopStats {
        &self.stats
    }

    /// The next appends, at least `min_events` events in all (the first call also
    /// sets the catalog up). Appends of one stream come in order.
    pub fn next_appends(&mut self, min_events: usize) -> Vec<AppendRequest> {
        let mut out = Vec::new();
        if !self.set_up {
            self.set_up_catalog(&mut out);
            self.set_up = true;
        }
        let mut events: usize = out.iter().map(|a| a.events.len()).sum();
        // Bounded: every step emits an event or finishes a session, and a session
        // has a bounded number of steps.
        let mut steps_left = min_events.saturating_mul(20) + 1_000;
        while events < min_events && steps_left > 0 {
            steps_left -= 1;
            let before = out.len();
            self.step(&mut out);
            events += out[before..].iter().map(|a| a.events.len()).sum::<usize>();
        }
        self.stats.appends += out.len() as u64;
        self.stats.events += events as u64;
        out
    }

    fn id(&mut self) -> Uuid {
        uuid::Builder::from_random_bytes(self.rng.random()).into_uuid()
    }

    fn tick(&mut self) {
        let secs = self.rng.random_range(0..=self.config.step_max_secs);
        self.clock += Duration::seconds(secs);
    }

    fn refused(&mut self, what: &str, e: DomainError) {
        tracing::warn!(command = what, error = %e, "workload command refused");
        self.stats.refused_commands += 1;
    }

    fn warehouse(&mut self) -> WarehouseId {
        let n = self.rng.random_range(0..self.config.warehouses.max(1));
        WarehouseId::parse(format!("WH{n}")).expect("a valid warehouse code")
    }

    fn set_up_catalog(&mut self, out: &mut Vec<AppendRequest>) {
        for p in 0..self.config.products {
            self.add_product(p, out, true);
        }
    }

    /// The next `count` products of a catalog without shopping: products, prices,
    /// stock and publishing only, for large catalogs (`commerce bench search`).
    /// Their streams are not kept, so memory stays flat; sessions never sell them.
    pub fn catalog_appends(&mut self, count: usize) -> Vec<AppendRequest> {
        let mut out = Vec::new();
        for _ in 0..count {
            let p = self.catalog_next;
            self.catalog_next += 1;
            self.add_product(p, &mut out, false);
        }
        let events: usize = out.iter().map(|a| a.events.len()).sum();
        self.stats.appends += out.len() as u64;
        self.stats.events += events as u64;
        out
    }

    /// Product number `p` with its SKUs, prices and stock; `keep` keeps its
    /// streams for the shopping sessions.
    fn add_product(&mut self, p: usize, out: &mut Vec<AppendRequest>, keep: bool) {
        let eur = currency("EUR");
        let usd = currency("USD");
        let id = ProductId::from_uuid(self.id());
        let mut stream = Stream::<Product>::new(Product::stream_id(&id));
        let sku_count = self.rng.random_range(1..=4);
        let skus: Vec<SkuVariant> = (0..sku_count)
            .map(|s| SkuVariant {
                sku: sku(&format!("S{}-P{p}-{s}", self.config.shard)),
                attributes: BTreeMap::from([("size".to_owned(), format!("{}", 38 + s))]),
            })
            .collect();
        let brand = BRANDS[self.rng.random_range(0..BRANDS.len())];
        let category = CATEGORIES[p % CATEGORIES.len()];
        // Words from the product number, not the generator, so the sequence of
        // random draws (and every other stream) stays as it was.
        let word = |list: &[&'static str], salt: usize| {
            list[(p.wrapping_mul(2_654_435_761) >> salt) % list.len()]
        };
        let adjective = word(&ADJECTIVES, 3);
        let noun = word(&NOUNS[p % CATEGORIES.len()], 7);
        let colour = word(&COLOURS, 11);
        let material = word(&MATERIALS, 13);
        let create = ProductCommand::CreateProduct {
            product_id: id,
            title: format!("{brand} {adjective} {noun} model {p}"),
            description: format!(
                "A {colour} {noun} of {material}; synthetic {category} product {p} of shop {}.",
                self.config.shard
            ),
            brand: brand.to_owned(),
            category: vec![category.to_owned(), format!("{category} line {}", p % 3)],
            skus: skus.clone(),
        };
        let base = self.rng.random_range(500..20_000);
        let mut commands = vec![
            create,
            ProductCommand::SetPrice {
                product_id: id,
                target: PriceTarget::Product,
                price: Money::new(base, eur),
            },
        ];
        if self.rng.random_bool(0.5) {
            commands.push(ProductCommand::SetPrice {
                product_id: id,
                target: PriceTarget::Product,
                price: Money::new(base + base / 10, usd),
            });
        }
        if self.rng.random_bool(0.3) {
            commands.push(ProductCommand::SetPrice {
                product_id: id,
                target: PriceTarget::Sku(skus[0].sku.clone()),
                price: Money::new(base + 100, eur),
            });
        }
        // One product in ten stays a draft: not for sale.
        let sellable = p % 10 != 9;
        if sellable {
            commands.push(ProductCommand::Publish { product_id: id });
        }
        for command in commands {
            if let Err(e) = run(out, &mut stream, command) {
                self.refused("catalog", e);
            }
        }
        let index = self.products.len();
        if keep {
            self.products.push(stream);
        }
        for variant in skus {
            let mut inventory = Stream::<Inventory>::new(Inventory::stream_id(&variant.sku));
            for _ in 0..self.rng.random_range(1..=self.config.warehouses.max(1)) {
                let warehouse = self.warehouse();
                let quantity = self.rng.random_range(20..200);
                let receive = InventoryCommand::ReceiveStock {
                    sku: variant.sku.clone(),
                    warehouse,
                    quantity: quantity_of(quantity),
                };
                if let Err(e) = run(out, &mut inventory, receive) {
                    self.refused("receive", e);
                }
            }
            if self.rng.random_bool(0.3) {
                let warehouse = self.warehouse();
                let priority = InventoryCommand::SetWarehousePriority {
                    sku: variant.sku.clone(),
                    warehouse,
                    priority: self.rng.random_range(1..200),
                };
                if let Err(e) = run(out, &mut inventory, priority) {
                    self.refused("priority", e);
                }
            }
            if keep {
                if sellable {
                    self.skus.push((index, variant.sku.clone()));
                }
                self.inventory.insert(variant.sku, inventory);
            }
        }
    }

    fn new_session(&mut self, out: &mut Vec<AppendRequest>) -> Session {
        let guest = self.rng.random_bool(0.15);
        let customer = CustomerId::from_uuid(Uuid::from_u128(
            (u128::from(self.config.shard) << 64)
                | self
                    .rng
                    .random_range(1..=self.config.customers.max(1) as u128),
        ));
        let currency = currency(if self.rng.random_bool(0.2) {
            "USD"
        } else {
            "EUR"
        });
        let roll = self.rng.random_range(0..100);
        let fate = if guest {
            if roll < 70 {
                Fate::Abandon
            } else {
                Fate::StayOpen
            }
        } else {
            match roll {
                0..=9 => Fate::Abandon,
                10..=12 => Fate::StayOpen,
                13..=15 => Fate::OutOfStock,
                16..=19 => Fate::Declined,
                20..=21 => Fate::Expired,
                22..=26 => Fate::Cancelled,
                27..=28 => Fate::CancelledAfterConfirm,
                29..=40 => Fate::Confirmed,
                41..=55 => Fate::Shipped,
                _ => Fate::Delivered,
            }
        };
        let cart_id = CartId::from_uuid(self.id());
        let mut cart = Stream::<Cart>::new(Cart::stream_id(&cart_id));
        let owner = if guest {
            CartOwner::Guest(GuestToken::from_uuid(self.id()))
        } else {
            CartOwner::Customer(customer)
        };
        let created = run(
            out,
            &mut cart,
            CartCommand::CreateCart {
                cart_id,
                owner,
                currency,
            },
        );
        if let Err(e) = created {
            self.refused("create cart", e);
        }
        self.stats.carts += 1;
        Session {
            customer,
            currency,
            fate,
            stage: Stage::Fill {
                lines_left: self.rng.random_range(1..=4),
            },
            cart,
            order: None,
            payment: None,
            reservations: Vec::new(),
            reject_reason: "",
        }
    }
}

// The codes below are built by this module from constants, so they always parse.

fn currency(code: &str) -> Currency {
    Currency::parse(code).expect("a valid currency code")
}

fn sku(code: &str) -> Sku {
    Sku::parse(code).expect("a valid SKU")
}

fn quantity_of(n: u32) -> Quantity {
    Quantity::new(n).unwrap_or(Quantity::ONE)
}

impl Shop {
    /// One step: now and then a catalog or stock change, else one command of a
    /// random session.
    fn step(&mut self, out: &mut Vec<AppendRequest>) {
        self.tick();
        if self.skus.is_empty() {
            return;
        }
        let roll = self.rng.random_range(0..1000);
        if roll < 5 {
            self.change_price(out);
            return;
        }
        if roll < 10 {
            self.adjust_stock(out);
            return;
        }
        if self.sessions.len() < self.config.concurrent_sessions.max(1) {
            let session = self.new_session(out);
            self.sessions.push(session);
            return;
        }
        let n = self.rng.random_range(0..self.sessions.len());
        let mut session = self.sessions.swap_remove(n);
        if let Err(e) = self.advance(&mut session, out) {
            self.refused("session", e);
            session.stage = Stage::Done;
        }
        if session.stage != Stage::Done {
            self.sessions.push(session);
        }
    }

    fn change_price(&mut self, out: &mut Vec<AppendRequest>) {
        let (index, sku) = self.skus[self.rng.random_range(0..self.skus.len())].clone();
        let Some(product_id) = self.products[index].state.id() else {
            return;
        };
        let price = Money::new(self.rng.random_range(500..20_000), currency("EUR"));
        let target = if self.rng.random_bool(0.5) {
            PriceTarget::Product
        } else {
            PriceTarget::Sku(sku)
        };
        let command = ProductCommand::SetPrice {
            product_id,
            target,
            price,
        };
        if let Err(e) = run(out, &mut self.products[index], command) {
            self.refused("price", e);
        }
    }

    fn adjust_stock(&mut self, out: &mut Vec<AppendRequest>) {
        let (_, sku) = self.skus[self.rng.random_range(0..self.skus.len())].clone();
        let warehouse = self.warehouse();
        let Some(inventory) = self.inventory.get_mut(&sku) else {
            return;
        };
        let (on_hand, reserved) = inventory
            .state
            .warehouse(&warehouse)
            .map_or((0, 0), |w| (w.on_hand(), w.reserved()));
        // Never below what is reserved, which the domain would refuse.
        let delta = if on_hand > reserved + 5 && self.rng.random_bool(0.5) {
            -(self.rng.random_range(1..=5))
        } else {
            self.rng.random_range(1..=30)
        };
        let command = InventoryCommand::AdjustStock {
            sku,
            warehouse,
            delta,
            reason: "stocktake".to_owned(),
        };
        if let Err(e) = run(out, inventory, command) {
            self.refused("adjust", e);
        }
    }

    fn inventory(&mut self, sku: &Sku) -> Result<&mut Stream<Inventory>, DomainError> {
        self.inventory.get_mut(sku).ok_or(DomainError::NotFound {
            aggregate: "inventory",
        })
    }

    /// Runs the session's next command and moves it to its next stage.
    fn advance(
        &mut self,
        s: &mut Session,
        out: &mut Vec<AppendRequest>,
    ) -> Result<(), DomainError> {
        let cart_id = s
            .cart
            .state
            .id()
            .ok_or(DomainError::NotFound { aggregate: "cart" })?;
        let at = self.clock;
        s.stage = match s.stage {
            Stage::Fill { lines_left } => {
                let lines = s.cart.state.lines().len();
                if lines > 1 && self.rng.random_bool(0.05) {
                    let sku = s.cart.state.lines()[0].sku.clone();
                    run(out, &mut s.cart, CartCommand::RemoveLine { cart_id, sku })?;
                } else if lines > 0 && self.rng.random_bool(0.05) {
                    let sku = s.cart.state.lines()[lines - 1].sku.clone();
                    let quantity = quantity_of(self.rng.random_range(1..=3));
                    run(
                        out,
                        &mut s.cart,
                        CartCommand::ChangeQuantity {
                            cart_id,
                            sku,
                            quantity,
                        },
                    )?;
                } else {
                    let (index, sku) = self.skus[self.rng.random_range(0..self.skus.len())].clone();
                    let Some(unit_price) = self.products[index].state.price_for(&sku, s.currency)
                    else {
                        // Not sold in this currency: the shopper looks elsewhere.
                        return Ok(());
                    };
                    let quantity = quantity_of(self.rng.random_range(1..=3));
                    let add = CartCommand::AddLine {
                        cart_id,
                        sku,
                        quantity,
                        unit_price,
                    };
                    run(out, &mut s.cart, add)?;
                }
                match (lines_left, s.fate) {
                    (0 | 1, Fate::StayOpen) => Stage::Done,
                    (0 | 1, Fate::Abandon) => Stage::AbandonCart,
                    (0 | 1, _) if s.cart.state.lines().is_empty() => Stage::AbandonCart,
                    (0 | 1, _) => Stage::CheckOut,
                    (n, _) => Stage::Fill { lines_left: n - 1 },
                }
            }
            Stage::CheckOut => {
                run(out, &mut s.cart, CartCommand::CheckOut { cart_id })?;
                Stage::Place
            }
            Stage::Place => {
                let order_id = OrderId::from_uuid(self.id());
                let mut order = Stream::<Order>::new(Order::stream_id(&order_id));
                let place = OrderCommand::PlaceOrder {
                    order_id,
                    customer_id: s.customer,
                    cart_id,
                    lines: s.cart.state.lines().to_vec(),
                    shipping_address: self.address(s.customer),
                    placed_at: at,
                };
                run(out, &mut order, place)?;
                s.order = Some(order);
                self.stats.orders_placed += 1;
                Stage::Reserve { line: 0 }
            }
            Stage::Reserve { line } => {
                let order_id = order_id(s)?;
                let item = s.cart.state.lines()[line].clone();
                if s.fate == Fate::OutOfStock && line + 1 == s.cart.state.lines().len() {
                    // The last line finds no stock (the shop's stock is not drained for
                    // real: the failure is what matters here).
                    s.reject_reason = "out of stock";
                    Stage::Release { line: 0 }
                } else {
                    let reservation_id = ReservationId::from_uuid(self.id());
                    // An order fated to expire reserves with a deadline long gone, so
                    // expiring it touches no other session's reservation.
                    let expires_at = if s.fate == Fate::Expired {
                        at - Duration::days(2)
                    } else {
                        at + Duration::minutes(30)
                    };
                    let reserve = InventoryCommand::ReserveStock {
                        sku: item.sku.clone(),
                        reservation_id,
                        order_id,
                        quantity: item.quantity,
                        expires_at,
                    };
                    let inventory = self.inventory(&item.sku)?;
                    if inventory.state.available() < u64::from(item.quantity.get()) {
                        let warehouse = WarehouseId::parse("WH0")?;
                        let receive = InventoryCommand::ReceiveStock {
                            sku: item.sku.clone(),
                            warehouse,
                            quantity: quantity_of(item.quantity.get().max(100)),
                        };
                        run(out, inventory, receive)?;
                    }
                    run(out, inventory, reserve)?;
                    s.reservations.push((item.sku, reservation_id));
                    if line + 1 < s.cart.state.lines().len() {
                        Stage::Reserve { line: line + 1 }
                    } else if s.fate == Fate::Expired {
                        Stage::Expire { line: 0 }
                    } else {
                        Stage::MarkReserved
                    }
                }
            }
            Stage::Expire { line } => {
                let (sku, _) = s.reservations[line].clone();
                let now = at - Duration::days(1);
                run(
                    out,
                    self.inventory(&sku)?,
                    InventoryCommand::ExpireReservations { sku, now },
                )?;
                if line + 1 < s.reservations.len() {
                    Stage::Expire { line: line + 1 }
                } else {
                    s.reservations.clear();
                    s.reject_reason = "reservation expired";
                    Stage::Reject
                }
            }
            Stage::MarkReserved => {
                let reservations = s.reservations.iter().map(|(_, r)| *r).collect();
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let mark = OrderCommand::MarkStockReserved {
                    order_id,
                    reservations,
                    at,
                };
                run(out, order, mark)?;
                Stage::Authorize
            }
            Stage::Authorize => {
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let amount = order
                    .state
                    .total()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let payment_id = PaymentId::from_uuid(self.id());
                let mut payment = Stream::<Payment>::new(Payment::stream_id(&payment_id));
                let provider_ref = format!("psp-{}", payment_id.as_uuid().simple());
                if s.fate == Fate::Declined {
                    let decline = PaymentCommand::RecordDecline {
                        payment_id,
                        order_id,
                        amount,
                        provider_ref,
                        reason: "insufficient funds".to_owned(),
                        at,
                    };
                    run(out, &mut payment, decline)?;
                    s.reject_reason = "payment declined";
                    Stage::Release { line: 0 }
                } else {
                    let authorize = PaymentCommand::Authorize {
                        payment_id,
                        order_id,
                        amount,
                        provider_ref,
                        at,
                    };
                    run(out, &mut payment, authorize)?;
                    s.payment = Some(payment);
                    Stage::MarkAuthorized
                }
            }
            Stage::MarkAuthorized => {
                let (payment_id, amount) = payment_of(s)?;
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let mark = OrderCommand::MarkPaymentAuthorized {
                    order_id,
                    payment_id,
                    amount,
                    at,
                };
                run(out, order, mark)?;
                if s.fate == Fate::Cancelled {
                    Stage::Cancel
                } else {
                    Stage::Confirm
                }
            }
            Stage::Cancel => {
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let cancel = OrderCommand::Cancel {
                    order_id,
                    reason: "changed my mind".to_owned(),
                    at,
                };
                run(out, order, cancel)?;
                self.stats.orders_cancelled += 1;
                Stage::Release { line: 0 }
            }
            Stage::Confirm => {
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                run(out, order, OrderCommand::Confirm { order_id, at })?;
                self.stats.orders_confirmed += 1;
                Stage::Commit { line: 0 }
            }
            Stage::Commit { line } => {
                let (sku, reservation_id) = s.reservations[line].clone();
                let commit = InventoryCommand::CommitReservation {
                    sku: sku.clone(),
                    reservation_id,
                };
                run(out, self.inventory(&sku)?, commit)?;
                if line + 1 < s.reservations.len() {
                    Stage::Commit { line: line + 1 }
                } else {
                    Stage::CloseCart
                }
            }
            Stage::CloseCart => {
                let order_id = order_id(s)?;
                run(out, &mut s.cart, CartCommand::Close { cart_id, order_id })?;
                Stage::Capture
            }
            Stage::Capture => {
                let (payment_id, amount) = payment_of(s)?;
                let payment = s.payment.as_mut().ok_or(DomainError::NotFound {
                    aggregate: "payment",
                })?;
                run(
                    out,
                    payment,
                    PaymentCommand::Capture {
                        payment_id,
                        amount,
                        at,
                    },
                )?;
                match s.fate {
                    Fate::CancelledAfterConfirm => Stage::CancelConfirmed,
                    Fate::Confirmed => Stage::Done,
                    _ => Stage::Ship,
                }
            }
            Stage::CancelConfirmed => {
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let cancel = OrderCommand::Cancel {
                    order_id,
                    reason: "returned before shipping".to_owned(),
                    at,
                };
                run(out, order, cancel)?;
                self.stats.orders_cancelled += 1;
                Stage::Refund
            }
            Stage::Refund => {
                let (payment_id, amount) = payment_of(s)?;
                let refund_id = domain::RefundId::from_uuid(self.id());
                let payment = s.payment.as_mut().ok_or(DomainError::NotFound {
                    aggregate: "payment",
                })?;
                let refund = PaymentCommand::Refund {
                    payment_id,
                    refund_id,
                    amount,
                    at,
                };
                run(out, payment, refund)?;
                Stage::Done
            }
            Stage::Ship => {
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let ship = OrderCommand::Ship {
                    order_id,
                    tracking_number: Some(format!(
                        "TRK{}",
                        self.rng.random_range(100_000..999_999)
                    )),
                    at,
                };
                run(out, order, ship)?;
                if s.fate == Fate::Delivered {
                    Stage::Deliver
                } else {
                    Stage::Done
                }
            }
            Stage::Deliver => {
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                run(out, order, OrderCommand::MarkDelivered { order_id, at })?;
                self.stats.orders_delivered += 1;
                Stage::Done
            }
            Stage::Release { line } => {
                if let Some((sku, reservation_id)) = s.reservations.get(line).cloned() {
                    let release = InventoryCommand::ReleaseReservation {
                        sku: sku.clone(),
                        reservation_id,
                    };
                    run(out, self.inventory(&sku)?, release)?;
                }
                if line + 1 < s.reservations.len() {
                    Stage::Release { line: line + 1 }
                } else if s.fate == Fate::Cancelled {
                    Stage::VoidPayment
                } else {
                    Stage::Reject
                }
            }
            Stage::Reject => {
                let reason = s.reject_reason.to_owned();
                let order = order_stream(s)?;
                let order_id = order
                    .state
                    .id()
                    .ok_or(DomainError::NotFound { aggregate: "order" })?;
                let reject = OrderCommand::Reject {
                    order_id,
                    reason,
                    at,
                };
                run(out, order, reject)?;
                self.stats.orders_rejected += 1;
                Stage::Reopen
            }
            Stage::VoidPayment => {
                let (payment_id, _) = payment_of(s)?;
                let payment = s.payment.as_mut().ok_or(DomainError::NotFound {
                    aggregate: "payment",
                })?;
                run(out, payment, PaymentCommand::Void { payment_id, at })?;
                Stage::Reopen
            }
            Stage::Reopen => {
                run(out, &mut s.cart, CartCommand::Reopen { cart_id })?;
                Stage::AbandonCart
            }
            Stage::AbandonCart => {
                run(out, &mut s.cart, CartCommand::Abandon { cart_id })?;
                Stage::Done
            }
            Stage::Done => Stage::Done,
        };
        Ok(())
    }

    fn address(&mut self, customer: CustomerId) -> ShippingAddress {
        if let Some(address) = self.addresses.get(&customer) {
            return address.clone();
        }
        let n = self.rng.random_range(0..COUNTRIES.len());
        let input = AddressInput {
            name: format!("Customer {}", customer.as_uuid().as_u128() & 0xffff_ffff),
            line1: format!("{} Market Street", self.rng.random_range(1..200)),
            line2: None,
            city: CITIES[n].to_owned(),
            postal_code: format!("{}", self.rng.random_range(10_000..99_999)),
            country: COUNTRIES[n].to_owned(),
            email: None,
            phone: None,
        };
        let address = ShippingAddress::parse(input).expect("the generated address is valid");
        self.addresses.insert(customer, address.clone());
        address
    }
}

fn order_stream(s: &mut Session) -> Result<&mut Stream<Order>, DomainError> {
    s.order
        .as_mut()
        .ok_or(DomainError::NotFound { aggregate: "order" })
}

fn order_id(s: &Session) -> Result<OrderId, DomainError> {
    s.order
        .as_ref()
        .and_then(|o| o.state.id())
        .ok_or(DomainError::NotFound { aggregate: "order" })
}

fn payment_of(s: &Session) -> Result<(PaymentId, Money), DomainError> {
    let payment = s.payment.as_ref().ok_or(DomainError::NotFound {
        aggregate: "payment",
    })?;
    let id = payment.state.id().ok_or(DomainError::NotFound {
        aggregate: "payment",
    })?;
    let amount = payment.state.authorized().ok_or(DomainError::NotFound {
        aggregate: "payment",
    })?;
    Ok((id, amount))
}
