//! Properties of the pure domain: proration, tax rounding, and balanced postings
//! over random invoice lives.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use proptest::prelude::*;
use recur_commands::aggregate::execute;
use recur_commands::coupon::{AppliedDiscount, CouponDuration, Discount};
use recur_commands::invoice::{
    BillingReason, ChargeOutcome, Invoice, InvoiceCommand, InvoiceEvent, InvoiceRequest,
    InvoiceStatus, Line, LineKind, compute_totals,
};
use recur_commands::period::{Period, unused_share};
use recur_commands::postings::{Account, TrialBalance, check_balanced};
use recur_commands::tax::{TaxBasis, TaxMode};
use recur_commands::{CouponCode, CustomerId, InvoiceId};
use recur_ledger::money::RoundingRule;
use recur_ledger::{Currency, Money};
use rust_decimal::Decimal;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

const START: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);

fn usd_minor(minor: i64) -> Money {
    Money::from_minor(minor, Currency::USD)
}

fn half_cent() -> Decimal {
    Decimal::new(5, 3)
}

proptest! {
    #[test]
    fn proration_is_the_unused_share_rounded_to_the_cent(
        amount_minor in 1i64..10_000_000,
        period_s in 1i64..40_000_000,
        used_permille in 0i64..=1000,
    ) {
        let period = Period { start: START, end: START + Duration::seconds(period_s) };
        let at = START + Duration::seconds(period_s * used_permille / 1000);
        let amount = usd_minor(amount_minor);
        let share = unused_share(amount, period, at).unwrap();
        let exact = amount.amount() * Decimal::from((period.end - at).whole_seconds())
            / Decimal::from(period_s);
        prop_assert!((share.amount() - exact).abs() <= half_cent());
        prop_assert!(share.to_minor().is_ok());
        prop_assert!(!share.is_negative() && share.amount() <= amount.amount());
        prop_assert_eq!(unused_share(amount, period, period.start).unwrap(), amount);
        prop_assert!(unused_share(amount, period, period.end).unwrap().is_zero());
        // A later change never credits more.
        let later = unused_share(amount, period, (at + Duration::seconds(1)).min(period.end)).unwrap();
        prop_assert!(later.amount() <= share.amount());
    }

    #[test]
    fn tax_is_rounded_per_line_and_adds_up(
        base_minor in -1_000_000i64..1_000_000,
        rate_bp in 0i64..3_000,
        inclusive in any::<bool>(),
    ) {
        let rate = Decimal::new(rate_bp, 4);
        let mode = if inclusive { TaxMode::Inclusive } else { TaxMode::Exclusive };
        let basis = TaxBasis::Rate { jurisdiction: "XX".into(), name: "tax".into(), rate, mode, rate_id: None };
        let base = usd_minor(base_minor);
        let line = basis.line_tax(base).unwrap();
        prop_assert!(line.tax.to_minor().is_ok());
        let exact = if inclusive {
            base.amount() * rate / (Decimal::ONE + rate)
        } else {
            base.amount() * rate
        };
        prop_assert!((line.tax.amount() - exact).abs() <= half_cent());
        if inclusive {
            prop_assert_eq!(line.charged, base);
            prop_assert_eq!(line.revenue.checked_add(line.tax).unwrap(), base);
        } else {
            prop_assert_eq!(line.revenue, base);
            prop_assert_eq!(line.charged, base.checked_add(line.tax).unwrap());
        }
    }
}

/// A step in an invoice's life after it is finalized.
#[derive(Clone, Debug)]
enum Step {
    Pay(bool),
    CreditNote(i64),
    Refund(i64),
    Void,
    WriteOff,
    Recognize(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => any::<bool>().prop_map(Step::Pay),
        1 => (1i64..200_000).prop_map(Step::CreditNote),
        2 => (1i64..200_000).prop_map(Step::Refund),
        1 => Just(Step::Void),
        1 => Just(Step::WriteOff),
        2 => (0i64..90).prop_map(Step::Recognize),
    ]
}

fn discount() -> impl Strategy<Value = Option<Discount>> {
    prop_oneof![
        Just(None),
        (1i64..=100).prop_map(|p| Some(Discount::PercentOff {
            percent: Decimal::from(p)
        })),
        (1i64..500_000).prop_map(|m| Some(Discount::AmountOff {
            amount: usd_minor(m)
        })),
    ]
}

fn tax_basis() -> impl Strategy<Value = TaxBasis> {
    prop_oneof![
        Just(TaxBasis::NoLocation),
        (0i64..3_000, any::<bool>()).prop_map(|(bp, inclusive)| TaxBasis::Rate {
            jurisdiction: "US-TX".into(),
            name: "sales tax".into(),
            rate: Decimal::new(bp, 4),
            mode: if inclusive {
                TaxMode::Inclusive
            } else {
                TaxMode::Exclusive
            },
            rate_id: None,
        }),
    ]
}

fn line(amount_minor: i64, kind: u8) -> Line {
    let kind = match kind % 3 {
        0 => LineKind::Period,
        1 => LineKind::Proration,
        _ => LineKind::OneTime,
    };
    Line {
        kind,
        description: "line".into(),
        plan_id: if amount_minor % 2 == 0 {
            "community_access".into()
        } else {
            "group_coaching".into()
        },
        price_id: "p".into(),
        quantity: 1,
        unit_amount: usd_minor(amount_minor.abs().max(1)),
        amount: usd_minor(amount_minor),
        period: (kind != LineKind::OneTime).then_some(Period {
            start: START,
            end: START + Duration::days(30),
        }),
    }
}

/// Books every event, checks each balances, and checks the books against the
/// invoice: receivable = what is owed; deferred revenue = booked revenue of
/// period lines not recognised yet.
struct Books {
    balance: TrialBalance,
}

impl Books {
    fn record(&mut self, events: &[InvoiceEvent], invoice: &Invoice) -> Result<(), TestCaseError> {
        for event in events {
            check_balanced(event.postings()).map_err(|e| TestCaseError::fail(e.to_string()))?;
            self.balance.add(event.postings()).unwrap();
            prop_assert!(self.balance.is_balanced());
        }
        let receivable = self
            .balance
            .balance(&Account::AccountsReceivable, Currency::USD);
        let owed = if invoice.status == InvoiceStatus::Open {
            invoice.amount_remaining()
        } else {
            usd_minor(0)
        };
        prop_assert_eq!(receivable, owed, "receivable, status {:?}", invoice.status);
        let deferred = self
            .balance
            .accounts()
            .filter(|(account, _)| matches!(account, Account::DeferredRevenue(_)))
            .try_fold(usd_minor(0), |sum, (_, m)| sum.checked_add(m))
            .unwrap();
        let expected = match (&invoice.totals, invoice.status) {
            (Some(totals), status) if status != InvoiceStatus::Void => Money::sum(
                invoice
                    .lines
                    .iter()
                    .zip(&totals.lines)
                    .zip(&invoice.recognized)
                    .filter(|((line, _), done)| !**done && line.kind != LineKind::OneTime)
                    .map(|((_, t), _)| -t.booked),
                Currency::USD,
            )
            .unwrap(),
            _ => usd_minor(0),
        };
        prop_assert_eq!(
            deferred,
            expected,
            "deferred revenue, status {:?}",
            invoice.status
        );
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_invoice_event_balances_and_the_books_match_the_invoice(
        lines in prop::collection::vec((-600_000i64..600_000, any::<u8>()), 1..5),
        discount in discount(),
        tax in tax_basis(),
        credit_permille in 0i64..=1000,
        steps in prop::collection::vec(step(), 0..12),
    ) {
        let lines: Vec<Line> = lines
            .into_iter()
            .filter(|(a, _)| *a != 0)
            .map(|(a, k)| line(a, k))
            .collect();
        prop_assume!(!lines.is_empty());
        let mut invoice = Invoice::default();
        let mut books = Books { balance: TrialBalance::default() };
        let request = InvoiceRequest {
            invoice_id: InvoiceId::new_at(START),
            reason: BillingReason::SubscriptionCycle,
            lines,
            discount: discount.map(|discount| AppliedDiscount {
                coupon: CouponCode::parse("PROP").unwrap(),
                discount,
                duration: CouponDuration::Forever,
                ends_at: None,
            }),
            issued_at: Some(START),
        };
        let events = execute(&mut invoice, InvoiceCommand::Draft {
            customer_id: CustomerId::new_at(START),
            subscription_id: None,
            request,
            now: START,
        })
        .unwrap();
        books.record(&events, &invoice)?;
        let preview = compute_totals(&invoice.lines, invoice.discount.as_ref(), &tax, Currency::USD).unwrap();
        let credit = preview
            .amount_due
            .mul_decimal(Decimal::new(credit_permille, 3))
            .unwrap()
            .round_to_minor(RoundingRule::HalfEven);
        let events = execute(&mut invoice, InvoiceCommand::Finalize { tax_basis: tax, credit_applied: credit, now: START }).unwrap();
        books.record(&events, &invoice)?;
        for (i, step) in steps.into_iter().enumerate() {
            let now = START + Duration::days(i64::try_from(i).unwrap());
            let seen = u32::try_from(invoice.attempts.len()).unwrap();
            let result = match step {
                Step::Pay(succeeds) => execute(
                    &mut invoice,
                    InvoiceCommand::StartAttempt {
                        gateway: "simulated".into(),
                        payment_method: Some("pm_card_visa".into()),
                        due_at: now,
                        on_demand: false,
                        after_attempts: seen,
                        now,
                    },
                )
                .map(|mut events| {
                    if let Some(attempt) = invoice.pending_attempt().cloned() {
                        let outcome = if succeeds {
                            ChargeOutcome::Succeeded { charge_id: format!("ch_{i}") }
                        } else {
                            ChargeOutcome::Declined { decline_code: "card_declined".into(), message: "no".into() }
                        };
                        let command = InvoiceCommand::RecordOutcome {
                            attempt_no: attempt.attempt_no,
                            outcome,
                            next_retry_at: None,
                            now,
                        };
                        events.extend(execute(&mut invoice, command).unwrap());
                    }
                    events
                }),
                Step::CreditNote(m) => execute(
                    &mut invoice,
                    InvoiceCommand::IssueCreditNote { amount: usd_minor(m), reason: "order_change".into(), now },
                ),
                Step::Refund(m) => execute(
                    &mut invoice,
                    InvoiceCommand::RequestRefund { amount: usd_minor(m), reason: "requested_by_customer".into(), now },
                )
                .map(|mut events| {
                    let refund_no = invoice.pending_refunds().last().map(|r| r.refund_no);
                    if let Some(refund_no) = refund_no {
                        let command =
                            InvoiceCommand::RecordRefund { refund_no, refund_id: format!("re_{i}"), now };
                        events.extend(execute(&mut invoice, command).unwrap());
                    }
                    events
                }),
                Step::Void => execute(&mut invoice, InvoiceCommand::Void { now }),
                Step::WriteOff => execute(&mut invoice, InvoiceCommand::MarkUncollectible { now }),
                Step::Recognize(days) => execute(
                    &mut invoice,
                    InvoiceCommand::RecognizeRevenue { now: START + Duration::days(days) },
                ),
            };
            // A refusal appends nothing; either way the books still match.
            let events = result.unwrap_or_default();
            books.record(&events, &invoice)?;
        }
    }
}

/// An open invoice of 97.00, finalized at START.
fn open_invoice() -> Invoice {
    let mut invoice = Invoice::default();
    execute(
        &mut invoice,
        InvoiceCommand::Draft {
            customer_id: CustomerId::new_at(START),
            subscription_id: None,
            request: InvoiceRequest {
                invoice_id: InvoiceId::new_at(START),
                reason: BillingReason::SubscriptionCycle,
                lines: vec![line(9_700, 0)],
                discount: None,
                issued_at: Some(START),
            },
            now: START,
        },
    )
    .unwrap();
    execute(
        &mut invoice,
        InvoiceCommand::Finalize {
            tax_basis: TaxBasis::NoLocation,
            credit_applied: usd_minor(0),
            now: START,
        },
    )
    .unwrap();
    assert_eq!(invoice.status, InvoiceStatus::Open);
    invoice
}

fn start(after_attempts: u32) -> InvoiceCommand {
    InvoiceCommand::StartAttempt {
        gateway: "simulated".into(),
        payment_method: Some("pm_card_visa".into()),
        due_at: START,
        on_demand: false,
        after_attempts,
        now: START,
    }
}

#[test]
fn a_write_off_waits_for_a_charge_in_flight() {
    let mut invoice = open_invoice();
    execute(&mut invoice, start(0)).unwrap();
    assert!(invoice.pending_attempt().is_some());
    let written_off = execute(
        &mut invoice,
        InvoiceCommand::MarkUncollectible { now: START },
    )
    .unwrap();
    assert!(written_off.is_empty(), "{written_off:?}");
    assert_eq!(invoice.status, InvoiceStatus::Open);
    // Its outcome recorded, the write-off goes ahead.
    execute(
        &mut invoice,
        InvoiceCommand::RecordOutcome {
            attempt_no: 1,
            outcome: ChargeOutcome::Declined {
                decline_code: "card_declined".into(),
                message: String::new(),
            },
            next_retry_at: None,
            now: START,
        },
    )
    .unwrap();
    execute(
        &mut invoice,
        InvoiceCommand::MarkUncollectible { now: START },
    )
    .unwrap();
    assert_eq!(invoice.status, InvoiceStatus::Uncollectible);
}

#[test]
fn a_charge_decided_on_attempts_since_outdated_is_not_started() {
    let mut invoice = open_invoice();
    execute(&mut invoice, start(0)).unwrap();
    execute(
        &mut invoice,
        InvoiceCommand::RecordOutcome {
            attempt_no: 1,
            outcome: ChargeOutcome::Declined {
                decline_code: "stolen_card".into(),
                message: String::new(),
            },
            next_retry_at: None,
            now: START,
        },
    )
    .unwrap();
    // A collector that read the invoice before that attempt: nothing.
    assert!(execute(&mut invoice, start(0)).unwrap().is_empty());
    assert_eq!(invoice.attempts.len(), 1);
    // One that saw it goes ahead.
    assert_eq!(execute(&mut invoice, start(1)).unwrap().len(), 1);
    assert_eq!(invoice.attempts.len(), 2);
}

/// An attempt recorded before `on_demand` existed was the schedule's.
#[test]
fn an_attempt_stored_without_on_demand_reads_as_scheduled() {
    let mut invoice = open_invoice();
    let started = execute(&mut invoice, start(0)).unwrap();
    let stored = serde_json::to_value(&started[0]).unwrap();
    assert_eq!(stored["type"], "PaymentAttemptStarted", "{stored}");
    assert!(
        stored.get("on_demand").is_none(),
        "false is not written: {stored}"
    );
    let payload = stored.to_string();
    let event: InvoiceEvent = recur_commands::billing::decode_event(&payload).unwrap();
    match event {
        InvoiceEvent::PaymentAttemptStarted { on_demand, .. } => assert!(!on_demand),
        other => panic!("{other:?}"),
    }
}
