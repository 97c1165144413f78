//! The run's report: one JSON document for scripts, and a summary for people.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::counters::Batching;
use crate::procstat::Sample;

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 90th.
    pub p90_ms: f64,
    /// 99th.
    pub p99_ms: f64,
    /// 99.9th.
    pub p99_9_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Percentiles {
    /// From a histogram of µs.
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.5)),
            p90_ms: ms(h.value_at_quantile(0.9)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p99_9_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
            mean_ms: h.mean() / 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {} · p90 {} · p99 {} · p99.9 {} · max {} ms (n={})",
            fmt_ms(self.p50_ms),
            fmt_ms(self.p90_ms),
            fmt_ms(self.p99_ms),
            fmt_ms(self.p99_9_ms),
            fmt_ms(self.max_ms),
            self.count
        )
    }
}

fn fmt_ms(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2}")
    } else if ms < 100.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

/// What was asked for.
#[derive(Debug, Clone, Serialize)]
pub struct Setup {
    /// `load` or `idle`.
    pub mode: &'static str,
    /// Clients asked for.
    pub clients: usize,
    /// Of which WebSocket.
    pub ws_clients: usize,
    /// Of which SSE.
    pub sse_clients: usize,
    /// Worker processes.
    pub procs: usize,
    /// Source addresses used.
    pub source_addrs: u8,
    /// Commits per second asked for.
    pub rate: f64,
    /// Writer connections.
    pub writers: usize,
    /// Write phase (or hold), seconds.
    pub duration_s: f64,
    /// The stream query.
    pub query: String,
}

/// Connecting.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Connect {
    /// Clients that got `ready`.
    pub ok: u64,
    /// Of which WebSocket.
    pub ws_ok: u64,
    /// Of which SSE.
    pub sse_ok: u64,
    /// Clients that did not.
    pub failed: u64,
    /// Why, counted.
    pub errors: BTreeMap<String, u64>,
    /// Until the last worker had every client connected, seconds.
    pub phase_s: f64,
    /// Per client: connect → `ready`.
    pub time: Percentiles,
}

/// The writers.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Writes {
    /// Rows committed.
    pub committed: u64,
    /// Statements that failed.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Commits per second achieved over the write phase.
    pub achieved_rate: f64,
    /// Send → commit acknowledged.
    pub commit_rtt: Percentiles,
    /// The most a write started behind its schedule, ms.
    pub max_schedule_lag_ms: f64,
}

/// Deliveries and their verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Deliveries {
    /// Change messages received, over all clients.
    pub delivered: u64,
    /// Committed rows × connected clients.
    pub expected: u64,
    /// Deliveries per second, from the first write to the last receipt.
    pub per_s: f64,
    /// That window, seconds.
    pub window_s: f64,
    /// After the last write, until every client was complete (slowest worker), seconds.
    pub drain_s: f64,
}

/// Per-client checks, summed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Every connected client got every row once, in order, and stayed connected.
    pub ok: bool,
    /// Connected clients checked.
    pub clients: u64,
    /// Clients with every row.
    pub clients_complete: u64,
    /// Clients missing rows.
    pub clients_missing: u64,
    /// Rows missing, summed over clients.
    pub missing: u64,
    /// Rows received twice or more.
    pub duplicates: u64,
    /// Events received below the previous id.
    pub out_of_order: u64,
    /// Rows no writer of this run committed.
    pub unexpected: u64,
    /// `reset` messages.
    pub resets: u64,
    /// `error` messages.
    pub errors: u64,
    /// Streams that ended early.
    pub dropped: u64,
    /// How they ended.
    pub closes: BTreeMap<String, u64>,
    /// Frames the harness could not parse.
    pub protocol_errors: u64,
    /// Change messages whose fields could not be read.
    pub parse_errors: u64,
}

/// The gateway, from /proc.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Gateway {
    /// Its pid.
    pub pid: u32,
    /// Before any client connected.
    pub before: Sample,
    /// Every client connected, nothing written yet.
    pub idle: Sample,
    /// The largest RSS seen while writing and draining, bytes.
    pub load_max_rss_bytes: u64,
    /// At the end.
    pub after: Sample,
    /// (idle − before) RSS per connected client, bytes.
    pub rss_per_connection_bytes: f64,
    /// CPU seconds from the first write to the end of the drain.
    pub load_cpu_s: f64,
    /// `load_cpu_s` as a share of one core over that time.
    pub load_cpu_cores: f64,
    /// `load_cpu_s` per delivery, µs.
    pub cpu_us_per_delivery: f64,
}

/// The harness itself.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Harness {
    /// CPU seconds from the first write to the end (workers + writers).
    pub load_cpu_s: f64,
    /// Per delivery, µs.
    pub cpu_us_per_delivery: f64,
    /// All CPU seconds, connecting included.
    pub total_cpu_s: f64,
    /// The largest worker RSS, bytes.
    pub worker_max_rss_bytes: u64,
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Whether the run passed (all connected, verification clean).
    pub ok: bool,
    /// What was asked for.
    pub setup: Setup,
    /// Connecting.
    pub connect: Connect,
    /// Writes (load mode).
    pub writes: Option<Writes>,
    /// Deliveries (load mode).
    pub deliveries: Option<Deliveries>,
    /// Verification (load mode); stream ends in idle mode.
    pub verification: Verification,
    /// Receive time − `committed_at`.
    pub latency_commit: Option<Percentiles>,
    /// Receive time − `sent_at_us` (the commit included).
    pub latency_sent: Option<Percentiles>,
    /// The gateway (with `--gateway-pid`).
    pub gateway: Option<Gateway>,
    /// How the gateway batched this run's deliveries, from its `/metrics` (`None`
    /// for a server without them, such as `rowcast-floor`).
    pub batching: Option<Batching>,
    /// The harness.
    pub harness: Harness,
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn si(n: f64) -> String {
    if n >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if n >= 1e4 {
        format!("{:.1}k", n / 1e3)
    } else {
        format!("{n:.0}")
    }
}

impl Report {
    /// The summary for people.
    pub fn human(&self) -> String {
        let s = &self.setup;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "rowcast-load {}: {} clients ({} ws, {} sse) in {} process{} from {} source address{}",
            s.mode,
            s.clients,
            s.ws_clients,
            s.sse_clients,
            s.procs,
            if s.procs == 1 { "" } else { "es" },
            s.source_addrs,
            if s.source_addrs == 1 { "" } else { "es" },
        );
        if s.mode == "load" {
            let _ = writeln!(
                out,
                "  writes asked: {} commits/s × {:.1} s over {} writers; streams ?{}",
                s.rate, s.duration_s, s.writers, s.query
            );
        }
        let c = &self.connect;
        let _ = writeln!(
            out,
            "connect:  {} ready ({} ws, {} sse), {} failed, in {:.2} s; per client {}",
            c.ok,
            c.ws_ok,
            c.sse_ok,
            c.failed,
            c.phase_s,
            c.time.line()
        );
        for (why, n) in &c.errors {
            let _ = writeln!(out, "          failed: {n} × {why}");
        }
        if let Some(w) = &self.writes {
            let _ = writeln!(
                out,
                "writes:   {} committed ({:.1}/s), {} errors, max schedule lag {:.1} ms; commit round trip {}",
                w.committed,
                w.achieved_rate,
                w.errors,
                w.max_schedule_lag_ms,
                w.commit_rtt.line()
            );
            if let Some(e) = &w.first_error {
                let _ = writeln!(out, "          first error: {e}");
            }
        }
        if let Some(d) = &self.deliveries {
            let share = if d.expected > 0 {
                100.0 * d.delivered as f64 / d.expected as f64
            } else {
                100.0
            };
            let _ = writeln!(
                out,
                "deliver:  {} of {} expected ({share:.3}%), {}/s over {:.2} s, drained {:.2} s after the last write",
                d.delivered, d.expected, si(d.per_s), d.window_s, d.drain_s
            );
        }
        let v = &self.verification;
        if s.mode == "idle" {
            let _ = writeln!(
                out,
                "held:     {} — {} streams open for {:.1} s, {} dropped, {} resets, {} protocol errors",
                if v.ok { "OK" } else { "FAILED" },
                v.clients - v.dropped,
                s.duration_s,
                v.dropped,
                v.resets,
                v.protocol_errors
            );
        } else {
            let _ = writeln!(
                out,
                "verify:   {} — {} clients complete of {}, {} missing (on {} clients), {} duplicates, {} out of order, {} unexpected, {} resets, {} dropped, {} protocol / {} parse errors",
            if v.ok { "OK" } else { "FAILED" },
            v.clients_complete,
            v.clients,
            v.missing,
            v.clients_missing,
            v.duplicates,
            v.out_of_order,
            v.unexpected,
            v.resets,
            v.dropped,
                v.protocol_errors,
                v.parse_errors
            );
        }
        for (why, n) in &v.closes {
            let _ = writeln!(out, "          ended: {n} × {why}");
        }
        if let Some(p) = &self.latency_commit {
            let _ = writeln!(out, "latency commit→receive: {}", p.line());
        }
        if let Some(p) = &self.latency_sent {
            let _ = writeln!(out, "latency send→receive:   {}", p.line());
        }
        if let Some(g) = &self.gateway {
            let _ = writeln!(
                out,
                "gateway (pid {}): RSS before {}, idle {} ({:.2} KiB per connection), load max {}, after {}; threads {}",
                g.pid,
                mib(g.before.rss_bytes),
                mib(g.idle.rss_bytes),
                g.rss_per_connection_bytes / 1024.0,
                mib(g.load_max_rss_bytes),
                mib(g.after.rss_bytes),
                g.after.threads
            );
            if s.mode == "load" {
                let _ = writeln!(
                    out,
                    "          CPU {:.2} s under load ({:.2} cores) = {:.3} µs per delivery",
                    g.load_cpu_s, g.load_cpu_cores, g.cpu_us_per_delivery
                );
            }
        }
        if let Some(b) = &self.batching {
            let _ = writeln!(
                out,
                "batching: {} fan-out writes, {:.2} events per write, {} handoffs; {} source reads, {:.2} events per read",
                b.fanout_writes,
                b.events_per_fanout_write,
                b.fanout_handoffs,
                b.source_reads,
                b.events_per_read
            );
        }
        let h = &self.harness;
        let _ = writeln!(
            out,
            "harness:  CPU {:.2} s under load = {:.3} µs per delivery; {:.2} s in all; worker RSS max {}",
            h.load_cpu_s,
            h.cpu_us_per_delivery,
            h.total_cpu_s,
            mib(h.worker_max_rss_bytes)
        );
        out
    }
}
