//! The read side of the engine: projections that fold the log into read models,
//! plain PostgreSQL tables in the schema `read_models` that analysts and the API
//! query.
//!
//! A projection ([`Projection`]) is a named reader of the log with its own checkpoint
//! row. The [`Runner`] applies a batch of events and moves the checkpoint in the same
//! transaction, so a worker killed at any instant neither loses nor repeats an event.
//! Within a batch, events are folded in memory per row (each affected row loaded
//! once, or taken from a cache of rows this runner wrote) and written back with one
//! bulk statement per table, never one statement per event. Several processes may
//! run the same projection; a PostgreSQL advisory lock lets one apply it at a time,
//! and the checkpoint check inside every batch makes a stale holder harmless. An
//! event a projection cannot apply stops that projection only, with its position
//! and error in [`status`].
//!
//! [`rebuild`] fills shadow tables from position 0 in one pass over the log for every
//! projection asked for, catches up to the head, and swaps them in within one
//! transaction while the live projection keeps serving. [`CheckpointWatch`] lets a
//! query wait until a read model has passed the position a command wrote
//! (read-your-writes). The query modules ([`catalog`], [`inventory`], [`carts`],
//! [`orders`], [`sales`]) page, filter and sort the read models.
//!
//! Dependencies: `domain` (the events) and `eventstore` (reading the log); the read
//! models' tables are this crate's own (`migrations/`).

mod apply;
mod bulk;
mod cache;
pub mod carts;
pub mod catalog;
mod decode;
mod error;
pub mod inventory;
mod lease;
mod log;
pub mod orders;
mod page;
mod privacy;
mod rebuild;
mod runner;
pub mod sales;
mod schema;
pub mod search;
mod status;
mod wait;
pub mod workload;

use std::fmt;
use std::str::FromStr;

use serde::Serialize;

pub use error::ProjectionError;
pub use page::{Page, PageRequest, PAGE_MAX_ITEMS, PAGE_MAX_OFFSET};
pub use privacy::erase_customer;
pub use rebuild::{
    rebuild, RebuildOptions, RebuildPhase, RebuildProgress, RebuildReport,
    REBUILD_BATCH_MAX_EVENTS, REBUILD_WRITE_MAX_EVENTS,
};
pub use runner::{Runner, RunnerConfig};
pub use schema::{migrate, MIGRATION_COMPONENT, PROJECTIONS_MIGRATIONS, READ_MODELS_SCHEMA};
pub use status::{
    retry, status, ProjectionState, ProjectionStatus, RebuildStatus, CATCHING_UP_LAG_EVENTS,
};
pub use wait::{CheckpointWatch, CHECKPOINT_POLL_INTERVAL};

/// The projections this crate keeps, each owning the tables it lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Projection {
    /// Products, SKUs, prices per currency, status, and stock per SKU.
    Catalog,
    /// Stock per SKU and warehouse: on hand, reserved, available.
    Inventory,
    /// Carts with their current lines and totals.
    Carts,
    /// Orders, their lines and transition times, and customer order history.
    Orders,
    /// Units and revenue per day, SKU and currency; cancellations.
    Sales,
}

impl Projection {
    pub const ALL: [Projection; 5] = [
        Projection::Catalog,
        Projection::Inventory,
        Projection::Carts,
        Projection::Orders,
        Projection::Sales,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Projection::Catalog => "catalog",
            Projection::Inventory => "inventory",
            Projection::Carts => "carts",
            Projection::Orders => "orders",
            Projection::Sales => "sales",
        }
    }

    pub fn parse(name: &str) -> Result<Self, ProjectionError> {
        Projection::ALL
            .into_iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| ProjectionError::UnknownProjection(name.to_owned()))
    }

    /// The tables of this projection in `read_models` (swapped together by a rebuild).
    pub fn tables(self) -> &'static [&'static str] {
        match self {
            Projection::Catalog => &[
                "catalog_products",
                "catalog_skus",
                "catalog_prices",
                "catalog_stock",
            ],
            Projection::Inventory => &["inventory_levels"],
            Projection::Carts => &["carts", "cart_lines"],
            Projection::Orders => &["orders", "order_lines", "customer_orders"],
            Projection::Sales => &["sales_daily", "sales_open_orders"],
        }
    }

    /// The stream categories this projection reads.
    pub(crate) fn categories(self) -> decode::Categories {
        use decode::Category;
        match self {
            Projection::Catalog => Category::Product | Category::Inventory,
            Projection::Inventory => Category::Inventory.into(),
            Projection::Carts => Category::Cart.into(),
            Projection::Orders | Projection::Sales => Category::Order.into(),
        }
    }
}

impl fmt::Display for Projection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Projection {
    type Err = ProjectionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}
