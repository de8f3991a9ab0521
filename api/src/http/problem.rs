//! Every error the API answers with is an RFC 9457 `application/problem+json`
//! document with a stable `type` URI. This module is the one place where the
//! engine's errors ([`DomainError`], [`CommandError`], [`StoreError`],
//! [`ProjectionError`]) and the HTTP
//! layer's own (bad JSON, bad tokens, unknown routes) become problems.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use commands::CommandError;
use domain::DomainError;
use eventstore::StoreError;
use projections::ProjectionError;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The prefix of every problem type; the code follows it (`…/problems/out-of-stock`).
pub const PROBLEM_TYPE_BASE: &str = "https://commerce.example/problems/";
pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

/// A problem document as it goes over the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// A stable URI naming the kind of problem; clients branch on it.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// A short, stable summary of the type.
    pub title: String,
    pub status: u16,
    /// What went wrong with this request, for people.
    pub detail: String,
    /// The request field at fault (a JSON path such as `lines[0].quantity`, a query
    /// parameter or a header), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Further facts of the problem (e.g. `sku`, `requested`, `available`).
    #[serde(flatten)]
    #[schema(additional_properties)]
    pub extensions: Map<String, Value>,
}

/// An error of the HTTP layer, carrying what its problem document needs.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub field: Option<String>,
    pub extensions: Map<String, Value>,
    /// Seconds a client should wait before retrying (503s).
    pub retry_after_secs: Option<u32>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            field: None,
            extensions: Map::new(),
            retry_after_secs: None,
        }
    }

    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    /// A resource the caller may not see, or that does not exist: the same answer
    /// for both, so a customer cannot probe for other customers' ids.
    pub fn not_found(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            format!("no such {what}"),
        )
    }

    pub fn unauthorized(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", detail)
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// A query parameter, path segment or header that cannot be used.
    pub fn bad_parameter(field: &str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid-parameter", detail).with_field(field)
    }

    pub fn internal(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", detail)
    }

    pub fn problem(&self) -> Problem {
        Problem {
            problem_type: problem_type(self.code),
            title: title_of(self.code),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            field: self.field.clone(),
            extensions: self.extensions.clone(),
        }
    }
}

pub fn problem_type(code: &str) -> String {
    format!("{PROBLEM_TYPE_BASE}{code}")
}

/// `out-of-stock` -> `Out of stock`: stable per type, since the code is.
fn title_of(code: &str) -> String {
    let words: Vec<String> = code
        .split('-')
        .enumerate()
        .map(|(i, word)| match word {
            "json" | "sku" | "id" => word.to_uppercase(),
            _ if i == 0 => {
                let mut chars = word.chars();
                chars
                    .next()
                    .map(|first| first.to_uppercase().chain(chars).collect())
                    .unwrap_or_default()
            }
            _ => word.to_owned(),
        })
        .collect();
    words.join(" ")
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::warn!(status = self.status.as_u16(), code = self.code, detail = %self.detail, "request failed");
        }
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(PROBLEM_CONTENT_TYPE),
        );
        if let Some(secs) = self.retry_after_secs {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// The HTTP status of each refusal of the domain. Exhaustive on purpose: a new
/// variant must be placed here before it compiles.
fn domain_status(error: &DomainError) -> StatusCode {
    match error {
        // The request itself is wrong, whatever the state.
        DomainError::Invalid { .. }
        | DomainError::QuantityOutOfRange { .. }
        | DomainError::LimitExceeded { .. }
        | DomainError::Overflow
        | DomainError::CurrencyMismatch { .. }
        | DomainError::UnknownSku { .. }
        | DomainError::AmountMismatch { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        DomainError::NotFound { .. }
        | DomainError::LineNotFound { .. }
        | DomainError::ReservationUnknown { .. } => StatusCode::NOT_FOUND,
        // The request is fine but the aggregate's state refuses it.
        DomainError::AlreadyExists { .. }
        | DomainError::InvalidTransition { .. }
        | DomainError::DuplicateSku { .. }
        | DomainError::MissingPrice { .. }
        | DomainError::OutOfStock { .. }
        | DomainError::AdjustmentExceedsAvailable { .. }
        | DomainError::ReservationExists { .. }
        | DomainError::ReservationEnded { .. }
        | DomainError::CartLocked { .. }
        | DomainError::CartEmpty
        | DomainError::ExceedsAuthorized { .. }
        | DomainError::RefundExceedsCaptured { .. }
        | DomainError::RefundExists { .. } => StatusCode::CONFLICT,
        // A command routed to the wrong stream is a bug of ours, not of the client.
        DomainError::WrongStream { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The request field a refusal points at, where the variant names one.
fn domain_field(error: &DomainError) -> Option<&'static str> {
    match error {
        DomainError::Invalid { field, .. } => Some(field),
        DomainError::QuantityOutOfRange { .. } => Some("quantity"),
        DomainError::CurrencyMismatch { .. } => Some("currency"),
        DomainError::UnknownSku { .. } | DomainError::DuplicateSku { .. } => Some("sku"),
        DomainError::LimitExceeded { .. }
        | DomainError::Overflow
        | DomainError::AlreadyExists { .. }
        | DomainError::NotFound { .. }
        | DomainError::WrongStream { .. }
        | DomainError::InvalidTransition { .. }
        | DomainError::MissingPrice { .. }
        | DomainError::OutOfStock { .. }
        | DomainError::AdjustmentExceedsAvailable { .. }
        | DomainError::ReservationExists { .. }
        | DomainError::ReservationUnknown { .. }
        | DomainError::ReservationEnded { .. }
        | DomainError::CartLocked { .. }
        | DomainError::CartEmpty
        | DomainError::LineNotFound { .. }
        | DomainError::AmountMismatch { .. }
        | DomainError::ExceedsAuthorized { .. }
        | DomainError::RefundExceedsCaptured { .. }
        | DomainError::RefundExists { .. } => None,
    }
}

impl From<DomainError> for ApiError {
    fn from(error: DomainError) -> Self {
        let mut api = ApiError::new(domain_status(&error), error.code(), error.to_string());
        api.field = domain_field(&error).map(str::to_owned);
        // The serde form of a refusal is its fields plus "code": they become the
        // problem's extension members (sku, requested, available, ...).
        if let Ok(Value::Object(fields)) = serde_json::to_value(&error) {
            api.extensions = fields
                .into_iter()
                .filter(|(k, _)| k != "code" && k != "field")
                .collect();
        }
        api
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        let detail = error.to_string();
        match error {
            StoreError::WrongExpectedVersion { .. } => {
                ApiError::new(StatusCode::CONFLICT, "wrong-expected-version", detail)
            }
            // What a command read moved while it was being written: retrying decides
            // it again on the new state.
            StoreError::StreamMoved { .. } => {
                ApiError::new(StatusCode::CONFLICT, "stream-moved", detail).retry_after(1)
            }
            StoreError::CommandIdReused { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was used for a different request",
            )
            .with_field("Idempotency-Key"),
            StoreError::DuplicateEventId { .. } => {
                ApiError::new(StatusCode::CONFLICT, "duplicate-event-id", detail)
            }
            // A command's key was answered meanwhile (by another process); the command
            // path answers with that answer, and this is what is left if the answer
            // could not be read: a retry with the same key gets it.
            StoreError::AlreadyAnswered { .. } => {
                ApiError::new(StatusCode::CONFLICT, "idempotency-key-in-flight", detail)
                    .with_field("Idempotency-Key")
                    .retry_after(1)
            }
            StoreError::InvalidRequest { field, .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-request", detail)
                    .with_field(field)
            }
            StoreError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", detail)
                    .retry_after(1)
            }
            StoreError::Overloaded(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "overloaded", detail).retry_after(1)
            }
            StoreError::Database(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "database", detail)
            }
            StoreError::Corrupt(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt-log", detail)
            }
        }
    }
}

impl From<ProjectionError> for ApiError {
    fn from(error: ProjectionError) -> Self {
        let detail = error.to_string();
        match error {
            ProjectionError::InvalidQuery { field, .. } => ApiError::bad_parameter(field, detail),
            ProjectionError::UnknownProjection(_) => ApiError::bad_parameter("projection", detail),
            // Another process rebuilds it now: try again once that one is done.
            ProjectionError::RebuildInProgress(_) => {
                ApiError::new(StatusCode::CONFLICT, "rebuild-in-progress", detail).retry_after(5)
            }
            ProjectionError::Store(store) => store.into(),
            ProjectionError::Unavailable(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", detail)
                    .retry_after(1)
            }
            // The read model's statement timeout: the same query would run as long
            // again, so no Retry-After; narrower filters answer.
            ProjectionError::Cancelled(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "query-timeout",
                format!(
                    "{detail}: the query reads too much of the read model; narrow its \
                     filters (status, brand, category, customer, SKU, dates), page less deep, \
                     or search (/v1/search)"
                ),
            ),
            ProjectionError::Poison { .. } | ProjectionError::Database(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "database", detail)
            }
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(error: CommandError) -> Self {
        let detail = error.to_string();
        let code = error.code();
        match error {
            CommandError::Rejected(domain) => domain.into(),
            CommandError::Store(store) => store.into(),
            CommandError::ProductNotSellable { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
                    .with_field("product_id")
            }
            CommandError::PriceMissing { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail).with_field("currency")
            }
            CommandError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, code, detail).retry_after(1)
            }
            CommandError::Overloaded { .. } | CommandError::Stopped { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(1)
            }
            // The store stopped answering: the engine is unavailable for now (503, as
            // every store outage), and the command's outcome is unknown until a retry
            // with the same Idempotency-Key finds it.
            CommandError::Timeout { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, detail).retry_after(1)
            }
            CommandError::Decode { .. } => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, detail)
            }
        }
    }
}

/// Statuses a layer below the handlers answers with a bare body (an unknown route,
/// a wrong method, tower-http's body limit and timeout): the problem code for each.
pub fn code_for_bare_status(status: StatusCode) -> &'static str {
    match status {
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::METHOD_NOT_ALLOWED => "method-not-allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "payload-too-large",
        StatusCode::REQUEST_TIMEOUT => "request-timeout",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported-media-type",
        StatusCode::NOT_ACCEPTABLE => "not-acceptable",
        s if s.is_server_error() => "internal",
        _ => "bad-request",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::Sku;

    #[test]
    fn a_refusal_keeps_its_code_fields_and_status() {
        let error = DomainError::OutOfStock {
            sku: Sku::parse("SHOE-1").unwrap(),
            requested: 3,
            available: 1,
        };
        let problem = ApiError::from(error).problem();
        assert_eq!(
            problem.problem_type,
            "https://commerce.example/problems/out-of-stock"
        );
        assert_eq!(problem.title, "Out of stock");
        assert_eq!(title_of("malformed-json"), "Malformed JSON");
        assert_eq!(title_of("unknown-sku"), "Unknown SKU");
        assert_eq!(problem.status, 409);
        assert_eq!(problem.extensions["sku"], "SHOE-1");
        assert_eq!(problem.extensions["available"], 1);
    }

    #[test]
    fn an_invalid_value_names_its_field() {
        let problem = ApiError::from(DomainError::Invalid {
            field: "title",
            reason: "must not be blank".into(),
        })
        .problem();
        assert_eq!(problem.status, 422);
        assert_eq!(problem.field.as_deref(), Some("title"));
        assert!(!problem.extensions.contains_key("field"));
    }

    #[test]
    fn transient_store_errors_are_503_with_retry_after() {
        let error = ApiError::from(StoreError::Unavailable("down".into()));
        assert_eq!(error.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(error.retry_after_secs, Some(1));
    }
}
