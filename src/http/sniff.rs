//! Looks at a new connection's first request before hyper does, so that an SSE
//! stream can be served straight on the socket.
//!
//! hyper keeps an 8 KiB read buffer and an 8 KiB write buffer for as long as a
//! response lasts; for an SSE stream that lasts hours, that is most of what an idle
//! connection costs. A first request that is a plain `GET /events` with a complete
//! head is therefore read here (with `MSG_PEEK`, so nothing is consumed unless it is
//! served here) and everything else, including a head still arriving, goes to hyper
//! untouched.

use std::time::Duration;

use http::header::{HeaderName, HeaderValue, CONNECTION};
use http::{Method, Request, Version};
use tokio::net::TcpStream;

/// Most headers a sniffed request may have; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;
/// Most bytes looked at; a longer head goes to hyper.
const MAX_PEEK: usize = 8 * 1024;

/// What the first bytes of a connection are.
#[derive(Debug)]
pub enum FirstRequest {
    /// A complete `GET /events` head of `head_len` bytes, not yet consumed.
    Events {
        /// The request, without a body (boxed: the other variants are empty).
        request: Box<Request<()>>,
        /// How many bytes the head takes on the socket.
        head_len: usize,
    },
    /// Anything else, or a head not complete yet: hyper serves the connection.
    Other,
    /// Nothing arrived within the header timeout.
    TimedOut,
    /// The client closed before sending anything.
    Closed,
}

/// Waits (at most `timeout`) for the first bytes and classifies them.
pub async fn first_request(stream: &TcpStream, timeout: Duration, max_head: usize) -> FirstRequest {
    let mut buf = vec![0u8; max_head.min(MAX_PEEK)];
    match tokio::time::timeout(timeout, stream.peek(&mut buf)).await {
        Err(_) => FirstRequest::TimedOut,
        Ok(Ok(0)) => FirstRequest::Closed,
        Ok(Ok(n)) => {
            parse_events_request(&buf[..n]).map_or(FirstRequest::Other, |(request, head_len)| {
                FirstRequest::Events {
                    request: Box::new(request),
                    head_len,
                }
            })
        }
        Ok(Err(_)) => FirstRequest::Other,
    }
}

/// Parses `bytes` as a complete HTTP/1.1 `GET /events…` head that can be answered
/// outside hyper: no body, no `Connection: close` or upgrade, no `Expect`. Returns the
/// request and the head's length.
pub fn parse_events_request(bytes: &[u8]) -> Option<(Request<()>, usize)> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(bytes).ok()? {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return None,
    };
    if parsed.method? != "GET" || parsed.version? != 1 {
        return None;
    }
    let target = parsed.path?;
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    if path != "/events" {
        return None;
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .version(Version::HTTP_11)
        .uri(target)
        .body(())
        .ok()?;
    let map = request.headers_mut();
    for header in parsed.headers.iter() {
        let name = HeaderName::from_bytes(header.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(header.value).ok()?;
        map.append(name, value);
    }
    let needs_hyper = ["content-length", "transfer-encoding", "expect", "upgrade"]
        .iter()
        .any(|name| map.contains_key(*name))
        || map.get_all(CONNECTION).iter().any(|value| {
            value.to_str().map_or(true, |v| {
                v.split(',').any(|token| {
                    let token = token.trim();
                    token.eq_ignore_ascii_case("close") || token.eq_ignore_ascii_case("upgrade")
                })
            })
        });
    if needs_hyper {
        return None;
    }
    Some((request, head_len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_complete_events_head_is_taken_with_its_length() {
        let head = b"GET /events?tables=orders HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 7\r\n\r\n";
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(b"GET /next HTTP/1.1\r\n");
        let (request, len) = parse_events_request(&bytes).unwrap();
        assert_eq!(len, head.len());
        assert_eq!(request.uri().query(), Some("tables=orders"));
        assert_eq!(request.headers()["last-event-id"], "7");
    }

    #[test]
    fn everything_else_is_left_to_hyper() {
        for other in [
            &b"GET /events HTTP/1.1\r\nHost: x\r\n"[..],
            b"GET /ws HTTP/1.1\r\nHost: x\r\n\r\n",
            b"GET /events/x HTTP/1.1\r\n\r\n",
            b"HEAD /events HTTP/1.1\r\n\r\n",
            b"POST /events HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            b"GET /events HTTP/1.0\r\n\r\n",
            b"GET /events HTTP/1.1\r\nConnection: close\r\n\r\n",
            b"GET /events HTTP/1.1\r\nConnection: keep-alive, Upgrade\r\n\r\n",
            b"GET /events HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET /events HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            b"\x16\x03\x01\x02\x00",
            b"GET /events HTTP/1.1\r\nBad Header: x\r\n\r\n",
        ] {
            assert!(
                parse_events_request(other).is_none(),
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
        let keep_alive = b"GET /events HTTP/1.1\r\nConnection: keep-alive\r\n\r\n";
        assert!(parse_events_request(keep_alive).is_some());
    }
}
