//! SHA-256, the double hash `sha256d` used for block and transaction ids and
//! proof of work, and the compression primitives the header's midstate
//! hasher ([`crate::header::HeaderHasher`]) is built on.
//!
//! Built on sha2's `compress256`, so the SHA-NI or SIMD back end that sha2
//! selects at run time is used for every compression; the results are the
//! same on every CPU.

use sha2::digest::generic_array::GenericArray;
use sha2::{Digest as _, Sha256};

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
pub const INITIAL_STATE: [u32; 8] = [
    0x6a09_e667,
    0xbb67_ae85,
    0x3c6e_f372,
    0xa54f_f53a,
    0x510e_527f,
    0x9b05_688c,
    0x1f83_d9ab,
    0x5be0_cd19,
];

/// One SHA-256 compression of `block` into `state`.
pub fn compress(state: &mut [u32; 8], block: &[u8; 64]) {
    sha2::compress256(state, std::slice::from_ref(GenericArray::from_slice(block)));
}

/// The digest a SHA-256 `state` stands for (big-endian words).
pub fn state_to_bytes(state: &[u32; 8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(state) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
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
}
