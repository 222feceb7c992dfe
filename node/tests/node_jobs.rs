//! Training jobs on three real nodes on loopback, in process: a job whose
//! dataset no peer holds is refused with a clear error; once the dataset is
//! put on one node, another fetches it over the blob protocol and admits the
//! job; forged results (flipped digest bit, inflated metric, a result copied
//! to another worker, a missed threshold) are refused by every node with the
//! replay's reason and never mined; an honest result is mined, paid once and
//! serves predictions on a node that fetches the weights from a peer; and
//! `rpc job --json` shows it fulfilled.

use std::process::Command;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use node::rpc_client;
use node::testkit::{init_test_logging, start_regtest, wait_until};
use node::RunningNode;
use protocol::job::worker_seed;
use protocol::params::faucet_key;
use protocol::rpc::{BlobKind, PredictionOut, RpcErrorCode, RpcRequest, RpcResponse};
use protocol::state::JobStatus;
use protocol::{
    Acceptance, Address, Amount, ChainParams, F32Bits, Height, JobId, JobResult, JobSpec,
    TestMetric, TxBody, TxKind,
};
use trainer::{Dataset, DatasetLimits, TaskKind, TrainSettings};

const TIMEOUT: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_secs(120);

fn iris() -> anyhow::Result<Dataset> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/iris.csv");
    Ok(Dataset::from_csv_file(
        std::path::Path::new(path),
        TaskKind::Classification,
        &DatasetLimits::default(),
    )?)
}

fn iris_spec(dataset: &Dataset, epochs: u32, ppm: u32) -> anyhow::Result<JobSpec> {
    let settings = TrainSettings {
        hidden: vec![16],
        epochs,
        batch: 16,
        ..TrainSettings::default()
    };
    let mut spec = settings.job_spec(dataset)?;
    spec.acceptance = Acceptance::MinAccuracy { ppm };
    Ok(spec)
}

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

async fn ask(addr: &Multiaddr, request: RpcRequest) -> anyhow::Result<RpcResponse> {
    Ok(rpc_client::call(addr, &request, TIMEOUT).await?)
}

fn addr_of(node: &RunningNode) -> anyhow::Result<Multiaddr> {
    node.p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))
}

/// Submits `tx` and returns the node's refusal message; fails if accepted.
async fn refused(addr: &Multiaddr, tx: protocol::SignedTx) -> anyhow::Result<String> {
    match ask(addr, RpcRequest::SubmitTx(tx)).await? {
        RpcResponse::Error(err) => {
            anyhow::ensure!(err.code == RpcErrorCode::TxRejected, "{err:?}");
            Ok(err.message)
        }
        other => anyhow::bail!("expected a refusal, got {other:?}"),
    }
}

fn result_tx(
    key: &SigningKey,
    job: JobId,
    result: JobResult,
    params: &ChainParams,
) -> anyhow::Result<protocol::SignedTx> {
    Ok(TxBody {
        from: Address::ZERO,
        nonce: 0,
        fee: Amount(1),
        kind: TxKind::SubmitResult { job, result },
    }
    .sign(key, params.chain_id)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_need_their_dataset_forged_results_are_refused_and_honest_ones_pay(
) -> anyhow::Result<()> {
    init_test_logging();
    let params = ChainParams::regtest();
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
    let a = addr_of(&miner)?;
    let b_node = start_regtest(dirs[1].path(), vec![a.clone()], None).await?;
    let c_node = start_regtest(dirs[2].path(), vec![a.clone()], None).await?;
    let b = addr_of(&b_node)?;
    let c = addr_of(&c_node)?;
    let nodes = [&miner, &b_node, &c_node];
    let addrs = [a.clone(), b.clone(), c.clone()];
    wait_until("peers connected", WAIT, || {
        let (nb, nc) = (b_node.network().clone(), c_node.network().clone());
        async move { nb.peer_count() >= 1 && nc.peer_count() >= 1 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let dataset = iris()?;
    let spec = iris_spec(&dataset, 30, 700_000)?;
    let post = |nonce: u64, spec: JobSpec| {
        TxBody {
            from: params.faucet,
            nonce,
            fee: Amount(10),
            kind: TxKind::PostJob {
                spec,
                bounty: Amount(5_000),
                expires_at: Height(1_000),
            },
        }
        .sign(&faucet_key(), params.chain_id)
    };

    // No node holds the dataset yet: the poster gets a clear error.
    let message = refused(&b, post(0, spec.clone())?).await?;
    assert!(
        message.contains("does not hold dataset")
            && message.contains(&spec.dataset.digest.to_string()),
        "{message}"
    );

    // Put it on the miner; B fetches it over the blob protocol to admit the job.
    match ask(
        &a,
        RpcRequest::PutBlob {
            kind: BlobKind::Dataset,
            bytes: dataset.to_blob(),
        },
    )
    .await?
    {
        RpcResponse::BlobStored(digest) => assert_eq!(digest, spec.dataset.digest),
        other => anyhow::bail!("dataset refused: {other:?}"),
    }
    let tx = post(0, spec.clone())?;
    let job = JobId::from(tx.id()?);
    match ask(&b, RpcRequest::SubmitTx(tx)).await? {
        RpcResponse::TxAccepted(_) => {}
        other => anyhow::bail!("job refused: {other:?}"),
    }
    assert!(b_node.blobs().has(&spec.dataset.digest));
    // A second job whose bar (100% accuracy after one epoch) the model misses.
    let hard = iris_spec(&dataset, 1, 1_000_000)?;
    let tx = post(1, hard.clone())?;
    let hard_job = JobId::from(tx.id()?);
    match ask(&a, RpcRequest::SubmitTx(tx)).await? {
        RpcResponse::TxAccepted(_) => {}
        other => anyhow::bail!("job refused: {other:?}"),
    }
    for node in nodes {
        let chain = node.chain().clone();
        wait_until("both jobs on every node", WAIT, || {
            let chain = chain.clone();
            async move {
                matches!(chain.job(job).await, Ok(Some(_)))
                    && matches!(chain.job(hard_job).await, Ok(Some(_)))
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
    }

    // The honest worker trains; a thief copies its result.
    let worker = SigningKey::from_bytes(&[0x31; 32]);
    let worker_address = Address::from_verifying_key(&worker.verifying_key());
    let thief = SigningKey::from_bytes(&[0x32; 32]);
    let seed = worker_seed(&job, &worker_address, spec.base_seed);
    let outcome = trainer::train(&spec, &dataset, seed, &mut |_| {})?;
    let honest = outcome.result;
    protocol::job::check_acceptance(&spec, &honest.metric)
        .map_err(|e| anyhow::anyhow!("the honest model should clear 0.7: {e}"))?;
    let hard_seed = worker_seed(&hard_job, &worker_address, hard.base_seed);
    let hard_result = trainer::train(&hard, &dataset, hard_seed, &mut |_| {})?.result;
    assert!(
        protocol::job::check_acceptance(&hard, &hard_result.metric).is_err(),
        "one epoch reached 100%: {}",
        hard_result.metric
    );

    let mut flipped = honest;
    flipped.weights.0[0] ^= 1;
    let mut inflated = honest;
    if let TestMetric::Accuracy { correct, total } = honest.metric {
        inflated.metric = TestMetric::Accuracy {
            correct: correct.saturating_add(1).min(total),
            total,
        };
        assert_ne!(inflated.metric, honest.metric, "already perfect");
    }
    let forgeries = [
        (
            "flipped digest bit",
            result_tx(&worker, job, flipped, &params)?,
            "weights digest",
        ),
        (
            "inflated metric",
            result_tx(&worker, job, inflated, &params)?,
            "but the replay gives",
        ),
        (
            "copied result",
            result_tx(&thief, job, honest, &params)?,
            "weights digest",
        ),
        (
            "missed threshold",
            result_tx(&worker, hard_job, hard_result, &params)?,
            "misses the job's bar",
        ),
    ];
    for (what, tx, reason) in &forgeries {
        for addr in &addrs {
            let message = refused(addr, tx.clone()).await?;
            assert!(message.contains(reason), "{what} at {addr}: {message}");
        }
    }
    // Replays are cached: asking again does not replay, and the verdict holds.
    let cached = c_node.replay().cached_count();
    assert!(cached >= 3, "{cached} verdicts cached");
    let message = refused(&c, forgeries[0].1.clone()).await?;
    assert!(message.contains("weights digest"), "{message}");
    assert_eq!(c_node.replay().cached_count(), cached);

    // The honest worker uploads its weights to B and submits there.
    let weights_path = dirs[1].path().join("weights.safetensors");
    outcome.model.save(&weights_path)?;
    let weights_file = std::fs::read(&weights_path)?;
    match ask(
        &b,
        RpcRequest::PutBlob {
            kind: BlobKind::Weights,
            bytes: weights_file.clone(),
        },
    )
    .await?
    {
        RpcResponse::BlobStored(digest) => {
            assert_eq!(digest.0, protocol::sha256(&weights_file))
        }
        other => anyhow::bail!("weights refused: {other:?}"),
    }
    match ask(
        &b,
        RpcRequest::SubmitTx(result_tx(&worker, job, honest, &params)?),
    )
    .await?
    {
        RpcResponse::TxAccepted(_) => {}
        other => anyhow::bail!("honest result refused: {other:?}"),
    }
    for node in nodes {
        let chain = node.chain().clone();
        wait_until("the job fulfilled on every node", WAIT, || {
            let chain = chain.clone();
            async move {
                matches!(
                    chain.job(job).await,
                    Ok(Some(record)) if matches!(record.status, JobStatus::Fulfilled { .. })
                )
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        let record = node
            .chain()
            .job(job)
            .await?
            .ok_or_else(|| anyhow::anyhow!("job gone"))?;
        match record.status {
            JobStatus::Fulfilled { worker, result, .. } => {
                assert_eq!(worker, worker_address);
                assert_eq!(result.weights, honest.weights);
            }
            other => anyhow::bail!("job is {other:?}"),
        }
        // The bounty paid the fee: balance is bounty minus fee, once.
        let balance = node.chain().balance(worker_address).await?;
        assert_eq!(balance.account.balance, Amount(5_000 - 1));
        // No forged result was ever mined: the hard job is still open.
        let hard_record = node
            .chain()
            .job(hard_job)
            .await?
            .ok_or_else(|| anyhow::anyhow!("hard job gone"))?;
        assert!(hard_record.is_open());
    }

    let view = json_of(&[
        "rpc",
        "--node",
        &c.to_string(),
        "job",
        &job.to_string(),
        "--json",
    ])?;
    assert_eq!(view["status"], serde_json::json!("fulfilled"));
    assert_eq!(
        view["worker"],
        serde_json::json!(worker_address.to_string())
    );
    assert_eq!(
        view["weights_digest"],
        serde_json::json!(honest.weights.to_string())
    );
    assert_eq!(
        view["dataset"],
        serde_json::json!(spec.dataset.digest.to_string())
    );
    assert!(view["fulfilled_at"].is_u64(), "{view}");
    assert!(view["test_accuracy"].is_number(), "{view}");

    // C never saw the weights file: predict fetches it from a peer by the
    // on-chain tensor digest and answers what the model itself answers.
    let rows: Vec<Vec<f32>> = dataset.x().chunks(4).take(3).map(<[f32]>::to_vec).collect();
    let expected = trainer::predict(&outcome.model, &rows.concat())?;
    let request = RpcRequest::Predict {
        job,
        rows: rows
            .iter()
            .map(|r| r.iter().copied().map(F32Bits::from_f32).collect())
            .collect(),
    };
    match ask(&c, request).await? {
        RpcResponse::Predictions(got) => {
            assert_eq!(got.len(), expected.len());
            for (got, want) in got.iter().zip(&expected) {
                match (got, want) {
                    (
                        PredictionOut::Class {
                            class,
                            probabilities,
                        },
                        trainer::Prediction::Class {
                            class: want_class,
                            probabilities: want_probabilities,
                        },
                    ) => {
                        assert_eq!(class, want_class);
                        let got: Vec<f32> = probabilities.iter().map(|p| p.to_f32()).collect();
                        assert_eq!(&got, want_probabilities);
                    }
                    other => anyhow::bail!("unexpected prediction pair {other:?}"),
                }
            }
        }
        other => anyhow::bail!("predict failed: {other:?}"),
    }
    let narrow = RpcRequest::Predict {
        job,
        rows: vec![vec![F32Bits::from_f32(1.0); 3]],
    };
    match ask(&c, narrow).await? {
        RpcResponse::Error(err) => {
            assert_eq!(err.code, RpcErrorCode::InvalidArgument);
            assert!(
                err.message.contains("has 3 values, expected 4"),
                "{}",
                err.message
            );
        }
        other => anyhow::bail!("a 3-wide row was answered: {other:?}"),
    }

    for node in [c_node, b_node, miner] {
        node.stop().await;
    }
    Ok(())
}
