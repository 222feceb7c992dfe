//! Golden vectors: the consensus hashes of fixed inputs, written here as hex
//! constants, so that a change to any of them (a silent hard fork) fails a
//! test instead of agreeing with itself.
//!
//! The constants were computed by `scripts/golden-vectors.py`, which
//! rebuilds the bytes from the written format with Python's hashlib and its
//! own ed25519 signer and calls no Rust. [`python_recomputes_every_vector`]
//! runs that script again and compares its output with the same constants,
//! so the Rust code, the script and this table must all agree.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use ed25519_dalek::SigningKey;
use protocol::job::worker_seed;
use protocol::segments::segments_root;
use protocol::state::{Challenge, ChallengeOutcome, JobRecord, JobStatus};
use protocol::{
    merkle_root, Acceptance, Account, Activation, Address, Amount, ChainParams, DatasetRef, Digest,
    F32Bits, Height, JobId, JobResult, JobSpec, Loss, ModelSpec, Optimizer, SegmentLeaf, Split,
    State, Task, TestMetric, TxBody, TxId, TxKind,
};

/// Every vector, by the name the script prints it under. Changing one is a
/// hard fork: only a deliberate format change may, together with the script.
const VECTORS: [(&str, &str); 13] = [
    (
        "transfer_signature",
        "0d53d7df20d15948eed6b70f472e39806f1197c1d9327dd3692c76ed637d9480da83ecd4998fc2c2175f517b0933abee6c990ec8fa40d4916e5f47629c028d0f",
    ),
    (
        "transfer_txid",
        "012ff859507470431806be190d91dc2a4acee1f45abbb2709ddbcaff3a3cb1a8",
    ),
    (
        "merkle_root_0",
        "1cc3adea40ebfd94433ac004777d68150cce9db4c771bc7de1b297a7b795bbba",
    ),
    (
        "merkle_root_1",
        "44cf874abb7d10b323d5f6bf5bd4a5f25e3fe3d27fc74d59d7c258f4e5ed35c4",
    ),
    (
        "merkle_root_2",
        "634225789db294776c658cad7461e8570bcfd4bfb467b562c4706830ed66629d",
    ),
    (
        "merkle_root_3",
        "04f6781a5a05026ae8df010d333af84e2b90a17ed645dd7e659d0d67b14c5a05",
    ),
    (
        "merkle_root_7",
        "0e7d852f77ed580dfa091ad0aa9ec866ef0bf7719d7702e2429911c19f083adf",
    ),
    (
        "segments_root_9",
        "0cefa6dfc21c2a3dc66d0fe220f5ccb603ef4e9e916cd40a0a982005ef092703",
    ),
    (
        "state_root_accounts",
        "fda203806c201add8eec7007c4e5931cbe215624c2aba34ed6df7ae06a93a34d",
    ),
    (
        "state_root_with_jobs",
        "1bd9b685732e5791e72c908b088a39b02a1a0ac59da7c38f075e348d17104f83",
    ),
    (
        "genesis_devnet",
        "5a4ef6500b8cc97df98c892785ffb3658db1acf65a0b9449b6897c9a230c57a9",
    ),
    (
        "genesis_regtest",
        "e7ed2a8e632350e452f5ca1e572983ede45a31133b342256bca00d439e880b6a",
    ),
    ("worker_seed", "6ca9d827a96a97a3"),
];

fn golden(name: &str) -> &'static str {
    VECTORS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, v)| *v)
        .unwrap_or_else(|| panic!("no golden vector named {name}"))
}

/// The transfer the txid vector is taken over: key seed `[0x11; 32]`,
/// nonce 7, fee 3, 1,000,000 units to `[0x22; 32]`, signed for devnet.
fn golden_transfer() -> protocol::SignedTx {
    TxBody {
        from: Address::ZERO,
        nonce: 7,
        fee: Amount(3),
        kind: TxKind::Transfer {
            to: Address([0x22; 32]),
            amount: Amount(1_000_000),
        },
    }
    .sign(
        &SigningKey::from_bytes(&[0x11; 32]),
        ChainParams::devnet().chain_id,
    )
    .unwrap()
}

fn ids(n: u8) -> Vec<TxId> {
    (0..n).map(|i| TxId([i; 32])).collect()
}

fn golden_spec() -> JobSpec {
    JobSpec {
        dataset: DatasetRef {
            digest: Digest([0x07; 32]),
            rows: 150,
            features: 4,
        },
        task: Task::Classification { classes: 3 },
        split: Split {
            validation_permille: 100,
            test_permille: 200,
        },
        model: ModelSpec {
            hidden: vec![16, 8],
            activation: Activation::Relu,
        },
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Adam {
            lr: F32Bits::from_f32(0.01),
            beta1: F32Bits::from_f32(0.9),
            beta2: F32Bits::from_f32(0.999),
            eps: F32Bits::from_f32(1e-8),
        },
        l1: F32Bits::from_f32(0.0),
        l2: F32Bits::from_f32(0.001),
        batch_size: 16,
        epochs: 20,
        base_seed: 42,
        segments: 8,
        // Written out, not `ENGINE_VERSION`: the vector is of these bytes.
        engine_version: 2,
        acceptance: Acceptance::MinAccuracy { ppm: 900_000 },
        bond: Amount(30_000),
        challenge_window: 24,
    }
}

/// Two accounts, given out of address order, and optionally two jobs (one
/// open, one pending with a refuted challenge), also out of id order.
fn golden_state(with_jobs: bool) -> State {
    let accounts = [
        (
            Address([0x02; 32]),
            Account {
                balance: Amount(5),
                nonce: 3,
            },
        ),
        (
            Address([0x01; 32]),
            Account {
                balance: Amount(1_000),
                nonce: 0,
            },
        ),
    ];
    let open = JobRecord {
        poster: Address([0x09; 32]),
        spec: golden_spec(),
        bounty: Amount(1_000),
        posted_at: Height(3),
        expires_at: Height(50),
        status: JobStatus::Open,
        challenges: Vec::new(),
    };
    let pending = JobRecord {
        poster: Address([0x0a; 32]),
        spec: golden_spec(),
        bounty: Amount(2_000),
        posted_at: Height(4),
        expires_at: Height(60),
        status: JobStatus::Pending {
            worker: Address([0x0b; 32]),
            result: JobResult {
                weights: Digest([0x44; 32]),
                segments_root: Digest([0x55; 32]),
                train_loss: F32Bits::from_f32(0.125),
                metric: TestMetric::Accuracy {
                    correct: 29,
                    total: 30,
                },
            },
            tx: TxId([0x0c; 32]),
            height: Height(6),
            settles_at: Height(30),
            bond: Amount(30_000),
        },
        challenges: vec![Challenge {
            challenger: Address([0x0d; 32]),
            worker: Address([0x0b; 32]),
            segment: 3,
            tx: TxId([0x0e; 32]),
            height: Height(7),
            outcome: ChallengeOutcome::Refuted,
        }],
    };
    let jobs = if with_jobs {
        vec![(JobId([0x31; 32]), open), (JobId([0x30; 32]), pending)]
    } else {
        Vec::new()
    };
    State::from_entries(accounts, jobs)
}

#[test]
fn genesis_hashes_of_both_chains() {
    for (params, name) in [
        (ChainParams::devnet(), "genesis_devnet"),
        (ChainParams::regtest(), "genesis_regtest"),
    ] {
        let genesis = params.genesis_block().unwrap();
        assert_eq!(genesis.hash().to_hex(), golden(name), "{name}");
        // The header's own fields, which the script writes out by hand.
        assert_eq!(genesis.header.version, 1, "{name}");
        assert_eq!(genesis.header.time, 1_767_225_600, "{name}");
        assert_eq!(genesis.header.nonce, 0, "{name}");
    }
}

#[test]
fn merkle_roots_of_0_1_2_3_and_7_leaves() {
    for n in [0u8, 1, 2, 3, 7] {
        let name = format!("merkle_root_{n}");
        assert_eq!(merkle_root(&ids(n)).to_hex(), golden(&name), "{name}");
    }
}

#[test]
fn txid_of_a_fixed_signed_transfer() {
    let tx = golden_transfer();
    assert_eq!(
        tx.body.from,
        Address::from_verifying_key(&SigningKey::from_bytes(&[0x11; 32]).verifying_key())
    );
    tx.verify_signature(ChainParams::devnet().chain_id).unwrap();
    assert_eq!(hex::encode(tx.signature.0), golden("transfer_signature"));
    assert_eq!(tx.id().unwrap().to_hex(), golden("transfer_txid"));
}

#[test]
fn segments_root_of_nine_leaves() {
    let leaves: Vec<SegmentLeaf> = (0u8..9)
        .map(|i| SegmentLeaf {
            state: Digest([0x60 + i; 32]),
            loss: F32Bits::from_f32(f32::from(i) / 8.0),
        })
        .collect();
    assert_eq!(segments_root(&leaves).to_hex(), golden("segments_root_9"));
}

#[test]
fn state_root_of_a_small_fixed_state() {
    assert_eq!(
        golden_state(false).root().unwrap().to_hex(),
        golden("state_root_accounts")
    );
    assert_eq!(
        golden_state(true).root().unwrap().to_hex(),
        golden("state_root_with_jobs")
    );
}

#[test]
fn worker_seed_for_fixed_inputs() {
    let seed = worker_seed(&JobId([0x05; 32]), &Address([0x06; 32]), 42);
    assert_eq!(format!("{seed:016x}"), golden("worker_seed"));
}

#[test]
fn python_recomputes_every_vector() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let output = match Command::new("python3")
        .arg("scripts/golden-vectors.py")
        .current_dir(&root)
        .output()
    {
        Ok(output) => output,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            println!("SKIP: python3 not found, the independent vectors were not recomputed");
            return;
        }
        Err(err) => panic!("cannot run python3: {err}"),
    };
    assert!(
        output.status.success(),
        "scripts/golden-vectors.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let mut printed = BTreeMap::new();
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let (name, value) = line
            .split_once(' ')
            .unwrap_or_else(|| panic!("malformed line from the script: {line:?}"));
        assert!(
            printed.insert(name, value).is_none(),
            "{name} printed twice"
        );
    }
    let expected: BTreeMap<&str, &str> = VECTORS.iter().copied().collect();
    assert_eq!(
        printed.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the script and this test name different vectors"
    );
    for (name, value) in &expected {
        assert_eq!(printed[name], *value, "{name}: script vs constant");
    }
}
