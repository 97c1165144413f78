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
//! 1. One transaction, `realtime.hold_writers()`: takes every tracked table's SHARE ROW
//!    EXCLUSIVE lock (writers in flight commit first, new ones wait) and reads the WAL
//!    insert position P. Every commit on a tracked table is now either below P or
//!    after this transaction.
//! 2. Still holding the locks, it waits until the slot's confirmed position reaches P:
//!    the capturer (a gateway's, or one this command runs itself) confirms a position
//!    only once everything before it is in `change_log`.
//! 3. Same transaction, `realtime.switch_to_trigger()`: creates the triggers, takes the
//!    tables out of the publication (so later commits are not decoded: pgoutput reads
//!    publication membership as of each change) and sets mode `trigger`. Commits after
//!    it fire the triggers and draw their ids after every id the capturer drew.
//! 4. The slot, no longer needed, is dropped so it holds no WAL.
//!
//! # Recapture
//! A slot dropped or invalidated while in WAL mode is a refusal until an operator runs
//! `rowcast capture wal`: it creates a new slot and raises retention's horizon past the
//! head, so every client whose position precedes the new slot gets `reset`: what
//! happened in between was never decoded, and is never silently skipped.

use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::error::SqlState;
use tokio_postgres::types::{PgLsn, Type};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use super::wal::Capturer;
use super::{CaptureError, CaptureMode, CaptureStatus, Refusal};
use crate::pg::DbTarget;

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

/// How long the WAL → trigger switch waits for the capturer to drain the slot.
const DRAIN_DEADLINE: Duration = Duration::from_secs(30);

/// Puts the database in WAL mode if it is not (see the module comment); returns the
/// switch point when it switched. With `recapture`, a database already in WAL mode
/// whose slot is gone or invalidated gets a new one (see "Recapture").
pub async fn to_wal(
    client: &Client,
    slot: &str,
    recapture: bool,
) -> Result<Option<u64>, CaptureError> {
    check_wal_level(client).await?;
    if mode(client).await? == CaptureMode::Wal {
        if recapture {
            return recapture_slot(client, slot).await;
        }
        return Ok(None);
    }
    client
        .batch_execute("SELECT realtime.ensure_publication()")
        .await?;
    create_slot(client, slot).await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
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
            Err(err) if attempt < SWITCH_ATTEMPTS && lost_to_a_writer(&err) => {
                tracing::debug!(%err, attempt, "switch to WAL capture retried");
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// A deadlock with a writer, or the lock timeout: the switch let writers pass and may
/// try again.
fn lost_to_a_writer(err: &tokio_postgres::Error) -> bool {
    matches!(
        err.code(),
        Some(&SqlState::T_R_DEADLOCK_DETECTED) | Some(&SqlState::LOCK_NOT_AVAILABLE)
    )
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

/// Replaces a missing or invalidated slot; returns the new slot's consistent point.
async fn recapture_slot(client: &Client, slot: &str) -> Result<Option<u64>, CaptureError> {
    let status: Option<Option<String>> = client
        .query_typed_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[(&slot, Type::TEXT)],
        )
        .await?
        .map(|row| row.get(0));
    match status {
        Some(status) if status.as_deref() != Some("lost") => return Ok(None),
        Some(_) => drop_slot(client, slot).await?,
        None => {}
    }
    client
        .batch_execute("SELECT realtime.ensure_publication()")
        .await?;
    let point = create_slot(client, slot).await?.unwrap_or_default();
    client
        .execute_typed(
            "SELECT realtime.recapture($1)",
            &[(&PgLsn::from(point), Type::PG_LSN)],
        )
        .await?;
    tracing::warn!(
        slot,
        consistent_point = %PgLsn::from(point),
        "recaptured on a new slot: changes since the old slot was lost were not decoded; clients behind this point get `reset`"
    );
    Ok(Some(point))
}

/// Puts the database back in trigger mode (see the module comment), draining the slot
/// with an in-process capturer when no gateway runs one; returns whether it switched.
pub async fn to_trigger(
    target: &DbTarget,
    capture: &DbTarget,
    slot: &str,
) -> Result<bool, CaptureError> {
    let client = target.connect_spawned().await?;
    if mode(&client).await? == CaptureMode::Trigger {
        return Ok(false);
    }
    let stop = CancellationToken::new();
    let drainer = tokio::spawn(
        Capturer {
            target: target.clone(),
            capture: capture.clone(),
            slot: slot.to_owned(),
            status: Arc::new(CaptureStatus::default()),
        }
        .run(stop.clone()),
    );
    let result = hold_drain_switch(&client, target, slot).await;
    stop.cancel();
    let _ = drainer.await;
    result?;
    drop_slot(&client, slot).await?;
    tracing::info!(slot, "switched the database to trigger capture");
    Ok(true)
}

/// Steps 1–3 of WAL → trigger, in one transaction.
async fn hold_drain_switch(
    client: &Client,
    target: &DbTarget,
    slot: &str,
) -> Result<(), CaptureError> {
    let watcher = target.connect_spawned().await?;
    let mut attempt = 0;
    loop {
        attempt += 1;
        client
            .batch_execute(&format!(
                "BEGIN; SET LOCAL lock_timeout = '{SWITCH_LOCK_TIMEOUT}'"
            ))
            .await?;
        let held = client
            .query_typed_one("SELECT realtime.hold_writers()", &[])
            .await;
        let point: PgLsn = match held {
            Ok(row) => row.get(0),
            Err(err) if attempt < SWITCH_ATTEMPTS && lost_to_a_writer(&err) => {
                client.batch_execute("ROLLBACK").await?;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
                continue;
            }
            Err(err) => {
                client.batch_execute("ROLLBACK").await?;
                return Err(err.into());
            }
        };
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            loop {
                let done: bool = watcher
                    .query_typed_one(
                        "SELECT coalesce(bool_or(confirmed_flush_lsn >= $1), false)
                         FROM pg_replication_slots WHERE slot_name = $2",
                        &[(&point, Type::PG_LSN), (&slot, Type::TEXT)],
                    )
                    .await?
                    .get(0);
                if done {
                    return Ok::<(), CaptureError>(());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match drained {
            Ok(Ok(())) => {
                client
                    .batch_execute("SELECT realtime.switch_to_trigger(); COMMIT")
                    .await?;
                return Ok(());
            }
            Ok(Err(err)) => {
                client.batch_execute("ROLLBACK").await?;
                return Err(err);
            }
            Err(_) => {
                client.batch_execute("ROLLBACK").await?;
                return Err(CaptureError::Timeout("draining the slot before the switch"));
            }
        }
    }
}

/// Drops the slot, ending the walsender that streams it (its capturer reconnects,
/// finds trigger mode and stands by).
async fn drop_slot(client: &Client, slot: &str) -> Result<(), CaptureError> {
    for _ in 0..100 {
        client
            .execute_typed(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
                 WHERE slot_name = $1 AND active_pid IS NOT NULL",
                &[(&slot, Type::TEXT)],
            )
            .await?;
        match client
            .execute_typed(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                 WHERE slot_name = $1",
                &[(&slot, Type::TEXT)],
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(err) if err.code() == Some(&SqlState::OBJECT_IN_USE) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(CaptureError::Timeout("dropping the slot"))
}

/// Session advisory lock held while a slot is looked for and created (0x726f7764 =
/// 'rowd'). A slot is listed as soon as its creation starts, but it decodes only the
/// transactions that commit after its consistent point, which it reaches once every
/// transaction running at its start has ended. Without the lock a second replica would
/// see the slot, switch the database at once and drop the triggers, and the commits
/// between the switch and the consistent point would be captured by neither.
const SLOT_CREATION_LOCK: i64 = 1_920_890_724;

/// Creates the logical slot unless it exists; returns its consistent point if created.
/// Returns only once the slot, whoever created it, has reached its consistent point.
async fn create_slot(client: &Client, slot: &str) -> Result<Option<u64>, CaptureError> {
    client
        .execute_typed(
            "SELECT pg_advisory_lock($1)",
            &[(&SLOT_CREATION_LOCK, Type::INT8)],
        )
        .await?;
    let created = create_slot_locked(client, slot).await;
    let unlocked = client
        .execute_typed(
            "SELECT pg_advisory_unlock($1)",
            &[(&SLOT_CREATION_LOCK, Type::INT8)],
        )
        .await;
    let created = created?;
    unlocked?;
    Ok(created)
}

/// [`create_slot`] under its lock.
async fn create_slot_locked(client: &Client, slot: &str) -> Result<Option<u64>, CaptureError> {
    let exists = client
        .query_typed_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[(&slot, Type::TEXT)],
        )
        .await?
        .is_some();
    if exists {
        return Ok(None);
    }
    match client
        .query_typed_one(
            "SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[(&slot, Type::TEXT)],
        )
        .await
    {
        Ok(row) => Ok(Some(u64::from(row.get::<_, PgLsn>(0)))),
        Err(err) if err.code() == Some(&SqlState::INSUFFICIENT_PRIVILEGE) => {
            let reason = err
                .as_db_error()
                .map_or_else(|| err.to_string(), |db| db.message().to_owned());
            Err(Refusal::NoReplicationPrivilege(reason).into())
        }
        Err(err) => Err(err.into()),
    }
}
