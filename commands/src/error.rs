//! The domain's errors: every refusal has a stable code and writes nothing.

use recur_ledger::{LedgerError, MoneyError};

use crate::tagged::DecodeError;
use crate::tax::TaxRateError;

/// Why the billing domain refused a command. Deciding is pure, so a refusal
/// never leaves anything behind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    /// A plan id the catalog does not hold.
    #[error("unknown plan \"{0}\"")]
    UnknownPlan(String),
    /// A price id the catalog does not hold.
    #[error("unknown price \"{0}\"")]
    UnknownPrice(String),
    /// An amount, currency or arithmetic problem.
    #[error(transparent)]
    Money(#[from] MoneyError),
    /// An amount that must be positive was zero or negative.
    #[error("{field} must be greater than zero, got {amount}")]
    AmountNotPositive {
        /// Which amount.
        field: &'static str,
        /// The rejected amount, as text.
        amount: String,
    },
    /// A quantity outside 1..=QUANTITY_MAX.
    #[error("quantity must be between 1 and {max}, got {got}")]
    InvalidQuantity {
        /// The rejected quantity.
        got: u64,
        /// The largest accepted quantity.
        max: u32,
    },
    /// Something looked like a card number; only provider tokens are accepted.
    #[error(
        "{field} looks like a card number: send the payment provider's token, never the card number"
    )]
    CardNumberRejected {
        /// The field that held it.
        field: &'static str,
    },
    /// A malformed field (token, last4, expiry, country, coupon code, …).
    #[error("invalid {field}: {reason}")]
    InvalidField {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The aggregate does not exist yet.
    #[error("{kind} {id} does not exist")]
    NotFound {
        /// customer, subscription, invoice, coupon, plan, price, tax rate
        /// (code `<kind>_not_found`, spaces as underscores).
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The aggregate already exists.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// customer, subscription, invoice, coupon.
        kind: &'static str,
        /// Its id.
        id: String,
    },
    /// The command is not allowed in the aggregate's current state.
    #[error("cannot {action} a {kind} that is {state}")]
    InvalidTransition {
        /// subscription, invoice, …
        kind: &'static str,
        /// What was asked.
        action: &'static str,
        /// The current state.
        state: String,
    },
    /// A price's currency differs from the customer's or the invoice's.
    #[error("currency mismatch: {expected} expected, {got} given")]
    CurrencyMismatch {
        /// The currency in force.
        expected: String,
        /// The one given.
        got: String,
    },
    /// The coupon's redemption window has passed.
    #[error("coupon {0} has expired")]
    CouponExpired(String),
    /// The coupon has been redeemed its maximum number of times.
    #[error("coupon {0} has no redemptions left")]
    CouponExhausted(String),
    /// The subscription has already redeemed this coupon.
    #[error("coupon {0} was already applied to this subscription")]
    CouponAlreadyRedeemed(String),
    /// The refund would exceed what was paid and not yet refunded.
    #[error("refund of {requested} exceeds the refundable {refundable}")]
    RefundExceedsPaid {
        /// Asked for.
        requested: String,
        /// Paid minus already refunded.
        refundable: String,
    },
    /// A one-time price used for a subscription, or a recurring one for a purchase.
    #[error("price {price} is {actual}, {expected} is needed here")]
    WrongPriceKind {
        /// The price id.
        price: String,
        /// What it is.
        actual: &'static str,
        /// What the command needs.
        expected: &'static str,
    },
    /// A plan, price or tax rate the catalog cannot take.
    #[error("{0}")]
    InvalidCatalog(String),
    /// A tax rate the catalog cannot take (code `invalid_catalog`, as above:
    /// typed apart only so that the field's refusal stays its source).
    #[error(transparent)]
    TaxRate(#[from] TaxRateError),
    /// The payment provider refused the card when it was put on file; nothing
    /// was written (code `card_declined`, whatever the decline code).
    #[error("the card was declined when attached ({decline_code}): ask for another card")]
    CardDeclined {
        /// The provider's decline code (`generic_decline`, `insufficient_funds`, …).
        decline_code: String,
    },
    /// The customer has no payment method on file and the command needs one.
    #[error("customer {0} has no payment method on file")]
    NoPaymentMethod(String),
    /// The customer's personal data was erased: none can be recorded again.
    #[error("the customer's personal data was erased; none can be recorded for it again")]
    PersonalDataErased,
}

impl DomainError {
    /// Stable snake_case code for clients; never changes once published.
    pub fn code(&self) -> &'static str {
        match self {
            // One name per refusal: these are the names the HTTP problem
            // carries (docs/api.md), used by the domain too.
            DomainError::UnknownPlan(_) => "plan_not_found",
            DomainError::UnknownPrice(_) => "price_not_found",
            DomainError::Money(error) => error.code(),
            DomainError::AmountNotPositive { .. } => "amount_not_positive",
            DomainError::InvalidQuantity { .. } => "invalid_quantity",
            DomainError::CardNumberRejected { .. } => "card_number_rejected",
            DomainError::InvalidField { .. } => "invalid_field",
            DomainError::NotFound { kind, .. } => not_found_code(kind),
            DomainError::AlreadyExists { .. } => "already_exists",
            DomainError::InvalidTransition { .. } => "invalid_transition",
            DomainError::CurrencyMismatch { .. } => "currency_mismatch",
            DomainError::CouponExpired(_) => "coupon_expired",
            DomainError::CouponExhausted(_) => "coupon_exhausted",
            DomainError::CouponAlreadyRedeemed(_) => "coupon_already_redeemed",
            DomainError::RefundExceedsPaid { .. } => "refund_exceeds_paid",
            DomainError::WrongPriceKind { .. } => "wrong_price_kind",
            DomainError::InvalidCatalog(_) | DomainError::TaxRate(_) => "invalid_catalog",
            DomainError::CardDeclined { .. } => "card_declined",
            DomainError::NoPaymentMethod(_) => "no_payment_method",
            DomainError::PersonalDataErased => "personal_data_erased",
        }
    }
}

impl From<crate::payment::CardError> for DomainError {
    /// A card the gateway refused is refused input, like a malformed one: a
    /// 4xx with a stable code, and nothing written.
    fn from(error: crate::payment::CardError) -> Self {
        match error {
            crate::payment::CardError::Declined { decline_code } => {
                DomainError::CardDeclined { decline_code }
            }
            crate::payment::CardError::UnknownCard | crate::payment::CardError::Rejected { .. } => {
                DomainError::InvalidField {
                    field: "token",
                    reason: error.to_string(),
                }
            }
        }
    }
}

/// `<kind>_not_found` for each kind of aggregate the domain refers to; codes
/// are `&'static str`, hence spelled out.
fn not_found_code(kind: &str) -> &'static str {
    match kind {
        "customer" => "customer_not_found",
        "subscription" => "subscription_not_found",
        "invoice" => "invoice_not_found",
        "coupon" => "coupon_not_found",
        "plan" => "plan_not_found",
        "price" => "price_not_found",
        "tax rate" => "tax_rate_not_found",
        "dunning task" => "dunning_task_not_found",
        "dunning message" => "dunning_message_not_found",
        _ => "not_found",
    }
}

/// Why a billing operation (load, decide, charge, append) failed.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The domain refused the command; nothing was written.
    #[error(transparent)]
    Domain(#[from] DomainError),
    /// The ledger failed (unavailable, bad input, …).
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The payment gateway could not be reached; the attempt is retried with the same key.
    #[error("payment gateway unavailable: {0}")]
    GatewayUnavailable(String),
    /// A stored event could not be decoded or folded: the stream or the code is broken.
    #[error("event {position} of {stream} cannot be decoded")]
    Corrupt {
        /// The stream.
        stream: String,
        /// Its global position.
        position: u64,
        /// What is wrong with it.
        #[source]
        cause: Corruption,
    },
    /// Writers kept racing on one stream beyond the retry limit.
    #[error("stream {0} kept changing under the command; gave up after the retry limit")]
    Contended(String),
    /// The caller's `If-Match` version is not the resource's current version.
    #[error("{stream} is at version {current}, not {expected}: reload it and try again")]
    Stale {
        /// The stream.
        stream: String,
        /// What the caller expected.
        expected: u64,
        /// What it is.
        current: u64,
    },
    /// The catalog file is invalid, or a published price was changed.
    #[error("catalog: {0}")]
    Catalog(String),
    /// The catalog file is not the TOML a catalog is (code `invalid_catalog`).
    #[error("catalog: not a catalog file")]
    CatalogFile(#[source] toml::de::Error),
    /// Personal data cannot be encrypted or read: no master key is configured,
    /// a data key's master key is missing, or a ciphertext fails authentication.
    #[error("personal data: {0}")]
    Privacy(#[from] crate::privacy::PrivacyError),
    /// Personal data was asked to be written, but no master key is configured.
    #[error("personal data cannot be stored: no master key is configured (RECUR_MASTER_KEY)")]
    NoMasterKey,
}

/// What is wrong with a stored event that [`BillingError::Corrupt`] reports.
#[derive(Clone, Debug, thiserror::Error)]
pub enum Corruption {
    /// The payload is not an event of the stream's kind.
    #[error(transparent)]
    Undecodable(#[from] DecodeError),
    /// The stream's versions skip or repeat.
    #[error("version {found} follows {previous}")]
    OutOfOrder {
        /// The version folded last.
        previous: u64,
        /// The version read next.
        found: u64,
    },
}

impl BillingError {
    /// Stable code: the domain's code, or the ledger's.
    pub fn code(&self) -> &'static str {
        match self {
            BillingError::Domain(error) => error.code(),
            BillingError::Ledger(error) => error.code(),
            BillingError::GatewayUnavailable(_) => "gateway_unavailable",
            BillingError::Corrupt { .. } => "corrupt_event",
            BillingError::Contended(_) => "contended",
            BillingError::Stale { .. } => "version_conflict",
            BillingError::Catalog(_) | BillingError::CatalogFile(_) => "invalid_catalog",
            BillingError::Privacy(error) => error.code(),
            BillingError::NoMasterKey => "master_key_missing",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_thing_has_one_code_named_after_its_kind() {
        let missing = |kind| DomainError::NotFound {
            kind,
            id: "x".into(),
        };
        for (kind, code) in [
            ("customer", "customer_not_found"),
            ("subscription", "subscription_not_found"),
            ("invoice", "invoice_not_found"),
            ("coupon", "coupon_not_found"),
            ("plan", "plan_not_found"),
            ("price", "price_not_found"),
            ("tax rate", "tax_rate_not_found"),
        ] {
            assert_eq!(missing(kind).code(), code);
        }
        assert_eq!(
            DomainError::UnknownPlan("x".into()).code(),
            "plan_not_found"
        );
        assert_eq!(
            DomainError::UnknownPrice("x".into()).code(),
            "price_not_found"
        );
    }
}
