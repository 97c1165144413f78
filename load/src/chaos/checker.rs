//! The checker. It trusts nothing rowcast says: what each client should have received
//! comes from the checker's own copy of `realtime.change_log` and its filter; the final
//! view is compared with the table read directly; a reset is justified only if the
//! checker's own prunes had deleted history above the client's position before it.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use crate::client::{pending, Seen, Spec};
use crate::history::{History, Logged};

/// What the checker found, summed over clients.
#[derive(Debug, Default, Serialize)]
pub struct Verdict {
    /// Clients checked.
    pub clients: u64,
    /// Change deliveries checked.
    pub deliveries: u64,
    /// Changes a client should have had and never got.
    pub lost: u64,
    /// Changes a client got more than once.
    pub duplicated: u64,
    /// Changes that came after a higher id.
    pub out_of_order: u64,
    /// Changes a client got that its filter excludes (or that never happened).
    pub foreign: u64,
    /// Resets where retention had deleted the client's position.
    pub resets_justified: u64,
    /// Resets where it had not.
    pub resets_unjustified: u64,
    /// Clients whose final view differs from the table.
    pub views_wrong: u64,
    /// Clients whose view was not compared (they had a reset and keep no refetch).
    pub views_unverified: u64,
    /// Messages clients could not read.
    pub garbled: u64,
    /// A few examples of violations, for the reader.
    pub examples: Vec<String>,
}

impl Verdict {
    /// No violation of any kind.
    pub fn ok(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.out_of_order == 0
            && self.foreign == 0
            && self.resets_unjustified == 0
            && self.views_wrong == 0
            && self.garbled == 0
    }

    fn example(&mut self, text: String) {
        if self.examples.len() < 20 {
            self.examples.push(text);
        }
    }
}

/// Whether a change must reach a client, and whether it may (the same since live
/// views: a filtered UPDATE whose row leaves the filter is a `"view":"leave"`).
fn wanted(spec: &Spec, c: &Logged) -> (bool, bool) {
    if !spec.filtered || c.op == "TRUNCATE" {
        return (true, true);
    }
    // Live views: an UPDATE whose old row matched is delivered too (as `leave`).
    let must = pending(c.row.as_ref()) || (c.op == "UPDATE" && pending(c.old.as_ref()));
    (must, must)
}

/// The ids each client must receive, in order (used while waiting for the end too).
pub fn last_required(spec: &Spec, history: &History) -> u64 {
    history
        .changes
        .iter()
        .rev()
        .find(|c| wanted(spec, c).0)
        .map_or(0, |c| c.id)
}

/// Checks one client.
pub fn check(
    verdict: &mut Verdict,
    index: usize,
    spec: &Spec,
    seen: &Seen,
    history: &History,
    table: &BTreeMap<i64, String>,
) {
    verdict.clients += 1;
    verdict.deliveries += seen.ids.len() as u64;
    verdict.garbled += seen.garbled;
    // Windows a justified reset excuses: (since, head].
    let mut excused = Vec::new();
    for r in &seen.resets {
        let justified = history
            .prunes
            .iter()
            .any(|p| p.at <= r.at && p.upto > r.since);
        if justified {
            verdict.resets_justified += 1;
            excused.push((r.since, r.head));
        } else {
            verdict.resets_unjustified += 1;
            verdict.example(format!(
                "client {index}: reset at since={} head={} without pruning",
                r.since, r.head
            ));
        }
    }
    let mut got = HashSet::with_capacity(seen.ids.len());
    let mut last = 0u64;
    for &id in &seen.ids {
        if !got.insert(id) {
            verdict.duplicated += 1;
            verdict.example(format!("client {index}: change {id} twice"));
        } else if id <= last {
            verdict.out_of_order += 1;
            verdict.example(format!("client {index}: change {id} after {last}"));
        }
        last = last.max(id);
    }
    let mut may = HashSet::new();
    // A snapshot client owes nothing at or below its first snapshot's head.
    for c in history.changes.iter().filter(|c| c.id > seen.from) {
        let (must, allowed) = wanted(spec, c);
        if allowed {
            may.insert(c.id);
        }
        let excuse = excused.iter().any(|&(s, h)| c.id > s && c.id <= h);
        if must && !excuse && !got.contains(&c.id) {
            verdict.lost += 1;
            verdict.example(format!("client {index}: lost change {}", c.id));
        }
    }
    for id in &got {
        if !may.contains(id) {
            verdict.foreign += 1;
            verdict.example(format!("client {index}: unexpected change {id}"));
        }
    }
    // A snapshot client refetched after its resets; any other keeps a stale view.
    if !seen.resets.is_empty() && !spec.snapshot {
        verdict.views_unverified += 1;
        return;
    }
    let expected: BTreeMap<i64, String> = table
        .iter()
        .filter(|(_, status)| !spec.filtered || *status == "pending")
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    // A filtered view holds exactly the matching rows: rows that left were announced
    // with `"view":"leave"` and removed.
    let wrong = expected
        .iter()
        .filter(|(k, v)| seen.view.get(k) != Some(v))
        .count();
    let extra = seen
        .view
        .keys()
        .filter(|k| !expected.contains_key(k))
        .count();
    if wrong > 0 || extra > 0 {
        verdict.views_wrong += 1;
        verdict.example(format!(
            "client {index}: view has {} rows, table {}: {wrong} missing or different, {extra} extra",
            seen.view.len(),
            expected.len()
        ));
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use serde_json::json;

    use super::*;
    use crate::client::Reset;
    use crate::history::Pruned;

    fn change(id: u64, op: &str, status: &str, old: Option<&str>) -> Logged {
        Logged {
            id,
            op: op.into(),
            row: Some(json!({"id": id as i64, "status": status})),
            old: old.map(|s| json!({"id": id as i64, "status": s})),
        }
    }

    fn history() -> History {
        History {
            changes: vec![
                change(1, "INSERT", "pending", None),
                change(2, "INSERT", "shipped", None),
                change(3, "UPDATE", "shipped", Some("pending")),
                change(4, "INSERT", "pending", None),
            ],
            prunes: Vec::new(),
        }
    }

    fn table() -> BTreeMap<i64, String> {
        [
            (1, "pending"),
            (2, "shipped"),
            (3, "shipped"),
            (4, "pending"),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect()
    }

    fn seen(ids: &[u64], view: &BTreeMap<i64, String>) -> Seen {
        Seen {
            ids: ids.to_vec(),
            view: view.clone(),
            ..Seen::default()
        }
    }

    const ALL: Spec = Spec {
        ws: true,
        filtered: false,
        snapshot: false,
        seed: 0,
    };
    const PENDING: Spec = Spec {
        ws: true,
        filtered: true,
        snapshot: false,
        seed: 0,
    };

    #[test]
    fn a_complete_stream_and_matching_view_pass() {
        let mut v = Verdict::default();
        check(
            &mut v,
            0,
            &ALL,
            &seen(&[1, 2, 3, 4], &table()),
            &history(),
            &table(),
        );
        assert!(v.ok(), "{v:?}");
        assert_eq!(v.deliveries, 4);
    }

    #[test]
    fn losses_duplicates_and_reordering_are_each_counted() {
        let mut v = Verdict::default();
        let s = seen(&[1, 3, 3, 2], &table());
        check(&mut v, 0, &ALL, &s, &history(), &table());
        assert_eq!((v.lost, v.duplicated, v.out_of_order), (1, 1, 1), "{v:?}");
        assert!(!v.ok());
    }

    #[test]
    fn a_filtered_client_must_get_what_matches_and_every_leave_but_nothing_else() {
        let pending: BTreeMap<i64, String> = [(1, "pending".to_string()), (4, "pending".into())]
            .into_iter()
            .collect();
        let mut v = Verdict::default();
        check(
            &mut v,
            0,
            &PENDING,
            &seen(&[1, 3, 4], &pending),
            &history(),
            &table(),
        );
        assert!(v.ok(), "{v:?}");
        let mut v = Verdict::default();
        check(
            &mut v,
            0,
            &PENDING,
            &seen(&[1, 2, 4], &pending),
            &history(),
            &table(),
        );
        assert_eq!((v.foreign, v.lost), (1, 1), "{v:?}");
        let mut with_departed = pending.clone();
        with_departed.insert(3, "shipped".into());
        let mut v = Verdict::default();
        check(
            &mut v,
            0,
            &PENDING,
            &seen(&[1, 3, 4], &with_departed),
            &history(),
            &table(),
        );
        assert_eq!(
            v.views_wrong, 1,
            "a row that left must leave the view: {v:?}"
        );
    }

    #[test]
    fn a_reset_is_justified_only_by_a_prune_above_the_position_before_it() {
        let before = Instant::now();
        let mut h = history();
        h.prunes.push(Pruned {
            at: before,
            upto: 2,
        });
        let mut s = seen(&[1, 4], &table());
        s.resets.push(Reset {
            since: 1,
            head: 3,
            at: before + Duration::from_millis(1),
        });
        let mut v = Verdict::default();
        check(&mut v, 0, &ALL, &s, &h, &table());
        assert_eq!((v.resets_justified, v.lost), (1, 0), "{v:?}");
        s.resets[0].since = 2;
        let mut v = Verdict::default();
        check(&mut v, 0, &ALL, &s, &h, &table());
        assert_eq!(v.resets_unjustified, 1, "{v:?}");
    }

    #[test]
    fn a_snapshot_client_owes_only_changes_after_its_snapshot_and_is_verified_after_a_reset() {
        const SNAP: Spec = Spec {
            ws: false,
            filtered: false,
            snapshot: true,
            seed: 0,
        };
        let mut s = seen(&[3, 4], &table());
        s.from = 2;
        let mut v = Verdict::default();
        check(&mut v, 0, &SNAP, &s, &history(), &table());
        assert!(v.ok(), "{v:?}");
        // A change at or below the snapshot's head is not owed, and may not come.
        let mut s = seen(&[2, 3, 4], &table());
        s.from = 2;
        let mut v = Verdict::default();
        check(&mut v, 0, &SNAP, &s, &history(), &table());
        assert_eq!(v.foreign, 1, "{v:?}");
        // After a justified reset it refetched, so its view is compared, not excused.
        let before = Instant::now();
        let mut h = history();
        h.prunes.push(Pruned {
            at: before,
            upto: 3,
        });
        let mut stale = table();
        stale.remove(&4);
        let mut s = seen(&[1], &stale);
        s.resets.push(Reset {
            since: 1,
            head: 4,
            at: before + Duration::from_millis(1),
        });
        let mut v = Verdict::default();
        check(&mut v, 0, &SNAP, &s, &h, &table());
        assert_eq!(
            (
                v.resets_justified,
                v.lost,
                v.views_wrong,
                v.views_unverified
            ),
            (1, 0, 1, 0),
            "{v:?}"
        );
    }

    #[test]
    fn a_view_that_differs_from_the_table_fails() {
        let mut view = table();
        view.insert(4, "shipped".into());
        let mut v = Verdict::default();
        check(
            &mut v,
            0,
            &ALL,
            &seen(&[1, 2, 3, 4], &view),
            &history(),
            &table(),
        );
        assert_eq!(v.views_wrong, 1);
    }
}
