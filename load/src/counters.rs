//! The gateway's own counters, from its `/metrics`: how many writes and reads a run's
//! deliveries took. CPU per delivery is the cost of one write divided by the events it
//! carries, so a run that states one should state the other. A server without
//! rowcast's metrics (`rowcast-floor`) has none, and the report leaves them out.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The most of `/metrics` read (rowcast's is a few KiB).
const MAX_BODY: usize = 1 << 20;
/// The scrape's deadline, connecting included.
const DEADLINE: Duration = Duration::from_secs(2);

/// One reading of the counters that say how deliveries were batched.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    /// `rowcast_events_delivered_total`, every transport.
    pub delivered: f64,
    /// `rowcast_fanout_writes_total`.
    pub fanout_writes: f64,
    /// `rowcast_fanout_handoffs_total`.
    pub fanout_handoffs: f64,
    /// `rowcast_catchup_queries_total`: the source's reads of `change_log`.
    pub source_reads: f64,
    /// `rowcast_events_captured_total`.
    pub captured: f64,
}

/// What a run's deliveries took, between two readings.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Batching {
    /// Writes the fan-out made to caught-up clients.
    pub fanout_writes: u64,
    /// Times the fan-out handed a client back to its own task.
    pub fanout_handoffs: u64,
    /// Events delivered per fan-out write: every delivery over the fan-out's writes,
    /// so an upper bound when clients' own tasks also wrote (the handoffs say how
    /// often they were asked to).
    pub events_per_fanout_write: f64,
    /// The source's reads of `change_log`.
    pub source_reads: u64,
    /// Events captured per read.
    pub events_per_read: f64,
}

impl Batching {
    /// The difference between two readings.
    pub fn between(start: &Counters, end: &Counters) -> Batching {
        let delta = |f: fn(&Counters) -> f64| (f(end) - f(start)).max(0.0);
        let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
        let writes = delta(|c| c.fanout_writes);
        let reads = delta(|c| c.source_reads);
        Batching {
            fanout_writes: writes as u64,
            fanout_handoffs: delta(|c| c.fanout_handoffs) as u64,
            events_per_fanout_write: ratio(delta(|c| c.delivered), writes),
            source_reads: reads as u64,
            events_per_read: ratio(delta(|c| c.captured), reads),
        }
    }
}

/// Reads the gateway's counters; `None` when it has no rowcast `/metrics`.
pub async fn scrape(gateway: SocketAddr) -> Option<Counters> {
    let body = tokio::time::timeout(DEADLINE, get_metrics(gateway))
        .await
        .ok()?
        .ok()?;
    parse(&body)
}

/// Connects to the gateway and sends a one-shot `GET target` (`Connection: close`):
/// the harness's plain requests (this scrape, and the probe for `/events`).
pub async fn send_get(gateway: SocketAddr, target: &str) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(gateway).await?;
    let request = format!("GET {target} HTTP/1.1\r\nHost: {gateway}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

async fn get_metrics(gateway: SocketAddr) -> std::io::Result<String> {
    let mut stream = send_get(gateway, "/metrics").await?;
    let mut response = Vec::new();
    (&mut stream)
        .take(MAX_BODY as u64)
        .read_to_end(&mut response)
        .await?;
    Ok(String::from_utf8_lossy(&response).into_owned())
}

/// The counters in a Prometheus text response (status line and headers included);
/// `None` unless it is a 200 carrying rowcast's delivery counter.
fn parse(response: &str) -> Option<Counters> {
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    let mut counters = Counters::default();
    let mut seen = false;
    for line in response.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        // Labels, if any, do not matter: every series of a name is summed.
        let name = name.split('{').next().unwrap_or(name);
        let slot = match name {
            "rowcast_events_delivered_total" => {
                seen = true;
                &mut counters.delivered
            }
            "rowcast_fanout_writes_total" => &mut counters.fanout_writes,
            "rowcast_fanout_handoffs_total" => &mut counters.fanout_handoffs,
            "rowcast_catchup_queries_total" => &mut counters.source_reads,
            "rowcast_events_captured_total" => &mut counters.captured,
            _ => continue,
        };
        *slot += value;
    }
    seen.then_some(counters)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESPONSE: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n\r\n\
        # HELP rowcast_events_delivered_total change events written to clients\n\
        # TYPE rowcast_events_delivered_total counter\n\
        rowcast_events_delivered_total{transport=\"ws\"} 900\n\
        rowcast_events_delivered_total{transport=\"sse\"} 100\n\
        rowcast_fanout_writes_total 250\n\
        rowcast_fanout_handoffs_total 3\n\
        rowcast_catchup_queries_total 10\n\
        rowcast_events_captured_total 40\n\
        rowcast_connections{transport=\"ws\"} 7\n";

    #[test]
    fn every_series_of_a_counter_is_summed() {
        let counters = parse(RESPONSE).unwrap();
        assert_eq!(counters.delivered, 1000.0);
        assert_eq!(counters.fanout_writes, 250.0);
        assert_eq!(counters.fanout_handoffs, 3.0);
        assert_eq!(counters.source_reads, 10.0);
        assert_eq!(counters.captured, 40.0);
    }

    #[test]
    fn a_server_without_rowcasts_metrics_has_no_counters() {
        assert_eq!(parse("HTTP/1.1 404 Not Found\r\n\r\n"), None);
        assert_eq!(parse("HTTP/1.1 200 OK\r\n\r\nsomething_else 1\n"), None);
    }

    #[test]
    fn batching_is_the_difference_between_two_readings() {
        let start = parse(RESPONSE).unwrap();
        let end = Counters {
            delivered: 5000.0,
            fanout_writes: 1250.0,
            fanout_handoffs: 5.0,
            source_reads: 110.0,
            captured: 440.0,
        };
        let batching = Batching::between(&start, &end);
        assert_eq!(batching.fanout_writes, 1000);
        assert_eq!(batching.fanout_handoffs, 2);
        assert_eq!(batching.events_per_fanout_write, 4.0);
        assert_eq!(batching.source_reads, 100);
        assert_eq!(batching.events_per_read, 4.0);
    }
}
