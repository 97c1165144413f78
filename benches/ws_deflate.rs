//! permessage-deflate's cost and gain per event: compressing an event's WebSocket
//! frame once (what the first compressing subscriber pays; every other one writes the
//! same bytes), for the orders row of the other benches and for a row with an 8 KiB
//! text column. Before timing, prints each event's bytes on the wire, plain and
//! compressed.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use rowcast::event::Event;
use rowcast::http::ws::frame::compressed_text;
use rowcast::testing;
use serde_json::{json, Value};

/// The orders UPDATE of `benches/log.rs` and `benches/fanout.rs`.
fn orders_row() -> (Option<Value>, Option<Value>) {
    (
        Some(json!({
            "id": 7, "customer_name": "Ada Lovelace", "product_name": "Analytical Engine manual",
            "status": "shipped", "updated_at": "2026-11-24T21:00:00.123456+00:00"
        })),
        Some(json!({
            "id": 7, "customer_name": "Ada Lovelace", "product_name": "Analytical Engine manual",
            "status": "pending", "updated_at": "2026-11-24T20:59:00.123456+00:00"
        })),
    )
}

/// An INSERT whose `body` is 8 KiB of English-like text (words drawn from a small
/// vocabulary by a fixed generator, so runs agree).
fn doc_row() -> (Option<Value>, Option<Value>) {
    const WORDS: [&str; 24] = [
        "the",
        "order",
        "was",
        "shipped",
        "to",
        "a",
        "customer",
        "in",
        "Lisbon",
        "after",
        "payment",
        "cleared",
        "and",
        "stock",
        "arrived",
        "from",
        "the",
        "warehouse",
        "late",
        "on",
        "Tuesday",
        "with",
        "two",
        "parcels",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut body = String::new();
    while body.len() < 8 * 1024 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        body.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        body.push(' ');
    }
    body.truncate(8 * 1024);
    (
        Some(json!({"id": 7, "title": "Delivery notes", "body": body})),
        None,
    )
}

fn event(table: &str, op: &str, (row, old): (Option<Value>, Option<Value>)) -> Event {
    Event::from_record(testing::record(7, table, op, row, old)).expect("a valid record")
}

fn bench(c: &mut Criterion) {
    let cases = [
        ("orders_update", event("orders", "UPDATE", orders_row())),
        ("doc_insert_8kib", event("docs", "INSERT", doc_row())),
    ];
    for (name, event) in &cases {
        let plain = event.ws_frame(None);
        let deflated = compressed_text(plain.payload(), 1).expect("deflate shrinks it");
        println!(
            "{name}: payload {} B; frame on the wire {} B plain, {} B compressed ({:.0}%); \
             with --ws-compress-min 512: {}",
            plain.payload().len(),
            plain.wire_len(),
            deflated.wire_len(),
            100.0 * deflated.wire_len() as f64 / plain.wire_len() as f64,
            if event.ws_frame(Some(512)).compressed() {
                "compressed"
            } else {
                "plain"
            },
        );
    }
    let mut group = c.benchmark_group("ws_deflate_once");
    for (name, event) in &cases {
        let text = event.ws_frame(None).payload().clone();
        group.bench_function(*name, |b| {
            b.iter_batched(
                || text.clone(),
                |text| black_box(compressed_text(&text, 1)),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
