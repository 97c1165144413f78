//! A stream session, the same for every transport: where a client is, what it wants,
//! the next messages to send it, and the one loop that carries them to a [`Sink`].
//!
//! A session is a cursor. It serves its backlog (from the ring, or through
//! [`CatchUp`] when the ring no longer holds it), announces `ready`, then follows the
//! ring as the hub wakes it. A client too far behind for the ring is paged from the
//! catch-up reader and rejoins the ring; only when its position was deleted does it
//! get `reset`. With `snapshot=true` and no position it first sends the rows that
//! match now, read through [`Snapshots`], and goes on from that snapshot's position.
//! [`serve`] adds what every transport needs: heartbeats, shutdown,
//! lagging clients and the stream metrics. A transport that can write without
//! waiting lets the hub's fan-out deliver to its caught-up clients while their tasks
//! sleep ([`direct`]).

pub mod catchup;
pub mod direct;
pub mod sink;
pub mod snapshot;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use catchup::{CatchUp, CatchUpError, Page, Reading};
pub use direct::{TryWrite, Written};
pub use sink::{End, SendDeadline, Sent, Sink};
pub use snapshot::{SnapshotPage, SnapshotRead, Snapshots};

use self::direct::Direct;
use crate::event::{Control, Event};
use crate::filter::{Selection, StreamParams};
use crate::hub::{Hub, Registration};
use crate::log::{EventLog, Read};
use crate::metrics::{Metrics, Transport};

/// Most events handed to a transport at once (one coalesced write).
pub const MAX_BATCH: usize = 512;
/// Events per catch-up read.
const PAGE: usize = 1000;
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
    /// `snapshot=true` without a position: sending the matching rows first.
    Snapshot,
    /// Sending the events after `since`; `ready` not yet sent.
    Backlog { replayed: u64 },
    /// `ready` sent; following the ring.
    Live,
    /// A snapshot read failed after pages were sent: the stream cannot go on exactly,
    /// so it ends ([`End::Broken`]) and the client starts over.
    Broken,
}

/// A snapshot in progress.
#[derive(Debug)]
struct Snapshotting {
    /// Where the rows are read.
    source: Arc<dyn Snapshots>,
    /// The open read, once begun.
    read: Option<Box<dyn SnapshotRead>>,
    /// Rows sent so far, for `ready`'s `snapshot`.
    rows: u64,
}

/// One client's stream.
#[derive(Debug)]
pub struct Session {
    /// The recent events, read by cursor: where a live session finds its batches.
    log: Arc<EventLog>,
    /// History older than the ring, for a client that reconnects from far back.
    catch_up: Arc<dyn CatchUp>,
    /// What the client asked for (tables, ops, filters); shared with the fan-out's
    /// delivery.
    selection: Arc<Selection>,
    /// The hub's doorbell for this session; dropping it unsubscribes.
    registration: Registration,
    /// Every event up to here was sent or did not match.
    cursor: u64,
    /// Whether `ready` was sent, and how many backlog events preceded it.
    phase: Phase,
    /// Set when a catch-up read failed, so the next wait is bounded.
    retry_pending: bool,
    /// The snapshot being sent, in [`Phase::Snapshot`] (boxed: most sessions never
    /// have one, and an idle one costs a pointer).
    snapshot: Option<Box<Snapshotting>>,
    /// The fan-out's delivery, when the transport can write without waiting.
    direct: Option<Arc<Direct>>,
    /// Whether the cursor is with `direct` (between [`Session::park`] and
    /// [`Session::unpark`]).
    parked: bool,
}

/// A batch as the ring fills it: each event it hands over becomes a change.
struct Changes<'a>(&'a mut Vec<Item>);

impl Extend<Arc<Event>> for Changes<'_> {
    fn extend<I: IntoIterator<Item = Arc<Event>>>(&mut self, events: I) {
        self.0.extend(events.into_iter().map(Item::Change));
    }
}

impl Session {
    /// Registers with the hub first, then fixes the start position, so no event can
    /// slip between the two.
    pub fn open(
        log: Arc<EventLog>,
        hub: &Arc<Hub>,
        catch_up: Arc<dyn CatchUp>,
        snapshots: Arc<dyn Snapshots>,
        params: StreamParams,
    ) -> Session {
        let registration = hub.register(&params.selection);
        // With a position, `snapshot=true` is ignored. While a snapshot is sent the
        // position is 0: heartbeats then give the client nothing to resume from.
        let (cursor, phase, snapshot) = match params.since {
            None if params.snapshot => {
                let snapshot = Snapshotting {
                    source: snapshots,
                    read: None,
                    rows: 0,
                };
                (0, Phase::Snapshot, Some(Box::new(snapshot)))
            }
            since => (
                since.unwrap_or_else(|| log.head()),
                Phase::Backlog { replayed: 0 },
                None,
            ),
        };
        Session {
            log,
            catch_up,
            selection: Arc::new(params.selection),
            registration,
            cursor,
            phase,
            retry_pending: false,
            snapshot,
            direct: None,
            parked: false,
        }
    }

    /// Lets the hub's fan-out write this session's events through `writer` while its
    /// task waits, once the session is live and caught up.
    pub fn attach(
        &mut self,
        writer: Arc<dyn TryWrite>,
        metrics: Arc<Metrics>,
        transport: Transport,
    ) {
        let direct = Arc::new(Direct::new(
            Arc::clone(&self.log),
            Arc::clone(&self.selection),
            writer,
            metrics,
            transport,
        ));
        self.registration
            .attach(Arc::clone(&direct) as Arc<dyn crate::hub::Deliver>);
        self.direct = Some(direct);
    }

    /// Before the task waits: hands the cursor to the fan-out if the session is live,
    /// caught up (the caller found nothing to send) and not retrying a read.
    fn park(&mut self) {
        if let (Some(direct), Phase::Live, false) = (&self.direct, self.phase, self.retry_pending) {
            direct.park(self.cursor);
            self.parked = true;
        }
    }

    /// After the wait: takes the cursor back, past whatever the fan-out sent.
    fn unpark(&mut self) {
        if let (Some(direct), true) = (&self.direct, self.parked) {
            self.cursor = direct.unpark();
            self.parked = false;
        }
    }

    /// The client's position: every event up to it was delivered or did not match.
    pub fn position(&self) -> u64 {
        self.cursor
    }

    /// Whether the stream cannot go on (a snapshot read failed midway).
    pub fn is_broken(&self) -> bool {
        self.phase == Phase::Broken
    }

    /// Appends the next messages to `out` (nothing if there is nothing to send now).
    /// At most [`MAX_BATCH`] changes, or one snapshot page.
    pub async fn next_batch(&mut self, out: &mut Vec<Item>) {
        match self.phase {
            Phase::Broken => return,
            Phase::Snapshot => {
                // Boxed, like the catch-up read: rare, and it would size every
                // session's future.
                return Box::pin(self.next_snapshot_page(out)).await;
            }
            Phase::Backlog { .. } | Phase::Live => {}
        }
        let before = out.len();
        let read = {
            let selection = &self.selection;
            // Straight into the transport's batch: no vector of our own to fill, keep
            // and copy from.
            self.log.read_after(
                self.cursor,
                MAX_BATCH,
                |e| selection.pick(e),
                &mut Changes(out),
            )
        };
        match read {
            Read::Scanned { position, more } => {
                self.cursor = position;
                self.count_backlog(out.len() - before);
                if let (Phase::Backlog { replayed }, false) = (self.phase, more) {
                    if position > self.log.head() {
                        // `since` is ahead of this replica: legitimate if the database
                        // issued it (the client came from a replica a little ahead).
                        match self.catch_up.issued_head().await {
                            Ok(issued) if position > issued => {
                                // From another database or a restored backup: the
                                // client must start over, not wait for that number.
                                let head = self.log.head();
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
                        snapshot: None,
                    }));
                    self.phase = Phase::Live;
                }
            }
            Read::Behind { .. } => match self.catch_up.page_after(self.cursor, PAGE).await {
                Ok(Page::Events(page)) => {
                    self.retry_pending = false;
                    for event in page {
                        // Already sent live when it was new: keep catch-up copies out
                        // of the commit→send latency histogram.
                        event.mark_first_send();
                        self.cursor = self.cursor.max(event.id);
                        if let Some(event) = self.selection.pick(&event) {
                            out.push(Item::Change(event));
                        }
                    }
                    self.count_backlog(out.len() - before);
                }
                Ok(Page::Gone) => {
                    self.retry_pending = false;
                    let head = self.log.head();
                    tracing::debug!(position = self.cursor, head, "history gone; reset");
                    self.cursor = head;
                    out.push(Item::Control(Control::Reset { head }));
                }
                Err(err) => {
                    tracing::warn!(%err, "catch-up read failed; retrying");
                    self.retry_pending = true;
                }
            },
        }
    }

    /// Appends the next page of matching rows, or, once every table was read,
    /// `ready` at the snapshot's position; the stream then follows from there.
    async fn next_snapshot_page(&mut self, out: &mut Vec<Item>) {
        let Some(snapshot) = &mut self.snapshot else {
            return;
        };
        let read = match &mut snapshot.read {
            Some(read) => read,
            None => match snapshot.source.begin(self.selection.tables.clone()).await {
                Ok(read) => snapshot.read.insert(read),
                Err(err) => {
                    // Nothing was sent yet: try again after the retry delay.
                    tracing::warn!(%err, "starting a snapshot failed; retrying");
                    self.retry_pending = true;
                    return;
                }
            },
        };
        self.retry_pending = false;
        loop {
            match read.next_page().await {
                Ok(Some(page)) => {
                    let (rows, count) = matching_rows(&self.selection, &page);
                    if count == 0 {
                        continue;
                    }
                    snapshot.rows += count;
                    out.push(Item::Control(Control::Snapshot {
                        table: page.table,
                        rows,
                    }));
                    return;
                }
                Ok(None) => {
                    let head = read.position();
                    let rows = snapshot.rows;
                    self.snapshot = None;
                    self.cursor = head;
                    self.phase = Phase::Live;
                    out.push(Item::Control(Control::Ready {
                        head,
                        replayed: 0,
                        snapshot: Some(rows),
                    }));
                    return;
                }
                Err(err) => {
                    tracing::warn!(%err, "a snapshot read failed midway; ending the stream");
                    self.snapshot = None;
                    self.phase = Phase::Broken;
                    return;
                }
            }
        }
    }

    /// Counts `changes` towards `ready`'s `replayed` while the backlog lasts.
    fn count_backlog(&mut self, changes: usize) {
        if let Phase::Backlog { replayed } = &mut self.phase {
            *replayed += changes as u64;
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
}

/// The rows of a snapshot page that pass the selection's row filters, as one JSON
/// array, and how many they are. A table without filters is passed through unparsed.
fn matching_rows(selection: &Selection, page: &SnapshotPage) -> (String, u64) {
    let filtered = selection.filters_table(&page.table);
    let size = page.rows.iter().map(|row| row.len() + 1).sum::<usize>() + 2;
    let mut array = String::with_capacity(size);
    let mut count = 0;
    array.push('[');
    for row in &page.rows {
        if filtered {
            let parsed = serde_json::from_str::<serde_json::Value>(row);
            let object = parsed.as_ref().ok().and_then(serde_json::Value::as_object);
            if !selection.matches_row(&page.table, object) {
                continue;
            }
        }
        if count > 0 {
            array.push(',');
        }
        array.push_str(row);
        count += 1;
    }
    array.push(']');
    (array, count)
}

/// What the loop needs besides the session and the sink, the same for every stream
/// (the gateway holds one).
#[derive(Debug, Clone)]
pub struct Pace {
    /// The heartbeat period (`--heartbeat`).
    pub heartbeat: Duration,
    /// Cancelled at shutdown: the stream ends with [`End::Shutdown`].
    pub shutdown: CancellationToken,
    /// Where the connection gauge, deliveries and lagging disconnects are counted.
    pub metrics: Arc<Metrics>,
}

/// Runs a session into `sink` until either ends: the one loop behind every transport.
/// Returns why it ended; closing the transport is the caller's part.
/// `pace` is lent: every idle stream's future holds what it takes, so a reference
/// rather than a copy at each level.
pub async fn serve<S: Sink>(session: &mut Session, sink: &mut S, pace: &Pace) -> End<S::Fault> {
    let gauge = pace.metrics.connections(S::TRANSPORT);
    gauge.inc();
    let end = match run(session, sink, pace).await {
        Ok(never) => match never {},
        Err(end) => end,
    };
    gauge.dec();
    if let End::Lagging = end {
        pace.metrics.lagging_disconnects.inc();
        tracing::debug!(
            position = session.position(),
            transport = S::TRANSPORT.label(),
            "disconnecting a lagging client"
        );
    }
    end
}

/// The loop itself; every way out is an [`End`].
async fn run<S: Sink>(
    session: &mut Session,
    sink: &mut S,
    pace: &Pace,
) -> Result<std::convert::Infallible, End<S::Fault>> {
    sink.open().await?;
    let period = pace.heartbeat;
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut items = Vec::new();
    // Made once: a new future per turn would lock the token's waiter list, which
    // every session shares, twice per turn.
    let shutdown = pace.shutdown.cancelled();
    tokio::pin!(shutdown);
    loop {
        items.clear();
        session.next_batch(&mut items).await;
        if session.is_broken() {
            return Err(End::Broken);
        }
        if !items.is_empty() {
            sink.send(&items).await?;
            record_sent(&pace.metrics, changes(&items), S::TRANSPORT);
            continue;
        }
        // An idle stream keeps no batch buffer (the fan-out needs none).
        items.shrink_to(0);
        session.park();
        let woken = tokio::select! {
            biased;
            _ = &mut shutdown => Woken::Shutdown,
            _ = session.wait() => Woken::Events,
            incoming = sink.incoming() => Woken::Incoming(incoming),
            _ = heartbeat.tick() => Woken::Heartbeat,
        };
        session.unpark();
        // The rest of a batch the fan-out could only partly write goes first.
        sink.flush().await?;
        match woken {
            Woken::Shutdown => return Err(End::Shutdown),
            Woken::Events => {}
            Woken::Incoming(incoming) => {
                // Boxed: client messages are rare (pongs), and the answer's future
                // would size every stream's task.
                Box::pin(sink.answer(incoming)).await?;
            }
            Woken::Heartbeat => {
                // Advance the position past anything that did not match first.
                items.clear();
                session.next_batch(&mut items).await;
                sink.heartbeat(&items, session.position()).await?;
                record_sent(&pace.metrics, changes(&items), S::TRANSPORT);
            }
        }
    }
}

/// The change events of a batch.
pub fn changes(items: &[Item]) -> impl Iterator<Item = &Arc<Event>> {
    items.iter().filter_map(|item| match item {
        Item::Change(event) => Some(event),
        Item::Control(_) => None,
    })
}

/// What ended a stream's wait.
enum Woken<I> {
    /// The gateway is shutting down.
    Shutdown,
    /// The hub rang: there may be events.
    Events,
    /// The client sent something, or went away.
    Incoming(I),
    /// Time for a heartbeat.
    Heartbeat,
}

/// Counts a written batch: its changes as deliveries, and commit→send latency for
/// the events sent here first.
fn record_sent<'a>(
    metrics: &Metrics,
    events: impl IntoIterator<Item = &'a Arc<Event>>,
    transport: Transport,
) {
    let mut changes = 0;
    let mut now_micros = None;
    for event in events {
        changes += 1;
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
    if changes > 0 {
        metrics.delivered(transport).add(changes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::Catalog;
    use crate::testing::{self, History, Rows};
    use serde_json::json;

    fn event(id: i64) -> Arc<Event> {
        testing::event(id, "orders", "INSERT", Some(json!({"id": id})), None)
    }

    /// A ring of 4 holding events 5..=8, and history holding `history`.
    fn open(since: u64, history: History) -> Session {
        let log = Arc::new(EventLog::new(4, 0));
        log.append((1..=8).map(event));
        let catalog = Catalog::new([("orders".to_owned(), vec!["id".to_owned()])]);
        let params = StreamParams::parse(&format!("since={since}"), &catalog).unwrap();
        Session::open(
            log,
            &Hub::new(),
            Arc::new(history),
            Arc::new(Rows::default()),
            params,
        )
    }

    #[tokio::test]
    async fn a_snapshot_sends_matching_rows_in_pages_then_ready_at_its_position() {
        let log = Arc::new(EventLog::new(4, 0));
        log.append((1..=8).map(event));
        let catalog = Catalog::new([("orders".to_owned(), vec!["id".to_owned()])]);
        let params = StreamParams::parse("snapshot=true&filter=id=gt.1", &catalog).unwrap();
        let row = |id: i64| json!({"id": id}).to_string();
        let rows = Rows {
            position: 7,
            tables: vec![SnapshotPage {
                table: Arc::from("orders"),
                rows: (1..=5).map(row).collect(),
            }],
            page: 2,
        };
        let history = History::default();
        let mut session =
            Session::open(log, &Hub::new(), Arc::new(history), Arc::new(rows), params);
        assert_eq!(
            session.position(),
            0,
            "no position to resume from mid-snapshot"
        );
        let mut sent = Vec::new();
        for _ in 0..5 {
            let mut items = Vec::new();
            session.next_batch(&mut items).await;
            sent.extend(summary(&items));
        }
        assert_eq!(
            sent,
            [
                r#"{"type":"snapshot","table":"orders","rows":[{"id":2}]}"#,
                r#"{"type":"snapshot","table":"orders","rows":[{"id":3},{"id":4}]}"#,
                r#"{"type":"snapshot","table":"orders","rows":[{"id":5}]}"#,
                r#"{"type":"ready","head":"7","replayed":0,"snapshot":4}"#,
                "8",
            ]
        );
    }

    fn summary(items: &[Item]) -> Vec<String> {
        items
            .iter()
            .map(|item| match item {
                Item::Change(event) => event.id.to_string(),
                Item::Control(control) => control.json(),
            })
            .collect()
    }

    #[tokio::test]
    async fn a_backlog_older_than_the_ring_is_paged_from_history_then_ready() {
        let history = History {
            events: (1..=8).map(event).collect(),
            pruned_upto: 0,
        };
        let mut session = open(2, history);
        let mut items = Vec::new();
        session.next_batch(&mut items).await;
        assert_eq!(summary(&items), ["3", "4", "5", "6", "7", "8"]);
        items.clear();
        session.next_batch(&mut items).await;
        assert_eq!(
            summary(&items),
            [r#"{"type":"ready","head":"8","replayed":6}"#]
        );
        assert_eq!(session.position(), 8);
    }

    #[tokio::test]
    async fn a_position_retention_deleted_gets_reset_to_the_head() {
        let history = History {
            events: (7..=8).map(event).collect(),
            pruned_upto: 6,
        };
        let mut session = open(2, history);
        let mut items = Vec::new();
        session.next_batch(&mut items).await;
        assert_eq!(
            summary(&items),
            [r#"{"type":"reset","reason":"history_gone","head":"8"}"#]
        );
        assert_eq!(session.position(), 8);
    }

    #[tokio::test]
    async fn a_position_ahead_of_the_ring_is_ready_if_issued_and_reset_if_not() {
        let issued = History {
            events: (1..=10).map(event).collect(),
            pruned_upto: 0,
        };
        let mut session = open(10, issued);
        let mut items = Vec::new();
        session.next_batch(&mut items).await;
        assert_eq!(
            summary(&items),
            [r#"{"type":"ready","head":"10","replayed":0}"#]
        );
        let mut session = open(12, History::default());
        items.clear();
        session.next_batch(&mut items).await;
        assert_eq!(
            summary(&items),
            [r#"{"type":"reset","reason":"history_gone","head":"8"}"#]
        );
    }

    /// A heartbeat every 10 ms.
    fn pace() -> Pace {
        Pace {
            heartbeat: Duration::from_millis(10),
            shutdown: CancellationToken::new(),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Records what the loop hands it; ends the stream after `heartbeats` heartbeats.
    #[derive(Default)]
    struct Recorder {
        sent: Vec<String>,
        heartbeats: usize,
    }

    impl Sink for Recorder {
        type Fault = ();
        type Incoming = ();
        const TRANSPORT: Transport = Transport::Ws;

        async fn open(&mut self) -> Sent<()> {
            self.sent.push("open".into());
            Ok(())
        }

        async fn send(&mut self, items: &[Item]) -> Sent<()> {
            self.sent.extend(summary(items));
            Ok(())
        }

        async fn heartbeat(&mut self, items: &[Item], position: u64) -> Sent<()> {
            self.sent.extend(summary(items));
            self.sent.push(format!("heartbeat {position}"));
            self.heartbeats += 1;
            if self.heartbeats == 2 {
                return Err(End::Fault(()));
            }
            Ok(())
        }

        async fn incoming(&mut self) {
            std::future::pending().await
        }

        async fn answer(&mut self, (): ()) -> Sent<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_loop_sends_backlog_then_ready_then_heartbeats_until_the_sink_ends() {
        let mut session = open(6, History::default());
        let mut sink = Recorder::default();
        let pace = pace();
        let end = serve(&mut session, &mut sink, &pace).await;
        assert_eq!(end, End::Fault(()));
        assert_eq!(
            sink.sent,
            [
                "open",
                "7",
                "8",
                r#"{"type":"ready","head":"8","replayed":2}"#,
                "heartbeat 8",
                "heartbeat 8",
            ]
        );
        assert_eq!(pace.metrics.delivered(Transport::Ws).get(), 2);
        assert_eq!(pace.metrics.connections(Transport::Ws).get(), 0);
    }

    #[tokio::test]
    async fn the_loop_ends_at_shutdown() {
        let mut session = open(8, History::default());
        let pace = pace();
        pace.shutdown.cancel();
        let end = serve(&mut session, &mut Recorder::default(), &pace).await;
        assert_eq!(end, End::Shutdown);
    }
}
