//! The JSON bodies: the first byte picks one of `recur_api::parsers::Body::ALL`,
//! the rest is the body. Every refusal must be a 4xx with a stable code.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recur_api::parsers::Body;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let parser = Body::ALL[usize::from(selector) % Body::ALL.len()];
    if let Err(error) = parser.parse(body) {
        assert!(
            error.status.is_client_error() && !error.problem.code.is_empty(),
            "{parser:?} answered {} {:?}",
            error.status,
            error.problem
        );
    }
});
