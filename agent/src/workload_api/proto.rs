//! The Workload API's messages, server and client, generated at build time
//! from `agent/proto/workload.proto` (see `agent/build.rs`).

// Generated code: the client half is used by the tests only, and its style
// is prost's and tonic's rather than ours.
#![allow(dead_code, reason = "generated; the client is only used by tests")]
#![allow(clippy::all, clippy::pedantic, reason = "generated code")]

// The specification's proto has no package, so prost names the file "_".
tonic::include_proto!("_");
