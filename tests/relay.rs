//! The relay against the real NATS server: every released event once, in ledger
//! order, resumed after a restart without loss or duplicates.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use recur_ledger::{EventId, ExpectedVersion, Ledger, NewEvent, StreamId, SystemClock};
use recur_projections::message::{EventMessage, POSITION_HEADER};
use recur_projections::{Relay, RelayConfig};

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| {
        panic!(
            "NATS_URL is not set. Run the suite with `bash scripts/test.sh` (it finds or starts \
             nats-server -js), or export NATS_URL=nats://127.0.0.1:4222"
        )
    })
}

/// A stream and subjects of this test's own, removed afterwards.
fn isolated() -> RelayConfig {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut config = RelayConfig::new(nats_url());
    config.stream = format!("RECUR_TEST_{tag}");
    config.subject_prefix = format!("recurtest{tag}.events");
    config
}

async fn append(ledger: &Ledger, streams: usize, per_stream: usize) {
    let clock = SystemClock;
    for s in 0..streams {
        let stream =
            StreamId::parse(format!("invoice-{s}-{}", uuid::Uuid::new_v4().simple())).unwrap();
        for _ in 0..per_stream {
            let event = NewEvent::new(
                EventId::new_at(recur_ledger::Clock::now(&clock)),
                "Tested",
                1,
                &serde_json::json!({"s": s}),
            )
            .unwrap();
            ledger
                .append(&stream, ExpectedVersion::Any, vec![event])
                .await
                .unwrap();
        }
    }
}

/// Every message in the stream, in stream order.
async fn published(config: &RelayConfig) -> Vec<EventMessage> {
    let client = async_nats::connect(&config.nats_url).await.unwrap();
    let js = jetstream::new(client);
    let stream = js.get_stream(&config.stream).await.unwrap();
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut out = Vec::new();
    let mut batch = consumer
        .fetch()
        .max_messages(10_000)
        .expires(Duration::from_millis(500))
        .messages()
        .await
        .unwrap();
    use futures_core::Stream;
    while let Some(message) =
        std::future::poll_fn(|cx| std::pin::Pin::new(&mut batch).poll_next(cx)).await
    {
        let message = message.unwrap();
        let body: EventMessage = serde_json::from_slice(&message.payload).unwrap();
        let header = message
            .headers
            .as_ref()
            .and_then(|h| h.get(POSITION_HEADER))
            .unwrap()
            .as_str()
            .to_owned();
        assert_eq!(header, body.position.to_string());
        out.push(body);
    }
    out
}

async fn drop_stream(config: &RelayConfig) {
    let client = async_nats::connect(&config.nats_url).await.unwrap();
    let _ = jetstream::new(client).delete_stream(&config.stream).await;
}

/// `delete_stream` tells "no such stream" by JetStream's error code (it matched
/// the message text "not found" before): a missing stream is `false`, not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_missing_stream_is_false_and_an_existing_one_true() {
    let store = common::postgres().await;
    let config = isolated();
    assert!(
        !recur_projections::relay::delete_stream(&config)
            .await
            .unwrap(),
        "never created"
    );
    Relay::connect(store.ledger.clone(), config.clone())
        .await
        .unwrap();
    assert!(
        recur_projections::relay::delete_stream(&config)
            .await
            .unwrap()
    );
    assert!(
        !recur_projections::relay::delete_stream(&config)
            .await
            .unwrap(),
        "already deleted"
    );
}

/// Any other refusal is still an error, with the client's error as its source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_name_jetstream_refuses_is_an_error_with_its_cause() {
    let mut config = isolated();
    config.stream = "NOT.A.STREAM".into();
    let error = recur_projections::relay::delete_stream(&config)
        .await
        .unwrap_err();
    assert!(
        matches!(error, recur_projections::RelayError::Stream { .. }),
        "{error:?}"
    );
    let source = std::error::Error::source(&error).expect("the client's error");
    assert!(
        source.to_string().contains("invalid stream name"),
        "{source}"
    );
}

/// An unreachable server is `Connect`, the client's error kept as the source.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_connect_error_with_the_clients_cause() {
    let mut config = isolated();
    config.nats_url = "nats://127.0.0.1:1".into();
    let error = recur_projections::relay::delete_stream(&config)
        .await
        .unwrap_err();
    assert!(
        matches!(error, recur_projections::RelayError::Connect { .. }),
        "{error:?}"
    );
    assert!(std::error::Error::source(&error).is_some(), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_released_event_once_in_ledger_order() {
    let store = common::postgres().await;
    append(&store.ledger, 5, 20).await;
    let config = isolated();
    let relay = Relay::connect(store.ledger.clone(), config.clone())
        .await
        .unwrap();
    assert_eq!(relay.publish_released().await.unwrap(), 100);
    // Nothing new: nothing published again.
    assert_eq!(relay.publish_released().await.unwrap(), 0);
    let messages = published(&config).await;
    let in_ledger = store
        .ledger
        .read_all(recur_ledger::Position::START, 1_000)
        .await
        .unwrap();
    assert_eq!(messages.len(), in_ledger.len());
    for (message, event) in messages.iter().zip(&in_ledger) {
        assert_eq!((message.id, message.position), (event.id, event.position.0));
        assert_eq!(message.payload.get(), event.payload);
    }
    drop_stream(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_resumes_after_the_last_published_event() {
    let store = common::sqlite().await;
    let config = isolated();
    append(&store.ledger, 3, 10).await;
    {
        let relay = Relay::connect(store.ledger.clone(), config.clone())
            .await
            .unwrap();
        assert_eq!(relay.publish_released().await.unwrap(), 30);
    }
    append(&store.ledger, 2, 10).await;
    // A new process: it learns where to resume from the stream itself.
    let relay = Relay::connect(store.ledger.clone(), config.clone())
        .await
        .unwrap();
    assert_eq!(relay.published_position().await.unwrap().0, 30);
    assert_eq!(relay.publish_released().await.unwrap(), 20);
    let positions: Vec<u64> = published(&config)
        .await
        .iter()
        .map(|m| m.position)
        .collect();
    assert_eq!(positions, (1..=50).collect::<Vec<u64>>());
    drop_stream(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_following_relay_publishes_live_appends_and_stops_on_shutdown() {
    let store = common::postgres().await;
    let config = isolated();
    let relay = Arc::new(
        Relay::connect(store.ledger.clone(), config.clone())
            .await
            .unwrap(),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let relay = Arc::clone(&relay);
        tokio::spawn(async move {
            relay
                .run(async {
                    let _ = stopped.await;
                })
                .await
        })
    };
    append(&store.ledger, 4, 5).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while relay.published_position().await.unwrap().0 < 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(published(&config).await.len(), 20);
    drop_stream(&config).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_drops_a_republished_event_by_its_message_id() {
    let store = common::sqlite().await;
    let config = isolated();
    append(&store.ledger, 1, 3).await;
    let relay = Relay::connect(store.ledger.clone(), config.clone())
        .await
        .unwrap();
    relay.publish_released().await.unwrap();
    // Publish the second event again, as a relay that lost its ack would.
    let events = store
        .ledger
        .read_all(recur_ledger::Position::START, 10)
        .await
        .unwrap();
    let client = async_nats::connect(&config.nats_url).await.unwrap();
    let js = jetstream::new(client);
    let body =
        serde_json::to_vec(&EventMessage::from_recorded(&events[1], events[0].position).unwrap())
            .unwrap();
    let ack = js
        .send_publish(
            format!("{}.invoice", config.subject_prefix),
            jetstream::message::PublishMessage::build()
                .payload(body.into())
                .message_id(events[1].id.to_string())
                .header(POSITION_HEADER, events[1].position.0.to_string().as_str()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.duplicate);
    assert_eq!(published(&config).await.len(), 3);
    drop_stream(&config).await;
}

/// Subscriptions that start, change and stop, to give the MRR projection work.
async fn business(ledger: &Ledger, customers: usize) {
    use recur_commands::billing::{NewCustomer, NewSubscription, PlanChange, Trial};
    use recur_commands::subscription::Timing;
    let billing = recur_commands::Billing::open(
        ledger.clone(),
        recur_commands::Catalog::default_catalog().unwrap(),
        Arc::new(recur_commands::SimulatedGateway::new()),
    )
    .await
    .unwrap();
    for i in 0..customers {
        let customer = billing
            .create_customer(NewCustomer::default())
            .await
            .unwrap();
        let card =
            recur_commands::SimulatedGateway::tokenize("4242424242424242", 12, 2040).unwrap();
        billing.attach_payment_method(customer, card).await.unwrap();
        let sub = billing
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
        if i % 3 == 1 {
            let change = PlanChange {
                plan_id: "group_coaching".into(),
                price_id: None,
                quantity: None,
                timing: Timing::Now,
            };
            billing.change_plan(sub, change).await.unwrap();
        }
        if i % 4 == 2 {
            billing.cancel(sub, Timing::Now).await.unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_fed_projection_skips_redeliveries_fills_gaps_and_equals_a_rebuild() {
    use recur_projections::mrr::{self, Mrr};
    use recur_projections::nats_feed::NatsFeed;
    let store = common::postgres().await;
    let config = isolated();
    let relay = Relay::connect(store.ledger.clone(), config.clone())
        .await
        .unwrap();
    business(&store.ledger, 12).await;
    relay.publish_released().await.unwrap();

    let mut projector = recur_projections::Projector::open(store.ledger.clone(), Mrr::new())
        .await
        .unwrap();
    let mut feed = NatsFeed::connect(&config, "mrr").await.unwrap();
    let first = feed.pump(&mut projector).await.unwrap();
    assert!(first.applied > 0 && first.caught_up == 0, "{first:?}");

    // A second consumer from the stream's start delivers everything again, as a
    // restart before acknowledging would: nothing is applied twice.
    let mut again = NatsFeed::connect(&config, "mrr-replayed").await.unwrap();
    let replayed = again.pump(&mut projector).await.unwrap();
    assert_eq!(
        (replayed.applied, replayed.caught_up),
        (0, 0),
        "{replayed:?}"
    );
    assert_eq!(replayed.skipped, replayed.received);

    // More business, with one message lost from the stream: the gap is filled from the ledger.
    business(&store.ledger, 6).await;
    relay.publish_released().await.unwrap();
    let client = async_nats::connect(&config.nats_url).await.unwrap();
    let mut stream = jetstream::new(client)
        .get_stream(&config.stream)
        .await
        .unwrap();
    let last = stream.info().await.unwrap().state.last_sequence;
    assert!(stream.delete_message(last - 5).await.unwrap());
    let mut applied = 0;
    let mut caught_up = 0;
    for _ in 0..5 {
        let pumped = feed.pump(&mut projector).await.unwrap();
        applied += pumped.applied;
        caught_up += pumped.caught_up;
        if pumped.received == 0 {
            break;
        }
    }
    assert!(
        caught_up > 0,
        "the gap was noticed: applied {applied}, caught up {caught_up}"
    );
    assert_eq!(
        projector.position(),
        store.ledger.last_position().await.unwrap()
    );

    let db = projector.db().clone();
    let live = mrr::snapshot(&db).await.unwrap();
    projector.rebuild().await.unwrap();
    assert_eq!(mrr::snapshot(&db).await.unwrap(), live);
    drop_stream(&config).await;
}
