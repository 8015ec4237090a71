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
    start_on(command, location, stream, &nats)
}

fn start_on(command: &str, location: &str, stream: &str, nats: &str) -> Process {
    Process(
        Command::new(env!("CARGO_BIN_EXE_recur"))
            .args([command, "--database", location, "--nats-url", nats])
            .env("RECUR_NATS_STREAM", stream)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    )
}

/// A nats-server of this test's own (JetStream, files in `dir`) on `port`, so it
/// can be killed and restarted without disturbing other tests.
fn nats_server(port: u16, dir: &std::path::Path) -> Process {
    let binary = std::env::var("RECUR_TEST_NATS_SERVER").unwrap_or_else(|_| "nats-server".into());
    let child = Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start {binary}: {e}; install it (Debian: apt-get install nats-server) or run `bash scripts/test.sh`")
        });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "nats-server did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Process(child)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// The sum of every MRR movement: each new customer's MRR, counted once.
async fn movements_total(location: &str) -> i64 {
    let mut conn = sqlx::PgConnection::connect(location).await.unwrap();
    sqlx::query_scalar("SELECT CAST(SUM(delta_minor) AS BIGINT) FROM mrr_movements_v1")
        .fetch_one(&mut conn)
        .await
        .unwrap()
}

async fn wait_until_projected(location: &str, head: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = checkpoints(location).await;
        if now.len() == recur_projections::set::NAMES.len()
            && now.iter().all(|(_, p)| u64::try_from(*p).unwrap() >= head)
        {
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

    let total = movements_total(&location).await;
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

/// MRR rows, the number of customer views, and the trial balance.
async fn read_models(
    db: &recur_projections::db::Db,
) -> (
    Vec<String>,
    usize,
    Vec<recur_projections::accounts::Balance>,
) {
    (
        recur_projections::mrr::snapshot(db).await.unwrap(),
        recur_projections::customers::read(db, None)
            .await
            .unwrap()
            .len(),
        recur_projections::accounts::trial_balance(db, None)
            .await
            .unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restarted_during_a_load_loses_and_doubles_nothing() {
    let store = common::postgres().await;
    let location = store.location();
    let stream = format!("RECUR_RESTART_{}", uuid::Uuid::new_v4().simple());
    let dir = std::env::temp_dir().join(format!("recur-nats-{}", uuid::Uuid::new_v4().simple()));
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let nats = nats_server(port, &dir);
    let billing = Arc::new(
        Billing::open(
            store.ledger.clone(),
            Catalog::default_catalog().unwrap(),
            Arc::new(SimulatedGateway::new()),
        )
        .await
        .unwrap(),
    );
    let _relay = start_on("relay", &location, &stream, &url);
    let _worker = start_on("project", &location, &stream, &url);
    subscribe_some(&billing, 3).await;
    wait_until_projected(&location, store.ledger.last_position().await.unwrap().0).await;

    // Writes go on while the server is killed and, a second later, started again
    // on the same port and store.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (billing, stop) = (Arc::clone(&billing), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                subscribe_some(&billing, 1).await;
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    drop(nats);
    let at_kill = store.ledger.last_position().await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let at_restart = store.ledger.last_position().await.unwrap();
    assert!(
        at_restart > at_kill,
        "writes went on while the server was down"
    );
    let _nats = nats_server(port, &dir);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let loaded: i64 = load.await.unwrap();
    wait_until_projected(&location, store.ledger.last_position().await.unwrap().0).await;

    let total = movements_total(&location).await;
    assert_eq!(
        total,
        (3 + loaded) * 9_700,
        "every new customer counted once"
    );
    let mut conn = sqlx::PgConnection::connect(&location).await.unwrap();
    let payments: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'PaymentSucceeded'")
            .fetch_one(&mut conn)
            .await
            .unwrap();

    let db = recur_projections::db::Db::of(&store.ledger).unwrap();
    let live = read_models(&db).await;
    drop(_worker);
    let mut projections = recur_projections::Projections::open(&store.ledger)
        .await
        .unwrap();
    projections.rebuild_with(|_, _| {}).await.unwrap();
    let rebuilt = read_models(&db).await;
    let cash = live
        .2
        .iter()
        .find(|b| b.account == "gateway_balance")
        .unwrap();
    assert_eq!(
        cash.debit_minor,
        payments * 9_700,
        "every payment booked once"
    );
    assert_eq!(
        rebuilt.2, live.2,
        "the trial balance equals a clean rebuild's"
    );
    assert_eq!(rebuilt, live, "the read models equal a clean rebuild");
    let _ = std::fs::remove_dir_all(&dir);
}
