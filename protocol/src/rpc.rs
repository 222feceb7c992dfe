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

/// The size of the chunks a blob is stored, served, fetched and uploaded
/// in: 1 MiB. Every chunk of a blob has this size but the last, which holds
/// the rest (a blob of 0 bytes has no chunk). One chunk and its envelope fit
/// a peer's blob frame and an RPC message with room to spare.
pub const BLOB_CHUNK_BYTES: u32 = 1024 * 1024;

/// The largest dataset or training-state blob a node stores: 160 MiB.
///
/// A training state (`trainer/src/session.rs`) holds 12 bytes a parameter
/// with Adam (the weights and two moments; SGD needs 8), 4 bytes a training
/// row (the epoch's row order), 4 bytes a batch of the epoch (its losses so
/// far) and a header of under 100 bytes. The largest model the job limits
/// of every preset allow (4096 features, 8 hidden layers of 1024, 1000
/// classes) has 12,567,528 parameters, and it fits the cost bounds easily:
/// one epoch over a thousand rows in batches of 64 costs 3.2·10^10 units
/// against `max_cost` 2·10^12, a segment of it 5.1·10^9 against
/// `max_segment_cost` 3.2·10^10 (node/src/blobs.rs checks this). Its
/// states are 150,810,336 bytes of tensors plus at most 1.6 MB for 200,000
/// rows: 152.4 MB (145.4 MiB). A result whose states nodes refused to store
/// could never be challenged, so the cap covers the largest state with a
/// tenth to spare. Datasets share it (a larger dataset is refused
/// by the nodes asked to admit its job).
pub const MAX_BLOB_BYTES: usize = 160 * 1024 * 1024;

/// The largest weights file a node stores: 3 MiB. Weights are fetched by
/// tensor digest and parsed whole to check that digest, and are only ever
/// needed to serve predictions, never to judge a result.
pub const MAX_WEIGHTS_BYTES: usize = 3 * 1024 * 1024;

/// The largest blob one [`RpcRequest::PutBlob`] carries: 3 MiB, below
/// [`MAX_RPC_MESSAGE_BYTES`] with room for the message around it. Larger
/// blobs are uploaded chunk by chunk with [`RpcRequest::PutBlobChunk`].
pub const MAX_PUT_BLOB_BYTES: usize = 3 * 1024 * 1024;

/// The largest slice of a blob returned by one [`RpcRequest::GetBlob`].
pub const MAX_BLOB_CHUNK_BYTES: u32 = BLOB_CHUNK_BYTES;

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

impl BlobKind {
    /// The largest blob of this kind a node stores.
    pub fn max_bytes(self) -> u64 {
        let max = match self {
            Self::Dataset | Self::State => MAX_BLOB_BYTES,
            Self::Weights => MAX_WEIGHTS_BYTES,
        };
        u64::try_from(max).unwrap_or(u64::MAX)
    }
}

/// How many chunks of [`BLOB_CHUNK_BYTES`] a blob of `total` bytes has.
pub fn chunk_count(total: u64) -> u64 {
    total.div_ceil(u64::from(BLOB_CHUNK_BYTES))
}

/// The length of chunk `index` of a blob of `total` bytes; `None` past its
/// last chunk.
pub fn chunk_len(total: u64, index: u64) -> Option<u64> {
    let start = index.checked_mul(u64::from(BLOB_CHUNK_BYTES))?;
    let rest = total.checked_sub(start).filter(|rest| *rest > 0)?;
    Some(rest.min(u64::from(BLOB_CHUNK_BYTES)))
}

/// How a blob is named when it is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobName {
    /// By the SHA-256 of its bytes.
    Content(Digest),
    /// A weights file by the tensor digest of the weights it holds.
    Weights(Digest),
}

/// What a blob is made of: its digest, kind, length and the SHA-256 of
/// each of its chunks. A node keeps one for every blob it holds and sends it
/// before any chunk, so that a fetcher can check each chunk as it arrives.
/// Only the digest is ever trusted: the chunk hashes come from whoever sent
/// the manifest, and the whole blob must still hash to the digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobManifest {
    /// SHA-256 of the whole blob.
    pub digest: Digest,
    /// What it holds.
    pub kind: BlobKind,
    /// Its length in bytes.
    pub total: u64,
    /// SHA-256 of each chunk of [`BLOB_CHUNK_BYTES`], in order.
    pub chunks: Vec<Digest>,
}

/// Why a manifest cannot describe a blob this node would store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Longer than its kind's cap.
    #[error("a {kind:?} blob of {total} bytes, expected at most {max}")]
    TooLarge {
        /// The kind.
        kind: BlobKind,
        /// Its announced length.
        total: u64,
        /// The cap for the kind.
        max: u64,
    },
    /// The chunk list does not match the length.
    #[error("{got} chunk hashes for {total} bytes, expected {expected}")]
    ChunkCount {
        /// Hashes listed.
        got: u64,
        /// Its announced length.
        total: u64,
        /// Chunks a blob that long has.
        expected: u64,
    },
}

impl BlobManifest {
    /// Checks the length against the kind's cap and the chunk list against
    /// the length.
    pub fn check(&self) -> Result<(), ManifestError> {
        let max = self.kind.max_bytes();
        if self.total > max {
            return Err(ManifestError::TooLarge {
                kind: self.kind,
                total: self.total,
                max,
            });
        }
        let got = u64::try_from(self.chunks.len()).unwrap_or(u64::MAX);
        let expected = chunk_count(self.total);
        if got != expected {
            return Err(ManifestError::ChunkCount {
                got,
                total: self.total,
                expected,
            });
        }
        Ok(())
    }
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
        /// The whole blob, at most [`MAX_PUT_BLOB_BYTES`].
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
    /// Store one chunk of a blob too large for [`RpcRequest::PutBlob`].
    /// Chunks go in order, each exactly chunk `offset / BLOB_CHUNK_BYTES` of
    /// the blob; the node answers [`RpcResponse::BlobChunkAccepted`] until the
    /// last, then checks the whole blob against `digest` and `kind` and
    /// answers [`RpcResponse::BlobStored`]. It answers `BlobStored` at once
    /// when it already holds the blob, so the client can stop early. An
    /// upload left idle is dropped by the node.
    PutBlobChunk {
        /// What the blob holds.
        kind: BlobKind,
        /// SHA-256 of the whole blob.
        digest: Digest,
        /// Length of the whole blob, at most the kind's cap.
        total: u64,
        /// Where this chunk starts: a multiple of [`BLOB_CHUNK_BYTES`].
        offset: u64,
        /// The chunk: [`BLOB_CHUNK_BYTES`], or the rest of the blob for the
        /// last one.
        bytes: Vec<u8>,
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
    /// An upload was refused by one of the node's upload quotas; the
    /// message names the limit. Retrying later may succeed.
    QuotaExceeded,
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
    /// Answers [`RpcRequest::PutBlob`], and the last
    /// [`RpcRequest::PutBlobChunk`]: the blob is stored under this digest.
    BlobStored(Digest),
    /// Answers [`RpcRequest::GetBlob`].
    BlobChunk(BlobChunk),
    /// Answers [`RpcRequest::Predict`]: one prediction per input row.
    Predictions(Vec<PredictionOut>),
    /// Any request that failed.
    Error(RpcError),
    /// Answers a [`RpcRequest::PutBlobChunk`] before the last: the chunk is
    /// kept and the next one should start at `received`.
    BlobChunkAccepted {
        /// The blob being uploaded.
        digest: Digest,
        /// Bytes of it the node holds so far.
        received: u64,
    },
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
    fn a_whole_blob_and_a_chunk_fit_in_one_put_request() {
        let requests = [
            RpcRequest::PutBlob {
                kind: BlobKind::Dataset,
                bytes: vec![0; MAX_PUT_BLOB_BYTES],
            },
            RpcRequest::PutBlobChunk {
                kind: BlobKind::State,
                digest: Digest([1; 32]),
                total: u64::try_from(MAX_BLOB_BYTES).unwrap(),
                offset: 0,
                bytes: vec![0; BLOB_CHUNK_BYTES as usize],
            },
        ];
        for request in requests {
            let bytes = codec::encode(&request).unwrap();
            assert!(
                bytes.len() <= MAX_RPC_MESSAGE_BYTES,
                "{} bytes",
                bytes.len()
            );
            assert_eq!(codec::decode::<RpcRequest>(&bytes).unwrap(), request);
        }
        let accepted = RpcResponse::BlobChunkAccepted {
            digest: Digest([2; 32]),
            received: 3,
        };
        let bytes = codec::encode(&accepted).unwrap();
        assert_eq!(codec::decode::<RpcResponse>(&bytes).unwrap(), accepted);
    }

    #[test]
    fn chunks_cover_a_blob_exactly() {
        let chunk = u64::from(BLOB_CHUNK_BYTES);
        for (total, count, last) in [
            (0, 0, None),
            (1, 1, Some(1)),
            (chunk - 1, 1, Some(chunk - 1)),
            (chunk, 1, Some(chunk)),
            (chunk + 1, 2, Some(1)),
            (3 * chunk, 3, Some(chunk)),
        ] {
            assert_eq!(chunk_count(total), count, "{total} bytes");
            let lens: Vec<u64> = (0..count).filter_map(|i| chunk_len(total, i)).collect();
            assert_eq!(lens.iter().sum::<u64>(), total, "{total} bytes");
            assert_eq!(lens.last().copied(), last, "{total} bytes");
            assert_eq!(chunk_len(total, count), None, "{total} bytes");
        }
        assert_eq!(chunk_len(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn a_manifest_must_fit_its_kind_and_its_length() {
        let chunk = u64::from(BLOB_CHUNK_BYTES);
        let manifest = |kind, total, chunks: usize| BlobManifest {
            digest: Digest([1; 32]),
            kind,
            total,
            chunks: vec![Digest([2; 32]); chunks],
        };
        assert_eq!(manifest(BlobKind::State, 0, 0).check(), Ok(()));
        assert_eq!(manifest(BlobKind::State, chunk + 1, 2).check(), Ok(()));
        assert_eq!(
            manifest(BlobKind::State, chunk + 1, 1).check(),
            Err(ManifestError::ChunkCount {
                got: 1,
                total: chunk + 1,
                expected: 2
            })
        );
        let max = BlobKind::State.max_bytes();
        assert_eq!(
            manifest(BlobKind::State, max + 1, 161).check(),
            Err(ManifestError::TooLarge {
                kind: BlobKind::State,
                total: max + 1,
                max
            })
        );
        let weights = BlobKind::Weights.max_bytes();
        assert!(weights < max);
        assert!(matches!(
            manifest(BlobKind::Weights, weights + 1, 4).check(),
            Err(ManifestError::TooLarge { .. })
        ));
    }
}
