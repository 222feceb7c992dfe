//! The command line's offline parts: `keygen` prints the address alone on
//! its line and refuses to overwrite, and `bench hash` prints both rates and
//! their ratio.

use std::process::Command;

fn node_cli(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gradchain-node"))
        .args(args)
        .output()
        .expect("run gradchain-node")
}

#[test]
fn keygen_prints_the_address_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("wallet.key");
    let path = path.to_str().expect("utf-8 path");
    let output = node_cli(&["keygen", "--out", path]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.trim_end_matches('\n');
    assert_eq!(line.len(), 64, "{stdout:?}");
    assert!(line
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    let key = node::keys::load_signing_key(std::path::Path::new(path)).expect("key loads");
    assert_eq!(
        protocol::Address::from_verifying_key(&key.verifying_key()).to_string(),
        line
    );

    let again = node_cli(&["keygen", "--out", path]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("already exists"), "{stderr}");
}

#[test]
fn bench_hash_prints_both_rates_and_the_ratio() {
    let output = node_cli(&["bench", "hash", "--threads", "1", "--seconds", "0.2"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("sha2 naive"), "{stdout}");
    assert!(stdout.contains("sha2 midstate"), "{stdout}");
    let ratio = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ratio midstate/naive"))
        .and_then(|r| r.trim().trim_end_matches('x').parse::<f64>().ok())
        .expect("a ratio line");
    assert!(ratio > 0.0, "{stdout}");
    let miner = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ratio miner/naive"))
        .and_then(|r| r.trim().trim_end_matches('x').parse::<f64>().ok())
        .expect("a miner ratio line");
    assert!(miner > 0.0, "{stdout}");
    let bad = node_cli(&["bench", "hash", "--seconds", "0"]);
    assert!(!bad.status.success());
}
