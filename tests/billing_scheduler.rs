//! The scheduler's exactly-once guarantees, forced: two schedulers at once on one
//! Postgres ledger, a gateway that fails before or after charging, and a process
//! that stopped between a renewal and its invoice.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::collections::HashSet;
use std::sync::Arc;

use recur_commands::aggregate::{Aggregate, DomainEvent};
use recur_commands::billing::{NewCustomer, NewSubscription, Trial};
use recur_commands::invoice::{InvoiceEvent, InvoiceStatus};
use recur_commands::postings::TrialBalance;
use recur_commands::scheduler::Scheduler;
use recur_commands::subscription::SubscriptionCommand;
use recur_commands::{Billing, Catalog, InvoiceId, SimulatedGateway, SubscriptionId};
use recur_ledger::{
    Clock, EventId, ExpectedVersion, Ledger, LedgerConfig, NewEvent, Position, TestClock,
};
use time::macros::datetime;

async fn billing_on(ledger: Ledger, gateway: &SimulatedGateway) -> Arc<Billing> {
    Arc::new(
        Billing::open(
            ledger,
            Catalog::default_catalog().unwrap(),
            Arc::new(gateway.clone()),
        )
        .await
        .unwrap(),
    )
}

async fn subscribe_card_holder(billing: &Billing, plan: &str) -> SubscriptionId {
    let customer = billing
        .create_customer(NewCustomer::default())
        .await
        .unwrap();
    let card = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
    billing.attach_payment_method(customer, card).await.unwrap();
    billing
        .subscribe(NewSubscription {
            customer_id: customer,
            plan_id: plan.into(),
            price_id: None,
            quantity: 1,
            trial: Trial::Skip,
            coupon: None,
        })
        .await
        .unwrap()
}

/// Two billing services on one Postgres ledger, as two processes would be:
/// separate ledger handles and caches, one gateway account, one test clock.
struct TwoProcesses {
    clock: TestClock,
    store: common::TestLedger,
    gateway: SimulatedGateway,
    first: Arc<Billing>,
    second: Arc<Billing>,
}

async fn two_processes() -> TwoProcesses {
    let clock = TestClock::at(datetime!(2026-01-01 00:00 UTC));
    let store = common::postgres_with(Arc::new(clock.clone())).await;
    let second_ledger = Ledger::open(LedgerConfig::new(store.location()), Arc::new(clock.clone()))
        .await
        .unwrap();
    let gateway = SimulatedGateway::new();
    let first = billing_on(store.ledger.clone(), &gateway).await;
    let second = billing_on(second_ledger, &gateway).await;
    TwoProcesses {
        clock,
        store,
        gateway,
        first,
        second,
    }
}

/// Every invoice drafted in the ledger, and the trial balance checked after each event.
async fn audit(ledger: &Ledger) -> (Vec<InvoiceId>, TrialBalance) {
    let mut drafted = Vec::new();
    let mut balance = TrialBalance::default();
    let mut after = Position::START;
    loop {
        let page = ledger.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for recorded in &page {
            if recorded.stream_id.category() != "invoice" {
                continue;
            }
            let event: InvoiceEvent = serde_json::from_str(&recorded.payload).unwrap();
            if let InvoiceEvent::InvoiceDrafted { invoice_id, .. } = &event {
                drafted.push(*invoice_id);
            }
            balance.add(event.postings()).unwrap();
            assert!(balance.is_balanced());
        }
    }
    (drafted, balance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_schedulers_at_once_bill_each_period_exactly_once() {
    let TwoProcesses {
        clock,
        store,
        gateway,
        first,
        second,
    } = two_processes().await;
    let mut subs = Vec::new();
    for i in 0..12 {
        let plan = if i % 3 == 0 {
            "group_coaching"
        } else {
            "community_access"
        };
        subs.push(subscribe_card_holder(&first, plan).await);
    }
    let a = Scheduler::new(Arc::clone(&first), 8);
    let b = Scheduler::new(Arc::clone(&second), 8);
    for month in [2u8, 3, 4] {
        let month = time::Month::try_from(month).unwrap();
        clock.advance_to(
            datetime!(2026-01-01 00:00 UTC)
                .replace_month(month)
                .unwrap(),
        );
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        assert!(
            ra.failures.is_empty() && rb.failures.is_empty(),
            "{ra:?} {rb:?}"
        );
        assert_eq!(
            ra.periods_started + rb.periods_started,
            12,
            "each period started once"
        );
    }
    let (drafted, _) = audit(&store.ledger).await;
    assert_eq!(drafted.len(), 12 * 4);
    assert_eq!(drafted.iter().collect::<HashSet<_>>().len(), drafted.len());
    assert_eq!(gateway.charges_made(), 48, "one charge per period");
    for sub in subs {
        let state = first.subscription(sub).await.unwrap();
        assert_eq!(state.invoices.len(), 4);
        assert_eq!(state.period_index, 3);
        for invoice in state.invoices {
            let invoice = second.invoice(invoice).await.unwrap();
            assert_eq!(invoice.status, InvoiceStatus::Paid);
            assert_eq!(invoice.attempts.len(), 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_charge_whose_answer_was_lost_is_repeated_with_its_key_and_charged_once() {
    let clock = TestClock::at(datetime!(2026-01-01 00:00 UTC));
    let store = common::postgres_with(Arc::new(clock.clone())).await;
    let gateway = SimulatedGateway::new();
    let billing = billing_on(store.ledger.clone(), &gateway).await;
    let sub = subscribe_card_holder(&billing, "community_access").await;
    let scheduler = Scheduler::new(Arc::clone(&billing), 4);
    assert_eq!(gateway.charges_made(), 1);

    // The renewal's charge goes through but the answer is lost, twice (the tick
    // repeats an unanswered attempt once); then the gateway is down.
    clock.advance_to(datetime!(2026-02-01 00:00 UTC));
    gateway.lose_next_answers(2);
    let report = scheduler.tick().await.unwrap();
    assert_eq!(report.failures.len(), 2, "{report:?}");
    let invoice = billing.subscription(sub).await.unwrap().invoices[1];
    let state = billing.invoice(invoice).await.unwrap();
    assert!(
        state.pending_attempt().is_some(),
        "the attempt stays open, nothing recorded"
    );
    gateway.fail_next_calls(1);
    assert_eq!(scheduler.tick().await.unwrap().failures.len(), 1);

    // Next tick: same key, the gateway answers with the first charge.
    let report = scheduler.tick().await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    let state = billing.invoice(invoice).await.unwrap();
    assert_eq!(state.status, InvoiceStatus::Paid);
    assert_eq!(state.attempts.len(), 1);
    assert_eq!(gateway.charges_made(), 2, "January and February, each once");
    assert_eq!(gateway.calls(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_renewal_recorded_before_a_crash_is_invoiced_once_by_the_next_scheduler() {
    let clock = TestClock::at(datetime!(2026-01-01 00:00 UTC));
    let store = common::postgres_with(Arc::new(clock.clone())).await;
    let gateway = SimulatedGateway::new();
    let billing = billing_on(store.ledger.clone(), &gateway).await;
    let sub = subscribe_card_holder(&billing, "community_access").await;

    // A process renews and dies before drafting the invoice: append the decision only.
    clock.advance_to(datetime!(2026-02-01 00:00 UTC));
    let state = billing.subscription(sub).await.unwrap();
    let now = clock.now();
    let events = state
        .decide(SubscriptionCommand::Renew {
            period_index: 1,
            invoice_id: InvoiceId::new_at(now),
            now,
        })
        .unwrap();
    let new_events = events
        .iter()
        .map(|e| NewEvent::new(EventId::new_at(now), e.event_type(), 1, e).unwrap())
        .collect();
    let stream = sub.stream().unwrap();
    let version = store.ledger.stream_version(&stream).await.unwrap();
    store
        .ledger
        .append(&stream, ExpectedVersion::Exact(version), new_events)
        .await
        .unwrap();

    // A fresh process (no cache) picks it up from the ledger.
    let restarted = billing_on(store.ledger.clone(), &gateway).await;
    let scheduler = Scheduler::new(Arc::clone(&restarted), 4);
    let report = scheduler.tick().await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(report.periods_started, 0, "the period had already started");
    scheduler.tick().await.unwrap();
    let state = restarted.subscription(sub).await.unwrap();
    assert_eq!(state.invoices.len(), 2);
    let (drafted, _) = audit(&store.ledger).await;
    assert_eq!(drafted.len(), 2);
    assert_eq!(
        restarted.invoice(state.invoices[1]).await.unwrap().status,
        InvoiceStatus::Paid
    );
    assert_eq!(gateway.charges_made(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_negative_invoice_whose_credit_was_never_granted_is_granted_by_the_scheduler() {
    use recur_commands::aggregate::execute;
    use recur_commands::invoice::{
        BillingReason, Invoice, InvoiceCommand, InvoiceRequest, Line, LineKind,
    };
    use recur_commands::tax::TaxBasis;
    use recur_ledger::Money;

    let clock = TestClock::at(datetime!(2026-01-01 00:00 UTC));
    let store = common::postgres_with(Arc::new(clock.clone())).await;
    let gateway = SimulatedGateway::new();
    let billing = billing_on(store.ledger.clone(), &gateway).await;
    let customer = billing
        .create_customer(NewCustomer::default())
        .await
        .unwrap();

    // A process drafts and finalizes a −100.00 invoice, then dies before granting the credit.
    let now = clock.now();
    let id = InvoiceId::new_at(now);
    let usd = |a: &str| Money::parse(a, "USD").unwrap();
    let mut invoice = Invoice::default();
    let mut events = execute(
        &mut invoice,
        InvoiceCommand::Draft {
            customer_id: customer,
            subscription_id: None,
            request: InvoiceRequest {
                invoice_id: id,
                reason: BillingReason::SubscriptionUpdate,
                lines: vec![Line {
                    kind: LineKind::Proration,
                    description: "unused time".into(),
                    plan_id: "group_coaching".into(),
                    price_id: "group_coaching_usd_month_v1".into(),
                    quantity: 1,
                    unit_amount: usd("1500.00"),
                    amount: usd("-100.00"),
                    period: None,
                }],
                discount: None,
                issued_at: Some(now),
            },
            now,
        },
    )
    .unwrap();
    events.extend(
        execute(
            &mut invoice,
            InvoiceCommand::Finalize {
                tax_basis: TaxBasis::NoLocation,
                credit_applied: usd("0.00"),
                now,
            },
        )
        .unwrap(),
    );
    let new_events = events
        .iter()
        .map(|e| NewEvent::new(EventId::new_at(now), e.event_type(), 1, e).unwrap())
        .collect();
    store
        .ledger
        .append(&id.stream().unwrap(), ExpectedVersion::NoStream, new_events)
        .await
        .unwrap();
    assert_eq!(
        billing.customer(customer).await.unwrap().credit_balance,
        None
    );

    let scheduler = Scheduler::new(Arc::clone(&billing), 4);
    let report = scheduler.tick().await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    assert_eq!(
        billing.customer(customer).await.unwrap().credit_balance,
        Some(usd("100.00"))
    );
    // Once granted, it is not granted again.
    scheduler.tick().await.unwrap();
    assert_eq!(
        billing.customer(customer).await.unwrap().credit_balance,
        Some(usd("100.00"))
    );
    assert_eq!(scheduler.next_due_at().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answers_with_what_another_process_wrote_since() {
    let TwoProcesses {
        clock: _,
        store: _store,
        gateway: _,
        first,
        second,
    } = two_processes().await;
    let sub = subscribe_card_holder(&first, "community_access").await;
    // The first process has the subscription cached, active.
    assert_eq!(
        first.subscription(sub).await.unwrap().status.name(),
        "active"
    );
    second
        .cancel(sub, recur_commands::subscription::Timing::Now)
        .await
        .unwrap();
    assert_eq!(
        first.subscription(sub).await.unwrap().status.name(),
        "canceled",
        "a read sees the other process's cancellation"
    );
    let (_, version) = first.subscription_versioned(sub).await.unwrap();
    let (_, theirs) = second.subscription_versioned(sub).await.unwrap();
    assert_eq!(version, theirs);
}

/// A customer's declined February renewal, on the first process: (customer,
/// invoice). The card declines with `decline_code` from February on.
async fn declined_renewal(
    processes: &TwoProcesses,
    decline_code: &str,
) -> (recur_commands::CustomerId, InvoiceId) {
    let first = &processes.first;
    let sub = subscribe_card_holder(first, "community_access").await;
    let customer = first.subscription(sub).await.unwrap().customer_id.unwrap();
    first
        .attach_payment_method(
            customer,
            SimulatedGateway::failing_card(decline_code, 12, 2030),
        )
        .await
        .unwrap();
    processes.clock.advance_to(datetime!(2026-02-01 00:00 UTC));
    let report = Scheduler::new(Arc::clone(first), 4).tick().await.unwrap();
    assert!(report.failures.is_empty(), "{report:?}");
    let invoice = first.subscription(sub).await.unwrap().invoices[1];
    let state = first.invoice(invoice).await.unwrap();
    assert_eq!(state.status, InvoiceStatus::Open);
    assert_eq!(state.attempts.len(), 1);
    (customer, invoice)
}

/// What a racing payment may answer: done, or refused as already paid.
fn paid_or_refused(result: Result<recur_commands::invoice::Invoice, recur_commands::BillingError>) {
    match result {
        Ok(_)
        | Err(recur_commands::BillingError::Domain(
            recur_commands::DomainError::InvalidTransition { .. },
        )) => {}
        Err(other) => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_card_paid_from_two_tabs_while_two_schedulers_run_is_charged_once() {
    let processes = two_processes().await;
    let (customer, invoice) = declined_renewal(&processes, "expired_card").await;
    let TwoProcesses {
        clock,
        store,
        gateway,
        first,
        second,
    } = &processes;
    // The customer puts a working card on file; the page pays in two tabs
    // (one per process) while both schedulers see the new card at once.
    let card = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
    first.attach_payment_method(customer, card).await.unwrap();
    clock.advance_to(datetime!(2026-02-02 00:00 UTC));
    let charged_before = gateway.charges_made();
    let a = Scheduler::new(Arc::clone(first), 4);
    let b = Scheduler::new(Arc::clone(second), 4);
    let (tab1, tab2, tick_a, tick_b) = tokio::join!(
        first.pay_now(invoice),
        second.pay_now(invoice),
        a.tick(),
        b.tick()
    );
    paid_or_refused(tab1);
    paid_or_refused(tab2);
    tick_a.unwrap();
    tick_b.unwrap();
    let state = first.invoice(invoice).await.unwrap();
    assert_eq!(state.status, InvoiceStatus::Paid, "{state:?}");
    assert_eq!(gateway.charges_made(), charged_before + 1, "charged once");
    assert_eq!(state.attempts.len(), 2, "one attempt after the decline");
    audit(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_payment_confirmed_from_two_tabs_at_once_is_charged_once() {
    let processes = two_processes().await;
    let (_, invoice) = declined_renewal(&processes, "authentication_required").await;
    let TwoProcesses {
        clock,
        store,
        gateway,
        first,
        second,
    } = &processes;
    clock.advance_to(datetime!(2026-02-01 06:00 UTC));
    let charged_before = gateway.charges_made();
    let (tab1, tab2, tab3) = tokio::join!(
        first.confirm_payment(invoice),
        second.confirm_payment(invoice),
        second.confirm_payment(invoice)
    );
    for tab in [tab1, tab2, tab3] {
        paid_or_refused(tab);
    }
    let state = first.invoice(invoice).await.unwrap();
    assert_eq!(state.status, InvoiceStatus::Paid, "{state:?}");
    assert_eq!(gateway.charges_made(), charged_before + 1, "charged once");
    assert_eq!(state.attempts.len(), 2);
    let campaign = first.dunning_campaign(invoice).await.unwrap();
    assert!(campaign.ending.is_some(), "recovered");
    audit(store).await;
}
