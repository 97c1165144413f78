//! Moving a live database into WAL mode, with writers running, losing and doubling
//! nothing.
//!
//! # trigger → WAL
//! 1. Publication `rowcast` is created (empty) first: pgoutput looks publications up
//!    as of each decoded change, so it must predate the slot.
//! 2. Slot `rowcast` is created (`pg_create_logical_replication_slot`): every
//!    transaction committing after its consistent point will be decoded. Triggers still
//!    capture everything meanwhile; the tables are not yet published.
//! 3. One transaction, `realtime.switch_to_wal()`: for each tracked table it drops the
//!    capture triggers, sets `REPLICA IDENTITY FULL` and publishes it. Those statements
//!    take the table's ACCESS EXCLUSIVE lock, so they wait for every writer in flight
//!    (whose triggers fire at their commit, before the lock is granted) and hold back
//!    every new writer until the switch commits. After the last lock it reads the WAL
//!    insert position P and records it as `applied_lsn`, with mode `wal`.
//!    - a transaction captured by a trigger committed before the switch got the lock on
//!      the table it wrote: its commit record is below P, so the capturer skips it;
//!    - a transaction on a tracked table without a trigger took its lock after the
//!      switch committed: its commit record is above P (and above the slot's consistent
//!      point), so the capturer applies it, with the table published and the whole old
//!      row in the WAL.
//!
//!    No transaction is on both sides, so none is captured twice or not at all. A
//!    writer locking tables in another order may deadlock with the switch; PostgreSQL
//!    aborts one of the two, and the switch is retried (a lock timeout keeps writers
//!    from queueing behind it for long).
//!
//! # WAL → trigger
//! Not implemented yet: `rowcast capture trigger` refuses rather than risk loss.

use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{PgLsn, Type};
use tokio_postgres::Client;

use super::{CaptureError, CaptureMode, Refusal};

/// Attempts at the switch transaction (lock timeouts and deadlocks are retried).
const SWITCH_ATTEMPTS: u32 = 20;
/// How long the switch waits for one table's lock before it lets writers pass and
/// tries again: writers queue behind its lock request meanwhile.
const SWITCH_LOCK_TIMEOUT: &str = "2s";

/// The server's `wal_level`, refused unless it is `logical`.
pub async fn check_wal_level(client: &Client) -> Result<(), CaptureError> {
    let level: String = client
        .query_typed_one("SELECT current_setting('wal_level')", &[])
        .await?
        .get(0);
    if level == "logical" {
        Ok(())
    } else {
        Err(Refusal::WalLevel(level).into())
    }
}

/// The database's capture mode.
pub async fn mode(client: &Client) -> Result<CaptureMode, CaptureError> {
    let mode: String = client
        .query_typed_one("SELECT mode FROM realtime.capture_state", &[])
        .await?
        .get(0);
    Ok(CaptureMode::parse(&mode).unwrap_or_default())
}

/// Puts the database in WAL mode if it is not (see the module comment); returns the
/// switch point when it switched.
pub async fn to_wal(client: &Client, slot: &str) -> Result<Option<u64>, CaptureError> {
    check_wal_level(client).await?;
    if mode(client).await? == CaptureMode::Wal {
        return Ok(None);
    }
    client
        .batch_execute("SELECT realtime.ensure_publication()")
        .await?;
    create_slot(client, slot).await?;
    for attempt in 1..=SWITCH_ATTEMPTS {
        match switch_once(client).await {
            Ok(point) => {
                if let Some(point) = point {
                    tracing::info!(
                        switch_point = %PgLsn::from(point),
                        slot,
                        "switched the database to WAL capture"
                    );
                }
                return Ok(point);
            }
            Err(err)
                if attempt < SWITCH_ATTEMPTS
                    && matches!(
                        err.code(),
                        Some(&SqlState::T_R_DEADLOCK_DETECTED)
                            | Some(&SqlState::LOCK_NOT_AVAILABLE)
                    ) =>
            {
                tracing::debug!(%err, attempt, "switch to WAL capture retried");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    unreachable!("the last attempt returns")
}

/// The switch transaction.
async fn switch_once(client: &Client) -> Result<Option<u64>, tokio_postgres::Error> {
    client
        .batch_execute(&format!(
            "BEGIN; SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}'"
        ))
        .await?;
    let result = client
        .query_typed_one("SELECT realtime.switch_to_wal()", &[])
        .await;
    match result {
        Ok(row) => {
            client.batch_execute("COMMIT").await?;
            Ok(row.get::<_, Option<PgLsn>>(0).map(u64::from))
        }
        Err(err) => {
            client.batch_execute("ROLLBACK").await?;
            Err(err)
        }
    }
}

/// Creates the logical slot unless it exists.
async fn create_slot(client: &Client, slot: &str) -> Result<(), CaptureError> {
    let exists = client
        .query_typed_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[(&slot, Type::TEXT)],
        )
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    match client
        .query_typed_one(
            "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[(&slot, Type::TEXT)],
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            let reason = err
                .as_db_error()
                .map_or_else(|| err.to_string(), |db| db.message().to_owned());
            Err(Refusal::NoReplicationPrivilege(reason).into())
        }
        Err(err) => Err(err.into()),
    }
}
