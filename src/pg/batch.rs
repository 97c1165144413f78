//! A batch of events that says which id came before it: the wire form of the WAL
//! capturer's doorbell payload and of the relay's messages.
//!
//! Ids have gaps (a rolled-back transaction draws ids and commits nothing), so a
//! receiver cannot tell from the first id alone whether it missed events. A batch
//! therefore names `after`, the id of the newest event committed before its first one,
//! as the writer knew it exactly (the capturer reads it under the commit-order lock; a
//! relay publisher from its own log). A receiver whose head is at least `after` takes
//! the events above its head and has missed nothing; one whose head is below it reads
//! `change_log` instead. Order and exactly-once follow from the ids alone.
//!
//! The text is JSON, `{"after":N,"events":[[id,table,op,row,old,committed_at,micros],…]}`,
//! with the columns [`changes::READ_AFTER`](super::changes::READ_AFTER) returns, so an
//! event decoded from a batch is the event a read of `change_log` would have made.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::event::{ChangeRecord, Event};

/// PostgreSQL refuses NOTIFY payloads of 8000 bytes or more (the default build).
pub const NOTIFY_LIMIT: usize = 7999;

/// Events with the id that precedes the first of them.
#[derive(Debug)]
pub struct Batch {
    /// The id of the newest event committed before `events[0]` (0: none ever).
    pub after: u64,
    /// The events, in id order.
    pub events: Vec<Arc<Event>>,
}

/// Why a batch's text could not become events; the receiver reads `change_log`.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Not the JSON shape above.
    #[error("batch is not valid: {0}")]
    Syntax(#[from] serde_json::Error),
    /// A record that no read of `change_log` would turn into an event either.
    #[error("batch holds a bad event: {0}")]
    Event(#[from] crate::event::EventError),
    /// Ids not strictly increasing above `after`.
    #[error("batch ids are out of order")]
    Order,
}

/// One record's columns, as [`changes::READ_AFTER`](super::changes::READ_AFTER) lists them.
type Columns = (
    i64,
    String,
    String,
    Option<Value>,
    Option<Value>,
    String,
    i64,
);

#[derive(Serialize)]
struct WireOut<'a> {
    after: u64,
    events: Vec<ColumnsRef<'a>>,
}

type ColumnsRef<'a> = (
    i64,
    &'a str,
    &'a str,
    &'a Option<Value>,
    &'a Option<Value>,
    &'a str,
    i64,
);

#[derive(Deserialize)]
struct WireIn {
    after: u64,
    events: Vec<Columns>,
}

/// The text of a batch of `records` after `after`.
pub fn encode(after: u64, records: &[ChangeRecord]) -> String {
    let wire = WireOut {
        after,
        events: records
            .iter()
            .map(|r| {
                (
                    r.id,
                    r.table.as_str(),
                    r.op.as_str(),
                    &r.row,
                    &r.old,
                    r.committed_at.as_str(),
                    r.committed_at_micros,
                )
            })
            .collect(),
    };
    // Serialising strings, integers and Values cannot fail.
    serde_json::to_string(&wire).unwrap_or_default()
}

/// One event's columns, borrowed from an [`Event`] (serialised like [`Columns`]).
type EventColumns<'a> = (
    u64,
    &'a str,
    &'a str,
    Option<&'a serde_json::Map<String, Value>>,
    Option<&'a serde_json::Map<String, Value>>,
    &'a str,
    i64,
);

#[derive(Serialize)]
struct EventsOut<'a> {
    after: u64,
    events: Vec<EventColumns<'a>>,
}

/// The text of a batch of `events` (already decoded) after `after`: what the relay
/// publishes of the events its replica read.
pub fn encode_events(after: u64, events: &[Arc<Event>]) -> String {
    let wire = EventsOut {
        after,
        events: events
            .iter()
            .map(|e| {
                (
                    e.id,
                    &*e.table,
                    e.op.as_str(),
                    e.row.as_ref(),
                    e.old.as_ref(),
                    e.committed_at(),
                    e.committed_at_micros,
                )
            })
            .collect(),
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

/// The text of a batch of `records` after `after`, if it fits a NOTIFY payload.
pub fn encode_for_notify(after: u64, records: &[ChangeRecord]) -> Option<String> {
    let text = encode(after, records);
    (text.len() <= NOTIFY_LIMIT).then_some(text)
}

/// Decodes a batch's text into events.
pub fn decode(text: &[u8]) -> Result<Batch, BatchError> {
    let wire: WireIn = serde_json::from_slice(text)?;
    let mut events = Vec::with_capacity(wire.events.len());
    let mut previous = wire.after;
    for (id, table, op, row, old, committed_at, committed_at_micros) in wire.events {
        let event = Event::from_record(ChangeRecord {
            id,
            table,
            op,
            row,
            old,
            committed_at,
            committed_at_micros,
        })?;
        if event.id <= previous {
            return Err(BatchError::Order);
        }
        previous = event.id;
        events.push(Arc::new(event));
    }
    Ok(Batch {
        after: wire.after,
        events,
    })
}

/// What a receiver whose log's head is `head` does with a batch.
#[derive(Debug, PartialEq, Eq)]
pub enum Fit {
    /// Every event in it is at or below the head: already held.
    Held,
    /// It continues the head: take the events from this index on (those above it).
    Continues(usize),
    /// Events between the head and `after` are missing: read `change_log`.
    Gap,
}

impl Batch {
    /// How this batch fits a log whose head is `head`.
    pub fn fit(&self, head: u64) -> Fit {
        match self.events.last() {
            None => Fit::Held,
            Some(last) if last.id <= head => Fit::Held,
            Some(_) if self.after > head => Fit::Gap,
            Some(_) => Fit::Continues(self.events.partition_point(|e| e.id <= head)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(id: i64, row: Value) -> ChangeRecord {
        ChangeRecord {
            id,
            table: "orders".into(),
            op: "INSERT".into(),
            row: Some(row),
            old: None,
            committed_at: "2026-01-01T00:00:00.000000Z".into(),
            committed_at_micros: 1_767_225_600_000_000,
        }
    }

    #[test]
    fn a_batch_decodes_to_the_events_a_read_makes() {
        let records = [
            record(5, json!({"id": 1, "price": 1.10})),
            record(9, json!({"n": "a'b\"c\n"})),
        ];
        let text = encode(3, &records);
        let batch = decode(text.as_bytes()).unwrap();
        assert_eq!(batch.after, 3);
        for (event, record) in batch.events.iter().zip(records) {
            let read = Event::from_record(record).unwrap();
            assert_eq!(event.sse, read.sse);
        }
    }

    #[test]
    fn decoded_events_encode_back_to_the_same_batch() {
        let text = encode(3, &[record(5, json!({"a": 1.50})), record(9, json!({}))]);
        let batch = decode(text.as_bytes()).unwrap();
        assert_eq!(encode_events(3, &batch.events), text);
    }

    #[test]
    fn fit_takes_what_continues_the_head_and_refuses_gaps() {
        let batch =
            decode(encode(3, &[record(5, json!({})), record(9, json!({}))]).as_bytes()).unwrap();
        assert_eq!(batch.fit(2), Fit::Gap, "4 or less may be missing");
        assert_eq!(batch.fit(3), Fit::Continues(0));
        assert_eq!(
            batch.fit(4),
            Fit::Continues(0),
            "4 was a gap the head passed"
        );
        assert_eq!(batch.fit(5), Fit::Continues(1));
        assert_eq!(batch.fit(9), Fit::Held);
        assert_eq!(batch.fit(12), Fit::Held);
    }

    #[test]
    fn a_batch_too_large_for_notify_is_not_encoded_for_it() {
        let big = record(1, json!({"text": "x".repeat(NOTIFY_LIMIT)}));
        assert!(encode_for_notify(0, &[big]).is_none());
        assert!(encode_for_notify(0, &[record(1, json!({}))]).is_some());
    }

    #[test]
    fn out_of_order_ids_are_refused() {
        let text = encode(3, &[record(9, json!({})), record(5, json!({}))]);
        assert!(matches!(decode(text.as_bytes()), Err(BatchError::Order)));
        let text = encode(9, &[record(5, json!({}))]);
        assert!(matches!(decode(text.as_bytes()), Err(BatchError::Order)));
    }
}
