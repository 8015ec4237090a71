//! MRR and its movements: per subscription, per customer, per plan and day.
//!
//! Counting rules (docs/metrics.md): a subscription counts while active or past
//! due, at price × quantity normalised to a month (yearly ÷ 12); trials,
//! incomplete, paused and canceled count 0. A recurring discount (repeating or
//! forever) on the latest period invoice reduces MRR; a one-off (`once`) discount
//! does not; a discount that ends raises MRR at the renewal that no longer carries
//! it (expansion). Tax and one-time charges are never MRR. Movements are
//! classified per customer from the customer's MRR before and after the event:
//! new (0 → >0, never paying before), reactivation (0 → >0 after paying once),
//! expansion, contraction, churn (>0 → 0).

use std::collections::HashMap;

use recur_commands::aggregate::Aggregate;
use recur_commands::coupon::{AppliedDiscount, CouponDuration, Discount};
use recur_commands::invoice::BillingReason;
use recur_commands::subscription::{Subscription, SubscriptionEvent};
use recur_ledger::money::RoundingRule;
use recur_ledger::{Ledger, Position, RecordedEvent, StreamId};
use rust_decimal::Decimal;

use crate::db::{Db, Stmt, Value};
use crate::runtime::{Projection, ProjectionError, decode, earlier_events};

/// Per-subscription MRR, current.
pub const SUBSCRIPTIONS: &str = "mrr_subscriptions_v1";
/// Per-customer MRR, current.
pub const CUSTOMERS: &str = "mrr_customers_v1";
/// Every movement, by ledger position.
pub const MOVEMENTS: &str = "mrr_movements_v1";
/// MRR per plan (and `*` for all) at the end of each day with a change.
pub const DAILY: &str = "mrr_daily_v1";

/// A movement's kind.
pub fn classify(before_minor: i64, after_minor: i64, ever_paying: bool) -> Option<&'static str> {
    match (before_minor, after_minor) {
        (b, a) if b == a => None,
        (0, _) if ever_paying => Some("reactivation"),
        (0, _) => Some("new"),
        (_, 0) => Some("churn"),
        (b, a) if a > b => Some("expansion"),
        _ => Some("contraction"),
    }
}

/// What the projection keeps of one subscription.
#[derive(Clone, Debug, Default)]
struct Tracked {
    state: Subscription,
    /// The discount on the latest period invoice.
    discount: Option<AppliedDiscount>,
}

impl Tracked {
    fn apply(&mut self, event: &SubscriptionEvent) {
        if let Some(request) = event.invoice_request()
            && matches!(
                request.reason,
                BillingReason::SubscriptionCreate | BillingReason::SubscriptionCycle
            )
        {
            self.discount.clone_from(&request.discount);
        }
        self.state.evolve(event);
    }

    /// MRR in minor units after recurring discounts, rounded half-even.
    fn mrr_minor(&self) -> i64 {
        let Some(mut mrr) = self.state.mrr() else {
            return 0;
        };
        if let Some(discount) = &self.discount
            && discount.duration != CouponDuration::Once
            && mrr.is_positive()
        {
            mrr = match discount.discount {
                Discount::PercentOff { percent } => mrr
                    .mul_decimal(Decimal::ONE - percent / Decimal::ONE_HUNDRED)
                    .unwrap_or(mrr),
                Discount::AmountOff { amount } => match mrr.checked_sub(amount) {
                    Ok(left) if !left.is_negative() => left,
                    Ok(_) => recur_ledger::Money::zero(mrr.currency()),
                    Err(_) => mrr,
                },
            };
        }
        mrr.round_to_minor(RoundingRule::HalfEven)
            .to_minor()
            .unwrap_or(0)
    }

    fn plan(&self) -> String {
        self.state
            .price
            .as_ref()
            .map(|p| p.plan_id.clone())
            .unwrap_or_default()
    }
}

/// The MRR projection.
#[derive(Default)]
pub struct Mrr {
    subscriptions: HashMap<StreamId, Tracked>,
    customers: HashMap<String, (i64, bool)>,
    plans: HashMap<String, i64>,
}

impl Mrr {
    /// A fresh projection.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Projection for Mrr {
    const NAME: &'static str = "mrr";
    const VERSION: u32 = 1;

    fn tables(&self) -> Vec<&'static str> {
        vec![SUBSCRIPTIONS, CUSTOMERS, MOVEMENTS, DAILY]
    }

    fn schema(&self) -> Vec<Stmt> {
        vec![
            Stmt::new(
                format!(
                    "CREATE TABLE IF NOT EXISTS {SUBSCRIPTIONS} (subscription_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
                     plan TEXT NOT NULL, status TEXT NOT NULL, mrr_minor BIGINT NOT NULL)"
                ),
                vec![],
            ),
            Stmt::new(
                format!(
                    "CREATE TABLE IF NOT EXISTS {CUSTOMERS} (customer_id TEXT PRIMARY KEY, mrr_minor BIGINT NOT NULL,
                     ever_paying BIGINT NOT NULL)"
                ),
                vec![],
            ),
            Stmt::new(
                format!(
                    "CREATE TABLE IF NOT EXISTS {MOVEMENTS} (position BIGINT PRIMARY KEY, day TEXT NOT NULL,
                     customer_id TEXT NOT NULL, subscription_id TEXT NOT NULL, plan TEXT NOT NULL, kind TEXT NOT NULL,
                     delta_minor BIGINT NOT NULL)"
                ),
                vec![],
            ),
            Stmt::new(
                format!(
                    "CREATE TABLE IF NOT EXISTS {DAILY} (day TEXT NOT NULL, plan TEXT NOT NULL, mrr_minor BIGINT NOT NULL,
                     PRIMARY KEY (day, plan))"
                ),
                vec![],
            ),
        ]
    }

    async fn load(
        &mut self,
        db: &Db,
        _ledger: &Ledger,
        _at: Position,
    ) -> Result<(), ProjectionError> {
        self.subscriptions.clear();
        self.customers.clear();
        self.plans.clear();
        for row in db
            .query(
                &Stmt::new(
                    format!("SELECT customer_id, mrr_minor, ever_paying FROM {CUSTOMERS}"),
                    vec![],
                ),
                "tii",
            )
            .await?
        {
            if let (Value::Text(customer), Value::Int(mrr), Value::Int(ever)) =
                (&row[0], &row[1], &row[2])
            {
                self.customers.insert(customer.clone(), (*mrr, *ever != 0));
            }
        }
        for row in db
            .query(&Stmt::new(format!("SELECT plan, CAST(SUM(mrr_minor) AS BIGINT) FROM {SUBSCRIPTIONS} GROUP BY plan"), vec![]), "ti")
            .await?
        {
            if let (Value::Text(plan), Value::Int(mrr)) = (&row[0], &row[1]) {
                self.plans.insert(plan.clone(), *mrr);
            }
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        event: &RecordedEvent,
        ledger: &Ledger,
        writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        if event.stream_id.category() != "subscription" {
            return Ok(());
        }
        let decoded: SubscriptionEvent = decode(Self::NAME, event)?;
        if !self.subscriptions.contains_key(&event.stream_id) {
            // First seen since loading: fold what came before this event.
            let mut tracked = Tracked::default();
            for earlier in earlier_events::<SubscriptionEvent>(Self::NAME, ledger, event).await? {
                tracked.apply(&earlier);
            }
            self.subscriptions.insert(event.stream_id.clone(), tracked);
        }
        let Some(tracked) = self.subscriptions.get_mut(&event.stream_id) else {
            return Ok(());
        };
        let (before, old_plan) = (tracked.mrr_minor(), tracked.plan());
        tracked.apply(&decoded);
        let (after, plan) = (tracked.mrr_minor(), tracked.plan());
        let (Some(sub_id), Some(customer_id)) = (tracked.state.id, tracked.state.customer_id)
        else {
            return Ok(());
        };
        let status = tracked.state.status.name();
        let (sub_id, customer) = (sub_id.to_string(), customer_id.to_string());
        writes.push(Stmt::new(
            format!(
                "INSERT INTO {SUBSCRIPTIONS} (subscription_id, customer_id, plan, status, mrr_minor) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (subscription_id) DO UPDATE SET plan = excluded.plan, status = excluded.status,
                 mrr_minor = excluded.mrr_minor"
            ),
            vec![sub_id.clone().into(), customer.clone().into(), plan.clone().into(), status.into(), after.into()],
        )
        .keyed(format!("subscription:{sub_id}")));
        if before == after && old_plan == plan {
            return Ok(());
        }
        let day = event.recorded_at.date().to_string();
        *self.plans.entry(old_plan.clone()).or_default() -= before;
        *self.plans.entry(plan.clone()).or_default() += after;
        let total: i64 = self.plans.values().sum();
        let mut days = vec![(plan.clone(), self.plans[&plan])];
        if old_plan != plan {
            days.push((old_plan.clone(), self.plans[&old_plan]));
        }
        days.push(("*".to_owned(), total));
        for (plan, mrr) in days {
            writes.push(
                Stmt::new(
                    format!(
                        "INSERT INTO {DAILY} (day, plan, mrr_minor) VALUES (?, ?, ?)
                     ON CONFLICT (day, plan) DO UPDATE SET mrr_minor = excluded.mrr_minor"
                    ),
                    vec![day.clone().into(), plan.clone().into(), mrr.into()],
                )
                .keyed(format!("daily:{day}:{plan}")),
            );
        }
        let (customer_before, ever) = self.customers.get(&customer).copied().unwrap_or((0, false));
        let customer_after = customer_before - before + after;
        let ever_after = ever || customer_after > 0;
        self.customers
            .insert(customer.clone(), (customer_after, ever_after));
        writes.push(Stmt::new(
            format!(
                "INSERT INTO {CUSTOMERS} (customer_id, mrr_minor, ever_paying) VALUES (?, ?, ?)
                 ON CONFLICT (customer_id) DO UPDATE SET mrr_minor = excluded.mrr_minor, ever_paying = excluded.ever_paying"
            ),
            vec![customer.clone().into(), customer_after.into(), i64::from(ever_after).into()],
        )
        .keyed(format!("customer:{customer}")));
        if let Some(kind) = classify(customer_before, customer_after, ever) {
            writes.push(Stmt::new(
                format!(
                    "INSERT INTO {MOVEMENTS} (position, day, customer_id, subscription_id, plan, kind, delta_minor)
                     VALUES (?, ?, ?, ?, ?, ?, ?)"
                ),
                vec![
                    i64::try_from(event.position.0).unwrap_or(i64::MAX).into(),
                    day.into(),
                    customer.into(),
                    sub_id.into(),
                    plan.into(),
                    kind.into(),
                    (customer_after - customer_before).into(),
                ],
            ));
        }
        Ok(())
    }
}

/// Every row of the projection's tables as text, in a stable order: for
/// comparing a live read model with a rebuilt one.
///
/// # Errors
/// Database errors.
pub async fn snapshot(db: &Db) -> Result<Vec<String>, crate::db::DbError> {
    let mut out = Vec::new();
    for (sql, kinds) in [
        (
            format!(
                "SELECT subscription_id, customer_id, plan, status, mrr_minor FROM {SUBSCRIPTIONS} ORDER BY 1"
            ),
            "tttti",
        ),
        (
            format!("SELECT customer_id, mrr_minor, ever_paying FROM {CUSTOMERS} ORDER BY 1"),
            "tii",
        ),
        (
            format!(
                "SELECT position, day, customer_id, subscription_id, plan, kind, delta_minor FROM {MOVEMENTS} ORDER BY 1"
            ),
            "ittttti",
        ),
        (
            format!("SELECT day, plan, mrr_minor FROM {DAILY} ORDER BY 1, 2"),
            "tti",
        ),
    ] {
        for row in db.query(&Stmt::new(sql, vec![]), kinds).await? {
            let cells: Vec<String> = row
                .iter()
                .map(|v| match v {
                    Value::Int(i) => i.to_string(),
                    Value::Text(t) => t.clone(),
                    Value::Null => "null".into(),
                })
                .collect();
            out.push(cells.join("|"));
        }
    }
    Ok(out)
}
