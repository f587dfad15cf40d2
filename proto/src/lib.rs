//! The Shoal gRPC protocol, generated from `proto/shoal/v1/*.proto` at build time.

#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("shoal.v1");
}

pub mod codec;

pub use v1::*;
