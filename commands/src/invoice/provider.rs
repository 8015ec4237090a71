//! What the payment provider reports about an invoice (through the Stripe
//! translator): payments and refunds Recur did not hear the answer of or did
//! not make, and disputes. Decided like every other invoice command: pure, on
//! the invoice's state, each a no-op when done already.

use recur_ledger::Money;
use time::OffsetDateTime;

use super::{
    Dispute, DisputeOutcome, Invoice, InvoiceCommand, InvoiceEvent, InvoiceStatus,
    REFUND_REASON_UNSPECIFIED, REFUND_REASONS, check_positive_within,
};
use crate::error::DomainError;
use crate::invoice::ChargeOutcome;
use crate::postings::{Account, Journal};

/// The longest dispute reason code kept (Stripe's are short snake_case codes).
const DISPUTE_REASON_BYTES_MAX: usize = 64;

/// A fee as reported: whole minor units, not negative.
fn check_fee(fee: Money, field: &'static str) -> Result<(), DomainError> {
    fee.to_minor()?;
    if fee.is_negative() {
        return Err(DomainError::AmountNotPositive {
            field,
            amount: fee.amount().to_string(),
        });
    }
    Ok(())
}

/// What of `reported` (a fee in all) is not in `booked` yet, if anything. A
/// fee in another currency than what is booked is compared only when nothing
/// is booked (the provider charges a dispute's fees in one currency).
fn unbooked(booked: Money, reported: Money) -> Option<Money> {
    if !reported.is_positive() {
        return None;
    }
    if booked.currency() == reported.currency() {
        return reported
            .checked_sub(booked)
            .ok()
            .filter(|more| more.is_positive());
    }
    booked.is_zero().then_some(reported)
}

/// `booked` with `more` added (in `more`'s currency when nothing was booked).
fn booked(booked: Money, more: Money) -> Money {
    if more.is_zero() {
        return booked;
    }
    if booked.is_zero() {
        return more;
    }
    booked.checked_add(more).unwrap_or(booked)
}

impl Invoice {
    /// Decides a command the provider's report asks for; `None` for the other
    /// commands (decided by the invoice itself).
    pub(super) fn decide_provider(
        &self,
        command: &InvoiceCommand,
    ) -> Option<Result<Vec<InvoiceEvent>, DomainError>> {
        Some(match command {
            InvoiceCommand::RecordProviderPayment {
                attempt_no,
                charge_id,
                amount,
                now,
            } => self.provider_payment(*attempt_no, charge_id, *amount, *now),
            InvoiceCommand::RecordProviderRefund {
                refund_id,
                recur_key,
                match_by_amount,
                amount,
                reason,
                now,
            } => self.provider_refund(
                refund_id,
                recur_key.as_deref(),
                *match_by_amount,
                *amount,
                reason,
                *now,
            ),
            InvoiceCommand::OpenDispute {
                dispute_id,
                charge_id,
                amount,
                reason,
                now,
            } => self.open_dispute(dispute_id, charge_id, *amount, reason, *now),
            InvoiceCommand::WithdrawDisputedFunds {
                dispute_id,
                fee,
                now,
            } => self.withdraw(dispute_id, *fee, *now),
            InvoiceCommand::ReinstateDisputedFunds {
                dispute_id,
                fee_returned,
                now,
            } => self.reinstate(dispute_id, *fee_returned, *now),
            InvoiceCommand::RecordDisputeFees {
                dispute_id,
                fee,
                fee_returned,
                now,
            } => self.record_dispute_fees(dispute_id, *fee, *fee_returned, *now),
            InvoiceCommand::CloseDispute {
                dispute_id,
                outcome,
                now,
            } => self.close_dispute(dispute_id, *outcome, *now),
            _ => return None,
        })
    }

    /// The dispute `dispute_id`, if recorded.
    pub fn dispute(&self, dispute_id: &str) -> Option<&Dispute> {
        self.disputes.iter().find(|d| d.dispute_id == dispute_id)
    }

    fn provider_payment(
        &self,
        attempt_no: Option<u32>,
        charge_id: &str,
        amount: Money,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        match self.status {
            // Paid already (by this attempt's recorded answer, another attempt,
            // credit): a late or repeated report changes nothing.
            InvoiceStatus::Paid => return Ok(Vec::new()),
            InvoiceStatus::Open | InvoiceStatus::Uncollectible => {}
            InvoiceStatus::Draft | InvoiceStatus::Void => {
                return Err(self.refuse("record a provider's payment of"));
            }
        }
        let attempt = match attempt_no {
            Some(no) => self.attempts.iter().find(|a| a.attempt_no == no),
            None => self.attempts.last(),
        };
        let Some(attempt) = attempt else {
            return Err(DomainError::InvalidField {
                field: "attempt_no",
                reason: "no such payment attempt of the invoice".into(),
            });
        };
        if matches!(attempt.outcome, Some(ChargeOutcome::Succeeded { .. })) {
            return Ok(Vec::new());
        }
        if amount != attempt.amount {
            return Err(DomainError::InvalidField {
                field: "amount",
                reason: format!(
                    "the provider collected {} {}, the attempt asked {} {}",
                    amount.amount(),
                    amount.currency().code(),
                    attempt.amount.amount(),
                    attempt.amount.currency().code()
                ),
            });
        }
        let mut journal = Journal::new();
        journal.debit(Account::GatewayBalance, amount);
        let settled = if self.status == InvoiceStatus::Uncollectible {
            Account::BadDebt
        } else {
            Account::AccountsReceivable
        };
        journal.credit(settled, amount);
        Ok(vec![InvoiceEvent::PaymentSucceeded {
            attempt_no: attempt.attempt_no,
            charge_id: charge_id.to_owned(),
            amount,
            at: now,
            postings: journal.finish()?,
        }])
    }

    fn provider_refund(
        &self,
        refund_id: &str,
        recur_key: Option<&str>,
        match_by_amount: bool,
        amount: Money,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        if self
            .refunds
            .iter()
            .any(|r| r.refund_id.as_deref() == Some(refund_id))
        {
            return Ok(Vec::new());
        }
        let paid = self.amount_paid.unwrap_or(self.zero());
        if !paid.is_positive() {
            return Err(self.refuse("record a provider's refund of"));
        }
        // Recur's own refund whose answer was lost: the refund its key names
        // (the key Recur's gateway wrote on it); only when the provider's
        // refund carries no metadata at all, the pending refund of the amount.
        let pending = match recur_key {
            Some(key) => {
                let Some(own) = self.refunds.iter().find(|r| r.idempotency_key == key) else {
                    return Err(DomainError::InvalidField {
                        field: "recur_refund",
                        reason: "names no refund of the invoice".into(),
                    });
                };
                if own.refund_id.is_some() {
                    // Recorded already (under another id): nothing more.
                    return Ok(Vec::new());
                }
                if own.amount != amount {
                    return Err(DomainError::InvalidField {
                        field: "amount",
                        reason: format!(
                            "the provider refunded {} {}, refund {} asked {} {}",
                            amount.amount(),
                            amount.currency().code(),
                            own.refund_no,
                            own.amount.amount(),
                            own.amount.currency().code()
                        ),
                    });
                }
                Some(own)
            }
            None if match_by_amount => self.pending_refunds().find(|r| r.amount == amount),
            None => None,
        };
        if let Some(pending) = pending {
            let (tax, postings) = self.give_back(amount, Account::GatewayBalance)?;
            return Ok(vec![InvoiceEvent::InvoiceRefunded {
                refund_no: pending.refund_no,
                amount,
                tax,
                refund_id: refund_id.to_owned(),
                reason: pending.reason.clone(),
                at: now,
                postings,
            }]);
        }
        // Made behind Recur's back: at most what was collected and not given
        // back (pending requests are not counted: the provider has not made them).
        let left = paid.checked_sub(self.amount_refunded.unwrap_or(self.zero()))?;
        check_positive_within(amount, left, "refund")?;
        let reason = if REFUND_REASONS.contains(&reason) {
            reason
        } else {
            REFUND_REASON_UNSPECIFIED
        };
        let (tax, postings) = self.give_back(amount, Account::GatewayBalance)?;
        let refund_no = u32::try_from(self.refunds.len()).unwrap_or(u32::MAX - 1) + 1;
        Ok(vec![InvoiceEvent::InvoiceRefunded {
            refund_no,
            amount,
            tax,
            refund_id: refund_id.to_owned(),
            reason: reason.to_owned(),
            at: now,
            postings,
        }])
    }

    fn open_dispute(
        &self,
        dispute_id: &str,
        charge_id: &str,
        amount: Money,
        reason: &str,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        if self.dispute(dispute_id).is_some() {
            return Ok(Vec::new());
        }
        // Only money Recur recorded as collected can be disputed in its books.
        let paid = self.amount_paid.unwrap_or(self.zero());
        if !paid.is_positive() {
            return Err(self.refuse("dispute a charge of"));
        }
        check_positive_within(amount, paid, "dispute")?;
        let reason_ok = !reason.is_empty()
            && reason.len() <= DISPUTE_REASON_BYTES_MAX
            && reason
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        Ok(vec![InvoiceEvent::DisputeOpened {
            dispute_id: dispute_id.to_owned(),
            charge_id: charge_id.to_owned(),
            amount,
            // A code, never free text: anything else is kept as "general".
            reason: if reason_ok { reason } else { "general" }.to_owned(),
            at: now,
        }])
    }

    fn known_dispute(&self, dispute_id: &str) -> Result<&Dispute, DomainError> {
        self.dispute(dispute_id)
            .ok_or_else(|| DomainError::InvalidField {
                field: "dispute_id",
                reason: "no such dispute of the invoice".into(),
            })
    }

    fn withdraw(
        &self,
        dispute_id: &str,
        fee: Money,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        let dispute = self.known_dispute(dispute_id)?;
        if dispute.withdrawn || dispute.outcome.is_some() {
            return Ok(Vec::new());
        }
        check_fee(fee, "dispute fee")?;
        // Only what no earlier stage booked (see `record_dispute_fees`).
        let fee = unbooked(dispute.fee, fee).unwrap_or_else(|| Money::zero(fee.currency()));
        let mut journal = Journal::new();
        journal.debit(Account::DisputedFunds, dispute.amount);
        journal.credit(Account::GatewayBalance, dispute.amount);
        journal.debit(Account::DisputeFees, fee);
        journal.credit(Account::GatewayBalance, fee);
        Ok(vec![InvoiceEvent::DisputeFundsWithdrawn {
            dispute_id: dispute_id.to_owned(),
            amount: dispute.amount,
            fee,
            at: now,
            postings: journal.finish()?,
        }])
    }

    fn reinstatement(
        dispute: &Dispute,
        fee_returned: Money,
        now: OffsetDateTime,
    ) -> Result<InvoiceEvent, DomainError> {
        check_fee(fee_returned, "dispute fee returned")?;
        let fee_returned = unbooked(dispute.fee_returned, fee_returned)
            .unwrap_or_else(|| Money::zero(fee_returned.currency()));
        let mut journal = Journal::new();
        journal.debit(Account::GatewayBalance, dispute.withheld);
        journal.credit(Account::DisputedFunds, dispute.withheld);
        journal.debit(Account::GatewayBalance, fee_returned);
        journal.credit(Account::DisputeFees, fee_returned);
        Ok(InvoiceEvent::DisputeFundsReinstated {
            dispute_id: dispute.dispute_id.clone(),
            amount: dispute.withheld,
            fee_returned,
            at: now,
            postings: journal.finish()?,
        })
    }

    fn reinstate(
        &self,
        dispute_id: &str,
        fee_returned: Money,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        let dispute = self.known_dispute(dispute_id)?;
        // Nothing withheld (never withdrawn, given back, or lost): nothing to give back.
        if !dispute.withdrawn || dispute.reinstated || dispute.outcome == Some(DisputeOutcome::Lost)
        {
            return Ok(Vec::new());
        }
        Ok(vec![Self::reinstatement(dispute, fee_returned, now)?])
    }

    /// Books the fee, and the fee given back, a stage reports beyond what
    /// the dispute booked: Stripe's stages arrive in any order and the
    /// earlier ones may not list the balance transactions yet (a chargeback's
    /// `created` withdraws the funds with no fee; a `closed` won reinstates
    /// them with none returned). Each amount is booked once, whichever stage
    /// reports it, and a stage reporting less or the same adds nothing.
    fn record_dispute_fees(
        &self,
        dispute_id: &str,
        fee: Money,
        fee_returned: Money,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        let dispute = self.known_dispute(dispute_id)?;
        check_fee(fee, "dispute fee")?;
        check_fee(fee_returned, "dispute fee returned")?;
        let mut events = Vec::new();
        if let Some(more) = unbooked(dispute.fee, fee) {
            let mut journal = Journal::new();
            journal.debit(Account::DisputeFees, more);
            journal.credit(Account::GatewayBalance, more);
            events.push(InvoiceEvent::DisputeFeeRecorded {
                dispute_id: dispute_id.to_owned(),
                fee: more,
                at: now,
                postings: journal.finish()?,
            });
        }
        if let Some(more) = unbooked(dispute.fee_returned, fee_returned) {
            let mut journal = Journal::new();
            journal.debit(Account::GatewayBalance, more);
            journal.credit(Account::DisputeFees, more);
            events.push(InvoiceEvent::DisputeFeeReturned {
                dispute_id: dispute_id.to_owned(),
                fee_returned: more,
                at: now,
                postings: journal.finish()?,
            });
        }
        Ok(events)
    }

    fn close_dispute(
        &self,
        dispute_id: &str,
        outcome: DisputeOutcome,
        now: OffsetDateTime,
    ) -> Result<Vec<InvoiceEvent>, DomainError> {
        let dispute = self.known_dispute(dispute_id)?;
        if dispute.outcome.is_some() {
            return Ok(Vec::new());
        }
        let zero = Money::zero(dispute.amount.currency());
        let mut events = Vec::new();
        let mut journal = Journal::new();
        let mut amount_lost = zero;
        match outcome {
            DisputeOutcome::Won | DisputeOutcome::InquiryClosed => {
                // Won before the reinstatement was reported: the funds come back now
                // (a later report of it finds nothing withheld).
                if dispute.withheld.is_positive() {
                    events.push(Self::reinstatement(dispute, zero, now)?);
                }
            }
            DisputeOutcome::Lost => {
                amount_lost = dispute.amount;
                journal.debit(Account::Disputes, dispute.amount);
                if dispute.withdrawn && !dispute.reinstated {
                    journal.credit(Account::DisputedFunds, dispute.amount);
                } else {
                    // Never recorded as withdrawn (or given back first): the
                    // money leaves the gateway balance with the loss.
                    journal.credit(Account::GatewayBalance, dispute.amount);
                }
            }
        }
        events.push(InvoiceEvent::DisputeClosed {
            dispute_id: dispute_id.to_owned(),
            outcome,
            amount_lost,
            at: now,
            postings: journal.finish()?,
        });
        Ok(events)
    }

    /// Folds the dispute events into the invoice's disputes.
    pub(super) fn evolve_dispute(&mut self, event: &InvoiceEvent) {
        match event {
            InvoiceEvent::DisputeOpened {
                dispute_id,
                charge_id,
                amount,
                reason,
                at,
            } => self.disputes.push(Dispute {
                dispute_id: dispute_id.clone(),
                charge_id: charge_id.clone(),
                amount: *amount,
                reason: reason.clone(),
                withheld: Money::zero(amount.currency()),
                withdrawn: false,
                reinstated: false,
                fee: Money::zero(amount.currency()),
                fee_returned: Money::zero(amount.currency()),
                outcome: None,
                opened_at: *at,
            }),
            InvoiceEvent::DisputeFundsWithdrawn {
                dispute_id,
                amount,
                fee,
                ..
            } => {
                if let Some(dispute) = self.dispute_mut(dispute_id) {
                    dispute.withdrawn = true;
                    dispute.withheld = *amount;
                    dispute.fee = booked(dispute.fee, *fee);
                }
            }
            InvoiceEvent::DisputeFundsReinstated {
                dispute_id,
                fee_returned,
                ..
            } => {
                if let Some(dispute) = self.dispute_mut(dispute_id) {
                    dispute.reinstated = true;
                    dispute.withheld = Money::zero(dispute.amount.currency());
                    dispute.fee_returned = booked(dispute.fee_returned, *fee_returned);
                }
            }
            InvoiceEvent::DisputeFeeRecorded {
                dispute_id, fee, ..
            } => {
                if let Some(dispute) = self.dispute_mut(dispute_id) {
                    dispute.fee = booked(dispute.fee, *fee);
                }
            }
            InvoiceEvent::DisputeFeeReturned {
                dispute_id,
                fee_returned,
                ..
            } => {
                if let Some(dispute) = self.dispute_mut(dispute_id) {
                    dispute.fee_returned = booked(dispute.fee_returned, *fee_returned);
                }
            }
            InvoiceEvent::DisputeClosed {
                dispute_id,
                outcome,
                amount_lost,
                ..
            } => {
                if let Some(dispute) = self.dispute_mut(dispute_id) {
                    dispute.outcome = Some(*outcome);
                    // Lost: the amount is gone rather than held, and still
                    // not refundable (see `Invoice::refundable`).
                    dispute.withheld = *amount_lost;
                }
            }
            _ => {}
        }
    }

    fn dispute_mut(&mut self, dispute_id: &str) -> Option<&mut Dispute> {
        self.disputes
            .iter_mut()
            .find(|d| d.dispute_id == dispute_id)
    }
}
