//! The tracked tables and their columns as this replica knows them, and how a request
//! gets a copy no older than itself.
//!
//! The source re-reads the copy every few seconds; a stream that names tables or
//! columns re-reads it before it is accepted or refused, so a table tracked, a column
//! added or a table untracked and committed before the request is judged by the
//! database as it is now, on every replica. (A NOTIFY doorbell from `track` and
//! `untrack` was tried first: the notification can reach the gateway after a request
//! sent right after the commit, so it cannot give "at once".)
//!
//! Reads are coalesced: one runs at a time, and a request is satisfied by any read
//! that *started* after it arrived, so concurrent requests share one. A request the
//! copy cannot satisfy (a table or column it lacks) also waits until [`MIN_INTERVAL`]
//! after the previous read started, so a flood of requests for tables that do not
//! exist costs PostgreSQL a bounded number of reads.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use super::DbError;
use crate::filter::Catalog;

/// Least time between the start of a read and a read for a request the previous
/// copy could not satisfy.
pub const MIN_INTERVAL: Duration = Duration::from_millis(150);

/// The catalog copy and the gate that serialises re-reads of it.
#[derive(Debug)]
pub struct CatalogCache {
    /// The newest copy read.
    current: RwLock<Arc<Catalog>>,
    /// Held for the length of one read, so concurrent callers share it; holds the
    /// instant the last read started (for coalescing and the rate limit).
    gate: tokio::sync::Mutex<Option<Instant>>,
}

/// Whether a read for a request waits out [`MIN_INTERVAL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// The copy held everything the request named: read as soon as the gate is free.
    Prompt,
    /// The copy lacked something the request named: such requests may come in a
    /// flood, so their reads are spaced.
    Spaced,
}

impl CatalogCache {
    /// A cache holding `catalog`, read at start-up.
    pub fn new(catalog: Catalog) -> CatalogCache {
        CatalogCache {
            current: RwLock::new(Arc::new(catalog)),
            gate: tokio::sync::Mutex::new(None),
        }
    }

    /// The newest copy read.
    pub fn current(&self) -> Arc<Catalog> {
        Arc::clone(&self.current.read())
    }

    /// A copy read no earlier than `arrived`: the current one if a read started at
    /// or after it, else a new one from `read` (spaced as `pace` says).
    pub async fn since<F, Fut>(
        &self,
        arrived: Instant,
        pace: Pace,
        read: F,
    ) -> Result<Arc<Catalog>, DbError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Catalog, DbError>>,
    {
        let mut last_start = self.gate.lock().await;
        if last_start.is_some_and(|started| started >= arrived) {
            return Ok(self.current());
        }
        if let (Pace::Spaced, Some(started)) = (pace, *last_start) {
            tokio::time::sleep_until(started + MIN_INTERVAL).await;
        }
        self.read_under_gate(&mut last_start, read).await
    }

    /// Reads a new copy now (the source's periodic refresh).
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
        *last_start = Some(Instant::now());
        let catalog = Arc::new(read().await?);
        *self.current.write() = Arc::clone(&catalog);
        Ok(catalog)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

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
                    .since(Instant::now(), Pace::Spaced, || async {
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
            .since(arrived, Pace::Prompt, || async { panic!("no second read") })
            .await
            .unwrap();
        assert!(catalog.contains("orders"));
    }

    #[tokio::test(start_paused = true)]
    async fn prompt_reads_are_not_spaced() {
        let cache = CatalogCache::new(Catalog::default());
        let reads = AtomicUsize::new(0);
        let started = Instant::now();
        for _ in 0..3 {
            tokio::time::advance(Duration::from_millis(1)).await;
            cache
                .since(Instant::now(), Pace::Prompt, || async {
                    reads.fetch_add(1, Ordering::Relaxed);
                    Ok(one_table("orders"))
                })
                .await
                .unwrap();
        }
        assert_eq!(reads.load(Ordering::Relaxed), 3);
        assert!(started.elapsed() < MIN_INTERVAL, "{:?}", started.elapsed());
    }
}
