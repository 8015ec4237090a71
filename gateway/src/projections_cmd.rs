//! `recur projections status` and `recur projections rebuild`.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use recur_ledger::{Ledger, SystemClock};
use recur_projections::accounts::Accounts;
use recur_projections::customers::Customers;
use recur_projections::mrr::Mrr;
use recur_projections::revenue::Revenue;
use recur_projections::{ProjectionError, Projector};

use crate::config::{LedgerArgs, NatsArgs, WhenMissing};

/// Every projection's name.
pub const PROJECTIONS: &[&str] = recur_projections::set::NAMES;

/// Why a projections command failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionsCmdError {
    /// The ledger could not be opened (missing, unreachable).
    #[error(transparent)]
    Open(#[from] crate::config::OpenError),
    /// The ledger could not be read.
    #[error(transparent)]
    Ledger(#[from] recur_ledger::LedgerError),
    /// The projection failed.
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    /// NATS is needed and not configured.
    #[error(
        "set NATS_URL or --nats-url (e.g. nats://127.0.0.1:4222, a server started with `nats-server -js`)"
    )]
    NoNats,
    /// NATS failed.
    #[error(transparent)]
    Relay(#[from] recur_projections::RelayError),
    /// The NATS feed failed.
    #[error(transparent)]
    Feed(#[from] recur_projections::nats_feed::FeedError),
    /// Not a projection we have.
    #[error("unknown projection {0:?}; known: {known}", known = PROJECTIONS.join(", "))]
    Unknown(String),
}

/// Opens an existing ledger: the read models follow a ledger, they never start one.
async fn open(ledger: &LedgerArgs) -> Result<Ledger, ProjectionsCmdError> {
    Ok(ledger
        .open(WhenMissing::Refuse, Arc::new(SystemClock))
        .await?)
}

/// Prints each projection's version, position and lag.
///
/// # Errors
/// The ledger or the read models cannot be read.
pub async fn status(ledger: &LedgerArgs) -> Result<(), ProjectionsCmdError> {
    let ledger = open(ledger).await?;
    let head = ledger.last_position().await?;
    let db = recur_projections::db::Db::of(&ledger).ok_or(ProjectionError::NoDatabase)?;
    println!(
        "{:<12} {:>8} {:>12} {:>12}  state",
        "projection", "version", "position", "behind"
    );
    for checkpoint in recur_projections::set::checkpoints(&db).await? {
        let state = match checkpoint.stored_version {
            None => "not built yet",
            Some(v) if v != checkpoint.code_version => "built by another version: rebuilt on start",
            Some(_) if checkpoint.position >= head => "current",
            Some(_) => "catching up",
        };
        println!(
            "{:<12} {:>8} {:>12} {:>12}  {state}",
            checkpoint.name,
            checkpoint.code_version,
            checkpoint.position.0,
            head.0.saturating_sub(checkpoint.position.0)
        );
    }
    Ok(())
}

/// A progress line on stderr: percent, events, events/s and ETA.
fn progress_line(label: &str, head: u64) -> impl FnMut(recur_ledger::Position, u64) {
    let started = Instant::now();
    let label = label.to_owned();
    move |position, applied| {
        let elapsed_ms = u64::try_from(started.elapsed().as_millis())
            .unwrap_or(1)
            .max(1);
        let rate = applied * 1000 / elapsed_ms;
        let left = head.saturating_sub(position.0);
        let eta_s = left.checked_div(rate).unwrap_or(0);
        let percent = position.0 * 100 / head;
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r{label}: {percent:>3}%  {applied} events  {rate} events/s  ETA {eta_s} s   "
        );
        let _ = err.flush();
    }
}

/// Opens `projection` and rebuilds it beside its tables; returns the events applied.
async fn rebuild_one<P: recur_projections::Projection>(
    ledger: &Ledger,
    projection: P,
    progress: impl FnMut(recur_ledger::Position, u64),
) -> Result<u64, ProjectionsCmdError> {
    Ok(Projector::open(ledger.clone(), projection)
        .await?
        .rebuild_with(progress)
        .await?)
}

/// Rebuilds one projection, or all (reading the ledger once), beside the tables
/// in use, with a progress line (events/s, ETA).
///
/// # Errors
/// An unknown name; ledger and projection errors.
pub async fn rebuild(
    ledger: &LedgerArgs,
    name: Option<&str>,
    all: bool,
) -> Result<(), ProjectionsCmdError> {
    let name = match (name, all) {
        (_, true) | (None, false) => None,
        (Some(name), false) if PROJECTIONS.contains(&name) => Some(name),
        (Some(name), false) => return Err(ProjectionsCmdError::Unknown(name.to_owned())),
    };
    let ledger = open(ledger).await?;
    let head = ledger.last_position().await?.0.max(1);
    let started = Instant::now();
    let label = name.unwrap_or("all projections");
    let progress = progress_line(label, head);
    let applied = match name {
        None => {
            recur_projections::Projections::open(&ledger)
                .await?
                .rebuild_with(progress)
                .await?
        }
        Some("accounts") => rebuild_one(&ledger, Accounts::new(), progress).await?,
        Some("customers") => rebuild_one(&ledger, Customers::new(), progress).await?,
        Some("revenue") => rebuild_one(&ledger, Revenue::new(), progress).await?,
        Some("dunning") => {
            rebuild_one(
                &ledger,
                recur_projections::dunning::Dunning::new(),
                progress,
            )
            .await?
        }
        Some(_) => rebuild_one(&ledger, Mrr::new(), progress).await?,
    };
    let elapsed_ms = u64::try_from(started.elapsed().as_millis())
        .unwrap_or(1)
        .max(1);
    eprintln!();
    println!(
        "{label}: rebuilt from {applied} events in {elapsed_ms} ms ({} events/s), switched to the new tables",
        applied * 1000 / elapsed_ms
    );
    Ok(())
}

fn relay_config(nats: &NatsArgs) -> Result<recur_projections::RelayConfig, ProjectionsCmdError> {
    nats.relay_config().ok_or(ProjectionsCmdError::NoNats)
}

/// Publishes the ledger to JetStream until Ctrl-C.
///
/// # Errors
/// No NATS URL; NATS or the ledger unreachable at start.
pub async fn relay(ledger: &LedgerArgs, nats: &NatsArgs) -> Result<(), ProjectionsCmdError> {
    let config = relay_config(nats)?;
    let ledger = open(ledger).await?;
    let relay = recur_projections::Relay::connect(ledger, config).await?;
    eprintln!(
        "relay: publishing from position {}",
        relay.published_position().await?.0
    );
    relay
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

/// Runs every projection fed by JetStream until Ctrl-C: one durable consumer per
/// projection; checkpoints advance by compare-and-set, so workers may share them.
///
/// # Errors
/// No NATS URL; NATS, the ledger or the read models unreachable at start.
pub async fn project(ledger: &LedgerArgs, nats: &NatsArgs) -> Result<(), ProjectionsCmdError> {
    let config = relay_config(nats)?;
    let ledger = open(ledger).await?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let tasks =
        recur_projections::nats_feed::follow_all(&ledger, &config, "recur", &stopped).await?;
    let _ = tokio::signal::ctrl_c().await;
    let _ = stop.send(true);
    for task in tasks {
        let _ = task.await;
    }
    Ok(())
}
