//! Command-line flags.

use std::net::SocketAddr;
use std::time::Duration;

/// Usage text.
pub const USAGE: &str = "\
rowcast-load: many WebSocket/SSE clients against a running rowcast gateway, paced
writes into a tracked table, every delivery verified, latency percentiles.

USAGE: rowcast-load [FLAGS]

Clients
  --gateway ADDR            the gateway (default 127.0.0.1:3001)
  --clients N               clients to open (default 100)
  --ws-share F              fraction over WebSocket, the rest over SSE (default 1.0)
  --procs K                 worker processes sharing the clients (default 1; raised
                            when N exceeds one process's descriptor limit)
  --source-addrs S          bind clients to 127.0.0.1 .. 127.0.0.S in turn (default 16)
  --connect-concurrency C   connections being set up at once, over all processes
                            (default 100: below a listen backlog of 128)
  --connect-timeout DUR     connect + handshake + `ready`, per client (default 20s)
  --query Q                 extra stream parameters, e.g. ops=INSERT (tables=load_events
                            is always set)
  --read-buffer BYTES       the read buffer each process's clients share (default 262144)

Writes (into load_events, created and tracked by the harness)
  --database-url URL        the gateway's database (or DATABASE_URL)
  --rate R                  commits per second, over all writers (default 100; 0: none)
  --writers W               writer connections (default 4)
  --writer-depth D          statements in flight per writer (default 4)
  --duration DUR            how long to write; with --idle, how long to hold (default 10s)
  --pad BYTES               padding text per row (default 64)
  --drain-timeout DUR       after the writes, most wait for stragglers (default 30s)

Measurement and output
  --gateway-pid PID         sample the gateway's CPU and RSS from /proc/PID
  --idle                    connect, hold for --duration, report RSS per connection
  --json                    the JSON report on stdout (the summary then goes to stderr)
  --help

Durations take a unit: 500ms, 20s, 2m. Exit status: 0 when every client connected and
got every row exactly once in order, 1 when not, 2 on a usage or set-up error.
";

/// The parsed flags.
#[derive(Debug, Clone)]
pub struct Options {
    /// Gateway address.
    pub gateway: SocketAddr,
    /// Number of clients.
    pub clients: usize,
    /// Fraction over WebSocket.
    pub ws_share: f64,
    /// Worker processes.
    pub procs: usize,
    /// Source addresses 127.0.0.1..=S.
    pub source_addrs: u8,
    /// Connections being set up at once, over all processes.
    pub connect_concurrency: usize,
    /// Per-client connect timeout.
    pub connect_timeout: Duration,
    /// Extra stream parameters.
    pub query: Option<String>,
    /// Shared read buffer per process.
    pub read_buffer: usize,
    /// Database URL for set-up and writers.
    pub database_url: Option<String>,
    /// Commits per second.
    pub rate: f64,
    /// Writer connections.
    pub writers: usize,
    /// In flight per writer.
    pub writer_depth: usize,
    /// Write phase (or hold time).
    pub duration: Duration,
    /// Padding bytes per row.
    pub pad: usize,
    /// Drain timeout.
    pub drain_timeout: Duration,
    /// The gateway's pid.
    pub gateway_pid: Option<u32>,
    /// Idle mode.
    pub idle: bool,
    /// JSON output.
    pub json: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway: "127.0.0.1:3001".parse().expect("valid default address"),
            clients: 100,
            ws_share: 1.0,
            procs: 1,
            source_addrs: 16,
            connect_concurrency: 100,
            connect_timeout: Duration::from_secs(20),
            query: None,
            read_buffer: 256 * 1024,
            database_url: None,
            rate: 100.0,
            writers: 4,
            writer_depth: 4,
            duration: Duration::from_secs(10),
            pad: 64,
            drain_timeout: Duration::from_secs(30),
            gateway_pid: None,
            idle: false,
            json: false,
        }
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Parsed {
    /// Run with these options.
    Run(Box<Options>),
    /// Print usage.
    Help,
}

/// Parses a duration with a unit: `500ms`, `20s`, `2m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("`{text}` needs a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}`")),
    };
    if !seconds.is_finite() || seconds <= 0.0 {
        return Err(format!("`{text}` must be positive"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn number<T: std::str::FromStr>(flag: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{flag}: `{value}` is not a valid number"))
}

/// Parses the arguments (without the program name); `env` supplies `DATABASE_URL`.
pub fn parse(args: &[String], env_database_url: Option<String>) -> Result<Parsed, String> {
    let mut o = Options {
        database_url: env_database_url,
        ..Options::default()
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v.to_owned())),
            _ => (flag.as_str(), None),
        };
        let mut value = || -> Result<String, String> {
            match &inline {
                Some(v) => Ok(v.clone()),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| format!("{name} needs a value")),
            }
        };
        match name {
            "--help" | "-h" => return Ok(Parsed::Help),
            "--idle" => o.idle = true,
            "--json" => o.json = true,
            "--gateway" => {
                let v = value()?;
                o.gateway = v.parse().map_err(|_| {
                    format!("--gateway: `{v}` is not an address like 127.0.0.1:3001")
                })?;
            }
            "--clients" => o.clients = number(name, &value()?)?,
            "--ws-share" => o.ws_share = number(name, &value()?)?,
            "--procs" => o.procs = number(name, &value()?)?,
            "--source-addrs" => o.source_addrs = number(name, &value()?)?,
            "--connect-concurrency" => o.connect_concurrency = number(name, &value()?)?,
            "--connect-timeout" => o.connect_timeout = parse_duration(&value()?)?,
            "--query" => o.query = Some(value()?),
            "--read-buffer" => o.read_buffer = number(name, &value()?)?,
            "--database-url" => o.database_url = Some(value()?),
            "--rate" => o.rate = number(name, &value()?)?,
            "--writers" => o.writers = number(name, &value()?)?,
            "--writer-depth" => o.writer_depth = number(name, &value()?)?,
            "--duration" => o.duration = parse_duration(&value()?)?,
            "--pad" => o.pad = number(name, &value()?)?,
            "--drain-timeout" => o.drain_timeout = parse_duration(&value()?)?,
            "--gateway-pid" => o.gateway_pid = Some(number(name, &value()?)?),
            other => return Err(format!("unknown flag `{other}` (see --help)")),
        }
    }
    if !(0.0..=1.0).contains(&o.ws_share) {
        return Err("--ws-share must be between 0 and 1".into());
    }
    if o.clients == 0 {
        return Err("--clients must be at least 1".into());
    }
    if o.procs == 0 {
        return Err("--procs must be at least 1".into());
    }
    if o.source_addrs == 0 || o.source_addrs == 255 {
        return Err("--source-addrs must be 1..254".into());
    }
    if !o.rate.is_finite() || o.rate < 0.0 {
        return Err("--rate must be a non-negative number".into());
    }
    if o.writers == 0 || o.writer_depth == 0 {
        return Err("--writers and --writer-depth must be at least 1".into());
    }
    if !o.idle && o.rate > 0.0 && o.database_url.is_none() {
        return Err("writes need --database-url (or DATABASE_URL)".into());
    }
    Ok(Parsed::Run(Box::new(o)))
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
}
