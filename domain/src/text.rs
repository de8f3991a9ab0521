//! The rule for free text that people type (titles, reasons, address lines): not
//! blank, bounded in characters, no control characters. Bounds keep events small
//! and the search index sane.

use crate::DomainError;

/// Checks a required text field: non-blank, at most `max_chars`, no control
/// characters (newlines are allowed only where `multiline`).
pub(crate) fn required(
    field: &'static str,
    value: &str,
    max_chars: usize,
) -> Result<(), DomainError> {
    if value.trim().is_empty() {
        return Err(DomainError::invalid(field, "must not be blank"));
    }
    bounded(field, value, max_chars, false)
}

/// Checks an optional or possibly empty text field.
pub(crate) fn bounded(
    field: &'static str,
    value: &str,
    max_chars: usize,
    multiline: bool,
) -> Result<(), DomainError> {
    let chars = value.chars().count();
    if chars > max_chars {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max_chars} characters, got {chars}"),
        ));
    }
    let allowed_control = |c: char| multiline && matches!(c, '\n' | '\r' | '\t');
    if value.chars().any(|c| c.is_control() && !allowed_control(c)) {
        return Err(DomainError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_long_and_control_characters_are_refused() {
        assert!(required("title", "  ", 10).is_err());
        assert!(required("title", "abcdefghijk", 10).is_err());
        assert!(required("title", "a\u{0}b", 10).is_err());
        assert!(required("title", "a\nb", 10).is_err());
        assert!(bounded("description", "a\nb", 10, true).is_ok());
        assert!(required("title", "Straße 10", 10).is_ok());
    }
}
