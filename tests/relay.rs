//! The NATS JetStream relay (`--relay`) on a real `nats-server -js` of the test's own:
//! one replica publishes, the others consume, and NATS going away and coming back under
//! writers loses, duplicates and reorders nothing, nor does the publisher's replica
//! stopping.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rowcast::metrics::Path;
use support::nats::NatsServer;
use support::*;

/// A gateway configuration for `db` relaying through `nats` (a stream per database).
fn relayed(db: &TestDb, nats: &NatsServer) -> rowcast::config::Config {
    rowcast::config::Config {
        relay: Some(nats.url()),
        relay_stream: db.name.clone(),
        ..db.config()
    }
}

/// Waits for `what` to hold, checking every 20 ms.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether exactly one of `servers` publishes and every other consumes.
fn one_publisher_the_rest_consume(servers: &[TestServer]) -> bool {
    let publishers = servers
        .iter()
        .filter(|s| s.gateway.metrics.relay_publisher.get() == 1)
        .count();
    let consumers = servers
        .iter()
        .filter(|s| s.gateway.metrics.relay_consuming.get() == 1)
        .count();
    publishers == 1 && consumers == servers.len() - 1
}

/// Inserts orders one commit at a time until `stop`; returns how many.
async fn writer(db: TestDb, stop: Arc<AtomicBool>) -> usize {
    let client = db.client().await;
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        insert_order(&client, &format!("w{n}"), "p").await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    n
}

/// `n` replicas of `db` relaying through `nats`, once one publishes and the rest consume.
async fn relayed_replicas(db: &TestDb, nats: &NatsServer, n: usize) -> Vec<TestServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(TestServer::start(relayed(db, nats)).await);
    }
    eventually("one publisher, the rest consuming", || {
        one_publisher_the_rest_consume(&servers)
    })
    .await;
    servers
}

/// A ready SSE client on each of `servers`.
async fn clients_of(servers: &[TestServer]) -> Vec<SseClient> {
    let mut clients = Vec::new();
    for server in servers {
        let mut sse = SseClient::connect(server.addr, "", &[]).await;
        sse.until_ready().await;
        clients.push(sse);
    }
    clients
}

/// 8 writers inserting into `db` until `stop`.
fn writers(db: &TestDb, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<usize>> {
    (0..8)
        .map(|_| tokio::spawn(writer(db.clone(), Arc::clone(stop))))
        .collect()
}

/// Stops the writers; returns how many orders they inserted.
async fn stop_writers(stop: &AtomicBool, writers: Vec<tokio::task::JoinHandle<usize>>) -> usize {
    stop.store(true, Ordering::Relaxed);
    let mut written = 0;
    for writer in writers {
        written += writer.await.unwrap();
    }
    written
}

/// Events the replicas received through the relay, together.
fn relayed_events(servers: &[TestServer]) -> u64 {
    servers
        .iter()
        .map(|s| s.gateway.metrics.received(Path::Relay).get())
        .sum()
}

/// Asserts that change_log holds the `written` orders and that every client got each
/// of them once, in order.
async fn every_client_got_every_change_once(
    db: &TestDb,
    clients: &mut [SseClient],
    written: usize,
) {
    let ids = all_ids(db).await;
    assert_eq!(ids.len(), written);
    for (k, sse) in clients.iter_mut().enumerate() {
        let got: Vec<u64> = sse
            .changes(ids.len())
            .await
            .iter()
            .map(|e| e.id.as_deref().unwrap().parse().unwrap())
            .collect();
        assert_eq!(got, ids, "client {k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_killed_and_restarted_under_writers_loses_duplicates_and_reorders_nothing() {
    let mut nats = NatsServer::start();
    let db = TestDb::new();
    let servers = relayed_replicas(&db, &nats, 3).await;
    let mut clients = clients_of(&servers).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers = writers(&db, &stop);
    // /readyz stays 200 throughout: change_log serves while NATS is away.
    let watching = Arc::new(AtomicBool::new(true));
    let watchers: Vec<_> = servers
        .iter()
        .map(|server| {
            let (addr, watching) = (server.addr, Arc::clone(&watching));
            tokio::spawn(async move {
                while watching.load(Ordering::Relaxed) {
                    let status = http(addr, "GET", "/readyz", &[], None).await.status;
                    assert_eq!(status, 200, "/readyz of {addr} during the NATS outage");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let relayed_before = relayed_events(&servers);
    assert!(relayed_before > 0, "nothing came through the relay");
    nats.kill();
    eventually("every replica to stop consuming", || {
        servers
            .iter()
            .all(|s| s.gateway.metrics.relay_consuming.get() == 0)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart();
    eventually("the relay to serve again", || {
        one_publisher_the_rest_consume(&servers)
    })
    .await;
    let relayed_after_restart = relayed_events(&servers);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written = stop_writers(&stop, writers).await;
    watching.store(false, Ordering::Relaxed);
    for watcher in watchers {
        watcher.await.unwrap();
    }
    assert!(
        relayed_events(&servers) > relayed_after_restart,
        "the relay carried nothing after NATS came back"
    );
    every_client_got_every_change_once(&db, &mut clients, written).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_started_while_nats_is_down_reads_change_log_then_consumes() {
    let mut nats = NatsServer::start();
    nats.kill();
    let db = TestDb::new();
    let a = TestServer::start(relayed(&db, &nats)).await;
    let b = TestServer::start(relayed(&db, &nats)).await;
    let client = db.client().await;
    let mut sse = SseClient::connect(b.addr, "", &[]).await;
    sse.until_ready().await;
    let first = insert_order(&client, "while NATS is down", "p").await;
    let got = sse.changes(1).await;
    assert_eq!(got[0].json()["row"]["id"], first);
    nats.restart();
    let servers = [a, b];
    eventually("one publisher, one consumer", || {
        one_publisher_the_rest_consume(&servers)
    })
    .await;
    let consumer = servers
        .iter()
        .position(|s| s.gateway.metrics.relay_consuming.get() == 1)
        .unwrap();
    let mut sse = SseClient::connect(servers[consumer].addr, "", &[]).await;
    sse.until_ready().await;
    // The consumer's subscription may take a moment after NATS is back: until then a
    // change reaches it by reading change_log. Write until one comes through the
    // relay, then count.
    let metrics = &servers[consumer].gateway.metrics;
    let before = metrics.received(Path::Relay).get();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        insert_order(&client, "relay back", "p").await;
        sse.changes(1).await;
        // The relay's copy may be counted just after the client has the change.
        tokio::time::sleep(Duration::from_millis(200)).await;
        if metrics.received(Path::Relay).get() > before {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for a change through the relay after NATS returned"
        );
    }
    let relayed = metrics.received(Path::Relay).get();
    let reads = metrics.catchup_queries.get();
    for k in 0..10 {
        insert_order(&client, &format!("relayed {k}"), "p").await;
    }
    let ids: Vec<u64> = sse
        .changes(10)
        .await
        .iter()
        .map(|e| e.id.as_deref().unwrap().parse().unwrap())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(
        metrics.received(Path::Relay).get() >= relayed + 8,
        "the consumer did not receive through the relay"
    );
    assert!(
        metrics.catchup_queries.get() - reads <= 3,
        "the consumer kept reading change_log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_publisher_stopping_under_writers_hands_over_and_loses_duplicates_and_reorders_nothing()
{
    let nats = NatsServer::start();
    let db = TestDb::new();
    let mut servers = relayed_replicas(&db, &nats, 3).await;
    let publisher = servers
        .iter()
        .position(|s| s.gateway.metrics.relay_publisher.get() == 1)
        .unwrap();
    let publisher = servers.remove(publisher);
    let mut clients = clients_of(&servers).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writers = writers(&db, &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publisher.shutdown().await;
    eventually("another replica to publish, the last to consume", || {
        one_publisher_the_rest_consume(&servers)
    })
    .await;
    let relayed_after_takeover = relayed_events(&servers);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let written = stop_writers(&stop, writers).await;
    assert!(
        relayed_events(&servers) > relayed_after_takeover,
        "the relay carried nothing after the takeover"
    );
    every_client_got_every_change_once(&db, &mut clients, written).await;
}
