//! A stream session, the same for WebSocket and SSE: where a client is, what it wants,
//! and the next messages to send it.
//!
//! A session is a cursor. It serves its backlog (from the ring, or from `change_log`
//! when the ring no longer holds it), announces `ready`, then follows the ring as the
//! hub wakes it. A client too far behind for the ring is paged from `change_log` and
//! rejoins the ring; only when retention has deleted its position does it get `reset`.

use std::sync::Arc;
use std::time::Duration;

use crate::event::{Control, Event};
use crate::filter::{Selection, StreamParams};
use crate::gateway::Gateway;
use crate::hub::Registration;
use crate::log::Read;
use crate::metrics::{Metrics, Transport};
use crate::pg::{changes, DbError};

/// Most events handed to a transport at once (one coalesced write).
pub const MAX_BATCH: usize = 512;
/// Rows per catch-up read from `change_log`.
const PAGE: i64 = 1000;
/// Wait before retrying a catch-up read that failed (database down).
const RETRY: Duration = Duration::from_secs(1);

/// Something to send.
#[derive(Debug, Clone)]
pub enum Item {
    /// A change event (shared, encoded once).
    Change(Arc<Event>),
    /// A control message.
    Control(Control),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Sending the events after `since`; `ready` not yet sent.
    Backlog { replayed: u64 },
    /// `ready` sent; following the ring.
    Live,
}

/// One client's stream.
#[derive(Debug)]
pub struct Session {
    gateway: Arc<Gateway>,
    selection: Selection,
    registration: Registration,
    /// Every event up to here was sent or did not match.
    cursor: u64,
    phase: Phase,
    /// Set when a catch-up read failed, so the next wait is bounded.
    retry_pending: bool,
    /// The vector ring reads are copied into, kept between batches.
    scratch: Vec<Arc<Event>>,
}

impl Session {
    /// Registers with the hub first, then fixes the start position, so no event can
    /// slip between the two.
    pub fn open(gateway: Arc<Gateway>, params: StreamParams) -> Session {
        let registration = gateway.hub.register(&params.selection);
        let cursor = params.since.unwrap_or_else(|| gateway.log.head());
        Session {
            gateway,
            selection: params.selection,
            registration,
            cursor,
            phase: Phase::Backlog { replayed: 0 },
            retry_pending: false,
            scratch: Vec::new(),
        }
    }

    /// The client's position: every event up to it was delivered or did not match.
    pub fn position(&self) -> u64 {
        self.cursor
    }

    /// Appends the next messages to `out` (nothing if there is nothing to send now).
    /// At most [`MAX_BATCH`] changes.
    pub async fn next_batch(&mut self, out: &mut Vec<Item>) {
        let mut events = std::mem::take(&mut self.scratch);
        let read = {
            let selection = &self.selection;
            self.gateway.log.read_after(
                self.cursor,
                MAX_BATCH,
                |e| selection.matches(e),
                &mut events,
            )
        };
        match read {
            Read::Scanned { position, more } => {
                self.cursor = position;
                self.push_changes(events, out);
                if let (Phase::Backlog { replayed }, false) = (self.phase, more) {
                    if position > self.gateway.log.head() {
                        // `since` is ahead of this replica: legitimate if the database
                        // issued it (the client came from a replica a little ahead).
                        match Box::pin(self.database_head()).await {
                            Ok(issued) if position > issued => {
                                // From another database or a restored backup: the
                                // client must start over, not wait for that number.
                                let head = self.gateway.log.head();
                                tracing::debug!(
                                    position,
                                    issued,
                                    head,
                                    "position never issued; reset"
                                );
                                self.cursor = head;
                                out.push(Item::Control(Control::Reset { head }));
                                return;
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(%err, "reading the database's head failed; retrying");
                                self.retry_pending = true;
                                return;
                            }
                        }
                    }
                    // The scan reached the head it saw, or the client's position when
                    // that is ahead (so its `lastEventId` never moves backwards). A
                    // head read now may be newer, and would announce as sent events
                    // that only follow `ready`.
                    self.retry_pending = false;
                    out.push(Item::Control(Control::Ready {
                        head: position,
                        replayed,
                    }));
                    self.phase = Phase::Live;
                }
            }
            // Boxed: the catch-up future (pool, transaction, queries) is large, and
            // unboxed it would size every session's future, idle or not.
            Read::Behind { .. } => match Box::pin(self.catch_up_page()).await {
                Ok(Some(page)) => {
                    self.retry_pending = false;
                    let matching: Vec<Arc<Event>> = page
                        .into_iter()
                        .filter(|event| {
                            self.cursor = self.cursor.max(event.id);
                            self.selection.matches(event)
                        })
                        .collect();
                    self.push_changes(matching, out);
                }
                Ok(None) => {
                    self.retry_pending = false;
                    let head = self.gateway.log.head();
                    tracing::debug!(position = self.cursor, head, "history gone; reset");
                    self.cursor = head;
                    out.push(Item::Control(Control::Reset { head }));
                }
                Err(err) => {
                    tracing::warn!(%err, "catch-up read from change_log failed; retrying");
                    self.retry_pending = true;
                }
            },
        }
    }

    /// Waits until there may be something new: a hub wake-up, or the retry delay
    /// after a failed catch-up read.
    pub async fn wait(&self) {
        if self.retry_pending {
            // Boxed, like the catch-up read: rare, and a timer would size every
            // session's future.
            let _ = Box::pin(tokio::time::timeout(RETRY, self.registration.woken())).await;
        } else {
            self.registration.woken().await;
        }
    }

    /// Moves `events` into `out` and keeps the emptied vector for the next read, so
    /// a live session allocates nothing per batch.
    fn push_changes(&mut self, mut events: Vec<Arc<Event>>, out: &mut Vec<Item>) {
        if let Phase::Backlog { replayed } = &mut self.phase {
            *replayed += events.len() as u64;
        }
        out.extend(events.drain(..).map(Item::Change));
        if events.capacity() > self.scratch.capacity() {
            self.scratch = events;
        }
    }

    /// The newest id the database has committed (or retention has deleted): every
    /// position a client got from any replica of this database is at or below it.
    /// Not the sequence's `last_value`, which also counts ids drawn by transactions
    /// that rolled back, and which no client can hold.
    async fn database_head(&self) -> Result<u64, DbError> {
        let client = self.gateway.pool.get().await?;
        self.gateway
            .pool
            .within(client.deadline(), changes::head(&*client))
            .await
    }

    /// One page of `change_log` after the cursor, or `None` when retention has deleted
    /// events after it. The horizon and the page come from one snapshot.
    async fn catch_up_page(&self) -> Result<Option<Vec<Arc<Event>>>, DbError> {
        let mut client = self.gateway.pool.get().await?;
        let deadline = client.deadline();
        let page = self
            .gateway
            .pool
            .within(deadline, async {
                let tx = client.snapshot().await?;
                let pruned = changes::pruned_upto(&tx).await?;
                if self.cursor < pruned {
                    return Ok(None);
                }
                let page = changes::read_after(&tx, self.cursor, PAGE).await?;
                tx.commit().await?;
                Ok::<_, DbError>(Some(page))
            })
            .await?;
        let Some(page) = page else {
            return Ok(None);
        };
        for event in &page {
            // Already sent live when it was new: keep catch-up copies out of the
            // commit→send latency histogram.
            event.mark_first_send();
        }
        if page.is_empty() {
            // The ring is ahead of the cursor yet the table holds nothing after it: the
            // rows were deleted by other means than retention.
            return Ok(None);
        }
        Ok(Some(page))
    }
}

/// Counts a written batch: `changes` deliveries, and commit→send latency for the
/// events sent here first.
pub fn record_sent(metrics: &Metrics, items: &[Item], transport: Transport, changes: u64) {
    if changes == 0 {
        return;
    }
    metrics.delivered(transport).add(changes);
    let mut now_micros = None;
    for item in items {
        if let Item::Change(event) = item {
            if event.mark_first_send() {
                let now = *now_micros.get_or_insert_with(|| {
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_micros() as i64)
                        .unwrap_or(0)
                });
                metrics
                    .commit_to_send
                    .observe_micros(now - event.committed_at_micros);
            }
        }
    }
}

/// The `--send-timeout` of one batch, started only when a write first has to wait:
/// most writes complete at once, and a timer costs a clock read and a timer entry
/// per write, for every client.
#[derive(Debug)]
pub struct SendDeadline {
    limit: Duration,
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
    pub async fn run<F: std::future::Future>(&mut self, write: F) -> Option<F::Output> {
        use std::future::Future;
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
