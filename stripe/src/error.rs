//! The adapter's errors: what Stripe said, or why it could not be asked.

/// Why a call to Stripe failed.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// The configuration is unusable (no key, a malformed key or base URL).
    #[error("Stripe configuration: {0}")]
    Config(String),
    /// Stripe answered with an error.
    #[error("Stripe answered {status} {kind}{}: {message}", code.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Api {
        /// The HTTP status (402 for card errors, 429 rate limited, 5xx Stripe's trouble).
        status: u16,
        /// Stripe's error `type`: `card_error`, `invalid_request_error`,
        /// `idempotency_error`, `api_error`.
        kind: String,
        /// Stripe's error `code` (`card_declined`, `resource_missing`, …).
        code: Option<String>,
        /// Stripe's `decline_code` on card errors.
        decline_code: Option<String>,
        /// Stripe's message (never holds a secret or a card number).
        message: String,
    },
    /// No answer: connection refused or reset, timeout, TLS failure.
    #[error("Stripe could not be reached: {0}")]
    Transport(String),
    /// An answer that does not parse (async-stripe parses strictly and does
    /// not say which field was missing).
    #[error("Stripe's answer could not be read: {0}")]
    Decode(String),
    /// An answer that parses but breaks what the adapter relies on (a
    /// succeeded payment without a charge, an unknown currency, …).
    #[error("Stripe's answer is not what was expected: {0}")]
    Unexpected(String),
    /// An amount that cannot be expressed in minor units.
    #[error(transparent)]
    Money(#[from] recur_ledger::MoneyError),
}

impl StripeError {
    /// True when the same request, with the same idempotency key, may succeed
    /// later: no answer, a rate limit (429), a conflict with a concurrent
    /// request on the same key (409), or Stripe's own trouble (5xx).
    pub fn is_retryable(&self) -> bool {
        match self {
            StripeError::Transport(_) => true,
            StripeError::Api { status, .. } => *status == 409 || *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// True for a 404 `resource_missing` (the object does not exist).
    pub fn is_not_found(&self) -> bool {
        matches!(self, StripeError::Api { status: 404, .. })
    }

    /// The decline code of a card error: `decline_code`, else the error's
    /// `code` (Stripe sets only `code` for `expired_card`, `incorrect_cvc`, …).
    pub fn card_decline_code(&self) -> Option<String> {
        match self {
            StripeError::Api {
                status: 402,
                code,
                decline_code,
                ..
            } => Some(
                decline_code
                    .clone()
                    .or_else(|| code.clone())
                    .unwrap_or_else(|| "card_declined".to_owned()),
            ),
            StripeError::Api {
                kind,
                code,
                decline_code,
                ..
            } if kind == "card_error" => Some(
                decline_code
                    .clone()
                    .or_else(|| code.clone())
                    .unwrap_or_else(|| "card_declined".to_owned()),
            ),
            _ => None,
        }
    }
}

impl From<stripe::StripeError> for StripeError {
    fn from(error: stripe::StripeError) -> Self {
        match error {
            stripe::StripeError::Stripe(api, status) => StripeError::Api {
                status,
                kind: api.type_.as_str().to_owned(),
                code: api.code.as_ref().map(|c| c.as_str().to_owned()),
                decline_code: api.decline_code.clone(),
                message: api.message.clone().unwrap_or_default(),
            },
            stripe::StripeError::JSONDeserialize(message) => StripeError::Decode(message),
            stripe::StripeError::ClientError(message) => StripeError::Transport(message),
            stripe::StripeError::Timeout => StripeError::Transport("timed out".to_owned()),
            stripe::StripeError::ConfigError(message) => StripeError::Config(message),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn api(status: u16, kind: &str, code: Option<&str>, decline: Option<&str>) -> StripeError {
        StripeError::Api {
            status,
            kind: kind.into(),
            code: code.map(Into::into),
            decline_code: decline.map(Into::into),
            message: String::new(),
        }
    }

    #[test]
    fn only_no_answer_rate_limits_conflicts_and_5xx_are_retried() {
        assert!(StripeError::Transport("reset".into()).is_retryable());
        assert!(api(429, "invalid_request_error", None, None).is_retryable());
        assert!(api(409, "idempotency_error", None, None).is_retryable());
        assert!(api(500, "api_error", None, None).is_retryable());
        assert!(api(503, "api_error", None, None).is_retryable());
        assert!(!api(402, "card_error", Some("card_declined"), None).is_retryable());
        assert!(!api(400, "idempotency_error", None, None).is_retryable());
        assert!(!StripeError::Decode("x".into()).is_retryable());
    }

    #[test]
    fn a_card_errors_decline_code_falls_back_to_its_code() {
        assert_eq!(
            api(
                402,
                "card_error",
                Some("card_declined"),
                Some("insufficient_funds")
            )
            .card_decline_code()
            .as_deref(),
            Some("insufficient_funds")
        );
        assert_eq!(
            api(402, "card_error", Some("expired_card"), None)
                .card_decline_code()
                .as_deref(),
            Some("expired_card")
        );
        assert_eq!(
            api(400, "invalid_request_error", None, None).card_decline_code(),
            None
        );
    }
}
