//! A count of units in one command or line: never zero, never above
//! [`Quantity::MAX`]. The bound keeps every `quantity * unit price` and every stock
//! sum far from overflow and stops a typo of a few extra zeros at the edge.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

use crate::DomainError;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u32")]
pub struct Quantity(NonZeroU32);

impl Quantity {
    /// The largest quantity one command or one line may carry.
    pub const MAX: u32 = 1_000_000;
    pub const ONE: Quantity = Quantity(NonZeroU32::MIN);

    pub fn new(value: u32) -> Result<Self, DomainError> {
        Self::try_from(i128::from(value))
    }

    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The sum, if it is still a valid quantity.
    pub fn checked_add(self, other: Quantity) -> Result<Quantity, DomainError> {
        Self::try_from(i128::from(self.get()) + i128::from(other.get()))
    }
}

impl TryFrom<i128> for Quantity {
    type Error = DomainError;
    fn try_from(value: i128) -> Result<Self, Self::Error> {
        let out_of_range = DomainError::QuantityOutOfRange {
            value,
            max: Self::MAX,
        };
        if value > i128::from(Self::MAX) {
            return Err(out_of_range);
        }
        u32::try_from(value)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Self)
            .ok_or(out_of_range)
    }
}

impl TryFrom<u32> for Quantity {
    type Error = DomainError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<u64> for Quantity {
    type Error = DomainError;
    fn try_from(value: u64) -> Result<Self, Self::Error> {
        Self::try_from(i128::from(value))
    }
}

impl TryFrom<i64> for Quantity {
    type Error = DomainError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::try_from(i128::from(value))
    }
}

impl From<Quantity> for u32 {
    fn from(q: Quantity) -> Self {
        q.get()
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.get().fmt(f)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({})", self.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_negative_and_huge_quantities_are_refused() {
        assert_eq!(
            Quantity::try_from(0_u64),
            Err(DomainError::QuantityOutOfRange {
                value: 0,
                max: Quantity::MAX
            })
        );
        assert!(Quantity::try_from(-3_i64).is_err());
        assert!(Quantity::try_from(1_000_001_u64).is_err());
        assert!(Quantity::try_from(u64::MAX).is_err());
        assert_eq!(
            Quantity::try_from(1_000_000_i64).map(Quantity::get),
            Ok(1_000_000)
        );
    }

    #[test]
    fn quantity_deserialisation_validates() {
        assert_eq!(
            serde_json::from_str::<Quantity>("7")
                .map(Quantity::get)
                .ok(),
            Some(7)
        );
        for bad in ["0", "-1", "1000001", "1.5", "\"3\""] {
            assert!(
                serde_json::from_str::<Quantity>(bad).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn adding_quantities_past_the_bound_is_refused() {
        let big = Quantity::new(Quantity::MAX).unwrap();
        assert!(big.checked_add(Quantity::ONE).is_err());
    }
}
