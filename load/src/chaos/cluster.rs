//! The system under test: three (or more) rowcast replicas this process owns, and the
//! PostgreSQL cluster the script started (restarted through `pg_ctl`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

/// How to start a replica and reach the database.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The release `rowcast` binary.
    pub rowcast: PathBuf,
    /// The database every replica and writer uses.
    pub database_url: String,
    /// A script running `pg_ctl -D <data>` as the cluster's owner with its arguments.
    pub pg_ctl: PathBuf,
    /// Where replica logs go.
    pub log_dir: PathBuf,
    /// `--send-timeout` of the replicas: a stalled client must outlast it.
    pub send_timeout: Duration,
    /// `--capture` of the replicas: `trigger` or `wal`.
    pub capture: String,
    /// The network namespace replica 0 runs in, when the script made one.
    pub netns: Option<Netns>,
    /// `--ring-capacity` of the replicas: small, so resumes page from the database
    /// and a pruned position really gets a `reset` (a ring that still holds it would
    /// serve it, rightly, without one).
    pub ring_capacity: u64,
}

/// The network namespace `scripts/chaos.sh` makes for replica 0: two veth pairs, one
/// to PostgreSQL and one to the clients, so each link can be cut or degraded alone.
#[derive(Debug, Clone)]
pub struct Netns {
    /// Its name (`ip netns exec <name>`).
    pub name: String,
    /// The database as seen from inside: PostgreSQL's host-side veth address.
    pub database_url: String,
}

/// The interfaces of one link of the namespace: (host side, namespace side). The
/// script creates them with these names.
pub const PG_LINK: (&str, &str) = ("rcx0pg-h", "rcx0pg-n");
/// The link clients and nginx reach replica 0 through.
pub const CLIENT_LINK: (&str, &str) = ("rcx0cl-h", "rcx0cl-n");

/// One replica: its address and, while it runs, its process.
pub struct Replica {
    /// The address it listens on (kept across restarts, so clients find it): loopback,
    /// or replica 0's namespace address.
    pub port: SocketAddr,
    /// The running process, `None` between a SIGKILL and the restart.
    child: Option<Child>,
    /// Its process id (0 while it is down), readable without the replica's lock so the
    /// memory sampler can read `/proc` while a fault holds the replica.
    pub pid_cell: Arc<AtomicU32>,
    /// Which start this is (for the log file name).
    starts: u32,
}

impl Replica {
    /// Starts a replica on `port`.
    pub fn start(setup: &Setup, index: usize, port: SocketAddr) -> std::io::Result<Replica> {
        let mut replica = Replica {
            port,
            child: None,
            pid_cell: Arc::new(AtomicU32::new(0)),
            starts: 0,
        };
        replica.spawn(setup, index)?;
        Ok(replica)
    }

    fn spawn(&mut self, setup: &Setup, index: usize) -> std::io::Result<()> {
        self.starts += 1;
        let log = std::fs::File::create(
            setup
                .log_dir
                .join(format!("replica-{index}-{}.log", self.starts)),
        )?;
        // Replica 0 runs inside the namespace when there is one (`ip netns exec` execs
        // rowcast in place, so the pid is rowcast's own).
        let inside = setup.netns.as_ref().filter(|_| index == 0);
        let mut command = match inside {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &ns.name]).arg(&setup.rowcast);
                c
            }
            None => Command::new(&setup.rowcast),
        };
        let url = inside.map_or(&setup.database_url, |ns| &ns.database_url);
        let child = command
            .arg("serve")
            .arg("--listen")
            .arg(self.port.to_string())
            .arg("--database-url")
            .arg(url)
            .arg("--heartbeat")
            .arg("1s")
            .arg("--send-timeout")
            .arg(format!("{}ms", setup.send_timeout.as_millis()))
            .arg("--no-migrate")
            .arg("--ring-capacity")
            .arg(setup.ring_capacity.to_string())
            .arg("--capture")
            .arg(&setup.capture)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.pid_cell
            .store(child.id().unwrap_or(0), Ordering::Relaxed);
        self.child = Some(child);
        Ok(())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// SIGKILL, and wait for the process to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            self.pid_cell.store(0, Ordering::Relaxed);
            let _ = child.kill().await;
        }
    }

    /// Starts it again after [`Replica::kill`].
    pub fn restart(&mut self, setup: &Setup, index: usize) -> std::io::Result<()> {
        self.spawn(setup, index)
    }
}

/// Sends a signal by name (`STOP`, `CONT`) with the system's `kill`.
pub async fn signal(pid: u32, name: &str) -> bool {
    Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `pg_ctl restart -m <mode>`; true when it came back.
pub async fn restart_postgres(setup: &Setup, mode: &str) -> bool {
    let run = Command::new(&setup.pg_ctl)
        .args(["restart", "-m", mode, "-w", "-t", "60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(90), run).await,
        Ok(Ok(s)) if s.success()
    )
}

/// The status code of a plain `GET path` on a loopback port, `None` when there was no
/// answer within 2 s.
pub async fn http_status(port: SocketAddr, path: &str) -> Option<u16> {
    let answer = async {
        let mut stream = TcpStream::connect(port).await.ok()?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 64];
        let n = stream.read(&mut head).await.ok()?;
        parse_status(&head[..n])
    };
    tokio::time::timeout(Duration::from_secs(2), answer)
        .await
        .ok()
        .flatten()
}

/// Whether the replica on `port` says it holds the WAL capturer lock (its
/// `rowcast_capturer` gauge is 1).
pub async fn is_capturer(port: SocketAddr) -> bool {
    let answer = async {
        let mut stream = TcpStream::connect(port).await.ok()?;
        let request = "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut body = Vec::new();
        stream.read_to_end(&mut body).await.ok()?;
        Some(
            String::from_utf8_lossy(&body)
                .lines()
                .any(|l| l.trim() == "rowcast_capturer 1"),
        )
    };
    tokio::time::timeout(Duration::from_secs(2), answer)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The code in an HTTP/1.1 status line.
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let line = head.strip_prefix(b"HTTP/1.1 ")?;
    std::str::from_utf8(line.get(..3)?).ok()?.parse().ok()
}

/// A process's resident set in bytes, from `/proc/<pid>/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs a network command (`ip`, `tc`, `iptables`), inside `netns` when given; true
/// when it succeeded.
pub async fn net(netns: Option<&str>, program: &str, args: &[&str]) -> bool {
    let mut command = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    };
    let run = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(
        tokio::time::timeout(Duration::from_secs(10), run).await,
        Ok(Ok(s)) if s.success()
    )
}
