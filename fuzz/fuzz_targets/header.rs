//! Headers as sync answers carry them: exactly 116 bytes, every one of
//! which is a header that writes back to the same bytes.
#![no_main]

use gradchain_fuzz::canonical;
use libfuzzer_sys::fuzz_target;
use protocol::codec::MAX_DECODE_BYTES;
use protocol::{Header, HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    let fixed = Header::from_bytes(data);
    assert_eq!(fixed.is_ok(), data.len() == HEADER_SIZE);
    if let Ok(header) = fixed {
        assert_eq!(header.to_bytes()[..], data[..]);
        let _ = header.hash();
    }
    let decoded = canonical::<Header>(data, MAX_DECODE_BYTES);
    assert_eq!(decoded.is_some(), data.len() == HEADER_SIZE);
});
