//! `recur demo`: a year of the coaching business, simulated through the real
//! command path and the scheduler on a test clock, then summarised from the
//! ledger alone.

pub mod cards;
pub mod report;
pub mod simulation;

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use recur_commands::recovery::{Messenger, RecordingMessenger};
use recur_commands::scheduler::Scheduler;
use recur_commands::{
    Billing, BillingError, Catalog, PaymentGateway, SimulatedGateway, SubscriptionId,
};
use recur_ledger::{Clock, Ledger, LedgerError, Money, Position, TestClock};
use serde::Serialize;
use time::macros::datetime;
use time::{Duration, OffsetDateTime};

use self::cards::{CardIssuer, SimulatedCards};
use self::report::{Report, Summary};
use self::simulation::{Activity, Script};

/// The demo's first day.
pub const DEMO_START: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
/// Most customers accepted.
pub const CUSTOMERS_MAX: u64 = 1_000_000;
/// Most months accepted.
pub const MONTHS_MAX: u32 = 120;
/// The embedded demo ledger, in the data directory (replaced on each run).
pub const DEMO_LEDGER_FILE: &str = "recur-demo.sqlite";
/// Billing work run at once by the demo's scheduler.
const SCHEDULER_CONCURRENCY: usize = 32;

/// How to run the demo.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Seed of the simulated business.
    pub seed: u64,
    /// Customers arriving over the period.
    pub customers: u64,
    /// Months simulated.
    pub months: u32,
    /// A ledger location (made if missing; it must be empty); default: a fresh
    /// embedded file in `data_dir`.
    pub database: Option<String>,
    /// Folder of the default demo ledger ([`DEMO_LEDGER_FILE`]).
    pub data_dir: std::path::PathBuf,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// The master keys that encrypt the people's contact details (default:
    /// the key file in `data_dir`).
    pub master_keys: crate::config::MasterKeyArgs,
    /// The provider the people's cards are charged through.
    pub payments: DemoPayments,
    /// Where dunning messages go.
    pub channels: DemoChannels,
}

/// Where a demo's dunning messages go: SMTP and SMS when configured, else kept
/// in memory and counted.
#[derive(Clone)]
pub struct DemoChannels {
    /// What sends them.
    pub messenger: Arc<dyn Messenger>,
}

impl DemoChannels {
    /// In memory: the default, needing nothing.
    pub fn in_memory() -> Self {
        Self {
            messenger: Arc::new(RecordingMessenger::default()),
        }
    }

    /// Through SMTP and SMS when the environment configures them (as for
    /// `recur serve`; `RECUR_SMTP_FROM` defaults to [`DEMO_SMTP_FROM`]), else in
    /// memory. The update-card links are signed with a key made for this run,
    /// under [`DEMO_PUBLIC_URL`] (the demo serves no page). Also answers
    /// whether messages leave the process.
    ///
    /// # Errors
    /// A channel half configured or malformed; no random key.
    pub fn from_env() -> Result<(Self, bool), crate::dunning_channels::ChannelsError> {
        use crate::dunning_channels::{ChannelsError, DunningChannels};
        let key = recur_commands::update_card_link::LinkKey::generate()
            .map_err(|e| ChannelsError::Config(format!("update-card link key: {e}")))?;
        let update_card = recur_api::routes::update_card::UpdateCardConfig {
            key,
            public_url: DEMO_PUBLIC_URL.to_owned(),
            business_name: recur_notify::DEFAULT_BUSINESS_NAME.to_owned(),
        };
        Ok(
            match DunningChannels::from_env_with(update_card, Some(DEMO_SMTP_FROM))? {
                Some(channels) => (
                    Self {
                        messenger: Arc::new(channels),
                    },
                    true,
                ),
                None => (Self::in_memory(), false),
            },
        )
    }
}

/// The base of the demo's update-card links: it has no server.
pub const DEMO_PUBLIC_URL: &str = "http://127.0.0.1";
/// The demo's sender address when `RECUR_SMTP_FROM` is unset.
pub const DEMO_SMTP_FROM: &str = "Recur demo <billing@demo.invalid>";

impl std::fmt::Debug for DemoChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoChannels").finish_non_exhaustive()
    }
}

/// The payment provider of a demo: the gateway Recur charges through, and where
/// the people's card numbers become tokens (Stripe.js's part).
#[derive(Clone)]
pub struct DemoPayments {
    /// What Recur charges through.
    pub gateway: Arc<dyn PaymentGateway>,
    /// Where card numbers become tokens.
    pub cards: Arc<dyn CardIssuer>,
}

impl DemoPayments {
    /// The simulated gateway, in memory: the default, needing nothing.
    pub fn simulated() -> Self {
        Self {
            gateway: Arc::new(SimulatedGateway::new()),
            cards: Arc::new(SimulatedCards),
        }
    }
}

impl std::fmt::Debug for DemoPayments {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DemoPayments")
            .field("gateway", &self.gateway.name())
            .finish_non_exhaustive()
    }
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// The ledger could not be opened.
    #[error(transparent)]
    Open(#[from] crate::config::OpenError),
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The billing domain failed (not a refusal: those are counted).
    #[error(transparent)]
    Billing(#[from] BillingError),
    /// The ledger holds an event the report cannot read.
    #[error("report: event {position} of {stream}")]
    Report {
        /// The event's stream.
        stream: String,
        /// The event's global position.
        position: u64,
        /// Why it could not be folded.
        #[source]
        source: report::ReportError,
    },
    /// The read models could not be built.
    #[error(transparent)]
    Projection(#[from] recur_projections::ProjectionError),
}

/// Everything the demo prints.
#[derive(Debug, Serialize)]
pub struct DemoOutcome {
    /// Where the ledger is (password removed).
    pub ledger: String,
    /// Seed.
    pub seed: u64,
    /// Customers asked for.
    pub customers: u64,
    /// Months simulated.
    pub months: u32,
    /// First instant.
    #[serde(with = "time::serde::rfc3339")]
    pub start: OffsetDateTime,
    /// Last instant.
    #[serde(with = "time::serde::rfc3339")]
    pub end: OffsetDateTime,
    /// What the simulated people did.
    pub activity: Activity,
    /// The owner's summary, folded from the ledger.
    pub summary: Summary,
    /// Events in the ledger whose hashes and chains `verify` recomputed.
    pub events_verified: u64,
    /// True when the ledger verified intact.
    pub ledger_intact: bool,
    /// Events after the last seal when verified (0: the demo seals at the end).
    pub unsealed_events: u64,
    /// The last seal: its digest anchors the whole ledger (keep it elsewhere).
    pub final_seal: Option<recur_ledger::SealReport>,
    /// Wall time, milliseconds.
    pub wall_ms: u64,
    /// Peak resident memory of the process, KiB.
    pub peak_rss_kb: u64,
    /// The subscriptions started (for tests; not printed).
    #[serde(skip)]
    pub subscriptions: Vec<SubscriptionId>,
}

/// Runs the demo and returns what it found; also the live billing service, for tests.
///
/// # Errors
/// Bad options, a ledger that cannot be opened or is not empty, billing failures.
pub async fn run(options: &DemoOptions) -> Result<(DemoOutcome, Arc<Billing>), DemoError> {
    let started = Instant::now();
    if options.customers == 0 || options.customers > CUSTOMERS_MAX {
        return Err(DemoError::Options(format!(
            "--customers must be 1 to {CUSTOMERS_MAX}"
        )));
    }
    if options.months == 0 || options.months > MONTHS_MAX {
        return Err(DemoError::Options(format!(
            "--months must be 1 to {MONTHS_MAX}"
        )));
    }
    let location = match &options.database {
        Some(location) => location.clone(),
        None => fresh_embedded_location(&options.data_dir)?,
    };
    let clock = TestClock::at(DEMO_START);
    // The demo writes a new business: it makes its ledger wherever it is told to.
    let ledger = crate::config::LedgerArgs::at(location.clone())
        .open(crate::config::WhenMissing::Create, Arc::new(clock.clone()))
        .await?;
    if ledger.last_position().await? != Position::START {
        return Err(DemoError::Options(format!(
            "the demo needs an empty ledger and {} is not; leave out --database to use a fresh embedded file",
            crate::config::redact(&location)
        )));
    }
    let catalog = Catalog::default_catalog()?;
    let vault = options
        .master_keys
        .vault(&options.data_dir, crate::config::KeyFile::MakeIfMissing)
        .map_err(|error| DemoError::Options(format!("{error:#}")))?;
    let billing = Arc::new(
        Billing::open(
            ledger.clone(),
            catalog,
            Arc::clone(&options.payments.gateway),
        )
        .await?
        .with_vault(Arc::new(vault)),
    );
    simulation::create_coupons(&billing).await?;
    let end = recur_commands::period::Interval::MONTHLY.boundary(DEMO_START, options.months);
    let mut script = Script::write(options.seed, options.customers, DEMO_START, options.months)
        .with_cards(Arc::clone(&options.payments.cards));
    let scheduler = Scheduler::new(Arc::clone(&billing), SCHEDULER_CONCURRENCY)
        .with_messenger(Arc::clone(&options.channels.messenger));
    let mut activity = Activity::default();
    let mut progress = Progress::new(options.progress, DEMO_START, end);
    loop {
        scheduler.catch_up().await?;
        let next = [script.next_at(), scheduler.next_due_at().await]
            .into_iter()
            .flatten()
            .min();
        let Some(next) = next.filter(|at| *at < end) else {
            break;
        };
        // Work within the same hour runs together, as a real hourly scheduler would.
        let step = ceil_to_hour(next.max(clock.now())).min(end);
        clock.advance_to(step);
        script.act_until(&billing, step, &mut activity).await?;
        let report = scheduler.tick().await?;
        if let Some((work, code)) = report.failures.first() {
            tracing::warn!(
                ?work,
                code,
                "billing work failed; it is retried on the next tick"
            );
        }
        progress.show(step, activity.customers);
    }
    clock.advance_to(end);
    scheduler.tick().await?;
    progress.done();

    let mut report = Report::new();
    let mut replay = ledger.replay(Position::START).await?;
    while let Some(event) = replay.next().await? {
        report.apply(&event).map_err(|source| DemoError::Report {
            stream: event.stream_id.to_string(),
            position: event.position.0,
            source,
        })?;
    }
    let mut summary = report.finish();
    (summary.mrr_by_month, summary.arr) = projected_mrr(&ledger, options.months).await?;
    // The demo ends sealed, so `verify` covers every event with a seal and the
    // summary can name the digest to keep outside the ledger.
    ledger.seal().await?;
    let verified = ledger.verify().await?;
    let final_seal = ledger.newest_seal().await?;
    let outcome = DemoOutcome {
        ledger: crate::config::redact(&location),
        seed: options.seed,
        customers: options.customers,
        months: options.months,
        start: DEMO_START,
        end,
        activity,
        summary,
        events_verified: verified.events_checked,
        ledger_intact: verified.is_intact(),
        unsealed_events: verified.unsealed_events,
        final_seal,
        wall_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        peak_rss_kb: recur_bench::peak_rss_kb(),
        subscriptions: simulation::subscriptions(&script),
    };
    Ok((outcome, billing))
}

/// MRR at each month end and ARR at `end`, from the `mrr` projection built over
/// the demo's ledger: the figures `/v1/metrics/mrr` gives, by the counting rules
/// of docs/metrics.md. Every read model is built, so `recur serve` on the demo's
/// ledger starts with them current.
/// MRR at each month's end of a demo of `months` months, and MRR at its end,
/// from the `mrr` projection of `ledger` (caught up first).
///
/// # Errors
/// Projection errors.
pub async fn projected_mrr(
    ledger: &Ledger,
    months: u32,
) -> Result<(Vec<(String, Money)>, Money), DemoError> {
    let end = recur_commands::period::Interval::MONTHLY.boundary(DEMO_START, months);
    let mut projections = recur_projections::Projections::open(ledger).await?;
    projections.catch_up().await?;
    let daily = recur_projections::mrr::daily(projections.mrr.db(), "*", end.date())
        .await
        .map_err(recur_projections::ProjectionError::from)?;
    let month_ends: Vec<time::Date> = (1..=months)
        .map(|month| {
            (recur_commands::period::Interval::MONTHLY.boundary(DEMO_START, month)
                - Duration::days(1))
            .date()
        })
        .collect();
    let by_month = month_ends
        .iter()
        .zip(recur_projections::mrr::at_day_ends(&daily, &month_ends))
        .map(|(day, minor)| {
            (
                format!("{}-{:02}", day.year(), day.month() as u8),
                Money::from_minor(minor, recur_ledger::Currency::USD),
            )
        })
        .collect();
    // `daily` runs through `end`: its last change is the MRR now.
    let now = daily.last().map_or(0, |(_, minor)| *minor);
    Ok((
        by_month,
        Money::from_minor(now * 12, recur_ledger::Currency::USD),
    ))
}

fn fresh_embedded_location(dir: &std::path::Path) -> Result<String, DemoError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| DemoError::Options(format!("cannot create {}: {e}", dir.display())))?;
    let path = dir.join(DEMO_LEDGER_FILE);
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{}{suffix}", path.display());
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(DemoError::Options(format!("cannot replace {file}: {e}"))),
        }
    }
    Ok(format!("sqlite:{}", path.display()))
}

fn ceil_to_hour(at: OffsetDateTime) -> OffsetDateTime {
    let floor = at
        .replace_minute(0)
        .and_then(|t| t.replace_second(0))
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(at);
    if floor == at {
        at
    } else {
        floor + Duration::hours(1)
    }
}

/// A one-line progress bar on stderr.
struct Progress {
    enabled: bool,
    start: OffsetDateTime,
    end: OffsetDateTime,
    shown_percent: i64,
}

impl Progress {
    fn new(enabled: bool, start: OffsetDateTime, end: OffsetDateTime) -> Self {
        Self {
            enabled,
            start,
            end,
            shown_percent: -1,
        }
    }

    fn show(&mut self, now: OffsetDateTime, customers: u64) {
        if !self.enabled {
            return;
        }
        let total = (self.end - self.start).whole_seconds().max(1);
        let percent = ((now - self.start).whole_seconds() * 100 / total).clamp(0, 100);
        if percent == self.shown_percent {
            return;
        }
        self.shown_percent = percent;
        let filled = usize::try_from(percent / 4).unwrap_or(0);
        let bar = format!("{}{}", "#".repeat(filled), ".".repeat(25 - filled.min(25)));
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{bar}] {percent:>3}%  {}  {customers} customers",
            now.date()
        );
        let _ = err.flush();
    }

    fn done(&mut self) {
        if self.enabled && self.shown_percent >= 0 {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn dollars(money: Money) -> String {
    let text = format!("{:.2}", money.amount());
    let (whole, cents) = text.split_once('.').unwrap_or((&text, "00"));
    let negative = whole.starts_with('-');
    let digits = whole.trim_start_matches('-');
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{}${grouped}.{cents}", if negative { "-" } else { "" })
}

/// Prints the summary for a business owner.
pub fn print(outcome: &DemoOutcome) {
    let s = &outcome.summary;
    let a = &outcome.activity;
    println!(
        "Recur demo: the coaching business, {} months from {}, {} customers (seed {})",
        outcome.months,
        outcome.start.date(),
        outcome.customers,
        outcome.seed
    );
    println!("Ledger: {}\n", outcome.ledger);
    println!("Customers at {}", outcome.end.date());
    for (state, count) in &s.customers {
        println!("  {:<16}{count:>8}", state.replace('_', " "));
    }
    println!("\nMRR at each month end (after discounts in force)");
    let top = s
        .mrr_by_month
        .iter()
        .map(|(_, m)| m.amount())
        .max()
        .unwrap_or_default();
    for (month, mrr) in &s.mrr_by_month {
        let width = if top.is_zero() {
            0
        } else {
            usize::try_from(
                (mrr.amount() * rust_decimal::Decimal::from(40) / top)
                    .trunc()
                    .mantissa(),
            )
            .unwrap_or(0)
        };
        println!("  {month}  {:>14}  {}", dollars(*mrr), "█".repeat(width));
    }
    println!("  ARR now   {:>14}", dollars(s.arr));
    println!("\nMoney");
    println!(
        "  collected           {:>15}  ({} payments)",
        dollars(s.collected),
        s.payments
    );
    println!(
        "  refunded            {:>15}  ({} refunds)",
        dollars(s.refunded),
        s.refunds
    );
    println!(
        "  revenue earned      {:>15}",
        dollars(s.revenue_recognized)
    );
    println!(
        "  deferred revenue    {:>15}  (billed, not yet earned)",
        dollars(s.deferred_revenue)
    );
    println!("  discounts given     {:>15}", dollars(s.discounts));
    println!("  tax to remit        {:>15}", dollars(s.tax_payable));
    println!(
        "  credit owed         {:>15}  (downgrades)",
        dollars(s.customer_credit)
    );
    println!("  written off         {:>15}", dollars(s.bad_debt));
    let f = &s.failed_payments;
    println!(
        "\nFailed payments: {} declined attempts on {} invoices",
        f.declined_attempts, f.invoices
    );
    println!(
        "  recovered           {:>6}  {:>15}",
        f.recovered,
        dollars(f.recovered_amount)
    );
    println!("  still retrying      {:>6}", f.retrying);
    println!(
        "  written off         {:>6}  {:>15}  → {} subscriptions canceled",
        f.written_off,
        dollars(f.written_off_amount),
        f.subscriptions_canceled
    );
    let codes: Vec<String> = f
        .decline_codes
        .iter()
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    println!("  decline codes: {}", codes.join(", "));
    print_dunning(&s.dunning);
    println!(
        "\nActivity: {} subscriptions, {} course purchases, {} plan changes, {} cancellations, {} pauses/resumes, {} card updates, {} cards refused on attach, {} refunds",
        a.subscriptions,
        a.purchases,
        a.plan_changes,
        a.cancellations,
        a.pauses,
        a.card_updates,
        a.cards_refused,
        a.refunds
    );
    if !a.refused.is_empty() {
        let refused: Vec<String> = a.refused.iter().map(|(c, n)| format!("{c} {n}")).collect();
        println!("  requests refused by the domain: {}", refused.join(", "));
    }
    println!(
        "\nBooks: {} events, {} invoices; debits = credits: {}; hash chains verified: {}",
        s.events,
        s.invoices,
        if s.books_balanced { "yes" } else { "NO" },
        if outcome.ledger_intact {
            "intact"
        } else {
            "BROKEN"
        }
    );
    if let Some(seal) = &outcome.final_seal {
        println!(
            "Sealed: seal {} up to position {}; final seal digest {}",
            seal.seal_no, seal.to_position, seal.digest
        );
    }
    println!(
        "Took {}.{} s, peak memory {} MiB",
        outcome.wall_ms / 1000,
        outcome.wall_ms % 1000 / 100,
        outcome.peak_rss_kb / 1024
    );
}

impl From<recur_commands::DomainError> for DemoError {
    fn from(error: recur_commands::DomainError) -> Self {
        DemoError::Billing(error.into())
    }
}

/// The dunning funnel: campaigns, how far they went, how they ended, what was
/// sent, asked and offered.
fn print_dunning(d: &report::DunningFunnel) {
    let list = |map: &std::collections::BTreeMap<String, u64>| -> String {
        if map.is_empty() {
            return "none".to_owned();
        }
        map.iter()
            .map(|(k, n)| format!("{} {n}", k.replace('_', " ")))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "\nDunning: {} campaigns ({})",
        d.campaigns,
        list(&d.by_segment)
    );
    let reached: Vec<String> = d
        .reached_step
        .iter()
        .map(|(step, n)| {
            let recovered = d.recovered_after_step.get(step).copied().unwrap_or(0);
            format!("{step}: {n} → {recovered} paid")
        })
        .collect();
    println!("  by step             {}", reached.join(" | "));
    println!(
        "  recovered           {:>6}",
        d.recovered_after_step.values().sum::<u64>()
    );
    println!("  final action        {}", list(&d.exhausted));
    println!("  still running       {:>6}", d.running);
    println!(
        "  messages sent       {}; not sent: {}; given up: {}",
        list(&d.sent),
        list(&d.canceled),
        d.failed
    );
    println!("  phone tasks         {:>6}", d.phone_tasks);
    println!("  offers              {}", list(&d.offers));
    println!(
        "  retries of cards that could not succeed: {}",
        d.futile_retries
    );
}
