//! The one canonical codec: bincode 2 through serde, in a single fixed
//! configuration (little-endian, fixed-width integers, a decode size limit).
//!
//! Every hash in gradchain is taken over bytes produced here, so this module
//! must never change behaviour silently: fixed-width integers keep the header
//! nonce at a fixed offset, decoding refuses trailing bytes so that one value
//! has exactly one encoding, and decoding never allocates more than a small
//! multiple of the bytes it was given, whatever lengths those bytes announce
//! (the private `bounded` module says how, and why that changes no result).

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
    let seed = bounded::Root::<T>::new(bytes.len());
    let (value, consumed) = bincode::serde::seed_decode_from_slice(seed, bytes, DECODE_CONFIG)
        .map_err(|err| CodecError::Malformed(err.to_string()))?;
    if consumed != bytes.len() {
        return Err(CodecError::TrailingBytes {
            consumed,
            len: bytes.len(),
        });
    }
    Ok(value)
}

/// Decoding that allocates only for bytes that are there.
///
/// bincode decodes an owned `String` (or byte buffer) by zero-filling a
/// buffer of the announced length and only then reading into it, so twelve
/// bytes announcing an 8 MiB string cost 8 MiB before the read fails. And
/// serde's `Vec` preallocates up to 1 MiB for whatever element count a
/// sequence announces. bincode's size limit cannot stop either: it is a
/// type-level constant, not the length of this input, and in this
/// configuration it counts bytes consumed, not bytes allocated.
///
/// [`Root`] wraps bincode's deserializer (and, through every visitor,
/// sequence, map, enum and variant, each deserializer nested in it) so that:
///
/// - an owned string or byte buffer is decoded through bincode's borrowed
///   path, which checks that all the announced bytes are in the input
///   before anything is allocated, and is then copied out at its real
///   length;
/// - a sequence's or map's size hint is capped at the input's length, so
///   serde preallocates at most that many elements, `len * size_of::<T>()`
///   bytes, whatever count was announced.
///
/// What this must never change is which bytes decode, and to what. It
/// does not: the borrowed path reads the same length prefix, claims the
/// same `len` bytes against the limit, consumes the same bytes and applies
/// the same UTF-8 check as bincode's owned `String` decoding, and a
/// visitor's result does not depend on whether its string was borrowed. A
/// size hint only sizes a first allocation, never what is read. Every other
/// call is forwarded unchanged. Nor could a limit tied to the input's
/// length have refused a valid encoding: with fixed-width integers and
/// serde (no `claim_container_read` of `len * size_of::<T>()` in-memory
/// bytes, which only bincode's own `Decode` impls make for non-byte
/// containers), every claim is for bytes about to be read, so what a
/// decode claims never exceeds what it consumes. The golden vectors and the
/// decoder property tests pin both: the same bytes in, the same value out.
mod bounded {
    use std::fmt;
    use std::marker::PhantomData;

    use serde::de::{
        DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
    };
    use serde::Deserialize;

    /// The seed that decodes a `T` from an input of `input_len` bytes.
    pub(super) struct Root<T> {
        input_len: usize,
        value: PhantomData<fn() -> T>,
    }

    impl<T> Root<T> {
        pub(super) fn new(input_len: usize) -> Self {
            Self {
                input_len,
                value: PhantomData,
            }
        }
    }

    impl<'de, T: Deserialize<'de>> DeserializeSeed<'de> for Root<T> {
        type Value = T;

        fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<T, D::Error> {
            T::deserialize(Bounded {
                inner,
                cap: self.input_len,
            })
        }
    }

    /// A deserializer whose visitors see only bounded accesses.
    struct Bounded<D> {
        inner: D,
        /// The most elements a size hint may announce: the input's length.
        cap: usize,
    }

    /// A visitor handed only bounded deserializers and accesses.
    struct Wrap<V> {
        inner: V,
        cap: usize,
    }

    /// A seed that deserializes through [`Bounded`].
    struct Seed<S> {
        inner: S,
        cap: usize,
    }

    /// A sequence, map or enum access handing out bounded seeds.
    struct Access<A> {
        inner: A,
        cap: usize,
    }

    macro_rules! forward_deserialize {
        ($($method:ident)*) => {$(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
                self.inner.$method(Wrap { inner: visitor, cap: self.cap })
            }
        )*};
    }

    impl<'de, D: Deserializer<'de>> Deserializer<'de> for Bounded<D> {
        type Error = D::Error;

        forward_deserialize! {
            deserialize_any deserialize_bool
            deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
            deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
            deserialize_f32 deserialize_f64 deserialize_char deserialize_str deserialize_bytes
            deserialize_option deserialize_unit deserialize_seq deserialize_map
            deserialize_identifier deserialize_ignored_any
        }

        /// Borrowed, so that the announced length is checked against the
        /// input before a buffer is made; the visitor copies what it keeps.
        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_str(Wrap {
                inner: visitor,
                cap: self.cap,
            })
        }

        /// Borrowed, as [`Self::deserialize_string`].
        fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
            self.inner.deserialize_bytes(Wrap {
                inner: visitor,
                cap: self.cap,
            })
        }

        fn deserialize_unit_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.deserialize_unit_struct(name, visitor)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.deserialize_newtype_struct(name, visitor)
        }

        fn deserialize_tuple<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.deserialize_tuple(len, visitor)
        }

        fn deserialize_tuple_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.deserialize_tuple_struct(name, len, visitor)
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            name: &'static str,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.deserialize_struct(name, fields, visitor)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            name: &'static str,
            variants: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, D::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.deserialize_enum(name, variants, visitor)
        }

        fn is_human_readable(&self) -> bool {
            self.inner.is_human_readable()
        }
    }

    macro_rules! forward_visit {
        ($($method:ident($ty:ty))*) => {$(
            fn $method<E: serde::de::Error>(self, value: $ty) -> Result<V::Value, E> {
                self.inner.$method(value)
            }
        )*};
    }

    impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<V> {
        type Value = V::Value;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            self.inner.expecting(f)
        }

        forward_visit! {
            visit_bool(bool)
            visit_i8(i8) visit_i16(i16) visit_i32(i32) visit_i64(i64) visit_i128(i128)
            visit_u8(u8) visit_u16(u16) visit_u32(u32) visit_u64(u64) visit_u128(u128)
            visit_f32(f32) visit_f64(f64) visit_char(char)
            visit_str(&str) visit_borrowed_str(&'de str) visit_string(String)
            visit_bytes(&[u8]) visit_borrowed_bytes(&'de [u8]) visit_byte_buf(Vec<u8>)
        }

        fn visit_none<E: serde::de::Error>(self) -> Result<V::Value, E> {
            self.inner.visit_none()
        }

        fn visit_unit<E: serde::de::Error>(self) -> Result<V::Value, E> {
            self.inner.visit_unit()
        }

        fn visit_some<D: Deserializer<'de>>(self, inner: D) -> Result<V::Value, D::Error> {
            self.inner.visit_some(Bounded {
                inner,
                cap: self.cap,
            })
        }

        fn visit_newtype_struct<D: Deserializer<'de>>(
            self,
            inner: D,
        ) -> Result<V::Value, D::Error> {
            self.inner.visit_newtype_struct(Bounded {
                inner,
                cap: self.cap,
            })
        }

        fn visit_seq<A: SeqAccess<'de>>(self, inner: A) -> Result<V::Value, A::Error> {
            self.inner.visit_seq(Access {
                inner,
                cap: self.cap,
            })
        }

        fn visit_map<A: MapAccess<'de>>(self, inner: A) -> Result<V::Value, A::Error> {
            self.inner.visit_map(Access {
                inner,
                cap: self.cap,
            })
        }

        fn visit_enum<A: EnumAccess<'de>>(self, inner: A) -> Result<V::Value, A::Error> {
            self.inner.visit_enum(Access {
                inner,
                cap: self.cap,
            })
        }
    }

    impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
        type Value = S::Value;

        fn deserialize<D: Deserializer<'de>>(self, inner: D) -> Result<S::Value, D::Error> {
            self.inner.deserialize(Bounded {
                inner,
                cap: self.cap,
            })
        }
    }

    impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Access<A> {
        type Error = A::Error;

        fn next_element_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<Option<T::Value>, A::Error> {
            self.inner.next_element_seed(Seed {
                inner: seed,
                cap: self.cap,
            })
        }

        fn size_hint(&self) -> Option<usize> {
            self.inner.size_hint().map(|len| len.min(self.cap))
        }
    }

    impl<'de, A: MapAccess<'de>> MapAccess<'de> for Access<A> {
        type Error = A::Error;

        fn next_key_seed<K: DeserializeSeed<'de>>(
            &mut self,
            seed: K,
        ) -> Result<Option<K::Value>, A::Error> {
            self.inner.next_key_seed(Seed {
                inner: seed,
                cap: self.cap,
            })
        }

        fn next_value_seed<T: DeserializeSeed<'de>>(
            &mut self,
            seed: T,
        ) -> Result<T::Value, A::Error> {
            self.inner.next_value_seed(Seed {
                inner: seed,
                cap: self.cap,
            })
        }

        fn size_hint(&self) -> Option<usize> {
            self.inner.size_hint().map(|len| len.min(self.cap))
        }
    }

    impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Access<A> {
        type Error = A::Error;
        type Variant = Access<A::Variant>;

        fn variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<(T::Value, Access<A::Variant>), A::Error> {
            let cap = self.cap;
            let (tag, variant) = self.inner.variant_seed(Seed { inner: seed, cap })?;
            Ok((
                tag,
                Access {
                    inner: variant,
                    cap,
                },
            ))
        }
    }

    impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Access<A> {
        type Error = A::Error;

        fn unit_variant(self) -> Result<(), A::Error> {
            self.inner.unit_variant()
        }

        fn newtype_variant_seed<T: DeserializeSeed<'de>>(
            self,
            seed: T,
        ) -> Result<T::Value, A::Error> {
            self.inner.newtype_variant_seed(Seed {
                inner: seed,
                cap: self.cap,
            })
        }

        fn tuple_variant<V: Visitor<'de>>(
            self,
            len: usize,
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.tuple_variant(len, visitor)
        }

        fn struct_variant<V: Visitor<'de>>(
            self,
            fields: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, A::Error> {
            let visitor = Wrap {
                inner: visitor,
                cap: self.cap,
            };
            self.inner.struct_variant(fields, visitor)
        }
    }
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
