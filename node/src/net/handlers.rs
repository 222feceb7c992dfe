//! Answers what peers and clients send: validates gossip through the chain
//! task and reports Accept/Ignore/Reject (penalising senders of invalid
//! data), serves sync requests, and takes clients' transactions (from the
//! HTTP API) down the same path as gossip.
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

use std::sync::Arc;

use libp2p::gossipsub::{MessageAcceptance, MessageId};
use libp2p::PeerId;
use protocol::codec;
use protocol::{Block, ChainParams, SignedTx, TxId, TxKind};
use tokio::sync::{mpsc, oneshot};

use super::network::{NetworkClient, Topic};
use super::wire::{SyncRequest, SyncResponse, MAX_BLOCKS_PER_REQUEST, MAX_LOCATOR, MAX_SYNC_FRAME};
use crate::blobs::BlobStore;
use crate::chain::{BlockOutcome, Relay, MAX_HEADERS};
use crate::chain_task::{BlockSource, ChainHandle, ServiceError};
use crate::mempool::MempoolError;
use crate::miner::MinerStats;
use crate::observe::Observer;

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
    /// Forward blocks before their full validation where
    /// [`Relay::Early`] allows.
    pub early_relay: bool,
    /// Events and metrics.
    pub observer: Arc<Observer>,
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

/// Validates one gossip message and reports the verdict (a block may have
/// it reported before its validation ends: [`Relay::Early`]).
pub async fn on_gossip(ctx: Context, topic: Topic, source: PeerId, id: MessageId, data: Vec<u8>) {
    match topic {
        Topic::Blocks => on_gossip_block(&ctx, source, id, &data).await,
        Topic::Txs => {
            let acceptance = on_gossip_tx(&ctx, source, &data).await;
            ctx.network.report(id, source, acceptance);
        }
    }
}

/// A gossiped block. Gossipsub forwards a message once it is reported
/// `Accept`, so that report is the relay: for most blocks it follows the
/// full validation, and only a block that becomes the tip is relayed (a
/// flood of cheap siblings goes no further than one node). A block that
/// [`crate::chain::Chain::relay_verdict`] clears is reported `Accept`
/// before its validation, which then runs as for any block; if it fails,
/// nobody is blamed, since the sender may have relayed it the same way.
async fn on_gossip_block(ctx: &Context, source: PeerId, id: MessageId, data: &[u8]) {
    if let Some(acceptance) = gossip_block(ctx, source, id.clone(), data).await {
        ctx.network.report(id, source, acceptance);
    }
}

/// The verdict on a gossiped block, or `None` when it was already reported
/// (relayed early).
async fn gossip_block(
    ctx: &Context,
    source: PeerId,
    id: MessageId,
    data: &[u8],
) -> Option<MessageAcceptance> {
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
            return Some(MessageAcceptance::Reject);
        }
    };
    let from = BlockSource::Peer(source.to_string());
    // The chain checks proof of work first; data a block's fraud proofs
    // need is fetched only once the block parks for it (crate::jobs).
    let result = if ctx.early_relay {
        let (relay, verdict) = oneshot::channel();
        let chain = ctx.chain.clone();
        let validation =
            tokio::spawn(async move { chain.submit_gossip_block(block, from, relay).await });
        // The verdict comes before the validation; a stopped chain task
        // drops it unsent.
        if verdict.await == Ok(Relay::Early) {
            ctx.network.report(id, source, MessageAcceptance::Accept);
            let metrics = &ctx.observer.metrics;
            metrics.blocks_relayed_early.inc();
            // Only a consensus failure counts as invalid; a block parked
            // for data this node lacks, or a store error, is node-local.
            if let Ok(Err(ServiceError::Chain(err))) = validation.await {
                if err.is_peer_fault() {
                    metrics.blocks_relayed_early_invalid.inc();
                    tracing::warn!(
                        peer = %source, reason = %err,
                        "a block relayed before its validation failed it; its sender is not blamed"
                    );
                }
            }
            return None;
        }
        match validation.await {
            Ok(result) => result,
            Err(_) => return Some(MessageAcceptance::Ignore),
        }
    } else {
        ctx.chain.submit_block(block, from).await
    };
    Some(match result {
        // Only a block that moved the tip is relayed: a side block stays
        // here, so a flood of cheap siblings goes no further than one node.
        Ok(BlockOutcome::NewTip { .. }) => MessageAcceptance::Accept,
        Ok(BlockOutcome::SideChain { .. }) => MessageAcceptance::Ignore,
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
    })
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
    if let Err(reason) = crate::jobs::prepare_tx(&ctx.params, &ctx.blobs, &ctx.network, &tx).await {
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
        Ok(Err(err)) if err.is_peer_fault() => {
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

/// Why a client's transaction was not taken.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Refused: by validation, the mempool, or because its job's dataset
    /// cannot be had.
    #[error("{0}")]
    Rejected(String),
    /// The chain task has stopped.
    #[error(transparent)]
    Stopped(#[from] ServiceError),
}

/// Takes a transaction from a client of this node (the HTTP API): the same
/// path as gossip (dataset fetch for a job after its stateless checks, then
/// the mempool's cheap checks), then gossips it once admitted.
pub async fn submit_from_client(ctx: &Context, tx: SignedTx) -> Result<TxId, SubmitError> {
    log_result_submitted(&tx, "http client");
    if let Err(reason) = crate::jobs::prepare_tx(&ctx.params, &ctx.blobs, &ctx.network, &tx).await {
        tracing::info!(%reason, peer = "http client", "rejected tx");
        return Err(SubmitError::Rejected(reason));
    }
    let encoded = codec::encode(&tx);
    let admitted = tx.clone();
    match ctx.chain.submit_tx(tx).await? {
        Ok(id) => {
            tracing::info!(tx = %id, "transaction accepted from an http client");
            after_admission(ctx, admitted);
            if let Ok(bytes) = encoded {
                ctx.network.publish(Topic::Txs, bytes);
            }
            Ok(id)
        }
        Err(err) => {
            tracing::info!(reason = %err, peer = "http client", "rejected tx");
            Err(SubmitError::Rejected(err.to_string()))
        }
    }
}
