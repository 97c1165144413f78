//! A client that keeps its own view of `orders` from a WebSocket or SSE stream and,
//! after every disconnect, resumes on a random replica with `since` (or, on SSE,
//! sometimes `Last-Event-ID`). It records everything the checker needs: every change id
//! in arrival order, every `reset` and the position it had when it got it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::proto::{self, Dechunker, Frame};

/// The filter filtered clients use: rows move in and out of it.
pub const FILTER: &str = "status=eq.pending";

/// Whether a row passes [`FILTER`].
pub fn pending(row: Option<&Value>) -> bool {
    row.and_then(|r| r.get("status")).and_then(Value::as_str) == Some("pending")
}

/// What a client is.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// WebSocket, or SSE.
    pub ws: bool,
    /// Filtered by [`FILTER`].
    pub filtered: bool,
    /// Starts (and starts over after a `reset`) with `snapshot=true` and no position:
    /// its view is the snapshot plus the stream after it.
    pub snapshot: bool,
    /// The seed of its own choices (which replica, `since` or `Last-Event-ID`).
    pub seed: u64,
}

/// A `reset` the client got.
#[derive(Debug, Clone, Copy)]
pub struct Reset {
    /// The position it resumed from.
    pub since: u64,
    /// The head the stream went on from.
    pub head: u64,
    /// When it arrived.
    pub at: Instant,
}

/// What a client saw; the checker reads it at the end.
#[derive(Debug, Default)]
pub struct Seen {
    /// Change ids in arrival order.
    pub ids: Vec<u64>,
    /// Every reset.
    pub resets: Vec<Reset>,
    /// Its view: order id → status.
    pub view: BTreeMap<i64, String>,
    /// Its position (last change or heartbeat id).
    pub pos: u64,
    /// Connections it made.
    pub connects: u64,
    /// Messages it could not read.
    pub garbled: u64,
    /// The position its stream started from: the run's start, or its first snapshot's
    /// head; the checker requires only changes after it.
    pub from: u64,
    /// A snapshot client that has no complete snapshot yet (at the start, mid-snapshot,
    /// or after a `reset`): it connects without a position and with `snapshot=true`.
    pub snapshotting: bool,
}

/// State shared between a client task and the run.
pub struct Shared {
    /// What it saw.
    pub seen: Mutex<Seen>,
    /// Until when (ms since the run's start) it stops reading: a stall.
    pub stall_until_ms: AtomicI64,
    /// Whether it is connected and past `ready`.
    pub live: AtomicBool,
    /// Drop the connection when the stall ends, so it resumes from the position it
    /// had before the stall (which pruning may have deleted meanwhile).
    pub drop_after_stall: AtomicBool,
}

/// Everything clients share.
pub struct Env {
    /// Where clients connect: every replica, and nginx when it runs.
    pub ports: Vec<SocketAddr>,
    /// The run's start, for stall times.
    pub start: Instant,
    /// Clients not live at this moment.
    pub not_live: AtomicUsize,
    /// Set when clients should stop.
    pub stop: AtomicBool,
}

impl Shared {
    /// A client that starts at `pos` with `view`, or, with `snapshot`, from a snapshot.
    pub fn new(pos: u64, view: BTreeMap<i64, String>, snapshot: bool) -> Shared {
        Shared {
            seen: Mutex::new(Seen {
                pos,
                from: pos,
                view: if snapshot { BTreeMap::new() } else { view },
                snapshotting: snapshot,
                ..Seen::default()
            }),
            stall_until_ms: AtomicI64::new(0),
            live: AtomicBool::new(false),
            drop_after_stall: AtomicBool::new(false),
        }
    }
}

/// Runs a client until the run stops.
pub async fn run(env: Arc<Env>, spec: Spec, me: Arc<Shared>) {
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    while !env.stop.load(Ordering::Relaxed) {
        let port = env.ports[rng.usize(..env.ports.len())];
        let header = !spec.ws && rng.bool();
        let _ = session(&env, spec, &me, port, header).await;
        if me.live.swap(false, Ordering::Relaxed) {
            env.not_live.fetch_add(1, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(50 + rng.u64(..200))).await;
    }
}

/// One connection: request, then messages until it ends.
async fn session(
    env: &Env,
    spec: Spec,
    me: &Shared,
    port: SocketAddr,
    last_event_id: bool,
) -> Result<(), String> {
    let (pos, snapshot) = {
        let mut seen = me.seen.lock().unwrap();
        seen.connects += 1;
        if seen.snapshotting {
            // A snapshot starts over: whatever a broken one delivered is dropped.
            seen.view.clear();
        }
        (seen.pos, seen.snapshotting)
    };
    let mut query = String::from("tables=orders");
    if spec.filtered {
        query.push_str("&filter=");
        query.push_str(FILTER);
    }
    let mut extra = String::new();
    if snapshot {
        query.push_str("&snapshot=true");
    } else if last_event_id {
        extra = format!("Last-Event-ID: {pos}\r\n");
    } else {
        query.push_str(&format!("&since={pos}"));
    }
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    // A small receive buffer, so a stalled reader fills it and the server's send
    // timeout can fire.
    let _ = socket.set_recv_buffer_size(16 * 1024);
    let connect = socket.connect(port);
    let mut stream = tokio::time::timeout(Duration::from_secs(2), connect)
        .await
        .map_err(|_| "connect timeout")?
        .map_err(|e| e.to_string())?;
    let request = if spec.ws {
        format!(
            "GET /ws?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
    } else {
        format!(
            "GET /events?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Accept: text/event-stream\r\n{extra}\r\n"
        )
    };
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(16 * 1024);
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at + 4;
        }
        read_some(env, me, &mut stream, &mut buf, Duration::from_secs(5)).await?;
    };
    let status = crate::cluster::parse_status(&buf).ok_or("no status line")?;
    if status != if spec.ws { 101 } else { 200 } {
        return Err(format!("status {status}"));
    }
    let chunked = find(
        &buf[..head_end].to_ascii_lowercase(),
        b"transfer-encoding: chunked",
    )
    .is_some();
    buf.drain(..head_end);
    let mut dechunker = Dechunker::default();
    // For SSE: decoded body bytes not yet parsed; `raw` holds an undecoded tail.
    let mut body: Vec<u8> = Vec::new();
    let mut decoded = 0usize;
    loop {
        if spec.ws {
            loop {
                let next = proto::next_frame(&buf).map_err(|e| e.to_string())?;
                let Some((frame, used)) = next else { break };
                match frame {
                    Frame::Text(text) => {
                        if on_message(env, spec, me, text) {
                            return Err("snapshot again".into());
                        }
                    }
                    Frame::Ping(payload) => {
                        let mut pong = Vec::new();
                        proto::pong_frame(payload, &mut pong);
                        stream.write_all(&pong).await.map_err(|e| e.to_string())?;
                    }
                    Frame::Close(code) => return Err(format!("close {code}")),
                    Frame::Other => {}
                }
                buf.drain(..used);
            }
        } else {
            if chunked {
                let (end, raw) = dechunker
                    .decode(&mut buf, decoded)
                    .map_err(|e| e.to_string())?;
                body.extend_from_slice(&buf[decoded..end]);
                buf.drain(..raw);
                decoded = 0;
                if dechunker.is_done() {
                    return Err("stream ended".into());
                }
            } else {
                body.append(&mut buf);
            }
            while let Some(at) = find(&body, b"\n\n") {
                let block = proto::parse_block(&body[..at]);
                if !block.data.is_empty() && on_message(env, spec, me, block.data) {
                    return Err("snapshot again".into());
                }
                body.drain(..at + 2);
            }
        }
        read_some(env, me, &mut stream, &mut buf, Duration::from_secs(10)).await?;
    }
}

/// Reads once (honouring a stall first); an error at EOF or after `idle` of silence.
async fn read_some(
    env: &Env,
    me: &Shared,
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    idle: Duration,
) -> Result<(), String> {
    let until = me.stall_until_ms.load(Ordering::Relaxed);
    let now = env.start.elapsed().as_millis() as i64;
    if until > now {
        tokio::time::sleep(Duration::from_millis((until - now) as u64)).await;
        if me.drop_after_stall.swap(false, Ordering::Relaxed) {
            return Err("dropped after a stall".into());
        }
    }
    if env.stop.load(Ordering::Relaxed) {
        return Err("stopped".into());
    }
    let mut chunk = [0u8; 16 * 1024];
    let n = tokio::time::timeout(idle, stream.read(&mut chunk))
        .await
        .map_err(|_| "silent")?
        .map_err(|e| e.to_string())?;
    if n == 0 {
        return Err("eof".into());
    }
    buf.extend_from_slice(&chunk[..n]);
    Ok(())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

fn id_of(value: &Value, key: &str) -> Option<u64> {
    value.get(key)?.as_str()?.parse().ok()
}

/// Applies one message to the client's view and record; true when the client must
/// reconnect for a new snapshot (a snapshot client got a `reset`).
fn on_message(env: &Env, spec: Spec, me: &Shared, text: &[u8]) -> bool {
    let Ok(msg) = serde_json::from_slice::<Value>(text) else {
        me.seen.lock().unwrap().garbled += 1;
        return false;
    };
    let mut seen = me.seen.lock().unwrap();
    match msg.get("type").and_then(Value::as_str) {
        Some("change") => {
            let Some(id) = id_of(&msg, "id") else {
                seen.garbled += 1;
                return false;
            };
            seen.ids.push(id);
            seen.pos = seen.pos.max(id);
            let row = msg.get("row");
            let row_id = row.and_then(|r| r.get("id")).and_then(Value::as_i64);
            let leave = msg.get("view").and_then(Value::as_str) == Some("leave");
            match (msg.get("op").and_then(Value::as_str), row_id) {
                (Some("TRUNCATE"), _) => seen.view.clear(),
                (Some("DELETE"), Some(rid)) => {
                    seen.view.remove(&rid);
                }
                (Some(_), Some(rid)) if !leave && (!spec.filtered || pending(row)) => {
                    let status = row
                        .and_then(|r| r.get("status"))
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_string();
                    seen.view.insert(rid, status);
                }
                (Some(_), Some(rid)) => {
                    seen.view.remove(&rid);
                }
                _ => seen.garbled += 1,
            }
        }
        Some("heartbeat") => {
            if let Some(id) = id_of(&msg, "id") {
                seen.pos = seen.pos.max(id);
            }
        }
        Some("snapshot") => {
            let rows = msg.get("rows").and_then(Value::as_array);
            for row in rows.into_iter().flatten() {
                let id = row.get("id").and_then(Value::as_i64);
                let status = row.get("status").and_then(Value::as_str);
                match (id, status) {
                    (Some(id), Some(status)) => {
                        seen.view.insert(id, status.to_string());
                    }
                    _ => seen.garbled += 1,
                }
            }
        }
        Some("reset") => {
            let head = id_of(&msg, "head").unwrap_or(0);
            let since = seen.pos;
            seen.resets.push(Reset {
                since,
                head,
                at: Instant::now(),
            });
            seen.pos = head;
            if spec.snapshot {
                // Refetch: a new snapshot replaces the view; its head ends the window
                // the reset excuses.
                seen.snapshotting = true;
                return true;
            }
        }
        Some("ready") => {
            if seen.snapshotting && msg.get("snapshot").is_some() {
                let head = id_of(&msg, "head").unwrap_or(0);
                seen.snapshotting = false;
                seen.pos = head;
                match seen.resets.last_mut() {
                    Some(reset) => reset.head = reset.head.max(head),
                    None => seen.from = head,
                }
            }
            drop(seen);
            if !me.live.swap(true, Ordering::Relaxed) {
                env.not_live.fetch_sub(1, Ordering::Relaxed);
            }
        }
        _ => {}
    }
    false
}
