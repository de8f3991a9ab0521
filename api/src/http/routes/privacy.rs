//! Privacy and the audit trail: an admin erases a customer's personal data by
//! destroying their data key (crypto-shredding, `docs/privacy.md`); auditors read who
//! ran the operations that are not appends (rebuilds, exports, erasures).

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use eventstore::audit::{AuditTrail, TrailEntry, TRAIL_PAGE_MAX_ENTRIES};
use eventstore::privacy::{KeyVault, PrivateStore};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::http::extract::QueryParams;
use crate::http::problem::{ApiError, Problem};
use crate::http::{json_response, AppState, Principal, Role};
use crate::privacy::{forget_customer, ForgetError, Forgotten};

/// The log as readers of the shop's state see it: personal fields opened, or erased
/// once their key is gone. A vault of its own per use, so a key destroyed anywhere is
/// never read from a stale cache here.
pub(crate) fn private_reader(state: &AppState) -> PrivateStore {
    let pool = state.store().pool().clone();
    PrivateStore::new(
        Arc::new(state.store().clone()),
        KeyVault::new(pool),
        commands::PERSONAL_DATA,
    )
}

/// Records an operation in the audit trail. A failure to record is logged and does
/// not undo the operation (it is done), but it is never silent.
pub(crate) async fn record(
    state: &AppState,
    principal: &Principal,
    action: &str,
    details: serde_json::Value,
) {
    let trail = AuditTrail::new(state.store().pool().clone());
    if let Err(e) = trail.record(&principal.actor(), action, &details).await {
        tracing::error!(action, error = %e, "cannot record the operation in the audit trail");
    }
}

/// Erases a customer's personal data: destroys their data key, so every sealed field
/// of theirs in the log reads as `[erased]` from now on, and erases the copies in the
/// read models. The events, their totals and SKUs, and the hash chain are untouched.
/// Repeating it is harmless.
#[utoipa::path(post, path = "/v1/admin/customers/{customer_id}/forget", tag = "privacy",
    params(("customer_id" = Uuid, Path)),
    responses((status = 200, body = Forgotten),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn forget(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Admin])?;
    let customer_id = Uuid::parse_str(&raw_id)
        .map_err(|e| ApiError::bad_parameter("customer_id", e.to_string()))?;
    let forgotten = forget_customer(state.store(), customer_id)
        .await
        .map_err(|e| match e {
            ForgetError::Store(store) => ApiError::from(store),
            ForgetError::ReadModels(_) => ApiError::internal(e.to_string()),
        })?;
    record(
        &state,
        &principal,
        "privacy.forget",
        serde_json::json!({
            "customer_id": customer_id,
            "key_destroyed": forgotten.key_destroyed,
            "orders_erased": forgotten.orders_erased,
        }),
    )
    .await;
    Ok(json_response(StatusCode::OK, &forgotten))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TrailQuery {
    /// Entries with an id above this one (default 0).
    pub after: Option<i64>,
    /// Most entries, 1..=1000 (default 100).
    pub limit: Option<i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrailEntryView {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// `role:subject` of the token, or `cli:<user>`.
    pub actor: String,
    pub action: String,
    #[schema(value_type = Object)]
    pub details: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TrailPage {
    pub entries: Vec<TrailEntryView>,
    /// The `after` of the next page.
    pub next_after: i64,
}

impl From<TrailEntry> for TrailEntryView {
    fn from(e: TrailEntry) -> Self {
        TrailEntryView {
            id: e.id,
            at: e.at,
            actor: e.actor,
            action: e.action,
            details: e.details,
        }
    }
}

/// The audit trail: who rebuilt read models, exported or verified the log, or erased
/// a customer, and when. (Appends carry their actor in each event's metadata.)
#[utoipa::path(get, path = "/v1/audit/trail", tag = "audit", params(TrailQuery),
    responses((status = 200, body = TrailPage),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn trail(
    State(state): State<AppState>,
    principal: Principal,
    QueryParams(query): QueryParams<TrailQuery>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Auditor, Role::Admin])?;
    let limit = query.limit.unwrap_or(100);
    if !(1..=TRAIL_PAGE_MAX_ENTRIES).contains(&limit) {
        return Err(ApiError::bad_parameter(
            "limit",
            format!("limit must be between 1 and {TRAIL_PAGE_MAX_ENTRIES}, got {limit}"),
        ));
    }
    let after = query.after.unwrap_or(0);
    let entries = AuditTrail::new(state.store().pool().clone())
        .read(after, limit)
        .await?;
    let next_after = entries.last().map_or(after, |e| e.id);
    Ok(json_response(
        StatusCode::OK,
        &TrailPage {
            entries: entries.into_iter().map(TrailEntryView::from).collect(),
            next_after,
        },
    ))
}
