//! End to end: `recur serve --gateway stripe` and `recur stripe sync-catalog`,
//! as built (with or without the cargo feature `stripe`). With it, the catalog
//! sync runs against the local Stripe fake that scripts/test.sh starts.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A ledger file of the test's own, removed on drop.
struct TempLedger(PathBuf);

impl TempLedger {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!(
            "recur-stripe-cli-{name}-{}.sqlite",
            uuid::Uuid::new_v4().simple()
        )))
    }

    fn url(&self) -> String {
        format!("sqlite:{}", self.0.display())
    }
}

impl Drop for TempLedger {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

fn recur(args: &[&str], key: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_recur"));
    command
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RECUR_GATEWAY")
        .env("RECUR_DATA_DIR", std::env::temp_dir());
    match key {
        Some(key) => command.env("STRIPE_SECRET_KEY", key),
        None => command.env_remove("STRIPE_SECRET_KEY"),
    };
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn serve_with_the_stripe_gateway_says_what_is_missing_and_does_not_start() {
    let ledger = TempLedger::new("serve");
    let url = ledger.url();
    let args = [
        "serve",
        "--gateway",
        "stripe",
        "--listen",
        "127.0.0.1:0",
        "--database",
        &url,
        "--create",
    ];
    let output = recur(&args, None);
    assert!(!output.status.success(), "{output:?}");
    let said = stderr(&output);
    if cfg!(feature = "stripe") {
        assert!(said.contains("STRIPE_SECRET_KEY is not set"), "{said}");
    } else {
        assert!(said.contains("--features stripe"), "{said}");
    }
    // Nothing was opened: the ledger was not made.
    assert!(!ledger.0.exists());
    let unknown = recur(&["serve", "--gateway", "paypal"], None);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("simulated"),
        "{}",
        stderr(&unknown)
    );
}

#[cfg(not(feature = "stripe"))]
#[test]
fn sync_catalog_without_stripe_support_says_how_to_build_it() {
    let output = recur(&["stripe", "sync-catalog"], Some("sk_test_recur"));
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--features stripe"),
        "{}",
        stderr(&output)
    );
}

#[cfg(feature = "stripe")]
#[test]
fn sync_catalog_twice_creates_nothing_the_second_time() {
    assert!(
        std::env::var("STRIPE_API_BASE").is_ok(),
        "STRIPE_API_BASE is not set: run via `bash scripts/test.sh`, or start \
         scripts/localstripe/launcher.py and export STRIPE_API_BASE (docs/stripe.md)"
    );
    let ledger = TempLedger::new("sync");
    let url = ledger.url();
    let run = |json: bool| {
        let mut args = vec!["stripe", "sync-catalog", "--database", &url, "--create"];
        if json {
            args.push("--json");
        }
        recur(&args, Some("sk_test_recur"))
    };
    let first = run(true);
    assert!(first.status.success(), "{}", stderr(&first));
    let report: serde_json::Value = serde_json::from_slice(&first.stdout).unwrap();
    let plans = report["plans"].as_array().unwrap();
    assert_eq!(plans.len(), 4, "{report}");
    // The default catalog's products may already be there from an earlier run
    // on the same fake: created or unchanged, never a conflict.
    for plan in plans {
        let status = plan["product"]["status"].as_str().unwrap();
        assert!(["created", "unchanged"].contains(&status), "{report}");
    }
    let second = run(false);
    assert!(second.status.success(), "{}", stderr(&second));
    let text = String::from_utf8(second.stdout).unwrap();
    assert!(
        text.contains("plan elite_coaching: product recur_elite_coaching unchanged"),
        "{text}"
    );
    assert!(
        text.trim_end().ends_with("0 created, 0 conflicts"),
        "{text}"
    );
}
