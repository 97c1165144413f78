//! The JS client package (clients/js) against a real gateway, under Node and in
//! headless Chromium (Debian's): its node:test suite gets the gateway's URL and fails
//! this test when any case fails.

mod support;

use std::process::Command;

use support::*;

#[tokio::test]
async fn the_js_client_keeps_a_view_exact_under_node_and_in_chromium_on_both_transports() {
    assert!(
        std::path::Path::new("clients/js/node_modules/ws").exists()
            && std::path::Path::new("clients/js/node_modules/playwright-core").exists(),
        "the client's test packages are missing: run `npm ci` in clients/js"
    );
    let db = TestDb::new();
    let server = TestServer::start(db.config()).await;
    let url = server.url("");
    let output = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .args(["--test", "clients/js/test/"])
            .env("ROWCAST_URL", url)
            .output()
            .expect("run node")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "the JS client's tests failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(
        stdout.contains("# pass 5") && stdout.contains("# fail 0"),
        "{stdout}"
    );
}
