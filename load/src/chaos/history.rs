//! The checker's own copy of `realtime.change_log`, read as the run goes so retention
//! can never take a change before the checker has it, and the pruning that runs under
//! the clients (only ever of rows already copied).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_postgres::Client;

/// One captured change, as the database recorded it.
#[derive(Debug, Clone)]
pub struct Logged {
    /// The change id.
    pub id: u64,
    /// `INSERT`, `UPDATE`, `DELETE` or `TRUNCATE`.
    pub op: String,
    /// The new row (the old one for DELETE), absent for TRUNCATE.
    pub row: Option<Value>,
    /// The row before an UPDATE.
    pub old: Option<Value>,
}

/// A prune that deleted history: when, and the highest id it deleted.
#[derive(Debug, Clone, Copy)]
pub struct Pruned {
    /// When the prune began (it committed later).
    pub at: Instant,
    /// `realtime.retention.pruned_upto` after it.
    pub upto: u64,
}

/// What the checker knows of the log.
#[derive(Debug, Default)]
pub struct History {
    /// Every change after the clients' start, in id order.
    pub changes: Vec<Logged>,
    /// Every prune that deleted something.
    pub prunes: Vec<Pruned>,
}

impl History {
    /// The highest id copied, or `base`.
    pub fn cursor(&self, base: u64) -> u64 {
        self.changes.last().map_or(base, |c| c.id)
    }
}

const DEADLINE: Duration = Duration::from_secs(5);

/// Copies every change above the cursor into `history`; returns the new cursor.
pub async fn copy(db: &Client, history: &Mutex<History>, base: u64) -> Result<u64, String> {
    loop {
        let cursor = history.lock().unwrap().cursor(base);
        let rows = tokio::time::timeout(
            DEADLINE,
            db.query(
                r#"SELECT id, op, row::text, old::text FROM realtime.change_log
                   WHERE "table" = 'orders' AND id > $1 ORDER BY id LIMIT 5000"#,
                &[&(cursor as i64)],
            ),
        )
        .await
        .map_err(|_| "change_log read timed out".to_string())?
        .map_err(|e| e.to_string())?;
        let done = rows.len() < 5000;
        let mut h = history.lock().unwrap();
        for row in rows {
            let parse = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
            h.changes.push(Logged {
                id: row.get::<_, i64>(0) as u64,
                op: row.get(1),
                row: parse(row.get(2)),
                old: parse(row.get(3)),
            });
        }
        if done {
            return Ok(h.cursor(base));
        }
    }
}

/// Copies, then deletes the oldest copied changes, keeping the newest `keep` of them.
/// Deletes only rows at or below the cursor: ids become visible in commit order, so no
/// row at or below it can appear later, and `realtime.prune` takes the oldest first.
pub async fn prune(
    db: &Client,
    history: &Mutex<History>,
    base: u64,
    keep: u64,
) -> Result<u64, String> {
    let cursor = copy(db, history, base).await?;
    let horizon = cursor.saturating_sub(keep) as i64;
    // A reset can only be justified by a prune that began before it arrived.
    let began = Instant::now();
    let run = async {
        let count: i64 = db
            .query_one(
                "SELECT count(*) FROM realtime.change_log WHERE id <= $1",
                &[&horizon],
            )
            .await?
            .get(0);
        if count == 0 {
            return Ok(0);
        }
        db.query_one(
            "SELECT realtime.prune(NULL, 0, $1::int)",
            &[&(count.min(i64::from(i32::MAX)) as i32)],
        )
        .await?;
        let upto: i64 = db
            .query_one("SELECT pruned_upto FROM realtime.retention", &[])
            .await?
            .get(0);
        Ok::<i64, tokio_postgres::Error>(upto)
    };
    let upto = tokio::time::timeout(DEADLINE, run)
        .await
        .map_err(|_| "prune timed out".to_string())?
        .map_err(|e| e.to_string())?;
    if upto > 0 {
        history.lock().unwrap().prunes.push(Pruned {
            at: began,
            upto: upto as u64,
        });
    }
    Ok(upto as u64)
}
