//! SHA-256, the double hash `sha256d` used for block and transaction ids and
//! proof of work, and the midstate hasher miners use to pay two compressions
//! per nonce instead of three.
//!
//! Built on sha2's `compress256`, so the SHA-NI or SIMD back end that sha2
//! selects at run time is used for every compression; the results are the
//! same on every CPU.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};

use crate::header::{HEADER_SIZE, NONCE_OFFSET};

/// SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// SHA-256 of the concatenation of `parts`.
pub fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// SHA-256 applied twice.
pub fn sha256d(data: &[u8]) -> [u8; 32] {
    sha256(&sha256(data))
}

/// SHA-256 applied twice to the concatenation of `parts`.
pub fn sha256d_parts(parts: &[&[u8]]) -> [u8; 32] {
    sha256(&sha256_parts(parts))
}

/// The SHA-256 initial hash value (FIPS 180-4, 5.3.3).
const INITIAL_STATE: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

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

fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

fn state_to_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

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
    fn sha256_matches_the_fips_example() {
        assert_eq!(
            hex::encode(sha256(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

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
