//! Transactions of every kind, as gossip, the mempool and the HTTP API
//! receive them: a signed transaction (any `TxKind`, fraud claims included)
//! and the coinbase-or-signed enum a block holds. Decode, then encode gives
//! the same bytes, and a signed transaction's id and signature check never
//! panic.
#![no_main]

use gradchain_fuzz::canonical;
use libfuzzer_sys::fuzz_target;
use protocol::codec::MAX_DECODE_BYTES;
use protocol::{SignedTx, Transaction};

fuzz_target!(|data: &[u8]| {
    if let Some(tx) = canonical::<SignedTx>(data, MAX_DECODE_BYTES) {
        let _ = tx.id();
        let _ = tx.verify_signature(0);
        // The same bytes behind the `Signed` tag are that transaction.
        let mut tagged = 1u32.to_le_bytes().to_vec();
        tagged.extend_from_slice(data);
        let wrapped = canonical::<Transaction>(&tagged, MAX_DECODE_BYTES);
        assert_eq!(wrapped, Some(Transaction::Signed(tx)));
    }
    canonical::<Transaction>(data, MAX_DECODE_BYTES);
});
