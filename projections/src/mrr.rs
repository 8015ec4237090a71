//! MRR and its movements: per subscription, per customer, per plan and day.
//!
//! Counting rules (docs/metrics.md): a subscription counts once an invoice of it
//! was paid, while active or past due, at its period amount less a recurring
//! discount, normalised to a month (yearly ÷ 12); trials, unpaid conversions,
//! incomplete, paused and canceled count 0. Tax and one-time charges are never
//! MRR. Where the vendors disagree (pauses, `once` coupons, long past-due) the
//! [`Profile`] decides.
//!
//! **Effective dating.** Every change is dated when it takes effect in the
//! business (the event's [`SubscriptionEvent::effective_at`]: a period's start, a
//! cancellation's instant, a payment's due time), never when it was recorded. The
//! daily MRR series is kept as per-day changes, so a late event lands on its own
//! day. Movements are classified per customer in the order of those times: each
//! customer keeps a timeline of its changes, and an event that arrives after
//! later-dated ones (a late scheduler, a late webhook) re-classifies what follows
//! it. Changes at one instant are classified together, from the customer's state
//! before the instant to the state after it, so the order in which a catch-up
//! records them does not matter:
//!
//! | before → after the instant | kind of every change at it |
//! |---|---|
//! | absent → present, never present before | new |
//! | absent → present, present at some time before | reactivation |
//! | present → absent | churn |
//! | present → present | expansion (up) or contraction (down); no movement for no change |
//!
//! A customer is *present* while their MRR is above 0, or — with the profile's
//! pause rule `contraction` — while they have a paused subscription.

use foldhash::HashMap;

use recur_commands::DomainError;
use recur_commands::aggregate::Aggregate;
use recur_commands::coupon::{AppliedDiscount, CouponDuration, Discount};
use recur_commands::invoice::BillingReason;
use recur_commands::subscription::{Subscription, SubscriptionEvent, SubscriptionStatus, Timing};
use recur_ledger::money::RoundingRule;
use recur_ledger::{Ledger, Position, RecordedEvent, StreamId};
use rust_decimal::Decimal;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::db::{Db, Stmt, Value};
pub use crate::profile::{OnceCoupon, PauseRule, Profile};
use crate::runtime::{Delivered, Projection, ProjectionError, earlier_events, events_before};

/// Per-subscription MRR, current.
pub const SUBSCRIPTIONS: &str = "mrr_subscriptions_v1";
/// Per-customer MRR, current.
pub const CUSTOMERS: &str = "mrr_customers_v1";
/// Every change of a customer's MRR or presence, by ledger position and sequence,
/// with its effective time and its movement kind (empty for a change that is no
/// movement: a paused subscription canceled while others keep the customer).
pub const MOVEMENTS: &str = "mrr_movements_v1";
/// MRR changes per plan (and `*` for all) and effective day: MRR at the end of
/// a day is the sum of the changes up to it.
pub const DAILY: &str = "mrr_day_changes_v1";
/// Subscriptions past due: since when, and whether the profile churned them.
pub const PAST_DUE: &str = "mrr_past_due_v1";

/// What kind of change a movement is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MovementKind {
    /// A customer who never paid before starts paying.
    New,
    /// A present customer pays more.
    Expansion,
    /// A present customer pays less and stays.
    Contraction,
    /// A customer leaves.
    Churn,
    /// A customer who had left comes back.
    Reactivation,
}

impl MovementKind {
    /// Every kind, in the order answers list them.
    pub const ALL: [MovementKind; 5] = [
        MovementKind::New,
        MovementKind::Expansion,
        MovementKind::Contraction,
        MovementKind::Churn,
        MovementKind::Reactivation,
    ];

    /// Its stored name.
    pub fn name(self) -> &'static str {
        match self {
            MovementKind::New => "new",
            MovementKind::Expansion => "expansion",
            MovementKind::Contraction => "contraction",
            MovementKind::Churn => "churn",
            MovementKind::Reactivation => "reactivation",
        }
    }

    /// The kind stored as `name`, if any (a change that is no movement is stored as "").
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

/// A stored kind is read checked: a name this version does not know is an error.
impl crate::db::FromColumn for MovementKind {
    const KIND: char = 't';
    fn from_value(value: Value) -> Result<Self, crate::db::ColumnError> {
        let name = String::from_value(value)?;
        Self::parse(&name).ok_or_else(|| crate::db::ColumnError {
            expected: "a movement kind",
            found: format!("{name:?}"),
        })
    }
}

/// What the projection keeps of one subscription.
#[derive(Clone, Debug, Default)]
struct Tracked {
    state: Subscription,
    /// The discount MRR is reduced by: the one on the latest period invoice.
    discount: Option<AppliedDiscount>,
    /// The latest effective time on this stream: a stream's times never run back.
    last_at: Option<OffsetDateTime>,
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
        match event {
            // In force now: MRR follows at once, except a `once` coupon, which
            // counts (if the profile counts it) with the period invoice it discounts.
            SubscriptionEvent::DiscountApplied {
                discount,
                timing: Timing::Now,
                ..
            } if discount.duration != CouponDuration::Once => {
                self.discount = Some(discount.clone());
            }
            SubscriptionEvent::DiscountRemoved {
                timing: Timing::Now,
                ..
            } => self.discount = None,
            _ => {}
        }
        self.state.evolve(event);
    }

    /// MRR in minor units: the period amount less the discount the profile
    /// counts, normalised to a month, rounded half-even to the minor unit.
    fn mrr_minor(&self, profile: &Profile) -> Result<i64, DomainError> {
        let state = &self.state;
        let Some(price) = &state.price else {
            return Ok(0);
        };
        if !state.ever_paid
            || !matches!(
                state.status,
                SubscriptionStatus::Active | SubscriptionStatus::PastDue
            )
        {
            return Ok(0);
        }
        let interval = price.interval()?;
        let period = price
            .unit_amount
            .mul_decimal(Decimal::from(state.quantity))?;
        let counted = self.discount.as_ref().filter(|d| match d.duration {
            CouponDuration::Once => profile.once_coupon == OnceCoupon::DiscountedPeriod,
            CouponDuration::Repeating { .. } | CouponDuration::Forever => true,
        });
        let discounted = match counted.map(|d| d.discount) {
            None => period,
            Some(Discount::PercentOff { percent }) => {
                period.mul_decimal(Decimal::ONE - percent / Decimal::ONE_HUNDRED)?
            }
            // What the invoice takes off: the amount, at most the period's.
            Some(Discount::AmountOff { amount }) => match period.checked_sub(amount) {
                Ok(left) if !left.is_negative() => left,
                Ok(_) => recur_ledger::Money::zero(period.currency()),
                Err(error) => return Err(error.into()),
            },
        };
        Ok(discounted
            .mul_decimal(interval.monthly_factor())?
            .round_to_minor(RoundingRule::HalfEven)
            .to_minor()?)
    }

    fn plan(&self) -> String {
        self.state
            .price
            .as_ref()
            .map(|p| p.plan_id.clone())
            .unwrap_or_default()
    }

    /// Whether it holds its customer while paused (the profile's pause rule).
    fn paused_present(&self, profile: &Profile) -> bool {
        profile.pause == PauseRule::Contraction
            && self.state.status == SubscriptionStatus::Paused
            && self.state.ever_paid
    }
}

/// A subscription past due: since when (effective), and whether the profile churned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct PastDue {
    since: OffsetDateTime,
    churned: bool,
}

/// One change of a customer's MRR or presence.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Entry {
    at: OffsetDateTime,
    position: i64,
    seq: i64,
    subscription: String,
    plan: String,
    delta: i64,
    /// +1 when a paused subscription starts holding the customer, −1 when it stops.
    paused: i64,
    kind: Option<MovementKind>,
}

impl Entry {
    fn order(&self) -> (OffsetDateTime, i64, i64) {
        (self.at, self.position, self.seq)
    }
}

/// A customer's changes in effective order, and where they leave the customer.
#[derive(Clone, Debug, Default)]
struct Timeline {
    entries: Vec<Entry>,
    total: i64,
    paused: i64,
    /// Present at some instant so far.
    ever: bool,
}

impl Timeline {
    /// Adds `entry` in its place and classifies what it changes; the indexes of
    /// the entries whose kind changed, the new one included.
    fn insert(&mut self, entry: Entry) -> Vec<usize> {
        let index = self.entries.partition_point(|e| e.order() <= entry.order());
        let appended_alone = index == self.entries.len()
            && self.entries.last().is_none_or(|last| last.at < entry.at);
        self.entries.insert(index, entry);
        if appended_alone {
            // The common case: a change after every other, at an instant of its own.
            let before = (self.total, self.paused, self.ever);
            let entry = &mut self.entries[index];
            self.total += entry.delta;
            self.paused += entry.paused;
            let (present_before, present_after) = (
                present(before.0, before.1),
                present(self.total, self.paused),
            );
            entry.kind = classify(present_before, present_after, before.2, entry.delta);
            self.ever |= present_after;
            return vec![index];
        }
        self.reclassify()
    }

    /// Removes the entry at (position, seq); the indexes whose kind changed.
    fn remove(&mut self, position: i64, seq: i64) -> Option<(Entry, Vec<usize>)> {
        let index = self
            .entries
            .iter()
            .position(|e| e.position == position && e.seq == seq)?;
        let removed = self.entries.remove(index);
        Some((removed, self.reclassify()))
    }

    /// Classifies every entry again, instant by instant; the indexes whose kind changed.
    fn reclassify(&mut self) -> Vec<usize> {
        let (mut total, mut paused, mut ever) = (0, 0, false);
        let mut changed = Vec::new();
        let mut start = 0;
        while start < self.entries.len() {
            let at = self.entries[start].at;
            let end = start
                + self.entries[start..]
                    .iter()
                    .take_while(|e| e.at == at)
                    .count();
            let present_before = present(total, paused);
            for entry in &self.entries[start..end] {
                total += entry.delta;
                paused += entry.paused;
            }
            let present_after = present(total, paused);
            for (offset, entry) in self.entries[start..end].iter_mut().enumerate() {
                let kind = classify(present_before, present_after, ever, entry.delta);
                if kind != entry.kind {
                    entry.kind = kind;
                    changed.push(start + offset);
                }
            }
            ever |= present_after;
            start = end;
        }
        (self.total, self.paused, self.ever) = (total, paused, ever);
        changed
    }
}

/// A customer is present while paying, or while a paused subscription holds them.
fn present(total: i64, paused: i64) -> bool {
    total > 0 || paused > 0
}

/// The kind of a change of `delta` at an instant that takes the customer from
/// `before` to `after` presence (see the module's table).
fn classify(before: bool, after: bool, ever: bool, delta: i64) -> Option<MovementKind> {
    match (before, after) {
        (false, true) if ever => Some(MovementKind::Reactivation),
        (false, true) => Some(MovementKind::New),
        (true, false) => Some(MovementKind::Churn),
        (true, true) if delta > 0 => Some(MovementKind::Expansion),
        (true, true) if delta < 0 => Some(MovementKind::Contraction),
        _ => None,
    }
}

/// The MRR projection.
pub struct Mrr {
    profile: Profile,
    subscriptions: HashMap<StreamId, Tracked>,
    timelines: HashMap<String, Timeline>,
    past_due: HashMap<StreamId, PastDue>,
    /// This batch's changes per (effective day, plan), written once at flush.
    days: std::collections::BTreeMap<(String, String), i64>,
}

impl Default for Mrr {
    fn default() -> Self {
        Self::new()
    }
}

impl Mrr {
    /// A fresh projection with the profile from the environment (an invalid one
    /// is logged and the default used; `recur` checks it at start).
    pub fn new() -> Self {
        let profile = Profile::from_env().unwrap_or_else(|error| {
            tracing::error!(%error, "ignoring the metrics profile settings");
            Profile::default()
        });
        Self::with_profile(profile)
    }

    /// A fresh projection counting by `profile`.
    pub fn with_profile(profile: Profile) -> Self {
        Self {
            profile,
            subscriptions: HashMap::default(),
            timelines: HashMap::default(),
            past_due: HashMap::default(),
            days: std::collections::BTreeMap::new(),
        }
    }

    /// A fresh projection of the default profile with its past-due rule set to
    /// `days` (None: past due counts until canceled).
    pub fn with_past_due_churn_days(days: Option<u32>) -> Self {
        Self::with_profile(Profile {
            past_due_churn_days: days,
            name: if days.is_some() { "custom" } else { "default" }.into(),
            ..Profile::default()
        })
    }

    /// The profile it counts by.
    pub fn profile(&self) -> &Profile {
        &self.profile
    }

    fn error(&self, position: u64, source: DomainError) -> ProjectionError {
        ProjectionError::Domain {
            projection: Self::NAME,
            position,
            source,
        }
    }

    /// A subscription's MRR as counted: 0 once the profile churned it past due.
    fn counted(&self, stream: &StreamId, position: u64) -> Result<i64, ProjectionError> {
        match (self.subscriptions.get(stream), self.past_due.get(stream)) {
            (_, Some(PastDue { churned: true, .. })) | (None, _) => Ok(0),
            (Some(tracked), _) => tracked
                .mrr_minor(&self.profile)
                .map_err(|source| self.error(position, source)),
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
            // As `apply` below keeps it, so a reload dates the next event as a
            // rebuild does.
            if let Some(at) = event.effective_at() {
                tracked.last_at = Some(tracked.last_at.map_or(at, |last| last.max(at)));
            }
        }
        self.subscriptions.insert(stream.clone(), tracked);
        Ok(())
    }

    /// Churns every subscription whose time past due ran out at or before
    /// `event` was recorded (the profile's past-due rule), dated when it ran out.
    async fn churn_overdue(
        &mut self,
        event: &RecordedEvent,
        ledger: &Ledger,
        seq: &mut i64,
        writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        let Some(days) = self.profile.past_due_churn_days else {
            return Ok(());
        };
        let after = time::Duration::days(i64::from(days));
        let mut due: Vec<(OffsetDateTime, StreamId)> = self
            .past_due
            .iter()
            .filter(|(_, p)| !p.churned && p.since + after <= event.recorded_at)
            .map(|(stream, p)| (p.since + after, stream.clone()))
            .collect();
        due.sort();
        for (at, stream) in due {
            self.track(ledger, &stream, event).await?;
            let before = self.counted(&stream, event.position.0)?;
            let paused = self.paused_present(&stream);
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
                Change {
                    before: (before, plan.clone(), paused),
                    after: (0, plan, paused),
                    at,
                },
                event,
                seq,
                writes,
            );
        }
        Ok(())
    }

    fn paused_present(&self, stream: &StreamId) -> bool {
        self.subscriptions
            .get(stream)
            .is_some_and(|t| t.paused_present(&self.profile))
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
                    rfc3339(past_due.since).into(),
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

    /// Writes a subscription's new MRR, the day's plan changes, the customer's
    /// total and the movements the change makes (and re-makes) in its timeline.
    fn record(
        &mut self,
        stream: &StreamId,
        change: Change,
        event: &RecordedEvent,
        seq: &mut i64,
        writes: &mut Vec<Stmt>,
    ) {
        let Change { before, after, at } = change;
        let Some(tracked) = self.subscriptions.get_mut(stream) else {
            return;
        };
        let (Some(sub_id), Some(customer_id)) = (tracked.state.id, tracked.state.customer_id)
        else {
            return;
        };
        let status = tracked.state.status.name();
        let row = (after.1.clone(), status, after.0);
        let sub_id = sub_id.to_string();
        if tracked.stored.as_ref() != Some(&row) {
            tracked.stored = Some(row);
            writes.push(
                Stmt::new(
                    format!(
                        "INSERT INTO {SUBSCRIPTIONS} (subscription_id, customer_id, plan, status, mrr_minor) VALUES (?, ?, ?, ?, ?)
                         ON CONFLICT (subscription_id) DO UPDATE SET plan = excluded.plan, status = excluded.status,
                         mrr_minor = excluded.mrr_minor"
                    ),
                    vec![
                        sub_id.clone().into(),
                        customer_id.to_string().into(),
                        after.1.clone().into(),
                        status.into(),
                        after.0.into(),
                    ],
                )
                .keyed(format!("subscription:{sub_id}")),
            );
        }
        let paused = i64::from(after.2) - i64::from(before.2);
        if before.0 != after.0 || before.1 != after.1 {
            let day = at.date().to_string();
            *self
                .days
                .entry((day.clone(), before.1.clone()))
                .or_default() -= before.0;
            *self.days.entry((day.clone(), after.1.clone())).or_default() += after.0;
            *self.days.entry((day, "*".to_owned())).or_default() += after.0 - before.0;
        }
        if before.0 == after.0 && paused == 0 {
            return;
        }
        let customer = customer_id.to_string();
        let timeline = self.timelines.entry(customer.clone()).or_default();
        let entry = Entry {
            at,
            position: i64::try_from(event.position.0).unwrap_or(i64::MAX),
            seq: *seq,
            subscription: sub_id,
            plan: after.1,
            delta: after.0 - before.0,
            paused,
            kind: None,
        };
        *seq += 1;
        let changed = timeline.insert(entry.clone());
        let mut written = changed;
        // The new entry is written even when it is no movement, so a reload
        // finds every change of the customer's presence.
        if let Ok(index) = timeline
            .entries
            .binary_search_by(|e| e.order().cmp(&entry.order()))
            && !written.contains(&index)
        {
            written.push(index);
        }
        for index in written {
            writes.push(movement_row(&customer, &timeline.entries[index]));
        }
        writes.push(customer_row(&customer, timeline));
    }

    /// Takes back a churn the past-due rule made when the payment that ended the
    /// delinquency turns out to have come before the days ran out (a late
    /// webhook): the subscription never counted as churned.
    fn retract_churn(
        &mut self,
        stream: &StreamId,
        churned_at: OffsetDateTime,
        writes: &mut Vec<Stmt>,
    ) {
        let Some((sub_id, customer_id)) = self
            .subscriptions
            .get(stream)
            .and_then(|t| t.state.id.zip(t.state.customer_id))
        else {
            return;
        };
        let (sub_id, customer) = (sub_id.to_string(), customer_id.to_string());
        let Some(timeline) = self.timelines.get_mut(&customer) else {
            return;
        };
        let Some((position, seq)) = timeline
            .entries
            .iter()
            .rev()
            .find(|e| e.subscription == sub_id && e.at == churned_at && e.delta < 0)
            .map(|e| (e.position, e.seq))
        else {
            return;
        };
        let Some((removed, changed)) = timeline.remove(position, seq) else {
            return;
        };
        let day = removed.at.date().to_string();
        *self
            .days
            .entry((day.clone(), removed.plan.clone()))
            .or_default() -= removed.delta;
        *self.days.entry((day, "*".to_owned())).or_default() -= removed.delta;
        writes.push(
            Stmt::new(
                format!("DELETE FROM {MOVEMENTS} WHERE position = ? AND seq = ?"),
                vec![position.into(), seq.into()],
            )
            .keyed(movement_key(position, seq)),
        );
        for index in changed {
            writes.push(movement_row(&customer, &timeline.entries[index]));
        }
        writes.push(customer_row(&customer, timeline));
    }
}

/// A change of one subscription: (MRR, plan, paused-present) before and after,
/// and when it takes effect.
struct Change {
    before: (i64, String, bool),
    after: (i64, String, bool),
    at: OffsetDateTime,
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// An effective time as stored: UTC with nine fractional digits, so the text
/// sorts as the time does.
const EFFECTIVE_AT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z"
);

/// `at` as stored in the movements' `effective_at`.
pub fn effective_text(at: OffsetDateTime) -> String {
    at.to_offset(time::UtcOffset::UTC)
        .format(EFFECTIVE_AT)
        .unwrap_or_default()
}

/// An effective time as stored, back to the instant.
///
/// # Errors
/// Text that is not in the stored form.
pub fn parse_effective(text: &str) -> Result<OffsetDateTime, time::error::Parse> {
    time::PrimitiveDateTime::parse(text, EFFECTIVE_AT).map(time::PrimitiveDateTime::assume_utc)
}

fn movement_key(position: i64, seq: i64) -> String {
    format!("movement:{position}:{seq}")
}

fn movement_row(customer: &str, entry: &Entry) -> Stmt {
    Stmt::new(
        format!(
            "INSERT INTO {MOVEMENTS} (position, seq, day, effective_at, customer_id, subscription_id, plan, kind,
             delta_minor, paused_delta) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (position, seq) DO UPDATE SET kind = excluded.kind"
        ),
        vec![
            entry.position.into(),
            entry.seq.into(),
            entry.at.date().to_string().into(),
            effective_text(entry.at).into(),
            customer.into(),
            entry.subscription.clone().into(),
            entry.plan.clone().into(),
            entry.kind.map_or("", MovementKind::name).into(),
            entry.delta.into(),
            entry.paused.into(),
        ],
    )
    .keyed(movement_key(entry.position, entry.seq))
}

fn customer_row(customer: &str, timeline: &Timeline) -> Stmt {
    Stmt::new(
        format!(
            "INSERT INTO {CUSTOMERS} (customer_id, mrr_minor, ever_paying) VALUES (?, ?, ?)
             ON CONFLICT (customer_id) DO UPDATE SET mrr_minor = excluded.mrr_minor, ever_paying = excluded.ever_paying"
        ),
        vec![
            customer.into(),
            timeline.total.into(),
            i64::from(timeline.ever).into(),
        ],
    )
    .keyed(format!("customer:{customer}"))
}

impl Projection for Mrr {
    const NAME: &'static str = "mrr";
    const VERSION: u32 = 3;

    /// The code version × 100,000 + the profile's code (see [`Profile::code`]).
    fn stored_version(&self) -> u32 {
        Self::VERSION * 100_000 + self.profile.code()
    }

    fn empty(&self) -> Self {
        Self::with_profile(self.profile.clone())
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
                     effective_at TEXT NOT NULL, customer_id TEXT NOT NULL, subscription_id TEXT NOT NULL, plan TEXT NOT NULL,
                     kind TEXT NOT NULL, delta_minor BIGINT NOT NULL, paused_delta BIGINT NOT NULL, PRIMARY KEY (position, seq))"
                ),
                vec![],
            ),
            Stmt::new(
                format!(
                    "CREATE TABLE IF NOT EXISTS {DAILY} (day TEXT NOT NULL, plan TEXT NOT NULL, delta_minor BIGINT NOT NULL,
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

    fn flush(&mut self, writes: &mut Vec<Stmt>) {
        for ((day, plan), delta) in std::mem::take(&mut self.days) {
            if delta == 0 {
                continue;
            }
            writes.push(Stmt::new(
                format!(
                    "INSERT INTO {DAILY} (day, plan, delta_minor) VALUES (?, ?, ?)
                     ON CONFLICT (day, plan) DO UPDATE SET delta_minor = {DAILY}.delta_minor + excluded.delta_minor"
                ),
                vec![day.into(), plan.into(), delta.into()],
            ));
        }
    }

    async fn load(
        &mut self,
        db: &Db,
        _ledger: &Ledger,
        _at: Position,
    ) -> Result<(), ProjectionError> {
        self.subscriptions.clear();
        self.timelines.clear();
        self.past_due.clear();
        self.days.clear();
        let corrupt = |message: String| ProjectionError::Event {
            projection: Self::NAME,
            position: 0,
            message,
        };
        let past_due: Vec<(String, String, i64)> = db
            .rows(&Stmt::new(
                format!("SELECT stream_id, since, churned FROM {PAST_DUE}"),
                vec![],
            ))
            .await?;
        for (stream, since, churned) in past_due {
            let since = OffsetDateTime::parse(&since, &Rfc3339)
                .map_err(|e| corrupt(format!("{PAST_DUE}: {e}")))?;
            let stream = StreamId::parse(stream).map_err(ProjectionError::from)?;
            self.past_due.insert(
                stream,
                PastDue {
                    since,
                    churned: churned != 0,
                },
            );
        }
        type Row = (String, String, i64, i64, String, String, i64, i64, String);
        let rows: Vec<Row> = db
            .rows(&Stmt::new(
                format!(
                    "SELECT customer_id, effective_at, position, seq, subscription_id, plan, delta_minor, paused_delta, kind
                     FROM {MOVEMENTS} ORDER BY customer_id, effective_at, position, seq"
                ),
                vec![],
            ))
            .await?;
        for (customer, at, position, seq, subscription, plan, delta, paused, kind) in rows {
            let at = parse_effective(&at).map_err(|e| corrupt(format!("{MOVEMENTS}: {e}")))?;
            // "" is a change that is no movement; any other name must be known.
            let kind = match kind.as_str() {
                "" => None,
                name => Some(MovementKind::parse(name).ok_or_else(|| {
                    corrupt(format!("{MOVEMENTS}: unknown movement kind {name:?}"))
                })?),
            };
            let timeline = self.timelines.entry(customer).or_default();
            timeline.entries.push(Entry {
                at,
                position,
                seq,
                subscription,
                plan,
                delta,
                paused,
                kind,
            });
        }
        for timeline in self.timelines.values_mut() {
            timeline.entries.sort_by_key(Entry::order);
            timeline.reclassify();
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        event: &Delivered,
        ledger: &Ledger,
        writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        // Changes made at one event are numbered: the profile's churns and the event's own.
        let mut seq = 0;
        self.churn_overdue(event, ledger, &mut seq, writes).await?;
        if event.stream_id.category() != "subscription" {
            return Ok(());
        }
        let decoded = event.decoded::<SubscriptionEvent>(Self::NAME)?;
        let stream = &event.stream_id;
        // First seen since loading: fold what came before this event.
        self.track(ledger, stream, event).await?;
        let position = event.position.0;
        let mut before = (
            self.counted(stream, position)?,
            self.subscriptions
                .get(stream)
                .map(Tracked::plan)
                .unwrap_or_default(),
            self.paused_present(stream),
        );
        let Some(tracked) = self.subscriptions.get_mut(stream) else {
            return Ok(());
        };
        // Never before an earlier change of this stream; only dated events move
        // that mark (an event dated by its recording stands for no business time).
        let effective = decoded.effective_at();
        let at = effective
            .unwrap_or(event.recorded_at)
            .max(tracked.last_at.unwrap_or(OffsetDateTime::UNIX_EPOCH));
        if effective.is_some() {
            tracked.last_at = Some(at);
        }
        let was_counting = tracked.mrr_minor(&self.profile);
        tracked.apply(decoded);
        let past_due = tracked.state.status == SubscriptionStatus::PastDue;
        let was = self.past_due.get(stream).copied();
        match (past_due, was) {
            (true, None) => {
                self.past_due.insert(
                    stream.clone(),
                    PastDue {
                        since: at,
                        churned: false,
                    },
                );
            }
            (false, Some(gone)) => {
                self.past_due.remove(stream);
                if let (true, Some(days)) = (gone.churned, self.profile.past_due_churn_days) {
                    let churned_at = gone.since + time::Duration::days(i64::from(days));
                    if at < churned_at {
                        // Recovered before the days ran out after all.
                        self.retract_churn(stream, churned_at, writes);
                        before.0 = was_counting.map_err(|source| self.error(position, source))?;
                    }
                }
            }
            _ => {}
        }
        if self.past_due.get(stream).copied() != was {
            self.write_past_due(stream, writes);
        }
        let after = (
            self.counted(stream, position)?,
            self.subscriptions
                .get(stream)
                .map(Tracked::plan)
                .unwrap_or_default(),
            self.paused_present(stream),
        );
        self.record(
            stream,
            Change { before, after, at },
            event,
            &mut seq,
            writes,
        );
        Ok(())
    }
}

/// The profile the MRR tables in `db` were built by, from their checkpoint;
/// None before the first build.
///
/// # Errors
/// Database errors.
pub async fn built_profile(db: &Db) -> Result<Option<Profile>, crate::db::DbError> {
    let rows: Vec<(i64,)> = db
        .rows(&Stmt::new(
            "SELECT version FROM projection_checkpoints WHERE name = ?",
            vec![Mrr::NAME.into()],
        ))
        .await?;
    Ok(rows.first().and_then(|(version,)| {
        let version = u32::try_from(*version).ok()?;
        (version / 100_000 == Mrr::VERSION)
            .then(|| Profile::from_code(version % 100_000))
            .flatten()
    }))
}

/// Each effective day with a change up to `through` and the MRR of `plan` (`*`:
/// all plans) at that day's end, in minor units, oldest first (days as `YYYY-MM-DD`).
///
/// # Errors
/// Database errors.
pub async fn daily(
    db: &Db,
    plan: &str,
    through: time::Date,
) -> Result<Vec<(String, i64)>, crate::db::DbError> {
    let rows: Vec<(String, i64)> = db
        .rows(&Stmt::new(
            format!(
                "SELECT day, delta_minor FROM {DAILY} WHERE plan = ? AND day <= ? ORDER BY day"
            ),
            vec![plan.into(), through.to_string().into()],
        ))
        .await?;
    let mut mrr = 0;
    Ok(rows
        .into_iter()
        .map(|(day, delta)| {
            mrr += delta;
            (day, mrr)
        })
        .collect())
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
                "SELECT position, seq, day, effective_at, customer_id, subscription_id, plan, kind, delta_minor, paused_delta
                 FROM {MOVEMENTS} ORDER BY 1, 2"
            ),
            "iittttttii",
        ),
        (
            format!("SELECT day, plan, delta_minor FROM {DAILY} WHERE delta_minor <> 0 ORDER BY 1, 2"),
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

/// The movements in effective order, for metrics that follow customers (churn
/// counts, cohorts): (customer, effective time, kind, delta) up to the end of
/// `through`, changes that are no movement left out.
///
/// # Errors
/// Database errors.
pub async fn movements_through(
    db: &Db,
    through: time::Date,
) -> Result<Vec<(String, String, MovementKind, i64)>, crate::db::DbError> {
    db.rows(&Stmt::new(
        format!(
            "SELECT customer_id, effective_at, kind, delta_minor FROM {MOVEMENTS}
             WHERE day <= ? AND kind <> '' ORDER BY effective_at, position, seq"
        ),
        vec![through.to_string().into()],
    ))
    .await
}

/// One movement, as the per-customer list answers it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Movement {
    /// The ledger position of the event that made it, and its number there.
    pub position: i64,
    /// Its number at that position.
    pub seq: i64,
    /// When it took effect (stored form: UTC, nine fractional digits).
    pub effective_at: String,
    /// The customer.
    pub customer_id: String,
    /// The subscription whose change it is.
    pub subscription_id: String,
    /// The subscription's plan after the change.
    pub plan: String,
    /// Its kind.
    pub kind: MovementKind,
    /// The change of the customer's MRR, minor units.
    pub delta_minor: i64,
}

/// Which movements [`movement_list`] answers.
#[derive(Clone, Debug, Default)]
pub struct MovementFilter {
    /// From this effective day (inclusive).
    pub from: Option<time::Date>,
    /// To this effective day (inclusive).
    pub to: Option<time::Date>,
    /// Only this customer's.
    pub customer: Option<String>,
    /// Only this kind.
    pub kind: Option<MovementKind>,
    /// After this movement (position, seq) in the list's order.
    pub after: Option<(i64, i64)>,
}

/// The most movements one page answers.
pub const MOVEMENT_PAGE_MAX: usize = 1_000;

/// Movements one by one, in effective order (then position), at most `limit`
/// (1..=[`MOVEMENT_PAGE_MAX`]); and whether more follow.
///
/// # Errors
/// Database errors; a stored kind this code does not know.
pub async fn movement_list(
    db: &Db,
    filter: &MovementFilter,
    limit: usize,
) -> Result<(Vec<Movement>, bool), crate::db::DbError> {
    let limit = limit.clamp(1, MOVEMENT_PAGE_MAX);
    let mut sql = format!(
        "SELECT m.position, m.seq, m.effective_at, m.customer_id, m.subscription_id, m.plan, m.kind, m.delta_minor
         FROM {MOVEMENTS} m WHERE m.kind <> ''"
    );
    let mut params: Vec<Value> = Vec::new();
    if let Some(from) = filter.from {
        sql.push_str(" AND m.day >= ?");
        params.push(from.to_string().into());
    }
    if let Some(to) = filter.to {
        sql.push_str(" AND m.day <= ?");
        params.push(to.to_string().into());
    }
    if let Some(customer) = &filter.customer {
        sql.push_str(" AND m.customer_id = ?");
        params.push(customer.clone().into());
    }
    if let Some(kind) = filter.kind {
        sql.push_str(" AND m.kind = ?");
        params.push(kind.name().into());
    }
    if let Some((position, seq)) = filter.after {
        sql.push_str(&format!(
            " AND (m.effective_at, m.position, m.seq) >
                 (SELECT a.effective_at, a.position, a.seq FROM {MOVEMENTS} a WHERE a.position = ? AND a.seq = ?)"
        ));
        params.push(position.into());
        params.push(seq.into());
    }
    sql.push_str(&format!(
        " ORDER BY m.effective_at, m.position, m.seq LIMIT {}",
        limit + 1
    ));
    type Row = (i64, i64, String, String, String, String, MovementKind, i64);
    let rows: Vec<Row> = db.rows(&Stmt::new(sql, params)).await?;
    let more = rows.len() > limit;
    let out = rows
        .into_iter()
        .take(limit)
        .map(
            |(
                position,
                seq,
                effective_at,
                customer_id,
                subscription_id,
                plan,
                kind,
                delta_minor,
            )| {
                Movement {
                    position,
                    seq,
                    effective_at,
                    customer_id,
                    subscription_id,
                    plan,
                    kind,
                    delta_minor,
                }
            },
        )
        .collect();
    Ok((out, more))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn entry(at: OffsetDateTime, position: i64, delta: i64, paused: i64) -> Entry {
        Entry {
            at,
            position,
            seq: 0,
            subscription: format!("s{position}"),
            plan: "p".into(),
            delta,
            paused,
            kind: None,
        }
    }

    /// A price the subscription cannot be counted by is the domain's typed
    /// refusal, kept as the projection error's source (it was flattened to text).
    #[test]
    fn an_uncountable_price_is_a_domain_error_kept_as_the_source() {
        let price = recur_commands::catalog::Price {
            id: "setup_fee".into(),
            plan_id: "p".into(),
            unit_amount: recur_ledger::Money::parse("10.00", "USD").expect("an amount"),
            billing: recur_commands::catalog::Billing::OneTime,
        };
        let tracked = Tracked {
            state: Subscription {
                status: SubscriptionStatus::Active,
                price: Some(price),
                quantity: 1,
                ever_paid: true,
                ..Subscription::default()
            },
            ..Tracked::default()
        };
        let refusal = tracked
            .mrr_minor(&Profile::default())
            .expect_err("a one-time price has no MRR");
        assert!(
            matches!(&refusal, DomainError::WrongPriceKind { price, .. } if price == "setup_fee"),
            "{refusal:?}"
        );
        let error = Mrr::default().error(7, refusal);
        let source = std::error::Error::source(&error).expect("the domain's refusal");
        assert!(source.to_string().contains("setup_fee"), "{source}");
    }

    fn kinds(timeline: &Timeline) -> Vec<Option<MovementKind>> {
        timeline.entries.iter().map(|e| e.kind).collect()
    }

    /// The same changes recorded in any order classify the same: what decides is
    /// when they take effect, and changes at one instant are classified together.
    #[test]
    fn movements_are_classified_in_effective_order_whatever_the_order_recorded() {
        let (d1, d2, d3) = (
            datetime!(2027-01-01 00:00 UTC),
            datetime!(2027-01-02 00:00 UTC),
            datetime!(2027-01-03 00:00 UTC),
        );
        // Two subscriptions start (d1), one ends (d2), the other ends (d3), a new one (d3 too).
        let changes = [
            entry(d1, 1, 100, 0),
            entry(d1, 2, 50, 0),
            entry(d2, 3, -100, 0),
            entry(d3, 4, -50, 0),
            entry(d3, 5, 70, 0),
        ];
        let expected = {
            let mut timeline = Timeline::default();
            for change in &changes {
                timeline.insert(change.clone());
            }
            kinds(&timeline)
        };
        use MovementKind::*;
        assert_eq!(
            expected,
            vec![
                Some(New),
                Some(New),
                Some(Contraction),
                Some(Contraction),
                Some(Expansion)
            ]
        );
        for order in [[4, 3, 2, 1, 0], [2, 4, 0, 3, 1], [3, 0, 4, 1, 2]] {
            let mut timeline = Timeline::default();
            for index in order {
                timeline.insert(changes[index].clone());
            }
            assert_eq!(kinds(&timeline), expected, "recorded in order {order:?}");
            assert_eq!(timeline.total, 70);
        }
    }

    #[test]
    fn a_pause_holds_the_customer_under_the_contraction_rule() {
        let (d1, d2, d3) = (
            datetime!(2027-01-01 00:00 UTC),
            datetime!(2027-02-01 00:00 UTC),
            datetime!(2027-03-01 00:00 UTC),
        );
        let mut timeline = Timeline::default();
        timeline.insert(entry(d1, 1, 97, 0));
        timeline.insert(entry(d2, 2, -97, 1));
        timeline.insert(entry(d3, 3, 0, -1));
        use MovementKind::*;
        assert_eq!(
            kinds(&timeline),
            vec![Some(New), Some(Contraction), Some(Churn)]
        );
        // Without the pause holding them: churn at the pause, nothing at the cancel.
        let mut timeline = Timeline::default();
        timeline.insert(entry(d1, 1, 97, 0));
        timeline.insert(entry(d2, 2, -97, 0));
        timeline.insert(entry(d3, 3, 97, 0));
        assert_eq!(
            kinds(&timeline),
            vec![Some(New), Some(Churn), Some(Reactivation)]
        );
    }
}
