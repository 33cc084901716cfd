//! Test harness for marty-resilience: a commandable in-process upstream, a launcher for a
//! real Envoy loading the filter, and blocking clients (HTTP/1.1, h2c, tonic gRPC).
//!
//! Tests are plain synchronous `#[test]` functions; every async piece owns its runtime.

pub mod bootstrap_edit;
pub mod client;
pub mod demo;
pub mod envoy;
pub mod file_server;
pub mod upstream;

pub use client::{
    concurrently, grpc_unary, http1, http1_abort_after_headers, http2, GrpcReply, RawClient,
    Response,
};
pub use envoy::{Envoy, EnvoyConfig, FailurePolicy, RouteSpec, StartError};
pub use upstream::{RecordedRequest, Upstream};

use std::path::PathBuf;

/// The repository root (this crate lives in `<root>/integration`).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest
        .parent()
        .expect("integration crate has a parent directory")
        .to_path_buf()
}
