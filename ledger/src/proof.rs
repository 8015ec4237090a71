//! Offline proofs: one resource's events, their chain hashes and the seals that
//! cover them, in a JSON document an auditor checks without the database
//! (`recur ledger proof` writes one, `recur ledger verify-proof` checks it).
//!
//! Seals keep their meaning (`recur.seal.v1`, docs/ledger.md): a seal's digest
//! folds the `(position, chain hash)` of *every* event of its range, so a proof
//! carries, for each seal it relies on, the positions and chain hashes of the
//! range's other events — hashes only, never their payloads. That is the
//! smallest addition that leaves every seal already written verifiable as it
//! is; a Merkle tree would shrink proofs but needs a new seal format.
//!
//! [`Proof::verify`] is pure: it recomputes each content hash and chain step from
//! the first version, then each seal's digest from its previous digest, and
//! names the first check that fails. What it cannot know is whether a seal's
//! digest is the one the ledger really wrote: compare it with a copy exported
//! when the seal was made ([`Proof::check_exported`], docs/operations.md).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;

use crate::hash::{self, GENESIS, Hash, SealDigest};
use crate::verify::SealReport;

/// The format this build writes and reads.
pub const PROOF_FORMAT: &str = "recur.proof.v1";

/// A SHA-256 digest written as 64 lowercase hex digits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HexHash(pub Hash);

impl Serialize for HexHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(self.0))
    }
}

impl<'de> Deserialize<'de> for HexHash {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_hex(&text)
            .map(Self)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not 64 hex digits")))
    }
}

/// Parses 64 hex digits into a digest.
pub fn parse_hex(text: &str) -> Option<Hash> {
    let bytes = hex::decode(text).ok()?;
    hash::from_bytes(&bytes)
}

/// One event as stored: every field its content hash covers, and its chain hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofEvent {
    /// Global position.
    pub position: u64,
    /// Event id.
    pub id: uuid::Uuid,
    /// Stream id (the proof's resource).
    pub stream: String,
    /// Version in the stream: 1, 2, 3…
    pub version: u64,
    /// Event type.
    #[serde(rename = "type")]
    pub event_type: String,
    /// Payload schema version.
    pub schema_version: u32,
    /// The payload **text** exactly as stored: the hash covers these bytes, so it is
    /// a string here rather than nested JSON that a tool could reformat.
    pub payload: String,
    /// The metadata text exactly as stored (actor, source, correlation…).
    pub metadata: String,
    /// When it was recorded (RFC 3339, microseconds: what the hash covers).
    #[serde(with = "time::serde::rfc3339")]
    pub recorded_at: OffsetDateTime,
    /// The stored chain hash.
    pub chain_hash: HexHash,
}

/// One seal the proof relies on, with what it takes to recompute its digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProofSeal {
    /// The seal's number: 1, 2, 3…
    pub seal_no: u64,
    /// Covers positions after this one…
    pub from_position: u64,
    /// …up to and including this one.
    pub to_position: u64,
    /// Events in the range when it was sealed.
    pub event_count: u64,
    /// The digest of the seal before it (all zeros for seal 1): the seal chain's link.
    pub previous_digest: HexHash,
    /// The seal's digest: compare it with an independently exported copy.
    pub digest: HexHash,
    /// When it was sealed; not covered by the digest, only a help to find the copy.
    #[serde(with = "time::serde::rfc3339")]
    pub sealed_at: OffsetDateTime,
    /// `(position, chain hash)` of every *other* event of the range, in position order.
    pub others: Vec<(u64, HexHash)>,
}

/// A resource's proof (format [`PROOF_FORMAT`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proof {
    /// [`PROOF_FORMAT`].
    pub format: String,
    /// The stream proved, e.g. `invoice-<uuid>`.
    pub resource: String,
    /// The stream's events from version 1, in version order.
    pub events: Vec<ProofEvent>,
    /// The seals covering them, in seal order.
    pub seals: Vec<ProofSeal>,
}

/// Where a check failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    /// The proof as a whole.
    Proof,
    /// The `index`-th event listed (0-based), at a position.
    Event {
        /// Index in `events`.
        index: usize,
        /// Its position.
        position: u64,
        /// Its version as listed.
        version: u64,
    },
    /// A seal.
    Seal {
        /// Its number.
        seal_no: u64,
    },
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Proof => f.write_str("the proof"),
            Self::Event {
                index,
                position,
                version,
            } => write!(
                f,
                "event #{} (position {position}, version {version})",
                index + 1
            ),
            Self::Seal { seal_no } => write!(f, "seal {seal_no}"),
        }
    }
}

/// Which check failed; its name is stable (`recur ledger verify-proof` prints it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The proof holds at least one event.
    Events,
    /// Every event belongs to the resource.
    Stream,
    /// Versions run 1, 2, 3… in the order listed.
    Version,
    /// Positions increase with versions.
    Position,
    /// The recomputed chain hash equals the stored one.
    ChainHash,
    /// Seals are in order, their ranges do not overlap, and each lists its others in order inside its range.
    SealRange,
    /// Each event lies in one of the proof's seals, and each seal covers one of the events.
    SealCoverage,
    /// A seal's event count and digest recompute from its events and its previous digest.
    SealDigest,
    /// Consecutive seals link: the later one's previous digest is the earlier one's digest.
    SealLink,
    /// A seal's digest equals the copy exported when it was made.
    Exported,
}

impl Check {
    /// The check's stable name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Events => "events",
            Self::Stream => "stream",
            Self::Version => "version_order",
            Self::Position => "position_order",
            Self::ChainHash => "chain_hash",
            Self::SealRange => "seal_range",
            Self::SealCoverage => "seal_coverage",
            Self::SealDigest => "seal_digest",
            Self::SealLink => "seal_link",
            Self::Exported => "exported_digest",
        }
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a proof is not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The document is not a proof: not JSON, a field missing or of the wrong kind.
    #[error("not a readable proof: {0}")]
    Malformed(String),
    /// A proof of another format version.
    #[error("proof format {found:?} is not supported; this build reads {PROOF_FORMAT}")]
    UnsupportedFormat {
        /// The format the document names.
        found: String,
    },
    /// A check failed: the proof was altered, or does not match its seals.
    #[error("{check} check failed at {place}: {detail}")]
    Failed {
        /// Which check.
        check: Check,
        /// Where.
        place: Place,
        /// What was found.
        detail: String,
    },
}

impl ProofError {
    /// A stable code: `proof_malformed`, `proof_format_unsupported` or `proof_broken`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "proof_malformed",
            Self::UnsupportedFormat { .. } => "proof_format_unsupported",
            Self::Failed { .. } => "proof_broken",
        }
    }

    /// True when the proof was read but does not hold (as opposed to unreadable).
    pub fn is_broken(&self) -> bool {
        matches!(self, Self::Failed { .. })
    }
}

fn failed(check: Check, place: Place, detail: impl Into<String>) -> ProofError {
    ProofError::Failed {
        check,
        place,
        detail: detail.into(),
    }
}

/// What an intact proof shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verified {
    /// The stream proved.
    pub resource: String,
    /// Events checked (versions 1 to this).
    pub events: u64,
    /// First and last positions of the events.
    pub positions: (u64, u64),
    /// `(seal number, digest hex)` of each seal relied on, in order.
    pub seals: Vec<(u64, String)>,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seals: Vec<String> = self
            .seals
            .iter()
            .map(|(no, digest)| format!("seal {no} {digest}"))
            .collect();
        write!(
            f,
            "intact: {}: {} events (versions 1..={}, positions {}..={}), sealed by {}",
            self.resource,
            self.events,
            self.events,
            self.positions.0,
            self.positions.1,
            seals.join(", ")
        )
    }
}

impl Proof {
    /// Reads a proof from its JSON text.
    ///
    /// # Errors
    /// [`ProofError::Malformed`] when the text is not a proof;
    /// [`ProofError::UnsupportedFormat`] for another format version.
    pub fn from_json(text: &str) -> Result<Self, ProofError> {
        // The format first, so a future version is named as such rather than as malformed.
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|error| ProofError::Malformed(error.to_string()))?;
        match value.get("format").and_then(serde_json::Value::as_str) {
            Some(PROOF_FORMAT) => {}
            Some(other) => {
                return Err(ProofError::UnsupportedFormat {
                    found: other.to_owned(),
                });
            }
            None => {
                return Err(ProofError::Malformed(
                    "no \"format\" field: not a Recur proof".into(),
                ));
            }
        }
        serde_json::from_value(value).map_err(|error| ProofError::Malformed(error.to_string()))
    }

    /// The proof as pretty JSON.
    pub fn to_json(&self) -> String {
        // Only strings, numbers and arrays: serialising cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Recomputes every content hash, chain step and seal digest.
    ///
    /// # Errors
    /// [`ProofError::Failed`] naming the first check that fails and where;
    /// [`ProofError::UnsupportedFormat`] for another format.
    pub fn verify(&self) -> Result<Verified, ProofError> {
        if self.format != PROOF_FORMAT {
            return Err(ProofError::UnsupportedFormat {
                found: self.format.clone(),
            });
        }
        let (Some(first), Some(last)) = (self.events.first(), self.events.last()) else {
            return Err(failed(
                Check::Events,
                Place::Proof,
                "the proof holds no events",
            ));
        };
        self.check_chain()?;
        self.check_seals()?;
        Ok(Verified {
            resource: self.resource.clone(),
            events: self.events.len() as u64,
            positions: (first.position, last.position),
            seals: self
                .seals
                .iter()
                .map(|seal| (seal.seal_no, hex::encode(seal.digest.0)))
                .collect(),
        })
    }

    /// Each event: the resource's, the next version, a later position, its chain hash.
    fn check_chain(&self) -> Result<(), ProofError> {
        let mut previous_chain = GENESIS;
        let mut previous_position = None;
        for (index, event) in self.events.iter().enumerate() {
            let place = Place::Event {
                index,
                position: event.position,
                version: event.version,
            };
            if event.stream != self.resource {
                return Err(failed(
                    Check::Stream,
                    place,
                    format!(
                        "it belongs to stream {:?}, not to {:?}",
                        event.stream, self.resource
                    ),
                ));
            }
            let expected_version = index as u64 + 1;
            if event.version != expected_version {
                return Err(failed(
                    Check::Version,
                    place,
                    format!(
                        "version {expected_version} was expected here: events were removed, added or reordered"
                    ),
                ));
            }
            if previous_position.is_some_and(|previous| event.position <= previous) {
                return Err(failed(
                    Check::Position,
                    place,
                    "its position is not after the previous event's: events were reordered",
                ));
            }
            previous_position = Some(event.position);
            let content = hash::content_hash(&hash::Content {
                id: &event.id,
                stream_id: &event.stream,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                payload: &event.payload,
                metadata: &event.metadata,
                recorded_at: hash::truncate_to_micros(event.recorded_at),
            });
            let chain = hash::chain_step(&previous_chain, event.version, &content);
            if chain != event.chain_hash.0 {
                return Err(failed(
                    Check::ChainHash,
                    place,
                    "the chain hash recomputed from the event does not match the stored one: \
                     its id, type, schema version, payload, metadata or time was changed, or its \
                     chain hash was",
                ));
            }
            previous_chain = chain;
        }
        Ok(())
    }

    /// Each seal: in order, linked to the one before when consecutive, covering
    /// some events, and its digest recomputed over its whole range.
    fn check_seals(&self) -> Result<(), ProofError> {
        let mut previous: Option<&ProofSeal> = None;
        // The events not yet matched to a seal, in position order.
        let mut events = self.events.iter().enumerate().peekable();
        for seal in &self.seals {
            let place = Place::Seal {
                seal_no: seal.seal_no,
            };
            if seal.to_position <= seal.from_position {
                return Err(failed(
                    Check::SealRange,
                    place,
                    "its range is empty or reversed",
                ));
            }
            if let Some(before) = previous {
                if seal.seal_no <= before.seal_no || seal.from_position < before.to_position {
                    return Err(failed(
                        Check::SealRange,
                        place,
                        format!(
                            "it does not follow seal {} (seals out of order or overlapping)",
                            before.seal_no
                        ),
                    ));
                }
                if seal.seal_no == before.seal_no + 1
                    && (seal.previous_digest != before.digest
                        || seal.from_position != before.to_position)
                {
                    return Err(failed(
                        Check::SealLink,
                        place,
                        format!(
                            "it does not continue seal {}: its previous digest or first position differs",
                            before.seal_no
                        ),
                    ));
                }
            }
            if let Some((index, event)) = events.peek()
                && event.position <= seal.from_position
            {
                return Err(failed(
                    Check::SealCoverage,
                    Place::Event {
                        index: *index,
                        position: event.position,
                        version: event.version,
                    },
                    "no seal in the proof covers it",
                ));
            }
            let mut own = Vec::new();
            while let Some((_, event)) = events.peek()
                && event.position <= seal.to_position
            {
                own.push((event.position, event.chain_hash.0));
                events.next();
            }
            if own.is_empty() {
                return Err(failed(
                    Check::SealCoverage,
                    place,
                    "it covers none of the proof's events",
                ));
            }
            let mut last_other = seal.from_position;
            for (position, _) in &seal.others {
                if *position <= last_other || *position > seal.to_position {
                    return Err(failed(
                        Check::SealRange,
                        place,
                        format!(
                            "its other event at position {position} is out of order or outside positions {}..={}",
                            seal.from_position + 1,
                            seal.to_position
                        ),
                    ));
                }
                if own.iter().any(|(own_position, _)| own_position == position) {
                    return Err(failed(
                        Check::SealRange,
                        place,
                        format!(
                            "position {position} is listed both as the resource's event and as another's"
                        ),
                    ));
                }
                last_other = *position;
            }
            let mut all: Vec<(u64, Hash)> = own;
            all.extend(
                seal.others
                    .iter()
                    .map(|(position, chain)| (*position, chain.0)),
            );
            all.sort_unstable_by_key(|(position, _)| *position);
            if all.len() as u64 != seal.event_count {
                return Err(failed(
                    Check::SealDigest,
                    place,
                    format!(
                        "it sealed {} events and the proof gives {}: events of its range were removed or added",
                        seal.event_count,
                        all.len()
                    ),
                ));
            }
            let mut digest = SealDigest::new(&seal.previous_digest.0);
            for (position, chain) in &all {
                digest.add(*position, chain);
            }
            if digest.finish() != seal.digest.0 {
                return Err(failed(
                    Check::SealDigest,
                    place,
                    "the digest recomputed over its range does not match: an event's position or \
                     chain hash, the previous digest or the digest was changed",
                ));
            }
            previous = Some(seal);
        }
        if let Some((index, event)) = events.next() {
            return Err(failed(
                Check::SealCoverage,
                Place::Event {
                    index,
                    position: event.position,
                    version: event.version,
                },
                "no seal in the proof covers it",
            ));
        }
        Ok(())
    }

    /// Compares the proof's seals with copies exported when they were made (the
    /// lines `--seal-export` writes): every seal of the proof must be among
    /// them with the same digest; returns how many seals were matched.
    ///
    /// # Errors
    /// [`Check::Exported`] when an exported copy of one of the proof's seals has
    /// another digest, or when one of the proof's seals has no exported copy (a
    /// seal made up with the events it covers would otherwise pass).
    pub fn check_exported(&self, exported: &[SealReport]) -> Result<usize, ProofError> {
        for seal in &self.seals {
            let place = Place::Seal {
                seal_no: seal.seal_no,
            };
            let mut copies = exported
                .iter()
                .filter(|copy| copy.seal_no == seal.seal_no)
                .peekable();
            if copies.peek().is_none() {
                return Err(failed(
                    Check::Exported,
                    place,
                    "this seal is not among the exported copies",
                ));
            }
            for copy in copies {
                if parse_hex(&copy.digest) != Some(seal.digest.0) {
                    return Err(failed(
                        Check::Exported,
                        place,
                        format!(
                            "the exported copy's digest is {}, the proof's {}",
                            copy.digest,
                            hex::encode(seal.digest.0)
                        ),
                    ));
                }
            }
        }
        Ok(self.seals.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn event(
        stream: &str,
        version: u64,
        position: u64,
        previous: &Hash,
        amount: &str,
    ) -> ProofEvent {
        let id = uuid::Uuid::from_u128(u128::from(position) << 64 | u128::from(version));
        let recorded_at = OffsetDateTime::from_unix_timestamp(1_800_000_000 + position as i64)
            .unwrap()
            .replace_microsecond(123_456)
            .unwrap();
        let payload = format!(r#"{{"amount":{{"amount":"{amount}","currency":"USD"}}}}"#);
        let metadata = r#"{"actor":"key_1","source":"api"}"#.to_owned();
        let content = hash::content_hash(&hash::Content {
            id: &id,
            stream_id: stream,
            event_type: "InvoicePaid",
            schema_version: 1,
            payload: &payload,
            metadata: &metadata,
            recorded_at,
        });
        ProofEvent {
            position,
            id,
            stream: stream.to_owned(),
            version,
            event_type: "InvoicePaid".into(),
            schema_version: 1,
            payload,
            metadata,
            recorded_at,
            chain_hash: HexHash(hash::chain_step(previous, version, &content)),
        }
    }

    fn other_chain(position: u64) -> Hash {
        let mut chain = [7; 32];
        chain[..8].copy_from_slice(&position.to_be_bytes());
        chain
    }

    /// Seals `(from, to]` over the given resource events and others at the rest of the positions.
    fn seal(no: u64, from: u64, to: u64, previous: Hash, own: &[&ProofEvent]) -> ProofSeal {
        let mut digest = SealDigest::new(&previous);
        let mut others = Vec::new();
        for position in from + 1..=to {
            match own.iter().find(|e| e.position == position) {
                Some(e) => digest.add(position, &e.chain_hash.0),
                None => {
                    digest.add(position, &other_chain(position));
                    others.push((position, HexHash(other_chain(position))));
                }
            }
        }
        ProofSeal {
            seal_no: no,
            from_position: from,
            to_position: to,
            event_count: to - from,
            previous_digest: HexHash(previous),
            digest: HexHash(digest.finish()),
            sealed_at: OffsetDateTime::from_unix_timestamp(1_800_000_100).unwrap(),
            others,
        }
    }

    /// Four events of `invoice-1` at positions 2, 5, 9 and 14; seal 2 covers 1..=10
    /// (after a seal 1 not in the proof), seal 3 covers 11..=15.
    fn proof() -> Proof {
        let stream = "invoice-1";
        let mut events = Vec::new();
        let mut previous = GENESIS;
        for (version, (position, amount)) in
            [(2, "10.00"), (5, "20.00"), (9, "30.00"), (14, "40.00")]
                .into_iter()
                .enumerate()
        {
            let e = event(stream, version as u64 + 1, position, &previous, amount);
            previous = e.chain_hash.0;
            events.push(e);
        }
        let seal_2 = seal(2, 0, 10, [9; 32], &[&events[0], &events[1], &events[2]]);
        let seal_3 = seal(3, 10, 15, seal_2.digest.0, &[&events[3]]);
        Proof {
            format: PROOF_FORMAT.into(),
            resource: stream.into(),
            events,
            seals: vec![seal_2, seal_3],
        }
    }

    fn failure(proof: &Proof) -> (Check, Place) {
        match proof.verify() {
            Err(ProofError::Failed { check, place, .. }) => (check, place),
            other => panic!("expected a failed check, got {other:?}"),
        }
    }

    fn at_event(index: usize, proof: &Proof) -> Place {
        let e = &proof.events[index];
        Place::Event {
            index,
            position: e.position,
            version: e.version,
        }
    }

    #[test]
    fn an_untouched_proof_verifies_and_survives_a_json_round_trip() {
        let proof = proof();
        let verified = proof.verify().unwrap();
        assert_eq!(verified.events, 4);
        assert_eq!(verified.positions, (2, 14));
        assert_eq!(verified.seals.len(), 2);
        let text = proof.to_json();
        let read = Proof::from_json(&text).unwrap();
        assert_eq!(read, proof);
        assert_eq!(read.verify().unwrap(), verified);
        assert!(
            verified
                .to_string()
                .starts_with("intact: invoice-1: 4 events")
        );
    }

    #[test]
    fn an_edited_amount_fails_the_chain_hash_check_at_that_event() {
        let mut proof = proof();
        proof.events[1].payload = proof.events[1].payload.replace("20.00", "2000.00");
        assert_eq!(failure(&proof), (Check::ChainHash, at_event(1, &proof)));
    }

    #[test]
    fn an_edited_type_actor_id_time_or_schema_version_fails_the_chain_hash_check() {
        let edits: [fn(&mut ProofEvent); 5] = [
            |e| e.event_type = "InvoiceVoided".into(),
            |e| e.metadata = e.metadata.replace("key_1", "key_2"),
            |e| e.id = uuid::Uuid::nil(),
            |e| e.recorded_at += time::Duration::microseconds(1),
            |e| e.schema_version = 2,
        ];
        for edit in edits {
            let mut proof = proof();
            edit(&mut proof.events[2]);
            assert_eq!(failure(&proof), (Check::ChainHash, at_event(2, &proof)));
        }
    }

    #[test]
    fn an_edited_chain_hash_fails_at_that_event() {
        let mut proof = proof();
        proof.events[0].chain_hash.0[31] ^= 1;
        assert_eq!(failure(&proof), (Check::ChainHash, at_event(0, &proof)));
    }

    #[test]
    fn swapped_events_fail_the_version_order_check() {
        let mut proof = proof();
        proof.events.swap(1, 2);
        assert_eq!(failure(&proof), (Check::Version, at_event(1, &proof)));
    }

    #[test]
    fn swapped_positions_fail_the_position_order_check() {
        let mut proof = proof();
        let (a, b) = (proof.events[1].position, proof.events[2].position);
        proof.events[1].position = b;
        proof.events[2].position = a;
        assert_eq!(failure(&proof), (Check::Position, at_event(2, &proof)));
    }

    #[test]
    fn an_event_removed_in_the_middle_fails_the_version_order_check() {
        let mut proof = proof();
        proof.events.remove(1);
        assert_eq!(failure(&proof), (Check::Version, at_event(1, &proof)));
    }

    #[test]
    fn the_last_event_removed_fails_the_seal_checks() {
        let mut proof = proof();
        proof.events.pop();
        assert_eq!(
            failure(&proof),
            (Check::SealCoverage, Place::Seal { seal_no: 3 })
        );
        // The last event of seal 2's range gone with seal 3: its position is missing from seal 2.
        let mut proof = self::proof();
        proof.events.truncate(2);
        proof.seals.truncate(1);
        assert_eq!(
            failure(&proof),
            (Check::SealDigest, Place::Seal { seal_no: 2 })
        );
    }

    /// The limit docs/ledger.md states: seals hold no stream heads, so a proof cut
    /// after the last event of one of its seals, with the later seals dropped, is a
    /// true proof of the stream's first events, and says so (4 events became 3).
    #[test]
    fn a_proof_cut_at_a_seal_boundary_still_proves_the_events_it_keeps() {
        let mut proof = proof();
        proof.events.truncate(3);
        proof.seals.truncate(1);
        proof.seals[0].others.clear();
        assert!(proof.verify().is_err(), "others are needed");
        let mut proof = self::proof();
        proof.events.truncate(3);
        proof.seals.truncate(1);
        assert_eq!(proof.verify().unwrap().events, 3);
    }

    #[test]
    fn an_event_of_another_stream_fails_the_stream_check() {
        let mut proof = proof();
        proof.events[3].stream = "invoice-2".into();
        assert_eq!(failure(&proof), (Check::Stream, at_event(3, &proof)));
    }

    #[test]
    fn an_edited_seal_digest_previous_digest_or_other_hash_fails_the_seal_digest_check() {
        let edits: [fn(&mut ProofSeal); 4] = [
            |s| s.digest.0[0] ^= 1,
            |s| s.previous_digest.0[0] ^= 1,
            |s| s.others[0].1.0[5] ^= 1,
            |s| s.event_count += 1,
        ];
        for edit in edits {
            let mut proof = proof();
            edit(&mut proof.seals[0]);
            assert_eq!(
                failure(&proof),
                (Check::SealDigest, Place::Seal { seal_no: 2 })
            );
        }
    }

    #[test]
    fn a_broken_link_between_consecutive_seals_fails_the_seal_link_check() {
        let mut proof = proof();
        // Seal 3 recomputed over another previous digest: its own digest holds, the link does not.
        let own = proof.events[3].clone();
        proof.seals[1] = seal(3, 10, 15, [1; 32], &[&own]);
        assert_eq!(
            failure(&proof),
            (Check::SealLink, Place::Seal { seal_no: 3 })
        );
    }

    #[test]
    fn a_missing_seal_or_a_moved_other_fails_the_seal_checks() {
        let mut proof = proof();
        proof.seals.pop();
        assert_eq!(failure(&proof), (Check::SealCoverage, at_event(3, &proof)));
        let mut proof = self::proof();
        proof.seals.remove(0);
        assert_eq!(failure(&proof), (Check::SealCoverage, at_event(0, &proof)));
        let mut proof = self::proof();
        proof.seals[0].others.swap(0, 1);
        assert_eq!(
            failure(&proof),
            (Check::SealRange, Place::Seal { seal_no: 2 })
        );
        let mut proof = self::proof();
        proof.seals[0].others[0].0 = proof.events[0].position;
        assert_eq!(failure(&proof).0, Check::SealRange);
    }

    #[test]
    fn an_empty_proof_fails_and_unreadable_text_is_malformed() {
        let mut proof = proof();
        proof.events.clear();
        assert_eq!(failure(&proof), (Check::Events, Place::Proof));
        assert!(matches!(
            Proof::from_json("not json"),
            Err(ProofError::Malformed(_))
        ));
        assert!(matches!(
            Proof::from_json(r#"{"format":"recur.proof.v1"}"#),
            Err(ProofError::Malformed(_))
        ));
        let text = self::proof()
            .to_json()
            .replacen(PROOF_FORMAT, "recur.proof.v9", 1);
        assert!(matches!(
            Proof::from_json(&text),
            Err(ProofError::UnsupportedFormat { .. })
        ));
        let digest = hex::encode(self::proof().seals[0].digest.0);
        let text = self::proof().to_json().replace(&digest, "zz");
        let error = Proof::from_json(&text).unwrap_err();
        assert_eq!(error.code(), "proof_malformed");
        assert!(!error.is_broken());
    }

    #[test]
    fn exported_copies_must_hold_the_same_digest() {
        let proof = proof();
        let copy = |no: u64, digest: String| SealReport {
            seal_no: no,
            from_position: 0,
            to_position: 0,
            event_count: 0,
            digest,
            previous_digest: String::new(),
            sealed_at: OffsetDateTime::UNIX_EPOCH,
        };
        let right = copy(2, hex::encode(proof.seals[0].digest.0));
        let right_3 = copy(3, hex::encode(proof.seals[1].digest.0));
        assert_eq!(
            proof.check_exported(&[right.clone(), right_3.clone(), right.clone()]),
            Ok(2)
        );
        // Every seal of the proof must have been exported.
        let error = proof
            .check_exported(std::slice::from_ref(&right))
            .unwrap_err();
        assert!(matches!(
            error,
            ProofError::Failed {
                check: Check::Exported,
                place: Place::Seal { seal_no: 3 },
                ..
            }
        ));
        let wrong = copy(3, hex::encode([0u8; 32]));
        let error = proof.check_exported(&[right, right_3, wrong]).unwrap_err();
        assert!(matches!(
            error,
            ProofError::Failed {
                check: Check::Exported,
                place: Place::Seal { seal_no: 3 },
                ..
            }
        ));
        assert!(proof.check_exported(&[copy(9, String::new())]).is_err());
    }
}
