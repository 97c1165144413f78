//! Configuration: command-line flags, their `ROWCAST_*` environment forms, and where
//! the database is (`--database-url`, `DATABASE_URL`, libpq's `PG*`, embedded).
//!
//! [`Config`] *is* the list of flags: clap derives the parser, the defaults and
//! `--help` from its fields, so adding a flag is adding a field. Every long flag gets
//! its environment form `ROWCAST_<FLAG>` by one rule ([`env_name`]), not per field.
//! The environment is read through the [`Environment`] trait so that tests pass a map
//! instead of setting process variables: its `ROWCAST_*` values are handed to clap
//! as flags placed before the command line's (which therefore win), after a check
//! that names the variable when its value is bad.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser};

use crate::pg::capture::{CaptureMode, DEFAULT_SLOT};
use crate::pg::connect::LIBPQ_VARS;
use crate::pg::source::SourceMode;
use crate::pg::{DbError, DbTarget};

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:3001";
/// Default source mode.
pub const DEFAULT_SOURCE: &str = "auto";
/// Default ring capacity (events kept in memory).
pub const DEFAULT_RING_CAPACITY: usize = 65_536;
/// Largest ring capacity accepted (the ring allocates its slots up front).
pub const MAX_RING_CAPACITY: usize = 1 << 30;
/// Default poll interval.
pub const DEFAULT_POLL_INTERVAL: &str = "500ms";
/// Default least time between two doorbell-woken reads.
pub const DEFAULT_COALESCE: &str = "2ms";
/// Default heartbeat period.
pub const DEFAULT_HEARTBEAT: &str = "15s";
/// Default time a write may stay blocked before the client is dropped.
pub const DEFAULT_SEND_TIMEOUT: &str = "10s";
/// Default drain deadline at shutdown.
pub const DEFAULT_SHUTDOWN_TIMEOUT: &str = "10s";
/// Default retention of `change_log` rows.
pub const DEFAULT_RETENTION: &str = "7d";
/// Default period of the retention task (the design asks for at least once a minute).
pub const DEFAULT_RETENTION_INTERVAL: &str = "30s";
/// Default time allowed for a request's headers to arrive (slowloris).
pub const DEFAULT_HEADER_TIMEOUT: &str = "10s";
/// Default SSE `retry:` hint for browsers.
pub const DEFAULT_SSE_RETRY: &str = "1s";
/// Default size of the database pool for REST calls and catch-up reads.
pub const DEFAULT_POOL_SIZE: usize = 16;
/// Largest pool accepted (a larger value is lowered to this).
pub const MAX_POOL_SIZE: usize = 1000;
/// Default limit of concurrent connections from one client IP.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: usize = 1024;
/// Default largest request head.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 64 * 1024;
/// Smallest request head accepted (hyper's own buffer floor).
pub const MIN_HEADER_BYTES: usize = 8192;
/// Default largest REST body (the contract's 64 KiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
/// Default largest WebSocket client message (the contract's 64 KiB).
pub const DEFAULT_WS_MAX_MESSAGE: usize = 64 * 1024;
/// Default `--ws-compress-min`: shorter messages gain little from deflate (an event
/// of the orders table is about 250 bytes).
pub const DEFAULT_WS_COMPRESS_MIN: usize = 512;
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
#[derive(Debug, Clone, Default)]
pub enum Database {
    /// A URL or libpq variables named a server.
    Target(Box<DbTarget>),
    /// Nothing configured: a private server (the embedded default).
    #[default]
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
    /// Switch the database's capture mode (`rowcast capture wal|trigger`) and exit.
    Capture(Config, CaptureMode),
    /// Print this text (the help or the version) and exit successfully.
    Print(String),
}

/// The gateway's settings; each field is a flag (see `rowcast --help`).
///
/// The first line of each field's doc is its `--help` line.
#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, value_name = "ADDR", default_value = DEFAULT_LISTEN, value_parser = address)]
    pub listen: SocketAddr,
    /// Where the database is; set from `--database-url` and the environment after
    /// parsing (see [`parse`]), so it is no flag of its own.
    #[arg(skip)]
    pub database: Database,
    /// How changes are noticed: LISTEN, polling, or LISTEN once a probe shows it works.
    #[arg(long, value_name = "notify|poll|auto", default_value = DEFAULT_SOURCE,
          value_parser = source_mode)]
    pub source: SourceMode,
    /// Poll period.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_POLL_INTERVAL,
          value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Least time between two reads under a burst of doorbells (batches bursts).
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_COALESCE,
          value_parser = parse_duration)]
    pub coalesce: Duration,
    /// Events kept in memory for resuming clients (at least 1).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_RING_CAPACITY,
          value_parser = ring_capacity)]
    pub ring_capacity: usize,
    /// Don't apply sql/ at start-up (a missing schema then ends the process).
    #[arg(long = "no-migrate", action = ArgAction::SetFalse)]
    pub migrate: bool,
    /// Heartbeat period on streams.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HEARTBEAT,
          value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// Drop a client whose write stays blocked this long.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_SEND_TIMEOUT,
          value_parser = parse_duration)]
    pub send_timeout: Duration,
    /// Drain deadline on SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_SHUTDOWN_TIMEOUT,
          value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// Prune change_log rows older than this.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_RETENTION,
          value_parser = parse_duration)]
    pub retention: Duration,
    /// Also keep at most N ids of history.
    #[arg(long, value_name = "N", value_parser = count::<u64>)]
    pub retention_rows: Option<u64>,
    /// How often retention runs; short in tests, so pruning can be awaited.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_RETENTION_INTERVAL,
          value_parser = parse_duration)]
    pub retention_interval: Duration,
    /// Time allowed for a request's headers to arrive.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_HEADER_TIMEOUT,
          value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// SSE retry hint for browsers.
    #[arg(long, value_name = "DURATION", default_value = DEFAULT_SSE_RETRY,
          value_parser = parse_duration)]
    pub sse_retry: Duration,
    /// Database connections for REST and catch-up reads (at most 1000).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_POOL_SIZE, value_parser = pool_size)]
    pub pool_size: usize,
    /// Client connection limit [default: from the file descriptor limit].
    #[arg(long, value_name = "N", value_parser = count::<usize>)]
    pub max_connections: Option<usize>,
    /// Connections from one client IP.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_IP,
          value_parser = count::<usize>)]
    pub max_connections_per_ip: usize,
    /// Largest request head in bytes, at least 8192 (hyper's buffer).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_HEADER_BYTES,
          value_parser = header_bytes)]
    pub max_header_bytes: usize,
    /// Largest REST request body in bytes.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_BODY_BYTES,
          value_parser = count::<usize>)]
    pub max_body_bytes: usize,
    /// Largest WebSocket message (and frame) a client may send, in bytes.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WS_MAX_MESSAGE,
          value_parser = count::<usize>)]
    pub ws_max_message: usize,
    /// Compress change events of at least N bytes for WebSocket clients that offer
    /// permessage-deflate; 0: never negotiate it.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_WS_COMPRESS_MIN)]
    pub ws_compress_min: usize,
    /// Comma-separated origins allowed by CORS, or *; none: no CORS headers.
    #[arg(long, value_name = "LIST", value_delimiter = ',', value_parser = origin)]
    pub cors_origins: Vec<String>,
    /// The private server's data directory.
    #[arg(long, value_name = "DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,
    /// Require `Authorization: Bearer TOKEN` (or ?access_token=) for writes.
    #[arg(long, value_name = "TOKEN", value_parser = secret)]
    pub auth_token: Option<String>,
    /// Require an HS256 JWT signed with SECRET instead (prefer ROWCAST_JWT_SECRET:
    /// flags show in `ps`).
    #[arg(long, value_name = "SECRET", value_parser = secret)]
    pub jwt_secret: Option<String>,
    /// Require the credential for streams and REST reads too, not only for writes.
    #[arg(long)]
    pub auth_streams: bool,
    /// How changes reach change_log: trigger, or wal (logical decoding; switches the
    /// database at start-up and captures on one replica at a time).
    #[arg(long, value_name = "trigger|wal", default_value = "trigger", value_parser = capture_mode)]
    pub capture: CaptureMode,
    /// The replication connection for --capture wal, straight to PostgreSQL, not
    /// through a pooler [default: the database URL].
    #[arg(long, value_name = "URL", value_parser = capture_url)]
    pub capture_url: Option<Box<DbTarget>>,
    /// The logical slot (slots are per cluster: one per captured database).
    #[arg(long, value_name = "NAME", default_value = DEFAULT_SLOT, value_parser = slot_name)]
    pub capture_slot: String,
    /// Relay events through NATS JetStream (nats://host:port): one replica publishes
    /// what it reads, the others consume the stream instead of reading change_log, and
    /// fall back to change_log whenever NATS cannot serve them.
    #[arg(long, value_name = "URL", value_parser = relay_url)]
    pub relay: Option<String>,
    /// The JetStream stream of the relay (created with defaults if missing).
    #[arg(long, value_name = "NAME", default_value = "rowcast", value_parser = stream_name)]
    pub relay_stream: String,
}

impl Default for Config {
    /// The defaults of every flag, as `rowcast` with no flags and no environment.
    fn default() -> Config {
        let command = Config::augment_args(clap::Command::new("rowcast"));
        let matches = command
            .try_get_matches_from(["rowcast"])
            .expect("the default of every flag parses (config unit tests check)");
        Config::from_arg_matches(&matches).expect("defaults fill every field")
    }
}

/// A flag or variable that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The command line could not be parsed (clap's reason, on one line).
    #[error("{0}")]
    Usage(String),
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

/// rowcast — pushes PostgreSQL row changes to clients over WebSocket and SSE.
#[derive(Parser)]
#[command(
    name = "rowcast",
    version,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true,
    after_help = AFTER_HELP
)]
struct Cli {
    /// What to run; `serve` when none is named.
    #[command(subcommand)]
    job: Option<Job>,
    /// The flags of `serve` given without the subcommand.
    #[command(flatten)]
    run: Run,
}

const AFTER_HELP: &str = "\
Every flag also has an environment form ROWCAST_<FLAG> (--ring-capacity → \
ROWCAST_RING_CAPACITY); flags win. Booleans in the environment are true, false, 1 or 0.
The database URL is taken from --database-url, ROWCAST_DATABASE_URL, DATABASE_URL, \
libpq's PG* variables, else a private PostgreSQL \
started from the local PostgreSQL binaries.
Durations carry a unit: 500ms, 15s, 5m, 2h, 7d. Logs go to stderr (RUST_LOG=debug for more).";

#[derive(clap::Subcommand)]
enum Job {
    /// Run the gateway (the default).
    Serve(Run),
    /// Apply the migrations in sql/ and exit.
    Migrate(Run),
    /// Migrate if needed, insert sample orders into an empty table, and exit.
    Seed(Run),
    /// Switch the database's capture mode with writers running, losing and
    /// duplicating nothing (wal also recaptures after a lost slot), and exit.
    Capture(CaptureRun),
}

/// `rowcast capture wal|trigger`: the mode, then the usual flags.
#[derive(Args)]
struct CaptureRun {
    /// The mode to switch to.
    #[arg(value_name = "trigger|wal", value_parser = capture_mode)]
    mode: CaptureMode,
    /// The usual flags.
    #[command(flatten)]
    run: Run,
}

/// The flags every subcommand takes.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
struct Run {
    /// PostgreSQL URL [else DATABASE_URL, PG* variables, the embedded default].
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Everything else.
    #[command(flatten)]
    config: Config,
}

/// The environment form of a long flag: `ring-capacity` → `ROWCAST_RING_CAPACITY`.
pub fn env_name(long: &str) -> String {
    format!("ROWCAST_{}", long.replace('-', "_").to_ascii_uppercase())
}

/// The parser, every long flag showing its environment form in `--help`.
///
/// Only `--help` and `--version` are answered by it: clap would read the process
/// environment itself, and [`parse`] reads it through an [`Environment`] instead.
fn command() -> clap::Command {
    fn env_forms(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| match arg.get_long().map(env_name) {
                Some(name) if !matches!(arg.get_id().as_str(), "help" | "version") => {
                    arg.env(name).hide_env_values(true)
                }
                _ => arg,
            })
            .mut_subcommands(env_forms)
    }
    env_forms(Cli::command())
}

/// Parses the command line (without the program name) and the environment.
pub fn parse<I, T>(args: I, env: &dyn Environment) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // `--help` and `--version` come first, whatever the environment holds; the
    // environment is only shown there (by name), so clap may read it itself.
    let shown = std::iter::once(OsString::from("rowcast")).chain(args.iter().cloned());
    if let Err(err) = command().try_get_matches_from(shown) {
        if matches!(
            err.kind(),
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
        ) {
            let text = err.render().to_string();
            return Ok(Command::Print(format!("{}\n", text.trim_end())));
        }
    }
    let parser = Cli::command();
    let job = args
        .first()
        .and_then(|first| first.to_str())
        .filter(|first| parser.find_subcommand(first).is_some());
    let scope = job
        .and_then(|name| parser.find_subcommand(name))
        .unwrap_or(&parser);
    let from_env = environment_flags(scope, &args, env)?;
    let mut argv: Vec<OsString> = vec!["rowcast".into()];
    argv.extend(job.map(OsString::from));
    argv.extend(from_env.iter().map(|flag| flag.flag.clone()));
    argv.extend(args.iter().skip(usize::from(job.is_some())).cloned());
    let matches = parser
        .try_get_matches_from(&argv)
        .map_err(|err| usage_error(&err, &from_env))?;
    let cli = Cli::from_arg_matches(&matches).map_err(|err| usage_error(&err, &from_env))?;
    Ok(match cli.job {
        None => Command::Serve(cli.run.resolve(env)?),
        Some(Job::Serve(run)) => Command::Serve(run.resolve(env)?),
        Some(Job::Migrate(run)) => Command::Migrate(run.resolve(env)?),
        Some(Job::Seed(run)) => Command::Seed(run.resolve(env)?),
        Some(Job::Capture(job)) => Command::Capture(job.run.resolve(env)?, job.mode),
    })
}

/// A `ROWCAST_*` variable handed to clap as a flag.
struct EnvFlag {
    /// `--ring-capacity`: how clap names it in an error.
    long: String,
    /// `ROWCAST_RING_CAPACITY="0"`: how the error should name it instead.
    origin: String,
    /// `--ring-capacity=0`, or `--no-migrate` for a true boolean.
    flag: OsString,
}

/// The `ROWCAST_*` variables of flags absent from the command line, as flags.
fn environment_flags(
    scope: &clap::Command,
    args: &[OsString],
    env: &dyn Environment,
) -> Result<Vec<EnvFlag>, ConfigError> {
    let typed = |flag: &str| {
        args.iter().filter_map(|a| a.to_str()).any(|a| {
            a == flag
                || a.strip_prefix(flag)
                    .is_some_and(|rest| rest.starts_with('='))
        })
    };
    let mut flags = Vec::new();
    for arg in scope.get_arguments() {
        let Some(long) = arg.get_long().map(|long| format!("--{long}")) else {
            continue;
        };
        let name = env_name(&long[2..]);
        let Some(value) = env.var(&name).filter(|_| !typed(&long)) else {
            continue;
        };
        let origin = format!("{name}={value:?}");
        let flag = if arg.get_action().takes_values() {
            format!("{long}={value}")
        } else {
            match parse_bool(&value) {
                Some(true) => long.clone(),
                Some(false) => continue,
                None => {
                    return Err(ConfigError::Invalid {
                        origin,
                        message: "expected true, false, 1 or 0".into(),
                    })
                }
            }
        };
        flags.push(EnvFlag {
            long,
            origin,
            flag: flag.into(),
        });
    }
    Ok(flags)
}

impl Run {
    /// The configuration, with the database found from the flag or the environment.
    fn resolve(self, env: &dyn Environment) -> Result<Config, ConfigError> {
        let mut config = self.config;
        config.database = match self.database_url.or_else(|| env.var("DATABASE_URL")) {
            Some(url) => Database::Target(Box::new(DbTarget::from_url(&url)?)),
            None if LIBPQ_VARS.iter().any(|v| env.var(v).is_some()) => {
                Database::Target(Box::new(DbTarget::from_libpq_env(|name| env.var(name))?))
            }
            None => Database::Default,
        };
        config.cors_origins.retain(|origin| !origin.is_empty());
        if config.auth_streams && config.auth_token.is_none() && config.jwt_secret.is_none() {
            return Err(ConfigError::Invalid {
                origin: "--auth-streams".into(),
                message: "needs --auth-token or --jwt-secret (ROWCAST_JWT_SECRET)".into(),
            });
        }
        Ok(config)
    }
}

/// One line for a refused command line (clap's own message spans several), naming
/// the environment variable when the bad value came from one.
fn usage_error(err: &clap::Error, from_env: &[EnvFlag]) -> ConfigError {
    let context = |kind| match err.get(kind) {
        Some(ContextValue::String(text)) => Some(text.clone()),
        _ => None,
    };
    let flag = || context(ContextKind::InvalidArg).unwrap_or_default();
    ConfigError::Usage(match err.kind() {
        ErrorKind::UnknownArgument => {
            format!("unknown flag `{}` (see `rowcast --help`)", flag())
        }
        ErrorKind::InvalidSubcommand => format!(
            "unknown command `{}` (expected serve, migrate, seed or capture)",
            context(ContextKind::InvalidSubcommand).unwrap_or_default()
        ),
        ErrorKind::InvalidValue | ErrorKind::ValueValidation => {
            let flag = flag();
            let flag = flag.split(' ').next().unwrap_or_default();
            if let Some(var) = from_env.iter().find(|var| var.long == flag) {
                return ConfigError::Invalid {
                    origin: var.origin.clone(),
                    message: reason(err),
                };
            }
            match context(ContextKind::InvalidValue) {
                Some(value) if value.is_empty() => format!("`{flag}` needs a value"),
                _ => format!("invalid {flag}: {}", reason(err)),
            }
        }
        _ => first_line(err),
    })
}

/// Why a value was refused: the value parser's message, else clap's first line.
fn reason(err: &clap::Error) -> String {
    match std::error::Error::source(err) {
        Some(source) => source.to_string(),
        None => first_line(err),
    }
}

fn first_line(err: &clap::Error) -> String {
    let text = err.render().to_string();
    let line = text.lines().next().unwrap_or_default();
    line.strip_prefix("error: ").unwrap_or(line).to_owned()
}

/// Parses a duration with a unit (`500ms`, `15s`, `5m`, `2h`, `7d`, or humantime's
/// longer forms such as `1h 30m`). A bare number or zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err("needs a unit (ms, s, m, h or d), e.g. 500ms or 15s".into());
    }
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err("must be greater than zero".into()),
        Ok(duration) => Ok(duration),
        Err(err) => Err(format!("{err} (write e.g. 500ms, 15s, 5m, 2h or 7d)")),
    }
}

/// Parses an environment boolean: `true`/`false`/`1`/`0`.
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn address(text: &str) -> Result<SocketAddr, &'static str> {
    text.parse()
        .map_err(|_| "expected an address like 127.0.0.1:3001")
}

fn source_mode(text: &str) -> Result<SourceMode, &'static str> {
    SourceMode::parse(text).ok_or("expected notify, poll or auto")
}

fn capture_mode(text: &str) -> Result<CaptureMode, &'static str> {
    CaptureMode::parse(text).ok_or("expected trigger or wal")
}

fn capture_url(text: &str) -> Result<Box<DbTarget>, String> {
    DbTarget::from_url(text)
        .map(Box::new)
        .map_err(|err| err.to_string())
}

fn slot_name(text: &str) -> Result<String, &'static str> {
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("lower-case letters, digits and _ only")
    }
}

fn relay_url(text: &str) -> Result<String, &'static str> {
    let rest = text
        .strip_prefix("nats://")
        .or_else(|| text.strip_prefix("tls://"))
        .ok_or("expected nats://host:port (or tls://)")?;
    if rest.is_empty() {
        return Err("expected nats://host:port (or tls://)");
    }
    Ok(text.to_owned())
}

fn stream_name(text: &str) -> Result<String, &'static str> {
    let valid = !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err("letters, digits, _ and - only")
    }
}

fn count<T: TryFrom<u64>>(text: &str) -> Result<T, &'static str> {
    match text.parse::<u64>() {
        Ok(n) if n >= 1 => T::try_from(n).map_err(|_| "too large"),
        _ => Err("expected a whole number, at least 1"),
    }
}

fn ring_capacity(text: &str) -> Result<usize, String> {
    let n = count::<usize>(text)?;
    if n > MAX_RING_CAPACITY {
        return Err(format!("at most {MAX_RING_CAPACITY}"));
    }
    Ok(n)
}

fn pool_size(text: &str) -> Result<usize, &'static str> {
    Ok(count::<usize>(text)?.min(MAX_POOL_SIZE))
}

fn header_bytes(text: &str) -> Result<usize, String> {
    match count::<usize>(text)? {
        n if n < MIN_HEADER_BYTES => Err(format!("at least {MIN_HEADER_BYTES}")),
        n => Ok(n),
    }
}

fn origin(text: &str) -> Result<String, std::convert::Infallible> {
    Ok(text.trim().to_owned())
}

fn secret(text: &str) -> Result<String, &'static str> {
    if text.is_empty() {
        return Err("must not be empty");
    }
    Ok(text.to_owned())
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
        match parse(args, &env(vars))? {
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
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        for bad in ["500", "0s", "0ms", "s", "-1s", "1x", "", " 15 "] {
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
    fn the_ws_compression_threshold_has_a_flag_and_an_environment_form_and_0_is_off() {
        let flag = serve(&["--ws-compress-min", "0"], &[]).unwrap();
        assert_eq!(flag.ws_compress_min, 0);
        let env = serve(&[], &[("ROWCAST_WS_COMPRESS_MIN", "4096")]).unwrap();
        assert_eq!(env.ws_compress_min, 4096);
        assert!(serve(&["--ws-compress-min", "-1"], &[]).is_err());
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
    fn subcommands_take_the_same_flags_and_serve_is_the_default() {
        assert!(matches!(
            parse(["migrate"], &env(&[])),
            Ok(Command::Migrate(_))
        ));
        let Ok(Command::Seed(seed)) = parse(["seed", "--no-migrate"], &env(&[])) else {
            panic!("expected seed");
        };
        assert!(!seed.migrate);
        let Ok(Command::Serve(serve)) = parse(
            ["serve", "--ring-capacity", "4"],
            &env(&[("ROWCAST_HEARTBEAT", "1s")]),
        ) else {
            panic!("expected serve");
        };
        assert_eq!(serve.ring_capacity, 4);
        assert_eq!(serve.heartbeat, Duration::from_secs(1));
    }

    #[test]
    fn capture_subcommand_takes_a_mode_and_the_usual_flags() {
        let Ok(Command::Capture(config, CaptureMode::Wal)) =
            parse(["capture", "wal", "--capture-slot", "app_1"], &env(&[]))
        else {
            panic!("expected capture wal");
        };
        assert_eq!(config.capture_slot, "app_1");
        assert!(matches!(
            parse(["capture", "trigger"], &env(&[])),
            Ok(Command::Capture(_, CaptureMode::Trigger))
        ));
        assert!(parse(["capture"], &env(&[])).is_err());
        assert!(parse(["capture", "both"], &env(&[])).is_err());
    }

    #[test]
    fn the_relay_is_off_unless_a_nats_url_is_given() {
        let default = serve(&[], &[]).unwrap();
        assert!(default.relay.is_none());
        assert_eq!(default.relay_stream, "rowcast");
        let on = serve(
            &["--relay-stream", "app-1"],
            &[("ROWCAST_RELAY", "nats://127.0.0.1:4333")],
        )
        .unwrap();
        assert_eq!(on.relay.as_deref(), Some("nats://127.0.0.1:4333"));
        assert_eq!(on.relay_stream, "app-1");
        assert!(serve(&["--relay", "http://x"], &[]).is_err());
        assert!(serve(&["--relay-stream", "a.b"], &[]).is_err());
    }

    #[test]
    fn capture_is_trigger_unless_wal_is_asked_for() {
        let default = serve(&[], &[]).unwrap();
        assert_eq!(default.capture, CaptureMode::Trigger);
        assert!(default.capture_url.is_none());
        assert_eq!(default.capture_slot, "rowcast");
        let wal = serve(
            &[
                "--capture",
                "wal",
                "--capture-url",
                "postgres://r@db:5432/app",
            ],
            &[("ROWCAST_CAPTURE_SLOT", "app")],
        )
        .unwrap();
        assert_eq!(wal.capture, CaptureMode::Wal);
        assert_eq!(
            wal.capture_url.map(|t| t.to_string()).as_deref(),
            Some("db:5432/app as r")
        );
        assert_eq!(wal.capture_slot, "app");
        assert!(serve(&["--capture", "logical"], &[]).is_err());
        assert!(serve(&["--capture-slot", "Bad-Name"], &[]).is_err());
    }

    #[test]
    fn help_lists_every_flag_with_its_environment_form() {
        let Ok(Command::Print(help)) = parse(["--help"], &env(&[])) else {
            panic!("expected help");
        };
        let parser = Cli::command();
        for arg in parser.get_arguments() {
            let Some(long) = arg.get_long().filter(|l| !matches!(*l, "help" | "version")) else {
                continue;
            };
            assert!(help.contains(&format!("--{long}")), "{long} missing");
            assert!(help.contains(&env_name(long)), "{} missing", env_name(long));
        }
        assert!(matches!(parse(["-V"], &env(&[])), Ok(Command::Print(v)) if v.contains("rowcast")));
        let broken = env(&[
            ("ROWCAST_RING_CAPACITY", "0"),
            ("ROWCAST_NO_MIGRATE", "yes"),
        ]);
        assert!(
            matches!(parse(["migrate", "--help"], &broken), Ok(Command::Print(_))),
            "help must not depend on the environment"
        );
    }

    #[test]
    fn the_defaults_are_the_named_constants() {
        let config = Config::default();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(
            config.poll_interval,
            parse_duration(DEFAULT_POLL_INTERVAL).unwrap()
        );
        assert_eq!(config.coalesce, Duration::from_millis(2));
        assert_eq!(config.heartbeat, Duration::from_secs(15));
        assert_eq!(config.send_timeout, Duration::from_secs(10));
        assert_eq!(config.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(config.header_timeout, Duration::from_secs(10));
        assert_eq!(config.sse_retry, Duration::from_secs(1));
        assert_eq!(config.pool_size, DEFAULT_POOL_SIZE);
        assert_eq!(config.max_connections, None);
        assert_eq!(
            config.max_connections_per_ip,
            DEFAULT_MAX_CONNECTIONS_PER_IP
        );
        assert_eq!(config.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
        assert_eq!(config.max_body_bytes, DEFAULT_MAX_BODY_BYTES);
        assert_eq!(config.ws_max_message, DEFAULT_WS_MAX_MESSAGE);
        assert_eq!(config.ws_compress_min, DEFAULT_WS_COMPRESS_MIN);
        assert_eq!(config.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert!(config.cors_origins.is_empty() && config.auth_token.is_none());
        assert!(config.jwt_secret.is_none() && !config.auth_streams);
    }

    #[test]
    fn a_bad_environment_value_is_named_by_its_variable() {
        let message = |vars: &[(&str, &str)]| serve(&[], vars).unwrap_err().to_string();
        assert_eq!(
            message(&[("ROWCAST_SOURCE", "sometimes")]),
            "invalid ROWCAST_SOURCE=\"sometimes\": expected notify, poll or auto"
        );
        assert!(message(&[("ROWCAST_POLL_INTERVAL", "5")]).contains("ROWCAST_POLL_INTERVAL"));
        assert!(message(&[("ROWCAST_AUTH_STREAMS", "on")]).contains("ROWCAST_AUTH_STREAMS"));
        assert_eq!(
            serve(&["--ring-capacity", "4"], &[("ROWCAST_RING_CAPACITY", "0")])
                .unwrap()
                .ring_capacity,
            4,
            "a flag wins over a bad variable"
        );
    }

    #[test]
    fn lists_and_secrets_from_flags_and_the_environment() {
        let config = serve(
            &["--auth-token", "t"],
            &[
                (
                    "ROWCAST_CORS_ORIGINS",
                    "https://a.example, https://b.example,",
                ),
                ("ROWCAST_AUTH_STREAMS", "1"),
            ],
        )
        .unwrap();
        assert_eq!(
            config.cors_origins,
            ["https://a.example", "https://b.example"]
        );
        assert!(config.auth_streams);
        assert!(serve(&["--auth-token", ""], &[]).is_err());
        assert!(serve(&[], &[("ROWCAST_JWT_SECRET", "")]).is_err());
        assert_eq!(
            serve(&["--pool-size", "5000"], &[]).unwrap().pool_size,
            MAX_POOL_SIZE
        );
        assert!(serve(&["--max-header-bytes", "8191"], &[]).is_err());
    }
}
