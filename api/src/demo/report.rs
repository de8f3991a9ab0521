//! The demo's report, taken from the event log rather than from what the shoppers
//! saw: orders by final state, units sold against units received per SKU (oversell),
//! the hash chain, the projections' lag; and the orders read model, read over HTTP,
//! held against the log.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use domain::{DomainEvent, InventoryEvent};
use eventstore::{EventStore, PostgresStore};

/// Events per read while going through the log.
const READ_PAGE_EVENTS: usize = 10_000;
/// Orders per page while counting the orders read model over HTTP (the API's most).
const ORDERS_PAGE_ITEMS: u64 = 500;

/// Orders by their final state, and stock by SKU, as the log tells them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogFigures {
    pub events: u64,
    pub orders_placed: u64,
    /// Orders whose last word is a confirmation (or shipping, delivery).
    pub orders_confirmed: u64,
    /// Orders cancelled, before or after confirmation.
    pub orders_cancelled: u64,
    /// Cancelled after they had been confirmed.
    pub orders_cancelled_after_confirmation: u64,
    pub orders_rejected: u64,
    /// Units received (and adjusted) over every SKU.
    pub units_stocked: i64,
    /// Units whose reservation was committed (sold), over every SKU.
    pub units_sold: i64,
    /// Units sold beyond what a SKU had in stock, summed over SKUs: must be 0.
    pub oversold: i64,
    /// Units sold and stocked of one SKU (the flash sale's).
    pub sku: HashMap<String, (i64, i64)>,
}

/// Reads the whole log once and counts.
pub async fn from_log(store: &PostgresStore) -> Result<LogFigures> {
    let mut figures = LogFigures::default();
    // Per order stream: (confirmed at some point, final state).
    let mut orders: HashMap<String, (bool, &'static str)> = HashMap::new();
    let mut after = 0;
    loop {
        let page = store
            .read_all(after, READ_PAGE_EVENTS, None)
            .await
            .context("reading the log")?;
        let Some(last) = page.last() else { break };
        after = last.position;
        figures.events += page.len() as u64;
        for event in &page {
            match event.category() {
                "order" => {
                    // By type alone: an order's personal fields may be encrypted or
                    // erased, and the report needs none of them.
                    let entry = orders
                        .entry(event.stream_id.clone())
                        .or_insert((false, "placed"));
                    match event.event_type.as_str() {
                        "OrderConfirmed" => *entry = (true, "confirmed"),
                        "OrderCancelled" => entry.1 = "cancelled",
                        "OrderRejected" => entry.1 = "rejected",
                        _ => {}
                    }
                }
                "inventory" => {
                    let decoded = InventoryEvent::from_stored(
                        &event.event_type,
                        event.schema_version,
                        event.data.clone(),
                    )?;
                    let sku = event.stream_id["inventory-".len()..].to_string();
                    let (stocked, sold) = figures.sku.entry(sku).or_default();
                    match decoded {
                        InventoryEvent::StockReceived { quantity, .. } => {
                            *stocked += i64::from(quantity.get())
                        }
                        InventoryEvent::StockAdjusted { delta, .. } => *stocked += delta,
                        InventoryEvent::ReservationCommitted { allocations, .. } => {
                            *sold += allocations
                                .iter()
                                .map(|a| i64::from(a.quantity.get()))
                                .sum::<i64>()
                        }
                        InventoryEvent::WarehousePrioritySet { .. }
                        | InventoryEvent::StockReserved { .. }
                        | InventoryEvent::ReservationReleased { .. }
                        | InventoryEvent::ReservationExpired { .. } => {}
                    }
                }
                _ => {}
            }
        }
    }
    figures.orders_placed = orders.len() as u64;
    for (confirmed, state) in orders.values() {
        match *state {
            "confirmed" => figures.orders_confirmed += 1,
            "cancelled" => {
                figures.orders_cancelled += 1;
                if *confirmed {
                    figures.orders_cancelled_after_confirmation += 1;
                }
            }
            "rejected" => figures.orders_rejected += 1,
            _ => {}
        }
    }
    for (stocked, sold) in figures.sku.values() {
        figures.units_stocked += stocked;
        figures.units_sold += sold;
        figures.oversold += (sold - stocked).max(0);
    }
    Ok(figures)
}

/// Whether the hash chain over the whole log verifies, and how many events it covered.
pub async fn chain_verified(store: &PostgresStore) -> Result<(bool, u64)> {
    let store: Arc<dyn EventStore> = Arc::new(store.clone());
    let report = eventstore::audit::verify_log(store, 1, |_, _| {})
        .await
        .context("verifying the hash chain")?;
    Ok((report.first_break.is_none(), report.checked))
}

/// Orders per status in the orders read model, counted page by page through
/// `GET /v1/orders` as `token` (staff), once the read model has applied `after`.
/// `None` if the read model answered stale or holds more orders than a page offset
/// reaches.
pub async fn orders_read_model(
    client: &super::client::Client,
    token: &str,
    after: u64,
) -> Result<Option<HashMap<String, u64>>> {
    let mut statuses: HashMap<String, u64> = HashMap::new();
    let mut offset: u64 = 0;
    loop {
        if offset > projections::PAGE_MAX_OFFSET {
            return Ok(None);
        }
        let path = format!(
            "/v1/orders?sort=oldest&limit={ORDERS_PAGE_ITEMS}&offset={offset}&after={after}"
        );
        let answer = client.get(token, &path).await?;
        anyhow::ensure!(
            answer.is_success(),
            "GET {path}: {} {}",
            answer.status,
            answer.body
        );
        if answer.body["stale"] != false {
            return Ok(None);
        }
        let items = answer.body["items"]
            .as_array()
            .context("an orders page without items")?;
        for order in items {
            let status = order["status"].as_str().unwrap_or("unknown").to_owned();
            *statuses.entry(status).or_default() += 1;
        }
        if answer.body["has_more"] != true {
            return Ok(Some(statuses));
        }
        offset += items.len() as u64;
    }
}
