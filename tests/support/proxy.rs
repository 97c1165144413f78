//! A loopback TCP proxy in front of PostgreSQL that can go silent: while paused it
//! keeps every connection open and accepts new ones, but forwards nothing, the way a
//! hung server or a dead host behind a live load balancer behaves.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A running proxy; its tasks end with the test's runtime.
pub struct SilentProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// `true` while forwarding.
    forwarding: watch::Sender<bool>,
}

impl SilentProxy {
    /// Starts forwarding `127.0.0.1:<port>` to `upstream`.
    pub async fn start(upstream: SocketAddr) -> SilentProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (forwarding, watching) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, watching.clone()));
                tokio::spawn(pump(server_read, client_write, watching.clone()));
            }
        });
        SilentProxy { addr, forwarding }
    }

    /// Stops forwarding; connections stay open and silent.
    pub fn pause(&self) {
        self.forwarding.send_replace(false);
    }

    /// Forwards again, including whatever was held back.
    pub fn resume(&self) {
        self.forwarding.send_replace(true);
    }

    /// `url` (a `postgres://user@host:port/db…` URL) with this proxy as host and port.
    pub fn url_for(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').expect("URL with a user");
        let (_, path) = rest.split_once('/').expect("URL with a database");
        format!("{scheme_user}@{}/{path}", self.addr)
    }
}

/// Copies one direction, holding each chunk while forwarding is paused.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut forwarding: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if forwarding.wait_for(|on| *on).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
