//! What every wxmp test suite needs, in one place, so no production crate carries test code:
//!
//! - [`db`]: a fresh PostgreSQL database per test (empty, or cloned from a template migrated
//!   once per process) and a fresh SQLite file;
//! - [`redis`]: the test Redis and a key prefix per test;
//! - [`on_both_backends!`] and [`on_both_backends_and_apis!`]: the back-end matrix;
//! - [`http`]: one small HTTP/1.1 server for the suites that need a receiver;
//! - [`nats`]: a `nats-server -js` of the test's own (free port, own store dir), stoppable;
//! - [`tool_or_skip`]: outside tools (HAProxy, node, …) that skip locally and fail in CI.
//!
//! Only ever a `[dev-dependencies]` entry (the `wxmp-tests` crate, test-only itself, is the
//! exception).

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

pub mod db;
pub mod http;
pub mod nats;
pub mod redis;

/// Which storage a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Production: PostgreSQL (a fresh database) and, where a suite uses it, Redis.
    Postgres,
    /// The embedded default: a SQLite file in a temp dir (and in-memory sessions).
    Sqlite,
}

/// Runs each named case (an `async fn(Backend)`) once per back end, as `case::postgres` and
/// `case::sqlite`. `case as name` names the module `name` instead; a leading
/// `workers = N;` sets the runtime's worker threads (2 otherwise).
///
/// ```ignore
/// on_both_backends!(orders_are_listed, refunds_add_up);
/// on_both_backends!(workers = 4; buy_a_product as a_product_is_paid);
/// ```
#[macro_export]
macro_rules! on_both_backends {
    (workers = $n:tt; $($case:ident $(as $name:ident)?),+ $(,)?) => {
        $( $crate::__on_both_backends_case!($n, $case $(, $name)?); )+
    };
    ($($case:ident $(as $name:ident)?),+ $(,)?) => {
        $crate::on_both_backends!(workers = 2; $($case $(as $name)?),+);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __on_both_backends_case {
    ($n:tt, $case:ident) => {
        $crate::__on_both_backends_case!($n, $case, $case);
    };
    ($n:tt, $case:ident, $name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = $n)]
            async fn postgres() {
                super::$case($crate::Backend::Postgres).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = $n)]
            async fn sqlite() {
                super::$case($crate::Backend::Sqlite).await
            }
        }
    };
}

/// [`on_both_backends!`] times a two-valued API enum (WeChat Pay `V2` and `V3`, named by its
/// path): each case (`async fn(Backend, Api)`) runs as `case::postgres_v2`, `case::sqlite_v2`,
/// `case::postgres_v3` and `case::sqlite_v3`.
///
/// ```ignore
/// on_both_backends_and_apis!(api = crate::helpers::Api; a_product_is_paid);
/// ```
#[macro_export]
macro_rules! on_both_backends_and_apis {
    (api = $api:ty; $($case:ident),+ $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_v2() {
                    super::$case($crate::Backend::Postgres, <$api>::V2).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_v2() {
                    super::$case($crate::Backend::Sqlite, <$api>::V2).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres_v3() {
                    super::$case($crate::Backend::Postgres, <$api>::V3).await
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite_v3() {
                    super::$case($crate::Backend::Sqlite, <$api>::V3).await
                }
            }
        )+
    };
}

/// True when `tool` runs (`tool --version`). When it does not, a test skips with a loud note,
/// except in CI (`CI` set), where a missing tool fails the test: `.ci/run` installs them all.
pub fn tool_or_skip(tool: impl AsRef<std::ffi::OsStr>, why: &str) -> bool {
    let tool = tool.as_ref();
    let found = std::process::Command::new(tool)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        let tool = tool.to_string_lossy();
        assert!(
            std::env::var_os("CI").is_none(),
            "{tool} is required in CI ({why}); .ci/run installs it"
        );
        // Straight to stderr, past the harness's capture: a skip is seen even when it passes.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: {tool} not installed ({why}); .ci/run installs it"
        );
    }
    found
}

/// For a test that needs a process to itself (it installs the global metrics recorder and
/// counts exactly, while the binary's other tests would add to the counts): in the test
/// binary's own run, runs `test` (`concat!(module_path!(), "::name")`) alone in a child
/// process, asserts that it passed, and answers false; in that child, answers true.
pub fn in_own_process(test: &str) -> bool {
    const VAR: &str = "WXMP_TEST_OWN_PROCESS";
    // Test names are paths without the crate's name.
    let test = test.split_once("::").map_or(test, |(_, path)| path);
    if std::env::var(VAR).is_ok_and(|v| v == test) {
        return true;
    }
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, test)
        .output()
        .expect("run the test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in a process of its own:\n{stdout}\n{stderr}"
    );
    false
}
