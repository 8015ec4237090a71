//! `recur ledger rekey`: the migration path for a ledger written before personal
//! data was encrypted. Its contact events hold names, emails and phones in
//! clear, and an append-only table cannot forget them; so the whole ledger is
//! replayed, in order, into a new one where they are encrypted under each
//! customer's data key — and those of customers already erased under a key
//! that is thrown away at once. Every other event is copied byte for byte with
//! its id, stream, version, metadata and time; the copy is then verified event
//! by event against the original before it is reported good. The operator
//! switches to the new ledger and destroys the old one and its backups
//! (docs/security.md, "Ledgers written before encryption").

use std::collections::HashSet;
use std::sync::Arc;

use anyhow::{Context, bail, ensure};
use recur_commands::customer::ContactEvent;
use recur_commands::personal_data::data_key;
use recur_commands::privacy::Vault;
use recur_commands::tagged::DecodeEvent;
use recur_commands::{CustomerId, DomainEvent};
use recur_ledger::limits::EVENTS_PER_APPEND_MAX;
use recur_ledger::{
    ExpectedVersion, Ledger, NewEvent, Position, RecordedEvent, StreamId, SystemClock, TestClock,
};

use crate::config::{KeyFile, LedgerArgs, MasterKeyArgs, WhenMissing};

/// Events read per page of the source.
const PAGE_EVENTS: usize = 1_000;

/// What a re-key did.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RekeySummary {
    /// Events copied.
    pub events: u64,
    /// Contact events that were in clear and are now encrypted.
    pub encrypted: u64,
    /// Of those, the ones of erased customers, encrypted under a destroyed key.
    pub shredded: u64,
    /// Data keys carried over (live) and tombstones (erased customers).
    pub keys_carried: u64,
    /// The new ledger's last position.
    pub last_position: u64,
}

/// Copies `from` into the empty ledger `to`, encrypting contact details
/// written in clear, then checks the copy event by event.
///
/// # Errors
/// A source that does not verify, a target that is not empty, a master key
/// that is missing, any difference found by the check.
pub async fn rekey(
    from: &LedgerArgs,
    to: &LedgerArgs,
    master_keys: &MasterKeyArgs,
) -> anyhow::Result<RekeySummary> {
    let vault = master_keys.vault(&to.data_dir, KeyFile::MustExist)?;
    let source = from
        .open(WhenMissing::Refuse, Arc::new(SystemClock))
        .await
        .context("the ledger to re-key")?;
    let report = source.verify().await?;
    ensure!(
        report.is_intact(),
        "the ledger to re-key does not verify (`recur ledger verify` names where): copy only an intact ledger"
    );
    let head = source.last_position().await?;
    let first_at = source
        .read_all(Position::START, 1)
        .await?
        .first()
        .map(|event| event.recorded_at)
        .context("the ledger to re-key holds no events")?;
    // The copy is stamped with each original event's time.
    let clock = TestClock::at(first_at);
    let target = to
        .open(WhenMissing::Create, Arc::new(clock.clone()))
        .await
        .context("the new ledger")?;
    ensure!(
        target.last_position().await? == Position::START,
        "the new ledger must be empty"
    );

    let mut summary = RekeySummary::default();
    let erased = erased_customers(&source, head).await?;
    summary.keys_carried = carry_keys(&source, &target, &erased).await?;

    let mut after = Position::START;
    // One append per original append (same stream, metadata and time, up to the
    // ledger's limit per append), also when it straddles two pages: an append's
    // idempotency key must not be used twice.
    let mut batch: Vec<RecordedEvent> = Vec::new();
    while after < head {
        let page = source.read_all(after, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in page.into_iter().filter(|e| e.position <= head) {
            let joins = batch.len() < EVENTS_PER_APPEND_MAX
                && batch.last().is_some_and(|previous| {
                    previous.stream_id == event.stream_id
                        && previous.metadata == event.metadata
                        && previous.recorded_at == event.recorded_at
                });
            if !joins {
                copy(&target, &clock, &vault, &erased, &batch, &mut summary).await?;
                batch.clear();
            }
            batch.push(event);
        }
    }
    copy(&target, &clock, &vault, &erased, &batch, &mut summary).await?;
    summary.last_position = check_copy(&source, &target).await?;
    Ok(summary)
}

/// Customers whose personal data was erased in `ledger` (up to `head`).
async fn erased_customers(ledger: &Ledger, head: Position) -> anyhow::Result<HashSet<CustomerId>> {
    let mut erased = HashSet::new();
    let mut after = Position::START;
    while after < head {
        let page = ledger.read_all(after, PAGE_EVENTS).await?;
        let Some(last) = page.last() else { break };
        after = last.position;
        for event in &page {
            if event.event_type == "PersonalDataErased"
                && event.stream_id.category() == CustomerId::CATEGORY
            {
                erased.insert(owner(&event.stream_id)?);
            }
        }
    }
    Ok(erased)
}

/// Copies the source's live data keys (still wrapped: no master key needed)
/// and a tombstone for every erased customer; returns how many.
async fn carry_keys(
    source: &Ledger,
    target: &Ledger,
    erased: &HashSet<CustomerId>,
) -> anyhow::Result<u64> {
    let mut carried = 0;
    let mut after = None;
    loop {
        let page = source.live_data_keys(after, 500).await?;
        for key in &page {
            if !erased.contains(&CustomerId(key.owner)) {
                target
                    .insert_data_key(key.owner, &key.wrapped, &key.master_key_id)
                    .await?;
                carried += 1;
            }
        }
        match page.last() {
            Some(last) if page.len() == 500 => after = Some(last.owner),
            _ => break,
        }
    }
    for customer in erased {
        target.destroy_data_key(customer.0).await?;
        carried += 1;
    }
    Ok(carried)
}

/// Appends one original append's events to `target`, encrypting contact
/// details written in clear.
async fn copy(
    target: &Ledger,
    clock: &TestClock,
    vault: &Vault,
    erased: &HashSet<CustomerId>,
    batch: &[RecordedEvent],
    summary: &mut RekeySummary,
) -> anyhow::Result<()> {
    let Some(first) = batch.first() else {
        return Ok(());
    };
    clock.set(first.recorded_at);
    let mut events = Vec::with_capacity(batch.len());
    for event in batch {
        let new = if event.event_type == "ContactDetailsUpdated" {
            let customer = owner(&event.stream_id)?;
            let ContactEvent::ContactDetailsUpdated { details } =
                ContactEvent::decode_payload(&event.payload).with_context(|| {
                    format!("the contact event at position {}", event.position.0)
                })?
            else {
                bail!("position {}: not a contact update", event.position.0);
            };
            let json = serde_json::to_vec(&details)?;
            let encrypted = if erased.contains(&customer) {
                // Erased: encrypted under a key that is never stored.
                summary.shredded += 1;
                let (key, _) = vault.new_data_key(customer.0)?;
                vault.encrypt(&key, &json)?
            } else {
                let key = data_key(target, vault, customer, true)
                    .await?
                    .context("the customer's data key")?;
                vault.encrypt(&key, &json)?
            };
            summary.encrypted += 1;
            let encrypted = ContactEvent::ContactDetailsEncrypted { encrypted };
            NewEvent::new(
                event.id,
                encrypted.event_type(),
                encrypted.schema_version(),
                &encrypted,
            )?
        } else {
            NewEvent::from_json(
                event.id,
                &event.event_type,
                event.schema_version,
                event.payload.clone(),
            )?
        };
        events.push(new.with_metadata(event.metadata.clone()));
    }
    let expected = ExpectedVersion::Exact(first.stream_version - 1);
    let appended = target.append(&first.stream_id, expected, events).await?;
    ensure!(
        !appended.replayed,
        "position {} of {} was taken for a replay of an earlier append",
        first.position.0,
        first.stream_id
    );
    summary.events += batch.len() as u64;
    Ok(())
}

/// Reads both ledgers side by side, in order: the same ids, streams,
/// versions, metadata and times; payloads byte for byte but for the contact
/// events encrypted; no contact detail in clear left; the copy verifies. (The
/// positions themselves may differ: holes a rolled-back append left in a
/// Postgres source are not copied.) Returns the copy's last position.
async fn check_copy(source: &Ledger, target: &Ledger) -> anyhow::Result<u64> {
    let (mut from_source, mut from_target) = (Position::START, Position::START);
    loop {
        let original = source.read_all(from_source, PAGE_EVENTS).await?;
        let copied = target.read_all(from_target, PAGE_EVENTS).await?;
        ensure!(
            original.len() == copied.len(),
            "the copy differs after source position {}",
            from_source.0
        );
        for (a, b) in original.iter().zip(&copied) {
            let same_place = a.id == b.id
                && a.stream_id == b.stream_id
                && a.stream_version == b.stream_version
                && a.metadata == b.metadata
                && a.recorded_at == b.recorded_at;
            let same_fact = if a.event_type == "ContactDetailsUpdated" {
                b.event_type == "ContactDetailsEncrypted"
            } else {
                a.event_type == b.event_type
                    && a.schema_version == b.schema_version
                    && a.payload == b.payload
            };
            ensure!(
                same_place && same_fact,
                "the copy differs at source position {}",
                a.position.0
            );
        }
        match (original.last(), copied.last()) {
            (Some(a), Some(b)) => (from_source, from_target) = (a.position, b.position),
            _ => break,
        }
    }
    let report = target.verify().await?;
    ensure!(
        report.is_intact(),
        "the copy does not verify: {:?}",
        report.first_break()
    );
    Ok(from_target.0)
}

/// The customer a `contact-<id>` or `customer-<id>` stream belongs to.
fn owner(stream: &StreamId) -> anyhow::Result<CustomerId> {
    let id = stream
        .as_str()
        .split_once('-')
        .map(|(_, id)| id)
        .with_context(|| format!("{stream} names no customer"))?;
    CustomerId::parse(id).with_context(|| format!("{stream} names no customer"))
}
