//! Query strings: `application/x-www-form-urlencoded` pairs, strictly decoded.

/// Why a query string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    #[error("bad percent-encoding in the query string")]
    BadEscape,
    /// The decoded bytes are not UTF-8.
    #[error("the query string is not valid UTF-8")]
    NotUtf8,
}

/// Splits a query string into decoded `(name, value)` pairs, in order. `+` is a space;
/// a pair without `=` has an empty value; empty pairs (`a=1&&b=2`) are skipped.
pub fn parse_pairs(query: &str) -> Result<Vec<(String, String)>, QueryError> {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((decode(name)?, decode(value)?))
        })
        .collect()
}

/// Percent-decodes one component (`+` means space).
pub fn decode(text: &str) -> Result<String, QueryError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes.get(i + 1..i + 3).ok_or(QueryError::BadEscape)?;
                let digits = std::str::from_utf8(hex).map_err(|_| QueryError::BadEscape)?;
                if !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(QueryError::BadEscape);
                }
                let byte = u8::from_str_radix(digits, 16).map_err(|_| QueryError::BadEscape)?;
                out.push(byte);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            other => {
                out.push(other);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_are_decoded_in_order() {
        let pairs = parse_pairs("a=1&filter=name%3Deq.J%C3%BCrgen+K&&flag").unwrap();
        assert_eq!(
            pairs,
            [
                ("a".into(), "1".into()),
                ("filter".into(), "name=eq.Jürgen K".into()),
                ("flag".into(), String::new())
            ]
        );
    }

    #[test]
    fn bad_escapes_and_invalid_utf8_are_errors() {
        assert_eq!(decode("%zz"), Err(QueryError::BadEscape));
        assert_eq!(decode("%4"), Err(QueryError::BadEscape));
        assert_eq!(decode("%+1"), Err(QueryError::BadEscape));
        assert_eq!(decode("%ff"), Err(QueryError::NotUtf8));
    }
}
