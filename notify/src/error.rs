//! What can go wrong before anything is sent: rendering and configuration.

use crate::message::Channel;

/// An error rendering a message or reading a channel's configuration. Sending
/// fails with a [`crate::SendError`] instead, which says whether to retry.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// No template of that name on that channel ([`crate::templates`] lists them).
    #[error("no {channel} template named {template:?}")]
    UnknownTemplate {
        /// The name asked for.
        template: String,
        /// The channel asked for.
        channel: Channel,
    },
    /// The template needs a variable the message left empty (`last4` for
    /// `card_expiring`, `offer` for `offer`, …).
    #[error("template {template:?} needs the variable {var}, which the message does not set")]
    MissingVar {
        /// The template's name.
        template: String,
        /// The variable's name.
        var: &'static str,
    },
    /// The template engine failed (a template that does not parse, or one that
    /// prints a variable it was not given). The tests render every template,
    /// so this is a bug in a template.
    #[error("template {template:?} failed to render: {detail}")]
    Render {
        /// The template file's name.
        template: String,
        /// The engine's message (names the template and line, never the values).
        detail: String,
    },
    /// A channel's configuration is missing or malformed; the message names the
    /// variable and never echoes a password or token.
    #[error("{0}")]
    Config(String),
}
