//! `recur customer …`: erasing a customer's personal data, and rewrapping the
//! data keys after a master key rotation.

use std::sync::Arc;

use anyhow::Context;
use recur_commands::context::{RequestContext, within};
use recur_commands::customer::ErasureReason;
use recur_commands::{Billing, Catalog, CustomerId, SimulatedGateway};
use recur_ledger::{Source, SystemClock};

use crate::config::{KeyFile, LedgerArgs, MasterKeyArgs, WhenMissing};

/// Keys rewrapped per page.
const REWRAP_PAGE_KEYS: u32 = 500;

/// The actor the CLI records: `cli:` and the operating system's user, if known.
fn cli_actor() -> String {
    match std::env::var("USER") {
        Ok(user) if !user.is_empty() => format!("cli:{user}"),
        _ => "cli".to_owned(),
    }
}

/// Erases the personal data of customer `id` and says what was done.
///
/// # Errors
/// A missing ledger, an unknown customer, ledger errors.
pub async fn forget(ledger: &LedgerArgs, id: &str, reason: ErasureReason) -> anyhow::Result<()> {
    let customer = CustomerId::parse(id).context("the customer id")?;
    let ledger = ledger
        .open(WhenMissing::Refuse, Arc::new(SystemClock))
        .await?;
    let billing = Billing::open(
        ledger,
        Catalog::default_catalog()?,
        Arc::new(SimulatedGateway::new()),
    )
    .await?;
    let context = RequestContext {
        actor: Some(cli_actor()),
        ..RequestContext::default()
    };
    let (erased, _) = within(context, billing.forget(customer, reason, Source::Cli)).await;
    let erased = erased?;
    println!(
        "customer {customer}: personal data erased at {}{}; {} stored API answer(s) deleted",
        recur_api::dto::rfc3339(erased.at),
        if erased.key_destroyed {
            ", data key destroyed"
        } else {
            " (already erased)"
        },
        erased.answers_deleted,
    );
    Ok(())
}

/// Wraps every live data key with the current master key; prints how many.
///
/// # Errors
/// A missing ledger, a master key that is not configured, ledger errors.
pub async fn rewrap_keys(ledger: &LedgerArgs, master_keys: &MasterKeyArgs) -> anyhow::Result<()> {
    let vault = master_keys.vault(&ledger.data_dir, KeyFile::MustExist)?;
    let ledger = ledger
        .open(WhenMissing::Refuse, Arc::new(SystemClock))
        .await?;
    let (mut seen, mut rewrapped) = (0_u64, 0_u64);
    let mut after = None;
    loop {
        let page = ledger.live_data_keys(after, REWRAP_PAGE_KEYS).await?;
        for key in &page {
            seen += 1;
            if let Some(wrapped) = vault
                .rewrap(key.owner, &key.wrapped, &key.master_key_id)
                .with_context(|| format!("the data key of customer {}", key.owner))?
            {
                // False when it was erased or rewrapped meanwhile: nothing to do.
                if ledger
                    .rewrap_data_key(key.owner, &key.master_key_id, &wrapped, vault.current_id())
                    .await?
                {
                    rewrapped += 1;
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == REWRAP_PAGE_KEYS as usize => after = Some(last.owner),
            _ => break,
        }
    }
    println!(
        "{rewrapped} of {seen} data key(s) rewrapped with master key {}",
        vault.current_id()
    );
    Ok(())
}
