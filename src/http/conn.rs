//! What the gateway knows about one client connection, and the counts behind the
//! connection limits.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Limit;

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

impl Connection {
    /// A new connection holding `slot`, its tasks tracked by `tasks`.
    pub fn new(slot: Slot, tasks: TaskTracker) -> Connection {
        Connection {
            kill: CancellationToken::new(),
            tasks,
            _slot: Arc::new(slot),
        }
    }
}

/// One unit of the connection limits (total and per client IP), given back on drop.
#[derive(Debug)]
pub struct Slot {
    /// The counters to give the unit back to.
    counts: Arc<Counts>,
    /// Whose per-address count it is part of.
    ip: IpAddr,
}

/// Open connections, in total and per client IP.
#[derive(Debug, Default)]
pub struct Counts {
    /// Every open connection: checked against `--max-connections`.
    total: AtomicUsize,
    /// Open connections by client address: checked against
    /// `--max-connections-per-ip`; an address leaves the map with its last one.
    per_ip: DashMap<IpAddr, usize>,
}

impl Counts {
    /// Takes a slot, or says which limit refuses it.
    pub fn acquire(
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
