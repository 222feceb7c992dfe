//! A network simulation: many regtest nodes in one process, on loopback
//! TCP, in a random topology, with blocks found as proof of work finds them
//! and transfers injected at a steady rate; then a partition and its heal.
//! `gradchain-node bench network` runs it at 32 nodes; a small one runs in
//! the test suite.
//!
//! What it measures, from the nodes' own event streams (each node's
//! [`crate::observe::Observer`]):
//! - block propagation: for each block of the final main chain found in the
//!   steady phase, the time from its finding until 50, 90 and 100% of the
//!   nodes connected it;
//! - the stale rate: blocks found in the steady phase that did not end on
//!   the main chain;
//! - mempool convergence: for each transfer, the time from its submission
//!   until 50, 90 and 100% of the nodes admitted it;
//! - the heal: two halves cut apart find blocks on their own; once the
//!   links are back, the time until every node is on one tip with one
//!   state root.
//!
//! Blocks are found by the harness, not by the nodes' miners: regtest's
//! proof of work is trivial, so a hash race would say nothing. Instead the
//! gaps between blocks are exponential with the configured mean and each
//! block goes to a miner picked at random, which is how proof of work
//! spaces blocks and picks their finders. The finder builds on whatever its
//! own tip is at that moment, so a block found before the last one reached
//! its finder goes stale, as on a real network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::bench::{percentile, BenchError};
use crate::chain_task::BlockSource;
use crate::net::network::Topic;
use crate::node::RunningNode;
use crate::observe::Event;
use protocol::api::BlockRef;
use protocol::{Address, Amount, BlockHash, ChainParams, SignedTx, TxBody, TxKind};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes.
    pub nodes: usize,
    /// Each node has at least this many peers (where the network is large
    /// enough)...
    pub min_peers: usize,
    /// ... and at most this many.
    pub max_peers: usize,
    /// Nodes that find blocks.
    pub miners: usize,
    /// Mean time between two blocks.
    pub block_interval: Duration,
    /// Transfers submitted per second, spread over the nodes.
    pub tx_rate: f64,
    /// How long blocks and transfers flow before the partition.
    pub steady: Duration,
    /// How long the two halves stay apart.
    pub partition: Duration,
    /// Seeds the topology, the block finders and their timing.
    pub seed: u64,
}

impl SimConfig {
    /// 32 nodes with 6 to 8 peers each, 8 miners, a block every 2 s on
    /// average (the devnet's 10 s scaled down), 20 transfers a second, a
    /// minute of steady flow and 20 s apart.
    pub fn network() -> Self {
        Self {
            nodes: 32,
            min_peers: 6,
            max_peers: 8,
            miners: 8,
            block_interval: Duration::from_secs(2),
            tx_rate: 20.0,
            steady: Duration::from_secs(60),
            partition: Duration::from_secs(20),
            seed: 1,
        }
    }
}

/// A random graph on `nodes` vertices where every vertex has between `min`
/// and `max` neighbours (fewer when the graph is too small), connected: a
/// random spanning path first, then random edges between vertices below
/// `min`, never above `max`. Edges are `(a, b)` with `a < b`.
pub fn topology(nodes: usize, min: usize, max: usize, rng: &mut StdRng) -> Vec<(usize, usize)> {
    let mut order: Vec<usize> = (0..nodes).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let mut edges = BTreeSet::new();
    let mut degree = vec![0usize; nodes];
    let add =
        |a: usize, b: usize, edges: &mut BTreeSet<(usize, usize)>, degree: &mut Vec<usize>| {
            if a != b && edges.insert((a.min(b), a.max(b))) {
                degree[a] += 1;
                degree[b] += 1;
            }
        };
    for pair in order.windows(2) {
        if let [a, b] = pair {
            add(*a, *b, &mut edges, &mut degree);
        }
    }
    let max = max.max(2);
    let min = min.min(nodes.saturating_sub(1)).min(max);
    for _ in 0..nodes.saturating_mul(64) {
        let short: Vec<usize> = (0..nodes).filter(|v| degree[*v] < min).collect();
        let Some(&a) = short.first() else {
            break;
        };
        let candidates: Vec<usize> = (0..nodes)
            .filter(|b| *b != a && degree[*b] < max && !edges.contains(&(a.min(*b), a.max(*b))))
            .collect();
        if candidates.is_empty() {
            break;
        }
        let b = candidates[rng.gen_range(0..candidates.len())];
        add(a, b, &mut edges, &mut degree);
    }
    edges.into_iter().collect()
}

/// When each node saw each block and transaction, from its events.
#[derive(Default)]
struct Sightings {
    /// Block hash (as text) to the first time each node connected it.
    blocks: HashMap<String, BTreeMap<usize, Instant>>,
    /// Transaction id (as text) to the first time each node admitted it.
    txs: HashMap<String, BTreeMap<usize, Instant>>,
    /// Events a slow reader lost (0 unless the machine is overloaded).
    lost: u64,
}

type Shared = Arc<Mutex<Sightings>>;

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, Sightings> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records `node`'s connected blocks and admitted transactions.
fn watch(index: usize, node: &RunningNode, shared: Shared) -> tokio::task::JoinHandle<()> {
    let mut events = node.observer().subscribe();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Block(block)) => {
                    lock(&shared)
                        .blocks
                        .entry(block.hash)
                        .or_default()
                        .entry(index)
                        .or_insert_with(Instant::now);
                }
                Ok(Event::Tx(tx)) if tx.accepted => {
                    lock(&shared)
                        .txs
                        .entry(tx.id)
                        .or_default()
                        .entry(index)
                        .or_insert_with(Instant::now);
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    lock(&shared).lost = lock(&shared).lost.saturating_add(n);
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            }
        }
    })
}

/// Time to reach 50, 90 and 100% of the nodes, per item that reached them
/// all; seconds.
#[derive(Clone, Debug, Default)]
pub struct Spread {
    /// To half the nodes.
    pub half: Vec<f64>,
    /// To 90% of them.
    pub most: Vec<f64>,
    /// To all of them.
    pub all: Vec<f64>,
    /// Items that never reached every node.
    pub incomplete: usize,
}

impl Spread {
    fn add(&mut self, start: Instant, seen: Option<&BTreeMap<usize, Instant>>, nodes: usize) {
        let mut delays: Vec<f64> = seen
            .map(|s| {
                s.values()
                    .map(|t| t.saturating_duration_since(start).as_secs_f64())
                    .collect()
            })
            .unwrap_or_default();
        if delays.len() < nodes {
            self.incomplete = self.incomplete.saturating_add(1);
            return;
        }
        delays.sort_by(f64::total_cmp);
        let at = |share: f64| {
            let rank = ((share * nodes as f64).ceil() as usize).clamp(1, nodes);
            delays.get(rank - 1).copied().unwrap_or(0.0)
        };
        self.half.push(at(0.5));
        self.most.push(at(0.9));
        self.all.push(at(1.0));
    }

    /// `(p50, p90, max)` of one column, milliseconds.
    pub fn summary(column: &[f64]) -> (f64, f64, f64) {
        (
            percentile(column, 0.5) * 1e3,
            percentile(column, 0.9) * 1e3,
            percentile(column, 1.0) * 1e3,
        )
    }
}

/// What one simulation measured.
#[derive(Clone, Debug, Default)]
pub struct SimReport {
    /// Nodes.
    pub nodes: usize,
    /// Links between them.
    pub edges: usize,
    /// Least, mean and most peers per node.
    pub degree: (usize, f64, usize),
    /// Blocks found in the steady phase.
    pub found: usize,
    /// Of those, blocks not on the final main chain.
    pub stale: usize,
    /// Propagation of the steady phase's main-chain blocks.
    pub blocks: Spread,
    /// Transfers submitted in the steady phase.
    pub txs_sent: usize,
    /// Their spread through the mempools (a transfer mined before it
    /// reached every mempool counts as incomplete).
    pub txs: Spread,
    /// Blocks each half found while apart.
    pub partition_blocks: (usize, usize),
    /// Links cut.
    pub cut_links: usize,
    /// Seconds from the heal until every node was on one tip.
    pub heal_seconds: f64,
    /// Blocks found after the heal to break a tie between equal branches.
    pub heal_extra_blocks: usize,
    /// Blocks the lighter half disconnected to get there.
    pub heal_reorg_depth: u64,
    /// Whether every node ended on one tip with one state root.
    pub converged: bool,
    /// The height they ended at.
    pub final_height: u64,
    /// Events the harness lost (0 unless the machine is overloaded).
    pub lost_events: u64,
}

/// The running network and what the harness knows about it.
struct Network {
    nodes: Vec<RunningNode>,
    miners: Vec<usize>,
    shared: Shared,
    found: Vec<(BlockHash, Instant, usize)>,
    rng: StdRng,
    params: ChainParams,
}

impl Network {
    /// Has node `finder` find a block on its own tip, and gossips it.
    async fn find_block(&mut self, finder: usize) -> Result<BlockHash, BenchError> {
        let node = self
            .nodes
            .get(finder)
            .ok_or_else(|| BenchError::Other(format!("no node {finder}")))?;
        let miner = Address([u8::try_from(finder % 251).unwrap_or(0); 32]);
        let mut block = node.chain().template(miner).await?.block;
        let target = block
            .header
            .bits
            .to_target()
            .map_err(|e| BenchError::Other(e.to_string()))?;
        let mut hasher = block.header.hasher();
        while !target.is_met_by(&BlockHash(hasher.hash_with_nonce(block.header.nonce))) {
            block.header.nonce = block.header.nonce.wrapping_add(1);
        }
        let hash = block.hash();
        let bytes = protocol::codec::encode(&block)?;
        let found = Instant::now();
        node.chain().submit_block(block, BlockSource::Mined).await?;
        node.network().publish(Topic::Blocks, bytes);
        self.found.push((hash, found, finder));
        Ok(hash)
    }

    /// A finder picked at random among `among`'s miners.
    fn pick_finder(&mut self, among: &dyn Fn(usize) -> bool) -> Option<usize> {
        let eligible: Vec<usize> = self.miners.iter().copied().filter(|m| among(*m)).collect();
        if eligible.is_empty() {
            return None;
        }
        Some(eligible[self.rng.gen_range(0..eligible.len())])
    }

    /// The next exponential gap between blocks.
    fn next_gap(&mut self, mean: Duration) -> Duration {
        let u: f64 = self.rng.gen_range(f64::EPSILON..1.0);
        mean.mul_f64(-u.ln())
    }

    /// Waits until every node is on one tip, and returns it with the blocks
    /// found to get there. Two branches of equal work never resolve by
    /// themselves (each node keeps the one it saw first), so every few
    /// seconds without agreement one more block is found, as the next
    /// block of a real network would break the tie.
    async fn converge(
        &mut self,
        timeout: Duration,
    ) -> Result<(crate::chain::TipSnapshot, usize), BenchError> {
        let deadline = Instant::now() + timeout;
        let mut extra = 0usize;
        loop {
            let agreed = crate::testkit::wait_until("one tip", Duration::from_secs(5), || {
                let first = self.nodes.first().map(|n| n.chain().tip().tip);
                let all = self
                    .nodes
                    .iter()
                    .all(|n| Some(n.chain().tip().tip) == first);
                async move { all }
            })
            .await;
            if agreed.is_ok() {
                let tip = self
                    .nodes
                    .first()
                    .ok_or_else(|| BenchError::Other("no nodes".into()))?
                    .chain()
                    .tip();
                return Ok((tip, extra));
            }
            if Instant::now() >= deadline {
                return Err(BenchError::Other(format!(
                    "the nodes found no common tip in {timeout:?}"
                )));
            }
            if let Some(finder) = self.pick_finder(&|_| true) {
                self.find_block(finder).await?;
                extra = extra.saturating_add(1);
            }
        }
    }

    async fn wait_all_on(&self, tip: BlockHash, timeout: Duration) -> Result<(), BenchError> {
        crate::testkit::wait_until("every node on one tip", timeout, || {
            let all = self.nodes.iter().all(|n| n.chain().tip().tip == tip);
            async move { all }
        })
        .await
        .map_err(BenchError::Other)
    }
}

/// Funds one account per node from the faucet (each node's transfers then
/// come from its own account, in nonce order, as a wallet's would) and
/// waits until every node has the funding block.
async fn fund(net: &mut Network) -> Result<Vec<SigningKey>, BenchError> {
    let keys: Vec<SigningKey> = (0..net.nodes.len())
        .map(|i| {
            let mut seed = [0x5au8; 32];
            seed[..8].copy_from_slice(&(i as u64).to_le_bytes());
            SigningKey::from_bytes(&seed)
        })
        .collect();
    let first = net
        .nodes
        .first()
        .ok_or_else(|| BenchError::Other("no nodes".into()))?;
    let faucet = protocol::params::faucet_key();
    for (nonce, key) in keys.iter().enumerate() {
        let mut body = TxBody {
            from: net.params.faucet,
            nonce: nonce as u64,
            fee: Amount::ZERO,
            kind: TxKind::Transfer {
                to: Address::from_verifying_key(&key.verifying_key()),
                amount: Amount(1_000_000_000),
            },
        };
        body.fee = body
            .min_fee_at(net.params.min_fee_rate)?
            .ok_or_else(|| BenchError::Other("fee overflow".into()))?;
        let tx = body.sign(&faucet, net.params.chain_id)?;
        first
            .chain()
            .submit_tx(tx)
            .await?
            .map_err(|e| BenchError::Other(format!("funding refused: {e}")))?;
    }
    let tip = net.find_block(0).await?;
    net.wait_all_on(tip, Duration::from_secs(120)).await?;
    net.found.clear();
    Ok(keys)
}

/// A transfer of 1 from `key` to the next node's account.
fn transfer(
    params: &ChainParams,
    key: &SigningKey,
    to: Address,
    nonce: u64,
) -> Result<SignedTx, BenchError> {
    let mut body = TxBody {
        from: Address::from_verifying_key(&key.verifying_key()),
        nonce,
        fee: Amount::ZERO,
        kind: TxKind::Transfer {
            to,
            amount: Amount(1),
        },
    };
    body.fee = body
        .min_fee_at(params.min_fee_rate)?
        .ok_or_else(|| BenchError::Other("fee overflow".into()))?;
    Ok(body.sign(key, params.chain_id)?)
}

/// Runs the simulation in `dir`.
pub async fn simulate(config: &SimConfig, dir: &std::path::Path) -> Result<SimReport, BenchError> {
    if config.nodes < 2 {
        return Err(BenchError::Other(format!(
            "{} nodes: a network needs at least 2",
            config.nodes
        )));
    }
    let mut rng = StdRng::seed_from_u64(config.seed);
    let edges = topology(config.nodes, config.min_peers, config.max_peers, &mut rng);
    let mut degree = vec![0usize; config.nodes];
    for (a, b) in &edges {
        degree[*a] += 1;
        degree[*b] += 1;
    }

    // Each link is dialled by its higher-numbered end; nodes start in order.
    let params = ChainParams::regtest();
    let mut nodes: Vec<RunningNode> = Vec::with_capacity(config.nodes);
    for index in 0..config.nodes {
        let bootstrap = edges
            .iter()
            .filter(|(_, b)| *b == index)
            .filter_map(|(a, _)| nodes.get(*a).and_then(RunningNode::p2p_addr))
            .collect();
        let mut node_config =
            crate::testkit::regtest_config(&dir.join(format!("n{index}")), bootstrap);
        node_config.http = None;
        node_config.signature_threads = 1;
        nodes.push(crate::node::start(node_config).await?);
    }
    let expected = degree.clone();
    crate::testkit::wait_until("every link up", Duration::from_secs(120), || {
        let ok = nodes
            .iter()
            .zip(&expected)
            .all(|(n, d)| n.network().peer_count() >= *d);
        async move { ok }
    })
    .await
    .map_err(BenchError::Other)?;

    let shared: Shared = Arc::default();
    let watchers: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| watch(i, n, shared.clone()))
        .collect();
    let stride = (config.nodes / config.miners.clamp(1, config.nodes)).max(1);
    let miners = (0..config.nodes)
        .step_by(stride)
        .take(config.miners.max(1))
        .collect();
    let mut net = Network {
        nodes,
        miners,
        shared,
        found: Vec::new(),
        rng,
        params: params.clone(),
    };
    let keys = fund(&mut net).await?;
    let accounts: Vec<Address> = keys
        .iter()
        .map(|k| Address::from_verifying_key(&k.verifying_key()))
        .collect();

    // Steady flow: transfers at a fixed rate from node to node, blocks at
    // exponential gaps.
    let start = Instant::now();
    let tx_gap = Duration::from_secs_f64(1.0 / config.tx_rate.max(0.01));
    let mut next_tx = start;
    let mut next_block = start + net.next_gap(config.block_interval);
    let mut nonces = vec![0u64; net.nodes.len()];
    let mut sent: Vec<(String, Instant)> = Vec::new();
    let mut sender = 0usize;
    while start.elapsed() < config.steady {
        let now = Instant::now();
        if now >= next_block {
            if let Some(finder) = net.pick_finder(&|_| true) {
                net.find_block(finder).await?;
            }
            next_block = now + net.next_gap(config.block_interval);
        } else if now >= next_tx {
            let key = &keys[sender];
            let to = accounts[(sender + 1) % accounts.len()];
            let tx = transfer(&params, key, to, nonces[sender])?;
            let id = tx.id()?.to_string();
            let bytes = protocol::codec::encode(&tx)?;
            let node = &net.nodes[sender];
            let submitted = Instant::now();
            if node.chain().submit_tx(tx).await?.is_ok() {
                node.network().publish(Topic::Txs, bytes);
                nonces[sender] += 1;
                sent.push((id, submitted));
            }
            sender = (sender + 1) % net.nodes.len();
            next_tx += tx_gap;
        } else {
            let wake = next_block.min(next_tx);
            tokio::time::sleep(wake.saturating_duration_since(now)).await;
        }
    }
    // Let the last block and transfers settle: every node on the heaviest
    // tip, the point the two halves will fork from.
    let (fork, _) = net.converge(Duration::from_secs(60)).await?;
    let steady_found = std::mem::take(&mut net.found);

    // The partition: the lower and the upper half, every link between them
    // blocked at both ends.
    let half = net.nodes.len() / 2;
    let cut: Vec<(usize, usize)> = edges
        .iter()
        .copied()
        .filter(|(a, b)| (*a < half) != (*b < half))
        .collect();
    for (a, b) in &cut {
        let (pa, pb) = (net.nodes[*a].peer_id(), net.nodes[*b].peer_id());
        net.nodes[*a].network().block_peer(pb);
        net.nodes[*b].network().block_peer(pa);
    }
    let cut_degree: Vec<usize> = (0..net.nodes.len())
        .map(|v| {
            edges
                .iter()
                .filter(|(a, b)| (*a == v || *b == v) && (*a < half) == (*b < half))
                .count()
        })
        .collect();
    crate::testkit::wait_until("the cut to take", Duration::from_secs(60), || {
        let ok = net
            .nodes
            .iter()
            .zip(&cut_degree)
            .all(|(n, d)| n.network().peer_count() <= *d);
        async move { ok }
    })
    .await
    .map_err(BenchError::Other)?;
    let apart = Instant::now();
    let mut next_block = apart + net.next_gap(config.block_interval);
    while apart.elapsed() < config.partition {
        let now = Instant::now();
        if now >= next_block {
            if let Some(finder) = net.pick_finder(&|_| true) {
                net.find_block(finder).await?;
            }
            next_block = now + net.next_gap(config.block_interval);
        } else {
            tokio::time::sleep(next_block.saturating_duration_since(now)).await;
        }
    }
    let lower_found = net.found.iter().filter(|f| f.2 < half).count();
    let partition_blocks = (lower_found, net.found.len() - lower_found);
    // Settle each half, then make sure one is strictly heavier.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let work = |nodes: &[RunningNode]| {
        nodes
            .iter()
            .map(|n| n.chain().tip())
            .max_by(|a, b| a.total_work.cmp(&b.total_work))
    };
    let (lower, upper) = (work(&net.nodes[..half]), work(&net.nodes[half..]));
    if let (Some(lower), Some(upper)) = (lower, upper) {
        if lower.total_work == upper.total_work {
            if let Some(finder) = net.pick_finder(&|m| m < half) {
                net.find_block(finder).await?;
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tips: Vec<_> = net.nodes.iter().map(|n| n.chain().tip()).collect();
    let heavier = tips
        .iter()
        .max_by(|a, b| a.total_work.cmp(&b.total_work))
        .cloned()
        .ok_or_else(|| BenchError::Other("no nodes".into()))?;
    // The lighter half disconnects what it found apart.
    let heal_reorg_depth = tips
        .iter()
        .filter(|t| t.tip != heavier.tip)
        .map(|t| t.height.0.saturating_sub(fork.height.0))
        .max()
        .unwrap_or(0);

    // The heal.
    let healed = Instant::now();
    for (a, b) in &cut {
        let (pa, pb) = (net.nodes[*a].peer_id(), net.nodes[*b].peer_id());
        net.nodes[*a].network().unblock_peer(pb);
        net.nodes[*b].network().unblock_peer(pa);
    }
    let (final_tip, heal_extra_blocks) = net.converge(Duration::from_secs(120)).await?;
    let heal_seconds = healed.elapsed().as_secs_f64();
    let roots: BTreeSet<_> = net
        .nodes
        .iter()
        .map(|n| n.chain().tip().state_root)
        .collect();
    let final_tips: BTreeSet<_> = net.nodes.iter().map(|n| n.chain().tip().tip).collect();

    // Which steady-phase blocks ended on the main chain, and how they spread.
    let mut report = SimReport {
        nodes: net.nodes.len(),
        edges: edges.len(),
        degree: (
            degree.iter().copied().min().unwrap_or(0),
            degree.iter().sum::<usize>() as f64 / degree.len().max(1) as f64,
            degree.iter().copied().max().unwrap_or(0),
        ),
        found: steady_found.len(),
        partition_blocks,
        cut_links: cut.len(),
        heal_seconds,
        heal_extra_blocks,
        heal_reorg_depth,
        converged: roots.len() == 1 && final_tips.len() == 1,
        final_height: final_tip.height.0,
        txs_sent: sent.len(),
        ..SimReport::default()
    };
    let first = net
        .nodes
        .first()
        .ok_or_else(|| BenchError::Other("no nodes".into()))?;
    let sightings = {
        let mut guard = lock(&net.shared);
        report.lost_events = guard.lost;
        std::mem::take(&mut *guard)
    };
    for (hash, found, _) in &steady_found {
        let main = first
            .chain()
            .block(BlockRef::Hash(*hash))
            .await?
            .is_some_and(|b| b.main_chain);
        if main {
            report.blocks.add(
                *found,
                sightings.blocks.get(&hash.to_string()),
                report.nodes,
            );
        } else {
            report.stale = report.stale.saturating_add(1);
        }
    }
    for (id, submitted) in &sent {
        report
            .txs
            .add(*submitted, sightings.txs.get(id), report.nodes);
    }

    for watcher in watchers {
        watcher.abort();
    }
    for node in net.nodes {
        node.stop().await;
    }
    Ok(report)
}

impl std::fmt::Display for SimReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "{} nodes, {} links, peers per node {} to {} (mean {:.1})",
            self.nodes, self.edges, self.degree.0, self.degree.2, self.degree.1
        )?;
        let table = |f: &mut std::fmt::Formatter<'_>, what: &str, spread: &Spread, count: usize| {
            let rows = [
                ("50%", &spread.half),
                ("90%", &spread.most),
                ("100%", &spread.all),
            ];
            for (row, (reach, samples)) in rows.into_iter().enumerate() {
                let (p50, p90, max) = Spread::summary(samples);
                let head = if row == 0 {
                    format!("{what:<28} {count:>5}")
                } else {
                    String::new()
                };
                writeln!(
                    f,
                    "{head:<34} to {reach:>4}: p50 {p50:>7.1} p90 {p90:>7.1} max {max:>7.1} ms"
                )?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        table(f, "main-chain blocks", &self.blocks, self.blocks.all.len())?;
        if self.blocks.incomplete > 0 {
            writeln!(
                f,
                "  {} main-chain blocks never reached every node's events",
                self.blocks.incomplete
            )?;
        }
        writeln!(
            f,
            "stale blocks                 {:>5} of {} found ({:.1}%)",
            self.stale,
            self.found,
            100.0 * self.stale as f64 / self.found.max(1) as f64
        )?;
        table(
            f,
            "transfers in every mempool",
            &self.txs,
            self.txs.all.len(),
        )?;
        writeln!(
            f,
            "  {} of {} transfers sent were mined before every mempool had them",
            self.txs.incomplete, self.txs_sent
        )?;
        writeln!(
            f,
            "partition: {} links cut, halves found {} and {} blocks apart; after the heal every node on one tip in {:.2} s (lighter half disconnected {} blocks; {} more blocks found to break ties)",
            self.cut_links, self.partition_blocks.0, self.partition_blocks.1, self.heal_seconds, self.heal_reorg_depth, self.heal_extra_blocks
        )?;
        write!(
            f,
            "converged: {} (one tip, one state root at height {}); events lost: {}",
            self.converged, self.final_height, self.lost_events
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connected(nodes: usize, edges: &[(usize, usize)]) -> bool {
        let mut seen = vec![false; nodes];
        let mut stack = vec![0];
        while let Some(v) = stack.pop() {
            if std::mem::replace(&mut seen[v], true) {
                continue;
            }
            for (a, b) in edges {
                if *a == v {
                    stack.push(*b);
                } else if *b == v {
                    stack.push(*a);
                }
            }
        }
        seen.iter().all(|s| *s)
    }

    #[test]
    fn the_topology_is_connected_and_keeps_every_degree_in_bounds() {
        for (nodes, min, max) in [(32, 6, 8), (8, 3, 4), (2, 6, 8), (5, 1, 2), (100, 6, 8)] {
            for seed in 0..5 {
                let edges = topology(nodes, min, max, &mut StdRng::seed_from_u64(seed));
                let mut degree = vec![0usize; nodes];
                for (a, b) in &edges {
                    assert!(a < b, "edge ({a}, {b}) is ordered");
                    degree[*a] += 1;
                    degree[*b] += 1;
                }
                assert!(
                    connected(nodes, &edges),
                    "{nodes} nodes, seed {seed}: connected"
                );
                let floor = min.min(nodes - 1);
                for (v, d) in degree.iter().enumerate() {
                    assert!(
                        *d >= floor && *d <= max.max(2),
                        "{nodes} nodes, seed {seed}: node {v} has {d} peers, expected {floor} to {max}"
                    );
                }
                assert_eq!(
                    edges,
                    topology(nodes, min, max, &mut StdRng::seed_from_u64(seed)),
                    "the same seed draws the same graph"
                );
            }
        }
    }

    #[test]
    fn a_spread_reads_the_shares_of_nodes_reached() {
        let start = Instant::now();
        let seen: BTreeMap<usize, Instant> = (0..10)
            .map(|i| (i, start + Duration::from_millis(10 * (i as u64 + 1))))
            .collect();
        let mut spread = Spread::default();
        spread.add(start, Some(&seen), 10);
        spread.add(start, Some(&seen), 11);
        spread.add(start, None, 10);
        assert_eq!(spread.incomplete, 2);
        let ms = |v: &[f64]| (v[0] * 1e3).round();
        assert_eq!(ms(&spread.half), 50.0);
        assert_eq!(ms(&spread.most), 90.0);
        assert_eq!(ms(&spread.all), 100.0);
    }
}
