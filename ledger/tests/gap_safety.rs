//! Regression tests for the global-order guarantee on Postgres: positions come from a
//! sequence and can commit out of order; a subscriber must never skip the slow one.
//! Each test forces the bad interleaving by holding a transaction open by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::Duration;

use recur_ledger::hash::{self, Content};
use recur_ledger::{EventId, ExpectedVersion, Ledger, NewEvent, Position, StreamId};
use serde_json::json;
use sqlx::{Postgres, Transaction};

fn one(ledger: &Ledger) -> Vec<NewEvent> {
    vec![NewEvent::new(EventId::new_at(ledger.clock().now()), "Tick", 1, &json!({})).unwrap()]
}

/// Appends one event (a new stream) inside a transaction the test controls.
async fn append_in(
    tx: &mut Transaction<'static, Postgres>,
    ledger: &Ledger,
    stream: &str,
) -> Position {
    let id = EventId::new_at(ledger.clock().now()).0;
    let recorded_at = hash::truncate_to_micros(ledger.clock().now());
    let (payload, metadata) = ("{}", r#"{"source":"api"}"#);
    let content = hash::content_hash(&Content {
        id: &id,
        stream_id: stream,
        event_type: "Slow",
        schema_version: 1,
        payload,
        metadata,
        recorded_at,
    });
    // The ledger's own protocol: take the xid first, then a position.
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut **tx)
        .await
        .unwrap();
    let chain = hash::chain_step(&hash::GENESIS, 1, &content);
    let position: i64 = sqlx::query_scalar(
        "INSERT INTO events (id, stream_id, version, event_type, schema_version, payload, metadata, recorded_at, \
                             chain_hash) \
         VALUES ($1, $2, 1, 'Slow', 1, $3::json, $4::json, $5, $6) RETURNING position",
    )
    .bind(id)
    .bind(stream)
    .bind(payload)
    .bind(metadata)
    .bind(recorded_at)
    .bind(&chain[..])
    .fetch_one(&mut **tx)
    .await
    .unwrap();
    Position(position as u64)
}

/// What a reader without the release horizon would see after `after`.
async fn naive_read(ledger: &Ledger, after: Position) -> Vec<Position> {
    sqlx::query_scalar::<_, i64>(
        "SELECT position FROM events WHERE position > $1 ORDER BY position",
    )
    .bind(after.0 as i64)
    .fetch_all(ledger.raw_postgres().unwrap())
    .await
    .unwrap()
    .into_iter()
    .map(|p| Position(p as u64))
    .collect()
}

async fn caught_up_subscription(ledger: &Ledger) -> (recur_ledger::Subscription, Position) {
    let first = ledger
        .append(
            &StreamId::parse("seed").unwrap(),
            ExpectedVersion::Any,
            one(ledger),
        )
        .await
        .unwrap();
    let mut subscription = ledger.subscribe(Position::START);
    assert_eq!(
        subscription.next().await.unwrap().position,
        first.positions[0]
    );
    (subscription, first.positions[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_does_not_skip_an_event_when_writers_commit_out_of_order() {
    let ledger = common::postgres().await;
    let (mut subscription, first) = caught_up_subscription(&ledger).await;

    let mut slow = ledger.raw_postgres().unwrap().begin().await.unwrap();
    let held = append_in(&mut slow, &ledger, "slow").await;
    let fast = ledger
        .append(
            &StreamId::parse("fast").unwrap(),
            ExpectedVersion::Any,
            one(&ledger),
        )
        .await
        .unwrap();
    let fast = fast.positions[0];
    assert!(held < fast);
    assert_eq!(
        naive_read(&ledger, first).await,
        vec![fast],
        "the bad interleaving is real: a naive reader sees the later position first"
    );

    let early = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(
        early.is_err(),
        "the subscription must wait for the held position, got {early:?}"
    );
    assert_eq!(
        ledger.read_all(first, 10).await.unwrap().len(),
        0,
        "read_all releases nothing past the hole"
    );

    slow.commit().await.unwrap();
    assert_eq!(subscription.next().await.unwrap().position, held);
    assert_eq!(subscription.next().await.unwrap().position, fast);
    let all: Vec<_> = ledger
        .read_all(Position::START, 10)
        .await
        .unwrap()
        .iter()
        .map(|e| e.position)
        .collect();
    assert_eq!(all, vec![first, held, fast]);
    assert!(ledger.verify().await.unwrap().is_intact());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stream_does_not_skip_when_an_older_transaction_id_commits_a_later_position_first() {
    // The trap of filtering by `xid < xmin` alone: B has the older xid, A the lower position.
    let ledger = common::postgres().await;
    let (mut subscription, first) = caught_up_subscription(&ledger).await;
    let pool = ledger.raw_postgres().unwrap();

    let mut b = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *b)
        .await
        .unwrap();
    let mut a = pool.begin().await.unwrap();
    let held = append_in(&mut a, &ledger, "a").await;
    let later = append_in(&mut b, &ledger, "b").await;
    assert!(held < later);
    b.commit().await.unwrap();
    assert_eq!(naive_read(&ledger, first).await, vec![later]);

    let early = tokio::time::timeout(Duration::from_millis(300), subscription.next()).await;
    assert!(
        early.is_err(),
        "released {early:?} while a lower position was still in flight"
    );
    a.commit().await.unwrap();
    assert_eq!(subscription.next().await.unwrap().position, held);
    assert_eq!(subscription.next().await.unwrap().position, later);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolled_back_position_becomes_a_hole_and_does_not_stall_subscribers() {
    let ledger = common::postgres().await;
    let (mut subscription, _) = caught_up_subscription(&ledger).await;
    let mut doomed = ledger.raw_postgres().unwrap().begin().await.unwrap();
    let hole = append_in(&mut doomed, &ledger, "doomed").await;
    let after = ledger
        .append(
            &StreamId::parse("after").unwrap(),
            ExpectedVersion::Any,
            one(&ledger),
        )
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(200), subscription.next())
            .await
            .is_err()
    );
    doomed.rollback().await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(next.position, after.positions[0]);
    assert!(next.position > hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unreachable_postgres_is_a_typed_error_not_a_panic() {
    let clock: std::sync::Arc<dyn recur_ledger::Clock> =
        std::sync::Arc::new(recur_ledger::SystemClock);
    let mut config = recur_ledger::LedgerConfig::new("postgres://postgres@127.0.0.1:1/nowhere");
    config.connect_timeout_ms = 1_000;
    let error = Ledger::open(config, clock.clone()).await.unwrap_err();
    assert_eq!(error.code(), "ledger_unavailable", "{error}");

    // Asked to create it, but its folder is not there: the file cannot be made.
    let error = Ledger::open(
        recur_ledger::LedgerConfig::new("sqlite:/nonexistent-dir/x/ledger.sqlite")
            .create_if_missing(true),
        clock,
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), "ledger_unavailable", "{error}");
}

/// Issue 13: a mistyped `sqlite:` path silently started a fresh, empty ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_missing_sqlite_file_is_not_found_and_not_created_unless_asked() {
    let clock: std::sync::Arc<dyn recur_ledger::Clock> =
        std::sync::Arc::new(recur_ledger::SystemClock);
    let dir = std::env::temp_dir().join(format!("recur-missing-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("typo.sqlite");
    let location = format!("sqlite:{}", path.display());

    let error = Ledger::open(
        recur_ledger::LedgerConfig::new(location.clone()),
        clock.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), "ledger_not_found", "{error}");
    assert!(
        error.to_string().contains(&path.display().to_string()),
        "{error}"
    );
    assert!(!path.exists(), "refusing must not leave a file behind");
    // A mistyped folder: nothing can be made there, and nothing is.
    let error = Ledger::open(
        recur_ledger::LedgerConfig::new(format!("sqlite:{}/nope/typo.sqlite", dir.display())),
        clock.clone(),
    )
    .await
    .unwrap_err();
    assert_eq!(error.code(), "ledger_unavailable", "{error}");
    assert!(error.to_string().contains("does not exist"), "{error}");
    assert!(!dir.join("nope").exists());

    // `mode=rwc` in the URL asks for the file, as the flag does.
    Ledger::open(
        recur_ledger::LedgerConfig::new(format!("{location}?mode=rwc")),
        clock.clone(),
    )
    .await
    .unwrap();
    assert!(path.exists());
    // Once it is there, no asking is needed.
    Ledger::open(recur_ledger::LedgerConfig::new(location), clock)
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_that_goes_away_gives_errors_and_writes_nothing() {
    let test = common::postgres().await;
    let ledger = test.ledger.clone();
    let s = StreamId::parse("doomed").unwrap();
    ledger
        .append(&s, ExpectedVersion::Any, one(&ledger))
        .await
        .unwrap();
    let url = test.location();
    let database = url.rsplit('/').next().unwrap().to_owned();
    let admin = common::admin_url();
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE \"{database}\" WITH (FORCE)"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let error = ledger
        .append(&s, ExpectedVersion::Any, one(&ledger))
        .await
        .unwrap_err();
    assert!(!error.is_client_error(), "{error:?}");
    assert!(
        matches!(error.code(), "ledger_unavailable" | "ledger_database_error"),
        "{error:?}"
    );
    assert!(ledger.read_all(Position::START, 10).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_stores_on_one_database_see_each_others_appends_through_the_constraints() {
    // Each store caches stream heads; a stale head must turn into a retry, never a fork.
    let first = common::postgres().await;
    let clock: std::sync::Arc<dyn recur_ledger::Clock> =
        std::sync::Arc::new(recur_ledger::SystemClock);
    let second = Ledger::open(recur_ledger::LedgerConfig::new(first.location()), clock)
        .await
        .unwrap();
    let s = StreamId::parse("shared").unwrap();
    first
        .append(&s, ExpectedVersion::NoStream, one(&first))
        .await
        .unwrap();
    second
        .append(&s, ExpectedVersion::Exact(1), one(&second))
        .await
        .unwrap();
    // `first` still believes the stream is at version 1.
    let error = first
        .append(&s, ExpectedVersion::Exact(1), one(&first))
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            recur_ledger::LedgerError::VersionConflict { actual: 2, .. }
        ),
        "{error:?}"
    );
    let appended = first
        .append(&s, ExpectedVersion::Any, one(&first))
        .await
        .unwrap();
    assert_eq!(appended.stream_version, 3);
    let appended = second
        .append(&s, ExpectedVersion::Exact(3), one(&second))
        .await
        .unwrap();
    assert_eq!(appended.stream_version, 4);
    // Both stores race on the same stream with `Any`.
    let mut tasks = Vec::new();
    for store in [
        first.ledger.clone(),
        second.clone(),
        first.ledger.clone(),
        second.clone(),
    ] {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..50 {
                store
                    .append(&s, ExpectedVersion::Any, one(&store))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let versions: Vec<u64> = first
        .read_stream(&s, 1, 1_000)
        .await
        .unwrap()
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=204).collect::<Vec<_>>());
    assert!(first.verify().await.unwrap().is_intact());
}
