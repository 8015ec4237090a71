//! `recur ledger verify` and `recur ledger seal`.

use std::sync::Arc;

use recur_ledger::{Clock, Ledger, LedgerError, SystemClock, VerifyReport};

use crate::config::{LedgerArgs, OpenError, WhenMissing};

/// Exit code of `verify` when the ledger does not verify.
pub const EXIT_BROKEN: i32 = 2;
/// Exit code of `verify` when the ledger holds no events: nothing was checked,
/// which a script must not take for "intact" (an empty ledger is most often the
/// wrong one: a mistyped database name, a fresh volume).
pub const EXIT_EMPTY: i32 = 3;

/// Why a ledger command failed.
#[derive(Debug, thiserror::Error)]
pub enum LedgerCmdError {
    /// The ledger could not be opened (missing, unreachable).
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The ledger could not be read or written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Opens an existing ledger: checking or sealing a ledger never makes one.
async fn open(ledger: &LedgerArgs) -> Result<Ledger, OpenError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    ledger.open(WhenMissing::Refuse, clock).await
}

/// What `verify` found, in one word.
fn result(report: &VerifyReport) -> &'static str {
    if !report.is_intact() {
        "broken"
    } else if report.events_checked == 0 {
        "empty"
    } else {
        "intact"
    }
}

/// Verifies the ledger and prints the report; returns the process exit code:
/// 0 intact, [`EXIT_BROKEN`], or [`EXIT_EMPTY`] when there was nothing to check.
///
/// # Errors
/// The ledger is missing, or cannot be opened or read.
pub async fn verify(ledger: &LedgerArgs, as_json: bool) -> Result<i32, LedgerCmdError> {
    let location = ledger.location();
    let opened = open(ledger).await?;
    let report = opened.verify().await?;
    let result = result(&report);
    if as_json {
        // The report's fields, and `result` so that "empty" is not read as intact.
        let mut json = serde_json::to_value(&report).unwrap_or_default();
        if let Some(fields) = json.as_object_mut() {
            fields.insert("result".into(), result.into());
        }
        println!(
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        );
    } else {
        print_report(&location.redacted(), &report);
    }
    Ok(match result {
        "broken" => EXIT_BROKEN,
        "empty" => EXIT_EMPTY,
        _ => 0,
    })
}

fn print_report(location: &str, report: &VerifyReport) {
    println!("ledger:          {location}");
    println!("events checked:  {}", report.events_checked);
    println!("streams:         {}", report.streams);
    println!("seals checked:   {}", report.seals_checked);
    println!("unsealed events: {}", report.unsealed_events);
    if let Some(digest) = &report.head_digest {
        println!("head seal:       {digest}");
    }
    match report.first_break() {
        None if report.events_checked == 0 => {
            println!("result:          EMPTY: the ledger holds no events, nothing was checked");
        }
        None => println!("result:          intact"),
        Some(first) => {
            println!(
                "result:          BROKEN ({} problem(s))",
                report.problem_count
            );
            println!(
                "first break at position {}: {}",
                first.position, first.reason
            );
            for problem in report.problems.iter().skip(1).take(9) {
                println!(
                    "  also at position {}: {}",
                    problem.position, problem.reason
                );
            }
        }
    }
}

/// Seals every released event and prints the new seals.
///
/// # Errors
/// The ledger is missing, or cannot be opened or written.
pub async fn seal(ledger: &LedgerArgs) -> Result<(), LedgerCmdError> {
    let ledger = open(ledger).await?;
    let seals = ledger.seal().await?;
    if seals.is_empty() {
        println!("nothing to seal");
    }
    for seal in seals {
        println!(
            "seal {}: positions {}..={} ({} events) {}",
            seal.seal_no,
            seal.from_position + 1,
            seal.to_position,
            seal.event_count,
            seal.digest
        );
    }
    Ok(())
}
