//! A process's CPU time and resident memory, from /proc.

use serde::{Deserialize, Serialize};

/// /proc reports CPU times in USER_HZ ticks, which the kernel fixes at 100 per second
/// for every user-space ABI (what `sysconf(_SC_CLK_TCK)` returns).
const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    /// User + system CPU seconds since the process started (all threads).
    pub cpu_s: f64,
    /// Resident set size, bytes.
    pub rss_bytes: u64,
    /// Threads.
    pub threads: u64,
}

/// Reads `/proc/<pid>` (`"self"` for this process).
pub fn sample(pid: &str) -> std::io::Result<Sample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse(&stat, &status))
}

/// This process.
pub fn own() -> Sample {
    sample("self").unwrap_or_default()
}

fn parse(stat: &str, status: &str) -> Sample {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_s = (ticks(11) + ticks(12)) as f64 / TICKS_PER_SECOND;
    let mut out = Sample {
        cpu_s,
        ..Sample::default()
    };
    for line in status.lines() {
        let value = |l: &str| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if line.starts_with("VmRSS:") {
            out.rss_bytes = value(line) * 1024;
        } else if line.starts_with("Threads:") {
            out.threads = value(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_rss_are_read_from_stat_and_status() {
        let stat = "123 (my (odd) name) S 1 2 3 4 5 6 7 8 9 10 250 150 0 0 20 0 3 0 99";
        let status = "Name:\tx\nVmRSS:\t  2048 kB\nThreads:\t3\n";
        let sample = parse(stat, status);
        assert_eq!(sample.cpu_s, 4.0);
        assert_eq!(sample.rss_bytes, 2 * 1024 * 1024);
        assert_eq!(sample.threads, 3);
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(own().rss_bytes > 0);
    }
}
