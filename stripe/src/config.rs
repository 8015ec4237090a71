//! Where Stripe is and the key to it: `STRIPE_SECRET_KEY`, `STRIPE_API_BASE`.

use std::fmt;

use crate::error::StripeError;

/// Stripe's own API, used when `STRIPE_API_BASE` is not set.
pub const STRIPE_API_BASE_DEFAULT: &str = "https://api.stripe.com/";

/// The environment variable holding the secret key (`sk_live_…`, `sk_test_…`,
/// or a restricted `rk_…`).
pub const SECRET_KEY_VAR: &str = "STRIPE_SECRET_KEY";

/// The environment variable naming another API base (a local fake in tests).
pub const API_BASE_VAR: &str = "STRIPE_API_BASE";

/// A Stripe secret key. Its `Debug` and `Display` never show it: configuration
/// is printed and logged, the key must not be.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Checks the shape only (Stripe judges the rest): `sk_…` or `rk_…`, no
    /// whitespace, at most 255 bytes (it travels in an HTTP header).
    ///
    /// # Errors
    /// [`StripeError::Config`] naming what is wrong, never echoing the key.
    pub fn parse(key: &str) -> Result<Self, StripeError> {
        let shaped = (key.starts_with("sk_") || key.starts_with("rk_"))
            && key.len() > 3
            && key.len() <= 255
            && key.bytes().all(|b| b.is_ascii_graphic());
        if shaped {
            Ok(Self(key.to_owned()))
        } else {
            Err(StripeError::Config(format!(
                "{SECRET_KEY_VAR} must be a Stripe secret key (sk_… or rk_…, no spaces)"
            )))
        }
    }

    /// The key itself, for the `Authorization` header only.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// Test mode (`sk_test_…`, `rk_test_…`) rather than live.
    pub fn is_test_mode(&self) -> bool {
        self.0.starts_with("sk_test_") || self.0.starts_with("rk_test_")
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_test_mode() {
            "SecretKey(test, redacted)"
        } else {
            "SecretKey(redacted)"
        })
    }
}

/// How to reach Stripe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeConfig {
    /// The secret key (redacted when printed).
    pub secret_key: SecretKey,
    /// The API's base URL, ending in `/` (Stripe's, or a local fake's).
    pub api_base: String,
}

impl StripeConfig {
    /// A configuration for `api_base` (a trailing `/` is added if missing:
    /// the client appends `v1/…` to it).
    ///
    /// # Errors
    /// [`StripeError::Config`] for a base that is not `http://` or `https://`.
    pub fn new(secret_key: SecretKey, api_base: &str) -> Result<Self, StripeError> {
        let api_base = api_base.trim();
        if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
            return Err(StripeError::Config(format!(
                "{API_BASE_VAR} must be an http:// or https:// URL, got {api_base:?}"
            )));
        }
        // The base is logged: credentials belong in STRIPE_SECRET_KEY, never in it.
        let authority = api_base
            .split_once("://")
            .map_or("", |(_, rest)| rest.split('/').next().unwrap_or(""));
        if authority.contains('@') {
            return Err(StripeError::Config(format!(
                "{API_BASE_VAR} must not carry credentials (user:password@): the key goes in STRIPE_SECRET_KEY"
            )));
        }
        let api_base = if api_base.ends_with('/') {
            api_base.to_owned()
        } else {
            format!("{api_base}/")
        };
        Ok(Self {
            secret_key,
            api_base,
        })
    }

    /// Reads `STRIPE_SECRET_KEY` (required) and `STRIPE_API_BASE` (Stripe's
    /// own API when unset).
    ///
    /// # Errors
    /// [`StripeError::Config`] when the key is missing or malformed.
    pub fn from_env() -> Result<Self, StripeError> {
        let key = std::env::var(SECRET_KEY_VAR).map_err(|_| {
            StripeError::Config(format!(
                "{SECRET_KEY_VAR} is not set: the Stripe gateway needs the account's secret key \
                 (Dashboard → Developers → API keys)"
            ))
        })?;
        let base =
            std::env::var(API_BASE_VAR).unwrap_or_else(|_| STRIPE_API_BASE_DEFAULT.to_owned());
        Self::new(SecretKey::parse(&key)?, &base)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_shows_in_debug_output() {
        let config = StripeConfig::new(
            SecretKey::parse("sk_test_abcdefSECRET").unwrap(),
            "http://127.0.0.1:1",
        )
        .unwrap();
        let printed = format!("{config:?} {:#?}", config);
        assert!(!printed.contains("SECRET"), "{printed}");
        assert!(printed.contains("redacted"), "{printed}");
        assert_eq!(config.api_base, "http://127.0.0.1:1/");
    }

    #[test]
    fn malformed_keys_and_bases_are_refused_without_echoing_the_key() {
        let error = SecretKey::parse("pk_test_public hunter2").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert!(SecretKey::parse("sk_").is_err());
        assert!(StripeConfig::new(SecretKey::parse("sk_test_x").unwrap(), "ftp://x").is_err());
        let with_password = StripeConfig::new(
            SecretKey::parse("sk_test_x").unwrap(),
            "https://user:hunter2@proxy.example/stripe",
        )
        .unwrap_err();
        assert!(
            !with_password.to_string().contains("hunter2"),
            "{with_password}"
        );
        assert!(
            StripeConfig::new(
                SecretKey::parse("sk_test_x").unwrap(),
                "http://127.0.0.1:8420"
            )
            .is_ok()
        );
    }
}
