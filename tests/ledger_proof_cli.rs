//! End to end: `recur ledger proof` and `recur ledger verify-proof` on real stores,
//! and seal export (`recur ledger seal --export`, and `recur serve`'s exporter) to a
//! file and to a local HTTP listener.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use recur_gateway::seal_export::{self, Exporter, SealExport};
use recur_ledger::{
    Clock, EventId, ExpectedVersion, Ledger, LedgerConfig, NewEvent, SealReport, StreamId,
    SystemClock,
};
use serde_json::{Value, json};
use sqlx::Connection;

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "recur-proof-cli-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

async fn open(location: &str, seal_interval_ms: u64) -> Ledger {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = LedgerConfig::new(location).create_if_missing(true);
    config.seal_interval_ms = seal_interval_ms;
    Ledger::open(config, clock).await.unwrap()
}

/// Three invoice streams of three events each, interleaved; `invoice-1`'s id is a UUID.
async fn seed(ledger: &Ledger, invoice: uuid::Uuid) {
    let clock = ledger.clock().clone();
    for v in 0..3 {
        for s in 0..3 {
            let stream = if s == 1 {
                StreamId::parse(format!("invoice-{invoice}")).unwrap()
            } else {
                StreamId::parse(format!("invoice-other-{s}")).unwrap()
            };
            let event = NewEvent::new(
                EventId::new_at(clock.now()),
                "InvoicePaid",
                1,
                &json!({ "amount": { "amount": format!("{}.00", 100 + v), "currency": "USD" } }),
            )
            .unwrap();
            ledger
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
    }
}

/// An edit of a proof's JSON.
type Tamper = Box<dyn Fn(&mut Value)>;

fn recur(args: &[&str]) -> (i32, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RECUR_SEAL_EXPORT")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn verify_proof(path: &Path) -> (i32, String, String) {
    recur(&["ledger", "verify-proof", path.to_str().unwrap()])
}

/// The proof's round trip through the binary, then each tampering of its JSON.
async fn round_trip(location: &str) {
    let ledger = open(location, 0).await;
    let invoice = uuid::Uuid::now_v7();
    seed(&ledger, invoice).await;
    let stream = format!("invoice-{invoice}");
    let out = temp("proof.json");
    let out_arg = out.to_str().unwrap();

    // Not sealed yet: refused, saying what to do.
    let (code, _, stderr) = recur(&[
        "ledger",
        "proof",
        &stream,
        "--out",
        out_arg,
        "--database",
        location,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("run `recur ledger seal`"), "{stderr}");
    assert!(!out.exists());

    let (code, _, stderr) = recur(&["ledger", "seal", "--database", location]);
    assert_eq!(code, 0, "{stderr}");
    // The stream by its name, by its API path and by its bare API id: one proof.
    for resource in [
        stream.clone(),
        format!("/v1/invoices/{invoice}"),
        invoice.to_string(),
    ] {
        let (code, stdout, stderr) = recur(&[
            "ledger",
            "proof",
            &resource,
            "--out",
            out_arg,
            "--database",
            location,
        ]);
        assert_eq!(code, 0, "{resource}: {stderr}");
        assert!(
            stdout.contains(&format!("intact: {stream}: 3 events")),
            "{stdout}"
        );
    }
    let (code, stdout, stderr) = verify_proof(&out);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    let head = ledger.newest_seal().await.unwrap().unwrap();
    assert!(
        stdout.starts_with(&format!("intact: {stream}: 3 events"))
            && stdout.contains(&format!("seal 1 {}", head.digest)),
        "{stdout}"
    );

    let json: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let tampered = temp("tampered.json");
    let tampers: Vec<(&str, Tamper, &str)> = vec![
        (
            "amount",
            Box::new(|j| {
                let payload = j["events"][1]["payload"]
                    .as_str()
                    .unwrap()
                    .replace("101.00", "901.00");
                j["events"][1]["payload"] = payload.into();
            }),
            "chain_hash check failed at event #2",
        ),
        (
            "dropped event",
            Box::new(|j| {
                j["events"].as_array_mut().unwrap().remove(0);
            }),
            "version_order check failed at event #1",
        ),
        (
            "dropped last event",
            Box::new(|j| {
                j["events"].as_array_mut().unwrap().pop();
            }),
            "seal_digest check failed at seal 1",
        ),
        (
            "swapped events",
            Box::new(|j| j["events"].as_array_mut().unwrap().swap(1, 2)),
            "version_order check failed at event #2",
        ),
        (
            "chain hash",
            Box::new(|j| j["events"][2]["chain_hash"] = "ab".repeat(32).into()),
            "chain_hash check failed at event #3",
        ),
        (
            "seal digest",
            Box::new(|j| j["seals"][0]["digest"] = "cd".repeat(32).into()),
            "seal_digest check failed at seal 1",
        ),
    ];
    for (name, tamper, expected) in tampers {
        let mut edited = json.clone();
        tamper(&mut edited);
        std::fs::write(&tampered, edited.to_string()).unwrap();
        let (code, stdout, stderr) = verify_proof(&tampered);
        assert_eq!(code, 2, "{name}: {stdout}{stderr}");
        assert!(
            stdout.starts_with(&format!("BROKEN: {stream}: {expected}")),
            "{name}: {stdout}"
        );
    }
    // --json: the same verdicts, as fields.
    let (code, stdout, _) = recur(&["ledger", "verify-proof", "--json", out_arg]);
    assert_eq!(code, 0);
    let intact: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(intact["result"], "intact");
    assert_eq!(intact["events"], 3);
    assert_eq!(intact["seals"][0]["digest"], head.digest.as_str());
    let mut edited = json.clone();
    edited["events"][0]["type"] = "InvoiceVoided".into();
    std::fs::write(&tampered, edited.to_string()).unwrap();
    let (code, stdout, _) = recur(&[
        "ledger",
        "verify-proof",
        "--json",
        tampered.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    let broken: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(broken["result"], "broken");
    assert_eq!(broken["check"], "chain_hash");
    assert!(
        broken["at"]
            .as_str()
            .unwrap()
            .starts_with("event #1 (position"),
        "{broken}"
    );
    // Unreadable input is an error, not a verdict.
    std::fs::write(&tampered, "{\"format\": \"recur.proof.v1\", \"events\": 3}").unwrap();
    let (code, _, stderr) = verify_proof(&tampered);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a readable proof"), "{stderr}");
    let (code, _, stderr) = verify_proof(&temp("missing.json"));
    assert_eq!(code, 1, "{stderr}");
    let _ = std::fs::remove_file(&tampered);
    let _ = std::fs::remove_file(&out);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_round_trips_through_the_binary_and_each_tampering_exits_2_on_sqlite() {
    let path = temp("ledger.sqlite");
    round_trip(&format!("sqlite:{}", path.display())).await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_proof_round_trips_through_the_binary_and_each_tampering_exits_2_on_postgres() {
    let admin = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run `bash scripts/test.sh`, or export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres");
    let database = format!("recur_proof_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL at DATABASE_URL must be running");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    round_trip(&format!("{base}/{database}")).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}

fn exported_lines(path: &Path) -> Vec<SealReport> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn ledger_seal_export_appends_a_line_per_seal_and_verify_proof_compares_with_it() {
    let path = temp("ledger.sqlite");
    let location = format!("sqlite:{}", path.display());
    let ledger = open(&location, 0).await;
    let invoice = uuid::Uuid::now_v7();
    seed(&ledger, invoice).await;
    // Seal 1 made without export: the file catches up on it later.
    ledger.seal().await.unwrap();
    seed(&ledger, uuid::Uuid::now_v7()).await;
    let file = temp("seals.jsonl");
    let target = format!("file:{}", file.display());
    let (code, stdout, stderr) = recur(&[
        "ledger",
        "seal",
        "--export",
        &target,
        "--database",
        &location,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("exported 2 seal(s)"), "{stdout}");
    let lines = exported_lines(&file);
    let stored = ledger.seals_after(0, 10).await.unwrap();
    assert_eq!(lines, stored, "one line per seal, as stored");
    // Nothing new: nothing appended.
    let (code, stdout, _) = recur(&[
        "ledger",
        "seal",
        "--export",
        &target,
        "--database",
        &location,
    ]);
    assert_eq!(code, 0);
    assert!(stdout.contains("nothing to seal") && stdout.contains("exported 0 seal(s)"));
    assert_eq!(exported_lines(&file).len(), 2);

    // An auditor compares the proof with the exported copies.
    let proof = temp("proof.json");
    let stream = format!("invoice-{invoice}");
    let (code, _, stderr) = recur(&[
        "ledger",
        "proof",
        &stream,
        "--out",
        proof.to_str().unwrap(),
        "--database",
        &location,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let check = |exported: &Path| {
        recur(&[
            "ledger",
            "verify-proof",
            proof.to_str().unwrap(),
            "--exported",
            exported.to_str().unwrap(),
        ])
    };
    let (code, stdout, _) = check(&file);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains("1 seal(s) match their exported copies"),
        "{stdout}"
    );
    // A copy that disagrees: the ledger's seal was rewritten since it was exported.
    let forged = temp("forged.jsonl");
    let mut copy = lines[0].clone();
    copy.digest = "ee".repeat(32);
    std::fs::write(&forged, serde_json::to_string(&copy).unwrap()).unwrap();
    let (code, stdout, _) = check(&forged);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stdout.contains("exported_digest check failed at seal 1"),
        "{stdout}"
    );
    // Exporting into a file whose last seal is not this ledger's is refused
    // (it would skip the seals it seems to hold), and the file is left alone.
    let (code, _, stderr) = recur(&[
        "ledger",
        "seal",
        "--export",
        &format!("file:{}", forged.display()),
        "--database",
        &location,
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is not this ledger's"), "{stderr}");
    assert_eq!(exported_lines(&forged), vec![copy.clone()]);

    // https is refused before anything is sealed, without echoing a password.
    let (code, _, stderr) = recur(&[
        "ledger",
        "seal",
        "--export",
        "https://u:hunter2secret@example.com/s",
        "--database",
        &location,
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("without TLS") && !stderr.contains("hunter2secret"),
        "{stderr}"
    );
    for p in [&file, &proof, &forged] {
        let _ = std::fs::remove_file(p);
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A tiny HTTP listener: answers `fail_first` requests 503, then 200, and
/// hands each body it took over the channel.
async fn listener(fail_first: usize) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/seals", socket.local_addr().unwrap());
    let (sender, receiver) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut served = 0;
        loop {
            let (mut conn, _) = socket.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buffer = [0u8; 4096];
            // Read the head, then as much body as Content-Length says.
            let body = loop {
                let n = conn.read(&mut buffer).await.unwrap();
                if n == 0 {
                    break None;
                }
                request.extend_from_slice(&buffer[..n]);
                let text = String::from_utf8_lossy(&request).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap())
                        })
                        .unwrap_or(0);
                    if body.len() >= length {
                        break Some(body.to_owned());
                    }
                }
            };
            served += 1;
            let status = if served <= fail_first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            let _ = conn
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            if served > fail_first
                && let Some(body) = body
            {
                let _ = sender.send(body);
            }
        }
    });
    (url, receiver)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_serve_exporter_posts_each_background_seal_and_retries_a_refusal() {
    let path = temp("ledger.sqlite");
    // The store seals in the background every 200 ms, as `recur serve`'s does every minute.
    let ledger = open(&format!("sqlite:{}", path.display()), 200).await;
    let (url, mut received) = listener(1).await;
    let target = url.parse::<SealExport>().unwrap().target().unwrap();
    let exporter = Exporter::new(target, 0).unwrap();
    let (stop, stopping) = tokio::sync::oneshot::channel::<()>();
    // A long poll: only the sealer's notification can wake the exporter in time.
    let task = tokio::spawn(seal_export::run(
        ledger.clone(),
        exporter,
        Duration::from_secs(3_600),
        async move {
            let _ = stopping.await;
        },
    ));
    seed(&ledger, uuid::Uuid::now_v7()).await;
    let first: SealReport = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("the first seal is posted, after one refused attempt")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first.seal_no, 1);
    seed(&ledger, uuid::Uuid::now_v7()).await;
    let second: SealReport = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("the next background seal is posted")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(second.seal_no, 2);
    assert_eq!(second.previous_digest, first.digest);
    assert_eq!(
        ledger.seals_after(0, 10).await.unwrap(),
        vec![first, second]
    );
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the exporter stops when told")
        .unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_http_target_fails_the_round_without_counting_the_seal_or_printing_the_password()
 {
    let path = temp("ledger.sqlite");
    let ledger = open(&format!("sqlite:{}", path.display()), 0).await;
    seed(&ledger, uuid::Uuid::now_v7()).await;
    ledger.seal().await.unwrap();
    // A port nobody listens on: every attempt fails, the error names no URL secret.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let url = format!("http://user:hunter2secret@127.0.0.1:{port}/seals");
    let mut exporter =
        Exporter::new(url.parse::<SealExport>().unwrap().target().unwrap(), 0).unwrap();
    let error = exporter.export_pending(&ledger).await.unwrap_err();
    assert_eq!(error.code(), "seal_export_http_failed");
    let message = recur_ledger::Chain(&error).to_string();
    assert!(!message.contains("hunter2secret"), "{message}");
    assert!(message.contains("seal 1"), "{message}");
    assert_eq!(exporter.last_exported(), 0, "not counted as exported");
    let _ = std::fs::remove_file(&path);
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// `recur serve --seal-export`: the flag reaches the exporter (what is pending is
/// exported at start), and a target it cannot use stops the start, saying why.
#[tokio::test(flavor = "multi_thread")]
async fn recur_serve_exports_pending_seals_at_start_and_refuses_https() {
    use std::io::{BufRead as _, BufReader};
    let path = temp("ledger.sqlite");
    let location = format!("sqlite:{}", path.display());
    let ledger = open(&location, 0).await;
    seed(&ledger, uuid::Uuid::now_v7()).await;
    let seal = ledger.seal().await.unwrap().remove(0);
    let file = temp("served-seals.jsonl");
    let export = format!("file:{}", file.display());
    let serve = |export: &str| {
        Command::new(env!("CARGO_BIN_EXE_recur"))
            .args(["serve", "--listen", "127.0.0.1:0", "--database", &location])
            .env("RECUR_SEAL_EXPORT", export)
            .env_remove("DATABASE_URL")
            .env_remove("NATS_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut server = serve(&export);
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while exported_lines(&file).is_empty() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = server.kill();
    let _ = server.wait();
    assert_eq!(exported_lines(&file), vec![seal]);

    let refused = serve("https://example.com/seals")
        .wait_with_output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("RECUR_SEAL_EXPORT") && stderr.contains("without TLS"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(&file);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}
