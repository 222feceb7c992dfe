//! The consensus rules, as free functions over values with typed errors.
//!
//! - Headers: [`check_header`] (version, parent, target bits, proof of work,
//!   time against median-time-past and the future-drift bound), with
//!   [`expected_bits`] and [`median_time_past`].
//! - Transactions: [`check_tx_stateless`] (size, fee, signature, job spec),
//!   then [`apply_transaction`] against a state (nonce, balance, the job
//!   contract). Results are optimistic: a `SubmitResult` is admitted on
//!   cheap checks alone and escrows a bond; only a `FraudProof` replays,
//!   one segment, through a [`SegmentVerifier`], after every cheap check.
//! - Blocks: [`check_block_body`] (structure and merkle root), then
//!   [`apply_block`] (settlements, expiries, every transaction, the
//!   fraud-proof bound, the coinbase bound, the state root), reversed
//!   exactly by [`undo_block`].
//!
//! A function that fails leaves the state as it found it.

use std::collections::BTreeSet;

use crate::asert::{self, AsertError};
use crate::block::{merkle_root, Block};
use crate::codec::CodecError;
use crate::header::SealedHeader;
use crate::job::{
    check_acceptance, AcceptanceError, FinalOutcome, JobSpecError, Judged, SegmentVerifier,
    VerifyError,
};
use crate::params::ChainParams;
use crate::pow::{CompactError, CompactTarget, Target};
use crate::segments::{segments_root, verify_path, SegmentLeaf, MAX_PATH_LEN, MAX_SEGMENTS};
use crate::state::{
    BlockUndo, Challenge, ChallengeOutcome, JobRecord, JobStatus, Journal, State, BURN_ADDRESS,
};
use crate::tx::{FraudClaim, OpenedLeaf, SignatureError, SignedTx, Transaction, TxKind};
use crate::types::{Address, Amount, BlockHash, Height, JobId, MerkleRoot, StateRoot, TxId};

/// Blocks whose times form the median time past.
pub const MEDIAN_TIME_SPAN: usize = 11;

/// Why a header is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// The version is not this chain's.
    #[error("block version {got}, expected {expected}")]
    Version {
        /// The header's version.
        got: u32,
        /// This chain's.
        expected: u32,
    },
    /// The header does not build on the expected parent.
    #[error("previous block {got}, expected {expected}")]
    WrongParent {
        /// The expected parent.
        expected: BlockHash,
        /// The header's parent.
        got: BlockHash,
    },
    /// The bits are not what the difficulty schedule requires.
    #[error("target bits {got}, expected {expected}")]
    WrongTargetBits {
        /// Required bits.
        expected: CompactTarget,
        /// The header's bits.
        got: CompactTarget,
    },
    /// The bits do not encode a valid target.
    #[error("invalid target bits: {0}")]
    InvalidBits(#[from] CompactError),
    /// The target is easier than the proof-of-work limit.
    #[error("target {target} is easier than the limit {limit}")]
    TargetAboveLimit {
        /// The header's target.
        target: Target,
        /// The chain's limit.
        limit: Target,
    },
    /// The hash is above the target.
    #[error("block hash {hash} is above its target {target}")]
    BadProofOfWork {
        /// The header's hash.
        hash: BlockHash,
        /// Its target.
        target: Target,
    },
    /// The time is not after the median of the last 11 blocks.
    #[error("block time {time} is not after the median time past {median_time_past}")]
    TimeTooOld {
        /// The header's time.
        time: u32,
        /// The median time past.
        median_time_past: u32,
    },
    /// The time is too far ahead of the local clock.
    #[error(
        "block time {time} is more than the allowed drift ahead of now: expected at most {max}"
    )]
    TimeTooNew {
        /// The header's time.
        time: u32,
        /// Local time plus the drift bound.
        max: u32,
    },
    /// The difficulty schedule needs block 1's time and none was given.
    #[error("the ASERT anchor (block 1's time) is needed above height 1")]
    MissingAnchor,
    /// The difficulty schedule could not be computed.
    #[error("difficulty schedule: {0}")]
    Asert(#[from] AsertError),
}

/// Why a job-contract rule rejects a transaction.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The spec is invalid.
    #[error("invalid job spec: {0}")]
    InvalidSpec(#[from] JobSpecError),
    /// The bounty is zero.
    #[error("bounty is 0, expected a positive amount")]
    ZeroBounty,
    /// The expiry height is not in the allowed window.
    #[error("expiry height {expires_at} is outside {min}..={max}")]
    BadExpiry {
        /// Requested expiry.
        expires_at: Height,
        /// Earliest allowed.
        min: Height,
        /// Latest allowed.
        max: Height,
    },
    /// The poster cannot pay bounty, fee and the job's entry charge.
    #[error(
        "bounty {bounty} plus fee {fee} plus entry charge {charge} exceeds the poster's balance {balance}"
    )]
    BountyUnaffordable {
        /// The bounty.
        bounty: Amount,
        /// The fee.
        fee: Amount,
        /// The entry charge ([`ChainParams::entry_charge`]).
        charge: Amount,
        /// The poster's balance.
        balance: Amount,
    },
    /// No job has this id.
    #[error("unknown job {0}")]
    UnknownJob(JobId),
    /// The job expired before this result.
    #[error("job {job} expired at height {expires_at}")]
    Expired {
        /// The job.
        job: JobId,
        /// Its expiry height.
        expires_at: Height,
    },
    /// The job was already paid.
    #[error("job {job} was already fulfilled at height {height}")]
    AlreadyFulfilled {
        /// The job.
        job: JobId,
        /// Where it was fulfilled.
        height: Height,
    },
    /// The job already has a result waiting out its challenge window.
    #[error("job {job} already has a pending result, settling at height {settles_at}")]
    AlreadyPending {
        /// The job.
        job: JobId,
        /// When the pending result settles.
        settles_at: Height,
    },
    /// A fraud proof against a job with no pending result.
    #[error("job {job} has no pending result to challenge")]
    NotPending {
        /// The job.
        job: JobId,
    },
    /// The worker or challenger cannot escrow the bond.
    #[error("bond {bond} plus fee {fee} exceeds the balance {balance} of {address}")]
    BondUnaffordable {
        /// Who must pay.
        address: Address,
        /// The bond.
        bond: Amount,
        /// The fee.
        fee: Amount,
        /// The balance.
        balance: Amount,
    },
    /// A result with the wrong number of segment leaves.
    #[error("result carries {got} segment leaves, expected {expected} (segments + 1)")]
    LeafCount {
        /// Leaves carried.
        got: usize,
        /// Leaves the job needs.
        expected: usize,
    },
    /// The leaves do not hash to the result's segments root.
    #[error("segment leaves hash to {computed}, but the result commits to {claimed}")]
    SegmentsRoot {
        /// The root of the carried leaves.
        computed: crate::types::Digest,
        /// The result's root.
        claimed: crate::types::Digest,
    },
    /// A fraud proof's segment index is outside `1..=segments`.
    #[error("fraud proof opens segment {index}, expected 1..={segments}")]
    SegmentIndex {
        /// The index.
        index: u32,
        /// The job's segments.
        segments: u32,
    },
    /// A Merkle path longer than any tree of segment leaves needs.
    #[error("Merkle path of {len} nodes, expected at most {max}")]
    PathTooLong {
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// A fraud proof's leaf does not open the pending result's root.
    #[error("leaf {index} and its path do not lead to the pending result's segments root")]
    BadLeafPath {
        /// The leaf's index.
        index: u32,
    },
    /// The node cannot judge the fraud proof now (data not held yet, a local
    /// failure). Never a fault of the block or its sender: a block waiting
    /// on it is parked and retried.
    #[error("fraud proof for job {job} cannot be judged here yet: {reason}")]
    CannotJudge {
        /// The job.
        job: JobId,
        /// Why.
        reason: VerifyError,
    },
    /// The claimed metric does not earn the bounty.
    #[error("result for job {job} not accepted: {reason}")]
    NotAccepted {
        /// The job.
        job: JobId,
        /// Why.
        reason: AcceptanceError,
    },
}

/// Why a transaction is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxError {
    /// The encoded transaction is too large.
    #[error("transaction is {size} bytes, expected at most {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The signature or key is bad.
    #[error(transparent)]
    Signature(#[from] SignatureError),
    /// The nonce is not the sender's next.
    #[error("nonce {got} for {address}, expected {expected}")]
    NonceMismatch {
        /// The sender.
        address: Address,
        /// The account's next nonce.
        expected: u64,
        /// The transaction's.
        got: u64,
    },
    /// The fee is under the minimum for the transaction's size.
    #[error("fee {fee} is below the minimum {min} ({size} bytes at {rate} a byte)")]
    FeeTooLow {
        /// The fee.
        fee: Amount,
        /// The minimum for this size.
        min: Amount,
        /// The encoded size.
        size: usize,
        /// The chain's minimum fee rate, per byte.
        rate: Amount,
    },
    /// A transfer of nothing.
    #[error("transfer amount is 0, expected a positive amount")]
    ZeroAmount,
    /// The sender cannot pay.
    #[error("{address} needs {needed} but has {available}")]
    InsufficientBalance {
        /// The sender.
        address: Address,
        /// Amount plus fee, plus the entry charge when the transfer creates
        /// its recipient's account.
        needed: Amount,
        /// Its balance.
        available: Amount,
    },
    /// A job-contract rule.
    #[error(transparent)]
    Job(#[from] JobError),
    /// A sum left the range of the type.
    #[error("arithmetic overflow in {0}")]
    Overflow(&'static str),
    /// The transaction could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

/// Why a block is invalid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockError {
    /// The header is invalid.
    #[error(transparent)]
    Header(#[from] HeaderError),
    /// The block has no transactions.
    #[error("block has no transactions, expected a coinbase first")]
    NoCoinbase,
    /// A coinbase other than first.
    #[error("transaction {index} is a coinbase, expected only the first")]
    ExtraCoinbase {
        /// Its position.
        index: usize,
    },
    /// The coinbase's height is wrong.
    #[error("coinbase height {got}, expected {expected}")]
    CoinbaseHeight {
        /// The block's height.
        expected: Height,
        /// The coinbase's.
        got: Height,
    },
    /// The coinbase pays more than subsidy plus fees.
    #[error("coinbase pays {amount}, expected at most {max} (subsidy plus fees)")]
    CoinbaseTooLarge {
        /// What it pays.
        amount: Amount,
        /// Subsidy plus fees.
        max: Amount,
    },
    /// The same transaction twice.
    #[error("transaction {0} appears twice")]
    DuplicateTx(TxId),
    /// Too many transactions.
    #[error("block has {count} transactions, expected at most {max}")]
    TooManyTxs {
        /// The count.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// The encoded block is too large.
    #[error("block is {size} bytes, expected at most {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// The merkle root does not match the transactions.
    #[error("merkle root {got}, expected {expected}")]
    BadMerkleRoot {
        /// Computed from the transactions.
        expected: MerkleRoot,
        /// In the header.
        got: MerkleRoot,
    },
    /// The state root does not match the state after the block.
    #[error("state root {got}, expected {expected}")]
    BadStateRoot {
        /// Computed by applying the block.
        expected: StateRoot,
        /// In the header.
        got: StateRoot,
    },
    /// More fraud proofs than a block may replay.
    #[error("block carries {count} fraud proofs, expected at most {max}")]
    TooManyFraudProofs {
        /// Fraud proofs in the block.
        count: usize,
        /// The bound.
        max: usize,
    },
    /// A transaction is invalid.
    #[error("transaction {index} ({txid}): {source}")]
    Tx {
        /// Its position.
        index: usize,
        /// Its id.
        txid: TxId,
        /// Why.
        source: Box<TxError>,
    },
    /// A sum left the range of the type.
    #[error("arithmetic overflow in {0}")]
    Overflow(&'static str),
    /// The block could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
}

impl BlockError {
    /// The node could not judge the block for a reason of its own (a blob
    /// not held yet): the block is neither valid nor invalid, and whoever
    /// sent it did nothing wrong. Only consensus failures return `false`.
    pub fn is_node_local(&self) -> bool {
        matches!(
            self,
            Self::Tx { source, .. }
                if matches!(**source, TxError::Job(JobError::CannotJudge { .. }))
        )
    }
}

/// The median of the last (up to) eleven block times, oldest first.
pub fn median_time_past(times: &[u32]) -> u32 {
    let start = times.len().saturating_sub(MEDIAN_TIME_SPAN);
    let mut window: Vec<u32> = times.iter().skip(start).copied().collect();
    window.sort_unstable();
    window.get(window.len() / 2).copied().unwrap_or(0)
}

/// The bits the child of a block at `parent_height` with `parent_time` must
/// carry. `block1_time` is the time of block 1, the ASERT anchor, needed
/// once the parent is at height 1 or above.
pub fn expected_bits(
    params: &ChainParams,
    parent_height: Height,
    parent_time: u32,
    block1_time: Option<u32>,
) -> Result<CompactTarget, HeaderError> {
    let Some(schedule) = params.asert()? else {
        return Ok(params.pow_limit);
    };
    if parent_height == Height::GENESIS {
        return Ok(params.genesis_bits);
    }
    let anchor = params.asert_anchor(block1_time.ok_or(HeaderError::MissingAnchor)?)?;
    let target = asert::next_target(&schedule, &anchor, parent_height.0, i64::from(parent_time))?;
    Ok(target.to_compact())
}

/// What a header is checked against: facts about its parent and the clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderContext {
    /// The parent's hash.
    pub parent: BlockHash,
    /// Bits required by [`expected_bits`].
    pub expected_bits: CompactTarget,
    /// Median time past of the parent and its ancestors.
    pub median_time_past: u32,
    /// Local clock, unix seconds.
    pub now: u32,
}

/// Checks the header's target bits against its own hash and the chain's
/// limit. Needs no context, so it runs first on anything from a peer.
pub fn check_proof_of_work(header: &SealedHeader, params: &ChainParams) -> Result<(), HeaderError> {
    let target = header.header().bits.to_target()?;
    let limit = params.pow_limit.to_target()?;
    if target > limit {
        return Err(HeaderError::TargetAboveLimit { target, limit });
    }
    if !target.is_met_by(&header.hash()) {
        return Err(HeaderError::BadProofOfWork {
            hash: header.hash(),
            target,
        });
    }
    Ok(())
}

/// Checks a header against its context: version, parent, bits, proof of
/// work, and time.
pub fn check_header(
    header: &SealedHeader,
    context: &HeaderContext,
    params: &ChainParams,
) -> Result<(), HeaderError> {
    let h = header.header();
    if h.version != params.block_version {
        return Err(HeaderError::Version {
            got: h.version,
            expected: params.block_version,
        });
    }
    if h.prev != context.parent {
        return Err(HeaderError::WrongParent {
            expected: context.parent,
            got: h.prev,
        });
    }
    if h.bits != context.expected_bits {
        return Err(HeaderError::WrongTargetBits {
            expected: context.expected_bits,
            got: h.bits,
        });
    }
    check_proof_of_work(header, params)?;
    if h.time <= context.median_time_past {
        return Err(HeaderError::TimeTooOld {
            time: h.time,
            median_time_past: context.median_time_past,
        });
    }
    let max = context.now.saturating_add(params.max_future_drift);
    if h.time > max {
        return Err(HeaderError::TimeTooNew { time: h.time, max });
    }
    Ok(())
}

/// Checks what a transaction must satisfy on its own: size, minimum fee,
/// positive amounts, a valid job spec, and its signature. Returns its id.
pub fn check_tx_stateless(tx: &SignedTx, params: &ChainParams) -> Result<TxId, TxError> {
    check_tx_rules(tx, params)?;
    // The signature is the dearest of the stateless checks: it runs last.
    tx.verify_signature(params.chain_id)?;
    tx.id().map_err(TxError::from)
}

/// Which signed transactions of a block (by index, the coinbase at 0) the
/// caller has already verified with [`SignedTx::verify_signature`], the one
/// signature rule (strict ed25519) on every path: at mempool admission, in
/// a node's parallel pre-check of a block, or here. The rest are verified
/// here, in block order, as each transaction is reached; so whichever path
/// verified a signature, the same set of blocks is valid, and an invalid
/// block fails with the same error.
#[derive(Clone, Copy, Debug)]
pub enum Presigned<'a> {
    /// None: every signature is verified here.
    Nothing,
    /// Every signed transaction (a block template built from the mempool).
    Everything,
    /// The transactions whose index holds `true`.
    These(&'a [bool]),
}

impl Presigned<'_> {
    fn covers(&self, index: usize) -> bool {
        match self {
            Self::Nothing => false,
            Self::Everything => true,
            Self::These(verified) => verified.get(index).copied().unwrap_or(false),
        }
    }
}

/// The stateless checks of [`check_tx_stateless`] but the signature: size,
/// minimum fee, positive amounts, a valid job spec, the leaves' root and
/// path lengths. Cheap: encodings, comparisons and at most a few hundred
/// hashes, no curve arithmetic.
pub fn check_tx_rules(tx: &SignedTx, params: &ChainParams) -> Result<(), TxError> {
    let size = tx.encoded_len()?;
    if size > params.max_tx_bytes {
        return Err(TxError::TooLarge {
            size,
            max: params.max_tx_bytes,
        });
    }
    // The size is bounded above, so the product cannot overflow with any
    // sane rate; if it did, no fee could pay it.
    let min = params
        .min_fee(size)
        .ok_or(TxError::Overflow("minimum fee"))?;
    if tx.body.fee < min {
        return Err(TxError::FeeTooLow {
            fee: tx.body.fee,
            min,
            size,
            rate: params.min_fee_rate,
        });
    }
    match &tx.body.kind {
        TxKind::Transfer { amount, .. } if *amount == Amount::ZERO => {
            return Err(TxError::ZeroAmount);
        }
        TxKind::PostJob { spec, bounty, .. } => {
            spec.validate(&params.job_limits).map_err(JobError::from)?;
            if *bounty == Amount::ZERO {
                return Err(JobError::ZeroBounty.into());
            }
        }
        TxKind::SubmitResult { result, leaves, .. } => {
            // Bounded before hashing: at most MAX_SEGMENTS + 1 leaves.
            let most = usize::try_from(MAX_SEGMENTS)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            if leaves.len() > most {
                return Err(JobError::LeafCount {
                    got: leaves.len(),
                    expected: most,
                }
                .into());
            }
            let computed = segments_root(leaves);
            if computed != result.segments_root {
                return Err(JobError::SegmentsRoot {
                    computed,
                    claimed: result.segments_root,
                }
                .into());
            }
        }
        TxKind::FraudProof { claim, .. } => {
            let opened: Vec<&OpenedLeaf> = match claim {
                FraudClaim::InitialState { first } => vec![first],
                FraudClaim::Segment { prev, leaf, .. } => vec![prev, leaf],
                FraudClaim::Final { last } => vec![last],
            };
            if let Some(long) = opened.iter().find(|o| o.path.len() > MAX_PATH_LEN) {
                return Err(JobError::PathTooLong {
                    len: long.path.len(),
                    max: MAX_PATH_LEN,
                }
                .into());
            }
        }
        TxKind::Transfer { .. } => {}
    }
    Ok(())
}

fn debit(
    state: &State,
    address: &Address,
    needed: Amount,
) -> Result<crate::state::Account, TxError> {
    let mut account = state.account(address);
    account.balance = account
        .balance
        .checked_sub(needed)
        .ok_or(TxError::InsufficientBalance {
            address: *address,
            needed,
            available: account.balance,
        })?;
    Ok(account)
}

fn credit(
    state: &mut State,
    journal: &mut Journal,
    address: Address,
    amount: Amount,
) -> Result<(), TxError> {
    let mut account = state.account(&address);
    account.balance = account
        .balance
        .checked_add(amount)
        .ok_or(TxError::Overflow("balance"))?;
    state.set_account(journal, address, account);
    Ok(())
}

/// Applies one signed transaction at `height`, recording prior values in
/// `journal`, and returns its fee. The stateless checks
/// ([`check_tx_stateless`]) must already have passed. On error the state
/// may be partly changed: roll back with the journal.
pub fn apply_transaction(
    state: &mut State,
    journal: &mut Journal,
    tx: &SignedTx,
    txid: TxId,
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
) -> Result<Amount, TxError> {
    let from = tx.body.from;
    let fee = tx.body.fee;
    let sender = state.account(&from);
    if sender.nonce != tx.body.nonce {
        return Err(TxError::NonceMismatch {
            address: from,
            expected: sender.nonce,
            got: tx.body.nonce,
        });
    }
    let next_nonce = sender
        .nonce
        .checked_add(1)
        .ok_or(TxError::Overflow("nonce"))?;
    match &tx.body.kind {
        TxKind::Transfer { to, amount } => {
            // A recipient without an account gets a new live-state entry:
            // the sender pays the entry charge, which is burned.
            let charge = if state.has_account(to) {
                Amount::ZERO
            } else {
                params.entry_charge
            };
            let needed = amount
                .checked_add(fee)
                .and_then(|sum| sum.checked_add(charge))
                .ok_or(TxError::Overflow("amount plus fee plus entry charge"))?;
            let mut account = debit(state, &from, needed)?;
            account.nonce = next_nonce;
            state.set_account(journal, from, account);
            credit(state, journal, *to, *amount)?;
            if charge > Amount::ZERO {
                credit(state, journal, BURN_ADDRESS, charge)?;
            }
        }
        TxKind::PostJob {
            spec,
            bounty,
            expires_at,
        } => {
            let min = height.next().ok_or(TxError::Overflow("height"))?;
            let max = height
                .checked_add(params.max_job_lifetime)
                .ok_or(TxError::Overflow("height"))?;
            if *expires_at < min || *expires_at > max {
                return Err(JobError::BadExpiry {
                    expires_at: *expires_at,
                    min,
                    max,
                }
                .into());
            }
            // Every job is a new live-state entry (its id is this
            // transaction's): the poster pays the entry charge, burned.
            let charge = params.entry_charge;
            let needed = bounty
                .checked_add(fee)
                .and_then(|sum| sum.checked_add(charge))
                .ok_or(TxError::Overflow("bounty plus fee plus entry charge"))?;
            let mut account =
                debit(state, &from, needed).map_err(|_| JobError::BountyUnaffordable {
                    bounty: *bounty,
                    fee,
                    charge,
                    balance: sender.balance,
                })?;
            account.nonce = next_nonce;
            state.set_account(journal, from, account);
            if charge > Amount::ZERO {
                credit(state, journal, BURN_ADDRESS, charge)?;
            }
            let record = JobRecord {
                poster: from,
                spec: spec.clone(),
                bounty: *bounty,
                posted_at: height,
                expires_at: *expires_at,
                status: JobStatus::Open,
                challenges: Vec::new(),
            };
            state.set_job(journal, JobId::from(txid), Some(record));
        }
        TxKind::SubmitResult {
            job,
            result,
            leaves,
        } => {
            // Admission is cheap: no training, no data. Every check below is
            // a lookup or integer arithmetic; the leaves' root was checked
            // statelessly. The worker's bond pays for the chance that a
            // fraud proof has to replay a segment of this result.
            let record = state.job(job).ok_or(JobError::UnknownJob(*job))?;
            match record.status {
                JobStatus::Open => {}
                JobStatus::Pending { settles_at, .. } => {
                    return Err(JobError::AlreadyPending {
                        job: *job,
                        settles_at,
                    }
                    .into());
                }
                JobStatus::Fulfilled { height, .. } => {
                    return Err(JobError::AlreadyFulfilled { job: *job, height }.into());
                }
                JobStatus::Expired { .. } => {
                    return Err(JobError::Expired {
                        job: *job,
                        expires_at: record.expires_at,
                    }
                    .into());
                }
            }
            if height >= record.expires_at {
                return Err(JobError::Expired {
                    job: *job,
                    expires_at: record.expires_at,
                }
                .into());
            }
            let expected = usize::try_from(record.spec.segments)
                .unwrap_or(usize::MAX)
                .saturating_add(1);
            if leaves.len() != expected {
                return Err(JobError::LeafCount {
                    got: leaves.len(),
                    expected,
                }
                .into());
            }
            check_acceptance(&record.spec, &result.metric)
                .map_err(|reason| JobError::NotAccepted { job: *job, reason })?;
            let bond = record.spec.bond;
            let needed = bond
                .checked_add(fee)
                .ok_or(TxError::Overflow("bond plus fee"))?;
            let mut account =
                debit(state, &from, needed).map_err(|_| JobError::BondUnaffordable {
                    address: from,
                    bond,
                    fee,
                    balance: sender.balance,
                })?;
            account.nonce = next_nonce;
            let settles_at = height
                .checked_add(u64::from(record.spec.challenge_window))
                .ok_or(TxError::Overflow("height"))?;
            let mut pending = record.clone();
            pending.status = JobStatus::Pending {
                worker: from,
                result: *result,
                tx: txid,
                height,
                settles_at,
                bond,
            };
            state.set_account(journal, from, account);
            state.set_job(journal, *job, Some(pending));
        }
        TxKind::FraudProof { job, claim } => {
            apply_fraud_proof(
                state, journal, tx, txid, height, params, verifier, *job, claim, next_nonce,
            )?;
        }
    }
    Ok(fee)
}

/// Checks that `opened` is leaf `index` of the tree of `count` leaves with
/// root `root`: a few hashes, no data.
fn check_opened(
    root: &crate::types::Digest,
    count: u32,
    index: u32,
    opened: &OpenedLeaf,
) -> Result<SegmentLeaf, JobError> {
    if verify_path(root, count, index, &opened.leaf, &opened.path) {
        Ok(opened.leaf)
    } else {
        Err(JobError::BadLeafPath { index })
    }
}

/// What a replay says about a claim: `Ok(true)` when the fault is proven.
/// An impossible replay proves it too: the worker committed to inputs that
/// no honest run continues from. A deferred replay (admission only) is read
/// as refuted; any other verifier error means the node cannot judge yet.
fn judge<T>(
    job: JobId,
    answer: Result<Judged<T>, VerifyError>,
    faulty: impl FnOnce(&T) -> bool,
) -> Result<bool, JobError> {
    match answer {
        Ok(Judged::Computed(value)) => Ok(faulty(&value)),
        Ok(Judged::Impossible(_)) => Ok(true),
        Err(VerifyError::Deferred) => Ok(false),
        Err(reason) => Err(JobError::CannotJudge { job, reason }),
    }
}

/// Applies a fraud proof: cheap checks first, then one replay, then the
/// slash or the burn.
#[allow(clippy::too_many_arguments)]
fn apply_fraud_proof(
    state: &mut State,
    journal: &mut Journal,
    tx: &SignedTx,
    txid: TxId,
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
    job: JobId,
    claim: &FraudClaim,
    next_nonce: u64,
) -> Result<(), TxError> {
    let from = tx.body.from;
    let fee = tx.body.fee;
    // 1. Cheap: the job has a pending result.
    let record = state.job(&job).ok_or(JobError::UnknownJob(job))?.clone();
    let JobStatus::Pending {
        worker,
        result,
        bond: worker_bond,
        ..
    } = record.status
    else {
        return Err(JobError::NotPending { job }.into());
    };
    // 2. Cheap: the challenger can escrow the fraud-proof bond and the fee.
    let bond = params.fraud_proof_bond;
    let needed = bond
        .checked_add(fee)
        .ok_or(TxError::Overflow("bond plus fee"))?;
    let mut challenger = debit(state, &from, needed).map_err(|_| JobError::BondUnaffordable {
        address: from,
        bond,
        fee,
        balance: state.account(&from).balance,
    })?;
    challenger.nonce = next_nonce;
    // 3. Cheap: the opened leaves lead to the pending result's root.
    let segments = record.spec.segments;
    let count = segments
        .checked_add(1)
        .ok_or(TxError::Overflow("segments"))?;
    let root = &result.segments_root;
    let spec = &record.spec;
    // 4. Expensive, and last: one replay of at most one segment, bounded by
    // the job's segment cost and the block's fraud-proof count. The
    // challenger's bond pays for it: it is burned when the replay agrees
    // with the worker.
    let proven = match claim {
        FraudClaim::InitialState { first } => {
            let first = check_opened(root, count, 0, first)?;
            // Leaf 0 is `{ digest of S_0, loss 0 }`: either part wrong is a
            // fault.
            let zero_loss = first.loss == crate::types::F32Bits::from_f32(0.0);
            judge(job, verifier.initial_state(&job, spec, &worker), |s0| {
                *s0 != first.state || !zero_loss
            })?
        }
        FraudClaim::Segment { index, prev, leaf } => {
            if *index == 0 || *index > segments {
                return Err(JobError::SegmentIndex {
                    index: *index,
                    segments,
                }
                .into());
            }
            let prev = check_opened(root, count, index.saturating_sub(1), prev)?;
            let leaf = check_opened(root, count, *index, leaf)?;
            // Segment 1 starts from the seed's state: a leaf 0 that is not
            // it is a fault already, and needs no blob to show.
            let wrong_start = *index == 1
                && judge(job, verifier.initial_state(&job, spec, &worker), |s0| {
                    *s0 != prev.state
                })?;
            wrong_start
                || judge(
                    job,
                    verifier.replay_segment(&job, spec, &worker, *index, &prev.state),
                    |replayed| *replayed != leaf,
                )?
        }
        FraudClaim::Final { last } => {
            let last = check_opened(root, count, segments, last)?;
            judge(
                job,
                verifier.final_result(&job, spec, &worker, &last.state),
                |out: &FinalOutcome| {
                    out.weights != result.weights
                        || out.train_loss != result.train_loss
                        || out.metric != result.metric
                },
            )?
        }
    };
    // 5. Effects.
    state.set_account(journal, from, challenger);
    let mut updated = record.clone();
    updated.challenges.push(Challenge {
        challenger: from,
        worker,
        segment: claim.segment(segments),
        tx: txid,
        height,
        outcome: if proven {
            ChallengeOutcome::Proven
        } else {
            ChallengeOutcome::Refuted
        },
    });
    if proven {
        // The challenger's bond comes back; the worker's bond is split:
        // half to the challenger, the rest burned. The bounty stays in
        // escrow and the job takes results again.
        let reward = Amount(worker_bond.0 / 2);
        let burned = worker_bond
            .checked_sub(reward)
            .ok_or(TxError::Overflow("bond"))?;
        let back = bond.checked_add(reward).ok_or(TxError::Overflow("bond"))?;
        credit(state, journal, from, back)?;
        credit(state, journal, BURN_ADDRESS, burned)?;
        updated.status = JobStatus::Open;
    } else {
        credit(state, journal, BURN_ADDRESS, bond)?;
    }
    state.set_job(journal, job, Some(updated));
    Ok(())
}

/// Pays the pending results whose challenge window has closed: the bounty
/// and the bond go to the worker.
fn settle_jobs(state: &mut State, journal: &mut Journal, height: Height) -> Result<(), TxError> {
    for id in state.jobs_settling_by(height) {
        let Some(mut record) = state.job(&id).cloned() else {
            continue;
        };
        let JobStatus::Pending {
            worker,
            result,
            tx,
            height: submitted_at,
            bond,
            ..
        } = record.status
        else {
            continue;
        };
        let paid = record
            .bounty
            .checked_add(bond)
            .ok_or(TxError::Overflow("bounty plus bond"))?;
        credit(state, journal, worker, paid)?;
        record.status = JobStatus::Fulfilled {
            worker,
            result,
            tx,
            height,
            submitted_at,
            bond,
        };
        state.set_job(journal, id, Some(record));
    }
    Ok(())
}

/// Expires the open jobs whose expiry height has come, refunding posters.
fn expire_jobs(state: &mut State, journal: &mut Journal, height: Height) -> Result<(), TxError> {
    for id in state.jobs_expiring_by(height) {
        let Some(mut record) = state.job(&id).cloned() else {
            continue;
        };
        credit(state, journal, record.poster, record.bounty)?;
        record.status = JobStatus::Expired { height };
        state.set_job(journal, id, Some(record));
    }
    Ok(())
}

/// Prunes the settled jobs (fulfilled or expired) whose retention ended at
/// or before `height`: they leave the live state; their history stays in
/// the blocks.
fn prune_jobs(state: &mut State, journal: &mut Journal, height: Height, retention: u64) {
    for id in state.jobs_prunable_by(height, retention) {
        state.set_job(journal, id, None);
    }
}

/// Checks a block's structure: a coinbase first and only first, at the
/// block's height; no duplicate transactions; counts and size within
/// bounds; the merkle root. Returns the transaction ids.
pub fn check_block_body(
    block: &Block,
    height: Height,
    params: &ChainParams,
) -> Result<Vec<TxId>, BlockError> {
    check_body(block, height, params).map(|(ids, _)| ids)
}

/// A block whose body passed [`check_block_body`] at a height, with what
/// the check computed: the transaction ids and the block's encoding. A node
/// checks a block's body when it first sees it, then stores and applies
/// it; carrying these along with the block means each transaction is
/// encoded and hashed once, not once per step. Only
/// [`CheckedBlock::check`] makes one, and it owns its block, so what it
/// carries is always that block's.
#[derive(Clone, Debug)]
pub struct CheckedBlock {
    block: Block,
    hash: BlockHash,
    height: Height,
    ids: Vec<TxId>,
    encoded: Vec<u8>,
}

impl CheckedBlock {
    /// Runs [`check_block_body`] on `block` at `height`, keeping its
    /// results.
    pub fn check(block: Block, height: Height, params: &ChainParams) -> Result<Self, BlockError> {
        let (ids, encoded) = check_body(&block, height, params)?;
        Ok(Self {
            hash: block.hash(),
            block,
            height,
            ids,
            encoded,
        })
    }

    /// The block.
    pub fn block(&self) -> &Block {
        &self.block
    }

    /// The block's hash.
    pub fn hash(&self) -> BlockHash {
        self.hash
    }

    /// The height it was checked at.
    pub fn height(&self) -> Height {
        self.height
    }

    /// The transaction ids, in block order (the coinbase's first).
    pub fn ids(&self) -> &[TxId] {
        &self.ids
    }

    /// The block's canonical encoding.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The block, given back.
    pub fn into_block(self) -> Block {
        self.block
    }
}

fn check_body(
    block: &Block,
    height: Height,
    params: &ChainParams,
) -> Result<(Vec<TxId>, Vec<u8>), BlockError> {
    if block.txs.len() > params.max_block_txs {
        return Err(BlockError::TooManyTxs {
            count: block.txs.len(),
            max: params.max_block_txs,
        });
    }
    let encoded = block.encode()?;
    let size = encoded.len();
    if size > params.max_block_bytes {
        return Err(BlockError::TooLarge {
            size,
            max: params.max_block_bytes,
        });
    }
    match block.txs.first() {
        Some(Transaction::Coinbase(coinbase)) => {
            if coinbase.height != height {
                return Err(BlockError::CoinbaseHeight {
                    expected: height,
                    got: coinbase.height,
                });
            }
        }
        _ => return Err(BlockError::NoCoinbase),
    }
    if let Some(index) = block
        .txs
        .iter()
        .skip(1)
        .position(|tx| matches!(tx, Transaction::Coinbase(_)))
    {
        return Err(BlockError::ExtraCoinbase {
            index: index.saturating_add(1),
        });
    }
    let ids = block.tx_ids()?;
    let mut seen = BTreeSet::new();
    for id in &ids {
        if !seen.insert(*id) {
            return Err(BlockError::DuplicateTx(*id));
        }
    }
    let expected = merkle_root(&ids);
    if expected != block.header.merkle_root {
        return Err(BlockError::BadMerkleRoot {
            expected,
            got: block.header.merkle_root,
        });
    }
    Ok((ids, encoded))
}

/// Applies a block's transactions at `height` without checking the state
/// root: expiries, each signed transaction, the summed training cost, the
/// coinbase bound. On error the state is rolled back.
fn apply_body(
    state: &mut State,
    txs: &[Transaction],
    ids: &[TxId],
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
    presigned: Presigned<'_>,
) -> Result<Journal, BlockError> {
    let mut journal = Journal::default();
    match apply_body_into(
        state,
        &mut journal,
        txs,
        ids,
        height,
        params,
        verifier,
        presigned,
    ) {
        Ok(()) => Ok(journal),
        Err(err) => {
            state.rollback(journal);
            Err(err)
        }
    }
}

#[allow(clippy::too_many_arguments)] // one call site, each argument a different thing
fn apply_body_into(
    state: &mut State,
    journal: &mut Journal,
    txs: &[Transaction],
    ids: &[TxId],
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
    presigned: Presigned<'_>,
) -> Result<(), BlockError> {
    let at_start = |source: TxError| BlockError::Tx {
        index: 0,
        txid: ids.first().copied().unwrap_or_default(),
        source: Box::new(source),
    };
    // Settlements first: a result whose window closed at this height can no
    // longer be challenged in this block.
    settle_jobs(state, journal, height).map_err(at_start)?;
    expire_jobs(state, journal, height).map_err(at_start)?;
    prune_jobs(state, journal, height, params.job_retention);
    // Cheap, before any transaction runs: the replays a block can demand are
    // bounded by this count times the largest segment cost a job may have.
    let fraud_proofs = txs
        .iter()
        .filter(|tx| {
            matches!(tx, Transaction::Signed(signed)
                if matches!(signed.body.kind, TxKind::FraudProof { .. }))
        })
        .count();
    if fraud_proofs > params.max_block_fraud_proofs {
        return Err(BlockError::TooManyFraudProofs {
            count: fraud_proofs,
            max: params.max_block_fraud_proofs,
        });
    }
    let mut fees = Amount::ZERO;
    let mut coinbase = None;
    for (index, (tx, txid)) in txs.iter().zip(ids).enumerate() {
        let signed = match tx {
            Transaction::Coinbase(cb) => {
                coinbase = Some(*cb);
                continue;
            }
            Transaction::Signed(signed) => signed,
        };
        let fail = |source: TxError| BlockError::Tx {
            index,
            txid: *txid,
            source: Box::new(source),
        };
        // Cheap rules first; the signature (curve arithmetic) unless the
        // caller verified it already; then the state.
        check_tx_rules(signed, params).map_err(fail)?;
        if !presigned.covers(index) {
            signed
                .verify_signature(params.chain_id)
                .map_err(|err| fail(err.into()))?;
        }
        let fee = apply_transaction(state, journal, signed, *txid, height, params, verifier)
            .map_err(fail)?;
        fees = fees.checked_add(fee).ok_or(BlockError::Overflow("fees"))?;
    }
    let coinbase = coinbase.ok_or(BlockError::NoCoinbase)?;
    let max = params
        .subsidy(height)
        .checked_add(fees)
        .ok_or(BlockError::Overflow("subsidy plus fees"))?;
    if coinbase.amount > max {
        return Err(BlockError::CoinbaseTooLarge {
            amount: coinbase.amount,
            max,
        });
    }
    credit(state, journal, coinbase.miner, coinbase.amount).map_err(|source| BlockError::Tx {
        index: 0,
        txid: ids.first().copied().unwrap_or_default(),
        source: Box::new(source),
    })?;
    Ok(())
}

/// Validates `block` as the block at `height` on top of `state` and applies
/// it, returning the undo data. The header must already have passed
/// [`check_header`]. On any error the state is left unchanged.
pub fn apply_block(
    state: &mut State,
    block: &Block,
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
) -> Result<BlockUndo, BlockError> {
    apply_block_presigned(state, block, height, params, verifier, Presigned::Nothing)
}

/// [`apply_block`] for a caller that verified some of the block's
/// signatures already ([`Presigned`]); the result is the same for any
/// `presigned` that is true of the signatures it names.
pub fn apply_block_presigned(
    state: &mut State,
    block: &Block,
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
    presigned: Presigned<'_>,
) -> Result<BlockUndo, BlockError> {
    let (ids, _) = check_body(block, height, params)?;
    apply_checked_body(state, block, &ids, height, params, verifier, presigned)
}

/// [`apply_block_presigned`] for a block whose body was checked already
/// at the height it is applied at: its transactions are not encoded and
/// hashed again.
pub fn apply_checked_block(
    state: &mut State,
    checked: &CheckedBlock,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
    presigned: Presigned<'_>,
) -> Result<BlockUndo, BlockError> {
    apply_checked_body(
        state,
        &checked.block,
        &checked.ids,
        checked.height,
        params,
        verifier,
        presigned,
    )
}

fn apply_checked_body(
    state: &mut State,
    block: &Block,
    ids: &[TxId],
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
    presigned: Presigned<'_>,
) -> Result<BlockUndo, BlockError> {
    let journal = apply_body(state, &block.txs, ids, height, params, verifier, presigned)?;
    let root = match state.root() {
        Ok(root) => root,
        Err(err) => {
            state.rollback(journal);
            return Err(err.into());
        }
    };
    if root != block.header.state_root {
        state.rollback(journal);
        return Err(BlockError::BadStateRoot {
            expected: root,
            got: block.header.state_root,
        });
    }
    Ok(journal.into_undo())
}

/// Reverses [`apply_block`] with its undo data.
pub fn undo_block(state: &mut State, undo: &BlockUndo) {
    state.undo(undo);
}

/// The state root a block with these transactions would commit to at
/// `height`, for building block templates. The state is left unchanged.
pub fn template_state_root(
    state: &mut State,
    txs: &[Transaction],
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
) -> Result<StateRoot, BlockError> {
    template_state_root_presigned(state, txs, height, params, verifier, Presigned::Nothing)
}

/// [`template_state_root`] for transactions whose signatures the caller
/// verified already (a template built from the mempool).
pub fn template_state_root_presigned(
    state: &mut State,
    txs: &[Transaction],
    height: Height,
    params: &ChainParams,
    verifier: &dyn SegmentVerifier,
    presigned: Presigned<'_>,
) -> Result<StateRoot, BlockError> {
    let ids = txs
        .iter()
        .map(Transaction::id)
        .collect::<Result<Vec<_>, _>>()?;
    let journal = apply_body(state, txs, &ids, height, params, verifier, presigned)?;
    let root = state.root();
    state.rollback(journal);
    Ok(root?)
}
