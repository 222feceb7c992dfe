//! Workspace-level integration tests for gradchain: several real nodes on
//! 127.0.0.1 in one process, talking libp2p to each other and answering
//! clients over their HTTP APIs (see `tests/`).
//!
//! The library itself is empty; the tests drive the node through its public
//! API (`node::start`, `node::testkit`) and must never reach into its
//! internals or sleep for a fixed time: every wait polls with a deadline.

use std::time::Duration;

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId};
use protocol::{
    merkle_root, Address, Block, BlockHash, ChainParams, Coinbase, Header, StateRoot, Transaction,
};
use tokio::sync::mpsc;
use trainer::client::{ClientError, NodeClient};

/// How long one HTTP call of a test may take.
pub const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of `node`'s HTTP API.
pub fn api_of(node: &node::RunningNode) -> anyhow::Result<NodeClient> {
    let url = node
        .http_url()
        .ok_or_else(|| anyhow::anyhow!("the node serves no HTTP API"))?;
    Ok(NodeClient::new(&url)?.with_timeout(HTTP_TIMEOUT))
}

/// Runs a call of the blocking client on a thread of its own, so that the
/// runtime's workers keep serving the nodes; the outer error is only the
/// thread's.
pub async fn call<T, F>(api: &NodeClient, f: F) -> anyhow::Result<Result<T, ClientError>>
where
    T: Send + 'static,
    F: FnOnce(&NodeClient) -> Result<T, ClientError> + Send + 'static,
{
    let api = api.clone();
    Ok(tokio::task::spawn_blocking(move || f(&api)).await?)
}

/// A gossipsub-only libp2p client driven by its own task: what a peer that
/// misbehaves looks like to a node.
pub struct RawClient {
    /// Its peer id.
    pub peer_id: PeerId,
    /// Messages to publish: topic and bytes. Each is retried until the
    /// client has a peer subscribed to the topic.
    pub publish: mpsc::UnboundedSender<(&'static str, Vec<u8>)>,
    /// The task; abort it to disconnect.
    pub task: tokio::task::JoinHandle<()>,
}

/// Connects a [`RawClient`] to `target`.
pub fn raw_client(target: Multiaddr) -> anyhow::Result<RawClient> {
    raw_client_as(libp2p::identity::Keypair::generate_ed25519(), target)
}

/// Connects a [`RawClient`] with the identity `keypair` to `target` (so a
/// test can come back as a peer the node has seen).
pub fn raw_client_as(
    keypair: libp2p::identity::Keypair,
    target: Multiaddr,
) -> anyhow::Result<RawClient> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| {
            let config = gossipsub::ConfigBuilder::default()
                .max_transmit_size(4 << 20)
                .build()
                .map_err(|e| e.to_string())?;
            let behaviour: gossipsub::Behaviour = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                config,
            )?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(behaviour)
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    let peer_id = *swarm.local_peer_id();
    swarm.dial(target)?;
    let (publish, mut requests) = mpsc::unbounded_channel::<(&'static str, Vec<u8>)>();
    let task = tokio::spawn(async move {
        let mut pending: Vec<(&'static str, Vec<u8>)> = Vec::new();
        let mut retry = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                request = requests.recv() => match request {
                    Some(request) => pending.push(request),
                    None => break,
                },
                _ = swarm.select_next_some() => {}
                _ = retry.tick() => {
                    pending.retain(|(topic, data)| {
                        match swarm.behaviour_mut().publish(IdentTopic::new(*topic), data.clone()) {
                            Ok(_) | Err(gossipsub::PublishError::Duplicate) => false,
                            Err(_) => true,
                        }
                    });
                }
            }
        }
    });
    Ok(RawClient {
        peer_id,
        publish,
        task,
    })
}

/// A regtest block on `parent` (a hash: it need not be known) at `height`
/// with a correct merkle root and a made-up state root; its proof of work
/// is ground to be valid or not, as `valid_pow` says.
pub fn forged_block(
    parent: BlockHash,
    parent_time: u32,
    height: u64,
    txs: Vec<Transaction>,
    valid_pow: bool,
) -> anyhow::Result<Block> {
    let params = ChainParams::regtest();
    let mut all = vec![Transaction::Coinbase(Coinbase {
        height: protocol::Height(height),
        miner: Address([0xee; 32]),
        amount: params.subsidy(protocol::Height(height)),
    })];
    all.extend(txs);
    let ids = all
        .iter()
        .map(Transaction::id)
        .collect::<Result<Vec<_>, _>>()?;
    let mut header = Header {
        version: params.block_version,
        prev: parent,
        merkle_root: merkle_root(&ids),
        state_root: StateRoot([0x42; 32]),
        time: parent_time + 1,
        bits: params.pow_limit,
        nonce: 0,
    };
    let target = header.bits.to_target()?;
    let mut hasher = header.hasher();
    while target.is_met_by(&BlockHash(hasher.hash_with_nonce(header.nonce))) != valid_pow {
        header.nonce += 1;
    }
    Ok(Block { header, txs: all })
}
