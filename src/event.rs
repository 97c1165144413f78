//! A captured change and its wire forms, encoded once when it enters the gateway.
//!
//! Every subscriber that sends an event shares the same bytes: the WebSocket frame
//! (its header built once, its payload a slice of the SSE block), the compressed
//! WebSocket frame (built by the first permessage-deflate client that needs it), and
//! the SSE block.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde_json::Value;

use crate::http::ws::frame::{self, Frame};

/// The kind of change a row underwent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Op {
    /// A row was inserted.
    Insert,
    /// A row was updated.
    Update,
    /// A row was deleted.
    Delete,
    /// The table was truncated (no row).
    Truncate,
}

impl Op {
    /// All operations, in bit order of [`Op::bit`].
    pub const ALL: [Op; 4] = [Op::Insert, Op::Update, Op::Delete, Op::Truncate];

    /// Parses the operation names used by `change_log.op` and the `ops=` parameter
    /// (case-insensitive).
    pub fn parse(text: &str) -> Option<Op> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str().eq_ignore_ascii_case(text))
    }

    /// The upper-case SQL name.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "INSERT",
            Op::Update => "UPDATE",
            Op::Delete => "DELETE",
            Op::Truncate => "TRUNCATE",
        }
    }

    /// A distinct bit, so that a set of operations fits in a `u8`.
    pub fn bit(self) -> u8 {
        match self {
            Op::Insert => 1,
            Op::Update => 2,
            Op::Delete => 4,
            Op::Truncate => 8,
        }
    }
}

/// One row of `realtime.change_log`, as read from the database.
#[derive(Clone, Debug, PartialEq)]
pub struct ChangeRecord {
    /// The commit-ordered id.
    pub id: i64,
    /// `table` or `schema.table`.
    pub table: String,
    /// `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`.
    pub op: String,
    /// The new row (the old one for DELETE; none for TRUNCATE).
    pub row: Option<Value>,
    /// The old row, for UPDATE.
    pub old: Option<Value>,
    /// Commit time, already formatted as RFC 3339 in UTC.
    pub committed_at: String,
    /// Commit time in microseconds since the Unix epoch, for latency metrics.
    pub committed_at_micros: i64,
}

/// Why a `change_log` row could not become an event.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EventError {
    /// Ids are positive; anything else is a corrupt row.
    #[error("change_log id {0} is not positive")]
    BadId(i64),
    /// The op column held something the capture trigger never writes.
    #[error("change_log row {id} has unknown op {op:?}")]
    BadOp {
        /// The row's id.
        id: i64,
        /// The value found.
        op: String,
    },
    /// `row` (and an UPDATE's `old`) must be a JSON object when present.
    #[error("change_log row {0} has a row that is not a JSON object")]
    BadRow(i64),
}

/// A change as the gateway holds it: parsed for filtering, encoded for sending.
#[derive(Debug)]
pub struct Event {
    /// The commit-ordered id (the stream position).
    pub id: u64,
    /// `table` or `schema.table`.
    pub table: Arc<str>,
    /// What happened.
    pub op: Op,
    /// The row filters look at: the new row, or the old one for DELETE.
    pub row: Option<serde_json::Map<String, Value>>,
    /// The old row of an UPDATE: live views judge both images, so that a row moving
    /// out of a filter is delivered as `leave` (see [`View`]).
    pub old: Option<serde_json::Map<String, Value>>,
    /// Commit time in microseconds since the Unix epoch.
    pub committed_at_micros: i64,
    /// Commit time as sent (RFC 3339, UTC), kept to encode the view forms.
    committed_at: String,
    /// The JSON message as a WebSocket text frame: header and payload (the SSE
    /// block's `data:` line), written as they are by every WebSocket subscriber.
    ws: Frame,
    /// The permessage-deflate form of `ws`, compressed once by the first client that
    /// negotiated it; `None` inside: below `--ws-compress-min`, or deflate does not
    /// shrink it.
    ws_deflated: OnceLock<Option<Frame>>,
    /// The same message as one SSE block (`id:`, `event:`, `data:`, blank line).
    pub sse: Bytes,
    /// Set by the first transport that sends the event, so that commit→send latency is
    /// recorded once per event rather than once per subscriber.
    first_sent: AtomicBool,
    /// The `"view":"enter"` form, built by the first filtered subscriber that needs it
    /// and shared by every other: encoded at most once per event.
    enter: OnceLock<Arc<Event>>,
    /// The `"view":"leave"` form, likewise.
    leave: OnceLock<Arc<Event>>,
    /// For a view form: the event it was built from, which keeps the first-send flag
    /// (weak: the original holds its forms).
    origin: Weak<Event>,
}

/// How an UPDATE moved a row relative to a live view's filters (see
/// [`Selection::judge`](crate::filter::Selection::judge)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// Only the new row matches: the row joins the view.
    Enter,
    /// Only the old row matches: the client removes the row.
    Leave,
}

#[derive(Serialize)]
struct ChangeMessage<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    table: &'a str,
    op: Op,
    #[serde(skip_serializing_if = "Option::is_none")]
    view: Option<View>,
    #[serde(skip_serializing_if = "Option::is_none")]
    row: Option<&'a serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<&'a serde_json::Map<String, Value>>,
    committed_at: &'a str,
}

/// The two wire forms of one message, sharing one buffer: the SSE block and the
/// WebSocket text frame, whose payload is the block's `data:` line.
fn encode(id: u64, message: &ChangeMessage<'_>) -> (Frame, Bytes) {
    // Serialising a map of Values into a Vec cannot fail.
    let json = serde_json::to_string(message).unwrap_or_default();
    let sse = sse_block(Some(id), "change", &json);
    // The block ends with the data and "\n\n".
    let data = sse.slice(sse.len() - 2 - json.len()..sse.len() - 2);
    (Frame::new(frame::TEXT, false, data), sse)
}

impl Event {
    /// Commit time as sent (RFC 3339, UTC): the relay republishes it as read.
    pub fn committed_at(&self) -> &str {
        &self.committed_at
    }

    /// Converts a `change_log` row and encodes its wire forms.
    pub fn from_record(record: ChangeRecord) -> Result<Event, EventError> {
        let id = u64::try_from(record.id)
            .ok()
            .filter(|id| *id > 0)
            .ok_or(EventError::BadId(record.id))?;
        let op = Op::parse(&record.op).ok_or_else(|| EventError::BadOp {
            id: record.id,
            op: record.op.clone(),
        })?;
        let row = match (op, record.row) {
            (Op::Truncate, _) | (_, None) | (_, Some(Value::Null)) => None,
            (_, Some(Value::Object(map))) => Some(map),
            (_, Some(_)) => return Err(EventError::BadRow(record.id)),
        };
        let old = match (op, record.old) {
            (Op::Update, Some(Value::Object(map))) => Some(map),
            (Op::Update, Some(old)) if !old.is_null() => return Err(EventError::BadRow(record.id)),
            _ => None,
        };
        let committed_at = record.committed_at;
        let message = ChangeMessage {
            kind: "change",
            id: &id.to_string(),
            table: &record.table,
            op,
            view: None,
            row: row.as_ref(),
            old: old.as_ref(),
            committed_at: &committed_at,
        };
        // The WebSocket text is the SSE block's `data:` line: one buffer, held once
        // in the ring.
        let (ws, sse) = encode(id, &message);
        Ok(Event {
            id,
            table: table_name(&record.table),
            op,
            row,
            old,
            committed_at_micros: record.committed_at_micros,
            committed_at,
            ws,
            ws_deflated: OnceLock::new(),
            sse,
            first_sent: AtomicBool::new(false),
            enter: OnceLock::new(),
            leave: OnceLock::new(),
            origin: Weak::new(),
        })
    }

    /// The form of this event that carries `"view": view`, built on first use and
    /// shared after. It carries no rows to judge (it is only ever sent).
    pub fn view(self: &Arc<Self>, view: View) -> &Arc<Event> {
        let cell = match view {
            View::Enter => &self.enter,
            View::Leave => &self.leave,
        };
        cell.get_or_init(|| {
            let message = ChangeMessage {
                kind: "change",
                id: &self.id.to_string(),
                table: &self.table,
                op: self.op,
                view: Some(view),
                row: self.row.as_ref(),
                old: self.old.as_ref(),
                committed_at: &self.committed_at,
            };
            let (ws, sse) = encode(self.id, &message);
            Arc::new(Event {
                id: self.id,
                table: Arc::clone(&self.table),
                op: self.op,
                row: None,
                old: None,
                committed_at_micros: self.committed_at_micros,
                committed_at: String::new(),
                ws,
                ws_deflated: OnceLock::new(),
                sse,
                first_sent: AtomicBool::new(false),
                enter: OnceLock::new(),
                leave: OnceLock::new(),
                origin: Arc::downgrade(self),
            })
        })
    }

    /// The JSON message (a WebSocket text payload, the SSE block's data), for
    /// inspection: the transports send the frame and the block as bytes.
    pub fn json(&self) -> &str {
        // Built from a `String`; checked here rather than trusted without `unsafe`.
        std::str::from_utf8(self.ws.payload()).unwrap_or_default()
    }

    /// The WebSocket frame to send: the compressed one when the client negotiated
    /// permessage-deflate (`compress_min` is `--ws-compress-min`, the same for every
    /// client) and compression applies, else the plain one. Either is built once.
    pub fn ws_frame(&self, compress_min: Option<usize>) -> &Frame {
        compress_min
            .and_then(|min| {
                self.ws_deflated
                    .get_or_init(|| frame::compressed_text(self.ws.payload(), min))
                    .as_ref()
            })
            .unwrap_or(&self.ws)
    }

    /// True exactly once: for the first caller after the event was created (a view
    /// form counts as its original).
    pub fn mark_first_send(&self) -> bool {
        if let Some(origin) = self.origin.upgrade() {
            return origin.mark_first_send();
        }
        !self.first_sent.load(Ordering::Relaxed) && !self.first_sent.swap(true, Ordering::Relaxed)
    }
}

/// The one shared copy of a tracked table's name: events and stream selections hold
/// the same `Arc`, so matching a table is a pointer comparison (see
/// [`crate::filter::Selection::judge`], run per client per change), and an event costs
/// no allocation for its table. Only tracked tables' names come here (events read from
/// `change_log`, stream parameters checked against the catalog), so the set stays as
/// small as the catalog.
pub fn table_name(name: &str) -> Arc<str> {
    static NAMES: std::sync::LazyLock<parking_lot::RwLock<std::collections::HashSet<Arc<str>>>> =
        std::sync::LazyLock::new(Default::default);
    if let Some(name) = NAMES.read().get(name) {
        return Arc::clone(name);
    }
    let mut names = NAMES.write();
    if let Some(name) = names.get(name) {
        return Arc::clone(name);
    }
    let shared: Arc<str> = Arc::from(name);
    names.insert(Arc::clone(&shared));
    shared
}

/// Builds one SSE block: optional `id:`, `event:`, one `data:` line, blank line.
/// `data` is compact JSON, which never holds a raw CR or LF.
pub fn sse_block(id: Option<u64>, event: &str, data: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(data.len() + event.len() + 40);
    if let Some(id) = id {
        let _ = writeln!(out, "id: {id}");
    }
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(data.as_bytes());
    out.put_slice(b"\n\n");
    out.freeze()
}

/// The other messages of the stream protocol (everything but `change`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// The backlog has been sent; the stream is live.
    Ready {
        /// The gateway's head when the backlog ended (after a snapshot: its position).
        head: u64,
        /// How many change events the backlog held.
        replayed: u64,
        /// After a snapshot, how many rows it sent.
        snapshot: Option<u64>,
    },
    /// One page of a snapshot's rows (no position: on SSE a reconnect mid-snapshot
    /// starts over).
    Snapshot {
        /// The table, as events name it.
        table: Arc<str>,
        /// The rows as a JSON array, each the JSON of a change's `row`.
        rows: String,
    },
    /// The events after the client's position are gone; it must refetch.
    Reset {
        /// Where the stream goes on from.
        head: u64,
    },
    /// A keep-alive that carries the client's position.
    Heartbeat {
        /// Every event up to here was delivered or did not match.
        position: u64,
    },
    /// The reply to a client's `{"type":"ping"}`.
    Pong,
}

impl Control {
    /// The JSON message.
    pub fn json(&self) -> String {
        match self {
            Control::Ready {
                head,
                replayed,
                snapshot: None,
            } => format!(r#"{{"type":"ready","head":"{head}","replayed":{replayed}}}"#),
            Control::Ready {
                head,
                replayed,
                snapshot: Some(rows),
            } => format!(
                r#"{{"type":"ready","head":"{head}","replayed":{replayed},"snapshot":{rows}}}"#
            ),
            Control::Snapshot { table, rows } => format!(
                r#"{{"type":"snapshot","table":{},"rows":{rows}}}"#,
                Value::from(&**table)
            ),
            Control::Reset { head } => {
                format!(r#"{{"type":"reset","reason":"history_gone","head":"{head}"}}"#)
            }
            Control::Heartbeat { position } => {
                format!(r#"{{"type":"heartbeat","id":"{position}"}}"#)
            }
            Control::Pong => r#"{"type":"pong"}"#.to_owned(),
        }
    }

    /// The SSE block, with `id:` where the message has a position.
    pub fn sse(&self) -> Bytes {
        let name = match self {
            Control::Ready { .. } => "ready",
            Control::Snapshot { .. } => "snapshot",
            Control::Reset { .. } => "reset",
            Control::Heartbeat { .. } => "heartbeat",
            Control::Pong => "pong",
        };
        sse_block(self.position(), name, &self.json())
    }

    /// The stream position the message carries (its SSE `id:`), if any.
    pub fn position(&self) -> Option<u64> {
        match self {
            Control::Ready { head, .. } | Control::Reset { head } => Some(*head),
            Control::Heartbeat { position } => Some(*position),
            Control::Snapshot { .. } | Control::Pong => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(event: &Event) -> &str {
        event.json()
    }

    fn record(op: &str, row: Option<Value>, old: Option<Value>) -> ChangeRecord {
        crate::testing::record(42, "orders", op, row, old)
    }

    #[test]
    fn update_event_encodes_the_documented_fields() {
        let event = Event::from_record(record(
            "UPDATE",
            Some(json!({"id": 1, "status": "shipped"})),
            Some(json!({"id": 1, "status": "pending"})),
        ))
        .unwrap();
        let parsed: Value = serde_json::from_str(json_of(&event)).unwrap();
        assert_eq!(
            parsed,
            json!({"type":"change","id":"42","table":"orders","op":"UPDATE",
                   "row":{"id":1,"status":"shipped"},"old":{"id":1,"status":"pending"},
                   "committed_at":"2026-11-24T21:00:00.123456Z"})
        );
        let sse = std::str::from_utf8(&event.sse).unwrap();
        assert!(sse.starts_with("id: 42\nevent: change\ndata: {"));
        assert!(sse.ends_with("}\n\n"));
        assert_eq!(sse.matches('\n').count(), 4);
        // The WebSocket text is the block's data line, in the same buffer.
        let data = sse.lines().nth(2).unwrap().strip_prefix("data: ").unwrap();
        assert_eq!(json_of(&event), data);
        let range = event.sse.as_ptr_range();
        assert!(range.contains(&json_of(&event).as_ptr()));
        // The WebSocket frame is that payload behind its header.
        let plain = event.ws_frame(None);
        assert_eq!(plain.head(), [0x81, 126, 0, data.len() as u8]);
        assert_eq!(plain.payload().as_ptr(), json_of(&event).as_ptr());
        assert!(std::ptr::eq(plain, event.ws_frame(Some(4096))));
    }

    #[test]
    fn truncate_has_no_row_and_insert_has_no_old() {
        let truncate = Event::from_record(record("TRUNCATE", None, None)).unwrap();
        assert!(!json_of(&truncate).contains("\"row\""));
        let insert =
            Event::from_record(record("insert", Some(json!({"id": 1})), Some(json!({})))).unwrap();
        assert!(!json_of(&insert).contains("\"old\""));
        assert_eq!(insert.op, Op::Insert);
    }

    #[test]
    fn newlines_inside_values_never_break_the_sse_block() {
        let event =
            Event::from_record(record("INSERT", Some(json!({"note": "a\nb\r\nc"})), None)).unwrap();
        let sse = std::str::from_utf8(&event.sse).unwrap();
        assert_eq!(sse.lines().count(), 4);
    }

    #[test]
    fn float_values_reach_clients_digit_for_digit() {
        // Found by fuzz/change_record: serde_json's default float parser is sometimes one
        // ulp off, so a jsonb row read by tokio-postgres was re-encoded with a changed
        // last digit (about 1 in 10 full-precision float8 values).
        for text in ["985.6906946328695", "7.06416436983199e-304", "0.1"] {
            let row: Value = serde_json::from_str(&format!(r#"{{"reading":{text}}}"#)).unwrap();
            let event = Event::from_record(record("INSERT", Some(row), None)).unwrap();
            assert!(
                json_of(&event).contains(&format!(r#""reading":{text}}}"#)),
                "{text} became {}",
                json_of(&event)
            );
        }
    }

    #[test]
    fn corrupt_rows_are_typed_errors() {
        let mut bad = record("UPSERT", None, None);
        assert!(matches!(
            Event::from_record(bad.clone()),
            Err(EventError::BadOp { .. })
        ));
        bad.op = "INSERT".into();
        bad.row = Some(json!([1]));
        assert!(matches!(
            Event::from_record(bad.clone()),
            Err(EventError::BadRow(42))
        ));
        bad.id = 0;
        assert!(matches!(Event::from_record(bad), Err(EventError::BadId(0))));
    }

    #[test]
    fn first_send_is_reported_once() {
        let event = Event::from_record(record("DELETE", Some(json!({"id": 1})), None)).unwrap();
        assert!(event.mark_first_send());
        assert!(!event.mark_first_send());
    }
}
