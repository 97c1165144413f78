//! Gateway memory during the run: each replica's RSS sampled from `/proc` and held
//! against a bound derived from what a replica is allowed to keep — its ring of
//! events and its connections — above what it used once ready.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use crate::cluster;

/// What a replica may hold above its RSS once ready.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bound {
    /// Events the ring keeps (`--ring-capacity`).
    pub ring_events: u64,
    /// Bytes per ring event: the event and its encodings, generously.
    pub per_event: u64,
    /// Client connections in the run (each could sit on one replica).
    pub clients: u64,
    /// Bytes per client connection: its task, buffers and a frame in flight.
    pub per_client: u64,
    /// Bytes for everything else: pool connections, snapshot pages, allocator slack.
    pub slack: u64,
}

impl Bound {
    /// The growth allowed above the floor, bytes.
    pub fn allowance(&self) -> u64 {
        self.ring_events * self.per_event + self.clients * self.per_client + self.slack
    }
}

/// The memory part of the report.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Every replica within its bound.
    pub within: bool,
    /// Per replica: RSS once ready, peak RSS, bound, MiB.
    pub replicas: Vec<[f64; 3]>,
    /// The bound's terms.
    pub bound: Bound,
}

/// Samples every replica's RSS every 250 ms until `stop`; the peak per replica, bytes.
/// A restarted replica is sampled under its new pid; a stopped one keeps its RSS.
pub async fn sample(pids: Vec<Arc<AtomicU32>>, stop: Arc<AtomicBool>) -> Vec<u64> {
    let mut peaks = vec![0u64; pids.len()];
    while !stop.load(Ordering::Relaxed) {
        for (peak, pid) in peaks.iter_mut().zip(&pids) {
            let pid = pid.load(Ordering::Relaxed);
            if let Some(rss) = (pid != 0).then(|| cluster::rss_bytes(pid)).flatten() {
                *peak = (*peak).max(rss);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    peaks
}

/// Holds each replica's peak against its floor plus the bound's allowance.
pub fn judge(floors: &[u64], peaks: &[u64], bound: Bound) -> Report {
    let mib = |b: u64| (b as f64 / 1_048_576.0 * 10.0).round() / 10.0;
    let mut within = true;
    let mut replicas = Vec::new();
    for (&floor, &peak) in floors.iter().zip(peaks) {
        let limit = floor + bound.allowance();
        within &= peak <= limit;
        replicas.push([mib(floor), mib(peak), mib(limit)]);
    }
    Report {
        within,
        replicas,
        bound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peak_above_the_floor_plus_the_allowance_is_out_of_bounds() {
        let bound = Bound {
            ring_events: 10,
            per_event: 100,
            clients: 2,
            per_client: 1000,
            slack: 0,
        };
        assert_eq!(bound.allowance(), 3000);
        assert!(judge(&[5000, 5000], &[8000, 6000], bound).within);
        assert!(!judge(&[5000, 5000], &[8001, 6000], bound).within);
    }
}
