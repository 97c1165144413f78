//! `rowcast-floor`: the physical floor of a fan-out, for rowcast-load to measure in the
//! same run as rowcast (BENCHMARKS.md, "The floor").
//!
//! It serves the two stream routes just well enough for rowcast-load's clients
//! (`GET /ws` with the WebSocket handshake, `GET /events` as a chunked SSE body, each
//! opened with a `ready`), follows `realtime.change_log` as a gateway does (LISTEN on
//! the doorbell, one read per wake-up), builds each batch's bytes once, and writes them
//! to every client with one non-blocking write per client per batch. Nothing else: no
//! filters, no ring, no per-client tasks, no heartbeats, no resume. Its CPU per
//! delivery is what any gateway must pay to get the same bytes into the same sockets on
//! this machine; rowcast's figure divided by it is the overhead left to remove.
//!
//! One thread (a current-thread runtime): CPU per delivery is summed over threads
//! anyway, and one thread has no hand-offs to pay for.

#![deny(unsafe_code)]
#![warn(clippy::await_holding_lock, clippy::dbg_macro, clippy::todo)]

mod fanout;
mod feed;
mod handshake;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::rc::Rc;

use clap::Parser;

/// rowcast-floor: the least a gateway can do per delivery — serves /ws and /events to
/// rowcast-load's clients, one pre-built write per client per batch of events.
#[derive(Debug, Parser)]
#[command(name = "rowcast-floor", version, max_term_width = 100)]
struct Options {
    /// Where to listen.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:3002")]
    listen: SocketAddr,
    /// The database whose `realtime.change_log` to follow.
    #[arg(long, value_name = "URL", env = "DATABASE_URL")]
    database_url: String,
}

fn main() -> ExitCode {
    let options = Options::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("rowcast-floor: {err}");
            return ExitCode::from(2);
        }
    };
    let local = tokio::task::LocalSet::new();
    match local.block_on(&runtime, serve(options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("rowcast-floor: {err}");
            ExitCode::from(2)
        }
    }
}

async fn serve(options: Options) -> Result<(), String> {
    let feed = feed::Feed::connect(&options.database_url).await?;
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let clients = Rc::new(fanout::Clients::new(feed.head()));
    tokio::task::spawn_local(accept(listener, Rc::clone(&clients)));
    feed.run(&clients).await
}

/// Accepts connections; each is handshaken on its own task, then joins the fan-out.
async fn accept(listener: tokio::net::TcpListener, clients: Rc<fanout::Clients>) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let clients = Rc::clone(&clients);
        tokio::task::spawn_local(async move {
            if let Ok(kind) = handshake::answer(&mut stream).await {
                clients.join(stream, kind);
            }
        });
    }
}
