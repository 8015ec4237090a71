//! `recur bench api`: drives `recur serve` (a child process, so its memory is its
//! own) from concurrent clients with a create-customer + create-subscription mix,
//! and prints commands/s, p50 and p99 latency, and the server's peak RSS.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;

use super::ledger::{BenchBackend, BenchError, database_url as database_url_of};

/// The database the benchmark recreates on the Postgres server.
const API_BENCH_DB: &str = "recur_bench_api";
/// Requests sent before measuring, per client.
const WARM_UP_PER_CLIENT: usize = 5;
/// The rate limits (per second and burst, per key and per address) of the
/// server measured: switched on, so their cost is in the figures, and far above
/// what one machine can send with one key from one address (≈ 3,200 commands/s),
/// so they never refuse one.
const RATE_LIMIT: u32 = 1_000_000;

/// What to run.
#[derive(Clone, Debug)]
pub struct ApiBenchOptions {
    /// Postgres or SQLite.
    pub backend: BenchBackend,
    /// Concurrent clients, each with one connection.
    pub clients: usize,
    /// Customer + subscription pairs per client.
    pub iterations: usize,
    /// Postgres server URL with rights to create databases.
    pub database_url: Option<String>,
    /// Folder for the SQLite file.
    pub scratch_dir: PathBuf,
}

/// Runs the benchmark and prints one JSON line.
///
/// # Errors
/// Bad options, a server that does not start, a database error.
pub async fn run(options: &ApiBenchOptions) -> Result<(), BenchError> {
    if options.clients == 0 || options.iterations == 0 {
        return Err(BenchError::Usage(
            "--clients and --iterations must be at least 1".into(),
        ));
    }
    let key = format!("bench-admin-key-{}", uuid::Uuid::new_v4().simple());
    let (server, base) = start_server(
        options.backend,
        options.database_url.as_deref(),
        &options.scratch_dir,
        API_BENCH_DB,
        &key,
        &[],
    )
    .await?;
    let pid = server.0.id();

    let mut tasks = tokio::task::JoinSet::new();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(options.clients + 1));
    for _ in 0..options.clients {
        let base = base.clone();
        let key = key.clone();
        let barrier = std::sync::Arc::clone(&barrier);
        let iterations = options.iterations;
        tasks.spawn(async move { client(&base, &key, iterations, &barrier).await });
    }
    barrier.wait().await;
    let measured_from = Instant::now();
    let mut latencies_us: Vec<u64> = Vec::new();
    let mut errors = 0u64;
    while let Some(joined) = tasks.join_next().await {
        let (latencies, failed) = joined?;
        latencies_us.extend(latencies);
        errors += failed;
    }
    let elapsed = measured_from.elapsed();
    let server_peak_rss_kb = child_peak_rss_kb(pid);
    drop(server);
    latencies_us.sort_unstable();
    let at = |permille: usize| percentile(&latencies_us, permille);
    let commands = latencies_us.len() as u64;
    let elapsed_ms = u64::try_from(elapsed.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    println!(
        "{}",
        json!({
            "bench": "api",
            "backend": match options.backend { BenchBackend::Postgres => "postgres", BenchBackend::Sqlite => "sqlite" },
            "clients": options.clients,
            "mix": "create customer + create subscription (plan trial, no charge)",
            "commands": commands,
            "errors": errors,
            "elapsed_ms": elapsed_ms,
            "commands_per_s": commands * 1000 / elapsed_ms,
            "p50_us": at(500),
            "p99_us": at(990),
            "max_us": latencies_us.last().copied().unwrap_or(0),
            "server_peak_rss_kb": server_peak_rss_kb,
            "rate_limits": {
                "per_key_per_s": RATE_LIMIT, "per_key_burst": RATE_LIMIT,
                "per_address_per_s": RATE_LIMIT, "per_address_burst": RATE_LIMIT,
            },
        })
    );
    if errors > 0 {
        return Err(BenchError::Check(format!("{errors} requests failed")));
    }
    Ok(())
}

/// A `recur serve` child process, killed on drop.
pub(crate) struct Child(pub(crate) std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `recur serve` (this binary) on a fresh scratch ledger — database
/// `db_name` on the Postgres server, or a file in `scratch_dir` — with
/// `admin_key`, the rate limits out of reach, and `extra` options: the child
/// and its base URL.
///
/// # Errors
/// No Postgres URL for Postgres, a server that does not start.
pub(crate) async fn start_server(
    backend: BenchBackend,
    database_url: Option<&str>,
    scratch_dir: &std::path::Path,
    db_name: &str,
    admin_key: &str,
    extra: &[String],
) -> Result<(Child, String), BenchError> {
    let location = match backend {
        BenchBackend::Postgres => {
            let server = database_url.ok_or_else(|| {
                BenchError::Usage(
                    "set DATABASE_URL or --database-url for --backend postgres".into(),
                )
            })?;
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect(server)
                .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"
            )))
            .execute(&admin)
            .await?;
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db_name}")))
                .execute(&admin)
                .await?;
            database_url_of(server, db_name)
        }
        BenchBackend::Sqlite => {
            std::fs::create_dir_all(scratch_dir).map_err(|e| BenchError::Usage(e.to_string()))?;
            let path = scratch_dir.join(format!("{db_name}.sqlite"));
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
            }
            format!("sqlite:{}", path.display())
        }
    };
    let exe = std::env::current_exe().map_err(|e| BenchError::Usage(e.to_string()))?;
    let mut child = Command::new(exe)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tick-seconds",
            "3600",
            "--database",
            &location,
            // The benchmark's fresh scratch ledger (the SQLite file was removed above).
            "--create",
        ])
        .args(
            [
                "--rate-limit-per-key-per-s",
                "--rate-limit-per-key-burst",
                "--rate-limit-per-address-per-s",
                "--rate-limit-per-address-burst",
            ]
            .into_iter()
            .flat_map(|flag| [flag.to_owned(), RATE_LIMIT.to_string()]),
        )
        .args(extra)
        .env("RECUR_ADMIN_KEY", admin_key)
        // The scratch ledger's own key file, beside it, never the caller's.
        .env(
            "RECUR_MASTER_KEY_FILE",
            scratch_dir.join(format!("{db_name}.key")),
        )
        .env_remove("RECUR_MASTER_KEY")
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| BenchError::Usage(format!("cannot start recur serve: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| BenchError::Usage("no stdout".into()))?;
    let server = Child(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).map(|_| line)
    })
    .await?
    .map_err(|e| BenchError::Usage(e.to_string()))?;
    let base = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .map(|address| format!("http://{address}"))
        .ok_or_else(|| BenchError::Usage(format!("recur serve did not start: {line:?}")))?;
    Ok((server, base))
}

/// A child process's peak resident set size in KiB (Linux `VmHWM`; 0 elsewhere).
pub(crate) fn child_peak_rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|rest| {
                    rest.trim()
                        .trim_end_matches("kB")
                        .trim()
                        .parse::<u64>()
                        .ok()
                })
        })
        .unwrap_or(0)
}

/// The `permille`th of sorted `latencies_us` (990: p99).
pub(crate) fn percentile(latencies_us: &[u64], permille: usize) -> u64 {
    latencies_us
        .get((latencies_us.len().saturating_sub(1)) * permille / 1000)
        .copied()
        .unwrap_or(0)
}

/// One client: its own connection, customer then subscription, `iterations` times.
async fn client(
    base: &str,
    key: &str,
    iterations: usize,
    barrier: &tokio::sync::Barrier,
) -> (Vec<u64>, u64) {
    let http = match reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
    {
        Ok(http) => http,
        Err(_) => {
            barrier.wait().await;
            return (Vec::new(), 1);
        }
    };
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    for _ in 0..WARM_UP_PER_CLIENT {
        let _ = post("/v1/customers", json!({})).await;
    }
    barrier.wait().await;
    let mut latencies = Vec::with_capacity(iterations * 2);
    let mut failed = 0;
    for _ in 0..iterations {
        let started = Instant::now();
        let customer = match post("/v1/customers", json!({})).await {
            Ok(response) if response.status().is_success() => response.json::<Value>().await.ok(),
            _ => None,
        };
        latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        let Some(id) = customer.as_ref().and_then(|c| c["id"].as_str()) else {
            failed += 1;
            continue;
        };
        let started = Instant::now();
        match post(
            "/v1/subscriptions",
            json!({"customer": id, "plan": "community_access"}),
        )
        .await
        {
            Ok(response) if response.status().is_success() => {}
            _ => failed += 1,
        }
        latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    (latencies, failed)
}
