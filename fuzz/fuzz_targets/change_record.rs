//! `change_log` rows: `rowcast::event::Event::from_record`.
//!
//! The input is split into a record by `arbitrary`: id, table, op (a known name in
//! any letter case, or any text), row and old (bounded-depth JSON, or absent),
//! committed_at. Model: `Ok` exactly when id > 0, the op is known, and the row is
//! absent, null or an object (or the op is TRUNCATE); the error names the first rule
//! broken. Invariants when `Ok`: `event.json()` is a JSON object with exactly the
//! documented members (`type == "change"`, `id` == the id as a string, the table, the
//! op in upper case, `row` unless TRUNCATE or absent, `old` only for UPDATE,
//! `committed_at`), holds no CR or LF, and `event.sse` is exactly
//! `id: <id>\nevent: change\ndata: <json>\n\n`.

#![no_main]

use arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use rowcast::event::{ChangeRecord, Event, EventError, Op};
use serde_json::{Map, Number, Value};

/// Deep enough to be interesting, shallow enough for serde_json's recursion limit
/// (128) when the event is parsed back.
const MAX_DEPTH: u32 = 8;

fn json(u: &mut Unstructured, depth: u32) -> Result<Value> {
    let kinds: u8 = if depth == 0 { 5 } else { 7 };
    Ok(match u.int_in_range(0..=kinds - 1)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => Value::from(u.arbitrary::<i64>()?),
        3 => match u.arbitrary::<u8>()? % 2 {
            0 => Value::from(u.arbitrary::<u64>()?),
            _ => Number::from_f64(u.arbitrary()?).map_or(Value::Null, Value::Number),
        },
        4 => Value::String(u.arbitrary()?),
        5 => {
            let len = u.int_in_range(0..=4)?;
            Value::Array(
                (0..len)
                    .map(|_| json(u, depth - 1))
                    .collect::<Result<_>>()?,
            )
        }
        _ => {
            let len = u.int_in_range(0..=4)?;
            let mut members = Map::new();
            for _ in 0..len {
                members.insert(u.arbitrary()?, json(u, depth - 1)?);
            }
            Value::Object(members)
        }
    })
}

fn optional_json(u: &mut Unstructured) -> Result<Option<Value>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => None,
        1 => Some(Value::Null),
        2 => {
            let len = u.int_in_range(0..=6)?;
            let mut members = Map::new();
            for _ in 0..len {
                members.insert(u.arbitrary()?, json(u, MAX_DEPTH)?);
            }
            Some(Value::Object(members))
        }
        _ => Some(json(u, MAX_DEPTH)?),
    })
}

fn op_text(u: &mut Unstructured) -> Result<String> {
    let choice: u8 = u.int_in_range(0..=4)?;
    let Some(op) = Op::ALL.get(usize::from(choice)) else {
        return u.arbitrary();
    };
    let mask: u8 = u.arbitrary()?;
    Ok(op
        .as_str()
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if mask >> (i % 8) & 1 == 1 {
                c.to_ascii_lowercase()
            } else {
                c
            }
        })
        .collect())
}

fn record(u: &mut Unstructured) -> Result<ChangeRecord> {
    Ok(ChangeRecord {
        id: u.arbitrary()?,
        table: u.arbitrary()?,
        op: op_text(u)?,
        row: optional_json(u)?,
        old: optional_json(u)?,
        committed_at: u.arbitrary()?,
        committed_at_micros: u.arbitrary()?,
    })
}

fn model(record: &ChangeRecord) -> std::result::Result<Op, EventError> {
    if record.id <= 0 {
        return Err(EventError::BadId(record.id));
    }
    let op = Op::ALL
        .into_iter()
        .find(|op| record.op.to_ascii_uppercase() == op.as_str())
        .ok_or_else(|| EventError::BadOp {
            id: record.id,
            op: record.op.clone(),
        })?;
    let row_ok = matches!(
        (&record.row, op),
        (_, Op::Truncate) | (None | Some(Value::Null | Value::Object(_)), _)
    );
    // Live views judge an UPDATE on its old row too, so that image must be an object.
    let old_ok =
        op != Op::Update || matches!(record.old, None | Some(Value::Null | Value::Object(_)));
    if row_ok && old_ok {
        Ok(op)
    } else {
        Err(EventError::BadRow(record.id))
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(record) = record(&mut Unstructured::new(data)) else {
        return;
    };
    let expected = model(&record);
    let event = match Event::from_record(record.clone()) {
        Ok(event) => event,
        Err(err) => {
            assert_eq!(Err(err), expected, "{record:?}");
            return;
        }
    };
    let op = expected.unwrap_or_else(|err| panic!("accepted, expected {err:?}: {record:?}"));
    let id = u64::try_from(record.id).expect("positive");
    let row = match (&record.row, op) {
        (Some(Value::Object(members)), op) if op != Op::Truncate => Some(members.clone()),
        _ => None,
    };
    let old = match (&record.old, op) {
        (Some(old), Op::Update) if !old.is_null() => Some(old.clone()),
        _ => None,
    };
    assert_eq!(event.id, id);
    assert_eq!(event.op, op);
    assert_eq!(&*event.table, record.table);
    assert_eq!(event.row, row);

    let json = event.json();
    assert!(!json.contains(['\n', '\r']), "raw newline in {json:?}");
    let parsed: Value = serde_json::from_str(json).expect("event.json() is JSON");
    let members = parsed.as_object().expect("event.json() is an object");
    assert_eq!(parsed["type"], "change");
    assert_eq!(parsed["id"], id.to_string());
    assert_eq!(parsed["table"], record.table.as_str());
    assert_eq!(parsed["op"], op.as_str());
    assert_eq!(parsed["committed_at"], record.committed_at.as_str());
    assert_eq!(members.get("row"), row.map(Value::Object).as_ref());
    assert_eq!(members.get("old"), old.as_ref());
    let expected_len = 5 + usize::from(members.contains_key("row")) + usize::from(old.is_some());
    assert_eq!(members.len(), expected_len, "members of {json}");

    let sse = std::str::from_utf8(&event.sse).expect("the SSE block is UTF-8");
    assert_eq!(sse, format!("id: {id}\nevent: change\ndata: {json}\n\n"));
    assert_eq!(sse.matches('\n').count(), 4);
    // The WebSocket frame is the same JSON behind its header, built once.
    let frame = event.ws_frame(None);
    assert_eq!(&frame.payload()[..], json.as_bytes());
    assert_eq!(frame.head()[0], 0x81);
    assert!(std::ptr::eq(frame, event.ws_frame(Some(usize::MAX))));
    assert!(!sse.contains('\r'));
});
