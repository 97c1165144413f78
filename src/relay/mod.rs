//! The optional NATS JetStream relay (`--relay nats://…`): the database's read cost
//! stays that of one replica however many there are.
//!
//! One replica at a time publishes: the holder of the session advisory lock
//! [`RELAY_LOCK`], taken by the source on its own connection (so it goes with that
//! connection, and another replica's source takes it within a tick). The publisher's
//! source reads `change_log` (or takes the WAL capturer's doorbell payloads) as every
//! replica does without a relay, and hands each batch to [`publish`], which sends one
//! message per event with the event id as `Nats-Msg-Id` (JetStream drops a second
//! publish of an id within the stream's duplicate window, as after a takeover).
//!
//! Every other replica runs [`consume`]: an ordered consumer from the newest message
//! on, whose messages become bells of the source, exactly like the doorbell payloads:
//! each message is a one-event [`Batch`](crate::pg::batch::Batch) naming the id that
//! came before it, so a replica appends only what continues its head and reads
//! `change_log` on any gap. While it consumes, its source stops listening (PostgreSQL
//! then does no work per commit for it); whenever NATS cannot serve (unreachable, a
//! stream error, no heartbeat) it listens and reads again. Each switch is bridged by
//! one read of `change_log`, so nothing is lost, duplicated or reordered across it.
//! Clients resuming from before the ring keep reading `change_log` (through the pool),
//! relay or not.

pub mod consume;
pub mod publish;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::pg::doorbell::Doorbell;

/// 0x726f7772 = 'rowr': held (session-scoped) by the one relay publisher.
pub const RELAY_LOCK: i64 = 1_920_890_738;
/// Deadline of every NATS call (connect, stream look-up, publish, acknowledgement).
pub const NATS_DEADLINE: Duration = Duration::from_secs(2);
/// How long the stream keeps events when the relay creates it: resumes further back
/// are served by `change_log`, so an hour is plenty.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(3600);
/// The stream's size cap when the relay creates it (1 GiB).
const DEFAULT_MAX_BYTES: i64 = 1 << 30;
/// The stream's duplicate window when the relay creates it: longer than any takeover.
const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Why a relay step failed; each is counted, logged, and answered by reading
/// `change_log`.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// NATS did not answer within [`NATS_DEADLINE`].
    #[error("NATS did not answer {0} within the deadline")]
    Timeout(&'static str),
    /// The connection is not up.
    #[error("not connected to NATS")]
    Disconnected,
    /// A NATS call failed.
    #[error("NATS {what}: {source}")]
    Nats {
        /// The step.
        what: &'static str,
        /// The client's error.
        source: async_nats::Error,
    },
}

impl RelayError {
    fn nats(what: &'static str) -> impl FnOnce(async_nats::Error) -> RelayError {
        move |source| RelayError::Nats { what, source }
    }
}

/// The relay as the source sees it: the NATS connection, the role, the health.
#[derive(Debug)]
pub struct Relay {
    /// The connection (reconnects by itself in the background).
    client: async_nats::Client,
    /// JetStream on `client`.
    jetstream: jetstream::Context,
    /// The stream's name.
    stream: String,
    /// The subject events are published on: `<stream>.events`.
    subject: String,
    /// Set by the source while it holds [`RELAY_LOCK`]: the consumer stands down.
    publishing: AtomicBool,
    /// Set while the consumer is subscribed and NATS is connected: the source then
    /// stops listening and reading on every commit.
    consuming: AtomicBool,
    /// Batches handed to the publisher task; bounded (a full queue drops the batch,
    /// and the consumers' gap check answers it with a read).
    outbox: tokio::sync::mpsc::Sender<publish::Outgoing>,
    /// Counters and gauges.
    metrics: Arc<Metrics>,
}

impl Relay {
    /// Connects lazily (the gateway starts whether NATS is up or not) and spawns the
    /// publisher and consumer tasks on `tasks`, which wake the source through
    /// `doorbell`.
    pub async fn start(
        url: &str,
        stream: &str,
        doorbell: Arc<Doorbell>,
        metrics: Arc<Metrics>,
        tasks: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Result<Arc<Relay>, RelayError> {
        let client = async_nats::ConnectOptions::new()
            .name("rowcast")
            .connection_timeout(NATS_DEADLINE)
            .request_timeout(Some(NATS_DEADLINE))
            .ping_interval(Duration::from_secs(5))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * 2u64.pow(attempts.min(4) as u32))
            })
            .connect(url)
            .await
            .map_err(|err| RelayError::Nats {
                what: "connect",
                source: err.into(),
            })?;
        let jetstream = jetstream::new(client.clone());
        let (outbox, outgoing) = tokio::sync::mpsc::channel(publish::OUTBOX);
        let relay = Arc::new(Relay {
            client,
            jetstream,
            stream: stream.to_owned(),
            subject: format!("{stream}.events"),
            publishing: AtomicBool::new(false),
            consuming: AtomicBool::new(false),
            outbox,
            metrics,
        });
        tasks.spawn(publish::run(Arc::clone(&relay), outgoing, shutdown.clone()));
        tasks.spawn(consume::run(Arc::clone(&relay), doorbell, shutdown));
        Ok(relay)
    }

    /// Whether NATS is connected now.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    /// Whether this replica consumes the relay (its source need not listen).
    pub fn consuming(&self) -> bool {
        self.consuming.load(Ordering::Acquire)
    }

    /// Whether this replica publishes (its source holds [`RELAY_LOCK`]).
    pub fn publishing(&self) -> bool {
        self.publishing.load(Ordering::Acquire)
    }

    /// Called by the source when it takes or loses [`RELAY_LOCK`].
    pub fn set_publishing(&self, publishing: bool) {
        if self.publishing.swap(publishing, Ordering::AcqRel) != publishing {
            self.metrics.relay_publisher.set(i64::from(publishing));
            if publishing {
                tracing::info!(stream = %self.stream, "this replica publishes to the relay");
            }
        }
    }

    fn set_consuming(&self, consuming: bool) {
        self.consuming.store(consuming, Ordering::Release);
        self.metrics.relay_consuming.set(i64::from(consuming));
    }

    /// Hands the events the source just appended (those after `after`) to the
    /// publisher task, if this replica publishes; never waits.
    pub fn offer(&self, after: u64, events: &[Arc<crate::event::Event>]) {
        if !self.publishing() || events.is_empty() {
            return;
        }
        let outgoing = publish::Outgoing {
            after,
            events: events.to_vec(),
        };
        if self.outbox.try_send(outgoing).is_err() {
            self.metrics.relay_publish_errors.inc();
        }
    }

    /// The stream, created with the defaults above if it does not exist (an operator
    /// who created it keeps their settings).
    async fn stream(&self) -> Result<jetstream::stream::Stream, RelayError> {
        let config = jetstream::stream::Config {
            name: self.stream.clone(),
            subjects: vec![self.subject.clone()],
            max_age: DEFAULT_MAX_AGE,
            max_bytes: DEFAULT_MAX_BYTES,
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            ..Default::default()
        };
        deadline("the stream", self.jetstream.get_or_create_stream(config))
            .await?
            .map_err(|err| RelayError::nats("stream")(err.into()))
    }
}

/// Runs a NATS step under [`NATS_DEADLINE`].
async fn deadline<T>(
    what: &'static str,
    step: impl std::future::Future<Output = T>,
) -> Result<T, RelayError> {
    tokio::time::timeout(NATS_DEADLINE, step)
        .await
        .map_err(|_| RelayError::Timeout(what))
}
