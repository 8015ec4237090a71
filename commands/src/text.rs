//! Free text written into the ledger — a plan's name or features, a contact's
//! name (encrypted) — lives there forever: each field has a length limit, no
//! control characters (a reason may hold line breaks), no bidirectional
//! overrides (text that displays other than it reads), and nothing that looks
//! like a card number (PCI scope: none is ever stored).

use crate::customer::looks_like_card_number;
use crate::error::DomainError;

/// The longest display name (a plan's, a contact's), in characters.
pub const NAME_CHARS_MAX: usize = 200;

/// Characters that change the direction text is displayed in: embeddings,
/// overrides and isolates (U+202A–U+202E, U+2066–U+2069).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Checks free text: at most `max_chars` characters, no control characters
/// (line breaks and tabs allowed when `multiline`), no bidirectional controls,
/// no card number.
///
/// # Errors
/// [`DomainError::InvalidField`] naming the rule; [`DomainError::CardNumberRejected`].
pub fn check_text(
    field: &'static str,
    text: &str,
    max_chars: usize,
    multiline: bool,
) -> Result<(), DomainError> {
    let bad = |reason: String| DomainError::InvalidField { field, reason };
    if text.chars().count() > max_chars {
        return Err(bad(format!("at most {max_chars} characters")));
    }
    let allowed_control = |c: char| multiline && (c == '\n' || c == '\t' || c == '\r');
    if text
        .chars()
        .any(|c| (c.is_control() && !allowed_control(c)) || is_bidi_control(c))
    {
        return Err(bad(
            "control and text-direction characters are not allowed".into()
        ));
    }
    if looks_like_card_number(text) {
        return Err(DomainError::CardNumberRejected { field });
    }
    Ok(())
}

/// Checks a name: 1 to `max_chars` characters, not blank, on one line (see [`check_text`]).
///
/// # Errors
/// As [`check_text`]; a blank name.
pub fn check_name(field: &'static str, text: &str, max_chars: usize) -> Result<(), DomainError> {
    if text.trim().is_empty() {
        return Err(DomainError::InvalidField {
            field,
            reason: format!("1 to {max_chars} characters, not blank"),
        });
    }
    check_text(field, text, max_chars, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_text_has_a_limit_no_controls_no_overrides_and_no_card_numbers() {
        assert!(check_text("reason", "requested by customer\nsee ticket 42", 500, true).is_ok());
        assert!(check_text("reason", &"x".repeat(501), 500, true).is_err());
        assert!(check_text("reason", "a\u{0}b", 500, true).is_err());
        assert!(check_text("reason", "refund \u{202E}gnp.exe", 500, true).is_err());
        assert_eq!(
            check_text("reason", "card 4242 4242 4242 4242 please", 500, true)
                .map_err(|e| e.code()),
            Err("card_number_rejected")
        );
        assert!(check_name("name", "Ann\nLee", 200).is_err());
        assert!(check_name("name", "   ", 200).is_err());
        assert!(check_name("name", "Ann Lee", 200).is_ok());
    }
}
