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
/// Most `v1` signatures compared (Stripe sends one per active secret).
pub const SIGNATURES_MAX: usize = 8;
/// Bytes in an HMAC-SHA256 tag.
const TAG_BYTES: usize = 32;

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
    let (at, signatures) = parse_header(header)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    let age_s = now_s.saturating_sub(at);
    if age_s.saturating_abs() > TOLERANCE_S {
        return Err(SignatureError::Stale { age_s });
    }
    // One HMAC over the body per secret, then constant-time comparisons: the
    // cost does not grow with the number of v1 values a sender puts in.
    let matches = secrets
        .iter()
        .filter(|secret| !secret.is_empty())
        .any(|secret| {
            let tag = tag(secret, at, body);
            signatures
                .iter()
                .any(|signature| same_bytes(tag.as_ref(), signature))
        });
    if matches {
        Ok(at)
    } else {
        Err(SignatureError::NoMatch)
    }
}

/// Checks only the header's form (cheap: before the body is read).
///
/// # Errors
/// [`SignatureError::Missing`], [`SignatureError::Malformed`],
/// [`SignatureError::NoMatch`] when it holds no usable `v1`.
pub fn check_header(header: Option<&[u8]>) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    if header.len() > HEADER_BYTES_MAX {
        return Err(SignatureError::Malformed);
    }
    let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed)?;
    let (_, signatures) = parse_header(header)?;
    if signatures.is_empty() {
        return Err(SignatureError::NoMatch);
    }
    Ok(())
}

/// `t` and the `v1` tags (32 bytes each; others can never match and are
/// skipped), at most [`SIGNATURES_MAX`] of them.
fn parse_header(header: &str) -> Result<(i64, Vec<Vec<u8>>), SignatureError> {
    let mut at = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let (name, value) = part
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed)?;
        match name {
            "t" if at.is_some() => return Err(SignatureError::Malformed),
            "t" => {
                at = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| SignatureError::Malformed)?,
                );
            }
            "v1" => {
                if let Ok(tag) = hex::decode(value)
                    && tag.len() == TAG_BYTES
                {
                    if signatures.len() == SIGNATURES_MAX {
                        return Err(SignatureError::Malformed);
                    }
                    signatures.push(tag);
                }
            }
            // v0 (test mode's legacy scheme) and future schemes are ignored, as Stripe's libraries do.
            _ => {}
        }
    }
    Ok((at.ok_or(SignatureError::Malformed)?, signatures))
}

/// Equal slices, compared in time that does not depend on where they differ.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len()
        && std::hint::black_box(a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y))) == 0
}

/// HMAC-SHA256 under `secret` of `"{at_s}.{body}"`, without copying the body.
fn tag(secret: &str, at_s: i64, body: &[u8]) -> hmac::Tag {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(format!("{at_s}.").as_bytes());
    context.update(body);
    context.sign()
}

/// The `Stripe-Signature` header Stripe would send for `body` at `at_s` under
/// `secret` (for tests and the webhook benchmark).
pub fn sign(body: &[u8], secret: &str, at_s: i64) -> String {
    format!(
        "t={at_s},v1={}",
        hex::encode(tag(secret, at_s, body).as_ref())
    )
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
        // An empty secret signs nothing.
        let empty = sign(BODY, "", NOW);
        assert!(verify(Some(empty.as_bytes()), BODY, &[""], NOW).is_err());
        // Two times, or more v1 values than any rotation needs: refused unread.
        let twice = format!("t={NOW},{header}");
        assert_eq!(check(Some(&twice), BODY, NOW), "signature_malformed");
        let v1 = header.split_once(",v1=").unwrap().1;
        let many = format!("t={NOW}{}", format!(",v1={v1}").repeat(SIGNATURES_MAX + 1));
        assert_eq!(check(Some(&many), BODY, NOW), "signature_malformed");
        assert!(check_header(Some(header.as_bytes())).is_ok());
        assert_eq!(check_header(None), Err(SignatureError::Missing));
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
