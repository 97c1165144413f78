//! Query strings: `rowcast::query::parse_pairs` and `decode`.
//!
//! Models: an independent percent-decoder (errors included); decoding text with no
//! `%` and no `+` is the identity; `decode(encode(x)) == x` for every string, with
//! either hex case and either form of space; and a list of pairs encoded into a query
//! string parses back to the same list.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rowcast::query::{decode, parse_pairs, QueryError};

/// Percent-encodes everything but RFC 3986 unreserved bytes.
fn encode(text: &str, upper: bool, plus_for_space: bool) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' if plus_for_space => out.push('+'),
            _ if upper => out.push_str(&format!("%{byte:02X}")),
            _ => out.push_str(&format!("%{byte:02x}")),
        }
    }
    out
}

fn hex(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// The decoder written from the spec rather than from the code.
fn model_decode(text: &str) -> Result<String, QueryError> {
    let mut bytes = text.bytes();
    let mut out = Vec::new();
    while let Some(byte) = bytes.next() {
        out.push(match byte {
            b'%' => {
                let high = bytes.next().and_then(hex).ok_or(QueryError::BadEscape)?;
                let low = bytes.next().and_then(hex).ok_or(QueryError::BadEscape)?;
                high * 16 + low
            }
            b'+' => b' ',
            other => other,
        });
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

fn model_pairs(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    let mut pairs = Vec::new();
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = match pair.find('=') {
            Some(at) => (&pair[..at], &pair[at + 1..]),
            None => (pair, ""),
        };
        pairs.push((model_decode(name)?, model_decode(value)?));
    }
    Ok(pairs)
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);

    assert_eq!(decode(&text), model_decode(&text), "decode({text:?})");
    assert_eq!(
        parse_pairs(&text),
        model_pairs(&text),
        "parse_pairs({text:?})"
    );

    if !text.contains(['%', '+']) {
        assert_eq!(decode(&text).as_deref(), Ok(&*text), "identity on {text:?}");
    }

    let flags = data.first().copied().unwrap_or(0);
    for (upper, plus) in [
        (true, false),
        (false, true),
        (flags & 1 == 1, flags & 2 == 2),
    ] {
        let encoded = encode(&text, upper, plus);
        assert_eq!(
            decode(&encoded).as_deref(),
            Ok(&*text),
            "round trip via {encoded:?}"
        );
    }

    // Lines are pairs, a tab separates name from value: encoded, joined, parsed back.
    let pairs: Vec<(String, String)> = text
        .split('\n')
        .map(|line| match line.split_once('\t') {
            Some((name, value)) => (name.to_owned(), value.to_owned()),
            None => (line.to_owned(), String::new()),
        })
        .collect();
    let query = pairs
        .iter()
        .map(|(name, value)| {
            format!(
                "{}={}",
                encode(name, flags & 4 == 4, flags & 8 == 8),
                encode(value, flags & 16 == 16, flags & 32 == 32)
            )
        })
        .collect::<Vec<_>>()
        .join("&");
    assert_eq!(parse_pairs(&query), Ok(pairs), "pairs via {query:?}");
});
