//! Wiring: builds the chain task, the network event loop, the sync driver,
//! the gossip dispatcher, the parked-block data fetcher, the auditor, the
//! miner and the HTTP API from a [`NodeConfig`], and stops them in order.
//!
//! [`run`] takes the shutdown signal as an argument (SIGINT/SIGTERM in the
//! binary, a channel in tests); [`start`] returns a [`RunningNode`] whose
//! handles tests drive directly. Nothing here makes consensus decisions.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::gossipsub::MessageAcceptance;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};
use protocol::{codec, Address, ChainParams};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;

use crate::blobs::{BlobError, BlobStore, BLOB_FILE};
use crate::chain::{Chain, ChainError, SharedVerifier};
use crate::chain_task::{self, ChainHandle, ChainTask};
use crate::http::{HttpConfig, HttpError, HttpState};
use crate::jobs::{self, AuditConfig, AuditStats, JobsContext};
use crate::keys::{self, KeyError};
use crate::mempool::MempoolLimits;
use crate::miner::{Miner, MinerConfig, MinerStats};
use crate::net::handlers::{self, Context};
use crate::net::network::{self, NetError, NetworkClient, NetworkConfig, NetworkEvent, Topic};
use crate::net::sync::{SyncDriver, SyncTrigger};
use crate::observe::Observer;
use crate::verifier::NodeVerifier;

/// Most gossip messages being validated at once; more are ignored.
const MAX_GOSSIP_IN_FLIGHT: usize = 512;

/// File name of the redb store inside the data dir.
pub const STORE_FILE: &str = "chain.redb";

/// Everything a node needs to start.
#[derive(Clone)]
pub struct NodeConfig {
    /// Where the store and the node key live.
    pub data_dir: PathBuf,
    /// The chain to follow.
    pub params: ChainParams,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Peers to stay connected to, with or without a `/p2p/` suffix.
    pub bootstrap: Vec<Multiaddr>,
    /// Mine when set: the coinbase pays this address.
    pub mine: Option<Address>,
    /// Hashing threads.
    pub mining_threads: usize,
    /// Least time between two blocks this node mines.
    pub mine_interval: Duration,
    /// Replays segments for fraud proofs; `None` (the default) is the
    /// trainer's replay verifier over the node's blob store, with an answer
    /// cache. Tests may put another here.
    pub verifier: Option<SharedVerifier>,
    /// Mempool caps.
    pub mempool: MempoolLimits,
    /// Threads that verify a block's signatures not seen before (default:
    /// the cores available).
    pub signature_threads: usize,
    /// Transactions whose verified signatures are remembered, so that a
    /// block carrying them skips them (0 verifies every signature of every
    /// block).
    pub signature_cache: usize,
    /// Forward a gossiped block that would become the tip, and whose
    /// signatures this node already verified, as soon as its header, proof
    /// of work and stateless rules check out, before its full validation
    /// (default: on; see [`crate::chain::Chain::relay_verdict`]).
    pub early_relay: bool,
    /// How pending results are audited.
    pub audit: AuditConfig,
    /// Where the HTTP API listens; `None` turns it off.
    pub http: Option<SocketAddr>,
    /// The bearer token its write routes require (required off loopback).
    pub http_token: Option<String>,
}

/// Where the HTTP API listens unless told otherwise.
pub const DEFAULT_HTTP: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
    protocol::api::DEFAULT_HTTP_PORT,
);

/// Share of a result's segments a node replays unless told otherwise: with
/// three auditors at 0.1, a worker faking half of 64 segments escapes with a
/// chance below 1e-6 (see the design notes).
pub const DEFAULT_AUDIT_FRACTION: f64 = 0.1;

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("data_dir", &self.data_dir)
            .field("chain", &self.params.name)
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("mine", &self.mine)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Defaults for `params` in `data_dir`: listen on all interfaces on the
    /// default port, no bootstrap, not mining.
    pub fn new(data_dir: PathBuf, params: ChainParams) -> Self {
        let mine_interval = if params.name == "regtest" {
            Duration::from_millis(1000)
        } else {
            Duration::ZERO
        };
        Self {
            data_dir,
            params,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            mine: None,
            mining_threads: 1,
            mine_interval,
            verifier: None,
            mempool: MempoolLimits::default(),
            signature_threads: crate::signatures::available_threads(),
            signature_cache: crate::signatures::SIGNATURE_CACHE_CAPACITY,
            early_relay: true,
            audit: AuditConfig {
                fraction: DEFAULT_AUDIT_FRACTION,
                key: None,
            },
            http: Some(DEFAULT_HTTP),
            http_token: None,
        }
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data dir could not be created.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The node key could not be loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The blob store could not be opened.
    #[error(transparent)]
    Blobs(#[from] BlobError),
    /// The chain could not be opened.
    #[error("chain store: {0}")]
    Chain(#[from] ChainError),
    /// The network could not start.
    #[error(transparent)]
    Network(#[from] NetError),
    /// The HTTP API could not start.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// A thread or task could not start.
    #[error("cannot start a task: {0}")]
    Spawn(String),
}

/// A started node.
pub struct RunningNode {
    peer_id: PeerId,
    listen_addrs: Vec<Multiaddr>,
    chain: ChainHandle,
    network: NetworkClient,
    miner_stats: Arc<MinerStats>,
    blobs: BlobStore,
    replay: Arc<NodeVerifier>,
    audit_stats: Arc<AuditStats>,
    observer: Arc<Observer>,
    http_addr: Option<SocketAddr>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    miner: Option<Miner>,
    chain_task: ChainTask,
}

impl std::fmt::Debug for RunningNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningNode")
            .field("peer_id", &self.peer_id)
            .field("listen_addrs", &self.listen_addrs)
            .finish_non_exhaustive()
    }
}

impl RunningNode {
    /// The node's peer id.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// The addresses it listens on, as bound.
    pub fn listen_addrs(&self) -> &[Multiaddr] {
        &self.listen_addrs
    }

    /// The first listen address with the `/p2p/` suffix, for dialing.
    pub fn p2p_addr(&self) -> Option<Multiaddr> {
        self.listen_addrs
            .first()
            .map(|addr| addr.clone().with(Protocol::P2p(self.peer_id)))
    }

    /// The chain task.
    pub fn chain(&self) -> &ChainHandle {
        &self.chain
    }

    /// The network event loop.
    pub fn network(&self) -> &NetworkClient {
        &self.network
    }

    /// The blob store.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// The caching segment verifier (also the chain's unless the config
    /// named another).
    pub fn replay(&self) -> &Arc<NodeVerifier> {
        &self.replay
    }

    /// The auditor's counters.
    pub fn audit_stats(&self) -> &Arc<AuditStats> {
        &self.audit_stats
    }

    /// Miner counters.
    pub fn miner_stats(&self) -> &Arc<MinerStats> {
        &self.miner_stats
    }

    /// Events, metrics and what the HTTP API remembers.
    pub fn observer(&self) -> &Arc<Observer> {
        &self.observer
    }

    /// The HTTP API's address, as bound; `None` when it is off.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// The HTTP API's base URL, such as `http://127.0.0.1:9701`.
    pub fn http_url(&self) -> Option<String> {
        self.http_addr.map(|addr| format!("http://{addr}"))
    }

    /// Stops mining, keeping the node running.
    pub async fn stop_mining(&mut self) {
        if let Some(miner) = self.miner.take() {
            miner.stop().await;
        }
    }

    /// Stops every task and closes the store.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(miner) = self.miner.take() {
            miner.stop().await;
        }
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
        self.chain_task.stop().await;
        tracing::info!("node stopped");
    }
}

/// Starts a node.
pub async fn start(config: NodeConfig) -> Result<RunningNode, NodeError> {
    std::fs::create_dir_all(&config.data_dir).map_err(|source| NodeError::DataDir {
        path: config.data_dir.clone(),
        source,
    })?;
    // The HTTP address is checked (and bound) before anything is opened,
    // so a refused configuration leaves nothing behind.
    let http_listener = match config.http {
        Some(addr) => Some(
            crate::http::bind(&HttpConfig {
                addr,
                token: config.http_token.clone(),
            })
            .await?,
        ),
        None => None,
    };
    let http_addr = http_listener.as_ref().and_then(|l| l.local_addr().ok());
    let mut registry = prometheus_client::registry::Registry::default();
    let observer = Arc::new(Observer::new(crate::metrics::Metrics::register(
        &mut registry,
    )));
    let p2p_metrics = Arc::new(libp2p::metrics::Metrics::new(&mut registry));
    let keypair = keys::node_identity(&config.data_dir)?;
    let peer_id = keypair.public().to_peer_id();
    let store_path = config.data_dir.join(STORE_FILE);
    let params = config.params.clone();
    let blob_path = config.data_dir.join(BLOB_FILE);
    let blobs = tokio::task::spawn_blocking(move || BlobStore::open(&blob_path))
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))??;
    let replay = NodeVerifier::new(blobs.clone());
    replay.record_into(observer.metrics.replay_seconds.clone());
    let verifier: SharedVerifier = match &config.verifier {
        Some(verifier) => verifier.clone(),
        None => replay.clone(),
    };
    let limits = config.mempool;
    let (signature_threads, signature_cache) = (config.signature_threads, config.signature_cache);
    let chain = tokio::task::spawn_blocking(move || {
        Chain::open(&store_path, params, verifier, limits).map(|mut chain| {
            chain.set_signature_checks(signature_threads, signature_cache);
            chain
        })
    })
    .await
    .map_err(|e| NodeError::Spawn(e.to_string()))??;
    tracing::info!(
        chain = config.params.name,
        height = chain.height().0,
        tip = %chain.tip(),
        %peer_id,
        "chain loaded"
    );
    let (chain, chain_task) = chain_task::spawn_observed(chain, observer.clone())
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    let max_gossip = config.params.max_block_bytes.saturating_add(64 * 1024);
    let (network, event_loop, mut events, listen_addrs) = match network::start(NetworkConfig {
        keypair,
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        max_gossip_bytes: max_gossip,
        metrics: Some(p2p_metrics),
        data_dir: Some(config.data_dir.clone()),
    })
    .await
    {
        Ok(parts) => parts,
        Err(err) => {
            chain_task.stop().await;
            return Err(err.into());
        }
    };
    let (shutdown, shutdown_rx) = watch::channel(false);
    let miner_stats = Arc::new(MinerStats::default());
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(event_loop.run(shutdown_rx.clone())));

    let (trigger_tx, trigger_rx) = mpsc::unbounded_channel();
    let (behind_tx, behind_rx) = mpsc::unbounded_channel();
    let driver = SyncDriver::new(chain.clone(), network.clone(), config.params.clone());
    tasks.push(tokio::spawn(driver.run(
        trigger_rx,
        behind_rx,
        shutdown_rx.clone(),
    )));

    let ctx = Context {
        chain: chain.clone(),
        network: network.clone(),
        params: Arc::new(config.params.clone()),
        miner: miner_stats.clone(),
        peer_id,
        behind: behind_tx,
        blobs: blobs.clone(),
        early_relay: config.early_relay,
        observer: observer.clone(),
    };
    let jobs_ctx = JobsContext {
        chain: chain.clone(),
        network: network.clone(),
        blobs: blobs.clone(),
        params: Arc::new(config.params.clone()),
    };
    tasks.push(tokio::spawn(jobs::run_data_fetcher(
        jobs_ctx.clone(),
        shutdown_rx.clone(),
    )));
    let audit_stats = Arc::new(AuditStats::default());
    if config.audit.fraction > 0.0 {
        tracing::info!(
            fraction = config.audit.fraction,
            challenger = ?config.audit.key.as_ref().map(|k| Address::from_verifying_key(&k.verifying_key())),
            "auditing pending results"
        );
        tasks.push(tokio::spawn(jobs::run_auditor(
            jobs_ctx,
            config.audit.clone(),
            audit_stats.clone(),
            observer.clone(),
            shutdown_rx.clone(),
        )));
    }
    if let Some(listener) = http_listener {
        let state = HttpState {
            ctx: ctx.clone(),
            observer: observer.clone(),
            registry: Arc::new(registry),
            token: config.http_token.as_deref().map(|t| Arc::from(t.trim())),
        };
        tasks.push(tokio::spawn(crate::http::serve(
            listener,
            state,
            shutdown_rx.clone(),
        )));
    }
    let in_flight = Arc::new(Semaphore::new(MAX_GOSSIP_IN_FLIGHT));
    tasks.push(tokio::spawn(async move {
        while let Some(event) = events.recv().await {
            match event {
                NetworkEvent::PeerReady(peer) => {
                    let _ = trigger_tx.send(SyncTrigger::PeerReady(peer));
                }
                NetworkEvent::PeerGone(peer) => {
                    let _ = trigger_tx.send(SyncTrigger::PeerGone(peer));
                }
                NetworkEvent::Gossip {
                    topic,
                    source,
                    id,
                    data,
                } => match in_flight.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let ctx = ctx.clone();
                        tokio::spawn(async move {
                            handlers::on_gossip(ctx, topic, source, id, data).await;
                            drop(permit);
                        });
                    }
                    // Too many messages waiting on the chain: drop this one
                    // unforwarded rather than queue without bound.
                    Err(_) => ctx.network.report(id, source, MessageAcceptance::Ignore),
                },
                NetworkEvent::SyncRequest { peer, ticket, data } => {
                    tokio::spawn(handlers::on_sync_request(ctx.clone(), peer, ticket, data));
                }
                NetworkEvent::BlobRequest { peer, ticket, data } => {
                    tokio::spawn(crate::net::blob_fetch::serve(
                        ctx.blobs.clone(),
                        ctx.network.clone(),
                        peer,
                        ticket,
                        data,
                    ));
                }
            }
        }
    }));

    let miner = match config.mine {
        Some(address) => {
            let (announce, mut announced) = mpsc::unbounded_channel();
            let gossip = network.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(block) = announced.recv().await {
                    match codec::encode(&block) {
                        Ok(bytes) => gossip.publish(Topic::Blocks, bytes),
                        Err(err) => tracing::error!(reason = %err, "cannot encode a mined block"),
                    }
                }
            }));
            tracing::info!(%address, threads = config.mining_threads, "mining");
            Some(
                Miner::start(
                    MinerConfig {
                        threads: config.mining_threads,
                        address,
                        min_interval: config.mine_interval,
                    },
                    chain.clone(),
                    miner_stats.clone(),
                    announce,
                    shutdown_rx.clone(),
                )
                .map_err(|e| NodeError::Spawn(e.to_string()))?,
            )
        }
        None => None,
    };
    Ok(RunningNode {
        peer_id,
        listen_addrs,
        chain,
        network,
        miner_stats,
        blobs,
        replay,
        audit_stats,
        observer,
        http_addr,
        shutdown,
        tasks,
        miner,
        chain_task,
    })
}

/// Runs a node until `shutdown` completes, then stops it cleanly.
pub async fn run(config: NodeConfig, shutdown: impl Future<Output = ()>) -> Result<(), NodeError> {
    let node = start(config).await?;
    shutdown.await;
    tracing::info!("shutting down");
    node.stop().await;
    Ok(())
}
