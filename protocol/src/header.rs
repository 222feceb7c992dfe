//! The block header: 116 canonical bytes whose `sha256d` is the block hash.
//!
//! Layout (little-endian, fixed width): version `u32` at 0, previous block
//! hash at 4, merkle root at 36, state root at 68, time `u32` at 100, compact
//! target `u32` at 104 and nonce `u64` at 108. At 116 bytes the message plus
//! SHA-256 padding is exactly two 64-byte blocks and the nonce lies wholly in
//! the second, so a miner hashes the first block once per template and pays
//! two compressions per nonce (see [`HeaderHasher`]).

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::hash::{compress, sha256d, state_to_bytes, INITIAL_STATE};
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

/// Offset of the nonce inside the second 64-byte block of the header.
const NONCE_IN_TAIL: usize = NONCE_OFFSET - 64;
const TAIL_LEN: usize = HEADER_SIZE - 64;
/// The header's length in bits, as the SHA-256 padding records it.
#[allow(clippy::as_conversions, clippy::arithmetic_side_effects)] // a small constant
const HEADER_BITS: u64 = (HEADER_SIZE as u64) * 8;
const _: () = assert!(
    HEADER_SIZE <= 119,
    "header must leave room for padding in two blocks"
);
const _: () = assert!(NONCE_OFFSET >= 64, "nonce must sit in the second block");

/// A header hasher with the first 64 bytes already compressed: each nonce
/// costs one compression for the header's second block and one for the
/// outer hash.
#[derive(Clone, Debug)]
pub struct HeaderHasher {
    midstate: [u32; 8],
    tail: [u8; 64],
    outer: [u8; 64],
}

impl HeaderHasher {
    /// Prepares a hasher for `header` (its encoded bytes); the nonce bytes in
    /// it are ignored.
    pub fn new(header: &[u8; HEADER_SIZE]) -> Self {
        let mut block = [0u8; 64];
        for (dst, src) in block.iter_mut().zip(header.iter()) {
            *dst = *src;
        }
        let mut midstate = INITIAL_STATE;
        compress(&mut midstate, &block);

        // Second block: the rest of the header, 0x80, zeros, bit length.
        let mut tail = [0u8; 64];
        for (dst, src) in tail.iter_mut().zip(header.iter().skip(64)) {
            *dst = *src;
        }
        tail[TAIL_LEN] = 0x80;
        let bits = HEADER_BITS.to_be_bytes();
        for (dst, src) in tail.iter_mut().skip(56).zip(bits) {
            *dst = src;
        }

        // Outer hash: 32 bytes of inner digest, 0x80, zeros, 256 bits.
        let mut outer = [0u8; 64];
        outer[32] = 0x80;
        outer[62] = 0x01;
        Self {
            midstate,
            tail,
            outer,
        }
    }

    /// The SHA-256 state after the header's first 64 bytes.
    pub fn midstate(&self) -> [u32; 8] {
        self.midstate
    }

    /// `sha256d` of the header with `nonce` in place.
    pub fn hash_with_nonce(&mut self, nonce: u64) -> [u8; 32] {
        for (dst, src) in self
            .tail
            .iter_mut()
            .skip(NONCE_IN_TAIL)
            .zip(nonce.to_le_bytes())
        {
            *dst = src;
        }
        let mut inner = self.midstate;
        compress(&mut inner, &self.tail);
        for (chunk, word) in self.outer.chunks_exact_mut(4).zip(inner) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        let mut outer = INITIAL_STATE;
        compress(&mut outer, &self.outer);
        state_to_bytes(&outer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midstate_hash_equals_plain_double_hash_for_every_nonce() {
        let mut header = [0u8; HEADER_SIZE];
        for (i, byte) in header.iter_mut().enumerate() {
            *byte = (i as u8).wrapping_mul(37);
        }
        let mut hasher = HeaderHasher::new(&header);
        for nonce in [0u64, 1, 0xdead_beef, u64::MAX] {
            header[NONCE_OFFSET..].copy_from_slice(&nonce.to_le_bytes());
            assert_eq!(hasher.hash_with_nonce(nonce), sha256d(&header));
        }
    }
}
