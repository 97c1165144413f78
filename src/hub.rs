//! The hub: who is subscribed, and waking them when events arrive.
//!
//! A subscriber is a cursor into the [`EventLog`](crate::log::EventLog) plus a
//! [`Notify`]; the hub only knows which tables each one listens to, so that a batch of
//! events wakes the subscribers of the tables it touched and nobody else. Waking is a
//! permit, never a queue: a subscriber woken ten times while busy reads once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Notify;

/// The subscriber index.
#[derive(Debug, Default)]
pub struct Hub {
    /// Wakers by table; the `None` key holds the subscribers of every table.
    groups: DashMap<Option<Arc<str>>, DashMap<u64, Arc<Notify>>>,
    /// Registration ids, unique for the process.
    next_id: AtomicU64,
}

/// A live subscription; dropping it unregisters.
#[derive(Debug)]
pub struct Registration {
    hub: Arc<Hub>,
    id: u64,
    keys: Vec<Option<Arc<str>>>,
    notify: Arc<Notify>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Arc<Hub> {
        Arc::new(Hub::default())
    }

    /// Registers a subscriber of `tables` (`None`: all tables).
    pub fn register(self: &Arc<Self>, tables: Option<&[Arc<str>]>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let notify = Arc::new(Notify::new());
        let keys: Vec<Option<Arc<str>>> = match tables {
            None => vec![None],
            Some(tables) => tables.iter().cloned().map(Some).collect(),
        };
        for key in &keys {
            self.groups
                .entry(key.clone())
                .or_default()
                .insert(id, Arc::clone(&notify));
        }
        Registration {
            hub: Arc::clone(self),
            id,
            keys,
            notify,
        }
    }

    /// Wakes the subscribers of the given tables (and those of every table). The
    /// shards are read one at a time and no lock is held while a task is woken.
    pub fn wake<'a>(&self, tables: impl IntoIterator<Item = &'a str>) {
        let mut woken: Vec<Arc<Notify>> = Vec::new();
        let mut collect = |key: &Option<Arc<str>>| {
            if let Some(group) = self.groups.get(key) {
                woken.extend(group.iter().map(|entry| Arc::clone(entry.value())));
            }
        };
        collect(&None);
        let mut seen: Vec<&str> = Vec::new();
        for table in tables {
            if !seen.contains(&table) {
                seen.push(table);
                collect(&Some(Arc::from(table)));
            }
        }
        for notify in woken {
            notify.notify_one();
        }
    }

    /// Wakes every subscriber (shutdown, source state changes).
    pub fn wake_all(&self) {
        let woken: Vec<Arc<Notify>> = self
            .groups
            .iter()
            .flat_map(|group| {
                group
                    .value()
                    .iter()
                    .map(|entry| Arc::clone(entry.value()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for notify in woken {
            notify.notify_one();
        }
    }

    /// How many subscriptions are registered.
    pub fn subscribers(&self) -> usize {
        let mut ids: Vec<u64> = self
            .groups
            .iter()
            .flat_map(|group| group.value().iter().map(|e| *e.key()).collect::<Vec<_>>())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.len()
    }
}

impl Registration {
    /// Waits until the hub wakes this subscriber (returns at once if it was woken
    /// since the last wait).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        for key in &self.keys {
            let now_empty = match self.hub.groups.get(key) {
                Some(group) => {
                    group.remove(&self.id);
                    group.is_empty()
                }
                None => false,
            };
            if now_empty {
                self.hub.groups.remove_if(key, |_, group| group.is_empty());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn is_woken(registration: &Registration) -> bool {
        tokio::time::timeout(Duration::from_millis(20), registration.woken())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn only_subscribers_of_touched_tables_are_woken() {
        let hub = Hub::new();
        let orders: Arc<str> = Arc::from("orders");
        let audit: Arc<str> = Arc::from("audit");
        let all = hub.register(None);
        let only_orders = hub.register(Some(&[orders]));
        let only_audit = hub.register(Some(&[audit]));
        hub.wake(["orders", "orders"]);
        assert!(is_woken(&all).await);
        assert!(is_woken(&only_orders).await);
        assert!(!is_woken(&only_audit).await);
    }

    #[tokio::test]
    async fn a_wake_before_waiting_is_not_lost() {
        let hub = Hub::new();
        let sub = hub.register(None);
        hub.wake(["t"]);
        assert!(is_woken(&sub).await);
        assert!(!is_woken(&sub).await);
    }

    #[tokio::test]
    async fn dropping_a_registration_unregisters_it() {
        let hub = Hub::new();
        let a = hub.register(Some(&[Arc::from("x"), Arc::from("y")]));
        let b = hub.register(None);
        assert_eq!(hub.subscribers(), 2);
        drop(a);
        assert_eq!(hub.subscribers(), 1);
        assert!(hub.groups.get(&Some(Arc::from("x"))).is_none());
        drop(b);
        assert_eq!(hub.subscribers(), 0);
    }
}
