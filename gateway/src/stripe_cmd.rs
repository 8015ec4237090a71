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
