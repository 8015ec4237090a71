//! `recur bench projections`: rebuild every projection from a ledger of a million
//! events made by the demo's simulator, against the raw W3 replay measured in the
//! same run; then the lag from commit to read model at a steady rate through NATS.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recur_commands::billing::NewCustomer;
use recur_commands::context::{RequestContext, within};
use recur_commands::{Billing, Catalog, SimulatedGateway};
use recur_ledger::{Ledger, LedgerConfig, Position, SystemClock};
use recur_projections::db::{Db, Stmt};

/// The most customers the projections benchmark asks `recur demo` for.
pub const CUSTOMERS_MAX: u64 = 1_000_000;
use recur_projections::{Projections, Relay, RelayConfig};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use super::ledger::{BenchBackend, BenchError, database_url, events_per_s, median, ratio};
use super::peak_rss_kb;

/// Events per customer the demo's simulator writes over 12 months, a little under
/// the 31.95 measured (319,529 events for 10,000 customers), so the ledger is at
/// least as big as asked.
const DEMO_EVENTS_PER_CUSTOMER_X100: u64 = 3_100;
/// Rounds of the raw W3 replay.
const RAW_ROUNDS: u32 = 3;
/// Writes before the lag is measured (connections and caches warm up).
const LAG_WARMUP_WRITES: u64 = 1_000;
/// The JetStream stream of the lag run, deleted before and after.
const LAG_STREAM: &str = "RECUR_BENCH_LAG";

/// How to run the projections benchmark.
#[derive(Clone, Debug)]
pub struct ProjectionsBenchOptions {
    /// Postgres or SQLite.
    pub backend: BenchBackend,
    /// Events in the ledger rebuilt.
    pub events: u64,
    /// Postgres server URL with rights to create databases.
    pub database_url: Option<String>,
    /// Folder for the SQLite files.
    pub scratch_dir: PathBuf,
    /// NATS server for the lag run; none skips it.
    pub nats_url: Option<String>,
    /// Writes per second during the lag run.
    pub lag_rate: u64,
    /// Seconds the lag is measured.
    pub lag_seconds: u64,
}

/// Runs the benchmark; prints one JSON line per figure.
///
/// # Errors
/// Bad options; database, NATS and projection failures.
pub async fn run(options: &ProjectionsBenchOptions) -> Result<(), BenchError> {
    if options.events == 0 || options.lag_rate == 0 {
        return Err(BenchError::Usage(
            "--events and --lag-rate must be at least 1".into(),
        ));
    }
    let backend = options.backend.name();
    let location = ledger_with(options).await?;

    // The rebuild first, so the peak RSS is the rebuild's own.
    let ledger = open(&location).await?;
    let mut projections = Projections::open(&ledger).await.map_err(projection_error)?;
    let head = ledger.last_position().await?.0.max(1);
    let started = Instant::now();
    let mut shown = Instant::now();
    let applied = projections
        .rebuild_with(|position, applied| {
            if shown.elapsed() >= Duration::from_secs(2) {
                shown = Instant::now();
                eprintln!(
                    "bench projections: rebuilt {applied} events ({}%)",
                    position.0 * 100 / head
                );
            }
        })
        .await
        .map_err(projection_error)?;
    let elapsed = started.elapsed();
    let rebuild_rate = events_per_s(applied, elapsed);
    let rebuild_rss = peak_rss_kb();
    drop(projections);
    drop(ledger);

    let mut raw = super::ledger::raw_replay_rates(
        options.backend,
        options.database_url.clone(),
        options.scratch_dir.clone(),
        RAW_ROUNDS,
    )
    .await?;
    let raw_rate = median(&mut raw);
    println!(
        "{}",
        json!({
            "bench": "projections", "backend": backend, "phase": "rebuild",
            "projections": recur_projections::set::NAMES, "events": applied,
            "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            "events_per_s": rebuild_rate, "raw_w3_events_per_s": raw_rate,
            "raw_w3_rounds": raw, "ratio_to_raw_w3": ratio(rebuild_rate, raw_rate),
            "target_ratio": 0.5, "peak_rss_kb": rebuild_rss,
        })
    );

    match &options.nats_url {
        Some(url) => lag(options, url).await,
        None => {
            eprintln!(
                "bench projections: NATS_URL is not set, so the lag through NATS was not measured"
            );
            Ok(())
        }
    }
}

fn projection_error(error: recur_projections::ProjectionError) -> BenchError {
    BenchError::Usage(format!("projection: {error}"))
}

/// Opens a benchmark's ledger, making it if missing: the benchmark's own scratch files.
async fn open(location: &str) -> Result<Ledger, BenchError> {
    Ok(Ledger::open(
        LedgerConfig::new(location.to_owned()).create_if_missing(true),
        Arc::new(SystemClock),
    )
    .await?)
}

/// A ledger of at least `options.events` events from the demo's simulator: kept
/// from an earlier run when it is big enough, else made by `recur demo` in a child
/// process (so its memory is not counted here).
async fn ledger_with(options: &ProjectionsBenchOptions) -> Result<String, BenchError> {
    let name = format!("recur_bench_projections_{}", options.events);
    let (location, server) = match options.backend {
        BenchBackend::Postgres => {
            let server = options.database_url.clone().ok_or_else(|| {
                BenchError::Usage(
                    "set DATABASE_URL or --database-url for --backend postgres".into(),
                )
            })?;
            (database_url(&server, &name), Some(server))
        }
        BenchBackend::Sqlite => {
            std::fs::create_dir_all(&options.scratch_dir).map_err(|e| {
                BenchError::Usage(format!("{}: {e}", options.scratch_dir.display()))
            })?;
            let path = options.scratch_dir.join(format!("{name}.sqlite"));
            (format!("sqlite:{}", path.display()), None)
        }
    };
    if let Some(server) = &server {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .connect(server)
            .await?;
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
                .bind(&name)
                .fetch_one(&admin)
                .await?;
        if !exists {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await?;
        }
    }
    let have = {
        let ledger = open(&location).await?;
        ledger.last_position().await?.0
    };
    if have >= options.events {
        eprintln!("bench projections: reusing the ledger at {name} ({have} events)");
        return Ok(location);
    }
    // Too small (an interrupted run): start it again from nothing.
    match &server {
        Some(server) => {
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(server)
                .await?;
            for sql in [
                format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
                format!("CREATE DATABASE {name}"),
            ] {
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                    .execute(&admin)
                    .await?;
            }
        }
        None => {
            let path = location.trim_start_matches("sqlite:");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{path}{suffix}"));
            }
        }
    }
    let customers = (options.events * 100)
        .div_ceil(DEMO_EVENTS_PER_CUSTOMER_X100)
        .clamp(1, CUSTOMERS_MAX);
    eprintln!(
        "bench projections: writing about {} events with the demo's simulator ({customers} customers, 12 months); this is kept for the next run",
        options.events
    );
    let exe = std::env::current_exe().map_err(|e| BenchError::Usage(e.to_string()))?;
    let status = Command::new(exe)
        .args([
            "demo",
            "--quiet",
            "--customers",
            &customers.to_string(),
            "--database",
            &location,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| BenchError::Usage(format!("cannot run recur demo: {e}")))?;
    if !status.success() {
        return Err(BenchError::Usage(format!("recur demo failed: {status}")));
    }
    Ok(location)
}

/// Writes one customer per `1 / lag_rate` s to a fresh ledger while the relay
/// publishes to JetStream and a worker feeds every projection from it; the lag of
/// a write is from its commit to the moment every projection's checkpoint (in
/// the read models' database) has passed it.
async fn lag(options: &ProjectionsBenchOptions, nats_url: &str) -> Result<(), BenchError> {
    let location = match options.backend {
        BenchBackend::Postgres => {
            let server = options.database_url.clone().unwrap_or_default();
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(&server)
                .await?;
            for sql in [
                "DROP DATABASE IF EXISTS recur_bench_lag WITH (FORCE)",
                "CREATE DATABASE recur_bench_lag",
            ] {
                sqlx::raw_sql(sql).execute(&admin).await?;
            }
            database_url(&server, "recur_bench_lag")
        }
        BenchBackend::Sqlite => {
            let path = options.scratch_dir.join("recur_bench_lag.sqlite");
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite:{}", path.display())
        }
    };
    let nats_error = |e: String| BenchError::Usage(format!("NATS at {nats_url}: {e}"));
    let ledger = open(&location).await?;
    let mut config = RelayConfig::new(nats_url);
    config.stream = LAG_STREAM.into();
    config.subject_prefix = LAG_STREAM.to_lowercase();
    recur_projections::relay::delete_stream(&config)
        .await
        .map_err(|e| nats_error(e.to_string()))?;
    let relay = Relay::connect(ledger.clone(), config.clone())
        .await
        .map_err(|e| nats_error(e.to_string()))?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let relay_task = {
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        })
    };
    let workers = recur_projections::nats_feed::follow_all(&ledger, &config, "bench", &stop_rx)
        .await
        .map_err(|e| BenchError::Usage(format!("projection worker: {e}")))?;
    let db = Db::of(&ledger).ok_or_else(|| BenchError::Usage("no read-model database".into()))?;
    let billing = Arc::new(
        Billing::open(
            ledger.clone(),
            Catalog::default_catalog().map_err(|e| BenchError::Usage(e.to_string()))?,
            Arc::new(SimulatedGateway::new()),
        )
        .await
        .map_err(|e| BenchError::Usage(e.to_string()))?,
    );

    let writes = LAG_WARMUP_WRITES + options.lag_rate * options.lag_seconds;
    let (committed_tx, mut committed_rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = {
        let (billing, rate) = (Arc::clone(&billing), options.lag_rate);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut pending = tokio::task::JoinSet::new();
            for n in 0..writes {
                every.tick().await;
                let (billing, committed) = (Arc::clone(&billing), committed_tx.clone());
                pending.spawn(async move {
                    let (result, context) = within(
                        RequestContext::default(),
                        billing.create_customer(NewCustomer::default()),
                    )
                    .await;
                    if let (Ok(_), Some(position)) = (result, context.last_position) {
                        let _ = committed.send((n, position, Instant::now()));
                    }
                });
            }
            while pending.join_next().await.is_some() {}
        })
    };

    // Watch the checkpoints: a write is visible once every projection has passed it.
    let started = Instant::now();
    let mut waiting: VecDeque<(u64, Position, Instant)> = VecDeque::new();
    let mut lags_us: Vec<u64> = Vec::new();
    let mut seen = 0u64;
    let deadline = Duration::from_secs(options.lag_seconds + 60);
    while seen < writes && started.elapsed() < deadline {
        while let Ok(write) = committed_rx.try_recv() {
            waiting.push_back(write);
        }
        if waiting.is_empty() && writer.is_finished() && committed_rx.is_empty() {
            break;
        }
        // NULL before the first checkpoint: nothing projected yet.
        let (reached,): (Option<u64>,) = db
            .row(&Stmt::new(
                "SELECT CAST(MIN(position) AS BIGINT) FROM projection_checkpoints",
                vec![],
            ))
            .await
            .map_err(|e| BenchError::Usage(e.to_string()))?;
        let reached = reached.unwrap_or(0);
        let now = Instant::now();
        waiting.retain(|(n, position, committed)| {
            if position.0 > reached {
                return true;
            }
            seen += 1;
            if *n >= LAG_WARMUP_WRITES {
                lags_us.push(u64::try_from((now - *committed).as_micros()).unwrap_or(u64::MAX));
            }
            false
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let _ = writer.await;
    let _ = stop_tx.send(true);
    let _ = relay_task.await;
    for worker in workers {
        let _ = worker.await;
    }
    let _ = recur_projections::relay::delete_stream(&config).await;

    lags_us.sort_unstable();
    let at = |permille: usize| {
        lags_us
            .get((lags_us.len() * permille / 1_000).min(lags_us.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    // Milliseconds to one decimal, as a JSON number.
    let ms = |us: u64| {
        (rust_decimal::Decimal::from(us) / rust_decimal::Decimal::from(1_000))
            .round_dp(1)
            .to_string()
            .parse::<serde_json::Value>()
            .unwrap_or_default()
    };
    let measured = lags_us.len() as u64;
    println!(
        "{}",
        json!({
            "bench": "projections", "backend": options.backend.name(), "phase": "lag_through_nats",
            "rate_per_s": options.lag_rate, "seconds": options.lag_seconds,
            "writes_measured": measured, "writes_not_seen": options.lag_rate * options.lag_seconds - measured.min(options.lag_rate * options.lag_seconds),
            "lag_p50_ms": ms(at(500)), "lag_p99_ms": ms(at(990)), "lag_max_ms": ms(lags_us.last().copied().unwrap_or(0)),
            "target_p99_ms": 100,
        })
    );
    Ok(())
}
