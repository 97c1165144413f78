//! What a transport implements to carry a session: the one loop in
//! [`super::serve`] drives any [`Sink`].

use std::future::Future;
use std::time::Duration;

use super::Item;
use crate::metrics::Transport;

/// Why a stream ended. `F` is the transport's own reason (a WebSocket close code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End<F> {
    /// The client closed or vanished; nothing more can be sent.
    Gone,
    /// A write stayed blocked past `--send-timeout`.
    Lagging,
    /// The gateway is shutting down.
    Shutdown,
    /// The session cannot go on exactly (a snapshot read failed midway): the client
    /// must start over.
    Broken,
    /// The transport ends the stream for a reason of its own (a client's bad frame).
    Fault(F),
}

/// The result of a sink's operation: `Err` ends the stream.
pub type Sent<F> = Result<(), End<F>>;

/// A transport as the session loop sees it. Every write is bounded by the transport's
/// send timeout and fails with [`End::Lagging`] past it.
pub trait Sink: Send {
    /// The transport's own reasons to end a stream.
    type Fault: Send;
    /// What a client can send on the stream.
    type Incoming: Send;
    /// The label its metrics carry.
    const TRANSPORT: Transport;

    /// Sends what goes before the first message (SSE's `retry:` hint).
    fn open(&mut self) -> impl Future<Output = Sent<Self::Fault>> + Send;

    /// Sends `items` as one coalesced write.
    fn send(&mut self, items: &[Item]) -> impl Future<Output = Sent<Self::Fault>> + Send;

    /// Sends `items` (read just before) and the heartbeat for `position`: every
    /// event up to it was delivered or did not match.
    fn heartbeat(
        &mut self,
        items: &[Item],
        position: u64,
    ) -> impl Future<Output = Sent<Self::Fault>> + Send;

    /// Resolves when the client sent something or went away; pending while it is
    /// quiet. Cancel-safe: the loop drops it whenever something else is ready.
    fn incoming(&mut self) -> impl Future<Output = Self::Incoming> + Send;

    /// Answers what [`Sink::incoming`] received (a pong to a ping, say).
    fn answer(
        &mut self,
        incoming: Self::Incoming,
    ) -> impl Future<Output = Sent<Self::Fault>> + Send;

    /// Writes what the fan-out left of a batch it could write only in part (see
    /// [`super::direct`]); nothing for a transport the fan-out does not write to.
    fn flush(&mut self) -> impl Future<Output = Sent<Self::Fault>> + Send {
        async { Ok(()) }
    }
}

/// The `--send-timeout` of one batch, started only when a write first has to wait:
/// most writes complete at once, and a timer costs a clock read and a timer entry
/// per write, for every client.
#[derive(Debug)]
pub struct SendDeadline {
    /// `--send-timeout`: how long one batch may wait on a client that does not read.
    limit: Duration,
    /// When the batch's time runs out; `None` until a write first waits.
    at: Option<tokio::time::Instant>,
}

impl SendDeadline {
    /// A deadline `limit` after the first write that waits.
    pub fn new(limit: Duration) -> SendDeadline {
        SendDeadline { limit, at: None }
    }

    /// Runs `write`; `None` if it had to wait and the deadline passed first. The timer
    /// is boxed: kept out of every session's future, allocated only for a write that
    /// waits.
    pub async fn run<F: Future>(&mut self, write: F) -> Option<F::Output> {
        use std::task::Poll;
        let mut write = std::pin::pin!(write);
        let mut timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let (limit, at) = (self.limit, &mut self.at);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(output) = write.as_mut().poll(cx) {
                return Poll::Ready(Some(output));
            }
            let timer = timer.get_or_insert_with(|| {
                let at = *at.get_or_insert_with(|| tokio::time::Instant::now() + limit);
                Box::pin(tokio::time::sleep_until(at))
            });
            timer.as_mut().poll(cx).map(|()| None)
        })
        .await
    }
}
