//! The benchmarks behind `gradchain-node bench`: `hash` (the miner's nonce
//! scanner and the `sha2` crate's midstate path against a naive double
//! SHA-256 of the whole header, on the same threads in the same run), `sync` (a fresh node syncing blocks
//! full of transfers, next to the source node's own validate-and-store
//! rate), `gossip` (publish-to-last-node latency over four local nodes)
//! and `http` (API latency under concurrent clients, next to the same
//! questions put to the chain task directly).
//!
//! A benchmark reports figures side by side with a baseline from the same
//! run; it must never be used as a pass/fail timing assertion, and it only
//! ever runs throwaway regtest nodes in temporary directories.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::{sha256d, BlockHash, Header, Target, HEADER_SIZE, NONCE_OFFSET};

use crate::nonce_scan::{Kernel, NonceScanner};

/// Hashes per second of each method.
#[derive(Clone, Copy, Debug)]
pub struct HashBench {
    /// Threads used.
    pub threads: usize,
    /// The `sha2` crate from the header midstate, hashes per second.
    pub midstate: f64,
    /// `sha256d` of the full 116-byte header, hashes per second.
    pub naive: f64,
    /// The miner's nonce scanner, hashes per second.
    pub miner: f64,
    /// Which kernel the miner's scanner runs on this CPU.
    pub kernel: Kernel,
    /// The miner's scanner on one thread, measured in the same run when
    /// `threads` is more than one (the scaling baseline).
    pub miner_one_thread: Option<f64>,
}

impl HashBench {
    /// Midstate over naive.
    pub fn ratio(&self) -> f64 {
        ratio(self.midstate, self.naive)
    }

    /// The miner's scanner over naive.
    pub fn miner_ratio(&self) -> f64 {
        ratio(self.miner, self.naive)
    }

    /// The miner on `threads` threads over `threads` times its one-thread
    /// rate (1.0 is perfect scaling).
    pub fn scaling(&self) -> Option<f64> {
        self.miner_one_thread
            .map(|one| ratio(self.miner, one * self.threads as f64))
    }
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        value / baseline
    } else {
        0.0
    }
}

fn sample_header() -> Header {
    Header {
        version: 1,
        prev: BlockHash([0x11; 32]),
        merkle_root: protocol::MerkleRoot([0x22; 32]),
        state_root: protocol::StateRoot([0x33; 32]),
        time: 1_767_225_600,
        bits: protocol::CompactTarget(0x1d00_ffff),
        nonce: 0,
    }
}

fn measure(threads: usize, duration: Duration, work: fn(u64, &AtomicBool) -> u64) -> f64 {
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads.max(1))
        .map(|index| {
            let stop = stop.clone();
            let total = total.clone();
            let seed = u64::try_from(index)
                .unwrap_or(0)
                .checked_shl(56)
                .unwrap_or(0);
            std::thread::spawn(move || {
                total.fetch_add(work(seed, &stop), Ordering::Relaxed);
            })
        })
        .collect();
    std::thread::sleep(duration);
    stop.store(true, Ordering::Relaxed);
    for handle in handles {
        let _ = handle.join();
    }
    let elapsed = start.elapsed().as_secs_f64();
    total.load(Ordering::Relaxed) as f64 / elapsed.max(f64::EPSILON)
}

fn midstate_worker(seed: u64, stop: &AtomicBool) -> u64 {
    let mut hasher = sample_header().hasher();
    let mut count = 0u64;
    let mut nonce = seed;
    let mut sink = 0u8;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..4096 {
            let hash = hasher.hash_with_nonce(nonce);
            sink ^= hash[0];
            nonce = nonce.wrapping_add(1);
        }
        count = count.wrapping_add(4096);
    }
    std::hint::black_box(sink);
    count
}

fn miner_worker(seed: u64, stop: &AtomicBool) -> u64 {
    // A zero target is never met, so every nonce is hashed and compared.
    let mut scanner = NonceScanner::new(&sample_header(), &Target::default());
    let mut count = 0u64;
    let mut nonce = seed;
    while !stop.load(Ordering::Relaxed) {
        std::hint::black_box(scanner.scan(nonce, 4096));
        nonce = nonce.wrapping_add(4096);
        count = count.wrapping_add(4096);
    }
    count
}

fn naive_worker(seed: u64, stop: &AtomicBool) -> u64 {
    let mut bytes: [u8; HEADER_SIZE] = sample_header().to_bytes();
    let mut count = 0u64;
    let mut nonce = seed;
    let mut sink = 0u8;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..4096 {
            for (dst, src) in bytes.iter_mut().skip(NONCE_OFFSET).zip(nonce.to_le_bytes()) {
                *dst = src;
            }
            let hash = sha256d(&bytes);
            sink ^= hash[0];
            nonce = nonce.wrapping_add(1);
        }
        count = count.wrapping_add(4096);
    }
    std::hint::black_box(sink);
    count
}

/// Runs the three measurements for `duration` each on `threads` threads.
pub fn bench_hash(threads: usize, duration: Duration) -> HashBench {
    let threads = threads.max(1);
    let naive = measure(threads, duration, naive_worker);
    let midstate = measure(threads, duration, midstate_worker);
    let miner = measure(threads, duration, miner_worker);
    let miner_one_thread = (threads > 1).then(|| measure(1, duration, miner_worker));
    HashBench {
        threads,
        midstate,
        naive,
        miner,
        kernel: Kernel::detect(),
        miner_one_thread,
    }
}

/// Accounts a [`BlockFactory`] sends from, funded by its first block: with
/// transfers spread over them, a block of 6,000 keeps each sender's pending
/// transactions under the mempool's per-sender cap.
pub const FACTORY_SENDERS: usize = 64;

/// Builds regtest blocks full of transfers, outside any node, so
/// benchmarks can feed identical blocks to several nodes. Its first block
/// ([`BlockFactory::funding`]) moves coins from the faucet to
/// [`FACTORY_SENDERS`] accounts; every later transfer comes from those, in
/// turn.
pub struct BlockFactory {
    params: protocol::ChainParams,
    state: protocol::State,
    tip: protocol::Block,
    height: protocol::Height,
    senders: Vec<(ed25519_dalek::SigningKey, protocol::Address, u64)>,
    next_sender: usize,
    funding: protocol::Block,
}

impl std::fmt::Debug for BlockFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockFactory")
            .field("height", &self.height)
            .finish_non_exhaustive()
    }
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A block could not be built.
    #[error("building a block: {0}")]
    Block(#[from] protocol::BlockError),
    /// Encoding failed.
    #[error("encoding: {0}")]
    Codec(#[from] protocol::CodecError),
    /// A node failed.
    #[error("node: {0}")]
    Node(#[from] crate::node::NodeError),
    /// The chain task refused something.
    #[error("chain: {0}")]
    Service(#[from] crate::chain_task::ServiceError),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl BlockFactory {
    /// A factory on the regtest genesis, its funding block built.
    pub fn regtest() -> Result<Self, BenchError> {
        let params = protocol::ChainParams::regtest();
        let faucet = protocol::params::faucet_key();
        let senders: Vec<_> = (0..FACTORY_SENDERS)
            .map(|i| {
                let mut seed = [0xb7u8; 32];
                seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let key = ed25519_dalek::SigningKey::from_bytes(&seed);
                let address = protocol::Address::from_verifying_key(&key.verifying_key());
                (key, address, 0u64)
            })
            .collect();
        let share = params
            .faucet_premine
            .0
            .checked_div(2 * FACTORY_SENDERS as u64)
            .ok_or_else(|| BenchError::Other("no senders".into()))?;
        let funding_txs = senders
            .iter()
            .enumerate()
            .map(|(nonce, (_, address, _))| {
                transfer(&params, &faucet, nonce as u64, *address, share)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut factory = Self {
            state: params.genesis_state(),
            tip: params.genesis_block()?,
            height: protocol::Height::GENESIS,
            senders,
            next_sender: 0,
            funding: params.genesis_block()?,
            params,
        };
        factory.funding = factory.block_of(funding_txs)?;
        Ok(factory)
    }

    /// The first block: the faucet funds the senders. Every block after it
    /// spends from them, so it must be fed first.
    pub fn funding(&self) -> &protocol::Block {
        &self.funding
    }

    /// Transfers of 1 to fresh addresses, from the senders in turn with
    /// their next nonces, not yet in any block.
    pub fn transfers(&mut self, count: usize) -> Result<Vec<protocol::SignedTx>, BenchError> {
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            let index = self.next_sender;
            self.next_sender = (index + 1) % self.senders.len().max(1);
            let (key, _, nonce) = self
                .senders
                .get_mut(index)
                .ok_or_else(|| BenchError::Other("no senders".into()))?;
            let tx = transfer(
                &self.params,
                key,
                *nonce,
                protocol::Address(rand::random()),
                1,
            )?;
            *nonce = nonce.saturating_add(1);
            out.push(tx);
        }
        Ok(out)
    }

    /// The next block with `txs` fresh transfers, mined and applied.
    pub fn next_block(&mut self, txs: usize) -> Result<protocol::Block, BenchError> {
        let transfers = self.transfers(txs)?;
        self.block_of(transfers)
    }

    /// The next block carrying `transfers`, mined and applied.
    fn block_of(
        &mut self,
        transfers: Vec<protocol::SignedTx>,
    ) -> Result<protocol::Block, BenchError> {
        let verifier = crate::chain::NoTrainingEngine;
        let height = self
            .height
            .next()
            .ok_or_else(|| BenchError::Other("height overflow".into()))?;
        let fees = transfers
            .iter()
            .try_fold(protocol::Amount::ZERO, |sum, tx| {
                sum.checked_add(tx.body.fee)
            })
            .ok_or_else(|| BenchError::Other("fee overflow".into()))?;
        let mut all = vec![protocol::Transaction::Coinbase(protocol::Coinbase {
            height,
            miner: protocol::Address([0xbe; 32]),
            amount: self
                .params
                .subsidy(height)
                .checked_add(fees)
                .ok_or_else(|| BenchError::Other("fee overflow".into()))?,
        })];
        all.extend(transfers.into_iter().map(protocol::Transaction::Signed));
        let state_root = protocol::validation::template_state_root(
            &mut self.state,
            &all,
            height,
            &self.params,
            &verifier,
        )?;
        let ids = all
            .iter()
            .map(protocol::Transaction::id)
            .collect::<Result<Vec<_>, _>>()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .and_then(|d| u32::try_from(d.as_secs()).ok())
            .unwrap_or(u32::MAX);
        let mut header = Header {
            version: self.params.block_version,
            prev: self.tip.hash(),
            merkle_root: protocol::merkle_root(&ids),
            state_root,
            time: now.max(self.tip.header.time.saturating_add(1)),
            bits: self.params.pow_limit,
            nonce: 0,
        };
        let target = header
            .bits
            .to_target()
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let mut hasher = header.hasher();
        while !target.is_met_by(&BlockHash(hasher.hash_with_nonce(header.nonce))) {
            header.nonce = header.nonce.wrapping_add(1);
        }
        let block = protocol::Block { header, txs: all };
        protocol::validation::apply_block(
            &mut self.state,
            &block,
            height,
            &self.params,
            &verifier,
        )?;
        self.tip = block.clone();
        self.height = height;
        Ok(block)
    }
}

/// A transfer of `amount` from `key` to `to`, paying the least fee.
fn transfer(
    params: &protocol::ChainParams,
    key: &ed25519_dalek::SigningKey,
    nonce: u64,
    to: protocol::Address,
    amount: u64,
) -> Result<protocol::SignedTx, BenchError> {
    let mut body = protocol::TxBody {
        from: protocol::Address::from_verifying_key(&key.verifying_key()),
        nonce,
        fee: protocol::Amount::ZERO,
        kind: protocol::TxKind::Transfer {
            to,
            amount: protocol::Amount(amount),
        },
    };
    body.fee = body
        .min_fee_at(params.min_fee_rate)?
        .ok_or_else(|| BenchError::Other("fee overflow".into()))?;
    Ok(body.sign(key, params.chain_id)?)
}

/// What [`bench_sync`] measured: seconds to validate and store the same
/// blocks on each path, and to sync them over libp2p.
#[derive(Clone, Copy, Debug)]
pub struct SyncBench {
    /// Blocks synced.
    pub blocks: usize,
    /// Transfers per block.
    pub txs_per_block: usize,
    /// Threads the new path verified signatures on.
    pub threads: usize,
    /// Validate and store, every signature verified on one thread (the
    /// path before signatures were verified once and in parallel).
    pub baseline_seconds: f64,
    /// Validate and store, signatures never seen before, verified on
    /// `threads` threads.
    pub validate_seconds: f64,
    /// Validate and store blocks whose transactions were admitted to the
    /// mempool first (as gossip delivers them): only the blocks are timed.
    pub seen_seconds: f64,
    /// A fresh node syncing the blocks over libp2p, one signature thread.
    pub baseline_sync_seconds: f64,
    /// A fresh node syncing them, `threads` signature threads.
    pub sync_seconds: f64,
}

/// Starts a regtest node in `dir` verifying signatures on `threads`
/// threads, remembering `cache` verified transactions.
async fn start_verifying(
    dir: &std::path::Path,
    bootstrap: Vec<libp2p::Multiaddr>,
    threads: usize,
    cache: usize,
) -> Result<crate::node::RunningNode, BenchError> {
    let mut config = crate::testkit::regtest_config(dir, bootstrap);
    config.signature_threads = threads;
    config.signature_cache = cache;
    Ok(crate::node::start(config).await?)
}

/// Feeds `blocks` blocks of `txs_per_block` transfers to a node, and times
/// validation and storage on three paths: every signature on one thread
/// (the baseline), unseen signatures on every core, and blocks whose
/// transactions the mempool had admitted. Then times two fresh nodes (one
/// signature thread, every core) syncing them over libp2p.
pub async fn bench_sync(blocks: usize, txs_per_block: usize) -> Result<SyncBench, BenchError> {
    let dir = tempfile_dir()?;
    let threads = crate::signatures::available_threads();
    let cache = crate::signatures::SIGNATURE_CACHE_CAPACITY;
    let (funding, generated) = tokio::task::spawn_blocking(
        move || -> Result<(protocol::Block, Vec<protocol::Block>), BenchError> {
            let mut factory = BlockFactory::regtest()?;
            let blocks = (0..blocks)
                .map(|_| factory.next_block(txs_per_block))
                .collect::<Result<_, _>>()?;
            Ok((factory.funding().clone(), blocks))
        },
    )
    .await
    .map_err(|e| BenchError::Other(e.to_string()))??;
    // The funding block goes first everywhere, untimed.
    let fund = |node: &crate::node::RunningNode| {
        let (chain, funding) = (node.chain().clone(), funding.clone());
        async move {
            let hash = funding.hash();
            chain
                .submit_block(
                    funding,
                    crate::chain_task::BlockSource::Peer("bench".into()),
                )
                .await?;
            wait_for_tip(&chain, hash, Duration::from_secs(60)).await
        }
    };
    let last = generated
        .last()
        .map(protocol::Block::hash)
        .ok_or_else(|| BenchError::Other("no blocks asked".into()))?;
    let feed = |node: crate::node::RunningNode, name: &'static str| {
        let generated = generated.clone();
        let funded = fund(&node);
        async move {
            funded.await?;
            let start = Instant::now();
            for block in generated {
                node.chain()
                    .submit_block(block, crate::chain_task::BlockSource::Peer(name.into()))
                    .await?;
            }
            wait_for_tip(node.chain(), last, Duration::from_secs(600)).await?;
            Ok::<_, BenchError>((node, start.elapsed().as_secs_f64()))
        }
    };

    let baseline = start_verifying(&dir.join("baseline"), vec![], 1, 0).await?;
    let (baseline, baseline_seconds) = feed(baseline, "bench").await?;
    let source = start_verifying(&dir.join("source"), vec![], threads, cache).await?;
    let (source, validate_seconds) = feed(source, "bench").await?;

    // Transactions first, untimed, as gossip would bring them; then each
    // block, timed until it is the tip.
    let seen = start_verifying(&dir.join("seen"), vec![], threads, cache).await?;
    fund(&seen).await?;
    let mut seen_seconds = 0.0;
    for block in generated.iter().cloned() {
        for tx in &block.txs {
            if let protocol::Transaction::Signed(signed) = tx {
                seen.chain()
                    .submit_tx(signed.clone())
                    .await?
                    .map_err(|e| BenchError::Other(format!("mempool refused a transfer: {e}")))?;
            }
        }
        let hash = block.hash();
        let start = Instant::now();
        seen.chain()
            .submit_block(block, crate::chain_task::BlockSource::Peer("bench".into()))
            .await?;
        wait_for_tip(seen.chain(), hash, Duration::from_secs(60)).await?;
        seen_seconds += start.elapsed().as_secs_f64();
    }
    seen.stop().await;
    baseline.stop().await;

    let addr = source
        .p2p_addr()
        .ok_or_else(|| BenchError::Other("no listen address".into()))?;
    let sync = |name: &'static str, threads: usize, cache: usize| {
        let (dir, addr) = (dir.join(name), addr.clone());
        async move {
            let start = Instant::now();
            let fresh = start_verifying(&dir, vec![addr], threads, cache).await?;
            wait_for_tip(fresh.chain(), last, Duration::from_secs(1800)).await?;
            let seconds = start.elapsed().as_secs_f64();
            fresh.stop().await;
            Ok::<_, BenchError>(seconds)
        }
    };
    let baseline_sync_seconds = sync("fresh-baseline", 1, 0).await?;
    let sync_seconds = sync("fresh", threads, cache).await?;
    source.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(SyncBench {
        blocks,
        txs_per_block,
        threads,
        baseline_seconds,
        validate_seconds,
        seen_seconds,
        baseline_sync_seconds,
        sync_seconds,
    })
}

async fn wait_for_tip(
    chain: &crate::chain_task::ChainHandle,
    tip: BlockHash,
    timeout: Duration,
) -> Result<(), BenchError> {
    let mut rx = chain.watch_tip();
    tokio::time::timeout(timeout, rx.wait_for(|snapshot| snapshot.tip == tip))
        .await
        .map_err(|_| BenchError::Other(format!("timed out waiting for tip {tip}")))?
        .map_err(|_| BenchError::Other("the chain task stopped".into()))?;
    Ok(())
}

pub(crate) fn tempfile_dir() -> Result<std::path::PathBuf, BenchError> {
    let dir = std::env::temp_dir().join(format!(
        "gradchain-bench-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::Other(format!("{}: {e}", dir.display())))?;
    Ok(dir)
}

/// Latency samples of one gossip benchmark run, in seconds: publication on
/// the first node of a line of four until the last one has the message.
/// Each block is timed on two lines side by side, one forwarding blocks
/// only after validating them (the baseline) and one relaying early where
/// [`crate::chain::Relay::Early`] allows.
#[derive(Clone, Debug)]
pub struct GossipBench {
    /// Transactions (on the early-relay line).
    pub tx: Vec<f64>,
    /// Blocks whose transactions no node had seen, validated before relay.
    pub unseen_validated: Vec<f64>,
    /// The same blocks on the early-relay line (it must validate them too:
    /// their signatures are unseen).
    pub unseen_early: Vec<f64>,
    /// Blocks whose transactions every node held, validated before relay.
    pub seen_validated: Vec<f64>,
    /// The same blocks on the early-relay line, until the last node had
    /// connected them.
    pub seen_early: Vec<f64>,
    /// The same, until the last node had relayed them (passed its relay
    /// check): the block has crossed the line, its validation at the last
    /// hop still running.
    pub seen_early_reached: Vec<f64>,
    /// Encoded size of the benchmark blocks.
    pub block_bytes: usize,
}

/// The `p` quantile (0..=1) of `samples`, by nearest rank.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.saturating_sub(1).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or(0.0)
}

/// Four regtest nodes in a line (A-B-C-D), relaying blocks early or not.
async fn start_line(
    dir: &std::path::Path,
    early_relay: bool,
) -> Result<Vec<crate::node::RunningNode>, BenchError> {
    let mut nodes: Vec<crate::node::RunningNode> = Vec::new();
    for index in 0..4 {
        let bootstrap = nodes
            .last()
            .and_then(|n| n.p2p_addr())
            .into_iter()
            .collect();
        let mut config = crate::testkit::regtest_config(&dir.join(format!("n{index}")), bootstrap);
        config.early_relay = early_relay;
        config.http = None;
        nodes.push(crate::node::start(config).await?);
    }
    crate::testkit::wait_until("the line of peers", Duration::from_secs(60), || {
        let counts: Vec<usize> = nodes
            .iter()
            .skip(1)
            .map(|n| n.network().peer_count())
            .collect();
        async move { counts.iter().all(|c| *c >= 1) }
    })
    .await
    .map_err(BenchError::Other)?;
    Ok(nodes)
}

/// Puts `block` on the line's first node, publishes it there, and times
/// until every other node has it as its tip; with `relayed`, also until
/// every other node relayed it early (the first of the two times).
async fn time_block(
    line: &[crate::node::RunningNode],
    block: protocol::Block,
    relayed: bool,
) -> Result<(f64, f64), BenchError> {
    let (first, rest) = line
        .split_first()
        .ok_or_else(|| BenchError::Other("no nodes".into()))?;
    let hash = block.hash();
    let bytes = protocol::codec::encode(&block)?;
    first
        .chain()
        .submit_block(block, crate::chain_task::BlockSource::Peer("bench".into()))
        .await?;
    let counted =
        |node: &crate::node::RunningNode| node.observer().metrics.blocks_relayed_early.get();
    let before: Vec<u64> = rest.iter().map(counted).collect();
    let start = Instant::now();
    first
        .network()
        .publish(crate::net::network::Topic::Blocks, bytes);
    let mut reached = None;
    if relayed {
        let deadline = start + Duration::from_secs(120);
        while rest.iter().zip(&before).any(|(n, b)| counted(n) <= *b) {
            if Instant::now() > deadline {
                return Err(BenchError::Other("a block was never relayed early".into()));
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        reached = Some(start.elapsed().as_secs_f64());
    }
    for node in rest {
        wait_for_tip(node.chain(), hash, Duration::from_secs(120)).await?;
    }
    let tip = start.elapsed().as_secs_f64();
    Ok((reached.unwrap_or(tip), tip))
}

/// Admits `block`'s transactions to every node's mempool, as gossip would
/// have brought them before the block.
async fn preload(
    nodes: &[&crate::node::RunningNode],
    block: &protocol::Block,
) -> Result<(), BenchError> {
    let admit = nodes.iter().map(|node| async move {
        for tx in &block.txs {
            if let protocol::Transaction::Signed(signed) = tx {
                node.chain()
                    .submit_tx(signed.clone())
                    .await?
                    .map_err(|e| BenchError::Other(format!("mempool refused a transfer: {e}")))?;
            }
        }
        Ok::<_, BenchError>(())
    });
    futures::future::try_join_all(admit).await?;
    Ok(())
}

/// Two lines of four regtest nodes (A-B-C-D), one forwarding blocks only
/// after validating them and one relaying early. Each block near the size
/// cap is timed on both, from publication on A until D (the last) has it:
/// first blocks no node has seen the transactions of, then blocks whose
/// transactions every node admitted first (as gossip brings them before a
/// block). Then transactions, on the early-relay line.
pub async fn bench_gossip(
    tx_samples: usize,
    block_samples: usize,
    txs_per_block: usize,
) -> Result<GossipBench, BenchError> {
    let dir = tempfile_dir()?;
    let mut factory = tokio::task::spawn_blocking(BlockFactory::regtest)
        .await
        .map_err(|e| BenchError::Other(e.to_string()))??;
    // The funding block as a warm-up (it lets the gossip meshes form and is
    // not counted), then the unseen and the seen rounds.
    let count = block_samples.saturating_mul(2);
    let (factory_back, blocks) = tokio::task::spawn_blocking(move || -> Result<_, BenchError> {
        let blocks = std::iter::once(Ok(factory.funding().clone()))
            .chain((0..count).map(|_| factory.next_block(txs_per_block)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((factory, blocks))
    })
    .await
    .map_err(|e| BenchError::Other(e.to_string()))??;
    factory = factory_back;
    let block_bytes = blocks
        .get(1)
        .map(|b| b.encode().map(|e| e.len()))
        .transpose()?
        .unwrap_or(0);

    let validated = start_line(&dir.join("validated"), false).await?;
    let early = start_line(&dir.join("early"), true).await?;
    let everyone: Vec<&crate::node::RunningNode> = validated.iter().chain(early.iter()).collect();
    let mut result = GossipBench {
        tx: Vec::new(),
        unseen_validated: Vec::new(),
        unseen_early: Vec::new(),
        seen_validated: Vec::new(),
        seen_early: Vec::new(),
        seen_early_reached: Vec::new(),
        block_bytes,
    };
    for (round, block) in blocks.into_iter().enumerate() {
        let seen = round > block_samples;
        if seen {
            preload(&everyone, &block).await?;
        }
        let (_, on_validated) = time_block(&validated, block.clone(), false).await?;
        let (reached, on_early) = time_block(&early, block, seen).await?;
        match (round, seen) {
            (0, _) => {}
            (_, false) => {
                result.unseen_validated.push(on_validated);
                result.unseen_early.push(on_early);
            }
            (_, true) => {
                result.seen_validated.push(on_validated);
                result.seen_early.push(on_early);
                result.seen_early_reached.push(reached);
            }
        }
    }

    // Then transactions, the first one again a warm-up.
    let (first, rest) = early
        .split_first()
        .ok_or_else(|| BenchError::Other("no nodes".into()))?;
    let warm = factory.transfers(1)?;
    let mut expected_mempool = 0usize;
    for (round, tx) in warm
        .into_iter()
        .chain(factory.transfers(tx_samples)?)
        .enumerate()
    {
        let bytes = protocol::codec::encode(&tx)?;
        match first.chain().submit_tx(tx).await? {
            Ok(_) => {}
            Err(err) => return Err(BenchError::Other(err.to_string())),
        }
        expected_mempool = expected_mempool.saturating_add(1);
        let start = Instant::now();
        first
            .network()
            .publish(crate::net::network::Topic::Txs, bytes);
        for node in rest {
            let mut rx = node.chain().watch_tip();
            tokio::time::timeout(
                Duration::from_secs(60),
                rx.wait_for(|s| s.mempool >= expected_mempool),
            )
            .await
            .map_err(|_| BenchError::Other("a transaction never arrived".into()))?
            .map_err(|_| BenchError::Other("the chain task stopped".into()))?;
        }
        if round > 0 {
            result.tx.push(start.elapsed().as_secs_f64());
        }
    }
    drop(everyone);
    for node in validated.into_iter().chain(early) {
        node.stop().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(result)
}

/// Latencies of one HTTP benchmark run, in seconds, per request kind: each
/// through the HTTP API and the same question put to the chain task
/// directly, at the same concurrency.
#[derive(Clone, Debug, Default)]
pub struct HttpBench {
    /// Requests in flight at once.
    pub concurrency: usize,
    /// `/api/status` over HTTP.
    pub status_http: Vec<f64>,
    /// The status's one chain question, the tip snapshot the chain task
    /// publishes, read directly.
    pub status_direct: Vec<f64>,
    /// `/api/blocks` over HTTP.
    pub blocks_http: Vec<f64>,
    /// The ten newest block summaries, asked of the chain task directly.
    pub blocks_direct: Vec<f64>,
}

/// One `GET path` on a new connection, read to the end; its latency.
async fn http_get(addr: std::net::SocketAddr, path: &str) -> Result<f64, BenchError> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| BenchError::Other(format!("connect {addr}: {e}")))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .await
        .map_err(|e| BenchError::Other(e.to_string()))?;
    let elapsed = started.elapsed().as_secs_f64();
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(BenchError::Other(format!(
            "GET {path} answered {}",
            String::from_utf8_lossy(answer.get(..40).unwrap_or(&answer))
        )));
    }
    Ok(elapsed)
}

/// Runs `rounds` rounds of `concurrency` requests at once of each kind.
pub async fn bench_http(concurrency: usize, rounds: usize) -> Result<HttpBench, BenchError> {
    let dir = tempfile_dir()?;
    let mut config = crate::testkit::regtest_config(&dir, vec![]);
    config.mine = Some(protocol::Address([1; 32]));
    config.mine_interval = Duration::from_millis(50);
    let mut node = crate::node::start(config).await?;
    wait_for_height(node.chain(), 20).await?;
    // A still chain: the figures are of answering, not of mining.
    node.stop_mining().await;
    let addr = node
        .http_addr()
        .ok_or_else(|| BenchError::Other("the HTTP API is off".into()))?;
    let chain = node.chain().clone();
    let mut bench = HttpBench {
        concurrency,
        ..HttpBench::default()
    };
    for _ in 0..rounds {
        for path in ["/api/status", "/api/blocks"] {
            let tasks: Vec<_> = (0..concurrency)
                .map(|_| tokio::spawn(http_get(addr, path)))
                .collect();
            for task in tasks {
                let latency = task.await.map_err(|e| BenchError::Other(e.to_string()))??;
                match path {
                    "/api/status" => bench.status_http.push(latency),
                    _ => bench.blocks_http.push(latency),
                }
            }
        }
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let chain = chain.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let tip = chain.tip();
                    std::hint::black_box(&tip);
                    Ok::<f64, crate::chain_task::ServiceError>(started.elapsed().as_secs_f64())
                })
            })
            .collect();
        for task in tasks {
            let latency = task.await.map_err(|e| BenchError::Other(e.to_string()))??;
            bench.status_direct.push(latency);
        }
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let chain = chain.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    chain
                        .blocks_page(None, protocol::api::BLOCKS_PAGE)
                        .await
                        .map(|_| started.elapsed().as_secs_f64())
                })
            })
            .collect();
        for task in tasks {
            let latency = task.await.map_err(|e| BenchError::Other(e.to_string()))??;
            bench.blocks_direct.push(latency);
        }
    }
    node.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(bench)
}

async fn wait_for_height(
    chain: &crate::chain_task::ChainHandle,
    height: u64,
) -> Result<(), BenchError> {
    let mut rx = chain.watch_tip();
    tokio::time::timeout(
        Duration::from_secs(120),
        rx.wait_for(|snapshot| snapshot.height.0 >= height),
    )
    .await
    .map_err(|_| BenchError::Other(format!("timed out waiting for height {height}")))?
    .map_err(|_| BenchError::Other("the chain task stopped".into()))?;
    Ok(())
}

/// One state size in [`bench_connect`].
#[derive(Clone, Copy, Debug)]
pub struct ConnectRow {
    /// Accounts in the state.
    pub accounts: usize,
    /// Median seconds to validate and apply the block (every signature,
    /// one thread, the state root included).
    pub connect_seconds: f64,
    /// Median seconds of the state root alone after the block's changes.
    pub root_seconds: f64,
    /// Seconds to compute the same root from every entry, caching nothing:
    /// what the root cost on every block before the state tree.
    pub from_scratch_seconds: f64,
}

/// Times connecting a block of `txs` transfers (between existing accounts,
/// the faucet paying) on states of each size in `sizes`: the median of
/// `rounds` applications, each undone before the next.
pub fn bench_connect(
    sizes: &[usize],
    txs: usize,
    rounds: usize,
) -> Result<Vec<ConnectRow>, BenchError> {
    use protocol::validation::{apply_block, template_state_root, undo_block};
    use protocol::{Account, Amount, Coinbase, Height, Transaction, TxBody, TxKind};
    let params = protocol::ChainParams::regtest();
    let key = protocol::params::faucet_key();
    let verifier = crate::chain::NoTrainingEngine;
    let other = |i: usize| protocol::Address(sha256d(&i.to_le_bytes()));
    let mut rows = Vec::new();
    for &size in sizes {
        let size = size.max(1);
        let mut entries: Vec<(protocol::Address, Account)> = (0..size)
            .map(|i| {
                (
                    other(i),
                    Account {
                        balance: Amount(1),
                        nonce: 0,
                    },
                )
            })
            .collect();
        entries.push((
            params.faucet,
            Account {
                balance: params.faucet_premine,
                nonce: 0,
            },
        ));
        let mut state = protocol::State::from_entries(entries, []);
        state.root()?;
        let start = Instant::now();
        state.root_from_scratch()?;
        let from_scratch_seconds = start.elapsed().as_secs_f64();
        let mut all = vec![Transaction::Coinbase(Coinbase {
            height: Height(1),
            miner: params.faucet,
            amount: Amount::ZERO,
        })];
        let mut fees = Amount::ZERO;
        for nonce in 0..txs {
            let mut body = TxBody {
                from: params.faucet,
                nonce: u64::try_from(nonce).unwrap_or(u64::MAX),
                fee: Amount::ZERO,
                kind: TxKind::Transfer {
                    to: other(nonce.wrapping_mul(7919).checked_rem(size).unwrap_or(0)),
                    amount: Amount(1),
                },
            };
            body.fee = body
                .min_fee_at(params.min_fee_rate)?
                .ok_or_else(|| BenchError::Other("fee overflow".into()))?;
            fees = fees
                .checked_add(body.fee)
                .ok_or_else(|| BenchError::Other("fee overflow".into()))?;
            all.push(Transaction::Signed(body.sign(&key, params.chain_id)?));
        }
        if let Some(Transaction::Coinbase(coinbase)) = all.first_mut() {
            coinbase.amount = params
                .subsidy(Height(1))
                .checked_add(fees)
                .ok_or_else(|| BenchError::Other("fee overflow".into()))?;
        }
        let state_root = template_state_root(&mut state, &all, Height(1), &params, &verifier)
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let ids = all
            .iter()
            .map(Transaction::id)
            .collect::<Result<Vec<_>, _>>()?;
        let genesis = params.genesis_block()?;
        let block = protocol::Block {
            header: Header {
                prev: genesis.hash(),
                merkle_root: protocol::merkle_root(&ids),
                state_root,
                ..genesis.header
            },
            txs: all,
        };
        let mut connect = Vec::with_capacity(rounds);
        let mut roots = Vec::with_capacity(rounds);
        for _ in 0..rounds.max(1) {
            let start = Instant::now();
            let undo = apply_block(&mut state, &block, Height(1), &params, &verifier)
                .map_err(|e| BenchError::Other(e.to_string()))?;
            connect.push(start.elapsed().as_secs_f64());
            // The root alone, over the same changes: undo, redo the
            // entries, time the root.
            undo_block(&mut state, &undo);
            let mut journal = protocol::state::Journal::default();
            for (address, _) in &undo.accounts {
                let mut account = state.account(address);
                account.nonce = account.nonce.wrapping_add(1);
                state.set_account(&mut journal, *address, account);
            }
            let start = Instant::now();
            state.root()?;
            roots.push(start.elapsed().as_secs_f64());
            state.rollback(journal);
        }
        rows.push(ConnectRow {
            accounts: size,
            connect_seconds: percentile(&connect, 50.0),
            root_seconds: percentile(&roots, 50.0),
            from_scratch_seconds,
        });
    }
    Ok(rows)
}
