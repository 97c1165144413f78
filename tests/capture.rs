//! Change capture end to end: triggers → change_log → source → event log, on a real
//! PostgreSQL, under concurrency, restarts and outages.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rowcast::event::{Event, Op};
use rowcast::hub::Hub;
use rowcast::log::EventLog;
use rowcast::metrics::Metrics;
use rowcast::pg::capture::CaptureMode;
use rowcast::pg::source::{Source, SourceMode, SourceStatus};
use rowcast::pg::{changes, migrate, DbTarget};
use serde_json::Value;
use support::wal;
use support::*;
use tokio_util::sync::CancellationToken;

/// A source reading into its own log, as the gateway runs it.
struct Reader {
    start: u64,
    log: Arc<EventLog>,
    status: Arc<SourceStatus>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Reader {
    fn start(target: &DbTarget, mode: SourceMode, head: u64) -> Reader {
        let log = Arc::new(EventLog::new(1 << 20, head));
        let status = SourceStatus::new(Default::default());
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let source = Source {
            target: target.clone(),
            doorbell: Default::default(),
            relay: None,
            mode,
            poll_interval: Duration::from_millis(50),
            coalesce: Duration::from_millis(2),
            log: Arc::clone(&log),
            hub: Hub::new(),
            status: Arc::clone(&status),
            metrics: Arc::clone(&metrics),
        };
        let task = tokio::spawn(source.run(stop.clone()));
        Reader {
            start: head,
            log,
            status,
            metrics,
            stop,
            task,
        }
    }

    /// Waits until the log has read everything the table holds now.
    async fn caught_up(&self, db: &TestDb) {
        let head = changes::head(&db.client().await).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while self.log.head() < head {
            assert!(
                tokio::time::Instant::now() < deadline,
                "source stuck at {} < {head}",
                self.log.head()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn events(&self) -> Vec<Arc<Event>> {
        let mut out = Vec::new();
        self.log
            .read_after(self.start, usize::MAX, |e| Some(Arc::clone(e)), &mut out);
        out
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Every row of `change_log`, read straight from the table.
async fn table_events(db: &TestDb) -> Vec<Arc<Event>> {
    let client = db.client().await;
    let mut all = Vec::new();
    let mut cursor = 0;
    loop {
        let page = changes::read_after(&client, cursor, 5000).await.unwrap();
        match page.last() {
            Some(last) => cursor = last.id,
            None => return all,
        }
        all.extend(page);
    }
}

fn wire(events: &[Arc<Event>]) -> Vec<(u64, String)> {
    events.iter().map(|e| (e.id, e.json().to_owned())).collect()
}

fn message(event: &Event) -> Value {
    serde_json::from_str(event.json()).unwrap()
}

/// What the writers know they committed.
#[derive(Default)]
struct Ledger {
    /// product_name markers of committed inserts.
    inserted: Vec<String>,
    /// customer_name markers of committed updates, with how many rows each touched.
    updated: Vec<(String, u64)>,
    /// Ids deleted by committed deletes.
    deleted: u64,
}

/// One writer: `transactions` random transactions, some multi-row, a random pause
/// before COMMIT, about one in ten rolled back (marked so that it can be looked for).
async fn writer(target: DbTarget, writer: usize, transactions: usize, seed: u64) -> Ledger {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut client = target.connect_spawned().await.unwrap();
    let mut ledger = Ledger::default();
    for t in 0..transactions {
        let rollback = rng.u8(0..10) == 0;
        let tag = if rollback { "rollback" } else { "commit" };
        let tx = client.transaction().await.unwrap();
        let mut inserted = Vec::new();
        let mut updated = Vec::new();
        let mut deleted = 0;
        let statements = rng.usize(1..=3);
        let mut failed = false;
        for s in 0..statements {
            let result = match rng.u8(0..10) {
                0..=4 => {
                    let rows = rng.i32(1..=3);
                    let marker = format!("{tag}-w{writer}-t{t}-s{s}");
                    tx.execute(
                        "INSERT INTO orders (customer_name, product_name)
                         SELECT 'c', $1 || '-' || n FROM generate_series(1, $2) n",
                        &[&marker, &rows],
                    )
                    .await
                    .map(|n| {
                        inserted.extend((1..=n).map(|k| format!("{marker}-{k}")));
                    })
                }
                5..=8 => {
                    let marker = format!("{tag}-u-w{writer}-t{t}-s{s}");
                    let pick = rng.i32(0..100);
                    tx.execute(
                        "UPDATE orders SET customer_name = $1,
                                status = (ARRAY['pending','shipped','delivered'])[1 + (id % 3)]
                         WHERE id IN (SELECT id FROM orders ORDER BY id OFFSET $2 LIMIT 2)",
                        &[&marker, &i64::from(pick)],
                    )
                    .await
                    .map(|n| updated.push((marker, n)))
                }
                _ => {
                    let pick = rng.i32(0..100);
                    tx.execute(
                        "DELETE FROM orders WHERE id = (SELECT id FROM orders ORDER BY id OFFSET $1 LIMIT 1)",
                        &[&i64::from(pick)],
                    )
                    .await
                    .map(|n| deleted += n)
                }
            };
            if result.is_err() {
                // A deadlock or serialisation failure: the transaction is lost.
                failed = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_micros(rng.u64(0..2000))).await;
        if rollback || failed {
            let _ = tx.rollback().await;
            continue;
        }
        if tx.commit().await.is_ok() {
            ledger.inserted.extend(inserted);
            ledger.updated.extend(updated);
            ledger.deleted += deleted;
        }
    }
    ledger
}

async fn run_writers(db: &TestDb, writers: usize, transactions: usize) -> Ledger {
    let tasks: Vec<_> = (0..writers)
        .map(|w| tokio::spawn(writer(db.target.clone(), w, transactions, 7 + w as u64)))
        .collect();
    let mut total = Ledger::default();
    for task in tasks {
        let ledger = task.await.unwrap();
        total.inserted.extend(ledger.inserted);
        total.updated.extend(ledger.updated);
        total.deleted += ledger.deleted;
    }
    total
}

/// Replays events by primary key; checks each row's history is a valid chain (its
/// first event an INSERT, every UPDATE's `old` equal to the row's previous state, a
/// DELETE carrying that state) — two changes of a row in the wrong order break it.
fn replay(events: &[Arc<Event>]) -> BTreeMap<i64, Value> {
    let mut rows: BTreeMap<i64, Value> = BTreeMap::new();
    for event in events {
        let message = message(event);
        let row = &message["row"];
        let id = row["id"].as_i64().unwrap_or(-1);
        match event.op {
            Op::Insert => {
                assert!(
                    rows.insert(id, row.clone()).is_none(),
                    "insert of existing row {id}"
                );
            }
            Op::Update => {
                let previous = rows.insert(id, row.clone());
                assert_eq!(
                    previous.as_ref(),
                    Some(&message["old"]),
                    "update of row {id} out of order"
                );
            }
            Op::Delete => {
                let previous = rows.remove(&id);
                assert_eq!(
                    previous.as_ref(),
                    Some(row),
                    "delete of row {id} out of order"
                );
            }
            Op::Truncate => rows.clear(),
        }
    }
    rows
}

async fn table_rows(db: &TestDb) -> BTreeMap<i64, Value> {
    let client = db.client().await;
    client
        .query("SELECT id::int8, to_jsonb(o) FROM orders o", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get::<_, i64>(0), r.get::<_, Value>(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_seen_exactly_once_in_commit_order() {
    writers_are_seen_exactly_once_in_commit_order(CaptureMode::Trigger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_writers_are_seen_exactly_once_in_commit_order_under_wal_capture() {
    writers_are_seen_exactly_once_in_commit_order(CaptureMode::Wal).await;
}

/// 8 writers × random transactions (some rolled back, random pauses before COMMIT):
/// every committed change exactly once, in an order that replays to the table.
async fn writers_are_seen_exactly_once_in_commit_order(mode: CaptureMode) {
    let db = TestDb::new();
    let replica = (mode == CaptureMode::Wal).then(|| wal::Replica::start(&db));
    if replica.is_some() {
        wal::wal_mode(&db).await;
    }
    let reader = Reader::start(&db.target, SourceMode::Notify, 0);
    tokio::time::timeout(WAIT, reader.status.wait_live())
        .await
        .unwrap();
    let ledger = run_writers(&db, 8, 300).await;
    if let Some(replica) = replica {
        wal::applied(&db).await;
        replica.stop().await;
    }
    reader.caught_up(&db).await;
    let events = reader.events();
    reader.stop().await;

    assert!(events.len() > 1000, "workload too small: {}", events.len());
    assert!(
        events.windows(2).all(|w| w[0].id < w[1].id),
        "ids not increasing"
    );
    assert_eq!(wire(&events), wire(&table_events(&db).await));

    // No rolled-back change ever appears.
    for event in &events {
        assert!(
            !event.json().contains("rollback-"),
            "rolled-back change: {}",
            event.json()
        );
    }
    // Every committed insert and update exactly once.
    let mut inserts: HashMap<String, usize> = HashMap::new();
    let mut updates: HashMap<String, u64> = HashMap::new();
    let mut deletes = 0;
    for event in &events {
        let message = message(event);
        match event.op {
            Op::Insert => {
                *inserts
                    .entry(message["row"]["product_name"].as_str().unwrap().to_owned())
                    .or_default() += 1
            }
            Op::Update => {
                *updates
                    .entry(message["row"]["customer_name"].as_str().unwrap().to_owned())
                    .or_default() += 1
            }
            Op::Delete => deletes += 1,
            Op::Truncate => panic!("no truncate in this workload"),
        }
    }
    assert_eq!(inserts.len(), ledger.inserted.len());
    assert!(ledger.inserted.iter().all(|m| inserts.get(m) == Some(&1)));
    for (marker, rows) in &ledger.updated {
        assert_eq!(updates.get(marker).copied().unwrap_or(0), *rows, "{marker}");
    }
    assert_eq!(deletes, ledger.deleted);
    // Replaying by primary key reproduces the final table.
    assert_eq!(replay(&events), table_rows(&db).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notify_poll_and_auto_give_identical_events() {
    let db = TestDb::new();
    let readers: Vec<Reader> = [SourceMode::Notify, SourceMode::Poll, SourceMode::Auto]
        .into_iter()
        .map(|mode| Reader::start(&db.target, mode, 0))
        .collect();
    for reader in &readers {
        tokio::time::timeout(WAIT, reader.status.wait_live())
            .await
            .unwrap();
    }
    assert_eq!(
        readers[2].status.mode(),
        Some(SourceMode::Notify),
        "auto should find NOTIFY working"
    );
    run_writers(&db, 4, 100).await;
    let expected = wire(&table_events(&db).await);
    assert!(expected.len() > 100);
    for reader in readers {
        reader.caught_up(&db).await;
        assert_eq!(wire(&reader.events()), expected);
        reader.stop().await;
    }
}

#[tokio::test]
async fn a_new_process_resumes_from_its_cursor_with_nothing_lost() {
    let db = TestDb::new();
    let client = db.client().await;
    for i in 0..30 {
        insert_order(&client, &format!("before {i}"), "p").await;
    }
    let all = table_events(&db).await;
    let cursor = all[9].id;
    // The "restarted" reader starts at the cursor a client handed it.
    let reader = Reader::start(&db.target, SourceMode::Auto, cursor);
    tokio::time::timeout(WAIT, reader.status.wait_live())
        .await
        .unwrap();
    for i in 0..20 {
        insert_order(&client, &format!("after {i}"), "p").await;
    }
    reader.caught_up(&db).await;
    let expected: Vec<_> = table_events(&db)
        .await
        .into_iter()
        .filter(|e| e.id > cursor)
        .collect();
    assert_eq!(expected.len(), 40);
    assert_eq!(wire(&reader.events()), wire(&expected));
    reader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarting_under_writers_loses_nothing() {
    postgres_restarting_under_writers_loses_nothing_in(CaptureMode::Trigger).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_restarting_under_writers_loses_nothing_under_wal_capture() {
    postgres_restarting_under_writers_loses_nothing_in(CaptureMode::Wal).await;
}

async fn postgres_restarting_under_writers_loses_nothing_in(mode: CaptureMode) {
    let cluster = Cluster::private();
    let db = cluster.database();
    let server = cluster.server().expect("a private cluster");
    let replica = (mode == CaptureMode::Wal).then(|| wal::Replica::start(&db));
    if replica.is_some() {
        wal::wal_mode(&db).await;
    }
    let reader = Reader::start(&db.target, SourceMode::Notify, 0);
    tokio::time::timeout(WAIT, reader.status.wait_live())
        .await
        .unwrap();

    let stop_writing = CancellationToken::new();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let target = db.target.clone();
            let stop = stop_writing.clone();
            tokio::spawn(async move {
                let mut committed = Vec::new();
                let mut n = 0;
                while !stop.is_cancelled() {
                    let Ok(client) = target.connect_spawned().await else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    };
                    while !stop.is_cancelled() {
                        let marker = format!("w{w}-{n}");
                        n += 1;
                        match client
                            .execute(
                                "INSERT INTO orders (customer_name, product_name) VALUES ('c', $1)",
                                &[&marker],
                            )
                            .await
                        {
                            Ok(_) => committed.push(marker),
                            Err(_) => break,
                        }
                    }
                }
                committed
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().expect("stop PostgreSQL");
    tokio::time::timeout(WAIT, async {
        while reader.status.is_live() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("source noticed the outage");
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.start_server().expect("start PostgreSQL again");
    tokio::time::timeout(WAIT, reader.status.wait_live())
        .await
        .expect("source reconnected");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_writing.cancel();
    let mut committed = Vec::new();
    for writer in writers {
        committed.extend(writer.await.unwrap());
    }
    if let Some(replica) = replica {
        wal::applied(&db).await;
        replica.stop().await;
    }
    reader.caught_up(&db).await;
    let events = reader.events();
    assert_eq!(wire(&events), wire(&table_events(&db).await));
    let seen: std::collections::HashSet<String> = events
        .iter()
        .map(|e| {
            message(e)["row"]["product_name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(seen.len(), events.len(), "an insert captured twice");
    assert!(committed.len() > 50, "too few writes: {}", committed.len());
    assert!(
        committed.iter().all(|m| seen.contains(m)),
        "a committed insert is missing"
    );
    assert!(reader.metrics.db_reconnects.get() >= 1);
    reader.stop().await;
}

#[tokio::test]
async fn rows_larger_than_notify_payloads_arrive_intact() {
    let db = TestDb::new();
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE docs (id serial PRIMARY KEY, body text); SELECT realtime.track('docs')",
        )
        .await
        .unwrap();
    let reader = Reader::start(&db.target, SourceMode::Notify, 0);
    tokio::time::timeout(WAIT, reader.status.wait_live())
        .await
        .unwrap();
    let bodies: Vec<String> = [9_000, 100_000, 1_000_000]
        .iter()
        .map(|n| "é\"\n".repeat(n / 4))
        .collect();
    for body in &bodies {
        client
            .execute("INSERT INTO docs (body) VALUES ($1)", &[body])
            .await
            .unwrap();
    }
    reader.caught_up(&db).await;
    let events = reader.events();
    assert_eq!(events.len(), 3);
    for (event, body) in events.iter().zip(&bodies) {
        assert_eq!(&*event.table, "docs");
        assert_eq!(message(event)["row"]["body"].as_str(), Some(body.as_str()));
    }
    reader.stop().await;
}

#[tokio::test]
async fn truncate_yields_one_truncate_event() {
    let db = TestDb::new();
    let client = db.client().await;
    for i in 0..3 {
        insert_order(&client, &format!("c{i}"), "p").await;
    }
    client.batch_execute("TRUNCATE orders").await.unwrap();
    let events = table_events(&db).await;
    let ops: Vec<Op> = events.iter().map(|e| e.op).collect();
    assert_eq!(ops, [Op::Insert, Op::Insert, Op::Insert, Op::Truncate]);
    let truncate = message(&events[3]);
    assert_eq!(truncate["table"], "orders");
    assert!(truncate.get("row").is_none() && truncate.get("old").is_none());
}

#[tokio::test]
async fn a_position_removed_by_retention_is_reported_as_gone() {
    let db = TestDb::new();
    let client = db.client().await;
    for i in 0..5 {
        insert_order(&client, &format!("c{i}"), "p").await;
    }
    let pruned: i64 = client
        .query_one("SELECT realtime.prune(NULL, 0, 1000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pruned, 5);
    assert_eq!(changes::pruned_upto(&client).await.unwrap(), 5);
    // A gateway started now has none of those events in its ring.
    let server = TestServer::start(db.config()).await;
    let mut gone = WsClient::connect(server.addr, "since=2").await;
    let (before, ready) = gone.until_ready().await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["type"], "reset");
    assert_eq!(before[0]["reason"], "history_gone");
    assert_eq!(before[0]["head"], "5");
    assert_eq!(ready["head"], "5");
    // At the horizon nothing was lost: no reset.
    let mut fine = WsClient::connect(server.addr, "since=5").await;
    let (before, ready) = fine.until_ready().await;
    assert!(before.is_empty());
    assert_eq!(ready["replayed"], 0);
    // Gaps (ids drawn but never committed) are not a reason to reset.
    client
        .batch_execute("SELECT nextval('realtime.change_log_id_seq')")
        .await
        .unwrap();
    insert_order(&client, "after the gap", "p").await;
    server.caught_up(&db).await;
    let mut gap = WsClient::connect(server.addr, "since=5").await;
    let (before, _) = gap.until_ready().await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["type"], "change");
    assert_eq!(before[0]["id"], "7");
}

#[tokio::test]
async fn migrations_are_idempotent_and_safe_when_replicas_start_together() {
    let db = Cluster::shared().empty_database();
    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(db.client().await);
    }
    let results = futures_util::future::join_all(clients.iter_mut().map(migrate::apply)).await;
    let applied: Vec<Vec<i32>> = results.into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(
        applied.iter().filter(|a| !a.is_empty()).count(),
        1,
        "{applied:?}"
    );
    assert!(migrate::apply(&mut clients[0]).await.unwrap().is_empty());
    let recorded: i64 = clients[0]
        .query_one("SELECT count(*) FROM realtime.migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(recorded as usize, migrate::MIGRATIONS.len());
    migrate::check(&clients[0]).await.unwrap();
}

#[tokio::test]
async fn updated_at_is_kept_current_by_the_database() {
    let db = TestDb::new();
    let client = db.client().await;
    let id = insert_order(&client, "c", "p").await;
    let before: Value = client
        .query_one(
            "SELECT to_jsonb(o)->'updated_at' FROM orders o WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute("UPDATE orders SET status = 'shipped' WHERE id = $1", &[&id])
        .await
        .unwrap();
    let after: Value = client
        .query_one(
            "SELECT to_jsonb(o)->'updated_at' FROM orders o WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(before, after);
}

#[tokio::test]
async fn untracked_tables_are_not_captured_and_track_is_reversible() {
    let db = TestDb::new();
    let client = db.client().await;
    for statement in [
        "CREATE SCHEMA app",
        "CREATE TABLE app.items (id int PRIMARY KEY)",
        "SELECT realtime.track('app.items')",
        "SELECT realtime.track('app.items')",
        "INSERT INTO app.items VALUES (1)",
        "SELECT realtime.untrack('app.items')",
        "INSERT INTO app.items VALUES (2)",
    ] {
        client.batch_execute(statement).await.unwrap();
    }
    let events = table_events(&db).await;
    assert_eq!(events.len(), 1);
    assert_eq!(&*events[0].table, "app.items");
    let catalog = changes::catalog(&client).await.unwrap();
    assert!(catalog.contains("orders") && !catalog.contains("app.items"));
}

#[tokio::test]
async fn numbers_reach_clients_digit_for_digit() {
    let db = TestDb::new();
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE readings (id serial PRIMARY KEY, exact numeric(30,10), approx float8);
             SELECT realtime.track('readings');
             INSERT INTO readings (exact, approx)
             VALUES (12345678901234567890.1234567890, 7.06416436983199e-304);",
        )
        .await
        .unwrap();
    let events = table_events(&db).await;
    let json = events[0].json();
    assert!(
        json.contains(r#""exact":12345678901234567890.1234567890"#),
        "{json}"
    );
    // jsonb holds numbers as numeric: the float8 arrives exactly as PostgreSQL's own
    // jsonb text (what REST returns) renders it.
    let approx: String = client
        .query_one(
            "SELECT (to_jsonb(r) -> 'approx')::text FROM readings r",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        json.contains(&format!(r#""approx":{approx}"#)),
        "{approx} in {json}"
    );
}
