//! The customer view: what support needs on one page — segment, card, credit,
//! invoices, what was paid and refunded, what is open, and the dunning state.
//! Subscriptions and MRR come from the `mrr` projection's tables.

use std::collections::{BTreeMap, BTreeSet};

use foldhash::HashMap;

use recur_commands::aggregate::{Aggregate, fold};
use recur_commands::customer::CustomerEvent;
use recur_commands::invoice::{Invoice, InvoiceEvent, InvoiceStatus};
use recur_commands::subscription::SubscriptionEvent;
use recur_ledger::{Ledger, Position, StreamId};
use time::format_description::well_known::Rfc3339;

use crate::db::{Db, Stmt};
use crate::runtime::{Delivered, Projection, ProjectionError, earlier_events};

/// One row per customer.
pub const VIEW: &str = "customer_view_v2";
/// One row per open invoice: what it owes and since when (for AR aging).
pub const OPEN_INVOICES: &str = "open_invoices_v1";
/// One row per subscription: whose it is (the subscription lists).
pub const SUBSCRIPTIONS: &str = "customer_subscriptions_v2";
/// One row per invoice: whose it is and for which subscription (the invoice lists).
pub const INVOICES: &str = "customer_invoices_v2";
/// The largest page a list answers.
pub const PAGE_ITEMS_MAX: usize = 100;

/// A customer's row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CustomerRow {
    /// standard, high_value, trial.
    pub segment: String,
    /// "visa 4242 12/2030", or empty.
    pub card: String,
    /// Credit owed to the customer.
    pub credit_minor: i64,
    /// Invoices issued.
    pub invoices: i64,
    /// Collected.
    pub paid_minor: i64,
    /// Given back.
    pub refunded_minor: i64,
    /// Invoices still open.
    pub open_invoices: i64,
    /// Owed on them.
    pub open_minor: i64,
    /// Declined payment attempts.
    pub failed_payments: i64,
    /// Open invoices with a declined attempt (being retried).
    pub in_dunning: i64,
    /// The latest scheduled retry, RFC 3339.
    pub next_retry_at: String,
    /// The latest successful payment, RFC 3339.
    pub last_payment_at: String,
    /// When the customer's personal data was erased, RFC 3339, or empty.
    pub erased_at: String,
}

/// The customer-view projection.
#[derive(Default)]
pub struct Customers {
    rows: HashMap<String, CustomerRow>,
    /// Invoices not settled yet, whole.
    invoices: HashMap<StreamId, Invoice>,
    /// Settled invoices (paid, void, uncollectible): only their customer, since
    /// what can still happen to them (revenue recognised, a refund) needs no more.
    settled: HashMap<StreamId, String>,
    /// Customers whose row changed in this batch: written once each at flush.
    changed: BTreeSet<String>,
    /// Open invoices that changed in this batch; written once each at flush.
    open_changed: BTreeMap<String, OpenChange>,
}

/// An open invoice's row, changed in the current batch.
#[derive(Debug)]
struct OpenChange {
    /// Whether the row was stored before this batch (the invoice was open then).
    stored: bool,
    /// (customer, since, owed) while open; None once closed.
    now: Option<(String, String, i64)>,
}

impl Customers {
    /// A fresh projection.
    pub fn new() -> Self {
        Self::default()
    }
}

fn minor(money: recur_ledger::Money) -> i64 {
    money.to_minor().unwrap_or(0)
}

/// (open?, in dunning?, owed) of an invoice.
fn standing(invoice: &Invoice) -> (bool, bool, i64) {
    let open = invoice.status == InvoiceStatus::Open;
    let declined = invoice.attempts.iter().any(|a| {
        matches!(
            a.outcome,
            Some(recur_commands::invoice::ChargeOutcome::Declined { .. })
        )
    });
    (
        open,
        open && declined,
        if open {
            minor(invoice.amount_remaining())
        } else {
            0
        },
    )
}

fn upsert(customer: &str, row: &CustomerRow) -> Stmt {
    Stmt::new(
        format!(
            "INSERT INTO {VIEW} (customer_id, segment, card, credit_minor, invoices, paid_minor, refunded_minor,
             open_invoices, open_minor, failed_payments, in_dunning, next_retry_at, last_payment_at, erased_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT (customer_id) DO UPDATE SET segment = excluded.segment, card = excluded.card,
             credit_minor = excluded.credit_minor, invoices = excluded.invoices, paid_minor = excluded.paid_minor,
             refunded_minor = excluded.refunded_minor, open_invoices = excluded.open_invoices,
             open_minor = excluded.open_minor, failed_payments = excluded.failed_payments,
             in_dunning = excluded.in_dunning, next_retry_at = excluded.next_retry_at,
             last_payment_at = excluded.last_payment_at, erased_at = excluded.erased_at"
        ),
        vec![
            customer.into(),
            row.segment.clone().into(),
            row.card.clone().into(),
            row.credit_minor.into(),
            row.invoices.into(),
            row.paid_minor.into(),
            row.refunded_minor.into(),
            row.open_invoices.into(),
            row.open_minor.into(),
            row.failed_payments.into(),
            row.in_dunning.into(),
            row.next_retry_at.clone().into(),
            row.last_payment_at.clone().into(),
            row.erased_at.clone().into(),
        ],
    )
    .keyed(format!("view:{customer}"))
}

impl Projection for Customers {
    const NAME: &'static str = "customers";
    const VERSION: u32 = 6;

    fn tables(&self) -> Vec<&'static str> {
        vec![VIEW, OPEN_INVOICES, SUBSCRIPTIONS, INVOICES]
    }

    fn schema(&self) -> Vec<Stmt> {
        vec![Stmt::new(
            format!(
                "CREATE TABLE IF NOT EXISTS {VIEW} (customer_id TEXT PRIMARY KEY, segment TEXT NOT NULL, card TEXT NOT NULL,
                 credit_minor BIGINT NOT NULL, invoices BIGINT NOT NULL, paid_minor BIGINT NOT NULL,
                 refunded_minor BIGINT NOT NULL, open_invoices BIGINT NOT NULL, open_minor BIGINT NOT NULL,
                 failed_payments BIGINT NOT NULL, in_dunning BIGINT NOT NULL, next_retry_at TEXT NOT NULL,
                 last_payment_at TEXT NOT NULL, erased_at TEXT NOT NULL)"
            ),
            vec![],
        ),
        Stmt::new(
            format!(
                "CREATE TABLE IF NOT EXISTS {OPEN_INVOICES} (invoice_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
                 since TEXT NOT NULL, owed_minor BIGINT NOT NULL)"
            ),
            vec![],
        ),
        // The lists page in the order the ledger recorded each resource's
        // start (its position): ids made by a request's rerun carry the time
        // of its first claim, so id order is not creation order.
        Stmt::new(
            format!(
                "CREATE TABLE IF NOT EXISTS {SUBSCRIPTIONS} (subscription_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
                 position BIGINT NOT NULL)"
            ),
            vec![],
        ),
        Stmt::new(
            format!(
                "CREATE INDEX IF NOT EXISTS {SUBSCRIPTIONS}_by_customer ON {SUBSCRIPTIONS} (customer_id, position)"
            ),
            vec![],
        ),
        Stmt::new(
            format!(
                "CREATE INDEX IF NOT EXISTS {SUBSCRIPTIONS}_by_position ON {SUBSCRIPTIONS} (position)"
            ),
            vec![],
        ),
        Stmt::new(
            format!(
                "CREATE TABLE IF NOT EXISTS {INVOICES} (invoice_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL,
                 subscription_id TEXT, position BIGINT NOT NULL)"
            ),
            vec![],
        ),
        Stmt::new(
            format!(
                "CREATE INDEX IF NOT EXISTS {INVOICES}_by_customer ON {INVOICES} (customer_id, position)"
            ),
            vec![],
        ),
        Stmt::new(
            format!(
                "CREATE INDEX IF NOT EXISTS {INVOICES}_by_subscription ON {INVOICES} (subscription_id, position)"
            ),
            vec![],
        ),
        Stmt::new(
            format!("CREATE INDEX IF NOT EXISTS {INVOICES}_by_position ON {INVOICES} (position)"),
            vec![],
        )]
    }

    fn flush(&mut self, writes: &mut Vec<Stmt>) {
        for customer in std::mem::take(&mut self.changed) {
            if let Some(row) = self.rows.get(&customer) {
                writes.push(upsert(&customer, row));
            }
        }
        for (invoice_id, change) in std::mem::take(&mut self.open_changed) {
            writes.push(match change.now {
                // Opened and settled within the batch: no row was ever written.
                None if !change.stored => continue,
                Some((customer, since, owed)) => Stmt::new(
                    format!(
                        "INSERT INTO {OPEN_INVOICES} (invoice_id, customer_id, since, owed_minor) VALUES (?, ?, ?, ?)
                         ON CONFLICT (invoice_id) DO UPDATE SET owed_minor = excluded.owed_minor"
                    ),
                    vec![invoice_id.into(), customer.into(), since.into(), owed.into()],
                ),
                None => Stmt::new(
                    format!("DELETE FROM {OPEN_INVOICES} WHERE invoice_id IN (?)"),
                    vec![invoice_id.into()],
                ),
            });
        }
    }

    async fn load(
        &mut self,
        db: &Db,
        _ledger: &Ledger,
        _at: Position,
    ) -> Result<(), ProjectionError> {
        self.rows.clear();
        self.invoices.clear();
        self.settled.clear();
        self.changed.clear();
        self.open_changed.clear();
        for row in read(db, None).await? {
            self.rows.insert(row.0, row.1);
        }
        Ok(())
    }

    async fn apply(
        &mut self,
        event: &Delivered,
        ledger: &Ledger,
        writes: &mut Vec<Stmt>,
    ) -> Result<(), ProjectionError> {
        match event.stream_id.category() {
            "subscription" => {
                if let SubscriptionEvent::SubscriptionStarted {
                    subscription_id,
                    customer_id,
                    ..
                } = event.decoded::<SubscriptionEvent>(Self::NAME)?
                {
                    writes.push(Stmt::new(
                        format!(
                            "INSERT INTO {SUBSCRIPTIONS} (subscription_id, customer_id, position) VALUES (?, ?, ?)
                             ON CONFLICT (subscription_id) DO NOTHING"
                        ),
                        vec![
                            subscription_id.to_string().into(),
                            customer_id.to_string().into(),
                            position_value(event.position),
                        ],
                    ));
                }
            }
            "customer" => {
                let decoded = event.decoded::<CustomerEvent>(Self::NAME)?;
                let customer = event
                    .stream_id
                    .as_str()
                    .trim_start_matches("customer-")
                    .to_owned();
                let row = self.rows.entry(customer.clone()).or_default();
                match decoded {
                    CustomerEvent::CustomerCreated { segment, .. }
                    | CustomerEvent::SegmentSet { segment } => {
                        row.segment = serde_json::to_value(segment)
                            .ok()
                            .and_then(|v| v.as_str().map(str::to_owned))
                            .unwrap_or_default();
                    }
                    CustomerEvent::PaymentMethodAttached { method } => {
                        row.card = format!(
                            "{} {} {:02}/{}",
                            method.brand, method.last4, method.exp_month, method.exp_year
                        );
                    }
                    CustomerEvent::PaymentMethodDetached { .. } => row.card.clear(),
                    CustomerEvent::CreditGranted { amount, .. } => {
                        row.credit_minor += minor(*amount)
                    }
                    CustomerEvent::CreditApplied { amount, .. } => {
                        row.credit_minor -= minor(*amount)
                    }
                    CustomerEvent::PersonalDataErased { at, .. } => {
                        row.erased_at = at.format(&Rfc3339).unwrap_or_default();
                    }
                    // Not shown in the list (the dunning issue will act on
                    // an expiring card).
                    CustomerEvent::TaxLocationSet { .. }
                    | CustomerEvent::ContactChanged { .. }
                    | CustomerEvent::CardExpiring { .. } => {
                        return Ok(());
                    }
                }
                self.changed.insert(customer);
            }
            "invoice" => {
                let decoded = event.decoded::<InvoiceEvent>(Self::NAME)?;
                if let InvoiceEvent::InvoiceDrafted {
                    invoice_id,
                    customer_id,
                    subscription_id,
                    ..
                } = decoded
                {
                    writes.push(Stmt::new(
                        format!(
                            "INSERT INTO {INVOICES} (invoice_id, customer_id, subscription_id, position) VALUES (?, ?, ?, ?)
                             ON CONFLICT (invoice_id) DO NOTHING"
                        ),
                        vec![
                            invoice_id.to_string().into(),
                            customer_id.to_string().into(),
                            subscription_id.map_or(crate::db::Value::Null, |s| s.to_string().into()),
                            position_value(event.position),
                        ],
                    ));
                }
                if let Some(customer) = self.settled.get(&event.stream_id) {
                    match decoded {
                        InvoiceEvent::RevenueRecognized { .. } => return Ok(()),
                        InvoiceEvent::InvoiceRefunded { amount, .. } => {
                            let customer = customer.clone();
                            let row = self.rows.entry(customer.clone()).or_default();
                            row.refunded_minor += minor(*amount);
                            if row.in_dunning == 0 {
                                row.next_retry_at.clear();
                            }
                            self.changed.insert(customer);
                            return Ok(());
                        }
                        // Anything else: fold the whole invoice again, below.
                        _ => {
                            self.settled.remove(&event.stream_id);
                        }
                    }
                }
                if !self.invoices.contains_key(&event.stream_id) {
                    // First seen since loading: fold what came before this event.
                    let earlier = earlier_events::<InvoiceEvent>(Self::NAME, ledger, event).await?;
                    self.invoices
                        .insert(event.stream_id.clone(), fold(&earlier));
                }
                let Some(invoice) = self.invoices.get_mut(&event.stream_id) else {
                    return Ok(());
                };
                let before = standing(invoice);
                invoice.evolve(decoded);
                let after = standing(invoice);
                let settled = matches!(
                    invoice.status,
                    InvoiceStatus::Paid | InvoiceStatus::Void | InvoiceStatus::Uncollectible
                );
                let Some(customer) = invoice.customer_id.map(|c| c.to_string()) else {
                    return Ok(());
                };
                let invoice_id = invoice.id.map(|i| i.to_string()).unwrap_or_default();
                if after.0 || before.0 {
                    let now = after.0.then(|| {
                        // Aged from its issue in the business, not its drafting.
                        let since = invoice
                            .issued_at
                            .or(invoice.created_at)
                            .map(|t| t.date().to_string())
                            .unwrap_or_default();
                        (customer.clone(), since, after.2)
                    });
                    self.open_changed
                        .entry(invoice_id)
                        .or_insert(OpenChange {
                            stored: before.0,
                            now: None,
                        })
                        .now = now;
                }
                let row = self.rows.entry(customer.clone()).or_default();
                row.open_invoices += i64::from(after.0) - i64::from(before.0);
                row.in_dunning += i64::from(after.1) - i64::from(before.1);
                row.open_minor += after.2 - before.2;
                match decoded {
                    InvoiceEvent::InvoiceDrafted { .. } => row.invoices += 1,
                    InvoiceEvent::PaymentSucceeded { amount, .. } => {
                        row.paid_minor += minor(*amount);
                        row.last_payment_at =
                            event.recorded_at.format(&Rfc3339).unwrap_or_default();
                    }
                    InvoiceEvent::PaymentFailed { next_retry_at, .. } => {
                        row.failed_payments += 1;
                        row.next_retry_at = next_retry_at
                            .and_then(|t| t.format(&Rfc3339).ok())
                            .unwrap_or_default();
                    }
                    InvoiceEvent::InvoiceRefunded { amount, .. } => {
                        row.refunded_minor += minor(*amount)
                    }
                    _ => {}
                }
                if row.in_dunning == 0 {
                    row.next_retry_at.clear();
                }
                if settled {
                    self.invoices.remove(&event.stream_id);
                    self.settled
                        .insert(event.stream_id.clone(), customer.clone());
                }
                self.changed.insert(customer);
            }
            _ => {}
        }
        Ok(())
    }
}

/// Reads one customer's row (or all).
///
/// # Errors
/// Database errors.
pub async fn read(
    db: &Db,
    customer: Option<&str>,
) -> Result<Vec<(String, CustomerRow)>, crate::db::DbError> {
    let (filter, params) = match customer {
        Some(id) => ("WHERE customer_id = ?", vec![id.into()]),
        None => ("", vec![]),
    };
    type Row = (
        String,
        String,
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        i64,
        String,
        String,
        String,
    );
    let rows: Vec<Row> = db
        .rows(&Stmt::new(
            format!(
                "SELECT customer_id, segment, card, credit_minor, invoices, paid_minor, refunded_minor, open_invoices,
                 open_minor, failed_payments, in_dunning, next_retry_at, last_payment_at, erased_at FROM {VIEW} {filter}"
            ),
            params,
        ))
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            (
                r.0,
                CustomerRow {
                    segment: r.1,
                    card: r.2,
                    credit_minor: r.3,
                    invoices: r.4,
                    paid_minor: r.5,
                    refunded_minor: r.6,
                    open_invoices: r.7,
                    open_minor: r.8,
                    failed_payments: r.9,
                    in_dunning: r.10,
                    next_retry_at: r.11,
                    last_payment_at: r.12,
                    erased_at: r.13,
                },
            )
        })
        .collect())
}

/// Receivables by age on `day`: (0–30, 31–60, 61–90, over 90 days) since each open
/// invoice was issued, in minor units.
///
/// # Errors
/// Database errors.
pub async fn aging(db: &Db, day: time::Date) -> Result<[i64; 4], crate::db::DbError> {
    let stmt = Stmt::new(
        format!("SELECT since, owed_minor FROM {OPEN_INVOICES}"),
        vec![],
    );
    let rows: Vec<(String, i64)> = db.rows(&stmt).await?;
    let mut buckets = [0i64; 4];
    let format = time::macros::format_description!("[year]-[month]-[day]");
    for (row, (since, owed)) in rows.into_iter().enumerate() {
        let since = time::Date::parse(&since, format).map_err(|_| crate::db::DbError::Corrupt {
            query: format!("SELECT since FROM {OPEN_INVOICES}"),
            row,
            reason: crate::db::RowError::Column {
                column: 0,
                error: crate::db::ColumnError {
                    expected: "a day",
                    found: format!("{since:?}"),
                },
            },
        })?;
        let slot = match (day - since).whole_days() {
            ..=30 => 0,
            31..=60 => 1,
            61..=90 => 2,
            _ => 3,
        };
        buckets[slot] += owed;
    }
    Ok(buckets)
}

/// Which invoices a list holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InvoiceFilter {
    /// All.
    All,
    /// One customer's.
    Customer(String),
    /// One subscription's.
    Subscription(String),
}

/// A ledger position as a bound value.
fn position_value(position: Position) -> crate::db::Value {
    i64::try_from(position.0).unwrap_or(i64::MAX).into()
}

/// A page of ids from `table`'s `id` column, in the order the ledger recorded
/// them (their `position`), after the item `after` names, at most `limit`
/// (1..=[`PAGE_ITEMS_MAX`]), filtered by `column = value`; and whether more
/// follow. None when `after` names no item of the table.
async fn page(
    db: &Db,
    (table, id): (&str, &str),
    filter: Option<(&str, String)>,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<(Vec<String>, bool)>, crate::db::DbError> {
    let limit = limit.clamp(1, PAGE_ITEMS_MAX);
    let mut sql = format!("SELECT {id} FROM {table} WHERE 1 = 1");
    let mut params = Vec::new();
    let mut cursor_sql = format!("SELECT position FROM {table} WHERE {id} = ?");
    let mut cursor_params: Vec<crate::db::Value> = after.into_iter().map(Into::into).collect();
    if let Some((column, value)) = filter {
        sql.push_str(&format!(" AND {column} = ?"));
        params.push(value.clone().into());
        // The cursor must be an item of this list, not of another one.
        cursor_sql.push_str(&format!(" AND {column} = ?"));
        cursor_params.push(value.into());
    }
    if after.is_some() {
        let cursor: Vec<(i64,)> = db.rows(&Stmt::new(cursor_sql, cursor_params)).await?;
        let Some((position,)) = cursor.first() else {
            return Ok(None);
        };
        sql.push_str(" AND position > ?");
        params.push((*position).into());
    }
    sql.push_str(&format!(" ORDER BY position LIMIT {}", limit + 1));
    let rows: Vec<(String,)> = db.rows(&Stmt::new(sql, params)).await?;
    let more = rows.len() > limit;
    Ok(Some((
        rows.into_iter().take(limit).map(|(id,)| id).collect(),
        more,
    )))
}

/// A page of subscription ids (one customer's, or all), oldest first; None
/// when `after` names no subscription.
///
/// # Errors
/// Database errors.
pub async fn subscriptions_page(
    db: &Db,
    customer: Option<&str>,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<(Vec<String>, bool)>, crate::db::DbError> {
    let filter = customer.map(|c| ("customer_id", c.to_owned()));
    page(db, (SUBSCRIPTIONS, "subscription_id"), filter, after, limit).await
}

/// A page of invoice ids, oldest first; None when `after` names no invoice.
///
/// # Errors
/// Database errors.
pub async fn invoices_page(
    db: &Db,
    filter: &InvoiceFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<Option<(Vec<String>, bool)>, crate::db::DbError> {
    let filter = match filter {
        InvoiceFilter::All => None,
        InvoiceFilter::Customer(c) => Some(("customer_id", c.clone())),
        InvoiceFilter::Subscription(s) => Some(("subscription_id", s.clone())),
    };
    page(db, (INVOICES, "invoice_id"), filter, after, limit).await
}
