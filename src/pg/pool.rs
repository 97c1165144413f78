//! A small connection pool for REST calls, catch-up reads and retention.
//!
//! Bounded by a semaphore; idle connections are reused when still open. Queries run
//! as unnamed typed statements, so nothing is cached per connection (and a pooler in
//! transaction mode in front of PostgreSQL is no problem).
//!
//! Every loan has a deadline: the wait for a permit, the connect and the caller's
//! queries (run through [`Pool::within`]) all finish by it. A loan dropped at or after
//! its deadline was abandoned mid-call on a server that stopped answering, so its
//! connection is closed rather than handed to the next caller.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_postgres::{Client, IsolationLevel, Transaction};

use super::connect::Waiting;
use super::{DbError, DbTarget};

/// How long one request's database work may take, the wait for a connection
/// included; past it the request is answered 503 (the contract says "within about
/// 5 s") and the connection is discarded.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(4);

/// One connection and the task driving it, kept together so a connection abandoned
/// on a silent server can be closed at once (aborting the driver drops the socket).
#[derive(Debug)]
struct Conn {
    /// The client requests run on.
    client: Client,
    /// The task driving the connection: aborted when the connection is dropped
    /// rather than reused, so a silent server's socket is closed at once.
    driver: tokio::task::AbortHandle,
}

/// A bounded pool of connections to one database.
#[derive(Debug)]
pub struct Pool {
    /// Where new connections go.
    target: DbTarget,
    /// Connections not in use; checked for `is_closed` before reuse.
    idle: Mutex<Vec<Conn>>,
    /// One permit per connection that may exist.
    permits: Arc<Semaphore>,
}

/// A connection on loan; it goes back to the pool when dropped, if still open and
/// dropped before its deadline.
#[derive(Debug)]
pub struct PooledClient {
    /// Where the connection goes back on drop.
    pool: Arc<Pool>,
    /// The connection; `None` only while being returned in `drop`.
    client: Option<Conn>,
    /// When the loan's work must be done; dropped later, the connection may still
    /// be waiting on a silent server, so it is closed instead of reused.
    deadline: Instant,
    /// Cleared while the loan holds a transaction open across calls (a snapshot's
    /// cursor): dropped then, the connection is closed, never handed on mid-transaction.
    reusable: bool,
    /// The pool's permit for this connection, released with it.
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of at most `size` connections to `target`.
    pub fn new(target: DbTarget, size: usize) -> Arc<Pool> {
        Arc::new(Pool {
            target,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
        })
    }

    /// The database this pool connects to.
    pub fn target(&self) -> &DbTarget {
        &self.target
    }

    /// Borrows a connection for one request's work ([`REQUEST_DEADLINE`]).
    pub async fn get(self: &Arc<Self>) -> Result<PooledClient, DbError> {
        self.get_by(Instant::now() + REQUEST_DEADLINE).await
    }

    /// Borrows a connection, opening one if none is idle; the work done with it must
    /// be finished by `deadline` (see [`Pool::within`]).
    pub async fn get_by(self: &Arc<Self>, deadline: Instant) -> Result<PooledClient, DbError> {
        let waited = Instant::now();
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.permits).acquire_owned())
            .await
            .map_err(|_| DbError::PoolTimeout(waited.elapsed()))?
            .map_err(|_| DbError::PoolTimeout(waited.elapsed()))?;
        let reused = {
            let mut idle = self.idle.lock();
            idle.retain(|conn| !conn.client.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(client) => client,
            None => {
                let (client, connection) = self.target.connect_until(deadline).await?;
                let driver = tokio::spawn(async move {
                    if let Err(err) = connection.await {
                        tracing::debug!(%err, "database connection ended");
                    }
                })
                .abort_handle();
                let conn = Conn { client, driver };
                // Timestamps in REST responses and in rows captured from our own writes
                // are rendered in UTC, whatever the server's default.
                let set = self.within(deadline, conn.client.batch_execute("SET TIME ZONE 'UTC'"));
                if let Err(err) = set.await {
                    conn.driver.abort();
                    return Err(err);
                }
                conn
            }
        };
        Ok(PooledClient {
            pool: Arc::clone(self),
            client: Some(client),
            deadline,
            reusable: true,
            _permit: permit,
        })
    }

    /// Runs `work` (calls on a loaned connection) until `deadline`; past it, a
    /// [`DbError::Timeout`] (a 503 for requests). Drop the loan afterwards: one
    /// dropped past its deadline is discarded.
    pub async fn within<T, E: Into<DbError>>(
        &self,
        deadline: Instant,
        work: impl Future<Output = Result<T, E>>,
    ) -> Result<T, DbError> {
        let started = Instant::now();
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result.map_err(Into::into),
            Err(_) => Err(DbError::Timeout {
                target: self.target.to_string(),
                waiting_for: Waiting::Query,
                after: started.elapsed(),
            }),
        }
    }
}

impl PooledClient {
    /// When the work done with this loan must be finished.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Marks whether the connection may be reused when the loan is dropped: `false`
    /// while a transaction stays open between calls, so an abandoned loan closes it.
    pub fn set_reusable(&mut self, reusable: bool) {
        self.reusable = reusable;
    }

    /// Starts a read-only REPEATABLE READ transaction: one snapshot for several
    /// queries (rows and their change-log position; a horizon and a page).
    pub async fn snapshot(&mut self) -> Result<Transaction<'_>, DbError> {
        Ok(self
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .await?)
    }
}

impl Deref for PooledClient {
    type Target = Client;

    fn deref(&self) -> &Client {
        // `client` is only taken in `drop`.
        &self
            .client
            .as_ref()
            .expect("pooled connection present until drop")
            .client
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        &mut self
            .client
            .as_mut()
            .expect("pooled connection present until drop")
            .client
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(conn) = self.client.take() {
            if !self.reusable {
                conn.driver.abort();
            } else if Instant::now() >= self.deadline {
                tracing::debug!("discarding a pooled connection that outlived its deadline");
                conn.driver.abort();
            } else if !conn.client.is_closed() {
                self.pool.idle.lock().push(conn);
            }
        }
    }
}
