//! Strategies for JSON shaped like the API's bodies, shared by the parser
//! properties (api/tests/parsers.rs) and the HTTP ones (tests/api.rs).
#![allow(dead_code)]

use proptest::prelude::*;
use serde_json::Value;

/// The field names the bodies and queries use, so that generated objects reach
/// past "unknown field" into each field's own checks.
pub const FIELDS: &[&str] = &[
    "segment",
    "tax_location",
    "country",
    "region",
    "postal_code",
    "contact",
    "name",
    "email",
    "phone",
    "token",
    "brand",
    "last4",
    "exp_month",
    "exp_year",
    "customer",
    "plan",
    "price",
    "quantity",
    "trial_days",
    "coupon",
    "timing",
    "amount",
    "currency",
    "reason",
    "code",
    "percent_off",
    "amount_off",
    "duration",
    "duration_in_months",
    "max_redemptions",
    "redeem_by",
    "id",
    "unit_amount",
    "interval",
    "interval_count",
    "features",
    "limits",
    "current_price",
    "percent",
    "mode",
    "valid_from",
    "at",
    "to",
    "seconds",
    "role",
];

/// Strings that mean something to some parser, and some that mean nothing.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "",
            "USD",
            "usd",
            "JPY",
            "XXX",
            "97.00",
            "-0",
            "1e5",
            ".5",
            "5.",
            "00.10",
            "79228162514264337593543950335",
            "0.0000000000000000000000000001",
            "2027-01-01T00:00:00Z",
            "2027-02-30T00:00:00Z",
            "9999-12-31T23:59:59Z",
            "2027-01-01",
            "US",
            "TX",
            "now",
            "period_end",
            "month",
            "one_time",
            "day",
            "standard",
            "high_value",
            "admin",
            "4242424242424242",
            "4242 4242 4242 4242",
            "a@b",
            "pm_card_visa",
            "\u{202e}",
            "\u{0}",
            "00000000-0000-0000-0000-000000000000",
            "inclusive",
            "exclusive",
            "forever",
            "repeating",
            "once",
            "99.9999",
            "100",
        ])
        .prop_map(str::to_owned),
        any::<String>(),
        "[0-9.\\-]{0,40}",
    ]
}

pub fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    4 => prop::sample::select(FIELDS).prop_map(str::to_owned),
                    1 => any::<String>(),
                ],
                inner,
                0..6
            )
            .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// An object with a handful of known fields: the shape every body has.
pub fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(FIELDS).prop_map(str::to_owned),
        json_value(),
        0..8,
    )
    .prop_map(|map| Value::Object(map.into_iter().collect()))
}
