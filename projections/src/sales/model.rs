//! The `sales` projection: units and revenue per day, SKU and currency.
//!
//! `OrderConfirmed` and `OrderCancelled` carry no lines, so the projection keeps the
//! lines of every order that may still be confirmed or cancelled in a table of its
//! own (`sales_open_orders`) and drops them once the order is past that.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::Transaction;
use domain::OrderEvent;
use serde::{Deserialize, Serialize};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::apply::{poison, ApplyError, ReadModel, ROW_CACHE_MAX_ROWS};
use crate::bulk::{copy_new_rows, Row};
use crate::cache::{BatchRows, FastMap};
use crate::decode::{Decoded, ShopEvent};

const LOAD: &str = "SELECT order_id, currency, lines, confirmed \
     FROM {schema}.sales_open_orders WHERE order_id = ANY($1)";
const UPSERT_OPEN: &str = "INSERT INTO {schema}.sales_open_orders \
     (order_id, currency, lines, confirmed) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::bool[]) \
     ON CONFLICT (order_id) DO UPDATE SET confirmed = EXCLUDED.confirmed";
const DELETE_OPEN: &str = "DELETE FROM {schema}.sales_open_orders WHERE order_id = ANY($1)";
const UPSERT_DAILY: &str = "INSERT INTO {schema}.sales_daily AS t \
     (day, sku, currency, orders_placed, units_ordered, revenue_ordered_minor, units_sold, \
      revenue_sold_minor, cancellations, units_cancelled, revenue_cancelled_minor, position) \
     SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::int4[], $5::int8[], \
        $6::int8[], $7::int8[], $8::int8[], $9::int4[], $10::int8[], $11::int8[], $12::int8[]) \
     ON CONFLICT (day, sku, currency) DO UPDATE SET \
     orders_placed = t.orders_placed + EXCLUDED.orders_placed, \
     units_ordered = t.units_ordered + EXCLUDED.units_ordered, \
     revenue_ordered_minor = t.revenue_ordered_minor + EXCLUDED.revenue_ordered_minor, \
     units_sold = t.units_sold + EXCLUDED.units_sold, \
     revenue_sold_minor = t.revenue_sold_minor + EXCLUDED.revenue_sold_minor, \
     cancellations = t.cancellations + EXCLUDED.cancellations, \
     units_cancelled = t.units_cancelled + EXCLUDED.units_cancelled, \
     revenue_cancelled_minor = t.revenue_cancelled_minor + EXCLUDED.revenue_cancelled_minor, \
     position = GREATEST(t.position, EXCLUDED.position)";

/// One line of an open order, as kept in `sales_open_orders.lines`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct OpenLine {
    sku: String,
    quantity: i64,
    unit_price_minor: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct OpenOrder {
    currency: String,
    lines: Vec<OpenLine>,
    confirmed: bool,
    /// Stored before this batch (else it is inserted).
    stored: bool,
    /// Changed by this batch.
    changed: bool,
}

/// What a batch adds to one day, SKU and currency.
#[derive(Debug, Clone, Default)]
struct Delta {
    orders_placed: i32,
    units_ordered: i64,
    revenue_ordered: i64,
    units_sold: i64,
    revenue_sold: i64,
    cancellations: i32,
    units_cancelled: i64,
    revenue_cancelled: i64,
    position: i64,
}

type DeltaKey = (NaiveDate, String, String);

pub(crate) struct SalesModel {
    schema: String,
    load: String,
    upsert_open: String,
    delete_open: String,
    upsert_daily: String,
    open: BatchRows<Uuid, OpenOrder>,
    /// Stored open orders that the batch closes.
    closed: Vec<Uuid>,
    deltas: FastMap<DeltaKey, Delta>,
}

/// Adds `change` for every line of `order` on `at`'s day.
fn add(
    deltas: &mut FastMap<DeltaKey, Delta>,
    order: &OpenOrder,
    at: DateTime<Utc>,
    position: u64,
    change: impl Fn(&mut Delta, i64, i64),
) -> Result<(), String> {
    for line in &order.lines {
        let revenue = line
            .quantity
            .checked_mul(line.unit_price_minor)
            .ok_or_else(|| format!("revenue of {} overflows", line.sku))?;
        let delta = deltas
            .entry((at.date_naive(), line.sku.clone(), order.currency.clone()))
            .or_default();
        change(delta, line.quantity, revenue);
        delta.position = delta.position.max(position as i64);
    }
    Ok(())
}

impl SalesModel {
    pub(crate) fn new(schema: &str) -> Self {
        let sql = |s: &str| s.replace("{schema}", schema);
        SalesModel {
            schema: schema.to_owned(),
            load: sql(LOAD),
            upsert_open: sql(UPSERT_OPEN),
            delete_open: sql(DELETE_OPEN),
            upsert_daily: sql(UPSERT_DAILY),
            open: BatchRows::new(ROW_CACHE_MAX_ROWS),
            closed: Vec::new(),
            deltas: FastMap::default(),
        }
    }

    async fn load_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let missing = self.open.take_missing();
        if missing.is_empty() {
            return Ok(());
        }
        let statement = tx.prepare_cached(&self.load).await?;
        for row in tx.query(&statement, &[&missing]).await? {
            let lines: serde_json::Value = row.get(2);
            let lines = serde_json::from_value(lines).map_err(|e| {
                ApplyError::Database(crate::ProjectionError::Database(format!(
                    "sales_open_orders.lines does not parse: {e}"
                )))
            })?;
            self.open.loaded(
                row.get(0),
                OpenOrder {
                    currency: row.get(1),
                    lines,
                    confirmed: row.get(3),
                    stored: true,
                    changed: false,
                },
            );
        }
        Ok(())
    }

    fn fold_event(&mut self, event: &Decoded) -> Result<(), ApplyError> {
        let (id, order_event) = match &event.event {
            Ok(ShopEvent::Order { id, event }) => (*id.as_uuid(), event),
            Ok(
                ShopEvent::Product { .. } | ShopEvent::Inventory { .. } | ShopEvent::Cart { .. },
            ) => return Ok(()),
            Err(reason) => return Err(poison(event, reason.clone())),
        };
        let deltas = &mut self.deltas;
        let at_position = |e: String| poison(event, e);
        match order_event {
            OrderEvent::OrderPlaced {
                lines,
                total,
                placed_at,
                ..
            } => {
                let Some(row) = self.open.get_mut(&id) else {
                    return Err(poison(event, "order was not prepared for the batch"));
                };
                if row.is_some() {
                    return Err(poison(event, format!("order {id} is placed twice")));
                }
                let order = OpenOrder {
                    currency: total.currency.as_str().to_owned(),
                    lines: lines
                        .iter()
                        .map(|l| OpenLine {
                            sku: l.sku.as_str().to_owned(),
                            quantity: i64::from(l.quantity.get()),
                            unit_price_minor: l.unit_price.minor,
                        })
                        .collect(),
                    confirmed: false,
                    stored: false,
                    changed: true,
                };
                add(
                    deltas,
                    &order,
                    *placed_at,
                    event.position,
                    |d, units, revenue| {
                        d.orders_placed += 1;
                        d.units_ordered += units;
                        d.revenue_ordered += revenue;
                    },
                )
                .map_err(at_position)?;
                *row = Some(order);
            }
            OrderEvent::OrderConfirmed { at } => {
                let Some(Some(order)) = self.open.get_mut(&id) else {
                    return Err(poison(event, format!("order {id} is not open")));
                };
                order.confirmed = true;
                order.changed = true;
                add(deltas, order, *at, event.position, |d, units, revenue| {
                    d.units_sold += units;
                    d.revenue_sold += revenue;
                })
                .map_err(at_position)?;
            }
            OrderEvent::OrderCancelled { at, .. } | OrderEvent::OrderRejected { at, .. } => {
                let Some(row) = self.open.get_mut(&id) else {
                    return Err(poison(event, "order was not prepared for the batch"));
                };
                let Some(order) = row.take() else {
                    return Err(poison(event, format!("order {id} is not open")));
                };
                add(deltas, &order, *at, event.position, |d, units, revenue| {
                    d.cancellations += 1;
                    d.units_cancelled += units;
                    d.revenue_cancelled += revenue;
                })
                .map_err(at_position)?;
                if order.stored {
                    self.closed.push(id);
                }
            }
            // Past confirmation no event changes sales any more: forget the lines.
            OrderEvent::OrderShipped { .. } | OrderEvent::OrderDelivered { .. } => {
                match self.open.get_mut(&id) {
                    Some(row) => {
                        if row.take().is_some_and(|order| order.stored) {
                            self.closed.push(id);
                        }
                    }
                    None => {
                        self.open.evict(&id);
                        self.closed.push(id);
                    }
                }
            }
            OrderEvent::OrderStockReserved { .. } | OrderEvent::OrderPaymentAuthorized { .. } => {}
        }
        Ok(())
    }

    async fn write_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let mut ids = Vec::new();
        let mut currencies = Vec::new();
        let mut lines = Vec::new();
        let mut confirmed = Vec::new();
        for (id, order) in self.open.iter().filter(|(_, o)| o.changed) {
            ids.push(*id);
            currencies.push(order.currency.as_str());
            lines.push(serde_json::json!(order.lines));
            confirmed.push(order.confirmed);
        }
        if !ids.is_empty() {
            let statement = tx.prepare_cached(&self.upsert_open).await?;
            tx.execute(&statement, &[&ids, &currencies, &lines, &confirmed])
                .await?;
        }
        if !self.closed.is_empty() {
            let statement = tx.prepare_cached(&self.delete_open).await?;
            tx.execute(&statement, &[&self.closed]).await?;
        }
        if self.deltas.is_empty() {
            return Ok(());
        }
        let mut c = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        for ((day, sku, currency), d) in &self.deltas {
            c.0.push(*day);
            c.1.push(sku.as_str());
            c.2.push(currency.as_str());
            c.3.push(d.orders_placed);
            c.4.push(d.units_ordered);
            c.5.push(d.revenue_ordered);
            c.6.push(d.units_sold);
            c.7.push(d.revenue_sold);
            c.8.push(d.cancellations);
            c.9.push(d.units_cancelled);
            c.10.push(d.revenue_cancelled);
            c.11.push(d.position);
        }
        let statement = tx.prepare_cached(&self.upsert_daily).await?;
        tx.execute(
            &statement,
            &[
                &c.0, &c.1, &c.2, &c.3, &c.4, &c.5, &c.6, &c.7, &c.8, &c.9, &c.10, &c.11,
            ],
        )
        .await?;
        Ok(())
    }
}

impl SalesModel {
    /// [`SalesModel::write_rows`] into empty tables: every open order and every
    /// day's figures are new.
    async fn copy_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let open: Vec<(&Uuid, &OpenOrder, serde_json::Value)> = self
            .open
            .iter()
            .map(|(id, order)| (id, order, serde_json::json!(order.lines)))
            .collect();
        let mut rows: Vec<Row> = Vec::with_capacity(open.len());
        for (id, order, lines) in &open {
            rows.push(vec![*id, &order.currency, lines, &order.confirmed]);
        }
        copy_new_rows(
            tx,
            &format!("{}.sales_open_orders", self.schema),
            "order_id, currency, lines, confirmed",
            &[Type::UUID, Type::TEXT, Type::JSONB, Type::BOOL],
            rows,
        )
        .await?;
        let mut rows: Vec<Row> = Vec::with_capacity(self.deltas.len());
        for ((day, sku, currency), d) in &self.deltas {
            rows.push(vec![
                day,
                sku,
                currency,
                &d.orders_placed,
                &d.units_ordered,
                &d.revenue_ordered,
                &d.units_sold,
                &d.revenue_sold,
                &d.cancellations,
                &d.units_cancelled,
                &d.revenue_cancelled,
                &d.position,
            ]);
        }
        copy_new_rows(
            tx,
            &format!("{}.sales_daily", self.schema),
            "day, sku, currency, orders_placed, units_ordered, revenue_ordered_minor, \
             units_sold, revenue_sold_minor, cancellations, units_cancelled, \
             revenue_cancelled_minor, position",
            &[
                Type::DATE,
                Type::TEXT,
                Type::TEXT,
                Type::INT4,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::INT4,
                Type::INT8,
                Type::INT8,
                Type::INT8,
            ],
            rows,
        )
        .await?;
        Ok(())
    }
}

#[async_trait]
impl ReadModel for SalesModel {
    fn touch(&mut self, events: &[&Decoded]) {
        for event in events {
            if let Ok(ShopEvent::Order { id, event: e }) = &event.event {
                match e {
                    OrderEvent::OrderPlaced { .. } => self.open.touch(id.as_uuid(), true),
                    OrderEvent::OrderConfirmed { .. }
                    | OrderEvent::OrderCancelled { .. }
                    | OrderEvent::OrderRejected { .. } => self.open.touch(id.as_uuid(), false),
                    OrderEvent::OrderStockReserved { .. }
                    | OrderEvent::OrderPaymentAuthorized { .. }
                    | OrderEvent::OrderShipped { .. }
                    | OrderEvent::OrderDelivered { .. } => {}
                }
            }
        }
    }

    fn needs_load(&self) -> bool {
        self.open.needs_load()
    }

    async fn load(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        self.load_rows(tx).await
    }

    fn fold(&mut self, events: &[&Decoded]) -> Result<(), ApplyError> {
        events.iter().try_for_each(|event| self.fold_event(event))
    }

    async fn write(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        self.write_rows(tx).await
    }

    async fn write_new(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        self.copy_rows(tx).await
    }

    fn committed(&mut self) {
        self.open.for_each_mut(|order| {
            order.stored = true;
            order.changed = false;
        });
        self.open.committed();
        self.closed.clear();
        self.deltas.clear();
    }

    fn forget(&mut self) {
        self.open.forget();
        self.closed.clear();
        self.deltas.clear();
    }
}
