//! The dunning outbox across a killed process. A child process (this test
//! binary, re-running this very test with `RECUR_CRASH_CHILD_*` set) decides a campaign's step on a Postgres
//! ledger and starts sending through the real channels; its SMTP server stalls,
//! and the test kills it with SIGKILL mid-send. Restarted processes then send
//! through aiosmtpd (scripts/test.sh starts it: RECUR_TEST_SMTP_URL,
//! RECUR_TEST_SMTP_DIR) and our Twilio fake: each message arrives exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[path = "../ledger/tests/common/mod.rs"]
mod common;
#[path = "support/mail.rs"]
mod mail;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mail::{emails_for, smtp_server};
use recur_api::routes::update_card::UpdateCardConfig;
use recur_commands::billing::{NewCustomer, NewSubscription, Trial, decode_event};
use recur_commands::customer::{ContactDetails, Segment};
use recur_commands::dunning::{CATEGORY, DunningEvent};
use recur_commands::dunning_policy::Channel;
use recur_commands::privacy::{MasterKey, Vault};
use recur_commands::recovery::Messenger;
use recur_commands::scheduler::Scheduler;
use recur_commands::update_card_link::LinkKey;
use recur_commands::{Billing, Catalog, SimulatedGateway};
use recur_gateway::dunning_channels::DunningChannels;
use recur_ledger::{Ledger, LedgerConfig, Position, TestClock};
use recur_notify::{Outbound, SmtpConfig, SmtpMailer, TwilioFake, TwilioSms};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use time::macros::datetime;

const TEST_MASTER_KEY: &str = "5d1f0c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817060504";
const TEST_LINK_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const FROM: &str = "Billing <billing@recur.test>";
const SMS_FROM: &str = "+15005550006";
/// This test's name: the child process is this test binary running it again.
const TEST_NAME: &str = "a_sender_killed_mid_send_sends_each_message_exactly_once_after_restart";
/// Set for the child process (with the other `RECUR_CRASH_CHILD_*`): the test
/// then plays the sender instead of running the scenario.
const CHILD_ENV: &str = "RECUR_CRASH_CHILD_DATABASE";
/// How long a child may take to reach the stalled send or to finish.
const CHILD_DEADLINE: Duration = Duration::from_secs(120);

async fn billing_on(ledger: Ledger) -> Arc<Billing> {
    Arc::new(
        Billing::open(
            ledger,
            Catalog::default_catalog().unwrap(),
            Arc::new(SimulatedGateway::new()),
        )
        .await
        .unwrap()
        .with_vault(Arc::new(Vault::new(
            MasterKey::parse(TEST_MASTER_KEY).unwrap(),
            vec![],
        ))),
    )
}

/// What one child process is told: its ledger, its clock and its channels.
struct ChildRun<'a> {
    database: &'a str,
    now: OffsetDateTime,
    smtp_url: &'a str,
    sms_url: &'a str,
    sid: &'a str,
    token: &'a str,
}

fn spawn_child(run: &ChildRun<'_>) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, run.database)
        .env("RECUR_CRASH_CHILD_NOW", run.now.format(&Rfc3339).unwrap())
        .env("RECUR_CRASH_CHILD_SMTP", run.smtp_url)
        .env("RECUR_CRASH_CHILD_SMS", run.sms_url)
        .env("RECUR_CRASH_CHILD_SID", run.sid)
        .env("RECUR_CRASH_CHILD_TOKEN", run.token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

fn output_of(child: &mut Child) -> String {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    if let Some(mut stderr) = child.stderr.take() {
        let _ = stderr.read_to_string(&mut out);
    }
    out
}

/// Runs a child to its end; it must succeed.
fn run_child(run: &ChildRun<'_>) {
    let mut child = spawn_child(run);
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = output_of(&mut child);
            assert!(status.success(), "the child failed: {status}\n{out}");
            return;
        }
        if started.elapsed() > CHILD_DEADLINE {
            child.kill().unwrap();
            panic!("the child did not finish:\n{}", output_of(&mut child));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One message of the outbox as the ledger tells it.
#[derive(Debug, Default)]
struct OutboxEntry {
    channel: Option<Channel>,
    claims: u32,
    sent: u32,
}

/// Every dunning message of the ledger, by id.
async fn outbox(ledger: &Ledger) -> BTreeMap<uuid::Uuid, OutboxEntry> {
    let mut entries: BTreeMap<uuid::Uuid, OutboxEntry> = BTreeMap::new();
    let mut after = Position(0);
    loop {
        let page = ledger.read_all(after, 1_000).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.position;
        for recorded in page.iter().filter(|r| r.stream_id.category() == CATEGORY) {
            match decode_event::<DunningEvent>(&recorded.payload).unwrap() {
                DunningEvent::DunningMessageQueued { message } => {
                    entries.entry(message.message_id).or_default().channel = Some(message.channel);
                }
                DunningEvent::DunningMessageSending { message_id, .. } => {
                    entries.entry(message_id).or_default().claims += 1;
                }
                DunningEvent::DunningMessageSent { message_id, .. } => {
                    entries.entry(message_id).or_default().sent += 1;
                }
                _ => {}
            }
        }
    }
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_killed_mid_send_sends_each_message_exactly_once_after_restart() {
    if let Ok(database) = std::env::var(CHILD_ENV) {
        return sender_round(database).await;
    }
    let (smtp_url, mail_dir) = smtp_server();
    let (sms_url, fake) = TwilioFake::start().await.unwrap();
    let clock = TestClock::at(datetime!(2026-01-01 00:00 UTC));
    let store = common::postgres_with(Arc::new(clock.clone())).await;
    let database = store.location();
    let billing = billing_on(store.ledger.clone()).await;

    // A standard customer whose card is declined at the February renewal:
    // step 1 queues an email and an SMS.
    let customer = billing
        .create_customer(NewCustomer {
            segment: Segment::Standard,
            tax_location: None,
            contact: Some(ContactDetails {
                name: "Ann Client".into(),
                email: "ann@example.com".into(),
                phone: Some("+15555550100".into()),
            }),
        })
        .await
        .unwrap();
    let card = SimulatedGateway::tokenize("4242424242424242", 12, 2030).unwrap();
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
    billing
        .attach_payment_method(
            customer,
            SimulatedGateway::failing_card("card_declined", 12, 2030),
        )
        .await
        .unwrap();

    // An SMTP server that takes the connection and never answers: the first
    // process is killed while its email is in flight.
    let stalled = TcpListener::bind("127.0.0.1:0").unwrap();
    let stalled_url = format!("smtp://{}", stalled.local_addr().unwrap());
    let (accepted_tx, accepted) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in stalled.incoming() {
            held.push(stream);
            let _ = accepted_tx.send(());
        }
    });
    let renewal = datetime!(2026-02-01 00:00 UTC);
    let run = |now, smtp_url| ChildRun {
        database: &database,
        now,
        smtp_url,
        sms_url: &sms_url,
        sid: fake.account_sid(),
        token: fake.auth_token(),
    };
    let mut first = spawn_child(&run(renewal, &stalled_url));
    let started = Instant::now();
    tokio::task::block_in_place(|| {
        loop {
            if accepted.recv_timeout(Duration::from_millis(100)).is_ok() {
                break;
            }
            if let Some(status) = first.try_wait().unwrap() {
                panic!(
                    "the first process ended ({status}) before its email went out:\n{}",
                    output_of(&mut first)
                );
            }
            assert!(
                started.elapsed() < CHILD_DEADLINE,
                "the first process never reached the SMTP server"
            );
        }
        first.kill().unwrap();
        first.wait().unwrap();
    });

    // Killed between deciding and sending: both messages are in the ledger,
    // the email claimed by the dead process, and nothing says it was sent.
    let at_kill = outbox(&store.ledger).await;
    assert_eq!(at_kill.len(), 2, "email and SMS queued: {at_kill:?}");
    let email = *at_kill
        .iter()
        .find(|(_, e)| e.channel == Some(Channel::Email))
        .expect("an email queued")
        .0;
    let sms = *at_kill
        .iter()
        .find(|(_, e)| e.channel == Some(Channel::Sms))
        .expect("an SMS queued")
        .0;
    assert_eq!(at_kill[&email].claims, 1, "the email was being sent");
    assert_eq!(at_kill[&email].sent, 0, "the email was not sent");
    assert_eq!(
        (at_kill[&sms].claims, at_kill[&sms].sent),
        (0, 0),
        "the SMS, due after the email, was decided and not yet sent"
    );
    assert!(
        emails_for(&mail_dir, &BTreeSet::from([email])).is_empty(),
        "the stalled server kept the email"
    );

    // A restart within the dead sender's claim sends the SMS and leaves the
    // email to it; one after the claim lapsed sends the email; a third finds
    // nothing left to send.
    let restart = |minutes| {
        tokio::task::block_in_place(|| {
            run_child(&run(renewal + time::Duration::minutes(minutes), &smtp_url));
        });
    };
    restart(1);
    let within_claim = outbox(&store.ledger).await;
    assert_eq!(within_claim[&sms].sent, 1, "{within_claim:?}");
    assert_eq!(within_claim[&email].sent, 0, "{within_claim:?}");
    restart(10);
    restart(20);
    let after = outbox(&store.ledger).await;
    assert_eq!(after.len(), 2, "no message was added: {after:?}");
    for (id, entry) in &after {
        assert_eq!(entry.sent, 1, "{id} recorded as sent once: {entry:?}");
    }
    assert_eq!(
        after[&email].claims, 2,
        "claimed by the dead sender and one restart"
    );
    let arrived = emails_for(&mail_dir, &BTreeSet::from([email]));
    assert_eq!(arrived.len(), 1, "the email arrived exactly once");
    let texts: Vec<_> = fake
        .messages()
        .into_iter()
        .filter(|m| m.idempotency_token.as_deref() == Some(sms.to_string().as_str()))
        .collect();
    assert_eq!(texts.len(), 1, "the SMS arrived exactly once");
}

/// The child process's part (the test above, run again by itself): one
/// scheduler round on the shared ledger, at the given instant, through the
/// given channels.
async fn sender_round(database: String) {
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let now = OffsetDateTime::parse(&var("RECUR_CRASH_CHILD_NOW"), &Rfc3339).unwrap();
    let clock = TestClock::at(now);
    let ledger = Ledger::open(LedgerConfig::new(database), Arc::new(clock))
        .await
        .unwrap();
    let billing = billing_on(ledger).await;
    let channels = DunningChannels::new(
        Some(Outbound::Smtp(
            SmtpMailer::new(&SmtpConfig::new(&var("RECUR_CRASH_CHILD_SMTP"), FROM).unwrap())
                .unwrap(),
        )),
        Some(Outbound::Sms(
            TwilioSms::new(
                &var("RECUR_CRASH_CHILD_SMS"),
                &var("RECUR_CRASH_CHILD_SID"),
                &var("RECUR_CRASH_CHILD_TOKEN"),
                SMS_FROM,
            )
            .unwrap(),
        )),
        UpdateCardConfig {
            key: LinkKey::parse(TEST_LINK_KEY).unwrap(),
            public_url: "http://127.0.0.1".to_owned(),
            business_name: recur_notify::DEFAULT_BUSINESS_NAME.to_owned(),
        },
    );
    let scheduler =
        Scheduler::new(billing, 4).with_messenger(Arc::new(channels) as Arc<dyn Messenger>);
    let report = scheduler.tick().await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    println!("messages sent: {}", report.messages_sent);
}
