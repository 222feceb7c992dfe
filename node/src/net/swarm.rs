//! Building the swarm: transport (tcp + noise + yamux, dns), the behaviours
//! (connection limits, a block list, gossipsub, sync and blob
//! request-response, identify, ping) and their settings.

use std::sync::Arc;
use std::time::Duration;

use libp2p::gossipsub::{self, MessageId};
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::NetworkBehaviour;
use libp2p::{
    allow_block_list, identify, identity, noise, ping, tcp, yamux, Multiaddr, StreamProtocol, Swarm,
};

use super::client::NetError;
use super::wire::{
    FrameCodec, BLOB_PROTOCOL, IDENTIFY_PROTOCOL, MAX_BLOB_FRAME, MAX_SYNC_FRAME, SYNC_PROTOCOL,
};

/// Inbound connections still in their handshake at once. A handshake costs
/// this node a Noise key exchange, so unauthenticated sockets are bounded
/// tightly; more are closed as they arrive.
pub const MAX_PENDING_INCOMING: u32 = 32;
/// Inbound connections established at once: a full node needs 8 to 16
/// peers; the rest is room for the devnet's and tests' local clusters.
pub const MAX_INCOMING: u32 = 128;
/// Connections to one peer at once (two dialling each other at the same
/// moment briefly hold two).
pub const MAX_PER_PEER: u32 = 2;
/// The swarm's behaviours.
#[derive(NetworkBehaviour)]
pub(super) struct Behaviour {
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub(super) limits: libp2p::connection_limits::Behaviour,
    pub(super) gossipsub: gossipsub::Behaviour,
    pub(super) sync: request_response::Behaviour<FrameCodec>,
    pub(super) blob: request_response::Behaviour<FrameCodec>,
    pub(super) identify: identify::Behaviour,
    pub(super) ping: ping::Behaviour,
}

/// Network settings.
#[derive(Clone)]
pub struct NetworkConfig {
    /// The node's identity.
    pub keypair: identity::Keypair,
    /// Addresses to listen on.
    pub listen: Vec<Multiaddr>,
    /// Addresses to keep connected to.
    pub bootstrap: Vec<Multiaddr>,
    /// Largest gossip message (a block near the cap plus framing).
    pub max_gossip_bytes: usize,
    /// libp2p's own metrics (connections, gossipsub, identify, ping), when
    /// the node exports metrics.
    pub metrics: Option<Arc<libp2p::metrics::Metrics>>,
    /// Where bans persist across restarts; `None` keeps them in memory.
    pub data_dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NetworkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetworkConfig")
            .field("listen", &self.listen)
            .field("bootstrap", &self.bootstrap)
            .field("max_gossip_bytes", &self.max_gossip_bytes)
            .field("metrics", &self.metrics.is_some())
            .finish_non_exhaustive()
    }
}

fn message_id(message: &gossipsub::Message) -> MessageId {
    MessageId::from(hex::encode(protocol::sha256(&message.data)))
}

pub(super) fn build_swarm(config: &NetworkConfig) -> Result<Swarm<Behaviour>, NetError> {
    let max_gossip = config.max_gossip_bytes;
    let swarm = libp2p::SwarmBuilder::with_existing_identity(config.keypair.clone())
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_dns()
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let gossip_config = gossipsub::ConfigBuilder::default()
                .validation_mode(gossipsub::ValidationMode::Strict)
                .validate_messages()
                .message_id_fn(message_id)
                .max_transmit_size(max_gossip)
                .heartbeat_interval(Duration::from_millis(500))
                .build()
                .map_err(|e| e.to_string())?;
            let gossipsub = gossipsub::Behaviour::new(
                gossipsub::MessageAuthenticity::Signed(key.clone()),
                gossip_config,
            )?;
            let sync = request_response::Behaviour::with_codec(
                FrameCodec::new(MAX_SYNC_FRAME),
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            );
            let blob = request_response::Behaviour::with_codec(
                FrameCodec::new(MAX_BLOB_FRAME),
                [(StreamProtocol::new(BLOB_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(20)),
            );
            Ok(Behaviour {
                blocked: allow_block_list::Behaviour::default(),
                limits: libp2p::connection_limits::Behaviour::new(
                    libp2p::connection_limits::ConnectionLimits::default()
                        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                        .with_max_established_incoming(Some(MAX_INCOMING))
                        .with_max_established_per_peer(Some(MAX_PER_PEER)),
                ),
                gossipsub,
                sync,
                blob,
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!(
                            "gradchain-node/{}",
                            env!("CARGO_PKG_VERSION")
                        )),
                ),
                ping: ping::Behaviour::default(),
            })
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(3600)))
        .build();
    Ok(swarm)
}
