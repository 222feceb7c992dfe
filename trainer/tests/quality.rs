//! Quality on the shipped datasets with the CLI's defaults (only `--data`,
//! `--task` and `--json` given), through the real binary.

mod common;

use common::{dataset_path, train_json};
use trainer::{Dataset, DatasetLimits, TaskKind};

#[test]
fn digits_test_accuracy_is_at_least_095() {
    let out = train_json("digits.csv", "classification", &[], &[]);
    let accuracy = out["test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.95, "digits test accuracy {accuracy}");
    assert_eq!(out["test_total"], 359);
}

#[test]
fn iris_test_accuracy_is_at_least_09() {
    let out = train_json("iris.csv", "classification", &[], &[]);
    let accuracy = out["test_accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "iris test accuracy {accuracy}");
}

#[test]
fn diabetes_beats_predicting_the_train_mean() {
    let out = train_json("diabetes.csv", "regression", &[], &[]);
    let mse = out["test_mse"].as_f64().unwrap();

    // The baseline on the same split (the CLI's default seed is 0).
    let ds = Dataset::from_csv_file(
        &dataset_path("diabetes.csv"),
        TaskKind::Regression,
        &DatasetLimits::default(),
    )
    .unwrap();
    let p = trainer::prep::prepare(&ds, &trainer::settings::DEFAULT_SPLIT, 0).unwrap();
    let mean = p
        .train
        .raw_targets
        .iter()
        .map(|v| f64::from(*v))
        .sum::<f64>()
        / p.train.rows as f64;
    let baseline = p
        .test
        .raw_targets
        .iter()
        .map(|v| (f64::from(*v) - mean).powi(2))
        .sum::<f64>()
        / p.test.rows as f64;
    eprintln!("diabetes test mse {mse}, predicting the train mean gives {baseline}");
    assert!(
        mse < baseline,
        "test mse {mse}, predicting the train mean gives {baseline}"
    );
}
