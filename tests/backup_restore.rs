//! Backup and restore exactly as docs/operations.md tells an operator to do them,
//! with the real tools (`recur`, `pg_dump`, `pg_restore`, `psql`, `sqlite3`): a
//! restored ledger verifies, with the same events, streams, seals and head digest,
//! the same last position and the same trial balance (as restored, and rebuilt from
//! the first event), and goes on taking appends and seals after the restore.
//!
//! A missing tool fails the test with how to install it: scripts/test.sh installs
//! them, and CI never skips a test.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use recur_ledger::{
    Clock, EventId, ExpectedVersion, Ledger, LedgerConfig, NewEvent, StreamId, SystemClock,
};
use recur_projections::db::Db;
use serde_json::{Value, json};
use sqlx::Connection;

/// Runs `program` and returns its output; a missing program fails loudly.
fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RECUR_DATA_DIR")
        .output()
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {program} ({error}): install it (Debian: postgresql-client for \
                 pg_dump, pg_restore and psql; sqlite3 for sqlite3), or run `bash scripts/test.sh`, \
                 which does"
            )
        })
}

/// Runs `program`, requires success and returns its standard output.
fn run_ok(program: &str, args: &[&str]) -> String {
    let output = run(program, args);
    assert!(
        output.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

fn recur() -> &'static str {
    env!("CARGO_BIN_EXE_recur")
}

/// A small year of the coaching business, written through the real binary, then sealed.
fn write_demo_ledger(location: &str) {
    run_ok(
        recur(),
        &[
            "demo",
            "--customers",
            "40",
            "--months",
            "4",
            "--seed",
            "13",
            "--quiet",
            "--database",
            location,
        ],
    );
    run_ok(recur(), &["ledger", "seal", "--database", location]);
}

/// `recur ledger verify --json`; requires exit 0 and an intact report.
fn verify(location: &str) -> Value {
    let report: Value = serde_json::from_str(&run_ok(
        recur(),
        &["ledger", "verify", "--json", "--database", location],
    ))
    .unwrap();
    assert_eq!(report["problem_count"], 0, "{report:#}");
    report
}

/// What must survive a restore unchanged.
#[derive(Debug, PartialEq)]
struct Books {
    /// The verify report: events, streams, seals, unsealed events, head digest.
    verify: Value,
    /// The last released position.
    last_position: u64,
    /// (account, currency, debits, credits) from the accounts read model.
    trial_balance: Vec<(String, String, i64, i64)>,
}

async fn trial_balance(ledger: &Ledger) -> Vec<(String, String, i64, i64)> {
    let db = Db::of(ledger).unwrap();
    recur_projections::accounts::trial_balance(&db, None)
        .await
        .unwrap()
        .into_iter()
        .map(|b| (b.account, b.currency, b.debit_minor, b.credit_minor))
        .collect()
}

async fn open(location: &str) -> Ledger {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ledger::open(LedgerConfig::new(location), clock)
        .await
        .unwrap()
}

/// The books as they stand: the read models are read as they are, not caught up.
async fn books(location: &str) -> Books {
    let verify = verify(location);
    let ledger = open(location).await;
    let books = Books {
        verify,
        last_position: ledger.last_position().await.unwrap().0,
        trial_balance: trial_balance(&ledger).await,
    };
    drop(ledger);
    books
}

/// The restored ledger: the books are the original's, as restored and after every
/// read model is rebuilt from the first event; then it takes a new event (an API
/// key) at the next position and seals it onto the restored seal chain.
async fn check_restored(original: &Books, restored: &str) {
    let as_restored = books(restored).await;
    assert_eq!(&as_restored, original, "the restore changed the books");
    assert!(original.trial_balance.len() > 3, "{original:?}");
    let (debits, credits) = original
        .trial_balance
        .iter()
        .fold((0, 0), |(d, c), b| (d + b.2, c + b.3));
    assert_eq!(debits, credits, "the trial balance is zero");

    run_ok(
        recur(),
        &["projections", "rebuild", "--all", "--database", restored],
    );
    assert_eq!(
        &books(restored).await,
        original,
        "the read models rebuilt from the restored events differ"
    );

    run_ok(
        recur(),
        &["keys", "create", "--role", "admin", "--database", restored],
    );
    run_ok(recur(), &["ledger", "seal", "--database", restored]);
    let after = verify(restored);
    let count = |report: &Value, field: &str| report[field].as_u64().unwrap();
    assert_eq!(
        count(&after, "events_checked"),
        count(&original.verify, "events_checked") + 1
    );
    assert_eq!(
        count(&after, "seals_checked"),
        count(&original.verify, "seals_checked") + 1,
        "the new event is sealed onto the restored chain"
    );
    assert_eq!(count(&after, "unsealed_events"), 0);
    let ledger = open(restored).await;
    assert!(
        ledger.last_position().await.unwrap().0 > original.last_position,
        "a restored ledger hands out positions after the restored ones"
    );
    drop(ledger);
}

/// The statement that must fail on a restored ledger: the append-only triggers came back.
const DELETE_FIRST_EVENT: &str =
    "DELETE FROM events WHERE position = (SELECT min(position) FROM events)";

fn assert_append_only(output: &Output) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains("the ledger is append-only"),
        "a restored ledger let an event be deleted: {stderr}"
    );
}

// --- Postgres ------------------------------------------------------------------

/// The server URL with `database` in place of its database.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

/// Databases made by this test, dropped when it ends (whatever the outcome).
struct Databases {
    admin: String,
    names: Vec<String>,
}

impl Drop for Databases {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = run(
                "psql",
                &[
                    "-X",
                    "-q",
                    &self.admin,
                    "-c",
                    &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                ],
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_ledger_restored_from_pg_dump_verifies_with_the_same_books() {
    let admin = std::env::var("DATABASE_URL").expect(
        "DATABASE_URL is not set: run `bash scripts/test.sh`, or export \
         DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres",
    );
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut databases = Databases {
        admin: admin.clone(),
        names: Vec::new(),
    };
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("PostgreSQL at DATABASE_URL must be running");
    let source_name = format!("recur_backup_src_{id}");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE DATABASE \"{source_name}\""
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    databases.names.push(source_name.clone());
    let source = with_database(&admin, &source_name);
    write_demo_ledger(&source);
    let original = books(&source).await;

    // docs/operations.md, "Back up a Postgres ledger".
    let dir = scratch_dir();
    let dump = dir.path.join("recur.dump");
    let dump = dump.to_str().unwrap();
    run_ok(
        "pg_dump",
        &["--format=custom", &format!("--file={dump}"), &source],
    );
    // docs/operations.md, "Restore a Postgres ledger": a fresh, empty database.
    let restored_name = format!("recur_backup_dst_{id}");
    databases.names.push(restored_name.clone());
    run_ok(
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            &admin,
            "-c",
            &format!("CREATE DATABASE \"{restored_name}\""),
        ],
    );
    let restored = with_database(&admin, &restored_name);
    run_ok(
        "pg_restore",
        &[
            "--no-owner",
            "--single-transaction",
            "--exit-on-error",
            &format!("--dbname={restored}"),
            dump,
        ],
    );
    check_restored(&original, &restored).await;
    assert_append_only(&run(
        "psql",
        &[
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            &restored,
            "-c",
            DELETE_FIRST_EVENT,
        ],
    ));
    // The source is untouched by all this.
    assert_eq!(books(&source).await, original);
}

// --- SQLite --------------------------------------------------------------------

/// A temporary folder, removed when dropped.
struct ScratchDir {
    path: PathBuf,
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn scratch_dir() -> ScratchDir {
    let path = std::env::temp_dir().join(format!(
        "recur-backup-test-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&path).unwrap();
    ScratchDir { path }
}

fn sqlite_location(path: &Path) -> String {
    format!("sqlite:{}", path.display())
}

/// Restores a backup file as docs/operations.md says: copied, with the server
/// stopped, to where the ledger lives (here a fresh path).
fn restore_file(backup: &Path, to: &Path) -> String {
    std::fs::copy(backup, to).unwrap();
    sqlite_location(to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_ledger_backed_up_while_in_use_restores_with_the_same_books() {
    let dir = scratch_dir();
    let live_path = dir.path.join("recur.sqlite");
    let live = sqlite_location(&live_path);
    write_demo_ledger(&live);

    // The ledger is in use while it is backed up: this process holds it open and has
    // just committed events, which sit in its write-ahead log, not yet in the file.
    let ledger = open(&live).await;
    let clock = SystemClock;
    for n in 0..3 {
        let stream = StreamId::parse(format!("backup-test-{n}")).unwrap();
        let event =
            NewEvent::new(EventId::new_at(clock.now()), "Noted", 1, &json!({"n": n})).unwrap();
        ledger
            .append(&stream, ExpectedVersion::NoStream, vec![event])
            .await
            .unwrap();
    }
    assert_eq!(ledger.seal().await.unwrap().len(), 1);
    let original = books(&live).await;
    assert!(
        std::fs::metadata(format!("{}-wal", live_path.display()))
            .unwrap()
            .len()
            > 0,
        "the recent commits are in the write-ahead log"
    );

    // The trap the docs warn of: a copy of the main file alone misses those commits.
    let copied = dir.path.join("copied.sqlite");
    std::fs::copy(&live_path, &copied).unwrap();
    let naive = run(
        recur(),
        &[
            "ledger",
            "verify",
            "--json",
            "--database",
            &sqlite_location(&copied),
        ],
    );
    // Either the copy cannot be read at all, or it lacks the latest commits.
    if naive.status.success() {
        let naive: Value = serde_json::from_slice(&naive.stdout).unwrap();
        assert!(
            naive["events_checked"].as_u64() < original.verify["events_checked"].as_u64(),
            "a plain copy of a live WAL database should have missed the latest commits: {naive:#}"
        );
    } else {
        eprintln!(
            "the plain copy does not even open: {}",
            String::from_utf8_lossy(&naive.stderr)
        );
    }

    // docs/operations.md, "Back up a SQLite ledger": `recur ledger backup`...
    let backup = dir.path.join("backup.sqlite");
    let printed = run_ok(
        recur(),
        &[
            "ledger",
            "backup",
            "--database",
            &live,
            "--to",
            backup.to_str().unwrap(),
        ],
    );
    let events = original.verify["events_checked"].as_u64().unwrap();
    assert!(
        printed.contains(&format!(
            "backed up {events} events (last position {})",
            original.last_position
        )),
        "{printed}"
    );
    // ...which never overwrites a file...
    let again = run(
        recur(),
        &[
            "ledger",
            "backup",
            "--database",
            &live,
            "--to",
            backup.to_str().unwrap(),
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    // ...or the sqlite3 shell's online backup.
    let shell_backup = dir.path.join("shell-backup.sqlite");
    run_ok(
        "sqlite3",
        &[
            live_path.to_str().unwrap(),
            &format!(".backup '{}'", shell_backup.display()),
        ],
    );
    drop(ledger);

    for (name, file) in [("recur", &backup), ("sqlite3", &shell_backup)] {
        let restored_path = dir.path.join(format!("restored-{name}.sqlite"));
        let restored = restore_file(file, &restored_path);
        check_restored(&original, &restored).await;
        assert_append_only(&run(
            "sqlite3",
            &[
                // Wait out a lock (a closing connection's checkpoint) rather than fail.
                "-cmd",
                ".timeout 10000",
                restored_path.to_str().unwrap(),
                DELETE_FIRST_EVENT,
            ],
        ));
    }
}

#[test]
fn ledger_backup_refuses_a_postgres_ledger_and_a_missing_file() {
    let postgres = run(
        recur(),
        &[
            "ledger",
            "backup",
            "--database",
            "postgres://nobody@127.0.0.1:1/none",
            "--to",
            "/nonexistent/backup.sqlite",
        ],
    );
    assert!(!postgres.status.success());
    assert!(String::from_utf8_lossy(&postgres.stderr).contains("pg_dump"));
    let dir = scratch_dir();
    let missing = dir.path.join("missing.sqlite");
    let to = dir.path.join("backup.sqlite");
    let output = run(
        recur(),
        &[
            "ledger",
            "backup",
            "--database",
            &sqlite_location(&missing),
            "--to",
            to.to_str().unwrap(),
        ],
    );
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("no SQLite ledger"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!missing.exists() && !to.exists(), "nothing was created");
}
