//! Nonce scanning for the miner: finds a nonce whose header hash meets the
//! target, paying two SHA-256 compressions per nonce from the midstate of
//! the header's first 64 bytes.
//!
//! Three kernels, picked at run time:
//! - AVX-512: sixteen nonces at once, one per 32-bit lane, with rotates and
//!   three-input logic (`vprord`, `vpternlogd`); the first eleven rounds of
//!   the header's second block read no nonce word and run once per template.
//! - SHA-NI: four nonces side by side, so the long latency of each
//!   `sha256rnds2` is hidden behind the other lanes; the first eight rounds
//!   run once per template.
//! - portable: one nonce at a time through the `sha2` crate.
//!
//! All produce the same hashes bit for bit (tests pin each to `sha256d`
//! and to the same first winning nonce), so which one runs never changes
//! which block is found.
//!
//! This module holds the node's `unsafe`: calls into `#[target_feature]`
//! functions after runtime detection has confirmed their features, and
//! register loads and stores into arrays whose bounds are checked.
#![allow(unsafe_code)]

use protocol::header::HeaderHasher;
use protocol::{BlockHash, Header, Target, HEADER_SIZE, NONCE_OFFSET};

/// Nonces hashed together by the SHA-NI path.
pub const LANES: u64 = 4;

/// Which kernel a scanner uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512F, sixteen lanes.
    Avx512,
    /// SHA-NI, four lanes.
    ShaNi,
    /// The `sha2` crate, one nonce at a time.
    Portable,
}

impl Kernel {
    /// The fastest kernel this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("sha")
                && std::arch::is_x86_feature_detected!("sse4.1")
                && std::arch::is_x86_feature_detected!("ssse3")
            {
                return Self::ShaNi;
            }
        }
        Self::Portable
    }

    /// Whether this CPU has what the kernel needs.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Self::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Self::ShaNi => {
                    std::arch::is_x86_feature_detected!("sha")
                        && std::arch::is_x86_feature_detected!("sse4.1")
                        && std::arch::is_x86_feature_detected!("ssse3")
                }
                Self::Portable => true,
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == Self::Portable
        }
    }

    /// A short name for logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512 x16",
            Self::ShaNi => "sha-ni x4",
            Self::Portable => "portable",
        }
    }
}

/// Scans nonces over one header template.
#[derive(Clone, Debug)]
pub struct NonceScanner {
    kernel: Kernel,
    hasher: HeaderHasher,
    midstate: [u32; 8],
    /// The SHA-NI state after the nonce-independent rounds 0..8 of the
    /// second block (unused by the portable kernel).
    prefix: [u32; 8],
    /// Message words of the header's second block, padding included; words
    /// 11 and 12 hold the nonce and are replaced per nonce.
    tail: [u32; 16],
    /// The target as eight big-endian words, most significant first.
    target: [u32; 8],
}

impl NonceScanner {
    /// A scanner for `header` (its nonce is ignored) against `target`, with
    /// the fastest kernel available.
    pub fn new(header: &Header, target: &Target) -> Self {
        Self::with_kernel(header, target, Kernel::detect())
    }

    /// A scanner using `kernel`; falls back to the portable kernel when the
    /// CPU lacks what `kernel` needs.
    pub fn with_kernel(header: &Header, target: &Target, kernel: Kernel) -> Self {
        let kernel = if kernel.supported() {
            kernel
        } else {
            Kernel::Portable
        };
        let bytes = header.to_bytes();
        let hasher = HeaderHasher::new(&bytes);
        let mut block = [0u8; 64];
        for (dst, src) in block.iter_mut().zip(bytes.iter().skip(64)) {
            *dst = *src;
        }
        block[HEADER_SIZE - 64] = 0x80;
        let bits = (HEADER_SIZE as u64 * 8).to_be_bytes();
        for (dst, src) in block.iter_mut().skip(56).zip(bits) {
            *dst = src;
        }
        let mut tail = [0u32; 16];
        for (word, chunk) in tail.iter_mut().zip(block.chunks_exact(4)) {
            *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        let target_bytes = target.0.to_big_endian();
        let mut target = [0u32; 8];
        for (word, chunk) in target.iter_mut().zip(target_bytes.chunks_exact(4)) {
            *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        }
        let midstate = hasher.midstate();
        let prefix = match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `kernel` is `ShaNi` only when detection found the
            // features `prefix` is compiled for.
            Kernel::ShaNi => unsafe { shani::prefix(&midstate, &tail) },
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::prefix(&midstate, &tail),
            _ => [0; 8],
        };
        Self {
            kernel,
            midstate,
            prefix,
            hasher,
            tail,
            target,
        }
    }

    /// The kernel in use.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// The first nonce in `start..start + count` (wrapping) whose hash
    /// meets the target, if any.
    pub fn scan(&mut self, start: u64, count: u64) -> Option<u64> {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::ShaNi => {
                // SAFETY: `with_kernel` only keeps `ShaNi` when runtime
                // detection found the sha, sse4.1 and ssse3 features that
                // `scan_sha_ni` is compiled for.
                unsafe {
                    shani::scan(
                        &self.midstate,
                        &self.prefix,
                        &self.tail,
                        &self.target,
                        start,
                        count,
                    )
                }
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => self.scan_avx512(start, count),
            _ => self.scan_portable(start, count),
        }
    }

    /// Scans in groups of sixteen; a group whose low nonce words would wrap
    /// (word 12 of the block changes inside it) goes through the portable
    /// path.
    #[cfg(target_arch = "x86_64")]
    fn scan_avx512(&mut self, start: u64, count: u64) -> Option<u64> {
        let mut nonce = start;
        let mut left = count;
        while left > 0 {
            let take = left.min(avx512::LANES);
            let wraps = (nonce as u32)
                .checked_add(avx512::LANES as u32 - 1)
                .is_none();
            let found = if wraps {
                self.scan_portable(nonce, take)
            } else {
                // SAFETY: `with_kernel` keeps `Avx512` only when detection
                // found avx512f, which `avx512::scan16` is compiled for.
                unsafe {
                    avx512::scan16(
                        &self.midstate,
                        &self.prefix,
                        &self.tail,
                        &self.target,
                        nonce,
                    )
                }
                .filter(|lane| *lane < take)
                .map(|lane| nonce.wrapping_add(lane))
            };
            if found.is_some() {
                return found;
            }
            nonce = nonce.wrapping_add(take);
            left -= take;
        }
        None
    }

    fn scan_portable(&mut self, start: u64, count: u64) -> Option<u64> {
        let mut nonce = start;
        for _ in 0..count {
            let hash = self.hasher.hash_with_nonce(nonce);
            if meets(&hash_words(&hash), &self.target) {
                return Some(nonce);
            }
            nonce = nonce.wrapping_add(1);
        }
        None
    }

    /// The block hash for `nonce`, computed by this scanner's kernel.
    pub fn hash(&mut self, nonce: u64) -> BlockHash {
        match self.kernel {
            #[cfg(target_arch = "x86_64")]
            Kernel::ShaNi => {
                // SAFETY: as in `scan`.
                let words =
                    unsafe { shani::hash_one(&self.midstate, &self.prefix, &self.tail, nonce) };
                let mut out = [0u8; 32];
                for (chunk, word) in out.chunks_exact_mut(4).zip(words) {
                    chunk.copy_from_slice(&word.to_be_bytes());
                }
                BlockHash(out)
            }
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512
                if (nonce as u32)
                    .checked_add(avx512::LANES as u32 - 1)
                    .is_some() =>
            {
                // SAFETY: as in `scan_avx512`.
                let words =
                    unsafe { avx512::hash16(&self.midstate, &self.prefix, &self.tail, nonce) };
                let mut out = [0u8; 32];
                for (chunk, word) in out.chunks_exact_mut(4).zip(words[0]) {
                    chunk.copy_from_slice(&word.to_be_bytes());
                }
                BlockHash(out)
            }
            _ => BlockHash(self.hasher.hash_with_nonce(nonce)),
        }
    }
}

const _: () = assert!(
    NONCE_OFFSET == 64 + 44,
    "the kernels place the nonce in tail words 11 and 12"
);

fn hash_words(hash: &[u8; 32]) -> [u32; 8] {
    let mut words = [0u32; 8];
    for (word, chunk) in words.iter_mut().zip(hash.chunks_exact(4)) {
        *word = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
    }
    words
}

/// Whether a hash (big-endian words) is at most the target.
fn meets(hash: &[u32; 8], target: &[u32; 8]) -> bool {
    hash <= target
}

/// Tail words 11 and 12 for a nonce: its little-endian bytes read as
/// big-endian message words.
fn nonce_words(nonce: u64) -> (u32, u32) {
    let bytes = nonce.to_le_bytes();
    (
        u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    )
}

/// The SHA-256 round constants (FIPS 180-4, 4.2.2).
#[cfg(target_arch = "x86_64")]
const K_ROUNDS: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];

#[cfg(target_arch = "x86_64")]
mod shani {
    use std::arch::x86_64::*;

    use super::{meets, nonce_words, K_ROUNDS as K, LANES};

    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    /// Four message words, `w[0]` in the lowest lane.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn words(w0: u32, w1: u32, w2: u32, w3: u32) -> __m128i {
        _mm_set_epi32(w3 as i32, w2 as i32, w1 as i32, w0 as i32)
    }

    /// A state `[a..h]` in the ABEF / CDGH register layout `sha256rnds2`
    /// works on.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn load_state(s: &[u32; 8]) -> (__m128i, __m128i) {
        // ABEF: lanes (low to high) F, E, B, A.
        let abef = _mm_set_epi32(s[0] as i32, s[1] as i32, s[4] as i32, s[5] as i32);
        // CDGH: lanes H, G, D, C.
        let cdgh = _mm_set_epi32(s[2] as i32, s[3] as i32, s[6] as i32, s[7] as i32);
        (abef, cdgh)
    }

    /// Back from ABEF / CDGH to (DCBA, HGFE): `[a, b, c, d]` and
    /// `[e, f, g, h]` with the first word in the lowest lane, which is
    /// exactly the message-word layout of a block that starts with this
    /// state as a big-endian digest.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn unload_state(abef: __m128i, cdgh: __m128i) -> (__m128i, __m128i) {
        let feba = _mm_shuffle_epi32(abef, 0x1B);
        let dchg = _mm_shuffle_epi32(cdgh, 0xB1);
        let dcba = _mm_blend_epi16(feba, dchg, 0xF0);
        let hgfe = _mm_alignr_epi8(dchg, feba, 8);
        (dcba, hgfe)
    }

    /// Round constants `K[4g..4g+4]` as one register.
    #[inline]
    #[target_feature(enable = "sse2")]
    fn k(group: usize) -> __m128i {
        // SAFETY: `group < 16`, so the 16 bytes read lie inside `K`;
        // `loadu` has no alignment requirement.
        unsafe { _mm_loadu_si128(K.as_ptr().add(group * 4).cast()) }
    }

    /// One SHA-256 compression on `LANES` independent streams, interleaved
    /// round by round.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn compress4(
        abef: &mut [__m128i; LANES as usize],
        cdgh: &mut [__m128i; LANES as usize],
        msg: &mut [[__m128i; 4]; LANES as usize],
        feed_forward: (__m128i, __m128i),
        prefix_done: bool,
    ) {
        // Four rounds using message group `$g`, held in `m[$cur]`; for
        // groups 4 and up the group is first computed from the four before.
        macro_rules! group {
            ($g:expr, $cur:expr, $n1:expr, $n2:expr, $n3:expr, $schedule:expr) => {{
                let kg = k($g);
                for lane in 0..LANES as usize {
                    let m = &mut msg[lane];
                    if $schedule {
                        let w1 = _mm_sha256msg1_epu32(m[$cur], m[$n1]);
                        let w9 = _mm_alignr_epi8(m[$n3], m[$n2], 4);
                        m[$cur] = _mm_sha256msg2_epu32(_mm_add_epi32(w1, w9), m[$n3]);
                    }
                    let wk = _mm_add_epi32(m[$cur], kg);
                    cdgh[lane] = _mm_sha256rnds2_epu32(cdgh[lane], abef[lane], wk);
                    abef[lane] =
                        _mm_sha256rnds2_epu32(abef[lane], cdgh[lane], _mm_shuffle_epi32(wk, 0x0E));
                }
            }};
        }
        if !prefix_done {
            group!(0, 0, 1, 2, 3, false);
            group!(1, 1, 2, 3, 0, false);
        }
        group!(2, 2, 3, 0, 1, false);
        group!(3, 3, 0, 1, 2, false);
        group!(4, 0, 1, 2, 3, true);
        group!(5, 1, 2, 3, 0, true);
        group!(6, 2, 3, 0, 1, true);
        group!(7, 3, 0, 1, 2, true);
        group!(8, 0, 1, 2, 3, true);
        group!(9, 1, 2, 3, 0, true);
        group!(10, 2, 3, 0, 1, true);
        group!(11, 3, 0, 1, 2, true);
        group!(12, 0, 1, 2, 3, true);
        group!(13, 1, 2, 3, 0, true);
        group!(14, 2, 3, 0, 1, true);
        group!(15, 3, 0, 1, 2, true);
        for lane in 0..LANES as usize {
            abef[lane] = _mm_add_epi32(abef[lane], feed_forward.0);
            cdgh[lane] = _mm_add_epi32(cdgh[lane], feed_forward.1);
        }
    }

    /// Rounds 0..8 of the header's second block: they read only message
    /// words 0..8, which no nonce changes, so they run once per template.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn prefix(midstate: &[u32; 8], tail: &[u32; 16]) -> [u32; 8] {
        let (mut abef, mut cdgh) = load_state(midstate);
        for (group, m) in [
            words(tail[0], tail[1], tail[2], tail[3]),
            words(tail[4], tail[5], tail[6], tail[7]),
        ]
        .into_iter()
        .enumerate()
        {
            let wk = _mm_add_epi32(m, k(group));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
        }
        // Kept in register layout: lanes F, E, B, A and H, G, D, C.
        [
            _mm_extract_epi32(abef, 0) as u32,
            _mm_extract_epi32(abef, 1) as u32,
            _mm_extract_epi32(abef, 2) as u32,
            _mm_extract_epi32(abef, 3) as u32,
            _mm_extract_epi32(cdgh, 0) as u32,
            _mm_extract_epi32(cdgh, 1) as u32,
            _mm_extract_epi32(cdgh, 2) as u32,
            _mm_extract_epi32(cdgh, 3) as u32,
        ]
    }

    /// `sha256d` of the header for `LANES` consecutive nonces from `first`,
    /// as eight big-endian words each.
    #[inline]
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    fn hash4(
        midstate: &[u32; 8],
        prefix: &[u32; 8],
        tail: &[u32; 16],
        first: u64,
    ) -> [[u32; 8]; LANES as usize] {
        let mid = load_state(midstate);
        let (iv_abef, iv_cdgh) = load_state(&IV);
        let p = prefix;
        let pre_abef = words(p[0], p[1], p[2], p[3]);
        let pre_cdgh = words(p[4], p[5], p[6], p[7]);
        let mut abef = [pre_abef; LANES as usize];
        let mut cdgh = [pre_cdgh; LANES as usize];
        let t = tail;
        let m0 = words(t[0], t[1], t[2], t[3]);
        let m1 = words(t[4], t[5], t[6], t[7]);
        let mut msg = [[m0, m1, m0, m0]; LANES as usize];
        for (lane, m) in msg.iter_mut().enumerate() {
            let (w11, w12) = nonce_words(first.wrapping_add(lane as u64));
            m[2] = words(t[8], t[9], t[10], w11);
            m[3] = words(w12, t[13], t[14], t[15]);
        }
        compress4(&mut abef, &mut cdgh, &mut msg, mid, true);

        // Outer hash: the inner digest, 0x80, zeros, length 256 bits.
        let pad = words(0x8000_0000, 0, 0, 0);
        let len = words(0, 0, 0, 256);
        for lane in 0..LANES as usize {
            let (dcba, hgfe) = unload_state(abef[lane], cdgh[lane]);
            msg[lane] = [dcba, hgfe, pad, len];
        }
        let mut abef = [iv_abef; LANES as usize];
        let mut cdgh = [iv_cdgh; LANES as usize];
        compress4(&mut abef, &mut cdgh, &mut msg, (iv_abef, iv_cdgh), false);

        let mut out = [[0u32; 8]; LANES as usize];
        for lane in 0..LANES as usize {
            let (dcba, hgfe) = unload_state(abef[lane], cdgh[lane]);
            out[lane] = [
                _mm_extract_epi32(dcba, 0) as u32,
                _mm_extract_epi32(dcba, 1) as u32,
                _mm_extract_epi32(dcba, 2) as u32,
                _mm_extract_epi32(dcba, 3) as u32,
                _mm_extract_epi32(hgfe, 0) as u32,
                _mm_extract_epi32(hgfe, 1) as u32,
                _mm_extract_epi32(hgfe, 2) as u32,
                _mm_extract_epi32(hgfe, 3) as u32,
            ];
        }
        out
    }

    /// Scans `count` nonces from `start` (rounded up to whole groups of
    /// four); returns the first that meets `target`.
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn scan(
        midstate: &[u32; 8],
        prefix: &[u32; 8],
        tail: &[u32; 16],
        target: &[u32; 8],
        start: u64,
        count: u64,
    ) -> Option<u64> {
        let mut nonce = start;
        let mut left = count;
        while left > 0 {
            let hashes = hash4(midstate, prefix, tail, nonce);
            for (lane, hash) in hashes.iter().enumerate() {
                // The most significant word decides almost always.
                if hash[0] <= target[0] && meets(hash, target) && (lane as u64) < left {
                    return Some(nonce.wrapping_add(lane as u64));
                }
            }
            nonce = nonce.wrapping_add(LANES);
            left = left.saturating_sub(LANES);
        }
        None
    }

    /// The hash of one nonce (lane 0 of a group).
    #[target_feature(enable = "sha,sse2,ssse3,sse4.1")]
    pub(super) fn hash_one(
        midstate: &[u32; 8],
        prefix: &[u32; 8],
        tail: &[u32; 16],
        nonce: u64,
    ) -> [u32; 8] {
        hash4(midstate, prefix, tail, nonce)[0]
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{meets, K_ROUNDS};

    /// Nonces per group.
    pub(super) const LANES: u64 = 16;

    const IV: [u32; 8] = [
        0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab,
        0x5be0cd19,
    ];

    /// Rounds of the second block that read no nonce word (words 0..11).
    const PREFIX_ROUNDS: usize = 11;

    fn big_sigma0(x: u32) -> u32 {
        x.rotate_right(2) ^ x.rotate_right(13) ^ x.rotate_right(22)
    }

    fn big_sigma1(x: u32) -> u32 {
        x.rotate_right(6) ^ x.rotate_right(11) ^ x.rotate_right(25)
    }

    /// The state after rounds 0..11 of the second block, which are the same
    /// for every nonce: run once per template, in scalar code.
    pub(super) fn prefix(midstate: &[u32; 8], tail: &[u32; 16]) -> [u32; 8] {
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = *midstate;
        for (k, w) in K_ROUNDS.iter().zip(tail).take(PREFIX_ROUNDS) {
            let t1 = h
                .wrapping_add(big_sigma1(e))
                .wrapping_add((e & f) ^ (!e & g))
                .wrapping_add(*k)
                .wrapping_add(*w);
            let t2 = big_sigma0(a).wrapping_add((a & b) ^ (a & c) ^ (b & c));
            h = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        [a, b, c, d, e, f, g, h]
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn splat(x: u32) -> __m512i {
        _mm512_set1_epi32(x as i32)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn add(a: __m512i, b: __m512i) -> __m512i {
        _mm512_add_epi32(a, b)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn xor3(a: __m512i, b: __m512i, c: __m512i) -> __m512i {
        _mm512_ternarylogic_epi32(a, b, c, 0x96)
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn small_sigma0(x: __m512i) -> __m512i {
        xor3(
            _mm512_ror_epi32(x, 7),
            _mm512_ror_epi32(x, 18),
            _mm512_srli_epi32(x, 3),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn small_sigma1(x: __m512i) -> __m512i {
        xor3(
            _mm512_ror_epi32(x, 17),
            _mm512_ror_epi32(x, 19),
            _mm512_srli_epi32(x, 10),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn big_sigma0x16(x: __m512i) -> __m512i {
        xor3(
            _mm512_ror_epi32(x, 2),
            _mm512_ror_epi32(x, 13),
            _mm512_ror_epi32(x, 22),
        )
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn big_sigma1x16(x: __m512i) -> __m512i {
        xor3(
            _mm512_ror_epi32(x, 6),
            _mm512_ror_epi32(x, 11),
            _mm512_ror_epi32(x, 25),
        )
    }

    /// Rounds `from..64` on sixteen lanes; `w` holds message words 0..16 and
    /// is expanded in place as a ring of sixteen.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn rounds(state: [__m512i; 8], w: &mut [__m512i; 16], from: usize) -> [__m512i; 8] {
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut h] = state;
        for (t, k) in K_ROUNDS.iter().enumerate().skip(from) {
            let wt = if t < 16 {
                w[t]
            } else {
                let next = add(
                    add(small_sigma1(w[(t - 2) % 16]), w[(t - 7) % 16]),
                    add(small_sigma0(w[(t - 15) % 16]), w[t % 16]),
                );
                w[t % 16] = next;
                next
            };
            // Ch(e, f, g) and Maj(a, b, c) as single three-input logic ops.
            let ch = _mm512_ternarylogic_epi32(e, f, g, 0xCA);
            let t1 = add(add(h, big_sigma1x16(e)), add(ch, add(splat(*k), wt)));
            let maj = _mm512_ternarylogic_epi32(a, b, c, 0xE8);
            let t2 = add(big_sigma0x16(a), maj);
            h = g;
            g = f;
            f = e;
            e = add(d, t1);
            d = c;
            c = b;
            b = a;
            a = add(t1, t2);
        }
        [a, b, c, d, e, f, g, h]
    }

    /// `sha256d` of sixteen nonces `first..first + 16`, whose low 32 bits
    /// must not wrap, as eight word vectors (word i of every lane's hash).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn hash16_words(
        midstate: &[u32; 8],
        prefix: &[u32; 8],
        tail: &[u32; 16],
        first: u64,
    ) -> [__m512i; 8] {
        let low = add(
            splat(first as u32),
            _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
        );
        // Words 11 and 12 are the nonce's little-endian bytes read
        // big-endian: byte-swap the low half per lane, the high half once.
        let swapped = xor3(
            _mm512_or_si512(_mm512_slli_epi32(low, 24), _mm512_srli_epi32(low, 24)),
            _mm512_and_si512(_mm512_slli_epi32(low, 8), splat(0x00ff_0000)),
            _mm512_and_si512(_mm512_srli_epi32(low, 8), splat(0x0000_ff00)),
        );
        let high = ((first >> 32) as u32).swap_bytes();
        let mut w = [splat(0); 16];
        for (slot, word) in w.iter_mut().zip(tail) {
            *slot = splat(*word);
        }
        w[11] = swapped;
        w[12] = splat(high);
        let mut state = [splat(0); 8];
        for (slot, word) in state.iter_mut().zip(prefix) {
            *slot = splat(*word);
        }
        let inner = rounds(state, &mut w, PREFIX_ROUNDS);

        // Outer hash: the inner digest, 0x80, zeros, length 256 bits.
        let mut w = [splat(0); 16];
        for ((slot, word), mid) in w.iter_mut().zip(inner).zip(midstate) {
            *slot = add(word, splat(*mid));
        }
        w[8] = splat(0x8000_0000);
        w[15] = splat(256);
        let mut state = [splat(0); 8];
        for (slot, word) in state.iter_mut().zip(IV) {
            *slot = splat(word);
        }
        let outer = rounds(state, &mut w, 0);
        let mut words = [splat(0); 8];
        for ((slot, word), iv) in words.iter_mut().zip(outer).zip(IV) {
            *slot = add(word, splat(iv));
        }
        words
    }

    /// One vector's sixteen lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn lanes(v: __m512i) -> [u32; 16] {
        let mut out = [0u32; 16];
        // SAFETY: `out` is 64 bytes, the size of the store; `storeu` needs
        // no alignment.
        unsafe { _mm512_storeu_si512(out.as_mut_ptr().cast(), v) };
        out
    }

    /// The full hashes of `first..first + 16`, as big-endian words per lane.
    #[target_feature(enable = "avx512f")]
    pub(super) fn hash16(
        midstate: &[u32; 8],
        prefix: &[u32; 8],
        tail: &[u32; 16],
        first: u64,
    ) -> [[u32; 8]; 16] {
        let words = hash16_words(midstate, prefix, tail, first);
        let mut out = [[0u32; 8]; 16];
        for (i, vector) in words.iter().enumerate() {
            for (lane, value) in lanes(*vector).into_iter().enumerate() {
                out[lane][i] = value;
            }
        }
        out
    }

    /// The first lane of `first..first + 16` whose hash meets `target`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn scan16(
        midstate: &[u32; 8],
        prefix: &[u32; 8],
        tail: &[u32; 16],
        target: &[u32; 8],
        first: u64,
    ) -> Option<u64> {
        let words = hash16_words(midstate, prefix, tail, first);
        // The most significant word rules out nearly every lane at once.
        let candidates = _mm512_cmple_epu32_mask(words[0], splat(target[0]));
        if candidates == 0 {
            return None;
        }
        let mut hashes = [[0u32; 8]; 16];
        for (i, vector) in words.iter().enumerate() {
            for (lane, value) in lanes(*vector).into_iter().enumerate() {
                hashes[lane][i] = value;
            }
        }
        (0..16u64)
            .zip(hashes.iter())
            .find(|(lane, hash)| candidates & (1 << lane) != 0 && meets(hash, target))
            .map(|(lane, _)| lane)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{sha256d, CompactTarget, MerkleRoot, StateRoot};

    const ALL: [Kernel; 3] = [Kernel::Avx512, Kernel::ShaNi, Kernel::Portable];

    fn header() -> Header {
        Header {
            version: 1,
            prev: BlockHash([7; 32]),
            merkle_root: MerkleRoot([8; 32]),
            state_root: StateRoot([9; 32]),
            time: 1_767_225_700,
            bits: CompactTarget(0x1f00_ffff),
            nonce: 0,
        }
    }

    /// What a kernel needs from the CPU.
    fn needs(kernel: Kernel) -> &'static str {
        match kernel {
            Kernel::Avx512 => "avx512f",
            Kernel::ShaNi => "sha, sse4.1 and ssse3",
            Kernel::Portable => "nothing",
        }
    }

    /// The kernels this CPU runs, after printing for `test` each kernel it
    /// lacks and why, and which kernels are compared with `sha256d`.
    fn kernels_compared(test: &str) -> Vec<Kernel> {
        for kernel in ALL.into_iter().filter(|k| !k.supported()) {
            println!(
                "{test}: SKIP {}: this CPU lacks {}; that kernel is not compared",
                kernel.name(),
                needs(kernel)
            );
        }
        let ran: Vec<Kernel> = ALL.into_iter().filter(|k| k.supported()).collect();
        let names: Vec<&str> = ran.iter().map(|k| k.name()).collect();
        println!(
            "{test}: compared {} (the miner picks {}) against sha256d",
            names.join(", "),
            Kernel::detect().name()
        );
        assert!(
            ran.contains(&Kernel::Portable),
            "the portable kernel always runs"
        );
        ran
    }

    /// A scanner that really runs `kernel`, not the fallback.
    fn scanner(header: &Header, target: &Target, kernel: Kernel) -> NonceScanner {
        let scanner = NonceScanner::with_kernel(header, target, kernel);
        assert_eq!(scanner.kernel(), kernel, "no silent fallback");
        scanner
    }

    /// The block hash with `nonce`: protocol's `sha256d` of all the header's
    /// bytes, sharing no midstate or kernel code with the scanners.
    fn sha256d_with(header: &Header, nonce: u64) -> BlockHash {
        let mut header = *header;
        header.nonce = nonce;
        BlockHash(sha256d(&header.to_bytes()))
    }

    /// The first nonce in `start..start + count` (wrapping) meeting
    /// `target`, one `sha256d` at a time.
    fn first_by_sha256d(header: &Header, target: &Target, start: u64, count: u64) -> Option<u64> {
        let mut nonce = start;
        for _ in 0..count {
            if target.is_met_by(&sha256d_with(header, nonce)) {
                return Some(nonce);
            }
            nonce = nonce.wrapping_add(1);
        }
        None
    }

    #[test]
    fn every_kernel_gives_the_sha256d_hash() {
        let header = header();
        let target = header.bits.to_target().unwrap();
        for kernel in ALL.into_iter().filter(|k| !k.supported()) {
            assert_eq!(
                NonceScanner::with_kernel(&header, &target, kernel).kernel(),
                Kernel::Portable,
                "{kernel:?} falls back to the portable kernel"
            );
        }
        for kernel in kernels_compared("hash") {
            let mut scanner = scanner(&header, &target, kernel);
            for nonce in [
                0u64,
                1,
                2,
                3,
                4,
                17,
                0x1234_5678_9abc_def0,
                0xffff_fff8,
                u64::MAX,
            ] {
                assert_eq!(
                    scanner.hash(nonce),
                    sha256d_with(&header, nonce),
                    "{kernel:?} nonce {nonce}"
                );
            }
        }
    }

    #[test]
    fn every_kernel_finds_the_first_nonce_sha256d_finds() {
        let header = header();
        let target = header.bits.to_target().unwrap();
        let expected = first_by_sha256d(&header, &target, 5, 2_000_000)
            .expect("a 2^-16 target is met within 2M nonces");
        for kernel in kernels_compared("first nonce") {
            let mut scanner = scanner(&header, &target, kernel);
            assert_eq!(scanner.scan(5, 2_000_000), Some(expected), "{kernel:?}");
        }
    }

    #[test]
    fn groups_across_a_low_word_wrap_are_scanned_whole() {
        // Nonces around 2^32: word 12 of the block changes inside the group.
        let header = header();
        let kernels = kernels_compared("low-word wrap");
        // Every other hash meets the regtest limit: each kernel must report
        // the first winner, from a start just below the wrap.
        let easy = CompactTarget(0x207f_ffff).to_target().unwrap();
        for start in 0xffff_fff0u64..0x1_0000_0002 {
            let expected = first_by_sha256d(&header, &easy, start, 40);
            assert!(expected.is_some());
            for &kernel in &kernels {
                assert_eq!(
                    scanner(&header, &easy, kernel).scan(start, 40),
                    expected,
                    "{kernel:?} from {start:#x}"
                );
            }
        }
        let hard = header.bits.to_target().unwrap();
        let expected = first_by_sha256d(&header, &hard, 0xffff_0000, 3_000_000);
        assert!(
            expected.is_some_and(|n| n > 0xffff_ffff),
            "the first winner lies past the low-word wrap, so every kernel scans across it: {expected:x?}"
        );
        for &kernel in &kernels {
            assert_eq!(
                scanner(&header, &hard, kernel).scan(0xffff_0000, 3_000_000),
                expected,
                "{kernel:?}"
            );
        }
    }

    #[test]
    fn scan_respects_the_count() {
        let header = header();
        let target = header.bits.to_target().unwrap();
        let first = first_by_sha256d(&header, &target, 0, 2_000_000)
            .expect("a 2^-16 target is met within 2M nonces");
        for kernel in kernels_compared("count") {
            let mut scanner = scanner(&header, &target, kernel);
            assert_eq!(scanner.scan(0, first), None, "{kernel:?}");
            assert_eq!(scanner.scan(0, first + 1), Some(first), "{kernel:?}");
        }
        assert_eq!(
            NonceScanner::new(&header, &target).scan(0, u64::MAX),
            Some(first)
        );
    }
}
