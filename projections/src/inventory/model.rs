//! The `inventory` projection: stock per SKU and warehouse.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use domain::{Allocation, InventoryEvent, DEFAULT_WAREHOUSE_PRIORITY};

use crate::apply::{poison, ApplyError, ReadModel, ROW_CACHE_MAX_ROWS};
use crate::cache::BatchRows;
use crate::decode::{Decoded, ShopEvent};

const LOAD: &str = "SELECT sku, warehouse, priority, on_hand, reserved, updated_at, position \
     FROM {schema}.inventory_levels WHERE sku = ANY($1)";

const UPSERT: &str = "INSERT INTO {schema}.inventory_levels \
     (sku, warehouse, priority, on_hand, reserved, updated_at, position) \
     SELECT * FROM unnest($1::text[], $2::text[], $3::int4[], $4::int8[], $5::int8[], \
                          $6::timestamptz[], $7::int8[]) \
     ON CONFLICT (sku, warehouse) DO UPDATE SET priority = EXCLUDED.priority, \
     on_hand = EXCLUDED.on_hand, reserved = EXCLUDED.reserved, \
     updated_at = EXCLUDED.updated_at, position = EXCLUDED.position";

/// Stock of one warehouse, as in `inventory_levels`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Level {
    pub priority: i32,
    pub on_hand: i64,
    pub reserved: i64,
    pub updated_at: DateTime<Utc>,
    pub position: i64,
    /// Changed by the batch being applied.
    pub dirty: bool,
}

/// Every warehouse of one SKU.
pub(crate) type Levels = BTreeMap<String, Level>;

/// How one inventory event changes a SKU's warehouses: `(warehouse, on_hand delta,
/// reserved delta, new priority)`. Shared with the catalog's stock per SKU.
pub(crate) fn stock_changes(event: &InventoryEvent) -> Vec<(&str, i64, i64, Option<u32>)> {
    let units = |a: &Allocation| i64::from(a.quantity.get());
    match event {
        InventoryEvent::StockReceived {
            warehouse,
            quantity,
        } => vec![(warehouse.as_str(), i64::from(quantity.get()), 0, None)],
        InventoryEvent::StockAdjusted {
            warehouse, delta, ..
        } => vec![(warehouse.as_str(), *delta, 0, None)],
        InventoryEvent::WarehousePrioritySet {
            warehouse,
            priority,
        } => vec![(warehouse.as_str(), 0, 0, Some(*priority))],
        InventoryEvent::StockReserved { allocations, .. } => allocations
            .iter()
            .map(|a| (a.warehouse.as_str(), 0, units(a), None))
            .collect(),
        InventoryEvent::ReservationReleased { allocations, .. }
        | InventoryEvent::ReservationExpired { allocations, .. } => allocations
            .iter()
            .map(|a| (a.warehouse.as_str(), 0, -units(a), None))
            .collect(),
        InventoryEvent::ReservationCommitted { allocations, .. } => allocations
            .iter()
            .map(|a| (a.warehouse.as_str(), -units(a), -units(a), None))
            .collect(),
    }
}

pub(crate) struct InventoryModel {
    load: String,
    upsert: String,
    skus: BatchRows<String, Levels>,
}

impl InventoryModel {
    pub(crate) fn new(schema: &str) -> Self {
        InventoryModel {
            load: LOAD.replace("{schema}", schema),
            upsert: UPSERT.replace("{schema}", schema),
            skus: BatchRows::new(ROW_CACHE_MAX_ROWS),
        }
    }

    fn fold_event(&mut self, event: &Decoded) -> Result<(), ApplyError> {
        let (sku, inventory_event) = match &event.event {
            Ok(ShopEvent::Inventory { sku, event }) => (sku, event),
            Ok(ShopEvent::Product { .. } | ShopEvent::Cart { .. } | ShopEvent::Order { .. }) => {
                return Ok(())
            }
            Err(reason) => return Err(poison(event, reason.clone())),
        };
        let Some(levels) = self.skus.get_mut(sku.as_str()) else {
            return Err(poison(event, "SKU was not prepared for the batch"));
        };
        let levels = levels.get_or_insert_with(Levels::new);
        for (warehouse, on_hand, reserved, priority) in stock_changes(inventory_event) {
            let level = levels.entry(warehouse.to_owned()).or_insert_with(|| Level {
                priority: DEFAULT_WAREHOUSE_PRIORITY as i32,
                on_hand: 0,
                reserved: 0,
                updated_at: event.recorded_at,
                position: 0,
                dirty: true,
            });
            level.on_hand += on_hand;
            level.reserved += reserved;
            if let Some(priority) = priority {
                level.priority = i32::try_from(priority)
                    .map_err(|_| poison(event, format!("priority {priority} out of range")))?;
            }
            level.updated_at = event.recorded_at;
            level.position = event.position as i64;
            level.dirty = true;
            if level.reserved < 0 || level.reserved > level.on_hand {
                return Err(poison(
                    event,
                    format!(
                        "SKU {sku} in warehouse {warehouse} would have {} on hand and {} reserved",
                        level.on_hand, level.reserved
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ReadModel for InventoryModel {
    fn touch(&mut self, events: &[&Decoded]) {
        for event in events {
            if let Ok(ShopEvent::Inventory { sku, .. }) = &event.event {
                self.skus.touch(sku.as_str(), event.version == 1);
            }
        }
    }

    fn needs_load(&self) -> bool {
        self.skus.needs_load()
    }

    async fn load(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let missing = self.skus.take_missing();
        if missing.is_empty() {
            return Ok(());
        }
        let statement = tx.prepare_cached(&self.load).await?;
        for row in tx.query(&statement, &[&missing]).await? {
            let sku: String = row.get(0);
            let warehouse: String = row.get(1);
            let level = Level {
                priority: row.get(2),
                on_hand: row.get(3),
                reserved: row.get(4),
                updated_at: row.get(5),
                position: row.get(6),
                dirty: false,
            };
            match self.skus.get_mut(sku.as_str()) {
                Some(Some(levels)) => {
                    levels.insert(warehouse, level);
                }
                _ => self.skus.loaded(sku, Levels::from([(warehouse, level)])),
            }
        }
        Ok(())
    }

    fn fold(&mut self, events: &[&Decoded]) -> Result<(), ApplyError> {
        events.iter().try_for_each(|event| self.fold_event(event))
    }

    async fn write(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        if self.skus.is_empty() {
            return Ok(());
        }
        let mut skus = Vec::new();
        let mut warehouses = Vec::new();
        let mut priorities = Vec::new();
        let mut on_hands = Vec::new();
        let mut reserveds = Vec::new();
        let mut updated = Vec::new();
        let mut positions = Vec::new();
        for (sku, levels) in self.skus.iter() {
            for (warehouse, level) in levels.iter().filter(|(_, l)| l.dirty) {
                skus.push(sku.as_str());
                warehouses.push(warehouse.as_str());
                priorities.push(level.priority);
                on_hands.push(level.on_hand);
                reserveds.push(level.reserved);
                updated.push(level.updated_at);
                positions.push(level.position);
            }
        }
        let statement = tx.prepare_cached(&self.upsert).await?;
        tx.execute(
            &statement,
            &[
                &skus,
                &warehouses,
                &priorities,
                &on_hands,
                &reserveds,
                &updated,
                &positions,
            ],
        )
        .await?;
        Ok(())
    }

    fn committed(&mut self) {
        self.skus.for_each_mut(|levels| {
            for level in levels.values_mut() {
                level.dirty = false;
            }
        });
        self.skus.committed();
    }

    fn forget(&mut self) {
        self.skus.forget();
    }
}
