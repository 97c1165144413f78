//! Capture modes: triggers (the default, in `sql/`) or the WAL (`--capture wal`).
//!
//! In WAL mode one replica at a time (the holder of a session advisory lock) streams
//! logical slot `rowcast` with `pgoutput` and writes every committed change into
//! `realtime.change_log`, exactly as the trigger would have. The layout:
//! - [`decode`]: pgoutput messages (parsed by `pg_walstream`) into changes;
//! - [`apply`]: batches of changes into `change_log`, rendered by PostgreSQL itself;
//! - [`wal`]: the capturer (lock, checks, stream, batches, LSN confirmation);
//! - [`switch`]: moving a live database between the modes, and start-up checks;
//! - [`status`]: what `/readyz` and `/metrics` show of it.

pub mod apply;
pub mod decode;
pub mod status;
pub mod switch;
pub mod wal;

pub use status::CaptureStatus;

/// How changes reach `change_log`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CaptureMode {
    /// A deferred constraint trigger on every tracked table (works everywhere).
    #[default]
    Trigger,
    /// Logical decoding of the WAL (needs `wal_level=logical`).
    Wal,
}

impl CaptureMode {
    /// Parses `trigger` or `wal`.
    pub fn parse(text: &str) -> Option<CaptureMode> {
        match text {
            "trigger" => Some(CaptureMode::Trigger),
            "wal" => Some(CaptureMode::Wal),
            _ => None,
        }
    }

    /// The name used on the command line and in `realtime.capture_state`.
    pub fn as_str(self) -> &'static str {
        match self {
            CaptureMode::Trigger => "trigger",
            CaptureMode::Wal => "wal",
        }
    }
}

/// The publication WAL mode streams (one per database, managed by `realtime.track`).
pub const PUBLICATION: &str = "rowcast";
/// The default logical slot name; slots are per cluster, so two databases captured on
/// one cluster need different names (`--capture-slot`).
pub const DEFAULT_SLOT: &str = "rowcast";

/// Why WAL capture cannot run: each is logged once, shown by `/readyz` and counted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The server does not decode its WAL.
    #[error("WAL capture needs wal_level=logical, the server has wal_level={0} (set it in postgresql.conf, or the cloud provider's logical replication flag, and restart)")]
    WalLevel(String),
    /// The capture role may not replicate.
    #[error("WAL capture needs a role with the REPLICATION attribute ({0})")]
    NoReplicationPrivilege(String),
    /// The slot is gone: changes since the capturer last confirmed may be lost.
    #[error("replication slot {0:?} does not exist; changes since capture last confirmed may be lost: run `rowcast capture wal` to recapture (clients behind that point get `reset`)")]
    SlotMissing(String),
    /// The server invalidated the slot (`max_slot_wal_keep_size`): WAL was removed.
    #[error("replication slot {0:?} was invalidated (its WAL was removed, see max_slot_wal_keep_size); run `rowcast capture wal` to recapture (clients behind that point get `reset`)")]
    SlotInvalidated(String),
    /// A tracked table is not in the publication, so its changes would be missed.
    #[error("tracked table {0} is not in publication rowcast, so its changes are not captured; run SELECT realtime.track('{0}') (clients behind that point then get `reset`)")]
    NotPublished(String),
}

/// Why a capture step failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// A database call failed.
    #[error(transparent)]
    Db(#[from] super::DbError),
    /// The replication connection failed.
    #[error("replication stream: {0}")]
    Stream(#[from] pgwire_replication::PgWireError),
    /// A pgoutput message could not be decoded.
    #[error("pgoutput: {0}")]
    Decode(String),
    /// Capture cannot run until an operator acts.
    #[error(transparent)]
    Refused(#[from] Refusal),
    /// The lock-holding connection closed: the lock went with it, another replica may
    /// capture now.
    #[error("the capturer's database connection closed")]
    ConnectionLost,
    /// A step took longer than its deadline.
    #[error("{0} timed out")]
    Timeout(&'static str),
}

impl From<tokio_postgres::Error> for CaptureError {
    fn from(err: tokio_postgres::Error) -> CaptureError {
        CaptureError::Db(err.into())
    }
}
