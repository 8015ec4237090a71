//! The migration path of issue 14: a ledger written before personal data was
//! encrypted holds contact details in clear that no erasure can remove;
//! `recur ledger rekey` moves it to a new ledger where none is left in clear.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::sync::Arc;

use recur_commands::billing::NewCustomer;
use recur_commands::customer::{ContactDetails, ContactEvent, ErasureReason};
use recur_commands::privacy::{MasterKey, Vault};
use recur_commands::{Billing, Catalog, CustomerId, DomainEvent, SimulatedGateway};
use recur_ledger::{EventId, ExpectedVersion, Ledger, LedgerConfig, NewEvent, Source, SystemClock};

const MASTER_KEY: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

fn temp_file(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "recur-rekey-{name}-{}.sqlite",
        uuid::Uuid::new_v4().simple()
    ))
}

fn remove(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

fn recur(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_recur"))
        .args(args)
        .env_remove("DATABASE_URL")
        .env("RECUR_MASTER_KEY", MASTER_KEY)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn file_holds(path: &std::path::Path, needle: &str) -> bool {
    let mut bytes = std::fs::read(path).unwrap();
    bytes.extend(std::fs::read(format!("{}-wal", path.display())).unwrap_or_default());
    bytes
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

fn person(n: u32) -> ContactDetails {
    ContactDetails {
        name: format!("Legacy Person{n}"),
        email: format!("legacy.person{n}@example.com"),
        phone: Some(format!("+44 20 7946 00{n:02}")),
    }
}

async fn billing(ledger: &Ledger) -> Billing {
    Billing::open(
        ledger.clone(),
        Catalog::default_catalog().unwrap(),
        Arc::new(SimulatedGateway::new()),
    )
    .await
    .unwrap()
    .with_vault(Arc::new(Vault::new(
        MasterKey::parse(MASTER_KEY).unwrap(),
        Vec::new(),
    )))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ledger_written_before_encryption_is_rekeyed_with_nothing_left_in_clear() {
    let old = temp_file("old");
    let old_url = format!("sqlite:{}", old.display());
    let ledger = Ledger::open(
        LedgerConfig::new(&old_url).create_if_missing(true),
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    let live = billing(&ledger).await;
    // Three customers whose details an earlier version wrote in clear.
    let mut customers: Vec<CustomerId> = Vec::new();
    for n in 0..3 {
        let id = live.create_customer(NewCustomer::default()).await.unwrap();
        let legacy = ContactEvent::ContactDetailsUpdated { details: person(n) };
        let event = NewEvent::new(
            EventId::new_at(time::OffsetDateTime::now_utc()),
            legacy.event_type(),
            legacy.schema_version(),
            &legacy,
        )
        .unwrap();
        ledger
            .append(
                &recur_commands::billing::contact_stream(id).unwrap(),
                ExpectedVersion::Any,
                vec![event],
            )
            .await
            .unwrap();
        customers.push(id);
    }
    // Details in clear are still read, and an update now is encrypted.
    assert_eq!(live.contact(customers[0]).await.unwrap(), Some(person(0)));
    live.update_contact(customers[1], person(11)).await.unwrap();
    assert_eq!(live.contact(customers[1]).await.unwrap(), Some(person(11)));
    // Erasing the third hides its details, but cannot remove them from the file.
    live.forget(
        customers[2],
        ErasureReason::RequestedByCustomer,
        Source::Cli,
    )
    .await
    .unwrap();
    assert_eq!(live.contact(customers[2]).await.unwrap(), None);
    drop((live, ledger));
    assert!(
        file_holds(&old, &person(2).email),
        "the problem: still in clear"
    );
    assert!(!file_holds(&old, &person(11).email), "encrypted since");

    let new = temp_file("new");
    let new_url = format!("sqlite:{}", new.display());
    let (code, said) = recur(&["ledger", "rekey", "--database", &old_url, "--to", &new_url]);
    assert_eq!(code, Some(0), "{said}");
    assert!(
        said.contains("3 contact event(s) encrypted (1 of erased customers"),
        "{said}"
    );
    for n in [0, 1, 2, 11] {
        let details = person(n);
        for text in [
            &details.name,
            &details.email,
            details.phone.as_ref().unwrap(),
        ] {
            assert!(!file_holds(&new, text), "{text} in clear in the new ledger");
        }
    }
    let (code, said) = recur(&["ledger", "verify", "--database", &new_url]);
    assert_eq!(code, Some(0), "{said}");

    // The new ledger reads as the old one did, the erased customer erased for good.
    let ledger = Ledger::open(LedgerConfig::new(&new_url), Arc::new(SystemClock))
        .await
        .unwrap();
    let moved = billing(&ledger).await;
    assert_eq!(moved.contact(customers[0]).await.unwrap(), Some(person(0)));
    assert_eq!(moved.contact(customers[1]).await.unwrap(), Some(person(11)));
    assert_eq!(moved.contact(customers[2]).await.unwrap(), None);
    assert!(
        moved
            .customer(customers[2])
            .await
            .unwrap()
            .erased_at
            .is_some()
    );
    drop((moved, ledger));

    // Only into an empty ledger.
    let (code, said) = recur(&["ledger", "rekey", "--database", &old_url, "--to", &new_url]);
    assert_eq!(code, Some(1), "{said}");
    assert!(said.contains("must be empty"), "{said}");
    remove(&old);
    remove(&new);
}
