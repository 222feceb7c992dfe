//! Wire formats of the node's own protocols: gossip topic names, the sync
//! and blob request and response messages, and the length-prefixed frame
//! codec that request-response uses for sync, blobs and the peer RPC.
//!
//! Frames are a little-endian `u32` length and that many bytes, refused
//! above a per-protocol cap before anything is allocated; their contents are
//! always the canonical codec. This module never interprets what a message
//! means for the chain.

use std::io;

use async_trait::async_trait;
use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use protocol::rpc::{BlobManifest, BlobName, BLOB_CHUNK_BYTES};
use protocol::{Block, BlockHash, Digest, Header};
use serde::{Deserialize, Serialize};

/// The gossip topic for blocks.
pub const BLOCKS_TOPIC: &str = "/gradchain/1/blocks";
/// The gossip topic for transactions.
pub const TXS_TOPIC: &str = "/gradchain/1/txs";
/// The request-response protocol for headers-first sync.
pub const SYNC_PROTOCOL: &str = "/gradchain/sync/1";
/// The request-response protocol moving blobs (datasets, weights, training
/// states): a manifest first, then chunk by chunk.
pub const BLOB_PROTOCOL: &str = "/gradchain/blob/2";
/// Largest blob frame: one chunk of [`BLOB_CHUNK_BYTES`] plus its envelope.
/// A manifest is far smaller: 32 bytes a chunk, 5 KiB for the largest blob.
pub const MAX_BLOB_FRAME: usize = BLOB_CHUNK_BYTES as usize + 4096;
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

/// A blob request between peers. A fetcher asks for the manifest, then for
/// each chunk in turn, so no message carries more than one chunk and no side
/// holds more than one chunk of a blob in memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobRequest {
    /// The manifest of the blob `name` names.
    Manifest(BlobName),
    /// One chunk of a blob.
    Chunk {
        /// SHA-256 of the whole blob.
        digest: Digest,
        /// Which chunk, from 0.
        index: u32,
    },
}

/// A blob response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobResponse {
    /// Answers [`BlobRequest::Manifest`].
    Manifest(BlobManifest),
    /// Answers [`BlobRequest::Chunk`].
    Chunk {
        /// Which chunk.
        index: u32,
        /// Its bytes, at most [`BLOB_CHUNK_BYTES`].
        bytes: Vec<u8>,
    },
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

#[cfg(test)]
mod tests {
    use protocol::codec;
    use protocol::rpc::{BlobKind, MAX_BLOB_BYTES};

    use super::*;

    #[test]
    fn blob_requests_have_pinned_bytes() {
        let chunk = codec::encode(&BlobRequest::Chunk {
            digest: Digest([7; 32]),
            index: 2,
        })
        .unwrap();
        let mut expected = vec![1, 0, 0, 0];
        expected.extend_from_slice(&[7; 32]);
        expected.extend_from_slice(&[2, 0, 0, 0]);
        assert_eq!(chunk, expected);
        let manifest =
            codec::encode(&BlobRequest::Manifest(BlobName::Weights(Digest([8; 32])))).unwrap();
        let mut expected = vec![0, 0, 0, 0, 1, 0, 0, 0];
        expected.extend_from_slice(&[8; 32]);
        assert_eq!(manifest, expected);
    }

    #[test]
    fn the_largest_chunk_and_manifest_fit_a_blob_frame() {
        let chunk = codec::encode(&BlobResponse::Chunk {
            index: u32::MAX,
            bytes: vec![0; BLOB_CHUNK_BYTES as usize],
        })
        .unwrap();
        assert!(chunk.len() <= MAX_BLOB_FRAME, "{}", chunk.len());
        let chunks = MAX_BLOB_BYTES.div_ceil(BLOB_CHUNK_BYTES as usize);
        let manifest = codec::encode(&BlobResponse::Manifest(BlobManifest {
            digest: Digest([1; 32]),
            kind: BlobKind::State,
            total: MAX_BLOB_BYTES as u64,
            chunks: vec![Digest([2; 32]); chunks],
        }))
        .unwrap();
        assert!(manifest.len() <= MAX_BLOB_FRAME, "{}", manifest.len());
        let decoded: BlobResponse = codec::decode_with_limit(&manifest, MAX_BLOB_FRAME).unwrap();
        assert!(matches!(decoded, BlobResponse::Manifest(m) if m.check().is_ok()));
    }
}
