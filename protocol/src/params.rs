//! Chain parameters as a value, with the `devnet` and `regtest` presets and
//! their deterministic genesis blocks.
//!
//! The devnet and regtest faucet key is derived from a public, documented
//! seed ([`FAUCET_SEED`]): anyone can spend it, which is the point of a
//! development network and the reason it must never be used elsewhere.

use ed25519_dalek::SigningKey;

use crate::asert::{AsertAnchor, AsertParams};
use crate::block::{merkle_root, Block};
use crate::codec::CodecError;
use crate::header::Header;
use crate::job::JobLimits;
use crate::pow::{CompactError, CompactTarget};
use crate::state::State;
use crate::tx::{Coinbase, Transaction};
use crate::types::{Address, Amount, BlockHash, Height};

/// The insecure, public seed of the devnet and regtest faucet key: the ASCII
/// text `gradchain devnet faucet seed 001`.
pub const FAUCET_SEED: [u8; 32] = *b"gradchain devnet faucet seed 001";

/// Base units in one coin.
pub const COIN: u64 = 100_000_000;

/// The faucet's signing key (insecure: its seed is public).
pub fn faucet_key() -> SigningKey {
    SigningKey::from_bytes(&FAUCET_SEED)
}

/// How the target moves from block to block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retarget {
    /// Every block carries the proof-of-work limit.
    Fixed,
    /// ASERT anchored at block 1: block 1 carries the genesis bits, and later
    /// blocks follow the schedule from block 1's time.
    Asert {
        /// Ideal seconds between blocks.
        spacing: u32,
        /// Seconds of drift that double or halve the target.
        half_life: u32,
    },
}

/// Everything that makes one chain different from another.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainParams {
    /// Preset name.
    pub name: &'static str,
    /// Mixed into every signature, so transactions never replay across chains.
    pub chain_id: u32,
    /// The block version this chain accepts.
    pub block_version: u32,
    /// Genesis time, unix seconds.
    pub genesis_time: u32,
    /// The easiest target a block may carry.
    pub pow_limit: CompactTarget,
    /// The target of genesis and of block 1.
    pub genesis_bits: CompactTarget,
    /// How the target moves.
    pub retarget: Retarget,
    /// How far past the local clock a block's time may be, in seconds.
    pub max_future_drift: u32,
    /// Coinbase subsidy at height 1.
    pub initial_subsidy: Amount,
    /// Blocks between subsidy halvings.
    pub halving_interval: u64,
    /// Smallest fee a transaction may pay per byte of its encoding: what a
    /// transaction's share of every node's block log and bandwidth costs.
    pub min_fee_rate: Amount,
    /// Burned by a transaction that creates a live-state entry (a transfer
    /// to an address without an account, or a posted job). A transaction's
    /// bytes are written once, to the block log; an entry is kept, hashed
    /// and served by every node for as long as it lives, so it is priced
    /// on its own. Burned rather than paid to the miner, so that a miner
    /// filling the state pays it like anyone else.
    pub entry_charge: Amount,
    /// Blocks a settled (fulfilled or expired) job stays in the live state
    /// before it is pruned; its history stays in the blocks.
    pub job_retention: u64,
    /// Largest encoded block.
    pub max_block_bytes: usize,
    /// Most transactions in a block, coinbase included.
    pub max_block_txs: usize,
    /// Largest encoded transaction.
    pub max_tx_bytes: usize,
    /// The pre-funded faucet account.
    pub faucet: Address,
    /// The faucet's genesis balance.
    pub faucet_premine: Amount,
    /// Bounds on a single job.
    pub job_limits: JobLimits,
    /// Most fraud proofs in one block: with the per-segment cost bound, what
    /// bounds the replay work a block can demand of every node.
    pub max_block_fraud_proofs: usize,
    /// What a challenger escrows with a fraud proof; burned when the replay
    /// agrees with the worker, so that no replay is free to ask for.
    pub fraud_proof_bond: Amount,
    /// Most blocks between posting a job and its expiry.
    pub max_job_lifetime: u64,
}

impl ChainParams {
    /// A development network: a block every few seconds on a laptop, ASERT
    /// with a short half-life, and a pre-funded faucet.
    pub fn devnet() -> Self {
        Self {
            name: "devnet",
            chain_id: 0x6465_7601,
            // 2026-01-01T00:00:00Z.
            genesis_time: 1_767_225_600,
            pow_limit: CompactTarget(0x207f_ffff),
            // About 1.8e8 hashes a block: ~5 s for two SHA-NI miners on two
            // cores; ASERT takes it from there.
            genesis_bits: CompactTarget(0x1d18_0000),
            retarget: Retarget::Asert {
                spacing: 5,
                half_life: 120,
            },
            max_future_drift: 60,
            ..Self::common()
        }
    }

    /// Regression testing: trivial proof of work, no retargeting.
    pub fn regtest() -> Self {
        Self {
            name: "regtest",
            chain_id: 0x7265_6701,
            // 2026-01-01T00:00:00Z.
            genesis_time: 1_767_225_600,
            pow_limit: CompactTarget(0x207f_ffff),
            genesis_bits: CompactTarget(0x207f_ffff),
            retarget: Retarget::Fixed,
            max_future_drift: 7200,
            job_limits: JobLimits {
                // Regtest mines as fast as it is asked to: a short window
                // keeps tests quick.
                min_challenge_window: 4,
                ..Self::common().job_limits
            },
            ..Self::common()
        }
    }

    /// A preset by name.
    pub fn by_name(name: &str) -> Option<Self> {
        match name {
            "devnet" => Some(Self::devnet()),
            "regtest" => Some(Self::regtest()),
            _ => None,
        }
    }

    fn common() -> Self {
        Self {
            name: "",
            chain_id: 0,
            block_version: 1,
            genesis_time: 0,
            pow_limit: CompactTarget(0x207f_ffff),
            genesis_bits: CompactTarget(0x207f_ffff),
            retarget: Retarget::Fixed,
            max_future_drift: 7200,
            initial_subsidy: Amount(50u64.saturating_mul(COIN)),
            halving_interval: 210_000,
            // One base unit a byte: a 150-byte transfer pays 150, a block
            // full of transactions at the minimum pays about 0.01 coin.
            min_fee_rate: Amount(1),
            // 0.001 coin: a thousand times the per-byte rate, since an
            // account entry (about 48 bytes) lives forever and a job entry
            // up to `max_job_lifetime + job_retention` blocks.
            entry_charge: Amount(100_000),
            // About four hours of 5 s devnet blocks: long enough for
            // explorers and the worker to read the outcome from the state.
            job_retention: 2_880,
            max_block_bytes: 1 << 20,
            max_block_txs: 10_000,
            max_tx_bytes: 64 << 10,
            faucet: Address::from_verifying_key(&faucet_key().verifying_key()),
            faucet_premine: Amount(1_000_000u64.saturating_mul(COIN)),
            job_limits: JobLimits {
                max_hidden_layers: 8,
                max_width: 1024,
                max_features: 4096,
                max_rows: 200_000,
                max_classes: 1000,
                max_epochs: 1000,
                max_batch: 65_536,
                // About a minute of training on one core of the reference
                // machine (~3e10 units/s with the reproducible engine): ten
                // times the bound of full replay, since nodes now replay
                // segments, not jobs.
                max_cost: 2_000_000_000_000,
                // About one second of replay: a job at `max_cost` needs at
                // least 64 segments.
                max_segment_cost: 32_000_000_000,
                min_bond: Amount(10_000),
                // Long enough for an auditor to replay a whole job at
                // `max_cost` (about a minute) on a devnet of 5 s blocks,
                // with room to get a fraud proof mined.
                min_challenge_window: 24,
                max_challenge_window: 100_000,
            },
            max_block_fraud_proofs: 4,
            fraud_proof_bond: Amount(100_000),
            max_job_lifetime: 100_000,
        }
    }

    /// The least fee a transaction of `size` encoded bytes may pay; `None`
    /// when the product overflows (no fee can pay it).
    pub fn min_fee(&self, size: usize) -> Option<Amount> {
        let size = u64::try_from(size).ok()?;
        self.min_fee_rate.0.checked_mul(size).map(Amount)
    }

    /// The coinbase subsidy at `height`: halves every `halving_interval`
    /// blocks; nothing at genesis.
    pub fn subsidy(&self, height: Height) -> Amount {
        if height == Height::GENESIS {
            return Amount::ZERO;
        }
        let halvings = height.0.checked_div(self.halving_interval).unwrap_or(0);
        match u32::try_from(halvings) {
            Ok(shift) if shift < 64 => {
                Amount(self.initial_subsidy.0.checked_shr(shift).unwrap_or(0))
            }
            _ => Amount::ZERO,
        }
    }

    /// The state before any block: the faucet holds the premine.
    pub fn genesis_state(&self) -> State {
        let mut state = State::default();
        state.credit_genesis(self.faucet, self.faucet_premine);
        state
    }

    /// The genesis block: a coinbase minting the faucet premine, committing to
    /// [`Self::genesis_state`]. Its proof of work is not checked.
    pub fn genesis_block(&self) -> Result<Block, CodecError> {
        let coinbase = Transaction::Coinbase(Coinbase {
            height: Height::GENESIS,
            miner: self.faucet,
            amount: self.faucet_premine,
        });
        let header = Header {
            version: self.block_version,
            prev: BlockHash::ZERO,
            merkle_root: merkle_root(&[coinbase.id()?]),
            state_root: self.genesis_state().root()?,
            time: self.genesis_time,
            bits: self.genesis_bits,
            nonce: 0,
        };
        Ok(Block {
            header,
            txs: vec![coinbase],
        })
    }

    /// The ASERT schedule parameters, when this chain retargets.
    pub fn asert(&self) -> Result<Option<AsertParams>, CompactError> {
        match self.retarget {
            Retarget::Fixed => Ok(None),
            Retarget::Asert { spacing, half_life } => Ok(Some(AsertParams {
                spacing: i64::from(spacing),
                half_life: i64::from(half_life),
                pow_limit: self.pow_limit.to_target()?,
            })),
        }
    }

    /// The ASERT anchor: block 1, whose parent time is taken as its own time
    /// minus one spacing so the schedule starts on time whenever the chain is
    /// first mined.
    pub fn asert_anchor(&self, block1_time: u32) -> Result<AsertAnchor, CompactError> {
        let spacing = match self.retarget {
            Retarget::Asert { spacing, .. } => i64::from(spacing),
            Retarget::Fixed => 0,
        };
        Ok(AsertAnchor {
            height: 1,
            parent_time: i64::from(block1_time).saturating_sub(spacing),
            target: self.genesis_bits.to_target()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn genesis_is_deterministic_and_presets_differ() {
        let devnet = ChainParams::devnet();
        let a = devnet.genesis_block().unwrap();
        let b = ChainParams::devnet().genesis_block().unwrap();
        assert_eq!(a.hash(), b.hash());
        let regtest = ChainParams::regtest().genesis_block().unwrap();
        assert_ne!(a.hash(), regtest.hash());
        assert_ne!(devnet.chain_id, ChainParams::regtest().chain_id);
        assert_eq!(a.header.state_root, devnet.genesis_state().root().unwrap());
    }

    #[test]
    fn subsidy_halves() {
        let params = ChainParams::regtest();
        assert_eq!(params.subsidy(Height(0)), Amount::ZERO);
        assert_eq!(params.subsidy(Height(1)), params.initial_subsidy);
        assert_eq!(
            params.subsidy(Height(210_000)).0,
            params.initial_subsidy.0 / 2
        );
        assert_eq!(params.subsidy(Height(210_000 * 64)), Amount::ZERO);
        assert_eq!(params.subsidy(Height(u64::MAX)), Amount::ZERO);
    }

    #[test]
    fn faucet_address_comes_from_the_documented_seed() {
        assert_eq!(&FAUCET_SEED, b"gradchain devnet faucet seed 001");
        assert_eq!(
            ChainParams::devnet().faucet,
            Address::from_verifying_key(&faucet_key().verifying_key())
        );
    }
}
