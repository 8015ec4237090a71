//! Offline proofs against real stores (both backends): a stream's proof verifies
//! without the database, and every edit of its JSON is caught and named.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::TestLedger;
use recur_ledger::proof::Check;
use recur_ledger::{
    EventId, ExpectedVersion, Ledger, LedgerError, Metadata, NewEvent, Proof, ProofError, Source,
    StreamId,
};
use serde_json::{Value, json};

fn stream(name: &str) -> StreamId {
    StreamId::parse(name).unwrap()
}

fn paid(ledger: &Ledger, amount: &str) -> NewEvent {
    NewEvent::new(
        EventId::new_at(ledger.clock().now()),
        "InvoicePaid",
        1,
        &json!({ "amount": { "amount": amount, "currency": "USD" } }),
    )
    .unwrap()
    .with_metadata(Metadata {
        actor: Some("key_auditor_test".into()),
        source: Source::Api,
        ..Metadata::default()
    })
}

/// `invoice-a` gets events in two seals, interleaved with other streams, so its
/// proof needs two seals and the other events' hashes.
async fn two_seals(ledger: &Ledger) -> StreamId {
    let invoice = stream("invoice-a");
    for (round, amount) in ["10.00", "20.00"].into_iter().enumerate() {
        ledger
            .append(&invoice, ExpectedVersion::Any, vec![paid(ledger, amount)])
            .await
            .unwrap();
        for other in 0..3 {
            let s = stream(&format!("invoice-other-{round}-{other}"));
            ledger
                .append(&s, ExpectedVersion::NoStream, vec![paid(ledger, "1.00")])
                .await
                .unwrap();
        }
        ledger
            .append(&invoice, ExpectedVersion::Any, vec![paid(ledger, "30.00")])
            .await
            .unwrap();
        assert_eq!(ledger.seal().await.unwrap().len(), 1);
    }
    invoice
}

fn broken(text: &str) -> (Check, String) {
    let proof = Proof::from_json(text).expect("still a readable proof");
    match proof.verify() {
        Err(ProofError::Failed { check, place, .. }) => (check, place.to_string()),
        other => panic!("a tampered proof passed: {other:?}"),
    }
}

fn edited(json: &Value, edit: impl FnOnce(&mut Value)) -> String {
    let mut json = json.clone();
    edit(&mut json);
    json.to_string()
}

async fn a_proof_verifies_offline_and_every_edit_of_it_fails(ledger: TestLedger) {
    let invoice = two_seals(&ledger).await;
    let proof = ledger.proof(&invoice).await.unwrap();
    let verified = Proof::from_json(&proof.to_json())
        .unwrap()
        .verify()
        .unwrap();
    assert_eq!(verified.events, 4);
    assert_eq!(verified.resource, "invoice-a");
    let seals: Vec<u64> = verified.seals.iter().map(|(no, _)| *no).collect();
    assert_eq!(seals, [1, 2]);
    // The other streams' events are there as hashes only.
    assert_eq!(proof.seals[0].others.len(), 3);
    let text = proof.to_json();
    assert!(!text.contains("1.00"), "no other event's payload");
    // Its seals are the ledger's.
    let stored = ledger.seals_after(0, 10).await.unwrap();
    assert_eq!(verified.seals[1].1, stored[1].digest);
    assert_eq!(stored[1].previous_digest, stored[0].digest);
    assert_eq!(proof.check_exported(&stored), Ok(2));

    let json: Value = serde_json::from_str(&text).unwrap();
    let amount = edited(&json, |j| {
        let payload = j["events"][1]["payload"]
            .as_str()
            .unwrap()
            .replace("30.00", "3000.00");
        j["events"][1]["payload"] = payload.into();
    });
    assert_eq!(
        broken(&amount).0,
        Check::ChainHash,
        "an edited amount is caught"
    );
    assert!(
        broken(&amount).1.contains("event #2"),
        "{:?}",
        broken(&amount)
    );
    let actor = edited(&json, |j| {
        let metadata = j["events"][0]["metadata"]
            .as_str()
            .unwrap()
            .replace("key_auditor_test", "key_other");
        j["events"][0]["metadata"] = metadata.into();
    });
    assert_eq!(broken(&actor).0, Check::ChainHash);
    let event_type = edited(&json, |j| j["events"][3]["type"] = "InvoiceVoided".into());
    assert_eq!(broken(&event_type).0, Check::ChainHash);
    let dropped = edited(&json, |j| {
        j["events"].as_array_mut().unwrap().remove(1);
    });
    assert_eq!(broken(&dropped).0, Check::Version);
    let dropped_last = edited(&json, |j| {
        j["events"].as_array_mut().unwrap().pop();
    });
    assert_eq!(broken(&dropped_last).0, Check::SealDigest);
    let swapped = edited(&json, |j| j["events"].as_array_mut().unwrap().swap(0, 1));
    assert_eq!(broken(&swapped).0, Check::Version);
    let chain = edited(&json, |j| {
        j["events"][2]["chain_hash"] = hex(&[1; 32]).into()
    });
    assert_eq!(
        broken(&chain),
        (Check::ChainHash, "event #3 (position 6, version 3)".into())
    );
    let digest = edited(&json, |j| j["seals"][1]["digest"] = hex(&[2; 32]).into());
    assert_eq!(broken(&digest), (Check::SealDigest, "seal 2".into()));
    let other = edited(&json, |j| {
        j["seals"][0]["others"][0][1] = hex(&[3; 32]).into()
    });
    assert_eq!(broken(&other).0, Check::SealDigest);
    let no_seal = edited(&json, |j| {
        j["seals"].as_array_mut().unwrap().remove(0);
    });
    assert_eq!(broken(&no_seal).0, Check::SealCoverage);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn a_stream_with_unsealed_events_is_refused_until_sealed(ledger: TestLedger) {
    let invoice = two_seals(&ledger).await;
    ledger
        .append(
            &invoice,
            ExpectedVersion::Exact(4),
            vec![paid(&ledger, "5.00")],
        )
        .await
        .unwrap();
    let error = ledger.proof(&invoice).await.unwrap_err();
    assert!(matches!(error, LedgerError::Unsealed { .. }), "{error:?}");
    assert_eq!(error.code(), "ledger_unsealed");
    assert!(error.to_string().contains("recur ledger seal"), "{error}");
    ledger.seal().await.unwrap();
    let proof = ledger.proof(&invoice).await.unwrap();
    assert_eq!(proof.verify().unwrap().events, 5);
    // A stream without events has nothing to prove.
    let error = ledger.proof(&stream("invoice-none")).await.unwrap_err();
    assert_eq!(error.code(), "stream_not_found");
}

async fn a_ledger_edited_behind_its_triggers_gives_no_proof(ledger: TestLedger) {
    let invoice = two_seals(&ledger).await;
    let sql = "UPDATE events SET payload = '{\"amount\":{\"amount\":\"99.00\",\"currency\":\"USD\"}}' \
               WHERE stream_id = 'invoice-a' AND version = 2";
    if let Some(pool) = ledger.raw_postgres() {
        let mut tx = pool.begin().await.unwrap();
        sqlx::raw_sql("SET LOCAL session_replication_role = replica")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::raw_sql(sql).execute(&mut *tx).await.unwrap();
        tx.commit().await.unwrap();
    } else {
        let pool = ledger.raw_sqlite().unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP TRIGGER events_no_update; {sql}"
        )))
        .execute(pool)
        .await
        .unwrap();
    }
    let error = ledger.proof(&invoice).await.unwrap_err();
    assert_eq!(error.code(), "ledger_integrity", "{error}");
    assert!(error.to_string().contains("chain_hash"), "{error}");
}

async fn seals_after_lists_new_seals_and_sealing_wakes_the_listener(ledger: TestLedger) {
    assert_eq!(ledger.newest_seal().await.unwrap(), None);
    let sealed = ledger.sealed().clone();
    let woken = sealed.notified();
    tokio::pin!(woken);
    woken.as_mut().enable();
    two_seals(&ledger).await;
    tokio::time::timeout(std::time::Duration::from_secs(5), woken)
        .await
        .expect("a seal wakes the listener");
    let all = ledger.seals_after(0, 10).await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].previous_digest, "0".repeat(64));
    let later = ledger.seals_after(1, 10).await.unwrap();
    assert_eq!(later, all[1..]);
    assert!(ledger.seals_after(2, 10).await.unwrap().is_empty());
    assert_eq!(ledger.seals_after(0, 1).await.unwrap(), all[..1]);
    assert_eq!(ledger.newest_seal().await.unwrap().as_ref(), all.last());
}

conformance!(
    a_proof_verifies_offline_and_every_edit_of_it_fails,
    a_stream_with_unsealed_events_is_refused_until_sealed,
    a_ledger_edited_behind_its_triggers_gives_no_proof,
    seals_after_lists_new_seals_and_sealing_wakes_the_listener,
);
