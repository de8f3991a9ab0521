//! The `carts` projection: every cart with its current lines and totals.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::Transaction;
use domain::{CartEvent, CartOwner, CartStatus, LineItem, Quantity};
use tokio_postgres::types::Type;
use uuid::Uuid;

use crate::apply::{poison, ApplyError, ReadModel, ROW_CACHE_MAX_ROWS};
use crate::bulk::{copy_new_rows, Row};
use crate::cache::BatchRows;
use crate::decode::{Decoded, ShopEvent};

const LOAD_CARTS: &str = "SELECT cart_id, owner_kind, customer_id, guest_token, currency, status, \
     checked_out_total_minor, order_id, created_at, checked_out_at, ended_at, updated_at, \
     position FROM {schema}.carts WHERE cart_id = ANY($1)";
const LOAD_LINES: &str = "SELECT cart_id, sku, line_no, quantity, unit_price_minor \
     FROM {schema}.cart_lines WHERE cart_id = ANY($1) ORDER BY cart_id, line_no";
const UPSERT_CARTS: &str = "INSERT INTO {schema}.carts \
     (cart_id, owner_kind, customer_id, guest_token, currency, status, line_count, item_count, \
      total_minor, checked_out_total_minor, order_id, created_at, checked_out_at, ended_at, \
      updated_at, position) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], $5::text[], \
        $6::text[], $7::int4[], $8::int8[], $9::int8[], $10::int8[], $11::uuid[], \
        $12::timestamptz[], $13::timestamptz[], $14::timestamptz[], $15::timestamptz[], \
        $16::int8[]) \
     ON CONFLICT (cart_id) DO UPDATE SET owner_kind = EXCLUDED.owner_kind, \
     customer_id = EXCLUDED.customer_id, guest_token = EXCLUDED.guest_token, \
     currency = EXCLUDED.currency, status = EXCLUDED.status, \
     line_count = EXCLUDED.line_count, item_count = EXCLUDED.item_count, \
     total_minor = EXCLUDED.total_minor, \
     checked_out_total_minor = EXCLUDED.checked_out_total_minor, \
     order_id = EXCLUDED.order_id, created_at = EXCLUDED.created_at, \
     checked_out_at = EXCLUDED.checked_out_at, ended_at = EXCLUDED.ended_at, \
     updated_at = EXCLUDED.updated_at, position = EXCLUDED.position";
const UPSERT_LINES: &str = "INSERT INTO {schema}.cart_lines \
     (cart_id, sku, line_no, quantity, unit_price_minor, line_total_minor) \
     SELECT * FROM unnest($1::uuid[], $2::text[], $3::int4[], $4::int8[], $5::int8[], \
                          $6::int8[]) \
     ON CONFLICT (cart_id, sku) DO UPDATE SET line_no = EXCLUDED.line_no, \
     quantity = EXCLUDED.quantity, unit_price_minor = EXCLUDED.unit_price_minor, \
     line_total_minor = EXCLUDED.line_total_minor";
const DELETE_LINES: &str = "DELETE FROM {schema}.cart_lines l \
     USING unnest($1::uuid[], $2::text[]) AS d(cart_id, sku) \
     WHERE l.cart_id = d.cart_id AND l.sku = d.sku";

#[derive(Debug, Clone, PartialEq)]
struct CartRow {
    owner_kind: String,
    customer_id: Option<Uuid>,
    guest_token: Option<Uuid>,
    currency: String,
    status: String,
    lines: Vec<LineRow>,
    /// The lines as stored, to write only what changed.
    stored_lines: Vec<LineRow>,
    checked_out_total: Option<i64>,
    order_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    checked_out_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    position: i64,
}

#[derive(Debug, Clone, PartialEq)]
struct LineRow {
    sku: String,
    line_no: i32,
    quantity: i64,
    unit_price: i64,
}

impl CartRow {
    fn upsert_line(&mut self, sku: &str, quantity: i64, unit_price: i64) {
        match self.lines.iter_mut().find(|l| l.sku == sku) {
            Some(line) => {
                line.quantity = quantity;
                line.unit_price = unit_price;
            }
            None => {
                let line_no = self.lines.iter().map(|l| l.line_no).max().unwrap_or(0) + 1;
                self.lines.push(LineRow {
                    sku: sku.to_owned(),
                    line_no,
                    quantity,
                    unit_price,
                });
            }
        }
    }

    /// (line count, units, total in minor units), or `None` on overflow.
    fn totals(&self) -> Option<(i32, i64, i64)> {
        let mut items: i64 = 0;
        let mut total: i64 = 0;
        for line in &self.lines {
            items = items.checked_add(line.quantity)?;
            total = total.checked_add(line.quantity.checked_mul(line.unit_price)?)?;
        }
        Some((self.lines.len() as i32, items, total))
    }
}

pub(crate) struct CartsModel {
    schema: String,
    load_carts: String,
    load_lines: String,
    upsert_carts: String,
    upsert_lines: String,
    delete_lines: String,
    carts: BatchRows<Uuid, CartRow>,
}

impl CartsModel {
    pub(crate) fn new(schema: &str) -> Self {
        let sql = |s: &str| s.replace("{schema}", schema);
        CartsModel {
            schema: schema.to_owned(),
            load_carts: sql(LOAD_CARTS),
            load_lines: sql(LOAD_LINES),
            upsert_carts: sql(UPSERT_CARTS),
            upsert_lines: sql(UPSERT_LINES),
            delete_lines: sql(DELETE_LINES),
            carts: BatchRows::new(ROW_CACHE_MAX_ROWS),
        }
    }

    async fn load_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let missing = self.carts.take_missing();
        if missing.is_empty() {
            return Ok(());
        }
        let statement = tx.prepare_cached(&self.load_carts).await?;
        let mut loaded = std::collections::HashMap::new();
        for row in tx.query(&statement, &[&missing]).await? {
            let id: Uuid = row.get(0);
            loaded.insert(
                id,
                CartRow {
                    owner_kind: row.get(1),
                    customer_id: row.get(2),
                    guest_token: row.get(3),
                    currency: row.get(4),
                    status: row.get(5),
                    checked_out_total: row.get(6),
                    order_id: row.get(7),
                    created_at: row.get(8),
                    checked_out_at: row.get(9),
                    ended_at: row.get(10),
                    updated_at: row.get(11),
                    position: row.get(12),
                    lines: Vec::new(),
                    stored_lines: Vec::new(),
                },
            );
        }
        let statement = tx.prepare_cached(&self.load_lines).await?;
        for row in tx.query(&statement, &[&missing]).await? {
            let id: Uuid = row.get(0);
            if let Some(cart) = loaded.get_mut(&id) {
                cart.lines.push(LineRow {
                    sku: row.get(1),
                    line_no: row.get(2),
                    quantity: row.get(3),
                    unit_price: row.get(4),
                });
            }
        }
        for (id, mut cart) in loaded {
            cart.stored_lines = cart.lines.clone();
            self.carts.loaded(id, cart);
        }
        Ok(())
    }

    fn fold_event(&mut self, event: &Decoded) -> Result<(), ApplyError> {
        let (id, cart_event) = match &event.event {
            Ok(ShopEvent::Cart { id, event }) => (*id, event),
            Ok(
                ShopEvent::Product { .. } | ShopEvent::Inventory { .. } | ShopEvent::Order { .. },
            ) => return Ok(()),
            Err(reason) => return Err(poison(event, reason.clone())),
        };
        let Some(row) = self.carts.get_mut(id.as_uuid()) else {
            return Err(poison(event, "cart was not prepared for the batch"));
        };
        if let CartEvent::CartCreated {
            cart_id,
            owner,
            currency,
        } = cart_event
        {
            if row.is_some() {
                return Err(poison(event, format!("cart {id} is created twice")));
            }
            if *cart_id != id {
                return Err(poison(
                    event,
                    format!("cart {cart_id} in the stream of {id}"),
                ));
            }
            let (owner_kind, customer_id, guest_token) = match owner {
                CartOwner::Guest(token) => ("guest", None, Some(*token.as_uuid())),
                CartOwner::Customer(customer) => ("customer", Some(*customer.as_uuid()), None),
            };
            *row = Some(CartRow {
                owner_kind: owner_kind.to_owned(),
                customer_id,
                guest_token,
                currency: currency.as_str().to_owned(),
                status: CartStatus::Open.as_str().to_owned(),
                lines: Vec::new(),
                stored_lines: Vec::new(),
                checked_out_total: None,
                order_id: None,
                created_at: event.recorded_at,
                checked_out_at: None,
                ended_at: None,
                updated_at: event.recorded_at,
                position: event.position as i64,
            });
            return Ok(());
        }
        let Some(cart) = row else {
            return Err(poison(event, format!("cart {id} does not exist")));
        };
        match cart_event {
            CartEvent::CartCreated { .. } => {}
            CartEvent::CartLineAdded {
                sku,
                quantity,
                unit_price,
            } => {
                check_currency(event, &cart.currency, unit_price.currency.as_str())?;
                let added = i64::from(quantity.get());
                let quantity = match cart.lines.iter().find(|l| l.sku == sku.as_str()) {
                    // Like the aggregate: a sum past the bound keeps the old quantity.
                    Some(line) if line.quantity + added > i64::from(Quantity::MAX) => line.quantity,
                    Some(line) => line.quantity + added,
                    None => added,
                };
                cart.upsert_line(sku.as_str(), quantity, unit_price.minor);
            }
            CartEvent::CartLineQuantityChanged { sku, quantity } => {
                if let Some(line) = cart.lines.iter_mut().find(|l| l.sku == sku.as_str()) {
                    line.quantity = i64::from(quantity.get());
                }
            }
            CartEvent::CartLineRemoved { sku } => cart.lines.retain(|l| l.sku != sku.as_str()),
            CartEvent::GuestCartMerged { lines, .. } => {
                for LineItem {
                    sku,
                    quantity,
                    unit_price,
                } in lines
                {
                    check_currency(event, &cart.currency, unit_price.currency.as_str())?;
                    cart.upsert_line(sku.as_str(), i64::from(quantity.get()), unit_price.minor);
                }
            }
            CartEvent::CartCheckedOut { total } => {
                cart.status = CartStatus::CheckedOut.as_str().to_owned();
                cart.checked_out_at = Some(event.recorded_at);
                cart.checked_out_total = Some(total.minor);
            }
            CartEvent::CartReopened {} => cart.status = CartStatus::Open.as_str().to_owned(),
            CartEvent::CartAbandoned {} => {
                cart.status = CartStatus::Abandoned.as_str().to_owned();
                cart.ended_at = Some(event.recorded_at);
            }
            CartEvent::CartClosed { order_id } => {
                cart.status = CartStatus::Closed.as_str().to_owned();
                cart.order_id = Some(*order_id.as_uuid());
                cart.ended_at = Some(event.recorded_at);
            }
        }
        if cart.totals().is_none() {
            return Err(poison(event, format!("the totals of cart {id} overflow")));
        }
        cart.updated_at = event.recorded_at;
        cart.position = event.position as i64;
        Ok(())
    }

    async fn write_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        let mut c = CartColumns::default();
        let mut lines = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut removed: (Vec<Uuid>, Vec<&str>) = (Vec::new(), Vec::new());
        for (id, cart) in self.carts.iter() {
            // Checked in the fold.
            let (line_count, items, total) = cart.totals().unwrap_or_default();
            c.ids.push(*id);
            c.owner_kinds.push(cart.owner_kind.as_str());
            c.customers.push(cart.customer_id);
            c.guests.push(cart.guest_token);
            c.currencies.push(cart.currency.as_str());
            c.statuses.push(cart.status.as_str());
            c.line_counts.push(line_count);
            c.item_counts.push(items);
            c.totals.push(total);
            c.checked_out_totals.push(cart.checked_out_total);
            c.orders.push(cart.order_id);
            c.created.push(cart.created_at);
            c.checked_out.push(cart.checked_out_at);
            c.ended.push(cart.ended_at);
            c.updated.push(cart.updated_at);
            c.positions.push(cart.position);
            for line in &cart.lines {
                if cart.stored_lines.contains(line) {
                    continue;
                }
                lines.0.push(*id);
                lines.1.push(line.sku.as_str());
                lines.2.push(line.line_no);
                lines.3.push(line.quantity);
                lines.4.push(line.unit_price);
                lines.5.push(line.quantity * line.unit_price);
            }
            for stored in &cart.stored_lines {
                if !cart.lines.iter().any(|l| l.sku == stored.sku) {
                    removed.0.push(*id);
                    removed.1.push(stored.sku.as_str());
                }
            }
        }
        if c.ids.is_empty() {
            return Ok(());
        }
        let statement = tx.prepare_cached(&self.upsert_carts).await?;
        tx.execute(
            &statement,
            &[
                &c.ids,
                &c.owner_kinds,
                &c.customers,
                &c.guests,
                &c.currencies,
                &c.statuses,
                &c.line_counts,
                &c.item_counts,
                &c.totals,
                &c.checked_out_totals,
                &c.orders,
                &c.created,
                &c.checked_out,
                &c.ended,
                &c.updated,
                &c.positions,
            ],
        )
        .await?;
        if !removed.0.is_empty() {
            let statement = tx.prepare_cached(&self.delete_lines).await?;
            tx.execute(&statement, &[&removed.0, &removed.1]).await?;
        }
        if !lines.0.is_empty() {
            let statement = tx.prepare_cached(&self.upsert_lines).await?;
            tx.execute(
                &statement,
                &[&lines.0, &lines.1, &lines.2, &lines.3, &lines.4, &lines.5],
            )
            .await?;
        }
        Ok(())
    }
}

impl CartsModel {
    /// [`CartsModel::write_rows`] into empty tables: every cart and line is new.
    async fn copy_rows(&mut self, tx: &Transaction<'_>) -> Result<(), ApplyError> {
        // Checked in the fold.
        let totals: Vec<(i32, i64, i64)> = self
            .carts
            .iter()
            .map(|(_, cart)| cart.totals().unwrap_or_default())
            .collect();
        let mut carts: Vec<Row> = Vec::with_capacity(totals.len());
        for ((id, cart), total) in self.carts.iter().zip(&totals) {
            carts.push(vec![
                id,
                &cart.owner_kind,
                &cart.customer_id,
                &cart.guest_token,
                &cart.currency,
                &cart.status,
                &total.0,
                &total.1,
                &total.2,
                &cart.checked_out_total,
                &cart.order_id,
                &cart.created_at,
                &cart.checked_out_at,
                &cart.ended_at,
                &cart.updated_at,
                &cart.position,
            ]);
        }
        copy_new_rows(
            tx,
            &format!("{}.carts", self.schema),
            "cart_id, owner_kind, customer_id, guest_token, currency, status, line_count, \
             item_count, total_minor, checked_out_total_minor, order_id, created_at, \
             checked_out_at, ended_at, updated_at, position",
            &[
                Type::UUID,
                Type::TEXT,
                Type::UUID,
                Type::UUID,
                Type::TEXT,
                Type::TEXT,
                Type::INT4,
                Type::INT8,
                Type::INT8,
                Type::INT8,
                Type::UUID,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::TIMESTAMPTZ,
                Type::INT8,
            ],
            carts,
        )
        .await?;
        let line_totals: Vec<i64> = self
            .carts
            .iter()
            .flat_map(|(_, cart)| cart.lines.iter().map(|l| l.quantity * l.unit_price))
            .collect();
        let mut lines: Vec<Row> = Vec::with_capacity(line_totals.len());
        let mut line_totals = line_totals.iter();
        for (id, cart) in self.carts.iter() {
            for (line, total) in cart.lines.iter().zip(line_totals.by_ref()) {
                lines.push(vec![
                    id,
                    &line.sku,
                    &line.line_no,
                    &line.quantity,
                    &line.unit_price,
                    total,
                ]);
            }
        }
        copy_new_rows(
            tx,
            &format!("{}.cart_lines", self.schema),
            "cart_id, sku, line_no, quantity, unit_price_minor, line_total_minor",
            &[
                Type::UUID,
                Type::TEXT,
                Type::INT4,
                Type::INT8,
                Type::INT8,
                Type::INT8,
            ],
            lines,
        )
        .await?;
        Ok(())
    }
}

fn check_currency(event: &Decoded, cart: &str, line: &str) -> Result<(), ApplyError> {
    if cart == line {
        Ok(())
    } else {
        Err(poison(event, format!("a {line} price in a {cart} cart")))
    }
}

#[derive(Default)]
struct CartColumns<'a> {
    ids: Vec<Uuid>,
    owner_kinds: Vec<&'a str>,
    customers: Vec<Option<Uuid>>,
    guests: Vec<Option<Uuid>>,
    currencies: Vec<&'a str>,
    statuses: Vec<&'a str>,
    line_counts: Vec<i32>,
    item_counts: Vec<i64>,
    totals: Vec<i64>,
    checked_out_totals: Vec<Option<i64>>,
    orders: Vec<Option<Uuid>>,
    created: Vec<DateTime<Utc>>,
    checked_out: Vec<Option<DateTime<Utc>>>,
    ended: Vec<Option<DateTime<Utc>>>,
    updated: Vec<DateTime<Utc>>,
    positions: Vec<i64>,
}

#[async_trait]
impl ReadModel for CartsModel {
    fn touch(&mut self, events: &[&Decoded]) {
        for event in events {
            if let Ok(ShopEvent::Cart { id, .. }) = &event.event {
                self.carts.touch(id.as_uuid(), event.version == 1);
            }
        }
    }

    fn needs_load(&self) -> bool {
        self.carts.needs_load()
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
        self.carts
            .for_each_mut(|cart| cart.stored_lines.clone_from(&cart.lines));
        self.carts.committed();
    }

    fn forget(&mut self) {
        self.carts.forget();
    }
}
