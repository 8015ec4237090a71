//! Benchmark workload generator: implements `../shared/bench/WORKLOAD.md` spec v1 sections 1–2 exactly.
//!
//! Everything here is deterministic: every run and every engine gets the same bytes. The
//! check values of the spec are asserted by the tests at the bottom of this file.

use std::collections::HashMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Number of streams `S` (one per subscription), in streams.
pub const STREAMS: u64 = 10_000;
/// Number of events per stream `E`, in events.
pub const EVENTS_PER_STREAM: u64 = 10;
/// Total number of events `N = S × E`, in events.
pub const EVENTS_TOTAL: u64 = STREAMS * EVENTS_PER_STREAM;
/// Number of concurrent writers `C`, each owning disjoint streams, in writers.
pub const WRITERS: usize = 16;
/// Page size of the W3 replay, in events per page.
pub const REPLAY_PAGE: usize = 5_000;
/// Expected sum of all `N` amounts, in currency units (decimal text).
pub const TOTAL_AMOUNT: &str = "499463757.87";
/// Expected sum of the amounts of stream 0, in currency units (decimal text).
pub const STREAM0_AMOUNT: &str = "34906.47";
/// Expected average compact JSON size of one event, in tenths of a byte (312.7 bytes).
pub const EVENT_JSON_AVG_DECIBYTES: u64 = 3_127;
/// Expected smallest compact JSON size of one event, in bytes.
pub const EVENT_JSON_MIN_BYTES: usize = 308;
/// Expected largest compact JSON size of one event, in bytes.
pub const EVENT_JSON_MAX_BYTES: usize = 315;

const EVENT_TYPES: [&str; 5] = [
    "InvoiceIssued",
    "PaymentCaptured",
    "InvoicePaid",
    "CreditApplied",
    "RefundIssued",
];
const CURRENCIES: [&str; 3] = ["USD", "EUR", "GBP"];

/// SplitMix64 mixing function, all arithmetic wrapping on `u64`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic version-4 UUID derived from `seed` (spec section 2).
pub fn uuid_from(seed: u64) -> Uuid {
    let mut bytes = [0_u8; 16];
    bytes[..8].copy_from_slice(&splitmix64(seed).to_be_bytes());
    bytes[8..].copy_from_slice(&splitmix64(seed ^ 0xA5A5_A5A5_A5A5_A5A5).to_be_bytes());
    uuid::Builder::from_random_bytes(bytes).into_uuid()
}

/// Stream identity of stream `s` (`0..STREAMS`): lowercase hyphenated UUID, 36 characters.
pub fn stream_id(s: u64) -> String {
    uuid_from((1 << 56) | s).hyphenated().to_string()
}

/// One billing event of the workload; serializes (serde_json compact) to the spec's bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingEvent {
    /// Event type, serialized as `type` (`InvoiceIssued`, `PaymentCaptured`, ...).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Subscription id, equal to the stream id.
    pub subscription_id: String,
    /// Customer id (lowercase hyphenated UUID).
    pub customer_id: String,
    /// Invoice id (lowercase hyphenated UUID), shared by two consecutive versions.
    pub invoice_id: String,
    /// Amount as decimal text with exactly 2 decimals (`1.00` ..= `10000.00`).
    pub amount: String,
    /// ISO 4217 currency code (`USD`, `EUR` or `GBP`).
    pub currency: String,
    /// Billing period start date, `2025-MM-01`.
    pub period_start: String,
    /// Billing period end date, `2025-MM-28`.
    pub period_end: String,
    /// Occurrence timestamp, `2025-MM-DDThh:mm:ssZ`.
    pub occurred_at: String,
}

/// Event of version `v` (1-based, `1..=EVENTS_PER_STREAM`) of stream `s` (`0..STREAMS`).
pub fn event(s: u64, v: u64) -> BillingEvent {
    let k = v.wrapping_sub(1);
    let cents = 100 + splitmix64((5 << 56) | (s << 8) | v) % 999_901;
    let month = 1 + k % 10;
    let day = 1 + s % 28;
    let hour = s % 24;
    let minute = (s / 24) % 60;
    let second = (v * 5) % 60;
    BillingEvent {
        // The moduli bound the indices, so these never go out of range.
        event_type: EVENT_TYPES[(k % 5) as usize].to_owned(),
        subscription_id: stream_id(s),
        customer_id: uuid_from((2 << 56) | s).hyphenated().to_string(),
        // `(v + 1) / 2`: two events per invoice.
        invoice_id: uuid_from((3 << 56) | (s << 8) | v.div_ceil(2))
            .hyphenated()
            .to_string(),
        amount: format!("{}.{:02}", cents / 100, cents % 100),
        currency: CURRENCIES[(s % 3) as usize].to_owned(),
        period_start: format!("2025-{month:02}-01"),
        period_end: format!("2025-{month:02}-28"),
        occurred_at: format!("2025-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z"),
    }
}

/// Streams owned by writer `writer` (`s % WRITERS == writer`), ascending; empty if out of range.
pub fn owned_streams(writer: usize) -> impl Iterator<Item = u64> {
    let start = if writer < WRITERS {
        writer as u64
    } else {
        STREAMS
    };
    (start..STREAMS).step_by(WRITERS)
}

/// All `N` event structs (built before the timer), indexed `[s][v - 1]`.
pub fn all_events() -> Vec<Vec<BillingEvent>> {
    (0..STREAMS)
        .map(|s| (1..=EVENTS_PER_STREAM).map(|v| event(s, v)).collect())
        .collect()
}

/// W3 in-memory fold: `stream_id -> (event count, sum of amounts)`, verified after replay.
#[derive(Debug, Clone, Default)]
pub struct ReplayFold {
    streams: HashMap<String, (u64, Decimal)>,
}

impl ReplayFold {
    /// Empty fold, pre-sized for `STREAMS` entries.
    pub fn new() -> Self {
        Self {
            streams: HashMap::with_capacity(STREAMS as usize),
        }
    }

    /// Folds one replayed event of stream `stream_id` in (amount parsed as `Decimal`).
    ///
    /// # Errors
    /// [`FoldError::BadAmount`] or [`FoldError::StreamOverflow`].
    pub fn apply(&mut self, stream_id: &str, event: &BillingEvent) -> Result<(), FoldError> {
        let amount = Decimal::from_str(&event.amount).map_err(|source| FoldError::BadAmount {
            stream_id: stream_id.to_owned(),
            amount: event.amount.clone(),
            source,
        })?;
        let entry = match self.streams.get_mut(stream_id) {
            Some(entry) => entry,
            None => self
                .streams
                .entry(stream_id.to_owned())
                .or_insert((0, Decimal::ZERO)),
        };
        entry.0 += 1;
        entry.1 = entry
            .1
            .checked_add(amount)
            .ok_or_else(|| FoldError::StreamOverflow {
                stream_id: stream_id.to_owned(),
            })?;
        Ok(())
    }

    /// Count and amount sum folded so far for `stream_id`, if any.
    pub fn get(&self, stream_id: &str) -> Option<(u64, Decimal)> {
        self.streams.get(stream_id).copied()
    }

    /// Number of distinct streams folded so far.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// Whether nothing has been folded yet.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Checks the W3 verification: `STREAMS` entries, `EVENTS_TOTAL` events, total `TOTAL_AMOUNT`.
    ///
    /// # Errors
    /// [`FoldError`] naming the first figure that does not hold.
    pub fn verify(&self) -> Result<(), FoldError> {
        let streams = self.streams.len();
        if streams as u64 != STREAMS {
            return Err(FoldError::Streams {
                expected: STREAMS,
                got: streams,
            });
        }
        let mut events: u64 = 0;
        let mut total = Decimal::ZERO;
        for (count, sum) in self.streams.values() {
            events += count;
            total = total.checked_add(*sum).ok_or(FoldError::TotalOverflow)?;
        }
        if events != EVENTS_TOTAL {
            return Err(FoldError::Events {
                expected: EVENTS_TOTAL,
                got: events,
            });
        }
        let expected = Decimal::from_str(TOTAL_AMOUNT).map_err(FoldError::BadConstant)?;
        if total != expected {
            return Err(FoldError::Total {
                expected,
                got: total,
            });
        }
        Ok(())
    }
}

/// Why the W3 replay fold refused an event, or its verification failed.
#[derive(Debug, thiserror::Error)]
pub enum FoldError {
    /// An event's amount is not a decimal.
    #[error("replay fold: stream {stream_id}: bad amount {amount:?}")]
    BadAmount {
        /// The event's stream.
        stream_id: String,
        /// The amount as stored.
        amount: String,
        /// The decimal parser's refusal.
        #[source]
        source: rust_decimal::Error,
    },
    /// A stream's amounts overflowed when summed.
    #[error("replay fold: stream {stream_id}: amount sum overflow")]
    StreamOverflow {
        /// The stream.
        stream_id: String,
    },
    /// Not every stream was folded.
    #[error("replay fold: expected {expected} streams, got {got}")]
    Streams {
        /// `STREAMS`.
        expected: u64,
        /// Streams folded.
        got: usize,
    },
    /// The streams' sums overflowed when summed.
    #[error("replay fold: total amount overflow")]
    TotalOverflow,
    /// Not every event was folded.
    #[error("replay fold: expected {expected} events, got {got}")]
    Events {
        /// `EVENTS_TOTAL`.
        expected: u64,
        /// Events folded.
        got: u64,
    },
    /// `TOTAL_AMOUNT` is not a decimal (a bug in this file).
    #[error("replay fold: bad TOTAL_AMOUNT constant")]
    BadConstant(#[source] rust_decimal::Error),
    /// The amounts do not sum to `TOTAL_AMOUNT`.
    #[error("replay fold: expected total amount {expected}, got {got}")]
    Total {
        /// `TOTAL_AMOUNT`.
        expected: Decimal,
        /// The sum folded.
        got: Decimal,
    },
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const EVENT_0_1: &str = r#"{"type":"InvoiceIssued","subscription_id":"c9ed9924-11bb-4661-a9c5-556b278f4ce5","customer_id":"e9fb109b-8401-44ff-9a57-2989c616644a","invoice_id":"160d5401-aa35-49ea-b60b-96052f88bdd0","amount":"1097.87","currency":"USD","period_start":"2025-01-01","period_end":"2025-01-28","occurred_at":"2025-01-01T00:00:05Z"}"#;
    const EVENT_9999_10: &str = r#"{"type":"RefundIssued","subscription_id":"1e60fce9-e99f-49ec-80b6-86a2575210ca","customer_id":"d6d63426-c3bb-4a35-a04c-6c4844d5fad3","invoice_id":"df1cb155-a2a0-4520-ab61-cefb7fb52f9e","amount":"2538.93","currency":"USD","period_start":"2025-10-01","period_end":"2025-10-28","occurred_at":"2025-10-04T15:56:50Z"}"#;

    #[test]
    fn stream_id_of_stream_0_matches_the_check_value() {
        assert_eq!(stream_id(0), "c9ed9924-11bb-4661-a9c5-556b278f4ce5");
    }

    #[test]
    fn event_0_1_serializes_to_the_check_value_bytes() {
        assert_eq!(serde_json::to_string(&event(0, 1)).unwrap(), EVENT_0_1);
    }

    #[test]
    fn event_9999_10_serializes_to_the_check_value_bytes() {
        assert_eq!(
            serde_json::to_string(&event(9999, 10)).unwrap(),
            EVENT_9999_10
        );
    }

    #[test]
    fn event_deserializes_back_to_the_same_struct() {
        let parsed: BillingEvent = serde_json::from_str(EVENT_9999_10).unwrap();
        assert_eq!(parsed, event(9999, 10));
    }

    #[test]
    fn compact_json_sizes_match_avg_min_and_max() {
        let mut total: u64 = 0;
        let mut min = usize::MAX;
        let mut max = 0;
        for stream in all_events() {
            for e in stream {
                let len = serde_json::to_string(&e).unwrap().len();
                total += len as u64;
                min = min.min(len);
                max = max.max(len);
            }
        }
        // Average rounded half-up to one decimal (exact: 31_268_841 bytes / N = 312.688…).
        assert_eq!(
            (total * 10 + EVENTS_TOTAL / 2) / EVENTS_TOTAL,
            EVENT_JSON_AVG_DECIBYTES
        );
        assert_eq!(min, EVENT_JSON_MIN_BYTES);
        assert_eq!(max, EVENT_JSON_MAX_BYTES);
    }

    #[test]
    fn sum_of_all_amounts_and_of_stream_0_match_the_check_values() {
        let events = all_events();
        let sum = |evs: &[BillingEvent]| {
            evs.iter()
                .map(|e| Decimal::from_str(&e.amount).unwrap())
                .sum::<Decimal>()
        };
        let total: Decimal = events.iter().map(|s| sum(s)).sum();
        assert_eq!(total, Decimal::from_str(TOTAL_AMOUNT).unwrap());
        assert_eq!(total.to_string(), TOTAL_AMOUNT);
        let stream0 = sum(&events[0]);
        assert_eq!(stream0, Decimal::from_str(STREAM0_AMOUNT).unwrap());
        assert_eq!(stream0.to_string(), STREAM0_AMOUNT);
    }

    #[test]
    fn all_events_has_n_events_indexed_by_stream_then_version() {
        let events = all_events();
        assert_eq!(events.len() as u64, STREAMS);
        assert!(events.iter().all(|s| s.len() as u64 == EVENTS_PER_STREAM));
        assert_eq!(events[0][0], event(0, 1));
        assert_eq!(events[9999][9], event(9999, 10));
    }

    #[test]
    fn amounts_have_exactly_two_decimals_and_stay_in_range() {
        let min = Decimal::from_str("1.00").unwrap();
        let max = Decimal::from_str("10000.00").unwrap();
        for e in all_events().iter().flatten() {
            let (_, frac) = e.amount.split_once('.').unwrap();
            assert_eq!(frac.len(), 2, "{}", e.amount);
            let a = Decimal::from_str(&e.amount).unwrap();
            assert!(min <= a && a <= max, "{a}");
        }
    }

    #[test]
    fn two_consecutive_versions_share_one_invoice() {
        assert_eq!(event(7, 1).invoice_id, event(7, 2).invoice_id);
        assert_ne!(event(7, 2).invoice_id, event(7, 3).invoice_id);
    }

    #[test]
    fn writers_own_disjoint_ascending_streams_covering_all() {
        let mut seen = vec![false; STREAMS as usize];
        for w in 0..WRITERS {
            let owned: Vec<u64> = owned_streams(w).collect();
            assert_eq!(owned.len(), 625);
            assert!(owned.windows(2).all(|p| p[0] < p[1]));
            for s in owned {
                assert_eq!(s % WRITERS as u64, w as u64);
                assert!(!seen[s as usize]);
                seen[s as usize] = true;
            }
        }
        assert!(seen.iter().all(|&b| b));
        assert_eq!(owned_streams(WRITERS).count(), 0);
    }

    #[test]
    fn replay_fold_over_all_deserialized_events_verifies() {
        let mut fold = ReplayFold::new();
        for (s, stream) in all_events().iter().enumerate() {
            let id = stream_id(s as u64);
            for e in stream {
                let json = serde_json::to_string(e).unwrap();
                let parsed: BillingEvent = serde_json::from_str(&json).unwrap();
                fold.apply(&id, &parsed).unwrap();
            }
        }
        fold.verify().unwrap();
        let (count, sum) = fold.get(&stream_id(0)).unwrap();
        assert_eq!(count, EVENTS_PER_STREAM);
        assert_eq!(sum, Decimal::from_str(STREAM0_AMOUNT).unwrap());
    }

    #[test]
    fn replay_fold_reports_a_missing_event_clearly() {
        let mut fold = ReplayFold::new();
        for (s, stream) in all_events().iter().enumerate() {
            let id = stream_id(s as u64);
            for e in stream.iter().skip(usize::from(s == 0)) {
                fold.apply(&id, e).unwrap();
            }
        }
        let err = fold.verify().unwrap_err();
        assert!(
            matches!(
                err,
                FoldError::Events {
                    expected: 100_000,
                    got: 99_999
                }
            ),
            "{err:?}"
        );
        assert_eq!(
            err.to_string(),
            "replay fold: expected 100000 events, got 99999"
        );
    }

    #[test]
    fn replay_fold_rejects_a_bad_amount() {
        let mut bad = event(0, 1);
        bad.amount = "12,5".to_owned();
        let err = ReplayFold::new().apply(&stream_id(0), &bad).unwrap_err();
        assert!(err.to_string().contains("bad amount \"12,5\""), "{err}");
        // The decimal parser's own error is kept as the cause.
        assert!(std::error::Error::source(&err).is_some(), "{err:?}");
    }
}
