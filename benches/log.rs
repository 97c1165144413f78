//! The event log's hot paths: appending, finding "events after X", encoding an event,
//! and matching filters.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rowcast::event::{ChangeRecord, Event};
use rowcast::filter::{Catalog, StreamParams};
use rowcast::log::EventLog;
use serde_json::json;

fn record(id: i64) -> ChangeRecord {
    ChangeRecord {
        id,
        table: "orders".into(),
        op: "UPDATE".into(),
        row: Some(json!({
            "id": id, "customer_name": "Ada Lovelace", "product_name": "Analytical Engine manual",
            "status": "shipped", "updated_at": "2026-11-24T21:00:00.123456+00:00"
        })),
        old: Some(json!({
            "id": id, "customer_name": "Ada Lovelace", "product_name": "Analytical Engine manual",
            "status": "pending", "updated_at": "2026-11-24T20:59:00.123456+00:00"
        })),
        committed_at: "2026-11-24T21:00:00.123456Z".into(),
        committed_at_micros: 0,
    }
}

fn events(n: i64) -> Vec<Arc<Event>> {
    (1..=n)
        .map(|id| Arc::new(Event::from_record(record(id)).unwrap()))
        .collect()
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_append");
    let batch = events(1000);
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function("1000_events_into_65536_ring", |b| {
        let log = EventLog::new(65_536, 0);
        let next = std::cell::Cell::new(0i64);
        b.iter_batched(
            || {
                // Fresh, increasing ids each round so nothing is skipped as seen.
                (0..batch.len())
                    .map(|_| {
                        next.set(next.get() + 1);
                        Arc::new(Event::from_record(record(next.get())).unwrap())
                    })
                    .collect::<Vec<_>>()
            },
            |fresh| log.append(fresh),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn since(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_since");
    for size in [1_024u64, 65_536] {
        let log = EventLog::new(size as usize, 0);
        log.append(events(size as i64));
        group.bench_with_input(
            BenchmarkId::new("find_and_copy_10_after", size),
            &size,
            |b, &size| {
                let mut out = Vec::with_capacity(16);
                b.iter(|| {
                    out.clear();
                    log.read_after(black_box(size - 10), 64, |e| Some(Arc::clone(e)), &mut out);
                    black_box(out.len())
                })
            },
        );
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    group.bench_function("change_log_row_to_ws_and_sse_forms", |b| {
        b.iter(|| Event::from_record(black_box(record(42))).unwrap())
    });
    group.finish();
}

fn filters(c: &mut Criterion) {
    let catalog = Catalog::new([(
        "orders".to_owned(),
        [
            "id",
            "customer_name",
            "product_name",
            "status",
            "updated_at",
        ]
        .map(String::from)
        .to_vec(),
    )]);
    let event = Event::from_record(record(42)).unwrap();
    let mut group = c.benchmark_group("filter_match");
    for (name, query) in [
        ("none", ""),
        ("status_eq", "filter=status=eq.shipped"),
        (
            "id_gt_and_in",
            "filter=id=gt.10&filter=status=in.(pending,shipped)",
        ),
    ] {
        let params = StreamParams::parse(query, &catalog).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| params.selection.matches(black_box(&event)))
        });
    }
    group.finish();
}

criterion_group!(benches, append, since, encode, filters);
criterion_main!(benches);
