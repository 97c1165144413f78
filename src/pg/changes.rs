//! The queries on `realtime.change_log`: cursor reads, the head, the retention
//! horizon, the tracked tables; and [`ChangeLog`], the sessions' catch-up reader.
//!
//! Each runs with `query_typed`: an unnamed statement with its parameter types given,
//! parsed, bound and executed in one round trip. A named prepared statement would take
//! two, and behind a pooler in transaction mode (PgBouncer before 1.21, or without
//! `max_prepared_statements`) the second may reach another server connection, which
//! fails with `prepared statement "sN" does not exist`. The source, retention and
//! start-up therefore work through such a pooler. The one exception is the source's
//! read in notify mode ([`read_after_prepared`]): there LISTEN has proved a session
//! of its own, and the read runs on every wake-up of every replica.

use std::sync::Arc;

use serde_json::Value;
use tokio_postgres::types::{Json, Type};
use tokio_postgres::{Client, GenericClient, Row, Statement};

use super::{DbError, Pool};
use crate::event::{ChangeRecord, Event};
use crate::filter::Catalog;
use crate::session::{CatchUp, CatchUpError, Page, Reading};

/// Events after `cursor`, in id order, at most `limit`.
pub const READ_AFTER: &str = r#"
    SELECT id, "table", op, row, old,
           to_char(committed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
           (extract(epoch FROM committed_at) * 1000000)::int8
    FROM realtime.change_log
    WHERE id > $1
    ORDER BY id
    LIMIT $2"#;

/// The position a new reader starts from: the newest id that ever existed, even if
/// retention has since deleted it.
pub const HEAD: &str = "SELECT greatest(
        (SELECT coalesce(max(id), 0) FROM realtime.change_log),
        (SELECT pruned_upto FROM realtime.retention))";

/// Converts one row of [`READ_AFTER`].
pub fn record_of(row: &Row) -> Result<ChangeRecord, tokio_postgres::Error> {
    Ok(ChangeRecord {
        id: row.try_get(0)?,
        table: row.try_get(1)?,
        op: row.try_get(2)?,
        row: row.try_get::<_, Option<Json<Value>>>(3)?.map(|j| j.0),
        old: row.try_get::<_, Option<Json<Value>>>(4)?.map(|j| j.0),
        committed_at: row.try_get(5)?,
        committed_at_micros: row.try_get(6)?,
    })
}

/// Reads up to `limit` events after `cursor`. Rows that cannot become events are
/// logged and skipped, so one corrupt row never stalls every stream.
pub async fn read_after(
    client: &impl GenericClient,
    cursor: u64,
    limit: i64,
) -> Result<Vec<Arc<Event>>, DbError> {
    let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
    let rows = client
        .query_typed(READ_AFTER, &[(&cursor, Type::INT8), (&limit, Type::INT8)])
        .await?;
    Ok(events_of(&rows))
}

/// [`read_after`] through `statement`, [`READ_AFTER`] prepared on `client`: on a
/// connection that keeps its session (no pooler in transaction mode), this skips the
/// parse, analysis and planning that are most of PostgreSQL's cost of a small read —
/// the cost every replica pays on every wake-up. Should a migration change
/// `change_log`'s columns under a running replica, PostgreSQL fails the statement
/// ("cached plan must not change result type") and the source reconnects, which
/// prepares it again.
pub async fn read_after_prepared(
    client: &Client,
    statement: &Statement,
    cursor: u64,
    limit: i64,
) -> Result<Vec<Arc<Event>>, DbError> {
    let cursor = i64::try_from(cursor).unwrap_or(i64::MAX);
    let rows = client.query(statement, &[&cursor, &limit]).await?;
    Ok(events_of(&rows))
}

/// Prepares [`READ_AFTER`] on `client`, for [`read_after_prepared`].
pub async fn prepare_read_after(client: &Client) -> Result<Statement, DbError> {
    Ok(client
        .prepare_typed(READ_AFTER, &[Type::INT8, Type::INT8])
        .await?)
}

/// The events of [`READ_AFTER`]'s rows.
fn events_of(rows: &[Row]) -> Vec<Arc<Event>> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        let event = record_of(row)
            .map_err(|e| e.to_string())
            .and_then(|record| Event::from_record(record).map_err(|e| e.to_string()));
        match event {
            Ok(event) => events.push(Arc::new(event)),
            Err(err) => tracing::error!(%err, "skipping a change_log row"),
        }
    }
    events
}

/// The newest id that ever existed (see [`HEAD`]).
pub async fn head(client: &impl GenericClient) -> Result<u64, DbError> {
    let head: i64 = client.query_typed_one(HEAD, &[]).await?.try_get(0)?;
    Ok(head.max(0) as u64)
}

/// The highest id retention has deleted (0 if none).
pub async fn pruned_upto(client: &impl GenericClient) -> Result<u64, DbError> {
    let pruned: i64 = client
        .query_typed_one("SELECT pruned_upto FROM realtime.retention", &[])
        .await?
        .try_get(0)?;
    Ok(pruned.max(0) as u64)
}

/// The tracked tables and their columns.
pub async fn catalog(client: &impl GenericClient) -> Result<Catalog, DbError> {
    let rows = client
        .query_typed(
            "SELECT CASE WHEN n.nspname = 'public' THEN c.relname::text
                         ELSE n.nspname || '.' || c.relname END,
                    array_agg(a.attname::text ORDER BY a.attnum)
             FROM realtime.tracked t
             JOIN pg_class c ON c.oid = t.relid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
             GROUP BY 1",
            &[],
        )
        .await?;
    let mut tables = Vec::with_capacity(rows.len());
    for row in rows {
        tables.push((row.try_get(0)?, row.try_get(1)?));
    }
    Ok(Catalog::new(tables))
}

/// Deletes one retention batch; returns how many rows went.
pub async fn prune(
    client: &impl GenericClient,
    max_age: Option<std::time::Duration>,
    max_rows: Option<u64>,
    batch: i32,
) -> Result<u64, DbError> {
    let age_seconds = max_age.map(|age| age.as_secs_f64());
    let max_rows = max_rows.map(|rows| i64::try_from(rows).unwrap_or(i64::MAX));
    let deleted: i64 = client
        .query_typed_one(
            "SELECT realtime.prune(make_interval(secs => $1), $2, $3)",
            &[
                (&age_seconds, Type::FLOAT8),
                (&max_rows, Type::INT8),
                (&batch, Type::INT4),
            ],
        )
        .await?
        .try_get(0)?;
    Ok(deleted.max(0) as u64)
}

/// `change_log` as a session's catch-up reader: pages read through the pool, each
/// with its horizon from one snapshot.
#[derive(Debug)]
pub struct ChangeLog {
    /// Where catch-up reads borrow their connection, shared with REST calls.
    pool: Arc<Pool>,
}

impl ChangeLog {
    /// Reads through `pool`.
    pub fn new(pool: Arc<Pool>) -> ChangeLog {
        ChangeLog { pool }
    }

    async fn page(&self, cursor: u64, limit: usize) -> Result<Page, DbError> {
        let mut client = self.pool.get().await?;
        let deadline = client.deadline();
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let page = self
            .pool
            .within(deadline, async {
                let tx = client.snapshot().await?;
                if cursor < pruned_upto(&tx).await? {
                    return Ok(None);
                }
                let page = read_after(&tx, cursor, limit).await?;
                tx.commit().await?;
                Ok::<_, DbError>(Some(page))
            })
            .await?;
        let Some(page) = page else {
            return Ok(Page::Gone);
        };
        if page.is_empty() {
            // The ring is ahead of the cursor yet the table holds nothing after it: the
            // rows were deleted by other means than retention.
            return Ok(Page::Gone);
        }
        Ok(Page::Events(page))
    }

    /// The newest id the database has committed or retention has deleted (see
    /// [`HEAD`]). Not the sequence's `last_value`, which also counts ids drawn by transactions
    /// that rolled back, and which no client can hold.
    async fn issued(&self) -> Result<u64, DbError> {
        let client = self.pool.get().await?;
        self.pool.within(client.deadline(), head(&*client)).await
    }
}

impl CatchUp for ChangeLog {
    fn page_after(&self, cursor: u64, limit: usize) -> Reading<'_, Page> {
        Box::pin(async move {
            self.page(cursor, limit)
                .await
                .map_err(|err| CatchUpError(Box::new(err)))
        })
    }

    fn issued_head(&self) -> Reading<'_, u64> {
        Box::pin(async move {
            self.issued()
                .await
                .map_err(|err| CatchUpError(Box::new(err)))
        })
    }
}
