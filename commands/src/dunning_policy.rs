//! Dunning policies: what a campaign does after each failed payment, per
//! segment, read from configuration (commands/dunning/default.toml holds the
//! brief's three; a change is recorded as an event), and the decline-aware rule
//! that decides the next step. Pure: no I/O.

use std::collections::BTreeSet;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::customer::Segment;
use crate::decline::DeclineCategory;
use crate::error::DomainError;

/// The policies shipped with Recur: commands/dunning/default.toml.
pub const DEFAULT_POLICIES_TOML: &str = include_str!("../dunning/default.toml");
/// Most retries a policy may schedule.
pub const RETRIES_MAX: usize = 16;
/// Longest delay before a retry: 60 days.
pub const RETRY_AFTER_MINUTES_MAX: u32 = 60 * 24 * 60;
/// The longest trial extension an offer gives, in days.
pub const TRIAL_EXTENSION_DAYS_MAX: u32 = 90;
/// The most decimal places of an offer's percent off.
pub const PERCENT_OFF_PLACES_MAX: u32 = 2;

/// How a message reaches the customer (or a person at the business).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// Email over SMTP.
    Email,
    /// A text message.
    Sms,
    /// A task for a person to call the customer.
    PhoneCall,
}

/// What happens when the retries are spent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalAction {
    /// Cancel the subscription.
    Cancel,
    /// Write the invoice off as uncollectible; the subscription goes on.
    MarkUncollectible,
    /// Leave the invoice open and the subscription past due (a person decides).
    LeavePastDue,
}

/// An offer made at one step of the campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// The failed attempt (1-based) after which it is made.
    pub step: u32,
    /// A percent off the subscription (as text, `"20"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent_off: Option<Decimal>,
    /// `once` for the next invoice only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// For this many months.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_months: Option<u32>,
    /// Days added to a trial instead of a discount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trial_extension_days: Option<u32>,
}

impl Offer {
    /// The coupon's duration: `once` (the default), `forever`, or
    /// `duration_months` (1 to [`crate::coupon::COUPON_MONTHS_MAX`]; `duration`
    /// then absent or `repeating`).
    ///
    /// # Errors
    /// The rule broken, in words.
    pub fn coupon_duration(&self) -> Result<crate::coupon::CouponDuration, &'static str> {
        use crate::coupon::{COUPON_MONTHS_MAX, CouponDuration};
        match (self.duration.as_deref(), self.duration_months) {
            (None | Some("repeating"), Some(months)) => {
                if (1..=COUPON_MONTHS_MAX).contains(&months) {
                    Ok(CouponDuration::Repeating { months })
                } else {
                    Err("duration_months of 1 to 120")
                }
            }
            (Some("repeating"), None) => Err("a repeating duration needs duration_months"),
            (None | Some("once"), None) => Ok(CouponDuration::Once),
            (Some("forever"), None) => Ok(CouponDuration::Forever),
            (Some("once" | "forever"), Some(_)) => {
                Err("duration_months belongs to a repeating duration")
            }
            _ => Err("a duration of once, forever or repeating"),
        }
    }

    /// The coupon a percent-off offer of `segment`'s policy applies, named by
    /// its terms (`DUNNING-STANDARD-4-20OFF-ONCE`): one coupon per offer.
    ///
    /// # Errors
    /// An offer that is not a percent off, or a code that is not a coupon code.
    pub fn coupon_code(&self, segment: Segment) -> Result<crate::ids::CouponCode, DomainError> {
        let percent = self.percent_off.ok_or_else(|| DomainError::InvalidField {
            field: "percent_off",
            reason: "the offer is not a percent off".into(),
        })?;
        let segment = match segment {
            Segment::Standard => "STANDARD",
            Segment::HighValue => "HIGH-VALUE",
            Segment::Trial => "TRIAL",
        };
        let duration = match self.coupon_duration() {
            Ok(crate::coupon::CouponDuration::Repeating { months }) => format!("{months}M"),
            Ok(crate::coupon::CouponDuration::Forever) => "FOREVER".to_owned(),
            _ => "ONCE".to_owned(),
        };
        let percent = percent.normalize().to_string().replace('.', "P");
        crate::ids::CouponCode::parse(&format!(
            "DUNNING-{segment}-{}-{percent}OFF-{duration}",
            self.step
        ))
    }
}

/// One segment's campaign.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DunningPolicy {
    /// The customers it is for.
    pub segment: Segment,
    /// Delay before each retry, after each failed attempt, in minutes.
    pub retry_after_minutes: Vec<u32>,
    /// How the customer hears of each failure.
    pub channels: Vec<Channel>,
    /// What happens when the retries are spent.
    pub final_action: FinalAction,
    /// Offers at given steps.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offers: Vec<Offer>,
}

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NextStep {
    /// Retry the same card then.
    RetryAt(#[serde(with = "time::serde::rfc3339")] OffsetDateTime),
    /// The card cannot succeed as it is (hard decline, expired, none on file):
    /// no retry until the card changes; ask the customer to update it. The
    /// policy's final action falls due `until` (when its retries would have
    /// run out) unless a new card comes first.
    AwaitNewCard {
        /// When the campaign gives up without a new card.
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
    },
    /// The bank wants the customer to authenticate: send a link, no off-session
    /// retry; gives up `until`, as [`NextStep::AwaitNewCard`].
    AwaitCustomerAction {
        /// When the campaign gives up without the customer.
        #[serde(with = "time::serde::rfc3339")]
        until: OffsetDateTime,
    },
    /// The retries are spent: the policy's final action.
    GiveUp(FinalAction),
}

/// Why a policy file was refused.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not TOML of the expected shape.
    #[error("dunning policies: {0}")]
    Malformed(String),
    /// A rule a policy breaks.
    #[error("dunning policy for {segment:?}: {reason}")]
    Invalid {
        /// The policy's segment.
        segment: Segment,
        /// What is wrong.
        reason: String,
    },
}

/// Every segment's policy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DunningPolicies(Vec<DunningPolicy>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policy: Vec<DunningPolicy>,
}

impl DunningPolicies {
    /// The policies shipped with Recur (the brief's three).
    ///
    /// # Errors
    /// Never for the shipped file (a test parses it).
    pub fn default_policies() -> Result<Self, PolicyError> {
        Self::parse(DEFAULT_POLICIES_TOML)
    }

    /// Policies from TOML: exactly one per segment, retries within
    /// [`RETRIES_MAX`] and [`RETRY_AFTER_MINUTES_MAX`], offers at steps the
    /// policy reaches, each offer one thing.
    ///
    /// # Errors
    /// [`PolicyError`] naming the policy and the rule.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Malformed(e.to_string()))?;
        let mut seen = BTreeSet::new();
        for policy in &file.policy {
            let invalid = |reason: &str| PolicyError::Invalid {
                segment: policy.segment,
                reason: reason.to_owned(),
            };
            if !seen.insert(policy.segment) {
                return Err(invalid("a second policy for the segment"));
            }
            if policy.retry_after_minutes.is_empty()
                || policy.retry_after_minutes.len() > RETRIES_MAX
            {
                return Err(invalid("1 to 16 retries"));
            }
            if policy
                .retry_after_minutes
                .iter()
                .any(|m| *m == 0 || *m > RETRY_AFTER_MINUTES_MAX)
            {
                return Err(invalid("each retry 1 minute to 60 days later"));
            }
            let steps = policy.retry_after_minutes.len() as u32 + 1;
            for offer in &policy.offers {
                if offer.step == 0 || offer.step > steps {
                    return Err(invalid("an offer at a step the policy never reaches"));
                }
                let kinds = usize::from(offer.percent_off.is_some())
                    + usize::from(offer.trial_extension_days.is_some());
                if kinds != 1 {
                    return Err(invalid("an offer is a percent off or a trial extension"));
                }
                if let Some(percent) = offer.percent_off
                    && (percent <= Decimal::ZERO || percent > Decimal::ONE_HUNDRED)
                {
                    return Err(invalid("a percent off above 0 and at most 100"));
                }
                if offer
                    .percent_off
                    .is_some_and(|p| p.normalize().scale() > PERCENT_OFF_PLACES_MAX)
                {
                    return Err(invalid("a percent off with at most 2 decimal places"));
                }
                if offer
                    .trial_extension_days
                    .is_some_and(|d| d == 0 || d > TRIAL_EXTENSION_DAYS_MAX)
                {
                    return Err(invalid("a trial extension of 1 to 90 days"));
                }
                if offer.percent_off.is_none()
                    && (offer.duration.is_some() || offer.duration_months.is_some())
                {
                    return Err(invalid("a duration belongs to a percent off"));
                }
                if offer.percent_off.is_some() {
                    offer.coupon_duration().map_err(invalid)?;
                    offer
                        .coupon_code(policy.segment)
                        .map_err(|_| invalid("an offer whose coupon code is too long"))?;
                }
            }
        }
        for segment in [Segment::Standard, Segment::HighValue, Segment::Trial] {
            if !seen.contains(&segment) {
                return Err(PolicyError::Invalid {
                    segment,
                    reason: "no policy for the segment".to_owned(),
                });
            }
        }
        Ok(Self(file.policy))
    }

    /// The policy of `segment`.
    pub fn of(&self, segment: Segment) -> Option<&DunningPolicy> {
        self.0.iter().find(|p| p.segment == segment)
    }
}

impl DunningPolicy {
    /// The next step after `failed_attempts` failures (1 after the first) of a
    /// decline of `category`, the last one due at `failed_at`. A card that
    /// cannot succeed is never retried: only a new card (or the customer's
    /// action) moves the invoice on before the schedule would have run out. A
    /// trial extension offered at this step moves what follows by its days.
    pub fn next_step(
        &self,
        category: DeclineCategory,
        failed_attempts: usize,
        failed_at: OffsetDateTime,
    ) -> NextStep {
        let Some(left) = failed_attempts
            .checked_sub(1)
            .and_then(|i| self.retry_after_minutes.get(i..))
            .filter(|left| !left.is_empty())
        else {
            return NextStep::GiveUp(self.final_action);
        };
        let grace = Duration::days(i64::from(
            self.offers_at(u32::try_from(failed_attempts).unwrap_or(u32::MAX))
                .filter_map(|o| o.trial_extension_days)
                .sum::<u32>(),
        ));
        let minutes = |list: &[u32]| Duration::minutes(list.iter().map(|m| i64::from(*m)).sum());
        let until = failed_at + minutes(left) + grace;
        match category {
            DeclineCategory::Hard | DeclineCategory::NeedsCustomerAction => {
                NextStep::AwaitNewCard { until }
            }
            DeclineCategory::Authentication => NextStep::AwaitCustomerAction { until },
            DeclineCategory::Soft => NextStep::RetryAt(failed_at + minutes(&left[..1]) + grace),
        }
    }

    /// When each step left after `failed_attempts` failures would have fallen
    /// due (a retry's time): the reminders of a campaign that waits for the
    /// customer.
    pub fn remaining_step_times(
        &self,
        failed_attempts: usize,
        failed_at: OffsetDateTime,
    ) -> Vec<OffsetDateTime> {
        // A trial extension at this step moves everything after it.
        let mut at = failed_at
            + Duration::days(i64::from(
                self.offers_at(u32::try_from(failed_attempts).unwrap_or(u32::MAX))
                    .filter_map(|o| o.trial_extension_days)
                    .sum::<u32>(),
            ));
        failed_attempts
            .checked_sub(1)
            .and_then(|i| self.retry_after_minutes.get(i..))
            .unwrap_or_default()
            .iter()
            .map(|minutes| {
                at += Duration::minutes(i64::from(*minutes));
                at
            })
            .collect()
    }

    /// How many failed attempts the policy allows before its final action.
    pub fn steps_total(&self) -> u32 {
        u32::try_from(self.retry_after_minutes.len()).unwrap_or(u32::MAX) + 1
    }

    /// The offers made after the `step`-th failed attempt.
    pub fn offers_at(&self, step: u32) -> impl Iterator<Item = &Offer> {
        self.offers.iter().filter(move |o| o.step == step)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use time::macros::datetime;

    #[test]
    fn the_shipped_policies_are_the_briefs_three() {
        let policies = DunningPolicies::default_policies().unwrap();
        let standard = policies.of(Segment::Standard).unwrap();
        assert_eq!(
            standard.retry_after_minutes,
            vec![60, 1440, 4320, 10080, 20160]
        );
        assert_eq!(standard.offers_at(4).count(), 1);
        let high_value = policies.of(Segment::HighValue).unwrap();
        assert_eq!(high_value.retry_after_minutes.len(), 8);
        assert_eq!(high_value.retry_after_minutes[0], 30);
        assert!(high_value.channels.contains(&Channel::PhoneCall));
        let trial = policies.of(Segment::Trial).unwrap();
        assert_eq!(trial.retry_after_minutes, vec![120, 1440, 4320]);
        assert_eq!(
            trial
                .offers_at(2)
                .next()
                .and_then(|o| o.trial_extension_days),
            Some(7)
        );
    }

    #[test]
    fn cards_that_cannot_succeed_are_never_retried() {
        let policies = DunningPolicies::default_policies().unwrap();
        let standard = policies.of(Segment::Standard).unwrap();
        let at = datetime!(2026-03-01 09:00 UTC);
        assert_eq!(
            standard.next_step(DeclineCategory::Soft, 1, at),
            NextStep::RetryAt(datetime!(2026-03-01 10:00 UTC))
        );
        assert_eq!(
            standard.next_step(DeclineCategory::Soft, 5, at),
            NextStep::RetryAt(datetime!(2026-03-15 09:00 UTC))
        );
        assert_eq!(
            standard.next_step(DeclineCategory::Soft, 6, at),
            NextStep::GiveUp(FinalAction::Cancel)
        );
        // Waiting for the customer gives up when the retries would have run out.
        let until = datetime!(2026-03-26 10:00 UTC);
        for category in [DeclineCategory::Hard, DeclineCategory::NeedsCustomerAction] {
            assert_eq!(
                standard.next_step(category, 1, at),
                NextStep::AwaitNewCard { until }
            );
        }
        assert_eq!(
            standard.next_step(DeclineCategory::Authentication, 1, at),
            NextStep::AwaitCustomerAction { until }
        );
        assert_eq!(
            standard.next_step(crate::decline::category("no_payment_method"), 1, at),
            NextStep::AwaitNewCard { until }
        );
        assert_eq!(
            standard.next_step(DeclineCategory::Hard, 6, at),
            NextStep::GiveUp(FinalAction::Cancel)
        );
        assert_eq!(
            standard.remaining_step_times(5, at),
            vec![datetime!(2026-03-15 09:00 UTC)]
        );
        assert_eq!(standard.remaining_step_times(1, at).len(), 5);
        assert_eq!(standard.steps_total(), 6);
        // The trial's extension at step 2 moves its remaining steps too.
        assert_eq!(
            policies
                .of(Segment::Trial)
                .unwrap()
                .remaining_step_times(2, at),
            vec![
                datetime!(2026-03-09 09:00 UTC),
                datetime!(2026-03-12 09:00 UTC)
            ]
        );
        // The trial's extension at step 2 moves the next retry by its 7 days.
        let trial = policies.of(Segment::Trial).unwrap();
        assert_eq!(
            trial.next_step(DeclineCategory::Soft, 2, at),
            NextStep::RetryAt(datetime!(2026-03-09 09:00 UTC))
        );
    }

    #[test]
    fn a_policy_file_that_breaks_a_rule_is_refused_with_the_rule() {
        let base = DEFAULT_POLICIES_TOML;
        let refused = |text: &str| DunningPolicies::parse(text).unwrap_err().to_string();
        assert!(refused("not toml [").contains("dunning policies"));
        let without_trial = base
            .split("[[policy]]")
            .filter(|p| !p.contains("\"trial\""))
            .collect::<Vec<_>>()
            .join("[[policy]]");
        assert!(
            refused(&without_trial).contains("no policy"),
            "{}",
            refused(&without_trial)
        );
        let twice = format!(
            "{base}\n[[policy]]\nsegment = \"trial\"\nretry_after_minutes = [60]\nchannels = []\nfinal_action = \"cancel\"\n"
        );
        assert!(refused(&twice).contains("a second policy"));
        let zero = base.replace("[120, 1440, 4320]", "[0, 1440]");
        assert!(refused(&zero).contains("1 minute to 60 days"));
        let far_offer = base.replace(
            "{ step = 2, trial_extension_days = 7 }",
            "{ step = 9, trial_extension_days = 7 }",
        );
        assert!(refused(&far_offer).contains("never reaches"));
        let both = base.replace(
            "{ step = 2, trial_extension_days = 7 }",
            "{ step = 2, trial_extension_days = 7, percent_off = \"10\" }",
        );
        assert!(refused(&both).contains("percent off or a trial extension"));
        let unknown = base.replace(
            "final_action = \"leave_past_due\"",
            "final_action = \"leave_past_due\"\npersonal_outreach = true",
        );
        assert!(refused(&unknown).contains("dunning policies"));
    }

    /// Offers are checked with the coupon rules when the file is read, so a
    /// coupon refused later can never stall a campaign.
    #[test]
    fn offers_the_coupon_rules_would_refuse_are_refused_with_the_file() {
        let base = DEFAULT_POLICIES_TOML;
        let refused = |text: &str| DunningPolicies::parse(text).unwrap_err().to_string();
        let offer = |new: &str| {
            base.replace(
                "{ step = 5, percent_off = \"30\", duration_months = 3 }",
                new,
            )
        };
        for (bad, rule) in [
            (
                "{ step = 5, percent_off = \"30\", duration_months = 0 }",
                "duration_months of 1 to 120",
            ),
            (
                "{ step = 5, percent_off = \"30\", duration_months = 121 }",
                "duration_months of 1 to 120",
            ),
            (
                "{ step = 5, percent_off = \"30\", duration = \"weekly\" }",
                "once, forever or repeating",
            ),
            (
                "{ step = 5, percent_off = \"30\", duration = \"repeating\" }",
                "needs duration_months",
            ),
            (
                "{ step = 5, percent_off = \"30\", duration = \"once\", duration_months = 3 }",
                "belongs to a repeating duration",
            ),
            (
                "{ step = 5, percent_off = \"12.345\", duration = \"once\" }",
                "at most 2 decimal places",
            ),
            ("{ step = 5, trial_extension_days = 0 }", "1 to 90 days"),
            (
                "{ step = 5, trial_extension_days = 4000000 }",
                "1 to 90 days",
            ),
            (
                "{ step = 5, trial_extension_days = 7, duration = \"once\" }",
                "belongs to a percent off",
            ),
        ] {
            let text = offer(bad);
            assert_ne!(text, base, "{bad}: the replacement took");
            let error = refused(&text);
            assert!(error.contains(rule), "{bad}: {error}");
        }
        // What the rules allow, with its coupon named by its terms.
        let fine = DunningPolicies::parse(&offer(
            "{ step = 5, percent_off = \"12.5\", duration = \"repeating\", duration_months = 120 }",
        ))
        .unwrap();
        let standard = fine.of(Segment::Standard).unwrap();
        let code = standard.offers[1].coupon_code(Segment::Standard).unwrap();
        assert_eq!(code.to_string(), "DUNNING-STANDARD-5-12P5OFF-120M");
    }
}
