//! Orders: read one (its customer or staff), cancel one (its customer or an admin).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::{Order, OrderCommand, OrderId};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::http::command::{CommandAccepted, CommandMeta};
use crate::http::extract::JsonBody;
use crate::http::problem::{ApiError, Problem};
use crate::http::views::{replay, OrderView};
use crate::http::{json_response, AppState, Principal, Role};

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelOrderRequest {
    /// Why: 1..=500 characters.
    pub reason: String,
}

fn order_id(raw: &str) -> Result<OrderId, ApiError> {
    OrderId::parse(raw).map_err(|e| ApiError::bad_parameter("order_id", e.to_string()))
}

/// Cancels an order that is not confirmed yet.
#[utoipa::path(post, path = "/v1/orders/{order_id}/cancel", tag = "orders", request_body = CancelOrderRequest,
    params(("order_id" = Uuid, Path), ("Idempotency-Key" = String, Header, description = "Makes retries safe")),
    responses((status = 202, body = CommandAccepted),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    Path(raw_id): Path<String>,
    meta: CommandMeta,
    body: JsonBody<CancelOrderRequest>,
) -> Response {
    let order_id = match meta
        .principal
        .require(&[Role::Customer, Role::Admin])
        .and_then(|()| order_id(&raw_id))
    {
        Ok(id) => id,
        Err(e) => return e.into_response(),
    };
    let fingerprint = body.fingerprint;
    let request = body.value;
    let principal = meta.principal.clone();
    meta.run(
        state.clone(),
        "CancelOrder",
        Some(&fingerprint),
        |context| async move {
            let orders = state.commands().orders();
            let order = orders.load(&Order::stream_id(&order_id)).await?.state;
            if !principal.may_see_customer(order.customer_id()) {
                return Err(ApiError::not_found("order"));
            }
            let command = OrderCommand::Cancel {
                order_id,
                reason: request.reason,
                at: Utc::now(),
            };
            let committed = orders.execute(command, &context).await?;
            Ok((
                StatusCode::ACCEPTED,
                CommandAccepted::new()
                    .id("order_id", order_id)
                    .wrote(&committed),
            ))
        },
    )
    .await
}

/// An order as its stream says now: its customer, staff (admin, auditor), else 404.
#[utoipa::path(get, path = "/v1/orders/{order_id}", tag = "orders",
    params(("order_id" = Uuid, Path)),
    responses((status = 200, body = OrderView),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")),
    security(("bearer" = [])))]
pub async fn get(
    State(state): State<AppState>,
    principal: Principal,
    Path(raw_id): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(&[Role::Customer, Role::Admin, Role::Auditor])?;
    let order_id = order_id(&raw_id)?;
    // Personal fields opened, or erased once the customer was forgotten.
    let reader = super::privacy::private_reader(&state);
    let replayed = replay::<Order>(&reader, &Order::stream_id(&order_id)).await?;
    if !principal.may_see_customer(replayed.state.customer_id()) {
        return Err(ApiError::not_found("order"));
    }
    let view = OrderView::of(&replayed.state, replayed.version)
        .ok_or_else(|| ApiError::not_found("order"))?;
    Ok(json_response(StatusCode::OK, &view))
}
