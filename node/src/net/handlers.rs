//! Answers what peers and clients send: validates gossip through the chain
//! task and reports Accept/Ignore/Reject (penalising senders of invalid
//! data), serves sync requests, and serves the peer RPC.
//!
//! Nothing a peer or client can send without paying makes this node train:
//! results are admitted on cheap checks, and the replay a fraud proof asks
//! for runs only when a block with proof of work carries it. The one
//! download done here is a posted job's dataset, after the transaction's
//! stateless checks (signature included) passed.
//!
//! Each message is handled in its own task so the swarm's event loop never
//! waits on the chain. Nothing here holds chain state; it only asks the
//! chain task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::PeerId;
use protocol::codec;
use protocol::rpc::{
    BlobName, NodeStatus, PredictionOut, RpcError, RpcErrorCode, RpcRequest, RpcResponse,
    MAX_BLOB_CHUNK_BYTES, MAX_PREDICT_ROWS, MAX_PUT_BLOB_BYTES,
};
use protocol::state::JobStatus;
use protocol::{Block, ChainParams, F32Bits, JobId, SignedTx, TxKind};
use tokio::sync::mpsc;

use super::network::{NetworkClient, Topic};
use super::wire::{SyncRequest, SyncResponse, MAX_BLOCKS_PER_REQUEST, MAX_LOCATOR, MAX_SYNC_FRAME};
use crate::blobs::{self, BlobError, BlobStore, UploadChunk, UploadProgress};
use crate::chain::{BlockOutcome, MAX_HEADERS};
use crate::mempool::MempoolError;
use crate::miner::MinerStats;
use crate::service::{BlockSource, ChainHandle, ServiceError};

/// Penalty for bytes that do not decode.
const MALFORMED_PENALTY: u32 = 50;
/// Penalty for a block that breaks a consensus rule.
const INVALID_BLOCK_PENALTY: u32 = 100;
/// Penalty for a transaction that could never be valid.
const INVALID_TX_PENALTY: u32 = 25;

/// What the handlers need.
#[derive(Clone)]
pub struct Context {
    /// The chain task.
    pub chain: ChainHandle,
    /// The network event loop.
    pub network: NetworkClient,
    /// The chain parameters.
    pub params: Arc<ChainParams>,
    /// Miner counters for status.
    pub miner: Arc<MinerStats>,
    /// Our peer id, for status.
    pub peer_id: PeerId,
    /// Wakes the sync driver when a peer is ahead of us.
    pub behind: mpsc::UnboundedSender<PeerId>,
    /// Datasets, weights and training states.
    pub blobs: BlobStore,
}

/// One line for a result arriving.
fn log_result_submitted(tx: &SignedTx, from: &str) {
    if let TxKind::SubmitResult { job, result, .. } = &tx.body.kind {
        tracing::info!(
            %job, worker = %tx.body.from, weights = %result.weights,
            metric = %result.metric, peer = from, "result submitted"
        );
    }
}

/// Makes sure the node can judge `tx` before it reaches the mempool. Only a
/// `PostJob` needs anything: its dataset, held or fetched from peers, so that
/// this node relays only jobs that can be trained. The fetch is a download,
/// so it runs after the transaction's stateless checks (size, fee, spec,
/// signature) have passed; the sender pays nothing for a refusal, so a
/// refusal must cost this node almost nothing. Results and fraud proofs
/// need nothing here: the mempool admits them on cheap checks alone.
pub async fn prepare_tx(ctx: &Context, tx: &SignedTx) -> Result<(), String> {
    let TxKind::PostJob { spec, .. } = &tx.body.kind else {
        return Ok(());
    };
    protocol::validation::check_tx_stateless(tx, &ctx.params).map_err(|e| e.to_string())?;
    let digest = spec.dataset.digest;
    blobs::fetch(&ctx.blobs, &ctx.network, BlobName::Content(digest))
        .await
        .map(|_| ())
        .map_err(|err| {
            format!(
                "job refused: this node does not hold dataset {digest} and cannot fetch it: {err}"
            )
        })
}

/// Work that a transaction earns once the mempool admitted it: a fraud
/// proof's data is fetched in the background (see
/// [`crate::jobs::prefetch_proof_data`] for why that is bounded).
fn after_admission(ctx: &Context, tx: SignedTx) {
    if matches!(tx.body.kind, TxKind::FraudProof { .. }) {
        let ctx = ctx.clone();
        tokio::spawn(async move {
            crate::jobs::prefetch_proof_data(&ctx.chain, &ctx.network, &ctx.blobs, &tx).await;
        });
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("peer_id", &self.peer_id)
            .finish_non_exhaustive()
    }
}

/// Validates one gossip message and reports the verdict.
pub async fn on_gossip(ctx: Context, topic: Topic, source: PeerId, id: MessageId, data: Vec<u8>) {
    let acceptance = match topic {
        Topic::Blocks => on_gossip_block(&ctx, source, &data).await,
        Topic::Txs => on_gossip_tx(&ctx, source, &data).await,
    };
    ctx.network.report(id, source, acceptance);
}

async fn on_gossip_block(ctx: &Context, source: PeerId, data: &[u8]) -> MessageAcceptance {
    let limit = ctx.params.max_block_bytes;
    let block: Block = match codec::decode_with_limit(data, limit) {
        Ok(block) => block,
        Err(err) => {
            tracing::warn!(peer = %source, reason = %err, "rejected gossip block: undecodable");
            ctx.network.penalise(
                source,
                MALFORMED_PENALTY,
                format!("undecodable block: {err}"),
            );
            return MessageAcceptance::Reject;
        }
    };
    // The chain checks proof of work first; data a block's fraud proofs
    // need is fetched only once the block parks for it (crate::jobs).
    match ctx
        .chain
        .submit_block(block, BlockSource::Peer(source.to_string()))
        .await
    {
        Ok(BlockOutcome::NewTip { .. } | BlockOutcome::SideChain { .. }) => {
            MessageAcceptance::Accept
        }
        Ok(BlockOutcome::AlreadyKnown) => MessageAcceptance::Ignore,
        Ok(BlockOutcome::Orphan { .. }) => {
            let _ = ctx.behind.send(source);
            MessageAcceptance::Ignore
        }
        Err(ServiceError::Chain(err)) if err.is_peer_fault() => {
            ctx.network.penalise(
                source,
                INVALID_BLOCK_PENALTY,
                format!("invalid block: {err}"),
            );
            MessageAcceptance::Reject
        }
        Err(_) => MessageAcceptance::Ignore,
    }
}

async fn on_gossip_tx(ctx: &Context, source: PeerId, data: &[u8]) -> MessageAcceptance {
    let tx: SignedTx = match codec::decode_with_limit(data, ctx.params.max_tx_bytes) {
        Ok(tx) => tx,
        Err(err) => {
            tracing::warn!(peer = %source, reason = %err, "rejected gossip tx: undecodable");
            ctx.network.penalise(
                source,
                MALFORMED_PENALTY,
                format!("undecodable transaction: {err}"),
            );
            return MessageAcceptance::Reject;
        }
    };
    log_result_submitted(&tx, &source.to_string());
    if let Err(reason) = prepare_tx(ctx, &tx).await {
        tracing::info!(peer = %source, %reason, "ignored tx");
        return MessageAcceptance::Ignore;
    }
    let admitted = tx.clone();
    match ctx.chain.submit_tx(tx).await {
        Ok(Ok(_)) => {
            after_admission(ctx, admitted);
            MessageAcceptance::Accept
        }
        Ok(Err(MempoolError::AlreadyKnown(_))) => MessageAcceptance::Ignore,
        Ok(Err(err)) if err.is_malicious() => {
            tracing::warn!(peer = %source, reason = %err, "rejected tx");
            ctx.network
                .penalise(source, INVALID_TX_PENALTY, err.to_string());
            MessageAcceptance::Reject
        }
        Ok(Err(err)) => {
            tracing::info!(peer = %source, reason = %err, "rejected tx");
            MessageAcceptance::Ignore
        }
        Err(_) => MessageAcceptance::Ignore,
    }
}

/// Answers one sync request.
pub async fn on_sync_request(ctx: Context, peer: PeerId, ticket: u64, data: Vec<u8>) {
    let response = match codec::decode_with_limit::<SyncRequest>(&data, MAX_SYNC_FRAME) {
        Err(err) => {
            ctx.network.penalise(
                peer,
                MALFORMED_PENALTY,
                format!("undecodable sync request: {err}"),
            );
            SyncResponse::Error(format!("undecodable request: {err}"))
        }
        Ok(SyncRequest::GetHeaders { locator }) if locator.len() > MAX_LOCATOR => {
            SyncResponse::Error(format!(
                "locator has {} hashes, expected at most {MAX_LOCATOR}",
                locator.len()
            ))
        }
        Ok(SyncRequest::GetBlocks { hashes }) if hashes.len() > MAX_BLOCKS_PER_REQUEST => {
            SyncResponse::Error(format!(
                "{} blocks asked, expected at most {MAX_BLOCKS_PER_REQUEST}",
                hashes.len()
            ))
        }
        Ok(SyncRequest::GetHeaders { locator }) => {
            match ctx.chain.headers_after(locator, MAX_HEADERS).await {
                Ok(headers) => SyncResponse::Headers(headers),
                Err(err) => SyncResponse::Error(err.to_string()),
            }
        }
        Ok(SyncRequest::GetBlocks { hashes }) => match ctx.chain.blocks(hashes).await {
            Ok(blocks) => SyncResponse::Blocks(blocks),
            Err(err) => SyncResponse::Error(err.to_string()),
        },
    };
    match codec::encode(&response) {
        Ok(bytes) => ctx.network.respond_sync(ticket, bytes),
        Err(err) => tracing::error!(reason = %err, "cannot encode sync response"),
    }
}

fn rpc_error(code: RpcErrorCode, message: impl Into<String>) -> RpcResponse {
    RpcResponse::Error(RpcError {
        code,
        message: message.into(),
    })
}

/// Answers one RPC request.
pub async fn on_rpc_request(ctx: Context, ticket: u64, data: Vec<u8>) {
    let response =
        match codec::decode_with_limit::<RpcRequest>(&data, protocol::rpc::MAX_RPC_MESSAGE_BYTES) {
            Ok(request) => answer_rpc(&ctx, request).await,
            Err(err) => rpc_error(
                RpcErrorCode::Malformed,
                format!("undecodable request: {err}"),
            ),
        };
    let bytes = codec::encode(&response).or_else(|err| {
        codec::encode(&rpc_error(
            RpcErrorCode::Internal,
            format!("cannot encode the response: {err}"),
        ))
    });
    match bytes {
        Ok(bytes) => ctx.network.respond_rpc(ticket, bytes),
        Err(err) => tracing::error!(reason = %err, "cannot encode rpc response"),
    }
}

async fn answer_rpc(ctx: &Context, request: RpcRequest) -> RpcResponse {
    let stopped = |err: ServiceError| rpc_error(RpcErrorCode::Internal, err.to_string());
    match request {
        RpcRequest::Status => {
            let tip = ctx.chain.tip();
            RpcResponse::Status(NodeStatus {
                chain: ctx.params.name.to_owned(),
                chain_id: ctx.params.chain_id,
                height: tip.height,
                tip: tip.tip,
                total_work: tip.total_work,
                state_root: tip.state_root,
                peers: u32::try_from(ctx.network.peer_count()).unwrap_or(u32::MAX),
                mempool: u32::try_from(tip.mempool).unwrap_or(u32::MAX),
                mining: ctx.miner.mining.load(Ordering::Relaxed),
                hashrate: ctx.miner.hashrate.load(Ordering::Relaxed),
                peer_id: ctx.peer_id.to_string(),
            })
        }
        RpcRequest::Block(which) => match ctx.chain.block(which).await {
            Ok(Some(info)) => RpcResponse::Block(info),
            Ok(None) => rpc_error(
                RpcErrorCode::NotFound,
                format!("no block {}", describe(which)),
            ),
            Err(err) => stopped(err),
        },
        RpcRequest::Balance(address) => match ctx.chain.balance(address).await {
            Ok(info) => RpcResponse::Balance(info),
            Err(err) => stopped(err),
        },
        RpcRequest::SubmitTx(tx) => {
            log_result_submitted(&tx, "rpc client");
            if let Err(reason) = prepare_tx(ctx, &tx).await {
                tracing::info!(%reason, peer = "rpc client", "rejected tx");
                return rpc_error(RpcErrorCode::TxRejected, reason);
            }
            let encoded = codec::encode(&tx);
            let admitted = tx.clone();
            match ctx.chain.submit_tx(tx).await {
                Ok(Ok(id)) => {
                    tracing::info!(tx = %id, "transaction accepted from rpc");
                    after_admission(ctx, admitted);
                    if let Ok(bytes) = encoded {
                        ctx.network.publish(Topic::Txs, bytes);
                    }
                    RpcResponse::TxAccepted(id)
                }
                Ok(Err(err)) => {
                    tracing::info!(reason = %err, peer = "rpc client", "rejected tx");
                    rpc_error(RpcErrorCode::TxRejected, err.to_string())
                }
                Err(err) => stopped(err),
            }
        }
        RpcRequest::Job(id) => match ctx.chain.job(id).await {
            Ok(Some(job)) => RpcResponse::Job(id, job),
            Ok(None) => rpc_error(RpcErrorCode::NotFound, format!("no job {id}")),
            Err(err) => stopped(err),
        },
        RpcRequest::Jobs { open_only } => match ctx.chain.jobs(open_only).await {
            Ok(jobs) => RpcResponse::Jobs(jobs),
            Err(err) => stopped(err),
        },
        RpcRequest::PutBlob { kind, bytes } => {
            if bytes.len() > MAX_PUT_BLOB_BYTES {
                return rpc_error(
                    RpcErrorCode::InvalidArgument,
                    format!(
                        "a blob of {} bytes in one request, expected at most {MAX_PUT_BLOB_BYTES}: upload it in chunks",
                        bytes.len()
                    ),
                );
            }
            let store = ctx.blobs.clone();
            match tokio::task::spawn_blocking(move || store.put_uploaded(kind, &bytes)).await {
                Ok(Ok(digest)) => {
                    tracing::info!(blob = %digest, ?kind, "blob stored");
                    RpcResponse::BlobStored(digest)
                }
                Ok(Err(err)) => blob_error(err),
                Err(err) => rpc_error(RpcErrorCode::Internal, err.to_string()),
            }
        }
        RpcRequest::PutBlobChunk {
            kind,
            digest,
            total,
            offset,
            bytes,
        } => {
            let store = ctx.blobs.clone();
            let chunk = UploadChunk {
                kind,
                digest,
                total,
                offset,
                bytes,
            };
            match tokio::task::spawn_blocking(move || store.put_uploaded_chunk(chunk)).await {
                Ok(Ok(UploadProgress::Received(received))) => {
                    RpcResponse::BlobChunkAccepted { digest, received }
                }
                Ok(Ok(UploadProgress::Stored(digest))) => {
                    tracing::info!(blob = %digest, ?kind, bytes = total, "blob stored");
                    RpcResponse::BlobStored(digest)
                }
                Ok(Err(err)) => blob_error(err),
                Err(err) => rpc_error(RpcErrorCode::Internal, err.to_string()),
            }
        }
        RpcRequest::GetBlob {
            name,
            offset,
            max_len,
        } => {
            if let Err(err) = blobs::fetch(&ctx.blobs, &ctx.network, name).await {
                return rpc_error(RpcErrorCode::NotFound, err.to_string());
            }
            let store = ctx.blobs.clone();
            let max_len = max_len.min(MAX_BLOB_CHUNK_BYTES);
            match tokio::task::spawn_blocking(move || store.chunk(name, offset, max_len)).await {
                Ok(Ok(Some(chunk))) => RpcResponse::BlobChunk(chunk),
                Ok(Ok(None)) => rpc_error(RpcErrorCode::NotFound, "blob not held"),
                Ok(Err(err)) => rpc_error(RpcErrorCode::Internal, err.to_string()),
                Err(err) => rpc_error(RpcErrorCode::Internal, err.to_string()),
            }
        }
        RpcRequest::Predict { job, rows } => predict(ctx, job, rows).await,
    }
}

/// An RPC error for a refused upload.
fn blob_error(err: BlobError) -> RpcResponse {
    let code = match err {
        BlobError::Quota(_) => RpcErrorCode::QuotaExceeded,
        BlobError::Database(_) => RpcErrorCode::Internal,
        _ => RpcErrorCode::InvalidArgument,
    };
    rpc_error(code, err.to_string())
}

async fn predict(ctx: &Context, job: JobId, rows: Vec<Vec<F32Bits>>) -> RpcResponse {
    if rows.is_empty() || rows.len() > MAX_PREDICT_ROWS {
        return rpc_error(
            RpcErrorCode::InvalidArgument,
            format!("{} input rows, expected 1..={MAX_PREDICT_ROWS}", rows.len()),
        );
    }
    let record = match ctx.chain.job(job).await {
        Ok(Some(record)) => record,
        Ok(None) => return rpc_error(RpcErrorCode::NotFound, format!("no job {job}")),
        Err(err) => return rpc_error(RpcErrorCode::Internal, err.to_string()),
    };
    // A pending result predicts too: its weights are what the worker bonded.
    let result = match record.status {
        JobStatus::Fulfilled { result, .. } | JobStatus::Pending { result, .. } => result,
        other => {
            return rpc_error(
                RpcErrorCode::InvalidArgument,
                format!("job {job} is {other:?}, expected pending or fulfilled"),
            )
        }
    };
    let features = usize::try_from(record.spec.dataset.features).unwrap_or(usize::MAX);
    if let Some((index, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != features) {
        return rpc_error(
            RpcErrorCode::InvalidArgument,
            format!(
                "input row {index} has {} values, expected {features} (the dataset's feature count)",
                row.len()
            ),
        );
    }
    let name = BlobName::Weights(result.weights);
    let file = match blobs::fetch(&ctx.blobs, &ctx.network, name).await {
        Ok(file) => file,
        Err(err) => {
            return rpc_error(
                RpcErrorCode::NotFound,
                format!("weights of job {job} are not available: {err}"),
            )
        }
    };
    let store = ctx.blobs.clone();
    let answer = tokio::task::spawn_blocking(move || -> Result<Vec<PredictionOut>, String> {
        let bytes = store
            .get(&file)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("weights file {file} vanished"))?;
        let model = trainer::weights::model_from_safetensors(&bytes).map_err(|e| e.to_string())?;
        let inputs: Vec<f32> = rows.iter().flatten().map(|v| v.to_f32()).collect();
        let predictions = trainer::predict(&model, &inputs).map_err(|e| e.to_string())?;
        Ok(predictions
            .into_iter()
            .map(|p| match p {
                trainer::Prediction::Class {
                    class,
                    probabilities,
                } => PredictionOut::Class {
                    class,
                    probabilities: probabilities.into_iter().map(F32Bits::from_f32).collect(),
                },
                trainer::Prediction::Value { value } => {
                    PredictionOut::Value(F32Bits::from_f32(value))
                }
            })
            .collect())
    })
    .await;
    match answer {
        Ok(Ok(predictions)) => RpcResponse::Predictions(predictions),
        Ok(Err(reason)) => rpc_error(RpcErrorCode::InvalidArgument, reason),
        Err(err) => rpc_error(RpcErrorCode::Internal, err.to_string()),
    }
}

fn describe(which: protocol::rpc::BlockRef) -> String {
    match which {
        protocol::rpc::BlockRef::Height(height) => format!("at height {height} on the main chain"),
        protocol::rpc::BlockRef::Hash(hash) => format!("with hash {hash}"),
    }
}
