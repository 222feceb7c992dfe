//! Answers what peers and clients send: validates gossip through the chain
//! task and reports Accept/Ignore/Reject (penalising senders of invalid
//! data), serves sync requests, and serves the peer RPC.
//!
//! Each message is handled in its own task so the swarm's event loop never
//! waits on the chain. Nothing here holds chain state; it only asks the
//! chain task.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::PeerId;
use protocol::codec;
use protocol::rpc::{NodeStatus, RpcError, RpcErrorCode, RpcRequest, RpcResponse};
use protocol::{Block, ChainParams, SignedTx};
use tokio::sync::mpsc;

use super::network::{NetworkClient, Topic};
use super::wire::{SyncRequest, SyncResponse, MAX_BLOCKS_PER_REQUEST, MAX_LOCATOR, MAX_SYNC_FRAME};
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
    match ctx.chain.submit_tx(tx).await {
        Ok(Ok(_)) => MessageAcceptance::Accept,
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
            let encoded = codec::encode(&tx);
            match ctx.chain.submit_tx(tx).await {
                Ok(Ok(id)) => {
                    tracing::info!(tx = %id, "transaction accepted from rpc");
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
    }
}

fn describe(which: protocol::rpc::BlockRef) -> String {
    match which {
        protocol::rpc::BlockRef::Height(height) => format!("at height {height} on the main chain"),
        protocol::rpc::BlockRef::Hash(hash) => format!("with hash {hash}"),
    }
}
