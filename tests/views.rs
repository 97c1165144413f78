//! Live views, as DESIGN.md ("Live views: filtered streams that stay exact") states
//! them: UPDATEs judged on both images (`view: enter|leave`), on both transports, from
//! the ring and from `change_log` alike.
//!
//! What a client should get is computed by SQL from `realtime.change_log` itself, so
//! every check compares what a client saw with what the database committed.

mod support;
use support::*;

use std::net::SocketAddr;

use rowcast::config::Config;
use serde_json::Value;

/// The two transports.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transport {
    Ws,
    Sse,
}

const BOTH: [Transport; 2] = [Transport::Ws, Transport::Sse];

/// A stream client of either transport, read as JSON messages. SSE blocks are checked
/// on the way: `event:` is the type; `id:` is a change's id, `ready`'s head, and
/// absent on snapshot pages.
enum Client {
    Ws(WsClient),
    Sse(SseClient),
}

impl Client {
    async fn open(transport: Transport, addr: SocketAddr, query: &str) -> Client {
        match transport {
            Transport::Ws => Client::Ws(WsClient::connect(addr, query).await),
            Transport::Sse => {
                let sse = SseClient::connect(addr, query, &[]).await;
                assert_eq!(sse.status, 200, "GET /events?{query}");
                Client::Sse(sse)
            }
        }
    }

    /// The next message that is not a heartbeat.
    async fn next(&mut self) -> Value {
        match self {
            Client::Ws(ws) => ws.next_json().await,
            Client::Sse(sse) => {
                let event = sse.next_event().await;
                let message = event.json();
                let kind = message["type"].as_str().expect("a type").to_owned();
                assert_eq!(event.event.as_deref(), Some(kind.as_str()), "{event:?}");
                match kind.as_str() {
                    "change" => assert_eq!(event.id.as_deref(), message["id"].as_str()),
                    "ready" | "reset" => {
                        assert_eq!(event.id.as_deref(), message["head"].as_str())
                    }
                    _ => assert_eq!(event.id, None, "{event:?}"),
                }
                message
            }
        }
    }

    async fn until_ready(&mut self) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let message = self.next().await;
            if message["type"] == "ready" {
                return (before, message);
            }
            before.push(message);
        }
    }

    /// Changes up to and including the first TRUNCATE.
    async fn changes_until_truncate(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let message = self.next().await;
            assert_eq!(message["type"], "change", "{message}");
            let last = message["op"] == "TRUNCATE";
            out.push(message);
            if last {
                return out;
            }
        }
    }
}

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

/// Percent-encodes a query value.
fn enc(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
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
    let db = TestDb::new();
    let query = query_of(filters);
    let wide = TestServer::start(db.config()).await;
    let narrow = TestServer::start(Config {
        ring_capacity: 2,
        ..db.config()
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
    let want = expected(&db, start, matches, !filters.is_empty()).await;
    assert!(want.iter().any(|(_, view)| !view.is_empty()) || filters.is_empty());
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
