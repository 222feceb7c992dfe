//! The trainer CLI's contract: `train --json` prints one object with the
//! keys scripts rely on, `--out` writes loadable weights with the same
//! digest, and bad flags or files give one error line and a non-zero exit.

mod common;

use common::{dataset_path, run_cli, train_json};

#[test]
fn json_has_the_contract_keys_and_out_writes_the_same_weights() {
    let dir = std::env::temp_dir().join(format!("gradchain-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = dir.join("iris.safetensors");
    let out = train_json(
        "iris.csv",
        "classification",
        &[
            "--epochs",
            "2",
            "--hidden",
            "8",
            "--segments",
            "8",
            "--out",
            weights.to_str().unwrap(),
        ],
        &[],
    );
    for key in [
        "digest",
        "segments_root",
        "segments",
        "train_loss",
        "test_accuracy",
        "params",
        "steps",
        "seconds",
    ] {
        assert!(out.get(key).is_some(), "missing {key} in {out}");
    }
    assert_eq!(out["params"], 4 * 8 + 8 + 8 * 3 + 3);
    assert_eq!(out["steps"], 2 * 4);
    assert_eq!(out["segments_root"].as_str().unwrap().len(), 64);
    // The loss curve: one mean loss per segment, each finite and positive.
    let curve = out["segments"].as_array().unwrap();
    assert_eq!(curve.len(), 8);
    assert!(curve.iter().all(|l| l.as_f64().unwrap() > 0.0));
    let model = trainer::TrainedModel::load(&weights).unwrap();
    assert_eq!(
        model.digest().unwrap().to_hex(),
        out["digest"].as_str().unwrap()
    );
    let predictions = trainer::predict(&model, &[5.1, 3.5, 1.4, 0.2]).unwrap();
    assert_eq!(predictions.len(), 1);
    std::fs::remove_dir_all(&dir).unwrap();

    let reg = train_json(
        "diabetes.csv",
        "regression",
        &["--epochs", "1", "--segments", "10"],
        &[],
    );
    assert!(reg["test_mse"].as_f64().unwrap() > 0.0);
    assert!(reg.get("test_accuracy").is_none());
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let out = run_cli(args, &[]);
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
    assert!(
        stderr.contains(needle),
        "{args:?}: {stderr:?} lacks {needle:?}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_flags_and_files_give_one_error_line() {
    let iris = dataset_path("iris.csv");
    let iris = iris.to_str().unwrap();
    assert_one_line_error(
        &["train", "--data", iris, "--task", "clustering"],
        "clustering",
    );
    assert_one_line_error(
        &[
            "train",
            "--data",
            iris,
            "--task",
            "classification",
            "--lr",
            "fast",
        ],
        "fast",
    );
    assert_one_line_error(
        &[
            "train",
            "--data",
            iris,
            "--task",
            "classification",
            "--lr",
            "-1",
        ],
        "lr",
    );
    assert_one_line_error(
        &[
            "train",
            "--data",
            iris,
            "--task",
            "classification",
            "--hidden",
            "8,x",
        ],
        "layer width",
    );
    assert_one_line_error(
        &[
            "train",
            "--data",
            iris,
            "--task",
            "classification",
            "--batch",
            "0",
        ],
        "batch",
    );
    assert_one_line_error(
        &[
            "train",
            "--data",
            iris,
            "--task",
            "classification",
            "--loss",
            "mse",
        ],
        "loss",
    );
    assert_one_line_error(
        &[
            "train",
            "--data",
            "/nonexistent/x.csv",
            "--task",
            "regression",
        ],
        "/nonexistent/x.csv",
    );
    assert_one_line_error(&["train", "--task", "regression"], "--data");
    // Iris with 2 epochs has 8 steps: 9 segments cannot each have one.
    assert_one_line_error(
        &[
            "train",
            "--data",
            iris,
            "--task",
            "classification",
            "--epochs",
            "2",
            "--segments",
            "9",
        ],
        "segments",
    );

    let dir = std::env::temp_dir().join(format!("gradchain-cli-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ragged = dir.join("ragged.csv");
    std::fs::write(&ragged, "a,b,y\n1,2,0\n3,1\n").unwrap();
    assert_one_line_error(
        &[
            "train",
            "--data",
            ragged.to_str().unwrap(),
            "--task",
            "classification",
        ],
        "row 2",
    );
    let label = dir.join("label.csv");
    std::fs::write(&label, "a,y\n1,0\n2,1.5\n").unwrap();
    assert_one_line_error(
        &[
            "train",
            "--data",
            label.to_str().unwrap(),
            "--task",
            "classification",
        ],
        "column 2 (y)",
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
