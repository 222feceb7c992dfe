//! The sync driver: headers-first catch-up from one peer at a time.
//!
//! From our block locator it asks a peer for the headers after our best
//! common block, checks that they link and carry valid proof of work, and
//! keeps asking (up to [`MAX_PRESYNC_HEADERS`]) until it has the peer's
//! branch; only when the work those headers prove beats our tip's does it
//! fetch the missing bodies, in batches, and hand them to the chain task.
//! Headers are cheap to check and hold; bodies are what a node stores, so a
//! branch with less work than ours never costs a body download.
//! A peer that times out or fails a request is dropped and sync moves on to
//! another; a peer that sends invalid data is penalised. The driver never
//! writes chain state itself.

use std::collections::VecDeque;
use std::time::Duration;

use libp2p::PeerId;
use protocol::codec;
use protocol::validation::check_proof_of_work;
use protocol::{Block, BlockHash, ChainParams};
use tokio::sync::{mpsc, watch};

use super::network::NetworkClient;
use super::wire::{SyncRequest, SyncResponse, MAX_BLOCKS_PER_REQUEST, MAX_SYNC_FRAME};
use crate::chain::{BlockOutcome, MAX_HEADERS};
use crate::chain_task::{BlockSource, ChainHandle, ServiceError};

/// How long one sync request may take before the peer counts as stalled.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// How often sync polls a peer even without a trigger, to catch missed gossip.
const POLL_INTERVAL: Duration = Duration::from_secs(3);
/// Bodies asked per request.
const BODY_BATCH: usize = 64;
/// Headers held while learning a peer's branch before any body is fetched:
/// 50,000 (about 6 MB). A longer branch is fetched in parts of this size,
/// each part judged by the work its headers prove.
pub const MAX_PRESYNC_HEADERS: usize = 50_000;

/// What wakes the sync driver.
#[derive(Debug)]
pub enum SyncTrigger {
    /// A full node connected.
    PeerReady(PeerId),
    /// A peer left.
    PeerGone(PeerId),
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("peer {0} stalled: {1}")]
    Stalled(PeerId, String),
    #[error("peer {0} sent invalid data: {1}")]
    Invalid(PeerId, String),
    #[error(transparent)]
    Chain(#[from] ServiceError),
}

/// The sync driver's state.
#[derive(Debug)]
pub struct SyncDriver {
    chain: ChainHandle,
    network: NetworkClient,
    params: ChainParams,
    peers: VecDeque<PeerId>,
}

impl SyncDriver {
    /// A driver over the chain task and the network.
    pub fn new(chain: ChainHandle, network: NetworkClient, params: ChainParams) -> Self {
        Self {
            chain,
            network,
            params,
            peers: VecDeque::new(),
        }
    }

    /// Runs until shutdown.
    pub async fn run(
        mut self,
        mut triggers: mpsc::UnboundedReceiver<SyncTrigger>,
        mut behind: mpsc::UnboundedReceiver<PeerId>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut poll = tokio::time::interval(POLL_INTERVAL);
        loop {
            let target = tokio::select! {
                _ = shutdown.changed() => break,
                trigger = triggers.recv() => match trigger {
                    Some(SyncTrigger::PeerReady(peer)) => {
                        if !self.peers.contains(&peer) {
                            self.peers.push_back(peer);
                        }
                        Some(peer)
                    }
                    Some(SyncTrigger::PeerGone(peer)) => {
                        self.peers.retain(|p| *p != peer);
                        None
                    }
                    None => break,
                },
                peer = behind.recv() => peer.filter(|p| self.peers.contains(p)),
                _ = poll.tick() => {
                    // Round robin, so every peer's chain is seen.
                    self.peers.rotate_left(1.min(self.peers.len()));
                    self.peers.front().copied()
                }
            };
            let Some(peer) = target else {
                continue;
            };
            let outcome = tokio::select! {
                _ = shutdown.changed() => break,
                outcome = self.sync_with(peer) => outcome,
            };
            match outcome {
                Ok(0) => {}
                Ok(blocks) => tracing::debug!(%peer, blocks, "sync round done"),
                Err(SyncError::Stalled(peer, reason)) => {
                    tracing::warn!(%peer, %reason, "sync peer stalled, dropping it");
                    self.peers.retain(|p| *p != peer);
                    self.network.disconnect(peer);
                    poll.reset_immediately();
                }
                Err(SyncError::Invalid(peer, reason)) => {
                    self.network.penalise(peer, 100, reason);
                    self.peers.retain(|p| *p != peer);
                }
                Err(SyncError::Chain(err)) => {
                    tracing::debug!(reason = %err, "sync stopped");
                }
            }
        }
    }

    async fn request(
        &self,
        peer: PeerId,
        request: &SyncRequest,
    ) -> Result<SyncResponse, SyncError> {
        let bytes = codec::encode(request).map_err(|e| SyncError::Stalled(peer, e.to_string()))?;
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, self.network.sync_request(peer, bytes))
            .await
            .map_err(|_| SyncError::Stalled(peer, "request timed out".into()))?
            .map_err(|e| SyncError::Stalled(peer, e.to_string()))?;
        match codec::decode_with_limit::<SyncResponse>(&reply, MAX_SYNC_FRAME) {
            Ok(SyncResponse::Error(message)) => Err(SyncError::Stalled(peer, message)),
            Ok(response) => Ok(response),
            Err(err) => Err(SyncError::Invalid(
                peer,
                format!("undecodable sync response: {err}"),
            )),
        }
    }

    /// Pulls everything `peer` has that we lack, when its branch has more
    /// work than ours. Returns blocks connected.
    async fn sync_with(&self, peer: PeerId) -> Result<usize, SyncError> {
        let mut total = 0usize;
        loop {
            let (headers, complete) = self.presync(peer).await?;
            let Some(first) = headers.first() else {
                return Ok(total);
            };
            // Cost order: the headers linked and met their proof of work
            // (cheap, done); now their work decides whether any body is
            // worth downloading.
            let base = self.chain.work_of(first.prev).await?.ok_or_else(|| {
                SyncError::Invalid(peer, "headers do not start on a block we know".into())
            })?;
            let mut claimed = base;
            for header in &headers {
                let work = header
                    .bits
                    .to_target()
                    .map(|t| t.work())
                    .map_err(|e| SyncError::Invalid(peer, format!("header bits: {e}")))?;
                claimed = claimed
                    .checked_add(work)
                    .ok_or_else(|| SyncError::Invalid(peer, "header work overflows".into()))?;
            }
            if complete && claimed <= self.chain.tip().total_work {
                tracing::debug!(%peer, headers = headers.len(), "peer's branch has no more work than ours: bodies not fetched");
                return Ok(total);
            }
            let tip_before = self.chain.tip().tip;
            let hashes: Vec<BlockHash> = headers.iter().map(|h| h.seal().hash()).collect();
            let missing = self.chain.missing(hashes).await?;
            let mut queue: VecDeque<BlockHash> = missing.into();
            // Fetching the next batch overlaps connecting the one before:
            // the chain task validates while the peer answers. Each batch
            // is connected in one call and made durable once.
            let mut ready: Vec<Block> = Vec::new();
            loop {
                let batch: Vec<BlockHash> = queue
                    .iter()
                    .take(BODY_BATCH.min(MAX_BLOCKS_PER_REQUEST))
                    .copied()
                    .collect();
                if batch.is_empty() && ready.is_empty() {
                    break;
                }
                let fetch = async {
                    if batch.is_empty() {
                        Ok(Vec::new())
                    } else {
                        self.fetch_blocks(peer, &batch).await
                    }
                };
                let connect = self.connect_all(peer, std::mem::take(&mut ready));
                let (fetched, connected) = tokio::join!(fetch, connect);
                total = total.saturating_add(connected?);
                ready = fetched?;
                for _ in 0..ready.len() {
                    queue.pop_front();
                }
            }
            // A part of a longer branch: go on while it moves our tip (the
            // next locator then starts past it); otherwise it stays a side
            // branch and asking again would fetch the same part.
            if complete || self.chain.tip().tip == tip_before {
                return Ok(total);
            }
        }
    }

    /// The headers of `peer`'s branch after our best common block, checked
    /// to link and to meet their proof of work, up to
    /// [`MAX_PRESYNC_HEADERS`]; and whether that is the whole branch.
    async fn presync(&self, peer: PeerId) -> Result<(Vec<protocol::Header>, bool), SyncError> {
        let mut locator = self.chain.locator().await?;
        let mut headers: Vec<protocol::Header> = Vec::new();
        loop {
            let batch = match self
                .request(peer, &SyncRequest::GetHeaders { locator })
                .await?
            {
                SyncResponse::Headers(batch) => batch,
                _ => {
                    return Err(SyncError::Invalid(
                        peer,
                        "blocks sent for a headers request".into(),
                    ))
                }
            };
            let Some(first) = batch.first() else {
                return Ok((headers, true));
            };
            let mut prev = match headers.last() {
                Some(last) => last.seal().hash(),
                None => {
                    if !self.chain.missing(vec![first.prev]).await?.is_empty() {
                        return Err(SyncError::Invalid(
                            peer,
                            "headers do not start on a block we know".into(),
                        ));
                    }
                    first.prev
                }
            };
            let full = batch.len() >= MAX_HEADERS;
            for header in batch {
                if header.prev != prev {
                    return Err(SyncError::Invalid(peer, "headers do not link".into()));
                }
                let sealed = header.seal();
                check_proof_of_work(&sealed, &self.params).map_err(|e| {
                    SyncError::Invalid(peer, format!("header {}: {e}", sealed.hash()))
                })?;
                prev = sealed.hash();
                headers.push(header);
            }
            if !full {
                return Ok((headers, true));
            }
            if headers.len() >= MAX_PRESYNC_HEADERS {
                return Ok((headers, false));
            }
            locator = vec![prev];
        }
    }

    /// The bodies of `hashes` (a prefix of them, as many as fit one
    /// response), checked to be the blocks asked for, in order. Who pays:
    /// the peer's answer is bounded by the request's frame limit, and each
    /// block costs one header hash here before the chain sees it.
    async fn fetch_blocks(
        &self,
        peer: PeerId,
        hashes: &[BlockHash],
    ) -> Result<Vec<Block>, SyncError> {
        let blocks = match self
            .request(
                peer,
                &SyncRequest::GetBlocks {
                    hashes: hashes.to_vec(),
                },
            )
            .await?
        {
            SyncResponse::Blocks(blocks) => blocks,
            _ => {
                return Err(SyncError::Invalid(
                    peer,
                    "headers sent for a blocks request".into(),
                ))
            }
        };
        if blocks.is_empty() {
            return Err(SyncError::Stalled(
                peer,
                "no blocks for hashes it announced".into(),
            ));
        }
        if blocks.len() > hashes.len() {
            return Err(SyncError::Invalid(
                peer,
                format!("sent {} blocks for {} hashes", blocks.len(), hashes.len()),
            ));
        }
        for (block, expected) in blocks.iter().zip(hashes) {
            let hash = block.hash();
            if hash != *expected {
                return Err(SyncError::Invalid(
                    peer,
                    format!("sent block {hash} for {expected}"),
                ));
            }
        }
        Ok(blocks)
    }

    /// Connects a batch of fetched blocks in one call to the chain task;
    /// returns how many were stored. A block that breaks a consensus rule
    /// is the peer's fault; a node-local failure is not.
    async fn connect_all(&self, peer: PeerId, blocks: Vec<Block>) -> Result<usize, SyncError> {
        if blocks.is_empty() {
            return Ok(0);
        }
        let (outcomes, stopped) = self
            .chain
            .submit_blocks(blocks, BlockSource::Sync(peer.to_string()))
            .await?;
        let stored = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    BlockOutcome::NewTip { .. } | BlockOutcome::SideChain { .. }
                )
            })
            .count();
        match stopped {
            None => Ok(stored),
            Some(err) if err.is_peer_fault() => Err(SyncError::Invalid(peer, err.to_string())),
            Some(err) => Err(ServiceError::Chain(err).into()),
        }
    }
}
