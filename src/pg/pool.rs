//! A small connection pool for REST calls, catch-up reads and retention.
//!
//! Bounded by a semaphore; idle connections are reused when still open. Queries run
//! as unnamed typed statements, so nothing is cached per connection (and a pooler in
//! transaction mode in front of PostgreSQL is no problem).

use std::ops::{Deref, DerefMut};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, IsolationLevel, Transaction};

use super::{DbError, DbTarget};

/// How long a caller waits for a free connection before giving up (the REST layer
/// answers 503).
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A bounded pool of connections to one database.
#[derive(Debug)]
pub struct Pool {
    target: DbTarget,
    /// Connections not in use; checked for `is_closed` before reuse.
    idle: Mutex<Vec<Client>>,
    /// One permit per connection that may exist.
    permits: Arc<Semaphore>,
}

/// A connection on loan; it goes back to the pool when dropped, if still open.
#[derive(Debug)]
pub struct PooledClient {
    pool: Arc<Pool>,
    client: Option<Client>,
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

    /// Borrows a connection, opening one if none is idle.
    pub async fn get(self: &Arc<Self>) -> Result<PooledClient, DbError> {
        let permit =
            tokio::time::timeout(ACQUIRE_TIMEOUT, Arc::clone(&self.permits).acquire_owned())
                .await
                .map_err(|_| DbError::PoolTimeout(ACQUIRE_TIMEOUT))?
                .map_err(|_| DbError::PoolTimeout(ACQUIRE_TIMEOUT))?;
        let reused = {
            let mut idle = self.idle.lock();
            idle.retain(|client| !client.is_closed());
            idle.pop()
        };
        let client = match reused {
            Some(client) => client,
            None => {
                let client = self.target.connect_spawned().await?;
                // Timestamps in REST responses and in rows captured from our own writes
                // are rendered in UTC, whatever the server's default.
                client.batch_execute("SET TIME ZONE 'UTC'").await?;
                client
            }
        };
        Ok(PooledClient {
            pool: Arc::clone(self),
            client: Some(client),
            _permit: permit,
        })
    }
}

impl PooledClient {
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
        self.client
            .as_ref()
            .expect("pooled connection present until drop")
    }
}

impl DerefMut for PooledClient {
    fn deref_mut(&mut self) -> &mut Client {
        self.client
            .as_mut()
            .expect("pooled connection present until drop")
    }
}

impl Drop for PooledClient {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            if !client.is_closed() {
                self.pool.idle.lock().push(client);
            }
        }
    }
}
