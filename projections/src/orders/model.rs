//! The `orders` projection: orders, their lines, and customer order history.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use domain::OrderEvent;
use serde_json::Value;
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::apply::{poison, ApplyError, ReadModel, ROW_CACHE_MAX_ROWS};
use crate::bulk::{copy_new_rows, Row};
use crate::cache::{BatchRows, FastMap};
use crate::decode::{Decoded, ShopEvent};

/// Order statuses as stored; the same words as `domain::OrderStatus::as_str`.
pub(crate) mod status {
    pub const PLACED: &str = "placed";
    pub const STOCK_RESERVED: &str = "stock_reserved";
    pub const PAYMENT_AUTHORIZED: &str = "payment_authorized";
    pub const CONFIRMED: &str = "confirmed";
    pub const SHIPPED: &str = "shipped";
    pub const DELIVERED: &str = "delivered";
    pub const CANCELLED: &str = "cancelled";
    pub const REJECTED: &str = "rejected";
    pub const ALL: [&str; 8] = [
        PLACED,
        STOCK_RESERVED,
        PAYMENT_AUTHORIZED,
        CONFIRMED,
        SHIPPED,
        DELIVERED,
        CANCELLED,
        REJECTED,
    ];

    pub fn is_terminal(status: &str) -> bool {
        matches!(status, DELIVERED | CANCELLED | REJECTED)
    }
}

const LOAD: &str = "SELECT order_id, customer_id, status, currency, total_minor, confirmed_at \
     FROM {schema}.orders WHERE order_id = ANY($1)";
const INSERT_ORDERS: &str = "INSERT INTO {schema}.orders \
     (order_id, customer_id, cart_id, status, status_reason, currency, total_minor, line_count, \
      item_count, payment_id, tracking_number, ship_country, shipping_address, placed_at, \
      stock_reserved_at, payment_authorized_at, confirmed_at, shipped_at, delivered_at, \
      cancelled_at, rejected_at, updated_at, position) \
     SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::text[], $5::text[], \
        $6::text[], $7::int8[], $8::int4[], $9::int8[], $10::uuid[], $11::text[], $12::text[], \
        $13::jsonb[], $14::timestamptz[], $15::timestamptz[], $16::timestamptz[], \
        $17::timestamptz[], $18::timestamptz[], $19::timestamptz[], $20::timestamptz[], \
        $21::timestamptz[], $22::timestamptz[], $23::int8[])";
// Orders stored before this batch: only what a transition changes. A batch knows
// only the times and fields of its own transitions; COALESCE keeps the stored ones.
const UPDATE_ORDERS: &str = "UPDATE {schema}.orders o SET status = u.status, \
     status_reason = COALESCE(u.status_reason, o.status_reason), \
     payment_id = COALESCE(u.payment_id, o.payment_id), \
     tracking_number = COALESCE(u.tracking_number, o.tracking_number), \
     stock_reserved_at = COALESCE(u.stock_reserved_at, o.stock_reserved_at), \
     payment_authorized_at = COALESCE(u.payment_authorized_at, o.payment_authorized_at), \
     confirmed_at = COALESCE(u.confirmed_at, o.confirmed_at), \
     shipped_at = COALESCE(u.shipped_at, o.shipped_at), \
     delivered_at = COALESCE(u.delivered_at, o.delivered_at), \
     cancelled_at = COALESCE(u.cancelled_at, o.cancelled_at), \
     rejected_at = COALESCE(u.rejected_at, o.rejected_at), \
     updated_at = u.updated_at, position = u.position \
     FROM unnest($1::uuid[], $2::text[], $3::text[], $4::uuid[], $5::text[], \
        $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], \
        $10::timestamptz[], $11::timestamptz[], $12::timestamptz[], $13::timestamptz[], \
        $14::int8[]) \
       AS u(order_id, status, status_reason, payment_id, tracking_number, stock_reserved_at, \
            payment_authorized_at, confirmed_at, shipped_at, delivered_at, cancelled_at, \
            rejected_at, updated_at, position) \
     WHERE o.order_id = u.order_id";
const INSERT_LINES: &str = "INSERT INTO {schema}.order_lines \
     (order_id, line_no, sku, quantity, unit_price_minor, currency, line_total_minor) \
     SELECT * FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::int8[], $5::int8[], \
                          $6::text[], $7::int8[])";
// Counters are added; first and last order times widen. A delta without a placement
// has no times: infinities leave the stored ones as they are.
const UPSERT_CUSTOMERS: &str = "INSERT INTO {schema}.customer_orders AS t \
     (customer_id, currency, orders_placed, orders_confirmed, orders_delivered, \
      orders_cancelled, orders_rejected, placed_total_minor, confirmed_total_minor, \
      first_order_at, last_order_at, position) \
     SELECT customer_id, currency, placed, confirmed, delivered, cancelled, rejected, \
            placed_total, confirmed_total, COALESCE(first_at, 'infinity'), \
            COALESCE(last_at, '-infinity'), position \
     FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int4[], $5::int4[], $6::int4[], \
                 $7::int4[], $8::int8[], $9::int8[], $10::timestamptz[], $11::timestamptz[], \
                 $12::int8[]) \
       AS u(customer_id, currency, placed, confirmed, delivered, cancelled, rejected, \
            placed_total, confirmed_total, first_at, last_at, position) \
     ON CONFLICT (customer_id, currency) DO UPDATE SET \
     orders_placed = t.orders_placed + EXCLUDED.orders_placed, \
     orders_confirmed = t.orders_confirmed + EXCLUDED.orders_confirmed, \
     orders_delivered = t.orders_delivered + EXCLUDED.orders_delivered, \
     orders_cancelled = t.orders_cancelled + EXCLUDED.orders_cancelled, \
     orders_rejected = t.orders_rejected + EXCLUDED.orders_rejected, \
     placed_total_minor = t.placed_total_minor + EXCLUDED.placed_total_minor, \
     confirmed_total_minor = t.confirmed_total_minor + EXCLUDED.confirmed_total_minor, \
     first_order_at = LEAST(t.first_order_at, EXCLUDED.first_order_at), \
     last_order_at = GREATEST(t.last_order_at, EXCLUDED.last_order_at), \
     position = GREATEST(t.position, EXCLUDED.position)";

/// One order as the projection needs it between batches.
#[derive(Debug, Clone, PartialEq)]
struct OrderRow {
    customer_id: Uuid,
    status: &'static str,
    currency: String,
    total: i64,
    confirmed_at: Option<DateTime<Utc>>,
    /// Everything else, only while the batch that changes it is being applied.
    change: Option<Box<OrderChange>>,
}

/// The columns a batch writes for one order.
#[derive(Debug, Clone, PartialEq, Default)]
struct OrderChange {
    /// Placed in this batch: the row and its lines are inserted, not updated.
    placed: Option<Placed>,
    status_reason: Option<String>,
    payment_id: Option<Uuid>,
    tracking_number: Option<String>,
    stock_reserved_at: Option<DateTime<Utc>>,
    payment_authorized_at: Option<DateTime<Utc>>,
    shipped_at: Option<DateTime<Utc>>,
    delivered_at: Option<DateTime<Utc>>,
    cancelled_at: Option<DateTime<Utc>>,
    rejected_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    position: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct Placed {
    cart_id: Uuid,
    line_count: i32,
    item_count: i64,
    ship_country: String,
    shipping_address: Value,
    placed_at: DateTime<Utc>,
    /// (sku, quantity, unit price, line total)
    lines: Vec<(String, i64, i64, i64)>,
}

/// What a batch adds to one customer's history in one currency.
#[derive(Debug, Clone, Default)]
struct CustomerDelta {
    placed: i32,
    confirmed: i32,
    delivered: i32,
    cancelled: i32,
    rejected: i32,
    placed_total: i64,
    confirmed_total: i64,
    first_at: Option<DateTime<Utc>>,
    last_at: Option<DateTime<Utc>>,
    position: i64,
}

pub(crate) struct OrdersModel {
    schema: String,
    load: String,
    insert_orders: String,
    update_orders: String,
    insert_lines: String,
    upsert_customers: String,
    orders: BatchRows<Uuid, OrderRow>,
    customers: FastMap<(Uuid, String), CustomerDelta>,
}

/// The history delta of `order`'s customer in its currency.
fn customer_delta<'a>(
    customers: &'a mut FastMap<(Uuid, String), CustomerDelta>,
    order: &OrderRow,
    position: u64,
) -> &'a mut CustomerDelta {
    let delta = customers
        .entry((order.customer_id, order.currency.clone()))
        .or_default();
    delta.position = delta.position.max(position as i64);
    delta
}

/// Stored (or just folded) status words back to the constants.
fn known_status(status: &str) -> Option<&'static str> {
    status::ALL.into_iter().find(|s| *s == status)
}

impl OrdersModel {
    pub(crate) fn new(schema: &str) -> Self {
        let sql = |s: &str| s.replace("{schema}", schema);
        OrdersModel {
            schema: schema.to_owned(),
            load: sql(LOAD),
            insert_orders: sql(INSERT_ORDERS),
            update_orders: sql(UPDATE_ORDERS),
            insert_lines: sql(INSERT_LINES),
            upsert_customers: sql(UPSERT_CUSTOMERS),
            orders: BatchRows::new(ROW_CACHE_MAX_ROWS),
            customers: FastMap::default(),
        }
    }

    async fn load_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let missing = self.orders.take_missing();
        if missing.is_empty() {
            return Ok(());
        }
        let statement = tx.prepare_cached(&self.load).await?;
        for row in tx.query(&statement, &[&missing]).await? {
            let stored: &str = row.get(2);
            let status = known_status(stored).ok_or_else(|| {
                ApplyError::Database(crate::ProjectionError::Database(format!(
                    "unknown order status {stored:?} in the orders table"
                )))
            })?;
            self.orders.loaded(
                row.get(0),
                OrderRow {
                    customer_id: row.get(1),
                    status,
                    currency: row.get(3),
                    total: row.get(4),
                    confirmed_at: row.get(5),
                    change: None,
                },
            );
        }
        Ok(())
    }

    fn fold_event(&mut self, event: &Decoded) -> Result<(), ApplyError> {
        let (id, order_event) = match &event.event {
            Ok(ShopEvent::Order { id, event }) => (*id, event),
            Ok(
                ShopEvent::Product { .. } | ShopEvent::Inventory { .. } | ShopEvent::Cart { .. },
            ) => return Ok(()),
            Err(reason) => return Err(poison(event, reason.clone())),
        };
        let customers = &mut self.customers;
        let Some(row) = self.orders.get_mut(id.as_uuid()) else {
            return Err(poison(event, "order was not prepared for the batch"));
        };
        if let OrderEvent::OrderPlaced {
            order_id,
            customer_id,
            cart_id,
            lines,
            shipping_address,
            total,
            placed_at,
        } = order_event
        {
            if row.is_some() {
                return Err(poison(event, format!("order {id} is placed twice")));
            }
            if *order_id != id {
                return Err(poison(
                    event,
                    format!("order {order_id} in the stream of {id}"),
                ));
            }
            let mut placed_lines = Vec::with_capacity(lines.len());
            for line in lines {
                let quantity = i64::from(line.quantity.get());
                let line_total = line.unit_price.minor.checked_mul(quantity).ok_or_else(|| {
                    poison(event, format!("line total of {} overflows", line.sku))
                })?;
                placed_lines.push((
                    line.sku.as_str().to_owned(),
                    quantity,
                    line.unit_price.minor,
                    line_total,
                ));
            }
            let placed = Placed {
                cart_id: *cart_id.as_uuid(),
                line_count: lines.len() as i32,
                item_count: placed_lines.iter().map(|l| l.1).sum(),
                ship_country: shipping_address.country().as_str().to_owned(),
                shipping_address: serde_json::to_value(shipping_address.as_ref())
                    .map_err(|e| poison(event, format!("shipping address: {e}")))?,
                placed_at: *placed_at,
                lines: placed_lines,
            };
            let order = OrderRow {
                customer_id: *customer_id.as_uuid(),
                status: status::PLACED,
                currency: total.currency.as_str().to_owned(),
                total: total.minor,
                confirmed_at: None,
                change: Some(Box::new(OrderChange {
                    placed: Some(placed),
                    updated_at: Some(event.recorded_at),
                    position: event.position as i64,
                    ..OrderChange::default()
                })),
            };
            let delta = customer_delta(customers, &order, event.position);
            *row = Some(order);
            delta.placed += 1;
            delta.placed_total += total.minor;
            delta.first_at = Some(delta.first_at.map_or(*placed_at, |t| t.min(*placed_at)));
            delta.last_at = Some(delta.last_at.map_or(*placed_at, |t| t.max(*placed_at)));
            return Ok(());
        }
        let Some(order) = row else {
            return Err(poison(event, format!("order {id} does not exist")));
        };
        if status::is_terminal(order.status) {
            return Err(poison(
                event,
                format!(
                    "order {id} is {} and takes no further transitions",
                    order.status
                ),
            ));
        }
        let was_confirmed = order.status == status::CONFIRMED;
        let change = order.change.get_or_insert_with(Box::default);
        change.updated_at = Some(event.recorded_at);
        change.position = event.position as i64;
        // Counters for the customer's history, applied below.
        let (mut confirmed, mut delivered, mut cancelled, mut rejected, mut unconfirmed) =
            (0, 0, 0, 0, false);
        match order_event {
            OrderEvent::OrderPlaced { .. } => {}
            OrderEvent::OrderStockReserved { at, .. } => {
                order.status = status::STOCK_RESERVED;
                change.stock_reserved_at = Some(*at);
            }
            OrderEvent::OrderPaymentAuthorized { payment_id, at, .. } => {
                order.status = status::PAYMENT_AUTHORIZED;
                change.payment_id = Some(*payment_id.as_uuid());
                change.payment_authorized_at = Some(*at);
            }
            OrderEvent::OrderConfirmed { at } => {
                order.status = status::CONFIRMED;
                order.confirmed_at = Some(*at);
                confirmed = 1;
            }
            OrderEvent::OrderShipped {
                tracking_number,
                at,
            } => {
                order.status = status::SHIPPED;
                change.tracking_number.clone_from(tracking_number);
                change.shipped_at = Some(*at);
            }
            OrderEvent::OrderDelivered { at } => {
                order.status = status::DELIVERED;
                change.delivered_at = Some(*at);
                delivered = 1;
            }
            OrderEvent::OrderCancelled { reason, at } => {
                order.status = status::CANCELLED;
                change.status_reason = Some(reason.clone());
                change.cancelled_at = Some(*at);
                cancelled = 1;
                unconfirmed = was_confirmed;
            }
            OrderEvent::OrderRejected { reason, at } => {
                order.status = status::REJECTED;
                change.status_reason = Some(reason.clone());
                change.rejected_at = Some(*at);
                rejected = 1;
            }
        }
        let delta = customer_delta(customers, order, event.position);
        delta.confirmed += confirmed;
        delta.delivered += delivered;
        delta.cancelled += cancelled;
        delta.rejected += rejected;
        if confirmed == 1 {
            delta.confirmed_total += order.total;
        }
        if unconfirmed {
            delta.confirmed_total -= order.total;
        }
        Ok(())
    }

    async fn write_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let mut new = NewOrders::default();
        let mut old = ChangedOrders::default();
        for (id, order) in self.orders.iter() {
            let Some(change) = &order.change else {
                continue;
            };
            match &change.placed {
                Some(placed) => {
                    new.ids.push(*id);
                    new.customers.push(order.customer_id);
                    new.carts.push(placed.cart_id);
                    new.statuses.push(order.status);
                    new.reasons.push(change.status_reason.as_deref());
                    new.currencies.push(order.currency.as_str());
                    new.totals.push(order.total);
                    new.line_counts.push(placed.line_count);
                    new.item_counts.push(placed.item_count);
                    new.payments.push(change.payment_id);
                    new.tracking.push(change.tracking_number.as_deref());
                    new.countries.push(placed.ship_country.as_str());
                    new.addresses.push(&placed.shipping_address);
                    new.placed_at.push(placed.placed_at);
                    new.times.push(change, order.confirmed_at);
                    new.updated.push(change.updated_at);
                    new.positions.push(change.position);
                    for (n, (sku, quantity, unit_price, total)) in placed.lines.iter().enumerate() {
                        new.line_orders.push(*id);
                        new.line_nos.push(n as i32 + 1);
                        new.line_skus.push(sku.as_str());
                        new.line_quantities.push(*quantity);
                        new.line_prices.push(*unit_price);
                        new.line_currencies.push(order.currency.as_str());
                        new.line_totals.push(*total);
                    }
                }
                None => {
                    old.ids.push(*id);
                    old.statuses.push(order.status);
                    old.reasons.push(change.status_reason.as_deref());
                    old.payments.push(change.payment_id);
                    old.tracking.push(change.tracking_number.as_deref());
                    old.times.push(change, order.confirmed_at);
                    old.updated.push(change.updated_at);
                    old.positions.push(change.position);
                }
            }
        }
        if !new.ids.is_empty() {
            let statement = tx.prepare_cached(&self.insert_orders).await?;
            let t = &new.times;
            tx.execute(
                &statement,
                &[
                    &new.ids,
                    &new.customers,
                    &new.carts,
                    &new.statuses,
                    &new.reasons,
                    &new.currencies,
                    &new.totals,
                    &new.line_counts,
                    &new.item_counts,
                    &new.payments,
                    &new.tracking,
                    &new.countries,
                    &new.addresses,
                    &new.placed_at,
                    &t.stock_reserved,
                    &t.payment_authorized,
                    &t.confirmed,
                    &t.shipped,
                    &t.delivered,
                    &t.cancelled,
                    &t.rejected,
                    &new.updated,
                    &new.positions,
                ],
            )
            .await?;
            let statement = tx.prepare_cached(&self.insert_lines).await?;
            tx.execute(
                &statement,
                &[
                    &new.line_orders,
                    &new.line_nos,
                    &new.line_skus,
                    &new.line_quantities,
                    &new.line_prices,
                    &new.line_currencies,
                    &new.line_totals,
                ],
            )
            .await?;
        }
        if !old.ids.is_empty() {
            let statement = tx.prepare_cached(&self.update_orders).await?;
            let t = &old.times;
            tx.execute(
                &statement,
                &[
                    &old.ids,
                    &old.statuses,
                    &old.reasons,
                    &old.payments,
                    &old.tracking,
                    &t.stock_reserved,
                    &t.payment_authorized,
                    &t.confirmed,
                    &t.shipped,
                    &t.delivered,
                    &t.cancelled,
                    &t.rejected,
                    &old.updated,
                    &old.positions,
                ],
            )
            .await?;
        }
        self.write_customers(tx).await
    }

    async fn write_customers(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        if self.customers.is_empty() {
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
        for ((customer, currency), d) in &self.customers {
            c.0.push(*customer);
            c.1.push(currency.as_str());
            c.2.push(d.placed);
            c.3.push(d.confirmed);
            c.4.push(d.delivered);
            c.5.push(d.cancelled);
            c.6.push(d.rejected);
            c.7.push(d.placed_total);
            c.8.push(d.confirmed_total);
            c.9.push(d.first_at);
            c.10.push(d.last_at);
            c.11.push(d.position);
        }
        let statement = tx.prepare_cached(&self.upsert_customers).await?;
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

impl OrdersModel {
    /// [`OrdersModel::write_rows`] into empty tables: every order was placed within
    /// what is written, and every customer's history starts there.
    async fn copy_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let mut orders: Vec<Row> = Vec::new();
        let mut lines: Vec<Row> = Vec::new();
        // Line numbers, from 1.
        let numbers: Vec<i32> = (1..=self
            .orders
            .iter()
            .map(|(_, o)| line_count(o))
            .max()
            .unwrap_or(0) as i32)
            .collect();
        for (id, order) in self.orders.iter() {
            let Some((change, placed)) = order
                .change
                .as_deref()
                .and_then(|c| c.placed.as_ref().map(|p| (c, p)))
            else {
                return Err(not_new(format!(
                    "order {id} was not placed in the first write"
                )));
            };
            orders.push(vec![
                id,
                &order.customer_id,
                &placed.cart_id,
                &order.status,
                &change.status_reason,
                &order.currency,
                &order.total,
                &placed.line_count,
                &placed.item_count,
                &change.payment_id,
                &change.tracking_number,
                &placed.ship_country,
                &placed.shipping_address,
                &placed.placed_at,
                &change.stock_reserved_at,
                &change.payment_authorized_at,
                &order.confirmed_at,
                &change.shipped_at,
                &change.delivered_at,
                &change.cancelled_at,
                &change.rejected_at,
                &change.updated_at,
                &change.position,
            ]);
            for ((sku, quantity, unit_price, total), number) in placed.lines.iter().zip(&numbers) {
                lines.push(vec![
                    id,
                    number,
                    sku,
                    quantity,
                    unit_price,
                    &order.currency,
                    total,
                ]);
            }
        }
        copy_new_rows(
            tx,
            &format!("{}.orders", self.schema),
            "order_id, customer_id, cart_id, status, status_reason, currency, total_minor, \
             line_count, item_count, payment_id, tracking_number, ship_country, \
             shipping_address, placed_at, stock_reserved_at, payment_authorized_at, \
             confirmed_at, shipped_at, delivered_at, cancelled_at, rejected_at, updated_at, \
             position",
            &[
                Type::UUID,
                Type::UUID,
                Type::UUID,
                Type::TEXT,
                Type::TEXT,
                Type::TEXT,
                Type::INT8,
                Type::INT4,
                Type::INT8,
                Type::UUID,
                Type::TEXT,
                Type::TEXT,
                Type::JSONB,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::INT8,
            ],
            orders,
        )
        .await?;
        copy_new_rows(
            tx,
            &format!("{}.order_lines", self.schema),
            "order_id, line_no, sku, quantity, unit_price_minor, currency, line_total_minor",
            &[
                Type::UUID,
                Type::INT4,
                Type::TEXT,
                Type::INT8,
                Type::INT8,
                Type::TEXT,
                Type::INT8,
            ],
            lines,
        )
        .await?;
        let mut customers: Vec<Row> = Vec::with_capacity(self.customers.len());
        for ((customer, currency), d) in &self.customers {
            let (Some(first_at), Some(last_at)) = (&d.first_at, &d.last_at) else {
                return Err(not_new(format!(
                    "customer {customer} has no order placed in the first write"
                )));
            };
            customers.push(vec![
                customer,
                currency,
                &d.placed,
                &d.confirmed,
                &d.delivered,
                &d.cancelled,
                &d.rejected,
                &d.placed_total,
                &d.confirmed_total,
                first_at,
                last_at,
                &d.position,
            ]);
        }
        copy_new_rows(
            tx,
            &format!("{}.customer_orders", self.schema),
            "customer_id, currency, orders_placed, orders_confirmed, orders_delivered, \
             orders_cancelled, orders_rejected, placed_total_minor, confirmed_total_minor, \
             first_order_at, last_order_at, position",
            &[
                Type::UUID,
                Type::TEXT,
                Type::INT4,
                Type::INT4,
                Type::INT4,
                Type::INT4,
                Type::INT4,
                Type::INT8,
                Type::INT8,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::INT8,
            ],
            customers,
        )
        .await?;
        Ok(())
    }
}

fn line_count(order: &OrderRow) -> usize {
    order
        .change
        .as_deref()
        .and_then(|c| c.placed.as_ref())
        .map_or(0, |p| p.lines.len())
}

/// A first write found a row that must have been written before: a bug in the fold.
fn not_new(reason: String) -> ApplyError {
    ApplyError::Database(crate::ProjectionError::Database(reason))
}

/// The transition times of the orders a batch writes, one column each.
#[derive(Default)]
struct Times {
    stock_reserved: Vec<Option<DateTime<Utc>>>,
    payment_authorized: Vec<Option<DateTime<Utc>>>,
    confirmed: Vec<Option<DateTime<Utc>>>,
    shipped: Vec<Option<DateTime<Utc>>>,
    delivered: Vec<Option<DateTime<Utc>>>,
    cancelled: Vec<Option<DateTime<Utc>>>,
    rejected: Vec<Option<DateTime<Utc>>>,
}

impl Times {
    fn push(&mut self, change: &OrderChange, confirmed_at: Option<DateTime<Utc>>) {
        self.stock_reserved.push(change.stock_reserved_at);
        self.payment_authorized.push(change.payment_authorized_at);
        self.confirmed.push(confirmed_at);
        self.shipped.push(change.shipped_at);
        self.delivered.push(change.delivered_at);
        self.cancelled.push(change.cancelled_at);
        self.rejected.push(change.rejected_at);
    }
}

#[derive(Default)]
struct NewOrders<'a> {
    ids: Vec<Uuid>,
    customers: Vec<Uuid>,
    carts: Vec<Uuid>,
    statuses: Vec<&'a str>,
    reasons: Vec<Option<&'a str>>,
    currencies: Vec<&'a str>,
    totals: Vec<i64>,
    line_counts: Vec<i32>,
    item_counts: Vec<i64>,
    payments: Vec<Option<Uuid>>,
    tracking: Vec<Option<&'a str>>,
    countries: Vec<&'a str>,
    addresses: Vec<&'a Value>,
    placed_at: Vec<DateTime<Utc>>,
    times: Times,
    updated: Vec<Option<DateTime<Utc>>>,
    positions: Vec<i64>,
    line_orders: Vec<Uuid>,
    line_nos: Vec<i32>,
    line_skus: Vec<&'a str>,
    line_quantities: Vec<i64>,
    line_prices: Vec<i64>,
    line_currencies: Vec<&'a str>,
    line_totals: Vec<i64>,
}

#[derive(Default)]
struct ChangedOrders<'a> {
    ids: Vec<Uuid>,
    statuses: Vec<&'a str>,
    reasons: Vec<Option<&'a str>>,
    payments: Vec<Option<Uuid>>,
    tracking: Vec<Option<&'a str>>,
    times: Times,
    updated: Vec<Option<DateTime<Utc>>>,
    positions: Vec<i64>,
}

#[async_trait]
impl ReadModel for OrdersModel {
    fn touch(&mut self, events: &[&Decoded]) {
        for event in events {
            if let Ok(ShopEvent::Order { id, .. }) = &event.event {
                self.orders.touch(id.as_uuid(), event.version == 1);
            }
        }
    }

    fn needs_load(&self) -> bool {
        self.orders.needs_load()
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
        self.orders.for_each_mut(|order| order.change = None);
        self.orders.committed();
        self.customers.clear();
    }

    fn forget(&mut self) {
        self.orders.forget();
        self.customers.clear();
    }
}
