//! ASERT difficulty (aserti3-2d, as specified for Bitcoin Cash in 2020):
//! the target of the next block follows an exponential schedule anchored at a
//! fixed block, so each block's target depends only on the anchor and on the
//! parent's height and time, never on a window of blocks.
//!
//! `next = anchor_target * 2^((time_diff - spacing * (height_diff + 1)) / half_life)`,
//! computed in 16.16 fixed point with the spec's cubic approximation of
//! `2^x` on `[0, 1)`. All of it is integer arithmetic: every node computes
//! the same target bit for bit.

use primitive_types::{U256, U512};

use crate::pow::Target;

/// The parameters of the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsertParams {
    /// Ideal seconds between blocks.
    pub spacing: i64,
    /// Seconds of schedule drift that halve (or double) the target.
    pub half_life: i64,
    /// The easiest target allowed; results are clamped to it.
    pub pow_limit: Target,
}

/// The block the schedule is anchored at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsertAnchor {
    /// The anchor block's height.
    pub height: u64,
    /// The time of the anchor block's parent.
    pub parent_time: i64,
    /// The anchor block's target.
    pub target: Target,
}

/// Why a target could not be computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AsertError {
    /// The parent is below the anchor.
    #[error("parent height {parent} is below the ASERT anchor height {anchor}")]
    BeforeAnchor {
        /// The parent's height.
        parent: u64,
        /// The anchor's height.
        anchor: u64,
    },
    /// The half-life or spacing is not positive.
    #[error("ASERT spacing {spacing} and half-life {half_life} must both be positive")]
    BadParams {
        /// The spacing given.
        spacing: i64,
        /// The half-life given.
        half_life: i64,
    },
    /// Intermediate values left the range the computation supports.
    #[error("ASERT exponent out of range")]
    OutOfRange,
}

/// The target the block after `parent` must carry.
pub fn next_target(
    params: &AsertParams,
    anchor: &AsertAnchor,
    parent_height: u64,
    parent_time: i64,
) -> Result<Target, AsertError> {
    if params.spacing <= 0 || params.half_life <= 0 {
        return Err(AsertError::BadParams {
            spacing: params.spacing,
            half_life: params.half_life,
        });
    }
    let height_diff = parent_height
        .checked_sub(anchor.height)
        .ok_or(AsertError::BeforeAnchor {
            parent: parent_height,
            anchor: anchor.height,
        })?;
    let time_diff = i128::from(parent_time)
        .checked_sub(i128::from(anchor.parent_time))
        .ok_or(AsertError::OutOfRange)?;
    let scheduled = i128::from(params.spacing)
        .checked_mul(
            i128::from(height_diff)
                .checked_add(1)
                .ok_or(AsertError::OutOfRange)?,
        )
        .ok_or(AsertError::OutOfRange)?;
    // Division truncates toward zero, as the spec requires.
    let exponent = time_diff
        .checked_sub(scheduled)
        .and_then(|drift| drift.checked_mul(65536))
        .and_then(|scaled| scaled.checked_div(i128::from(params.half_life)))
        .ok_or(AsertError::OutOfRange)?;
    // Floor division by 65536 and the non-negative remainder.
    let shifts = exponent >> 16;
    let frac = u128::try_from(exponent & 0xffff).map_err(|_| AsertError::OutOfRange)?;
    // 2^frac ~ 1 + (195766423245049 f + 971821376 f^2 + 5127 f^3 + 2^47) / 2^48,
    // all terms below 2^65 for f < 2^16.
    let poly = frac
        .checked_mul(195_766_423_245_049)
        .and_then(|a| {
            let f2 = frac.checked_mul(frac)?;
            let b = f2.checked_mul(971_821_376)?;
            let c = f2.checked_mul(frac)?.checked_mul(5127)?;
            a.checked_add(b)?.checked_add(c)?.checked_add(1u128 << 47)
        })
        .ok_or(AsertError::OutOfRange)?;
    let factor = 65536u64
        .checked_add(u64::try_from(poly >> 48).map_err(|_| AsertError::OutOfRange)?)
        .ok_or(AsertError::OutOfRange)?;

    let product = U512::from(anchor.target.0).full_mul_u64(factor);
    let pow_limit = U512::from(params.pow_limit.0);
    let shifted = if shifts < 0 {
        let right = shifts.unsigned_abs();
        if right >= 512 {
            U512::zero()
        } else {
            product.shr_bits(right)
        }
    } else {
        let left = shifts.unsigned_abs();
        let width = u128::try_from(product.bits()).map_err(|_| AsertError::OutOfRange)?;
        if width.saturating_add(left) > 512 {
            // The true value exceeds any 256-bit target: clamp to the limit.
            return Ok(params.pow_limit);
        }
        product.shl_bits(left)
    };
    let next = shifted.shr_bits(16);
    if next.is_zero() {
        return Ok(Target(U256::one()));
    }
    if next > pow_limit {
        return Ok(params.pow_limit);
    }
    U256::try_from(next)
        .map(Target)
        .map_err(|_| AsertError::OutOfRange)
}

/// Bit shifts and a widening multiply with their bounds stated, so that the
/// schedule above reads as checked arithmetic.
trait U512Ext: Sized {
    fn full_mul_u64(self, factor: u64) -> Self;
    fn shr_bits(self, bits: u128) -> Self;
    fn shl_bits(self, bits: u128) -> Self;
}

impl U512Ext for U512 {
    /// Multiplies a value below 2^256 by a u64; the product stays below 2^320.
    #[allow(clippy::arithmetic_side_effects)]
    fn full_mul_u64(self, factor: u64) -> Self {
        self * U512::from(factor)
    }

    /// Right shift by fewer than 512 bits (callers check); bits fall off.
    #[allow(clippy::arithmetic_side_effects)]
    fn shr_bits(self, bits: u128) -> Self {
        match usize::try_from(bits) {
            Ok(bits) if bits < 512 => self >> bits,
            _ => U512::zero(),
        }
    }

    /// Left shift whose result callers have checked fits in 512 bits.
    #[allow(clippy::arithmetic_side_effects)]
    fn shl_bits(self, bits: u128) -> Self {
        match usize::try_from(bits) {
            Ok(bits) if bits < 512 => self << bits,
            _ => U512::zero(),
        }
    }
}
