//! End to end: how `recur` finds, makes or refuses its ledger, what its `--help`
//! says about the environment, where it listens and what its logs look like in a
//! pipe. Each test runs the real binary (issue 13, "the HTTP edge made solid").
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use recur_ledger::{Ledger, LedgerConfig, SystemClock};

const ADMIN_KEY: &str = "config-test-admin-key-0123456789";
/// How long a `recur` process may take to start or to give up.
const PROCESS_WAIT_MAX: Duration = Duration::from_secs(60);

/// A folder of the test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "recur-config-{name}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `recur` with a clean environment: no ledger, NATS or key from the caller's shell.
fn recur() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recur"));
    for var in [
        "DATABASE_URL",
        "NATS_URL",
        "RECUR_ADMIN_KEY",
        "RECUR_DATA_DIR",
        "RECUR_LOG_FORMAT",
        "RECUR_NATS_STREAM",
        "RECUR_RATE_LIMIT_PER_ADDRESS_BURST",
        "RECUR_RATE_LIMIT_PER_ADDRESS_PER_S",
        "RECUR_RATE_LIMIT_PER_KEY_BURST",
        "RECUR_RATE_LIMIT_PER_KEY_PER_S",
        "RECUR_MASTER_KEY",
        "RECUR_MASTER_KEY_FILE",
        "RECUR_MASTER_KEYS_RETIRED",
        "RECUR_STRIPE_WEBHOOK_SECRETS",
        "RECUR_SMTP_URL",
        "RECUR_SMTP_FROM",
        "RECUR_SMS_ACCOUNT_SID",
        "RECUR_SMS_URL",
        "RECUR_LINK_KEY",
        "RECUR_PUBLIC_URL",
        "RUST_LOG",
    ] {
        command.env_remove(var);
    }
    command
}

/// A running `recur serve`, killed on drop.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `GET path` over a plain HTTP/1.1 connection: the status line.
    fn get_status_line(&self, path: &str) -> String {
        let mut stream = std::net::TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.address
        )
        .unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        answer.lines().next().unwrap_or_default().to_owned()
    }
}

/// Starts `recur serve` with `args` on a free port unless `--listen` is among
/// them, and waits for the line that names its address.
fn serve(args: &[&str], configure: impl FnOnce(&mut Command)) -> Server {
    let mut command = recur();
    command.arg("serve");
    if !args.contains(&"--listen") {
        command.args(["--listen", "127.0.0.1:0"]);
    }
    command
        .args(args)
        .env("RECUR_ADMIN_KEY", ADMIN_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    configure(&mut command);
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let Some(address) = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
    else {
        let _ = child.kill();
        panic!("recur serve did not say where it listens: {line:?}");
    };
    Server {
        address: address.to_owned(),
        child,
    }
}

/// Runs `recur` with `args` to the end (bounded), with the environment set by `configure`.
fn run(args: &[&str], configure: impl FnOnce(&mut Command)) -> (Option<i32>, String, String) {
    let mut command = recur();
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    configure(&mut command);
    let mut child = command.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PROCESS_WAIT_MAX {
            let _ = child.kill();
            let Output { stdout, stderr, .. } = child.wait_with_output().unwrap();
            panic!(
                "recur {args:?} did not finish: it should have refused at once\n{}{}",
                String::from_utf8_lossy(&stdout),
                String::from_utf8_lossy(&stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn sqlite_files_exist(path: &Path) -> bool {
    ["", "-wal", "-shm"]
        .iter()
        .any(|suffix| Path::new(&format!("{}{suffix}", path.display())).exists())
}

/// Issue 13: `--database sqlite:/some/typo.sqlite` silently made a fresh, empty ledger.
#[test]
fn serve_refuses_a_missing_sqlite_path_and_creates_no_file() {
    let dir = TempDir::new("typo");
    let path = dir.path("typo.sqlite");
    let location = format!("sqlite:{}", path.display());
    let (code, stdout, stderr) = run(
        &["serve", "--listen", "127.0.0.1:0", "--database", &location],
        |_| {},
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(!stdout.contains("listening"), "it must not serve: {stdout}");
    assert!(
        stderr.contains(&path.display().to_string()) && stderr.contains("--create"),
        "the error names the path and how to make it: {stderr}"
    );
    assert!(!sqlite_files_exist(&path), "refusing must leave no file");

    // The same location through DATABASE_URL: still the user's word, still refused.
    let (code, _, stderr) = run(&["serve", "--listen", "127.0.0.1:0"], |c| {
        c.env("DATABASE_URL", &location);
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!sqlite_files_exist(&path));
}

/// Dunning messages carry update-card links: a server that sends them needs a
/// key that outlives it and the address customers reach it by.
#[test]
fn serve_refuses_to_send_dunning_messages_without_a_link_key_and_a_public_url() {
    let dir = TempDir::new("links");
    let location = format!("sqlite:{}", dir.path("links.sqlite").display());
    let args = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &location,
        "--create",
    ];
    let smtp = |c: &mut Command| {
        c.env("RECUR_SMTP_URL", "smtp://127.0.0.1:2525")
            .env("RECUR_SMTP_FROM", "Billing <billing@example.com>");
    };
    for (key, url) in [
        (None, None),
        (Some("ab".repeat(32)), None),
        (None, Some("https://pay.example.com")),
    ] {
        let (code, stdout, stderr) = run(&args, |c| {
            smtp(c);
            c.env("RECUR_ADMIN_KEY", ADMIN_KEY);
            if let Some(key) = &key {
                c.env("RECUR_LINK_KEY", key);
            }
            if let Some(url) = url {
                c.env("RECUR_PUBLIC_URL", url);
            }
        });
        assert_eq!(code, Some(1), "{key:?} {url:?}: {stdout}{stderr}");
        assert!(!stdout.contains("listening"), "it must not serve: {stdout}");
        assert!(
            stderr.contains("RECUR_LINK_KEY") && stderr.contains("RECUR_PUBLIC_URL"),
            "the error names what to set: {stderr}"
        );
    }
    // Both set: it serves.
    let server = serve(&["--database", &location], |c| {
        smtp(c);
        c.env("RECUR_LINK_KEY", "ab".repeat(32))
            .env("RECUR_PUBLIC_URL", "https://pay.example.com");
    });
    assert!(server.get_status_line("/readyz").contains(" 200 "));
}

#[test]
fn serve_with_create_makes_the_ledger_and_serves() {
    let dir = TempDir::new("create");
    let path = dir.path("new.sqlite");
    let location = format!("sqlite:{}", path.display());
    {
        let server = serve(&["--database", &location, "--create"], |_| {});
        assert!(server.get_status_line("/readyz").contains(" 200 "));
    }
    assert!(path.exists(), "--create makes the file");
    // Once it is there, no --create is needed.
    let server = serve(&["--database", &location], |_| {});
    assert!(server.get_status_line("/healthz").contains(" 200 "));
}

#[test]
fn mode_rwc_in_the_url_makes_the_ledger() {
    let dir = TempDir::new("rwc");
    let path = dir.path("rwc.sqlite");
    let location = format!("sqlite:{}?mode=rwc", path.display());
    let server = serve(&["--database", &location], |_| {});
    assert!(server.get_status_line("/readyz").contains(" 200 "));
    assert!(path.exists(), "mode=rwc makes the file");
}

/// The README's first set-up on a fresh machine: no --database, no DATABASE_URL.
#[test]
fn the_embedded_default_is_made_on_first_start() {
    let dir = TempDir::new("default");
    let server = serve(&[], |c| {
        c.env("RECUR_DATA_DIR", &dir.0);
    });
    assert!(server.get_status_line("/readyz").contains(" 200 "));
    assert!(dir.path("recur.sqlite").exists());
    // Without RECUR_MASTER_KEY, the key file beside it, private to its owner.
    let key_file = dir.path("recur-master.key");
    let text = std::fs::read_to_string(&key_file).unwrap();
    assert_eq!(text.len(), 64, "a 32-byte key in hex");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    drop(server);
    // A second start reads the same key rather than making another.
    let _again = serve(&[], |c| {
        c.env("RECUR_DATA_DIR", &dir.0);
    });
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), text);
}

/// A master key that is not 32 bytes stops `recur serve` at start, saying which
/// setting is wrong and never what it holds.
#[test]
fn a_malformed_master_key_stops_serve_and_is_never_echoed() {
    let dir = TempDir::new("master-key");
    let location = format!("sqlite:{}", dir.path("m.sqlite").display());
    let secret = "not-a-key-but-a-secret-all-the-same";
    let (code, stdout, stderr) = run(&["serve", "--database", &location, "--create"], |c| {
        c.env("RECUR_MASTER_KEY", secret);
    });
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("RECUR_MASTER_KEY"), "{stderr}");
    assert!(stderr.contains("32 bytes"), "{stderr}");
    assert!(
        !stderr.contains(secret) && !stdout.contains(secret),
        "{stdout}{stderr}"
    );
}

#[test]
fn keys_create_refuses_a_missing_ledger_unless_asked() {
    let dir = TempDir::new("keys");
    let path = dir.path("keys.sqlite");
    let location = format!("sqlite:{}", path.display());
    let args = ["keys", "create", "--role", "admin", "--database", &location];
    let (code, _, stderr) = run(&args, |_| {});
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("--create"), "{stderr}");
    assert!(!sqlite_files_exist(&path));

    let (code, stdout, stderr) = run(&[&args[..], &["--create"]].concat(), |_| {});
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.trim().starts_with("rk_"), "the key: {stdout}");
    assert!(path.exists());
}

#[test]
fn verify_on_a_missing_ledger_fails_clearly_and_creates_nothing() {
    let dir = TempDir::new("verify-missing");
    let path = dir.path("missing.sqlite");
    let location = format!("sqlite:{}", path.display());
    let (code, stdout, stderr) = run(&["ledger", "verify", "--database", &location], |_| {});
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains("no ledger at") && stderr.contains(&path.display().to_string()),
        "{stderr}"
    );
    assert!(!stdout.contains("intact"), "{stdout}");
    assert!(!sqlite_files_exist(&path));

    // Not even the embedded default: verify checks a ledger, it never starts one.
    let (code, _, stderr) = run(&["ledger", "verify"], |c| {
        c.env("RECUR_DATA_DIR", &dir.0);
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert!(!sqlite_files_exist(&dir.path("recur.sqlite")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_on_an_empty_ledger_says_nothing_was_checked_and_exits_3() {
    let dir = TempDir::new("verify-empty");
    let location = format!("sqlite:{}", dir.path("empty.sqlite").display());
    let ledger = Ledger::open(
        LedgerConfig::new(location.clone()).create_if_missing(true),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    drop(ledger);
    let (code, stdout, stderr) = run(&["ledger", "verify", "--database", &location], |_| {});
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("EMPTY") && !stdout.contains("intact"),
        "{stdout}"
    );
    let (code, stdout, _) = run(
        &["ledger", "verify", "--json", "--database", &location],
        |_| {},
    );
    assert_eq!(code, Some(3));
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["result"], "empty");
    assert_eq!(json["events_checked"], 0);
}

#[test]
fn help_lists_every_environment_variable_and_no_secret_value() {
    let password = "hunter2-never-shown";
    let secret_key = "admin-key-never-shown-0123456789";
    let master_key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    let help = |args: &[&str]| {
        let (code, stdout, stderr) = run(args, |c| {
            c.env(
                "DATABASE_URL",
                format!("postgres://alice:{password}@127.0.0.1/recur"),
            )
            .env("RECUR_ADMIN_KEY", secret_key)
            .env("RECUR_MASTER_KEY", master_key)
            .env("RECUR_MASTER_KEYS_RETIRED", master_key)
            .env("RECUR_STRIPE_WEBHOOK_SECRETS", master_key)
            .env(
                "RECUR_SEAL_EXPORT",
                format!("http://bob:{password}@127.0.0.1/seals"),
            );
        });
        assert_eq!(code, Some(0), "{stderr}");
        assert!(
            !stdout.contains(password)
                && !stdout.contains(secret_key)
                && !stdout.contains(master_key),
            "{args:?} --help printed a secret:\n{stdout}"
        );
        stdout
    };
    let serve = help(&["serve", "--help"]);
    for var in [
        "DATABASE_URL",
        "NATS_URL",
        "RECUR_ADMIN_KEY",
        "RECUR_DATA_DIR",
        "RECUR_LOG_FORMAT",
        "RECUR_NATS_STREAM",
        "RUST_LOG",
        "RECUR_METRICS_PROFILE",
        "RECUR_PAST_DUE_CHURN_DAYS",
        "RECUR_SEAL_EXPORT",
        "RECUR_RATE_LIMIT_PER_KEY_PER_S",
        "RECUR_RATE_LIMIT_PER_KEY_BURST",
        "RECUR_RATE_LIMIT_PER_ADDRESS_PER_S",
        "RECUR_RATE_LIMIT_PER_ADDRESS_BURST",
        "RECUR_MASTER_KEY",
        "RECUR_MASTER_KEY_FILE",
        "RECUR_MASTER_KEYS_RETIRED",
        "RECUR_STRIPE_WEBHOOK_SECRETS",
    ] {
        assert!(serve.contains(var), "serve --help misses {var}:\n{serve}");
    }
    assert!(serve.contains("--create"), "{serve}");
    let checks: &[(&[&str], &[&str])] = &[
        (
            &["ledger", "verify", "--help"],
            &["DATABASE_URL", "RECUR_DATA_DIR", "RUST_LOG"],
        ),
        (
            &["ledger", "seal", "--help"],
            &["DATABASE_URL", "RECUR_SEAL_EXPORT"],
        ),
        (&["ledger", "proof", "--help"], &["DATABASE_URL"]),
        (
            &["relay", "--help"],
            &["DATABASE_URL", "NATS_URL", "RECUR_NATS_STREAM"],
        ),
        (
            &["project", "--help"],
            &["DATABASE_URL", "NATS_URL", "RECUR_NATS_STREAM"],
        ),
        (&["demo", "--help"], &["RECUR_DATA_DIR"]),
        (&["keys", "create", "--help"], &["DATABASE_URL"]),
        (&["bench", "api", "--help"], &["DATABASE_URL"]),
        (&["bench", "projections", "--help"], &["NATS_URL"]),
    ];
    for (args, vars) in checks {
        let text = help(args);
        for var in *vars {
            assert!(text.contains(var), "{args:?} misses {var}:\n{text}");
        }
    }
}

#[test]
fn listen_takes_a_host_name() {
    let dir = TempDir::new("localhost");
    let location = format!("sqlite:{}", dir.path("l.sqlite").display());
    let server = serve(
        &[
            "--listen",
            "localhost:0",
            "--database",
            &location,
            "--create",
        ],
        |_| {},
    );
    assert!(
        server.get_status_line("/healthz").contains(" 200 "),
        "{}",
        server.address
    );
}

/// `serve` fails with a typed error now (it was `anyhow` inside the library):
/// the address, and the system's refusal as the cause, still reach the user.
#[test]
fn a_taken_port_is_refused_naming_the_address_and_the_cause() {
    let dir = TempDir::new("taken");
    let location = format!("sqlite:{}", dir.path("t.sqlite").display());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let (code, stdout, stderr) = run(
        &[
            "serve",
            "--listen",
            &address,
            "--database",
            &location,
            "--create",
        ],
        |_| {},
    );
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {address}")) && stderr.contains("in use"),
        "{stderr}"
    );
}

#[test]
fn logs_to_a_pipe_carry_no_colour_codes_and_follow_rust_log() {
    let dir = TempDir::new("logs");
    let location = format!("sqlite:{}", dir.path("logs.sqlite").display());
    let mut command = recur();
    let mut child = command
        .args(["serve", "--listen", "127.0.0.1:0", "--create"])
        .args(["--database", &location])
        .env("RECUR_ADMIN_KEY", ADMIN_KEY)
        // Info: every request is logged, so there is something to look at.
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let address = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the address")
        .to_owned();
    let stderr = child.stderr.take().unwrap();
    let server = Server { child, address };
    assert!(server.get_status_line("/healthz").contains(" 200 "));
    drop(server);
    let mut logs = String::new();
    BufReader::new(stderr).read_to_string(&mut logs).unwrap();
    assert!(
        logs.contains("answered"),
        "RUST_LOG=info shows each request: {logs}"
    );
    assert!(!logs.contains("\x1b["), "colour codes in a pipe: {logs:?}");
}

/// Issue 16: dunning policies from a file are checked before serving (the rule
/// broken named) and put in force as an event when they differ.
#[test]
fn dunning_policies_from_a_file_are_checked_and_recorded_once() {
    let dir = TempDir::new("dunning-policies");
    let location = format!("sqlite:{}", dir.path("d.sqlite").display());
    let shipped = include_str!("../commands/dunning/default.toml");
    let bad = dir.path("bad.toml");
    std::fs::write(&bad, shipped.replace("[120, 1440, 4320]", "[0, 1440]")).unwrap();
    let (code, stdout, stderr) = run(&["serve", "--database", &location, "--create"], |c| {
        c.env("RECUR_DUNNING_POLICIES", &bad);
    });
    assert_eq!(code, Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("1 minute to 60 days"), "{stderr}");
    assert!(!sqlite_files_exist(&dir.path("d.sqlite")), "nothing made");

    let good = dir.path("good.toml");
    std::fs::write(&good, shipped.replace("[120, 1440, 4320]", "[120, 2880]")).unwrap();
    let policies_set = || {
        let output = Command::new("sqlite3")
            .arg(dir.path("d.sqlite"))
            .arg("select count(*) from events where event_type = 'DunningPoliciesSet'")
            .output()
            .expect("sqlite3 (scripts/test.sh installs it)");
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    };
    for _ in 0..2 {
        let server = serve(&["--database", &location, "--create"], |c| {
            c.env("RECUR_DUNNING_POLICIES", &good);
        });
        drop(server);
    }
    assert_eq!(
        policies_set(),
        "1",
        "set once, the second start finds them in force"
    );
}
