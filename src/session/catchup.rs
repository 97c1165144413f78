//! The catch-up reader: where a session reads history the ring no longer holds.
//!
//! A trait, so that the session knows nothing of PostgreSQL: `change_log` implements
//! it in [`crate::pg::changes`], and tests and benches pass an in-memory one.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::event::Event;

/// What a catch-up read found after a position.
#[derive(Debug)]
pub enum Page {
    /// The next events after the position, in id order (never empty).
    Events(Vec<Arc<Event>>),
    /// Events after the position were deleted: the client must `reset`.
    Gone,
}

/// Why a catch-up read failed (the database is down, say); the session retries.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct CatchUpError(#[from] pub Box<dyn std::error::Error + Send + Sync>);

/// The future of one catch-up read. Boxed: the read (pool, transaction, queries) is
/// large, and unboxed it would size every session's future, idle or not.
pub type Reading<'a, T> = Pin<Box<dyn Future<Output = Result<T, CatchUpError>> + Send + 'a>>;

/// Reads history older than the ring.
pub trait CatchUp: Send + Sync + std::fmt::Debug {
    /// Up to `limit` events after `cursor`, from one snapshot; [`Page::Gone`] when
    /// events after `cursor` no longer exist.
    fn page_after(&self, cursor: u64, limit: usize) -> Reading<'_, Page>;

    /// The newest id the database has committed (or retention has deleted): every
    /// position a client got from any replica of this database is at or below it.
    fn issued_head(&self) -> Reading<'_, u64>;
}
