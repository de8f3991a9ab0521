//! Short codes that people type and read: SKUs and warehouse ids. Both are
//! restricted to `[A-Za-z0-9._-]` so they are safe inside stream ids (`inventory-<sku>`),
//! URLs and log lines without escaping.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::DomainError;

fn parse_code(field: &'static str, value: String, max_len: usize) -> Result<String, DomainError> {
    if value.is_empty() || value.len() > max_len {
        return Err(DomainError::invalid(
            field,
            format!("must be 1..={max_len} characters, got {}", value.len()),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(DomainError::invalid(
            field,
            format!("{bad:?} is not allowed (only A-Z, a-z, 0-9, '.', '_', '-')"),
        ));
    }
    Ok(value)
}

macro_rules! code_type {
    ($(#[$meta:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$meta])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(value: impl Into<String>) -> Result<Self, DomainError> {
                parse_code($field, value.into(), Self::MAX_LEN).map(Self)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> Self {
                v.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    };
}

code_type!(
    /// A stock keeping unit: 1..=64 characters of `[A-Za-z0-9._-]`.
    Sku,
    "sku",
    64
);

code_type!(
    /// A warehouse code: 1..=32 characters of `[A-Za-z0-9._-]`.
    WarehouseId,
    "warehouse",
    32
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sku_accepts_letters_digits_dot_underscore_dash() {
        assert_eq!(
            Sku::parse("SHOE-42_blue.v2").unwrap().as_str(),
            "SHOE-42_blue.v2"
        );
        assert!(Sku::parse("a".repeat(64)).is_ok());
    }

    #[test]
    fn sku_rejects_empty_long_and_odd_characters() {
        for bad in [
            String::new(),
            "a".repeat(65),
            "has space".into(),
            "slash/".into(),
            "é".into(),
        ] {
            assert!(
                matches!(
                    Sku::parse(bad.clone()),
                    Err(DomainError::Invalid { field: "sku", .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn codes_deserialise_through_validation() {
        assert!(serde_json::from_str::<Sku>("\"ok-1\"").is_ok());
        assert!(serde_json::from_str::<Sku>("\"not ok\"").is_err());
        assert!(serde_json::from_str::<WarehouseId>(&format!("\"{}\"", "w".repeat(33))).is_err());
        assert_eq!(
            serde_json::to_string(&WarehouseId::parse("main").unwrap()).unwrap(),
            "\"main\""
        );
    }
}
