//! Money as integer minor units plus an ISO-4217 currency; never a float. Every
//! arithmetic operation is checked: a currency mismatch or an overflow is a
//! [`DomainError`], not a wrapped or rounded number.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{DomainError, Quantity};

/// An ISO-4217 alphabetic code: exactly three ASCII upper-case letters. Whether the
/// code is assigned by ISO is the catalog's business, not checked here.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Currency([u8; 3]);

impl Currency {
    pub fn parse(code: &str) -> Result<Self, DomainError> {
        match code.as_bytes() {
            &[a, b, c] if [a, b, c].iter().all(u8::is_ascii_uppercase) => Ok(Self([a, b, c])),
            _ => Err(DomainError::invalid(
                "currency",
                format!("{code:?} is not three upper-case letters (ISO 4217)"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters get in through `parse`, so this never fails; the fallback
        // keeps the function total without a panic path.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl FromStr for Currency {
    type Err = DomainError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for Currency {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<Currency> for String {
    fn from(c: Currency) -> Self {
        c.as_str().to_owned()
    }
}

/// An amount in the smallest unit of its currency (cents for EUR, yen for JPY).
/// Negative amounts are representable (differences); the aggregates decide where
/// only positive ones are allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Money {
    pub minor: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(minor: i64, currency: Currency) -> Self {
        Self { minor, currency }
    }

    pub fn zero(currency: Currency) -> Self {
        Self { minor: 0, currency }
    }

    pub fn is_positive(&self) -> bool {
        self.minor > 0
    }

    pub fn checked_add(self, other: Money) -> Result<Money, DomainError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_add(other.minor)
            .ok_or(DomainError::Overflow)?;
        Ok(Self { minor, ..self })
    }

    pub fn checked_sub(self, other: Money) -> Result<Money, DomainError> {
        self.same_currency(other)?;
        let minor = self
            .minor
            .checked_sub(other.minor)
            .ok_or(DomainError::Overflow)?;
        Ok(Self { minor, ..self })
    }

    /// The price of `quantity` units at this unit price.
    pub fn checked_mul(self, quantity: Quantity) -> Result<Money, DomainError> {
        let minor = self
            .minor
            .checked_mul(i64::from(quantity.get()))
            .ok_or(DomainError::Overflow)?;
        Ok(Self { minor, ..self })
    }

    /// `CurrencyMismatch` unless `other` is in this amount's currency.
    pub fn same_currency(&self, other: Money) -> Result<(), DomainError> {
        if self.currency == other.currency {
            Ok(())
        } else {
            Err(DomainError::CurrencyMismatch {
                expected: self.currency,
                actual: other.currency,
            })
        }
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Minor units, because the number of decimals differs per currency and this
        // crate does not carry the ISO exponent table.
        write!(f, "{} {} (minor units)", self.minor, self.currency)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eur() -> Currency {
        Currency::parse("EUR").unwrap()
    }

    #[test]
    fn currency_must_be_three_upper_case_letters() {
        for bad in ["", "eu", "eur", "EURO", "E1R", "ÉUR"] {
            assert!(Currency::parse(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(eur().as_str(), "EUR");
    }

    #[test]
    fn currency_deserialisation_validates() {
        assert_eq!(
            serde_json::from_str::<Currency>("\"USD\"")
                .unwrap()
                .as_str(),
            "USD"
        );
        assert!(serde_json::from_str::<Currency>("\"usd\"").is_err());
        assert_eq!(serde_json::to_string(&eur()).unwrap(), "\"EUR\"");
    }

    #[test]
    fn adding_different_currencies_is_refused() {
        let usd = Currency::parse("USD").unwrap();
        let err = Money::new(1, eur())
            .checked_add(Money::new(1, usd))
            .unwrap_err();
        assert_eq!(
            err,
            DomainError::CurrencyMismatch {
                expected: eur(),
                actual: usd
            }
        );
    }

    #[test]
    fn overflowing_arithmetic_is_refused() {
        let max = Money::new(i64::MAX, eur());
        assert_eq!(
            max.checked_add(Money::new(1, eur())),
            Err(DomainError::Overflow)
        );
        assert_eq!(
            max.checked_mul(Quantity::new(2).unwrap()),
            Err(DomainError::Overflow)
        );
        assert_eq!(
            Money::new(i64::MIN, eur()).checked_sub(Money::new(1, eur())),
            Err(DomainError::Overflow)
        );
    }

    #[test]
    fn multiplying_by_a_quantity_gives_the_line_price() {
        let price = Money::new(1_999, eur());
        assert_eq!(
            price.checked_mul(Quantity::new(3).unwrap()),
            Ok(Money::new(5_997, eur()))
        );
    }
}
