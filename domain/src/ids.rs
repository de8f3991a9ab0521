//! Identifiers as newtypes over UUIDs, so an order id cannot be passed where a cart id
//! is expected. They serialise as the plain UUID string. The ids are chosen by the
//! caller (commands carry them), which keeps this crate free of randomness.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::DomainError;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident, $field:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub const fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }

            pub const fn as_uuid(&self) -> &Uuid {
                &self.0
            }

            pub fn parse(s: &str) -> Result<Self, DomainError> {
                Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| DomainError::invalid($field, e.to_string()))
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl FromStr for $name {
            type Err = DomainError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0.hyphenated())
            }
        }
    };
}

uuid_id!(ProductId, "product_id");
uuid_id!(CartId, "cart_id");
uuid_id!(OrderId, "order_id");
uuid_id!(PaymentId, "payment_id");
uuid_id!(
    /// One stock reservation on one SKU; single use (see `Inventory`).
    ReservationId,
    "reservation_id"
);
uuid_id!(CustomerId, "customer_id");
uuid_id!(
    /// The anonymous owner of a guest cart (the token kept in the guest's cookie).
    GuestToken,
    "guest_token"
);
uuid_id!(
    /// One refund of a payment; single use within that payment.
    RefundId,
    "refund_id"
);
uuid_id!(
    /// One checkout: the process that takes a cart to a paid, confirmed order. It
    /// shares its UUID with the order it places (`Checkout::order_id`).
    CheckoutId,
    "checkout_id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_serialise_as_plain_uuid_strings() {
        let id = OrderId::from_uuid(Uuid::from_u128(7));
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"00000000-0000-0000-0000-000000000007\"");
        assert_eq!(serde_json::from_str::<OrderId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<OrderId>("\"not-a-uuid\"").is_err());
        assert!(matches!(
            OrderId::parse("x"),
            Err(DomainError::Invalid {
                field: "order_id",
                ..
            })
        ));
    }
}
