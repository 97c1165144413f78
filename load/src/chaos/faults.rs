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
    /// `pg_terminate_backend` of the walsender: the capturer's replication connection
    /// (WAL mode only).
    TerminateWalsender,
    /// Some clients stall, and retention deletes history under them mid-stall, keeping
    /// only the newest 10 changes: their positions are gone, so they must get a
    /// (justified) `reset`.
    StallPrune,
    /// Replica 0 cut off from PostgreSQL: every packet on its PostgreSQL link dropped
    /// (namespace only).
    PartitionPg,
    /// Packet loss and delay (`tc netem`) between replica 0 and PostgreSQL.
    LossyPg,
    /// Replica 0 cut off from clients and nginx.
    PartitionClients,
    /// Packet loss and delay between replica 0 and clients and nginx.
    LossyClients,
}

/// All kinds, for the report.
pub const KINDS: [Kind; 14] = [
    Kind::KillReplica,
    Kind::PauseReplica,
    Kind::PgFastRestart,
    Kind::PgImmediateRestart,
    Kind::TerminateBackends,
    Kind::ClientStall,
    Kind::Prune,
    Kind::KillCapturer,
    Kind::TerminateWalsender,
    Kind::StallPrune,
    Kind::PartitionPg,
    Kind::LossyPg,
    Kind::PartitionClients,
    Kind::LossyClients,
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
/// WAL mode a share of replica kills hit the capturer or its walsender; with a network
/// namespace (`net`) a share are partitions and netem on replica 0's links.
pub fn plan(seed: u64, run_ms: u64, mean_gap_ms: u64, wal: bool, net: bool) -> Vec<Planned> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut at = 2_000;
    let mut out = Vec::new();
    loop {
        at += rng.u64(mean_gap_ms / 4..mean_gap_ms * 7 / 4);
        if at >= run_ms {
            return out;
        }
        let kind = match rng.u8(..if net { 26 } else { 21 }) {
            0 if wal => Kind::KillCapturer,
            1 if wal => Kind::TerminateWalsender,
            0..=4 => Kind::KillReplica,
            5..=8 => Kind::PauseReplica,
            9 | 10 => Kind::PgFastRestart,
            11 => Kind::PgImmediateRestart,
            12..=14 => Kind::TerminateBackends,
            15..=17 => Kind::ClientStall,
            18 | 19 => Kind::Prune,
            20 => Kind::StallPrune,
            21 => Kind::PartitionPg,
            22 | 23 => Kind::LossyPg,
            24 => Kind::PartitionClients,
            _ => Kind::LossyClients,
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
    /// Replica 0's network namespace, when there is one.
    pub netns: Option<String>,
    /// Whether `iptables` works in the namespace (partitions and random loss drop with it).
    pub iptables: bool,
    /// Whether the kernel has `netem` (else delay is a token bucket's queueing delay).
    pub netem: bool,
    /// One fault at a time on each link: PostgreSQL's, the clients'.
    pub links: [AsyncMutex<()>; 2],
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
        Kind::TerminateWalsender => {
            let n = terminate_where(&t.database_url, "backend_type = 'walsender'").await;
            (true, format!("terminated {n} walsender(s)"))
        }
        Kind::ClientStall => (true, stall(&t, p, Duration::ZERO, false)),
        Kind::Prune => (true, prune(&t, 20 + p.target % 400).await),
        Kind::StallPrune => {
            // Stalled long enough to fall out of the replicas' rings (a few seconds of
            // writes), then dropped, so they resume from where they stopped.
            let note = stall(&t, p, STALL_PRUNE_EXTRA, true);
            tokio::time::sleep(t.setup.send_timeout + hold / 2 + STALL_PRUNE_EXTRA).await;
            (true, format!("{note}; {}", prune(&t, 10).await))
        }
        Kind::PartitionPg | Kind::LossyPg | Kind::PartitionClients | Kind::LossyClients => {
            link_fault(&t, p, hold).await
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

/// How much longer than a plain stall a [`Kind::StallPrune`] stall lasts.
const STALL_PRUNE_EXTRA: Duration = Duration::from_secs(5);

/// Stalls 1 in 50 clients (at least one) for the send timeout plus the hold plus
/// `extra`; with `drop`, each drops its connection when the stall ends.
fn stall(t: &Targets, p: Planned, extra: Duration, drop: bool) -> String {
    use std::sync::atomic::Ordering::Relaxed;
    let mut rng = fastrand::Rng::with_seed(p.target);
    let n = (t.clients.len() / 50).max(1);
    let until = ms(t.start) as i64
        + t.setup.send_timeout.as_millis() as i64
        + p.hold_ms as i64
        + extra.as_millis() as i64;
    for _ in 0..n {
        let c = &t.clients[rng.usize(..t.clients.len())];
        c.drop_after_stall.store(drop, Relaxed);
        c.stall_until_ms.store(until, Relaxed);
    }
    format!("{n} clients stall until {until} ms")
}

/// Prunes history, keeping the newest `keep` changes; the note says how far.
async fn prune(t: &Targets, keep: u64) -> String {
    match connect(&t.database_url).await {
        Some(db) => match crate::history::prune(&db, &t.history, t.base, keep).await {
            Ok(upto) => format!("pruned up to {upto}"),
            Err(e) => format!("prune failed: {e}"),
        },
        None => "prune: no connection".into(),
    }
}

/// A partition or netem on one of replica 0's links, held, then lifted. Both ends of
/// the veth pair get it, so both directions suffer.
async fn link_fault(t: &Targets, p: Planned, hold: Duration) -> (bool, String) {
    let Some(ns) = t.netns.as_deref() else {
        return (false, "no network namespace".into());
    };
    let pg = matches!(p.kind, Kind::PartitionPg | Kind::LossyPg);
    let (host, inner) = if pg {
        cluster::PG_LINK
    } else {
        cluster::CLIENT_LINK
    };
    let Ok(_guard) = t.links[usize::from(!pg)].try_lock() else {
        return (false, format!("link {inner} busy"));
    };
    let partition = matches!(p.kind, Kind::PartitionPg | Kind::PartitionClients);
    // Degradation parameters from the draw: 50–400 ms delay, 5–30% loss.
    let delay = 50 + p.target % 351;
    let loss = 5 + (p.target >> 12) % 26;
    let ends = [(Some(ns), inner), (None, host)];
    let (what, applied) = if partition && t.iptables {
        (
            "partition (iptables DROP)".to_string(),
            drop_rules(ns, inner, "-I", None).await,
        )
    } else if partition {
        let netem = ["loss", "100%"];
        (
            "partition (netem loss 100%)".into(),
            qdisc(&ends, "add", &netem).await,
        )
    } else if t.netem {
        let (d, j, l) = (
            format!("{delay}ms"),
            format!("{}ms", delay / 4),
            format!("{loss}%"),
        );
        let netem = ["netem", "delay", &d, &j, "loss", &l];
        (
            format!("netem delay {delay}±{j} loss {loss}%"),
            qdisc(&ends, "add", &netem).await,
        )
    } else {
        // No netem in this kernel: loss from an iptables random DROP, delay as the
        // queueing delay of a token bucket (up to `delay` ms of backlog, then drops).
        let rate = format!("{}kbit", 256 << ((p.target >> 20) % 4));
        let latency = format!("{delay}ms");
        let tbf = ["tbf", "rate", &rate, "burst", "32kb", "latency", &latency];
        let ok = drop_rules(ns, inner, "-I", Some(loss)).await & qdisc(&ends, "add", &tbf).await;
        (
            format!("loss {loss}% (iptables) + tbf rate {rate} latency {latency}"),
            ok,
        )
    };
    tokio::time::sleep(hold).await;
    let lifted = if partition && t.iptables {
        drop_rules(ns, inner, "-D", None).await
    } else if partition || t.netem {
        qdisc(&ends, "del", &[]).await
    } else {
        drop_rules(ns, inner, "-D", Some(loss)).await & qdisc(&ends, "del", &[]).await
    };
    (
        applied,
        format!(
            "{what} on {inner}: applied {}, lifted {}",
            ok_word(applied),
            ok_word(lifted)
        ),
    )
}

/// `tc qdisc add|del dev <dev> root <args>` on both ends of a link.
async fn qdisc(ends: &[(Option<&str>, &str); 2], op: &str, args: &[&str]) -> bool {
    let mut ok = true;
    for &(side, dev) in ends {
        let mut all = vec!["qdisc", op, "dev", dev, "root"];
        if op == "add" {
            all.extend_from_slice(args);
        }
        ok &= cluster::net(side, "tc", &all).await;
    }
    ok
}

/// Inserts (`-I`) or deletes (`-D`) DROP rules on `dev` inside the namespace, both
/// directions: every packet (a partition), or `loss` percent of them at random.
async fn drop_rules(ns: &str, dev: &str, op: &str, loss: Option<u64>) -> bool {
    let p = loss.map(|l| format!("{:.2}", l as f64 / 100.0));
    let mut ok = true;
    for (chain, dir) in [("INPUT", "-i"), ("OUTPUT", "-o")] {
        let mut args = vec!["-w", op, chain, dir, dev];
        if let Some(p) = &p {
            args.extend(["-m", "statistic", "--mode", "random", "--probability", p]);
        }
        args.extend(["-j", "DROP"]);
        ok &= cluster::net(Some(ns), "iptables", &args).await;
    }
    ok
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
    terminate_where(
        url,
        "backend_type = 'client backend' AND pid <> pg_backend_pid()
         AND application_name NOT LIKE 'chaos%'",
    )
    .await
}

/// `pg_terminate_backend` of every backend `condition` (SQL on `pg_stat_activity`)
/// selects; how many.
async fn terminate_where(url: &str, condition: &str) -> u64 {
    let Some(db) = connect(url).await else {
        return 0;
    };
    let sql =
        format!("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE {condition}");
    let run = db.query_one(&sql, &[]);
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
        let a = plan(7, 600_000, 3_000, true, true);
        assert!(a.len() > 100);
        assert_eq!(key(&a), key(&plan(7, 600_000, 3_000, true, true)));
        assert_ne!(key(&a), key(&plan(8, 600_000, 3_000, true, true)));
        let plain = plan(7, 600_000, 3_000, false, false);
        let only = [
            Kind::KillCapturer,
            Kind::TerminateWalsender,
            Kind::PartitionPg,
            Kind::LossyPg,
            Kind::PartitionClients,
            Kind::LossyClients,
        ];
        assert!(!plain.iter().any(|p| only.contains(&p.kind)));
        for kind in KINDS {
            assert!(a.iter().any(|p| p.kind == kind), "{kind:?} never drawn");
        }
    }
}
