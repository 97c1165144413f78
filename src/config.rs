//! Configuration: command-line flags, their `ROWCAST_*` environment forms, and where
//! the database is (`--database-url`, `DATABASE_URL`, libpq's `PG*`, embedded).
//!
//! The environment is read through the [`Environment`] trait so that tests pass a
//! map instead of setting process variables.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::pg::connect::LIBPQ_VARS;
use crate::pg::source::SourceMode;
use crate::pg::{DbError, DbTarget};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3001";
/// Default ring capacity (events kept in memory).
pub const DEFAULT_RING_CAPACITY: usize = 65_536;
/// Default poll interval.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Default least time between two doorbell-woken reads.
pub const DEFAULT_COALESCE: Duration = Duration::from_millis(2);
/// Default heartbeat period.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(15);
/// Default time a write may stay blocked before the client is dropped.
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Default drain deadline at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Default retention of `change_log` rows.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default period of the retention task (the design asks for at least once a minute).
pub const DEFAULT_RETENTION_INTERVAL: Duration = Duration::from_secs(30);
/// Default time allowed for a request's headers to arrive (slowloris).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default SSE `retry:` hint for browsers.
pub const DEFAULT_SSE_RETRY: Duration = Duration::from_secs(1);
/// Default size of the database pool for REST calls and catch-up reads.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Default limit of concurrent connections from one client IP.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1024;
/// Default largest request head.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Default largest REST body (the contract's 64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default largest WebSocket client message (the contract's 64 KiB).
pub const DEFAULT_WS_MAX_MESSAGE: usize = 64 * 1024;
/// Default directory of the embedded server's data.
pub const DEFAULT_DATA_DIR: &str = ".rowcast";

/// Reads environment variables.
pub trait Environment {
    /// The value of `name`, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl Environment for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Environment for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Where the database comes from.
#[derive(Debug, Clone)]
pub enum Database {
    /// A URL or libpq variables named a server.
    Target(Box<DbTarget>),
    /// Nothing configured: localhost:5432 if it answers, else a private server.
    Default,
}

/// What to run.
#[derive(Debug)]
pub enum Command {
    /// Run the gateway.
    Serve(Config),
    /// Apply the migrations and exit.
    Migrate(Config),
    /// Migrate if needed and insert sample orders into an empty `orders`.
    Seed(Config),
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

/// The gateway's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Where the database is.
    pub database: Database,
    /// How the source is woken.
    pub source: SourceMode,
    /// Poll period.
    pub poll_interval: Duration,
    /// Least time between two doorbell-woken reads (batches bursts).
    pub coalesce: Duration,
    /// Events kept in memory.
    pub ring_capacity: usize,
    /// Apply migrations at start-up.
    pub migrate: bool,
    /// Heartbeat period on streams.
    pub heartbeat: Duration,
    /// How long a write may stay blocked before the client is dropped.
    pub send_timeout: Duration,
    /// Drain deadline at shutdown.
    pub shutdown_timeout: Duration,
    /// Age after which `change_log` rows are pruned.
    pub retention: Duration,
    /// Keep at most this many ids of history (optional).
    pub retention_rows: Option<u64>,
    /// How often the retention task runs; short in tests, so pruning can be awaited.
    pub retention_interval: Duration,
    /// Time allowed for request headers.
    pub header_timeout: Duration,
    /// The SSE `retry:` hint.
    pub sse_retry: Duration,
    /// Connections in the database pool.
    pub pool_size: usize,
    /// Most concurrent client connections (`None`: derived from the descriptor limit).
    pub max_connections: Option<usize>,
    /// Most concurrent connections from one client IP.
    pub max_connections_per_ip: usize,
    /// Largest request head in bytes (hyper's buffer; at least 8192).
    pub max_header_bytes: usize,
    /// Largest REST request body in bytes.
    pub max_body_bytes: usize,
    /// Largest WebSocket message (and frame) a client may send.
    pub ws_max_message: usize,
    /// Origins allowed by CORS (`*` for any); empty: no CORS headers.
    pub cors_origins: Vec<String>,
    /// Where the embedded server keeps its data.
    pub data_dir: PathBuf,
    /// A static bearer token; turns authentication on.
    pub auth_token: Option<String>,
    /// The HS256 secret for JWTs; turns authentication on (and wins over a token).
    pub jwt_secret: Option<String>,
    /// Require the credential for streams and REST reads too, not only for writes.
    pub auth_streams: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()),
            database: Database::Default,
            source: SourceMode::Auto,
            poll_interval: DEFAULT_POLL_INTERVAL,
            coalesce: DEFAULT_COALESCE,
            ring_capacity: DEFAULT_RING_CAPACITY,
            migrate: true,
            heartbeat: DEFAULT_HEARTBEAT,
            send_timeout: DEFAULT_SEND_TIMEOUT,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            retention: DEFAULT_RETENTION,
            retention_rows: None,
            retention_interval: DEFAULT_RETENTION_INTERVAL,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            sse_retry: DEFAULT_SSE_RETRY,
            pool_size: DEFAULT_POOL_SIZE,
            max_connections: None,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            ws_max_message: DEFAULT_WS_MAX_MESSAGE,
            cors_origins: Vec::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            auth_token: None,
            jwt_secret: None,
            auth_streams: false,
        }
    }
}

/// A flag or variable that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Not a flag we know.
    #[error("unknown flag `{0}` (see `rowcast --help`)")]
    UnknownFlag(String),
    /// Not a subcommand we know.
    #[error("unknown command `{0}` (expected serve, migrate or seed)")]
    UnknownCommand(String),
    /// A flag without its value.
    #[error("`{0}` needs a value")]
    MissingValue(String),
    /// A value that breaks the flag's rule.
    #[error("invalid {origin}: {message}")]
    Invalid {
        /// `--flag` or `ROWCAST_FLAG=…`.
        origin: String,
        /// What is wrong.
        message: String,
    },
    /// The database URL or `PG*` variables are wrong.
    #[error(transparent)]
    Database(#[from] DbError),
}

/// The usage text.
pub const USAGE: &str = "\
rowcast — pushes PostgreSQL row changes to clients over WebSocket and SSE

USAGE:
    rowcast [serve] [FLAGS]     run the gateway (the default)
    rowcast migrate [FLAGS]     apply the migrations in sql/ and exit
    rowcast seed [FLAGS]        migrate if needed, insert sample orders into an empty table

FLAGS (each also ROWCAST_<FLAG>, e.g. --ring-capacity → ROWCAST_RING_CAPACITY):
    --listen ADDR               address to listen on [default: 127.0.0.1:3001]
    --database-url URL          PostgreSQL URL [else DATABASE_URL, else PG* variables,
                                else localhost:5432 if it answers, else a private server]
    --source notify|poll|auto   how changes are noticed [default: auto]
    --poll-interval DURATION    poll period [default: 500ms]
    --coalesce DURATION         least time between reads under a burst [default: 2ms]
    --ring-capacity N           events kept in memory [default: 65536]
    --no-migrate                don't apply sql/ at start-up
    --heartbeat DURATION        stream heartbeat period [default: 15s]
    --send-timeout DURATION     drop a client whose write stays blocked this long [default: 10s]
    --shutdown-timeout DURATION drain deadline on SIGINT/SIGTERM [default: 10s]
    --retention DURATION        prune change_log rows older than this [default: 7d]
    --retention-rows N          also keep at most N ids of history
    --retention-interval DURATION
                                how often retention runs [default: 30s]
    --header-timeout DURATION   time allowed for request headers [default: 10s]
    --sse-retry DURATION        SSE retry hint for browsers [default: 1s]
    --pool-size N               database connections for REST and catch-up [default: 16]
    --max-connections N         client connection limit [default: from the file limit]
    --max-connections-per-ip N  connections from one client IP [default: 1024]
    --max-header-bytes N        largest request head, at least 8192 [default: 65536]
    --max-body-bytes N          largest REST request body [default: 65536]
    --ws-max-message N          largest WebSocket client message [default: 65536]
    --cors-origins LIST         comma-separated allowed origins, or *
    --data-dir DIR              the private server's data directory [default: .rowcast]
    --auth-token TOKEN          require `Authorization: Bearer TOKEN` (or ?access_token=) for writes
    --jwt-secret SECRET         require an HS256 JWT signed with SECRET instead (prefer the
                                environment form ROWCAST_JWT_SECRET: flags show in `ps`)
    --auth-streams              require the credential for streams and REST reads too
    -h, --help                  this text
    -V, --version               the version

DURATIONS carry a unit: 500ms, 15s, 5m, 2h, 7d. Logs go to stderr (RUST_LOG=debug for more).
";

/// Every flag that takes a value, with its environment name.
const VALUE_FLAGS: &[&str] = &[
    "listen",
    "database-url",
    "source",
    "poll-interval",
    "coalesce",
    "ring-capacity",
    "heartbeat",
    "send-timeout",
    "shutdown-timeout",
    "retention",
    "retention-rows",
    "retention-interval",
    "header-timeout",
    "sse-retry",
    "pool-size",
    "max-connections",
    "cors-origins",
    "data-dir",
    "max-connections-per-ip",
    "max-header-bytes",
    "max-body-bytes",
    "ws-max-message",
    "auth-token",
    "jwt-secret",
];
const BOOL_FLAGS: &[&str] = &["no-migrate", "auth-streams"];

fn env_name(flag: &str) -> String {
    format!("ROWCAST_{}", flag.replace('-', "_").to_ascii_uppercase())
}

/// Parses the command line (without the program name) and the environment.
pub fn parse(args: &[String], env: &dyn Environment) -> Result<Command, ConfigError> {
    let mut args = args.iter().peekable();
    let mut subcommand = "serve";
    if let Some(first) = args.peek() {
        if !first.starts_with('-') {
            subcommand = match first.as_str() {
                "serve" => "serve",
                "migrate" => "migrate",
                "seed" => "seed",
                other => return Err(ConfigError::UnknownCommand(other.to_owned())),
            };
            args.next();
        }
    }
    // Flags given on the command line; they win over the environment.
    let mut given: HashMap<&'static str, String> = HashMap::new();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            _ => {}
        }
        let Some(body) = arg.strip_prefix("--") else {
            return Err(ConfigError::UnknownFlag(arg.clone()));
        };
        let (name, inline) = match body.split_once('=') {
            Some((name, value)) => (name, Some(value.to_owned())),
            None => (body, None),
        };
        if let Some(flag) = BOOL_FLAGS.iter().find(|f| **f == name) {
            if inline.is_some() {
                return Err(ConfigError::Invalid {
                    origin: format!("--{name}"),
                    message: "takes no value".into(),
                });
            }
            given.insert(flag, "true".into());
        } else if let Some(flag) = VALUE_FLAGS.iter().find(|f| **f == name) {
            let value = match inline {
                Some(value) => value,
                None => args
                    .next()
                    .cloned()
                    .ok_or_else(|| ConfigError::MissingValue(format!("--{name}")))?,
            };
            given.insert(flag, value);
        } else {
            return Err(ConfigError::UnknownFlag(arg.clone()));
        }
    }
    let lookup = |flag: &'static str| -> Option<(String, String)> {
        if let Some(value) = given.get(flag) {
            return Some((format!("--{flag}"), value.clone()));
        }
        let name = env_name(flag);
        env.var(&name)
            .map(|value| (format!("{name}={value:?}"), value))
    };
    let config = build(&lookup, env)?;
    Ok(match subcommand {
        "migrate" => Command::Migrate(config),
        "seed" => Command::Seed(config),
        _ => Command::Serve(config),
    })
}

fn build(
    lookup: &dyn Fn(&'static str) -> Option<(String, String)>,
    env: &dyn Environment,
) -> Result<Config, ConfigError> {
    let mut config = Config::default();
    let invalid = |origin: String, message: &str| ConfigError::Invalid {
        origin,
        message: message.to_owned(),
    };
    if let Some((origin, value)) = lookup("listen") {
        config.listen = value
            .parse()
            .map_err(|_| invalid(origin, "expected an address like 127.0.0.1:3001"))?;
    }
    config.database = match lookup("database-url")
        .map(|(_, v)| v)
        .or_else(|| env.var("DATABASE_URL"))
    {
        Some(url) => Database::Target(Box::new(DbTarget::from_url(&url)?)),
        None if LIBPQ_VARS.iter().any(|v| env.var(v).is_some()) => {
            Database::Target(Box::new(DbTarget::from_libpq_env(|name| env.var(name))?))
        }
        None => Database::Default,
    };
    if let Some((origin, value)) = lookup("source") {
        config.source = SourceMode::parse(&value)
            .ok_or_else(|| invalid(origin, "expected notify, poll or auto"))?;
    }
    let duration = |flag: &'static str, default: Duration| -> Result<Duration, ConfigError> {
        match lookup(flag) {
            Some((origin, value)) => parse_duration(&value).map_err(|m| invalid(origin, m)),
            None => Ok(default),
        }
    };
    config.poll_interval = duration("poll-interval", config.poll_interval)?;
    config.coalesce = duration("coalesce", config.coalesce)?;
    config.heartbeat = duration("heartbeat", config.heartbeat)?;
    config.send_timeout = duration("send-timeout", config.send_timeout)?;
    config.shutdown_timeout = duration("shutdown-timeout", config.shutdown_timeout)?;
    config.retention = duration("retention", config.retention)?;
    config.retention_interval = duration("retention-interval", config.retention_interval)?;
    config.header_timeout = duration("header-timeout", config.header_timeout)?;
    config.sse_retry = duration("sse-retry", config.sse_retry)?;
    let count = |flag: &'static str| -> Result<Option<u64>, ConfigError> {
        match lookup(flag) {
            Some((origin, value)) => match value.parse::<u64>() {
                Ok(n) if n >= 1 => Ok(Some(n)),
                _ => Err(invalid(origin, "expected a whole number, at least 1")),
            },
            None => Ok(None),
        }
    };
    if let Some(n) = count("ring-capacity")? {
        config.ring_capacity = usize::try_from(n)
            .ok()
            .filter(|n| *n <= 1 << 30)
            .ok_or_else(|| invalid("--ring-capacity".into(), "at most 1073741824"))?;
    }
    config.retention_rows = count("retention-rows")?;
    if let Some(n) = count("pool-size")? {
        config.pool_size = n.min(1000) as usize;
    }
    config.max_connections = count("max-connections")?.map(|n| n as usize);
    let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    if let Some(n) = count("max-connections-per-ip")? {
        config.max_connections_per_ip = size(n);
    }
    if let Some(n) = count("max-header-bytes")? {
        if n < 8192 {
            return Err(invalid("--max-header-bytes".into(), "at least 8192"));
        }
        config.max_header_bytes = size(n);
    }
    if let Some(n) = count("max-body-bytes")? {
        config.max_body_bytes = size(n);
    }
    if let Some(n) = count("ws-max-message")? {
        config.ws_max_message = size(n);
    }
    if let Some((origin, value)) = lookup("no-migrate") {
        config.migrate =
            !parse_bool(&value).ok_or_else(|| invalid(origin, "expected true, false, 1 or 0"))?;
    }
    if let Some((_, value)) = lookup("cors-origins") {
        config.cors_origins = value
            .split(',')
            .map(str::trim)
            .filter(|o| !o.is_empty())
            .map(str::to_owned)
            .collect();
    }
    if let Some((_, value)) = lookup("data-dir") {
        config.data_dir = PathBuf::from(value);
    }
    let secret = |flag: &'static str| -> Result<Option<String>, ConfigError> {
        match lookup(flag) {
            Some((origin, value)) if value.is_empty() => Err(invalid(origin, "must not be empty")),
            Some((_, value)) => Ok(Some(value)),
            None => Ok(None),
        }
    };
    config.auth_token = secret("auth-token")?;
    config.jwt_secret = secret("jwt-secret")?;
    if let Some((origin, value)) = lookup("auth-streams") {
        config.auth_streams =
            parse_bool(&value).ok_or_else(|| invalid(origin, "expected true, false, 1 or 0"))?;
    }
    if config.auth_streams && config.auth_token.is_none() && config.jwt_secret.is_none() {
        return Err(invalid(
            "--auth-streams".into(),
            "needs --auth-token or --jwt-secret (ROWCAST_JWT_SECRET)",
        ));
    }
    Ok(config)
}

/// Parses a duration with a unit: `500ms`, `15s`, `5m`, `2h`, `7d`. A bare number or
/// zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, &'static str> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or("needs a unit (ms, s, m, h or d), e.g. 500ms or 15s")?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| "expected a whole number with a unit, e.g. 500ms or 15s")?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err("unknown unit (use ms, s, m, h or d)"),
    };
    if number == 0 {
        return Err("must be greater than zero");
    }
    number
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or("too large")
}

/// Parses an environment boolean: `true`/`false`/`1`/`0`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn serve(args: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        match parse(&args, &env(vars))? {
            Command::Serve(config) => Ok(config),
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn durations_need_a_unit_and_must_not_be_zero() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        for bad in ["500", "0s", "0ms", "s", "1.5s", "-1s", "10 s", "1w", ""] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_win_over_the_environment() {
        let config = serve(
            &["--ring-capacity", "8", "--poll-interval=2s"],
            &[("ROWCAST_RING_CAPACITY", "99"), ("ROWCAST_HEARTBEAT", "1m")],
        )
        .unwrap();
        assert_eq!(config.ring_capacity, 8);
        assert_eq!(config.poll_interval, Duration::from_secs(2));
        assert_eq!(config.heartbeat, Duration::from_secs(60));
    }

    #[test]
    fn defaults_match_the_design() {
        let config = serve(&[], &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:3001");
        assert_eq!(config.source, SourceMode::Auto);
        assert_eq!(config.ring_capacity, 65_536);
        assert!(config.migrate);
        assert!(matches!(config.database, Database::Default));
        assert_eq!(config.retention, Duration::from_secs(7 * 86_400));
        assert_eq!(config.retention_interval, Duration::from_secs(30));
    }

    #[test]
    fn the_retention_interval_has_a_flag_and_an_environment_form() {
        let flag = serve(&["--retention-interval", "200ms"], &[]).unwrap();
        assert_eq!(flag.retention_interval, Duration::from_millis(200));
        let env = serve(&[], &[("ROWCAST_RETENTION_INTERVAL", "1m")]).unwrap();
        assert_eq!(env.retention_interval, Duration::from_secs(60));
        assert!(serve(&["--retention-interval", "0s"], &[]).is_err());
    }

    #[test]
    fn database_url_precedence_is_flag_rowcast_env_database_url_then_pg_vars() {
        let name = |config: Config| match config.database {
            Database::Target(t) => t.to_string(),
            Database::Default => "default".into(),
        };
        let vars = [
            ("ROWCAST_DATABASE_URL", "postgres://a@h1/d1"),
            ("DATABASE_URL", "postgres://b@h2/d2"),
            ("PGHOST", "h3"),
            ("PGUSER", "c"),
        ];
        assert_eq!(
            name(serve(&["--database-url", "postgres://z@h0/d0"], &vars).unwrap()),
            "h0:5432/d0 as z"
        );
        assert_eq!(name(serve(&[], &vars).unwrap()), "h1:5432/d1 as a");
        assert_eq!(name(serve(&[], &vars[1..]).unwrap()), "h2:5432/d2 as b");
        assert_eq!(name(serve(&[], &vars[2..]).unwrap()), "h3:5432/c as c");
        assert_eq!(name(serve(&[], &[]).unwrap()), "default");
    }

    #[test]
    fn bad_flags_and_values_are_errors() {
        for (args, vars) in [
            (vec!["--bogus"], vec![]),
            (vec!["--listen"], vec![]),
            (vec!["--listen", "nowhere"], vec![]),
            (vec!["--ring-capacity", "0"], vec![]),
            (vec!["--source", "carrier-pigeon"], vec![]),
            (vec!["--poll-interval", "500"], vec![]),
            (vec![], vec![("ROWCAST_NO_MIGRATE", "yes")]),
            (vec!["--no-migrate=1"], vec![]),
            (vec!["--database-url", "postgres://u@h:99999/d"], vec![]),
            (vec!["stray"], vec![]),
        ] {
            assert!(serve(&args, &vars).is_err(), "{args:?} {vars:?}");
        }
    }

    #[test]
    fn booleans_in_the_environment() {
        assert!(
            !serve(&[], &[("ROWCAST_NO_MIGRATE", "true")])
                .unwrap()
                .migrate
        );
        assert!(serve(&[], &[("ROWCAST_NO_MIGRATE", "0")]).unwrap().migrate);
        assert!(!serve(&["--no-migrate"], &[]).unwrap().migrate);
    }

    #[test]
    fn subcommands() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(matches!(
            parse(&args(&["migrate"]), &env(&[])),
            Ok(Command::Migrate(_))
        ));
        assert!(matches!(
            parse(&args(&["seed", "--no-migrate"]), &env(&[])),
            Ok(Command::Seed(_))
        ));
        assert!(matches!(
            parse(&args(&["--help"]), &env(&[])),
            Ok(Command::Help)
        ));
    }
}
