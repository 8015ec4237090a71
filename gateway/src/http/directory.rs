//! Which subscriptions and invoices belong to whom, followed from the ledger, so
//! lists can be paged by id (UUIDv7: creation order). A stand-in until the
//! projections serve these lists.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;

use recur_commands::billing::decode_event;
use recur_commands::invoice::InvoiceEvent;
use recur_commands::subscription::SubscriptionEvent;
use recur_commands::{CustomerId, InvoiceId, SubscriptionId};
use recur_ledger::{Ledger, LedgerError, Position};
use tokio::sync::Mutex;

/// The largest page.
pub const PAGE_ITEMS_MAX: usize = 100;
/// Events read per catch-up page.
const CATCH_UP_PAGE_EVENTS: usize = 5_000;
// A page shorter than asked for is taken as the end of the ledger.
const _: () = assert!(CATCH_UP_PAGE_EVENTS <= recur_ledger::limits::READ_PAGE_EVENTS_MAX);

#[derive(Default)]
struct Index {
    position: Position,
    subscriptions: BTreeSet<SubscriptionId>,
    subscriptions_by_customer: HashMap<CustomerId, BTreeSet<SubscriptionId>>,
    invoices: BTreeSet<InvoiceId>,
    invoices_by_customer: HashMap<CustomerId, BTreeSet<InvoiceId>>,
    invoices_by_subscription: HashMap<SubscriptionId, BTreeSet<InvoiceId>>,
}

/// The lists.
#[derive(Default)]
pub struct Directory {
    index: Mutex<Index>,
}

/// Which invoices to list.
#[derive(Clone, Copy, Debug)]
pub enum InvoiceFilter {
    /// All.
    All,
    /// One customer's.
    Customer(CustomerId),
    /// One subscription's.
    Subscription(SubscriptionId),
}

fn page<T: Ord + Copy>(
    set: Option<&BTreeSet<T>>,
    after: Option<T>,
    limit: usize,
) -> (Vec<T>, bool) {
    let Some(set) = set else {
        return (Vec::new(), false);
    };
    let start = after.map_or(Bound::Unbounded, Bound::Excluded);
    let mut items: Vec<T> = set
        .range((start, Bound::Unbounded))
        .take(limit + 1)
        .copied()
        .collect();
    let more = items.len() > limit;
    items.truncate(limit);
    (items, more)
}

impl Directory {
    async fn catch_up(
        &self,
        ledger: &Ledger,
    ) -> Result<tokio::sync::MutexGuard<'_, Index>, LedgerError> {
        let mut index = self.index.lock().await;
        loop {
            let events = ledger
                .read_all(index.position, CATCH_UP_PAGE_EVENTS)
                .await?;
            let Some(last) = events.last().map(|e| e.position) else {
                break;
            };
            for recorded in &events {
                match recorded.event_type.as_str() {
                    "SubscriptionStarted" => {
                        if let Ok(SubscriptionEvent::SubscriptionStarted {
                            subscription_id,
                            customer_id,
                            ..
                        }) = decode_event(&recorded.payload)
                        {
                            index.subscriptions.insert(subscription_id);
                            index
                                .subscriptions_by_customer
                                .entry(customer_id)
                                .or_default()
                                .insert(subscription_id);
                        }
                    }
                    "InvoiceDrafted" => {
                        if let Ok(InvoiceEvent::InvoiceDrafted {
                            invoice_id,
                            customer_id,
                            subscription_id,
                            ..
                        }) = decode_event(&recorded.payload)
                        {
                            index.invoices.insert(invoice_id);
                            index
                                .invoices_by_customer
                                .entry(customer_id)
                                .or_default()
                                .insert(invoice_id);
                            if let Some(sub) = subscription_id {
                                index
                                    .invoices_by_subscription
                                    .entry(sub)
                                    .or_default()
                                    .insert(invoice_id);
                            }
                        }
                    }
                    _ => {}
                }
            }
            index.position = last;
            if events.len() < CATCH_UP_PAGE_EVENTS {
                break;
            }
        }
        Ok(index)
    }

    /// A page of subscriptions (of one customer, or all), after `after`.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn subscriptions(
        &self,
        ledger: &Ledger,
        customer: Option<CustomerId>,
        after: Option<SubscriptionId>,
        limit: usize,
    ) -> Result<(Vec<SubscriptionId>, bool), LedgerError> {
        let index = self.catch_up(ledger).await?;
        let set = match customer {
            Some(customer) => index.subscriptions_by_customer.get(&customer),
            None => Some(&index.subscriptions),
        };
        Ok(page(set, after, limit))
    }

    /// A page of invoices, after `after`.
    ///
    /// # Errors
    /// Ledger errors.
    pub async fn invoices(
        &self,
        ledger: &Ledger,
        filter: InvoiceFilter,
        after: Option<InvoiceId>,
        limit: usize,
    ) -> Result<(Vec<InvoiceId>, bool), LedgerError> {
        let index = self.catch_up(ledger).await?;
        let set = match filter {
            InvoiceFilter::All => Some(&index.invoices),
            InvoiceFilter::Customer(customer) => index.invoices_by_customer.get(&customer),
            InvoiceFilter::Subscription(sub) => index.invoices_by_subscription.get(&sub),
        };
        Ok(page(set, after, limit))
    }
}
