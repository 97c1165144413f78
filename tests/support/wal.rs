//! WAL capture helpers: an in-process capturer replica and waits on its progress.

use std::sync::Arc;
use std::time::Duration;

use rowcast::pg::capture::wal::Capturer;
use rowcast::pg::capture::{switch, CaptureMode, CaptureStatus};
use tokio_util::sync::CancellationToken;

use super::TestDb;

/// One capturer replica, in-process, on the test database's own slot (slots are per
/// cluster, so each test database's slot is named after it).
pub struct Replica {
    /// What its `/readyz` and `/metrics` would show.
    pub status: Arc<CaptureStatus>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Replica {
    /// Switches `db` to WAL mode (if needed) and captures, until stopped.
    pub fn start(db: &TestDb) -> Replica {
        Replica::spawn(db, |capturer, stop| capturer.switch_and_run(stop))
    }

    /// A capturer that never switches modes itself: it captures while the database is
    /// in WAL mode and stands by otherwise.
    pub fn standby(db: &TestDb) -> Replica {
        Replica::spawn(db, |capturer, stop| capturer.run(stop))
    }

    /// A capturer of `db` (its slot named after the database), run by `run` until
    /// stopped.
    fn spawn<F>(db: &TestDb, run: impl FnOnce(Capturer, CancellationToken) -> F) -> Replica
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let status = Arc::new(CaptureStatus::default());
        let capturer = Capturer {
            target: db.target.clone(),
            capture: db.target.clone(),
            slot: db.name.clone(),
            status: Arc::clone(&status),
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(capturer, stop.clone()));
        Replica { status, stop, task }
    }

    /// Stops it and waits for its task.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Waits until the database is in WAL mode.
pub async fn wal_mode(db: &TestDb) {
    wal_mode_at(&db.target).await;
}

/// How long a switch to WAL mode may take: creating a slot waits for every
/// transaction running on the cluster, and other tests' transactions can be long.
const SWITCH_WAIT: Duration = Duration::from_secs(90);

/// Waits until the database at `target` is in WAL mode.
pub async fn wal_mode_at(target: &rowcast::pg::DbTarget) {
    let client = target.connect_spawned().await.expect("connect");
    let deadline = tokio::time::Instant::now() + SWITCH_WAIT;
    while switch::mode(&client).await.unwrap() != CaptureMode::Wal {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no switch to WAL mode"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the capturer has applied everything committed so far: the slot's
/// confirmed position (raised only once what precedes it is applied) passes the WAL
/// position of now.
pub async fn applied(db: &TestDb) {
    let client = db.client().await;
    let target: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let done: bool = client
            .query_one(
                "SELECT coalesce(bool_or(confirmed_flush_lsn >= $1::text::pg_lsn), false)
                 FROM pg_replication_slots WHERE slot_name = $2",
                &[&target, &db.name],
            )
            .await
            .unwrap()
            .get(0);
        if done {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "capture stuck");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
