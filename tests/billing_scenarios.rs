//! Hand-computed billing scenarios through the real command path (billing service,
//! scheduler, simulated gateway) on a real ledger: exact amounts, exact postings.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use recur_commands::billing::{NewCoupon, NewCustomer, NewSubscription, PlanChange, Trial};
use recur_commands::coupon::{CouponDuration, Discount};
use recur_commands::customer::ContactDetails;
use recur_commands::customer::{PaymentMethod, Segment};
use recur_commands::dunning::{CallOutcome, Delivery, Ending, OfferGiven, Template};
use recur_commands::dunning_policy::{Channel, FinalAction};
use recur_commands::invoice::{InvoiceEvent, InvoiceStatus};
use recur_commands::postings::{Posting, Side, TrialBalance};
use recur_commands::privacy::{MasterKey, Vault};
use recur_commands::recovery::{Messenger, RecordingMessenger};
use recur_commands::scheduler::Scheduler;
use recur_commands::subscription::{CancelReason, SubscriptionStatus, Timing};
use recur_commands::tax::TaxLocation;
use recur_commands::{
    Billing, BillingError, Catalog, CouponCode, CustomerId, DomainError, InvoiceId,
    SimulatedGateway, SubscriptionId,
};
use recur_ledger::{Clock, Ledger, Money, Position, TestClock};
use rust_decimal::Decimal;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

struct World {
    clock: TestClock,
    billing: Arc<Billing>,
    scheduler: Scheduler,
    messenger: Arc<RecordingMessenger>,
    gateway: SimulatedGateway,
    _store: common::TestLedger,
}

async fn world(start: OffsetDateTime) -> World {
    let clock = TestClock::at(start);
    let store = common::sqlite_with(Arc::new(clock.clone())).await;
    world_on(clock, store).await
}

async fn world_on(clock: TestClock, store: common::TestLedger) -> World {
    let gateway = SimulatedGateway::new();
    let (_, master_key) = MasterKey::generate().unwrap();
    let billing = Arc::new(
        Billing::open(
            store.ledger.clone(),
            Catalog::default_catalog().unwrap(),
            Arc::new(gateway.clone()),
        )
        .await
        .unwrap()
        .with_vault(Arc::new(Vault::new(
            MasterKey::parse(&master_key).unwrap(),
            vec![],
        ))),
    );
    let messenger = Arc::new(RecordingMessenger::default());
    let scheduler = Scheduler::new(Arc::clone(&billing), 4)
        .with_messenger(Arc::clone(&messenger) as Arc<dyn Messenger>);
    World {
        clock,
        billing,
        messenger,
        scheduler,
        gateway,
        _store: store,
    }
}

impl World {
    fn ledger(&self) -> &Ledger {
        self.billing.ledger()
    }

    async fn at(&self, instant: OffsetDateTime) {
        self.clock.advance_to(instant);
        let report = self.scheduler.tick().await.unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }

    async fn customer(&self, card: Option<&str>, tax: Option<TaxLocation>) -> CustomerId {
        let id = self
            .billing
            .create_customer(NewCustomer {
                segment: Segment::Standard,
                tax_location: tax,
                contact: None,
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
        plan: &str,
        trial: Trial,
        coupon: Option<&str>,
    ) -> SubscriptionId {
        self.billing
            .subscribe(NewSubscription {
                customer_id: customer,
                plan_id: plan.into(),
                price_id: None,
                quantity: 1,
                trial,
                coupon: coupon.map(|c| CouponCode::parse(c).unwrap()),
            })
            .await
            .unwrap()
    }

    async fn invoices_of(&self, sub: SubscriptionId) -> Vec<recur_commands::invoice::Invoice> {
        let state = self.billing.subscription(sub).await.unwrap();
        let mut out = Vec::new();
        for id in state.invoices {
            out.push(self.billing.invoice(id).await.unwrap());
        }
        out
    }

    /// Each financial event of an invoice, as (type, postings).
    async fn postings(&self, invoice: InvoiceId) -> Vec<(String, Vec<Posting>)> {
        let events = self
            .ledger()
            .read_stream(&invoice.stream().unwrap(), 1, 1_000)
            .await
            .unwrap();
        events
            .iter()
            .filter_map(|recorded| {
                let event: InvoiceEvent = serde_json::from_str(&recorded.payload).unwrap();
                let postings = event.postings().to_vec();
                (!postings.is_empty()).then(|| (recorded.event_type.clone(), postings))
            })
            .collect()
    }

    async fn postings_of(&self, invoice: InvoiceId, event_type: &str) -> Vec<Posting> {
        self.postings(invoice)
            .await
            .into_iter()
            .find(|(t, _)| t == event_type)
            .map(|(_, p)| p)
            .unwrap_or_else(|| panic!("no {event_type} on {invoice}"))
    }

    /// The trial balance over the whole ledger, checked to be zero after every event.
    async fn trial_balance(&self) -> TrialBalance {
        let mut balance = TrialBalance::default();
        let mut after = Position::START;
        loop {
            let page = self.ledger().read_all(after, 1_000).await.unwrap();
            let Some(last) = page.last() else { break };
            after = last.position;
            for recorded in &page {
                if recorded.stream_id.category() != "invoice" {
                    continue;
                }
                let event: InvoiceEvent = serde_json::from_str(&recorded.payload).unwrap();
                balance.add(event.postings()).unwrap();
                assert!(
                    balance.is_balanced(),
                    "unbalanced after {}",
                    recorded.position.0
                );
            }
        }
        balance
    }

    async fn last_position(&self) -> Position {
        self.ledger().last_position().await.unwrap()
    }
}

fn usd(amount: &str) -> Money {
    Money::parse(amount, "USD").unwrap()
}

fn dr(account: &str, amount: &str) -> Posting {
    Posting {
        account: account.parse().unwrap(),
        side: Side::Debit,
        amount: usd(amount),
    }
}

fn cr(account: &str, amount: &str) -> Posting {
    Posting {
        account: account.parse().unwrap(),
        side: Side::Credit,
        amount: usd(amount),
    }
}

fn sorted(mut postings: Vec<Posting>) -> Vec<String> {
    let mut lines: Vec<String> = postings
        .drain(..)
        .map(|p| format!("{:?} {} {}", p.side, p.account, p.amount.amount()))
        .collect();
    lines.sort();
    lines
}

fn assert_postings(actual: Vec<Posting>, expected: Vec<Posting>) {
    assert_eq!(sorted(actual), sorted(expected));
}

#[tokio::test]
async fn trial_converts_to_a_paid_period_and_renews_on_the_anchor_day() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "community_access", Trial::PlanDefault, None)
        .await;
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.status, SubscriptionStatus::Trialing);
    assert_eq!(state.trial_end, Some(datetime!(2026-01-31 00:00 UTC)));
    assert!(state.invoices.is_empty(), "no invoice during the trial");

    w.at(datetime!(2026-01-30 23:59:59 UTC)).await;
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::Trialing
    );

    w.at(datetime!(2026-01-31 00:00 UTC)).await;
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.status, SubscriptionStatus::Active);
    let period = state.current_period.unwrap();
    assert_eq!(
        (period.start, period.end),
        (
            datetime!(2026-01-31 00:00 UTC),
            datetime!(2026-02-28 00:00 UTC)
        )
    );
    let invoices = w.invoices_of(sub).await;
    assert_eq!(invoices.len(), 1);
    let first = &invoices[0];
    assert_eq!(first.status, InvoiceStatus::Paid);
    assert_eq!(first.totals.as_ref().unwrap().total, usd("97.00"));
    let id = first.id.unwrap();
    assert_postings(
        w.postings_of(id, "InvoiceFinalized").await,
        vec![
            cr("deferred_revenue:community_access", "97.00"),
            dr("accounts_receivable", "97.00"),
        ],
    );
    assert_postings(
        w.postings_of(id, "PaymentSucceeded").await,
        vec![
            dr("gateway_balance", "97.00"),
            cr("accounts_receivable", "97.00"),
        ],
    );

    // Feb 28: the period ends; the next runs to Mar 31 (the anchor's day, not Mar 28).
    w.at(datetime!(2026-02-28 00:00 UTC)).await;
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(
        state.current_period.unwrap().end,
        datetime!(2026-03-31 00:00 UTC)
    );
    assert_postings(
        w.postings_of(id, "RevenueRecognized").await,
        vec![
            dr("deferred_revenue:community_access", "97.00"),
            cr("revenue:community_access", "97.00"),
        ],
    );
    let balance = w.trial_balance().await;
    assert_eq!(
        balance.balance(&"gateway_balance".parse().unwrap(), usd("0").currency()),
        usd("194.00")
    );
    assert_eq!(
        balance.balance(
            &"revenue:community_access".parse().unwrap(),
            usd("0").currency()
        ),
        usd("-97.00")
    );
    assert_eq!(w.gateway.charges_made(), 2);
}

#[tokio::test]
async fn elite_to_group_downgrade_mid_cycle_credits_unused_time_to_the_second() {
    let w = world(datetime!(2026-04-01 00:00 UTC)).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "elite_coaching", Trial::Skip, None)
        .await;
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::Active
    );

    // Apr 11 08:20: 1,698,000 of the period's 2,592,000 seconds are unused.
    // Credit 5000 × 1698000 / 2592000 = 3275.4629… → 3275.46;
    // charge 1500 × 1698000 / 2592000 = 982.6388… → 982.64; net −2292.82.
    w.clock.advance_to(datetime!(2026-04-11 08:20 UTC));
    w.billing
        .change_plan(
            sub,
            PlanChange {
                plan_id: "group_coaching".into(),
                price_id: None,
                quantity: None,
                timing: Timing::Now,
            },
        )
        .await
        .unwrap();
    let invoices = w.invoices_of(sub).await;
    assert_eq!(invoices.len(), 2);
    let proration = &invoices[1];
    let amounts: Vec<Money> = proration.lines.iter().map(|l| l.amount).collect();
    assert_eq!(amounts, vec![usd("-3275.46"), usd("982.64")]);
    let totals = proration.totals.as_ref().unwrap();
    assert_eq!(totals.total, usd("-2292.82"));
    assert_eq!(totals.amount_due, usd("0"));
    assert_eq!(proration.status, InvoiceStatus::Paid);
    assert_postings(
        w.postings_of(proration.id.unwrap(), "InvoiceFinalized")
            .await,
        vec![
            dr("deferred_revenue:elite_coaching", "3275.46"),
            cr("deferred_revenue:group_coaching", "982.64"),
            cr("customer_credit", "2292.82"),
        ],
    );
    assert_eq!(
        w.billing.customer(customer).await.unwrap().credit_balance,
        Some(usd("2292.82"))
    );

    // May 1: 1500.00 paid entirely from credit; Jun 1: the rest of the credit, 792.82, then 707.18 charged.
    w.at(datetime!(2026-05-01 00:00 UTC)).await;
    let may = &w.invoices_of(sub).await[2];
    assert_eq!(may.totals.as_ref().unwrap().credit_applied, usd("1500.00"));
    assert_eq!(may.status, InvoiceStatus::Paid);
    assert_postings(
        w.postings_of(may.id.unwrap(), "InvoiceFinalized").await,
        vec![
            cr("deferred_revenue:group_coaching", "1500.00"),
            dr("customer_credit", "1500.00"),
        ],
    );
    w.at(datetime!(2026-06-01 00:00 UTC)).await;
    let june = &w.invoices_of(sub).await[3];
    let totals = june.totals.as_ref().unwrap();
    assert_eq!(
        (totals.credit_applied, totals.amount_due),
        (usd("792.82"), usd("707.18"))
    );
    assert_eq!(june.amount_paid, Some(usd("707.18")));
    assert_eq!(
        w.billing.customer(customer).await.unwrap().credit_balance,
        Some(usd("0.00"))
    );
    let balance = w.trial_balance().await;
    assert!(
        balance
            .balance(&"customer_credit".parse().unwrap(), usd("0").currency())
            .is_zero()
    );
}

#[tokio::test]
async fn community_upgrade_with_a_twenty_percent_coupon_for_three_months() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    w.billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("WELCOME20").unwrap(),
            discount: Discount::PercentOff {
                percent: Decimal::from(20),
            },
            duration: CouponDuration::Repeating { months: 3 },
            max_redemptions: Some(100),
            redeem_by: None,
        })
        .await
        .unwrap();
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "community_access", Trial::Skip, Some("WELCOME20"))
        .await;
    let jan = &w.invoices_of(sub).await[0];
    assert_eq!(jan.totals.as_ref().unwrap().total, usd("77.60"));
    assert_postings(
        w.postings_of(jan.id.unwrap(), "InvoiceFinalized").await,
        vec![
            cr("deferred_revenue:community_access", "97.00"),
            dr("discounts", "19.40"),
            dr("accounts_receivable", "77.60"),
        ],
    );
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    assert_eq!(
        w.invoices_of(sub).await[1].totals.as_ref().unwrap().total,
        usd("77.60")
    );

    // Feb 15, half of February left: credit −48.50 and charge 750.00, each 20 % off.
    w.clock.advance_to(datetime!(2026-02-15 00:00 UTC));
    w.billing
        .change_plan(
            sub,
            PlanChange {
                plan_id: "group_coaching".into(),
                price_id: None,
                quantity: None,
                timing: Timing::Now,
            },
        )
        .await
        .unwrap();
    let upgrade = &w.invoices_of(sub).await[2];
    let totals = upgrade.totals.as_ref().unwrap();
    assert_eq!(
        (totals.subtotal, totals.discount, totals.total),
        (usd("701.50"), usd("140.30"), usd("561.20"))
    );
    assert_eq!(upgrade.status, InvoiceStatus::Paid);
    assert_postings(
        w.postings_of(upgrade.id.unwrap(), "InvoiceFinalized").await,
        vec![
            dr("deferred_revenue:community_access", "48.50"),
            cr("discounts", "9.70"),
            cr("deferred_revenue:group_coaching", "750.00"),
            dr("discounts", "150.00"),
            dr("accounts_receivable", "561.20"),
        ],
    );
    // Mar 1 is within three months of Jan 1: 20 % off; Apr 1 is not.
    w.at(datetime!(2026-03-01 00:00 UTC)).await;
    assert_eq!(
        w.invoices_of(sub).await[3].totals.as_ref().unwrap().total,
        usd("1200.00")
    );
    w.at(datetime!(2026-04-01 00:00 UTC)).await;
    assert_eq!(
        w.invoices_of(sub).await[4].totals.as_ref().unwrap().total,
        usd("1500.00")
    );
    w.trial_balance().await;
}

#[tokio::test]
async fn cancel_at_period_end_stops_billing_and_can_be_undone_before() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let leaving = w
        .subscribe(customer, "community_access", Trial::Skip, None)
        .await;
    let staying = w
        .subscribe(customer, "community_access", Trial::Skip, None)
        .await;
    w.clock.advance_to(datetime!(2026-01-10 00:00 UTC));
    let state = w.billing.cancel(leaving, Timing::PeriodEnd).await.unwrap();
    assert!(state.cancel_at_period_end);
    assert_eq!(state.status, SubscriptionStatus::Active);
    w.billing.cancel(staying, Timing::PeriodEnd).await.unwrap();
    w.billing.undo_cancellation(staying).await.unwrap();

    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let left = w.billing.subscription(leaving).await.unwrap();
    assert_eq!(left.status, SubscriptionStatus::Canceled);
    assert_eq!(left.canceled_at, Some(datetime!(2026-02-01 00:00 UTC)));
    assert_eq!(left.cancel_reason, Some(CancelReason::Requested));
    assert_eq!(left.invoices.len(), 1, "no invoice after the cancellation");
    assert_eq!(
        w.billing
            .subscription(staying)
            .await
            .unwrap()
            .invoices
            .len(),
        2
    );
    // Its paid period's revenue is still recognised at the period end.
    assert_postings(
        w.postings_of(left.invoices[0], "RevenueRecognized").await,
        vec![
            dr("deferred_revenue:community_access", "97.00"),
            cr("revenue:community_access", "97.00"),
        ],
    );
}

#[tokio::test]
async fn renewal_after_declined_card_moves_subscription_to_past_due_and_recovers() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "group_coaching", Trial::Skip, None)
        .await;
    // The card is replaced by one that attaches but fails when charged.
    let failing = SimulatedGateway::tokenize("4000000000000341", 12, 2030).unwrap();
    w.billing
        .attach_payment_method(customer, failing)
        .await
        .unwrap();

    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.status, SubscriptionStatus::PastDue);
    let feb = &w.invoices_of(sub).await[1];
    assert_eq!(feb.status, InvoiceStatus::Open);
    let attempt = &feb.attempts[0];
    assert_eq!(
        attempt.idempotency_key,
        format!("{}-attempt-1", feb.id.unwrap())
    );
    assert!(
        matches!(&attempt.outcome, Some(recur_commands::invoice::ChargeOutcome::Declined { decline_code, .. }) if decline_code == "card_declined")
    );
    assert_eq!(
        attempt.next_retry_at,
        Some(datetime!(2026-02-01 01:00 UTC)),
        "standard policy: first retry after 1 h"
    );

    // The customer puts a working card on file; the retry an hour later succeeds.
    let working = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
    w.billing
        .attach_payment_method(customer, working)
        .await
        .unwrap();
    w.at(datetime!(2026-02-01 00:59 UTC)).await;
    assert_eq!(
        w.invoices_of(sub).await[1].attempts.len(),
        1,
        "not before the retry time"
    );
    w.at(datetime!(2026-02-01 01:00 UTC)).await;
    let feb = &w.invoices_of(sub).await[1];
    assert_eq!(feb.status, InvoiceStatus::Paid);
    assert_eq!(feb.attempts.len(), 2);
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::Active
    );
}

#[tokio::test]
async fn a_spent_retry_policy_writes_the_invoice_off_and_cancels() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "community_access", Trial::Skip, None)
        .await;
    let failing = SimulatedGateway::tokenize("4000000000000341", 12, 2030).unwrap();
    w.billing
        .attach_payment_method(customer, failing)
        .await
        .unwrap();
    // Standard: retries after 1 h, 1 d, 3 d, 1 w and 2 w; six attempts in all.
    let mut at = datetime!(2026-02-01 00:00 UTC);
    for delay_h in [0, 1, 24, 72, 168, 336] {
        at += Duration::hours(delay_h);
        w.at(at).await;
    }
    let feb = &w.invoices_of(sub).await[1];
    assert_eq!(feb.attempts.len(), 6);
    assert_eq!(feb.status, InvoiceStatus::Uncollectible);
    assert_postings(
        w.postings_of(feb.id.unwrap(), "InvoiceMarkedUncollectible")
            .await,
        vec![dr("bad_debt", "97.00"), cr("accounts_receivable", "97.00")],
    );
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.status, SubscriptionStatus::Canceled);
    assert_eq!(state.cancel_reason, Some(CancelReason::PaymentFailed));
    w.trial_balance().await;
}

#[tokio::test]
async fn course_purchase_with_exclusive_and_with_inclusive_tax() {
    let w = world(datetime!(2026-03-01 00:00 UTC)).await;
    // Texas, exclusive 6.25 %: 997.00 × 0.0625 = 62.3125 → 62.31 on top.
    let texan = w
        .customer(
            Some("4242424242424242"),
            Some(TaxLocation::parse("US", Some("TX"), Some("73301")).unwrap()),
        )
        .await;
    let invoice = w
        .billing
        .purchase(texan, "self_paced_course", None)
        .await
        .unwrap();
    let state = w.billing.invoice(invoice).await.unwrap();
    let totals = state.totals.as_ref().unwrap();
    assert_eq!((totals.tax, totals.total), (usd("62.31"), usd("1059.31")));
    assert_eq!(state.status, InvoiceStatus::Paid);
    assert_postings(
        w.postings_of(invoice, "InvoiceFinalized").await,
        vec![
            cr("revenue:self_paced_course", "997.00"),
            cr("tax_payable:US-TX", "62.31"),
            dr("accounts_receivable", "1059.31"),
        ],
    );
    assert_postings(
        w.postings_of(invoice, "PaymentSucceeded").await,
        vec![
            dr("gateway_balance", "1059.31"),
            cr("accounts_receivable", "1059.31"),
        ],
    );

    // Germany, inclusive 19 %: 997.00 × 0.19 / 1.19 = 159.1848… → 159.18 inside the price.
    let german = w
        .customer(
            Some("4242424242424242"),
            Some(TaxLocation::parse("DE", None, None).unwrap()),
        )
        .await;
    let invoice = w
        .billing
        .purchase(german, "self_paced_course", None)
        .await
        .unwrap();
    let totals = w.billing.invoice(invoice).await.unwrap().totals.unwrap();
    assert_eq!((totals.tax, totals.total), (usd("159.18"), usd("997.00")));
    assert_postings(
        w.postings_of(invoice, "InvoiceFinalized").await,
        vec![
            cr("revenue:self_paced_course", "837.82"),
            cr("tax_payable:DE", "159.18"),
            dr("accounts_receivable", "997.00"),
        ],
    );

    // No tax location: no tax, and the invoice says why.
    let unknown = w.customer(Some("4242424242424242"), None).await;
    let invoice = w
        .billing
        .purchase(unknown, "self_paced_course", None)
        .await
        .unwrap();
    let totals = w.billing.invoice(invoice).await.unwrap().totals.unwrap();
    assert_eq!(totals.total, usd("997.00"));
    assert_eq!(totals.tax_basis, recur_commands::tax::TaxBasis::NoLocation);
}

#[tokio::test]
async fn a_partial_refund_gives_back_revenue_and_its_tax_share() {
    let w = world(datetime!(2026-03-01 00:00 UTC)).await;
    let german = w
        .customer(
            Some("4242424242424242"),
            Some(TaxLocation::parse("DE", None, None).unwrap()),
        )
        .await;
    let invoice = w
        .billing
        .purchase(german, "self_paced_course", None)
        .await
        .unwrap();
    // 300.00 of 997.00, of which tax 300 × 159.18 / 997 = 47.8977… → 47.90.
    let refund_no = w
        .billing
        .refund(invoice, usd("300.00"), "requested_by_customer")
        .await
        .unwrap();
    assert_eq!((refund_no.refund_no, refund_no.completed), (1, true));
    assert_postings(
        w.postings_of(invoice, "InvoiceRefunded").await,
        vec![
            dr("refunds", "252.10"),
            dr("tax_payable:DE", "47.90"),
            cr("gateway_balance", "300.00"),
        ],
    );
    let state = w.billing.invoice(invoice).await.unwrap();
    assert_eq!(state.amount_refunded, Some(usd("300.00")));
    // More than what is left (697.00) is refused and writes nothing.
    let before = w.last_position().await;
    let error = w
        .billing
        .refund(invoice, usd("697.01"), "requested_by_customer")
        .await
        .unwrap_err();
    assert_eq!(error.code(), "refund_exceeds_paid");
    assert_eq!(w.last_position().await, before);
    w.billing
        .refund(invoice, usd("697.00"), "requested_by_customer")
        .await
        .unwrap();
    let balance = w.trial_balance().await;
    assert!(
        balance
            .balance(&"gateway_balance".parse().unwrap(), usd("0").currency())
            .is_zero()
    );
}

#[tokio::test]
async fn bad_input_gets_typed_errors_and_writes_nothing() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    w.billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("SPRING").unwrap(),
            discount: Discount::AmountOff {
                amount: usd("10.00"),
            },
            duration: CouponDuration::Once,
            max_redemptions: None,
            redeem_by: Some(datetime!(2025-12-31 23:59:59 UTC)),
        })
        .await
        .unwrap();
    w.billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("EUROS").unwrap(),
            discount: Discount::AmountOff {
                amount: Money::parse("10.00", "EUR").unwrap(),
            },
            duration: CouponDuration::Once,
            max_redemptions: None,
            redeem_by: None,
        })
        .await
        .unwrap();
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "community_access", Trial::Skip, None)
        .await;
    let paid = w.billing.subscription(sub).await.unwrap().invoices[0];
    w.billing.cancel(sub, Timing::Now).await.unwrap();
    let before = w.last_position().await;

    let new = |plan: &str, coupon: Option<&str>| NewSubscription {
        customer_id: customer,
        plan_id: plan.into(),
        price_id: None,
        quantity: 1,
        trial: Trial::Skip,
        coupon: coupon.map(|c| CouponCode::parse(c).unwrap()),
    };
    let code = |r: Result<SubscriptionId, BillingError>| r.unwrap_err().code();
    assert_eq!(
        code(w.billing.subscribe(new("platinum", None)).await),
        "plan_not_found"
    );
    assert_eq!(
        code(w.billing.subscribe(new("self_paced_course", None)).await),
        "wrong_price_kind"
    );
    assert_eq!(
        code(
            w.billing
                .subscribe(new("community_access", Some("SPRING")))
                .await
        ),
        "coupon_expired"
    );
    assert_eq!(
        code(
            w.billing
                .subscribe(new("community_access", Some("EUROS")))
                .await
        ),
        "currency_mismatch"
    );
    assert_eq!(
        code(
            w.billing
                .subscribe(new("community_access", Some("NOSUCH")))
                .await
        ),
        "coupon_not_found"
    );
    let mut zero = new("community_access", None);
    zero.quantity = 0;
    assert_eq!(code(w.billing.subscribe(zero).await), "invalid_quantity");
    assert_eq!(
        w.last_position().await,
        before,
        "a refused command wrote something"
    );
    w.billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("ONLYONE").unwrap(),
            discount: Discount::PercentOff {
                percent: Decimal::from(50),
            },
            duration: CouponDuration::Once,
            max_redemptions: Some(1),
            redeem_by: None,
        })
        .await
        .unwrap();
    w.billing
        .purchase(
            customer,
            "self_paced_course",
            Some(CouponCode::parse("ONLYONE").unwrap()),
        )
        .await
        .unwrap();
    let before = w.last_position().await;
    assert_eq!(
        code(
            w.billing
                .subscribe(new("community_access", Some("ONLYONE")))
                .await
        ),
        "coupon_exhausted"
    );
    let euros = Some(CouponCode::parse("EUROS").unwrap());
    let purchase = w
        .billing
        .purchase(customer, "self_paced_course", euros)
        .await;
    assert_eq!(purchase.unwrap_err().code(), "currency_mismatch");
    assert_eq!(
        w.billing.cancel(sub, Timing::Now).await.unwrap_err().code(),
        "invalid_transition"
    );
    assert_eq!(
        w.billing
            .cancel(sub, Timing::PeriodEnd)
            .await
            .unwrap_err()
            .code(),
        "invalid_transition"
    );
    assert_eq!(
        w.billing
            .refund(
                paid,
                Money::parse("-5.00", "USD").unwrap(),
                "requested_by_customer"
            )
            .await
            .unwrap_err()
            .code(),
        "amount_not_positive"
    );
    assert_eq!(
        w.billing
            .refund(
                paid,
                Money::parse("5.00", "EUR").unwrap(),
                "requested_by_customer"
            )
            .await
            .unwrap_err()
            .code(),
        "currency_mismatch"
    );
    assert_eq!(
        w.billing
            .refund(
                paid,
                Money::parse("5.001", "USD").unwrap(),
                "requested_by_customer"
            )
            .await
            .unwrap_err()
            .code(),
        "not_in_minor_units"
    );
    assert_eq!(
        Money::parse("12,00", "USD")
            .map_err(DomainError::from)
            .unwrap_err()
            .code(),
        "invalid_amount"
    );
    let card_as_token = PaymentMethod {
        token: "4242424242424242".into(),
        brand: "visa".into(),
        last4: "4242".into(),
        exp_month: 12,
        exp_year: 2030,
        provider_customer: None,
    };
    assert_eq!(
        w.billing
            .attach_payment_method(customer, card_as_token)
            .await
            .unwrap_err()
            .code(),
        "card_number_rejected"
    );
    let expired = SimulatedGateway::tokenize("4242424242424242", 11, 2025).unwrap();
    assert_eq!(
        w.billing
            .attach_payment_method(customer, expired)
            .await
            .unwrap_err()
            .code(),
        "invalid_field"
    );
    assert_eq!(
        w.billing
            .purchase(CustomerId::new_at(w.clock.now()), "self_paced_course", None)
            .await
            .unwrap_err()
            .code(),
        "customer_not_found"
    );
    assert_eq!(
        w.last_position().await,
        before,
        "a refused command wrote something"
    );
}

/// One thing a customer or the clock does, for random sequences.
#[derive(Clone, Debug)]
enum Op {
    Subscribe { plan: u8, trial: bool, card: u8 },
    Buy { card: u8 },
    Change { sub: u8, plan: u8, now: bool },
    Cancel { sub: u8, now: bool },
    Pause { sub: u8 },
    Resume { sub: u8 },
    Refund { invoice: u8, permille: u16 },
    Wait { hours: u16 },
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    prop_oneof![
        3 => (0u8..3, any::<bool>(), 0u8..4).prop_map(|(plan, trial, card)| Op::Subscribe { plan, trial, card }),
        1 => (0u8..4).prop_map(|card| Op::Buy { card }),
        2 => (any::<u8>(), 0u8..3, any::<bool>()).prop_map(|(sub, plan, now)| Op::Change { sub, plan, now }),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(sub, now)| Op::Cancel { sub, now }),
        1 => any::<u8>().prop_map(|sub| Op::Pause { sub }),
        1 => any::<u8>().prop_map(|sub| Op::Resume { sub }),
        1 => (any::<u8>(), 1u16..=1000).prop_map(|(invoice, permille)| Op::Refund { invoice, permille }),
        4 => (1u16..1500).prop_map(|hours| Op::Wait { hours }),
    ]
}

const PLANS: [&str; 3] = ["elite_coaching", "group_coaching", "community_access"];
const CARDS: [&str; 4] = [
    "4242424242424242",
    "4000000000000341",
    "5555555555554444",
    "4242424242424242",
];

async fn run_ops(ops: Vec<Op>) {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let mut subs: Vec<SubscriptionId> = Vec::new();
    let mut invoices: Vec<InvoiceId> = Vec::new();
    let pick =
        |list: &[SubscriptionId], i: u8| list.get(usize::from(i) % list.len().max(1)).copied();
    for op in ops {
        match op {
            Op::Subscribe { plan, trial, card } => {
                let customer = w.customer(Some(CARDS[usize::from(card)]), None).await;
                let trial = if trial {
                    Trial::PlanDefault
                } else {
                    Trial::Skip
                };
                subs.push(
                    w.subscribe(customer, PLANS[usize::from(plan)], trial, None)
                        .await,
                );
            }
            Op::Buy { card } => {
                let tax = TaxLocation::parse("US", Some("TX"), None).unwrap();
                let customer = w.customer(Some(CARDS[usize::from(card)]), Some(tax)).await;
                invoices.push(
                    w.billing
                        .purchase(customer, "self_paced_course", None)
                        .await
                        .unwrap(),
                );
            }
            Op::Change { sub, plan, now } => {
                if let Some(sub) = pick(&subs, sub) {
                    let timing = if now { Timing::Now } else { Timing::PeriodEnd };
                    let change = PlanChange {
                        plan_id: PLANS[usize::from(plan)].into(),
                        price_id: None,
                        quantity: None,
                        timing,
                    };
                    expect_refusal_only(w.billing.change_plan(sub, change).await.map(|_| ()));
                }
            }
            Op::Cancel { sub, now } => {
                if let Some(sub) = pick(&subs, sub) {
                    let timing = if now { Timing::Now } else { Timing::PeriodEnd };
                    expect_refusal_only(w.billing.cancel(sub, timing).await.map(|_| ()));
                }
            }
            Op::Pause { sub } => {
                if let Some(sub) = pick(&subs, sub) {
                    expect_refusal_only(w.billing.pause(sub).await.map(|_| ()));
                }
            }
            Op::Resume { sub } => {
                if let Some(sub) = pick(&subs, sub) {
                    expect_refusal_only(w.billing.resume(sub).await.map(|_| ()));
                }
            }
            Op::Refund { invoice, permille } => {
                for sub in &subs {
                    invoices.extend(w.billing.subscription(*sub).await.unwrap().invoices);
                }
                invoices.sort();
                invoices.dedup();
                if let Some(id) = invoices.get(usize::from(invoice) % invoices.len().max(1)) {
                    let state = w.billing.invoice(*id).await.unwrap();
                    if let Some(paid) = state.amount_paid {
                        let amount = paid
                            .mul_decimal(Decimal::new(i64::from(permille), 3))
                            .unwrap()
                            .round_to_minor(recur_ledger::money::RoundingRule::HalfUp);
                        if amount.is_positive() {
                            expect_refusal_only(
                                w.billing
                                    .refund(*id, amount, "requested_by_customer")
                                    .await
                                    .map(|_| ()),
                            );
                        }
                    }
                }
            }
            Op::Wait { hours } => {
                let next = w.clock.now() + Duration::hours(i64::from(hours));
                w.at(next).await;
            }
        }
    }
    // Every event balanced and the trial balance zero after each (checked inside).
    let balance = w.trial_balance().await;
    assert!(balance.is_balanced());
    // Customer credit on the books equals what the customers are owed.
    let mut owed = usd("0.00");
    let mut seen = std::collections::HashSet::new();
    for sub in &subs {
        let customer = w
            .billing
            .subscription(*sub)
            .await
            .unwrap()
            .customer_id
            .unwrap();
        if seen.insert(customer)
            && let Some(credit) = w.billing.customer(customer).await.unwrap().credit_balance
        {
            owed = owed.checked_add(credit).unwrap();
        }
    }
    assert_eq!(
        -balance.balance(&"customer_credit".parse().unwrap(), usd("0").currency()),
        owed
    );
}

/// Refusals are fine in random sequences; anything else is a bug.
fn expect_refusal_only(result: Result<(), BillingError>) {
    if let Err(error) = result {
        assert!(matches!(error, BillingError::Domain(_)), "{error}");
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    #[test]
    fn random_command_sequences_keep_every_event_and_the_books_balanced(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(run_ops(ops));
    }
}

#[tokio::test]
async fn every_decline_code_of_the_test_cards_reaches_the_invoice_at_charge_time() {
    for code in [
        "card_declined",
        "insufficient_funds",
        "expired_card",
        "processing_error",
    ] {
        let w = world(datetime!(2026-01-01 00:00 UTC)).await;
        let customer = w.customer(Some("4242424242424242"), None).await;
        let sub = w
            .subscribe(customer, "community_access", Trial::Skip, None)
            .await;
        w.billing
            .attach_payment_method(customer, SimulatedGateway::failing_card(code, 12, 2030))
            .await
            .unwrap();
        w.at(datetime!(2026-02-01 00:00 UTC)).await;
        let feb = &w.invoices_of(sub).await[1];
        let attempt = &feb.attempts[0];
        assert_eq!(attempt.gateway, "simulated");
        match &attempt.outcome {
            Some(recur_commands::invoice::ChargeOutcome::Declined { decline_code, .. }) => {
                assert_eq!(decline_code, code)
            }
            other => panic!("{code}: {other:?}"),
        }
        assert_eq!(
            w.billing.subscription(sub).await.unwrap().status,
            SubscriptionStatus::PastDue
        );
    }
}

#[tokio::test]
async fn a_quantity_change_mid_cycle_prorates_every_unit() {
    let w = world(datetime!(2026-04-01 00:00 UTC)).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "group_coaching", Trial::Skip, None)
        .await;
    // Half of April left: credit 1 × 1500 / 2 = 750.00, charge 3 × 1500 / 2 = 2250.00.
    w.clock.advance_to(datetime!(2026-04-16 00:00 UTC));
    let state = w
        .billing
        .change_plan(
            sub,
            PlanChange {
                plan_id: "group_coaching".into(),
                price_id: None,
                quantity: Some(3),
                timing: Timing::Now,
            },
        )
        .await
        .unwrap();
    assert_eq!(state.quantity, 3);
    let change = &w.invoices_of(sub).await[1];
    let amounts: Vec<(u32, Money)> = change
        .lines
        .iter()
        .map(|l| (l.quantity, l.amount))
        .collect();
    assert_eq!(amounts, vec![(1, usd("-750.00")), (3, usd("2250.00"))]);
    assert_eq!(change.totals.as_ref().unwrap().total, usd("1500.00"));
    assert_eq!(change.status, InvoiceStatus::Paid);
    w.at(datetime!(2026-05-01 00:00 UTC)).await;
    assert_eq!(
        w.invoices_of(sub).await[2].totals.as_ref().unwrap().total,
        usd("4500.00")
    );
}

/// Regression (money correctness, defect 1): a refund's number was chosen
/// before the append and a reused number was answered as an empty success, so
/// concurrent refunds were lost. Now each refund is numbered and reserved on the
/// version it appends after: two servers (separate ledger handles, so nothing
/// in-process orders them) refund one paid invoice from 16 tasks at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_refunds_each_get_their_own_number_and_never_exceed_what_was_paid() {
    let clock = TestClock::at(datetime!(2027-01-01 00:00 UTC));
    let store = common::postgres_with(Arc::new(clock.clone())).await;
    let w = world_on(clock.clone(), store).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "community_access", Trial::Skip, None)
        .await;
    let invoice = w.invoices_of(sub).await[0].id.unwrap();
    assert_eq!(
        w.billing.invoice(invoice).await.unwrap().status,
        InvoiceStatus::Paid
    );
    let second_ledger = Ledger::open(
        recur_ledger::LedgerConfig::new(w._store.location()),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap();
    let second = Arc::new(
        Billing::open(
            second_ledger,
            Catalog::default_catalog().unwrap(),
            Arc::new(w.gateway.clone()),
        )
        .await
        .unwrap(),
    );

    // Two at once, 10.00 and 50.00: both recorded.
    let (a, b) = tokio::join!(
        w.billing
            .refund(invoice, usd("10.00"), "requested_by_customer"),
        second.refund(invoice, usd("50.00"), "requested_by_customer"),
    );
    let mut numbers = vec![a.unwrap().refund_no, b.unwrap().refund_no];
    numbers.sort_unstable();
    assert_eq!(numbers, vec![1, 2]);
    assert_eq!(
        w.billing.invoice(invoice).await.unwrap().amount_refunded,
        Some(usd("60.00"))
    );

    // Sixteen of 5.00 on the 37.00 left: seven fit, nine are refused, none lost.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..16 {
        let billing = if i % 2 == 0 {
            Arc::clone(&w.billing)
        } else {
            Arc::clone(&second)
        };
        tasks.spawn(async move {
            billing
                .refund(invoice, usd("5.00"), "requested_by_customer")
                .await
        });
    }
    let (mut refunded, mut refused) = (Vec::new(), 0);
    while let Some(joined) = tasks.join_next().await {
        match joined.unwrap() {
            Ok(outcome) => {
                assert!(outcome.completed);
                refunded.push(outcome.refund_no);
            }
            Err(error) => {
                assert_eq!(error.code(), "refund_exceeds_paid", "{error}");
                refused += 1;
            }
        }
    }
    refunded.sort_unstable();
    assert_eq!(refunded, (3..=9).collect::<Vec<u32>>());
    assert_eq!(refused, 9);
    let state = w.billing.invoice(invoice).await.unwrap();
    assert_eq!(state.amount_refunded, Some(usd("95.00")));
    assert_eq!(state.pending_refunds().count(), 0);
    // What the gateway paid out is what the ledger recorded, refund by refund.
    let made = w.gateway.refunds_made();
    assert_eq!(made.len(), 9);
    let total = made
        .iter()
        .try_fold(usd("0"), |sum, (_, amount)| sum.checked_add(*amount))
        .unwrap();
    assert_eq!(total, usd("95.00"));
    let recorded = w.postings(invoice).await;
    assert_eq!(
        recorded
            .iter()
            .filter(|(t, _)| t == "InvoiceRefunded")
            .count(),
        9
    );
    w.trial_balance().await;
}

/// A refund whose gateway call never answered stays requested (its amount held
/// back from what is refundable) and the scheduler sends it again with the same
/// key after a minute; the customer is refunded once.
#[tokio::test]
async fn a_refund_the_gateway_did_not_answer_is_sent_again_by_the_scheduler() {
    let w = world(datetime!(2027-01-01 00:00 UTC)).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "community_access", Trial::Skip, None)
        .await;
    let invoice = w.invoices_of(sub).await[0].id.unwrap();
    w.gateway.lose_next_answers(1);
    let pending = w
        .billing
        .refund(invoice, usd("90.00"), "requested_by_customer")
        .await
        .unwrap();
    assert_eq!((pending.refund_no, pending.completed), (1, false));
    let state = w.billing.invoice(invoice).await.unwrap();
    assert_eq!(state.pending_refunds().count(), 1);
    assert_eq!(state.amount_refunded, None);
    // The held-back 90.00 cannot be refunded a second time meanwhile.
    let error = w
        .billing
        .refund(invoice, usd("10.00"), "requested_by_customer")
        .await
        .unwrap_err();
    assert_eq!(error.code(), "refund_exceeds_paid");
    w.at(datetime!(2027-01-01 00:00:30 UTC)).await;
    assert_eq!(
        w.billing
            .invoice(invoice)
            .await
            .unwrap()
            .pending_refunds()
            .count(),
        1
    );
    w.at(datetime!(2027-01-01 00:01:00 UTC)).await;
    let state = w.billing.invoice(invoice).await.unwrap();
    assert_eq!(state.pending_refunds().count(), 0);
    assert_eq!(state.amount_refunded, Some(usd("90.00")));
    assert_eq!(w.gateway.refunds_made().len(), 1);
    w.trial_balance().await;
}

/// A request run replayably under one seed, as the HTTP edge runs an
/// `Idempotency-Key`'s request; `rerun` says an earlier run may have written.
async fn replayed<F: std::future::Future>(
    seed: u8,
    started_at: OffsetDateTime,
    rerun: bool,
    f: F,
) -> F::Output {
    use recur_commands::context::{Replayable, replayable};
    replayable(
        Replayable {
            seed: [seed; 32],
            started_at,
            rerun,
            resumed: false,
        },
        f,
    )
    .await
}

#[tokio::test]
async fn a_rerun_request_answers_with_what_its_first_run_wrote_and_charges_once() {
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world(start).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let new = || NewSubscription {
        customer_id: customer,
        plan_id: "community_access".into(),
        price_id: None,
        quantity: 1,
        trial: Trial::Skip,
        coupon: None,
    };
    let first = replayed(1, start, false, w.billing.subscribe(new()))
        .await
        .unwrap();
    let written = w.ledger().last_position().await.unwrap();
    assert_eq!(w.gateway.charges_made(), 1);
    // The server died before answering; the retry reruns the request a minute
    // later: same subscription, nothing written, nothing charged.
    w.clock.advance_to(start + Duration::minutes(1));
    let again = replayed(1, start, true, w.billing.subscribe(new()))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(w.ledger().last_position().await.unwrap(), written);
    assert_eq!(w.gateway.charges_made(), 1);
    assert_eq!(w.invoices_of(first).await.len(), 1);
    // Another request (another seed) is another subscription.
    let other = replayed(2, start, false, w.billing.subscribe(new()))
        .await
        .unwrap();
    assert_ne!(other, first);
    assert_eq!(w.gateway.charges_made(), 2);

    // A run cut after its first append: the rerun finds that append and goes on
    // from there, under the same customer id.
    let cut = replayed(
        3,
        start,
        false,
        w.billing.create_customer(NewCustomer {
            segment: Segment::Standard,
            tax_location: None,
            contact: None,
        }),
    )
    .await
    .unwrap();
    let method = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
    let rerun = replayed(3, start, true, async {
        let id = w
            .billing
            .create_customer(NewCustomer {
                segment: Segment::Standard,
                tax_location: None,
                contact: None,
            })
            .await?;
        w.billing.attach_payment_method(id, method).await?;
        Ok::<_, BillingError>(id)
    })
    .await
    .unwrap();
    assert_eq!(rerun, cut);
    let (customer_state, version) = w.billing.customer_versioned(cut).await.unwrap();
    assert_eq!(version, 2, "created once, then the card attached");
    assert!(customer_state.payment_method.is_some());
    w.trial_balance().await;
}

#[tokio::test]
async fn a_rerun_pay_after_the_gateway_was_down_records_the_payment_not_a_failure() {
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world(start).await;
    let customer = w.customer(Some("4242424242424242"), None).await;
    let sub = w
        .subscribe(customer, "community_access", Trial::Skip, None)
        .await;
    w.billing
        .attach_payment_method(
            customer,
            SimulatedGateway::failing_card("insufficient_funds", 12, 2030),
        )
        .await
        .unwrap();
    w.at(datetime!(2027-02-01 00:00 UTC)).await;
    let invoice = w.invoices_of(sub).await[1].id.unwrap();
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::PastDue
    );
    let method = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
    w.billing
        .attach_payment_method(customer, method)
        .await
        .unwrap();
    let charges_before = w.gateway.charges_made();
    // POST /v1/invoices/{id}/pay with a key: the attempt is started, then the
    // gateway is down (a 5xx: the key is let go).
    let when = datetime!(2027-02-01 01:00 UTC);
    w.clock.advance_to(when);
    w.gateway.fail_next_calls(1);
    let first = replayed(7, when, false, w.billing.pay_now(invoice)).await;
    assert!(first.is_err(), "the gateway was down: {first:?}");
    // The retry with the same key reruns it: the attempt already started is
    // charged now, and its success is what gets recorded.
    let again = replayed(7, when, true, w.billing.pay_now(invoice))
        .await
        .unwrap();
    assert_eq!(again.status, InvoiceStatus::Paid, "{again:?}");
    let state = w.billing.invoice(invoice).await.unwrap();
    let succeeded = state
        .attempts
        .iter()
        .filter(|a| {
            matches!(
                a.outcome,
                Some(recur_commands::invoice::ChargeOutcome::Succeeded { .. })
            )
        })
        .count();
    assert_eq!(succeeded, 1, "{:?}", state.attempts);
    assert_eq!(w.gateway.charges_made(), charges_before + 1);
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::Active
    );
    // A third run of the same request answers the paid invoice, charging nothing.
    let third = replayed(7, when, true, w.billing.pay_now(invoice))
        .await
        .unwrap();
    assert_eq!(third.status, InvoiceStatus::Paid);
    assert_eq!(w.gateway.charges_made(), charges_before + 1);
    w.trial_balance().await;
}

#[tokio::test]
async fn a_retried_tax_rate_is_judged_by_when_it_was_first_asked_for() {
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world(start).await;
    let rate = || recur_commands::tax::TaxRate {
        id: String::new(),
        country: "DE".into(),
        region: None,
        name: "VAT".into(),
        rate: "0.19".parse().unwrap(),
        mode: recur_commands::tax::TaxMode::Inclusive,
        valid_from: Some(start + Duration::minutes(1)),
        retired_at: None,
    };
    // First asked at 00:00 for 00:01; retried (the server died) at 00:05.
    w.clock.advance_to(start + Duration::minutes(5));
    let refused = w.billing.create_tax_rate(rate()).await.unwrap_err();
    assert_eq!(refused.code(), "invalid_field", "unkeyed, 00:01 is past");
    let created = replayed(21, start, true, w.billing.create_tax_rate(rate()))
        .await
        .unwrap();
    assert_eq!(created.valid_from, Some(start + Duration::minutes(1)));
    // Before the first attempt is still refused.
    let mut early = rate();
    early.valid_from = Some(start - Duration::minutes(1));
    let refused = replayed(22, start, true, w.billing.create_tax_rate(early))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), "invalid_field");
}

/// The simulated gateway's statement as a test writes it: reconciliation reads
/// the ledger's attempts through the gateway of this name.
struct Statement(Vec<recur_commands::reconciliation::ProviderTransaction>);

impl recur_commands::reconciliation::ProviderStatement for Statement {
    fn name(&self) -> &'static str {
        "simulated"
    }

    fn balance_transactions<'a>(
        &'a self,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> recur_commands::payment::GatewayFuture<
        'a,
        Vec<recur_commands::reconciliation::ProviderTransaction>,
    > {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .filter(|t| t.created >= from && t.created < to)
                .cloned()
                .collect())
        })
    }

    fn charge_status<'a>(
        &'a self,
        _charge_id: &'a str,
    ) -> recur_commands::payment::GatewayFuture<'a, Option<String>> {
        Box::pin(async { Ok(None) })
    }
}

#[tokio::test]
async fn reconciliation_names_what_the_provider_did_behind_our_back_and_records_it() {
    use recur_commands::invoice::ChargeOutcome;
    use recur_commands::reconciliation::{MismatchKind, MovementKind, ProviderTransaction};

    let w = world(datetime!(2026-03-01 00:00 UTC)).await;
    let mut charges = Vec::new();
    for _ in 0..3 {
        let customer = w.customer(Some("4242424242424242"), None).await;
        let invoice = w
            .billing
            .purchase(customer, "self_paced_course", None)
            .await
            .unwrap();
        let state = w.billing.invoice(invoice).await.unwrap();
        let Some(ChargeOutcome::Succeeded { charge_id }) =
            state.attempts.last().and_then(|a| a.outcome.clone())
        else {
            panic!("the course was not paid: {:?}", state.attempts);
        };
        charges.push((invoice, charge_id));
    }
    // Recur refunds 100.00 of the first course.
    w.billing
        .refund(charges[0].0, usd("100.00"), "requested_by_customer")
        .await
        .unwrap();
    let refund_id = w
        .ledger()
        .read_stream(&charges[0].0.stream().unwrap(), 0, 100)
        .await
        .unwrap()
        .into_iter()
        .find_map(
            |e| match recur_commands::tagged::DecodeEvent::decode_payload(&e.payload) {
                Ok(InvoiceEvent::InvoiceRefunded { refund_id, .. }) => Some(refund_id),
                _ => None,
            },
        )
        .unwrap();
    let at = datetime!(2026-03-01 00:00:05 UTC);
    let txn = |kind: &str, source: &str, amount_minor: i64| ProviderTransaction {
        id: format!("txn_{source}"),
        kind: kind.into(),
        source: source.into(),
        amount_minor,
        fee_minor: 30,
        currency: "usd".into(),
        created: at,
    };
    // The provider agrees on two charges and the refund, shows the third charge
    // 1.00 short, and has a charge and a refund Recur never made.
    let statement = Statement(vec![
        txn("charge", &charges[0].1, 99_700),
        txn("charge", &charges[1].1, 99_700),
        txn("charge", &charges[2].1, 99_600),
        txn("refund", &refund_id, -10_000),
        txn("charge", "ch_behind_our_back", 4_200),
        txn("refund", "re_behind_our_back", -4_200),
        txn("payout", "po_1", -200_000),
    ]);
    let report = w
        .billing
        .reconcile(
            &statement,
            datetime!(2026-03-01 00:00 UTC),
            datetime!(2026-03-02 00:00 UTC),
        )
        .await
        .unwrap();
    let named: Vec<(MismatchKind, MovementKind, String)> = report
        .mismatches
        .iter()
        .map(|m| (m.mismatch, m.kind, m.object_id.clone()))
        .collect();
    let mut expected = vec![
        (
            MismatchKind::AmountDiffers,
            MovementKind::Charge,
            charges[2].1.clone(),
        ),
        (
            MismatchKind::MissingInLedger,
            MovementKind::Charge,
            "ch_behind_our_back".to_owned(),
        ),
        (
            MismatchKind::MissingInLedger,
            MovementKind::Refund,
            "re_behind_our_back".to_owned(),
        ),
    ];
    expected.sort();
    let mut named_sorted = named.clone();
    named_sorted.sort();
    assert_eq!(named_sorted, expected);
    assert_eq!((report.compared, report.matched), (6, 3));
    // Four charges at 0.30 each; refunds and payouts carry no processing fee here.
    assert_eq!(report.processing_fees_minor.get("usd"), Some(&120));
    // Recorded: read back from the ledger, the same run.
    let recorded = w.billing.reconciliations().await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].run_id, report.run_id);
    assert_eq!(recorded[0].mismatches, report.mismatches);

    // A window with nothing in it on either side agrees and is recorded too.
    let quiet = w
        .billing
        .reconcile(
            &statement,
            datetime!(2026-05-01 00:00 UTC),
            datetime!(2026-06-01 00:00 UTC),
        )
        .await
        .unwrap();
    assert!(quiet.agrees() && quiet.compared == 0);
    assert_eq!(w.billing.reconciliations().await.unwrap().len(), 2);
}

// ---- dunning ------------------------------------------------------------------

impl World {
    /// A customer of `segment` with contact details and a card that declines
    /// at charge time with `decline_code` (none: no card at all), subscribed
    /// to `plan` without a trial on a working card first.
    async fn failing_subscriber(
        &self,
        segment: Segment,
        plan: &str,
        decline_code: Option<&str>,
    ) -> (CustomerId, SubscriptionId) {
        let customer = self
            .billing
            .create_customer(NewCustomer {
                segment,
                tax_location: None,
                contact: Some(ContactDetails {
                    name: "Ann Client".into(),
                    email: "ann@example.com".into(),
                    phone: Some("+15555550100".into()),
                }),
            })
            .await
            .unwrap();
        let card = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
        self.billing
            .attach_payment_method(customer, card)
            .await
            .unwrap();
        let sub = self.subscribe(customer, plan, Trial::Skip, None).await;
        match decline_code {
            Some(code) => self
                .billing
                .attach_payment_method(customer, SimulatedGateway::failing_card(code, 12, 2030))
                .await
                .unwrap(),
            None => self.billing.detach_payment_method(customer).await.unwrap(),
        }
        (customer, sub)
    }

    fn sent(&self, channel: Channel) -> usize {
        self.messenger
            .sent()
            .iter()
            .filter(|(_, c, _)| *c == channel)
            .count()
    }
}

#[tokio::test]
async fn an_expired_card_is_never_retried_and_a_new_card_is_tried_at_once() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (customer, sub) = w
        .failing_subscriber(Segment::Standard, "community_access", Some("expired_card"))
        .await;
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let feb = w.invoices_of(sub).await[1].clone();
    let id = feb.id.unwrap();
    // Waiting for a new card: the policy's time is spent before the final
    // action, and in between no retry at all, only reminders.
    for day in 1..=10 {
        w.at(datetime!(2026-02-01 00:00 UTC) + Duration::days(day))
            .await;
    }
    let feb = w.billing.invoice(id).await.unwrap();
    assert_eq!(feb.attempts.len(), 1, "an expired card is not retried");
    assert_eq!(feb.status, InvoiceStatus::Open);
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert_eq!(campaign.steps.len(), 1);
    assert_eq!(campaign.steps[0].decline_code, "expired_card");
    // The first step's email and SMS, and the reminders of the first ten days
    // (when the retries would have run, 1 d 1 h and 4 d 1 h later, by email;
    // not the one an hour after the first message).
    assert_eq!(w.sent(Channel::Sms), 1);
    assert_eq!(w.sent(Channel::Email), 3, "{:?}", w.messenger.sent());
    // A new card: tried at once, paid; what was still to come is canceled.
    let working = SimulatedGateway::tokenize("5555555555554444", 12, 2030).unwrap();
    w.billing
        .attach_payment_method(customer, working)
        .await
        .unwrap();
    w.at(datetime!(2026-02-11 00:00 UTC)).await;
    let feb = w.billing.invoice(id).await.unwrap();
    assert_eq!(feb.status, InvoiceStatus::Paid);
    assert_eq!(feb.attempts.len(), 2);
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(matches!(
        campaign.ending,
        Some((Ending::Recovered { after_step: 1, .. }, _))
    ));
    assert!(campaign.next_send_at().is_none());
    assert!(
        campaign
            .messages
            .values()
            .any(|m| matches!(&m.delivery, Delivery::Canceled { reason } if reason == "recovered"))
    );
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::Active
    );
    w.trial_balance().await;
}

#[tokio::test]
async fn no_card_on_file_waits_for_one_then_cancels_without_retrying() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(Segment::Standard, "community_access", None)
        .await;
    let mut at = datetime!(2026-02-01 00:00 UTC);
    while at < datetime!(2026-03-01 00:00 UTC) {
        w.at(at).await;
        at += Duration::hours(12);
    }
    let feb = &w.invoices_of(sub).await[1];
    assert_eq!(feb.attempts.len(), 1, "nothing to retry without a card");
    assert_eq!(feb.status, InvoiceStatus::Uncollectible);
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.status, SubscriptionStatus::Canceled);
    // Given up when the standard schedule (1 h + 1 d + 3 d + 1 w + 2 w) ran out.
    assert_eq!(
        state.canceled_at,
        Some(datetime!(2026-02-01 00:00 UTC) + Duration::minutes(36_060))
    );
    let campaign = w.billing.dunning_campaign(feb.id.unwrap()).await.unwrap();
    assert!(matches!(
        campaign.ending,
        Some((
            Ending::Exhausted {
                final_action: FinalAction::Cancel
            },
            _
        ))
    ));
    // Reminders by email at each step's time, the last a final notice.
    let templates: Vec<Template> = w.messenger.sent().iter().map(|(_, _, t)| *t).collect();
    assert!(
        templates.contains(&Template::PaymentFinalNotice),
        "{templates:?}"
    );
    // The step's own and four reminders (the 1 h one is too close to it).
    assert_eq!(w.sent(Channel::Email), 5, "{templates:?}");
}

#[tokio::test]
async fn a_high_value_client_gets_a_phone_task_and_is_left_past_due_at_the_end() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(Segment::HighValue, "elite_coaching", Some("card_declined"))
        .await;
    let mut at = datetime!(2026-02-01 00:00 UTC);
    // The eight delays add up to 44 days 14 h 30 min.
    while at < datetime!(2026-03-18 00:00 UTC) {
        w.at(at).await;
        at += Duration::minutes(30);
    }
    let feb = &w.invoices_of(sub).await[1];
    let id = feb.id.unwrap();
    // High value: eight retries, nine attempts; then left open, past due.
    assert_eq!(feb.attempts.len(), 9);
    assert_eq!(feb.status, InvoiceStatus::Open);
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert_eq!(campaign.steps.len(), 9);
    // The final action's own step queued nothing: the last retry's step
    // carried the final notice.
    assert!(
        !campaign.messages.values().any(|m| m.queued.step == 9),
        "{:?}",
        campaign.messages
    );
    assert!(
        campaign
            .messages
            .values()
            .any(|m| m.queued.step == 8 && m.queued.template == Template::PaymentFinalNotice)
    );
    assert!(matches!(
        campaign.ending,
        Some((
            Ending::Exhausted {
                final_action: FinalAction::LeavePastDue
            },
            _
        ))
    ));
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status,
        SubscriptionStatus::PastDue
    );
    // One open phone task at a time: the first, until someone completes it.
    assert_eq!(campaign.tasks.len(), 1);
    let task = campaign.tasks[0].task_no;
    w.billing
        .claim_dunning_task(id, task, "sam".into())
        .await
        .unwrap();
    assert!(
        w.billing
            .claim_dunning_task(id, task, "kim".into())
            .await
            .is_err()
    );
    let done = w
        .billing
        .complete_dunning_task(id, task, CallOutcome::WillPay)
        .await
        .unwrap();
    assert!(done.open_task().is_none());
    // Nothing more is collected: no further attempts days later.
    w.at(datetime!(2026-03-25 00:00 UTC)).await;
    assert_eq!(w.billing.invoice(id).await.unwrap().attempts.len(), 9);
    // Email and SMS at each step but the last (the final action's: the final
    // notice went with the last retry's step).
    let sent = |channel: Channel| {
        campaign
            .messages
            .values()
            .filter(|m| m.queued.channel == channel && matches!(m.delivery, Delivery::Sent { .. }))
            .count()
    };
    assert_eq!(sent(Channel::Email), 8);
    assert_eq!(sent(Channel::Sms), 8);
    assert!(campaign.messages.values().any(|m| m.queued.step == 8
        && m.queued.template == Template::PaymentFinalNotice
        && matches!(m.delivery, Delivery::Sent { .. })));
}

#[tokio::test]
async fn the_standard_policy_offers_its_discounts_through_the_subscription() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (customer, sub) = w
        .failing_subscriber(
            Segment::Standard,
            "group_coaching",
            Some("insufficient_funds"),
        )
        .await;
    // Four failed attempts: 0 h, 1 h, 1 d, 3 d after the renewal.
    let mut at = datetime!(2026-02-01 00:00 UTC);
    for delay_h in [0, 1, 24, 72] {
        at += Duration::hours(delay_h);
        w.at(at).await;
    }
    let feb = &w.invoices_of(sub).await[1];
    let id = feb.id.unwrap();
    assert_eq!(feb.attempts.len(), 4);
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(
        matches!(campaign.offers.get(&4), Some(OfferGiven::Discount { coupon }) if coupon.starts_with("DUNNING-")),
        "{:?}",
        campaign.offers
    );
    let state = w.billing.subscription(sub).await.unwrap();
    assert!(state.discount.is_some(), "the offer is on the subscription");
    // Paid on the fifth attempt with a working card: recovered after step 4.
    let working = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
    w.billing
        .attach_payment_method(customer, working)
        .await
        .unwrap();
    w.at(at + Duration::hours(168)).await;
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(matches!(
        campaign.ending,
        Some((Ending::Recovered { after_step: 4, .. }, _))
    ));
    // The March invoice carries the 20 % once discount.
    w.at(datetime!(2026-03-01 00:00 UTC)).await;
    let mar = &w.invoices_of(sub).await[2];
    assert!(mar.discount.is_some(), "{mar:?}");
    w.trial_balance().await;
}

#[tokio::test]
async fn a_message_decided_before_a_crash_is_sent_once_after_the_restart() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(Segment::Standard, "community_access", Some("card_declined"))
        .await;
    // A scheduler without a messenger stands for one that crashed between
    // deciding the step (its messages queued in the ledger) and sending.
    let crashed = Scheduler::new(Arc::clone(&w.billing), 4);
    w.clock.advance_to(datetime!(2026-02-01 00:00 UTC));
    crashed.tick().await.unwrap();
    let id = w.invoices_of(sub).await[1].id.unwrap();
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert_eq!(campaign.messages.len(), 2, "email and SMS queued");
    assert!(w.messenger.sent().is_empty());
    // Restarted, twice over, and two senders at once: each message exactly once.
    let a = Scheduler::new(Arc::clone(&w.billing), 4)
        .with_messenger(Arc::clone(&w.messenger) as Arc<dyn Messenger>);
    let b = Scheduler::new(Arc::clone(&w.billing), 4)
        .with_messenger(Arc::clone(&w.messenger) as Arc<dyn Messenger>);
    let (ra, rb) = tokio::join!(a.tick(), b.tick());
    assert_eq!(ra.unwrap().messages_sent + rb.unwrap().messages_sent, 2);
    w.at(datetime!(2026-02-01 00:30 UTC)).await;
    let mut ids: Vec<_> = w.messenger.sent().iter().map(|(id, ..)| *id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    ids.dedup();
    assert_eq!(ids.len(), 2);
}

/// A messenger whose first sends fail.
struct Flaky {
    failures_left: std::sync::Mutex<u32>,
    inner: RecordingMessenger,
}

impl Messenger for Flaky {
    fn send<'a>(
        &'a self,
        notice: &'a recur_commands::recovery::Notice,
    ) -> recur_commands::recovery::SendFuture<'a> {
        let fail = {
            let mut left = self.failures_left.lock().unwrap();
            let fail = *left > 0;
            *left = left.saturating_sub(1);
            fail
        };
        if fail {
            return Box::pin(async {
                Err(recur_commands::recovery::SendFailure {
                    retryable: true,
                    code: "smtp_unavailable".into(),
                })
            });
        }
        self.inner.send(notice)
    }
}

#[tokio::test]
async fn a_failed_send_is_sent_again_with_backoff() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(Segment::Trial, "community_access", Some("card_declined"))
        .await;
    let flaky = Arc::new(Flaky {
        failures_left: std::sync::Mutex::new(2),
        inner: RecordingMessenger::default(),
    });
    let scheduler = Scheduler::new(Arc::clone(&w.billing), 4)
        .with_messenger(Arc::clone(&flaky) as Arc<dyn Messenger>);
    let start = datetime!(2026-02-01 00:00 UTC);
    w.clock.advance_to(start);
    scheduler.tick().await.unwrap();
    let id = w.invoices_of(sub).await[1].id.unwrap();
    let message = |c: &recur_commands::dunning::DunningCampaign| {
        c.messages.values().next().unwrap().delivery.clone()
    };
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(matches!(
        message(&campaign),
        Delivery::Retrying { attempts: 1, .. }
    ));
    // One minute later it fails again; two minutes after that it goes.
    w.clock.advance_to(start + Duration::minutes(1));
    scheduler.tick().await.unwrap();
    w.clock.advance_to(start + Duration::minutes(3));
    scheduler.tick().await.unwrap();
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(
        matches!(message(&campaign), Delivery::Sent { .. }),
        "{:?}",
        message(&campaign)
    );
    assert_eq!(flaky.inner.sent().len(), 1);
}

#[tokio::test]
async fn a_soft_decline_is_retried_in_the_slot_the_ledger_learned() {
    use recur_commands::retry_timing::RetryOutcome;
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(Segment::Standard, "community_access", Some("card_declined"))
        .await;
    // Past retries of soft declines on the 1st and 2nd of a month: those run
    // between 12:00 and 16:00 UTC went through, those around 01:00 did not.
    let mut history = Vec::new();
    for n in 0..60 {
        let day = datetime!(2025-12-02 00:00 UTC) - Duration::days(if n % 2 == 0 { 0 } else { 1 });
        for (hour, succeeded) in [(13, true), (1, false)] {
            let invoice = InvoiceId(uuid::Uuid::now_v7());
            history.push((
                invoice,
                2,
                RetryOutcome {
                    decline_code: "card_declined".into(),
                    attempted_at: day + Duration::hours(hour),
                    succeeded,
                    amount_minor: 9_700,
                },
            ));
        }
    }
    w.billing.observe_retries(&history);
    // Read again (a second scheduler): learned once.
    w.billing.observe_retries(&history);
    assert_eq!(w.billing.retries_observed(), 120);
    // Declined at 00:00 on Feb 1 and at the 1 h retry; the policy's next retry
    // (1 d later, 01:00 on Feb 2) is moved into the learned slot within half
    // the gap: 13:00 on Feb 1.
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    w.at(datetime!(2026-02-01 01:00 UTC)).await;
    let feb = &w.invoices_of(sub).await[1];
    assert_eq!(feb.attempts.len(), 2);
    assert_eq!(
        feb.attempts[1].next_retry_at,
        Some(datetime!(2026-02-01 13:00 UTC))
    );
    let campaign = w.billing.dunning_campaign(feb.id.unwrap()).await.unwrap();
    assert_eq!(
        campaign.steps[1].next,
        recur_commands::dunning_policy::NextStep::RetryAt(datetime!(2026-02-01 13:00 UTC)),
        "the campaign records the time the invoice will be retried"
    );
    w.at(datetime!(2026-02-01 13:00 UTC)).await;
    assert_eq!(w.invoices_of(sub).await[1].attempts.len(), 3);
}

#[tokio::test]
async fn a_card_about_to_expire_is_reminded_of_once_a_week_before() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (customer, _) = w
        .failing_subscriber(Segment::Standard, "community_access", None)
        .await;
    // A card that works through March 2026: reminded on March 25.
    let card = SimulatedGateway::tokenize("4242424242424242", 3, 2026).unwrap();
    w.billing
        .attach_payment_method(customer, card)
        .await
        .unwrap();
    w.at(datetime!(2026-03-24 23:00 UTC)).await;
    let reminders = |w: &World| {
        w.messenger
            .sent()
            .iter()
            .filter(|(_, _, t)| *t == Template::CardExpiring)
            .map(|(_, c, _)| *c)
            .collect::<Vec<_>>()
    };
    assert!(reminders(&w).is_empty(), "not before");
    w.at(datetime!(2026-03-25 00:00 UTC)).await;
    assert_eq!(reminders(&w), vec![Channel::Email, Channel::Sms]);
    for day in 26..=31 {
        w.at(datetime!(2026-03-01 00:00 UTC) + Duration::days(day - 1))
            .await;
    }
    assert_eq!(reminders(&w).len(), 2, "once per card");
    // A new card that works through May: its own reminder on May 25.
    let renewed = SimulatedGateway::tokenize("5555555555554444", 5, 2026).unwrap();
    w.billing
        .attach_payment_method(customer, renewed)
        .await
        .unwrap();
    w.at(datetime!(2026-05-24 00:00 UTC)).await;
    assert_eq!(reminders(&w).len(), 2);
    w.at(datetime!(2026-05-25 00:00 UTC)).await;
    let outbox = w.billing.card_expiry_reminders(customer).await.unwrap();
    assert_eq!(
        reminders(&w).len(),
        4,
        "{:?} {:?}",
        w.messenger.sent(),
        outbox
    );
}

#[tokio::test]
async fn a_payment_the_bank_asks_to_authenticate_waits_for_the_customer_and_is_paid_when_they_confirm()
 {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(
            Segment::Standard,
            "community_access",
            Some("authentication_required"),
        )
        .await;
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let id = w.invoices_of(sub).await[1].id.unwrap();
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(
        matches!(
            campaign.steps[0].next,
            recur_commands::dunning_policy::NextStep::AwaitCustomerAction { .. }
        ),
        "{:?}",
        campaign.steps
    );
    assert!(
        campaign
            .messages
            .values()
            .any(|m| m.queued.template == Template::AuthenticationRequired),
        "the customer is asked to confirm"
    );
    // Not retried off-session while the bank waits for the customer.
    w.at(datetime!(2026-02-03 00:00 UTC)).await;
    assert_eq!(w.invoices_of(sub).await[1].attempts.len(), 1);
    let charges = w.gateway.charges_made();

    // The customer confirms on the page: an on-session charge, which passes.
    let paid = w.billing.confirm_payment(id).await.unwrap();
    assert_eq!(paid.status, InvoiceStatus::Paid, "{paid:?}");
    assert_eq!(w.gateway.charges_made(), charges + 1);
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(
        matches!(
            campaign.ending,
            Some((Ending::Recovered { after_step: 1, .. }, _))
        ),
        "{:?}",
        campaign.ending
    );
    // Confirmed again (a second tab): refused as settled, nothing charged.
    assert!(w.billing.confirm_payment(id).await.is_err());
    assert_eq!(w.gateway.charges_made(), charges + 1);
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.status, SubscriptionStatus::Active);
    w.trial_balance().await;
}

#[tokio::test]
async fn an_operator_paying_now_off_session_cannot_pass_the_banks_authentication() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(
            Segment::Standard,
            "community_access",
            Some("authentication_required"),
        )
        .await;
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let id = w.invoices_of(sub).await[1].id.unwrap();
    let still = w.billing.pay_now(id).await.unwrap();
    assert_eq!(still.status, InvoiceStatus::Open);
    assert_eq!(still.attempts.len(), 2);
    assert_eq!(
        still.attempts[1]
            .outcome
            .as_ref()
            .and_then(|o| o.decline_code()),
        Some("authentication_required")
    );
}

#[tokio::test]
async fn a_customer_trying_cards_on_demand_never_spends_the_campaigns_schedule() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(Segment::Trial, "community_access", Some("card_declined"))
        .await;
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let id = w.invoices_of(sub).await[1].id.unwrap();
    // The trial policy has three retries; the customer tries four times on
    // the page (pay now) half an hour in, each declined.
    let tried_at = datetime!(2026-02-01 00:30 UTC);
    w.clock.advance_to(tried_at);
    for _ in 0..4 {
        let still = w.billing.pay_now(id).await.unwrap();
        assert_eq!(still.status, InvoiceStatus::Open);
        let last = still.attempts.last().unwrap();
        assert!(last.on_demand);
        // Still the first retry's place, timed from the customer's try.
        assert_eq!(
            last.next_retry_at,
            Some(tried_at + Duration::hours(2)),
            "{last:?}"
        );
    }
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert_eq!(campaign.steps.len(), 5, "every decline is a step");
    assert!(campaign.ending.is_none(), "{:?}", campaign.ending);
    assert!(
        campaign.offers.is_empty(),
        "the step-2 offer is not reached"
    );
    let state = w.billing.subscription(sub).await.unwrap();
    assert_ne!(state.status, SubscriptionStatus::Canceled);
    // The schedule's own retry is its second place: its offer is made.
    w.at(tried_at + Duration::hours(2)).await;
    let invoice = w.billing.invoice(id).await.unwrap();
    assert_eq!(invoice.attempts.len(), 6);
    assert!(!invoice.attempts[5].on_demand);
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert_eq!(campaign.steps.len(), 6);
    assert!(
        matches!(
            campaign.offers.get(&6),
            Some(OfferGiven::TrialExtension { days: 7 })
        ),
        "{:?}",
        campaign.offers
    );
    assert!(campaign.ending.is_none());
}

#[tokio::test]
async fn a_card_declined_on_the_page_long_after_the_step_is_retried_once_later_not_at_once() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (customer, sub) = w
        .failing_subscriber(Segment::Standard, "community_access", Some("expired_card"))
        .await;
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let id = w.invoices_of(sub).await[1].id.unwrap();
    // Ten days later a new card, declined for funds, on the page.
    let tried_at = datetime!(2026-02-11 00:00 UTC);
    w.clock.advance_to(tried_at);
    w.billing
        .attach_payment_method(
            customer,
            SimulatedGateway::failing_card("insufficient_funds", 12, 2030),
        )
        .await
        .unwrap();
    let still = w.billing.pay_now(id).await.unwrap();
    let attempts = still.attempts.len();
    let next = still.attempts.last().unwrap().next_retry_at.unwrap();
    assert!(next > tried_at, "{next} is after the try");
    // Nothing before it; one retry at it.
    w.at(tried_at + Duration::minutes(30)).await;
    assert_eq!(
        w.billing.invoice(id).await.unwrap().attempts.len(),
        attempts
    );
    w.at(next).await;
    let after = w.billing.invoice(id).await.unwrap();
    assert_eq!(after.attempts.len(), attempts + 1, "one retry");
    assert!(after.attempts.last().unwrap().next_retry_at.unwrap() > next);
}

#[tokio::test]
async fn a_hard_decline_on_the_page_after_a_soft_step_waits_for_a_card_with_its_reminders() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (customer, sub) = w
        .failing_subscriber(
            Segment::Standard,
            "community_access",
            Some("insufficient_funds"),
        )
        .await;
    let renewal = datetime!(2026-02-01 00:00 UTC);
    w.at(renewal).await;
    let id = w.invoices_of(sub).await[1].id.unwrap();
    let tried_at = renewal + Duration::minutes(30);
    w.clock.advance_to(tried_at);
    w.billing
        .attach_payment_method(
            customer,
            SimulatedGateway::failing_card("expired_card", 12, 2030),
        )
        .await
        .unwrap();
    w.billing.pay_now(id).await.unwrap();
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert_eq!(campaign.steps.len(), 2);
    // Waits for a card until the schedule (from the try) would have run out:
    // never sooner than the customer doing nothing.
    let schedule_minutes: i64 = [60, 1440, 4320, 10080, 20160].iter().sum();
    match campaign.steps[1].next {
        recur_commands::dunning_policy::NextStep::AwaitNewCard { until } => {
            assert_eq!(until, tried_at + Duration::minutes(schedule_minutes));
            assert!(until > renewal + Duration::minutes(schedule_minutes));
        }
        ref other => panic!("{other:?}"),
    }
    assert!(
        campaign
            .messages
            .values()
            .any(|m| m.queued.step == 2 && m.queued.template == Template::PaymentFinalNotice),
        "the wait's reminders end with a final notice"
    );
}

#[tokio::test]
async fn a_campaigns_later_offer_replaces_its_own_earlier_one() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(
            Segment::Standard,
            "group_coaching",
            Some("insufficient_funds"),
        )
        .await;
    // Five failed attempts: 0 h, 1 h, 1 d, 3 d, 1 w after the renewal.
    let mut at = datetime!(2026-02-01 00:00 UTC);
    for delay_h in [0, 1, 24, 72, 168] {
        at += Duration::hours(delay_h);
        w.at(at).await;
    }
    let feb = &w.invoices_of(sub).await[1];
    assert_eq!(feb.attempts.len(), 5);
    let campaign = w.billing.dunning_campaign(feb.id.unwrap()).await.unwrap();
    let coupon = |step| match campaign.offers.get(&step) {
        Some(OfferGiven::Discount { coupon }) => coupon.clone(),
        other => panic!("step {step}: {other:?}"),
    };
    assert_eq!(coupon(4), "DUNNING-STANDARD-4-20OFF-ONCE");
    assert_eq!(coupon(5), "DUNNING-STANDARD-5-30OFF-3M");
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(
        state.discount.map(|d| d.coupon.to_string()),
        Some(coupon(5)),
        "the better offer is the one in force"
    );
    w.trial_balance().await;
}

#[tokio::test]
async fn a_used_up_signup_coupon_does_not_stand_in_the_way_of_an_offer() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    w.billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("HELLO10").unwrap(),
            discount: Discount::PercentOff {
                percent: Decimal::from(10),
            },
            duration: CouponDuration::Once,
            max_redemptions: None,
            redeem_by: None,
        })
        .await
        .unwrap();
    let customer = w
        .billing
        .create_customer(NewCustomer {
            segment: Segment::Standard,
            tax_location: None,
            contact: None,
        })
        .await
        .unwrap();
    let card = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
    w.billing
        .attach_payment_method(customer, card)
        .await
        .unwrap();
    let sub = w
        .subscribe(customer, "group_coaching", Trial::Skip, Some("HELLO10"))
        .await;
    assert!(
        w.invoices_of(sub).await[0].discount.is_some(),
        "used in January"
    );
    w.billing
        .attach_payment_method(
            customer,
            SimulatedGateway::failing_card("insufficient_funds", 12, 2030),
        )
        .await
        .unwrap();
    let mut at = datetime!(2026-02-01 00:00 UTC);
    for delay_h in [0, 1, 24, 72] {
        at += Duration::hours(delay_h);
        w.at(at).await;
    }
    let feb = &w.invoices_of(sub).await[1];
    assert!(feb.discount.is_none(), "the once coupon was used up");
    let campaign = w.billing.dunning_campaign(feb.id.unwrap()).await.unwrap();
    assert!(
        matches!(campaign.offers.get(&4), Some(OfferGiven::Discount { coupon }) if coupon == "DUNNING-STANDARD-4-20OFF-ONCE"),
        "{:?}",
        campaign.offers
    );
}

#[tokio::test]
async fn a_campaign_whose_invoice_is_credited_to_zero_is_closed_not_recovered() {
    let w = world(datetime!(2026-01-01 00:00 UTC)).await;
    let (_, sub) = w
        .failing_subscriber(Segment::Standard, "community_access", Some("card_declined"))
        .await;
    w.at(datetime!(2026-02-01 00:00 UTC)).await;
    let feb = &w.invoices_of(sub).await[1];
    let id = feb.id.unwrap();
    let credited = w
        .billing
        .credit_note(id, feb.amount_remaining(), "order_change")
        .await
        .unwrap();
    assert_eq!(credited.status, InvoiceStatus::Paid);
    let campaign = w.billing.dunning_campaign(id).await.unwrap();
    assert!(
        matches!(
            &campaign.ending,
            Some((Ending::Closed { reason }, _)) if reason == "credited"
        ),
        "{:?}",
        campaign.ending
    );
    assert!(
        campaign
            .due_messages(datetime!(2026-03-01 00:00 UTC))
            .is_empty(),
        "nothing more is sent"
    );
    w.trial_balance().await;
}
