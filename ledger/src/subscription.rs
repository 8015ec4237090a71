//! Live subscriptions: catch up from history, then follow new commits, never
//! skipping or repeating an event (the release horizon makes that safe).

use std::collections::VecDeque;
use std::time::Duration;

use crate::envelope::{Position, RecordedEvent};
use crate::error::LedgerError;
use crate::store::Ledger;

/// Events fetched per read while catching up.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 1_000;
/// Pause while a local commit's release is settling.
const SETTLE_PAUSE: Duration = Duration::from_millis(1);

/// A position-ordered feed of released events, from a starting point onwards.
#[derive(Debug)]
pub struct Subscription {
    ledger: Ledger,
    cursor: Position,
    buffer: VecDeque<RecordedEvent>,
}

impl Subscription {
    pub(crate) fn new(ledger: Ledger, after: Position) -> Self {
        Self {
            ledger,
            cursor: after,
            buffer: VecDeque::new(),
        }
    }

    /// The position of the last event handed out (or the starting point).
    pub fn position(&self) -> Position {
        self.cursor
    }

    /// The next event in global order; waits for new commits when caught up.
    ///
    /// # Errors
    /// Database errors (the subscription can be retried from [`Self::position`]),
    /// or [`LedgerError::Integrity`] if the store ever handed out a position twice.
    pub async fn next(&mut self) -> Result<RecordedEvent, LedgerError> {
        let poll = Duration::from_millis(self.ledger.config().poll_interval_ms.max(1));
        loop {
            if let Some(event) = self.buffer.pop_front() {
                if event.position <= self.cursor {
                    return Err(LedgerError::Integrity(format!(
                        "subscription went backwards: {} after {}",
                        event.position, self.cursor
                    )));
                }
                self.cursor = event.position;
                return Ok(event);
            }
            // Registered before reading, so a commit that lands meanwhile still wakes us.
            let committed = self.ledger.committed().clone();
            let notified = committed.notified();
            let (released, allocated) = self.ledger.release_status().await?;
            let page = self
                .ledger
                .read_released(self.cursor, released, SUBSCRIPTION_PAGE_EVENTS)
                .await?;
            if !page.is_empty() {
                self.buffer.extend(page);
                continue;
            }
            if allocated > released {
                // Positions are allocated but not yet final: look again shortly.
                tokio::time::sleep(SETTLE_PAUSE).await;
            } else {
                tokio::select! {
                    () = notified => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        }
    }
}
