//! The contract files are tested, not decorative. Each is a valid document of its kind
//! (openapi-spec-validator for OpenAPI 3.1, the official AsyncAPI 3.0.0 JSON Schema for
//! AsyncAPI; docs/asyncapi.yaml's message schemas are also applied to every stream
//! message the tests receive, see tests/support/contract.rs). And docs/openapi.yaml
//! is held against the running server: schemathesis (from PyPI; scripts/test
//! installs it) generates requests from the spec, valid and invalid, and checks every
//! response's status code, body schema, content type and headers against it, that
//! nothing is a 500, and that a method a route lacks is a 405 with `Allow`; its
//! stateful phase chains create → read → update → delete through the `Location` header
//! and checks that a created order can be read and a deleted one is gone. The spec is
//! only worth publishing while this passes.
//!
//! Not checked: that schemathesis's "valid" data is accepted and its "invalid" data
//! refused. Names are judged after trimming Unicode whitespace, which a JSON Schema
//! length cannot express, and `/ws` needs a handshake that schemathesis cannot make.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// Test cases per operation and phase: enough to cross every documented status code,
/// few enough that the whole run stays well under a minute.
const MAX_EXAMPLES: &str = "100";
/// The OpenAPI document.
const OPENAPI: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.yaml");
/// Bound on the whole schemathesis run.
const RUN_LIMIT: Duration = Duration::from_secs(110);

/// Runs a checker to the end; panics with its output unless it succeeds.
fn run_checker(command: &mut Command, what: &str) -> String {
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run the {what} check: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{what}: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[test]
fn docs_openapi_yaml_is_a_valid_openapi_3_1_document() {
    let stdout = run_checker(
        Command::new(python_tool("openapi-spec-validator")).arg(OPENAPI),
        "docs/openapi.yaml is not a valid OpenAPI document",
    );
    assert!(stdout.contains("OK"), "{stdout}");
}

#[test]
fn docs_asyncapi_yaml_is_a_valid_asyncapi_3_document() {
    assert!(
        std::path::Path::new("tests/specs/node_modules/@asyncapi/specs").exists(),
        "the spec checks' packages are missing: run `npm ci` in tests/specs (scripts/test does)"
    );
    let stdout = run_checker(
        Command::new("node").arg("tests/specs/validate.mjs"),
        "docs/asyncapi.yaml is not a valid AsyncAPI document",
    );
    assert!(stdout.contains("valid AsyncAPI 3.0.0"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_api_conforms_to_docs_openapi_yaml() {
    let tool = python_tool("schemathesis");
    let db = TestDb::new();
    let client = db.client().await;
    // A few rows, so that reads, updates and deletes of low ids find something.
    for n in 0..5 {
        insert_order(&client, &format!("customer {n}"), "lamp").await;
    }
    let server = TestServer::start(db.config()).await;
    let workdir = tempdir();
    let run = tokio::process::Command::new(&tool)
        .args(["run", OPENAPI, "--url"])
        .arg(format!("http://{}", server.addr))
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,\
             response_headers_conformance,response_schema_conformance,\
             unsupported_method,allow_header_conformance,\
             use_after_free,ensure_resource_availability",
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--max-examples",
            MAX_EXAMPLES,
            "--seed",
            "20261207",
            "--workers",
            "2",
            "--request-timeout",
            "10",
            // An accepted SSE stream never ends; /events is covered by tests/streams.rs
            // and docs/asyncapi.yaml.
            "--exclude-path",
            "/events",
            "--suppress-health-check",
            "too_slow",
        ])
        // Hypothesis keeps its example database in the working directory.
        .current_dir(&workdir)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(RUN_LIMIT, run)
        .await
        .expect("schemathesis did not finish in time")
        .expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    // The summary, for `--nocapture`.
    println!("{stdout}");
    assert!(
        output.status.success(),
        "schemathesis found responses that break docs/openapi.yaml ({}):\n{stdout}\n{stderr}",
        output.status
    );
    // Guards against a run that passes because it tested nothing.
    assert!(
        stdout.contains("passed"),
        "schemathesis reported no passing operation:\n{stdout}"
    );
    server.shutdown().await;
}

/// A directory for schemathesis's working files, out of the source tree.
fn tempdir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rowcast-schemathesis-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("report directory");
    dir
}
