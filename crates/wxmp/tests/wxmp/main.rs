//! The wxmp binary's integration tests, one binary: the JavaScript suites under node.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod node;
