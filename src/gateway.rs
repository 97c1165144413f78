//! The top of the tree, wiring only: builds the PostgreSQL pieces, the ring, the hub
//! and the shared state the transports read; starts the source and retention.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::Config;
use crate::filter::{Catalog, StreamParams};
use crate::hub::Hub;
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::pg::capture::{self, CaptureMode, CaptureStatus};
use crate::pg::catalog::Pace;
use crate::pg::changes::{self, ChangeLog};
use crate::pg::connect::Waiting;
use crate::pg::doorbell::Doorbell;
use crate::pg::embedded::Embedded;
use crate::pg::pool::REQUEST_DEADLINE;
use crate::pg::snapshot::Snapshotter;
use crate::pg::source::{Source, SourceStatus};
use crate::pg::startup::{self, Deadline, StartError, STARTUP_DEADLINE};
use crate::pg::{retention, DbError, Pool};
use crate::relay::Relay;
use crate::session::{self, CatchUp, Session, Snapshots};

/// Everything the transports share.
#[derive(Debug)]
pub struct Gateway {
    /// The settings it runs with.
    pub config: Config,
    /// The ring of recent events.
    pub log: Arc<EventLog>,
    /// Subscribers to wake.
    pub hub: Arc<Hub>,
    /// Connections for REST calls, catch-up reads and retention.
    pub pool: Arc<Pool>,
    /// Where sessions read history the ring no longer holds (`change_log`).
    pub catch_up: Arc<dyn CatchUp>,
    /// What every stream loop needs (heartbeat period, shutdown, metrics), held once
    /// here so that each idle stream holds a reference, not a copy.
    pub pace: session::Pace,
    /// Where `snapshot=true` sessions read the rows that match now.
    pub snapshots: Arc<dyn Snapshots>,
    /// Whether the source is live, and the tracked tables.
    pub source: Arc<SourceStatus>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// WAL capture's refusal and metrics (idle in trigger mode).
    pub capture: Arc<CaptureStatus>,
    /// Who may write (and, with `--auth-streams`, read).
    pub auth: Auth,
    /// Cancelled on SIGINT/SIGTERM: every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// The background tasks (source, retention), awaited at shutdown.
    tasks: TaskTracker,
    /// The private server, when the embedded default is in use; stopped at exit.
    embedded: Option<Embedded>,
}

impl Gateway {
    /// Finds the database, prepares the schema and starts the source and retention.
    pub async fn start(config: Config) -> Result<Arc<Gateway>, StartError> {
        let (target, embedded) = startup::resolve_database(&config).await?;
        let deadline = Deadline::after(STARTUP_DEADLINE);
        // A connection lost mid-step (a restart, a terminated backend) is an outage
        // like a refused connection: start-up tries again until its deadline.
        let (head, catalog, mode) = deadline
            .retry_lost(|| async {
                startup::prepare_schema(&target, &config, &deadline).await?;
                let client = deadline.connect(&target).await?;
                deadline
                    .step(&target, Waiting::FirstQuery, async {
                        Ok((
                            changes::head(&client).await?,
                            changes::catalog(&client).await?,
                            capture::switch::mode(&client).await,
                        ))
                    })
                    .await
            })
            .await?;
        if config.capture == CaptureMode::Trigger && matches!(mode, Ok(CaptureMode::Wal)) {
            tracing::warn!("the database is in WAL capture mode: this gateway (--capture trigger) serves changes but does not capture them; run a gateway with --capture wal, or `rowcast capture trigger`");
        }

        let log = Arc::new(EventLog::new(config.ring_capacity, head));
        let hub = Hub::new();
        let metrics = Arc::new(Metrics::default());
        metrics.catalog_reads.inc();
        let source = SourceStatus::new(catalog);
        let pool = Pool::new(target.clone(), config.pool_size);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        // Shared by the source's connections and the relay consumer: both ring it.
        let doorbell = Arc::new(Doorbell::default());
        let relay = match &config.relay {
            Some(url) => Some(
                Relay::start(
                    url,
                    &config.relay_stream,
                    Arc::clone(&doorbell),
                    Arc::clone(&metrics),
                    &tasks,
                    shutdown.clone(),
                )
                .await?,
            ),
            None => None,
        };
        let reader = Source {
            target,
            doorbell,
            relay,
            mode: config.source,
            poll_interval: config.poll_interval,
            coalesce: config.coalesce,
            log: Arc::clone(&log),
            hub: Arc::clone(&hub),
            status: Arc::clone(&source),
            metrics: Arc::clone(&metrics),
        };
        let capture = Arc::new(CaptureStatus::default());
        if config.capture == CaptureMode::Wal {
            let capturer = capture::wal::Capturer {
                capture: config
                    .capture_url
                    .as_deref()
                    .cloned()
                    .unwrap_or_else(|| reader.target.clone()),
                target: reader.target.clone(),
                slot: config.capture_slot.clone(),
                status: Arc::clone(&capture),
            };
            tasks.spawn(capturer.switch_and_run(shutdown.clone()));
        }
        tasks.spawn(reader.run(shutdown.clone()));
        tasks.spawn(retention::run(
            Arc::clone(&pool),
            retention::Policy {
                max_age: config.retention,
                max_rows: config.retention_rows,
                period: config.retention_interval,
            },
            Arc::clone(&metrics),
            shutdown.clone(),
        ));
        tracing::info!(
            head,
            ring_capacity = config.ring_capacity,
            "gateway started"
        );
        let auth = Auth::new(config.auth_token.clone(), config.jwt_secret.clone());
        if auth.is_on() {
            tracing::info!(streams = config.auth_streams, "authentication is on");
        }
        let catch_up = Arc::new(ChangeLog::new(Arc::clone(&pool)));
        let pace = session::Pace {
            heartbeat: config.heartbeat,
            shutdown: shutdown.clone(),
            metrics: Arc::clone(&metrics),
        };
        let snapshots = Arc::new(Snapshotter::new(Arc::clone(&pool), config.pool_size));
        Ok(Arc::new(Gateway {
            auth,
            config,
            log,
            hub,
            pool,
            catch_up,
            pace,
            snapshots,
            source,
            metrics,
            capture,
            shutdown,
            tasks,
            embedded,
        }))
    }

    /// The tracked tables as read no earlier than `arrived` (a request's arrival):
    /// the cached copy if a read started since, else a new read, shared with
    /// concurrent callers (and spaced, with [`Pace::Spaced`]); finished within the
    /// request deadline.
    pub async fn catalog_since(
        &self,
        arrived: Instant,
        pace: Pace,
    ) -> Result<Arc<Catalog>, DbError> {
        let deadline = arrived + REQUEST_DEADLINE;
        let read = self.source.catalogs().since(arrived, pace, || async {
            self.metrics.catalog_reads.inc();
            let client = self.pool.get_by(deadline).await?;
            self.pool.within(deadline, changes::catalog(&*client)).await
        });
        match tokio::time::timeout_at(deadline, read).await {
            Ok(catalog) => catalog,
            Err(_) => Err(DbError::Timeout {
                target: self.pool.target().to_string(),
                waiting_for: Waiting::Query,
                after: arrived.elapsed(),
            }),
        }
    }

    /// Opens a stream session on the shared ring, hub and catch-up reader.
    pub fn open_session(&self, params: StreamParams) -> Session {
        Session::open(
            Arc::clone(&self.log),
            &self.hub,
            Arc::clone(&self.catch_up),
            Arc::clone(&self.snapshots),
            params,
        )
    }

    /// Stops the background tasks and the private server, if any.
    pub async fn stop(&self) {
        self.shutdown.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        if let Some(server) = &self.embedded {
            if let Err(err) = server.stop() {
                tracing::warn!(%err, "stopping the private PostgreSQL");
            } else {
                tracing::info!("stopped the private PostgreSQL");
            }
        }
    }
}
