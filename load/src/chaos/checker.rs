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
    /// Rows filtered views still hold after they left the filter unannounced (no
    /// `"view":"leave"` in this rowcast): not a violation, shown for the reader.
    pub filtered_departed_rows: u64,
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

/// Whether a change must reach a client, and whether it may (a filtered UPDATE
/// whose row leaves the filter is a `"view":"leave"` where live views exist).
fn wanted(spec: &Spec, c: &Logged) -> (bool, bool) {
    if !spec.filtered || c.op == "TRUNCATE" {
        return (true, true);
    }
    let must = pending(c.row.as_ref());
    let may = must || (c.op == "UPDATE" && pending(c.old.as_ref()));
    (must, may)
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
    for c in &history.changes {
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
    if !seen.resets.is_empty() {
        verdict.views_unverified += 1;
        return;
    }
    let expected: BTreeMap<i64, String> = table
        .iter()
        .filter(|(_, status)| !spec.filtered || *status == "pending")
        .map(|(k, v)| (*k, v.clone()))
        .collect();
    // A filtered stream says nothing when a row leaves the filter (the filter tests
    // the new row), unless live views send `"view":"leave"`: a filtered view may keep
    // rows that left, but must hold every row that matches, as the table has it.
    let wrong = expected
        .iter()
        .filter(|(k, v)| seen.view.get(k) != Some(v))
        .count();
    let extra = seen
        .view
        .keys()
        .filter(|k| !expected.contains_key(k))
        .count();
    if spec.filtered {
        verdict.filtered_departed_rows += extra as u64;
    }
    if wrong > 0 || (!spec.filtered && extra > 0) {
        verdict.views_wrong += 1;
        verdict.example(format!(
            "client {index}: view has {} rows, table {}: {wrong} missing or different, {extra} extra",
            seen.view.len(),
            expected.len()
        ));
    }
}
