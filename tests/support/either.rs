//! A stream client of either transport, for tests that hold for both: messages read
//! as JSON, SSE blocks checked on the way (`event:` is the message type; `id:` is a
//! change's id, the `head` of `ready` and `reset`, and absent on every other message,
//! such as snapshot pages).

use std::future::Future;
use std::net::SocketAddr;

use serde_json::Value;

use super::{SseClient, SseEvent, WsClient, WAIT};

/// The two transports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Transport {
    /// `GET /ws`.
    Ws,
    /// `GET /events`.
    Sse,
}

/// Both transports, to loop over.
pub const BOTH: [Transport; 2] = [Transport::Ws, Transport::Sse];

/// A connected stream of either transport.
pub enum Client {
    /// A WebSocket stream.
    Ws(WsClient),
    /// An SSE stream.
    Sse(SseClient),
}

impl Client {
    /// Opens a stream with `query`; SSE must answer 200.
    pub async fn open(transport: Transport, addr: SocketAddr, query: &str) -> Client {
        match transport {
            Transport::Ws => Client::Ws(WsClient::connect(addr, query).await),
            Transport::Sse => {
                let sse = SseClient::connect(addr, query, &[]).await;
                assert_eq!(sse.status, 200, "GET /events?{query}");
                Client::Sse(sse)
            }
        }
    }

    /// The next message that is not a heartbeat.
    pub async fn next(&mut self) -> Value {
        match self {
            Client::Ws(ws) => ws.next_json().await,
            Client::Sse(sse) => checked_sse(&sse.next_event().await),
        }
    }

    /// The messages before `ready`, and `ready`.
    pub async fn until_ready(&mut self) -> (Vec<Value>, Value) {
        within("ready", async {
            let mut before = Vec::new();
            loop {
                let message = self.next().await;
                if message["type"] == "ready" {
                    return (before, message);
                }
                before.push(message);
            }
        })
        .await
    }

    /// The next `n` messages, each a change.
    pub async fn changes(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let message = self.next().await;
            assert_eq!(
                message["type"], "change",
                "expected a change, got {message}"
            );
            out.push(message);
        }
        out
    }

    /// Changes up to and including the first TRUNCATE of `orders`.
    pub async fn changes_until_truncate(&mut self) -> Vec<Value> {
        within("a TRUNCATE of orders", async {
            let mut out = Vec::new();
            loop {
                let message = self.next().await;
                assert_eq!(
                    message["type"], "change",
                    "expected a change, got {message}"
                );
                let last = message["op"] == "TRUNCATE" && message["table"] == "orders";
                out.push(message);
                if last {
                    return out;
                }
            }
        })
        .await
    }
}

/// Awaits `future`, failing the test after [`WAIT`]: for loops that skip messages
/// (heartbeats, keep-alives) until a condition, which a broken server could make
/// endless.
pub async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {WAIT:?}"))
}

/// An SSE block's message, with `event:` and `id:` checked against it.
pub fn checked_sse(event: &SseEvent) -> Value {
    let message = event.json();
    let kind = message["type"].as_str().expect("a type").to_owned();
    assert_eq!(event.event.as_deref(), Some(kind.as_str()), "{event:?}");
    match kind.as_str() {
        "change" => assert_eq!(event.id.as_deref(), message["id"].as_str(), "{event:?}"),
        "ready" | "reset" => assert_eq!(event.id.as_deref(), message["head"].as_str(), "{event:?}"),
        _ => assert_eq!(event.id, None, "{event:?}"),
    }
    message
}

/// Percent-encodes a query value.
pub fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
