//! The plumbing every wxmp binary shares, and nothing else: no business logic lives here.
//!
//! - [`telemetry`]: tracing (pretty or JSON) and the Prometheus exporter.
//! - [`shutdown`]: one signal that stops every server of a process gracefully.
//! - [`grpc`]: serving with health + request ids + internal auth + drain, and client channels.
//! - [`hop`]: per-hop timings of requests whose id starts with `trace-`.
//! - [`balance`]: per-call client-side balancing over a service's replicas.
//! - [`reason`]: the `wxmp-error-reason` metadata that carries an [`ErrorReason`] across gRPC.
//! - [`db`]: PostgreSQL or SQLite behind one pool type, with embedded migrations.
//! - [`secret`]: a string that never shows in `Debug` output or logs.
//! - [`settings`]: configuration blocks several binaries share (listen address, WeChat's API).
//! - [`session_cache`]: the bounded cache of `Authenticate` answers and its revocation feed.

pub mod announce;
pub mod balance;
pub mod db;
pub mod grpc;
pub mod hop;
pub mod reason;
pub mod secret;
pub mod session_cache;
pub mod settings;
pub mod shutdown;
pub mod telemetry;

pub use reason::ErrorReason;
pub use secret::Secret;
pub use shutdown::Shutdown;
