//! The gRPC contracts of wxmp, generated from `proto/` at build time.
//!
//! Each package is versioned (`wxmp.auth.v1`, ...) so a breaking change gets a
//! new module instead of surprising a deployed caller.

#![allow(clippy::all, missing_docs)]

/// Shared error vocabulary (`wxmp.common.v1`).
pub mod common {
    pub mod v1 {
        tonic::include_proto!("wxmp.common.v1");
    }
}

/// auth-service (`wxmp.auth.v1`).
pub mod auth {
    pub mod v1 {
        tonic::include_proto!("wxmp.auth.v1");
    }
}

/// user-service (`wxmp.user.v1`).
pub mod user {
    pub mod v1 {
        tonic::include_proto!("wxmp.user.v1");
    }
}

/// pay-service (`wxmp.pay.v1`).
pub mod pay {
    pub mod v1 {
        tonic::include_proto!("wxmp.pay.v1");
    }
}

/// The encoded `FileDescriptorSet` of every contract, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/wxmp_descriptor.bin"));
