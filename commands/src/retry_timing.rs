//! Learned retry timing ("smart retries", issue 16): when a soft-declined card
//! is retried, move the retry from the policy's fixed time to a nearby time
//! slot where retries of the same kind of decline have succeeded more often —
//! but only on enough evidence, and only within a window around the fixed time.
//! Pure: no clock, no I/O; randomness comes from a seed. docs/smart_retries.md
//! explains the model and measures it in a simulation.
//!
//! - A *slot* is (decline group, day, 4-hour UTC bucket). The decline group is
//!   `funds` (`insufficient_funds`: succeeds when money has arrived) or `soft`
//!   (every other soft code: succeeds when the issuer is in the mood). The day
//!   is the day of the month around the usual paydays (the 1st–2nd, the
//!   15th–16th) and otherwise the weekday.
//! - The learner is Thompson sampling over the slots reachable from the fixed
//!   time: each slot's success rate has a Beta posterior (shrunk towards its
//!   group's rate), approximated by a normal distribution and sampled in
//!   integer parts per million, so the same seed gives the same choices on every
//!   platform (no floats, no libm).
//! - Evidence floor: a slot with fewer than [`EVIDENCE_FLOOR`] retries observed
//!   is never chosen over the fixed time.
//! - Window: the learned time stays within `fixed ± min(gap / 2, SHIFT_MAX)`,
//!   `gap` being the time from the failure to the fixed retry; the campaign keeps
//!   its shape (the 1-hour retry stays within 30 minutes of it, the 2-week
//!   retry within 3 days) and the policy's final action is unchanged.

use std::collections::BTreeMap;

use recur_ledger::MoneyError;
use time::{Duration, OffsetDateTime};

use crate::decline::{self, DeclineCategory};
use crate::invoice::{ChargeOutcome, Invoice};

/// Retries a slot needs before a retry is moved into it.
pub const EVIDENCE_FLOOR: u64 = 30;
/// Width of an hour-of-day bucket (divides 24).
pub const HOUR_BUCKET_HOURS: u8 = 4;
/// Farthest a retry moves from its fixed time, either way.
pub const SHIFT_MAX: Duration = Duration::hours(72);
/// Candidate times considered for one retry: `fixed + k × HOUR_BUCKET_HOURS`,
/// at most `SHIFT_MAX / bucket` either way.
pub const CANDIDATES_MAX: i64 = 2 * (SHIFT_MAX.whole_hours() / HOUR_BUCKET_HOURS as i64) + 1;

/// Probabilities are integers in parts per million.
const PPM: i64 = 1_000_000;
/// Pseudo-observations of the group's rate in each slot's prior: a slot with
/// little data reads as its group, not as 0 % or 100 %.
const PRIOR_WEIGHT: i64 = 4;
/// Uniforms summed for one approximately normal draw (Irwin–Hall: 12 uniforms
/// minus 6 has mean 0 and variance 1).
const NORMAL_UNIFORMS: i64 = 12;

/// One retry of a declined payment and what came of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOutcome {
    /// The decline the retry was for (the previous attempt's code).
    pub decline_code: String,
    /// When the retry took effect.
    pub attempted_at: OffsetDateTime,
    /// Whether the money moved.
    pub succeeded: bool,
    /// The amount asked, in minor units (kept for reports; the learner weighs
    /// every retry the same).
    pub amount_minor: i64,
}

/// When to retry, as [`RetryTiming::choose`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    /// The retry's time.
    pub at: OffsetDateTime,
    /// True when moved from the fixed time by the evidence; false for the fixed time.
    pub learned: bool,
    /// The slot of `at`, for the ledger event (`soft/fri/12-16`).
    pub slot: String,
}

/// How a decline is learned: by what brings the money back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// `insufficient_funds`: money arrives on paydays.
    Funds,
    /// Any other soft decline: the issuer's state (batch windows, risk rules).
    Soft,
    /// Not retried on a schedule: never learned.
    NotRetried(DeclineCategory),
}

impl Group {
    fn of(decline_code: &str) -> Self {
        match decline::category(decline_code) {
            DeclineCategory::Soft if decline_code == "insufficient_funds" => Self::Funds,
            DeclineCategory::Soft => Self::Soft,
            other => Self::NotRetried(other),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Self::Funds => "funds",
            Self::Soft => "soft",
            Self::NotRetried(DeclineCategory::Hard) => "hard",
            Self::NotRetried(DeclineCategory::NeedsCustomerAction) => "needs_action",
            Self::NotRetried(DeclineCategory::Authentication) => "authentication",
            // Unreachable by construction (soft codes are Funds or Soft); named anyway.
            Self::NotRetried(DeclineCategory::Soft) => "soft",
        }
    }
}

/// A retry slot: decline group, day, hour bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Slot {
    group: Group,
    /// 0–6 Monday to Sunday; 7 the 1st–2nd of the month; 8 the 15th–16th.
    day: u8,
    /// Hours from midnight UTC to the bucket's start.
    hour_from: u8,
}

impl Slot {
    fn of(group: Group, at: OffsetDateTime) -> Self {
        let day = match at.day() {
            1 | 2 => 7,
            15 | 16 => 8,
            _ => at.weekday().number_days_from_monday(),
        };
        Self {
            group,
            day,
            hour_from: at.hour() - at.hour() % HOUR_BUCKET_HOURS,
        }
    }

    fn label(self) -> String {
        const DAYS: [&str; 9] = [
            "mon", "tue", "wed", "thu", "fri", "sat", "sun", "dom01-02", "dom15-16",
        ];
        let day = DAYS.get(usize::from(self.day)).copied().unwrap_or("day?");
        format!(
            "{}/{day}/{:02}-{:02}",
            self.group.label(),
            self.hour_from,
            self.hour_from + HOUR_BUCKET_HOURS
        )
    }
}

/// Retries observed in a slot or a group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counts {
    retries: u64,
    successes: u64,
}

impl Counts {
    fn add(&mut self, succeeded: bool) {
        self.retries += 1;
        self.successes += u64::from(succeeded);
    }
}

/// The learned statistics: retries and successes per slot, folded from
/// [`RetryOutcome`]s, and the seeded generator of the sampling.
#[derive(Clone, Debug)]
pub struct RetryTiming {
    state: u64,
    slots: BTreeMap<Slot, Counts>,
    groups: BTreeMap<Group, Counts>,
}

impl RetryTiming {
    /// Nothing learned yet; `seed` fixes every later choice.
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed ^ 0x6A09_E667_F3BC_C908,
            slots: BTreeMap::new(),
            groups: BTreeMap::new(),
        }
    }

    /// Restarts the sampling generator at `seed`: billing seeds each decision
    /// by its content (decline code, failure time, step, amount), so
    /// a decision does not depend on how many others were drawn before it
    /// (concurrent work, a restart).
    pub fn reseed(&mut self, seed: u64) {
        self.state = seed ^ 0x6A09_E667_F3BC_C908;
    }

    /// Learns from one retry. Declines that are not retried on a schedule
    /// (hard, needs action, authentication) teach nothing about timing.
    pub fn observe(&mut self, outcome: &RetryOutcome) {
        let group = Group::of(&outcome.decline_code);
        if matches!(group, Group::NotRetried(_)) {
            return;
        }
        self.slots
            .entry(Slot::of(group, outcome.attempted_at))
            .or_default()
            .add(outcome.succeeded);
        self.groups.entry(group).or_default().add(outcome.succeeded);
    }

    /// Retries observed so far (of soft declines).
    pub fn observed(&self) -> u64 {
        self.groups.values().map(|c| c.retries).sum()
    }

    /// When to retry a card declined with `decline_code` at `failed_at`, which
    /// the policy would retry at `fixed_at`. The fixed time unless a slot within
    /// the window has at least [`EVIDENCE_FLOOR`] retries and its sampled rate
    /// beats the fixed slot's.
    pub fn choose(
        &mut self,
        decline_code: &str,
        failed_at: OffsetDateTime,
        fixed_at: OffsetDateTime,
    ) -> Choice {
        let group = Group::of(decline_code);
        let fixed_slot = Slot::of(group, fixed_at);
        let fixed = Choice {
            at: fixed_at,
            learned: false,
            slot: fixed_slot.label(),
        };
        let gap = fixed_at - failed_at;
        if matches!(group, Group::NotRetried(_)) || gap <= Duration::ZERO {
            return fixed;
        }
        let shift_max = (gap / 2_i32).min(SHIFT_MAX);
        let step = Duration::hours(i64::from(HOUR_BUCKET_HOURS));
        let steps = (shift_max.whole_seconds() / step.whole_seconds()).min(CANDIDATES_MAX / 2);
        // Closest to the fixed time first, earlier before later, so that among
        // equal samples the smallest move wins; one candidate per slot.
        let mut candidates: Vec<(Slot, OffsetDateTime)> = Vec::new();
        for k in (1..=steps).flat_map(|k| [-k, k]) {
            let at = fixed_at + step * i32::try_from(k).unwrap_or(0);
            let slot = Slot::of(group, at);
            let enough = self
                .slots
                .get(&slot)
                .is_some_and(|c| c.retries >= EVIDENCE_FLOOR);
            if slot != fixed_slot && enough && candidates.iter().all(|(s, _)| *s != slot) {
                candidates.push((slot, at));
            }
        }
        if candidates.is_empty() {
            return fixed;
        }
        let fixed_sample = self.sample(fixed_slot);
        let mut best: Option<(i64, Slot, OffsetDateTime)> = None;
        for (slot, at) in candidates {
            let sample = self.sample(slot);
            if best.is_none_or(|(b, _, _)| sample > b) {
                best = Some((sample, slot, at));
            }
        }
        match best {
            Some((sample, slot, at)) if sample > fixed_sample => Choice {
                at,
                learned: true,
                slot: slot.label(),
            },
            _ => fixed,
        }
    }

    /// A draw of `slot`'s success rate, in parts per million: the posterior
    /// mean (the slot's successes plus [`PRIOR_WEIGHT`] pseudo-retries at its
    /// group's rate) plus a normal deviate times the Beta posterior's spread.
    fn sample(&mut self, slot: Slot) -> i64 {
        let group = self.groups.get(&slot.group).copied().unwrap_or_default();
        let counts = self.slots.get(&slot).copied().unwrap_or_default();
        let group_ppm = ratio_ppm(group.successes + 1, group.retries + 2);
        let retries = i64::try_from(counts.retries).unwrap_or(i64::MAX / PPM);
        let successes = i64::try_from(counts.successes).unwrap_or(retries);
        let weight = retries.saturating_add(PRIOR_WEIGHT);
        let mean_ppm = (successes.saturating_mul(PPM) + PRIOR_WEIGHT * group_ppm) / weight.max(1);
        let variance_ppm2 = mean_ppm * (PPM - mean_ppm) / (weight + 1);
        let spread_ppm =
            i64::try_from(u64::try_from(variance_ppm2).unwrap_or(0).isqrt()).unwrap_or(0);
        let mut sum_ppm = 0;
        for _ in 0..NORMAL_UNIFORMS {
            sum_ppm += i64::try_from(self.next() % 1_000_000).unwrap_or(0);
        }
        let normal_ppm = sum_ppm - NORMAL_UNIFORMS / 2 * PPM;
        mean_ppm + spread_ppm * normal_ppm / PPM
    }

    /// SplitMix64: small, fast, good enough for sampling, same on every platform.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// `numerator / denominator` in parts per million (denominator > 0).
fn ratio_ppm(numerator: u64, denominator: u64) -> i64 {
    let ppm = u128::from(numerator) * 1_000_000 / u128::from(denominator.max(1));
    i64::try_from(ppm).unwrap_or(PPM)
}

/// The retries of `invoice` (attempts after the first, with an outcome), each
/// under the decline code of the attempt before it — the decline it retried.
///
/// # Errors
/// [`MoneyError`] if an attempt's amount is not in whole minor units (an
/// invoice's amounts always are: a broken stream).
pub fn outcomes_of(invoice: &Invoice) -> Result<Vec<RetryOutcome>, MoneyError> {
    let mut outcomes = Vec::new();
    for pair in invoice.attempts.windows(2) {
        let [previous, retry] = pair else { continue };
        let Some(ChargeOutcome::Declined { decline_code, .. }) = &previous.outcome else {
            continue;
        };
        let Some(outcome) = &retry.outcome else {
            continue;
        };
        // The customer's or an operator's own time (often with a new card)
        // says nothing of when a retry of the card would pass.
        if retry.attempt_no <= 1 || retry.on_demand {
            continue;
        }
        outcomes.push(RetryOutcome {
            decline_code: decline_code.clone(),
            attempted_at: retry.effective_at(),
            succeeded: matches!(outcome, ChargeOutcome::Succeeded { .. }),
            amount_minor: retry.amount.to_minor()?,
        });
    }
    Ok(outcomes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    fn outcome(code: &str, at: OffsetDateTime, succeeded: bool) -> RetryOutcome {
        RetryOutcome {
            decline_code: code.to_owned(),
            attempted_at: at,
            succeeded,
            amount_minor: 9_700,
        }
    }

    /// A failure on Thursday 2026-03-05 at 02:00 UTC, retried a day later by
    /// the policy (Friday 02:00, bucket 00-04): the window is ±12 hours.
    const FAILED: OffsetDateTime = datetime!(2026-03-05 02:00 UTC);
    const FIXED: OffsetDateTime = datetime!(2026-03-06 02:00 UTC);

    /// Teaches `timing` that soft retries fail at night (00-04) and succeed in
    /// the afternoon (12-16), `per_slot` of each on the Fridays of March 2026.
    fn afternoons_win(timing: &mut RetryTiming, per_slot: u32) {
        for i in 0..per_slot {
            let friday = datetime!(2026-03-06 00:00 UTC) + Duration::weeks(i64::from(i % 3));
            let night = friday + Duration::hours(1);
            let afternoon = friday + Duration::hours(13);
            timing.observe(&outcome("card_declined", night, i % 10 == 0));
            timing.observe(&outcome("card_declined", afternoon, i % 10 != 0));
        }
    }

    #[test]
    fn below_the_evidence_floor_the_fixed_time_is_kept() {
        let mut timing = RetryTiming::new(7);
        let per_slot = u32::try_from(EVIDENCE_FLOOR).unwrap() - 1;
        afternoons_win(&mut timing, per_slot);
        for _ in 0..100 {
            let choice = timing.choose("card_declined", FAILED, FIXED);
            assert_eq!(choice.at, FIXED);
            assert!(!choice.learned);
            assert_eq!(choice.slot, "soft/fri/00-04");
        }
    }

    #[test]
    fn with_clear_evidence_the_retry_moves_into_the_better_slot_within_the_window() {
        let mut timing = RetryTiming::new(7);
        afternoons_win(&mut timing, 60);
        for _ in 0..100 {
            let choice = timing.choose("card_declined", FAILED, FIXED);
            assert!(choice.learned, "{choice:?}");
            assert_eq!(choice.slot, "soft/fri/12-16");
            assert_eq!(choice.at, datetime!(2026-03-06 14:00 UTC));
            assert!(choice.at >= FIXED - Duration::hours(12));
            assert!(choice.at <= FIXED + Duration::hours(12));
        }
        // Another group learns nothing from it.
        let funds = timing.choose("insufficient_funds", FAILED, FIXED);
        assert_eq!((funds.at, funds.learned), (FIXED, false));
        assert_eq!(funds.slot, "funds/fri/00-04");
        // Declines that are not retried on a schedule keep the fixed time.
        let hard = timing.choose("stolen_card", FAILED, FIXED);
        assert_eq!((hard.at, hard.learned), (FIXED, false));
    }

    #[test]
    fn a_better_slot_outside_the_window_is_not_reached() {
        let mut timing = RetryTiming::new(7);
        afternoons_win(&mut timing, 60);
        // A 1-hour retry may move 30 minutes at most: still the night bucket.
        let failed = datetime!(2026-03-06 00:30 UTC);
        let fixed = failed + Duration::hours(1);
        for _ in 0..50 {
            let choice = timing.choose("card_declined", failed, fixed);
            assert_eq!((choice.at, choice.learned), (fixed, false));
        }
        // A 2-week retry may move at most 72 hours, whatever the evidence.
        let fixed = FAILED + Duration::weeks(2);
        for _ in 0..50 {
            let choice = timing.choose("card_declined", FAILED, fixed);
            assert!((choice.at - fixed).abs() <= SHIFT_MAX, "{choice:?}");
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_choices() {
        let run = |seed| {
            let mut timing = RetryTiming::new(seed);
            // Two equally good slots: the sampling decides between them.
            for i in 0..40 {
                let friday = datetime!(2026-03-06 00:00 UTC);
                timing.observe(&outcome(
                    "card_declined",
                    friday + Duration::hours(9),
                    i % 2 == 0,
                ));
                timing.observe(&outcome(
                    "card_declined",
                    friday + Duration::hours(13),
                    i % 2 == 0,
                ));
                timing.observe(&outcome(
                    "card_declined",
                    friday + Duration::hours(1),
                    false,
                ));
            }
            (0..200)
                .map(|_| timing.choose("card_declined", FAILED, FIXED).at)
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2), "the seed should matter when slots tie");
    }

    #[test]
    fn an_invoices_retries_are_read_under_the_decline_they_retried() {
        use crate::invoice::Attempt;
        use recur_ledger::{Currency, Money};

        let usd = Currency::parse("USD").unwrap();
        let attempt = |no: u32, at: OffsetDateTime, outcome: Option<ChargeOutcome>| Attempt {
            attempt_no: no,
            idempotency_key: format!("in_1-attempt-{no}"),
            gateway: "simulated".to_owned(),
            payment_method: Some("pm_1".to_owned()),
            amount: Money::from_minor(150_000, usd),
            outcome,
            next_retry_at: None,
            due_at: at,
            on_demand: false,
        };
        let declined = |code: &str| {
            Some(ChargeOutcome::Declined {
                decline_code: code.to_owned(),
                message: String::new(),
            })
        };
        let t = datetime!(2026-03-01 09:00 UTC);
        let invoice = Invoice {
            attempts: vec![
                attempt(1, t, declined("insufficient_funds")),
                attempt(2, t + Duration::days(1), declined("card_declined")),
                attempt(
                    3,
                    t + Duration::days(3),
                    Some(ChargeOutcome::Succeeded {
                        charge_id: "ch_1".to_owned(),
                    }),
                ),
                attempt(4, t + Duration::days(5), None),
            ],
            ..Invoice::default()
        };
        let outcomes = outcomes_of(&invoice).unwrap();
        assert_eq!(
            outcomes,
            vec![
                RetryOutcome {
                    decline_code: "insufficient_funds".to_owned(),
                    attempted_at: t + Duration::days(1),
                    succeeded: false,
                    amount_minor: 150_000,
                },
                RetryOutcome {
                    decline_code: "card_declined".to_owned(),
                    attempted_at: t + Duration::days(3),
                    succeeded: true,
                    amount_minor: 150_000,
                },
            ]
        );
    }
}
