//! Billing intervals, service periods, and proration to the second.

use std::fmt;

use recur_ledger::{Money, money::RoundingRule};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::{Duration, Month, OffsetDateTime};

use crate::error::DomainError;

/// How often a recurring price bills.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntervalUnit {
    /// Every `count` days.
    Day,
    /// Every `count` weeks.
    Week,
    /// Every `count` calendar months (the anchor's day, clamped to the month's end).
    Month,
    /// Every `count` calendar years.
    Year,
}

/// A recurring interval: a unit and a count (e.g. every 3 months).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interval {
    /// The unit.
    pub unit: IntervalUnit,
    /// How many units per period, 1..=[`Interval::count_max`].
    pub count: u32,
}

/// The longest interval accepted, as in Stripe: three years (1095 days, 156
/// weeks, 36 months or 3 years).
pub const INTERVAL_YEARS_MAX: u32 = 3;

impl Interval {
    /// The largest count accepted for `unit`: three years' worth.
    pub fn count_max(unit: IntervalUnit) -> u32 {
        match unit {
            IntervalUnit::Day => 365 * INTERVAL_YEARS_MAX,
            IntervalUnit::Week => 52 * INTERVAL_YEARS_MAX,
            IntervalUnit::Month => 12 * INTERVAL_YEARS_MAX,
            IntervalUnit::Year => INTERVAL_YEARS_MAX,
        }
    }

    /// One calendar month.
    pub const MONTHLY: Interval = Interval {
        unit: IntervalUnit::Month,
        count: 1,
    };

    /// The end of period `n` (0-based) for a cycle anchored at `anchor`: period `n`
    /// runs from `anchor + n × interval` to `anchor + (n + 1) × interval`. Months and
    /// years are counted from the anchor, not chained, so Jan 31 → Feb 28 → Mar 31.
    pub fn boundary(self, anchor: OffsetDateTime, n: u32) -> OffsetDateTime {
        let steps = i64::from(self.count) * i64::from(n);
        match self.unit {
            IntervalUnit::Day => anchor + Duration::days(steps),
            IntervalUnit::Week => anchor + Duration::weeks(steps),
            IntervalUnit::Month => add_months(anchor, steps),
            IntervalUnit::Year => add_months(anchor, steps * 12),
        }
    }

    /// How many of this interval make a month, as a factor for MRR: month 1,
    /// 3 months 1/3, year 1/12, week 52/12, day 365/12.
    pub fn monthly_factor(self) -> Decimal {
        let count = Decimal::from(self.count);
        match self.unit {
            IntervalUnit::Day => Decimal::from(365) / (Decimal::from(12) * count),
            IntervalUnit::Week => Decimal::from(52) / (Decimal::from(12) * count),
            IntervalUnit::Month => Decimal::ONE / count,
            IntervalUnit::Year => Decimal::ONE / (Decimal::from(12) * count),
        }
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.unit {
            IntervalUnit::Day => "day",
            IntervalUnit::Week => "week",
            IntervalUnit::Month => "month",
            IntervalUnit::Year => "year",
        };
        if self.count == 1 {
            write!(f, "{unit}")
        } else {
            write!(f, "{} {unit}s", self.count)
        }
    }
}

/// `instant` plus `months` calendar months, the day clamped to the target month's length.
fn add_months(instant: OffsetDateTime, months: i64) -> OffsetDateTime {
    let month0 = i64::from(instant.month() as u8) - 1 + months;
    let year = i64::from(instant.year()) + month0.div_euclid(12);
    let month_index = u8::try_from(month0.rem_euclid(12) + 1).unwrap_or(1);
    let month = Month::try_from(month_index).unwrap_or(Month::January);
    let year = i32::try_from(year).unwrap_or(i32::MAX);
    let day = instant.day().min(month.length(year));
    let date = time::Date::from_calendar_date(year, month, day).unwrap_or(instant.date());
    instant.replace_date(date)
}

/// A service period `[start, end)`, in UTC.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Period {
    /// Inclusive start.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Exclusive end.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
}

impl Period {
    /// Length in whole seconds.
    pub fn seconds(&self) -> i64 {
        (self.end - self.start).whole_seconds()
    }
}

/// The share of `amount` for the seconds of `period` still unused at `at`:
/// `amount × (end − at) / (end − start)`, both in whole seconds (sub-second
/// parts are dropped), rounded half-up to the minor unit. This is Stripe's
/// proration: the credit for unused time on the old price and the charge for
/// the remaining time on the new price are each computed this way.
///
/// # Errors
/// [`DomainError::InvalidField`] when `at` lies outside the period; money
/// overflow.
pub fn unused_share(
    amount: Money,
    period: Period,
    at: OffsetDateTime,
) -> Result<Money, DomainError> {
    let total_s = period.seconds();
    let unused_s = (period.end - at).whole_seconds();
    if total_s <= 0 || unused_s < 0 || unused_s > total_s {
        return Err(DomainError::InvalidField {
            field: "proration time",
            reason: "outside the current period".into(),
        });
    }
    let share = amount.mul_decimal(Decimal::from(unused_s))?;
    let exact = Money::new(share.amount() / Decimal::from(total_s), amount.currency());
    Ok(exact.round_to_minor(RoundingRule::HalfUp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn monthly_boundaries_keep_the_anchor_day_and_clamp_short_months() {
        let anchor = datetime!(2026-01-31 10:00 UTC);
        let m = Interval::MONTHLY;
        assert_eq!(m.boundary(anchor, 1), datetime!(2026-02-28 10:00 UTC));
        assert_eq!(m.boundary(anchor, 2), datetime!(2026-03-31 10:00 UTC));
        assert_eq!(m.boundary(anchor, 13), datetime!(2027-02-28 10:00 UTC));
        let yearly = Interval {
            unit: IntervalUnit::Year,
            count: 1,
        };
        assert_eq!(
            yearly.boundary(datetime!(2028-02-29 00:00 UTC), 1),
            datetime!(2029-02-28 00:00 UTC)
        );
    }

    #[test]
    fn half_of_a_period_unused_is_half_the_amount() -> Result<(), DomainError> {
        let period = Period {
            start: datetime!(2026-04-01 00:00 UTC),
            end: datetime!(2026-05-01 00:00 UTC),
        };
        let price = Money::parse("5000.00", "USD")?;
        let half = unused_share(price, period, datetime!(2026-04-16 00:00 UTC))?;
        assert_eq!(half, Money::parse("2500.00", "USD")?);
        // One second in: 5000 × 2591999 / 2592000 = 4999.99807… → 5000.00.
        let almost = unused_share(price, period, datetime!(2026-04-01 00:00:01 UTC))?;
        assert_eq!(almost, Money::parse("5000.00", "USD")?);
        Ok(())
    }
}
