//! `GET /events`: the Server-Sent Events transport (`EventSource`, `curl -N`).
//!
//! A task per stream fills a one-slot channel that the response body drains; when the
//! client stops reading, the channel stays full, and after `--send-timeout` the task
//! ends the stream and drops the connection.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Response, StatusCode};
use tokio::sync::mpsc;

use super::body::{Body, ChannelBody};
use super::server::Connection;
use crate::filter::StreamParams;
use crate::gateway::Gateway;
use crate::metrics::Transport;
use crate::stream::{record_sent, Item, Session};

/// The comment block sent when a heartbeat has no new position to report.
const KEEPALIVE: &[u8] = b": keepalive\n\n";

/// Opens the stream: registers the session now, serves it on a task of its own.
pub fn respond(
    gateway: Arc<Gateway>,
    params: StreamParams,
    connection: Connection,
) -> Response<Body> {
    let (tx, rx) = mpsc::channel::<Bytes>(1);
    let session = Session::open(Arc::clone(&gateway), params);
    let tasks = connection.tasks.clone();
    tasks.spawn(serve(tx, session, gateway, connection));
    let mut response = Response::new(ChannelBody::boxed(rx));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx and similar proxies not to buffer the stream.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// Why a stream ended.
enum End {
    Gone,
    Lagging,
    Shutdown,
}

async fn serve(
    tx: mpsc::Sender<Bytes>,
    mut session: Session,
    gateway: Arc<Gateway>,
    connection: Connection,
) {
    let gauge = gateway.metrics.connections(Transport::Sse);
    gauge.inc();
    let end = run(&tx, &mut session, &gateway).await;
    gauge.dec();
    match end {
        End::Lagging => {
            gateway.metrics.lagging_disconnects.inc();
            tracing::debug!(
                position = session.position(),
                "dropping a lagging SSE client"
            );
            // The body will never be polled again while the client does not read, so
            // ending it is not enough: drop the connection itself.
            connection.kill.cancel();
        }
        End::Gone | End::Shutdown => {}
    }
}

async fn run(tx: &mpsc::Sender<Bytes>, session: &mut Session, gateway: &Gateway) -> End {
    let send_timeout = gateway.config.send_timeout;
    let period = gateway.config.heartbeat;
    let retry = format!("retry: {}\n\n", gateway.config.sse_retry.as_millis());
    if let Err(end) = send(tx, Bytes::from(retry), send_timeout).await {
        return end;
    }
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_id_sent = 0u64;
    let mut items = Vec::new();
    loop {
        items.clear();
        session.next_batch(&mut items).await;
        if !items.is_empty() {
            let (chunk, changes) = encode(&items, &mut last_id_sent);
            if let Err(end) = send(tx, chunk, send_timeout).await {
                return end;
            }
            record_sent(&gateway.metrics, &items, Transport::Sse, changes);
            continue;
        }
        tokio::select! {
            biased;
            _ = gateway.shutdown.cancelled() => return End::Shutdown,
            _ = tx.closed() => return End::Gone,
            _ = session.wait() => {}
            _ = heartbeat.tick() => {
                items.clear();
                session.next_batch(&mut items).await;
                let (mut chunk, changes) = encode(&items, &mut last_id_sent);
                let position = session.position();
                if position > last_id_sent {
                    // Browsers update lastEventId from an id-only block without firing
                    // an event, so a quiet filtered client resumes from here.
                    chunk = concat(chunk, format!("id: {position}\n\n").as_bytes());
                    last_id_sent = position;
                } else if items.is_empty() {
                    chunk = Bytes::from_static(KEEPALIVE);
                }
                if let Err(end) = send(tx, chunk, send_timeout).await {
                    return end;
                }
                record_sent(&gateway.metrics, &items, Transport::Sse, changes);
            }
        }
    }
}

fn concat(first: Bytes, second: &[u8]) -> Bytes {
    if first.is_empty() {
        return Bytes::copy_from_slice(second);
    }
    let mut out = BytesMut::with_capacity(first.len() + second.len());
    out.extend_from_slice(&first);
    out.extend_from_slice(second);
    out.freeze()
}

/// One chunk for a batch: a single event's shared block as is, several concatenated.
/// Returns the chunk and how many changes it holds; tracks the last `id:` written.
fn encode(items: &[Item], last_id_sent: &mut u64) -> (Bytes, u64) {
    let block = |item: &Item| -> (Bytes, Option<u64>) {
        match item {
            Item::Change(event) => (event.sse.clone(), Some(event.id)),
            Item::Control(control) => (control.sse(), control.position()),
        }
    };
    let changes = items
        .iter()
        .filter(|i| matches!(i, Item::Change(_)))
        .count() as u64;
    if let [only] = items {
        let (bytes, id) = block(only);
        if let Some(id) = id {
            *last_id_sent = id;
        }
        return (bytes, changes);
    }
    let mut out = BytesMut::new();
    for item in items {
        let (bytes, id) = block(item);
        if let Some(id) = id {
            *last_id_sent = id;
        }
        out.extend_from_slice(&bytes);
    }
    (out.freeze(), changes)
}

async fn send(
    tx: &mpsc::Sender<Bytes>,
    chunk: Bytes,
    limit: std::time::Duration,
) -> Result<(), End> {
    match tx.send_timeout(chunk, limit).await {
        Ok(()) => Ok(()),
        Err(mpsc::error::SendTimeoutError::Timeout(_)) => Err(End::Lagging),
        Err(mpsc::error::SendTimeoutError::Closed(_)) => Err(End::Gone),
    }
}
