//! Optimistic verification on four real regtest nodes on loopback, in
//! process. A, B and C audit at a fraction of 0.1, each challenging with a
//! funded key of its own; A mines.
//!
//! - A job whose dataset no peer holds is refused with a clear error; once
//!   the dataset is on A, B fetches it and admits the job.
//! - An honest result goes pending, is audited by all three (replaying a
//!   sample, not the job), and settles at the end of its window on every
//!   node with one weights digest: the worker gains the bounty and gets its
//!   bond back. Its weights serve predictions on a node that fetches them.
//! - A fraud proof against that honest result, while pending, replays one
//!   segment on every node, burns the challenger's bond, and the worker is
//!   still paid.
//! - A lazy worker faking the second half of its segments is caught before
//!   settlement: slashed, the challenger paid half its bond, the rest
//!   burned, the job reopened; an honest worker then fulfils it.
//! - A lazy worker faking only the last segment is caught by D, a node that
//!   joins later auditing everything.

use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use node::testkit::{init_test_logging, start_regtest_auditing, wait_until};
use protocol::api::ErrorCode;
use protocol::blob::BlobKind;
use protocol::params::faucet_key;
use protocol::state::{ChallengeOutcome, JobStatus, BURN_ADDRESS};
use protocol::{Address, Amount, ChainParams, JobId, TxKind};
use trainer::client::ClientError;

mod support;
use support::*;

fn json_of(args: &[&str]) -> anyhow::Result<serde_json::Value> {
    let output = Command::new(env!("CARGO_BIN_EXE_gradchain-node"))
        .args(args)
        .output()?;
    anyhow::ensure!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

const BOUNTY: u64 = 5_000;
const FUNDS: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn honest_results_settle_and_lazy_workers_are_slashed() -> anyhow::Result<()> {
    init_test_logging();
    let params = ChainParams::regtest();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let auditors = [key(0x41), key(0x42), key(0x43), key(0x44)];
    let worker = key(0x31);
    let lazy_worker = key(0x32);
    let liar = key(0x33);
    let miner_address = Address([0xa1; 32]);
    let a_node = start_regtest_auditing(
        dirs[0].path(),
        vec![],
        Some((miner_address, Duration::from_millis(200))),
        auditing(0.1, &auditors[0]),
    )
    .await?;
    let a_p2p = addr_of(&a_node)?;
    let a = api_of(&a_node)?;
    let b_node = start_regtest_auditing(
        dirs[1].path(),
        vec![a_p2p.clone()],
        None,
        auditing(0.1, &auditors[1]),
    )
    .await?;
    let b = api_of(&b_node)?;
    // C knows A and B, so it can fetch the states B serves.
    let c_node = start_regtest_auditing(
        dirs[2].path(),
        vec![a_p2p.clone(), addr_of(&b_node)?],
        None,
        auditing(0.1, &auditors[2]),
    )
    .await?;
    let c = api_of(&c_node)?;
    let nodes = [&a_node, &b_node, &c_node];
    wait_until("peers connected", WAIT, || {
        let (nb, nc) = (b_node.network().clone(), c_node.network().clone());
        async move { nb.peer_count() >= 1 && nc.peer_count() >= 2 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // Fund the auditors, the workers and a challenger who will be wrong.
    let funded: Vec<Address> = auditors
        .iter()
        .chain([&worker, &lazy_worker, &liar])
        .map(address)
        .collect();
    for (nonce, to) in funded.iter().enumerate() {
        let tx = sign(
            &faucet_key(),
            nonce as u64,
            FEE,
            TxKind::Transfer {
                to: *to,
                amount: Amount(FUNDS),
            },
        )?;
        submit(&a, tx).await?;
    }
    let mut faucet_nonce = funded.len() as u64;
    for node in nodes {
        let chain = node.chain().clone();
        let last = *funded.last().unwrap();
        wait_until("funds everywhere", WAIT, || {
            let chain = chain.clone();
            async move { matches!(chain.balance(last).await, Ok(b) if b.account.balance.0 == FUNDS) }
        })
        .await
        .map_err(anyhow::Error::msg)?;
    }

    // No node holds the dataset yet: the poster gets a clear error.
    let dataset = iris()?;
    let spec = iris_spec(&dataset, 30, 700_000, 24)?;
    let unheld = post(faucet_nonce, &spec, BOUNTY, 10_000)?;
    match call(&b, move |api| api.submit_tx(&unheld)).await? {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code), (400, ErrorCode::TxRejected));
            assert!(
                message.contains("does not hold dataset")
                    && message.contains(&spec.dataset.digest.to_string()),
                "{message}"
            );
        }
        other => anyhow::bail!("a job without data was admitted: {other:?}"),
    }
    put_blob(&a, BlobKind::Dataset, dataset.to_blob()).await?;
    // Each job its own base seed, so each has its own id and split.
    let post_job = |nonce: u64,
                    base_seed: u64|
     -> anyhow::Result<(JobId, protocol::SignedTx, protocol::JobSpec)> {
        let mut spec = spec.clone();
        spec.base_seed = base_seed;
        let tx = post(nonce, &spec, BOUNTY, 10_000)?;
        Ok((JobId::from(tx.id()?), tx, spec))
    };
    let (job, tx, spec) = post_job(faucet_nonce, 1)?;
    submit(&b, tx).await?;
    faucet_nonce += 1;
    assert!(b_node.blobs().has(&spec.dataset.digest));
    for node in nodes {
        wait_job(node, job, "the job on every node", |r| r.is_open()).await?;
    }

    // 1. The honest worker serves its states on B and submits there.
    let honest_claim = honest(&job, &address(&worker), &spec, &dataset)?;
    honest_claim.serve(&b).await?;
    submit(&b, honest_claim.tx(&worker, 0, job)?).await?;
    for node in nodes {
        wait_job(node, job, "the result pending everywhere", |r| {
            is_pending(r) || is_fulfilled(r)
        })
        .await?;
    }
    // 4. A challenger who is wrong: segment 5 of the honest result.
    let replays_before: Vec<u64> = nodes.iter().map(|n| n.replay().replays()).collect();
    let wrong = segment_claim(&honest_claim.leaves, 5)?;
    submit(
        &c,
        sign(&liar, 0, FEE, TxKind::FraudProof { job, claim: wrong })?,
    )
    .await?;
    for node in nodes {
        let record = wait_job(node, job, "the honest result settled", is_fulfilled).await?;
        let JobStatus::Fulfilled {
            worker: paid,
            result,
            ..
        } = record.status
        else {
            unreachable!()
        };
        assert_eq!(paid, address(&worker));
        assert_eq!(result.weights, honest_claim.result.weights);
        assert_eq!(record.challenges.len(), 1, "{:?}", record.challenges);
        assert_eq!(record.challenges[0].outcome, ChallengeOutcome::Refuted);
        assert_eq!(record.challenges[0].challenger, address(&liar));
        // Bounty gained, bond back, one fee paid.
        assert_eq!(balance(node, address(&worker)).await?, FUNDS + BOUNTY - FEE);
        // The refuted challenger lost its bond and its fee.
        assert_eq!(
            balance(node, address(&liar)).await?,
            FUNDS - params.fraud_proof_bond.0 - FEE
        );
    }
    for (node, before) in nodes.iter().zip(&replays_before) {
        assert!(
            node.replay().replays() > *before,
            "the fraud proof was judged without a replay"
        );
    }
    // Each auditor replayed a sample of the segments, not the job.
    for node in nodes {
        let stats = node.audit_stats();
        wait_until("an audit done", WAIT, || {
            let done = stats.audits.load(Ordering::Relaxed);
            async move { done >= 1 }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let replayed = stats.segments_replayed.load(Ordering::Relaxed);
        assert!(
            (1..=16).contains(&replayed),
            "an auditor at 0.1 replayed {replayed} of 64 segments"
        );
        assert_eq!(stats.fraud_proofs.load(Ordering::Relaxed), 0);
    }
    let view = json_of(&["rpc", "--node", c.url(), "job", &job.to_string(), "--json"])?;
    assert_eq!(view["status"], serde_json::json!("fulfilled"));
    assert_eq!(view["segments"], serde_json::json!(64));
    assert_eq!(
        view["challenges"][0]["outcome"],
        serde_json::json!("refuted")
    );
    assert!(
        view["pending_at"].is_u64() && view["settles_at"].is_u64(),
        "{view}"
    );
    assert_eq!(
        view["settles_at"].as_u64().unwrap() - view["pending_at"].as_u64().unwrap(),
        24
    );

    // Predictions from C, which fetches the weights from B.
    let outcome = trainer::train(
        &spec,
        &dataset,
        protocol::job::worker_seed(&job, &address(&worker), spec.base_seed),
        &mut |_| {},
    )?;
    let weights_path = dirs[1].path().join("weights.safetensors");
    outcome.model.save(&weights_path)?;
    put_blob(&b, BlobKind::Weights, std::fs::read(&weights_path)?).await?;
    let row: Vec<f32> = dataset.x()[..4].to_vec();
    let expected = trainer::predict(&outcome.model, &row)?;
    let rows = vec![row.clone()];
    let got = call(&c, move |api| api.predict(&job, rows))
        .await?
        .map_err(|e| anyhow::anyhow!("predict failed: {e}"))?;
    match (&got.predictions[0], &expected[0]) {
        (got, trainer::Prediction::Class { class: want, .. }) => {
            assert_eq!(got.class, Some(*want), "{got:?}")
        }
        other => anyhow::bail!("unexpected predictions {other:?}"),
    }

    // 2. A lazy worker, honest for 32 of 64 segments.
    let (lazy_job, tx, spec) = post_job(faucet_nonce, 2)?;
    submit(&a, tx).await?;
    faucet_nonce += 1;
    for node in nodes {
        wait_job(node, lazy_job, "the second job", |r| r.is_open()).await?;
    }
    let burned_before = balance(&a_node, BURN_ADDRESS).await?;
    let lazy_claim = lazy(&lazy_job, &address(&lazy_worker), &spec, &dataset, 32)?;
    lazy_claim.serve(&b).await?;
    submit(&b, lazy_claim.tx(&lazy_worker, 0, lazy_job)?).await?;
    let mut challenger = None;
    for node in nodes {
        let record = wait_job(node, lazy_job, "the lazy result caught", |r| {
            r.challenges
                .iter()
                .any(|c| c.outcome == ChallengeOutcome::Proven)
        })
        .await?;
        let proven = record
            .challenges
            .iter()
            .find(|c| c.outcome == ChallengeOutcome::Proven)
            .unwrap();
        assert_eq!(proven.worker, address(&lazy_worker));
        assert!(proven.segment > 32, "caught at segment {}", proven.segment);
        challenger = Some(proven.challenger);
    }
    let challenger = challenger.unwrap();
    assert!(
        funded[..3].contains(&challenger),
        "{challenger} is not an auditor"
    );
    let bond = spec.bond.0;
    for node in nodes {
        assert_eq!(
            balance(node, address(&lazy_worker)).await?,
            FUNDS - bond - FEE,
            "the lazy worker lost its bond"
        );
        assert_eq!(
            balance(node, BURN_ADDRESS).await?,
            burned_before + (bond - bond / 2),
            "half the bond burned"
        );
    }
    // The challenger got its bond back and half the worker's, less fees
    // (the least fee for each proof's size: under a thousand each, and at
    // most a few proofs).
    let challenger_balance = balance(&a_node, challenger).await?;
    assert!(
        challenger_balance >= FUNDS + bond / 2 - 5_000 && challenger_balance < FUNDS + bond / 2,
        "{challenger_balance}"
    );
    // The job took results again: an honest worker fulfils it.
    let fix = honest(&lazy_job, &address(&worker), &spec, &dataset)?;
    fix.serve(&a).await?;
    submit(&a, fix.tx(&worker, 1, lazy_job)?).await?;
    for node in nodes {
        let record = wait_job(node, lazy_job, "the reopened job fulfilled", is_fulfilled).await?;
        assert!(
            matches!(record.status, JobStatus::Fulfilled { worker: w, .. } if w == address(&worker))
        );
    }

    // 2b. One bad segment, the last; D audits everything.
    let d_node = start_regtest_auditing(
        dirs[3].path(),
        vec![a_p2p.clone()],
        None,
        auditing(1.0, &auditors[3]),
    )
    .await?;
    let (last_job, tx, spec) = post_job(faucet_nonce, 3)?;
    submit(&a, tx).await?;
    wait_job(&d_node, last_job, "the third job on D", |r| r.is_open()).await?;
    let sly = lazy(&last_job, &address(&lazy_worker), &spec, &dataset, 63)?;
    sly.serve(&a).await?;
    submit(&a, sly.tx(&lazy_worker, 1, last_job)?).await?;
    let record = wait_job(&d_node, last_job, "the last-segment cheat caught", |r| {
        r.challenges
            .iter()
            .any(|c| c.outcome == ChallengeOutcome::Proven)
    })
    .await?;
    assert!(record.is_open(), "{:?}", record.status);
    assert!(
        d_node
            .audit_stats()
            .segments_replayed
            .load(Ordering::Relaxed)
            >= 64
    );

    for node in [d_node, c_node, b_node, a_node] {
        node.stop().await;
    }
    Ok(())
}
