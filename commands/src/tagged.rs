//! Event payloads decoded tag first.
//!
//! Events are stored as internally tagged JSON (`{"type":"InvoicePaid",…}`).
//! serde's derived decoder for that shape cannot know the variant until it has
//! read the whole object, so it buffers every field into an intermediate tree and
//! decodes the variant from the tree: on a replay that was the largest single
//! cost. Recur writes the tag first, so `domain_events!` gives each event enum
//! a decoder that reads the tag from the payload's start and decodes the
//! variant's fields straight from the text. A payload whose tag is not first
//! (written by hand, or by another tool) takes serde's derived path.

use std::cell::Cell;
use std::sync::Arc;

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, Visitor};

/// Why a stored payload is not an event of the expected enum.
///
/// `Clone` (the parser's error shared) because a decoded page is handed to
/// several projections, each of which may report the same failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload's `type` names no variant of the enum.
    #[error("unknown event type \"{tag}\"")]
    UnknownType {
        /// The payload's `type`.
        tag: String,
        /// The parser's refusal (it lists the types it expected).
        #[source]
        source: Arc<serde_json::Error>,
    },
    /// Not JSON, no `type`, or fields that do not fit the variant.
    #[error("payload of event type \"{}\" does not decode", .tag.as_deref().unwrap_or("(none)"))]
    Payload {
        /// The payload's `type`, when it has one.
        tag: Option<String>,
        /// The parser's error: which field, where.
        #[source]
        source: Arc<serde_json::Error>,
    },
}

impl DecodeError {
    /// The payload's `type`, when one was read.
    pub fn tag(&self) -> Option<&str> {
        match self {
            Self::UnknownType { tag, .. } => Some(tag),
            Self::Payload { tag, .. } => tag.as_deref(),
        }
    }
}

/// Decodes a stored payload into an event enum.
pub trait DecodeEvent: Sized {
    /// The event in `payload`, or why it is not one.
    ///
    /// # Errors
    /// [`DecodeError::UnknownType`] for a `type` the enum does not have;
    /// [`DecodeError::Payload`] for invalid JSON, no `type`, or fields that do
    /// not fit the variant.
    fn decode_payload(payload: &str) -> Result<Self, DecodeError>;
}

/// The tag of a payload that starts `{"type":"…"`, as Recur writes them.
pub(crate) fn leading_tag(payload: &str) -> Option<&str> {
    let rest = payload.strip_prefix("{\"type\":\"")?;
    let tag = &rest[..rest.find('"')?];
    // An escaped character would make the text differ from the name.
    (!tag.contains('\\')).then_some(tag)
}

/// Decodes `payload` as the variant `tag` of `T`, an externally tagged mirror of
/// an event enum: the variant comes from `tag`, its fields from the whole object
/// (the `type` field among them is ignored as unknown).
///
/// # Errors
/// As [`DecodeEvent::decode_payload`]; also trailing characters after the object.
pub(crate) fn decode_variant<'de, T: de::Deserialize<'de>>(
    tag: &'de str,
    payload: &'de str,
) -> Result<T, DecodeError> {
    // Set when serde refuses the tag itself: the one typed sign of an unknown
    // type, where the parser's error only says so in its text.
    let unknown_tag = Cell::new(false);
    let mut fields = serde_json::Deserializer::from_str(payload);
    let decoded = T::deserialize(TagFirst {
        tag,
        fields: &mut fields,
        unknown_tag: &unknown_tag,
    })
    .and_then(|value| fields.end().map(|()| value));
    decoded.map_err(|source| {
        let (tag, source) = (tag.to_owned(), Arc::new(source));
        if unknown_tag.get() {
            DecodeError::UnknownType { tag, source }
        } else {
            DecodeError::Payload {
                tag: Some(tag),
                source,
            }
        }
    })
}

/// Classifies the failure of serde's derived decoder on a payload whose tag is
/// not first: reads the `type` (a second pass, on the error path only) and asks
/// `T`, the tagged mirror, whether it knows that type.
pub(crate) fn derived_failure<T: de::DeserializeOwned>(
    payload: &str,
    source: serde_json::Error,
) -> DecodeError {
    #[derive(serde::Deserialize)]
    struct Tag {
        #[serde(rename = "type")]
        tag: Option<String>,
    }
    let tag = serde_json::from_str::<Tag>(payload)
        .ok()
        .and_then(|t| t.tag);
    let source = Arc::new(source);
    match tag {
        Some(tag)
            if matches!(
                decode_variant::<T>(&tag, payload),
                Err(DecodeError::UnknownType { .. })
            ) =>
        {
            DecodeError::UnknownType { tag, source }
        }
        tag => DecodeError::Payload { tag, source },
    }
}

/// A deserializer that presents a tag and an object as an externally tagged enum.
struct TagFirst<'a, 'de> {
    tag: &'de str,
    fields: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
    unknown_tag: &'a Cell<bool>,
}

impl<'de> de::Deserializer<'de> for TagFirst<'_, 'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map
        struct enum identifier ignored_any
    }
}

impl<'de> de::EnumAccess<'de> for TagFirst<'_, 'de> {
    type Error = serde_json::Error;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(
        self,
        seed: V,
    ) -> Result<(V::Value, Self), Self::Error> {
        let variant = seed
            .deserialize(BorrowedStrDeserializer::new(self.tag))
            .inspect_err(|_| self.unknown_tag.set(true))?;
        Ok((variant, self))
    }
}

impl<'de> de::VariantAccess<'de> for TagFirst<'_, 'de> {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        de::Deserialize::deserialize(&mut *self.fields).map(|IgnoredAny| ())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        seed.deserialize(&mut *self.fields)
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        Err(de::Error::custom(
            "an internally tagged event has no tuple variants",
        ))
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        de::Deserializer::deserialize_struct(&mut *self.fields, "", fields, visitor)
    }
}

/// Declares an internally tagged event enum (its attributes as written) and its
/// [`DecodeEvent`] impl: a private externally tagged mirror with the same
/// variants and fields, decoded by [`decode_variant`] and moved into the enum.
macro_rules! domain_events {
    (
        $(#[$enum_meta:meta])*
        $vis:vis enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident $({
                    $(
                        $(#[$field_meta:meta])*
                        $field:ident : $ty:ty
                    ),* $(,)?
                })?
            ),* $(,)?
        }
    ) => {
        $(#[$enum_meta])*
        $vis enum $name {
            $(
                $(#[$variant_meta])*
                $variant $({
                    $(
                        $(#[$field_meta])*
                        $field: $ty
                    ),*
                })?
            ),*
        }

        const _: () = {
            // Its variants are the event's: named as the event names them.
            #[allow(clippy::enum_variant_names)]
            #[derive(serde::Deserialize)]
            enum ByTag {
                $(
                    $(#[$variant_meta])*
                    $variant $({ $( $(#[$field_meta])* $field: $ty ),* })?
                ),*
            }

            impl $crate::tagged::DecodeEvent for $name {
                fn decode_payload(payload: &str) -> Result<Self, $crate::tagged::DecodeError> {
                    let Some(tag) = $crate::tagged::leading_tag(payload) else {
                        return serde_json::from_str(payload)
                            .map_err(|e| $crate::tagged::derived_failure::<ByTag>(payload, e));
                    };
                    let by_tag: ByTag = $crate::tagged::decode_variant(tag, payload)?;
                    Ok(match by_tag {
                        $( ByTag::$variant $({ $($field),* })? => $name::$variant $({ $($field),* })? ),*
                    })
                }
            }
        };
    };
}

pub(crate) use domain_events;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leading_tag_reads_only_a_tag_written_first_and_plain() {
        assert_eq!(
            leading_tag(r#"{"type":"InvoicePaid","x":1}"#),
            Some("InvoicePaid")
        );
        assert_eq!(leading_tag(r#"{"x":1,"type":"InvoicePaid"}"#), None);
        assert_eq!(leading_tag(r#"{ "type":"InvoicePaid"}"#), None);
        assert_eq!(leading_tag(r#"{"type":"Invoice\u0050aid"}"#), None);
        assert_eq!(leading_tag(r#"{"type":"unterminated"#), None);
    }

    #[test]
    fn tag_first_decodes_as_the_derived_decoder_and_falls_back_to_it() {
        use crate::subscription::SubscriptionEvent;

        let derived = |payload: &str| serde_json::from_str::<SubscriptionEvent>(payload);
        let invoice = uuid::Uuid::now_v7();
        for payload in [
            r#"{"type":"CancellationUndone"}"#.to_owned(),
            format!(r#"{{"type":"SubscriptionPastDue","invoice_id":"{invoice}"}}"#),
            // Tag not first: the derived path.
            format!(r#"{{"invoice_id":"{invoice}","type":"SubscriptionPastDue"}}"#),
            format!(r#"{{ "type" : "SubscriptionInvoiceSettled", "invoice_id":"{invoice}"}}"#),
        ] {
            let expected = derived(&payload).expect("a valid event");
            assert_eq!(
                SubscriptionEvent::decode_payload(&payload).expect(&payload),
                expected
            );
        }
        for bad in [
            r#"{"type":"NoSuchEvent"}"#.to_owned(),
            r#"{"type":"SubscriptionPastDue"}"#.to_owned(),
            format!(r#"{{"type":"SubscriptionPastDue","invoice_id":"{invoice}"}} trailing"#),
            format!(r#"{{"type":"SubscriptionPastDue","invoice_id":"{invoice}""#),
            r#"{"type":"CancellationUndone""#.to_owned(),
        ] {
            assert!(derived(&bad).is_err(), "{bad}");
            assert!(SubscriptionEvent::decode_payload(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_unknown_type_is_named_by_its_tag_wherever_the_tag_stands() {
        use crate::subscription::SubscriptionEvent;

        for payload in [
            r#"{"type":"NoSuchEvent","x":1}"#,
            r#"{"x":1,"type":"NoSuchEvent"}"#,
        ] {
            let error = SubscriptionEvent::decode_payload(payload).expect_err(payload);
            assert!(
                matches!(&error, DecodeError::UnknownType { tag, .. } if tag == "NoSuchEvent"),
                "{payload}: {error:?}"
            );
            assert_eq!(error.to_string(), r#"unknown event type "NoSuchEvent""#);
            // The parser's message, listing the known types, is the source.
            let source = std::error::Error::source(&error).expect("the parser's error");
            assert!(
                source.to_string().contains("SubscriptionPastDue"),
                "{source}"
            );
        }
    }

    #[test]
    fn a_bad_payload_names_its_tag_and_keeps_the_parsers_error() {
        use crate::subscription::SubscriptionEvent;

        for (payload, said) in [
            (
                r#"{"type":"SubscriptionPastDue"}"#,
                "missing field `invoice_id`",
            ),
            (
                r#"{"invoice_id":7,"type":"SubscriptionPastDue"}"#,
                "expected a formatted UUID",
            ),
        ] {
            let error = SubscriptionEvent::decode_payload(payload).expect_err(payload);
            assert!(
                matches!(&error, DecodeError::Payload { tag: Some(tag), .. } if tag == "SubscriptionPastDue"),
                "{payload}: {error:?}"
            );
            let source = std::error::Error::source(&error).expect("the parser's error");
            assert!(source.to_string().contains(said), "{payload}: {source}");
        }
        let error = SubscriptionEvent::decode_payload("not json").expect_err("not json");
        assert!(
            matches!(error, DecodeError::Payload { tag: None, .. }),
            "{error:?}"
        );
    }
}
