//! The money parser: `Money::parse` on any text ("AMOUNT CODE", or an amount
//! alone read as USD) and `Money` from any JSON bytes. Whatever parses must
//! format and parse back to itself, scale included; whatever does not must be
//! refused as an invalid amount or an unknown currency.
#![no_main]

use libfuzzer_sys::fuzz_target;
use recur_ledger::{Money, MoneyError};

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Money>(data);
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (amount, code) = text.split_once(' ').unwrap_or((text, "USD"));
    match Money::parse(amount, code) {
        Ok(money) => {
            let again = Money::parse(&money.amount().to_string(), money.currency().code())
                .expect("formatted money parses");
            assert_eq!(again, money);
            assert_eq!(again.amount().scale(), money.amount().scale());
            let json = serde_json::to_vec(&money).expect("money serialises");
            assert_eq!(
                serde_json::from_slice::<Money>(&json).expect("and parses back"),
                money
            );
        }
        Err(MoneyError::InvalidAmount { .. } | MoneyError::UnknownCurrency(_)) => {}
        Err(other) => panic!("{text:?} refused with an unexpected error: {other:?}"),
    }
});
