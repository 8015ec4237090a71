//! The conformance suite: every test runs against Postgres and against SQLite.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::TestLedger;
use recur_ledger::limits::{EVENTS_PER_APPEND_MAX, PAYLOAD_BYTES_MAX};
use recur_ledger::{
    EventId, ExpectedVersion, IdempotencyKey, Ledger, LedgerError, Metadata, NewEvent, Position,
    Source, StreamId, Upcasters,
};
use serde_json::json;
use uuid::Uuid;

fn stream(name: &str) -> StreamId {
    StreamId::parse(name).unwrap()
}

fn event(ledger: &Ledger, event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent::new(
        EventId::new_at(ledger.clock().now()),
        event_type,
        1,
        &payload,
    )
    .unwrap()
}

fn events(ledger: &Ledger, count: usize) -> Vec<NewEvent> {
    (0..count)
        .map(|i| event(ledger, "InvoiceIssued", json!({ "n": i })))
        .collect()
}

async fn everything(ledger: &Ledger) -> Vec<recur_ledger::RecordedEvent> {
    let mut all = Vec::new();
    let mut after = Position::START;
    loop {
        let page = ledger.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { return all };
        after = last.position;
        all.extend(page);
    }
}

async fn append_then_read_stream_returns_the_events_in_order(ledger: TestLedger) {
    let s = stream("subscription-1");
    let appended = ledger
        .append(&s, ExpectedVersion::NoStream, events(&ledger, 3))
        .await
        .unwrap();
    assert_eq!(appended.stream_version, 3);
    assert_eq!(appended.positions.len(), 3);
    assert!(!appended.replayed);
    assert!(appended.positions.windows(2).all(|w| w[0] < w[1]));
    let read = ledger.read_stream(&s, 1, 100).await.unwrap();
    assert_eq!(
        read.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
    assert_eq!(
        read.iter().map(|e| e.position).collect::<Vec<_>>(),
        appended.positions
    );
    let from_two = ledger.read_stream(&s, 2, 100).await.unwrap();
    assert_eq!(from_two.len(), 2);
    assert_eq!(from_two[0].payload, r#"{"n":1}"#);
    assert_eq!(ledger.stream_version(&s).await.unwrap(), 3);
    assert_eq!(
        ledger
            .stream_version(&stream("subscription-none"))
            .await
            .unwrap(),
        0
    );
}

async fn the_envelope_round_trips_every_field(ledger: TestLedger) {
    let s = stream("invoice-7");
    let id = EventId::new_at(ledger.clock().now());
    let metadata = Metadata {
        actor: Some("key_123".into()),
        causation_id: Some(Uuid::now_v7()),
        correlation_id: Some(Uuid::now_v7()),
        source: Source::Webhook,
        idempotency_key: Some(IdempotencyKey::parse("evt_1").unwrap()),
        external_id: Some("evt_1Pgc76B7WZ01zgkWwyRHS12y".into()),
    };
    let payload = r#"{"amount":"12.30","currency":"USD","lines":[1,2]}"#;
    let new = NewEvent::from_json(id, "InvoicePaid", 3, payload.to_owned())
        .unwrap()
        .with_metadata(metadata.clone());
    let appended = ledger
        .append(&s, ExpectedVersion::Any, vec![new])
        .await
        .unwrap();
    let read = &ledger.read_stream(&s, 1, 10).await.unwrap()[0];
    assert_eq!(read.id, id);
    assert_eq!(read.stream_id, s);
    assert_eq!(read.stream_version, 1);
    assert_eq!(read.position, appended.positions[0]);
    assert_eq!(read.event_type, "InvoicePaid");
    assert_eq!(read.schema_version, 3);
    assert_eq!(read.payload, payload, "payload is stored byte for byte");
    assert_eq!(read.metadata, metadata);
    assert_eq!(read.recorded_at.offset(), time::UtcOffset::UTC);
    let age = ledger.clock().now() - read.recorded_at;
    assert!(age >= time::Duration::ZERO && age < time::Duration::seconds(60));
}

async fn no_stream_on_an_existing_stream_is_a_conflict_carrying_the_actual_version(
    ledger: TestLedger,
) {
    let s = stream("customer-1");
    ledger
        .append(&s, ExpectedVersion::NoStream, events(&ledger, 2))
        .await
        .unwrap();
    let error = ledger
        .append(&s, ExpectedVersion::NoStream, events(&ledger, 1))
        .await
        .unwrap_err();
    match error {
        LedgerError::VersionConflict {
            actual,
            expected,
            stream: conflicted,
        } => {
            assert_eq!(actual, 2);
            assert_eq!(expected, ExpectedVersion::NoStream);
            assert_eq!(conflicted, s);
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        ledger.stream_version(&s).await.unwrap(),
        2,
        "nothing was written"
    );
}

async fn a_stale_exact_version_is_refused_and_writes_nothing(ledger: TestLedger) {
    let s = stream("customer-2");
    ledger
        .append(&s, ExpectedVersion::Exact(0), events(&ledger, 1))
        .await
        .unwrap();
    ledger
        .append(&s, ExpectedVersion::Exact(1), events(&ledger, 2))
        .await
        .unwrap();
    for wrong in [0, 1, 2, 4, 100] {
        let error = ledger
            .append(&s, ExpectedVersion::Exact(wrong), events(&ledger, 2))
            .await
            .unwrap_err();
        assert!(
            matches!(error, LedgerError::VersionConflict { actual: 3, .. }),
            "{wrong}: {error:?}"
        );
        assert_eq!(error.code(), "version_conflict");
    }
    assert_eq!(ledger.stream_version(&s).await.unwrap(), 3);
    assert_eq!(everything(&ledger).await.len(), 3);
}

async fn expected_any_appends_at_the_end(ledger: TestLedger) {
    let s = stream("customer-3");
    let first = ledger
        .append(&s, ExpectedVersion::Any, events(&ledger, 2))
        .await
        .unwrap();
    let second = ledger
        .append(&s, ExpectedVersion::Any, events(&ledger, 1))
        .await
        .unwrap();
    assert_eq!(first.stream_version, 2);
    assert_eq!(second.stream_version, 3);
}

async fn reappending_committed_event_ids_returns_the_original_positions_and_writes_nothing(
    ledger: TestLedger,
) {
    let s = stream("payment-1");
    let batch = events(&ledger, 3);
    let first = ledger
        .append(&s, ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    // A retry after a lost answer: same ids, same (now stale) expected version.
    let retry = ledger
        .append(&s, ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.positions, first.positions);
    assert_eq!(retry.stream_version, 3);
    assert_eq!(everything(&ledger).await.len(), 3);
}

async fn reappending_with_a_committed_idempotency_key_returns_the_original_positions(
    ledger: TestLedger,
) {
    let s = stream("payment-2");
    let key = IdempotencyKey::parse("charge-invoice-9-attempt-1").unwrap();
    let keyed = |ledger: &Ledger| {
        events(ledger, 2)
            .into_iter()
            .map(|e| {
                e.with_metadata(Metadata {
                    idempotency_key: Some(key.clone()),
                    ..Metadata::default()
                })
            })
            .collect::<Vec<_>>()
    };
    let first = ledger
        .append(&s, ExpectedVersion::Any, keyed(&ledger))
        .await
        .unwrap();
    // New event ids (the command ran again), same key: still one append.
    let retry = ledger
        .append(&s, ExpectedVersion::Any, keyed(&ledger))
        .await
        .unwrap();
    assert!(retry.replayed);
    assert_eq!(retry.positions, first.positions);
    assert_eq!(everything(&ledger).await.len(), 2);
    // The same key on another stream is a client error, and writes nothing.
    let error = ledger
        .append(&stream("payment-3"), ExpectedVersion::Any, keyed(&ledger))
        .await
        .unwrap_err();
    assert!(
        matches!(error, LedgerError::IdempotencyKeyReused),
        "{error:?}"
    );
    assert_eq!(everything(&ledger).await.len(), 2);
}

async fn event_ids_committed_in_another_append_are_refused(ledger: TestLedger) {
    let s = stream("payment-4");
    let batch = events(&ledger, 2);
    ledger
        .append(&s, ExpectedVersion::Any, vec![batch[0].clone()])
        .await
        .unwrap();
    let error = ledger
        .append(&s, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap_err();
    assert!(matches!(error, LedgerError::EventIdsReused), "{error:?}");
    let error = ledger
        .append(
            &stream("payment-5"),
            ExpectedVersion::Any,
            vec![batch[0].clone()],
        )
        .await
        .unwrap_err();
    assert!(matches!(error, LedgerError::EventIdsReused), "{error:?}");
    assert_eq!(everything(&ledger).await.len(), 1);
}

async fn read_all_pages_through_the_global_order(ledger: TestLedger) {
    let mut expected = Vec::new();
    for i in 0..25 {
        let s = stream(&format!("stream-{}", i % 4));
        let appended = ledger
            .append(&s, ExpectedVersion::Any, events(&ledger, 1 + i % 3))
            .await
            .unwrap();
        expected.extend(appended.positions);
    }
    let mut seen = Vec::new();
    let mut after = Position::START;
    loop {
        let page = ledger.read_all(after, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        after = last.position;
        seen.extend(page.iter().map(|e| e.position));
    }
    assert_eq!(seen, expected);
    assert_eq!(
        ledger.last_position().await.unwrap(),
        *expected.last().unwrap()
    );
}

async fn bad_input_is_a_typed_error_and_writes_nothing(ledger: TestLedger) {
    assert!(matches!(
        StreamId::parse(""),
        Err(LedgerError::InvalidStreamId { .. })
    ));
    assert!(matches!(
        StreamId::parse("x".repeat(201)),
        Err(LedgerError::InvalidStreamId { .. })
    ));
    assert!(matches!(
        StreamId::parse("a\nb"),
        Err(LedgerError::InvalidStreamId { .. })
    ));
    let id = EventId::new_at(ledger.clock().now());
    let big = format!("\"{}\"", "x".repeat(PAYLOAD_BYTES_MAX));
    let error = NewEvent::from_json(id, "Big", 1, big).unwrap_err();
    assert_eq!(error.code(), "payload_too_large");
    for bad in ["{", "", "{\"a\":}", "nul", "{\"a\":1} trailing"] {
        let error = NewEvent::from_json(id, "Bad", 1, bad.to_owned()).unwrap_err();
        assert_eq!(error.code(), "invalid_json", "{bad:?}");
        // The parser's error is the source, not text folded into the message.
        let source = std::error::Error::source(&error).expect("the parser's error");
        assert!(source.to_string().contains("line 1"), "{bad:?}: {source}");
    }
    assert_eq!(
        NewEvent::from_json(id, "", 1, "{}".into())
            .unwrap_err()
            .code(),
        "invalid_event_type"
    );
    assert_eq!(
        NewEvent::from_json(id, "has space", 1, "{}".into())
            .unwrap_err()
            .code(),
        "invalid_event_type"
    );
    assert_eq!(
        NewEvent::from_json(id, "Ok", 0, "{}".into())
            .unwrap_err()
            .code(),
        "invalid_event_type"
    );
    let s = stream("customer-bad");
    let error = ledger
        .append(&s, ExpectedVersion::Any, vec![])
        .await
        .unwrap_err();
    assert_eq!(error.code(), "invalid_batch_size");
    let error = ledger
        .append(
            &s,
            ExpectedVersion::Any,
            events(&ledger, EVENTS_PER_APPEND_MAX + 1),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), "invalid_batch_size");
    let mut mixed = events(&ledger, 2);
    mixed[1] = mixed[1].clone().with_metadata(Metadata {
        idempotency_key: Some(IdempotencyKey::parse("k").unwrap()),
        ..Metadata::default()
    });
    assert_eq!(
        ledger
            .append(&s, ExpectedVersion::Any, mixed)
            .await
            .unwrap_err()
            .code(),
        "mixed_idempotency_keys"
    );
    assert!(IdempotencyKey::parse("").is_err());
    assert!(everything(&ledger).await.is_empty(), "nothing was written");
}

async fn the_database_refuses_update_delete_and_truncate_of_events(ledger: TestLedger) {
    let s = stream("customer-immutable");
    let key = Metadata {
        idempotency_key: Some(IdempotencyKey::parse("k-1").unwrap()),
        ..Metadata::default()
    };
    let keyed = events(&ledger, 2)
        .into_iter()
        .map(|e| e.with_metadata(key.clone()))
        .collect();
    ledger
        .append(&s, ExpectedVersion::Any, keyed)
        .await
        .unwrap();
    assert_eq!(ledger.seal().await.unwrap().len(), 1);
    let statements: &[&str] = if let Some(pool) = ledger.raw_postgres() {
        for sql in [
            "UPDATE events SET payload = '{}'",
            "DELETE FROM events",
            "TRUNCATE events",
            "UPDATE seals SET event_count = 0",
            "DELETE FROM seals",
            "TRUNCATE seals",
            "DELETE FROM idempotency_keys",
            "TRUNCATE idempotency_keys",
        ] {
            let error = sqlx::raw_sql(sql).execute(pool).await.unwrap_err();
            let code = error
                .as_database_error()
                .and_then(|e| e.code())
                .map(|c| c.to_string());
            assert_eq!(code.as_deref(), Some("RL001"), "{sql}: {error}");
        }
        &[]
    } else {
        &[
            "UPDATE events SET payload = '{}'",
            "DELETE FROM events",
            "DELETE FROM events WHERE version = 1",
            "UPDATE seals SET event_count = 0",
            "DELETE FROM seals",
            "DELETE FROM idempotency_keys",
        ]
    };
    if let Some(pool) = ledger.raw_sqlite() {
        for sql in statements {
            let error = sqlx::raw_sql(*sql).execute(pool).await.unwrap_err();
            assert!(error.to_string().contains("append-only"), "{sql}: {error}");
        }
    }
    assert_eq!(ledger.read_stream(&s, 1, 10).await.unwrap().len(), 2);
    assert!(ledger.verify().await.unwrap().is_intact());
}

/// Steps around the guard the way an attacker with database rights would.
async fn tamper(ledger: &Ledger, sql: &str) {
    if let Some(pool) = ledger.raw_postgres() {
        let mut tx = pool.begin().await.unwrap();
        sqlx::raw_sql("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    } else {
        let pool = ledger.raw_sqlite().unwrap();
        let mut tx = pool.begin().await.unwrap();
        sqlx::raw_sql("DROP TRIGGER events_no_update; DROP TRIGGER events_no_delete;")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
}

async fn seeded(ledger: &Ledger) -> Vec<recur_ledger::Appended> {
    let mut appended = Vec::new();
    for i in 0..6 {
        let s = stream(&format!("invoice-{i}"));
        appended.push(
            ledger
                .append(&s, ExpectedVersion::NoStream, events(ledger, 3))
                .await
                .unwrap(),
        );
    }
    appended
}

async fn verify_passes_on_an_intact_sealed_ledger(ledger: TestLedger) {
    seeded(&ledger).await;
    let seals = ledger.seal().await.unwrap();
    assert_eq!(seals.len(), 1);
    assert_eq!(seals[0].event_count, 18);
    assert!(
        ledger.seal().await.unwrap().is_empty(),
        "nothing new to seal"
    );
    ledger
        .append(
            &stream("invoice-new"),
            ExpectedVersion::Any,
            events(&ledger, 2),
        )
        .await
        .unwrap();
    let report = ledger.verify().await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.events_checked, 20);
    assert_eq!(report.streams, 7);
    assert_eq!(report.seals_checked, 1);
    assert_eq!(report.unsealed_events, 2);
    assert_eq!(
        report.head_digest.as_deref(),
        Some(seals[0].digest.as_str())
    );
}

async fn an_open_store_seals_released_events_in_the_background(ledger: TestLedger) {
    let mut config = recur_ledger::LedgerConfig::new(ledger.location());
    config.seal_interval_ms = 50;
    let sealing = Ledger::open(config, ledger.clock().clone()).await.unwrap();
    seeded(&sealing).await;
    let mut report = ledger.verify().await.unwrap();
    for _ in 0..100 {
        if report.unsealed_events == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        report = ledger.verify().await.unwrap();
    }
    assert!(report.is_intact(), "{report:?}");
    assert_eq!(report.unsealed_events, 0, "{report:?}");
    assert!(report.seals_checked >= 1);
}

async fn verify_finds_an_edited_payload_at_its_position(ledger: TestLedger) {
    let appended = seeded(&ledger).await;
    ledger.seal().await.unwrap();
    let target = appended[2].positions[1];
    tamper(
        &ledger,
        &format!("UPDATE events SET payload = '{{\"n\":99}}' WHERE position = {target}"),
    )
    .await;
    let report = ledger.verify().await.unwrap();
    assert!(!report.is_intact());
    let first = report.first_break().unwrap();
    assert_eq!(Position(first.position), target, "{report:?}");
    assert!(
        first.reason.contains("does not match its chain hash"),
        "{}",
        first.reason
    );
}

async fn verify_finds_a_deleted_stream(ledger: TestLedger) {
    let appended = seeded(&ledger).await;
    ledger.seal().await.unwrap();
    tamper(&ledger, "DELETE FROM events WHERE stream_id = 'invoice-3'").await;
    let report = ledger.verify().await.unwrap();
    assert!(!report.is_intact(), "a whole stream is gone: {report:?}");
    let first = report.first_break().unwrap();
    assert!(
        Position(first.position) <= appended[3].positions[0],
        "{report:?}"
    );
    assert!(first.reason.contains("seal 1"), "{}", first.reason);
}

async fn verify_finds_a_deleted_event_in_the_middle_of_a_stream(ledger: TestLedger) {
    let appended = seeded(&ledger).await;
    tamper(
        &ledger,
        &format!(
            "DELETE FROM events WHERE position = {}",
            appended[1].positions[1]
        ),
    )
    .await;
    let report = ledger.verify().await.unwrap();
    let first = report.first_break().unwrap();
    assert_eq!(
        Position(first.position),
        appended[1].positions[2],
        "{report:?}"
    );
    assert!(
        first.reason.contains("jumps from version 1 to 3"),
        "{}",
        first.reason
    );
}

async fn an_upcaster_reads_a_v1_payload_as_v2(ledger: TestLedger) {
    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct PlanChangedV2 {
        plan_id: String,
        quantity: u32,
    }
    let s = stream("subscription-up");
    let v1 = NewEvent::new(
        EventId::new_at(ledger.clock().now()),
        "PlanChanged",
        1,
        &json!({ "plan": "elite_coaching" }),
    )
    .unwrap();
    ledger
        .append(&s, ExpectedVersion::Any, vec![v1])
        .await
        .unwrap();
    let upcasters = Upcasters::new().register("PlanChanged", 1, |mut v| {
        let plan = v
            .get_mut("plan")
            .and_then(|p| p.as_str().map(str::to_owned))
            .ok_or("no plan")?;
        Ok(json!({ "plan_id": plan, "quantity": 1 }))
    });
    assert_eq!(upcasters.current_version("PlanChanged"), 2);
    let v2 = NewEvent::new(
        EventId::new_at(ledger.clock().now()),
        "PlanChanged",
        2,
        &json!({ "plan_id": "group_coaching", "quantity": 3 }),
    )
    .unwrap();
    ledger
        .append(&s, ExpectedVersion::Any, vec![v2])
        .await
        .unwrap();
    let read = ledger.read_stream(&s, 1, 10).await.unwrap();
    assert_eq!(read[0].schema_version, 1, "stored as written");
    let decoded: Vec<PlanChangedV2> = read.iter().map(|e| upcasters.decode(e).unwrap()).collect();
    assert_eq!(
        decoded,
        vec![
            PlanChangedV2 {
                plan_id: "elite_coaching".into(),
                quantity: 1
            },
            PlanChangedV2 {
                plan_id: "group_coaching".into(),
                quantity: 3
            }
        ]
    );
    let error = Upcasters::new()
        .decode::<PlanChangedV2>(&read[1])
        .unwrap_err();
    assert_eq!(error.code(), "event_decode_failed");

    // A failing upcaster's own error is the decode error's source, not text
    // folded into a message.
    let failing = Upcasters::new().register("PlanChanged", 1, |_| {
        Err(std::io::Error::other("the v1 plan is retired").into())
    });
    let error = failing.decode::<PlanChangedV2>(&read[0]).unwrap_err();
    assert_eq!(error.code(), "event_decode_failed");
    let source = std::error::Error::source(&error).expect("the upcaster's error as source");
    assert_eq!(source.to_string(), "the v1 plan is retired");
    assert!(
        format!("{source:?}").contains("Custom { kind: Other"),
        "the upcaster's error itself, not its text: {source:?}"
    );
}

async fn sixteen_writers_on_one_stream_get_each_version_exactly_once(ledger: TestLedger) {
    let s = stream("subscription-contended");
    let rounds = 8;
    let mut tasks = Vec::new();
    for writer in 0..16 {
        let ledger = ledger.ledger.clone();
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let (mut wins, mut conflicts) = (Vec::new(), 0);
            for _ in 0..rounds {
                let current = ledger.stream_version(&s).await.unwrap();
                let e = event(&ledger, "Attempt", json!({ "writer": writer }));
                match ledger
                    .append(&s, ExpectedVersion::Exact(current), vec![e])
                    .await
                {
                    Ok(appended) => wins.push(appended.stream_version),
                    Err(LedgerError::VersionConflict { actual, .. }) => {
                        assert!(actual > current);
                        conflicts += 1;
                    }
                    Err(other) => panic!("{other:?}"),
                }
            }
            (wins, conflicts)
        }));
    }
    let mut versions = Vec::new();
    let mut conflicts = 0;
    for task in tasks {
        let (wins, lost) = task.await.unwrap();
        versions.extend(wins);
        conflicts += lost;
    }
    versions.sort_unstable();
    let stored = ledger.read_stream(&s, 1, 1_000).await.unwrap();
    assert_eq!(
        versions,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "each version won exactly once"
    );
    assert_eq!(
        versions.len() + conflicts,
        16 * rounds,
        "every attempt either won or got a conflict"
    );
    assert!(conflicts > 0, "16 writers on one stream must collide");
    let ids: HashSet<_> = stored.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), stored.len());
    assert!(ledger.verify().await.unwrap().is_intact());
}

async fn a_subscriber_sees_every_event_of_sixteen_writers_once_in_read_all_order(
    ledger: TestLedger,
) {
    let per_writer = 40;
    let total = 16 * per_writer;
    let mut subscription = ledger.subscribe(Position::START);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(total);
        while seen.len() < total {
            let next = tokio::time::timeout(Duration::from_secs(30), subscription.next()).await;
            seen.push(next.expect("subscriber stalled").unwrap().position);
        }
        seen
    });
    let mut writers = Vec::new();
    for writer in 0..16 {
        let ledger = ledger.ledger.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..per_writer {
                let s = stream(&format!("writer-{writer}"));
                let count = 1 + i % 2;
                let batch = (0..count)
                    .map(|_| event(&ledger, "Tick", json!({ "i": i })))
                    .collect();
                if count == 1 || i % 4 != 1 {
                    ledger
                        .append(&s, ExpectedVersion::Any, batch)
                        .await
                        .unwrap();
                } else {
                    ledger
                        .append(
                            &s,
                            ExpectedVersion::Any,
                            vec![event(&ledger, "Tick", json!({}))],
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for writer in writers {
        writer.await.unwrap();
    }
    let all: Vec<Position> = everything(&ledger)
        .await
        .iter()
        .map(|e| e.position)
        .collect();
    let seen = {
        let mut seen = reader.await.unwrap();
        seen.truncate(total);
        seen
    };
    assert!(all.len() >= total);
    assert_eq!(
        seen[..],
        all[..total],
        "subscriber order equals read_all order"
    );
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(unique.len(), all.len());
}

async fn a_subscription_catches_up_then_follows_live_commits(ledger: TestLedger) {
    let s = stream("customer-live");
    let history = ledger
        .append(&s, ExpectedVersion::Any, events(&ledger, 3))
        .await
        .unwrap();
    let mut subscription = ledger.subscribe(history.positions[0]);
    let next = subscription.next().await.unwrap();
    assert_eq!(next.position, history.positions[1]);
    assert_eq!(
        subscription.next().await.unwrap().position,
        history.positions[2]
    );
    let writer = ledger.ledger.clone();
    let live = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        writer
            .append(
                &stream("customer-live"),
                ExpectedVersion::Exact(3),
                events(&writer, 1),
            )
            .await
            .unwrap()
    });
    let next = tokio::time::timeout(Duration::from_secs(10), subscription.next())
        .await
        .unwrap()
        .unwrap();
    let live = live.await.unwrap();
    assert_eq!(next.position, live.positions[0]);
    assert_eq!(next.stream_version, 4);
    assert_eq!(subscription.position(), live.positions[0]);
}

async fn a_replay_reads_what_was_released_when_it_started_and_ends(ledger: TestLedger) {
    let mut expected = Vec::new();
    for i in 0..12 {
        let s = stream(&format!("replay-{}", i % 3));
        expected.extend(
            ledger
                .append(&s, ExpectedVersion::Any, events(&ledger, 1 + i % 2))
                .await
                .unwrap()
                .positions,
        );
    }
    let mut replay = ledger.replay(expected[2]).await.unwrap();
    let late = ledger
        .append(
            &stream("replay-late"),
            ExpectedVersion::Any,
            events(&ledger, 1),
        )
        .await
        .unwrap();
    let mut seen = Vec::new();
    while let Some(event) = replay.next().await.unwrap() {
        seen.push(event.position);
    }
    assert_eq!(
        seen,
        expected[3..].to_vec(),
        "starts after its position, ends at the horizon it began with"
    );
    assert!(!seen.contains(&late.positions[0]));
    assert_eq!(replay.position(), *expected.last().unwrap());
    assert!(
        replay.next().await.unwrap().is_none(),
        "an ended replay stays ended"
    );
}

async fn interleaved_appends_and_reads_keep_every_invariant(ledger: TestLedger) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new(Config {
        cases: 12,
        failure_persistence: None,
        ..Config::default()
    });
    let strategy =
        proptest::collection::vec((0..4usize, 1..4usize, any::<bool>(), 0..3usize), 1..24);
    let handle = tokio::runtime::Handle::current();
    runner
        .run(&strategy, |ops| {
            let ledger = ledger.ledger.clone();
            tokio::task::block_in_place(|| {
                handle.block_on(async move {
                    let case = Uuid::new_v4().simple().to_string();
                    let start = ledger.last_position().await.unwrap();
                    let mut model: HashMap<usize, u64> = HashMap::new();
                    let mut written: Vec<Position> = Vec::new();
                    // Four concurrent lanes, one per stream; each lane knows its stream's version.
                    let mut lanes: Vec<Vec<(usize, usize, bool, usize)>> = vec![Vec::new(); 4];
                    for op in ops {
                        lanes[op.0].push(op);
                    }
                    let mut tasks = Vec::new();
                    for (lane_no, lane) in lanes.into_iter().enumerate() {
                        let ledger = ledger.clone();
                        let s = stream(&format!("prop-{case}-{lane_no}"));
                        tasks.push(tokio::spawn(async move {
                            let mut version = 0u64;
                            let mut positions = Vec::new();
                            for (_, count, honest, reads) in lane {
                                let expected = if honest {
                                    ExpectedVersion::Exact(version)
                                } else {
                                    ExpectedVersion::Exact(version + 7)
                                };
                                let batch = (0..count)
                                    .map(|_| event(&ledger, "Prop", json!({})))
                                    .collect();
                                match ledger.append(&s, expected, batch).await {
                                    Ok(appended) => {
                                        assert!(honest);
                                        assert_eq!(appended.stream_version, version + count as u64);
                                        version = appended.stream_version;
                                        positions.extend(appended.positions);
                                    }
                                    Err(LedgerError::VersionConflict { actual, .. }) => {
                                        assert!(!honest);
                                        assert_eq!(actual, version);
                                    }
                                    Err(other) => panic!("{other:?}"),
                                }
                                for _ in 0..reads {
                                    let page = ledger.read_all(Position::START, 50).await.unwrap();
                                    assert!(page.windows(2).all(|w| w[0].position < w[1].position));
                                }
                            }
                            (lane_no, version, positions)
                        }));
                    }
                    for task in tasks {
                        let (lane, version, positions) = task.await.unwrap();
                        model.insert(lane, version);
                        written.extend(positions);
                    }
                    let mine: Vec<_> = everything(&ledger)
                        .await
                        .into_iter()
                        .filter(|e| {
                            e.position > start
                                && e.stream_id.as_str().starts_with(&format!("prop-{case}-"))
                        })
                        .collect();
                    written.sort_unstable();
                    assert_eq!(mine.iter().map(|e| e.position).collect::<Vec<_>>(), written);
                    for (lane, version) in model {
                        let s = stream(&format!("prop-{case}-{lane}"));
                        let versions: Vec<u64> = ledger
                            .read_stream(&s, 1, 1_000)
                            .await
                            .unwrap()
                            .iter()
                            .map(|e| e.stream_version)
                            .collect();
                        assert_eq!(versions, (1..=version).collect::<Vec<_>>());
                    }
                })
            });
            Ok(())
        })
        .unwrap();
    assert!(ledger.verify().await.unwrap().is_intact());
}

async fn an_idempotent_request_runs_once_replays_its_answer_and_refuses_another_body(
    ledger: TestLedger,
) {
    use recur_ledger::RequestClaim;
    use std::time::Duration;
    let first = [1u8; 32];
    let other = [2u8; 32];
    let lease = Duration::from_secs(60);
    let (a, b) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    let RequestClaim::Run { started_at, rerun } = ledger
        .claim_request("key-1", &first, a, lease)
        .await
        .unwrap()
    else {
        panic!("the first claim runs")
    };
    assert!(!rerun);
    assert_eq!(
        ledger
            .claim_request("key-1", &first, b, lease)
            .await
            .unwrap(),
        RequestClaim::InProgress
    );
    assert!(ledger.renew_request("key-1", a, lease).await.unwrap());
    assert!(!ledger.renew_request("key-1", b, lease).await.unwrap());
    // Only the owner's answer is stored.
    assert!(
        !ledger
            .complete_request("key-1", b, 500, "{}")
            .await
            .unwrap()
    );
    assert!(
        ledger
            .complete_request("key-1", a, 201, "{\"id\":1}")
            .await
            .unwrap()
    );
    assert_eq!(
        ledger
            .claim_request("key-1", &first, b, lease)
            .await
            .unwrap(),
        RequestClaim::Replay {
            status: 201,
            body: "{\"id\":1}".into()
        }
    );
    assert_eq!(
        ledger
            .claim_request("key-1", &other, b, lease)
            .await
            .unwrap(),
        RequestClaim::Mismatch
    );
    // A released claim (the server failed) is taken over at once, as a rerun
    // started when the key was first claimed; the key stays bound to its body.
    let RequestClaim::Run { started_at: s2, .. } = ledger
        .claim_request("key-2", &first, a, lease)
        .await
        .unwrap()
    else {
        panic!("the first claim runs")
    };
    ledger.release_request("key-2", a).await.unwrap();
    assert_eq!(
        ledger
            .claim_request("key-2", &other, b, lease)
            .await
            .unwrap(),
        RequestClaim::Mismatch
    );
    assert_eq!(
        ledger
            .claim_request("key-2", &first, b, lease)
            .await
            .unwrap(),
        RequestClaim::Run {
            started_at: s2,
            rerun: true
        }
    );
    // The first run, back from the dead, can neither renew nor answer.
    assert!(!ledger.renew_request("key-2", a, lease).await.unwrap());
    assert!(
        !ledger
            .complete_request("key-2", a, 200, "{}")
            .await
            .unwrap()
    );
    // A lapsed lease (its server died) is taken over by the next claim.
    let short = Duration::from_millis(50);
    assert!(matches!(
        ledger
            .claim_request("key-3", &first, a, short)
            .await
            .unwrap(),
        RequestClaim::Run { rerun: false, .. }
    ));
    assert_eq!(
        ledger
            .claim_request("key-3", &first, b, lease)
            .await
            .unwrap(),
        RequestClaim::InProgress
    );
    tokio::time::sleep(Duration::from_millis(80)).await;
    assert!(matches!(
        ledger
            .claim_request("key-3", &first, b, lease)
            .await
            .unwrap(),
        RequestClaim::Run { rerun: true, .. }
    ));
    assert!(
        ledger
            .complete_request("key-3", b, 200, "{}")
            .await
            .unwrap()
    );
    assert!(started_at <= s2);
    // Expired answers are purged; the ledger itself is untouched.
    let later = time::OffsetDateTime::now_utc() + time::Duration::days(2);
    assert_eq!(ledger.purge_requests(later).await.unwrap(), 3);
    assert!(matches!(
        ledger
            .claim_request("key-1", &other, a, lease)
            .await
            .unwrap(),
        RequestClaim::Run { rerun: false, .. }
    ));
    assert_eq!(ledger.last_position().await.unwrap(), Position::START);
}

async fn an_older_checkpoints_table_is_adopted_by_migration_4(ledger: TestLedger) {
    // The table as the projections' code made it before `generation` existed,
    // in a ledger migrated up to 3.
    let older = [
        "DROP TABLE projection_checkpoints",
        "CREATE TABLE projection_checkpoints (name TEXT PRIMARY KEY, version BIGINT NOT NULL, position BIGINT NOT NULL)",
        "INSERT INTO projection_checkpoints VALUES ('mrr', 7, 42)",
        "DELETE FROM schema_migrations WHERE version >= 4",
        // Made by a later migration (6): not there in a ledger migrated up to 3.
        "DROP TABLE data_keys",
    ];
    for sql in older {
        if let Some(pool) = ledger.raw_postgres() {
            sqlx::raw_sql(sql).execute(pool).await.unwrap();
        } else if let Some(pool) = ledger.raw_sqlite() {
            sqlx::raw_sql(sql).execute(pool).await.unwrap();
        }
    }
    let reopened = recur_ledger::Ledger::open(
        recur_ledger::LedgerConfig::new(ledger.location()),
        std::sync::Arc::new(recur_ledger::SystemClock),
    )
    .await
    .unwrap();
    let sql = "SELECT name, version, position, generation FROM projection_checkpoints";
    let row: (String, i64, i64, i64) = if let Some(pool) = reopened.raw_postgres() {
        sqlx::query_as(sql).fetch_one(pool).await.unwrap()
    } else {
        sqlx::query_as(sql)
            .fetch_one(reopened.raw_sqlite().unwrap())
            .await
            .unwrap()
    };
    assert_eq!(row, ("mrr".to_owned(), 7, 42, 0));
}

async fn a_claim_from_before_leases_is_not_taken_over_and_appends_are_found_by_prefix(
    ledger: TestLedger,
) {
    use recur_ledger::RequestClaim;
    let fingerprint = [3u8; 32];
    // A claim written before migration 0003: no owner, no lease.
    let sql = "INSERT INTO api_requests (key, fingerprint, created_at) VALUES ('old-1', $1, now())";
    if let Some(pool) = ledger.raw_postgres() {
        sqlx::query(sql)
            .bind(&fingerprint[..])
            .execute(pool)
            .await
            .unwrap();
    } else if let Some(pool) = ledger.raw_sqlite() {
        sqlx::query(
            "INSERT INTO api_requests (key, fingerprint, created_at_us) VALUES ('old-1', ?1, 0)",
        )
        .bind(&fingerprint[..])
        .execute(pool)
        .await
        .unwrap();
    }
    let owner = uuid::Uuid::now_v7();
    let lease = std::time::Duration::from_secs(10);
    assert_eq!(
        ledger
            .claim_request("old-1", &fingerprint, owner, lease)
            .await
            .unwrap(),
        RequestClaim::Unknown,
        "its run wrote without rerun keys: running it again could do it twice"
    );
    // Appends are found by the start of their key, and only theirs.
    let key = recur_ledger::IdempotencyKey::parse("req-aaaa-bbbb-cccc").unwrap();
    let event = event(&ledger, "Prefixed", json!({})).with_metadata(Metadata {
        idempotency_key: Some(key),
        ..Metadata::default()
    });
    ledger
        .append(&stream("prefixed"), ExpectedVersion::NoStream, vec![event])
        .await
        .unwrap();
    assert!(ledger.appended_under("req-aaaa-").await.unwrap());
    assert!(ledger.appended_under("req-aaaa-bbbb-").await.unwrap());
    assert!(!ledger.appended_under("req-aaaa-bbbc-").await.unwrap());
    assert!(!ledger.appended_under("req-aaa-").await.unwrap());
    assert!(
        !ledger.appended_under("REQ-AAAA-").await.unwrap(),
        "exact case"
    );
}

conformance!(
    a_claim_from_before_leases_is_not_taken_over_and_appends_are_found_by_prefix,
    an_older_checkpoints_table_is_adopted_by_migration_4,
    append_then_read_stream_returns_the_events_in_order,
    the_envelope_round_trips_every_field,
    no_stream_on_an_existing_stream_is_a_conflict_carrying_the_actual_version,
    a_stale_exact_version_is_refused_and_writes_nothing,
    expected_any_appends_at_the_end,
    reappending_committed_event_ids_returns_the_original_positions_and_writes_nothing,
    reappending_with_a_committed_idempotency_key_returns_the_original_positions,
    event_ids_committed_in_another_append_are_refused,
    read_all_pages_through_the_global_order,
    bad_input_is_a_typed_error_and_writes_nothing,
    the_database_refuses_update_delete_and_truncate_of_events,
    verify_passes_on_an_intact_sealed_ledger,
    an_open_store_seals_released_events_in_the_background,
    verify_finds_an_edited_payload_at_its_position,
    verify_finds_a_deleted_stream,
    verify_finds_a_deleted_event_in_the_middle_of_a_stream,
    an_upcaster_reads_a_v1_payload_as_v2,
    sixteen_writers_on_one_stream_get_each_version_exactly_once,
    a_subscriber_sees_every_event_of_sixteen_writers_once_in_read_all_order,
    a_subscription_catches_up_then_follows_live_commits,
    a_replay_reads_what_was_released_when_it_started_and_ends,
    interleaved_appends_and_reads_keep_every_invariant,
    an_idempotent_request_runs_once_replays_its_answer_and_refuses_another_body,
);
