//! The clients and the one write each gets per batch.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use tokio::net::TcpStream;

/// A client's bytes not yet taken by its socket; past this it is dropped, as a gateway
/// drops a lagging client.
const MAX_PENDING: usize = 16 << 20;

/// Which framing a client's stream has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WebSocket text frames.
    Ws,
    /// SSE blocks in HTTP/1.1 chunks.
    Sse,
}

/// One batch of events, framed once per transport.
#[derive(Debug, Default)]
pub struct Batch {
    /// The WebSocket frames of every event, back to back.
    pub ws: Vec<u8>,
    /// One chunk holding the SSE block of every event.
    pub sse: Vec<u8>,
}

impl Batch {
    /// Adds one `change` message (its JSON) with event id `id`.
    pub fn push(&mut self, id: u64, json: &[u8]) {
        ws_frame(json, &mut self.ws);
        self.sse
            .extend_from_slice(format!("id: {id}\nevent: change\ndata: ").as_bytes());
        self.sse.extend_from_slice(json);
        self.sse.extend_from_slice(b"\n\n");
    }

    /// Wraps the SSE blocks in one HTTP chunk; call once, after the last push.
    pub fn finish(&mut self) {
        let blocks = std::mem::take(&mut self.sse);
        self.sse = chunk(&blocks);
    }
}

/// Every connected client, and the position a newcomer starts after.
pub struct Clients {
    /// The id of the last event delivered: a new client's `ready` head.
    head: Cell<u64>,
    /// The connected clients, in join order.
    list: RefCell<Vec<Rc<Client>>>,
}

struct Client {
    stream: TcpStream,
    kind: Kind,
    /// What the socket would not take yet, written by [`flush`] when it can.
    pending: RefCell<Vec<u8>>,
    /// Set when a write failed: dropped at the next batch.
    dead: Cell<bool>,
}

impl Clients {
    /// No clients yet; newcomers start after `head`.
    pub fn new(head: u64) -> Clients {
        Clients {
            head: Cell::new(head),
            list: RefCell::new(Vec::new()),
        }
    }

    /// Sends `ready` and adds the client: it gets every batch after the current head.
    pub fn join(&self, stream: TcpStream, kind: Kind) {
        let json = format!(
            r#"{{"type":"ready","head":"{}","replayed":0}}"#,
            self.head.get()
        );
        let mut ready = Vec::new();
        match kind {
            Kind::Ws => ws_frame(json.as_bytes(), &mut ready),
            Kind::Sse => {
                let block = format!("event: ready\nid: {}\ndata: {json}\n\n", self.head.get());
                ready = chunk(block.as_bytes());
            }
        }
        let client = Rc::new(Client {
            stream,
            kind,
            pending: RefCell::new(Vec::new()),
            dead: Cell::new(false),
        });
        if client.send(&ready) {
            self.list.borrow_mut().push(client);
        }
    }

    /// Writes `batch` to every client (one write each) and moves the head to `head`.
    pub fn deliver(&self, batch: &Batch, head: u64) {
        self.head.set(head);
        self.list.borrow_mut().retain(|client| {
            let bytes = match client.kind {
                Kind::Ws => &batch.ws,
                Kind::Sse => &batch.sse,
            };
            !client.dead.get() && client.send(bytes)
        });
    }
}

impl Client {
    /// One non-blocking write; what the socket does not take waits in `pending`.
    /// False when the client is gone or too far behind.
    fn send(self: &Rc<Self>, bytes: &[u8]) -> bool {
        let mut pending = self.pending.borrow_mut();
        if !pending.is_empty() {
            pending.extend_from_slice(bytes);
            return pending.len() <= MAX_PENDING;
        }
        let written = match self.stream.try_write(bytes) {
            Ok(n) => n,
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => 0,
            Err(_) => return false,
        };
        if written < bytes.len() {
            pending.extend_from_slice(&bytes[written..]);
            tokio::task::spawn_local(flush(Rc::clone(self)));
        }
        true
    }
}

/// Writes a client's pending bytes as its socket takes them.
async fn flush(client: Rc<Client>) {
    loop {
        if client.stream.writable().await.is_err() {
            client.dead.set(true);
            return;
        }
        let mut pending = client.pending.borrow_mut();
        match client.stream.try_write(&pending) {
            Ok(n) => {
                pending.drain(..n);
                if pending.is_empty() {
                    return;
                }
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                client.dead.set(true);
                return;
            }
        }
    }
}

/// Appends an unmasked, final WebSocket text frame holding `payload`.
fn ws_frame(payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x81);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xffff => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// `bytes` as one HTTP/1.1 chunk.
fn chunk(bytes: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", bytes.len()).into_bytes();
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_use_every_length_form() {
        for (len, header) in [(5, 2), (126, 4), (70_000, 10)] {
            let mut out = Vec::new();
            ws_frame(&vec![b'x'; len], &mut out);
            assert_eq!(out.len(), header + len);
            assert_eq!(out[0], 0x81);
        }
    }

    #[test]
    fn a_batch_is_one_chunk_of_blocks() {
        let mut batch = Batch::default();
        batch.push(7, b"{}");
        batch.push(8, b"{}");
        batch.finish();
        let text = String::from_utf8(batch.sse).unwrap();
        // Two blocks of 30 bytes: one chunk of 0x3c.
        assert!(text.starts_with("3c\r\nid: 7\n"), "{text:?}");
        assert!(text.ends_with("data: {}\n\n\r\n"));
        assert_eq!(batch.ws, b"\x81\x02{}\x81\x02{}");
    }
}
