//! The accept loop: connection limit, HTTP/1.1 with upgrades and header timeouts, and
//! graceful shutdown with a deadline.
//!
//! As in mini-redis, the caller binds the listener (tests bind port 0) and errors of
//! one connection are logged, never returned to the accept loop.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::error::ApiError;
use super::sniff::{self, FirstRequest};
use super::{routes, sse};
use crate::gateway::Gateway;
use crate::metrics::Limit;

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

/// One unit of the connection limits (total and per client IP), given back on drop.
#[derive(Debug)]
struct Slot {
    counts: Arc<Counts>,
    ip: IpAddr,
}

/// Open connections, in total and per client IP.
#[derive(Debug, Default)]
struct Counts {
    total: AtomicUsize,
    per_ip: DashMap<IpAddr, usize>,
}

impl Counts {
    /// Takes a slot, or says which limit refuses it.
    fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max_total: usize,
        max_per_ip: usize,
    ) -> Result<Slot, Limit> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Limit::Connections);
        }
        let mut count = self.per_ip.entry(ip).or_insert(0);
        if *count >= max_per_ip {
            drop(count);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Limit::ConnectionsPerIp);
        }
        *count += 1;
        Ok(Slot {
            counts: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.counts.total.fetch_sub(1, Ordering::Relaxed);
        self.counts.per_ip.remove_if_mut(&self.ip, |_, count| {
            *count -= 1;
            *count == 0
        });
    }
}

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
                let (status, err) = match limit {
                    Limit::ConnectionsPerIp => (
                        "429 Too Many Requests",
                        ApiError::TooManyConnections(
                            "too many connections from your address; retry shortly".into(),
                        ),
                    ),
                    _ => (
                        "503 Service Unavailable",
                        ApiError::Unavailable("too many connections; retry shortly".into()),
                    ),
                };
                gateway.metrics.record_response(err.status().as_u16());
                tasks.spawn(refuse(stream, status, err.body_json()));
                continue;
            }
        };
        let connection = Connection {
            kill: CancellationToken::new(),
            tasks: tasks.clone(),
            _slot: Arc::new(slot),
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

async fn serve(
    mut stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    connection: Connection,
) {
    let _ = stream.set_nodelay(true);
    let config = &gateway.config;
    let admitted =
        match sniff::first_request(&stream, config.header_timeout, config.max_header_bytes).await {
            // Boxed: it may wait for a catalog read, and unboxed it would size the
            // task of every connection.
            FirstRequest::Events { request, head_len } => {
                Box::pin(routes::admit_events(&request, &gateway))
                    .await
                    .map(|(headers, params)| (headers, params, head_len))
            }
            FirstRequest::TimedOut => {
                gateway.metrics.reject(Limit::HeaderTimeout);
                tracing::debug!(%peer, "no request within the header timeout");
                return;
            }
            FirstRequest::Closed => return,
            FirstRequest::Other => None,
        };
    if let Some((headers, params, head_len)) = admitted {
        if sse::consume_head(&mut stream, head_len).await.is_ok() {
            sse::serve_on_socket(stream, headers, params, gateway, connection).await;
        }
        return;
    }
    // Boxed: hyper's connection state is kilobytes, and unboxed it would size the
    // task of every connection, SSE streams served above included.
    Box::pin(serve_http(stream, peer, gateway, connection)).await;
}

/// Serves a connection with hyper: HTTP/1.1 keep-alive, upgrades, graceful shutdown.
async fn serve_http(
    stream: TcpStream,
    peer: SocketAddr,
    gateway: Arc<Gateway>,
    connection: Connection,
) {
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
        .max_buf_size(gateway.config.max_header_bytes)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    if err.is_parse_too_large() {
                        gateway.metrics.reject(Limit::HeaderSize);
                    } else if err.is_timeout() {
                        gateway.metrics.reject(Limit::HeaderTimeout);
                    }
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

/// Answers a connection over a limit with a clean status (503 or 429) and closes it.
async fn refuse(mut stream: TcpStream, status: &'static str, body: String) {
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await;
}
