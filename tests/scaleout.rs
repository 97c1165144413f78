//! Scale-out, with real processes: several `rowcast` replicas on one database, retention
//! shared between them, Debian's nginx in front (the configuration in
//! `docs/deploy/nginx.conf`) and Debian's PgBouncer behind, in transaction pooling.

mod support;

use support::process::db_name;
use support::*;

use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------
// Processes and their scratch directories
// ---------------------------------------------------------------------------------

static NEXT_SCRATCH: AtomicU32 = AtomicU32::new(0);

/// A directory of its own under the temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(label: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "rowcast-scaleout-{label}-{}-{}",
            std::process::id(),
            NEXT_SCRATCH.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A `rowcast` process on a free port, its stderr kept in a file; killed when dropped.
struct Replica {
    child: Child,
    addr: SocketAddr,
    dir: Scratch,
}

impl Replica {
    /// Starts `rowcast --listen 127.0.0.1:<free port> --database-url <url> <extra>`
    /// without waiting for it. In the WAL half of the capture-mode matrix it captures
    /// from the WAL (on a slot named after the database, as in-process gateways do),
    /// unless `extra` chooses a capture mode itself.
    fn spawn(url: &str, extra: &[&str]) -> Replica {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let dir = Scratch::new("replica");
        let stderr = std::fs::File::create(dir.file("stderr.log")).expect("log file");
        let mut capture = Vec::new();
        if wal_matrix() && !extra.contains(&"--capture") {
            capture = vec!["--capture", "wal", "--capture-slot", db_name(url)];
        }
        let child = Command::new(binary())
            .args(["--listen", &addr.to_string(), "--database-url", url])
            .args(capture)
            .args(extra)
            .args(support::nats::relay_flags(db_name(url)))
            .env_remove("DATABASE_URL")
            .env("RUST_LOG", "info,tokio_postgres=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn rowcast");
        Replica { child, addr, dir }
    }

    /// Starts one and waits until it is ready.
    async fn start(url: &str, extra: &[&str]) -> Replica {
        let replica = Replica::spawn(url, extra);
        replica.ready().await;
        replica
    }

    /// Waits until `/readyz` answers 200; panics with its stderr if it exits or takes
    /// too long.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if readyz_ok(self.addr).await {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rowcast on {} did not become ready:\n{}",
                self.addr,
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.file("stderr.log")).unwrap_or_default()
    }

    /// SIGKILL: no drain, no goodbye, like a crashed host.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    async fn readyz(&self) -> Value {
        http(self.addr, "GET", "/readyz", &[], None).await.json()
    }

    /// The head the replica reports (its newest event id).
    async fn head(&self) -> u64 {
        self.readyz().await["head"]
            .as_str()
            .expect("head")
            .parse()
            .expect("numeric head")
    }

    /// One sample from `/metrics`: `name` is the series as printed, labels included.
    async fn metric(&self, name: &str) -> i64 {
        let body = http(self.addr, "GET", "/metrics", &[], None).await.body;
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
            .trim()
            .parse::<f64>()
            .expect("numeric sample") as i64
    }

    /// Open stream connections, both transports.
    async fn streams(&self) -> i64 {
        self.metric("rowcast_connections{transport=\"ws\"}").await
            + self.metric("rowcast_connections{transport=\"sse\"}").await
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `check` holds, polling; panics naming `what` after [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A system binary, whether or not `/usr/sbin` is on the PATH.
fn system_binary(name: &str) -> PathBuf {
    let sbin = Path::new("/usr/sbin").join(name);
    if sbin.exists() {
        return sbin;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.exists())
    });
    found.unwrap_or_else(|| {
        panic!("`{name}` is not installed: run scripts/test, or apt-get install {name}")
    })
}

/// The change_log ids after `after`, in order, once everything committed so far is
/// captured (at once under triggers; under WAL capture, once the capturer applied it).
async fn ids_after(db: &TestDb, after: u64) -> Vec<u64> {
    captured(db).await;
    db.client()
        .await
        .query(
            "SELECT id FROM realtime.change_log WHERE id > $1 ORDER BY id",
            &[&(after as i64)],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, i64>(0) as u64)
        .collect()
}

/// `(min(id), count(*))` of change_log; `min` is 0 when it is empty.
async fn change_log_extent(db: &TestDb) -> (u64, u64) {
    captured(db).await;
    let row = db
        .client()
        .await
        .query_one(
            "SELECT coalesce(min(id), 0), count(*) FROM realtime.change_log",
            &[],
        )
        .await
        .unwrap();
    (row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64)
}

/// Waits until `replica` has read up to `id`, so that a resume is served as backlog
/// (a replica that has not read it yet sends it live after `ready`, which is as right
/// but tests something else).
async fn caught_up(replica: &Replica, id: u64) {
    eventually("the replica to read up to the newest change", || async {
        replica.head().await >= id
    })
    .await;
}

fn id_of(message: &Value) -> u64 {
    message["id"]
        .as_str()
        .expect("id")
        .parse()
        .expect("numeric id")
}

fn sse_id(event: &SseEvent) -> u64 {
    event
        .id
        .as_deref()
        .expect("id:")
        .parse()
        .expect("numeric id")
}

async fn insert_orders(db: &TestDb, n: usize) {
    let client = db.client().await;
    for i in 0..n {
        insert_order(&client, &format!("customer {i}"), "widget").await;
    }
}

// ---------------------------------------------------------------------------------
// Replicas
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_started_together_on_an_empty_database_migrate_once_and_all_become_ready() {
    let db = Cluster::shared().empty_database();
    let replicas: Vec<Replica> = (0..3).map(|_| Replica::spawn(&db.url, &[])).collect();
    for replica in &replicas {
        replica.ready().await;
    }
    let versions: Vec<i32> = db
        .client()
        .await
        .query(
            "SELECT version FROM realtime.migrations ORDER BY version",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let every: Vec<i32> = rowcast::pg::migrate::MIGRATIONS
        .iter()
        .map(|m| m.version)
        .collect();
    assert_eq!(versions, every, "each migration recorded exactly once");
    let applied = replicas
        .iter()
        .filter(|r| r.stderr().contains("applied migrations"))
        .count();
    assert_eq!(applied, 1, "exactly one replica applies the migrations");

    // All three then serve the same stream.
    let mut clients = Vec::new();
    for replica in &replicas {
        let mut ws = WsClient::connect(replica.addr, "").await;
        ws.until_ready().await;
        clients.push(ws);
    }
    insert_orders(&db, 1).await;
    let mut seen = Vec::new();
    for ws in &mut clients {
        seen.push(ws.changes(1).await.remove(0));
    }
    assert!(seen.windows(2).all(|w| w[0] == w[1]), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_gives_a_change_the_same_id_and_the_same_message() {
    let db = TestDb::new();
    let a = Replica::start(&db.url, &[]).await;
    let b = Replica::start(&db.url, &["--source", "poll", "--poll-interval", "100ms"]).await;
    let mut on_a = WsClient::connect(a.addr, "").await;
    on_a.until_ready().await;
    let mut on_b = SseClient::connect(b.addr, "", &[]).await;
    on_b.until_ready().await;
    insert_orders(&db, 5).await;
    let from_a = on_a.changes(5).await;
    let from_b = on_b.changes(5).await;
    for (ws, sse) in from_a.iter().zip(&from_b) {
        assert_eq!(
            *ws,
            sse.json(),
            "one change, one message, whichever replica"
        );
        assert_eq!(id_of(ws), sse_id(sse));
    }
    assert_eq!(a.head().await, b.head().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_client_resumes_on_another_replica_without_a_gap_or_a_duplicate() {
    let db = TestDb::new();
    let a = Replica::start(&db.url, &[]).await;
    let b = Replica::start(&db.url, &[]).await;
    let mut ws = WsClient::connect(a.addr, "").await;
    ws.until_ready().await;
    insert_orders(&db, 3).await;
    let first = ws.changes(3).await;
    let last = id_of(&first[2]);
    drop(ws);

    // Missed while away, then picked up from the other replica.
    insert_orders(&db, 4).await;
    let missed = ids_after(&db, last).await;
    assert_eq!(missed.len(), 4);
    caught_up(&b, missed[3]).await;
    let mut ws = WsClient::connect(b.addr, &format!("since={last}")).await;
    let (backlog, ready) = ws.until_ready().await;
    assert_eq!(backlog.iter().map(id_of).collect::<Vec<_>>(), missed);
    assert_eq!(ready["replayed"], 4);
    insert_orders(&db, 1).await;
    let live = ws.changes(1).await;
    assert_eq!(id_of(&live[0]), ids_after(&db, missed[3]).await[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_resumes_on_another_replica_with_last_event_id() {
    let db = TestDb::new();
    let a = Replica::start(&db.url, &[]).await;
    let b = Replica::start(&db.url, &[]).await;
    let mut sse = SseClient::connect(a.addr, "", &[]).await;
    sse.until_ready().await;
    insert_orders(&db, 2).await;
    let last = sse_id(&sse.changes(2).await[1]);
    drop(sse);
    insert_orders(&db, 3).await;
    let missed = ids_after(&db, last).await;
    caught_up(&b, missed[2]).await;
    let mut sse = SseClient::connect(b.addr, "", &[("Last-Event-ID", &last.to_string())]).await;
    let (backlog, ready) = sse.until_ready().await;
    assert_eq!(backlog.iter().map(sse_id).collect::<Vec<_>>(), missed);
    assert_eq!(ready.json()["replayed"], 3);
}

// ---------------------------------------------------------------------------------
// Retention
// ---------------------------------------------------------------------------------

/// `realtime.prune`'s lock ('rowp'): whoever holds it is the one replica pruning.
const PRUNING_LOCK: i64 = 1_920_890_736;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_prune_only_while_holding_the_pruning_lock_and_report_the_oldest_id() {
    let db = TestDb::new();
    // Another pruner holds the lock: the replicas must leave the rows alone.
    let holder = db.client().await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&PRUNING_LOCK])
        .await
        .unwrap();
    let policy = ["--retention-rows", "10", "--retention-interval", "100ms"];
    let replicas = [
        Replica::start(&db.url, &policy).await,
        Replica::start(&db.url, &policy).await,
    ];
    insert_orders(&db, 50).await;
    let (oldest, count) = change_log_extent(&db).await;
    assert_eq!(count, 50);
    for replica in &replicas {
        let passes = replica.metric("rowcast_retention_passes_total").await;
        eventually("three retention passes under a held lock", || async {
            replica.metric("rowcast_retention_passes_total").await >= passes + 3
        })
        .await;
        eventually("the oldest-id gauge", || async {
            replica.metric("rowcast_retention_oldest_id").await == oldest as i64
        })
        .await;
        assert_eq!(replica.metric("rowcast_pruned_rows_total").await, 0);
    }
    assert_eq!(change_log_extent(&db).await, (oldest, 50));

    // Released: one of them prunes down to the newest 10 ids, in turn, never twice.
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&PRUNING_LOCK])
        .await
        .unwrap();
    let newest = oldest + 49;
    eventually("pruning down to 10 ids", || async {
        change_log_extent(&db).await == (newest - 9, 10)
    })
    .await;
    let mut pruned = 0;
    for replica in &replicas {
        eventually("every replica's oldest-id gauge to follow", || async {
            replica.metric("rowcast_retention_oldest_id").await == (newest - 9) as i64
        })
        .await;
        pruned += replica.metric("rowcast_pruned_rows_total").await;
    }
    assert_eq!(
        pruned, 40,
        "the replicas' counters add up to the rows deleted"
    );
    let pruned_upto = rowcast::pg::changes::pruned_upto(&db.client().await)
        .await
        .unwrap();
    assert_eq!(pruned_upto, newest - 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_by_age_prunes_older_rows_keeps_newer_ones_and_reports_the_head_when_empty() {
    let db = TestDb::new();
    let policy = ["--retention", "1h", "--retention-interval", "100ms"];
    let replicas = [
        Replica::start(&db.url, &policy).await,
        Replica::start(&db.url, &policy).await,
    ];
    insert_orders(&db, 20).await;
    let ids = ids_after(&db, 0).await;
    let sql = db.client().await;
    let backdate = "UPDATE realtime.change_log SET committed_at = now() - interval '2 hours'
                    WHERE id <= $1";
    sql.execute(backdate, &[&(ids[11] as i64)]).await.unwrap();
    eventually("the 12 old rows to go", || async {
        change_log_extent(&db).await == (ids[12], 8)
    })
    .await;
    for replica in &replicas {
        eventually("the oldest-id gauge", || async {
            replica.metric("rowcast_retention_oldest_id").await == ids[12] as i64
        })
        .await;
    }

    // Everything old: change_log empties and the gauge shows the head.
    sql.execute(backdate, &[&(ids[19] as i64)]).await.unwrap();
    eventually("change_log to empty", || async {
        change_log_extent(&db).await.1 == 0
    })
    .await;
    for replica in &replicas {
        eventually("the gauge to show the head", || async {
            replica.metric("rowcast_retention_oldest_id").await == ids[19] as i64
        })
        .await;
        assert_eq!(replica.head().await, ids[19]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_pruned_by_one_replica_gets_reset_on_another() {
    let db = TestDb::new();
    // `server` prunes nothing itself and holds only 8 events in memory, so it must ask
    // change_log for an old resume point; `pruner`, started once the ids are known,
    // keeps 5 ids of history. Pruning starts only then: with it running, a burst of 30
    // (WAL capture applies them as one batch) could be pruned before a replica's
    // source read it, and that replica's clients would rightly get `reset`.
    let server = Replica::start(&db.url, &["--ring-capacity", "8"]).await;
    let mut ws = WsClient::connect(server.addr, "").await;
    ws.until_ready().await;
    insert_orders(&db, 30).await;
    let ids: Vec<u64> = ws.changes(30).await.iter().map(id_of).collect();
    drop(ws);
    let pruner = Replica::start(
        &db.url,
        &["--retention-rows", "5", "--retention-interval", "100ms"],
    )
    .await;
    eventually("the pruner to keep 5 ids", || async {
        pruner.metric("rowcast_retention_oldest_id").await == ids[25] as i64
    })
    .await;

    let mut ws = WsClient::connect(server.addr, &format!("since={}", ids[0])).await;
    let reset = ws.next_json().await;
    assert_eq!(reset["type"], "reset", "{reset}");
    assert_eq!(reset["reason"], "history_gone");
    assert_eq!(reset["head"], ids[29].to_string());
    let (before, ready) = ws.until_ready().await;
    assert!(before.is_empty(), "{before:?}");
    assert_eq!(ready["replayed"], 0);
    insert_orders(&db, 1).await;
    let later = ids_after(&db, ids[29]).await[0];
    assert_eq!(
        id_of(&ws.changes(1).await[0]),
        later,
        "live after the reset"
    );

    // SSE: the reset carries the head as its id, so a browser does not loop on it.
    let mut sse =
        SseClient::connect(server.addr, "", &[("Last-Event-ID", &ids[3].to_string())]).await;
    let reset = sse.next_event().await;
    assert_eq!(reset.event.as_deref(), Some("reset"));
    assert_eq!(sse_id(&reset), later);

    // A resume point inside what is kept is replayed.
    let mut ws = WsClient::connect(server.addr, &format!("since={}", ids[27])).await;
    let (backlog, _) = ws.until_ready().await;
    assert_eq!(
        backlog.iter().map(id_of).collect::<Vec<_>>(),
        [ids[28], ids[29], later]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_pruning_batch_blocks_neither_writers_nor_the_replicas() {
    let db = TestDb::new();
    // Replicas that run retention often but whose rule deletes nothing.
    let policy = [
        "--retention-rows",
        "1000000",
        "--retention-interval",
        "100ms",
    ];
    let replicas = [
        Replica::start(&db.url, &policy).await,
        Replica::start(&db.url, &policy).await,
    ];
    insert_orders(&db, 20).await;
    captured(&db).await;
    let mut ws = WsClient::connect(replicas[0].addr, "").await;
    ws.until_ready().await;

    // A pruning batch that deletes everything and then stays open: it holds the
    // pruning lock, the deleted rows and realtime.retention.
    let mut pruner = db.client().await;
    let batch = pruner.transaction().await.unwrap();
    // Wait our turn behind a replica's batch; prune's own try-lock then succeeds, as
    // advisory locks are re-entrant within a session.
    batch
        .execute("SELECT pg_advisory_xact_lock($1)", &[&PRUNING_LOCK])
        .await
        .unwrap();
    let deleted: i64 = batch
        .query_one("SELECT realtime.prune(NULL, 0, 1000)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(deleted, 20);

    let writer = db.client().await;
    for i in 0..20 {
        let started = Instant::now();
        tokio::time::timeout(WAIT, insert_order(&writer, &format!("w{i}"), "gadget"))
            .await
            .expect("a writer waited on pruning");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "commit took {:?}",
            started.elapsed()
        );
    }
    assert_eq!(ws.changes(20).await.len(), 20);
    for replica in &replicas {
        let passes = replica.metric("rowcast_retention_passes_total").await;
        eventually(
            "retention passes to go on (skipping, not waiting)",
            || async { replica.metric("rowcast_retention_passes_total").await >= passes + 2 },
        )
        .await;
    }
    batch.commit().await.unwrap();
    assert_eq!(
        change_log_extent(&db).await.1,
        20,
        "only the new rows remain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_is_pruned_in_batches_while_writers_and_clients_carry_on() {
    let db = TestDb::new();
    let sql = db.client().await;
    sql.execute(
        "INSERT INTO orders (customer_name, product_name)
         SELECT 'backlog ' || g, 'widget' FROM generate_series(1, 5000) g",
        &[],
    )
    .await
    .unwrap();
    // Hold the pruning off until the writer is under way.
    sql.execute("SELECT pg_advisory_lock($1)", &[&PRUNING_LOCK])
        .await
        .unwrap();
    let policy = ["--retention-rows", "100", "--retention-interval", "100ms"];
    let replica = Replica::start(&db.url, &policy).await;
    let mut ws = WsClient::connect(replica.addr, "").await;
    ws.until_ready().await;

    let (started_tx, started_rx) = oneshot::channel();
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        let client = writer_db.client().await;
        let mut slowest = Duration::ZERO;
        let mut started = Some(started_tx);
        for i in 0..300 {
            let begun = Instant::now();
            insert_order(&client, &format!("live {i}"), "gadget").await;
            slowest = slowest.max(begun.elapsed());
            if i == 20 {
                if let Some(tx) = started.take() {
                    let _ = tx.send(());
                }
            }
        }
        slowest
    });
    started_rx.await.unwrap();
    sql.execute("SELECT pg_advisory_unlock($1)", &[&PRUNING_LOCK])
        .await
        .unwrap();
    let received = ws.changes(300).await;
    let slowest = writer.await.unwrap();
    assert!(
        slowest < Duration::from_secs(2),
        "slowest commit {slowest:?}"
    );
    let ids: Vec<u64> = received.iter().map(id_of).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]));

    let newest = *ids.last().unwrap();
    eventually("the backlog to be pruned to 100 ids", || async {
        change_log_extent(&db).await == (newest - 99, 100)
    })
    .await;
    assert!(replica.metric("rowcast_pruned_rows_total").await >= 5000);
}

// ---------------------------------------------------------------------------------
// nginx in front
// ---------------------------------------------------------------------------------

/// Debian's nginx on a free loopback port, running `docs/deploy/nginx.conf` with the
/// replicas filled in; stopped when dropped.
struct Nginx {
    child: Child,
    addr: SocketAddr,
    dir: Scratch,
}

impl Nginx {
    async fn start(replicas: &[&Replica]) -> Nginx {
        let dir = Scratch::new("nginx");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let site = site_config(addr, replicas);
        std::fs::write(dir.file("rowcast.conf"), site).unwrap();
        let root = dir.path().display();
        let main = format!(
            "worker_processes 1;\n\
             error_log {root}/error.log info;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n\
                 access_log {root}/access.log;\n\
                 client_body_temp_path {root}/body;\n\
                 proxy_temp_path {root}/proxy;\n\
                 fastcgi_temp_path {root}/fastcgi;\n\
                 uwsgi_temp_path {root}/uwsgi;\n\
                 scgi_temp_path {root}/scgi;\n\
                 include {root}/rowcast.conf;\n\
             }}\n"
        );
        std::fs::write(dir.file("nginx.conf"), main).unwrap();
        let child = Command::new(system_binary("nginx"))
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.file("error.log"))
            .arg("-c")
            .arg(dir.file("nginx.conf"))
            .arg("-g")
            .arg(format!("daemon off; pid {root}/nginx.pid;"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.file("stderr.log")).unwrap())
            .spawn()
            .expect("start nginx");
        let mut nginx = Nginx { child, addr, dir };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                panic!("nginx exited ({status}):\n{}", nginx.logs());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok()
                && http(addr, "GET", "/healthz", &[], None).await.status == 200
            {
                return nginx;
            }
            assert!(Instant::now() < deadline, "nginx not up:\n{}", nginx.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        ["stderr.log", "error.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.file(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown: the master stops its workers and exits.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docs/deploy/nginx.conf` with its `listen` and its upstream `server` lines replaced;
/// panics if the file no longer has the shape this test relies on.
fn site_config(listen: SocketAddr, replicas: &[&Replica]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/deploy/nginx.conf");
    let template = std::fs::read_to_string(&path).expect("docs/deploy/nginx.conf");
    let mut out = String::new();
    let (mut listens, mut servers, mut in_upstream) = (0, 0, false);
    for line in template.lines() {
        let code = line.trim();
        if code.starts_with("upstream rowcast") {
            in_upstream = true;
        } else if in_upstream && code == "}" {
            in_upstream = false;
        }
        if code == "listen 80;" {
            listens += 1;
            out.push_str(&format!("    listen {listen};\n"));
        } else if in_upstream && code.starts_with("server ") {
            // Keep the template's parameters (max_fails, fail_timeout) for each replica.
            servers += 1;
            if servers == 1 {
                let params = code
                    .trim_end_matches(';')
                    .split_whitespace()
                    .skip(2)
                    .collect::<Vec<_>>()
                    .join(" ");
                for replica in replicas {
                    out.push_str(&format!("    server {} {params};\n", replica.addr));
                }
            }
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert_eq!(listens, 1, "the template has one `listen 80;`");
    assert!(
        servers >= 2,
        "the template's upstream lists two or more replicas"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sse_and_rest_pass_through_nginx_to_every_replica() {
    let db = TestDb::new();
    let a = Replica::start(&db.url, &[]).await;
    let b = Replica::start(&db.url, &[]).await;
    let nginx = Nginx::start(&[&a, &b]).await;

    let mut ws = WsClient::connect(nginx.addr, "").await;
    ws.until_ready().await;
    let mut sse = SseClient::connect(nginx.addr, "", &[]).await;
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("transfer-encoding"), Some("chunked"));
    assert_eq!(sse.header("content-length"), None);
    sse.until_ready().await;

    // Each change must come through before the next write: nothing is buffered.
    for i in 0..5 {
        let body = format!(r#"{{"customer_name":"via nginx {i}","product_name":"widget"}}"#);
        let created = http(
            nginx.addr,
            "POST",
            "/api/orders",
            &[],
            Some(body.as_bytes()),
        )
        .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let within = Duration::from_secs(2);
        let from_ws = tokio::time::timeout(within, ws.changes(1))
            .await
            .expect("WebSocket change through nginx in time");
        let from_sse = tokio::time::timeout(within, sse.changes(1))
            .await
            .expect("SSE change through nginx in time (buffered?)");
        assert_eq!(from_ws[0]["row"]["id"], created.json()["id"]);
        assert_eq!(from_ws[0], from_sse[0].json());
    }

    // least_conn spreads streams over both replicas.
    let mut more = Vec::new();
    for _ in 0..4 {
        let mut ws = WsClient::connect(nginx.addr, "").await;
        ws.until_ready().await;
        more.push(ws);
    }
    assert!(a.streams().await >= 1 && b.streams().await >= 1);
    assert_eq!(a.streams().await + b.streams().await, 6);
}

/// What a reconnecting client received.
#[derive(Debug, Default)]
struct Followed {
    ids: Vec<u64>,
    /// Times its stream ended under it and it connected again.
    reconnects: u32,
    resets: u32,
}

/// Follows `/ws` through `front` from `since`, reconnecting with `since=<last id>`
/// whenever the stream ends, until it has the id `done` announces.
async fn follow_ws(
    front: SocketAddr,
    since: u64,
    ready: mpsc::Sender<()>,
    done: watch::Receiver<Option<u64>>,
) -> Followed {
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut out, mut last, mut ready) = (Followed::default(), since, Some(ready));
    loop {
        assert!(
            Instant::now() < deadline,
            "WebSocket follower gave up: {out:?}"
        );
        let url = format!("ws://{front}/ws?since={last}");
        let mut socket =
            match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url)).await {
                Ok(Ok((socket, _))) => socket,
                _ => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
        while let Ok(Some(Ok(message))) = tokio::time::timeout(WAIT, socket.next()).await {
            if let Message::Text(text) = message {
                let value = support::contract::parse_ws_message(text.as_str());
                match value["type"].as_str() {
                    Some("change") => {
                        let id = id_of(&value);
                        assert!(id > last, "duplicate or out of order: {id} after {last}");
                        out.ids.push(id);
                        last = id;
                    }
                    Some("ready") => {
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(()).await;
                        }
                    }
                    Some("reset") => out.resets += 1,
                    _ => {}
                }
            }
            if (*done.borrow()).is_some_and(|target| last >= target) {
                return out;
            }
        }
        out.reconnects += 1;
    }
}

/// Follows `/events` through `front`, reconnecting with `Last-Event-ID` as a browser
/// does, until it has the id `done` announces.
async fn follow_sse(
    front: SocketAddr,
    since: u64,
    ready: mpsc::Sender<()>,
    done: watch::Receiver<Option<u64>>,
) -> Followed {
    let deadline = Instant::now() + Duration::from_secs(90);
    let (mut out, mut last, mut ready) = (Followed::default(), since, Some(ready));
    loop {
        assert!(Instant::now() < deadline, "SSE follower gave up: {out:?}");
        let mut sse = SseClient::connect(front, "", &[("Last-Event-ID", &last.to_string())]).await;
        if sse.status != 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        while let Some(block) = sse.next_block().await {
            match block.event.as_deref() {
                Some("change") => {
                    let id = sse_id(&block);
                    assert!(id > last, "duplicate or out of order: {id} after {last}");
                    out.ids.push(id);
                    last = id;
                }
                Some("ready") => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(()).await;
                    }
                }
                Some("reset") => out.resets += 1,
                _ => {}
            }
            if (*done.borrow()).is_some_and(|target| last >= target) {
                return out;
            }
        }
        out.reconnects += 1;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_of_a_replica_killed_under_load_resume_through_nginx_losing_nothing() {
    let db = TestDb::new();
    let fast = ["--heartbeat", "1s"];
    let mut replicas = vec![
        Replica::start(&db.url, &fast).await,
        Replica::start(&db.url, &fast).await,
        Replica::start(&db.url, &fast).await,
    ];
    let nginx = Nginx::start(&replicas.iter().collect::<Vec<_>>()).await;
    let start = replicas[0].head().await;

    const CLIENTS: usize = 6; // per transport
    let (ready_tx, mut ready_rx) = mpsc::channel(2 * CLIENTS);
    let (done_tx, done_rx) = watch::channel(None);
    let mut followers = Vec::new();
    for _ in 0..CLIENTS {
        followers.push(tokio::spawn(follow_ws(
            nginx.addr,
            start,
            ready_tx.clone(),
            done_rx.clone(),
        )));
        followers.push(tokio::spawn(follow_sse(
            nginx.addr,
            start,
            ready_tx.clone(),
            done_rx.clone(),
        )));
    }
    for _ in 0..2 * CLIENTS {
        tokio::time::timeout(WAIT, ready_rx.recv())
            .await
            .expect("every client ready in time");
    }
    let mut spread = Vec::new();
    for replica in &replicas {
        spread.push(replica.streams().await);
    }
    assert_eq!(spread.iter().sum::<i64>(), 2 * CLIENTS as i64, "{spread:?}");
    let victim = (0..replicas.len()).max_by_key(|i| spread[*i]).unwrap();
    assert!(spread[victim] > 0);

    // A writer that keeps committing while the replica dies.
    let (third_tx, third_rx) = oneshot::channel();
    let writer_db = db.clone();
    let writer = tokio::spawn(async move {
        let client = writer_db.client().await;
        let mut third = Some(third_tx);
        for i in 0..300 {
            insert_order(&client, &format!("load {i}"), "widget").await;
            if i == 100 {
                if let Some(tx) = third.take() {
                    let _ = tx.send(());
                }
            }
        }
    });
    third_rx.await.unwrap();
    replicas[victim].kill();
    writer.await.unwrap();

    let expected = ids_after(&db, start).await;
    assert_eq!(expected.len(), 300);
    done_tx.send(Some(*expected.last().unwrap())).unwrap();
    let mut moved = 0;
    for follower in followers {
        let followed = follower.await.expect("follower");
        assert_eq!(followed.ids, expected, "every change, once, in order");
        assert_eq!(followed.resets, 0);
        if followed.reconnects > 0 {
            moved += 1;
        }
    }
    assert_eq!(
        moved, spread[victim],
        "exactly the killed replica's clients reconnected"
    );
}

// ---------------------------------------------------------------------------------
// PgBouncer behind
// ---------------------------------------------------------------------------------

/// Debian's PgBouncer in transaction pooling in front of a private cluster, on a free
/// port, as an unprivileged user when we are root (it refuses to run as root).
struct PgBouncer {
    child: Child,
    port: u16,
    dir: Scratch,
}

/// PgBouncer's version, e.g. `(1, 18)`.
fn pgbouncer_version(binary: &Path) -> (u32, u32) {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .expect("pgbouncer --version");
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected `pgbouncer --version`: {text}"));
    let mut parts = version.split('.').map(|p| p.parse().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

impl PgBouncer {
    async fn start(cluster: &Cluster) -> PgBouncer {
        let server = cluster.server().expect("a private cluster");
        let binary = system_binary("pgbouncer");
        let dir = Scratch::new("pgbouncer");
        let port = free_port();
        let root = dir.path().display();
        // Named prepared statements survive transaction pooling only from 1.21 on.
        let prepared = if pgbouncer_version(&binary) >= (1, 21) {
            "max_prepared_statements = 100\n"
        } else {
            ""
        };
        let ini = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={pg}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {root}/userlist.txt\n\
             pool_mode = transaction\n\
             default_pool_size = 10\n\
             max_client_conn = 200\n\
             logfile = {root}/pgbouncer.log\n\
             pidfile = {root}/pgbouncer.pid\n\
             {prepared}",
            pg = server.port()
        );
        std::fs::write(dir.file("pgbouncer.ini"), ini).unwrap();
        std::fs::write(
            dir.file("userlist.txt"),
            format!("\"{}\" \"\"\n", rowcast::pg::embedded::USER),
        )
        .unwrap();
        let mut command = Command::new(&binary);
        command
            .arg(dir.file("pgbouncer.ini"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.file("stderr.log")).unwrap());
        if let Some((uid, gid)) = server.run_as() {
            for path in [dir.path().to_path_buf(), dir.file("stderr.log")] {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid)).unwrap();
            }
            command.uid(uid).gid(gid);
        }
        let child = command.spawn().expect("start pgbouncer");
        let mut pgbouncer = PgBouncer { child, port, dir };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Ok(Some(status)) = pgbouncer.child.try_wait() {
                panic!("pgbouncer exited ({status}):\n{}", pgbouncer.logs());
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return pgbouncer;
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer not up:\n{}",
                pgbouncer.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The URL of `database` through the pooler.
    fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}?sslmode=disable",
            rowcast::pg::embedded::USER,
            self.port
        )
    }

    fn logs(&self) -> String {
        ["stderr.log", "pgbouncer.log"]
            .iter()
            .map(|f| std::fs::read_to_string(self.dir.file(f)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_pgbouncer_in_transaction_mode_auto_polls_says_so_and_delivers_every_change() {
    let cluster = Cluster::private();
    let db = cluster.database();
    let pgbouncer = PgBouncer::start(&cluster).await;
    let poll = Duration::from_millis(200);
    let replica = Replica::start(
        &pgbouncer.url(&db.name),
        // Transaction pooling: WAL capture's session lock cannot pass it (README).
        &[
            "--capture",
            "trigger",
            "--source",
            "auto",
            "--poll-interval",
            "200ms",
        ],
    )
    .await;
    assert!(
        replica
            .stderr()
            .contains("LISTEN/NOTIFY does not work on this connection"),
        "the fallback is logged:\n{}",
        replica.stderr()
    );
    assert_eq!(replica.readyz().await["source"], "poll");
    assert_eq!(replica.metric("rowcast_source_polling").await, 1);

    let mut ws = WsClient::connect(replica.addr, "").await;
    ws.until_ready().await;
    let mut sse = SseClient::connect(replica.addr, "", &[]).await;
    sse.until_ready().await;
    let writer = db.client().await;
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let id = insert_order(&writer, &format!("pooled {i}"), "widget").await;
        let committed = Instant::now();
        let from_ws = ws.changes(1).await;
        let from_sse = sse.changes(1).await;
        slowest = slowest.max(committed.elapsed());
        assert_eq!(from_ws[0]["row"]["id"], id);
        assert_eq!(from_ws[0], from_sse[0].json());
    }
    // About one poll interval: the wait for the next tick plus one query.
    eprintln!("slowest delivery through PgBouncer: {slowest:?} (poll {poll:?})");
    assert!(
        slowest < poll + Duration::from_millis(500),
        "slowest delivery {slowest:?} with a {poll:?} poll"
    );
    assert_eq!(replica.readyz().await["source"], "poll");
    assert_eq!(
        replica.metric("rowcast_db_reconnects_total").await,
        0,
        "the source never lost its pooled connection:\n{}",
        replica.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_behind_pgbouncer_in_transaction_mode_serves_concurrent_calls() {
    // Named prepared statements break under transaction pooling (a statement prepared
    // on one server connection is executed on another); the API's unnamed typed
    // statements must not.
    let cluster = Cluster::private();
    let db = cluster.database();
    let pgbouncer = PgBouncer::start(&cluster).await;
    let replica = Replica::start(
        &pgbouncer.url(&db.name),
        // Transaction pooling: WAL capture's session lock cannot pass it (README).
        &[
            "--capture",
            "trigger",
            "--source",
            "poll",
            "--pool-size",
            "8",
        ],
    )
    .await;
    let addr = replica.addr;
    let calls: Vec<_> = (0..8)
        .map(|worker| {
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..40 {
                    let body = format!(r#"{{"customer_name":"w{worker}","product_name":"p{i}"}}"#);
                    let created =
                        http(addr, "POST", "/api/orders", &[], Some(body.as_bytes())).await;
                    statuses.push(created.status);
                    if created.status == 201 {
                        let id = created.json()["id"].as_i64().unwrap();
                        let path = format!("/api/orders/{id}");
                        statuses.push(http(addr, "GET", &path, &[], None).await.status);
                        let patch =
                            http(addr, "PATCH", &path, &[], Some(br#"{"status":"shipped"}"#)).await;
                        statuses.push(patch.status);
                    }
                    statuses.push(
                        http(addr, "GET", "/api/orders?limit=5", &[], None)
                            .await
                            .status,
                    );
                }
                statuses
            })
        })
        .collect();
    let mut failures = 0;
    for call in calls {
        failures += call
            .await
            .unwrap()
            .iter()
            .filter(|s| !matches!(s, 200 | 201))
            .count();
    }
    assert_eq!(
        failures,
        0,
        "failed calls through PgBouncer:\n{}",
        replica.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn straight_to_postgresql_auto_uses_notify_and_the_polling_gauge_is_zero() {
    let db = TestDb::new();
    let replica = Replica::start(&db.url, &["--source", "auto"]).await;
    assert_eq!(replica.readyz().await["source"], "notify");
    assert_eq!(replica.metric("rowcast_source_polling").await, 0);
    let polling = Replica::start(&db.url, &["--source", "poll"]).await;
    assert_eq!(polling.metric("rowcast_source_polling").await, 1);
}
