//! The dunning simulation (issue 16, "Learned retry timing"): failed invoices of
//! a population whose recovery behaviour is known (docs/smart_retries.md writes
//! it down), retried on the default policies' fixed schedules and on the
//! schedules moved by [`RetryTiming`] — the same code billing uses — over
//! several seeds. Both arms see the same invoices and the same luck (common
//! random numbers: every draw is a hash of the invoice and the date or attempt),
//! so their difference is the timing's alone. Integer arithmetic throughout; the
//! figures are printed as a table and one JSON line.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use recur_commands::customer::Segment;
use recur_commands::decline::{self, DeclineCategory};
use recur_commands::dunning_policy::{DunningPolicies, DunningPolicy, NextStep, PolicyError};
use recur_commands::retry_timing::{RetryOutcome, RetryTiming};
use rust_decimal::Decimal;
use time::macros::datetime;
use time::{Date, Duration, OffsetDateTime, Weekday};

use crate::workload::splitmix64;

/// The simulated history starts here; learning starts empty.
const START: OffsetDateTime = datetime!(2026-01-01 00:00 UTC);
/// Invoices failing from here on (the second year) are measured.
const MEASURED_FROM: OffsetDateTime = datetime!(2027-01-01 00:00 UTC);
/// Most seeds one run takes.
pub const SEEDS_MAX: u64 = 1_000;
/// Most failed invoices per simulated year.
pub const INVOICES_PER_YEAR_MAX: u64 = 1_000_000;
/// Money on a payday covers the invoice for this long (then it is spent).
const FUNDS_WINDOW: Duration = Duration::hours(48);

/// The coaching business's monthly plans: amount in cents, segment, share of
/// failed invoices in permille.
const PLANS: [(&str, i64, Segment, u64); 3] = [
    ("elite_coaching", 500_000, Segment::HighValue, 100),
    ("group_coaching", 150_000, Segment::Standard, 300),
    ("community_access", 9_700, Segment::Standard, 600),
];
/// Soft-decline success per retry by 4-hour UTC bucket, permille, for a
/// recoverable card: issuers' nightly batch windows refuse, afternoons pass.
const SOFT_SUCCESS_BY_BUCKET: [u64; 6] = [30, 100, 200, 350, 350, 150];
/// The same, when timing does not matter (the control population): about
/// the average of the above.
const SOFT_SUCCESS_FLAT: u64 = 200;

/// Which population is simulated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Population {
    /// Recovery depends on time: paydays for insufficient funds, the hour for
    /// other soft declines.
    Timing,
    /// The control: the same shares, but no time is better than another.
    Flat,
}

/// How one run is set up.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Seeds `1..=seeds`.
    pub seeds: u64,
    /// Failed invoices per simulated year (two years are simulated).
    pub invoices_per_year: u64,
    /// The population's behaviour.
    pub population: Population,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seeds: 10,
            invoices_per_year: 4_000,
            population: Population::Timing,
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The shipped dunning policies did not parse.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// Options that cannot work.
    #[error("{0}")]
    Usage(String),
}

/// What brings an invoice's money back (hidden from the learner).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Behaviour {
    /// `insufficient_funds`, paid every Friday.
    FundsWeekly,
    /// `insufficient_funds`, paid on the 1st and the 15th.
    FundsSemiMonthly,
    /// `insufficient_funds`, money arrives on no particular day (control).
    FundsAnyDay,
    /// `insufficient_funds`, the money never comes.
    FundsNever,
    /// Another soft decline that a retry can pass.
    SoftRecoverable,
    /// A soft decline that never passes (the card is dead in all but name).
    SoftNever,
    /// Hard, needs-action or authentication: never retried off session.
    NotRetried,
}

/// One failed invoice.
#[derive(Clone, Debug)]
struct FailedInvoice {
    failed_at: OffsetDateTime,
    amount_minor: i64,
    segment: Segment,
    decline_code: &'static str,
    behaviour: Behaviour,
    /// Chance, permille, that a payday covers the invoice.
    funded_permille: u64,
    /// The population it belongs to.
    population: Population,
    /// Seeds every draw about this invoice.
    luck: u64,
}

impl FailedInvoice {
    /// Whether a retry at `at` (the `attempt_no`-th attempt) succeeds.
    fn retry_succeeds(&self, at: OffsetDateTime, attempt_no: u32) -> bool {
        match self.behaviour {
            Behaviour::FundsWeekly | Behaviour::FundsSemiMonthly | Behaviour::FundsAnyDay => {
                // Funded if a payday within the last FUNDS_WINDOW brought money;
                // the payday whose window saw the first failure brought none.
                [at.date(), at.date().previous_day().unwrap_or(at.date())]
                    .into_iter()
                    .any(|day| {
                        let opens = day.midnight().assume_utc();
                        self.is_payday(day)
                            && at < opens + FUNDS_WINDOW
                            && !(opens <= self.failed_at && self.failed_at < opens + FUNDS_WINDOW)
                            && draw(self.luck, day.to_julian_day().unsigned_abs().into(), 1000)
                                < self.funded_permille
                    })
            }
            Behaviour::SoftRecoverable => {
                let permille = if self.population == Population::Flat {
                    SOFT_SUCCESS_FLAT
                } else {
                    SOFT_SUCCESS_BY_BUCKET
                        .get(usize::from(at.hour() / 4))
                        .copied()
                        .unwrap_or(0)
                };
                draw(self.luck, u64::from(attempt_no) << 40, 1000) < permille
            }
            Behaviour::FundsNever | Behaviour::SoftNever | Behaviour::NotRetried => false,
        }
    }

    fn is_payday(&self, day: Date) -> bool {
        match self.behaviour {
            Behaviour::FundsWeekly => day.weekday() == Weekday::Friday,
            Behaviour::FundsSemiMonthly => matches!(day.day(), 1 | 15),
            // About as often as the weekly payer, on days nobody can predict.
            Behaviour::FundsAnyDay => {
                draw(
                    self.luck ^ 0x5151,
                    day.to_julian_day().unsigned_abs().into(),
                    7,
                ) == 0
            }
            _ => false,
        }
    }
}

/// A uniform draw in `0..n` determined by `luck` and `key`.
fn draw(luck: u64, key: u64, n: u64) -> u64 {
    splitmix64(luck ^ splitmix64(key)) % n.max(1)
}

/// A sequential generator for building the population.
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = splitmix64(self.0);
        self.0 % n.max(1)
    }
}

/// The failed invoices of one seed, two years of them, oldest first.
fn population(seed: u64, options: &SimOptions) -> Vec<FailedInvoice> {
    let mut dice = Dice(seed.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let year_seconds = u64::try_from((MEASURED_FROM - START).whole_seconds()).unwrap_or(1);
    let mut invoices = Vec::new();
    for year in 0..2_i32 {
        for _ in 0..options.invoices_per_year {
            let offset = i64::try_from(dice.below(year_seconds)).unwrap_or(0);
            let failed_at = START + (MEASURED_FROM - START) * year + Duration::seconds(offset);
            let mut pick = dice.below(1000);
            let mut plan = PLANS[0];
            for candidate in PLANS {
                if pick < candidate.3 {
                    plan = candidate;
                    break;
                }
                pick -= candidate.3;
            }
            let (_, amount_minor, segment, _) = plan;
            // Bigger invoices are covered by fewer paydays.
            let funded_permille = match amount_minor {
                a if a >= 500_000 => 450,
                a if a >= 150_000 => 550,
                _ => 700,
            };
            let kind = dice.below(1000);
            let shape = dice.below(1000);
            let (decline_code, behaviour) = match kind {
                // 45 %: insufficient funds.
                0..450 => (
                    "insufficient_funds",
                    match (options.population, shape) {
                        (_, 800..) => Behaviour::FundsNever,
                        (Population::Flat, _) => Behaviour::FundsAnyDay,
                        (Population::Timing, 0..400) => Behaviour::FundsWeekly,
                        (Population::Timing, _) => Behaviour::FundsSemiMonthly,
                    },
                ),
                // 40 %: other soft declines.
                450..850 => {
                    let codes = [
                        "card_declined",
                        "generic_decline",
                        "processing_error",
                        "issuer_not_available",
                        "try_again_later",
                    ];
                    let code = codes
                        .get(usize::try_from(dice.below(5)).unwrap_or(0))
                        .copied()
                        .unwrap_or("card_declined");
                    let behaviour = if shape < 700 {
                        Behaviour::SoftRecoverable
                    } else {
                        Behaviour::SoftNever
                    };
                    (code, behaviour)
                }
                // 15 %: declines no retry can pass.
                _ => {
                    let codes = [
                        "do_not_honor",
                        "stolen_card",
                        "expired_card",
                        "authentication_required",
                    ];
                    let code = codes
                        .get(usize::try_from(dice.below(4)).unwrap_or(0))
                        .copied()
                        .unwrap_or("do_not_honor");
                    (code, Behaviour::NotRetried)
                }
            };
            invoices.push(FailedInvoice {
                failed_at,
                amount_minor,
                segment,
                decline_code,
                behaviour,
                funded_permille,
                population: options.population,
                luck: dice.below(u64::MAX),
            });
        }
    }
    invoices.sort_by_key(|i| i.failed_at);
    invoices
}

/// The schedule under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arm {
    /// The policy's `retry_after_minutes`.
    Fixed,
    /// The policy's times moved by [`RetryTiming`], learning online.
    Learned,
}

/// The measured invoices' figures, one arm, one seed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArmFigures {
    /// Invoices whose first attempt failed (in the measured year).
    pub failed: u64,
    /// Their amount, cents.
    pub failed_minor: i64,
    /// Of them, paid by a retry.
    pub recovered: u64,
    /// Their amount, cents.
    pub recovered_minor: i64,
    /// Retries made.
    pub retries: u64,
    /// Retries whose time the learner moved.
    pub retries_moved: u64,
    /// Insufficient-funds invoices, and of them recovered.
    pub funds: (u64, u64),
    /// Other soft declines, and of them recovered.
    pub soft: (u64, u64),
    /// Retried invoices never recovered (their campaigns ran to the end).
    pub exhausted: u64,
    /// Sum over them of the time from the failure to the last retry, seconds:
    /// how long a whole campaign runs.
    pub exhausted_campaign_seconds: i64,
}

/// Runs one arm over one seed's population: every retry in time order, so
/// the learner only ever knows the outcomes before its choice.
fn run_arm(
    invoices: &[FailedInvoice],
    policies: &DunningPolicies,
    arm: Arm,
    seed: u64,
) -> Result<ArmFigures, SimError> {
    let policy_of = |segment| {
        policies
            .of(segment)
            .ok_or_else(|| SimError::Usage(format!("no policy for {segment:?}")))
    };
    let mut timing = RetryTiming::new(seed);
    let mut figures = ArmFigures::default();
    // (when, invoice, attempt number, failed attempts so far, last failure)
    let mut queue: BinaryHeap<Reverse<(OffsetDateTime, usize, usize)>> = BinaryHeap::new();
    let schedule = |queue: &mut BinaryHeap<Reverse<(OffsetDateTime, usize, usize)>>,
                    timing: &mut RetryTiming,
                    figures: &mut ArmFigures,
                    index: usize,
                    policy: &DunningPolicy,
                    failures: usize,
                    failed_at: OffsetDateTime| {
        let Some(invoice) = invoices.get(index) else {
            return;
        };
        let category = decline::category(invoice.decline_code);
        if let NextStep::RetryAt(fixed_at) = policy.next_step(category, failures, failed_at) {
            let at = match arm {
                Arm::Fixed => fixed_at,
                Arm::Learned => {
                    let choice = timing.choose(invoice.decline_code, failed_at, fixed_at);
                    if choice.learned && invoice.failed_at >= MEASURED_FROM {
                        figures.retries_moved += 1;
                    }
                    choice.at
                }
            };
            queue.push(Reverse((at, index, failures)));
        }
    };
    let mut next_new = 0;
    loop {
        // The next event: a new failure or a due retry, whichever is first.
        let new_at = invoices.get(next_new).map(|i| i.failed_at);
        let retry_at = queue.peek().map(|Reverse((at, _, _))| *at);
        match (new_at, retry_at) {
            (None, None) => break,
            (Some(new), retry) if retry.is_none_or(|r| new <= r) => {
                let index = next_new;
                next_new += 1;
                let Some(invoice) = invoices.get(index) else {
                    break;
                };
                if invoice.failed_at >= MEASURED_FROM {
                    figures.failed += 1;
                    figures.failed_minor += invoice.amount_minor;
                    match decline::category(invoice.decline_code) {
                        DeclineCategory::Soft if invoice.decline_code == "insufficient_funds" => {
                            figures.funds.0 += 1;
                        }
                        DeclineCategory::Soft => figures.soft.0 += 1,
                        _ => {}
                    }
                }
                let policy = policy_of(invoice.segment)?;
                schedule(
                    &mut queue,
                    &mut timing,
                    &mut figures,
                    index,
                    policy,
                    1,
                    invoice.failed_at,
                );
            }
            _ => {
                let Some(Reverse((at, index, failures))) = queue.pop() else {
                    break;
                };
                let Some(invoice) = invoices.get(index) else {
                    break;
                };
                let attempt_no = u32::try_from(failures + 1).unwrap_or(u32::MAX);
                let succeeded = invoice.retry_succeeds(at, attempt_no);
                timing.observe(&RetryOutcome {
                    decline_code: invoice.decline_code.to_owned(),
                    attempted_at: at,
                    succeeded,
                    amount_minor: invoice.amount_minor,
                });
                let measured = invoice.failed_at >= MEASURED_FROM;
                if measured {
                    figures.retries += 1;
                }
                let policy = policy_of(invoice.segment)?;
                let last = succeeded
                    || !matches!(
                        policy.next_step(DeclineCategory::Soft, failures + 1, at),
                        NextStep::RetryAt(_)
                    );
                if measured && last && !succeeded {
                    figures.exhausted += 1;
                    figures.exhausted_campaign_seconds += (at - invoice.failed_at).whole_seconds();
                }
                if succeeded {
                    if measured {
                        figures.recovered += 1;
                        figures.recovered_minor += invoice.amount_minor;
                        if invoice.decline_code == "insufficient_funds" {
                            figures.funds.1 += 1;
                        } else {
                            figures.soft.1 += 1;
                        }
                    }
                } else {
                    schedule(
                        &mut queue,
                        &mut timing,
                        &mut figures,
                        index,
                        policy,
                        failures + 1,
                        at,
                    );
                }
            }
        }
    }
    Ok(figures)
}

/// Both arms' figures for one seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SeedFigures {
    /// The seed.
    pub seed: u64,
    /// Fixed schedules.
    pub fixed: ArmFigures,
    /// Learned timing.
    pub learned: ArmFigures,
}

/// Simulates one seed, both arms on the same invoices.
///
/// # Errors
/// [`SimError::Policy`] if the shipped policies do not parse.
pub fn simulate(seed: u64, options: &SimOptions) -> Result<SeedFigures, SimError> {
    let policies = DunningPolicies::default_policies()?;
    let invoices = population(seed, options);
    Ok(SeedFigures {
        seed,
        fixed: run_arm(&invoices, &policies, Arm::Fixed, seed)?,
        learned: run_arm(&invoices, &policies, Arm::Learned, seed)?,
    })
}

/// `part / whole` in percent, 2 decimals (0 when `whole` is 0).
fn percent(part: i64, whole: i64) -> Decimal {
    if whole == 0 {
        return Decimal::ZERO;
    }
    (Decimal::from(part) * Decimal::ONE_HUNDRED / Decimal::from(whole)).round_dp(2)
}

/// `part / whole`, 2 decimals.
fn per(part: i64, whole: i64) -> Decimal {
    if whole == 0 {
        return Decimal::ZERO;
    }
    (Decimal::from(part) / Decimal::from(whole)).round_dp(2)
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The figures compared, each a function of one arm's figures.
type Metric = (&'static str, fn(&ArmFigures) -> Decimal);

const METRICS: [Metric; 7] = [
    ("recovery_by_count_pct", |f| {
        percent(signed(f.recovered), signed(f.failed))
    }),
    ("recovery_by_amount_pct", |f| {
        percent(f.recovered_minor, f.failed_minor)
    }),
    ("funds_recovery_pct", |f| {
        percent(signed(f.funds.1), signed(f.funds.0))
    }),
    ("soft_recovery_pct", |f| {
        percent(signed(f.soft.1), signed(f.soft.0))
    }),
    ("retries_per_failed_invoice", |f| {
        per(signed(f.retries), signed(f.failed))
    }),
    ("retries_moved_pct", |f| {
        percent(signed(f.retries_moved), signed(f.retries))
    }),
    ("exhausted_campaign_days_mean", |f| {
        per(
            f.exhausted_campaign_seconds,
            signed(f.exhausted).saturating_mul(86_400),
        )
    }),
];

/// Mean, min and max of `values` (not empty).
fn spread(values: &[Decimal]) -> (Decimal, Decimal, Decimal) {
    let sum: Decimal = values.iter().sum();
    let mean = (sum / Decimal::from(values.len().max(1))).round_dp(2);
    let min = values.iter().min().copied().unwrap_or_default();
    let max = values.iter().max().copied().unwrap_or_default();
    (mean, min, max)
}

/// Runs every seed, prints the table and the JSON line, and returns the figures.
///
/// # Errors
/// [`SimError::Usage`] for options out of bounds; [`SimError::Policy`] if the
/// shipped policies do not parse.
pub fn run(options: &SimOptions) -> Result<Vec<SeedFigures>, SimError> {
    if options.seeds == 0 || options.seeds > SEEDS_MAX {
        return Err(SimError::Usage(format!("--seeds 1 to {SEEDS_MAX}")));
    }
    if options.invoices_per_year == 0 || options.invoices_per_year > INVOICES_PER_YEAR_MAX {
        return Err(SimError::Usage(format!(
            "--invoices 1 to {INVOICES_PER_YEAR_MAX}"
        )));
    }
    let seeds = (1..=options.seeds)
        .map(|seed| simulate(seed, options))
        .collect::<Result<Vec<_>, _>>()?;
    println!(
        "dunning simulation: population {:?}, {} seeds, {} failed invoices a year, learning online from 2026, measured on invoices failing in 2027",
        options.population, options.seeds, options.invoices_per_year
    );
    println!(
        "{:<28} {:>24} {:>24} {:>24}",
        "figure (mean, min–max)", "fixed", "learned", "learned − fixed"
    );
    let mut json = serde_json::Map::new();
    for (name, metric) in METRICS {
        let fixed: Vec<Decimal> = seeds.iter().map(|s| metric(&s.fixed)).collect();
        let learned: Vec<Decimal> = seeds.iter().map(|s| metric(&s.learned)).collect();
        let difference: Vec<Decimal> = fixed.iter().zip(&learned).map(|(f, l)| l - f).collect();
        let mut cells = Vec::new();
        let mut entry = serde_json::Map::new();
        for (label, values) in [
            ("fixed", &fixed),
            ("learned", &learned),
            ("difference", &difference),
        ] {
            let (mean, min, max) = spread(values);
            cells.push(format!("{mean} ({min}–{max})"));
            entry.insert(
                label.to_owned(),
                serde_json::json!({ "mean": mean.to_string(), "min": min.to_string(), "max": max.to_string() }),
            );
        }
        println!(
            "{name:<28} {:>24} {:>24} {:>24}",
            cells.first().map_or("", String::as_str),
            cells.get(1).map_or("", String::as_str),
            cells.get(2).map_or("", String::as_str)
        );
        json.insert(name.to_owned(), serde_json::Value::Object(entry));
    }
    let failed: u64 = seeds.iter().map(|s| s.fixed.failed).sum();
    json.insert(
        "population".to_owned(),
        format!("{:?}", options.population).to_lowercase().into(),
    );
    json.insert("seeds".to_owned(), options.seeds.into());
    json.insert(
        "invoices_per_year".to_owned(),
        options.invoices_per_year.into(),
    );
    json.insert("measured_failed_invoices".to_owned(), failed.into());
    println!("{}", serde_json::Value::Object(json));
    Ok(seeds)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// A regression guard on the whole loop: where timing matters, learning it
    /// recovers more than the fixed schedules, on the same invoices and luck.
    #[test]
    fn learned_timing_recovers_more_than_fixed_schedules_when_timing_matters() {
        let options = SimOptions {
            seeds: 1,
            invoices_per_year: 2_000,
            population: Population::Timing,
        };
        let figures = simulate(3, &options).unwrap();
        let (fixed, learned) = (figures.fixed, figures.learned);
        assert_eq!(fixed.failed, learned.failed);
        assert!(learned.retries_moved > 0, "{learned:?}");
        assert!(
            learned.recovered > fixed.recovered,
            "fixed {fixed:?}\nlearned {learned:?}"
        );
    }
}
