//! The hub: who is subscribed, and waking them when events arrive.
//!
//! A subscriber is a cursor into the [`EventLog`](crate::log::EventLog) plus a
//! doorbell. The hub files each one under the narrowest key its selection allows: a
//! value of a column when it has an `eq`/`in` filter, else its tables, else "all". A
//! batch of events wakes only the subscribers filed under the keys it touches, so a
//! thousand clients each watching their own customer cost one wake-up per matching
//! event, not a thousand. Waking is a permit, never a queue: a subscriber woken ten
//! times while busy reads once. An UPDATE wakes the subscribers of the values in both
//! its images, so a live view hears of a row that leaves it. Subscribers that were not woken still see every event
//! when they next read (heartbeats make them read), so the index only ever saves work.
//!
//! A subscriber can also be served by the fan-out itself ([`Deliver`]): a caught-up
//! client whose task is parked gets its events written to its socket by one
//! of the hub's fan-out workers, one per runtime worker thread, without its own task
//! being woken. The worker rings the doorbell only when the subscriber declines
//! (its task is busy, it is behind, or its socket would block), and the task then
//! does what it always did.
//!
//! The index is split by worker: each worker keeps its own subscribers' groups, and
//! a batch hands each worker only the keys it touched. The worker finds and serves
//! its subscribers itself, so a subscriber's state stays in one core's cache instead
//! of being touched by the source's core and then the worker's on every change.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::Poll;

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;

use crate::event::{Event, Op};
use crate::filter::{value_key, Selection};

/// Where a subscriber is filed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    /// Every event.
    All,
    /// Events of one table.
    Table(Arc<str>),
    /// Events whose row holds this value key in this column (and every TRUNCATE).
    Value { column: Arc<str>, value: String },
}

/// The subscriber index.
#[derive(Debug)]
pub struct Hub {
    /// The subscribers, split by the fan-out worker that serves them (always at least
    /// one part). Each worker looks up its own subscribers: the source hands over only
    /// which keys a batch touched, so on the delivery path a subscriber's state is
    /// touched by one core, not by the source's core and then the worker's.
    shards: Vec<Arc<Shard>>,
    /// The columns some subscriber is filed under, with how many registrations use
    /// each: the only columns a batch's rows are looked up in.
    indexed: DashMap<Arc<str>, usize>,
    /// Registration ids, unique for the process.
    next_id: AtomicU64,
    /// Whether the shards have fan-out workers (inside a runtime); without them,
    /// `wake` rings every subscriber it concerns at once.
    served: bool,
}

/// A subscriber the fan-out can serve without waking its task.
pub trait Deliver: Send + Sync {
    /// Sends what the log holds for this subscriber now, without waiting. `false`
    /// when its task must do it (the task is not parked, the subscriber is behind, or
    /// its socket would block): the hub then rings its doorbell.
    fn try_deliver(&self) -> bool;
}

/// One fan-out worker's subscribers, and the keys it has yet to serve.
#[derive(Default)]
struct Shard {
    /// This worker's subscribers by key.
    groups: DashMap<Key, DashMap<u64, Arc<Doorbell>>>,
    /// What batches touched since the worker last looked: bounded by the keys its
    /// subscribers are filed under, however many batches arrive meanwhile.
    touched: Mutex<Touched>,
    /// Rung when `touched` gains keys, or when the hub is dropped.
    bell: Doorbell,
    /// Set when the hub is dropped: the worker ends.
    closed: AtomicBool,
}

/// Keys whose subscribers some batch may concern.
#[derive(Debug, Default)]
struct Touched {
    /// The keys, each once.
    keys: HashSet<Key>,
    /// A TRUNCATE passes every filter: every `Key::Value` group is concerned.
    every_value: bool,
}

impl Touched {
    fn is_empty(&self) -> bool {
        self.keys.is_empty() && !self.every_value
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("groups", &self.groups.len())
            .field("touched", &*self.touched.lock())
            .finish()
    }
}

impl Shard {
    /// Adds to `out` each subscriber filed under `touched`'s keys, once (see
    /// `Doorbell::queued`).
    fn collect(&self, touched: &Touched, out: &mut Vec<Arc<Doorbell>>) {
        let mut add = |group: &DashMap<u64, Arc<Doorbell>>| {
            for entry in group.iter() {
                if !entry.value().queued.swap(true, Ordering::AcqRel) {
                    out.push(Arc::clone(entry.value()));
                }
            }
        };
        for key in &touched.keys {
            if let Some(group) = self.groups.get(key) {
                add(&group);
            }
        }
        if touched.every_value {
            for group in self.groups.iter() {
                if matches!(group.key(), Key::Value { .. }) {
                    add(group.value());
                }
            }
        }
    }
}

/// Subscribers a fan-out worker serves before it yields to the runtime's other
/// tasks (the source, requests).
const FAN_OUT_TURN: usize = 64;

/// A live subscription; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    /// The hub to leave on drop.
    hub: Arc<Hub>,
    /// This registration's entry in each of its groups.
    id: u64,
    /// The groups it is filed under, so dropping it leaves exactly those.
    keys: Vec<Key>,
    /// What the hub rings and the session waits on.
    doorbell: Arc<Doorbell>,
}

/// A subscriber's wake-up: a flag and its task's waker. Ringing is a store and at
/// most one wake, with no lock and no waiter list (a `tokio::sync::Notify` locks its
/// list on every wait and every wake, which a fan-out does per subscriber per event).
#[derive(Default)]
struct Doorbell {
    /// Set by a wake-up, cleared by the wait that consumes it: a permit, not a queue.
    rung: AtomicBool,
    /// The subscriber's task, woken when the bell rings.
    waker: AtomicWaker,
    /// The subscriber's own delivery, once its transport attached one.
    direct: OnceLock<Arc<dyn Deliver>>,
    /// Whether it is in a worker's list to serve: a subscriber under several touched
    /// keys is served once.
    queued: AtomicBool,
    /// The fan-out worker (and the part of the index) it belongs to.
    shard: usize,
}

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Doorbell")
            .field("rung", &self.rung)
            .field("direct", &self.direct.get().is_some())
            .finish()
    }
}

impl Doorbell {
    fn ring(&self) {
        self.rung.store(true, Ordering::Release);
        self.waker.wake();
    }

    async fn wait(&self) {
        std::future::poll_fn(|cx| {
            if self.rung.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A ring between the check and the registration found no waker.
            if self.rung.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

impl Hub {
    /// An empty hub, with a fan-out worker per worker thread of the current runtime
    /// (none outside one).
    pub fn new() -> Arc<Hub> {
        let (shards, served) = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                let shards = (0..runtime.metrics().num_workers().max(1))
                    .map(|_| {
                        let shard = Arc::new(Shard::default());
                        runtime.spawn(fan_out(Arc::clone(&shard)));
                        shard
                    })
                    .collect();
                (shards, true)
            }
            Err(_) => (vec![Arc::new(Shard::default())], false),
        };
        Arc::new(Hub {
            shards,
            indexed: DashMap::new(),
            next_id: AtomicU64::new(0),
            served,
        })
    }

    /// Registers a subscriber with this selection.
    pub fn register(self: &Arc<Self>, selection: &Selection) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let doorbell = Arc::new(Doorbell {
            shard: (id as usize) % self.shards.len(),
            ..Doorbell::default()
        });
        let keys: Vec<Key> = match (selection.index_keys(), &selection.tables) {
            (Some((column, values)), _) => {
                let column: Arc<str> = Arc::from(column);
                *self.indexed.entry(Arc::clone(&column)).or_insert(0) += 1;
                values
                    .into_iter()
                    .map(|value| Key::Value {
                        column: Arc::clone(&column),
                        value,
                    })
                    .collect()
            }
            (None, Some(tables)) => tables.iter().cloned().map(Key::Table).collect(),
            (None, None) => vec![Key::All],
        };
        let groups = &self.shards[doorbell.shard].groups;
        for key in &keys {
            groups
                .entry(key.clone())
                .or_default()
                .insert(id, Arc::clone(&doorbell));
        }
        Registration {
            hub: Arc::clone(self),
            id,
            keys,
            doorbell,
        }
    }

    /// Wakes the subscribers a batch of events may concern: hands each fan-out worker
    /// the keys it touched, under one lock per worker, without visiting a subscriber.
    pub fn wake(&self, events: &[Arc<Event>]) {
        let mut touched = Touched::default();
        touched.keys.insert(Key::All);
        for event in events {
            touched.keys.insert(Key::Table(Arc::clone(&event.table)));
        }
        if !self.indexed.is_empty() {
            let columns: Vec<Arc<str>> = self.indexed.iter().map(|e| Arc::clone(e.key())).collect();
            for event in events {
                if event.op == Op::Truncate {
                    touched.every_value = true;
                    continue;
                }
                // Either image: a row leaving a view holds the value only in `old`.
                for row in event.row.iter().chain(&event.old) {
                    for column in &columns {
                        if let Some(value) = row.get(&**column).and_then(value_key) {
                            touched.keys.insert(Key::Value {
                                column: Arc::clone(column),
                                value,
                            });
                        }
                    }
                }
            }
        }
        if !self.served {
            let mut woken = Vec::new();
            for shard in &self.shards {
                shard.collect(&touched, &mut woken);
            }
            for doorbell in woken {
                doorbell.queued.store(false, Ordering::Release);
                doorbell.ring();
            }
            return;
        }
        for shard in &self.shards {
            let mut pending = shard.touched.lock();
            let was_empty = pending.is_empty();
            // Only keys this worker has subscribers under: what waits stays bounded.
            pending.keys.extend(
                touched
                    .keys
                    .iter()
                    .filter(|key| shard.groups.contains_key(*key))
                    .cloned(),
            );
            pending.every_value |= touched.every_value;
            let now_empty = pending.is_empty();
            drop(pending);
            // A worker with keys waiting has been rung already.
            if was_empty && !now_empty {
                shard.bell.ring();
            }
        }
    }

    /// Wakes every subscriber (shutdown, source state changes).
    pub fn wake_all(&self) {
        let mut woken: Vec<Arc<Doorbell>> = Vec::new();
        for shard in &self.shards {
            for group in shard.groups.iter() {
                woken.extend(group.value().iter().map(|entry| Arc::clone(entry.value())));
            }
        }
        for doorbell in woken {
            doorbell.ring();
        }
    }
}

impl Registration {
    /// Waits until the hub wakes this subscriber (returns at once if it was woken
    /// since the last wait).
    pub async fn woken(&self) {
        self.doorbell.wait().await;
    }

    /// Lets the fan-out serve this subscriber through `deliver` (once; a second call
    /// is ignored).
    pub fn attach(&self, deliver: Arc<dyn Deliver>) {
        let _ = self.doorbell.direct.set(deliver);
    }
}

/// A fan-out worker: finds its subscribers under the touched keys and offers each
/// its events, ringing the doorbell of those that decline, until the hub is dropped.
async fn fan_out(shard: Arc<Shard>) {
    let mut touched = Touched::default();
    let mut serving = Vec::new();
    loop {
        shard.bell.wait().await;
        if shard.closed.load(Ordering::Acquire) {
            return;
        }
        std::mem::swap(&mut touched, &mut *shard.touched.lock());
        shard.collect(&touched, &mut serving);
        touched.keys.clear();
        touched.every_value = false;
        for (served, doorbell) in serving.drain(..).enumerate() {
            // Cleared first: a wake during the offer finds it again, and the next
            // offer reads from where this one stopped.
            doorbell.queued.store(false, Ordering::Release);
            let delivered = doorbell.direct.get().is_some_and(|d| d.try_deliver());
            if !delivered {
                doorbell.ring();
            }
            if served % FAN_OUT_TURN == FAN_OUT_TURN - 1 {
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        for shard in &self.shards {
            shard.closed.store(true, Ordering::Release);
            shard.bell.ring();
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let groups = &self.hub.shards[self.doorbell.shard].groups;
        for key in &self.keys {
            let now_empty = match groups.get(key) {
                Some(group) => {
                    group.remove(&self.id);
                    group.is_empty()
                }
                None => false,
            };
            if now_empty {
                groups.remove_if(key, |_, group| group.is_empty());
            }
        }
        if let Some(Key::Value { column, .. }) = self.keys.first() {
            self.hub.indexed.remove_if_mut(column, |_, count| {
                *count -= 1;
                *count == 0
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::{Catalog, StreamParams};
    use serde_json::json;
    use std::time::Duration;

    fn catalog() -> Catalog {
        Catalog::new([
            ("orders".to_owned(), vec!["id".into(), "customer".into()]),
            ("audit".to_owned(), vec!["id".into()]),
        ])
    }

    fn register(hub: &Arc<Hub>, query: &str) -> Registration {
        hub.register(&StreamParams::parse(query, &catalog()).unwrap().selection)
    }

    fn event(table: &str, op: &str, row: serde_json::Value) -> Arc<Event> {
        crate::testing::event(1, table, op, Some(row), None)
    }

    async fn is_woken(registration: &Registration) -> bool {
        tokio::time::timeout(Duration::from_millis(20), registration.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_subscribers_of_touched_tables_are_woken() {
        let hub = Hub::new();
        let all = register(&hub, "");
        let only_orders = register(&hub, "tables=orders");
        let only_audit = register(&hub, "tables=audit");
        hub.wake(&[
            event("orders", "INSERT", json!({})),
            event("orders", "INSERT", json!({})),
        ]);
        assert!(is_woken(&all).await);
        assert!(is_woken(&only_orders).await);
        assert!(!is_woken(&only_audit).await);
    }

    #[tokio::test]
    async fn eq_and_in_filters_wake_only_on_their_values() {
        let hub = Hub::new();
        let seven = register(&hub, "filter=customer=eq.7");
        let some = register(&hub, "filter=customer=in.(8,ann)");
        let range = register(&hub, "filter=customer=gt.100");
        hub.wake(&[event("orders", "UPDATE", json!({"customer": 7.0}))]);
        assert!(is_woken(&seven).await);
        assert!(!is_woken(&some).await);
        assert!(
            is_woken(&range).await,
            "range filters fall back to the table key"
        );
        hub.wake(&[event("orders", "UPDATE", json!({"customer": "ann"}))]);
        assert!(!is_woken(&seven).await);
        assert!(is_woken(&some).await);
        hub.wake(&[event("orders", "TRUNCATE", json!(null))]);
        assert!(is_woken(&seven).await && is_woken(&some).await);
    }

    #[tokio::test]
    async fn an_update_wakes_the_subscribers_of_its_old_values_too() {
        let hub = Hub::new();
        let seven = register(&hub, "filter=customer=eq.7");
        let update = crate::testing::event(
            1,
            "orders",
            "UPDATE",
            Some(json!({"customer": 8})),
            Some(json!({"customer": 7})),
        );
        hub.wake(&[update]);
        assert!(is_woken(&seven).await, "the row left customer 7's view");
    }

    #[tokio::test]
    async fn a_wake_before_waiting_is_not_lost() {
        let hub = Hub::new();
        let sub = register(&hub, "");
        hub.wake(&[event("t", "INSERT", json!({}))]);
        assert!(is_woken(&sub).await);
        assert!(!is_woken(&sub).await);
    }

    #[tokio::test]
    async fn a_worker_is_handed_only_the_keys_its_subscribers_are_filed_under() {
        let hub = Hub::new();
        let orders = register(&hub, "tables=orders");
        let seven = register(&hub, "filter=customer=eq.7");
        // Many batches before the worker runs (a current-thread runtime: it runs
        // only when this test awaits), most of them touching nobody's keys.
        for customer in 0..1000 {
            hub.wake(&[
                event("audit", "INSERT", json!({"customer": customer})),
                event("orders", "INSERT", json!({"customer": customer})),
            ]);
        }
        let waiting: usize = hub.shards.iter().map(|s| s.touched.lock().keys.len()).sum();
        assert_eq!(waiting, 2, "orders' table and customer 7, nothing else");
        assert!(is_woken(&orders).await && is_woken(&seven).await);
        assert!(hub.shards.iter().all(|s| s.touched.lock().is_empty()));
    }

    #[tokio::test]
    async fn dropping_a_registration_unregisters_it() {
        let hub = Hub::new();
        let a = register(&hub, "tables=orders,audit");
        let b = register(&hub, "filter=customer=eq.1");
        let groups = |hub: &Hub| hub.shards.iter().map(|s| s.groups.len()).sum::<usize>();
        assert_eq!(groups(&hub), 4);
        assert_eq!(hub.indexed.len(), 1);
        drop(a);
        drop(b);
        assert_eq!(groups(&hub), 0);
        assert!(hub.indexed.is_empty());
    }
}
