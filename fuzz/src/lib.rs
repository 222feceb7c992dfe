//! Helpers shared by the fuzz targets: the round-trip property every
//! canonical decoder must hold, and a reader that hands its bytes over in
//! pieces of a chosen size.
//!
//! Every target asserts a property, not only the absence of panics; a
//! target must never accept an input the node or trainer would refuse, nor
//! the reverse, so they call the same public entry points the node and
//! trainer call.

use std::io::{self, Read};

use protocol::codec::{self, CodecError};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Decodes `data` as a `T` under `max` through the canonical codec. A
/// value that decodes must encode to exactly `data` (one value, one
/// encoding); a refusal must be one of the codec's typed errors, and say
/// the truth about the input's length.
pub fn canonical<T: Serialize + DeserializeOwned>(data: &[u8], max: usize) -> Option<T> {
    match codec::decode_with_limit::<T>(data, max) {
        Ok(value) => {
            let again = codec::encode(&value).expect("a decoded value encodes");
            assert_eq!(again, data, "a decoded value re-encodes to other bytes");
            Some(value)
        }
        Err(CodecError::TooLarge { len, max: cap }) => {
            assert!(len == data.len() && len > cap);
            None
        }
        Err(CodecError::TrailingBytes { consumed, len }) => {
            assert!(len == data.len() && consumed < len);
            let head = data.get(..consumed).expect("consumed is within the input");
            assert!(
                codec::decode_with_limit::<T>(head, max).is_ok(),
                "the bytes before the leftovers are a whole value"
            );
            None
        }
        Err(CodecError::Malformed(message)) => {
            assert!(!message.is_empty());
            None
        }
        Err(err @ CodecError::Encode(_)) => panic!("decoding reported {err}"),
    }
}

/// A reader that hands over at most `step` bytes a call.
pub struct Pieces<'a> {
    bytes: &'a [u8],
    step: usize,
}

impl<'a> Pieces<'a> {
    /// Hands `bytes` over `step` (at least 1) at a time.
    pub fn new(bytes: &'a [u8], step: usize) -> Self {
        Self {
            bytes,
            step: step.max(1),
        }
    }
}

impl Read for Pieces<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.step.min(buf.len()).min(self.bytes.len());
        let (head, rest) = self.bytes.split_at(n);
        buf[..n].copy_from_slice(head);
        self.bytes = rest;
        Ok(n)
    }
}
