//! The streams, `GET /ws` and `GET /events`, exactly as docs/PROTOCOL.md ("Streams",
//! "Messages", "WebSocket", "Server-Sent Events": positions, heartbeats, slow clients,
//! shutdown) states them. Every message received is also checked against
//! docs/asyncapi.yaml by the clients in tests/support.
//!
//! Expected event ids always come from `realtime.change_log` itself, so every check
//! compares what a client saw with what the database committed.

mod support;
use support::*;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use rowcast::config::Config;
use serde_json::{json, Value};
use support::clients::{small_buffer_stream, upgrade_request, RawWs};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// A message's `id`, which must be a decimal string.
fn id_of(message: &Value) -> u64 {
    message["id"]
        .as_str()
        .unwrap_or_else(|| panic!("id is not a string in {message}"))
        .parse()
        .unwrap_or_else(|_| panic!("id is not decimal in {message}"))
}

fn ids(messages: &[Value]) -> Vec<u64> {
    messages.iter().map(id_of).collect()
}

/// The `ready` message a client must get.
fn ready(head: u64, replayed: usize) -> Value {
    json!({"type": "ready", "head": head.to_string(), "replayed": replayed})
}

/// `filter=<expression>`, encoded.
fn filter(expression: &str) -> String {
    format!("filter={}", enc(expression))
}

/// The newest id that ever existed.
async fn head(db: &TestDb) -> u64 {
    captured(db).await;
    rowcast::pg::changes::head(&db.client().await)
        .await
        .unwrap()
}

/// Ids in `change_log` after `since` for which the SQL `predicate` holds, in order.
async fn logged_ids(db: &TestDb, since: u64, predicate: &str) -> Vec<u64> {
    captured(db).await;
    db.client()
        .await
        .query(
            &format!(
                "SELECT id FROM realtime.change_log WHERE id > $1 AND ({predicate}) ORDER BY id"
            ),
            &[&(since as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, i64>(0) as u64)
        .collect()
}

/// Inserts `n` orders, one transaction each.
async fn insert_orders(db: &TestDb, n: usize) {
    let client = db.client().await;
    for i in 0..n {
        insert_order(&client, &format!("Customer {i}"), "Widget").await;
    }
}

/// Runs a statement that returns one jsonb value.
async fn json_row(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Value {
    client.query_one(sql, params).await.unwrap().get(0)
}

/// A tracked table of documents, for events of any size.
async fn create_docs(db: &TestDb) {
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE docs (id serial PRIMARY KEY, body text);
             SELECT realtime.track('docs');",
        )
        .await
        .unwrap();
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.ffffff]Z` into microseconds since the Unix epoch;
/// `None` for anything else (an offset, a missing `Z`, a space for `T`).
fn rfc3339_utc_micros(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' {
        return None;
    }
    if b[13] != b':' || b[16] != b':' || *b.last()? != b'Z' {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let micros = match b[19] {
        b'Z' if b.len() == 20 => 0,
        b'.' => {
            let fraction = &text[20..text.len() - 1];
            if fraction.is_empty() || fraction.len() > 6 {
                return None;
            }
            digits(20..text.len() - 1)? * 10i64.pow(6 - fraction.len() as u32)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

/// Checks one change message against the documented shape and against the
/// `change_log` row it came from.
async fn assert_change(
    db: &TestDb,
    message: &Value,
    op: &str,
    table: &str,
    row: Option<&Value>,
    old: Option<&Value>,
) {
    assert_eq!(message["type"], "change", "{message}");
    assert_eq!(message["op"], op, "{message}");
    assert_eq!(message["table"], table, "{message}");
    let fields = message.as_object().unwrap();
    match row {
        Some(row) => assert_eq!(&message["row"], row, "{message}"),
        None => assert!(!fields.contains_key("row"), "no row expected: {message}"),
    }
    match old {
        Some(old) => assert_eq!(&message["old"], old, "{message}"),
        None => assert!(!fields.contains_key("old"), "no old expected: {message}"),
    }
    let allowed = ["type", "id", "table", "op", "row", "old", "committed_at"];
    assert!(
        fields.keys().all(|k| allowed.contains(&k.as_str())),
        "{message}"
    );
    let committed_at = message["committed_at"].as_str().expect("committed_at");
    let micros = rfc3339_utc_micros(committed_at)
        .unwrap_or_else(|| panic!("committed_at {committed_at:?} is not RFC 3339 UTC"));
    let logged: i64 = db
        .client()
        .await
        .query_one(
            "SELECT (extract(epoch FROM committed_at) * 1000000)::int8
             FROM realtime.change_log WHERE id = $1",
            &[&(id_of(message) as i64)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        micros, logged,
        "committed_at {committed_at} is not the commit time in UTC"
    );
}

// ---------------------------------------------------------------------------------
// Change messages
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn rest_writes_arrive_on_both_transports_with_the_documented_fields() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, "").await;
        client.until_ready().await;
        clients.push(client);
    }
    let created = http(
        server.addr,
        "POST",
        "/api/orders",
        &[],
        Some(br#"{"customer_name":"Ann","product_name":"Book"}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let created = created.json();
    let path = format!("/api/orders/{}", created["id"]);
    let updated = http(
        server.addr,
        "PATCH",
        &path,
        &[],
        Some(br#"{"status":"shipped"}"#),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    let updated = updated.json();
    assert_eq!(
        http(server.addr, "DELETE", &path, &[], None).await.status,
        204
    );

    let expected = logged_ids(&db, 0, "true").await;
    assert_eq!(expected.len(), 3);
    let mut seen = Vec::new();
    for client in &mut clients {
        let changes = client.changes(3).await;
        assert_eq!(ids(&changes), expected);
        assert_change(&db, &changes[0], "INSERT", "orders", Some(&created), None).await;
        assert_change(
            &db,
            &changes[1],
            "UPDATE",
            "orders",
            Some(&updated),
            Some(&created),
        )
        .await;
        // DELETE carries the old row as `row`, and no `old`.
        assert_change(&db, &changes[2], "DELETE", "orders", Some(&updated), None).await;
        seen.push(changes);
    }
    assert_eq!(seen[0], seen[1], "both transports carry the same JSON");
}

#[tokio::test]
async fn sql_writes_arrive_on_both_transports_with_the_documented_fields() {
    let db = TestDb::new();
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE SCHEMA audit;
         CREATE TABLE audit.notes (id serial PRIMARY KEY, note text, score numeric);
         SELECT realtime.track('audit.notes');",
    )
    .await
    .unwrap();
    let server = TestServer::start(db.config()).await;
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, "").await;
        client.until_ready().await;
        clients.push(client);
    }
    let inserted = json_row(
        &sql,
        "INSERT INTO orders (customer_name, product_name) VALUES ('Bea', 'Lamp')
         RETURNING to_jsonb(orders.*)",
        &[],
    )
    .await;
    let id = inserted["id"].as_i64().unwrap() as i32;
    let updated = json_row(
        &sql,
        "UPDATE orders SET status = 'delivered' WHERE id = $1 RETURNING to_jsonb(orders.*)",
        &[&id],
    )
    .await;
    let deleted = json_row(
        &sql,
        "DELETE FROM orders WHERE id = $1 RETURNING to_jsonb(orders.*)",
        &[&id],
    )
    .await;
    let note = json_row(
        &sql,
        "INSERT INTO audit.notes (note, score) VALUES ('hi\nthere', 1.5) RETURNING to_jsonb(notes.*)",
        &[],
    )
    .await;
    sql.batch_execute("TRUNCATE orders").await.unwrap();

    let expected = logged_ids(&db, 0, "true").await;
    assert_eq!(expected.len(), 5);
    for client in &mut clients {
        let changes = client.changes(5).await;
        assert_eq!(ids(&changes), expected);
        assert_change(&db, &changes[0], "INSERT", "orders", Some(&inserted), None).await;
        assert_change(
            &db,
            &changes[1],
            "UPDATE",
            "orders",
            Some(&updated),
            Some(&inserted),
        )
        .await;
        assert_change(&db, &changes[2], "DELETE", "orders", Some(&deleted), None).await;
        // Outside schema public the table is qualified.
        assert_change(&db, &changes[3], "INSERT", "audit.notes", Some(&note), None).await;
        assert_change(&db, &changes[4], "TRUNCATE", "orders", None, None).await;
    }
}

#[tokio::test]
async fn an_sse_stream_opens_with_a_retry_line_and_event_stream_headers() {
    let db = TestDb::new();
    let config = Config {
        sse_retry: Duration::from_millis(2500),
        ..db.config()
    };
    let server = TestServer::start(config).await;
    let mut sse = SseClient::connect(server.addr, "", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    let first = sse.next_block().await.expect("a first block");
    assert_eq!(
        first,
        SseEvent {
            retry: Some("2500".into()),
            ..SseEvent::default()
        },
        "the stream must open with `retry: <ms>` alone"
    );
    let ready_event = sse.next_block().await.expect("ready");
    assert_eq!(ready_event.event.as_deref(), Some("ready"));
}

/// Reads one response that has a Content-Length, leaving the connection open.
async fn read_one_response(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut raw = Vec::new();
    loop {
        let text = String::from_utf8_lossy(&raw).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_owned())
                })
                .and_then(|v| v.parse().ok())
                .expect("a content-length");
            if body.len() >= length {
                return text;
            }
        }
        let mut buf = [0u8; 4096];
        let n = within("a response", stream.read(&mut buf)).await.unwrap();
        assert!(n > 0, "closed before the response ended");
        raw.extend_from_slice(&buf[..n]);
    }
}

#[tokio::test]
async fn an_sse_stream_is_the_same_first_on_a_connection_after_another_request_or_in_pieces() {
    // A connection's first request, complete, is streamed on the socket itself; one
    // after another request on a kept-alive connection, or whose head arrives in
    // pieces, goes through hyper. A client cannot tell them apart.
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let client = db.client().await;
    let connect = || async { tokio::net::TcpStream::connect(server.addr).await.unwrap() };
    let first = SseClient::connect_on(connect().await, server.addr, "tables=orders", &[]).await;
    let mut kept_alive = connect().await;
    kept_alive
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_one_response(&mut kept_alive)
        .await
        .starts_with("HTTP/1.1 200"));
    let after = SseClient::connect_on(kept_alive, server.addr, "tables=orders", &[]).await;
    let request = support::clients::events_request(server.addr, "tables=orders", &[]);
    let (start, rest) = request.split_at(12);
    let pieces =
        SseClient::connect_in_pieces(connect().await, &[start.as_bytes(), rest.as_bytes()]).await;
    let mut clients = [first, after, pieces];
    for sse in &mut clients {
        assert_eq!(sse.status, 200);
        assert_eq!(sse.header("content-type"), Some("text/event-stream"));
        assert_eq!(sse.header("cache-control"), Some("no-cache"));
        assert_eq!(sse.header("x-accel-buffering"), Some("no"));
        assert_eq!(sse.header("transfer-encoding"), Some("chunked"));
        assert!(sse.header("date").is_some());
        let retry = sse.next_block().await.expect("the retry block");
        assert!(retry.retry.is_some(), "{retry:?}");
        let (backlog, ready) = sse.until_ready().await;
        assert!(backlog.is_empty());
        assert_eq!(ready.event.as_deref(), Some("ready"));
    }
    let order = insert_order(&client, "Ann", "Book").await;
    let expected = logged_ids(&db, 0, "true").await;
    for sse in &mut clients {
        let change = checked_sse(&sse.changes(1).await[0]);
        assert_eq!(change["row"]["id"], order);
        assert_eq!(vec![id_of(&change)], expected);
    }
    assert!(server.shutdown().await, "the drain completed");
    for sse in &mut clients {
        assert!(sse.ends().await);
        assert!(sse.ended_cleanly(), "each body ends with its last chunk");
    }
}

#[tokio::test]
async fn an_sse_client_that_vanishes_is_noticed_on_either_path() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let direct = SseClient::connect(server.addr, "", &[]).await;
    let request = support::clients::events_request(server.addr, "", &[]);
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (start, rest) = request.split_at(5);
    let through_hyper =
        SseClient::connect_in_pieces(stream, &[start.as_bytes(), rest.as_bytes()]).await;
    let gauge = "rowcast_connections{transport=\"sse\"}";
    let deadline = Instant::now() + WAIT;
    while metric(server.addr, gauge).await != 2.0 {
        assert!(Instant::now() < deadline, "both streams counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Gone without a word, with no event to write that would fail.
    drop(direct);
    drop(through_hyper);
    while metric(server.addr, gauge).await != 0.0 {
        assert!(Instant::now() < deadline, "both vanished clients noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// ready, resume, reset
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn ready_is_sent_exactly_once_with_replayed_and_head() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    insert_orders(&db, 2).await;
    let start = head(&db).await;
    insert_orders(&db, 3).await;
    server.caught_up(&db).await;
    let now = head(&db).await;
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &format!("since={start}")).await;
        let (backlog, message) = client.until_ready().await;
        assert_eq!(message, ready(now, 3), "{transport:?}");
        assert_eq!(ids(&backlog), logged_ids(&db, start, "true").await);
        clients.push(client);
    }
    // A write made right after `ready` arrives, and no second `ready` comes.
    insert_orders(&db, 2).await;
    for client in &mut clients {
        assert_eq!(
            ids(&client.changes(2).await),
            logged_ids(&db, now, "true").await
        );
    }
    // ready and heartbeats are not deliveries: 3 replayed + 2 live per transport.
    for transport in ["ws", "sse"] {
        let series = format!("rowcast_events_delivered_total{{transport=\"{transport}\"}}");
        let deadline = Instant::now() + WAIT;
        let mut delivered = metric(server.addr, &series).await;
        while delivered < 5.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
            delivered = metric(server.addr, &series).await;
        }
        assert_eq!(delivered, 5.0, "{series}");
    }
}

#[tokio::test]
async fn since_equal_to_the_head_replays_nothing() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    insert_orders(&db, 3).await;
    server.caught_up(&db).await;
    let now = head(&db).await;
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &format!("since={now}")).await;
        let (backlog, message) = client.until_ready().await;
        assert!(backlog.is_empty(), "{transport:?}: {backlog:?}");
        assert_eq!(message, ready(now, 0));
    }
    // No `since`: start at the head as well.
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, "").await;
        assert_eq!(client.until_ready().await, (vec![], ready(now, 0)));
    }
}

#[tokio::test]
async fn resuming_inside_the_ring_sends_exactly_the_missed_events_then_live_ones() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    insert_orders(&db, 5).await;
    server.caught_up(&db).await;
    let all = logged_ids(&db, 0, "true").await;
    let since = all[1];
    let now = head(&db).await;
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &format!("since={since}")).await;
        let (backlog, message) = client.until_ready().await;
        assert_eq!(ids(&backlog), &all[2..], "{transport:?}");
        assert_eq!(message, ready(now, 3));
        clients.push(client);
    }
    insert_orders(&db, 1).await;
    for client in &mut clients {
        assert_eq!(
            ids(&client.changes(1).await),
            logged_ids(&db, now, "true").await
        );
    }
}

#[tokio::test]
async fn resuming_from_behind_the_ring_reads_change_log_in_order_then_goes_live() {
    let db = TestDb::new();
    let server = TestServer::start(Config {
        ring_capacity: 8,
        ..db.config()
    })
    .await;
    let start = head(&db).await;
    insert_orders(&db, 50).await;
    server.caught_up(&db).await;
    assert!(server.gateway.log.len() <= 8);
    assert!(
        !server.gateway.log.covers(start),
        "the ring must not hold the backlog"
    );
    let expected = logged_ids(&db, start, "true").await;
    assert_eq!(expected.len(), 50);
    let now = head(&db).await;
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &format!("since={start}")).await;
        let (backlog, message) = client.until_ready().await;
        assert_eq!(ids(&backlog), expected, "{transport:?}");
        assert_eq!(message, ready(now, 50));
        clients.push(client);
    }
    insert_orders(&db, 3).await;
    for client in &mut clients {
        assert_eq!(
            ids(&client.changes(3).await),
            logged_ids(&db, now, "true").await
        );
    }
}

/// A gateway with a ring of 8, 20 orders, and `change_log` pruned empty.
async fn pruned_history() -> (TestDb, TestServer, Vec<u64>) {
    let db = TestDb::new();
    let server = TestServer::start(Config {
        ring_capacity: 8,
        ..db.config()
    })
    .await;
    insert_orders(&db, 20).await;
    server.caught_up(&db).await;
    let all = logged_ids(&db, 0, "true").await;
    let deleted: i64 = db
        .client()
        .await
        .query_one("SELECT realtime.prune(NULL, 0, 100000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 20);
    (db, server, all)
}

#[tokio::test]
async fn a_pruned_position_gets_reset_before_ready_and_the_stream_goes_on_live() {
    let (db, server, all) = pruned_history().await;
    let now = *all.last().unwrap();
    assert_eq!(head(&db).await, now);
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &format!("since={}", all[1])).await;
        // SSE's reset is checked to carry `id: <head>` by `checked_sse`.
        let (before, message) = client.until_ready().await;
        assert_eq!(
            before,
            vec![json!({"type": "reset", "reason": "history_gone", "head": now.to_string()})],
            "{transport:?}"
        );
        assert_eq!(message, ready(now, 0));
        clients.push(client);
    }
    insert_orders(&db, 1).await;
    for client in &mut clients {
        assert_eq!(
            ids(&client.changes(1).await),
            logged_ids(&db, now, "true").await
        );
    }
}

#[tokio::test]
async fn a_pruned_position_the_ring_still_holds_is_replayed_without_reset() {
    let (db, server, all) = pruned_history().await;
    let now = *all.last().unwrap();
    let since = all[all.len() - 4];
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &format!("since={since}")).await;
        let (backlog, message) = client.until_ready().await;
        assert_eq!(ids(&backlog), &all[all.len() - 3..], "{transport:?}");
        assert_eq!(message, ready(now, 3));
    }
    assert_eq!(head(&db).await, now);
}

#[tokio::test]
async fn a_since_above_every_id_the_database_issued_gets_reset_then_live_events() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    insert_orders(&db, 2).await;
    server.caught_up(&db).await;
    let now = head(&db).await;
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, server.addr, &format!("since={}", now + 5)).await;
        // SSE's reset carries `id: <head>` (checked by `checked_sse`), so a browser
        // does not reconnect with the foreign position.
        let (before, message) = client.until_ready().await;
        assert_eq!(
            before,
            vec![json!({"type": "reset", "reason": "history_gone", "head": now.to_string()})],
            "{transport:?}"
        );
        assert_eq!(message, ready(now, 0));
        clients.push(client);
    }
    let mut sse = SseClient::connect(
        server.addr,
        "",
        &[("Last-Event-ID", &(now + 1).to_string())],
    )
    .await;
    let (before, message) = sse.until_ready().await;
    assert_eq!(before.len(), 1, "{before:?}");
    assert_eq!(checked_sse(&before[0])["type"], "reset");
    assert_eq!(checked_sse(&message), ready(now, 0));
    insert_orders(&db, 3).await;
    let later = logged_ids(&db, now, "true").await;
    for client in &mut clients {
        assert_eq!(ids(&client.changes(3).await), later);
    }
}

#[tokio::test]
async fn a_since_ahead_of_this_replica_but_issued_by_the_database_is_served_from_there() {
    let db = TestDb::new();
    // A replica that reads change_log only every few seconds, so it lags the
    // database (and a replica that clients came from) for a while.
    let lagging = TestServer::start(Config {
        source: rowcast::pg::source::SourceMode::Poll,
        poll_interval: Duration::from_secs(3),
        ..db.config()
    })
    .await;
    insert_orders(&db, 4).await;
    let issued = head(&db).await;
    let mut clients = Vec::new();
    for transport in BOTH {
        let mut client = Client::open(transport, lagging.addr, &format!("since={issued}")).await;
        assert_eq!(
            client.until_ready().await,
            (vec![], ready(issued, 0)),
            "{transport:?}"
        );
        clients.push(client);
    }
    let last = issued.to_string();
    let mut sse = SseClient::connect(lagging.addr, "", &[("Last-Event-ID", &last)]).await;
    let (before, message) = sse.until_ready().await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(checked_sse(&message), ready(issued, 0));
    insert_orders(&db, 3).await;
    let later = logged_ids(&db, issued, "true").await;
    for client in &mut clients {
        assert_eq!(ids(&client.changes(3).await), later);
    }
    let changes: Vec<Value> = within("changes", async {
        let mut out = Vec::new();
        while out.len() < 3 {
            out.push(checked_sse(&sse.next_event().await));
        }
        out
    })
    .await;
    assert_eq!(ids(&changes), later);
}

#[tokio::test]
async fn gaps_from_rolled_back_transactions_never_cause_a_reset() {
    let db = TestDb::new();
    let sql = db.client().await;
    // A transaction that fails at commit, after the capture trigger drew its id.
    sql.batch_execute(
        "CREATE FUNCTION fail_at_commit() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.customer_name = 'FAIL' THEN RAISE EXCEPTION 'refused at commit'; END IF;
             RETURN NULL;
         END $$;
         CREATE CONSTRAINT TRIGGER zz_fail_at_commit AFTER INSERT ON orders
             DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_at_commit();",
    )
    .await
    .unwrap();
    let server = TestServer::start(Config {
        ring_capacity: 8,
        ..db.config()
    })
    .await;
    insert_orders(&db, 3).await;
    let before_gap = head(&db).await;
    for _ in 0..10 {
        let err = sql
            .execute(
                "INSERT INTO orders (customer_name, product_name) VALUES ('FAIL', 'x')",
                &[],
            )
            .await
            .expect_err("the commit must fail");
        let message = err.as_db_error().map(|e| e.message().to_owned());
        assert_eq!(message.as_deref(), Some("refused at commit"));
    }
    if wal_matrix() {
        // WAL capture draws no id for a transaction that never committed: the same gap
        // by hand.
        sql.batch_execute(
            "SELECT nextval('realtime.change_log_id_seq') FROM generate_series(1, 10)",
        )
        .await
        .unwrap();
    }
    let drawn: i64 = sql
        .query_one("SELECT last_value FROM realtime.change_log_id_seq", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(drawn as u64, before_gap + 10, "ten ids lost to rollbacks");
    insert_orders(&db, 20).await;
    server.caught_up(&db).await;
    // Retention deleted everything up to the gap: positions at or above it are intact.
    let max_rows = head(&db).await - before_gap;
    sql.execute(
        "SELECT realtime.prune(NULL, $1, 100000)",
        &[&(max_rows as i64)],
    )
    .await
    .unwrap();
    let pruned_upto: i64 = sql
        .query_one("SELECT pruned_upto FROM realtime.retention", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(pruned_upto as u64, before_gap);
    let after_gap = logged_ids(&db, before_gap, "true").await;
    assert_eq!(after_gap.len(), 20);
    assert_eq!(after_gap[0], before_gap + 11, "a gap of ten ids");
    assert!(!server.gateway.log.covers(before_gap));
    let now = head(&db).await;
    for since in [before_gap, before_gap + 5, before_gap + 10] {
        for transport in BOTH {
            let mut client = Client::open(transport, server.addr, &format!("since={since}")).await;
            let (backlog, message) = client.until_ready().await;
            assert_eq!(ids(&backlog), after_gap, "{transport:?} since={since}");
            assert_eq!(message, ready(now, 20));
        }
    }
}

#[tokio::test]
async fn sse_last_event_id_wins_over_since() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    insert_orders(&db, 5).await;
    server.caught_up(&db).await;
    let all = logged_ids(&db, 0, "true").await;
    for (since, last_event_id) in [(all[0], all[2]), (all[3], all[1])] {
        let last = last_event_id.to_string();
        let mut sse = SseClient::connect(
            server.addr,
            &format!("since={since}"),
            &[("Last-Event-ID", &last)],
        )
        .await;
        let (backlog, _) = sse.until_ready().await;
        let backlog: Vec<Value> = backlog.iter().map(checked_sse).collect();
        assert_eq!(
            ids(&backlog),
            logged_ids(&db, last_event_id, "true").await,
            "since={since} Last-Event-ID={last}"
        );
    }
}

// ---------------------------------------------------------------------------------
// Invalid parameters
// ---------------------------------------------------------------------------------

/// Checks a refusal: 400, a JSON error body naming `field`, no stream.
fn assert_refused(response: &HttpResponse, field: &str, what: &str) {
    assert_eq!(response.status, 400, "{what}: {}", response.body);
    assert_eq!(
        response.header("content-type"),
        Some("application/json"),
        "{what}"
    );
    let body = response.json();
    let error = &body["error"];
    assert!(error["code"].is_string(), "{what}: {body}");
    assert!(error["message"].is_string(), "{what}: {body}");
    assert_eq!(error["field"], field, "{what}: {body}");
}

#[tokio::test]
async fn bogus_since_and_last_event_id_are_refused_with_400_before_any_stream() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    for bogus in [
        "-1",
        "abc",
        "1.5",
        "18446744073709551616",
        "",
        "+1",
        " 1",
        "0x10",
    ] {
        let query = format!("since={}", enc(bogus));
        let sse = http(server.addr, "GET", &format!("/events?{query}"), &[], None).await;
        assert_refused(&sse, "since", &format!("/events?{query}"));
        let ws = upgrade_request(server.addr, &query).await;
        assert_refused(&ws, "since", &format!("upgrade /ws?{query}"));
    }
    for bogus in ["-1", "abc", "1.5", "18446744073709551616", "0x10"] {
        let sse = http(
            server.addr,
            "GET",
            "/events",
            &[("Last-Event-ID", bogus)],
            None,
        )
        .await;
        assert_refused(&sse, "Last-Event-ID", &format!("Last-Event-ID: {bogus:?}"));
    }
    // The largest u64 is a valid position, on either parameter.
    assert_eq!(
        upgrade_request(server.addr, "since=18446744073709551615")
            .await
            .status,
        101
    );
    let sse = SseClient::connect(
        server.addr,
        "",
        &[("Last-Event-ID", "18446744073709551615")],
    )
    .await;
    assert_eq!(sse.status, 200);
}

/// docs/PROTOCOL.md: `since` is a decimal u64, anything else a 400, and `Last-Event-ID` is
/// the same position. The router treats an empty `Last-Event-ID` as absent instead.
#[tokio::test]
async fn an_empty_last_event_id_is_refused_with_400() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let sse = http(
        server.addr,
        "GET",
        "/events",
        &[("Last-Event-ID", "")],
        None,
    )
    .await;
    assert_refused(&sse, "Last-Event-ID", "an empty Last-Event-ID");
}

#[tokio::test]
async fn bad_tables_ops_filters_and_unknown_parameters_are_refused_on_both_endpoints() {
    let db = TestDb::new();
    create_docs(&db).await;
    let server = TestServer::start(db.config()).await;
    let cases = [
        ("tables=nope".to_owned(), "tables"),
        ("tables=orders,pg_class".to_owned(), "tables"),
        ("ops=UPSERT".to_owned(), "ops"),
        ("ops=insert,upsert".to_owned(), "ops"),
        (filter("nope=eq.1"), "filter"),
        (filter("status=like.x"), "filter"),
        (filter("status=in.(a"), "filter"),
        (filter("status=in.(\"a"), "filter"),
        (filter("status"), "filter"),
        // A column none of the selected tables has.
        (format!("tables=docs&{}", filter("status=eq.x")), "filter"),
        (
            format!("{}&{}", filter("id=gt.1"), filter("x=eq.1")),
            "filter",
        ),
        ("foo=1".to_owned(), "foo"),
        ("tables=orders&limit=5".to_owned(), "limit"),
    ];
    for (query, field) in &cases {
        let sse = http(server.addr, "GET", &format!("/events?{query}"), &[], None).await;
        assert_refused(&sse, field, &format!("/events?{query}"));
        let ws = upgrade_request(server.addr, query).await;
        assert_refused(&ws, field, &format!("upgrade /ws?{query}"));
    }
    let unknown = http(server.addr, "GET", "/events?foo=1", &[], None).await;
    assert_eq!(unknown.json()["error"]["code"], "unknown_parameter");
    let bad_filter = http(
        server.addr,
        "GET",
        &format!("/events?{}", filter("x=eq.1")),
        &[],
        None,
    )
    .await;
    assert_eq!(bad_filter.json()["error"]["code"], "bad_filter");
    // The same request shape with valid parameters is upgraded.
    let query = format!("tables=orders&ops=insert,Delete&{}", filter("id=gt.1"));
    assert_eq!(upgrade_request(server.addr, &query).await.status, 101);
    let query = format!("tables=docs,orders&{}", filter("status=eq.x"));
    assert_eq!(upgrade_request(server.addr, &query).await.status, 101);
}

// ---------------------------------------------------------------------------------
// Filters
// ---------------------------------------------------------------------------------

/// Orders and docs with varied values, then a TRUNCATE of docs; returns the position
/// before them.
async fn varied_changes(db: &TestDb) -> u64 {
    let start = head(db).await;
    let sql = db.client().await;
    let customers = ["Ann", "Smith, John", "Bob", "Zoë", "Dot)Com"];
    let statuses = ["pending", "shipped", "delivered"];
    for i in 0..12 {
        sql.execute(
            "INSERT INTO orders (customer_name, product_name, status) VALUES ($1, $2, $3)",
            &[&customers[i % 5], &format!("Item {i}"), &statuses[i % 3]],
        )
        .await
        .unwrap();
    }
    sql.batch_execute(
        "UPDATE orders SET status = 'shipped' WHERE id IN (1, 11);
         DELETE FROM orders WHERE id IN (3, 12);
         INSERT INTO docs (body) VALUES ('a'), ('b'), (NULL);",
    )
    .await
    .unwrap();
    // Its own transaction: TRUNCATE refuses a table with pending (deferred) captures.
    sql.batch_execute("TRUNCATE docs").await.unwrap();
    start
}

/// Filters and the SQL that selects the same `change_log` rows.
fn filter_cases() -> Vec<(String, String)> {
    let number = |cmp: &str| {
        format!(
            "op = 'TRUNCATE' OR \
             (jsonb_typeof(row->'id') = 'number' AND (row->>'id')::numeric {cmp})"
        )
    };
    vec![
        (
            filter("status=eq.shipped"),
            "op = 'TRUNCATE' OR row->>'status' = 'shipped'".to_owned(),
        ),
        (
            filter("status=neq.pending"),
            "op = 'TRUNCATE' OR row->>'status' <> 'pending'".to_owned(),
        ),
        // As numbers, not text: "10" > "9" only numerically.
        (filter("id=gt.9"), number("> 9")),
        (filter("id=lt.10"), number("< 10")),
        (
            filter("customer_name=in.(Ann,\"Smith, John\",\"Dot)Com\")"),
            "op = 'TRUNCATE' OR row->>'customer_name' IN ('Ann', 'Smith, John', 'Dot)Com')"
                .to_owned(),
        ),
        // Text compares by code point.
        (
            filter("customer_name=gt.Smith"),
            "op = 'TRUNCATE' OR row->>'customer_name' > 'Smith' COLLATE \"C\"".to_owned(),
        ),
        (
            filter("customer_name=lte.Bob"),
            "op = 'TRUNCATE' OR row->>'customer_name' <= 'Bob' COLLATE \"C\"".to_owned(),
        ),
        // A JSON null matches nothing, not even `neq`.
        (
            filter("body=neq.zzz"),
            "op = 'TRUNCATE' OR row->>'body' <> 'zzz'".to_owned(),
        ),
        (
            format!("{}&{}", filter("status=eq.shipped"), filter("id=gt.5")),
            "op = 'TRUNCATE' OR (row->>'status' = 'shipped' AND (row->>'id')::int > 5)".to_owned(),
        ),
        ("ops=delete".to_owned(), "op = 'DELETE'".to_owned()),
        (
            "tables=orders".to_owned(),
            "\"table\" = 'orders'".to_owned(),
        ),
        (
            "tables=docs&ops=INSERT,truncate".to_owned(),
            "\"table\" = 'docs' AND op IN ('INSERT', 'TRUNCATE')".to_owned(),
        ),
        // A filter nothing matches still passes every TRUNCATE.
        (
            filter("customer_name=eq.Nobody"),
            "op = 'TRUNCATE'".to_owned(),
        ),
    ]
}

#[tokio::test]
async fn filters_select_exactly_the_matching_events_in_the_backlog() {
    let db = TestDb::new();
    create_docs(&db).await;
    let server = TestServer::start(db.config()).await;
    let start = varied_changes(&db).await;
    server.caught_up(&db).await;
    let total = logged_ids(&db, start, "true").await.len();
    let now = head(&db).await;
    for (query, predicate) in filter_cases() {
        let expected = logged_ids(&db, start, &predicate).await;
        assert!(
            !expected.is_empty() && expected.len() < total,
            "{query} must select some events but not all"
        );
        for transport in BOTH {
            let mut client =
                Client::open(transport, server.addr, &format!("since={start}&{query}")).await;
            let (backlog, message) = client.until_ready().await;
            assert_eq!(ids(&backlog), expected, "{transport:?} {query}");
            assert_eq!(message, ready(now, expected.len()), "{transport:?} {query}");
        }
    }
}

#[tokio::test]
async fn live_filtered_clients_get_only_matching_events_and_every_truncate() {
    let db = TestDb::new();
    create_docs(&db).await;
    let server = TestServer::start(db.config()).await;
    let cases = [
        (
            Transport::Ws,
            filter("customer_name=eq.Bob"),
            "op = 'TRUNCATE' OR row->>'customer_name' = 'Bob'",
        ),
        (
            Transport::Sse,
            format!("tables=orders&{}", filter("status=eq.shipped")),
            "\"table\" = 'orders' AND (op = 'TRUNCATE' OR row->>'status' = 'shipped')",
        ),
        (
            Transport::Ws,
            "ops=DELETE,truncate&tables=orders".to_owned(),
            "\"table\" = 'orders' AND op IN ('DELETE', 'TRUNCATE')",
        ),
        (
            Transport::Sse,
            filter("customer_name=in.(\"Smith, John\",Zoë)"),
            "op = 'TRUNCATE' OR row->>'customer_name' IN ('Smith, John', 'Zoë')",
        ),
    ];
    let mut clients = Vec::new();
    for (transport, query, _) in &cases {
        let mut client = Client::open(*transport, server.addr, query).await;
        client.until_ready().await;
        clients.push(client);
    }
    let start = varied_changes(&db).await;
    db.client()
        .await
        .batch_execute("TRUNCATE orders")
        .await
        .unwrap();
    for ((transport, query, predicate), client) in cases.iter().zip(&mut clients) {
        let got = client.changes_until_truncate().await;
        let expected = logged_ids(&db, start, predicate).await;
        assert_eq!(ids(&got), expected, "{transport:?} {query}");
    }
}

// ---------------------------------------------------------------------------------
// Heartbeats
// ---------------------------------------------------------------------------------

fn short_heartbeat(db: &TestDb) -> Config {
    Config {
        heartbeat: Duration::from_millis(300),
        ..db.config()
    }
}

#[tokio::test]
async fn websocket_heartbeats_are_ping_frames_plus_a_position_message() {
    let db = TestDb::new();
    insert_orders(&db, 2).await;
    let server = TestServer::start(short_heartbeat(&db)).await;
    let now = head(&db).await;
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    let (mut pings, mut heartbeats) = (0, Vec::new());
    let deadline = Instant::now() + WAIT;
    while pings < 2 || heartbeats.len() < 2 {
        assert!(Instant::now() < deadline, "{pings} pings, {heartbeats:?}");
        match ws.next_message().await {
            Message::Ping(_) => pings += 1,
            Message::Text(text) => {
                let message: Value = serde_json::from_str(text.as_str()).unwrap();
                assert_eq!(message["type"], "heartbeat", "{message}");
                heartbeats.push(message);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for heartbeat in heartbeats {
        assert_eq!(
            heartbeat,
            json!({"type": "heartbeat", "id": now.to_string()})
        );
    }
}

#[tokio::test]
async fn a_quiet_filtered_client_sees_its_heartbeat_position_pass_non_matching_events() {
    let db = TestDb::new();
    let server = TestServer::start(short_heartbeat(&db)).await;
    let query = filter("customer_name=eq.Nobody");
    let mut ws = WsClient::connect(server.addr, &query).await;
    ws.until_ready().await;
    let mut sse = SseClient::connect(server.addr, &query, &[]).await;
    sse.until_ready().await;
    insert_orders(&db, 3).await;
    let last = head(&db).await.to_string();
    within("a WebSocket heartbeat at the head", async {
        loop {
            let message = match ws.next_message().await {
                Message::Text(text) => serde_json::from_str::<Value>(text.as_str()).unwrap(),
                Message::Ping(_) => continue,
                other => panic!("unexpected {other:?}"),
            };
            assert_eq!(message["type"], "heartbeat", "nothing matches: {message}");
            if message["id"] == last.as_str() {
                break;
            }
        }
    })
    .await;
    within("an SSE id-only block at the head", async {
        loop {
            let block = sse.next_block().await.expect("SSE stream ended");
            assert!(block.event.is_none(), "nothing matches: {block:?}");
            if block.id.as_deref() == Some(last.as_str()) {
                assert!(block.data.is_none(), "an id-only block: {block:?}");
                break;
            }
        }
    })
    .await;
}

#[tokio::test]
async fn sse_heartbeats_send_an_id_only_block_when_the_position_moved_else_a_keepalive() {
    let db = TestDb::new();
    let server = TestServer::start(short_heartbeat(&db)).await;
    let keepalive = SseEvent {
        comments: vec!["keepalive".into()],
        ..SseEvent::default()
    };
    // Unfiltered: `ready` and each change carry their id, so heartbeats never move it.
    let mut sse = SseClient::connect(server.addr, "", &[]).await;
    sse.until_ready().await;
    assert_eq!(sse.next_block().await, Some(keepalive.clone()));
    insert_orders(&db, 1).await;
    let change = within("a change", async {
        loop {
            let block = sse.next_block().await.expect("a change");
            if block != keepalive {
                return block;
            }
        }
    })
    .await;
    assert_eq!(change.event.as_deref(), Some("change"), "{change:?}");
    assert_eq!(sse.next_block().await, Some(keepalive.clone()));
    // Filtered: the position moves past an unmatched event once, then stays.
    let mut quiet = SseClient::connect(server.addr, &filter("status=eq.delivered"), &[]).await;
    quiet.until_ready().await;
    insert_orders(&db, 1).await;
    let last = head(&db).await.to_string();
    let block = within("an id-only block", async {
        loop {
            let block = quiet.next_block().await.expect("a block");
            if block != keepalive {
                return block;
            }
        }
    })
    .await;
    assert_eq!(
        block,
        SseEvent {
            id: Some(last),
            ..SseEvent::default()
        }
    );
    assert_eq!(quiet.next_block().await, Some(keepalive));
}

// ---------------------------------------------------------------------------------
// WebSocket client messages and protocol errors
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_websocket_ping_message_gets_a_pong_and_other_text_an_error_without_closing() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));
    for other in ["hello", r#"{"type":"subscribe"}"#, "{}", "[1,2]", ""] {
        ws.send_text(other).await;
        let reply = ws.next_json().await;
        assert_eq!(reply["type"], "error", "{other:?} → {reply}");
        assert_eq!(reply["code"], "bad_message", "{other:?} → {reply}");
        assert!(reply["message"].is_string(), "{reply}");
    }
    // Still open, still streaming.
    ws.send_text(r#"{"type":"ping"}"#).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));
    insert_orders(&db, 1).await;
    assert_eq!(ids(&ws.changes(1).await), logged_ids(&db, 0, "true").await);
}

#[tokio::test]
async fn a_binary_frame_closes_the_websocket_with_1003() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    ws.socket
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .unwrap();
    assert!(matches!(ws.end().await, WsEnd::Closed(1003, _)));
}

#[tokio::test]
async fn a_message_over_64_kib_closes_the_websocket_with_1009() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    let padded = |len: usize| {
        let head = r#"{"type":"ping","pad":""#;
        format!("{head}{}\"}}", "x".repeat(len - head.len() - 2))
    };
    // Exactly 64 KiB is accepted.
    ws.send_text(&padded(64 * 1024)).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));
    let _ = ws
        .socket
        .send(Message::Text(padded(64 * 1024 + 1).into()))
        .await;
    assert!(matches!(ws.end().await, WsEnd::Closed(1009, _)));
    assert_eq!(
        metric(
            server.addr,
            "rowcast_limit_rejections_total{limit=\"ws_message_size\"}"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn invalid_utf8_in_a_text_frame_closes_the_websocket_with_1007() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut raw = RawWs::connect(server.addr, "").await;
    let first = raw.read_frame().await.expect("ready");
    assert_eq!(first.opcode, 0x1);
    raw.send_frame(0x1, &[b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(raw.until_close().await.map(|(code, _)| code), Some(1007));
}

#[tokio::test]
async fn other_protocol_violations_close_the_websocket_with_1002() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    // A reserved opcode, then a continuation frame with nothing to continue.
    for opcode in [0x3, 0x0] {
        let mut raw = RawWs::connect(server.addr, "").await;
        raw.read_frame().await.expect("ready");
        raw.send_frame(opcode, b"x").await;
        assert_eq!(
            raw.until_close().await.map(|(code, _)| code),
            Some(1002),
            "opcode {opcode:#x}"
        );
    }
}

#[tokio::test]
async fn a_peer_that_never_answers_pings_is_closed_with_4001_and_one_that_does_stays() {
    let db = TestDb::new();
    let server = TestServer::start(short_heartbeat(&db)).await;
    let mut answering = WsClient::connect(server.addr, "").await;
    answering.until_ready().await;
    // Read (and so answer pings) all along; ten heartbeats outlast the silent peer.
    let answering = tokio::spawn(async move {
        let mut heartbeats = 0;
        while heartbeats < 10 {
            match answering.next_message().await {
                Message::Text(text) if text.as_str().contains("heartbeat") => heartbeats += 1,
                Message::Close(frame) => panic!("an answering peer was closed: {frame:?}"),
                _ => {}
            }
        }
    });
    let mut silent = RawWs::connect(server.addr, "").await;
    let mut pings = 0;
    let close = within("a close of the silent peer", async {
        loop {
            let frame = silent
                .read_frame()
                .await
                .expect("closed without a close frame");
            match frame.opcode {
                0x9 => pings += 1,
                0x8 => break frame.close().unwrap(),
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(close, (4001, "ping_timeout".to_owned()));
    assert!(pings >= 2, "closed after {pings} unanswered pings");
    within("ten heartbeats on the answering peer", answering)
        .await
        .expect("the answering peer stays open");
}

// ---------------------------------------------------------------------------------
// Fan-out
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_half_websocket_half_sse_each_receive_every_change_in_order() {
    const CLIENTS: usize = 500;
    const CHANGES: usize = 100;
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let addr = server.addr;
    let started = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(CLIENTS);
    let connecting = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
    let mut tasks = Vec::with_capacity(CLIENTS);
    for i in 0..CLIENTS {
        let transport = BOTH[i % 2];
        let ready_tx = ready_tx.clone();
        let connecting = std::sync::Arc::clone(&connecting);
        tasks.push(tokio::spawn(async move {
            let mut client = {
                let _permit = connecting.acquire().await.unwrap();
                let mut client = Client::open(transport, addr, "").await;
                client.until_ready().await;
                client
            };
            ready_tx.send(()).await.unwrap();
            (transport, ids(&client.changes(CHANGES).await))
        }));
    }
    drop(ready_tx);
    for _ in 0..CLIENTS {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .expect("clients did not connect in time")
            .expect("a client task failed");
    }
    let start = head(&db).await;
    insert_orders(&db, CHANGES).await;
    let expected = logged_ids(&db, start, "true").await;
    assert_eq!(expected.len(), CHANGES);
    for task in tasks {
        let (transport, got) = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("a client did not get every change in time")
            .expect("client task");
        assert_eq!(got, expected, "{transport:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(120));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caught_up_clients_are_written_by_the_fan_out_in_order_on_both_transports() {
    const CHANGES: usize = 200;
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let addr = server.addr;
    let mut clients = Vec::new();
    let ann = filter("customer_name=eq.Ann");
    for query in ["", &ann, "", &ann] {
        for transport in BOTH {
            let mut client = Client::open(transport, addr, query).await;
            client.until_ready().await;
            clients.push((transport, query.to_owned(), client));
        }
    }
    let start = head(&db).await;
    // One by one, so that most changes find every client caught up.
    let sql = db.client().await;
    for i in 0..CHANGES {
        insert_order(&sql, if i % 3 == 0 { "Ann" } else { "Bob" }, "Widget").await;
    }
    let all = logged_ids(&db, start, "true").await;
    let third = logged_ids(&db, start, "row->>'customer_name' = 'Ann'").await;
    assert_eq!(all.len(), CHANGES);
    assert!(!third.is_empty());
    for (transport, query, client) in &mut clients {
        let expected = if query.is_empty() { &all } else { &third };
        let got = ids(&client.changes(expected.len()).await);
        assert_eq!(&got, expected, "{transport:?} {query}");
    }
    // Capture may coalesce commits (WAL capture applies them in batches), so count
    // batches against clients, not changes: without the fan-out there are none.
    let direct = metric(addr, "rowcast_fanout_writes_total").await;
    assert!(
        direct >= clients.len() as f64,
        "the fan-out wrote {direct} batches itself"
    );
}

// ---------------------------------------------------------------------------------
// Slow consumers
// ---------------------------------------------------------------------------------

/// Writes 1 kB documents in batches until `stop` is set (then one batch more), at most
/// `max_batches`; returns how many were written.
async fn flood_docs(
    db: TestDb,
    stop: tokio::sync::watch::Receiver<bool>,
    max_batches: usize,
) -> usize {
    let sql = db.client().await;
    let mut written = 0;
    for _ in 0..max_batches {
        let last = *stop.borrow();
        sql.execute(
            "INSERT INTO docs (body) SELECT repeat(md5(i::text), 32) || lpad(i::text, 24, '0')
             FROM generate_series(1, 200) i",
            &[],
        )
        .await
        .unwrap();
        written += 200;
        if last {
            break;
        }
    }
    written
}

/// The marker that ends a flood.
const END: &str = "END";

async fn insert_end_marker(db: &TestDb) {
    db.client()
        .await
        .execute("INSERT INTO docs (body) VALUES ($1)", &[&END])
        .await
        .unwrap();
}

/// Reads changes until the END marker; returns their ids and the longest pause
/// between two arrivals.
async fn read_until_end(mut client: Client) -> (Vec<u64>, Duration) {
    let mut got = Vec::new();
    let mut longest = Duration::ZERO;
    let mut previous: Option<Instant> = None;
    loop {
        let message = client.next().await;
        assert_eq!(message["type"], "change", "{message}");
        got.push(id_of(&message));
        // The END marker is written after the flood, on the test's schedule.
        if message["row"]["body"] == END {
            return (got, longest);
        }
        let now = Instant::now();
        if let Some(previous) = previous {
            longest = longest.max(now - previous);
        }
        previous = Some(now);
    }
}

/// Waits until `/metrics` counts `n` lagging disconnects.
async fn lagging_disconnects_reach(addr: SocketAddr, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while metric(addr, "rowcast_lagging_disconnects_total").await < n {
        assert!(
            Instant::now() < deadline,
            "the stalled client was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One stalled client of `transport` among a healthy one: the healthy one is never
/// held up, the stalled one is dropped as lagging and resumes losing nothing.
async fn slow_consumer(transport: Transport) {
    let db = TestDb::new();
    create_docs(&db).await;
    let server = TestServer::start(Config {
        send_timeout: Duration::from_secs(1),
        ..db.config()
    })
    .await;
    let addr = server.addr;
    let start = head(&db).await;
    let query = "tables=docs";
    let mut slow = match transport {
        Transport::Ws => {
            Client::Ws(WsClient::connect_on(small_buffer_stream(addr).await, addr, query).await)
        }
        Transport::Sse => Client::Sse(
            SseClient::connect_on(small_buffer_stream(addr).await, addr, query, &[]).await,
        ),
    };
    slow.until_ready().await;
    let mut healthy = Client::open(transport, addr, query).await;
    healthy.until_ready().await;
    let healthy = tokio::spawn(read_until_end(healthy));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flood = tokio::spawn(flood_docs(db.clone(), stop_rx, 250));
    lagging_disconnects_reach(addr, 1.0).await;
    let _ = stop_tx.send(true);

    // Read what the stalled client was sent before it was dropped (at once: the close
    // frame gets one second to go out).
    let mut received = Vec::new();
    match &mut slow {
        Client::Ws(ws) => {
            let close = loop {
                let message = ws.next_message().await;
                match message {
                    Message::Text(text) => {
                        received.push(id_of(&serde_json::from_str(text.as_str()).unwrap()))
                    }
                    Message::Close(frame) => break frame,
                    Message::Ping(_) | Message::Pong(_) => {}
                    other => panic!("unexpected {other:?}"),
                }
            };
            let close = close.expect("a close frame with a code");
            assert_eq!(u16::from(close.code), 4008);
            assert_eq!(close.reason.as_str(), "lagging");
        }
        Client::Sse(sse) => {
            while let Some(block) = sse.next_block().await {
                if block.event.is_some() {
                    received.push(id_of(&checked_sse(&block)));
                }
            }
        }
    }
    assert!(
        !received.is_empty(),
        "the stalled client got nothing at all"
    );
    let written = flood.await.unwrap();
    insert_end_marker(&db).await;
    let expected = logged_ids(&db, start, "true").await;
    assert_eq!(expected.len(), written + 1);
    assert!(
        received.len() < expected.len(),
        "the stalled client was not behind"
    );
    assert_eq!(received, &expected[..received.len()], "a prefix, in order");

    let (got, longest_pause) = tokio::time::timeout(Duration::from_secs(60), healthy)
        .await
        .expect("the healthy client fell behind")
        .unwrap();
    assert_eq!(got, expected, "the healthy client got every event in order");
    assert!(
        longest_pause < Duration::from_millis(750),
        "the healthy client paused {longest_pause:?}: held up by the stalled one?"
    );
    assert_eq!(metric(addr, "rowcast_lagging_disconnects_total").await, 1.0);

    // Resuming from the last id it saw loses nothing.
    let last = *received.last().unwrap();
    let mut resumed = Client::open(transport, addr, &format!("{query}&since={last}")).await;
    let (backlog, _) = resumed.until_ready().await;
    let mut all = received.clone();
    all.extend(ids(&backlog));
    assert_eq!(all, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_never_reads_is_closed_lagging_and_resumes_losing_nothing() {
    slow_consumer(Transport::Ws).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_that_never_reads_is_dropped_and_resumes_losing_nothing() {
    slow_consumer(Transport::Sse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_that_stays_stalled_is_dropped_a_second_after_it_lagged() {
    let db = TestDb::new();
    create_docs(&db).await;
    let server = TestServer::start(Config {
        send_timeout: Duration::from_secs(1),
        ..db.config()
    })
    .await;
    let addr = server.addr;
    let mut stalled = WsClient::connect_on(small_buffer_stream(addr).await, addr, "").await;
    stalled.until_ready().await;
    let ws_connections = "rowcast_connections{transport=\"ws\"}";
    assert_eq!(metric(addr, ws_connections).await, 1.0);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let flood = tokio::spawn(flood_docs(db.clone(), stop_rx, 250));
    lagging_disconnects_reach(addr, 1.0).await;
    let lagged = Instant::now();
    let _ = stop_tx.send(true);
    // The close frame cannot go out while the client reads nothing; after at most a
    // second of trying, the connection is gone.
    while metric(addr, ws_connections).await > 0.0 {
        assert!(
            lagged.elapsed() < Duration::from_secs(3),
            "the stalled socket was kept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    flood.await.unwrap();
    // What the client holds ends; it does not hang.
    loop {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut stalled.socket))
            .await
            .expect("the stalled client's stream did not end")
        {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => {}
        }
    }
}

// ---------------------------------------------------------------------------------
// The real binary: shutdown, restart, curl
// ---------------------------------------------------------------------------------

/// A `rowcast` process on a free port.
struct Process {
    child: tokio::process::Child,
    addr: SocketAddr,
    log: std::path::PathBuf,
}

impl Process {
    async fn spawn(db: &TestDb, extra: &[&str]) -> Process {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = std::env::temp_dir().join(format!(
            "rowcast-streams-{}-{}.log",
            std::process::id(),
            addr.port()
        ));
        let child = tokio::process::Command::new(binary())
            .args(["--listen", &addr.to_string(), "--database-url", &db.url])
            .args(extra)
            .env_remove("DATABASE_URL")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn rowcast");
        let gateway = Process { child, addr, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if readyz_ok(addr).await {
                return gateway;
            }
            assert!(
                Instant::now() < deadline,
                "rowcast did not become ready: {}",
                gateway.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn terminate(&self) {
        let pid = self.child.id().expect("still running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit; panics after `limit`.
    async fn exit_status(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!("rowcast did not exit within {limit:?}: {}", self.stderr()),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.log);
    }
}

#[tokio::test]
async fn sigterm_closes_websockets_with_1001_ends_sse_streams_and_exits_zero() {
    let db = TestDb::new();
    let mut gateway = Process::spawn(&db, &["--shutdown-timeout", "5s"]).await;
    let mut ws = WsClient::connect(gateway.addr, "").await;
    ws.until_ready().await;
    let mut sse = SseClient::connect(gateway.addr, "", &[]).await;
    sse.until_ready().await;
    insert_orders(&db, 1).await;
    ws.changes(1).await;
    sse.changes(1).await;
    let signalled = Instant::now();
    gateway.terminate();
    match ws.end().await {
        WsEnd::Closed(code, _) => assert_eq!(code, 1001),
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(sse.ends().await);
    assert!(sse.ended_cleanly(), "the SSE body must end, not be cut");
    let status = gateway.exit_status(Duration::from_secs(5)).await;
    assert!(status.success(), "{status:?}: {}", gateway.stderr());
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_client_resumes_on_a_restarted_gateway_without_losing_anything() {
    let db = TestDb::new();
    let mut first = Process::spawn(&db, &[]).await;
    let mut ws = WsClient::connect(first.addr, "").await;
    ws.until_ready().await;
    insert_orders(&db, 2).await;
    let seen = ids(&ws.changes(2).await);
    let last = *seen.last().unwrap();
    first.terminate();
    assert!(first.exit_status(WAIT).await.success());
    // Written while no gateway runs.
    insert_orders(&db, 3).await;
    let missed = logged_ids(&db, last, "true").await;
    assert_eq!(missed.len(), 3);

    let second = Process::spawn(&db, &[]).await;
    let now = head(&db).await;
    let mut ws = WsClient::connect(second.addr, &format!("since={last}")).await;
    let (backlog, message) = ws.until_ready().await;
    assert_eq!(ids(&backlog), missed);
    assert_eq!(message, ready(now, 3));
    let last_text = last.to_string();
    let mut sse = SseClient::connect(second.addr, "", &[("Last-Event-ID", &last_text)]).await;
    let (backlog, _) = sse.until_ready().await;
    let backlog: Vec<Value> = backlog.iter().map(checked_sse).collect();
    assert_eq!(ids(&backlog), missed);
    insert_orders(&db, 1).await;
    let live = logged_ids(&db, now, "true").await;
    assert_eq!(ids(&ws.changes(1).await), live);
    let live_sse: Vec<Value> = sse.changes(1).await.iter().map(checked_sse).collect();
    assert_eq!(ids(&live_sse), live);
}

type CurlLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

async fn next_line(lines: &mut CurlLines) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("curl printed nothing in time")
        .unwrap()
        .expect("curl output ended")
}

#[tokio::test]
async fn curl_n_on_events_prints_each_change_as_an_sse_block() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut curl = tokio::process::Command::new("curl")
        .args(["-sN", &server.url("/events")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("curl");
    let mut lines = tokio::io::BufReader::new(curl.stdout.take().unwrap()).lines();
    assert!(next_line(&mut lines).await.starts_with("retry: "));
    within("event: ready", async {
        while next_line(&mut lines).await != "event: ready" {}
    })
    .await;
    let sql = db.client().await;
    let id = insert_order(&sql, "Curl", "Pipe").await;
    let event_id = head(&db).await;
    let previous = within("event: change", async {
        let mut previous = String::new();
        loop {
            let line = next_line(&mut lines).await;
            if line == "event: change" {
                return previous;
            }
            previous = line;
        }
    })
    .await;
    assert_eq!(previous, format!("id: {event_id}"));
    let data = next_line(&mut lines).await;
    let data = data.strip_prefix("data: ").expect("data:");
    support::contract::check_sse_block(Some("change"), data);
    let message: Value = serde_json::from_str(data).unwrap();
    assert_eq!(message["row"]["id"], id);
    assert_eq!(message["row"]["customer_name"], "Curl");
    assert_eq!(
        next_line(&mut lines).await,
        "",
        "a blank line ends the block"
    );
}

#[tokio::test]
async fn an_empty_in_list_is_a_bad_filter_naming_its_column_and_a_quoted_empty_item_is_not() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let query = filter("customer_name=in.()");
    let sse = http(server.addr, "GET", &format!("/events?{query}"), &[], None).await;
    let ws = upgrade_request(server.addr, &query).await;
    for (response, what) in [(&sse, "/events"), (&ws, "upgrade /ws")] {
        assert_refused(response, "filter", what);
        let error = &response.json()["error"];
        assert_eq!(error["code"], "bad_filter", "{what}");
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .contains("`customer_name`"),
            "{what}: {error}"
        );
    }
    let query = filter("customer_name=in.(\"\")");
    assert_eq!(upgrade_request(server.addr, &query).await.status, 101);
    let sse = SseClient::connect(server.addr, &query, &[]).await;
    assert_eq!(sse.status, 200);
}

// ---------------------------------------------------------------------------------
// The catalog: tables tracked and columns added while the gateway runs
// ---------------------------------------------------------------------------------

/// Three replicas on one database, two woken by NOTIFY and one polling: how a
/// replica learns of changes must not matter.
async fn replicas(db: &TestDb) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for mode in ["notify", "notify", "poll"] {
        let config = Config {
            source: rowcast::pg::source::SourceMode::parse(mode).unwrap(),
            poll_interval: Duration::from_millis(100),
            ..db.config()
        };
        servers.push(TestServer::start(config).await);
    }
    servers
}

/// Opens `query` on both transports of every server, expecting each to be accepted
/// and `ready`.
async fn open_everywhere(servers: &[TestServer], query: &str) -> Vec<Client> {
    let mut clients = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        for transport in BOTH {
            let mut client = Client::open(transport, server.addr, query).await;
            let (before, message) = client.until_ready().await;
            assert!(before.is_empty(), "replica {i} {transport:?}: {before:?}");
            assert_eq!(message["type"], "ready", "replica {i} {transport:?}");
            clients.push(client);
        }
    }
    clients
}

#[tokio::test]
async fn a_table_tracked_while_replicas_run_can_be_streamed_at_once_on_each() {
    let db = TestDb::new();
    let servers = replicas(&db).await;
    let sql = db.client().await;
    sql.batch_execute(
        "CREATE TABLE invoices (id serial PRIMARY KEY, amount int);
         SELECT realtime.track('invoices');",
    )
    .await
    .unwrap();
    let mut clients = open_everywhere(&servers, "tables=invoices").await;
    clients.extend(
        open_everywhere(
            &servers,
            &format!("tables=invoices&{}", filter("amount=gt.10")),
        )
        .await,
    );
    clients.extend(open_everywhere(&servers, &filter("amount=gt.10")).await);
    sql.batch_execute("INSERT INTO invoices (amount) VALUES (42)")
        .await
        .unwrap();
    let expected = logged_ids(&db, 0, "\"table\" = 'invoices'").await;
    assert_eq!(expected.len(), 1);
    for client in &mut clients {
        let change = &client.changes(1).await[0];
        assert_eq!(id_of(change), expected[0]);
        assert_eq!(change["table"], "invoices");
        assert_eq!(change["row"]["amount"], 42);
    }
}

#[tokio::test]
async fn a_column_added_while_replicas_run_can_be_filtered_on_at_once() {
    let db = TestDb::new();
    let servers = replicas(&db).await;
    let sql = db.client().await;
    sql.batch_execute("ALTER TABLE orders ADD COLUMN priority int")
        .await
        .unwrap();
    let mut clients = open_everywhere(&servers, &filter("priority=eq.1")).await;
    sql.batch_execute(
        "INSERT INTO orders (customer_name, product_name, priority) VALUES ('a', 'b', 2), ('c', 'd', 1)",
    )
    .await
    .unwrap();
    let expected = logged_ids(&db, 0, "row->>'priority' = '1'").await;
    for client in &mut clients {
        assert_eq!(ids(&client.changes(1).await), expected);
    }
}

#[tokio::test]
async fn an_untracked_table_is_refused_at_once_by_every_replica() {
    let db = TestDb::new();
    create_docs(&db).await;
    let servers = replicas(&db).await;
    open_everywhere(&servers, "tables=docs").await;
    db.client()
        .await
        .batch_execute("SELECT realtime.untrack('docs')")
        .await
        .unwrap();
    for server in &servers {
        for query in ["tables=docs".to_owned(), filter("body=eq.x")] {
            let sse = http(server.addr, "GET", &format!("/events?{query}"), &[], None).await;
            let field = if query.starts_with("tables") {
                "tables"
            } else {
                "filter"
            };
            assert_refused(&sse, field, &format!("/events?{query}"));
            let ws = upgrade_request(server.addr, &query).await;
            assert_refused(&ws, field, &format!("upgrade /ws?{query}"));
        }
    }
}

#[tokio::test]
async fn a_flood_of_requests_for_unknown_tables_reads_the_catalog_a_bounded_number_of_times() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let before = metric(server.addr, "rowcast_catalog_reads_total").await;
    let started = Instant::now();
    let mut requests = Vec::new();
    for i in 0..200 {
        let addr = server.addr;
        requests.push(tokio::spawn(async move {
            let query = format!("tables=nope_{i}");
            if i % 2 == 0 {
                http(addr, "GET", &format!("/events?{query}"), &[], None).await
            } else {
                upgrade_request(addr, &query).await
            }
        }));
    }
    for request in requests {
        assert_refused(&request.await.unwrap(), "tables", "an unknown table");
    }
    let elapsed = started.elapsed();
    let reads = metric(server.addr, "rowcast_catalog_reads_total").await - before;
    // One read per rate-limit interval at most, plus one already under way and one
    // periodic refresh by the source.
    let bound = (elapsed.as_millis() / rowcast::pg::catalog::MIN_INTERVAL.as_millis()) as f64 + 3.0;
    assert!(reads >= 1.0, "a miss must re-read the catalog");
    assert!(
        reads <= bound,
        "{reads} catalog reads for 200 requests in {elapsed:?}"
    );
}
