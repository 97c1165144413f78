//! REST bodies: `rowcast::http::api::OrderFields::parse` on any JSON value.
//!
//! Invariants: when `Ok`, every present name is its input trimmed of Unicode
//! whitespace, non-empty, at most 255 code points, free of NUL; `status` is one of
//! `pending|shipped|delivered`. Model: the outcome (and, on error, the field named)
//! equals a from-the-spec check of the object: not an object → 422 without a field;
//! else the first unknown member; else the first of `customer_name`, `product_name`,
//! `status` that breaks its rule.

#![no_main]

use libfuzzer_sys::fuzz_target;
use rowcast::http::api::OrderFields;
use rowcast::http::ApiError;
use serde_json::{Map, Value};

const FIELDS: [&str; 3] = ["customer_name", "product_name", "status"];
const STATUSES: [&str; 3] = ["pending", "shipped", "delivered"];

fn trim(text: &str) -> &str {
    let start = text
        .char_indices()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(text.len(), |(i, _)| i);
    let end = text
        .char_indices()
        .rev()
        .find(|(_, c)| !c.is_whitespace())
        .map_or(start, |(i, c)| i + c.len_utf8());
    &text[start..end.max(start)]
}

fn name_ok(value: Option<&Value>) -> bool {
    match value {
        None => true,
        Some(Value::String(text)) => {
            let trimmed = trim(text);
            !trimmed.is_empty() && trimmed.chars().count() <= 255 && !trimmed.contains('\0')
        }
        Some(_) => false,
    }
}

/// `Ok(())` or the field the spec says is at fault (`None`: the body as a whole).
fn model(body: &Value) -> Result<(), Option<String>> {
    let Value::Object(members) = body else {
        return Err(None);
    };
    if let Some(unknown) = members.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(Some(unknown.clone()));
    }
    for field in ["customer_name", "product_name"] {
        if !name_ok(members.get(field)) {
            return Err(Some(field.to_owned()));
        }
    }
    match members.get("status") {
        None => Ok(()),
        Some(Value::String(s)) if STATUSES.contains(&s.as_str()) => Ok(()),
        Some(_) => Err(Some("status".to_owned())),
    }
}

fn check_name(parsed: Option<&str>, members: &Map<String, Value>, field: &str) {
    let input = members.get(field).and_then(Value::as_str);
    assert_eq!(parsed.is_some(), input.is_some(), "{field} present");
    if let (Some(name), Some(input)) = (parsed, input) {
        assert_eq!(name, trim(input), "{field} is the trimmed input");
        assert_eq!(name, name.trim(), "{field} trimmed");
        assert!(!name.is_empty(), "{field} empty");
        assert!(name.chars().count() <= 255, "{field} too long");
        assert!(!name.contains('\0'), "{field} has NUL");
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let expected = model(&body);
    match OrderFields::parse(body.clone()) {
        Ok(fields) => {
            assert_eq!(expected, Ok(()), "accepted {body}");
            let members = body.as_object().expect("only objects are accepted");
            check_name(fields.customer_name.as_deref(), members, "customer_name");
            check_name(fields.product_name.as_deref(), members, "product_name");
            assert_eq!(fields.status, members.get("status").and_then(Value::as_str));
            if let Some(status) = fields.status {
                assert!(STATUSES.contains(&status));
            }
        }
        Err(ApiError::Invalid { field, .. }) => {
            assert_eq!(expected, Err(field), "refused {body}");
        }
        Err(other) => panic!("a JSON body is accepted or a 422, not {other:?}"),
    }
});
