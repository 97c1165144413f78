//! The writers: random multi-row SQL transactions (some rolled back, some held open
//! before COMMIT) and REST calls through a random replica, moving rows in and out of
//! `status=eq.pending`. Every failure (a restart, a terminated backend) is counted and
//! the writer carries on with a new connection.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const STATUSES: [&str; 3] = ["pending", "shipped", "delivered"];
const DEADLINE: Duration = Duration::from_secs(5);

/// Counters the report shows.
#[derive(Default)]
pub struct Tally {
    /// Transactions committed (SQL) or writes answered 2xx (REST).
    pub committed: AtomicU64,
    /// Transactions rolled back on purpose.
    pub rolled_back: AtomicU64,
    /// Writes that failed (connection lost, timeout).
    pub failed: AtomicU64,
}

/// One SQL writer until `stop`.
pub async fn sql(url: String, seed: u64, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    while !stop.load(Ordering::Relaxed) {
        let Ok(Ok((mut db, conn))) = tokio::time::timeout(
            DEADLINE,
            tokio_postgres::connect(&url, tokio_postgres::NoTls),
        )
        .await
        else {
            tally.failed.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        tokio::spawn(conn);
        while !stop.load(Ordering::Relaxed) {
            match tokio::time::timeout(DEADLINE, transaction(&mut db, &mut rng)).await {
                Ok(Ok(true)) => tally.committed.fetch_add(1, Ordering::Relaxed),
                Ok(Ok(false)) => tally.rolled_back.fetch_add(1, Ordering::Relaxed),
                _ => {
                    tally.failed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            };
            tokio::time::sleep(Duration::from_millis(rng.u64(5..40))).await;
        }
    }
}

/// A random transaction of 1–4 statements; true if it committed.
async fn transaction(
    db: &mut tokio_postgres::Client,
    rng: &mut fastrand::Rng,
) -> Result<bool, tokio_postgres::Error> {
    let tx = db.transaction().await?;
    for _ in 0..rng.usize(1..5) {
        let status = STATUSES[rng.usize(..3)];
        match rng.u8(..10) {
            0..=3 => {
                tx.execute(
                    "INSERT INTO orders (customer_name, product_name, status) VALUES ('chaos', 'p', $1)",
                    &[&status],
                )
                .await?;
            }
            4..=6 => {
                tx.execute(
                    "UPDATE orders SET status = $1 WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)",
                    &[&status],
                )
                .await?;
            }
            7 => {
                // Several rows at once, in or out of the filter together.
                tx.execute(
                    "UPDATE orders SET status = $1 WHERE id IN (SELECT id FROM orders ORDER BY random() LIMIT 4)",
                    &[&status],
                )
                .await?;
            }
            _ => {
                tx.execute(
                    "DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY random() LIMIT 1)",
                    &[],
                )
                .await?;
            }
        }
    }
    if rng.u8(..4) == 0 {
        // A commit delay: the transaction holds its changes a while.
        tokio::time::sleep(Duration::from_millis(rng.u64(..150))).await;
    }
    if rng.u8(..7) == 0 {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// One REST writer until `stop`, each call to a random replica.
pub async fn rest(ports: Vec<SocketAddr>, seed: u64, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut top = 50u64;
    while !stop.load(Ordering::Relaxed) {
        let port = ports[rng.usize(..ports.len())];
        let status = STATUSES[rng.usize(..3)];
        let (method, path, body) = match rng.u8(..10) {
            0..=3 => (
                "POST",
                "/api/orders".to_string(),
                format!(r#"{{"customer_name":"rest","product_name":"p","status":"{status}"}}"#),
            ),
            4..=8 => (
                "PATCH",
                format!("/api/orders/{}", rng.u64(1..=top)),
                format!(r#"{{"status":"{status}"}}"#),
            ),
            _ => (
                "DELETE",
                format!("/api/orders/{}", rng.u64(1..=top)),
                String::new(),
            ),
        };
        match tokio::time::timeout(DEADLINE, call(port, method, &path, &body)).await {
            Ok(Some(code)) if (200..300).contains(&code) || code == 404 => {
                if code != 404 {
                    tally.committed.fetch_add(1, Ordering::Relaxed);
                }
                if method == "POST" {
                    top += 1;
                }
            }
            _ => {
                tally.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(10..60))).await;
    }
}

async fn call(port: SocketAddr, method: &str, path: &str, body: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(port).await.ok()?;
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 64];
    let n = stream.read(&mut head).await.ok()?;
    crate::cluster::parse_status(&head[..n])
}
