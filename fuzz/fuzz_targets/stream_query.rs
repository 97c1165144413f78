//! `/ws` and `/events` query strings: `rowcast::filter::StreamParams::parse` against a
//! fixed catalog (`orders` with the seed's five columns), then `Selection::matches`
//! on a fixed set of sample events.
//!
//! Invariants: parsing never panics; a query that does not decode is a
//! `ParamError::Query`; every other refusal names its parameter; when `Ok`, matching
//! never panics, and a TRUNCATE on `orders` matches exactly when `ops` includes
//! TRUNCATE (an absent `ops` means all four), whatever the filters.
//!
//! Model: the whole contract of docs/PROTOCOL.md "Streams", written from the text
//! rather than from the code — which queries are accepted (names, repeats, `since` as a decimal
//! u64, tables, ops in any case, `<column>=<op>.<value>` filters with quoted `in`
//! lists, columns of a selected table) and, for an accepted one, which sample events
//! match (ops, tables, filters ANDed; a JSON number against a numeric operand compares
//! as numbers, everything else as text by code point; null and missing columns match
//! nothing; TRUNCATE passes every filter). The parser and the model must agree on
//! every input.

#![no_main]

use std::cmp::Ordering;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use rowcast::event::{ChangeRecord, Event, Op};
use rowcast::filter::{Catalog, ParamError, StreamParams};
use rowcast::query::parse_pairs;
use serde_json::{json, Value};

const COLUMNS: [&str; 5] = [
    "id",
    "customer_name",
    "product_name",
    "status",
    "updated_at",
];

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| {
        Catalog::new([(
            "orders".to_owned(),
            COLUMNS.iter().map(|c| (*c).to_owned()).collect(),
        )])
    })
}

fn event(id: i64, table: &str, op: &str, row: Option<Value>, old: Option<Value>) -> Event {
    Event::from_record(ChangeRecord {
        id,
        table: table.to_owned(),
        op: op.to_owned(),
        row,
        old,
        committed_at: "2026-11-24T21:00:00.123456Z".to_owned(),
        committed_at_micros: 0,
    })
    .expect("a valid sample event")
}

fn samples() -> &'static [Event] {
    static SAMPLES: OnceLock<Vec<Event>> = OnceLock::new();
    SAMPLES.get_or_init(|| {
        let order = json!({"id": 7, "customer_name": "Ann", "product_name": "Lamp",
                           "status": "pending", "updated_at": "2026-11-24T21:00:00Z"});
        vec![
            event(1, "orders", "INSERT", Some(order.clone()), None),
            event(
                2,
                "orders",
                "UPDATE",
                Some(
                    json!({"id": 12, "customer_name": "Smith, John", "product_name": "a)b",
                            "status": "shipped", "updated_at": null}),
                ),
                Some(order.clone()),
            ),
            event(3, "orders", "DELETE", Some(order), None),
            event(4, "orders", "TRUNCATE", None, None),
            event(
                5,
                "orders",
                "UPDATE",
                Some(
                    json!({"id": 1.5e300, "customer_name": "", "product_name": "q\"t",
                            "status": true, "updated_at": [1, {"a": null}]}),
                ),
                None,
            ),
            event(
                6,
                "orders",
                "INSERT",
                Some(
                    json!({"id": -9223372036854775808i64, "customer_name": "Zoë \u{3000}",
                            "product_name": 18446744073709551615u64, "status": {"k": 1},
                            "updated_at": 0}),
                ),
                None,
            ),
            event(
                7,
                "orders",
                "UPDATE",
                Some(json!({"id": 0.5, "customer_name": "ä", "product_name": "Z",
                            "status": "delivered", "updated_at": -3})),
                None,
            ),
            event(8, "orders", "INSERT", Some(json!({})), None),
            event(9, "orders", "DELETE", None, None),
            // Untracked: never selected when `tables` is given.
            event(10, "audit.log", "INSERT", Some(json!({"id": 7})), None),
            event(11, "audit.log", "TRUNCATE", None, None),
        ]
    })
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug)]
enum Test {
    Compare(Cmp, String),
    In(Vec<String>),
}

/// An accepted query, as the model reads it.
#[derive(Debug)]
struct Model {
    since: Option<u64>,
    tables_given: bool,
    ops: u8,
    filters: Vec<(String, Test)>,
}

/// A decimal u64: one or more ASCII digits, value at most u64::MAX.
fn position(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value = text.bytes().try_fold(0u128, |v, b| {
        Some(v * 10 + u128::from(b - b'0')).filter(|v| *v <= u128::from(u64::MAX))
    })?;
    u64::try_from(value).ok()
}

/// `(a,b,"c,d")`: comma-separated items; a double-quoted item may hold anything, with
/// `\` escaping the next character; an unquoted one holds no `"`, `(`, `)`.
fn list(text: &str) -> Option<Vec<String>> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    // `in.()` can match nothing: refused (a 400 `bad_filter`); `in.("")` is one item.
    if inner.is_empty() {
        return None;
    }
    let chars: Vec<char> = inner.chars().collect();
    let mut items = Vec::new();
    let mut i = 0;
    loop {
        let mut item = String::new();
        if chars.get(i) == Some(&'"') {
            i += 1;
            loop {
                match *chars.get(i)? {
                    '"' => break,
                    '\\' => {
                        item.push(*chars.get(i + 1)?);
                        i += 2;
                    }
                    c => {
                        item.push(c);
                        i += 1;
                    }
                }
            }
            i += 1; // the closing quote
        } else {
            while let Some(&c) = chars.get(i) {
                if c == ',' {
                    break;
                }
                if matches!(c, '"' | '(' | ')') {
                    return None;
                }
                item.push(c);
                i += 1;
            }
        }
        items.push(item);
        match chars.get(i) {
            None => return Some(items),
            Some(',') => i += 1,
            Some(_) => return None,
        }
    }
}

fn filter(text: &str) -> Option<(String, Test)> {
    let at = text.find('=')?;
    let (column, rest) = (&text[..at], &text[at + 1..]);
    let dot = rest.find('.')?;
    let (op, value) = (&rest[..dot], &rest[dot + 1..]);
    let cmp = match op {
        "eq" => Cmp::Eq,
        "neq" => Cmp::Neq,
        "lt" => Cmp::Lt,
        "lte" => Cmp::Lte,
        "gt" => Cmp::Gt,
        "gte" => Cmp::Gte,
        "in" => return Some((column.to_owned(), Test::In(list(value)?))),
        _ => return None,
    };
    Some((column.to_owned(), Test::Compare(cmp, value.to_owned())))
}

fn model(pairs: &[(String, String)]) -> Option<Model> {
    let (mut since, mut since_seen, mut tables_given, mut ops) = (None, false, false, None);
    let mut filters = Vec::new();
    for (name, value) in pairs {
        match name.as_str() {
            "since" if !since_seen => {
                since_seen = true;
                since = Some(position(value)?);
            }
            "tables" if !tables_given => {
                tables_given = true;
                if !value.split(',').all(|t| t == "orders") {
                    return None;
                }
            }
            "ops" if ops.is_none() => {
                let mut set = 0u8;
                for name in value.split(',') {
                    let upper = name.to_ascii_uppercase();
                    set |= Op::ALL.into_iter().find(|op| op.as_str() == upper)?.bit();
                }
                ops = Some(set);
            }
            "filter" => {
                let parsed = filter(value)?;
                if !COLUMNS.contains(&parsed.0.as_str()) {
                    return None;
                }
                filters.push(parsed);
            }
            _ => return None,
        }
    }
    Some(Model {
        since,
        tables_given,
        ops: ops.unwrap_or(0b1111),
        filters,
    })
}

/// A number by JSON's grammar, `-?digits(.digits)?([eE][+-]?digits)?`; integral when
/// it has neither fraction nor exponent and fits an i64.
fn number(text: &str) -> Option<Result<i64, f64>> {
    let body = text.strip_prefix('-').unwrap_or(text);
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (int, frac) = match mantissa.split_once('.') {
        Some((int, frac)) => (int, Some(frac)),
        None => (mantissa, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !frac.is_none_or(digits) {
        return None;
    }
    if let Some(exponent) = exponent {
        let exponent = exponent.strip_prefix(['+', '-']).unwrap_or(exponent);
        if !digits(exponent) {
            return None;
        }
    }
    if frac.is_none() && exponent.is_none() {
        if let Ok(int) = text.parse::<i64>() {
            return Some(Ok(int));
        }
    }
    text.parse::<f64>().ok().map(Err)
}

fn compare(value: &Value, operand: &str) -> Option<Ordering> {
    let text = |s: &str| Some(s.cmp(operand));
    match value {
        Value::Null => None,
        Value::Number(n) => match number(operand) {
            Some(Ok(b)) if n.as_i64().is_some() => n.as_i64().map(|a| a.cmp(&b)),
            Some(Ok(b)) => n.as_f64()?.partial_cmp(&(b as f64)),
            Some(Err(b)) => n.as_f64()?.partial_cmp(&b),
            None => text(&n.to_string()),
        },
        Value::String(s) => text(s),
        Value::Bool(b) => text(if *b { "true" } else { "false" }),
        other => text(&other.to_string()),
    }
}

fn matches(model: &Model, event: &Event) -> bool {
    if model.ops & event.op.bit() == 0 || (model.tables_given && &*event.table != "orders") {
        return false;
    }
    if event.op == Op::Truncate {
        return true;
    }
    // A live view delivers an UPDATE when either image matches (enter, leave or both).
    let old_matches = event.op == Op::Update && row_matches(model, event.old.as_ref());
    row_matches(model, event.row.as_ref()) || old_matches
}

fn row_matches(model: &Model, row: Option<&serde_json::Map<String, Value>>) -> bool {
    model.filters.iter().all(|(column, test)| {
        let Some(value) = row.and_then(|row| row.get(column)) else {
            return false;
        };
        match test {
            Test::Compare(cmp, operand) => compare(value, operand).is_some_and(|o| match cmp {
                Cmp::Eq => o.is_eq(),
                Cmp::Neq => o.is_ne(),
                Cmp::Lt => o.is_lt(),
                Cmp::Lte => o.is_le(),
                Cmp::Gt => o.is_gt(),
                Cmp::Gte => o.is_ge(),
            }),
            Test::In(items) => items
                .iter()
                .any(|item| compare(value, item) == Some(Ordering::Equal)),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    let result = StreamParams::parse(&query, catalog());
    let Ok(pairs) = parse_pairs(&query) else {
        assert!(
            matches!(result, Err(ParamError::Query(_))),
            "{query:?}: {result:?}"
        );
        return;
    };
    let expected = model(&pairs);
    let params = match result {
        Ok(params) => params,
        Err(err) => {
            let _ = err.to_string();
            assert!(err.param().is_some(), "{query:?}: {err:?}");
            assert!(
                expected.is_none(),
                "refused {query:?} ({err}) that the model accepts as {expected:?}"
            );
            return;
        }
    };
    let Some(model) = expected else {
        panic!("accepted {query:?} that the model refuses: {params:?}");
    };
    assert_eq!(params.since, model.since, "since of {query:?}");
    assert_eq!(params.selection.tables.is_some(), model.tables_given);
    for event in samples() {
        let matched = params.selection.matches(event);
        if event.op == Op::Truncate && &*event.table == "orders" {
            assert_eq!(
                matched,
                model.ops & Op::Truncate.bit() != 0,
                "TRUNCATE, {query:?}"
            );
        }
        assert_eq!(
            matched,
            matches(&model, event),
            "{query:?} on event {}",
            event.id
        );
    }
});
