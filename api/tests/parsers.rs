//! Every parser of client input (`recur_api::parsers`) fed arbitrary bytes,
//! arbitrary JSON shaped like the bodies, and arbitrary query strings: never a
//! panic, and every refusal a 4xx problem with a stable code. Bounded, so it runs
//! in every `cargo test`; fuzz/ runs the same parsers for longer (docs/security.md).
#![allow(clippy::unwrap_used, missing_docs)]

use proptest::prelude::*;
use recur_api::parsers::{Body, Query};
use recur_api::problem::ApiError;

#[path = "common/json.rs"]
mod json;

use json::{json_object, json_value, text};

/// Cases per property: enough to reach every body's fields, quick enough for CI.
const CASES: u32 = 512;

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
