//! The trainer's network commands fail clearly when the node cannot be
//! reached or the arguments are wrong: one error line naming the problem
//! and a non-zero exit, never a panic. (The commands working against real
//! nodes is tested in node/tests/jobs_cli.rs, which starts the nodes.)

use std::process::Command;

/// Writes a key file readable by its owner only, as `keygen` does.
fn write_key(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?
        .write_all(text.as_bytes())
}

/// A loopback port nothing listens on: bound, then released.
fn dead_addr() -> anyhow::Result<String> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    drop(listener);
    Ok(format!("http://127.0.0.1:{port}"))
}

fn run(args: &[&str]) -> anyhow::Result<(bool, String)> {
    run_env(args, &[])
}

fn run_env(args: &[&str], env: &[(&str, &str)]) -> anyhow::Result<(bool, String)> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gradchain-trainer"));
    command
        .args(args)
        .env_remove("GRADCHAIN_NODE")
        .env_remove("GRADCHAIN_HTTP_TOKEN_FILE");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command.output()?;
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn an_unreachable_node_is_a_clear_error() -> anyhow::Result<()> {
    let node = dead_addr()?;
    let csv = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/iris.csv");
    let (ok, stderr) = run(&[
        "dataset",
        "put",
        "--node",
        &node,
        csv,
        "--task",
        "classification",
    ])?;
    assert!(!ok);
    assert!(stderr.contains("cannot reach node at"), "{stderr}");

    let key = std::env::temp_dir().join(format!("gradchain-net-cli-{}.key", std::process::id()));
    write_key(&key, &format!("{}\n", "11".repeat(32)))?;
    let (ok, stderr) = run(&[
        "work",
        "--node",
        &node,
        "--key",
        &key.display().to_string(),
        "--once",
        "--unreachable-secs",
        "0",
    ])?;
    let _ = std::fs::remove_file(&key);
    assert!(!ok);
    assert!(
        stderr.contains("giving up after 0s") && stderr.contains("cannot reach node"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn bad_arguments_are_one_clear_line() -> anyhow::Result<()> {
    let node = dead_addr()?;
    let (ok, stderr) = run(&["predict", "--node", &node, "--job", "zz", "--input", "1,2"])?;
    assert!(!ok);
    assert!(
        stderr.contains("job id \"zz\" is not 64 hex characters"),
        "{stderr}"
    );

    let job = "ab".repeat(32);
    let (ok, stderr) = run(&["predict", "--node", &node, "--job", &job, "--input", "1,x"])?;
    assert!(!ok);
    assert!(stderr.contains("\"x\" is not a number"), "{stderr}");

    let missing = std::env::temp_dir().join("gradchain-no-such-key-file");
    let (ok, stderr) = run(&[
        "job",
        "post",
        "--node",
        &node,
        "--key",
        &missing.display().to_string(),
        "--dataset",
        &job,
        "--bounty",
        "5",
    ])?;
    assert!(!ok);
    assert!(
        stderr.contains("key file") && stderr.contains("gradchain-no-such-key-file"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn the_node_comes_from_the_environment_and_a_multiaddr_is_refused() -> anyhow::Result<()> {
    let node = dead_addr()?;
    let job = "ab".repeat(32);
    let (ok, stderr) = run_env(
        &["predict", "--job", &job, "--input", "1,2"],
        &[("GRADCHAIN_NODE", &node)],
    )?;
    assert!(!ok);
    assert!(
        stderr.contains(&format!("cannot reach node at {node}")),
        "{stderr}"
    );

    let (ok, stderr) = run(&[
        "predict",
        "--node",
        "/ip4/127.0.0.1/tcp/9700",
        "--job",
        &job,
        "--input",
        "1,2",
    ])?;
    assert!(!ok);
    assert!(stderr.contains("expected http://HOST:PORT"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");

    let missing = std::env::temp_dir().join("gradchain-no-such-token-file");
    let (ok, stderr) = run_env(
        &["predict", "--node", &node, "--job", &job, "--input", "1,2"],
        &[("GRADCHAIN_HTTP_TOKEN_FILE", &missing.display().to_string())],
    )?;
    assert!(!ok);
    assert!(
        stderr.contains("HTTP token file") && stderr.contains("gradchain-no-such-token-file"),
        "{stderr}"
    );
    Ok(())
}

#[test]
fn logs_on_a_pipe_are_plain_text_or_json_lines() -> anyhow::Result<()> {
    let node = dead_addr()?;
    let key = std::env::temp_dir().join(format!("gradchain-net-log-{}.key", std::process::id()));
    write_key(&key, &format!("{}\n", "22".repeat(32)))?;
    let key_arg = key.display().to_string();
    let work = |format: &str| {
        run_env(
            &[
                "--log-format",
                format,
                "work",
                "--node",
                &node,
                "--key",
                &key_arg,
                "--once",
                "--unreachable-secs",
                "0",
            ],
            &[("RUST_LOG", "info")],
        )
    };
    let text = work("text");
    let json = work("json");
    let _ = std::fs::remove_file(&key);
    let (ok, stderr) = text?;
    assert!(!ok);
    assert!(stderr.contains("worker started"), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "a colour code on a pipe: {stderr:?}"
    );

    let (ok, stderr) = json?;
    assert!(!ok);
    let mut logged = 0;
    for line in stderr.lines().filter(|l| !l.starts_with("error: ")) {
        let value: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| anyhow::anyhow!("not a JSON line ({e}): {line:?}"))?;
        assert!(value["level"].is_string(), "{line}");
        logged += 1;
    }
    assert!(logged >= 1, "{stderr}");
    assert!(stderr.contains("\"worker started\""), "{stderr}");
    Ok(())
}
