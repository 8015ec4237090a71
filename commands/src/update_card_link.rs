//! Update-card links: a signed, expiring token that lets a customer put a new
//! card on file (and pay the invoice it names) from a hosted page, with no API
//! key — the token is the credential.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, first part))`
//! (no padding). The claims say whose card (`customer_id`), which invoice to
//! pay once it is on file (`invoice_id`, optional) and until when the link
//! works (`expires_at`, Unix seconds). Nothing is stored: a link is good until
//! it expires or the key changes, and may be used more than once (a customer
//! retries with another card); what it can do is bounded by the commands it
//! leads to (a paid invoice is never charged again).
//!
//! Pure code: the clock's `now` and the key are passed in.
//!
//! ```
//! use recur_commands::update_card_link::{Claims, LinkKey, sign, url, verify};
//! use recur_commands::CustomerId;
//!
//! let key = LinkKey::from_bytes(&[7; 32]).unwrap();
//! let now = time::macros::datetime!(2027-01-01 0:00 UTC);
//! let claims = Claims::new(CustomerId(uuid::Uuid::nil()), None, now);
//! let token = sign(&key, &claims);
//! assert_eq!(verify(&key, &token, now).unwrap(), claims);
//! assert!(url("https://pay.example.com/", &token).starts_with("https://pay.example.com/update-card/"));
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ring::hmac;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::ids::{CustomerId, InvoiceId};

/// How long a link works unless told otherwise: a week, the gap between two
/// dunning messages of the standard policy, so the latest message always
/// carries a live link.
pub const LINK_LIFETIME_DEFAULT: Duration = Duration::days(7);
/// The shortest key accepted, in bytes (HMAC-SHA256's own output length).
pub const KEY_BYTES_MIN: usize = 32;
/// The longest token `verify` reads, in bytes: a real one is about 230; anything
/// longer is refused before it is decoded.
pub const TOKEN_BYTES_MAX: usize = 1_024;
/// The length of an HMAC-SHA256 tag, in bytes.
const TAG_BYTES: usize = 32;
/// The path under the public base URL that serves the page.
pub const PATH_PREFIX: &str = "/update-card/";

/// The signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct LinkKey(hmac::Key);

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey([redacted])")
    }
}

/// Why a key or a token was refused; each has a stable code ([`LinkError::code`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Not a token at all (shape, base64, JSON), or too long.
    #[error("the link is malformed")]
    Malformed,
    /// Well formed, but not signed by this key (tampered with, or the key changed).
    #[error("the link's signature does not match")]
    BadSignature,
    /// Signed by this key, but past its `expires_at`.
    #[error("the link has expired")]
    Expired,
    /// A key shorter than [`KEY_BYTES_MIN`], or not hex or base64.
    #[error("a link key must be hex or base64 of at least {KEY_BYTES_MIN} bytes")]
    BadKey,
    /// The system's random source failed (generating a key).
    #[error("no random bytes for a link key")]
    Random,
}

impl LinkError {
    /// The stable code: `malformed`, `bad_signature`, `expired`, `bad_key`, `random`.
    pub fn code(self) -> &'static str {
        match self {
            LinkError::Malformed => "malformed",
            LinkError::BadSignature => "bad_signature",
            LinkError::Expired => "expired",
            LinkError::BadKey => "bad_key",
            LinkError::Random => "random",
        }
    }
}

impl LinkKey {
    /// A key from raw bytes.
    ///
    /// # Errors
    /// [`LinkError::BadKey`] for fewer than [`KEY_BYTES_MIN`] bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, LinkError> {
        if bytes.len() < KEY_BYTES_MIN {
            return Err(LinkError::BadKey);
        }
        Ok(Self(hmac::Key::new(hmac::HMAC_SHA256, bytes)))
    }

    /// A key from its text form: hex (an even number of hex digits), else
    /// base64 (standard or URL-safe, padded or not), of at least
    /// [`KEY_BYTES_MIN`] bytes. The error never contains the text.
    ///
    /// # Errors
    /// [`LinkError::BadKey`].
    pub fn parse(text: &str) -> Result<Self, LinkError> {
        let text = text.trim();
        let is_hex = text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit());
        let bytes = if is_hex {
            hex::decode(text).ok()
        } else {
            let unpadded = text.trim_end_matches('=');
            base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(unpadded)
                .or_else(|_| BASE64URL.decode(unpadded))
                .ok()
        }
        .ok_or(LinkError::BadKey)?;
        Self::from_bytes(&bytes)
    }

    /// A new random key of [`KEY_BYTES_MIN`] bytes (for a server started
    /// without one: its links die with it).
    ///
    /// # Errors
    /// [`LinkError::Random`].
    pub fn generate() -> Result<Self, LinkError> {
        let rng = ring::rand::SystemRandom::new();
        let bytes: [u8; KEY_BYTES_MIN] = ring::rand::generate(&rng)
            .map_err(|_| LinkError::Random)?
            .expose();
        Self::from_bytes(&bytes)
    }
}

/// What a link grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Whose card on file the link replaces.
    pub customer_id: CustomerId,
    /// The invoice paid at once when a card is put on file, if any.
    pub invoice_id: Option<InvoiceId>,
    /// When the link stops working (kept to the second).
    #[serde(with = "time::serde::timestamp")]
    pub expires_at: OffsetDateTime,
    /// The dunning message that carried the link, if any: a visit is
    /// recorded as that message's click.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<uuid::Uuid>,
}

impl Claims {
    /// Claims for a link made at `now` that lives [`LINK_LIFETIME_DEFAULT`].
    pub fn new(
        customer_id: CustomerId,
        invoice_id: Option<InvoiceId>,
        now: OffsetDateTime,
    ) -> Self {
        Self::expiring(customer_id, invoice_id, now + LINK_LIFETIME_DEFAULT)
    }

    /// Claims that expire at `expires_at` (truncated to the second, as signed).
    pub fn expiring(
        customer_id: CustomerId,
        invoice_id: Option<InvoiceId>,
        expires_at: OffsetDateTime,
    ) -> Self {
        let expires_at = expires_at.replace_nanosecond(0).unwrap_or(expires_at);
        Self {
            customer_id,
            invoice_id,
            expires_at,
            message_id: None,
        }
    }

    /// The same claims, carried by the dunning message `message_id`.
    pub fn for_message(self, message_id: uuid::Uuid) -> Self {
        Self {
            message_id: Some(message_id),
            ..self
        }
    }
}

/// The token for `claims`, signed with `key`.
pub fn sign(key: &LinkKey, claims: &Claims) -> String {
    // Claims are ids and a number: serialising them cannot fail.
    let json = serde_json::to_vec(claims).unwrap_or_default();
    let body = BASE64URL.encode(json);
    let tag = hmac::sign(&key.0, body.as_bytes());
    format!("{body}.{}", BASE64URL.encode(tag.as_ref()))
}

/// The claims of `token` if `key` signed it and it has not expired at `now`.
/// The signature is checked (in constant time, by ring) before the claims are
/// parsed, so nothing an attacker writes is read unless the key signed it.
///
/// # Errors
/// [`LinkError::Malformed`], [`LinkError::BadSignature`], [`LinkError::Expired`].
pub fn verify(key: &LinkKey, token: &str, now: OffsetDateTime) -> Result<Claims, LinkError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(LinkError::Malformed);
    }
    let (body, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
    if tag.contains('.') {
        return Err(LinkError::Malformed);
    }
    let tag = BASE64URL.decode(tag).map_err(|_| LinkError::Malformed)?;
    // An HMAC-SHA256 tag is 32 bytes; claims are never empty.
    if body.is_empty() || tag.len() != TAG_BYTES {
        return Err(LinkError::Malformed);
    }
    hmac::verify(&key.0, body.as_bytes(), &tag).map_err(|_| LinkError::BadSignature)?;
    let json = BASE64URL.decode(body).map_err(|_| LinkError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| LinkError::Malformed)?;
    if now >= claims.expires_at {
        return Err(LinkError::Expired);
    }
    Ok(claims)
}

/// The page's address for `token` under `public_base_url` (a trailing `/` or
/// not): `{base}/update-card/{token}`. The token is base64url and a dot, so it
/// needs no escaping in a path.
pub fn url(public_base_url: &str, token: &str) -> String {
    format!(
        "{}{PATH_PREFIX}{token}",
        public_base_url.trim_end_matches('/')
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;
    use time::macros::datetime;

    use super::*;

    const NOW: OffsetDateTime = datetime!(2027-03-01 12:00 UTC);

    fn key(byte: u8) -> LinkKey {
        LinkKey::from_bytes(&[byte; 32]).unwrap()
    }

    fn claims() -> Claims {
        Claims::new(
            CustomerId(uuid::Uuid::from_u128(1)),
            Some(InvoiceId(uuid::Uuid::from_u128(2))),
            NOW,
        )
    }

    #[test]
    fn a_signed_link_verifies_to_its_claims_until_it_expires() {
        let token = sign(&key(1), &claims());
        assert_eq!(verify(&key(1), &token, NOW), Ok(claims()));
        let last_second = NOW + LINK_LIFETIME_DEFAULT - Duration::seconds(1);
        assert_eq!(verify(&key(1), &token, last_second), Ok(claims()));
        assert_eq!(
            verify(&key(1), &token, NOW + LINK_LIFETIME_DEFAULT),
            Err(LinkError::Expired)
        );
        let without_invoice = Claims::new(claims().customer_id, None, NOW);
        let token = sign(&key(1), &without_invoice);
        assert_eq!(verify(&key(1), &token, NOW), Ok(without_invoice));
    }

    #[test]
    fn a_messages_link_carries_its_id_and_a_link_without_one_still_verifies() {
        let message = uuid::Uuid::from_u128(7);
        let carried = claims().for_message(message);
        let token = sign(&key(1), &carried);
        let verified = verify(&key(1), &token, NOW).unwrap();
        assert_eq!(verified.message_id, Some(message));
        assert_eq!(verified, carried);
        // A link signed before messages were named has no such field.
        let plain = sign(&key(1), &claims());
        let body =
            String::from_utf8(BASE64URL.decode(plain.split_once('.').unwrap().0).unwrap()).unwrap();
        assert!(!body.contains("message_id"), "{body}");
        assert_eq!(verify(&key(1), &plain, NOW).unwrap().message_id, None);
    }

    #[test]
    fn another_key_or_a_changed_claim_or_signature_is_a_bad_signature() {
        let token = sign(&key(1), &claims());
        assert_eq!(verify(&key(2), &token, NOW), Err(LinkError::BadSignature));
        let (body, tag) = token.split_once('.').unwrap();
        // Another customer's claims under this link's signature.
        let other = Claims::new(CustomerId(uuid::Uuid::from_u128(3)), None, NOW);
        let other_body = sign(&key(9), &other);
        let other_body = other_body.split_once('.').unwrap().0;
        assert_eq!(
            verify(&key(1), &format!("{other_body}.{tag}"), NOW),
            Err(LinkError::BadSignature)
        );
        // An expiry pushed out by hand.
        let json = String::from_utf8(BASE64URL.decode(body).unwrap()).unwrap();
        let later = json.replace(
            &claims().expires_at.unix_timestamp().to_string(),
            &(claims().expires_at.unix_timestamp() + 86_400).to_string(),
        );
        assert_ne!(json, later);
        let forged = format!("{}.{tag}", BASE64URL.encode(later));
        assert_eq!(verify(&key(1), &forged, NOW), Err(LinkError::BadSignature));
        // One character of the signature changed.
        let mut bytes = token.into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(bytes).unwrap();
        assert_eq!(verify(&key(1), &flipped, NOW), Err(LinkError::BadSignature));
    }

    #[test]
    fn what_is_not_a_token_is_malformed() {
        let token = sign(&key(1), &claims());
        for bad in [
            "",
            ".",
            "abc",
            "a.b.c",
            "!!!.AAAA",
            &format!("{token}.x"),
            &format!("{token}="),
            &"A".repeat(TOKEN_BYTES_MAX + 1),
        ] {
            assert_eq!(
                verify(&key(1), bad, NOW),
                Err(LinkError::Malformed),
                "{bad}"
            );
        }
        // Signed, but not our claims: refused as malformed, not trusted.
        let body = BASE64URL.encode(br#"{"customer_id":"x"}"#);
        let tag = hmac::sign(&key(1).0, body.as_bytes());
        let odd = format!("{body}.{}", BASE64URL.encode(tag.as_ref()));
        assert_eq!(verify(&key(1), &odd, NOW), Err(LinkError::Malformed));
    }

    #[test]
    fn keys_parse_from_hex_or_base64_of_32_bytes_or_more_and_never_show() {
        let hex_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        let from_hex = LinkKey::parse(hex_key).unwrap();
        let from_b64 = LinkKey::parse(
            &base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_key).unwrap()),
        )
        .unwrap();
        // The same bytes, the same signatures.
        assert_eq!(sign(&from_hex, &claims()), sign(&from_b64, &claims()));
        assert_eq!(
            LinkKey::parse(&hex_key[..62]).err(),
            Some(LinkError::BadKey)
        );
        assert_eq!(LinkKey::parse("not a key").err(), Some(LinkError::BadKey));
        assert_eq!(format!("{from_hex:?}"), "LinkKey([redacted])");
        let fresh = LinkKey::generate().unwrap();
        assert_ne!(sign(&fresh, &claims()), sign(&from_hex, &claims()));
        assert_eq!(LinkError::BadSignature.code(), "bad_signature");
        assert_eq!(LinkError::Expired.code(), "expired");
        assert_eq!(LinkError::Malformed.code(), "malformed");
    }

    #[test]
    fn the_url_is_the_base_then_the_page_then_the_token() {
        assert_eq!(
            url("https://billing.example.com/", "abc.def"),
            "https://billing.example.com/update-card/abc.def"
        );
        assert_eq!(
            url("http://127.0.0.1:8080", "abc.def"),
            "http://127.0.0.1:8080/update-card/abc.def"
        );
    }

    proptest! {
        #[test]
        fn random_text_never_panics_verify_and_is_never_accepted(text in ".{0,300}") {
            let result = verify(&key(1), &text, NOW);
            prop_assert!(result.is_err());
        }

        #[test]
        fn random_base64url_shapes_never_panic_verify(body in "[A-Za-z0-9_-]{0,200}", tag in "[A-Za-z0-9_-]{0,60}") {
            let result = verify(&key(1), &format!("{body}.{tag}"), NOW);
            prop_assert!(matches!(result, Err(LinkError::Malformed | LinkError::BadSignature)));
        }
    }
}
