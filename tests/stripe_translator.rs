//! The Stripe translator on a real ledger (Postgres, a database per test):
//! Stripe events built from Stripe's published objects (both API versions)
//! with Recur's metadata edited in, kept as the webhook keeps them, then
//! translated into billing commands — payments, dunning, refunds, disputes,
//! contact details, cards — out of order, twice, and over a fresh ledger.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use recur_commands::billing::{NewCustomer, NewSubscription, Trial};
use recur_commands::customer::{ContactDetails, CustomerEvent, Segment};
use recur_commands::invoice::{DisputeOutcome, InvoiceEvent, InvoiceStatus};
use recur_commands::postings::{Account, Posting, Side, TrialBalance};
use recur_commands::privacy::{MasterKey, Vault};
use recur_commands::provider::Effect;
use recur_commands::subscription::SubscriptionStatus;
use recur_commands::translator::{TranslateReport, Translated, Translator};
use recur_commands::webhook::{Ingested, StripeDelivery};
use recur_commands::{Billing, Catalog, CustomerId, InvoiceId, SimulatedGateway, SubscriptionId};
use recur_ledger::{Currency, ExpectedVersion, Ledger, Money, NewEvent, Position, TestClock};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::macros::datetime;

const START: OffsetDateTime = datetime!(2027-01-04 09:00 UTC);

struct World {
    clock: TestClock,
    billing: Arc<Billing>,
    gateway: SimulatedGateway,
    translator: Translator,
    master_key: String,
    _store: common::TestLedger,
}

async fn world() -> World {
    let (_, master_key) = MasterKey::generate().unwrap();
    world_with(&master_key, None).await
}

/// A world on a fresh ledger; holding a copy of `copied`'s events but the
/// translator's, when given.
async fn world_with(master_key: &str, copied: Option<&Ledger>) -> World {
    let clock = TestClock::at(START);
    let store = common::postgres_with(Arc::new(clock.clone())).await;
    if let Some(from) = copied {
        copy_without_translations(from, &store.ledger).await;
    }
    let gateway = SimulatedGateway::new();
    let vault = Vault::new(MasterKey::parse(master_key).unwrap(), vec![]);
    let billing = Arc::new(
        Billing::open(
            store.ledger.clone(),
            Catalog::default_catalog().unwrap(),
            Arc::new(gateway.clone()),
        )
        .await
        .unwrap()
        .with_vault(Arc::new(vault)),
    );
    World {
        translator: Translator::new(Arc::clone(&billing)),
        clock,
        billing,
        gateway,
        master_key: master_key.to_owned(),
        _store: store,
    }
}

fn usd(amount: &str) -> Money {
    Money::parse(amount, "USD").unwrap()
}

fn fixture(version: &str, name: &str) -> Value {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stripe");
    let text = std::fs::read_to_string(format!("{dir}/{version}/{name}.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A Stripe event of `kind` carrying `object`, made at `created`.
fn stripe_event(
    version: &str,
    kind: &str,
    id: &str,
    created: OffsetDateTime,
    object: Value,
) -> Value {
    let mut event = fixture(version, "event");
    event["id"] = json!(id);
    event["type"] = json!(kind);
    event["data"] = json!({ "object": object });
    event["created"] = json!(created.unix_timestamp());
    event
}

/// Recur's metadata, as the Stripe gateway writes it on a PaymentIntent.
fn metadata(invoice: InvoiceId, customer: CustomerId, attempt: u32) -> Value {
    json!({
        "recur_invoice_id": invoice.to_string(),
        "recur_customer_id": customer.to_string(),
        "recur_attempt": attempt.to_string(),
    })
}

/// A PaymentIntent of `invoice`'s attempt, for `amount_minor` USD.
fn payment_intent(
    version: &str,
    invoice: InvoiceId,
    customer: CustomerId,
    attempt: u32,
    amount_minor: i64,
) -> Value {
    let mut intent = fixture(version, "payment_intent");
    intent["id"] = json!(format!("pi_{}_{attempt}", invoice.0.simple()));
    intent["metadata"] = metadata(invoice, customer, attempt);
    intent["amount"] = json!(amount_minor);
    intent["currency"] = json!("usd");
    intent["customer"] = json!("cus_test");
    intent
}

fn succeeded(mut intent: Value, charge: &str) -> Value {
    intent["status"] = json!("succeeded");
    intent["amount_received"] = intent["amount"].clone();
    intent["latest_charge"] = json!(charge);
    intent["last_payment_error"] = Value::Null;
    intent
}

fn failed(mut intent: Value, decline_code: &str) -> Value {
    intent["status"] = json!("requires_payment_method");
    intent["last_payment_error"] = json!({
        "type": "card_error", "code": "card_declined", "decline_code": decline_code,
        "message": "Your card has insufficient funds.",
    });
    intent
}

impl World {
    fn ledger(&self) -> &Ledger {
        self.billing.ledger()
    }

    /// Keeps `event` as the webhook does (its routing fields read the same way).
    async fn deliver(&self, event: &Value) -> Ingested {
        let object = &event["data"]["object"];
        let text = |v: &Value| v.as_str().map(str::to_owned);
        let customer = if object["object"] == "customer" {
            text(&object["id"])
        } else {
            text(&object["customer"]).or_else(|| text(&object["customer"]["id"]))
        };
        let delivery = StripeDelivery {
            id: text(&event["id"]).unwrap(),
            event_type: text(&event["type"]).unwrap(),
            api_version: text(&event["api_version"]),
            created_s: event["created"].as_i64().unwrap(),
            livemode: false,
            customer,
            object_id: text(&object["id"]),
        };
        self.billing
            .ingest_stripe_event(delivery, &serde_json::to_vec(event).unwrap())
            .await
            .unwrap()
    }

    /// Runs the translator; what each event did, and the run's report.
    async fn translate(&self, from_start: bool) -> (Vec<Translated>, TranslateReport) {
        let mut each = Vec::new();
        let report = self
            .translator
            .run_with(from_start, |t| each.push(t.clone()))
            .await
            .unwrap();
        (each, report)
    }

    async fn customer(&self, card: Option<&str>, contact: Option<ContactDetails>) -> CustomerId {
        let id = self
            .billing
            .create_customer(NewCustomer {
                segment: Segment::Standard,
                tax_location: None,
                contact,
            })
            .await
            .unwrap();
        if let Some(number) = card {
            let method = SimulatedGateway::tokenize(number, 12, 2030).unwrap();
            self.billing
                .attach_payment_method(id, method)
                .await
                .unwrap();
        }
        id
    }

    async fn subscribe(
        &self,
        customer: CustomerId,
    ) -> Result<SubscriptionId, recur_commands::BillingError> {
        self.billing
            .subscribe(NewSubscription {
                customer_id: customer,
                plan_id: "community_access".into(),
                price_id: None,
                quantity: 1,
                trial: Trial::Skip,
                coupon: None,
            })
            .await
    }

    /// The newest invoice drafted for `customer`.
    async fn invoice_of(&self, customer: CustomerId) -> InvoiceId {
        let mut found = None;
        for event in self
            .ledger()
            .read_all(Position::START, 10_000)
            .await
            .unwrap()
        {
            if event.event_type == "InvoiceDrafted" {
                let drafted: InvoiceEvent = serde_json::from_str(&event.payload).unwrap();
                if let InvoiceEvent::InvoiceDrafted {
                    invoice_id,
                    customer_id,
                    ..
                } = drafted
                    && customer_id == customer
                {
                    found = Some(invoice_id);
                }
            }
        }
        found.expect("an invoice of the customer")
    }

    /// A subscribed customer whose first attempt's answer was lost (the
    /// gateway did not answer): the invoice open, attempt 1 pending.
    async fn lost_answer(&self) -> (CustomerId, InvoiceId) {
        let customer = self.customer(Some("4242424242424242"), None).await;
        self.gateway.fail_next_calls(1);
        assert!(
            self.subscribe(customer).await.is_err(),
            "the gateway was down"
        );
        let invoice = self.invoice_of(customer).await;
        let state = self.billing.invoice(invoice).await.unwrap();
        assert_eq!(state.status, InvoiceStatus::Open);
        assert!(state.pending_attempt().is_some());
        (customer, invoice)
    }

    /// A subscribed customer whose invoice Recur collected itself.
    async fn paid(&self) -> (CustomerId, SubscriptionId, InvoiceId) {
        let customer = self.customer(Some("4242424242424242"), None).await;
        let sub = self.subscribe(customer).await.unwrap();
        let invoice = self.invoice_of(customer).await;
        assert_eq!(
            self.billing.invoice(invoice).await.unwrap().status,
            InvoiceStatus::Paid
        );
        (customer, sub, invoice)
    }

    /// Every event of a stream: (type, payload).
    async fn stream(&self, stream: &recur_ledger::StreamId) -> Vec<(String, String)> {
        self.ledger()
            .read_stream(stream, 1, 1_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.event_type, e.payload))
            .collect()
    }

    async fn invoice_events(&self, invoice: InvoiceId) -> Vec<InvoiceEvent> {
        self.stream(&invoice.stream().unwrap())
            .await
            .into_iter()
            .map(|(_, payload)| serde_json::from_str(&payload).unwrap())
            .collect()
    }

    /// The whole ledger, without what each run makes anew (ids, positions,
    /// times of recording): stream, version, type, metadata and payload.
    async fn everything(&self) -> Vec<(String, u64, String, String, String)> {
        self.ledger()
            .read_all(Position::START, 10_000)
            .await
            .unwrap()
            .into_iter()
            .map(|e| {
                (
                    e.stream_id.to_string(),
                    e.stream_version,
                    e.event_type,
                    serde_json::to_string(&e.metadata).unwrap(),
                    e.payload,
                )
            })
            .collect()
    }
}

fn posting(account: Account, side: Side, amount: &str) -> Posting {
    Posting {
        account,
        side,
        amount: usd(amount),
    }
}

fn effects(translated: &[Translated]) -> Vec<(String, Effect)> {
    translated
        .iter()
        .map(|t| (t.stripe_event_id.clone(), t.effect.clone()))
        .collect()
}

#[tokio::test]
async fn a_stripe_payment_pays_an_invoice_whose_answer_was_lost_and_settles_its_subscription() {
    let w = world().await;
    let (customer, invoice) = w.lost_answer().await;
    let intent = succeeded(
        payment_intent("current", invoice, customer, 1, 9700),
        "ch_paid_1",
    );
    let event = stripe_event(
        "current",
        "payment_intent.succeeded",
        "evt_paid_1",
        START,
        intent,
    );
    assert!(matches!(w.deliver(&event).await, Ingested::New(_)));

    let (translated, report) = w.translate(false).await;
    assert_eq!(
        effects(&translated),
        [("evt_paid_1".to_owned(), Effect::Applied)]
    );
    assert!(report.events_appended >= 2, "{report:?}");
    let state = w.billing.invoice(invoice).await.unwrap();
    assert_eq!(state.status, InvoiceStatus::Paid);
    let paid = w.invoice_events(invoice).await;
    let Some(InvoiceEvent::PaymentSucceeded {
        attempt_no,
        charge_id,
        amount,
        postings,
        at,
    }) = paid.last()
    else {
        panic!("{paid:?}");
    };
    assert_eq!((*attempt_no, charge_id.as_str()), (1, "ch_paid_1"));
    assert_eq!(*amount, usd("97.00"));
    assert_eq!(*at, START, "dated when Stripe said so");
    assert_eq!(
        *postings,
        [
            posting(Account::GatewayBalance, Side::Debit, "97.00"),
            posting(Account::AccountsReceivable, Side::Credit, "97.00"),
        ]
    );
    let sub = w
        .billing
        .subscription(state.subscription_id.unwrap())
        .await
        .unwrap();
    assert!(
        sub.unsettled.is_empty(),
        "the subscription is told it is paid"
    );

    // Nothing new after: the checkpoint moved past it.
    let (again, report) = w.translate(false).await;
    assert!(again.is_empty());
    assert_eq!(report.events_appended, 0);
}

#[tokio::test]
async fn a_stripe_decline_of_a_lost_answer_feeds_dunning_like_a_decline_recur_heard() {
    let w = world().await;
    let (customer, invoice) = w.lost_answer().await;
    let attempt_due = w.billing.invoice(invoice).await.unwrap().attempts[0].due_at;
    let intent = failed(
        payment_intent("legacy_2024_04", invoice, customer, 1, 9700),
        "insufficient_funds",
    );
    let event = stripe_event(
        "legacy_2024_04",
        "payment_intent.payment_failed",
        "evt_failed_1",
        START,
        intent,
    );
    w.deliver(&event).await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(translated[0].effect, Effect::Applied);

    let state = w.billing.invoice(invoice).await.unwrap();
    assert_eq!(state.status, InvoiceStatus::Open);
    let events = w.invoice_events(invoice).await;
    let Some(InvoiceEvent::PaymentFailed {
        attempt_no,
        decline_code,
        next_retry_at,
        ..
    }) = events.last()
    else {
        panic!("{events:?}");
    };
    assert_eq!(
        (*attempt_no, decline_code.as_str()),
        (1, "insufficient_funds")
    );
    // A first invoice of a subscription: the trial policy, 2 hours after the
    // attempt was due, as for a decline Recur heard itself.
    assert_eq!(*next_retry_at, Some(attempt_due + time::Duration::hours(2)));
    let sub = w
        .billing
        .subscription(state.subscription_id.unwrap())
        .await
        .unwrap();
    assert_eq!(sub.status, SubscriptionStatus::PastDue);

    // Recur's own attempt already answered: the same report adds nothing.
    let heard = w.customer(None, None).await;
    let method = SimulatedGateway::failing_card("insufficient_funds", 12, 2030);
    w.billing
        .attach_payment_method(heard, method)
        .await
        .unwrap();
    w.subscribe(heard).await.unwrap();
    let declined = w.invoice_of(heard).await;
    let before = w.invoice_events(declined).await;
    let intent = failed(
        payment_intent("current", declined, heard, 1, 9700),
        "insufficient_funds",
    );
    w.deliver(&stripe_event(
        "current",
        "payment_intent.payment_failed",
        "evt_failed_2",
        START,
        intent,
    ))
    .await;
    let (translated, report) = w.translate(false).await;
    assert_eq!(translated[0].effect, Effect::Nothing("outcome_recorded"));
    assert_eq!(report.events_appended, 0);
    assert_eq!(w.invoice_events(declined).await, before);
}

#[tokio::test]
async fn out_of_order_a_failure_after_the_success_never_unpays_and_a_success_after_a_decline_pays()
{
    let w = world().await;
    let (customer, invoice) = w.lost_answer().await;
    let intent = payment_intent("current", invoice, customer, 1, 9700);
    // Delivered in the wrong order: the success first, the older failure after.
    let success = stripe_event(
        "current",
        "payment_intent.succeeded",
        "evt_ooo_success",
        START + time::Duration::minutes(5),
        succeeded(intent.clone(), "ch_ooo"),
    );
    let failure = stripe_event(
        "current",
        "payment_intent.payment_failed",
        "evt_ooo_failure",
        START,
        failed(intent, "card_declined"),
    );
    w.deliver(&success).await;
    w.deliver(&failure).await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(
        effects(&translated),
        [
            ("evt_ooo_success".to_owned(), Effect::Applied),
            (
                "evt_ooo_failure".to_owned(),
                Effect::Nothing("already_paid")
            ),
        ]
    );
    assert_eq!(
        w.billing.invoice(invoice).await.unwrap().status,
        InvoiceStatus::Paid
    );

    // Declined as Recur heard it, then paid at Stripe (the customer
    // authenticated the same PaymentIntent): the invoice is paid.
    let later = w.customer(None, None).await;
    let method = SimulatedGateway::failing_card("authentication_required", 12, 2030);
    w.billing
        .attach_payment_method(later, method)
        .await
        .unwrap();
    let sub = w.subscribe(later).await.unwrap();
    let declined = w.invoice_of(later).await;
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::PastDue
    );
    let intent = succeeded(
        payment_intent("current", declined, later, 1, 9700),
        "ch_3ds",
    );
    w.deliver(&stripe_event(
        "current",
        "payment_intent.succeeded",
        "evt_3ds",
        START,
        intent,
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(translated[0].effect, Effect::Applied);
    assert_eq!(
        w.billing.invoice(declined).await.unwrap().status,
        InvoiceStatus::Paid
    );
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::Active
    );
}

#[tokio::test]
async fn duplicate_deliveries_and_two_events_of_one_payment_are_applied_once() {
    let w = world().await;
    let (customer, invoice) = w.lost_answer().await;
    let intent = succeeded(
        payment_intent("current", invoice, customer, 1, 9700),
        "ch_dup",
    );
    let event = stripe_event(
        "current",
        "payment_intent.succeeded",
        "evt_dup",
        START,
        intent.clone(),
    );
    assert!(matches!(w.deliver(&event).await, Ingested::New(_)));
    assert_eq!(w.deliver(&event).await, Ingested::Duplicate);
    // The same payment told again by invoice.paid (a legacy invoice naming it).
    let mut stripe_invoice = fixture("legacy_2024_04", "invoice");
    stripe_invoice["payment_intent"] = intent;
    stripe_invoice["amount_paid"] = json!(9700);
    stripe_invoice["currency"] = json!("usd");
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "invoice.paid",
        "evt_dup_invoice",
        START,
        stripe_invoice,
    ))
    .await;
    // Two translators at once (two servers): each event applied once.
    let other = Translator::new(Arc::clone(&w.billing));
    let (first, second) = tokio::join!(w.translator.run(false), other.run(false));
    let appended = first.unwrap().events_appended + second.unwrap().events_appended;
    let paid: Vec<_> = w
        .invoice_events(invoice)
        .await
        .into_iter()
        .filter(|e| matches!(e, InvoiceEvent::PaymentSucceeded { .. }))
        .collect();
    assert_eq!(paid.len(), 1, "{paid:?}");
    let everything = w.everything().await;
    let (_, report) = w.translate(true).await;
    assert_eq!(report.events_appended, 0);
    assert_eq!(w.everything().await, everything);
    assert!(appended >= 2);
}

#[tokio::test]
async fn refunds_made_in_stripes_dashboard_are_recorded_and_recurs_own_add_nothing() {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    let outcome = w
        .billing
        .refund(invoice, usd("10.00"), "requested_by_customer")
        .await
        .unwrap();
    assert!(outcome.completed);
    let mut charge = fixture("legacy_2024_04", "charge");
    charge["id"] = json!("ch_sim_000001");
    charge["metadata"] = json!({ "recur_invoice_id": invoice.to_string() });
    charge["amount"] = json!(9700);
    charge["amount_refunded"] = json!(1500);
    charge["refunded"] = json!(false);
    charge["refunds"]["data"] = json!([
        {"id": "re_sim_000001", "object": "refund", "amount": 1000, "currency": "usd",
         "reason": "requested_by_customer", "status": "succeeded", "charge": "ch_sim_000001"},
        {"id": "re_dashboard_1", "object": "refund", "amount": 500, "currency": "usd",
         "reason": null, "status": "succeeded", "charge": "ch_sim_000001"},
    ]);
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "charge.refunded",
        "evt_refund_1",
        START,
        charge.clone(),
    ))
    .await;
    // The current API does not list the refunds: nothing is booked by the
    // amount (its refund.created books each refund under its re_ id).
    let mut current = fixture("current", "charge");
    current["id"] = json!("ch_sim_000001");
    current["metadata"] = json!({ "recur_invoice_id": invoice.to_string() });
    current["amount"] = json!(9700);
    current["amount_refunded"] = json!(2000);
    current.as_object_mut().unwrap().remove("refunds");
    w.deliver(&stripe_event(
        "current",
        "charge.refunded",
        "evt_refund_2",
        START,
        current,
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(
        effects(&translated),
        [
            ("evt_refund_1".to_owned(), Effect::Applied),
            (
                "evt_refund_2".to_owned(),
                Effect::Nothing("refunds_unlisted")
            ),
        ]
    );
    let refunds: Vec<_> = w
        .invoice_events(invoice)
        .await
        .into_iter()
        .filter_map(|e| match e {
            InvoiceEvent::InvoiceRefunded {
                refund_no,
                amount,
                refund_id,
                reason,
                postings,
                ..
            } => Some((refund_no, amount, refund_id, reason, postings)),
            _ => None,
        })
        .collect();
    assert_eq!(
        refunds,
        [
            (
                1,
                usd("10.00"),
                "re_sim_000001".to_owned(),
                "requested_by_customer".to_owned(),
                vec![
                    posting(Account::Refunds, Side::Debit, "10.00"),
                    posting(Account::GatewayBalance, Side::Credit, "10.00"),
                ]
            ),
            (
                2,
                usd("5.00"),
                "re_dashboard_1".to_owned(),
                "unspecified".to_owned(),
                vec![
                    posting(Account::Refunds, Side::Debit, "5.00"),
                    posting(Account::GatewayBalance, Side::Credit, "5.00"),
                ]
            ),
        ]
    );
    // Delivered again (a new event id, the same refunds): nothing new.
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "charge.refunded",
        "evt_refund_3",
        START,
        charge,
    ))
    .await;
    let (translated, report) = w.translate(false).await;
    assert_eq!(translated[0].effect, Effect::Nothing("refunds_recorded"));
    assert_eq!(report.events_appended, 0);
}

#[tokio::test]
async fn a_dispute_opened_and_lost_withdraws_the_funds_charges_the_fee_and_books_the_loss() {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    // A dispute names only its charge: found through the payment Recur recorded.
    let mut dispute = fixture("current", "dispute");
    dispute["charge"] = json!("ch_sim_000001");
    dispute["amount"] = json!(9700);
    dispute["currency"] = json!("usd");
    dispute["reason"] = json!("fraudulent");
    dispute["status"] = json!("needs_response");
    dispute["balance_transactions"] = json!([
        {"id": "txn_dp", "object": "balance_transaction", "amount": -9700, "fee": 1500, "currency": "usd"},
    ]);
    w.deliver(&stripe_event(
        "current",
        "charge.dispute.created",
        "evt_dp_1",
        START,
        dispute.clone(),
    ))
    .await;
    // Stripe also says the funds were withdrawn: once is enough.
    w.deliver(&stripe_event(
        "current",
        "charge.dispute.funds_withdrawn",
        "evt_dp_2",
        START,
        dispute.clone(),
    ))
    .await;
    let mut lost = dispute;
    lost["status"] = json!("lost");
    w.deliver(&stripe_event(
        "current",
        "charge.dispute.closed",
        "evt_dp_3",
        START + time::Duration::days(30),
        lost,
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(
        translated
            .iter()
            .map(|t| t.effect.clone())
            .collect::<Vec<_>>(),
        [Effect::Applied, Effect::Applied, Effect::Applied]
    );
    assert_eq!(translated[1].events_appended, 0, "withdrawn once");
    let disputes: Vec<_> = w
        .invoice_events(invoice)
        .await
        .into_iter()
        .filter(|e| {
            matches!(
                e,
                InvoiceEvent::DisputeOpened { .. }
                    | InvoiceEvent::DisputeFundsWithdrawn { .. }
                    | InvoiceEvent::DisputeFundsReinstated { .. }
                    | InvoiceEvent::DisputeClosed { .. }
            )
        })
        .collect();
    assert_eq!(disputes.len(), 3, "{disputes:?}");
    assert!(matches!(
        &disputes[0],
        InvoiceEvent::DisputeOpened { dispute_id, charge_id, amount, reason, .. }
            if dispute_id == "dp_1Pgc71B7WZ01zgkWMevJiAUx" && charge_id == "ch_sim_000001"
                && *amount == usd("97.00") && reason == "fraudulent"
    ));
    assert_eq!(
        disputes[1].postings(),
        [
            posting(Account::DisputedFunds, Side::Debit, "97.00"),
            posting(Account::GatewayBalance, Side::Credit, "97.00"),
            posting(Account::DisputeFees, Side::Debit, "15.00"),
            posting(Account::GatewayBalance, Side::Credit, "15.00"),
        ]
    );
    assert!(matches!(
        &disputes[2],
        InvoiceEvent::DisputeClosed { outcome: DisputeOutcome::Lost, amount_lost, .. }
            if *amount_lost == usd("97.00")
    ));
    assert_eq!(
        disputes[2].postings(),
        [
            posting(Account::Disputes, Side::Debit, "97.00"),
            posting(Account::DisputedFunds, Side::Credit, "97.00"),
        ]
    );
    // The books: balanced; the money is gone (97 + the 15 fee out of the
    // gateway), nothing is left held; nothing of it can be refunded.
    let mut balance = TrialBalance::default();
    for event in w.invoice_events(invoice).await {
        balance.add(event.postings()).unwrap();
    }
    assert!(balance.is_balanced());
    assert!(
        balance
            .balance(&Account::DisputedFunds, Currency::USD)
            .is_zero()
    );
    assert_eq!(
        balance.balance(&Account::Disputes, Currency::USD),
        usd("97.00")
    );
    assert_eq!(
        balance.balance(&Account::DisputeFees, Currency::USD),
        usd("15.00")
    );
    assert_eq!(
        balance.balance(&Account::GatewayBalance, Currency::USD),
        usd("-15.00")
    );
    let state = w.billing.invoice(invoice).await.unwrap();
    assert!(state.refundable().unwrap().is_zero());
    assert_eq!(state.status, InvoiceStatus::Paid);
}

#[tokio::test]
async fn a_stripe_customer_update_changes_the_contact_details_encrypted() {
    let w = world().await;
    let customer = w
        .customer(
            None,
            Some(ContactDetails {
                name: "Ada Lovelace".into(),
                email: "ada@example.com".into(),
                phone: Some("+44 20 7946 0001".into()),
            }),
        )
        .await;
    let mut stripe_customer = fixture("current", "customer");
    stripe_customer["metadata"] = json!({ "recur_customer_id": customer.to_string() });
    stripe_customer["email"] = json!("ada.king@analytical.example");
    stripe_customer["name"] = json!("Ada King");
    stripe_customer["phone"] = json!("+44 20 7946 0999");
    let mut event = stripe_event(
        "current",
        "customer.updated",
        "evt_cus_1",
        START,
        stripe_customer,
    );
    // Only the email and the name changed in Stripe.
    event["data"]["previous_attributes"] =
        json!({"email": "ada@example.com", "name": "Ada Lovelace"});
    w.deliver(&event).await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(translated[0].effect, Effect::Applied);
    assert_eq!(
        w.billing.contact(customer).await.unwrap(),
        Some(ContactDetails {
            name: "Ada King".into(),
            email: "ada.king@analytical.example".into(),
            phone: Some("+44 20 7946 0001".into()),
        })
    );
    let contact = w
        .stream(&recur_commands::billing::contact_stream(customer).unwrap())
        .await;
    assert_eq!(contact.last().unwrap().0, "ContactDetailsEncrypted");
    for (_, payload) in w
        .ledger()
        .read_all(Position::START, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.event_type, e.payload))
    {
        assert!(
            !payload.contains("analytical") && !payload.contains("Ada King"),
            "personal data in clear: {payload}"
        );
    }
}

#[tokio::test]
async fn an_automatically_updated_card_replaces_the_card_on_file_and_an_expiring_one_is_noted() {
    let w = world().await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let mut method = fixture("legacy_2024_04", "payment_method");
    method["id"] = json!("pm_card_visa");
    method["customer"] = json!("cus_card");
    method["metadata"] = json!({ "recur_customer_id": customer.to_string() });
    method["card"]["last4"] = json!("1881");
    method["card"]["exp_month"] = json!(3);
    method["card"]["exp_year"] = json!(2032);
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "payment_method.automatically_updated",
        "evt_card_1",
        START,
        method.clone(),
    ))
    .await;
    // An older update delivered late changes nothing.
    let mut older = method;
    older["card"]["exp_year"] = json!(2031);
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "payment_method.automatically_updated",
        "evt_card_0",
        START,
        older,
    ))
    .await;
    // The card on file expires in March 2032 (Stripe names a card source by its own id).
    let mut card = fixture("current", "card");
    card["customer"] = json!("cus_card");
    card["metadata"] = json!({ "recur_customer_id": customer.to_string() });
    card["last4"] = json!("1881");
    card["exp_month"] = json!(3);
    card["exp_year"] = json!(2032);
    w.deliver(&stripe_event(
        "current",
        "customer.source.expiring",
        "evt_card_2",
        START,
        card,
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(
        effects(&translated),
        [
            ("evt_card_1".to_owned(), Effect::Applied),
            (
                "evt_card_0".to_owned(),
                Effect::Nothing("older_than_the_card_on_file")
            ),
            ("evt_card_2".to_owned(), Effect::Applied),
        ]
    );
    let state = w.billing.customer(customer).await.unwrap();
    let on_file = state.payment_method.unwrap();
    assert_eq!(
        (
            on_file.token.as_str(),
            on_file.brand.as_str(),
            on_file.last4.as_str()
        ),
        ("pm_card_visa", "visa", "1881")
    );
    assert_eq!((on_file.exp_month, on_file.exp_year), (3, 2032));
    let expiring = state.card_expiring.unwrap();
    assert_eq!(
        (
            expiring.token.as_str(),
            expiring.exp_month,
            expiring.exp_year
        ),
        ("pm_card_visa", 3, 2032)
    );
    let events = w.stream(&customer.stream().unwrap()).await;
    assert_eq!(events.last().unwrap().0, "CardExpiring");
    let last: CustomerEvent = serde_json::from_str(&events.last().unwrap().1).unwrap();
    assert!(matches!(last, CustomerEvent::CardExpiring { at, .. } if at == START));
}

#[tokio::test]
async fn stripes_published_objects_without_recur_metadata_are_acknowledged_with_no_effect() {
    let w = world().await;
    w.paid().await;
    let kinds = [
        ("invoice.payment_failed", "invoice"),
        ("payment_intent.payment_failed", "payment_intent"),
        ("payment_intent.succeeded", "payment_intent"),
        ("invoice.paid", "invoice"),
        ("charge.refunded", "charge"),
        ("charge.dispute.created", "dispute"),
        ("charge.dispute.closed", "dispute"),
        ("customer.updated", "customer"),
        ("payment_method.automatically_updated", "payment_method"),
        ("customer.source.expiring", "card"),
        ("customer.subscription.created", "subscription"),
        ("some.future_type", "subscription"),
    ];
    let before = w.everything().await;
    for version in ["current", "legacy_2024_04"] {
        for (n, (kind, object)) in kinds.iter().enumerate() {
            let id = format!("evt_fixture_{}_{n}", version.len());
            w.deliver(&stripe_event(
                version,
                kind,
                &id,
                START,
                fixture(version, object),
            ))
            .await;
        }
    }
    let delivered = w.everything().await.len();
    let (translated, report) = w.translate(false).await;
    assert_eq!(translated.len(), kinds.len() * 2);
    assert!(
        translated
            .iter()
            .all(|t| matches!(t.effect, Effect::Nothing(_))),
        "{translated:?}"
    );
    assert_eq!(report.events_appended, 0);
    assert_eq!(w.everything().await.len(), delivered);
    assert_eq!(delivered, before.len() + kinds.len() * 2);
}

/// Copies every event of `from` but the translator's (and the data keys) into
/// `to`: the stored webhooks and everything Recur did itself.
async fn copy_without_translations(from: &Ledger, to: &Ledger) {
    for event in from.read_all(Position::START, 10_000).await.unwrap() {
        if event.metadata.actor.as_deref() == Some(recur_commands::translator::ACTOR) {
            continue;
        }
        let new = NewEvent::from_json(
            event.id,
            &event.event_type,
            event.schema_version,
            event.payload,
        )
        .unwrap()
        .with_metadata(event.metadata);
        let expected = match event.stream_version {
            1 => ExpectedVersion::NoStream,
            n => ExpectedVersion::Exact(n - 1),
        };
        to.append(&event.stream_id, expected, vec![new])
            .await
            .unwrap();
    }
    for key in from.live_data_keys(None, 10_000).await.unwrap() {
        to.insert_data_key(key.owner, &key.wrapped, &key.master_key_id)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn translating_the_stored_webhooks_again_or_into_a_fresh_ledger_gives_the_same_events() {
    let w = world().await;
    // A lost answer paid by Stripe, a dispute opened on Recur's own payment,
    // a refund in Stripe's dashboard, a contact change and a card update.
    let (customer, lost) = w.lost_answer().await;
    let intent = succeeded(
        payment_intent("current", lost, customer, 1, 9700),
        "ch_replay",
    );
    w.deliver(&stripe_event(
        "current",
        "payment_intent.succeeded",
        "evt_r1",
        START,
        intent,
    ))
    .await;
    let (paying, _, paid) = w.paid().await;
    let mut dispute = fixture("legacy_2024_04", "dispute");
    dispute["charge"] = json!("ch_sim_000001");
    dispute["amount"] = json!(2000);
    dispute["currency"] = json!("usd");
    dispute["status"] = json!("needs_response");
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "charge.dispute.created",
        "evt_r2",
        START,
        dispute,
    ))
    .await;
    let mut charge = fixture("current", "charge");
    charge["id"] = json!("ch_replay");
    charge["metadata"] = json!({ "recur_invoice_id": lost.to_string() });
    charge["amount_refunded"] = json!(700);
    charge["refunds"]["data"] =
        json!([{"id": "re_dash", "amount": 700, "currency": "usd", "status": "succeeded"}]);
    w.deliver(&stripe_event(
        "current",
        "charge.refunded",
        "evt_r3",
        START,
        charge,
    ))
    .await;
    w.billing
        .update_contact(
            paying,
            ContactDetails {
                name: "Grace Hopper".into(),
                email: "grace@example.com".into(),
                phone: None,
            },
        )
        .await
        .unwrap();
    let mut stripe_customer = fixture("legacy_2024_04", "customer");
    stripe_customer["metadata"] = json!({ "recur_customer_id": paying.to_string() });
    stripe_customer["email"] = json!("grace@navy.example");
    stripe_customer["name"] = json!("Grace Hopper");
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "customer.updated",
        "evt_r4",
        START,
        stripe_customer,
    ))
    .await;
    let mut method = fixture("current", "payment_method");
    method["id"] = json!("pm_card_visa");
    method["metadata"] = json!({ "recur_customer_id": paying.to_string() });
    method["card"]["exp_year"] = json!(2033);
    w.deliver(&stripe_event(
        "current",
        "payment_method.automatically_updated",
        "evt_r5",
        START,
        method,
    ))
    .await;
    w.clock.advance_to(START + time::Duration::hours(1));
    let (translated, first) = w.translate(false).await;
    assert_eq!(first.translated, 5);
    assert_eq!(first.applied, 5, "{translated:?}");
    let translated_once = w.everything().await;

    // Again, over the same ledger, from the first stored webhook: the same
    // commands find what they appended; nothing is added.
    let (again, report) = w.translate(true).await;
    assert_eq!(again.len(), 5);
    assert_eq!(report.events_appended, 0, "{again:?}");
    assert_eq!(w.everything().await, translated_once);

    // Into a fresh ledger holding the same webhooks and what Recur did itself:
    // the same domain events (the contact's ciphertext aside: a new nonce).
    let fresh = world_with(&w.master_key, Some(w.ledger())).await;
    fresh.clock.advance_to(START + time::Duration::hours(1));
    let (translated, report) = fresh.translate(false).await;
    assert_eq!(report.applied, 5, "{translated:?}");
    let (_, report) = fresh.translate(true).await;
    assert_eq!(report.events_appended, 0);
    let without_ciphertext = |events: Vec<(String, u64, String, String, String)>| {
        events
            .into_iter()
            .map(|(stream, version, kind, meta, payload)| {
                let payload = if kind == "ContactDetailsEncrypted" {
                    String::new()
                } else {
                    payload
                };
                (stream, version, kind, meta, payload)
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        without_ciphertext(fresh.everything().await),
        without_ciphertext(translated_once)
    );
    assert_eq!(
        fresh.billing.contact(paying).await.unwrap(),
        w.billing.contact(paying).await.unwrap()
    );
    assert_eq!(
        fresh.billing.invoice(paid).await.unwrap(),
        w.billing.invoice(paid).await.unwrap()
    );
}

#[tokio::test]
async fn a_dispute_won_gives_the_withheld_funds_back_once() {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    let mut dispute = fixture("legacy_2024_04", "dispute");
    dispute["charge"] = json!("ch_sim_000001");
    dispute["amount"] = json!(9700);
    dispute["currency"] = json!("usd");
    dispute["status"] = json!("under_review");
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "charge.dispute.created",
        "evt_won_1",
        START,
        dispute.clone(),
    ))
    .await;
    let mut won = dispute;
    won["status"] = json!("won");
    // Closed as won before Stripe says the funds were reinstated, then that.
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "charge.dispute.closed",
        "evt_won_2",
        START,
        won.clone(),
    ))
    .await;
    w.deliver(&stripe_event(
        "legacy_2024_04",
        "charge.dispute.funds_reinstated",
        "evt_won_3",
        START,
        won,
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(translated[2].events_appended, 0, "reinstated once");
    let kinds: Vec<String> = w
        .stream(&invoice.stream().unwrap())
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .filter(|kind| kind.starts_with("Dispute"))
        .collect();
    assert_eq!(
        kinds,
        [
            "DisputeOpened",
            "DisputeFundsWithdrawn",
            "DisputeFundsReinstated",
            "DisputeClosed"
        ]
    );
    let mut balance = TrialBalance::default();
    for event in w.invoice_events(invoice).await {
        balance.add(event.postings()).unwrap();
    }
    assert!(balance.is_balanced());
    assert!(
        balance
            .balance(&Account::DisputedFunds, Currency::USD)
            .is_zero()
    );
    assert!(balance.balance(&Account::Disputes, Currency::USD).is_zero());
    assert_eq!(
        balance.balance(&Account::GatewayBalance, Currency::USD),
        usd("97.00")
    );
    assert_eq!(
        w.billing
            .invoice(invoice)
            .await
            .unwrap()
            .refundable()
            .unwrap(),
        usd("97.00"),
        "a dispute won leaves the payment refundable"
    );
}

#[tokio::test]
async fn erasing_a_customer_destroys_the_keys_of_its_stripe_customers_events_and_later_ones_are_not_kept()
 {
    use recur_commands::customer::{ErasureReason, PaymentMethod};
    use recur_commands::tagged::DecodeEvent;
    use recur_commands::webhook::{WebhookEvent, stripe_data_owner};

    let w = world().await;
    let customer = w
        .customer(
            None,
            Some(ContactDetails {
                name: "Grace Hopper".into(),
                email: "grace@example.com".into(),
                phone: None,
            }),
        )
        .await;
    // The card the Stripe gateway attached: it names the Stripe customer.
    w.billing
        .attach_payment_method(
            customer,
            PaymentMethod {
                token: "pm_card_visa".into(),
                brand: "visa".into(),
                last4: "4242".into(),
                exp_month: 12,
                exp_year: 2040,
                provider_customer: Some("cus_grace".into()),
            },
        )
        .await
        .unwrap();
    let mut stripe_customer = fixture("current", "customer");
    stripe_customer["id"] = json!("cus_grace");
    stripe_customer["email"] = json!("grace.hopper@navy.example");
    let event = stripe_event(
        "current",
        "customer.updated",
        "evt_grace_1",
        START,
        stripe_customer.clone(),
    );
    assert!(matches!(w.deliver(&event).await, Ingested::New(_)));
    let kept = w
        .ledger()
        .read_stream(
            &recur_commands::webhook::stripe_event_stream("evt_grace_1").unwrap(),
            0,
            10,
        )
        .await
        .unwrap();
    let WebhookEvent::StripeEventReceived {
        key_owner,
        encrypted,
        ..
    } = WebhookEvent::decode_payload(&kept[0].payload).unwrap();
    assert_eq!(key_owner, stripe_data_owner("cus_grace"));
    let readable = w
        .billing
        .decrypt_personal(CustomerId(key_owner), &encrypted)
        .await
        .unwrap();
    assert!(
        String::from_utf8(readable.unwrap())
            .unwrap()
            .contains("navy.example")
    );

    let erasure = w
        .billing
        .forget(
            customer,
            ErasureReason::RequestedByCustomer,
            recur_ledger::Source::Api,
        )
        .await
        .unwrap();
    assert!(erasure.key_destroyed);
    assert_eq!(erasure.provider_keys_destroyed, 1);
    // The kept Stripe event can no longer be read, though it stays in the ledger.
    assert_eq!(
        w.billing
            .decrypt_personal(CustomerId(key_owner), &encrypted)
            .await
            .unwrap(),
        None
    );
    // A later event about the same Stripe customer is acknowledged, not kept.
    let later = stripe_event(
        "current",
        "customer.updated",
        "evt_grace_2",
        START,
        stripe_customer,
    );
    assert_eq!(w.deliver(&later).await, Ingested::Erased);
    assert_eq!(
        w.ledger()
            .stream_version(&recur_commands::webhook::stripe_event_stream("evt_grace_2").unwrap())
            .await
            .unwrap(),
        0
    );
    // Forgetting again destroys nothing more.
    let again = w
        .billing
        .forget(
            customer,
            ErasureReason::RequestedByCustomer,
            recur_ledger::Source::Api,
        )
        .await
        .unwrap();
    assert_eq!(
        (again.key_destroyed, again.provider_keys_destroyed),
        (false, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stripe_contact_change_racing_one_through_the_api_never_undoes_it() {
    use recur_commands::stripe_facts::ContactPatch;

    let w = world().await;
    for round in 0..12 {
        let before = ContactDetails {
            name: format!("Ada {round}"),
            email: format!("ada.{round}@example.com"),
            phone: Some("+44 20 7946 0001".into()),
        };
        let customer = w.customer(None, Some(before)).await;
        let through_api = ContactDetails {
            name: format!("Ada King {round}"),
            email: format!("ada.king.{round}@example.com"),
            phone: Some("+44 20 7946 0002".into()),
        };
        // Stripe changed only the email.
        let patch = ContactPatch {
            name: None,
            email: Some(format!("countess.{round}@example.com")),
            phone: None,
        };
        let api = {
            let billing = Arc::clone(&w.billing);
            let details = through_api.clone();
            tokio::spawn(async move { billing.update_contact(customer, details).await })
        };
        let stripe = {
            let billing = Arc::clone(&w.billing);
            let patch = patch.clone();
            tokio::spawn(async move { billing.provider_contact(customer, &patch, START).await })
        };
        api.await.unwrap().unwrap();
        stripe.await.unwrap().unwrap();
        let after = w.billing.contact(customer).await.unwrap().unwrap();
        // Either order is fine; the API's name and phone are never lost.
        let patched = ContactDetails {
            email: patch.email.clone().unwrap(),
            ..through_api.clone()
        };
        assert!(
            after == through_api || after == patched,
            "round {round}: the API's change was undone: {after:?}"
        );
    }
}

/// The dispute of `w.paid()`'s charge (97.00 USD), with `transactions` as its
/// balance transactions.
fn chargeback(status: &str, transactions: Value) -> Value {
    let mut dispute = fixture("current", "dispute");
    dispute["charge"] = json!("ch_sim_000001");
    dispute["amount"] = json!(9700);
    dispute["currency"] = json!("usd");
    dispute["reason"] = json!("fraudulent");
    dispute["status"] = json!(status);
    dispute["balance_transactions"] = transactions;
    dispute
}

async fn dispute_books(w: &World, invoice: InvoiceId) -> TrialBalance {
    let mut balance = TrialBalance::default();
    for event in w.invoice_events(invoice).await {
        balance.add(event.postings()).unwrap();
    }
    assert!(balance.is_balanced());
    balance
}

#[tokio::test]
async fn a_dispute_fee_reported_only_by_funds_withdrawn_after_created_is_booked_once() {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    // `created` of a chargeback withdraws the funds, its balance transactions
    // not listed yet; `funds_withdrawn` then carries the fee.
    let created = stripe_event(
        "current",
        "charge.dispute.created",
        "evt_fee_1",
        START,
        chargeback("needs_response", json!([])),
    );
    let withdrawn = chargeback(
        "needs_response",
        json!([{"id": "txn_dp", "object": "balance_transaction", "amount": -9700,
                "fee": 1500, "currency": "usd"}]),
    );
    let withdrawn_event = stripe_event(
        "current",
        "charge.dispute.funds_withdrawn",
        "evt_fee_2",
        START,
        withdrawn.clone(),
    );
    for event in [&created, &created, &withdrawn_event, &withdrawn_event] {
        w.deliver(event).await;
    }
    let (translated, _) = w.translate(false).await;
    assert_eq!(translated.len(), 2, "each kept once");
    // Stripe sends the same stage again under a new event id; and a re-run.
    w.deliver(&stripe_event(
        "current",
        "charge.dispute.funds_withdrawn",
        "evt_fee_3",
        START,
        withdrawn,
    ))
    .await;
    let (_, report) = w.translate(false).await;
    assert_eq!(report.events_appended, 0);
    let (_, report) = w.translate(true).await;
    assert_eq!(report.events_appended, 0);
    let fees: Vec<_> = w
        .invoice_events(invoice)
        .await
        .into_iter()
        .filter(|e| matches!(e, InvoiceEvent::DisputeFeeRecorded { .. }))
        .collect();
    assert_eq!(fees.len(), 1, "{fees:?}");
    assert_eq!(
        fees[0].postings(),
        [
            posting(Account::DisputeFees, Side::Debit, "15.00"),
            posting(Account::GatewayBalance, Side::Credit, "15.00"),
        ]
    );
    let balance = dispute_books(&w, invoice).await;
    assert_eq!(
        balance.balance(&Account::DisputeFees, Currency::USD),
        usd("15.00")
    );
    assert_eq!(
        balance.balance(&Account::DisputedFunds, Currency::USD),
        usd("97.00")
    );
    assert_eq!(
        balance.balance(&Account::GatewayBalance, Currency::USD),
        usd("-15.00")
    );
    let state = w.billing.invoice(invoice).await.unwrap();
    let dispute = state.dispute("dp_1Pgc71B7WZ01zgkWMevJiAUx").unwrap();
    assert_eq!(dispute.fee, usd("15.00"));
}

#[tokio::test]
async fn a_fee_returned_reported_only_by_funds_reinstated_after_closed_won_is_booked_once() {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    let withdrawal = json!({"id": "txn_dp", "object": "balance_transaction", "amount": -9700,
                            "fee": 1500, "currency": "usd"});
    let reinstatement = json!({"id": "txn_dp2", "object": "balance_transaction", "amount": 9700,
                               "fee": -1500, "currency": "usd"});
    w.deliver(&stripe_event(
        "current",
        "charge.dispute.created",
        "evt_ret_1",
        START,
        chargeback("needs_response", json!([withdrawal.clone()])),
    ))
    .await;
    // Closed as won before the reinstatement's balance transaction is listed:
    // the funds come back with no fee returned; funds_reinstated then says it.
    let closed = stripe_event(
        "current",
        "charge.dispute.closed",
        "evt_ret_2",
        START + time::Duration::days(20),
        chargeback("won", json!([withdrawal.clone()])),
    );
    let reinstated = stripe_event(
        "current",
        "charge.dispute.funds_reinstated",
        "evt_ret_3",
        START + time::Duration::days(20),
        chargeback("won", json!([withdrawal.clone(), reinstatement.clone()])),
    );
    for event in [&closed, &closed, &reinstated, &reinstated] {
        w.deliver(event).await;
    }
    let (translated, _) = w.translate(false).await;
    assert_eq!(translated.len(), 3, "each kept once");
    w.deliver(&stripe_event(
        "current",
        "charge.dispute.funds_reinstated",
        "evt_ret_4",
        START + time::Duration::days(21),
        chargeback("won", json!([withdrawal, reinstatement])),
    ))
    .await;
    let (_, report) = w.translate(false).await;
    assert_eq!(report.events_appended, 0);
    let (_, report) = w.translate(true).await;
    assert_eq!(report.events_appended, 0);
    let kinds: Vec<String> = w
        .stream(&invoice.stream().unwrap())
        .await
        .into_iter()
        .map(|(kind, _)| kind)
        .filter(|kind| kind.starts_with("Dispute"))
        .collect();
    assert_eq!(
        kinds,
        [
            "DisputeOpened",
            "DisputeFundsWithdrawn",
            "DisputeFundsReinstated",
            "DisputeClosed",
            "DisputeFeeReturned",
        ]
    );
    let returned: Vec<_> = w
        .invoice_events(invoice)
        .await
        .into_iter()
        .filter(|e| matches!(e, InvoiceEvent::DisputeFeeReturned { .. }))
        .collect();
    assert_eq!(
        returned[0].postings(),
        [
            posting(Account::GatewayBalance, Side::Debit, "15.00"),
            posting(Account::DisputeFees, Side::Credit, "15.00"),
        ]
    );
    let balance = dispute_books(&w, invoice).await;
    assert!(
        balance
            .balance(&Account::DisputeFees, Currency::USD)
            .is_zero()
    );
    assert!(
        balance
            .balance(&Account::DisputedFunds, Currency::USD)
            .is_zero()
    );
    assert_eq!(
        balance.balance(&Account::GatewayBalance, Currency::USD),
        usd("97.00")
    );
}

/// A refund object of the charge `ch_sim_000001` (the one `w.paid()` made),
/// as `refund.*` events carry it.
fn refund_object(id: &str, amount_minor: i64, status: &str, metadata: Option<Value>) -> Value {
    let mut refund = fixture("current", "refund");
    refund["id"] = json!(id);
    refund["amount"] = json!(amount_minor);
    refund["currency"] = json!("usd");
    refund["status"] = json!(status);
    refund["charge"] = json!("ch_sim_000001");
    refund["payment_intent"] = Value::Null;
    match metadata {
        Some(metadata) => refund["metadata"] = metadata,
        None => {
            refund.as_object_mut().unwrap().remove("metadata");
        }
    }
    refund
}

/// `charge.refunded` of the current API (no refunds list) for `invoice`'s charge.
fn charge_refunded_unlisted(invoice: InvoiceId, refunded_minor: i64) -> Value {
    let mut charge = fixture("current", "charge");
    charge["id"] = json!("ch_sim_000001");
    charge["metadata"] = json!({ "recur_invoice_id": invoice.to_string() });
    charge["amount"] = json!(9700);
    charge["amount_refunded"] = json!(refunded_minor);
    charge.as_object_mut().unwrap().remove("refunds");
    charge
}

/// (refund_no, amount, refund_id) of every InvoiceRefunded of `invoice`.
async fn refunds_of(w: &World, invoice: InvoiceId) -> Vec<(u32, Money, String)> {
    w.invoice_events(invoice)
        .await
        .into_iter()
        .filter_map(|e| match e {
            InvoiceEvent::InvoiceRefunded {
                refund_no,
                amount,
                refund_id,
                ..
            } => Some((refund_no, amount, refund_id)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_dashboard_refund_is_booked_by_refund_created_under_its_re_id_and_charge_refunded_adds_nothing()
 {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    let refund = refund_object("re_dash_1", 2000, "succeeded", Some(json!({})));
    w.deliver(&stripe_event(
        "current",
        "refund.created",
        "evt_rf_1",
        START,
        refund.clone(),
    ))
    .await;
    w.deliver(&stripe_event(
        "current",
        "charge.refunded",
        "evt_rf_2",
        START,
        charge_refunded_unlisted(invoice, 2000),
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(
        effects(&translated),
        [
            ("evt_rf_1".to_owned(), Effect::Applied),
            ("evt_rf_2".to_owned(), Effect::Nothing("refunds_unlisted")),
        ]
    );
    assert_eq!(
        refunds_of(&w, invoice).await,
        [(1, usd("20.00"), "re_dash_1".to_owned())]
    );
    // Redelivered, and the same refund reported by its other event types.
    for (kind, id) in [
        ("refund.created", "evt_rf_3"),
        ("refund.updated", "evt_rf_4"),
        ("charge.refund.updated", "evt_rf_5"),
    ] {
        w.deliver(&stripe_event("current", kind, id, START, refund.clone()))
            .await;
    }
    w.deliver(&stripe_event(
        "current",
        "refund.created",
        "evt_rf_1",
        START,
        refund.clone(),
    ))
    .await;
    let (_, report) = w.translate(false).await;
    assert_eq!(report.events_appended, 0);
    let (_, report) = w.translate(true).await;
    assert_eq!(report.events_appended, 0);
    // It fails afterwards: reported, nothing booked or reversed.
    let failed = refund_object("re_dash_1", 2000, "failed", Some(json!({})));
    w.deliver(&stripe_event(
        "current",
        "refund.updated",
        "evt_rf_6",
        START,
        failed,
    ))
    .await;
    let (translated, report) = w.translate(false).await;
    assert_eq!(
        translated[0].effect,
        Effect::Nothing("refund_failed_after_recorded")
    );
    assert_eq!(report.events_appended, 0);
    assert_eq!(refunds_of(&w, invoice).await.len(), 1);
}

#[tokio::test]
async fn charge_refunded_before_refund_created_books_the_refund_once_under_its_re_id() {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    w.deliver(&stripe_event(
        "current",
        "charge.refunded",
        "evt_rv_1",
        START,
        charge_refunded_unlisted(invoice, 2000),
    ))
    .await;
    // Pending first: money not given back yet; its update says it succeeded.
    let pending = refund_object("re_dash_2", 2000, "pending", Some(json!({})));
    w.deliver(&stripe_event(
        "current",
        "refund.created",
        "evt_rv_2",
        START,
        pending,
    ))
    .await;
    let succeeded = refund_object("re_dash_2", 2000, "succeeded", Some(json!({})));
    w.deliver(&stripe_event(
        "current",
        "charge.refund.updated",
        "evt_rv_3",
        START,
        succeeded.clone(),
    ))
    .await;
    w.deliver(&stripe_event(
        "current",
        "refund.updated",
        "evt_rv_4",
        START,
        succeeded,
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(
        effects(&translated),
        [
            ("evt_rv_1".to_owned(), Effect::Nothing("refunds_unlisted")),
            ("evt_rv_2".to_owned(), Effect::Nothing("refund_pending")),
            ("evt_rv_3".to_owned(), Effect::Applied),
            ("evt_rv_4".to_owned(), Effect::Nothing("refunds_recorded")),
        ]
    );
    assert_eq!(
        refunds_of(&w, invoice).await,
        [(1, usd("20.00"), "re_dash_2".to_owned())]
    );
    let (_, report) = w.translate(true).await;
    assert_eq!(report.events_appended, 0);
}

#[tokio::test]
async fn recurs_pending_refund_is_matched_by_its_recur_refund_key_not_by_a_dashboard_refunds_amount()
 {
    let w = world().await;
    let (_, _, invoice) = w.paid().await;
    // Recur asks for 40.00 back; the gateway's answer is lost: pending.
    w.gateway.fail_next_calls(1);
    let _ = w
        .billing
        .refund(invoice, usd("40.00"), "requested_by_customer")
        .await;
    let state = w.billing.invoice(invoice).await.unwrap();
    let pending: Vec<_> = state.pending_refunds().map(|r| r.refund_no).collect();
    assert_eq!(pending, [1]);
    let key = format!("{invoice}-refund-1");
    // Someone refunds 40.00 in Stripe's dashboard: metadata without
    // recur_refund, so not Recur's answer although the amount is the same.
    w.deliver(&stripe_event(
        "current",
        "refund.created",
        "evt_key_1",
        START,
        refund_object("re_dash_40", 4000, "succeeded", Some(json!({}))),
    ))
    .await;
    // Then Recur's own, carrying the key its gateway wrote.
    w.deliver(&stripe_event(
        "current",
        "refund.created",
        "evt_key_2",
        START,
        refund_object(
            "re_recur_40",
            4000,
            "succeeded",
            Some(json!({ "recur_refund": key })),
        ),
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert!(
        translated.iter().all(|t| t.effect == Effect::Applied),
        "{translated:?}"
    );
    assert_eq!(
        refunds_of(&w, invoice).await,
        [
            (2, usd("40.00"), "re_dash_40".to_owned()),
            (1, usd("40.00"), "re_recur_40".to_owned()),
        ]
    );
    let state = w.billing.invoice(invoice).await.unwrap();
    assert_eq!(state.pending_refunds().count(), 0);
    // Redelivered: nothing new.
    let (_, report) = w.translate(true).await;
    assert_eq!(report.events_appended, 0);
    // A refund without any metadata object (whose origin cannot be told) is
    // still matched to a pending refund of its amount, as before.
    w.gateway.fail_next_calls(1);
    let _ = w
        .billing
        .refund(invoice, usd("10.00"), "requested_by_customer")
        .await;
    w.deliver(&stripe_event(
        "current",
        "refund.created",
        "evt_key_3",
        START,
        refund_object("re_unknown_10", 1000, "succeeded", None),
    ))
    .await;
    let (translated, _) = w.translate(false).await;
    assert_eq!(translated[0].effect, Effect::Applied);
    assert_eq!(
        refunds_of(&w, invoice).await[2],
        (3, usd("10.00"), "re_unknown_10".to_owned())
    );
    assert_eq!(
        w.billing
            .invoice(invoice)
            .await
            .unwrap()
            .pending_refunds()
            .count(),
        0
    );
}
