//! `GET /events`: the Server-Sent Events transport (`EventSource`, `curl -N`).
//!
//! The session loop ([`crate::session::serve`]) serves a stream into an `SseSink`
//! over either of two block writers:
//! - **on the socket** ([`serve_on_socket`]): a connection whose first request is a
//!   plain `GET /events` (see [`super::sniff`]) is answered here, without hyper: the
//!   head, then each batch as one HTTP/1.1 chunk in one write. An idle stream costs
//!   its session and a small task, not hyper's two 8 KiB buffers. While the client is
//!   caught up, the hub's fan-out writes its chunks (the events' shared blocks
//!   between a size line and an end of its own) without waking the task;
//! - **through hyper** ([`respond`]): any other SSE request (one that follows another
//!   request on a kept-alive connection, say) gets a body fed by a one-slot channel
//!   from a task of its own.
//!
//! Either way a client that stops reading is cut off after `--send-timeout`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::io::IoSlice;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use parking_lot::Mutex;
use smallvec::SmallVec;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use super::body::{Body, ChannelBody};
use super::conn::Connection;
use super::error::SseFinish;
use super::socket::send_vectored;
use crate::event::Event;
use crate::filter::StreamParams;
use crate::gateway::Gateway;
use crate::metrics::{Metrics, Transport};
use crate::session::{self, End, Item, SendDeadline, Sent, Session, Sink, TryWrite, Written};

/// The comment block sent when a heartbeat has no new position to report.
const KEEPALIVE: &[u8] = b": keepalive\n\n";
/// The chunk that ends a chunked body.
const LAST_CHUNK: &[u8] = b"0\r\n\r\n";
/// How long the last chunk may take at shutdown.
const FINISH_TIMEOUT: Duration = Duration::from_secs(1);

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
    let mut session = gateway.open_session(params);
    let tasks = connection.tasks.clone();
    let task = async move {
        let mut sink = SseSink::new(ChannelSink { tx }, &gateway);
        let end = serve(&mut sink, &mut session, &gateway).await;
        if SseFinish::for_end(end) == SseFinish::Drop {
            // The body will never be polled again while the client does not read, so
            // ending it is not enough: drop the connection itself.
            connection.kill.cancel();
        }
        // Otherwise dropping the sender ends the body: hyper writes the last chunk.
    };
    // In the connection's span: the request's task ends with the response head.
    tasks.spawn(tracing::Instrument::in_current_span(task));
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
    let mut session = gateway.open_session(params);
    let socket = DirectSse::new(stream);
    session.attach(
        Arc::clone(&socket) as Arc<dyn TryWrite>,
        Arc::clone(&gateway.metrics),
        Transport::Sse,
    );
    let socket = SocketSink {
        socket,
        buf: response_head_bytes(&headers),
    };
    let mut sink = SseSink::new(socket, &gateway);
    // A block, not an async fn: an async fn keeps its arguments twice, and this
    // future is what an idle stream costs.
    async move {
        let end = serve(&mut sink, &mut session, &gateway).await;
        if SseFinish::for_end(end) == SseFinish::LastChunk {
            let _ = write_all(&sink.writer.socket.stream, LAST_CHUNK, FINISH_TIMEOUT).await;
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

/// Runs a stream's session into `sink`.
async fn serve<W: Writer>(
    sink: &mut SseSink<W>,
    session: &mut Session,
    gateway: &Gateway,
) -> End<Infallible> {
    session::serve(session, sink, &gateway.pace).await
}

/// An SSE stream as a session's sink: SSE blocks, `id:`-only heartbeats, the
/// `retry:` hint first, over either writer.
struct SseSink<W> {
    /// Where the blocks go (the socket, or hyper's body).
    writer: W,
    /// `--send-timeout`: how long a write may wait on a client that does not read.
    send_timeout: Duration,
    /// `--sse-retry` in milliseconds, sent first as the reconnection delay (`u64`:
    /// a `u128` would double the alignment of every stream's future).
    retry_millis: u64,
    /// The last `id:` written: a heartbeat writes an id-only block only past it.
    last_id_sent: u64,
}

impl<W: Writer> SseSink<W> {
    fn new(writer: W, gateway: &Gateway) -> SseSink<W> {
        SseSink {
            writer,
            send_timeout: gateway.config.send_timeout,
            retry_millis: u64::try_from(gateway.config.sse_retry.as_millis()).unwrap_or(u64::MAX),
            last_id_sent: 0,
        }
    }

    /// Notes the last `id:` a batch writes.
    fn track_ids(&mut self, items: &[Item]) {
        let last = items.iter().rev().find_map(|item| match item {
            Item::Change(event) => Some(event.id),
            Item::Control(control) => control.position(),
        });
        if let Some(id) = last {
            self.last_id_sent = id;
        }
    }
}

impl<W: Writer> Sink for SseSink<W> {
    type Fault = Infallible;
    type Incoming = ();
    const TRANSPORT: Transport = Transport::Sse;

    async fn open(&mut self) -> Sent<Infallible> {
        let retry = format!("retry: {}\n\n", self.retry_millis);
        self.writer
            .write(&[], retry.as_bytes(), self.send_timeout)
            .await
    }

    async fn send(&mut self, items: &[Item]) -> Sent<Infallible> {
        self.track_ids(items);
        self.writer.write(items, b"", self.send_timeout).await
    }

    async fn heartbeat(&mut self, items: &[Item], position: u64) -> Sent<Infallible> {
        // What the fan-out wrote counts too.
        self.last_id_sent = self.last_id_sent.max(self.writer.sent_up_to());
        self.track_ids(items);
        let tail: Cow<[u8]> = if position > self.last_id_sent {
            // Browsers update lastEventId from an id-only block without firing an
            // event, so a quiet filtered client resumes from here.
            self.last_id_sent = position;
            format!("id: {position}\n\n").into_bytes().into()
        } else if items.is_empty() {
            KEEPALIVE.into()
        } else {
            (&[][..]).into()
        };
        self.writer.write(items, &tail, self.send_timeout).await
    }

    async fn incoming(&mut self) {
        self.writer.closed().await
    }

    async fn answer(&mut self, (): ()) -> Sent<Infallible> {
        Err(End::Gone)
    }

    async fn flush(&mut self) -> Sent<Infallible> {
        self.writer.flush(self.send_timeout).await
    }
}

/// Where a stream's blocks go.
trait Writer: Send {
    /// Writes the SSE blocks of `items` followed by `tail` as one piece, within `limit`.
    fn write(
        &mut self,
        items: &[Item],
        tail: &[u8],
        limit: Duration,
    ) -> impl std::future::Future<Output = Sent<Infallible>> + Send;
    /// Resolves when the client has gone.
    fn closed(&mut self) -> impl std::future::Future<Output = ()> + Send;
    /// Writes what the fan-out left of a chunk it wrote in part, within `limit`.
    fn flush(
        &mut self,
        _limit: Duration,
    ) -> impl std::future::Future<Output = Sent<Infallible>> + Send {
        async { Ok(()) }
    }
    /// The last event id the fan-out wrote (0: none).
    fn sent_up_to(&self) -> u64 {
        0
    }
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
    /// The body's one-slot channel: a full slot is a client not reading.
    tx: mpsc::Sender<Bytes>,
}

impl Writer for ChannelSink {
    async fn write(&mut self, items: &[Item], tail: &[u8], limit: Duration) -> Sent<Infallible> {
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

/// A stream's socket, which its task and the hub's fan-out both write chunks to (one
/// at a time: the fan-out only while the session is parked).
struct DirectSse {
    /// The client's connection, taken from hyper before it saw it.
    stream: TcpStream,
    /// The last event id the fan-out wrote: a heartbeat writes an `id:` block only
    /// past it.
    last_id: AtomicU64,
    /// What a partial write of the fan-out left; the task writes it next.
    rest: Mutex<Vec<u8>>,
}

impl DirectSse {
    /// Shares `stream` between its task and the fan-out.
    fn new(stream: TcpStream) -> Arc<DirectSse> {
        Arc::new(DirectSse {
            stream,
            last_id: AtomicU64::new(0),
            rest: Mutex::new(Vec::new()),
        })
    }
}

impl TryWrite for DirectSse {
    fn try_write(&self, events: &[&Arc<Event>], _: &Metrics) -> Written {
        let mut rest = self.rest.lock();
        let Some(last) = events.last() else {
            return Written::All;
        };
        if !rest.is_empty() {
            // The task has yet to write it (it always does before parking again).
            return Written::Nothing;
        }
        // One chunk: its size line, the events' shared blocks, its end.
        let size = events.iter().map(|event| event.sse.len()).sum();
        let mut line = [0u8; 20];
        let line = chunk_size_line(&mut line, size);
        let parts: SmallVec<[&[u8]; 32]> = std::iter::once(line)
            .chain(events.iter().map(|event| &event.sse[..]))
            .chain(std::iter::once(&b"\r\n"[..]))
            .collect();
        let slices: SmallVec<[IoSlice<'_>; 32]> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let total = line.len() + size + 2;
        let written = match send_vectored(&self.stream, &slices) {
            Ok(n) if n == total => Written::All,
            Ok(0) | Err(_) => return Written::Nothing,
            Ok(mut n) => {
                for part in &parts {
                    let skip = n.min(part.len());
                    rest.extend_from_slice(&part[skip..]);
                    n -= skip;
                }
                Written::Part
            }
        };
        self.last_id.store(last.id, Ordering::Release);
        written
    }
}

/// A chunk's size line (`{size:x}\r\n`), written into `line`.
fn chunk_size_line(line: &mut [u8; 20], size: usize) -> &[u8] {
    let mut cursor = std::io::Cursor::new(&mut line[..]);
    let _ = write!(cursor, "{size:x}\r\n");
    let len = cursor.position() as usize;
    &line[..len]
}

/// Writes chunks straight to the socket.
struct SocketSink {
    /// The client's connection, shared with the fan-out.
    socket: Arc<DirectSse>,
    /// The bytes of the chunk being written (first, the response head).
    buf: Vec<u8>,
}

impl Writer for SocketSink {
    async fn write(&mut self, items: &[Item], tail: &[u8], limit: Duration) -> Sent<Infallible> {
        let start = self.buf.len();
        put_blocks(&mut self.buf, items, tail);
        // The chunk's size line goes before its data, now that the size is known.
        let mut line = [0u8; 20];
        let line = chunk_size_line(&mut line, self.buf.len() - start);
        self.buf.splice(start..start, line.iter().copied());
        self.buf.extend_from_slice(b"\r\n");
        let written = write_all(&self.socket.stream, &self.buf, limit).await;
        // Dropped, not kept for the next write: an idle stream keeps no buffer, and
        // the fan-out writes the streams that keep up.
        self.buf = Vec::new();
        written
    }

    async fn closed(&mut self) {
        let stream = &self.socket.stream;
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            // Whatever a client sends after its request head is never answered.
            let mut scrap = [0u8; 64];
            match stream.try_read(&mut scrap) {
                Ok(0) => return,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    async fn flush(&mut self, limit: Duration) -> Sent<Infallible> {
        let rest = std::mem::take(&mut *self.socket.rest.lock());
        if rest.is_empty() {
            return Ok(());
        }
        write_all(&self.socket.stream, &rest, limit).await
    }

    fn sent_up_to(&self) -> u64 {
        self.socket.last_id.load(Ordering::Acquire)
    }
}

/// Writes all of `bytes` within `limit`.
async fn write_all(stream: &TcpStream, mut bytes: &[u8], limit: Duration) -> Sent<Infallible> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn a_chunk_the_socket_takes_in_part_is_finished_by_the_task_byte_for_byte() {
        let (mut client, stream) = crate::testing::tcp_pair().await;
        let socket = DirectSse::new(stream);
        // Far more than the socket buffers hold while the client does not read.
        let body = "x".repeat(10_000);
        let events: Vec<Arc<Event>> = (1..=1000)
            .map(|id| crate::testing::event(id, "t", "INSERT", Some(json!({"body": body})), None))
            .collect();
        let refs: Vec<&Arc<Event>> = events.iter().collect();
        assert_eq!(socket.try_write(&refs, &Metrics::default()), Written::Part);
        assert_eq!(socket.last_id.load(Ordering::Acquire), 1000);
        let mut expected = Vec::new();
        let size: usize = events.iter().map(|e| e.sse.len()).sum();
        expected.extend_from_slice(format!("{size:x}\r\n").as_bytes());
        for event in &events {
            expected.extend_from_slice(&event.sse);
        }
        expected.extend_from_slice(b"\r\n");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut sink = SocketSink {
            socket,
            buf: Vec::new(),
        };
        // A second chunk waits for the rest: the fan-out declines while it is kept.
        assert_eq!(
            sink.socket.try_write(&refs[..1], &Metrics::default()),
            Written::Nothing
        );
        sink.flush(Duration::from_secs(10)).await.unwrap();
        drop(sink);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
