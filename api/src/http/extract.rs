//! Request extractors whose every failure is a problem document: a JSON body (with
//! the field at fault), query parameters, and the `Idempotency-Key` header.
//!
//! Bodies parse straight into request types built from the domain's value types
//! (`Quantity`, `Sku`, `Currency`, ...), so a value that passes here is valid, and
//! every request type denies unknown fields: a `price` in a cart request is refused,
//! not silently dropped.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::problem::ApiError;

/// Longest `Idempotency-Key` accepted, in bytes.
pub const IDEMPOTENCY_KEY_MAX_BYTES: usize = 255;

/// A JSON request body, parsed, with the fingerprint of its content (canonical JSON,
/// so whitespace and key order do not matter) for idempotent retries.
pub struct JsonBody<T> {
    pub value: T,
    pub fingerprint: [u8; 32],
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_json_content_type(req.headers())?;
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload-too-large",
                    "the request body is larger than the server accepts",
                )
            } else {
                ApiError::new(rejection.status(), "bad-request", rejection.body_text())
            }
        })?;
        parse_json(&bytes)
    }
}

fn require_json_content_type(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported-media-type",
            format!("expected Content-Type: application/json, got {content_type:?}"),
        )
        .with_field("Content-Type"))
    }
}

/// Parses a body: syntax errors are 400 `malformed-json`; well-formed JSON that does
/// not fit the request type is 422 (`unknown-field` or `invalid-field`, naming the
/// JSON path).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<JsonBody<T>, ApiError> {
    let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed-json",
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    let fingerprint = {
        use sha2::{Digest, Sha256};
        Sha256::digest(eventstore::hash::canonical_json(&raw)).into()
    };
    let value = serde_path_to_error::deserialize(raw).map_err(|e| {
        let path = e.path().to_string();
        let message = e.inner().to_string();
        field_error(&path, &message)
    })?;
    Ok(JsonBody { value, fingerprint })
}

/// The problem for a body that is JSON but not the expected shape.
fn field_error(path: &str, message: &str) -> ApiError {
    // serde names an unknown field in its message: "unknown field `price`, expected
    // one of ..."; the path is that of the object holding it.
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let field = join_path(path, name);
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown-field",
            format!("unknown field {field:?}: {message}"),
        )
        .with_field(field);
    }
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or(rest);
        let field = join_path(path, name);
        return ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing-field",
            format!("missing field {field:?}"),
        )
        .with_field(field);
    }
    let field = if path == "." {
        String::new()
    } else {
        path.into()
    };
    let mut error = ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-field",
        if field.is_empty() {
            message.to_owned()
        } else {
            format!("{field}: {message}")
        },
    );
    if !field.is_empty() {
        error = error.with_field(field);
    }
    error
}

fn join_path(path: &str, name: &str) -> String {
    if path.is_empty() || path == "." {
        name.to_owned()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        // serde_path_to_error already ends the path with the field.
        path.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Query parameters; unknown parameters are refused (a misspelt `catgory` must not
/// silently read the whole log).
pub struct QueryParams<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let query = parts.uri.query().unwrap_or("");
        let deserializer =
            serde_urlencoded::Deserializer::new(form_urlencoded::parse(query.as_bytes()));
        serde_path_to_error::deserialize(deserializer)
            .map(QueryParams)
            .map_err(|e| {
                let message = e.inner().to_string();
                let field = match message.strip_prefix("unknown field `") {
                    Some(rest) => rest.split('`').next().unwrap_or(rest).to_owned(),
                    None => e.path().to_string(),
                };
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid-parameter",
                    format!("query parameter {field}: {message}"),
                )
                .with_field(field)
            })
    }
}

/// The `Idempotency-Key` header every command must carry: 1..=255 visible ASCII
/// characters, chosen by the client (a UUID is a good choice).
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let missing = || {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "idempotency-key-required",
                "commands need an Idempotency-Key header (1 to 255 visible ASCII characters)",
            )
            .with_field("Idempotency-Key")
        };
        let value = parts
            .headers
            .get("idempotency-key")
            .ok_or_else(missing)?
            .to_str()
            .map_err(|_| missing())?;
        if value.is_empty()
            || value.len() > IDEMPOTENCY_KEY_MAX_BYTES
            || !value.bytes().all(|b| b.is_ascii_graphic())
        {
            return Err(missing());
        }
        Ok(IdempotencyKey(value.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // the fields are only parsed, which is what is tested
    struct Line {
        sku: domain::Sku,
        quantity: domain::Quantity,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)] // see `Line`
    struct Lines {
        lines: Vec<Line>,
    }

    fn error_of(body: &str) -> ApiError {
        match parse_json::<Lines>(body.as_bytes()) {
            Ok(_) => panic!("{body} was accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn syntax_errors_are_malformed_json() {
        let e = error_of("{\"lines\": [");
        assert_eq!(
            (e.status, e.code),
            (StatusCode::BAD_REQUEST, "malformed-json")
        );
    }

    #[test]
    fn unknown_fields_are_named_with_their_path() {
        let e = error_of(r#"{"lines":[{"sku":"A","quantity":1,"price":5}]}"#);
        assert_eq!(e.code, "unknown-field");
        assert_eq!(e.field.as_deref(), Some("lines[0].price"));
    }

    #[test]
    fn invalid_values_name_their_path() {
        for quantity in ["0", "-1", "1000001", "99999999999999999999999", "1.5"] {
            let e = error_of(&format!(
                r#"{{"lines":[{{"sku":"A","quantity":{quantity}}}]}}"#
            ));
            assert_eq!(e.code, "invalid-field", "{quantity}");
            assert_eq!(e.field.as_deref(), Some("lines[0].quantity"), "{quantity}");
        }
    }

    #[test]
    fn the_fingerprint_ignores_layout() {
        let a = parse_json::<Lines>(br#"{"lines":[{"sku":"A","quantity":1}]}"#).unwrap();
        let b = parse_json::<Lines>(b"{ \"lines\" : [ { \"quantity\" : 1, \"sku\" : \"A\" } ] }")
            .unwrap();
        assert_eq!(a.fingerprint, b.fingerprint);
    }
}
