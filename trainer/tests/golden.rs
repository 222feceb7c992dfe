//! One fixed training digest per engine version: a tiny job on the shipped
//! iris dataset, trained by the library, must give the weights digest,
//! segments root, last-epoch loss and test metric written below. A change
//! to the engine that moves a single bit of a result is a consensus change:
//! it must come with a new `ENGINE_VERSION` and a new vector here, never
//! with a silently different result under the old version number.

mod common;

use common::dataset_path;
use protocol::job::ENGINE_VERSION;
use protocol::{
    Acceptance, Activation, Amount, DatasetRef, F32Bits, JobSpec, Loss, ModelSpec, Optimizer,
    Split, Task, TestMetric,
};
use trainer::{Dataset, DatasetLimits, TaskKind};

/// What one engine version produces for [`golden_spec`].
struct EngineVector {
    engine_version: u32,
    weights: &'static str,
    segments_root: &'static str,
    /// Bits of the last epoch's mean training loss.
    train_loss: u32,
    /// Test rows classified correctly, of the split's 30.
    test_correct: u32,
}

/// The vector of the engine this chain runs. When `ENGINE_VERSION` moves,
/// train [`golden_spec`] with the new engine and write its values here
/// under the new version.
const ENGINE: EngineVector = EngineVector {
    engine_version: 2,
    weights: "2abe7404d88a92a51be21d9ebedd22fe48c0a1df6b43bd485572e755bef8545b",
    segments_root: "567b616042fa29449a73ad889afc9928b9ce23c882e5882551d2818199cec6c0",
    // 0.95971024
    train_loss: 0x3f75_af92,
    test_correct: 25,
};

/// SHA-256 of the canonical blob of `datasets/iris.csv`: the dataset the
/// vector is trained on, so that a change to CSV parsing shows here first.
const IRIS_DIGEST: &str = "852a85ab482a322d08945e0b644261e68158b1398631dad3f51a1e63d5da34e5";

/// The training seed (a worker's seed on chain). Equal to the base seed, so
/// that `gradchain-trainer train --data datasets/iris.csv --task
/// classification --hidden 8 --epochs 2 --batch 16 --lr 0.01 --l2 0.001
/// --segments 8 --seed 11` trains the same job through the CLI.
const SEED: u64 = 11;

fn iris() -> Dataset {
    Dataset::from_csv_file(
        &dataset_path("iris.csv"),
        TaskKind::Classification,
        &DatasetLimits::default(),
    )
    .expect("the shipped iris.csv parses")
}

/// Written out field by field, so that no default of the trainer's settings
/// can move the vector: one hidden layer of 8, Adam, an L2 penalty, batches
/// of 16 over 105 training rows for 2 epochs (14 steps) in 8 segments.
fn golden_spec(dataset: DatasetRef) -> JobSpec {
    JobSpec {
        dataset,
        task: Task::Classification { classes: 3 },
        split: Split {
            validation_permille: 100,
            test_permille: 200,
        },
        model: ModelSpec {
            hidden: vec![8],
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
        epochs: 2,
        base_seed: 11,
        segments: 8,
        engine_version: ENGINE_VERSION,
        acceptance: Acceptance::MinAccuracy { ppm: 0 },
        bond: Amount(10_000),
        challenge_window: 24,
    }
}

#[test]
fn the_engine_version_has_a_vector() {
    assert_eq!(
        ENGINE_VERSION, ENGINE.engine_version,
        "ENGINE_VERSION is {ENGINE_VERSION} but the golden training vector is for version {}: \
         train golden_spec with the new engine and record its digest under the new version",
        ENGINE.engine_version
    );
}

#[test]
fn iris_dataset_digest() {
    let ds = iris();
    assert_eq!((ds.rows(), ds.features()), (150, 4));
    assert_eq!(ds.task(), Task::Classification { classes: 3 });
    assert_eq!(ds.digest().to_hex(), IRIS_DIGEST);
}

#[test]
fn fixed_job_trains_to_the_engine_vector() {
    let ds = iris();
    let spec = golden_spec(ds.dataset_ref());
    let outcome = trainer::train(&spec, &ds, SEED, &mut |_| {}).expect("the golden job trains");
    assert_eq!(outcome.steps, 14);
    assert_eq!(outcome.leaves.len(), 9);
    let version = ENGINE.engine_version;
    assert_eq!(
        outcome.result.weights.to_hex(),
        ENGINE.weights,
        "weights digest, engine version {version}"
    );
    assert_eq!(
        outcome.result.segments_root.to_hex(),
        ENGINE.segments_root,
        "segments root, engine version {version}"
    );
    assert_eq!(
        outcome.result.train_loss,
        F32Bits(ENGINE.train_loss),
        "training loss ({}), engine version {version}",
        outcome.result.train_loss
    );
    assert_eq!(
        outcome.result.metric,
        TestMetric::Accuracy {
            correct: ENGINE.test_correct,
            total: 30
        },
        "test metric, engine version {version}"
    );
}
