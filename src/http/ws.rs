//! `GET /ws`: the WebSocket transport.
//!
//! The handshake is answered by hand on hyper's upgrade; tokio-tungstenite then runs
//! the protocol with small buffers, so ten thousand idle sockets cost little. One task
//! per socket runs the session loop ([`crate::session::serve`]) into a `WsSink`:
//! coalesced batches, heartbeats with pings, answers to client frames.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WireCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::body::{empty, Body};
use super::conn::Connection;
use super::error::{ApiError, CloseCode};
use crate::event::Control;
use crate::filter::StreamParams;
use crate::gateway::Gateway;
use crate::metrics::Transport;
use crate::session::{self, End, Item, SendDeadline, Sent, Sink};

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pings a peer may leave unanswered before it is closed with 4001.
const MAX_MISSED_PONGS: u32 = 2;

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// tungstenite's defaults reserve 128 KiB each way per socket; these keep an idle
/// socket to a few KiB and bound what a stalled one can hold.
/// `max_message` bounds a client message and frame (`--ws-max-message`); larger ones
/// close with 1009.
fn socket_config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(256)
        .write_buffer_size(32 * 1024)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Validates the handshake, registers the session and answers 101; the socket is
/// served on a task of its own once hyper hands it over.
pub fn upgrade(
    mut request: Request<Incoming>,
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
        .map(|k| k.as_bytes().to_vec())
        .filter(|k| !k.is_empty())
        .ok_or_else(|| ApiError::BadRequest {
            code: "bad_handshake",
            message: "Sec-WebSocket-Key is missing".into(),
            field: None,
        })?;
    let accept = HeaderValue::from_str(&derive_accept_key(&key)).map_err(|_| ApiError::Internal)?;
    let mut session = gateway.open_session(params);
    let on_upgrade = hyper::upgrade::on(&mut request);
    let tasks = connection.tasks.clone();
    let task = async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(socket_config(gateway.config.ws_max_message)),
                )
                .await;
                let mut sink = WsSink {
                    socket,
                    send_timeout: gateway.config.send_timeout,
                    missed_pongs: 0,
                };
                let end = session::serve(&mut session, &mut sink, &gateway.pace).await;
                if let Some(code) = CloseCode::for_end(end) {
                    if let Some(limit) = code.limit() {
                        gateway.metrics.reject(limit);
                    }
                    sink.close(code).await;
                }
                drop(connection);
            }
            Err(err) => tracing::debug!(%err, "WebSocket upgrade failed"),
        }
    };
    // In the connection's span: the request's task ends at the upgrade.
    tasks.spawn(tracing::Instrument::in_current_span(task));
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    Ok(response)
}

/// A WebSocket as a session's sink.
struct WsSink {
    /// The upgraded connection, speaking the protocol.
    socket: Socket,
    /// `--send-timeout`: how long a write may wait on a client that does not read.
    send_timeout: Duration,
    /// Pings sent since the last pong; at [`MAX_MISSED_PONGS`] the socket closes.
    missed_pongs: u32,
}

impl Sink for WsSink {
    type Fault = CloseCode;
    type Incoming = Option<Result<Message, WsError>>;
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
        self.write_items(items, Some(Control::Heartbeat { position }))
            .await?;
        timed(
            self.send_timeout,
            self.socket.send(Message::Ping(Default::default())),
        )
        .await
    }

    async fn incoming(&mut self) -> Self::Incoming {
        self.socket.next().await
    }

    async fn answer(&mut self, message: Self::Incoming) -> Sent<CloseCode> {
        let reply = match message {
            None => return Err(End::Gone),
            Some(Ok(Message::Text(text))) => client_text(text.as_str()),
            Some(Ok(Message::Binary(_))) => return Err(End::Fault(CloseCode::Unsupported)),
            Some(Ok(Message::Pong(_))) => {
                self.missed_pongs = 0;
                return Ok(());
            }
            // tungstenite queues the pong (and the close reply); a flush sends it.
            Some(Ok(Message::Ping(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Close(_))) => {
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.flush()).await;
                return Err(End::Gone);
            }
            Some(Err(err)) => return Err(end_for_error(err)),
        };
        match reply {
            Some(json) => {
                timed(
                    self.send_timeout,
                    self.socket.send(Message::Text(json.into())),
                )
                .await
            }
            None => timed(self.send_timeout, self.socket.flush()).await,
        }
    }
}

impl WsSink {
    /// Writes a batch (and a heartbeat after it) as consecutive frames and flushes
    /// once: one socket write for many events when they are small.
    async fn write_items(&mut self, items: &[Item], heartbeat: Option<Control>) -> Sent<CloseCode> {
        let mut deadline = SendDeadline::new(self.send_timeout);
        for item in items {
            let message = match item {
                Item::Change(event) => Message::Text(event.json.clone()),
                Item::Control(control) => Message::Text(control.json().into()),
            };
            outcome(deadline.run(self.socket.feed(message)).await)?;
        }
        if let Some(control) = heartbeat {
            let message = Message::Text(control.json().into());
            outcome(deadline.run(self.socket.feed(message)).await)?;
        }
        outcome(deadline.run(self.socket.flush()).await)
    }

    /// Sends a close frame; gives up after [`CLOSE_TIMEOUT`].
    async fn close(&mut self, code: CloseCode) {
        let frame = CloseFrame {
            code: WireCode::from(code.code()),
            reason: code.reason().into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.socket.close(Some(frame))).await;
    }
}

/// The answer to a client's text message.
pub fn client_text(text: &str) -> Option<String> {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    let err = match parsed
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(|t| t.as_str())
    {
        Some("ping") => return Some(Control::Pong.json()),
        Some(other) => ApiError::BadMessage(format!(
            "unknown message type {other:?}; the only client message is {{\"type\":\"ping\"}}"
        )),
        None => ApiError::BadMessage("expected a JSON object like {\"type\":\"ping\"}".into()),
    };
    Some(err.stream_json())
}

/// How a tungstenite error ends the stream.
fn end_for_error(err: WsError) -> End<CloseCode> {
    match err {
        WsError::Capacity(_) => End::Fault(CloseCode::MessageTooBig),
        WsError::Utf8(_) => End::Fault(CloseCode::InvalidPayload),
        WsError::Protocol(err) => {
            tracing::debug!(%err, "WebSocket protocol violation");
            End::Fault(CloseCode::Protocol)
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => End::Gone,
        other => {
            tracing::debug!(err = %other, "WebSocket error");
            End::Fault(CloseCode::Protocol)
        }
    }
}

/// Runs one write under its own send timeout.
async fn timed(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Sent<CloseCode> {
    outcome(SendDeadline::new(limit).run(write).await)
}

/// A write's result as the loop sees it: `None` is a write that timed out.
fn outcome(result: Option<Result<(), WsError>>) -> Sent<CloseCode> {
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(err)) => Err(end_for_error(err)),
        None => Err(End::Lagging),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ping_gets_pong_and_anything_else_an_error() {
        assert_eq!(
            client_text(r#"{"type":"ping"}"#).unwrap(),
            r#"{"type":"pong"}"#
        );
        for other in [
            "hello",
            "{}",
            r#"{"type":"subscribe"}"#,
            "[1]",
            r#"{"type":5}"#,
        ] {
            let reply: serde_json::Value =
                serde_json::from_str(&client_text(other).unwrap()).unwrap();
            assert_eq!(reply["type"], "error");
            assert_eq!(reply["code"], "bad_message");
        }
    }
}
