//! `recur projections status` and `recur projections rebuild`.

use std::io::Write;
use std::sync::Arc;
use std::time::Instant;

use recur_ledger::{Ledger, LedgerConfig, SystemClock};
use recur_projections::accounts::Accounts;
use recur_projections::customers::Customers;
use recur_projections::mrr::Mrr;
use recur_projections::revenue::Revenue;
use recur_projections::{ProjectionError, Projector};

use crate::config;

/// Every projection's name.
pub const PROJECTIONS: &[&str] = recur_projections::set::NAMES;

/// Why a projections command failed.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionsCmdError {
    /// The ledger could not be opened or read.
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

async fn open(database: Option<&str>) -> Result<Ledger, ProjectionsCmdError> {
    Ok(Ledger::open(
        LedgerConfig::new(config::ledger_location(database)),
        Arc::new(SystemClock),
    )
    .await?)
}

/// Prints each projection's version, position and lag.
///
/// # Errors
/// The ledger or the read models cannot be read.
pub async fn status(database: Option<&str>) -> Result<(), ProjectionsCmdError> {
    let ledger = open(database).await?;
    let head = ledger.last_position().await?;
    println!(
        "{:<12} {:>8} {:>12} {:>12}",
        "projection", "version", "position", "behind"
    );
    let projections = recur_projections::Projections::open(&ledger).await?;
    for (name, version, position) in projections.status() {
        println!(
            "{name:<12} {version:>8} {:>12} {:>12}",
            position.0,
            head.0.saturating_sub(position.0)
        );
    }
    Ok(())
}

/// Rebuilds one projection, or all, with a progress line (events/s, ETA).
///
/// # Errors
/// An unknown name; ledger and projection errors.
pub async fn rebuild(
    database: Option<&str>,
    name: Option<&str>,
    all: bool,
) -> Result<(), ProjectionsCmdError> {
    let names: Vec<&str> = match (name, all) {
        (_, true) | (None, false) => PROJECTIONS.to_vec(),
        (Some(name), false) if PROJECTIONS.contains(&name) => vec![name],
        (Some(name), false) => return Err(ProjectionsCmdError::Unknown(name.to_owned())),
    };
    let ledger = open(database).await?;
    let head = ledger.last_position().await?.0.max(1);
    for name in names {
        let started = Instant::now();
        let progress = |position: recur_ledger::Position, applied: u64| {
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
                "\r{name}: {percent:>3}%  {applied} events  {rate} events/s  ETA {eta_s} s   "
            );
            let _ = err.flush();
        };
        let applied = match name {
            "accounts" => {
                Projector::open(ledger.clone(), Accounts::new())
                    .await?
                    .rebuild_with(progress)
                    .await?
            }
            "customers" => {
                Projector::open(ledger.clone(), Customers::new())
                    .await?
                    .rebuild_with(progress)
                    .await?
            }
            "revenue" => {
                Projector::open(ledger.clone(), Revenue::new())
                    .await?
                    .rebuild_with(progress)
                    .await?
            }
            _ => {
                Projector::open(ledger.clone(), Mrr::new())
                    .await?
                    .rebuild_with(progress)
                    .await?
            }
        };
        let elapsed_ms = u64::try_from(started.elapsed().as_millis())
            .unwrap_or(1)
            .max(1);
        eprintln!();
        println!(
            "{name}: rebuilt from {applied} events in {elapsed_ms} ms ({} events/s)",
            applied * 1000 / elapsed_ms
        );
    }
    Ok(())
}

fn nats_url(explicit: Option<String>) -> Result<String, ProjectionsCmdError> {
    explicit
        .or_else(|| std::env::var("NATS_URL").ok())
        .filter(|u| !u.trim().is_empty())
        .ok_or(ProjectionsCmdError::NoNats)
}

/// Publishes the ledger to JetStream until Ctrl-C.
///
/// # Errors
/// No NATS URL; NATS or the ledger unreachable at start.
pub async fn relay(
    database: Option<&str>,
    nats: Option<String>,
) -> Result<(), ProjectionsCmdError> {
    let ledger = open(database).await?;
    let relay = recur_projections::Relay::connect(
        ledger,
        recur_projections::RelayConfig::from_env(nats_url(nats)?),
    )
    .await?;
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
pub async fn project(
    database: Option<&str>,
    nats: Option<String>,
) -> Result<(), ProjectionsCmdError> {
    use recur_projections::nats_feed::NatsFeed;
    let ledger = open(database).await?;
    let config = recur_projections::RelayConfig::from_env(nats_url(nats)?);
    let mut mrr = Projector::open(ledger.clone(), Mrr::new()).await?;
    let mut accounts = Projector::open(ledger.clone(), Accounts::new()).await?;
    let mut mrr_feed = NatsFeed::connect(&config, "recur-mrr").await?;
    let mut accounts_feed = NatsFeed::connect(&config, "recur-accounts").await?;
    let mut customers = Projector::open(ledger.clone(), Customers::new()).await?;
    let mut customers_feed = NatsFeed::connect(&config, "recur-customers").await?;
    let mut revenue = Projector::open(ledger.clone(), Revenue::new()).await?;
    let mut revenue_feed = NatsFeed::connect(&config, "recur-revenue").await?;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return Ok(()),
            result = async {
                mrr_feed.pump(&mut mrr).await?;
                accounts_feed.pump(&mut accounts).await?;
                customers_feed.pump(&mut customers).await?;
                revenue_feed.pump(&mut revenue).await
            } => {
                if let Err(error) = result {
                    tracing::warn!(%error, "projection worker step failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
            }
        }
    }
}
