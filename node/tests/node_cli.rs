//! The command line's local parts: `keygen` prints the address alone on
//! its line and refuses to overwrite, `bench hash` prints both rates and
//! their ratio, and `run` logs plain text (no colour codes) or JSON lines
//! when its stderr is not a terminal.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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

/// Runs a regtest node with `extra` flags, RUST_LOG set to `rust_log` (or
/// unset) and stderr on a pipe until it logs that its HTTP API listens;
/// returns the lines it logged.
fn run_until_listening(extra: &[&str], rust_log: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut command = Command::new(env!("CARGO_BIN_EXE_gradchain-node"));
    match rust_log {
        Some(filter) => command.env("RUST_LOG", filter),
        None => command.env_remove("RUST_LOG"),
    };
    let mut child = command
        .args(["run", "--chain", "regtest", "--data-dir"])
        .arg(dir.path())
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--http", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gradchain-node");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = Vec::new();
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.contains("HTTP API listening");
                lines.push(line);
                if done {
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        lines.iter().any(|l| l.contains("HTTP API listening")),
        "the node never said its HTTP API listens: {lines:#?}"
    );
    lines
}

#[test]
fn logs_on_a_pipe_are_plain_text_or_json_lines() {
    // An empty RUST_LOG (what the compose file passes when none is set)
    // leaves the node's default filter, which logs at info.
    let text = run_until_listening(&[], Some(""));
    for line in &text {
        assert!(
            !line.contains('\u{1b}'),
            "a colour code on a pipe: {line:?}"
        );
    }
    assert!(text.iter().any(|l| l.contains(" INFO ")), "{text:#?}");

    let json = run_until_listening(&["--log-format", "json"], None);
    for line in &json {
        let value: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert!(value["level"].is_string(), "{line}");
        assert!(value["fields"].is_object(), "{line}");
    }
}
