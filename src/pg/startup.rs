//! Start-up against the database: which database (the configured one, or a private
//! server), connecting with retries, and the schema, every step within one deadline.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::types::Type;

use super::connect::Waiting;
use super::embedded::{self, Embedded, EmbeddedError};
use super::{migrate, DbError, DbTarget};
use crate::config::{Config, Database};

/// How long start-up keeps trying to reach the database before it gives up.
pub const STARTUP_DEADLINE: Duration = Duration::from_secs(10);
/// Why start-up could not reach a database.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The private server failed.
    #[error("private PostgreSQL: {0}")]
    Embedded(#[from] EmbeddedError),
    /// The relay could not be set up (a URL the NATS client refuses).
    #[error("relay: {0}")]
    Relay(#[from] crate::relay::RelayError),
}

/// The database to use, and the private server behind it if one was started.
pub async fn resolve_database(config: &Config) -> Result<(DbTarget, Option<Embedded>), StartError> {
    match &config.database {
        Database::Target(target) => Ok((DbTarget::clone(target), None)),
        Database::Default => {
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
                "no database configured: started a private PostgreSQL (set DATABASE_URL or PG* to use another)"
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

    /// Runs `steps` (connect and queries), again while they fail because the
    /// connection was lost and the deadline leaves time; any other error ends it.
    pub async fn retry_lost<T, F, Fut>(&self, mut steps: F) -> Result<T, DbError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let mut wait = Duration::from_millis(100);
        loop {
            match steps().await {
                Err(err) if err.is_connection_lost() && Instant::now() + wait < self.at => {
                    tracing::warn!(%err, "database connection lost during start-up; trying again");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
                result => return result,
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
