//! What one request carries through the billing service without every method
//! taking it as a parameter: who is acting (recorded as the events' actor), the
//! version the caller last saw of the resource it changes (`If-Match`), and the
//! ledger position of the last event it wrote (answered to the caller).
//!
//! The context lives for one future ([`within`]); work outside it (the
//! scheduler) runs with none.

use std::cell::RefCell;
use std::future::Future;

use recur_ledger::{Position, StreamId};

use crate::error::BillingError;

/// One request's context.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestContext {
    /// The acting API key's id, recorded as the actor of every event written.
    pub actor: Option<String>,
    /// The stream the caller changes and the version it last saw.
    pub expected: Option<(StreamId, u64)>,
    /// The position of the last event written, once something was.
    pub last_position: Option<Position>,
}

tokio::task_local! {
    static CONTEXT: RefCell<RequestContext>;
}

/// Runs `future` with `context`; returns its output and the context after it
/// (with the position of the last write).
pub async fn within<F: Future>(context: RequestContext, future: F) -> (F::Output, RequestContext) {
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

/// Refuses a write to `stream` at `version` when the caller expected another.
pub(crate) fn check_expected(stream: &StreamId, version: u64) -> Result<(), BillingError> {
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
