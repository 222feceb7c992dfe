//! The peer-RPC client: dials a node, sends one request, waits for the
//! answer. Used by the CLI (`rpc`, `healthcheck`) and by tests.
//!
//! It is the trainer's client, re-exported: the node depends on the trainer,
//! and one client keeps the two CLIs speaking the same framing.

pub use trainer::rpc_client::{call, call_bytes, RpcClientError};
