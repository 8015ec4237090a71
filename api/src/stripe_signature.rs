//! Stripe's webhook signatures (`Stripe-Signature: t=…,v1=…[,v1=…]`): an
//! HMAC-SHA256, under the endpoint's signing secret, of `"{t}.{raw body}"`.
//! A delivery is genuine when any `v1` matches under any configured secret
//! (several during a rotation) and `t` is within [`TOLERANCE_S`] of now.
//! Pure: the caller gives the secrets and the time.

use ring::hmac;

/// How far a signature's time may be from now, in seconds (Stripe's default).
pub const TOLERANCE_S: i64 = 300;
/// Longest `Stripe-Signature` header read, in bytes.
pub const HEADER_BYTES_MAX: usize = 4 * 1024;

/// Why a delivery's signature is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `Stripe-Signature` header.
    #[error("no Stripe-Signature header")]
    Missing,
    /// The header is not `t=<seconds>,v1=<hex>[,…]`.
    #[error("the Stripe-Signature header is not t=<seconds>,v1=<hex>")]
    Malformed,
    /// The signature's time is more than [`TOLERANCE_S`] from now.
    #[error("the signature is {age_s} s from now: beyond the {TOLERANCE_S} s tolerance")]
    Stale {
        /// Seconds between the signature's time and now.
        age_s: i64,
    },
    /// No `v1` signature matches under any configured secret.
    #[error("no v1 signature matches a configured signing secret")]
    NoMatch,
}

impl SignatureError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Missing => "signature_missing",
            Self::Malformed => "signature_malformed",
            Self::Stale { .. } => "signature_stale",
            Self::NoMatch => "signature_mismatch",
        }
    }
}

/// Checks `header` over `body` against `secrets` at `now_s` (Unix seconds);
/// answers the signature's time.
///
/// # Errors
/// [`SignatureError`].
pub fn verify(
    header: Option<&[u8]>,
    body: &[u8],
    secrets: &[&str],
    now_s: i64,
) -> Result<i64, SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > HEADER_BYTES_MAX {
        return Err(SignatureError::Malformed);
    }
    let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed)?;
    let mut at = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match name {
            "t" => {
                at = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                );
            }
            // A v1 that is not hex can never match: not a reason to refuse the rest.
            "v1" => signatures.extend(hex::decode(value).ok()),
            // v0 (test mode's legacy scheme) and future schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    let at = at.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    let age_s = now_s.saturating_sub(at);
    if age_s.saturating_abs() > TOLERANCE_S {
        return Err(SignatureError::Stale { age_s });
    }
    let signed = signed_payload(at, body);
    let matches = secrets.iter().any(|secret| {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
        signatures
            .iter()
            .any(|signature| hmac::verify(&key, &signed, signature).is_ok())
    });
    if matches {
        Ok(at)
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// The `Stripe-Signature` header Stripe would send for `body` at `at_s` under
/// `secret` (for tests and the webhook benchmark).
pub fn sign(body: &[u8], secret: &str, at_s: i64) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let tag = hmac::sign(&key, &signed_payload(at_s, body));
    format!("t={at_s},v1={}", hex::encode(tag.as_ref()))
}

fn signed_payload(at_s: i64, body: &[u8]) -> Vec<u8> {
    let mut signed = format!("{at_s}.").into_bytes();
    signed.extend_from_slice(body);
    signed
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const BODY: &[u8] = br#"{"id":"evt_1","object":"event"}"#;

    #[test]
    fn a_signature_under_any_configured_secret_and_any_v1_passes() {
        let header = sign(BODY, "whsec_new", NOW - 10);
        assert_eq!(
            verify(
                Some(header.as_bytes()),
                BODY,
                &["whsec_old", "whsec_new"],
                NOW
            ),
            Ok(NOW - 10)
        );
        // Stripe sends one v1 per secret during a rotation: any may match.
        let other = sign(BODY, "whsec_other", NOW - 10);
        let v1 = other.split_once(",v1=").unwrap().1;
        let both = format!("{header},v1={v1},v0=ignored");
        assert!(verify(Some(both.as_bytes()), BODY, &["whsec_other"], NOW).is_ok());
    }

    #[test]
    fn every_refusal_has_its_code() {
        let header = sign(BODY, "whsec_a", NOW);
        let check = |header: Option<&str>, body: &[u8], now: i64| {
            verify(header.map(str::as_bytes), body, &["whsec_a"], now)
                .unwrap_err()
                .code()
        };
        assert_eq!(check(None, BODY, NOW), "signature_missing");
        assert_eq!(check(Some("v1=abc"), BODY, NOW), "signature_malformed");
        assert_eq!(check(Some("t=x,v1=00"), BODY, NOW), "signature_malformed");
        assert_eq!(check(Some("garbage"), BODY, NOW), "signature_malformed");
        assert_eq!(check(Some("t=1"), BODY, NOW), "signature_mismatch");
        assert_eq!(check(Some(&header), b"{}", NOW), "signature_mismatch");
        assert_eq!(check(Some(&header), BODY, NOW + 301), "signature_stale");
        assert_eq!(check(Some(&header), BODY, NOW - 301), "signature_stale");
        assert!(verify(Some(header.as_bytes()), BODY, &["whsec_b"], NOW).is_err());
        assert!(verify(Some(header.as_bytes()), BODY, &[], NOW).is_err());
    }

    proptest::proptest! {
        #[test]
        fn any_header_is_refused_or_genuine_and_never_panics(
            header in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let _ = verify(Some(&header), &body, &["whsec_a"], NOW);
        }
    }
}
