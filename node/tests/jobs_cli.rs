//! The mission's loop end to end with the real `gradchain-trainer` binary
//! against three regtest nodes on loopback, through their HTTP APIs:
//! `dataset put` digits on one
//! node, `job post` with a bounty and `--min-accuracy 0.9`, `work --once`
//! on another node trains, serves its training states and submits with a
//! bond, the result goes pending and settles at the end of its window,
//! every node shows the job fulfilled with the same weights digest, the
//! worker is paid the bounty and its bond back (less its fee), and
//! `predict` on a third node returns the labels of a few rows.
//!
//! The trainer binary is found next to this test's target dir
//! (`target/<profile>/gradchain-trainer`); `cargo test --workspace` builds
//! it, `cargo test -p gradchain-node` alone needs `cargo build -p
//! gradchain-trainer` first.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::params::faucet_key;
use protocol::state::JobStatus;
use protocol::{Address, Amount, Digest, JobId};
use trainer::client::NodeClient;

const WAIT: Duration = Duration::from_secs(300);

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

fn trainer_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| anyhow::anyhow!("cannot find the target dir from {}", exe.display()))?;
    let bin = profile_dir.join("gradchain-trainer");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run `cargo build -p gradchain-trainer` (or `cargo test --workspace`) first",
        bin.display()
    );
    Ok(bin)
}

fn run_ok(bin: &PathBuf, args: &[&str]) -> anyhow::Result<String> {
    let output: Output = Command::new(bin).args(args).output()?;
    anyhow::ensure!(
        output.status.success(),
        "{} {:?} failed: {}",
        bin.display(),
        args,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

fn last_line(text: &str) -> String {
    text.lines().last().unwrap_or_default().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn digits_job_posted_trained_verified_paid_and_served() -> anyhow::Result<()> {
    init_test_logging();
    let trainer = trainer_bin()?;
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let miner = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(200))),
    )
    .await?;
    let a = miner
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let b_node = start_regtest(dirs[1].path(), vec![a.clone()], None).await?;
    let c_node = start_regtest(dirs[2].path(), vec![a.clone()], None).await?;
    let api = |node: &node::RunningNode| {
        node.http_url()
            .ok_or_else(|| anyhow::anyhow!("the node serves no HTTP API"))
    };
    let (a_url, b, c) = (api(&miner)?, api(&b_node)?, api(&c_node)?);
    wait_until("peers connected", WAIT, || {
        let (nb, nc) = (b_node.network().clone(), c_node.network().clone());
        async move { nb.peer_count() >= 1 && nc.peer_count() >= 1 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let poster_key = dirs[0].path().join("poster.key");
    write_key(
        &poster_key,
        &format!("{}\n", hex::encode(faucet_key().to_bytes())),
    )?;
    let worker_seed = [0x41u8; 32];
    let worker_key = dirs[2].path().join("worker.key");
    write_key(&worker_key, &format!("{}\n", hex::encode(worker_seed)))?;
    let worker = Address::from_verifying_key(
        &ed25519_dalek::SigningKey::from_bytes(&worker_seed).verifying_key(),
    );
    let digits = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/digits.csv");
    // The worker needs coins for its bond (the bounty, by default).
    const FUNDS: u64 = 20_000;
    let params = protocol::ChainParams::regtest();
    let fund = protocol::TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(500),
        kind: protocol::TxKind::Transfer {
            to: worker,
            amount: Amount(FUNDS),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    let client = NodeClient::new(&a_url)?;
    tokio::task::spawn_blocking(move || client.submit_tx(&fund))
        .await?
        .map_err(|e| anyhow::anyhow!("funding refused: {e}"))?;
    wait_until("the worker funded on C", WAIT, || {
        let chain = c_node.chain().clone();
        async move { matches!(chain.balance(worker).await, Ok(b) if b.account.balance.0 == FUNDS) }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // 1. put digits on B.
    let out = run_ok(
        &trainer,
        &[
            "dataset",
            "put",
            "--node",
            &b,
            digits,
            "--task",
            "classification",
        ],
    )?;
    let dataset = last_line(&out);
    assert_eq!(dataset.len(), 64, "{out}");
    assert!(b_node.blobs().has(&Digest(hex_digest(&dataset)?)));

    // 2. post a job with a bounty and --min-accuracy 0.9 on B.
    let out = run_ok(
        &trainer,
        &[
            "job",
            "post",
            "--node",
            &b,
            "--key",
            &poster_key.display().to_string(),
            "--dataset",
            &dataset,
            "--hidden",
            "32",
            "--epochs",
            "10",
            "--lr",
            "0.01",
            "--batch",
            "32",
            "--bounty",
            "7000",
            "--min-accuracy",
            "0.9",
        ],
    )?;
    let job = JobId(hex_digest(&last_line(&out))?);

    // 3. a worker on C trains it and submits.
    let mut work: Child = Command::new(&trainer)
        .args([
            "work",
            "--node",
            &c,
            "--key",
            &worker_key.display().to_string(),
            "--once",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut status = None;
    let waited = wait_until("the worker to finish", WAIT, || {
        status = work.try_wait().ok().flatten();
        let done = status.is_some();
        async move { done }
    })
    .await;
    if waited.is_err() {
        let _ = work.kill();
    }
    let output = work.wait_with_output()?;
    waited.map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        output.status.success(),
        "worker failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // 4-6. mined; fulfilled everywhere with the same weights; worker paid.
    let mut weights = Vec::new();
    for node in [&miner, &b_node, &c_node] {
        let chain = node.chain().clone();
        wait_until("the job fulfilled", WAIT, || {
            let chain = chain.clone();
            async move {
                matches!(chain.job(job).await,
                    Ok(Some(r)) if matches!(r.status, JobStatus::Fulfilled { .. }))
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let record = node
            .chain()
            .job(job)
            .await?
            .ok_or_else(|| anyhow::anyhow!("job gone"))?;
        let JobStatus::Fulfilled {
            worker: paid,
            result,
            tx,
            ..
        } = record.status
        else {
            anyhow::bail!("job {job} is not fulfilled: {:?}", record.status);
        };
        assert_eq!(paid, worker);
        weights.push(result.weights);
        // `work` priced its result at the chain's minimum for its size.
        let submitted = node
            .chain()
            .transaction(tx)
            .await?
            .ok_or_else(|| anyhow::anyhow!("result transaction {tx} not found"))?;
        let protocol::Transaction::Signed(submitted) = submitted.tx else {
            anyhow::bail!("result transaction {tx} is a coinbase");
        };
        let least = params
            .min_fee(submitted.encoded_len()?)
            .unwrap_or(Amount(u64::MAX));
        assert_eq!(submitted.body.fee, least, "the least fee for its size");
        let balance = node.chain().balance(worker).await?;
        assert_eq!(
            balance.account.balance,
            Amount(FUNDS + 7000 - least.0),
            "bounty paid, bond returned, one fee"
        );
    }
    assert_eq!(weights.len(), 3);
    assert!(
        weights.windows(2).all(|w| w.first() == w.last()),
        "{weights:?}"
    );

    // 7. predict on A returns the labels of a few rows.
    let text = std::fs::read_to_string(digits)?;
    let mut args = vec![
        "predict".to_owned(),
        "--node".to_owned(),
        a_url.clone(),
        "--job".to_owned(),
        job.to_string(),
        "--json".to_owned(),
    ];
    let mut labels = Vec::new();
    for line in text.lines().skip(1).take(5) {
        let (features, label) = line
            .rsplit_once(',')
            .ok_or_else(|| anyhow::anyhow!("bad csv line"))?;
        args.push("--input".into());
        args.push(features.to_owned());
        labels.push(label.trim().parse::<u64>()?);
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_ok(&trainer, &refs)?;
    let json: serde_json::Value = serde_json::from_str(last_line(&out).as_str())?;
    let predicted: Vec<u64> = json["predictions"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no predictions in {json}"))?
        .iter()
        .filter_map(|p| p["class"].as_u64())
        .collect();
    assert_eq!(predicted, labels, "{json}");
    assert_eq!(
        json["predictions"][0]["probabilities"]
            .as_array()
            .map(Vec::len),
        Some(10)
    );

    // A row of the wrong width is a clear error.
    let bad = Command::new(&trainer)
        .args([
            "predict",
            "--node",
            &a_url,
            "--job",
            &job.to_string(),
            "--input",
            "1,2,3",
        ])
        .output()?;
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("has 3 values, expected 64"), "{stderr}");

    for node in [c_node, b_node, miner] {
        node.stop().await;
    }
    Ok(())
}

fn hex_digest(text: &str) -> anyhow::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|_| anyhow::anyhow!("{text:?} is not 64 hex characters"))?;
    Ok(bytes)
}
