//! Revenue recognition: each invoice line's revenue (after discount, before tax)
//! earned ratably by day over its service period, per calendar month and plan;
//! one-time lines are earned when invoiced. Billed amounts per month give the
//! deferred balance: billed so far minus earned so far.

use foldhash::HashMap;

use recur_commands::aggregate::{Aggregate, fold};
use recur_commands::invoice::{Invoice, InvoiceEvent, LineKind};
use recur_ledger::{Ledger, Position, StreamId};
use time::{Date, Month, OffsetDateTime};

use crate::db::{Db, Stmt};
use crate::runtime::{Delivered, Projection, ProjectionError, earlier_events};

/// Earned and billed revenue per month and plan.
pub const MONTHLY: &str = "revenue_monthly_v1";

/// `YYYY-MM` of a date.
fn month_of(date: Date) -> String {
    format!("{:04}-{:02}", date.year(), date.month() as u8)
}

fn first_of_next_month(date: Date) -> Option<Date> {
    if date.month() == Month::December {
        Date::from_calendar_date(date.year() + 1, Month::January, 1).ok()
    } else {
        Date::from_calendar_date(date.year(), date.month().next(), 1).ok()
    }
}

/// Splits `amount_minor` over the calendar months of `[start, end)` in proportion
/// to the days in each; each share is rounded toward zero and the last month takes
/// the remainder, so the shares add up exactly.
pub fn ratable(
    amount_minor: i64,
    start: OffsetDateTime,
    end: OffsetDateTime,
) -> Vec<(String, i64)> {
    let (first, last) = (start.date(), end.date());
    let total_days = i128::from((last - first).whole_days());
    if total_days <= 0 {
        return vec![(month_of(first), amount_minor)];
    }
    let mut shares = Vec::new();
    let mut day = first;
    let mut given: i64 = 0;
    while day < last {
        let next = first_of_next_month(day).map_or(last, |n| n.min(last));
        let days = i128::from((next - day).whole_days());
        let share = i64::try_from(i128::from(amount_minor) * days / total_days).unwrap_or(0);
        shares.push((month_of(day), share));
        given += share;
        day = next;
    }
    if let Some(last_share) = shares.last_mut() {
        last_share.1 += amount_minor - given;
    }
    shares
}

/// The revenue projection.
#[derive(Default)]
pub struct Revenue {
    /// Invoices drafted and not yet finalized.
    invoices: HashMap<StreamId, Invoice>,
    /// This batch's (earned, billed) per (month, plan), written once at flush.
    pending: std::collections::BTreeMap<(String, String), (i64, i64)>,
}

impl Revenue {
    /// A fresh projection.
    pub fn new() -> Self {
        Self::default()
    }
}

fn add(
    pending: &mut std::collections::BTreeMap<(String, String), (i64, i64)>,
    month: &str,
    plan: &str,
    earned: i64,
    billed: i64,
) {
    let entry = pending
        .entry((month.to_owned(), plan.to_owned()))
        .or_default();
    entry.0 += earned;
    entry.1 += billed;
}

fn upsert(writes: &mut Vec<Stmt>, month: &str, plan: &str, earned: i64, billed: i64) {
    writes.push(Stmt::new(
        format!(
            "INSERT INTO {MONTHLY} (month, plan, earned_minor, billed_minor) VALUES (?, ?, ?, ?)
             ON CONFLICT (month, plan) DO UPDATE SET earned_minor = {MONTHLY}.earned_minor + excluded.earned_minor,
             billed_minor = {MONTHLY}.billed_minor + excluded.billed_minor"
        ),
        vec![month.into(), plan.into(), earned.into(), billed.into()],
    ));
}

impl Projection for Revenue {
    const NAME: &'static str = "revenue";
    const VERSION: u32 = 2;

    fn tables(&self) -> Vec<&'static str> {
        vec![MONTHLY]
    }

    fn schema(&self) -> Vec<Stmt> {
        vec![Stmt::new(
            format!(
                "CREATE TABLE IF NOT EXISTS {MONTHLY} (month TEXT NOT NULL, plan TEXT NOT NULL, earned_minor BIGINT NOT NULL,
                 billed_minor BIGINT NOT NULL, PRIMARY KEY (month, plan))"
            ),
            vec![],
        )]
    }

    async fn load(
        &mut self,
        _db: &Db,
        _ledger: &Ledger,
        _at: Position,
    ) -> Result<(), ProjectionError> {
        self.invoices.clear();
        self.pending.clear();
        Ok(())
    }

    fn flush(&mut self, writes: &mut Vec<Stmt>) {
        for ((month, plan), (earned, billed)) in std::mem::take(&mut self.pending) {
            upsert(writes, &month, &plan, earned, billed);
        }
    }

    async fn apply(
        &mut self,
        event: &Delivered,
        ledger: &Ledger,
        _writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        if event.stream_id.category() != "invoice" {
            return Ok(());
        }
        let error = |message: String| ProjectionError::Event {
            projection: Self::NAME,
            position: event.position.0,
            message,
        };
        let decoded = event.decoded::<InvoiceEvent>(Self::NAME)?;
        if !matches!(
            decoded,
            InvoiceEvent::InvoiceDrafted { .. }
                | InvoiceEvent::InvoiceFinalized { .. }
                | InvoiceEvent::InvoiceVoided { .. }
        ) {
            return Ok(());
        }
        if !self.invoices.contains_key(&event.stream_id) {
            // First seen since loading: fold what came before this event.
            let earlier = earlier_events::<InvoiceEvent>(Self::NAME, ledger, event).await?;
            self.invoices
                .insert(event.stream_id.clone(), fold(&earlier));
        }
        let Some(invoice) = self.invoices.get_mut(&event.stream_id) else {
            return Ok(());
        };
        invoice.evolve(decoded);
        let sign = match decoded {
            InvoiceEvent::InvoiceFinalized { .. } => 1,
            InvoiceEvent::InvoiceVoided { .. } => -1,
            _ => return Ok(()),
        };
        let Some(totals) = invoice.totals.clone() else {
            return Ok(());
        };
        // Billed in the month the invoice is issued in the business (its period's
        // start, however late it was drafted); a void takes it back when voided.
        let billed_at = match decoded {
            InvoiceEvent::InvoiceFinalized { .. } => invoice.issued_at.unwrap_or(event.recorded_at),
            _ => event.recorded_at,
        };
        let billed_month = month_of(billed_at.date());
        for (line, line_totals) in invoice.lines.iter().zip(&totals.lines) {
            // Earned revenue: what the line books, less its discount (tax is never revenue).
            let revenue = line_totals
                .booked
                .checked_sub(line_totals.discount)
                .map_err(|e| error(e.to_string()))?;
            let revenue_minor = sign * revenue.to_minor().map_err(|e| error(e.to_string()))?;
            let shares = match (line.kind, line.period) {
                (LineKind::OneTime, _) | (_, None) => vec![(billed_month.clone(), revenue_minor)],
                (_, Some(period)) => ratable(revenue_minor, period.start, period.end),
            };
            add(
                &mut self.pending,
                &billed_month,
                &line.plan_id,
                0,
                revenue_minor,
            );
            for (month, share) in shares {
                add(&mut self.pending, &month, &line.plan_id, share, 0);
            }
        }
        // Booked: only a void (rare) needs the invoice again, and then folds it from
        // the ledger like any invoice first seen since loading.
        self.invoices.remove(&event.stream_id);
        Ok(())
    }
}

/// One month of revenue.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonthRevenue {
    /// `YYYY-MM`.
    pub month: String,
    /// Earned in the month, all plans.
    pub earned_minor: i64,
    /// Invoiced in the month, all plans.
    pub billed_minor: i64,
    /// Billed so far less earned so far, at the month's end.
    pub deferred_minor: i64,
}

/// Revenue per month up to `to_month` (inclusive), from `from_month`.
///
/// # Errors
/// Database errors.
pub async fn monthly(
    db: &Db,
    from_month: &str,
    to_month: &str,
) -> Result<Vec<MonthRevenue>, crate::db::DbError> {
    let rows: Vec<(String, i64, i64)> = db
        .rows(&Stmt::new(
            format!(
                "SELECT month, CAST(SUM(earned_minor) AS BIGINT), CAST(SUM(billed_minor) AS BIGINT) FROM {MONTHLY}
                 WHERE month <= ? GROUP BY month ORDER BY month"
            ),
            vec![to_month.into()],
        ))
        .await?;
    let mut out = Vec::new();
    let (mut earned_total, mut billed_total) = (0i64, 0i64);
    for (month, earned, billed) in rows {
        earned_total += earned;
        billed_total += billed;
        if month.as_str() >= from_month {
            out.push(MonthRevenue {
                month,
                earned_minor: earned,
                billed_minor: billed,
                deferred_minor: billed_total - earned_total,
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn a_period_across_two_months_is_split_by_days_and_adds_up() {
        // Jan 16 – Feb 16: 16 days in January, 15 in February, of 31.
        let shares = ratable(
            9_700,
            datetime!(2026-01-16 00:00 UTC),
            datetime!(2026-02-16 00:00 UTC),
        );
        assert_eq!(
            shares,
            vec![("2026-01".into(), 5_006), ("2026-02".into(), 4_694)]
        );
        assert_eq!(shares.iter().map(|s| s.1).sum::<i64>(), 9_700);
        let credit = ratable(
            -327_546,
            datetime!(2026-04-11 08:20 UTC),
            datetime!(2026-05-01 00:00 UTC),
        );
        assert_eq!(credit, vec![("2026-04".into(), -327_546)]);
    }
}
