//! The gradchain node: the daemon users run several of, and the library its
//! binary and the integration tests are built on.
//!
//! One chain task ([`chain_task`]) owns the chain, mempool and store
//! ([`chain`], [`mempool`], [`store`]); one event loop ([`net::network`])
//! owns the libp2p swarm; the miner ([`miner`]) hashes on OS threads; the
//! HTTP API ([`http`]) serves clients, the dashboard and `/metrics`, and
//! [`observe`] carries events and metrics out of all of them. They
//! talk through command enums with oneshot replies and watch channels, never
//! through shared locks on chain state. Consensus rules come from the
//! `protocol` crate and are never reimplemented here; this crate must never
//! accept a block or transaction that `protocol` would refuse.

pub mod bench;
pub mod blobs;
pub mod chain;
pub mod chain_task;
pub mod cli;
pub mod http;
pub mod jobs;
pub mod keys;
pub mod mempool;
pub mod metrics;
pub mod miner;
pub mod net;
pub mod node;
pub mod nonce_scan;
pub mod observe;
pub mod signatures;
pub mod simnet;
pub mod store;
pub mod testkit;
pub mod verifier;

pub use node::{run, start, NodeConfig, NodeError, RunningNode};
