//! The client side of the wire, cut to what the harness needs and cheap per message:
//! WebSocket frames (unmasked server frames), HTTP/1.1 chunked bodies decoded in
//! place, SSE blocks, and a scan of a `change` message for its id, row id, send time
//! and commit time. Nothing here allocates; everything works on borrowed slices of a
//! buffer the caller owns.

use memchr::memmem::Finder;

/// A violation of the protocol by the server (or a shape the harness doesn't expect).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtoError {
    /// A server frame with the mask bit set (RFC 6455 §5.1 forbids it).
    MaskedFrame,
    /// A fragmented message: rowcast sends every message as one frame.
    Fragmented,
    /// A frame length beyond what the harness accepts.
    TooLong,
    /// A chunk-size line that is not hex.
    BadChunk,
}

impl std::fmt::Display for ProtoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProtoError::MaskedFrame => "masked server frame",
            ProtoError::Fragmented => "fragmented WebSocket message",
            ProtoError::TooLong => "frame too long",
            ProtoError::BadChunk => "bad chunk size",
        })
    }
}

/// Frames larger than this are refused (rowcast's messages are far smaller).
const MAX_FRAME: u64 = 16 * 1024 * 1024;

/// One server frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text message.
    Text(&'a [u8]),
    /// A ping; the client must answer with a pong carrying the same payload.
    Ping(&'a [u8]),
    /// A close frame and its code (1005 when it has none).
    Close(u16),
    /// Binary or pong: nothing to do.
    Other,
}

/// The next complete frame at the start of `buf` and the bytes it took, or `None`
/// when `buf` holds only part of one.
pub fn next_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, ProtoError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b1 & 0x80 != 0 {
        return Err(ProtoError::MaskedFrame);
    }
    let (len, header) = match b1 & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_FRAME {
        return Err(ProtoError::TooLong);
    }
    let end = header + len as usize;
    if buf.len() < end {
        return Ok(None);
    }
    let payload = &buf[header..end];
    let fin = b0 & 0x80 != 0;
    let frame = match b0 & 0x0f {
        0 => return Err(ProtoError::Fragmented),
        1 if !fin => return Err(ProtoError::Fragmented),
        1 => Frame::Text(payload),
        8 => Frame::Close(if payload.len() >= 2 {
            u16::from_be_bytes([payload[0], payload[1]])
        } else {
            1005
        }),
        9 => Frame::Ping(payload),
        _ => Frame::Other,
    };
    Ok(Some((frame, end)))
}

/// Appends a client pong frame for `payload` to `out` (clients must mask; a zero key
/// leaves the payload as is).
pub fn pong_frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = payload.len().min(125);
    out.extend_from_slice(&[0x8a, 0x80 | len as u8, 0, 0, 0, 0]);
    out.extend_from_slice(&payload[..len]);
}

/// Where an HTTP/1.1 chunked body decoder is between reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk's data, this many bytes to go.
    Data(usize),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// The last (zero-size) chunk was seen: the server ended the body.
    Done,
}

/// A chunked-body decoder that works in place.
#[derive(Debug, Clone, Copy)]
pub struct Dechunker {
    state: ChunkState,
}

impl Default for Dechunker {
    fn default() -> Self {
        Dechunker {
            state: ChunkState::Size,
        }
    }
}

impl Dechunker {
    /// Whether the body has ended.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes the raw bytes `buf[from..]` in place: the body bytes are moved to start
    /// at `from`. Returns `(body_end, raw_start)`: `buf[from..body_end]` is body, and
    /// `buf[raw_start..]` is an incomplete chunk header to keep for the next read.
    pub fn decode(&mut self, buf: &mut [u8], from: usize) -> Result<(usize, usize), ProtoError> {
        let len = buf.len();
        let (mut write, mut read) = (from, from);
        while read < len {
            match self.state {
                ChunkState::Data(remaining) => {
                    let take = remaining.min(len - read);
                    buf.copy_within(read..read + take, write);
                    write += take;
                    read += take;
                    self.state = if take == remaining {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(remaining - take)
                    };
                }
                ChunkState::DataEnd => {
                    if len - read < 2 {
                        break;
                    }
                    if &buf[read..read + 2] != b"\r\n" {
                        return Err(ProtoError::BadChunk);
                    }
                    read += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Size => {
                    let Some(nl) = memchr::memchr(b'\n', &buf[read..]) else {
                        if len - read > 64 {
                            return Err(ProtoError::BadChunk);
                        }
                        break;
                    };
                    let size = parse_chunk_size(&buf[read..read + nl])?;
                    read += nl + 1;
                    self.state = if size == 0 {
                        ChunkState::Done
                    } else {
                        ChunkState::Data(size)
                    };
                }
                ChunkState::Done => {
                    // Trailers and the final CRLF: nothing more to decode.
                    read = len;
                }
            }
        }
        Ok((write, read))
    }
}

fn parse_chunk_size(line: &[u8]) -> Result<usize, ProtoError> {
    let mut size = 0usize;
    let mut digits = 0;
    for &b in line {
        let v = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            b';' | b'\r' | b' ' => break,
            _ => return Err(ProtoError::BadChunk),
        };
        size = size
            .checked_mul(16)
            .and_then(|s| s.checked_add(usize::from(v)))
            .ok_or(ProtoError::BadChunk)?;
        digits += 1;
    }
    if digits == 0 {
        return Err(ProtoError::BadChunk);
    }
    Ok(size)
}

/// The fields of one SSE block that the harness looks at.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Block<'a> {
    /// `event:` (empty when absent).
    pub event: &'a [u8],
    /// The last `data:` line (rowcast sends one).
    pub data: &'a [u8],
}

/// The end of the next complete SSE block in `buf` (`\n\n` included), if any.
pub fn next_block_end(buf: &[u8], finder: &Finder<'_>) -> Option<usize> {
    finder.find(buf).map(|at| at + 2)
}

/// Splits one block (without its blank line) into its fields.
pub fn parse_block(block: &[u8]) -> Block<'_> {
    let mut out = Block::default();
    for line in block.split(|&b| b == b'\n') {
        if let Some(value) = line.strip_prefix(b"event:") {
            out.event = strip_space(value);
        } else if let Some(value) = line.strip_prefix(b"data:") {
            out.data = strip_space(value);
        }
    }
    out
}

fn strip_space(value: &[u8]) -> &[u8] {
    value.strip_prefix(b" ").unwrap_or(value)
}

/// What a message is, from its `type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `change`.
    Change,
    /// `ready`.
    Ready,
    /// `reset`.
    Reset,
    /// `error`.
    Error,
    /// Heartbeats, pongs and anything else.
    Other,
}

/// The kind of a JSON message from its first bytes (`{"type":"…"`, the order rowcast
/// writes).
pub fn kind_of_json(json: &[u8]) -> Kind {
    let Some(rest) = json.strip_prefix(br#"{"type":""#) else {
        return Kind::Other;
    };
    kind_of_name_prefix(rest)
}

/// The kind of an SSE `event:` name.
pub fn kind_of_event(name: &[u8]) -> Kind {
    match name {
        b"change" => Kind::Change,
        b"ready" => Kind::Ready,
        b"reset" => Kind::Reset,
        b"error" => Kind::Error,
        _ => Kind::Other,
    }
}

fn kind_of_name_prefix(rest: &[u8]) -> Kind {
    if rest.starts_with(b"change\"") {
        Kind::Change
    } else if rest.starts_with(b"ready\"") {
        Kind::Ready
    } else if rest.starts_with(b"reset\"") {
        Kind::Reset
    } else if rest.starts_with(b"error\"") {
        Kind::Error
    } else {
        Kind::Other
    }
}

/// What the harness reads out of a `change` message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The event id (commit order).
    pub event_id: u64,
    /// `row.id`: the `load_events` id the writer got back.
    pub row_id: u64,
    /// `row.sent_at_us`: when the writer sent the INSERT (µs since the epoch).
    pub sent_at_us: i64,
    /// `committed_at` in µs since the epoch.
    pub committed_at_us: i64,
}

/// Precompiled searches for [`scan_change`].
pub struct Scanner {
    row: Finder<'static>,
    row_id: Finder<'static>,
    sent_at: Finder<'static>,
    committed_at: Finder<'static>,
    blank_line: Finder<'static>,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner {
            row: Finder::new(br#""row":{"#),
            row_id: Finder::new(br#""id":"#),
            sent_at: Finder::new(br#""sent_at_us":"#),
            committed_at: Finder::new(br#""committed_at":""#),
            blank_line: Finder::new(b"\n\n"),
        }
    }
}

/// Length of `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
const TIMESTAMP_LEN: usize = 27;

impl Scanner {
    /// The finder of SSE block ends.
    pub fn blank_line(&self) -> &Finder<'static> {
        &self.blank_line
    }

    /// Reads the fields of a `change` message without parsing the JSON: rowcast writes
    /// `{"type":"change","id":"<id>",…,"row":{…},…,"committed_at":"<ts>"}`.
    pub fn scan_change(&self, json: &[u8]) -> Option<Change> {
        let rest = json.strip_prefix(br#"{"type":"change","id":""#)?;
        let (event_id, _) = leading_u64(rest)?;
        let row_at = self.row.find(json)? + 7;
        let row = &json[row_at..];
        let (row_id, _) = leading_u64(&row[self.row_id.find(row)? + 5..])?;
        let (sent_at, _) = leading_u64(&row[self.sent_at.find(row)? + 13..])?;
        // committed_at is the last field: look at the tail first, search only if the
        // shape differs.
        let tail = TIMESTAMP_LEN + 2;
        let stamp = if json.len() > tail + 16 && json.ends_with(b"Z\"}") {
            &json[json.len() - tail..json.len() - 2]
        } else {
            let at = self.committed_at.find(json)? + 16;
            json.get(at..at + TIMESTAMP_LEN)?
        };
        Some(Change {
            event_id,
            row_id,
            sent_at_us: sent_at as i64,
            committed_at_us: parse_timestamp_us(stamp)?,
        })
    }
}

/// The decimal number at the start of `text` and how many digits it had.
pub fn leading_u64(text: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    let mut n = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            break;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        n += 1;
    }
    (n > 0).then_some((value, n))
}

fn digits(text: &[u8]) -> Option<i64> {
    let mut value = 0i64;
    for &b in text {
        if !b.is_ascii_digit() {
            return None;
        }
        value = value * 10 + i64::from(b - b'0');
    }
    Some(value)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339 in UTC, as rowcast writes `committed_at`)
/// to µs since the Unix epoch.
pub fn parse_timestamp_us(text: &[u8]) -> Option<i64> {
    if text.len() != TIMESTAMP_LEN
        || text[4] != b'-'
        || text[7] != b'-'
        || text[10] != b'T'
        || text[13] != b':'
        || text[16] != b':'
        || text[19] != b'.'
        || text[26] != b'Z'
    {
        return None;
    }
    let year = digits(&text[0..4])?;
    let month = digits(&text[5..7])?;
    let day = digits(&text[8..10])?;
    let hour = digits(&text[11..13])?;
    let minute = digits(&text[14..16])?;
    let second = digits(&text[17..19])?;
    let micros = digits(&text[20..26])?;
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000 + second * 1_000_000 + micros)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGE: &[u8] = br#"{"type":"change","id":"42","table":"load_events","op":"INSERT","row":{"id":7,"pad":"xx","sent_at_us":1764615600123456},"committed_at":"2025-12-01T19:00:00.234567Z"}"#;

    #[test]
    fn a_change_message_yields_its_ids_and_both_timestamps() {
        let change = Scanner::default().scan_change(CHANGE).unwrap();
        assert_eq!(
            change,
            Change {
                event_id: 42,
                row_id: 7,
                sent_at_us: 1_764_615_600_123_456,
                committed_at_us: 1_764_615_600_234_567,
            }
        );
    }

    #[test]
    fn timestamps_agree_with_known_epoch_values() {
        assert_eq!(parse_timestamp_us(b"1970-01-01T00:00:00.000001Z"), Some(1));
        // 2000-02-29 (a leap day) 12:34:56.5 UTC.
        assert_eq!(
            parse_timestamp_us(b"2000-02-29T12:34:56.500000Z"),
            Some(951_827_696_500_000)
        );
        assert_eq!(parse_timestamp_us(b"2000-02-29 12:34:56.500000Z"), None);
    }

    #[test]
    fn kinds_come_from_the_type_field() {
        assert_eq!(kind_of_json(CHANGE), Kind::Change);
        assert_eq!(
            kind_of_json(br#"{"type":"ready","head":"3","replayed":0}"#),
            Kind::Ready
        );
        assert_eq!(
            kind_of_json(br#"{"type":"heartbeat","id":"3"}"#),
            Kind::Other
        );
        assert_eq!(kind_of_event(b"reset"), Kind::Reset);
    }

    #[test]
    fn frames_of_every_length_form_are_parsed_and_partial_ones_wait() {
        let mut buf = vec![0x81, 5];
        buf.extend_from_slice(b"hello");
        let mut medium = vec![0x81, 126, 0x01, 0x00];
        medium.extend(std::iter::repeat_n(b'a', 256));
        buf.extend_from_slice(&medium);
        let mut long = vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(std::iter::repeat_n(b'b', 65_536));
        buf.extend_from_slice(&long);
        buf.extend_from_slice(&[0x89, 2, b'p', b'q', 0x88, 2, 0x0f, 0xa8]);

        let (frame, used) = next_frame(&buf).unwrap().unwrap();
        assert_eq!((frame, used), (Frame::Text(b"hello"), 7));
        let mut at = used;
        let (frame, used) = next_frame(&buf[at..]).unwrap().unwrap();
        assert!(matches!(frame, Frame::Text(t) if t.len() == 256));
        at += used;
        let (frame, used) = next_frame(&buf[at..]).unwrap().unwrap();
        assert!(matches!(frame, Frame::Text(t) if t.len() == 65_536));
        at += used;
        let (frame, used) = next_frame(&buf[at..]).unwrap().unwrap();
        assert_eq!(frame, Frame::Ping(b"pq"));
        at += used;
        assert_eq!(
            next_frame(&buf[at..]).unwrap().unwrap(),
            (Frame::Close(4008), 4)
        );
        for cut in [1, 3, 9, 100] {
            assert_eq!(next_frame(&long[..cut]).unwrap(), None);
        }
        assert_eq!(next_frame(&[0x81, 0x85]), Err(ProtoError::MaskedFrame));
        assert_eq!(next_frame(&[0x01, 1, b'a']), Err(ProtoError::Fragmented));
    }

    #[test]
    fn a_pong_echoes_the_ping_masked_with_a_zero_key() {
        let mut out = Vec::new();
        pong_frame(b"pq", &mut out);
        assert_eq!(out, [0x8a, 0x82, 0, 0, 0, 0, b'p', b'q']);
    }

    #[test]
    fn chunked_bodies_decode_in_place_across_any_split() {
        let body = b"id: 1\nevent: change\ndata: {}\n\nid: 2\nevent: change\ndata: {}\n\n";
        let mut raw = Vec::new();
        for part in [&body[..10], &body[10..31], &body[31..]] {
            raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            raw.extend_from_slice(part);
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        for split in 0..raw.len() {
            let mut decoder = Dechunker::default();
            let mut decoded = Vec::new();
            let mut carry = Vec::new();
            for piece in [&raw[..split], &raw[split..]] {
                let mut buf = carry.clone();
                buf.extend_from_slice(piece);
                let (end, raw_start) = decoder.decode(&mut buf, 0).unwrap();
                decoded.extend_from_slice(&buf[..end]);
                carry = buf[raw_start..].to_vec();
            }
            assert_eq!(decoded, body, "split at {split}");
            assert!(decoder.is_done());
        }
    }

    #[test]
    fn sse_blocks_split_into_event_and_data() {
        let scanner = Scanner::default();
        let text = b"retry: 1000\n\nid: 5\nevent: change\ndata: {\"a\":1}\n\nid: 6";
        let end = next_block_end(text, scanner.blank_line()).unwrap();
        assert_eq!(parse_block(&text[..end - 2]), Block::default());
        let rest = &text[end..];
        let end = next_block_end(rest, scanner.blank_line()).unwrap();
        let block = parse_block(&rest[..end - 2]);
        assert_eq!(block.event, b"change");
        assert_eq!(block.data, br#"{"a":1}"#);
        assert_eq!(next_block_end(&rest[end..], scanner.blank_line()), None);
    }
}
