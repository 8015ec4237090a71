//! `recur relay` and `recur project` as separate processes with the real NATS
//! server: the worker follows the ledger through JetStream, survives being killed
//! and restarted, and its read models equal a rebuild from the first event.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use recur_commands::billing::{NewCustomer, NewSubscription, Trial};
use recur_commands::{Billing, Catalog, SimulatedGateway};
use sqlx::Connection;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(command: &str, location: &str, stream: &str) -> Process {
    let nats = std::env::var("NATS_URL").unwrap_or_else(|_| {
        panic!("NATS_URL is not set: run `bash scripts/test.sh`, or export NATS_URL=nats://127.0.0.1:4222")
    });
    Process(
        Command::new(env!("CARGO_BIN_EXE_recur"))
            .args([command, "--database", location, "--nats-url", &nats])
            .env("RECUR_NATS_STREAM", stream)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

async fn subscribe_some(billing: &Billing, n: usize) {
    for _ in 0..n {
        let customer = billing
            .create_customer(NewCustomer::default())
            .await
            .unwrap();
        let card = SimulatedGateway::tokenize("4242424242424242", 12, 2040).unwrap();
        billing.attach_payment_method(customer, card).await.unwrap();
        billing
            .subscribe(NewSubscription {
                customer_id: customer,
                plan_id: "community_access".into(),
                price_id: None,
                quantity: 1,
                trial: Trial::Skip,
                coupon: None,
            })
            .await
            .unwrap();
    }
}

async fn checkpoints(location: &str) -> Vec<(String, i64)> {
    let mut conn = sqlx::PgConnection::connect(location).await.unwrap();
    sqlx::query_as::<_, (String, i64)>(
        "SELECT name, position FROM projection_checkpoints ORDER BY name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap_or_default()
}

async fn wait_until_projected(location: &str, head: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = checkpoints(location).await;
        if now.len() == 4 && now.iter().all(|(_, p)| u64::try_from(*p).unwrap() >= head) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not catch up: {now:?}, head {head}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_worker_projects_everything_once() {
    let store = common::postgres().await;
    let location = store.location();
    let stream = format!("RECUR_WORKER_{}", uuid::Uuid::new_v4().simple());
    let billing = Billing::open(
        store.ledger.clone(),
        Catalog::default_catalog().unwrap(),
        Arc::new(SimulatedGateway::new()),
    )
    .await
    .unwrap();
    let _relay = start("relay", &location, &stream);
    let worker = start("project", &location, &stream);
    subscribe_some(&billing, 5).await;
    wait_until_projected(&location, store.ledger.last_position().await.unwrap().0).await;

    // Kill the worker, write more, start another.
    drop(worker);
    subscribe_some(&billing, 5).await;
    let _worker = start("project", &location, &stream);
    wait_until_projected(&location, store.ledger.last_position().await.unwrap().0).await;

    let mut conn = sqlx::PgConnection::connect(&location).await.unwrap();
    let total: i64 =
        sqlx::query_scalar("SELECT CAST(SUM(delta_minor) AS BIGINT) FROM mrr_movements_v1")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(total, 10 * 9_700, "ten new customers, each counted once");
    let db = recur_projections::db::Db::of(&store.ledger).unwrap();
    let live = recur_projections::mrr::snapshot(&db).await.unwrap();
    drop(_worker);
    let mut projector = recur_projections::Projector::open(
        store.ledger.clone(),
        recur_projections::mrr::Mrr::new(),
    )
    .await
    .unwrap();
    projector.rebuild().await.unwrap();
    assert_eq!(recur_projections::mrr::snapshot(&db).await.unwrap(), live);
    let client = async_nats::connect(std::env::var("NATS_URL").unwrap())
        .await
        .unwrap();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&stream)
        .await;
}
