//! Coupon: percent or amount off, for one invoice, N months, or forever; limited
//! redemptions and an expiry.

use crate::tagged::domain_events;
use std::collections::BTreeSet;

use recur_ledger::{Money, money::RoundingRule};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::aggregate::{Aggregate, DomainEvent};
use crate::error::DomainError;
use crate::ids::CouponCode;
use crate::period::Interval;

/// How much a coupon takes off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Discount {
    /// A percentage of each line, 0 < percent ≤ 100.
    PercentOff {
        /// e.g. "20" for 20 %.
        #[serde(with = "rust_decimal::serde::str")]
        percent: Decimal,
    },
    /// A fixed amount off the invoice, spread over its positive lines in order.
    AmountOff {
        /// The amount.
        amount: Money,
    },
}

impl Discount {
    /// The discount of each line of `amounts` (signed): percent off rounds each
    /// line half-up; amount off takes from positive lines in order until used up.
    ///
    /// # Errors
    /// Currency mismatch, overflow.
    pub fn per_line(&self, amounts: &[Money]) -> Result<Vec<Money>, DomainError> {
        match self {
            Discount::PercentOff { percent } => amounts
                .iter()
                .map(|amount| {
                    Ok(amount
                        .mul_decimal(*percent / Decimal::ONE_HUNDRED)?
                        .round_to_minor(RoundingRule::HalfUp))
                })
                .collect(),
            Discount::AmountOff { amount: off } => {
                let mut left = *off;
                amounts
                    .iter()
                    .map(|amount| {
                        if left.currency() != amount.currency() {
                            return Err(DomainError::CurrencyMismatch {
                                expected: amount.currency().code().into(),
                                got: left.currency().code().into(),
                            });
                        }
                        if !amount.is_positive() || left.is_zero() {
                            return Ok(Money::zero(amount.currency()));
                        }
                        let take = if left.amount() < amount.amount() {
                            left
                        } else {
                            *amount
                        };
                        left = left.checked_sub(take)?;
                        Ok(take)
                    })
                    .collect()
            }
        }
    }
}

/// How long a coupon keeps applying to a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CouponDuration {
    /// The first invoice only.
    Once,
    /// Invoices issued within `months` months of redemption (Stripe's rule).
    Repeating {
        /// Months, 1..=COUPON_MONTHS_MAX.
        months: u32,
    },
    /// Every invoice.
    Forever,
}

/// The longest repeating coupon, in months.
pub const COUPON_MONTHS_MAX: u32 = 120;

/// A coupon as applied to one subscription: what it takes off and until when.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedDiscount {
    /// The coupon.
    pub coupon: CouponCode,
    /// What it takes off.
    pub discount: Discount,
    /// How long.
    pub duration: CouponDuration,
    /// Invoices issued before this instant get it (repeating); none for once/forever.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub ends_at: Option<OffsetDateTime>,
}

impl AppliedDiscount {
    /// The same discount in force from `at`: a repeating coupon's months count from there.
    #[must_use]
    pub fn starting_at(mut self, at: OffsetDateTime) -> Self {
        if let CouponDuration::Repeating { months } = self.duration {
            self.ends_at = Some(Interval::MONTHLY.boundary(at, months));
        }
        self
    }

    /// Whether an invoice issued at `at` gets the discount, given how many
    /// invoices already got it.
    pub fn applies(&self, at: OffsetDateTime, invoices_discounted: u32) -> bool {
        match self.duration {
            CouponDuration::Once => invoices_discounted == 0,
            CouponDuration::Repeating { .. } => self.ends_at.is_some_and(|end| at < end),
            CouponDuration::Forever => true,
        }
    }
}

/// What can be asked of a coupon.
#[derive(Clone, Debug)]
pub enum CouponCommand {
    /// Create it.
    Create {
        /// Its code.
        code: CouponCode,
        /// What it takes off.
        discount: Discount,
        /// How long.
        duration: CouponDuration,
        /// The most redemptions, if limited.
        max_redemptions: Option<u32>,
        /// The last instant it can be redeemed, if limited.
        redeem_by: Option<OffsetDateTime>,
    },
    /// Redeem it for a subscription or a purchase (`redeemer`); a retry is a no-op.
    Redeem {
        /// The subscription or invoice id it is redeemed for.
        redeemer: String,
        /// Now, from the clock.
        now: OffsetDateTime,
    },
}

domain_events! {
    /// What happened to a coupon.
    #[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    pub enum CouponEvent {
        /// Created.
        CouponCreated {
            /// Code.
            code: CouponCode,
            /// What it takes off.
            discount: Discount,
            /// How long.
            duration: CouponDuration,
            /// Limit on redemptions.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            max_redemptions: Option<u32>,
            /// Redemption deadline.
            #[serde(default, with = "time::serde::rfc3339::option")]
            redeem_by: Option<OffsetDateTime>,
        },
        /// Redeemed once more.
        CouponRedeemed {
            /// For whom.
            redeemer: String,
            /// When.
            #[serde(with = "time::serde::rfc3339")]
            at: OffsetDateTime,
        },
    }
}

impl DomainEvent for CouponEvent {
    fn event_type(&self) -> &'static str {
        match self {
            CouponEvent::CouponCreated { .. } => "CouponCreated",
            CouponEvent::CouponRedeemed { .. } => "CouponRedeemed",
        }
    }
}

/// A coupon's state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Coupon {
    /// Code, once created.
    pub code: Option<CouponCode>,
    /// What it takes off.
    pub discount: Option<Discount>,
    /// How long.
    pub duration: Option<CouponDuration>,
    /// Limit on redemptions.
    pub max_redemptions: Option<u32>,
    /// Redemption deadline.
    pub redeem_by: Option<OffsetDateTime>,
    /// Who redeemed it.
    pub redeemers: BTreeSet<String>,
}

impl Coupon {
    /// The discount as applied to a subscription redeemed at `at`.
    pub fn applied(&self, at: OffsetDateTime) -> Option<AppliedDiscount> {
        let (code, discount, duration) = (self.code.clone()?, self.discount?, self.duration?);
        let ends_at = match duration {
            CouponDuration::Repeating { months } => Some(Interval::MONTHLY.boundary(at, months)),
            _ => None,
        };
        Some(AppliedDiscount {
            coupon: code,
            discount,
            duration,
            ends_at,
        })
    }
}

impl Aggregate for Coupon {
    type Event = CouponEvent;
    type Command = CouponCommand;

    fn decide(&self, command: CouponCommand) -> Result<Vec<CouponEvent>, DomainError> {
        match command {
            CouponCommand::Create {
                code,
                discount,
                duration,
                max_redemptions,
                redeem_by,
            } => {
                if self.code.is_some() {
                    return Err(DomainError::AlreadyExists {
                        kind: "coupon",
                        id: code.to_string(),
                    });
                }
                match discount {
                    Discount::PercentOff { percent } => {
                        if percent <= Decimal::ZERO || percent > Decimal::ONE_HUNDRED {
                            return Err(DomainError::InvalidField {
                                field: "percent_off",
                                reason: "must be above 0 and at most 100".into(),
                            });
                        }
                    }
                    Discount::AmountOff { amount } => {
                        if !amount.is_positive() {
                            return Err(DomainError::AmountNotPositive {
                                field: "amount_off",
                                amount: amount.amount().to_string(),
                            });
                        }
                        amount.to_minor()?;
                    }
                }
                if let CouponDuration::Repeating { months } = duration
                    && !(1..=COUPON_MONTHS_MAX).contains(&months)
                {
                    return Err(DomainError::InvalidField {
                        field: "duration_in_months",
                        reason: format!("1 to {COUPON_MONTHS_MAX}"),
                    });
                }
                if max_redemptions == Some(0) {
                    return Err(DomainError::InvalidField {
                        field: "max_redemptions",
                        reason: "at least 1 when given".into(),
                    });
                }
                Ok(vec![CouponEvent::CouponCreated {
                    code,
                    discount,
                    duration,
                    max_redemptions,
                    redeem_by,
                }])
            }
            CouponCommand::Redeem { redeemer, now } => {
                let Some(code) = &self.code else {
                    return Err(DomainError::NotFound {
                        kind: "coupon",
                        id: String::new(),
                    });
                };
                if self.redeemers.contains(&redeemer) {
                    return Ok(Vec::new());
                }
                if self.redeem_by.is_some_and(|by| now > by) {
                    return Err(DomainError::CouponExpired(code.to_string()));
                }
                if self
                    .max_redemptions
                    .is_some_and(|max| self.redeemers.len() >= max as usize)
                {
                    return Err(DomainError::CouponExhausted(code.to_string()));
                }
                Ok(vec![CouponEvent::CouponRedeemed { redeemer, at: now }])
            }
        }
    }

    fn evolve(&mut self, event: &CouponEvent) {
        match event {
            CouponEvent::CouponCreated {
                code,
                discount,
                duration,
                max_redemptions,
                redeem_by,
            } => {
                self.code = Some(code.clone());
                self.discount = Some(*discount);
                self.duration = Some(*duration);
                self.max_redemptions = *max_redemptions;
                self.redeem_by = *redeem_by;
            }
            CouponEvent::CouponRedeemed { redeemer, .. } => {
                self.redeemers.insert(redeemer.clone());
            }
        }
    }
}
