//! Audit reads of the log (auditors and admins): one stream's events, the whole log
//! from a position (optionally one category), in JSON pages or streamed as NDJSON.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use eventstore::audit::{verify_log_postgres, VerifyReport};
use eventstore::{Direction, EventStore, RecordedEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::extract::QueryParams;
use crate::http::problem::{ApiError, Problem};
use crate::http::views::EventView;
use crate::http::{json_response, AppState, Principal, Role};
use crate::time_travel::{aggregate_as_of, AsOf, TimeTravelError};

pub const NDJSON: &str = "application/x-ndjson";
/// Events per JSON page unless `limit` says otherwise.
const DEFAULT_PAGE_EVENTS: usize = 100;

const AUDIT_ROLES: &[Role] = &[Role::Auditor, Role::Admin];

#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadDirection {
    Forward,
    Backward,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StreamEventsQuery {
    /// Forward: the first version to return (default 1). Backward: the last (default:
    /// the stream's end).
    pub from_version: Option<u64>,
    /// `forward` (default) or `backward`.
    #[param(value_type = Option<String>)]
    pub direction: Option<ReadDirection>,
    /// Most events to return, 1..=1000 (default 100).
    pub limit: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StreamEventsPage {
    pub stream_id: String,
    pub events: Vec<EventView>,
    /// The `from_version` of the next page, if there may be one.
    pub next_from_version: Option<u64>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// Return events with a position after this one (default 0: from the start).
    pub after: Option<u64>,
    /// JSON: most events to return, 1..=1000 (default 100). NDJSON: most events to
    /// stream (default: everything up to the head when the request arrived).
    pub limit: Option<u64>,
    /// Only events of this stream category (the stream id's prefix before `-`).
    pub category: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LogPage {
    pub events: Vec<EventView>,
    /// The `after` of the next page: the last position returned (or the request's
    /// `after` if none).
    pub next_after: u64,
    /// The log's head when the page was read.
    pub head: u64,
}

fn page_limit(limit: Option<u64>, max: usize) -> Result<usize, ApiError> {
    match limit {
        None => Ok(DEFAULT_PAGE_EVENTS.min(max)),
        Some(n) if n >= 1 && n <= max as u64 => Ok(n as usize),
        Some(n) => Err(ApiError::bad_parameter(
            "limit",
            format!("limit must be between 1 and {max}, got {n}"),
        )),
    }
}

fn check_category(category: Option<&str>) -> Result<(), ApiError> {
    match category {
        Some(c) if c.is_empty() || c.len() > eventstore::STREAM_ID_MAX_BYTES || c.contains('-') => {
            Err(ApiError::bad_parameter(
                "category",
                "a category is a non-empty stream id prefix without '-'",
            ))
        }
        _ => Ok(()),
    }
}

/// A stream's events, paged by version.
#[utoipa::path(get, path = "/v1/streams/{stream_id}/events", tag = "audit",
    params(("stream_id" = String, Path, description = "e.g. `cart-<uuid>`"), StreamEventsQuery),
    responses((status = 200, body = StreamEventsPage),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn stream_events(
    State(state): State<AppState>,
    principal: Principal,
    Path(stream_id): Path<String>,
    QueryParams(query): QueryParams<StreamEventsQuery>,
) -> Result<Response, ApiError> {
    principal.require(AUDIT_ROLES)?;
    let limit = page_limit(query.limit, state.config().page_max_events)?;
    let direction = match query.direction.unwrap_or(ReadDirection::Forward) {
        ReadDirection::Forward => Direction::Forward,
        ReadDirection::Backward => Direction::Backward,
    };
    let from = match direction {
        Direction::Forward => query.from_version.unwrap_or(1),
        Direction::Backward => query.from_version.unwrap_or(u64::MAX),
    };
    let events = state
        .store()
        .read_stream(&stream_id, from, direction, limit)
        .await
        .map_err(|e| match e {
            eventstore::StoreError::InvalidRequest { reason, .. } => {
                ApiError::bad_parameter("stream_id", reason)
            }
            other => other.into(),
        })?;
    let next_from_version = match (events.last(), events.len() == limit) {
        (Some(last), true) => match direction {
            Direction::Forward => Some(last.version + 1),
            Direction::Backward => last.version.checked_sub(1).filter(|v| *v > 0),
        },
        _ => None,
    };
    Ok(json_response(
        StatusCode::OK,
        &StreamEventsPage {
            stream_id,
            events: events.into_iter().map(EventView::from).collect(),
            next_from_version,
        },
    ))
}

/// The whole log from a position, optionally one category. With
/// `Accept: application/x-ndjson` the answer is streamed as NDJSON (see
/// `/v1/events.ndjson`).
#[utoipa::path(get, path = "/v1/events", tag = "audit", params(LogQuery),
    responses((status = 200, body = LogPage),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn log(
    State(state): State<AppState>,
    principal: Principal,
    headers: HeaderMap,
    QueryParams(query): QueryParams<LogQuery>,
) -> Result<Response, ApiError> {
    principal.require(AUDIT_ROLES)?;
    if wants_ndjson(&headers) {
        return ndjson(state, &principal, query).await;
    }
    check_category(query.category.as_deref())?;
    let limit = page_limit(query.limit, state.config().page_max_events)?;
    let after = query.after.unwrap_or(0);
    let head = state.store().head().await?;
    let events = state
        .store()
        .read_all(after, limit, query.category.as_deref())
        .await?;
    let next_after = events.last().map_or(after, |e| e.position);
    Ok(json_response(
        StatusCode::OK,
        &LogPage {
            events: events.into_iter().map(EventView::from).collect(),
            next_after,
            head: head.max(next_after),
        },
    ))
}

/// The log from a position as NDJSON, one event per line, read from the store page
/// by page as the client consumes it. Without `limit` it ends at the head the
/// request found. A read that fails midway aborts the response, so a stream without
/// its final chunk is a failed one.
#[utoipa::path(get, path = "/v1/events.ndjson", tag = "audit", params(LogQuery),
    responses((status = 200, description = "One event (as in `/v1/events`) per line",
        content_type = "application/x-ndjson", body = EventView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn log_ndjson(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<LogQuery>,
) -> Result<Response, ApiError> {
    principal.require(AUDIT_ROLES)?;
    ndjson(state, &principal, query).await
}

fn wants_ndjson(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.split(';').next().unwrap_or("").trim() == NDJSON)
}

struct Cursor {
    store: eventstore::PostgresStore,
    category: Option<String>,
    after: u64,
    /// Last position to stream.
    until: u64,
    /// Events still allowed by `limit`.
    remaining: u64,
    page: usize,
}

async fn ndjson(
    state: AppState,
    principal: &Principal,
    query: LogQuery,
) -> Result<Response, ApiError> {
    check_category(query.category.as_deref())?;
    if query.limit == Some(0) {
        return Err(ApiError::bad_parameter("limit", "limit must be at least 1"));
    }
    let head = state.store().head().await?;
    super::privacy::record(
        &state,
        principal,
        "audit.export",
        serde_json::json!({
            "after": query.after.unwrap_or(0),
            "until": head,
            "limit": query.limit,
            "category": query.category,
        }),
    )
    .await;
    let cursor = Cursor {
        store: state.store().clone(),
        category: query.category,
        after: query.after.unwrap_or(0),
        until: head,
        remaining: query.limit.unwrap_or(u64::MAX),
        page: state.config().ndjson_page_events,
    };
    let pages = futures::stream::try_unfold(cursor, |mut cursor| async move {
        if cursor.remaining == 0 || cursor.after >= cursor.until {
            return Ok(None);
        }
        let want = (cursor.page as u64).min(cursor.remaining) as usize;
        let events = cursor
            .store
            .read_all(cursor.after, want, cursor.category.as_deref())
            .await?;
        let events: Vec<RecordedEvent> = events
            .into_iter()
            .take_while(|e| e.position <= cursor.until)
            .collect();
        let Some(last) = events.last() else {
            return Ok(None);
        };
        cursor.after = last.position;
        cursor.remaining -= events.len() as u64;
        if events.len() < want {
            // The store had no more up to the head: this is the last page.
            cursor.remaining = 0;
        }
        let mut lines = Vec::with_capacity(events.len() * 512);
        for event in events {
            serde_json::to_writer(&mut lines, &EventView::from(event))
                .map_err(|e| eventstore::StoreError::Corrupt(e.to_string()))?;
            lines.push(b'\n');
        }
        Ok::<_, eventstore::StoreError>(Some((Bytes::from(lines), cursor)))
    });
    let mut response = Body::from_stream(pages).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(NDJSON));
    Ok(response)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AggregateQuery {
    /// The state as it was at this moment (RFC 3339): the events recorded at or
    /// before it.
    pub at: Option<String>,
    /// The state after this version of the stream (0: before its first event).
    pub version: Option<u64>,
}

/// An aggregate's state as of a moment or version, and the events that led there.
#[derive(Debug, Serialize, ToSchema)]
pub struct AggregateView {
    pub stream_id: String,
    /// The aggregate type: `product`, `inventory`, `cart`, `order`, `payment`.
    pub aggregate: String,
    /// How many of the stream's events the state folds (0: it did not exist yet).
    pub version: u64,
    /// The stream's version now.
    pub stream_version: u64,
    /// The moment asked for, if one was.
    pub at: Option<DateTime<Utc>>,
    /// When the last event folded was recorded.
    pub last_recorded_at: Option<DateTime<Utc>>,
    /// The aggregate's state (the domain's serde form of it).
    #[schema(value_type = Object)]
    pub state: serde_json::Value,
    /// The events folded, in version order (at most the last 10,000).
    pub events: Vec<EventView>,
    /// Events folded but not listed (the earliest ones).
    pub events_omitted: u64,
}

impl From<TimeTravelError> for ApiError {
    fn from(error: TimeTravelError) -> Self {
        let detail = error.to_string();
        match error {
            TimeTravelError::UnknownAggregate { .. } => {
                ApiError::new(StatusCode::BAD_REQUEST, "not-an-aggregate", detail)
                    .with_field("stream_id")
            }
            TimeTravelError::NoStream(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not-found", detail)
            }
            TimeTravelError::VersionPastEnd { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "version-past-end", detail)
                    .with_field("version")
            }
            TimeTravelError::Undecodable { .. } => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "undecodable-event",
                detail,
            ),
            TimeTravelError::Store(store) => store.into(),
        }
    }
}

/// Parses `at` / `version` (at most one of them).
pub(crate) fn as_of(at: Option<&str>, version: Option<u64>) -> Result<AsOf, ApiError> {
    match (at, version) {
        (Some(_), Some(_)) => Err(ApiError::bad_parameter(
            "at",
            "give either at or version, not both",
        )),
        (Some(at), None) => DateTime::parse_from_rfc3339(at)
            .map(|at| AsOf::Time(at.with_timezone(&Utc)))
            .map_err(|e| {
                ApiError::bad_parameter("at", format!("{at:?} is not an RFC 3339 time: {e}"))
            }),
        (None, Some(version)) => Ok(AsOf::Version(version)),
        (None, None) => Ok(AsOf::Latest),
    }
}

/// Time travel: an aggregate's state as it was at a moment (`at`) or after a version
/// (`version`), replayed from its events; its current state without either.
#[utoipa::path(get, path = "/v1/audit/aggregates/{stream_id}", tag = "audit",
    params(("stream_id" = String, Path, description = "e.g. `order-<uuid>`, `inventory-<sku>`"),
        AggregateQuery),
    responses((status = 200, body = AggregateView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn aggregate(
    State(state): State<AppState>,
    principal: Principal,
    Path(stream_id): Path<String>,
    QueryParams(query): QueryParams<AggregateQuery>,
) -> Result<Response, ApiError> {
    principal.require(AUDIT_ROLES)?;
    let as_of = as_of(query.at.as_deref(), query.version)?;
    // Personal fields opened, or erased once their customer was forgotten.
    let reader = super::privacy::private_reader(&state);
    let found = aggregate_as_of(&reader, &stream_id, as_of).await?;
    Ok(json_response(
        StatusCode::OK,
        &AggregateView {
            stream_id: found.stream_id,
            aggregate: found.aggregate.to_owned(),
            version: found.version,
            stream_version: found.stream_version,
            at: found.at,
            last_recorded_at: found.last_recorded_at,
            state: found.state,
            events: found.events.into_iter().map(EventView::from).collect(),
            events_omitted: found.events_omitted,
        },
    ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct VerifyQuery {
    /// The first position to check (default 1); it chains to the stored hash before
    /// it.
    pub from: Option<u64>,
}

/// The outcome of recomputing the hash chain.
#[derive(Debug, Serialize, ToSchema)]
pub struct VerifyView {
    /// The first position checked.
    pub from: u64,
    /// Events checked (up to and including a break).
    pub checked: u64,
    /// The last position checked.
    pub last_position: u64,
    /// The first position whose stored hash does not match, if any.
    pub first_break: Option<u64>,
    pub intact: bool,
    pub elapsed_secs: f64,
    pub events_per_sec: f64,
}

impl From<VerifyReport> for VerifyView {
    fn from(report: VerifyReport) -> Self {
        VerifyView {
            from: report.from,
            checked: report.checked,
            last_position: report.last_position,
            first_break: report.first_break,
            intact: report.intact(),
            elapsed_secs: report.elapsed_secs,
            events_per_sec: report.events_per_sec(),
        }
    }
}

/// Recomputes the hash chain from `from` to the head the request found, and answers
/// with the first position whose stored hash does not match (200 either way: a
/// broken chain is a finding, not an error of the request).
#[utoipa::path(get, path = "/v1/audit/verify", tag = "audit", params(VerifyQuery),
    responses((status = 200, body = VerifyView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn verify(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<VerifyQuery>,
) -> Result<Response, ApiError> {
    principal.require(AUDIT_ROLES)?;
    let from = query.from.unwrap_or(1);
    if from == 0 {
        return Err(ApiError::bad_parameter("from", "positions start at 1"));
    }
    let report = verify_log_postgres(state.store(), from, |_, _| {}).await?;
    super::privacy::record(
        &state,
        &principal,
        "audit.verify",
        serde_json::json!({"from": from, "checked": report.checked, "first_break": report.first_break}),
    )
    .await;
    Ok(json_response(StatusCode::OK, &VerifyView::from(report)))
}
