//! Client frames (RFC 6455 §5, RFC 7692 §6), parsed from a read buffer into messages.
//!
//! The reader is a pure state machine over bytes, with no socket: the sink reads into
//! a buffer and asks for the next message, and the fuzz target drives it the same way.
//! Every violation is the close code it earns: 1002 for protocol errors, 1003 for
//! binary messages, 1007 for text that is not UTF-8, 1009 for a message past
//! `--ws-max-message` (for a compressed message, its inflated size).

use bytes::{Buf, Bytes, BytesMut};

use super::deflate::{InflateError, Inflater};
use super::frame::{BINARY, CLOSE, CONTINUATION, FIN, PING, PONG, RSV1, TEXT};
use crate::http::error::CloseCode;

/// A control frame's payload limit (RFC 6455 §5.5).
const MAX_CONTROL: usize = 125;

/// A complete client message.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A text message, validated as UTF-8 (and inflated).
    Text(String),
    /// A ping, to answer with a pong carrying `payload`.
    Ping(Bytes),
    /// A pong.
    Pong,
    /// The client started the closing handshake, with this status code if any.
    Close(Option<u16>),
}

/// A text message being assembled from its frames.
struct Partial {
    /// RSV1 was set on its first frame.
    compressed: bool,
    /// The text so far (inflated).
    text: Vec<u8>,
    /// Payload bytes received for it on the wire, bounded too: compressed frames that
    /// inflate to nothing must not go on forever.
    wire: usize,
    /// How much of `text` is known to be valid UTF-8 (the rest may be a character cut
    /// by the fragment boundary).
    valid: usize,
}

/// Parses client frames into messages for one connection.
pub struct Reader {
    /// `--ws-max-message`: the largest (inflated) message.
    max_message: usize,
    /// `Some` when permessage-deflate was negotiated: RSV1 is allowed.
    deflate: Option<Context>,
    /// The text message whose frames are arriving.
    partial: Option<Partial>,
}

/// The inflate side of a connection's permessage-deflate.
struct Context {
    /// The client compresses each message on its own: a fresh inflater per message.
    fresh_per_message: bool,
    /// The inflater, made on the first compressed message (most clients only send
    /// small pings) and dropped after each one when the client takes no context over.
    inflater: Option<Box<Inflater>>,
}

/// A parsed frame header.
struct Head {
    /// FIN, RSV and opcode bits.
    first: u8,
    /// Header length, mask included.
    len: usize,
    /// Payload length.
    payload: usize,
    /// The masking key.
    mask: [u8; 4],
}

impl Reader {
    /// A reader for a connection; `deflate` when permessage-deflate was negotiated
    /// (with whether the client resets its context per message).
    pub fn new(max_message: usize, deflate: Option<bool>) -> Reader {
        Reader {
            max_message,
            deflate: deflate.map(|fresh_per_message| Context {
                fresh_per_message,
                inflater: None,
            }),
            partial: None,
        }
    }

    /// Compressed bytes a message may take on the wire: deflate can grow
    /// incompressible text by a little.
    fn max_wire(&self) -> usize {
        self.max_message + self.max_message / 16 + 1024
    }

    /// Takes the next complete message out of `buf`: `Ok(None)` until it has arrived,
    /// `Err` with the close code for a violation. Frames of a fragmented message are
    /// consumed as they arrive; control frames between them are returned at once.
    pub fn next(&mut self, buf: &mut BytesMut) -> Result<Option<Incoming>, CloseCode> {
        loop {
            let Some(head) = self.head(buf)? else {
                return Ok(None);
            };
            if buf.len() < head.len + head.payload {
                return Ok(None);
            }
            buf.advance(head.len);
            let mut payload = buf.split_to(head.payload);
            unmask(&mut payload, head.mask);
            if let Some(message) = self.frame(head.first, payload)? {
                return Ok(Some(message));
            }
        }
    }

    /// How many more bytes the frame at the front of `buf` needs (at least 1 when a
    /// header is incomplete): the sink reserves that much before reading.
    pub fn wanted(&self, buf: &[u8]) -> usize {
        match parse_head(buf) {
            Some(head) => (head.len + head.payload).saturating_sub(buf.len()).max(1),
            None => 1,
        }
    }

    /// Parses and checks the header at the front of `buf` (`None`: incomplete).
    fn head(&self, buf: &[u8]) -> Result<Option<Head>, CloseCode> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let (first, second) = (buf[0], buf[1]);
        let opcode = first & 0x0f;
        if second & 0x80 == 0 {
            // RFC 6455 §5.1: a server closes on any unmasked client frame.
            return Err(CloseCode::Protocol);
        }
        if first & 0x30 != 0 {
            return Err(CloseCode::Protocol);
        }
        let control = opcode & 0x08 != 0;
        if first & RSV1 != 0 && (self.deflate.is_none() || !matches!(opcode, TEXT | BINARY)) {
            // RSV1 marks the first frame of a compressed data message, and only when
            // permessage-deflate was negotiated (RFC 7692 §6.1).
            return Err(CloseCode::Protocol);
        }
        match opcode {
            CLOSE | PING | PONG => {
                if first & FIN == 0 || usize::from(second & 0x7f) > MAX_CONTROL {
                    return Err(CloseCode::Protocol);
                }
            }
            TEXT | BINARY if self.partial.is_some() => return Err(CloseCode::Protocol),
            CONTINUATION if self.partial.is_none() => return Err(CloseCode::Protocol),
            TEXT | BINARY | CONTINUATION => {}
            _ => return Err(CloseCode::Protocol),
        }
        let Some(head) = parse_head(buf) else {
            return Ok(None);
        };
        if !control {
            self.check_size(opcode, first & RSV1 != 0, head.payload)?;
        }
        Ok(Some(head))
    }

    /// Refuses a data frame that would take its message past the limits, before its
    /// payload is buffered.
    fn check_size(&self, opcode: u8, rsv1: bool, payload: usize) -> Result<(), CloseCode> {
        let (compressed, wire) = match &self.partial {
            Some(partial) if opcode == CONTINUATION => (partial.compressed, partial.wire),
            _ => (rsv1, 0),
        };
        let limit = if compressed {
            self.max_wire()
        } else {
            self.max_message
        };
        if wire.saturating_add(payload) > limit {
            return Err(CloseCode::MessageTooBig);
        }
        Ok(())
    }

    /// Handles one unmasked frame.
    fn frame(&mut self, first: u8, payload: BytesMut) -> Result<Option<Incoming>, CloseCode> {
        let fin = first & FIN != 0;
        match first & 0x0f {
            PING => Ok(Some(Incoming::Ping(payload.freeze()))),
            PONG => Ok(Some(Incoming::Pong)),
            CLOSE => close(&payload).map(|code| Some(Incoming::Close(code))),
            BINARY => Err(CloseCode::Unsupported),
            TEXT => {
                let compressed = first & RSV1 != 0;
                self.partial = Some(Partial {
                    compressed,
                    text: Vec::new(),
                    wire: 0,
                    valid: 0,
                });
                self.data(&payload, fin)
            }
            _ => self.data(&payload, fin),
        }
    }

    /// Adds a text frame's payload to the message; the message when `fin`.
    fn data(&mut self, payload: &[u8], fin: bool) -> Result<Option<Incoming>, CloseCode> {
        let max = self.max_message;
        let Some(partial) = self.partial.as_mut() else {
            return Err(CloseCode::Protocol);
        };
        partial.wire += payload.len();
        if partial.compressed {
            let context = self.deflate.as_mut().ok_or(CloseCode::Protocol)?;
            let inflater = context.inflater.get_or_insert_with(Box::default);
            let inflated = inflater
                .inflate(payload, &mut partial.text, max)
                .and_then(|()| {
                    if fin {
                        inflater.finish(&mut partial.text, max)
                    } else {
                        Ok(())
                    }
                });
            if fin && (context.fresh_per_message || inflater.ended()) {
                context.inflater = None;
            }
            inflated.map_err(|err| match err {
                InflateError::TooBig => CloseCode::MessageTooBig,
                InflateError::Corrupt => CloseCode::Protocol,
            })?;
        } else {
            partial.text.extend_from_slice(payload);
        }
        check_utf8(partial, fin)?;
        if !fin {
            return Ok(None);
        }
        let text = self.partial.take().map(|p| p.text).unwrap_or_default();
        // Checked above, so this does not fail; no second pass over the bytes.
        String::from_utf8(text)
            .map(|text| Some(Incoming::Text(text)))
            .map_err(|_| CloseCode::InvalidPayload)
    }
}

/// Validates the text received since the last check, failing fast on bytes that can
/// never become UTF-8; a character cut at the end waits for the next fragment.
fn check_utf8(partial: &mut Partial, fin: bool) -> Result<(), CloseCode> {
    match std::str::from_utf8(&partial.text[partial.valid..]) {
        Ok(_) => {
            partial.valid = partial.text.len();
            Ok(())
        }
        Err(err) if err.error_len().is_none() && !fin => {
            partial.valid += err.valid_up_to();
            Ok(())
        }
        Err(_) => Err(CloseCode::InvalidPayload),
    }
}

/// Parses a header's length fields and mask (`None`: incomplete).
fn parse_head(buf: &[u8]) -> Option<Head> {
    let second = *buf.get(1)?;
    let (payload, at) = match second & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => {
            let len = u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?);
            // Past any limit (and, with the top bit set, not even a length); the
            // size check refuses it.
            (usize::try_from(len).unwrap_or(usize::MAX), 10)
        }
        short => (usize::from(short), 2),
    };
    let mask = buf.get(at..at + 4)?.try_into().ok()?;
    Some(Head {
        first: buf[0],
        len: at + 4,
        payload,
        mask,
    })
}

/// Unmasks a payload in place (RFC 6455 §5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// The status code of a client's close frame (RFC 6455 §5.5.1, §7.4).
fn close(payload: &[u8]) -> Result<Option<u16>, CloseCode> {
    match payload {
        [] => Ok(None),
        [_] => Err(CloseCode::Protocol),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(CloseCode::Protocol);
            }
            std::str::from_utf8(reason).map_err(|_| CloseCode::InvalidPayload)?;
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ws::deflate;

    const MAX: usize = 64 * 1024;

    /// A masked client frame.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        crate::testing::client_frame(first, payload, [0x12, 0x34, 0x56, 0x78])
    }

    /// Feeds `bytes` in pieces of `step` and collects messages up to the first error.
    fn run(reader: &mut Reader, bytes: &[u8], step: usize) -> Result<Vec<Incoming>, CloseCode> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            while let Some(message) = reader.next(&mut buf)? {
                out.push(message);
            }
        }
        Ok(out)
    }

    fn plain(bytes: &[u8]) -> Result<Vec<Incoming>, CloseCode> {
        run(&mut Reader::new(MAX, None), bytes, bytes.len())
    }

    fn deflated(bytes: &[u8], fresh: bool) -> Result<Vec<Incoming>, CloseCode> {
        run(&mut Reader::new(MAX, Some(fresh)), bytes, bytes.len())
    }

    fn text(text: &str) -> Incoming {
        Incoming::Text(text.to_owned())
    }

    #[test]
    fn fragmented_text_with_control_frames_between_and_any_read_size() {
        let mut bytes = frame(TEXT, b"Hel");
        bytes.extend(frame(FIN | PING, b"p"));
        bytes.extend(frame(CONTINUATION, b"lo, "));
        bytes.extend(frame(FIN | PONG, b""));
        bytes.extend(frame(FIN | CONTINUATION, "wörld".as_bytes()));
        bytes.extend(frame(FIN | TEXT, b""));
        for step in [1, 2, 3, 7, bytes.len()] {
            let got = run(&mut Reader::new(MAX, None), &bytes, step).unwrap();
            assert_eq!(
                got,
                [
                    Incoming::Ping(Bytes::from_static(b"p")),
                    Incoming::Pong,
                    text("Hello, wörld"),
                    text(""),
                ],
                "read {step} at a time"
            );
        }
    }

    #[test]
    fn protocol_violations_are_1002() {
        let mut unmasked = frame(FIN | TEXT, b"x");
        unmasked[1] &= 0x7f;
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("unmasked", unmasked),
            ("reserved opcode 3", frame(FIN | 0x3, b"x")),
            ("reserved control opcode 0xB", frame(FIN | 0xB, b"")),
            ("continuation of nothing", frame(FIN | CONTINUATION, b"x")),
            ("RSV1 without deflate", frame(FIN | RSV1 | TEXT, b"x")),
            ("RSV2", frame(FIN | 0x20 | TEXT, b"x")),
            ("RSV3", frame(FIN | 0x10 | TEXT, b"x")),
            ("fragmented ping", frame(PING, b"")),
            ("ping over 125 bytes", frame(FIN | PING, &[0; 126])),
            ("close with one byte", frame(FIN | CLOSE, &[3])),
            (
                "close code 1005",
                frame(FIN | CLOSE, &1005u16.to_be_bytes()),
            ),
            ("close code 999", frame(FIN | CLOSE, &999u16.to_be_bytes())),
            (
                "close code 5000",
                frame(FIN | CLOSE, &5000u16.to_be_bytes()),
            ),
            ("text inside a text message", {
                let mut b = frame(TEXT, b"a");
                b.extend(frame(FIN | TEXT, b"b"));
                b
            }),
        ];
        for (name, bytes) in cases {
            assert_eq!(plain(&bytes), Err(CloseCode::Protocol), "{name}");
        }
        // With deflate: RSV1 on a continuation or a control frame is still wrong.
        let mut rsv1_continuation = frame(RSV1 | TEXT, &deflate::compress(b"a").unwrap());
        rsv1_continuation.extend(frame(FIN | RSV1 | CONTINUATION, b""));
        assert_eq!(deflated(&rsv1_continuation, true), Err(CloseCode::Protocol));
        assert_eq!(
            deflated(&frame(FIN | RSV1 | PING, b""), true),
            Err(CloseCode::Protocol)
        );
        assert_eq!(
            deflated(&frame(FIN | RSV1 | TEXT, &[0xff; 8]), true),
            Err(CloseCode::Protocol),
            "not DEFLATE data"
        );
    }

    #[test]
    fn close_frames_give_their_code_and_check_their_reason() {
        assert_eq!(
            plain(&frame(FIN | CLOSE, b"")),
            Ok(vec![Incoming::Close(None)])
        );
        let mut normal = 1000u16.to_be_bytes().to_vec();
        normal.extend_from_slice(b"bye");
        assert_eq!(
            plain(&frame(FIN | CLOSE, &normal)),
            Ok(vec![Incoming::Close(Some(1000))])
        );
        normal.extend_from_slice(&[0xc3]);
        assert_eq!(
            plain(&frame(FIN | CLOSE, &normal)),
            Err(CloseCode::InvalidPayload)
        );
    }

    #[test]
    fn binary_is_1003() {
        assert_eq!(
            plain(&frame(FIN | BINARY, b"\x01")),
            Err(CloseCode::Unsupported)
        );
        assert_eq!(plain(&frame(BINARY, b"\x01")), Err(CloseCode::Unsupported));
    }

    #[test]
    fn invalid_utf8_is_1007_and_a_character_split_across_fragments_is_not() {
        let euro = "€".as_bytes();
        let mut split = frame(TEXT, &euro[..1]);
        split.extend(frame(CONTINUATION, &euro[1..2]));
        split.extend(frame(FIN | CONTINUATION, &euro[2..]));
        assert_eq!(plain(&split), Ok(vec![text("€")]));
        // Fails on the first fragment, before the message ends.
        let bad = frame(TEXT, &[b'{', 0xff]);
        assert_eq!(plain(&bad), Err(CloseCode::InvalidPayload));
        // A character cut off by the last fragment.
        let mut cut = frame(TEXT, b"a");
        cut.extend(frame(FIN | CONTINUATION, &euro[..2]));
        assert_eq!(plain(&cut), Err(CloseCode::InvalidPayload));
        // An invalid sequence split across fragments.
        let mut across = frame(TEXT, &[0xed]);
        across.extend(frame(FIN | CONTINUATION, &[0xa0, 0x80]));
        assert_eq!(plain(&across), Err(CloseCode::InvalidPayload));
    }

    #[test]
    fn the_limit_is_exact_for_whole_and_fragmented_messages() {
        let at_limit = "x".repeat(MAX);
        assert_eq!(
            plain(&frame(FIN | TEXT, at_limit.as_bytes())),
            Ok(vec![text(&at_limit)])
        );
        let over = "x".repeat(MAX + 1);
        assert_eq!(
            plain(&frame(FIN | TEXT, over.as_bytes())),
            Err(CloseCode::MessageTooBig)
        );
        let mut fragments = frame(TEXT, &over.as_bytes()[..MAX]);
        fragments.extend(frame(FIN | CONTINUATION, b"x"));
        assert_eq!(plain(&fragments), Err(CloseCode::MessageTooBig));
        // Refused from the header alone, before the payload arrives.
        let header_only = &frame(FIN | TEXT, over.as_bytes())[..14];
        assert_eq!(plain(header_only), Err(CloseCode::MessageTooBig));
        let mut huge = vec![FIN | TEXT, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert_eq!(plain(&huge), Err(CloseCode::MessageTooBig));
    }

    #[test]
    fn compressed_messages_whole_fragmented_and_with_a_kept_context() {
        let message = r#"{"type":"ping","pad":"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}"#;
        let packed = deflate::compress(message.as_bytes()).unwrap();
        let mut bytes = frame(FIN | RSV1 | TEXT, &packed);
        let (a, b) = packed.split_at(3);
        bytes.extend(frame(RSV1 | TEXT, a));
        bytes.extend(frame(FIN | PING, b""));
        bytes.extend(frame(FIN | CONTINUATION, b));
        bytes.extend(frame(FIN | TEXT, b"plain"));
        for fresh in [true, false] {
            assert_eq!(
                deflated(&bytes, fresh),
                Ok(vec![
                    text(message),
                    Incoming::Ping(Bytes::new()),
                    text(message),
                    text("plain")
                ])
            );
        }
        // A client that keeps its context: the second message refers back to the first.
        let mut compressor = flate2::Compress::new(flate2::Compression::default(), false);
        let mut stream = Vec::new();
        for _ in 0..2 {
            let mut out = Vec::with_capacity(256);
            compressor
                .compress_vec(message.as_bytes(), &mut out, flate2::FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            stream.extend(frame(FIN | RSV1 | TEXT, &out));
        }
        assert_eq!(
            deflated(&stream, false),
            Ok(vec![text(message), text(message)])
        );
        // Read with a fresh inflater per message, the back-reference is lost.
        assert_ne!(
            deflated(&stream, true),
            Ok(vec![text(message), text(message)])
        );
    }

    #[test]
    fn compressed_messages_are_limited_by_their_inflated_size() {
        let at_limit = "y".repeat(MAX);
        let packed = deflate::compress(at_limit.as_bytes()).unwrap();
        assert_eq!(
            deflated(&frame(FIN | RSV1 | TEXT, &packed), true),
            Ok(vec![text(&at_limit)])
        );
        let over = deflate::compress("y".repeat(MAX + 1).as_bytes()).unwrap();
        assert_eq!(
            deflated(&frame(FIN | RSV1 | TEXT, &over), true),
            Err(CloseCode::MessageTooBig)
        );
        // A bomb: 10 MB of zeros in about 10 KB is refused at the cap.
        let bomb = deflate::compress(&vec![b'0'; 10 << 20]).unwrap();
        assert!(bomb.len() < 20_000);
        assert_eq!(
            deflated(&frame(FIN | RSV1 | TEXT, &bomb), false),
            Err(CloseCode::MessageTooBig)
        );
        // Fragments that inflate to nothing still count their wire bytes.
        let mut empty_blocks = frame(RSV1 | TEXT, &[]);
        for _ in 0..20 {
            // Empty stored blocks: 5 bytes each on the wire, nothing inflated.
            let chunk: Vec<u8> = [0x00, 0x00, 0x00, 0xff, 0xff].repeat(1000);
            empty_blocks.extend(frame(CONTINUATION, &chunk));
        }
        assert_eq!(deflated(&empty_blocks, true), Err(CloseCode::MessageTooBig));
    }
}
