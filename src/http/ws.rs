//! `GET /ws`: the WebSocket transport.
//!
//! The handshake is answered by hand on hyper's upgrade; tokio-tungstenite then runs
//! the protocol with small buffers, so ten thousand idle sockets cost little. One task
//! per socket reads client frames, writes coalesced batches, sends heartbeats and
//! watches shutdown.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::body::{empty, Body};
use super::error::ApiError;
use super::server::Connection;
use crate::event::Control;
use crate::filter::StreamParams;
use crate::gateway::Gateway;
use crate::metrics::{Limit, Transport};
use crate::stream::{record_sent, Item, SendDeadline, Session};

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
    let mut session = Session::open(Arc::clone(&gateway), params);
    let on_upgrade = hyper::upgrade::on(&mut request);
    let tasks = connection.tasks.clone();
    tasks.spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let mut socket = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(socket_config(gateway.config.ws_max_message)),
                )
                .await;
                // Lent, not moved: an async fn keeps moved arguments twice.
                serve(&mut socket, &mut session, &gateway).await;
                drop(connection);
            }
            Err(err) => tracing::debug!(%err, "WebSocket upgrade failed"),
        }
    });
    let mut response = Response::new(empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    Ok(response)
}

/// Why a socket's loop ended.
enum End {
    /// The peer closed or vanished; nothing more to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// A write stayed blocked past the send timeout.
    Lagging,
}

async fn serve(socket: &mut Socket, session: &mut Session, gateway: &Gateway) {
    let metrics = &gateway.metrics;
    let gauge = metrics.connections(Transport::Ws);
    gauge.inc();
    let end = run(socket, session, gateway).await;
    match end {
        End::Gone => {}
        End::Close(code, reason) => {
            if code == 1009 {
                metrics.reject(Limit::WsMessageSize);
            }
            close(socket, code, reason).await
        }
        End::Lagging => {
            metrics.lagging_disconnects.inc();
            tracing::debug!(
                position = session.position(),
                "closing a lagging WebSocket client"
            );
            close(socket, 4008, "lagging").await;
        }
    }
    gauge.dec();
}

async fn run(socket: &mut Socket, session: &mut Session, gateway: &Gateway) -> End {
    let send_timeout = gateway.config.send_timeout;
    let period = gateway.config.heartbeat;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut missed_pongs = 0;
    let mut items = Vec::new();
    // Made once: a new future per turn would lock the token's waiter list, which
    // every session shares, twice per turn.
    let shutdown = gateway.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        items.clear();
        session.next_batch(&mut items).await;
        if !items.is_empty() {
            match write_items(socket, &items, gateway, send_timeout).await {
                Ok(()) => continue,
                Err(end) => return end,
            }
        }
        tokio::select! {
            biased;
            _ = &mut shutdown => return End::Close(1001, "shutdown"),
            _ = session.wait() => {}
            message = socket.next() => {
                // Boxed: client frames are rare (pongs), and the reply's future would
                // size every socket's task.
                let reply = Box::pin(on_client_message(socket, message, &mut missed_pongs, send_timeout));
                if let Some(end) = reply.await {
                    return end;
                }
            }
            _ = heartbeat.tick() => {
                if missed_pongs >= MAX_MISSED_PONGS {
                    return End::Close(4001, "ping_timeout");
                }
                missed_pongs += 1;
                // Advance the position past anything that did not match first.
                items.clear();
                session.next_batch(&mut items).await;
                items.push(Item::Control(Control::Heartbeat { position: session.position() }));
                if let Err(end) = write_items(socket, &items, gateway, send_timeout).await {
                    return end;
                }
                if let Err(end) = timed(send_timeout, socket.send(Message::Ping(Default::default()))).await {
                    return end;
                }
            }
        }
    }
}

/// Handles one frame from the client; `Some` ends the connection.
async fn on_client_message(
    socket: &mut Socket,
    message: Option<Result<Message, WsError>>,
    missed_pongs: &mut u32,
    send_timeout: Duration,
) -> Option<End> {
    let reply = match message {
        None => return Some(End::Gone),
        Some(Ok(Message::Text(text))) => client_text(text.as_str()),
        Some(Ok(Message::Binary(_))) => {
            return Some(End::Close(1003, "binary frames are not accepted"))
        }
        Some(Ok(Message::Pong(_))) => {
            *missed_pongs = 0;
            return None;
        }
        // tungstenite queues the pong (and the close reply); a flush sends it.
        Some(Ok(Message::Ping(_) | Message::Frame(_))) => None,
        Some(Ok(Message::Close(_))) => {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.flush()).await;
            return Some(End::Gone);
        }
        Some(Err(err)) => return Some(end_for_error(err)),
    };
    let sent = match reply {
        Some(json) => timed(send_timeout, socket.send(Message::Text(json.into()))).await,
        None => timed(send_timeout, socket.flush()).await,
    };
    sent.err()
}

/// The answer to a client's text message.
pub fn client_text(text: &str) -> Option<String> {
    let parsed: Option<serde_json::Value> = serde_json::from_str(text).ok();
    match parsed
        .as_ref()
        .and_then(|v| v.get("type"))
        .and_then(|t| t.as_str())
    {
        Some("ping") => Some(Control::Pong.json()),
        Some(other) => Some(bad_message(&format!(
            "unknown message type {other:?}; the only client message is {{\"type\":\"ping\"}}"
        ))),
        None => Some(bad_message(
            "expected a JSON object like {\"type\":\"ping\"}",
        )),
    }
}

fn bad_message(message: &str) -> String {
    serde_json::json!({"type": "error", "code": "bad_message", "message": message}).to_string()
}

fn end_for_error(err: WsError) -> End {
    match err {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            End::Close(1009, "message too big")
        }
        WsError::Capacity(_) => End::Close(1009, "message too big"),
        WsError::Utf8(_) => End::Close(1007, "invalid UTF-8"),
        WsError::Protocol(err) => {
            tracing::debug!(%err, "WebSocket protocol violation");
            End::Close(1002, "protocol error")
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => End::Gone,
        other => {
            tracing::debug!(err = %other, "WebSocket error");
            End::Close(1002, "protocol error")
        }
    }
}

/// Writes a batch as consecutive frames and flushes once: one socket write for many
/// events when they are small.
async fn write_items(
    socket: &mut Socket,
    items: &[Item],
    gateway: &Gateway,
    send_timeout: Duration,
) -> Result<(), End> {
    let mut deadline = SendDeadline::new(send_timeout);
    let mut changes = 0u64;
    for item in items {
        let message = match item {
            Item::Change(event) => {
                changes += 1;
                Message::Text(event.json.clone())
            }
            Item::Control(control) => Message::Text(control.json().into()),
        };
        outcome(deadline.run(socket.feed(message)).await)?;
    }
    outcome(deadline.run(socket.flush()).await)?;
    record_sent(&gateway.metrics, items, Transport::Ws, changes);
    Ok(())
}

/// Runs one write under its own send timeout.
async fn timed(
    limit: Duration,
    write: impl std::future::Future<Output = Result<(), WsError>>,
) -> Result<(), End> {
    outcome(SendDeadline::new(limit).run(write).await)
}

/// A write's result as the loop sees it: `None` is a write that timed out.
fn outcome(result: Option<Result<(), WsError>>) -> Result<(), End> {
    match result {
        Some(Ok(())) => Ok(()),
        Some(Err(err)) => Err(end_for_error(err)),
        None => Err(End::Lagging),
    }
}

async fn close(socket: &mut Socket, code: u16, reason: &'static str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(Some(frame))).await;
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
