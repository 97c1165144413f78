//! Retention: prunes `change_log` by age and row count, in small batches, on every
//! replica without contention.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{changes, DbError, Pool};
use crate::metrics::Metrics;

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

/// What retention keeps, and how often it looks.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Rows committed longer ago than this go.
    pub max_age: Duration,
    /// Rows more than this many ids below the newest go (optional).
    pub max_rows: Option<u64>,
    /// The time between passes.
    pub period: Duration,
}

/// Prunes `change_log` every period, in small batches, until shutdown. Every replica
/// runs this; `realtime.prune` lets one of them delete at a time and the others return
/// at once, so replicas never contend for rows. The oldest-id gauge is read at once
/// (a plain read, no lock) so `/metrics` has it before the first pass.
pub async fn run(
    pool: Arc<Pool>,
    policy: Policy,
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
