//! The cloneable handle through which the node's tasks reach the network
//! event loop ([`super::network::EventLoop`]): publish and report gossip,
//! send and answer sync and blob requests, penalise, block and dial peers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use libp2p::gossipsub::{IdentTopic, MessageAcceptance, MessageId};
use libp2p::{Multiaddr, PeerId};
use tokio::sync::{mpsc, oneshot};

use super::wire::{BLOCKS_TOPIC, TXS_TOPIC};

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

/// A gossip topic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topic {
    /// Blocks.
    Blocks,
    /// Transactions.
    Txs,
}

impl Topic {
    pub(super) fn ident(self) -> IdentTopic {
        IdentTopic::new(match self {
            Self::Blocks => BLOCKS_TOPIC,
            Self::Txs => TXS_TOPIC,
        })
    }
}

/// A request-response protocol: the event loop handles both alike.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Exchange {
    /// Headers and blocks for sync.
    Sync,
    /// Blob manifests and chunks.
    Blob,
}

/// What the client asks of the event loop.
pub(super) enum Command {
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
    Request {
        exchange: Exchange,
        peer: PeerId,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<u8>, NetError>>,
    },
    Respond {
        exchange: Exchange,
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
    pub(super) commands: mpsc::UnboundedSender<Command>,
    pub(super) peers: Arc<AtomicUsize>,
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
        self.request(Exchange::Sync, peer, data).await
    }

    /// Answers an inbound sync request.
    pub fn respond_sync(&self, ticket: u64, data: Vec<u8>) {
        self.send(Command::Respond {
            exchange: Exchange::Sync,
            ticket,
            data,
        });
    }

    /// Sends a blob request and waits for the answer.
    pub async fn blob_request(&self, peer: PeerId, data: Vec<u8>) -> Result<Vec<u8>, NetError> {
        self.request(Exchange::Blob, peer, data).await
    }

    /// Answers an inbound blob request.
    pub fn respond_blob(&self, ticket: u64, data: Vec<u8>) {
        self.send(Command::Respond {
            exchange: Exchange::Blob,
            ticket,
            data,
        });
    }

    async fn request(
        &self,
        exchange: Exchange,
        peer: PeerId,
        data: Vec<u8>,
    ) -> Result<Vec<u8>, NetError> {
        let (reply, response) = oneshot::channel();
        self.commands
            .send(Command::Request {
                exchange,
                peer,
                data,
                reply,
            })
            .map_err(|_| NetError::Stopped)?;
        response.await.map_err(|_| NetError::Stopped)?
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
