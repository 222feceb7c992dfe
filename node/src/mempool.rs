//! The mempool: validated transactions waiting for a block, ordered by fee
//! rate (fee per encoded byte: a block's bytes are what is scarce) and, per
//! sender, by nonce.
//!
//! A transaction enters only after it applied cleanly on top of the tip
//! state and its sender's earlier pending transactions; the same sender and
//! nonce may be replaced by a higher fee; count, bytes and age are capped.
//! The mempool is owned by the chain task and never touches the store or the
//! network.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::time::{Duration, Instant};

use protocol::state::Journal;
use protocol::validation::{apply_transaction, check_tx_stateless};
use protocol::{
    Address, Amount, ChainParams, Height, SegmentVerifier, SignedTx, State, TxError, TxId,
};

/// A fee per encoded byte, compared exactly by cross-multiplying (no
/// division, no rounding).
#[derive(Clone, Copy, Debug)]
pub struct FeeRate {
    fee: Amount,
    size: usize,
}

impl FeeRate {
    /// `fee` for `size` bytes.
    pub fn new(fee: Amount, size: usize) -> Self {
        Self { fee, size }
    }

    fn scaled(self, other: Self) -> u128 {
        u128::from(self.fee.0).saturating_mul(u128::try_from(other.size).unwrap_or(u128::MAX))
    }
}

impl Ord for FeeRate {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.scaled(*other).cmp(&other.scaled(*self))
    }
}

impl PartialOrd for FeeRate {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for FeeRate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for FeeRate {}

/// Transactions held from one sender unless told otherwise: twice geth's
/// per-account queue (64); room for a wallet that sends faster than blocks
/// come, and a bound on the transactions one admission re-applies.
pub const MAX_PER_SENDER: usize = 128;

/// Caps on what the mempool holds.
#[derive(Clone, Copy, Debug)]
pub struct MempoolLimits {
    /// Most transactions held.
    pub max_txs: usize,
    /// Most encoded bytes held.
    pub max_bytes: usize,
    /// Most transactions held from one sender. Admitting a sender's
    /// transaction applies its earlier pending ones first, so this bounds
    /// what one admission costs.
    pub max_per_sender: usize,
    /// How long a transaction may wait before it is dropped.
    pub expiry: Duration,
}

impl Default for MempoolLimits {
    fn default() -> Self {
        Self {
            max_txs: 20_000,
            max_bytes: 64 << 20,
            max_per_sender: MAX_PER_SENDER,
            expiry: Duration::from_secs(3 * 3600),
        }
    }
}

/// Why a transaction was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// The transaction breaks a consensus rule.
    #[error("invalid transaction: {0}")]
    Invalid(#[from] TxError),
    /// The same transaction is already waiting.
    #[error("transaction {0} is already in the mempool")]
    AlreadyKnown(TxId),
    /// The nonce leaves a gap after the sender's pending transactions.
    #[error("nonce {got} for {address} leaves a gap, expected at most {expected}")]
    NonceGap {
        /// The sender.
        address: Address,
        /// The next nonce the mempool can take for this sender.
        expected: u64,
        /// The nonce given.
        got: u64,
    },
    /// The sender already has as many transactions waiting as one sender
    /// may.
    #[error("{address} has {pending} transactions waiting, the most one sender may have; wait for some to be mined")]
    SenderFull {
        /// The sender.
        address: Address,
        /// Its transactions waiting.
        pending: usize,
    },
    /// A replacement must pay strictly more than the transaction it replaces.
    #[error("replacement fee {fee} must exceed the pending fee {pending}")]
    ReplacementFeeTooLow {
        /// The fee offered.
        fee: Amount,
        /// The fee of the pending transaction with the same nonce.
        pending: Amount,
    },
    /// The mempool is full of transactions paying at least as much a byte.
    #[error(
        "mempool is full: fee {fee} for {size} bytes does not beat the lowest evictable fee rate"
    )]
    Full {
        /// The fee offered.
        fee: Amount,
        /// The transaction's encoded size.
        size: usize,
    },
}

impl MempoolError {
    /// Whether the sender of this transaction should be penalised: the
    /// error proves it built a bad transaction, rather than the transaction
    /// merely being stale or late relative to our state (the same question
    /// as [`crate::chain::ChainError::is_peer_fault`] asks of a block).
    pub fn is_peer_fault(&self) -> bool {
        match self {
            Self::Invalid(err) => matches!(
                err,
                TxError::TooLarge { .. }
                    | TxError::Signature(_)
                    | TxError::FeeTooLow { .. }
                    | TxError::ZeroAmount
                    | TxError::Codec(_)
            ),
            _ => false,
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    tx: SignedTx,
    size: usize,
    added: Instant,
    seq: u64,
}

impl Entry {
    fn rate(&self) -> FeeRate {
        FeeRate::new(self.tx.body.fee, self.size)
    }
}

/// The pool of pending transactions.
#[derive(Debug, Default)]
pub struct Mempool {
    entries: HashMap<TxId, Entry>,
    by_sender: HashMap<Address, BTreeMap<u64, TxId>>,
    bytes: usize,
    seq: u64,
    limits: MempoolLimits,
}

/// What a chain context the mempool validates against.
pub struct TipContext<'a> {
    /// The chain parameters.
    pub params: &'a ChainParams,
    /// Height of the next block.
    pub next_height: Height,
    /// Replays segments for fraud proofs: [`protocol::DeferReplays`] on
    /// admission, the node's verifier when a block template is selected.
    pub verifier: &'a dyn SegmentVerifier,
}

impl Mempool {
    /// An empty mempool with `limits`.
    pub fn new(limits: MempoolLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// Encoded bytes of the transactions held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// A held transaction.
    pub fn get(&self, id: &TxId) -> Option<&SignedTx> {
        self.entries.get(id).map(|entry| &entry.tx)
    }

    /// Number of transactions held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the mempool is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `id` is waiting.
    pub fn contains(&self, id: &TxId) -> bool {
        self.entries.contains_key(id)
    }

    /// Every pending transaction id.
    pub fn ids(&self) -> Vec<TxId> {
        self.entries.keys().copied().collect()
    }

    /// The nonce the next new transaction from `address` should carry.
    pub fn next_nonce(&self, address: &Address, state: &State) -> u64 {
        let mut next = state.account(address).nonce;
        if let Some(pending) = self.by_sender.get(address) {
            while pending.contains_key(&next) {
                match next.checked_add(1) {
                    Some(n) => next = n,
                    None => break,
                }
            }
        }
        next
    }

    /// Validates `tx` against `state` (left as found) and admits it.
    pub fn insert(
        &mut self,
        tx: SignedTx,
        state: &mut State,
        ctx: &TipContext<'_>,
        now: Instant,
    ) -> Result<TxId, MempoolError> {
        let id = check_tx_stateless(&tx, ctx.params)?;
        if self.entries.contains_key(&id) {
            return Err(MempoolError::AlreadyKnown(id));
        }
        let from = tx.body.from;
        let nonce = tx.body.nonce;
        let account_nonce = state.account(&from).nonce;
        if nonce < account_nonce {
            return Err(TxError::NonceMismatch {
                address: from,
                expected: account_nonce,
                got: nonce,
            }
            .into());
        }
        let expected = self.next_nonce(&from, state);
        if nonce > expected {
            return Err(MempoolError::NonceGap {
                address: from,
                expected,
                got: nonce,
            });
        }
        let replaced = self
            .by_sender
            .get(&from)
            .and_then(|p| p.get(&nonce))
            .copied();
        let pending = self.by_sender.get(&from).map_or(0, BTreeMap::len);
        if replaced.is_none() && pending >= self.limits.max_per_sender {
            return Err(MempoolError::SenderFull {
                address: from,
                pending,
            });
        }
        // Re-applying the sender's pending transactions is the costly check
        // of admission; it runs after the cheap ones above, and the cap
        // bounds it.
        if let Some(old) = replaced.and_then(|old| self.entries.get(&old)) {
            if tx.body.fee <= old.tx.body.fee {
                return Err(MempoolError::ReplacementFeeTooLow {
                    fee: tx.body.fee,
                    pending: old.tx.body.fee,
                });
            }
        }
        self.check_applies(&tx, id, state, ctx)?;
        let size = tx.encoded_len().map_err(TxError::from)?;
        if let Some(old) = replaced {
            self.remove(&old);
        }
        self.make_room(size, FeeRate::new(tx.body.fee, size), &from)?;
        self.seq = self.seq.wrapping_add(1);
        self.bytes = self.bytes.saturating_add(size);
        self.by_sender.entry(from).or_default().insert(nonce, id);
        self.entries.insert(
            id,
            Entry {
                tx,
                size,
                added: now,
                seq: self.seq,
            },
        );
        Ok(id)
    }

    /// Applies the sender's earlier pending transactions and then `tx` to
    /// `state`, and rolls everything back.
    fn check_applies(
        &self,
        tx: &SignedTx,
        id: TxId,
        state: &mut State,
        ctx: &TipContext<'_>,
    ) -> Result<(), MempoolError> {
        let mut journal = Journal::default();
        let mut result = Ok(());
        if let Some(pending) = self.by_sender.get(&tx.body.from) {
            for (_, earlier) in pending.range(..tx.body.nonce) {
                if let Some(entry) = self.entries.get(earlier) {
                    result = apply_transaction(
                        state,
                        &mut journal,
                        &entry.tx,
                        *earlier,
                        ctx.next_height,
                        ctx.params,
                        ctx.verifier,
                    )
                    .map(|_| ());
                    if result.is_err() {
                        break;
                    }
                }
            }
        }
        if result.is_ok() {
            result = apply_transaction(
                state,
                &mut journal,
                tx,
                id,
                ctx.next_height,
                ctx.params,
                ctx.verifier,
            )
            .map(|_| ());
        }
        state.rollback(journal);
        result.map_err(MempoolError::from)
    }

    /// Evicts the last-in-line transactions of other senders paying the
    /// least a byte until `size` more bytes and one more transaction fit, as
    /// long as they pay less a byte than `rate`. A sender never evicts its
    /// own queue: that would leave a nonce gap in front of the new
    /// transaction.
    fn make_room(
        &mut self,
        size: usize,
        rate: FeeRate,
        from: &Address,
    ) -> Result<(), MempoolError> {
        while self.entries.len() >= self.limits.max_txs
            || self.bytes.saturating_add(size) > self.limits.max_bytes
        {
            let cheapest = self
                .by_sender
                .iter()
                .filter(|(sender, _)| *sender != from)
                .filter_map(|(_, pending)| pending.values().next_back())
                .filter_map(|id| self.entries.get(id).map(|e| (e.rate(), *id)))
                .min();
            match cheapest {
                Some((lowest, id)) if lowest < rate => self.remove(&id),
                _ => {
                    return Err(MempoolError::Full {
                        fee: rate.fee,
                        size,
                    })
                }
            }
        }
        Ok(())
    }

    /// Removes one transaction.
    pub fn remove(&mut self, id: &TxId) {
        if let Some(entry) = self.entries.remove(id) {
            self.bytes = self.bytes.saturating_sub(entry.size);
            let from = entry.tx.body.from;
            if let Some(pending) = self.by_sender.get_mut(&from) {
                pending.remove(&entry.tx.body.nonce);
                if pending.is_empty() {
                    self.by_sender.remove(&from);
                }
            }
        }
    }

    /// Drops what a new tip made stale: nonces already used, gaps, expired
    /// entries. Returns how many were dropped.
    pub fn prune(&mut self, state: &State, now: Instant) -> usize {
        let mut drop = Vec::new();
        for (address, pending) in &self.by_sender {
            let mut next = state.account(address).nonce;
            for (nonce, id) in pending {
                let expired = self
                    .entries
                    .get(id)
                    .is_some_and(|e| now.saturating_duration_since(e.added) > self.limits.expiry);
                if *nonce != next || expired {
                    drop.push(*id);
                } else {
                    next = next.saturating_add(1);
                }
            }
        }
        for id in &drop {
            self.remove(id);
        }
        drop.len()
    }

    /// Picks transactions for a block: highest fee rate first among each sender's
    /// next nonce, each applied to `state` (rolled back at the end) so the
    /// selection is valid as a whole. Returns them in block order with their
    /// total fee.
    pub fn select(
        &self,
        state: &mut State,
        ctx: &TipContext<'_>,
        max_txs: usize,
        max_bytes: usize,
    ) -> (Vec<SignedTx>, Amount) {
        let mut heap = BinaryHeap::new();
        let mut cursors: HashMap<Address, std::collections::btree_map::Iter<'_, u64, TxId>> =
            HashMap::new();
        for (address, pending) in &self.by_sender {
            let mut iter = pending.iter();
            if let Some((_, id)) = iter.next() {
                if let Some(entry) = self.entries.get(id) {
                    heap.push((entry.rate(), Reverse(entry.seq), *id, *address));
                }
            }
            cursors.insert(*address, iter);
        }
        let mut journal = Journal::default();
        let mut chosen = Vec::new();
        let mut bytes = 0usize;
        let mut fees = Amount::ZERO;
        while let Some((_, _, id, address)) = heap.pop() {
            if chosen.len() >= max_txs {
                break;
            }
            let Some(entry) = self.entries.get(&id) else {
                continue;
            };
            if bytes.saturating_add(entry.size) > max_bytes {
                continue;
            }
            let applied = apply_transaction(
                state,
                &mut journal,
                &entry.tx,
                id,
                ctx.next_height,
                ctx.params,
                ctx.verifier,
            );
            if applied.is_err() {
                // The rest of this sender's queue depends on this one.
                continue;
            }
            let Some(total) = fees.checked_add(entry.tx.body.fee) else {
                break;
            };
            fees = total;
            bytes = bytes.saturating_add(entry.size);
            chosen.push(entry.tx.clone());
            if let Some((_, next)) = cursors.get_mut(&address).and_then(Iterator::next) {
                if let Some(next_entry) = self.entries.get(next) {
                    heap.push((next_entry.rate(), Reverse(next_entry.seq), *next, address));
                }
            }
        }
        state.rollback(journal);
        (chosen, fees)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;
    use protocol::{TxBody, TxKind};

    use protocol::DeferReplays as NoTraining;

    const FEE_BASE: u64 = 1_000;

    fn transfer(key: &SigningKey, nonce: u64, fee: u64, amount: u64, chain_id: u32) -> SignedTx {
        TxBody {
            from: Address::ZERO,
            nonce,
            // Over the regtest minimum for a transfer's size (1 a byte,
            // about 156 bytes); relative fees are what these tests vary.
            fee: Amount(FEE_BASE + fee),
            kind: TxKind::Transfer {
                to: Address([7; 32]),
                amount: Amount(amount),
            },
        }
        .sign(key, chain_id)
        .unwrap()
    }

    #[test]
    fn fee_order_nonce_order_replacement_and_gaps() {
        let params = ChainParams::regtest();
        let mut state = params.genesis_state();
        let faucet = protocol::params::faucet_key();
        let ctx = TipContext {
            params: &params,
            next_height: Height(1),
            verifier: &NoTraining,
        };
        let mut pool = Mempool::new(MempoolLimits::default());
        let now = Instant::now();
        let a0 = transfer(&faucet, 0, 5, 10, params.chain_id);
        let a1 = transfer(&faucet, 1, 50, 10, params.chain_id);
        pool.insert(a1.clone(), &mut state, &ctx, now).unwrap_err();
        pool.insert(a0.clone(), &mut state, &ctx, now).unwrap();
        pool.insert(a1, &mut state, &ctx, now).unwrap();
        let gap = transfer(&faucet, 5, 1, 10, params.chain_id);
        assert!(matches!(
            pool.insert(gap, &mut state, &ctx, now),
            Err(MempoolError::NonceGap { expected: 2, .. })
        ));
        let cheaper = transfer(&faucet, 0, 5, 11, params.chain_id);
        assert!(matches!(
            pool.insert(cheaper, &mut state, &ctx, now),
            Err(MempoolError::ReplacementFeeTooLow { .. })
        ));
        let richer = transfer(&faucet, 0, 9, 11, params.chain_id);
        pool.insert(richer.clone(), &mut state, &ctx, now).unwrap();
        assert_eq!(pool.len(), 2);
        let (txs, fees) = pool.select(&mut state, &ctx, 100, 1 << 20);
        assert_eq!(txs.first(), Some(&richer));
        assert_eq!(fees, Amount(2 * FEE_BASE + 59));
        assert_eq!(state, params.genesis_state());
        assert_eq!(pool.next_nonce(&params.faucet, &state), 2);
    }

    #[test]
    fn one_sender_holds_at_most_its_share_and_may_still_replace() {
        let params = ChainParams::regtest();
        let mut state = params.genesis_state();
        let other = SigningKey::from_bytes(&[0x31; 32]);
        let other_address = Address::from_verifying_key(&other.verifying_key());
        state.set_account(
            &mut protocol::state::Journal::default(),
            other_address,
            protocol::Account {
                balance: Amount(1_000_000),
                ..protocol::Account::default()
            },
        );
        let ctx = TipContext {
            params: &params,
            next_height: Height(1),
            verifier: &NoTraining,
        };
        let mut pool = Mempool::new(MempoolLimits {
            max_per_sender: 3,
            ..MempoolLimits::default()
        });
        let now = Instant::now();
        let faucet = protocol::params::faucet_key();
        for nonce in 0..3 {
            pool.insert(
                transfer(&faucet, nonce, 1, 10, params.chain_id),
                &mut state,
                &ctx,
                now,
            )
            .unwrap();
        }
        match pool.insert(
            transfer(&faucet, 3, 1, 10, params.chain_id),
            &mut state,
            &ctx,
            now,
        ) {
            Err(err @ MempoolError::SenderFull { pending: 3, .. }) => {
                assert!(
                    !err.is_peer_fault(),
                    "a full queue is policy, not misbehaviour"
                );
                assert!(err.to_string().contains("3 transactions waiting"), "{err}");
            }
            other => panic!("expected SenderFull, got {other:?}"),
        }
        // A replacement takes no new slot; another sender has its own.
        pool.insert(
            transfer(&faucet, 2, 9, 10, params.chain_id),
            &mut state,
            &ctx,
            now,
        )
        .unwrap();
        let mut from_other = transfer(&other, 0, 1, 10, params.chain_id);
        from_other.body.from = other_address;
        let from_other = from_other.body.sign(&other, params.chain_id).unwrap();
        pool.insert(from_other, &mut state, &ctx, now).unwrap();
        assert_eq!(pool.len(), 4);
    }

    #[test]
    fn caps_evict_the_cheapest_and_old_entries_expire() {
        let params = ChainParams::regtest();
        let mut state = params.genesis_state();
        let ctx = TipContext {
            params: &params,
            next_height: Height(1),
            verifier: &NoTraining,
        };
        let limits = MempoolLimits {
            max_txs: 2,
            max_bytes: 1 << 20,
            max_per_sender: MAX_PER_SENDER,
            expiry: Duration::from_secs(60),
        };
        let mut pool = Mempool::new(limits);
        let now = Instant::now();
        // One sender: it may not push out its own earlier nonces.
        let faucet = protocol::params::faucet_key();
        pool.insert(
            transfer(&faucet, 0, 10, 1, params.chain_id),
            &mut state,
            &ctx,
            now,
        )
        .unwrap();
        pool.insert(
            transfer(&faucet, 1, 2, 1, params.chain_id),
            &mut state,
            &ctx,
            now,
        )
        .unwrap();
        let err = pool
            .insert(
                transfer(&faucet, 2, 1, 1, params.chain_id),
                &mut state,
                &ctx,
                now,
            )
            .unwrap_err();
        assert!(matches!(err, MempoolError::Full { .. }), "{err}");
        pool.insert(
            transfer(&faucet, 2, 5, 1, params.chain_id),
            &mut state,
            &ctx,
            now,
        )
        .unwrap_err();
        assert_eq!(pool.len(), 2);

        // Another sender's cheaper transaction is evicted for a better one.
        let other = SigningKey::from_bytes(&[4; 32]);
        let other_address = Address::from_verifying_key(&other.verifying_key());
        let mut state = State::from_entries(
            [
                (params.faucet, state.account(&params.faucet)),
                (
                    other_address,
                    protocol::Account {
                        // Amount, fee and the charge for creating the
                        // recipient's account.
                        balance: Amount(1_000_000),
                        nonce: 0,
                    },
                ),
            ],
            [],
        );
        let mut pool = Mempool::new(limits);
        pool.insert(
            transfer(&faucet, 0, 10, 1, params.chain_id),
            &mut state,
            &ctx,
            now,
        )
        .unwrap();
        let cheap = pool
            .insert(
                transfer(&other, 0, 2, 1, params.chain_id),
                &mut state,
                &ctx,
                now,
            )
            .unwrap();
        pool.insert(
            transfer(&faucet, 1, 5, 1, params.chain_id),
            &mut state,
            &ctx,
            now,
        )
        .unwrap();
        assert!(!pool.contains(&cheap));
        assert_eq!(pool.len(), 2);

        let later = now + Duration::from_secs(61);
        assert_eq!(pool.prune(&state, later), 2);
        assert!(pool.is_empty());
    }

    #[test]
    fn fee_rates_compare_per_byte_exactly() {
        // A larger fee on many more bytes pays less a byte.
        assert!(FeeRate::new(Amount(1_000), 156) > FeeRate::new(Amount(1_500), 300));
        assert_eq!(FeeRate::new(Amount(2), 4), FeeRate::new(Amount(1), 2));
        assert!(
            FeeRate::new(Amount(u64::MAX), usize::MAX)
                > FeeRate::new(Amount(u64::MAX - 1), usize::MAX)
        );
        assert!(FeeRate::new(Amount(0), 1) < FeeRate::new(Amount(1), usize::MAX));
    }

    #[test]
    fn overspend_and_bad_signature_are_refused() {
        let params = ChainParams::regtest();
        let mut state = params.genesis_state();
        let ctx = TipContext {
            params: &params,
            next_height: Height(1),
            verifier: &NoTraining,
        };
        let mut pool = Mempool::new(MempoolLimits::default());
        let poor = SigningKey::from_bytes(&[9; 32]);
        let err = pool
            .insert(
                transfer(&poor, 0, 1, 10, params.chain_id),
                &mut state,
                &ctx,
                Instant::now(),
            )
            .unwrap_err();
        assert!(matches!(
            err,
            MempoolError::Invalid(TxError::InsufficientBalance { .. })
        ));
        let mut forged = transfer(&protocol::params::faucet_key(), 0, 1, 10, params.chain_id);
        forged.body.fee = Amount(2);
        let err = pool
            .insert(forged, &mut state, &ctx, Instant::now())
            .unwrap_err();
        assert!(err.is_peer_fault(), "{err}");
        assert!(pool.is_empty());
    }
}
