//! Typed ids: each aggregate's id and the stream it lives in.

use std::fmt;

use recur_ledger::{LedgerError, StreamId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::DomainError;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $category:literal, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The stream category (`customer`, `subscription`, …).
            pub const CATEGORY: &'static str = $category;
            /// A human name of the kind, for errors.
            pub const KIND: &'static str = $kind;

            /// A new UUIDv7 stamped with `now` (from the injected clock); within
            /// a replayable request, the request's next id (the same on a rerun).
            pub fn new_at(now: OffsetDateTime) -> Self {
                Self(crate::context::new_id(now))
            }

            /// Parses the UUID text form.
            ///
            /// # Errors
            /// [`DomainError::InvalidField`] when it is not a UUID.
            pub fn parse(text: &str) -> Result<Self, DomainError> {
                Uuid::parse_str(text).map(Self).map_err(|_| DomainError::InvalidField {
                    field: $kind,
                    reason: "not a UUID".into(),
                })
            }

            /// The stream holding this aggregate's events.
            ///
            /// # Errors
            /// Never in practice: the name is short and plain.
            pub fn stream(&self) -> Result<StreamId, LedgerError> {
                StreamId::parse(format!("{}-{}", $category, self.0))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A customer.
    CustomerId,
    "customer",
    "customer"
);
uuid_id!(
    /// A subscription.
    SubscriptionId,
    "subscription",
    "subscription"
);
uuid_id!(
    /// An invoice (a subscription period, a proration, or a one-time purchase).
    InvoiceId,
    "invoice",
    "invoice"
);

/// A coupon's code, e.g. `WELCOME20`: 1–40 of `A-Z 0-9 _ -`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CouponCode(String);

impl CouponCode {
    /// Stream category of coupons.
    pub const CATEGORY: &'static str = "coupon";

    /// Accepts 1–40 characters of uppercase letters, digits, `_` and `-`.
    ///
    /// # Errors
    /// [`DomainError::InvalidField`] otherwise.
    pub fn parse(text: &str) -> Result<Self, DomainError> {
        let ok = !text.is_empty()
            && text.len() <= 40
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(DomainError::InvalidField {
                field: "coupon code",
                reason: "1 to 40 of A-Z, 0-9, '_' and '-'".into(),
            })
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The coupon's stream.
    ///
    /// # Errors
    /// Never in practice.
    pub fn stream(&self) -> Result<StreamId, LedgerError> {
        StreamId::parse(format!("coupon-{}", self.0))
    }
}

impl TryFrom<String> for CouponCode {
    type Error = DomainError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<CouponCode> for String {
    fn from(value: CouponCode) -> Self {
        value.0
    }
}

impl fmt::Display for CouponCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
