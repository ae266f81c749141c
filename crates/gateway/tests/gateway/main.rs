//! The gateway's integration tests, one binary: the HTTP API in front of fake gRPC services
//! (and its hardening), and the app in process (OpenAPI, extractors).

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod api;
mod helpers;
mod in_process;
