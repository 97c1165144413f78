//! WAL capture (`--capture wal`) end to end on a real PostgreSQL: the same events as
//! trigger mode, exactly once across crashes and takeovers, schema changes mid-stream.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rowcast::pg::capture::{switch, CaptureMode};
use support::wal::{applied, wal_mode, Replica};
use support::*;

/// `table`, `op`, `row` and `old` of every change_log row after `after`, in id order,
/// JSON as PostgreSQL prints it; `orders.updated_at` is left out (a trigger sets it to
/// the writer's clock).
async fn changes_after(
    db: &TestDb,
    after: i64,
) -> Vec<(String, String, Option<String>, Option<String>)> {
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
    SELECT realtime.track('notes');
    -- Wider than one jsonb_build_object call takes, with a quote in a column name.
    DO $$ BEGIN
        EXECUTE 'CREATE TABLE wide (id integer PRIMARY KEY, \"it''s\" text, '
            || (SELECT string_agg(format('c%s int', g), ', ') FROM generate_series(1, 60) g) || ')';
    END $$;
    SELECT realtime.track('wide');";

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
    "INSERT INTO wide (id, \"it's\", c1, c50, c51, c60) VALUES (1, 'quoted', 1, 50, 51, 60)",
    "UPDATE wide SET c30 = 30, c55 = 55 WHERE id = 1",
];

/// Runs `workload` after `schema` on a trigger-mode database and on a WAL-mode one;
/// asserts both recorded the same changes, byte for byte.
async fn same_in_both_modes(schema: &str, workload: &[&str]) {
    let by_trigger = TestDb::new();
    by_trigger
        .client()
        .await
        .batch_execute(schema)
        .await
        .unwrap();
    let start = head(&by_trigger).await;
    run(&by_trigger, workload).await;
    let expected = changes_after(&by_trigger, start).await;

    let by_wal = TestDb::new();
    by_wal.client().await.batch_execute(schema).await.unwrap();
    let replica = Replica::start(&by_wal);
    wal_mode(&by_wal).await;
    let start = head(&by_wal).await;
    run(&by_wal, workload).await;
    applied(&by_wal).await;
    let got = changes_after(&by_wal, start).await;
    replica.stop().await;

    assert_eq!(
        got.len(),
        expected.len(),
        "same number of changes: {got:#?}"
    );
    for (i, (got, expected)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(got, expected, "change {i} differs");
    }
}

async fn run(db: &TestDb, workload: &[&str]) {
    let client = db.client().await;
    for statement in workload {
        client.batch_execute(statement).await.unwrap();
    }
}

#[tokio::test]
async fn wal_mode_records_the_same_changes_as_trigger_mode_byte_for_byte() {
    same_in_both_modes(SCHEMA, WORKLOAD).await;
}

#[tokio::test]
async fn columns_added_and_dropped_mid_stream_give_later_rows_the_new_shape() {
    same_in_both_modes(
        "SELECT 1",
        &[
            "INSERT INTO orders (id, customer_name, product_name) VALUES (1, 'a', 'before')",
            "ALTER TABLE orders ADD COLUMN note text DEFAULT 'n/a'",
            "INSERT INTO orders (id, customer_name, product_name, note) VALUES (2, 'b', 'added', 'hello')",
            "UPDATE orders SET status = 'shipped' WHERE id = 1",
            "ALTER TABLE orders ADD COLUMN amount numeric(8,2)",
            "UPDATE orders SET amount = 12.50 WHERE id = 2",
            "ALTER TABLE orders DROP COLUMN note",
            "INSERT INTO orders (id, customer_name, product_name, amount) VALUES (3, 'c', 'dropped', 1.10)",
            "UPDATE orders SET status = 'delivered' WHERE id IN (1, 2)",
            "DELETE FROM orders WHERE id = 3",
        ],
    )
    .await;
}

/// Whether the gateway process reports itself as the capturer.
async fn is_capturer(gateway: &GatewayProcess) -> bool {
    http(gateway.addr, "GET", "/metrics", &[], None)
        .await
        .body
        .lines()
        .any(|line| line == "rowcast_capturer 1")
}

/// Inserts `count` orders one transaction each (about one in eight rolled back), with
/// pauses before COMMIT; returns the markers of the committed ones.
async fn writer(db: TestDb, writer: usize, count: usize) -> Vec<String> {
    let mut rng = fastrand::Rng::with_seed(writer as u64);
    let mut client = db.client().await;
    let mut committed = Vec::new();
    for t in 0..count {
        let marker = format!("w{writer}-t{t}");
        let tx = client.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO orders (customer_name, product_name) VALUES ('k', $1)",
            &[&marker],
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_micros(rng.u64(0..3000))).await;
        if rng.u8(0..8) == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            committed.push(marker);
        }
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn another_replica_takes_over_within_5s_of_the_capturer_being_killed() {
    let db = TestDb::new();
    let args = ["--capture", "wal", "--capture-slot", db.name.as_str()];
    let mut first = GatewayProcess::start(&db.url, &args).await;
    wal_mode(&db).await;
    let second = GatewayProcess::start(&db.url, &args).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !is_capturer(&first).await {
        assert!(tokio::time::Instant::now() < deadline, "no capturer");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!is_capturer(&second).await, "two capturers at once");

    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(writer(db.clone(), w, 150)))
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.signal("KILL");
    let killed = tokio::time::Instant::now();
    first.wait_exit(WAIT).await;
    while !is_capturer(&second).await {
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "no takeover within 5 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    let mut committed = Vec::new();
    for task in writers {
        committed.extend(task.await.unwrap());
    }
    applied(&db).await;

    let client = db.client().await;
    let captured: Vec<String> = client
        .query(
            "SELECT row->>'product_name' FROM realtime.change_log WHERE op = 'INSERT' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut sorted = captured.clone();
    sorted.sort();
    committed.sort();
    assert_eq!(sorted, committed, "every committed insert exactly once");
    // Each writer's commits are captured in the order it made them.
    for w in 0..8 {
        let prefix = format!("w{w}-t");
        let order: Vec<usize> = captured
            .iter()
            .filter_map(|m| m.strip_prefix(&prefix)?.parse().ok())
            .collect();
        assert!(
            order.windows(2).all(|p| p[0] < p[1]),
            "writer {w} out of order"
        );
    }
    eprintln!("takeover after SIGKILL: {takeover:?}");
}

/// Runs `rowcast capture <mode>` against the test database; asserts it succeeds.
async fn switch_with_the_cli(db: &TestDb, mode: &str) {
    let output = tokio::process::Command::new(binary())
        .args([
            "capture",
            mode,
            "--database-url",
            &db.url,
            "--capture-slot",
            &db.name,
        ])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "rowcast capture {mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Until `stop`, each transaction inserts a row and updates the writer's previous row:
/// row histories that only replay if every change is there once and in commit order.
async fn chain_writer(db: TestDb, writer: usize, stop: Arc<AtomicBool>) -> usize {
    let mut rng = fastrand::Rng::with_seed(100 + writer as u64);
    let mut client = db.client().await;
    let mut previous: Option<i32> = None;
    let mut committed = 0;
    for t in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let tx = client.transaction().await.unwrap();
        let id: i32 = tx
            .query_one(
                "INSERT INTO orders (customer_name, product_name) VALUES ('new', $1) RETURNING id",
                &[&format!("w{writer}-t{t}")],
            )
            .await
            .unwrap()
            .get(0);
        if let Some(previous) = previous {
            tx.execute(
                "UPDATE orders SET customer_name = $1 WHERE id = $2",
                &[&format!("w{writer}-t{t}"), &previous],
            )
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_micros(rng.u64(0..2000))).await;
        if rng.u8(0..8) == 0 {
            tx.rollback().await.unwrap();
        } else {
            tx.commit().await.unwrap();
            previous = Some(id);
            committed += 1;
        }
    }
    committed
}

/// Replays change_log by primary key, checking every row's history chains (an UPDATE's
/// `old` is the row's previous state), and compares the result with the table.
async fn replay_equals_table(db: &TestDb) {
    let client = db.client().await;
    let mut rows: std::collections::BTreeMap<i64, serde_json::Value> = Default::default();
    for change in client
        .query(
            "SELECT op, row, old FROM realtime.change_log WHERE \"table\" = 'orders' ORDER BY id",
            &[],
        )
        .await
        .unwrap()
    {
        let op: String = change.get(0);
        let row: serde_json::Value = change.get(1);
        let id = row["id"].as_i64().unwrap();
        match op.as_str() {
            "INSERT" => assert!(rows.insert(id, row).is_none(), "row {id} inserted twice"),
            "UPDATE" => {
                let old: serde_json::Value = change.get(2);
                assert_eq!(
                    rows.insert(id, row),
                    Some(old),
                    "update of row {id} out of order"
                );
            }
            "DELETE" => assert_eq!(rows.remove(&id), Some(row), "delete of row {id}"),
            other => panic!("unexpected {other}"),
        }
    }
    let table: std::collections::BTreeMap<i64, serde_json::Value> = client
        .query("SELECT id::int8, to_jsonb(o) FROM orders o", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(rows, table, "replaying change_log gives the table");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switching_modes_under_8_writers_loses_and_duplicates_nothing() {
    let db = TestDb::new();
    let replica = Replica::standby(&db);
    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|w| tokio::spawn(chain_writer(db.clone(), w, Arc::clone(&stop))))
        .collect();
    for mode in ["wal", "trigger", "wal"] {
        tokio::time::sleep(Duration::from_millis(300)).await;
        switch_with_the_cli(&db, mode).await;
        assert!(
            writers.iter().all(|w| !w.is_finished()),
            "the writers ran through the switch to {mode}"
        );
    }
    wal_mode(&db).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for task in writers {
        committed += task.await.unwrap();
    }
    applied(&db).await;
    replica.stop().await;

    let inserts: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM realtime.change_log WHERE op = 'INSERT'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(inserts as usize, committed, "every committed insert once");
    replay_equals_table(&db).await;
}

/// A gateway configuration for `db` with WAL capture on its own slot.
fn wal_config(db: &TestDb) -> rowcast::config::Config {
    rowcast::config::Config {
        capture: rowcast::pg::capture::CaptureMode::Wal,
        capture_slot: db.name.clone(),
        ..db.config()
    }
}

/// Waits until `/readyz` answers `status`; returns the body.
async fn readyz_becomes(server: &TestServer, status: u16) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = http(server.addr, "GET", "/readyz", &[], None).await;
        if response.status == status {
            return response.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {} ({})",
            response.status,
            response.body
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_dropped_by_hand_is_refused_loudly_until_recapture_resets_clients_behind_it() {
    let db = TestDb::new();
    let server = TestServer::start(wal_config(&db)).await;
    wal_mode(&db).await;
    let client = db.client().await;
    insert_order(&client, "before", "drop").await;
    applied(&db).await;
    let head_before = head(&db).await;

    client
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&db.name],
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while client
        .execute("SELECT pg_drop_replication_slot($1)", &[&db.name])
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "slot stays active");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reason = readyz_becomes(&server, 503).await;
    assert!(reason.contains("does not exist"), "{reason}");
    assert!(reason.contains(&db.name), "{reason}");
    let metrics = http(server.addr, "GET", "/metrics", &[], None).await.body;
    assert!(metrics.contains("rowcast_capture_refused 1"), "{metrics}");

    switch_with_the_cli(&db, "wal").await;
    readyz_becomes(&server, 200).await;
    let pruned = rowcast::pg::changes::pruned_upto(&client).await.unwrap();
    assert!(
        pruned > head_before as u64,
        "positions up to the old head ({head_before}) get reset, horizon {pruned}"
    );
    insert_order(&client, "after", "recapture").await;
    applied(&db).await;
    let last: String = client
        .query_one(
            "SELECT row->>'customer_name' FROM realtime.change_log ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(last, "after", "capture resumed on the new slot");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_200000_row_update_is_captured_in_order_with_bounded_memory() {
    let db = TestDb::new();
    let args = [
        "--capture",
        "wal",
        "--capture-slot",
        db.name.as_str(),
        "--ring-capacity",
        "1024",
    ];
    let gateway = GatewayProcess::start(&db.url, &args).await;
    wal_mode(&db).await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO orders (customer_name, product_name)
             SELECT 'customer ' || n, 'product ' || n FROM generate_series(1, 200000) n",
        )
        .await
        .unwrap();
    applied(&db).await;
    let baseline = gateway.rss_kib();
    let before = head(&db).await;
    client
        .batch_execute("UPDATE orders SET status = 'shipped'")
        .await
        .unwrap();
    // Peak resident memory while the capturer works through the transaction.
    let pid = gateway.child.id();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = Arc::clone(&peak);
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    applied(&db).await;
    sampler.abort();
    let peak_kib = peak.load(Ordering::Relaxed);
    let (count, first, last, updates): (i64, i64, i64, i64) = {
        let row = client
            .query_one(
                "SELECT count(*), min(id), max(id), count(*) FILTER (WHERE op = 'UPDATE')
                 FROM realtime.change_log WHERE id > $1",
                &[&before],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    };
    assert_eq!((count, updates), (200_000, 200_000));
    assert_eq!(last - first + 1, 200_000, "ids contiguous");
    eprintln!("capturer RSS: {baseline} KiB before the update, peak {peak_kib} KiB during it");
    // Held whole, 200,000 old and new rows would take well over 100 MiB.
    assert!(
        peak_kib < baseline + 64 * 1024,
        "peak {peak_kib} KiB, baseline {baseline} KiB"
    );
}

/// Resident memory of process `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_without_logical_decoding_is_refused_loudly_and_triggers_keep_capturing() {
    let cluster = Cluster::private_without_logical_decoding();
    let db = cluster.database();
    let server = TestServer::start(wal_config(&db)).await;
    let reason = readyz_becomes(&server, 503).await;
    assert!(reason.contains("wal_level=logical"), "{reason}");
    assert!(reason.contains("wal_level=replica"), "{reason}");
    let metrics = http(server.addr, "GET", "/metrics", &[], None).await.body;
    assert!(metrics.contains("rowcast_capture_refused 1"), "{metrics}");

    let client = db.client().await;
    insert_order(&client, "still", "captured").await;
    assert_eq!(head(&db).await, 1, "the database stayed in trigger mode");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tracked_table_missing_from_the_publication_is_refused_until_tracked_again() {
    let db = TestDb::new();
    let server = TestServer::start(wal_config(&db)).await;
    let client = db.client().await;
    insert_order(&client, "before", "the gap").await;
    server.caught_up(&db).await;
    let head_before = head(&db).await;
    client
        .batch_execute("ALTER PUBLICATION rowcast DROP TABLE orders")
        .await
        .unwrap();
    let reason = readyz_becomes(&server, 503).await;
    assert!(
        reason.contains("orders is not in publication rowcast"),
        "{reason}"
    );
    client
        .batch_execute("SELECT realtime.track('orders')")
        .await
        .unwrap();
    readyz_becomes(&server, 200).await;
    let pruned = rowcast::pg::changes::pruned_upto(&client).await.unwrap();
    assert!(
        pruned > head_before as u64,
        "positions up to the gap ({head_before}) get reset, horizon {pruned}"
    );
    insert_order(&client, "published", "again").await;
    server.caught_up(&db).await;
    assert!(server.gateway.log.head() > pruned, "captured again");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_table_tracked_while_the_database_switches_to_wal_is_published() {
    let db = TestDb::new();
    db.client()
        .await
        .batch_execute("CREATE TABLE invoices (id serial PRIMARY KEY, total int)")
        .await
        .unwrap();
    // Hold the switch inside its transaction: it has listed the tracked tables and
    // waits for `orders` (a lock taken without a transaction id, so the slot's creation
    // does not wait for it).
    let mut blocker = db.client().await;
    let hold = blocker.transaction().await.unwrap();
    hold.batch_execute("LOCK TABLE orders IN ACCESS SHARE MODE")
        .await
        .unwrap();
    let capturer = Replica::start(&db);
    let watcher = db.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let waiting: bool = watcher
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                WHERE wait_event_type = 'Lock' AND query LIKE '%switch_to_wal%')",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the switch never waited"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // `track` meanwhile: it must end up as the switch leaves the database.
    let tracker = db.client().await;
    let track = tokio::spawn(async move {
        tracker
            .batch_execute("SELECT realtime.track('invoices')")
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    hold.commit().await.unwrap();
    track.await.unwrap();
    wal_mode(&db).await;

    let client = db.client().await;
    let published: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication_tables
                            WHERE pubname = 'rowcast' AND tablename = 'invoices')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let triggers: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'invoices'::regclass
             AND tgname LIKE 'rowcast_capture%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        published,
        "a table tracked during the switch is in the publication"
    );
    assert_eq!(triggers, 0, "and has no capture triggers left");
    assert!(
        capturer.status.refusal().is_none(),
        "capture is not refused"
    );

    client
        .batch_execute("INSERT INTO invoices (total) VALUES (42)")
        .await
        .unwrap();
    applied(&db).await;
    let rows = changes_after(&db, 0).await;
    assert_eq!(
        rows.iter()
            .filter(|(table, ..)| table == "invoices")
            .count(),
        1,
        "captured once: {rows:?}"
    );
    capturer.stop().await;
}

/// Waits until `query` (one boolean) is true, for at most 60 s.
async fn until_true(client: &tokio_postgres::Client, what: &str, query: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !client
        .query_one(query, &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_starting_while_another_creates_the_slot_waits_for_its_consistent_point() {
    let db = TestDb::new();
    // A transaction with an id keeps the first replica's slot from reaching its
    // consistent point: it stays listed but decodes nothing committed before then.
    let mut blocker = db.client().await;
    let running = blocker.transaction().await.unwrap();
    running
        .batch_execute("SELECT pg_current_xact_id()")
        .await
        .unwrap();
    let first = Replica::start(&db);
    let watcher = db.client().await;
    until_true(
        &watcher,
        "the slot is being created",
        &format!(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = '{}')",
            db.name
        ),
    )
    .await;
    // The second replica finds the slot listed. Switching now would drop the triggers
    // before the slot decodes anything: the insert below would be captured by neither.
    let second = Replica::start(&db);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let client = db.client().await;
    assert_eq!(
        switch::mode(&client).await.unwrap(),
        CaptureMode::Trigger,
        "nobody switched before the slot's consistent point"
    );
    let id = insert_order(&client, "between", "slot and switch").await;
    running.commit().await.unwrap();
    wal_mode(&db).await;
    insert_order(&client, "after", "the switch").await;
    applied(&db).await;
    let rows = changes_after(&db, 0).await;
    let customers: Vec<String> = rows
        .iter()
        .filter_map(|(_, _, row, _)| row.as_deref())
        .map(|row| serde_json::from_str::<serde_json::Value>(row).unwrap())
        .map(|row| row["customer_name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        customers,
        ["between", "after"],
        "each insert captured once (order {id})"
    );
    assert!(first.status.refusal().is_none() && second.status.refusal().is_none());
    first.stop().await;
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_role_without_replication_is_refused_loudly() {
    let db = TestDb::new();
    let role = format!("norepl_{}", db.name);
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN NOREPLICATION;
             GRANT ALL ON SCHEMA realtime, public TO {role};
             GRANT ALL ON ALL TABLES IN SCHEMA realtime, public TO {role};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA realtime, public TO {role};
             SELECT realtime.ensure_publication();"
        ))
        .await
        .unwrap();
    let url = db.url.replacen("://rowcast@", &format!("://{role}@"), 1);
    let config = rowcast::config::Config {
        database: rowcast::config::Database::Target(Box::new(
            rowcast::pg::DbTarget::from_url(&url).unwrap(),
        )),
        migrate: false,
        ..wal_config(&db)
    };
    let server = TestServer::start(config).await;
    let reason = readyz_becomes(&server, 503).await;
    assert!(reason.contains("REPLICATION"), "{reason}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn switching_back_to_triggers_with_no_capturer_running_drains_the_slot_itself() {
    let db = TestDb::new();
    let replica = Replica::start(&db);
    wal_mode(&db).await;
    replica.stop().await;
    let client = db.client().await;
    for n in 0..20 {
        insert_order(&client, "while no capturer runs", &format!("p{n}")).await;
    }
    assert_eq!(head(&db).await, 0, "nothing captured yet");
    switch_with_the_cli(&db, "trigger").await;
    insert_order(&client, "by the trigger", "after").await;

    let captured: Vec<String> = client
        .query(
            "SELECT row->>'customer_name' FROM realtime.change_log ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(captured.len(), 21, "{captured:?}");
    assert!(captured[..20].iter().all(|c| c == "while no capturer runs"));
    assert_eq!(captured[20], "by the trigger");
    let slots: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
            &[&db.name],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the slot is dropped, holding no WAL");
}

/// The ids of `n` change events read from `sse`, checked to be in increasing order.
async fn ids_in_order(sse: &mut SseClient, n: usize) -> Vec<u64> {
    let ids: Vec<u64> = sse
        .changes(n)
        .await
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "out of order: {ids:?}");
    ids
}

/// Events a replica received by `path`.
fn received(server: &TestServer, path: rowcast::metrics::Path) -> u64 {
    server.gateway.metrics.received(path).get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn doorbell_payloads_carry_events_and_whatever_they_cannot_carry_is_read() {
    use rowcast::metrics::Path;
    let db = TestDb::new();
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE notes (id serial PRIMARY KEY, body text); SELECT realtime.track('notes')",
        )
        .await
        .unwrap();
    let a = TestServer::start(wal_config(&db)).await;
    let b = TestServer::start(wal_config(&db)).await;
    let client = db.client().await;
    let mut clients = vec![
        SseClient::connect(a.addr, "", &[]).await,
        SseClient::connect(b.addr, "", &[]).await,
    ];
    for sse in &mut clients {
        sse.until_ready().await;
    }
    // Small commits: their events come in the doorbell, on both replicas.
    let reads = [&a, &b].map(|s| s.gateway.metrics.catchup_queries.get());
    for k in 0..20 {
        insert_order(&client, &format!("small {k}"), "p").await;
    }
    let mut expected: Vec<u64> = Vec::new();
    let first = ids_in_order(&mut clients[0], 20).await;
    assert_eq!(ids_in_order(&mut clients[1], 20).await, first);
    expected.extend(&first);
    for server in [&a, &b] {
        assert!(
            received(server, Path::Payload) >= 18,
            "payload path unused: {} by payload, {} by read",
            received(server, Path::Payload),
            received(server, Path::Read)
        );
    }
    let reads_after = [&a, &b].map(|s| s.gateway.metrics.catchup_queries.get());
    assert!(
        reads_after[0] - reads[0] < 10 && reads_after[1] - reads[1] < 10,
        "20 commits cost {reads:?} → {reads_after:?} reads"
    );
    // A row too large for a NOTIFY payload: read.
    let read_before = received(&b, Path::Read);
    client
        .batch_execute("INSERT INTO notes (body) VALUES (repeat('x', 9000))")
        .await
        .unwrap();
    let big = ids_in_order(&mut clients[1], 1).await;
    assert_eq!(ids_in_order(&mut clients[0], 1).await, big);
    expected.extend(&big);
    assert!(
        received(&b, Path::Read) > read_before,
        "the large row was not read"
    );
    // Ids drawn and never used (a gap the payload's `after` explains): still payloads.
    let payload_before = received(&b, Path::Payload);
    client
        .batch_execute("SELECT nextval('realtime.change_log_id_seq') FROM generate_series(1, 5)")
        .await
        .unwrap();
    insert_order(&client, "after unused ids", "p").await;
    let after_unused = ids_in_order(&mut clients[1], 1).await;
    assert_eq!(ids_in_order(&mut clients[0], 1).await, after_unused);
    expected.extend(&after_unused);
    assert!(
        received(&b, Path::Payload) > payload_before,
        "a known gap forced a read"
    );
    // A row no payload announced (written behind the capturer's back, silently): the
    // next payload's `after` is past the replicas' head, so they read both.
    let read_before = received(&b, Path::Read);
    client
        .batch_execute(
            "BEGIN; SELECT pg_advisory_xact_lock(32199620637860724);
             INSERT INTO realtime.change_log (id, \"table\", op, row, committed_at)
                 VALUES (nextval('realtime.change_log_id_seq'), 'orders', 'INSERT', '{\"id\": -1, \"customer_name\": \"silent\"}', now());
             COMMIT",
        )
        .await
        .unwrap();
    insert_order(&client, "after the silent row", "p").await;
    let both = ids_in_order(&mut clients[1], 2).await;
    assert_eq!(ids_in_order(&mut clients[0], 2).await, both);
    expected.extend(&both);
    assert!(
        received(&b, Path::Read) > read_before,
        "the unannounced row was not read"
    );
    // A replica that joins late starts from the head and follows payloads from there;
    // a client resuming from the start on it gets everything once, in order.
    let c = TestServer::start(wal_config(&db)).await;
    let mut late = SseClient::connect(c.addr, "", &[("Last-Event-ID", "0")]).await;
    let (replayed, _) = late.until_ready().await;
    let replayed: Vec<u64> = replayed
        .iter()
        .filter(|e| e.event.as_deref() == Some("change"))
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert_eq!(replayed, expected);
    insert_order(&client, "last", "p").await;
    let last = ids_in_order(&mut late, 1).await;
    assert_eq!(ids_in_order(&mut clients[0], 1).await, last);
    assert_eq!(ids_in_order(&mut clients[1], 1).await, last);
}
