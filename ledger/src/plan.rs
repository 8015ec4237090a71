//! The decisions of a coalesced commit, shared by both backends: given what the
//! database already holds, what each append of the batch does. Pure, so both
//! backends agree, and appends within one batch see each other in order.

use std::collections::HashMap;

use uuid::Uuid;

use crate::envelope::Position;
use crate::hash::{self, GENESIS, Hash};
use crate::store::{AppendOutcome, PendingAppend};

/// What the database holds that the batch touches.
#[derive(Debug, Default)]
pub(crate) struct Known {
    /// Stream → (version, chain hash) of its last event.
    pub heads: HashMap<String, (u64, Hash)>,
    /// Event id → (stream, version, position) of committed events among the batch's ids.
    pub ids: HashMap<Uuid, (String, u64, Position)>,
    /// Idempotency key → (stream, events as (version, position)) of committed appends.
    pub keys: HashMap<String, (String, Vec<(u64, Position)>)>,
}

/// What one append of the batch will do.
#[derive(Debug)]
pub(crate) enum Plan {
    /// Write the events at these versions with these chain hashes.
    Insert {
        first_version: u64,
        chain: Vec<Hash>,
    },
    /// Already committed: answer with what was written then.
    Replay {
        stream_version: u64,
        positions: Vec<Position>,
    },
    /// A retry of an earlier append of this same batch.
    ReplayOf(usize),
    /// The stream is not at the expected version.
    Conflict { actual: u64 },
    /// The key belongs to an append to another stream.
    KeyReused,
    /// Some ids are committed elsewhere, or repeated.
    IdsReused,
}

/// Decides every append of `batch` in order.
pub(crate) fn plan(batch: &[PendingAppend], known: &Known) -> Vec<Plan> {
    let mut heads: HashMap<&str, (u64, Hash)> = HashMap::new();
    let mut batch_ids: HashMap<Uuid, usize> = HashMap::new();
    let mut batch_keys: HashMap<&str, usize> = HashMap::new();
    let mut plans = Vec::with_capacity(batch.len());
    for (index, append) in batch.iter().enumerate() {
        let stream = append.stream.as_str();
        let plan = decide(append, known, &mut heads, &batch_ids, &batch_keys, batch);
        if let Plan::Insert {
            first_version,
            chain,
        } = &plan
        {
            let last = chain.last().copied().unwrap_or(GENESIS);
            heads.insert(stream, (first_version + chain.len() as u64 - 1, last));
            for event in &append.events {
                batch_ids.insert(event.id, index);
            }
            if let Some(key) = &append.key {
                batch_keys.insert(key.as_str(), index);
            }
        }
        plans.push(plan);
    }
    plans
}

fn decide<'a>(
    append: &'a PendingAppend,
    known: &Known,
    heads: &mut HashMap<&'a str, (u64, Hash)>,
    batch_ids: &HashMap<Uuid, usize>,
    batch_keys: &HashMap<&str, usize>,
    batch: &[PendingAppend],
) -> Plan {
    let stream = append.stream.as_str();
    if let Some(key) = &append.key {
        if let Some((original, events)) = known.keys.get(key.as_str()) {
            if original != stream {
                return Plan::KeyReused;
            }
            return Plan::Replay {
                stream_version: events.iter().map(|(v, _)| *v).max().unwrap_or(0),
                positions: events.iter().map(|(_, p)| *p).collect(),
            };
        }
        if let Some(&earlier) = batch_keys.get(key.as_str()) {
            return if batch[earlier].stream == append.stream {
                Plan::ReplayOf(earlier)
            } else {
                Plan::KeyReused
            };
        }
    }
    let committed: Vec<&(String, u64, Position)> = append
        .events
        .iter()
        .filter_map(|e| known.ids.get(&e.id))
        .collect();
    let in_batch: Vec<usize> = append
        .events
        .iter()
        .filter_map(|e| batch_ids.get(&e.id).copied())
        .collect();
    if !committed.is_empty() || !in_batch.is_empty() {
        let n = append.events.len();
        if committed.len() == n && committed.iter().all(|(s, _, _)| s == stream) {
            let mut events: Vec<(u64, Position)> =
                committed.iter().map(|(_, v, p)| (*v, *p)).collect();
            events.sort_unstable();
            return Plan::Replay {
                stream_version: events.last().map_or(0, |(v, _)| *v),
                positions: events.into_iter().map(|(_, p)| p).collect(),
            };
        }
        if in_batch.len() == n
            && in_batch.iter().all(|&i| i == in_batch[0])
            && batch[in_batch[0]].stream == append.stream
            && batch[in_batch[0]].events.len() == n
        {
            return Plan::ReplayOf(in_batch[0]);
        }
        return Plan::IdsReused;
    }
    let mut seen = std::collections::HashSet::with_capacity(append.events.len());
    if !append.events.iter().all(|e| seen.insert(e.id)) {
        return Plan::IdsReused;
    }
    let (head_version, head_chain) = heads
        .get(stream)
        .copied()
        .or_else(|| known.heads.get(stream).copied())
        .unwrap_or((0, GENESIS));
    if let Some(required) = append.expected.required()
        && required != head_version
    {
        return Plan::Conflict {
            actual: head_version,
        };
    }
    let mut chain = Vec::with_capacity(append.events.len());
    let mut previous = head_chain;
    for (offset, event) in (1u64..).zip(&append.events) {
        previous = hash::chain_step(&previous, head_version + offset, &event.content_hash);
        chain.push(previous);
    }
    Plan::Insert {
        first_version: head_version + 1,
        chain,
    }
}

/// Turns plans plus the positions the database assigned into each append's outcome.
/// `inserted[i]` holds the positions of append `i` when its plan was `Insert`.
pub(crate) fn outcomes(plans: Vec<Plan>, inserted: &[Vec<Position>]) -> Vec<AppendOutcome> {
    let mut done: Vec<AppendOutcome> = Vec::with_capacity(plans.len());
    for (index, plan) in plans.into_iter().enumerate() {
        let outcome = match plan {
            Plan::Insert {
                first_version,
                chain,
            } => AppendOutcome::Appended {
                stream_version: first_version + chain.len() as u64 - 1,
                positions: inserted.get(index).cloned().unwrap_or_default(),
            },
            Plan::Replay {
                stream_version,
                positions,
            } => AppendOutcome::Replayed {
                stream_version,
                positions,
            },
            Plan::ReplayOf(earlier) => match &done[earlier] {
                AppendOutcome::Appended {
                    stream_version,
                    positions,
                }
                | AppendOutcome::Replayed {
                    stream_version,
                    positions,
                } => AppendOutcome::Replayed {
                    stream_version: *stream_version,
                    positions: positions.clone(),
                },
                _ => AppendOutcome::IdsReused,
            },
            Plan::Conflict { actual } => AppendOutcome::Conflict { actual },
            Plan::KeyReused => AppendOutcome::KeyReused,
            Plan::IdsReused => AppendOutcome::IdsReused,
        };
        done.push(outcome);
    }
    done
}
