//! The API's resource representations (what clients send and get), kept apart
//! from the domain's types so the wire format changes only on purpose.

use recur_commands::coupon::{Coupon, CouponDuration, Discount};
use recur_commands::customer::{ContactDetails, Customer, ErasureReason, PaymentMethod, Segment};
use recur_commands::invoice::{ChargeOutcome, Invoice, InvoiceStatus, Line, LineKind, Totals};
use recur_commands::subscription::{Subscription, Timing};
use recur_commands::tax::TaxLocation;
use recur_commands::{DomainError, catalog};
use recur_ledger::Money;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::ToSchema;
use uuid::Uuid;

use super::problem::ApiError;

/// RFC 3339 text of an instant.
pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// Parses RFC 3339 text.
///
/// # Errors
/// 422 `invalid_field`.
pub fn parse_time(field: &'static str, text: &str) -> Result<OffsetDateTime, ApiError> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        DomainError::InvalidField {
            field,
            reason: "an RFC 3339 timestamp such as 2026-01-31T00:00:00Z".into(),
        }
        .into()
    })
}

/// An amount of money: a decimal string and an ISO 4217 code.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MoneyDto {
    /// Decimal amount as a string, e.g. "97.00".
    pub amount: String,
    /// ISO 4217 code, e.g. "USD".
    pub currency: String,
}

impl From<Money> for MoneyDto {
    fn from(money: Money) -> Self {
        Self {
            amount: money.amount().to_string(),
            currency: money.currency().code().to_owned(),
        }
    }
}

impl MoneyDto {
    /// The amount as [`Money`].
    ///
    /// # Errors
    /// 422 `invalid_amount` or `unknown_currency`.
    pub fn to_money(&self) -> Result<Money, ApiError> {
        Money::parse(&self.amount, &self.currency).map_err(|e| DomainError::from(e).into())
    }
}

/// Dunning segment.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SegmentDto {
    /// Everyone else.
    Standard,
    /// Worth a personal call.
    HighValue,
    /// In or just out of a trial.
    Trial,
}

impl From<SegmentDto> for Segment {
    fn from(value: SegmentDto) -> Self {
        match value {
            SegmentDto::Standard => Segment::Standard,
            SegmentDto::HighValue => Segment::HighValue,
            SegmentDto::Trial => Segment::Trial,
        }
    }
}

impl From<Segment> for SegmentDto {
    fn from(value: Segment) -> Self {
        match value {
            Segment::Standard => SegmentDto::Standard,
            Segment::HighValue => SegmentDto::HighValue,
            Segment::Trial => SegmentDto::Trial,
        }
    }
}

/// Where a customer is taxed.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TaxLocationDto {
    /// ISO 3166-1 alpha-2.
    pub country: String,
    /// Region code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Postal code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postal_code: Option<String>,
}

impl TaxLocationDto {
    /// The checked location.
    ///
    /// # Errors
    /// 422 `invalid_field`.
    pub fn to_domain(&self) -> Result<TaxLocation, ApiError> {
        Ok(TaxLocation::parse(
            &self.country,
            self.region.as_deref(),
            self.postal_code.as_deref(),
        )?)
    }
}

/// Contact details (personal data: shown to admin and support keys only).
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ContactDto {
    /// Full name.
    pub name: String,
    /// Email.
    pub email: String,
    /// Phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
}

impl From<ContactDetails> for ContactDto {
    fn from(value: ContactDetails) -> Self {
        Self {
            name: value.name,
            email: value.email,
            phone: value.phone,
        }
    }
}

impl From<ContactDto> for ContactDetails {
    fn from(value: ContactDto) -> Self {
        Self {
            name: value.name,
            email: value.email,
            phone: value.phone,
        }
    }
}

/// A card as the payment provider describes it.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodDto {
    /// The provider's token, e.g. `pm_card_visa`; never a card number.
    pub token: String,
    /// Brand, e.g. `visa`.
    pub brand: String,
    /// Last four digits.
    pub last4: String,
    /// Expiry month.
    pub exp_month: u8,
    /// Expiry year.
    pub exp_year: u16,
}

impl From<PaymentMethodDto> for PaymentMethod {
    fn from(v: PaymentMethodDto) -> Self {
        Self {
            token: v.token,
            brand: v.brand,
            last4: v.last4,
            exp_month: v.exp_month,
            exp_year: v.exp_year,
            // Set by the gateway when it attaches the card, never by a client.
            provider_customer: None,
        }
    }
}

/// `POST /v1/customers`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerCreate {
    /// Dunning segment (default standard).
    #[serde(default)]
    pub segment: Option<SegmentDto>,
    /// Tax location.
    #[serde(default)]
    pub tax_location: Option<TaxLocationDto>,
    /// Contact details.
    #[serde(default)]
    pub contact: Option<ContactDto>,
}

/// `POST /v1/customers/{id}`: the fields to change.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CustomerUpdate {
    /// New segment.
    #[serde(default)]
    pub segment: Option<SegmentDto>,
    /// New tax location.
    #[serde(default)]
    pub tax_location: Option<TaxLocationDto>,
    /// New contact details.
    #[serde(default)]
    pub contact: Option<ContactDto>,
}

/// A customer.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomerDto {
    /// Always "customer".
    pub object: &'static str,
    /// Id.
    pub id: Uuid,
    /// Stream version, for `If-Match`.
    pub version: u64,
    /// Segment.
    pub segment: SegmentDto,
    /// Tax location.
    pub tax_location: Option<TaxLocationDto>,
    /// Card on file.
    pub payment_method: Option<PaymentMethodDto>,
    /// Credit owed to the customer.
    pub credit_balance: Option<MoneyDto>,
    /// Contact details (admin and support keys only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub contact: Option<ContactDto>,
    /// When its personal data was erased (RFC 3339); null while it is kept.
    pub erased_at: Option<String>,
    /// Ledger position of the write that answered with this (writes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

impl CustomerDto {
    /// From the domain state.
    pub fn new(
        state: &Customer,
        version: u64,
        contact: Option<ContactDetails>,
        position: Option<u64>,
    ) -> Self {
        Self {
            object: "customer",
            id: state.id.map(|id| id.0).unwrap_or_default(),
            version,
            segment: state.segment.into(),
            tax_location: state.tax_location.as_ref().map(|t| TaxLocationDto {
                country: t.country.clone(),
                region: t.region.clone(),
                postal_code: t.postal_code.clone(),
            }),
            payment_method: state.payment_method.as_ref().map(|m| PaymentMethodDto {
                token: m.token.clone(),
                brand: m.brand.clone(),
                last4: m.last4.clone(),
                exp_month: m.exp_month,
                exp_year: m.exp_year,
            }),
            credit_balance: state.credit_balance.map(MoneyDto::from),
            contact: contact.map(ContactDto::from),
            erased_at: state.erased_at.map(rfc3339),
            position,
        }
    }
}

/// Why personal data is erased.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErasureReasonDto {
    /// The person asked (GDPR article 17).
    #[default]
    RequestedByCustomer,
    /// The retention period ended.
    RetentionExpired,
    /// Another lawful ground, recorded outside Recur.
    Other,
}

impl From<ErasureReasonDto> for ErasureReason {
    fn from(value: ErasureReasonDto) -> Self {
        match value {
            ErasureReasonDto::RequestedByCustomer => Self::RequestedByCustomer,
            ErasureReasonDto::RetentionExpired => Self::RetentionExpired,
            ErasureReasonDto::Other => Self::Other,
        }
    }
}

/// What `DELETE /v1/customers/{id}/personal_data` did.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ErasureDto {
    /// Always "personal_data_erasure".
    pub object: &'static str,
    /// The customer.
    pub customer: Uuid,
    /// When its personal data was erased (the first erasure's time on a repeat).
    pub erased_at: String,
    /// True when the data key was destroyed by this request (false on a repeat).
    pub key_destroyed: bool,
}

/// `GET /v1/customers/{id}/export`: every fact about a customer, decrypted.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CustomerExport {
    /// Always "customer_export".
    pub object: &'static str,
    /// When it was made (RFC 3339, the ledger's clock).
    pub exported_at: String,
    /// The customer as it is now, contact details included (null once erased).
    pub customer: CustomerDto,
    /// Every event of the customer's streams in ledger order, as its history
    /// reads (summary, state after); contact details decrypted into
    /// `event.data.details` (null once erased).
    pub events: Vec<crate::history::HistoryEntry>,
}

/// When a change takes effect.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimingDto {
    /// Now.
    #[default]
    Now,
    /// At the end of the current period.
    PeriodEnd,
}

impl From<TimingDto> for Timing {
    fn from(value: TimingDto) -> Self {
        match value {
            TimingDto::Now => Timing::Now,
            TimingDto::PeriodEnd => Timing::PeriodEnd,
        }
    }
}

/// `POST /v1/subscriptions`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionCreate {
    /// The customer's id.
    pub customer: Uuid,
    /// The plan.
    pub plan: String,
    /// A specific price of the plan (default: its current price).
    #[serde(default)]
    pub price: Option<String>,
    /// Units (default 1).
    #[serde(default)]
    pub quantity: Option<u32>,
    /// Trial days; absent: the plan's trial; 0: none.
    #[serde(default)]
    pub trial_days: Option<u32>,
    /// A coupon code.
    #[serde(default)]
    pub coupon: Option<String>,
}

/// `POST /v1/subscriptions/{id}/change` and `/preview_change`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanChangeBody {
    /// The new plan.
    pub plan: String,
    /// A specific price of it (a migration).
    #[serde(default)]
    pub price: Option<String>,
    /// A new quantity.
    #[serde(default)]
    pub quantity: Option<u32>,
    /// Now (prorated) or at period end; default now.
    #[serde(default)]
    pub timing: TimingDto,
}

/// `POST /v1/subscriptions/{id}/cancel`.
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CancelBody {
    /// Now or at period end; default now.
    #[serde(default)]
    pub timing: TimingDto,
}

/// `POST /v1/subscriptions/{id}/discount`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DiscountBody {
    /// The coupon's code.
    pub coupon: String,
    /// Now (in force for every invoice from now on) or at period end (from the
    /// next period); default now.
    #[serde(default)]
    pub timing: TimingDto,
}

/// `DELETE /v1/subscriptions/{id}/discount` (an empty body means now).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveDiscountBody {
    /// Now or at period end; default now.
    #[serde(default)]
    pub timing: TimingDto,
}

/// A service period.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PeriodDto {
    /// Start (RFC 3339).
    pub start: String,
    /// End, exclusive (RFC 3339).
    pub end: String,
}

/// A subscription.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SubscriptionDto {
    /// Always "subscription".
    pub object: &'static str,
    /// Id.
    pub id: Uuid,
    /// Stream version, for `If-Match`.
    pub version: u64,
    /// Customer id.
    pub customer: Option<Uuid>,
    /// trialing, incomplete, active, past_due, paused, canceled.
    pub status: String,
    /// Plan.
    pub plan: Option<String>,
    /// Price.
    pub price: Option<String>,
    /// Price per unit per period.
    pub unit_amount: Option<MoneyDto>,
    /// Units.
    pub quantity: u32,
    /// Current period.
    pub current_period: Option<PeriodDto>,
    /// Trial end.
    pub trial_end: Option<String>,
    /// Ends at period end.
    pub cancel_at_period_end: bool,
    /// A change waiting for period end: price id.
    pub scheduled_price: Option<String>,
    /// Coupon in force.
    pub coupon: Option<String>,
    /// A discount change waiting for the next period: the coupon then, or
    /// null when the discount comes off (see `discount_change_scheduled`).
    pub scheduled_coupon: Option<String>,
    /// Whether a discount change waits for the next period.
    pub discount_change_scheduled: bool,
    /// When it ended.
    pub canceled_at: Option<String>,
    /// Its invoices, oldest first.
    pub invoices: Vec<Uuid>,
    /// Ledger position of the write (writes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

impl SubscriptionDto {
    /// From the domain state.
    pub fn new(state: &Subscription, version: u64, position: Option<u64>) -> Self {
        Self {
            object: "subscription",
            id: state.id.map(|id| id.0).unwrap_or_default(),
            version,
            customer: state.customer_id.map(|c| c.0),
            status: state.status.name().to_owned(),
            plan: state.price.as_ref().map(|p| p.plan_id.clone()),
            price: state.price.as_ref().map(|p| p.id.clone()),
            unit_amount: state.price.as_ref().map(|p| p.unit_amount.into()),
            quantity: state.quantity,
            current_period: state.current_period.map(|p| PeriodDto {
                start: rfc3339(p.start),
                end: rfc3339(p.end),
            }),
            trial_end: state.trial_end.map(rfc3339),
            cancel_at_period_end: state.cancel_at_period_end,
            scheduled_price: state.scheduled_change.as_ref().map(|(p, _)| p.id.clone()),
            coupon: state.discount.as_ref().map(|d| d.coupon.to_string()),
            scheduled_coupon: state
                .scheduled_discount
                .as_ref()
                .and_then(|next| next.as_ref().map(|d| d.coupon.to_string())),
            discount_change_scheduled: state.scheduled_discount.is_some(),
            canceled_at: state.canceled_at.map(rfc3339),
            invoices: state.invoices.iter().map(|i| i.0).collect(),
            position,
        }
    }
}

/// An invoice line.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct LineDto {
    /// period, proration or one_time.
    pub kind: String,
    /// Description.
    pub description: String,
    /// Plan.
    pub plan: String,
    /// Price.
    pub price: String,
    /// Units.
    pub quantity: u32,
    /// Per unit.
    pub unit_amount: MoneyDto,
    /// Amount (negative for a credit).
    pub amount: MoneyDto,
    /// Service period.
    pub period: Option<PeriodDto>,
}

impl From<&Line> for LineDto {
    fn from(line: &Line) -> Self {
        Self {
            kind: match line.kind {
                LineKind::Period => "period",
                LineKind::Proration => "proration",
                LineKind::OneTime => "one_time",
            }
            .to_owned(),
            description: line.description.clone(),
            plan: line.plan_id.clone(),
            price: line.price_id.clone(),
            quantity: line.quantity,
            unit_amount: line.unit_amount.into(),
            amount: line.amount.into(),
            period: line.period.map(|p| PeriodDto {
                start: rfc3339(p.start),
                end: rfc3339(p.end),
            }),
        }
    }
}

/// An invoice's amounts.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TotalsDto {
    /// Sum of lines.
    pub subtotal: MoneyDto,
    /// Discounts.
    pub discount: MoneyDto,
    /// Tax.
    pub tax: MoneyDto,
    /// Total.
    pub total: MoneyDto,
    /// Customer credit used.
    pub credit_applied: MoneyDto,
    /// Left to collect at finalization.
    pub amount_due: MoneyDto,
}

impl From<&Totals> for TotalsDto {
    fn from(t: &Totals) -> Self {
        Self {
            subtotal: t.subtotal.into(),
            discount: t.discount.into(),
            tax: t.tax.into(),
            total: t.total.into(),
            credit_applied: t.credit_applied.into(),
            amount_due: t.amount_due.into(),
        }
    }
}

/// A payment attempt.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct AttemptDto {
    /// 1-based.
    pub attempt_no: u32,
    /// The gateway asked.
    pub gateway: String,
    /// pending, succeeded or declined.
    pub outcome: String,
    /// Decline code.
    pub decline_code: Option<String>,
    /// Next retry.
    pub next_retry_at: Option<String>,
}

/// A refund of an invoice.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct RefundDto {
    /// 1, 2, … on this invoice.
    pub refund_no: u32,
    /// Amount, tax included.
    pub amount: MoneyDto,
    /// pending (asked of the gateway, no answer recorded yet) or succeeded.
    pub status: String,
    /// The gateway's refund id, once recorded.
    pub refund_id: Option<String>,
    /// Why.
    pub reason: String,
    /// When it was asked for.
    pub requested_at: String,
}

/// An invoice status as the API names it.
pub fn invoice_status_name(status: InvoiceStatus) -> &'static str {
    match status {
        InvoiceStatus::Draft => "draft",
        InvoiceStatus::Open => "open",
        InvoiceStatus::Paid => "paid",
        InvoiceStatus::Void => "void",
        InvoiceStatus::Uncollectible => "uncollectible",
    }
}

/// An invoice.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InvoiceDto {
    /// Always "invoice".
    pub object: &'static str,
    /// Id.
    pub id: Uuid,
    /// Stream version, for `If-Match`.
    pub version: u64,
    /// Customer.
    pub customer: Option<Uuid>,
    /// Subscription.
    pub subscription: Option<Uuid>,
    /// draft, open, paid, void, uncollectible.
    pub status: String,
    /// Lines.
    pub lines: Vec<LineDto>,
    /// Amounts, once finalized.
    pub totals: Option<TotalsDto>,
    /// Still owed.
    pub amount_remaining: MoneyDto,
    /// Collected.
    pub amount_paid: Option<MoneyDto>,
    /// Given back.
    pub amount_refunded: Option<MoneyDto>,
    /// Payment attempts.
    pub attempts: Vec<AttemptDto>,
    /// Refunds, oldest first.
    pub refunds: Vec<RefundDto>,
    /// Created.
    pub created_at: Option<String>,
    /// Ledger position of the write (writes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

impl InvoiceDto {
    /// From the domain state.
    pub fn new(state: &Invoice, version: u64, position: Option<u64>) -> Self {
        Self {
            object: "invoice",
            id: state.id.map(|id| id.0).unwrap_or_default(),
            version,
            customer: state.customer_id.map(|c| c.0),
            subscription: state.subscription_id.map(|s| s.0),
            status: invoice_status_name(state.status).to_owned(),
            lines: state.lines.iter().map(LineDto::from).collect(),
            totals: state.totals.as_ref().map(TotalsDto::from),
            amount_remaining: state.amount_remaining().into(),
            amount_paid: state.amount_paid.map(MoneyDto::from),
            amount_refunded: state.amount_refunded.map(MoneyDto::from),
            attempts: state
                .attempts
                .iter()
                .map(|a| AttemptDto {
                    attempt_no: a.attempt_no,
                    gateway: a.gateway.clone(),
                    outcome: match &a.outcome {
                        None => "pending".into(),
                        Some(ChargeOutcome::Succeeded { .. }) => "succeeded".into(),
                        Some(ChargeOutcome::Declined { .. }) => "declined".into(),
                    },
                    decline_code: match &a.outcome {
                        Some(ChargeOutcome::Declined { decline_code, .. }) => {
                            Some(decline_code.clone())
                        }
                        _ => None,
                    },
                    next_retry_at: a.next_retry_at.map(rfc3339),
                })
                .collect(),
            refunds: state
                .refunds
                .iter()
                .map(|r| RefundDto {
                    refund_no: r.refund_no,
                    amount: r.amount.into(),
                    status: if r.refund_id.is_some() {
                        "succeeded"
                    } else {
                        "pending"
                    }
                    .to_owned(),
                    refund_id: r.refund_id.clone(),
                    reason: r.reason.clone(),
                    requested_at: rfc3339(r.requested_at),
                })
                .collect(),
            created_at: state.created_at.map(rfc3339),
            position,
        }
    }
}

/// What a plan change would invoice now.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PreviewDto {
    /// Always "invoice_preview".
    pub object: &'static str,
    /// The proration lines.
    pub lines: Vec<LineDto>,
    /// Their amounts, with discount and tax.
    pub totals: Option<TotalsDto>,
}

/// `POST /v1/invoices/{id}/refund`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefundBody {
    /// How much, tax included.
    pub amount: MoneyDto,
    /// Why: duplicate, fraudulent or requested_by_customer (the default), as
    /// Stripe's refunds; a code, never free text.
    #[serde(default)]
    #[schema(value_type = Option<RefundReasonDto>)]
    pub reason: Option<String>,
}

/// Why a refund is given ([`recur_commands::invoice::REFUND_REASONS`]: the
/// domain checks the text; this names the codes in the OpenAPI document).
#[derive(Clone, Copy, Debug, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RefundReasonDto {
    /// Charged twice.
    Duplicate,
    /// Not the card holder.
    Fraudulent,
    /// The customer asked.
    RequestedByCustomer,
}

/// How long a coupon applies.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CouponDurationDto {
    /// First invoice.
    Once,
    /// `duration_in_months` months.
    Repeating,
    /// Always.
    Forever,
}

/// `POST /v1/coupons`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CouponCreate {
    /// Code: 1–40 of A-Z, 0-9, '_' and '-'.
    pub code: String,
    /// Percent off, e.g. "20" (one of this and amount_off).
    #[serde(default)]
    pub percent_off: Option<String>,
    /// Amount off.
    #[serde(default)]
    pub amount_off: Option<MoneyDto>,
    /// Duration.
    pub duration: CouponDurationDto,
    /// Months, for repeating.
    #[serde(default)]
    pub duration_in_months: Option<u32>,
    /// Redemption limit.
    #[serde(default)]
    pub max_redemptions: Option<u32>,
    /// Redemption deadline (RFC 3339).
    #[serde(default)]
    pub redeem_by: Option<String>,
}

/// A coupon.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct CouponDto {
    /// Always "coupon".
    pub object: &'static str,
    /// Code.
    pub code: String,
    /// Percent off.
    pub percent_off: Option<String>,
    /// Amount off.
    pub amount_off: Option<MoneyDto>,
    /// once, repeating, forever.
    pub duration: Option<CouponDurationDto>,
    /// Months, for repeating.
    pub duration_in_months: Option<u32>,
    /// Limit.
    pub max_redemptions: Option<u32>,
    /// Redemptions so far.
    pub times_redeemed: u64,
    /// Deadline.
    pub redeem_by: Option<String>,
    /// Ledger position of the write (writes only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

impl CouponDto {
    /// From the domain state.
    pub fn new(state: &Coupon, position: Option<u64>) -> Self {
        let (percent_off, amount_off) = match state.discount {
            Some(Discount::PercentOff { percent }) => (Some(percent.to_string()), None),
            Some(Discount::AmountOff { amount }) => (None, Some(amount.into())),
            None => (None, None),
        };
        let (duration, months) = match state.duration {
            Some(CouponDuration::Once) => (Some(CouponDurationDto::Once), None),
            Some(CouponDuration::Repeating { months }) => {
                (Some(CouponDurationDto::Repeating), Some(months))
            }
            Some(CouponDuration::Forever) => (Some(CouponDurationDto::Forever), None),
            None => (None, None),
        };
        Self {
            object: "coupon",
            code: state
                .code
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            percent_off,
            amount_off,
            duration,
            duration_in_months: months,
            max_redemptions: state.max_redemptions,
            times_redeemed: state.redeemers.len() as u64,
            redeem_by: state.redeem_by.map(rfc3339),
            position,
        }
    }
}

/// `POST /v1/purchases`: buy a one-time price.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PurchaseCreate {
    /// The customer.
    pub customer: Uuid,
    /// A plan with a one-time price (the course).
    pub plan: String,
    /// A coupon code.
    #[serde(default)]
    pub coupon: Option<String>,
}

/// A plan.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PlanDto {
    /// Always "plan".
    pub object: &'static str,
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// Trial days.
    pub trial_days: u32,
    /// The price new subscriptions get.
    pub current_price: String,
    /// Features.
    pub features: serde_json::Value,
    /// Limits.
    pub limits: serde_json::Value,
}

impl From<&catalog::Plan> for PlanDto {
    fn from(p: &catalog::Plan) -> Self {
        Self {
            object: "plan",
            id: p.id.clone(),
            name: p.name.clone(),
            trial_days: p.trial_days,
            current_price: p.current_price.clone(),
            features: p.features.clone(),
            limits: p.limits.clone(),
        }
    }
}

/// A price.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PriceDto {
    /// Always "price".
    pub object: &'static str,
    /// Id.
    pub id: String,
    /// Plan.
    pub plan: String,
    /// Per unit and period.
    pub unit_amount: MoneyDto,
    /// day, week, month, year, or one_time.
    pub interval: String,
    /// Units of interval per period (recurring only).
    pub interval_count: Option<u32>,
}

impl From<&catalog::Price> for PriceDto {
    fn from(p: &catalog::Price) -> Self {
        let (interval, count) = match p.billing {
            catalog::Billing::OneTime => ("one_time".to_owned(), None),
            catalog::Billing::Recurring { interval } => {
                let unit = serde_json::to_value(interval.unit)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                (unit, Some(interval.count))
            }
        };
        Self {
            object: "price",
            id: p.id.clone(),
            plan: p.plan_id.clone(),
            unit_amount: p.unit_amount.into(),
            interval,
            interval_count: count,
        }
    }
}

/// `POST /v1/prices` (admin): a new immutable price.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceCreate {
    /// A new, never used id.
    pub id: String,
    /// Its plan.
    pub plan: String,
    /// Per unit and period.
    pub unit_amount: MoneyDto,
    /// day, week, month, year, or one_time.
    pub interval: String,
    /// Units of interval per period (default 1).
    #[serde(default)]
    pub interval_count: Option<u32>,
}

/// The first price of a new plan (`POST /v1/plans`).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanPriceCreate {
    /// A new, never used id.
    pub id: String,
    /// Per unit and period.
    pub unit_amount: MoneyDto,
    /// day, week, month, year, or one_time.
    pub interval: String,
    /// Units of interval per period (default 1).
    #[serde(default)]
    pub interval_count: Option<u32>,
}

/// `POST /v1/plans` (admin): a new plan with its first price.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanCreate {
    /// A new id: 1 to 100 letters, digits, `_` or `-`.
    pub id: String,
    /// Display name, 1 to 200 characters.
    pub name: String,
    /// Trial days for new subscriptions (default 0).
    #[serde(default)]
    pub trial_days: u32,
    /// Features (free-form metadata object).
    #[serde(default)]
    pub features: Option<serde_json::Map<String, serde_json::Value>>,
    /// Limits (free-form metadata object).
    #[serde(default)]
    pub limits: Option<serde_json::Map<String, serde_json::Value>>,
    /// Its first price, which becomes its current price.
    pub price: PlanPriceCreate,
}

/// `POST /v1/plans/{id}` (admin): change what new subscriptions get.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanUpdate {
    /// A new display name.
    #[serde(default)]
    pub name: Option<String>,
    /// A new trial length.
    #[serde(default)]
    pub trial_days: Option<u32>,
    /// The price new subscriptions get (one of the plan's own).
    #[serde(default)]
    pub current_price: Option<String>,
}

/// A tax rate.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaxRateDto {
    /// Always "tax_rate".
    pub object: &'static str,
    /// Id.
    pub id: String,
    /// `US-TX`, `DE`.
    pub jurisdiction: String,
    /// ISO country.
    pub country: String,
    /// Region, if any.
    pub region: Option<String>,
    /// Name on invoices.
    pub name: String,
    /// Percent, e.g. "6.25".
    pub percent: String,
    /// inclusive or exclusive.
    pub mode: String,
    /// In force from.
    pub valid_from: Option<String>,
    /// Retired from (no longer in force).
    pub retired_at: Option<String>,
    /// active (in force now), scheduled (from a future instant), or retired.
    pub status: String,
}

impl TaxRateDto {
    /// From the domain rate, its status as of `now`.
    pub fn new(rate: &recur_commands::tax::TaxRate, now: OffsetDateTime) -> Self {
        let status = if rate.retired_at.is_some_and(|at| at <= now) {
            "retired"
        } else if rate.valid_from.is_some_and(|from| from > now) {
            "scheduled"
        } else {
            "active"
        };
        let mut percent = rate.rate * rust_decimal::Decimal::ONE_HUNDRED;
        percent = percent.normalize();
        Self {
            object: "tax_rate",
            id: rate.id.clone(),
            jurisdiction: rate.jurisdiction(),
            country: rate.country.clone(),
            region: rate.region.clone(),
            name: rate.name.clone(),
            percent: percent.to_string(),
            mode: match rate.mode {
                recur_commands::tax::TaxMode::Inclusive => "inclusive",
                recur_commands::tax::TaxMode::Exclusive => "exclusive",
            }
            .to_owned(),
            valid_from: rate.valid_from.map(rfc3339),
            retired_at: rate.retired_at.map(rfc3339),
            status: status.to_owned(),
        }
    }
}

/// `POST /v1/tax_rates` (admin).
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxRateCreate {
    /// ISO 3166-1 alpha-2 country, uppercase.
    pub country: String,
    /// Region (state, province), uppercase; none for the whole country.
    #[serde(default)]
    pub region: Option<String>,
    /// Name on invoices ("VAT"), 1 to 100 characters.
    pub name: String,
    /// Percent as a decimal string, 0 ≤ percent < 100 ("19", "6.25").
    pub percent: String,
    /// inclusive or exclusive.
    pub mode: String,
    /// In force from (RFC 3339; default now).
    #[serde(default)]
    pub valid_from: Option<String>,
}

/// `POST /v1/tax_rates/{id}/retire` (admin).
#[derive(Clone, Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TaxRateRetire {
    /// No longer in force from (RFC 3339; default now).
    #[serde(default)]
    pub at: Option<String>,
}

/// The tax rates.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TaxRateList {
    /// Always "list".
    pub object: &'static str,
    /// Every rate, retired ones included, in the order they were made.
    pub data: Vec<TaxRateDto>,
}

/// A page of a list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct SubscriptionList {
    /// Always "list".
    pub object: &'static str,
    /// The items.
    pub data: Vec<SubscriptionDto>,
    /// More after the last.
    pub has_more: bool,
    /// Pass as `starting_after` for the next page.
    pub next_cursor: Option<Uuid>,
}

/// A page of a list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct InvoiceList {
    /// Always "list".
    pub object: &'static str,
    /// The items.
    pub data: Vec<InvoiceDto>,
    /// More after the last.
    pub has_more: bool,
    /// Pass as `starting_after` for the next page.
    pub next_cursor: Option<Uuid>,
}

/// Plans.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PlanList {
    /// Always "list".
    pub object: &'static str,
    /// All plans.
    pub data: Vec<PlanDto>,
}

/// Prices.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct PriceList {
    /// Always "list".
    pub object: &'static str,
    /// All prices.
    pub data: Vec<PriceDto>,
}

/// `POST /v1/test_clock/advance`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdvanceBody {
    /// Move to this instant (RFC 3339), or
    #[serde(default)]
    pub to: Option<String>,
    /// move by this many seconds.
    #[serde(default)]
    pub seconds: Option<u32>,
}

/// The test clock after advancing, and what the scheduler did.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct TestClockDto {
    /// Always "test_clock".
    pub object: &'static str,
    /// Now.
    pub now: String,
    /// Periods started by the scheduler.
    pub periods_started: u32,
    /// Invoice steps run.
    pub invoice_steps: u32,
    /// Work that failed and is retried next tick.
    pub failures: u32,
}

/// `POST /v1/api_keys`.
#[derive(Clone, Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyCreate {
    /// The role.
    pub role: super::auth::Role,
}

/// A new key, shown once.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct KeyCreated {
    /// Always "api_key".
    pub object: &'static str,
    /// Its id (recorded as the actor of what it writes).
    pub id: String,
    /// Role.
    pub role: super::auth::Role,
    /// The key: keep it secret; it is shown once (null when the answer is
    /// replayed for an `Idempotency-Key`: the secret is never stored).
    pub key: Option<String>,
}

/// An API key as listed (never its secret).
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct KeyDto {
    /// Always "api_key".
    pub object: &'static str,
    /// Its id.
    pub id: String,
    /// Role.
    pub role: super::auth::Role,
    /// active or revoked.
    pub status: String,
    /// Who made it: a key id, or `cli`.
    pub created_by: Option<String>,
    /// When.
    pub created_at: Option<String>,
    /// When its secret was last rotated.
    pub rotated_at: Option<String>,
    /// When it was revoked.
    pub revoked_at: Option<String>,
    /// When it was last used, to the hour.
    pub last_used_at: Option<String>,
}

impl From<&super::auth::KeyEntry> for KeyDto {
    fn from(entry: &super::auth::KeyEntry) -> Self {
        Self {
            object: "api_key",
            id: entry.id.clone(),
            role: entry.role,
            status: if entry.revoked_at.is_some() {
                "revoked"
            } else {
                "active"
            }
            .to_owned(),
            created_by: entry.created_by.clone(),
            created_at: entry.created_at.map(rfc3339),
            rotated_at: entry.rotated_at.map(rfc3339),
            revoked_at: entry.revoked_at.map(rfc3339),
            last_used_at: entry.last_used_at.map(rfc3339),
        }
    }
}

/// The API keys.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct KeyList {
    /// Always "list".
    pub object: &'static str,
    /// Every key, revoked ones included, oldest first.
    pub data: Vec<KeyDto>,
}

/// Health.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct HealthDto {
    /// "ok" or "unavailable".
    pub status: &'static str,
    /// Last released ledger position (readyz only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ledger_position: Option<u64>,
}

/// One fact of the ledger, as `GET /v1/events` lists it.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventDto {
    /// Always "event".
    pub object: &'static str,
    /// The event's id (UUIDv7).
    pub id: Uuid,
    /// The event type (`CustomerCreated`, `InvoicePaid`, …).
    #[serde(rename = "type")]
    pub event_type: String,
    /// When it was recorded (RFC 3339).
    pub created: String,
    /// Its ledger position: the order of the trail, and the cursor.
    pub position: u64,
    /// The stream it belongs to (`customer-<id>`, `invoice-<id>`, …).
    pub resource: String,
    /// Who wrote it: an API key id, `scheduler`, an operator.
    pub actor: Option<String>,
    /// The request that wrote it (its `x-request-id`), if a request did.
    pub request_id: Option<Uuid>,
    /// Where the command came from: api, webhook, scheduler, cli, import.
    pub source: String,
    /// The event's payload as recorded.
    pub data: serde_json::Value,
}

impl EventDto {
    /// A recorded event as the trail shows it: the payload as recorded, but
    /// for contact details a ledger from before encryption holds in clear
    /// (`ContactDetailsUpdated`): those are withheld (`details` null) — the
    /// export shows them, unless erased, and records that it did.
    ///
    /// # Errors
    /// The payload is not JSON (a damaged ledger).
    pub fn of(event: recur_ledger::RecordedEvent) -> Result<Self, serde_json::Error> {
        let mut data: serde_json::Value = serde_json::from_str(&event.payload)?;
        if event.event_type == CLEAR_CONTACT_EVENT
            && let Some(details) = data.get_mut("details")
        {
            *details = serde_json::Value::Null;
        }
        let source = serde_json::to_value(event.metadata.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        Ok(Self {
            object: "event",
            id: event.id.0,
            event_type: event.event_type,
            created: rfc3339(event.recorded_at),
            position: event.position.0,
            resource: event.stream_id.as_str().to_owned(),
            actor: event.metadata.actor,
            request_id: event.metadata.correlation_id,
            source,
            data,
        })
    }
}

/// The contact event of ledgers written before encryption: details in clear.
pub const CLEAR_CONTACT_EVENT: &str = "ContactDetailsUpdated";

/// A page of events, in ledger order.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct EventList {
    /// Always "list".
    pub object: &'static str,
    /// The events.
    pub data: Vec<EventDto>,
    /// There may be more: ask again with `starting_after` = `next_cursor`.
    pub has_more: bool,
    /// A ledger position to pass as `starting_after` for the next page.
    pub next_cursor: Option<u64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Details a ledger from before encryption holds in clear never reach the
    /// trail (the export shows them, recorded, unless erased).
    #[test]
    fn the_trail_withholds_contact_details_stored_in_clear() {
        let payload = r#"{"type":"ContactDetailsUpdated","details":{"name":"Ada Lovelace","email":"ada@example.com"}}"#;
        let event = recur_ledger::RecordedEvent {
            id: recur_ledger::EventId(uuid::Uuid::now_v7()),
            stream_id: recur_ledger::StreamId::parse(format!("contact-{}", uuid::Uuid::now_v7()))
                .unwrap(),
            stream_version: 1,
            position: recur_ledger::Position(7),
            event_type: CLEAR_CONTACT_EVENT.to_owned(),
            schema_version: 1,
            payload: payload.to_owned(),
            metadata: recur_ledger::Metadata::default(),
            recorded_at: OffsetDateTime::UNIX_EPOCH,
        };
        let shown = serde_json::to_string(&EventDto::of(event).unwrap()).unwrap();
        assert!(shown.contains(r#""details":null"#), "{shown}");
        assert!(
            !shown.contains("Ada") && !shown.contains("example.com"),
            "{shown}"
        );
    }

    /// The codes the OpenAPI document names are the ones the domain accepts.
    #[test]
    fn the_documented_refund_reasons_are_the_domains() {
        let documented: Vec<String> = [
            RefundReasonDto::Duplicate,
            RefundReasonDto::Fraudulent,
            RefundReasonDto::RequestedByCustomer,
        ]
        .iter()
        .map(|r| {
            serde_json::to_value(r)
                .unwrap()
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        assert_eq!(documented, recur_commands::invoice::REFUND_REASONS);
    }
}

/// One side's record of a movement, in the provider's terms.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReconciliationSideDto {
    /// Signed as the provider's balance sees it, in minor units (cents).
    pub amount_minor: i64,
    /// Lowercase ISO 4217, as the provider writes it.
    pub currency: String,
    /// `succeeded`, or the provider's state of a charge it did not settle.
    pub status: String,
}

/// One difference between the ledger and the provider.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReconciliationMismatchDto {
    /// `missing_in_ledger`, `missing_at_provider`, `amount_differs`,
    /// `currency_differs` or `status_differs`.
    pub mismatch: String,
    /// `charge`, `refund`, `dispute` or `dispute_fee`.
    pub kind: String,
    /// The provider's id of what moved (`ch_…`, `re_…`, `du_…`).
    pub object_id: String,
    /// What the ledger says, if anything.
    pub ledger: Option<ReconciliationSideDto>,
    /// What the provider says, if anything.
    pub provider: Option<ReconciliationSideDto>,
}

/// A reconciliation run.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReconciliationDto {
    /// Always "reconciliation".
    pub object: &'static str,
    /// The run's id (UUIDv7).
    pub id: Uuid,
    /// The provider (`stripe`).
    pub provider: String,
    /// Window start, inclusive (RFC 3339).
    pub from: String,
    /// Window end, exclusive (RFC 3339).
    pub to: String,
    /// Movements compared.
    pub compared: u64,
    /// Of them, agreed.
    pub matched: u64,
    /// True when nothing differs.
    pub agrees: bool,
    /// The differences.
    pub mismatches: Vec<ReconciliationMismatchDto>,
    /// The provider's processing fees per currency, minor units (reported, not compared).
    pub processing_fees_minor: std::collections::BTreeMap<String, i64>,
    /// When it ran (RFC 3339).
    pub created: String,
}

/// The recorded runs, newest first.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ReconciliationList {
    /// Always "list".
    pub object: &'static str,
    /// The runs.
    pub data: Vec<ReconciliationDto>,
    /// More runs than asked for.
    pub has_more: bool,
}

impl From<&recur_commands::reconciliation::ReconciliationReport> for ReconciliationDto {
    fn from(report: &recur_commands::reconciliation::ReconciliationReport) -> Self {
        let side = |side: &recur_commands::reconciliation::Side| ReconciliationSideDto {
            amount_minor: side.amount_minor,
            currency: side.currency.clone(),
            status: side.status.clone(),
        };
        Self {
            object: "reconciliation",
            id: report.run_id,
            provider: report.provider.clone(),
            from: rfc3339(report.from),
            to: rfc3339(report.to),
            compared: report.compared,
            matched: report.matched,
            agrees: report.agrees(),
            mismatches: report
                .mismatches
                .iter()
                .map(|m| ReconciliationMismatchDto {
                    mismatch: m.mismatch.as_str().to_owned(),
                    kind: m.kind.as_str().to_owned(),
                    object_id: m.object_id.clone(),
                    ledger: m.ledger.as_ref().map(side),
                    provider: m.provider.as_ref().map(side),
                })
                .collect(),
            processing_fees_minor: report.processing_fees_minor.clone(),
            created: rfc3339(report.at),
        }
    }
}
