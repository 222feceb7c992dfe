//! Helpers shared by the trainer's integration tests: the shipped datasets
//! and running the `gradchain-trainer` binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// A shipped dataset, by file name.
pub fn dataset_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("datasets")
        .join(name)
}

/// Runs the trainer binary with `args` and extra environment variables.
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gradchain-trainer"));
    cmd.args(args).env("RUST_LOG", "warn");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the trainer binary runs")
}

/// Runs `train --json` on a shipped dataset and returns the parsed object.
pub fn train_json(
    dataset: &str,
    task: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> serde_json::Value {
    let path = dataset_path(dataset);
    let path = path.to_str().expect("utf-8 path");
    let mut args = vec!["train", "--data", path, "--task", task, "--json"];
    args.extend_from_slice(extra);
    let out = run_cli(&args, env);
    assert!(
        out.status.success(),
        "train failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one JSON line: {stdout}"
    );
    serde_json::from_str(stdout.trim()).expect("valid JSON")
}
