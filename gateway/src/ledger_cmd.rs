//! `recur ledger verify` and `recur ledger seal`.

use std::sync::Arc;

use recur_ledger::{Clock, Ledger, LedgerConfig, LedgerError, SystemClock, VerifyReport};

use crate::config;

/// Exit code of `verify` when the ledger does not verify.
pub const EXIT_BROKEN: i32 = 2;

async fn open(database: Option<&str>) -> Result<Ledger, LedgerError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ledger::open(LedgerConfig::new(config::ledger_location(database)), clock).await
}

/// Verifies the ledger and prints the report; returns the process exit code.
///
/// # Errors
/// The ledger cannot be opened or read.
pub async fn verify(database: Option<&str>, as_json: bool) -> Result<i32, LedgerError> {
    let location = config::ledger_location(database);
    let ledger = open(database).await?;
    let report = ledger.verify().await?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print_report(&config::redact(&location), &report);
    }
    Ok(if report.is_intact() { 0 } else { EXIT_BROKEN })
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
/// The ledger cannot be opened or written.
pub async fn seal(database: Option<&str>) -> Result<(), LedgerError> {
    let ledger = open(database).await?;
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
