//! `recur bench billing`: N active monthly subscriptions all renew at one
//! instant; the scheduler drafts, finalizes, charges (simulated gateway) and
//! posts every renewal. Prints one JSON line with renewals/s, events/s against
//! the raw W2 baseline measured in the same run, peak RSS, and the checks made
//! after the run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recur_commands::billing::{NewCustomer, NewSubscription, Trial};
use recur_commands::invoice::{BillingReason, InvoiceEvent};
use recur_commands::postings::TrialBalance;
use recur_commands::subscription::SubscriptionEvent;
use recur_commands::{Billing, Catalog, Scheduler, SimulatedGateway};
use recur_ledger::{Clock, Ledger, LedgerConfig, Position, TestClock};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use time::macros::datetime;

use super::ledger::{BenchBackend, BenchError, database_url, events_per_s, median, ratio};
use super::peak_rss_kb;

/// The most subscriptions one run renews.
pub const SUBSCRIPTIONS_MAX: usize = 1_000_000;
/// The database (Postgres) or file (SQLite) the run writes, made afresh each time.
const BENCH_DB: &str = "recur_bench_billing";
/// Rounds of the raw W2 baseline.
const RAW_ROUNDS: u32 = 3;
/// Events read per page by the checks after the run.
const CHECK_PAGE_EVENTS: usize = 10_000;

/// How to run the billing benchmark.
#[derive(Clone, Debug)]
pub struct BillingBenchOptions {
    /// Postgres or SQLite.
    pub backend: BenchBackend,
    /// Subscriptions that renew at once.
    pub subscriptions: usize,
    /// Billing work items the scheduler runs at once.
    pub concurrency: usize,
    /// Postgres server URL with rights to create databases.
    pub database_url: Option<String>,
    /// Folder for the SQLite files.
    pub scratch_dir: PathBuf,
}

fn usage(error: impl std::fmt::Display) -> BenchError {
    BenchError::Usage(error.to_string())
}

/// Runs the benchmark; prints progress on stderr and one JSON line on stdout.
///
/// # Errors
/// Bad options; database and billing failures. Failed checks are reported in
/// the JSON line (and make the run fail), not hidden.
pub async fn run(options: &BillingBenchOptions) -> Result<(), BenchError> {
    if options.subscriptions == 0 || options.subscriptions > SUBSCRIPTIONS_MAX {
        return Err(usage(format!(
            "--subscriptions must be 1 to {SUBSCRIPTIONS_MAX}"
        )));
    }
    if options.concurrency == 0 {
        return Err(usage("--concurrency must be at least 1"));
    }
    let start = datetime!(2027-01-01 00:00 UTC);
    let clock = TestClock::at(start);
    let ledger = fresh_ledger(options, Arc::new(clock.clone())).await?;
    let gateway = SimulatedGateway::new();
    let billing = Arc::new(
        Billing::open(
            ledger.clone(),
            Catalog::default_catalog().map_err(usage)?,
            Arc::new(gateway.clone()),
        )
        .await
        .map_err(usage)?,
    );

    // Untimed: N customers with a card, each on Community, billed and paid on January 1.
    let setup_started = Instant::now();
    subscribe_all(&billing, options).await?;
    let setup_ms = millis(setup_started.elapsed());

    // Timed: February 1, every period ends at once; one tick renews them all.
    clock.advance_to(datetime!(2027-02-01 00:00 UTC));
    let scheduler = Scheduler::new(Arc::clone(&billing), options.concurrency);
    scheduler.catch_up().await.map_err(usage)?;
    let before = ledger.last_position().await?;
    let charges_before = gateway.charges_made();
    let started = Instant::now();
    let report = scheduler.tick().await.map_err(usage)?;
    let elapsed = started.elapsed();
    let peak_rss_kb = peak_rss_kb();
    let after = ledger.last_position().await?;
    let events = after.0.saturating_sub(before.0);
    let renewals = u64::from(report.periods_started);

    let billed_once = billed_once(&ledger, before, options.subscriptions).await?
        && gateway.charges_made() - charges_before == options.subscriptions as u64
        && report.failures.is_empty();
    let trial_balance_zero = trial_balance_zero(&ledger).await?;
    let ledger_intact = ledger.verify().await?.is_intact();

    eprintln!("bench billing: the raw W2 baseline, {RAW_ROUNDS} rounds");
    let mut raw = super::ledger::raw_w2_rates(
        options.backend,
        options.database_url.clone(),
        options.scratch_dir.join("raw-w2"),
        RAW_ROUNDS,
    )
    .await?;
    let raw_w2 = median(&mut raw);
    let events_rate = events_per_s(events, elapsed);
    println!(
        "{}",
        json!({
            "bench": "billing", "backend": options.backend.name(),
            "subscriptions": options.subscriptions, "concurrency": options.concurrency,
            "renewals": renewals, "events": events, "elapsed_ms": millis(elapsed),
            "renewals_per_s": events_per_s(renewals, elapsed),
            "events_per_s": events_rate, "raw_w2_events_per_s": raw_w2,
            "ratio_to_w2_raw": ratio(events_rate, raw_w2),
            "peak_rss_kb": peak_rss_kb, "setup_ms": setup_ms,
            "billed_once": billed_once, "trial_balance_zero": trial_balance_zero,
            "ledger_intact": ledger_intact,
        })
    );
    if !(billed_once && trial_balance_zero && ledger_intact) {
        return Err(BenchError::Check(
            "a check after the run failed (see the JSON line)".into(),
        ));
    }
    Ok(())
}

fn millis(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// A fresh ledger for the run: a recreated database or file.
async fn fresh_ledger(
    options: &BillingBenchOptions,
    clock: Arc<dyn Clock>,
) -> Result<Ledger, BenchError> {
    let location = match options.backend {
        BenchBackend::Postgres => {
            let server = options.database_url.clone().ok_or_else(|| {
                usage("set DATABASE_URL or --database-url for --backend postgres")
            })?;
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(&server)
                .await?;
            for sql in [
                format!("DROP DATABASE IF EXISTS {BENCH_DB} WITH (FORCE)"),
                format!("CREATE DATABASE {BENCH_DB}"),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await?;
            }
            admin.close().await;
            database_url(&server, BENCH_DB)
        }
        BenchBackend::Sqlite => {
            std::fs::create_dir_all(&options.scratch_dir)
                .map_err(|e| usage(format!("{}: {e}", options.scratch_dir.display())))?;
            let path = options.scratch_dir.join(format!("{BENCH_DB}.sqlite"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite:{}", path.display())
        }
    };
    // A fresh scratch ledger of the benchmark's own.
    let mut config = LedgerConfig::new(location).create_if_missing(true);
    config.pool_size = config.pool_size.max(
        u32::try_from(options.concurrency)
            .unwrap_or(u32::MAX)
            .min(64),
    );
    Ok(Ledger::open(config, clock).await?)
}

/// N customers with a card, each subscribed to Community without a trial (the
/// first invoice billed and paid), `concurrency` at a time.
async fn subscribe_all(
    billing: &Arc<Billing>,
    options: &BillingBenchOptions,
) -> Result<(), BenchError> {
    let permits = Arc::new(tokio::sync::Semaphore::new(options.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut shown = Instant::now();
    let mut done = 0usize;
    for _ in 0..options.subscriptions {
        let permit = Arc::clone(&permits).acquire_owned().await.map_err(usage)?;
        let billing = Arc::clone(billing);
        tasks.spawn(async move {
            let _permit = permit;
            let customer = billing.create_customer(NewCustomer::default()).await?;
            let card = SimulatedGateway::tokenize("4242424242424242", 12, 2040)
                .map_err(|e| recur_commands::BillingError::Catalog(e.to_string()))?;
            billing.attach_payment_method(customer, card).await?;
            billing
                .subscribe(NewSubscription {
                    customer_id: customer,
                    plan_id: "community_access".into(),
                    price_id: None,
                    quantity: 1,
                    trial: Trial::Skip,
                    coupon: None,
                })
                .await
        });
        while let Some(joined) = tasks.try_join_next() {
            joined?.map_err(usage)?;
            done += 1;
        }
        if shown.elapsed() >= Duration::from_secs(2) {
            shown = Instant::now();
            eprintln!(
                "bench billing: set up {done} of {} subscriptions",
                options.subscriptions
            );
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined?.map_err(usage)?;
    }
    Ok(())
}

/// Every subscription renewed exactly once after `before`, with exactly one
/// renewal invoice, drafted and paid once.
async fn billed_once(
    ledger: &Ledger,
    before: Position,
    subscriptions: usize,
) -> Result<bool, BenchError> {
    let mut renewed: HashMap<String, u32> = HashMap::new();
    let mut cycle_invoices: HashMap<String, u32> = HashMap::new();
    let mut paid = 0usize;
    let mut after = before;
    loop {
        let page = ledger.read_all(after, CHECK_PAGE_EVENTS).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for recorded in &page {
            match recorded.stream_id.category() {
                "subscription" => {
                    let event: SubscriptionEvent =
                        recur_commands::billing::decode_event(&recorded.payload)?;
                    if matches!(event, SubscriptionEvent::SubscriptionRenewed { .. }) {
                        *renewed.entry(recorded.stream_id.to_string()).or_default() += 1;
                    }
                }
                "invoice" => {
                    let event: InvoiceEvent =
                        recur_commands::billing::decode_event(&recorded.payload)?;
                    match event {
                        InvoiceEvent::InvoiceDrafted {
                            reason: BillingReason::SubscriptionCycle,
                            subscription_id: Some(sub),
                            ..
                        } => *cycle_invoices.entry(sub.to_string()).or_default() += 1,
                        InvoiceEvent::PaymentSucceeded { .. } => paid += 1,
                        _ => {}
                    }
                }
                _ => {}
            }
        }
        after = last;
        if page.len() < CHECK_PAGE_EVENTS {
            break;
        }
    }
    Ok(renewed.len() == subscriptions
        && renewed.values().all(|n| *n == 1)
        && cycle_invoices.len() == subscriptions
        && cycle_invoices.values().all(|n| *n == 1)
        && paid == subscriptions)
}

/// The postings of every invoice event balance after each event.
async fn trial_balance_zero(ledger: &Ledger) -> Result<bool, BenchError> {
    let mut balance = TrialBalance::default();
    let mut after = Position::START;
    loop {
        let page = ledger.read_all(after, CHECK_PAGE_EVENTS).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            break;
        };
        for recorded in page.iter().filter(|e| e.stream_id.category() == "invoice") {
            let event: InvoiceEvent = recur_commands::billing::decode_event(&recorded.payload)?;
            balance
                .add(event.postings())
                .map_err(|e| BenchError::Check(e.to_string()))?;
            if !balance.is_balanced() {
                return Ok(false);
            }
        }
        after = last;
        if page.len() < CHECK_PAGE_EVENTS {
            break;
        }
    }
    Ok(true)
}
