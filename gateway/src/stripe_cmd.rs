//! The payment gateway `recur serve` charges through (`--gateway`), and
//! `recur stripe …` (`translate`: the Stripe translator run once over the kept
//! webhooks, saying what each Stripe event did; `sync-catalog`). Stripe support is the cargo feature `stripe` (off by
//! default: async-stripe roughly doubles a clean release build); without it,
//! asking for Stripe is a clear error, never a silent fall-back to the
//! simulated gateway.

use std::sync::Arc;

use recur_commands::provider::Effect;
use recur_commands::translator::Translator;
use recur_commands::{Billing, Catalog, PaymentGateway, SimulatedGateway};
use recur_ledger::SystemClock;

use crate::cli::GatewayKind;
use crate::config::{KeyFile, LedgerArgs, MasterKeyArgs, WhenMissing};

/// What to tell someone who asked for Stripe from a build without it.
pub const BUILD_WITH_STRIPE: &str = "this recur was built without Stripe support: \
     build it with `cargo build --release -p recur-gateway --features stripe`";

/// The gateway `kind` names, ready to charge.
///
/// # Errors
/// Stripe without the `stripe` feature; Stripe without `STRIPE_SECRET_KEY`
/// (or with a malformed key or `STRIPE_API_BASE`).
pub fn payment_gateway(kind: GatewayKind) -> anyhow::Result<Arc<dyn PaymentGateway>> {
    match kind {
        GatewayKind::Simulated => Ok(Arc::new(SimulatedGateway::new())),
        GatewayKind::Stripe => stripe_gateway(),
    }
}

/// The payment provider of `recur demo --gateway kind`: the simulated one, or
/// Stripe in test mode with Stripe's test PaymentMethods as the people's cards.
///
/// # Errors
/// As [`payment_gateway`]; a live Stripe key (a demo must never charge real cards).
pub fn demo_payments(kind: GatewayKind) -> anyhow::Result<crate::demo::DemoPayments> {
    match kind {
        GatewayKind::Simulated => Ok(crate::demo::DemoPayments::simulated()),
        GatewayKind::Stripe => demo_on_stripe(),
    }
}

#[cfg(feature = "stripe")]
fn demo_on_stripe() -> anyhow::Result<crate::demo::DemoPayments> {
    use anyhow::Context as _;
    let config = recur_stripe::StripeConfig::from_env().context("demo --gateway stripe")?;
    anyhow::ensure!(
        config.secret_key.is_test_mode(),
        "demo --gateway stripe needs a test key (sk_test_…): the demo charges made-up people"
    );
    Ok(crate::demo::DemoPayments {
        gateway: Arc::new(recur_stripe::StripeGateway::new(&config)?),
        cards: Arc::new(crate::demo::cards::StripeTestCards),
    })
}

#[cfg(not(feature = "stripe"))]
fn demo_on_stripe() -> anyhow::Result<crate::demo::DemoPayments> {
    anyhow::bail!("demo --gateway stripe: {BUILD_WITH_STRIPE}")
}

#[cfg(feature = "stripe")]
fn stripe_gateway() -> anyhow::Result<Arc<dyn PaymentGateway>> {
    use anyhow::Context as _;
    let config = recur_stripe::StripeConfig::from_env().context("--gateway stripe")?;
    if !config.secret_key.is_test_mode() {
        tracing::warn!("--gateway stripe with a live key: charges move real money");
    }
    tracing::info!(api_base = %config.api_base, "charging through Stripe");
    Ok(Arc::new(recur_stripe::StripeGateway::new(&config)?))
}

#[cfg(not(feature = "stripe"))]
fn stripe_gateway() -> anyhow::Result<Arc<dyn PaymentGateway>> {
    anyhow::bail!("--gateway stripe: {BUILD_WITH_STRIPE}")
}

/// `recur stripe sync-catalog`: creates in Stripe what is missing of the
/// ledger's catalog (the one in force; a ledger without one yet gets the
/// default catalog first, as on `recur serve`'s first start). Prints the
/// report (or JSON); the exit status is 1 when a Stripe price differs from
/// Recur's (a conflict, left alone), else 0.
///
/// # Errors
/// No Stripe support compiled in, no key, a missing ledger, Stripe errors.
pub async fn sync_catalog(ledger: &LedgerArgs, create: bool, json: bool) -> anyhow::Result<i32> {
    sync_catalog_inner(ledger, WhenMissing::create_if(create), json).await
}

#[cfg(feature = "stripe")]
async fn sync_catalog_inner(
    ledger: &LedgerArgs,
    missing: WhenMissing,
    json: bool,
) -> anyhow::Result<i32> {
    use anyhow::Context as _;
    let config = recur_stripe::StripeConfig::from_env()?;
    let gateway = recur_stripe::StripeGateway::new(&config)?;
    let ledger = ledger.open(missing, Arc::new(SystemClock)).await?;
    // The simulated gateway: reading the catalog charges nothing.
    let billing = Billing::open(
        ledger,
        Catalog::default_catalog()?,
        Arc::new(SimulatedGateway::new()),
    )
    .await?;
    let catalog = billing.catalog().await?;
    let report = gateway
        .sync_catalog(&catalog)
        .await
        .context("sync the catalog to Stripe")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(if report.conflicts() > 0 { 1 } else { 0 })
}

#[cfg(not(feature = "stripe"))]
async fn sync_catalog_inner(
    _ledger: &LedgerArgs,
    _missing: WhenMissing,
    _json: bool,
) -> anyhow::Result<i32> {
    anyhow::bail!("recur stripe sync-catalog: {BUILD_WITH_STRIPE}")
}

/// Translates the kept Stripe events after the checkpoint (all with
/// `from_start`) and prints one line per event, then a summary.
///
/// # Errors
/// A missing ledger or master key, ledger errors (the checkpoint keeps what
/// was done).
pub async fn translate(
    ledger: &LedgerArgs,
    master_keys: &MasterKeyArgs,
    from_start: bool,
) -> anyhow::Result<()> {
    let vault = master_keys.vault(&ledger.data_dir, KeyFile::MustExist)?;
    let ledger = ledger
        .open(WhenMissing::Refuse, Arc::new(SystemClock))
        .await?;
    crate::config::check_master_keys(&ledger, &vault).await?;
    // Translation never charges: the gateway is not called.
    let billing = Billing::open(
        ledger,
        Catalog::default_catalog()?,
        Arc::new(SimulatedGateway::new()),
    )
    .await?
    .with_vault(Arc::new(vault));
    let translator = Translator::new(Arc::new(billing));
    let report = translator
        .run_with(from_start, |done| {
            // Ids and codes only: no personal data.
            let what = match &done.effect {
                Effect::Applied => format!("applied, {} event(s) appended", done.events_appended),
                Effect::Nothing(reason) => format!("no effect ({reason})"),
            };
            println!(
                "{:>8}  {}  {}  {what}",
                done.position.0, done.stripe_event_id, done.stripe_type
            );
        })
        .await?;
    println!(
        "translated {} Stripe event(s): {} applied, {} without effect; {} ledger event(s) appended; checkpoint {}",
        report.translated,
        report.applied,
        report.translated - report.applied,
        report.events_appended,
        report.checkpoint.0
    );
    Ok(())
}

/// A window's edge: a date (its UTC midnight) or an RFC 3339 time.
///
/// # Errors
/// Neither form.
pub fn window_edge(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    let date_format = time::macros::format_description!("[year]-[month]-[day]");
    if let Ok(date) = time::Date::parse(text, &date_format) {
        return Ok(date.midnight().assume_utc());
    }
    time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        anyhow::anyhow!("{text:?} is neither a date (2026-03-01) nor an RFC 3339 time")
    })
}

/// `recur reconcile`: reconciles the ledger with Stripe over `[from, to)`,
/// records the run, prints it; 0 when the two agree, 1 when anything differs.
///
/// # Errors
/// Bad dates (or `from` not before `to`), no Stripe support compiled in, no
/// key, a missing ledger, Stripe or ledger errors (nothing is then recorded).
pub async fn reconcile(
    ledger: &LedgerArgs,
    from: &str,
    to: &str,
    json: bool,
) -> anyhow::Result<i32> {
    let (from, to) = (window_edge(from)?, window_edge(to)?);
    anyhow::ensure!(from < to, "--from must be before --to");
    let report = reconcile_inner(ledger, from, to).await?;
    if json {
        let dto = recur_api::dto::ReconciliationDto::from(&report);
        println!("{}", serde_json::to_string_pretty(&dto)?);
    } else {
        print_reconciliation(&report);
    }
    Ok(if report.agrees() { 0 } else { 1 })
}

#[cfg(feature = "stripe")]
async fn reconcile_inner(
    ledger: &LedgerArgs,
    from: time::OffsetDateTime,
    to: time::OffsetDateTime,
) -> anyhow::Result<recur_commands::reconciliation::ReconciliationReport> {
    use anyhow::Context as _;
    let config = recur_stripe::StripeConfig::from_env()?;
    let stripe = Arc::new(recur_stripe::StripeGateway::new(&config)?);
    let ledger = ledger
        .open(WhenMissing::Refuse, Arc::new(SystemClock))
        .await?;
    // Reconciling charges nothing: the gateway is only read.
    let billing = Billing::open(ledger, Catalog::default_catalog()?, stripe.clone()).await?;
    billing
        .reconcile(stripe.as_ref(), from, to)
        .await
        .context("reconcile with Stripe")
}

#[cfg(not(feature = "stripe"))]
async fn reconcile_inner(
    _ledger: &LedgerArgs,
    _from: time::OffsetDateTime,
    _to: time::OffsetDateTime,
) -> anyhow::Result<recur_commands::reconciliation::ReconciliationReport> {
    anyhow::bail!("recur reconcile: {BUILD_WITH_STRIPE}")
}

/// An amount of minor units as money when the currency is known, else as it is.
fn shown(minor: i64, currency: &str) -> String {
    recur_ledger::Currency::parse(&currency.to_ascii_uppercase())
        .map(|c| recur_ledger::Money::from_minor(minor, c).to_string())
        .unwrap_or_else(|_| format!("{minor} {currency} (minor units)"))
}

fn print_reconciliation(report: &recur_commands::reconciliation::ReconciliationReport) {
    let side = |side: &Option<recur_commands::reconciliation::Side>| match side {
        Some(side) => format!(
            "{} {}",
            shown(side.amount_minor, &side.currency),
            side.status
        ),
        None => "-".to_owned(),
    };
    println!(
        "reconciliation {} with {}, {} to {}",
        report.run_id,
        report.provider,
        recur_api::dto::rfc3339(report.from),
        recur_api::dto::rfc3339(report.to)
    );
    println!(
        "compared {} movement(s): {} agree, {} differ",
        report.compared,
        report.matched,
        report.mismatches.len()
    );
    for found in &report.mismatches {
        println!(
            "  {:<20} {:<11} {:<28} ledger: {:<24} {}: {}",
            found.mismatch.as_str(),
            found.kind.as_str(),
            found.object_id,
            side(&found.ledger),
            report.provider,
            side(&found.provider)
        );
    }
    for (currency, minor) in &report.processing_fees_minor {
        println!(
            "processing fees: {} (reported, not compared)",
            shown(*minor, currency)
        );
    }
}
