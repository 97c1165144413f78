//! The `rowcast` binary: parse the configuration, start the gateway, serve until a
//! signal, drain, exit.

use std::process::ExitCode;

use rowcast::config::{self, Command, Config};
use rowcast::gateway::Gateway;
use rowcast::pg::capture::{switch, CaptureMode};
use rowcast::pg::connect::Waiting;
use rowcast::pg::{migrate, startup};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let command = match config::parse(std::env::args_os().skip(1), &config::ProcessEnv) {
        Ok(Command::Print(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Ok(command) => command,
        Err(err) => return fail(&err),
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,tokio_postgres=warn")),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return fail(&err),
    };
    let result = runtime.block_on(async {
        match command {
            Command::Print(_) => Ok(()),
            Command::Serve(config) => serve(config).await,
            Command::Migrate(config) => migrate_only(config, false).await,
            Command::Seed(config) => migrate_only(config, true).await,
            Command::Capture(config, mode) => switch_capture(config, mode).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => fail(&*err),
    }
}

/// The last line on stderr for a failure: one clear sentence, no backtrace.
fn fail(err: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("rowcast: error: {err}");
    ExitCode::FAILURE
}

type BoxError = Box<dyn std::error::Error>;

async fn serve(config: Config) -> Result<(), BoxError> {
    let max_connections = rowcast::http::server::connection_ceiling(config.max_connections);
    let listener = rowcast::http::server::bind(config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let gateway = Gateway::start(config).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening on http://{addr}");
    let server = tokio::spawn(rowcast::http::run(
        listener,
        std::sync::Arc::clone(&gateway),
        max_connections,
    ));
    wait_for_signal().await;
    tracing::info!("signal received; shutting down");
    gateway.shutdown.cancel();
    let _ = server.await;
    gateway.stop().await;
    tracing::info!("bye");
    Ok(())
}

async fn migrate_only(config: Config, seed: bool) -> Result<(), BoxError> {
    let (target, embedded) = startup::resolve_database(&config).await?;
    let result = async {
        let deadline = startup::Deadline::after(startup::STARTUP_DEADLINE);
        let mut client = deadline.connect(&target).await?;
        if config.migrate || !seed {
            let applied = deadline
                .step(&target, Waiting::Migrations, migrate::apply(&mut client))
                .await?;
            println!("migrations applied: {applied:?}");
        }
        if seed {
            let inserted = deadline
                .step(&target, Waiting::FirstQuery, migrate::seed(&client))
                .await?;
            println!("sample orders inserted: {inserted}");
        }
        Ok::<(), rowcast::pg::DbError>(())
    }
    .await;
    if let Some(server) = embedded {
        let _ = server.stop();
    }
    Ok(result?)
}

/// `rowcast capture wal|trigger`: migrates if allowed, then switches the mode.
async fn switch_capture(config: Config, mode: CaptureMode) -> Result<(), BoxError> {
    let (target, embedded) = startup::resolve_database(&config).await?;
    let result = async {
        let deadline = startup::Deadline::after(startup::STARTUP_DEADLINE);
        startup::prepare_schema(&target, &config, &deadline).await?;
        let capture = config
            .capture_url
            .as_deref()
            .cloned()
            .unwrap_or_else(|| target.clone());
        let switched = match mode {
            CaptureMode::Wal => {
                let client = deadline.connect(&target).await?;
                switch::to_wal(&client, &config.capture_slot, true)
                    .await?
                    .is_some()
            }
            CaptureMode::Trigger => {
                switch::to_trigger(&target, &capture, &config.capture_slot).await?
            }
        };
        println!(
            "capture mode: {}{}",
            mode.as_str(),
            if switched { "" } else { " (unchanged)" }
        );
        Ok::<(), BoxError>(())
    }
    .await;
    if let Some(server) = embedded {
        let _ = server.stop();
    }
    result
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(err) => {
            tracing::warn!(%err, "cannot watch SIGTERM; only SIGINT stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
