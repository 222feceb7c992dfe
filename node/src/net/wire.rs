//! Wire formats of the node's own protocols: gossip topic names, the sync
//! and blob request and response messages, and the length-prefixed frame
//! codec that request-response uses for sync and blobs.
//!
//! Frames are a little-endian `u32` length and that many bytes, refused
//! above a per-protocol cap before anything is allocated; their contents are
//! always the canonical codec. This module never interprets what a message
//! means for the chain.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use protocol::blob::{BlobManifest, BlobName, BLOB_CHUNK_BYTES};
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

/// The most of a frame's body read at once: 64 KiB, so that a peer that
/// announces a large frame (up to 8 MiB for sync, a chunk for blobs) and
/// then stalls costs one step of memory, not the announced length.
const FRAME_READ_STEP: usize = 64 * 1024;

/// Reads one frame: the length, refused above `max` before anything else is
/// read, then the body in steps of at most [`FRAME_READ_STEP`]. The buffer
/// grows only as bytes arrive (doubling, never past the announced length),
/// so a frame in flight costs at most one step plus twice what the peer
/// actually sent.
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
    let mut step = vec![0u8; len.min(FRAME_READ_STEP)];
    let mut buf = Vec::new();
    while buf.len() < len {
        let missing = len.saturating_sub(buf.len());
        let want = &mut step[..missing.min(FRAME_READ_STEP)];
        let got = io.read(want).await?;
        if got == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("frame ended after {} of {len} bytes", buf.len()),
            ));
        }
        if buf.capacity().saturating_sub(buf.len()) < got {
            buf.reserve_exact(buf.capacity().max(got).min(missing));
        }
        buf.extend_from_slice(&want[..got]);
    }
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
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures::executor::block_on;
    use futures::io::Cursor;
    use futures::FutureExt as _;
    use protocol::blob::{BlobKind, MAX_BLOB_BYTES};
    use protocol::codec;

    use super::*;

    /// A peer that sends `data` and then stalls (or, with `eof`, hangs
    /// up), recording the largest buffer it was asked to fill: a reader
    /// that allocated the announced length up front asks for all of it.
    struct Peer {
        data: Vec<u8>,
        sent: usize,
        eof: bool,
        largest_ask: usize,
    }

    impl Peer {
        fn new(announced: u32, body: &[u8], eof: bool) -> Self {
            let mut data = announced.to_le_bytes().to_vec();
            data.extend_from_slice(body);
            Self {
                data,
                sent: 0,
                eof,
                largest_ask: 0,
            }
        }
    }

    impl AsyncRead for Peer {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            self.largest_ask = self.largest_ask.max(buf.len());
            let rest = &self.data[self.sent..];
            if rest.is_empty() {
                return if self.eof {
                    Poll::Ready(Ok(0))
                } else {
                    Poll::Pending
                };
            }
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.sent += n;
            Poll::Ready(Ok(n))
        }
    }

    #[test]
    fn a_stalled_frame_costs_one_step_not_the_announced_length() {
        // 8 MiB announced, 100 KiB sent, then nothing.
        let mut peer = Peer::new(MAX_SYNC_FRAME as u32, &[7; 100 * 1024], false);
        assert!(read_frame(&mut peer, MAX_SYNC_FRAME)
            .now_or_never()
            .is_none());
        assert_eq!(peer.sent, 4 + 100 * 1024);
        assert_eq!(peer.largest_ask, FRAME_READ_STEP);
    }

    #[test]
    fn an_announced_large_but_short_frame_is_an_error() {
        let mut peer = Peer::new(MAX_SYNC_FRAME as u32, &[7; 1000], true);
        let err = block_on(read_frame(&mut peer, MAX_SYNC_FRAME)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(
            err.to_string()
                .contains(&format!("after 1000 of {MAX_SYNC_FRAME} bytes")),
            "{err}"
        );
        assert!(peer.largest_ask <= FRAME_READ_STEP, "{}", peer.largest_ask);
    }

    #[test]
    fn a_frame_over_the_max_is_refused_before_its_body_is_read() {
        let max = 1000;
        let mut peer = Cursor::new({
            let mut bytes = (max as u32 + 1).to_le_bytes().to_vec();
            bytes.extend_from_slice(&[1; 1001]);
            bytes
        });
        let err = block_on(read_frame(&mut peer, max)).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert_eq!(
            err.to_string(),
            "frame of 1001 bytes, expected at most 1000"
        );
        assert_eq!(peer.position(), 4, "only the length was read");
        // At the max, the same frame is read whole.
        let mut peer = Cursor::new({
            let mut bytes = (max as u32).to_le_bytes().to_vec();
            bytes.extend_from_slice(&[1; 1000]);
            bytes
        });
        assert_eq!(block_on(read_frame(&mut peer, max)).unwrap(), vec![1; 1000]);
    }

    #[test]
    fn frames_of_several_steps_and_empty_frames_round_trip() {
        let frames = [
            Vec::new(),
            vec![3; 10],
            (0..FRAME_READ_STEP * 3 + 5).map(|i| i as u8).collect(),
        ];
        for frame in frames {
            let mut written = Cursor::new(Vec::new());
            block_on(write_frame(&mut written, &frame, MAX_SYNC_FRAME)).unwrap();
            let mut peer = Cursor::new(written.into_inner());
            let read = block_on(read_frame(&mut peer, MAX_SYNC_FRAME)).unwrap();
            assert_eq!(read.len(), frame.len());
            assert_eq!(read, frame);
            // Grown as the bytes came, never past the announced length.
            assert!(read.capacity() <= frame.len(), "{}", read.capacity());
        }
    }

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
