//! Wire formats of the node's own protocols: gossip topic names, the sync
//! request and response messages, and the length-prefixed frame codec that
//! request-response uses for both sync and the peer RPC.
//!
//! Frames are a little-endian `u32` length and that many bytes, refused
//! above a per-protocol cap before anything is allocated; their contents are
//! always the canonical codec. This module never interprets what a message
//! means for the chain.

use std::io;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use protocol::rpc::{BlobChunk, BlobName};
use protocol::{Block, BlockHash, Header};
use serde::{Deserialize, Serialize};

/// The gossip topic for blocks.
pub const BLOCKS_TOPIC: &str = "/gradchain/1/blocks";
/// The gossip topic for transactions.
pub const TXS_TOPIC: &str = "/gradchain/1/txs";
/// The request-response protocol for headers-first sync.
pub const SYNC_PROTOCOL: &str = "/gradchain/sync/1";
/// The request-response protocol moving blobs (datasets, weights) in chunks.
pub const BLOB_PROTOCOL: &str = "/gradchain/blob/1";
/// Largest blob frame: one chunk plus its envelope.
pub const MAX_BLOB_FRAME: usize = 1024 * 1024 + 4096;
/// The largest chunk a peer sends in one blob response.
pub const BLOB_CHUNK_BYTES: u32 = 256 * 1024;
/// The identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/gradchain/id/1";
/// Largest sync frame.
pub const MAX_SYNC_FRAME: usize = 8 * 1024 * 1024;
/// Most locator hashes a peer may send.
pub const MAX_LOCATOR: usize = 128;
/// Most block hashes in one body request.
pub const MAX_BLOCKS_PER_REQUEST: usize = 128;

/// A sync request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Main-chain headers after the first locator hash the peer knows.
    GetHeaders {
        /// Our block locator, newest first.
        locator: Vec<BlockHash>,
    },
    /// Blocks by hash, in the order given.
    GetBlocks {
        /// The hashes.
        hashes: Vec<BlockHash>,
    },
}

/// A sync response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncResponse {
    /// Answers [`SyncRequest::GetHeaders`].
    Headers(Vec<Header>),
    /// Answers [`SyncRequest::GetBlocks`].
    Blocks(Vec<Block>),
    /// The request was refused.
    Error(String),
}

/// A blob request between peers: a slice of a blob by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRequest {
    /// Which blob.
    pub name: BlobName,
    /// First byte wanted.
    pub offset: u64,
    /// Most bytes wanted; the answer holds at most [`BLOB_CHUNK_BYTES`].
    pub max_len: u32,
}

/// A blob response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// A slice of the blob.
    Chunk(BlobChunk),
    /// The peer does not hold it.
    NotFound,
}

/// Length-prefixed opaque frames with a size cap.
#[derive(Clone, Copy, Debug)]
pub struct FrameCodec {
    max: usize,
}

impl FrameCodec {
    /// A codec refusing frames above `max` bytes.
    pub fn new(max: usize) -> Self {
        Self { max }
    }
}

async fn read_frame<T: AsyncRead + Unpin + Send>(io: &mut T, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = usize::try_from(u32::from_le_bytes(len))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame length overflows"))?;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, expected at most {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

async fn write_frame<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes, expected at most {max}", bytes.len()),
        ));
    }
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too long"))?;
    io.write_all(&len.to_le_bytes()).await?;
    io.write_all(bytes).await?;
    io.close().await
}

#[async_trait]
impl libp2p::request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, self.max).await
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
        write_frame(io, &req, self.max).await
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
        write_frame(io, &res, self.max).await
    }
}
