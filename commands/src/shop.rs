//! The command side of the whole shop: one handler per aggregate type, and the
//! commands that need more than one aggregate (a cart line priced from the catalog,
//! an order placed from a checked-out cart). This is what the HTTP layer and the
//! sagas call.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::{
    Cart, CartId, CartOwner, CartStatus, Checkout, DomainError, Inventory, Order, OrderCommand,
    OrderEvent, OrderId, Payment, Product, ShippingAddress,
};
use eventstore::privacy::{KeyVault, PrivateStore};
use eventstore::{EventStore, PostgresStore};

use crate::cart::CartFactsMemory;
use crate::privacy::PERSONAL_DATA;
use crate::snapshot::{MemorySnapshots, PostgresSnapshots, SnapshotStore};
use crate::{CommandContext, CommandError, Committed, Handler, Limits, Loaded};

/// Cloning shares the handlers, their stream tasks and their caches.
#[derive(Clone)]
pub struct Commands {
    pub(crate) products: Handler<Product>,
    pub(crate) inventory: Handler<Inventory>,
    pub(crate) carts: Handler<Cart>,
    pub(crate) orders: Handler<Order>,
    pub(crate) payments: Handler<Payment>,
    pub(crate) checkouts: Handler<Checkout>,
    pub(crate) cart_facts: Arc<CartFactsMemory>,
}

/// Places the order for a checked-out cart: the lines and their prices come from
/// the cart (which took them from the catalog), never from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaceOrder {
    pub order_id: OrderId,
    pub cart_id: CartId,
    pub shipping_address: ShippingAddress,
    pub placed_at: DateTime<Utc>,
}

impl Commands {
    pub fn new(
        store: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        limits: Limits,
    ) -> Self {
        Commands {
            products: Handler::new(store.clone(), snapshots.clone(), limits.clone()),
            inventory: Handler::new(store.clone(), snapshots.clone(), limits.clone()),
            carts: Handler::new(store.clone(), snapshots.clone(), limits.clone()),
            orders: Handler::new(store.clone(), snapshots.clone(), limits.clone()),
            payments: Handler::new(store.clone(), snapshots.clone(), limits.clone()),
            checkouts: Handler::new(store, snapshots, limits),
            cart_facts: Arc::default(),
        }
    }

    /// On the PostgreSQL log, with snapshots in its database (the command side's
    /// migrations run here).
    /// Personal fields are sealed on append and opened on load (see
    /// [`Commands::on_postgres_private`]).
    pub async fn on_postgres(store: PostgresStore, limits: Limits) -> Result<Self, CommandError> {
        let vault = KeyVault::connect(store.pool().clone()).await?;
        Self::on_postgres_private(store, vault, limits).await
    }

    /// On the PostgreSQL log, appending through a [`PrivateStore`] that seals the
    /// fields of [`PERSONAL_DATA`] with `vault`'s keys (share the vault with whoever
    /// forgets customers, so its cache drops a destroyed key at once).
    pub async fn on_postgres_private(
        store: PostgresStore,
        vault: KeyVault,
        limits: Limits,
    ) -> Result<Self, CommandError> {
        let snapshots = PostgresSnapshots::connect(store.pool().clone()).await?;
        let store = PrivateStore::new(Arc::new(store), vault, PERSONAL_DATA);
        Ok(Self::new(Arc::new(store), Arc::new(snapshots), limits))
    }

    /// On any store, with snapshots kept in memory (tests, simulation).
    pub fn with_memory_snapshots(store: Arc<dyn EventStore>, limits: Limits) -> Self {
        Self::new(store, Arc::new(MemorySnapshots::new()), limits)
    }

    pub fn products(&self) -> &Handler<Product> {
        &self.products
    }

    pub fn inventory(&self) -> &Handler<Inventory> {
        &self.inventory
    }

    /// Order commands. `PlaceOrder` should come from [`Commands::place_order`], which
    /// takes the lines from the cart.
    pub fn orders(&self) -> &Handler<Order> {
        &self.orders
    }

    pub fn payments(&self) -> &Handler<Payment> {
        &self.payments
    }

    /// The checkout saga's own streams.
    pub fn checkouts(&self) -> &Handler<Checkout> {
        &self.checkouts
    }

    pub async fn load_cart(&self, cart_id: CartId) -> Result<Loaded<Cart>, CommandError> {
        self.carts.load(&Cart::stream_id(&cart_id)).await
    }

    /// The cart as this process holds it, without asking the log (see
    /// [`Handler::peek`]).
    pub async fn peek_cart(&self, cart_id: CartId) -> Result<Loaded<Cart>, CommandError> {
        self.carts.peek(&Cart::stream_id(&cart_id)).await
    }

    /// Places the order of a checked-out customer cart, with the cart's lines, as
    /// the cart is in this process, checked against the log by the append (see
    /// [`Handler::execute_decided_on`]): the cart costs no read of the log when this
    /// process holds it current, as it does right after checking it out.
    pub async fn place_order(
        &self,
        order: PlaceOrder,
        context: &CommandContext,
    ) -> Result<Committed<OrderEvent>, CommandError> {
        self.orders
            .execute_decided_on(
                &self.carts,
                &Cart::stream_id(&order.cart_id),
                context,
                |cart| order_of(cart, &order),
            )
            .await
    }
}

/// The order a checked-out customer cart places, or why it cannot.
fn order_of(cart: &Cart, order: &PlaceOrder) -> Result<OrderCommand, CommandError> {
    let (Some(owner), Some(status)) = (cart.owner(), cart.status()) else {
        return Err(DomainError::NotFound { aggregate: "cart" }.into());
    };
    match status {
        CartStatus::CheckedOut => {}
        CartStatus::Open | CartStatus::Abandoned | CartStatus::Closed => {
            return Err(DomainError::InvalidTransition {
                from: status.as_str(),
                command: "PlaceOrder",
            }
            .into())
        }
    }
    let customer_id = match owner {
        CartOwner::Customer(customer_id) => customer_id,
        CartOwner::Guest(_) => {
            return Err(DomainError::Invalid {
                field: "owner",
                reason: "a guest cart is merged into a customer's cart before ordering".into(),
            }
            .into())
        }
    };
    Ok(OrderCommand::PlaceOrder {
        order_id: order.order_id,
        customer_id,
        cart_id: order.cart_id,
        lines: cart.lines().to_vec(),
        shipping_address: order.shipping_address.clone(),
        placed_at: order.placed_at,
    })
}
