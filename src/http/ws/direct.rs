//! A WebSocket's TCP stream shared by the client's task and the hub's fan-out
//! ([`crate::session::direct`]): the fan-out writes a caught-up client's events with
//! a write that never waits ([`TryWrite`]), the task reads client frames and writes
//! everything else through [`SocketIo`]. They never write at the same time: the
//! fan-out writes only while the session is parked.
//!
//! A batch the socket takes only in part leaves its rest here; the task writes it
//! ([`Sink::flush`](crate::session::Sink::flush)) before anything of its own, so a
//! close frame, a heartbeat or a pong never lands inside a frame.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::frame::Frame;
use super::writer;
use crate::event::Event;
use crate::http::socket::send_vectored;
use crate::metrics::Metrics;
use crate::session::{TryWrite, Written};

/// A client's socket, as the fan-out writes to it.
#[derive(Debug)]
pub struct DirectSocket {
    /// The connection.
    stream: TcpStream,
    /// `--ws-compress-min` when the client negotiated permessage-deflate.
    compress_min: Option<usize>,
    /// What a partial write left: the task writes it next.
    rest: Mutex<Option<Rest>>,
}

/// The part of a batch a write did not take.
#[derive(Debug)]
pub struct Rest {
    /// The batch.
    pub events: Vec<Arc<Event>>,
    /// How many of its bytes went out.
    pub skip: usize,
}

impl DirectSocket {
    /// Shares `stream` between its task and the fan-out.
    pub fn new(stream: TcpStream, compress_min: Option<usize>) -> Arc<DirectSocket> {
        Arc::new(DirectSocket {
            stream,
            compress_min,
            rest: Mutex::new(None),
        })
    }

    /// Takes what a partial write left, if anything.
    pub fn take_rest(&self) -> Option<Rest> {
        self.rest.lock().take()
    }
}

/// The frames of change events, as this client gets them.
pub fn change_frames<'a, E>(
    events: E,
    compress_min: Option<usize>,
) -> impl Iterator<Item = &'a Frame> + Send
where
    E: IntoIterator<Item = &'a Arc<Event>>,
    E::IntoIter: Send,
{
    events
        .into_iter()
        .map(move |event| event.ws_frame(compress_min))
}

/// Counts the events that go compressed, and the bytes that saves.
pub fn count_deflated<'a>(
    metrics: &Metrics,
    events: impl IntoIterator<Item = &'a Arc<Event>>,
    min: usize,
) {
    let (mut sent, mut saved) = (0u64, 0usize);
    for event in events {
        let frame = event.ws_frame(Some(min));
        if frame.compressed() {
            sent += 1;
            let plain = event.ws_frame(None).payload().len();
            saved += plain.saturating_sub(frame.payload().len());
        }
    }
    if sent > 0 {
        metrics.ws_deflated.add(sent);
        metrics.ws_deflate_saved_bytes.add(saved as u64);
    }
}

impl TryWrite for DirectSocket {
    fn try_write(&self, events: &[&Arc<Event>], metrics: &Metrics) -> Written {
        let mut rest = self.rest.lock();
        if rest.is_some() {
            // The task has yet to write it (it always does before parking again).
            return Written::Nothing;
        }
        let written = match writer::try_write_frames(
            &self.stream,
            change_frames(events.iter().copied(), self.compress_min),
        ) {
            Ok((_, true)) => Written::All,
            Ok((0, false)) | Err(_) => Written::Nothing,
            Ok((skip, false)) => {
                *rest = Some(Rest {
                    events: events.iter().map(|event| Arc::clone(event)).collect(),
                    skip,
                });
                Written::Part
            }
        };
        if let (Some(min), Written::All | Written::Part) = (self.compress_min, written) {
            count_deflated(metrics, events.iter().copied(), min);
        }
        written
    }
}

/// The task's side of a [`DirectSocket`]: reads and writes that wait for readiness.
#[derive(Debug)]
pub struct SocketIo(pub Arc<DirectSocket>);

impl AsyncRead for SocketIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_read_ready(cx))?;
            match stream.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for SocketIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match stream.try_write(buf) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = &self.0.stream;
        loop {
            ready!(stream.poll_write_ready(cx))?;
            match send_vectored(stream, bufs) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                done => return Poll::Ready(done),
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        let socket = socket2::SockRef::from(&self.0.stream);
        Poll::Ready(socket.shutdown(std::net::Shutdown::Write))
    }
}
