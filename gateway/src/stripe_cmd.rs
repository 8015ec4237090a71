//! `recur stripe translate`: the Stripe translator run once over the kept
//! webhooks, saying what each Stripe event did.

use std::sync::Arc;

use recur_commands::provider::Effect;
use recur_commands::translator::Translator;
use recur_commands::{Billing, Catalog, SimulatedGateway};
use recur_ledger::SystemClock;

use crate::config::{KeyFile, LedgerArgs, MasterKeyArgs, WhenMissing};

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
