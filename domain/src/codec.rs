//! The storage form shared by every event enum. Events are serde enums with struct
//! variants; serde's external tagging writes them as `{"VariantName": {fields}}`.
//! The store keeps the variant name in its own `type` column, so `to_data` strips that
//! outer object and `from_stored` puts it back before deserialising. Each enum lists
//! its `(type, current schema version)` pairs in one table; `from_stored` refuses a
//! type not in the table and a version it has no upcaster for.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::DecodeError;

/// The fields of one event variant, without the variant name.
pub(crate) fn to_data<E: Serialize>(event: &E) -> Value {
    // Serialising these plain data types cannot fail: every map key is a string (or a
    // newtype that serialises as one) and no Serialize impl returns an error. A
    // failure would be a bug in this crate, not bad input, hence the panic.
    let value = serde_json::to_value(event).expect("events always serialise to JSON");
    match value {
        Value::Object(map) if map.len() == 1 => {
            map.into_iter().next().map(|(_, v)| v).unwrap_or_default()
        }
        other => other,
    }
}

/// The current schema version of `event_type`, or `UnknownType`.
pub(crate) fn current_version(types: &[(&str, u32)], event_type: &str) -> Result<u32, DecodeError> {
    types
        .iter()
        .find(|(name, _)| *name == event_type)
        .map(|&(_, version)| version)
        .ok_or_else(|| DecodeError::UnknownType(event_type.to_owned()))
}

/// Deserialises the current shape of `event_type` from its fields.
pub(crate) fn decode<E: DeserializeOwned>(event_type: &str, data: Value) -> Result<E, DecodeError> {
    let mut tagged = Map::with_capacity(1);
    tagged.insert(event_type.to_owned(), data);
    serde_json::from_value(Value::Object(tagged)).map_err(|e| DecodeError::Malformed {
        event_type: event_type.to_owned(),
        reason: e.to_string(),
    })
}

pub(crate) fn unsupported(event_type: &str, schema_version: u32) -> DecodeError {
    DecodeError::UnsupportedVersion {
        event_type: event_type.to_owned(),
        schema_version,
    }
}

/// The common body of `DomainEvent::from_stored`: look the type up, run the upcaster
/// for an older version (it returns `None` when it has none for that version), then
/// deserialise the current shape.
pub(crate) fn from_stored<E: DeserializeOwned>(
    types: &[(&str, u32)],
    event_type: &str,
    schema_version: u32,
    data: Value,
    upcast: impl FnOnce(&str, u32, Value) -> Option<Result<Value, DecodeError>>,
) -> Result<E, DecodeError> {
    let current = current_version(types, event_type)?;
    let data = if schema_version == current {
        data
    } else if schema_version < current {
        upcast(event_type, schema_version, data)
            .ok_or_else(|| unsupported(event_type, schema_version))??
    } else {
        return Err(unsupported(event_type, schema_version));
    };
    decode(event_type, data)
}

/// An upcaster for event enums whose every type is still at its first version.
pub(crate) fn no_upcasts(_: &str, _: u32, _: Value) -> Option<Result<Value, DecodeError>> {
    None
}
