//! The seeded pseudo-random generator behind parameter initialisation, the
//! dataset split and the mini-batch order.
//!
//! Every random choice of a training run comes from here, so that a replay
//! with the same seed makes the same choices on any machine. It must never
//! read OS entropy, a clock or any global state, and never change its output
//! for a given seed: that would change every digest on chain.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]

use sha2::{Digest as _, Sha256};

/// SplitMix64 (Steele, Lea and Flood, 2014): one 64-bit state, a Weyl step and
/// a mixing function. Small, fast and fully specified by its integer
/// arithmetic, so it is the same everywhere.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// A generator starting at `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent stream for one purpose (`domain`) of a seed: the split,
    /// the initial weights and the batch order must not share draws, or
    /// changing the number of one would shift the others.
    pub fn for_purpose(seed: u64, domain: &str) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"gradchain/rng/v1/");
        hasher.update(domain.as_bytes());
        hasher.update(seed.to_le_bytes());
        let digest = hasher.finalize();
        let mut first = [0u8; 8];
        for (dst, src) in first.iter_mut().zip(digest) {
            *dst = src;
        }
        Self::new(u64::from_le_bytes(first))
    }

    /// The whole generator state: [`Self::new`] of it continues the stream
    /// exactly where this one is, which is how a training state resumes it.
    pub fn state(&self) -> u64 {
        self.state
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (0 when `n` is 0), by the multiply-shift map; its
    /// tiny bias does not matter here, only that it is the same everywhere.
    pub fn below(&mut self, n: usize) -> usize {
        // A 64 × 64-bit product cannot wrap a u128, and its high half is
        // below `n`, so it fits a usize: neither fallback is ever taken.
        let wide = u128::from(self.next_u64()).wrapping_mul(u128::try_from(n).unwrap_or(u128::MAX));
        usize::try_from(wide >> 64).unwrap_or(usize::MAX)
    }

    /// A float in `[0, 1)` with 24 random bits: exactly representable, so no
    /// rounding mode is involved.
    pub fn unit_f32(&mut self) -> f32 {
        let bits = u32::try_from(self.next_u64() >> 40).unwrap_or(0);
        // A 24-bit integer converts to f32 exactly.
        #[allow(clippy::as_conversions)]
        let value = bits as f32;
        value * (1.0 / 16_777_216.0)
    }

    /// Fisher–Yates shuffle, from the last element down.
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            // `i` is below the slice length, so `i + 1` cannot overflow.
            let j = self.below(i.saturating_add(1));
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::as_conversions)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_reference_values() {
        // First outputs of SplitMix64 seeded with 0, as in the reference C code.
        let mut rng = SplitMix64::new(0);
        assert_eq!(rng.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(rng.next_u64(), 0x6E78_9E6A_A1B9_65F4);
    }

    #[test]
    fn a_generator_rebuilt_from_its_state_continues_the_stream() {
        let mut a = SplitMix64::for_purpose(9, "batches");
        a.next_u64();
        let mut b = SplitMix64::new(a.state());
        assert_eq!(a.next_u64(), b.next_u64());
        assert_eq!(a.state(), b.state());
    }

    #[test]
    fn purposes_are_independent_streams() {
        let a = SplitMix64::for_purpose(1, "split").next_u64();
        let b = SplitMix64::for_purpose(1, "init").next_u64();
        let c = SplitMix64::for_purpose(2, "split").next_u64();
        assert_ne!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn shuffle_is_a_permutation_and_unit_is_in_range() {
        let mut rng = SplitMix64::new(42);
        let mut items: Vec<u32> = (0..100).collect();
        rng.shuffle(&mut items);
        assert_ne!(items, (0..100).collect::<Vec<_>>());
        items.sort_unstable();
        assert_eq!(items, (0..100).collect::<Vec<_>>());
        for _ in 0..1000 {
            let u = rng.unit_f32();
            assert!((0.0..1.0).contains(&u));
            assert!(rng.below(7) < 7);
        }
        assert_eq!(rng.below(0), 0);
    }
}
