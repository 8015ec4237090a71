//! `recur bench ledger`: ../shared/bench/WORKLOAD.md run exactly, Recur's ledger
//! against the document's raw-SQL baseline (section 6), interleaved round by round.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use recur_ledger::{
    Clock, EventId, ExpectedVersion, Ledger, LedgerConfig, LedgerError, NewEvent, Position,
    StreamId, SystemClock,
};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Row, SqlitePool};

use super::peak_rss_kb;
use super::workload::{
    self, BillingEvent, EVENTS_TOTAL, REPLAY_PAGE, ReplayFold, STREAMS, WRITERS,
};

// The replay reads the document's PAGE per page.
const _: () = assert!(recur_ledger::subscription::SUBSCRIPTION_PAGE_EVENTS == REPLAY_PAGE);

/// Which store the benchmark runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchBackend {
    /// The Postgres server at the given URL.
    Postgres,
    /// SQLite files in a scratch folder.
    Sqlite,
}

impl BenchBackend {
    /// `postgres` or `sqlite`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Sqlite => "sqlite",
        }
    }
}

/// One of the document's workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Workload {
    /// One event per transaction, 16 writers.
    W1,
    /// Ten events per transaction, 16 writers.
    W2,
    /// Replay in global order into typed events.
    W3,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Self::W1 => "W1",
            Self::W2 => "W2",
            Self::W3 => "W3",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct LedgerBenchOptions {
    /// Postgres or SQLite.
    pub backend: BenchBackend,
    /// Workloads, run in W1, W2, W3 order each round.
    pub workloads: Vec<Workload>,
    /// Rounds (at least 3 for a figure worth quoting).
    pub rounds: u32,
    /// Postgres server URL with rights to create databases.
    pub database_url: Option<String>,
    /// Scratch folder for SQLite files.
    pub scratch_dir: PathBuf,
    /// Concurrent committer transactions of Recur's Postgres backend.
    pub committers: usize,
}

/// Why a benchmark run failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The ledger refused or failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// The raw baseline's database failed.
    #[error("raw baseline")]
    Database(#[from] sqlx::Error),
    /// A check value or the replay verification did not hold.
    #[error("check failed: {0}")]
    Check(String),
    /// The W3 replay fold refused an event or did not verify.
    #[error("check failed")]
    Fold(#[from] workload::FoldError),
    /// A stored billing event did not decode.
    #[error("check failed: a stored event cannot be decoded")]
    Decode(#[from] recur_commands::DecodeError),
    /// A benchmark event could not be written or read as JSON.
    #[error("check failed: benchmark event JSON")]
    Json(#[from] serde_json::Error),
    /// Options that cannot work.
    #[error("{0}")]
    Usage(String),
    /// A writer task died.
    #[error("writer task failed")]
    Task(#[from] tokio::task::JoinError),
}

/// One measured run.
#[derive(Clone, Debug)]
struct Figure {
    workload: Workload,
    engine: &'static str,
    round: u32,
    events_per_s: u64,
    conflicts: u64,
}

pub(crate) fn events_per_s(events: u64, elapsed: Duration) -> u64 {
    let micros = u64::try_from(elapsed.as_micros())
        .unwrap_or(u64::MAX)
        .max(1);
    events.saturating_mul(1_000_000) / micros
}

/// `recur / raw` to three decimals, as a JSON number.
pub(crate) fn ratio(recur: u64, raw: u64) -> f64 {
    if raw == 0 {
        return 0.0;
    }
    (Decimal::from(recur) / Decimal::from(raw))
        .round_dp(3)
        .to_f64()
        .unwrap_or(0.0)
}

pub(crate) fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The data set, built before any timer starts.
struct Data {
    streams: Vec<StreamId>,
    events: Vec<Vec<BillingEvent>>,
}

impl Data {
    fn build() -> Result<Self, BenchError> {
        let events = workload::all_events();
        let streams = (0..STREAMS)
            .map(|s| StreamId::parse(workload::stream_id(s)))
            .collect::<Result<_, _>>()?;
        Ok(Self { streams, events })
    }
}

fn check_values() -> Result<(), BenchError> {
    let first = serde_json::to_string(&workload::event(0, 1))?;
    let expected = r#"{"type":"InvoiceIssued","subscription_id":"c9ed9924-11bb-4661-a9c5-556b278f4ce5","customer_id":"e9fb109b-8401-44ff-9a57-2989c616644a","invoice_id":"160d5401-aa35-49ea-b60b-96052f88bdd0","amount":"1097.87","currency":"USD","period_start":"2025-01-01","period_end":"2025-01-28","occurred_at":"2025-01-01T00:00:05Z"}"#;
    if first != expected {
        return Err(BenchError::Check(format!("event(0,1) is {first}")));
    }
    Ok(())
}

/// Runs the benchmark and prints one JSON line per figure, then the medians.
///
/// # Errors
/// Database failures, failed check values or a failed replay verification.
pub async fn run(options: &LedgerBenchOptions) -> Result<(), BenchError> {
    if options.rounds == 0 {
        return Err(BenchError::Usage("--rounds must be at least 1".into()));
    }
    check_values()?;
    let data = Arc::new(Data::build()?);
    let mut bench = match options.backend {
        BenchBackend::Postgres => {
            let url = options.database_url.clone().ok_or_else(|| {
                BenchError::Usage(
                    "the Postgres benchmark needs DATABASE_URL or --database-url".into(),
                )
            })?;
            Target::postgres(url, options.committers).await?
        }
        BenchBackend::Sqlite => Target::sqlite(options.scratch_dir.clone())?,
    };
    println!("{}", bench.environment().await?);
    let mut figures: Vec<Figure> = Vec::new();
    let mut workloads = options.workloads.clone();
    workloads.sort();
    workloads.dedup();
    for round in 1..=options.rounds {
        let mut loaded_w2 = false;
        for &workload in &workloads {
            let mut measured = Vec::with_capacity(2);
            for engine in ["recur", "raw"] {
                let (elapsed, events, conflicts) = match (workload, engine) {
                    (Workload::W3, _) => {
                        if !loaded_w2 {
                            // W3 replays what W2 left; load it untimed when W2 was not run.
                            bench.write_recur(&data, Workload::W2).await?;
                            bench.write_raw(&data, Workload::W2).await?;
                            loaded_w2 = true;
                        }
                        if engine == "recur" {
                            bench.replay_recur().await?
                        } else {
                            bench.replay_raw().await?
                        }
                    }
                    (_, "recur") => bench.write_recur(&data, workload).await?,
                    _ => bench.write_raw(&data, workload).await?,
                };
                measured.push((engine, elapsed, events, conflicts, peak_rss_kb()));
            }
            if workload == Workload::W2 {
                loaded_w2 = true;
            }
            let raw_rate = measured
                .iter()
                .find(|m| m.0 == "raw")
                .map_or(0, |m| events_per_s(m.2, m.1));
            for (engine, elapsed, events, conflicts, rss) in measured {
                let figure = Figure {
                    workload,
                    engine,
                    round,
                    events_per_s: events_per_s(events, elapsed),
                    conflicts,
                };
                println!(
                    "{}",
                    json!({
                        "workload": workload.name(), "backend": options.backend.name(), "engine": engine,
                        "round": round, "events": events, "events_per_s": figure.events_per_s,
                        "ratio_to_raw": ratio(figure.events_per_s, raw_rate), "conflicts": conflicts,
                        "peak_rss_kb": rss, "elapsed_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
                    })
                );
                figures.push(figure);
            }
        }
    }
    let stored = bench.stored_bytes().await?;
    for &workload in &workloads {
        let pick = |engine: &str| -> Vec<u64> {
            figures
                .iter()
                .filter(|f| f.workload == workload && f.engine == engine)
                .map(|f| f.events_per_s)
                .collect()
        };
        let mut recur = pick("recur");
        let mut raw = pick("raw");
        let (min, max) = (
            recur.iter().copied().min().unwrap_or(0),
            recur.iter().copied().max().unwrap_or(0),
        );
        let mut ratios: Vec<u64> = (1..=options.rounds)
            .filter_map(|round| {
                let get = |engine: &str| {
                    figures
                        .iter()
                        .find(|f| f.workload == workload && f.round == round && f.engine == engine)
                        .map(|f| f.events_per_s)
                };
                // Ratios in thousandths, so the median stays in integers.
                Some(get("recur")?.saturating_mul(1_000) / get("raw")?.max(1))
            })
            .collect();
        let ratio_median = median(&mut ratios);
        let conflicts: u64 = figures
            .iter()
            .filter(|f| f.workload == workload)
            .map(|f| f.conflicts)
            .sum();
        println!(
            "{}",
            json!({
                "workload": workload.name(), "backend": options.backend.name(), "engine": "recur",
                "round": "median", "events": EVENTS_TOTAL, "events_per_s": median(&mut recur),
                "events_per_s_min": min, "events_per_s_max": max,
                "raw_events_per_s": median(&mut raw),
                "ratio_to_raw": (Decimal::from(ratio_median) / Decimal::from(1_000)).to_f64().unwrap_or(0.0),
                "rounds": options.rounds, "conflicts": conflicts, "peak_rss_kb": peak_rss_kb(),
                "stored_bytes_per_event": stored,
            })
        );
    }
    Ok(())
}

/// The raw baseline's W3 replay (section 6 of the workload) over the rows its W2
/// writes, `rounds` times: events/s of each round. Other benchmarks compare with it.
///
/// # Errors
/// Database failures, a failed replay verification.
pub(crate) async fn raw_replay_rates(
    backend: BenchBackend,
    database_url: Option<String>,
    scratch_dir: PathBuf,
    rounds: u32,
) -> Result<Vec<u64>, BenchError> {
    let data = Arc::new(Data::build()?);
    let mut target = match backend {
        BenchBackend::Postgres => {
            let url = database_url.ok_or_else(|| {
                BenchError::Usage(
                    "the Postgres benchmark needs DATABASE_URL or --database-url".into(),
                )
            })?;
            Target::postgres(url, 2).await?
        }
        BenchBackend::Sqlite => Target::sqlite(scratch_dir)?,
    };
    target.write_raw(&data, Workload::W2).await?;
    let mut rates = Vec::new();
    for _ in 0..rounds.max(1) {
        let (elapsed, events, _) = target.replay_raw().await?;
        rates.push(events_per_s(events, elapsed));
    }
    Ok(rates)
}

/// The raw baseline's W2 (section 5 of the workload: ten events per
/// transaction, 16 writers) `rounds` times: events/s of each round. Other
/// benchmarks compare their write rates with it.
///
/// # Errors
/// Database failures.
pub(crate) async fn raw_w2_rates(
    backend: BenchBackend,
    database_url: Option<String>,
    scratch_dir: PathBuf,
    rounds: u32,
) -> Result<Vec<u64>, BenchError> {
    let data = Arc::new(Data::build()?);
    let mut target = match backend {
        BenchBackend::Postgres => {
            let url = database_url.ok_or_else(|| {
                BenchError::Usage(
                    "the Postgres benchmark needs DATABASE_URL or --database-url".into(),
                )
            })?;
            Target::postgres(url, 2).await?
        }
        BenchBackend::Sqlite => Target::sqlite(scratch_dir)?,
    };
    let mut rates = Vec::new();
    for _ in 0..rounds.max(1) {
        let (elapsed, events, _) = target.write_raw(&data, Workload::W2).await?;
        rates.push(events_per_s(events, elapsed));
    }
    Ok(rates)
}

/// The databases of one benchmark: Recur's store and the raw baseline's.
enum Target {
    Postgres {
        admin: PgPool,
        url: String,
        committers: usize,
        recur: Option<Ledger>,
        raw: Option<PgPool>,
    },
    Sqlite {
        dir: PathBuf,
        recur: Option<Ledger>,
        raw: Option<SqlitePool>,
    },
}

const RECUR_DB: &str = "recur_bench_ledger";
const RAW_DB: &str = "recur_bench_raw";

pub(crate) fn database_url(server: &str, database: &str) -> String {
    let (base, query) = server
        .split_once('?')
        .map_or((server, None), |(b, q)| (b, Some(q)));
    let authority = base.find("://").map_or(0, |i| i + 3);
    let base = base[authority..]
        .find('/')
        .map_or(base, |slash| &base[..authority + slash]);
    query.map_or_else(
        || format!("{base}/{database}"),
        |q| format!("{base}/{database}?{q}"),
    )
}

impl Target {
    async fn postgres(url: String, committers: usize) -> Result<Self, BenchError> {
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(&url)
            .await?;
        Ok(Self::Postgres {
            admin,
            url,
            committers,
            recur: None,
            raw: None,
        })
    }

    fn sqlite(dir: PathBuf) -> Result<Self, BenchError> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Usage(format!("{}: {e}", dir.display())))?;
        Ok(Self::Sqlite {
            dir,
            recur: None,
            raw: None,
        })
    }

    async fn environment(&self) -> Result<serde_json::Value, BenchError> {
        let cores = std::thread::available_parallelism().map_or(0, usize::from);
        match self {
            Self::Postgres { admin, .. } => {
                let mut settings = serde_json::Map::new();
                for name in [
                    "server_version",
                    "synchronous_commit",
                    "fsync",
                    "shared_buffers",
                    "wal_sync_method",
                ] {
                    let value: String =
                        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SHOW {name}")))
                            .fetch_one(admin)
                            .await?;
                    settings.insert(name.into(), value.into());
                }
                Ok(
                    json!({ "environment": { "backend": "postgres", "cores": cores, "postgres": settings } }),
                )
            }
            Self::Sqlite { .. } => Ok(json!({
                "environment": { "backend": "sqlite", "cores": cores, "journal_mode": "wal", "synchronous": "full" }
            })),
        }
    }

    async fn recreate_database(admin: &PgPool, name: &str) -> Result<(), BenchError> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(admin)
        .await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(admin)
            .await?;
        Ok(())
    }

    async fn checkpoint(&self) -> Result<(), BenchError> {
        match self {
            Self::Postgres { admin, .. } => {
                sqlx::raw_sql("CHECKPOINT").execute(admin).await?;
            }
            Self::Sqlite { recur, raw, .. } => {
                if let Some(pool) = recur.as_ref().and_then(Ledger::raw_sqlite) {
                    sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(pool)
                        .await?;
                }
                if let Some(pool) = raw {
                    sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
                        .execute(pool)
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// A fresh, empty Recur store with its connections open.
    async fn fresh_recur(&mut self) -> Result<Ledger, BenchError> {
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let ledger = match self {
            Self::Postgres {
                admin,
                url,
                committers,
                recur,
                ..
            } => {
                *recur = None;
                Self::recreate_database(admin, RECUR_DB).await?;
                let mut config = LedgerConfig::new(database_url(url, RECUR_DB));
                config.pool_size = u32::try_from(WRITERS).unwrap_or(16) + 2;
                config.committers = *committers;
                let ledger = Ledger::open(config, clock).await?;
                if let Some(pool) = ledger.raw_postgres() {
                    open_every_connection(pool).await?;
                }
                *recur = Some(ledger.clone());
                ledger
            }
            Self::Sqlite { dir, recur, .. } => {
                *recur = None;
                let path = dir.join("recur-bench.sqlite");
                remove_sqlite_files(&path);
                let ledger = Ledger::open(
                    LedgerConfig::new(format!("sqlite:{}", path.display())).create_if_missing(true),
                    clock,
                )
                .await?;
                *recur = Some(ledger.clone());
                ledger
            }
        };
        Ok(ledger)
    }

    async fn write_recur(
        &mut self,
        data: &Arc<Data>,
        workload: Workload,
    ) -> Result<(Duration, u64, u64), BenchError> {
        let ledger = self.fresh_recur().await?;
        // Event ids belong to the structs built before the timer.
        let ids: Arc<Vec<EventId>> = Arc::new(
            (0..EVENTS_TOTAL)
                .map(|_| EventId::new_at(ledger.clock().now()))
                .collect(),
        );
        self.checkpoint().await?;
        let started = Instant::now();
        let mut writers = Vec::with_capacity(WRITERS);
        for writer in 0..WRITERS {
            let (ledger, data, ids) = (ledger.clone(), Arc::clone(data), Arc::clone(&ids));
            writers.push(tokio::spawn(async move {
                recur_writer(&ledger, &data, &ids, writer, workload).await
            }));
        }
        let mut conflicts = 0;
        for writer in writers {
            conflicts += writer.await??;
        }
        let elapsed = started.elapsed();
        let released = ledger.last_position().await?;
        if released == Position::START {
            return Err(BenchError::Check("nothing was written".into()));
        }
        Ok((elapsed, EVENTS_TOTAL, conflicts))
    }

    async fn fresh_raw(&mut self) -> Result<RawStore, BenchError> {
        match self {
            Self::Postgres {
                admin, url, raw, ..
            } => {
                let pool = match raw {
                    Some(pool) => pool.clone(),
                    None => {
                        Self::recreate_database(admin, RAW_DB).await?;
                        let pool = PgPoolOptions::new()
                            .max_connections(u32::try_from(WRITERS).unwrap_or(16))
                            .connect(&database_url(url, RAW_DB))
                            .await?;
                        *raw = Some(pool.clone());
                        pool
                    }
                };
                sqlx::raw_sql(
                    "DROP TABLE IF EXISTS raw_events;
                     CREATE TABLE raw_events (
                         position  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                         stream_id text   NOT NULL,
                         version   int    NOT NULL,
                         type      text   NOT NULL,
                         payload   jsonb  NOT NULL,
                         UNIQUE (stream_id, version));",
                )
                .execute(&pool)
                .await?;
                open_every_connection(&pool).await?;
                Ok(RawStore::Postgres(pool))
            }
            Self::Sqlite { dir, raw, .. } => {
                if let Some(pool) = raw.take() {
                    pool.close().await;
                }
                let path = dir.join("raw-bench.sqlite");
                remove_sqlite_files(&path);
                let options = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(60));
                let pool = SqlitePoolOptions::new()
                    .max_connections(u32::try_from(WRITERS).unwrap_or(16))
                    .connect_with(options)
                    .await?;
                sqlx::raw_sql(
                    "CREATE TABLE raw_events (
                         position  INTEGER PRIMARY KEY,
                         stream_id TEXT    NOT NULL,
                         version   INTEGER NOT NULL,
                         type      TEXT    NOT NULL,
                         payload   TEXT    NOT NULL,
                         UNIQUE (stream_id, version));",
                )
                .execute(&pool)
                .await?;
                open_every_connection(&pool).await?;
                *raw = Some(pool.clone());
                Ok(RawStore::Sqlite(pool))
            }
        }
    }

    async fn write_raw(
        &mut self,
        data: &Arc<Data>,
        workload: Workload,
    ) -> Result<(Duration, u64, u64), BenchError> {
        let store = self.fresh_raw().await?;
        self.checkpoint().await?;
        let started = Instant::now();
        let mut writers = Vec::with_capacity(WRITERS);
        for writer in 0..WRITERS {
            let (store, data) = (store.clone(), Arc::clone(data));
            writers.push(tokio::spawn(async move {
                raw_writer(&store, &data, writer, workload).await
            }));
        }
        let mut conflicts = 0;
        for writer in writers {
            conflicts += writer.await??;
        }
        Ok((started.elapsed(), EVENTS_TOTAL, conflicts))
    }

    async fn prepare_replay(
        &self,
        table_pool: Option<&PgPool>,
        table: &str,
    ) -> Result<(), BenchError> {
        if let Some(pool) = table_pool {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("VACUUM ANALYZE {table}")))
                .execute(pool)
                .await?;
        }
        self.checkpoint().await
    }

    async fn replay_recur(&mut self) -> Result<(Duration, u64, u64), BenchError> {
        let ledger = match self {
            Self::Postgres { recur, .. } | Self::Sqlite { recur, .. } => recur
                .clone()
                .ok_or_else(|| BenchError::Usage("W3 needs W2's data".into()))?,
        };
        self.prepare_replay(ledger.raw_postgres(), "events").await?;
        let started = Instant::now();
        let mut fold = ReplayFold::new();
        let mut events = 0u64;
        // Pages of SUBSCRIPTION_PAGE_EVENTS (= REPLAY_PAGE) by keyset on the position,
        // the next page read while this one is folded.
        let mut replay = ledger.replay(Position::START).await?;
        while let Some(event) = replay.next().await? {
            let typed: BillingEvent = serde_json::from_str(&event.payload)?;
            fold.apply(event.stream_id.as_str(), &typed)?;
            events += 1;
        }
        fold.verify()?;
        Ok((started.elapsed(), events, 0))
    }

    async fn replay_raw(&mut self) -> Result<(Duration, u64, u64), BenchError> {
        let store = match self {
            Self::Postgres {
                raw: Some(pool), ..
            } => RawStore::Postgres(pool.clone()),
            Self::Sqlite {
                raw: Some(pool), ..
            } => RawStore::Sqlite(pool.clone()),
            _ => return Err(BenchError::Usage("W3 needs W2's data".into())),
        };
        match &store {
            RawStore::Postgres(pool) => self.prepare_replay(Some(pool), "raw_events").await?,
            RawStore::Sqlite(_) => self.checkpoint().await?,
        }
        let started = Instant::now();
        let mut fold = ReplayFold::new();
        let mut last = 0i64;
        let mut events = 0u64;
        let limit = i64::try_from(REPLAY_PAGE).unwrap_or(5_000);
        loop {
            let mut page_len = 0;
            match &store {
                RawStore::Postgres(pool) => {
                    let mut conn = pool.acquire().await?;
                    let rows = sqlx::query(
                        "SELECT position, stream_id, version, type, payload FROM raw_events
                          WHERE position > $1 ORDER BY position LIMIT 5000",
                    )
                    .bind(last)
                    .fetch_all(&mut *conn)
                    .await?;
                    for row in &rows {
                        last = row.try_get(0)?;
                        let stream: &str = row.try_get(1)?;
                        let typed: sqlx::types::Json<BillingEvent> = row.try_get(4)?;
                        fold.apply(stream, &typed.0)?;
                        page_len += 1;
                    }
                }
                RawStore::Sqlite(pool) => {
                    let rows = sqlx::query(
                        "SELECT position, stream_id, version, type, payload FROM raw_events
                          WHERE position > ? ORDER BY position LIMIT ?",
                    )
                    .bind(last)
                    .bind(limit)
                    .fetch_all(pool)
                    .await?;
                    for row in &rows {
                        last = row.try_get(0)?;
                        let stream: &str = row.try_get(1)?;
                        let payload: &str = row.try_get(4)?;
                        let typed: BillingEvent = serde_json::from_str(payload)?;
                        fold.apply(stream, &typed)?;
                        page_len += 1;
                    }
                }
            }
            events += page_len;
            if page_len == 0 {
                break;
            }
        }
        fold.verify()?;
        Ok((started.elapsed(), events, 0))
    }

    /// Average bytes Recur stores per event for payload plus envelope metadata.
    async fn stored_bytes(&self) -> Result<serde_json::Value, BenchError> {
        let ledger = match self {
            Self::Postgres { recur, .. } | Self::Sqlite { recur, .. } => recur.clone(),
        };
        let Some(ledger) = ledger else {
            return Ok(serde_json::Value::Null);
        };
        let sql = "SELECT CAST(avg(length(CAST(payload AS text))) AS bigint), \
                          CAST(avg(length(CAST(metadata AS text))) AS bigint) FROM events";
        let (payload, metadata): (Option<i64>, Option<i64>) =
            if let Some(pool) = ledger.raw_postgres() {
                sqlx::query_as(sql).fetch_one(pool).await?
            } else if let Some(pool) = ledger.raw_sqlite() {
                sqlx::query_as(sql).fetch_one(pool).await?
            } else {
                (None, None)
            };
        Ok(json!({ "payload": payload, "metadata": metadata, "chain_hash": 32 }))
    }
}

/// Opens every connection of `pool` before the timer starts, as the workload requires.
async fn open_every_connection<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
) -> Result<(), sqlx::Error> {
    let mut held = Vec::new();
    for _ in 0..pool.options().get_max_connections() {
        held.push(pool.acquire().await?);
    }
    Ok(())
}

/// Removes a SQLite database and its WAL files, so a run starts empty.
fn remove_sqlite_files(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        // A file that is not there is already what we want.
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[derive(Clone)]
enum RawStore {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// One writer of Recur's engine: one append in flight at a time.
async fn recur_writer(
    ledger: &Ledger,
    data: &Data,
    ids: &[EventId],
    writer: usize,
    workload: Workload,
) -> Result<u64, BenchError> {
    let id_of = |s: u64, v: u64| ids[usize::try_from(s * 10 + v - 1).unwrap_or(0)];
    let to_new = |s: u64, v: u64| -> Result<NewEvent, LedgerError> {
        let event =
            &data.events[usize::try_from(s).unwrap_or(0)][usize::try_from(v - 1).unwrap_or(0)];
        NewEvent::new(id_of(s, v), &event.event_type, 1, event)
    };
    let mut conflicts = 0;
    let streams: Vec<u64> = workload::owned_streams(writer).collect();
    match workload {
        Workload::W1 => {
            for v in 1..=workload::EVENTS_PER_STREAM {
                for &s in &streams {
                    let stream = &data.streams[usize::try_from(s).unwrap_or(0)];
                    match ledger
                        .append(stream, ExpectedVersion::Exact(v - 1), vec![to_new(s, v)?])
                        .await
                    {
                        Ok(_) => {}
                        Err(LedgerError::VersionConflict { .. }) => conflicts += 1,
                        Err(other) => return Err(other.into()),
                    }
                }
            }
        }
        Workload::W2 | Workload::W3 => {
            for &s in &streams {
                let stream = &data.streams[usize::try_from(s).unwrap_or(0)];
                let batch = (1..=workload::EVENTS_PER_STREAM)
                    .map(|v| to_new(s, v))
                    .collect::<Result<Vec<_>, _>>()?;
                match ledger
                    .append(stream, ExpectedVersion::NoStream, batch)
                    .await
                {
                    Ok(_) => {}
                    Err(LedgerError::VersionConflict { .. }) => conflicts += 1,
                    Err(other) => return Err(other.into()),
                }
            }
        }
    }
    Ok(conflicts)
}

/// 1 for a unique violation (the section 6 baseline's conflict), 0 for success.
fn conflict_or_error<T>(result: Result<T, sqlx::Error>) -> Result<u64, BenchError> {
    match result {
        Ok(_) => Ok(0),
        Err(error)
            if error
                .as_database_error()
                .is_some_and(|e| e.is_unique_violation()) =>
        {
            Ok(1)
        }
        Err(error) => Err(error.into()),
    }
}

/// One writer of the raw baseline: section 6's statements, autocommit.
async fn raw_writer(
    store: &RawStore,
    data: &Data,
    writer: usize,
    workload: Workload,
) -> Result<u64, BenchError> {
    let mut conflicts = 0;
    let streams: Vec<u64> = workload::owned_streams(writer).collect();
    let event_of = |s: u64, v: u64| {
        &data.events[usize::try_from(s).unwrap_or(0)][usize::try_from(v - 1).unwrap_or(0)]
    };
    match store {
        RawStore::Postgres(pool) => {
            let mut conn = pool.acquire().await?;
            match workload {
                Workload::W1 => {
                    for v in 1..=workload::EVENTS_PER_STREAM {
                        for &s in &streams {
                            let event = event_of(s, v);
                            let result = sqlx::query(
                                "INSERT INTO raw_events (stream_id, version, type, payload) VALUES ($1, $2, $3, $4)",
                            )
                            .bind(data.streams[usize::try_from(s).unwrap_or(0)].as_str())
                            .bind(i32::try_from(v).unwrap_or(0))
                            .bind(&event.event_type)
                            .bind(sqlx::types::Json(event))
                            .execute(&mut *conn)
                            .await;
                            conflicts += conflict_or_error(result)?;
                        }
                    }
                }
                Workload::W2 | Workload::W3 => {
                    for &s in &streams {
                        let versions: Vec<i32> = (1..=10).collect();
                        let types: Vec<&str> = (1..=10)
                            .map(|v| event_of(s, v).event_type.as_str())
                            .collect();
                        let payloads: Vec<sqlx::types::Json<&BillingEvent>> = (1..=10)
                            .map(|v| sqlx::types::Json(event_of(s, v)))
                            .collect();
                        let result = sqlx::query(
                            "INSERT INTO raw_events (stream_id, version, type, payload)
                               SELECT $1, t.v, t.ty, t.p FROM UNNEST($2::int4[], $3::text[], $4::jsonb[]) AS t(v, ty, p)",
                        )
                        .bind(data.streams[usize::try_from(s).unwrap_or(0)].as_str())
                        .bind(&versions)
                        .bind(&types)
                        .bind(&payloads)
                        .execute(&mut *conn)
                        .await;
                        conflicts += conflict_or_error(result)?;
                    }
                }
            }
        }
        RawStore::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            match workload {
                Workload::W1 => {
                    for v in 1..=workload::EVENTS_PER_STREAM {
                        for &s in &streams {
                            let event = event_of(s, v);
                            let payload = serde_json::to_string(event)?;
                            let result =
                                sqlx::query("INSERT INTO raw_events (stream_id, version, type, payload) VALUES (?, ?, ?, ?)")
                                    .bind(data.streams[usize::try_from(s).unwrap_or(0)].as_str())
                                    .bind(i64::try_from(v).unwrap_or(0))
                                    .bind(&event.event_type)
                                    .bind(payload)
                                    .execute(&mut *conn)
                                    .await;
                            conflicts += conflict_or_error(result)?;
                        }
                    }
                }
                Workload::W2 | Workload::W3 => {
                    for &s in &streams {
                        let mut query = sqlx::QueryBuilder::new(
                            "INSERT INTO raw_events (stream_id, version, type, payload) ",
                        );
                        let mut payloads = Vec::with_capacity(10);
                        for v in 1..=workload::EVENTS_PER_STREAM {
                            let event = event_of(s, v);
                            payloads.push((v, event, serde_json::to_string(event)?));
                        }
                        query.push_values(payloads, |mut row, (v, event, payload)| {
                            row.push_bind(
                                data.streams[usize::try_from(s).unwrap_or(0)]
                                    .as_str()
                                    .to_owned(),
                            )
                            .push_bind(i64::try_from(v).unwrap_or(0))
                            .push_bind(event.event_type.clone())
                            .push_bind(payload);
                        });
                        conflicts += conflict_or_error(query.build().execute(&mut *conn).await)?;
                    }
                }
            }
        }
    }
    Ok(conflicts)
}
