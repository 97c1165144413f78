//! `rowcast-load`: the load harness for rowcast. See `--help` and BENCHMARKS.md.
//!
//! # Layout
//!
//! - [`args`] — flags.
//! - [`run`] — the parent — sets up `load_events`, starts the worker processes, runs
//!   the writers, samples the gateway from /proc, adds up the workers' figures.
//! - [`worker`] — a worker process (`rowcast-load --worker`, spec and commands on
//!   stdin, JSON events on stdout): its share of the clients, one thread, one shared
//!   read buffer, per-client verification.
//! - [`proto`] — WebSocket frames, chunked bodies, SSE blocks and the `change` scan,
//!   without allocation.
//! - [`writer`] — paced commits, each row stamped with its send time.
//! - [`msg`], [`report`], [`procstat`], [`counters`] — what processes exchange, the
//!   report, /proc, the gateway's `/metrics`.

#![deny(unsafe_code)]
#![warn(clippy::await_holding_lock, clippy::dbg_macro, clippy::todo)]

mod args;
mod counters;
mod msg;
mod procstat;
mod proto;
mod report;
mod run;
mod worker;
mod writer;

use std::process::ExitCode;

/// Wall-clock µs since the Unix epoch: the clock `committed_at` is compared with.
pub fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        return ExitCode::from(worker::main() as u8);
    }
    let options = match args::parse(&args, std::env::var("DATABASE_URL").ok()) {
        Ok(args::Parsed::Run(options)) => options,
        Ok(args::Parsed::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            eprintln!("rowcast-load: {err}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rowcast-load: {err}");
            return ExitCode::from(2);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, run::run(&options)) {
        Ok(report) => {
            if options.json {
                eprint!("{}", report.human());
                match serde_json::to_string_pretty(&report) {
                    Ok(json) => println!("{json}"),
                    Err(err) => eprintln!("rowcast-load: {err}"),
                }
            } else {
                print!("{}", report.human());
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(err) => {
            eprintln!("rowcast-load: error: {err}");
            ExitCode::from(2)
        }
    }
}
