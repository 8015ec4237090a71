//! End to end: `recur ledger verify` on real stores, before and after tampering.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::Arc;

use recur_ledger::{
    Clock, EventId, ExpectedVersion, Ledger, LedgerConfig, NewEvent, StreamId, SystemClock,
};
use serde_json::json;
use sqlx::Connection;

async fn seed(location: &str) -> Ledger {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let ledger = Ledger::open(
        LedgerConfig::new(location).create_if_missing(true),
        clock.clone(),
    )
    .await
    .unwrap();
    for s in 0..3 {
        let stream = StreamId::parse(format!("invoice-{s}")).unwrap();
        let events = (0..3)
            .map(|v| {
                NewEvent::new(
                    EventId::new_at(clock.now()),
                    "InvoiceIssued",
                    1,
                    &json!({ "v": v }),
                )
                .unwrap()
            })
            .collect();
        ledger
            .append(&stream, ExpectedVersion::NoStream, events)
            .await
            .unwrap();
    }
    assert_eq!(ledger.seal().await.unwrap().len(), 1);
    ledger
}

fn verify(location: &str) -> (i32, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(["ledger", "verify", "--database", location])
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    (
        output.status.code().unwrap_or(-1),
        format!("{stdout}{stderr}"),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_exits_non_zero_at_the_first_edited_event_on_sqlite() {
    let path = std::env::temp_dir().join(format!(
        "recur-cli-{}.sqlite",
        uuid::Uuid::new_v4().simple()
    ));
    let location = format!("sqlite:{}", path.display());
    let ledger = seed(&location).await;
    let (code, output) = verify(&location);
    assert_eq!(code, 0, "{output}");
    assert!(
        output.contains("events checked:  9") && output.contains("intact"),
        "{output}"
    );

    let pool = ledger.raw_sqlite().unwrap();
    sqlx::raw_sql("DROP TRIGGER events_no_update; UPDATE events SET payload = '{\"v\":42}' WHERE position = 5")
        .execute(pool)
        .await
        .unwrap();
    let (code, output) = verify(&location);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains("first break at position 5:"), "{output}");
    drop(ledger);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_exits_non_zero_when_a_whole_stream_is_deleted_on_postgres() {
    let admin = std::env::var("DATABASE_URL")
        .expect("DATABASE_URL is not set: run `bash scripts/test.sh`, or export DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres");
    let database = format!("recur_cli_{}", uuid::Uuid::new_v4().simple());
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
    let location = format!("{base}/{database}");
    let ledger = seed(&location).await;
    assert_eq!(verify(&location).0, 0);

    let mut tx = ledger.raw_postgres().unwrap().begin().await.unwrap();
    sqlx::raw_sql("SET LOCAL session_replication_role = replica; DELETE FROM events WHERE stream_id = 'invoice-1'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (code, output) = verify(&location);
    assert_eq!(code, 2, "{output}");
    assert!(
        output.contains("BROKEN") && output.contains("first break at position"),
        "{output}"
    );
    assert!(output.contains("seal 1"), "{output}");
    drop(ledger);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE {database} WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
}
