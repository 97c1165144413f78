//! What wakes the source: bells, queued in the order heard, from the LISTEN
//! connection (bare doorbells and the WAL capturer's payloads) and from the relay.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::Notify;

use super::batch::{self, Batch};
use crate::metrics::Path;

/// What one notification asks of the source.
#[derive(Debug)]
pub enum Bell {
    /// Read `change_log` (a bare doorbell, or a payload that could not be used).
    Read,
    /// These events, heard by the given path: appended without a read if they
    /// continue the log's head.
    Batch(Batch, Path),
}

impl Bell {
    /// The bell of a NOTIFY payload: the WAL capturer's batch, or (empty, from the
    /// capture trigger or a batch that did not fit; or anything else) a plain doorbell.
    pub fn of_payload(payload: &str) -> Bell {
        if payload.is_empty() {
            return Bell::Read;
        }
        match batch::decode(payload.as_bytes()) {
            Ok(batch) => Bell::Batch(batch, Path::Payload),
            Err(err) => {
                tracing::debug!(%err, "doorbell payload not used; reading change_log");
                Bell::Read
            }
        }
    }
}

/// Notifications heard on the source's connection, counted and queued. A notification
/// received before a read was sent is for a commit that read sees (PostgreSQL delivers
/// it only once the commit is visible), so the source waits for one counted after its
/// last answer, not for every one: a burst of doorbells costs one read, not one read
/// each plus an empty one.
#[derive(Debug, Default)]
pub struct Doorbell {
    /// Notifications so far; only ever grows.
    rung: AtomicU64,
    /// Wakes the source when `rung` grows.
    notify: Notify,
    /// The bells not yet answered, in the order heard; at most [`MAX_BELLS`] (beyond,
    /// they collapse into one read, which answers them all).
    bells: parking_lot::Mutex<VecDeque<Bell>>,
}

/// Bells kept unanswered at most: a source that fell this far behind reads instead.
const MAX_BELLS: usize = 4096;

impl Doorbell {
    /// Queues and counts one bell (the connection's driver calls it, in message order).
    pub fn ring(&self, bell: Bell) {
        {
            let mut bells = self.bells.lock();
            if bells.len() >= MAX_BELLS {
                bells.clear();
                bells.push_back(Bell::Read);
            } else {
                bells.push_back(bell);
            }
        }
        self.rung.fetch_add(1, Ordering::AcqRel);
        self.notify.notify_one();
    }

    /// Notifications so far.
    pub fn rung(&self) -> u64 {
        self.rung.load(Ordering::Acquire)
    }

    /// The bells not yet answered, oldest first.
    pub fn take(&self) -> VecDeque<Bell> {
        std::mem::take(&mut *self.bells.lock())
    }

    /// Returns once more than `seen` notifications have been counted.
    pub async fn rung_after(&self, seen: u64) {
        loop {
            // A permit left by a notification already answered wakes this once; the
            // count then sends it back to waiting.
            let notified = self.notify.notified();
            if self.rung() > seen {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn doorbells_rung_before_a_read_do_not_wake_the_source_after_it() {
        let doorbell = Doorbell::default();
        doorbell.ring(Bell::Read);
        doorbell.ring(Bell::Read);
        let answered = doorbell.rung();
        let waiting =
            tokio::time::timeout(Duration::from_millis(50), doorbell.rung_after(answered));
        assert!(
            waiting.await.is_err(),
            "woke for doorbells already answered"
        );
        doorbell.ring(Bell::Read);
        tokio::time::timeout(Duration::from_secs(5), doorbell.rung_after(answered))
            .await
            .expect("a doorbell after the read wakes the source");
    }

    #[test]
    fn payloads_become_batches_and_anything_else_a_read() {
        assert!(matches!(Bell::of_payload(""), Bell::Read));
        assert!(matches!(Bell::of_payload("{not json"), Bell::Read));
        let text = r#"{"after":4,"events":[[5,"orders","INSERT",{"id":1},null,"2026-01-01T00:00:00.000000Z",1]]}"#;
        match Bell::of_payload(text) {
            Bell::Batch(batch, Path::Payload) => {
                assert_eq!(batch.after, 4);
                assert_eq!(batch.events[0].id, 5);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_flood_of_bells_collapses_into_one_read() {
        let doorbell = Doorbell::default();
        for _ in 0..MAX_BELLS + 10 {
            doorbell.ring(Bell::of_payload(r#"{"after":0,"events":[]}"#));
        }
        let bells = doorbell.take();
        assert!(bells.len() <= 11, "{}", bells.len());
        assert!(bells.iter().any(|b| matches!(b, Bell::Read)));
    }

    #[tokio::test]
    async fn a_doorbell_rung_while_nobody_waits_is_not_lost() {
        let doorbell = Doorbell::default();
        let answered = doorbell.rung();
        doorbell.ring(Bell::Read);
        tokio::time::timeout(Duration::from_secs(5), doorbell.rung_after(answered))
            .await
            .expect("the doorbell rung before the wait began wakes it");
    }
}
