//! Client → server WebSocket frames: `rowcast::http::ws::reader::Reader` (RFC 6455
//! framing, RFC 7692 inflating), with a 1 KiB message limit so the limits are reached.
//!
//! Two halves, picked by the first byte:
//!
//! - Raw bytes, any frames at all: the reader never panics; every text it returns is
//!   at most the limit; and it is the same reader however the bytes arrive: fed
//!   whole or in pieces of 1 to 64 bytes, it returns the same messages and ends with
//!   the same close code (or wants more bytes) both ways.
//! - A model: a list of text messages (ASCII or multibyte), each split into 1 to 4
//!   fragments, maybe compressed (RSV1, raw DEFLATE with the tail dropped, by flate2
//!   directly), maybe with a ping between fragments, framed and masked as a client
//!   does (`rowcast::testing::client_frame`). The reader returns exactly those messages and pings, in order, until the first
//!   message whose text is over the limit, which closes with 1009.

#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use rowcast::http::error::CloseCode;
use rowcast::http::ws::reader::{Incoming, Reader};
use rowcast::testing::client_frame;

const MAX: usize = 1024;

/// Runs `bytes` through a reader, `step` bytes at a time.
fn run(bytes: &[u8], deflate: Option<bool>, step: usize) -> (Vec<Incoming>, Option<CloseCode>) {
    let mut reader = Reader::new(MAX, deflate);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in bytes.chunks(step) {
        buf.extend_from_slice(piece);
        loop {
            match reader.next(&mut buf) {
                Ok(Some(message)) => {
                    if let Incoming::Text(text) = &message {
                        assert!(text.len() <= MAX, "a {}-byte text", text.len());
                    }
                    out.push(message);
                }
                Ok(None) => break,
                Err(code) => return (out, Some(code)),
            }
        }
        assert!(reader.wanted(&buf) >= 1);
    }
    (out, None)
}

/// Raw DEFLATE, sync-flushed, tail dropped: what a client without context takeover
/// sends.
fn deflate(text: &[u8]) -> Vec<u8> {
    let mut compressor = flate2::Compress::new(flate2::Compression::fast(), false);
    let mut out = Vec::with_capacity(text.len() * 2 + 64);
    compressor
        .compress_vec(text, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    out.truncate(out.len() - 4);
    out
}

#[derive(Arbitrary, Debug)]
struct Message {
    text: String,
    /// Repeats `text` to reach the limits with little input.
    repeat: u8,
    compressed: bool,
    /// Fragment cut points (as fractions of 256).
    cuts: Vec<u8>,
    ping_between: bool,
    mask: [u8; 4],
}

fn model(u: &mut Unstructured) -> Result<()> {
    let messages: Vec<Message> = u.arbitrary()?;
    let step = usize::from(u.arbitrary::<u8>()? % 64) + 1;
    let deflate_on = messages.iter().any(|m| m.compressed);
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    let mut expected_end = None;
    for message in &messages {
        let text = message.text.repeat(usize::from(message.repeat % 8) + 1);
        let payload = if message.compressed {
            deflate(text.as_bytes())
        } else {
            text.clone().into_bytes()
        };
        let mut cuts: Vec<usize> = message
            .cuts
            .iter()
            .take(3)
            .map(|c| usize::from(*c) * payload.len() / 256)
            .collect();
        cuts.push(payload.len());
        cuts.sort_unstable();
        cuts.dedup();
        let mut start = 0;
        for (i, end) in cuts.iter().enumerate() {
            let last = i + 1 == cuts.len();
            let opcode = if i == 0 { 0x1 } else { 0x0 };
            let rsv1 = if i == 0 && message.compressed {
                0x40
            } else {
                0
            };
            let fin = if last { 0x80 } else { 0 };
            wire.extend(client_frame(
                fin | rsv1 | opcode,
                &payload[start..*end],
                message.mask,
            ));
            start = *end;
            if !last && message.ping_between {
                wire.extend(client_frame(0x89, b"p", message.mask));
            }
        }
        if expected_end.is_some() {
            continue;
        }
        // A fragment of an oversize message is refused as soon as it passes the
        // limit (a ping after it is never read); an earlier ping is.
        let over = text.len() > MAX;
        if message.ping_between && cuts.len() > 1 && !over {
            expected
                .extend((1..cuts.len()).map(|_| Incoming::Ping(bytes::Bytes::from_static(b"p"))));
        }
        if over {
            expected_end = Some(CloseCode::MessageTooBig);
        } else {
            expected.push(Incoming::Text(text));
        }
    }
    let (got, end) = run(&wire, deflate_on.then_some(true), step);
    if expected_end.is_some() {
        // Pings of the oversize message that came before its limit was passed may
        // have been returned; compare the messages before it and the close code.
        let texts = |v: &[Incoming]| {
            v.iter()
                .filter(|m| matches!(m, Incoming::Text(_)))
                .map(|m| format!("{m:?}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(texts(&got), texts(&expected));
        assert_eq!(end, expected_end);
    } else {
        assert_eq!(got, expected);
        assert_eq!(end, None);
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode & 1 == 0 {
        let deflate = match (mode >> 1) & 3 {
            0 => None,
            1 => Some(true),
            _ => Some(false),
        };
        let step = usize::from(mode >> 3) + 1;
        let whole = run(rest, deflate, rest.len().max(1));
        let pieces = run(rest, deflate, step);
        assert_eq!(whole, pieces, "whole vs {step} at a time");
    } else {
        let _ = model(&mut Unstructured::new(rest));
    }
});
