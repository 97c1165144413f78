//! A real `nats-server -js` on a free loopback port with a store directory of its own
//! (never the machine's own NATS), and the relay half of the test matrix
//! (`ROWCAST_TEST_RELAY=1`: every test gateway relays through a shared server).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::free_port;

/// Debian's `nats-server` package installs it here (scripts/test installs it).
const BINARY: &str = "/usr/sbin/nats-server";

static NEXT_STORE: AtomicU32 = AtomicU32::new(0);
static SHARED: OnceLock<NatsServer> = OnceLock::new();

/// A `nats-server -js` child process; killed (and its store removed) when dropped.
pub struct NatsServer {
    /// The running process, if it runs.
    child: Option<Child>,
    /// Where it listens (kept across restarts, so clients reconnect to it).
    pub addr: SocketAddr,
    /// JetStream's store: kept across restarts, so the stream survives them.
    store: PathBuf,
}

impl NatsServer {
    /// Starts one on a free port and waits until it accepts connections.
    pub fn start() -> NatsServer {
        let store = std::env::temp_dir().join(format!(
            "rowcast-nats-{}-{}",
            std::process::id(),
            NEXT_STORE.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&store);
        std::fs::create_dir_all(&store).expect("NATS store directory");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        reap_when_we_exit(&store);
        let mut server = NatsServer {
            child: None,
            addr,
            store,
        };
        server.restart();
        server
    }

    /// `nats://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// SIGKILL, like a crashed host.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and store (after [`kill`](Self::kill)).
    pub fn restart(&mut self) {
        self.kill();
        let child = Command::new(BINARY)
            .args(["-js", "-a", "127.0.0.1", "-p"])
            .arg(self.addr.port().to_string())
            .arg("-sd")
            .arg(&self.store)
            .arg("-P")
            .arg(self.store.join("nats.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|err| panic!("{BINARY} (Debian package nats-server): {err}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}

/// Kills the server and removes its store once this test process has exited, however
/// it exits (the shared server is never dropped).
fn reap_when_we_exit(store: &std::path::Path) {
    super::when_we_exit(&format!(
        "[ -f '{dir}/nats.pid' ] && kill -9 $(cat '{dir}/nats.pid') 2>/dev/null; rm -rf '{dir}'",
        dir = store.display()
    ));
}

/// Whether this run is the relay half of the matrix (`ROWCAST_TEST_RELAY=1`).
pub fn relay_matrix() -> bool {
    std::env::var("ROWCAST_TEST_RELAY").as_deref() == Ok("1")
}

/// In the relay matrix, the URL of the server shared by this test binary.
pub fn matrix_relay() -> Option<String> {
    relay_matrix().then(|| SHARED.get_or_init(NatsServer::start).url())
}

/// In the relay matrix, the flags that make a gateway process for database `name`
/// relay through the shared server (one stream per database).
pub fn relay_flags(name: &str) -> Vec<String> {
    match matrix_relay() {
        Some(url) => vec!["--relay".into(), url, "--relay-stream".into(), name.into()],
        None => Vec::new(),
    }
}
