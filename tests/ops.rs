//! Operations: readiness through a database outage, metrics, the connection limit,
//! CORS.

mod support;

use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::*;

async fn status_of(server: &TestServer, path: &str) -> u16 {
    http(server.addr, "GET", path, &[], None).await.status
}

async fn wait_for_status(server: &TestServer, path: &str, want: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if status_of(server, path).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{path} not {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_and_clients_get_everything_after_an_outage() {
    let cluster = Cluster::private();
    let db = cluster.database();
    let postgres = cluster.server().unwrap();
    let server = TestServer::start(db.config()).await;
    assert_eq!(status_of(&server, "/readyz").await, 200);
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    let mut sse = SseClient::connect(server.addr, "", &[]).await;
    sse.until_ready().await;

    postgres.stop().unwrap();
    wait_for_status(&server, "/readyz", 503, Duration::from_secs(5)).await;
    assert_eq!(status_of(&server, "/healthz").await, 200);
    let down = http(server.addr, "GET", "/api/orders", &[], None).await;
    assert_eq!(down.status, 503, "{}", down.body);
    assert_eq!(down.json()["error"]["code"], "unavailable");

    postgres.start_server().unwrap();
    wait_for_status(&server, "/readyz", 200, Duration::from_secs(5)).await;
    let client = db.client().await;
    let id = insert_order(&client, "after", "outage").await;
    let change = ws.changes(1).await.remove(0);
    assert_eq!(change["row"]["id"], id);
    assert_eq!(sse.changes(1).await.remove(0).json(), change);
    let metrics = http(server.addr, "GET", "/metrics", &[], None).await.body;
    assert!(
        metrics.contains("rowcast_db_reconnects_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn metrics_count_connections_deliveries_and_responses() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    let mut sse = SseClient::connect(server.addr, "", &[]).await;
    sse.until_ready().await;
    let client = db.client().await;
    insert_order(&client, "m", "p").await;
    ws.changes(1).await;
    sse.changes(1).await;
    http(server.addr, "GET", "/nope", &[], None).await;
    let metrics = http(server.addr, "GET", "/metrics", &[], None).await;
    assert_eq!(metrics.status, 200);
    assert!(metrics
        .header("content-type")
        .unwrap()
        .starts_with("text/plain"));
    for needle in [
        "rowcast_connections{transport=\"ws\"} 1",
        "rowcast_connections{transport=\"sse\"} 1",
        "rowcast_events_captured_total 1",
        "rowcast_events_delivered_total{transport=\"ws\"} 1",
        "rowcast_events_delivered_total{transport=\"sse\"} 1",
        "rowcast_ring_events 1",
        "rowcast_http_responses_total{status=\"404\"} 1",
        "rowcast_commit_to_send_seconds_count 1",
        "rowcast_source_lag_seconds",
        "rowcast_lagging_disconnects_total 0",
    ] {
        assert!(
            metrics.body.contains(needle),
            "missing {needle}\n{}",
            metrics.body
        );
    }
}

#[tokio::test]
async fn the_source_counts_its_reads_and_one_read_carries_a_whole_transaction() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let mut sse = SseClient::connect(server.addr, "", &[]).await;
    sse.until_ready().await;
    let reads = |metrics: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("rowcast_catchup_queries_total "))
            .unwrap_or_else(|| panic!("no rowcast_catchup_queries_total\n{metrics}"))
            .parse()
            .unwrap()
    };
    let before = reads(&http(server.addr, "GET", "/metrics", &[], None).await.body);
    assert!(before >= 1, "the source read at start-up");
    db.client()
        .await
        .batch_execute(
            "INSERT INTO orders (customer_name, product_name)
             SELECT 'bulk', 'p' || n FROM generate_series(1, 200) n",
        )
        .await
        .unwrap();
    sse.changes(200).await;
    let after = reads(&http(server.addr, "GET", "/metrics", &[], None).await.body);
    // One read for the commit; the idle check may add one every 2 s.
    assert!(
        (1..=3).contains(&(after - before)),
        "200 rows in one commit took {} reads",
        after - before
    );
}

#[tokio::test]
async fn connections_past_the_limit_get_a_clean_503() {
    let db = TestDb::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let gateway = rowcast::gateway::Gateway::start(db.config()).await.unwrap();
    let server = tokio::spawn(rowcast::http::run(
        listener,
        std::sync::Arc::clone(&gateway),
        3,
    ));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(SseClient::connect(addr, "", &[]).await);
    }
    let refused = http(addr, "GET", "/healthz", &[], None).await;
    assert_eq!(refused.status, 503);
    assert_eq!(refused.json()["error"]["code"], "unavailable");
    drop(held.pop());
    // The slot frees once the server notices the close.
    let deadline = Instant::now() + WAIT;
    loop {
        if http(addr, "GET", "/healthz", &[], None).await.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gateway.shutdown.cancel();
    drop(held);
    assert!(server.await.unwrap());
    gateway.stop().await;
}

#[tokio::test]
async fn cors_allows_only_configured_origins_and_never_credentials() {
    let db = TestDb::new();
    let config = rowcast::config::Config {
        cors_origins: vec!["https://app.example".into()],
        ..db.config()
    };
    let server = TestServer::start(config).await;
    let allowed = http(
        server.addr,
        "GET",
        "/api/orders",
        &[("Origin", "https://app.example")],
        None,
    )
    .await;
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert!(allowed
        .header("access-control-expose-headers")
        .unwrap()
        .contains("X-Event-Id"));
    assert_eq!(allowed.header("access-control-allow-credentials"), None);
    let other = http(
        server.addr,
        "GET",
        "/api/orders",
        &[("Origin", "https://evil.example")],
        None,
    )
    .await;
    assert_eq!(other.header("access-control-allow-origin"), None);
    let preflight = http(
        server.addr,
        "OPTIONS",
        "/api/orders",
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    )
    .await;
    assert_eq!(preflight.status, 204);
    assert!(preflight
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    // An EventSource from another origin: the stream's own head carries the same
    // headers, whether the socket serves it (first request) or hyper does (a
    // request after another on the same connection).
    for origin in ["https://app.example", "https://evil.example"] {
        let direct = SseClient::connect(server.addr, "", &[("Origin", origin)]).await;
        let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        let through_hyper =
            SseClient::connect_on(stream, server.addr, "", &[("Origin", origin)]).await;
        for sse in [&direct, &through_hyper] {
            assert_eq!(sse.status, 200);
            let expected = (origin == "https://app.example").then_some(origin);
            assert_eq!(sse.header("access-control-allow-origin"), expected);
            assert_eq!(sse.header("access-control-allow-credentials"), None);
        }
    }
}

#[tokio::test]
async fn the_ui_is_served_with_security_headers() {
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let page = http(server.addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(page.header("content-security-policy").is_some());
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    for asset in [
        "/app.js",
        "/client.js",
        "/style.css",
        "/favicon.svg",
        "/index.html",
    ] {
        assert_eq!(
            http(server.addr, "GET", asset, &[], None).await.status,
            200,
            "{asset}"
        );
    }
}

async fn sse_from(source_ip: &str, addr: std::net::SocketAddr) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(format!("{source_ip}:0").parse().unwrap())
        .unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = tokio::io::AsyncReadExt::read(&mut stream, &mut buf)
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    stream
}

#[tokio::test]
async fn limits_answer_with_clear_statuses_and_are_counted() {
    let db = TestDb::new();
    let server = TestServer::start(rowcast::config::Config {
        max_connections_per_ip: 2,
        max_header_bytes: 8192,
        max_body_bytes: 100,
        header_timeout: Duration::from_millis(300),
        ..db.config()
    })
    .await;
    // Per client IP: the third connection from 127.0.0.1 is refused, 127.0.0.2 is not.
    let _a = sse_from("127.0.0.1", server.addr).await;
    let _b = sse_from("127.0.0.1", server.addr).await;
    let refused = http(server.addr, "GET", "/healthz", &[], None).await;
    assert_eq!(refused.status, 429);
    assert_eq!(refused.json()["error"]["code"], "too_many_connections");
    let _c = sse_from("127.0.0.2", server.addr).await;
    drop((_a, _b));
    // Body size.
    let big = vec![b' '; 101];
    let deadline = Instant::now() + WAIT;
    let too_large = loop {
        let response = http(server.addr, "POST", "/api/orders", &[], Some(&big)).await;
        if response.status != 429 {
            break response;
        }
        assert!(Instant::now() < deadline, "per-IP slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(too_large.status, 413);
    // Header size and header time.
    let huge_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(10_000)
    );
    let response = support::clients::raw_exchange(server.addr, huge_header.as_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 431"), "{response}");
    let stalled = support::clients::raw_exchange(server.addr, b"GET /healthz HTTP/1.1\r\nHo").await;
    assert!(!stalled.contains("200 OK"), "{stalled}");
    let metrics = http(server.addr, "GET", "/metrics", &[], None).await.body;
    for limit in [
        "connections_per_ip",
        "body_size",
        "header_size",
        "header_timeout",
    ] {
        let line = format!("rowcast_limit_rejections_total{{limit=\"{limit}\"}} ");
        let count: u64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&line))
            .unwrap_or_else(|| panic!("no {line}\n{metrics}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "{limit} not counted");
    }
}
