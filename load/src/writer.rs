//! The writers: `--rate` single-row commits per second into `load_events`, spread
//! over `--writers` connections, each row carrying the time it was sent.
//!
//! Writes follow a fixed schedule (slot `j` at `start + j / rate`), so a slow commit
//! delays nothing but itself: up to `--writer-depth` statements are in flight per
//! connection (tokio-postgres pipelines them). How far behind schedule a write had to
//! start is reported, never hidden.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::sync::Semaphore;
use tokio_postgres::{Client, NoTls};

use crate::{msg, now_us};

/// The table the harness writes and the clients follow.
pub const TABLE: &str = "load_events";

/// What the set-up does: create the table if needed and put it under capture.
const SETUP: &str = "CREATE TABLE IF NOT EXISTS load_events (
        id bigserial PRIMARY KEY,
        sent_at_us bigint NOT NULL,
        pad text NOT NULL DEFAULT ''
    );
    SELECT realtime.track('load_events');";

const INSERT: &str = "INSERT INTO load_events (sent_at_us, pad) VALUES ($1, $2) RETURNING id";

/// Connects with the driver spawned on the local task set.
pub async fn connect(url: &str) -> Result<Client, String> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| format!("cannot connect to {}: {e}", redact(url)))?;
    tokio::task::spawn_local(async move {
        if let Err(err) = connection.await {
            eprintln!("rowcast-load: database connection: {err}");
        }
    });
    Ok(client)
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Creates and tracks `load_events`; returns the highest id it already holds.
pub async fn set_up(client: &Client) -> Result<u64, String> {
    client
        .batch_execute(SETUP)
        .await
        .map_err(|e| format!("set-up of {TABLE} (is the rowcast schema migrated?): {e}"))?;
    let base: i64 = client
        .query_one("SELECT coalesce(max(id), 0) FROM load_events", &[])
        .await
        .and_then(|row| row.try_get(0))
        .map_err(|e| format!("reading the highest {TABLE} id: {e}"))?;
    Ok(base.max(0) as u64)
}

/// How to write.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The database.
    pub url: String,
    /// Commits per second, over all writers.
    pub rate: f64,
    /// Connections.
    pub writers: usize,
    /// Statements in flight per connection.
    pub depth: usize,
    /// How long to write.
    pub duration: Duration,
    /// Bytes of padding per row.
    pub pad: usize,
}

/// What the writers did.
#[derive(Debug)]
pub struct Outcome {
    /// The ids committed, sorted.
    pub committed: Vec<u64>,
    /// Statements that failed.
    pub errors: u64,
    /// The first failure, for the report.
    pub first_error: Option<String>,
    /// Send → commit acknowledged, µs.
    pub commit_rtt: Histogram<u64>,
    /// The most a write started behind its slot, µs.
    pub max_lag_us: u64,
    /// When the first slot was due and when the last write finished (µs since epoch).
    pub started_us: i64,
    /// See `started_us`.
    pub ended_us: i64,
}

struct Shared {
    committed: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    commit_rtt: Histogram<u64>,
    max_lag_us: u64,
}

/// Connects the writers (before the clock starts), then writes to the schedule.
pub async fn run(plan: &Plan) -> Result<Outcome, String> {
    let total = (plan.rate * plan.duration.as_secs_f64()).round() as u64;
    let writers = plan.writers.max(1);
    let mut clients = Vec::with_capacity(writers);
    for _ in 0..writers {
        let client = connect(&plan.url).await?;
        let statement = client
            .prepare(INSERT)
            .await
            .map_err(|e| format!("preparing the insert: {e}"))?;
        clients.push((Rc::new(client), statement));
    }
    let shared = Rc::new(RefCell::new(Shared {
        committed: Vec::with_capacity(total as usize),
        errors: 0,
        first_error: None,
        commit_rtt: msg::new_histogram(),
        max_lag_us: 0,
    }));
    let pad = Rc::new("x".repeat(plan.pad));
    let start = tokio::time::Instant::now() + Duration::from_millis(50);
    let started_us = now_us() + 50_000;
    let interval = if plan.rate > 0.0 {
        Duration::from_secs_f64(1.0 / plan.rate)
    } else {
        Duration::ZERO
    };
    let mut tasks = Vec::with_capacity(writers);
    for (w, (client, statement)) in clients.into_iter().enumerate() {
        let shared = Rc::clone(&shared);
        let pad = Rc::clone(&pad);
        let gate = std::sync::Arc::new(Semaphore::new(plan.depth.max(1)));
        tasks.push(tokio::task::spawn_local(async move {
            let mut inflight = Vec::new();
            for slot in (w as u64..total).step_by(writers) {
                let due = start + interval.mul_f64(slot as f64);
                tokio::time::sleep_until(due).await;
                let Ok(permit) = std::sync::Arc::clone(&gate).acquire_owned().await else {
                    break;
                };
                let lag = tokio::time::Instant::now().saturating_duration_since(due);
                {
                    let mut s = shared.borrow_mut();
                    s.max_lag_us = s.max_lag_us.max(lag.as_micros() as u64);
                }
                let (client, statement) = (Rc::clone(&client), statement.clone());
                let (shared, pad) = (Rc::clone(&shared), Rc::clone(&pad));
                inflight.push(tokio::task::spawn_local(async move {
                    let sent = now_us();
                    let result = client.query_one(&statement, &[&sent, &*pad]).await;
                    let rtt = (now_us() - sent).max(1) as u64;
                    let mut s = shared.borrow_mut();
                    match result.and_then(|row| row.try_get::<_, i64>(0)) {
                        Ok(id) => {
                            s.committed.push(id as u64);
                            s.commit_rtt.saturating_record(rtt);
                        }
                        Err(err) => {
                            s.errors += 1;
                            if s.first_error.is_none() {
                                s.first_error = Some(err.to_string());
                            }
                        }
                    }
                    drop(permit);
                }));
                if inflight.len() >= 1024 {
                    inflight.retain(|t: &tokio::task::JoinHandle<()>| !t.is_finished());
                }
            }
            for task in inflight {
                let _ = task.await;
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let ended_us = now_us();
    let mut shared = shared.borrow_mut();
    let mut committed = std::mem::take(&mut shared.committed);
    committed.sort_unstable();
    Ok(Outcome {
        committed,
        errors: shared.errors,
        first_error: shared.first_error.take(),
        commit_rtt: shared.commit_rtt.clone(),
        max_lag_us: shared.max_lag_us,
        started_us,
        ended_us,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(
            redact("postgres://u:secret@h:5432/db"),
            "postgres://u:***@h:5432/db"
        );
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
    }
}
