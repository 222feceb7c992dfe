//! The network event loop: the one task that owns the libp2p `Swarm`, and
//! the cloneable [`NetworkClient`] through which other tasks publish gossip,
//! send sync requests, penalise peers and dial.
//!
//! Behaviours: tcp + noise + yamux with dns, identify, ping, gossipsub for
//! blocks and transactions (validated before forwarding, content-hash ids,
//! size caps), request-response for sync and for blobs, and a block
//! list for peers whose penalties pass the ban score. The loop only routes
//! events: validation and chain queries run in spawned tasks that talk to
//! the chain task, so a slow block never stalls the swarm.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ProtocolSupport, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    allow_block_list, identify, identity, noise, ping, tcp, yamux, Multiaddr, PeerId,
    StreamProtocol, Swarm,
};
use tokio::sync::{mpsc, oneshot, watch};

use super::wire::{
    FrameCodec, BLOB_PROTOCOL, BLOCKS_TOPIC, IDENTIFY_PROTOCOL, MAX_BLOB_FRAME, MAX_SYNC_FRAME,
    SYNC_PROTOCOL, TXS_TOPIC,
};

pub use super::peers::BAN_SCORE;

/// Events from the swarm waiting for the node's dispatcher; see
/// [`EventLoop::emit`] for what happens past it.
pub const EVENT_QUEUE: usize = 4096;

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
/// Inbound connections established from one IP address at once, loopback
/// excepted (local clusters share it): an address that opens more is
/// closed, since peer ids cost nothing to mint.
pub const MAX_PER_IP: usize = 8;
use super::peers::{unix_now, PeerBook, Verdict};
/// Longest wait between two dials of a bootstrap address.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// Why the network could not start or a request failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Building the transport failed.
    #[error("transport: {0}")]
    Transport(String),
    /// A listen address was refused.
    #[error("cannot listen on {addr}: {reason}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// A request to a peer failed.
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// The event loop has stopped.
    #[error("the network event loop has stopped")]
    Stopped,
}

/// The swarm's behaviours.
#[derive(NetworkBehaviour)]
struct Behaviour {
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    limits: libp2p::connection_limits::Behaviour,
    gossipsub: gossipsub::Behaviour,
    sync: request_response::Behaviour<FrameCodec>,
    blob: request_response::Behaviour<FrameCodec>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
}

/// A gossip topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Blocks.
    Blocks,
    /// Transactions.
    Txs,
}

impl Topic {
    fn ident(self) -> IdentTopic {
        IdentTopic::new(match self {
            Self::Blocks => BLOCKS_TOPIC,
            Self::Txs => TXS_TOPIC,
        })
    }
}

/// Something the event loop hands to the rest of the node.
#[derive(Debug)]
pub enum NetworkEvent {
    /// A full node (one that speaks sync) finished identifying.
    PeerReady(PeerId),
    /// A peer has no connection left.
    PeerGone(PeerId),
    /// A gossip message waits for validation.
    Gossip {
        /// Its topic.
        topic: Topic,
        /// The peer that forwarded it.
        source: PeerId,
        /// The gossipsub message id.
        id: MessageId,
        /// The payload.
        data: Vec<u8>,
    },
    /// A peer asks for sync data; answer with [`NetworkClient::respond_sync`].
    SyncRequest {
        /// The peer.
        peer: PeerId,
        /// Ticket for the answer.
        ticket: u64,
        /// The request bytes.
        data: Vec<u8>,
    },
    /// A peer asks for a blob chunk; answer with [`NetworkClient::respond_blob`].
    BlobRequest {
        /// The peer.
        peer: PeerId,
        /// Ticket for the answer.
        ticket: u64,
        /// The request bytes.
        data: Vec<u8>,
    },
}

enum Command {
    Publish {
        topic: Topic,
        data: Vec<u8>,
    },
    Report {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    Penalise {
        peer: PeerId,
        points: u32,
        reason: String,
    },
    Disconnect {
        peer: PeerId,
    },
    SyncRequest {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    RespondSync {
        ticket: u64,
        data: Vec<u8>,
    },
    BlobRequest {
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    RespondBlob {
        ticket: u64,
        data: Vec<u8>,
    },
    Connect {
        addr: Multiaddr,
    },
    Block {
        peer: PeerId,
    },
    Unblock {
        peer: PeerId,
    },
    Penalty {
        peer: PeerId,
        reply: oneshot::Sender<(u32, bool)>,
    },
    Peers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    PeerDetails {
        reply: oneshot::Sender<Vec<PeerDetail>>,
    },
}

/// A connected full-node peer as the node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerDetail {
    /// Its peer id.
    pub peer: PeerId,
    /// The remote address of its first connection.
    pub addr: Option<Multiaddr>,
    /// Penalty points held against it.
    pub score: u32,
}

/// A cloneable handle to the network event loop.
#[derive(Clone, Debug)]
pub struct NetworkClient {
    commands: mpsc::UnboundedSender<Command>,
    peers: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl NetworkClient {
    fn send(&self, command: Command) {
        let _ = self.commands.send(command);
    }

    /// Publishes on a gossip topic.
    pub fn publish(&self, topic: Topic, data: Vec<u8>) {
        self.send(Command::Publish { topic, data });
    }

    /// Reports the validation result of a gossip message.
    pub fn report(&self, id: MessageId, source: PeerId, acceptance: MessageAcceptance) {
        self.send(Command::Report {
            id,
            source,
            acceptance,
        });
    }

    /// Adds penalty points to a peer; at [`BAN_SCORE`] it is blocked.
    pub fn penalise(&self, peer: PeerId, points: u32, reason: impl Into<String>) {
        self.send(Command::Penalise {
            peer,
            points,
            reason: reason.into(),
        });
    }

    /// Closes every connection to a peer (it may reconnect).
    pub fn disconnect(&self, peer: PeerId) {
        self.send(Command::Disconnect { peer });
    }

    /// Dials `addr` and keeps reconnecting to it with backoff.
    pub fn connect(&self, addr: Multiaddr) {
        self.send(Command::Connect { addr });
    }

    /// Cuts this node off from `peer` until [`Self::unblock_peer`]: closes
    /// its connections and refuses new ones. An operator's tool (and a
    /// network simulation's partition), not a ban: it carries no penalty
    /// and is not remembered across restarts.
    pub fn block_peer(&self, peer: PeerId) {
        self.send(Command::Block { peer });
    }

    /// Lifts [`Self::block_peer`] (a peer also banned stays out until its
    /// ban ends) and redials it at once if it is one this node keeps
    /// connected to.
    pub fn unblock_peer(&self, peer: PeerId) {
        self.send(Command::Unblock { peer });
    }

    /// Sends a sync request and waits for the answer.
    pub async fn sync_request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::SyncRequest { peer, data, reply })
            .map_err(|_| NetError::Stopped)?;
        response.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers an inbound sync request.
    pub fn respond_sync(&self, ticket: u64, data: Vec<u8>) {
        self.send(Command::RespondSync { ticket, data });
    }

    /// Sends a blob request and waits for the answer.
    pub async fn blob_request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::BlobRequest { peer, data, reply })
            .map_err(|_| NetError::Stopped)?;
        response.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers an inbound blob request.
    pub fn respond_blob(&self, ticket: u64, data: Vec<u8>) {
        self.send(Command::RespondBlob { ticket, data });
    }

    /// A peer's penalty points and whether it is blocked.
    pub async fn penalty(&self, peer: PeerId) -> Result<(u32, bool), NetError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Penalty { peer, reply })
            .map_err(|_| NetError::Stopped)?;
        response.await.map_err(|_| NetError::Stopped)
    }

    /// The connected full-node peers.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NetError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Peers { reply })
            .map_err(|_| NetError::Stopped)?;
        response.await.map_err(|_| NetError::Stopped)
    }

    /// The connected full-node peers with their addresses and scores.
    pub async fn peer_details(&self) -> Result<Vec<PeerDetail>, NetError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::PeerDetails { reply })
            .map_err(|_| NetError::Stopped)?;
        response.await.map_err(|_| NetError::Stopped)
    }

    /// How many full-node peers are connected.
    pub fn peer_count(&self) -> usize {
        self.peers.load(Ordering::Relaxed)
    }
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

struct Dialed {
    addr: Multiaddr,
    peer: Option<PeerId>,
    connection: Option<ConnectionId>,
    connected: bool,
    next_attempt: Instant,
    backoff: Duration,
}

/// The event loop; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    pending_sync: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    sync_channels: HashMap<u64, ResponseChannel<Vec<u8>>>,
    pending_blob: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    blob_channels: HashMap<u64, ResponseChannel<Vec<u8>>>,
    next_ticket: u64,
    book: PeerBook,
    /// Established inbound connections by remote IP.
    inbound_ips: HashMap<std::net::IpAddr, usize>,
    /// Peer arrivals and departures waiting for room in the event queue.
    lifecycle: std::collections::VecDeque<NetworkEvent>,
    full_peers: HashSet<PeerId>,
    addrs: HashMap<PeerId, Multiaddr>,
    peers: Arc<AtomicUsize>,
    dialed: Vec<Dialed>,
    /// Peers cut off by [`NetworkClient::block_peer`].
    held_off: HashSet<PeerId>,
    metrics: Option<Arc<libp2p::metrics::Metrics>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
}

fn message_id(message: &gossipsub::Message) -> MessageId {
    MessageId::from(hex::encode(protocol::sha256(&message.data)))
}

fn build_swarm(config: &NetworkConfig) -> Result<Swarm<Behaviour>, NetError> {
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

/// Builds the swarm, subscribes, starts listening and waits for the bound
/// addresses. Returns the client, the loop to run, the receiver of
/// [`NetworkEvent`]s and the bound addresses.
pub async fn start(
    config: NetworkConfig,
) -> Result<
    (
        NetworkClient,
        EventLoop,
        mpsc::Receiver<NetworkEvent>,
        Vec<Multiaddr>,
    ),
    NetError,
> {
    let mut swarm = build_swarm(&config)?;
    let now = unix_now();
    let book = match &config.data_dir {
        Some(dir) => PeerBook::open(dir, now),
        None => PeerBook::in_memory(),
    };
    for peer in book.banned(now) {
        swarm.behaviour_mut().blocked.block_peer(peer);
    }
    for topic in [Topic::Blocks, Topic::Txs] {
        swarm
            .behaviour_mut()
            .gossipsub
            .subscribe(&topic.ident())
            .map_err(|e| NetError::Transport(e.to_string()))?;
    }
    let mut listeners = HashSet::new();
    for addr in &config.listen {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        listeners.insert(id);
    }
    let mut bound = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !listeners.is_empty() {
        let event = tokio::time::timeout_at(deadline, swarm.select_next_some())
            .await
            .map_err(|_| NetError::Transport("timed out waiting for listen addresses".into()))?;
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                listeners.remove(&listener_id);
                tracing::info!(%address, "listening");
                bound.push(address);
            }
            SwarmEvent::ListenerError { error, .. }
            | SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => {
                return Err(NetError::Transport(error.to_string()));
            }
            _ => {}
        }
    }
    let now = Instant::now();
    let dialed = config
        .bootstrap
        .iter()
        .map(|addr| Dialed {
            addr: addr.clone(),
            peer: peer_of(addr),
            connection: None,
            connected: false,
            next_attempt: now,
            backoff: FIRST_BACKOFF,
        })
        .collect();
    let (command_tx, commands) = mpsc::unbounded_channel();
    let (events, event_rx) = mpsc::channel(EVENT_QUEUE);
    let peers = Arc::new(AtomicUsize::new(0));
    let client = NetworkClient {
        commands: command_tx,
        peers: peers.clone(),
    };
    Ok((
        client,
        EventLoop {
            swarm,
            commands,
            events,
            pending_sync: HashMap::new(),
            sync_channels: HashMap::new(),
            pending_blob: HashMap::new(),
            blob_channels: HashMap::new(),
            next_ticket: 0,
            book,
            inbound_ips: HashMap::new(),
            lifecycle: std::collections::VecDeque::new(),
            full_peers: HashSet::new(),
            addrs: HashMap::new(),
            peers,
            dialed,
            held_off: HashSet::new(),
            metrics: config.metrics.clone(),
        },
        event_rx,
        bound,
    ))
}

/// The remote IP of an inbound connection.
fn inbound_ip(endpoint: &libp2p::core::ConnectedPoint) -> Option<std::net::IpAddr> {
    let libp2p::core::ConnectedPoint::Listener { send_back_addr, .. } = endpoint else {
        return None;
    };
    send_back_addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(std::net::IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(std::net::IpAddr::V6(ip)),
        _ => None,
    })
}

fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    })
}

impl EventLoop {
    /// The local peer id.
    pub fn peer_id(&self) -> PeerId {
        *self.swarm.local_peer_id()
    }

    /// Runs until `shutdown` turns true.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut redial = tokio::time::interval(Duration::from_millis(250));
        let mut bans = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = bans.tick() => self.expire_bans(),
                _ = shutdown.changed() => break,
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(command) => self.on_command(command),
                    None => break,
                },
                _ = redial.tick() => {
                    self.flush_lifecycle();
                    self.redial();
                }
            }
        }
    }

    fn redial(&mut self) {
        let now = Instant::now();
        for entry in &mut self.dialed {
            if entry.connected || entry.connection.is_some() || now < entry.next_attempt {
                continue;
            }
            if entry
                .peer
                .is_some_and(|p| self.held_off.contains(&p) || self.book.is_banned(&p, unix_now()))
            {
                continue;
            }
            let opts = match entry.peer {
                Some(peer) => DialOpts::peer_id(peer)
                    .addresses(vec![entry.addr.clone()])
                    .build(),
                None => DialOpts::unknown_peer_id()
                    .address(entry.addr.clone())
                    .build(),
            };
            entry.connection = Some(opts.connection_id());
            if let Err(err) = self.swarm.dial(opts) {
                tracing::debug!(addr = %entry.addr, reason = %err, "dial failed");
                entry.connection = None;
                entry.next_attempt = now + entry.backoff;
                entry.backoff = (entry.backoff * 2).min(MAX_BACKOFF);
            }
        }
    }

    /// Hands an event to the node. When the node is [`EVENT_QUEUE`] events
    /// behind, peers' messages are dropped here: gossip unvalidated (so not
    /// forwarded), requests unanswered (the asker times out and asks
    /// another peer). Nothing a peer sends can queue without bound.
    fn emit(&mut self, event: NetworkEvent) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(NetworkEvent::Gossip { id, source, .. })) => {
                tracing::debug!(peer = %source, "event queue full: gossip message dropped");
                let _ = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, MessageAcceptance::Ignore);
            }
            Err(mpsc::error::TrySendError::Full(
                event @ (NetworkEvent::PeerReady(_) | NetworkEvent::PeerGone(_)),
            )) => {
                // The sync driver must see every peer come and go; these
                // are bounded by the connection limits and retried.
                self.lifecycle.push_back(event);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::debug!("event queue full: a peer's request dropped");
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Hands over peer arrivals and departures the full queue held back.
    fn flush_lifecycle(&mut self) {
        while let Some(event) = self.lifecycle.pop_front() {
            if let Err(err) = self.events.try_send(event) {
                match err {
                    mpsc::error::TrySendError::Full(event) => self.lifecycle.push_front(event),
                    mpsc::error::TrySendError::Closed(_) => self.lifecycle.clear(),
                }
                break;
            }
        }
    }

    fn ticket(&mut self) -> u64 {
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.next_ticket
    }

    fn penalise(&mut self, peer: PeerId, points: u32, reason: &str) {
        match self.book.penalise(peer, points, unix_now()) {
            Verdict::Penalised(score) => {
                tracing::warn!(%peer, points, score, %reason, "penalised peer");
            }
            Verdict::Banned(score) => {
                tracing::warn!(%peer, points, score, %reason, "penalised peer");
                tracing::warn!(%peer, score, "banned peer for {}h: penalty score reached {BAN_SCORE}", super::peers::BAN_DURATION.as_secs() / 3600);
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
        }
    }

    /// Lets peers whose ban ended back in.
    fn expire_bans(&mut self) {
        for peer in self.book.expire(unix_now()) {
            tracing::info!(%peer, "ban ended");
            if !self.held_off.contains(&peer) {
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Publish { topic, data } => {
                if let Err(err) = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic.ident(), data)
                {
                    tracing::debug!(?topic, reason = %err, "gossip publish failed");
                }
            }
            Command::Report {
                id,
                source,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Penalise {
                peer,
                points,
                reason,
            } => self.penalise(peer, points, &reason),
            Command::Disconnect { peer } => {
                let _ = self.swarm.disconnect_peer_id(peer);
            }
            Command::Block { peer } => {
                tracing::info!(%peer, "peer blocked until unblocked");
                self.held_off.insert(peer);
                self.swarm.behaviour_mut().blocked.block_peer(peer);
            }
            Command::Unblock { peer } => {
                if self.held_off.remove(&peer) && !self.book.is_banned(&peer, unix_now()) {
                    tracing::info!(%peer, "peer unblocked");
                    self.swarm.behaviour_mut().blocked.unblock_peer(peer);
                    let now = Instant::now();
                    for entry in self.dialed.iter_mut().filter(|d| d.peer == Some(peer)) {
                        entry.next_attempt = now;
                        entry.backoff = FIRST_BACKOFF;
                    }
                    self.redial();
                }
            }
            Command::SyncRequest { peer, data, reply } => {
                let id = self.swarm.behaviour_mut().sync.send_request(&peer, data);
                self.pending_sync.insert(id, reply);
            }
            Command::RespondSync { ticket, data } => {
                if let Some(channel) = self.sync_channels.remove(&ticket) {
                    let _ = self.swarm.behaviour_mut().sync.send_response(channel, data);
                }
            }
            Command::BlobRequest { peer, data, reply } => {
                let id = self.swarm.behaviour_mut().blob.send_request(&peer, data);
                self.pending_blob.insert(id, reply);
            }
            Command::RespondBlob { ticket, data } => {
                if let Some(channel) = self.blob_channels.remove(&ticket) {
                    let _ = self.swarm.behaviour_mut().blob.send_response(channel, data);
                }
            }
            Command::Connect { addr } => {
                if !self.dialed.iter().any(|d| d.addr == addr) {
                    self.dialed.push(Dialed {
                        peer: peer_of(&addr),
                        addr,
                        connection: None,
                        connected: false,
                        next_attempt: Instant::now(),
                        backoff: FIRST_BACKOFF,
                    });
                }
                self.redial();
            }
            Command::Penalty { peer, reply } => {
                let now = unix_now();
                let _ = reply.send((self.book.score(&peer, now), self.book.is_banned(&peer, now)));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.full_peers.iter().copied().collect());
            }
            Command::PeerDetails { reply } => {
                let mut details: Vec<PeerDetail> = self
                    .full_peers
                    .iter()
                    .map(|peer| PeerDetail {
                        peer: *peer,
                        addr: self.addrs.get(peer).cloned(),
                        score: self.book.score(peer, unix_now()),
                    })
                    .collect();
                details.sort_by_key(|d| d.peer.to_bytes());
                let _ = reply.send(details);
            }
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        if let Some(metrics) = &self.metrics {
            use libp2p::metrics::Recorder;
            metrics.record(&event);
            if let SwarmEvent::Behaviour(behaviour) = &event {
                match behaviour {
                    BehaviourEvent::Gossipsub(e) => metrics.record(e),
                    BehaviourEvent::Identify(e) => metrics.record(e),
                    BehaviourEvent::Ping(e) => metrics.record(e),
                    _ => {}
                }
            }
        }
        match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                if let Some(ip) = inbound_ip(&endpoint) {
                    let count = self.inbound_ips.entry(ip).or_default();
                    *count = count.saturating_add(1);
                    if !ip.is_loopback() && *count > MAX_PER_IP {
                        tracing::info!(peer = %peer_id, %ip, "closing a connection: {MAX_PER_IP} from this address already");
                        self.swarm.close_connection(connection_id);
                    }
                }
                if let Some(entry) = self
                    .dialed
                    .iter_mut()
                    .find(|d| d.connection == Some(connection_id))
                {
                    entry.connected = true;
                    entry.peer = Some(peer_id);
                    entry.backoff = FIRST_BACKOFF;
                }
                if num_established.get() == 1 {
                    // The "peer connected" line waits for identify, so a
                    // connection that never identifies as a full node does
                    // not read as a peer.
                    tracing::debug!(peer = %peer_id, addr = %endpoint.get_remote_address(), "connection established");
                    self.addrs
                        .insert(peer_id, endpoint.get_remote_address().clone());
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                cause,
                ..
            } => {
                if let Some(ip) = inbound_ip(&endpoint) {
                    if let Some(count) = self.inbound_ips.get_mut(&ip) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.inbound_ips.remove(&ip);
                        }
                    }
                }
                let now = Instant::now();
                for entry in &mut self.dialed {
                    if entry.connection == Some(connection_id) {
                        entry.connection = None;
                        entry.connected = false;
                        entry.next_attempt = now + entry.backoff;
                        entry.backoff = (entry.backoff * 2).min(MAX_BACKOFF);
                    }
                }
                if num_established == 0 {
                    let reason = cause
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "closed".into());
                    self.addrs.remove(&peer_id);
                    if self.full_peers.remove(&peer_id) {
                        tracing::info!(peer = %peer_id, %reason, peers = self.full_peers.len(), "peer disconnected");
                        self.peers.store(self.full_peers.len(), Ordering::Relaxed);
                        self.emit(NetworkEvent::PeerGone(peer_id));
                    } else {
                        tracing::debug!(peer = %peer_id, %reason, "connection closed");
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                error,
                ..
            } => {
                let now = Instant::now();
                for entry in &mut self.dialed {
                    if entry.connection == Some(connection_id) {
                        tracing::debug!(addr = %entry.addr, reason = %error, "dial failed, retrying in {:?}", entry.backoff);
                        entry.connection = None;
                        entry.next_attempt = now + entry.backoff;
                        entry.backoff = (entry.backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            }) => {
                let topic = if message.topic == Topic::Blocks.ident().hash() {
                    Topic::Blocks
                } else if message.topic == Topic::Txs.ident().hash() {
                    Topic::Txs
                } else {
                    self.swarm
                        .behaviour_mut()
                        .gossipsub
                        .report_message_validation_result(
                            &message_id,
                            &propagation_source,
                            MessageAcceptance::Reject,
                        );
                    self.penalise(propagation_source, 10, "gossip on an unknown topic");
                    return;
                };
                self.emit(NetworkEvent::Gossip {
                    topic,
                    source: propagation_source,
                    id: message_id,
                    data: message.data,
                });
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let full = info.protocols.iter().any(|p| p.as_ref() == SYNC_PROTOCOL);
                if full && self.full_peers.insert(peer_id) {
                    let addr = self
                        .addrs
                        .get(&peer_id)
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    tracing::info!(peer = %peer_id, %addr, agent = %info.agent_version, peers = self.full_peers.len(), "peer connected");
                    self.peers.store(self.full_peers.len(), Ordering::Relaxed);
                    self.emit(NetworkEvent::PeerReady(peer_id));
                }
            }
            BehaviourEvent::Sync(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let ticket = self.ticket();
                        self.sync_channels.insert(ticket, channel);
                        self.emit(NetworkEvent::SyncRequest {
                            peer,
                            ticket,
                            data: request,
                        });
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(reply) = self.pending_sync.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
            }
            BehaviourEvent::Sync(request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.pending_sync.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            BehaviourEvent::Sync(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.penalise(peer, 20, &format!("malformed sync request: {error}"));
                }
            }
            BehaviourEvent::Blob(request_response::Event::Message { peer, message, .. }) => {
                match message {
                    request_response::Message::Request {
                        request, channel, ..
                    } => {
                        let ticket = self.ticket();
                        self.blob_channels.insert(ticket, channel);
                        self.emit(NetworkEvent::BlobRequest {
                            peer,
                            ticket,
                            data: request,
                        });
                    }
                    request_response::Message::Response {
                        request_id,
                        response,
                    } => {
                        if let Some(reply) = self.pending_blob.remove(&request_id) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                }
            }
            BehaviourEvent::Blob(request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            }) => {
                if let Some(reply) = self.pending_blob.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            BehaviourEvent::Blob(request_response::Event::InboundFailure {
                peer, error, ..
            }) => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    self.penalise(peer, 20, &format!("malformed blob request: {error}"));
                }
            }
            _ => {}
        }
    }
}
