//! Live views, as DESIGN.md ("Live views: filtered streams that stay exact") states
//! them: UPDATEs judged on both images (`view: enter|leave`), on both transports, from
//! the ring and from `change_log` alike.
//!
//! What a client should get is computed by SQL from `realtime.change_log` itself, so
//! every check compares what a client saw with what the database committed.

mod support;
use support::*;

use rowcast::config::Config;
use serde_json::Value;

/// `(id, view)` of each change; `view` is "" when absent.
fn deliveries(messages: &[Value]) -> Vec<(u64, String)> {
    messages
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap().parse().unwrap();
            let view = match m.get("view") {
                None => String::new(),
                Some(Value::String(view)) => view.clone(),
                Some(other) => panic!("view is not a string: {other}"),
            };
            (id, view)
        })
        .collect()
}

/// The query of a stream with these filters (repeated `filter=`).
fn query_of(filters: &[&str]) -> String {
    filters
        .iter()
        .map(|f| format!("filter={}", enc(f)))
        .collect::<Vec<_>>()
        .join("&")
}

/// The newest id that ever existed.
async fn head(db: &TestDb) -> u64 {
    rowcast::pg::changes::head(&db.client().await)
        .await
        .unwrap()
}

/// What a stream whose filters are the SQL predicate `matches` (over a jsonb `{x}`)
/// must deliver after `since`: `(id, view)` by DESIGN's rule, computed in SQL.
async fn expected(db: &TestDb, since: u64, matches: &str, filtered: bool) -> Vec<(u64, String)> {
    let on = |image: &str| format!("coalesce(({}), false)", matches.replace("{x}", image));
    let (new, old) = (on("row"), on("old"));
    let view = if filtered {
        format!(
            "CASE WHEN op = 'UPDATE' AND {new} AND NOT {old} THEN 'enter'
                  WHEN op = 'UPDATE' AND {old} AND NOT {new} THEN 'leave' ELSE '' END"
        )
    } else {
        "''".to_owned()
    };
    db.client()
        .await
        .query(
            &format!(
                "SELECT id, {view} FROM realtime.change_log
                 WHERE id > $1 AND (op = 'TRUNCATE' OR {new} OR (op = 'UPDATE' AND {old}))
                 ORDER BY id"
            ),
            &[&(since as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get::<_, i64>(0) as u64, row.get(1)))
        .collect()
}

/// Every kind of move, one transaction each: INSERT matching or not, UPDATEs
/// match→match, match→no, no→match, no→no (for every filter below), DELETE of a
/// matching and a non-matching row, and a TRUNCATE last.
async fn moves(db: &TestDb) {
    let client = db.client().await;
    let script = "INSERT INTO orders (customer_name, product_name, status) VALUES ('Ann', 'a', 'pending');
             INSERT INTO orders (customer_name, product_name, status) VALUES ('Zed', 'z', 'shipped');
             INSERT INTO orders (customer_name, product_name, status) VALUES ('Bob', 'b', 'pending');
             UPDATE orders SET product_name = 'a2' WHERE customer_name = 'Ann';
             UPDATE orders SET status = 'shipped' WHERE customer_name = 'Ann';
             UPDATE orders SET product_name = 'z2' WHERE customer_name = 'Zed';
             UPDATE orders SET status = 'pending' WHERE customer_name = 'Ann';
             UPDATE orders SET customer_name = 'Nia' WHERE customer_name = 'Bob';
             UPDATE orders SET customer_name = 'Bob' WHERE customer_name = 'Zed';
             UPDATE orders SET status = 'delivered' WHERE customer_name = 'Nia';
             UPDATE orders SET status = 'shipped' WHERE customer_name = 'Nia';
             DELETE FROM orders WHERE customer_name = 'Ann';
             DELETE FROM orders WHERE customer_name = 'Nia';
             TRUNCATE orders;";
    for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        client.batch_execute(statement).await.unwrap();
    }
}

/// Runs [`moves`] and checks, on both transports, a live client, one resuming from
/// the ring and one resuming from `change_log` (the ring holds two events): each
/// gets exactly the deliveries SQL computes, and `ready`'s head covers the events
/// that did not match.
async fn views_stay_exact(filters: &[&str], matches: &str) {
    views_stay_exact_as(None, filters, matches).await
}

/// [`views_stay_exact`] for the holder of `token` (a JWT signed with [`SECRET`]),
/// on gateways that require it on streams.
async fn views_stay_exact_as(token: Option<&str>, filters: &[&str], matches: &str) {
    let db = TestDb::new();
    let mut query = query_of(filters);
    let mut config = db.config();
    if let Some(token) = token {
        config.jwt_secret = Some(SECRET.into());
        config.auth_streams = true;
        query = format!("access_token={token}&{query}");
    }
    let wide = TestServer::start(config.clone()).await;
    let narrow = TestServer::start(Config {
        ring_capacity: 2,
        ..config
    })
    .await;
    let start = head(&db).await;
    let mut live = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, wide.addr, &query).await;
        client.until_ready().await;
        live.push((transport, "live", client));
    }
    moves(&db).await;
    let filtered = !filters.is_empty() || token.is_some();
    let want = expected(&db, start, matches, filtered).await;
    assert!(want.iter().any(|(_, view)| !view.is_empty()) || !filtered);
    let end = head(&db).await;
    for (transport, how, client) in &mut live {
        let got = deliveries(&client.changes_until_truncate().await);
        assert_eq!(got, want, "{transport:?} {how} {query}");
    }
    wide.caught_up(&db).await;
    narrow.caught_up(&db).await;
    for (server, how) in [(&wide, "from the ring"), (&narrow, "from change_log")] {
        for transport in BOTH {
            let resume = format!("since={start}&{query}");
            let mut client = Client::open(transport, server.addr, &resume).await;
            let (backlog, ready) = client.until_ready().await;
            assert_eq!(deliveries(&backlog), want, "{transport:?} {how} {query}");
            assert_eq!(ready["head"], end.to_string(), "{transport:?} {how}");
        }
    }
}

#[tokio::test]
async fn an_eq_view_sees_rows_enter_and_leave_on_both_transports_live_and_resumed() {
    views_stay_exact(&["status=eq.pending"], "{x}->>'status' = 'pending'").await;
}

#[tokio::test]
async fn an_in_view_sees_rows_enter_and_leave_on_both_transports_live_and_resumed() {
    views_stay_exact(
        &["customer_name=in.(Ann,Bob)"],
        "{x}->>'customer_name' IN ('Ann', 'Bob')",
    )
    .await;
}

#[tokio::test]
async fn a_range_view_sees_rows_enter_and_leave_on_both_transports_live_and_resumed() {
    views_stay_exact(
        &["customer_name=lt.N"],
        "({x}->>'customer_name') COLLATE \"C\" < 'N'",
    )
    .await;
}

#[tokio::test]
async fn two_anded_filters_see_rows_enter_and_leave_on_both_transports_live_and_resumed() {
    views_stay_exact(
        &["status=eq.pending", "customer_name=in.(Ann,Bob)"],
        "{x}->>'status' = 'pending' AND {x}->>'customer_name' IN ('Ann', 'Bob')",
    )
    .await;
}

#[tokio::test]
async fn unfiltered_streams_get_every_update_as_is_without_view() {
    views_stay_exact(&[], "true").await;
}

// ---------------------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------------------

/// A client's copy of a view: rows by `id`, kept by applying a snapshot and then
/// changes the way DESIGN tells clients to. It fails on anything an exact stream
/// cannot send: a row twice in a snapshot, an INSERT or `enter` of a row it holds,
/// an UPDATE, DELETE or `leave` of a row it lacks, ids that do not increase.
#[derive(Default)]
struct ViewCopy {
    rows: std::collections::BTreeMap<i64, Value>,
    /// The position after `ready`: the last change id or `ready`'s head.
    position: Option<u64>,
    /// Rows the snapshot sent, for `ready.snapshot`.
    snapshot_rows: u64,
}

impl ViewCopy {
    fn key(row: &Value) -> i64 {
        row["id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no id in {row}"))
    }

    /// Applies one message; returns whether it was `ready`.
    fn apply(&mut self, message: &Value) -> bool {
        match message["type"].as_str().unwrap() {
            "snapshot" => {
                assert!(self.position.is_none(), "snapshot after ready: {message}");
                assert_eq!(message["table"], "orders");
                let mut last = None;
                for row in message["rows"].as_array().unwrap() {
                    let key = ViewCopy::key(row);
                    assert!(last < Some(key), "snapshot rows out of key order");
                    last = Some(key);
                    assert!(self.rows.insert(key, row.clone()).is_none(), "{key} twice");
                    self.snapshot_rows += 1;
                }
            }
            "ready" => {
                if let Some(sent) = message.get("snapshot") {
                    assert_eq!(sent.as_u64(), Some(self.snapshot_rows), "{message}");
                }
                self.position = Some(message["head"].as_str().unwrap().parse().unwrap());
                return true;
            }
            "change" => {
                let id: u64 = message["id"].as_str().unwrap().parse().unwrap();
                let position = self.position.expect("a change before ready");
                assert!(id > position, "change {id} not after {position}");
                self.position = Some(id);
                let row = &message["row"];
                let present = |copy: &ViewCopy| copy.rows.contains_key(&ViewCopy::key(row));
                match (message["op"].as_str().unwrap(), message["view"].as_str()) {
                    ("TRUNCATE", _) => self.rows.clear(),
                    ("INSERT", None) | ("UPDATE", Some("enter")) => {
                        assert!(!present(self), "{message} of a row held");
                        self.rows.insert(ViewCopy::key(row), row.clone());
                    }
                    ("UPDATE", None) => {
                        assert!(present(self), "{message} of a row not held");
                        self.rows.insert(ViewCopy::key(row), row.clone());
                    }
                    ("DELETE", None) | ("UPDATE", Some("leave")) => {
                        assert!(present(self), "{message} of a row not held");
                        self.rows.remove(&ViewCopy::key(row));
                    }
                    _ => panic!("unexpected {message}"),
                }
            }
            "heartbeat" | "reset" => panic!("unexpected {message}"),
            other => panic!("unknown message type {other}"),
        }
        false
    }
}

/// The rows of `orders` for which the SQL `predicate` holds, by id.
async fn rows_where(db: &TestDb, predicate: &str) -> std::collections::BTreeMap<i64, Value> {
    db.client()
        .await
        .query(
            &format!("SELECT to_jsonb(o) FROM orders o WHERE {predicate} ORDER BY id"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let row: Value = row.get(0);
            (ViewCopy::key(&row), row)
        })
        .collect()
}

/// Inserts `n` orders in one statement, with statuses and customers cycling.
async fn bulk_orders(db: &TestDb, n: usize) {
    db.client()
        .await
        .execute(
            "INSERT INTO orders (customer_name, product_name, status)
             SELECT 'Customer ' || (i % 7), 'Widget ' || i,
                    (ARRAY['pending', 'shipped', 'delivered'])[1 + i % 3]
             FROM generate_series(1, $1::int) i",
            &[&(n as i32)],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_snapshot_sends_the_matching_rows_in_key_order_then_ready_then_later_changes() {
    let db = TestDb::new();
    bulk_orders(&db, 1234).await;
    let server = TestServer::start(db.config()).await;
    let query = format!("snapshot=true&{}", query_of(&["status=eq.pending"]));
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &query).await;
        let mut copy = ViewCopy::default();
        let (pages, ready) = client.until_ready().await;
        assert!(pages.len() >= 2, "{} rows fit one page", copy.rows.len());
        for page in &pages {
            copy.apply(page);
        }
        copy.apply(&ready);
        assert_eq!(copy.rows, rows_where(&db, "status = 'pending'").await);
        assert_eq!(ready["head"], head(&db).await.to_string());
        assert_eq!(ready["replayed"], 0);
        let added = insert_order(&db.client().await, "Late", "Gadget").await;
        let change = client.next().await;
        copy.apply(&change);
        assert_eq!(change["row"]["id"], added, "{transport:?}");
    }
}

#[tokio::test]
async fn writes_made_while_a_snapshot_is_sent_follow_it_once_on_both_transports() {
    let db = TestDb::new();
    bulk_orders(&db, 9000).await;
    let server = TestServer::start(db.config()).await;
    let query = format!("snapshot=true&{}", query_of(&["status=eq.pending"]));
    let client = db.client().await;
    for transport in BOTH {
        let mut stream = Client::open(transport, server.addr, &query).await;
        let mut copy = ViewCopy::default();
        let first = stream.next().await;
        copy.apply(&first);
        // The snapshot is fixed; these commit while its later pages are still unsent,
        // moving rows of pages sent and unsent in and out.
        client
            .batch_execute(
                "UPDATE orders SET status = 'shipped' WHERE id % 97 = 1 AND status = 'pending';
                 UPDATE orders SET status = 'pending' WHERE id % 89 = 2 AND status <> 'pending';",
            )
            .await
            .unwrap();
        client
            .batch_execute(
                "DELETE FROM orders WHERE id % 83 = 3;
                 INSERT INTO orders (customer_name, product_name, status)
                 SELECT 'During', 'w' || i, 'pending' FROM generate_series(1, 50) i;",
            )
            .await
            .unwrap();
        let marker = insert_order(&client, "Marker", "m").await;
        let mut pages = 1;
        while !copy.rows.contains_key(&(marker as i64)) {
            let message = stream.next().await;
            pages += usize::from(message["type"] == "snapshot");
            copy.apply(&message);
        }
        assert!(
            pages > 2,
            "{transport:?}: the writes came after the first page only"
        );
        assert_eq!(
            copy.rows,
            rows_where(&db, "status = 'pending'").await,
            "{transport:?}"
        );
    }
}

#[tokio::test]
async fn a_snapshot_covers_every_selected_table_and_orders_a_table_without_a_key() {
    let db = TestDb::new();
    bulk_orders(&db, 3).await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE notes (body text);
             SELECT realtime.track('notes');
             INSERT INTO notes SELECT 'note ' || i FROM generate_series(1, 700) i;",
        )
        .await
        .unwrap();
    let server = TestServer::start(db.config()).await;
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, "snapshot=true").await;
        let (pages, ready) = client.until_ready().await;
        let rows_of = |table: &str| -> Vec<Value> {
            pages
                .iter()
                .filter(|p| p["table"] == table)
                .flat_map(|p| p["rows"].as_array().unwrap().clone())
                .collect()
        };
        let orders: Vec<Value> = rows_where(&db, "true").await.into_values().collect();
        assert_eq!(rows_of("orders"), orders, "{transport:?}");
        let mut notes: Vec<String> = rows_of("notes")
            .iter()
            .map(|n| n["body"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(notes.len(), 700);
        notes.sort();
        notes.dedup();
        assert_eq!(notes.len(), 700, "every note once");
        assert_eq!(ready["snapshot"], 703);
    }
}

#[tokio::test]
async fn snapshot_true_with_a_position_is_ignored() {
    let db = TestDb::new();
    bulk_orders(&db, 5).await;
    let server = TestServer::start(db.config()).await;
    let since = head(&db).await - 2;
    for transport in BOTH {
        let query = format!("snapshot=true&since={since}");
        let mut client = Client::open(transport, server.addr, &query).await;
        let (backlog, ready) = client.until_ready().await;
        assert_eq!(backlog.len(), 2, "{backlog:?}");
        assert!(backlog.iter().all(|m| m["type"] == "change"));
        assert!(ready.get("snapshot").is_none(), "{ready}");
    }
    let last = head(&db).await.to_string();
    let mut sse =
        SseClient::connect(server.addr, "snapshot=true", &[("Last-Event-ID", &last)]).await;
    let (before, ready) = sse.until_ready().await;
    assert!(before.is_empty());
    assert!(ready.json().get("snapshot").is_none());
}

#[tokio::test]
async fn a_bad_snapshot_value_is_refused_with_400_on_both_endpoints() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    for value in ["yes", "1", "TRUE", ""] {
        for path in ["/ws", "/events"] {
            let response = http(
                server.addr,
                "GET",
                &format!("{path}?snapshot={value}"),
                &[],
                None,
            )
            .await;
            assert_eq!(response.status, 400, "{path} snapshot={value}");
            let error = &response.json()["error"];
            assert_eq!(error["field"], "snapshot", "{error}");
            assert_eq!(error["code"], "invalid_parameter", "{error}");
        }
    }
}

#[tokio::test]
async fn an_sse_client_reconnecting_mid_snapshot_starts_over_and_after_ready_resumes() {
    let db = TestDb::new();
    bulk_orders(&db, 2000).await;
    let server = TestServer::start(db.config()).await;
    // A page carries no `id:` (checked by Client::next), so a browser that lost the
    // stream mid-snapshot reconnects without Last-Event-ID: a full snapshot again.
    let mut first = Client::open(Transport::Sse, server.addr, "snapshot=true").await;
    let page = first.next().await;
    assert_eq!(page["type"], "snapshot");
    drop(first);
    let mut again = Client::open(Transport::Sse, server.addr, "snapshot=true").await;
    let mut copy = ViewCopy::default();
    let (pages, ready) = again.until_ready().await;
    pages.iter().for_each(|p| {
        copy.apply(p);
    });
    copy.apply(&ready);
    assert_eq!(copy.rows, rows_where(&db, "true").await);
    // After ready the browser holds its head as lastEventId: no snapshot, only later
    // changes.
    let added = insert_order(&db.client().await, "Later", "Gadget").await;
    server.caught_up(&db).await;
    let last = ready["head"].as_str().unwrap();
    let mut resumed =
        SseClient::connect(server.addr, "snapshot=true", &[("Last-Event-ID", last)]).await;
    let (before, ready) = resumed.until_ready().await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(before[0].json()["row"]["id"], added);
    assert!(ready.json().get("snapshot").is_none());
}

/// Eight writers, each running random transactions (some rolled back) that insert
/// orders and move them in and out of `status=pending` and customers in and out of
/// `customer_name=in.(C0,C1)`, until `stop`.
async fn writers(db: &TestDb, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
    let mut tasks = Vec::new();
    for seed in 0..8u64 {
        let db = db.clone();
        let stop = std::sync::Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut client = db.client().await;
            let statuses = ["pending", "shipped", "delivered"];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let tx = client.transaction().await.unwrap();
                let mut failed = false;
                for _ in 0..rng.usize(1..4) {
                    let status = statuses[rng.usize(0..3)];
                    let customer = format!("C{}", rng.usize(0..4));
                    let id = rng.i32(1..400);
                    let sql = match rng.usize(0..5) {
                        0 => {
                            "INSERT INTO orders (customer_name, product_name, status)
                              VALUES ($2, 'w', $1) RETURNING $3::int"
                        }
                        1 => {
                            "DELETE FROM orders WHERE id = $3 AND $1::text IS NOT NULL
                              AND $2::text IS NOT NULL"
                        }
                        2 => {
                            "UPDATE orders SET customer_name = $2 WHERE id = $3
                              AND $1::text IS NOT NULL"
                        }
                        _ => "UPDATE orders SET status = $1 WHERE id = $3 AND $2::text IS NOT NULL",
                    };
                    // Writers touching the same rows in another order may deadlock;
                    // PostgreSQL then aborts one of them, which rolls back.
                    if tx.execute(sql, &[&status, &customer, &id]).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || rng.usize(0..5) == 0 {
                    tx.rollback().await.unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
}

/// A client keeping `filters` with `snapshot=true`, reconnecting at random points
/// (mid-snapshot: starting over; after ready: resuming with `since`), ends with exactly
/// the rows SQL selects once the writers stop.
async fn a_view_converges(transport: Transport, filters: &[&str], predicate: &str) {
    let db = TestDb::new();
    bulk_orders(&db, 300).await;
    let server = TestServer::start(db.config()).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writing = tokio::spawn({
        let db = db.clone();
        let stop = std::sync::Arc::clone(&stop);
        async move { writers(&db, stop).await }
    });
    let mut rng = fastrand::Rng::with_seed(7);
    let mut copy = ViewCopy::default();
    let filters = query_of(filters);
    for _ in 0..12 {
        let query = match copy.position {
            None => format!("snapshot=true&{filters}"),
            Some(position) => format!("since={position}&{filters}"),
        };
        let mut client = Client::open(transport, server.addr, &query).await;
        // Leave after a random number of messages (starting over if mid-snapshot).
        for _ in 0..rng.usize(1..40) {
            copy.apply(&client.next().await);
        }
        if copy.position.is_none() {
            // Dropped mid-snapshot: the next connection starts over.
            copy = ViewCopy::default();
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writing.await.unwrap();
    // A marker that matches, written last: once it arrives, everything before it has.
    let marker: i64 = db
        .client()
        .await
        .query_one(
            "INSERT INTO orders (customer_name, product_name, status)
             VALUES ('C0', 'marker', 'pending') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i32>(0)
        .into();
    let query = match copy.position {
        None => format!("snapshot=true&{filters}"),
        Some(position) => format!("since={position}&{filters}"),
    };
    if copy.position.is_none() {
        copy = ViewCopy::default();
    }
    let mut client = Client::open(transport, server.addr, &query).await;
    while !copy.rows.contains_key(&marker) {
        copy.apply(&client.next().await);
    }
    assert_eq!(copy.rows, rows_where(&db, predicate).await, "{transport:?}");
}

#[tokio::test]
async fn a_websocket_view_converges_to_the_query_under_concurrent_writers_and_reconnects() {
    a_view_converges(Transport::Ws, &["status=eq.pending"], "status = 'pending'").await;
}

#[tokio::test]
async fn an_sse_view_converges_to_the_query_under_concurrent_writers_and_reconnects() {
    a_view_converges(
        Transport::Sse,
        &["status=eq.pending", "customer_name=in.(C0,C1)"],
        "status = 'pending' AND customer_name IN ('C0', 'C1')",
    )
    .await;
}

#[tokio::test]
async fn a_snapshot_of_100_000_rows_streams_in_bounded_memory_and_a_stalled_one_is_dropped() {
    const ROWS: u64 = 100_000;
    let db = TestDb::new();
    db.client()
        .await
        .batch_execute(&format!(
            // Tracked after the rows exist: their history would double the disk used.
            "CREATE TABLE big (id serial PRIMARY KEY, body text);
             INSERT INTO big (body) SELECT repeat(md5(i::text), 32)
             FROM generate_series(1, {ROWS}) i;
             SELECT realtime.track('big');"
        ))
        .await
        .unwrap();
    let gateway = GatewayProcess::start(&db.url, &["--send-timeout", "1s"]).await;
    let addr = gateway.addr;
    let baseline = gateway.rss_kib();

    // A client that never reads: dropped as lagging, its transaction closed.
    let stalled = support::clients::small_buffer_stream(addr).await;
    let _stalled = WsClient::connect_on(stalled, addr, "snapshot=true&tables=big").await;

    let started = std::time::Instant::now();
    let mut client = Client::open(Transport::Ws, addr, "snapshot=true&tables=big").await;
    let (mut rows, mut pages, mut peak) = (0u64, 0u64, baseline);
    let mut last_id = 0;
    loop {
        let message = client.next().await;
        if message["type"] == "ready" {
            assert_eq!(message["snapshot"], ROWS);
            break;
        }
        for row in message["rows"].as_array().unwrap() {
            let id = row["id"].as_i64().unwrap();
            assert!(id > last_id, "key order");
            last_id = id;
            rows += 1;
        }
        pages += 1;
        if pages % 10 == 0 {
            peak = peak.max(gateway.rss_kib());
        }
    }
    let elapsed = started.elapsed();
    assert_eq!(rows, ROWS);
    let grown_mib = (peak.saturating_sub(baseline)) / 1024;
    eprintln!(
        "snapshot of {ROWS} rows (~{} MiB of JSON) in {elapsed:.2?}; gateway RSS {} MiB → peak {} MiB",
        ROWS * 1050 / 1024 / 1024,
        baseline / 1024,
        peak / 1024
    );
    assert!(grown_mib < 48, "gateway grew by {grown_mib} MiB");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while metric(addr, "rowcast_lagging_disconnects_total").await < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled client stayed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------
// The JWT `filter` claim
// ---------------------------------------------------------------------------------

const SECRET: &str = "views-secret";

/// A JWT for [`SECRET`] with these claims, valid for ten minutes.
fn token(claims: Value) -> String {
    let mut claims = claims;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    claims["exp"] = (now + 600).into();
    rowcast::auth::sign_jwt(SECRET, &claims)
}

fn ann_and_zed() -> String {
    token(serde_json::json!({"filter": {"orders": ["customer_name=in.(Ann,Zed)"]}}))
}

#[tokio::test]
async fn a_token_filter_alone_makes_a_view_with_enter_and_leave_live_and_resumed() {
    views_stay_exact_as(
        Some(&ann_and_zed()),
        &[],
        "{x}->>'customer_name' IN ('Ann', 'Zed')",
    )
    .await;
}

#[tokio::test]
async fn a_token_filter_is_anded_with_the_clients_own_filters() {
    views_stay_exact_as(
        Some(&ann_and_zed()),
        &["status=eq.pending"],
        "{x}->>'customer_name' IN ('Ann', 'Zed') AND {x}->>'status' = 'pending'",
    )
    .await;
}

#[tokio::test]
async fn a_token_filter_limits_snapshots_on_both_transports() {
    let db = TestDb::new();
    bulk_orders(&db, 1500).await;
    let server = TestServer::start(Config {
        jwt_secret: Some(SECRET.into()),
        auth_streams: true,
        ..db.config()
    })
    .await;
    let holder = token(serde_json::json!({"filter": {"orders": ["customer_name=eq.Customer 3"]}}));
    for (filters, predicate) in [
        ("", "customer_name = 'Customer 3'"),
        (
            "&filter=status=eq.shipped",
            "customer_name = 'Customer 3' AND status = 'shipped'",
        ),
    ] {
        for transport in BOTH {
            let query = format!("snapshot=true&access_token={holder}{filters}");
            let mut client = Client::open(transport, server.addr, &query).await;
            let mut copy = ViewCopy::default();
            let (pages, ready) = client.until_ready().await;
            pages.iter().for_each(|page| {
                copy.apply(page);
            });
            copy.apply(&ready);
            assert_eq!(
                copy.rows,
                rows_where(&db, predicate).await,
                "{transport:?} {filters}"
            );
        }
    }
}

#[tokio::test]
async fn a_token_filter_limits_rest_reads_and_refuses_writes_outside_it() {
    let db = TestDb::new();
    bulk_orders(&db, 30).await;
    let client = db.client().await;
    let ann = insert_order(&client, "Ann", "a").await;
    let bob = insert_order(&client, "Bob", "b").await;
    // Reads are open here: a presented token still limits what its holder sees.
    let server = TestServer::start(Config {
        jwt_secret: Some(SECRET.into()),
        ..db.config()
    })
    .await;
    let holder = ann_and_zed();
    let auth = format!("Bearer {holder}");
    let headers = [("Authorization", auth.as_str())];
    let request = |method: &'static str, path: String, body: Option<&'static [u8]>| async move {
        let mut headers = headers.to_vec();
        if body.is_some() {
            headers.push(("Content-Type", "application/json"));
        }
        http(server.addr, method, &path, &headers, body).await
    };
    let list = request("GET", "/api/orders".into(), None).await;
    assert_eq!(list.status, 200);
    let listed: Vec<i64> = list
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(ViewCopy::key)
        .collect();
    assert_eq!(listed, vec![ann as i64]);
    let page = request("GET", "/api/orders?limit=1&after_id=0".into(), None).await;
    assert_eq!(page.json()[0]["id"], ann);
    assert_eq!(
        request("GET", format!("/api/orders/{ann}"), None)
            .await
            .status,
        200
    );
    assert_eq!(
        request("GET", format!("/api/orders/{bob}"), None)
            .await
            .status,
        404
    );
    let before = rows_where(&db, "true").await;
    let refused = [
        request(
            "POST",
            "/api/orders".into(),
            Some(br#"{"customer_name":"Bob","product_name":"x"}"#),
        )
        .await,
        request(
            "PATCH",
            format!("/api/orders/{ann}"),
            Some(br#"{"customer_name":"Bob"}"#),
        )
        .await,
        request(
            "PATCH",
            format!("/api/orders/{bob}"),
            Some(br#"{"customer_name":"Ann"}"#),
        )
        .await,
        request(
            "PUT",
            format!("/api/orders/{bob}"),
            Some(br#"{"status":"shipped"}"#),
        )
        .await,
        request("DELETE", format!("/api/orders/{bob}"), None).await,
    ];
    for response in &refused {
        assert_eq!(response.status, 403, "{}", response.body);
        assert_eq!(response.json()["error"]["code"], "forbidden");
    }
    assert_eq!(rows_where(&db, "true").await, before, "nothing was written");
    let created = request(
        "POST",
        "/api/orders".into(),
        Some(br#"{"customer_name":"Zed","product_name":"x"}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let moved = request(
        "PATCH",
        format!("/api/orders/{ann}"),
        Some(br#"{"customer_name":"Zed"}"#),
    )
    .await;
    assert_eq!(moved.status, 200, "{}", moved.body);
    assert_eq!(
        request("DELETE", format!("/api/orders/{ann}"), None)
            .await
            .status,
        204
    );
    // Without a token, reads stay open.
    let open = http(server.addr, "GET", "/api/orders", &[], None).await;
    assert_eq!(open.json().as_array().unwrap().len(), 32);
}

#[tokio::test]
async fn a_filter_claim_that_is_malformed_or_names_unknown_things_is_a_401_everywhere() {
    let db = TestDb::new();
    let server = TestServer::start(Config {
        jwt_secret: Some(SECRET.into()),
        auth_streams: true,
        ..db.config()
    })
    .await;
    let cases = [
        (
            serde_json::json!({"filter": ["orders"]}),
            "invalid `filter` claim",
        ),
        (
            serde_json::json!({"filter": {"orders": "status=eq.x"}}),
            "array of filters",
        ),
        (
            serde_json::json!({"filter": {"orders": ["status=like.x"]}}),
            "unknown operator",
        ),
        (
            serde_json::json!({"filter": {"orders": ["nope=eq.x"]}}),
            "no column `nope`",
        ),
        (
            serde_json::json!({"filter": {"nope": ["id=eq.1"]}}),
            "`nope` is not a tracked table",
        ),
    ];
    for (claims, reason) in cases {
        let bad = token(claims.clone());
        for (method, path) in [
            ("GET", format!("/api/orders?access_token={bad}")),
            ("GET", format!("/api/orders/1?access_token={bad}")),
            ("DELETE", format!("/api/orders/1?access_token={bad}")),
            ("GET", format!("/ws?access_token={bad}")),
            ("GET", format!("/events?access_token={bad}")),
        ] {
            let response = http(server.addr, method, &path, &[], None).await;
            assert_eq!(response.status, 401, "{claims} {method} {path}");
            let error = &response.json()["error"];
            assert_eq!(error["code"], "unauthorized");
            let message = error["message"].as_str().unwrap();
            assert!(message.contains(reason), "{claims}: {message}");
        }
    }
}

#[tokio::test]
async fn a_snapshot_cut_off_midway_by_the_database_ends_the_stream_and_a_new_one_starts_over() {
    let db = TestDb::new();
    bulk_orders(&db, 9000).await;
    let server = TestServer::start(db.config()).await;
    let addr = server.addr;
    let admin = db.client().await;
    let cut_snapshot_connections = || async {
        // The snapshot's connection waits "idle in transaction" between its FETCHes.
        let cut: i64 = admin
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND query LIKE 'FETCH%rowcast_snapshot'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(cut, 1, "one snapshot in progress");
    };
    // A small receive buffer holds the gateway on its first pages, so the cut comes
    // before the snapshot ends.
    let stream = support::clients::small_buffer_stream(addr).await;
    let mut ws = WsClient::connect_on(stream, addr, "snapshot=true").await;
    assert_eq!(ws.next_json().await["type"], "snapshot");
    cut_snapshot_connections().await;
    let close = loop {
        match ws.next_message().await {
            tokio_tungstenite::tungstenite::Message::Close(frame) => break frame,
            tokio_tungstenite::tungstenite::Message::Text(text) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(
                    message["type"], "snapshot",
                    "no ready after a cut: {message}"
                );
            }
            _ => {}
        }
    };
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 1011);
    let stream = support::clients::small_buffer_stream(addr).await;
    let mut sse = SseClient::connect_on(stream, addr, "snapshot=true", &[]).await;
    assert_eq!(sse.next_event().await.json()["type"], "snapshot");
    cut_snapshot_connections().await;
    while let Some(block) = sse.next_block().await {
        if let Some(kind) = &block.event {
            assert_eq!(kind, "snapshot", "no ready after a cut: {block:?}");
        }
    }
    assert!(sse.ended_cleanly(), "the stream ends with its last chunk");
    // Starting over gets the whole table.
    for transport in BOTH {
        let mut client = Client::open(transport, addr, "snapshot=true").await;
        let mut copy = ViewCopy::default();
        let (pages, ready) = client.until_ready().await;
        pages.iter().for_each(|page| {
            copy.apply(page);
        });
        copy.apply(&ready);
        assert_eq!(copy.rows.len(), 9000, "{transport:?}");
    }
}
