//! Fan-out of one event to 10 / 1,000 / 10,000 in-process subscribers: append to the
//! ring, wake the hub, and let every woken subscriber — a real `Session`, with history
//! in memory for its catch-up reader — take its next batch. No sockets: this is the
//! gateway's own cost per event, before any write.
//!
//! - `fanout_direct`: the subscribers are plain structs polled in a loop (wake-up
//!   permit taken with `now_or_never`), so the figure is hub + ring + filter alone.
//! - `fanout_tasks`: each subscriber is a tokio task on a current-thread runtime, so
//!   the figure adds waking and polling a task per subscriber.
//!
//! Selections: `all` (every subscriber gets the event), `filter_match` and
//! `filter_miss` (a `status=eq.…` filter that passes or rejects it: the hub files such
//! subscribers under the value, so a miss wakes nobody), and `other_table`
//! (subscribers of another table: not woken either).

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::FutureExt;
use rowcast::event::Event;
use rowcast::filter::{Catalog, StreamParams};
use rowcast::hub::Hub;
use rowcast::log::EventLog;
use rowcast::session::{CatchUp, Item, Session, Snapshots, MAX_BATCH};
use rowcast::testing::{self, History, Rows};
use serde_json::json;

const SIZES: [usize; 3] = [10, 1_000, 10_000];
/// Events built (untimed) ahead of each timed stretch.
const CHUNK: u64 = 1024;

const SELECTIONS: [(&str, &str); 4] = [
    ("all", "tables=orders"),
    ("filter_match", "tables=orders&filter=status=eq.shipped"),
    ("filter_miss", "tables=orders&filter=status=eq.pending"),
    ("other_table", "tables=audit"),
];

fn catalog() -> Catalog {
    let columns = |names: &[&str]| names.iter().map(|c| c.to_string()).collect::<Vec<_>>();
    Catalog::new([
        (
            "orders".to_owned(),
            columns(&[
                "id",
                "customer_name",
                "product_name",
                "status",
                "updated_at",
            ]),
        ),
        ("audit".to_owned(), columns(&["id", "status"])),
    ])
}

fn event(id: u64) -> Arc<Event> {
    testing::event(
        id as i64,
        "orders",
        "UPDATE",
        Some(json!({
            "id": id, "customer_name": "Ada Lovelace", "product_name": "Analytical Engine manual",
            "status": "shipped", "updated_at": "2026-11-24T21:00:00.123456+00:00"
        })),
        // The old row is shipped too: with live views an UPDATE out of `pending` is a
        // `leave` for `status=eq.pending`, and `filter_miss` must miss on both images.
        Some(json!({"id": id, "status": "shipped", "customer_name": "Ada"})),
    )
}

/// `n` sessions with this query, past their (empty) backlog and `ready`.
fn sessions(log: &Arc<EventLog>, hub: &Arc<Hub>, query: &str, n: usize) -> Vec<Session> {
    let params = StreamParams::parse(query, &catalog()).expect("valid stream parameters");
    let history: Arc<dyn CatchUp> = Arc::new(History::default());
    let rows: Arc<dyn Snapshots> = Arc::new(Rows::default());
    let mut out = Vec::new();
    (0..n)
        .map(|_| {
            let mut session = Session::open(
                Arc::clone(log),
                hub,
                Arc::clone(&history),
                Arc::clone(&rows),
                params.clone(),
            );
            out.clear();
            session
                .next_batch(&mut out)
                .now_or_never()
                .expect("a ring read never waits");
            session
        })
        .collect()
}

/// Takes a woken session's batch; returns how many items it would send.
fn read(session: &mut Session, out: &mut Vec<Item>) -> usize {
    out.clear();
    session
        .next_batch(out)
        .now_or_never()
        .expect("subscribers keep up with the ring");
    out.len()
}

/// Times `iters` events, building them in untimed chunks.
fn timed_events(iters: u64, next_id: &mut u64, mut fan_out: impl FnMut(Arc<Event>)) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(CHUNK);
        let events: Vec<Arc<Event>> = (0..n).map(|i| event(*next_id + i + 1)).collect();
        *next_id += n;
        let started = Instant::now();
        for e in events {
            fan_out(e);
        }
        total += started.elapsed();
        left -= n;
    }
    total
}

fn fanout_direct(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_direct");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    for (name, query) in SELECTIONS {
        for n in SIZES {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                let hub = Hub::new();
                let log = Arc::new(EventLog::new(65_536, 0));
                let mut subs = sessions(&log, &hub, query, n);
                let mut out = Vec::with_capacity(MAX_BATCH);
                let mut next_id = 0;
                // Subscribers of another table or another value are never woken, and a
                // gateway never polls a subscriber that was not woken: time append +
                // wake alone.
                let polled = matches!(name, "all" | "filter_match");
                if !polled {
                    hub.wake(&[event(u64::MAX / 2)]);
                    assert!(subs.iter().all(|s| s.wait().now_or_never().is_none()));
                }
                b.iter_custom(|iters| {
                    timed_events(iters, &mut next_id, |e| {
                        log.append([Arc::clone(&e)]);
                        hub.wake(std::slice::from_ref(&e));
                        let mut sent = 0;
                        for s in subs.iter_mut().filter(|_| polled) {
                            if s.wait().now_or_never().is_some() {
                                sent += read(s, &mut out);
                            }
                        }
                        black_box(sent);
                    })
                })
            });
        }
    }
    group.finish();
}

fn fanout_tasks(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout_tasks");
    group.sample_size(20);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    // `filter_miss` and `other_table` wake nobody; the direct group shows them.
    for (name, query) in &SELECTIONS[..2] {
        for n in SIZES {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_with_input(BenchmarkId::new(*name, n), &n, |b, &n| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                let local = tokio::task::LocalSet::new();
                let hub = Hub::new();
                let log = Arc::new(EventLog::new(65_536, 0));
                // Each task counts the wake-ups it served; the driver waits for all.
                let served = Rc::new(Cell::new(0u64));
                let all_served = Rc::new(tokio::sync::Notify::new());
                let target = Rc::new(Cell::new(0u64));
                for mut s in sessions(&log, &hub, query, n) {
                    let (served, all_served, target) = (
                        Rc::clone(&served),
                        Rc::clone(&all_served),
                        Rc::clone(&target),
                    );
                    local.spawn_local(async move {
                        let mut out = Vec::with_capacity(MAX_BATCH);
                        loop {
                            s.wait().await;
                            black_box(read(&mut s, &mut out));
                            served.set(served.get() + 1);
                            if served.get() == target.get() {
                                all_served.notify_one();
                            }
                        }
                    });
                }
                let mut next_id = 0u64;
                b.iter_custom(|iters| {
                    local.block_on(&runtime, async {
                        let mut total = Duration::ZERO;
                        let mut left = iters;
                        while left > 0 {
                            let k = left.min(CHUNK);
                            let events: Vec<Arc<Event>> =
                                (0..k).map(|i| event(next_id + i + 1)).collect();
                            next_id += k;
                            let started = Instant::now();
                            for e in events {
                                log.append([Arc::clone(&e)]);
                                target.set(target.get() + n as u64);
                                hub.wake(std::slice::from_ref(&e));
                                // The woken tasks run while the driver waits here.
                                all_served.notified().await;
                            }
                            total += started.elapsed();
                            left -= k;
                        }
                        total
                    })
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, fanout_direct, fanout_tasks);
criterion_main!(benches);
