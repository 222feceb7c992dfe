//! Verify each signature once, and the rest on every core.
//!
//! A transaction's signature is checked when the mempool admits it; a block
//! carrying it later does not check it again. The record of what was
//! verified is keyed by transaction id, which hashes the whole signed
//! encoding, signature included, so an id names exactly one (body,
//! signature) pair; the node runs one chain, so the chain id the signature
//! covers is fixed too. The signatures of a block that were not seen
//! before are verified across a few threads before the block is applied.
//!
//! Every path uses one rule, [`protocol::SignedTx::verify_signature`]
//! (strict ed25519): no batch verification, whose equation accepts
//! signatures the strict check refuses. What this module reports verified
//! is handed to [`protocol::validation::apply_checked_block`], which
//! verifies the rest itself in block order, so a block is valid or invalid,
//! with the same error, whichever path ran.

use std::collections::{HashSet, VecDeque};

use protocol::validation::CheckedBlock;
use protocol::{Block, ChainParams, SignedTx, Transaction, TxId};

/// How many verified transaction ids are remembered: the mempool's default
/// capacity (20,000) twice over, so that every transaction a block can take
/// from a full mempool is still known when the block comes, at about 100
/// bytes an entry (a few MB). When full, the oldest is forgotten; a
/// forgotten signature is simply verified again.
pub const SIGNATURE_CACHE_CAPACITY: usize = 40_000;

/// Below this many unverified signatures a block is verified on the chain
/// thread: starting threads costs more than a few signatures (each about
/// 30 µs).
const MIN_PARALLEL: usize = 16;

/// Transaction ids whose signatures verified, bounded, oldest forgotten
/// first.
#[derive(Debug)]
pub struct SignatureCache {
    seen: HashSet<TxId>,
    order: VecDeque<TxId>,
    capacity: usize,
}

impl SignatureCache {
    /// An empty cache of `capacity` ids (0 remembers nothing).
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// Records that `id`'s signature verified.
    pub fn insert(&mut self, id: TxId) {
        if self.capacity == 0 || !self.seen.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
    }

    /// Whether `id`'s signature verified.
    pub fn contains(&self, id: &TxId) -> bool {
        self.seen.contains(id)
    }

    /// How many ids are remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Which of `block`'s transactions (by index) have a verified signature:
/// those in `cache`, and those verified here on up to `threads` threads
/// (which are then recorded in `cache`). A signature that fails is left
/// unmarked; applying the block verifies it again in order and reports it.
/// Who pays: the block's proof of work was checked before this runs, so
/// the work spent here is bounded by what the sender spent on the block.
pub fn verify_block(
    block: &Block,
    params: &ChainParams,
    cache: &mut SignatureCache,
    threads: usize,
) -> Vec<bool> {
    let ids: Vec<Option<TxId>> = block.txs.iter().map(|tx| tx.id().ok()).collect();
    verify_with_ids(block, &ids, params, cache, threads)
}

/// [`verify_block`] for a block whose body was checked: its transaction
/// ids are not computed again.
pub fn verify_checked_block(
    checked: &CheckedBlock,
    params: &ChainParams,
    cache: &mut SignatureCache,
    threads: usize,
) -> Vec<bool> {
    let ids: Vec<Option<TxId>> = checked.ids().iter().copied().map(Some).collect();
    verify_with_ids(checked.block(), &ids, params, cache, threads)
}

fn verify_with_ids(
    block: &Block,
    ids: &[Option<TxId>],
    params: &ChainParams,
    cache: &mut SignatureCache,
    threads: usize,
) -> Vec<bool> {
    let mut verified = vec![false; block.txs.len()];
    let mut pending: Vec<(usize, TxId, &SignedTx)> = Vec::new();
    for (index, tx) in block.txs.iter().enumerate() {
        let Transaction::Signed(signed) = tx else {
            continue;
        };
        let Some(id) = ids.get(index).copied().flatten() else {
            continue;
        };
        if cache.contains(&id) {
            if let Some(slot) = verified.get_mut(index) {
                *slot = true;
            }
        } else {
            pending.push((index, id, signed));
        }
    }
    for (index, id, ok) in verify_all(&pending, params.chain_id, threads) {
        if ok {
            if let Some(slot) = verified.get_mut(index) {
                *slot = true;
            }
            cache.insert(id);
        }
    }
    verified
}

/// Verifies every signature in `pending`, split into contiguous chunks, one
/// per thread (each chunk's results come back in order).
fn verify_all(
    pending: &[(usize, TxId, &SignedTx)],
    chain_id: u32,
    threads: usize,
) -> Vec<(usize, TxId, bool)> {
    let check = |chunk: &[(usize, TxId, &SignedTx)]| -> Vec<(usize, TxId, bool)> {
        chunk
            .iter()
            .map(|(index, id, tx)| (*index, *id, tx.verify_signature(chain_id).is_ok()))
            .collect()
    };
    let threads = threads
        .max(1)
        .min(pending.len().div_ceil(MIN_PARALLEL / 2).max(1));
    if threads <= 1 || pending.len() < MIN_PARALLEL {
        return check(pending);
    }
    let chunk = pending.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = pending
            .chunks(chunk)
            .map(|part| scope.spawn(move || check(part)))
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| {
                // A panicking verifier thread verified nothing: its
                // signatures are left to the in-order check.
                handle.join().unwrap_or_default()
            })
            .collect()
    })
}

/// The cores this machine offers, for the default thread count.
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::params::faucet_key;
    use protocol::{Address, Amount, Coinbase, Height, TxBody, TxKind};

    fn block(count: u64, bad: &[usize]) -> Block {
        let params = ChainParams::regtest();
        let mut txs = vec![Transaction::Coinbase(Coinbase {
            height: Height(1),
            miner: Address::ZERO,
            amount: Amount(1),
        })];
        for nonce in 0..count {
            let mut tx = TxBody {
                from: Address::ZERO,
                nonce,
                fee: Amount(500),
                kind: TxKind::Transfer {
                    to: Address([3; 32]),
                    amount: Amount(1),
                },
            }
            .sign(&faucet_key(), params.chain_id)
            .unwrap();
            if bad.contains(&txs.len()) {
                tx.signature.0[0] ^= 1;
            }
            txs.push(Transaction::Signed(tx));
        }
        let genesis = params.genesis_block().unwrap();
        Block {
            header: genesis.header,
            txs,
        }
    }

    #[test]
    fn every_thread_count_marks_the_same_signatures_as_the_strict_check() {
        let params = ChainParams::regtest();
        let block = block(50, &[1, 17, 33, 50]);
        let strict: Vec<bool> = block
            .txs
            .iter()
            .map(|tx| match tx {
                Transaction::Signed(signed) => signed.verify_signature(params.chain_id).is_ok(),
                Transaction::Coinbase(_) => false,
            })
            .collect();
        assert_eq!(strict.iter().filter(|ok| !**ok).count(), 5);
        let mut linked = block.clone();
        linked.header.merkle_root = protocol::merkle_root(&linked.tx_ids().unwrap());
        let checked = CheckedBlock::check(linked, Height(1), &params).unwrap();
        for threads in [1, 2, 3, 7, 16] {
            let mut cache = SignatureCache::new(SIGNATURE_CACHE_CAPACITY);
            assert_eq!(
                verify_block(&block, &params, &mut cache, threads),
                strict,
                "{threads} threads"
            );
            assert_eq!(cache.len(), 46, "only good signatures are remembered");
            let mut cache = SignatureCache::new(SIGNATURE_CACHE_CAPACITY);
            assert_eq!(
                verify_checked_block(&checked, &params, &mut cache, threads),
                strict,
                "{threads} threads, ids from the body check"
            );
            assert_eq!(cache.len(), 46);
        }
    }

    #[test]
    fn edge_cases_the_lenient_check_accepts_are_refused_on_every_path() {
        // The identity as public key and as R, with S = 0: the cofactorless
        // lenient equation [S]B = R + [k]A holds for any message, so
        // `verify` accepts it; `verify_strict` refuses a small-order key.
        let params = ChainParams::regtest();
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let body = TxBody {
            from: Address(identity),
            nonce: 0,
            fee: Amount(500),
            kind: TxKind::Transfer {
                to: Address([3; 32]),
                amount: Amount(1),
            },
        };
        let mut signature = [0u8; 64];
        signature[..32].copy_from_slice(&identity);
        let weak = SignedTx {
            body: body.clone(),
            signature: protocol::Signature(signature),
        };
        let message = body.signing_bytes(params.chain_id).unwrap();
        let key = ed25519_dalek::VerifyingKey::from_bytes(&identity).unwrap();
        let lenient = ed25519_dalek::Signature::from_bytes(&signature);
        use ed25519_dalek::Verifier as _;
        assert!(
            key.verify(&message, &lenient).is_ok(),
            "the lenient check accepts it"
        );
        // A non-canonical S (at least the group order): refused by both.
        let mut high_s = block(1, &[]);
        if let Transaction::Signed(tx) = &mut high_s.txs[1] {
            tx.signature.0[63] |= 0xf0;
        }
        let mut edge = block(20, &[]);
        edge.txs[5] = Transaction::Signed(weak);
        edge.txs[9] = high_s.txs[1].clone();
        for threads in [1, 2, 7] {
            let mut cache = SignatureCache::new(SIGNATURE_CACHE_CAPACITY);
            let marks = verify_block(&edge, &params, &mut cache, threads);
            assert!(!marks[5] && !marks[9], "{threads} threads");
            assert_eq!(marks.iter().filter(|ok| **ok).count(), 18);
        }
    }

    #[test]
    fn a_remembered_signature_is_not_verified_again_and_the_cache_is_bounded() {
        let params = ChainParams::regtest();
        let good = block(3, &[]);
        let mut cache = SignatureCache::new(2);
        // Remember a forged transaction's id as if it had verified: the
        // cache is trusted, so it comes back marked (which is why only the
        // node itself ever writes to it).
        let forged = block(3, &[1, 2, 3]);
        let ids: Vec<TxId> = forged
            .txs
            .iter()
            .skip(1)
            .map(|tx| tx.id().unwrap())
            .collect();
        cache.insert(ids[0]);
        let marks = verify_block(&forged, &params, &mut cache, 1);
        assert_eq!(marks, vec![false, true, false, false]);
        // Capacity 2: the oldest is forgotten first.
        let mut cache = SignatureCache::new(2);
        verify_block(&good, &params, &mut cache, 1);
        assert_eq!(cache.len(), 2);
        let good_ids: Vec<TxId> = good.txs.iter().skip(1).map(|tx| tx.id().unwrap()).collect();
        assert!(!cache.contains(&good_ids[0]));
        assert!(cache.contains(&good_ids[1]) && cache.contains(&good_ids[2]));
        let mut off = SignatureCache::new(0);
        verify_block(&good, &params, &mut off, 1);
        assert!(off.is_empty());
    }
}
