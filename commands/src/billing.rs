//! The billing service: each operation loads the aggregates it needs, decides,
//! appends, and carries the follow-ups across aggregates (draft → finalize →
//! charge → settle) in an order that a crash at any point can resume without
//! charging or billing twice.
//!
//! Each command runs in a `tracing` span named after it that carries the ids it
//! acts on and nothing else: contact details, card tokens, amounts and free
//! text (reasons) stay out of the logs.

use std::sync::Arc;

use recur_ledger::{Ledger, LedgerError, Metadata, Money, Source, StreamId};
use time::OffsetDateTime;

use crate::aggregate::Aggregate;
use crate::catalog::{Billing as PriceBilling, Catalog, CatalogCommand, Plan, Price};
use crate::coupon::{AppliedDiscount, Coupon, CouponCommand, CouponDuration, Discount};
use crate::customer::{Contact, ContactDetails, Customer, CustomerCommand, PaymentMethod, Segment};
use crate::error::{BillingError, DomainError};
use crate::ids::{CouponCode, CustomerId, InvoiceId, SubscriptionId};
use crate::invoice::{
    BillingReason, ChargeOutcome, FirstAttempt, Invoice, InvoiceCommand, InvoiceRequest,
    InvoiceStatus, Line, LineKind, compute_totals,
};
use crate::payment::{AttachRequest, ChargeRequest, PaymentGateway, RefundRequest};
use crate::privacy::Vault;
use crate::repository::{Executed, Repository, decode};
use crate::subscription::{
    CancelReason, Settlement, Subscription, SubscriptionCommand, SubscriptionStatus, Timing,
};
use crate::tax::{TaxLocation, TaxRate};

/// Periods one subscription may be advanced by in one call (a clock jumped far ahead).
pub const PERIODS_PER_ADVANCE_MAX: u32 = 1_000;

/// A new customer.
#[derive(Clone, Debug, Default)]
pub struct NewCustomer {
    /// Dunning segment.
    pub segment: Segment,
    /// Where it is taxed.
    pub tax_location: Option<TaxLocation>,
    /// Name and email, kept apart from the books.
    pub contact: Option<ContactDetails>,
}

/// Which trial a new subscription gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Trial {
    /// The plan's trial.
    #[default]
    PlanDefault,
    /// None: bill now.
    Skip,
    /// This many days.
    Days(u32),
}

/// A new subscription.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    /// The customer.
    pub customer_id: CustomerId,
    /// The plan.
    pub plan_id: String,
    /// A specific price of the plan; the plan's current price when absent.
    pub price_id: Option<String>,
    /// Units.
    pub quantity: u32,
    /// Trial.
    pub trial: Trial,
    /// A coupon to redeem.
    pub coupon: Option<CouponCode>,
}

/// A change of plan, price or quantity.
#[derive(Clone, Debug)]
pub struct PlanChange {
    /// The new plan.
    pub plan_id: String,
    /// A specific price of it (a migration); the plan's current price when absent.
    pub price_id: Option<String>,
    /// The new quantity; unchanged when absent.
    pub quantity: Option<u32>,
    /// Now (prorated) or at period end.
    pub timing: Timing,
}

/// A new coupon.
#[derive(Clone, Debug)]
pub struct NewCoupon {
    /// Code.
    pub code: CouponCode,
    /// What it takes off.
    pub discount: Discount,
    /// How long.
    pub duration: CouponDuration,
    /// Redemption limit.
    pub max_redemptions: Option<u32>,
    /// Redemption deadline.
    pub redeem_by: Option<OffsetDateTime>,
}

/// What became of a refund asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefundOutcome {
    /// Its number on the invoice.
    pub refund_no: u32,
    /// True when the gateway's answer is recorded; false when it is pending
    /// (the scheduler sends it again with the same key).
    pub completed: bool,
}

/// The billing service.
pub struct Billing {
    pub(crate) repo: Repository,
    gateway: Arc<dyn PaymentGateway>,
    /// Encrypts and decrypts personal data; without it none can be stored.
    pub(crate) vault: Option<Arc<Vault>>,
    /// When soft declines are retried, learned from the ledger's retries.
    pub(crate) retry_timing: std::sync::Mutex<crate::retry_timing::RetryTiming>,
    /// The retries it learned from, by invoice and attempt: each once, however
    /// many schedulers read it.
    pub(crate) retries_learned: std::sync::Mutex<std::collections::HashSet<(InvoiceId, u32)>>,
    /// When each (actor, customer) last had a read of contact details recorded.
    pub(crate) recent_reads:
        std::sync::Mutex<std::collections::HashMap<(String, CustomerId), OffsetDateTime>>,
}

pub(crate) fn metadata(source: Source) -> Metadata {
    Metadata {
        source,
        actor: (source == Source::Scheduler).then(|| "scheduler".to_owned()),
        ..Metadata::default()
    }
}

impl Billing {
    /// Opens the service. A ledger whose catalog has no plan yet is seeded with
    /// `catalog` (its plans, prices and tax rates, as catalog events); after
    /// that the ledger's catalog is the one in force, changed through the API.
    ///
    /// # Errors
    /// [`BillingError::Catalog`] when the file contradicts a price the ledger
    /// recorded; ledger errors.
    pub async fn open(
        ledger: Ledger,
        catalog: Catalog,
        gateway: Arc<dyn PaymentGateway>,
    ) -> Result<Self, BillingError> {
        let repo = Repository::new(ledger);
        let now = repo.ledger().clock().now();
        let rate_ids: Vec<String> = catalog
            .tax()
            .rates
            .iter()
            .map(|_| crate::context::new_id(now).to_string())
            .collect();
        let seed = CatalogCommand::Seed {
            file: Box::new(catalog),
            rate_ids,
        };
        repo.execute::<Catalog, _>(&catalog_stream()?, &metadata(Source::Cli), |_| {
            Ok(seed.clone())
        })
        .await
        .map_err(|error| match error {
            BillingError::Domain(DomainError::InvalidCatalog(message)) => {
                BillingError::Catalog(message)
            }
            other => other,
        })?;
        Ok(Self {
            repo,
            gateway,
            vault: None,
            retry_timing: std::sync::Mutex::new(crate::retry_timing::RetryTiming::new(0)),
            retries_learned: std::sync::Mutex::default(),
            recent_reads: std::sync::Mutex::default(),
        })
    }

    /// The service with `vault` to encrypt personal data (contact details):
    /// without one, a customer's personal data cannot be recorded.
    #[must_use]
    pub fn with_vault(mut self, vault: Arc<Vault>) -> Self {
        self.vault = Some(vault);
        self
    }

    /// The ledger underneath.
    pub fn ledger(&self) -> &Ledger {
        self.repo.ledger()
    }

    /// The payment gateway's name (`simulated`, `stripe`): what a card token
    /// given by a customer stands for depends on it.
    pub fn gateway_name(&self) -> &'static str {
        self.gateway.name()
    }

    /// How many events this service has appended to the ledger since it was
    /// opened (a monotonic counter for telemetry; replayed appends not counted).
    pub fn events_appended(&self) -> u64 {
        self.repo.events_appended()
    }

    /// The catalog as the ledger holds it now (another process's changes included).
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn catalog(&self) -> Result<Catalog, BillingError> {
        Ok(self
            .repo
            .load_current::<Catalog>(&catalog_stream()?)
            .await?
            .0)
    }

    async fn catalog_command(&self, command: CatalogCommand) -> Result<Catalog, BillingError> {
        Ok(self
            .repo
            .execute::<Catalog, _>(&catalog_stream()?, &metadata(Source::Api), |_| {
                Ok(command.clone())
            })
            .await?
            .state)
    }

    /// Adds a price to the catalog (an admin's command): immutable from then on.
    /// The same price again is no change.
    ///
    /// # Errors
    /// An id in use with other terms, an unknown plan, a bad amount or interval.
    #[tracing::instrument(skip_all)]
    pub async fn create_price(&self, price: Price) -> Result<Price, BillingError> {
        self.catalog_command(CatalogCommand::CreatePrice {
            price: price.clone(),
        })
        .await?;
        Ok(price)
    }

    /// Adds a plan with its first price, which becomes its current price.
    ///
    /// # Errors
    /// An id in use, a bad name, trial or price.
    #[tracing::instrument(skip_all)]
    pub async fn create_plan(&self, plan: Plan, price: Price) -> Result<Plan, BillingError> {
        let catalog = self
            .catalog_command(CatalogCommand::CreatePlan {
                plan: plan.clone(),
                price,
            })
            .await?;
        Ok(catalog.plan(&plan.id)?.clone())
    }

    /// Changes a plan's name, trial or current price (a price of its own; new
    /// subscriptions get it, existing ones keep theirs).
    ///
    /// # Errors
    /// An unknown plan or price, a price of another plan, a bad name or trial.
    #[tracing::instrument(skip_all, fields(plan = plan_id))]
    pub async fn update_plan(
        &self,
        plan_id: &str,
        name: Option<String>,
        trial_days: Option<u32>,
        current_price: Option<String>,
    ) -> Result<Plan, BillingError> {
        let catalog = self
            .catalog_command(CatalogCommand::UpdatePlan {
                plan_id: plan_id.to_owned(),
                name,
                trial_days,
                current_price,
            })
            .await?;
        Ok(catalog.plan(plan_id)?.clone())
    }

    /// Adds a tax rate, in force from its `valid_from` (default: now); returns it with its id.
    ///
    /// # Errors
    /// A bad jurisdiction, rate or name; a rate of the same jurisdiction in
    /// force from the same instant.
    #[tracing::instrument(skip_all)]
    pub async fn create_tax_rate(&self, mut rate: TaxRate) -> Result<TaxRate, BillingError> {
        let now = self.now();
        rate.id = crate::context::new_id(now).to_string();
        rate.valid_from = Some(not_before_now("valid_from", rate.valid_from, now)?);

        self.catalog_command(CatalogCommand::CreateTaxRate { rate: rate.clone() })
            .await?;
        Ok(rate)
    }

    /// Retires a tax rate from `at` (default: now): invoices issued from then on
    /// no longer take it.
    ///
    /// # Errors
    /// An unknown rate.
    #[tracing::instrument(skip_all, fields(tax_rate = id))]
    pub async fn retire_tax_rate(
        &self,
        id: &str,
        at: Option<OffsetDateTime>,
    ) -> Result<TaxRate, BillingError> {
        let at = not_before_now("at", at, self.now())?;
        let catalog = self
            .catalog_command(CatalogCommand::RetireTaxRate {
                id: id.to_owned(),
                at,
            })
            .await?;
        catalog
            .tax()
            .get(id)
            .cloned()
            .ok_or_else(|| not_found("tax rate", id))
    }

    pub(crate) fn now(&self) -> OffsetDateTime {
        self.repo.ledger().clock().now()
    }

    // ---- reads ---------------------------------------------------------------

    /// A customer's state.
    ///
    /// # Errors
    /// [`DomainError::NotFound`]; ledger errors.
    pub async fn customer(&self, id: CustomerId) -> Result<Customer, BillingError> {
        let (state, _) = self.repo.load_current::<Customer>(&id.stream()?).await?;
        if state.id.is_none() {
            return Err(not_found("customer", id));
        }
        Ok(state)
    }

    /// A subscription's state.
    ///
    /// # Errors
    /// [`DomainError::NotFound`]; ledger errors.
    pub async fn subscription(&self, id: SubscriptionId) -> Result<Subscription, BillingError> {
        let (state, _) = self
            .repo
            .load_current::<Subscription>(&id.stream()?)
            .await?;
        if state.id.is_none() {
            return Err(not_found("subscription", id));
        }
        Ok(state)
    }

    /// An invoice's state.
    ///
    /// # Errors
    /// [`DomainError::NotFound`]; ledger errors.
    pub async fn invoice(&self, id: InvoiceId) -> Result<Invoice, BillingError> {
        let (state, _) = self.repo.load_current::<Invoice>(&id.stream()?).await?;
        if state.id.is_none() {
            return Err(not_found("invoice", id));
        }
        Ok(state)
    }

    /// A customer's state and stream version (for `If-Match`).
    ///
    /// # Errors
    /// [`DomainError::NotFound`]; ledger errors.
    pub async fn customer_versioned(
        &self,
        id: CustomerId,
    ) -> Result<(Customer, u64), BillingError> {
        let (state, version) = self.repo.load_current::<Customer>(&id.stream()?).await?;
        if state.id.is_none() {
            return Err(not_found("customer", id));
        }
        Ok((state, version))
    }

    /// A subscription's state and stream version.
    ///
    /// # Errors
    /// [`DomainError::NotFound`]; ledger errors.
    pub async fn subscription_versioned(
        &self,
        id: SubscriptionId,
    ) -> Result<(Subscription, u64), BillingError> {
        let (state, version) = self
            .repo
            .load_current::<Subscription>(&id.stream()?)
            .await?;
        if state.id.is_none() {
            return Err(not_found("subscription", id));
        }
        Ok((state, version))
    }

    /// An invoice's state and stream version.
    ///
    /// # Errors
    /// [`DomainError::NotFound`]; ledger errors.
    pub async fn invoice_versioned(&self, id: InvoiceId) -> Result<(Invoice, u64), BillingError> {
        let (state, version) = self.repo.load_current::<Invoice>(&id.stream()?).await?;
        if state.id.is_none() {
            return Err(not_found("invoice", id));
        }
        Ok((state, version))
    }

    /// A coupon's state.
    ///
    /// # Errors
    /// [`DomainError::NotFound`]; ledger errors.
    pub async fn coupon(&self, code: &CouponCode) -> Result<Coupon, BillingError> {
        let (state, _) = self.repo.load_current::<Coupon>(&code.stream()?).await?;
        if state.code.is_none() {
            return Err(not_found("coupon", code));
        }
        Ok(state)
    }

    // ---- customers and coupons -------------------------------------------

    /// Creates a customer (and its contact details, in their own stream).
    ///
    /// # Errors
    /// Invalid contact details; ledger errors.
    #[tracing::instrument(skip_all)]
    pub async fn create_customer(&self, new: NewCustomer) -> Result<CustomerId, BillingError> {
        if let Some(contact) = &new.contact {
            contact.validate()?;
            if self.vault.is_none() {
                // Refused before anything is written.
                return Err(BillingError::NoMasterKey);
            }
        }
        let now = self.now();
        let id = CustomerId::new_at(now);
        let meta = metadata(Source::Api);
        self.repo
            .execute_new::<Customer, _>(&id.stream()?, &meta, |_| {
                Ok(CustomerCommand::Create {
                    id,
                    segment: new.segment,
                    tax_location: new.tax_location.clone(),
                    now,
                })
            })
            .await?;
        if let Some(contact) = new.contact {
            let encrypted = self.encrypt_contact(id, &contact).await?;
            self.repo
                .execute::<Contact, _>(&contact_stream(id)?, &meta, |_| Ok(encrypted.clone()))
                .await?;
        }
        Ok(id)
    }

    /// Replaces a customer's contact details.
    ///
    /// # Errors
    /// Unknown customer, invalid details; ledger errors.
    #[tracing::instrument(skip_all, fields(customer = %id))]
    pub async fn update_contact(
        &self,
        id: CustomerId,
        details: ContactDetails,
    ) -> Result<(), BillingError> {
        details.validate()?;
        let (customer, version) = self.customer_versioned(id).await?;
        if customer.erased_at.is_some() {
            return Err(DomainError::PersonalDataErased.into());
        }
        if self.contact(id).await?.as_ref() == Some(&details) {
            // Nothing changes; a stale If-Match is still refused, unless this is
            // a rerun of the request that made the change.
            if !crate::context::earlier_run_wrote(self.ledger(), &id.stream()?).await? {
                crate::context::check_expected(&id.stream()?, version)?;
            }
            return Ok(());
        }
        // The customer's stream first: its version is what If-Match guards, and
        // concurrent contact updates take turns on it; a refusal writes nothing.
        let now = self.now();
        self.customer_command(id, Source::Api, |_| CustomerCommand::MarkContactChanged {
            now,
        })
        .await?;
        let encrypted = self.encrypt_contact(id, &details).await?;
        self.repo
            .execute::<Contact, _>(&contact_stream(id)?, &metadata(Source::Api), |_| {
                Ok(encrypted.clone())
            })
            .await?;
        Ok(())
    }

    pub(crate) async fn customer_command(
        &self,
        id: CustomerId,
        source: Source,
        command: impl Fn(&Customer) -> CustomerCommand,
    ) -> Result<Executed<Customer>, BillingError> {
        self.repo
            .execute::<Customer, _>(&id.stream()?, &metadata(source), |state| {
                if state.id.is_none() {
                    return Err(not_found_domain("customer", id));
                }
                Ok(command(state))
            })
            .await
    }

    /// Puts a card on file (token, brand, last4, expiry), replacing any other:
    /// the gateway attaches the token first (to the provider's customer already
    /// linked to this one, or a new one), and what it answers is kept — a real
    /// provider's brand, last4 and expiry are authoritative, not the client's.
    ///
    /// # Errors
    /// A card number anywhere, a malformed or expired card, unknown customer;
    /// [`DomainError::CardDeclined`] when the gateway declines the card and
    /// [`BillingError::GatewayUnavailable`] when it does not answer: in both
    /// cases nothing is written.
    #[tracing::instrument(skip_all, fields(customer = %id))]
    pub async fn attach_payment_method(
        &self,
        id: CustomerId,
        method: PaymentMethod,
    ) -> Result<(), BillingError> {
        let now = self.now();
        method.validate(now)?;
        // The customer must exist, and a stale If-Match be refused, before the
        // provider is asked to create anything for it (unless this is a rerun
        // of the request that wrote: the provider's keys replay its answers).
        // The append checks the version again; this only spares the provider
        // a call the ledger would refuse.
        let (customer, version) = self.customer_versioned(id).await?;
        if !crate::context::earlier_run_wrote(self.ledger(), &id.stream()?).await? {
            crate::context::check_expected(&id.stream()?, version)?;
        }
        // Its card on file names the provider's customer.
        let provider_customer = customer
            .payment_method
            .as_ref()
            .and_then(|card| card.provider_customer.clone());
        let attached = self
            .gateway
            .attach_payment_method(&AttachRequest {
                customer: id,
                method,
                provider_customer,
            })
            .await
            .map_err(|e| BillingError::GatewayUnavailable(e.0))?
            .map_err(DomainError::from)?;
        // What the provider says is checked like what a client says.
        attached.validate(now)?;
        self.customer_command(id, Source::Api, |_| CustomerCommand::AttachPaymentMethod {
            method: attached.clone(),
            now,
        })
        .await?;
        Ok(())
    }

    /// Removes the card on file.
    ///
    /// # Errors
    /// Unknown customer.
    #[tracing::instrument(skip_all, fields(customer = %id))]
    pub async fn detach_payment_method(&self, id: CustomerId) -> Result<(), BillingError> {
        self.customer_command(id, Source::Api, |_| CustomerCommand::DetachPaymentMethod)
            .await?;
        Ok(())
    }

    /// Sets where the customer is taxed.
    ///
    /// # Errors
    /// Unknown customer.
    #[tracing::instrument(skip_all, fields(customer = %id))]
    pub async fn set_tax_location(
        &self,
        id: CustomerId,
        location: TaxLocation,
    ) -> Result<(), BillingError> {
        self.customer_command(id, Source::Api, |_| {
            CustomerCommand::SetTaxLocation(location.clone())
        })
        .await?;
        Ok(())
    }

    /// Sets the dunning segment.
    ///
    /// # Errors
    /// Unknown customer.
    #[tracing::instrument(skip_all, fields(customer = %id))]
    pub async fn set_segment(&self, id: CustomerId, segment: Segment) -> Result<(), BillingError> {
        self.customer_command(id, Source::Api, |_| CustomerCommand::SetSegment(segment))
            .await?;
        Ok(())
    }

    /// Creates a coupon.
    ///
    /// # Errors
    /// Invalid terms, an existing code.
    #[tracing::instrument(skip_all)]
    pub async fn create_coupon(&self, new: NewCoupon) -> Result<(), BillingError> {
        self.repo
            .execute::<Coupon, _>(&new.code.stream()?, &metadata(Source::Api), |_| {
                Ok(CouponCommand::Create {
                    code: new.code.clone(),
                    discount: new.discount,
                    duration: new.duration,
                    max_redemptions: new.max_redemptions,
                    redeem_by: new.redeem_by,
                })
            })
            .await?;
        Ok(())
    }

    /// Checks that `code` can be redeemed by `redeemer` now, without redeeming it.
    async fn coupon_for(
        &self,
        code: &CouponCode,
        redeemer: &str,
    ) -> Result<AppliedDiscount, BillingError> {
        let now = self.now();
        let (coupon, _) = self.repo.load::<Coupon>(&code.stream()?).await?;
        coupon
            .decide(CouponCommand::Redeem {
                redeemer: redeemer.to_owned(),
                now,
            })
            .map_err(|e| match e {
                DomainError::NotFound { kind, .. } => DomainError::NotFound {
                    kind,
                    id: code.to_string(),
                },
                other => other,
            })?;
        coupon
            .applied(now)
            .ok_or_else(|| not_found_domain("coupon", code).into())
    }

    async fn redeem(&self, code: &CouponCode, redeemer: String) -> Result<(), BillingError> {
        let now = self.now();
        self.repo
            .execute::<Coupon, _>(&code.stream()?, &metadata(Source::Api), |_| {
                Ok(CouponCommand::Redeem {
                    redeemer: redeemer.clone(),
                    now,
                })
            })
            .await?;
        Ok(())
    }

    // ---- subscriptions ---------------------------------------------------------

    async fn price_of(&self, plan_id: &str, price_id: Option<&str>) -> Result<Price, BillingError> {
        let catalog = self.catalog().await?;
        catalog.plan(plan_id)?;
        let price = match price_id {
            Some(id) => catalog.price(id)?,
            None => catalog.current_price(plan_id)?,
        };
        if price.plan_id != plan_id {
            return Err(
                DomainError::UnknownPrice(format!("{} (of plan {plan_id})", price.id)).into(),
            );
        }
        Ok(price.clone())
    }

    /// Starts a subscription; without a trial, bills and charges the first period now.
    /// Bad input (unknown plan or customer, bad quantity, an expired or used-up
    /// coupon, a currency mismatch) writes nothing.
    ///
    /// # Errors
    /// [`DomainError`]s as above; ledger errors.
    #[tracing::instrument(skip_all)]
    pub async fn subscribe(&self, new: NewSubscription) -> Result<SubscriptionId, BillingError> {
        let now = self.now();
        let price = self.price_of(&new.plan_id, new.price_id.as_deref()).await?;
        self.customer(new.customer_id).await?;
        let trial_days = match new.trial {
            Trial::PlanDefault => self.catalog().await?.plan(&new.plan_id)?.trial_days,
            Trial::Skip => 0,
            Trial::Days(days) => days.min(crate::catalog::TRIAL_DAYS_MAX),
        };
        let id = SubscriptionId::new_at(now);
        let discount = match &new.coupon {
            Some(code) => Some(self.coupon_for(code, &id.to_string()).await?),
            None => None,
        };
        let start = SubscriptionCommand::Start {
            id,
            customer_id: new.customer_id,
            price,
            quantity: new.quantity,
            trial_days,
            discount,
            invoice_id: InvoiceId::new_at(now),
            now,
        };
        // Decide once without writing, so a refusal leaves the coupon unredeemed.
        Subscription::default().decide(start.clone())?;
        if let Some(code) = &new.coupon {
            self.redeem(code, id.to_string()).await?;
        }
        let executed = self
            .repo
            .execute_new::<Subscription, _>(&id.stream()?, &metadata(Source::Api), |_| {
                Ok(start.clone())
            })
            .await?;
        self.follow_up(&executed, Source::Api).await?;
        Ok(id)
    }

    pub(crate) async fn subscription_command(
        &self,
        id: SubscriptionId,
        source: Source,
        command: impl Fn(&Subscription) -> SubscriptionCommand,
    ) -> Result<Executed<Subscription>, BillingError> {
        self.repo
            .execute::<Subscription, _>(&id.stream()?, &metadata(source), |state| {
                if state.id.is_none() {
                    return Err(not_found_domain("subscription", id));
                }
                Ok(command(state))
            })
            .await
    }

    /// A subscription command followed by the billing its events ask for.
    async fn subscription_change(
        &self,
        id: SubscriptionId,
        source: Source,
        command: impl Fn(&Subscription) -> SubscriptionCommand,
    ) -> Result<Executed<Subscription>, BillingError> {
        let executed = self.subscription_command(id, source, command).await?;
        self.follow_up(&executed, source).await?;
        Ok(executed)
    }

    /// Changes plan, price or quantity: now (prorated to the second and invoiced
    /// now) or at period end.
    ///
    /// # Errors
    /// Unknown plan or price, a canceled or paused subscription, currency mismatch.
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn change_plan(
        &self,
        id: SubscriptionId,
        change: PlanChange,
    ) -> Result<Subscription, BillingError> {
        let price = self
            .price_of(&change.plan_id, change.price_id.as_deref())
            .await?;
        let now = self.now();
        let executed = self
            .subscription_change(id, Source::Api, |state| SubscriptionCommand::ChangePrice {
                price: price.clone(),
                quantity: change.quantity.unwrap_or(state.quantity),
                timing: change.timing,
                invoice_id: InvoiceId::new_at(now),
                now,
            })
            .await?;
        Ok(executed.state)
    }

    /// What [`Billing::change_plan`] would invoice now, without writing anything:
    /// the proration lines and their totals (discount, tax) for the customer.
    /// `None` when nothing would be invoiced (trialing, or a change at period end).
    ///
    /// # Errors
    /// As for [`Billing::change_plan`].
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn preview_change(
        &self,
        id: SubscriptionId,
        change: &PlanChange,
    ) -> Result<Option<(InvoiceRequest, crate::invoice::Totals)>, BillingError> {
        let price = self
            .price_of(&change.plan_id, change.price_id.as_deref())
            .await?;
        let now = self.now();
        let state = self.subscription(id).await?;
        let events = state.decide(SubscriptionCommand::ChangePrice {
            price,
            quantity: change.quantity.unwrap_or(state.quantity),
            timing: change.timing,
            invoice_id: InvoiceId::new_at(now),
            now,
        })?;
        let Some(request) = events.iter().find_map(|e| e.invoice_request().cloned()) else {
            return Ok(None);
        };
        let Some(customer_id) = state.customer_id else {
            return Ok(None);
        };
        let customer = self.customer(customer_id).await?;
        let tax_basis = self
            .catalog()
            .await?
            .tax()
            .basis_at(customer.tax_location.as_ref(), now);
        let currency = request.lines[0].amount.currency();
        let totals = compute_totals(
            &request.lines,
            request.discount.as_ref(),
            &tax_basis,
            currency,
        )?;
        Ok(Some((request, totals)))
    }

    /// Cancels now or at period end.
    ///
    /// # Errors
    /// An already canceled subscription.
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn cancel(
        &self,
        id: SubscriptionId,
        timing: Timing,
    ) -> Result<Subscription, BillingError> {
        let now = self.now();
        Ok(self
            .subscription_change(id, Source::Api, |_| SubscriptionCommand::Cancel {
                timing,
                reason: CancelReason::Requested,
                now,
            })
            .await?
            .state)
    }

    /// Undoes a cancellation scheduled for period end.
    ///
    /// # Errors
    /// A canceled subscription.
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn undo_cancellation(
        &self,
        id: SubscriptionId,
    ) -> Result<Subscription, BillingError> {
        Ok(self
            .subscription_change(id, Source::Api, |_| SubscriptionCommand::UndoCancellation)
            .await?
            .state)
    }

    /// Puts a coupon's discount on a running subscription (a retention or
    /// dunning offer), replacing any other: `now` (in force for every invoice
    /// from now on, and in MRR from now) or at period end (from the next
    /// period). The coupon is redeemed for the subscription once; a refusal
    /// leaves it unredeemed.
    ///
    /// # Errors
    /// An unknown, expired or used-up coupon, a currency mismatch, a canceled
    /// subscription.
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn apply_discount(
        &self,
        id: SubscriptionId,
        code: &CouponCode,
        timing: Timing,
    ) -> Result<Subscription, BillingError> {
        let now = self.now();
        let (state, version) = self.subscription_versioned(id).await?;
        let command = |discount: AppliedDiscount| SubscriptionCommand::ApplyDiscount {
            discount,
            timing,
            now,
        };
        // A coupon is applied to a subscription once: applied again (after it was
        // taken off, or once used up) it would start its duration over, past its
        // limits and its deadline.
        let (coupon, _) = self.repo.load_current::<Coupon>(&code.stream()?).await?;
        if coupon.redeemers.contains(&id.to_string()) {
            if crate::context::earlier_run_wrote(self.ledger(), &code.stream()?).await? {
                // A rerun of this very request, which redeemed the coupon and
                // was cut short: finish it (each step finds what it wrote).
                let discount = coupon
                    .applied(now)
                    .ok_or_else(|| BillingError::from(not_found_domain("coupon", code)))?;
                self.redeem(code, id.to_string()).await?;
                return Ok(self
                    .subscription_change(id, Source::Api, |_| command(discount.clone()))
                    .await?
                    .state);
            }
            return Err(DomainError::CouponAlreadyRedeemed(code.to_string()).into());
        }
        let discount = self.coupon_for(code, &id.to_string()).await?;
        // Decide once without writing, with the caller's If-Match checked, so a
        // refusal leaves the coupon unredeemed.
        crate::context::check_expected(&id.stream()?, version)?;
        state.decide(command(discount.clone()))?;
        self.redeem(code, id.to_string()).await?;
        Ok(self
            .subscription_change(id, Source::Api, |_| command(discount.clone()))
            .await?
            .state)
    }

    /// Takes the discount off a running subscription: now, or from the next
    /// period. Nothing to take off is not an error.
    ///
    /// # Errors
    /// A canceled subscription.
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn remove_discount(
        &self,
        id: SubscriptionId,
        timing: Timing,
    ) -> Result<Subscription, BillingError> {
        let now = self.now();
        Ok(self
            .subscription_change(id, Source::Api, |_| SubscriptionCommand::RemoveDiscount {
                timing,
                now,
            })
            .await?
            .state)
    }

    /// Pauses an active subscription.
    ///
    /// # Errors
    /// A subscription that is not active.
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn pause(&self, id: SubscriptionId) -> Result<Subscription, BillingError> {
        let now = self.now();
        Ok(self
            .subscription_change(id, Source::Api, |_| SubscriptionCommand::Pause { now })
            .await?
            .state)
    }

    /// Resumes a paused subscription: a new period starts now and is billed.
    ///
    /// # Errors
    /// A subscription that is not paused.
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn resume(&self, id: SubscriptionId) -> Result<Subscription, BillingError> {
        let now = self.now();
        Ok(self
            .subscription_change(id, Source::Api, |_| SubscriptionCommand::Resume {
                invoice_id: InvoiceId::new_at(now),
                now,
            })
            .await?
            .state)
    }

    /// Converts a due trial and renews every period that has ended, billing each
    /// once; what the scheduler calls. Returns how many periods were started.
    ///
    /// # Errors
    /// Ledger and gateway errors (the next call resumes where this one stopped).
    pub async fn advance(&self, id: SubscriptionId) -> Result<u32, BillingError> {
        self.advance_by(id, PERIODS_PER_ADVANCE_MAX).await
    }

    /// [`Billing::advance`], starting at most `periods_max` periods: what the
    /// scheduler calls with 1, so that work falling due between two periods
    /// (a retry, a give-up) runs before the next period starts.
    ///
    /// # Errors
    /// As for [`Billing::advance`].
    #[tracing::instrument(skip_all, fields(subscription = %id))]
    pub async fn advance_by(
        &self,
        id: SubscriptionId,
        periods_max: u32,
    ) -> Result<u32, BillingError> {
        let mut started = 0;
        for _ in 0..periods_max.min(PERIODS_PER_ADVANCE_MAX) {
            let now = self.now();
            // The cached state first: renewing on a stale one only costs a
            // conflict and a reload. Read from the ledger when it says nothing
            // is due, since another process may have made it due.
            let (cached, _) = self.repo.load::<Subscription>(&id.stream()?).await?;
            let due = |state: &Subscription| state.next_due_at().is_some_and(|due| due <= now);
            if !due(&cached) && !due(&self.subscription(id).await?) {
                break;
            }
            let executed = self
                .subscription_change(id, Source::Scheduler, |state| {
                    if state.status == SubscriptionStatus::Trialing {
                        SubscriptionCommand::ConvertTrial {
                            invoice_id: InvoiceId::new_at(now),
                            now,
                        }
                    } else {
                        SubscriptionCommand::Renew {
                            period_index: state.period_index + 1,
                            invoice_id: InvoiceId::new_at(now),
                            now,
                        }
                    }
                })
                .await?;
            if executed.events.is_empty() {
                break;
            }
            started += 1;
        }
        Ok(started)
    }

    /// Drafts, finalizes and collects every invoice a subscription's events asked for.
    async fn follow_up(
        &self,
        executed: &Executed<Subscription>,
        source: Source,
    ) -> Result<(), BillingError> {
        let (Some(sub_id), Some(customer_id)) = (executed.state.id, executed.state.customer_id)
        else {
            return Ok(());
        };
        for event in &executed.events {
            if let Some(request) = event.invoice_request() {
                // Boxed: billing an invoice is the deepest future of all, and a
                // subscription command should not carry it inline.
                Box::pin(self.bill(customer_id, Some(sub_id), request, source)).await?;
            }
        }
        Ok(())
    }

    // ---- invoices --------------------------------------------------------------

    /// Buys a one-time price (the course) without a subscription: invoiced and
    /// charged now.
    ///
    /// # Errors
    /// Unknown plan or customer, a recurring price, a coupon that cannot be used.
    #[tracing::instrument(skip_all, fields(customer = %customer_id))]
    pub async fn purchase(
        &self,
        customer_id: CustomerId,
        plan_id: &str,
        coupon: Option<CouponCode>,
    ) -> Result<InvoiceId, BillingError> {
        let now = self.now();
        let price = self.price_of(plan_id, None).await?;
        if price.billing != PriceBilling::OneTime {
            return Err(DomainError::WrongPriceKind {
                price: price.id.clone(),
                actual: "recurring",
                expected: "a one-time price",
            }
            .into());
        }
        self.customer(customer_id).await?;
        let invoice_id = InvoiceId::new_at(now);
        let discount = match &coupon {
            Some(code) => Some(self.coupon_for(code, &invoice_id.to_string()).await?),
            None => None,
        };
        let request = InvoiceRequest {
            invoice_id,
            reason: BillingReason::Purchase,
            lines: vec![Line {
                kind: LineKind::OneTime,
                description: self.catalog().await?.plan(plan_id)?.name.clone(),
                plan_id: plan_id.to_owned(),
                price_id: price.id.clone(),
                quantity: 1,
                unit_amount: price.unit_amount,
                amount: price.unit_amount,
                period: None,
            }],
            discount,
            issued_at: Some(now),
        };
        // Validate the draft before redeeming anything.
        Invoice::default().decide(InvoiceCommand::Draft {
            customer_id,
            subscription_id: None,
            request: request.clone(),
            now,
        })?;
        if let Some(code) = &coupon {
            self.redeem(code, invoice_id.to_string()).await?;
        }
        self.bill(customer_id, None, &request, Source::Api).await?;
        Ok(invoice_id)
    }

    pub(crate) async fn invoice_command(
        &self,
        id: InvoiceId,
        source: Source,
        command: impl Fn(&Invoice) -> InvoiceCommand,
    ) -> Result<Executed<Invoice>, BillingError> {
        self.repo
            .execute::<Invoice, _>(&id.stream()?, &metadata(source), |state| {
                if state.id.is_none() {
                    return Err(not_found_domain("invoice", id));
                }
                Ok(command(state))
            })
            .await
    }

    /// Bills an invoice a subscription asked for but that was never drafted (the
    /// process stopped in between); a no-op for steps already done.
    ///
    /// # Errors
    /// Ledger and gateway errors.
    #[tracing::instrument(skip_all, fields(customer = %customer_id, subscription = %subscription_id))]
    pub async fn resume_billing(
        &self,
        customer_id: CustomerId,
        subscription_id: SubscriptionId,
        request: &InvoiceRequest,
    ) -> Result<(), BillingError> {
        self.bill(
            customer_id,
            Some(subscription_id),
            request,
            Source::Scheduler,
        )
        .await
    }

    /// Drafts, finalizes (applying customer credit, granting it for a negative
    /// total) and collects an invoice; each step is a no-op when already done.
    async fn bill(
        &self,
        customer_id: CustomerId,
        subscription_id: Option<SubscriptionId>,
        request: &InvoiceRequest,
        source: Source,
    ) -> Result<(), BillingError> {
        let now = self.now();
        let id = request.invoice_id;
        let Some(currency) = request.lines.first().map(|l| l.amount.currency()) else {
            return Err(DomainError::InvalidField {
                field: "lines",
                reason: format!("1 to {} lines", crate::invoice::INVOICE_LINES_MAX),
            }
            .into());
        };
        // Everything finalizing needs, read before the invoice's first append, so
        // that drafting, finalizing and starting the first payment attempt are
        // one append: the customer (tax location, credit, card) and the tax rate
        // in force on the issue date.
        let customer = self.customer(customer_id).await?;
        let issued_at = request.issued_at.unwrap_or(now);
        let tax_basis = self
            .catalog()
            .await?
            .tax()
            .basis_at(customer.tax_location.as_ref(), issued_at);
        let preview = compute_totals(
            &request.lines,
            request.discount.as_ref(),
            &tax_basis,
            currency,
        )?;
        let zero = Money::zero(currency);
        let applied_before = customer.credit_applied.get(&id).copied();
        let takes_credit = applied_before.is_none()
            && preview.total.is_positive()
            && customer.credit_balance.is_some_and(|b| b.is_positive());
        if takes_credit {
            // Credit is taken only for an invoice already in the ledger: drafted
            // first, so a crash in between leaves a draft to finish, never credit
            // taken for an invoice that does not exist.
            let drafted = self
                .repo
                .execute_new::<Invoice, _>(&id.stream()?, &metadata(source), |_| {
                    Ok(InvoiceCommand::Draft {
                        customer_id,
                        subscription_id,
                        request: request.clone(),
                        now,
                    })
                })
                .await?;
            return self.finalize(drafted.state, Some(customer), source).await;
        }
        let credit_applied = applied_before.unwrap_or(zero);
        let opened = self
            .repo
            .execute_new::<Invoice, _>(&id.stream()?, &metadata(source), |_| {
                Ok(InvoiceCommand::Open {
                    customer_id,
                    subscription_id,
                    request: request.clone(),
                    tax_basis: tax_basis.clone(),
                    credit_applied,
                    attempt: FirstAttempt {
                        gateway: self.gateway.name().to_owned(),
                        payment_method: customer.payment_method.as_ref().map(|m| m.token.clone()),
                        due_at: issued_at,
                    },
                    now,
                })
            })
            .await?;
        self.finalize(opened.state, Some(customer), source).await
    }

    /// The customer credit an invoice of `total` takes: applied now (keyed by
    /// the invoice, so a retry takes the same), or already applied.
    async fn credit_for(
        &self,
        customer: &Customer,
        customer_id: CustomerId,
        invoice_id: InvoiceId,
        total: Money,
        source: Source,
    ) -> Result<Money, BillingError> {
        let zero = Money::zero(total.currency());
        if let Some(amount) = customer.credit_applied.get(&invoice_id) {
            return Ok(*amount);
        }
        if !total.is_positive() || !customer.credit_balance.is_some_and(|b| b.is_positive()) {
            return Ok(zero);
        }
        let applied = self
            .customer_command(customer_id, source, |_| CustomerCommand::ApplyCredit {
                invoice_id,
                max: total,
            })
            .await?;
        Ok(applied
            .state
            .credit_applied
            .get(&invoice_id)
            .copied()
            .unwrap_or(zero))
    }

    /// Finalizes a draft (applying customer credit), grants the credit of a
    /// negative total, and collects; `customer` when the caller just read it.
    async fn finalize(
        &self,
        invoice: Invoice,
        mut customer: Option<Customer>,
        source: Source,
    ) -> Result<(), BillingError> {
        let (Some(id), Some(customer_id), Some(currency)) =
            (invoice.id, invoice.customer_id, invoice.currency())
        else {
            return Ok(());
        };
        let invoice = if invoice.totals.is_none() {
            let loaded = match customer.take() {
                Some(customer) => customer,
                None => self.customer(customer_id).await?,
            };
            // The rate in force on the invoice's issue date, however late it is finalized.
            let issued_at = invoice.issued_at.unwrap_or_else(|| self.now());
            let tax_basis = self
                .catalog()
                .await?
                .tax()
                .basis_at(loaded.tax_location.as_ref(), issued_at);
            let customer = customer.insert(loaded);
            let preview = compute_totals(
                &invoice.lines,
                invoice.discount.as_ref(),
                &tax_basis,
                currency,
            )?;
            let credit_applied = self
                .credit_for(customer, customer_id, id, preview.total, source)
                .await?;
            let now = self.now();
            self.invoice_command(id, source, |_| InvoiceCommand::Finalize {
                tax_basis: tax_basis.clone(),
                credit_applied,
                now,
            })
            .await?
            .state
        } else {
            invoice
        };
        if let Some(totals) = &invoice.totals
            && totals.total.is_negative()
        {
            let owed = -totals.total;
            self.customer_command(customer_id, source, |_| CustomerCommand::GrantCredit {
                invoice_id: id,
                amount: owed,
            })
            .await?;
        }
        Box::pin(self.collect_with(invoice, customer, source, false, false)).await
    }

    /// Carries an invoice forward from wherever it stopped: finalizes a draft,
    /// grants the credit of a negative total, attempts payment of an open one when
    /// no attempt is waiting for a retry time, or gives up when the policy is spent.
    ///
    /// # Errors
    /// [`BillingError::GatewayUnavailable`] leaves the attempt open; the next call
    /// repeats it with the same idempotency key.
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn collect(&self, id: InvoiceId, source: Source) -> Result<(), BillingError> {
        let invoice = self.invoice(id).await?;
        if invoice.status == InvoiceStatus::Uncollectible
            && let Some(last) = invoice.attempts.last()
        {
            // Written off by a final action that a crash cut short: finish it
            // (each of its steps finds what it wrote).
            let campaign = self.dunning_campaign(id).await?;
            if campaign.subject.is_some() && campaign.ending.is_none() {
                return self.give_up(&invoice, last.effective_at(), source).await;
            }
            return Ok(());
        }
        self.finalize(invoice, None, source).await
    }

    /// Attempts payment of an open invoice now, whatever its retry schedule says
    /// (off-session: the customer is not there to authenticate).
    ///
    /// # Errors
    /// An invoice that is not open; gateway and ledger errors.
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn pay_now(&self, id: InvoiceId) -> Result<Invoice, BillingError> {
        self.pay_open(id, false).await
    }

    /// The customer confirms the payment of an open invoice with the card on
    /// file (the update-card page): an on-session charge, which a bank that
    /// asks for authentication (`authentication_required`) can accept.
    ///
    /// # Errors
    /// As [`Billing::pay_now`].
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn confirm_payment(&self, id: InvoiceId) -> Result<Invoice, BillingError> {
        self.pay_open(id, true).await
    }

    async fn pay_open(
        &self,
        id: InvoiceId,
        customer_present: bool,
    ) -> Result<Invoice, BillingError> {
        let invoice = self.invoice(id).await?;
        if invoice.status != InvoiceStatus::Open
            && crate::context::earlier_run_wrote(self.ledger(), &id.stream()?).await?
        {
            // A rerun of a request whose first run paid (or settled) it: finish
            // what that run may not have reached (a paid invoice settles its
            // subscription), then answer with it.
            self.collect_with(invoice, None, Source::Api, true, customer_present)
                .await?;
            return self.invoice(id).await;
        }
        if invoice.status != InvoiceStatus::Open {
            return Err(DomainError::InvalidTransition {
                kind: "invoice",
                action: "pay",
                state: format!("{:?}", invoice.status).to_lowercase(),
            }
            .into());
        }
        self.collect_with(invoice, None, Source::Api, true, customer_present)
            .await?;
        self.invoice(id).await
    }

    /// Collects an open invoice (`customer`: its customer if just read), or
    /// settles a paid one with its subscription.
    async fn collect_with(
        &self,
        invoice: Invoice,
        customer: Option<Customer>,
        source: Source,
        now_regardless: bool,
        customer_present: bool,
    ) -> Result<(), BillingError> {
        let (Some(id), Some(customer_id)) = (invoice.id, invoice.customer_id) else {
            return Ok(());
        };
        let now = self.now();
        match invoice.status {
            InvoiceStatus::Paid => return self.settled(&invoice, source).await,
            InvoiceStatus::Open => {}
            _ => return Ok(()),
        }
        let customer = match customer {
            Some(customer) => customer,
            None => self.customer(customer_id).await?,
        };
        let attempt = match invoice.pending_attempt() {
            Some(attempt) => attempt.clone(),
            None => {
                // When this attempt was due: asked now, a retry's scheduled time,
                // or the invoice's issue for the first; a late scheduler dates
                // the attempt (and what it causes) there, not when it caught up.
                let mut due_at = invoice.issued_at.unwrap_or(now);
                if let Some(last) = invoice.attempts.last() {
                    due_at = last.next_retry_at.unwrap_or(now);
                    // A card that cannot succeed is not retried; a new one is
                    // tried at once, whatever the schedule says.
                    let can_succeed = crate::recovery::retry_can_succeed(&invoice, &customer);
                    let card_changed = can_succeed
                        && !crate::decline::category(
                            last.outcome
                                .as_ref()
                                .and_then(ChargeOutcome::decline_code)
                                .unwrap_or_default(),
                        )
                        .retry_can_succeed();
                    if !now_regardless {
                        // The campaign's steps, if a crash came between the
                        // decline and its step.
                        self.record_dunning_steps(&invoice, &customer, source)
                            .await?;
                        match last.next_retry_at {
                            _ if card_changed => due_at = now,
                            Some(at) if at > now => return Ok(()),
                            Some(at) if !can_succeed => {
                                return self.give_up(&invoice, at, source).await;
                            }
                            Some(_) => {}
                            None => {
                                return self.give_up(&invoice, last.effective_at(), source).await;
                            }
                        }
                    }
                }
                if now_regardless {
                    due_at = now;
                }
                let token = customer.payment_method.as_ref().map(|m| m.token.clone());
                let started = self
                    .invoice_command(id, source, |_| InvoiceCommand::StartAttempt {
                        gateway: self.gateway.name().to_owned(),
                        payment_method: token.clone(),
                        due_at,
                        on_demand: now_regardless,
                        after_attempts: u32::try_from(invoice.attempts.len()).unwrap_or(u32::MAX),
                        now,
                    })
                    .await?;
                match started.state.pending_attempt() {
                    Some(attempt) => attempt.clone(),
                    None if started.state.status == InvoiceStatus::Paid => {
                        return self.settled(&started.state, source).await;
                    }
                    None => return Ok(()),
                }
            }
        };
        let outcome = match &attempt.payment_method {
            None => ChargeOutcome::Declined {
                decline_code: "no_payment_method".to_owned(),
                message: "The customer has no payment method on file.".to_owned(),
            },
            Some(token) => self
                .gateway
                .charge(&ChargeRequest {
                    idempotency_key: attempt.idempotency_key.clone(),
                    payment_method: token.clone(),
                    amount: attempt.amount,
                    customer: customer_id,
                    invoice: id,
                    attempt_no: attempt.attempt_no,
                    // The card on file's provider customer, when it is still the
                    // card this attempt charges.
                    provider_customer: customer
                        .payment_method
                        .as_ref()
                        .filter(|card| card.token == *token)
                        .and_then(|card| card.provider_customer.clone()),
                    customer_present,
                })
                .await
                .map_err(|e| BillingError::GatewayUnavailable(e.0))?,
        };
        // Retries are timed from when this attempt was due, so a late scheduler
        // catches up on the same schedule as one that never stopped.
        let failed_at = attempt.effective_at();
        let position = crate::recovery::decline_step(&invoice, &attempt);
        let next = match &outcome {
            ChargeOutcome::Declined { decline_code, .. } => Some(
                self.dunning_next(&invoice, &customer, decline_code, position, failed_at)
                    .await?,
            ),
            ChargeOutcome::Succeeded { .. } => None,
        };
        let recorded = self
            .invoice_command(id, source, |_| InvoiceCommand::RecordOutcome {
                attempt_no: attempt.attempt_no,
                outcome: outcome.clone(),
                next_retry_at: next.and_then(crate::recovery::next_retry_at),
                now,
            })
            .await?
            .state;
        if recorded.status == InvoiceStatus::Paid {
            return self.settled(&recorded, source).await;
        }
        self.follow_decline(&recorded, &customer, failed_at, source)
            .await
    }

    /// What follows a recorded decline, whoever heard it (Recur's own attempt or
    /// the provider's webhook): the subscription goes past due, the dunning
    /// campaign records its step (messages, a phone task, offers), and a spent
    /// policy takes its final action.
    pub(crate) async fn follow_decline(
        &self,
        recorded: &Invoice,
        customer: &Customer,
        failed_at: OffsetDateTime,
        source: Source,
    ) -> Result<(), BillingError> {
        if let (Some(id), Some(sub_id)) = (recorded.id, recorded.subscription_id) {
            self.subscription_command(sub_id, source, |_| {
                SubscriptionCommand::RecordPaymentFailed {
                    invoice_id: id,
                    at: failed_at,
                }
            })
            .await?;
        }
        self.record_dunning_steps(recorded, customer, source)
            .await?;
        let spent = recorded
            .attempts
            .last()
            .is_some_and(|last| last.outcome.is_some() && last.next_retry_at.is_none());
        if spent {
            self.give_up(recorded, failed_at, source).await?;
        }
        Ok(())
    }

    /// Tells an invoice's subscription it is settled (paid or voided), dated
    /// when that took effect.
    pub(crate) async fn settled(
        &self,
        invoice: &Invoice,
        source: Source,
    ) -> Result<(), BillingError> {
        self.end_campaign(invoice, source).await?;
        if let (Some(sub_id), Some(id)) = (invoice.subscription_id, invoice.id) {
            let outcome = if invoice.status == InvoiceStatus::Void {
                Settlement::Voided
            } else {
                Settlement::Paid
            };
            let at = invoice.settled_at.unwrap_or_else(|| self.now());
            self.subscription_command(sub_id, source, |_| {
                SubscriptionCommand::RecordInvoiceSettled {
                    invoice_id: id,
                    at,
                    outcome,
                }
            })
            .await?;
        }
        Ok(())
    }

    /// Moves deferred revenue of ended periods to revenue.
    ///
    /// # Errors
    /// Ledger errors.
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn recognize_revenue(&self, id: InvoiceId) -> Result<(), BillingError> {
        let now = self.now();
        self.invoice_command(id, Source::Scheduler, |_| {
            InvoiceCommand::RecognizeRevenue { now }
        })
        .await?;
        Ok(())
    }

    /// Refunds part or all of a paid invoice: the refund is numbered and its
    /// amount reserved in the ledger first (`RefundRequested`, decided on the
    /// version it appends after, so concurrent refunds each get their own number
    /// and together never exceed what was paid), then sent to the gateway with
    /// the key `<invoice>-refund-<n>`, then recorded.
    ///
    /// Once requested, the refund is accepted: if the gateway does not answer,
    /// it stays pending (the outcome says so) and the scheduler sends it again
    /// with the same key — a caller must not ask again, which would be a second
    /// refund.
    ///
    /// # Errors
    /// More than paid and not yet refunded or requested, an unpaid invoice, a bad
    /// amount: nothing is written.
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn refund(
        &self,
        id: InvoiceId,
        amount: Money,
        reason: &str,
    ) -> Result<RefundOutcome, BillingError> {
        let now = self.now();
        let requested = self
            .invoice_command(id, Source::Api, |_| InvoiceCommand::RequestRefund {
                amount,
                reason: reason.to_owned(),
                now,
            })
            .await?;
        // This request's refund, named by the event it wrote (a rerun answered
        // with its first run's event finds that refund, not the newest one).
        let refund_no = requested.events.iter().find_map(|event| match event {
            crate::invoice::InvoiceEvent::RefundRequested { refund_no, .. } => Some(*refund_no),
            _ => None,
        });
        let refund = refund_no
            .and_then(|no| {
                requested
                    .state
                    .refunds
                    .iter()
                    .find(|refund| refund.refund_no == no)
            })
            .cloned()
            .ok_or_else(|| DomainError::InvalidTransition {
                kind: "invoice",
                action: "refund",
                state: "unchanged by the refund request".into(),
            })?;
        match self
            .send_refund(&requested.state, &refund, Source::Api)
            .await
        {
            Ok(()) => Ok(RefundOutcome {
                refund_no: refund.refund_no,
                completed: true,
            }),
            Err(BillingError::GatewayUnavailable(reason)) => {
                tracing::warn!(
                    invoice = %id,
                    refund_no = refund.refund_no,
                    %reason,
                    "the gateway did not answer a refund; it stays pending and is sent again"
                );
                Ok(RefundOutcome {
                    refund_no: refund.refund_no,
                    completed: false,
                })
            }
            Err(error) => Err(error),
        }
    }

    /// Sends every refund of an invoice that was requested but not answered (the
    /// process stopped, or the gateway did not answer) with its own key, and
    /// records the answers; what the scheduler runs.
    ///
    /// # Errors
    /// Gateway and ledger errors (the next call tries again).
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn resume_refunds(&self, id: InvoiceId) -> Result<(), BillingError> {
        let invoice = self.invoice(id).await?;
        let pending: Vec<_> = invoice.pending_refunds().cloned().collect();
        for refund in &pending {
            self.send_refund(&invoice, refund, Source::Scheduler)
                .await?;
        }
        Ok(())
    }

    async fn send_refund(
        &self,
        invoice: &Invoice,
        refund: &crate::invoice::Refund,
        source: Source,
    ) -> Result<(), BillingError> {
        let Some(id) = invoice.id else {
            return Ok(());
        };
        let charge_id = invoice
            .attempts
            .iter()
            .find_map(|a| match &a.outcome {
                Some(ChargeOutcome::Succeeded { charge_id }) => Some(charge_id.clone()),
                _ => None,
            })
            .ok_or_else(|| DomainError::InvalidTransition {
                kind: "invoice",
                action: "refund",
                state: "paid without a charge".into(),
            })?;
        let refund_id = self
            .gateway
            .refund(&RefundRequest {
                idempotency_key: refund.idempotency_key.clone(),
                charge_id,
                amount: refund.amount,
            })
            .await
            .map_err(|e| BillingError::GatewayUnavailable(e.0))?;
        let now = self.now();
        self.invoice_command(id, source, |_| InvoiceCommand::RecordRefund {
            refund_no: refund.refund_no,
            refund_id: refund_id.clone(),
            now,
        })
        .await?;
        Ok(())
    }

    /// Reduces what an open invoice owes.
    ///
    /// # Errors
    /// An invoice that is not open; more than is owed.
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn credit_note(
        &self,
        id: InvoiceId,
        amount: Money,
        reason: &str,
    ) -> Result<Invoice, BillingError> {
        let now = self.now();
        let executed = self
            .invoice_command(id, Source::Api, |_| InvoiceCommand::IssueCreditNote {
                amount,
                reason: reason.to_owned(),
                now,
            })
            .await?;
        if executed.state.status == InvoiceStatus::Paid {
            self.settled(&executed.state, Source::Api).await?;
        }
        Ok(executed.state)
    }

    /// Voids an open invoice with nothing paid; credit it used goes back to the customer.
    ///
    /// # Errors
    /// A paid or uncollectible invoice.
    #[tracing::instrument(skip_all, fields(invoice = %id))]
    pub async fn void(&self, id: InvoiceId) -> Result<Invoice, BillingError> {
        let now = self.now();
        let executed = self
            .invoice_command(id, Source::Api, |_| InvoiceCommand::Void { now })
            .await?;
        let invoice = executed.state;
        if let (Some(customer_id), Some(totals)) = (invoice.customer_id, &invoice.totals)
            && totals.credit_applied.is_positive()
        {
            // A positive invoice never granted credit, so its id is free to key the return.
            self.customer_command(customer_id, Source::Api, |_| CustomerCommand::GrantCredit {
                invoice_id: id,
                amount: totals.credit_applied,
            })
            .await?;
        }
        self.settled(&invoice, Source::Api).await?;
        Ok(invoice)
    }
}

/// The stream of a customer's contact details (personal data), apart from the
/// customer's own stream.
///
/// # Errors
/// Never in practice: the name is short and plain.
pub fn contact_stream(id: CustomerId) -> Result<StreamId, LedgerError> {
    StreamId::parse(format!("contact-{id}"))
}

/// The stream recording who read a customer's personal data, and when.
///
/// # Errors
/// Never in practice: the name is short and plain.
pub fn access_stream(id: CustomerId) -> Result<StreamId, LedgerError> {
    StreamId::parse(format!("access-{id}"))
}

fn not_found_domain(kind: &'static str, id: impl ToString) -> DomainError {
    DomainError::NotFound {
        kind,
        id: id.to_string(),
    }
}

fn not_found(kind: &'static str, id: impl ToString) -> BillingError {
    not_found_domain(kind, id).into()
}

/// A tax rate's change takes effect now or later, never before: a back-dated
/// one would change the tax of invoices already issued and not yet finalized.
///
/// "Now" is when the request was made: a keyed request retried after a crash
/// is judged by the time of its first attempt, not refused because its `at`
/// has passed meanwhile.
fn not_before_now(
    field: &'static str,
    at: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Result<OffsetDateTime, DomainError> {
    let asked_at = crate::context::request_started_at().map_or(now, |started| started.min(now));
    match at {
        None => Ok(now),
        Some(at) if at >= asked_at => Ok(at),
        Some(_) => Err(DomainError::InvalidField {
            field,
            reason: "must be now or later: tax rates change from now on".into(),
        }),
    }
}

/// The catalog's stream.
fn catalog_stream() -> Result<StreamId, LedgerError> {
    StreamId::parse(crate::catalog::CATALOG_STREAM)
}

/// Decodes a recorded subscription, invoice, customer or coupon event for folds
/// outside the service (reports, the scheduler).
///
/// # Errors
/// [`DecodeError`](crate::tagged::DecodeError) naming the payload's type tag.
pub fn decode_event<E: crate::aggregate::DomainEvent>(
    payload: &str,
) -> Result<E, crate::tagged::DecodeError> {
    decode(payload)
}

impl std::fmt::Debug for Billing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Billing")
            .field("gateway", &self.gateway.name())
            .finish()
    }
}
