//! The canonical codec: golden bytes that pin the wire and hash format of a
//! header, each transaction kind (fraud proofs included) and a block; round
//! trips; and decoding of arbitrary, truncated and oversized inputs, which
//! must return errors and never panic.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use proptest::prelude::*;
use protocol::codec::{self, CodecError, MAX_DECODE_BYTES};
use protocol::job::ENGINE_VERSION;
use protocol::segments::segments_root;
use protocol::{
    Acceptance, Activation, Address, Amount, Block, BlockHash, Coinbase, CompactTarget, DatasetRef,
    Digest, F32Bits, FraudClaim, Header, Height, JobId, JobResult, JobSpec, Loss, MerkleRoot,
    ModelSpec, OpenedLeaf, Optimizer, SegmentLeaf, Signature, SignedTx, Split, StateRoot, Task,
    TestMetric, Transaction, TxBody, TxKind, HEADER_SIZE, NONCE_OFFSET,
};

fn golden_header() -> Header {
    Header {
        version: 1,
        prev: BlockHash([0x11; 32]),
        merkle_root: MerkleRoot([0x22; 32]),
        state_root: StateRoot([0x33; 32]),
        time: 0x6955_b900,
        bits: CompactTarget(0x1e00_ffff),
        nonce: 0x0102_0304_0506_0708,
    }
}

fn golden_txs() -> Vec<(&'static str, Transaction)> {
    let k = key(1);
    let to = addr(&key(2));
    let transfer = transfer(&k, 3, to, 1_000, 7);
    let post = paying(post_job(&k, 4, 5_000, 100), &k, 10);
    let job = JobId::from(post.id().unwrap());
    let leaves = golden_leaves();
    let result = JobResult {
        weights: Digest([0x44; 32]),
        segments_root: segments_root(&leaves),
        train_loss: F32Bits::from_f32(0.125),
        metric: TestMetric::Accuracy {
            correct: 29,
            total: 30,
        },
    };
    let submit = paying(
        submit_leaves(&key(3), 0, job, result, leaves.clone()),
        &key(3),
        5,
    );
    let proof = paying(
        fraud_proof(&key(4), 0, job, segment_claim(&leaves, 3)),
        &key(4),
        5,
    );
    let coinbase = Coinbase {
        height: Height(9),
        miner: to,
        amount: Amount(5_000_000_000),
    };
    vec![
        ("coinbase", Transaction::Coinbase(coinbase)),
        ("transfer", Transaction::Signed(transfer)),
        ("post_job", Transaction::Signed(post)),
        ("submit_result", Transaction::Signed(submit)),
        ("fraud_proof", Transaction::Signed(proof)),
    ]
}

/// Nine leaves, as a job of eight segments commits to.
fn golden_leaves() -> Vec<SegmentLeaf> {
    (0u8..9)
        .map(|i| SegmentLeaf {
            state: Digest([0x60 + i; 32]),
            loss: F32Bits::from_f32(f32::from(i) / 8.0),
        })
        .collect()
}

/// Golden values: the full hex of the header, and the length and SHA-256
/// of each longer encoding. They change only with a deliberate format
/// change, which is a hard fork; a failing assertion prints the new values.
const HEADER_HEX: &str = "0100000011111111111111111111111111111111111111111111111111111111111111112222222222222222222222222222222222222222222222222222222222222222333333333333333333333333333333333333333333333333333333333333333300b95569ffff001e0807060504030201";
const TX_GOLDEN: [(&str, usize, &str); 5] = [
    (
        "coinbase",
        52,
        "90adfd6f2b954436236e6e819165608a8b70c12b3533d2045bfcc9bd73c3f55f",
    ),
    (
        "transfer",
        160,
        "8295be85aaa9551503b028dbec37d79331cde5cd6c9d6b5f5e9fe46ec5ab0363",
    ),
    (
        "post_job",
        280,
        "ca961b81fd38d52db4542a7ec854a7d5e31d7ae7e08acda9ed09d064a0c1ae78",
    ),
    (
        "submit_result",
        564,
        "e2f34bd4e31e4ce32730a321f6dc2e368a0ba3c840f075825ae9ed925567d856",
    ),
    (
        "fraud_proof",
        504,
        "a87e0bed3476ec1b036f00af1d9c75295ba300f298d8e999a58eb0d1212756b1",
    ),
];
const BLOCK_GOLDEN: (usize, &str) = (
    1684,
    "2fb09801e1cd213973f8ab64d65674552df5fb7698bdc0740343c57443911a02",
);

fn golden_block() -> Block {
    Block {
        header: golden_header(),
        txs: golden_txs().into_iter().map(|(_, tx)| tx).collect(),
    }
}

#[test]
fn header_golden_bytes_and_layout() {
    let header = golden_header();
    let bytes = codec::encode(&header).unwrap();
    assert_eq!(bytes.len(), HEADER_SIZE);
    assert_eq!(HEADER_SIZE, 116);
    assert_eq!(bytes, header.to_bytes());
    assert_eq!(hex::encode(&bytes), HEADER_HEX);
    assert_eq!(NONCE_OFFSET, 108);
    assert_eq!(
        &bytes[NONCE_OFFSET..],
        &0x0102_0304_0506_0708u64.to_le_bytes()
    );
    // The midstate hasher, which only rewrites the second block, agrees
    // with hashing the whole header.
    let mut hasher = header.hasher();
    for nonce in [0, 1, u64::MAX] {
        let mut h = header;
        h.nonce = nonce;
        assert_eq!(BlockHash(hasher.hash_with_nonce(nonce)), h.hash());
    }
    assert_eq!(Header::from_bytes(&bytes).unwrap(), header);
}

#[test]
fn transaction_golden_bytes() {
    assert_eq!(golden_txs().len(), TX_GOLDEN.len());
    for ((name, tx), (golden_name, len, digest)) in golden_txs().into_iter().zip(TX_GOLDEN) {
        assert_eq!(name, golden_name);
        let bytes = codec::encode(&tx).unwrap();
        assert_eq!(bytes.len(), len, "{name} length");
        assert_eq!(
            hex::encode(protocol::sha256(&bytes)),
            digest,
            "{name} bytes"
        );
        assert_eq!(
            codec::decode::<Transaction>(&bytes).unwrap(),
            tx,
            "{name} round trip"
        );
    }
}

#[test]
fn transfer_layout_is_as_documented() {
    let tx = transfer(&key(1), 3, addr(&key(2)), 1_000, 7);
    let bytes = codec::encode(&Transaction::Signed(tx.clone())).unwrap();
    // enum tag (u32) | from (32) | nonce (u64) | fee (u64) | kind tag (u32) | to (32) | amount (u64) | signature (64)
    assert_eq!(bytes.len(), 4 + 32 + 8 + 8 + 4 + 32 + 8 + 64);
    assert_eq!(&bytes[..4], &1u32.to_le_bytes());
    assert_eq!(&bytes[4..36], tx.body.from.as_bytes());
    assert_eq!(&bytes[36..44], &3u64.to_le_bytes());
    assert_eq!(&bytes[bytes.len() - 64..], &tx.signature.0);
}

#[test]
fn result_and_fraud_proof_layout_is_as_documented() {
    let txs = golden_txs();
    let leaves = golden_leaves();
    // Common prefix: enum tag (u32) | from (32) | nonce (u64) | fee (u64) | kind tag (u32).
    let kind = 4 + 32 + 8 + 8;
    // SubmitResult: job (32) | weights (32) | segments root (32) | train loss (f32 bits)
    // | metric tag (u32) | correct (u32) | total (u32) | leaf count (u64)
    // | leaves (state 32 | loss 4 each) | signature (64)
    let bytes = codec::encode(&txs[3].1).unwrap();
    assert_eq!(&bytes[kind..kind + 4], &2u32.to_le_bytes());
    let root = kind + 4 + 32 + 32;
    assert_eq!(&bytes[root..root + 32], segments_root(&leaves).as_bytes());
    let count = root + 32 + 4 + 12;
    assert_eq!(&bytes[count..count + 8], &9u64.to_le_bytes());
    assert_eq!(
        &bytes[count + 8..count + 8 + 32],
        leaves[0].state.as_bytes()
    );
    assert_eq!(bytes.len(), count + 8 + 9 * 36 + 64);
    // FraudProof: job (32) | claim tag (u32) | index (u32)
    // | prev: leaf (36) | path length (u64) | path (32 each) | leaf: the same | signature (64)
    let bytes = codec::encode(&txs[4].1).unwrap();
    assert_eq!(&bytes[kind..kind + 4], &3u32.to_le_bytes());
    let claim = kind + 4 + 32;
    assert_eq!(&bytes[claim..claim + 4], &1u32.to_le_bytes(), "Segment");
    assert_eq!(&bytes[claim + 4..claim + 8], &3u32.to_le_bytes(), "index");
    let prev = claim + 8;
    assert_eq!(&bytes[prev..prev + 32], leaves[2].state.as_bytes());
    let path = opened(&leaves, 2).path;
    assert_eq!(
        &bytes[prev + 36..prev + 44],
        &(path.len() as u64).to_le_bytes()
    );
    assert_eq!(&bytes[prev + 44..prev + 76], path[0].as_bytes());
    let opened_len = 36 + 8 + 32 * path.len();
    assert_eq!(bytes.len(), prev + 2 * opened_len + 64);
}

#[test]
fn block_golden_bytes() {
    let block = golden_block();
    let bytes = codec::encode(&block).unwrap();
    assert_eq!(
        (bytes.len(), hex::encode(protocol::sha256(&bytes)).as_str()),
        BLOCK_GOLDEN
    );
    assert_eq!(&bytes[..HEADER_SIZE], &block.header.to_bytes());
    assert_eq!(codec::decode::<Block>(&bytes).unwrap(), block);
}

fn arb_bytes32() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn arb_f32() -> impl Strategy<Value = F32Bits> {
    any::<u32>().prop_map(F32Bits)
}

fn arb_header() -> impl Strategy<Value = Header> {
    (
        any::<u32>(),
        arb_bytes32(),
        arb_bytes32(),
        arb_bytes32(),
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
}

fn arb_spec() -> impl Strategy<Value = JobSpec> {
    (
        (
            arb_bytes32(),
            any::<u32>(),
            any::<u32>(),
            prop::option::of(any::<u32>()),
        ),
        (
            any::<u16>(),
            any::<u16>(),
            prop::collection::vec(any::<u32>(), 0..5),
        ),
        (any::<bool>(), arb_f32(), arb_f32(), arb_f32(), arb_f32()),
        (
            arb_f32(),
            arb_f32(),
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            any::<u32>(),
        ),
        (any::<bool>(), any::<u32>(), arb_f32()),
        (any::<u64>(), any::<u32>()),
    )
        .prop_map(
            |(
                (digest, rows, features, classes),
                (validation, test, hidden),
                (adam, lr, b1, b2, eps),
                (l1, l2, batch, epochs, seed, segments),
                (accuracy, ppm, mse),
                (bond, challenge_window),
            )| JobSpec {
                dataset: DatasetRef {
                    digest: Digest(digest),
                    rows,
                    features,
                },
                task: match classes {
                    Some(classes) => Task::Classification { classes },
                    None => Task::Regression,
                },
                split: Split {
                    validation_permille: validation,
                    test_permille: test,
                },
                model: ModelSpec {
                    hidden,
                    activation: Activation::Relu,
                },
                loss: if classes.is_some() {
                    Loss::CrossEntropy
                } else {
                    Loss::Mse
                },
                optimizer: if adam {
                    Optimizer::Adam {
                        lr,
                        beta1: b1,
                        beta2: b2,
                        eps,
                    }
                } else {
                    Optimizer::Sgd { lr, momentum: b1 }
                },
                l1,
                l2,
                batch_size: batch,
                epochs,
                base_seed: seed,
                segments,
                engine_version: ENGINE_VERSION,
                acceptance: if accuracy {
                    Acceptance::MinAccuracy { ppm }
                } else {
                    Acceptance::MaxMse { mse }
                },
                bond: Amount(bond),
                challenge_window,
            },
        )
}

fn arb_leaf() -> impl Strategy<Value = SegmentLeaf> {
    (arb_bytes32(), arb_f32()).prop_map(|(state, loss)| SegmentLeaf {
        state: Digest(state),
        loss,
    })
}

fn arb_opened() -> impl Strategy<Value = OpenedLeaf> {
    (
        arb_leaf(),
        prop::collection::vec(arb_bytes32().prop_map(Digest), 0..13),
    )
        .prop_map(|(leaf, path)| OpenedLeaf { leaf, path })
}

fn arb_claim() -> impl Strategy<Value = FraudClaim> {
    prop_oneof![
        arb_opened().prop_map(|first| FraudClaim::InitialState { first }),
        (any::<u32>(), arb_opened(), arb_opened())
            .prop_map(|(index, prev, leaf)| FraudClaim::Segment { index, prev, leaf }),
        arb_opened().prop_map(|last| FraudClaim::Final { last }),
    ]
}

fn arb_kind() -> impl Strategy<Value = TxKind> {
    prop_oneof![
        (arb_bytes32(), any::<u64>()).prop_map(|(to, amount)| TxKind::Transfer {
            to: Address(to),
            amount: Amount(amount),
        }),
        (arb_spec(), any::<u64>(), any::<u64>()).prop_map(|(spec, bounty, expires)| {
            TxKind::PostJob {
                spec,
                bounty: Amount(bounty),
                expires_at: Height(expires),
            }
        }),
        (
            arb_bytes32(),
            arb_bytes32(),
            arb_bytes32(),
            arb_f32(),
            any::<u32>(),
            any::<u32>(),
            any::<bool>(),
            prop::collection::vec(arb_leaf(), 0..12),
        )
            .prop_map(
                |(job, w, root, loss, a, b, acc, leaves)| TxKind::SubmitResult {
                    job: JobId(job),
                    leaves,
                    result: JobResult {
                        weights: Digest(w),
                        segments_root: Digest(root),
                        train_loss: loss,
                        metric: if acc {
                            TestMetric::Accuracy {
                                correct: a,
                                total: b,
                            }
                        } else {
                            TestMetric::Mse(F32Bits(a))
                        },
                    },
                }
            ),
        (arb_bytes32(), arb_claim()).prop_map(|(job, claim)| TxKind::FraudProof {
            job: JobId(job),
            claim,
        }),
    ]
}

fn arb_signed() -> impl Strategy<Value = SignedTx> {
    (
        arb_bytes32(),
        any::<u64>(),
        any::<u64>(),
        arb_kind(),
        prop::collection::vec(any::<u8>(), 64),
    )
        .prop_map(|(from, nonce, fee, kind, sig)| SignedTx {
            body: TxBody {
                from: Address(from),
                nonce,
                fee: Amount(fee),
                kind,
            },
            signature: Signature(sig.try_into().unwrap()),
        })
}

fn arb_tx() -> impl Strategy<Value = Transaction> {
    prop_oneof![
        (any::<u64>(), arb_bytes32(), any::<u64>()).prop_map(|(h, m, a)| {
            Transaction::Coinbase(Coinbase {
                height: Height(h),
                miner: Address(m),
                amount: Amount(a),
            })
        }),
        arb_signed().prop_map(Transaction::Signed),
    ]
}

fn arb_block() -> impl Strategy<Value = Block> {
    (arb_header(), prop::collection::vec(arb_tx(), 0..6))
        .prop_map(|(header, txs)| Block { header, txs })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn header_round_trips(header in arb_header()) {
        let bytes = codec::encode(&header).unwrap();
        prop_assert_eq!(bytes.len(), HEADER_SIZE);
        prop_assert_eq!(&bytes[..], &header.to_bytes()[..]);
        prop_assert_eq!(codec::decode::<Header>(&bytes).unwrap(), header);
    }

    #[test]
    fn transactions_round_trip(tx in arb_tx()) {
        let bytes = codec::encode(&tx).unwrap();
        prop_assert_eq!(codec::decode::<Transaction>(&bytes).unwrap(), tx);
    }

    #[test]
    fn blocks_round_trip_and_truncations_fail(block in arb_block(), cut in any::<prop::sample::Index>()) {
        let bytes = codec::encode(&block).unwrap();
        prop_assert_eq!(codec::decode::<Block>(&bytes).unwrap(), block);
        let cut = cut.index(bytes.len());
        prop_assert!(codec::decode::<Block>(&bytes[..cut]).is_err());
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert_eq!(
            codec::decode::<Block>(&longer),
            Err(CodecError::TrailingBytes { consumed: bytes.len(), len: bytes.len() + 1 })
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(5000))]

    /// Arbitrary bytes never panic any decoder, and whatever decodes is
    /// canonical: re-encoding gives back exactly the input.
    #[test]
    fn arbitrary_bytes_decode_to_errors_or_canonical_values(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(header) = codec::decode::<Header>(&bytes) {
            prop_assert_eq!(codec::encode(&header).unwrap(), bytes.clone());
        }
        if let Ok(tx) = codec::decode::<Transaction>(&bytes) {
            prop_assert_eq!(codec::encode(&tx).unwrap(), bytes.clone());
        }
        if let Ok(block) = codec::decode::<Block>(&bytes) {
            prop_assert_eq!(codec::encode(&block).unwrap(), bytes.clone());
        }
        if let Ok(spec) = codec::decode::<JobSpec>(&bytes) {
            prop_assert_eq!(codec::encode(&spec).unwrap(), bytes.clone());
        }
        if let Ok(claim) = codec::decode::<FraudClaim>(&bytes) {
            prop_assert_eq!(codec::encode(&claim).unwrap(), bytes.clone());
        }
    }

    /// Mutating one byte of a valid transaction decodes to an error or to a
    /// different canonical value, never a panic.
    #[test]
    fn mutated_transactions_never_panic(tx in arb_tx(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = codec::encode(&tx).unwrap();
        let at = at.index(bytes.len());
        bytes[at] = byte;
        if let Ok(decoded) = codec::decode::<Transaction>(&bytes) {
            prop_assert_eq!(codec::encode(&decoded).unwrap(), bytes);
        }
    }
}

#[test]
fn oversized_inputs_are_rejected_before_decoding() {
    let huge = vec![0u8; MAX_DECODE_BYTES + 1];
    assert_eq!(
        codec::decode::<Block>(&huge),
        Err(CodecError::TooLarge {
            len: MAX_DECODE_BYTES + 1,
            max: MAX_DECODE_BYTES
        })
    );
    let header = codec::encode(&golden_header()).unwrap();
    let mut padded = header.clone();
    padded.push(0);
    assert!(matches!(
        Header::from_bytes(&padded),
        Err(CodecError::TooLarge { .. })
    ));
}

#[test]
fn a_block_claiming_a_huge_transaction_count_is_an_error() {
    let mut bytes = codec::encode(&golden_header()).unwrap();
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        codec::decode::<Block>(&bytes),
        Err(CodecError::Malformed(_))
    ));
}
