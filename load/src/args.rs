//! Command-line flags, parsed by clap from the [`Options`] fields.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

const AFTER_HELP: &str = "\
Durations take a unit: 500ms, 20s, 2m. Exit status: 0 when every client connected and \
got every row exactly once in order, 1 when not, 2 on a usage or set-up error.";

/// rowcast-load: many WebSocket/SSE clients against a running rowcast gateway, paced
/// writes into a tracked table, every delivery verified, latency percentiles.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "rowcast-load",
    version,
    after_help = AFTER_HELP,
    max_term_width = 100,
    allow_negative_numbers = true
)]
pub struct Options {
    /// The gateway.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3001", value_parser = address,
          help_heading = "Clients")]
    pub gateway: SocketAddr,
    /// Clients to open.
    #[arg(long, value_name = "N", default_value_t = 100, value_parser = at_least_one,
          help_heading = "Clients")]
    pub clients: usize,
    /// Fraction over WebSocket, the rest over SSE.
    #[arg(long, value_name = "F", default_value_t = 1.0, value_parser = share,
          help_heading = "Clients")]
    pub ws_share: f64,
    /// Worker processes sharing the clients (raised when N exceeds one process's
    /// descriptor limit).
    #[arg(long, value_name = "K", default_value_t = 1, value_parser = at_least_one,
          help_heading = "Clients")]
    pub procs: usize,
    /// Bind clients to 127.0.0.1 .. 127.0.0.S in turn (1..254), so that more
    /// connections fit than one source address has ports for.
    #[arg(long, value_name = "S", default_value_t = 16,
          value_parser = clap::value_parser!(u8).range(1..=254), help_heading = "Clients")]
    pub source_addrs: u8,
    /// Connections being set up at once, over all processes (100: below a listen
    /// backlog of 128).
    #[arg(
        long,
        value_name = "C",
        default_value_t = 100,
        help_heading = "Clients"
    )]
    pub connect_concurrency: usize,
    /// Connect + handshake + `ready`, per client.
    #[arg(long, value_name = "DURATION", default_value = "20s", value_parser = parse_duration,
          help_heading = "Clients")]
    pub connect_timeout: Duration,
    /// Extra stream parameters, e.g. ops=INSERT (tables=load_events is always set).
    #[arg(long, value_name = "Q", help_heading = "Clients")]
    pub query: Option<String>,
    /// The read buffer each process's clients share, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024, help_heading = "Clients")]
    pub read_buffer: usize,
    /// The gateway's database, written into load_events (else DATABASE_URL).
    #[arg(long, value_name = "URL", help_heading = "Writes")]
    pub database_url: Option<String>,
    /// Commits per second, over all writers (0: none).
    #[arg(long, value_name = "R", default_value_t = 100.0, value_parser = rate,
          help_heading = "Writes")]
    pub rate: f64,
    /// Writer connections.
    #[arg(long, value_name = "W", default_value_t = 4, value_parser = at_least_one,
          help_heading = "Writes")]
    pub writers: usize,
    /// Statements in flight per writer.
    #[arg(long, value_name = "D", default_value_t = 4, value_parser = at_least_one,
          help_heading = "Writes")]
    pub writer_depth: usize,
    /// How long to write; with --idle, how long to hold.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration,
          help_heading = "Writes")]
    pub duration: Duration,
    /// Padding text per row, in bytes.
    #[arg(
        long,
        value_name = "BYTES",
        default_value_t = 64,
        help_heading = "Writes"
    )]
    pub pad: usize,
    /// After the writes, the most to wait for stragglers.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration,
          help_heading = "Writes")]
    pub drain_timeout: Duration,
    /// Sample the gateway's CPU and RSS from /proc/PID.
    #[arg(long, value_name = "PID", help_heading = "Measurement and output")]
    pub gateway_pid: Option<u32>,
    /// Connect, hold for --duration, report RSS per connection.
    #[arg(long, help_heading = "Measurement and output")]
    pub idle: bool,
    /// The JSON report on stdout (the summary then goes to stderr).
    #[arg(long, help_heading = "Measurement and output")]
    pub json: bool,
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these options.
    Run(Box<Options>),
    /// Print this text (the help or the version).
    Print(String),
}

/// Parses a duration with a unit (`500ms`, `20s`, `2m`, `1h`); a bare number or zero
/// is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.trim().bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("`{text}` needs a unit (ms, s, m, h)"));
    }
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => Err(format!("`{text}` must be positive")),
        Ok(duration) => Ok(duration),
        Err(err) => Err(format!("`{text}`: {err}")),
    }
}

fn address(text: &str) -> Result<SocketAddr, &'static str> {
    text.parse()
        .map_err(|_| "expected an address like 127.0.0.1:3001")
}

fn at_least_one(text: &str) -> Result<usize, &'static str> {
    match text.parse() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err("expected a whole number, at least 1"),
    }
}

fn share(text: &str) -> Result<f64, &'static str> {
    match text.parse() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err("expected a fraction between 0 and 1"),
    }
}

fn rate(text: &str) -> Result<f64, &'static str> {
    match text.parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 0.0 => Ok(r),
        _ => Err("expected a non-negative number"),
    }
}

/// Parses the arguments (without the program name); `env_database_url` is
/// `DATABASE_URL`, used when `--database-url` is absent. Errors are one line.
pub fn parse(args: &[String], env_database_url: Option<String>) -> Result<Parsed, String> {
    let argv = std::iter::once("rowcast-load").chain(args.iter().map(String::as_str));
    let mut options = match Options::try_parse_from(argv) {
        Ok(options) => options,
        Err(err) => {
            let text = err.render().to_string();
            if !err.use_stderr() {
                return Ok(Parsed::Print(format!("{}\n", text.trim_end())));
            }
            let line = text.lines().next().unwrap_or_default();
            return Err(line.strip_prefix("error: ").unwrap_or(line).to_owned());
        }
    };
    options.database_url = options.database_url.or(env_database_url);
    if !options.idle && options.rate > 0.0 && options.database_url.is_none() {
        return Err("writes need --database-url (or DATABASE_URL)".into());
    }
    Ok(Parsed::Run(Box::new(options)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_parse_in_both_forms_and_durations_need_units() {
        let Parsed::Run(o) = parse(
            &args(&[
                "--clients=500",
                "--ws-share",
                "0.5",
                "--rate",
                "200",
                "--duration",
                "1500ms",
                "--idle",
            ]),
            None,
        )
        .unwrap() else {
            panic!("expected options");
        };
        assert_eq!(o.clients, 500);
        assert_eq!(o.ws_share, 0.5);
        assert_eq!(o.duration, Duration::from_millis(1500));
        assert!(o.idle);
        assert_eq!(o.gateway.to_string(), "127.0.0.1:3001");
        assert_eq!(o.read_buffer, 262_144);
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    }

    #[test]
    fn writes_without_a_database_are_refused() {
        assert!(parse(&args(&["--rate", "10"]), None).is_err());
        assert!(parse(&args(&["--rate", "0"]), None).is_ok());
        assert!(parse(&args(&["--rate", "10"]), Some("postgres://x/y".into())).is_ok());
        assert!(parse(&args(&["--bogus"]), None).is_err());
    }

    #[test]
    fn bad_values_are_one_line_errors_naming_the_flag() {
        for (flag, value) in [
            ("--clients", "0"),
            ("--ws-share", "1.5"),
            ("--source-addrs", "255"),
            ("--rate", "-1"),
            ("--writers", "0"),
            ("--connect-timeout", "20"),
            ("--gateway", "nowhere"),
        ] {
            let err = parse(&args(&["--idle", flag, value]), None).unwrap_err();
            assert!(err.contains(flag) && !err.contains('\n'), "{err}");
        }
        assert!(
            matches!(parse(&args(&["--help"]), None), Ok(Parsed::Print(h)) if h.contains("--gateway-pid"))
        );
    }
}
