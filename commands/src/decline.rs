//! What a card decline means for collecting the money: Stripe's decline codes
//! (<https://docs.stripe.com/declines/codes>) sorted by what can be done next.
//! Pure and shared by the payment gateways, dunning and the reports.

use serde::{Deserialize, Serialize};

/// What a decline leaves open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeclineCategory {
    /// Temporary: the same card may well work later (insufficient funds, the
    /// issuer unavailable, a generic decline). Retry on a schedule.
    Soft,
    /// The card will not work again (lost, stolen, fraud, closed, do not honor
    /// — Stripe calls `do_not_honor` unknown, the business's policy treats it as
    /// final), or a retry could do harm (`duplicate_transaction`): never retry
    /// it automatically; ask for another card.
    Hard,
    /// The card on file cannot work as it is (expired, wrong number or CVC, no
    /// card at all): no retry until the customer updates it.
    NeedsCustomerAction,
    /// The bank asks the customer to authenticate (3-D Secure,
    /// `authentication_required`): send them a
    /// link to confirm the payment; an off-session retry cannot succeed.
    Authentication,
}

/// Stripe's decline codes and Recur's own (`no_payment_method`), by category.
/// A code not listed is [`DeclineCategory::Soft`], as Stripe advises for
/// unknown declines.
pub const DECLINE_CODES: &[(&str, DeclineCategory)] = &[
    // Soft: retry later.
    ("approve_with_id", DeclineCategory::Soft),
    ("call_issuer", DeclineCategory::Soft),
    ("card_declined", DeclineCategory::Soft),
    ("card_velocity_exceeded", DeclineCategory::Soft),
    ("generic_decline", DeclineCategory::Soft),
    ("insufficient_funds", DeclineCategory::Soft),
    ("issuer_not_available", DeclineCategory::Soft),
    ("no_action_taken", DeclineCategory::Soft),
    ("processing_error", DeclineCategory::Soft),
    ("reenter_transaction", DeclineCategory::Soft),
    ("try_again_later", DeclineCategory::Soft),
    ("withdrawal_count_limit_exceeded", DeclineCategory::Soft),
    // Hard: never this card again.
    ("do_not_honor", DeclineCategory::Hard),
    ("do_not_try_again", DeclineCategory::Hard),
    // A payment of the same amount just went through: check before anything else.
    ("duplicate_transaction", DeclineCategory::Hard),
    ("fraudulent", DeclineCategory::Hard),
    ("invalid_account", DeclineCategory::Hard),
    ("lost_card", DeclineCategory::Hard),
    ("merchant_blacklist", DeclineCategory::Hard),
    ("new_account_information_available", DeclineCategory::Hard),
    ("not_permitted", DeclineCategory::Hard),
    ("pickup_card", DeclineCategory::Hard),
    ("restricted_card", DeclineCategory::Hard),
    ("revocation_of_all_authorizations", DeclineCategory::Hard),
    ("revocation_of_authorization", DeclineCategory::Hard),
    ("security_violation", DeclineCategory::Hard),
    ("service_not_allowed", DeclineCategory::Hard),
    ("stolen_card", DeclineCategory::Hard),
    ("stop_payment_order", DeclineCategory::Hard),
    ("transaction_not_allowed", DeclineCategory::Hard),
    ("card_not_supported", DeclineCategory::Hard),
    // The amount itself was refused: the card is not the problem, a retry of it is.
    ("invalid_amount", DeclineCategory::Hard),
    // A test card used in live mode.
    ("testmode_decline", DeclineCategory::Hard),
    ("currency_not_supported", DeclineCategory::Hard),
    // Needs the customer: update the card first.
    ("expired_card", DeclineCategory::NeedsCustomerAction),
    ("incorrect_cvc", DeclineCategory::NeedsCustomerAction),
    ("incorrect_number", DeclineCategory::NeedsCustomerAction),
    ("incorrect_pin", DeclineCategory::NeedsCustomerAction),
    ("incorrect_zip", DeclineCategory::NeedsCustomerAction),
    ("invalid_cvc", DeclineCategory::NeedsCustomerAction),
    ("invalid_expiry_month", DeclineCategory::NeedsCustomerAction),
    ("invalid_expiry_year", DeclineCategory::NeedsCustomerAction),
    ("invalid_number", DeclineCategory::NeedsCustomerAction),
    ("invalid_pin", DeclineCategory::NeedsCustomerAction),
    ("no_payment_method", DeclineCategory::NeedsCustomerAction),
    ("offline_pin_required", DeclineCategory::NeedsCustomerAction),
    (
        "online_or_offline_pin_required",
        DeclineCategory::NeedsCustomerAction,
    ),
    ("pin_try_exceeded", DeclineCategory::NeedsCustomerAction),
    // The customer must authenticate.
    ("authentication_required", DeclineCategory::Authentication),
];

/// The category of a decline code (unknown codes: [`DeclineCategory::Soft`]).
pub fn category(decline_code: &str) -> DeclineCategory {
    DECLINE_CODES
        .iter()
        .find(|(code, _)| *code == decline_code)
        .map_or(DeclineCategory::Soft, |(_, category)| *category)
}

impl DeclineCategory {
    /// Whether retrying the same card, off session, can succeed.
    pub fn retry_can_succeed(self) -> bool {
        self == Self::Soft
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_has_one_category_and_unknown_ones_are_soft() {
        let mut codes: Vec<&str> = DECLINE_CODES.iter().map(|(code, _)| *code).collect();
        codes.sort_unstable();
        let before = codes.len();
        codes.dedup();
        assert_eq!(codes.len(), before, "a code listed twice");
        assert_eq!(category("insufficient_funds"), DeclineCategory::Soft);
        assert_eq!(category("stolen_card"), DeclineCategory::Hard);
        assert_eq!(category("do_not_honor"), DeclineCategory::Hard);
        assert_eq!(
            category("expired_card"),
            DeclineCategory::NeedsCustomerAction
        );
        assert_eq!(
            category("no_payment_method"),
            DeclineCategory::NeedsCustomerAction
        );
        assert_eq!(
            category("authentication_required"),
            DeclineCategory::Authentication
        );
        assert_eq!(category("something_new"), DeclineCategory::Soft);
        assert!(DeclineCategory::Soft.retry_can_succeed());
        assert!(!DeclineCategory::Hard.retry_can_succeed());
        assert!(!DeclineCategory::NeedsCustomerAction.retry_can_succeed());
        assert!(!DeclineCategory::Authentication.retry_can_succeed());
    }

    /// Every code the simulated gateway declines with has its intended category.
    #[test]
    fn the_simulated_gateways_codes_are_categorised() {
        for (code, expected) in [
            ("card_declined", DeclineCategory::Soft),
            ("insufficient_funds", DeclineCategory::Soft),
            ("expired_card", DeclineCategory::NeedsCustomerAction),
            ("processing_error", DeclineCategory::Soft),
        ] {
            assert_eq!(category(code), expected, "{code}");
        }
    }
}
