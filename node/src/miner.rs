//! The miner: OS threads scanning nonces over the header midstate, and an
//! async coordinator that fetches templates from the chain task, cancels the
//! threads the moment the tip moves, submits found blocks and logs the hash
//! rate.
//!
//! Hashing never runs on the async executor, and the miner never touches
//! chain state: it only sees templates and hands back sealed blocks.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::pow::Target;
use protocol::{Address, Block};
use tokio::sync::{mpsc, watch};

use crate::chain::{BlockOutcome, BlockTemplate};
use crate::chain_task::{BlockSource, ChainHandle};
use crate::nonce_scan::NonceScanner;

/// Nonces hashed between two checks of the cancel flag.
const BATCH: u64 = 4096;
/// Least time between two template rebuilds caused by new transactions only.
const TEMPLATE_REFRESH: Duration = Duration::from_millis(500);
/// How often the hash rate is logged.
const HASHRATE_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the hash rate figure in `status` is refreshed.
const HASHRATE_SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// How to mine.
#[derive(Clone, Debug)]
pub struct MinerConfig {
    /// Hashing threads.
    pub threads: usize,
    /// Where the coinbase pays.
    pub address: Address,
    /// Least time between two blocks this node mines; keeps regtest, where
    /// nearly every hash wins, from outrunning the clock.
    pub min_interval: Duration,
}

/// Counters shared with the HTTP status and metrics.
#[derive(Debug, Default)]
pub struct MinerStats {
    /// Hashes computed since start.
    pub hashes: AtomicU64,
    /// Hashes per second over the last sample.
    pub hashrate: AtomicU64,
    /// Whether the miner runs.
    pub mining: AtomicBool,
    /// Blocks this node mined that became the tip.
    pub blocks: AtomicU64,
}

/// What the hashing threads work on: a header to find a nonce for, its
/// target, and the generation that tells them when it is stale.
#[derive(Clone)]
struct Assignment {
    generation: u64,
    header: protocol::Header,
    target: Target,
}

struct Shared {
    generation: AtomicU64,
    work: Mutex<Option<Assignment>>,
    stop: AtomicBool,
}

impl Shared {
    fn current(&self) -> Option<Assignment> {
        self.work.lock().ok().and_then(|w| w.clone())
    }

    fn set(&self, work: Option<Assignment>) {
        if let Ok(mut slot) = self.work.lock() {
            let generation = work.as_ref().map(|w| w.generation);
            *slot = work;
            if let Some(generation) = generation {
                self.generation.store(generation, Ordering::SeqCst);
            }
        }
    }

    /// Cancels the current work at once: threads see a new generation at
    /// their next batch boundary.
    fn cancel(&self) {
        if let Ok(mut slot) = self.work.lock() {
            *slot = None;
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn hash_thread(
    index: u64,
    shared: Arc<Shared>,
    stats: Arc<MinerStats>,
    found: mpsc::UnboundedSender<(u64, u64)>,
) {
    let mut done_generation = None;
    while !shared.stop.load(Ordering::Relaxed) {
        let work = match shared.current() {
            Some(work) if Some(work.generation) != done_generation => work,
            _ => {
                std::thread::park_timeout(Duration::from_millis(20));
                continue;
            }
        };
        let mut scanner = NonceScanner::new(&work.header, &work.target);
        // Threads split the nonce space by their top bits.
        let mut nonce = index.checked_shl(56).unwrap_or(0) | u64::from(rand::random::<u32>());
        loop {
            if let Some(winner) = scanner.scan(nonce, BATCH) {
                let _ = found.send((work.generation, winner));
                done_generation = Some(work.generation);
                stats.hashes.fetch_add(BATCH, Ordering::Relaxed);
                break;
            }
            nonce = nonce.wrapping_add(BATCH);
            stats.hashes.fetch_add(BATCH, Ordering::Relaxed);
            if shared.generation.load(Ordering::Relaxed) != work.generation
                || shared.stop.load(Ordering::Relaxed)
            {
                break;
            }
        }
    }
}

/// The running miner.
pub struct Miner {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    coordinator: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Miner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Miner")
            .field("threads", &self.threads.len())
            .finish()
    }
}

impl Miner {
    /// Starts the hashing threads and the coordinator. Mined blocks that
    /// become the tip are sent on `announce` for gossip.
    pub fn start(
        config: MinerConfig,
        chain: ChainHandle,
        stats: Arc<MinerStats>,
        announce: mpsc::UnboundedSender<Block>,
        shutdown: watch::Receiver<bool>,
    ) -> std::io::Result<Self> {
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            work: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let (found_tx, found_rx) = mpsc::unbounded_channel();
        let mut threads = Vec::new();
        for index in 0..config.threads.max(1) {
            let shared = shared.clone();
            let stats = stats.clone();
            let found = found_tx.clone();
            let index = u64::try_from(index).unwrap_or(0);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("miner-{index}"))
                    .spawn(move || hash_thread(index, shared, stats, found))?,
            );
        }
        stats.mining.store(true, Ordering::SeqCst);
        let coordinator = tokio::spawn(coordinate(
            config,
            chain,
            shared.clone(),
            stats,
            found_rx,
            announce,
            shutdown,
            threads.iter().map(|t| t.thread().clone()).collect(),
        ));
        Ok(Self {
            shared,
            threads,
            coordinator,
        })
    }

    /// Stops the coordinator and joins the threads.
    pub async fn stop(self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.cancel();
        self.coordinator.abort();
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

#[allow(clippy::too_many_arguments)]
async fn coordinate(
    config: MinerConfig,
    chain: ChainHandle,
    shared: Arc<Shared>,
    stats: Arc<MinerStats>,
    mut found: mpsc::UnboundedReceiver<(u64, u64)>,
    announce: mpsc::UnboundedSender<Block>,
    mut shutdown: watch::Receiver<bool>,
    threads: Vec<std::thread::Thread>,
) {
    let mut tip_rx = chain.watch_tip();
    let mut generation = 0u64;
    let mut last_tip = tip_rx.borrow().tip;
    let mut last_tip_at = Instant::now();
    let mut last_mined: Option<Instant> = None;
    let mut sample = tokio::time::interval(HASHRATE_SAMPLE_INTERVAL);
    let mut last_sample = (Instant::now(), 0u64);
    let mut last_log = (Instant::now(), 0u64);
    let mut template: Option<BlockTemplate> = None;
    let mut dirty = true;
    let mut tip_moved = true;
    let mut last_build = Instant::now();
    loop {
        let mut ready_at = Instant::now();
        if let Some(mined) = last_mined {
            ready_at = ready_at.max(mined + config.min_interval);
        }
        if !tip_moved {
            // New transactions alone refresh the template at most this often.
            ready_at = ready_at.max(last_build + TEMPLATE_REFRESH);
        }
        if dirty && ready_at <= Instant::now() {
            last_build = Instant::now();
            tip_moved = false;
            match chain.template(config.address).await {
                Ok(next) => {
                    generation = shared.generation.load(Ordering::SeqCst).wrapping_add(1);
                    let target = next.block.header.bits.to_target();
                    match target {
                        Ok(target) => {
                            shared.set(Some(Assignment {
                                generation,
                                header: next.block.header,
                                target,
                            }));
                            for thread in &threads {
                                thread.unpark();
                            }
                            template = Some(next);
                        }
                        Err(err) => tracing::error!(reason = %err, "template has invalid bits"),
                    }
                }
                Err(err) => tracing::error!(reason = %err, "cannot build a block template"),
            }
            dirty = false;
        }
        let wake = if dirty {
            ready_at
        } else {
            Instant::now() + Duration::from_secs(3600)
        };
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = tokio::time::sleep_until(wake.into()) => {}
            changed = tip_rx.changed() => {
                if changed.is_err() {
                    break;
                }
                let tip = tip_rx.borrow_and_update().tip;
                if tip != last_tip {
                    // Work on the old tip is wasted from this instant.
                    shared.cancel();
                    last_tip = tip;
                    last_tip_at = Instant::now();
                    tip_moved = true;
                }
                dirty = true;
            }
            Some((found_generation, nonce)) = found.recv() => {
                if found_generation != generation {
                    continue;
                }
                let Some(mut block) = template.take().map(|t| t.block) else {
                    continue;
                };
                shared.cancel();
                block.header.nonce = nonce;
                let since_last = last_tip_at.elapsed();
                match chain.submit_block(block.clone(), BlockSource::Mined).await {
                    Ok(BlockOutcome::NewTip { height, hash, txs, .. }) => {
                        tracing::info!(
                            height = height.0,
                            %hash,
                            txs,
                            since_last_ms = u64::try_from(since_last.as_millis()).unwrap_or(u64::MAX),
                            "mined block {} at height {} with {} txs, {:.1}s after the previous block",
                            hash, height, txs, since_last.as_secs_f64()
                        );
                        stats.blocks.fetch_add(1, Ordering::Relaxed);
                        last_tip = hash;
                        last_tip_at = Instant::now();
                        let _ = announce.send(block);
                    }
                    Ok(other) => tracing::debug!(?other, "mined block did not become the tip"),
                    Err(err) => tracing::error!(reason = %err, "mined block refused"),
                }
                last_mined = Some(Instant::now());
                tip_moved = true;
                dirty = true;
            }
            _ = sample.tick() => {
                let now = Instant::now();
                let total = stats.hashes.load(Ordering::Relaxed);
                let elapsed = now.saturating_duration_since(last_sample.0).as_secs_f64();
                if elapsed > 0.0 {
                    let rate = total.saturating_sub(last_sample.1) as f64 / elapsed;
                    stats.hashrate.store(rate as u64, Ordering::Relaxed);
                    // Half a sample of slack keeps the line on a 10 s beat.
                    let since_log = now.saturating_duration_since(last_log.0);
                    if since_log + HASHRATE_SAMPLE_INTERVAL / 2 >= HASHRATE_LOG_INTERVAL {
                        let average = total.saturating_sub(last_log.1) as f64 / since_log.as_secs_f64().max(f64::EPSILON);
                        tracing::info!(hashrate = average as u64, "hash rate {:.2} MH/s", average / 1e6);
                        last_log = (now, total);
                    }
                }
                last_sample = (now, total);
            }
        }
    }
    stats.mining.store(false, Ordering::SeqCst);
}
