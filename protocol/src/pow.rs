//! Proof of work: 256-bit targets, their compact ("nBits") encoding, and the
//! work a target represents.
//!
//! A block hash is read as a big-endian 256-bit integer, so a hash that meets
//! a hard target starts with zero bytes when shown in hex. Work is
//! `2^256 / (target + 1)`; cumulative work is summed with checked additions.

use std::fmt;

use primitive_types::U256;
use serde::{Deserialize, Serialize};

use crate::types::BlockHash;

/// Why compact bits do not encode a usable target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CompactError {
    /// The sign bit is set on a non-zero mantissa.
    #[error("compact target {0} is negative, expected a positive target")]
    Negative(CompactTarget),
    /// The exponent pushes the mantissa past 256 bits.
    #[error("compact target {0} overflows 256 bits")]
    Overflow(CompactTarget),
    /// The target is zero, which no hash can meet.
    #[error("compact target {0} is zero, expected a positive target")]
    Zero(CompactTarget),
}

/// A target in Bitcoin's compact form: one exponent byte and a 23-bit
/// mantissa with a sign bit.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct CompactTarget(pub u32);

impl fmt::Display for CompactTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#010x}", self.0)
    }
}

impl fmt::Debug for CompactTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CompactTarget({:#010x})", self.0)
    }
}

impl CompactTarget {
    /// The target these bits encode; negative, overflowing and zero targets
    /// are errors.
    pub fn to_target(self) -> Result<Target, CompactError> {
        let size = self.0 >> 24;
        let mantissa = self.0 & 0x007f_ffff;
        let negative = mantissa != 0 && (self.0 & 0x0080_0000) != 0;
        if negative {
            return Err(CompactError::Negative(self));
        }
        let overflow = mantissa != 0
            && (size > 34 || (mantissa > 0xff && size > 33) || (mantissa > 0xffff && size > 32));
        if overflow {
            return Err(CompactError::Overflow(self));
        }
        let value = if size <= 3 {
            let shift = 3u32.saturating_sub(size).saturating_mul(8);
            U256::from(mantissa.checked_shr(shift).unwrap_or(0))
        } else {
            // size <= 34 here and the mantissa's width was checked above, so
            // no set bit is shifted out.
            shift_left(
                U256::from(mantissa),
                size.saturating_sub(3).saturating_mul(8),
            )
        };
        if value.is_zero() {
            return Err(CompactError::Zero(self));
        }
        Ok(Target(value))
    }
}

/// `value << bits`, zero for shifts of 256 bits or more.
#[allow(clippy::arithmetic_side_effects)] // the shift amount is bounded first
fn shift_left(value: U256, bits: u32) -> U256 {
    if bits >= 256 {
        return U256::zero();
    }
    value << bits
}

/// `value >> bits`, zero for shifts of 256 bits or more.
#[allow(clippy::arithmetic_side_effects)] // the shift amount is bounded first
fn shift_right(value: U256, bits: u32) -> U256 {
    if bits >= 256 {
        return U256::zero();
    }
    value >> bits
}

/// A proof-of-work target: a header hash meets it when, read as a big-endian
/// integer, it is at most the target.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Target(pub U256);

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Target({:064x})", self.0)
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:064x}", self.0)
    }
}

impl Target {
    /// The compact encoding, rounding the target down to 23 bits of mantissa.
    pub fn to_compact(self) -> CompactTarget {
        let bytes = self.0.bits().div_ceil(8);
        let mut size = u32::try_from(bytes).unwrap_or(32);
        let mut mantissa = if size <= 3 {
            let shift = 3u32.saturating_sub(size).saturating_mul(8);
            self.0.low_u64().checked_shl(shift).unwrap_or(0)
        } else {
            shift_right(self.0, size.saturating_sub(3).saturating_mul(8)).low_u64()
        };
        // The top mantissa bit is the sign: move a set bit into the exponent.
        if mantissa & 0x0080_0000 != 0 {
            mantissa >>= 8;
            size = size.saturating_add(1);
        }
        let mantissa = u32::try_from(mantissa & 0x007f_ffff).unwrap_or(0);
        CompactTarget(mantissa | (size << 24))
    }

    /// Whether `hash`, read as a big-endian integer, is at most this target.
    pub fn is_met_by(&self, hash: &BlockHash) -> bool {
        U256::from_big_endian(hash.as_bytes()) <= self.0
    }

    /// The expected number of hashes to meet this target:
    /// `2^256 / (target + 1)`.
    pub fn work(&self) -> Work {
        match self.0.checked_add(U256::one()) {
            // 2^256 / (t + 1) == (2^256 - t - 1) / (t + 1) + 1 == !t / (t + 1) + 1,
            // and !t / (t + 1) < 2^256 - 1, so the final addition cannot overflow.
            Some(divisor) => Work(
                (!self.0)
                    .checked_div(divisor)
                    .unwrap_or_default()
                    .saturating_add(U256::one()),
            ),
            None => Work(U256::one()),
        }
    }
}

/// An amount of proof of work, summed along a chain for fork choice.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Work(pub U256);

impl Work {
    /// No work.
    pub const ZERO: Self = Self(U256([0, 0, 0, 0]));

    /// `self + other`, or `None` past 2^256 - 1.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// `self - other`, or `None` when `other` is larger.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Self)
    }

    /// Big-endian bytes, for storage.
    pub fn to_be_bytes(&self) -> [u8; 32] {
        self.0.to_big_endian()
    }

    /// From big-endian bytes.
    pub fn from_be_bytes(bytes: &[u8; 32]) -> Self {
        Self(U256::from_big_endian(bytes))
    }
}

impl fmt::Debug for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Work({})", self.0)
    }
}

impl fmt::Display for Work {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl Serialize for Work {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_be_bytes().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Work {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        <[u8; 32]>::deserialize(deserializer).map(|bytes| Self::from_be_bytes(&bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitcoin_genesis_bits_decode_to_the_known_target() {
        let target = CompactTarget(0x1d00_ffff).to_target().unwrap();
        assert_eq!(
            format!("{target}"),
            "00000000ffff0000000000000000000000000000000000000000000000000000"
        );
        assert_eq!(target.to_compact(), CompactTarget(0x1d00_ffff));
        // Bitcoin's genesis work is 0x100010001.
        assert_eq!(target.work().0, U256::from(0x1_0001_0001u64));
    }

    #[test]
    fn compact_edge_cases() {
        assert!(matches!(
            CompactTarget(0x0480_0001).to_target(),
            Err(CompactError::Negative(_))
        ));
        assert!(matches!(
            CompactTarget(0xff12_3456).to_target(),
            Err(CompactError::Overflow(_))
        ));
        assert!(matches!(
            CompactTarget(0x0100_3456).to_target(),
            Err(CompactError::Zero(_))
        ));
        assert_eq!(
            CompactTarget(0x0112_3456).to_target().unwrap().0,
            U256::from(0x12)
        );
        assert_eq!(
            Target(U256::from(0x80)).to_compact(),
            CompactTarget(0x0200_8000)
        );
        assert_eq!(Target(U256::MAX).work(), Work(U256::one()));
    }

    #[test]
    fn hashes_compare_big_endian() {
        let target = Target(U256::from(1u64) << 240);
        let mut easy = [0u8; 32];
        easy[1] = 0x01;
        assert!(target.is_met_by(&BlockHash(easy)));
        easy[1] = 0x02;
        assert!(!target.is_met_by(&BlockHash(easy)));
    }
}
