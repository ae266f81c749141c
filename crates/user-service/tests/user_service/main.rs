//! user-service's integration tests, one binary: the service called directly, and `serve`
//! on a real port behind the production gRPC path.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod helpers;
mod service;
mod wire;
mod writes;
