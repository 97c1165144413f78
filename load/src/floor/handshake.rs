//! The one request a stream connection sends: `GET /ws` (answered 101 with the
//! WebSocket accept key) or `GET /events` (answered 200 with a chunked SSE body).

use base64::Engine;
use sha1::{Digest, Sha1};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fanout::Kind;

/// The longest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// RFC 6455's GUID, appended to the client's key.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Reads the request head and writes the response head; what the stream is.
pub async fn answer(stream: &mut TcpStream) -> std::io::Result<Kind> {
    let head = read_head(stream).await?;
    let text = String::from_utf8_lossy(&head);
    let path = text.split(' ').nth(1).unwrap_or_default();
    let (kind, response) = if path.starts_with("/ws") {
        let key = header(&text, "sec-websocket-key").ok_or_else(|| invalid("no key"))?;
        let mut sha = Sha1::new();
        sha.update(key.as_bytes());
        sha.update(WS_GUID.as_bytes());
        let accept = base64::engine::general_purpose::STANDARD.encode(sha.finalize());
        let response = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        (Kind::Ws, response)
    } else if path.starts_with("/events") {
        let response = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\
                        Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n";
        (Kind::Sse, response.to_owned())
    } else {
        stream
            .write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            .await?;
        return Err(invalid("not a stream route"));
    };
    stream.write_all(response.as_bytes()).await?;
    Ok(kind)
}

async fn read_head(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Err(invalid("request head too long"));
        }
        match stream.read(&mut buf).await? {
            0 => return Err(invalid("closed during the request")),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    Ok(head)
}

/// The value of header `name` (lower case) in a request head.
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

fn invalid(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_by_name_in_any_case() {
        let head = "GET /ws HTTP/1.1\r\nHost: x\r\nSec-WebSocket-Key: abc==\r\n\r\n";
        assert_eq!(header(head, "sec-websocket-key"), Some("abc=="));
        assert_eq!(header(head, "upgrade"), None);
    }
}
