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
use crate::types::{Address, BlockHash, Digest, F32Bits, Height, JobId, StateRoot, TxId};

/// The libp2p protocol name of the peer RPC; the version is part of it.
pub const RPC_PROTOCOL: &str = "/gradchain/rpc/1";

/// The largest RPC request or response frame, in bytes.
pub const MAX_RPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The largest blob a node stores (datasets and weights files), in bytes.
/// A [`RpcRequest::PutBlob`] carries the whole blob, so this stays below
/// [`MAX_RPC_MESSAGE_BYTES`] with room for the message around it.
pub const MAX_BLOB_BYTES: usize = 3 * 1024 * 1024;

/// The largest slice of a blob returned by one [`RpcRequest::GetBlob`].
pub const MAX_BLOB_CHUNK_BYTES: u32 = 1024 * 1024;

/// Most input rows in one [`RpcRequest::Predict`].
pub const MAX_PREDICT_ROWS: usize = 1024;

/// What a blob holds, which decides how the node checks and indexes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobKind {
    /// A canonical dataset blob; its SHA-256 is the dataset digest of a job.
    Dataset,
    /// A safetensors weights file. It is stored under its SHA-256 and also
    /// indexed by the trainer's tensor digest (the `weights` digest of a
    /// job result), which the node recomputes from the bytes.
    Weights,
    /// A training state `S_j` of a pending result; its SHA-256 is the
    /// state digest in segment leaf `j`. Kept until the result settles.
    State,
}

/// How a blob is named when it is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobName {
    /// By the SHA-256 of its bytes.
    Content(Digest),
    /// A weights file by the tensor digest of the weights it holds.
    Weights(Digest),
}

/// One slice of a blob, answering [`RpcRequest::GetBlob`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChunk {
    /// SHA-256 of the whole blob.
    pub digest: Digest,
    /// Length of the whole blob in bytes.
    pub total: u64,
    /// Where this slice starts in the blob.
    pub offset: u64,
    /// The bytes, at most [`MAX_BLOB_CHUNK_BYTES`].
    pub bytes: Vec<u8>,
}

/// One prediction, answering a row of [`RpcRequest::Predict`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PredictionOut {
    /// A classifier's most probable class and every class's probability.
    Class {
        /// The predicted class.
        class: u32,
        /// Probabilities, by class.
        probabilities: Vec<F32Bits>,
    },
    /// A regression value.
    Value(F32Bits),
}

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
    /// Store a blob; the node checks it fits `kind` and answers its digest.
    PutBlob {
        /// What it holds.
        kind: BlobKind,
        /// The whole blob, at most [`MAX_BLOB_BYTES`].
        bytes: Vec<u8>,
    },
    /// A slice of a blob the node holds (it fetches from peers first if it
    /// does not).
    GetBlob {
        /// Which blob.
        name: BlobName,
        /// First byte wanted.
        offset: u64,
        /// Most bytes wanted; the node caps it at [`MAX_BLOB_CHUNK_BYTES`].
        max_len: u32,
    },
    /// Predictions of a fulfilled job's model for input rows.
    Predict {
        /// The job whose weights answer.
        job: JobId,
        /// Raw (unstandardized) input rows, each as wide as the dataset's
        /// features; at most [`MAX_PREDICT_ROWS`].
        rows: Vec<Vec<F32Bits>>,
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
    /// Answers [`RpcRequest::PutBlob`]: the blob is stored under this digest.
    BlobStored(Digest),
    /// Answers [`RpcRequest::GetBlob`].
    BlobChunk(BlobChunk),
    /// Answers [`RpcRequest::Predict`]: one prediction per input row.
    Predictions(Vec<PredictionOut>),
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
            RpcRequest::PutBlob {
                kind: BlobKind::Dataset,
                bytes: vec![1, 2, 3],
            },
            RpcRequest::GetBlob {
                name: BlobName::Weights(Digest([4; 32])),
                offset: 5,
                max_len: MAX_BLOB_CHUNK_BYTES,
            },
            RpcRequest::Predict {
                job: JobId([6; 32]),
                rows: vec![vec![F32Bits::from_f32(0.5); 3]],
            },
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
        let answers = [
            RpcResponse::BlobStored(Digest([7; 32])),
            RpcResponse::BlobChunk(BlobChunk {
                digest: Digest([8; 32]),
                total: 10,
                offset: 2,
                bytes: vec![9; 8],
            }),
            RpcResponse::Predictions(vec![
                PredictionOut::Class {
                    class: 1,
                    probabilities: vec![F32Bits::from_f32(0.25), F32Bits::from_f32(0.75)],
                },
                PredictionOut::Value(F32Bits::from_f32(-1.5)),
            ]),
        ];
        for answer in answers {
            let bytes = codec::encode(&answer).unwrap();
            assert_eq!(codec::decode::<RpcResponse>(&bytes).unwrap(), answer);
        }
    }

    #[test]
    fn a_whole_blob_fits_in_one_put_request() {
        let request = RpcRequest::PutBlob {
            kind: BlobKind::Dataset,
            bytes: vec![0; MAX_BLOB_BYTES],
        };
        let bytes = codec::encode(&request).unwrap();
        assert!(
            bytes.len() <= MAX_RPC_MESSAGE_BYTES,
            "{} bytes",
            bytes.len()
        );
    }
}
