//! Properties of the metrics over random histories of a subscription business:
//! random subscribes, plan changes (now and at period end, monthly and yearly),
//! cancellations, pauses, resumes, cards that fail and are fixed, discounts on
//! running subscriptions and refunds, some of them at once (concurrent commands
//! of different customers), with the scheduler running every six hours.
//!
//! Each history runs twice: once with a scheduler that never stops, once with a
//! scheduler that stops for one to two weeks (no commands meanwhile) and then
//! catches up in one tick. Checked for both:
//! - the trial balance is zero after every event;
//! - the movements add up to the MRR of every day, and to the subscriptions' MRR;
//! - the live read models equal a rebuild from the first event (so MRR as of any
//!   day is the same live and rebuilt), the projector restarted (reloading from
//!   its tables) at a random step, under a random counting profile;
//!
//! and across the two: the metrics (movements per day and kind, customers
//! counted, MRR per plan and day, subscriptions' states and MRR) are equal.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use proptest::prelude::*;
use recur_commands::billing::{NewCoupon, NewCustomer, NewSubscription, PlanChange, Trial};
use recur_commands::catalog::{Billing as PriceBilling, Price};
use recur_commands::coupon::{CouponDuration, Discount};
use recur_commands::invoice::{InvoiceEvent, InvoiceStatus};
use recur_commands::period::{Interval, IntervalUnit};
use recur_commands::postings::TrialBalance;
use recur_commands::subscription::Timing;
use recur_commands::{
    Billing, BillingError, Catalog, CouponCode, CustomerId, Scheduler, SimulatedGateway,
    SubscriptionId,
};
use recur_ledger::{Money, Position, TestClock};
use recur_projections::Projector;
use recur_projections::db::{Db, Stmt, Value};
use recur_projections::mrr::{self, Mrr};
use recur_projections::profile::{OnceCoupon, PauseRule, Profile};
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

/// Customers of every history; the last one has no card.
const CUSTOMERS: usize = 6;
/// Days a history runs.
const DAYS: i64 = 100;
/// Hours between scheduler ticks.
const TICK_HOURS: i64 = 6;
const PLANS: [(&str, Option<&str>); 4] = [
    ("community_access", None),
    ("group_coaching", None),
    ("elite_coaching", None),
    ("community_access", Some("community_access_usd_year_v1")),
];
const COUPONS: [&str; 3] = ["ONCE20", "HALF", "RET3"];

/// One thing a customer does.
#[derive(Clone, Debug)]
enum Act {
    Subscribe {
        plan: usize,
        trial: bool,
        coupon: Option<usize>,
    },
    Change {
        sub: usize,
        plan: usize,
        now: bool,
    },
    Cancel {
        sub: usize,
        now: bool,
    },
    Pause {
        sub: usize,
    },
    Resume {
        sub: usize,
    },
    CardFails,
    CardFixed,
    Discount {
        sub: usize,
        coupon: usize,
        now: bool,
    },
    NoDiscount {
        sub: usize,
    },
    Refund {
        sub: usize,
    },
}

fn act() -> impl Strategy<Value = Act> {
    prop_oneof![
        4 => (0..PLANS.len(), any::<bool>(), proptest::option::weighted(0.2, 0..COUPONS.len()))
            .prop_map(|(plan, trial, coupon)| Act::Subscribe { plan, trial, coupon }),
        3 => (0usize..4, 0..PLANS.len(), any::<bool>()).prop_map(|(sub, plan, now)| Act::Change { sub, plan, now }),
        2 => (0usize..4, any::<bool>()).prop_map(|(sub, now)| Act::Cancel { sub, now }),
        1 => (0usize..4).prop_map(|sub| Act::Pause { sub }),
        1 => (0usize..4).prop_map(|sub| Act::Resume { sub }),
        1 => Just(Act::CardFails),
        1 => Just(Act::CardFixed),
        1 => (0usize..4, 0..COUPONS.len(), any::<bool>()).prop_map(|(sub, coupon, now)| Act::Discount { sub, coupon, now }),
        1 => (0usize..4).prop_map(|sub| Act::NoDiscount { sub }),
        1 => (0usize..4).prop_map(|sub| Act::Refund { sub }),
    ]
}

/// At an hour of the history, some customers act at once (one act each).
#[derive(Clone, Debug)]
struct Step {
    hour: i64,
    acts: Vec<(usize, Act)>,
}

fn step() -> impl Strategy<Value = Step> {
    (
        0..DAYS * 24,
        proptest::collection::vec((0..CUSTOMERS, act()), 1..4),
    )
        .prop_map(|(hour, acts)| {
            let mut seen = std::collections::HashSet::new();
            let acts = acts.into_iter().filter(|(c, _)| seen.insert(*c)).collect();
            Step { hour, acts }
        })
}

/// A history: its steps in time order, the scheduler's outage in the second
/// run, the step after which the projector restarts (reloading from its
/// tables), and the counting profile.
#[derive(Clone, Debug)]
struct History {
    steps: Vec<Step>,
    gap: (i64, i64),
    restart_after: usize,
    profile: Profile,
}

fn profile() -> impl Strategy<Value = Profile> {
    prop_oneof![
        Just(Profile::default()),
        Just(Profile::named("conservative").unwrap()),
        Just(Profile {
            name: "custom".into(),
            pause: PauseRule::Churn,
            once_coupon: OnceCoupon::Ignore,
            past_due_churn_days: Some(7),
        }),
    ]
}

fn history() -> impl Strategy<Value = History> {
    (
        proptest::collection::vec(step(), 5..30),
        10i64..70,
        7i64..15,
        any::<prop::sample::Index>(),
        profile(),
    )
        .prop_map(|(mut steps, gap_day, gap_days, restart, profile)| {
            let gap = (gap_day * 24, (gap_day + gap_days) * 24);
            // No command while the scheduler is away: what it would have done
            // first must not depend on when it comes back.
            steps.retain(|s| s.hour < gap.0 || s.hour >= gap.1);
            steps.sort_by_key(|s| s.hour);
            let restart_after = restart.index(steps.len().max(1));
            History {
                steps,
                gap,
                restart_after,
                profile,
            }
        })
}

const START: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);

struct World {
    clock: TestClock,
    billing: Arc<Billing>,
    scheduler: Scheduler,
    customers: Vec<CustomerId>,
    subscriptions: Vec<Vec<SubscriptionId>>,
    store: common::TestLedger,
}

async fn world() -> World {
    let clock = TestClock::at(START);
    let store = common::sqlite_with(Arc::new(clock.clone())).await;
    let billing = Arc::new(
        Billing::open(
            store.ledger.clone(),
            Catalog::default_catalog().unwrap(),
            Arc::new(SimulatedGateway::new()),
        )
        .await
        .unwrap(),
    );
    billing
        .create_price(Price {
            id: "community_access_usd_year_v1".into(),
            plan_id: "community_access".into(),
            unit_amount: Money::parse("970.00", "USD").unwrap(),
            billing: PriceBilling::Recurring {
                interval: Interval {
                    unit: IntervalUnit::Year,
                    count: 1,
                },
            },
        })
        .await
        .unwrap();
    for (code, discount, duration) in [
        (
            "ONCE20",
            Discount::PercentOff { percent: 20.into() },
            CouponDuration::Once,
        ),
        (
            "HALF",
            Discount::PercentOff { percent: 50.into() },
            CouponDuration::Forever,
        ),
        (
            "RET3",
            Discount::AmountOff {
                amount: Money::parse("10.00", "USD").unwrap(),
            },
            CouponDuration::Repeating { months: 3 },
        ),
    ] {
        billing
            .create_coupon(NewCoupon {
                code: CouponCode::parse(code).unwrap(),
                discount,
                duration,
                max_redemptions: None,
                redeem_by: None,
            })
            .await
            .unwrap();
    }
    let mut customers = Vec::new();
    for i in 0..CUSTOMERS {
        let customer = billing
            .create_customer(NewCustomer::default())
            .await
            .unwrap();
        if i + 1 < CUSTOMERS {
            let card = SimulatedGateway::tokenize("4242424242424242", 12, 2040).unwrap();
            billing.attach_payment_method(customer, card).await.unwrap();
        }
        customers.push(customer);
    }
    let scheduler = Scheduler::new(Arc::clone(&billing), 4);
    World {
        clock,
        billing,
        scheduler,
        customers,
        subscriptions: vec![Vec::new(); CUSTOMERS],
        store,
    }
}

/// Refusals are part of a random history; anything else is a bug.
fn refusal_only<T>(result: Result<T, BillingError>) {
    if let Err(error) = result {
        assert!(matches!(error, BillingError::Domain(_)), "{error}");
    }
}

/// One customer's act; a new subscription's id when it makes one.
async fn perform(
    billing: &Billing,
    customer: CustomerId,
    subs: &[SubscriptionId],
    act: &Act,
) -> Option<SubscriptionId> {
    let sub = |i: &usize| subs.get(*i % subs.len().max(1)).copied();
    let timing = |now: &bool| if *now { Timing::Now } else { Timing::PeriodEnd };
    match act {
        Act::Subscribe {
            plan,
            trial,
            coupon,
        } => {
            let (plan_id, price_id) = PLANS[*plan];
            let made = billing
                .subscribe(NewSubscription {
                    customer_id: customer,
                    plan_id: plan_id.into(),
                    price_id: price_id.map(str::to_owned),
                    quantity: 1,
                    trial: if *trial {
                        Trial::PlanDefault
                    } else {
                        Trial::Skip
                    },
                    coupon: coupon.map(|c| CouponCode::parse(COUPONS[c]).unwrap()),
                })
                .await;
            match made {
                Ok(id) => return Some(id),
                Err(error) => refusal_only::<()>(Err(error)),
            }
        }
        Act::Change { sub: i, plan, now } => {
            if let Some(id) = sub(i) {
                let (plan_id, price_id) = PLANS[*plan];
                let change = PlanChange {
                    plan_id: plan_id.into(),
                    price_id: price_id.map(str::to_owned),
                    quantity: None,
                    timing: timing(now),
                };
                refusal_only(billing.change_plan(id, change).await);
            }
        }
        Act::Cancel { sub: i, now } => {
            if let Some(id) = sub(i) {
                refusal_only(billing.cancel(id, timing(now)).await);
            }
        }
        Act::Pause { sub: i } => {
            if let Some(id) = sub(i) {
                refusal_only(billing.pause(id).await);
            }
        }
        Act::Resume { sub: i } => {
            if let Some(id) = sub(i) {
                refusal_only(billing.resume(id).await);
            }
        }
        Act::CardFails => {
            let card = SimulatedGateway::failing_card("insufficient_funds", 12, 2040);
            refusal_only(billing.attach_payment_method(customer, card).await);
        }
        Act::CardFixed => {
            let card = SimulatedGateway::tokenize("5555555555554444", 12, 2040).unwrap();
            refusal_only(billing.attach_payment_method(customer, card).await);
        }
        Act::Discount {
            sub: i,
            coupon,
            now,
        } => {
            if let Some(id) = sub(i) {
                let code = CouponCode::parse(COUPONS[*coupon]).unwrap();
                refusal_only(billing.apply_discount(id, &code, timing(now)).await);
            }
        }
        Act::NoDiscount { sub: i } => {
            if let Some(id) = sub(i) {
                refusal_only(billing.remove_discount(id, Timing::Now).await);
            }
        }
        Act::Refund { sub: i } => {
            if let Some(id) = sub(i) {
                let state = billing.subscription(id).await.unwrap();
                for invoice in state.invoices.iter().rev() {
                    let invoice = billing.invoice(*invoice).await.unwrap();
                    if invoice.status == InvoiceStatus::Paid && invoice.amount_paid.is_some() {
                        let amount = Money::parse("10.00", "USD").unwrap();
                        refusal_only(
                            billing
                                .refund(invoice.id.unwrap(), amount, "requested_by_customer")
                                .await,
                        );
                        break;
                    }
                }
            }
        }
    }
    None
}

/// Runs the history; `late` leaves the scheduler out during the gap. The
/// projector follows along, caught up after every step and tick.
async fn run(history: &History, late: bool) -> (World, Projector<Mrr>) {
    let mut w = world().await;
    let open = || {
        Projector::open(
            w.store.ledger.clone(),
            Mrr::with_profile(history.profile.clone()),
        )
    };
    let mut projector = open().await.unwrap();
    let mut steps = history.steps.iter().enumerate().peekable();
    let mut tick_hour = 0;
    while tick_hour <= DAYS * 24 {
        while let Some((index, step)) = steps.next_if(|(_, s)| s.hour < tick_hour) {
            w.clock.advance_to(START + Duration::hours(step.hour));
            // The customers of one step act at once, each on a task of its own.
            let mut acting = tokio::task::JoinSet::new();
            for (customer, act) in step.acts.iter().cloned() {
                let billing = Arc::clone(&w.billing);
                let (id, subs) = (w.customers[customer], w.subscriptions[customer].clone());
                acting.spawn(async move { (customer, perform(&billing, id, &subs, &act).await) });
            }
            while let Some(joined) = acting.join_next().await {
                if let (customer, Some(sub)) = joined.unwrap() {
                    w.subscriptions[customer].push(sub);
                }
            }
            projector.catch_up().await.unwrap();
            if index == history.restart_after {
                // A new process: the projector reloads its memory from its tables.
                drop(projector);
                projector = open().await.unwrap();
            }
        }
        let away = late && tick_hour >= history.gap.0 && tick_hour < history.gap.1;
        if !away {
            w.clock.advance_to(START + Duration::hours(tick_hour));
            let report = w.scheduler.tick().await.unwrap();
            assert!(report.failures.is_empty(), "{:?}", report.failures);
            projector.catch_up().await.unwrap();
        }
        tick_hour += TICK_HOURS;
    }
    (w, projector)
}

async fn rows(db: &Db, sql: String, kinds: &str) -> Vec<Vec<Value>> {
    db.query(&Stmt::new(sql, vec![]), kinds).await.unwrap()
}

fn text(value: &Value) -> String {
    match value {
        Value::Text(t) => t.clone(),
        Value::Int(i) => i.to_string(),
        Value::Null => "null".into(),
    }
}

/// The trial balance is zero after every event.
async fn books_balance_after_every_event(w: &World) {
    let mut balance = TrialBalance::default();
    let mut after = Position::START;
    loop {
        let page = w.store.ledger.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for recorded in page.iter().filter(|e| e.stream_id.category() == "invoice") {
            let event: InvoiceEvent = serde_json::from_str(&recorded.payload).unwrap();
            balance.add(event.postings()).unwrap();
            assert!(
                balance.is_balanced(),
                "unbalanced after {}",
                recorded.position.0
            );
        }
        after = last;
    }
}

/// The movements add up to the MRR at the end of every day with a change, and
/// to the subscriptions' MRR in the end.
async fn movements_add_up_to_mrr_every_day(db: &Db) {
    let by_day = rows(
        db,
        format!(
            "SELECT day, CAST(SUM(delta_minor) AS BIGINT) FROM {} GROUP BY day ORDER BY day",
            mrr::MOVEMENTS
        ),
        "ti",
    )
    .await;
    let daily = mrr::daily(db, "*", time::macros::date!(2099 - 12 - 31))
        .await
        .unwrap();
    let mut moved = 0;
    let mut cumulative = Vec::new();
    for row in &by_day {
        let Value::Int(delta) = row[1] else {
            panic!("a day's sum is an integer: {row:?}")
        };
        moved += delta;
        cumulative.push((text(&row[0]), moved));
    }
    for (day, mrr) in &daily {
        let moved_by = cumulative
            .iter()
            .take_while(|(d, _)| d <= day)
            .last()
            .map_or(0, |(_, m)| *m);
        assert_eq!(moved_by, *mrr, "movements and MRR part on {day}");
    }
    let (total,): (i64,) = db
        .row(&Stmt::new(
            format!(
                "SELECT CAST(COALESCE(SUM(mrr_minor), 0) AS BIGINT) FROM {}",
                mrr::SUBSCRIPTIONS
            ),
            vec![],
        ))
        .await
        .unwrap();
    assert_eq!(moved, total, "movements and the subscriptions' MRR part");
    assert_eq!(daily.last().map_or(0, |(_, m)| *m), total);
    let kinds = rows(
        db,
        format!(
            "SELECT DISTINCT kind FROM {} WHERE kind <> ''",
            mrr::MOVEMENTS
        ),
        "t",
    )
    .await;
    for kind in kinds {
        assert!(
            mrr::MovementKind::parse(&text(&kind[0])).is_some(),
            "{kind:?}"
        );
    }
}

/// The figures of a business, independent of ids.
async fn figures(db: &Db) -> Vec<String> {
    let mut out: Vec<String> = rows(
        db,
        format!(
            "SELECT day, kind, CAST(COUNT(DISTINCT customer_id || '|' || effective_at) AS BIGINT),
                    CAST(SUM(delta_minor) AS BIGINT)
             FROM {} WHERE kind <> '' GROUP BY day, kind ORDER BY day, kind",
            mrr::MOVEMENTS
        ),
        "ttii",
    )
    .await
    .iter()
    .map(|r| r.iter().map(text).collect::<Vec<_>>().join(" "))
    .collect();
    for plan in ["*", "community_access", "group_coaching", "elite_coaching"] {
        for (day, mrr) in mrr::daily(db, plan, time::macros::date!(2099 - 12 - 31))
            .await
            .unwrap()
        {
            out.push(format!("{plan} {day} {mrr}"));
        }
    }
    let mut subscriptions: Vec<String> = rows(
        db,
        format!("SELECT plan, status, mrr_minor FROM {}", mrr::SUBSCRIPTIONS),
        "tti",
    )
    .await
    .iter()
    .map(|r| r.iter().map(text).collect::<Vec<_>>().join(" "))
    .collect();
    subscriptions.sort();
    out.extend(subscriptions);
    out
}

async fn check(history: History) {
    let mut results = Vec::new();
    for late in [false, true] {
        let (w, mut projector) = run(&history, late).await;
        books_balance_after_every_event(&w).await;
        let db = projector.db().clone();
        movements_add_up_to_mrr_every_day(&db).await;
        let live = mrr::snapshot(&db).await.unwrap();
        projector.rebuild().await.unwrap();
        assert_eq!(
            mrr::snapshot(&db).await.unwrap(),
            live,
            "the live read model is what a rebuild from the first event gives"
        );
        results.push(figures(&db).await);
    }
    assert_eq!(
        results[0], results[1],
        "a scheduler away from {} h to {} h changed the metrics",
        history.gap.0, history.gap.1
    );
}

proptest! {
    // 10 histories in the suite; RECUR_PROPERTY_CASES=N runs more.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("RECUR_PROPERTY_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(10)
    ))]

    #[test]
    fn metrics_hold_and_agree_over_random_histories_and_a_late_scheduler(history in history()) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(check(history));
    }
}
