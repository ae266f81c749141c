//! The `wxmp` command line, as a library so the end-to-end tests start the same stack.
//!
//! - [`stack`]: every service (and the WeChat sandbox) in one process.
//! - [`demo`]: a scripted mini program that logs in, sends its profile and pays
//!   ([`demo_virtual`]: its purchase through virtual payment).
//! - [`events`]: `wxmp events`, pay-service's order event stream and dead letters.
//! - [`operator`]: `wxmp refund` / `wxmp order` against a running pay-service.

pub mod demo;
pub mod demo_virtual;
pub mod events;
pub mod operator;
pub mod stack;
