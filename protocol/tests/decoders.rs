//! Property tests of every canonical-codec decoder that peer or HTTP input
//! reaches: blocks, signed transactions of every kind (each fraud claim
//! included), headers and sealed headers, job records, and the blob
//! manifest and chunk types.
//!
//! For each type: generated values round-trip; every strict prefix of an
//! encoding fails and every extension fails with `TrailingBytes`; arbitrary
//! and mutated bytes either fail with a typed error or decode to a value
//! that re-encodes to exactly those bytes (so no two byte strings decode to
//! the same value); and a length prefix announcing far more than the input
//! fails without the decoder allocating what it announced, which a counting
//! allocator in this test binary measures.
#![allow(
    unsafe_code,
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::fmt::Debug;

use common::{addr, key};
use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use proptest::sample::Index;
use protocol::blob::{
    chunk_count, BlobChunk, BlobKind, BlobManifest, BlobName, ManifestError, BLOB_CHUNK_BYTES,
};
use protocol::codec::{self, CodecError, MAX_DECODE_BYTES};
use protocol::job::ENGINE_VERSION;
use protocol::state::{Challenge, ChallengeOutcome, JobStatus};
use protocol::{
    sha256d, Acceptance, Activation, Address, Amount, Block, BlockHash, Coinbase, CompactTarget,
    DatasetRef, Digest, F32Bits, FraudClaim, Header, Height, JobId, JobRecord, JobResult, JobSpec,
    Loss, MerkleRoot, ModelSpec, OpenedLeaf, Optimizer, SegmentLeaf, Signature, SignedTx, Split,
    StateRoot, Task, TestMetric, Transaction, TxBody, TxId, TxKind, HEADER_SIZE,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

// ---------------------------------------------------------------------------
// The largest single allocation a thread makes, measured around a decode.

/// The system allocator, noting per thread the largest block asked for.
struct Measuring;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot is gone while a thread is being torn down.
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the only addition
// is a thread-local counter that never allocates.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Measuring = Measuring;

/// Runs `f`, returning its value and the largest single allocation it made
/// on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    let value = f();
    (value, LARGEST.with(Cell::get))
}

/// The most memory one allocation of a decode may take per byte of its
/// input: the codec caps a sequence's size hint at the input's length, so
/// serde preallocates at most one element per input byte, and no element
/// decoded here is larger than this in memory
/// (`elements_fit_the_allocation_bound`); strings and byte buffers are
/// allocated only once their bytes are known to be there.
const MEMORY_PER_INPUT_BYTE: usize = 512;

/// The largest single allocation decoding `input_len` bytes may make.
fn allocation_bound(input_len: usize) -> usize {
    MEMORY_PER_INPUT_BYTE * input_len.max(1)
}

// ---------------------------------------------------------------------------
// The properties every decoder shares.

/// Decodes `bytes` as a `T` under `max`. Every outcome must be a typed
/// error or a canonical value; returns the value when there is one.
fn decode_checked<T>(bytes: &[u8], max: usize) -> Result<Option<T>, TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let result = codec::decode_with_limit::<T>(bytes, max);
    agrees_with_bincode(bytes, max, &result)?;
    match result {
        Ok(value) => {
            prop_assert!(bytes.len() <= max.min(MAX_DECODE_BYTES));
            let again = codec::encode(&value).unwrap();
            prop_assert_eq!(
                &again[..],
                bytes,
                "a decoded value re-encodes to other bytes"
            );
            Ok(Some(value))
        }
        Err(CodecError::TooLarge { len, max: cap }) => {
            prop_assert_eq!(len, bytes.len());
            prop_assert_eq!(cap, max.min(MAX_DECODE_BYTES));
            prop_assert!(len > cap);
            Ok(None)
        }
        Err(CodecError::TrailingBytes { consumed, len }) => {
            prop_assert_eq!(len, bytes.len());
            prop_assert!(consumed < len);
            // The bytes before the leftovers are a whole canonical value.
            let head = codec::decode_with_limit::<T>(&bytes[..consumed], max).unwrap();
            prop_assert_eq!(&codec::encode(&head).unwrap()[..], &bytes[..consumed]);
            Ok(None)
        }
        Err(CodecError::Malformed(message)) => {
            prop_assert!(!message.is_empty());
            Ok(None)
        }
        Err(CodecError::Encode(message)) => Err(TestCaseError::fail(format!(
            "decoding reported an encoding error: {message}"
        ))),
    }
}

/// bincode alone, configured as the codec configures it but decoding
/// straight into `T`, without the codec's bounded wrapper: the value and
/// the bytes it used, or `None` where bincode refuses.
fn plain_bincode<T: DeserializeOwned>(bytes: &[u8]) -> Option<(T, usize)> {
    let config = bincode::config::standard()
        .with_little_endian()
        .with_fixed_int_encoding()
        .with_limit::<MAX_DECODE_BYTES>();
    bincode::serde::decode_from_slice(bytes, config).ok()
}

/// The codec accepts exactly the byte strings plain bincode accepts, as the
/// same values: bounding allocations changed no decode.
fn agrees_with_bincode<T>(
    bytes: &[u8],
    max: usize,
    result: &Result<T, CodecError>,
) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + Debug,
{
    if bytes.len() > max.min(MAX_DECODE_BYTES) {
        let too_large = matches!(result, Err(CodecError::TooLarge { .. }));
        prop_assert!(too_large, "{:?}", result);
        return Ok(());
    }
    match (plain_bincode::<T>(bytes), result) {
        (Some((plain, used)), Ok(value)) => {
            prop_assert_eq!(used, bytes.len());
            // Compared as encodings, so that a NaN equals itself.
            prop_assert_eq!(
                codec::encode(&plain).unwrap(),
                codec::encode(value).unwrap()
            );
        }
        (Some((_, used)), Err(CodecError::TrailingBytes { consumed, .. })) => {
            prop_assert_eq!(used, *consumed);
        }
        (None, Err(CodecError::Malformed(_))) => {}
        (plain, codec) => prop_assert!(
            false,
            "bincode gave {:?}, the codec {:?}",
            plain.map(|(_, used)| used),
            codec
        ),
    }
    Ok(())
}

/// Round trip, truncations and extensions of a valid value's encoding.
/// `cuts` picks which strict prefixes to try besides the empty one and the
/// one a byte short.
fn check_valid<T>(value: &T, cuts: &[Index]) -> Result<Vec<u8>, TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec::encode(value).unwrap();
    prop_assert_eq!(&codec::decode::<T>(&bytes).unwrap(), value);
    let at_limit = codec::decode_with_limit::<T>(&bytes, bytes.len());
    prop_assert_eq!(at_limit.as_ref(), Ok(value));
    if !bytes.is_empty() {
        prop_assert_eq!(
            codec::decode_with_limit::<T>(&bytes, bytes.len() - 1),
            Err(CodecError::TooLarge {
                len: bytes.len(),
                max: bytes.len() - 1
            })
        );
        let mut prefixes = vec![0, bytes.len() - 1];
        prefixes.extend(cuts.iter().map(|cut| cut.index(bytes.len())));
        for cut in prefixes {
            let result = codec::decode::<T>(&bytes[..cut]);
            prop_assert!(
                matches!(result, Err(CodecError::Malformed(_))),
                "the first {} of {} bytes gave {:?}",
                cut,
                bytes.len(),
                result
            );
        }
    }
    let mut longer = bytes.clone();
    longer.push(0);
    prop_assert_eq!(
        codec::decode::<T>(&longer),
        Err(CodecError::TrailingBytes {
            consumed: bytes.len(),
            len: longer.len()
        })
    );
    Ok(bytes)
}

/// Every strict prefix fails: for the small fixed-size types, all of them.
fn all_prefixes_fail<T: DeserializeOwned + Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
    for cut in 0..bytes.len() {
        let result = codec::decode::<T>(&bytes[..cut]);
        prop_assert!(result.is_err(), "prefix of {} bytes gave {:?}", cut, result);
    }
    Ok(())
}

/// One change to an encoding.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite one byte.
    Set(Index, u8),
    /// Flip one bit.
    Flip(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to this many bytes.
    Remove(Index, usize),
    /// Overwrite up to eight bytes with a little-endian value likely to be a
    /// tag, a count or a length.
    Word(Index, u64),
    /// Copy a run of the encoding over another place in it.
    Splice(Index, Index, usize),
}

fn interesting_word() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(2),
        Just(3),
        Just(4),
        Just(0xff),
        Just(0x100),
        Just(u64::from(u32::MAX)),
        Just(u64::from(u32::MAX) + 1),
        Just(u64::MAX),
        Just(1 << 40),
        0u64..64,
        any::<u64>(),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1usize..9).prop_map(|(at, n)| Mutation::Remove(at, n)),
        (any::<Index>(), interesting_word()).prop_map(|(at, word)| Mutation::Word(at, word)),
        (any::<Index>(), any::<Index>(), 1usize..40)
            .prop_map(|(from, to, n)| Mutation::Splice(from, to, n)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Insert(at, new) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            _ if len == 0 => {}
            Mutation::Set(at, byte) => bytes[at.index(len)] = *byte,
            Mutation::Flip(at, bit) => bytes[at.index(len)] ^= 1 << bit,
            Mutation::Remove(at, n) => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Word(at, word) => {
                let at = at.index(len);
                for (dst, src) in bytes[at..].iter_mut().zip(word.to_le_bytes()) {
                    *dst = src;
                }
            }
            Mutation::Splice(from, to, n) => {
                let from = from.index(len);
                let run: Vec<u8> = bytes[from..(from + n).min(len)].to_vec();
                let to = to.index(len);
                for (dst, src) in bytes[to..].iter_mut().zip(run) {
                    *dst = src;
                }
            }
        }
    }
}

/// A mutated encoding of `original` is refused or decodes canonically, and
/// when the bytes changed the value changed with them.
fn check_mutated<T>(original: &T, mutations: &[Mutation]) -> Result<Option<T>, TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let valid = codec::encode(original).unwrap();
    let mut bytes = valid.clone();
    mutate(&mut bytes, mutations);
    let decoded = decode_checked::<T>(&bytes, MAX_DECODE_BYTES)?;
    if let Some(value) = &decoded {
        prop_assert_eq!(value == original, bytes == valid);
    }
    Ok(decoded)
}

/// Overwrites the eight bytes at `at` with `announced` and decodes under a
/// limit of the input's own length: the decode fails, or succeeds only
/// canonically, and no allocation is larger than a bounded multiple of the
/// input (nor anything near the announced length).
fn check_announced<T>(bytes: &[u8], at: usize, announced: u64) -> Result<(), TestCaseError>
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let mut hostile = bytes.to_vec();
    for (dst, src) in hostile[at..].iter_mut().zip(announced.to_le_bytes()) {
        *dst = src;
    }
    let max = hostile.len();
    let (_, largest) = largest_allocation(|| codec::decode_with_limit::<T>(&hostile, max));
    decode_checked::<T>(&hostile, max)?;
    prop_assert!(
        largest <= allocation_bound(hostile.len()),
        "{} announced at byte {} of {}: an allocation of {} bytes",
        announced,
        at,
        hostile.len(),
        largest
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Generators of valid values. The nested ones are boxed: unboxed, their
// value trees overflow a test thread's 2 MiB stack in a debug build.

fn arb_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest)
}

fn arb_f32() -> impl Strategy<Value = F32Bits> {
    prop_oneof![
        any::<u32>().prop_map(F32Bits),
        any::<f32>().prop_map(F32Bits::from_f32),
        Just(F32Bits::from_f32(-0.0)),
        Just(F32Bits::from_f32(f32::NAN)),
    ]
}

fn arb_header() -> BoxedStrategy<Header> {
    (
        any::<u32>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<[u8; 32]>(),
        any::<u32>(),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(version, prev, merkle, state, time, bits, nonce)| Header {
            version,
            prev: BlockHash(prev),
            merkle_root: MerkleRoot(merkle),
            state_root: StateRoot(state),
            time,
            bits: CompactTarget(bits),
            nonce,
        })
        .boxed()
}

fn arb_task() -> impl Strategy<Value = Task> {
    prop_oneof![
        any::<u32>().prop_map(|classes| Task::Classification { classes }),
        Just(Task::Regression),
    ]
}

fn arb_optimizer() -> impl Strategy<Value = Optimizer> {
    prop_oneof![
        (arb_f32(), arb_f32()).prop_map(|(lr, momentum)| Optimizer::Sgd { lr, momentum }),
        (arb_f32(), arb_f32(), arb_f32(), arb_f32()).prop_map(|(lr, beta1, beta2, eps)| {
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            }
        }),
    ]
}

fn arb_acceptance() -> impl Strategy<Value = Acceptance> {
    prop_oneof![
        any::<u32>().prop_map(|ppm| Acceptance::MinAccuracy { ppm }),
        arb_f32().prop_map(|mse| Acceptance::MaxMse { mse }),
    ]
}

fn arb_spec() -> BoxedStrategy<JobSpec> {
    (
        (arb_digest(), any::<u32>(), any::<u32>(), arb_task()),
        (
            any::<u16>(),
            any::<u16>(),
            prop::collection::vec(any::<u32>(), 0..5),
            any::<bool>(),
        ),
        (arb_optimizer(), arb_f32(), arb_f32(), arb_acceptance()),
        (any::<u32>(), any::<u32>(), any::<u64>(), any::<u32>()),
        (any::<u32>(), any::<u64>(), any::<u32>()),
    )
        .prop_map(
            |(
                (digest, rows, features, task),
                (validation_permille, test_permille, hidden, mse),
                (optimizer, l1, l2, acceptance),
                (batch_size, epochs, base_seed, segments),
                (engine, bond, challenge_window),
            )| JobSpec {
                dataset: DatasetRef {
                    digest,
                    rows,
                    features,
                },
                task,
                split: Split {
                    validation_permille,
                    test_permille,
                },
                model: ModelSpec {
                    hidden,
                    activation: Activation::Relu,
                },
                loss: if mse { Loss::Mse } else { Loss::CrossEntropy },
                optimizer,
                l1,
                l2,
                batch_size,
                epochs,
                base_seed,
                segments,
                engine_version: if engine % 2 == 0 {
                    ENGINE_VERSION
                } else {
                    engine
                },
                acceptance,
                bond: Amount(bond),
                challenge_window,
            },
        )
        .boxed()
}

fn arb_leaf() -> impl Strategy<Value = SegmentLeaf> {
    (arb_digest(), arb_f32()).prop_map(|(state, loss)| SegmentLeaf { state, loss })
}

fn arb_opened() -> BoxedStrategy<OpenedLeaf> {
    (arb_leaf(), prop::collection::vec(arb_digest(), 0..12))
        .prop_map(|(leaf, path)| OpenedLeaf { leaf, path })
        .boxed()
}

fn arb_claim() -> BoxedStrategy<FraudClaim> {
    prop_oneof![
        arb_opened().prop_map(|first| FraudClaim::InitialState { first }),
        (any::<u32>(), arb_opened(), arb_opened())
            .prop_map(|(index, prev, leaf)| FraudClaim::Segment { index, prev, leaf }),
        arb_opened().prop_map(|last| FraudClaim::Final { last }),
    ]
    .boxed()
}

fn arb_metric() -> impl Strategy<Value = TestMetric> {
    prop_oneof![
        (any::<u32>(), any::<u32>())
            .prop_map(|(correct, total)| TestMetric::Accuracy { correct, total }),
        arb_f32().prop_map(TestMetric::Mse),
    ]
}

fn arb_result() -> BoxedStrategy<JobResult> {
    (arb_digest(), arb_digest(), arb_f32(), arb_metric())
        .prop_map(|(weights, segments_root, train_loss, metric)| JobResult {
            weights,
            segments_root,
            train_loss,
            metric,
        })
        .boxed()
}

fn arb_kind() -> BoxedStrategy<TxKind> {
    prop_oneof![
        (arb_digest(), any::<u64>()).prop_map(|(to, amount)| TxKind::Transfer {
            to: Address(to.0),
            amount: Amount(amount),
        }),
        (arb_spec(), any::<u64>(), any::<u64>()).prop_map(|(spec, bounty, expires_at)| {
            TxKind::PostJob {
                spec,
                bounty: Amount(bounty),
                expires_at: Height(expires_at),
            }
        }),
        (
            arb_digest(),
            arb_result(),
            prop::collection::vec(arb_leaf(), 0..20)
        )
            .prop_map(|(job, result, leaves)| TxKind::SubmitResult {
                job: JobId(job.0),
                result,
                leaves,
            }),
        (arb_digest(), arb_claim()).prop_map(|(job, claim)| TxKind::FraudProof {
            job: JobId(job.0),
            claim,
        }),
    ]
    .boxed()
}

fn arb_body() -> BoxedStrategy<TxBody> {
    (arb_digest(), any::<u64>(), any::<u64>(), arb_kind())
        .prop_map(|(from, nonce, fee, kind)| TxBody {
            from: Address(from.0),
            nonce,
            fee: Amount(fee),
            kind,
        })
        .boxed()
}

/// A transaction with an arbitrary signature: the codec does not care
/// whether it verifies.
fn arb_signed() -> BoxedStrategy<SignedTx> {
    (arb_body(), any::<[u8; 32]>(), any::<[u8; 32]>())
        .prop_map(|(body, low, high)| {
            let mut signature = [0u8; 64];
            signature[..32].copy_from_slice(&low);
            signature[32..].copy_from_slice(&high);
            SignedTx {
                body,
                signature: Signature(signature),
            }
        })
        .boxed()
}

const CHAIN_ID: u32 = 0x6763_0001;

/// A transaction really signed by a key drawn from the seed.
fn arb_really_signed() -> BoxedStrategy<SignedTx> {
    (arb_body(), any::<[u8; 32]>())
        .prop_map(|(body, seed)| body.sign(&SigningKey::from_bytes(&seed), CHAIN_ID).unwrap())
        .boxed()
}

fn arb_coinbase() -> BoxedStrategy<Coinbase> {
    (any::<u64>(), arb_digest(), any::<u64>())
        .prop_map(|(height, miner, amount)| Coinbase {
            height: Height(height),
            miner: Address(miner.0),
            amount: Amount(amount),
        })
        .boxed()
}

fn arb_tx() -> BoxedStrategy<Transaction> {
    prop_oneof![
        arb_coinbase().prop_map(Transaction::Coinbase),
        arb_signed().prop_map(Transaction::Signed),
    ]
    .boxed()
}

fn arb_block() -> BoxedStrategy<Block> {
    (arb_header(), prop::collection::vec(arb_tx(), 0..5))
        .prop_map(|(header, txs)| Block { header, txs })
        .boxed()
}

fn arb_status() -> BoxedStrategy<JobStatus> {
    let pending = || {
        (
            arb_digest(),
            arb_result(),
            arb_digest(),
            any::<u64>(),
            any::<u64>(),
            any::<u64>(),
        )
    };
    prop_oneof![
        Just(JobStatus::Open),
        pending().prop_map(|(worker, result, tx, height, settles_at, bond)| {
            JobStatus::Pending {
                worker: Address(worker.0),
                result,
                tx: TxId(tx.0),
                height: Height(height),
                settles_at: Height(settles_at),
                bond: Amount(bond),
            }
        }),
        pending().prop_map(|(worker, result, tx, height, submitted_at, bond)| {
            JobStatus::Fulfilled {
                worker: Address(worker.0),
                result,
                tx: TxId(tx.0),
                height: Height(height),
                submitted_at: Height(submitted_at),
                bond: Amount(bond),
            }
        }),
        any::<u64>().prop_map(|height| JobStatus::Expired {
            height: Height(height)
        }),
    ]
    .boxed()
}

fn arb_challenge() -> BoxedStrategy<Challenge> {
    (
        arb_digest(),
        arb_digest(),
        any::<u32>(),
        arb_digest(),
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(
            |(challenger, worker, segment, tx, height, proven)| Challenge {
                challenger: Address(challenger.0),
                worker: Address(worker.0),
                segment,
                tx: TxId(tx.0),
                height: Height(height),
                outcome: if proven {
                    ChallengeOutcome::Proven
                } else {
                    ChallengeOutcome::Refuted
                },
            },
        )
        .boxed()
}

fn arb_record() -> BoxedStrategy<JobRecord> {
    (
        arb_digest(),
        arb_spec(),
        any::<u64>(),
        any::<u64>(),
        any::<u64>(),
        arb_status(),
        prop::collection::vec(arb_challenge(), 0..4),
    )
        .prop_map(
            |(poster, spec, bounty, posted_at, expires_at, status, challenges)| JobRecord {
                poster: Address(poster.0),
                spec,
                bounty: Amount(bounty),
                posted_at: Height(posted_at),
                expires_at: Height(expires_at),
                status,
                challenges,
            },
        )
        .boxed()
}

fn arb_blob_kind() -> impl Strategy<Value = BlobKind> {
    prop_oneof![
        Just(BlobKind::Dataset),
        Just(BlobKind::Weights),
        Just(BlobKind::State),
    ]
}

/// A manifest that passes `check`: a length within its kind's cap and one
/// chunk hash per chunk. Lengths favour chunk boundaries.
fn arb_manifest() -> BoxedStrategy<BlobManifest> {
    let chunk = u64::from(BLOB_CHUNK_BYTES);
    (arb_blob_kind(), any::<Index>(), -1i64..=1, arb_digest())
        .prop_flat_map(move |(kind, at, nudge, digest)| {
            let max = kind.max_bytes();
            let total = (at.index(usize::try_from(max / chunk).unwrap() + 1) as u64 * chunk)
                .saturating_add_signed(nudge)
                .min(max);
            let count = chunk_count(total) as usize;
            prop::collection::vec(arb_digest(), count).prop_map(move |chunks| BlobManifest {
                digest,
                kind,
                total,
                chunks,
            })
        })
        .boxed()
}

fn arb_blob_name() -> impl Strategy<Value = BlobName> {
    prop_oneof![
        arb_digest().prop_map(BlobName::Content),
        arb_digest().prop_map(BlobName::Weights),
    ]
}

fn arb_chunk() -> BoxedStrategy<BlobChunk> {
    (
        arb_digest(),
        any::<u64>(),
        any::<u64>(),
        prop::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(digest, total, offset, bytes)| BlobChunk {
            digest,
            total,
            offset,
            bytes,
        })
        .boxed()
}

fn cuts() -> impl Strategy<Value = Vec<Index>> {
    prop::collection::vec(any::<Index>(), 6)
}

// ---------------------------------------------------------------------------
// Headers and sealed headers: every 116-byte string is exactly one header.

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    /// A header is fixed-width: any 116 bytes decode, re-encode to
    /// themselves and seal to their own `sha256d`; any other length fails.
    #[test]
    fn any_116_bytes_are_one_header(
        bytes in prop::collection::vec(any::<u8>(), HEADER_SIZE),
        other in prop::collection::vec(any::<u8>(), 0..240),
    ) {
        let header = Header::from_bytes(&bytes).unwrap();
        prop_assert_eq!(&header.to_bytes()[..], &bytes[..]);
        prop_assert_eq!(decode_checked::<Header>(&bytes, HEADER_SIZE)?, Some(header));
        let sealed = header.seal();
        prop_assert_eq!(sealed.hash(), BlockHash(sha256d(&bytes)));
        prop_assert_eq!(sealed.into_header(), header);
        let result = Header::from_bytes(&other);
        if other.len() == HEADER_SIZE {
            prop_assert_eq!(&result.unwrap().to_bytes()[..], &other[..]);
        } else if other.len() > HEADER_SIZE {
            prop_assert_eq!(result, Err(CodecError::TooLarge { len: other.len(), max: HEADER_SIZE }));
        } else {
            prop_assert!(matches!(result, Err(CodecError::Malformed(_))));
        }
    }

    /// Header round trip, every prefix fails, and a changed byte is a
    /// different header with a different hash.
    #[test]
    fn headers_round_trip_and_every_change_is_a_different_header(
        header in arb_header(),
        at in any::<Index>(),
        flip in 1u8..=255,
    ) {
        let bytes = check_valid(&header, &[])?;
        prop_assert_eq!(bytes.len(), HEADER_SIZE);
        all_prefixes_fail::<Header>(&bytes)?;
        let mut changed = bytes.clone();
        changed[at.index(HEADER_SIZE)] ^= flip;
        let other = Header::from_bytes(&changed).unwrap();
        prop_assert_ne!(other, header);
        prop_assert_ne!(other.seal().hash(), header.seal().hash());
    }
}

// ---------------------------------------------------------------------------
// Transactions.

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn signed_transactions_round_trip_and_prefixes_fail(tx in arb_signed(), cuts in cuts()) {
        check_valid(&tx, &cuts)?;
        check_valid(&Transaction::Signed(tx), &cuts)?;
    }

    #[test]
    fn mutated_signed_transactions_decode_canonically_or_fail(
        tx in arb_signed(),
        mutations in mutations(),
    ) {
        check_mutated(&tx, &mutations)?;
        check_mutated(&Transaction::Signed(tx), &mutations)?;
    }

    #[test]
    fn coinbases_round_trip_and_every_prefix_fails(coinbase in arb_coinbase(), mutations in mutations()) {
        let bytes = check_valid(&Transaction::Coinbase(coinbase), &[])?;
        all_prefixes_fail::<Transaction>(&bytes)?;
        check_mutated(&Transaction::Coinbase(coinbase), &mutations)?;
    }

    #[test]
    fn fraud_claims_round_trip_and_mutations_decode_canonically_or_fail(
        claim in arb_claim(),
        cuts in cuts(),
        mutations in mutations(),
    ) {
        check_valid(&claim, &cuts)?;
        check_mutated(&claim, &mutations)?;
    }

    #[test]
    fn job_specs_round_trip_and_mutations_decode_canonically_or_fail(
        spec in arb_spec(),
        cuts in cuts(),
        mutations in mutations(),
    ) {
        check_valid(&spec, &cuts)?;
        check_mutated(&spec, &mutations)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    /// The signature covers every byte of the encoding: a changed encoding
    /// that still decodes never verifies (strict ed25519, so not even by a
    /// re-encoding of the same signature).
    #[test]
    fn a_changed_signed_transaction_never_verifies(
        tx in arb_really_signed(),
        mutations in mutations(),
    ) {
        tx.verify_signature(CHAIN_ID).unwrap();
        let valid = codec::encode(&tx).unwrap();
        let mut bytes = valid.clone();
        mutate(&mut bytes, &mutations);
        if let Some(changed) = decode_checked::<SignedTx>(&bytes, MAX_DECODE_BYTES)? {
            if bytes != valid {
                prop_assert!(changed.verify_signature(CHAIN_ID).is_err());
            }
        }
    }
}

/// One transaction of each kind, and each fraud claim, signed as a wallet
/// would: the seeds of the mutation properties below.
fn every_kind() -> &'static [SignedTx] {
    static TXS: std::sync::OnceLock<Vec<SignedTx>> = std::sync::OnceLock::new();
    TXS.get_or_init(wallet_transactions)
}

fn wallet_transactions() -> Vec<SignedTx> {
    let spec = common::spec();
    let leaves = common::honest_leaves(&JobId([5; 32]), &addr(&key(3)), &spec);
    let result = common::result_for(&spec, &leaves);
    let job = JobId(common::post_job(&key(1), 0, 1_000, 50).id().unwrap().0);
    vec![
        common::transfer(&key(1), 0, addr(&key(2)), 10, 1),
        common::post_job(&key(1), 1, 1_000, 50),
        common::submit_leaves(&key(3), 0, job, result, leaves.clone()),
        common::fraud_proof(
            &key(4),
            0,
            job,
            FraudClaim::InitialState {
                first: common::opened(&leaves, 0),
            },
        ),
        common::fraud_proof(&key(4), 1, job, common::segment_claim(&leaves, 5)),
        common::fraud_proof(
            &key(4),
            2,
            job,
            FraudClaim::Final {
                last: common::opened(&leaves, spec.segments),
            },
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// Wallet-made transactions of every kind, mutated: refused, or a
    /// canonical different transaction that does not verify.
    #[test]
    fn mutated_wallet_transactions_of_every_kind(
        which in any::<Index>(),
        mutations in mutations(),
    ) {
        let txs = every_kind();
        let tx = &txs[which.index(txs.len())];
        let chain_id = protocol::ChainParams::regtest().chain_id;
        tx.verify_signature(chain_id).unwrap();
        if let Some(changed) = check_mutated(tx, &mutations)? {
            if &changed != tx {
                prop_assert!(changed.verify_signature(chain_id).is_err());
            }
        }
    }

    /// A count or length written anywhere into a transaction, huge or not,
    /// is refused or decodes canonically, and never makes the decoder take
    /// what it announces.
    #[test]
    fn announced_lengths_in_transactions_are_not_allocated(
        which in any::<Index>(),
        at in any::<Index>(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 20)..(1u64 << 62), 0u64..100_000],
    ) {
        let txs = every_kind();
        let bytes = codec::encode(&txs[which.index(txs.len())]).unwrap();
        let at = at.index(bytes.len() - 8);
        check_announced::<SignedTx>(&bytes, at, announced)?;
    }
}

#[test]
fn every_kind_and_claim_round_trips_and_its_counts_are_where_the_layout_says() {
    let txs = every_kind();
    let tags: Vec<u32> = txs
        .iter()
        .map(|tx| {
            let bytes = codec::encode(tx).unwrap();
            assert_eq!(codec::decode::<SignedTx>(&bytes).unwrap(), *tx);
            for cut in 0..bytes.len() {
                assert!(
                    codec::decode::<SignedTx>(&bytes[..cut]).is_err(),
                    "{cut} bytes"
                );
            }
            // from (32) | nonce (8) | fee (8) | kind tag (4)
            u32::from_le_bytes(bytes[48..52].try_into().unwrap())
        })
        .collect();
    assert_eq!(tags, [0, 1, 2, 3, 3, 3]);
    // The SubmitResult's leaf count, announced as 2^40 with the real input
    // and a limit of its own length: refused without taking 2^40 leaves.
    let submit = codec::encode(&txs[2]).unwrap();
    // kind tag ends at 52 | job (32) | weights (32) | root (32) | loss (4)
    // | metric tag (4) | correct (4) | total (4) | leaf count (8)
    let count = 52 + 32 + 32 + 32 + 4 + 12;
    assert_eq!(
        u64::from_le_bytes(submit[count..count + 8].try_into().unwrap()),
        9
    );
    let mut hostile = submit.clone();
    hostile[count..count + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    let (result, largest) =
        largest_allocation(|| codec::decode_with_limit::<SignedTx>(&hostile, hostile.len()));
    assert!(
        matches!(result, Err(CodecError::Malformed(_))),
        "{result:?}"
    );
    assert!(largest <= allocation_bound(hostile.len()), "{largest}");
}

// ---------------------------------------------------------------------------
// Blocks.

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn blocks_round_trip_and_prefixes_and_extensions_fail(block in arb_block(), cuts in cuts()) {
        let bytes = check_valid(&block, &cuts)?;
        prop_assert_eq!(&bytes[..HEADER_SIZE], &block.header.to_bytes()[..]);
    }

    #[test]
    fn mutated_blocks_decode_canonically_or_fail(block in arb_block(), mutations in mutations()) {
        if let Some(changed) = check_mutated(&block, &mutations)? {
            // The header is the first 116 bytes of whatever decodes.
            let bytes = codec::encode(&changed).unwrap();
            prop_assert_eq!(changed.header, Header::from_bytes(&bytes[..HEADER_SIZE]).unwrap());
        }
    }

    /// A transaction count far beyond the input, under a limit of the
    /// input's length, is refused before the transactions are allocated.
    #[test]
    fn a_huge_transaction_count_is_refused_without_allocating_it(
        block in arb_block(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 32)..u64::MAX, 6u64..(1 << 32)],
        at in any::<Index>(),
    ) {
        let bytes = codec::encode(&block).unwrap();
        let mut hostile = bytes.clone();
        hostile[HEADER_SIZE..HEADER_SIZE + 8].copy_from_slice(&announced.to_le_bytes());
        let (result, largest) = largest_allocation(|| {
            codec::decode_with_limit::<Block>(&hostile, hostile.len())
        });
        prop_assert!(matches!(result, Err(CodecError::Malformed(_))), "{:?}", result);
        prop_assert!(largest <= allocation_bound(hostile.len()), "{} bytes", largest);
        check_announced::<Block>(&bytes, at.index(bytes.len() - 7), announced)?;
    }
}

// ---------------------------------------------------------------------------
// Job records (what the HTTP API and the raw client answers carry).

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn job_records_round_trip_and_mutations_decode_canonically_or_fail(
        record in arb_record(),
        cuts in cuts(),
        mutations in mutations(),
        at in any::<Index>(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 32)..u64::MAX],
    ) {
        let bytes = check_valid(&record, &cuts)?;
        check_mutated(&record, &mutations)?;
        check_announced::<JobRecord>(&bytes, at.index(bytes.len() - 7), announced)?;
    }
}

// ---------------------------------------------------------------------------
// Blob manifests and chunks.

/// What `check` must say of a manifest, from its fields.
fn manifest_verdict(manifest: &BlobManifest) -> Result<(), ManifestError> {
    let max = manifest.kind.max_bytes();
    if manifest.total > max {
        return Err(ManifestError::TooLarge {
            kind: manifest.kind,
            total: manifest.total,
            max,
        });
    }
    let expected = manifest.total.div_ceil(u64::from(BLOB_CHUNK_BYTES));
    if manifest.chunks.len() as u64 != expected {
        return Err(ManifestError::ChunkCount {
            got: manifest.chunks.len() as u64,
            total: manifest.total,
            expected,
        });
    }
    Ok(())
}

/// The largest encoding of a manifest that passes `check`: digest, kind
/// tag, length, chunk count and 32 bytes a chunk of the largest blob.
fn largest_checked_manifest() -> usize {
    let chunks = BlobKind::State
        .max_bytes()
        .div_ceil(u64::from(BLOB_CHUNK_BYTES));
    32 + 4 + 8 + 8 + 32 * chunks as usize
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn checked_manifests_round_trip_and_stay_small(manifest in arb_manifest(), cuts in cuts()) {
        prop_assert_eq!(manifest.check(), Ok(()));
        let bytes = check_valid(&manifest, &cuts)?;
        prop_assert!(bytes.len() <= largest_checked_manifest());
    }

    /// A mutated manifest is refused by the decoder, or decodes canonically
    /// and `check` accepts it exactly when its length fits its kind and its
    /// chunk list fits its length.
    #[test]
    fn mutated_manifests_decode_canonically_and_check_judges_them(
        manifest in arb_manifest(),
        mutations in mutations(),
    ) {
        if let Some(changed) = check_mutated(&manifest, &mutations)? {
            prop_assert_eq!(changed.check(), manifest_verdict(&changed));
            if changed.check().is_ok() {
                prop_assert!(codec::encode(&changed).unwrap().len() <= largest_checked_manifest());
            }
        }
    }

    /// A chunk count announced far beyond the input is refused without
    /// allocating it, under a limit as small as the input.
    #[test]
    fn a_huge_chunk_count_is_refused_without_allocating_it(
        manifest in arb_manifest(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 24)..u64::MAX, 161u64..(1 << 24)],
    ) {
        let bytes = codec::encode(&manifest).unwrap();
        // digest (32) | kind tag (4) | total (8) | chunk count (8)
        prop_assert_eq!(&bytes[44..52], &(manifest.chunks.len() as u64).to_le_bytes()[..]);
        let mut hostile = bytes.clone();
        hostile[44..52].copy_from_slice(&announced.to_le_bytes());
        let (result, largest) = largest_allocation(|| {
            codec::decode_with_limit::<BlobManifest>(&hostile, hostile.len())
        });
        prop_assert!(matches!(result, Err(CodecError::Malformed(_))), "{:?}", result);
        prop_assert!(largest <= allocation_bound(hostile.len()), "{} bytes", largest);
    }

    #[test]
    fn chunks_names_and_kinds_round_trip_and_mutations_decode_canonically_or_fail(
        chunk in arb_chunk(),
        name in arb_blob_name(),
        kind in arb_blob_kind(),
        cuts in cuts(),
        mutations in mutations(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 32)..u64::MAX],
    ) {
        let bytes = check_valid(&chunk, &cuts)?;
        check_mutated(&chunk, &mutations)?;
        // digest (32) | total (8) | offset (8) | byte count (8)
        check_announced::<BlobChunk>(&bytes, 48, announced)?;
        let name_bytes = check_valid(&name, &cuts)?;
        all_prefixes_fail::<BlobName>(&name_bytes)?;
        check_mutated(&name, &mutations)?;
        let kind_bytes = check_valid(&kind, &[])?;
        all_prefixes_fail::<BlobKind>(&kind_bytes)?;
        check_mutated(&kind, &mutations)?;
    }
}

// ---------------------------------------------------------------------------
// Arbitrary bytes, for every type above.

fn arbitrary_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        prop::collection::vec(any::<u8>(), 0..700),
        // Mostly small bytes: tags, counts and lengths that parse.
        prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..700),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_or_decode_canonically(
        bytes in arbitrary_input(),
        limit in prop_oneof![Just(MAX_DECODE_BYTES), 0usize..800, Just(usize::MAX)],
    ) {
        decode_checked::<Header>(&bytes, limit)?;
        decode_checked::<Transaction>(&bytes, limit)?;
        decode_checked::<SignedTx>(&bytes, limit)?;
        decode_checked::<Block>(&bytes, limit)?;
        decode_checked::<JobSpec>(&bytes, limit)?;
        decode_checked::<FraudClaim>(&bytes, limit)?;
        decode_checked::<JobRecord>(&bytes, limit)?;
        if let Some(manifest) = decode_checked::<BlobManifest>(&bytes, limit)? {
            prop_assert_eq!(manifest.check(), manifest_verdict(&manifest));
        }
        decode_checked::<BlobChunk>(&bytes, limit)?;
        decode_checked::<BlobName>(&bytes, limit)?;
        decode_checked::<BlobKind>(&bytes, limit)?;
    }
}

// ---------------------------------------------------------------------------
// Every serde shape, against bincode alone.

/// A value of every shape serde hands the codec, strings and maps included
/// (no consensus type holds a string, but peer messages do).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Shapes {
    text: String,
    maybe: Option<String>,
    texts: Vec<String>,
    boxed: Box<str>,
    map: BTreeMap<String, Vec<u16>>,
    nested: Vec<Vec<u8>>,
    choices: Vec<Choice>,
    wide: (i128, u128, char, bool, f64),
    unit: Unit,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Unit;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
enum Choice {
    Nothing,
    Text(String),
    Pair(u8, String),
    Named {
        list: Vec<u32>,
        note: Option<String>,
    },
}

fn arb_shapes() -> BoxedStrategy<Shapes> {
    let choice = prop_oneof![
        Just(Choice::Nothing),
        ".{0,8}".prop_map(Choice::Text),
        (any::<u8>(), ".{0,8}").prop_map(|(n, text)| Choice::Pair(n, text)),
        (
            prop::collection::vec(any::<u32>(), 0..4),
            prop::option::of(".{0,8}")
        )
            .prop_map(|(list, note)| Choice::Named { list, note }),
    ];
    (
        (".{0,12}", prop::option::of(".{0,8}")),
        prop::collection::vec(".{0,6}", 0..4),
        ".{0,6}",
        prop::collection::btree_map(".{0,4}", prop::collection::vec(any::<u16>(), 0..4), 0..3),
        prop::collection::vec(prop::collection::vec(any::<u8>(), 0..6), 0..4),
        prop::collection::vec(choice, 0..4),
        (
            any::<i128>(),
            any::<u128>(),
            any::<char>(),
            any::<bool>(),
            any::<f64>(),
        ),
    )
        .prop_map(
            |((text, maybe), texts, boxed, map, nested, choices, wide)| Shapes {
                text,
                maybe,
                texts,
                boxed: boxed.into_boxed_str(),
                map,
                nested,
                choices,
                wide,
                unit: Unit,
            },
        )
        .boxed()
}

/// Offsets of the eight-byte words in `bytes` small enough to be a length
/// or a count: where a hostile length is worth announcing.
fn length_words(bytes: &[u8]) -> Vec<usize> {
    (0..bytes.len().saturating_sub(7))
        .filter(|&at| {
            let word = u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap());
            word < 64
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Valid, mutated and hostile encodings of every serde shape decode
    /// through the codec exactly as through bincode alone (the same values
    /// from the same bytes, refused where it refuses), and an announced
    /// length anywhere costs no more than a bounded multiple of the input.
    #[test]
    fn every_serde_shape_decodes_as_bincode_alone_does(
        shapes in arb_shapes(),
        mutations in mutations(),
        at in any::<Index>(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 20)..(1 << 23), 1u64..(1 << 20)],
        limit in prop_oneof![Just(MAX_DECODE_BYTES), 0usize..400],
    ) {
        let bytes = codec::encode(&shapes).unwrap();
        let result = codec::decode::<Shapes>(&bytes);
        prop_assert_eq!(result.as_ref(), Ok(&shapes));
        agrees_with_bincode(&bytes, MAX_DECODE_BYTES, &result)?;
        agrees_with_bincode(&bytes, limit, &codec::decode_with_limit::<Shapes>(&bytes, limit))?;
        let mut mutated = bytes.clone();
        mutate(&mut mutated, &mutations);
        agrees_with_bincode(&mutated, MAX_DECODE_BYTES, &codec::decode::<Shapes>(&mutated))?;
        let words = length_words(&bytes);
        if !words.is_empty() {
            let at = words[at.index(words.len())];
            let mut hostile = bytes.clone();
            hostile[at..at + 8].copy_from_slice(&announced.to_le_bytes());
            let (result, largest) = largest_allocation(|| codec::decode::<Shapes>(&hostile));
            prop_assert!(
                largest <= allocation_bound(hostile.len()),
                "{} announced at byte {} of {}: an allocation of {} bytes",
                announced,
                at,
                hostile.len(),
                largest
            );
            agrees_with_bincode(&hostile, MAX_DECODE_BYTES, &result)?;
        }
    }
}

/// Every element type a decoder here collects into a sequence fits the
/// per-input-byte bound the allocation checks use.
#[test]
fn elements_fit_the_allocation_bound() {
    use std::mem::size_of;
    let sizes = [
        ("Transaction", size_of::<Transaction>()),
        ("SignedTx", size_of::<SignedTx>()),
        ("Block", size_of::<Block>()),
        ("Header", size_of::<Header>()),
        ("SegmentLeaf", size_of::<SegmentLeaf>()),
        ("OpenedLeaf", size_of::<OpenedLeaf>()),
        ("FraudClaim", size_of::<FraudClaim>()),
        ("Challenge", size_of::<Challenge>()),
        ("JobRecord", size_of::<JobRecord>()),
        ("Digest", size_of::<Digest>()),
        ("Choice", size_of::<Choice>()),
        ("String", size_of::<String>()),
    ];
    for (name, size) in sizes {
        assert!(
            size <= MEMORY_PER_INPUT_BYTE,
            "{name} is {size} bytes in memory, expected at most {MEMORY_PER_INPUT_BYTE}"
        );
    }
}
