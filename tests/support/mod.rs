//! The test harness: a throwaway PostgreSQL per test binary (or `DATABASE_URL`), a
//! fresh database per test cloned from a migrated template, an in-process gateway on
//! port 0, and real WebSocket and SSE clients.
#![allow(dead_code)]

pub mod clients;
pub mod contract;
pub mod either;
pub mod nats;
pub mod process;
pub mod proxy;
pub mod wal;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rowcast::config::{Config, Database};
use rowcast::gateway::Gateway;
use rowcast::pg::embedded::{Embedded, Options};
use rowcast::pg::{migrate, DbTarget};
use tokio::task::JoinHandle;

#[allow(unused_imports)]
pub use clients::{
    http, metric, raw_exchange, readyz_ok, HttpResponse, SseClient, SseEvent, WsClient, WsEnd,
};
#[allow(unused_imports)]
pub use either::{checked_sse, enc, within, Client, Transport, BOTH};
#[allow(unused_imports)]
pub use process::GatewayProcess;

/// Generous bound for anything a test awaits.
pub const WAIT: Duration = Duration::from_secs(15);

/// A PostgreSQL server the tests may create databases on.
pub struct Cluster {
    /// The admin connection (database `postgres`).
    admin: DbTarget,
    /// A URL without the database name, for child processes: `{base}/{db}`.
    url_base: String,
    /// Query string to append to URLs (`?sslmode=disable`).
    url_query: String,
    /// The private server, when not using `DATABASE_URL`.
    server: Option<Embedded>,
    template: String,
}

static SHARED: OnceLock<Cluster> = OnceLock::new();
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// Runs async set-up code from sync context (also from inside a runtime).
fn block_on<T: Send + 'static>(future: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(future)
    })
    .join()
    .expect("set-up thread")
}

impl Cluster {
    /// The cluster shared by every test of this binary.
    pub fn shared() -> &'static Cluster {
        SHARED.get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) => Cluster::from_url(&url),
            Err(_) => Cluster::private(),
        })
    }

    fn from_url(url: &str) -> Cluster {
        let (without_query, query) = match url.split_once('?') {
            Some((a, q)) => (a.to_owned(), format!("?{q}")),
            None => (url.to_owned(), String::new()),
        };
        let base = match without_query.rsplit_once('/') {
            Some((base, _db)) if base.contains("://") && base.len() > "postgres://".len() => {
                base.to_owned()
            }
            _ => without_query.clone(),
        };
        let admin = DbTarget::from_url(url).expect("DATABASE_URL");
        let mut cluster = Cluster {
            admin,
            url_base: base,
            url_query: query,
            server: None,
            template: String::new(),
        };
        cluster.prepare_template();
        cluster
    }

    /// A cluster of its own, for tests that stop and start PostgreSQL.
    pub fn private() -> Cluster {
        Cluster::private_with(Options {
            fsync: false,
            max_connections: 300,
            ..Options::default()
        })
    }

    /// A cluster of its own with durable commits, for tests that crash PostgreSQL
    /// and count on acknowledged commits surviving.
    pub fn private_durable() -> Cluster {
        Cluster::private_with(Options {
            fsync: true,
            max_connections: 300,
            ..Options::default()
        })
    }

    /// A cluster of its own without logical decoding (`wal_level=replica`).
    pub fn private_without_logical_decoding() -> Cluster {
        Cluster::private_with(Options {
            fsync: false,
            max_connections: 50,
            logical_decoding: false,
        })
    }

    fn private_with(options: Options) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "rowcast-test-{}-{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let server = Embedded::start(&dir, &options).expect("start a throwaway PostgreSQL");
        reap_when_we_exit(&dir);
        allow_password_role(&server);
        let port = server.port();
        let mut cluster = Cluster {
            admin: server.target("postgres"),
            url_base: format!(
                "postgres://{}@127.0.0.1:{port}",
                rowcast::pg::embedded::USER
            ),
            url_query: "?sslmode=disable".into(),
            server: Some(server),
            template: String::new(),
        };
        cluster.prepare_template();
        cluster
    }

    fn prepare_template(&mut self) {
        let name = format!("rowcast_template_{}", std::process::id());
        let admin = self.admin.clone();
        let template_target = self.admin.with_dbname(&name);
        let template = name.clone();
        block_on(async move {
            let client = admin.connect_spawned().await.expect("admin connection");
            for statement in [
                format!("DROP DATABASE IF EXISTS {template}"),
                format!("CREATE DATABASE {template}"),
            ] {
                client
                    .batch_execute(&statement)
                    .await
                    .expect("create template");
            }
            let mut client = template_target
                .connect_spawned()
                .await
                .expect("template connection");
            migrate::apply(&mut client).await.expect("migrate template");
        });
        self.template = name;
    }

    /// A fresh, migrated, empty database.
    pub fn database(&self) -> TestDb {
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.admin.clone();
        let statement = format!("CREATE DATABASE {name} TEMPLATE {}", self.template);
        block_on(async move {
            let client = admin.connect_spawned().await.expect("admin connection");
            // Cloning needs the template idle; retry while another clone holds it.
            for attempt in 0.. {
                match client.batch_execute(&statement).await {
                    Ok(()) => break,
                    Err(err) if attempt < 50 => {
                        let _ = err;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(err) => panic!("create test database: {err}"),
                }
            }
        });
        TestDb {
            target: self.admin.with_dbname(&name),
            url: format!("{}/{name}{}", self.url_base, self.url_query),
            name,
        }
    }

    /// A fresh database with no schema at all (for migration tests).
    pub fn empty_database(&self) -> TestDb {
        let name = format!(
            "e_{}_{}",
            std::process::id(),
            NEXT_DB.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.admin.clone();
        let statement = format!("CREATE DATABASE {name}");
        block_on(async move {
            let client = admin.connect_spawned().await.expect("admin connection");
            client
                .batch_execute(&statement)
                .await
                .expect("create database");
        });
        TestDb {
            target: self.admin.with_dbname(&name),
            url: format!("{}/{name}{}", self.url_base, self.url_query),
            name,
        }
    }

    /// The private server (None under `DATABASE_URL`).
    pub fn server(&self) -> Option<&Embedded> {
        self.server.as_ref()
    }

    /// The URL of database `name` on this cluster.
    pub fn url_of(&self, name: &str) -> String {
        format!("{}/{name}{}", self.url_base, self.url_query)
    }
}

/// Adds a role that must log in with a password (the cluster is otherwise trust), so
/// that "wrong password" can be tested.
fn allow_password_role(server: &Embedded) {
    let hba = server.data_dir().join("pg_hba.conf");
    let existing = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all rowcast_pw 127.0.0.1/32 scram-sha-256\n{existing}"),
    )
    .expect("write pg_hba.conf");
    let admin = server.target("postgres");
    block_on(async move {
        let client = admin.connect_spawned().await.expect("admin");
        client
            .batch_execute(
                "CREATE ROLE rowcast_pw LOGIN PASSWORD 'right-password'; SELECT pg_reload_conf();",
            )
            .await
            .expect("password role");
    });
}

/// Starts a watchdog that stops the cluster and deletes its directory once this test
/// process has exited, however it exits (a failed assertion, a panic, a kill).
fn reap_when_we_exit(dir: &std::path::Path) {
    when_we_exit(&format!(
        "if [ -f '{dir}/postmaster.pid' ]; then kill -QUIT $(head -1 '{dir}/postmaster.pid') 2>/dev/null; fi; \
         for i in $(seq 1 50); do [ -f '{dir}/postmaster.pid' ] || break; sleep 0.1; done; \
         rm -rf '{dir}'",
        dir = dir.display()
    ));
}

/// Runs the shell `script` once this test process has exited, however it exits: for
/// servers held in statics, which are never dropped.
pub fn when_we_exit(script: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {script}",
        pid = std::process::id()
    );
    let _ = Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}

/// One test's database.
#[derive(Clone)]
pub struct TestDb {
    /// Where it is.
    pub target: DbTarget,
    /// Its URL, for child processes.
    pub url: String,
    /// Its name.
    pub name: String,
}

impl TestDb {
    /// A fresh database on the shared cluster.
    pub fn new() -> TestDb {
        Cluster::shared().database()
    }

    /// A connection with its driver spawned.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.target
            .connect_spawned()
            .await
            .expect("test database connection")
    }

    /// A gateway configuration pointing at this database, listening on port 0. With
    /// `ROWCAST_TEST_CAPTURE=wal` every such gateway captures from the WAL (on a slot
    /// named after the database): the capture-mode matrix runs the same tests twice.
    /// With `ROWCAST_TEST_RELAY=1` every such gateway relays through NATS.
    pub fn config(&self) -> Config {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            database: Database::Target(Box::new(self.target.clone())),
            pool_size: 4,
            ..Config::default()
        };
        if wal_matrix() {
            config.capture = rowcast::pg::capture::CaptureMode::Wal;
            config.capture_slot = self.name.clone();
        }
        // The relay matrix: one stream per database on the shared NATS server.
        if let Some(url) = nats::matrix_relay() {
            config.relay = Some(url);
            config.relay_stream = self.name.clone();
        }
        config
    }
}

/// An in-process gateway on an ephemeral port.
pub struct TestServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    /// Its state.
    pub gateway: Arc<Gateway>,
    server: Option<JoinHandle<bool>>,
}

impl TestServer {
    /// Starts a gateway on `config` and waits until its source is live.
    pub async fn start(config: Config) -> TestServer {
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let wal = match (&config.capture, &config.database) {
            (rowcast::pg::capture::CaptureMode::Wal, Database::Target(target)) => {
                Some(DbTarget::clone(target))
            }
            _ => None,
        };
        let gateway = Gateway::start(config).await.expect("gateway start");
        if let Some(target) = wal {
            // Switched, or refused (a test of the refusal sees /readyz say why).
            tokio::select! {
                () = wal::wal_mode_at(&target) => {}
                () = async {
                    while gateway.capture.refusal().is_none() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                } => {}
            }
        }
        let server = tokio::spawn(rowcast::http::run(listener, Arc::clone(&gateway), 10_000));
        tokio::time::timeout(WAIT, gateway.source.wait_live())
            .await
            .expect("source live");
        TestServer {
            addr,
            gateway,
            server: Some(server),
        }
    }

    /// `http://addr`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts down like SIGTERM does and waits; returns whether the drain finished.
    pub async fn shutdown(mut self) -> bool {
        self.gateway.shutdown.cancel();
        let drained = match self.server.take() {
            Some(server) => server.await.unwrap_or(false),
            None => true,
        };
        self.gateway.stop().await;
        drained
    }

    /// Waits until the source has read up to the database's newest change (under WAL
    /// capture, once everything committed so far is captured).
    pub async fn caught_up(&self, db: &TestDb) {
        if self.gateway.config.capture == rowcast::pg::capture::CaptureMode::Wal {
            wal::applied(db).await;
        }
        let client = db.client().await;
        let head = rowcast::pg::changes::head(&client).await.unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.gateway.log.head() < head {
            assert!(
                tokio::time::Instant::now() < deadline,
                "source did not catch up to {head}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.gateway.shutdown.cancel();
    }
}

/// Whether this run is the WAL half of the capture-mode matrix (`ROWCAST_TEST_CAPTURE=wal`).
pub fn wal_matrix() -> bool {
    std::env::var("ROWCAST_TEST_CAPTURE").as_deref() == Ok("wal")
}

/// Waits until everything committed so far is in `change_log`: at once under trigger
/// capture (it writes at commit), after the capturer applied it under WAL capture.
pub async fn captured(db: &TestDb) {
    if !wal_matrix() {
        return;
    }
    let mode = rowcast::pg::capture::switch::mode(&db.client().await)
        .await
        .expect("capture mode");
    if mode == rowcast::pg::capture::CaptureMode::Wal {
        wal::applied(db).await;
    }
}

/// The built `rowcast` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_rowcast"))
}

/// A free TCP port on 127.0.0.1 (for child processes that need a fixed address).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The id of every row in `change_log`, in order.
pub async fn all_ids(db: &TestDb) -> Vec<u64> {
    db.client()
        .await
        .query("SELECT id FROM realtime.change_log ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<_, i64>(0) as u64)
        .collect()
}

/// Inserts an order with SQL and returns its id.
pub async fn insert_order(client: &tokio_postgres::Client, customer: &str, product: &str) -> i32 {
    client
        .query_one(
            "INSERT INTO orders (customer_name, product_name) VALUES ($1, $2) RETURNING id",
            &[&customer, &product],
        )
        .await
        .unwrap()
        .get(0)
}

/// A program of the virtualenv scripts/test installs from PyPI: `ROWCAST_PYTHON_TOOLS`
/// (scripts/test sets it) or its default place in the cache directory.
pub fn python_tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("ROWCAST_PYTHON_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_default()
                .join("rowcast/python-tools")
        });
    let tool = venv.join("bin").join(name);
    assert!(
        tool.exists(),
        "{name} is missing at {}: run scripts/test, which installs it from PyPI",
        tool.display()
    );
    tool
}
