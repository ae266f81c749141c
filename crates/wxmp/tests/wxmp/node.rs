//! Runs the JavaScript suites with node's built-in test runner (`node --test`), so that
//! `cargo test` (and `make test`) covers them: the mini-program client
//! (`clients/miniprogram/test/`) and the sandbox console in headless Chromium
//! (`tests/node/`). Each suite starts this crate's `wxmp up` binary on free ports.
//!
//! Without node the test says so loudly and passes, except in CI (`CI` set), where it fails:
//! `.ci/run` has node. node's own result lines are written straight to stderr (not captured
//! by the test harness), so every run shows them.

use std::{
    io::Write,
    path::{Path, PathBuf},
    process::Command,
};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("repository root")
}

#[test]
fn javascript_suites_pass_under_node_test() {
    let node = std::env::var("NODE").unwrap_or_else(|_| "node".to_owned());
    if !wxmp_testkit::tool_or_skip(
        &node,
        "runs the mini-program client and sandbox console suites",
    ) {
        return;
    }
    let root = repo_root();
    let out = Command::new(&node)
        .current_dir(&root)
        .args([
            "--test",
            "--test-reporter=spec",
            "clients/miniprogram/test/client.test.js",
            "tests/node/console.test.js",
        ])
        .env("WXMP_BIN", env!("CARGO_BIN_EXE_wxmp"))
        .output()
        .expect("run node --test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The spec reporter ends with "ℹ tests N", "ℹ pass N", "ℹ fail N", "ℹ skipped N", "ℹ todo N".
    let summary: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("ℹ "))
        .filter(|l| {
            ["tests ", "pass ", "fail ", "skipped ", "todo "]
                .iter()
                .any(|p| l.starts_with(p))
        })
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "node --test (client + console): {}",
        summary.join(", ")
    );
    // Skipped and todo tests carry their reason after " # ": show them, never hide them.
    for line in stdout.lines().filter(|l| l.contains(" # ")) {
        let _ = writeln!(std::io::stderr(), "node --test: {}", line.trim());
    }
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{stderr}"
    );
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("pass ") && l != &"pass 0"),
        "node ran no test:\n{stdout}\n{stderr}"
    );
}
