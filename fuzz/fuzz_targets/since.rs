//! `since=` and `Last-Event-ID`: `rowcast::filter::parse_position`.
//!
//! Model: `Some(n)` exactly when the input is one or more ASCII digits whose value fits
//! a `u64` (leading zeros allowed), computed here digit by digit in `u128`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rowcast::filter::parse_position;

fn model(text: &str) -> Option<u64> {
    if text.is_empty() {
        return None;
    }
    let mut value: u128 = 0;
    for byte in text.bytes() {
        if !byte.is_ascii_digit() {
            return None;
        }
        // Once past u64::MAX the value only grows (or stays 0), so stop early.
        value = value * 10 + u128::from(byte - b'0');
        if value > u128::from(u64::MAX) {
            return None;
        }
    }
    u64::try_from(value).ok()
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let parsed = parse_position(&text);
    assert_eq!(parsed, model(&text), "parse_position({text:?})");
    if let Some(n) = parsed {
        // The canonical form is the input without its leading zeros.
        let canonical = text.trim_start_matches('0');
        let canonical = if canonical.is_empty() { "0" } else { canonical };
        assert_eq!(n.to_string(), canonical);
    }
});
