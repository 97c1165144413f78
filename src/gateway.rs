//! The gateway's shared state and its start-up: find the database, migrate, start the
//! source and retention, and hand the pieces to the transports.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use tokio_postgres::types::Type;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::Auth;
use crate::config::{Config, Database};
use crate::filter::Catalog;
use crate::hub::Hub;
use crate::log::EventLog;
use crate::metrics::Metrics;
use crate::pg::catalog::Pace;
use crate::pg::connect::Waiting;
use crate::pg::embedded::{self, Embedded, EmbeddedError};
use crate::pg::pool::REQUEST_DEADLINE;
use crate::pg::source::{Source, SourceStatus};
use crate::pg::{changes, migrate, DbError, DbTarget, Pool};

/// How long start-up keeps trying to reach the database before it gives up.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// Rows deleted per retention statement: each is its own short transaction, so
/// writers (which never touch old rows) are not held up and replicas can interleave.
const RETENTION_BATCH: i32 = 1000;
/// How long one retention pass may run: every batch commits on its own, so a pass
/// cut short (a silent server) loses nothing and the next one goes on.
const RETENTION_PASS_DEADLINE: Duration = Duration::from_secs(60);
/// The oldest id still in `change_log`, or the head when retention emptied it.
const OLDEST_ID: &str = "SELECT coalesce(
        (SELECT min(id) FROM realtime.change_log),
        (SELECT pruned_upto FROM realtime.retention),
        0)";

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The private server failed.
    #[error("private PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
}

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
    /// Whether the source is live, and the tracked tables.
    pub source: Arc<SourceStatus>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Who may write (and, with `--auth-streams`, read).
    pub auth: Auth,
    /// Cancelled on SIGINT/SIGTERM: every long-lived task watches it.
    pub shutdown: CancellationToken,
    /// The background tasks (source, retention), awaited at shutdown.
    tasks: TaskTracker,
    /// The private server, when the embedded default is in use; stopped at exit.
    embedded: Option<Embedded>,
}

/// The database to use, and the private server behind it if one was started.
pub async fn resolve_database(config: &Config) -> Result<(DbTarget, Option<Embedded>), StartError> {
    match &config.database {
        Database::Target(target) => Ok((DbTarget::clone(target), None)),
        Database::Default => {
            let local = DbTarget::local_default();
            let answering = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(("127.0.0.1", 5432)),
            )
            .await
            .is_ok_and(|r| r.is_ok());
            if answering {
                tracing::info!(database = %local, "no database configured; using the PostgreSQL answering on localhost:5432 (set DATABASE_URL to choose another)");
                return Ok((local, None));
            }
            let dir = config.data_dir.join("pg");
            let options = embedded::Options::default();
            let server = tokio::task::spawn_blocking(move || Embedded::start(&dir, &options))
                .await
                .map_err(|e| EmbeddedError::Tool {
                    tool: "start-up".into(),
                    output: e.to_string(),
                })??;
            ensure_database(&server.target("postgres"), embedded::USER).await?;
            let target = server.target(embedded::USER);
            tracing::info!(
                data_dir = %server.data_dir().display(),
                database = %target,
                "no database configured and nothing on localhost:5432: started a private PostgreSQL (set DATABASE_URL or PG* to use another)"
            );
            Ok((target, Some(server)))
        }
    }
}

/// Creates database `name` on the server if it does not exist.
pub async fn ensure_database(admin: &DbTarget, name: &str) -> Result<(), DbError> {
    let deadline = Deadline::after(STARTUP_DEADLINE);
    let client = deadline.connect(admin).await?;
    deadline
        .step(admin, Waiting::FirstQuery, async {
            let exists = client
                .query_typed_opt(
                    "SELECT 1 FROM pg_database WHERE datname = $1",
                    &[(&name, Type::TEXT)],
                )
                .await?
                .is_some();
            if !exists {
                let quoted = name.replace('"', "\"\"");
                client
                    .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
                    .await?;
            }
            Ok(())
        })
        .await
}

/// One instant by which a sequence of database steps must be done: start-up's
/// connect, migrations and first reads all share it, so a server that accepts and
/// then stays silent ends start-up on time, with the step it was stuck in named.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    /// When the clock started, for "did not answer within …".
    started: Instant,
    /// When every step must be done.
    at: Instant,
}

impl Deadline {
    /// A deadline `limit` from now.
    pub fn after(limit: Duration) -> Deadline {
        let started = Instant::now();
        Deadline {
            started,
            at: started + limit,
        }
    }

    /// Connects, retrying transient failures until the deadline; permanent ones
    /// (credentials, missing database, TLS, bad URL) fail at once. Each attempt gets
    /// at most the target's connect timeout, so a server that hangs one attempt may
    /// still answer the next.
    pub async fn connect(&self, target: &DbTarget) -> Result<tokio_postgres::Client, DbError> {
        let mut wait = Duration::from_millis(100);
        loop {
            let attempt_by = self.at.min(Instant::now() + target.connect_timeout());
            match target.connect_until(attempt_by).await {
                Ok((client, connection)) => {
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(%err, "database connection ended");
                        }
                    });
                    return Ok(client);
                }
                Err(err) if err.is_permanent() || Instant::now() + wait >= self.at => {
                    return Err(match err {
                        // Say how long start-up waited in all, not the last attempt.
                        DbError::Timeout {
                            target,
                            waiting_for,
                            ..
                        } => DbError::Timeout {
                            target,
                            waiting_for,
                            after: self.started.elapsed(),
                        },
                        other => other,
                    });
                }
                Err(err) => {
                    tracing::debug!(%err, "database not reachable yet");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Runs one step (queries on a connected client), abandoned at the deadline with
    /// a [`DbError::Timeout`] naming it.
    pub async fn step<T>(
        &self,
        target: &DbTarget,
        waiting_for: Waiting,
        step: impl Future<Output = Result<T, DbError>>,
    ) -> Result<T, DbError> {
        match tokio::time::timeout_at(self.at, step).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Timeout {
                target: target.to_string(),
                waiting_for,
                after: self.started.elapsed(),
            }),
        }
    }
}

/// Applies or checks the schema, as `config.migrate` says, by `deadline`.
pub async fn prepare_schema(
    target: &DbTarget,
    config: &Config,
    deadline: &Deadline,
) -> Result<(), DbError> {
    let mut client = deadline.connect(target).await?;
    deadline
        .step(target, Waiting::Migrations, async {
            if config.migrate {
                let applied = migrate::apply(&mut client).await?;
                if !applied.is_empty() {
                    tracing::info!(?applied, "applied migrations");
                }
                Ok(())
            } else {
                migrate::check(&client).await
            }
        })
        .await
}

impl Gateway {
    /// Finds the database, prepares the schema and starts the source and retention.
    pub async fn start(config: Config) -> Result<Arc<Gateway>, StartError> {
        let (target, embedded) = resolve_database(&config).await?;
        let deadline = Deadline::after(STARTUP_DEADLINE);
        prepare_schema(&target, &config, &deadline).await?;
        let client = deadline.connect(&target).await?;
        let (head, catalog) = deadline
            .step(&target, Waiting::FirstQuery, async {
                Ok((
                    changes::head(&client).await?,
                    changes::catalog(&client).await?,
                ))
            })
            .await?;
        drop(client);

        let log = Arc::new(EventLog::new(config.ring_capacity, head));
        let hub = Hub::new();
        let metrics = Arc::new(Metrics::default());
        metrics.catalog_reads.inc();
        let source = SourceStatus::new(catalog);
        let pool = Pool::new(target.clone(), config.pool_size);
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();

        let reader = Source {
            target,
            mode: config.source,
            poll_interval: config.poll_interval,
            coalesce: config.coalesce,
            log: Arc::clone(&log),
            hub: Arc::clone(&hub),
            status: Arc::clone(&source),
            metrics: Arc::clone(&metrics),
        };
        tasks.spawn(reader.run(shutdown.clone()));
        tasks.spawn(retention(
            Arc::clone(&pool),
            RetentionPolicy {
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
        Ok(Arc::new(Gateway {
            auth,
            config,
            log,
            hub,
            pool,
            source,
            metrics,
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

/// What retention keeps, and how often it looks.
#[derive(Debug, Clone, Copy)]
struct RetentionPolicy {
    /// Rows committed longer ago than this go.
    max_age: Duration,
    /// Rows more than this many ids below the newest go (optional).
    max_rows: Option<u64>,
    /// The time between passes.
    period: Duration,
}

/// Prunes `change_log` every period, in small batches, until shutdown. Every replica
/// runs this; `realtime.prune` lets one of them delete at a time and the others return
/// at once, so replicas never contend for rows. The oldest-id gauge is read at once
/// (a plain read, no lock) so `/metrics` has it before the first pass.
async fn retention(
    pool: Arc<Pool>,
    policy: RetentionPolicy,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let observe = async {
        let client = pool.get().await?;
        let row = pool
            .within(client.deadline(), client.query_typed_one(OLDEST_ID, &[]))
            .await?;
        metrics.retention_oldest_id.set(row.try_get(0)?);
        Ok::<(), DbError>(())
    };
    tokio::select! {
        _ = shutdown.cancelled() => return,
        result = observe => if let Err(err) = result {
            tracing::debug!(%err, "reading the oldest change_log id failed");
        }
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(policy.period) => {}
        }
        let pass = async {
            let client = pool
                .get_by(Instant::now() + RETENTION_PASS_DEADLINE)
                .await?;
            let deadline = client.deadline();
            pool.within(deadline, async {
                let mut pruned = 0;
                loop {
                    let deleted = changes::prune(
                        &*client,
                        Some(policy.max_age),
                        policy.max_rows,
                        RETENTION_BATCH,
                    )
                    .await?;
                    metrics.pruned_rows.add(deleted);
                    pruned += deleted;
                    if deleted < RETENTION_BATCH as u64 {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
                let oldest: i64 = client.query_typed_one(OLDEST_ID, &[]).await?.try_get(0)?;
                metrics.retention_oldest_id.set(oldest);
                metrics.retention_passes.inc();
                tracing::debug!(pruned, oldest, "retention pass");
                Ok::<(), DbError>(())
            })
            .await
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            result = pass => if let Err(err) = result {
                tracing::warn!(%err, "retention pass failed");
            }
        }
    }
}
