//! The SaaS metrics, answered from the MRR read model: MRR series by day, week
//! or month, movements summed per bucket, churn and retention per month,
//! cohorts, and MRR as of a ledger position. Each rule is stated in
//! docs/metrics.md; the HTTP edge only parses, calls these and answers.

use rust_decimal::{Decimal, RoundingStrategy};
use serde::Deserialize;
use time::{Date, Month, Weekday};

use crate::db::{Db, DbError, Stmt};
use crate::mrr::{self, MovementKind};

/// The most buckets (days, weeks, months) one answer holds.
pub const BUCKETS_MAX: usize = 1_000;
/// Decimal places of a rate or ratio.
pub const RATIO_DP: u32 = 4;

/// How a series is bucketed: each bucket is answered at its last day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interval {
    /// Every day.
    #[default]
    Day,
    /// Weeks ending on Sunday.
    Week,
    /// Calendar months.
    Month,
}

impl Interval {
    /// Its name in queries and answers.
    pub fn name(self) -> &'static str {
        match self {
            Interval::Day => "day",
            Interval::Week => "week",
            Interval::Month => "month",
        }
    }
}

/// Why a metric could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum AnalyticsError {
    /// The range starts after it ends.
    #[error("from is after to")]
    Reversed,
    /// The range holds more than [`BUCKETS_MAX`] buckets.
    #[error("more than {BUCKETS_MAX} buckets: narrow the range or widen the interval")]
    TooManyBuckets,
    /// A date past the calendar's end.
    #[error("a date out of range")]
    OutOfRange,
    /// The read model could not be read, or holds what it cannot.
    #[error(transparent)]
    Db(#[from] DbError),
}

impl AnalyticsError {
    /// Whether the caller asked for something impossible (rather than the
    /// server failing to read).
    pub fn is_caller_error(&self) -> bool {
        !matches!(self, AnalyticsError::Db(_))
    }
}

/// The first day of the month after `day`'s.
fn next_month_start(day: Date) -> Result<Date, AnalyticsError> {
    let (year, month) = if day.month() == Month::December {
        (day.year() + 1, Month::January)
    } else {
        (day.year(), day.month().next())
    };
    Date::from_calendar_date(year, month, 1).map_err(|_| AnalyticsError::OutOfRange)
}

/// The first day of `day`'s month.
fn month_start(day: Date) -> Date {
    day.replace_day(1).unwrap_or(day)
}

/// The last day of each bucket from `from` to `to` (the last one cut at `to`).
///
/// # Errors
/// `from` after `to`; more than [`BUCKETS_MAX`] buckets.
pub fn bucket_ends(from: Date, to: Date, interval: Interval) -> Result<Vec<Date>, AnalyticsError> {
    if from > to {
        return Err(AnalyticsError::Reversed);
    }
    let mut ends = Vec::new();
    let mut day = from;
    loop {
        let end = match interval {
            Interval::Day => day,
            Interval::Week => day.next_occurrence(Weekday::Sunday),
            Interval::Month => next_month_start(day)?.previous_day().unwrap_or(day),
        }
        .min(to);
        ends.push(end);
        if ends.len() > BUCKETS_MAX {
            return Err(AnalyticsError::TooManyBuckets);
        }
        match end.next_day() {
            Some(next) if next <= to => day = next,
            _ => break,
        }
    }
    Ok(ends)
}

/// MRR at the end of one bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MrrPoint {
    /// The bucket's last day.
    pub end: Date,
    /// MRR at the end of that day, in minor units.
    pub mrr_minor: i64,
}

/// MRR of `plan` (`None`: all plans) at the end of each bucket from `from` to `to`.
///
/// # Errors
/// A bad range; the read model.
pub async fn mrr_series(
    db: &Db,
    plan: Option<&str>,
    from: Date,
    to: Date,
    interval: Interval,
) -> Result<Vec<MrrPoint>, AnalyticsError> {
    let ends = bucket_ends(from, to, interval)?;
    let daily = mrr::daily(db, plan.unwrap_or("*"), to).await?;
    Ok(ends
        .iter()
        .zip(mrr::at_day_ends(&daily, &ends))
        .map(|(end, mrr_minor)| MrrPoint {
            end: *end,
            mrr_minor,
        })
        .collect())
}

/// The movements of one bucket, summed per kind, in minor units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MovementSums {
    /// The bucket's last day.
    pub end: Date,
    /// Per kind, in [`MovementKind::ALL`]'s order.
    sums: [i64; 5],
}

impl MovementSums {
    /// The sum of `kind`'s movements (negative for contraction and churn).
    pub fn of(&self, kind: MovementKind) -> i64 {
        self.sums[slot(kind)]
    }

    /// The change in MRR: every kind together.
    pub fn net(&self) -> i64 {
        self.sums.iter().sum()
    }
}

fn slot(kind: MovementKind) -> usize {
    match kind {
        MovementKind::New => 0,
        MovementKind::Expansion => 1,
        MovementKind::Contraction => 2,
        MovementKind::Churn => 3,
        MovementKind::Reactivation => 4,
    }
}

/// The movements from `from` to `to`, summed per kind and bucket.
///
/// # Errors
/// A bad range; the read model (an unknown stored kind included).
pub async fn movement_buckets(
    db: &Db,
    from: Date,
    to: Date,
    interval: Interval,
) -> Result<Vec<MovementSums>, AnalyticsError> {
    let ends = bucket_ends(from, to, interval)?;
    let rows: Vec<(String, MovementKind, i64)> = db
        .rows(&Stmt::new(
            format!(
                "SELECT day, kind, CAST(SUM(delta_minor) AS BIGINT) FROM {} WHERE day >= ? AND day <= ? AND kind <> ''
                 GROUP BY day, kind ORDER BY day",
                mrr::MOVEMENTS
            ),
            vec![from.to_string().into(), to.to_string().into()],
        ))
        .await?;
    let mut rows = rows.into_iter().peekable();
    let mut buckets = Vec::with_capacity(ends.len());
    for end in ends {
        let end_text = end.to_string();
        let mut sums = [0i64; 5];
        while let Some((_, kind, delta)) = rows.next_if(|(day, ..)| *day <= end_text) {
            sums[slot(kind)] += delta;
        }
        buckets.push(MovementSums { end, sums });
    }
    Ok(buckets)
}

/// A ratio rounded half-even to [`RATIO_DP`] places; None over zero.
pub fn ratio(numerator: i64, denominator: i64) -> Option<Decimal> {
    if denominator == 0 {
        return None;
    }
    let mut value = (Decimal::from(numerator) / Decimal::from(denominator))
        .round_dp_with_strategy(RATIO_DP, RoundingStrategy::MidpointNearestEven);
    value.rescale(RATIO_DP);
    Some(value)
}

/// One month of churn and retention (docs/metrics.md states each rule).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChurnMonth {
    /// The month's first day.
    pub month: Date,
    /// Paying customers at the start of the month.
    pub customers_start: i64,
    /// Paying customers at its end.
    pub customers_end: i64,
    /// Customers lost in it: one per customer and instant, however many of
    /// their subscriptions ended at it.
    pub customers_churned: i64,
    /// MRR at the start, in minor units.
    pub mrr_start_minor: i64,
    /// MRR at the end.
    pub mrr_end_minor: i64,
    /// The month's expansion movements (positive).
    pub expansion_minor: i64,
    /// Its contraction movements (negative).
    pub contraction_minor: i64,
    /// Its churn movements (negative).
    pub churn_minor: i64,
}

impl ChurnMonth {
    /// customers_churned ÷ customers_start.
    pub fn customer_churn_rate(&self) -> Option<Decimal> {
        ratio(self.customers_churned, self.customers_start)
    }

    /// MRR lost to churn and contraction (positive).
    fn lost_minor(&self) -> i64 {
        -(self.churn_minor + self.contraction_minor)
    }

    /// −(churn + contraction) ÷ MRR at the start.
    pub fn gross_revenue_churn_rate(&self) -> Option<Decimal> {
        ratio(self.lost_minor(), self.mrr_start_minor)
    }

    /// (MRR at the start + expansion + contraction + churn) ÷ MRR at the start.
    pub fn net_revenue_retention(&self) -> Option<Decimal> {
        ratio(
            self.mrr_start_minor + self.expansion_minor + self.contraction_minor + self.churn_minor,
            self.mrr_start_minor,
        )
    }

    /// (MRR at the start + contraction + churn) ÷ MRR at the start.
    pub fn gross_revenue_retention(&self) -> Option<Decimal> {
        ratio(
            self.mrr_start_minor + self.contraction_minor + self.churn_minor,
            self.mrr_start_minor,
        )
    }

    /// Average revenue per paying account at the end of the month (truncated to the minor unit).
    pub fn arpa_minor(&self) -> Option<i64> {
        (self.customers_end > 0).then(|| self.mrr_end_minor / self.customers_end)
    }

    /// ARPA ÷ gross revenue churn rate, when some revenue was lost.
    pub fn ltv_minor(&self) -> Option<i64> {
        let arpa = self.arpa_minor()?;
        let lost = self.lost_minor();
        (lost > 0 && self.mrr_start_minor > 0).then(|| arpa * self.mrr_start_minor / lost)
    }
}

/// Arrivals (new, reactivation) and departures (churn) with effective day in
/// `[from, to)`, one per customer, instant and direction.
fn arrivals_and_departures(
    moves: &[(String, String, MovementKind, i64)],
    from: &str,
    to: &str,
) -> (i64, i64) {
    let mut seen = std::collections::HashSet::new();
    let (mut arrived, mut left) = (0, 0);
    for (customer, at, kind, _) in moves {
        let day = &at[..10.min(at.len())];
        if day < from || day >= to || !seen.insert((customer, at, *kind == MovementKind::Churn)) {
            continue;
        }
        match kind {
            MovementKind::New | MovementKind::Reactivation => arrived += 1,
            MovementKind::Churn => left += 1,
            MovementKind::Expansion | MovementKind::Contraction => {}
        }
    }
    (arrived, left)
}

/// Churn and retention for each month from `from`'s to `to`'s.
///
/// # Errors
/// A bad range; the read model.
pub async fn churn_months(
    db: &Db,
    from: Date,
    to: Date,
) -> Result<Vec<ChurnMonth>, AnalyticsError> {
    if from > to {
        return Err(AnalyticsError::Reversed);
    }
    let moves = mrr::movements_through(db, to).await?;
    let daily = mrr::daily(db, "*", to).await?;
    let mrr_before = |day: &str| {
        daily
            .iter()
            .take_while(|(d, _)| d.as_str() < day)
            .last()
            .map_or(0, |(_, mrr)| *mrr)
    };
    let customers_before = |day: &str| {
        let (arrived, left) = arrivals_and_departures(&moves, "0000-00-00", day);
        arrived - left
    };
    let mut months = Vec::new();
    let mut start = month_start(from);
    while start <= to {
        let next = next_month_start(start)?;
        let (first, after) = (start.to_string(), next.to_string());
        let sum = |wanted: MovementKind| -> i64 {
            moves
                .iter()
                .filter(|(_, at, kind, _)| {
                    *kind == wanted && &at[..10] >= first.as_str() && &at[..10] < after.as_str()
                })
                .map(|(.., delta)| delta)
                .sum()
        };
        months.push(ChurnMonth {
            month: start,
            customers_start: customers_before(&first),
            customers_end: customers_before(&after),
            customers_churned: arrivals_and_departures(&moves, &first, &after).1,
            mrr_start_minor: mrr_before(&first),
            mrr_end_minor: mrr_before(&after),
            expansion_minor: sum(MovementKind::Expansion),
            contraction_minor: sum(MovementKind::Contraction),
            churn_minor: sum(MovementKind::Churn),
        });
        if months.len() > BUCKETS_MAX {
            return Err(AnalyticsError::TooManyBuckets);
        }
        start = next;
    }
    Ok(months)
}

/// One cohort: the customers whose first paid month it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cohort {
    /// The first paid month (YYYY-MM).
    pub month: String,
    /// Customers in the cohort.
    pub customers: i64,
    /// Per month since the start (0 = the first): customers still paying at its end.
    pub retained: Vec<i64>,
    /// Per month since the start: the cohort's MRR at its end, in minor units.
    pub mrr_minor: Vec<i64>,
}

/// The month (YYYY-MM) after `month`.
fn next_month(month: &str) -> String {
    let (year, number) = month.split_once('-').unwrap_or(("1970", "01"));
    let (year, number): (i32, u32) = (year.parse().unwrap_or(1970), number.parse().unwrap_or(1));
    if number >= 12 {
        format!("{:04}-01", year + 1)
    } else {
        format!("{year:04}-{:02}", number + 1)
    }
}

/// Customers by first paid month from `from`'s to `to`'s, with the customers
/// and MRR each cohort keeps at the end of every month since (up to `to`'s).
///
/// # Errors
/// A bad range; the read model.
pub async fn cohorts(db: &Db, from: Date, to: Date) -> Result<Vec<Cohort>, AnalyticsError> {
    use std::collections::{BTreeMap, HashMap};
    if from > to {
        return Err(AnalyticsError::Reversed);
    }
    let moves = mrr::movements_through(db, to).await?;
    // Per customer, in effective order: the first month, and by month the
    // changes of MRR and whether they were present at its end.
    let mut first: BTreeMap<&str, String> = BTreeMap::new();
    // (month, MRR change, present after it: Some(true) arrived, Some(false) left).
    type Change = (String, i64, Option<bool>);
    let mut changes: HashMap<&str, Vec<Change>> = HashMap::new();
    for (customer, at, kind, delta) in &moves {
        let month = at[..7].to_owned();
        first.entry(customer).or_insert_with(|| month.clone());
        let presence = match kind {
            MovementKind::New | MovementKind::Reactivation => Some(true),
            MovementKind::Churn => Some(false),
            MovementKind::Expansion | MovementKind::Contraction => None,
        };
        changes
            .entry(customer)
            .or_default()
            .push((month, *delta, presence));
    }
    let (from_month, to_month) = (
        from.to_string()[..7].to_owned(),
        to.to_string()[..7].to_owned(),
    );
    let mut by_month: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (customer, month) in first {
        if month >= from_month && month <= to_month {
            by_month.entry(month).or_default().push(customer);
        }
    }
    let mut cohorts = Vec::new();
    for (month, customers) in by_month {
        let (mut retained, mut mrr_minor) = (Vec::new(), Vec::new());
        let mut measured = month.clone();
        while measured <= to_month && retained.len() <= BUCKETS_MAX {
            let (mut still, mut mrr) = (0, 0);
            for customer in &customers {
                let upto: Vec<_> = changes
                    .get(customer)
                    .map(|c| c.iter().filter(|(m, ..)| *m <= measured).collect())
                    .unwrap_or_default();
                mrr += upto.iter().map(|(_, delta, _)| delta).sum::<i64>();
                if upto.iter().rev().find_map(|(.., present)| *present) == Some(true) {
                    still += 1;
                }
            }
            retained.push(still);
            mrr_minor.push(mrr);
            measured = next_month(&measured);
        }
        cohorts.push(Cohort {
            month,
            customers: i64::try_from(customers.len()).unwrap_or(i64::MAX),
            retained,
            mrr_minor,
        });
    }
    Ok(cohorts)
}

/// MRR and paying customers as they stood at one ledger position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MrrAt {
    /// MRR after every event up to and including the position, in minor units.
    pub mrr_minor: i64,
    /// Customers paying then.
    pub customers_paying: i64,
}

/// MRR and paying customers at `position`: the movements up to it, added up.
///
/// # Errors
/// The read model.
pub async fn mrr_at(db: &Db, position: u64) -> Result<MrrAt, AnalyticsError> {
    let (mrr_minor, customers_paying): (i64, i64) = db
        .row(&Stmt::new(
            format!(
                "SELECT CAST(COALESCE(SUM(delta_minor), 0) AS BIGINT),
                        CAST(COUNT(DISTINCT CASE WHEN kind IN ('new', 'reactivation')
                                                 THEN customer_id || '|' || effective_at END)
                           - COUNT(DISTINCT CASE WHEN kind = 'churn'
                                                 THEN customer_id || '|' || effective_at END) AS BIGINT)
                 FROM {} WHERE position <= ?",
                mrr::MOVEMENTS
            ),
            vec![i64::try_from(position).unwrap_or(i64::MAX).into()],
        ))
        .await?;
    Ok(MrrAt {
        mrr_minor,
        customers_paying,
    })
}

/// One subscription of a customer as the MRR read model holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubscriptionMrr {
    /// Its id.
    pub id: String,
    /// Its plan.
    pub plan: String,
    /// Its status.
    pub status: String,
    /// Its MRR, in minor units.
    pub mrr_minor: i64,
}

/// A customer's subscriptions with their MRR, by id.
///
/// # Errors
/// The read model.
pub async fn subscriptions_of(
    db: &Db,
    customer: &str,
) -> Result<Vec<SubscriptionMrr>, AnalyticsError> {
    let rows: Vec<(String, String, String, i64)> = db
        .rows(&Stmt::new(
            format!(
                "SELECT subscription_id, plan, status, mrr_minor FROM {} WHERE customer_id = ? ORDER BY subscription_id",
                mrr::SUBSCRIPTIONS
            ),
            vec![customer.into()],
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|(id, plan, status, mrr_minor)| SubscriptionMrr {
            id,
            plan,
            status,
            mrr_minor,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use time::macros::date;

    use super::*;

    #[test]
    fn buckets_end_on_sundays_and_month_ends_and_are_cut_at_to() {
        let weeks =
            bucket_ends(date!(2027 - 01 - 01), date!(2027 - 01 - 20), Interval::Week).unwrap();
        assert_eq!(
            weeks,
            vec![
                date!(2027 - 01 - 03),
                date!(2027 - 01 - 10),
                date!(2027 - 01 - 17),
                date!(2027 - 01 - 20)
            ]
        );
        let months = bucket_ends(
            date!(2027 - 11 - 15),
            date!(2028 - 02 - 10),
            Interval::Month,
        )
        .unwrap();
        assert_eq!(
            months,
            vec![
                date!(2027 - 11 - 30),
                date!(2027 - 12 - 31),
                date!(2028 - 01 - 31),
                date!(2028 - 02 - 10)
            ]
        );
        assert!(matches!(
            bucket_ends(date!(2027 - 01 - 02), date!(2027 - 01 - 01), Interval::Day),
            Err(AnalyticsError::Reversed)
        ));
        assert!(matches!(
            bucket_ends(date!(2020 - 01 - 01), date!(2027 - 01 - 01), Interval::Day),
            Err(AnalyticsError::TooManyBuckets)
        ));
    }

    #[test]
    fn ratios_round_half_even_to_four_places_and_none_over_zero() {
        assert_eq!(ratio(1, 3).unwrap().to_string(), "0.3333");
        assert_eq!(ratio(1, 8).unwrap().to_string(), "0.1250");
        assert_eq!(
            ratio(1, 20_000).unwrap().to_string(),
            "0.0000",
            "0.00005 rounds to even"
        );
        assert_eq!(
            ratio(3, 20_000).unwrap().to_string(),
            "0.0002",
            "0.00015 rounds to even"
        );
        assert_eq!(ratio(5, 0), None);
    }

    #[test]
    fn a_month_lost_revenue_gives_ltv_as_arpa_over_gross_churn() {
        let month = ChurnMonth {
            month: date!(2027 - 03 - 01),
            customers_start: 10,
            customers_end: 9,
            customers_churned: 1,
            mrr_start_minor: 100_000,
            mrr_end_minor: 90_000,
            expansion_minor: 0,
            contraction_minor: 0,
            churn_minor: -10_000,
        };
        assert_eq!(month.customer_churn_rate().unwrap().to_string(), "0.1000");
        assert_eq!(
            month.gross_revenue_churn_rate().unwrap().to_string(),
            "0.1000"
        );
        assert_eq!(month.net_revenue_retention().unwrap().to_string(), "0.9000");
        assert_eq!(month.arpa_minor(), Some(10_000));
        assert_eq!(month.ltv_minor(), Some(100_000));
        let calm = ChurnMonth {
            churn_minor: 0,
            customers_churned: 0,
            ..month
        };
        assert_eq!(calm.ltv_minor(), None, "no churn, no finite LTV");
    }

    #[test]
    fn one_customer_leaving_two_subscriptions_at_once_is_one_departure() {
        let at = "2027-03-05T00:00:00.000000000Z".to_owned();
        let moves = vec![
            ("c1".to_owned(), at.clone(), MovementKind::Churn, -100),
            ("c1".to_owned(), at.clone(), MovementKind::Churn, -200),
            ("c2".to_owned(), at, MovementKind::New, 300),
        ];
        assert_eq!(
            arrivals_and_departures(&moves, "2027-03-01", "2027-04-01"),
            (1, 1)
        );
        assert_eq!(
            arrivals_and_departures(&moves, "2027-04-01", "2027-05-01"),
            (0, 0)
        );
    }
}
