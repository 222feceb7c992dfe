//! Blocks as gossip and sync deliver them: decode, then encode gives the
//! same bytes; the header is the block's first 116 bytes.
#![no_main]

use gradchain_fuzz::canonical;
use libfuzzer_sys::fuzz_target;
use protocol::codec::MAX_DECODE_BYTES;
use protocol::{Block, Header, HEADER_SIZE};

fuzz_target!(|data: &[u8]| {
    if let Some(block) = canonical::<Block>(data, MAX_DECODE_BYTES) {
        assert_eq!(block.encode().expect("a decoded block encodes"), data);
        let header = Header::from_bytes(&data[..HEADER_SIZE]).expect("the first 116 bytes");
        assert_eq!(header, block.header);
        let _ = block.tx_ids();
    }
});
