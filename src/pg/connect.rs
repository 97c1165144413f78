//! Where the database is and how to reach it: URLs, libpq's `PG*` variables, TLS
//! modes (`sslmode=disable|prefer|require|verify-ca|verify-full`), and errors that say
//! in one line what went wrong.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::Instant;
use tokio_postgres::config::{Host, SslMode};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::Client;
use tokio_postgres_rustls::MakeRustlsConnect;

/// How much the client checks the server's certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified (libpq's default).
    Prefer,
    /// TLS always, certificate not verified (libpq's `require` without a root cert).
    Require,
    /// TLS, chain verified against the roots, host name not checked.
    VerifyCa,
    /// TLS, chain and host name verified.
    VerifyFull,
}

/// A database to connect to.
#[derive(Clone)]
pub struct DbTarget {
    /// Host, port, user, password, database, application name: what libpq would use.
    config: tokio_postgres::Config,
    /// How far the server's certificate is checked (`sslmode`).
    tls: TlsMode,
    /// The roots to verify against (`sslrootcert`); the system's when absent.
    root_cert: Option<PathBuf>,
}

impl fmt::Debug for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        write!(f, "DbTarget({self})")
    }
}

impl fmt::Display for DbTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = match self.config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = self.config.get_ports().first().copied().unwrap_or(5432);
        write!(
            f,
            "{host}:{port}/{} as {}",
            self.config.get_dbname().unwrap_or("?"),
            self.config.get_user().unwrap_or("?")
        )
    }
}

/// Why a database operation failed, sorted by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL or the `PG*` variables do not describe a database.
    #[error("invalid database configuration: {0}")]
    Config(String),
    /// Nothing answered, or the connection broke: worth retrying.
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    Unreachable {
        /// Where we tried.
        target: String,
        /// The I/O error.
        reason: String,
    },
    /// The server refused the credentials: retrying will not help.
    #[error("PostgreSQL at {target} refused the login: {reason}")]
    Auth {
        /// Where we tried.
        target: String,
        /// The server's message.
        reason: String,
    },
    /// The database named does not exist.
    #[error("PostgreSQL at {target}: {reason}")]
    NoDatabase {
        /// Where we tried.
        target: String,
        /// The server's message.
        reason: String,
    },
    /// The TLS handshake failed (no TLS offered, bad certificate, wrong host name).
    #[error("TLS to PostgreSQL at {target} failed: {reason}")]
    Tls {
        /// Where we tried.
        target: String,
        /// What the TLS layer said.
        reason: String,
    },
    /// The schema rowcast needs is missing (`--no-migrate` against a fresh database).
    #[error("the rowcast schema is missing or incomplete ({0}); run `rowcast migrate` or drop --no-migrate")]
    SchemaMissing(String),
    /// No pooled connection became free in time.
    #[error("no database connection became free within {0:?}")]
    PoolTimeout(Duration),
    /// The server accepted the connection (or a query) and then said nothing until a
    /// deadline passed: a hung server, a proxy in front of a dead one, a wrong port.
    #[error(
        "PostgreSQL at {target} did not answer within {after:.1?} (waiting for {waiting_for})"
    )]
    Timeout {
        /// Where we tried.
        target: String,
        /// The step the server left unanswered.
        waiting_for: Waiting,
        /// How long we waited.
        after: Duration,
    },
    /// Any other error from the server or the driver.
    #[error("database error: {}", describe(.0))]
    Query(#[from] tokio_postgres::Error),
}

/// The driver's error with the server's message and SQLSTATE, which its own Display
/// leaves out ("db error").
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => err.to_string(),
    }
}

impl DbError {
    /// Whether the connection was lost under a query (the server shut down or
    /// restarted, the backend was terminated, the socket closed): the same step on a
    /// new connection may succeed.
    pub fn is_connection_lost(&self) -> bool {
        let DbError::Query(err) = self else {
            return false;
        };
        if err.is_closed() {
            return true;
        }
        match err.as_db_error() {
            // Class 08 (connection exception) and 57P01–57P03 (admin shutdown, crash
            // shutdown, cannot connect now).
            Some(db) => {
                let code = db.code().code();
                code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03")
            }
            // An I/O error under the driver: the socket went away.
            None => std::error::Error::source(err).is_some_and(|e| e.is::<std::io::Error>()),
        }
    }

    /// Whether retrying can never help (bad configuration, credentials, database).
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            DbError::Config(_)
                | DbError::Auth { .. }
                | DbError::NoDatabase { .. }
                | DbError::Tls { .. }
                | DbError::SchemaMissing(_)
        )
    }
}

/// The driver's connection object for our socket and TLS setup.
pub type PgConnection = tokio_postgres::Connection<Watched, TlsStreamOf<Watched>>;

type TlsStreamOf<S> = <MakeRustlsConnect as MakeTlsConnect<S>>::Stream;

/// A step of reaching the database and getting it ready; when a deadline passes, the
/// error names the step the server left unanswered, so an operator knows whether to
/// look at the network, TLS, credentials or the server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The TCP (or Unix socket) connection.
    Connect,
    /// The server's one-byte answer to the SSLRequest (the TLS negotiation).
    TlsNegotiation,
    /// The TLS handshake after the server agreed to TLS.
    TlsHandshake,
    /// The start-up message and authentication, up to ReadyForQuery.
    Authentication,
    /// The first queries on a new connection.
    FirstQuery,
    /// A query on an established connection.
    Query,
    /// Applying or checking the migrations.
    Migrations,
}

impl Waiting {
    const ALL: [Waiting; 7] = [
        Waiting::Connect,
        Waiting::TlsNegotiation,
        Waiting::TlsHandshake,
        Waiting::Authentication,
        Waiting::FirstQuery,
        Waiting::Query,
        Waiting::Migrations,
    ];
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Waiting::Connect => "the TCP connection",
            Waiting::TlsNegotiation => "the answer to the SSLRequest (TLS negotiation)",
            Waiting::TlsHandshake => "the TLS handshake",
            Waiting::Authentication => "authentication",
            Waiting::FirstQuery => "the first query",
            Waiting::Query => "a query",
            Waiting::Migrations => "the migrations",
        })
    }
}

/// The step a connection attempt has reached, shared between the attempt (which
/// moves it on) and its deadline (which reports it).
#[derive(Debug, Clone, Default)]
struct Progress(Arc<AtomicU8>);

impl Progress {
    fn set(&self, step: Waiting) {
        self.0.store(step as u8, Ordering::Release);
    }

    fn step(&self) -> Waiting {
        Waiting::ALL[usize::from(self.0.load(Ordering::Acquire)).min(Waiting::ALL.len() - 1)]
    }
}

/// The socket under a database connection: TCP or Unix, watched during the
/// handshake so that the first byte the server sends moves the attempt on from the
/// TLS negotiation.
#[derive(Debug)]
pub struct Watched {
    socket: Socket,
    progress: Progress,
}

#[derive(Debug)]
enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        };
        if buf.filled().len() > before && self.progress.step() == Waiting::TlsNegotiation {
            self.progress.set(Waiting::Authentication);
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.socket {
            Socket::Tcp(s) => s.is_write_vectored(),
            Socket::Unix(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.socket {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// rustls, marking the start and end of the handshake in the attempt's progress.
struct StagedTls {
    inner: <MakeRustlsConnect as MakeTlsConnect<Watched>>::TlsConnect,
    progress: Progress,
}

type TlsConnectError =
    <<MakeRustlsConnect as MakeTlsConnect<Watched>>::TlsConnect as TlsConnect<Watched>>::Error;

impl TlsConnect<Watched> for StagedTls {
    type Stream = TlsStreamOf<Watched>;
    type Error = TlsConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Stream, Self::Error>> + Send>>;

    fn connect(self, stream: Watched) -> Self::Future {
        self.progress.set(Waiting::TlsHandshake);
        let handshake = self.inner.connect(stream);
        let progress = self.progress;
        Box::pin(async move {
            let stream = handshake.await?;
            progress.set(Waiting::Authentication);
            Ok(stream)
        })
    }
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads libpq's environment: the variables rowcast honours.
pub const LIBPQ_VARS: [&str; 6] = [
    "PGHOST",
    "PGPORT",
    "PGUSER",
    "PGPASSWORD",
    "PGDATABASE",
    "PGSSLMODE",
];

impl DbTarget {
    /// Parses a `postgres://` URL or a libpq `key=value` string. Adds what the driver
    /// lacks: `sslmode=verify-ca|verify-full` and `sslrootcert=<file>`.
    pub fn from_url(url: &str) -> Result<DbTarget, DbError> {
        let (rest, tls, root_cert) = extract_tls_options(url)?;
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e: tokio_postgres::Error| DbError::Config(e.to_string()))?;
        let tls = tls.unwrap_or(match config.get_ssl_mode() {
            SslMode::Disable => TlsMode::Disable,
            SslMode::Require => TlsMode::Require,
            _ => TlsMode::Prefer,
        });
        if config.get_user().is_none() {
            config.user(os_user());
        }
        DbTarget::finish(config, tls, root_cert)
    }

    /// Builds a target from libpq's variables (`lookup` reads one), with libpq's
    /// defaults for the rest: localhost, 5432, the OS user, a database named after it.
    pub fn from_libpq_env(lookup: impl Fn(&str) -> Option<String>) -> Result<DbTarget, DbError> {
        let mut config = tokio_postgres::Config::new();
        let host = lookup("PGHOST").unwrap_or_else(|| "localhost".to_owned());
        if host.starts_with('/') {
            config.host_path(&host);
        } else {
            config.host(&host);
        }
        if let Some(port) = lookup("PGPORT") {
            let port = port
                .parse()
                .map_err(|_| DbError::Config(format!("PGPORT={port:?} is not a port number")))?;
            config.port(port);
        }
        let user = lookup("PGUSER").unwrap_or_else(os_user);
        config.dbname(lookup("PGDATABASE").unwrap_or_else(|| user.clone()));
        config.user(&user);
        if let Some(password) = lookup("PGPASSWORD") {
            config.password(password);
        }
        let tls = match lookup("PGSSLMODE") {
            Some(mode) => parse_tls_mode(&mode)?,
            None => TlsMode::Prefer,
        };
        let root_cert = lookup("PGSSLROOTCERT").map(PathBuf::from);
        DbTarget::finish(config, tls, root_cert)
    }

    fn finish(
        mut config: tokio_postgres::Config,
        tls: TlsMode,
        root_cert: Option<PathBuf>,
    ) -> Result<DbTarget, DbError> {
        config.ssl_mode(match tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        });
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(30));
        if config.get_hosts().is_empty() {
            config.host("localhost");
        }
        if config.get_dbname().is_none() {
            let user = config.get_user().unwrap_or("postgres").to_owned();
            config.dbname(user);
        }
        config.application_name("rowcast");
        Ok(DbTarget {
            config,
            tls,
            root_cert,
        })
    }

    /// The TLS mode in force.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }

    /// The driver's settings (hosts, ports, user, password), for the WAL capturer's
    /// replication client, which speaks the protocol itself.
    pub fn driver_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    /// The CA file given as `sslrootcert` (or `PGSSLROOTCERT`), if any.
    pub fn root_cert(&self) -> Option<&std::path::Path> {
        self.root_cert.as_deref()
    }

    /// The same server and credentials, another database.
    pub fn with_dbname(&self, dbname: &str) -> DbTarget {
        let mut other = self.clone();
        other.config.dbname(dbname);
        other
    }

    /// The same target with another `application_name` (shown in `pg_stat_activity`).
    pub fn with_application_name(&self, name: &str) -> DbTarget {
        let mut other = self.clone();
        other.config.application_name(name);
        other
    }

    /// How long one connection attempt may take, handshake and authentication
    /// included (`connect_timeout` in the URL, else 5 s).
    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// Opens one connection within [`DbTarget::connect_timeout`]; the caller drives
    /// the returned connection future.
    pub async fn connect(&self) -> Result<(Client, PgConnection), DbError> {
        self.connect_until(Instant::now() + self.connect_timeout())
            .await
    }

    /// Opens one connection, every step of it (TCP, TLS negotiation and handshake,
    /// authentication) finished by `deadline` or abandoned with a
    /// [`DbError::Timeout`] naming the step the server left unanswered.
    pub async fn connect_until(
        &self,
        deadline: Instant,
    ) -> Result<(Client, PgConnection), DbError> {
        let started = Instant::now();
        let progress = Progress::default();
        match tokio::time::timeout_at(deadline, self.connect_staged(&progress)).await {
            Ok(result) => result,
            Err(_) => Err(DbError::Timeout {
                target: self.to_string(),
                waiting_for: progress.step(),
                after: started.elapsed(),
            }),
        }
    }

    /// Tries each host in turn, as libpq does; the last failure is reported.
    async fn connect_staged(&self, progress: &Progress) -> Result<(Client, PgConnection), DbError> {
        let hosts = self.config.get_hosts();
        let addrs = self.config.get_hostaddrs();
        let ports = self.config.get_ports();
        let count = hosts.len().max(addrs.len()).max(1);
        let mut last = None;
        for i in 0..count {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            let (host, tls_name) = match (hosts.get(i), addrs.get(i)) {
                (Some(Host::Tcp(name)), addr) => (
                    addr.map_or_else(|| Host::Tcp(name.clone()), |a| Host::Tcp(a.to_string())),
                    name.clone(),
                ),
                (Some(Host::Unix(path)), _) => (Host::Unix(path.clone()), String::new()),
                (None, Some(addr)) => (Host::Tcp(addr.to_string()), addr.to_string()),
                (None, None) => (Host::Tcp("localhost".into()), "localhost".into()),
            };
            progress.set(Waiting::Connect);
            match self.connect_host(&host, port, &tls_name, progress).await {
                Ok(connected) => return Ok(connected),
                Err(err) => last = Some(err),
            }
        }
        Err(last.unwrap_or_else(|| DbError::Config("no host to connect to".into())))
    }

    async fn connect_host(
        &self,
        host: &Host,
        port: u16,
        tls_name: &str,
        progress: &Progress,
    ) -> Result<(Client, PgConnection), DbError> {
        let unreachable = |err: io::Error| DbError::Unreachable {
            target: self.to_string(),
            reason: err.to_string(),
        };
        let socket = match host {
            Host::Tcp(name) => {
                let stream = TcpStream::connect((name.as_str(), port))
                    .await
                    .map_err(unreachable)?;
                stream.set_nodelay(true).map_err(unreachable)?;
                let keepalive =
                    socket2::TcpKeepalive::new().with_time(self.config.get_keepalives_idle());
                socket2::SockRef::from(&stream)
                    .set_tcp_keepalive(&keepalive)
                    .map_err(unreachable)?;
                Socket::Tcp(stream)
            }
            Host::Unix(dir) => Socket::Unix(
                UnixStream::connect(dir.join(format!(".s.PGSQL.{port}")))
                    .await
                    .map_err(unreachable)?,
            ),
        };
        // Over a Unix socket the server refuses TLS (the driver then goes on in
        // plain text, or fails for `require`), as with libpq.
        progress.set(if self.tls == TlsMode::Disable {
            Waiting::Authentication
        } else {
            Waiting::TlsNegotiation
        });
        let watched = Watched {
            socket,
            progress: progress.clone(),
        };
        let mut make = MakeRustlsConnect::new(self.tls_config()?);
        let tls = StagedTls {
            inner: <MakeRustlsConnect as MakeTlsConnect<Watched>>::make_tls_connect(
                &mut make, tls_name,
            )
            .unwrap_or_else(|never| match never {}),
            progress: progress.clone(),
        };
        self.config
            .connect_raw(watched, tls)
            .await
            .map_err(|err| classify(err, &self.to_string()))
    }

    /// Opens one connection and spawns its driver; for connections that don't LISTEN.
    pub async fn connect_spawned(&self) -> Result<Client, DbError> {
        let (client, connection) = self.connect().await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(%err, "database connection ended");
            }
        });
        Ok(client)
    }

    fn tls_config(&self) -> Result<ClientConfig, DbError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| DbError::Config(format!("TLS setup: {e}")))?;
        let config = match self.tls {
            TlsMode::Disable | TlsMode::Prefer | TlsMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
                .with_no_client_auth(),
            TlsMode::VerifyCa | TlsMode::VerifyFull => {
                let roots = Arc::new(self.root_store()?);
                let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                    .build()
                    .map_err(|e| DbError::Config(format!("TLS roots: {e}")))?;
                if self.tls == TlsMode::VerifyFull {
                    builder.with_webpki_verifier(webpki).with_no_client_auth()
                } else {
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(IgnoreHostName(webpki)))
                        .with_no_client_auth()
                }
            }
        };
        Ok(config)
    }

    fn root_store(&self) -> Result<RootCertStore, DbError> {
        let mut roots = RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(path) = &self.root_cert {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| DbError::Config(format!("sslrootcert {}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert
                    .map_err(|e| DbError::Config(format!("sslrootcert {}: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| DbError::Config(format!("sslrootcert {}: {e}", path.display())))?;
            }
        }
        Ok(roots)
    }
}

fn os_user() -> String {
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "postgres".to_owned())
}

fn parse_tls_mode(mode: &str) -> Result<TlsMode, DbError> {
    Ok(match mode {
        "disable" => TlsMode::Disable,
        "allow" | "prefer" => TlsMode::Prefer,
        "require" => TlsMode::Require,
        "verify-ca" => TlsMode::VerifyCa,
        "verify-full" => TlsMode::VerifyFull,
        other => return Err(DbError::Config(format!("unknown sslmode {other:?}"))),
    })
}

/// Takes `sslmode` and `sslrootcert` out of a URL or key=value string (the driver
/// knows neither `verify-*` nor `sslrootcert`), returning the rest for the driver.
fn extract_tls_options(url: &str) -> Result<(String, Option<TlsMode>, Option<PathBuf>), DbError> {
    let mut tls = None;
    let mut root_cert = None;
    let mut take = |key: &str, value: &str| -> Result<bool, DbError> {
        match key {
            "sslmode" => {
                tls = Some(parse_tls_mode(value)?);
                Ok(true)
            }
            "sslrootcert" => {
                root_cert = Some(PathBuf::from(value));
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_owned(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                    let value = crate::query::decode(value)
                        .map_err(|e| DbError::Config(format!("{key}: {e}")))?;
                    if !take(key, &value)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_owned()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        for token in url.split_whitespace() {
            let (key, value) = token.split_once('=').unwrap_or((token, ""));
            if !take(key.trim(), value.trim_matches('\''))? {
                kept.push(token);
            }
        }
        kept.join(" ")
    };
    // Keep the driver's own SslMode in step with what we enforce.
    Ok((rest, tls, root_cert))
}

/// Sorts a driver error into the variant that says what to do about it.
pub fn classify(err: tokio_postgres::Error, target: &str) -> DbError {
    let target = target.to_owned();
    if let Some(db) = err.as_db_error() {
        let reason = db.message().to_owned();
        return match db.code().code() {
            "28P01" | "28000" => DbError::Auth { target, reason },
            "3D000" => DbError::NoDatabase { target, reason },
            _ => DbError::Query(err),
        };
    }
    let text = err.to_string();
    let mut source = std::error::Error::source(&err);
    let mut detail = None;
    while let Some(cause) = source {
        if cause.downcast_ref::<rustls::Error>().is_some() {
            return DbError::Tls {
                target,
                reason: cause.to_string(),
            };
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            if let Some(inner) = io.get_ref() {
                if inner.downcast_ref::<rustls::Error>().is_some() {
                    return DbError::Tls {
                        target,
                        reason: inner.to_string(),
                    };
                }
            }
            detail.get_or_insert_with(|| io.to_string());
        }
        source = cause.source();
    }
    if text.contains("TLS") || text.contains("tls") || text.contains("SSL") {
        return DbError::Tls {
            target,
            reason: detail.unwrap_or(text),
        };
    }
    if detail.is_some() || text.contains("timeout") || text.contains("closed") {
        return DbError::Unreachable {
            target,
            reason: detail.unwrap_or(text),
        };
    }
    DbError::Query(err)
}

/// `require`: encrypt, but trust any certificate, as libpq does.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must verify; the host name may differ.
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_modes_are_taken_out_of_urls_for_the_driver() {
        let target = DbTarget::from_url(
            "postgres://u:secret@db.example.com:6543/app?sslmode=verify-full&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(target.tls_mode(), TlsMode::VerifyFull);
        assert_eq!(target.to_string(), "db.example.com:6543/app as u");
        assert!(!format!("{target:?}").contains("secret"));
        let kv = DbTarget::from_url("host=h user=u dbname=d sslmode=verify-ca").unwrap();
        assert_eq!(kv.tls_mode(), TlsMode::VerifyCa);
        let plain = DbTarget::from_url("postgres://u@h/d?sslmode=disable").unwrap();
        assert_eq!(plain.tls_mode(), TlsMode::Disable);
        assert_eq!(
            DbTarget::from_url("postgres://u@h/d").unwrap().tls_mode(),
            TlsMode::Prefer
        );
    }

    #[test]
    fn malformed_urls_and_modes_are_config_errors() {
        for bad in [
            "postgres://u@h/d?sslmode=sometimes",
            "postgres://u@h:notaport/d",
            "host=h bogus_option=1",
        ] {
            let err = DbTarget::from_url(bad).unwrap_err();
            assert!(matches!(err, DbError::Config(_)), "{bad}: {err}");
            assert!(err.is_permanent());
        }
    }

    #[test]
    fn libpq_variables_fill_the_target() {
        let env = |name: &str| match name {
            "PGHOST" => Some("db".to_owned()),
            "PGPORT" => Some("6000".to_owned()),
            "PGUSER" => Some("alice".to_owned()),
            "PGSSLMODE" => Some("require".to_owned()),
            _ => None,
        };
        let target = DbTarget::from_libpq_env(env).unwrap();
        assert_eq!(target.to_string(), "db:6000/alice as alice");
        assert_eq!(target.tls_mode(), TlsMode::Require);
        assert!(DbTarget::from_libpq_env(|n| (n == "PGPORT").then(|| "x".into())).is_err());
    }
}
