//! Everything that talks to PostgreSQL: connecting (TLS, every step under a deadline),
//! start-up, the pool, migrations, the embedded private server, the change-log queries
//! (and the sessions' catch-up reader), the catalog of tracked tables, the snapshots of
//! live views, the source task and retention.

pub mod batch;
pub mod capture;
pub mod catalog;
pub mod changes;
pub mod connect;
pub mod doorbell;
pub mod embedded;
pub mod migrate;
pub mod pool;
pub mod retention;
pub mod snapshot;
pub mod source;
pub mod startup;

pub use connect::{DbError, DbTarget};
pub use pool::Pool;
