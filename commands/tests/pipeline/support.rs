//! Each case runs twice: on PostgreSQL (a fresh database per test) and on the
//! memory store. A case takes a [`Backend`] and builds its [`Env`], so a case that
//! needs other limits or a second process can ask for them.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use commands::{CommandContext, CommandError, Commands, Limits, PostgresSnapshots, SnapshotStore};
use domain::{
    AddressInput, Aggregate, Currency, DomainEvent, Inventory, InventoryCommand, Money,
    PriceTarget, ProductCommand, ProductId, Quantity, ShippingAddress, Sku, SkuVariant,
    WarehouseId,
};
use eventstore::{
    Direction, EventStore, MemoryStore, PostgresConfig, PostgresStore, RecordedEvent,
    ScratchDatabase,
};
use uuid::Uuid;

/// Generates, for each case, one test on PostgreSQL and one on the memory store.
macro_rules! on_both_stores {
    ($($case:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::Backend::Postgres).await;
                }
            )*
        }
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(crate::support::Backend::Memory).await;
                }
            )*
        }
    };
}
pub(crate) use on_both_stores;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Memory,
}

impl Backend {
    pub async fn env(self) -> Env {
        self.env_with(Limits::default()).await
    }

    pub async fn env_with(self, limits: Limits) -> Env {
        self.env_wrapped(limits, |store| store).await
    }

    /// An environment whose command side sees the store through `wrap` (to inject
    /// faults); `Env::store` is the unwrapped store.
    pub async fn env_wrapped(
        self,
        limits: Limits,
        wrap: impl FnOnce(Arc<dyn EventStore>) -> Arc<dyn EventStore>,
    ) -> Env {
        let (store, snapshots, database): (Arc<dyn EventStore>, Arc<dyn SnapshotStore>, _) =
            match self {
                Backend::Postgres => {
                    let database = eventstore::testing::test_database()
                        .await
                        .expect("a test database");
                    let store = PostgresStore::connect(PostgresConfig::new(database.url.clone()))
                        .await
                        .expect("connect the store");
                    let snapshots = PostgresSnapshots::connect(store.pool().clone())
                        .await
                        .expect("migrate the snapshot table");
                    (Arc::new(store), Arc::new(snapshots), Some(database))
                }
                Backend::Memory => (
                    Arc::new(MemoryStore::new()),
                    Arc::new(commands::MemorySnapshots::new()),
                    None,
                ),
            };
        let commands = Commands::new(wrap(store.clone()), snapshots.clone(), limits.clone());
        Env {
            commands,
            store,
            snapshots,
            limits,
            _database: database,
        }
    }
}

pub struct Env {
    pub commands: Commands,
    pub store: Arc<dyn EventStore>,
    pub snapshots: Arc<dyn SnapshotStore>,
    pub limits: Limits,
    _database: Option<ScratchDatabase>,
}

impl Env {
    /// Another process on the same log and snapshots: its own stream tasks and cache.
    pub fn another_process(&self) -> Commands {
        Commands::new(
            self.store.clone(),
            self.snapshots.clone(),
            self.limits.clone(),
        )
    }

    pub async fn stream(&self, stream_id: &str) -> Vec<RecordedEvent> {
        self.store
            .read_stream(stream_id, 1, Direction::Forward, 1_000_000)
            .await
            .expect("read the stream")
    }

    pub async fn event_types(&self, stream_id: &str) -> Vec<String> {
        self.stream(stream_id)
            .await
            .into_iter()
            .map(|e| e.event_type)
            .collect()
    }

    /// The state rebuilt from the log alone, without the command side.
    pub async fn replay<A: Aggregate>(&self, stream_id: &str) -> A {
        let events: Vec<A::Event> = self
            .stream(stream_id)
            .await
            .iter()
            .map(|e| {
                A::Event::from_stored(&e.event_type, e.schema_version, e.data.clone())
                    .expect("a readable event")
            })
            .collect();
        A::replay(&events)
    }

    /// A published product with one SKU per code, priced at `product_price` for the
    /// whole product.
    pub async fn published_product(&self, codes: &[&str], product_price: Money) -> ProductId {
        let product_id: ProductId = Uuid::now_v7().into();
        let products = self.commands.products();
        products
            .execute(create_product(product_id, codes), &ctx())
            .await
            .expect("create the product");
        products
            .execute(
                ProductCommand::SetPrice {
                    product_id,
                    target: PriceTarget::Product,
                    price: product_price,
                },
                &ctx(),
            )
            .await
            .expect("price the product");
        products
            .execute(ProductCommand::Publish { product_id }, &ctx())
            .await
            .expect("publish the product");
        product_id
    }

    pub async fn receive(&self, code: &str, quantity: u32) {
        self.commands
            .inventory()
            .execute(
                InventoryCommand::ReceiveStock {
                    sku: sku(code),
                    warehouse: warehouse("main"),
                    quantity: qty(quantity),
                },
                &ctx(),
            )
            .await
            .expect("receive stock");
    }

    pub async fn inventory(&self, code: &str) -> Inventory {
        self.commands
            .inventory()
            .load(&Inventory::stream_id(&sku(code)))
            .await
            .expect("load the inventory")
            .state
    }
}

pub fn create_product(product_id: ProductId, codes: &[&str]) -> ProductCommand {
    ProductCommand::CreateProduct {
        product_id,
        title: "Trail shoe".into(),
        description: "Light and grippy.".into(),
        brand: "Acme".into(),
        category: vec!["Shoes".into(), "Running".into()],
        skus: codes
            .iter()
            .map(|code| SkuVariant {
                sku: sku(code),
                attributes: [("size".to_owned(), "42".to_owned())].into(),
            })
            .collect(),
    }
}

pub fn reserve(code: &str, quantity: u32) -> InventoryCommand {
    InventoryCommand::ReserveStock {
        sku: sku(code),
        reservation_id: Uuid::now_v7().into(),
        order_id: Uuid::now_v7().into(),
        quantity: qty(quantity),
        expires_at: at(3_600),
    }
}

pub fn ctx() -> CommandContext {
    CommandContext::new("customer:test")
}

pub fn sku(code: &str) -> Sku {
    Sku::parse(code).expect("a valid SKU")
}

pub fn warehouse(code: &str) -> WarehouseId {
    WarehouseId::parse(code).expect("a valid warehouse id")
}

pub fn qty(n: u32) -> Quantity {
    Quantity::new(n).expect("a valid quantity")
}

pub fn currency(code: &str) -> Currency {
    Currency::parse(code).expect("a valid currency")
}

pub fn eur(minor: i64) -> Money {
    Money::new(minor, currency("EUR"))
}

pub fn usd(minor: i64) -> Money {
    Money::new(minor, currency("USD"))
}

/// A point in time, `secs` seconds after a fixed epoch.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0)
        .single()
        .expect("a valid timestamp")
}

pub fn address() -> ShippingAddress {
    ShippingAddress::parse(AddressInput {
        name: "Ada Lovelace".into(),
        line1: "12 Analytical Row".into(),
        line2: None,
        city: "London".into(),
        postal_code: "N1 9GU".into(),
        country: "GB".into(),
        email: None,
        phone: None,
    })
    .expect("a valid address")
}

/// The domain refusal inside a command error, or a panic naming what came instead.
pub fn rejection<T: std::fmt::Debug>(outcome: Result<T, CommandError>) -> domain::DomainError {
    match outcome {
        Err(CommandError::Rejected(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    }
}
