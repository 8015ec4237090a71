//! Stripe events as the webhook delivered them: each kept once, as an immutable
//! fact of its own (`stripe-<evt id>`), before anything acts on it.
//!
//! A Stripe event carries personal data (a customer's email, name, address; a
//! charge's billing details), so the event itself is stored encrypted under a
//! data key of its Stripe customer (or, without one, of the event), like a
//! Recur customer's contact details (docs/security.md); what is kept in clear
//! is what routes it: its id, type, API version, time, mode and the ids of the
//! Stripe customer and object it is about.

use sha2::{Digest, Sha256};
use uuid::Uuid;

use recur_ledger::{Metadata, Position, Source, StreamId};
use serde::{Deserialize, Serialize};

use crate::aggregate::DomainEvent;
use crate::billing::Billing;
use crate::error::BillingError;
use crate::ids::CustomerId;
use crate::privacy::Encrypted;
use crate::tagged::domain_events;

/// The parts of a delivered Stripe event that route it (the rest stays encrypted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StripeDelivery {
    /// `evt_…`.
    pub id: String,
    /// `invoice.payment_failed`, `customer.updated`, …
    pub event_type: String,
    /// The API version it was rendered in (older ones are kept as they are).
    pub api_version: Option<String>,
    /// When Stripe made it, Unix seconds.
    pub created_s: i64,
    /// Live or test mode.
    pub livemode: bool,
    /// The Stripe customer it is about (`cus_…`), when it names one.
    pub customer: Option<String>,
    /// The id of the object it is about (`in_…`, `pi_…`, …).
    pub object_id: Option<String>,
}

domain_events! {
    /// A Stripe event, as delivered.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum WebhookEvent {
        /// A Stripe event was delivered (verified) and kept.
        StripeEventReceived {
            /// `evt_…` (also the event's metadata `external_id`).
            stripe_event_id: String,
            /// Its Stripe type.
            stripe_type: String,
            /// The API version it was rendered in.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            api_version: Option<String>,
            /// When Stripe made it, Unix seconds.
            created_s: i64,
            /// Live or test mode.
            livemode: bool,
            /// The Stripe customer it is about.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            customer: Option<String>,
            /// The object it is about.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            object_id: Option<String>,
            /// Whose data key encrypts it (see [`stripe_data_owner`]).
            key_owner: Uuid,
            /// The event's JSON exactly as delivered, encrypted.
            encrypted: Encrypted,
        },
    }
}

impl DomainEvent for WebhookEvent {
    fn event_type(&self) -> &'static str {
        "StripeEventReceived"
    }
}

/// What became of a delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ingested {
    /// Kept now, at this ledger position.
    New(Position),
    /// Kept before (a redelivery, sequential or concurrent): nothing written.
    Duplicate,
    /// About a Stripe customer whose Recur customer was erased: acknowledged,
    /// nothing written (its data key is destroyed, and its personal data must
    /// not come back under another).
    Erased,
}

/// What names a Stripe event's stream, before its id.
pub const STRIPE_STREAM_PREFIX: &str = "stripe-";

/// The stream of one Stripe event.
///
/// # Errors
/// An id that cannot name a stream (the webhook checks ids before).
pub fn stripe_event_stream(id: &str) -> Result<StreamId, recur_ledger::LedgerError> {
    StreamId::parse(format!("{STRIPE_STREAM_PREFIX}{id}"))
}

/// The owner of the data key that encrypts Stripe events about `customer` (a
/// `cus_…`), or about nothing else when there is none (then the event's own
/// id): a stable UUID (version 8) from a SHA-256 of the name.
pub fn stripe_data_owner(name: &str) -> Uuid {
    let digest = Sha256::new()
        .chain_update(b"recur stripe data owner\0")
        .chain_update(name.as_bytes())
        .finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

impl Billing {
    /// Keeps a verified Stripe delivery once: its routing fields in clear, the
    /// whole event encrypted. A redelivery (even a concurrent one) writes nothing.
    ///
    /// # Errors
    /// [`BillingError::NoMasterKey`], [`BillingError::Privacy`]; ledger errors.
    pub async fn ingest_stripe_event(
        &self,
        delivery: StripeDelivery,
        raw: &[u8],
    ) -> Result<Ingested, BillingError> {
        let stream = stripe_event_stream(&delivery.id)?;
        if self.ledger().stream_version(&stream).await? > 0 {
            return Ok(Ingested::Duplicate);
        }
        let key_owner = stripe_data_owner(delivery.customer.as_deref().unwrap_or(&delivery.id));
        let encrypted = match self.encrypt_personal(CustomerId(key_owner), raw).await {
            Ok(encrypted) => encrypted,
            Err(BillingError::Domain(crate::error::DomainError::PersonalDataErased)) => {
                return Ok(Ingested::Erased);
            }
            Err(error) => return Err(error),
        };
        let event = WebhookEvent::StripeEventReceived {
            stripe_event_id: delivery.id.clone(),
            stripe_type: delivery.event_type,
            api_version: delivery.api_version,
            created_s: delivery.created_s,
            livemode: delivery.livemode,
            customer: delivery.customer,
            object_id: delivery.object_id,
            key_owner,
            encrypted,
        };
        let metadata = Metadata {
            source: Source::Webhook,
            actor: Some("stripe".to_owned()),
            external_id: Some(delivery.id),
            ..Metadata::default()
        };
        Ok(
            match self.repo.append_once(&stream, &metadata, &[event]).await? {
                Some(position) => Ingested::New(position),
                None => Ingested::Duplicate,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_owners_are_stable_and_apart() {
        assert_eq!(stripe_data_owner("cus_A"), stripe_data_owner("cus_A"));
        assert_ne!(stripe_data_owner("cus_A"), stripe_data_owner("cus_B"));
        assert_eq!(stripe_data_owner("cus_A").get_version_num(), 8);
    }
}
