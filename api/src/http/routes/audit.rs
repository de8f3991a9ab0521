//! Audit reads of the log (auditors and admins): one stream's events, the whole log
//! from a position (optionally one category), in JSON pages or streamed as NDJSON.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use eventstore::{Direction, EventStore, RecordedEvent};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::http::extract::QueryParams;
use crate::http::problem::{ApiError, Problem};
use crate::http::views::EventView;
use crate::http::{json_response, AppState, Principal, Role};

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
        return ndjson(state, query).await;
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
    ndjson(state, query).await
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

async fn ndjson(state: AppState, query: LogQuery) -> Result<Response, ApiError> {
    check_category(query.category.as_deref())?;
    if query.limit == Some(0) {
        return Err(ApiError::bad_parameter("limit", "limit must be at least 1"));
    }
    let head = state.store().head().await?;
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
