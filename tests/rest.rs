//! The REST contract of docs/PROTOCOL.md ("REST", "Errors"), over real sockets: the
//! list and its snapshot position, CRUD, every documented rejection (each checked to
//! leave the table and the change log untouched), routing, malformed HTTP, and the
//! operations endpoints.

mod support;
use support::*;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// A fresh database and a gateway serving it.
async fn start() -> (TestDb, TestServer, tokio_postgres::Client) {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let client = db.client().await;
    (db, server, client)
}

/// What a rejected request must leave exactly as it was.
#[derive(Debug, PartialEq)]
struct State {
    /// Every order, as `to_jsonb`, ordered by id.
    rows: Vec<Value>,
    /// How many changes were ever captured (nothing rejected may be captured).
    changes: i64,
}

async fn state(client: &tokio_postgres::Client) -> State {
    State {
        rows: rows(client).await,
        changes: client
            .query_one("SELECT count(*) FROM realtime.change_log", &[])
            .await
            .unwrap()
            .get(0),
    }
}

/// Every order as the database renders it, ordered by id.
async fn rows(client: &tokio_postgres::Client) -> Vec<Value> {
    client
        .query("SELECT to_jsonb(o)::text FROM orders o ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
        .collect()
}

/// One order as the database renders it.
async fn row(client: &tokio_postgres::Client, id: i64) -> Option<Value> {
    let id = i32::try_from(id).unwrap();
    client
        .query_opt(
            "SELECT to_jsonb(o)::text FROM orders o WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
}

/// The id of the newest captured change (0 if none).
async fn last_change_id(client: &tokio_postgres::Client) -> u64 {
    let id: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM realtime.change_log", &[])
        .await
        .unwrap()
        .get(0);
    u64::try_from(id).unwrap()
}

/// Whether timestamp `b` is strictly later than `a` (compared by PostgreSQL).
async fn later(client: &tokio_postgres::Client, a: &Value, b: &Value) -> bool {
    client
        .query_one(
            "SELECT $1::text::timestamptz < $2::text::timestamptz",
            &[&a.as_str().unwrap(), &b.as_str().unwrap()],
        )
        .await
        .unwrap()
        .get(0)
}

/// A request with a JSON body (`Content-Type: application/json`).
async fn send_json(addr: SocketAddr, method: &str, path: &str, body: &str) -> HttpResponse {
    http(addr, method, path, &[], Some(body.as_bytes())).await
}

async fn get(addr: SocketAddr, path: &str) -> HttpResponse {
    http(addr, "GET", path, &[], None).await
}

/// Creates an order through the API and returns the row it answered with.
async fn create(addr: SocketAddr, customer: &str, product: &str) -> Value {
    let body = json!({"customer_name": customer, "product_name": product}).to_string();
    let response = send_json(addr, "POST", "/api/orders", &body).await;
    assert_eq!(response.status, 201, "{}", response.body);
    response.json()
}

/// `GET /api/orders[?query]`: the rows and the `X-Event-Id` position.
async fn list(addr: SocketAddr, query: &str) -> (Vec<Value>, u64) {
    let path = if query.is_empty() {
        "/api/orders".to_owned()
    } else {
        format!("/api/orders?{query}")
    };
    let response = get(addr, &path).await;
    assert_eq!(response.status, 200, "{path}: {}", response.body);
    assert_json_type(&response);
    let position = response
        .header("x-event-id")
        .expect("X-Event-Id header")
        .parse()
        .expect("X-Event-Id is a decimal id");
    match response.json() {
        Value::Array(rows) => (rows, position),
        other => panic!("the list is not an array: {other}"),
    }
}

#[track_caller]
fn assert_json_type(response: &HttpResponse) {
    let content_type = response.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/json"),
        "Content-Type {content_type:?} is not JSON"
    );
}

/// Checks the status and the error envelope `{"error":{"code","message"[,"field"]}}`
/// with a JSON content type; returns the inner object.
#[track_caller]
fn error_of(response: &HttpResponse, status: u16) -> serde_json::Map<String, Value> {
    assert_eq!(
        response.status, status,
        "expected {status}, got {}: {}",
        response.status, response.body
    );
    assert_json_type(response);
    let body = response.json();
    let outer = body.as_object().expect("the error body is an object");
    assert_eq!(
        outer.keys().collect::<Vec<_>>(),
        ["error"],
        "the error body has exactly one key, error: {body}"
    );
    let inner = outer["error"].as_object().expect("error is an object");
    for key in inner.keys() {
        assert!(
            ["code", "message", "field"].contains(&key.as_str()),
            "unexpected key {key} in {body}"
        );
    }
    assert!(
        inner
            .get("code")
            .and_then(Value::as_str)
            .is_some_and(|c| !c.is_empty()),
        "error.code is a non-empty string: {body}"
    );
    assert!(
        inner
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| !m.is_empty()),
        "error.message is a non-empty string: {body}"
    );
    if let Some(field) = inner.get("field") {
        assert!(field.is_string(), "error.field is a string: {body}");
    }
    inner.clone()
}

/// The `field` of an error object, if it has one.
fn field(error: &serde_json::Map<String, Value>) -> Option<&str> {
    error.get("field").and_then(Value::as_str)
}

/// Checks a rejection: status, envelope, the field at fault (`None`: no field).
#[track_caller]
fn assert_rejected(response: &HttpResponse, status: u16, expected_field: Option<&str>) {
    let error = error_of(response, status);
    assert_eq!(
        field(&error),
        expected_field,
        "the field at fault, in {}",
        response.body
    );
}

/// What came back on a raw connection.
struct Exchange {
    /// Every byte received.
    bytes: Vec<u8>,
    /// Whether the server closed (or reset) the connection; otherwise it went quiet.
    closed: bool,
}

impl Exchange {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The responses received, in order.
    fn responses(&self) -> Vec<HttpResponse> {
        parse_responses(&self.bytes)
    }
}

/// Writes `request` while reading whatever comes back, until the server closes the
/// connection or stays silent for `quiet`. Reading while writing keeps an early
/// answer (413, 431) from being lost behind a blocked write.
async fn exchange(addr: SocketAddr, request: Vec<u8>, quiet: Duration) -> Exchange {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let writing = tokio::spawn(async move {
        // The server may answer and close before it has read everything.
        let _ = writer.write_all(&request).await;
        // Returned, not dropped, so that no FIN is sent while we still read.
        writer
    });
    let mut bytes = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let closed = loop {
        match tokio::time::timeout(quiet, reader.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => break false,
        }
    };
    writing.abort();
    Exchange { bytes, closed }
}

/// A request head, with `Connection: close`, then `body`.
fn raw_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut head =
        format!("{method} {path} HTTP/1.1\r\nHost: rowcast.test\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `body` in chunked transfer encoding, `chunk` bytes a chunk.
fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk * 8 + 8);
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Splits a byte stream into the HTTP/1.1 responses it holds (`Content-Length`,
/// chunked, or no body for 204).
fn parse_responses(mut bytes: &[u8]) -> Vec<HttpResponse> {
    let mut out = Vec::new();
    while let Some(end) = find(bytes, b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        bytes = &bytes[end + 4..];
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line in {head:?}"));
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if let Some(length) = value("content-length") {
            let length: usize = length.parse().expect("Content-Length");
            let length = length.min(bytes.len());
            body.extend_from_slice(&bytes[..length]);
            bytes = &bytes[length..];
        } else if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            while let Some(line_end) = find(bytes, b"\r\n") {
                let size_text = String::from_utf8_lossy(&bytes[..line_end]).into_owned();
                let size = usize::from_str_radix(size_text.trim(), 16).expect("chunk size");
                let start = line_end + 2;
                let stop = (start + size).min(bytes.len());
                body.extend_from_slice(&bytes[start..stop]);
                bytes = &bytes[(stop + 2).min(bytes.len())..];
                if size == 0 {
                    break;
                }
            }
        } else if status != 204 && status != 304 {
            body.extend_from_slice(bytes);
            bytes = &[];
        }
        out.push(HttpResponse {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        });
    }
    out
}

/// The one response to a raw request that ends in `Connection: close`.
async fn raw_response(addr: SocketAddr, request: Vec<u8>) -> HttpResponse {
    let exchange = exchange(addr, request, WAIT).await;
    assert!(
        exchange.closed,
        "the server did not close: {}",
        exchange.text()
    );
    let mut responses = exchange.responses();
    assert_eq!(responses.len(), 1, "one response in {:?}", exchange.text());
    responses.remove(0)
}

/// The server still answers an ordinary request.
async fn assert_still_serving(addr: SocketAddr) {
    let response = get(addr, "/healthz").await;
    assert_eq!(response.status, 200, "{}", response.body);
}

/// Plays changes onto a snapshot, checking that each one fits: no INSERT of a row the
/// snapshot already had, no UPDATE or DELETE of a row it lacked or held differently.
fn apply(model: &mut BTreeMap<i64, Value>, change: &Value) {
    let row = change["row"].clone();
    let id = row["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("row id in {change}"));
    match change["op"].as_str() {
        Some("INSERT") => assert!(
            model.insert(id, row).is_none(),
            "an INSERT of a row the snapshot already holds (delivered twice?): {change}"
        ),
        Some("UPDATE") => {
            let before = model
                .insert(id, row)
                .unwrap_or_else(|| panic!("an UPDATE of a row the snapshot lacks: {change}"));
            assert_eq!(
                before, change["old"],
                "an UPDATE whose old row is not the snapshot's (missed or repeated change)"
            );
        }
        Some("DELETE") => {
            let before = model
                .remove(&id)
                .unwrap_or_else(|| panic!("a DELETE of a row the snapshot lacks: {change}"));
            assert_eq!(
                before, row,
                "a DELETE of a row the snapshot holds differently"
            );
        }
        _ => panic!("unexpected change {change}"),
    }
}

fn keyed(rows: &[Value]) -> BTreeMap<i64, Value> {
    rows.iter()
        .map(|row| (row["id"].as_i64().expect("row id"), row.clone()))
        .collect()
}

fn change_id(change: &Value) -> u64 {
    change["id"]
        .as_str()
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("change id is a decimal string: {change}"))
}

/// Connects a WebSocket at `since` and checks that it delivers exactly the changes
/// captured after `since`, each once, in order, and that together with `snapshot` they
/// rebuild `expected`.
async fn assert_stream_completes_snapshot(
    server: &TestServer,
    client: &tokio_postgres::Client,
    since: u64,
    snapshot: &[Value],
    expected: &[Value],
) {
    let mut ws = WsClient::connect(server.addr, &format!("since={since}")).await;
    let (mut changes, ready) = ws.until_ready().await;
    assert_eq!(ready["replayed"], changes.len());
    // The gateway may not have read the newest changes yet when `ready` comes; they
    // follow it live.
    let end = last_change_id(client).await;
    while changes.last().map_or(since, change_id) < end {
        changes.extend(ws.changes(1).await);
    }
    let captured: Vec<u64> = client
        .query(
            "SELECT id FROM realtime.change_log WHERE id > $1 ORDER BY id",
            &[&i64::try_from(since).unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| u64::try_from(row.get::<_, i64>(0)).unwrap())
        .collect();
    let delivered: Vec<u64> = changes.iter().map(change_id).collect();
    assert_eq!(
        delivered, captured,
        "since={since}: the stream is every change after the snapshot, once, in order"
    );
    let mut model = keyed(snapshot);
    for change in &changes {
        apply(&mut model, change);
    }
    assert_eq!(
        model.into_values().collect::<Vec<_>>(),
        expected,
        "since={since}: snapshot + stream rebuild the table"
    );
}

/// `rowcast_http_responses_total{status="…"}` (0 when absent).
async fn responses_counted(addr: SocketAddr, status: u16) -> u64 {
    let metrics = get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let prefix = format!("rowcast_http_responses_total{{status=\"{status}\"}} ");
    metrics
        .body
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map_or(0, |n| n.trim().parse().expect("a counter value"))
}

// ---------------------------------------------------------------------------------
// GET /api/orders
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn listing_a_fresh_database_is_an_empty_array_at_event_id_zero() {
    let (_db, server, _client) = start().await;
    let response = get(server.addr, "/api/orders").await;
    assert_eq!(response.status, 200);
    assert_json_type(&response);
    assert_eq!(response.header("x-event-id"), Some("0"));
    assert_eq!(response.json(), json!([]));
}

#[tokio::test]
async fn listing_returns_every_row_ordered_by_id() {
    let (_db, server, client) = start().await;
    for i in 0..6 {
        insert_order(&client, &format!("customer {i}"), &format!("product {i}")).await;
    }
    // Updating the first rows moves their tuples to the end of the heap, so a list
    // that forgot ORDER BY would come back out of order.
    client
        .batch_execute("UPDATE orders SET status = 'shipped' WHERE id <= 2")
        .await
        .unwrap();
    let (listed, _) = list(server.addr, "").await;
    assert_eq!(listed, rows(&client).await);
    let ids: Vec<i64> = listed.iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
}

#[tokio::test]
async fn x_event_id_is_the_id_of_the_last_captured_change() {
    let (_db, server, client) = start().await;
    let id = insert_order(&client, "Ann", "Book").await;
    let (_, position) = list(server.addr, "").await;
    assert_eq!(position, last_change_id(&client).await);
    assert!(position > 0);

    client
        .execute("UPDATE orders SET status = 'shipped' WHERE id = $1", &[&id])
        .await
        .unwrap();
    let created = create(server.addr, "Bob", "Lamp").await;
    let (_, position) = list(server.addr, "").await;
    assert_eq!(position, last_change_id(&client).await);

    // A rolled-back write draws no visible id: the position stays where it was.
    client
        .batch_execute(
            "BEGIN; INSERT INTO orders (customer_name, product_name) VALUES ('x', 'y'); ROLLBACK",
        )
        .await
        .unwrap();
    let (_, unchanged) = list(server.addr, "").await;
    assert_eq!(unchanged, position);

    let deleted = http(
        server.addr,
        "DELETE",
        &format!("/api/orders/{}", created["id"]),
        &[],
        None,
    )
    .await;
    assert_eq!(deleted.status, 204);
    let (_, position) = list(server.addr, "").await;
    assert_eq!(position, last_change_id(&client).await);
    assert!(position > unchanged);
}

#[tokio::test]
async fn limit_and_after_id_page_through_the_rows_by_keyset() {
    let (_db, server, client) = start().await;
    for i in 0..9 {
        insert_order(&client, &format!("c{i}"), "p").await;
    }
    // Gaps in the ids: keyset paging must not assume density.
    client
        .batch_execute("DELETE FROM orders WHERE id IN (3, 4, 8)")
        .await
        .unwrap();
    let all = rows(&client).await;

    let (page, _) = list(server.addr, "limit=1").await;
    assert_eq!(page, all[..1]);
    let (page, _) = list(server.addr, "after_id=0").await;
    assert_eq!(page, all);
    let (page, _) = list(server.addr, "limit=10000").await;
    assert_eq!(page, all);
    let (page, _) = list(server.addr, "after_id=2").await;
    assert_eq!(page, all[2..], "after_id is exclusive and skips the gap");

    let mut collected = Vec::new();
    let mut after = 0;
    loop {
        let (page, _) = list(server.addr, &format!("limit=2&after_id={after}")).await;
        assert!(page.len() <= 2, "a page holds at most limit rows");
        let Some(last) = page.last() else { break };
        after = last["id"].as_i64().unwrap();
        collected.extend(page);
    }
    assert_eq!(
        collected, all,
        "the pages together are the whole list, once"
    );

    let (page, _) = list(server.addr, "after_id=2147483647").await;
    assert!(page.is_empty());
    let (page, _) = list(server.addr, "after_id=6&limit=2").await;
    assert_eq!(page, all[4..], "the same parameters in either order");
}

#[tokio::test]
async fn bad_limit_and_after_id_values_are_400_naming_the_parameter() {
    let (_db, server, client) = start().await;
    insert_order(&client, "Ann", "Book").await;
    let bad_limits = [
        "0",
        "10001",
        "-1",
        "abc",
        "2147483648",
        "",
        "1.5",
        "99999999999",
    ];
    for value in bad_limits {
        let response = get(server.addr, &format!("/api/orders?limit={value}")).await;
        assert_rejected(&response, 400, Some("limit"));
        assert!(response.header("x-event-id").is_none());
    }
    let bad_after_ids = ["-1", "abc", "2147483648", "", "1.5", "99999999999"];
    for value in bad_after_ids {
        let response = get(server.addr, &format!("/api/orders?after_id={value}")).await;
        assert_rejected(&response, 400, Some("after_id"));
    }
    let response = get(server.addr, "/api/orders?limit").await;
    assert_rejected(&response, 400, Some("limit"));
    let response = get(server.addr, "/api/orders?after_id=1&limit=0").await;
    assert_rejected(&response, 400, Some("limit"));
}

// ---------------------------------------------------------------------------------
// The snapshot rule: X-Event-Id + a stream since it is exactly-once
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_snapshot_and_a_stream_since_its_event_id_deliver_each_later_change_once() {
    let (_db, server, client) = start().await;
    // Before the snapshot: inserts (API and SQL), an update, a delete.
    let first = create(server.addr, "Ann", "Book").await;
    let second = insert_order(&client, "Bob", "Lamp").await;
    insert_order(&client, "Cy", "Desk").await;
    client
        .execute(
            "UPDATE orders SET status = 'shipped' WHERE id = $1",
            &[&second],
        )
        .await
        .unwrap();
    client
        .execute(
            "DELETE FROM orders WHERE id = $1",
            &[&(first["id"].as_i64().unwrap() as i32)],
        )
        .await
        .unwrap();
    let (snapshot, position) = list(server.addr, "").await;
    assert_eq!(snapshot, rows(&client).await);

    // After it: the same kinds of writes, through both paths.
    let fourth = create(server.addr, "Dee", "Pen").await;
    let patched = send_json(
        server.addr,
        "PATCH",
        &format!("/api/orders/{second}"),
        r#"{"status":"delivered"}"#,
    )
    .await;
    assert_eq!(patched.status, 200);
    client
        .execute(
            "DELETE FROM orders WHERE id = $1",
            &[&(fourth["id"].as_i64().unwrap() as i32)],
        )
        .await
        .unwrap();
    insert_order(&client, "Eve", "Cup").await;

    let expected = rows(&client).await;
    assert_stream_completes_snapshot(&server, &client, position, &snapshot, &expected).await;

    // SSE resumes from the same position with the same changes.
    let end = last_change_id(&client).await;
    let mut sse = SseClient::connect(server.addr, &format!("since={position}"), &[]).await;
    assert_eq!(sse.status, 200);
    let (mut events, _) = sse.until_ready().await;
    while events.last().map_or(position, |e| change_id(&e.json())) < end {
        events.extend(sse.changes(1).await);
    }
    let captured: Vec<String> = client
        .query(
            "SELECT id::text FROM realtime.change_log WHERE id > $1 ORDER BY id",
            &[&i64::try_from(position).unwrap()],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone().expect("id:")).collect();
    assert_eq!(
        ids, captured,
        "SSE since the snapshot: every later change, once"
    );

    // And the stream stays live past the backlog.
    let mut ws = WsClient::connect(server.addr, &format!("since={position}")).await;
    ws.until_ready().await;
    let newest = last_change_id(&client).await;
    let id = insert_order(&client, "Fay", "Mug").await;
    let live = loop {
        let change = ws.changes(1).await.remove(0);
        if change_id(&change) > newest {
            break change;
        }
    };
    assert_eq!(live["op"], "INSERT");
    assert_eq!(live["row"]["id"], id);
}

#[tokio::test]
async fn snapshots_taken_during_concurrent_writes_agree_with_the_stream() {
    let (db, server, client) = start().await;
    for i in 0..5 {
        insert_order(&client, &format!("seed {i}"), "p").await;
    }
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        let client = writer_db.client().await;
        for i in 0..150 {
            let statement = match i % 5 {
                0 => "INSERT INTO orders (customer_name, product_name) VALUES ('w', 'p')",
                1 => {
                    "BEGIN; INSERT INTO orders (customer_name, product_name) VALUES ('t1', 'p');
                      UPDATE orders SET product_name = product_name || '+'
                        WHERE id = (SELECT max(id) FROM orders); COMMIT"
                }
                2 => {
                    "UPDATE orders SET status = 'shipped', product_name = product_name || '!'
                        WHERE id = (SELECT min(id) FROM orders)"
                }
                3 => "DELETE FROM orders WHERE id = (SELECT min(id) FROM orders)",
                _ => "INSERT INTO orders (customer_name, product_name) VALUES ('v', 'q')",
            };
            client.batch_execute(statement).await.unwrap();
        }
    });
    let mut snapshots: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    while !writer.is_finished() {
        let (rows, position) = list(server.addr, "").await;
        if let Some(seen) = snapshots.get(&position) {
            assert_eq!(
                seen, &rows,
                "two snapshots at {position} hold different rows"
            );
        }
        snapshots.insert(position, rows);
    }
    writer.await.unwrap();
    let expected = rows(&client).await;
    let end = last_change_id(&client).await;
    let during: Vec<u64> = snapshots.keys().copied().filter(|p| *p < end).collect();
    assert!(
        !during.is_empty(),
        "no snapshot was taken while the writer ran; the test proves nothing"
    );
    for (position, snapshot) in &snapshots {
        assert_stream_completes_snapshot(&server, &client, *position, snapshot, &expected).await;
    }
}

#[tokio::test]
async fn api_writes_are_streamed_with_the_rows_the_api_returned() {
    let (_db, server, _client) = start().await;
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    let created = create(server.addr, "Ann", "Book").await;
    let path = format!("/api/orders/{}", created["id"]);
    let updated = send_json(server.addr, "PUT", &path, r#"{"status":"shipped"}"#).await;
    assert_eq!(updated.status, 200);
    let updated = updated.json();
    assert_eq!(
        http(server.addr, "DELETE", &path, &[], None).await.status,
        204
    );
    let changes = ws.changes(3).await;
    assert_eq!(changes[0]["op"], "INSERT");
    assert_eq!(changes[0]["row"], created);
    assert_eq!(changes[1]["op"], "UPDATE");
    assert_eq!(changes[1]["row"], updated);
    assert_eq!(changes[1]["old"], created);
    assert_eq!(changes[2]["op"], "DELETE");
    assert_eq!(changes[2]["row"], updated);
}

// ---------------------------------------------------------------------------------
// GET, POST, PUT, PATCH, DELETE /api/orders/{id}
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn getting_an_order_returns_its_row_and_a_missing_one_is_404() {
    let (_db, server, client) = start().await;
    let id = insert_order(&client, "Ann", "Book").await;
    let response = get(server.addr, &format!("/api/orders/{id}")).await;
    assert_eq!(response.status, 200);
    assert_json_type(&response);
    assert_eq!(Some(response.json()), row(&client, i64::from(id)).await);

    for missing in [id + 1, i32::MAX] {
        let response = get(server.addr, &format!("/api/orders/{missing}")).await;
        assert_rejected(&response, 404, None);
    }
}

#[tokio::test]
async fn creating_an_order_returns_201_the_row_and_its_location() {
    let (_db, server, client) = start().await;
    let response = send_json(
        server.addr,
        "POST",
        "/api/orders",
        r#"{"customer_name":"Ann","product_name":"Book"}"#,
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.body);
    assert_json_type(&response);
    let created = response.json();
    let id = created["id"].as_i64().expect("an integer id");
    assert_eq!(created["customer_name"], "Ann");
    assert_eq!(created["product_name"], "Book");
    assert_eq!(created["status"], "pending", "status defaults to pending");
    assert!(created["updated_at"].is_string());
    let location = format!("/api/orders/{id}");
    assert_eq!(response.header("location"), Some(location.as_str()));
    assert_eq!(Some(created.clone()), row(&client, id).await);
    assert_eq!(get(server.addr, &location).await.json(), created);
    assert_eq!(rows(&client).await.len(), 1);
}

#[tokio::test]
async fn a_created_order_may_set_its_status() {
    let (_db, server, client) = start().await;
    for status in ["pending", "shipped", "delivered"] {
        let body = json!({"customer_name": "Ann", "product_name": "Book", "status": status});
        let response = http(
            server.addr,
            "POST",
            "/api/orders",
            &[("Content-Type", "application/json; charset=utf-8")],
            Some(body.to_string().as_bytes()),
        )
        .await;
        assert_eq!(response.status, 201, "{}", response.body);
        let created = response.json();
        assert_eq!(created["status"], status);
        assert_eq!(
            Some(created.clone()),
            row(&client, created["id"].as_i64().unwrap()).await
        );
    }
}

#[tokio::test]
async fn names_are_stored_trimmed_of_unicode_whitespace() {
    let (_db, server, client) = start().await;
    let body = json!({
        "customer_name": "\u{3000}\u{a0} Zoë  Ång \t\n",
        "product_name": "\u{2003}Tea\u{3000}",
    });
    let response = send_json(server.addr, "POST", "/api/orders", &body.to_string()).await;
    assert_eq!(response.status, 201, "{}", response.body);
    let created = response.json();
    assert_eq!(
        created["customer_name"], "Zoë  Ång",
        "inner spaces are kept"
    );
    assert_eq!(created["product_name"], "Tea");
    let id = created["id"].as_i64().unwrap();
    assert_eq!(row(&client, id).await, Some(created));

    let path = format!("/api/orders/{id}");
    let body = json!({"product_name": "\u{a0}Coffee\u{3000}"}).to_string();
    let response = send_json(server.addr, "PATCH", &path, &body).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_eq!(response.json()["product_name"], "Coffee");
    assert_eq!(row(&client, id).await.unwrap()["product_name"], "Coffee");
}

#[tokio::test]
async fn names_of_255_multibyte_characters_are_accepted_and_256_rejected() {
    let (_db, server, client) = start().await;
    for character in ["é", "𝄞", "中"] {
        let longest = character.repeat(255);
        // Whitespace around it does not count: the limit applies to the stored name.
        let padded = format!("  {longest}\u{3000}");
        let body = json!({"customer_name": padded, "product_name": longest}).to_string();
        let response = send_json(server.addr, "POST", "/api/orders", &body).await;
        assert_eq!(response.status, 201, "{character}: {}", response.body);
        let created = response.json();
        assert_eq!(created["customer_name"], longest.as_str());
        let stored = row(&client, created["id"].as_i64().unwrap()).await.unwrap();
        assert_eq!(stored["product_name"], longest.as_str());

        let before = state(&client).await;
        let too_long = character.repeat(256);
        let body = json!({"customer_name": "Ann", "product_name": too_long}).to_string();
        let response = send_json(server.addr, "POST", "/api/orders", &body).await;
        assert_rejected(&response, 422, Some("product_name"));
        let path = format!("/api/orders/{}", created["id"]);
        let body = json!({"customer_name": too_long}).to_string();
        let response = send_json(server.addr, "PATCH", &path, &body).await;
        assert_rejected(&response, 422, Some("customer_name"));
        assert_eq!(state(&client).await, before);
    }
}

#[tokio::test]
async fn put_and_patch_update_only_the_given_fields_and_always_set_updated_at() {
    let (_db, server, client) = start().await;
    let created = create(server.addr, "Ann", "Book").await;
    let id = created["id"].as_i64().unwrap();
    let other = create(server.addr, "Bob", "Lamp").await;
    let path = format!("/api/orders/{id}");

    let response = send_json(server.addr, "PATCH", &path, r#"{"status":"shipped"}"#).await;
    assert_eq!(response.status, 200, "{}", response.body);
    assert_json_type(&response);
    let patched = response.json();
    assert_eq!(patched["status"], "shipped");
    assert_eq!(patched["customer_name"], "Ann");
    assert_eq!(patched["product_name"], "Book");
    assert_eq!(patched["id"], id);
    assert!(later(&client, &created["updated_at"], &patched["updated_at"]).await);
    assert_eq!(row(&client, id).await, Some(patched.clone()));

    let response = send_json(server.addr, "PUT", &path, r#"{"customer_name":" Ann B "}"#).await;
    assert_eq!(response.status, 200, "{}", response.body);
    let put = response.json();
    assert_eq!(put["customer_name"], "Ann B");
    assert_eq!(put["product_name"], "Book");
    assert_eq!(put["status"], "shipped", "PUT is a partial update too");
    assert!(later(&client, &patched["updated_at"], &put["updated_at"]).await);

    // The same values again still count as an update.
    let response = send_json(server.addr, "PUT", &path, r#"{"customer_name":"Ann B"}"#).await;
    assert_eq!(response.status, 200);
    let again = response.json();
    assert!(later(&client, &put["updated_at"], &again["updated_at"]).await);
    let response = send_json(
        server.addr,
        "PATCH",
        &path,
        r#"{"customer_name":"C","product_name":"D","status":"delivered"}"#,
    )
    .await;
    assert_eq!(response.status, 200);
    let all = response.json();
    assert_eq!(
        (&all["customer_name"], &all["product_name"], &all["status"]),
        (&json!("C"), &json!("D"), &json!("delivered"))
    );
    assert!(later(&client, &again["updated_at"], &all["updated_at"]).await);

    assert_eq!(
        rows(&client).await,
        [all, other],
        "the other row is untouched"
    );
}

#[tokio::test]
async fn updating_a_missing_order_is_404_and_changes_nothing() {
    let (_db, server, client) = start().await;
    let created = create(server.addr, "Ann", "Book").await;
    let missing = created["id"].as_i64().unwrap() + 1;
    let before = state(&client).await;
    for method in ["PUT", "PATCH"] {
        let response = send_json(
            server.addr,
            method,
            &format!("/api/orders/{missing}"),
            r#"{"status":"shipped"}"#,
        )
        .await;
        assert_rejected(&response, 404, None);
    }
    assert_eq!(state(&client).await, before);
}

#[tokio::test]
async fn deleting_an_order_is_204_and_then_it_is_404() {
    let (_db, server, client) = start().await;
    let created = create(server.addr, "Ann", "Book").await;
    let kept = create(server.addr, "Bob", "Lamp").await;
    let path = format!("/api/orders/{}", created["id"]);
    let response = http(server.addr, "DELETE", &path, &[], None).await;
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());
    assert_eq!(rows(&client).await, [kept]);
    assert_rejected(&get(server.addr, &path).await, 404, None);
    let before = state(&client).await;
    let response = http(server.addr, "DELETE", &path, &[], None).await;
    assert_rejected(&response, 404, None);
    assert_eq!(state(&client).await, before);
}

// ---------------------------------------------------------------------------------
// Rejected bodies: documented status, and nothing written
// ---------------------------------------------------------------------------------

/// Sends `body` as a create and as an update of an existing order; each must be
/// rejected with `status` naming `expected_field`, and leave everything as it was.
async fn assert_body_rejected(
    server: &TestServer,
    client: &tokio_postgres::Client,
    body: &[u8],
    status: u16,
    expected_field: Option<&str>,
) {
    let existing = match rows(client).await.first() {
        Some(row) => row["id"].as_i64().unwrap(),
        None => i64::from(insert_order(client, "Existing", "Row").await),
    };
    let before = state(client).await;
    let path = format!("/api/orders/{existing}");
    for (method, path) in [("POST", "/api/orders"), ("PUT", &path), ("PATCH", &path)] {
        let response = http(server.addr, method, path, &[], Some(body)).await;
        let shown = String::from_utf8_lossy(body);
        let error = error_of(&response, status);
        assert_eq!(
            field(&error),
            expected_field,
            "{method} {path} {shown:.80}: the field at fault in {}",
            response.body
        );
        assert_eq!(
            state(client).await,
            before,
            "{method} {path} {shown:.80} changed the table"
        );
    }
}

#[tokio::test]
async fn malformed_json_is_400_and_changes_nothing() {
    let (_db, server, client) = start().await;
    let bodies: [&[u8]; 10] = [
        b"{",
        b"",
        b"not json",
        br#"{"customer_name":"Ann","product_name":"Book",}"#,
        br#"{"customer_name":"Ann" "product_name":"Book"}"#,
        br#"{"customer_name":"Ann","product_name":"Book"} {}"#,
        br#"{'customer_name':'Ann'}"#,
        b"{\"customer_name\":\"\xff\xfe\",\"product_name\":\"Book\"}",
        br#"{"customer_name":"Ann","product_name":"Book","status":01}"#,
        br#"{"customer_name":"Ann","product_name":"Book","status":"\x"}"#,
    ];
    for body in bodies {
        assert_body_rejected(&server, &client, body, 400, None).await;
    }
}

#[tokio::test]
async fn wrong_types_are_422_naming_the_field_and_change_nothing() {
    let (_db, server, client) = start().await;
    let cases: [(&str, Option<&str>); 12] = [
        (
            r#"{"customer_name":5,"product_name":"Book"}"#,
            Some("customer_name"),
        ),
        (
            r#"{"customer_name":null,"product_name":"Book"}"#,
            Some("customer_name"),
        ),
        (
            r#"{"customer_name":"Ann","product_name":["Book"]}"#,
            Some("product_name"),
        ),
        (
            r#"{"customer_name":"Ann","product_name":{"a":1}}"#,
            Some("product_name"),
        ),
        (
            r#"{"customer_name":"Ann","product_name":true}"#,
            Some("product_name"),
        ),
        (
            r#"{"customer_name":"Ann","product_name":"Book","status":5}"#,
            Some("status"),
        ),
        (
            r#"{"customer_name":"Ann","product_name":"Book","status":null}"#,
            Some("status"),
        ),
        (
            r#"{"customer_name":"Ann","product_name":"Book","status":["shipped"]}"#,
            Some("status"),
        ),
        // Not an object at all: no single field is at fault.
        (r#"[{"customer_name":"Ann","product_name":"Book"}]"#, None),
        ("null", None),
        (r#""Ann""#, None),
        ("5", None),
    ];
    for (body, expected_field) in cases {
        assert_body_rejected(&server, &client, body.as_bytes(), 422, expected_field).await;
    }
}

#[tokio::test]
async fn valid_json_beyond_what_a_parser_holds_is_still_422_naming_the_field() {
    let (_db, server, client) = start().await;
    // RFC 8259 JSON that some parsers cannot represent: a number beyond the range of a
    // double, nesting deeper than a recursion limit, an unpaired surrogate escape.
    let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
    let cases = [
        (
            r#"{"customer_name":"Ann","product_name":"Book","status":1e400}"#.to_owned(),
            Some("status"),
        ),
        (
            r#"{"customer_name":-1e999,"product_name":"Book"}"#.to_owned(),
            Some("customer_name"),
        ),
        (
            format!(r#"{{"customer_name":"Ann","product_name":{deep}}}"#),
            Some("product_name"),
        ),
        (
            r#"{"customer_name":"\ud800","product_name":"Book"}"#.to_owned(),
            Some("customer_name"),
        ),
        (
            format!(r#"{{"customer_name":"Ann","product_name":"Book","extra":{deep}}}"#),
            Some("extra"),
        ),
        (
            r#"{"customer_name":"Ann","product_name":"Book","id":1e400}"#.to_owned(),
            Some("id"),
        ),
        (deep.clone(), None),
        ("1e400".to_owned(), None),
    ];
    for (body, expected_field) in cases {
        assert_body_rejected(&server, &client, body.as_bytes(), 422, expected_field).await;
    }
}

#[tokio::test]
async fn unknown_and_read_only_fields_are_422_and_change_nothing() {
    let (_db, server, client) = start().await;
    let cases = [
        (
            r#"{"customer_name":"Ann","product_name":"Book","colour":"red"}"#,
            "colour",
        ),
        (
            r#"{"customer_name":"Ann","product_name":"Book","id":1}"#,
            "id",
        ),
        (
            r#"{"customer_name":"Ann","product_name":"Book","updated_at":"2026-01-01T00:00:00Z"}"#,
            "updated_at",
        ),
        (
            r#"{"customer_name":"Ann","product_name":"Book","Status":"shipped"}"#,
            "Status",
        ),
    ];
    for (body, name) in cases {
        assert_body_rejected(&server, &client, body.as_bytes(), 422, Some(name)).await;
    }
}

#[tokio::test]
async fn an_empty_update_is_422_and_leaves_updated_at_alone() {
    let (_db, server, client) = start().await;
    let created = create(server.addr, "Ann", "Book").await;
    let path = format!("/api/orders/{}", created["id"]);
    let before = state(&client).await;
    for method in ["PUT", "PATCH"] {
        let response = send_json(server.addr, method, &path, "{}").await;
        // No single field is at fault.
        assert_rejected(&response, 422, None);
        assert_eq!(
            state(&client).await,
            before,
            "{method} {{}} changed the row"
        );
    }
    // `{}` on a missing order is still an empty update, not a write.
    let response = send_json(server.addr, "PATCH", "/api/orders/999", "{}").await;
    assert!(matches!(response.status, 404 | 422), "{}", response.status);
    assert_eq!(state(&client).await, before);
}

#[tokio::test]
async fn blank_and_missing_names_are_422_and_change_nothing() {
    let (_db, server, client) = start().await;
    for blank in ["", " ", "\t\n\r", "\u{3000}\u{a0}\u{2003}"] {
        let body = json!({"customer_name": blank, "product_name": "Book"}).to_string();
        assert_body_rejected(
            &server,
            &client,
            body.as_bytes(),
            422,
            Some("customer_name"),
        )
        .await;
        let body = json!({"customer_name": "Ann", "product_name": blank}).to_string();
        assert_body_rejected(&server, &client, body.as_bytes(), 422, Some("product_name")).await;
    }
    let before = state(&client).await;
    for (body, missing) in [
        (r#"{"product_name":"Book"}"#, "customer_name"),
        (r#"{"customer_name":"Ann"}"#, "product_name"),
        (
            r#"{"customer_name":"Ann","status":"shipped"}"#,
            "product_name",
        ),
    ] {
        let response = send_json(server.addr, "POST", "/api/orders", body).await;
        assert_rejected(&response, 422, Some(missing));
    }
    assert_eq!(state(&client).await, before);
}

#[tokio::test]
async fn an_invalid_status_is_422_and_changes_nothing() {
    let (_db, server, client) = start().await;
    for status in ["lost", "PENDING", "Shipped", " pending", "pending ", ""] {
        let body =
            json!({"customer_name": "Ann", "product_name": "Book", "status": status}).to_string();
        assert_body_rejected(&server, &client, body.as_bytes(), 422, Some("status")).await;
    }
}

#[tokio::test]
async fn a_body_without_a_json_content_type_is_415_and_changes_nothing() {
    let (_db, server, client) = start().await;
    let id = insert_order(&client, "Ann", "Book").await;
    let before = state(&client).await;
    let body = br#"{"customer_name":"Bob","product_name":"Lamp"}"#;
    let length = body.len().to_string();
    let path = format!("/api/orders/{id}");
    for content_type in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
        Some(""),
    ] {
        for (method, path) in [("POST", "/api/orders"), ("PUT", &path), ("PATCH", &path)] {
            let mut headers = vec![("Content-Length", length.as_str())];
            if let Some(content_type) = content_type {
                headers.push(("Content-Type", content_type));
            }
            let response =
                raw_response(server.addr, raw_request(method, path, &headers, body)).await;
            let error = error_of(&response, 415);
            assert_eq!(field(&error), None, "{method} {content_type:?}");
            assert_eq!(state(&client).await, before, "{method} {content_type:?}");
        }
    }
}

#[tokio::test]
async fn a_ten_mebibyte_body_is_413_and_changes_nothing() {
    let (_db, server, client) = start().await;
    let before = state(&client).await;
    let mut body = br#"{"customer_name":"Ann","product_name":"Book","pad":""#.to_vec();
    body.resize(10 * 1024 * 1024 - 2, b'a');
    body.extend_from_slice(b"\"}");
    let length = body.len().to_string();
    let request = raw_request(
        "POST",
        "/api/orders",
        &[
            ("Content-Type", "application/json"),
            ("Content-Length", &length),
        ],
        &body,
    );
    let exchange = exchange(server.addr, request, WAIT).await;
    let responses = exchange.responses();
    let response = responses
        .first()
        .unwrap_or_else(|| panic!("no response to a 10 MiB body: {:?}", exchange.text()));
    assert_rejected(response, 413, None);
    assert_eq!(state(&client).await, before);
    assert_still_serving(server.addr).await;
}

/// A create body of exactly `size` bytes: valid JSON, padded with whitespace.
fn padded_create_body(size: usize) -> Vec<u8> {
    let mut body = br#"{"customer_name":"Ann","product_name":"Book""#.to_vec();
    body.resize(size - 1, b' ');
    body.push(b'}');
    assert_eq!(body.len(), size);
    body
}

#[tokio::test]
async fn a_body_of_64_kib_is_accepted_and_one_byte_more_is_413() {
    let (_db, server, client) = start().await;
    let limit = 64 * 1024;

    let response = http(
        server.addr,
        "POST",
        "/api/orders",
        &[],
        Some(&padded_create_body(limit)),
    )
    .await;
    assert_eq!(response.status, 201, "{}", response.body);
    let chunked_at_limit = raw_request(
        "POST",
        "/api/orders",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        &chunked(&padded_create_body(limit), 8192),
    );
    let response = raw_response(server.addr, chunked_at_limit).await;
    assert_eq!(
        response.status, 201,
        "chunked, at the limit: {}",
        response.body
    );

    let before = state(&client).await;
    let over = padded_create_body(limit + 1);
    let response = http(server.addr, "POST", "/api/orders", &[], Some(&over)).await;
    assert_rejected(&response, 413, None);
    assert_eq!(state(&client).await, before);
}

#[tokio::test]
async fn a_chunked_body_just_over_64_kib_is_413_and_changes_nothing() {
    let (_db, server, client) = start().await;
    let id = insert_order(&client, "Ann", "Book").await;
    let before = state(&client).await;
    let body = padded_create_body(64 * 1024 + 100);
    let path = format!("/api/orders/{id}");
    for (method, path) in [("POST", "/api/orders"), ("PATCH", path.as_str())] {
        for chunk in [1000, 64 * 1024 + 100] {
            let request = raw_request(
                method,
                path,
                &[
                    ("Content-Type", "application/json"),
                    ("Transfer-Encoding", "chunked"),
                ],
                &chunked(&body, chunk),
            );
            let exchange = exchange(server.addr, request, WAIT).await;
            let responses = exchange.responses();
            let response = responses.first().unwrap_or_else(|| {
                panic!(
                    "{method}: no response to a chunked body over 64 KiB: {:?}",
                    exchange.text()
                )
            });
            assert_rejected(response, 413, None);
            assert_eq!(state(&client).await, before, "{method} chunks of {chunk}");
        }
    }
    assert_still_serving(server.addr).await;
}

#[tokio::test]
async fn a_body_announced_too_large_or_not_json_is_refused_before_it_is_sent() {
    let (_db, server, client) = start().await;
    let before = state(&client).await;
    let ten_mib = (10 * 1024 * 1024).to_string();
    for (content_type, length, status) in [
        ("application/json", ten_mib.as_str(), 413),
        ("text/plain", "40", 415),
    ] {
        // `Expect: 100-continue` and no body: the answer must come without it.
        let request = raw_request(
            "POST",
            "/api/orders",
            &[
                ("Content-Type", content_type),
                ("Content-Length", length),
                ("Expect", "100-continue"),
            ],
            b"",
        );
        let exchange = exchange(server.addr, request, WAIT).await;
        let responses = exchange.responses();
        assert!(
            !responses.is_empty(),
            "{content_type}: no answer without the body: {:?}",
            exchange.text()
        );
        assert_rejected(&responses[0], status, None);
    }
    assert_eq!(state(&client).await, before);
}

#[tokio::test]
async fn requests_and_rejections_share_one_keep_alive_connection_in_order() {
    let (_db, server, client) = start().await;
    let body = br#"{"customer_name":"Ann","product_name":"Book"}"#;
    let mut request = Vec::new();
    for (method, path, payload, close) in [
        ("POST", "/api/orders", &body[..], false),
        ("GET", "/api/orders/99", &b""[..], false),
        (
            "PATCH",
            "/api/orders/1",
            &br#"{"status":"lost"}"#[..],
            false,
        ),
        ("POST", "/api/orders", &b"{"[..], false),
        (
            "PATCH",
            "/api/orders/1",
            &br#"{"status":"shipped"}"#[..],
            false,
        ),
        ("GET", "/api/orders", &b""[..], true),
    ] {
        request.extend_from_slice(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n{}\r\n",
                payload.len(),
                if close { "Connection: close\r\n" } else { "" }
            )
            .as_bytes(),
        );
        request.extend_from_slice(payload);
    }
    let exchange = exchange(server.addr, request, WAIT).await;
    assert!(exchange.closed);
    let responses = exchange.responses();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        [201, 404, 422, 400, 200, 200],
        "{}",
        exchange.text()
    );
    assert_rejected(&responses[1], 404, None);
    assert_rejected(&responses[2], 422, Some("status"));
    assert_rejected(&responses[3], 400, None);
    assert_eq!(responses[4].json()["status"], "shipped");
    assert_eq!(responses[5].json(), json!(rows(&client).await));
}

#[tokio::test]
async fn a_rejected_body_on_a_keep_alive_connection_is_not_read_as_the_next_request() {
    let (_db, server, client) = start().await;
    let before = state(&client).await;
    // The body is itself a request: a server that answered 415 without consuming it
    // would then execute it.
    let smuggled = b"DELETE /api/orders/1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut request = format!(
        "POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        smuggled.len()
    )
    .into_bytes();
    request.extend_from_slice(smuggled);
    request.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let exchange = exchange(server.addr, request, WAIT).await;
    let responses = exchange.responses();
    assert!(!responses.is_empty(), "no response: {:?}", exchange.text());
    assert_rejected(&responses[0], 415, None);
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert!(
        statuses == [415] || statuses == [415, 200],
        "the body was not served as a request: {statuses:?}"
    );
    assert_eq!(state(&client).await, before);
}

// ---------------------------------------------------------------------------------
// Path ids, routes, methods
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn non_numeric_zero_negative_and_out_of_range_path_ids_are_400() {
    let (_db, server, client) = start().await;
    insert_order(&client, "Ann", "Book").await;
    let before = state(&client).await;
    let bad_ids = [
        "abc",
        "0",
        "-1",
        "2147483648",
        "99999999999",
        "1.5",
        "1e3",
        "0x1",
        "%201",
        "1%20",
    ];
    for id in bad_ids {
        let path = format!("/api/orders/{id}");
        for method in ["GET", "PUT", "PATCH", "DELETE"] {
            let body = matches!(method, "PUT" | "PATCH").then_some(&br#"{"status":"shipped"}"#[..]);
            let response = http(server.addr, method, &path, &[], body).await;
            error_of(&response, 400);
        }
    }
    assert_eq!(state(&client).await, before);
    // The largest id is in range: merely absent.
    let response = get(server.addr, "/api/orders/2147483647").await;
    assert_rejected(&response, 404, None);
}

#[tokio::test]
async fn unknown_routes_are_404_with_the_error_body() {
    let (_db, server, client) = start().await;
    insert_order(&client, "Ann", "Book").await;
    let before = state(&client).await;
    for path in [
        "/nope",
        "/api/orders/1/x",
        "/api/orders/",
        "/api",
        "/api/order",
        "/api/orders/1/",
        "/API/orders",
        "/healthz/x",
    ] {
        for method in ["GET", "POST", "DELETE"] {
            let body = (method == "POST").then_some(&b"{}"[..]);
            let response = http(server.addr, method, path, &[], body).await;
            assert_rejected(&response, 404, None);
        }
    }
    assert_eq!(state(&client).await, before);
}

fn allowed(response: &HttpResponse) -> BTreeSet<String> {
    response
        .header("allow")
        .unwrap_or_else(|| panic!("405 without Allow: {response:?}"))
        .split(',')
        .map(|m| m.trim().to_ascii_uppercase())
        .filter(|m| !m.is_empty())
        .collect()
}

#[tokio::test]
async fn wrong_methods_are_405_with_an_allow_header_listing_the_right_ones() {
    let (_db, server, client) = start().await;
    insert_order(&client, "Ann", "Book").await;
    let before = state(&client).await;
    for (method, path, must, must_not) in [
        ("DELETE", "/api/orders", &["GET", "POST"][..], "DELETE"),
        ("PUT", "/api/orders", &["GET", "POST"][..], "PUT"),
        (
            "POST",
            "/api/orders/1",
            &["GET", "PUT", "PATCH", "DELETE"][..],
            "POST",
        ),
        ("POST", "/healthz", &["GET"][..], "POST"),
        ("DELETE", "/readyz", &["GET"][..], "DELETE"),
        ("POST", "/metrics", &["GET"][..], "POST"),
    ] {
        let body = (method == "POST" || method == "PUT").then_some(&b"{}"[..]);
        let response = http(server.addr, method, path, &[], body).await;
        assert_rejected(&response, 405, None);
        let allow = allowed(&response);
        for m in must {
            assert!(
                allow.contains(*m),
                "{method} {path}: Allow {allow:?} lacks {m}"
            );
        }
        assert!(
            !allow.contains(must_not),
            "{method} {path}: Allow {allow:?} lists {must_not}"
        );
    }
    assert_eq!(state(&client).await, before);
}

#[tokio::test]
async fn allow_lists_exactly_the_methods_that_are_not_405() {
    let (_db, server, _client) = start().await;
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"];
    // A missing order, so that the allowed writes are harmless 404s.
    for path in [
        "/api/orders",
        "/api/orders/999",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let probe = http(server.addr, "TRACE", path, &[], None).await;
        assert_rejected(&probe, 405, None);
        let allow = allowed(&probe);
        for method in methods {
            let response = http(server.addr, method, path, &[], None).await;
            if allow.contains(method) {
                assert_ne!(
                    response.status, 405,
                    "{method} {path} is in Allow {allow:?}"
                );
            } else {
                assert_eq!(
                    response.status, 405,
                    "{method} {path} is not in Allow {allow:?}"
                );
                assert_eq!(allowed(&response), allow, "{method} {path}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// Malformed HTTP and stalled clients
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn malformed_http_is_refused_and_the_server_keeps_serving() {
    let (_db, server, client) = start().await;
    insert_order(&client, "Ann", "Book").await;
    let before = state(&client).await;
    let mut oversized = b"GET /api/orders HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..2000 {
        oversized.extend_from_slice(format!("X-Filler-{i}: {}\r\n", "a".repeat(60)).as_bytes());
    }
    oversized.extend_from_slice(b"\r\n");
    let cases: [(&str, Vec<u8>); 8] = [
        ("garbage bytes", b"\x00\x01\x02\xff\xfe garbage\r\n\r\n".to_vec()),
        ("a bad request line", b"GET\r\n\r\n".to_vec()),
        ("a request line with spaces", b"GET /api orders HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ("an unknown protocol", b"GET /healthz SPDY/9\r\nHost: x\r\n\r\n".to_vec()),
        ("a header without a colon", b"GET /healthz HTTP/1.1\r\nHost x\r\n\r\n".to_vec()),
        (
            "a bad Content-Length",
            b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12abc\r\n\r\n{}".to_vec(),
        ),
        (
            "a bad chunk size",
            b"POST /api/orders HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n".to_vec(),
        ),
        ("an oversized header block", oversized),
    ];
    for (what, request) in cases {
        let exchange = exchange(server.addr, request, WAIT).await;
        let text = exchange.text();
        assert!(
            exchange.closed,
            "{what}: the connection was neither answered and closed nor closed: {text:?}"
        );
        assert!(
            text.is_empty() || text.starts_with("HTTP/1.1 4"),
            "{what}: answered with {text:?}"
        );
        assert_still_serving(server.addr).await;
    }
    assert_eq!(state(&client).await, before);
}

#[tokio::test]
async fn a_client_that_stalls_mid_request_head_does_not_block_others() {
    let db = TestDb::new();
    let mut config = db.config();
    // Far longer than the test may take: the others must not wait for it.
    config.header_timeout = Duration::from_secs(120);
    let server = TestServer::start(config).await;
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /api/orders HTTP/1.1\r\nHost: x\r\nAccept: app")
            .await
            .unwrap();
        stalled.push(stream);
    }
    let served = tokio::time::timeout(Duration::from_secs(5), async {
        let created = create(server.addr, "Ann", "Book").await;
        let (listed, _) = list(server.addr, "").await;
        (created, listed)
    })
    .await
    .expect("a stalled client blocked another request");
    assert_eq!(served.1, [served.0]);
    // The stalled connections were not answered in the meantime.
    let mut buf = [0u8; 64];
    for stream in &mut stalled {
        let pending = tokio::time::timeout(Duration::from_millis(50), stream.read(&mut buf)).await;
        assert!(pending.is_err(), "a half-sent request head was answered");
    }
}

#[tokio::test]
async fn a_stalled_request_head_is_dropped_after_the_header_timeout() {
    let db = TestDb::new();
    let mut config = db.config();
    config.header_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    let exchange = exchange(
        server.addr,
        b"GET /api/orders HTTP/1.1\r\nHost: x\r\n".to_vec(),
        WAIT,
    )
    .await;
    assert!(exchange.closed, "the stalled connection is closed");
    let text = exchange.text();
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text:?}"
    );
    assert_still_serving(server.addr).await;
}

// ---------------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------------

#[tokio::test]
async fn healthz_and_readyz_are_200_while_the_source_is_live() {
    let (_db, server, _client) = start().await;
    assert!(server.gateway.source.is_live());
    let health = get(server.addr, "/healthz").await;
    assert_eq!(health.status, 200);
    let ready = get(server.addr, "/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.body);
}

#[tokio::test]
async fn metrics_count_each_404_under_its_status() {
    let (_db, server, _client) = start().await;
    let before = responses_counted(server.addr, 404).await;
    assert_rejected(&get(server.addr, "/nope").await, 404, None);
    assert_rejected(&get(server.addr, "/api/orders/12345").await, 404, None);
    let metrics = get(server.addr, "/metrics").await;
    assert!(
        metrics
            .body
            .contains("rowcast_http_responses_total{status=\"404\"}"),
        "{}",
        metrics.body
    );
    assert_eq!(responses_counted(server.addr, 404).await, before + 2);
}
