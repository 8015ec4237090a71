//! `recur bench webhooks`: signed Stripe deliveries from concurrent clients to
//! `recur serve`'s `POST /webhooks/stripe`, a quarter of them redeliveries of an
//! event already sent; prints webhooks/s, p50 and p99 latency and the server's
//! peak RSS, and checks that every event was kept exactly once.

use std::time::{Duration, Instant};

use serde_json::json;

use super::api::{child_peak_rss_kb, percentile, start_server};
use super::ledger::{BenchBackend, BenchError};

/// The database the benchmark recreates on the Postgres server.
const WEBHOOK_BENCH_DB: &str = "recur_bench_webhooks";
/// The signing secret of the measured endpoint.
const SECRET: &str = "whsec_bench_0123456789abcdef";
/// Every this many deliveries of a client, one is a redelivery.
const DUPLICATE_EVERY: usize = 4;
/// Deliveries sent before measuring, per client.
const WARM_UP_PER_CLIENT: usize = 5;

/// What to run.
#[derive(Clone, Debug)]
pub struct WebhookBenchOptions {
    /// Postgres or SQLite.
    pub backend: BenchBackend,
    /// Concurrent clients, each with one connection.
    pub clients: usize,
    /// Deliveries per client (a quarter of them redeliveries).
    pub deliveries: usize,
    /// Postgres server URL with rights to create databases.
    pub database_url: Option<String>,
    /// Folder for the SQLite file.
    pub scratch_dir: std::path::PathBuf,
}

/// Runs the benchmark and prints one JSON line.
///
/// # Errors
/// Bad options, a server that does not start, a failed delivery, an event kept
/// other than once.
pub async fn run(options: &WebhookBenchOptions) -> Result<(), BenchError> {
    if options.clients == 0 || options.deliveries == 0 {
        return Err(BenchError::Usage(
            "--clients and --deliveries must be at least 1".into(),
        ));
    }
    let key = format!("bench-admin-key-{}", uuid::Uuid::new_v4().simple());
    let (server, base) = start_server(
        options.backend,
        options.database_url.as_deref(),
        &options.scratch_dir,
        WEBHOOK_BENCH_DB,
        &key,
        &["--stripe-webhook-secrets".to_owned(), SECRET.to_owned()],
    )
    .await?;
    let pid = server.0.id();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(options.clients + 1));
    let mut tasks = tokio::task::JoinSet::new();
    for client_no in 0..options.clients {
        let base = base.clone();
        let barrier = std::sync::Arc::clone(&barrier);
        let deliveries = options.deliveries;
        tasks.spawn(async move { client(&base, client_no, deliveries, &barrier).await });
    }
    barrier.wait().await;
    let measured_from = Instant::now();
    let (mut latencies_us, mut tally) = (Vec::new(), Tally::default());
    while let Some(joined) = tasks.join_next().await {
        let (latencies, counted) = joined?;
        latencies_us.extend(latencies);
        tally.add(&counted);
    }
    let elapsed = measured_from.elapsed();
    let server_peak_rss_kb = child_peak_rss_kb(pid);
    drop(server);
    latencies_us.sort_unstable();
    let sent = latencies_us.len() as u64;
    let elapsed_ms = u64::try_from(elapsed.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    println!(
        "{}",
        json!({
            "bench": "webhooks",
            "backend": match options.backend { BenchBackend::Postgres => "postgres", BenchBackend::Sqlite => "sqlite" },
            "clients": options.clients,
            "deliveries": sent,
            "redeliveries": tally.redeliveries,
            "kept": tally.kept,
            "answered_duplicate": tally.duplicates,
            "errors": tally.errors,
            "elapsed_ms": elapsed_ms,
            "webhooks_per_s": sent * 1000 / elapsed_ms,
            "p50_us": percentile(&latencies_us, 500),
            "p99_us": percentile(&latencies_us, 990),
            "max_us": latencies_us.last().copied().unwrap_or(0),
            "server_peak_rss_kb": server_peak_rss_kb,
            "target": "≥ 2,000 webhooks/s at p99 ≤ 50 ms (Postgres)",
        })
    );
    if tally.errors > 0 {
        return Err(BenchError::Check(format!(
            "{} deliveries failed",
            tally.errors
        )));
    }
    if tally.kept != sent - tally.redeliveries || tally.duplicates != tally.redeliveries {
        return Err(BenchError::Check(format!(
            "{} new events kept, {} redeliveries answered as duplicates: each event must be kept exactly once",
            tally.kept, tally.duplicates
        )));
    }
    Ok(())
}

/// What a client's deliveries came to.
#[derive(Clone, Debug, Default)]
struct Tally {
    kept: u64,
    duplicates: u64,
    redeliveries: u64,
    errors: u64,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.kept += other.kept;
        self.duplicates += other.duplicates;
        self.redeliveries += other.redeliveries;
        self.errors += other.errors;
    }
}

/// A small `invoice.payment_failed` event, as Stripe would send it.
fn event(id: &str, customer: usize) -> Vec<u8> {
    json!({
        "id": id,
        "object": "event",
        "type": "invoice.payment_failed",
        "api_version": "2026-07-29.dahlia",
        "created": 1_800_000_000,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "data": {"object": {
            "id": format!("in_{id}"),
            "object": "invoice",
            "customer": format!("cus_bench_{customer}"),
            "amount_due": 9700,
            "currency": "usd",
            "attempt_count": 1,
        }},
    })
    .to_string()
    .into_bytes()
}

/// One client: `deliveries` signed deliveries, every [`DUPLICATE_EVERY`]th a
/// redelivery of its previous event.
async fn client(
    base: &str,
    client_no: usize,
    deliveries: usize,
    barrier: &tokio::sync::Barrier,
) -> (Vec<u64>, Tally) {
    let mut tally = Tally::default();
    let Ok(http) = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(30))
        .build()
    else {
        barrier.wait().await;
        tally.errors += 1;
        return (Vec::new(), tally);
    };
    let url = format!("{base}/webhooks/stripe");
    let deliver = |body: Vec<u8>| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0));
        let signature = recur_api::stripe_signature::sign(&body, SECRET, now);
        http.post(&url)
            .header("stripe-signature", signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    for n in 0..WARM_UP_PER_CLIENT {
        let _ = deliver(event(&format!("evt_warm_{client_no}_{n}"), client_no)).await;
    }
    barrier.wait().await;
    let mut latencies = Vec::with_capacity(deliveries);
    // A redelivery is the same bytes again, as Stripe resends them.
    let mut previous: Option<Vec<u8>> = None;
    for n in 0..deliveries {
        let redelivery = n % DUPLICATE_EVERY == DUPLICATE_EVERY - 1 && previous.is_some();
        let body = match (&previous, redelivery) {
            (Some(body), true) => body.clone(),
            _ => event(
                &format!("evt_bench_{client_no}_{n}"),
                client_no * 1000 + n % 50,
            ),
        };
        let started = Instant::now();
        let answer = match deliver(body.clone()).await {
            Ok(response) if response.status().is_success() => {
                response.json::<serde_json::Value>().await.ok()
            }
            _ => None,
        };
        latencies.push(u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX));
        if redelivery {
            tally.redeliveries += 1;
        }
        match answer.as_ref().map(|a| a["duplicate"].as_bool()) {
            Some(Some(true)) => tally.duplicates += 1,
            Some(Some(false)) => tally.kept += 1,
            _ => tally.errors += 1,
        }
        previous = Some(body);
    }
    (latencies, tally)
}
