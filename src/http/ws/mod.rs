//! `GET /ws`: the WebSocket transport, on a frame layer of rowcast's own.
//!
//! The handshake is answered on hyper's upgrade ([`handshake`]); then one task per
//! socket runs the session loop ([`crate::session::serve`]) into a `WsSink`:
//! coalesced batches, heartbeats with pings, answers to client frames ([`reader`]).
//!
//! Why not a crate: tungstenite (to 0.30) has no permessage-deflate and refuses RSV1;
//! the crates that do compress (yawc 0.5, sockudo-ws 3.1) compress inside each
//! connection's writer, from a message, with that connection's compressor. rowcast
//! negotiates `server_no_context_takeover` so that an event is compressed once and the
//! same [`frame::Frame`] (header and payload, built once per event) goes to every
//! client, as one vectored write per batch ([`writer`]); that needs a writer that
//! takes finished frames, which is the part of a WebSocket library rowcast replaces.
//! Clients that do not offer permessage-deflate, or a gateway run with
//! `--ws-compress-min 0`, get the same frames uncompressed.

pub mod deflate;
pub mod direct;
pub mod frame;
pub mod handshake;
pub mod reader;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{
    HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    UPGRADE,
};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming as RequestBody;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use self::direct::{DirectSocket, SocketIo};
use self::frame::Frame;
use self::handshake::Deflate;
use self::reader::{Incoming, Reader};
use super::body::{empty, Body};
use super::conn::Connection;
use super::error::{ApiError, CloseCode};
use crate::event::Control;
use crate::filter::StreamParams;
use crate::gateway::Gateway;
use crate::metrics::{Metrics, Transport};
use crate::session::{self, End, Item, SendDeadline, Sent, Session, Sink, TryWrite};

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pings a peer may leave unanswered before it is closed with 4001.
const MAX_MISSED_PONGS: u32 = 2;
/// The read buffer starts this small and grows only for the frame being read, so
/// ten thousand idle sockets cost little.
const READ_BUFFER: usize = 256;
/// A read buffer grown past this for a large message is given back after it.
const KEEP_READ_BUFFER: usize = 8 * 1024;
/// Bytes a closing socket reads (and drops) while it waits for the client's close.
const CLOSE_DRAIN: usize = 256 * 1024;

/// Validates the handshake, negotiates compression, registers the session and answers
/// 101; the socket is served on a task of its own once hyper hands it over.
pub fn upgrade(
    mut request: Request<RequestBody>,
    gateway: Arc<Gateway>,
    params: StreamParams,
    connection: Connection,
) -> Result<Response<Body>, ApiError> {
    let headers = request.headers();
    let has_token = |name: http::header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value
                .to_str()
                .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                .unwrap_or(false)
        })
    };
    if !has_token(UPGRADE, "websocket") || !has_token(CONNECTION, "upgrade") {
        return Err(ApiError::UpgradeRequired);
    }
    if headers.get("sec-websocket-version").map(|v| v.as_bytes()) != Some(b"13") {
        return Err(ApiError::UpgradeRequired);
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::BadRequest {
            code: "bad_handshake",
            message: "Sec-WebSocket-Key is missing".into(),
            field: None,
        })?;
    let accept =
        HeaderValue::from_str(&handshake::accept_key(key)).map_err(|_| ApiError::Internal)?;
    let deflate = match gateway.config.ws_compress_min {
        0 => None,
        _ => handshake::negotiate(
            headers
                .get_all(SEC_WEBSOCKET_EXTENSIONS)
                .iter()
                .map(HeaderValue::as_bytes),
        ),
    };
    let mut session = gateway.open_session(params);
    let on_upgrade = hyper::upgrade::on(&mut request);
    let tasks = connection.tasks.clone();
    let task = async move {
        match on_upgrade.await {
            // The server's connections are TCP streams: writes of shared frames go
            // straight to the socket, vectored, and the hub's fan-out writes to it too
            // while the client is caught up.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    // Copied out and dropped here: the bytes hyper read past the
                    // request share its whole read buffer (8 KiB), which would
                    // otherwise live as long as the socket.
                    let hyper::upgrade::Parts { io, read_buf, .. } = parts;
                    let read = BytesMut::from(&read_buf[..]);
                    drop(read_buf);
                    let compress_min = deflate.map(|_| gateway.config.ws_compress_min);
                    let socket = DirectSocket::new(io.into_inner(), compress_min);
                    session.attach(
                        Arc::clone(&socket) as Arc<dyn TryWrite>,
                        Arc::clone(&gateway.metrics),
                        Transport::Ws,
                    );
                    let io = SocketIo(Arc::clone(&socket));
                    serve(io, read, &gateway, &mut session, deflate, Some(socket)).await
                }
                Err(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    serve(io, BytesMut::new(), &gateway, &mut session, deflate, None).await
                }
            },
            Err(err) => tracing::debug!(%err, "WebSocket upgrade failed"),
        }
        drop(connection);
    };
    // In the connection's span: the request's task ends at the upgrade.
    tasks.spawn(tracing::Instrument::in_current_span(task));
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    if let Some(deflate) = deflate {
        headers.insert(
            SEC_WEBSOCKET_EXTENSIONS,
            HeaderValue::from_static(deflate.response()),
        );
    }
    Ok(response)
}

/// Runs a socket's session, then closes it with the code its end calls for.
/// `direct` is the socket the fan-out writes to as well, when it can.
async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    io: S,
    read: BytesMut,
    gateway: &Gateway,
    session: &mut Session,
    deflate: Option<Deflate>,
    direct: Option<Arc<DirectSocket>>,
) {
    let config = &gateway.config;
    let mut sink = WsSink {
        io,
        read,
        reader: Reader::new(
            config.ws_max_message,
            deflate.map(|d| d.client_no_context_takeover),
        ),
        compress_min: deflate.map(|_| config.ws_compress_min),
        send_timeout: config.send_timeout,
        missed_pongs: 0,
        unsent: Vec::new(),
        metrics: Arc::clone(&gateway.metrics),
        direct,
    };
    let end = session::serve(session, &mut sink, &gateway.pace).await;
    if let Some(code) = CloseCode::for_end(end) {
        if let Some(limit) = code.limit() {
            gateway.metrics.reject(limit);
        }
        // Boxed: its drain buffer would size every stream's task.
        Box::pin(sink.close(code)).await;
    }
}

/// A WebSocket as a session's sink.
struct WsSink<S> {
    /// The upgraded connection.
    io: S,
    /// Bytes read and not yet parsed into frames.
    read: BytesMut,
    /// Turns client frames into messages, enforcing the protocol.
    reader: Reader,
    /// `--ws-compress-min` when the client negotiated permessage-deflate: change
    /// events at least this long go compressed.
    compress_min: Option<usize>,
    /// `--send-timeout`: how long a write may wait on a client that does not read.
    send_timeout: Duration,
    /// Pings sent since the last pong; at [`MAX_MISSED_PONGS`] the socket closes.
    missed_pongs: u32,
    /// The rest of a frame a timed-out write cut midway: the close frame goes after it.
    unsent: Vec<u8>,
    /// Where compressed sends are counted.
    metrics: Arc<Metrics>,
    /// The socket as the fan-out writes to it: what it left of a batch goes first.
    direct: Option<Arc<DirectSocket>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Sink for WsSink<S> {
    type Fault = CloseCode;
    /// A message, a violation's close code, or `None`: the client is gone.
    type Incoming = Option<Result<Incoming, CloseCode>>;
    const TRANSPORT: Transport = Transport::Ws;

    async fn open(&mut self) -> Sent<CloseCode> {
        Ok(())
    }

    async fn send(&mut self, items: &[Item]) -> Sent<CloseCode> {
        self.write_items(items, None).await
    }

    async fn heartbeat(&mut self, items: &[Item], position: u64) -> Sent<CloseCode> {
        if self.missed_pongs >= MAX_MISSED_PONGS {
            return Err(End::Fault(CloseCode::PingTimeout));
        }
        self.missed_pongs += 1;
        self.write_items(items, Some(position)).await
    }

    async fn incoming(&mut self) -> Self::Incoming {
        loop {
            match self.reader.next(&mut self.read) {
                Ok(Some(message)) => {
                    if self.read.is_empty() && self.read.capacity() > KEEP_READ_BUFFER {
                        self.read = BytesMut::new();
                    }
                    return Some(Ok(message));
                }
                Ok(None) => {}
                Err(code) => return Some(Err(code)),
            }
            let wanted = self.reader.wanted(&self.read).max(READ_BUFFER);
            self.read.reserve(wanted);
            // Cancel-safe: a read either happened (its bytes are in the buffer) or not.
            match self.io.read_buf(&mut self.read).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn answer(&mut self, message: Self::Incoming) -> Sent<CloseCode> {
        let frame = match message {
            None => return Err(End::Gone),
            Some(Err(code)) => return Err(End::Fault(code)),
            Some(Ok(Incoming::Text(text))) => Frame::text(Bytes::from(client_text(&text))),
            Some(Ok(Incoming::Ping(payload))) => Frame::new(frame::PONG, false, payload),
            Some(Ok(Incoming::Pong)) => {
                self.missed_pongs = 0;
                return Ok(());
            }
            Some(Ok(Incoming::Close(code))) => {
                // The reply echoes the status code (RFC 6455 §5.5.1).
                let reply = match code {
                    Some(code) => frame::close(code, ""),
                    None => Frame::new(frame::CLOSE, false, Bytes::new()),
                };
                let write = self.write(std::slice::from_ref(&reply), CLOSE_TIMEOUT);
                let _ = write.await;
                return Err(End::Gone);
            }
        };
        self.write(std::slice::from_ref(&frame), self.send_timeout)
            .await
    }

    async fn flush(&mut self) -> Sent<CloseCode> {
        let Some(rest) = self.direct.as_ref().and_then(|socket| socket.take_rest()) else {
            return Ok(());
        };
        let frames = direct::change_frames(&rest.events, self.compress_min);
        let mut deadline = SendDeadline::new(self.send_timeout);
        writer::write_frames(
            &mut self.io,
            frames,
            rest.skip,
            &mut deadline,
            &mut self.unsent,
        )
        .await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> WsSink<S> {
    /// Writes a batch (and a heartbeat and ping after it) as one vectored write:
    /// events as their shared frames (compressed once, for every client that
    /// negotiated permessage-deflate), control messages framed here, uncompressed:
    /// they are this client's own (a snapshot page too), and compressing them would
    /// cost CPU per client.
    async fn write_items(&mut self, items: &[Item], heartbeat: Option<u64>) -> Sent<CloseCode> {
        // The frames of this client's own messages live for the write only: an idle
        // stream keeps no buffer.
        let mut own = Vec::new();
        for item in items {
            if let Item::Control(control) = item {
                own.push(Frame::text(Bytes::from(control.json())));
            }
        }
        if let Some(position) = heartbeat {
            let json = Control::Heartbeat { position }.json();
            own.push(Frame::text(Bytes::from(json)));
            own.push(Frame::new(frame::PING, false, Bytes::new()));
        }
        if let Some(min) = self.compress_min {
            direct::count_deflated(&self.metrics, session::changes(items), min);
        }
        let frames = BatchFrames {
            items: items.iter(),
            own: &own,
            next_own: 0,
            compress_min: self.compress_min,
        };
        let mut deadline = SendDeadline::new(self.send_timeout);
        writer::write_frames(&mut self.io, frames, 0, &mut deadline, &mut self.unsent).await
    }

    /// Writes `frames` within `limit`.
    async fn write(&mut self, frames: &[Frame], limit: Duration) -> Sent<CloseCode> {
        let mut deadline = SendDeadline::new(limit);
        writer::write_frames(&mut self.io, frames, 0, &mut deadline, &mut self.unsent).await
    }

    /// Sends the rest of a cut frame and a close frame, then reads (and drops) what the client still sends until
    /// it closes, so that unread bytes do not turn the close into a reset; all within
    /// [`CLOSE_TIMEOUT`].
    async fn close(&mut self, code: CloseCode) {
        let frame = frame::close(code.code(), code.reason());
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
            let unsent = std::mem::take(&mut self.unsent);
            self.io.write_all(&unsent).await.map_err(|_| End::Gone)?;
            self.write(std::slice::from_ref(&frame), CLOSE_TIMEOUT)
                .await?;
            let _ = self.io.shutdown().await;
            let mut drained = 0;
            let mut scrap = [0u8; 1024];
            while drained < CLOSE_DRAIN {
                match self.io.read(&mut scrap).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
            Ok::<(), End<CloseCode>>(())
        })
        .await;
    }
}

/// A batch's frames in order: each event's shared frame, each control message's own,
/// then the heartbeat's (an iterator type of its own: a closure here would not be
/// `Send` across the write's await).
struct BatchFrames<'a> {
    /// The batch.
    items: std::slice::Iter<'a, Item>,
    /// The control messages' frames in batch order, then the heartbeat's.
    own: &'a [Frame],
    /// The next of `own` to go out.
    next_own: usize,
    /// The client's `--ws-compress-min`, if it negotiated permessage-deflate.
    compress_min: Option<usize>,
}

impl<'a> Iterator for BatchFrames<'a> {
    type Item = &'a Frame;

    fn next(&mut self) -> Option<&'a Frame> {
        match self.items.next() {
            Some(Item::Change(event)) => Some(event.ws_frame(self.compress_min)),
            Some(Item::Control(_)) | None => {
                self.next_own += 1;
                self.own.get(self.next_own - 1)
            }
        }
    }
}

/// The answer to a client's text message.
pub fn client_text(text: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let err = match parsed
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(|t| t.as_str())
    {
        Some("ping") => return Control::Pong.json(),
        Some(other) => ApiError::BadMessage(format!(
            "unknown message type {other:?}; the only client message is {{\"type\":\"ping\"}}"
        )),
        None => ApiError::BadMessage("expected a JSON object like {\"type\":\"ping\"}".into()),
    };
    err.stream_json()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ping_gets_pong_and_anything_else_an_error() {
        assert_eq!(client_text(r#"{"type":"ping"}"#), r#"{"type":"pong"}"#);
        for other in [
            "hello",
            "{}",
            r#"{"type":"subscribe"}"#,
            "[1]",
            r#"{"type":5}"#,
        ] {
            let reply: serde_json::Value = serde_json::from_str(&client_text(other)).unwrap();
            assert_eq!(reply["type"], "error");
            assert_eq!(reply["code"], "bad_message");
        }
    }
}
