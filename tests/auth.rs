//! Authentication: off by default; a bearer token or an HS256 JWT for writes, and
//! with `--auth-streams` for reads and streams too; JWT `tables` claims limit streams.

mod support;

use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use rowcast::auth::sign_jwt;
use rowcast::config::Config;
use serde_json::json;
use support::*;

const ORDER: &[u8] = br#"{"customer_name":"Ann","product_name":"Book"}"#;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn orders_count(db: &TestDb) -> i64 {
    db.client()
        .await
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn with_a_token_writes_need_it_and_reads_stay_open() {
    let db = TestDb::new();
    let server = TestServer::start(Config {
        auth_token: Some("s3cret".into()),
        ..db.config()
    })
    .await;
    let missing = http(server.addr, "POST", "/api/orders", &[], Some(ORDER)).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.header("www-authenticate"), Some("Bearer"));
    assert_eq!(missing.json()["error"]["code"], "unauthorized");
    let wrong = http(
        server.addr,
        "POST",
        "/api/orders",
        &[("Authorization", "Bearer nope")],
        Some(ORDER),
    )
    .await;
    assert_eq!(wrong.status, 401);
    let delete = http(server.addr, "DELETE", "/api/orders/1", &[], None).await;
    assert_eq!(delete.status, 401);
    assert_eq!(orders_count(&db).await, 0);
    let right = http(
        server.addr,
        "POST",
        "/api/orders",
        &[("Authorization", "Bearer s3cret")],
        Some(ORDER),
    )
    .await;
    assert_eq!(right.status, 201);
    let by_query = http(
        server.addr,
        "PATCH",
        "/api/orders/1?access_token=s3cret",
        &[],
        Some(br#"{"status":"shipped"}"#),
    )
    .await;
    assert_eq!(by_query.status, 200);
    assert_eq!(
        http(server.addr, "GET", "/api/orders", &[], None)
            .await
            .status,
        200
    );
    server.caught_up(&db).await;
    let mut open = WsClient::connect(server.addr, "since=0").await;
    let (backlog, _) = open.until_ready().await;
    assert_eq!(backlog.len(), 2);
}

#[tokio::test]
async fn with_auth_streams_reads_and_streams_need_the_token_too() {
    let db = TestDb::new();
    let server = TestServer::start(Config {
        auth_token: Some("s3cret".into()),
        auth_streams: true,
        ..db.config()
    })
    .await;
    assert_eq!(
        http(server.addr, "GET", "/api/orders", &[], None)
            .await
            .status,
        401
    );
    let sse = SseClient::connect(server.addr, "", &[]).await;
    assert_eq!(sse.status, 401);
    let ws = http(
        server.addr,
        "GET",
        "/ws",
        &[
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Version", "13"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        None,
    )
    .await;
    assert_eq!(ws.status, 401);
    // Browsers cannot set headers on EventSource/WebSocket: the query parameter works.
    let mut sse = SseClient::connect(server.addr, "access_token=s3cret", &[]).await;
    assert_eq!(sse.status, 200);
    sse.until_ready().await;
    let mut ws = WsClient::connect(server.addr, "access_token=s3cret&since=0").await;
    ws.until_ready().await;
    assert_eq!(
        http(server.addr, "GET", "/healthz", &[], None).await.status,
        200
    );
}

#[tokio::test]
async fn jwts_are_verified_and_their_tables_claim_limits_streams() {
    let db = TestDb::new();
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE audit (id serial PRIMARY KEY, note text); SELECT realtime.track('audit')",
        )
        .await
        .unwrap();
    let server = TestServer::start(Config {
        jwt_secret: Some("jwt-secret".into()),
        auth_streams: true,
        ..db.config()
    })
    .await;
    let expired = sign_jwt("jwt-secret", &json!({"exp": now() - 10}));
    let forged = sign_jwt("other-secret", &json!({"exp": now() + 600}));
    let orders_only = sign_jwt(
        "jwt-secret",
        &json!({"exp": now() + 600, "tables": ["orders"]}),
    );
    let audit_only = sign_jwt(
        "jwt-secret",
        &json!({"exp": now() + 600, "tables": ["audit"]}),
    );
    for bad in [&expired, &forged] {
        let response = http(
            server.addr,
            "POST",
            "/api/orders",
            &[("Authorization", &format!("Bearer {bad}"))],
            Some(ORDER),
        )
        .await;
        assert_eq!(response.status, 401, "{}", response.body);
    }
    let forbidden = http(
        server.addr,
        "POST",
        "/api/orders",
        &[("Authorization", &format!("Bearer {audit_only}"))],
        Some(ORDER),
    )
    .await;
    assert_eq!(forbidden.status, 403);
    assert_eq!(forbidden.json()["error"]["code"], "forbidden");
    let denied = SseClient::connect(
        server.addr,
        &format!("tables=orders&access_token={audit_only}"),
        &[],
    )
    .await;
    assert_eq!(denied.status, 403);
    // Without tables=, the stream carries only what the claim allows.
    let mut limited = WsClient::connect(server.addr, &format!("access_token={audit_only}")).await;
    limited.until_ready().await;
    let created = http(
        server.addr,
        "POST",
        "/api/orders",
        &[("Authorization", &format!("Bearer {orders_only}"))],
        Some(ORDER),
    )
    .await;
    assert_eq!(created.status, 201);
    client
        .execute("INSERT INTO audit (note) VALUES ('seen')", &[])
        .await
        .unwrap();
    let change = limited.changes(1).await.remove(0);
    assert_eq!(
        change["table"], "audit",
        "the orders insert must not reach an audit-only client"
    );
}

/// `token` with its header part replaced by `header` (base64url), signature kept.
fn with_header(token: &str, header: &str) -> String {
    let (_, rest) = token.split_once('.').unwrap();
    format!("{header}.{rest}")
}

#[tokio::test]
async fn jwts_naming_another_algorithm_not_yet_valid_or_tampered_get_401() {
    let db = TestDb::new();
    let server = TestServer::start(Config {
        jwt_secret: Some("jwt-secret".into()),
        ..db.config()
    })
    .await;
    let good = sign_jwt("jwt-secret", &json!({"exp": now() + 600}));
    // base64url of {"alg":"none","typ":"JWT"} and {"alg":"RS256","typ":"JWT"}.
    let alg_none = with_header(&good, "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0");
    let (unsigned, _) = alg_none.rsplit_once('.').unwrap();
    let unsigned = format!("{unsigned}.");
    let rs256 = with_header(&good, "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9");
    let not_yet = sign_jwt("jwt-secret", &json!({"nbf": now() + 600}));
    let (signed, signature) = good.rsplit_once('.').unwrap();
    let flipped = if signature.starts_with('A') { "B" } else { "A" };
    let tampered = format!("{signed}.{flipped}{}", &signature[1..]);
    for bad in [&alg_none, &unsigned, &rs256, &not_yet, &tampered] {
        let response = http(
            server.addr,
            "POST",
            "/api/orders",
            &[("Authorization", &format!("Bearer {bad}"))],
            Some(ORDER),
        )
        .await;
        assert_eq!(response.status, 401, "{bad}: {}", response.body);
        assert_eq!(response.json()["error"]["code"], "unauthorized");
    }
    assert_eq!(orders_count(&db).await, 0);
    let accepted = http(
        server.addr,
        "POST",
        "/api/orders",
        &[("Authorization", &format!("Bearer {good}"))],
        Some(ORDER),
    )
    .await;
    assert_eq!(accepted.status, 201, "{}", accepted.body);
}

#[test]
fn auth_streams_without_a_credential_is_a_configuration_error() {
    let output = Command::new(binary())
        .arg("--auth-streams")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.lines().last().unwrap().contains("--auth-token"),
        "{stderr}"
    );
}

#[tokio::test]
async fn access_tokens_never_reach_the_logs() {
    let db = TestDb::new();
    let port = free_port();
    let child = Command::new(binary())
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            &db.url,
            "--auth-streams",
        ])
        .env("ROWCAST_AUTH_TOKEN", "very-secret-token")
        .env("RUST_LOG", "rowcast=trace")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut guard = ChildGuard(child);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let ok = http(
        addr,
        "GET",
        "/api/orders?access_token=very-secret-token",
        &[],
        None,
    )
    .await;
    assert_eq!(ok.status, 200);
    let bad = http(
        addr,
        "GET",
        "/api/orders?access_token=very-secret-tokex",
        &[],
        None,
    )
    .await;
    assert_eq!(bad.status, 401);
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    let mut output = String::new();
    if let Some(mut stderr) = guard.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut stderr, &mut output);
    }
    assert!(
        output.contains("request"),
        "expected request logs at trace level"
    );
    assert!(
        !output.contains("very-secret-tok"),
        "a token leaked into the logs"
    );
}

struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
