//! `recur ledger verify`, `seal`, `backup`, `history`, `proof` and `verify-proof`.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};

use recur_api::history::{self, HistoryError, HistoryList};
use recur_commands::{CouponCode, CustomerId, InvoiceId, SubscriptionId};
use recur_ledger::{
    Clock, Ledger, LedgerError, Position, Proof, ProofError, SealReport, StreamId, SystemClock,
    VerifyReport,
};

use crate::config::{LedgerArgs, OpenError, WhenMissing};
use crate::seal_export::{Exporter, SealExport, SealExportError};

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
    /// The history could not be read.
    #[error(transparent)]
    History(#[from] HistoryError),
    /// RESOURCE names nothing in this ledger.
    #[error(
        "no customer, subscription or invoice {0:?} in this ledger (give an id, or a stream name such as invoice-<id>)"
    )]
    UnknownResource(String),
    /// The resource named is no stream and no API id, or an ambiguous one.
    #[error("{0}")]
    Resource(String),
    /// A file could not be read or written.
    #[error("{path}")]
    File {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A proof (or a seal export file) could not be read.
    #[error("{path}")]
    Proof {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: ProofError,
    },
    /// Seals were made but could not be exported.
    #[error("sealed, but the export failed (the next `recur ledger seal --export` sends it again)")]
    Export(#[from] SealExportError),
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

/// Seals every released event and prints the new seals; with `export`, then
/// exports them (a file target: every seal it does not hold yet; an HTTP
/// target: the seal that was the newest before this run, again, and every new
/// one, so one failed run is repaired by the next).
///
/// # Errors
/// The ledger is missing, or cannot be opened or written; a bad export target
/// (checked before sealing); the export failed (after sealing).
pub async fn seal(ledger: &LedgerArgs, export: Option<&SealExport>) -> Result<(), LedgerCmdError> {
    let target = export.map(SealExport::target).transpose()?;
    let ledger = open(ledger).await?;
    let mut exporter = match target {
        Some(target) => {
            let head = crate::seal_export::newest_seal(&ledger).await?;
            Some(Exporter::new(target, head.saturating_sub(1))?)
        }
        None => None,
    };
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
    if let Some(exporter) = &mut exporter {
        let count = exporter.export_pending(&ledger).await?;
        println!("exported {count} seal(s)");
    }
    Ok(())
}

/// The stream a resource names: a stream id (`invoice-<uuid>`), an API path
/// (`/v1/invoices/<id>`, `invoices/<id>`, likewise customers, subscriptions and
/// coupons), or a bare API id, looked up among customer, subscription and
/// invoice streams.
///
/// # Errors
/// [`LedgerCmdError::Resource`] for an id of the wrong form or an ambiguous bare id.
pub async fn resolve_resource(ledger: &Ledger, resource: &str) -> Result<StreamId, LedgerCmdError> {
    let resource = resource.trim();
    let bad = |why: String| LedgerCmdError::Resource(why);
    let path = resource.strip_prefix("/v1/").unwrap_or(resource);
    if let Some((kind, id)) = path.split_once('/') {
        let id = id.trim_end_matches('/');
        let stream = match kind {
            "invoices" => InvoiceId::parse(id).map(|id| id.stream()),
            "customers" => CustomerId::parse(id).map(|id| id.stream()),
            "subscriptions" => SubscriptionId::parse(id).map(|id| id.stream()),
            "coupons" => CouponCode::parse(id).map(|code| code.stream()),
            // Not an API path: a stream name that holds a '/'.
            _ => {
                return StreamId::parse(resource)
                    .map_err(|error| bad(format!("{resource:?}: {error}")));
            }
        };
        return stream
            .map_err(|error| bad(format!("{resource:?}: {error}")))?
            .map_err(LedgerCmdError::from);
    }
    if let Ok(id) = uuid::Uuid::parse_str(resource) {
        // API ids are bare UUIDs: the stream is the one kind that has events under it.
        let candidates = [
            CustomerId(id).stream()?,
            SubscriptionId(id).stream()?,
            InvoiceId(id).stream()?,
        ];
        let mut found = Vec::new();
        for stream in candidates {
            if ledger.stream_version(&stream).await? > 0 {
                found.push(stream);
            }
        }
        return match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(LedgerError::StreamNotFound {
                stream: format!("customer-, subscription- or invoice-{id}"),
            }
            .into()),
            _ => Err(bad(format!(
                "{id} is the id of several resources; name one, e.g. invoices/{id}"
            ))),
        };
    }
    StreamId::parse(resource).map_err(|error| bad(format!("{resource:?}: {error}")))
}

/// Writes the proof of one resource to `out` (or stdout) and says what it holds.
///
/// # Errors
/// The ledger is missing or unreadable; the resource is unknown, has unsealed
/// events or does not match its seals; `out` cannot be written.
pub async fn proof(
    ledger: &LedgerArgs,
    resource: &str,
    out: Option<&Path>,
) -> Result<(), LedgerCmdError> {
    let ledger = open(ledger).await?;
    let stream = resolve_resource(&ledger, resource).await?;
    let proof = ledger.proof(&stream).await?;
    let summary = proof.verify().map_err(|source| LedgerCmdError::Proof {
        path: stream.to_string(),
        source,
    })?;
    let text = proof.to_json();
    match out {
        Some(path) => {
            std::fs::write(path, format!("{text}\n")).map_err(|source| LedgerCmdError::File {
                path: path.display().to_string(),
                source,
            })?;
            println!("wrote {}: {summary}", path.display());
        }
        None => println!("{text}"),
    }
    Ok(())
}

/// Checks a proof file without any database; returns the exit code: 0 intact,
/// [`EXIT_BROKEN`] when a check fails (printed, with the place). With
/// `exported`, a file of exported seal lines, the proof's seals must also match
/// their exported copies.
///
/// # Errors
/// A file cannot be read, or is not a proof (or not seal lines) — exit 1.
pub fn verify_proof(
    file: &Path,
    exported: Option<&Path>,
    as_json: bool,
) -> Result<i32, LedgerCmdError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| LedgerCmdError::File {
            path: path.display().to_string(),
            source,
        })
    };
    let text = read(file)?;
    let proof = Proof::from_json(&text).map_err(|source| LedgerCmdError::Proof {
        path: file.display().to_string(),
        source,
    })?;
    let copies = match exported {
        Some(path) => Some(exported_seals(path, &read(path)?)?),
        None => None,
    };
    let checked = proof.verify().and_then(|verified| {
        let matched = match &copies {
            Some(copies) => Some(proof.check_exported(copies)?),
            None => None,
        };
        Ok((verified, matched))
    });
    match checked {
        Ok((verified, matched)) => {
            if as_json {
                let json = serde_json::json!({
                    "result": "intact",
                    "resource": verified.resource,
                    "events": verified.events,
                    "positions": [verified.positions.0, verified.positions.1],
                    "seals": verified.seals.iter().map(|(no, digest)| serde_json::json!({"seal_no": no, "digest": digest})).collect::<Vec<_>>(),
                    "exported_copies_matched": matched,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
            } else {
                match matched {
                    Some(count) => {
                        println!("{verified}; {count} seal(s) match their exported copies")
                    }
                    None => println!("{verified}"),
                }
            }
            Ok(0)
        }
        Err(ProofError::Failed {
            check,
            place,
            detail,
        }) => {
            if as_json {
                let json = serde_json::json!({
                    "result": "broken",
                    "resource": proof.resource,
                    "check": check.name(),
                    "at": place.to_string(),
                    "detail": detail,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json).unwrap_or_default()
                );
            } else {
                println!(
                    "BROKEN: {}: {check} check failed at {place}: {detail}",
                    proof.resource
                );
            }
            Ok(EXIT_BROKEN)
        }
        Err(source) => Err(LedgerCmdError::Proof {
            path: file.display().to_string(),
            source,
        }),
    }
}

/// The seals of an export file: one JSON line each; blank lines are skipped.
fn exported_seals(path: &Path, text: &str) -> Result<Vec<SealReport>, LedgerCmdError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|error| LedgerCmdError::Proof {
                path: path.display().to_string(),
                source: ProofError::Malformed(format!(
                    "line {} is not an exported seal: {error}",
                    index + 1
                )),
            })
        })
        .collect()
}

/// How long a backup waits for SQLite's locks (a checkpoint, a writer's commit).
const BACKUP_BUSY_TIMEOUT_MS: u64 = 30_000;

/// What a backup holds, read back from the new file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupSummary {
    /// Events in the backup.
    pub events: u64,
    /// The highest position in the backup (0 if none).
    pub last_position: u64,
}

/// Copies an embedded (SQLite) ledger — events, seals, API requests, read models —
/// to a new file with `VACUUM INTO`, which reads one consistent snapshot while
/// writers go on (a plain copy of a live WAL database can miss or tear commits).
/// The new file is flushed to disk before this returns. Prints what it holds.
///
/// # Errors
/// The ledger is on Postgres (use `pg_dump`), has no file, `to` exists, or SQLite fails.
pub async fn backup(ledger: &LedgerArgs, to: &Path) -> Result<BackupSummary, LedgerError> {
    let location = ledger.location();
    let location = location.expose().trim();
    if location.starts_with("postgres://") || location.starts_with("postgresql://") {
        return Err(LedgerError::InvalidLocation(
            "`recur ledger backup` copies an embedded SQLite ledger; back up a Postgres \
             ledger with `pg_dump --format=custom` (docs/operations.md)"
                .into(),
        ));
    }
    let path = location
        .strip_prefix("sqlite://")
        .or_else(|| location.strip_prefix("sqlite:"))
        .unwrap_or(location);
    if !Path::new(path).is_file() {
        return Err(LedgerError::InvalidLocation(format!(
            "no SQLite ledger at {path}"
        )));
    }
    if to.exists() {
        return Err(LedgerError::InvalidLocation(format!(
            "{} exists; a backup is written to a new file",
            to.display()
        )));
    }
    let target = to.to_str().ok_or_else(|| {
        LedgerError::InvalidLocation(format!("{} is not valid UTF-8", to.display()))
    })?;
    let busy = Duration::from_millis(BACKUP_BUSY_TIMEOUT_MS);
    // Not create_if_missing: a mistyped path must not back up a new, empty ledger.
    let source_options = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
        .map_err(|error| LedgerError::InvalidLocation(error.to_string()))?
        .busy_timeout(busy);
    let mut source = SqliteConnection::connect_with(&source_options)
        .await
        .map_err(|error| LedgerError::unavailable(path.to_string(), error))?;
    // Refuse what is not a ledger before writing anything.
    sqlx::query("SELECT 1 FROM events LIMIT 1")
        .fetch_optional(&mut source)
        .await?;
    if let Err(error) = sqlx::query("VACUUM INTO ?")
        .bind(target)
        .execute(&mut source)
        .await
    {
        // The file did not exist before: what a failed copy left of it is no backup.
        let _ = std::fs::remove_file(to);
        return Err(error.into());
    }
    source.close().await?;
    std::fs::File::open(to)
        .and_then(|file| file.sync_all())
        .map_err(|error| LedgerError::database(format!("flush {target}"), error))?;
    let backup_options = SqliteConnectOptions::from_str(&format!("sqlite://{target}"))
        .map_err(|error| LedgerError::InvalidLocation(error.to_string()))?
        .read_only(true)
        .busy_timeout(busy);
    let mut backup = SqliteConnection::connect_with(&backup_options).await?;
    let (events, last_position): (i64, i64) =
        sqlx::query_as("SELECT count(*), coalesce(max(position), 0) FROM events")
            .fetch_one(&mut backup)
            .await?;
    backup.close().await?;
    let summary = BackupSummary {
        events: u64::try_from(events)
            .map_err(|_| LedgerError::Integrity(format!("negative event count {events}")))?,
        last_position: u64::try_from(last_position).map_err(|_| {
            LedgerError::Integrity(format!("negative last position {last_position}"))
        })?,
    };
    println!(
        "backed up {} events (last position {}) to {target}",
        summary.events, summary.last_position
    );
    println!("check it with: recur ledger verify --database sqlite:{target}");
    Ok(summary)
}

/// What `recur ledger history` reads: a customer's streams, or one stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryOf {
    /// Every stream of the customer.
    Customer(CustomerId),
    /// One stream.
    Stream(StreamId),
}

/// What RESOURCE names in `ledger` ([`resolve_resource`]'s forms): a
/// customer's stream stands for every stream of the customer; any other
/// stream for itself. It must hold events.
///
/// # Errors
/// [`LedgerCmdError::UnknownResource`] when it names nothing; ledger errors.
pub async fn resolve(ledger: &Ledger, resource: &str) -> Result<HistoryOf, LedgerCmdError> {
    let unknown = || LedgerCmdError::UnknownResource(resource.to_owned());
    let stream = match resolve_resource(ledger, resource).await {
        Ok(stream) => stream,
        Err(
            LedgerCmdError::Resource(_)
            | LedgerCmdError::Ledger(LedgerError::StreamNotFound { .. }),
        ) => {
            return Err(unknown());
        }
        Err(error) => return Err(error),
    };
    if ledger.stream_version(&stream).await? == 0 {
        return Err(unknown());
    }
    if stream.category() == CustomerId::CATEGORY
        && let Some(id) = stream.as_str().strip_prefix("customer-")
        && let Ok(customer) = CustomerId::parse(id)
    {
        return Ok(HistoryOf::Customer(customer));
    }
    Ok(HistoryOf::Stream(stream))
}

/// Prints RESOURCE's history: one line per fact, or with `as_json` the
/// entries as the API shows them, as one list.
///
/// # Errors
/// The ledger is missing or cannot be read; RESOURCE names nothing.
pub async fn history(
    ledger: &LedgerArgs,
    resource: &str,
    as_json: bool,
) -> Result<(), LedgerCmdError> {
    let ledger = open(ledger).await?;
    let streams = match resolve(&ledger, resource).await? {
        HistoryOf::Customer(customer) => {
            history::customer_streams_in_ledger(&ledger, customer).await?
        }
        HistoryOf::Stream(stream) => vec![stream],
    };
    let (entries, _) = history::page(&ledger, &streams, Position(0), usize::MAX).await?;
    if as_json {
        let list = HistoryList::new(entries, false);
        println!(
            "{}",
            serde_json::to_string_pretty(&list).unwrap_or_default()
        );
    } else {
        for entry in &entries {
            println!("{}", entry.line());
        }
    }
    Ok(())
}
