//! permessage-deflate on `GET /ws` as docs/PROTOCOL.md ("Compression") states it, seen
//! on the wire: a client written on TCP that offers the extension and reads the RSV1
//! bit of every frame, Python's `websockets` (which offers it by default, like
//! browsers), and tokio-tungstenite (which does not) side by side, all fed by the same
//! committed rows.

mod support;
use support::*;

use std::net::SocketAddr;

use rowcast::config::Config;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What browsers (and Python's websockets) offer.
const BROWSER_OFFER: &str = "permessage-deflate; client_max_window_bits";
/// An 8 KiB customer name: an event far over the 512-byte threshold.
fn large_text() -> String {
    (0..256)
        .map(|i| {
            format!(
                "{:08x}",
                (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32
            )
        })
        .collect::<Vec<_>>()
        .join("-")
        .chars()
        .take(8 * 1024)
        .collect()
}

/// A server frame with its first header byte.
struct WireFrame {
    /// FIN, RSV and opcode bits.
    first: u8,
    payload: Vec<u8>,
}

impl WireFrame {
    fn opcode(&self) -> u8 {
        self.first & 0x0f
    }

    fn compressed(&self) -> bool {
        self.first & 0x40 != 0
    }

    /// The text it carries, inflated when RSV1 is set (a fresh inflater per message:
    /// the server takes no context over).
    fn text(&self) -> String {
        let payload = if self.compressed() {
            let mut inflater = flate2::Decompress::new(false);
            let mut input = self.payload.clone();
            input.extend_from_slice(&[0, 0, 0xff, 0xff]);
            let mut out = Vec::with_capacity(256 * 1024);
            inflater
                .decompress_vec(&input, &mut out, flate2::FlushDecompress::Sync)
                .expect("valid DEFLATE data");
            out
        } else {
            self.payload.clone()
        };
        String::from_utf8(payload).expect("UTF-8 text")
    }
}

/// A WebSocket client on TCP that offers what it is told and reads frames raw.
struct DeflateClient {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer.
    extensions: Option<String>,
}

impl DeflateClient {
    async fn connect(addr: SocketAddr, offer: Option<&str>) -> DeflateClient {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let offer = offer
            .map(|o| format!("Sec-WebSocket-Extensions: {o}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{offer}\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut client = DeflateClient {
            stream,
            buf: Vec::new(),
            extensions: None,
        };
        let end = loop {
            if let Some(at) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at;
            }
            assert!(client.fill().await, "closed before the handshake answer");
        };
        let head = String::from_utf8(client.buf.drain(..end + 4).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        client.extensions = head.lines().find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-extensions")
                .then(|| value.trim().to_owned())
        });
        client
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16 * 1024];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("no bytes in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&chunk[..n]);
        n > 0
    }

    /// The next frame; `None` when the connection ended.
    async fn frame(&mut self) -> Option<WireFrame> {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => (
                        u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize,
                        10,
                    ),
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                assert_eq!(self.buf[1] & 0x80, 0, "a server frame is never masked");
                if len != usize::MAX && self.buf.len() >= at + len {
                    let first = self.buf[0];
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some(WireFrame { first, payload });
                }
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads up to the server's close frame; its status code.
    async fn until_close(&mut self) -> u16 {
        loop {
            let frame = self.frame().await.expect("a close frame");
            if frame.opcode() == 0x8 {
                return u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
            }
        }
    }

    /// The next text frame (heartbeats skipped).
    async fn text(&mut self) -> WireFrame {
        loop {
            let frame = self.frame().await.expect("the stream ended");
            if frame.opcode() == 0x1 && !frame.text().contains(r#""type":"heartbeat""#) {
                return frame;
            }
        }
    }

    /// Sends a masked frame with the given first header byte.
    async fn send(&mut self, first: u8, payload: &[u8]) {
        let frame = rowcast::testing::client_frame(first, payload, [0x11, 0x22, 0x33, 0x44]);
        let _ = self.stream.write_all(&frame).await;
    }
}

/// Raw DEFLATE with a sync flush and its tail dropped, as a client compresses.
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut compressor = flate2::Compress::new(flate2::Compression::default(), false);
    let mut out = Vec::with_capacity(text.len() + 64);
    compressor
        .compress_vec(text, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
    out.truncate(out.len() - 4);
    out
}

/// A gateway with a `docs` table (a text body) tracked besides `orders`.
async fn start(db: &TestDb, config: Config) -> TestServer {
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE docs (id serial PRIMARY KEY, body text);
             SELECT realtime.track('docs');",
        )
        .await
        .unwrap();
    TestServer::start(config).await
}

/// Commits an orders row (an event of about 250 bytes), then a docs row of 8 KiB.
async fn insert_small_and_large(db: &TestDb) {
    let client = db.client().await;
    insert_order(&client, "Ada", "Widget").await;
    client
        .execute("INSERT INTO docs (body) VALUES ($1)", &[&large_text()])
        .await
        .unwrap();
}

#[tokio::test]
async fn events_over_the_threshold_go_compressed_and_inflate_to_the_plain_bytes() {
    let db = TestDb::new();
    let server = start(&db, db.config()).await;
    let mut deflating = DeflateClient::connect(server.addr, Some(BROWSER_OFFER)).await;
    assert_eq!(
        deflating.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    let mut plain = DeflateClient::connect(server.addr, None).await;
    assert_eq!(plain.extensions, None);
    for client in [&mut deflating, &mut plain] {
        let ready: Value = serde_json::from_str(&client.text().await.text()).unwrap();
        assert_eq!(ready["type"], "ready");
    }
    insert_small_and_large(&db).await;
    let (small, large) = (deflating.text().await, deflating.text().await);
    let (small_plain, large_plain) = (plain.text().await, plain.text().await);
    assert!(
        !small.compressed(),
        "{} bytes went compressed",
        small.payload.len()
    );
    assert!(large.compressed(), "8 KiB went plain");
    assert!(!small_plain.compressed() && !large_plain.compressed());
    // Byte for byte what the client without compression got.
    assert_eq!(small.text(), small_plain.text());
    assert_eq!(large.text(), large_plain.text());
    assert!(large.payload.len() < large_plain.payload.len() * 3 / 4);
    let change: Value = serde_json::from_str(&large.text()).unwrap();
    assert_eq!(change["row"]["body"], large_text().as_str());
    // One message went compressed (to one client), saving what it saved.
    assert_eq!(metric(server.addr, "rowcast_ws_deflated_total").await, 1.0);
    assert_eq!(
        metric(server.addr, "rowcast_ws_deflate_saved_bytes_total").await,
        (large_plain.payload.len() - large.payload.len()) as f64
    );
}

#[tokio::test]
async fn with_ws_compress_min_0_no_extension_is_negotiated() {
    let db = TestDb::new();
    let server = start(
        &db,
        Config {
            ws_compress_min: 0,
            ..db.config()
        },
    )
    .await;
    let mut client = DeflateClient::connect(server.addr, Some(BROWSER_OFFER)).await;
    assert_eq!(client.extensions, None);
    client.text().await;
    insert_small_and_large(&db).await;
    assert!(!client.text().await.compressed());
    assert!(!client.text().await.compressed());
    assert_eq!(metric(server.addr, "rowcast_ws_deflated_total").await, 0.0);
    // RSV1 is then a protocol error.
    client
        .send(0x80 | 0x40 | 0x1, &deflate(br#"{"type":"ping"}"#))
        .await;
    assert_eq!(client.until_close().await, 1002);
}

#[tokio::test]
async fn a_compressed_ping_gets_a_pong_and_a_compression_bomb_gets_1009() {
    let db = TestDb::new();
    let server = start(&db, db.config()).await;
    // A client that keeps its context: two messages, the second referring to the first.
    let mut client = DeflateClient::connect(server.addr, Some(BROWSER_OFFER)).await;
    client.text().await;
    let mut compressor = flate2::Compress::new(flate2::Compression::default(), false);
    for _ in 0..2 {
        let mut out = Vec::with_capacity(128);
        compressor
            .compress_vec(br#"{"type":"ping"}"#, &mut out, flate2::FlushCompress::Sync)
            .unwrap();
        out.truncate(out.len() - 4);
        client.send(0x80 | 0x40 | 0x1, &out).await;
        assert_eq!(client.text().await.text(), r#"{"type":"pong"}"#);
    }
    // 10 MB of zeros in about 10 KB: refused at 64 KiB inflated.
    let bomb = deflate(&vec![b'0'; 10 << 20]);
    assert!(bomb.len() < 64 * 1024);
    client.send(0x80 | 0x40 | 0x1, &bomb).await;
    assert_eq!(client.until_close().await, 1009);
    assert_eq!(
        metric(
            server.addr,
            "rowcast_limit_rejections_total{limit=\"ws_message_size\"}"
        )
        .await,
        1.0
    );
}

/// Python's `websockets` (PyPI, installed by scripts/test) with its default
/// compression: it must negotiate the extension, answer a compressed ping, and read
/// the same changes as a client without compression.
#[tokio::test]
async fn python_websockets_negotiates_deflate_and_reads_the_same_changes() {
    let db = TestDb::new();
    let server = start(&db, db.config()).await;
    let script = r#"
import asyncio, json, sys
from websockets.asyncio.client import connect

async def main():
    async with connect(sys.argv[1], max_size=2**20) as ws:
        print(json.dumps({"extensions": ws.response.headers.get("Sec-WebSocket-Extensions")}), flush=True)
        changes = 0
        async for message in ws:
            kind = json.loads(message)["type"]
            if kind == "ready":
                await ws.send('{"type":"ping","pad":"' + "p" * 600 + '"}')
            elif kind == "pong":
                print('{"pong":true}', flush=True)
            elif kind == "change":
                print(message, flush=True)
                changes += 1
                if changes == 2:
                    return

asyncio.run(main())
"#;
    let mut python = tokio::process::Command::new(python_tool("python"));
    python
        .arg("-c")
        .arg(script)
        .arg(format!("ws://{}/ws", server.addr));
    reads_what_a_plain_client_reads(&db, &server, python).await;
}

/// Chromium (Debian's, driven by playwright-core like tests/browser.rs): a page's
/// WebSocket offers permessage-deflate; the page reports what was negotiated
/// (`WebSocket.extensions`) and the changes it read.
#[tokio::test]
async fn chromium_negotiates_deflate_and_reads_the_same_changes() {
    let harness = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/harness.mjs");
    assert!(
        std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/ui/node_modules/playwright-core"
        ))
        .exists(),
        "the UI tests' packages are missing: run `npm ci` in tests/ui (scripts/test does)"
    );
    let db = TestDb::new();
    let server = start(&db, db.config()).await;
    let script = format!(
        r#"
import {{ launchBrowser }} from '{harness}';
const [addr] = process.argv.slice(1);
const browser = await launchBrowser();
try {{
  const page = await browser.newPage();
  await page.exposeFunction('report', (line) => console.log(line));
  await page.goto(`http://${{addr}}/healthz`);
  await page.evaluate((url) => new Promise((resolve, reject) => {{
    const ws = new WebSocket(url);
    let changes = 0;
    ws.onopen = () => report(JSON.stringify({{ extensions: ws.extensions }}));
    ws.onerror = () => reject(new Error('WebSocket error'));
    ws.onmessage = (e) => {{
      const kind = JSON.parse(e.data).type;
      if (kind === 'ready') ws.send('{{"type":"ping","pad":"' + 'p'.repeat(600) + '"}}');
      else if (kind === 'pong') report('{{"pong":true}}');
      else if (kind === 'change') {{
        report(e.data);
        if (++changes === 2) {{ ws.close(); resolve(); }}
      }}
    }};
  }}), `ws://${{addr}}/ws`);
}} finally {{
  await browser.close();
}}
"#
    );
    let mut node = tokio::process::Command::new("node");
    node.arg("--input-type=module")
        .arg("-e")
        .arg(script)
        .arg(server.addr.to_string());
    reads_what_a_plain_client_reads(&db, &server, node).await;
}

/// Runs a deflate-capable client that prints, one JSON line each: what it negotiated,
/// `{"pong":true}` once its (compressible) ping was answered, then the first two
/// changes it reads. Checks that it negotiated permessage-deflate and read exactly
/// what a client without compression read.
async fn reads_what_a_plain_client_reads(
    db: &TestDb,
    server: &TestServer,
    mut command: tokio::process::Command,
) {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the client");
    let mut plain = WsClient::connect(server.addr, "").await;
    plain.until_ready().await;
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let negotiated: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
    assert_eq!(
        negotiated["extensions"],
        "permessage-deflate; server_no_context_takeover"
    );
    // Live before the rows are committed.
    assert_eq!(next_line(&mut lines).await, r#"{"pong":true}"#);
    insert_small_and_large(db).await;
    for change in plain.changes(2).await {
        let got: Value = serde_json::from_str(&next_line(&mut lines).await).unwrap();
        assert_eq!(got, change);
    }
    let status = tokio::time::timeout(WAIT, child.wait()).await.unwrap();
    assert!(status.unwrap().success());
}

/// The next line a client printed.
async fn next_line(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("the client said nothing in time")
        .unwrap()
        .expect("the client ended early")
}
