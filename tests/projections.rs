//! The MRR projection: a hand-computed week of movements, its invariants, and
//! rebuild equivalence (live, incremental tables = tables rebuilt from the first event).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::sync::Arc;

use recur_commands::billing::{NewCoupon, NewCustomer, NewSubscription, PlanChange, Trial};
use recur_commands::coupon::{CouponDuration, Discount};
use recur_commands::subscription::Timing;
use recur_commands::{Billing, Catalog, CouponCode, CustomerId, SimulatedGateway, SubscriptionId};
use recur_ledger::TestClock;
use recur_projections::Projector;
use recur_projections::db::{Db, Stmt, Value};
use recur_projections::mrr::{self, Mrr};
use time::Duration;
use time::macros::datetime;

struct World {
    clock: TestClock,
    billing: Arc<Billing>,
    store: common::TestLedger,
}

async fn world(postgres: bool) -> World {
    world_at(postgres, datetime!(2026-03-01 09:00 UTC)).await
}

async fn world_at(postgres: bool, start: time::OffsetDateTime) -> World {
    let clock = TestClock::at(start);
    let store = if postgres {
        common::postgres_with(Arc::new(clock.clone())).await
    } else {
        common::sqlite_with(Arc::new(clock.clone())).await
    };
    let billing = Arc::new(
        Billing::open(
            store.ledger.clone(),
            Catalog::default_catalog().unwrap(),
            Arc::new(SimulatedGateway::new()),
        )
        .await
        .unwrap(),
    );
    World {
        clock,
        billing,
        store,
    }
}

impl World {
    async fn customer(&self) -> CustomerId {
        self.customer_with_card("4242424242424242").await
    }

    /// A customer whose card is declined on every charge.
    async fn customer_with_declining_card(&self) -> CustomerId {
        self.customer_with_card("4000000000000341").await
    }

    /// A customer with the test card `number` on file.
    async fn customer_with_card(&self, number: &str) -> CustomerId {
        let id = self
            .billing
            .create_customer(NewCustomer::default())
            .await
            .unwrap();
        let card = SimulatedGateway::tokenize(number, 12, 2040).unwrap();
        self.billing.attach_payment_method(id, card).await.unwrap();
        id
    }

    async fn subscribe(
        &self,
        customer: CustomerId,
        plan: &str,
        coupon: Option<&str>,
    ) -> SubscriptionId {
        self.billing
            .subscribe(NewSubscription {
                customer_id: customer,
                plan_id: plan.into(),
                price_id: None,
                quantity: 1,
                trial: Trial::Skip,
                coupon: coupon.map(|c| CouponCode::parse(c).unwrap()),
            })
            .await
            .unwrap()
    }

    fn day(&self, n: i64) {
        self.clock
            .advance_to(datetime!(2026-03-01 09:00 UTC) + Duration::days(n - 1));
    }
}

async fn rows(db: &Db, sql: &str, kinds: &str) -> Vec<Vec<Value>> {
    db.query(&Stmt::new(sql, vec![]), kinds).await.unwrap()
}

fn text(v: &Value) -> String {
    match v {
        Value::Text(t) => t.clone(),
        Value::Int(i) => i.to_string(),
        Value::Null => "null".into(),
    }
}

/// Every table of the projection, as text, in a stable order.
async fn dump(db: &Db) -> Vec<String> {
    mrr::snapshot(db).await.unwrap()
}

async fn a_week_of_movements_to_the_cent(postgres: bool) {
    let w = world(postgres).await;
    let mut projector = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    w.billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("WELCOME20").unwrap(),
            discount: Discount::PercentOff { percent: 20.into() },
            duration: CouponDuration::Repeating { months: 3 },
            max_redemptions: None,
            redeem_by: None,
        })
        .await
        .unwrap();
    // Day 1: Ann takes Community (new +97.00).
    w.day(1);
    let ann = w.customer().await;
    let ann_sub = w.subscribe(ann, "community_access", None).await;
    projector.catch_up().await.unwrap();
    // Day 2: Bob takes Elite (new +5000.00).
    w.day(2);
    let bob = w.customer().await;
    let bob_sub = w.subscribe(bob, "elite_coaching", None).await;
    // Day 3: Ann upgrades to Group (expansion +1403.00).
    w.day(3);
    let change = |plan: &str| PlanChange {
        plan_id: plan.into(),
        price_id: None,
        quantity: None,
        timing: Timing::Now,
    };
    w.billing
        .change_plan(ann_sub, change("group_coaching"))
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    // Day 4: Bob downgrades to Group (contraction −3500.00).
    w.day(4);
    w.billing
        .change_plan(bob_sub, change("group_coaching"))
        .await
        .unwrap();
    // Day 5: Bob cancels now (churn −1500.00).
    w.day(5);
    w.billing.cancel(bob_sub, Timing::Now).await.unwrap();
    // Day 6: Bob comes back on Community (reactivation +97.00).
    w.day(6);
    w.subscribe(bob, "community_access", None).await;
    // Day 7: Cleo takes Community with 20 % off for three months (new +77.60); a
    // trial that has not converted counts nothing.
    w.day(7);
    let cleo = w.customer().await;
    w.subscribe(cleo, "community_access", Some("WELCOME20"))
        .await;
    let dan = w.customer().await;
    w.billing
        .subscribe(NewSubscription {
            customer_id: dan,
            plan_id: "group_coaching".into(),
            price_id: None,
            quantity: 1,
            trial: Trial::PlanDefault,
            coupon: None,
        })
        .await
        .unwrap();
    projector.catch_up().await.unwrap();

    let db = projector.db().clone();
    let movements: Vec<(String, String, i64)> = rows(
        &db,
        &format!(
            "SELECT day, kind, delta_minor FROM {} ORDER BY position",
            mrr::MOVEMENTS
        ),
        "tti",
    )
    .await
    .iter()
    .map(|r| {
        (
            text(&r[0]),
            text(&r[1]),
            match r[2] {
                Value::Int(v) => v,
                _ => 0,
            },
        )
    })
    .collect();
    let expected: Vec<(String, String, i64)> = [
        ("2026-03-01", "new", 9_700),
        ("2026-03-02", "new", 500_000),
        ("2026-03-03", "expansion", 140_300),
        ("2026-03-04", "contraction", -350_000),
        ("2026-03-05", "churn", -150_000),
        ("2026-03-06", "reactivation", 9_700),
        ("2026-03-07", "new", 7_760),
    ]
    .iter()
    .map(|(d, k, v)| ((*d).to_owned(), (*k).to_owned(), *v))
    .collect();
    assert_eq!(movements, expected);
    let daily = mrr::daily(&db, "*", time::macros::date!(2026 - 12 - 31))
        .await
        .unwrap();
    let expected_daily: Vec<(String, i64)> = [
        ("2026-03-01", 9_700),
        ("2026-03-02", 509_700),
        ("2026-03-03", 650_000),
        ("2026-03-04", 300_000),
        ("2026-03-05", 150_000),
        ("2026-03-06", 159_700),
        ("2026-03-07", 167_460),
    ]
    .iter()
    .map(|(d, v)| ((*d).to_owned(), *v))
    .collect();
    assert_eq!(daily, expected_daily);

    // Invariants: MRR is the sum of the subscriptions', and the movements add up to it.
    let total: i64 = rows(
        &db,
        &format!(
            "SELECT CAST(SUM(mrr_minor) AS BIGINT) FROM {}",
            mrr::SUBSCRIPTIONS
        ),
        "i",
    )
    .await[0][0]
        .clone()
        .try_int();
    let moved: i64 = rows(
        &db,
        &format!(
            "SELECT CAST(SUM(delta_minor) AS BIGINT) FROM {}",
            mrr::MOVEMENTS
        ),
        "i",
    )
    .await[0][0]
        .clone()
        .try_int();
    assert_eq!((total, moved), (167_460, 167_460));

    // Rebuilt from the first event, the tables are exactly the live ones.
    let live = dump(&db).await;
    let rebuilt = projector.rebuild().await.unwrap();
    assert!(rebuilt > 20);
    assert_eq!(dump(&db).await, live);
}

trait TryInt {
    fn try_int(self) -> i64;
}

impl TryInt for Value {
    fn try_int(self) -> i64 {
        match self {
            Value::Int(v) => v,
            other => panic!("not an integer: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_movements_to_the_cent_on_sqlite() {
    a_week_of_movements_to_the_cent(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_week_of_movements_to_the_cent_on_postgres() {
    a_week_of_movements_to_the_cent(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reopened_projector_resumes_from_its_checkpoint_and_matches_a_rebuild() {
    let w = world(true).await;
    let subscriptions = six_subscriptions(&w).await;
    {
        let mut first = Projector::open(w.store.ledger.clone(), Mrr::new())
            .await
            .unwrap();
        first.catch_up().await.unwrap();
    }
    // More history, then a new process picks up from the checkpoint.
    w.day(40);
    for sub in &subscriptions[..3] {
        w.billing.cancel(*sub, Timing::Now).await.unwrap();
    }
    let mut second = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    assert!(second.position().0 > 0);
    let applied = second.catch_up().await.unwrap();
    assert!((3..20).contains(&applied), "only the new events: {applied}");
    let db = second.db().clone();
    let live = dump(&db).await;
    second.rebuild().await.unwrap();
    assert_eq!(dump(&db).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_on_one_projection_never_apply_an_event_twice() {
    let w = world(true).await;
    for i in 0..4 {
        w.day(i + 1);
        let customer = w.customer().await;
        w.subscribe(customer, "community_access", None).await;
    }
    let mut a = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    let mut b = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    assert!(a.catch_up().await.unwrap() > 0);
    // b still believes the checkpoint is at the start: its write is refused whole.
    let refused = b.catch_up().await;
    assert!(
        refused.is_err(),
        "a stale worker must not write: {refused:?}"
    );
    // Having reloaded the checkpoint, b has nothing left to do.
    assert_eq!(b.catch_up().await.unwrap(), 0);
    w.day(10);
    let late = w.customer().await;
    w.subscribe(late, "group_coaching", None).await;
    assert!(b.catch_up().await.unwrap() > 0);
    assert!(a.catch_up().await.is_err(), "now a is the stale one");
    let db = a.db().clone();
    let moved: i64 = rows(
        &db,
        &format!(
            "SELECT CAST(SUM(delta_minor) AS BIGINT) FROM {}",
            mrr::MOVEMENTS
        ),
        "i",
    )
    .await[0][0]
        .clone()
        .try_int();
    assert_eq!(moved, 4 * 9_700 + 150_000, "each movement once");
    let live = dump(&db).await;
    a.rebuild().await.unwrap();
    assert_eq!(dump(&db).await, live);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revenue_is_earned_ratably_by_day_and_deferred_until_then() {
    use recur_projections::revenue::{Revenue, monthly};
    let w = world(false).await;
    // Community from Jan 16: its period runs to Feb 16, 16 of its 31 days in January.
    w.clock.advance_to(datetime!(2026-03-16 00:00 UTC));
    let customer = w.customer().await;
    w.subscribe(customer, "community_access", None).await;
    let mut projector = Projector::open(w.store.ledger.clone(), Revenue::new())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    let months = monthly(projector.db(), "2026-03", "2026-04").await.unwrap();
    let figures: Vec<(String, i64, i64, i64)> = months
        .iter()
        .map(|m| {
            (
                m.month.clone(),
                m.earned_minor,
                m.billed_minor,
                m.deferred_minor,
            )
        })
        .collect();
    // 9,700 × 16 / 31 = 5,006.45… → 5,006 in March; the rest, 4,694, in April.
    assert_eq!(
        figures,
        vec![
            ("2026-03".into(), 5_006, 9_700, 4_694),
            ("2026-04".into(), 4_694, 0, 0)
        ]
    );
    let live = monthly(projector.db(), "2026-01", "2026-12").await.unwrap();
    projector.rebuild().await.unwrap();
    assert_eq!(
        monthly(projector.db(), "2026-01", "2026-12").await.unwrap(),
        live
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_invoice_ages_in_receivables_and_leaves_them_when_paid() {
    use recur_projections::customers::{Customers, OPEN_INVOICES, aging};
    let w = world(true).await;
    let customer = w.customer_with_declining_card().await;
    w.subscribe(customer, "group_coaching", None).await;
    let mut projector = Projector::open(w.store.ledger.clone(), Customers::new())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    let issued = datetime!(2026-03-01 09:00 UTC).date();
    assert_eq!(
        aging(projector.db(), issued).await.unwrap(),
        [150_000, 0, 0, 0]
    );
    assert_eq!(
        aging(projector.db(), issued + Duration::days(45))
            .await
            .unwrap(),
        [0, 150_000, 0, 0]
    );
    assert_eq!(
        aging(projector.db(), issued + Duration::days(120))
            .await
            .unwrap(),
        [0, 0, 0, 150_000]
    );
    // The customer fixes the card and pays now: nothing is owed any more.
    let card = SimulatedGateway::tokenize("4242424242424242", 12, 2040).unwrap();
    w.billing
        .attach_payment_method(customer, card)
        .await
        .unwrap();
    let open = text(
        &rows(
            projector.db(),
            &format!("SELECT invoice_id FROM {OPEN_INVOICES}"),
            "t",
        )
        .await[0][0],
    );
    w.billing
        .pay_now(recur_commands::InvoiceId::parse(&open).unwrap())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    assert_eq!(aging(projector.db(), issued).await.unwrap(), [0, 0, 0, 0]);
}

/// Six customers on alternating plans, one a day from day 1.
async fn six_subscriptions(w: &World) -> Vec<SubscriptionId> {
    let mut subscriptions = Vec::new();
    for i in 0..6 {
        w.day(i + 1);
        let customer = w.customer().await;
        let plan = if i % 2 == 0 {
            "community_access"
        } else {
            "group_coaching"
        };
        subscriptions.push(w.subscribe(customer, plan, None).await);
    }
    subscriptions
}

async fn a_rebuild_builds_beside_the_tables_in_use(postgres: bool) {
    use recur_ledger::Position;
    let w = world(postgres).await;
    let subscriptions = six_subscriptions(&w).await;
    let mut live = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    live.catch_up().await.unwrap();
    let before = dump(live.db()).await;
    assert!(before.len() > 10, "six subscriptions project: {before:?}");

    let mut rebuild = live.start_rebuild().await.unwrap();
    let half = Position(live.position().0 / 2);
    rebuild.projector().catch_up_to(half).await.unwrap();
    assert!(rebuild.projector().position() <= half);
    assert_ne!(
        dump(rebuild.projector().db()).await,
        before,
        "the shadow is half built"
    );
    assert_eq!(
        dump(live.db()).await,
        before,
        "meanwhile the tables in use answer in full"
    );

    // Another worker keeps the tables in use current during the rebuild.
    let mut other = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    w.day(20);
    w.billing
        .cancel(subscriptions[1], Timing::Now)
        .await
        .unwrap();
    assert!(other.catch_up().await.unwrap() > 0);
    let current = dump(live.db()).await;
    assert_ne!(current, before, "the cancellation is projected");

    rebuild.projector().catch_up().await.unwrap();
    live.finish_rebuild(rebuild).await.unwrap();
    assert_eq!(
        dump(live.db()).await,
        current,
        "the rebuilt tables replace the old ones with the same rows"
    );

    // The other worker loaded the tables before the switch: its next write is
    // refused whole, then it reloads and carries on from the new checkpoint.
    w.day(25);
    let late = w.customer().await;
    w.subscribe(late, "group_coaching", None).await;
    assert!(
        other.catch_up().await.is_err(),
        "a stale generation must not write"
    );
    assert!(other.catch_up().await.unwrap() > 0);
    let now = dump(live.db()).await;
    assert_ne!(now, current);
    live.rebuild().await.unwrap();
    assert_eq!(dump(live.db()).await, now, "nothing lost or applied twice");

    // After a switch the projector carries on from the rebuilt memory: what it
    // applies next is what a rebuild from the first event gives.
    w.day(26);
    let later = w.customer().await;
    w.subscribe(later, "group_coaching", None).await;
    assert!(live.catch_up().await.unwrap() > 0);
    let carried_on = dump(live.db()).await;
    assert_ne!(carried_on, now);
    live.rebuild().await.unwrap();
    assert_eq!(dump(live.db()).await, carried_on);

    if postgres {
        let shadows = rows(
            live.db(),
            "SELECT CAST(COUNT(*) AS BIGINT) FROM information_schema.schemata WHERE schema_name LIKE 'recur_shadow_%'",
            "i",
        )
        .await;
        assert_eq!(shadows[0][0], Value::Int(0), "no shadow is left behind");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_builds_beside_the_tables_in_use_on_sqlite() {
    a_rebuild_builds_beside_the_tables_in_use(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_builds_beside_the_tables_in_use_on_postgres() {
    a_rebuild_builds_beside_the_tables_in_use(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_built_by_another_version_is_rebuilt_on_open() {
    let w = world(false).await;
    six_subscriptions(&w).await;
    let mut projector = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    let live = dump(projector.db()).await;
    // As if an older release had built the tables: wrong rows, another version,
    // and a table this version added missing.
    projector
        .db()
        .transaction(&[
            Stmt::new(format!("DELETE FROM {}", mrr::CUSTOMERS), vec![]),
            Stmt::new(format!("DROP TABLE {}", mrr::PAST_DUE), vec![]),
            Stmt::new(
                "UPDATE projection_checkpoints SET version = 0 WHERE name = 'mrr'",
                vec![],
            ),
        ])
        .await
        .unwrap();
    assert!(
        rows(
            projector.db(),
            &format!("SELECT customer_id FROM {}", mrr::CUSTOMERS),
            "t"
        )
        .await
        .is_empty()
    );
    let reopened = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    assert_eq!(dump(reopened.db()).await, live);
    let checkpoints = recur_projections::set::checkpoints(reopened.db())
        .await
        .unwrap();
    let mrr = checkpoints.iter().find(|c| c.name == "mrr").unwrap();
    assert_eq!(mrr.stored_version, Some(mrr.code_version));
    assert_eq!(mrr.position, reopened.position());
}

async fn every_read_model_as_of_a_past_position(postgres: bool) {
    use recur_projections::{Projections, accounts, customers};
    let w = world(postgres).await;
    let subscriptions = six_subscriptions(&w).await;
    let mut projections = Projections::open(&w.store.ledger).await.unwrap();
    projections.catch_up().await.unwrap();
    let then = projections.position();
    let db = projections.mrr.db().clone();
    let picture = |db: Db| async move {
        (
            mrr::snapshot(&db).await.unwrap(),
            customers::read(&db, None).await.unwrap(),
            accounts::trial_balance(&db, None).await.unwrap(),
            recur_projections::revenue::monthly(&db, "2026-01", "2027-12")
                .await
                .unwrap(),
        )
    };
    let at_then = picture(db.clone()).await;
    // Later history changes every read model.
    w.day(40);
    w.billing
        .cancel(subscriptions[0], Timing::Now)
        .await
        .unwrap();
    let customer = w.customer().await;
    w.subscribe(customer, "elite_coaching", None).await;
    projections.catch_up().await.unwrap();
    let now = picture(db.clone()).await;
    assert_ne!(now.0, at_then.0);
    assert_ne!(now.1, at_then.1);
    assert_ne!(now.2, at_then.2);

    let past = Projections::as_of(&w.store.ledger, then).await.unwrap();
    assert_eq!(picture(past).await, at_then, "as of the earlier position");
    let head = w.store.ledger.last_position().await.unwrap();
    let present = Projections::as_of(&w.store.ledger, head).await.unwrap();
    assert_eq!(
        picture(present).await,
        now,
        "as of the head: the live tables"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_model_as_of_a_past_position_on_sqlite() {
    every_read_model_as_of_a_past_position(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_model_as_of_a_past_position_on_postgres() {
    every_read_model_as_of_a_past_position(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_past_due_for_the_set_days_churns_and_comes_back_when_paid() {
    let w = world(false).await;
    let customer = w.customer().await;
    let sub = w.subscribe(customer, "community_access", None).await;
    let failing = SimulatedGateway::tokenize("4000000000000341", 12, 2040).unwrap();
    w.billing
        .attach_payment_method(customer, failing)
        .await
        .unwrap();
    // The April renewal is declined: past due from April 1, 10:00.
    w.clock.advance_to(datetime!(2026-04-01 10:00 UTC));
    w.billing.advance(sub).await.unwrap();
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.status.name(), "past_due");
    // Eight days on, other business moves the books past the seven-day mark.
    w.clock.advance_to(datetime!(2026-04-09 12:00 UTC));
    w.customer().await;
    // April 10: a working card, and the renewal invoice is paid.
    w.clock.advance_to(datetime!(2026-04-10 09:00 UTC));
    let card = SimulatedGateway::tokenize("4242424242424242", 12, 2040).unwrap();
    w.billing
        .attach_payment_method(customer, card)
        .await
        .unwrap();
    let renewal = *state.invoices.last().unwrap();
    w.billing.pay_now(renewal).await.unwrap();
    assert_eq!(
        w.billing.subscription(sub).await.unwrap().status.name(),
        "active"
    );

    let movements = |db: Db| async move {
        rows(
            &db,
            &format!(
                "SELECT day, kind, delta_minor FROM {} ORDER BY position, seq",
                mrr::MOVEMENTS
            ),
            "tti",
        )
        .await
        .iter()
        .map(|r| format!("{} {} {}", text(&r[0]), text(&r[1]), text(&r[2])))
        .collect::<Vec<_>>()
    };
    let mut seven = Projector::open(
        w.store.ledger.clone(),
        Mrr::with_past_due_churn_days(Some(7)),
    )
    .await
    .unwrap();
    seven.catch_up().await.unwrap();
    assert_eq!(
        movements(seven.db().clone()).await,
        vec![
            "2026-03-01 new 9700",
            "2026-04-08 churn -9700",
            "2026-04-10 reactivation 9700"
        ],
        "churned when the seven days ran out, back when paid"
    );
    let total_on = |db: Db, day: &'static str| async move {
        let through = time::Date::parse(
            day,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .unwrap();
        let daily = mrr::daily(&db, "*", through).await.unwrap();
        Value::Int(daily.last().map_or(0, |(_, mrr)| *mrr))
    };
    assert_eq!(
        total_on(seven.db().clone(), "2026-04-07").await,
        Value::Int(9_700)
    );
    assert_eq!(
        total_on(seven.db().clone(), "2026-04-08").await,
        Value::Int(0)
    );
    assert_eq!(
        total_on(seven.db().clone(), "2026-04-10").await,
        Value::Int(9_700)
    );
    let live = dump(seven.db()).await;
    seven.rebuild().await.unwrap();
    assert_eq!(
        dump(seven.db()).await,
        live,
        "a rebuild gives the same rows"
    );
    assert_eq!(
        seven.describe().1,
        300_007,
        "the setting is part of the stored version"
    );

    // The default: past due counts until canceled (built in a scratch database,
    // which cannot be rebuilt beside itself).
    let mut scratch = Projector::fresh_with(
        w.store.ledger.clone(),
        Db::scratch().await.unwrap(),
        Mrr::with_past_due_churn_days(None),
    )
    .await
    .unwrap();
    assert!(scratch.rebuild().await.is_err());
    let mut off = Projector::fresh_with(
        w.store.ledger.clone(),
        Db::scratch().await.unwrap(),
        Mrr::with_past_due_churn_days(None),
    )
    .await
    .unwrap();
    off.catch_up().await.unwrap();
    assert_eq!(
        movements(off.db().clone()).await,
        vec!["2026-03-01 new 9700"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voided_invoice_takes_its_revenue_back_after_it_left_memory() {
    use recur_projections::revenue::{Revenue, monthly};
    let w = world(true).await;
    let customer = w.customer_with_declining_card().await;
    let sub = w.subscribe(customer, "group_coaching", None).await;
    let mut projector = Projector::open(w.store.ledger.clone(), Revenue::new())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    let billed = |months: Vec<recur_projections::revenue::MonthRevenue>| {
        months.iter().map(|m| m.billed_minor).sum::<i64>()
    };
    assert_eq!(
        billed(monthly(projector.db(), "2026-01", "2026-12").await.unwrap()),
        150_000
    );
    // The finalized invoice is no longer held; its void folds it from the ledger.
    let invoice = *w
        .billing
        .subscription(sub)
        .await
        .unwrap()
        .invoices
        .last()
        .unwrap();
    w.billing.void(invoice).await.unwrap();
    projector.catch_up().await.unwrap();
    let live = monthly(projector.db(), "2026-01", "2026-12").await.unwrap();
    assert_eq!(billed(live.clone()), 0, "billed, then voided");
    assert!(
        live.iter()
            .all(|m| m.earned_minor == 0 && m.deferred_minor == 0)
    );
    projector.rebuild().await.unwrap();
    assert_eq!(
        monthly(projector.db(), "2026-01", "2026-12").await.unwrap(),
        live
    );
}

/// A customer with no card on file.
async fn customer_without_card(w: &World) -> CustomerId {
    w.billing
        .create_customer(NewCustomer::default())
        .await
        .unwrap()
}

/// Moves the clock to each of `instants` and runs what became due.
async fn tick_at(
    w: &World,
    scheduler: &recur_commands::Scheduler,
    instants: impl IntoIterator<Item = time::OffsetDateTime>,
) {
    for instant in instants {
        w.clock.advance_to(instant);
        let report = scheduler.tick().await.unwrap();
        assert!(report.failures.is_empty(), "{:?}", report.failures);
    }
}

/// Every `hours` hours from `from` up to `to` (inclusive).
fn every(
    hours: i64,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) -> Vec<time::OffsetDateTime> {
    let mut out = Vec::new();
    let mut at = from;
    while at <= to {
        out.push(at);
        at += Duration::hours(hours);
    }
    out
}

/// The movements as (day, kind, delta), in effective order.
async fn movements_by_day(db: &Db) -> Vec<String> {
    rows(
        db,
        &format!(
            "SELECT day, kind, delta_minor FROM {} WHERE kind <> '' ORDER BY effective_at, position, seq",
            mrr::MOVEMENTS
        ),
        "tti",
    )
    .await
    .iter()
    .map(|r| format!("{} {} {}", text(&r[0]), text(&r[1]), text(&r[2])))
    .collect()
}

/// Regression (money correctness, defect 2): a trial that converted without a
/// card, or a subscription started without a trial and never paid, counted as
/// MRR (`new`) and then as churn when dunning gave up. A subscription counts
/// from its first paid invoice, dated at that payment; one that never paid is
/// never churn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_never_paid_counts_no_mrr_and_never_churns() {
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world_at(false, start).await;
    let scheduler = recur_commands::Scheduler::new(Arc::clone(&w.billing), 4);
    let trial_no_card = customer_without_card(&w).await;
    let trial_sub = w
        .billing
        .subscribe(NewSubscription {
            customer_id: trial_no_card,
            plan_id: "group_coaching".into(),
            price_id: None,
            quantity: 1,
            trial: Trial::PlanDefault,
            coupon: None,
        })
        .await
        .unwrap();
    let no_trial_no_card = customer_without_card(&w).await;
    let unpaid_sub = w
        .subscribe(no_trial_no_card, "community_access", None)
        .await;
    let pays_late = customer_without_card(&w).await;
    w.billing
        .subscribe(NewSubscription {
            customer_id: pays_late,
            plan_id: "group_coaching".into(),
            price_id: None,
            quantity: 1,
            trial: Trial::PlanDefault,
            coupon: None,
        })
        .await
        .unwrap();
    // The trials end on January 15: declined, no payment method. One customer
    // adds a card at 01:00; the retry due at 02:00 takes it.
    tick_at(&w, &scheduler, every(6, start, start + Duration::days(14))).await;
    w.clock.advance_to(datetime!(2027-01-15 01:00 UTC));
    let card = SimulatedGateway::tokenize("4242424242424242", 12, 2040).unwrap();
    w.billing
        .attach_payment_method(pays_late, card)
        .await
        .unwrap();
    tick_at(
        &w,
        &scheduler,
        every(
            6,
            datetime!(2027-01-15 06:00 UTC),
            datetime!(2027-02-15 00:00 UTC),
        ),
    )
    .await;
    for sub in [trial_sub, unpaid_sub] {
        let state = w.billing.subscription(sub).await.unwrap();
        assert_eq!(state.status.name(), "canceled", "dunning gave up");
        assert!(!state.ever_paid);
    }
    let mut projector = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    let db = projector.db().clone();
    assert_eq!(
        movements_by_day(&db).await,
        vec!["2027-01-15 new 150000"],
        "only the conversion that was paid, dated when its payment was due"
    );
    let daily = mrr::daily(&db, "*", time::macros::date!(2027 - 02 - 15))
        .await
        .unwrap();
    assert_eq!(daily, vec![("2027-01-15".to_owned(), 150_000)]);
    let live = dump(&db).await;
    projector.rebuild().await.unwrap();
    assert_eq!(dump(&db).await, live);
}

/// Regression (money correctness, defect 3): a cancellation at period end that
/// the scheduler recorded six weeks late was churned in the month it was
/// recorded. Movements are dated when the change takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancellation_recorded_late_is_churn_on_the_day_it_took_effect() {
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world_at(false, start).await;
    let scheduler = recur_commands::Scheduler::new(Arc::clone(&w.billing), 4);
    let customer = w.customer().await;
    let sub = w.subscribe(customer, "community_access", None).await;
    w.clock.advance_to(datetime!(2027-01-10 12:00 UTC));
    w.billing.cancel(sub, Timing::PeriodEnd).await.unwrap();
    // One step to March 15: the renewal due on February 1 ends the subscription.
    tick_at(&w, &scheduler, [datetime!(2027-03-15 00:00 UTC)]).await;
    let state = w.billing.subscription(sub).await.unwrap();
    assert_eq!(state.canceled_at, Some(datetime!(2027-02-01 00:00 UTC)));
    let mut projector = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    let db = projector.db().clone();
    assert_eq!(
        movements_by_day(&db).await,
        vec!["2027-01-01 new 9700", "2027-02-01 churn -9700"]
    );
    let daily = mrr::daily(&db, "*", time::macros::date!(2027 - 03 - 31))
        .await
        .unwrap();
    assert_eq!(
        daily,
        vec![
            ("2027-01-01".to_owned(), 9_700),
            ("2027-02-01".to_owned(), 0)
        ]
    );
}

/// The figures of a business, independent of ids: movements per day and kind
/// (customers and amount), MRR per plan at each day's end, and the
/// subscriptions' plans, states and MRR.
async fn figures(db: &Db) -> Vec<String> {
    let mut out: Vec<String> = rows(
        db,
        &format!(
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
        for (day, mrr) in mrr::daily(db, plan, time::macros::date!(2030 - 01 - 01))
            .await
            .unwrap()
        {
            out.push(format!("{plan} {day} {mrr}"));
        }
    }
    let mut subscriptions: Vec<String> = rows(
        db,
        &format!("SELECT plan, status, mrr_minor FROM {}", mrr::SUBSCRIPTIONS),
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

/// The same business twice: one scheduler ticks every six hours, the other
/// stops for ten days around a month end and catches up in one tick. Renewals,
/// trial conversions (paid and unpaid), cancellations and a scheduled downgrade
/// at period end, declined renewals and their retries and write-offs all fall
/// in the gap. The metrics are the same to the cent and to the day.
async fn a_scheduler_that_catches_up_late_gives_the_same_metrics(postgres: bool) {
    let start = datetime!(2027-01-01 00:00 UTC);
    let gap = (
        datetime!(2027-01-28 00:00 UTC),
        datetime!(2027-02-07 00:00 UTC),
    );
    let end = datetime!(2027-03-15 00:00 UTC);
    let mut results = Vec::new();
    for late in [false, true] {
        let w = world_at(postgres, start).await;
        let scheduler = recur_commands::Scheduler::new(Arc::clone(&w.billing), 4);
        let mut projector = Projector::open(w.store.ledger.clone(), Mrr::new())
            .await
            .unwrap();
        // January 1.
        let a = w.customer().await;
        w.billing
            .subscribe(NewSubscription {
                customer_id: a,
                plan_id: "community_access".into(),
                price_id: None,
                quantity: 1,
                trial: Trial::PlanDefault,
                coupon: None,
            })
            .await
            .unwrap();
        let b = customer_without_card(&w).await;
        w.billing
            .subscribe(NewSubscription {
                customer_id: b,
                plan_id: "group_coaching".into(),
                price_id: None,
                quantity: 1,
                trial: Trial::Days(30),
                coupon: None,
            })
            .await
            .unwrap();
        let c = w.customer().await;
        let c_sub = w.subscribe(c, "elite_coaching", None).await;
        let d = w.customer().await;
        let d_sub = w.subscribe(d, "group_coaching", None).await;
        let e = w.customer().await;
        w.subscribe(e, "community_access", None).await;
        let f = w.customer().await;
        let f_first = w.subscribe(f, "community_access", None).await;
        w.subscribe(f, "group_coaching", None).await;
        tick_at(
            &w,
            &scheduler,
            every(6, start, datetime!(2027-01-10 00:00 UTC)),
        )
        .await;
        projector.catch_up().await.unwrap();
        // January 10: C will leave at period end, D moves down at period end,
        // E's card starts failing, F will drop one of two subscriptions.
        w.clock.advance_to(datetime!(2027-01-10 12:00 UTC));
        w.billing.cancel(c_sub, Timing::PeriodEnd).await.unwrap();
        w.billing
            .change_plan(
                d_sub,
                PlanChange {
                    plan_id: "community_access".into(),
                    price_id: None,
                    quantity: None,
                    timing: Timing::PeriodEnd,
                },
            )
            .await
            .unwrap();
        let failing = SimulatedGateway::tokenize("4000000000000341", 12, 2040).unwrap();
        w.billing.attach_payment_method(e, failing).await.unwrap();
        w.billing.cancel(f_first, Timing::PeriodEnd).await.unwrap();
        let ticks: Vec<_> = every(6, datetime!(2027-01-10 18:00 UTC), end)
            .into_iter()
            .filter(|at| !late || *at < gap.0 || *at >= gap.1)
            .collect();
        for at in ticks {
            tick_at(&w, &scheduler, [at]).await;
            projector.catch_up().await.unwrap();
        }
        let db = projector.db().clone();
        let live = dump(&db).await;
        projector.rebuild().await.unwrap();
        assert_eq!(dump(&db).await, live, "a rebuild gives the same rows");
        results.push(figures(&db).await);
    }
    assert!(results[0].len() > 10, "{:?}", results[0]);
    assert_eq!(results[0], results[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_that_catches_up_late_gives_the_same_metrics_on_sqlite() {
    a_scheduler_that_catches_up_late_gives_the_same_metrics(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_that_catches_up_late_gives_the_same_metrics_on_postgres() {
    a_scheduler_that_catches_up_late_gives_the_same_metrics(true).await;
}

async fn coupon(w: &World, code: &str, discount: Discount, duration: CouponDuration) {
    w.billing
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

/// The totals of a subscription's invoices, oldest first.
async fn invoice_totals(w: &World, sub: SubscriptionId) -> Vec<String> {
    let state = w.billing.subscription(sub).await.unwrap();
    let mut out = Vec::new();
    for id in state.invoices {
        let invoice = w.billing.invoice(id).await.unwrap();
        out.push(invoice.totals.unwrap().total.amount().to_string());
    }
    out
}

/// Discounts on a running subscription (retention and dunning offers): in force
/// now or from the next period, taken off, a `once` coupon for one period; each
/// bills what it says and moves MRR when it takes effect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_discount_on_a_running_subscription_bills_and_moves_mrr_when_it_takes_effect() {
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world_at(false, start).await;
    let scheduler = recur_commands::Scheduler::new(Arc::clone(&w.billing), 4);
    coupon(
        &w,
        "HALF",
        Discount::PercentOff { percent: 50.into() },
        CouponDuration::Forever,
    )
    .await;
    coupon(
        &w,
        "ONCE20",
        Discount::PercentOff { percent: 20.into() },
        CouponDuration::Once,
    )
    .await;
    let customer = w.customer().await;
    let sub = w.subscribe(customer, "community_access", None).await;
    let code = |c: &str| CouponCode::parse(c).unwrap();
    // Nothing to take off: not an error, nothing written.
    let before = w.store.ledger.last_position().await.unwrap();
    w.billing.remove_discount(sub, Timing::Now).await.unwrap();
    assert_eq!(w.store.ledger.last_position().await.unwrap(), before);
    w.clock.advance_to(datetime!(2027-01-15 00:00 UTC));
    let state = w
        .billing
        .apply_discount(sub, &code("HALF"), Timing::Now)
        .await
        .unwrap();
    assert_eq!(state.discount.map(|d| d.coupon), Some(code("HALF")));
    tick_at(&w, &scheduler, [datetime!(2027-02-01 00:00 UTC)]).await;
    w.clock.advance_to(datetime!(2027-02-10 00:00 UTC));
    let state = w
        .billing
        .remove_discount(sub, Timing::PeriodEnd)
        .await
        .unwrap();
    assert_eq!(state.scheduled_discount, Some(None));
    tick_at(&w, &scheduler, [datetime!(2027-03-01 00:00 UTC)]).await;
    w.clock.advance_to(datetime!(2027-03-05 00:00 UTC));
    w.billing
        .apply_discount(sub, &code("ONCE20"), Timing::PeriodEnd)
        .await
        .unwrap();
    tick_at(
        &w,
        &scheduler,
        [
            datetime!(2027-04-01 00:00 UTC),
            datetime!(2027-05-01 00:00 UTC),
        ],
    )
    .await;
    assert_eq!(
        invoice_totals(&w, sub).await,
        vec!["97.00", "48.50", "97.00", "77.60", "97.00"]
    );
    let mut projector = Projector::open(w.store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    projector.catch_up().await.unwrap();
    assert_eq!(
        movements_by_day(projector.db()).await,
        vec![
            "2027-01-01 new 9700",
            "2027-01-15 contraction -4850",
            "2027-03-01 expansion 4850",
            "2027-04-01 contraction -1940",
            "2027-05-01 expansion 1940",
        ]
    );
    // Under Stripe's older rule a once coupon leaves MRR alone.
    let mut ignoring = Projector::fresh_with(
        w.store.ledger.clone(),
        Db::scratch().await.unwrap(),
        Mrr::with_profile(recur_projections::profile::Profile {
            once_coupon: recur_projections::profile::OnceCoupon::Ignore,
            ..recur_projections::profile::Profile::default()
        }),
    )
    .await
    .unwrap();
    ignoring.catch_up().await.unwrap();
    assert_eq!(
        movements_by_day(ignoring.db()).await,
        vec![
            "2027-01-01 new 9700",
            "2027-01-15 contraction -4850",
            "2027-03-01 expansion 4850",
        ]
    );
    // A coupon is applied to a subscription once: taken off, it cannot be
    // applied again to start its duration over.
    let error = w
        .billing
        .apply_discount(sub, &code("HALF"), Timing::Now)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "coupon_already_redeemed");
    // An expired coupon is refused and stays unredeemed.
    w.billing
        .create_coupon(NewCoupon {
            code: code("GONE"),
            discount: Discount::PercentOff { percent: 10.into() },
            duration: CouponDuration::Forever,
            max_redemptions: None,
            redeem_by: Some(datetime!(2027-01-01 00:00 UTC)),
        })
        .await
        .unwrap();
    let error = w
        .billing
        .apply_discount(sub, &code("GONE"), Timing::Now)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "coupon_expired");
    assert!(
        w.billing
            .coupon(&code("GONE"))
            .await
            .unwrap()
            .redeemers
            .is_empty()
    );
    // A canceled subscription takes no discount, and the coupon stays unredeemed.
    w.billing.cancel(sub, Timing::Now).await.unwrap();
    coupon(
        &w,
        "LATE",
        Discount::PercentOff { percent: 10.into() },
        CouponDuration::Forever,
    )
    .await;
    let error = w
        .billing
        .apply_discount(sub, &code("LATE"), Timing::Now)
        .await
        .unwrap_err();
    assert_eq!(error.code(), "invalid_transition");
    assert!(
        w.billing
            .coupon(&code("LATE"))
            .await
            .unwrap()
            .redeemers
            .is_empty()
    );
}

/// Switching the counting profile rebuilds the MRR tables blue/green, and the
/// result is what a fresh replay of the ledger under that profile gives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_the_profile_rebuilds_to_what_a_fresh_replay_under_it_gives() {
    use recur_commands::customer::Segment;
    use recur_projections::profile::Profile;
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world_at(true, start).await;
    let scheduler = recur_commands::Scheduler::new(Arc::clone(&w.billing), 4);
    coupon(
        &w,
        "ONCE20",
        Discount::PercentOff { percent: 20.into() },
        CouponDuration::Once,
    )
    .await;
    let once = w.customer().await;
    w.subscribe(once, "community_access", Some("ONCE20")).await;
    let pauses = w.customer().await;
    let paused = w.subscribe(pauses, "group_coaching", None).await;
    let late_payer = w.customer().await;
    w.billing
        .set_segment(late_payer, Segment::HighValue)
        .await
        .unwrap();
    w.subscribe(late_payer, "elite_coaching", None).await;
    w.clock.advance_to(datetime!(2027-01-20 00:00 UTC));
    let failing = SimulatedGateway::tokenize("4000000000000341", 12, 2040).unwrap();
    w.billing
        .attach_payment_method(late_payer, failing)
        .await
        .unwrap();
    tick_at(
        &w,
        &scheduler,
        every(12, start, datetime!(2027-02-10 00:00 UTC)),
    )
    .await;
    w.billing.pause(paused).await.unwrap();
    tick_at(
        &w,
        &scheduler,
        every(
            12,
            datetime!(2027-02-10 12:00 UTC),
            datetime!(2027-03-20 00:00 UTC),
        ),
    )
    .await;
    w.billing.resume(paused).await.unwrap();
    tick_at(
        &w,
        &scheduler,
        every(
            12,
            datetime!(2027-03-20 12:00 UTC),
            datetime!(2027-04-30 00:00 UTC),
        ),
    )
    .await;

    let mut live = Projector::open(
        w.store.ledger.clone(),
        Mrr::with_profile(Profile::default()),
    )
    .await
    .unwrap();
    live.catch_up().await.unwrap();
    let db = live.db().clone();
    let by_default = dump(&db).await;
    assert_eq!(
        mrr::built_profile(&db).await.unwrap().map(|p| p.name),
        Some("default".to_owned())
    );
    let conservative = Profile::named("conservative").unwrap();
    // Opened with another profile: rebuilt beside the tables in use, then switched.
    let switched = Projector::open(
        w.store.ledger.clone(),
        Mrr::with_profile(conservative.clone()),
    )
    .await
    .unwrap();
    let after_switch = dump(switched.db()).await;
    assert_eq!(
        mrr::built_profile(&db).await.unwrap(),
        Some(conservative.clone())
    );
    let mut fresh = Projector::fresh_with(
        w.store.ledger.clone(),
        Db::scratch().await.unwrap(),
        Mrr::with_profile(conservative),
    )
    .await
    .unwrap();
    fresh.catch_up().await.unwrap();
    assert_eq!(after_switch, dump(fresh.db()).await);
    assert_ne!(
        after_switch, by_default,
        "the profiles count differently here"
    );
    let kinds = |rows: &[String]| {
        let mut kinds: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                let cells: Vec<&str> = r.split('|').collect();
                (cells.len() == 10 && !cells[7].is_empty())
                    .then(|| format!("{} {}", &cells[2], cells[7]))
            })
            .collect();
        kinds.sort();
        kinds
    };
    // The pause: contraction then expansion by default, churn then reactivation
    // when conservative; the elite customer past due from February 1 is churned
    // after 30 days when conservative (March 3), and when dunning gives up by default.
    let default_kinds = kinds(&by_default);
    let conservative_kinds = kinds(&after_switch);
    assert!(
        default_kinds.contains(&"2027-02-10 contraction".to_owned()),
        "{default_kinds:?}"
    );
    assert!(
        default_kinds.contains(&"2027-03-20 expansion".to_owned()),
        "{default_kinds:?}"
    );
    assert!(
        conservative_kinds.contains(&"2027-02-10 churn".to_owned()),
        "{conservative_kinds:?}"
    );
    assert!(
        conservative_kinds.contains(&"2027-03-20 reactivation".to_owned()),
        "{conservative_kinds:?}"
    );
    assert!(
        conservative_kinds.contains(&"2027-03-03 churn".to_owned()),
        "{conservative_kinds:?}"
    );
}

/// The lists page in ledger order: a keyed request retried hours after its
/// first claim makes ids that carry that claim's time, yet it is listed after
/// what was created before it ran.
async fn lists_page_in_ledger_order_even_when_a_retried_request_made_an_older_id(postgres: bool) {
    let start = datetime!(2027-01-01 00:00 UTC);
    let w = world_at(postgres, start).await;
    let customer = w.customer().await;
    w.clock.advance_to(start + Duration::hours(3));
    let first = w.subscribe(customer, "community_access", None).await;
    let scope = recur_commands::context::Replayable {
        seed: [11; 32],
        started_at: start + Duration::hours(1),
        rerun: true,
        resumed: false,
    };
    let retried = recur_commands::context::replayable(
        scope,
        w.billing.subscribe(NewSubscription {
            customer_id: customer,
            plan_id: "community_access".into(),
            price_id: None,
            quantity: 1,
            trial: Trial::Skip,
            coupon: None,
        }),
    )
    .await
    .unwrap();
    assert!(retried.0 < first.0, "the retried request's id is older");
    let mut projections = recur_projections::Projections::open(&w.store.ledger)
        .await
        .unwrap();
    projections.catch_up().await.unwrap();
    let db = Db::of(&w.store.ledger).unwrap();
    let customer_id = customer.to_string();
    let page = |after: Option<String>| {
        let (db, customer_id) = (db.clone(), customer_id.clone());
        async move {
            recur_projections::customers::subscriptions_page(
                &db,
                Some(&customer_id),
                after.as_deref(),
                1,
            )
            .await
            .unwrap()
        }
    };
    assert_eq!(page(None).await, Some((vec![first.to_string()], true)));
    assert_eq!(
        page(Some(first.to_string())).await,
        Some((vec![retried.to_string()], false))
    );
    assert_eq!(page(Some("no-such-id".into())).await, None);
    // Another customer's subscription is no cursor of this customer's list.
    let other_customer = w.customer().await;
    let other = w.subscribe(other_customer, "community_access", None).await;
    projections.catch_up().await.unwrap();
    assert_eq!(page(Some(other.to_string())).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_in_ledger_order_on_postgres() {
    lists_page_in_ledger_order_even_when_a_retried_request_made_an_older_id(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_in_ledger_order_on_sqlite() {
    lists_page_in_ledger_order_even_when_a_retried_request_made_an_older_id(false).await;
}
