//! What the parent and its worker processes say to each other: one JSON object per
//! line, the spec and commands on the worker's stdin, events on its stdout.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Which clients a worker opens, and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerSpec {
    /// This worker's number; it takes clients `index, index + procs, …`.
    pub index: usize,
    /// How many workers share the clients.
    pub procs: usize,
    /// All clients, over every worker.
    pub clients: usize,
    /// How many of them use WebSocket (spread evenly; the rest use SSE).
    pub ws_clients: usize,
    /// Client `i` binds 127.0.0.(1 + i % source_addrs).
    pub source_addrs: u8,
    /// The gateway.
    pub gateway: SocketAddr,
    /// The stream query string (`tables=load_events…`).
    pub query: String,
    /// Connections being set up at once in this worker.
    pub connect_concurrency: usize,
    /// Connect, handshake and `ready` must take less than this.
    pub connect_timeout_ms: u64,
    /// Rows with ids above this are the run's.
    pub base_row_id: u64,
    /// Rows the writers will commit (sizes the per-client bitsets up front).
    pub expected_rows: u64,
    /// Bytes of the read buffer the worker's clients share.
    pub read_buffer: usize,
}

impl WorkerSpec {
    /// Whether client `i` uses WebSocket: `ws_clients` of `clients` spread evenly.
    pub fn is_ws(&self, i: usize) -> bool {
        let (n, ws) = (self.clients as u128, self.ws_clients as u128);
        let i = i as u128;
        (i + 1) * ws / n > i * ws / n
    }
}

/// Parent → worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "cmd", content = "data", rename_all = "snake_case")]
pub enum Command {
    /// The writers are done: wait until every client has every committed row (or the
    /// timeout), then report.
    Verify {
        /// Committed `load_events` ids as inclusive ranges.
        committed: Vec<(u64, u64)>,
        /// Most time to wait for stragglers.
        drain_timeout_ms: u64,
    },
    /// Report without verifying (idle mode) and exit.
    Close,
}

/// Worker → parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum Event {
    /// Every client of the worker is connected (got `ready`) or has failed.
    Connected(ConnectReport),
    /// The final figures.
    Report(WorkerReport),
}

/// How connecting went in one worker.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConnectReport {
    /// WebSocket clients that got `ready`.
    pub ws_ok: u64,
    /// SSE clients that got `ready`.
    pub sse_ok: u64,
    /// Clients that did not.
    pub failed: u64,
    /// Why, counted.
    pub errors: BTreeMap<String, u64>,
    /// Per client, connect start → `ready`, µs.
    pub connect_us: HistData,
    /// From the worker's start to its last client's `ready`, seconds.
    pub phase_s: f64,
    /// The worker's CPU seconds so far.
    pub cpu_s: f64,
}

/// One worker's figures at the end.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerReport {
    /// Clients that were connected (got `ready`).
    pub clients: u64,
    /// Change messages received, over all clients.
    pub delivered: u64,
    /// Rows each client should have received (0 without verification).
    pub expected_per_client: u64,
    /// Clients that received every committed row.
    pub clients_complete: u64,
    /// Clients missing at least one row.
    pub clients_missing: u64,
    /// Rows missing, summed over clients.
    pub missing: u64,
    /// Rows received more than once, summed over clients.
    pub duplicates: u64,
    /// Events whose id was below the previous one on the same client.
    pub out_of_order: u64,
    /// Rows received that no writer committed in this run.
    pub unexpected: u64,
    /// `reset` messages (none are expected).
    pub resets: u64,
    /// `error` messages.
    pub errors: u64,
    /// Clients whose stream ended after `ready`.
    pub dropped: u64,
    /// How their streams ended, counted.
    pub closes: BTreeMap<String, u64>,
    /// Frames or chunks the harness could not parse.
    pub protocol_errors: u64,
    /// `change` messages whose fields could not be read.
    pub parse_errors: u64,
    /// Receive time minus `committed_at`, µs.
    pub commit_latency_us: HistData,
    /// Receive time minus `sent_at_us`, µs.
    pub sent_latency_us: HistData,
    /// First and last change received (µs since the epoch; 0 if none).
    pub first_rx_us: i64,
    /// See `first_rx_us`.
    pub last_rx_us: i64,
    /// Seconds from the verify command until every client was complete (or timed out).
    pub drain_s: f64,
    /// CPU seconds when every client was connected.
    pub cpu_connected_s: f64,
    /// CPU seconds at the end.
    pub cpu_s: f64,
    /// Resident memory at the end, bytes.
    pub rss_bytes: u64,
}

/// A histogram as (value, count) pairs of its non-empty buckets.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HistData(pub Vec<(u64, u64)>);

/// Histograms of µs from 1 µs to an hour, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

impl HistData {
    /// The buckets of `histogram`.
    pub fn of(histogram: &Histogram<u64>) -> HistData {
        HistData(
            histogram
                .iter_recorded()
                .map(|v| (v.value_iterated_to(), v.count_at_value()))
                .collect(),
        )
    }

    /// Adds these buckets to `into`.
    pub fn add_to(&self, into: &mut Histogram<u64>) {
        for &(value, count) in &self.0 {
            into.saturating_record_n(value, count);
        }
    }
}

/// Sorted ids as inclusive ranges.
pub fn ranges(sorted: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &id in sorted {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == id => *end = id,
            Some((_, end)) if *end == id => {}
            _ => out.push((id, id)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ws_share_is_spread_evenly_over_clients() {
        let spec = |clients, ws_clients| WorkerSpec {
            index: 0,
            procs: 1,
            clients,
            ws_clients,
            source_addrs: 1,
            gateway: "127.0.0.1:1".parse().unwrap(),
            query: String::new(),
            connect_concurrency: 1,
            connect_timeout_ms: 1,
            base_row_id: 0,
            expected_rows: 0,
            read_buffer: 1,
        };
        let half = spec(10, 5);
        let pattern: Vec<bool> = (0..10).map(|i| half.is_ws(i)).collect();
        assert_eq!(pattern.iter().filter(|w| **w).count(), 5);
        assert_eq!(&pattern[..4], [false, true, false, true]);
        assert!((0..7).all(|i| spec(7, 7).is_ws(i)));
        assert!((0..7).all(|i| !spec(7, 0).is_ws(i)));
        assert_eq!((0..1000).filter(|&i| spec(1000, 333).is_ws(i)).count(), 333);
    }

    #[test]
    fn ids_compress_to_ranges() {
        assert_eq!(ranges(&[1, 2, 3, 5, 7, 8]), [(1, 3), (5, 5), (7, 8)]);
        assert!(ranges(&[]).is_empty());
    }

    #[test]
    fn histograms_survive_the_trip() {
        let mut h = new_histogram();
        for v in [10, 20, 20, 5000, 1_000_000] {
            h.record(v).unwrap();
        }
        let mut back = new_histogram();
        HistData::of(&h).add_to(&mut back);
        assert_eq!(back.len(), 5);
        assert_eq!(back.value_at_quantile(0.5), h.value_at_quantile(0.5));
        assert_eq!(back.max(), h.max());
    }
}
