//! Counting profiles: where the analytics vendors disagree on what counts as MRR
//! and how a change is classified, the rule is a setting, and a named profile
//! holds one choice for each (docs/metrics.md says which vendor does what).
//!
//! The profile is part of the MRR projection's stored version, so choosing
//! another one rebuilds the read models blue/green from the first event: years of
//! metrics re-stated under the other convention, while the old tables answer
//! until the new ones are complete. Every metrics answer names the profile that
//! built the tables it read.

use std::fmt;

use serde::Serialize;

/// The environment variable naming the profile (`default` when unset).
pub const PROFILE_ENV: &str = "RECUR_METRICS_PROFILE";
/// Overrides the profile's pause rule: `contraction` or `churn`.
pub const PAUSE_ENV: &str = "RECUR_METRICS_PAUSE";
/// Overrides the profile's once-coupon rule: `discounted_period` or `ignore`.
pub const ONCE_COUPON_ENV: &str = "RECUR_METRICS_ONCE_COUPON";
/// Overrides the profile's past-due rule: days past due after which a
/// subscription counts as churned (1–365; empty: counted until canceled).
pub const PAST_DUE_CHURN_DAYS_ENV: &str = "RECUR_PAST_DUE_CHURN_DAYS";
/// The longest past-due churn setting, in days.
pub const PAST_DUE_CHURN_DAYS_MAX: u32 = 365;

/// A metrics setting this version cannot honour; each names its variable and value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// `RECUR_METRICS_PROFILE` names no profile.
    #[error("{}={value:?}: not a profile; expected one of {}", PROFILE_ENV, NAMES.join(", "))]
    UnknownProfile {
        /// The value given.
        value: String,
    },
    /// `RECUR_METRICS_PAUSE` is neither `contraction` nor `churn`.
    #[error("{}={value:?}: expected contraction or churn", PAUSE_ENV)]
    Pause {
        /// The value given.
        value: String,
    },
    /// `RECUR_METRICS_ONCE_COUPON` is neither `discounted_period` nor `ignore`.
    #[error("{}={value:?}: expected discounted_period or ignore", ONCE_COUPON_ENV)]
    OnceCoupon {
        /// The value given.
        value: String,
    },
    /// `RECUR_PAST_DUE_CHURN_DAYS` is not a number of days in range.
    #[error(
        "{}={value:?}: expected a number of days from 1 to {}",
        PAST_DUE_CHURN_DAYS_ENV,
        PAST_DUE_CHURN_DAYS_MAX
    )]
    PastDueChurnDays {
        /// The value given.
        value: String,
    },
}

/// How a paused subscription is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PauseRule {
    /// MRR 0 while paused, but the customer stays a customer: a pause is a
    /// contraction and a resume an expansion (ChartMogul's default of treating
    /// customers moved to $0 as still active).
    Contraction,
    /// A paused customer has left: a pause that takes their MRR to 0 is churn,
    /// and a resume a reactivation.
    Churn,
}

/// How a `once` coupon is counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnceCoupon {
    /// It reduces MRR for the period it discounts; MRR comes back at the next
    /// renewal (an expansion), as Stripe's "subtract one-time discounts" option.
    DiscountedPeriod,
    /// It never touches MRR (Stripe's older rule: coupons of finite duration
    /// leave MRR unaffected).
    Ignore,
}

/// One choice for every rule the vendors disagree on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Profile {
    /// Its name (`default`, `conservative`, or `custom` when a setting was overridden).
    pub name: String,
    /// Pauses.
    pub pause: PauseRule,
    /// `once` coupons.
    pub once_coupon: OnceCoupon,
    /// Days past due after which a subscription counts as churned; None: a
    /// past-due subscription counts until it is canceled (Stripe's rule).
    pub past_due_churn_days: Option<u32>,
}

/// The profiles that ship with Recur.
pub const NAMES: &[&str] = &["default", "conservative"];

impl Default for Profile {
    fn default() -> Self {
        Self::named("default").unwrap_or(Self {
            name: "default".into(),
            pause: PauseRule::Contraction,
            once_coupon: OnceCoupon::DiscountedPeriod,
            past_due_churn_days: None,
        })
    }
}

impl Profile {
    /// A shipped profile by name:
    /// - `default`: pause is contraction, a once coupon reduces the period it
    ///   discounts, past due counts until canceled;
    /// - `conservative`: pause is churn, once coupons reduce their period, past
    ///   due for 30 days is churn.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "default" => Some(Self {
                name: name.into(),
                pause: PauseRule::Contraction,
                once_coupon: OnceCoupon::DiscountedPeriod,
                past_due_churn_days: None,
            }),
            "conservative" => Some(Self {
                name: name.into(),
                pause: PauseRule::Churn,
                once_coupon: OnceCoupon::DiscountedPeriod,
                past_due_churn_days: Some(30),
            }),
            _ => None,
        }
    }

    /// The profile the environment asks for: `RECUR_METRICS_PROFILE` (default
    /// `default`), with any of `RECUR_METRICS_PAUSE`, `RECUR_METRICS_ONCE_COUPON`
    /// and `RECUR_PAST_DUE_CHURN_DAYS` overriding its rule (the name becomes
    /// `custom`).
    ///
    /// # Errors
    /// [`ProfileError`]: an unknown profile or an invalid setting (a setting
    /// that silently did nothing would give wrong metrics).
    pub fn from_env() -> Result<Self, ProfileError> {
        let var = |name: &str| {
            std::env::var(name)
                .ok()
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        Self::from_settings(
            var(PROFILE_ENV).as_deref(),
            var(PAUSE_ENV).as_deref(),
            var(ONCE_COUPON_ENV).as_deref(),
            var(PAST_DUE_CHURN_DAYS_ENV).as_deref(),
        )
    }

    /// [`Profile::from_env`] from the given values.
    ///
    /// # Errors
    /// [`ProfileError`]: an unknown profile or an invalid setting.
    pub fn from_settings(
        name: Option<&str>,
        pause: Option<&str>,
        once_coupon: Option<&str>,
        past_due_churn_days: Option<&str>,
    ) -> Result<Self, ProfileError> {
        let name = name.unwrap_or("default");
        let mut profile = Self::named(name).ok_or_else(|| ProfileError::UnknownProfile {
            value: name.to_owned(),
        })?;
        let mut custom = false;
        if let Some(pause) = pause {
            profile.pause = match pause {
                "contraction" => PauseRule::Contraction,
                "churn" => PauseRule::Churn,
                other => {
                    return Err(ProfileError::Pause {
                        value: other.to_owned(),
                    });
                }
            };
            custom = true;
        }
        if let Some(once) = once_coupon {
            profile.once_coupon = match once {
                "discounted_period" => OnceCoupon::DiscountedPeriod,
                "ignore" => OnceCoupon::Ignore,
                other => {
                    return Err(ProfileError::OnceCoupon {
                        value: other.to_owned(),
                    });
                }
            };
            custom = true;
        }
        if let Some(days) = past_due_churn_days {
            profile.past_due_churn_days = match days.parse::<u32>() {
                Ok(days) if (1..=PAST_DUE_CHURN_DAYS_MAX).contains(&days) => Some(days),
                _ => {
                    return Err(ProfileError::PastDueChurnDays {
                        value: days.to_owned(),
                    });
                }
            };
            custom = true;
        }
        if custom && Self::named(&profile.name).as_ref() != Some(&profile) {
            profile.name = "custom".into();
        }
        Ok(profile)
    }

    /// The settings as a number (pause, once coupon, past-due days), part of
    /// the MRR projection's stored version: another profile rebuilds it.
    pub fn code(&self) -> u32 {
        let pause = match self.pause {
            PauseRule::Contraction => 0,
            PauseRule::Churn => 1,
        };
        let once = match self.once_coupon {
            OnceCoupon::DiscountedPeriod => 0,
            OnceCoupon::Ignore => 1,
        };
        pause * 10_000 + once * 1_000 + self.past_due_churn_days.unwrap_or(0)
    }

    /// The settings a [`Profile::code`] stands for (named `custom` unless they
    /// are a shipped profile's).
    pub fn from_code(code: u32) -> Option<Self> {
        let (pause, once, days) = (code / 10_000, code / 1_000 % 10, code % 1_000);
        let mut profile = Self {
            name: "custom".into(),
            pause: match pause {
                0 => PauseRule::Contraction,
                1 => PauseRule::Churn,
                _ => return None,
            },
            once_coupon: match once {
                0 => OnceCoupon::DiscountedPeriod,
                1 => OnceCoupon::Ignore,
                _ => return None,
            },
            past_due_churn_days: (days > 0).then_some(days),
        };
        if let Some(shipped) = NAMES
            .iter()
            .filter_map(|name| Self::named(name))
            .find(|shipped| shipped.code() == code)
        {
            profile.name = shipped.name;
        }
        Some(profile)
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (pause: {:?}, once coupons: {:?}, past due: {})",
            self.name,
            self.pause,
            self.once_coupon,
            self.past_due_churn_days
                .map_or("counted until canceled".to_owned(), |d| format!(
                    "churned after {d} days"
                ))
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_come_from_a_name_and_overrides_and_round_trip_through_their_code() {
        let default = Profile::from_settings(None, None, None, None);
        assert_eq!(default, Ok(Profile::default()));
        let custom = Profile::from_settings(Some("default"), Some("churn"), None, Some("7"));
        let custom = custom.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(custom.name, "custom");
        assert_eq!(custom.pause, PauseRule::Churn);
        assert_eq!(custom.past_due_churn_days, Some(7));
        assert_eq!(Profile::from_code(custom.code()), Some(custom));
        for name in NAMES {
            let shipped = Profile::named(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(Profile::from_code(shipped.code()).as_ref(), Some(&shipped));
        }
        assert_eq!(
            Profile::from_settings(Some("chartmogul"), None, None, None),
            Err(ProfileError::UnknownProfile {
                value: "chartmogul".into()
            })
        );
        assert_eq!(
            Profile::from_settings(None, None, None, Some("0"))
                .expect_err("0 days")
                .to_string(),
            "RECUR_PAST_DUE_CHURN_DAYS=\"0\": expected a number of days from 1 to 365"
        );
        assert!(Profile::from_settings(None, Some("pause"), None, None).is_err());
        assert!(Profile::from_settings(None, None, Some("sometimes"), None).is_err());
        assert!(Profile::from_settings(None, None, None, Some("0")).is_err());
        assert!(Profile::from_settings(None, None, None, Some("366")).is_err());
    }
}
