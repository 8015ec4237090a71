//! `recur ledger verify` and sealing: recompute every content hash, every
//! per-stream chain step and every global seal, and report where it breaks.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::envelope::StreamId;
use crate::error::LedgerError;
use crate::hash::{self, GENESIS, Hash, SealDigest};
use crate::limits::{EVENTS_PER_SEAL_MAX, PROOF_EVENTS_MAX, PROOF_SEALS_MAX};
use crate::proof::{HexHash, PROOF_FORMAT, Proof, ProofEvent, ProofSeal, parse_hex};
use crate::store::{Backend, EventRow, Ledger, to_i64, to_u64};

/// Events read per page while verifying or sealing.
const VERIFY_PAGE_EVENTS: usize = 5_000;
/// Problems kept in a report; verification goes on counting past it.
const PROBLEMS_MAX: usize = 100;

/// One seal as stored; also the line `--seal-export` writes (docs/operations.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealReport {
    /// 1, 2, 3…
    pub seal_no: u64,
    /// Covers positions after this one…
    pub from_position: u64,
    /// …up to and including this one.
    pub to_position: u64,
    /// Events in the range.
    pub event_count: u64,
    /// The seal's digest, hex; chained to the previous seal.
    pub digest: String,
    /// The previous seal's digest, hex (64 zeros for seal 1): the link the digest folds in.
    pub previous_digest: String,
    /// When it was sealed (RFC 3339); the digest does not cover it.
    #[serde(with = "time::serde::rfc3339")]
    pub sealed_at: OffsetDateTime,
}

/// Something verification found wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The first position the problem concerns.
    pub position: u64,
    /// The stream, when known.
    pub stream_id: Option<String>,
    /// What is wrong.
    pub reason: String,
}

/// The outcome of a full verification.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// Events whose hashes were recomputed.
    pub events_checked: u64,
    /// Distinct streams seen.
    pub streams: u64,
    /// Seals recomputed.
    pub seals_checked: u64,
    /// Events after the last seal (only per-stream chains protect them).
    pub unsealed_events: u64,
    /// The digest of the last seal: record it elsewhere to anchor the ledger.
    pub head_digest: Option<String>,
    /// All problems found (at most 100 kept), in position order.
    pub problems: Vec<Problem>,
    /// How many problems were found in all.
    pub problem_count: u64,
}

impl VerifyReport {
    /// True when nothing is wrong.
    pub fn is_intact(&self) -> bool {
        self.problem_count == 0
    }

    /// The first position where the chain breaks.
    pub fn first_break(&self) -> Option<&Problem> {
        self.problems.iter().min_by_key(|p| p.position)
    }

    fn flag(&mut self, position: u64, stream_id: Option<&str>, reason: String) {
        self.problem_count += 1;
        if self.problems.len() < PROBLEMS_MAX {
            self.problems.push(Problem {
                position,
                stream_id: stream_id.map(str::to_owned),
                reason,
            });
        }
    }
}

struct StoredSeal {
    seal_no: u64,
    from_position: u64,
    to_position: u64,
    event_count: u64,
    digest: Vec<u8>,
}

struct VerifyRow {
    event: EventRow,
    chain_hash: Vec<u8>,
}

async fn load_seals(backend: &Backend) -> Result<Vec<StoredSeal>, LedgerError> {
    let sql = "SELECT seal_no, from_position, to_position, event_count, digest FROM seals ORDER BY seal_no";
    let rows: Vec<(i64, i64, i64, i64, Vec<u8>)> = match backend {
        Backend::Postgres(store) => sqlx::query_as(sql).fetch_all(store.pool()).await?,
        Backend::Sqlite(store) => sqlx::query_as(sql).fetch_all(store.readers()).await?,
    };
    Ok(rows
        .into_iter()
        .map(|(no, from, to, count, digest)| StoredSeal {
            seal_no: to_u64(no),
            from_position: to_u64(from),
            to_position: to_u64(to),
            event_count: to_u64(count),
            digest,
        })
        .collect())
}

async fn scan(backend: &Backend, after: u64, limit: usize) -> Result<Vec<VerifyRow>, LedgerError> {
    let rows = match backend {
        Backend::Postgres(store) => store.scan_with_chain(after, limit).await?,
        Backend::Sqlite(store) => store.scan_with_chain(after, limit).await?,
    };
    Ok(rows
        .into_iter()
        .map(|(event, chain_hash)| VerifyRow { event, chain_hash })
        .collect())
}

/// Compares a finished seal with what was stored.
fn close_seal(report: &mut VerifyReport, seal: &StoredSeal, digest: SealDigest, count: u64) {
    report.seals_checked += 1;
    let recomputed = digest.finish();
    if count != seal.event_count || recomputed[..] != seal.digest[..] {
        report.flag(
            seal.from_position + 1,
            None,
            format!(
                "seal {} over positions {}..={} does not match: {} events there now, {} when sealed; \
                 events in this range were changed, added or removed",
                seal.seal_no,
                seal.from_position + 1,
                seal.to_position,
                count,
                seal.event_count
            ),
        );
    }
}

/// Recomputes everything. Memory: one chain head per stream.
pub(crate) async fn verify(ledger: &Ledger) -> Result<VerifyReport, LedgerError> {
    let backend = ledger.backend();
    let mut report = VerifyReport::default();
    let seals = load_seals(backend).await?;
    let mut previous_to = 0;
    for (index, seal) in seals.iter().enumerate() {
        if seal.seal_no != index as u64 + 1 || seal.from_position != previous_to {
            report.flag(
                seal.from_position + 1,
                None,
                format!(
                    "seal {} does not follow seal {}: seals were removed or altered",
                    seal.seal_no, index
                ),
            );
        }
        previous_to = seal.to_position;
    }
    report.head_digest = seals.last().map(|s| hex::encode(&s.digest));
    let mut heads: HashMap<String, (u64, Hash)> = HashMap::new();
    let mut seal_index = 0;
    let mut open_seal: Option<(SealDigest, u64)> = None;
    let mut after = 0;
    loop {
        let rows = scan(backend, after, VERIFY_PAGE_EVENTS).await?;
        let Some(last) = rows.last() else { break };
        after = to_u64(last.event.position);
        for row in rows {
            let position = to_u64(row.event.position);
            // Close seals that end before this event.
            while seal_index < seals.len() && position > seals[seal_index].to_position {
                let (digest, count) = open_seal.take().unwrap_or_else(|| {
                    (SealDigest::new(&seal_digest_before(&seals, seal_index)), 0)
                });
                close_seal(&mut report, &seals[seal_index], digest, count);
                seal_index += 1;
            }
            check_event(&mut report, &mut heads, &row, position);
            let chain = hash::from_bytes(&row.chain_hash).unwrap_or(GENESIS);
            if seal_index < seals.len() && position > seals[seal_index].from_position {
                let entry = open_seal.get_or_insert_with(|| {
                    (SealDigest::new(&seal_digest_before(&seals, seal_index)), 0)
                });
                entry.0.add(position, &chain);
                entry.1 += 1;
            } else if seal_index >= seals.len() {
                report.unsealed_events += 1;
            }
            report.events_checked += 1;
        }
    }
    while seal_index < seals.len() {
        let (digest, count) = open_seal
            .take()
            .unwrap_or_else(|| (SealDigest::new(&seal_digest_before(&seals, seal_index)), 0));
        close_seal(&mut report, &seals[seal_index], digest, count);
        seal_index += 1;
    }
    report.streams = heads.len() as u64;
    report.problems.sort_by_key(|p| p.position);
    Ok(report)
}

fn seal_digest_before(seals: &[StoredSeal], index: usize) -> Hash {
    index
        .checked_sub(1)
        .and_then(|i| hash::from_bytes(&seals[i].digest))
        .unwrap_or(GENESIS)
}

/// Recomputes one event's content hash and checks its step in its stream's chain.
fn check_event(
    report: &mut VerifyReport,
    heads: &mut HashMap<String, (u64, Hash)>,
    row: &VerifyRow,
    position: u64,
) {
    let event = &row.event;
    let stream = event.stream_id.as_str();
    let recorded_at = hash::truncate_to_micros(event.recorded_at);
    let recomputed = hash::content_hash(&hash::Content {
        id: &event.id,
        stream_id: stream,
        event_type: &event.event_type,
        schema_version: u32::try_from(event.schema_version).unwrap_or(0),
        payload: &event.payload,
        metadata: &event.metadata,
        recorded_at,
    });
    let version = to_u64(event.version);
    let (previous_version, previous_chain) = heads.get(stream).copied().unwrap_or((0, GENESIS));
    if version != previous_version + 1 {
        report.flag(
            position,
            Some(stream),
            format!(
                "stream jumps from version {previous_version} to {version}: events are missing"
            ),
        );
    }
    let expected = hash::chain_step(&previous_chain, version, &recomputed);
    let stored_chain = hash::from_bytes(&row.chain_hash);
    if stored_chain != Some(expected) && version == previous_version + 1 {
        report.flag(
            position,
            Some(stream),
            format!(
                "event {} (version {version}) does not match its chain hash: its content was changed, \
                 or an earlier version was",
                event.id
            ),
        );
    }
    heads.insert(
        stream.to_owned(),
        (version, stored_chain.unwrap_or(expected)),
    );
}

/// Seals released events in ranges of at most [`EVENTS_PER_SEAL_MAX`].
pub(crate) async fn seal(ledger: &Ledger, released: u64) -> Result<Vec<SealReport>, LedgerError> {
    let backend = ledger.backend();
    let mut made = Vec::new();
    loop {
        let seals = load_seals(backend).await?;
        let (next_no, from, previous) = match seals.last() {
            Some(last) => (
                last.seal_no + 1,
                last.to_position,
                hash::from_bytes(&last.digest).unwrap_or(GENESIS),
            ),
            None => (1, 0, GENESIS),
        };
        if released <= from {
            return Ok(made);
        }
        let chain = chain_hashes(backend, from, released, EVENTS_PER_SEAL_MAX).await?;
        let Some(&(to, _)) = chain.last() else {
            return Ok(made);
        };
        let mut digest = SealDigest::new(&previous);
        for (position, hash) in &chain {
            digest.add(*position, hash);
        }
        let digest = digest.finish();
        let sealed_at = hash::truncate_to_micros(ledger.clock().now());
        let inserted = match backend {
            Backend::Postgres(store) => sqlx::query(
                "INSERT INTO seals (seal_no, from_position, to_position, event_count, digest, sealed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (seal_no) DO NOTHING",
            )
            .bind(to_i64(next_no))
            .bind(to_i64(from))
            .bind(to_i64(to))
            .bind(to_i64(chain.len() as u64))
            .bind(&digest[..])
            .bind(sealed_at)
            .execute(store.pool())
            .await?
            .rows_affected(),
            Backend::Sqlite(store) => sqlx::query(
                "INSERT INTO seals (seal_no, from_position, to_position, event_count, digest, sealed_at_us) \
                 VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (seal_no) DO NOTHING",
            )
            .bind(to_i64(next_no))
            .bind(to_i64(from))
            .bind(to_i64(to))
            .bind(to_i64(chain.len() as u64))
            .bind(&digest[..])
            .bind(hash::unix_micros(sealed_at))
            .execute(store.writer())
            .await?
            .rows_affected(),
        };
        // Zero rows: another process sealed this number first; reload and go on from its seal.
        if inserted == 1 {
            made.push(SealReport {
                seal_no: next_no,
                from_position: from,
                to_position: to,
                event_count: chain.len() as u64,
                digest: hex::encode(digest),
                previous_digest: hex::encode(previous),
                sealed_at,
            });
        }
    }
}

async fn chain_hashes(
    backend: &Backend,
    after: u64,
    up_to: u64,
    limit: u64,
) -> Result<Vec<(u64, Hash)>, LedgerError> {
    let rows: Vec<(i64, Vec<u8>)> =
        match backend {
            Backend::Postgres(store) => sqlx::query_as(
                "SELECT position, chain_hash FROM events WHERE position > $1 AND position <= $2 \
                  ORDER BY position LIMIT $3",
            )
            .bind(to_i64(after))
            .bind(to_i64(up_to))
            .bind(to_i64(limit))
            .fetch_all(store.pool())
            .await?,
            Backend::Sqlite(store) => {
                sqlx::query_as(
                    "SELECT position, chain_hash FROM events WHERE position > ? AND position <= ? \
                  ORDER BY position LIMIT ?",
                )
                .bind(to_i64(after))
                .bind(to_i64(up_to))
                .bind(to_i64(limit))
                .fetch_all(store.readers())
                .await?
            }
        };
    rows.into_iter()
        .map(|(position, chain)| {
            hash::from_bytes(&chain)
                .map(|h| (to_u64(position), h))
                .ok_or_else(|| {
                    LedgerError::Integrity(format!(
                        "chain hash at position {position} is not 32 bytes"
                    ))
                })
        })
        .collect()
}

/// Rows a proof reads per query of a stream.
const PROOF_PAGE_EVENTS: usize = 5_000;

/// Stored seals numbered `from_no` and up, in seal order, at most `limit`;
/// each with its previous digest and time. `from_no` itself only lends its
/// digest as the next one's previous digest, unless it is 1 (then genesis).
async fn seal_reports(
    backend: &Backend,
    after: u64,
    limit: usize,
) -> Result<Vec<SealReport>, LedgerError> {
    // The seal `after` is read too, for its digest: the next seal's link.
    let first = to_i64(after.max(1));
    let rows_max = to_i64(limit as u64).saturating_add(1);
    let rows: Vec<(i64, i64, i64, i64, Vec<u8>, OffsetDateTime)> = match backend {
        Backend::Postgres(store) => {
            sqlx::query_as(
                "SELECT seal_no, from_position, to_position, event_count, digest, sealed_at \
                 FROM seals WHERE seal_no >= $1 ORDER BY seal_no LIMIT $2",
            )
            .bind(first)
            .bind(rows_max)
            .fetch_all(store.pool())
            .await?
        }
        Backend::Sqlite(store) => {
            let rows: Vec<(i64, i64, i64, i64, Vec<u8>, i64)> = sqlx::query_as(
                "SELECT seal_no, from_position, to_position, event_count, digest, sealed_at_us \
                 FROM seals WHERE seal_no >= ? ORDER BY seal_no LIMIT ?",
            )
            .bind(first)
            .bind(rows_max)
            .fetch_all(store.readers())
            .await?;
            rows.into_iter()
                .map(|(no, from, to, count, digest, micros)| {
                    Ok((
                        no,
                        from,
                        to,
                        count,
                        digest,
                        crate::sqlite::recorded_at(micros)?,
                    ))
                })
                .collect::<Result<_, LedgerError>>()?
        }
    };
    let mut previous = GENESIS.to_vec();
    let mut reports = Vec::with_capacity(rows.len());
    for (no, from, to, count, digest, sealed_at) in rows {
        let seal_no = to_u64(no);
        if seal_no > after && reports.len() < limit {
            reports.push(SealReport {
                seal_no,
                from_position: to_u64(from),
                to_position: to_u64(to),
                event_count: to_u64(count),
                digest: hex::encode(&digest),
                previous_digest: hex::encode(&previous),
                sealed_at,
            });
        }
        previous = digest;
    }
    Ok(reports)
}

/// The seals made after seal `after` (0: all), in order, at most `limit`.
pub(crate) async fn seals_after(
    ledger: &Ledger,
    after: u64,
    limit: usize,
) -> Result<Vec<SealReport>, LedgerError> {
    seal_reports(ledger.backend(), after, limit).await
}

/// The newest seal, if any.
pub(crate) async fn newest_seal(ledger: &Ledger) -> Result<Option<SealReport>, LedgerError> {
    let sql = "SELECT max(seal_no) FROM seals";
    let newest: Option<i64> = match ledger.backend() {
        Backend::Postgres(store) => sqlx::query_scalar(sql).fetch_one(store.pool()).await?,
        Backend::Sqlite(store) => sqlx::query_scalar(sql).fetch_one(store.readers()).await?,
    };
    let Some(newest) = newest else {
        return Ok(None);
    };
    let after = to_u64(newest).saturating_sub(1);
    Ok(seal_reports(ledger.backend(), after, 1).await?.pop())
}

/// Builds the proof of one stream (see [`crate::proof`]) and checks it before
/// handing it out, so a ledger that no longer matches its seals is reported here.
pub(crate) async fn prove(ledger: &Ledger, stream: &StreamId) -> Result<Proof, LedgerError> {
    let backend = ledger.backend();
    let mut events: Vec<ProofEvent> = Vec::new();
    loop {
        let from = events.len() as u64 + 1;
        let rows = match backend {
            Backend::Postgres(store) => {
                store
                    .stream_with_chain(stream, from, PROOF_PAGE_EVENTS)
                    .await?
            }
            Backend::Sqlite(store) => {
                store
                    .stream_with_chain(stream, from, PROOF_PAGE_EVENTS)
                    .await?
            }
        };
        let read = rows.len();
        for (row, chain) in rows {
            let chain_hash = hash::from_bytes(&chain).ok_or_else(|| {
                LedgerError::Integrity(format!(
                    "chain hash at position {} is not 32 bytes",
                    row.position
                ))
            })?;
            events.push(ProofEvent {
                position: to_u64(row.position),
                id: row.id,
                stream: row.stream_id,
                version: to_u64(row.version),
                event_type: row.event_type,
                schema_version: u32::try_from(row.schema_version).unwrap_or(0),
                payload: row.payload,
                metadata: row.metadata,
                recorded_at: hash::truncate_to_micros(row.recorded_at),
                chain_hash: HexHash(chain_hash),
            });
        }
        if events.len() as u64 > PROOF_EVENTS_MAX {
            return Err(LedgerError::ProofTooLarge {
                stream: stream.to_string(),
                what: "events",
                limit: PROOF_EVENTS_MAX,
            });
        }
        if read < PROOF_PAGE_EVENTS {
            break;
        }
    }
    if events.is_empty() {
        return Err(LedgerError::StreamNotFound {
            stream: stream.to_string(),
        });
    }
    // Every seal, for the ones covering this stream: one small row per sealed range.
    let seals = seal_reports(backend, 0, usize::MAX).await?;
    let sealed_to = seals.last().map_or(0, |seal| seal.to_position);
    // The seal of each event: seals cover increasing, adjoining ranges.
    let mut covering: Vec<usize> = Vec::new();
    for event in &events {
        let index = seals.partition_point(|seal| seal.to_position < event.position);
        match seals.get(index) {
            Some(seal) if seal.from_position < event.position => {
                if covering.last() != Some(&index) {
                    covering.push(index);
                }
            }
            Some(_) => {
                return Err(LedgerError::Integrity(format!(
                    "position {} lies between seals: the seals table was altered; run `recur ledger verify`",
                    event.position
                )));
            }
            None => {
                return Err(LedgerError::Unsealed {
                    stream: stream.to_string(),
                    position: event.position,
                    sealed_to,
                });
            }
        }
    }
    if covering.len() as u64 > PROOF_SEALS_MAX {
        return Err(LedgerError::ProofTooLarge {
            stream: stream.to_string(),
            what: "seals",
            limit: PROOF_SEALS_MAX,
        });
    }
    let mut proof_seals = Vec::with_capacity(covering.len());
    for index in covering {
        let seal = &seals[index];
        let bad_digest =
            || LedgerError::Integrity(format!("seal {} has no valid digest", seal.seal_no));
        let range = chain_hashes(
            backend,
            seal.from_position,
            seal.to_position,
            EVENTS_PER_SEAL_MAX + 1,
        )
        .await?;
        let others = range
            .into_iter()
            .filter(|(position, _)| {
                events
                    .binary_search_by_key(position, |event| event.position)
                    .is_err()
            })
            .map(|(position, chain)| (position, HexHash(chain)))
            .collect();
        proof_seals.push(ProofSeal {
            seal_no: seal.seal_no,
            from_position: seal.from_position,
            to_position: seal.to_position,
            event_count: seal.event_count,
            previous_digest: HexHash(parse_hex(&seal.previous_digest).ok_or_else(bad_digest)?),
            digest: HexHash(parse_hex(&seal.digest).ok_or_else(bad_digest)?),
            sealed_at: seal.sealed_at,
            others,
        });
    }
    let proof = Proof {
        format: PROOF_FORMAT.to_owned(),
        resource: stream.to_string(),
        events,
        seals: proof_seals,
    };
    // A proof that fails here would fail at the auditor's: say so now, and where.
    proof.verify().map_err(|error| {
        LedgerError::Integrity(format!(
            "the ledger does not match its seals for {stream}: {error}; run `recur ledger verify`"
        ))
    })?;
    Ok(proof)
}
