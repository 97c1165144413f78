//! The accept loop: connection limit, HTTP/1.1 with upgrades and header timeouts, and
//! graceful shutdown with a deadline.
//!
//! As in mini-redis, the caller binds the listener (tests bind port 0) and errors of
//! one connection are logged, never returned to the accept loop.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::error::ApiError;
use super::routes;
use crate::gateway::Gateway;

/// Largest request head (and write buffer) per connection; larger heads get 431.
const MAX_BUF: usize = 64 * 1024;
/// Descriptors kept free for the database pool, the listener and logs.
const RESERVED_FILES: u64 = 100;
/// Pause after an accept error such as EMFILE, instead of spinning or exiting.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a refused connection gets to receive its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// What a request handler knows about its connection.
#[derive(Debug, Clone)]
pub struct Connection {
    /// Cancelling drops the TCP connection at once (a stalled SSE client).
    pub kill: CancellationToken,
    /// Where stream tasks are spawned, so that shutdown waits for them.
    pub tasks: TaskTracker,
    /// Held while any part of the connection lives (including an upgraded socket).
    _slot: Arc<Slot>,
}

/// One unit of the connection limit.
#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Raises the soft descriptor limit to the hard one and derives the connection limit.
pub fn connection_ceiling(configured: Option<usize>) -> usize {
    let files = match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(err) => {
            tracing::warn!(%err, "could not raise the open-file limit");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .map(|(soft, _)| soft)
                .unwrap_or(1024)
        }
    };
    let derived = files.saturating_sub(RESERVED_FILES).max(16) as usize;
    let ceiling = configured.map_or(derived, |n| n.min(derived));
    tracing::info!(
        open_files = files,
        max_connections = ceiling,
        "connection ceiling"
    );
    ceiling
}

/// Serves until `gateway.shutdown` is cancelled, then drains: no new connections,
/// keep-alive off, streams closed by their tasks, in-flight calls finished, all within
/// `--shutdown-timeout`. Returns whether the drain completed in time.
pub async fn run(listener: TcpListener, gateway: Arc<Gateway>, max_connections: usize) -> bool {
    let tasks = TaskTracker::new();
    let active = Arc::new(AtomicUsize::new(0));
    let ids = AtomicU64::new(0);
    loop {
        let accepted = tokio::select! {
            _ = gateway.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                tracing::warn!(%err, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if active.fetch_add(1, Ordering::Relaxed) >= max_connections {
            active.fetch_sub(1, Ordering::Relaxed);
            gateway.metrics.refused_connections.inc();
            gateway.metrics.record_response(503);
            tasks.spawn(refuse(stream));
            continue;
        }
        let connection = Connection {
            kill: CancellationToken::new(),
            tasks: tasks.clone(),
            _slot: Arc::new(Slot(Arc::clone(&active))),
        };
        let id = ids.fetch_add(1, Ordering::Relaxed);
        let span = tracing::debug_span!("conn", conn.id = id, peer.addr = %peer);
        tasks.spawn(serve(stream, peer, Arc::clone(&gateway), connection).instrument(span));
    }
    drop(listener);
    tracing::info!("shutting down: listener closed, draining connections");
    tasks.close();
    let drained = tokio::time::timeout(gateway.config.shutdown_timeout, tasks.wait())
        .await
        .is_ok();
    if !drained {
        tracing::warn!(
            timeout = ?gateway.config.shutdown_timeout,
            "drain cut short: some connections were still open"
        );
    }
    drained
}

async fn serve(stream: TcpStream, peer: SocketAddr, gateway: Arc<Gateway>, connection: Connection) {
    let _ = stream.set_nodelay(true);
    let kill = connection.kill.clone();
    let service = {
        let gateway = Arc::clone(&gateway);
        service_fn(move |request| {
            let gateway = Arc::clone(&gateway);
            let connection = connection.clone();
            async move { Ok::<_, Infallible>(routes::handle(request, gateway, connection).await) }
        })
    };
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(gateway.config.header_timeout)
        .max_buf_size(MAX_BUF)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(%err, %peer, "connection ended with an error");
                }
                return;
            }
            _ = kill.cancelled() => {
                tracing::debug!(%peer, "connection dropped");
                return;
            }
            _ = gateway.shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
        }
    }
}

/// Answers a connection over the limit with a clean 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = ApiError::Unavailable("too many connections; retry shortly".into()).body_json();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
