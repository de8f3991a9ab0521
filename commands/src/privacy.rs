//! Which fields of the shop's events are personal data. The command side appends
//! through `eventstore::privacy::PrivateStore` with this table, so these fields are
//! sealed with their customer's data key before they reach the log, whatever command
//! wrote them; readers open them, or see them erased once the key is destroyed
//! (`docs/privacy.md`). A new event type with personal fields is one more line here.

use eventstore::privacy::PersonalFields;

/// The personal fields of a shipping address. The country stays readable: sales by
/// country are reported from it, and alone it does not identify anyone.
pub const ADDRESS_PERSONAL_FIELDS: &[&str] = &[
    "name",
    "line1",
    "line2",
    "city",
    "postal_code",
    "email",
    "phone",
];

/// Every event type that carries personal data, where, and whose it is.
pub const PERSONAL_DATA: &[PersonalFields] = &[
    PersonalFields {
        event_type: "OrderPlaced",
        object: "/shipping_address",
        fields: ADDRESS_PERSONAL_FIELDS,
        subject: "/customer_id",
    },
    PersonalFields {
        event_type: "CheckoutStarted",
        object: "/shipping_address",
        fields: ADDRESS_PERSONAL_FIELDS,
        subject: "/customer_id",
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use domain::OrderEvent;

    #[test]
    fn every_type_in_the_table_is_an_event_of_the_shop() {
        for rule in PERSONAL_DATA {
            let known = OrderEvent::TYPES
                .iter()
                .chain(domain::CheckoutEvent::TYPES)
                .any(|(t, _)| *t == rule.event_type);
            assert!(known, "{}", rule.event_type);
        }
        // `domain`'s address accepts exactly this marker in its personal fields.
        assert_eq!(eventstore::privacy::ERASED, "[erased]");
    }
}
