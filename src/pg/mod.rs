//! Everything that talks to PostgreSQL: connecting (TLS, every step under a deadline),
//! the pool, migrations, the embedded private server, the change-log queries, the
//! catalog of tracked tables and the source task.

pub mod catalog;
pub mod changes;
pub mod connect;
pub mod embedded;
pub mod migrate;
pub mod pool;
pub mod source;

pub use connect::{DbError, DbTarget};
pub use pool::Pool;
