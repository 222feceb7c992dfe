//! The block header: 116 canonical bytes whose `sha256d` is the block hash.
//!
//! Layout (little-endian, fixed width): version `u32` at 0, previous block
//! hash at 4, merkle root at 36, state root at 68, time `u32` at 100, compact
//! target `u32` at 104 and nonce `u64` at 108. At 116 bytes the message plus
//! SHA-256 padding is exactly two 64-byte blocks and the nonce lies wholly in
//! the second, so a miner hashes the first block once per template and pays
//! two compressions per nonce (see [`crate::hash::HeaderHasher`]).

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::hash::{sha256d, HeaderHasher};
use crate::pow::CompactTarget;
use crate::types::{BlockHash, MerkleRoot, StateRoot};

/// Encoded size of a header in bytes.
pub const HEADER_SIZE: usize = 116;
/// Byte offset of the nonce in the encoded header.
pub const NONCE_OFFSET: usize = 108;

/// A block header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Consensus version of the block.
    pub version: u32,
    /// Hash of the parent block.
    pub prev: BlockHash,
    /// Merkle root of the block's transaction ids.
    pub merkle_root: MerkleRoot,
    /// Commitment to the state after this block.
    pub state_root: StateRoot,
    /// Unix seconds.
    pub time: u32,
    /// The compact target this block claims to meet.
    pub bits: CompactTarget,
    /// The proof-of-work nonce.
    pub nonce: u64,
}

impl Header {
    /// The canonical 116 bytes, equal to [`codec::encode`] of the header
    /// (a test pins this), written without allocating.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut out = [0u8; HEADER_SIZE];
        let fields: [&[u8]; 7] = [
            &self.version.to_le_bytes(),
            self.prev.as_bytes(),
            self.merkle_root.as_bytes(),
            self.state_root.as_bytes(),
            &self.time.to_le_bytes(),
            &self.bits.0.to_le_bytes(),
            &self.nonce.to_le_bytes(),
        ];
        for (dst, src) in out.iter_mut().zip(fields.iter().flat_map(|f| f.iter())) {
            *dst = *src;
        }
        out
    }

    /// Decodes a header from its canonical bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CodecError> {
        codec::decode_with_limit(bytes, HEADER_SIZE)
    }

    /// The block hash: `sha256d` of the encoded header.
    pub fn hash(&self) -> BlockHash {
        BlockHash(sha256d(&self.to_bytes()))
    }

    /// A midstate hasher for scanning nonces over this header.
    pub fn hasher(&self) -> HeaderHasher {
        HeaderHasher::new(&self.to_bytes())
    }

    /// The header together with its hash.
    pub fn seal(self) -> SealedHeader {
        SealedHeader {
            hash: self.hash(),
            header: self,
        }
    }
}

/// A header that has been hashed, carrying its hash so it is computed once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedHeader {
    header: Header,
    hash: BlockHash,
}

impl SealedHeader {
    /// The header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Its hash.
    pub fn hash(&self) -> BlockHash {
        self.hash
    }

    /// The header, dropping the hash.
    pub fn into_header(self) -> Header {
        self.header
    }
}
