//! The binary's command line: bad configuration ends with one clear line and a
//! non-zero exit; `migrate` and `seed` do their one job.

mod support;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

fn rowcast(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("ROWCAST_DATABASE_URL")
        .env("RUST_LOG", "warn")
        .output()
        .expect("run rowcast")
}

fn last_line(output: &Output) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    stderr.lines().last().unwrap_or_default().to_owned()
}

fn assert_fails_with(output: &Output, needle: &str) {
    assert!(!output.status.success(), "should fail: {output:?}");
    let line = last_line(output);
    assert!(line.starts_with("rowcast: error: "), "last line: {line:?}");
    assert!(line.contains(needle), "{line:?} should mention {needle:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

#[test]
fn an_unreachable_host_fails_within_the_startup_deadline() {
    let port = free_port();
    let started = Instant::now();
    let output = rowcast(&[
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &format!("postgres://u@127.0.0.1:{port}/x"),
    ]);
    assert_fails_with(&output, "cannot reach PostgreSQL");
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
}

#[test]
fn a_wrong_password_fails_at_once() {
    let cluster = Cluster::private();
    let url = cluster
        .url_of("postgres")
        .replacen("rowcast@", "rowcast_pw:wrong@", 1);
    let started = Instant::now();
    let output = rowcast(&["--listen", "127.0.0.1:0", "--database-url", &url]);
    assert_fails_with(&output, "refused the login");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        !last_line(&output).contains("wrong"),
        "the password must not be printed"
    );
}

#[test]
fn a_missing_database_fails_at_once() {
    let url = Cluster::shared().url_of("no_such_database");
    let output = rowcast(&["--listen", "127.0.0.1:0", "--database-url", &url]);
    assert_fails_with(&output, "does not exist");
}

#[test]
fn tls_required_against_a_server_without_tls_is_a_tls_error() {
    let db = TestDb::new();
    let url = db.url.replace("sslmode=disable", "sslmode=require");
    let output = rowcast(&["--listen", "127.0.0.1:0", "--database-url", &url]);
    assert_fails_with(&output, "TLS");
}

#[test]
fn malformed_urls_and_flags_are_rejected() {
    assert_fails_with(
        &rowcast(&["--database-url", "postgres://u@h:notaport/d"]),
        "invalid database configuration",
    );
    assert_fails_with(&rowcast(&["--bogus"]), "unknown flag");
    assert_fails_with(&rowcast(&["--poll-interval", "500"]), "unit");
    assert_fails_with(&rowcast(&["--ring-capacity", "0"]), "ring-capacity");
    let output = Command::new(binary())
        .env("ROWCAST_SOURCE", "sometimes")
        .output()
        .unwrap();
    assert_fails_with(&output, "ROWCAST_SOURCE");
    let output = Command::new(binary())
        .env("ROWCAST_POLL_INTERVAL", "500")
        .output()
        .unwrap();
    assert_fails_with(&output, "ROWCAST_POLL_INTERVAL");
    assert_fails_with(&rowcast(&["migrate", "--bogus"]), "unknown flag");
    assert_fails_with(&rowcast(&["stray"]), "unknown command");
    assert_fails_with(&rowcast(&["--listen"]), "needs a value");
}

#[test]
fn no_migrate_against_an_empty_database_says_what_to_do() {
    let db = Cluster::shared().empty_database();
    let output = rowcast(&[
        "--listen",
        "127.0.0.1:0",
        "--no-migrate",
        "--database-url",
        &db.url,
    ]);
    assert_fails_with(&output, "rowcast migrate");
}

#[test]
fn migrate_then_seed_fill_an_empty_database_once() {
    let db = Cluster::shared().empty_database();
    let migrate = rowcast(&["migrate", "--database-url", &db.url]);
    assert!(migrate.status.success(), "{migrate:?}");
    let seed = rowcast(&["seed", "--database-url", &db.url]);
    assert!(seed.status.success(), "{seed:?}");
    assert!(String::from_utf8_lossy(&seed.stdout).contains("sample orders inserted: 8"));
    let again = rowcast(&["seed", "--database-url", &db.url]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("sample orders inserted: 0"));
}

#[test]
fn help_and_version_exit_zero() {
    let help = rowcast(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("--ring-capacity"), "{text}");
    assert!(text.contains("ROWCAST_RING_CAPACITY"), "{text}");
    assert!(text.contains("migrate"), "{text}");
    assert!(rowcast(&["--version"]).status.success());
}

/// A listener that accepts connections and then never says a word; with `answer`,
/// it first answers the SSLRequest with that byte (`S` or `N`) and then goes silent.
fn silent_listener(answer: Option<u8>) -> u16 {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut stream in listener.incoming().flatten() {
            if let Some(byte) = answer {
                let mut request = [0u8; 8];
                if stream.read_exact(&mut request).is_ok() {
                    let _ = stream.write_all(&[byte]);
                }
            }
            held.push(stream);
        }
    });
    port
}

fn assert_silence_ends_startup(answer: Option<u8>, waiting_for: &str) {
    let port = silent_listener(answer);
    let started = Instant::now();
    let output = rowcast(&[
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        &format!("postgres://u@127.0.0.1:{port}/x"),
    ]);
    let took = started.elapsed();
    assert_fails_with(&output, &format!("PostgreSQL at 127.0.0.1:{port}/x as u"));
    assert_fails_with(&output, &format!("(waiting for {waiting_for})"));
    assert!(took < Duration::from_secs(15), "took {took:?}");
}

#[test]
fn a_server_that_accepts_and_never_answers_ends_startup_on_time() {
    assert_silence_ends_startup(None, "the answer to the SSLRequest (TLS negotiation)");
}

#[test]
fn a_server_that_agrees_to_tls_and_goes_silent_ends_startup_on_time() {
    assert_silence_ends_startup(Some(b'S'), "the TLS handshake");
}

#[test]
fn a_server_that_refuses_tls_and_goes_silent_ends_startup_on_time() {
    assert_silence_ends_startup(Some(b'N'), "authentication");
}
