//! The fault schedule, drawn in full from the seed before the run (so a seed names one
//! schedule), and its execution: faults overlap, each is logged with its start and the
//! moment it was lifted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Mutex as AsyncMutex;

use crate::client::Shared;
use crate::cluster::{self, Replica, Setup};

/// A kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// SIGKILL a replica, restart it after the hold.
    KillReplica,
    /// SIGSTOP a replica, SIGCONT after the hold.
    PauseReplica,
    /// `pg_ctl restart -m fast`.
    PgFastRestart,
    /// `pg_ctl restart -m immediate` (crash recovery).
    PgImmediateRestart,
    /// `pg_terminate_backend` of every rowcast connection.
    TerminateBackends,
    /// Some clients stop reading for longer than `--send-timeout`.
    ClientStall,
    /// Retention deletes old history under the clients.
    Prune,
    /// SIGKILL the replica holding the WAL capturer lock, restart it after the hold
    /// (WAL mode only).
    KillCapturer,
}

/// All kinds, for the report.
pub const KINDS: [Kind; 8] = [
    Kind::KillReplica,
    Kind::PauseReplica,
    Kind::PgFastRestart,
    Kind::PgImmediateRestart,
    Kind::TerminateBackends,
    Kind::ClientStall,
    Kind::Prune,
    Kind::KillCapturer,
];

/// One planned fault.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Planned {
    /// When, from the run's start.
    pub at_ms: u64,
    /// What.
    pub kind: Kind,
    /// Which replica, or a draw for the clients to stall.
    pub target: u64,
    /// How long it is held before it is lifted.
    pub hold_ms: u64,
}

/// Draws the schedule: on average one fault every `mean_gap_ms`, over `run_ms`; in
/// WAL mode a share of replica kills hit the capturer.
pub fn plan(seed: u64, run_ms: u64, mean_gap_ms: u64, wal: bool) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = 2_000;
    let mut out = Vec::new();
    loop {
        at += rng.u64(mean_gap_ms / 4..mean_gap_ms * 7 / 4);
        if at >= run_ms {
            return out;
        }
        let kind = match rng.u8(..20) {
            0 | 1 if wal => Kind::KillCapturer,
            0..=4 => Kind::KillReplica,
            5..=8 => Kind::PauseReplica,
            9 | 10 => Kind::PgFastRestart,
            11 => Kind::PgImmediateRestart,
            12..=14 => Kind::TerminateBackends,
            15..=17 => Kind::ClientStall,
            _ => Kind::Prune,
        };
        out.push(Planned {
            at_ms: at,
            kind,
            target: rng.u64(..1 << 32),
            hold_ms: rng.u64(300..4_000),
        });
    }
}

/// What happened to one planned fault.
#[derive(Debug, Clone, Serialize)]
pub struct Done {
    /// The plan.
    #[serde(flatten)]
    pub planned: Planned,
    /// When it was applied, ms from the start.
    pub started_ms: u64,
    /// When it was lifted, ms from the start (`None`: skipped, its target was busy).
    pub lifted_ms: Option<u64>,
    /// A note: what it hit, or why it was skipped.
    pub note: String,
    /// Until every client was live again after the lift, ms.
    pub recovery_ms: Option<u64>,
}

/// What faults act on.
pub struct Targets {
    /// How replicas are started.
    pub setup: Setup,
    /// The replicas; a lock each, so two faults never hit one replica at once.
    pub replicas: Vec<Arc<AsyncMutex<Replica>>>,
    /// One PostgreSQL restart at a time.
    pub postgres: AsyncMutex<()>,
    /// The clients (for stalls).
    pub clients: Vec<Arc<Shared>>,
    /// The run's start.
    pub start: Instant,
    /// The database, for terminate and prune.
    pub database_url: String,
    /// The checker's history (pruning copies first).
    pub history: Arc<std::sync::Mutex<crate::history::History>>,
    /// The clients' start position.
    pub base: u64,
}

fn ms(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Applies one fault, holds it, lifts it.
pub async fn apply(t: Arc<Targets>, p: Planned) -> Done {
    let started_ms = ms(t.start);
    let hold = Duration::from_millis(p.hold_ms);
    let (lifted, note) = match p.kind {
        Kind::KillReplica | Kind::PauseReplica | Kind::KillCapturer => {
            let mut i = (p.target % t.replicas.len() as u64) as usize;
            if p.kind == Kind::KillCapturer {
                for (j, r) in t.replicas.iter().enumerate() {
                    // A replica another fault holds is not the capturer now.
                    let Ok(port) = r.try_lock().map(|r| r.port) else {
                        continue;
                    };
                    if cluster::is_capturer(port).await {
                        i = j;
                    }
                }
            }
            match t.replicas[i].try_lock() {
                Err(_) => (false, format!("replica {i} busy")),
                Ok(mut r) => {
                    if p.kind != Kind::PauseReplica {
                        r.kill().await;
                        tokio::time::sleep(hold).await;
                        match r.restart(&t.setup, i) {
                            Ok(()) => (true, format!("replica {i} killed and restarted")),
                            Err(e) => (true, format!("replica {i} restart failed: {e}")),
                        }
                    } else if let Some(pid) = r.pid() {
                        cluster::signal(pid, "STOP").await;
                        tokio::time::sleep(hold).await;
                        cluster::signal(pid, "CONT").await;
                        (true, format!("replica {i} stopped and continued"))
                    } else {
                        (false, format!("replica {i} not running"))
                    }
                }
            }
        }
        Kind::PgFastRestart | Kind::PgImmediateRestart => match t.postgres.try_lock() {
            Err(_) => (false, "postgres busy".into()),
            Ok(_guard) => {
                let mode = if p.kind == Kind::PgFastRestart {
                    "fast"
                } else {
                    "immediate"
                };
                let ok = cluster::restart_postgres(&t.setup, mode).await;
                (true, format!("restart -m {mode}: {}", ok_word(ok)))
            }
        },
        Kind::TerminateBackends => {
            let n = terminate(&t.database_url).await;
            (true, format!("terminated {n}"))
        }
        Kind::ClientStall => {
            let mut rng = fastrand::Rng::with_seed(p.target);
            let n = (t.clients.len() / 50).max(1);
            let until =
                ms(t.start) as i64 + t.setup.send_timeout.as_millis() as i64 + p.hold_ms as i64;
            for _ in 0..n {
                let c = &t.clients[rng.usize(..t.clients.len())];
                c.stall_until_ms
                    .store(until, std::sync::atomic::Ordering::Relaxed);
            }
            (true, format!("{n} clients stall until {until} ms"))
        }
        Kind::Prune => {
            let note = match connect(&t.database_url).await {
                Some(db) => {
                    match crate::history::prune(&db, &t.history, t.base, 20 + p.target % 400).await
                    {
                        Ok(upto) => format!("pruned up to {upto}"),
                        Err(e) => format!("prune failed: {e}"),
                    }
                }
                None => "prune: no connection".into(),
            };
            (true, note)
        }
    };
    Done {
        planned: p,
        started_ms,
        lifted_ms: lifted.then(|| ms(t.start)),
        note,
        recovery_ms: None,
    }
}

fn ok_word(ok: bool) -> &'static str {
    if ok {
        "back"
    } else {
        "FAILED"
    }
}

/// A connection of the harness (named `chaos`, so terminate spares it).
pub async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    let (db, conn) = tokio::time::timeout(
        Duration::from_secs(5),
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .ok()?
    .ok()?;
    tokio::spawn(conn);
    Some(db)
}

async fn terminate(url: &str) -> u64 {
    let Some(db) = connect(url).await else {
        return 0;
    };
    let run = db.query_one(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
           AND application_name NOT LIKE 'chaos%'",
        &[],
    );
    match tokio::time::timeout(Duration::from_secs(5), run).await {
        Ok(Ok(row)) => row.get::<_, i64>(0) as u64,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_seed_draws_one_schedule_and_another_seed_another() {
        let key = |p: &Vec<Planned>| serde_json::to_string(p).unwrap();
        let a = plan(7, 600_000, 3_000, true);
        assert!(a.len() > 100);
        assert_eq!(key(&a), key(&plan(7, 600_000, 3_000, true)));
        assert_ne!(key(&a), key(&plan(8, 600_000, 3_000, true)));
        assert!(!plan(7, 600_000, 3_000, false)
            .iter()
            .any(|p| p.kind == Kind::KillCapturer));
        for kind in KINDS {
            assert!(a.iter().any(|p| p.kind == kind), "{kind:?} never drawn");
        }
    }
}
