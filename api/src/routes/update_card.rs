//! /update-card/{token}: the hosted page where a customer puts a new card on
//! file from a dunning message's link, and the invoice the link names is paid
//! at once (docs/update_card.md).
//!
//! Public: no API key — the signed, expiring token in the path is the
//! credential ([`recur_commands::update_card_link`]); the per-address rate
//! limit still applies. Server-rendered HTML, no script: every value written
//! into the page is escaped, and every answer carries headers that forbid
//! framing, caching, referrers and anything loaded from elsewhere. The token
//! is never logged (the request's span records the path redacted,
//! [`crate::loggable_path`]).
//!
//! A bad or expired link is refused before anything is read or written. A link
//! may be used until it expires (a customer retries with another card); a paid
//! invoice is never charged again, since only an open invoice is paid.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use recur_commands::customer::{Customer, PaymentMethod};
use recur_commands::invoice::{ChargeOutcome, Invoice, InvoiceStatus};
use recur_commands::update_card_link::{self, Claims, LinkError, LinkKey};
use recur_commands::{BillingError, DomainError, SimulatedGateway};
use serde::Deserialize;
use time::OffsetDateTime;

use crate::AppState;

/// The actor recorded on what the page writes (no API key is involved).
pub const ACTOR: &str = "update-card-link";
/// The form field holding the new card's token.
pub const FIELD: &str = "payment_method";
/// The page's Content-Security-Policy: nothing loads from anywhere, styles
/// are the page's own, and the form posts only back here.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'";

/// What the page needs: the key that signs links, where the server is reached
/// from outside, and whose page it is.
#[derive(Clone, Debug)]
pub struct UpdateCardConfig {
    /// Signs and checks the links (`RECUR_LINK_KEY`).
    pub key: LinkKey,
    /// The server's address as customers reach it (`RECUR_PUBLIC_URL`), the
    /// base of every link.
    pub public_url: String,
    /// The business's name, shown on the page.
    pub business_name: String,
}

impl UpdateCardConfig {
    /// The link granting `claims`: `{public_url}/update-card/{token}`.
    pub fn link(&self, claims: &Claims) -> String {
        update_card_link::url(&self.public_url, &update_card_link::sign(&self.key, claims))
    }
}

/// The form `POST /update-card/{token}` takes.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CardForm {
    /// The new card's token: a test token with the simulated gateway
    /// (`pm_card_visa`), a Stripe PaymentMethod id (`pm_…`) with Stripe;
    /// never a card number.
    pub payment_method: String,
}

/// Show the update-card page: the business, the invoice's amount due and
/// status, the card on file, and the form for a new card.
#[utoipa::path(get, operation_id = "update_card_page", path = "/update-card/{token}", tag = "update_card",
    params(("token" = String, Path, description = "The link's signed token: the credential (no API key)")),
    responses((status = 200, description = "The page", body = String, content_type = "text/html"),
              (status = 400, description = "Not a link (`malformed`)", body = String, content_type = "text/html"),
              (status = 401, description = "A link not signed by this server (`bad_signature`)", body = String, content_type = "text/html"),
              (status = 410, description = "An expired link, or one whose customer is gone", body = String, content_type = "text/html"),
              (status = 503, description = "The ledger is unavailable", body = String, content_type = "text/html")))]
pub async fn show(
    State(state): State<Arc<AppState>>,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    let (claims, token, customer, invoice) = match link_subject(&state, token).await {
        Ok(subject) => subject,
        Err(refused) => return refused,
    };
    let config = &state.update_card;
    record_click(&state, &claims).await;
    let mut body = String::new();
    invoice_section(&mut body, invoice.as_ref());
    card_section(&mut body, &customer);
    if let Some(invoice) = invoice
        .as_ref()
        .filter(|i| awaits_authentication(i) && customer.payment_method.is_some())
    {
        let _ = write!(
            body,
            "<form method=\"post\" action=\"/update-card/{token}/confirm\">\
             <p>Your bank asks you to confirm this payment. Confirm it with the card \
             on file, or save a new card below.</p>\
             <button type=\"submit\">Confirm payment of {}</button></form>",
            escape(&invoice.amount_remaining().to_string()),
            token = escape(&token),
        );
    }
    let _ = write!(
        body,
        "<form method=\"post\" action=\"/update-card/{token}\">\
         <label for=\"{FIELD}\">New card token</label>\
         <input id=\"{FIELD}\" name=\"{FIELD}\" type=\"text\" required minlength=\"3\" \
         maxlength=\"255\" autocomplete=\"off\" spellcheck=\"false\" placeholder=\"pm_…\">\
         <button type=\"submit\">{}</button></form>\
         <p class=\"note\">Your card details go to the payment provider, never to us: \
         paste the token your card was saved as.</p>",
        if invoice
            .as_ref()
            .is_some_and(|i| i.status == InvoiceStatus::Open)
        {
            "Save card and pay"
        } else {
            "Save card"
        },
        token = escape(&token),
    );
    page(StatusCode::OK, config, "Update your card", &body)
}

/// Put the new card on file; if the link names an open invoice, pay it now.
#[utoipa::path(post, operation_id = "update_card_submit", path = "/update-card/{token}", tag = "update_card",
    params(("token" = String, Path, description = "The link's signed token: the credential (no API key)")),
    request_body(content = inline(CardForm), content_type = "application/x-www-form-urlencoded"),
    responses((status = 200, description = "The card is on file: the invoice paid, still declined (with the reason), or nothing due", body = String, content_type = "text/html"),
              (status = 400, description = "Not a link (`malformed`), or no card token in the form", body = String, content_type = "text/html"),
              (status = 401, description = "A link not signed by this server (`bad_signature`)", body = String, content_type = "text/html"),
              (status = 410, description = "An expired link, or one whose customer is gone: nothing written", body = String, content_type = "text/html"),
              (status = 422, description = "The card was refused (declined when attached, not a card token): nothing written", body = String, content_type = "text/html"),
              (status = 503, description = "The ledger or the payment provider is unavailable", body = String, content_type = "text/html")))]
pub async fn submit(
    State(state): State<Arc<AppState>>,
    token: Result<Path<String>, PathRejection>,
    form: Result<Form<CardForm>, FormRejection>,
) -> Response {
    let (claims, _) = match checked(&state, token) {
        Ok(checked) => checked,
        Err(refused) => return refused,
    };
    let config = &state.update_card;
    let Ok(Form(form)) = form else {
        return message(
            StatusCode::BAD_REQUEST,
            config,
            "No card given",
            "The form did not hold a card token. Go back and enter one.",
        );
    };
    let now = super::ledger_now(&state);
    let method = match card_for(
        state.billing.gateway_name(),
        form.payment_method.trim(),
        now,
    ) {
        Ok(method) => method,
        Err(error) => return failure(config, &error.into()),
    };
    let context = link_context();
    let customer_id = claims.customer_id;
    let billing = Arc::clone(&state.billing);
    let (attached, _) = recur_commands::context::within(context.clone(), async {
        billing.attach_payment_method(customer_id, method).await
    })
    .await;
    if let Err(error) = attached {
        return failure(config, &error);
    }
    let invoice = match invoice_of(&state, &claims).await {
        Ok(invoice) => invoice,
        Err(error) => return failure(config, &error),
    };
    let saved = "Your new card is on file.";
    let Some(invoice) = invoice else {
        return message(
            StatusCode::OK,
            config,
            "Card saved",
            &format!("{saved} Thank you."),
        );
    };
    if invoice.status != InvoiceStatus::Open {
        return not_open(config, &invoice, &format!("{saved} "));
    }
    let Some(invoice_id) = invoice.id else {
        return failure(config, &BillingError::from(not_found("invoice")));
    };
    let (paid, _) = recur_commands::context::within(context, billing.pay_now(invoice_id)).await;
    payment_answer(config, paid, &format!("{saved} "))
}

/// Confirm the payment of the link's open invoice with the card on file, the
/// customer present: what a bank that asks for authentication
/// (`authentication_required`) waits for.
#[utoipa::path(post, operation_id = "update_card_confirm", path = "/update-card/{token}/confirm", tag = "update_card",
    params(("token" = String, Path, description = "The link's signed token: the credential (no API key)")),
    responses((status = 200, description = "The invoice paid, still declined (with the reason), or nothing due", body = String, content_type = "text/html"),
              (status = 400, description = "Not a link (`malformed`)", body = String, content_type = "text/html"),
              (status = 401, description = "A link not signed by this server (`bad_signature`)", body = String, content_type = "text/html"),
              (status = 410, description = "An expired link, or one whose customer is gone: nothing written", body = String, content_type = "text/html"),
              (status = 422, description = "A link without an invoice, or no card on file: nothing written", body = String, content_type = "text/html"),
              (status = 503, description = "The ledger or the payment provider is unavailable", body = String, content_type = "text/html")))]
pub async fn confirm(
    State(state): State<Arc<AppState>>,
    token: Result<Path<String>, PathRejection>,
) -> Response {
    let (_, _, customer, invoice) = match link_subject(&state, token).await {
        Ok(subject) => subject,
        Err(refused) => return refused,
    };
    let config = &state.update_card;
    let Some(invoice) = invoice else {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            config,
            "Nothing to confirm",
            "This link is for your card only: there is no payment to confirm.",
        );
    };
    if invoice.status != InvoiceStatus::Open {
        return not_open(config, &invoice, "");
    }
    if customer.payment_method.is_none() {
        return message(
            StatusCode::UNPROCESSABLE_ENTITY,
            config,
            "No card on file",
            "There is no card on file to pay with. Go back and save one.",
        );
    }
    let Some(invoice_id) = invoice.id else {
        return failure(config, &BillingError::from(not_found("invoice")));
    };
    let context = link_context();
    let billing = Arc::clone(&state.billing);
    let (paid, _) =
        recur_commands::context::within(context, billing.confirm_payment(invoice_id)).await;
    payment_answer(config, paid, "")
}

/// The page after a payment of the link's invoice was asked for.
fn payment_answer(
    config: &UpdateCardConfig,
    paid: Result<Invoice, BillingError>,
    lead: &str,
) -> Response {
    match paid {
        Ok(invoice) if invoice.status == InvoiceStatus::Paid => message(
            StatusCode::OK,
            config,
            "Paid",
            &format!(
                "{lead}Thank you: {} was paid.",
                invoice
                    .amount_paid
                    .map_or_else(|| "the invoice".to_owned(), |paid| paid.to_string())
            ),
        ),
        Ok(invoice) if invoice.status == InvoiceStatus::Open => message(
            StatusCode::OK,
            config,
            "Payment declined",
            &format!(
                "{lead}The payment of {} did not go through: {} \
                 Try another card, or contact {}.",
                invoice.amount_remaining(),
                decline_reason(&invoice),
                config.business_name
            ),
        ),
        Ok(invoice) => not_open(config, &invoice, lead),
        // Settled meanwhile (another tab, a retry): refused as no longer open.
        Err(BillingError::Domain(DomainError::InvalidTransition { .. })) => message(
            StatusCode::OK,
            config,
            "Nothing due",
            &format!("{lead}Nothing is due on this invoice: it has already been settled."),
        ),
        Err(error) => failure(config, &error),
    }
}

/// The token's claims and the token, or the answer refusing it (nothing read).
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the response itself"
)]
fn checked(
    state: &AppState,
    token: Result<Path<String>, PathRejection>,
) -> Result<(Claims, String), Response> {
    let config = &state.update_card;
    let Ok(Path(token)) = token else {
        return Err(refused(config, LinkError::Malformed));
    };
    match update_card_link::verify(&config.key, &token, super::ledger_now(state)) {
        Ok(claims) => Ok((claims, token)),
        Err(error) => Err(refused(config, error)),
    }
}

/// What the page writes is recorded as the link holder's ([`ACTOR`]).
fn link_context() -> recur_commands::context::RequestContext {
    recur_commands::context::RequestContext {
        actor: Some(ACTOR.to_owned()),
        ..Default::default()
    }
}

/// The link's claims and token, its customer and the invoice it names; or
/// the page refusing it (nothing written).
#[allow(
    clippy::result_large_err,
    reason = "the refusal is the response itself"
)]
async fn link_subject(
    state: &AppState,
    token: Result<Path<String>, PathRejection>,
) -> Result<(Claims, String, Customer, Option<Invoice>), Response> {
    let (claims, token) = checked(state, token)?;
    let config = &state.update_card;
    let customer = state
        .billing
        .customer(claims.customer_id)
        .await
        .map_err(|error| failure(config, &error))?;
    let invoice = invoice_of(state, &claims)
        .await
        .map_err(|error| failure(config, &error))?;
    Ok((claims, token, customer, invoice))
}

/// The invoice the link names, if any, and if it is the customer's.
async fn invoice_of(state: &AppState, claims: &Claims) -> Result<Option<Invoice>, BillingError> {
    let Some(id) = claims.invoice_id else {
        return Ok(None);
    };
    let invoice = state.billing.invoice(id).await?;
    // The key signed both ids together; this only guards against a link
    // made wrongly by a caller of `sign`.
    if invoice.customer_id != Some(claims.customer_id) {
        return Err(not_found("invoice").into());
    }
    Ok(Some(invoice))
}

/// A visit through a dunning message's link is that message's click. The
/// page is shown whatever happens here: a click that cannot be recorded is
/// logged (by code, never the token) and forgotten.
async fn record_click(state: &AppState, claims: &Claims) {
    let (Some(invoice_id), Some(message_id)) = (claims.invoice_id, claims.message_id) else {
        return;
    };
    if let Err(error) = state
        .billing
        .record_dunning_click(invoice_id, message_id)
        .await
    {
        tracing::warn!(
            code = error.code(),
            "an update-card visit was not recorded as a click"
        );
    }
}

fn not_found(kind: &'static str) -> DomainError {
    DomainError::NotFound {
        kind,
        id: String::new(),
    }
}

/// The card a customer's token stands for. The simulated gateway keeps what
/// it is given, so its test tokens are looked up (and the cards Stripe
/// declines on attach are declined here too); a real provider answers with
/// the card's own brand, last4 and expiry, which replace these placeholders.
fn card_for(gateway: &str, token: &str, now: OffsetDateTime) -> Result<PaymentMethod, DomainError> {
    // A test card's expiry is not on its token: a few years out, as Stripe's are.
    let exp_year = u16::try_from(now.year() + 3).unwrap_or(2100);
    // Checked first, whatever the gateway: a number pasted into the field is
    // named for what it is, and goes nowhere.
    if recur_commands::customer::looks_like_card_number(token) {
        return Err(DomainError::CardNumberRejected { field: "token" });
    }
    if gateway == "simulated" {
        return SimulatedGateway::card_of_token(token, 12, exp_year).map_err(|error| match error {
            // A token the simulation does not know is not a card: say so plainly.
            recur_commands::payment::CardError::UnknownCard => DomainError::InvalidField {
                field: "token",
                reason: "not a card token".into(),
            },
            other => other.into(),
        });
    }
    Ok(PaymentMethod {
        token: token.to_owned(),
        brand: "card".to_owned(),
        last4: "0000".to_owned(),
        exp_month: 12,
        exp_year,
        provider_customer: None,
    })
}

/// The page for a link whose invoice is no longer open: settled (nothing
/// due), or written off when the campaign gave up (it cannot be paid here).
fn not_open(config: &UpdateCardConfig, invoice: &Invoice, lead: &str) -> Response {
    if invoice.status == InvoiceStatus::Uncollectible {
        return message(
            StatusCode::OK,
            config,
            "Written off",
            &format!(
                "{lead}This invoice was written off after its payments failed, so it can no \
                 longer be paid here. Please contact {} to settle it.",
                config.business_name
            ),
        );
    }
    message(
        StatusCode::OK,
        config,
        "Nothing due",
        &format!("{lead}Nothing is due on this invoice: it has already been settled."),
    )
}

/// The decline code of the invoice's last attempt, if it was declined.
fn last_decline(invoice: &Invoice) -> Option<&str> {
    invoice.attempts.last().and_then(|a| match &a.outcome {
        Some(ChargeOutcome::Declined { decline_code, .. }) => Some(decline_code.as_str()),
        _ => None,
    })
}

/// An open invoice whose bank asked the customer to authenticate the payment.
fn awaits_authentication(invoice: &Invoice) -> bool {
    invoice.status == InvoiceStatus::Open
        && last_decline(invoice).is_some_and(|code| {
            recur_commands::decline::category(code)
                == recur_commands::decline::DeclineCategory::Authentication
        })
}

/// Why the last attempt failed, in words for the customer (never the
/// provider's raw text).
fn decline_reason(invoice: &Invoice) -> &'static str {
    match last_decline(invoice) {
        Some("insufficient_funds") => "the bank reports insufficient funds.",
        Some("expired_card") => "the card has expired.",
        Some("incorrect_cvc" | "incorrect_number" | "invalid_cvc" | "invalid_number") => {
            "the card details were not accepted."
        }
        Some("authentication_required") => "the bank asks you to confirm the payment.",
        Some("processing_error" | "issuer_not_available" | "try_again_later") => {
            "the bank could not process it just now."
        }
        Some(code)
            if recur_commands::decline::category(code)
                == recur_commands::decline::DeclineCategory::Hard =>
        {
            "the bank will not accept this card."
        }
        _ => "the bank declined the card.",
    }
}

fn invoice_section(body: &mut String, invoice: Option<&Invoice>) {
    let Some(invoice) = invoice else {
        return;
    };
    let status = match invoice.status {
        InvoiceStatus::Draft => "being prepared",
        InvoiceStatus::Open => "open: payment due",
        InvoiceStatus::Paid => "paid",
        InvoiceStatus::Void => "cancelled",
        InvoiceStatus::Uncollectible => "closed",
    };
    let _ = write!(
        body,
        "<section class=\"invoice\"><h2>Invoice</h2><dl>\
         <dt>Amount due</dt><dd class=\"amount\">{}</dd>\
         <dt>Status</dt><dd class=\"status\">{}</dd></dl></section>",
        escape(&invoice.amount_remaining().to_string()),
        escape(status),
    );
}

fn card_section(body: &mut String, customer: &Customer) {
    let card = customer.payment_method.as_ref().map_or_else(
        || "No card on file.".to_owned(),
        |card| {
            format!(
                "{} ending in {} (expires {:02}/{})",
                card.brand, card.last4, card.exp_month, card.exp_year
            )
        },
    );
    let _ = write!(
        body,
        "<section class=\"card\"><h2>Card on file</h2><p>{}</p></section>",
        escape(&card)
    );
}

/// A refused link: malformed 400, bad signature 401, expired 410. The same
/// words for all: a customer cannot act on the difference.
fn refused(config: &UpdateCardConfig, error: LinkError) -> Response {
    let status = match error {
        LinkError::Malformed | LinkError::BadKey | LinkError::Random => StatusCode::BAD_REQUEST,
        LinkError::BadSignature => StatusCode::UNAUTHORIZED,
        LinkError::Expired => StatusCode::GONE,
    };
    tracing::info!(code = error.code(), "update-card link refused");
    message(
        status,
        config,
        "This link has expired",
        &format!(
            "This link is no longer valid. Please contact {} for a new one.",
            config.business_name
        ),
    )
}

/// A command's failure as a page: the customer's mistake in plain words, the
/// server's trouble without details (the log has them, without the token).
fn failure(config: &UpdateCardConfig, error: &BillingError) -> Response {
    let retry = "Please try again in a few minutes.";
    match error {
        BillingError::Domain(DomainError::CardDeclined { .. }) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            config,
            "Card declined",
            "The bank declined this card. Nothing was changed: try another card.",
        ),
        BillingError::Domain(DomainError::CardNumberRejected { .. }) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            config,
            "Not a card token",
            "That looks like a card number. Never type your card number here: \
             enter the token your card was saved as.",
        ),
        BillingError::Domain(DomainError::InvalidField { .. }) => message(
            StatusCode::UNPROCESSABLE_ENTITY,
            config,
            "Not a card token",
            "That is not a card token we can use. Nothing was changed: check it and try again.",
        ),
        BillingError::Domain(DomainError::NotFound { .. }) => message(
            StatusCode::GONE,
            config,
            "This link has expired",
            &format!(
                "This link is no longer valid. Please contact {} for a new one.",
                config.business_name
            ),
        ),
        // Busy (a concurrent writer kept winning) is as passing as a
        // database away: try again.
        BillingError::GatewayUnavailable(_)
        | BillingError::Contended(_)
        | BillingError::Ledger(
            recur_ledger::LedgerError::Unavailable { .. }
            | recur_ledger::LedgerError::Closed
            | recur_ledger::LedgerError::VersionConflict { .. },
        ) => {
            tracing::warn!(code = error.code(), "update-card page: service unavailable");
            message(
                StatusCode::SERVICE_UNAVAILABLE,
                config,
                "Temporarily unavailable",
                retry,
            )
        }
        error => {
            tracing::error!(error = %recur_ledger::Chain(error), code = error.code(), "update-card page failed");
            message(
                StatusCode::INTERNAL_SERVER_ERROR,
                config,
                "Something went wrong",
                &format!(
                    "{retry} If it keeps happening, contact {}.",
                    config.business_name
                ),
            )
        }
    }
}

/// A page with a heading and one paragraph.
fn message(status: StatusCode, config: &UpdateCardConfig, title: &str, text: &str) -> Response {
    page(
        status,
        config,
        title,
        &format!("<p class=\"message\">{}</p>", escape(text)),
    )
}

/// The whole page around `body` (already escaped HTML), with its headers.
fn page(status: StatusCode, config: &UpdateCardConfig, title: &str, body: &str) -> Response {
    let html = format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"referrer\" content=\"no-referrer\">\
         <title>{title} · {business}</title><style>{STYLE}</style></head>\
         <body><main><p class=\"business\">{business}</p><h1>{title}</h1>{body}</main></body></html>\n",
        title = escape(title),
        business = escape(&config.business_name),
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::CACHE_CONTROL, "no-store"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// The page's only style: readable on a phone, nothing fetched.
const STYLE: &str = "body{font-family:system-ui,sans-serif;background:#f5f5f7;color:#1d1d1f;margin:0}\
main{max-width:28rem;margin:2rem auto;background:#fff;padding:1.5rem 2rem;border-radius:12px;\
box-shadow:0 1px 4px rgba(0,0,0,.1)}.business{color:#555;margin:0}h1{font-size:1.5rem}\
h2{font-size:1rem;margin:1.2rem 0 .4rem}dl{display:grid;grid-template-columns:auto 1fr;gap:.3rem 1rem}\
dt{color:#555}dd{margin:0;font-weight:600}label{display:block;margin:1.2rem 0 .4rem}\
input{width:100%;box-sizing:border-box;padding:.6rem;font-size:1rem;border:1px solid #bbb;\
border-radius:6px}button{margin-top:1rem;width:100%;padding:.7rem;font-size:1rem;border:0;\
border-radius:6px;background:#0a66c2;color:#fff}.note{color:#555;font-size:.85rem}";

/// `text` safe anywhere in HTML text or a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn a_real_provider_gets_the_token_and_the_simulation_its_test_card() {
        let now = time::macros::datetime!(2027-01-10 0:00 UTC);
        let stripe = card_for("stripe", "pm_1AbC", now).expect("any token");
        assert_eq!((stripe.token.as_str(), stripe.exp_year), ("pm_1AbC", 2030));
        let visa = card_for("simulated", "pm_card_visa", now).expect("a test card");
        assert_eq!(visa.last4, "4242");
        assert!(matches!(
            card_for("simulated", "pm_card_chargeDeclined", now),
            Err(DomainError::CardDeclined { .. })
        ));
        for gateway in ["simulated", "stripe"] {
            assert!(matches!(
                card_for(gateway, "4242 4242 4242 4242", now),
                Err(DomainError::CardNumberRejected { .. })
            ));
        }
        assert!(matches!(
            card_for("simulated", "pm_unknown", now),
            Err(DomainError::InvalidField { .. })
        ));
    }
}
