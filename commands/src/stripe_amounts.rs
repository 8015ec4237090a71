//! How Stripe counts money: integer amounts in the currency's minor unit, except
//! for a few currencies it counts in hundredths although ISO 4217 gives them no
//! minor unit (<https://docs.stripe.com/currencies#special-cases>). Every
//! Stripe amount Recur reads or writes goes through here.

/// Currencies Stripe counts in hundredths though ISO 4217 has no minor unit for
/// them (Stripe keeps them two-decimal and wants multiples of 100).
pub const HUNDREDTHS_OF_WHOLE_UNITS: &[&str] = &["ISK", "UGX"];

/// Whether Stripe counts `currency_code` (any case) in hundredths of its ISO unit.
fn in_hundredths(currency_code: &str) -> bool {
    HUNDREDTHS_OF_WHOLE_UNITS
        .iter()
        .any(|code| code.eq_ignore_ascii_case(currency_code))
}

/// A Stripe amount as ISO 4217 minor units; None for an ISK or UGX amount that is
/// not a multiple of 100 (Stripe never makes one).
pub fn iso_minor_from_stripe(stripe_amount: i64, currency_code: &str) -> Option<i64> {
    if !in_hundredths(currency_code) {
        return Some(stripe_amount);
    }
    (stripe_amount % 100 == 0).then_some(stripe_amount / 100)
}

/// ISO 4217 minor units as the amount Stripe takes; None when it overflows.
pub fn stripe_amount_from_iso_minor(iso_minor: i64, currency_code: &str) -> Option<i64> {
    if in_hundredths(currency_code) {
        iso_minor.checked_mul(100)
    } else {
        Some(iso_minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isk_and_ugx_are_hundredths_at_stripe_and_the_rest_as_iso_says() {
        assert_eq!(iso_minor_from_stripe(5_000, "isk"), Some(50));
        assert_eq!(iso_minor_from_stripe(5_000, "UGX"), Some(50));
        assert_eq!(iso_minor_from_stripe(5_050, "isk"), None);
        assert_eq!(iso_minor_from_stripe(5_050, "usd"), Some(5_050));
        assert_eq!(iso_minor_from_stripe(5_050, "jpy"), Some(5_050));
        assert_eq!(stripe_amount_from_iso_minor(50, "isk"), Some(5_000));
        assert_eq!(stripe_amount_from_iso_minor(9_700, "usd"), Some(9_700));
        assert_eq!(stripe_amount_from_iso_minor(i64::MAX, "ugx"), None);
    }
}
