//! service-kit's integration tests, one binary: client-side balancing and drain, the
//! database layer on both back ends, mutual TLS on internal gRPC.

// Test code: a failed unwrap is a failed test (the workspace denies unwrap elsewhere).
#![allow(
    clippy::unwrap_used,
    clippy::cast_possible_truncation,
    clippy::cast_possible_wrap,
    clippy::cast_sign_loss
)]

mod balance;
mod db;
mod mtls;
