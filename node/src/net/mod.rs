//! Peer-to-peer networking: the swarm's event loop, the wire formats, the
//! handlers for gossip, sync and RPC requests, and the sync driver.
//!
//! Nothing in here owns chain state; everything reaches the chain through
//! [`crate::service::ChainHandle`].

pub mod handlers;
pub mod network;
pub mod sync;
pub mod wire;
