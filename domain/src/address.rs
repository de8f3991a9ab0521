//! A shipping address, parsed once from what the client sent ([`AddressInput`]) into
//! a [`ShippingAddress`] whose fields are known to be within bounds.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{text, DomainError};

/// An ISO 3166-1 alpha-2 country code: two ASCII upper-case letters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CountryCode([u8; 2]);

impl CountryCode {
    pub fn parse(code: &str) -> Result<Self, DomainError> {
        match code.as_bytes() {
            &[a, b] if a.is_ascii_uppercase() && b.is_ascii_uppercase() => Ok(Self([a, b])),
            _ => Err(DomainError::invalid(
                "country",
                format!("{code:?} is not two upper-case letters (ISO 3166-1 alpha-2)"),
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII letters get in through `parse`.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Display for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CountryCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CountryCode({})", self.as_str())
    }
}

impl TryFrom<String> for CountryCode {
    type Error = DomainError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<CountryCode> for String {
    fn from(c: CountryCode) -> Self {
        c.as_str().to_owned()
    }
}

/// An address as received, before validation. Also the serde shape of
/// [`ShippingAddress`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressInput {
    pub name: String,
    pub line1: String,
    #[serde(default)]
    pub line2: Option<String>,
    pub city: String,
    pub postal_code: String,
    pub country: String,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default)]
    pub phone: Option<String>,
}

/// A validated shipping address. Construct with [`ShippingAddress::parse`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "AddressInput", into = "AddressInput")]
pub struct ShippingAddress {
    name: String,
    line1: String,
    line2: Option<String>,
    city: String,
    postal_code: String,
    country: CountryCode,
    email: Option<String>,
    phone: Option<String>,
}

/// What a personal field of a stored address reads as once its owner's data key was
/// destroyed (crypto-shredding, see `docs/privacy.md`). An address whose fields read
/// so is still a valid address, so erased histories replay.
pub(crate) const ERASED: &str = "[erased]";

const MAX_NAME_CHARS: usize = 100;
const MAX_LINE_CHARS: usize = 200;
const MAX_CITY_CHARS: usize = 100;
const MAX_POSTAL_CODE_CHARS: usize = 16;
const MAX_EMAIL_CHARS: usize = 254;
const MAX_PHONE_CHARS: usize = 32;

impl ShippingAddress {
    pub fn parse(input: AddressInput) -> Result<Self, DomainError> {
        text::required("name", &input.name, MAX_NAME_CHARS)?;
        text::required("line1", &input.line1, MAX_LINE_CHARS)?;
        let line2 = input.line2.filter(|l| !l.trim().is_empty());
        if let Some(line2) = &line2 {
            text::required("line2", line2, MAX_LINE_CHARS)?;
        }
        text::required("city", &input.city, MAX_CITY_CHARS)?;
        text::required("postal_code", &input.postal_code, MAX_POSTAL_CODE_CHARS)?;
        if input.postal_code != ERASED
            && !input
                .postal_code
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == ' ' || c == '-')
        {
            return Err(DomainError::invalid(
                "postal_code",
                "only letters, digits, spaces and '-'",
            ));
        }
        let country = CountryCode::parse(&input.country)?;
        let email = input.email.filter(|e| !e.trim().is_empty());
        if let Some(email) = email.as_deref().filter(|e| *e != ERASED) {
            check_email(email)?;
        }
        let phone = input.phone.filter(|p| !p.trim().is_empty());
        if let Some(phone) = phone.as_deref().filter(|p| *p != ERASED) {
            check_phone(phone)?;
        }
        Ok(Self {
            name: input.name,
            line1: input.line1,
            line2,
            city: input.city,
            postal_code: input.postal_code,
            country,
            email,
            phone,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn line1(&self) -> &str {
        &self.line1
    }
    pub fn line2(&self) -> Option<&str> {
        self.line2.as_deref()
    }
    pub fn city(&self) -> &str {
        &self.city
    }
    pub fn postal_code(&self) -> &str {
        &self.postal_code
    }
    pub fn country(&self) -> CountryCode {
        self.country
    }
    pub fn email(&self) -> Option<&str> {
        self.email.as_deref()
    }
    pub fn phone(&self) -> Option<&str> {
        self.phone.as_deref()
    }
}

/// Deliberately shallow: one `@`, something on both sides, a dot in the domain, no
/// whitespace. Whether the mailbox exists is for a confirmation mail to find out.
fn check_email(email: &str) -> Result<(), DomainError> {
    text::required("email", email, MAX_EMAIL_CHARS)?;
    let well_formed = match email.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !domain.contains('@')
                && !email.chars().any(char::is_whitespace)
        }
        None => false,
    };
    if well_formed {
        Ok(())
    } else {
        Err(DomainError::invalid("email", "is not an e-mail address"))
    }
}

fn check_phone(phone: &str) -> Result<(), DomainError> {
    text::required("phone", phone, MAX_PHONE_CHARS)?;
    let allowed = phone
        .chars()
        .all(|c| c.is_ascii_digit() || matches!(c, '+' | ' ' | '-' | '(' | ')'));
    if allowed && phone.chars().filter(char::is_ascii_digit).count() >= 4 {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "phone",
            "only digits, spaces and + - ( ), at least 4 digits",
        ))
    }
}

impl TryFrom<AddressInput> for ShippingAddress {
    type Error = DomainError;
    fn try_from(input: AddressInput) -> Result<Self, Self::Error> {
        Self::parse(input)
    }
}

impl From<ShippingAddress> for AddressInput {
    fn from(a: ShippingAddress) -> Self {
        Self {
            name: a.name,
            line1: a.line1,
            line2: a.line2,
            city: a.city,
            postal_code: a.postal_code,
            country: a.country.into(),
            email: a.email,
            phone: a.phone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input() -> AddressInput {
        AddressInput {
            name: "Ada Lovelace".into(),
            line1: "12 St James's Square".into(),
            line2: Some("  ".into()),
            city: "London".into(),
            postal_code: "SW1Y 4JH".into(),
            country: "GB".into(),
            email: Some("ada@example.org".into()),
            phone: None,
        }
    }

    #[test]
    fn an_address_whose_personal_fields_were_erased_still_parses() {
        let erased = AddressInput {
            name: ERASED.into(),
            line1: ERASED.into(),
            line2: Some(ERASED.into()),
            city: ERASED.into(),
            postal_code: ERASED.into(),
            country: "GB".into(),
            email: Some(ERASED.into()),
            phone: Some(ERASED.into()),
        };
        let address = ShippingAddress::parse(erased).unwrap();
        assert_eq!(
            (address.email(), address.postal_code()),
            (Some(ERASED), ERASED)
        );
        assert_eq!(address.country().as_str(), "GB");
    }

    #[test]
    fn a_valid_address_parses_and_drops_blank_optional_lines() {
        let address = ShippingAddress::parse(input()).unwrap();
        assert_eq!(address.line2(), None);
        assert_eq!(address.country().as_str(), "GB");
    }

    #[test]
    fn an_address_needs_name_street_city_postal_code_and_country() {
        type Breakage = fn(&mut AddressInput);
        let cases: [(Breakage, &str); 6] = [
            (|a| a.name = " ".into(), "name"),
            (|a| a.line1 = String::new(), "line1"),
            (|a| a.city = String::new(), "city"),
            (|a| a.postal_code = "12/34".into(), "postal_code"),
            (|a| a.country = "gbr".into(), "country"),
            (|a| a.email = Some("nobody".into()), "email"),
        ];
        for (break_it, field) in cases {
            let mut a = input();
            break_it(&mut a);
            assert!(
                matches!(ShippingAddress::parse(a), Err(DomainError::Invalid { field: f, .. }) if f == field),
                "{field}"
            );
        }
    }

    #[test]
    fn address_deserialisation_validates() {
        let json = serde_json::to_value(ShippingAddress::parse(input()).unwrap()).unwrap();
        assert_eq!(json["country"], "GB");
        assert!(serde_json::from_value::<ShippingAddress>(json.clone()).is_ok());
        let mut bad = json;
        bad["country"] = "Britain".into();
        assert!(serde_json::from_value::<ShippingAddress>(bad).is_err());
    }
}
