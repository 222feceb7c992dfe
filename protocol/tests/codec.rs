//! The canonical codec: golden bytes that pin the wire and hash format of a
//! header, each transaction kind and a block; round trips; and decoding of
//! arbitrary, truncated and oversized inputs, which must return errors and
//! never panic.
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
use protocol::{
    Acceptance, Activation, Address, Amount, Block, BlockHash, Coinbase, CompactTarget, DatasetRef,
    Digest, F32Bits, Header, Height, JobId, JobResult, JobSpec, Loss, MerkleRoot, ModelSpec,
    Optimizer, Signature, SignedTx, Split, StateRoot, Task, TestMetric, Transaction, TxBody,
    TxKind, HEADER_SIZE, NONCE_OFFSET,
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
    let post = post_job(&k, 4, 5_000, 100);
    let job = JobId::from(post.id().unwrap());
    let result = JobResult {
        weights: Digest([0x44; 32]),
        checkpoints: Digest([0x55; 32]),
        train_loss: F32Bits::from_f32(0.125),
        metric: TestMetric::Accuracy {
            correct: 29,
            total: 30,
        },
    };
    let submit = submit(&key(3), 0, job, result);
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
    ]
}

/// Golden values: the full hex of the header, and the length and SHA-256
/// of each longer encoding. They change only with a deliberate format
/// change, which is a hard fork; a failing assertion prints the new values.
const HEADER_HEX: &str = "0100000011111111111111111111111111111111111111111111111111111111111111112222222222222222222222222222222222222222222222222222222222222222333333333333333333333333333333333333333333333333333333333333333300b95569ffff001e0807060504030201";
const TX_GOLDEN: [(&str, usize, &str); 4] = [
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
        268,
        "e2e6d78b4ddab1366bc595defe35f9919166cbffe2a48eeb04b4ce626ddb6d13",
    ),
    (
        "submit_result",
        232,
        "c90d1b0c9b1d7c1b71175c852c245122fbe2b3efe27d493c9710ffdd8ee2aacf",
    ),
];
const BLOCK_GOLDEN: (usize, &str) = (
    836,
    "5dfd5050d8cf2c911baadb559544c04a33acb165fa871d6ac31bf7b2c3dd5608",
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
    )
        .prop_map(
            |(
                (digest, rows, features, classes),
                (validation, test, hidden),
                (adam, lr, b1, b2, eps),
                (l1, l2, batch, epochs, seed, checkpoint),
                (accuracy, ppm, mse),
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
                checkpoint_interval: checkpoint,
                engine_version: ENGINE_VERSION,
                acceptance: if accuracy {
                    Acceptance::MinAccuracy { ppm }
                } else {
                    Acceptance::MaxMse { mse }
                },
            },
        )
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
            any::<bool>()
        )
            .prop_map(|(job, w, c, loss, a, b, acc)| TxKind::SubmitResult {
                job: JobId(job),
                result: JobResult {
                    weights: Digest(w),
                    checkpoints: Digest(c),
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
