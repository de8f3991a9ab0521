//! Liveness, readiness, metrics and the OpenAPI document: no token needed.

use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use eventstore::EventStore;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::http::idempotency::API_MIGRATIONS;
use crate::http::openapi::ApiDoc;
use crate::http::problem::ApiError;
use crate::http::{json_response, metrics, AppState};

/// How long `/ready` waits for the database.
const READY_TIMEOUT_MS: u64 = 2_000;
/// How long a scrape waits for the projections' status before it answers without
/// fresh projection gauges.
const PROJECTION_STATUS_TIMEOUT_MS: u64 = 1_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Ready {
    /// Always `ready` (otherwise the answer is a 503 problem).
    pub status: String,
    /// The log's head position.
    pub head: u64,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn health() -> Response {
    json_response(
        StatusCode::OK,
        &Health {
            status: "ok".into(),
        },
    )
}

/// Readiness: the database answers and every component's migrations are applied.
#[utoipa::path(get, path = "/ready", tag = "operations",
    responses(
        (status = 200, description = "Ready to serve", body = Ready),
        (status = 503, description = "Not ready", body = crate::http::problem::Problem,
            content_type = "application/problem+json")))]
pub async fn ready(State(state): State<AppState>) -> Response {
    let check = async {
        let client = state.store().connection().await?;
        let row = client
            .query_one(
                "SELECT coalesce(max(version) FILTER (WHERE component = 'api'), 0), \
                        count(*) FILTER (WHERE component = 'eventstore') \
                 FROM schema_migrations",
                &[],
            )
            .await
            .map_err(|e| eventstore::StoreError::Unavailable(e.to_string()))?;
        let api_version: i32 = row.get(0);
        let eventstore_migrations: i64 = row.get(1);
        let head = state.store().head().await?;
        Ok::<_, eventstore::StoreError>((api_version, eventstore_migrations, head))
    };
    let not_ready = |detail: String| {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not-ready", detail).into_response()
    };
    match tokio::time::timeout(Duration::from_millis(READY_TIMEOUT_MS), check).await {
        Err(_) => not_ready(format!(
            "the database did not answer within {READY_TIMEOUT_MS} ms"
        )),
        Ok(Err(e)) => not_ready(format!("the database is not reachable: {e}")),
        Ok(Ok((api_version, eventstore_migrations, head))) => {
            let latest = API_MIGRATIONS.last().map_or(0, |m| m.version);
            if api_version < latest || eventstore_migrations == 0 {
                return not_ready("migrations are not applied yet".into());
            }
            json_response(
                StatusCode::OK,
                &Ready {
                    status: "ready".into(),
                    head,
                },
            )
        }
    }
}

/// Prometheus metrics in the text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses((status = 200, description = "Prometheus text format", body = String,
        content_type = "text/plain; version=0.0.4")))]
pub async fn prometheus(State(state): State<AppState>) -> Response {
    let commands = state.commands();
    metrics::record_handler_stats("product", commands.products().stats());
    metrics::record_handler_stats("inventory", commands.inventory().stats());
    metrics::record_handler_stats("order", commands.orders().stats());
    metrics::record_handler_stats("payment", commands.payments().stats());
    let projections = tokio::time::timeout(
        Duration::from_millis(PROJECTION_STATUS_TIMEOUT_MS),
        projections::status(state.store()),
    )
    .await;
    match projections {
        Ok(Ok(statuses)) => metrics::record_projections(&statuses),
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read the projections' status for /metrics"),
        Err(_) => tracing::warn!(
            "the projections' status took over {PROJECTION_STATUS_TIMEOUT_MS} ms; /metrics shows the last"
        ),
    }
    let mut response = state.metrics().render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    response
}

/// This API's OpenAPI 3 document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI document", body = Object)))]
pub async fn openapi() -> Response {
    json_response(StatusCode::OK, &ApiDoc::openapi())
}
