//! The accept loop: connection limits, a span per connection, and graceful shutdown
//! with a deadline; each accepted connection goes to [`super::router`].
//!
//! As in mini-redis, the caller binds the listener (tests bind port 0) and errors of
//! one connection are logged, never returned to the accept loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::conn::{Connection, Counts};
use super::error::ApiError;
use super::router;
use crate::gateway::Gateway;

/// Descriptors kept free for the database pool, the listener and logs.
const RESERVED_FILES: u64 = 100;
/// Pause after an accept error such as EMFILE, instead of spinning or exiting.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a refused connection gets to receive its 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Connections the kernel may queue before `accept`: std's default of 128 overflows
/// when hundreds of clients reconnect at once, and each overflow costs a client a 1 s
/// SYN retry.
const LISTEN_BACKLOG: u32 = 4096;

/// Binds the listening socket with a deep accept queue.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
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
    let counts = Arc::new(Counts::default());
    let max_per_ip = gateway.config.max_connections_per_ip;
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
        let slot = match counts.acquire(peer.ip(), max_connections, max_per_ip) {
            Ok(slot) => slot,
            Err(limit) => {
                gateway.metrics.reject(limit);
                let err = ApiError::refusal(limit);
                gateway.metrics.record_response(err.status().as_u16());
                tasks.spawn(refuse(stream, err));
                continue;
            }
        };
        let connection = Connection::new(slot, tasks.clone());
        let id = ids.fetch_add(1, Ordering::Relaxed);
        // At `info`, so that every warning and error logged for it names it.
        let span = tracing::info_span!("conn", conn.id = id, peer.addr = %peer);
        tasks.spawn(router::serve(stream, peer, Arc::clone(&gateway), connection).instrument(span));
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

/// Answers a connection over a limit with a clean status (503 or 429) and closes it.
async fn refuse(mut stream: TcpStream, err: ApiError) {
    let response = err.http1_bytes();
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(&response).await?;
        stream.shutdown().await
    })
    .await;
}
