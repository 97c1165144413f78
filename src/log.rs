//! The event log: an in-memory ring of the newest events, in id order.
//!
//! Modelled on tokio's broadcast channel: power-of-two slots indexed by
//! `position & mask`, monotonic positions, and readers that are only cursors. Ids are
//! not dense (rolled-back transactions leave gaps), so a reader's cursor is an event
//! id and the slot to resume from is found by binary search over the ring.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::event::Event;

/// What the ring can say about the events after a reader's cursor.
#[derive(Debug, PartialEq, Eq)]
pub enum Read {
    /// Every event after the cursor that the ring holds was scanned; the cursor may
    /// move to `position` (the last id scanned, or the cursor itself if none).
    Scanned {
        /// The new cursor.
        position: u64,
        /// Whether scanning stopped early because `max` matching events were taken.
        more: bool,
    },
    /// The cursor is older than the ring: events after it were evicted, and must be
    /// read from `change_log` up to `floor` (inclusive) before the ring serves again.
    Behind {
        /// Every event with an id above this is in the ring.
        floor: u64,
    },
}

/// The ring buffer of recent events.
#[derive(Debug)]
pub struct EventLog {
    /// The ring, written by the source alone and read by every session: reads take
    /// the lock shared and only for the copy of a batch.
    ring: RwLock<Ring>,
    /// The ring's head, readable without the lock: the fan-out asks for it once per
    /// subscriber it serves, and a shared lock's counter would bounce between cores.
    head: AtomicU64,
}

#[derive(Debug)]
struct Ring {
    /// `capacity` slots (a power of two); slot `pos & mask` holds the event at `pos`.
    slots: Box<[Option<Arc<Event>>]>,
    /// `slots.len() - 1`: a position's slot by masking, not dividing.
    mask: u64,
    /// The logical capacity asked for (at most `slots.len()`).
    capacity: u64,
    /// Position of the oldest event held.
    start: u64,
    /// Position the next event will take.
    end: u64,
    /// The ring holds every event with an id above `floor`: it is the id of the last
    /// evicted event, or where the source started reading.
    floor: u64,
    /// The id of the newest event read by the source (the gateway's head).
    head: u64,
}

impl Ring {
    fn event_at(&self, pos: u64) -> &Arc<Event> {
        // Positions in start..end always hold an event.
        self.slots[(pos & self.mask) as usize]
            .as_ref()
            .expect("positions between start and end hold events")
    }

    /// The first position whose event id is above `id`.
    fn position_after(&self, id: u64) -> u64 {
        let (mut low, mut high) = (self.start, self.end);
        while low < high {
            let mid = low + (high - low) / 2;
            if self.event_at(mid).id <= id {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }
}

impl EventLog {
    /// A log that keeps the last `capacity` events (at least 1), starting at `head`: the
    /// id up to which the source has already read.
    pub fn new(capacity: usize, head: u64) -> EventLog {
        let capacity = capacity.max(1) as u64;
        let slots = capacity.next_power_of_two();
        EventLog {
            ring: RwLock::new(Ring {
                slots: (0..slots).map(|_| None).collect(),
                mask: slots - 1,
                capacity,
                start: 0,
                end: 0,
                floor: head,
                head,
            }),
            head: AtomicU64::new(head),
        }
    }

    /// Appends events in id order, evicting the oldest beyond capacity. Events whose
    /// id is not above the head are ignored (a source that re-reads after reconnecting
    /// never duplicates).
    pub fn append(&self, events: impl IntoIterator<Item = Arc<Event>>) {
        let mut ring = self.ring.write();
        for event in events {
            if event.id <= ring.head {
                continue;
            }
            if ring.end - ring.start == ring.capacity {
                let oldest = (ring.start & ring.mask) as usize;
                if let Some(evicted) = ring.slots[oldest].take() {
                    ring.floor = evicted.id;
                }
                ring.start += 1;
            }
            ring.head = event.id;
            let slot = (ring.end & ring.mask) as usize;
            ring.slots[slot] = Some(event);
            ring.end += 1;
        }
        self.head.store(ring.head, Ordering::Release);
    }

    /// Retention deleted history up to `pruned`, above the head, before the source
    /// read it: the ring drops what it holds and serves only events after `pruned`, so
    /// every reader behind that goes to `change_log`, which answers that the history is
    /// gone (a `reset`), instead of skipping the deleted changes unnoticed.
    pub fn skip_to(&self, pruned: u64) {
        let mut ring = self.ring.write();
        if pruned <= ring.head {
            return;
        }
        while ring.start < ring.end {
            let slot = (ring.start & ring.mask) as usize;
            ring.slots[slot] = None;
            ring.start += 1;
        }
        ring.floor = pruned;
        ring.head = pruned;
        self.head.store(pruned, Ordering::Release);
    }

    /// The id of the newest event the source has read.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// How many events the ring holds.
    pub fn len(&self) -> usize {
        let ring = self.ring.read();
        (ring.end - ring.start) as usize
    }

    /// Whether the ring holds no events.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the ring holds every event after `id`.
    pub fn covers(&self, id: u64) -> bool {
        id >= self.ring.read().floor
    }

    /// Copies out the events after `cursor` that `pick` keeps (as the form it returns,
    /// a live view's `enter`/`leave` say), at most `max` of them, in id order; O(log n)
    /// to find the start. The read lock is held only while copying `Arc`s, never
    /// across an await.
    pub fn read_after(
        &self,
        cursor: u64,
        max: usize,
        mut pick: impl FnMut(&Arc<Event>) -> Option<Arc<Event>>,
        out: &mut impl Extend<Arc<Event>>,
    ) -> Read {
        let ring = self.ring.read();
        if cursor < ring.floor {
            return Read::Behind { floor: ring.floor };
        }
        let mut position = cursor;
        let mut taken = 0;
        let mut pos = ring.position_after(cursor);
        while pos < ring.end {
            if taken == max {
                return Read::Scanned {
                    position,
                    more: true,
                };
            }
            let event = ring.event_at(pos);
            if let Some(event) = pick(event) {
                out.extend(Some(event));
                taken += 1;
            }
            position = event.id;
            pos += 1;
        }
        Read::Scanned {
            position: cursor.max(ring.head),
            more: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(id: i64) -> Arc<Event> {
        crate::testing::event(id, "orders", "INSERT", Some(json!({"id": id})), None)
    }

    fn ids(events: &[Arc<Event>]) -> Vec<u64> {
        events.iter().map(|e| e.id).collect()
    }

    #[test]
    fn reader_gets_exactly_the_events_after_its_cursor_across_gaps() {
        let log = EventLog::new(8, 0);
        log.append([1, 2, 5, 9, 10].map(event));
        let mut out = Vec::new();
        let read = log.read_after(2, usize::MAX, |e| Some(Arc::clone(e)), &mut out);
        assert_eq!(ids(&out), [5, 9, 10]);
        assert_eq!(
            read,
            Read::Scanned {
                position: 10,
                more: false
            }
        );
        out.clear();
        // A cursor inside a gap resumes at the next id.
        log.read_after(6, usize::MAX, |e| Some(Arc::clone(e)), &mut out);
        assert_eq!(ids(&out), [9, 10]);
    }

    #[test]
    fn skipping_to_a_pruned_id_sends_every_reader_behind_it_to_the_database() {
        let log = EventLog::new(8, 0);
        log.append((1..=3).map(event));
        log.skip_to(2); // not above the head: nothing to do
        assert_eq!((log.head(), log.len()), (3, 3));
        log.skip_to(6);
        assert_eq!((log.head(), log.len()), (6, 0));
        let mut out = Vec::new();
        let all = |e: &Arc<Event>| Some(Arc::clone(e));
        // A reader at the old head is behind: changes 4..=6 are gone, not skipped.
        assert_eq!(
            log.read_after(3, 10, all, &mut out),
            Read::Behind { floor: 6 }
        );
        log.append([5, 7].map(event));
        assert_eq!(
            log.read_after(6, 10, all, &mut out),
            Read::Scanned {
                position: 7,
                more: false
            }
        );
        assert_eq!(ids(&out), [7]);
    }

    #[test]
    fn eviction_moves_the_floor_and_old_cursors_are_behind() {
        let log = EventLog::new(3, 0);
        log.append((1..=5).map(event));
        assert_eq!(log.len(), 3);
        let mut out = Vec::new();
        assert_eq!(
            log.read_after(1, 10, |e| Some(Arc::clone(e)), &mut out),
            Read::Behind { floor: 2 }
        );
        assert!(out.is_empty());
        assert_eq!(
            log.read_after(2, 10, |e| Some(Arc::clone(e)), &mut out),
            Read::Scanned {
                position: 5,
                more: false
            }
        );
        assert_eq!(ids(&out), [3, 4, 5]);
    }

    #[test]
    fn filtered_reads_still_advance_the_position_to_the_head() {
        let log = EventLog::new(16, 0);
        log.append((1..=6).map(event));
        let mut out = Vec::new();
        let read = log.read_after(0, 10, |e| (e.id % 2 == 0).then(|| Arc::clone(e)), &mut out);
        assert_eq!(ids(&out), [2, 4, 6]);
        assert_eq!(
            read,
            Read::Scanned {
                position: 6,
                more: false
            }
        );
        out.clear();
        let read = log.read_after(0, 10, |_| None, &mut out);
        assert_eq!(
            read,
            Read::Scanned {
                position: 6,
                more: false
            }
        );
    }

    #[test]
    fn max_limits_a_batch_and_reports_more() {
        let log = EventLog::new(16, 0);
        log.append((1..=6).map(event));
        let mut out = Vec::new();
        let read = log.read_after(0, 2, |e| Some(Arc::clone(e)), &mut out);
        assert_eq!(
            read,
            Read::Scanned {
                position: 2,
                more: true
            }
        );
        assert_eq!(ids(&out), [1, 2]);
    }

    #[test]
    fn cursor_ahead_of_head_waits_without_moving_back() {
        let log = EventLog::new(4, 0);
        log.append((1..=3).map(event));
        let mut out = Vec::new();
        let read = log.read_after(100, 10, |e| Some(Arc::clone(e)), &mut out);
        assert_eq!(
            read,
            Read::Scanned {
                position: 100,
                more: false
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn duplicate_or_old_events_are_ignored_on_append() {
        let log = EventLog::new(4, 5);
        log.append([3, 6, 6, 7].map(event));
        let mut out = Vec::new();
        log.read_after(5, 10, |e| Some(Arc::clone(e)), &mut out);
        assert_eq!(ids(&out), [6, 7]);
        assert!(!log.covers(4));
        assert!(log.covers(5));
    }
}
