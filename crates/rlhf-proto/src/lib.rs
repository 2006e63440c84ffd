//! rlhf-proto: the wire format. Generated tonic/prost code for `proto/rlhf/v1` plus the
//! conversions between wire messages and `rlhf-core` types.
//!
//! **Architecture invariant:** only this crate knows the wire format; services convert at
//! their boundary with the helpers here.

#![allow(missing_docs)]

/// Generated code of package `rlhf.v1`.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, clippy::unwrap_used)]
    tonic::include_proto!("rlhf.v1");
}

pub mod certs;
mod convert;
pub mod security;
pub mod trace;
pub mod weights;

pub use convert::*;

/// Default limit on a decoded or encoded gRPC message (bytes); weights travel in chunks below it.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Size of a weight chunk (bytes).
pub const WEIGHT_CHUNK_BYTES: usize = 2 * 1024 * 1024;
