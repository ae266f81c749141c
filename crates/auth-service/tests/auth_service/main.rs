//! auth-service's integration tests, one binary: the cached access token, the gRPC service
//! against the sandbox, its metrics, and the session-store contract.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod access_token;
mod grpc;
mod helpers;
mod metrics;
mod store_contract;
