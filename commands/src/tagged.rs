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

use serde::de::value::BorrowedStrDeserializer;
use serde::de::{self, DeserializeSeed, IgnoredAny, Visitor};

/// Decodes a stored payload into an event enum.
pub trait DecodeEvent: Sized {
    /// The event in `payload`, or why it is not one.
    ///
    /// # Errors
    /// Invalid JSON, an unknown `type`, or fields that do not fit the variant.
    fn decode_payload(payload: &str) -> Result<Self, serde_json::Error>;
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
) -> Result<T, serde_json::Error> {
    let mut fields = serde_json::Deserializer::from_str(payload);
    let value = T::deserialize(TagFirst {
        tag,
        fields: &mut fields,
    })?;
    fields.end()?;
    Ok(value)
}

/// A deserializer that presents a tag and an object as an externally tagged enum.
struct TagFirst<'a, 'de> {
    tag: &'de str,
    fields: &'a mut serde_json::Deserializer<serde_json::de::StrRead<'de>>,
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
        let variant = seed.deserialize(BorrowedStrDeserializer::new(self.tag))?;
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
            #[derive(serde::Deserialize)]
            enum ByTag {
                $(
                    $(#[$variant_meta])*
                    $variant $({ $( $(#[$field_meta])* $field: $ty ),* })?
                ),*
            }

            impl $crate::tagged::DecodeEvent for $name {
                fn decode_payload(payload: &str) -> Result<Self, serde_json::Error> {
                    let Some(tag) = $crate::tagged::leading_tag(payload) else {
                        return serde_json::from_str(payload);
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
}
