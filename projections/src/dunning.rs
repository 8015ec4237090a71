//! The recovery read model: every dunning campaign (`dunning-{invoice}`
//! streams) as rows — the campaign and how it ended, its steps with their
//! decline, its messages and what became of them, its phone tasks and its
//! offers — and each invoice's payment attempts (whether one failed), for the
//! failure rate. [`metrics`] answers `GET /v1/metrics/dunning`; [`tasks`] the
//! phone-task list. docs/dunning.md ("Metrics") defines every number.
//!
//! Each campaign event is one statement on its own row, so nothing is held in
//! memory between batches; a batch's payment attempts are summed per invoice
//! and written at its flush.

use std::collections::{BTreeMap, BTreeSet};

use recur_commands::dunning::{DunningEvent, Ending, OfferGiven};
use recur_commands::invoice::InvoiceEvent;
use recur_ledger::{Ledger, Money, Position};
use rust_decimal::Decimal;
use serde::Serialize;
use time::{Date, OffsetDateTime};

use crate::analytics::ratio;
use crate::db::{Db, DbError, Stmt, Value};
use crate::runtime::{Delivered, Projection, ProjectionError};

/// One row per campaign.
pub const CAMPAIGNS: &str = "dunning_campaigns_v1";
/// One row per decided step.
pub const STEPS: &str = "dunning_steps_v1";
/// One row per queued message.
pub const MESSAGES: &str = "dunning_messages_v1";
/// One row per phone task.
pub const TASKS: &str = "dunning_tasks_v1";
/// One row per offer.
pub const OFFERS: &str = "dunning_offers_v1";
/// One row per invoice that attempted a payment.
pub const PAYMENTS: &str = "dunning_payments_v1";
/// First visits through a message's update-card link.
pub const CLICKS: &str = "dunning_clicks_v1";
/// The most tasks one list answers.
pub const TASKS_MAX: usize = 500;

/// The recovery projection.
#[derive(Default)]
pub struct Dunning {
    /// Payment attempts of this batch per invoice: (first attempt's time,
    /// failed?), written once each at flush — a multi-row upsert may not touch
    /// a row twice.
    payments: BTreeMap<String, (i64, i64)>,
}

impl Dunning {
    /// A fresh projection.
    pub fn new() -> Self {
        Self::default()
    }
}

/// A serde enum's snake_case name (`high_value`, `needs_customer_action`).
fn name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// A time as stored: Unix seconds, UTC.
fn seconds(at: OffsetDateTime) -> Value {
    at.unix_timestamp().into()
}

/// Money in minor units; an amount that has none is a damaged event, named.
fn minor(money: Money, event: &Delivered) -> Result<i64, ProjectionError> {
    money.to_minor().map_err(|error| ProjectionError::Event {
        projection: Dunning::NAME,
        position: event.position.0,
        message: format!("{money:?} has no minor units: {error}"),
    })
}

impl Projection for Dunning {
    const NAME: &'static str = "dunning";
    // 2: link clicks.
    const VERSION: u32 = 2;

    fn tables(&self) -> Vec<&'static str> {
        vec![CAMPAIGNS, STEPS, MESSAGES, TASKS, OFFERS, PAYMENTS, CLICKS]
    }

    fn schema(&self) -> Vec<Stmt> {
        [
            // ending: '' while open, then recovered, exhausted or closed; times
            // are Unix seconds so ranges compare as numbers on both backends.
            format!(
                "CREATE TABLE IF NOT EXISTS {CAMPAIGNS} (invoice_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
                 segment TEXT NOT NULL, started_s BIGINT NOT NULL, amount_due_minor BIGINT NOT NULL,
                 currency TEXT NOT NULL, steps BIGINT NOT NULL, ending TEXT NOT NULL, ended_s BIGINT,
                 recovered_minor BIGINT, recovered_after_step BIGINT, final_action TEXT)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {CAMPAIGNS}_by_start ON {CAMPAIGNS} (started_s)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {STEPS} (invoice_id TEXT NOT NULL, step BIGINT NOT NULL,
                 decline_code TEXT NOT NULL, category TEXT NOT NULL, at_s BIGINT NOT NULL,
                 PRIMARY KEY (invoice_id, step))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {MESSAGES} (message_id TEXT PRIMARY KEY, invoice_id TEXT NOT NULL,
                 step BIGINT NOT NULL, channel TEXT NOT NULL, template TEXT NOT NULL, status TEXT NOT NULL,
                 sent_s BIGINT)"
            ),
            format!("CREATE INDEX IF NOT EXISTS {MESSAGES}_by_invoice ON {MESSAGES} (invoice_id)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {TASKS} (invoice_id TEXT NOT NULL, task_no BIGINT NOT NULL,
                 step BIGINT NOT NULL, created_s BIGINT NOT NULL, claimed_by TEXT, claimed_s BIGINT,
                 outcome TEXT, completed_s BIGINT, position BIGINT NOT NULL, PRIMARY KEY (invoice_id, task_no))"
            ),
            format!("CREATE INDEX IF NOT EXISTS {TASKS}_by_position ON {TASKS} (position)"),
            format!(
                "CREATE TABLE IF NOT EXISTS {OFFERS} (invoice_id TEXT NOT NULL, step BIGINT NOT NULL,
                 kind TEXT NOT NULL, detail TEXT NOT NULL, at_s BIGINT NOT NULL, PRIMARY KEY (invoice_id, step))"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {PAYMENTS} (invoice_id TEXT PRIMARY KEY, first_attempt_s BIGINT NOT NULL,
                 failed BIGINT NOT NULL)"
            ),
            format!(
                "CREATE TABLE IF NOT EXISTS {CLICKS} (message_id TEXT PRIMARY KEY, invoice_id TEXT NOT NULL,
                 clicked_s BIGINT NOT NULL)"
            ),
        ]
        .into_iter()
        .map(|sql| Stmt::new(sql, vec![]))
        .collect()
    }

    async fn load(
        &mut self,
        _db: &Db,
        _ledger: &Ledger,
        _at: Position,
    ) -> Result<(), ProjectionError> {
        // Nothing kept between batches.
        self.payments.clear();
        Ok(())
    }

    fn flush(&mut self, writes: &mut Vec<Stmt>) {
        for (invoice, (first, failed)) in std::mem::take(&mut self.payments) {
            // A stored row keeps its first attempt; one failure marks it for good.
            writes.push(Stmt::new(
                format!(
                    "INSERT INTO {PAYMENTS} (invoice_id, first_attempt_s, failed) VALUES (?, ?, ?)
                     ON CONFLICT (invoice_id) DO UPDATE SET failed = CASE WHEN excluded.failed > {PAYMENTS}.failed
                     THEN excluded.failed ELSE {PAYMENTS}.failed END"
                ),
                vec![invoice.into(), first.into(), failed.into()],
            ));
        }
    }

    async fn apply(
        &mut self,
        event: &Delivered,
        _ledger: &Ledger,
        writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        match event.stream_id.category() {
            "dunning" => {
                let invoice = event
                    .stream_id
                    .as_str()
                    .trim_start_matches("dunning-")
                    .to_owned();
                let decoded = event.decoded::<DunningEvent>(Self::NAME)?;
                campaign_write(&invoice, decoded, event, writes)?;
            }
            "invoice" => {
                let invoice = event
                    .stream_id
                    .as_str()
                    .trim_start_matches("invoice-")
                    .to_owned();
                let (at, failed) = match event.decoded::<InvoiceEvent>(Self::NAME)? {
                    InvoiceEvent::PaymentFailed { at, .. } => (*at, 1),
                    InvoiceEvent::PaymentSucceeded { at, .. } => (*at, 0),
                    _ => return Ok(()),
                };
                let at = at.unix_timestamp();
                let entry = self.payments.entry(invoice).or_insert((at, failed));
                entry.0 = entry.0.min(at);
                entry.1 = entry.1.max(failed);
            }
            _ => {}
        }
        Ok(())
    }
}

/// The statements a campaign event makes.
fn campaign_write(
    invoice: &str,
    event: &DunningEvent,
    delivered: &Delivered,
    writes: &mut Vec<Stmt>,
) -> Result<(), ProjectionError> {
    let invoice_value = || Value::from(invoice);
    let stmt = match event {
        DunningEvent::DunningStarted { subject, at } => Stmt::new(
            format!(
                "INSERT INTO {CAMPAIGNS} (invoice_id, customer_id, segment, started_s, amount_due_minor, currency,
                 steps, ending) VALUES (?, ?, ?, ?, ?, ?, 0, '') ON CONFLICT (invoice_id) DO NOTHING"
            ),
            vec![
                invoice_value(),
                subject.customer_id.to_string().into(),
                name(&subject.segment).into(),
                seconds(*at),
                minor(subject.amount_due, delivered)?.into(),
                subject.amount_due.currency().code().into(),
            ],
        ),
        DunningEvent::DunningStepDecided { step } => {
            // Two statements: the step's row, then the campaign's count.
            let count = Stmt::new(
                format!("UPDATE {CAMPAIGNS} SET steps = ? WHERE invoice_id = ? AND steps < ?"),
                vec![
                    i64::from(step.step).into(),
                    invoice_value(),
                    i64::from(step.step).into(),
                ],
            );
            let row = Stmt::new(
                format!(
                    "INSERT INTO {STEPS} (invoice_id, step, decline_code, category, at_s) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (invoice_id, step) DO NOTHING"
                ),
                vec![
                    invoice_value(),
                    i64::from(step.step).into(),
                    step.decline_code.clone().into(),
                    name(&step.category).into(),
                    seconds(step.at),
                ],
            );
            writes.push(row);
            count
        }
        DunningEvent::DunningMessageQueued { message } => Stmt::new(
            format!(
                "INSERT INTO {MESSAGES} (message_id, invoice_id, step, channel, template, status)
                 VALUES (?, ?, ?, ?, ?, 'queued') ON CONFLICT (message_id) DO NOTHING"
            ),
            vec![
                message.message_id.to_string().into(),
                invoice_value(),
                i64::from(message.step).into(),
                name(&message.channel).into(),
                name(&message.template).into(),
            ],
        ),
        DunningEvent::DunningMessageSending { message_id, .. } => message_status(*message_id, "sending", None),
        DunningEvent::DunningMessageSent { message_id, at, .. } => {
            message_status(*message_id, "sent", Some(*at))
        }
        DunningEvent::DunningMessageFailed {
            message_id,
            retry_at,
            ..
        } => message_status(
            *message_id,
            if retry_at.is_some() { "retrying" } else { "failed" },
            None,
        ),
        DunningEvent::DunningMessageCanceled { message_id, .. } => {
            message_status(*message_id, "canceled", None)
        }
        DunningEvent::DunningLinkClicked { message_id, at } => Stmt::new(
            format!(
                "INSERT INTO {CLICKS} (message_id, invoice_id, clicked_s) VALUES (?, ?, ?)
                 ON CONFLICT (message_id) DO NOTHING"
            ),
            vec![message_id.to_string().into(), invoice_value(), seconds(*at)],
        ),
        DunningEvent::DunningTaskCreated { task } => Stmt::new(
            format!(
                "INSERT INTO {TASKS} (invoice_id, task_no, step, created_s, position) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT (invoice_id, task_no) DO NOTHING"
            ),
            vec![
                invoice_value(),
                i64::from(task.task_no).into(),
                i64::from(task.step).into(),
                seconds(task.created_at),
                i64::try_from(delivered.position.0).unwrap_or(i64::MAX).into(),
            ],
        ),
        DunningEvent::DunningTaskClaimed { task_no, by, at } => Stmt::new(
            format!("UPDATE {TASKS} SET claimed_by = ?, claimed_s = ? WHERE invoice_id = ? AND task_no = ?"),
            vec![
                by.clone().into(),
                seconds(*at),
                invoice_value(),
                i64::from(*task_no).into(),
            ],
        ),
        DunningEvent::DunningTaskCompleted {
            task_no,
            outcome,
            at,
        } => Stmt::new(
            format!("UPDATE {TASKS} SET outcome = ?, completed_s = ? WHERE invoice_id = ? AND task_no = ?"),
            vec![
                name(outcome).into(),
                seconds(*at),
                invoice_value(),
                i64::from(*task_no).into(),
            ],
        ),
        DunningEvent::DunningOfferMade { step, given, at } => {
            let (kind, detail) = match given {
                OfferGiven::Discount { coupon } => ("discount", coupon.clone()),
                OfferGiven::TrialExtension { days } => ("trial_extension", days.to_string()),
                OfferGiven::NotApplied { reason } => ("not_applied", reason.clone()),
            };
            Stmt::new(
                format!(
                    "INSERT INTO {OFFERS} (invoice_id, step, kind, detail, at_s) VALUES (?, ?, ?, ?, ?)
                     ON CONFLICT (invoice_id, step) DO NOTHING"
                ),
                vec![
                    invoice_value(),
                    i64::from(*step).into(),
                    kind.into(),
                    detail.into(),
                    seconds(*at),
                ],
            )
        }
        // Only the columns that apply are set: a NULL parameter is bound as
        // text, which Postgres refuses for an integer column.
        DunningEvent::DunningEnded { ending, at } => match ending {
            Ending::Recovered { amount, after_step } => Stmt::new(
                format!(
                    "UPDATE {CAMPAIGNS} SET ending = 'recovered', ended_s = ?, recovered_minor = ?,
                     recovered_after_step = ? WHERE invoice_id = ?"
                ),
                vec![
                    seconds(*at),
                    minor(*amount, delivered)?.into(),
                    i64::from(*after_step).into(),
                    invoice_value(),
                ],
            ),
            Ending::Exhausted { final_action } => Stmt::new(
                format!(
                    "UPDATE {CAMPAIGNS} SET ending = 'exhausted', ended_s = ?, final_action = ? WHERE invoice_id = ?"
                ),
                vec![seconds(*at), name(final_action).into(), invoice_value()],
            ),
            Ending::Closed { .. } => Stmt::new(
                format!("UPDATE {CAMPAIGNS} SET ending = 'closed', ended_s = ? WHERE invoice_id = ?"),
                vec![seconds(*at), invoice_value()],
            ),
        },
    };
    writes.push(stmt);
    Ok(())
}

/// A message's new status (and when it was sent).
fn message_status(message_id: uuid::Uuid, status: &str, sent: Option<OffsetDateTime>) -> Stmt {
    match sent {
        Some(at) => Stmt::new(
            format!("UPDATE {MESSAGES} SET status = ?, sent_s = ? WHERE message_id = ?"),
            vec![status.into(), seconds(at), message_id.to_string().into()],
        ),
        None => Stmt::new(
            format!("UPDATE {MESSAGES} SET status = ? WHERE message_id = ?"),
            vec![status.into(), message_id.to_string().into()],
        ),
    }
}

/// How many campaigns of a kind there were, and how many of them recovered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Share {
    /// The step number, channel or decline category.
    pub key: String,
    /// Campaigns counted.
    pub campaigns: i64,
    /// Of those, recovered.
    pub recovered: i64,
}

impl Share {
    /// recovered ÷ campaigns, four places; None without campaigns.
    pub fn rate(&self) -> Option<Decimal> {
        ratio(self.recovered, self.campaigns)
    }
}

/// Messages of one channel sent, and of those clicked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelClicks {
    /// email or sms.
    pub channel: String,
    /// Messages sent (by campaigns of the range).
    pub sent: i64,
    /// Of those, whose update-card link was opened.
    pub clicked: i64,
}

impl ChannelClicks {
    /// clicked ÷ sent, four places; None without messages.
    pub fn rate(&self) -> Option<Decimal> {
        ratio(self.clicked, self.sent)
    }
}

/// Revenue recovered and lost in one month and currency.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MonthMoney {
    /// The month's first day.
    pub month: Date,
    /// ISO 4217.
    pub currency: String,
    /// Collected by campaigns that recovered in the month.
    pub recovered_minor: i64,
    /// Owed on campaigns exhausted in the month (their amount due at the start).
    pub lost_minor: i64,
}

/// The dunning metrics of a range of days (docs/dunning.md, "Metrics").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DunningMetrics {
    /// Invoices whose first payment attempt fell in the range.
    pub invoices_attempted: i64,
    /// Of those, invoices with at least one declined attempt (ever).
    pub invoices_failed: i64,
    /// Campaigns started in the range, voided ones (closed) left out.
    pub campaigns: i64,
    /// Of those, recovered.
    pub recovered: i64,
    /// Of those, exhausted (the final action taken).
    pub exhausted: i64,
    /// Of those, still running.
    pub running: i64,
    /// Per step n: campaigns that reached step n, and those recovered right after it.
    pub by_step: Vec<Share>,
    /// Per channel: campaigns with a sent message of it, and those of them recovered.
    pub by_channel: Vec<Share>,
    /// Per decline category of the first step.
    pub by_category: Vec<Share>,
    /// Per channel: messages sent and clicked.
    pub clicks: Vec<ChannelClicks>,
    /// Hours from start to recovery of the recovered ones, in order (nearest rank).
    pub recover_hours: Vec<Decimal>,
    /// Per month of the range (by the campaign's end), recovered and lost.
    pub months: Vec<MonthMoney>,
    /// Campaigns running now, whenever they started.
    pub campaigns_open: i64,
    /// Phone tasks not completed now.
    pub tasks_open: i64,
}

impl DunningMetrics {
    /// invoices_failed ÷ invoices_attempted.
    pub fn failure_rate(&self) -> Option<Decimal> {
        ratio(self.invoices_failed, self.invoices_attempted)
    }

    /// recovered ÷ campaigns.
    pub fn recovery_rate(&self) -> Option<Decimal> {
        ratio(self.recovered, self.campaigns)
    }

    /// The `percent`-th percentile of the hours to recover, by nearest rank
    /// (the smallest value with at least `percent` % of them at or below it).
    pub fn recover_hours_percentile(&self, percent: u32) -> Option<Decimal> {
        let n = self.recover_hours.len();
        if n == 0 {
            return None;
        }
        let rank = (n * percent as usize).div_ceil(100).clamp(1, n);
        self.recover_hours.get(rank - 1).copied()
    }
}

/// Unix seconds of a day's first instant.
fn day_start(day: Date) -> i64 {
    day.midnight().assume_utc().unix_timestamp()
}

/// The first day of `day`'s month.
fn month_of(day: Date) -> Date {
    day.replace_day(1).unwrap_or(day)
}

/// A stored Unix time as a date; a damaged row is named.
fn date_of(seconds: i64, table: &str) -> Result<Date, DbError> {
    OffsetDateTime::from_unix_timestamp(seconds)
        .map(OffsetDateTime::date)
        .map_err(|_| DbError::Corrupt {
            query: format!("SELECT … FROM {table}"),
            row: 0,
            reason: crate::db::RowError::Column {
                column: 0,
                error: crate::db::ColumnError {
                    expected: "a time",
                    found: seconds.to_string(),
                },
            },
        })
}

/// The metrics of the days `from` to `to` (both included).
///
/// # Errors
/// Database errors; a damaged row.
pub async fn metrics(db: &Db, from: Date, to: Date) -> Result<DunningMetrics, DbError> {
    let start = day_start(from);
    let end = day_start(to.next_day().unwrap_or(to));
    let range = || vec![Value::from(start), Value::from(end)];
    let mut m = DunningMetrics::default();

    let (attempted,): (i64,) = one(
        db,
        format!(
            "SELECT COUNT(*) FROM {PAYMENTS} WHERE first_attempt_s >= ? AND first_attempt_s < ?"
        ),
        range(),
    )
    .await?;
    let (failed,): (i64,) = one(db, format!(
        "SELECT COUNT(*) FROM {PAYMENTS} WHERE first_attempt_s >= ? AND first_attempt_s < ? AND failed = 1"
    ), range()).await?;
    m.invoices_attempted = attempted;
    m.invoices_failed = failed;

    let in_range = format!(
        "SELECT invoice_id FROM {CAMPAIGNS} WHERE started_s >= ? AND started_s < ? AND ending <> 'closed'"
    );
    /// invoice, started, steps, ending, ended, recovered after step.
    type CampaignRow = (String, i64, i64, String, Option<i64>, Option<i64>);
    let campaigns: Vec<CampaignRow> = db
        .rows(&Stmt::new(
            format!(
                "SELECT invoice_id, started_s, steps, ending, ended_s, recovered_after_step FROM {CAMPAIGNS}
                 WHERE started_s >= ? AND started_s < ? AND ending <> 'closed' ORDER BY started_s, invoice_id"
            ),
            range(),
        ))
        .await?;
    let categories: BTreeMap<String, String> = db
        .rows::<(String, String)>(&Stmt::new(
            format!("SELECT invoice_id, category FROM {STEPS} WHERE step = 1 AND invoice_id IN ({in_range})"),
            range(),
        ))
        .await?
        .into_iter()
        .collect();
    let channels: BTreeSet<(String, String)> = db
        .rows::<(String, String)>(&Stmt::new(
            format!(
                "SELECT DISTINCT invoice_id, channel FROM {MESSAGES} WHERE status = 'sent' AND invoice_id IN ({in_range})"
            ),
            range(),
        ))
        .await?
        .into_iter()
        .collect();

    m.clicks = db
        .rows::<(String, i64, i64)>(&Stmt::new(
            format!(
                "SELECT m.channel, COUNT(*), COUNT(c.message_id) FROM {MESSAGES} m
                 LEFT JOIN {CLICKS} c ON c.message_id = m.message_id
                 WHERE m.status = 'sent' AND m.invoice_id IN ({in_range})
                 GROUP BY m.channel ORDER BY m.channel"
            ),
            range(),
        ))
        .await?
        .into_iter()
        .map(|(channel, sent, clicked)| ChannelClicks {
            channel,
            sent,
            clicked,
        })
        .collect();

    let mut by_step: BTreeMap<i64, Share> = BTreeMap::new();
    let mut by_channel: BTreeMap<String, Share> = BTreeMap::new();
    let mut by_category: BTreeMap<String, Share> = BTreeMap::new();
    for (invoice, started, steps, ending, ended, after_step) in &campaigns {
        let recovered = ending == "recovered";
        m.campaigns += 1;
        match ending.as_str() {
            "recovered" => m.recovered += 1,
            "exhausted" => m.exhausted += 1,
            _ => m.running += 1,
        }
        for step in 1..=*steps {
            let share = by_step.entry(step).or_insert_with(|| Share {
                key: step.to_string(),
                campaigns: 0,
                recovered: 0,
            });
            share.campaigns += 1;
            share.recovered += i64::from(recovered && *after_step == Some(step));
        }
        for (_, channel) in channels
            .range((invoice.clone(), String::new())..)
            .take_while(|(i, _)| i == invoice)
        {
            let share = by_channel.entry(channel.clone()).or_insert_with(|| Share {
                key: channel.clone(),
                campaigns: 0,
                recovered: 0,
            });
            share.campaigns += 1;
            share.recovered += i64::from(recovered);
        }
        if let Some(category) = categories.get(invoice) {
            let share = by_category
                .entry(category.clone())
                .or_insert_with(|| Share {
                    key: category.clone(),
                    campaigns: 0,
                    recovered: 0,
                });
            share.campaigns += 1;
            share.recovered += i64::from(recovered);
        }
        if let (true, Some(ended)) = (recovered, ended) {
            let mut hours = (Decimal::from(ended - started) / Decimal::from(3_600)).round_dp(2);
            hours.rescale(2);
            m.recover_hours.push(hours);
        }
    }
    m.recover_hours.sort();
    m.by_step = by_step.into_values().collect();
    m.by_channel = by_channel.into_values().collect();
    m.by_category = by_category.into_values().collect();

    let ended: Vec<(i64, String, String, i64, Option<i64>)> = db
        .rows(&Stmt::new(
            format!(
                "SELECT ended_s, ending, currency, amount_due_minor, recovered_minor FROM {CAMPAIGNS}
                 WHERE ended_s >= ? AND ended_s < ? AND ending IN ('recovered', 'exhausted')"
            ),
            range(),
        ))
        .await?;
    let mut months: BTreeMap<(Date, String), MonthMoney> = BTreeMap::new();
    let mut month = month_of(from);
    // Every month of the range, in every currency seen, so a month without
    // an ending reads as zero rather than missing.
    let currencies: BTreeSet<String> = ended.iter().map(|r| r.2.clone()).collect();
    while month <= to {
        for currency in &currencies {
            months.insert(
                (month, currency.clone()),
                MonthMoney {
                    month,
                    currency: currency.clone(),
                    recovered_minor: 0,
                    lost_minor: 0,
                },
            );
        }
        month = next_month(month);
    }
    for (ended_s, ending, currency, due, recovered) in ended {
        let month = month_of(date_of(ended_s, CAMPAIGNS)?);
        let row = months
            .entry((month, currency.clone()))
            .or_insert(MonthMoney {
                month,
                currency,
                recovered_minor: 0,
                lost_minor: 0,
            });
        if ending == "recovered" {
            row.recovered_minor += recovered.unwrap_or(due);
        } else {
            row.lost_minor += due;
        }
    }
    m.months = months.into_values().collect();

    let (open,): (i64,) = one(
        db,
        format!("SELECT COUNT(*) FROM {CAMPAIGNS} WHERE ending = ''"),
        vec![],
    )
    .await?;
    let (tasks,): (i64,) = one(
        db,
        format!("SELECT COUNT(*) FROM {TASKS} WHERE outcome IS NULL"),
        vec![],
    )
    .await?;
    m.campaigns_open = open;
    m.tasks_open = tasks;
    Ok(m)
}

/// The first day of the month after `month`'s.
fn next_month(month: Date) -> Date {
    let (year, next) = match month.month() {
        time::Month::December => (month.year() + 1, time::Month::January),
        other => (month.year(), other.next()),
    };
    Date::from_calendar_date(year, next, 1).unwrap_or(Date::MAX)
}

/// A query's single row.
async fn one<T: crate::db::FromRow>(
    db: &Db,
    sql: String,
    params: Vec<Value>,
) -> Result<T, DbError> {
    let stmt = Stmt::new(sql, params);
    db.rows::<T>(&stmt)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| DbError::Corrupt {
            query: stmt.sql.clone(),
            row: 0,
            reason: crate::db::RowError::TooFew { width: 0 },
        })
}

/// Which phone tasks a list holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    /// Nobody took it yet.
    Open,
    /// Taken, not completed.
    Claimed,
    /// Completed with an outcome.
    Completed,
}

/// A phone task with what the caller needs (ids and amounts only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskRow {
    /// The campaign's invoice.
    pub invoice_id: String,
    /// The task's number in the campaign.
    pub task_no: i64,
    /// The customer.
    pub customer_id: String,
    /// Owed when the campaign started.
    pub amount_due_minor: i64,
    /// Its currency.
    pub currency: String,
    /// The step that asked for it.
    pub step: i64,
    /// When it was created (Unix seconds).
    pub created_s: i64,
    /// Who took it.
    pub claimed_by: Option<String>,
    /// How the call went.
    pub outcome: Option<String>,
}

/// The tasks in `status`, oldest first, at most [`TASKS_MAX`]; and whether more follow.
///
/// # Errors
/// Database errors.
pub async fn tasks(db: &Db, status: TaskStatus) -> Result<(Vec<TaskRow>, bool), DbError> {
    let filter = match status {
        TaskStatus::Open => "t.claimed_by IS NULL AND t.outcome IS NULL",
        TaskStatus::Claimed => "t.claimed_by IS NOT NULL AND t.outcome IS NULL",
        TaskStatus::Completed => "t.outcome IS NOT NULL",
    };
    type Row = (
        String,
        i64,
        String,
        i64,
        String,
        i64,
        i64,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = db
        .rows(&Stmt::new(
            format!(
                "SELECT t.invoice_id, t.task_no, c.customer_id, c.amount_due_minor, c.currency, t.step, t.created_s,
                 t.claimed_by, t.outcome FROM {TASKS} t JOIN {CAMPAIGNS} c ON c.invoice_id = t.invoice_id
                 WHERE {filter} ORDER BY t.position LIMIT {}",
                TASKS_MAX + 1
            ),
            vec![],
        ))
        .await?;
    let more = rows.len() > TASKS_MAX;
    Ok((
        rows.into_iter()
            .take(TASKS_MAX)
            .map(|r| TaskRow {
                invoice_id: r.0,
                task_no: r.1,
                customer_id: r.2,
                amount_due_minor: r.3,
                currency: r.4,
                step: r.5,
                created_s: r.6,
                claimed_by: r.7,
                outcome: r.8,
            })
            .collect(),
        more,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_by_nearest_rank() {
        let hours = |values: &[i64]| DunningMetrics {
            recover_hours: values.iter().map(|h| Decimal::from(*h)).collect(),
            ..DunningMetrics::default()
        };
        assert_eq!(hours(&[]).recover_hours_percentile(50), None);
        let one = hours(&[7]);
        assert_eq!(one.recover_hours_percentile(50), Some(Decimal::from(7)));
        assert_eq!(one.recover_hours_percentile(90), Some(Decimal::from(7)));
        // Ten values: the median is the 5th, the 90th percentile the 9th.
        let ten = hours(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
        assert_eq!(ten.recover_hours_percentile(50), Some(Decimal::from(5)));
        assert_eq!(ten.recover_hours_percentile(90), Some(Decimal::from(9)));
        // Four values: ranks 2 and 4.
        let four = hours(&[1, 2, 3, 40]);
        assert_eq!(four.recover_hours_percentile(50), Some(Decimal::from(2)));
        assert_eq!(four.recover_hours_percentile(90), Some(Decimal::from(40)));
    }

    #[test]
    fn months_follow_each_other_across_the_year() {
        let day = |y, m, d| Date::from_calendar_date(y, m, d).ok();
        assert_eq!(
            Some(next_month(month_of(
                day(2027, time::Month::December, 31).unwrap_or(Date::MIN)
            ))),
            day(2028, time::Month::January, 1)
        );
        assert_eq!(
            Some(next_month(month_of(
                day(2027, time::Month::January, 31).unwrap_or(Date::MIN)
            ))),
            day(2027, time::Month::February, 1)
        );
    }
}
