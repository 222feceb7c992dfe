//! The chain task: one OS thread that owns the [`Chain`] (and with it the
//! store and the mempool), and the cloneable [`ChainHandle`] through which
//! the miner, the network and the HTTP API reach it.
//!
//! Requests are a command enum answered over oneshot channels; the tip is
//! published through a `watch` channel. Block validation and redb commits
//! block, so they run on this dedicated thread and never on the async
//! executor. Nothing else may own or lock the chain.

use std::sync::Arc;
use std::thread::JoinHandle;

use protocol::api::{BalanceInfo, BlockInfo, BlockRef};
use protocol::state::AccountProof;
use protocol::{
    Address, Block, BlockHash, Header, Height, JobId, JobRecord, SignedTx, StateRoot, TxId,
};
use tokio::sync::{mpsc, oneshot, watch};

use crate::chain::{BlockOutcome, BlockTemplate, Chain, ChainError, ChainNote, Relay, TipSnapshot};
use crate::mempool::MempoolError;
use crate::metrics::label;
use crate::observe::{unix_seconds, Event, Observer};

/// Where a block came from, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockSource {
    /// This node's miner.
    Mined,
    /// A peer's gossip, by peer id: nobody asked for it.
    Peer(String),
    /// A block the sync driver asked a peer for, by peer id.
    Sync(String),
}

/// Why a chain request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The chain task has stopped.
    #[error("the chain task has stopped")]
    Stopped,
    /// The chain refused or failed.
    #[error(transparent)]
    Chain(#[from] ChainError),
}

/// The largest total size of blocks answered to one request.
pub const MAX_BLOCKS_RESPONSE_BYTES: usize = 3 * 1024 * 1024;

enum Command {
    SubmitBlock {
        block: Box<Block>,
        source: BlockSource,
        /// Hears [`Chain::relay_verdict`] before the block is validated.
        relay: Option<oneshot::Sender<Relay>>,
        reply: oneshot::Sender<Result<BlockOutcome, ChainError>>,
    },
    SubmitBlocks {
        blocks: Vec<Block>,
        source: BlockSource,
        reply: oneshot::Sender<(Vec<BlockOutcome>, Option<ChainError>)>,
    },
    SubmitTx {
        tx: Box<SignedTx>,
        reply: oneshot::Sender<Result<TxId, MempoolError>>,
    },
    Template {
        miner: Address,
        reply: oneshot::Sender<Result<BlockTemplate, ChainError>>,
    },
    Locator {
        reply: oneshot::Sender<Vec<BlockHash>>,
    },
    HeadersAfter {
        locator: Vec<BlockHash>,
        max: usize,
        reply: oneshot::Sender<Vec<Header>>,
    },
    Blocks {
        hashes: Vec<BlockHash>,
        reply: oneshot::Sender<Result<Vec<Block>, ChainError>>,
    },
    Missing {
        hashes: Vec<BlockHash>,
        reply: oneshot::Sender<Vec<BlockHash>>,
    },
    Block {
        which: BlockRef,
        reply: oneshot::Sender<Result<Option<BlockInfo>, ChainError>>,
    },
    Balance {
        address: Address,
        reply: oneshot::Sender<BalanceInfo>,
    },
    AccountProof {
        address: Address,
        reply: oneshot::Sender<(AccountProof, BlockHash, Height, StateRoot)>,
    },
    Job {
        id: JobId,
        reply: oneshot::Sender<Option<JobRecord>>,
    },
    Jobs {
        open_only: bool,
        reply: oneshot::Sender<Vec<(JobId, JobRecord)>>,
    },
    MempoolIds {
        reply: oneshot::Sender<Vec<TxId>>,
    },
    Parked {
        reply: oneshot::Sender<Vec<(BlockHash, Option<protocol::Digest>)>>,
    },
    RetryParked {
        reply: oneshot::Sender<Result<Option<BlockOutcome>, ChainError>>,
    },
    NextNonce {
        address: Address,
        reply: oneshot::Sender<u64>,
    },
    BlocksPage {
        from: Option<Height>,
        count: u64,
        reply: oneshot::Sender<Result<Vec<BlockSummaryRow>, ChainError>>,
    },
    Transaction {
        id: TxId,
        reply: oneshot::Sender<Result<Option<TxFound>, ChainError>>,
    },
    JobsPage {
        status: Option<JobStatusKind>,
        order: JobOrder,
        after: Option<JobCursor>,
        limit: usize,
        reply: oneshot::Sender<Vec<(JobId, JobRecord)>>,
    },
    MempoolInfo {
        max_ids: usize,
        reply: oneshot::Sender<MempoolInfo>,
    },
    JobCounts {
        reply: oneshot::Sender<[u64; 4]>,
    },
    NetworkHashrate {
        reply: oneshot::Sender<f64>,
    },
    WorkOf {
        hash: BlockHash,
        reply: oneshot::Sender<Option<protocol::pow::Work>>,
    },
    Shutdown,
}

/// A main-chain block, summarised for lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSummaryRow {
    /// Its height.
    pub height: Height,
    /// Its hash.
    pub hash: BlockHash,
    /// Header time.
    pub time: u32,
    /// Transactions, the coinbase included.
    pub txs: usize,
    /// Encoded bytes.
    pub bytes: usize,
    /// The coinbase's recipient.
    pub miner: Address,
}

/// A transaction found by id, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxFound {
    /// The transaction.
    pub tx: protocol::Transaction,
    /// Its main-chain block and that block's height; `None` in the mempool.
    pub block: Option<(BlockHash, Height)>,
}

/// A job status without its data, to filter lists by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobStatusKind {
    /// Open.
    Open,
    /// A result awaits its challenge window.
    Pending,
    /// Paid.
    Fulfilled,
    /// Expired unanswered.
    Expired,
}

impl JobStatusKind {
    /// Whether `status` is of this kind.
    pub fn matches(self, status: &protocol::JobStatus) -> bool {
        matches!(
            (self, status),
            (Self::Open, protocol::JobStatus::Open)
                | (Self::Pending, protocol::JobStatus::Pending { .. })
                | (Self::Fulfilled, protocol::JobStatus::Fulfilled { .. })
                | (Self::Expired, protocol::JobStatus::Expired { .. })
        )
    }
}

/// Where a page of jobs starts, and so in which order it lists them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobCursor {
    /// Job-id order, after this id.
    Id(JobId),
    /// Most recent activity first (see [`activity_height`]), after this
    /// height and id.
    Recent(u64, JobId),
}

/// The order of a page of jobs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobOrder {
    /// By job id.
    Id,
    /// Most recent activity first, ties by job id.
    Recent,
}

/// The height of a job's latest change: its settlement or expiry, its
/// pending result's submission, its latest challenge, or its post.
pub fn activity_height(job: &JobRecord) -> u64 {
    let status = match &job.status {
        protocol::JobStatus::Open => 0,
        protocol::JobStatus::Pending { height, .. }
        | protocol::JobStatus::Fulfilled { height, .. }
        | protocol::JobStatus::Expired { height } => height.0,
    };
    let challenged = job.challenges.iter().map(|c| c.height.0).max().unwrap_or(0);
    status.max(challenged).max(job.posted_at.0)
}

fn jobs_page(
    chain: &Chain,
    status: Option<JobStatusKind>,
    order: JobOrder,
    after: Option<JobCursor>,
    limit: usize,
) -> Vec<(JobId, JobRecord)> {
    let wanted = |job: &JobRecord| status.is_none_or(|s| s.matches(&job.status));
    match order {
        JobOrder::Id => {
            let after = match after {
                Some(JobCursor::Id(id) | JobCursor::Recent(_, id)) => Some(id),
                None => None,
            };
            chain
                .state()
                .jobs_after(after.as_ref())
                .filter(|(_, job)| wanted(job))
                .take(limit)
                .map(|(id, job)| (*id, job.clone()))
                .collect()
        }
        JobOrder::Recent => {
            // Newest first: (height descending, id ascending). Sorting costs
            // O(jobs log jobs) on the chain task; the live job set is what
            // it sorts, and the answer is one page.
            let mut keyed: Vec<(std::cmp::Reverse<u64>, JobId)> = chain
                .state()
                .jobs()
                .filter(|(_, job)| wanted(job))
                .map(|(id, job)| (std::cmp::Reverse(activity_height(job)), *id))
                .collect();
            keyed.sort_unstable();
            let start = match after {
                Some(JobCursor::Recent(height, id)) => {
                    keyed.partition_point(|key| *key <= (std::cmp::Reverse(height), id))
                }
                _ => 0,
            };
            keyed
                .iter()
                .skip(start)
                .take(limit)
                .filter_map(|(_, id)| chain.state().job(id).map(|job| (*id, job.clone())))
                .collect()
        }
    }
}

/// The mempool in numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolInfo {
    /// Transactions held.
    pub count: usize,
    /// Their encoded bytes.
    pub bytes: usize,
    /// Ids, at most the number asked for.
    pub ids: Vec<TxId>,
}

/// A cloneable handle to the chain task.
#[derive(Clone)]
pub struct ChainHandle {
    commands: mpsc::Sender<Command>,
    tip: watch::Receiver<TipSnapshot>,
}

impl std::fmt::Debug for ChainHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainHandle").finish_non_exhaustive()
    }
}

/// The chain task's thread, to join at shutdown.
#[derive(Debug)]
pub struct ChainTask {
    thread: Option<JoinHandle<()>>,
    commands: mpsc::Sender<Command>,
}

impl ChainTask {
    /// Asks the chain task to stop and waits until the store is closed.
    pub async fn stop(mut self) {
        let _ = self.commands.send(Command::Shutdown).await;
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u32::try_from(d.as_secs()).ok())
        .unwrap_or(u32::MAX)
}

/// Starts the chain task on its own thread, observed by nobody.
pub fn spawn(chain: Chain) -> std::io::Result<(ChainHandle, ChainTask)> {
    spawn_observed(chain, Arc::new(Observer::default()))
}

/// Starts the chain task on its own thread; it reports blocks, reorgs,
/// transactions and job changes to `observer`.
pub fn spawn_observed(
    chain: Chain,
    observer: Arc<Observer>,
) -> std::io::Result<(ChainHandle, ChainTask)> {
    let (commands, receiver) = mpsc::channel(1024);
    let (tip_tx, tip) = watch::channel(chain.snapshot());
    let thread = std::thread::Builder::new()
        .name("chain".into())
        .spawn(move || run_chain(chain, receiver, tip_tx, &observer))?;
    Ok((
        ChainHandle {
            commands: commands.clone(),
            tip,
        },
        ChainTask {
            thread: Some(thread),
            commands,
        },
    ))
}

fn run_chain(
    mut chain: Chain,
    mut receiver: mpsc::Receiver<Command>,
    tip: watch::Sender<TipSnapshot>,
    observer: &Observer,
) {
    while let Some(command) = receiver.blocking_recv() {
        match command {
            Command::Shutdown => break,
            Command::SubmitBlock {
                block,
                source,
                relay,
                reply,
            } => {
                let hash = block.hash();
                let started = std::time::Instant::now();
                if let Some(relay) = relay {
                    let _ = relay.send(chain.relay_verdict(&block, unix_now()));
                }
                let result = match &source {
                    BlockSource::Peer(_) => chain.process_unrequested(*block, unix_now()),
                    BlockSource::Mined | BlockSource::Sync(_) => {
                        chain.process_block(*block, unix_now())
                    }
                };
                let validate_us = started.elapsed().as_micros();
                log_block(&chain, &source, hash, &result, validate_us);
                count_block(observer, &source, &result);
                let _ = reply.send(result);
            }
            Command::SubmitBlocks {
                blocks,
                source,
                reply,
            } => {
                let mut outcomes = Vec::with_capacity(blocks.len());
                let mut stopped = None;
                for block in blocks {
                    let hash = block.hash();
                    let started = std::time::Instant::now();
                    let result = chain.process_in_batch(block, unix_now());
                    let validate_us = started.elapsed().as_micros();
                    log_block(&chain, &source, hash, &result, validate_us);
                    count_block(observer, &source, &result);
                    match result {
                        Ok(outcome) => outcomes.push(outcome),
                        Err(err) => {
                            stopped = Some(err);
                            break;
                        }
                    }
                }
                // Durable before the reply, the notes and the new tip.
                if let Err(err) = chain.make_durable() {
                    stopped.get_or_insert(err);
                }
                let _ = reply.send((outcomes, stopped));
            }
            Command::SubmitTx { tx, reply } => {
                let view =
                    protocol::api::TxView::new(&protocol::Transaction::Signed((*tx).clone()));
                let result = chain.submit_tx((*tx).clone());
                report_tx(observer, &tx, view, &result);
                let _ = reply.send(result);
            }
            Command::Template { miner, reply } => {
                let _ = reply.send(chain.template(miner, unix_now()));
            }
            Command::Locator { reply } => {
                let _ = reply.send(chain.locator());
            }
            Command::HeadersAfter {
                locator,
                max,
                reply,
            } => {
                let _ = reply.send(chain.headers_after(&locator, max));
            }
            Command::Blocks { hashes, reply } => {
                let _ = reply.send(blocks(&chain, &hashes));
            }
            Command::Missing { hashes, reply } => {
                let missing = hashes.into_iter().filter(|h| !chain.has_block(h)).collect();
                let _ = reply.send(missing);
            }
            Command::Block { which, reply } => {
                let _ = reply.send(block_info(&chain, which));
            }
            Command::Balance { address, reply } => {
                let _ = reply.send(BalanceInfo {
                    address,
                    account: chain.state().account(&address),
                    next_nonce: chain.next_nonce(&address),
                });
            }
            Command::AccountProof { address, reply } => {
                // The tip's state is the state under the tip header's root.
                let state = chain.state();
                let root = state.root().unwrap_or_default();
                let _ = reply.send((
                    state.account_proof(&address),
                    chain.tip(),
                    chain.height(),
                    root,
                ));
            }
            Command::Job { id, reply } => {
                let _ = reply.send(chain.state().job(&id).cloned());
            }
            Command::Jobs { open_only, reply } => {
                let jobs = chain
                    .state()
                    .jobs()
                    .filter(|(_, job)| !open_only || job.is_open())
                    .map(|(id, job)| (*id, job.clone()))
                    .collect();
                let _ = reply.send(jobs);
            }
            Command::MempoolIds { reply } => {
                let _ = reply.send(chain.mempool().ids());
            }
            Command::Parked { reply } => {
                let _ = reply.send(chain.parked());
            }
            Command::RetryParked { reply } => {
                let old_tip = chain.tip();
                let result = chain.retry_parked();
                if let Ok(Some(BlockOutcome::NewTip { height, hash, .. })) = &result {
                    tracing::info!(height = height.0, %hash, "parked block connected");
                    let first = chain
                        .block_position(&old_tip)
                        .filter(|(_, main)| *main)
                        .map_or(height.0, |(h, _)| h.0.saturating_add(1));
                    for connected in first..=height.0 {
                        log_job_events(&chain, Height(connected));
                    }
                }
                let _ = reply.send(result);
            }
            Command::NextNonce { address, reply } => {
                let _ = reply.send(chain.next_nonce(&address));
            }
            Command::BlocksPage { from, count, reply } => {
                let _ = reply.send(blocks_page(&chain, from, count));
            }
            Command::Transaction { id, reply } => {
                let found = chain
                    .transaction(&id)
                    .map(|found| found.map(|(tx, block)| TxFound { tx, block }));
                let _ = reply.send(found);
            }
            Command::JobsPage {
                status,
                order,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(jobs_page(&chain, status, order, after, limit));
            }
            Command::MempoolInfo { max_ids, reply } => {
                let mempool = chain.mempool();
                let mut ids = mempool.ids();
                ids.sort();
                ids.truncate(max_ids);
                let _ = reply.send(MempoolInfo {
                    count: mempool.len(),
                    bytes: mempool.bytes(),
                    ids,
                });
            }
            Command::JobCounts { reply } => {
                let mut counts = [0u64; 4];
                for (_, job) in chain.state().jobs() {
                    let slot = match job.status {
                        protocol::JobStatus::Open => 0,
                        protocol::JobStatus::Pending { .. } => 1,
                        protocol::JobStatus::Fulfilled { .. } => 2,
                        protocol::JobStatus::Expired { .. } => 3,
                    };
                    if let Some(count) = counts.get_mut(slot) {
                        *count = count.saturating_add(1);
                    }
                }
                let _ = reply.send(counts);
            }
            Command::WorkOf { hash, reply } => {
                let _ = reply.send(chain.work_of(&hash));
            }
            Command::NetworkHashrate { reply } => {
                let _ = reply.send(chain.network_hashrate(crate::chain::NETWORK_HASHRATE_BLOCKS));
            }
        }
        for note in chain.take_notes() {
            report_note(observer, note);
        }
        let snapshot = chain.snapshot();
        tip.send_if_modified(|current| {
            if *current == snapshot {
                false
            } else {
                *current = snapshot;
                true
            }
        });
    }
}

/// Counts a block handed to the chain, by outcome.
fn count_block(
    observer: &Observer,
    source: &BlockSource,
    result: &Result<BlockOutcome, ChainError>,
) {
    let metrics = &observer.metrics;
    match result {
        Ok(BlockOutcome::NewTip {
            reorg,
            hash,
            height,
            ..
        }) => {
            metrics.blocks_accepted.inc();
            if *source == BlockSource::Mined {
                metrics.blocks_mined.inc();
            }
            if let Some(reorg) = reorg {
                metrics.reorgs.inc();
                #[allow(clippy::cast_precision_loss)]
                metrics.reorg_depth.observe(reorg.depth as f64);
                observer.publish(Event::Reorg(protocol::api::ReorgEvent {
                    depth: reorg.depth,
                    old_tip: reorg.old_tip.to_string(),
                    new_tip: hash.to_string(),
                    height: height.0,
                }));
            }
        }
        Ok(BlockOutcome::SideChain { .. }) => {
            metrics.blocks_accepted.inc();
        }
        Ok(BlockOutcome::AlreadyKnown | BlockOutcome::Orphan { .. }) => {}
        Err(err) => {
            let reason = match err {
                ChainError::InvalidHeader { .. } => "invalid_header",
                ChainError::InvalidBlock { .. } => "invalid_block",
                ChainError::KnownInvalid { .. } => "known_invalid",
                ChainError::AwaitingData { .. } => "awaiting_data",
                ChainError::ForkTooDeep { .. } => "fork_too_deep",
                ChainError::OutOfReach { .. } => "out_of_reach",
                ChainError::Store(_) => "store",
            };
            metrics
                .blocks_rejected
                .get_or_create(&label("reason", reason))
                .inc();
        }
    }
}

/// Publishes a transaction offered to the mempool, and remembers a refused
/// result for its job's "why was I not paid" answer.
fn report_tx(
    observer: &Observer,
    tx: &SignedTx,
    view: protocol::api::TxView,
    result: &Result<TxId, MempoolError>,
) {
    if matches!(result, Err(MempoolError::AlreadyKnown(_))) {
        return;
    }
    let reason = result.as_ref().err().map(ToString::to_string);
    if let (protocol::TxKind::SubmitResult { job, .. }, Some(reason)) = (&tx.body.kind, &reason) {
        observer.rejected(
            *job,
            protocol::api::RejectionView {
                tx: view.id.clone(),
                worker: tx.body.from.to_string(),
                reason: reason.clone(),
                time: unix_seconds(),
            },
        );
    }
    observer.publish(Event::Tx(protocol::api::TxEvent {
        id: view.id,
        kind: view.kind,
        accepted: result.is_ok(),
        reason,
    }));
}

/// Publishes a main-chain change.
fn report_note(observer: &Observer, note: ChainNote) {
    match note {
        ChainNote::Connected {
            height,
            hash,
            time,
            txs,
            bytes,
            miner,
            jobs,
            challenges,
        } => {
            observer.publish(Event::Block(protocol::api::BlockSummary {
                height: height.0,
                hash: hash.to_string(),
                time: u64::from(time),
                txs: u32::try_from(txs).unwrap_or(u32::MAX),
                bytes: u64::try_from(bytes).unwrap_or(u64::MAX),
                miner: miner.to_string(),
            }));
            for (job, status) in jobs {
                observer.publish(Event::Job(protocol::api::JobEvent {
                    id: job.to_string(),
                    status: status
                        .as_ref()
                        .map_or("removed", protocol::api::status_word)
                        .to_owned(),
                    height: height.0,
                }));
            }
            for outcome in challenges {
                let outcome = match outcome {
                    protocol::ChallengeOutcome::Proven => "proven",
                    protocol::ChallengeOutcome::Refuted => "refuted",
                };
                observer
                    .metrics
                    .fraud_proofs
                    .get_or_create(&label("outcome", outcome))
                    .inc();
            }
        }
        ChainNote::Disconnected { .. } => {}
    }
}

fn blocks_page(
    chain: &Chain,
    from: Option<Height>,
    count: u64,
) -> Result<Vec<BlockSummaryRow>, ChainError> {
    let top = from.unwrap_or(chain.height()).min(chain.height());
    let mut rows = Vec::new();
    let mut height = top.0;
    while u64::try_from(rows.len()).unwrap_or(u64::MAX) < count {
        let Some(hash) = chain.hash_at(Height(height)) else {
            break;
        };
        let Some((block, size)) = chain.block_and_size(&hash)? else {
            break;
        };
        rows.push(BlockSummaryRow {
            height: Height(height),
            hash,
            time: block.header.time,
            txs: block.txs.len(),
            bytes: size,
            miner: match block.txs.first() {
                Some(protocol::Transaction::Coinbase(cb)) => cb.miner,
                _ => Address::ZERO,
            },
        });
        let Some(next) = height.checked_sub(1) else {
            break;
        };
        height = next;
    }
    Ok(rows)
}

fn log_block(
    chain: &Chain,
    source: &BlockSource,
    hash: BlockHash,
    result: &Result<BlockOutcome, ChainError>,
    validate_us: u128,
) {
    let peer = match source {
        BlockSource::Mined => "self".to_owned(),
        BlockSource::Peer(peer) | BlockSource::Sync(peer) => peer.clone(),
    };
    match result {
        Ok(BlockOutcome::NewTip {
            height,
            hash: tip,
            txs,
            reorg,
        }) => {
            if let Some(reorg) = reorg {
                tracing::warn!(
                    depth = reorg.depth,
                    old_tip = %reorg.old_tip,
                    old_height = reorg.old_height.0,
                    new_tip = %tip,
                    new_height = height.0,
                    "reorg: depth {} from {} to {}", reorg.depth, reorg.old_tip, tip
                );
            }
            if matches!(source, BlockSource::Peer(_) | BlockSource::Sync(_)) {
                tracing::info!(height = height.0, hash = %tip, txs, %peer, validate_us, "new tip from peer");
            }
            let first = match reorg {
                Some(reorg) => reorg
                    .old_height
                    .0
                    .saturating_sub(reorg.depth)
                    .saturating_add(1),
                None => height.0,
            };
            for connected in first..=height.0 {
                log_job_events(chain, Height(connected));
            }
        }
        Ok(_) => {}
        Err(err) if err.is_peer_fault() => {
            tracing::warn!(block = %hash, %peer, reason = %err, "rejected block");
        }
        Err(ChainError::AwaitingData { .. }) => {}
        Err(err @ (ChainError::ForkTooDeep { .. } | ChainError::OutOfReach { .. })) => {
            tracing::debug!(block = %hash, %peer, reason = %err, "side block not stored");
        }
        Err(err) => {
            tracing::error!(block = %hash, %peer, reason = %err, "block not stored");
        }
    }
    let _ = chain;
}

/// One line per job event of the main-chain block at `height`: job posted,
/// bounty paid, job expired.
fn log_job_events(chain: &Chain, height: Height) {
    let Some(hash) = chain.hash_at(height) else {
        return;
    };
    let Ok(Some(block)) = chain.block(&hash) else {
        return;
    };
    for tx in &block.txs {
        let protocol::Transaction::Signed(signed) = tx else {
            continue;
        };
        let Ok(txid) = signed.id() else {
            continue;
        };
        match &signed.body.kind {
            protocol::TxKind::PostJob {
                spec,
                bounty,
                expires_at,
            } => tracing::info!(
                job = %JobId::from(txid),
                dataset = %spec.dataset.digest,
                bounty = bounty.0,
                expires_at = expires_at.0,
                poster = %signed.body.from,
                height = height.0,
                "job posted"
            ),
            protocol::TxKind::SubmitResult { job, result, .. } => {
                if let Some(record) = chain.state().job(job) {
                    if let protocol::JobStatus::Pending {
                        tx,
                        settles_at,
                        bond,
                        ..
                    } = &record.status
                    {
                        if *tx == txid {
                            tracing::info!(
                                %job, worker = %signed.body.from, weights = %result.weights,
                                metric = %result.metric, bond = bond.0,
                                settles_at = settles_at.0, height = height.0, "result pending"
                            );
                        }
                    }
                }
            }
            protocol::TxKind::FraudProof { job, .. } => {
                let challenge = chain
                    .state()
                    .job(job)
                    .and_then(|record| record.challenges.iter().find(|c| c.tx == txid));
                if let Some(challenge) = challenge {
                    match challenge.outcome {
                        protocol::ChallengeOutcome::Proven => tracing::warn!(
                            %job, challenger = %challenge.challenger, worker = %challenge.worker,
                            segment = challenge.segment, height = height.0,
                            "fraud proof accepted: worker slashed, job reopened"
                        ),
                        protocol::ChallengeOutcome::Refuted => tracing::info!(
                            %job, challenger = %challenge.challenger, worker = %challenge.worker,
                            segment = challenge.segment, height = height.0,
                            "fraud proof refuted: challenger's bond burned"
                        ),
                    }
                }
            }
            protocol::TxKind::Transfer { .. } => {}
        }
    }
    for (job, record) in chain.state().jobs() {
        if let protocol::JobStatus::Fulfilled {
            worker,
            height: paid,
            bond,
            result,
            ..
        } = &record.status
        {
            if *paid == height {
                tracing::info!(
                    %job, %worker, bounty = record.bounty.0, bond = bond.0,
                    weights = %result.weights, metric = %result.metric,
                    height = height.0, "bounty settled"
                );
            }
        }
    }
    for (job, record) in chain.state().jobs() {
        if record.status == (protocol::JobStatus::Expired { height }) {
            tracing::info!(
                %job, poster = %record.poster, refund = record.bounty.0,
                height = height.0, "job expired"
            );
        }
    }
}

fn blocks(chain: &Chain, hashes: &[BlockHash]) -> Result<Vec<Block>, ChainError> {
    let mut out = Vec::new();
    let mut bytes = 0usize;
    for hash in hashes {
        let Some((block, size)) = chain.block_and_size(hash)? else {
            break;
        };
        if !out.is_empty() && bytes.saturating_add(size) > MAX_BLOCKS_RESPONSE_BYTES {
            break;
        }
        bytes = bytes.saturating_add(size);
        out.push(block);
    }
    Ok(out)
}

fn block_info(chain: &Chain, which: BlockRef) -> Result<Option<BlockInfo>, ChainError> {
    let hash = match which {
        BlockRef::Height(height) => chain.hash_at(height),
        BlockRef::Hash(hash) => Some(hash),
    };
    let Some(hash) = hash else {
        return Ok(None);
    };
    let Some((height, main_chain)) = chain.block_position(&hash) else {
        return Ok(None);
    };
    Ok(chain.block(&hash)?.map(|block| BlockInfo {
        height,
        hash,
        main_chain,
        block,
    }))
}

impl ChainHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, ServiceError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| ServiceError::Stopped)?;
        response.await.map_err(|_| ServiceError::Stopped)
    }

    /// Up to `count` main-chain blocks, newest first, from height `from`
    /// (default: the tip).
    pub async fn blocks_page(
        &self,
        from: Option<Height>,
        count: u64,
    ) -> Result<Vec<BlockSummaryRow>, ServiceError> {
        Ok(self
            .call(|reply| Command::BlocksPage { from, count, reply })
            .await??)
    }

    /// A transaction by id, from the mempool or the main chain.
    pub async fn transaction(&self, id: TxId) -> Result<Option<TxFound>, ServiceError> {
        Ok(self
            .call(|reply| Command::Transaction { id, reply })
            .await??)
    }

    /// Up to `limit` jobs in `order` after `after`, of `status` when
    /// given.
    pub async fn jobs_page(
        &self,
        status: Option<JobStatusKind>,
        order: JobOrder,
        after: Option<JobCursor>,
        limit: usize,
    ) -> Result<Vec<(JobId, JobRecord)>, ServiceError> {
        self.call(|reply| Command::JobsPage {
            status,
            order,
            after,
            limit,
            reply,
        })
        .await
    }

    /// The mempool's size and up to `max_ids` of its transaction ids.
    pub async fn mempool_info(&self, max_ids: usize) -> Result<MempoolInfo, ServiceError> {
        self.call(|reply| Command::MempoolInfo { max_ids, reply })
            .await
    }

    /// Jobs by status: open, pending, fulfilled, expired.
    pub async fn job_counts(&self) -> Result<[u64; 4], ServiceError> {
        self.call(|reply| Command::JobCounts { reply }).await
    }

    /// The cumulative work of the stored block `hash`.
    pub async fn work_of(
        &self,
        hash: BlockHash,
    ) -> Result<Option<protocol::pow::Work>, ServiceError> {
        self.call(|reply| Command::WorkOf { hash, reply }).await
    }

    /// The network's hash rate, estimated over recent blocks.
    pub async fn network_hashrate(&self) -> Result<f64, ServiceError> {
        self.call(|reply| Command::NetworkHashrate { reply }).await
    }

    /// The latest tip snapshot.
    pub fn tip(&self) -> TipSnapshot {
        self.tip.borrow().clone()
    }

    /// A receiver that wakes on every tip or mempool change.
    pub fn watch_tip(&self) -> watch::Receiver<TipSnapshot> {
        self.tip.clone()
    }

    /// Hands a block to the chain.
    pub async fn submit_block(
        &self,
        block: Block,
        source: BlockSource,
    ) -> Result<BlockOutcome, ServiceError> {
        self.submit(block, source, None).await
    }

    async fn submit(
        &self,
        block: Block,
        source: BlockSource,
        relay: Option<oneshot::Sender<Relay>>,
    ) -> Result<BlockOutcome, ServiceError> {
        let block = Box::new(block);
        Ok(self
            .call(|reply| Command::SubmitBlock {
                block,
                source,
                relay,
                reply,
            })
            .await??)
    }

    /// Hands a batch of blocks (a sync response) to the chain, processed
    /// in order until the first error and made durable once at the end:
    /// the outcome of each block processed and the error that stopped the
    /// batch, if any.
    pub async fn submit_blocks(
        &self,
        blocks: Vec<Block>,
        source: BlockSource,
    ) -> Result<(Vec<BlockOutcome>, Option<ChainError>), ServiceError> {
        self.call(|reply| Command::SubmitBlocks {
            blocks,
            source,
            reply,
        })
        .await
    }

    /// Hands a gossiped block to the chain like [`Self::submit_block`];
    /// `relay` hears whether it may be forwarded at once
    /// ([`Chain::relay_verdict`]) before the block is validated, so the
    /// caller can forward it while this call waits for the validation.
    pub async fn submit_gossip_block(
        &self,
        block: Block,
        source: BlockSource,
        relay: oneshot::Sender<Relay>,
    ) -> Result<BlockOutcome, ServiceError> {
        self.submit(block, source, Some(relay)).await
    }

    /// Offers a transaction to the mempool.
    pub async fn submit_tx(
        &self,
        tx: SignedTx,
    ) -> Result<Result<TxId, MempoolError>, ServiceError> {
        let tx = Box::new(tx);
        self.call(|reply| Command::SubmitTx { tx, reply }).await
    }

    /// A block template paying `miner`.
    pub async fn template(&self, miner: Address) -> Result<BlockTemplate, ServiceError> {
        Ok(self
            .call(|reply| Command::Template { miner, reply })
            .await??)
    }

    /// Our block locator.
    pub async fn locator(&self) -> Result<Vec<BlockHash>, ServiceError> {
        self.call(|reply| Command::Locator { reply }).await
    }

    /// Main-chain headers after the locator.
    pub async fn headers_after(
        &self,
        locator: Vec<BlockHash>,
        max: usize,
    ) -> Result<Vec<Header>, ServiceError> {
        self.call(|reply| Command::HeadersAfter {
            locator,
            max,
            reply,
        })
        .await
    }

    /// Stored blocks by hash, in order, stopping at the first unknown one or
    /// at the response size cap.
    pub async fn blocks(&self, hashes: Vec<BlockHash>) -> Result<Vec<Block>, ServiceError> {
        Ok(self
            .call(|reply| Command::Blocks { hashes, reply })
            .await??)
    }

    /// The hashes among `hashes` that are not stored.
    pub async fn missing(&self, hashes: Vec<BlockHash>) -> Result<Vec<BlockHash>, ServiceError> {
        self.call(|reply| Command::Missing { hashes, reply }).await
    }

    /// A block by height or hash.
    pub async fn block(&self, which: BlockRef) -> Result<Option<BlockInfo>, ServiceError> {
        Ok(self.call(|reply| Command::Block { which, reply }).await??)
    }

    /// An account at the tip.
    pub async fn balance(&self, address: Address) -> Result<BalanceInfo, ServiceError> {
        self.call(|reply| Command::Balance { address, reply }).await
    }

    /// A Merkle proof of `address`'s account under the tip's state root,
    /// with the tip, its height and that root.
    pub async fn account_proof(
        &self,
        address: Address,
    ) -> Result<(AccountProof, BlockHash, Height, StateRoot), ServiceError> {
        self.call(|reply| Command::AccountProof { address, reply })
            .await
    }

    /// A job by id.
    pub async fn job(&self, id: JobId) -> Result<Option<JobRecord>, ServiceError> {
        self.call(|reply| Command::Job { id, reply }).await
    }

    /// All jobs, or the open ones.
    pub async fn jobs(&self, open_only: bool) -> Result<Vec<(JobId, JobRecord)>, ServiceError> {
        self.call(|reply| Command::Jobs { open_only, reply }).await
    }

    /// Ids of the transactions in the mempool.
    pub async fn mempool_ids(&self) -> Result<Vec<TxId>, ServiceError> {
        self.call(|reply| Command::MempoolIds { reply }).await
    }

    /// Blocks parked for want of data, with what each was missing.
    pub async fn parked(&self) -> Result<Vec<(BlockHash, Option<protocol::Digest>)>, ServiceError> {
        self.call(|reply| Command::Parked { reply }).await
    }

    /// Judges the parked blocks again (after their data was fetched).
    pub async fn retry_parked(&self) -> Result<Option<BlockOutcome>, ServiceError> {
        Ok(self.call(|reply| Command::RetryParked { reply }).await??)
    }

    /// The nonce the next transaction from `address` should carry, counting
    /// the mempool.
    pub async fn next_nonce(&self, address: Address) -> Result<u64, ServiceError> {
        self.call(|reply| Command::NextNonce { address, reply })
            .await
    }

    /// The main-chain height now.
    pub fn height(&self) -> Height {
        self.tip.borrow().height
    }
}
