//! Stream clients over real sockets: tokio-tungstenite for WebSocket, raw HTTP/1.1
//! (chunked decoding by hand) for SSE. Every message they receive is checked against
//! docs/asyncapi.yaml (see [`super::contract`]), so every stream test also tests the spec.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::contract::{check_sse_block, parse_ws_message};
use super::WAIT;

/// A WebSocket client.
pub struct WsClient {
    /// The socket, for tests that send their own frames.
    pub socket: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// How a WebSocket stream ended.
#[derive(Debug, PartialEq)]
pub enum WsEnd {
    /// A close frame with this code.
    Closed(u16, String),
    /// The TCP connection ended without a close frame.
    Dropped,
}

impl WsClient {
    /// Connects to `/ws?{query}`.
    pub async fn connect(addr: SocketAddr, query: &str) -> WsClient {
        let url = format!("ws://{addr}/ws?{query}");
        let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("ws connect timed out")
            .expect("ws connect");
        WsClient { socket }
    }

    /// The next JSON text message (heartbeats skipped unless `keep_heartbeats`).
    pub async fn next_json(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("no WebSocket message in time")
                .expect("WebSocket ended")
                .expect("WebSocket error");
            match message {
                Message::Text(text) => {
                    let value = parse_ws_message(text.as_str());
                    if value["type"] != "heartbeat" {
                        return value;
                    }
                }
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// Messages up to and including `ready`.
    pub async fn until_ready(&mut self) -> (Vec<Value>, Value) {
        let mut before = Vec::new();
        loop {
            let message = self.next_json().await;
            if message["type"] == "ready" {
                return (before, message);
            }
            before.push(message);
        }
    }

    /// The next `n` change messages.
    pub async fn changes(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let message = self.next_json().await;
            assert_eq!(
                message["type"], "change",
                "expected a change, got {message}"
            );
            out.push(message);
        }
        out
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.socket
            .send(Message::Text(text.into()))
            .await
            .expect("send");
    }

    /// Reads until the stream ends, skipping messages; returns how it ended.
    pub async fn end(&mut self) -> WsEnd {
        loop {
            match tokio::time::timeout(WAIT, self.socket.next())
                .await
                .expect("stream did not end")
            {
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = frame
                        .map(|CloseFrame { code, reason }| (u16::from(code), reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return WsEnd::Closed(code, reason);
                }
                Some(Ok(message)) => check_ws_text(&message),
                Some(Err(_)) | None => return WsEnd::Dropped,
            }
        }
    }
}

/// One SSE block.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    /// The `id:` field.
    pub id: Option<String>,
    /// The `event:` field.
    pub event: Option<String>,
    /// The `data:` lines joined.
    pub data: Option<String>,
    /// `retry:`.
    pub retry: Option<String>,
    /// Comment lines (`: keepalive`).
    pub comments: Vec<String>,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(self.data.as_deref().expect("data")).expect("JSON data")
    }
}

/// A raw HTTP/1.1 SSE client.
pub struct SseClient {
    stream: TcpStream,
    /// The status code of the response.
    pub status: u16,
    /// Response headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Decoded body bytes not yet parsed into blocks.
    body: Vec<u8>,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    chunked: bool,
    ended: bool,
}

impl SseClient {
    /// `GET /events?{query}` with extra request headers.
    pub async fn connect(
        addr: SocketAddr,
        query: &str,
        extra_headers: &[(&str, &str)],
    ) -> SseClient {
        tokio::time::timeout(WAIT, SseClient::try_connect(addr, query, extra_headers))
            .await
            .expect("SSE response head in time")
            .expect("SSE connect")
    }

    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("no SSE bytes in time")
            .unwrap_or(0);
        self.raw.extend_from_slice(&buf[..n]);
        n > 0
    }

    async fn read_head(&mut self) {
        loop {
            if let Some(end) = find(&self.raw, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.raw[..end]).into_owned();
                self.raw.drain(..end + 4);
                let mut lines = head.lines();
                let status_line = lines.next().unwrap_or_default();
                self.status = status_line
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                for line in lines {
                    if let Some((name, value)) = line.split_once(':') {
                        self.headers
                            .push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
                    }
                }
                self.chunked = self
                    .header("transfer-encoding")
                    .is_some_and(|v| v.contains("chunked"));
                return;
            }
            assert!(
                self.fill().await,
                "connection closed before the response head"
            );
        }
    }

    /// A response header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Moves complete chunks from `raw` to `body`.
    fn dechunk(&mut self) {
        if !self.chunked {
            self.body.append(&mut self.raw);
            return;
        }
        loop {
            let Some(line_end) = find(&self.raw, b"\r\n") else {
                return;
            };
            let size_text = String::from_utf8_lossy(&self.raw[..line_end]).into_owned();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .expect("chunk size");
            if self.raw.len() < line_end + 2 + size + 2 {
                return;
            }
            if size == 0 {
                self.ended = true;
                self.raw.clear();
                return;
            }
            self.body
                .extend_from_slice(&self.raw[line_end + 2..line_end + 2 + size]);
            self.raw.drain(..line_end + 2 + size + 2);
        }
    }

    /// A complete block already received, if there is one.
    fn take_block(&mut self) -> Option<SseEvent> {
        self.dechunk();
        let end = find(&self.body, b"\n\n")?;
        let text = String::from_utf8(self.body[..end].to_vec()).expect("UTF-8 block");
        self.body.drain(..end + 2);
        let block = parse_block(&text);
        if let Some(data) = &block.data {
            check_sse_block(block.event.as_deref(), data);
        }
        Some(block)
    }

    /// The next block, or `None` when the stream ended.
    pub async fn next_block(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(block) = self.take_block() {
                return Some(block);
            }
            if self.ended || !self.fill().await {
                return None;
            }
        }
    }

    /// The next block with an `event:` (skips `retry:`, id-only and comment blocks).
    pub async fn next_event(&mut self) -> SseEvent {
        loop {
            let block = self.next_block().await.expect("SSE stream ended");
            if block.event.is_some() {
                return block;
            }
        }
    }

    /// Events up to and including `ready`.
    pub async fn until_ready(&mut self) -> (Vec<SseEvent>, SseEvent) {
        let mut before = Vec::new();
        loop {
            let event = self.next_event().await;
            if event.event.as_deref() == Some("ready") {
                return (before, event);
            }
            before.push(event);
        }
    }

    /// The next `n` change events.
    pub async fn changes(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let event = self.next_event().await;
            assert_eq!(
                event.event.as_deref(),
                Some("change"),
                "expected a change, got {event:?}"
            );
            out.push(event);
        }
        out
    }

    /// Whether the stream ends (cleanly or not) within the wait.
    pub async fn ends(&mut self) -> bool {
        while self.next_block().await.is_some() {}
        true
    }
}

fn parse_block(text: &str) -> SseEvent {
    let mut event = SseEvent::default();
    for line in text.split('\n') {
        if let Some(comment) = line.strip_prefix(':') {
            event.comments.push(comment.trim().to_owned());
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
        match field {
            "id" => event.id = Some(value),
            "event" => event.event = Some(value),
            "data" => {
                event.data = Some(match event.data.take() {
                    Some(previous) => format!("{previous}\n{value}"),
                    None => value,
                })
            }
            "retry" => event.retry = Some(value),
            _ => {}
        }
    }
    event
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Sends raw bytes and returns whatever comes back until the server closes or 2 s of
/// silence pass.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut response = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&response).into_owned()
}

/// A response to [`http`].
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: String,
}

impl HttpResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// A sample from `/metrics`: the value of the line that starts with `series `.
pub async fn metric(addr: SocketAddr, series: &str) -> f64 {
    let response = http(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(response.status, 200);
    let prefix = format!("{series} ");
    response
        .body
        .lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {series} in /metrics"))
        .trim()
        .parse()
        .unwrap()
}

/// Whether `GET /readyz` answers 200. Any failure to connect or to get an answer is
/// "not yet": a process that is starting may accept and then reset a connection.
pub async fn readyz_ok(addr: SocketAddr) -> bool {
    let probe = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        Some(response.starts_with(b"HTTP/1.1 200 "))
    };
    matches!(tokio::time::timeout(WAIT, probe).await, Ok(Some(true)))
}

/// One HTTP/1.1 request over a fresh connection (`Connection: close`). A JSON body
/// gets `Content-Type: application/json` unless `headers` names one.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let has_type = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-type"));
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        if !has_type {
            request.push_str("Content-Type: application/json\r\n");
        }
        request.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    request.push_str("\r\n");
    let mut bytes = request.into_bytes();
    if let Some(body) = body {
        bytes.extend_from_slice(body);
    }
    // The server may answer (413) before reading a large body; ignore write errors.
    let _ = stream.write_all(&bytes).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(WAIT, stream.read_to_end(&mut response)).await;
    let split = find(&response, b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head: {:?}", String::from_utf8_lossy(&response)));
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = String::from_utf8_lossy(&response[split + 4..]).into_owned();
    HttpResponse {
        status,
        headers,
        body,
    }
}

impl WsClient {
    /// Connects to `/ws?{query}` over a TCP stream the caller prepared (for example
    /// with a small receive buffer, see [`small_buffer_stream`]).
    pub async fn connect_on(stream: TcpStream, addr: SocketAddr, query: &str) -> WsClient {
        let url = format!("ws://{addr}/ws?{query}");
        let (socket, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream)),
        )
        .await
        .expect("ws connect timed out")
        .expect("ws connect");
        WsClient { socket }
    }

    /// The next frame of any kind, heartbeats and pings included.
    pub async fn next_message(&mut self) -> Message {
        let message = tokio::time::timeout(WAIT, self.socket.next())
            .await
            .expect("no WebSocket message in time")
            .expect("WebSocket ended")
            .expect("WebSocket error");
        check_ws_text(&message);
        message
    }
}

/// Checks a text frame against docs/asyncapi.yaml; other frames pass.
fn check_ws_text(message: &Message) {
    if let Message::Text(text) = message {
        parse_ws_message(text.as_str());
    }
}

impl SseClient {
    /// `GET /events?{query}` over a TCP stream the caller prepared.
    pub async fn connect_on(
        stream: TcpStream,
        addr: SocketAddr,
        query: &str,
        extra_headers: &[(&str, &str)],
    ) -> SseClient {
        let request = events_request(addr, query, extra_headers);
        SseClient::connect_in_pieces(stream, &[request.as_bytes()]).await
    }

    /// Sends a request head in `pieces`, 100 ms apart, and reads the response head.
    pub async fn connect_in_pieces(mut stream: TcpStream, pieces: &[&[u8]]) -> SseClient {
        for (i, piece) in pieces.iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            stream.write_all(piece).await.expect("write request");
        }
        let mut client = SseClient {
            stream,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            raw: Vec::new(),
            chunked: false,
            ended: false,
        };
        client.read_head().await;
        client
    }

    /// Whether the body ended with the terminating chunk (a clean end, not a drop).
    pub fn ended_cleanly(&self) -> bool {
        self.ended
    }
}

/// The head of `GET /events?{query}` with extra headers.
pub fn events_request(addr: SocketAddr, query: &str, extra_headers: &[(&str, &str)]) -> String {
    let mut request =
        format!("GET /events?{query} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request
}

/// A TCP connection whose receive buffer is a few KiB, so that a client that does not
/// read pushes back on the server at once instead of after megabytes.
pub async fn small_buffer_stream(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    tokio::time::timeout(WAIT, socket.connect(addr))
        .await
        .expect("connect timed out")
        .expect("connect")
}

/// The key of [`upgrade_request`] and [`RawWs`] (RFC 6455's sample nonce).
const SAMPLE_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

fn upgrade_head(addr: SocketAddr, query: &str) -> String {
    format!(
        "GET /ws?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {SAMPLE_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// Parses a response head (`HTTP/1.1 400 …` and headers).
fn parse_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    (status, headers)
}

/// Sends a genuine WebSocket upgrade request for `/ws?{query}` and returns the
/// response: for a refusal, the head and its `Content-Length` body; for 101, the head.
pub async fn upgrade_request(addr: SocketAddr, query: &str) -> HttpResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(upgrade_head(addr, query).as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let split = loop {
        if let Some(split) = find(&raw, b"\r\n\r\n") {
            break split;
        }
        let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("no response in time")
            .expect("read");
        assert!(n > 0, "connection closed before the response head");
        raw.extend_from_slice(&buf[..n]);
    };
    let (status, headers) = parse_head(&String::from_utf8_lossy(&raw[..split]));
    let mut body = raw[split + 4..].to_vec();
    if status != 101 {
        let length: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        while body.len() < length {
            let n = tokio::time::timeout(WAIT, stream.read(&mut buf))
                .await
                .expect("no body in time")
                .expect("read");
            assert!(n > 0, "connection closed inside the body");
            body.extend_from_slice(&buf[..n]);
        }
    }
    HttpResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// One WebSocket frame as [`RawWs`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawFrame {
    /// The FIN bit.
    pub fin: bool,
    /// 0x1 text, 0x2 binary, 0x8 close, 0x9 ping, 0xA pong.
    pub opcode: u8,
    /// The unmasked payload.
    pub payload: Vec<u8>,
}

impl RawFrame {
    /// A close frame's code and reason.
    pub fn close(&self) -> Option<(u16, String)> {
        if self.opcode != 0x8 {
            return None;
        }
        match self.payload.as_slice() {
            [] => Some((1005, String::new())),
            [a, b, reason @ ..] => Some((
                u16::from_be_bytes([*a, *b]),
                String::from_utf8_lossy(reason).into_owned(),
            )),
            _ => None,
        }
    }
}

/// A WebSocket client written by hand on TCP, for what a well-behaved library will
/// not do: ignore pings, send invalid UTF-8.
pub struct RawWs {
    stream: TcpStream,
    /// Bytes read but not yet parsed into frames.
    buf: Vec<u8>,
}

impl RawWs {
    /// Handshakes for `/ws?{query}`; panics unless the answer is 101.
    pub async fn connect(addr: SocketAddr, query: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        stream
            .write_all(upgrade_head(addr, query).as_bytes())
            .await
            .expect("write");
        let mut raw = RawWs {
            stream,
            buf: Vec::new(),
        };
        let split = loop {
            if let Some(split) = find(&raw.buf, b"\r\n\r\n") {
                break split;
            }
            assert!(raw.fill().await, "closed before the handshake answer");
        };
        let (status, _) = parse_head(&String::from_utf8_lossy(&raw.buf[..split]));
        assert_eq!(status, 101, "handshake refused");
        raw.buf.drain(..split + 4);
        raw
    }

    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 16384];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut buf))
            .await
            .expect("no WebSocket bytes in time")
            .unwrap_or(0);
        self.buf.extend_from_slice(&buf[..n]);
        n > 0
    }

    /// Sends one masked frame with FIN set.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8]) {
        let mask = [0x37u8, 0xfa, 0x21, 0x3d];
        let frame = rowcast::testing::client_frame(0x80 | opcode, payload, mask);
        // The server may close before reading it all; that is for the test to see.
        let _ = self.stream.write_all(&frame).await;
    }

    /// The next frame, or `None` when the connection ended.
    pub async fn read_frame(&mut self) -> Option<RawFrame> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                if frame.opcode == 0x1 && frame.fin {
                    parse_ws_message(&String::from_utf8_lossy(&frame.payload));
                }
                return Some(frame);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Reads frames (answering nothing) until a close frame; `None` if the connection
    /// ended without one.
    pub async fn until_close(&mut self) -> Option<(u16, String)> {
        while let Some(frame) = self.read_frame().await {
            if let Some(close) = frame.close() {
                return Some(close);
            }
        }
        None
    }
}

/// Parses one unmasked server frame from the front of `buf`.
fn parse_frame(buf: &[u8]) -> Option<(RawFrame, usize)> {
    let [first, second, ..] = buf else {
        return None;
    };
    let (len, mut at) = match second & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let mask = if second & 0x80 != 0 {
        let mask: [u8; 4] = buf.get(at..at + 4)?.try_into().ok()?;
        at += 4;
        Some(mask)
    } else {
        None
    };
    let mut payload = buf.get(at..at + len)?.to_vec();
    if let Some(mask) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
    }
    Some((
        RawFrame {
            fin: first & 0x80 != 0,
            opcode: first & 0x0f,
            payload,
        },
        at + len,
    ))
}

impl SseClient {
    /// Like [`connect`](Self::connect), but `None` instead of a panic when the server
    /// is not there (for clients that retry through outages).
    pub async fn try_connect(
        addr: SocketAddr,
        query: &str,
        extra_headers: &[(&str, &str)],
    ) -> Option<SseClient> {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        let request = events_request(addr, query, extra_headers);
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut client = SseClient {
            stream,
            status: 0,
            headers: Vec::new(),
            body: Vec::new(),
            raw: Vec::new(),
            chunked: false,
            ended: false,
        };
        loop {
            if find(&client.raw, b"\r\n\r\n").is_some() {
                client.read_head().await;
                return Some(client);
            }
            let mut buf = [0u8; 4096];
            let n = client.stream.read(&mut buf).await.ok()?;
            if n == 0 {
                return None;
            }
            client.raw.extend_from_slice(&buf[..n]);
        }
    }

    /// The next block; `None` when the stream ended or broke (never panics on I/O).
    pub async fn next_block_lenient(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(block) = self.take_block() {
                return Some(block);
            }
            if self.ended {
                return None;
            }
            let mut buf = [0u8; 16384];
            match self.stream.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.raw.extend_from_slice(&buf[..n]),
            }
        }
    }
}
