//! The snapshot reader: where a `snapshot=true` session reads the rows that match now.
//!
//! A trait, like [`super::CatchUp`], so that the session knows nothing of PostgreSQL:
//! [`crate::pg::snapshot`] implements it with a cursor in one REPEATABLE READ
//! transaction, and tests pass rows held in memory.

use std::sync::Arc;

use super::Reading;

/// One page of a table's rows, in key order.
#[derive(Debug, Clone)]
pub struct SnapshotPage {
    /// The table, as events name it.
    pub table: Arc<str>,
    /// The rows, each as JSON text (`to_jsonb`, the same as a change's `row`): kept
    /// as text, so a page is only parsed when a filter must judge it, and sent digit
    /// for digit.
    pub rows: Vec<String>,
}

/// Starts snapshots.
pub trait Snapshots: Send + Sync + std::fmt::Debug {
    /// Begins a snapshot of `tables` (`None`: every tracked table) and fixes its
    /// position.
    fn begin(&self, tables: Option<Vec<Arc<str>>>) -> Reading<'_, Box<dyn SnapshotRead>>;
}

/// A snapshot being read, page by page, so memory stays bounded for any table size.
pub trait SnapshotRead: Send + Sync + std::fmt::Debug {
    /// The change-log position the rows are consistent with: every change after it
    /// follows the snapshot.
    fn position(&self) -> u64;

    /// The next page (never empty), or `None` when every table was read.
    fn next_page(&mut self) -> Reading<'_, Option<SnapshotPage>>;
}
