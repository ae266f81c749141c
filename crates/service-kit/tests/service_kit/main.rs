//! service-kit's integration tests, one binary: client-side balancing and drain, the
//! database layer on both back ends, mutual TLS on internal gRPC.

mod balance;
mod db;
mod mtls;
