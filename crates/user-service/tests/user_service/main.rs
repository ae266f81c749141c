//! user-service's integration tests, one binary: the service called directly, and `serve`
//! on a real port behind the production gRPC path.

mod helpers;
mod service;
mod wire;
