//! Writes a batch of frames as vectored writes of their shared bytes: no copy of an
//! event's frame per client, and one system call for a batch of up to
//! [`SLICES`]` / 2` frames. [`write_frames`] waits for a slow socket within the send
//! deadline (the client's task); [`try_write_frames`] never waits (the fan-out).

use std::io::{self, IoSlice};

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::frame::Frame;
use crate::http::error::CloseCode;
use crate::http::socket::send_vectored;
use crate::session::{End, SendDeadline, Sent};

/// Slices handed to one `writev` (two per frame: header and payload).
const SLICES: usize = 64;

/// The next slices of a batch to write: a window of up to [`SLICES`] non-empty parts
/// (frame headers and payloads), refilled from the batch as it goes out.
struct Window<'a, P> {
    /// The parts not yet in the window, each with whether it ends its frame.
    parts: P,
    /// The window: parts (the first possibly cut short) and whether each ends a frame.
    pending: [(&'a [u8], bool); SLICES],
    /// How many of `pending` are in use.
    count: usize,
    /// Some of the frame at `pending[0]` is already on the wire.
    mid_frame: bool,
}

impl<'a, P: Iterator<Item = (&'a [u8], bool)>> Window<'a, P> {
    /// Fills the window; `false` when the batch is all written.
    fn fill(&mut self) -> bool {
        while self.count < SLICES {
            match self.parts.next() {
                Some(part) => {
                    self.pending[self.count] = part;
                    self.count += 1;
                }
                None => break,
            }
        }
        self.count > 0
    }

    /// The window as slices for one vectored write, and their total length.
    fn slices(&self) -> ([IoSlice<'a>; SLICES], usize) {
        let slices = std::array::from_fn(|i| IoSlice::new(self.pending[i].0));
        let total = self.pending[..self.count]
            .iter()
            .map(|(p, _)| p.len())
            .sum();
        (slices, total)
    }

    /// Drops `written` bytes from the front of the window (at most its length).
    fn advance(&mut self, mut written: usize) {
        let mut done = 0;
        while done < self.count && written >= self.pending[done].0.len() {
            written -= self.pending[done].0.len();
            self.mid_frame = !self.pending[done].1;
            done += 1;
        }
        if done < self.count && written > 0 {
            self.pending[done].0 = &self.pending[done].0[written..];
            self.mid_frame = true;
        }
        self.pending.copy_within(done..self.count, 0);
        self.count -= done;
    }

    /// Skips the first `bytes` of the batch (written before).
    fn skip(&mut self, mut bytes: usize) {
        while bytes > 0 && self.fill() {
            let (_, total) = self.slices();
            let step = bytes.min(total);
            self.advance(step);
            bytes -= step;
        }
    }

    /// Copies the rest of a frame cut midway to `unsent`.
    fn rest_of_cut_frame(&self, unsent: &mut Vec<u8>) {
        if self.mid_frame && self.count > 0 {
            let rest = self.pending[..self.count]
                .iter()
                .position(|(_, ends)| *ends);
            for (part, _) in &self.pending[..=rest.unwrap_or(self.count - 1)] {
                unsent.extend_from_slice(part);
            }
        }
    }
}

/// A window over `frames`' parts, after the first `skip` bytes.
fn window<'a>(
    frames: impl IntoIterator<Item = &'a Frame>,
    skip: usize,
) -> Window<'a, impl Iterator<Item = (&'a [u8], bool)>> {
    let parts = frames
        .into_iter()
        .flat_map(|frame| {
            let payload = &frame.payload()[..];
            [(frame.head(), payload.is_empty()), (payload, true)]
        })
        .filter(|(part, _)| !part.is_empty());
    let mut window = Window {
        parts,
        pending: [(&[], true); SLICES],
        count: 0,
        mid_frame: false,
    };
    window.skip(skip);
    window
}

/// Writes every frame of `frames` after the first `skip` bytes, in order, within
/// `deadline`. When the deadline passes with a frame cut midway, the rest of that
/// frame is copied to `unsent`: the close frame that follows must not land inside it.
///
/// The write's state (the window and its slices, 2.5 KiB) is boxed for the length of
/// the write: unboxed it would size the future of every stream's task, idle or not,
/// since a task's future is as large as its largest await.
pub async fn write_frames<'a, W: AsyncWrite + Unpin>(
    io: &mut W,
    frames: impl IntoIterator<Item = &'a Frame>,
    skip: usize,
    deadline: &mut SendDeadline,
    unsent: &mut Vec<u8>,
) -> Sent<CloseCode> {
    Box::pin(write_window(io, window(frames, skip), deadline, unsent)).await
}

/// [`write_frames`]' loop over its window.
async fn write_window<'a, W: AsyncWrite + Unpin>(
    io: &mut W,
    mut window: Window<'a, impl Iterator<Item = (&'a [u8], bool)>>,
    deadline: &mut SendDeadline,
    unsent: &mut Vec<u8>,
) -> Sent<CloseCode> {
    while window.fill() {
        let (slices, _) = window.slices();
        let written = deadline
            .run(io.write_vectored(&slices[..window.count]))
            .await;
        match written {
            Some(Ok(0)) | Some(Err(_)) => return Err(End::Gone),
            // What went out is dropped; the rest (a part cut short included) goes next.
            Some(Ok(n)) => window.advance(n),
            None => {
                window.rest_of_cut_frame(unsent);
                return Err(End::Lagging);
            }
        }
    }
    Ok(())
}

/// Writes as much of `frames` as `stream` takes now, without waiting: how many bytes
/// went out, and whether that was all of them. A write that is cut short ends the
/// attempt (the socket's buffer is full; another call would only be refused).
pub fn try_write_frames<'a>(
    stream: &TcpStream,
    frames: impl IntoIterator<Item = &'a Frame>,
) -> io::Result<(usize, bool)> {
    let mut window = window(frames, 0);
    let mut sent = 0;
    while window.fill() {
        let (slices, total) = window.slices();
        match send_vectored(stream, &slices[..window.count]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                sent += n;
                window.advance(n);
                if n < total {
                    return Ok((sent, false));
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok((sent, false)),
            Err(err) => return Err(err),
        }
    }
    Ok((sent, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_write_in_flight_costs_the_stream_a_pointer_not_its_window() {
        let frames = [Frame::new(1, false, Bytes::from_static(b"x"))];
        let mut io = tokio::io::sink();
        let mut deadline = SendDeadline::new(Duration::from_secs(1));
        let mut unsent = Vec::new();
        let write = write_frames(&mut io, &frames, 0, &mut deadline, &mut unsent);
        // The window alone is 64 slices and 64 parts (2.5 KiB): it must be boxed.
        assert!(
            std::mem::size_of_val(&write) < 256,
            "{}",
            std::mem::size_of_val(&write)
        );
    }

    #[tokio::test]
    async fn many_frames_through_a_narrow_pipe_arrive_whole_and_in_order() {
        let frames: Vec<Frame> = (0..200)
            .map(|i| Frame::new(1, false, Bytes::from(format!("message {i}").repeat(i % 7))))
            .collect();
        let expected: Vec<u8> = frames
            .iter()
            .flat_map(|f| [f.head().to_vec(), f.payload().to_vec()].concat())
            .collect();
        // A 7-byte pipe: every write is partial, cutting headers and payloads.
        let (mut client, mut server) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut deadline = SendDeadline::new(Duration::from_secs(10));
        write_frames(&mut server, &frames, 0, &mut deadline, &mut Vec::new())
            .await
            .unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_cut_by_the_deadline_leaves_its_rest_unsent() {
        let frames = [
            Frame::new(1, false, Bytes::from(vec![b'a'; 10])),
            Frame::new(1, false, Bytes::from(vec![b'b'; 10])),
        ];
        // Room for the first frame and 5 bytes of the second (3 of its payload).
        let (_client, mut server) = tokio::io::duplex(17);
        let mut deadline = SendDeadline::new(Duration::from_secs(1));
        let mut unsent = Vec::new();
        let sent = write_frames(&mut server, &frames, 0, &mut deadline, &mut unsent).await;
        assert_eq!(sent, Err(End::Lagging));
        assert_eq!(unsent, [b'b'; 7]);
    }

    #[tokio::test]
    async fn what_a_full_socket_did_not_take_is_written_after_the_bytes_it_did() {
        let (mut client, mut server) = crate::testing::tcp_pair().await;
        // Far more than the socket buffers hold while the client does not read.
        let frames: Vec<Frame> = (0..400)
            .map(|i| Frame::new(1, false, Bytes::from(vec![b'a' + (i % 26) as u8; 70_000])))
            .collect();
        let expected: Vec<u8> = frames
            .iter()
            .flat_map(|f| [f.head().to_vec(), f.payload().to_vec()].concat())
            .collect();
        let (sent, all) = try_write_frames(&server, &frames).unwrap();
        assert!(!all && sent > 0 && sent < expected.len(), "{sent}");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut deadline = SendDeadline::new(Duration::from_secs(10));
        write_frames(&mut server, &frames, sent, &mut deadline, &mut Vec::new())
            .await
            .unwrap();
        drop(server);
        assert_eq!(reader.await.unwrap(), expected);
    }
}
