//! WAL capture (`--capture wal`) end to end on a real PostgreSQL: the same events as
//! trigger mode, exactly once across crashes and takeovers, schema changes mid-stream.

mod support;

use std::sync::Arc;
use std::time::Duration;

use rowcast::pg::capture::wal::Capturer;
use rowcast::pg::capture::{switch, CaptureMode, CaptureStatus};
use support::*;
use tokio_util::sync::CancellationToken;

/// One capturer replica, in-process, on its own slot (slots are per cluster, and every
/// test has its own database).
struct Replica {
    status: Arc<CaptureStatus>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    fn start(db: &TestDb) -> Replica {
        let status = Arc::new(CaptureStatus::default());
        let capturer = Capturer {
            target: db.target.clone(),
            capture: db.target.clone(),
            slot: db.name.clone(),
            status: Arc::clone(&status),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(capturer.switch_and_run(stop.clone()));
        Replica { status, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Waits until the database is in WAL mode.
async fn wal_mode(db: &TestDb) {
    let client = db.client().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while switch::mode(&client).await.unwrap() != CaptureMode::Wal {
        assert!(tokio::time::Instant::now() < deadline, "no switch to WAL mode");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the capturer has applied everything committed so far: the slot's
/// confirmed position (raised only once what precedes it is applied) passes the WAL
/// position of now.
async fn applied(db: &TestDb) {
    let client = db.client().await;
    let target: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let done: bool = client
            .query_one(
                "SELECT coalesce(bool_or(confirmed_flush_lsn >= $1::text::pg_lsn), false)
                 FROM pg_replication_slots WHERE slot_name = $2",
                &[&target, &db.name],
            )
            .await
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "capture stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `table`, `op`, `row` and `old` of every change_log row after `after`, in id order,
/// JSON as PostgreSQL prints it; `orders.updated_at` is left out (a trigger sets it to
/// the writer's clock).
async fn changes_after(db: &TestDb, after: i64) -> Vec<(String, String, Option<String>, Option<String>)> {
    db.client()
        .await
        .query(
            "SELECT \"table\", op, (row - 'updated_at')::text, (old - 'updated_at')::text
             FROM realtime.change_log
             WHERE id > $1 ORDER BY id",
            &[&after],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

async fn head(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT coalesce(max(id), 0) FROM realtime.change_log", &[])
        .await
        .unwrap()
        .get(0)
}

const SCHEMA: &str = "
    CREATE SCHEMA shop;
    CREATE TYPE shop.mood AS ENUM ('calm', 'busy');
    CREATE TABLE shop.items (
        id integer PRIMARY KEY, price numeric(12,4), weight float8, ratio real,
        tags text[], meta jsonb, doc json, flag boolean, born timestamptz, day date,
        span interval, mood shop.mood, raw bytea, big bigint, note text);
    CREATE TABLE notes (id integer PRIMARY KEY, body text);
    SELECT realtime.track('shop.items');
    SELECT realtime.track('notes');";

/// Every kind of change, several tables, a schema outside public, TOAST.
const WORKLOAD: &[&str] = &[
    "INSERT INTO orders (id, customer_name, product_name, updated_at)
        VALUES (1, 'Ada', 'Engine', '2024-05-06 07:00:00+00'), (2, 'Grace', 'Compiler', '2024-05-06 07:00:01+00')",
    "UPDATE orders SET status = 'shipped', updated_at = '2024-05-06 07:08:09.123456+00' WHERE id = 1",
    "DELETE FROM orders WHERE id = 2",
    "INSERT INTO shop.items VALUES (1, 1.1000, 0.1, 3.4028235e38, '{a,\"b c\",NULL}', '{\"n\": 1.50, \"big\": 123456789012345678901234567890}',
        '{\"k\" : [1, 2.0]}', true, '2024-01-02 03:04:05.678+00', '2024-02-29', '1 year 2 mons 3 days 04:05:06.5',
        'calm', '\\x00ff', 9007199254740993,
        (SELECT string_agg(md5(i::text), '') FROM generate_series(1, 5000) i))",
    "UPDATE shop.items SET price = 2.25, weight = 1e-300 WHERE id = 1",
    "UPDATE shop.items SET note = 'short now', flag = NULL WHERE id = 1",
    "BEGIN; INSERT INTO notes VALUES (1, 'one'), (2, NULL); UPDATE orders SET status = 'delivered', updated_at = '2024-05-07 00:00:00+00' WHERE id = 1; INSERT INTO shop.items (id, weight) VALUES (2, -0.0); COMMIT",
    "TRUNCATE notes",
    "INSERT INTO notes VALUES (3, 'after truncate')",
    "DELETE FROM shop.items WHERE id = 2",
];

async fn run_workload(db: &TestDb) {
    let client = db.client().await;
    for statement in WORKLOAD {
        client.batch_execute(statement).await.unwrap();
    }
}

#[tokio::test]
async fn wal_mode_records_the_same_changes_as_trigger_mode_byte_for_byte() {
    let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("rowcast=debug").try_init();
    let by_trigger = TestDb::new();
    by_trigger.client().await.batch_execute(SCHEMA).await.unwrap();
    let start = head(&by_trigger).await;
    run_workload(&by_trigger).await;
    let expected = changes_after(&by_trigger, start).await;
    assert!(expected.len() >= 14, "the workload records changes: {expected:?}");

    let by_wal = TestDb::new();
    by_wal.client().await.batch_execute(SCHEMA).await.unwrap();
    let replica = Replica::start(&by_wal);
    wal_mode(&by_wal).await;
    let start = head(&by_wal).await;
    run_workload(&by_wal).await;
    applied(&by_wal).await;
    let got = changes_after(&by_wal, start).await;
    replica.stop().await;

    assert_eq!(got.len(), expected.len(), "same number of changes: {got:#?}");
    for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, expected, "change {i} differs");
    }
}
