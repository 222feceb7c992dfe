//! The peer RPC: the request and response messages that clients (the node
//! CLI, the trainer) exchange with a node over libp2p request-response, and
//! the protocol name they negotiate.
//!
//! Messages are plain serde values encoded with the one canonical codec
//! ([`crate::codec`]) and framed by the transport with a length prefix of at
//! most [`MAX_RPC_MESSAGE_BYTES`]. This module only defines values: it must
//! never open sockets or reach into node state.

use serde::{Deserialize, Serialize};

use crate::block::Block;
use crate::pow::Work;
use crate::state::{Account, JobRecord};
use crate::tx::SignedTx;
use crate::types::{Address, BlockHash, Height, JobId, StateRoot, TxId};

/// The libp2p protocol name of the peer RPC; the version is part of it.
pub const RPC_PROTOCOL: &str = "/gradchain/rpc/1";

/// The largest RPC request or response frame, in bytes.
pub const MAX_RPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// How a block is named in a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlockRef {
    /// The main-chain block at this height.
    Height(Height),
    /// The block with this hash, on any branch the node stores.
    Hash(BlockHash),
}

/// A request from a client to a node.
#[allow(clippy::large_enum_variant)] // one request per stream; boxing buys nothing
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcRequest {
    /// The node's tip, peers, mempool and miner.
    Status,
    /// One block.
    Block(BlockRef),
    /// An account's balance and nonces.
    Balance(Address),
    /// Submit a signed transaction to the mempool; it is gossiped once accepted.
    SubmitTx(SignedTx),
    /// One job by id.
    Job(JobId),
    /// All jobs, or only the open ones.
    Jobs {
        /// Only jobs whose status is open.
        open_only: bool,
    },
}

/// The node's view of itself, answering [`RpcRequest::Status`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The chain preset name, such as `devnet`.
    pub chain: String,
    /// The chain id that transactions must sign over.
    pub chain_id: u32,
    /// Height of the tip.
    pub height: Height,
    /// Hash of the tip.
    pub tip: BlockHash,
    /// Cumulative work of the main chain.
    pub total_work: Work,
    /// State root at the tip.
    pub state_root: StateRoot,
    /// Connected peers.
    pub peers: u32,
    /// Transactions in the mempool.
    pub mempool: u32,
    /// Whether the node is mining.
    pub mining: bool,
    /// Hashes per second over the last measurement window; 0 when idle.
    pub hashrate: u64,
    /// The node's libp2p peer id, in its usual base58 text form.
    pub peer_id: String,
}

/// A block with where it sits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockInfo {
    /// Its height.
    pub height: Height,
    /// Its hash.
    pub hash: BlockHash,
    /// Whether it is on the node's main chain.
    pub main_chain: bool,
    /// The block itself.
    pub block: Block,
}

/// An account as the node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalanceInfo {
    /// The address asked about.
    pub address: Address,
    /// Balance and nonce at the tip.
    pub account: Account,
    /// The nonce the next new transaction from this address should carry,
    /// counting the address's transactions waiting in the mempool.
    pub next_nonce: u64,
}

/// Why a request failed, as a stable code clients can match on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcErrorCode {
    /// The request bytes could not be decoded.
    Malformed,
    /// The request was understood but its arguments are invalid.
    InvalidArgument,
    /// The block, job or other item asked for does not exist.
    NotFound,
    /// The transaction was refused by validation or the mempool.
    TxRejected,
    /// The node failed internally or is shutting down.
    Internal,
}

/// An error reply: a code and a human-readable message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcError {
    /// What kind of failure.
    pub code: RpcErrorCode,
    /// What was wrong, with the value and what was expected.
    pub message: String,
}

/// A node's reply to an [`RpcRequest`].
#[allow(clippy::large_enum_variant)] // one response per stream; boxing buys nothing
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RpcResponse {
    /// Answers [`RpcRequest::Status`].
    Status(NodeStatus),
    /// Answers [`RpcRequest::Block`].
    Block(BlockInfo),
    /// Answers [`RpcRequest::Balance`].
    Balance(BalanceInfo),
    /// Answers [`RpcRequest::SubmitTx`]: the transaction entered the mempool.
    TxAccepted(TxId),
    /// Answers [`RpcRequest::Job`].
    Job(JobId, JobRecord),
    /// Answers [`RpcRequest::Jobs`].
    Jobs(Vec<(JobId, JobRecord)>),
    /// Any request that failed.
    Error(RpcError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec;

    #[test]
    fn requests_and_errors_round_trip_through_the_codec() {
        let requests = [
            RpcRequest::Status,
            RpcRequest::Block(BlockRef::Height(Height(7))),
            RpcRequest::Balance(Address([3; 32])),
            RpcRequest::Jobs { open_only: true },
        ];
        for request in requests {
            let bytes = codec::encode(&request).unwrap();
            assert_eq!(codec::decode::<RpcRequest>(&bytes).unwrap(), request);
        }
        let error = RpcResponse::Error(RpcError {
            code: RpcErrorCode::NotFound,
            message: "unknown block".into(),
        });
        let bytes = codec::encode(&error).unwrap();
        assert_eq!(codec::decode::<RpcResponse>(&bytes).unwrap(), error);
    }
}
