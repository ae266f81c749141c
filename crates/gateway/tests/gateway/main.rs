//! The gateway's integration tests, one binary: the HTTP API in front of fake gRPC services
//! (and its hardening), and the app in process (OpenAPI, extractors).

mod api;
mod helpers;
mod in_process;
