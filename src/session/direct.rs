//! Delivery by the fan-out ([`Deliver`]): while a live session's task waits with
//! nothing to send, it parks its cursor here, and the hub's fan-out worker reads the
//! client's events from the ring and hands them to the transport's write that never
//! waits ([`TryWrite`]). The task is woken only when that is not the whole story: the
//! client is behind or has more than a batch to read, its socket would block or took
//! part of a batch, or the task is busy with something of its own (a heartbeat, a
//! client's message, shutdown).
//!
//! Order holds because one side writes at a time: the fan-out while the session is
//! parked, the task once it took its cursor back (under the same lock). What a
//! heartbeat, a filter, a live view or the send timeout do is unchanged: the fan-out
//! reads with the session's own selection, and everything else is the task's.

use std::cell::RefCell;
use std::sync::Arc;

use parking_lot::Mutex;
use smallvec::SmallVec;

use super::{record_sent, MAX_BATCH};
use crate::event::Event;
use crate::filter::Selection;
use crate::hub::Deliver;
use crate::log::{EventLog, Read};
use crate::metrics::{Metrics, Transport};

/// What a transport's write that never waits did with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Every byte went out.
    All,
    /// Some went out; the transport keeps the rest, and the task writes it
    /// ([`super::Sink::flush`]) before anything else.
    Part,
    /// Nothing went out: the socket would block, or is gone (the task finds out).
    Nothing,
}

/// A transport's write that never waits, for the fan-out.
pub trait TryWrite: Send + Sync {
    /// Writes `events` if the socket takes them now; `metrics` for what the
    /// transport counts of its own.
    fn try_write(&self, events: &[&Arc<Event>], metrics: &Metrics) -> Written;
}

/// A parked session's cursor.
#[derive(Debug, Default)]
struct Slot {
    /// Whether the fan-out may write for the session: its task is waiting with
    /// nothing of its own to send.
    parked: bool,
    /// The session's position while it is parked.
    cursor: u64,
}

/// A session's delivery by the fan-out, attached to its hub registration.
pub(super) struct Direct {
    /// The ring the events are read from.
    log: Arc<EventLog>,
    /// The session's selection, shared: what the fan-out sends is what the task would.
    selection: Arc<Selection>,
    /// The transport's write.
    writer: Arc<dyn TryWrite>,
    /// Where deliveries, latency and the fan-out's own counters go.
    metrics: Arc<Metrics>,
    /// The label deliveries are counted under.
    transport: Transport,
    /// The cursor, and whose turn it is to write.
    slot: Mutex<Slot>,
}

impl std::fmt::Debug for Direct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Direct")
            .field("slot", &*self.slot.lock())
            .finish_non_exhaustive()
    }
}

/// The events a fan-out worker last read from a ring, which every caught-up client it
/// serves next reads too: one read of the ring (its lock, a reference count per event)
/// per worker per change, not per client.
#[derive(Default)]
struct Window {
    /// Which ring (its address: only compared, never followed).
    log: usize,
    /// The events after this position were read...
    after: u64,
    /// ... up to this one, with nothing left over.
    position: u64,
    /// The events, in id order.
    events: Vec<Arc<Event>>,
}

thread_local! {
    /// This thread's window (the fan-out workers each have their own).
    static WINDOW: RefCell<Window> = RefCell::new(Window::default());
}

impl Window {
    /// The events after `cursor`, up to the ring's head, read again only when the
    /// window does not cover them; `None` when the client must be left to its task
    /// (behind the ring, or more than a batch to read).
    fn after(&mut self, log: &Arc<EventLog>, cursor: u64) -> Option<(&[Arc<Event>], u64)> {
        let key = Arc::as_ptr(log) as usize;
        let head = log.head();
        if self.log != key || cursor < self.after || self.position < head {
            self.events.clear();
            let read = log.read_after(cursor, MAX_BATCH, |e| Some(Arc::clone(e)), &mut self.events);
            let Read::Scanned {
                position,
                more: false,
            } = read
            else {
                // Not a window others can use: read again next time.
                self.log = 0;
                return None;
            };
            (self.log, self.after, self.position) = (key, cursor, position);
        }
        let first = self.events.partition_point(|event| event.id <= cursor);
        Some((&self.events[first..], self.position.max(cursor)))
    }
}

impl Direct {
    /// A delivery for a session reading `log` with `selection`.
    pub(super) fn new(
        log: Arc<EventLog>,
        selection: Arc<Selection>,
        writer: Arc<dyn TryWrite>,
        metrics: Arc<Metrics>,
        transport: Transport,
    ) -> Direct {
        Direct {
            log,
            selection,
            writer,
            metrics,
            transport,
            slot: Mutex::new(Slot::default()),
        }
    }

    /// Hands the cursor to the fan-out while the task waits.
    pub(super) fn park(&self, cursor: u64) {
        let mut slot = self.slot.lock();
        slot.cursor = cursor;
        slot.parked = true;
    }

    /// Takes the cursor back: the fan-out writes nothing more until the next park.
    pub(super) fn unpark(&self) -> u64 {
        let mut slot = self.slot.lock();
        slot.parked = false;
        slot.cursor
    }

    /// Writes the client's picks of `events` (read up to `position`): the client's
    /// new position, and whether that was all (else its task takes over from there).
    fn deliver(&self, events: &[Arc<Event>], position: u64, cursor: u64) -> (u64, bool) {
        // On the stack for a turn's usual handful; the window holds the events.
        let picked: SmallVec<[&Arc<Event>; 16]> = events
            .iter()
            .filter_map(|event| self.selection.pick_ref(event))
            .collect();
        if picked.is_empty() {
            return (position, true);
        }
        match self.writer.try_write(&picked, &self.metrics) {
            Written::Nothing => (cursor, false),
            written => {
                record_sent(&self.metrics, picked.iter().copied(), self.transport);
                self.metrics.fan_out_writes.inc();
                (position, written == Written::All)
            }
        }
    }
}

impl Deliver for Direct {
    fn try_deliver(&self) -> bool {
        // The task holds the slot only to park or unpark: it reads the ring itself next.
        let Some(mut slot) = self.slot.try_lock() else {
            return false;
        };
        if !slot.parked {
            return false;
        }
        let delivered = WINDOW.with(|window| {
            let mut window = window.borrow_mut();
            let Some((events, position)) = window.after(&self.log, slot.cursor) else {
                return false;
            };
            let (position, all) = self.deliver(events, position, slot.cursor);
            slot.cursor = position;
            all
        });
        if !delivered {
            slot.parked = false;
            self.metrics.fan_out_handoffs.inc();
        }
        delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Catalog, StreamParams};
    use crate::hub::Hub;
    use crate::session::{serve, End, Item, Pace, Sent, Session, Sink};
    use crate::testing::{self, History, Rows};
    use serde_json::json;
    use std::collections::VecDeque;
    use std::time::Duration;
    use tokio_util::sync::CancellationToken;

    /// A transport's write that answers as scripted (then `All`) and records what it
    /// took.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<VecDeque<Written>>,
        written: Mutex<Vec<u64>>,
        /// Set by a `Part` answer, cleared by the task's flush.
        rest: Mutex<bool>,
    }

    impl TryWrite for Scripted {
        fn try_write(&self, events: &[&Arc<Event>], _: &Metrics) -> Written {
            let answer = self.answers.lock().pop_front().unwrap_or(Written::All);
            if answer != Written::Nothing {
                self.written
                    .lock()
                    .extend(events.iter().map(|event| event.id));
            }
            *self.rest.lock() = answer == Written::Part;
            answer
        }
    }

    /// The task's sink: records what the task itself sends, and each flush of a rest.
    struct TaskSink {
        sent: Arc<Mutex<Vec<String>>>,
        writes: Arc<Scripted>,
    }

    impl Sink for TaskSink {
        type Fault = ();
        type Incoming = ();
        const TRANSPORT: Transport = Transport::Ws;

        async fn open(&mut self) -> Sent<()> {
            Ok(())
        }

        async fn send(&mut self, items: &[Item]) -> Sent<()> {
            let mut sent = self.sent.lock();
            for item in items {
                sent.push(match item {
                    Item::Change(event) => event.id.to_string(),
                    Item::Control(control) => control.json(),
                });
            }
            Ok(())
        }

        async fn heartbeat(&mut self, items: &[Item], _: u64) -> Sent<()> {
            self.send(items).await
        }

        async fn incoming(&mut self) {
            std::future::pending().await
        }

        async fn answer(&mut self, (): ()) -> Sent<()> {
            Ok(())
        }

        async fn flush(&mut self) -> Sent<()> {
            if std::mem::take(&mut *self.writes.rest.lock()) {
                self.sent.lock().push("rest".into());
            }
            Ok(())
        }
    }

    fn event(id: i64) -> Arc<crate::event::Event> {
        testing::event(id, "orders", "INSERT", Some(json!({"id": id})), None)
    }

    /// Lets the other tasks of this single-threaded runtime run until they wait.
    async fn settle() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    #[tokio::test]
    async fn a_parked_session_is_written_by_the_fan_out_and_its_task_takes_over_when_it_cannot() {
        let log = Arc::new(EventLog::new(64, 0));
        let hub = Hub::new();
        let catalog = Catalog::new([("orders".to_owned(), vec!["id".to_owned()])]);
        let params = StreamParams::parse("filter=id=gt.1", &catalog).unwrap();
        let history = Arc::new(History::default());
        let mut session = Session::open(
            Arc::clone(&log),
            &hub,
            history,
            Arc::new(Rows::default()),
            params,
        );
        let writes = Arc::new(Scripted::default());
        let metrics = Arc::new(Metrics::default());
        session.attach(
            Arc::clone(&writes) as Arc<dyn TryWrite>,
            Arc::clone(&metrics),
            Transport::Ws,
        );
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut sink = TaskSink {
            sent: Arc::clone(&sent),
            writes: Arc::clone(&writes),
        };
        let pace = Pace {
            heartbeat: Duration::from_secs(3600),
            shutdown: CancellationToken::new(),
            metrics: Arc::clone(&metrics),
        };
        let shutdown = pace.shutdown.clone();
        let task = tokio::spawn(async move { serve(&mut session, &mut sink, &pace).await });
        settle().await;
        let append = |range: std::ops::RangeInclusive<i64>| {
            let events: Vec<_> = range.map(event).collect();
            log.append(events.iter().cloned());
            hub.wake(&events);
        };

        // Caught up and parked: the fan-out writes, filtered, and the task sleeps.
        append(1..=3);
        settle().await;
        assert_eq!(*writes.written.lock(), [2, 3]);
        assert_eq!(metrics.fan_out_writes.get(), 1);
        assert_eq!(metrics.delivered(Transport::Ws).get(), 2);

        // The socket would block: the task gets the events, none are lost or doubled.
        writes.answers.lock().push_back(Written::Nothing);
        append(4..=4);
        settle().await;
        assert_eq!(metrics.fan_out_handoffs.get(), 1);

        // Parked again: the fan-out writes part and leaves the rest to the task,
        // which writes it before anything else.
        writes.answers.lock().push_back(Written::Part);
        append(5..=5);
        settle().await;
        append(6..=6);
        settle().await;
        assert_eq!(*writes.written.lock(), [2, 3, 5, 6]);
        assert_eq!(metrics.fan_out_handoffs.get(), 2);
        assert_eq!(metrics.delivered(Transport::Ws).get(), 5);

        shutdown.cancel();
        assert_eq!(task.await.unwrap(), End::Shutdown);
        assert_eq!(
            *sent.lock(),
            [r#"{"type":"ready","head":"0","replayed":0}"#, "4", "rest"]
        );
    }
}
