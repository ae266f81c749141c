//! auth-service's integration tests, one binary: the cached access token, the gRPC service
//! against the sandbox, its metrics, and the session-store contract.

mod access_token;
mod grpc;
mod helpers;
mod metrics;
mod store_contract;
