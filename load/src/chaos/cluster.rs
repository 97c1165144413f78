//! The system under test: three (or more) rowcast replicas this process owns, and the
//! PostgreSQL cluster the script started (restarted through `pg_ctl`).

use std::path::PathBuf;
use std::process::Stdio;
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
}

/// One replica: its port and, while it runs, its process.
pub struct Replica {
    /// The loopback port it listens on (kept across restarts, so clients find it).
    pub port: u16,
    /// The running process, `None` between a SIGKILL and the restart.
    child: Option<Child>,
    /// Which start this is (for the log file name).
    starts: u32,
}

impl Replica {
    /// Starts a replica on `port`.
    pub fn start(setup: &Setup, index: usize, port: u16) -> std::io::Result<Replica> {
        let mut replica = Replica {
            port,
            child: None,
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
        let child = Command::new(&setup.rowcast)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--database-url")
            .arg(&setup.database_url)
            .arg("--heartbeat")
            .arg("1s")
            .arg("--send-timeout")
            .arg(format!("{}ms", setup.send_timeout.as_millis()))
            .arg("--no-migrate")
            .arg("--capture")
            .arg(&setup.capture)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
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
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    let answer = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
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
pub async fn is_capturer(port: u16) -> bool {
    let answer = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
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
