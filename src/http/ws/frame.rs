//! Server frames (RFC 6455 §5.2): a message's header and payload as they go on the
//! wire, built once and written by reference.
//!
//! A change event's frames are built once per event (see [`crate::event::Event`]) and
//! every subscriber writes the same [`Frame`]: the header bytes and a refcounted
//! payload, one vectored write per batch.

use bytes::Bytes;

use super::deflate;

/// Continues a fragmented message.
pub const CONTINUATION: u8 = 0x0;
/// A UTF-8 text message.
pub const TEXT: u8 = 0x1;
/// A binary message (never accepted from clients: close 1003).
pub const BINARY: u8 = 0x2;
/// The closing handshake.
pub const CLOSE: u8 = 0x8;
/// A ping, answered with a pong carrying the same payload.
pub const PING: u8 = 0x9;
/// A pong.
pub const PONG: u8 = 0xA;

/// The FIN bit of the first header byte: the last frame of a message.
pub const FIN: u8 = 0x80;
/// RSV1 (RFC 7692 §6): the message is compressed.
pub const RSV1: u8 = 0x40;

/// Longest frame header the server writes: 2 bytes plus a 64-bit length (servers do
/// not mask).
const MAX_HEAD: usize = 10;

/// One finished, unfragmented server frame.
#[derive(Clone, Debug)]
pub struct Frame {
    /// The header bytes (first `head_len` of them), computed once.
    head: [u8; MAX_HEAD],
    /// How many bytes of `head` are the header.
    head_len: u8,
    /// The payload, shared by every writer of the frame.
    payload: Bytes,
}

impl Frame {
    /// A final frame of `opcode` carrying `payload`; `compressed` sets RSV1.
    pub fn new(opcode: u8, compressed: bool, payload: Bytes) -> Frame {
        let mut head = [0u8; MAX_HEAD];
        head[0] = FIN | opcode | if compressed { RSV1 } else { 0 };
        let len = payload.len();
        let head_len = if len < 126 {
            head[1] = len as u8;
            2
        } else if let Ok(short) = u16::try_from(len) {
            head[1] = 126;
            head[2..4].copy_from_slice(&short.to_be_bytes());
            4
        } else {
            head[1] = 127;
            head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        Frame {
            head,
            head_len,
            payload,
        }
    }

    /// An uncompressed text frame. Messages framed per client (control messages,
    /// replies) go this way: compressing them would cost CPU per client; change
    /// events are compressed once each (see [`crate::event::Event::ws_frame`]).
    pub fn text(text: Bytes) -> Frame {
        Frame::new(TEXT, false, text)
    }

    /// The header bytes.
    pub fn head(&self) -> &[u8] {
        &self.head[..usize::from(self.head_len)]
    }

    /// The payload bytes (compressed when [`Frame::compressed`]).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// Whether RSV1 is set: the payload is a deflated message.
    pub fn compressed(&self) -> bool {
        self.head[0] & RSV1 != 0
    }

    /// Header plus payload: the bytes the frame takes on the wire.
    pub fn wire_len(&self) -> usize {
        self.head().len() + self.payload.len()
    }
}

/// The compressed text frame of `text` if it is at least `min` bytes long and deflate
/// makes it smaller; `None` otherwise (the plain frame is sent).
pub fn compressed_text(text: &[u8], min: usize) -> Option<Frame> {
    if text.len() < min {
        return None;
    }
    let deflated = deflate::compress(text)?;
    (deflated.len() < text.len()).then(|| Frame::new(TEXT, true, Bytes::from(deflated)))
}

/// The close frame for `code` with `reason` (RFC 6455 §5.5.1).
pub fn close(code: u16, reason: &str) -> Frame {
    let mut payload = Vec::with_capacity(2 + reason.len());
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(reason.as_bytes());
    Frame::new(CLOSE, false, Bytes::from(payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_three_header_forms() {
        for (len, head_len, second) in [
            (0usize, 2usize, 0u8),
            (125, 2, 125),
            (126, 4, 126),
            (65_535, 4, 126),
            (65_536, 10, 127),
        ] {
            let frame = Frame::new(TEXT, false, Bytes::from(vec![b'a'; len]));
            assert_eq!(frame.head().len(), head_len, "{len}");
            assert_eq!(frame.head()[0], FIN | TEXT);
            assert_eq!(frame.head()[1], second);
            assert_eq!(frame.wire_len(), head_len + len);
        }
        let long = Frame::new(TEXT, true, Bytes::from(vec![0u8; 70_000]));
        assert_eq!(&long.head()[2..], &70_000u64.to_be_bytes());
        assert!(long.compressed());
    }

    #[test]
    fn only_long_compressible_text_is_compressed() {
        let long = Bytes::from(format!(
            "[{}]",
            r#"{"id":1,"status":"pending"},"#.repeat(40)
        ));
        assert!(compressed_text(&long, 512).unwrap().compressed());
        assert!(compressed_text(&long, long.len() + 1).is_none());
        assert!(!Frame::text(long).compressed());
        // Text that deflate cannot shrink goes plain.
        assert!(compressed_text(b"ab", 1).is_none());
    }
}
