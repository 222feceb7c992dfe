//! The network event loop: the one task that owns the libp2p `Swarm`
//! (built in [`super::swarm`]); other tasks reach it through the cloneable
//! [`NetworkClient`] ([`super::client`]) to publish gossip, send sync
//! requests, penalise peers and dial.
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
use libp2p::gossipsub::{self, MessageAcceptance, MessageId};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{identify, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot, watch};

use super::wire::{FrameCodec, SYNC_PROTOCOL};

pub use super::client::{NetError, NetworkClient, PeerDetail, Topic};
pub use super::peers::BAN_SCORE;
pub use super::swarm::{NetworkConfig, MAX_INCOMING, MAX_PENDING_INCOMING, MAX_PER_PEER};

use super::client::{Command, Exchange};
use super::swarm::{build_swarm, Behaviour, BehaviourEvent};

/// Events from the swarm waiting for the node's dispatcher; see
/// [`EventLoop::emit`] for what happens past it.
pub const EVENT_QUEUE: usize = 4096;

/// Inbound connections established from one IP address at once, loopback
/// excepted (local clusters share it): an address that opens more is
/// closed, since peer ids cost nothing to mint.
pub const MAX_PER_IP: usize = 8;
use super::peers::{unix_now, Dialer, PeerBook, Verdict};

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

/// One request-response protocol's requests in flight: ours waiting for an
/// answer, and peers' waiting for ours (by ticket).
#[derive(Default)]
struct InFlight {
    outbound: HashMap<OutboundRequestId, oneshot::Sender<Result<Vec<u8>, NetError>>>,
    inbound: HashMap<u64, ResponseChannel<Vec<u8>>>,
}

/// The event loop; run it with [`EventLoop::run`].
pub struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::Sender<NetworkEvent>,
    sync: InFlight,
    blob: InFlight,
    next_ticket: u64,
    book: PeerBook,
    /// Established inbound connections by remote IP.
    inbound_ips: HashMap<std::net::IpAddr, usize>,
    /// Peer arrivals and departures waiting for room in the event queue.
    lifecycle: std::collections::VecDeque<NetworkEvent>,
    full_peers: HashSet<PeerId>,
    addrs: HashMap<PeerId, Multiaddr>,
    peers: Arc<AtomicUsize>,
    dialer: Dialer,
    /// Peers cut off by [`NetworkClient::block_peer`].
    held_off: HashSet<PeerId>,
    metrics: Option<Arc<libp2p::metrics::Metrics>>,
}

impl std::fmt::Debug for EventLoop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop").finish_non_exhaustive()
    }
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
    let dialer = Dialer::new(&config.bootstrap, Instant::now());
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
            sync: InFlight::default(),
            blob: InFlight::default(),
            next_ticket: 0,
            book,
            inbound_ips: HashMap::new(),
            lifecycle: std::collections::VecDeque::new(),
            full_peers: HashSet::new(),
            addrs: HashMap::new(),
            peers,
            dialer,
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
        let (held_off, book, swarm) = (&self.held_off, &self.book, &mut self.swarm);
        let now = unix_now();
        self.dialer.redial(
            Instant::now(),
            |peer| held_off.contains(peer) || book.is_banned(peer, now),
            |peer, addr| {
                let opts = match peer {
                    Some(peer) => DialOpts::peer_id(peer)
                        .addresses(vec![addr.clone()])
                        .build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                let connection = opts.connection_id();
                swarm
                    .dial(opts)
                    .map(|()| connection)
                    .map_err(|e| e.to_string())
            },
        );
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
                    self.dialer.reset(&peer, Instant::now());
                    self.redial();
                }
            }
            Command::Request {
                exchange,
                peer,
                data,
                reply,
            } => {
                let id = self.protocol(exchange).send_request(&peer, data);
                self.in_flight(exchange).outbound.insert(id, reply);
            }
            Command::Respond {
                exchange,
                ticket,
                data,
            } => {
                if let Some(channel) = self.in_flight(exchange).inbound.remove(&ticket) {
                    let _ = self.protocol(exchange).send_response(channel, data);
                }
            }
            Command::Connect { addr } => {
                self.dialer.add(addr, Instant::now());
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
                self.dialer.established(connection_id, peer_id);
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
                self.dialer
                    .lost(connection_id, Instant::now(), "connection closed");
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
                self.dialer
                    .lost(connection_id, Instant::now(), &error.to_string());
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
            BehaviourEvent::Sync(event) => self.on_exchange(Exchange::Sync, event),
            BehaviourEvent::Blob(event) => self.on_exchange(Exchange::Blob, event),
            _ => {}
        }
    }

    fn protocol(&mut self, exchange: Exchange) -> &mut request_response::Behaviour<FrameCodec> {
        let behaviour = self.swarm.behaviour_mut();
        match exchange {
            Exchange::Sync => &mut behaviour.sync,
            Exchange::Blob => &mut behaviour.blob,
        }
    }

    fn in_flight(&mut self, exchange: Exchange) -> &mut InFlight {
        match exchange {
            Exchange::Sync => &mut self.sync,
            Exchange::Blob => &mut self.blob,
        }
    }

    /// Sync and blob requests and answers, one path for both: a peer's
    /// request goes out as an event with a ticket for the answer; an answer
    /// or a failure goes to the task waiting for it. A request that could
    /// not even be decoded as a frame costs its sender penalty points.
    fn on_exchange(
        &mut self,
        exchange: Exchange,
        event: request_response::Event<Vec<u8>, Vec<u8>>,
    ) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    let ticket = self.ticket();
                    self.in_flight(exchange).inbound.insert(ticket, channel);
                    self.emit(match exchange {
                        Exchange::Sync => NetworkEvent::SyncRequest {
                            peer,
                            ticket,
                            data: request,
                        },
                        Exchange::Blob => NetworkEvent::BlobRequest {
                            peer,
                            ticket,
                            data: request,
                        },
                    });
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some(reply) = self.in_flight(exchange).outbound.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
                if let Some(reply) = self.in_flight(exchange).outbound.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                if matches!(error, request_response::InboundFailure::Io(_)) {
                    let what = match exchange {
                        Exchange::Sync => "sync",
                        Exchange::Blob => "blob",
                    };
                    self.penalise(peer, 20, &format!("malformed {what} request: {error}"));
                }
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
