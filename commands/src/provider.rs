//! What the payment provider reports, applied by the billing service: the
//! edge where the Stripe translator's decisions meet the aggregates. Each
//! operation loads what it needs, asks the aggregates to decide (pure, each a
//! no-op when done already) and appends; each answers what it did, or why it
//! did nothing — a report about something Recur does not know, or cannot
//! take, is never an error.
//!
//! Everything here runs inside the translator's keyed scope (one per Stripe
//! event), so a repeated translation finds what it appended before.

use recur_ledger::{Money, Source};
use time::OffsetDateTime;

use crate::billing::{Billing, contact_stream, metadata};
use crate::customer::{Contact, ContactDetails, Customer, CustomerCommand};
use crate::error::{BillingError, DomainError};
use crate::ids::{CustomerId, InvoiceId};
use crate::invoice::{ChargeOutcome, DisputeOutcome, InvoiceCommand, InvoiceStatus};
use crate::stripe_facts::{ContactPatch, StripeCard};

/// Where the commands of a provider's report come from.
const SOURCE: Source = Source::Webhook;

/// Merges of a contact patch tried before giving up on a customer changed
/// under it each time.
const CONTACT_MERGES_MAX: usize = 8;

/// What applying a provider's report did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Commands were decided and their events are in the ledger (appended
    /// now, or found from an earlier translation of the same report).
    Applied,
    /// Nothing to do, for this reason (a stable code: `unknown_invoice`,
    /// `already_paid`, `outcome_recorded`, …).
    Nothing(&'static str),
}

/// A refund as the provider reports it, in the invoice's money.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedRefund {
    /// The provider's refund id (`re_…`).
    pub refund_id: String,
    /// Metadata `recur_refund`: the key of Recur's own refund.
    pub recur_key: Option<String>,
    /// The refund carries no metadata at all (see
    /// [`InvoiceCommand::RecordProviderRefund`]).
    pub match_by_amount: bool,
    /// Amount, tax included.
    pub amount: Money,
    /// The provider's reason, if any.
    pub reason: Option<String>,
}

/// A dispute's stage as the provider reports it, in the invoice's money
/// (the fees in whatever currency the provider charged them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportedDispute {
    /// `dp_…`.
    pub dispute_id: String,
    /// The disputed charge.
    pub charge_id: String,
    /// The disputed amount.
    pub amount: Money,
    /// The network's reason code.
    pub reason: String,
    /// Funds were withdrawn (a chargeback, not an inquiry) by this stage.
    pub withdrawn: bool,
    /// The fee withdrawn (zero when none is reported).
    pub fee: Money,
    /// Funds were reinstated at this stage.
    pub reinstated: bool,
    /// The fee given back (zero when none is reported).
    pub fee_returned: Money,
    /// How it ended, when this stage closes it.
    pub outcome: Option<DisputeOutcome>,
}

/// A refusal of the domain is a report Recur cannot take: nothing, with its code.
fn refused(result: Result<Effect, BillingError>) -> Result<Effect, BillingError> {
    match result {
        Err(BillingError::Domain(error)) => Ok(Effect::Nothing(error.code())),
        other => other,
    }
}

/// Applied when the command wrote something; else nothing, for `reason`.
fn applied_unless_empty<E>(written: &[E], reason: &'static str) -> Effect {
    if written.is_empty() {
        Effect::Nothing(reason)
    } else {
        Effect::Applied
    }
}

impl Billing {
    /// The invoice, or None when Recur has none of that id.
    async fn reported_invoice(
        &self,
        id: InvoiceId,
    ) -> Result<Option<crate::invoice::Invoice>, BillingError> {
        match self.invoice(id).await {
            Ok(invoice) => Ok(Some(invoice)),
            Err(BillingError::Domain(DomainError::NotFound { .. })) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The provider says an attempt's charge was declined: recorded as the
    /// attempt's outcome when Recur did not hear it (its answer was lost), and
    /// then dunning goes on as for any decline (the retry scheduled by the
    /// policy, the subscription past due, the invoice written off when the
    /// policy is spent). Nothing when the attempt's outcome is recorded, or
    /// the invoice is not open (a failure reported after the success never
    /// un-pays it).
    ///
    /// # Errors
    /// Ledger errors (the translation is tried again).
    pub async fn provider_payment_failed(
        &self,
        id: InvoiceId,
        attempt_no: Option<u32>,
        decline_code: &str,
        message: &str,
        now: OffsetDateTime,
    ) -> Result<Effect, BillingError> {
        let Some(invoice) = self.reported_invoice(id).await? else {
            return Ok(Effect::Nothing("unknown_invoice"));
        };
        match invoice.status {
            InvoiceStatus::Open => {}
            InvoiceStatus::Paid => return Ok(Effect::Nothing("already_paid")),
            _ => return Ok(Effect::Nothing("invoice_not_open")),
        }
        let attempt = match attempt_no {
            Some(no) => invoice.attempts.iter().find(|a| a.attempt_no == no),
            None => invoice.pending_attempt(),
        };
        let Some(attempt) = attempt.cloned() else {
            return Ok(Effect::Nothing("no_such_attempt"));
        };
        if attempt.outcome.is_some() {
            return Ok(Effect::Nothing("outcome_recorded"));
        }
        let Some(customer_id) = invoice.customer_id else {
            return Ok(Effect::Nothing("unknown_customer"));
        };
        let customer = self.customer(customer_id).await?;
        // As for a decline Recur heard itself (Billing::collect): the dunning
        // policy decides, timed from when the attempt was due.
        let failed_at = attempt.effective_at();
        let position = crate::recovery::decline_step(&invoice, &attempt);
        let next = self
            .dunning_next(&invoice, &customer, decline_code, position, failed_at)
            .await?;
        let next_retry_at = crate::recovery::next_retry_at(next);
        let outcome = ChargeOutcome::Declined {
            decline_code: decline_code.to_owned(),
            message: message.to_owned(),
        };
        let recorded = self
            .invoice_command(id, SOURCE, |_| InvoiceCommand::RecordOutcome {
                attempt_no: attempt.attempt_no,
                outcome: outcome.clone(),
                next_retry_at,
                now,
            })
            .await?
            .state;
        if recorded.status == InvoiceStatus::Paid {
            self.settled(&recorded, SOURCE).await?;
            return Ok(Effect::Applied);
        }
        self.follow_decline(&recorded, &customer, failed_at, SOURCE)
            .await?;
        Ok(Effect::Applied)
    }

    /// The provider says a payment of the invoice went through: recorded (an
    /// attempt's answer that was lost, or a payment after a decline Recur
    /// recorded), and the subscription told. Nothing when it is paid already.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn provider_payment_succeeded(
        &self,
        id: InvoiceId,
        attempt_no: Option<u32>,
        charge_id: &str,
        amount: Money,
        now: OffsetDateTime,
    ) -> Result<Effect, BillingError> {
        let Some(invoice) = self.reported_invoice(id).await? else {
            return Ok(Effect::Nothing("unknown_invoice"));
        };
        if invoice.status == InvoiceStatus::Paid {
            return Ok(Effect::Nothing("already_paid"));
        }
        refused(
            async {
                let recorded = self
                    .invoice_command(id, SOURCE, |_| InvoiceCommand::RecordProviderPayment {
                        attempt_no,
                        charge_id: charge_id.to_owned(),
                        amount,
                        now,
                    })
                    .await?
                    .state;
                if recorded.status == InvoiceStatus::Paid {
                    self.settled(&recorded, SOURCE).await?;
                }
                Ok(Effect::Applied)
            }
            .await,
        )
    }

    /// The provider reports succeeded refunds of the invoice's charge (a
    /// charge's list, or one refund object): each not recorded yet is
    /// (Recur's own whose answer was lost, or one made in the provider's
    /// dashboard), keyed by its refund id; recorded ones add nothing.
    /// `None` — a charge that does not list its refunds (Stripe's API since
    /// 2022-11-15) — records nothing (`refunds_unlisted`): each refund is
    /// recorded under its own id by its `refund.*` event, never under the
    /// event's id by the amount refunded, which a refund event would double.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn provider_refunds(
        &self,
        id: InvoiceId,
        refunds: Option<Vec<ReportedRefund>>,
        now: OffsetDateTime,
    ) -> Result<Effect, BillingError> {
        if self.reported_invoice(id).await?.is_none() {
            return Ok(Effect::Nothing("unknown_invoice"));
        }
        let Some(refunds) = refunds else {
            return Ok(Effect::Nothing("refunds_unlisted"));
        };
        let mut effect = Effect::Nothing("refunds_recorded");
        for refund in refunds {
            let done = refused(
                self.invoice_command(id, SOURCE, |_| InvoiceCommand::RecordProviderRefund {
                    refund_id: refund.refund_id.clone(),
                    recur_key: refund.recur_key.clone(),
                    match_by_amount: refund.match_by_amount,
                    amount: refund.amount,
                    reason: refund.reason.clone().unwrap_or_default(),
                    now,
                })
                .await
                .map(|executed| applied_unless_empty(&executed.events, "refunds_recorded")),
            )?;
            match (&effect, done) {
                (_, Effect::Applied) => effect = Effect::Applied,
                (Effect::Nothing("refunds_recorded"), Effect::Nothing(reason)) => {
                    effect = Effect::Nothing(reason);
                }
                _ => {}
            }
        }
        Ok(effect)
    }

    /// The provider says a refund failed or was canceled. Nothing is booked
    /// or reversed: a refund not recorded was never money given back
    /// (`refund_failed`); one recorded as succeeded and failing afterwards
    /// (Stripe gives the money back to the balance) is reported as
    /// `refund_failed_after_recorded` for a person, and reconciliation shows
    /// the difference.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn provider_refund_failed(
        &self,
        id: InvoiceId,
        refund_id: &str,
    ) -> Result<Effect, BillingError> {
        let Some(invoice) = self.reported_invoice(id).await? else {
            return Ok(Effect::Nothing("unknown_invoice"));
        };
        let recorded = invoice
            .refunds
            .iter()
            .any(|r| r.refund_id.as_deref() == Some(refund_id));
        if recorded {
            tracing::warn!(
                invoice = %id,
                refund_id,
                "the provider reports a failed refund Recur recorded as given back"
            );
            return Ok(Effect::Nothing("refund_failed_after_recorded"));
        }
        Ok(Effect::Nothing("refund_failed"))
    }

    /// A dispute's stage: the dispute recorded when new, then its funds
    /// withdrawn, reinstated, or its end — each once — and any fee (or fee
    /// given back) the stage reports that no earlier stage booked.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn provider_dispute(
        &self,
        id: InvoiceId,
        dispute: &ReportedDispute,
        now: OffsetDateTime,
    ) -> Result<Effect, BillingError> {
        if self.reported_invoice(id).await?.is_none() {
            return Ok(Effect::Nothing("unknown_invoice"));
        }
        refused(
            async {
                let mut commands = vec![InvoiceCommand::OpenDispute {
                    dispute_id: dispute.dispute_id.clone(),
                    charge_id: dispute.charge_id.clone(),
                    amount: dispute.amount,
                    reason: dispute.reason.clone(),
                    now,
                }];
                if dispute.withdrawn {
                    commands.push(InvoiceCommand::WithdrawDisputedFunds {
                        dispute_id: dispute.dispute_id.clone(),
                        fee: dispute.fee,
                        now,
                    });
                }
                if dispute.reinstated {
                    commands.push(InvoiceCommand::ReinstateDisputedFunds {
                        dispute_id: dispute.dispute_id.clone(),
                        fee_returned: dispute.fee_returned,
                        now,
                    });
                }
                if let Some(outcome) = dispute.outcome {
                    commands.push(InvoiceCommand::CloseDispute {
                        dispute_id: dispute.dispute_id.clone(),
                        outcome,
                        now,
                    });
                }
                // Whatever stage reports the fees (each stage's dispute lists
                // the balance transactions known by then): what the stages
                // before did not book.
                commands.push(InvoiceCommand::RecordDisputeFees {
                    dispute_id: dispute.dispute_id.clone(),
                    fee: dispute.fee,
                    fee_returned: dispute.fee_returned,
                    now,
                });
                for command in commands {
                    self.invoice_command(id, SOURCE, |_| command.clone())
                        .await?;
                }
                Ok(Effect::Applied)
            }
            .await,
        )
    }

    /// The provider's customer changed its contact details: they replace what
    /// changed of the Recur customer's, encrypted under its data key, like a
    /// change through the API. Nothing when the result lacks a name or an
    /// email, is invalid, or is unchanged, or when the customer was erased.
    /// Personal data never reaches a log.
    ///
    /// # Errors
    /// [`BillingError::NoMasterKey`], [`BillingError::Privacy`]; ledger errors.
    pub async fn provider_contact(
        &self,
        id: CustomerId,
        patch: &ContactPatch,
        now: OffsetDateTime,
    ) -> Result<Effect, BillingError> {
        if patch.is_empty() {
            return Ok(Effect::Nothing("contact_unchanged"));
        }
        // The patch is merged into the details read at a version of the
        // contact stream, and appended only at that version: a change through
        // the API landing in between makes it read and merge again, never
        // overwrite it (one landing after is a full replacement, and wins).
        let contacts = contact_stream(id)?;
        for _ in 0..CONTACT_MERGES_MAX {
            let customer = match self.customer(id).await {
                Ok(read) => read,
                Err(BillingError::Domain(DomainError::NotFound { .. })) => {
                    return Ok(Effect::Nothing("unknown_customer"));
                }
                Err(error) => return Err(error),
            };
            if customer.erased_at.is_some() {
                return Ok(Effect::Nothing("personal_data_erased"));
            }
            let (stored, contact_version) = self.repo.load_current::<Contact>(&contacts).await?;
            let current = match &stored.details {
                None => None,
                Some(stored) => self.open_contact(id, stored).await?,
            };
            let (Some(name), Some(email)) = (
                patch
                    .name
                    .clone()
                    .or_else(|| current.as_ref().map(|c| c.name.clone())),
                patch
                    .email
                    .clone()
                    .or_else(|| current.as_ref().map(|c| c.email.clone())),
            ) else {
                return Ok(Effect::Nothing("contact_incomplete"));
            };
            let details = ContactDetails {
                name,
                email,
                phone: match &patch.phone {
                    Some(phone) => phone.clone(),
                    None => current.as_ref().and_then(|c| c.phone.clone()),
                },
            };
            if details.validate().is_err() {
                return Ok(Effect::Nothing("contact_invalid"));
            }
            if current.as_ref() == Some(&details) {
                return Ok(Effect::Nothing("contact_unchanged"));
            }
            let at_version = crate::context::RequestContext {
                actor: crate::context::actor(),
                expected: Some((contacts.clone(), contact_version)),
                ..crate::context::RequestContext::default()
            };
            let (written, _) = crate::context::within(at_version, async {
                // The contact first: its version is what the merge was made on.
                let encrypted = self.encrypt_contact(id, &details).await?;
                self.repo
                    .execute::<Contact, _>(&contacts, &metadata(SOURCE), |_| Ok(encrypted.clone()))
                    .await?;
                self.customer_command(id, SOURCE, |_| CustomerCommand::MarkContactChanged { now })
                    .await?;
                Ok(Effect::Applied)
            })
            .await;
            match written {
                Err(BillingError::Stale { .. }) => continue,
                written => return refused(written),
            }
        }
        Ok(Effect::Nothing("contact_contended"))
    }

    /// The card network updated the card on file (new expiry, last4 or
    /// brand, same token): recorded as the card on file. Nothing when it is
    /// not the card on file, or is older than what is on file (a late event).
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn provider_card_updated(
        &self,
        id: CustomerId,
        card: &StripeCard,
        now: OffsetDateTime,
    ) -> Result<Effect, BillingError> {
        let Some(customer) = self.reported_customer(id).await? else {
            return Ok(Effect::Nothing("unknown_customer"));
        };
        // A quick answer for the report; the command itself decides again on
        // the card on file when it appends (the customer may change it meanwhile).
        let Some(on_file) = customer.payment_method else {
            return Ok(Effect::Nothing("no_card_on_file"));
        };
        if on_file.token != card.id {
            return Ok(Effect::Nothing("not_the_card_on_file"));
        }
        if (card.exp_year, card.exp_month) < (on_file.exp_year, on_file.exp_month) {
            return Ok(Effect::Nothing("older_than_the_card_on_file"));
        }
        refused(
            self.customer_command(id, SOURCE, |_| CustomerCommand::UpdateCardOnFile {
                token: card.id.clone(),
                brand: card.brand.clone(),
                last4: card.last4.clone(),
                exp_month: card.exp_month,
                exp_year: card.exp_year,
                now,
            })
            .await
            .map(|executed| applied_unless_empty(&executed.events, "card_unchanged")),
        )
    }

    /// The provider says a saved card expires soon: noted on the customer
    /// ([`crate::customer::CustomerEvent::CardExpiring`]) when it is the card
    /// on file.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn provider_card_expiring(
        &self,
        id: CustomerId,
        card: &StripeCard,
        now: OffsetDateTime,
    ) -> Result<Effect, BillingError> {
        if self.reported_customer(id).await?.is_none() {
            return Ok(Effect::Nothing("unknown_customer"));
        }
        refused(
            self.customer_command(id, SOURCE, |_| CustomerCommand::NoteCardExpiring {
                token: card.id.clone(),
                last4: card.last4.clone(),
                exp_month: card.exp_month,
                exp_year: card.exp_year,
                now,
            })
            .await
            .map(|executed| applied_unless_empty(&executed.events, "not_the_card_on_file")),
        )
    }

    async fn reported_customer(&self, id: CustomerId) -> Result<Option<Customer>, BillingError> {
        match self.customer(id).await {
            Ok(customer) => Ok(Some(customer)),
            Err(BillingError::Domain(DomainError::NotFound { .. })) => Ok(None),
            Err(error) => Err(error),
        }
    }
}
