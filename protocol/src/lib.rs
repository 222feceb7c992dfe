//! gradchain's consensus: the types every node agrees on and the rules that
//! decide whether a header, a transaction or a block is valid.
//!
//! This crate is pure. It never touches the network, the disk, a clock or a
//! thread: callers pass in everything a rule needs (the parent's height, the
//! median time past, "now", a [`SegmentVerifier`] that replays one segment
//! of a job for a fraud proof) and
//! get back a value or a typed error. Everything that is hashed goes through
//! the one canonical codec in [`codec`]; nothing hashed contains a `HashMap`
//! or a float other than as its IEEE bits; arithmetic on amounts, heights and
//! work is checked.

// The consensus lints (checked arithmetic, no `as`) guard code that handles
// peer data; test code computes fixtures and may use plain arithmetic.
#![cfg_attr(test, allow(clippy::arithmetic_side_effects, clippy::as_conversions))]

pub mod api;
pub mod asert;
pub mod blob;
pub mod block;
pub mod codec;
pub mod hash;
pub mod header;
pub mod job;
pub mod params;
pub mod pow;
pub mod segments;
pub mod state;
pub mod tree;
pub mod tx;
pub mod types;
pub mod validation;

pub use block::{merkle_root, Block};
pub use codec::CodecError;
pub use hash::{sha256, sha256d};
pub use header::{Header, SealedHeader, HEADER_SIZE, NONCE_OFFSET};
pub use job::{
    Acceptance, Activation, DatasetRef, DeferReplays, FinalOutcome, JobResult, JobSpec, Judged,
    Loss, ModelSpec, Optimizer, SegmentVerifier, Split, Task, TestMetric, VerifyError,
};
pub use params::ChainParams;
pub use pow::{CompactTarget, Target, Work};
pub use segments::SegmentLeaf;
pub use state::{
    Account, BlockUndo, Challenge, ChallengeOutcome, JobRecord, JobStatus, State, BURN_ADDRESS,
};
pub use tx::{Coinbase, FraudClaim, OpenedLeaf, SignedTx, Transaction, TxBody, TxKind};
pub use types::{
    Address, Amount, BlockHash, Digest, F32Bits, Height, JobId, MerkleRoot, Signature, StateRoot,
    TxId,
};
pub use validation::{BlockError, HeaderError, JobError, TxError};
