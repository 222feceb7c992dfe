//! A peer-RPC client: dials a node, sends one request, waits for the answer.
//!
//! Used by the CLI (`rpc`, `healthcheck`) and by tests. It runs a throwaway
//! swarm with only the RPC protocol and a fresh identity; it never joins
//! gossip or sync.

use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol};
use protocol::codec;
use protocol::rpc::{RpcRequest, RpcResponse, MAX_RPC_MESSAGE_BYTES, RPC_PROTOCOL};

use crate::net::wire::FrameCodec;

/// Why an RPC call failed.
#[derive(Debug, thiserror::Error)]
pub enum RpcClientError {
    /// The node could not be reached.
    #[error("cannot reach node at {addr}: {reason}")]
    Unreachable {
        /// The address dialed.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// No answer in time.
    #[error("node at {addr} did not answer within {seconds}s")]
    Timeout {
        /// The address dialed.
        addr: Multiaddr,
        /// The wait.
        seconds: u64,
    },
    /// The request failed after connecting.
    #[error("request to {addr} failed: {reason}")]
    Failed {
        /// The address dialed.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
    /// The answer did not decode.
    #[error("undecodable answer from {addr}: {reason}")]
    Malformed {
        /// The address dialed.
        addr: Multiaddr,
        /// Why.
        reason: String,
    },
}

/// Sends `request` to the node at `addr` and returns its answer, which may
/// be [`RpcResponse::Error`].
pub async fn call(
    addr: &Multiaddr,
    request: &RpcRequest,
    timeout: Duration,
) -> Result<RpcResponse, RpcClientError> {
    let bytes = codec::encode(request).map_err(|e| RpcClientError::Failed {
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    let answer = call_bytes(addr, bytes, timeout).await?;
    codec::decode_with_limit(&answer, MAX_RPC_MESSAGE_BYTES).map_err(|e| {
        RpcClientError::Malformed {
            addr: addr.clone(),
            reason: e.to_string(),
        }
    })
}

/// Sends raw request bytes and returns the raw answer.
pub async fn call_bytes(
    addr: &Multiaddr,
    request: Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, RpcClientError> {
    let seconds = timeout.as_secs();
    tokio::time::timeout(timeout, exchange(addr, request))
        .await
        .map_err(|_| RpcClientError::Timeout {
            addr: addr.clone(),
            seconds,
        })?
}

async fn exchange(addr: &Multiaddr, request: Vec<u8>) -> Result<Vec<u8>, RpcClientError> {
    let failed = |reason: String| RpcClientError::Failed {
        addr: addr.clone(),
        reason,
    };
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| failed(e.to_string()))?
        .with_dns()
        .map_err(|e| failed(e.to_string()))?
        .with_behaviour(|_| {
            request_response::Behaviour::with_codec(
                FrameCodec::new(MAX_RPC_MESSAGE_BYTES),
                [(StreamProtocol::new(RPC_PROTOCOL), ProtocolSupport::Outbound)],
                request_response::Config::default().with_request_timeout(Duration::from_secs(600)),
            )
        })
        .map_err(|e| failed(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    let peer = addr.iter().find_map(|p| match p {
        Protocol::P2p(peer) => Some(peer),
        _ => None,
    });
    let opts = match peer {
        Some(peer) => DialOpts::peer_id(peer)
            .addresses(vec![addr.clone()])
            .build(),
        None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
    };
    swarm.dial(opts).map_err(|e| RpcClientError::Unreachable {
        addr: addr.clone(),
        reason: e.to_string(),
    })?;
    let mut request = Some(request);
    loop {
        match swarm.select_next_some().await {
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                if let Some(request) = request.take() {
                    swarm.behaviour_mut().send_request(&peer_id, request);
                }
            }
            SwarmEvent::OutgoingConnectionError { error, .. } => {
                return Err(RpcClientError::Unreachable {
                    addr: addr.clone(),
                    reason: error.to_string(),
                });
            }
            SwarmEvent::Behaviour(request_response::Event::Message {
                message: request_response::Message::Response { response, .. },
                ..
            }) => return Ok(response),
            SwarmEvent::Behaviour(request_response::Event::OutboundFailure { error, .. }) => {
                return Err(failed(error.to_string()));
            }
            _ => {}
        }
    }
}
