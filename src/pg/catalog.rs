//! The tracked tables and their columns as this replica knows them, and how a request
//! gets a copy no older than itself.
//!
//! The copy is re-read every few seconds by the source, at once when the catalog
//! doorbell rings (`realtime.track`/`untrack` and DDL on tables notify
//! [`CHANNEL`]), and on demand when a stream names a table or column the copy does
//! not hold. On-demand reads are coalesced and rate-limited: one read at a time, a
//! request is satisfied by any read that *started* after it arrived, and reads start
//! at most once per [`MIN_INTERVAL`], so a flood of requests for tables that do not
//! exist costs PostgreSQL a bounded number of reads.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use super::DbError;
use crate::filter::Catalog;

/// The catalog doorbell: notified (no payload) when the set of tracked tables or
/// their columns may have changed.
pub const CHANNEL: &str = "rowcast_catalog";
/// Least time between the starts of two catalog reads.
pub const MIN_INTERVAL: Duration = Duration::from_millis(150);

/// The catalog copy and the gate that serialises re-reads of it.
#[derive(Debug)]
pub struct CatalogCache {
    /// The newest copy read.
    current: RwLock<Arc<Catalog>>,
    /// Doorbells heard so far: a copy read before the latest one may be stale.
    rung: AtomicU64,
    /// The value of `rung` when the read that produced `current` started.
    fresh_as_of: AtomicU64,
    /// Held for the length of one read, so concurrent callers share it; holds the
    /// instant the last read started (for coalescing and the rate limit).
    gate: tokio::sync::Mutex<Option<Instant>>,
}

impl CatalogCache {
    /// A cache holding `catalog`, read at start-up.
    pub fn new(catalog: Catalog) -> CatalogCache {
        CatalogCache {
            current: RwLock::new(Arc::new(catalog)),
            rung: AtomicU64::new(0),
            fresh_as_of: AtomicU64::new(0),
            gate: tokio::sync::Mutex::new(None),
        }
    }

    /// The newest copy read.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read())
    }

    /// Whether the doorbell rang after the current copy was read.
    pub fn is_stale(&self) -> bool {
        self.rung.load(Ordering::Acquire) > self.fresh_as_of.load(Ordering::Acquire)
    }

    /// Records a doorbell: the next request re-reads before trusting the copy.
    pub fn ring(&self) {
        self.rung.fetch_add(1, Ordering::AcqRel);
    }

    /// A copy read no earlier than `arrived`: the current one if a read started at
    /// or after it, else a new read (`read`), started no sooner than
    /// [`MIN_INTERVAL`] after the previous one.
    pub async fn since<F, Fut>(&self, arrived: Instant, read: F) -> Result<Arc<Catalog>, DbError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Catalog, DbError>>,
    {
        let mut last_start = self.gate.lock().await;
        if last_start.is_some_and(|started| started >= arrived) {
            return Ok(self.current());
        }
        if let Some(started) = *last_start {
            tokio::time::sleep_until(started + MIN_INTERVAL).await;
        }
        self.read_under_gate(&mut last_start, read).await
    }

    /// Reads a new copy now (the source's periodic refresh, a doorbell).
    pub async fn refresh<F, Fut>(&self, read: F) -> Result<Arc<Catalog>, DbError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Catalog, DbError>>,
    {
        let mut last_start = self.gate.lock().await;
        self.read_under_gate(&mut last_start, read).await
    }

    async fn read_under_gate<F, Fut>(
        &self,
        last_start: &mut Option<Instant>,
        read: F,
    ) -> Result<Arc<Catalog>, DbError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Catalog, DbError>>,
    {
        let rung = self.rung.load(Ordering::Acquire);
        *last_start = Some(Instant::now());
        let catalog = Arc::new(read().await?);
        *self.current.write() = Arc::clone(&catalog);
        self.fresh_as_of.fetch_max(rung, Ordering::AcqRel);
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn one_table(name: &str) -> Catalog {
        Catalog::new([(name.to_owned(), vec!["id".to_owned()])])
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_misses_share_reads_and_reads_are_spaced() {
        let cache = Arc::new(CatalogCache::new(Catalog::default()));
        let reads = Arc::new(AtomicUsize::new(0));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..100 {
            let (cache, reads) = (Arc::clone(&cache), Arc::clone(&reads));
            tasks.push(tokio::spawn(async move {
                // Requests arrive every 10 ms for a second.
                tokio::time::sleep(Duration::from_millis(10 * i)).await;
                cache
                    .since(Instant::now(), || async {
                        reads.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Ok(one_table("orders"))
                    })
                    .await
                    .unwrap();
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let elapsed = started.elapsed();
        let bound = (elapsed.as_millis() / MIN_INTERVAL.as_millis()) as usize + 1;
        let reads = reads.load(Ordering::Relaxed);
        assert!(reads <= bound, "{reads} reads in {elapsed:?}");
        assert!(reads >= 2, "{reads} reads");
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_started_after_the_request_satisfies_it_without_another() {
        let cache = CatalogCache::new(Catalog::default());
        let arrived = Instant::now();
        cache
            .refresh(|| async { Ok(one_table("orders")) })
            .await
            .unwrap();
        let catalog = cache
            .since(arrived, || async { panic!("no second read") })
            .await
            .unwrap();
        assert!(catalog.contains("orders"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_doorbell_makes_the_copy_stale_until_the_next_read() {
        let cache = CatalogCache::new(one_table("orders"));
        assert!(!cache.is_stale());
        cache.ring();
        assert!(cache.is_stale());
        cache
            .refresh(|| async { Ok(Catalog::default()) })
            .await
            .unwrap();
        assert!(!cache.is_stale());
        assert!(!cache.current().contains("orders"));
    }
}
