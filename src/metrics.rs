//! Counters and gauges, rendered in the Prometheus text format at `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A counter bumped for every write of the fan-out, by every worker at once: one
/// stripe (a cache line) per thread, so that two cores counting do not pass one line
/// back and forth on each write to a client. Reading sums the stripes.
#[derive(Debug, Default)]
pub struct StripedCounter([Stripe; STRIPES]);

/// One thread's share of a [`StripedCounter`], alone on its cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// Stripes per counter: threads beyond this share them.
const STRIPES: usize = 8;

thread_local! {
    /// This thread's stripe, handed out in turn as threads first count.
    static STRIPE: usize = {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES
    };
}

impl StripedCounter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n` to this thread's stripe.
    pub fn add(&self, n: u64) {
        let stripe = STRIPE.with(|stripe| *stripe);
        self.0[stripe].0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value: the stripes' sum.
    pub fn get(&self) -> u64 {
        self.0
            .iter()
            .map(|stripe| stripe.0.load(Ordering::Relaxed))
            .sum()
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Adds one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    /// Replaces the value.
    pub fn set(&self, value: i64) {
        self.0.store(value, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds (seconds) of the commit→send histogram's buckets.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A fixed-bucket histogram of durations.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket of `LATENCY_BUCKETS` (not cumulative; summed when
    /// rendered).
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    /// All observations: Prometheus' `_count`.
    count: AtomicU64,
    /// Their sum: Prometheus' `_sum`.
    sum_micros: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe_micros(&self, micros: i64) {
        let micros = micros.max(0) as u64;
        let seconds = micros as f64 / 1e6;
        if let Some(i) = LATENCY_BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    fn render(&self, name: &str, out: &mut String) {
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// The two stream transports, as metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket (`/ws`).
    Ws,
    /// Server-Sent Events (`/events`).
    Sse,
}

impl Transport {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
        }
    }
}

/// The limits whose rejections are counted (`rowcast_limit_rejections_total{limit}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `--max-connections` reached: 503.
    Connections,
    /// `--max-connections-per-ip` reached: 429.
    ConnectionsPerIp,
    /// A request head over `--max-header-bytes`: 431.
    HeaderSize,
    /// A request head not received within `--header-timeout` (also idle keep-alive).
    HeaderTimeout,
    /// A body over `--max-body-bytes`: 413.
    BodySize,
    /// A WebSocket message or frame over `--ws-max-message`: close 1009.
    WsMessageSize,
}

impl Limit {
    const ALL: [Limit; 6] = [
        Limit::Connections,
        Limit::ConnectionsPerIp,
        Limit::HeaderSize,
        Limit::HeaderTimeout,
        Limit::BodySize,
        Limit::WsMessageSize,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Limit::Connections => "connections",
            Limit::ConnectionsPerIp => "connections_per_ip",
            Limit::HeaderSize => "header_size",
            Limit::HeaderTimeout => "header_timeout",
            Limit::BodySize => "body_size",
            Limit::WsMessageSize => "ws_message_size",
        }
    }
}

/// How the source received events: `rowcast_events_received_total{path=…}` shows how
/// much of the database's read cost the doorbell payloads and the relay save.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// In the WAL capturer's NOTIFY payload.
    Payload,
    /// From the NATS JetStream relay.
    Relay,
    /// By reading `change_log`.
    Read,
}

impl Path {
    /// Every path, in the order of the counters.
    pub const ALL: [Path; 3] = [Path::Payload, Path::Relay, Path::Read];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Path::Payload => "payload",
            Path::Relay => "relay",
            Path::Read => "read",
        }
    }
}

/// Every metric the gateway exports.
#[derive(Debug)]
pub struct Metrics {
    /// Open WebSocket streams.
    pub connections_ws: Gauge,
    /// Open SSE streams.
    pub connections_sse: Gauge,
    /// Events read from `change_log` by the source.
    pub events_captured: Counter,
    /// Change events written to WebSocket clients.
    pub delivered_ws: StripedCounter,
    /// Change events written to SSE clients.
    pub delivered_sse: StripedCounter,
    /// Change messages sent compressed (permessage-deflate): shows how many clients
    /// negotiated it and how many events reach `--ws-compress-min`.
    pub ws_deflated: StripedCounter,
    /// Payload bytes that compression kept off the wire, summed over those messages:
    /// what `--ws-compress-min` buys.
    pub ws_deflate_saved_bytes: StripedCounter,
    /// Batches the hub's fan-out wrote to a caught-up client's socket itself, without
    /// waking the client's task: against the deliveries, how much of the fan-out takes
    /// the cheap path.
    pub fan_out_writes: StripedCounter,
    /// Times the fan-out handed a client back to its own task (its socket would block,
    /// took part of a batch, or it is behind): the slow clients' share.
    pub fan_out_handoffs: Counter,
    /// Times the source reconnected after losing the database.
    pub db_reconnects: Counter,
    /// Reads of `change_log` by the source: every replica's reads cost the database,
    /// so this against `events_captured` shows how many events each read carries.
    pub catchup_queries: Counter,
    /// Reads of the tracked tables and columns (periodic, on a doorbell, on a stream
    /// naming one the copy lacks): shows that a flood of bad requests is absorbed.
    pub catalog_reads: Counter,
    /// Clients closed because a write stayed blocked past `--send-timeout`.
    pub lagging_disconnects: Counter,
    /// Rows deleted by retention.
    pub pruned_rows: Counter,
    /// Retention passes finished (whether or not this replica held the pruning lock),
    /// so operators and tests can see that retention runs.
    pub retention_passes: Counter,
    /// The oldest id still in `change_log` (the head when it is empty): resume points
    /// below it may get `reset`. Set by each retention pass.
    pub retention_oldest_id: Gauge,
    /// 1 while the source polls, 0 while it is woken by NOTIFY (or has not decided):
    /// polling behind a pooler is correct but slower, and worth an alert.
    pub source_polling: Gauge,
    /// Commit → first send, per event.
    pub commit_to_send: Histogram,
    /// Batches of events this replica published to the relay.
    pub relay_published: Counter,
    /// Relay publishes that failed or timed out (the consumers then read `change_log`).
    pub relay_publish_errors: Counter,
    /// 1 while this replica publishes to the relay, 0 otherwise.
    pub relay_publisher: Gauge,
    /// 1 while this replica consumes the relay instead of reading `change_log`.
    pub relay_consuming: Gauge,
    /// Commit → arrival through the relay, in microseconds, of the newest relayed event.
    relay_lag_micros: AtomicI64,
    /// Events received, indexed like [`Path::ALL`].
    received: [Counter; 3],
    /// Source lag in microseconds at the last read (0 when caught up).
    source_lag_micros: AtomicI64,
    /// Rejections by limit, indexed like `Limit::ALL`.
    limit_rejections: [Counter; 6],
    /// HTTP responses by status code (index = code; 100..=599).
    http_responses: [AtomicU64; 600],
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            connections_ws: Gauge::default(),
            connections_sse: Gauge::default(),
            events_captured: Counter::default(),
            delivered_ws: StripedCounter::default(),
            delivered_sse: StripedCounter::default(),
            ws_deflated: StripedCounter::default(),
            ws_deflate_saved_bytes: StripedCounter::default(),
            fan_out_writes: StripedCounter::default(),
            fan_out_handoffs: Counter::default(),
            db_reconnects: Counter::default(),
            catchup_queries: Counter::default(),
            catalog_reads: Counter::default(),
            lagging_disconnects: Counter::default(),
            limit_rejections: std::array::from_fn(|_| Counter::default()),
            pruned_rows: Counter::default(),
            retention_passes: Counter::default(),
            retention_oldest_id: Gauge::default(),
            source_polling: Gauge::default(),
            commit_to_send: Histogram::default(),
            relay_published: Counter::default(),
            relay_publish_errors: Counter::default(),
            relay_publisher: Gauge::default(),
            relay_consuming: Gauge::default(),
            relay_lag_micros: AtomicI64::new(0),
            received: std::array::from_fn(|_| Counter::default()),
            source_lag_micros: AtomicI64::new(0),
            http_responses: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Metrics {
    /// The gauge of open streams of a transport.
    pub fn connections(&self, transport: Transport) -> &Gauge {
        match transport {
            Transport::Ws => &self.connections_ws,
            Transport::Sse => &self.connections_sse,
        }
    }

    /// The counter of change events delivered over a transport.
    pub fn delivered(&self, transport: Transport) -> &StripedCounter {
        match transport {
            Transport::Ws => &self.delivered_ws,
            Transport::Sse => &self.delivered_sse,
        }
    }

    /// Counts one rejection by a limit.
    pub fn reject(&self, limit: Limit) {
        if let Some(i) = Limit::ALL.iter().position(|l| *l == limit) {
            self.limit_rejections[i].inc();
        }
    }

    /// Counts one HTTP response.
    pub fn record_response(&self, status: u16) {
        if let Some(counter) = self.http_responses.get(usize::from(status)) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counter of events received by `path`.
    pub fn received(&self, path: Path) -> &Counter {
        let index = Path::ALL.iter().position(|p| *p == path).unwrap_or(0);
        &self.received[index]
    }

    /// Sets the relay lag.
    pub fn set_relay_lag_micros(&self, micros: i64) {
        self.relay_lag_micros
            .store(micros.max(0), Ordering::Relaxed);
    }

    /// Sets the source lag.
    pub fn set_source_lag_micros(&self, micros: i64) {
        self.source_lag_micros
            .store(micros.max(0), Ordering::Relaxed);
    }

    /// Renders everything in the Prometheus text format; `ring_events` and `live` are
    /// read from the log and the source at render time.
    pub fn render(&self, ring_events: usize, source_live: bool) -> String {
        let mut out = String::with_capacity(4096);
        let write_family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        write_family(
            &mut out,
            "rowcast_connections",
            "gauge",
            "Open stream connections.",
        );
        for transport in [Transport::Ws, Transport::Sse] {
            let _ = writeln!(
                out,
                "rowcast_connections{{transport=\"{}\"}} {}",
                transport.label(),
                self.connections(transport).get()
            );
        }
        write_family(
            &mut out,
            "rowcast_ws_deflated_total",
            "counter",
            "Change messages sent compressed (permessage-deflate).",
        );
        let _ = writeln!(out, "rowcast_ws_deflated_total {}", self.ws_deflated.get());
        write_family(
            &mut out,
            "rowcast_ws_deflate_saved_bytes_total",
            "counter",
            "Payload bytes compression kept off the wire.",
        );
        let _ = writeln!(
            out,
            "rowcast_ws_deflate_saved_bytes_total {}",
            self.ws_deflate_saved_bytes.get()
        );
        write_family(
            &mut out,
            "rowcast_fanout_writes_total",
            "counter",
            "Batches the fan-out wrote to a caught-up client's socket itself.",
        );
        let _ = writeln!(
            out,
            "rowcast_fanout_writes_total {}",
            self.fan_out_writes.get()
        );
        write_family(
            &mut out,
            "rowcast_fanout_handoffs_total",
            "counter",
            "Times the fan-out handed a client back to its own task.",
        );
        let _ = writeln!(
            out,
            "rowcast_fanout_handoffs_total {}",
            self.fan_out_handoffs.get()
        );
        write_family(
            &mut out,
            "rowcast_events_captured_total",
            "counter",
            "Events read from realtime.change_log.",
        );
        let _ = writeln!(
            out,
            "rowcast_events_captured_total {}",
            self.events_captured.get()
        );
        write_family(
            &mut out,
            "rowcast_events_delivered_total",
            "counter",
            "Change events written to clients.",
        );
        for transport in [Transport::Ws, Transport::Sse] {
            let _ = writeln!(
                out,
                "rowcast_events_delivered_total{{transport=\"{}\"}} {}",
                transport.label(),
                self.delivered(transport).get()
            );
        }
        write_family(
            &mut out,
            "rowcast_ring_events",
            "gauge",
            "Events held in memory.",
        );
        let _ = writeln!(out, "rowcast_ring_events {ring_events}");
        write_family(
            &mut out,
            "rowcast_source_live",
            "gauge",
            "1 while the source is connected and reading.",
        );
        let _ = writeln!(out, "rowcast_source_live {}", u8::from(source_live));
        write_family(
            &mut out,
            "rowcast_source_polling",
            "gauge",
            "1 while the source polls change_log, 0 while NOTIFY wakes it.",
        );
        let _ = writeln!(out, "rowcast_source_polling {}", self.source_polling.get());
        write_family(
            &mut out,
            "rowcast_source_lag_seconds",
            "gauge",
            "Age of the newest event at the source's last read (0 when caught up).",
        );
        let lag = self.source_lag_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "rowcast_source_lag_seconds {lag}");
        write_family(
            &mut out,
            "rowcast_events_received_total",
            "counter",
            "Events the source received, by path: doorbell payload, relay, or read.",
        );
        for path in Path::ALL {
            let _ = writeln!(
                out,
                "rowcast_events_received_total{{path=\"{}\"}} {}",
                path.label(),
                self.received(path).get()
            );
        }
        write_family(
            &mut out,
            "rowcast_relay_lag_seconds",
            "gauge",
            "Commit to arrival through the relay of the newest relayed event.",
        );
        let lag = self.relay_lag_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "rowcast_relay_lag_seconds {lag}");
        for (name, help, gauge) in [
            (
                "rowcast_relay_publisher",
                "1 while this replica publishes events to the relay.",
                &self.relay_publisher,
            ),
            (
                "rowcast_relay_consuming",
                "1 while this replica receives events from the relay.",
                &self.relay_consuming,
            ),
        ] {
            write_family(&mut out, name, "gauge", help);
            let _ = writeln!(out, "{name} {}", gauge.get());
        }
        for (name, help, counter) in [
            (
                "rowcast_relay_published_total",
                "Batches of events published to the relay.",
                &self.relay_published,
            ),
            (
                "rowcast_relay_publish_errors_total",
                "Relay publishes that failed or timed out.",
                &self.relay_publish_errors,
            ),
            (
                "rowcast_db_reconnects_total",
                "Source reconnections after losing the database.",
                &self.db_reconnects,
            ),
            (
                "rowcast_catchup_queries_total",
                "Reads of realtime.change_log by the source.",
                &self.catchup_queries,
            ),
            (
                "rowcast_catalog_reads_total",
                "Reads of the tracked tables and their columns.",
                &self.catalog_reads,
            ),
            (
                "rowcast_lagging_disconnects_total",
                "Clients closed for staying blocked past --send-timeout.",
                &self.lagging_disconnects,
            ),
            (
                "rowcast_pruned_rows_total",
                "change_log rows deleted by retention.",
                &self.pruned_rows,
            ),
            (
                "rowcast_retention_passes_total",
                "Retention passes finished by this replica.",
                &self.retention_passes,
            ),
        ] {
            write_family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", counter.get());
        }
        write_family(
            &mut out,
            "rowcast_retention_oldest_id",
            "gauge",
            "The oldest id still in realtime.change_log (the head when it is empty).",
        );
        let _ = writeln!(
            out,
            "rowcast_retention_oldest_id {}",
            self.retention_oldest_id.get()
        );
        write_family(
            &mut out,
            "rowcast_http_responses_total",
            "counter",
            "HTTP responses by status code.",
        );
        for (status, counter) in self.http_responses.iter().enumerate() {
            let count = counter.load(Ordering::Relaxed);
            if count > 0 {
                let _ = writeln!(
                    out,
                    "rowcast_http_responses_total{{status=\"{status}\"}} {count}"
                );
            }
        }
        write_family(
            &mut out,
            "rowcast_limit_rejections_total",
            "counter",
            "Requests and connections refused by a limit.",
        );
        for (limit, counter) in Limit::ALL.iter().zip(&self.limit_rejections) {
            let _ = writeln!(
                out,
                "rowcast_limit_rejections_total{{limit=\"{}\"}} {}",
                limit.label(),
                counter.get()
            );
        }
        write_family(
            &mut out,
            "rowcast_commit_to_send_seconds",
            "histogram",
            "Time from commit to the first send of each event.",
        );
        self.commit_to_send
            .render("rowcast_commit_to_send_seconds", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_striped_counter_sums_what_every_thread_added() {
        let counter = StripedCounter::default();
        std::thread::scope(|scope| {
            for n in 1..=10u64 {
                let counter = &counter;
                scope.spawn(move || (0..1000).for_each(|_| counter.add(n)));
            }
        });
        counter.inc();
        assert_eq!(counter.get(), 55_001);
    }

    #[test]
    fn rendering_names_every_documented_metric() {
        let metrics = Metrics::default();
        metrics.record_response(404);
        metrics.commit_to_send.observe_micros(1500);
        metrics.delivered(Transport::Sse).add(3);
        let text = metrics.render(7, true);
        for needle in [
            "rowcast_connections{transport=\"ws\"} 0",
            "rowcast_connections{transport=\"sse\"} 0",
            "rowcast_events_captured_total 0",
            "rowcast_ws_deflated_total 0",
            "rowcast_ws_deflate_saved_bytes_total 0",
            "rowcast_fanout_writes_total 0",
            "rowcast_fanout_handoffs_total 0",
            "rowcast_events_delivered_total{transport=\"sse\"} 3",
            "rowcast_ring_events 7",
            "rowcast_source_lag_seconds 0",
            "rowcast_db_reconnects_total 0",
            "rowcast_catalog_reads_total 0",
            "rowcast_lagging_disconnects_total 0",
            "rowcast_pruned_rows_total 0",
            "rowcast_retention_passes_total 0",
            "rowcast_retention_oldest_id 0",
            "rowcast_source_polling 0",
            "rowcast_events_received_total{path=\"payload\"} 0",
            "rowcast_events_received_total{path=\"relay\"} 0",
            "rowcast_events_received_total{path=\"read\"} 0",
            "rowcast_relay_lag_seconds 0",
            "rowcast_relay_publish_errors_total 0",
            "rowcast_relay_publisher 0",
            "rowcast_http_responses_total{status=\"404\"} 1",
            "rowcast_commit_to_send_seconds_bucket{le=\"0.0025\"} 1",
            "rowcast_commit_to_send_seconds_bucket{le=\"0.001\"} 0",
            "rowcast_commit_to_send_seconds_count 1",
        ] {
            assert!(text.contains(needle), "missing {needle}\n{text}");
        }
    }
}
