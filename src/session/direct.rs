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

use super::{record_sent, Changes, Item, MAX_BATCH};
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
    /// Writes the change events of `items` if the socket takes them now; `metrics`
    /// for what the transport counts of its own.
    fn try_write(&self, items: &[Item], metrics: &Metrics) -> Written;
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

thread_local! {
    /// A fan-out worker's batch, reused: no allocation per subscriber per event.
    static BATCH: RefCell<Vec<Item>> = const { RefCell::new(Vec::new()) };
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
        let delivered = BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            batch.clear();
            let read = self.log.read_after(
                slot.cursor,
                MAX_BATCH,
                |event| self.selection.pick(event),
                &mut Changes(&mut batch),
            );
            // Behind the ring: the task pages from the database.
            let Read::Scanned { position, more } = read else {
                return false;
            };
            let written = if batch.is_empty() {
                Written::All
            } else {
                self.writer.try_write(&batch, &self.metrics)
            };
            if written != Written::Nothing {
                slot.cursor = position;
                record_sent(&self.metrics, &batch, self.transport);
                if !batch.is_empty() {
                    self.metrics.fan_out_writes.inc();
                }
            }
            batch.clear();
            written == Written::All && !more
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
    use crate::session::{serve, End, Pace, Sent, Session, Sink};
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
        fn try_write(&self, items: &[Item], _: &Metrics) -> Written {
            let answer = self.answers.lock().pop_front().unwrap_or(Written::All);
            if answer != Written::Nothing {
                self.written.lock().extend(ids(items));
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

    fn ids(items: &[Item]) -> Vec<u64> {
        items
            .iter()
            .filter_map(|item| match item {
                Item::Change(event) => Some(event.id),
                Item::Control(_) => None,
            })
            .collect()
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
