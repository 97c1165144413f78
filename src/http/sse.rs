//! `GET /events`: the Server-Sent Events transport (`EventSource`, `curl -N`).
//!
//! One loop serves a stream into either of two sinks:
//! - **on the socket** ([`serve_on_socket`]): a connection whose first request is a
//!   plain `GET /events` (see [`super::sniff`]) is answered here, without hyper: the
//!   head, then each batch as one HTTP/1.1 chunk in one write. An idle stream costs
//!   its session and a small task, not hyper's two 8 KiB buffers;
//! - **through hyper** ([`respond`]): any other SSE request (one that follows another
//!   request on a kept-alive connection, say) gets a body fed by a one-slot channel
//!   from a task of its own.
//!
//! Either way a client that stops reading is cut off after `--send-timeout`.

use std::borrow::Cow;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::body::{Body, ChannelBody};
use super::server::Connection;
use crate::filter::StreamParams;
use crate::gateway::Gateway;
use crate::metrics::Transport;
use crate::stream::{record_sent, Item, SendDeadline, Session};

/// The comment block sent when a heartbeat has no new position to report.
const KEEPALIVE: &[u8] = b": keepalive\n\n";
/// The chunk that ends a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// How long the last chunk may take at shutdown.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);
/// A socket sink's write buffer is dropped after a write larger than this (a
/// backlog), so an idle stream does not keep it.
const KEEP_BUFFER: usize = 4096;

/// The status and headers of a stream's response.
pub fn response_head() -> Response<()> {
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx and similar proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Opens a stream through hyper: registers the session now, serves it on a task of
/// its own.
pub fn respond(
    gateway: Arc<Gateway>,
    params: StreamParams,
    connection: Connection,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let mut session = Session::open(Arc::clone(&gateway), params);
    let tasks = connection.tasks.clone();
    tasks.spawn(async move {
        let mut sink = ChannelSink { tx };
        if let End::Lagging = serve(&mut sink, &mut session, &gateway).await {
            // The body will never be polled again while the client does not read, so
            // ending it is not enough: drop the connection itself.
            connection.kill.cancel();
        }
    });
    let (parts, ()) = response_head().into_parts();
    Response::from_parts(parts, ChannelBody::boxed(rx))
}

/// Serves a stream on the socket itself, once the request head (already admitted)
/// has been read off it: writes the response head, then the stream as a chunked body.
/// The connection closes when the stream ends.
pub fn serve_on_socket(
    stream: TcpStream,
    headers: HeaderMap,
    params: StreamParams,
    gateway: Arc<Gateway>,
    connection: Connection,
) -> impl std::future::Future<Output = ()> {
    let mut session = Session::open(Arc::clone(&gateway), params);
    let mut sink = SocketSink {
        stream,
        buf: response_head_bytes(&headers),
    };
    // A block, not an async fn: an async fn keeps its arguments twice, and this
    // future is what an idle stream costs.
    async move {
        if let End::Shutdown = serve(&mut sink, &mut session, &gateway).await {
            let finish = sink.stream.write_all(LAST_CHUNK);
            let _ = tokio::time::timeout(FINISH_TIMEOUT, finish).await;
        }
        drop(connection);
    }
}

/// The response head as hyper would write it for a chunked body.
fn response_head_bytes(headers: &HeaderMap) -> Vec<u8> {
    let mut head = b"HTTP/1.1 200 OK\r\n".to_vec();
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"transfer-encoding: chunked\r\ndate: ");
    head.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    head.extend_from_slice(b"\r\n\r\n");
    head
}

/// Why a stream ended.
enum End {
    Gone,
    Lagging,
    Shutdown,
}

/// Where a stream's blocks go.
trait Sink {
    /// Sends the SSE blocks of `items` followed by `tail` as one piece, within `limit`.
    async fn send(&mut self, items: &[Item], tail: &[u8], limit: Duration) -> Result<(), End>;
    /// Resolves when the client has gone.
    async fn closed(&mut self);
}

/// Runs a stream with its metrics.
async fn serve(sink: &mut impl Sink, session: &mut Session, gateway: &Gateway) -> End {
    let gauge = gateway.metrics.connections(Transport::Sse);
    gauge.inc();
    let end = run(sink, session, gateway).await;
    gauge.dec();
    if let End::Lagging = end {
        gateway.metrics.lagging_disconnects.inc();
        tracing::debug!(
            position = session.position(),
            "dropping a lagging SSE client"
        );
    }
    end
}

async fn run(sink: &mut impl Sink, session: &mut Session, gateway: &Gateway) -> End {
    let send_timeout = gateway.config.send_timeout;
    let period = gateway.config.heartbeat;
    let retry = format!("retry: {}\n\n", gateway.config.sse_retry.as_millis());
    if let Err(end) = sink.send(&[], retry.as_bytes(), send_timeout).await {
        return end;
    }
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_id_sent = 0u64;
    let mut items = Vec::new();
    // Made once: a new future per turn would lock the token's waiter list, which
    // every stream shares, twice per turn.
    let shutdown = gateway.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        items.clear();
        session.next_batch(&mut items).await;
        if !items.is_empty() {
            let changes = track_ids(&items, &mut last_id_sent);
            if let Err(end) = sink.send(&items, b"", send_timeout).await {
                return end;
            }
            record_sent(&gateway.metrics, &items, Transport::Sse, changes);
            continue;
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => return End::Shutdown,
            _ = sink.closed() => return End::Gone,
            _ = session.wait() => {}
            _ = heartbeat.tick() => {
                items.clear();
                session.next_batch(&mut items).await;
                let changes = track_ids(&items, &mut last_id_sent);
                let position = session.position();
                let tail: Cow<[u8]> = if position > last_id_sent {
                    // Browsers update lastEventId from an id-only block without firing
                    // an event, so a quiet filtered client resumes from here.
                    last_id_sent = position;
                    format!("id: {position}\n\n").into_bytes().into()
                } else if items.is_empty() {
                    KEEPALIVE.into()
                } else {
                    (&[][..]).into()
                };
                if let Err(end) = sink.send(&items, &tail, send_timeout).await {
                    return end;
                }
                record_sent(&gateway.metrics, &items, Transport::Sse, changes);
            }
        }
    }
}

/// Notes the last `id:` a batch writes; returns how many changes it holds.
fn track_ids(items: &[Item], last_id_sent: &mut u64) -> u64 {
    let mut changes = 0;
    for item in items {
        let id = match item {
            Item::Change(event) => {
                changes += 1;
                Some(event.id)
            }
            Item::Control(control) => control.position(),
        };
        if let Some(id) = id {
            *last_id_sent = id;
        }
    }
    changes
}

/// Appends the SSE blocks of `items`, then `tail`, to `out`.
fn put_blocks(out: &mut impl BufMut, items: &[Item], tail: &[u8]) {
    for item in items {
        match item {
            Item::Change(event) => out.put_slice(&event.sse),
            Item::Control(control) => out.put_slice(&control.sse()),
        }
    }
    out.put_slice(tail);
}

/// Feeds a hyper response body.
struct ChannelSink {
    tx: mpsc::Sender<Bytes>,
}

impl Sink for ChannelSink {
    async fn send(&mut self, items: &[Item], tail: &[u8], limit: Duration) -> Result<(), End> {
        let chunk = match (items, tail) {
            // A single event's shared block goes as is.
            ([Item::Change(event)], []) => event.sse.clone(),
            _ => {
                let mut out = BytesMut::new();
                put_blocks(&mut out, items, tail);
                out.freeze()
            }
        };
        match self.tx.send_timeout(chunk, limit).await {
            Ok(()) => Ok(()),
            Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(End::Lagging),
            Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(End::Gone),
        }
    }

    async fn closed(&mut self) {
        self.tx.closed().await
    }
}

/// Writes chunks straight to the socket.
struct SocketSink {
    stream: TcpStream,
    /// The bytes of the chunk being written (first, the response head).
    buf: Vec<u8>,
}

impl Sink for SocketSink {
    async fn send(&mut self, items: &[Item], tail: &[u8], limit: Duration) -> Result<(), End> {
        let start = self.buf.len();
        put_blocks(&mut self.buf, items, tail);
        // The chunk's size line goes before its data, now that the size is known.
        let mut line = [0u8; 20];
        let mut cursor = std::io::Cursor::new(&mut line[..]);
        let _ = write!(cursor, "{:x}\r\n", self.buf.len() - start);
        let line_len = cursor.position() as usize;
        self.buf
            .splice(start..start, line[..line_len].iter().copied());
        self.buf.extend_from_slice(b"\r\n");
        let written = write_all(&self.stream, &self.buf, limit).await;
        self.buf.clear();
        if self.buf.capacity() > KEEP_BUFFER {
            self.buf = Vec::new();
        }
        written
    }

    async fn closed(&mut self) {
        loop {
            if self.stream.readable().await.is_err() {
                return;
            }
            // Whatever a client sends after its request head is never answered.
            let mut scrap = [0u8; 64];
            match self.stream.try_read(&mut scrap) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }
}

/// Writes all of `bytes` within `limit`.
async fn write_all(stream: &TcpStream, mut bytes: &[u8], limit: Duration) -> Result<(), End> {
    let mut deadline = SendDeadline::new(limit);
    while !bytes.is_empty() {
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                // Boxed: rare, and large enough to size every stream's future.
                match deadline.run(Box::pin(stream.writable())).await {
                    Some(Ok(())) => {}
                    Some(Err(_)) => return Err(End::Gone),
                    None => return Err(End::Lagging),
                }
            }
            Err(_) => return Err(End::Gone),
        }
    }
    Ok(())
}

/// Reads and drops the request head the sniffer admitted.
pub async fn consume_head(stream: &mut TcpStream, head_len: usize) -> std::io::Result<()> {
    let mut head = vec![0u8; head_len];
    stream.read_exact(&mut head).await.map(|_| ())
}
