//! permessage-deflate payloads (RFC 7692 §7.2): raw DEFLATE, sync-flushed, with the
//! trailing `00 00 ff ff` left off.
//!
//! The server compresses each message with a fresh compressor (it negotiates
//! `server_no_context_takeover`), so a compressed event is the same bytes for every
//! client. Client messages are inflated under a hard cap: a small message that
//! inflates past `--ws-max-message` stops there (close 1009), so a compression bomb
//! costs the cap and the inflater's window, never more.

use std::cell::RefCell;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// What a sync flush ends with; RFC 7692 §7.2.1 has the sender drop it and the
/// receiver append it again.
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Output is inflated through a stack buffer of this size, so the message buffer never
/// grows past the cap.
const CHUNK: usize = 4096;

thread_local! {
    /// One compressor per thread, reset before each message: its tables are large
    /// (allocating and clearing them was most of the cost of a small event).
    static COMPRESSOR: RefCell<Compress> = RefCell::new(Compress::new(Compression::default(), false));
}

/// Compresses one whole message on its own (no context from earlier ones); `None`
/// only if the compressor fails.
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    COMPRESSOR.with_borrow_mut(|compressor| {
        compressor.reset();
        compress_with(compressor, payload)
    })
}

/// Compresses `payload` with a fresh (or reset) compressor, sync-flushed.
fn compress_with(compressor: &mut Compress, payload: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    loop {
        let consumed = usize::try_from(compressor.total_in()).ok()?;
        if out.len() == out.capacity() {
            out.reserve(out.capacity().max(64));
        }
        compressor
            .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
            .ok()?;
        let done = usize::try_from(compressor.total_in()).ok()? == payload.len();
        // The flush is complete once all input is in and the output did not fill.
        if done && out.len() < out.capacity() {
            break;
        }
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    Some(out)
}

/// Why a client's compressed message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InflateError {
    /// It inflates past the limit (close 1009).
    #[error("the message inflates past the limit")]
    TooBig,
    /// It is not valid DEFLATE data (close 1002).
    #[error("the message is not valid DEFLATE data")]
    Corrupt,
}

/// Inflates a client's messages: one per connection when the client keeps its
/// compression context between messages, reset after each one when it does not.
pub struct Inflater {
    /// The DEFLATE state, with its 32 KiB window.
    inner: Decompress,
    /// The stream ended (a final block): what follows in the message is an error, and
    /// the next message starts a new stream.
    ended: bool,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            inner: Decompress::new(false),
            ended: false,
        }
    }
}

impl Inflater {
    /// Inflates one frame's `input`, appending to `out`; fails once `out` would pass
    /// `max` bytes.
    pub fn inflate(
        &mut self,
        mut input: &[u8],
        out: &mut Vec<u8>,
        max: usize,
    ) -> Result<(), InflateError> {
        let mut chunk = [0u8; CHUNK];
        while !self.ended {
            let room = (max + 1).saturating_sub(out.len()).min(CHUNK);
            let (before_in, before_out) = (self.inner.total_in(), self.inner.total_out());
            let status = self
                .inner
                .decompress(input, &mut chunk[..room], FlushDecompress::None)
                .map_err(|_| InflateError::Corrupt)?;
            let read = (self.inner.total_in() - before_in) as usize;
            let wrote = (self.inner.total_out() - before_out) as usize;
            input = &input[read..];
            out.extend_from_slice(&chunk[..wrote]);
            if out.len() > max {
                return Err(InflateError::TooBig);
            }
            if status == Status::StreamEnd {
                self.ended = true;
            } else if input.is_empty() && wrote < room {
                return Ok(());
            } else if read == 0 && wrote == 0 {
                // Input left that the inflater will not take: not DEFLATE data.
                return Err(InflateError::Corrupt);
            }
        }
        if input.is_empty() {
            Ok(())
        } else {
            Err(InflateError::Corrupt)
        }
    }

    /// Ends a message: feeds the tail its sender left off.
    pub fn finish(&mut self, out: &mut Vec<u8>, max: usize) -> Result<(), InflateError> {
        if self.ended {
            return Ok(());
        }
        self.inflate(&TAIL, out, max)
    }

    /// Whether the next message must start a fresh stream (after a final block).
    pub fn ended(&self) -> bool {
        self.ended
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inflate_all(parts: &[&[u8]], max: usize) -> Result<Vec<u8>, InflateError> {
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        for part in parts {
            inflater.inflate(part, &mut out, max)?;
        }
        inflater.finish(&mut out, max)?;
        Ok(out)
    }

    #[test]
    fn compress_then_inflate_round_trips_and_drops_the_tail() {
        let text = br#"{"type":"change","row":{"status":"pending"}}"#.repeat(30);
        let deflated = compress(&text).unwrap();
        assert!(!deflated.ends_with(&TAIL));
        assert!(deflated.len() < text.len() / 4);
        assert_eq!(inflate_all(&[&deflated], text.len()).unwrap(), text);
        // Split anywhere, as fragments are.
        let (a, b) = deflated.split_at(deflated.len() / 3);
        assert_eq!(inflate_all(&[a, b], text.len()).unwrap(), text);
        assert_eq!(
            inflate_all(&[&deflated], text.len() - 1),
            Err(InflateError::TooBig)
        );
    }

    #[test]
    fn each_message_is_compressed_on_its_own() {
        // The thread's compressor is reused: nothing of one message may leak into the
        // next, or clients without the server's context could not inflate it.
        let text = br#"{"type":"change","table":"orders"}"#.repeat(20);
        let first = compress(&text).unwrap();
        assert_eq!(compress(&text).unwrap(), first);
        assert_eq!(inflate_all(&[&first], text.len()).unwrap(), text);
    }

    #[test]
    fn rfc_7692_example_hello() {
        // RFC 7692 §7.2.3.1: "Hello" compressed with no context takeover.
        let hello = [0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
        assert_eq!(inflate_all(&[&hello], 100).unwrap(), b"Hello");
    }

    #[test]
    fn a_bomb_stops_at_the_cap() {
        let zeros = vec![0u8; 10 << 20];
        let bomb = compress(&zeros).unwrap();
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let mut inflater = Inflater::default();
        let mut out = Vec::new();
        assert_eq!(
            inflater.inflate(&bomb, &mut out, 65_536),
            Err(InflateError::TooBig)
        );
        assert!(out.len() <= 65_536 + CHUNK, "{}", out.len());
    }

    #[test]
    fn garbage_is_corrupt() {
        assert_eq!(
            inflate_all(&[&[0xff, 0xff, 0xff, 0xff]], 100),
            Err(InflateError::Corrupt)
        );
    }
}
