//! Newtypes for every id and quantity that crosses an API: hashes and ids
//! (shown as 64 lowercase hex characters), addresses (ed25519 public keys),
//! amounts and heights with checked arithmetic, and `F32Bits`, the only way
//! a float enters consensus data.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why a hex string could not be parsed as a 32-byte value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what} {value:?}: expected 64 hex characters")]
pub struct ParseHexError {
    /// What was being parsed.
    pub what: &'static str,
    /// The text that was given (cut to 80 characters).
    pub value: String,
}

fn parse_hex32(what: &'static str, text: &str) -> Result<[u8; 32], ParseHexError> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).map_err(|_| ParseHexError {
        what,
        value: text.chars().take(80).collect(),
    })?;
    Ok(out)
}

macro_rules! bytes32_newtype {
    ($(#[$meta:meta])* $name:ident, $what:literal) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The all-zero value.
            pub const ZERO: Self = Self([0u8; 32]);

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }

            /// Lowercase hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&hex::encode(self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), hex::encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = ParseHexError;
            fn from_str(text: &str) -> Result<Self, Self::Err> {
                parse_hex32($what, text).map(Self)
            }
        }

        impl From<[u8; 32]> for $name {
            fn from(bytes: [u8; 32]) -> Self {
                Self(bytes)
            }
        }
    };
}

bytes32_newtype!(
    /// The `sha256d` of an encoded block header.
    BlockHash,
    "block hash"
);
bytes32_newtype!(
    /// The id of a transaction: `sha256d` of its canonical encoding.
    TxId,
    "transaction id"
);
bytes32_newtype!(
    /// A training job's id: the id of the `PostJob` transaction that posted it.
    JobId,
    "job id"
);
bytes32_newtype!(
    /// A content digest (SHA-256) of a blob: a dataset, weights, checkpoints.
    Digest,
    "digest"
);
bytes32_newtype!(
    /// The merkle root of a block's transaction ids.
    MerkleRoot,
    "merkle root"
);
bytes32_newtype!(
    /// The commitment to the whole account and job state after a block.
    StateRoot,
    "state root"
);
bytes32_newtype!(
    /// An account: an ed25519 public key. Whether the bytes are a valid key is
    /// checked where a signature is verified.
    Address,
    "address"
);

impl From<TxId> for JobId {
    fn from(id: TxId) -> Self {
        Self(id.0)
    }
}

impl Address {
    /// The address of an ed25519 verifying key.
    pub fn from_verifying_key(key: &ed25519_dalek::VerifyingKey) -> Self {
        Self(key.to_bytes())
    }
}

/// An ed25519 signature (64 bytes, encoded without a length prefix).
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "crate::codec::byte_array")] pub [u8; 64]);

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({})", hex::encode(self.0))
    }
}

/// An amount of coin in integer base units.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Amount(pub u64);

impl Amount {
    /// Zero.
    pub const ZERO: Self = Self(0);

    /// `self + other`, or `None` on overflow.
    pub fn checked_add(self, other: Self) -> Option<Self> {
        self.0.checked_add(other.0).map(Self)
    }

    /// `self - other`, or `None` when `other` is larger.
    pub fn checked_sub(self, other: Self) -> Option<Self> {
        self.0.checked_sub(other.0).map(Self)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A block height; genesis is 0.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Debug, Serialize, Deserialize,
)]
pub struct Height(pub u64);

impl Height {
    /// The height of the genesis block.
    pub const GENESIS: Self = Self(0);

    /// The next height, or `None` at `u64::MAX`.
    pub fn next(self) -> Option<Self> {
        self.0.checked_add(1).map(Self)
    }

    /// The previous height, or `None` at genesis.
    pub fn prev(self) -> Option<Self> {
        self.0.checked_sub(1).map(Self)
    }

    /// `self + blocks`, or `None` on overflow.
    pub fn checked_add(self, blocks: u64) -> Option<Self> {
        self.0.checked_add(blocks).map(Self)
    }
}

impl fmt::Display for Height {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An `f32` carried as its IEEE-754 bits, so that hashed data holds integers
/// only and equality is bitwise.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct F32Bits(pub u32);

impl F32Bits {
    /// The bits of `value`.
    pub fn from_f32(value: f32) -> Self {
        Self(value.to_bits())
    }

    /// The float these bits encode.
    pub fn to_f32(self) -> f32 {
        f32::from_bits(self.0)
    }

    /// Whether the value is neither NaN nor infinite.
    pub fn is_finite(self) -> bool {
        self.to_f32().is_finite()
    }
}

impl fmt::Debug for F32Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

impl fmt::Display for F32Bits {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_f32())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_errors() {
        let hash = BlockHash([0xab; 32]);
        assert_eq!(hash.to_string().len(), 64);
        assert_eq!(hash.to_string().parse::<BlockHash>().unwrap(), hash);
        let err = "xyz".parse::<Address>().unwrap_err();
        assert_eq!(err.what, "address");
        assert!(err.to_string().contains("expected 64 hex characters"));
        assert!("ab".repeat(31).parse::<TxId>().is_err());
    }

    #[test]
    fn amount_and_height_arithmetic_is_checked() {
        assert_eq!(Amount(u64::MAX).checked_add(Amount(1)), None);
        assert_eq!(Amount(1).checked_sub(Amount(2)), None);
        assert_eq!(Height(u64::MAX).next(), None);
        assert_eq!(Height::GENESIS.prev(), None);
    }

    #[test]
    fn f32_bits_keep_the_exact_value() {
        let bits = F32Bits::from_f32(-0.0);
        assert_ne!(bits, F32Bits::from_f32(0.0));
        assert!(!F32Bits::from_f32(f32::NAN).is_finite());
    }
}
