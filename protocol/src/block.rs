//! Blocks and the merkle root of their transaction ids.
//!
//! The tree tags leaves and inner nodes differently and promotes an odd last
//! node unchanged instead of pairing it with itself, so two different
//! transaction lists never share a root (Bitcoin's duplicate-last-node rule
//! allowed that, CVE-2012-2459).

use serde::{Deserialize, Serialize};

use crate::codec::{self, CodecError};
use crate::hash::sha256d_parts;
use crate::header::{Header, SealedHeader};
use crate::tx::Transaction;
use crate::types::{BlockHash, MerkleRoot, TxId};

/// A block: a header and its transactions, coinbase first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Block {
    /// The header.
    pub header: Header,
    /// The transactions; the first is the coinbase.
    pub txs: Vec<Transaction>,
}

impl Block {
    /// The block hash.
    pub fn hash(&self) -> BlockHash {
        self.header.hash()
    }

    /// The sealed header.
    pub fn sealed_header(&self) -> SealedHeader {
        self.header.seal()
    }

    /// Ids of the transactions, in block order.
    pub fn tx_ids(&self) -> Result<Vec<TxId>, CodecError> {
        self.txs.iter().map(Transaction::id).collect()
    }

    /// The canonical encoding.
    pub fn encode(&self) -> Result<Vec<u8>, CodecError> {
        codec::encode(self)
    }
}

/// The merkle root of `ids`.
pub fn merkle_root(ids: &[TxId]) -> MerkleRoot {
    let mut level: Vec<[u8; 32]> = ids
        .iter()
        .map(|id| sha256d_parts(&[&[0u8], id.as_bytes()]))
        .collect();
    if level.is_empty() {
        return MerkleRoot(sha256d_parts(&[&[2u8]]));
    }
    while level.len() > 1 {
        level = level
            .chunks(2)
            .map(|pair| match pair {
                [left, right] => sha256d_parts(&[&[1u8], left, right]),
                [single] => *single,
                _ => [0u8; 32],
            })
            .collect();
    }
    MerkleRoot(level.first().copied().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u8) -> Vec<TxId> {
        (0..n).map(|i| TxId([i; 32])).collect()
    }

    #[test]
    fn root_commits_to_order_and_count() {
        assert_ne!(merkle_root(&ids(3)), merkle_root(&ids(4)));
        let mut swapped = ids(4);
        swapped.swap(0, 1);
        assert_ne!(merkle_root(&ids(4)), merkle_root(&swapped));
        // Duplicating the odd last id gives a different root.
        let mut dup = ids(3);
        dup.push(TxId([2; 32]));
        assert_ne!(merkle_root(&ids(3)), merkle_root(&dup));
        assert_ne!(merkle_root(&[]), merkle_root(&ids(1)));
    }
}
