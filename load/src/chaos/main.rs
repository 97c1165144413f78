//! `rowcast-chaos`: a randomized fault run against three rowcast replicas with an
//! exactly-once checker. `scripts/chaos.sh` starts the PostgreSQL cluster and runs it;
//! see RELIABILITY.md.
//!
//! - [`cluster`] — the replicas it owns, `pg_ctl`, `/readyz`.
//! - [`client`] — WebSocket and SSE clients that keep a view and resume anywhere.
//! - [`writer`] — SQL and REST writers.
//! - [`faults`] — the seeded schedule and each fault.
//! - [`history`] — the checker's copy of `change_log`, and pruning.
//! - [`checker`] — the verdict per client.

#![deny(unsafe_code)]

mod checker;
mod client;
mod cluster;
mod faults;
mod history;
mod memory;
#[allow(dead_code)]
#[path = "../proto.rs"]
mod proto;
mod writer;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;
use tokio::sync::Mutex as AsyncMutex;

/// Flags.
#[derive(Parser, Debug)]
#[command(about = "Randomized faults against rowcast replicas, checked exactly-once")]
struct Args {
    /// Run length in seconds (faults and writes), before the settle and the check.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The seed of every random choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Clients (half WebSocket, half SSE; half filtered).
    #[arg(long, default_value_t = 60)]
    clients: usize,
    /// Replicas.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Mean time between faults, ms.
    #[arg(long, default_value_t = 3000)]
    fault_gap_ms: u64,
    /// The database.
    #[arg(long)]
    database_url: String,
    /// The rowcast binary.
    #[arg(long)]
    rowcast: PathBuf,
    /// A script running `pg_ctl -D <data>` with its arguments.
    #[arg(long)]
    pg_ctl: PathBuf,
    /// Directory for replica logs.
    #[arg(long)]
    log_dir: PathBuf,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    /// The replicas' addresses (comma-separated): loopback, or for replica 0 its
    /// address inside `--netns`.
    #[arg(long, value_delimiter = ',')]
    addrs: Vec<SocketAddr>,
    /// nginx in front of the replicas: a share of clients and REST calls go through it.
    #[arg(long)]
    nginx_port: Option<u16>,
    /// The network namespace replica 0 runs in (made by the script); enables the
    /// partition and netem faults.
    #[arg(long)]
    netns: Option<String>,
    /// The database as seen from inside `--netns`.
    #[arg(long)]
    netns_database_url: Option<String>,
    /// `iptables` works in the namespace: partitions are DROP rules (else netem loss 100%).
    #[arg(long)]
    iptables: bool,
    /// The kernel has `tc netem` (else loss is an iptables random DROP and delay a token
    /// bucket's queueing delay).
    #[arg(long)]
    netem: bool,
    /// The replicas' `--ring-capacity`: small, so resumes page from the database and
    /// pruning under a stalled client ends in a real `reset`.
    #[arg(long, default_value_t = 512)]
    ring_capacity: u64,
    /// The memory bound per replica: its RSS once ready, plus this many bytes per ring
    /// event (`--ring-capacity` of them) and per client, plus `--rss-slack-mib`.
    #[arg(long, default_value_t = 2048)]
    rss_per_event: u64,
    /// Bytes per client connection in the memory bound.
    #[arg(long, default_value_t = 64 * 1024)]
    rss_per_client: u64,
    /// Slack in the memory bound, MiB (pool connections, snapshot pages, allocator).
    #[arg(long, default_value_t = 64)]
    rss_slack_mib: u64,
    /// The replicas' capture mode: `trigger` or `wal`.
    #[arg(long, default_value = "trigger")]
    capture: String,
    /// Only print the fault schedule the seed draws, and exit.
    #[arg(long)]
    plan_only: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let run_ms = args.seconds * 1000;
    if args.plan_only {
        let net = args.netns.is_some();
        for p in faults::plan(
            args.seed,
            run_ms,
            args.fault_gap_ms,
            args.capture == "wal",
            net,
        ) {
            println!("{}", serde_json::to_string(&p).unwrap_or_default());
        }
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rowcast-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("rowcast-chaos: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn log(start: Instant, text: &str) {
    eprintln!("[{:>8.3}s] {text}", start.elapsed().as_secs_f64());
}

async fn table(db: &tokio_postgres::Client) -> Result<BTreeMap<i64, String>, String> {
    let rows = tokio::time::timeout(
        Duration::from_secs(10),
        db.query("SELECT id::bigint, status::text FROM orders", &[]),
    )
    .await
    .map_err(|_| "table read timed out")?
    .map_err(|e| e.to_string())?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

async fn run(args: Args) -> Result<bool, String> {
    let url = format!("{}&application_name=chaos", args.database_url);
    if args.addrs.len() != args.replicas {
        return Err("--addrs must list one address per replica".into());
    }
    let netns = match (&args.netns, &args.netns_database_url) {
        (Some(name), Some(url)) => Some(cluster::Netns {
            name: name.clone(),
            database_url: url.clone(),
        }),
        (None, _) => None,
        (Some(_), None) => return Err("--netns needs --netns-database-url".into()),
    };
    let setup = cluster::Setup {
        rowcast: args.rowcast.clone(),
        database_url: args.database_url.clone(),
        pg_ctl: args.pg_ctl.clone(),
        log_dir: args.log_dir.clone(),
        send_timeout: Duration::from_secs(3),
        capture: args.capture.clone(),
        netns,
        ring_capacity: args.ring_capacity,
    };
    let db = faults::connect(&url)
        .await
        .ok_or("cannot connect to the database")?;
    // The start: a quiet table, its rows and the log position read together.
    let base: i64 = db
        .query_one("SELECT coalesce(max(id), 0) FROM realtime.change_log", &[])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    let base = base as u64;
    let initial = table(&db).await?;
    let start = Instant::now();
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let plan = faults::plan(
        args.seed,
        args.seconds * 1000,
        args.fault_gap_ms,
        args.capture == "wal",
        args.netns.is_some(),
    );
    log(
        start,
        &format!(
            "seed {} → {} faults planned over {} s; {} clients; start position {base}",
            args.seed,
            plan.len(),
            args.seconds,
            args.clients
        ),
    );
    let mut replicas = Vec::new();
    for (i, &port) in args.addrs.iter().enumerate() {
        let r = cluster::Replica::start(&setup, i, port).map_err(|e| e.to_string())?;
        replicas.push(Arc::new(AsyncMutex::new(r)));
    }
    for &port in &args.addrs {
        wait_ready(port, Duration::from_secs(60)).await?;
    }
    log(start, "replicas ready");
    // Memory: each replica's RSS once ready is its floor; the sampler keeps the peak.
    let mut pid_cells = Vec::new();
    for r in &replicas {
        pid_cells.push(r.lock().await.pid_cell.clone());
    }
    let floors: Vec<u64> = pid_cells
        .iter()
        .map(|p| cluster::rss_bytes(p.load(Ordering::Relaxed)).unwrap_or(0))
        .collect();
    let sampler = tokio::spawn(memory::sample(pid_cells, stop_sampling.clone()));

    // Where clients and REST calls go: each replica directly, and nginx if it runs.
    let mut entry = args.addrs.clone();
    entry.extend(
        args.nginx_port
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p))),
    );
    let env = Arc::new(client::Env {
        ports: entry.clone(),
        start,
        not_live: AtomicUsize::new(args.clients),
        stop: AtomicBool::new(false),
    });
    let mut rng = fastrand::Rng::with_seed(args.seed ^ 0x5eed);
    let mut specs = Vec::new();
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..args.clients {
        let spec = client::Spec {
            ws: i % 2 == 0,
            filtered: (i / 2) % 2 == 0,
            snapshot: (i / 4) % 3 == 0,
            seed: rng.u64(..),
        };
        let view = initial
            .iter()
            .filter(|(_, s)| !spec.filtered || *s == "pending")
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let shared = Arc::new(client::Shared::new(base, view, spec.snapshot));
        specs.push(spec);
        clients.push(shared.clone());
        tasks.push(tokio::spawn(client::run(env.clone(), spec, shared)));
    }

    let history = Arc::new(std::sync::Mutex::new(history::History::default()));
    let stop_writes = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(writer::Tally::default());
    let mut writers = Vec::new();
    for w in 0..2 {
        writers.push(tokio::spawn(writer::sql(
            url.clone(),
            args.seed.wrapping_add(w),
            stop_writes.clone(),
            tally.clone(),
        )));
    }
    writers.push(tokio::spawn(writer::rest(
        entry.clone(),
        args.seed.wrapping_add(7),
        stop_writes.clone(),
        tally.clone(),
    )));
    // The copier: the checker's history, read as the run goes.
    let copier = {
        let (history, url) = (history.clone(), url.clone());
        let stop = stop_writes.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Some(db) = faults::connect(&url).await {
                    while !stop.load(Ordering::Relaxed) {
                        if history::copy(&db, &history, base).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let targets = Arc::new(faults::Targets {
        setup: setup.clone(),
        replicas: replicas.clone(),
        postgres: AsyncMutex::new(()),
        clients: clients.clone(),
        start,
        database_url: url.clone(),
        history: history.clone(),
        base,
        netns: args.netns.clone(),
        iptables: args.iptables,
        netem: args.netem,
        links: [AsyncMutex::new(()), AsyncMutex::new(())],
    });
    // Every fault at its planned time; each its own task, so they overlap.
    let mut fault_tasks = Vec::new();
    for p in plan.clone() {
        let targets = targets.clone();
        fault_tasks.push(tokio::spawn(async move {
            let at = start + Duration::from_millis(p.at_ms);
            tokio::time::sleep_until(at.into()).await;
            log(
                start,
                &format!(
                    "fault {:?} target {} hold {} ms",
                    p.kind, p.target, p.hold_ms
                ),
            );
            let done = faults::apply(targets, p).await;
            log(start, &format!("lifted {:?}: {}", p.kind, done.note));
            done
        }));
    }
    // Samples when every client is live, for recovery times.
    let live_log = {
        let env = env.clone();
        tokio::spawn(async move {
            let mut all_live = Vec::new();
            while !env.stop.load(Ordering::Relaxed) {
                if env.not_live.load(Ordering::Relaxed) == 0 {
                    all_live.push(start.elapsed().as_millis() as u64);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            all_live
        })
    };

    tokio::time::sleep_until((start + Duration::from_secs(args.seconds)).into()).await;
    let mut done = Vec::new();
    for t in fault_tasks {
        done.push(t.await.map_err(|e| e.to_string())?);
    }
    stop_writes.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let _ = copier.await;
    log(start, "writes stopped, faults lifted; settling");
    let mut readyz_ok = true;
    for &port in &args.addrs {
        if let Err(e) = wait_ready(port, Duration::from_secs(60)).await {
            log(start, &e);
            readyz_ok = false;
        }
    }
    let db = faults::connect(&url)
        .await
        .ok_or("no database at the end")?;
    history::copy(&db, &history, base).await?;
    let final_table = table(&db).await?;
    // Settle: every client has got (or passed by heartbeat) its last required change.
    let settle_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let behind = {
            let h = history.lock().unwrap();
            specs
                .iter()
                .zip(&clients)
                .filter(|(spec, c)| c.seen.lock().unwrap().pos < checker::last_required(spec, &h))
                .count()
        };
        if behind == 0 || Instant::now() > settle_deadline {
            log(start, &format!("settled; {behind} clients behind"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    env.stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let all_live = live_log.await.map_err(|e| e.to_string())?;
    stop_sampling.store(true, Ordering::Relaxed);
    let peaks = sampler.await.map_err(|e| e.to_string())?;
    let memory = memory::judge(
        &floors,
        &peaks,
        memory::Bound {
            ring_events: args.ring_capacity,
            per_event: args.rss_per_event,
            clients: args.clients as u64,
            per_client: args.rss_per_client,
            slack: args.rss_slack_mib << 20,
        },
    );
    for d in &mut done {
        if let Some(lifted) = d.lifted_ms {
            d.recovery_ms = all_live.iter().find(|&&t| t >= lifted).map(|&t| t - lifted);
        }
    }
    let h = std::mem::take(&mut *history.lock().unwrap());
    let mut verdict = checker::Verdict::default();
    let mut connects = 0;
    for (i, (spec, c)) in specs.iter().zip(&clients).enumerate() {
        let seen = c.seen.lock().unwrap();
        connects += seen.connects;
        checker::check(&mut verdict, i, spec, &seen, &h, &final_table);
    }
    let mut recoveries: Vec<u64> = done.iter().filter_map(|d| d.recovery_ms).collect();
    recoveries.sort_unstable();
    let pct = |q: f64| -> Option<u64> {
        (!recoveries.is_empty())
            .then(|| recoveries[((recoveries.len() - 1) as f64 * q).round() as usize])
    };
    let unrecovered = done
        .iter()
        .filter(|d| d.lifted_ms.is_some() && d.recovery_ms.is_none())
        .count();
    let mut by_kind = serde_json::Map::new();
    for k in faults::KINDS {
        let applied = done
            .iter()
            .filter(|d| d.planned.kind == k && d.lifted_ms.is_some())
            .count();
        by_kind.insert(
            serde_json::to_value(k)
                .unwrap_or_default()
                .as_str()
                .unwrap_or("?")
                .to_string(),
            json!(applied),
        );
    }
    let ok = verdict.ok() && readyz_ok && memory.within;
    let report = json!({
        "ok": ok,
        "seed": args.seed,
        "capture": args.capture,
        "seconds": args.seconds,
        "clients": args.clients,
        "replicas": args.replicas,
        "ring_capacity": args.ring_capacity,
        "nginx": args.nginx_port.is_some(),
        "faults_planned": plan.len(),
        "faults_applied": done.iter().filter(|d| d.lifted_ms.is_some()).count(),
        "faults_by_kind": by_kind,
        "changes_written": h.changes.len(),
        "transactions": {
            "committed": tally.committed.load(Ordering::Relaxed),
            "rolled_back": tally.rolled_back.load(Ordering::Relaxed),
            "failed": tally.failed.load(Ordering::Relaxed),
        },
        "client_connections": connects,
        "prunes": h.prunes.len(),
        "verdict": verdict,
        "recovery_ms": { "p50": pct(0.5), "p99": pct(0.99), "max": recoveries.last(),
                          "unrecovered": unrecovered },
        "readyz_all_200": readyz_ok,
        "netns": args.netns,
        "memory": memory,
        "faults": done,
    });
    print_human(&report);
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(path, text).map_err(|e| e.to_string())?;
    }
    for r in &replicas {
        r.lock().await.kill().await;
    }
    Ok(ok)
}

fn print_human(r: &serde_json::Value) {
    let v = &r["verdict"];
    println!(
        "rowcast-chaos: {}",
        if r["ok"] == json!(true) {
            "PASS"
        } else {
            "FAIL"
        }
    );
    println!(
        "  seed {}, capture {}, {} s, {} clients, {} replicas",
        r["seed"], r["capture"], r["seconds"], r["clients"], r["replicas"]
    );
    println!(
        "  faults applied {} of {} planned: {}",
        r["faults_applied"], r["faults_planned"], r["faults_by_kind"]
    );
    println!(
        "  changes written {}; transactions {}; client connections {}; prunes {}",
        r["changes_written"], r["transactions"], r["client_connections"], r["prunes"]
    );
    println!(
        "  deliveries checked {}: lost {}, duplicated {}, out of order {}, foreign {}, garbled {}",
        v["deliveries"], v["lost"], v["duplicated"], v["out_of_order"], v["foreign"], v["garbled"]
    );
    println!(
        "  resets justified {}, unjustified {}; views wrong {}, unverified {}",
        v["resets_justified"], v["resets_unjustified"], v["views_wrong"], v["views_unverified"]
    );
    println!("  recovery after a fault (ms): {}", r["recovery_ms"]);
    println!("  /readyz 200 on every replica: {}", r["readyz_all_200"]);
    println!("  memory: {}", r["memory"]);
    if let Some(examples) = v["examples"].as_array() {
        for e in examples {
            println!("  ! {}", e.as_str().unwrap_or_default());
        }
    }
}

/// Waits until `/readyz` answers 200 on `port`.
async fn wait_ready(port: SocketAddr, within: Duration) -> Result<(), String> {
    let deadline = Instant::now() + within;
    while cluster::http_status(port, "/readyz").await != Some(200) {
        if Instant::now() > deadline {
            return Err(format!(
                "replica on port {port}: /readyz not 200 within {within:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
