//! Peer-to-peer networking: the swarm's event loop, the wire formats, the
//! handlers for gossip and sync requests, the sync driver, blob fetching
//! and serving, and peer management (penalties that decay, bans that expire
//! and persist).
//!
//! Nothing in here owns chain state; everything reaches the chain through
//! [`crate::chain_task::ChainHandle`].

pub mod blob_fetch;
pub mod client;
pub mod handlers;
pub mod network;
pub mod peers;
pub mod swarm;
pub mod sync;
pub mod wire;
