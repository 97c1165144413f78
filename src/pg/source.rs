//! The source: reads `change_log` by cursor into the event log and wakes the hub.
//!
//! Whatever woke it (a notification, a poll tick, a reconnect), the source runs the
//! same query, `WHERE id > cursor ORDER BY id LIMIT n`, so every mode yields the same
//! ids. The one exception is a batch of events that says which id came before it
//! (see [`batch`](super::batch)): the WAL capturer's doorbell payload, or a relay
//! message. A batch that continues the head is appended as it is; anything else is
//! answered by the same read, so order and exactly-once rest on `change_log` alone.
//!
//! What a read costs is paid by every replica, so the source reads no more than it
//! must: one read per wake-up however many doorbells rang before it was sent (their
//! commits are all visible to it), none for a batch it could append, and in notify
//! mode through a statement prepared once per connection (see
//! [`changes::read_after_prepared`]). With the relay (see [`crate::relay`]) the
//! source of a consuming replica does not even listen.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, Client, Statement};
use tokio_util::sync::CancellationToken;

use super::batch::Fit;
use super::catalog::CatalogCache;
use super::doorbell::{Bell, Doorbell};
use super::{changes, DbError, DbTarget};
use crate::event::Event;
use crate::filter::Catalog;
use crate::hub::Hub;
use crate::log::EventLog;
use crate::metrics::{Metrics, Path};
use crate::relay::{Relay, RELAY_LOCK};

/// How the source learns that there is something to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceMode {
    /// LISTEN on the doorbell channel.
    Notify,
    /// Query every poll interval.
    Poll,
    /// LISTEN if notifications really arrive (a probe checks), else poll.
    Auto,
}

impl SourceMode {
    /// Parses `notify`, `poll` or `auto`.
    pub fn parse(text: &str) -> Option<SourceMode> {
        match text {
            "notify" => Some(SourceMode::Notify),
            "poll" => Some(SourceMode::Poll),
            "auto" => Some(SourceMode::Auto),
            _ => None,
        }
    }
}

/// The doorbell channel the capture trigger notifies.
pub const CHANNEL: &str = "rowcast";
/// The payload of `auto`'s probe notification.
const PROBE: &str = "probe";
/// The `application_name` of the source's connection.
pub const SOURCE_APPLICATION_NAME: &str = "rowcast source";
/// Rows per cursor read.
pub const BATCH: i64 = 1000;
/// How long `auto` waits for its probe notification before it decides to poll.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// In notify mode, how often an idle source checks its connection (and reads, in case).
const IDLE_CHECK: Duration = Duration::from_secs(2);
/// How long one health check or read may take before the connection counts as lost.
const QUERY_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the tracked tables and their columns are re-read.
const CATALOG_REFRESH: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What the rest of the gateway can see of the source.
#[derive(Debug)]
pub struct SourceStatus {
    /// True while connected and reading; `/readyz` reports it.
    live: AtomicBool,
    /// 0: not decided, 1: notify, 2: poll.
    mode: AtomicU8,
    /// The tracked tables, for validating stream parameters.
    catalog: CatalogCache,
    /// Signalled whenever `live` changes.
    changed: Notify,
}

impl SourceStatus {
    /// A status that is not live, with the given catalog.
    pub fn new(catalog: Catalog) -> Arc<SourceStatus> {
        Arc::new(SourceStatus {
            live: AtomicBool::new(false),
            mode: AtomicU8::new(0),
            catalog: CatalogCache::new(catalog),
            changed: Notify::new(),
        })
    }

    /// Whether the source is connected and reading.
    pub fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The mode in use: `Some(Notify)` or `Some(Poll)` once decided.
    pub fn mode(&self) -> Option<SourceMode> {
        match self.mode.load(Ordering::Relaxed) {
            1 => Some(SourceMode::Notify),
            2 => Some(SourceMode::Poll),
            _ => None,
        }
    }

    /// The tracked tables, as last read.
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.current()
    }

    /// The catalog cache, for requests that need a copy no older than themselves.
    pub fn catalogs(&self) -> &CatalogCache {
        &self.catalog
    }

    /// Waits until the source becomes live (or returns at once if it is).
    pub async fn wait_live(&self) {
        loop {
            let changed = self.changed.notified();
            if self.is_live() {
                return;
            }
            changed.await;
        }
    }

    fn set_live(&self, live: bool) {
        if self.live.swap(live, Ordering::AcqRel) != live {
            self.changed.notify_waiters();
        }
    }
}

/// The source task's configuration and collaborators.
#[derive(Debug)]
pub struct Source {
    /// Where to read.
    pub target: DbTarget,
    /// How to be woken.
    pub mode: SourceMode,
    /// Poll period in poll mode.
    pub poll_interval: Duration,
    /// Least time between two reads woken by the doorbell: under a burst of commits,
    /// one read (and one wake-up of every subscriber) then carries many events, so
    /// clients get several per socket write. Idle-to-first-event latency is unaffected.
    pub coalesce: Duration,
    /// Where notifications (and relay messages) are queued for the source: one for
    /// the source's life, so the relay consumer keeps ringing it across reconnects.
    pub doorbell: Arc<Doorbell>,
    /// The NATS relay, with `--relay`: publish while holding its lock, else consume.
    pub relay: Option<Arc<Relay>>,
    /// Where events go.
    pub log: Arc<EventLog>,
    /// Who to wake.
    pub hub: Arc<Hub>,
    /// What others see.
    pub status: Arc<SourceStatus>,
    /// Counters.
    pub metrics: Arc<Metrics>,
}

impl Source {
    /// Runs until `shutdown`: connect, read, wait for the doorbell or a tick, repeat;
    /// reconnect with capped exponential backoff when anything fails, resuming from the
    /// log's head so nothing is lost or read twice.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = BACKOFF_START;
        let mut connected_before = false;
        loop {
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break,
                outcome = self.session(&mut backoff, &mut connected_before) => outcome,
            };
            self.status.set_live(false);
            if let Some(relay) = &self.relay {
                // The lock went with the connection.
                relay.set_publishing(false);
            }
            self.hub.wake_all();
            match outcome {
                Ok(()) => break,
                Err(err) => tracing::warn!(%err, retry_in = ?backoff, "source lost the database"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        self.status.set_live(false);
    }

    /// One connection's life. Returns only with an error (the connection is gone).
    async fn session(
        &self,
        backoff: &mut Duration,
        connected_before: &mut bool,
    ) -> Result<(), DbError> {
        // Named apart from the pool's connections, so operators can find the LISTEN
        // connection in pg_stat_activity.
        let (client, mut connection) = self
            .target
            .with_application_name(SOURCE_APPLICATION_NAME)
            .connect()
            .await?;
        let doorbell = Arc::clone(&self.doorbell);
        // The probe of `auto` listens for its own notification only: the doorbell is
        // also rung by the relay.
        let probe = Arc::new(Notify::new());
        let lost = CancellationToken::new();
        let driver = {
            let doorbell = Arc::clone(&doorbell);
            let probe = Arc::clone(&probe);
            let lost = lost.clone();
            // A spawned `Connection` drops notifications; polling messages ourselves
            // both drives the connection and receives them.
            tokio::spawn(async move {
                loop {
                    match poll_fn(|cx| connection.poll_message(cx)).await {
                        Some(Ok(AsyncMessage::Notification(note))) if note.payload() == PROBE => {
                            probe.notify_one()
                        }
                        Some(Ok(AsyncMessage::Notification(note))) => {
                            doorbell.ring(Bell::of_payload(note.payload()))
                        }
                        Some(Ok(_)) => {}
                        Some(Err(err)) => {
                            tracing::debug!(%err, "source connection failed");
                            break;
                        }
                        None => break,
                    }
                }
                lost.cancel();
            })
        };
        let _abort_driver = AbortOnDrop(driver);

        let mode = self.decide_mode(&client, &probe).await?;
        self.status.mode.store(
            if mode == SourceMode::Notify { 1 } else { 2 },
            Ordering::Relaxed,
        );
        self.metrics
            .source_polling
            .set(i64::from(mode == SourceMode::Poll));
        // LISTEN working proves the connection keeps its session (a pooler in
        // transaction mode fails the probe), so a named statement stays where it was
        // prepared. Polling may be behind such a pooler: it keeps one-round-trip reads.
        let statement = match mode {
            SourceMode::Notify => Some(with_timeout(changes::prepare_read_after(&client)).await?),
            _ => None,
        };
        self.refresh_catalog(&client).await?;
        if *connected_before {
            self.metrics.db_reconnects.inc();
        }
        *connected_before = true;
        tracing::info!(mode = ?mode, head = self.log.head(), "source connected");

        let mut last_catalog = Instant::now();
        let tick = if mode == SourceMode::Notify {
            IDLE_CHECK
        } else {
            self.poll_interval
        };
        self.try_relay_lock(&client, mode).await?;
        let mut listening = mode == SourceMode::Notify;
        // Read first: whatever was committed while this connection was being set up.
        let mut must_read = true;
        let mut last_read = Instant::now();
        loop {
            // While the relay serves this replica, PostgreSQL need not notify it; when
            // the relay stops, it listens again. Either switch is bridged by a read.
            if let (Some(relay), SourceMode::Notify) = (&self.relay, mode) {
                let listen = !relay.consuming();
                if listen != listening {
                    let command = if listen { "LISTEN" } else { "UNLISTEN" };
                    with_timeout(client.batch_execute(&format!("{command} {CHANNEL}"))).await?;
                    listening = listen;
                    must_read = true;
                }
            }
            // Bells heard so far are answered here: batches that continue the head are
            // appended as they are, anything else (a bare doorbell, a gap, a batch that
            // did not decode) is answered by reading, which sees every commit whose
            // notification has arrived.
            let answered = doorbell.rung();
            for bell in doorbell.take() {
                match bell {
                    Bell::Read => must_read = true,
                    Bell::Batch(_, _) if must_read => {}
                    Bell::Batch(batch, path) => match batch.fit(self.log.head()) {
                        Fit::Held => {}
                        Fit::Continues(from) => self.deliver(&batch.events[from..], path),
                        Fit::Gap => must_read = true,
                    },
                }
            }
            if must_read {
                // Until caught up; a full batch means there may be more.
                loop {
                    last_read = Instant::now();
                    let read = self.read_batch(&client, statement.as_ref()).await?;
                    if read < BATCH as usize {
                        break;
                    }
                }
                must_read = false;
            }
            if !self.status.is_live() {
                self.status.set_live(true);
                *backoff = BACKOFF_START;
            }
            if last_catalog.elapsed() >= CATALOG_REFRESH {
                self.refresh_catalog(&client).await?;
                last_catalog = Instant::now();
            }
            tokio::select! {
                _ = lost.cancelled() => {
                    return Err(DbError::Unreachable {
                        target: self.target.to_string(),
                        reason: "connection closed".into(),
                    });
                }
                _ = doorbell.rung_after(answered), if mode == SourceMode::Notify || self.relay.is_some() => {
                    let wait = self.coalesce.saturating_sub(last_read.elapsed());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                _ = tokio::time::sleep(tick) => {
                    must_read = true;
                    self.try_relay_lock(&client, mode).await?;
                }
            }
        }
    }

    /// With a relay, tries for its publisher lock (held by this connection's session)
    /// unless already held. Only in notify mode: a polling source may be behind a
    /// pooler in transaction mode, where a session lock holds nothing.
    async fn try_relay_lock(&self, client: &Client, mode: SourceMode) -> Result<(), DbError> {
        let Some(relay) = &self.relay else {
            return Ok(());
        };
        if relay.publishing() || mode != SourceMode::Notify {
            return Ok(());
        }
        let locked: bool = with_timeout(client.query_typed_one(
            "SELECT pg_try_advisory_lock($1)",
            &[(&RELAY_LOCK, Type::INT8)],
        ))
        .await?
        .get(0);
        relay.set_publishing(locked);
        Ok(())
    }

    /// Chooses notify or poll for this connection.
    async fn decide_mode(&self, client: &Client, probe: &Notify) -> Result<SourceMode, DbError> {
        if self.mode == SourceMode::Poll {
            return Ok(SourceMode::Poll);
        }
        let listen = with_timeout(client.batch_execute(&format!("LISTEN {CHANNEL}"))).await;
        match (self.mode, listen) {
            (SourceMode::Notify, Err(err)) => return Err(err),
            (SourceMode::Notify, Ok(())) => return Ok(SourceMode::Notify),
            (_, Err(err)) if err.is_permanent() => return Err(err),
            (_, Err(err)) => {
                tracing::warn!(%err, "LISTEN failed; polling instead");
                return Ok(SourceMode::Poll);
            }
            (_, Ok(())) => {}
        }
        // Behind a transaction-mode pooler LISTEN "succeeds" and nothing ever arrives:
        // ring the doorbell and see. It must ring from another connection, the way
        // writers do: a session hears its own NOTIFY, and a pooler hands that one back
        // to the client that sent it, so a probe from this connection always succeeds.
        let heard = probe.notified();
        let ringer = with_timeout(self.target.connect_spawned()).await?;
        with_timeout(ringer.batch_execute(&format!("NOTIFY {CHANNEL}, '{PROBE}'"))).await?;
        drop(ringer);
        if tokio::time::timeout(PROBE_TIMEOUT, heard).await.is_ok() {
            Ok(SourceMode::Notify)
        } else {
            tracing::warn!(
                poll_interval = ?self.poll_interval,
                "LISTEN/NOTIFY does not work on this connection (a pooler in transaction mode?); polling instead"
            );
            let _ = with_timeout(client.batch_execute(&format!("UNLISTEN {CHANNEL}"))).await;
            Ok(SourceMode::Poll)
        }
    }

    /// Reads one batch after the head into the log; returns how many rows came.
    async fn read_batch(
        &self,
        client: &Client,
        statement: Option<&Statement>,
    ) -> Result<usize, DbError> {
        self.metrics.catchup_queries.inc();
        let head = self.log.head();
        let events = match statement {
            Some(statement) => {
                with_timeout(changes::read_after_prepared(client, statement, head, BATCH)).await?
            }
            None => with_timeout(changes::read_after(client, head, BATCH)).await?,
        };
        // Retention may have deleted rows after the head before this read saw them
        // (a source lagging behind a tight retention). Ids have gaps anyway, so ask only
        // when the read did not start right after the head; `pruned_upto` read after
        // the rows is at least what was deleted before them.
        if events.first().is_none_or(|first| first.id > head + 1) {
            let pruned = with_timeout(changes::pruned_upto(client)).await?;
            if pruned > head {
                tracing::warn!(head, pruned, "retention deleted changes this replica had not read; readers behind get a reset");
                self.log.skip_to(pruned);
                // Every reader behind the gap learns it now, not at the next change.
                self.hub.wake_all();
            }
        }
        let count = events.len();
        if events.is_empty() {
            self.metrics.set_source_lag_micros(0);
        } else {
            self.deliver(&events, Path::Read);
        }
        Ok(count)
    }

    /// Appends events that continue the head to the log and wakes their subscribers.
    fn deliver(&self, events: &[Arc<Event>], path: Path) {
        let Some(newest) = events.last() else {
            return;
        };
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        self.metrics
            .set_source_lag_micros(now_micros - newest.committed_at_micros);
        self.metrics.events_captured.add(events.len() as u64);
        self.metrics.received(path).add(events.len() as u64);
        let after = self.log.head();
        self.log.append(events.iter().cloned());
        self.hub.wake(events);
        if let Some(relay) = &self.relay {
            relay.offer(after, events);
        }
    }

    async fn refresh_catalog(&self, client: &Client) -> Result<(), DbError> {
        self.status
            .catalog
            .refresh(|| {
                self.metrics.catalog_reads.inc();
                with_timeout(changes::catalog(client))
            })
            .await?;
        Ok(())
    }
}

async fn with_timeout<T, E: Into<DbError>>(
    future: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, DbError> {
    match tokio::time::timeout(QUERY_TIMEOUT, future).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(DbError::Unreachable {
            target: "the source connection".into(),
            reason: format!("no answer within {QUERY_TIMEOUT:?}"),
        }),
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
