//! Snapshots for `snapshot=true`: the rows of the selected tables as they are now,
//! read in one REPEATABLE READ transaction together with that snapshot's change-log
//! position, and paged through a server-side cursor so that the gateway holds one
//! page at a time whatever the table's size.
//!
//! The transaction stays open while the pages are sent, so its connection is marked
//! not reusable: a client that leaves mid-snapshot closes it (and its transaction)
//! rather than handing it to the next caller. Every call runs under the request
//! deadline. [`Snapshotter`] is the sessions' [`Snapshots`].

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::time::Instant;
use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::pool::{PooledClient, REQUEST_DEADLINE};
use super::{changes, DbError, Pool};
use crate::session::{CatchUpError, Reading, SnapshotPage, SnapshotRead, Snapshots};

/// Rows per `FETCH`: one page of a `snapshot` message at most.
pub const PAGE_ROWS: usize = 500;

/// The cursor every snapshot uses (one per connection, one table at a time).
const CURSOR: &str = "rowcast_snapshot";

/// How to read one table: its quoted name and its primary key (else `ctid`, stable
/// within the snapshot) as an `ORDER BY` list, both built by PostgreSQL's `format`.
const TABLE_PLAN: &str = "
    SELECT format('%I.%I', n.nspname, c.relname),
           coalesce((SELECT string_agg(format('t.%I', a.attname), ', '
                                       ORDER BY array_position(i.indkey::int2[], a.attnum))
                     FROM pg_index i
                     JOIN pg_attribute a
                       ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
                     WHERE i.indrelid = c.oid AND i.indisprimary), 't.ctid')
    FROM realtime.tracked tr
    JOIN pg_class c ON c.oid = tr.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE CASE WHEN n.nspname = 'public' THEN c.relname::text
               ELSE n.nspname || '.' || c.relname END = $1";

/// The tracked tables, as events name them, in name order.
const TRACKED: &str = "
    SELECT CASE WHEN n.nspname = 'public' THEN c.relname::text
                ELSE n.nspname || '.' || c.relname END AS name
    FROM realtime.tracked tr
    JOIN pg_class c ON c.oid = tr.relid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    ORDER BY 1";

/// Starts snapshots on connections of the pool. At most half the pool holds a
/// snapshot at once: a snapshot keeps its connection while a client reads, and REST
/// calls and catch-up reads need the rest.
#[derive(Debug)]
pub struct Snapshotter {
    /// Where snapshots borrow their connection.
    pool: Arc<Pool>,
    /// One permit per snapshot that may be open.
    permits: Arc<Semaphore>,
}

impl Snapshotter {
    /// Snapshots through `pool`, of which they may hold `pool_size / 2` (at least 1).
    pub fn new(pool: Arc<Pool>, pool_size: usize) -> Snapshotter {
        Snapshotter {
            pool,
            permits: Arc::new(Semaphore::new((pool_size / 2).max(1))),
        }
    }

    async fn begin(&self, tables: Option<Vec<Arc<str>>>) -> Result<PgSnapshot, DbError> {
        let waited = Instant::now();
        let permit =
            tokio::time::timeout(REQUEST_DEADLINE, Arc::clone(&self.permits).acquire_owned())
                .await
                .map_err(|_| DbError::PoolTimeout(waited.elapsed()))?
                .map_err(|_| DbError::PoolTimeout(waited.elapsed()))?;
        let mut client = self.pool.get().await?;
        // Set before BEGIN: a loan dropped from here on may hold the transaction.
        client.set_reusable(false);
        let (position, tables) = self
            .pool
            .within(client.deadline(), async {
                client
                    .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .await?;
                let position = changes::head(&*client).await?;
                let tables = match tables {
                    Some(tables) => tables,
                    None => {
                        let rows = client.query_typed(TRACKED, &[]).await?;
                        let mut tables = Vec::with_capacity(rows.len());
                        for row in rows {
                            tables.push(Arc::from(row.try_get::<_, String>(0)?));
                        }
                        tables
                    }
                };
                Ok::<_, DbError>((position, tables))
            })
            .await?;
        Ok(PgSnapshot {
            pool: Arc::clone(&self.pool),
            client,
            position,
            tables: tables.into(),
            open: false,
            _permit: permit,
        })
    }
}

impl Snapshots for Snapshotter {
    fn begin(&self, tables: Option<Vec<Arc<str>>>) -> Reading<'_, Box<dyn SnapshotRead>> {
        Box::pin(async move {
            match Snapshotter::begin(self, tables).await {
                Ok(read) => Ok(Box::new(read) as Box<dyn SnapshotRead>),
                Err(err) => Err(CatchUpError(Box::new(err))),
            }
        })
    }
}

/// A snapshot being read: an open transaction and where it is.
#[derive(Debug)]
struct PgSnapshot {
    /// The pool the loan came from, for its deadlines.
    pool: Arc<Pool>,
    /// The connection holding the transaction.
    client: PooledClient,
    /// The change-log position the snapshot's rows are consistent with.
    position: u64,
    /// Tables still to read; the first is being read when `open`.
    tables: VecDeque<Arc<str>>,
    /// Whether the cursor is declared on the first of `tables`.
    open: bool,
    /// This snapshot's share of the pool, released with it.
    _permit: OwnedSemaphorePermit,
}

impl SnapshotRead for PgSnapshot {
    fn position(&self) -> u64 {
        self.position
    }

    fn next_page(&mut self) -> Reading<'_, Option<SnapshotPage>> {
        Box::pin(async move {
            let deadline = Instant::now() + REQUEST_DEADLINE;
            let pool = Arc::clone(&self.pool);
            pool.within(deadline, self.read_page())
                .await
                .map_err(|err| CatchUpError(Box::new(err)))
        })
    }
}

impl PgSnapshot {
    async fn read_page(&mut self) -> Result<Option<SnapshotPage>, DbError> {
        loop {
            let Some(table) = self.tables.front().cloned() else {
                self.client.batch_execute("COMMIT").await?;
                self.client.set_reusable(true);
                return Ok(None);
            };
            if !self.open {
                let plan = self
                    .client
                    .query_typed(TABLE_PLAN, &[(&&*table, Type::TEXT)])
                    .await?;
                let Some(plan) = plan.first() else {
                    // Untracked since the stream was accepted: nothing to send.
                    self.tables.pop_front();
                    continue;
                };
                let (name, order): (String, String) = (plan.try_get(0)?, plan.try_get(1)?);
                self.client
                    .batch_execute(&format!(
                        "DECLARE {CURSOR} NO SCROLL CURSOR FOR \
                         SELECT to_jsonb(t) FROM {name} t ORDER BY {order}"
                    ))
                    .await?;
                self.open = true;
            }
            let messages = self
                .client
                .simple_query(&format!("FETCH {PAGE_ROWS} FROM {CURSOR}"))
                .await?;
            let rows: Vec<String> = messages
                .iter()
                .filter_map(|message| match message {
                    // jsonb's text, never NULL: `to_jsonb` of a row.
                    SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("{}").to_owned()),
                    _ => None,
                })
                .collect();
            if rows.len() < PAGE_ROWS {
                self.client
                    .batch_execute(&format!("CLOSE {CURSOR}"))
                    .await?;
                self.open = false;
                self.tables.pop_front();
            }
            if !rows.is_empty() {
                return Ok(Some(SnapshotPage { table, rows }));
            }
        }
    }
}
