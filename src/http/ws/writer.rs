//! Writes a batch of frames as vectored writes of their shared bytes: no copy of an
//! event's frame per client, and one system call for a batch of up to
//! [`SLICES`]` / 2` frames.

use std::io::IoSlice;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::frame::Frame;
use crate::http::error::CloseCode;
use crate::session::{End, SendDeadline, Sent};

/// Slices handed to one `writev` (two per frame: header and payload).
const SLICES: usize = 64;

/// Writes every frame of `frames`, in order, within `deadline`. When the deadline
/// passes with a frame cut midway, the rest of that frame is copied to `unsent`: the
/// close frame that follows must not land inside it.
pub async fn write_frames<'a, W: AsyncWrite + Unpin>(
    io: &mut W,
    frames: impl IntoIterator<Item = &'a Frame>,
    deadline: &mut SendDeadline,
    unsent: &mut Vec<u8>,
) -> Sent<CloseCode> {
    // Each part with whether it ends its frame.
    let mut parts = frames
        .into_iter()
        .flat_map(|frame| {
            let payload = &frame.payload()[..];
            [(frame.head(), payload.is_empty()), (payload, true)]
        })
        .filter(|(part, _)| !part.is_empty());
    let mut pending: [(&[u8], bool); SLICES] = [(&[], true); SLICES];
    let mut count = 0;
    // Some of the frame at `pending[0]` is already on the wire.
    let mut mid_frame = false;
    loop {
        while count < SLICES {
            match parts.next() {
                Some(part) => {
                    pending[count] = part;
                    count += 1;
                }
                None => break,
            }
        }
        if count == 0 {
            return Ok(());
        }
        let slices: [IoSlice<'_>; SLICES] = std::array::from_fn(|i| IoSlice::new(pending[i].0));
        let mut written = match deadline.run(io.write_vectored(&slices[..count])).await {
            Some(Ok(0)) | Some(Err(_)) => return Err(End::Gone),
            Some(Ok(n)) => n,
            None => {
                if mid_frame {
                    let rest = pending[..count].iter().position(|(_, ends)| *ends);
                    for (part, _) in &pending[..=rest.unwrap_or(count - 1)] {
                        unsent.extend_from_slice(part);
                    }
                }
                return Err(End::Lagging);
            }
        };
        // Drop what went out; the rest (a part cut short included) goes next time.
        let mut done = 0;
        while done < count && written >= pending[done].0.len() {
            written -= pending[done].0.len();
            mid_frame = !pending[done].1;
            done += 1;
        }
        if done < count && written > 0 {
            pending[done].0 = &pending[done].0[written..];
            mid_frame = true;
        }
        pending.copy_within(done..count, 0);
        count -= done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

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
        write_frames(&mut server, &frames, &mut deadline, &mut Vec::new())
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
        let sent = write_frames(&mut server, &frames, &mut deadline, &mut unsent).await;
        assert_eq!(sent, Err(End::Lagging));
        assert_eq!(unsent, [b'b'; 7]);
    }
}
