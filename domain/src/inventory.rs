//! Stock of one SKU across warehouses, and the reservations held against it. One
//! stream per SKU (`inventory-<sku>`), so this is the hot aggregate of a flash sale:
//! `decide` and `evolve` cost O(warehouses) plus O(1) hash lookups (O(log n) for the
//! expiry index), never a pass over all reservations or a clone of a map.
//!
//! Invariants, per warehouse: `on_hand >= reserved >= 0`, hence `available() >= 0`.
//! A reservation is all or nothing; it is allocated to warehouses by priority (lower
//! number first), then by most available stock, then by warehouse id (so the choice
//! is deterministic), and may be split across warehouses.
//!
//! Reservation ids are single use: `ReserveStock` with an id this stream has seen
//! before, whether the reservation is still active or has ended, is refused with
//! `ReservationExists` (never silently accepted), so a retried saga step learns that
//! its first attempt went through. Likewise releasing or committing an ended
//! reservation is `ReservationEnded` with the outcome, so a commit that lost the race
//! against expiry is visible to the caller.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    codec, text, Aggregate, DecodeError, DomainError, DomainEvent, OrderId, Quantity,
    ReservationId, Sku, WarehouseId,
};

/// The warehouse that stock received before events named one (schema v1) went to.
pub const DEFAULT_WAREHOUSE: &str = "main";
/// The priority of a warehouse until `SetWarehousePriority` says otherwise.
pub const DEFAULT_WAREHOUSE_PRIORITY: u32 = 100;
pub const MAX_WAREHOUSES_PER_SKU: u32 = 64;
/// At most this many reservations expire per `ExpireReservations` (oldest first), so
/// one command never becomes an unbounded append; the timer repeats the command while
/// [`Inventory::has_expired_reservations`] says so.
pub const EXPIRE_MAX_RESERVATIONS: usize = 1_000;
const MAX_REASON_CHARS: usize = 200;

/// Stock of the SKU in one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WarehouseStock {
    priority: u32,
    on_hand: u64,
    reserved: u64,
}

impl WarehouseStock {
    pub fn priority(&self) -> u32 {
        self.priority
    }
    pub fn on_hand(&self) -> u64 {
        self.on_hand
    }
    pub fn reserved(&self) -> u64 {
        self.reserved
    }
    pub fn available(&self) -> u64 {
        self.on_hand.saturating_sub(self.reserved)
    }
}

impl Default for WarehouseStock {
    fn default() -> Self {
        Self {
            priority: DEFAULT_WAREHOUSE_PRIORITY,
            on_hand: 0,
            reserved: 0,
        }
    }
}

/// The part of a reservation taken from one warehouse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub warehouse: WarehouseId,
    pub quantity: Quantity,
}

/// An active reservation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub order_id: OrderId,
    pub quantity: Quantity,
    pub expires_at: DateTime<Utc>,
    pub allocations: Vec<Allocation>,
}

/// How a reservation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReservationOutcome {
    Released,
    Committed,
    Expired,
}

impl fmt::Display for ReservationOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Released => "released",
            Self::Committed => "committed",
            Self::Expired => "expired",
        })
    }
}

/// Every command names its SKU: it selects the stream and appears in errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryCommand {
    ReceiveStock {
        sku: Sku,
        warehouse: WarehouseId,
        quantity: Quantity,
    },
    /// A correction after a count, damage or loss; `delta` is non-zero and at most
    /// [`Quantity::MAX`] either way, and may not take a warehouse below what it has
    /// reserved.
    AdjustStock {
        sku: Sku,
        warehouse: WarehouseId,
        delta: i64,
        reason: String,
    },
    SetWarehousePriority {
        sku: Sku,
        warehouse: WarehouseId,
        priority: u32,
    },
    ReserveStock {
        sku: Sku,
        reservation_id: ReservationId,
        order_id: OrderId,
        quantity: Quantity,
        expires_at: DateTime<Utc>,
    },
    ReleaseReservation {
        sku: Sku,
        reservation_id: ReservationId,
    },
    /// The order was confirmed or shipped: the reserved units leave on-hand stock.
    CommitReservation {
        sku: Sku,
        reservation_id: ReservationId,
    },
    /// Expires every reservation with `expires_at <= now`, oldest first, up to
    /// [`EXPIRE_MAX_RESERVATIONS`]; nothing to expire decides to no events.
    ExpireReservations { sku: Sku, now: DateTime<Utc> },
}

impl InventoryCommand {
    pub fn sku(&self) -> &Sku {
        match self {
            Self::ReceiveStock { sku, .. }
            | Self::AdjustStock { sku, .. }
            | Self::SetWarehousePriority { sku, .. }
            | Self::ReserveStock { sku, .. }
            | Self::ReleaseReservation { sku, .. }
            | Self::CommitReservation { sku, .. }
            | Self::ExpireReservations { sku, .. } => sku,
        }
    }

    pub fn stream_id(&self) -> String {
        Inventory::stream_id(self.sku())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::ReceiveStock { .. } => "ReceiveStock",
            Self::AdjustStock { .. } => "AdjustStock",
            Self::SetWarehousePriority { .. } => "SetWarehousePriority",
            Self::ReserveStock { .. } => "ReserveStock",
            Self::ReleaseReservation { .. } => "ReleaseReservation",
            Self::CommitReservation { .. } => "CommitReservation",
            Self::ExpireReservations { .. } => "ExpireReservations",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InventoryEvent {
    /// Schema v2; v1 had no `warehouse` and is upcast to [`DEFAULT_WAREHOUSE`].
    StockReceived {
        warehouse: WarehouseId,
        quantity: Quantity,
    },
    StockAdjusted {
        warehouse: WarehouseId,
        delta: i64,
        reason: String,
    },
    WarehousePrioritySet {
        warehouse: WarehouseId,
        priority: u32,
    },
    StockReserved {
        reservation_id: ReservationId,
        order_id: OrderId,
        quantity: Quantity,
        expires_at: DateTime<Utc>,
        allocations: Vec<Allocation>,
    },
    ReservationReleased {
        reservation_id: ReservationId,
        order_id: OrderId,
        allocations: Vec<Allocation>,
    },
    ReservationCommitted {
        reservation_id: ReservationId,
        order_id: OrderId,
        allocations: Vec<Allocation>,
    },
    ReservationExpired {
        reservation_id: ReservationId,
        order_id: OrderId,
        allocations: Vec<Allocation>,
        expired_at: DateTime<Utc>,
    },
}

impl InventoryEvent {
    /// Every event type with its current schema version.
    pub const TYPES: &'static [(&'static str, u32)] = &[
        ("StockReceived", 2),
        ("StockAdjusted", 1),
        ("WarehousePrioritySet", 1),
        ("StockReserved", 1),
        ("ReservationReleased", 1),
        ("ReservationCommitted", 1),
        ("ReservationExpired", 1),
    ];
}

/// `StockReceived` v1 was `{"quantity": n}`: all stock lived in one warehouse.
fn upcast(
    event_type: &str,
    schema_version: u32,
    data: Value,
) -> Option<Result<Value, DecodeError>> {
    match (event_type, schema_version) {
        ("StockReceived", 1) => Some(match data {
            Value::Object(mut fields) => {
                fields
                    .entry("warehouse")
                    .or_insert_with(|| Value::from(DEFAULT_WAREHOUSE));
                Ok(Value::Object(fields))
            }
            other => Err(DecodeError::Malformed {
                event_type: event_type.to_owned(),
                reason: format!("expected an object, got {other}"),
            }),
        }),
        _ => None,
    }
}

impl DomainEvent for InventoryEvent {
    fn event_type(&self) -> &'static str {
        match self {
            Self::StockReceived { .. } => "StockReceived",
            Self::StockAdjusted { .. } => "StockAdjusted",
            Self::WarehousePrioritySet { .. } => "WarehousePrioritySet",
            Self::StockReserved { .. } => "StockReserved",
            Self::ReservationReleased { .. } => "ReservationReleased",
            Self::ReservationCommitted { .. } => "ReservationCommitted",
            Self::ReservationExpired { .. } => "ReservationExpired",
        }
    }

    fn schema_version(&self) -> u32 {
        match self {
            Self::StockReceived { .. } => 2,
            Self::StockAdjusted { .. }
            | Self::WarehousePrioritySet { .. }
            | Self::StockReserved { .. }
            | Self::ReservationReleased { .. }
            | Self::ReservationCommitted { .. }
            | Self::ReservationExpired { .. } => 1,
        }
    }

    fn to_data(&self) -> Value {
        codec::to_data(self)
    }

    fn from_stored(
        event_type: &str,
        schema_version: u32,
        data: Value,
    ) -> Result<Self, DecodeError> {
        codec::from_stored(Self::TYPES, event_type, schema_version, data, upcast)
    }
}

/// The state of one `inventory-<sku>` stream. The SKU itself is not kept: it is the
/// stream id, and every command repeats it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    warehouses: BTreeMap<WarehouseId, WarehouseStock>,
    /// Active reservations. Only ever looked up by id, never iterated in `decide`, so
    /// the hash order cannot leak into a decision.
    reservations: HashMap<ReservationId, Reservation>,
    /// Active reservations ordered by expiry, for `ExpireReservations`.
    expiry_index: BTreeSet<(DateTime<Utc>, ReservationId)>,
    /// Every reservation that has ended: ids are single use.
    ended: HashMap<ReservationId, ReservationOutcome>,
}

impl Inventory {
    pub fn stream_id(sku: &Sku) -> String {
        crate::stream_name(Self::CATEGORY, sku.as_str())
    }

    /// On-hand stock minus reserved stock, over all warehouses.
    pub fn available(&self) -> u64 {
        self.warehouses
            .values()
            .map(WarehouseStock::available)
            .sum()
    }
    pub fn on_hand(&self) -> u64 {
        self.warehouses.values().map(|w| w.on_hand).sum()
    }
    pub fn reserved(&self) -> u64 {
        self.warehouses.values().map(|w| w.reserved).sum()
    }
    pub fn warehouse(&self, id: &WarehouseId) -> Option<&WarehouseStock> {
        self.warehouses.get(id)
    }
    /// Warehouses in id order.
    pub fn warehouses(&self) -> impl Iterator<Item = (&WarehouseId, &WarehouseStock)> {
        self.warehouses.iter()
    }
    pub fn reservation(&self, id: &ReservationId) -> Option<&Reservation> {
        self.reservations.get(id)
    }
    /// How a reservation ended; `None` while it is active or if it never existed.
    pub fn reservation_outcome(&self, id: &ReservationId) -> Option<ReservationOutcome> {
        self.ended.get(id).copied()
    }
    pub fn active_reservations(&self) -> usize {
        self.reservations.len()
    }
    /// When the next active reservation expires (for the deadline timer).
    pub fn next_expiry(&self) -> Option<DateTime<Utc>> {
        self.expiry_index.first().map(|(at, _)| *at)
    }
    pub fn has_expired_reservations(&self, now: DateTime<Utc>) -> bool {
        self.next_expiry().is_some_and(|at| at <= now)
    }

    /// Whether `warehouse` can be added without passing the bound.
    fn check_room_for(&self, warehouse: &WarehouseId) -> Result<(), DomainError> {
        if self.warehouses.contains_key(warehouse)
            || self.warehouses.len() < MAX_WAREHOUSES_PER_SKU as usize
        {
            Ok(())
        } else {
            Err(DomainError::LimitExceeded {
                limit: "warehouses",
                max: MAX_WAREHOUSES_PER_SKU,
            })
        }
    }

    fn active(&self, id: &ReservationId) -> Result<&Reservation, DomainError> {
        if let Some(reservation) = self.reservations.get(id) {
            return Ok(reservation);
        }
        Err(match self.ended.get(id) {
            Some(&outcome) => DomainError::ReservationEnded {
                reservation_id: *id,
                outcome,
            },
            None => DomainError::ReservationUnknown {
                reservation_id: *id,
            },
        })
    }

    fn allocate(&self, sku: &Sku, quantity: Quantity) -> Result<Vec<Allocation>, DomainError> {
        let available = self.available();
        if available < u64::from(quantity.get()) {
            return Err(DomainError::OutOfStock {
                sku: sku.clone(),
                requested: quantity.get(),
                available,
            });
        }
        let mut candidates: Vec<(&WarehouseId, &WarehouseStock)> = self
            .warehouses
            .iter()
            .filter(|(_, w)| w.available() > 0)
            .collect();
        candidates.sort_unstable_by(|(a_id, a), (b_id, b)| {
            a.priority
                .cmp(&b.priority)
                .then(b.available().cmp(&a.available()))
                .then(a_id.cmp(b_id))
        });
        let mut remaining = u64::from(quantity.get());
        let mut allocations = Vec::with_capacity(candidates.len().min(4));
        for (warehouse, stock) in candidates {
            if remaining == 0 {
                break;
            }
            let take = remaining.min(stock.available());
            allocations.push(Allocation {
                warehouse: warehouse.clone(),
                quantity: Quantity::try_from(take)?,
            });
            remaining -= take;
        }
        debug_assert_eq!(remaining, 0, "total available covered the request");
        Ok(allocations)
    }

    /// Ends an active reservation: its units stop being reserved and, when committed,
    /// leave on-hand stock too.
    fn end_reservation(
        &mut self,
        id: &ReservationId,
        allocations: &[Allocation],
        outcome: ReservationOutcome,
    ) {
        if let Some(reservation) = self.reservations.remove(id) {
            self.expiry_index.remove(&(reservation.expires_at, *id));
        }
        for allocation in allocations {
            if let Some(stock) = self.warehouses.get_mut(&allocation.warehouse) {
                let units = u64::from(allocation.quantity.get());
                stock.reserved = stock.reserved.saturating_sub(units);
                if outcome == ReservationOutcome::Committed {
                    stock.on_hand = stock.on_hand.saturating_sub(units);
                }
                debug_assert!(stock.reserved <= stock.on_hand);
            }
        }
        self.ended.insert(*id, outcome);
    }

    /// Applies `change` to a warehouse, creating it (default priority, no stock) on
    /// first mention. Looks up before inserting so the usual case allocates no key.
    fn update_warehouse(&mut self, id: &WarehouseId, change: impl FnOnce(&mut WarehouseStock)) {
        match self.warehouses.get_mut(id) {
            Some(stock) => change(stock),
            None => {
                let mut stock = WarehouseStock::default();
                change(&mut stock);
                self.warehouses.insert(id.clone(), stock);
            }
        }
    }
}

impl Aggregate for Inventory {
    type Command = InventoryCommand;
    type Event = InventoryEvent;
    const CATEGORY: &'static str = "inventory";

    fn decide(&self, command: &InventoryCommand) -> Result<Vec<InventoryEvent>, DomainError> {
        match command {
            InventoryCommand::ReceiveStock {
                warehouse,
                quantity,
                ..
            } => {
                self.check_room_for(warehouse)?;
                let on_hand = self.warehouses.get(warehouse).map_or(0, |w| w.on_hand);
                on_hand
                    .checked_add(u64::from(quantity.get()))
                    .ok_or(DomainError::Overflow)?;
                self.on_hand()
                    .checked_add(u64::from(quantity.get()))
                    .ok_or(DomainError::Overflow)?;
                Ok(vec![InventoryEvent::StockReceived {
                    warehouse: warehouse.clone(),
                    quantity: *quantity,
                }])
            }
            InventoryCommand::AdjustStock {
                warehouse,
                delta,
                reason,
                ..
            } => {
                if *delta == 0 || delta.unsigned_abs() > u64::from(Quantity::MAX) {
                    return Err(DomainError::QuantityOutOfRange {
                        value: i128::from(*delta),
                        max: Quantity::MAX,
                    });
                }
                text::required("reason", reason, MAX_REASON_CHARS)?;
                let stock = self.warehouses.get(warehouse);
                if *delta > 0 {
                    self.check_room_for(warehouse)?;
                    let on_hand = stock.map_or(0, |w| w.on_hand);
                    on_hand
                        .checked_add(delta.unsigned_abs())
                        .ok_or(DomainError::Overflow)?;
                    self.on_hand()
                        .checked_add(delta.unsigned_abs())
                        .ok_or(DomainError::Overflow)?;
                } else {
                    let available = stock.map_or(0, WarehouseStock::available);
                    if delta.unsigned_abs() > available {
                        return Err(DomainError::AdjustmentExceedsAvailable {
                            warehouse: warehouse.clone(),
                            delta: *delta,
                            available,
                        });
                    }
                }
                Ok(vec![InventoryEvent::StockAdjusted {
                    warehouse: warehouse.clone(),
                    delta: *delta,
                    reason: reason.clone(),
                }])
            }
            InventoryCommand::SetWarehousePriority {
                warehouse,
                priority,
                ..
            } => {
                self.check_room_for(warehouse)?;
                Ok(vec![InventoryEvent::WarehousePrioritySet {
                    warehouse: warehouse.clone(),
                    priority: *priority,
                }])
            }
            InventoryCommand::ReserveStock {
                sku,
                reservation_id,
                order_id,
                quantity,
                expires_at,
            } => {
                if self.reservations.contains_key(reservation_id)
                    || self.ended.contains_key(reservation_id)
                {
                    return Err(DomainError::ReservationExists {
                        reservation_id: *reservation_id,
                    });
                }
                let allocations = self.allocate(sku, *quantity)?;
                Ok(vec![InventoryEvent::StockReserved {
                    reservation_id: *reservation_id,
                    order_id: *order_id,
                    quantity: *quantity,
                    expires_at: *expires_at,
                    allocations,
                }])
            }
            InventoryCommand::ReleaseReservation { reservation_id, .. } => {
                let reservation = self.active(reservation_id)?;
                Ok(vec![InventoryEvent::ReservationReleased {
                    reservation_id: *reservation_id,
                    order_id: reservation.order_id,
                    allocations: reservation.allocations.clone(),
                }])
            }
            InventoryCommand::CommitReservation { reservation_id, .. } => {
                let reservation = self.active(reservation_id)?;
                Ok(vec![InventoryEvent::ReservationCommitted {
                    reservation_id: *reservation_id,
                    order_id: reservation.order_id,
                    allocations: reservation.allocations.clone(),
                }])
            }
            InventoryCommand::ExpireReservations { now, .. } => Ok(self
                .expiry_index
                .iter()
                .take_while(|(expires_at, _)| expires_at <= now)
                .take(EXPIRE_MAX_RESERVATIONS)
                .filter_map(|(_, id)| {
                    let reservation = self.reservations.get(id)?;
                    Some(InventoryEvent::ReservationExpired {
                        reservation_id: *id,
                        order_id: reservation.order_id,
                        allocations: reservation.allocations.clone(),
                        expired_at: *now,
                    })
                })
                .collect()),
        }
    }

    fn evolve(mut self, event: &InventoryEvent) -> Self {
        match event {
            InventoryEvent::StockReceived {
                warehouse,
                quantity,
            } => {
                self.update_warehouse(warehouse, |stock| {
                    stock.on_hand = stock.on_hand.saturating_add(u64::from(quantity.get()));
                });
            }
            InventoryEvent::StockAdjusted {
                warehouse, delta, ..
            } => {
                self.update_warehouse(warehouse, |stock| {
                    stock.on_hand = stock.on_hand.saturating_add_signed(*delta);
                    debug_assert!(stock.reserved <= stock.on_hand);
                });
            }
            InventoryEvent::WarehousePrioritySet {
                warehouse,
                priority,
            } => {
                self.update_warehouse(warehouse, |stock| stock.priority = *priority);
            }
            InventoryEvent::StockReserved {
                reservation_id,
                order_id,
                quantity,
                expires_at,
                allocations,
            } => {
                for allocation in allocations {
                    self.update_warehouse(&allocation.warehouse, |stock| {
                        stock.reserved = stock
                            .reserved
                            .saturating_add(u64::from(allocation.quantity.get()));
                        debug_assert!(stock.reserved <= stock.on_hand);
                    });
                }
                self.expiry_index.insert((*expires_at, *reservation_id));
                self.reservations.insert(
                    *reservation_id,
                    Reservation {
                        order_id: *order_id,
                        quantity: *quantity,
                        expires_at: *expires_at,
                        allocations: allocations.clone(),
                    },
                );
            }
            InventoryEvent::ReservationReleased {
                reservation_id,
                allocations,
                ..
            } => {
                self.end_reservation(reservation_id, allocations, ReservationOutcome::Released);
            }
            InventoryEvent::ReservationCommitted {
                reservation_id,
                allocations,
                ..
            } => {
                self.end_reservation(reservation_id, allocations, ReservationOutcome::Committed);
            }
            InventoryEvent::ReservationExpired {
                reservation_id,
                allocations,
                ..
            } => {
                self.end_reservation(reservation_id, allocations, ReservationOutcome::Expired);
            }
        }
        self
    }
}
