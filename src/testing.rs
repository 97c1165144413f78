//! Test support shared by the unit tests and the benches: events built from a few
//! fields, and history and rows in memory for sessions. Not part of the API.

use std::sync::Arc;

use serde_json::Value;

use crate::event::{ChangeRecord, Event};
use crate::session::{CatchUp, Page, Reading, SnapshotPage, SnapshotRead, Snapshots};

/// The commit time every test event carries.
pub const COMMITTED_AT: &str = "2026-11-24T21:00:00.123456Z";

/// A `change_log` row with these fields, committed at [`COMMITTED_AT`].
pub fn record(
    id: i64,
    table: &str,
    op: &str,
    row: Option<Value>,
    old: Option<Value>,
) -> ChangeRecord {
    ChangeRecord {
        id,
        table: table.into(),
        op: op.into(),
        row,
        old,
        committed_at: COMMITTED_AT.into(),
        committed_at_micros: 0,
    }
}

/// The event of [`record`]; panics if the fields cannot make one (a broken test).
pub fn event(id: i64, table: &str, op: &str, row: Option<Value>, old: Option<Value>) -> Arc<Event> {
    Arc::new(Event::from_record(record(id, table, op, row, old)).expect("a valid test event"))
}

/// History held in memory, as a session's catch-up reader: what `change_log` would
/// return, without a database.
#[derive(Debug, Default)]
pub struct History {
    /// The events, in id order.
    pub events: Vec<Arc<Event>>,
    /// The highest id deleted, as retention records it: a reader below it is gone.
    pub pruned_upto: u64,
}

impl CatchUp for History {
    fn page_after(&self, cursor: u64, limit: usize) -> Reading<'_, Page> {
        let page: Vec<Arc<Event>> = self
            .events
            .iter()
            .filter(|event| event.id > cursor)
            .take(limit)
            .cloned()
            .collect();
        let gone = cursor < self.pruned_upto || page.is_empty();
        Box::pin(std::future::ready(Ok(if gone {
            Page::Gone
        } else {
            Page::Events(page)
        })))
    }

    fn issued_head(&self) -> Reading<'_, u64> {
        let newest = self.events.last().map_or(0, |event| event.id);
        Box::pin(std::future::ready(Ok(newest.max(self.pruned_upto))))
    }
}

/// Rows held in memory, as a session's snapshot reader: each table's rows, read
/// `page` at a time, at `position`.
#[derive(Debug, Clone, Default)]
pub struct Rows {
    /// The snapshot's position.
    pub position: u64,
    /// Each table and all its rows (JSON text), in key order.
    pub tables: Vec<SnapshotPage>,
    /// Rows per page (at least 1).
    pub page: usize,
}

impl Snapshots for Rows {
    fn begin(&self, tables: Option<Vec<Arc<str>>>) -> Reading<'_, Box<dyn SnapshotRead>> {
        let mut read = self.clone();
        if let Some(tables) = tables {
            read.tables.retain(|page| tables.contains(&page.table));
        }
        Box::pin(std::future::ready(Ok(
            Box::new(read) as Box<dyn SnapshotRead>
        )))
    }
}

impl SnapshotRead for Rows {
    fn position(&self) -> u64 {
        self.position
    }

    fn next_page(&mut self) -> Reading<'_, Option<SnapshotPage>> {
        let page = self.tables.first_mut().map(|all| {
            let take = self.page.max(1).min(all.rows.len());
            SnapshotPage {
                table: Arc::clone(&all.table),
                rows: all.rows.drain(..take).collect(),
            }
        });
        if self.tables.first().is_some_and(|all| all.rows.is_empty()) {
            self.tables.remove(0);
        }
        Box::pin(std::future::ready(Ok(page)))
    }
}

/// A masked client WebSocket frame whose first header byte is `first` (FIN, RSV bits,
/// opcode): what a client sends, for the frame reader's tests, its fuzz target and
/// the socket tests.
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = vec![first];
    match payload.len() {
        len @ 0..=125 => out.push(0x80 | len as u8),
        len @ 126..=65_535 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A connected pair of loopback TCP sockets: (the client's end, the server's end).
pub async fn tcp_pair() -> (tokio::net::TcpStream, tokio::net::TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback listener");
    let address = listener.local_addr().expect("its address");
    let (client, accepted) =
        tokio::join!(tokio::net::TcpStream::connect(address), listener.accept());
    (
        client.expect("a connection"),
        accepted.expect("an accepted connection").0,
    )
}
