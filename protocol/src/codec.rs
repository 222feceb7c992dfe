//! The one canonical codec: bincode 2 through serde, in a single fixed
//! configuration (little-endian, fixed-width integers, a decode size limit).
//!
//! Every hash in gradchain is taken over bytes produced here, so this module
//! must never change behaviour silently: fixed-width integers keep the header
//! nonce at a fixed offset, decoding refuses trailing bytes so that one value
//! has exactly one encoding, and the size limit bounds what a peer can make
//! us allocate.

use bincode::config::{Configuration, Fixint, LittleEndian, NoLimit};
use serde::{de::DeserializeOwned, Serialize};

/// The largest input [`decode`] accepts, in bytes. Blocks are capped lower by
/// the chain parameters; this bound only stops hostile length prefixes.
pub const MAX_DECODE_BYTES: usize = 8 * 1024 * 1024;

type DecodeConfig = Configuration<LittleEndian, Fixint, bincode::config::Limit<MAX_DECODE_BYTES>>;
type EncodeConfig = Configuration<LittleEndian, Fixint, NoLimit>;

const DECODE_CONFIG: DecodeConfig = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding()
    .with_limit::<MAX_DECODE_BYTES>();

const ENCODE_CONFIG: EncodeConfig = bincode::config::standard()
    .with_little_endian()
    .with_fixed_int_encoding();

/// Why bytes could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The input is longer than the caller's limit.
    #[error("encoded value is {len} bytes, expected at most {max}")]
    TooLarge {
        /// Length of the input.
        len: usize,
        /// The limit that applied.
        max: usize,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("malformed encoding: {0}")]
    Malformed(String),
    /// A valid value was decoded but bytes were left over.
    #[error("trailing bytes: decoded {consumed} of {len} bytes, expected all of them")]
    TrailingBytes {
        /// Bytes the value used.
        consumed: usize,
        /// Length of the input.
        len: usize,
    },
    /// The value could not be encoded.
    #[error("cannot encode value: {0}")]
    Encode(String),
}

/// Encodes `value` canonically.
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(value, ENCODE_CONFIG)
        .map_err(|err| CodecError::Encode(err.to_string()))
}

/// Decodes exactly one `T` from `bytes`, refusing inputs over
/// [`MAX_DECODE_BYTES`] and leftover bytes.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    decode_with_limit(bytes, MAX_DECODE_BYTES)
}

/// Decodes exactly one `T` from `bytes`, refusing inputs longer than `max`
/// (itself capped at [`MAX_DECODE_BYTES`]) and leftover bytes.
pub fn decode_with_limit<T: DeserializeOwned>(bytes: &[u8], max: usize) -> Result<T, CodecError> {
    let max = max.min(MAX_DECODE_BYTES);
    if bytes.len() > max {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let (value, consumed) = bincode::serde::decode_from_slice(bytes, DECODE_CONFIG)
        .map_err(|err| CodecError::Malformed(err.to_string()))?;
    if consumed != bytes.len() {
        return Err(CodecError::TrailingBytes {
            consumed,
            len: bytes.len(),
        });
    }
    Ok(value)
}

/// Serde helpers for byte arrays longer than serde's built-in 32: written as
/// a fixed-length tuple, so no length prefix is encoded.
pub mod byte_array {
    use serde::de::{Error as _, SeqAccess, Visitor};
    use serde::ser::SerializeTuple;
    use serde::{Deserializer, Serializer};

    /// Serializes `[u8; N]` as an `N`-tuple.
    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(N)?;
        for byte in bytes {
            tuple.serialize_element(byte)?;
        }
        tuple.end()
    }

    /// Deserializes an `N`-tuple of bytes into `[u8; N]`.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        struct ArrayVisitor<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for ArrayVisitor<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "{N} bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<[u8; N], A::Error> {
                let mut out = [0u8; N];
                for (index, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| A::Error::invalid_length(index, &self))?;
                }
                Ok(out)
            }
        }
        deserializer.deserialize_tuple(N, ArrayVisitor::<N>)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_are_fixed_width_little_endian() {
        assert_eq!(encode(&1u64).unwrap(), vec![1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode(&0x0102_0304u32).unwrap(), vec![4, 3, 2, 1]);
        assert_eq!(encode(&vec![7u8]).unwrap(), vec![1, 0, 0, 0, 0, 0, 0, 0, 7]);
    }

    #[test]
    fn trailing_bytes_are_rejected() {
        let err = decode::<u32>(&[1, 0, 0, 0, 9]).unwrap_err();
        assert_eq!(
            err,
            CodecError::TrailingBytes {
                consumed: 4,
                len: 5
            }
        );
    }

    #[test]
    fn oversized_input_is_rejected_before_decoding() {
        let err = decode_with_limit::<Vec<u8>>(&[0u8; 100], 10).unwrap_err();
        assert_eq!(err, CodecError::TooLarge { len: 100, max: 10 });
    }

    #[test]
    fn hostile_length_prefix_is_an_error_not_an_allocation() {
        let mut bytes = u64::MAX.to_le_bytes().to_vec();
        bytes.push(1);
        assert!(matches!(
            decode::<Vec<u8>>(&bytes),
            Err(CodecError::Malformed(_))
        ));
    }

    #[test]
    fn non_canonical_bool_and_option_tags_are_rejected() {
        assert!(decode::<bool>(&[2]).is_err());
        assert!(decode::<Option<u8>>(&[2, 0]).is_err());
    }
}
