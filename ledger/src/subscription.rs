//! Live subscriptions and replays: catch up from history, then (for a
//! subscription) follow new commits, never skipping or repeating an event. A
//! background reader fetches the next page while the caller works on this one.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::envelope::{Position, RecordedEvent};
use crate::error::LedgerError;
use crate::store::Ledger;

/// Events fetched per read.
pub const SUBSCRIPTION_PAGE_EVENTS: usize = 5_000;
/// Pages read ahead of the caller.
const PAGES_AHEAD_MAX: usize = 2;
/// Pause while a local commit's release is settling.
const SETTLE_PAUSE: Duration = Duration::from_millis(1);

type Page = Result<Vec<RecordedEvent>, LedgerError>;

/// The background reader's side: reads pages after `after` until `end` (if any).
async fn read_ahead(
    ledger: Ledger,
    mut after: Position,
    end: Option<Position>,
    pages: mpsc::Sender<Page>,
) {
    let poll = Duration::from_millis(ledger.config().poll_interval_ms.max(1));
    // The horizon last seen; while released events lie ahead, pages need no new probe.
    let mut known: Option<u64> = None;
    loop {
        // Registered before reading, so a commit that lands meanwhile still wakes us.
        let committed = ledger.committed().clone();
        let notified = committed.notified();
        let (released, allocated) = match known {
            Some(released) if after.0 < released => (released, released),
            _ => match ledger.release_status().await {
                Ok(status) => status,
                Err(error) => {
                    let _ = pages.send(Err(error)).await;
                    return;
                }
            },
        };
        known = Some(released);
        let up_to = end.map_or(released, |end| end.0.min(released));
        match ledger
            .read_released(after, up_to, SUBSCRIPTION_PAGE_EVENTS)
            .await
        {
            Ok(page) if !page.is_empty() => {
                after = page.last().map_or(after, |e| e.position);
                if pages.send(Ok(page)).await.is_err() {
                    return;
                }
                continue;
            }
            // Only holes up to the horizon: look at the horizon again after waiting.
            Ok(_) => known = None,
            Err(error) => {
                let _ = pages.send(Err(error)).await;
                return;
            }
        }
        if end.is_some_and(|end| after >= end || released >= end.0) {
            return;
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

/// The caller's side of a reader: buffered pages and the last position handed out.
#[derive(Debug)]
struct Feed {
    ledger: Ledger,
    cursor: Position,
    end: Option<Position>,
    buffer: VecDeque<RecordedEvent>,
    pages: Option<mpsc::Receiver<Page>>,
    reader: Option<JoinHandle<()>>,
}

impl Feed {
    fn new(ledger: Ledger, after: Position, end: Option<Position>) -> Self {
        Self {
            ledger,
            cursor: after,
            end,
            buffer: VecDeque::new(),
            pages: None,
            reader: None,
        }
    }

    /// The next event, or `None` when a bounded feed has reached its end.
    async fn next(&mut self) -> Result<Option<RecordedEvent>, LedgerError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                if event.position <= self.cursor {
                    return Err(LedgerError::Integrity(format!(
                        "feed went backwards: {} after {}",
                        event.position, self.cursor
                    )));
                }
                self.cursor = event.position;
                return Ok(Some(event));
            }
            if self.pages.is_none() {
                // (Re)start the reader from the last event handed out, e.g. after an error.
                let (sender, receiver) = mpsc::channel(PAGES_AHEAD_MAX);
                self.reader = Some(tokio::spawn(read_ahead(
                    self.ledger.clone(),
                    self.cursor,
                    self.end,
                    sender,
                )));
                self.pages = Some(receiver);
            }
            let received = match self.pages.as_mut() {
                Some(pages) => pages.recv().await,
                None => None,
            };
            match received {
                Some(Ok(page)) => self.buffer.extend(page),
                Some(Err(error)) => {
                    self.pages = None;
                    return Err(error);
                }
                // The reader finished: only a bounded feed ends.
                None => {
                    self.pages = None;
                    if self.end.is_some() {
                        return Ok(None);
                    }
                }
            }
        }
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        if let Some(reader) = &self.reader {
            reader.abort();
        }
    }
}

/// A position-ordered feed of released events that follows new commits forever.
#[derive(Debug)]
pub struct Subscription(Feed);

impl Subscription {
    pub(crate) fn new(ledger: Ledger, after: Position) -> Self {
        Self(Feed::new(ledger, after, None))
    }

    /// The position of the last event handed out (or the starting point).
    pub fn position(&self) -> Position {
        self.0.cursor
    }

    /// The next event in global order; waits for new commits when caught up.
    ///
    /// # Errors
    /// Database errors (calling again resumes after [`Self::position`]), or
    /// [`LedgerError::Integrity`] if the store ever handed out a position twice.
    pub async fn next(&mut self) -> Result<RecordedEvent, LedgerError> {
        loop {
            if let Some(event) = self.0.next().await? {
                return Ok(event);
            }
        }
    }
}

/// A position-ordered read of everything released when it started.
#[derive(Debug)]
pub struct Replay(Feed);

impl Replay {
    pub(crate) fn new(ledger: Ledger, after: Position, end: Position) -> Self {
        Self(Feed::new(ledger, after, Some(end)))
    }

    /// The position of the last event handed out (or the starting point).
    pub fn position(&self) -> Position {
        self.0.cursor
    }

    /// The next event, or `None` at the end.
    ///
    /// # Errors
    /// Database errors (calling again resumes after [`Self::position`]).
    pub async fn next(&mut self) -> Result<Option<RecordedEvent>, LedgerError> {
        self.0.next().await
    }
}
