//! What one request carries through the billing service without every method
//! taking it as a parameter: who is acting (recorded as the events' actor), the
//! request's id (recorded as the events' correlation id, so an event leads back
//! to the request's log lines), the version the caller last saw of the resource
//! it changes (`If-Match`), and the ledger position of the last event it wrote
//! (answered to the caller).
//!
//! The context lives for one future ([`within`]); work outside it (the
//! scheduler) runs with none.
//!
//! A request sent with an `Idempotency-Key` also runs [`replayable`]: the ids it
//! makes are derived from the key (so a rerun after a crash names the same
//! customer, subscription and invoice), and each of its appends carries a ledger
//! idempotency key derived from the request key and the stream, so a rerun finds
//! what the first run committed and answers with it instead of writing again.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;

use recur_ledger::{IdempotencyKey, Position, StreamId};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::BillingError;

/// One request's context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The acting API key's id, recorded as the actor of every event written.
    pub actor: Option<String>,
    /// The request's id (`x-request-id`), recorded as the correlation id of
    /// every event written; a nested context without one keeps the outer one's.
    pub request_id: Option<Uuid>,
    /// The stream the caller changes and the version it last saw.
    pub expected: Option<(StreamId, u64)>,
    /// The position of the last event written, once something was.
    pub last_position: Option<Position>,
}

tokio::task_local! {
    static CONTEXT: RefCell<RequestContext>;
    static REPLAY: RefCell<Replay>;
}

/// A request run under an idempotency key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replayable {
    /// A digest naming the request (the caller's key id and its idempotency key).
    pub seed: [u8; 32],
    /// When the key was first claimed: the time part of every id the request makes.
    pub started_at: OffsetDateTime,
    /// An earlier run of this request may have written (it crashed, timed out or
    /// failed): look for its appends before deciding again.
    pub rerun: bool,
    /// An earlier run of this request did write: its `If-Match` was met then
    /// (a request checks it before its first write), so it is not checked
    /// again against the versions that run itself moved on.
    pub resumed: bool,
}

/// A replayable request's counters, in the order its work makes things.
struct Replay {
    scope: Replayable,
    ids_made: u64,
    /// Appends made per stream and command kind.
    appends: HashMap<(StreamId, &'static str), u32>,
}

/// Runs `future` as the request `scope`: its ids and appends are named by the request.
pub async fn replayable<F: Future>(scope: Replayable, future: F) -> F::Output {
    let replay = Replay {
        scope,
        ids_made: 0,
        appends: HashMap::new(),
    };
    REPLAY.scope(RefCell::new(replay), future).await
}

/// A new UUIDv7 at `now`; within a replayable request, the request's next id:
/// the same on every run of the request (its claim time, then a digest of the
/// request and the id's rank, the rank also in the 12 bits that order ids made
/// in one millisecond).
pub(crate) fn new_id(now: OffsetDateTime) -> Uuid {
    REPLAY
        .try_with(|r| {
            let mut replay = r.borrow_mut();
            replay.ids_made += 1;
            let rank = replay.ids_made;
            let digest = Sha256::new()
                .chain_update(replay.scope.seed)
                .chain_update(b"id")
                .chain_update(rank.to_be_bytes())
                .finalize();
            let mut random = [0u8; 10];
            random.copy_from_slice(&digest[..10]);
            random[..2].copy_from_slice(&u16::try_from(rank & 0x0fff).unwrap_or(0).to_be_bytes());
            let millis = replay.scope.started_at.unix_timestamp_nanos() / 1_000_000;
            let millis = u64::try_from(millis).unwrap_or(0);
            uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
        })
        .unwrap_or_else(|_| recur_ledger::EventId::new_at(now).0)
}

/// Within a replayable request, the ledger key of its append of `command` to
/// `stream`: `req-` and a digest of the request (its key and first claim), the
/// stream, the command's kind and how many commands of that kind the request
/// sent to the stream before. Named by what it does, not by its place among the
/// request's appends, so a rerun that skips a step its first run already took
/// (a payment attempt already started) cannot take another step's append for
/// its own. Outside a replayable request: None, and the command is not formatted.
pub(crate) fn append_key<C: std::fmt::Debug>(
    stream: &StreamId,
    command: &C,
) -> Option<IdempotencyKey> {
    REPLAY
        .try_with(|r| {
            let kind = command_kind(command);
            let mut replay = r.borrow_mut();
            let rank = replay.appends.entry((stream.clone(), kind)).or_insert(0);
            *rank += 1;
            let rank = *rank;
            let step = Sha256::new()
                .chain_update(kind.as_bytes())
                .chain_update(b"\n")
                .chain_update(rank.to_be_bytes())
                .finalize();
            let key = format!(
                "{}{}",
                stream_prefix(&replay.scope, stream),
                hex(&step[..8])
            );
            IdempotencyKey::parse(key).ok()
        })
        .ok()
        .flatten()
}

/// The start every append key of the request `scope` shares:
/// `req-<request>-` (the request: its key and its first claim's time).
fn request_prefix(scope: &Replayable) -> String {
    let started_us = scope.started_at.unix_timestamp_nanos() / 1_000;
    let request = Sha256::new()
        .chain_update(scope.seed)
        .chain_update(started_us.to_be_bytes())
        .finalize();
    format!("req-{}-", hex(&request[..8]))
}

/// The start of the request's append keys on `stream`: `req-<request>-<stream>-`.
fn stream_prefix(scope: &Replayable, stream: &StreamId) -> String {
    let digest = Sha256::digest(stream.as_str().as_bytes());
    format!("{}{}-", request_prefix(scope), hex(&digest[..4]))
}

/// The start of every ledger key the request `scope` appends under: what its
/// runs wrote is found with `Ledger::appended_under`.
pub fn request_key_prefix(scope: &Replayable) -> String {
    request_prefix(scope)
}

/// Within a rerun request: whether an earlier run of it appended to `stream`.
/// Outside one: false.
pub(crate) async fn earlier_run_wrote(
    ledger: &recur_ledger::Ledger,
    stream: &StreamId,
) -> Result<bool, BillingError> {
    let prefix = REPLAY
        .try_with(|r| {
            let replay = r.borrow();
            replay
                .scope
                .rerun
                .then(|| stream_prefix(&replay.scope, stream))
        })
        .ok()
        .flatten();
    match prefix {
        Some(prefix) => Ok(ledger.appended_under(&prefix).await?),
        None => Ok(false),
    }
}

/// A command's kind: the leading name of its Debug form (its variant, or its
/// type for a struct). Interned, so the counters can key on it.
fn command_kind<C: std::fmt::Debug>(command: &C) -> &'static str {
    use std::collections::HashSet;
    use std::sync::{Mutex, OnceLock};
    static KINDS: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
    let text = format!("{command:?}");
    let name: String = text
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect();
    let mut kinds = KINDS
        .get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(kind) = kinds.get(name.as_str()) {
        return kind;
    }
    let kind: &'static str = Box::leak(name.into_boxed_str());
    kinds.insert(kind);
    kind
}

/// When the replayable request running now was first claimed, if one is.
pub(crate) fn request_started_at() -> Option<OffsetDateTime> {
    REPLAY.try_with(|r| r.borrow().scope.started_at).ok()
}

/// Whether an earlier run of this request may have written.
pub(crate) fn is_rerun() -> bool {
    REPLAY.try_with(|r| r.borrow().scope.rerun).unwrap_or(false)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Runs `future` with `context`; returns its output and the context after it
/// (with the position of the last write). A context without a request id takes
/// the one of the context it runs in, so the HTTP edge can name the request once
/// around the whole handler.
pub async fn within<F: Future>(
    mut context: RequestContext,
    future: F,
) -> (F::Output, RequestContext) {
    if context.request_id.is_none() {
        context.request_id = request_id();
    }
    CONTEXT
        .scope(RefCell::new(context), async move {
            let output = future.await;
            let context = CONTEXT.with(|c| c.borrow().clone());
            (output, context)
        })
        .await
}

/// The acting key's id, if a request context is set.
pub(crate) fn actor() -> Option<String> {
    CONTEXT
        .try_with(|c| c.borrow().actor.clone())
        .ok()
        .flatten()
}

/// The request's id, if a request context names one.
pub(crate) fn request_id() -> Option<Uuid> {
    CONTEXT.try_with(|c| c.borrow().request_id).ok().flatten()
}

/// Refuses a write to `stream` at `version` when the caller expected another.
pub(crate) fn check_expected(stream: &StreamId, version: u64) -> Result<(), BillingError> {
    if REPLAY
        .try_with(|r| r.borrow().scope.resumed)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let expected = CONTEXT
        .try_with(|c| c.borrow().expected.clone())
        .ok()
        .flatten();
    match expected {
        Some((expected_stream, expected_version))
            if expected_stream == *stream && expected_version != version =>
        {
            Err(BillingError::Stale {
                stream: stream.to_string(),
                expected: expected_version,
                current: version,
            })
        }
        _ => Ok(()),
    }
}

/// Notes a write: the precondition on `stream` is met and spent, and the position advances.
pub(crate) fn wrote(stream: &StreamId, position: Position) {
    let _ = CONTEXT.try_with(|c| {
        let mut context = c.borrow_mut();
        if context.expected.as_ref().is_some_and(|(s, _)| s == stream) {
            context.expected = None;
        }
        context.last_position = Some(context.last_position.map_or(position, |p| p.max(position)));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_nested_context_keeps_the_request_id_of_the_one_it_runs_in() {
        let id = Uuid::now_v7();
        let outer = RequestContext {
            request_id: Some(id),
            ..RequestContext::default()
        };
        let inner = RequestContext {
            actor: Some("key".into()),
            ..RequestContext::default()
        };
        let ((seen, inner_after), outer_after) =
            within(outer, async { within(inner, async { request_id() }).await }).await;
        assert_eq!(seen, Some(id));
        assert_eq!(inner_after.request_id, Some(id));
        assert_eq!(inner_after.actor.as_deref(), Some("key"));
        assert_eq!(outer_after.request_id, Some(id));
    }

    #[tokio::test]
    async fn a_nested_context_with_its_own_request_id_keeps_it() {
        let outer = RequestContext {
            request_id: Some(Uuid::now_v7()),
            ..RequestContext::default()
        };
        let own = Uuid::now_v7();
        let inner = RequestContext {
            request_id: Some(own),
            ..RequestContext::default()
        };
        let ((seen, _), _) =
            within(outer, async { within(inner, async { request_id() }).await }).await;
        assert_eq!(seen, Some(own));
        assert_eq!(request_id(), None, "no context outside `within`");
    }
}
