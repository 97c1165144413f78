//! A worker process: opens its share of the clients, reads every stream, checks each
//! delivery and reports.
//!
//! One thread (a current-thread runtime) per worker, so the clients share state
//! without locks: one large read buffer that every socket reads into, a few
//! histograms, counters. A client keeps only what a read left incomplete (usually
//! nothing, at most part of one message) and a bitset of the rows it has received.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use memchr::memmem;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};

use crate::msg::{self, Command, ConnectReport, Event, HistData, WorkerReport, WorkerSpec};
use crate::proto::{self, Dechunker, Frame, Kind, Scanner};
use crate::{now_us, procstat};

/// A read never gets less room than this after the carried bytes.
const MIN_READ: usize = 64 * 1024;
/// A response head larger than this is an error.
const MAX_HEAD: usize = 16 * 1024;
/// How often the drain checks whether every client is complete.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// The handshake key; its accept value is RFC 6455's own example.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &[u8] = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Runs a worker: the spec is the first line of stdin, commands follow; events go to
/// stdout. Returns the process exit code.
pub fn main() -> i32 {
    let mut line = String::new();
    let stdin = std::io::stdin();
    if stdin.lock().read_line(&mut line).is_err() {
        return 2;
    }
    let spec: WorkerSpec = match serde_json::from_str(&line) {
        Ok(spec) => spec,
        Err(err) => {
            eprintln!("rowcast-load worker: bad spec: {err}");
            return 2;
        }
    };
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rowcast-load worker: {err}");
            return 2;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, run(spec))
}

fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, event);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// What every client of the worker shares.
struct Worker {
    spec: WorkerSpec,
    scanner: Scanner,
    /// The one read buffer: a socket reads into it, the parser runs, the incomplete
    /// tail goes back to the client. Never borrowed across an await.
    scratch: RefCell<Vec<u8>>,
    stats: RefCell<Stats>,
    clients: RefCell<Vec<Rc<RefCell<ClientState>>>>,
    /// Limits connections being set up at once.
    connecting: Semaphore,
    /// Signalled when a client becomes ready or fails.
    settled: Notify,
}

struct Stats {
    commit_latency: Histogram<u64>,
    sent_latency: Histogram<u64>,
    connect: Histogram<u64>,
    ws_ok: u64,
    sse_ok: u64,
    failed: u64,
    connect_errors: BTreeMap<String, u64>,
    delivered: u64,
    first_rx_us: i64,
    last_rx_us: i64,
    protocol_errors: u64,
    parse_errors: u64,
    closes: BTreeMap<String, u64>,
}

/// One client's view of its stream.
#[derive(Default)]
struct ClientState {
    ready: bool,
    ended: Option<String>,
    last_event_id: u64,
    /// Bit `row_id - base - 1`: received.
    seen: Vec<u64>,
    distinct: u64,
    duplicates: u64,
    out_of_order: u64,
    unexpected: u64,
    resets: u64,
    errors: u64,
}

impl ClientState {
    fn record(&mut self, change: &proto::Change, base: u64) {
        if change.event_id < self.last_event_id {
            self.out_of_order += 1;
        }
        self.last_event_id = self.last_event_id.max(change.event_id);
        if change.row_id <= base {
            self.unexpected += 1;
            return;
        }
        let bit = (change.row_id - base - 1) as usize;
        let word = bit / 64;
        if word >= self.seen.len() {
            self.seen.resize(word + 1, 0);
        }
        let mask = 1u64 << (bit % 64);
        if self.seen[word] & mask != 0 {
            self.duplicates += 1;
        } else {
            self.seen[word] |= mask;
            self.distinct += 1;
        }
    }
}

async fn run(spec: WorkerSpec) -> i32 {
    let started = Instant::now();
    let words = (spec.expected_rows as usize).div_ceil(64);
    let mine: Vec<usize> = (spec.index..spec.clients).step_by(spec.procs).collect();
    let worker = Rc::new(Worker {
        scanner: Scanner::default(),
        scratch: RefCell::new(vec![0; spec.read_buffer.max(2 * MIN_READ)]),
        stats: RefCell::new(Stats {
            commit_latency: msg::new_histogram(),
            sent_latency: msg::new_histogram(),
            connect: msg::new_histogram(),
            ws_ok: 0,
            sse_ok: 0,
            failed: 0,
            connect_errors: BTreeMap::new(),
            delivered: 0,
            first_rx_us: 0,
            last_rx_us: 0,
            protocol_errors: 0,
            parse_errors: 0,
            closes: BTreeMap::new(),
        }),
        clients: RefCell::new(Vec::with_capacity(mine.len())),
        connecting: Semaphore::new(spec.connect_concurrency.max(1)),
        settled: Notify::new(),
        spec,
    });
    for &i in &mine {
        let state = Rc::new(RefCell::new(ClientState {
            seen: Vec::with_capacity(words),
            ..ClientState::default()
        }));
        worker.clients.borrow_mut().push(Rc::clone(&state));
        tokio::task::spawn_local(client(Rc::clone(&worker), i, state));
    }
    // Wait until every client is ready or failed.
    loop {
        let settled = worker.settled.notified();
        let done = {
            let stats = worker.stats.borrow();
            stats.ws_ok + stats.sse_ok + stats.failed
        };
        if done as usize >= mine.len() {
            break;
        }
        settled.await;
    }
    let cpu_connected = procstat::own().cpu_s;
    {
        let stats = worker.stats.borrow();
        emit(&Event::Connected(ConnectReport {
            ws_ok: stats.ws_ok,
            sse_ok: stats.sse_ok,
            failed: stats.failed,
            errors: stats.connect_errors.clone(),
            connect_us: HistData::of(&stats.connect),
            phase_s: started.elapsed().as_secs_f64(),
            cpu_s: cpu_connected,
        }));
    }
    let mut commands = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let command = match commands.next_line().await {
        Ok(Some(line)) => serde_json::from_str::<Command>(&line).ok(),
        _ => None,
    };
    let (expected, drain_s) = match command {
        Some(Command::Verify {
            committed,
            drain_timeout_ms,
        }) => {
            let expected = Expected::new(&committed, worker.spec.base_row_id);
            let drain_started = Instant::now();
            let deadline = drain_started + Duration::from_millis(drain_timeout_ms);
            while Instant::now() < deadline && !all_complete(&worker, expected.count) {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            (Some(expected), drain_started.elapsed().as_secs_f64())
        }
        Some(Command::Close) => (None, 0.0),
        None => return 0,
    };
    emit(&Event::Report(report(
        &worker,
        expected.as_ref(),
        drain_s,
        cpu_connected,
    )));
    0
}

/// The rows the writers committed, as a bitset over `row_id - base - 1`.
struct Expected {
    bits: Vec<u64>,
    count: u64,
}

impl Expected {
    fn new(committed: &[(u64, u64)], base: u64) -> Expected {
        let mut bits = Vec::new();
        let mut count = 0;
        for &(start, end) in committed {
            for row in start.max(base + 1)..=end {
                let bit = (row - base - 1) as usize;
                if bit / 64 >= bits.len() {
                    bits.resize(bit / 64 + 1, 0);
                }
                bits[bit / 64] |= 1 << (bit % 64);
                count += 1;
            }
        }
        Expected { bits, count }
    }
}

fn all_complete(worker: &Worker, expected: u64) -> bool {
    worker.clients.borrow().iter().all(|c| {
        let c = c.borrow();
        !c.ready || c.ended.is_some() || c.distinct >= expected
    })
}

fn report(
    worker: &Worker,
    expected: Option<&Expected>,
    drain_s: f64,
    cpu_connected_s: f64,
) -> WorkerReport {
    let stats = worker.stats.borrow();
    let mut out = WorkerReport {
        delivered: stats.delivered,
        expected_per_client: expected.map_or(0, |e| e.count),
        closes: stats.closes.clone(),
        protocol_errors: stats.protocol_errors,
        parse_errors: stats.parse_errors,
        commit_latency_us: HistData::of(&stats.commit_latency),
        sent_latency_us: HistData::of(&stats.sent_latency),
        first_rx_us: stats.first_rx_us,
        last_rx_us: stats.last_rx_us,
        drain_s,
        cpu_connected_s,
        ..WorkerReport::default()
    };
    for client in worker.clients.borrow().iter() {
        let c = client.borrow();
        if !c.ready {
            continue;
        }
        out.clients += 1;
        out.duplicates += c.duplicates;
        out.out_of_order += c.out_of_order;
        out.resets += c.resets;
        out.errors += c.errors;
        out.unexpected += c.unexpected;
        if c.ended.is_some() {
            out.dropped += 1;
        }
        if let Some(expected) = expected {
            let mut have = 0u64;
            let mut extra = 0u64;
            for (i, &word) in c.seen.iter().enumerate() {
                let want = expected.bits.get(i).copied().unwrap_or(0);
                have += u64::from((word & want).count_ones());
                extra += u64::from((word & !want).count_ones());
            }
            out.unexpected += extra;
            let missing = expected.count - have;
            out.missing += missing;
            if missing == 0 {
                out.clients_complete += 1;
            } else {
                out.clients_missing += 1;
            }
        }
    }
    let own = procstat::own();
    out.cpu_s = own.cpu_s;
    out.rss_bytes = own.rss_bytes;
    out
}

/// Where a client's bytes are in the protocol.
enum Wire {
    /// Waiting for the response head.
    Head,
    /// WebSocket frames.
    Ws,
    /// SSE over a chunked (or, if the server chose so, close-delimited) body.
    Sse { chunks: Option<Dechunker> },
}

/// What a client carries between reads: the undecoded tail (a partial frame, chunk
/// header or head) and, for SSE, the decoded part of an incomplete block.
#[derive(Default)]
struct Carry {
    body: Vec<u8>,
    raw: Vec<u8>,
}

enum Step {
    Continue,
    /// Bytes to write back (pong frames).
    Reply(Vec<u8>),
    End(String),
}

async fn client(worker: Rc<Worker>, i: usize, state: Rc<RefCell<ClientState>>) {
    let ws = worker.spec.is_ws(i);
    let permit = worker.connecting.acquire().await;
    let started = Instant::now();
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(worker.spec.connect_timeout_ms);
    let source = Ipv4Addr::new(127, 0, 0, 1 + (i % worker.spec.source_addrs as usize) as u8);
    let connected = tokio::time::timeout_at(deadline, open(&worker.spec, source, ws)).await;
    let mut stream = match connected {
        Ok(Ok(stream)) => stream,
        Ok(Err(err)) => return fail(&worker, format!("connect: {}", err.kind())),
        Err(_) => return fail(&worker, "connect: timeout".into()),
    };
    let mut permit = Some(permit);
    let mut wire = Wire::Head;
    let mut carry = Carry::default();
    loop {
        let ready_now = state.borrow().ready;
        if ready_now && permit.is_some() {
            // Connected: let the next client start.
            permit = None;
            let mut stats = worker.stats.borrow_mut();
            stats
                .connect
                .saturating_record(started.elapsed().as_micros() as u64);
            if ws {
                stats.ws_ok += 1;
            } else {
                stats.sse_ok += 1;
            }
            drop(stats);
            worker.settled.notify_one();
        }
        let read = std::future::poll_fn(|cx| {
            read_step(&worker, &mut stream, cx, &mut wire, &mut carry, ws, &state)
        });
        let step = if ready_now {
            read.await
        } else {
            match tokio::time::timeout_at(deadline, read).await {
                Ok(step) => step,
                Err(_) => return fail(&worker, "timeout before ready".into()),
            }
        };
        match step {
            Step::Continue => {}
            Step::Reply(bytes) => {
                if let Err(err) = stream.write_all(&bytes).await {
                    return end(&worker, &state, format!("write: {}", err.kind()));
                }
            }
            Step::End(why) => return end(&worker, &state, why),
        }
    }
}

fn fail(worker: &Worker, why: String) {
    let mut stats = worker.stats.borrow_mut();
    stats.failed += 1;
    *stats.connect_errors.entry(why).or_default() += 1;
    drop(stats);
    worker.settled.notify_one();
}

fn end(worker: &Worker, state: &RefCell<ClientState>, why: String) {
    let mut s = state.borrow_mut();
    if !s.ready {
        drop(s);
        return fail(worker, why);
    }
    *worker
        .stats
        .borrow_mut()
        .closes
        .entry(why.clone())
        .or_default() += 1;
    s.ended = Some(why);
}

/// Connects from `source` and sends the request.
async fn open(spec: &WorkerSpec, source: Ipv4Addr, ws: bool) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::V4(SocketAddrV4::new(source, 0)))?;
    let mut stream = socket.connect(spec.gateway).await?;
    stream.set_nodelay(true)?;
    let request = if ws {
        format!(
            "GET /ws?{q} HTTP/1.1\r\nHost: {h}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n",
            q = spec.query,
            h = spec.gateway
        )
    } else {
        format!(
            "GET /events?{q} HTTP/1.1\r\nHost: {h}\r\nAccept: text/event-stream\r\n\r\n",
            q = spec.query,
            h = spec.gateway
        )
    };
    stream.write_all(request.as_bytes()).await?;
    Ok(stream)
}

/// One read into the shared buffer and everything that can be parsed out of it.
///
/// It reads through `poll_read` because tokio then knows that a short read drained
/// the socket and clears its readiness: one `recvfrom` per wake-up, not a second one
/// that returns EAGAIN. The shared buffer is borrowed only within this poll.
fn read_step(
    worker: &Worker,
    stream: &mut TcpStream,
    cx: &mut std::task::Context<'_>,
    wire: &mut Wire,
    carry: &mut Carry,
    ws: bool,
    state: &RefCell<ClientState>,
) -> Poll<Step> {
    let mut scratch = worker.scratch.borrow_mut();
    let (b, r) = (carry.body.len(), carry.raw.len());
    if scratch.len() < b + r + MIN_READ {
        let grown = (b + r + MIN_READ).next_power_of_two();
        scratch.resize(grown, 0);
    }
    scratch[..b].copy_from_slice(&carry.body);
    scratch[b..b + r].copy_from_slice(&carry.raw);
    let mut buf = ReadBuf::new(&mut scratch[b + r..]);
    let n = match Pin::new(stream).poll_read(cx, &mut buf) {
        Poll::Pending => return Poll::Pending,
        Poll::Ready(Err(err)) => return Poll::Ready(Step::End(format!("read: {}", err.kind()))),
        Poll::Ready(Ok(())) if buf.filled().is_empty() => {
            return Poll::Ready(Step::End("eof".into()))
        }
        Poll::Ready(Ok(())) => buf.filled().len(),
    };
    Poll::Ready(parse_step(
        worker,
        &mut scratch,
        b,
        r,
        n,
        wire,
        carry,
        ws,
        state,
    ))
}

/// Parses what a read brought: `scratch` holds `b` carried body bytes, `r` carried
/// raw bytes and `n` new ones.
#[allow(clippy::too_many_arguments)]
fn parse_step(
    worker: &Worker,
    scratch: &mut [u8],
    b: usize,
    r: usize,
    n: usize,
    wire: &mut Wire,
    carry: &mut Carry,
    ws: bool,
    state: &RefCell<ClientState>,
) -> Step {
    let mut filled = b + r + n;
    carry.body.clear();
    carry.raw.clear();
    let mut body_start = b;
    if let Wire::Head = wire {
        // The head so far is in `body` (b bytes) and the new bytes follow it.
        let Some(at) = memmem::find(&scratch[..filled], b"\r\n\r\n") else {
            if filled > MAX_HEAD {
                return Step::End("response head too large".into());
            }
            carry.body.extend_from_slice(&scratch[..filled]);
            return Step::Continue;
        };
        let head = &scratch[..at];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .unwrap_or("???");
        if ws {
            if status != "101" {
                return Step::End(format!("status {status}"));
            }
            if memmem::find(head, WS_ACCEPT).is_none() {
                return Step::End("bad Sec-WebSocket-Accept".into());
            }
            *wire = Wire::Ws;
        } else {
            if status != "200" {
                return Step::End(format!("status {status}"));
            }
            let lower = head.to_ascii_lowercase();
            let chunked = memmem::find(&lower, b"transfer-encoding: chunked").is_some();
            *wire = Wire::Sse {
                chunks: chunked.then(Dechunker::default),
            };
        }
        scratch.copy_within(at + 4..filled, 0);
        filled -= at + 4;
        body_start = 0;
    }
    let base = worker.spec.base_row_id;
    let mut now = None;
    let mut client = state.borrow_mut();
    let mut stats = worker.stats.borrow_mut();
    match wire {
        Wire::Head => Step::Continue,
        Wire::Ws => {
            let mut at = 0;
            let mut reply = Vec::new();
            let mut end = None;
            loop {
                match proto::next_frame(&scratch[at..filled]) {
                    Ok(Some((frame, used))) => {
                        match frame {
                            Frame::Text(json) => on_message(
                                worker,
                                proto::kind_of_json(json),
                                json,
                                &mut now,
                                &mut client,
                                &mut stats,
                                base,
                            ),
                            Frame::Ping(payload) => proto::pong_frame(payload, &mut reply),
                            Frame::Close(code) => {
                                end = Some(format!("close {code}"));
                            }
                            Frame::Other => {}
                        }
                        at += used;
                        if end.is_some() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(err) => {
                        stats.protocol_errors += 1;
                        end = Some(format!("protocol: {err}"));
                        break;
                    }
                }
            }
            carry.raw.extend_from_slice(&scratch[at..filled]);
            match end {
                Some(why) => Step::End(why),
                None if reply.is_empty() => Step::Continue,
                None => Step::Reply(reply),
            }
        }
        Wire::Sse { chunks } => {
            let (body_end, raw_start) = match chunks {
                Some(decoder) => match decoder.decode(&mut scratch[..filled], body_start) {
                    Ok(pair) => pair,
                    Err(err) => {
                        stats.protocol_errors += 1;
                        return Step::End(format!("protocol: {err}"));
                    }
                },
                None => (filled, filled),
            };
            let mut at = 0;
            while let Some(len) =
                proto::next_block_end(&scratch[at..body_end], worker.scanner.blank_line())
            {
                let block = proto::parse_block(&scratch[at..at + len - 2]);
                if !block.event.is_empty() {
                    on_message(
                        worker,
                        proto::kind_of_event(block.event),
                        block.data,
                        &mut now,
                        &mut client,
                        &mut stats,
                        base,
                    );
                }
                at += len;
            }
            carry.body.extend_from_slice(&scratch[at..body_end]);
            carry.raw.extend_from_slice(&scratch[raw_start..filled]);
            if chunks.is_some_and(|d| d.is_done()) {
                return Step::End("stream ended".into());
            }
            Step::Continue
        }
    }
}

fn on_message(
    worker: &Worker,
    kind: Kind,
    json: &[u8],
    now: &mut Option<i64>,
    client: &mut ClientState,
    stats: &mut Stats,
    base: u64,
) {
    match kind {
        Kind::Change => {
            let Some(change) = worker.scanner.scan_change(json) else {
                stats.parse_errors += 1;
                return;
            };
            let now = *now.get_or_insert_with(now_us);
            client.record(&change, base);
            stats.delivered += 1;
            if stats.first_rx_us == 0 {
                stats.first_rx_us = now;
            }
            stats.last_rx_us = now;
            stats
                .commit_latency
                .saturating_record((now - change.committed_at_us).max(1) as u64);
            stats
                .sent_latency
                .saturating_record((now - change.sent_at_us).max(1) as u64);
        }
        Kind::Ready => client.ready = true,
        Kind::Reset => client.resets += 1,
        Kind::Error => client.errors += 1,
        Kind::Other => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(event_id: u64, row_id: u64) -> proto::Change {
        proto::Change {
            event_id,
            row_id,
            sent_at_us: 0,
            committed_at_us: 0,
        }
    }

    #[test]
    fn duplicates_reordering_and_foreign_rows_are_counted() {
        let mut client = ClientState::default();
        for (event, row) in [(11, 101), (12, 103), (12, 103), (10, 102), (13, 100)] {
            client.record(&change(event, row), 100);
        }
        assert_eq!(client.distinct, 3);
        assert_eq!(client.duplicates, 1);
        assert_eq!(client.out_of_order, 1);
        assert_eq!(client.unexpected, 1);
    }

    #[test]
    fn expected_rows_cover_the_committed_ranges_above_the_base() {
        let expected = Expected::new(&[(99, 101), (103, 103), (170, 171)], 100);
        assert_eq!(expected.count, 4);
        let bit = |row: u64| {
            let b = (row - 101) as usize;
            expected.bits[b / 64] & (1 << (b % 64)) != 0
        };
        assert!(bit(101) && bit(103) && bit(170) && bit(171));
        assert!(!bit(102) && !bit(169));
    }
}
