//! The trainer's peer-RPC client: dials a node, sends one request over
//! `/gradchain/rpc/1`, waits for the answer; and [`put_blob`], which stores
//! a blob of any size the node takes, in one request or chunk by chunk.
//!
//! The trainer must never link the node, so the client lives here and the
//! node's CLI re-exports it. Frames are those of node/src/net/wire.rs: a
//! little-endian `u32` length, then that many bytes of the canonical codec,
//! refused above [`MAX_RPC_MESSAGE_BYTES`] before anything is allocated. The
//! framing reads and writes streams, so it cannot live in the pure
//! `protocol` crate. This module only moves bytes; it never interprets
//! chain state.

use std::io;
use std::time::Duration;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::dial_opts::DialOpts;
use libp2p::swarm::SwarmEvent;
use libp2p::{noise, tcp, yamux, Multiaddr, StreamProtocol};
use protocol::codec;
use protocol::rpc::{
    BlobKind, RpcErrorCode, RpcRequest, RpcResponse, BLOB_CHUNK_BYTES, MAX_PUT_BLOB_BYTES,
    MAX_RPC_MESSAGE_BYTES, RPC_PROTOCOL,
};
use protocol::Digest;

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
    /// The node refused the request.
    #[error("node at {addr} refused: {code:?}: {message}")]
    Refused {
        /// The address dialed.
        addr: Multiaddr,
        /// The node's error code.
        code: RpcErrorCode,
        /// The node's message.
        message: String,
    },
    /// The node answered something other than what the request calls for.
    #[error("unexpected answer from {addr}: {answer}, expected {expected}")]
    Unexpected {
        /// The address dialed.
        addr: Multiaddr,
        /// The answer, in words.
        answer: String,
        /// What was expected.
        expected: String,
    },
}

/// Length-prefixed frames of at most [`MAX_RPC_MESSAGE_BYTES`].
#[derive(Clone, Copy, Debug, Default)]
struct FrameCodec;

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = usize::try_from(u32::from_le_bytes(len))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame length overflows"))?;
    if len > MAX_RPC_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, expected at most {MAX_RPC_MESSAGE_BYTES}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    if bytes.len() > MAX_RPC_MESSAGE_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "frame of {} bytes, expected at most {MAX_RPC_MESSAGE_BYTES}",
                bytes.len()
            ),
        ));
    }
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

#[async_trait]
impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res).await
    }
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

/// Stores `bytes` as a blob of `kind` on the node at `addr` and returns the
/// digest it is stored under. A blob that fits one message goes in one
/// [`RpcRequest::PutBlob`]; a larger one in [`RpcRequest::PutBlobChunk`]s of
/// [`BLOB_CHUNK_BYTES`], in order, the node checking the whole after the
/// last (it answers early when it holds the blob already). `timeout`
/// bounds each request.
pub async fn put_blob(
    addr: &Multiaddr,
    kind: BlobKind,
    bytes: &[u8],
    timeout: Duration,
) -> Result<Digest, RpcClientError> {
    let digest = Digest(protocol::sha256(bytes));
    let unexpected = |answer: RpcResponse, expected: String| match answer {
        RpcResponse::Error(err) => RpcClientError::Refused {
            addr: addr.clone(),
            code: err.code,
            message: err.message,
        },
        other => RpcClientError::Unexpected {
            addr: addr.clone(),
            answer: format!("{other:?}"),
            expected,
        },
    };
    if bytes.len() <= MAX_PUT_BLOB_BYTES {
        let request = RpcRequest::PutBlob {
            kind,
            bytes: bytes.to_vec(),
        };
        return match call(addr, &request, timeout).await? {
            RpcResponse::BlobStored(stored) if stored == digest => Ok(stored),
            other => Err(unexpected(other, format!("blob {digest} stored"))),
        };
    }
    let total = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
    let size = usize::try_from(BLOB_CHUNK_BYTES).unwrap_or(usize::MAX);
    let mut offset = 0u64;
    for chunk in bytes.chunks(size) {
        let next = offset.saturating_add(u64::try_from(chunk.len()).unwrap_or(u64::MAX));
        let request = RpcRequest::PutBlobChunk {
            kind,
            digest,
            total,
            offset,
            bytes: chunk.to_vec(),
        };
        match call(addr, &request, timeout).await? {
            RpcResponse::BlobStored(stored) if stored == digest => return Ok(stored),
            RpcResponse::BlobChunkAccepted {
                digest: accepted,
                received,
            } if accepted == digest && received == next && next < total => offset = next,
            other => {
                return Err(unexpected(
                    other,
                    format!("chunk of blob {digest} up to byte {next} of {total} taken"),
                ))
            }
        }
    }
    Err(RpcClientError::Failed {
        addr: addr.clone(),
        reason: format!("every chunk of blob {digest} sent, but the node never stored it"),
    })
}

/// Sends raw request bytes and returns the raw answer (tests use it to send
/// bytes that are not a valid request).
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
                FrameCodec,
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
