//! The templates in `notify/templates/` and rendering a [`Message`] with them.
//!
//! An email template is three files, `NAME.subject.txt`, `NAME.html` and
//! `NAME.txt`; an SMS template is one, `NAME.sms.txt`. They are compiled into
//! the binary (`include_str!`), so a deployment cannot lose them. In `.html`
//! files every printed value is HTML-escaped; in `.txt` files nothing is.
//! Printing a variable the message does not set is an error, never an empty
//! string or `none`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use minijinja::{Environment, UndefinedBehavior, Value};

use crate::error::NotifyError;
use crate::message::{Channel, Message};

/// A message rendered for its channel.
#[derive(Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Email: the subject, on one line. SMS: `None`.
    pub subject: Option<String>,
    /// Email: the HTML part, a whole document. SMS: `None`.
    pub html: Option<String>,
    /// Email: the plain-text part. SMS: the message body.
    pub text: String,
}

impl std::fmt::Debug for Rendered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body carries the customer's name and link: lengths only.
        f.debug_struct("Rendered")
            .field("subject_len", &self.subject.as_ref().map(String::len))
            .field("html_len", &self.html.as_ref().map(String::len))
            .field("text_len", &self.text.len())
            .finish()
    }
}

/// An optional [`crate::MessageVars`] field that a template cannot do without.
#[derive(Clone, Copy, Debug)]
enum Need {
    Last4,
    ExpiresOn,
    Offer,
}

impl Need {
    fn name(self) -> &'static str {
        match self {
            Self::Last4 => "last4",
            Self::ExpiresOn => "expires_on",
            Self::Offer => "offer",
        }
    }

    fn is_set(self, message: &Message) -> bool {
        let value = match self {
            Self::Last4 => &message.vars.last4,
            Self::ExpiresOn => &message.vars.expires_on,
            Self::Offer => &message.vars.offer,
        };
        value.as_deref().is_some_and(|v| !v.trim().is_empty())
    }
}

/// One template: its name, channel, the optional variables it needs, and its
/// files as (file name, source) — email: subject, HTML, text; SMS: the body.
struct Template {
    name: &'static str,
    channel: Channel,
    needs: &'static [Need],
    files: &'static [(&'static str, &'static str)],
}

macro_rules! file {
    ($file:expr) => {
        ($file, include_str!(concat!("../templates/", $file)))
    };
}

macro_rules! email {
    ($name:literal $(, $need:ident)*) => {
        Template {
            name: $name,
            channel: Channel::Email,
            needs: &[$(Need::$need),*],
            files: &[
                file!(concat!($name, ".subject.txt")),
                file!(concat!($name, ".html")),
                file!(concat!($name, ".txt")),
            ],
        }
    };
}

macro_rules! sms {
    ($name:literal $(, $need:ident)*) => {
        Template {
            name: $name,
            channel: Channel::Sms,
            needs: &[$(Need::$need),*],
            files: &[file!(concat!($name, ".sms.txt"))],
        }
    };
}

/// Every template, once. The brief's (its `payment_failed_gentle` email and
/// three SMS texts, `card_expires_tomorrow` generalised to `card_expiring`)
/// and the rest of the campaign's steps.
static TEMPLATES: &[Template] = &[
    email!("payment_failed_gentle"),
    email!("payment_failed_urgent"),
    sms!("payment_failed_urgent"),
    email!("payment_final_notice"),
    sms!("payment_final_notice"),
    email!("card_expiring", Last4, ExpiresOn),
    sms!("card_expiring", Last4, ExpiresOn),
    email!("authentication_required"),
    sms!("authentication_required"),
    email!("offer", Offer),
];

/// The compiled templates, or the first one that did not parse (file name,
/// engine message). The tests render every template, so the error is for a
/// template edited without running them.
static ENVIRONMENT: LazyLock<Result<Environment<'static>, (&'static str, String)>> =
    LazyLock::new(|| {
        // `Environment::new` escapes values printed by `.html` templates, and
        // nothing else.
        let mut env = Environment::new();
        env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
        for template in TEMPLATES {
            for (file, source) in template.files {
                env.add_template(file, source)
                    .map_err(|e| (*file, e.to_string()))?;
            }
        }
        Ok(env)
    });

/// Every template that exists, with its channel: for checking a dunning
/// policy's configuration before a campaign needs one.
pub fn templates() -> impl Iterator<Item = (&'static str, Channel)> {
    TEMPLATES.iter().map(|t| (t.name, t.channel))
}

/// Renders `message` with its template for its channel.
///
/// # Errors
/// [`NotifyError::UnknownTemplate`] when no template of that name exists on
/// the message's channel; [`NotifyError::MissingVar`] when the template needs
/// an optional variable the message leaves unset or blank;
/// [`NotifyError::Render`] when a template is broken.
pub fn render(message: &Message) -> Result<Rendered, NotifyError> {
    let template = TEMPLATES
        .iter()
        .find(|t| t.name == message.template && t.channel == message.channel)
        .ok_or_else(|| NotifyError::UnknownTemplate {
            template: message.template.clone(),
            channel: message.channel,
        })?;
    if let Some(need) = template.needs.iter().find(|n| !n.is_set(message)) {
        return Err(NotifyError::MissingVar {
            template: message.template.clone(),
            var: need.name(),
        });
    }
    let env = ENVIRONMENT
        .as_ref()
        .map_err(|(file, detail)| NotifyError::Render {
            template: (*file).to_owned(),
            detail: detail.clone(),
        })?;
    let context = context(message);
    let render_file = |file: &str| -> Result<String, NotifyError> {
        let error = |e: minijinja::Error| NotifyError::Render {
            template: file.to_owned(),
            detail: e.to_string(),
        };
        env.get_template(file)
            .map_err(error)?
            .render(&context)
            .map_err(error)
    };
    match template.files {
        [(subject, _), (html, _), (text, _)] => Ok(Rendered {
            subject: Some(one_line(&render_file(subject)?)),
            html: Some(html_document(&render_file(html)?)),
            text: text_body(&render_file(text)?),
        }),
        [(body, _)] => Ok(Rendered {
            subject: None,
            html: None,
            text: one_line(&render_file(body)?),
        }),
        _ => Err(NotifyError::Render {
            template: template.name.to_owned(),
            detail: "a template is one file (SMS) or three (email)".to_owned(),
        }),
    }
}

/// The values a template may print. Unset (or blank) optional values are left
/// out, so a template that prints one fails instead of printing `none`, and
/// `{% if offer %}` is false.
fn context(message: &Message) -> Value {
    let vars = &message.vars;
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    let mut put = |key: &str, value: Value| {
        map.insert(key.to_owned(), value);
    };
    put("customer_name", Value::from(vars.customer_name.as_str()));
    put("plan_name", Value::from(vars.plan_name.as_str()));
    put("amount", Value::from(vars.amount.as_str()));
    put(
        "payment_update_link",
        Value::from(vars.payment_update_link.as_str()),
    );
    put("business_name", Value::from(vars.business_name.as_str()));
    put("step", Value::from(vars.step));
    put("steps_total", Value::from(vars.steps_total));
    for (key, value) in [
        ("last4", &vars.last4),
        ("expires_on", &vars.expires_on),
        ("offer", &vars.offer),
    ] {
        // Blank is unset: `{% if offer %}` must not print an empty offer.
        if let Some(value) = value.as_deref().filter(|v| !v.trim().is_empty()) {
            put(key, Value::from(value));
        }
    }
    Value::from(map)
}

/// Whitespace (newlines included) collapsed to single spaces: a subject is one
/// header line, and an SMS is billed by the character.
fn one_line(rendered: &str) -> String {
    rendered.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The text part with one final newline.
fn text_body(rendered: &str) -> String {
    let mut text = rendered.trim_end().to_owned();
    text.push('\n');
    text
}

/// The HTML fragment in a minimal document that declares its encoding.
fn html_document(fragment: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"></head>\n<body>\n{}\n</body>\n</html>\n",
        fragment.trim_end()
    )
}
