//! The parent: set up the table, start the workers, write, collect, add up.

use std::cell::Cell;
use std::process::Stdio;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::mpsc;

use crate::args::Options;
use crate::counters::{self, Batching};
use crate::msg::{self, Command, ConnectReport, Event, WorkerReport, WorkerSpec};
use crate::procstat;
use crate::report::{
    Connect, Deliveries, Gateway, Harness, Percentiles, Report, Setup, Verification, Writes,
};
use crate::writer::{self, Plan};

/// Descriptors a worker keeps for itself (stdio, the runtime, slack).
const RESERVED_FILES: u64 = 200;
/// How long the gateway may take to accept `tables=load_events` (its catalog refresh
/// runs every 10 s).
const CATALOG_WAIT: Duration = Duration::from_secs(25);
/// How long an unreachable gateway is retried (it may be starting).
const UNREACHABLE_WAIT: Duration = Duration::from_secs(5);
/// Pause after the last client connected before the idle reading.
const SETTLE: Duration = Duration::from_secs(1);
/// How often the gateway is sampled while writing or holding.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How many processes the clients need: one process's descriptor limit is the ceiling.
pub fn procs_needed(clients: usize, asked: usize) -> usize {
    let hard = rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(_, hard)| hard)
        .unwrap_or(1024);
    procs_for(clients, asked, hard)
}

fn procs_for(clients: usize, asked: usize, hard_limit: u64) -> usize {
    let per_process = hard_limit.saturating_sub(RESERVED_FILES).max(64) as usize;
    asked.max(clients.div_ceil(per_process))
}

enum FromWorker {
    Event(Box<Event>),
    Gone,
}

struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
}

/// Runs the scenario the options describe.
pub async fn run(o: &Options) -> Result<Report, String> {
    let procs = procs_needed(o.clients, o.procs);
    let ws_clients = (o.clients as f64 * o.ws_share).round() as usize;
    let writes = !o.idle && o.rate > 0.0;

    // The table, its capture, and the first id of this run.
    let mut base_row_id = 0;
    let mut query = String::new();
    if let Some(url) = &o.database_url {
        let client = writer::connect(url).await?;
        base_row_id = writer::set_up(&client).await?;
        query = format!("tables={}", writer::TABLE);
    }
    if let Some(extra) = &o.query {
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(extra);
    }
    wait_streams_accept(o.gateway, &query).await?;

    let gateway_sample = || {
        o.gateway_pid
            .and_then(|pid| procstat::sample(&pid.to_string()).ok())
    };
    let gw_before = gateway_sample();
    let own_start = procstat::own();

    // Workers.
    let (tx, mut rx) = mpsc::channel::<(usize, FromWorker)>(procs * 2 + 2);
    let exe = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let expected_rows = if writes {
        (o.rate * o.duration.as_secs_f64()).round() as u64
    } else {
        0
    };
    let mut workers = Vec::with_capacity(procs);
    for index in 0..procs {
        let spec = WorkerSpec {
            index,
            procs,
            clients: o.clients,
            ws_clients,
            source_addrs: o.source_addrs,
            gateway: o.gateway,
            query: query.clone(),
            connect_concurrency: o.connect_concurrency.div_ceil(procs),
            connect_timeout_ms: o.connect_timeout.as_millis() as u64,
            base_row_id,
            expected_rows,
            read_buffer: o.read_buffer,
        };
        let mut child = tokio::process::Command::new(&exe)
            .arg("--worker")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start worker {index}: {e}"))?;
        let mut stdin = child.stdin.take().ok_or("worker stdin")?;
        let stdout = child.stdout.take().ok_or("worker stdout")?;
        send_line(&mut stdin, &spec).await?;
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<Event>(&line) {
                    Ok(event) => {
                        let _ = tx.send((index, FromWorker::Event(Box::new(event)))).await;
                    }
                    Err(err) => eprintln!("rowcast-load: worker {index} said {line:?}: {err}"),
                }
            }
            let _ = tx.send((index, FromWorker::Gone)).await;
        });
        workers.push(WorkerProc { child, stdin });
    }
    drop(tx);

    let mut connects: Vec<Option<ConnectReport>> = vec![None; procs];
    while connects.iter().any(Option::is_none) {
        match rx.recv().await {
            Some((i, FromWorker::Event(event))) => {
                if let Event::Connected(report) = *event {
                    connects[i] = Some(report);
                }
            }
            Some((i, FromWorker::Gone)) => {
                return Err(format!("worker {i} exited before its clients connected"))
            }
            None => return Err("every worker is gone".into()),
        }
    }
    let connects: Vec<ConnectReport> = connects.into_iter().flatten().collect();
    tokio::time::sleep(SETTLE).await;
    let gw_idle = gateway_sample();

    // Sample the gateway's RSS while the load (or the hold) lasts.
    let max_rss = Rc::new(Cell::new(gw_idle.map_or(0, |s| s.rss_bytes)));
    let sampling = Rc::new(Cell::new(true));
    let sampler = {
        let (max_rss, sampling) = (Rc::clone(&max_rss), Rc::clone(&sampling));
        let pid = o.gateway_pid;
        tokio::task::spawn_local(async move {
            while sampling.get() {
                if let Some(s) = pid.and_then(|p| procstat::sample(&p.to_string()).ok()) {
                    max_rss.set(max_rss.get().max(s.rss_bytes));
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };
    let gw_load_start = gateway_sample();
    let counters_start = counters::scrape(o.gateway).await;
    let own_load_start = procstat::own();
    let load_started = Instant::now();
    let outcome = if writes {
        let plan = Plan {
            url: o.database_url.clone().unwrap_or_default(),
            rate: o.rate,
            writers: o.writers,
            depth: o.writer_depth,
            duration: o.duration,
            pad: o.pad,
        };
        let outcome = writer::run(&plan).await?;
        let committed = msg::ranges(&outcome.committed);
        let command = Command::Verify {
            committed,
            drain_timeout_ms: o.drain_timeout.as_millis() as u64,
        };
        for w in &mut workers {
            send_line(&mut w.stdin, &command).await?;
        }
        Some(outcome)
    } else {
        // Idle: hold for the duration. No writes (`--rate 0`): the same, then check
        // that nothing arrived.
        tokio::time::sleep(o.duration).await;
        let command = if o.idle {
            Command::Close
        } else {
            Command::Verify {
                committed: Vec::new(),
                drain_timeout_ms: 0,
            }
        };
        for w in &mut workers {
            send_line(&mut w.stdin, &command).await?;
        }
        None
    };
    let mut reports: Vec<Option<WorkerReport>> = vec![None; procs];
    while reports.iter().any(Option::is_none) {
        match rx.recv().await {
            Some((i, FromWorker::Event(event))) => {
                if let Event::Report(report) = *event {
                    reports[i] = Some(report);
                }
            }
            Some((i, FromWorker::Gone)) if reports[i].is_none() => {
                return Err(format!("worker {i} exited before reporting"))
            }
            Some(_) => {}
            None => return Err("every worker is gone".into()),
        }
    }
    let load_wall = load_started.elapsed().as_secs_f64();
    let gw_after = gateway_sample();
    let counters_end = counters::scrape(o.gateway).await;
    let own_end = procstat::own();
    sampling.set(false);
    let _ = sampler.await;
    for mut w in workers {
        drop(w.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(5), w.child.wait()).await;
    }
    let reports: Vec<WorkerReport> = reports.into_iter().flatten().collect();

    // Add up.
    let mut connect_time = msg::new_histogram();
    let mut connect = Connect::default();
    for c in &connects {
        connect.ws_ok += c.ws_ok;
        connect.sse_ok += c.sse_ok;
        connect.failed += c.failed;
        connect.phase_s = connect.phase_s.max(c.phase_s);
        for (why, n) in &c.errors {
            *connect.errors.entry(why.clone()).or_default() += n;
        }
        c.connect_us.add_to(&mut connect_time);
    }
    connect.ok = connect.ws_ok + connect.sse_ok;
    connect.time = Percentiles::of(&connect_time);

    let mut v = Verification::default();
    let mut commit_latency = msg::new_histogram();
    let mut sent_latency = msg::new_histogram();
    let (mut delivered, mut last_rx, mut drain_s) = (0u64, 0i64, 0f64);
    let mut harness = Harness {
        total_cpu_s: own_end.cpu_s,
        load_cpu_s: own_end.cpu_s - own_load_start.cpu_s,
        ..Harness::default()
    };
    for r in &reports {
        v.clients += r.clients;
        v.clients_complete += r.clients_complete;
        v.clients_missing += r.clients_missing;
        v.missing += r.missing;
        v.duplicates += r.duplicates;
        v.out_of_order += r.out_of_order;
        v.unexpected += r.unexpected;
        v.resets += r.resets;
        v.errors += r.errors;
        v.dropped += r.dropped;
        v.protocol_errors += r.protocol_errors;
        v.parse_errors += r.parse_errors;
        for (why, n) in &r.closes {
            *v.closes.entry(why.clone()).or_default() += n;
        }
        r.commit_latency_us.add_to(&mut commit_latency);
        r.sent_latency_us.add_to(&mut sent_latency);
        delivered += r.delivered;
        last_rx = last_rx.max(r.last_rx_us);
        drain_s = drain_s.max(r.drain_s);
        harness.total_cpu_s += r.cpu_s;
        harness.load_cpu_s += r.cpu_s - r.cpu_connected_s;
        harness.worker_max_rss_bytes = harness.worker_max_rss_bytes.max(r.rss_bytes);
    }
    // The worker figures include their own start-up; keep the parent's start-up out.
    harness.total_cpu_s -= own_start.cpu_s.min(harness.total_cpu_s);
    if delivered > 0 {
        harness.cpu_us_per_delivery = harness.load_cpu_s * 1e6 / delivered as f64;
    }

    let connected_all = connect.failed == 0;
    let clean_streams = v.dropped == 0
        && v.resets == 0
        && v.errors == 0
        && v.protocol_errors == 0
        && v.parse_errors == 0;
    let (writes_report, deliveries) = match &outcome {
        Some(out) => {
            let committed = out.committed.len() as u64;
            let window_s = ((last_rx.max(out.ended_us) - out.started_us) as f64 / 1e6).max(1e-6);
            let expected = committed * v.clients;
            v.ok = connected_all
                && clean_streams
                && v.missing == 0
                && v.duplicates == 0
                && v.out_of_order == 0
                && v.unexpected == 0
                && delivered == expected;
            (
                Some(Writes {
                    committed,
                    errors: out.errors,
                    first_error: out.first_error.clone(),
                    achieved_rate: committed as f64
                        / ((out.ended_us - out.started_us) as f64 / 1e6).max(1e-6),
                    commit_rtt: Percentiles::of(&out.commit_rtt),
                    max_schedule_lag_ms: out.max_lag_us as f64 / 1000.0,
                }),
                Some(Deliveries {
                    delivered,
                    expected,
                    per_s: delivered as f64 / window_s,
                    window_s,
                    drain_s,
                }),
            )
        }
        None => {
            v.ok = connected_all && clean_streams && v.unexpected == 0 && delivered == 0;
            (None, None)
        }
    };
    let gateway = match (o.gateway_pid, gw_before, gw_idle, gw_after) {
        (Some(pid), Some(before), Some(idle), Some(after)) => {
            let start = gw_load_start.unwrap_or(idle);
            let load_cpu_s = after.cpu_s - start.cpu_s;
            Some(Gateway {
                pid,
                before,
                idle,
                load_max_rss_bytes: max_rss.get().max(after.rss_bytes),
                after,
                rss_per_connection_bytes: if connect.ok > 0 {
                    (idle.rss_bytes as f64 - before.rss_bytes as f64) / connect.ok as f64
                } else {
                    0.0
                },
                load_cpu_s,
                load_cpu_cores: load_cpu_s / load_wall.max(1e-6),
                cpu_us_per_delivery: if delivered > 0 {
                    load_cpu_s * 1e6 / delivered as f64
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    let have_latency = delivered > 0;
    let ok = v.ok && outcome.as_ref().is_none_or(|out| out.errors == 0);
    Ok(Report {
        ok,
        setup: Setup {
            mode: if o.idle { "idle" } else { "load" },
            clients: o.clients,
            ws_clients,
            sse_clients: o.clients - ws_clients,
            procs,
            source_addrs: o.source_addrs,
            rate: if writes { o.rate } else { 0.0 },
            writers: o.writers,
            duration_s: o.duration.as_secs_f64(),
            query,
        },
        connect,
        writes: writes_report,
        deliveries,
        verification: v,
        latency_commit: have_latency.then(|| Percentiles::of(&commit_latency)),
        latency_sent: have_latency.then(|| Percentiles::of(&sent_latency)),
        gateway,
        batching: counters_start
            .zip(counters_end)
            .map(|(start, end)| Batching::between(&start, &end)),
        harness,
    })
}

async fn send_line(stdin: &mut ChildStdin, value: &impl serde::Serialize) -> Result<(), String> {
    let mut line = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stdin
        .write_all(&line)
        .await
        .map_err(|e| format!("cannot talk to a worker: {e}"))?;
    stdin.flush().await.map_err(|e| e.to_string())
}

/// Waits until the gateway answers `GET /events?{query}` with 200: it re-reads the
/// tracked tables every 10 s, so a table tracked just now may be refused for a while.
async fn wait_streams_accept(gateway: std::net::SocketAddr, query: &str) -> Result<(), String> {
    let started = Instant::now();
    loop {
        let status = probe(gateway, query).await;
        let waited = started.elapsed();
        match status {
            Ok(200) => return Ok(()),
            Ok(400) if waited < CATALOG_WAIT => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(_) if waited < UNREACHABLE_WAIT => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(code) => {
                return Err(format!(
                    "the gateway at {gateway} answers GET /events?{query} with {code}"
                ))
            }
            Err(err) => return Err(format!("cannot reach the gateway at {gateway}: {err}")),
        }
    }
}

async fn probe(gateway: std::net::SocketAddr, query: &str) -> std::io::Result<u16> {
    let target = format!("/events?{query}");
    let mut stream =
        tokio::time::timeout(Duration::from_secs(2), counters::send_get(gateway, &target))
            .await??;
    let mut head = [0u8; 32];
    let mut got = 0;
    while got < 12 {
        let n =
            tokio::time::timeout(Duration::from_secs(2), stream.read(&mut head[got..])).await??;
        if n == 0 {
            break;
        }
        got += n;
    }
    let status = std::str::from_utf8(head.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_beyond_one_process_descriptor_limit_get_more_processes() {
        assert_eq!(procs_for(19_000, 1, 20_000), 1);
        assert_eq!(procs_for(19_900, 1, 20_000), 2);
        assert_eq!(procs_for(50_000, 1, 20_000), 3);
        assert_eq!(procs_for(100, 4, 20_000), 4);
    }
}
