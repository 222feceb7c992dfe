//! The chain: the block tree, fork choice by cumulative work, reorgs through
//! undo data, the orphan pool, and the mempool that rides on the tip state.
//!
//! [`Chain`] is plain synchronous code over a [`Store`], so every rule here
//! is testable without a network or a runtime; the chain task in
//! [`crate::chain_task`] owns one and is the only thing that ever calls it.
//! It must never be shared behind a lock or touched from two threads.
//!
//! A block whose validation needs data this node does not hold yet (the
//! state a fraud proof opens, a job's dataset) is *parked*: stored, left off
//! the main chain, retried by [`Chain::retry_parked`], and never marked
//! invalid. Only a consensus failure makes a block invalid.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use protocol::pow::Work;
use protocol::validation::{
    apply_checked_block, check_block_body, check_header, check_tx_rules, expected_bits,
    median_time_past, template_state_root_presigned, undo_block, CheckedBlock, HeaderContext,
    Presigned, TxError, MEDIAN_TIME_SPAN,
};
use protocol::{
    merkle_root, Address, Amount, Block, BlockError, BlockHash, ChainParams, Coinbase,
    DeferReplays, Digest, Header, HeaderError, Height, JobId, JobSpec, Judged, SegmentLeaf,
    SegmentVerifier, SignedTx, State, Transaction, TxId, VerifyError,
};

use crate::mempool::{Mempool, MempoolError, MempoolLimits, TipContext};
use crate::signatures::{self, SignatureCache, SIGNATURE_CACHE_CAPACITY};
use crate::store::{StateDelta, Store, StoreError, StoredIndex};

/// The verifier used while no training engine is linked: it cannot judge
/// any fraud proof, so blocks carrying one wait (parked) instead of being
/// judged wrongly either way.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoTrainingEngine;

impl NoTrainingEngine {
    fn refuse<T>(&self) -> Result<Judged<T>, VerifyError> {
        Err(VerifyError::Internal(
            "no training engine in this build".into(),
        ))
    }
}

impl SegmentVerifier for NoTrainingEngine {
    fn initial_state(
        &self,
        _: &JobId,
        _: &JobSpec,
        _: &Address,
    ) -> Result<Judged<Digest>, VerifyError> {
        self.refuse()
    }

    fn replay_segment(
        &self,
        _: &JobId,
        _: &JobSpec,
        _: &Address,
        _: u32,
        _: &Digest,
    ) -> Result<Judged<SegmentLeaf>, VerifyError> {
        self.refuse()
    }

    fn final_result(
        &self,
        _: &JobId,
        _: &JobSpec,
        _: &Address,
        _: &Digest,
    ) -> Result<Judged<protocol::FinalOutcome>, VerifyError> {
        self.refuse()
    }
}

/// The shared, swappable segment verifier handed to the chain.
pub type SharedVerifier = Arc<dyn SegmentVerifier + Send + Sync>;

/// Blocks the network hash rate is estimated over.
pub const NETWORK_HASHRATE_BLOCKS: u64 = 20;

/// The deepest fork a side block may start from, in blocks below the tip:
/// 288 (24 minutes of the devnet's 5-second blocks). A side block forking
/// deeper is not stored: anyone can mine siblings of an old block cheaply
/// (ASERT lowers the work a block needs when its parent is far behind
/// schedule), and nothing forking that deep is followed anyway.
pub const MAX_FORK_DEPTH: u64 = 288;

/// How far behind the tip, in blocks of work, an unrequested side-branch
/// block's branch may be and still be stored: 6. An honest competing block
/// is one behind at most; a branch further behind can only become the tip
/// through blocks this node asks for after their headers showed more work
/// (see `net/sync.rs`).
pub const REACH_BLOCKS: u64 = 6;

/// Block hashes remembered as invalid: 16,384 (about 1 MiB). Past it the
/// oldest is forgotten; a block sent again after that is judged again, its
/// proof of work first.
pub const MAX_KNOWN_INVALID: usize = 16_384;

/// The hashes of blocks found invalid, bounded by [`MAX_KNOWN_INVALID`].
#[derive(Debug, Default)]
struct KnownInvalid {
    set: HashSet<BlockHash>,
    order: VecDeque<BlockHash>,
}

impl KnownInvalid {
    fn contains(&self, hash: &BlockHash) -> bool {
        self.set.contains(hash)
    }

    fn insert(&mut self, hash: BlockHash) {
        if self.set.insert(hash) {
            self.order.push_back(hash);
            while self.order.len() > MAX_KNOWN_INVALID {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    fn extend(&mut self, hashes: impl IntoIterator<Item = BlockHash>) {
        for hash in hashes {
            self.insert(hash);
        }
    }
}

/// Most blocks waiting for a missing parent.
pub const MAX_ORPHANS: usize = 128;
/// Most headers returned for one locator.
pub const MAX_HEADERS: usize = 2000;

/// Why a block was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// The header breaks a consensus rule.
    #[error("invalid header of {hash}: {source}")]
    InvalidHeader {
        /// The block.
        hash: BlockHash,
        /// The rule broken.
        source: HeaderError,
    },
    /// The body breaks a consensus rule.
    #[error("invalid block {hash}: {source}")]
    InvalidBlock {
        /// The block.
        hash: BlockHash,
        /// The rule broken.
        source: BlockError,
    },
    /// The block, or an ancestor, was already found invalid.
    #[error("block {hash} is known to be invalid or descends from an invalid block")]
    KnownInvalid {
        /// The block.
        hash: BlockHash,
    },
    /// The block is stored but cannot be judged until this node holds some
    /// data; it is parked and retried. Nobody is at fault.
    #[error("block {hash} is parked until data arrives: {source}")]
    AwaitingData {
        /// The block.
        hash: BlockHash,
        /// What could not be judged.
        source: BlockError,
    },
    /// A side-branch block forking more than [`MAX_FORK_DEPTH`] blocks below
    /// the tip: not stored. The main chain is not rewritten that deep.
    #[error("block {hash} forks {depth} blocks below the tip, expected at most {max}")]
    ForkTooDeep {
        /// The block.
        hash: BlockHash,
        /// Blocks between its fork point and the tip.
        depth: u64,
        /// [`MAX_FORK_DEPTH`].
        max: u64,
    },
    /// An unrequested side-branch block whose branch is further behind the
    /// tip than [`REACH_BLOCKS`] blocks of work: not stored, not relayed.
    #[error("block {hash} is on a branch {behind} blocks of work behind the tip, expected at most {REACH_BLOCKS}")]
    OutOfReach {
        /// The block.
        hash: BlockHash,
        /// How far behind, in blocks of the tip's work (rounded up).
        behind: u64,
    },
    /// The store failed; the chain stays on its last committed tip.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl ChainError {
    /// Whether the sender of this block should be penalised.
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::InvalidHeader { source, .. } => !matches!(source, HeaderError::TimeTooNew { .. }),
            Self::InvalidBlock { .. } | Self::KnownInvalid { .. } => true,
            // An honest peer may relay a stale block: refused, not blamed.
            Self::AwaitingData { .. }
            | Self::Store(_)
            | Self::ForkTooDeep { .. }
            | Self::OutOfReach { .. } => false,
        }
    }
}

/// A switch of the main chain to another branch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reorg {
    /// Blocks disconnected from the old main chain.
    pub depth: u64,
    /// The old tip.
    pub old_tip: BlockHash,
    /// The old tip's height.
    pub old_height: Height,
}

/// What happened to a block handed to the chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockOutcome {
    /// The main chain moved; `hash` at `height` is the new tip.
    NewTip {
        /// Height of the new tip.
        height: Height,
        /// The new tip.
        hash: BlockHash,
        /// Transactions in the block.
        txs: usize,
        /// Set when the switch disconnected blocks.
        reorg: Option<Reorg>,
    },
    /// Stored on a branch with no more work than the main chain.
    SideChain {
        /// Its height.
        height: Height,
        /// The block.
        hash: BlockHash,
    },
    /// Already stored.
    AlreadyKnown,
    /// Its parent is unknown; it waits in the orphan pool.
    Orphan {
        /// The missing parent.
        parent: BlockHash,
    },
}

/// When a gossiped block may be forwarded to peers (see
/// [`Chain::relay_verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relay {
    /// Its header and proof of work check out in context, its body's
    /// stateless rules hold, it would become the tip, and every signature it
    /// carries was verified here before: forward it now, while it is
    /// validated in full.
    Early,
    /// Validate it in full first; forward it only if it becomes the tip.
    AfterValidation,
}

/// What [`Chain::screen`] found, check by check.
enum Screen {
    /// It, or its parent, is known invalid.
    KnownInvalid,
    /// It is stored already.
    Known,
    /// Its hash does not meet its own bits.
    BadProofOfWork(HeaderError),
    /// Its parent is not stored.
    Orphan,
    /// A header rule fails in its parent's context.
    BadHeader(HeaderError),
    /// Its cumulative work overflows.
    WorkOverflow,
    /// Every cheap check passed: its height and cumulative work.
    Passed { height: Height, work: Work },
}

#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    header: Header,
    height: Height,
    work: Work,
    seq: u64,
    block1_time: Option<u32>,
}

/// A block to mine on: the header with nonce 0 and the transactions.
#[derive(Clone, Debug)]
pub struct BlockTemplate {
    /// The block with a zero nonce.
    pub block: Block,
    /// Height of the block.
    pub height: Height,
}

/// A snapshot of the tip that others read through a watch channel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TipSnapshot {
    /// Height of the tip.
    pub height: Height,
    /// The tip.
    pub tip: BlockHash,
    /// Cumulative work.
    pub total_work: Work,
    /// State root at the tip.
    pub state_root: protocol::StateRoot,
    /// Transactions waiting.
    pub mempool: usize,
    /// Their encoded bytes.
    pub mempool_bytes: usize,
    /// The tip header's time.
    pub time: u32,
    /// The network's hash rate over the last
    /// [`NETWORK_HASHRATE_BLOCKS`] blocks, hashes per second, rounded.
    pub network_hashrate: u64,
    /// Bumped on every mempool change, so a miner knows to rebuild.
    pub mempool_version: u64,
}

#[derive(Debug, Default)]
struct OrphanPool {
    blocks: HashMap<BlockHash, Block>,
    order: VecDeque<BlockHash>,
}

impl OrphanPool {
    fn insert(&mut self, hash: BlockHash, block: Block) {
        if self.blocks.contains_key(&hash) {
            return;
        }
        while self.order.len() >= MAX_ORPHANS {
            if let Some(old) = self.order.pop_front() {
                self.blocks.remove(&old);
            }
        }
        self.order.push_back(hash);
        self.blocks.insert(hash, block);
    }

    fn children_of(&mut self, parent: &BlockHash) -> Vec<Block> {
        let hashes: Vec<BlockHash> = self
            .blocks
            .iter()
            .filter(|(_, block)| block.header.prev == *parent)
            .map(|(hash, _)| *hash)
            .collect();
        self.order.retain(|h| !hashes.contains(h));
        hashes
            .iter()
            .filter_map(|h| self.blocks.remove(h))
            .collect()
    }
}

/// The chain, its state, its store and its mempool.
pub struct Chain {
    params: ChainParams,
    store: Store,
    state: State,
    index: HashMap<BlockHash, IndexEntry>,
    main: Vec<BlockHash>,
    invalid: KnownInvalid,
    orphans: OrphanPool,
    mempool: Mempool,
    mempool_version: u64,
    verifier: SharedVerifier,
    next_seq: u64,
    /// Blocks that could not be judged for want of data, with what was
    /// missing; left off the main chain until [`Chain::retry_parked`].
    parked: HashMap<BlockHash, Option<Digest>>,
    /// Blocks whose parking was logged, so a retry that parks them again
    /// stays quiet.
    parked_logged: HashSet<BlockHash>,
    /// What changed on the main chain since [`Chain::take_notes`] was last
    /// called, oldest first: what the chain task turns into events and
    /// metrics. Bounded by [`MAX_NOTES`].
    notes: Vec<ChainNote>,
    /// Transactions whose signatures verified (see [`crate::signatures`]).
    signatures: SignatureCache,
    /// Threads that verify a block's unseen signatures.
    signature_threads: usize,
    /// The block being accepted, checked, while it is connected (so it is
    /// not read back from the store and hashed again).
    recent: Option<CheckedBlock>,
}

/// A transaction found by id, and its main-chain block with that block's
/// height (`None`: it waits in the mempool).
pub type FoundTx = (Transaction, Option<(BlockHash, Height)>);

/// Most [`ChainNote`]s kept between two [`Chain::take_notes`]; older ones are
/// dropped (a deep reorg could otherwise produce one per block).
pub const MAX_NOTES: usize = 4096;

/// A change of the main chain, for observers (events, metrics).
#[derive(Clone, Debug, PartialEq)]
pub enum ChainNote {
    /// A block joined the main chain.
    Connected {
        /// Its height.
        height: Height,
        /// Its hash.
        hash: BlockHash,
        /// Header time.
        time: u32,
        /// Transactions, the coinbase included.
        txs: usize,
        /// Encoded bytes.
        bytes: usize,
        /// The coinbase's recipient.
        miner: Address,
        /// The jobs the block changed, with their new status
        /// (`None`: removed).
        jobs: Vec<(JobId, Option<protocol::state::JobStatus>)>,
        /// Outcomes of the fraud proofs the block carried.
        challenges: Vec<protocol::ChallengeOutcome>,
    },
    /// A block left the main chain.
    Disconnected {
        /// Its height.
        height: Height,
        /// Its hash.
        hash: BlockHash,
    },
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("height", &self.height())
            .field("tip", &self.tip())
            .finish_non_exhaustive()
    }
}

fn block_work(header: &Header) -> Work {
    header
        .bits
        .to_target()
        .map(|t| t.work())
        .unwrap_or(Work::ZERO)
}

impl Chain {
    /// Opens the chain stored at `path` (creating it with genesis when new)
    /// and resumes from the stored tip, switching to a stored branch with
    /// more work if one exists.
    ///
    /// A damaged store is refused: a main chain that does not link up from
    /// genesis, or a state that does not hash to the tip header's state root
    /// (see [`Store::load`]). Stored blocks no longer reachable from genesis
    /// are deleted rather than refused.
    pub fn open(
        path: &Path,
        params: ChainParams,
        verifier: SharedVerifier,
        limits: MempoolLimits,
    ) -> Result<Self, ChainError> {
        let genesis = params.genesis_block().map_err(StoreError::from)?;
        let store = Store::open(path, params.name, &genesis, &params.genesis_state())?;
        let loaded = store.load()?;
        let mut rows = loaded.index;
        rows.sort_by_key(|(_, _, entry)| (entry.height, entry.seq));
        let mut index: HashMap<BlockHash, IndexEntry> = HashMap::new();
        let mut next_seq = 0u64;
        for (hash, header, stored) in rows {
            let block1_time = if stored.height == Height(1) {
                Some(header.time)
            } else {
                index.get(&header.prev).and_then(|p| p.block1_time)
            };
            next_seq = next_seq.max(stored.seq.saturating_add(1));
            index.insert(
                hash,
                IndexEntry {
                    header,
                    height: stored.height,
                    work: stored.work,
                    seq: stored.seq,
                    block1_time,
                },
            );
        }
        let mut chain = Self {
            params,
            store,
            state: loaded.state,
            index,
            main: loaded.main,
            invalid: KnownInvalid::default(),
            orphans: OrphanPool::default(),
            mempool: Mempool::new(limits),
            mempool_version: 0,
            verifier,
            next_seq,
            parked: HashMap::new(),
            parked_logged: HashSet::new(),
            notes: Vec::new(),
            signatures: SignatureCache::new(SIGNATURE_CACHE_CAPACITY),
            signature_threads: signatures::available_threads(),
            recent: None,
        };
        let switched = chain.switch_to_best_on_start();
        chain.durable(switched)?;
        Ok(chain)
    }

    /// Switches to the stored branch with the most work, on start-up: a
    /// node stopped in the middle of a reorg may hold its old main chain
    /// disconnected, and a branch that fails (its bad block is forgotten,
    /// and the main chain may be left lower than before) must not keep a
    /// valid heavier branch off the main chain. Each failed try forgets or
    /// parks a block, or gives up on one candidate tip, so this ends.
    fn switch_to_best_on_start(&mut self) -> Result<(), ChainError> {
        let mut given_up = HashSet::new();
        while let Some(best) = self.best_candidate_except(&given_up) {
            if self.index.get(&best).map(|e| e.work) <= Some(self.total_work()) {
                break;
            }
            let activation = self.activate(best)?;
            let Some((bad, source)) = activation.failed else {
                break;
            };
            tracing::warn!(block = %bad, reason = %source, "stored block did not connect on start-up");
            if source.is_node_local() {
                // Its branch stays stored and parked; a descendant of the
                // parked block could be picked again, so give up on this tip.
                given_up.insert(best);
            }
        }
        Ok(())
    }

    /// How blocks' signatures are verified: on `threads` threads, skipping
    /// those of up to `cache_capacity` transactions already verified (0:
    /// verify every signature of every block, as if never seen).
    pub fn set_signature_checks(&mut self, threads: usize, cache_capacity: usize) {
        self.signature_threads = threads.max(1);
        self.signatures = SignatureCache::new(cache_capacity);
    }

    /// The chain parameters.
    pub fn params(&self) -> &ChainParams {
        &self.params
    }

    /// The tip hash.
    pub fn tip(&self) -> BlockHash {
        self.main.last().copied().unwrap_or_default()
    }

    /// The tip height.
    pub fn height(&self) -> Height {
        Height(u64::try_from(self.main.len().saturating_sub(1)).unwrap_or(0))
    }

    /// The cumulative work of the main chain.
    pub fn total_work(&self) -> Work {
        self.index
            .get(&self.tip())
            .map(|e| e.work)
            .unwrap_or(Work::ZERO)
    }

    /// The state at the tip.
    pub fn state(&self) -> &State {
        &self.state
    }

    /// The mempool.
    pub fn mempool(&self) -> &Mempool {
        &self.mempool
    }

    /// A snapshot of the tip for watchers.
    pub fn snapshot(&self) -> TipSnapshot {
        TipSnapshot {
            height: self.height(),
            tip: self.tip(),
            total_work: self.total_work(),
            // A connected block's header commits to the state after it, so
            // the tip's header holds the current root without rehashing.
            state_root: self
                .index
                .get(&self.tip())
                .map(|e| e.header.state_root)
                .unwrap_or_default(),
            mempool: self.mempool.len(),
            mempool_bytes: self.mempool.bytes(),
            time: self.index.get(&self.tip()).map_or(0, |e| e.header.time),
            // Rounded to whole hashes: the snapshot is compared for change.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            network_hashrate: self.network_hashrate(NETWORK_HASHRATE_BLOCKS).round() as u64,
            mempool_version: self.mempool_version,
        }
    }

    /// Whether the block (with its body) is stored.
    pub fn has_block(&self, hash: &BlockHash) -> bool {
        self.index.contains_key(hash)
    }

    /// The height of a stored block, and whether it is on the main chain.
    pub fn block_position(&self, hash: &BlockHash) -> Option<(Height, bool)> {
        self.index
            .get(hash)
            .map(|e| (e.height, self.is_on_main(hash, e.height)))
    }

    fn is_on_main(&self, hash: &BlockHash, height: Height) -> bool {
        usize::try_from(height.0)
            .ok()
            .and_then(|h| self.main.get(h))
            == Some(hash)
    }

    /// The main-chain hash at `height`.
    pub fn hash_at(&self, height: Height) -> Option<BlockHash> {
        usize::try_from(height.0)
            .ok()
            .and_then(|h| self.main.get(h))
            .copied()
    }

    /// A stored block.
    pub fn block(&self, hash: &BlockHash) -> Result<Option<Block>, ChainError> {
        Ok(self.store.block(hash)?)
    }

    /// A stored block with its encoded size.
    pub fn block_and_size(&self, hash: &BlockHash) -> Result<Option<(Block, usize)>, ChainError> {
        Ok(self.store.block_and_size(hash)?)
    }

    /// A block locator: the last ten main-chain hashes, then exponentially
    /// sparser ones, ending at genesis.
    pub fn locator(&self) -> Vec<BlockHash> {
        let mut out = Vec::new();
        let mut height = self.main.len().saturating_sub(1);
        let mut step = 1usize;
        loop {
            if let Some(hash) = self.main.get(height) {
                out.push(*hash);
            }
            if height == 0 {
                break;
            }
            if out.len() >= 10 {
                step = step.saturating_mul(2);
            }
            height = height.saturating_sub(step);
        }
        out
    }

    /// Main-chain headers after the first locator hash we share, at most
    /// `max` of them.
    pub fn headers_after(&self, locator: &[BlockHash], max: usize) -> Vec<Header> {
        let start = locator
            .iter()
            .find_map(|hash| {
                self.index
                    .get(hash)
                    .filter(|e| self.is_on_main(hash, e.height))
                    .and_then(|e| usize::try_from(e.height.0).ok())
            })
            .unwrap_or(0);
        self.main
            .iter()
            .skip(start.saturating_add(1))
            .take(max.min(MAX_HEADERS))
            .filter_map(|hash| self.index.get(hash).map(|e| e.header))
            .collect()
    }

    fn header_context(&self, parent_hash: &BlockHash, now: u32) -> Option<(HeaderContext, Height)> {
        let parent = self.index.get(parent_hash)?;
        let mut times = Vec::with_capacity(MEDIAN_TIME_SPAN);
        let mut cursor = Some(parent);
        while let Some(entry) = cursor {
            times.push(entry.header.time);
            if times.len() >= MEDIAN_TIME_SPAN || entry.height == Height::GENESIS {
                break;
            }
            cursor = self.index.get(&entry.header.prev);
        }
        let block1 = if parent.height == Height(1) {
            Some(parent.header.time)
        } else {
            parent.block1_time
        };
        let bits = expected_bits(&self.params, parent.height, parent.header.time, block1).ok()?;
        Some((
            HeaderContext {
                parent: *parent_hash,
                expected_bits: bits,
                median_time_past: median_time_past(&times),
                now,
            },
            parent.height.next()?,
        ))
    }

    /// Validates and stores `block`, switching the main chain to it when its
    /// branch has more work, then does the same for orphans it unblocks.
    pub fn process_block(&mut self, block: Block, now: u32) -> Result<BlockOutcome, ChainError> {
        let result = self.process(block, now, false);
        self.durable(result)
    }

    /// [`Self::process_block`] for one block of a batch (a sync response):
    /// what it stores is not yet durable, and the caller calls
    /// [`Self::make_durable`] once after the batch, before it reports any
    /// of it, so a batch costs one `fsync` instead of one per block.
    pub fn process_in_batch(&mut self, block: Block, now: u32) -> Result<BlockOutcome, ChainError> {
        self.process(block, now, false)
    }

    /// Makes everything stored so far durable (see [`Store::make_durable`]).
    pub fn make_durable(&mut self) -> Result<(), ChainError> {
        self.durable(Ok(()))
    }

    /// Whether something stored is not yet durable.
    pub fn store_has_pending(&self) -> bool {
        self.store.has_pending()
    }

    /// Makes the store durable before `result` is reported: every caller
    /// that changed the chain ends here. A failure to sync is a store error
    /// (node-local); a block's own error still wins over it.
    fn durable<T>(&mut self, result: Result<T, ChainError>) -> Result<T, ChainError> {
        match self.store.make_durable() {
            Ok(()) => result,
            Err(err) => {
                tracing::error!(reason = %err, "cannot make the store durable");
                match result {
                    Ok(_) => Err(err.into()),
                    Err(first) => Err(first),
                }
            }
        }
    }

    /// [`Self::process_block`] for a block nobody asked for (gossip): a
    /// side-branch block is stored only if its branch is within
    /// [`REACH_BLOCKS`] of the tip's work.
    pub fn process_unrequested(
        &mut self,
        block: Block,
        now: u32,
    ) -> Result<BlockOutcome, ChainError> {
        let result = self.process(block, now, true);
        self.durable(result)
    }

    /// Whether a gossiped `block` may be forwarded before its full
    /// validation: [`Relay::Early`] only for a block that would extend the
    /// best chain and whose every signed transaction this node verified
    /// before (admitted to its mempool). Forwarding then costs each hop a
    /// few hashes instead of the block's whole validation, which runs
    /// right after, as for any block.
    ///
    /// Order of checks, cheapest first; the sender of a block that fails
    /// here pays nothing, and nothing here costs more than hashing the
    /// block once:
    /// 1. set lookups: known invalid, already stored;
    /// 2. one header hash: proof of work against the header's own bits;
    /// 3. the parent's index entry: header rules in context (bits, time);
    /// 4. the cumulative work: the block must beat the tip's;
    /// 5. one pass over the body: size, coinbase, transaction ids, merkle
    ///    root;
    /// 6. one cache lookup per signed transaction.
    ///
    /// A block relayed early that then fails validation (a state rule: a
    /// nonce, a balance, the state root) cost its miner a block's proof of
    /// work, and every node it reached one validation, as with BIP 152's
    /// high-bandwidth relay. Whoever forwarded it is not blamed: an honest
    /// node forwards exactly such blocks (see the gossip handler).
    pub fn relay_verdict(&self, block: &Block, now: u32) -> Relay {
        let Screen::Passed { height, work } = self.screen(block, &block.hash(), now) else {
            return Relay::AfterValidation;
        };
        if work <= self.total_work() {
            return Relay::AfterValidation;
        }
        let Ok(ids) = check_block_body(block, height, &self.params) else {
            return Relay::AfterValidation;
        };
        // The coinbase (first, checked above) carries no signature.
        if ids.iter().skip(1).all(|id| self.signatures.contains(id)) {
            Relay::Early
        } else {
            Relay::AfterValidation
        }
    }

    /// The cheap checks every arriving block goes through first, in this
    /// order, none costing more than one header hash: set lookups (known
    /// invalid, already stored); proof of work against the header's own
    /// bits; the parent's index entry (an unknown parent makes an orphan)
    /// and the header's rules in that context; the cumulative work.
    fn screen(&self, block: &Block, hash: &BlockHash, now: u32) -> Screen {
        if self.invalid.contains(hash) || self.invalid.contains(&block.header.prev) {
            return Screen::KnownInvalid;
        }
        if self.index.contains_key(hash) {
            return Screen::Known;
        }
        let sealed = block.header.seal();
        // Proof of work first: it is cheap and decides whether the block
        // may take space in the orphan pool.
        if let Err(source) = protocol::validation::check_proof_of_work(&sealed, &self.params) {
            return Screen::BadProofOfWork(source);
        }
        let Some((context, height)) = self.header_context(&block.header.prev, now) else {
            return Screen::Orphan;
        };
        if let Err(source) = check_header(&sealed, &context, &self.params) {
            return Screen::BadHeader(source);
        }
        let parent_work = self
            .index
            .get(&block.header.prev)
            .map_or(Work::ZERO, |e| e.work);
        match parent_work.checked_add(block_work(&block.header)) {
            Some(work) => Screen::Passed { height, work },
            None => Screen::WorkOverflow,
        }
    }

    fn process(
        &mut self,
        block: Block,
        now: u32,
        unrequested: bool,
    ) -> Result<BlockOutcome, ChainError> {
        let hash = block.hash();
        let outcome = self.accept_one(block, hash, now, unrequested)?;
        let mut best = outcome.clone();
        if !matches!(
            outcome,
            BlockOutcome::Orphan { .. } | BlockOutcome::AlreadyKnown
        ) {
            let mut queue = vec![hash];
            while let Some(parent) = queue.pop() {
                for child in self.orphans.children_of(&parent) {
                    let child_hash = child.hash();
                    if let Ok(child_outcome) = self.accept_one(child, child_hash, now, unrequested)
                    {
                        if matches!(child_outcome, BlockOutcome::NewTip { .. }) {
                            best = child_outcome;
                        }
                        queue.push(child_hash);
                    }
                }
            }
        }
        Ok(best)
    }

    fn accept_one(
        &mut self,
        block: Block,
        hash: BlockHash,
        now: u32,
        unrequested: bool,
    ) -> Result<BlockOutcome, ChainError> {
        let (height, work) = match self.screen(&block, &hash, now) {
            Screen::KnownInvalid => {
                self.invalid.insert(hash);
                return Err(ChainError::KnownInvalid { hash });
            }
            Screen::Known => return Ok(BlockOutcome::AlreadyKnown),
            Screen::BadProofOfWork(source) => {
                return Err(ChainError::InvalidHeader { hash, source })
            }
            Screen::Orphan => {
                let parent = block.header.prev;
                self.orphans.insert(hash, block);
                return Ok(BlockOutcome::Orphan { parent });
            }
            Screen::BadHeader(source) => {
                if !matches!(source, HeaderError::TimeTooNew { .. }) {
                    self.invalid.insert(hash);
                }
                return Err(ChainError::InvalidHeader { hash, source });
            }
            Screen::WorkOverflow => {
                return Err(ChainError::InvalidBlock {
                    hash,
                    source: BlockError::Overflow("cumulative work"),
                })
            }
            Screen::Passed { height, work } => (height, work),
        };
        let checked = match CheckedBlock::check(block, height, &self.params) {
            Ok(checked) => checked,
            Err(source) => {
                self.invalid.insert(hash);
                return Err(ChainError::InvalidBlock { hash, source });
            }
        };
        let block = checked.block();
        // A block that becomes the tip is fully applied at once. One that
        // would sit on a side branch is refused, cheapest check first, when
        // it forks too deep or (unasked for) lags too far behind: it costs
        // its sender little to mint and this node a stored, synced block.
        // Otherwise its signatures and other stateless rules are checked
        // now, so it cannot carry garbage into the store.
        if work <= self.total_work() {
            let depth = self.fork_depth(&block.header.prev);
            if depth > MAX_FORK_DEPTH {
                return Err(ChainError::ForkTooDeep {
                    hash,
                    depth,
                    max: MAX_FORK_DEPTH,
                });
            }
            if unrequested {
                let behind = self.blocks_behind(work);
                if behind > REACH_BLOCKS {
                    return Err(ChainError::OutOfReach { hash, behind });
                }
            }
            self.check_side_block_txs(&checked, hash)?;
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        let stored = StoredIndex {
            header: block.header,
            height,
            work,
            seq,
        };
        self.store.put_encoded(&hash, checked.encoded(), &stored)?;
        let block1_time = if height == Height(1) {
            Some(block.header.time)
        } else {
            self.index
                .get(&block.header.prev)
                .and_then(|p| p.block1_time)
        };
        self.index.insert(
            hash,
            IndexEntry {
                header: block.header,
                height,
                work,
                seq,
                block1_time,
            },
        );
        if work > self.total_work() {
            let txs = block.txs.len();
            // Connecting it finds it here rather than reading it back.
            self.recent = Some(checked);
            let activation = self.activate(hash);
            self.recent = None;
            let activation = activation?;
            if let Some((bad, source)) = activation.failed {
                if source.is_node_local() {
                    return Err(ChainError::AwaitingData { hash: bad, source });
                }
                return Err(ChainError::InvalidBlock { hash: bad, source });
            }
            let reorg = activation.reorg;
            Ok(BlockOutcome::NewTip {
                height: self.height(),
                hash: self.tip(),
                txs,
                reorg,
            })
        } else {
            Ok(BlockOutcome::SideChain { height, hash })
        }
    }

    /// The cumulative work of the stored block `hash`.
    pub fn work_of(&self, hash: &BlockHash) -> Option<Work> {
        self.index.get(hash).map(|e| e.work)
    }

    /// Blocks between the tip and the main-chain ancestor of `parent`
    /// (`parent`'s own depth when it is on the main chain); stops counting
    /// past [`MAX_FORK_DEPTH`].
    fn fork_depth(&self, parent: &BlockHash) -> u64 {
        let mut cursor = *parent;
        for _ in 0..=MAX_FORK_DEPTH {
            let Some(entry) = self.index.get(&cursor) else {
                return u64::MAX;
            };
            if self.is_on_main(&cursor, entry.height) {
                return self.height().0.saturating_sub(entry.height.0);
            }
            cursor = entry.header.prev;
        }
        u64::MAX
    }

    /// How many blocks of the tip's work `work` is behind the tip's total,
    /// rounded up.
    fn blocks_behind(&self, work: Work) -> u64 {
        let tip_block = self
            .index
            .get(&self.tip())
            .map_or(Work::ZERO, |e| block_work(&e.header));
        let deficit = self.total_work().checked_sub(work).unwrap_or(Work::ZERO);
        if tip_block == Work::ZERO {
            return 0;
        }
        let per_block = crate::metrics::work_f64(&tip_block);
        let behind = (crate::metrics::work_f64(&deficit) / per_block).ceil();
        // Saturating: the ratio of two works is finite and non-negative.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let behind = behind as u64;
        behind
    }

    fn check_side_block_txs(
        &mut self,
        checked: &CheckedBlock,
        hash: BlockHash,
    ) -> Result<(), ChainError> {
        let block = checked.block();
        // Cheap rules of every transaction first, then the signatures not
        // verified before, on every core.
        let mut failure = None;
        for (index, tx) in block.txs.iter().enumerate() {
            if let Transaction::Signed(signed) = tx {
                if let Err(source) = check_tx_rules(signed, &self.params) {
                    failure = Some((index, signed, source));
                    break;
                }
            }
        }
        if failure.is_none() {
            let presigned = signatures::verify_checked_block(
                checked,
                &self.params,
                &mut self.signatures,
                self.signature_threads,
            );
            failure =
                block
                    .txs
                    .iter()
                    .zip(&presigned)
                    .enumerate()
                    .find_map(|(index, (tx, verified))| match tx {
                        Transaction::Signed(signed) if !verified => signed
                            .verify_signature(self.params.chain_id)
                            .err()
                            .map(|err| (index, signed, TxError::from(err))),
                        _ => None,
                    });
        }
        match failure {
            Some((index, signed, source)) => {
                self.invalid.insert(hash);
                Err(ChainError::InvalidBlock {
                    hash,
                    source: BlockError::Tx {
                        index,
                        txid: signed.id().unwrap_or_default(),
                        source: Box::new(source),
                    },
                })
            }
            None => Ok(()),
        }
    }

    /// The stored block with the most work (first seen wins ties) that is
    /// not known to be invalid and not parked. (A descendant of a parked
    /// block may be picked; connecting its branch parks again at the same
    /// block and leaves the main chain where it was.)
    fn best_candidate(&self) -> Option<BlockHash> {
        self.best_candidate_except(&HashSet::new())
    }

    /// [`Chain::best_candidate`] among the blocks not in `skip`.
    fn best_candidate_except(&self, skip: &HashSet<BlockHash>) -> Option<BlockHash> {
        self.index
            .iter()
            .filter(|(hash, _)| {
                !self.invalid.contains(hash)
                    && !self.parked.contains_key(*hash)
                    && !skip.contains(*hash)
            })
            .max_by(|(_, a), (_, b)| a.work.cmp(&b.work).then(b.seq.cmp(&a.seq)))
            .map(|(hash, _)| *hash)
    }

    /// Makes `target` the tip: disconnects the main chain down to the fork
    /// point and connects the branch. When a branch block fails, it and its
    /// descendants are marked invalid and, if the old chain had more work,
    /// the old chain is restored. Transactions of disconnected blocks go
    /// back to the mempool.
    fn activate(&mut self, target: BlockHash) -> Result<Activation, ChainError> {
        let old_tip = self.tip();
        let old_height = self.height();
        let old_work = self.total_work();
        let mut branch = Vec::new();
        let mut cursor = target;
        let fork_height = loop {
            let entry = self
                .index
                .get(&cursor)
                .ok_or_else(|| StoreError::Missing(format!("index entry of {cursor}")))?;
            if self.is_on_main(&cursor, entry.height) {
                break entry.height;
            }
            branch.push(cursor);
            cursor = entry.header.prev;
        };
        let mut disconnected = Vec::new();
        while self.height() > fork_height {
            disconnected.push(self.disconnect_tip()?);
        }
        let mut failed = None;
        for hash in branch.iter().rev() {
            if let Err(source) = self.connect(hash)? {
                failed = Some((*hash, source));
                break;
            }
        }
        if let Some((bad, source)) = &failed {
            if source.is_node_local() {
                // Not the block's fault: keep it, judge it again later.
                let missing = missing_data(source);
                if self.parked_logged.insert(*bad) {
                    tracing::warn!(block = %bad, reason = %source, "block parked until its data arrives");
                } else {
                    tracing::debug!(block = %bad, reason = %source, "block still parked");
                }
                self.parked.insert(*bad, missing);
            } else {
                self.mark_invalid(*bad);
            }
            if self.total_work() < old_work {
                while self.height() > fork_height {
                    self.disconnect_tip()?;
                }
                for block in disconnected.iter().rev() {
                    // These were connected before, so they connect again.
                    if let Err(source) = self.connect(&block.hash())? {
                        tracing::error!(block = %block.hash(), reason = %source, "old main chain block no longer connects");
                        break;
                    }
                }
                disconnected.clear();
            }
        }
        let now = Instant::now();
        let next_height = self.height().next().unwrap_or(self.height());
        // Re-admission is cheap: fraud proofs are not replayed for the
        // mempool (the block that includes them pays for that).
        let ctx = TipContext {
            params: &self.params,
            next_height,
            verifier: &DeferReplays,
        };
        for block in disconnected.iter().rev() {
            for tx in &block.txs {
                if let Transaction::Signed(signed) = tx {
                    let _ = self
                        .mempool
                        .insert(signed.clone(), &mut self.state, &ctx, now);
                }
            }
        }
        self.mempool.prune(&self.state, now);
        self.mempool_version = self.mempool_version.wrapping_add(1);
        let depth = u64::try_from(disconnected.len()).unwrap_or(u64::MAX);
        Ok(Activation {
            reorg: (depth > 0).then_some(Reorg {
                depth,
                old_tip,
                old_height,
            }),
            failed,
        })
    }

    /// Forgets `bad` and every stored descendant, in one store transaction,
    /// and remembers them as invalid. The index loses them only once the
    /// store has committed; if the store fails they stay indexed (as they
    /// stay on disk) but are still known invalid, so they are never
    /// connected, and the next start judges them again.
    fn mark_invalid(&mut self, bad: BlockHash) {
        let mut children: HashMap<BlockHash, Vec<BlockHash>> = HashMap::new();
        for (hash, entry) in &self.index {
            children.entry(entry.header.prev).or_default().push(*hash);
        }
        let mut doomed = vec![bad];
        let mut frontier = vec![bad];
        while let Some(parent) = frontier.pop() {
            for child in children.get(&parent).into_iter().flatten() {
                doomed.push(*child);
                frontier.push(*child);
            }
        }
        self.invalid.extend(doomed.iter().copied());
        match self.store.forget_all(&doomed) {
            Ok(()) => {
                for hash in &doomed {
                    self.index.remove(hash);
                    self.parked.remove(hash);
                }
                if doomed.len() > 1 {
                    tracing::info!(block = %bad, descendants = doomed.len().saturating_sub(1), "forgot an invalid block and its descendants");
                }
            }
            Err(err) => {
                tracing::error!(block = %bad, blocks = doomed.len(), reason = %err, "cannot remove an invalid block and its descendants from the store; they stay stored, known invalid");
            }
        }
    }

    /// Applies the stored block `hash` on top of the tip and commits it.
    fn connect(&mut self, hash: &BlockHash) -> Result<Result<(), BlockError>, ChainError> {
        let height = self
            .index
            .get(hash)
            .map(|e| e.height)
            .ok_or_else(|| StoreError::Missing(format!("index entry of {hash}")))?;
        // The block just accepted is at hand, checked; any other is read
        // back and its body checked again (one pass, as when it came).
        let checked = match self.recent.take() {
            Some(recent) if recent.hash() == *hash && recent.height() == height => recent,
            other => {
                self.recent = other;
                let block = self
                    .store
                    .block(hash)?
                    .ok_or_else(|| StoreError::Missing(format!("block {hash}")))?;
                match CheckedBlock::check(block, height, &self.params) {
                    Ok(checked) => checked,
                    Err(source) => return Ok(Err(source)),
                }
            }
        };
        let block = checked.block();
        let size = checked.encoded().len();
        // The block's header, proof of work and structure were checked
        // when it was stored. Its signatures now, those the mempool
        // verified skipped and the rest on every core; then the state, in
        // order (see `crate::signatures` for why the result is the same).
        let presigned = signatures::verify_checked_block(
            &checked,
            &self.params,
            &mut self.signatures,
            self.signature_threads,
        );
        let undo = match apply_checked_block(
            &mut self.state,
            &checked,
            &self.params,
            &*self.verifier,
            Presigned::These(&presigned),
        ) {
            Ok(undo) => undo,
            Err(source) => return Ok(Err(source)),
        };
        let delta = StateDelta::after(&self.state, &undo);
        if let Err(err) = self
            .store
            .connect(checked.ids(), hash, height, &undo, &delta)
        {
            undo_block(&mut self.state, &undo);
            return Err(err.into());
        }
        self.main.push(*hash);
        self.note(ChainNote::Connected {
            height,
            hash: *hash,
            time: block.header.time,
            txs: block.txs.len(),
            bytes: size,
            miner: match block.txs.first() {
                Some(Transaction::Coinbase(cb)) => cb.miner,
                _ => Address::ZERO,
            },
            jobs: delta
                .jobs
                .iter()
                .map(|(id, job)| (*id, job.as_ref().map(|j| j.status)))
                .collect(),
            challenges: delta
                .jobs
                .iter()
                .filter_map(|(_, job)| job.as_ref())
                .flat_map(|job| job.challenges.iter())
                .filter(|c| c.height == height)
                .map(|c| c.outcome)
                .collect(),
        });
        for id in checked.ids() {
            self.mempool.remove(id);
        }
        Ok(Ok(()))
    }

    /// Rolls the tip back with its undo data and commits that.
    fn disconnect_tip(&mut self) -> Result<Block, ChainError> {
        let hash = self.tip();
        let height = self.height();
        let block = self
            .store
            .block(&hash)?
            .ok_or_else(|| StoreError::Missing(format!("block {hash}")))?;
        let undo = self.store.undo(&hash)?;
        // In place, touching only the block's entries; if the store cannot
        // commit, the same entries are written back.
        let redo = self.state.redo_for(&undo);
        undo_block(&mut self.state, &undo);
        let delta = StateDelta::after(&self.state, &undo);
        if let Err(err) = self.store.disconnect(&block, &hash, height, &delta) {
            undo_block(&mut self.state, &redo);
            return Err(err.into());
        }
        self.main.pop();
        self.note(ChainNote::Disconnected { height, hash });
        Ok(block)
    }

    fn note(&mut self, note: ChainNote) {
        if self.notes.len() >= MAX_NOTES {
            self.notes.remove(0);
        }
        self.notes.push(note);
    }

    /// The network's hash rate estimated over the last `blocks` main-chain
    /// blocks after genesis: their work over the time they took (0 with
    /// fewer than two such blocks or no time between them).
    pub fn network_hashrate(&self, blocks: u64) -> f64 {
        // Genesis is left out: its time is the chain's birth, not a block's
        // solve time.
        let top = self.height();
        let bottom = Height(top.0.saturating_sub(blocks).max(1));
        if bottom >= top {
            return 0.0;
        }
        let (Some(top_hash), Some(bottom_hash)) = (self.hash_at(top), self.hash_at(bottom)) else {
            return 0.0;
        };
        let (Some(top), Some(bottom)) = (self.index.get(&top_hash), self.index.get(&bottom_hash))
        else {
            return 0.0;
        };
        let seconds = top.header.time.saturating_sub(bottom.header.time);
        if seconds == 0 {
            return 0.0;
        }
        let work = top.work.checked_sub(bottom.work).unwrap_or(Work::ZERO);
        crate::metrics::work_f64(&work) / f64::from(seconds)
    }

    /// What changed on the main chain since the last call, oldest first.
    pub fn take_notes(&mut self) -> Vec<ChainNote> {
        std::mem::take(&mut self.notes)
    }

    /// A transaction by id: from the mempool, or from the main chain with
    /// its block's hash and height.
    pub fn transaction(&self, id: &TxId) -> Result<Option<FoundTx>, ChainError> {
        if let Some(tx) = self.mempool.get(id) {
            return Ok(Some((Transaction::Signed(tx.clone()), None)));
        }
        let Some(place) = self.store.tx_place(id)? else {
            return Ok(None);
        };
        // The index is written with the main chain; check it still agrees.
        if self.hash_at(place.height) != Some(place.block) {
            return Ok(None);
        }
        let Some(block) = self.store.block(&place.block)? else {
            return Ok(None);
        };
        let tx = usize::try_from(place.position)
            .ok()
            .and_then(|i| block.txs.get(i))
            .cloned();
        Ok(tx.map(|tx| (tx, Some((place.block, place.height)))))
    }

    /// Blocks parked for want of data, with the digest each was missing when
    /// known.
    pub fn parked(&self) -> Vec<(BlockHash, Option<Digest>)> {
        self.parked.iter().map(|(h, d)| (*h, *d)).collect()
    }

    /// Judges the parked blocks again: forgets that they were parked and
    /// switches to the best branch if it has more work than the tip. A block
    /// still missing its data is parked again. Returns the new tip when the
    /// main chain moved.
    pub fn retry_parked(&mut self) -> Result<Option<BlockOutcome>, ChainError> {
        let result = self.retry_parked_deferred();
        self.durable(result)
    }

    fn retry_parked_deferred(&mut self) -> Result<Option<BlockOutcome>, ChainError> {
        if self.parked.is_empty() {
            return Ok(None);
        }
        self.parked.clear();
        let Some(best) = self.best_candidate() else {
            return Ok(None);
        };
        if self.index.get(&best).map(|e| e.work) <= Some(self.total_work()) {
            return Ok(None);
        }
        let old_tip = self.tip();
        let activation = self.activate(best)?;
        if let Some((bad, source)) = &activation.failed {
            if !source.is_node_local() {
                tracing::warn!(block = %bad, reason = %source, "parked block is invalid");
            }
        }
        if self.tip() == old_tip {
            return Ok(None);
        }
        Ok(Some(BlockOutcome::NewTip {
            height: self.height(),
            hash: self.tip(),
            txs: 0,
            reorg: activation.reorg,
        }))
    }

    /// Validates `tx` against the tip and adds it to the mempool.
    pub fn submit_tx(&mut self, tx: SignedTx) -> Result<TxId, MempoolError> {
        let next_height = self.height().next().unwrap_or(self.height());
        // Admission runs the cheap checks only: signature, nonce, fee, bond,
        // the job's state and a fraud proof's Merkle paths. No replay: a
        // transaction that is never mined must cost this node almost nothing.
        let ctx = TipContext {
            params: &self.params,
            next_height,
            verifier: &DeferReplays,
        };
        let id = self
            .mempool
            .insert(tx, &mut self.state, &ctx, Instant::now())?;
        // Admission verified its signature: a block carrying it will not.
        self.signatures.insert(id);
        self.mempool_version = self.mempool_version.wrapping_add(1);
        Ok(id)
    }

    /// The nonce the next transaction from `address` should carry.
    pub fn next_nonce(&self, address: &Address) -> u64 {
        self.mempool.next_nonce(address, &self.state)
    }

    /// A block template on the tip paying subsidy and fees to `miner`.
    pub fn template(&mut self, miner: Address, now: u32) -> Result<BlockTemplate, ChainError> {
        let tip = self.tip();
        let template_error = |source| ChainError::InvalidBlock {
            hash: BlockHash::ZERO,
            source,
        };
        let (context, height) = self
            .header_context(&tip, now)
            .ok_or_else(|| StoreError::Missing(format!("index entry of tip {tip}")))?;
        let ctx = TipContext {
            params: &self.params,
            next_height: height,
            verifier: &*self.verifier,
        };
        // Room for the header, the coinbase and the length prefixes.
        let max_bytes = self.params.max_block_bytes.saturating_sub(1024);
        let max_txs = self.params.max_block_txs.saturating_sub(1);
        let (txs, _) = self
            .mempool
            .select(&mut self.state, &ctx, max_txs, max_bytes);
        // A block may carry only so many fraud proofs; the mempool may hold
        // more. Without this cap, a few funded proofs would leave every
        // template invalid and stop mining.
        let mut txs = cap_fraud_proofs(txs, self.params.max_block_fraud_proofs);
        // The mempool judges against the tip state; the block also settles
        // and expires jobs at its start and replays its fraud proofs. A
        // transaction that fails there is left out, with the rest of its
        // sender's queue, and the template is built again: at most once per
        // transaction.
        let (all, state_root) = loop {
            let fees = txs
                .iter()
                .try_fold(Amount::ZERO, |sum, tx| sum.checked_add(tx.body.fee))
                .ok_or(template_error(BlockError::Overflow("fees")))?;
            let amount = self
                .params
                .subsidy(height)
                .checked_add(fees)
                .ok_or(template_error(BlockError::Overflow("subsidy plus fees")))?;
            let mut all = Vec::with_capacity(txs.len().saturating_add(1));
            all.push(Transaction::Coinbase(Coinbase {
                height,
                miner,
                amount,
            }));
            all.extend(txs.iter().cloned().map(Transaction::Signed));
            // Every transaction came from the mempool, which verified its
            // signature on admission.
            match template_state_root_presigned(
                &mut self.state,
                &all,
                height,
                &self.params,
                &*self.verifier,
                Presigned::Everything,
            ) {
                Ok(root) => break (all, root),
                Err(BlockError::Tx { index, source, .. }) if index >= 1 => {
                    let position = index.saturating_sub(1);
                    if position >= txs.len() {
                        return Err(template_error(BlockError::Tx {
                            index,
                            txid: TxId::default(),
                            source,
                        }));
                    }
                    let dropped = txs.remove(position);
                    tracing::debug!(sender = %dropped.body.from, nonce = dropped.body.nonce, reason = %source, "transaction left out of the block template");
                    txs.retain(|tx| {
                        tx.body.from != dropped.body.from || tx.body.nonce < dropped.body.nonce
                    });
                }
                Err(err) => return Err(template_error(err)),
            }
        };
        let ids = all
            .iter()
            .map(Transaction::id)
            .collect::<Result<Vec<TxId>, _>>()
            .map_err(|e| template_error(e.into()))?;
        let header = Header {
            version: self.params.block_version,
            prev: tip,
            merkle_root: merkle_root(&ids),
            state_root,
            time: now.max(context.median_time_past.saturating_add(1)),
            bits: context.expected_bits,
            nonce: 0,
        };
        Ok(BlockTemplate {
            block: Block { header, txs: all },
            height,
        })
    }
}

/// Keeps the first `max` fraud proofs of `txs` (selection order: the best
/// paying first) and drops the rest, each with the later transactions of
/// its sender, which may depend on it.
fn cap_fraud_proofs(txs: Vec<SignedTx>, max: usize) -> Vec<SignedTx> {
    let mut proofs = 0usize;
    let mut cut: Vec<(Address, u64)> = Vec::new();
    let mut kept = Vec::with_capacity(txs.len());
    for tx in txs {
        let from = tx.body.from;
        let nonce = tx.body.nonce;
        if cut
            .iter()
            .any(|(sender, first)| *sender == from && nonce >= *first)
        {
            continue;
        }
        if matches!(tx.body.kind, protocol::TxKind::FraudProof { .. }) {
            if proofs >= max {
                cut.push((from, nonce));
                continue;
            }
            proofs = proofs.saturating_add(1);
        }
        kept.push(tx);
    }
    kept
}

/// The digest a node-local block failure was waiting for, if it says.
fn missing_data(source: &BlockError) -> Option<Digest> {
    match source {
        BlockError::Tx { source, .. } => match &**source {
            protocol::TxError::Job(protocol::JobError::CannotJudge {
                reason: VerifyError::DataUnavailable(digest),
                ..
            }) => Some(*digest),
            _ => None,
        },
        _ => None,
    }
}

/// The result of switching to a branch.
#[derive(Debug)]
struct Activation {
    reorg: Option<Reorg>,
    failed: Option<(BlockHash, BlockError)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Amount, TxBody, TxKind};

    const NOW: u32 = 1_767_225_600 + 1000;

    fn open(dir: &Path) -> Chain {
        Chain::open(
            &dir.join("chain.redb"),
            ChainParams::regtest(),
            Arc::new(NoTrainingEngine),
            MempoolLimits::default(),
        )
        .unwrap()
    }

    fn mine(chain: &mut Chain, miner: Address, now: u32) -> Block {
        let mut block = chain.template(miner, now).unwrap().block;
        let target = block.header.bits.to_target().unwrap();
        let mut hasher = block.header.hasher();
        while !target.is_met_by(&BlockHash(hasher.hash_with_nonce(block.header.nonce))) {
            block.header.nonce += 1;
        }
        block
    }

    fn transfer(nonce: u64, amount: u64) -> SignedTx {
        TxBody {
            from: Address::ZERO,
            nonce,
            fee: Amount(500),
            kind: TxKind::Transfer {
                to: Address([5; 32]),
                amount: Amount(amount),
            },
        }
        .sign(
            &protocol::params::faucet_key(),
            ChainParams::regtest().chain_id,
        )
        .unwrap()
    }

    #[test]
    fn more_work_branch_wins_and_disconnected_txs_return_to_the_mempool() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let mut a = open(dir_a.path());
        let mut b = open(dir_b.path());

        let tx = transfer(0, 1000);
        let txid = a.submit_tx(tx.clone()).unwrap();
        let mut a_blocks = Vec::new();
        for i in 0..3 {
            let block = mine(&mut a, Address([1; 32]), NOW + i);
            assert!(matches!(
                a.process_block(block.clone(), NOW + 10).unwrap(),
                BlockOutcome::NewTip { .. }
            ));
            a_blocks.push(block);
        }
        assert!(a.mempool().is_empty());
        assert_eq!(a.state().account(&Address([5; 32])).balance, Amount(1000));
        let a_tip = a.tip();

        let mut b_blocks = Vec::new();
        for i in 0..4 {
            let block = mine(&mut b, Address([2; 32]), NOW + i);
            b.process_block(block.clone(), NOW + 10).unwrap();
            b_blocks.push(block);
        }
        // Equal work does not switch: first seen wins.
        for block in b_blocks.iter().take(3) {
            assert!(matches!(
                a.process_block(block.clone(), NOW + 10).unwrap(),
                BlockOutcome::SideChain { .. }
            ));
        }
        assert_eq!(a.tip(), a_tip);
        let last = b_blocks.last().unwrap().clone();
        match a.process_block(last, NOW + 10).unwrap() {
            BlockOutcome::NewTip {
                reorg: Some(reorg), ..
            } => {
                assert_eq!(reorg.depth, 3);
                assert_eq!(reorg.old_tip, a_tip);
            }
            other => panic!("expected a reorg, got {other:?}"),
        }
        assert_eq!(a.tip(), b.tip());
        assert_eq!(a.state().root().unwrap(), b.state().root().unwrap());
        assert!(
            a.mempool().contains(&txid),
            "the disconnected transfer is back in the mempool"
        );
        assert_eq!(a.state().account(&Address([5; 32])).balance, Amount::ZERO);
        assert_eq!(a.snapshot().state_root, a.state().root().unwrap());

        // A restart resumes on the same tip and state.
        let tip = a.tip();
        let root = a.state().root().unwrap();
        drop(a);
        let a = open(dir_a.path());
        assert_eq!(a.tip(), tip);
        assert_eq!(a.height(), Height(4));
        assert_eq!(a.state().root().unwrap(), root);
        assert_eq!(
            a.headers_after(&[a_blocks[0].hash()], 10).len(),
            4,
            "unknown locator falls back to genesis"
        );
    }

    /// Grinds `header`'s nonce until its proof of work is valid or (with
    /// `valid` false) invalid.
    fn grind(header: &mut Header, valid: bool) {
        let target = header.bits.to_target().unwrap();
        header.nonce = 0;
        while target.is_met_by(&header.hash()) != valid {
            header.nonce += 1;
        }
    }

    #[test]
    fn only_a_block_that_would_be_the_tip_with_every_signature_seen_is_relayed_early() {
        let dirs = [(); 3].map(|()| tempfile::tempdir().unwrap());
        let mut a = open(dirs[0].path());
        let mut b = open(dirs[1].path());
        let mut c = open(dirs[2].path());

        // `b` mines a transfer that `a` admitted (so verified) before.
        let seen = transfer(0, 1000);
        a.submit_tx(seen.clone()).unwrap();
        b.submit_tx(seen).unwrap();
        let block = mine(&mut b, Address([2; 32]), NOW);
        assert_eq!(a.relay_verdict(&block, NOW + 10), Relay::Early);

        // `c` mines one that `a` never saw: validated first.
        c.submit_tx(transfer(0, 2000)).unwrap();
        let unseen = mine(&mut c, Address([3; 32]), NOW);
        assert_eq!(a.relay_verdict(&unseen, NOW + 10), Relay::AfterValidation);

        // Broken proof of work, or a body that does not match the header.
        let mut bad_pow = block.clone();
        grind(&mut bad_pow.header, false);
        assert_eq!(a.relay_verdict(&bad_pow, NOW + 10), Relay::AfterValidation);
        let mut bad_body = block.clone();
        bad_body.txs.truncate(1);
        assert_eq!(a.relay_verdict(&bad_body, NOW + 10), Relay::AfterValidation);

        // Right in every cheap check, wrong in a state rule: relayed early,
        // and the full validation still refuses it.
        let mut bad_root = block.clone();
        bad_root.header.state_root = protocol::StateRoot([0x42; 32]);
        grind(&mut bad_root.header, true);
        assert_eq!(a.relay_verdict(&bad_root, NOW + 10), Relay::Early);
        assert!(matches!(
            a.process_unrequested(bad_root.clone(), NOW + 10),
            Err(ChainError::InvalidBlock { .. })
        ));
        assert_eq!(a.height(), Height::GENESIS);
        assert_eq!(a.relay_verdict(&bad_root, NOW + 10), Relay::AfterValidation);

        // Once stored, and for a sibling with no more work: not early.
        assert!(matches!(
            a.process_unrequested(block.clone(), NOW + 10).unwrap(),
            BlockOutcome::NewTip { .. }
        ));
        assert_eq!(a.relay_verdict(&block, NOW + 10), Relay::AfterValidation);
        assert_eq!(a.relay_verdict(&unseen, NOW + 10), Relay::AfterValidation);
        // A child of the tip with only a coinbase: nothing to have seen.
        let child = mine(&mut a, Address([1; 32]), NOW + 1);
        assert_eq!(a.relay_verdict(&child, NOW + 10), Relay::Early);
    }

    /// A mined coinbase-only block on `parent` at `height`, committing to
    /// `state_root` whether or not it is right.
    fn coinbase_block(
        parent: &Header,
        height: u64,
        miner: u8,
        state_root: protocol::StateRoot,
    ) -> Block {
        let params = ChainParams::regtest();
        let coinbase = Transaction::Coinbase(Coinbase {
            height: Height(height),
            miner: Address([miner; 32]),
            amount: params.subsidy(Height(height)),
        });
        let mut header = Header {
            version: params.block_version,
            prev: parent.hash(),
            merkle_root: merkle_root(&[coinbase.id().unwrap()]),
            state_root,
            time: parent.time + 1,
            bits: params.pow_limit,
            nonce: 0,
        };
        let target = header.bits.to_target().unwrap();
        while !target.is_met_by(&header.hash()) {
            header.nonce += 1;
        }
        Block {
            header,
            txs: vec![coinbase],
        }
    }

    #[test]
    fn an_invalid_block_is_forgotten_with_all_its_descendants_in_memory_and_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut chain = open(dir.path());
        let genesis = chain.params().genesis_block().unwrap();
        for i in 0..3 {
            let block = mine(&mut chain, Address([1; 32]), NOW + i);
            chain.process_block(block, NOW + 10).unwrap();
        }
        let honest_tip = chain.tip();
        // A branch from genesis whose first block commits to a wrong state
        // root: only connecting it finds that out. Its first three blocks
        // have no more work than the main chain and are stored on the side;
        // the fourth makes it heavier, and activating it fails.
        let mut branch = vec![coinbase_block(
            &genesis.header,
            1,
            2,
            protocol::StateRoot([0xbb; 32]),
        )];
        for height in 2..=4u64 {
            let parent = branch.last().unwrap().header;
            branch.push(coinbase_block(
                &parent,
                height,
                2,
                protocol::StateRoot([0xbb; 32]),
            ));
        }
        let hashes: Vec<BlockHash> = branch.iter().map(Block::hash).collect();
        for block in branch.iter().take(3) {
            assert!(matches!(
                chain.process_block(block.clone(), NOW + 10).unwrap(),
                BlockOutcome::SideChain { .. }
            ));
        }
        let err = chain
            .process_block(branch[3].clone(), NOW + 10)
            .unwrap_err();
        assert!(
            matches!(&err, ChainError::InvalidBlock { hash, source: BlockError::BadStateRoot { .. } } if *hash == hashes[0]),
            "{err}"
        );
        assert_eq!(chain.tip(), honest_tip, "the honest chain is restored");
        for hash in &hashes {
            assert!(!chain.has_block(hash), "forgotten in memory");
            assert!(chain.block(hash).unwrap().is_none(), "forgotten on disk");
        }
        assert!(matches!(
            chain.process_block(branch[2].clone(), NOW + 10),
            Err(ChainError::KnownInvalid { .. })
        ));
        drop(chain);
        let chain = open(dir.path());
        assert_eq!(chain.tip(), honest_tip);
        for hash in &hashes {
            assert!(!chain.has_block(hash));
        }
    }

    #[test]
    fn a_start_after_a_failed_branch_goes_on_to_the_best_valid_branch() {
        // Blocks mined elsewhere: a valid chain of three.
        let source = tempfile::tempdir().unwrap();
        let mut miner = open(source.path());
        let honest: Vec<Block> = (0..3)
            .map(|i| {
                let block = mine(&mut miner, Address([1; 32]), NOW + i);
                miner.process_block(block.clone(), NOW + 10).unwrap();
                block
            })
            .collect();
        let genesis = miner.params().genesis_block().unwrap();
        drop(miner);

        // A store on genesis holding, off the main chain, that valid chain
        // and a heavier branch whose first block is invalid: what a node
        // killed after disconnecting its main chain for that branch leaves.
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path()));
        let params = ChainParams::regtest();
        let store = Store::open(
            &dir.path().join("chain.redb"),
            params.name,
            &genesis,
            &params.genesis_state(),
        )
        .unwrap();
        let mut bad = vec![coinbase_block(
            &genesis.header,
            1,
            2,
            protocol::StateRoot([0xbb; 32]),
        )];
        for height in 2..=5u64 {
            let parent = bad.last().unwrap().header;
            bad.push(coinbase_block(
                &parent,
                height,
                2,
                protocol::StateRoot([0xbb; 32]),
            ));
        }
        for (branch, first_seq) in [(&honest, 10u64), (&bad, 20u64)] {
            let mut work = block_work(&genesis.header);
            for (i, block) in branch.iter().enumerate() {
                let i = u64::try_from(i).unwrap();
                work = work.checked_add(block_work(&block.header)).unwrap();
                let entry = StoredIndex {
                    header: block.header,
                    height: Height(i + 1),
                    work,
                    seq: first_seq + i,
                };
                store.put_block(block, &entry).unwrap();
            }
        }
        drop(store);

        let chain = open(dir.path());
        assert_eq!(
            chain.tip(),
            honest[2].hash(),
            "the failed branch is forgotten and the valid one connected"
        );
        assert_eq!(chain.height(), Height(3));
        for block in &bad {
            assert!(!chain.has_block(&block.hash()));
        }
    }

    #[test]
    fn templates_carry_no_more_fraud_proofs_than_a_block_may() {
        let proof = |from: u8, nonce: u64| SignedTx {
            body: TxBody {
                from: Address([from; 32]),
                nonce,
                fee: Amount(1),
                kind: TxKind::FraudProof {
                    job: protocol::JobId([7; 32]),
                    claim: protocol::FraudClaim::InitialState {
                        first: protocol::OpenedLeaf {
                            leaf: protocol::SegmentLeaf {
                                state: protocol::Digest([0; 32]),
                                loss: protocol::F32Bits::from_f32(0.0),
                            },
                            path: Vec::new(),
                        },
                    },
                },
            },
            signature: protocol::Signature([0; 64]),
        };
        let plain = |from: u8, nonce: u64| SignedTx {
            body: TxBody {
                from: Address([from; 32]),
                nonce,
                fee: Amount(1),
                kind: TxKind::Transfer {
                    to: Address([9; 32]),
                    amount: Amount(1),
                },
            },
            signature: protocol::Signature([0; 64]),
        };
        let txs = vec![
            proof(1, 0),
            plain(2, 0),
            proof(3, 0),
            proof(4, 0),
            plain(4, 1),
            plain(1, 1),
            proof(5, 3),
        ];
        let kept = cap_fraud_proofs(txs, 2);
        let shape: Vec<(u8, u64)> = kept
            .iter()
            .map(|tx| (tx.body.from.0[0], tx.body.nonce))
            .collect();
        // The first two proofs stay; the third and fourth go, with the
        // transfer sender 4 sent after its proof; everything else stays.
        assert_eq!(shape, vec![(1, 0), (2, 0), (3, 0), (1, 1)]);
        assert_eq!(cap_fraud_proofs(kept.clone(), 4).len(), kept.len());
    }

    #[test]
    fn orphans_wait_for_their_parent_and_bad_blocks_are_refused() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let mut a = open(dir_a.path());
        let mut b = open(dir_b.path());
        let first = mine(&mut b, Address([2; 32]), NOW);
        b.process_block(first.clone(), NOW).unwrap();
        let second = mine(&mut b, Address([2; 32]), NOW + 1);
        b.process_block(second.clone(), NOW).unwrap();

        assert_eq!(
            a.process_block(second.clone(), NOW).unwrap(),
            BlockOutcome::Orphan {
                parent: first.hash()
            }
        );
        assert!(matches!(
            a.process_block(first, NOW).unwrap(),
            BlockOutcome::NewTip { .. }
        ));
        assert_eq!(
            a.tip(),
            second.hash(),
            "the orphan connected once its parent arrived"
        );

        let mut bad_pow = mine(&mut a, Address([1; 32]), NOW + 2);
        let target = bad_pow.header.bits.to_target().unwrap();
        while target.is_met_by(&bad_pow.header.hash()) {
            bad_pow.header.nonce += 1;
        }
        let err = a.process_block(bad_pow, NOW).unwrap_err();
        assert!(
            matches!(
                err,
                ChainError::InvalidHeader {
                    source: HeaderError::BadProofOfWork { .. },
                    ..
                }
            ),
            "{err}"
        );

        let mut overpaid = a.template(Address([1; 32]), NOW + 2).unwrap().block;
        if let Some(Transaction::Coinbase(cb)) = overpaid.txs.first_mut() {
            cb.amount = Amount(cb.amount.0 + 1);
        }
        let ids: Vec<TxId> = overpaid.txs.iter().map(|t| t.id().unwrap()).collect();
        overpaid.header.merkle_root = merkle_root(&ids);
        let target = overpaid.header.bits.to_target().unwrap();
        while !target.is_met_by(&overpaid.header.hash()) {
            overpaid.header.nonce += 1;
        }
        let overpaid_hash = overpaid.hash();
        let err = a.process_block(overpaid.clone(), NOW).unwrap_err();
        assert!(err.is_peer_fault());
        assert!(err.to_string().contains("coinbase pays"), "{err}");
        assert_eq!(a.tip(), second.hash());
        assert!(
            a.block(&overpaid_hash).unwrap().is_none(),
            "an invalid block is not kept"
        );
        assert!(matches!(
            a.process_block(overpaid, NOW),
            Err(ChainError::KnownInvalid { .. })
        ));
    }

    #[test]
    fn the_orphan_pool_evicts_its_oldest_blocks_past_max_orphans() {
        let dir_a = tempfile::tempdir().unwrap();
        let dir_b = tempfile::tempdir().unwrap();
        let mut a = open(dir_a.path());
        let mut b = open(dir_b.path());
        let genesis = a.params().genesis_block().unwrap();
        // Two valid siblings on `first`, which `a` has not seen yet.
        let first = mine(&mut b, Address([2; 32]), NOW);
        b.process_block(first.clone(), NOW).unwrap();
        let oldest = mine(&mut b, Address([10; 32]), NOW + 1);
        let newest = mine(&mut b, Address([11; 32]), NOW + 1);
        assert_ne!(oldest.hash(), newest.hash());
        // Fillers whose parents nobody has: each on a header of its own.
        let fillers: Vec<Block> = (0..MAX_ORPHANS)
            .map(|i| {
                let mut parent = genesis.header;
                parent.time += 1000 + u32::try_from(i).unwrap();
                coinbase_block(&parent, 2, 3, protocol::StateRoot([0; 32]))
            })
            .collect();

        let pool_len = |chain: &Chain| {
            assert_eq!(chain.orphans.order.len(), chain.orphans.blocks.len());
            chain.orphans.blocks.len()
        };
        let arrivals = std::iter::once(&oldest)
            .chain(&fillers)
            .chain(std::iter::once(&newest));
        for (i, block) in arrivals.enumerate() {
            assert_eq!(
                a.process_block(block.clone(), NOW + 10).unwrap(),
                BlockOutcome::Orphan {
                    parent: block.header.prev
                }
            );
            assert_eq!(pool_len(&a), (i + 1).min(MAX_ORPHANS), "after {i}");
        }
        // MAX_ORPHANS + 2 arrived: the two oldest are gone, the rest kept.
        let pooled = |hash: &BlockHash| a.orphans.blocks.contains_key(hash);
        assert!(!pooled(&oldest.hash()), "the oldest orphan is evicted");
        assert!(!pooled(&fillers[0].hash()), "the next oldest too");
        assert!(fillers.iter().skip(1).all(|f| pooled(&f.hash())));
        assert!(pooled(&newest.hash()), "the newest orphan is kept");

        // The parent arrives: the kept child connects from the pool, the
        // evicted one does not.
        let outcome = a.process_block(first.clone(), NOW + 10).unwrap();
        assert!(
            matches!(outcome, BlockOutcome::NewTip { height: Height(2), hash, reorg: None, .. } if hash == newest.hash()),
            "{outcome:?}"
        );
        assert_eq!(a.tip(), newest.hash());
        assert!(
            !a.has_block(&oldest.hash()),
            "an evicted orphan is not connected"
        );
        assert!(a.block(&oldest.hash()).unwrap().is_none());
        assert_eq!(pool_len(&a), MAX_ORPHANS - 1);
    }
}
