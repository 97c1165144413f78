//! The WAL capturer: one replica at a time streams slot `rowcast` into `change_log`.
//!
//! Every replica started with `--capture wal` runs [`Capturer::run`]. Each round it
//! checks the server (wal_level, slot, publication; a refusal is logged once and shown
//! by `/readyz`) and tries a session advisory lock on a connection of its own. The
//! holder is the capturer; the others retry every second, so when the holder dies (its
//! sessions end, PostgreSQL releases the lock and the slot) another takes over within
//! a couple of seconds.
//!
//! The capturer streams the slot from its confirmed position. Decoded transactions are
//! applied in batches: one database transaction inserts their changes in commit order
//! (ids from the same sequence, `committed_at` = the commit time), records the last
//! commit LSN in `realtime.capture_state`, and rings the doorbell once. Only after it
//! commits is the LSN confirmed to the slot, so a crash in between makes the server
//! resend transactions that are already applied: every transaction whose commit LSN is
//! at or below the recorded one is skipped. Exactly once, across crashes and takeovers.
//!
//! A large transaction is not held in memory: its changes are inserted in chunks of
//! [`CHUNK`] inside the still-open database transaction, which commits with its last
//! chunk.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, SslMode, TlsConfig,
};
use tokio_postgres::config::Host;
use tokio_postgres::types::{PgLsn, Type};
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use super::apply::{self, Change, Shape};
use super::decode::{Decoded, Decoder, RowChange};
use super::{switch, CaptureError, CaptureMode, CaptureStatus, Refusal, PUBLICATION};
use crate::event::ChangeRecord;
use crate::pg::connect::TlsMode;
use crate::pg::DbTarget;
use crate::pg::{batch, changes};

/// 0x726f7763 = 'rowc': held (session-scoped) by the one capturer.
pub const CAPTURER_LOCK: i64 = 1_920_890_723;
/// The commit-order lock of the capture trigger (`realtime.capture`): the capturer
/// takes it too, so ids stay visible in order while a mode switch runs.
const COMMIT_ORDER_LOCK: i64 = 32_199_620_637_860_724;
/// How often a standby replica tries for the lock (takeover well within 5 s).
const RETRY: Duration = Duration::from_secs(1);
/// Changes per insert statement; a larger transaction is inserted chunk by chunk.
pub const CHUNK: usize = 1000;
/// Committed transactions applied together at most, when they arrive back to back.
const MAX_BATCH_COMMITS: usize = 1000;
/// Changes after which a batch is applied at the next commit even if more is at hand:
/// under a flood of large transactions clients then get events in steady steps, not
/// after one long batch.
const MAX_BATCH_CHANGES: usize = CHUNK;
/// The least time between the starts of two batches: when commits arrive faster than
/// that, they wait in the open batch (at most this long) instead of each paying a
/// batch's fixed cost (its statements, its commit's WAL flush) on the database the
/// writers use. Commits further apart are applied at once.
const APPLY_INTERVAL: Duration = Duration::from_millis(2);
/// Deadline of each database step (checks, lock, a chunk, a batch's commit).
const DB_DEADLINE: Duration = Duration::from_secs(30);
/// How often a streaming capturer re-runs the checks (a table dropped from the
/// publication, a switch back to trigger mode).
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// How often the position is confirmed to the server (also on an idle stream).
const STATUS_INTERVAL: Duration = Duration::from_secs(1);
/// Decoded messages buffered between the socket and the capturer: bounded memory.
const STREAM_BUFFER: usize = 1024;
/// Events a doorbell payload may carry at most: beyond it the payload would not fit
/// NOTIFY's limit anyway, so the rows are not returned (replicas read `change_log`).
const PAYLOAD_EVENTS: usize = 128;

/// The WAL capturer of one replica.
#[derive(Debug)]
pub struct Capturer {
    /// The database (lock, checks, inserts); may pass through a pooler in session mode.
    pub target: DbTarget,
    /// Where the replication connection goes (`--capture-url`): straight to PostgreSQL.
    pub capture: DbTarget,
    /// The logical slot streamed.
    pub slot: String,
    /// What `/readyz` and `/metrics` show.
    pub status: Arc<CaptureStatus>,
}

impl Capturer {
    /// Switches the database to WAL mode if it is not (retrying while refused), then
    /// [`run`](Self::run)s.
    pub async fn switch_and_run(self, shutdown: CancellationToken) {
        loop {
            let attempt = async {
                let client = self.target.connect_spawned().await?;
                switch::to_wal(&client, &self.slot, false).await
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = attempt => result,
            };
            match result {
                Ok(_) => break,
                Err(CaptureError::Refused(refusal)) => {
                    if self.status.refuse(refusal.clone()) {
                        tracing::error!("WAL capture refused: {refusal}");
                    }
                }
                Err(err) => tracing::warn!(%err, "switching to WAL capture failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
        self.run(shutdown).await;
    }

    /// Competes for the capturer lock and captures while holding it, until shutdown.
    pub async fn run(self, shutdown: CancellationToken) {
        loop {
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                result = self.session() => result,
            };
            self.status.set_capturer(false);
            match result {
                Ok(()) => {}
                Err(CaptureError::Refused(refusal)) => {
                    if self.status.refuse(refusal.clone()) {
                        tracing::error!("WAL capture refused: {refusal}");
                    }
                }
                Err(err) => tracing::warn!(%err, "WAL capture stopped; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    /// One connection's worth: wait for the lock, then stream until something fails.
    async fn session(&self) -> Result<(), CaptureError> {
        let target = self.target.with_application_name("rowcast capturer");
        let (client, connection) = target.connect().await?;
        let driver = tokio::spawn(connection);
        let result = self.hold_and_stream(&client).await;
        driver.abort();
        result
    }

    async fn hold_and_stream(&self, client: &Client) -> Result<(), CaptureError> {
        loop {
            let ready = deadline("capture checks", self.check(client)).await??;
            self.status.clear();
            if ready {
                let locked: bool = deadline(
                    "the capturer lock",
                    client.query_typed_one(
                        "SELECT pg_try_advisory_lock($1)",
                        &[(&CAPTURER_LOCK, Type::INT8)],
                    ),
                )
                .await??
                .get(0);
                if locked {
                    break;
                }
            }
            tokio::time::sleep(RETRY).await;
        }
        self.status.set_capturer(true);
        tracing::info!(slot = %self.slot, "this replica is the WAL capturer");
        // Re-checked under the lock: a switch may have run since.
        if !deadline("capture checks", self.check(client)).await?? {
            return Ok(());
        }
        let applied = applied_lsn(client).await?;
        self.status.set_lsn(applied);
        // Every statement the capturer runs is the same shape each time: plan once.
        deadline(
            "preparing the capturer's statements",
            client.batch_execute("SET plan_cache_mode = force_generic_plan"),
        )
        .await??;
        let statements = deadline("preparing the capturer's statements", async {
            Ok::<_, tokio_postgres::Error>(BatchStatements {
                lock: client
                    .prepare(&format!(
                        "SELECT pg_advisory_xact_lock({COMMIT_ORDER_LOCK})"
                    ))
                    .await?,
                head: client.prepare(changes::HEAD).await?,
                record_applied: client
                    .prepare_typed(
                        "UPDATE realtime.capture_state SET applied_lsn = $1",
                        &[Type::PG_LSN],
                    )
                    .await?,
                ring: client
                    .prepare_typed("SELECT pg_notify('rowcast', $1)", &[Type::TEXT])
                    .await?,
            })
        })
        .await??;
        let stream = ReplicationClient::connect(self.replication_config()?)
            .await
            .map_err(|err| refusal_of(err, &self.slot))?;
        Stream {
            client,
            statements,
            slot: &self.slot,
            stream,
            status: &self.status,
            applied,
            decoder: Decoder::default(),
            shapes: HashMap::new(),
            pending: Vec::new(),
            open: false,
            commits: 0,
            changes: 0,
            batch_end: None,
            after: None,
            records: None,
            payload_bytes: 0,
            next_apply: tokio::time::Instant::now(),
        }
        .run()
        .await
    }

    /// Whether WAL capture should run (the database is in WAL mode), or the refusal
    /// that stops it.
    async fn check(&self, client: &Client) -> Result<bool, CaptureError> {
        check(client, &self.slot).await
    }
}

/// Whether WAL capture should run (the database is in WAL mode), or the refusal that
/// stops it: wal_level, the slot, the publication covering every tracked table.
async fn check(client: &Client, slot: &str) -> Result<bool, CaptureError> {
    switch::check_wal_level(client).await?;
    if switch::mode(client).await? != CaptureMode::Wal {
        return Ok(false);
    }
    let state = client
        .query_typed_opt(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1",
            &[(&slot, Type::TEXT)],
        )
        .await?;
    match state {
        None => return Err(Refusal::SlotMissing(slot.to_owned()).into()),
        Some(row) if row.get::<_, Option<String>>(0).as_deref() == Some("lost") => {
            return Err(Refusal::SlotInvalidated(slot.to_owned()).into())
        }
        Some(_) => {}
    }
    let unpublished: Option<String> = client
        .query_typed_opt(
            "SELECT t.relid::text FROM realtime.tracked t
                 WHERE NOT EXISTS (SELECT 1 FROM pg_publication_rel r
                                   JOIN pg_publication p ON p.oid = r.prpubid
                                   WHERE p.pubname = $1 AND r.prrelid = t.relid)
                 ORDER BY 1 LIMIT 1",
            &[(&PUBLICATION, Type::TEXT)],
        )
        .await?
        .map(|row| row.get(0));
    if let Some(table) = unpublished {
        client
            .batch_execute("UPDATE realtime.capture_state SET gap_open = true WHERE NOT gap_open")
            .await?;
        return Err(Refusal::NotPublished(table).into());
    }
    let closed: bool = client
        .query_typed_one("SELECT realtime.close_gap()", &[])
        .await?
        .get(0);
    if closed {
        tracing::warn!("every tracked table is published again: changes made while one was not were never decoded, so clients behind this point get `reset`");
    }
    Ok(true)
}

impl Capturer {
    /// The replication client's settings from the capture URL.
    fn replication_config(&self) -> Result<ReplicationConfig, CaptureError> {
        let config = self.capture.driver_config();
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let mut tls = TlsConfig::disabled();
        tls.mode = match self.capture.tls_mode() {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require => SslMode::Require,
            TlsMode::VerifyCa => SslMode::VerifyCa,
            TlsMode::VerifyFull => SslMode::VerifyFull,
        };
        tls.ca_pem_path = self.capture.root_cert().map(ToOwned::to_owned);
        Ok(ReplicationConfig::new(
            host,
            config.get_user().unwrap_or("postgres"),
            password,
            config.get_dbname().unwrap_or_default(),
            self.slot.clone(),
            PUBLICATION,
        )
        .with_port(config.get_ports().first().copied().unwrap_or(5432))
        .with_tls(tls)
        .with_start_lsn(Lsn::ZERO)
        .with_status_interval(STATUS_INTERVAL)
        .with_buffer_size(STREAM_BUFFER)
        .with_application_name("rowcast capturer")
        // Text output that any session parses back unambiguously.
        .with_options("-c DateStyle=ISO -c IntervalStyle=postgres"))
    }
}

/// The statements of a batch, prepared once per session.
struct BatchStatements {
    /// Takes the commit-order lock.
    lock: Statement,
    /// Reads the newest id ([`changes::HEAD`]), after the lock, in its own snapshot.
    head: Statement,
    /// Records the batch's last commit LSN as `applied_lsn`.
    record_applied: Statement,
    /// The doorbell.
    ring: Statement,
}

/// The streaming state of a capturer holding the lock.
struct Stream<'a> {
    /// The lock-holding connection, which also applies batches: if it dies, the lock
    /// and the open batch go together.
    client: &'a Client,
    /// What each batch runs.
    statements: BatchStatements,
    /// The slot, for the periodic checks.
    slot: &'a str,
    /// The replication stream.
    stream: ReplicationClient,
    /// Metrics.
    status: &'a CaptureStatus,
    /// Commit LSN of the last transaction in `change_log`: at or below it, skip.
    applied: u64,
    /// The pgoutput parser.
    decoder: Decoder,
    /// Table shapes by relation OID, as the latest Relation message described them.
    shapes: HashMap<u32, Arc<Shape>>,
    /// Decoded changes not yet inserted (at most a chunk).
    pending: Vec<Change>,
    /// Whether a database transaction is open (a batch is partly inserted).
    open: bool,
    /// Transactions decoded into the open batch.
    commits: usize,
    /// Changes decoded into the open batch (inserted or pending), for
    /// [`MAX_BATCH_CHANGES`].
    changes: usize,
    /// The commit and end LSNs of the batch's last transaction.
    batch_end: Option<(u64, u64)>,
    /// The newest id committed before the open batch, read under the commit-order
    /// lock: the doorbell payload's `after`, which lets replicas detect gaps exactly.
    after: Option<u64>,
    /// The open batch's rows as written, for the doorbell payload; `None` once there
    /// are more than [`PAYLOAD_EVENTS`] (the payload could not fit).
    records: Option<Vec<ChangeRecord>>,
    /// The text bytes of the open batch's row images so far: past
    /// [`batch::NOTIFY_LIMIT`] the payload cannot fit, and rows are no longer returned.
    payload_bytes: usize,
    /// When the next batch may be applied at the earliest ([`APPLY_INTERVAL`]).
    next_apply: tokio::time::Instant,
}

/// The transaction being received.
struct Txn {
    /// Already applied: decode its Relation messages, drop its changes.
    skip: bool,
    /// Its commit time.
    committed_at: std::time::SystemTime,
}

impl Stream<'_> {
    async fn run(mut self) -> Result<(), CaptureError> {
        let mut txn: Option<Txn> = None;
        let mut confirmed = self.applied;
        // The server's WAL end as last reported, for the lag gauge.
        let mut server_end = self.applied;
        let mut checks =
            tokio::time::interval_at(tokio::time::Instant::now() + CHECK_INTERVAL, CHECK_INTERVAL);
        checks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Committed transactions wait in the open batch only while more of the
            // stream is already at hand (keepalives included: the server sends one
            // each time decoding reaches the flushed WAL, between most transactions
            // under load); the batch is applied as soon as the stream has nothing
            // ready, or, when the last batch started less than APPLY_INTERVAL ago,
            // once that interval is over (unless more arrives meanwhile).
            let batch_waiting = self.batch_end.is_some() && txn.is_none();
            let event = if batch_waiting {
                // At once when the interval is over, else when it will be.
                let next_apply = self.next_apply;
                let due = async move {
                    if tokio::time::Instant::now() < next_apply {
                        tokio::time::sleep_until(next_apply).await;
                    }
                };
                tokio::select! {
                    // What is at hand comes before a batch that is due.
                    biased;
                    next = self.stream.recv() => match next? {
                        Some(event) => event,
                        None => {
                            self.finish_batch().await?;
                            return Ok(());
                        }
                    },
                    () = due => {
                        confirmed = self.finish_batch().await?;
                        self.status
                            .set_lag_bytes(server_end.saturating_sub(confirmed));
                        continue;
                    }
                }
            } else {
                tokio::select! {
                    next = self.stream.recv() => match next? {
                        Some(event) => event,
                        None => return Ok(()),
                    },
                    _ = checks.tick() => {
                        if !deadline("capture checks", check(self.client, self.slot)).await?? {
                            return Ok(());
                        }
                        continue;
                    }
                }
            };
            match event {
                ReplicationEvent::Begin {
                    final_lsn,
                    commit_time_micros,
                    ..
                } => {
                    txn = Some(Txn {
                        skip: final_lsn.0 <= self.applied,
                        committed_at: apply::commit_time(commit_time_micros),
                    });
                }
                ReplicationEvent::XLogData { data, wal_end, .. } => {
                    server_end = server_end.max(wal_end.0);
                    match self.decoder.decode(data)? {
                        Decoded::Relation(desc) => {
                            let shape =
                                deadline("a table shape", Shape::prepare(self.client, &desc))
                                    .await??;
                            self.shapes.insert(desc.oid, Arc::new(shape));
                        }
                        Decoded::Change(change) => {
                            let Some(current) = txn.as_ref() else {
                                return Err(CaptureError::Decode(
                                    "a change outside a transaction".into(),
                                ));
                            };
                            if !current.skip {
                                self.push(change, current.committed_at)?;
                                self.changes += 1;
                                if self.pending.len() >= CHUNK {
                                    self.flush_chunk(None).await?;
                                }
                            }
                        }
                        Decoded::Ignored => {}
                    }
                }
                ReplicationEvent::Commit { lsn, end_lsn, .. } => {
                    let skipped = txn.take().is_none_or(|t| t.skip);
                    if skipped {
                        if !self.open && self.pending.is_empty() && self.batch_end.is_none() {
                            self.stream.update_applied_lsn(end_lsn);
                        }
                        continue;
                    }
                    self.commits += 1;
                    self.batch_end = Some((lsn.0, end_lsn.0));
                    // The top of the loop applies the batch once nothing more is at
                    // hand; a full one goes now.
                    if self.commits >= MAX_BATCH_COMMITS || self.changes >= MAX_BATCH_CHANGES {
                        confirmed = self.finish_batch().await?;
                        self.status
                            .set_lag_bytes(server_end.saturating_sub(confirmed));
                    }
                }
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    server_end = server_end.max(wal_end.0);
                    self.status
                        .set_lag_bytes(server_end.saturating_sub(confirmed));
                    if txn.is_none()
                        && !self.open
                        && self.pending.is_empty()
                        && self.batch_end.is_none()
                    {
                        // Everything sent so far is applied or skipped.
                        self.stream.update_applied_lsn(wal_end);
                        confirmed = confirmed.max(wal_end.0);
                    }
                    if self.client.is_closed() {
                        return Err(CaptureError::ConnectionLost);
                    }
                }
                ReplicationEvent::Message { .. } => {}
                ReplicationEvent::StoppedAt { .. } => return Ok(()),
            }
        }
    }

    /// Turns a decoded change into rows to insert (TRUNCATE: one per table).
    fn push(
        &mut self,
        change: RowChange,
        committed_at: std::time::SystemTime,
    ) -> Result<(), CaptureError> {
        let shape = |shapes: &HashMap<u32, Arc<Shape>>, oid: u32| {
            shapes.get(&oid).cloned().ok_or_else(|| {
                CaptureError::Decode(format!("a change to relation {oid} before its description"))
            })
        };
        match change {
            RowChange::Insert { oid, new } => self.pending.push(Change {
                shape: shape(&self.shapes, oid)?,
                op: "INSERT",
                row: new,
                old: None,
                committed_at,
            }),
            RowChange::Update { oid, new, old } => self.pending.push(Change {
                shape: shape(&self.shapes, oid)?,
                op: "UPDATE",
                row: new,
                old: Some(old),
                committed_at,
            }),
            RowChange::Delete { oid, old } => self.pending.push(Change {
                shape: shape(&self.shapes, oid)?,
                op: "DELETE",
                row: old,
                old: None,
                committed_at,
            }),
            RowChange::Truncate { oids } => {
                for oid in oids {
                    self.pending.push(Change {
                        shape: shape(&self.shapes, oid)?,
                        op: "TRUNCATE",
                        row: Vec::new(),
                        old: None,
                        committed_at,
                    });
                }
            }
        }
        Ok(())
    }

    /// Inserts the pending changes into the open batch, opening it first if needed
    /// and, when `closing` names the batch's last commit LSN, recording it after them
    /// — all sent together, so the backend and the capturer meet once per flight
    /// instead of once per statement.
    async fn flush_chunk(&mut self, closing: Option<PgLsn>) -> Result<(), CaptureError> {
        let opening = !self.open;
        if opening {
            self.records = Some(Vec::new());
            self.payload_bytes = 0;
        }
        // Rows are returned for the payload only while the batch may still fit it.
        if let Some(kept) = &self.records {
            self.payload_bytes += apply::text_bytes(&self.pending);
            if kept.len() + self.pending.len() > PAYLOAD_EVENTS
                || self.payload_bytes > batch::NOTIFY_LIMIT
            {
                self.records = None;
            }
        }
        let client = self.client;
        let returning = self.records.is_some();
        // Under the commit-order lock every id drawn before is committed or rolled
        // back, so the head read here (in a snapshot taken after the lock) is exactly
        // the event before this batch.
        let statements = &self.statements;
        let open = async move {
            if !opening {
                return Ok(None);
            }
            let (_, _, head) = futures_util::future::try_join3(
                client.batch_execute("BEGIN"),
                client.execute(&statements.lock, &[]),
                client.query_one(&statements.head, &[]),
            )
            .await?;
            Ok::<_, CaptureError>(Some(head.get::<_, i64>(0)))
        };
        let pending = &self.pending;
        let insert = async move {
            if pending.is_empty() {
                return Ok(Vec::new());
            }
            apply::insert(client, pending, returning).await
        };
        let record = async move {
            if let Some(lsn) = closing {
                client.execute(&statements.record_applied, &[&lsn]).await?;
            }
            Ok::<_, CaptureError>(())
        };
        // try_join3 polls them in this order, so they are sent in this order, in one
        // flight.
        let (head, written, ()) = deadline(
            "inserting changes",
            futures_util::future::try_join3(open, insert, record),
        )
        .await??;
        if let Some(head) = head {
            self.open = true;
            self.after = u64::try_from(head).ok();
        }
        if let Some(kept) = &mut self.records {
            kept.extend(written);
        }
        self.pending.clear();
        Ok(())
    }

    /// The doorbell payload of the open batch: its events, if they fit.
    fn payload(&mut self) -> String {
        let (Some(after), Some(mut records)) = (self.after.take(), self.records.take()) else {
            return String::new();
        };
        records.sort_by_key(|r| r.id);
        batch::encode_for_notify(after, &records).unwrap_or_default()
    }

    /// Commits the batch with its last commit LSN and the doorbell, then confirms the
    /// LSN to the slot; returns the confirmed end LSN.
    async fn finish_batch(&mut self) -> Result<u64, CaptureError> {
        let Some((commit_lsn, end_lsn)) = self.batch_end.take() else {
            return Ok(self.applied);
        };
        self.next_apply = tokio::time::Instant::now() + APPLY_INTERVAL;
        self.flush_chunk(Some(PgLsn::from(commit_lsn))).await?;
        // The doorbell carries the events when they fit (an empty payload says: read
        // change_log). Sent together with the COMMIT: one round trip.
        let payload = self.payload();
        deadline(
            "committing a batch",
            futures_util::future::try_join(
                self.client.execute(&self.statements.ring, &[&payload]),
                self.client.batch_execute("COMMIT"),
            ),
        )
        .await??;
        self.open = false;
        tracing::debug!(
            commits = self.commits,
            changes = self.changes,
            "capture batch applied"
        );
        self.commits = 0;
        self.changes = 0;
        self.applied = commit_lsn;
        self.status.set_lsn(commit_lsn);
        self.stream.update_applied_lsn(Lsn(end_lsn));
        Ok(end_lsn)
    }
}

/// Commit LSN of the last transaction applied (or captured by triggers before WAL mode).
async fn applied_lsn(client: &Client) -> Result<u64, CaptureError> {
    let lsn: PgLsn = deadline(
        "reading capture_state",
        client.query_typed_one("SELECT applied_lsn FROM realtime.capture_state", &[]),
    )
    .await??
    .get(0);
    Ok(u64::from(lsn))
}

/// Runs `step` with the capturer's database deadline.
async fn deadline<T>(
    what: &'static str,
    step: impl std::future::Future<Output = T>,
) -> Result<T, CaptureError> {
    tokio::time::timeout(DB_DEADLINE, step)
        .await
        .map_err(|_| CaptureError::Timeout(what))
}

/// Sorts the replication connection's failures into refusals an operator must fix and
/// errors worth retrying.
fn refusal_of(err: PgWireError, slot: &str) -> CaptureError {
    let text = err.to_string();
    if text.contains("replication role") || text.contains("REPLICATION attribute") {
        Refusal::NoReplicationPrivilege(text).into()
    } else if text.contains("does not exist") && text.contains(slot) {
        Refusal::SlotMissing(slot.to_owned()).into()
    } else if text.contains("invalidated") || text.contains("can no longer get changes") {
        Refusal::SlotInvalidated(slot.to_owned()).into()
    } else {
        err.into()
    }
}
