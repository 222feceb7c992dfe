//! Reproducibility and verification: the same job gives the same digest
//! whatever the thread count; a different seed or worker gives another; a
//! replay accepts an honest claim and rejects any altered field.

mod common;

use common::{dataset_path, train_json};
use protocol::job::worker_seed;
use protocol::{
    Address, Digest, F32Bits, JobId, JobResult, TestMetric, TrainingVerifier, VerifyError,
};
use trainer::{Dataset, DatasetLimits, ReplayVerifier, TaskKind, TrainSettings};

/// A small, fast job on iris with a penalty and checkpoints, so that every
/// part of the engine is exercised.
fn small_settings() -> TrainSettings {
    TrainSettings {
        hidden: vec![16, 8],
        epochs: 5,
        batch: 16,
        l1: 1e-4,
        l2: 1e-3,
        checkpoint_interval: 7,
        seed: 3,
        ..TrainSettings::default()
    }
}

fn iris() -> Dataset {
    Dataset::from_csv_file(
        &dataset_path("iris.csv"),
        TaskKind::Classification,
        &DatasetLimits::default(),
    )
    .expect("the shipped iris.csv parses")
}

#[test]
fn one_and_two_threads_give_the_same_digest() {
    let args = [
        "--hidden", "16,8", "--epochs", "5", "--batch", "16", "--l2", "0.001",
    ];
    let one = train_json(
        "iris.csv",
        "classification",
        &args,
        &[("RAYON_NUM_THREADS", "1")],
    );
    let two = train_json(
        "iris.csv",
        "classification",
        &args,
        &[("RAYON_NUM_THREADS", "2")],
    );
    assert_eq!(one["digest"], two["digest"]);
    assert_eq!(one["digest"].as_str().unwrap().len(), 64);
    assert_eq!(one["checkpoints"], two["checkpoints"]);
    assert_eq!(one["train_loss"], two["train_loss"]);
}

#[test]
fn cli_digest_equals_the_library_digest() {
    let out = train_json(
        "iris.csv",
        "classification",
        &[
            "--hidden",
            "16,8",
            "--epochs",
            "5",
            "--batch",
            "16",
            "--l1",
            "0.0001",
            "--l2",
            "0.001",
            "--checkpoint-interval",
            "7",
            "--seed",
            "3",
        ],
        &[],
    );
    let ds = iris();
    let spec = small_settings().job_spec(&ds).unwrap();
    let outcome = trainer::train(&spec, &ds, 3, &mut |_| {}).unwrap();
    assert_eq!(
        out["digest"].as_str().unwrap(),
        outcome.result.weights.to_hex()
    );
    assert_eq!(
        out["checkpoints"].as_str().unwrap(),
        outcome.result.checkpoints.to_hex()
    );
    // 105 training rows in batches of 16: 7 steps an epoch, 35 in all, a
    // checkpoint every 7.
    assert_eq!(outcome.steps, 35);
    assert_eq!(outcome.checkpoints.len(), 5);
}

#[test]
fn seed_and_worker_change_the_digest() {
    let ds = iris();
    let spec = small_settings().job_spec(&ds).unwrap();
    let run = |seed: u64| {
        trainer::train(&spec, &ds, seed, &mut |_| {})
            .unwrap()
            .result
    };
    let a = run(1);
    assert_eq!(a, run(1));
    assert_ne!(a.weights, run(2).weights);

    let job = JobId([5; 32]);
    let alice = worker_seed(&job, &Address([1; 32]), spec.base_seed);
    let bob = worker_seed(&job, &Address([2; 32]), spec.base_seed);
    assert_ne!(run(alice).weights, run(bob).weights);
}

#[test]
fn verify_accepts_the_honest_claim_and_rejects_any_change() {
    let ds = iris();
    let spec = small_settings().job_spec(&ds).unwrap();
    let job = JobId([7; 32]);
    let worker = Address([9; 32]);
    let seed = worker_seed(&job, &worker, spec.base_seed);
    let honest = trainer::train(&spec, &ds, seed, &mut |_| {})
        .unwrap()
        .result;

    let blob = ds.to_blob();
    let digest = ds.digest();
    let verifier = ReplayVerifier::new(
        move |d: &Digest| (*d == digest).then(|| blob.clone()),
        DatasetLimits::default(),
    );
    verifier.verify(&job, &spec, &worker, &honest).unwrap();

    // One flipped bit anywhere in the weights digest.
    for (byte, bit) in [(0usize, 0u8), (17, 3), (31, 7)] {
        let mut forged = honest;
        forged.weights.0[byte] ^= 1 << bit;
        assert_eq!(
            verifier.verify(&job, &spec, &worker, &forged),
            Err(VerifyError::WeightsMismatch {
                expected: honest.weights,
                got: forged.weights
            })
        );
    }
    let mut forged = honest;
    forged.checkpoints.0[4] ^= 0x10;
    assert!(matches!(
        verifier.verify(&job, &spec, &worker, &forged),
        Err(VerifyError::CheckpointsMismatch { .. })
    ));

    let mut forged = honest;
    forged.metric = match honest.metric {
        TestMetric::Accuracy { correct, total } => TestMetric::Accuracy {
            correct: correct.saturating_sub(1),
            total,
        },
        other => other,
    };
    assert_ne!(forged.metric, honest.metric);
    assert!(matches!(
        verifier.verify(&job, &spec, &worker, &forged),
        Err(VerifyError::MetricMismatch { .. })
    ));

    let mut forged: JobResult = honest;
    forged.train_loss = F32Bits(honest.train_loss.0 ^ 1);
    assert!(matches!(
        verifier.verify(&job, &spec, &worker, &forged),
        Err(VerifyError::MetricMismatch { .. })
    ));

    // A copied result does not verify for another worker.
    assert!(matches!(
        verifier.verify(&job, &spec, &Address([8; 32]), &honest),
        Err(VerifyError::WeightsMismatch { .. })
    ));

    // A dataset the verifier does not hold.
    let mut other = spec.clone();
    other.dataset.digest = Digest([0xAB; 32]);
    assert_eq!(
        verifier.verify(&job, &other, &worker, &honest),
        Err(VerifyError::DatasetUnavailable(Digest([0xAB; 32])))
    );
}

#[test]
fn regression_with_sgd_replays_exactly() {
    let ds = Dataset::from_csv_file(
        &dataset_path("diabetes.csv"),
        TaskKind::Regression,
        &DatasetLimits::default(),
    )
    .unwrap();
    let settings = TrainSettings {
        hidden: vec![8],
        epochs: 3,
        optimizer: trainer::OptimizerKind::Sgd,
        lr: Some(0.01),
        l1: 1e-3,
        ..TrainSettings::default()
    };
    let spec = settings.job_spec(&ds).unwrap();
    let job = JobId([1; 32]);
    let worker = Address([2; 32]);
    let seed = worker_seed(&job, &worker, spec.base_seed);
    let honest = trainer::train(&spec, &ds, seed, &mut |_| {})
        .unwrap()
        .result;
    assert!(matches!(honest.metric, TestMetric::Mse(m) if m.is_finite()));
    trainer::verify(&spec, &job, &worker, &ds, &honest).unwrap();
    let mut forged = honest;
    forged.metric = TestMetric::Mse(F32Bits::from_f32(1.0));
    assert!(matches!(
        trainer::verify(&spec, &job, &worker, &ds, &forged),
        Err(VerifyError::MetricMismatch { .. })
    ));
}
