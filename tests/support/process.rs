//! The real `rowcast` binary as a child process, for restarts, signals and memory.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{binary, free_port, readyz_ok, WAIT};

/// The database name in a URL (`…/name?query`): the relay matrix's stream name.
pub fn db_name(url: &str) -> &str {
    let path = url.split('?').next().unwrap_or(url);
    path.rsplit('/').next().unwrap_or(path)
}

/// A running gateway process; killed when dropped.
pub struct GatewayProcess {
    /// Its child process.
    pub child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The arguments it was started with (for restarts).
    args: Vec<String>,
}

impl GatewayProcess {
    /// Starts `rowcast --listen 127.0.0.1:<free port> --database-url <url> <extra>` and
    /// waits until `/readyz` answers 200.
    pub async fn start(database_url: &str, extra: &[&str]) -> GatewayProcess {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut args = vec![
            "--listen".to_owned(),
            addr.to_string(),
            "--database-url".to_owned(),
            database_url.to_owned(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(super::nats::relay_flags(db_name(database_url)));
        GatewayProcess::spawn(addr, args).await
    }

    async fn spawn(addr: SocketAddr, args: Vec<String>) -> GatewayProcess {
        let child = Command::new(binary())
            .args(&args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn rowcast");
        let process = GatewayProcess { child, addr, args };
        process.wait_ready().await;
        process
    }

    /// Waits until `/readyz` is 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + WAIT;
        loop {
            if readyz_ok(self.addr).await {
                return;
            }
            assert!(Instant::now() < deadline, "gateway not ready in time");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Sends a signal (`"TERM"`, `"KILL"`, …).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit; returns its exit code (None if killed).
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "gateway did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it with SIGKILL and starts a new process with the same arguments.
    pub async fn kill_and_restart(&mut self) {
        self.signal("KILL");
        self.wait_exit(WAIT).await;
        let fresh = GatewayProcess::spawn(self.addr, self.args.clone()).await;
        *self = fresh;
    }

    /// Resident memory in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
