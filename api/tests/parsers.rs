//! Every parser of client input (`recur_api::parsers`) fed arbitrary bytes,
//! arbitrary JSON shaped like the bodies, and arbitrary query strings: never a
//! panic, and every refusal a 4xx problem with a stable code. Bounded, so it runs
//! in every `cargo test`; fuzz/ runs the same parsers for longer (docs/security.md).
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use recur_api::parsers::{Body, Query};
use recur_api::problem::ApiError;
use serde_json::Value;

/// Cases per property: enough to reach every body's fields, quick enough for CI.
const CASES: u32 = 512;

/// The field names the bodies and queries use, so that generated objects reach
/// past "unknown field" into each field's own checks.
const FIELDS: &[&str] = &[
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
fn text() -> impl Strategy<Value = String> {
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

fn json_value() -> impl Strategy<Value = Value> {
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
fn json_object() -> impl Strategy<Value = Value> {
    prop::collection::btree_map(
        prop::sample::select(FIELDS).prop_map(str::to_owned),
        json_value(),
        0..8,
    )
    .prop_map(|map| Value::Object(map.into_iter().collect()))
}

/// A refusal is a client's: a 4xx with a snake_case code its type URI names.
fn assert_typed(what: &str, input: &str, result: Result<(), ApiError>) {
    let Err(error) = result else { return };
    assert!(
        error.status.is_client_error(),
        "{what} answered {} to {input:?}: {:?}",
        error.status,
        error.problem
    );
    let code = &error.problem.code;
    assert!(
        !code.is_empty() && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "{what}: code {code:?} for {input:?}"
    );
    assert_eq!(
        error.problem.kind,
        format!("https://recur.dev/problems/{code}")
    );
    assert_eq!(error.problem.status, error.status.as_u16());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    #[test]
    fn arbitrary_bytes_never_panic_any_body_parser(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        for body in Body::ALL {
            assert_typed(&format!("{body:?}"), &String::from_utf8_lossy(&bytes), body.parse(&bytes));
        }
    }

    #[test]
    fn arbitrary_json_never_panics_any_body_parser(value in json_value()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        for body in Body::ALL {
            assert_typed(&format!("{body:?}"), &value.to_string(), body.parse(&bytes));
        }
    }

    #[test]
    fn objects_of_known_fields_reach_each_fields_checks_without_a_panic(value in json_object()) {
        let bytes = serde_json::to_vec(&value).unwrap();
        for body in Body::ALL {
            assert_typed(&format!("{body:?}"), &value.to_string(), body.parse(&bytes));
        }
    }

    #[test]
    fn arbitrary_query_strings_never_panic_any_query_parser(
        pairs in prop::collection::vec(
            (
                prop_oneof![
                    prop::sample::select(vec![
                        "limit", "starting_after", "customer", "subscription", "type", "actor",
                        "created[gte]", "created%5Blte%5D", "resource", "external_id", "from",
                        "to", "interval", "plan", "detail", "kind", "min_position",
                        "as_of_position", "as_of", "position",
                    ]).prop_map(str::to_owned),
                    "[a-z_%\\[\\]]{0,12}",
                ],
                prop_oneof![text(), "[0-9a-zA-Z%+&=:*._\\-]{0,30}"],
            ),
            0..5,
        ),
        raw in any::<String>(),
    ) {
        let query: String = pairs
            .iter()
            .map(|(name, value)| format!("{name}={value}"))
            .collect::<Vec<_>>()
            .join("&");
        for parser in Query::ALL {
            assert_typed(&format!("{parser:?}"), &query, parser.parse(&query));
            assert_typed(&format!("{parser:?}"), &raw, parser.parse(&raw));
        }
    }
}

/// The properties can fail: a well-formed body passes and a bad one is refused
/// with the code the route answers.
#[test]
fn the_parsers_accept_good_input_and_name_what_is_wrong_with_bad() {
    assert!(
        Body::Refund
            .parse(br#"{"amount": {"amount": "9.70", "currency": "USD"}}"#)
            .is_ok()
    );
    let bad = Body::Refund
        .parse(br#"{"amount": {"amount": "9.7e1", "currency": "USD"}}"#)
        .unwrap_err();
    assert_eq!(bad.problem.code, "invalid_amount");
    assert_eq!(
        Body::Empty.parse(b"[").unwrap_err().problem.code,
        "malformed_json"
    );
    assert_eq!(
        Body::Empty.parse(b"[]").unwrap_err().problem.code,
        "invalid_body"
    );
    assert!(
        Query::Events
            .parse("created%5Bgte%5D=2027-01-01T00:00:00Z")
            .is_ok()
    );
    assert_eq!(
        Query::Series
            .parse("from=2027-02-01&to=2027-01-01")
            .unwrap_err()
            .problem
            .code,
        "invalid_query"
    );
}
