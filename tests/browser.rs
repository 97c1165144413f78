//! The web UI in a real headless Chromium (Debian's, driven by playwright-core): the
//! scenarios live in tests/ui/run.mjs; this test gives them a gateway binary and a
//! fresh database, and fails when any of them fails.

mod support;

use std::process::Command;

use support::*;

#[test]
fn the_ui_passes_its_browser_scenarios_on_both_transports() {
    assert!(
        std::path::Path::new("tests/ui/node_modules/playwright-core").exists(),
        "the UI tests' packages are missing: run `npm ci` in tests/ui (scripts/test does)"
    );
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: `apt-get install chromium` (scripts/test does)"
    );
    let db = TestDb::new();
    let output = Command::new("node")
        .arg("tests/ui/run.mjs")
        .env("ROWCAST_BIN", binary())
        .env("DATABASE_URL", &db.url)
        .output()
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "browser scenarios failed\n--- stdout\n{stdout}\n--- stderr\n{stderr}"
    );
    assert!(stdout.contains("# fail 0"), "{stdout}");
}
