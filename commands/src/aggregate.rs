//! The shape every aggregate has: decide on events from state and a command,
//! evolve state by an event. Both are pure: no clock, no I/O.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::DomainError;
use crate::tagged::DecodeEvent;

/// An event type name, as stored in the ledger's `event_type` column.
pub trait DomainEvent:
    Serialize + DeserializeOwned + DecodeEvent + Clone + Send + Sync + 'static
{
    /// The event's type name (`SubscriptionRenewed`).
    fn event_type(&self) -> &'static str;

    /// The payload schema version written today.
    fn schema_version(&self) -> u32 {
        1
    }
}

/// A consistency boundary with its own stream.
pub trait Aggregate: Clone + Default + Send + Sync + 'static {
    /// What happened.
    type Event: DomainEvent;
    /// What is asked (its Debug form's leading name is the command's kind,
    /// which names a replayable request's append: `context::append_key`).
    type Command: std::fmt::Debug;

    /// The events that `command` causes in this state, or why it is refused.
    /// An empty list means there is nothing to do (a retried command).
    ///
    /// # Errors
    /// [`DomainError`] when the command is not allowed; nothing is appended.
    fn decide(&self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// The state after `event`. Never fails: events are facts.
    fn evolve(&mut self, event: &Self::Event);
}

/// Folds `events` into a fresh state.
pub fn fold<A: Aggregate>(events: &[A::Event]) -> A {
    let mut state = A::default();
    for event in events {
        state.evolve(event);
    }
    state
}

/// Decides and applies in memory: the test harness's given/when/then in one call.
///
/// # Errors
/// The decision's [`DomainError`].
pub fn execute<A: Aggregate>(
    state: &mut A,
    command: A::Command,
) -> Result<Vec<A::Event>, DomainError> {
    let events = state.decide(command)?;
    for event in &events {
        state.evolve(event);
    }
    Ok(events)
}
