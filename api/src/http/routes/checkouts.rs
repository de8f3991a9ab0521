//! Checkouts: the saga that takes a checked-out cart to a paid order (started by
//! `POST /v1/carts/{cart_id}/checkout`). Its status is a query on its stream, and it
//! streams as server-sent events until it ends. The checkout's customer or staff
//! (admin, auditor) may read it; anyone else gets a 404.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::{
    Aggregate, Checkout, CheckoutEvent, CheckoutId, CheckoutStatus, DomainEvent, MoneyState,
};
use eventstore::{Direction, EventStore};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::http::problem::{ApiError, Problem};
use crate::http::views::{replay, MoneyView};
use crate::http::{json_response, AppState, Principal, Role};

const CHECKOUT_READERS: &[Role] = &[Role::Customer, Role::Admin, Role::Auditor];
/// How long one event stream stays open before the client reconnects (with
/// `Last-Event-ID`), in seconds.
pub const CHECKOUT_SSE_MAX_SECS: u64 = 600;
/// How long the stream waits for the log to move before looking again, in seconds.
const CHECKOUT_SSE_POLL_SECS: u64 = 10;
/// Events read per query while streaming.
const CHECKOUT_SSE_PAGE_EVENTS: usize = 100;

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutLineView {
    pub sku: String,
    pub quantity: u32,
    /// `pending`, `reserved`, `unavailable`, `committed`, `released` or `restocked`.
    pub stock: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutView {
    pub checkout_id: Uuid,
    /// The order the checkout places (the same UUID).
    pub order_id: Uuid,
    pub cart_id: Uuid,
    /// `placing`, `reserving`, `authorizing`, `confirming`, `capturing`, `committing`,
    /// `closing`, `completed`, `compensating`, `rejected` or `cancelled`.
    pub status: String,
    /// Why the checkout was rejected or cancelled (or is compensating).
    pub reason: Option<String>,
    pub total: Option<MoneyView>,
    /// `none`, `authorizing`, `authorized`, `declined`, `captured`, `voided`,
    /// `refunded`, `nothing_taken` or `abandoned` (a person must settle it).
    pub payment: String,
    pub lines: Vec<CheckoutLineView>,
    pub started_at: DateTime<Utc>,
    pub deadline: DateTime<Utc>,
    pub status_changed_at: DateTime<Utc>,
    /// The stream version the view reflects.
    pub version: u64,
}

impl CheckoutView {
    pub fn of(checkout: &Checkout, version: u64) -> Option<Self> {
        let id = checkout.id()?;
        Some(CheckoutView {
            checkout_id: *id.as_uuid(),
            order_id: *Checkout::order_id(id).as_uuid(),
            cart_id: *checkout.cart_id()?.as_uuid(),
            status: checkout.status()?.as_str().to_owned(),
            reason: checkout.reason().map(str::to_owned),
            total: checkout.total().map(MoneyView::from),
            payment: money(checkout.money()?).to_owned(),
            lines: checkout
                .lines()
                .iter()
                .map(|l| CheckoutLineView {
                    sku: l.sku.to_string(),
                    quantity: l.quantity.get(),
                    stock: serde_json::to_value(l.stock)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                })
                .collect(),
            started_at: checkout.started_at()?,
            deadline: checkout.deadline()?,
            status_changed_at: checkout.status_changed_at()?,
            version,
        })
    }
}

fn money(state: MoneyState) -> &'static str {
    match state {
        MoneyState::None => "none",
        MoneyState::Authorizing => "authorizing",
        MoneyState::Authorized => "authorized",
        MoneyState::Declined => "declined",
        MoneyState::Captured => "captured",
        MoneyState::Settled(domain::PaymentSettlement::Voided) => "voided",
        MoneyState::Settled(domain::PaymentSettlement::Refunded) => "refunded",
        MoneyState::Settled(domain::PaymentSettlement::NothingTaken) => "nothing_taken",
        MoneyState::Abandoned => "abandoned",
    }
}

fn checkout_id(raw: &str) -> Result<CheckoutId, ApiError> {
    CheckoutId::parse(raw).map_err(|e| ApiError::bad_parameter("checkout_id", e.to_string()))
}

/// A checkout's status as its stream says now.
#[utoipa::path(get, path = "/v1/checkouts/{checkout_id}", tag = "carts",
    params(("checkout_id" = Uuid, Path)),
    responses((status = 200, body = CheckoutView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(CHECKOUT_READERS)?;
    let id = checkout_id(&raw_id)?;
    let reader = crate::saga::private_reader(&state);
    let replayed = replay::<Checkout>(&reader, &Checkout::stream_id(&id)).await?;
    if !principal.may_see_customer(replayed.state.customer_id()) {
        return Err(ApiError::not_found("checkout"));
    }
    let view = CheckoutView::of(&replayed.state, replayed.version)
        .ok_or_else(|| ApiError::not_found("checkout"))?;
    Ok(json_response(StatusCode::OK, &view))
}

/// One server-sent event: the stored event's type and version, and the checkout's
/// status after it.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckoutStreamEvent {
    #[serde(rename = "type")]
    pub event_type: String,
    pub version: u64,
    pub position: u64,
    pub status: String,
    pub reason: Option<String>,
    pub payment: String,
    pub at: DateTime<Utc>,
}

/// The checkout's events as server-sent events (`text/event-stream`), from the start
/// or after `Last-Event-ID` (a stream version); each event's `id` is its version and
/// its `event` its type. The stream ends once the checkout is completed, rejected or
/// cancelled, or after 600 s (reconnect with `Last-Event-ID`).
#[utoipa::path(get, path = "/v1/checkouts/{checkout_id}/events", tag = "carts",
    params(("checkout_id" = Uuid, Path), ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this version")),
    responses((status = 200, description = "Server-sent events, one per checkout event", body = CheckoutStreamEvent, content_type = "text/event-stream"),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn events(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    principal.require(CHECKOUT_READERS)?;
    let id = checkout_id(&raw_id)?;
    let after: u64 = match headers.get("last-event-id") {
        None => 0,
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| {
                ApiError::bad_parameter("Last-Event-ID", "must be a stream version (an integer)")
            })?,
    };
    let reader = crate::saga::private_reader(&state);
    let stream_id = Checkout::stream_id(&id);
    let first = replay::<Checkout>(&reader, &stream_id).await?;
    if first.state.id().is_none() || !principal.may_see_customer(first.state.customer_id()) {
        return Err(ApiError::not_found("checkout"));
    }
    let store = state.store().clone();
    let stream = async_stream_of(reader, store, stream_id, after);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

struct Cursor {
    reader: eventstore::privacy::PrivateStore,
    store: eventstore::PostgresStore,
    stream_id: String,
    state: Checkout,
    version: u64,
    after: u64,
    pending: std::collections::VecDeque<Event>,
    done: bool,
    until: tokio::time::Instant,
}

/// The SSE body: replays the stream, sends what is after `after`, then follows the
/// log until the checkout ends or the time is up.
fn async_stream_of(
    reader: eventstore::privacy::PrivateStore,
    store: eventstore::PostgresStore,
    stream_id: String,
    after: u64,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let cursor = Cursor {
        reader,
        store,
        stream_id,
        state: Checkout::default(),
        version: 0,
        after,
        pending: Default::default(),
        done: false,
        until: tokio::time::Instant::now() + Duration::from_secs(CHECKOUT_SSE_MAX_SECS),
    };
    futures::stream::unfold(cursor, |mut cursor| async move {
        loop {
            if let Some(event) = cursor.pending.pop_front() {
                return Some((Ok(event), cursor));
            }
            if cursor.done || tokio::time::Instant::now() >= cursor.until {
                return None;
            }
            let head = cursor.store.head().await.unwrap_or(0);
            match cursor.next_page().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(message) => {
                    cursor.done = true;
                    cursor
                        .pending
                        .push_back(Event::default().event("error").data(message));
                    continue;
                }
            }
            let wait = Duration::from_secs(CHECKOUT_SSE_POLL_SECS).min(
                cursor
                    .until
                    .saturating_duration_since(tokio::time::Instant::now()),
            );
            let _ = cursor.store.wait_for_head(head, wait).await;
        }
    })
}

impl Cursor {
    /// Reads the next page of the stream into `pending`; false when there was none.
    async fn next_page(&mut self) -> Result<bool, String> {
        let page = self
            .reader
            .read_stream(
                &self.stream_id,
                self.version + 1,
                Direction::Forward,
                CHECKOUT_SSE_PAGE_EVENTS,
            )
            .await
            .map_err(|e| e.to_string())?;
        if page.is_empty() {
            return Ok(false);
        }
        for recorded in page {
            let event = CheckoutEvent::from_stored(
                &recorded.event_type,
                recorded.schema_version,
                recorded.data.clone(),
            )
            .map_err(|e| e.to_string())?;
            self.state = std::mem::take(&mut self.state).evolve(&event);
            self.version = recorded.version;
            let status = self.state.status();
            if matches!(
                status,
                Some(
                    CheckoutStatus::Completed
                        | CheckoutStatus::Rejected
                        | CheckoutStatus::Cancelled
                )
            ) {
                self.done = true;
            }
            if recorded.version <= self.after {
                continue;
            }
            let body = CheckoutStreamEvent {
                event_type: event.event_type().to_owned(),
                version: recorded.version,
                position: recorded.position,
                status: status.map_or("", CheckoutStatus::as_str).to_owned(),
                reason: self.state.reason().map(str::to_owned),
                payment: self.state.money().map_or("none", money).to_owned(),
                at: recorded.recorded_at,
            };
            let data = serde_json::to_string(&body).map_err(|e| e.to_string())?;
            self.pending.push_back(
                Event::default()
                    .id(recorded.version.to_string())
                    .event(event.event_type())
                    .data(data),
            );
        }
        Ok(true)
    }
}
