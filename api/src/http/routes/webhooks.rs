//! `POST /v1/payments/webhooks`: the payment provider's callbacks. No bearer token:
//! a callback is authenticated by its HMAC signature under the secret shared with
//! the provider, and accepted only within the replay window
//! ([`sagas::psp::webhook`]). An authentic event is recorded once per provider event
//! id in the webhook inbox; a redelivery (or a replay within the window) is
//! acknowledged with 200 and changes nothing, so the provider stops retrying.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use sagas::psp::webhook::SIGNATURE_HEADER;
use sagas::psp::{Recorded, WebhookConfig, WebhookError, WebhookInbox, WebhookVerifier};
use serde::Serialize;
use utoipa::ToSchema;

use crate::http::problem::{ApiError, Problem};
use crate::http::{json_response, AppState};

/// The inbox, and the verifier when the server has a webhook secret.
pub struct PaymentWebhooks {
    verifier: Option<WebhookVerifier>,
    inbox: WebhookInbox,
}

impl PaymentWebhooks {
    /// Opens the inbox (creating its table: it must exist whichever role the engine
    /// later runs as); callbacks are accepted only with a `config`.
    pub async fn connect(
        pool: deadpool_postgres::Pool,
        config: Option<&WebhookConfig>,
    ) -> Result<Self, eventstore::StoreError> {
        Ok(PaymentWebhooks {
            verifier: config.map(WebhookConfig::verifier),
            inbox: WebhookInbox::connect(pool).await?,
        })
    }
}

/// The answer to an accepted callback.
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    /// The provider's event id.
    pub event_id: String,
    /// True if the event had been received before (nothing was recorded again).
    pub duplicate: bool,
}

/// A provider event as posted (documentation of the body; the signature is over its
/// exact bytes).
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // Only describes the body for the OpenAPI document.
pub struct WebhookEventBody {
    /// Unique per event; a redelivery carries the same id.
    pub id: String,
    /// `authorization.authorized`, `authorization.declined`, `authorization.captured`,
    /// `authorization.voided`, `refund.created`.
    #[schema(rename = "type")]
    pub event_type: String,
    /// Seconds since the Unix epoch.
    pub created: i64,
    /// The object the event is about (an authorization or a refund).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

fn refusal(error: WebhookError) -> ApiError {
    let status = match error {
        WebhookError::MissingSignature
        | WebhookError::MalformedSignature(_)
        | WebhookError::StaleTimestamp { .. }
        | WebhookError::BadSignature => StatusCode::UNAUTHORIZED,
        WebhookError::MalformedEvent(_) => StatusCode::BAD_REQUEST,
    };
    let field = match error {
        WebhookError::MalformedEvent(_) => "body",
        WebhookError::MissingSignature
        | WebhookError::MalformedSignature(_)
        | WebhookError::StaleTimestamp { .. }
        | WebhookError::BadSignature => "Psp-Signature",
    };
    ApiError::new(status, error.code(), error.to_string()).with_field(field)
}

/// A payment provider's callback, signed with `Psp-Signature: t=<unix>,v1=<hex
/// HMAC-SHA256 of "t.body">`.
#[utoipa::path(post, path = "/v1/payments/webhooks", tag = "payments",
    request_body(content = WebhookEventBody, content_type = "application/json"),
    params(("Psp-Signature" = String, Header,
        description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"t.body\">`")),
    responses(
        (status = 200, description = "Authentic; recorded now, or before (duplicate)", body = WebhookAck),
        (status = "default", description = "A problem", body = Problem, content_type = "application/problem+json")))]
pub async fn receive(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let webhooks = state.payment_webhooks();
    // Without a secret no callback can be authenticated: refused like a bad
    // signature (the provider retries), with a code of its own for the operator.
    let Some(verifier) = &webhooks.verifier else {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "webhooks-not-configured",
            "this server has no payment webhook secret",
        ));
    };
    let signature = headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    let verified = verifier
        .verify(signature, &body, chrono::Utc::now().timestamp())
        .map_err(|e| {
            tracing::warn!(code = e.code(), "payment webhook refused");
            refusal(e)
        })?;
    let recorded = webhooks.inbox.record(&verified).await?;
    tracing::info!(
        event_id = %verified.event.id,
        event_type = %verified.event.event_type,
        duplicate = recorded == Recorded::Duplicate,
        "payment webhook"
    );
    Ok(json_response(
        StatusCode::OK,
        &WebhookAck {
            event_id: verified.event.id,
            duplicate: recorded == Recorded::Duplicate,
        },
    ))
}
