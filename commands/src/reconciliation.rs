//! Reconciliation: the money the ledger says moved at the payment provider against
//! the provider's own record of it (Stripe's balance transactions), each
//! difference kept as a fact.
//!
//! Both sides are reduced to [`Movement`]s keyed by what moved (a charge `ch_…`, a
//! refund `re_…`, a dispute `du_…` and its fee), signed as the provider's balance
//! sees them (a charge adds, a refund or a disputed withdrawal takes away), summed
//! per key, then compared key by key ([`compare`], pure). The rules are stated in
//! docs/stripe.md ("Reconciliation").

use std::collections::BTreeMap;

use recur_ledger::{Metadata, Position, Source, StreamId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::aggregate::DomainEvent;
use crate::billing::Billing;
use crate::error::{BillingError, Corruption, DomainError};
use crate::invoice::InvoiceEvent;
use crate::payment::GatewayFuture;
use crate::tagged::{DecodeEvent, domain_events};

/// The stream every reconciliation run is recorded in, in the order they ran.
pub const RECONCILIATION_STREAM: &str = "reconciliations";

/// How far beyond the window the provider's record is read: a movement the ledger
/// dates just inside the window may be dated just outside it by the provider.
pub const WINDOW_SLACK_S: i64 = 24 * 60 * 60;

/// Ledger events read per page while collecting the ledger's movements.
const SCAN_PAGE_EVENTS: usize = 1_000;

/// What moved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MovementKind {
    /// A charge (`ch_…`): money in.
    Charge,
    /// A refund (`re_…`): money out.
    Refund,
    /// Disputed funds (`du_…`): withdrawn, and given back when the dispute is won.
    Dispute,
    /// The provider's fee for a dispute (`du_…`).
    DisputeFee,
}

impl MovementKind {
    /// Its name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            MovementKind::Charge => "charge",
            MovementKind::Refund => "refund",
            MovementKind::Dispute => "dispute",
            MovementKind::DisputeFee => "dispute_fee",
        }
    }
}

/// One side's record of one movement (or the sum of several with the same key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// Signed as the provider's balance sees it, in the currency's minor units.
    pub amount_minor: i64,
    /// ISO 4217, lowercase as the provider writes it.
    pub currency: String,
    /// `succeeded`, or what the provider says of a charge it did not settle (`failed`, …).
    pub status: String,
}

/// A movement as one side records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    /// What moved.
    pub kind: MovementKind,
    /// The provider's id of the object (`ch_…`, `re_…`, `du_…`).
    pub object_id: String,
    /// Amount, currency and status.
    pub side: Side,
    /// When this side dates it.
    pub at: OffsetDateTime,
}

/// A balance transaction as the provider lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderTransaction {
    /// `txn_…`.
    pub id: String,
    /// The provider's type: `charge`, `payment`, `refund`, `payment_refund`,
    /// `adjustment` (disputes), `payout`, `stripe_fee`, …
    pub kind: String,
    /// The object that caused it (`ch_…`, `re_…`, `du_…`, `po_…`).
    pub source: String,
    /// Gross amount in minor units, signed.
    pub amount_minor: i64,
    /// The provider's fee in minor units (positive: taken from the balance).
    pub fee_minor: i64,
    /// Lowercase ISO 4217.
    pub currency: String,
    /// When the provider made it.
    pub created: OffsetDateTime,
}

/// The provider's side of a reconciliation.
pub trait ProviderStatement: Send + Sync {
    /// The gateway name recorded with the ledger's attempts (`stripe`).
    fn name(&self) -> &'static str;

    /// The balance transactions created in `[from, to)`.
    fn balance_transactions<'a>(
        &'a self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> GatewayFuture<'a, Vec<ProviderTransaction>>;

    /// A charge's status at the provider (`succeeded`, `failed`, `pending`), or
    /// None when the provider has no such charge.
    fn charge_status<'a>(&'a self, charge_id: &'a str) -> GatewayFuture<'a, Option<String>>;
}

/// How the two sides differ on one movement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// The provider has it; the ledger does not.
    MissingInLedger,
    /// The ledger has it; the provider does not.
    MissingAtProvider,
    /// Both have it, in other amounts.
    AmountDiffers,
    /// Both have it, in other currencies.
    CurrencyDiffers,
    /// Both have it, in another state (the ledger says paid, the provider failed).
    StatusDiffers,
}

impl MismatchKind {
    /// Its name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::MissingInLedger => "missing_in_ledger",
            MismatchKind::MissingAtProvider => "missing_at_provider",
            MismatchKind::AmountDiffers => "amount_differs",
            MismatchKind::CurrencyDiffers => "currency_differs",
            MismatchKind::StatusDiffers => "status_differs",
        }
    }
}

/// One difference.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mismatch {
    /// How they differ.
    pub mismatch: MismatchKind,
    /// What moved.
    pub kind: MovementKind,
    /// The provider's id of the object.
    pub object_id: String,
    /// What the ledger says, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger: Option<Side>,
    /// What the provider says, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Side>,
}

domain_events! {
    /// A reconciliation run's findings.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum ReconciliationEvent {
        /// The ledger and the provider differ on one movement.
        ReconciliationMismatchFound {
            /// The run (UUIDv7).
            run_id: Uuid,
            /// The provider (`stripe`).
            provider: String,
            /// The difference.
            found: Mismatch,
            /// When the run found it.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
        /// A run ended; its mismatches precede it in the stream.
        ReconciliationCompleted {
            /// The run (UUIDv7).
            run_id: Uuid,
            /// The provider (`stripe`).
            provider: String,
            /// Start of the window, inclusive.
            #[serde(with = "time::serde::rfc3339")]
            from: OffsetDateTime,
            /// End of the window, exclusive.
            #[serde(with = "time::serde::rfc3339")]
            to: OffsetDateTime,
            /// Movements compared (distinct keys on either side).
            compared: u64,
            /// Of them, the ones both sides agree on.
            matched: u64,
            /// Of them, the ones that differ.
            mismatches: u64,
            /// The provider's processing fees in the window, per currency, in minor
            /// units: reported, not compared (the ledger does not book them).
            processing_fees_minor: BTreeMap<String, i64>,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
    }
}

impl DomainEvent for ReconciliationEvent {
    fn event_type(&self) -> &'static str {
        match self {
            ReconciliationEvent::ReconciliationMismatchFound { .. } => {
                "ReconciliationMismatchFound"
            }
            ReconciliationEvent::ReconciliationCompleted { .. } => "ReconciliationCompleted",
        }
    }
}

/// The outcome of one run, as recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReconciliationReport {
    /// The run (UUIDv7).
    pub run_id: Uuid,
    /// The provider (`stripe`).
    pub provider: String,
    /// Start of the window, inclusive.
    #[serde(with = "time::serde::rfc3339")]
    pub from: OffsetDateTime,
    /// End of the window, exclusive.
    #[serde(with = "time::serde::rfc3339")]
    pub to: OffsetDateTime,
    /// Movements compared.
    pub compared: u64,
    /// Agreed.
    pub matched: u64,
    /// The differences, by movement kind and id.
    pub mismatches: Vec<Mismatch>,
    /// Processing fees per currency (minor units), reported only.
    pub processing_fees_minor: BTreeMap<String, i64>,
    /// When it ran.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Where its last event is in the ledger.
    #[serde(skip)]
    pub position: Option<Position>,
}

impl ReconciliationReport {
    /// True when the two sides agree on everything compared.
    pub fn agrees(&self) -> bool {
        self.mismatches.is_empty()
    }

    /// The reports recorded in `events` (the reconciliation stream, in order).
    pub fn from_events(events: &[ReconciliationEvent]) -> Vec<ReconciliationReport> {
        let mut found: BTreeMap<Uuid, Vec<Mismatch>> = BTreeMap::new();
        let mut reports = Vec::new();
        for event in events {
            match event {
                ReconciliationEvent::ReconciliationMismatchFound {
                    run_id, found: m, ..
                } => found.entry(*run_id).or_default().push(m.clone()),
                ReconciliationEvent::ReconciliationCompleted {
                    run_id,
                    provider,
                    from,
                    to,
                    compared,
                    matched,
                    processing_fees_minor,
                    at,
                    ..
                } => reports.push(ReconciliationReport {
                    run_id: *run_id,
                    provider: provider.clone(),
                    from: *from,
                    to: *to,
                    compared: *compared,
                    matched: *matched,
                    mismatches: found.remove(run_id).unwrap_or_default(),
                    processing_fees_minor: processing_fees_minor.clone(),
                    at: *at,
                    position: None,
                }),
            }
        }
        reports
    }
}

/// The provider's transactions as movements (charges, refunds, disputed funds and
/// dispute fees), and its processing fees per currency. Payouts and the
/// provider's other transactions are not the ledger's business and are left out.
pub fn provider_movements(
    transactions: &[ProviderTransaction],
) -> (Vec<Movement>, BTreeMap<String, i64>) {
    let mut movements = Vec::new();
    let mut processing_fees: BTreeMap<String, i64> = BTreeMap::new();
    for txn in transactions {
        let settled = |kind, amount_minor| Movement {
            kind,
            object_id: txn.source.clone(),
            side: Side {
                amount_minor,
                currency: txn.currency.to_ascii_lowercase(),
                status: "succeeded".to_owned(),
            },
            at: txn.created,
        };
        let dispute = txn.source.starts_with("du_") || txn.source.starts_with("dp_");
        match txn.kind.as_str() {
            "charge" | "payment" => {
                movements.push(settled(MovementKind::Charge, txn.amount_minor));
                *processing_fees
                    .entry(txn.currency.to_ascii_lowercase())
                    .or_default() += txn.fee_minor;
            }
            "refund" | "payment_refund" => {
                movements.push(settled(MovementKind::Refund, txn.amount_minor));
            }
            "adjustment" | "dispute" if dispute => {
                movements.push(settled(MovementKind::Dispute, txn.amount_minor));
                if txn.fee_minor != 0 {
                    movements.push(settled(MovementKind::DisputeFee, -txn.fee_minor));
                }
            }
            _ => {}
        }
    }
    (movements, processing_fees)
}

/// Sums movements per key (kind and object id), keeping the earliest date; mixed
/// currencies under one key keep the first and are reported as a currency mismatch
/// by [`compare`] only if the other side differs.
fn by_key(movements: &[Movement]) -> BTreeMap<(MovementKind, String), Movement> {
    let mut keyed: BTreeMap<(MovementKind, String), Movement> = BTreeMap::new();
    for movement in movements {
        keyed
            .entry((movement.kind, movement.object_id.clone()))
            .and_modify(|sum| {
                sum.side.amount_minor = sum
                    .side
                    .amount_minor
                    .saturating_add(movement.side.amount_minor);
                sum.at = sum.at.min(movement.at);
            })
            .or_insert_with(|| movement.clone());
    }
    keyed
}

/// Compares the two sides over `[from, to)`: a key is in scope when either side
/// dates it inside the window (the ledger is read whole, the provider with
/// [`WINDOW_SLACK_S`] around the window, so a movement dated across the edge is
/// still found on both sides). Returns the number of keys compared and the
/// differences, ordered by kind and id.
pub fn compare(
    ledger: &[Movement],
    provider: &[Movement],
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> (u64, Vec<Mismatch>) {
    let ledger = by_key(ledger);
    let provider = by_key(provider);
    let in_window = |m: &Movement| m.at >= from && m.at < to;
    let mut keys: Vec<&(MovementKind, String)> = ledger
        .iter()
        .filter(|(_, m)| in_window(m))
        .chain(provider.iter().filter(|(_, m)| in_window(m)))
        .map(|(key, _)| key)
        .collect();
    keys.sort();
    keys.dedup();
    let mut mismatches = Vec::new();
    for key in &keys {
        let ours = ledger.get(*key).map(|m| m.side.clone());
        let theirs = provider.get(*key).map(|m| m.side.clone());
        let mismatch = match (&ours, &theirs) {
            (Some(_), None) => Some(MismatchKind::MissingAtProvider),
            (None, Some(_)) => Some(MismatchKind::MissingInLedger),
            (Some(a), Some(b)) if a.currency != b.currency => Some(MismatchKind::CurrencyDiffers),
            (Some(a), Some(b)) if a.amount_minor != b.amount_minor => {
                Some(MismatchKind::AmountDiffers)
            }
            (Some(a), Some(b)) if a.status != b.status => Some(MismatchKind::StatusDiffers),
            _ => None,
        };
        if let Some(mismatch) = mismatch {
            mismatches.push(Mismatch {
                mismatch,
                kind: key.0,
                object_id: key.1.clone(),
                ledger: ours,
                provider: theirs,
            });
        }
    }
    (keys.len() as u64, mismatches)
}

/// The ledger's movements at `provider` (the gateway name its attempts record),
/// read from every invoice stream: successful charges, and the refunds of
/// invoices paid through that gateway.
fn ledger_movements_of(
    invoice_events: &[(StreamId, InvoiceEvent)],
    provider: &str,
) -> Result<Vec<Movement>, BillingError> {
    // Per invoice stream: attempt number → gateway, and the gateway that was paid.
    let mut gateways: BTreeMap<(&str, u32), &str> = BTreeMap::new();
    let mut paid_through: BTreeMap<&str, &str> = BTreeMap::new();
    let mut withdrawn: std::collections::BTreeSet<&str> = std::collections::BTreeSet::new();
    let mut movements = Vec::new();
    let money = |amount: &recur_ledger::Money| -> Result<(i64, String), BillingError> {
        let minor = amount.to_minor().map_err(DomainError::from)?;
        Ok((minor, amount.currency().code().to_ascii_lowercase()))
    };
    for (stream, event) in invoice_events {
        let stream = stream.as_str();
        match event {
            InvoiceEvent::PaymentAttemptStarted {
                attempt_no,
                gateway,
                ..
            } => {
                gateways.insert((stream, *attempt_no), gateway.as_str());
            }
            InvoiceEvent::PaymentSucceeded {
                attempt_no,
                charge_id,
                amount,
                at,
                ..
            } => {
                let gateway = gateways.get(&(stream, *attempt_no)).copied();
                if let Some(gateway) = gateway {
                    paid_through.insert(stream, gateway);
                }
                if gateway == Some(provider) {
                    let (amount_minor, currency) = money(amount)?;
                    movements.push(Movement {
                        kind: MovementKind::Charge,
                        object_id: charge_id.clone(),
                        side: Side {
                            amount_minor,
                            currency,
                            status: "succeeded".to_owned(),
                        },
                        at: *at,
                    });
                }
            }
            InvoiceEvent::InvoiceRefunded {
                amount,
                refund_id,
                at,
                ..
            } if paid_through.get(stream) == Some(&provider) => {
                let (amount_minor, currency) = money(amount)?;
                movements.push(Movement {
                    kind: MovementKind::Refund,
                    object_id: refund_id.clone(),
                    side: Side {
                        amount_minor: -amount_minor,
                        currency,
                        status: "succeeded".to_owned(),
                    },
                    at: *at,
                });
            }
            InvoiceEvent::DisputeFundsWithdrawn {
                dispute_id,
                amount,
                fee,
                at,
                ..
            } if paid_through.get(stream) == Some(&provider) => {
                withdrawn.insert(dispute_id.as_str());
                let (amount_minor, currency) = money(amount)?;
                movements.push(settled(
                    MovementKind::Dispute,
                    dispute_id,
                    -amount_minor,
                    currency,
                    *at,
                ));
                let (fee_minor, fee_currency) = money(fee)?;
                movements.extend(dispute_fee(dispute_id, -fee_minor, fee_currency, *at));
            }
            InvoiceEvent::DisputeFundsReinstated {
                dispute_id,
                amount,
                fee_returned,
                at,
                ..
            } if paid_through.get(stream) == Some(&provider) => {
                let (amount_minor, currency) = money(amount)?;
                movements.push(settled(
                    MovementKind::Dispute,
                    dispute_id,
                    amount_minor,
                    currency,
                    *at,
                ));
                let (fee_minor, fee_currency) = money(fee_returned)?;
                movements.extend(dispute_fee(dispute_id, fee_minor, fee_currency, *at));
            }
            // A fee reported by a later stage than the withdrawal (or
            // reinstatement) that booked none.
            InvoiceEvent::DisputeFeeRecorded {
                dispute_id,
                fee,
                at,
                ..
            } if paid_through.get(stream) == Some(&provider) => {
                let (fee_minor, fee_currency) = money(fee)?;
                movements.push(settled(
                    MovementKind::DisputeFee,
                    dispute_id,
                    -fee_minor,
                    fee_currency,
                    *at,
                ));
            }
            InvoiceEvent::DisputeFeeReturned {
                dispute_id,
                fee_returned,
                at,
                ..
            } if paid_through.get(stream) == Some(&provider) => {
                let (fee_minor, fee_currency) = money(fee_returned)?;
                movements.push(settled(
                    MovementKind::DisputeFee,
                    dispute_id,
                    fee_minor,
                    fee_currency,
                    *at,
                ));
            }
            // A dispute lost whose withdrawal was never reported: the money left
            // the balance when it closed.
            InvoiceEvent::DisputeClosed {
                dispute_id,
                amount_lost,
                at,
                ..
            } if paid_through.get(stream) == Some(&provider)
                && !withdrawn.contains(dispute_id.as_str()) =>
            {
                let (amount_minor, currency) = money(amount_lost)?;
                if amount_minor != 0 {
                    movements.push(settled(
                        MovementKind::Dispute,
                        dispute_id,
                        -amount_minor,
                        currency,
                        *at,
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(movements)
}

/// A dispute's fee (taken: negative; returned: positive), unless there is none.
fn dispute_fee(
    dispute_id: &str,
    fee_minor: i64,
    currency: String,
    at: OffsetDateTime,
) -> Option<Movement> {
    (fee_minor != 0).then(|| {
        settled(
            MovementKind::DisputeFee,
            dispute_id,
            fee_minor,
            currency,
            at,
        )
    })
}

/// A movement the ledger records as settled.
fn settled(
    kind: MovementKind,
    object_id: &str,
    amount_minor: i64,
    currency: String,
    at: OffsetDateTime,
) -> Movement {
    Movement {
        kind,
        object_id: object_id.to_owned(),
        side: Side {
            amount_minor,
            currency,
            status: "succeeded".to_owned(),
        },
        at,
    }
}

impl Billing {
    /// The ledger's movements at `provider`, from the whole ledger.
    ///
    /// # Errors
    /// Ledger errors; an invoice event that does not decode.
    pub async fn ledger_movements(&self, provider: &str) -> Result<Vec<Movement>, BillingError> {
        let ledger = self.ledger();
        let head = ledger.last_position().await?;
        let mut after = Position::START;
        let mut invoice_events = Vec::new();
        while after < head {
            let page = ledger.read_all(after, SCAN_PAGE_EVENTS).await?;
            let Some(last) = page.last() else { break };
            after = last.position;
            for event in page {
                if !event.stream_id.as_str().starts_with("invoice-") {
                    continue;
                }
                let decoded = InvoiceEvent::decode_payload(&event.payload)
                    .map_err(|source| undecodable(&event, source))?;
                invoice_events.push((event.stream_id, decoded));
            }
        }
        ledger_movements_of(&invoice_events, provider)
    }

    /// Reconciles the ledger with `provider` over `[from, to)` and records the
    /// outcome (each mismatch, then the run) in [`RECONCILIATION_STREAM`].
    ///
    /// # Errors
    /// [`BillingError::GatewayUnavailable`] when the provider cannot be read;
    /// ledger errors. Nothing is recorded unless the whole run completed.
    pub async fn reconcile(
        &self,
        provider: &dyn ProviderStatement,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<ReconciliationReport, BillingError> {
        let slack = time::Duration::seconds(WINDOW_SLACK_S);
        let transactions = provider
            .balance_transactions(from - slack, to + slack)
            .await
            .map_err(|e| BillingError::GatewayUnavailable(e.0))?;
        let (theirs, processing_fees_minor) = provider_movements(&transactions);
        let ours = self.ledger_movements(provider.name()).await?;
        let (compared, mut mismatches) = compare(&ours, &theirs, from, to);
        // A charge the provider has no money for may still exist there, unsettled
        // or failed: then the two differ on its state, not on its existence.
        for found in &mut mismatches {
            if found.mismatch != MismatchKind::MissingAtProvider
                || found.kind != MovementKind::Charge
            {
                continue;
            }
            let status = provider
                .charge_status(&found.object_id)
                .await
                .map_err(|e| BillingError::GatewayUnavailable(e.0))?;
            if let (Some(status), Some(ours)) = (status, &found.ledger) {
                found.mismatch = MismatchKind::StatusDiffers;
                found.provider = Some(Side {
                    amount_minor: 0,
                    currency: ours.currency.clone(),
                    status,
                });
            }
        }
        let run_id = Uuid::now_v7();
        let at = self.now();
        let mut events: Vec<ReconciliationEvent> = mismatches
            .iter()
            .map(|found| ReconciliationEvent::ReconciliationMismatchFound {
                run_id,
                provider: provider.name().to_owned(),
                found: found.clone(),
                at,
            })
            .collect();
        events.push(ReconciliationEvent::ReconciliationCompleted {
            run_id,
            provider: provider.name().to_owned(),
            from,
            to,
            compared,
            matched: compared - mismatches.len() as u64,
            mismatches: mismatches.len() as u64,
            processing_fees_minor: processing_fees_minor.clone(),
            at,
        });
        let metadata = Metadata {
            source: Source::Cli,
            actor: Some("reconciliation".to_owned()),
            ..Metadata::default()
        };
        let position = self
            .repo
            .append_any(&reconciliation_stream()?, &metadata, &events)
            .await?;
        Ok(ReconciliationReport {
            run_id,
            provider: provider.name().to_owned(),
            from,
            to,
            compared,
            matched: compared - mismatches.len() as u64,
            mismatches,
            processing_fees_minor,
            at,
            position: Some(position),
        })
    }

    /// Every recorded reconciliation run, oldest first.
    ///
    /// # Errors
    /// Ledger errors; a recorded event that does not decode.
    pub async fn reconciliations(&self) -> Result<Vec<ReconciliationReport>, BillingError> {
        let stream = reconciliation_stream()?;
        let recorded = self.ledger().read_stream(&stream, 0, usize::MAX).await?;
        let mut events = Vec::with_capacity(recorded.len());
        for event in recorded {
            events.push(
                ReconciliationEvent::decode_payload(&event.payload)
                    .map_err(|source| undecodable(&event, source))?,
            );
        }
        Ok(ReconciliationReport::from_events(&events))
    }
}

fn undecodable(
    event: &recur_ledger::RecordedEvent,
    source: crate::tagged::DecodeError,
) -> BillingError {
    BillingError::Corrupt {
        stream: event.stream_id.to_string(),
        position: event.position.0,
        cause: Corruption::Undecodable(source),
    }
}

/// [`RECONCILIATION_STREAM`] as a stream id.
///
/// # Errors
/// Never in practice: the name is short and plain.
pub fn reconciliation_stream() -> Result<StreamId, recur_ledger::LedgerError> {
    StreamId::parse(RECONCILIATION_STREAM)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    fn txn(kind: &str, source: &str, amount_minor: i64, fee_minor: i64) -> ProviderTransaction {
        ProviderTransaction {
            id: format!("txn_{source}"),
            kind: kind.to_owned(),
            source: source.to_owned(),
            amount_minor,
            fee_minor,
            currency: "usd".to_owned(),
            created: datetime!(2026-03-10 12:00 UTC),
        }
    }

    fn ours(kind: MovementKind, id: &str, amount_minor: i64) -> Movement {
        Movement {
            kind,
            object_id: id.to_owned(),
            side: Side {
                amount_minor,
                currency: "usd".to_owned(),
                status: "succeeded".to_owned(),
            },
            at: datetime!(2026-03-10 11:59 UTC),
        }
    }

    const FROM: OffsetDateTime = datetime!(2026-03-01 0:00 UTC);
    const TO: OffsetDateTime = datetime!(2026-04-01 0:00 UTC);

    #[test]
    fn agreeing_sides_have_no_mismatch_and_fees_are_reported_apart() {
        let (theirs, fees) = provider_movements(&[
            txn("charge", "ch_1", 500_000, 14_530),
            txn("refund", "re_1", -9_700, 0),
            txn("payout", "po_1", -400_000, 0),
        ]);
        let (compared, found) = compare(
            &[
                ours(MovementKind::Charge, "ch_1", 500_000),
                ours(MovementKind::Refund, "re_1", -9_700),
            ],
            &theirs,
            FROM,
            TO,
        );
        assert_eq!((compared, found), (2, vec![]));
        assert_eq!(fees.get("usd"), Some(&14_530));
    }

    #[test]
    fn each_kind_of_difference_is_named_once() {
        let (theirs, _) = provider_movements(&[
            txn("charge", "ch_same", 9_700, 0),
            txn("charge", "ch_changed", 150_100, 0),
            txn("charge", "ch_behind_our_back", 9_700, 0),
            txn("refund", "re_behind_our_back", -5_000, 0),
            ProviderTransaction {
                currency: "eur".into(),
                ..txn("charge", "ch_euro", 9_700, 0)
            },
        ]);
        let (compared, found) = compare(
            &[
                ours(MovementKind::Charge, "ch_same", 9_700),
                ours(MovementKind::Charge, "ch_changed", 150_000),
                ours(MovementKind::Charge, "ch_only_ours", 9_700),
                ours(MovementKind::Charge, "ch_euro", 9_700),
            ],
            &theirs,
            FROM,
            TO,
        );
        assert_eq!(compared, 6);
        let named: Vec<(MismatchKind, &str)> = found
            .iter()
            .map(|m| (m.mismatch, m.object_id.as_str()))
            .collect();
        assert_eq!(
            named,
            vec![
                (MismatchKind::MissingInLedger, "ch_behind_our_back"),
                (MismatchKind::AmountDiffers, "ch_changed"),
                (MismatchKind::CurrencyDiffers, "ch_euro"),
                (MismatchKind::MissingAtProvider, "ch_only_ours"),
                (MismatchKind::MissingInLedger, "re_behind_our_back"),
            ]
        );
    }

    #[test]
    fn disputes_sum_their_transactions_and_keep_the_fee_apart() {
        // Withdrawn with a 15.00 fee, then won: the funds come back, the fee does not.
        let (theirs, _) = provider_movements(&[
            txn("adjustment", "du_1", -500_000, 1_500),
            txn("adjustment", "du_1", 500_000, 0),
        ]);
        let (_, found) = compare(
            &[
                ours(MovementKind::Dispute, "du_1", -500_000),
                ours(MovementKind::Dispute, "du_1", 500_000),
                ours(MovementKind::DisputeFee, "du_1", -1_500),
            ],
            &theirs,
            FROM,
            TO,
        );
        assert_eq!(found, vec![]);
        // The ledger saying "lost" while the provider gave the funds back differs.
        let (_, found) = compare(
            &[
                ours(MovementKind::Dispute, "du_1", -500_000),
                ours(MovementKind::DisputeFee, "du_1", -1_500),
            ],
            &theirs,
            FROM,
            TO,
        );
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].mismatch, MismatchKind::AmountDiffers);
    }

    #[test]
    fn movements_outside_the_window_on_both_sides_are_not_compared() {
        let mut early = ours(MovementKind::Charge, "ch_feb", 9_700);
        early.at = datetime!(2026-02-20 0:00 UTC);
        let (compared, found) = compare(&[early], &[], FROM, TO);
        assert_eq!((compared, found), (0, vec![]));
        // Dated inside by one side only: still compared, and found on the other.
        let mut edge = txn("charge", "ch_edge", 9_700, 0);
        edge.created = datetime!(2026-04-01 0:00:30 UTC);
        let (theirs, _) = provider_movements(&[edge]);
        let mut ledger_edge = ours(MovementKind::Charge, "ch_edge", 9_700);
        ledger_edge.at = datetime!(2026-03-31 23:59:59 UTC);
        let (compared, found) = compare(&[ledger_edge], &theirs, FROM, TO);
        assert_eq!((compared, found), (1, vec![]));
    }

    #[test]
    fn the_ledger_counts_only_its_provider_and_nets_disputes_like_the_balance() {
        use crate::invoice::DisputeOutcome;
        let usd = |a: &str| recur_ledger::Money::parse(a, "USD").unwrap();
        let at = datetime!(2026-03-10 12:00 UTC);
        let stripe = StreamId::parse("invoice-a").unwrap();
        let simulated = StreamId::parse("invoice-b").unwrap();
        let started = |gateway: &str| InvoiceEvent::PaymentAttemptStarted {
            attempt_no: 1,
            idempotency_key: "k".into(),
            gateway: gateway.into(),
            payment_method: Some("pm_1".into()),
            amount: usd("97.00"),
            due_at: None,
            on_demand: false,
            at,
        };
        let paid = |charge: &str| InvoiceEvent::PaymentSucceeded {
            attempt_no: 1,
            charge_id: charge.into(),
            amount: usd("97.00"),
            at,
            postings: vec![],
        };
        let events = vec![
            (stripe.clone(), started("stripe")),
            (simulated.clone(), started("simulated")),
            (stripe.clone(), paid("ch_a")),
            (simulated.clone(), paid("ch_sim_000001")),
            (
                stripe.clone(),
                InvoiceEvent::DisputeFundsWithdrawn {
                    dispute_id: "du_1".into(),
                    amount: usd("97.00"),
                    fee: usd("15.00"),
                    at,
                    postings: vec![],
                },
            ),
            (
                stripe.clone(),
                InvoiceEvent::DisputeClosed {
                    dispute_id: "du_1".into(),
                    outcome: DisputeOutcome::Lost,
                    amount_lost: usd("97.00"),
                    at,
                    postings: vec![],
                },
            ),
            // Lost without a reported withdrawal: the money left at the close.
            (
                stripe.clone(),
                InvoiceEvent::DisputeClosed {
                    dispute_id: "du_2".into(),
                    outcome: DisputeOutcome::Lost,
                    amount_lost: usd("10.00"),
                    at,
                    postings: vec![],
                },
            ),
        ];
        let movements = ledger_movements_of(&events, "stripe").unwrap();
        let seen: Vec<(MovementKind, &str, i64)> = movements
            .iter()
            .map(|m| (m.kind, m.object_id.as_str(), m.side.amount_minor))
            .collect();
        assert_eq!(
            seen,
            vec![
                (MovementKind::Charge, "ch_a", 9_700),
                (MovementKind::Dispute, "du_1", -9_700),
                (MovementKind::DisputeFee, "du_1", -1_500),
                (MovementKind::Dispute, "du_2", -1_000),
            ]
        );
    }

    #[test]
    fn names_are_their_serialized_form() {
        for kind in [
            MovementKind::Charge,
            MovementKind::Refund,
            MovementKind::Dispute,
            MovementKind::DisputeFee,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
        for kind in [
            MismatchKind::MissingInLedger,
            MismatchKind::MissingAtProvider,
            MismatchKind::AmountDiffers,
            MismatchKind::CurrencyDiffers,
            MismatchKind::StatusDiffers,
        ] {
            assert_eq!(serde_json::to_value(kind).unwrap(), kind.as_str());
        }
    }

    #[test]
    fn reports_rebuild_from_their_events() {
        let run_id = Uuid::now_v7();
        let found = Mismatch {
            mismatch: MismatchKind::MissingInLedger,
            kind: MovementKind::Refund,
            object_id: "re_1".into(),
            ledger: None,
            provider: Some(Side {
                amount_minor: -100,
                currency: "usd".into(),
                status: "succeeded".into(),
            }),
        };
        let events = vec![
            ReconciliationEvent::ReconciliationMismatchFound {
                run_id,
                provider: "stripe".into(),
                found: found.clone(),
                at: TO,
            },
            ReconciliationEvent::ReconciliationCompleted {
                run_id,
                provider: "stripe".into(),
                from: FROM,
                to: TO,
                compared: 3,
                matched: 2,
                mismatches: 1,
                processing_fees_minor: BTreeMap::new(),
                at: TO,
            },
        ];
        let json: Vec<String> = events
            .iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect();
        let decoded: Vec<ReconciliationEvent> = json
            .iter()
            .map(|j| ReconciliationEvent::decode_payload(j).unwrap())
            .collect();
        assert_eq!(decoded, events);
        let reports = ReconciliationReport::from_events(&decoded);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].mismatches, vec![found]);
        assert!(!reports[0].agrees());
    }
}
