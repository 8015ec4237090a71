//! A customer's personal data through the billing service: contact details
//! encrypted under the customer's data key on the way in and decrypted on the
//! way out, erasure by destroying that key, and the record of every read.

use std::sync::Arc;

use recur_ledger::{DataKey as StoredKey, Ledger, Source};
use time::OffsetDateTime;

use crate::billing::{Billing, access_stream, contact_stream, metadata};
use crate::customer::{
    AccessEvent, Contact, ContactDetails, Customer, CustomerCommand, ErasureReason,
    PersonalDataUse, StoredContact,
};
use crate::error::{BillingError, DomainError};
use crate::ids::CustomerId;
use crate::privacy::{DataKey, Encrypted, Vault};

/// Seconds within which one actor's reads of one customer's contact details
/// are recorded once.
pub const READ_RECORD_WINDOW_S: i64 = 60;
/// Recent reads remembered for that (beyond it the memory starts over).
const READS_REMEMBERED_MAX: usize = 10_000;

/// What an erasure did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Erasure {
    /// When the personal data was erased (the first erasure's time on a repeat).
    pub at: OffsetDateTime,
    /// Whether a live data key was destroyed now (false on a repeat).
    pub key_destroyed: bool,
    /// Data keys of the Stripe events about its Stripe customers destroyed now.
    pub provider_keys_destroyed: u32,
    /// Stored API answers that held the customer, deleted now.
    pub answers_deleted: u64,
}

impl Billing {
    /// The vault, or the refusal to handle personal data without one.
    fn vault(&self) -> Result<&Arc<Vault>, BillingError> {
        self.vault.as_ref().ok_or(BillingError::NoMasterKey)
    }

    /// The customer's data key (see [`data_key`]).
    async fn data_key(
        &self,
        id: CustomerId,
        create: bool,
    ) -> Result<Option<DataKey>, BillingError> {
        data_key(self.ledger(), self.vault()?, id, create).await
    }

    /// `details`, encrypted under the customer's data key (made if need be).
    pub(crate) async fn encrypt_contact(
        &self,
        id: CustomerId,
        details: &ContactDetails,
    ) -> Result<Encrypted, BillingError> {
        let json = serde_json::to_vec(details).map_err(|_| {
            crate::privacy::PrivacyError::Malformed("contact details do not serialize")
        })?;
        self.encrypt_personal(id, &json).await
    }

    /// Any personal data of the customer (its contact details, a stored answer
    /// that shows them), encrypted under its data key (made if need be).
    ///
    /// # Errors
    /// [`DomainError::PersonalDataErased`] once erased; [`BillingError::NoMasterKey`],
    /// [`BillingError::Privacy`]; ledger errors.
    pub async fn encrypt_personal(
        &self,
        id: CustomerId,
        plaintext: &[u8],
    ) -> Result<Encrypted, BillingError> {
        let key = self
            .data_key(id, true)
            .await?
            .ok_or(DomainError::PersonalDataErased)?;
        Ok(self.vault()?.encrypt(&key, plaintext)?)
    }

    /// What [`Billing::encrypt_personal`] encrypted; None once the customer is
    /// erased (its erasure recorded, or its data key destroyed).
    ///
    /// # Errors
    /// [`BillingError::NoMasterKey`], [`BillingError::Privacy`]; ledger errors.
    pub async fn decrypt_personal(
        &self,
        id: CustomerId,
        encrypted: &Encrypted,
    ) -> Result<Option<Vec<u8>>, BillingError> {
        // The erasure is recorded before the key is destroyed: a crash between
        // the two must not leave the details readable.
        if self.erased(id).await? {
            return Ok(None);
        }
        let Some(key) = self.data_key(id, false).await? else {
            return Ok(None);
        };
        Ok(Some(self.vault()?.decrypt(&key, encrypted)?))
    }

    /// Whether the customer's erasure is recorded (false for no such customer).
    async fn erased(&self, id: CustomerId) -> Result<bool, BillingError> {
        let (customer, _) = self.repo.load_current::<Customer>(&id.stream()?).await?;
        Ok(customer.erased_at.is_some())
    }

    /// Contact details as an event stored them, readable again; None when the
    /// customer's data key is destroyed (erased). Details stored in clear
    /// (before encryption) are shown unless the customer was erased.
    ///
    /// # Errors
    /// [`BillingError::NoMasterKey`], [`BillingError::Privacy`]; ledger errors.
    pub async fn open_contact(
        &self,
        id: CustomerId,
        stored: &StoredContact,
    ) -> Result<Option<ContactDetails>, BillingError> {
        match stored {
            StoredContact::Clear(details) => Ok((!self.erased(id).await?).then(|| details.clone())),
            StoredContact::Encrypted(encrypted) => {
                let Some(json) = self.decrypt_personal(id, encrypted).await? else {
                    return Ok(None);
                };
                let details = serde_json::from_slice(&json).map_err(|_| {
                    crate::privacy::PrivacyError::Malformed("decrypted contact is not JSON")
                })?;
                Ok(Some(details))
            }
        }
    }

    /// A customer's contact details; None when it has none or they were erased.
    ///
    /// # Errors
    /// [`BillingError::NoMasterKey`] when details are stored and no vault is
    /// configured; [`BillingError::Privacy`]; ledger errors.
    pub async fn contact(&self, id: CustomerId) -> Result<Option<ContactDetails>, BillingError> {
        let (state, _) = self
            .repo
            .load_current::<Contact>(&contact_stream(id)?)
            .await?;
        match &state.details {
            None => Ok(None),
            Some(stored) => self.open_contact(id, stored).await,
        }
    }

    /// Erases a customer's personal data: records the erasure (who, when, why)
    /// on the customer's stream, then destroys its data key, then deletes the
    /// stored API answers that held the customer. The events stay; the books,
    /// the chain and every figure are unchanged. Repeating it is harmless (and
    /// finishes an erasure a crash interrupted).
    ///
    /// # Errors
    /// Unknown customer; ledger errors.
    #[tracing::instrument(skip_all, fields(customer = %id))]
    pub async fn forget(
        &self,
        id: CustomerId,
        reason: ErasureReason,
        source: Source,
    ) -> Result<Erasure, BillingError> {
        let now = self.now();
        let executed = self
            .customer_command(id, source, |_| CustomerCommand::ErasePersonalData {
                reason,
                now,
            })
            .await?;
        let at = executed.state.erased_at.unwrap_or(now);
        let key_destroyed = self.ledger().destroy_data_key(id.0).await?;
        // The Stripe events about its Stripe customers are kept under keys of
        // their own (`stripe_data_owner`): those go too.
        let mut provider_keys_destroyed = 0_u32;
        for provider_customer in &executed.state.provider_customers {
            let owner = crate::webhook::stripe_data_owner(provider_customer);
            if self.ledger().destroy_data_key(owner).await? {
                provider_keys_destroyed += 1;
            }
        }
        let answers_deleted = self
            .ledger()
            .delete_requests_mentioning(&id.0.to_string())
            .await?;
        tracing::info!(
            key_destroyed,
            provider_keys_destroyed,
            answers_deleted,
            "personal data erased"
        );
        Ok(Erasure {
            at,
            key_destroyed,
            provider_keys_destroyed,
            answers_deleted,
        })
    }

    /// Records that the caller (the request's actor) read `what` of a
    /// customer's personal data. Reads of a customer's contact details by one
    /// actor are recorded once per [`READ_RECORD_WINDOW_S`] (per process): a
    /// screen that polls a customer does not grow its log without bound. Every
    /// export is recorded.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn record_personal_data_read(
        &self,
        id: CustomerId,
        what: PersonalDataUse,
    ) -> Result<(), BillingError> {
        let at = self.now();
        let seen = (crate::context::actor().unwrap_or_default(), id);
        let window = time::Duration::seconds(READ_RECORD_WINDOW_S);
        let recent = |reads: &std::collections::HashMap<_, OffsetDateTime>| {
            what == PersonalDataUse::Contact
                && reads
                    .get(&seen)
                    .is_some_and(|last| at - *last < window && at >= *last)
        };
        if self.recent_reads.lock().is_ok_and(|reads| recent(&reads)) {
            return Ok(());
        }
        let event = AccessEvent::PersonalDataRead { what, at };
        self.repo
            .append_any(&access_stream(id)?, &metadata(Source::Api), &[event])
            .await?;
        if what == PersonalDataUse::Contact
            && let Ok(mut reads) = self.recent_reads.lock()
        {
            if reads.len() >= READS_REMEMBERED_MAX {
                reads.clear();
            }
            reads.insert(seen, at);
        }
        Ok(())
    }
}

/// A customer's data key, unwrapped: made on first use when `create` (the
/// first writer of a race wins, the others get its key); None when it was
/// destroyed (erased) or never made and not asked to be.
///
/// # Errors
/// [`DomainError::PersonalDataErased`] when asked to create the key of an
/// erased customer; [`BillingError::Privacy`]; ledger errors.
pub async fn data_key(
    ledger: &Ledger,
    vault: &Vault,
    id: CustomerId,
    create: bool,
) -> Result<Option<DataKey>, BillingError> {
    let mut stored = ledger.data_key(id.0).await?;
    if create && stored == StoredKey::Missing {
        let (_, wrapped) = vault.new_data_key(id.0)?;
        stored = ledger
            .insert_data_key(id.0, &wrapped, vault.current_id())
            .await?;
    }
    match stored {
        StoredKey::Live {
            wrapped,
            master_key_id,
        } => Ok(Some(vault.unwrap(id.0, &wrapped, &master_key_id)?)),
        StoredKey::Destroyed { .. } if create => Err(DomainError::PersonalDataErased.into()),
        StoredKey::Missing | StoredKey::Destroyed { .. } => Ok(None),
    }
}
