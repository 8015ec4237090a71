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
//!
//! Past due counts until the subscription is canceled, unless
//! `RECUR_PAST_DUE_CHURN_DAYS` = N: then a subscription past due for N days
//! counts 0 from that moment (a churn), and again from its next payment (a
//! reactivation). The moment is applied when the first ledger event at or after it
//! is projected, so a rebuild gives the same rows.

use foldhash::HashMap;

use recur_commands::aggregate::Aggregate;
use recur_commands::coupon::{AppliedDiscount, CouponDuration, Discount};
use recur_commands::invoice::BillingReason;
use recur_commands::subscription::{Subscription, SubscriptionEvent, SubscriptionStatus};
use recur_ledger::money::RoundingRule;
use recur_ledger::{Ledger, Position, RecordedEvent, StreamId};
use rust_decimal::Decimal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::db::{Db, Stmt, Value};
use crate::runtime::{Delivered, Projection, ProjectionError, earlier_events, events_before};

/// Per-subscription MRR, current.
pub const SUBSCRIPTIONS: &str = "mrr_subscriptions_v1";
/// Per-customer MRR, current.
pub const CUSTOMERS: &str = "mrr_customers_v1";
/// Every movement, by ledger position.
pub const MOVEMENTS: &str = "mrr_movements_v1";
/// MRR per plan (and `*` for all) at the end of each day with a change.
pub const DAILY: &str = "mrr_daily_v1";
/// Subscriptions past due, since when, and whether the setting churned them.
pub const PAST_DUE: &str = "mrr_past_due_v1";

/// The setting: days past due after which a subscription counts as churned.
pub const PAST_DUE_CHURN_DAYS_ENV: &str = "RECUR_PAST_DUE_CHURN_DAYS";
/// The longest the setting may be.
pub const PAST_DUE_CHURN_DAYS_MAX: u32 = 365;

/// `RECUR_PAST_DUE_CHURN_DAYS` if set to 1–365.
///
/// # Errors
/// The variable is set to something else: a setting that silently did nothing
/// would give wrong metrics.
pub fn past_due_churn_days_from_env() -> Result<Option<u32>, String> {
    match std::env::var(PAST_DUE_CHURN_DAYS_ENV) {
        Err(_) => Ok(None),
        Ok(text) if text.trim().is_empty() => Ok(None),
        Ok(text) => match text.trim().parse::<u32>() {
            Ok(days) if (1..=PAST_DUE_CHURN_DAYS_MAX).contains(&days) => Ok(Some(days)),
            _ => Err(format!(
                "{PAST_DUE_CHURN_DAYS_ENV}={text:?}: expected a number of days from 1 to {PAST_DUE_CHURN_DAYS_MAX}"
            )),
        },
    }
}

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
    /// (plan, status, MRR) as last written by this projector, so an event that
    /// changes none of them (a renewal) writes nothing.
    stored: Option<(String, &'static str, i64)>,
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

/// A subscription past due: since when, and whether the setting churned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PastDue {
    since: OffsetDateTime,
    churned: bool,
}

/// The MRR projection.
pub struct Mrr {
    subscriptions: HashMap<StreamId, Tracked>,
    customers: HashMap<String, (i64, bool)>,
    plans: HashMap<String, i64>,
    past_due: HashMap<StreamId, PastDue>,
    churn_after: Option<time::Duration>,
}

impl Default for Mrr {
    fn default() -> Self {
        Self::new()
    }
}

impl Mrr {
    /// A fresh projection with the setting from `RECUR_PAST_DUE_CHURN_DAYS`
    /// (an invalid value is logged and ignored; `recur` checks it at start).
    pub fn new() -> Self {
        let days = past_due_churn_days_from_env().unwrap_or_else(|error| {
            tracing::error!(%error, "ignoring the past-due churn setting");
            None
        });
        Self::with_past_due_churn_days(days)
    }

    /// A fresh projection that churns subscriptions past due for `days` (None:
    /// past due counts until canceled).
    pub fn with_past_due_churn_days(days: Option<u32>) -> Self {
        Self {
            subscriptions: HashMap::default(),
            customers: HashMap::default(),
            plans: HashMap::default(),
            past_due: HashMap::default(),
            churn_after: days.map(|d| time::Duration::days(i64::from(d))),
        }
    }

    /// A subscription's MRR as counted: 0 once the setting churned it.
    fn counted(&self, stream: &StreamId) -> i64 {
        match (self.subscriptions.get(stream), self.past_due.get(stream)) {
            (_, Some(PastDue { churned: true, .. })) | (None, _) => 0,
            (Some(tracked), _) => tracked.mrr_minor(),
        }
    }

    /// Folds a subscription's events before `before` from the ledger, once.
    async fn track(
        &mut self,
        ledger: &Ledger,
        stream: &StreamId,
        before: &RecordedEvent,
    ) -> Result<(), ProjectionError> {
        if self.subscriptions.contains_key(stream) {
            return Ok(());
        }
        // Its own stream's first event needs no read at all.
        let earlier: Vec<SubscriptionEvent> = if before.stream_id == *stream {
            earlier_events(Self::NAME, ledger, before).await?
        } else {
            events_before(Self::NAME, ledger, stream, before.position).await?
        };
        let mut tracked = Tracked::default();
        for event in &earlier {
            tracked.apply(event);
        }
        self.subscriptions.insert(stream.clone(), tracked);
        Ok(())
    }

    /// Churns every subscription whose time past due ran out at or before `event`.
    async fn churn_overdue(
        &mut self,
        event: &RecordedEvent,
        ledger: &Ledger,
        seq: &mut i64,
        writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        let Some(after) = self.churn_after else {
            return Ok(());
        };
        let mut due: Vec<(OffsetDateTime, StreamId)> = self
            .past_due
            .iter()
            .filter(|(_, p)| !p.churned && p.since + after <= event.recorded_at)
            .map(|(stream, p)| (p.since + after, stream.clone()))
            .collect();
        due.sort();
        for (at, stream) in due {
            self.track(ledger, &stream, event).await?;
            let before = self.counted(&stream);
            let plan = self
                .subscriptions
                .get(&stream)
                .map(Tracked::plan)
                .unwrap_or_default();
            if let Some(past_due) = self.past_due.get_mut(&stream) {
                past_due.churned = true;
            }
            self.write_past_due(&stream, writes);
            self.record(
                &stream,
                (before, plan.clone()),
                (0, plan),
                at,
                event,
                seq,
                writes,
            );
        }
        Ok(())
    }

    /// Writes whether a subscription is past due (and since when, and churned).
    fn write_past_due(&self, stream: &StreamId, writes: &mut Vec<Stmt>) {
        let key = format!("past_due:{stream}");
        writes.push(match self.past_due.get(stream) {
            Some(past_due) => Stmt::new(
                format!(
                    "INSERT INTO {PAST_DUE} (stream_id, since, churned) VALUES (?, ?, ?)
                     ON CONFLICT (stream_id) DO UPDATE SET since = excluded.since, churned = excluded.churned"
                ),
                vec![
                    stream.as_str().into(),
                    past_due.since.format(&Rfc3339).unwrap_or_default().into(),
                    i64::from(past_due.churned).into(),
                ],
            )
            .keyed(key),
            None => Stmt::new(
                format!("DELETE FROM {PAST_DUE} WHERE stream_id IN (?)"),
                vec![stream.as_str().into()],
            )
            .keyed(key),
        });
    }

    /// Writes a subscription's new MRR, the plan and customer totals, and the
    /// customer's movement, for a change from `before` to `after` (MRR, plan)
    /// that happened `at`, projected at `event`.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        stream: &StreamId,
        (before, old_plan): (i64, String),
        (after, plan): (i64, String),
        at: OffsetDateTime,
        event: &RecordedEvent,
        seq: &mut i64,
        writes: &mut Vec<Stmt>,
    ) {
        let Some(tracked) = self.subscriptions.get_mut(stream) else {
            return;
        };
        let (Some(sub_id), Some(customer_id)) = (tracked.state.id, tracked.state.customer_id)
        else {
            return;
        };
        let status = tracked.state.status.name();
        let row = (plan.clone(), status, after);
        if tracked.stored.as_ref() != Some(&row) {
            tracked.stored = Some(row);
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
        }
        if before == after && old_plan == plan {
            return;
        }
        let customer = customer_id.to_string();
        let day = at.date().to_string();
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
                    "INSERT INTO {MOVEMENTS} (position, seq, day, customer_id, subscription_id, plan, kind, delta_minor)
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                ),
                vec![
                    i64::try_from(event.position.0).unwrap_or(i64::MAX).into(),
                    (*seq).into(),
                    day.into(),
                    customer.into(),
                    sub_id.to_string().into(),
                    plan.into(),
                    kind.into(),
                    (customer_after - customer_before).into(),
                ],
            ));
            *seq += 1;
        }
    }
}

impl Projection for Mrr {
    const NAME: &'static str = "mrr";
    const VERSION: u32 = 2;

    /// The code version × 1000 + the past-due churn days (0: off).
    fn stored_version(&self) -> u32 {
        let days = self
            .churn_after
            .map_or(0, |d| u32::try_from(d.whole_days()).unwrap_or(0));
        Self::VERSION * 1_000 + days
    }

    fn empty(&self) -> Self {
        Self {
            churn_after: self.churn_after,
            ..Self::with_past_due_churn_days(None)
        }
    }

    fn tables(&self) -> Vec<&'static str> {
        vec![SUBSCRIPTIONS, CUSTOMERS, MOVEMENTS, DAILY, PAST_DUE]
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
                    "CREATE TABLE IF NOT EXISTS {MOVEMENTS} (position BIGINT NOT NULL, seq BIGINT NOT NULL, day TEXT NOT NULL,
                     customer_id TEXT NOT NULL, subscription_id TEXT NOT NULL, plan TEXT NOT NULL, kind TEXT NOT NULL,
                     delta_minor BIGINT NOT NULL, PRIMARY KEY (position, seq))"
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
            Stmt::new(
                format!(
                    "CREATE TABLE IF NOT EXISTS {PAST_DUE} (stream_id TEXT PRIMARY KEY, since TEXT NOT NULL,
                     churned BIGINT NOT NULL)"
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
        self.past_due.clear();
        for row in db
            .query(
                &Stmt::new(
                    format!("SELECT stream_id, since, churned FROM {PAST_DUE}"),
                    vec![],
                ),
                "tti",
            )
            .await?
        {
            let since = OffsetDateTime::parse(&row[1].text(), &Rfc3339).map_err(|e| {
                ProjectionError::Event {
                    projection: Self::NAME,
                    position: 0,
                    message: format!("{PAST_DUE}: {e}"),
                }
            })?;
            let stream = StreamId::parse(row[0].text()).map_err(ProjectionError::from)?;
            self.past_due.insert(
                stream,
                PastDue {
                    since,
                    churned: row[2].int() != 0,
                },
            );
        }
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
        event: &Delivered,
        ledger: &Ledger,
        writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        // Movements of one event are numbered: a setting's churn and the event's own.
        let mut seq = 0;
        self.churn_overdue(event, ledger, &mut seq, writes).await?;
        if event.stream_id.category() != "subscription" {
            return Ok(());
        }
        let decoded = event.decoded::<SubscriptionEvent>(Self::NAME)?;
        let stream = &event.stream_id;
        // First seen since loading: fold what came before this event.
        self.track(ledger, stream, event).await?;
        let (before, old_plan) = (
            self.counted(stream),
            self.subscriptions
                .get(stream)
                .map(Tracked::plan)
                .unwrap_or_default(),
        );
        let Some(tracked) = self.subscriptions.get_mut(stream) else {
            return Ok(());
        };
        tracked.apply(decoded);
        let past_due = tracked.state.status == SubscriptionStatus::PastDue;
        let was = self.past_due.get(stream).copied();
        match (past_due, self.past_due.get(stream)) {
            (true, None) => {
                self.past_due.insert(
                    stream.clone(),
                    PastDue {
                        since: event.recorded_at,
                        churned: false,
                    },
                );
            }
            (false, Some(_)) => {
                self.past_due.remove(stream);
            }
            _ => {}
        }
        if self.past_due.get(stream).copied() != was {
            self.write_past_due(stream, writes);
        }
        let after = (
            self.counted(stream),
            self.subscriptions
                .get(stream)
                .map(Tracked::plan)
                .unwrap_or_default(),
        );
        self.record(
            stream,
            (before, old_plan),
            after,
            event.recorded_at,
            event,
            &mut seq,
            writes,
        );
        Ok(())
    }
}

/// Each day with a change up to `through` and the MRR of `plan` (`*`: all plans)
/// at that day's end, in minor units, oldest first (days as `YYYY-MM-DD`).
///
/// # Errors
/// Database errors.
pub async fn daily(
    db: &Db,
    plan: &str,
    through: time::Date,
) -> Result<Vec<(String, i64)>, crate::db::DbError> {
    let rows = db
        .query(
            &Stmt::new(
                format!(
                    "SELECT day, mrr_minor FROM {DAILY} WHERE plan = ? AND day <= ? ORDER BY day"
                ),
                vec![plan.into(), through.to_string().into()],
            ),
            "ti",
        )
        .await?;
    Ok(rows.iter().map(|r| (r[0].text(), r[1].int())).collect())
}

/// The MRR at the end of each of `ends` (ascending) from [`daily`]'s rows: the
/// last change on or before the day, 0 before the first.
pub fn at_day_ends(daily: &[(String, i64)], ends: &[time::Date]) -> Vec<i64> {
    let mut index = 0;
    let mut last = 0;
    ends.iter()
        .map(|end| {
            let end = end.to_string();
            while index < daily.len() && daily[index].0 <= end {
                last = daily[index].1;
                index += 1;
            }
            last
        })
        .collect()
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
                "SELECT position, seq, day, customer_id, subscription_id, plan, kind, delta_minor FROM {MOVEMENTS} ORDER BY 1, 2"
            ),
            "iittttti",
        ),
        (
            format!("SELECT day, plan, mrr_minor FROM {DAILY} ORDER BY 1, 2"),
            "tti",
        ),
        (
            format!("SELECT stream_id, since, churned FROM {PAST_DUE} ORDER BY 1"),
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
