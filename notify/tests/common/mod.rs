//! What the notify tests share: a message with every variable set.

#![allow(dead_code, missing_docs)]

use recur_notify::{Channel, DEFAULT_BUSINESS_NAME, Message, MessageVars};

pub const LINK: &str = "https://billing.example/update/tok_3fA9?step=2&x=1";

pub fn vars(customer_name: &str) -> MessageVars {
    MessageVars {
        customer_name: customer_name.to_owned(),
        plan_name: "Executive Coaching".to_owned(),
        amount: "$5,000.00".to_owned(),
        payment_update_link: LINK.to_owned(),
        business_name: DEFAULT_BUSINESS_NAME.to_owned(),
        last4: Some("4242".to_owned()),
        expires_on: Some("March 3, 2027".to_owned()),
        offer: Some("a 20% discount on your next 3 months".to_owned()),
        step: 2,
        steps_total: 4,
    }
}

pub fn message(channel: Channel, template: &str, to: &str, customer_name: &str) -> Message {
    Message {
        message_id: uuid::Uuid::now_v7(),
        channel,
        to: to.to_owned(),
        template: template.to_owned(),
        vars: vars(customer_name),
    }
}
