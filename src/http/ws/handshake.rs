//! The opening handshake's computations (RFC 6455 §4.2.2): the accept key, and the
//! permessage-deflate negotiation (RFC 7692 §5, §7.1).

use base64::Engine as _;
use sha1::{Digest, Sha1};

/// The GUID RFC 6455 §1.3 appends to the client's key.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for the client's `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(GUID);
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// permessage-deflate as agreed with one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The client compresses each message on its own (`client_no_context_takeover`),
    /// so its messages are inflated with a fresh inflater; otherwise the connection
    /// keeps one.
    pub client_no_context_takeover: bool,
    /// The offer named `server_max_window_bits` (15, the only value accepted): the
    /// answer must name it too (RFC 7692 §7.1.2.1).
    pub server_max_window_bits: bool,
}

impl Deflate {
    /// The `Sec-WebSocket-Extensions` answer. The server never takes its context
    /// over: each event is compressed once, and the same bytes go to every client.
    pub fn response(self) -> &'static str {
        match (self.client_no_context_takeover, self.server_max_window_bits) {
            (false, false) => "permessage-deflate; server_no_context_takeover",
            (true, false) => {
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
            }
            (false, true) => {
                "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"
            }
            (true, true) => {
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=15"
            }
        }
    }
}

/// Picks the first permessage-deflate offer the server can honour from the values of
/// every `Sec-WebSocket-Extensions` header; `None` declines (no extension).
///
/// An offer is declined when it is malformed (unknown or repeated parameters, bad
/// values, RFC 7692 §7.1) or asks for `server_max_window_bits` below 15: the server
/// compresses with the full window, once per event for every client.
/// `client_max_window_bits` only limits the client's window, which the inflater (a
/// full 32 KiB window) takes in any size, so it is accepted and not echoed.
pub fn negotiate<'a>(headers: impl IntoIterator<Item = &'a [u8]>) -> Option<Deflate> {
    headers
        .into_iter()
        .filter_map(|value| std::str::from_utf8(value).ok())
        .flat_map(|value| value.split(','))
        .find_map(offer)
}

/// One offer (`name; param; param=value`), if it is an acceptable permessage-deflate.
fn offer(text: &str) -> Option<Deflate> {
    let mut parts = text.split(';').map(str::trim);
    if !parts.next()?.eq_ignore_ascii_case("permessage-deflate") {
        return None;
    }
    let mut seen = [false; 4];
    let mut deflate = Deflate {
        client_no_context_takeover: false,
        server_max_window_bits: false,
    };
    for param in parts {
        let (name, value) = match param.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (param, None),
        };
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => {
                deflate.client_no_context_takeover = true;
                1
            }
            "server_max_window_bits" if window_bits(value?)? == 15 => {
                deflate.server_max_window_bits = true;
                2
            }
            "client_max_window_bits" if value.is_none_or(|v| window_bits(v).is_some()) => 3,
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(deflate)
}

/// A window size parameter: 8 to 15, no leading zero (RFC 7692 §7.1.2.1).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(headers: &[&str]) -> Option<Deflate> {
        negotiate(headers.iter().map(|h| h.as_bytes()))
    }

    const SHARED: Option<Deflate> = Some(Deflate {
        client_no_context_takeover: false,
        server_max_window_bits: false,
    });
    const FRESH: Option<Deflate> = Some(Deflate {
        client_no_context_takeover: true,
        server_max_window_bits: false,
    });

    #[test]
    fn rfc_6455_sample_key() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn browser_and_library_offers_are_accepted() {
        // Chromium and Firefox.
        assert_eq!(
            pick(&["permessage-deflate; client_max_window_bits"]),
            SHARED
        );
        // Python websockets (17).
        assert_eq!(
            pick(&["permessage-deflate; client_max_window_bits"]),
            SHARED
        );
        // An explicit full window is accepted and named in the answer.
        let full = pick(&["permessage-deflate; server_max_window_bits=15"]).unwrap();
        assert_eq!(
            full.response(),
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=15"
        );
        // Node ws.
        assert_eq!(
            pick(&["permessage-deflate; client_no_context_takeover; client_max_window_bits=10"]),
            FRESH
        );
        assert_eq!(
            FRESH.unwrap().response(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert_eq!(pick(&["PerMessage-Deflate"]), SHARED);
    }

    #[test]
    fn the_first_acceptable_offer_wins_across_headers() {
        assert_eq!(
            pick(&[
                "x-webkit-deflate-frame",
                "permessage-deflate; server_max_window_bits=10, permessage-deflate; client_no_context_takeover",
            ]),
            FRESH
        );
        assert_eq!(
            pick(&[
                "permessage-deflate; server_max_window_bits=10",
                "permessage-deflate"
            ]),
            SHARED
        );
    }

    #[test]
    fn offers_the_server_cannot_honour_or_that_are_malformed_are_declined() {
        for bad in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=9",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; client_max_window_bits=010",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
        ] {
            assert_eq!(pick(&[bad]), None, "{bad}");
        }
    }
}
