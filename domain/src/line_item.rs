//! One line of a cart or an order: a SKU, how many, and the unit price that the
//! command handler took from the catalog (never from the client).

use serde::{Deserialize, Serialize};

use crate::{Currency, DomainError, Money, Quantity, Sku};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: Sku,
    pub quantity: Quantity,
    pub unit_price: Money,
}

impl LineItem {
    /// `quantity * unit_price`, checked.
    pub fn total(&self) -> Result<Money, DomainError> {
        self.unit_price.checked_mul(self.quantity)
    }
}

/// The sum of the line totals in `currency` (zero for no lines), checked for both
/// currency and overflow.
pub(crate) fn sum<'a>(
    currency: Currency,
    lines: impl IntoIterator<Item = &'a LineItem>,
) -> Result<Money, DomainError> {
    lines
        .into_iter()
        .try_fold(Money::zero(currency), |total, line| {
            total.checked_add(line.total()?)
        })
}

/// A unit price must be a positive amount.
pub(crate) fn check_unit_price(price: Money) -> Result<(), DomainError> {
    if price.is_positive() {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "unit_price",
            format!("must be positive, got {price}"),
        ))
    }
}
