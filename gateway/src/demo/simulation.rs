//! The coaching business, simulated through the real command path: customers
//! arrive over the year, subscribe (with trials, coupons, good and bad cards),
//! change plans, pause, cancel, buy the course, get refunds; the scheduler bills
//! them as the test clock moves. Deterministic for a seed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use recur_commands::billing::{NewCoupon, NewCustomer, NewSubscription, PlanChange, Trial};
use recur_commands::coupon::{CouponDuration, Discount};
use recur_commands::customer::{ContactDetails, Segment};
use recur_commands::subscription::Timing;
use recur_commands::tax::TaxLocation;
use recur_commands::{
    Billing, BillingError, CouponCode, CustomerId, DomainError, InvoiceId, SubscriptionId,
};
use recur_ledger::Money;
use rust_decimal::Decimal;
use time::{Duration, OffsetDateTime};

use super::cards::{CardIssuer, SimulatedCards};

/// A small, fast, deterministic generator (SplitMix64); no floats.
pub struct Dice(u64);

impl Dice {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5DEE_CE66_D1CE_4E5B)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// True with probability `permille` / 1000.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }

    /// A random instant in `[from, from + span)`, whole seconds.
    pub fn instant(&mut self, from: OffsetDateTime, span: Duration) -> OffsetDateTime {
        let seconds = u64::try_from(span.whole_seconds().max(1)).unwrap_or(1);
        from + Duration::seconds(i64::try_from(self.below(seconds)).unwrap_or(0))
    }
}

/// What happens to a customer, and when.
#[derive(Clone, Debug)]
enum Action {
    Arrive,
    ChangePlan { upgrade: bool, now: bool },
    Cancel { now: bool },
    CardGoesBad { decline_code: &'static str },
    UpdateCard,
    Pause,
    Resume,
    BuyCourse,
    Refund { permille: u32 },
}

/// A simulated customer's plan and what Recur gave back for them.
struct Person {
    plan: Option<&'static str>,
    buys_course: bool,
    trial: bool,
    card: Option<&'static str>,
    coupon: Option<&'static str>,
    tax: Option<(&'static str, Option<&'static str>)>,
    /// Name, email and phone: made up from the person's number (never from the
    /// seed's dice, so the business a seed gives stays the same).
    contact: ContactDetails,
    customer: Option<CustomerId>,
    subscription: Option<SubscriptionId>,
    course_invoice: Option<InvoiceId>,
}

/// Counts of what the simulated people asked for.
#[derive(Clone, Debug, Default, serde::Serialize, PartialEq, Eq)]
pub struct Activity {
    /// Customers created.
    pub customers: u64,
    /// Subscriptions started.
    pub subscriptions: u64,
    /// Course purchases.
    pub purchases: u64,
    /// Plan changes asked for.
    pub plan_changes: u64,
    /// Cancellations asked for.
    pub cancellations: u64,
    /// Pauses and resumes asked for.
    pub pauses: u64,
    /// Card updates.
    pub card_updates: u64,
    /// Cards refused when attached (the test card that declines on attach).
    pub cards_refused: u64,
    /// Refunds asked for.
    pub refunds: u64,
    /// Requests the domain refused (e.g. pausing a past-due subscription), by code.
    pub refused: BTreeMap<String, u64>,
}

/// The script: every action of every person, in time order.
pub struct Script {
    people: Vec<Person>,
    actions: BTreeMap<(OffsetDateTime, u64), (usize, Action)>,
    cards: Arc<dyn CardIssuer>,
}

const CARD_OK: &str = "4242424242424242";
const CARD_MASTERCARD: &str = "5555555555554444";
const CARD_DECLINES_ON_ATTACH: &str = "4000000000000002";
const CARD_FAILS_WHEN_CHARGED: &str = "4000000000000341";

impl Script {
    /// Writes the year: `customers` arrivals spread over `months` from `start`.
    pub fn write(seed: u64, customers: u64, start: OffsetDateTime, months: u32) -> Self {
        let mut dice = Dice::new(seed);
        let end = recur_commands::period::Interval::MONTHLY.boundary(start, months);
        let span = end - start - Duration::days(1);
        let mut people = Vec::new();
        let mut actions = BTreeMap::new();
        let mut seq = 0u64;
        let mut at =
            |actions: &mut BTreeMap<_, _>, when: OffsetDateTime, who: usize, action: Action| {
                if when < end {
                    seq += 1;
                    actions.insert((when, seq), (who, action));
                }
            };
        for who in 0..usize::try_from(customers).unwrap_or(0) {
            let arrival = dice.instant(start, span);
            let roll = dice.below(100);
            let (plan, buys_course) = match roll {
                0..15 => (None, true),
                15..18 => (Some("community_access"), true),
                18..73 => (Some("community_access"), false),
                73..92 => (Some("group_coaching"), false),
                _ => (Some("elite_coaching"), false),
            };
            let card = match dice.below(100) {
                0..82 => Some(CARD_OK),
                82..88 => Some(CARD_MASTERCARD),
                88..92 => Some(CARD_DECLINES_ON_ATTACH),
                92..96 => Some(CARD_FAILS_WHEN_CHARGED),
                _ => None,
            };
            let trial = card.is_none() || dice.chance(700);
            let coupon = match plan {
                Some("community_access") if dice.chance(200) => Some("WELCOME20"),
                Some("elite_coaching") if dice.chance(150) => Some("COACH500"),
                _ => None,
            };
            let tax = match dice.below(100) {
                0..10 => Some(("US", Some("TX"))),
                10..18 => Some(("US", Some("NY"))),
                18..45 => Some(("US", Some("CA"))),
                45..57 => Some(("DE", None)),
                57..65 => Some(("GB", None)),
                65..72 => Some(("CA", None)),
                72..85 => Some(("US", None)),
                _ => None,
            };
            at(&mut actions, arrival, who, Action::Arrive);
            if buys_course {
                let when = arrival + Duration::minutes(5);
                at(&mut actions, when, who, Action::BuyCourse);
                if dice.chance(60) {
                    let refund_at =
                        when + Duration::days(i64::try_from(1 + dice.below(13)).unwrap_or(1));
                    at(
                        &mut actions,
                        refund_at,
                        who,
                        Action::Refund { permille: 500 },
                    );
                }
            }
            if plan.is_some() {
                let life = end - arrival;
                // Monthly churn: community 6 %, group 4 %, elite 3 %, as a time of leaving.
                let churn_permille = match plan {
                    Some("elite_coaching") => 30,
                    Some("group_coaching") => 40,
                    _ => 60,
                };
                let mut month = 0;
                while month < 24 {
                    if dice.chance(churn_permille) {
                        let leave = arrival
                            + Duration::days(
                                30 * month + i64::try_from(dice.below(30)).unwrap_or(0),
                            );
                        at(
                            &mut actions,
                            leave,
                            who,
                            Action::Cancel {
                                now: dice.chance(200),
                            },
                        );
                        break;
                    }
                    month += 1;
                }
                if dice.chance(120) {
                    let when = dice.instant(arrival + Duration::days(10), life);
                    let upgrade = match plan {
                        Some("community_access") => true,
                        Some("elite_coaching") => false,
                        _ => dice.chance(500),
                    };
                    at(
                        &mut actions,
                        when,
                        who,
                        Action::ChangePlan {
                            upgrade,
                            now: dice.chance(700),
                        },
                    );
                }
                if dice.chance(90) {
                    let when = dice.instant(arrival + Duration::days(20), life);
                    let decline_code = match dice.below(10) {
                        0..4 => "card_declined",
                        4..7 => "insufficient_funds",
                        7..9 => "expired_card",
                        _ => "processing_error",
                    };
                    at(
                        &mut actions,
                        when,
                        who,
                        Action::CardGoesBad { decline_code },
                    );
                    if dice.chance(600) {
                        let fixed = when
                            + Duration::hours(i64::try_from(2 + dice.below(24 * 20)).unwrap_or(2));
                        at(&mut actions, fixed, who, Action::UpdateCard);
                    }
                }
                if card == Some(CARD_FAILS_WHEN_CHARGED) && dice.chance(500) {
                    let fixed = arrival
                        + Duration::hours(i64::try_from(1 + dice.below(24 * 10)).unwrap_or(1));
                    at(&mut actions, fixed, who, Action::UpdateCard);
                }
                if card.is_none() && dice.chance(600) {
                    let added =
                        arrival + Duration::days(i64::try_from(1 + dice.below(40)).unwrap_or(1));
                    at(&mut actions, added, who, Action::UpdateCard);
                }
                if dice.chance(30) {
                    let when = dice.instant(arrival + Duration::days(40), life);
                    at(&mut actions, when, who, Action::Pause);
                    let back =
                        when + Duration::days(i64::try_from(20 + dice.below(50)).unwrap_or(20));
                    at(&mut actions, back, who, Action::Resume);
                }
                if dice.chance(15) {
                    let when =
                        arrival + Duration::days(i64::try_from(35 + dice.below(20)).unwrap_or(35));
                    at(&mut actions, when, who, Action::Refund { permille: 200 });
                }
            }
            people.push(Person {
                plan,
                buys_course,
                trial,
                card,
                coupon,
                tax,
                contact: made_up_contact(who),
                customer: None,
                subscription: None,
                course_invoice: None,
            });
        }
        Self {
            people,
            actions,
            cards: Arc::new(SimulatedCards),
        }
    }

    /// The earliest action at or before `until`, removed from the script.
    fn next_due(&mut self, until: OffsetDateTime) -> Option<(usize, Action)> {
        let key = *self.actions.keys().next()?;
        if key.0 > until {
            return None;
        }
        self.actions.remove(&key)
    }

    /// When the next action is, if any.
    pub fn next_at(&self) -> Option<OffsetDateTime> {
        self.actions.keys().next().map(|(at, _)| *at)
    }

    /// Gets the people's card tokens from `cards` (default: the simulated gateway's).
    #[must_use]
    pub fn with_cards(mut self, cards: Arc<dyn CardIssuer>) -> Self {
        self.cards = cards;
        self
    }

    /// How many actions are left.
    pub fn remaining(&self) -> usize {
        self.actions.len()
    }

    /// Runs every action due at or before `now`.
    ///
    /// # Errors
    /// Anything but a domain refusal (which is counted).
    pub async fn act_until(
        &mut self,
        billing: &Billing,
        now: OffsetDateTime,
        activity: &mut Activity,
    ) -> Result<(), BillingError> {
        while let Some((who, action)) = self.next_due(now) {
            let result = act(
                billing,
                self.cards.as_ref(),
                &mut self.people[who],
                action,
                activity,
            )
            .await;
            match result {
                Ok(()) => {}
                Err(BillingError::Domain(refusal)) => {
                    *activity
                        .refused
                        .entry(refusal.code().to_owned())
                        .or_default() += 1;
                }
                Err(error) => return Err(error),
            }
        }
        Ok(())
    }
}

/// Creates the demo's coupons.
///
/// # Errors
/// Ledger errors.
pub async fn create_coupons(billing: &Billing) -> Result<(), BillingError> {
    billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("WELCOME20")?,
            discount: Discount::PercentOff {
                percent: Decimal::from(20),
            },
            duration: CouponDuration::Repeating { months: 3 },
            max_redemptions: None,
            redeem_by: None,
        })
        .await?;
    billing
        .create_coupon(NewCoupon {
            code: CouponCode::parse("COACH500")?,
            discount: Discount::AmountOff {
                amount: Money::parse("500.00", "USD").map_err(recur_commands::DomainError::from)?,
            },
            duration: CouponDuration::Once,
            max_redemptions: Some(1_000),
            redeem_by: None,
        })
        .await
}

async fn act(
    billing: &Billing,
    cards: &dyn CardIssuer,
    person: &mut Person,
    action: Action,
    activity: &mut Activity,
) -> Result<(), BillingError> {
    let Some(customer) = person.customer else {
        if !matches!(action, Action::Arrive) {
            return Ok(());
        }
        return arrive(billing, cards, person, activity).await;
    };
    match action {
        Action::Arrive => {}
        Action::BuyCourse => {
            activity.purchases += 1;
            person.course_invoice = Some(
                billing
                    .purchase(customer, "self_paced_course", None)
                    .await?,
            );
        }
        Action::ChangePlan { upgrade, now } => {
            let Some(sub) = person.subscription else {
                return Ok(());
            };
            let current = billing.subscription(sub).await?;
            let plan = current
                .price
                .as_ref()
                .map(|p| p.plan_id.as_str())
                .unwrap_or_default();
            let target = match (plan, upgrade) {
                ("community_access", true) | ("elite_coaching", false) => "group_coaching",
                ("group_coaching", true) => "elite_coaching",
                ("group_coaching", false) => "community_access",
                _ => return Ok(()),
            };
            activity.plan_changes += 1;
            let timing = if now { Timing::Now } else { Timing::PeriodEnd };
            billing
                .change_plan(
                    sub,
                    PlanChange {
                        plan_id: target.into(),
                        price_id: None,
                        quantity: None,
                        timing,
                    },
                )
                .await?;
            person.plan = Some(target);
        }
        Action::Cancel { now } => {
            let Some(sub) = person.subscription else {
                return Ok(());
            };
            activity.cancellations += 1;
            billing
                .cancel(sub, if now { Timing::Now } else { Timing::PeriodEnd })
                .await?;
        }
        Action::CardGoesBad { decline_code } => {
            let method = cards
                .failing_card(decline_code)
                .await
                .map_err(card_refused)?;
            billing.attach_payment_method(customer, method).await?;
        }
        Action::UpdateCard => {
            activity.card_updates += 1;
            let method = cards.card(CARD_OK).await.map_err(card_refused)?;
            billing.attach_payment_method(customer, method).await?;
        }
        Action::Pause => {
            let Some(sub) = person.subscription else {
                return Ok(());
            };
            activity.pauses += 1;
            billing.pause(sub).await?;
        }
        Action::Resume => {
            let Some(sub) = person.subscription else {
                return Ok(());
            };
            activity.pauses += 1;
            billing.resume(sub).await?;
        }
        Action::Refund { permille } => {
            let invoice = match person.course_invoice {
                Some(invoice) => Some(invoice),
                None => match person.subscription {
                    Some(sub) => billing.subscription(sub).await?.invoices.first().copied(),
                    None => None,
                },
            };
            let Some(invoice) = invoice else {
                return Ok(());
            };
            let state = billing.invoice(invoice).await?;
            let Some(paid) = state.amount_paid else {
                return Ok(());
            };
            let amount = paid
                .mul_decimal(Decimal::new(i64::from(permille), 3))
                .map_err(recur_commands::DomainError::from)?
                .round_to_minor(recur_ledger::money::RoundingRule::HalfUp);
            activity.refunds += 1;
            billing
                .refund(invoice, amount, "requested_by_customer")
                .await?;
        }
    }
    Ok(())
}

/// A card the provider would not take, as the refusal the demo counts.
fn card_refused(error: recur_commands::payment::CardError) -> BillingError {
    BillingError::Domain(recur_commands::DomainError::InvalidField {
        field: "card",
        reason: error.to_string(),
    })
}

/// First names and family names the demo's people are made of.
const FIRST_NAMES: [&str; 16] = [
    "Ada", "Bea", "Cyrus", "Dana", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun", "Kai", "Lena",
    "Milo", "Nia", "Otto", "Pia",
];
const FAMILY_NAMES: [&str; 16] = [
    "Abbott",
    "Brandt",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fontaine",
    "Garber",
    "Haddad",
    "Ishikawa",
    "Jovanovic",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Novak",
    "Okafor",
    "Petrov",
];

/// The contact details of person number `who`: unique per person (the number
/// is in the email and the phone), so a test can look for one person's data.
fn made_up_contact(who: usize) -> ContactDetails {
    let first = FIRST_NAMES[who % FIRST_NAMES.len()];
    let family = FAMILY_NAMES[(who / FIRST_NAMES.len()) % FAMILY_NAMES.len()];
    ContactDetails {
        name: format!("{first} {family}"),
        email: format!(
            "{}.{}.{who}@example.com",
            first.to_lowercase(),
            family.to_lowercase()
        ),
        phone: Some(format!("+1 555 {:07}", who)),
    }
}

async fn arrive(
    billing: &Billing,
    cards: &dyn CardIssuer,
    person: &mut Person,
    activity: &mut Activity,
) -> Result<(), BillingError> {
    let tax_location = match person.tax {
        Some((country, region)) => Some(TaxLocation::parse(country, region, None)?),
        None => None,
    };
    let segment = if person.plan == Some("elite_coaching") {
        Segment::HighValue
    } else {
        Segment::Standard
    };
    let customer = billing
        .create_customer(NewCustomer {
            segment,
            tax_location,
            contact: Some(person.contact.clone()),
        })
        .await?;
    activity.customers += 1;
    person.customer = Some(customer);
    if let Some(number) = person.card {
        // A card declined on attach (by the issuer, or by the gateway when Recur
        // attaches it, as Stripe does): the customer tries another card.
        let attached = match cards.card(number).await {
            Ok(method) => match billing.attach_payment_method(customer, method).await {
                Ok(()) => true,
                Err(BillingError::Domain(DomainError::CardDeclined { .. })) => false,
                Err(error) => return Err(error),
            },
            Err(_) => false,
        };
        if !attached {
            activity.cards_refused += 1;
            let method = cards.card(CARD_OK).await.map_err(card_refused)?;
            billing.attach_payment_method(customer, method).await?;
        }
    }
    if let Some(plan) = person.plan {
        let new = NewSubscription {
            customer_id: customer,
            plan_id: plan.into(),
            price_id: None,
            quantity: 1,
            trial: if person.trial {
                Trial::PlanDefault
            } else {
                Trial::Skip
            },
            coupon: person.coupon.map(CouponCode::parse).transpose()?,
        };
        person.subscription = Some(billing.subscribe(new).await?);
        activity.subscriptions += 1;
    }
    let _ = person.buys_course;
    Ok(())
}

/// Customers by id, for tests that look inside.
pub fn customers(script: &Script) -> HashMap<usize, CustomerId> {
    script
        .people
        .iter()
        .enumerate()
        .filter_map(|(i, p)| p.customer.map(|c| (i, c)))
        .collect()
}

/// Every subscription the script started.
pub fn subscriptions(script: &Script) -> Vec<SubscriptionId> {
    script
        .people
        .iter()
        .filter_map(|p| p.subscription)
        .collect()
}
