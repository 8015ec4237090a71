//! The query strings: the first byte picks one of
//! `recur_api::parsers::Query::ALL`, the rest (as UTF-8) is the query. Every
//! refusal must be a 4xx with a stable code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recur_api::parsers::Query;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Ok(query) = std::str::from_utf8(rest) else {
        return;
    };
    let parser = Query::ALL[usize::from(selector) % Query::ALL.len()];
    if let Err(error) = parser.parse(query) {
        assert!(
            error.status.is_client_error() && !error.problem.code.is_empty(),
            "{parser:?} answered {} {:?}",
            error.status,
            error.problem
        );
    }
});
