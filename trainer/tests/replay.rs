//! Reproducibility: the same job gives the same digest and segment leaves
//! whatever the thread count or entry point; a different seed or worker
//! gives another; a segment-by-segment replay through the verifier gives the
//! worker's bits.

mod common;

use common::{dataset_path, train_json};
use protocol::job::worker_seed;
use std::collections::HashMap;

use protocol::{Address, Digest, FinalOutcome, JobId, Judged, SegmentVerifier, TestMetric};
use trainer::{Dataset, DatasetLimits, ReplayVerifier, TaskKind, TrainSettings};

/// A small, fast job on iris with a penalty and segments, so that every
/// part of the engine is exercised.
fn small_settings() -> TrainSettings {
    TrainSettings {
        hidden: vec![16, 8],
        epochs: 5,
        batch: 16,
        l1: 1e-4,
        l2: 1e-3,
        segments: 7,
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
        "--hidden",
        "16,8",
        "--epochs",
        "5",
        "--batch",
        "16",
        "--l2",
        "0.001",
        "--segments",
        "7",
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
    assert_eq!(one["segments_root"], two["segments_root"]);
    assert_eq!(one["segments"], two["segments"]);
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
            "--segments",
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
        out["segments_root"].as_str().unwrap(),
        outcome.result.segments_root.to_hex()
    );
    let curve: Vec<f32> = out["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    assert_eq!(curve, outcome.segment_losses());
    // 105 training rows in batches of 16: 7 steps an epoch, 35 in all, in
    // 7 segments of 5.
    assert_eq!(outcome.steps, 35);
    assert_eq!(outcome.leaves.len(), 8);
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
fn regression_with_sgd_replays_exactly_segment_by_segment() {
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
        segments: 9,
        ..TrainSettings::default()
    };
    let spec = settings.job_spec(&ds).unwrap();
    let job = JobId([1; 32]);
    let worker = Address([2; 32]);
    let seed = worker_seed(&job, &worker, spec.base_seed);
    let mut blobs: HashMap<Digest, Vec<u8>> = HashMap::new();
    blobs.insert(ds.digest(), ds.to_blob());
    let honest = trainer::train_keeping_states(&spec, &ds, seed, &mut |_| {}, &mut |_, bytes| {
        blobs.insert(Digest(protocol::sha256(bytes)), bytes.to_vec());
    })
    .unwrap();
    assert!(matches!(honest.result.metric, TestMetric::Mse(m) if m.is_finite()));
    // 310 training rows in batches of 32: 10 steps an epoch, 30 in all.
    assert_eq!(honest.steps, 30);

    let verifier = ReplayVerifier::new(
        move |d: &Digest| blobs.get(d).cloned(),
        DatasetLimits::default(),
    );
    assert_eq!(
        verifier.initial_state(&job, &spec, &worker),
        Ok(Judged::Computed(honest.leaves[0].state))
    );
    for j in 1..=spec.segments {
        let prev = honest.leaves[j as usize - 1].state;
        assert_eq!(
            verifier.replay_segment(&job, &spec, &worker, j, &prev),
            Ok(Judged::Computed(honest.leaves[j as usize])),
            "segment {j}"
        );
    }
    let last = honest.leaves[spec.segments as usize].state;
    assert_eq!(
        verifier.final_result(&job, &spec, &worker, &last),
        Ok(Judged::Computed(FinalOutcome {
            weights: honest.result.weights,
            train_loss: honest.result.train_loss,
            metric: honest.result.metric,
        }))
    );
    // The same state replayed for another worker: S_0 differs, but from a
    // given state the replay does not depend on who asks.
    let other = Address([3; 32]);
    assert_ne!(
        verifier.initial_state(&job, &spec, &other),
        Ok(Judged::Computed(honest.leaves[0].state))
    );
    assert_eq!(
        verifier.replay_segment(&job, &spec, &other, 2, &honest.leaves[1].state),
        Ok(Judged::Computed(honest.leaves[2]))
    );
}
