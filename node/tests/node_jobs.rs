//! Jobs over the peer RPC: a posted job shows in `rpc job` and `rpc jobs`
//! with the JSON keys scripts rely on, an unknown job is a clear error, and
//! a result is refused because this build links no training engine.

use std::process::Command;
use std::time::Duration;

use node::rpc_client;
use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::params::faucet_key;
use protocol::rpc::{RpcErrorCode, RpcRequest, RpcResponse};
use protocol::{
    Acceptance, Activation, Address, Amount, ChainParams, DatasetRef, Digest, F32Bits, Height,
    JobId, JobResult, JobSpec, Loss, ModelSpec, Optimizer, Split, Task, TestMetric, TxBody, TxKind,
};

const TIMEOUT: Duration = Duration::from_secs(30);

fn spec() -> JobSpec {
    JobSpec {
        dataset: DatasetRef {
            digest: Digest([7; 32]),
            rows: 150,
            features: 4,
        },
        task: Task::Classification { classes: 3 },
        split: Split {
            validation_permille: 100,
            test_permille: 200,
        },
        model: ModelSpec {
            hidden: vec![16],
            activation: Activation::Relu,
        },
        loss: Loss::CrossEntropy,
        optimizer: Optimizer::Sgd {
            lr: F32Bits::from_f32(0.1),
            momentum: F32Bits::from_f32(0.9),
        },
        l1: F32Bits::from_f32(0.0),
        l2: F32Bits::from_f32(0.0),
        batch_size: 16,
        epochs: 5,
        base_seed: 1,
        checkpoint_interval: 10,
        engine_version: protocol::job::ENGINE_VERSION,
        acceptance: Acceptance::MinAccuracy { ppm: 500_000 },
    }
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_posted_job_is_served_over_rpc_and_results_are_refused_without_an_engine(
) -> anyhow::Result<()> {
    init_test_logging();
    let dir = tempfile::tempdir()?;
    let node = start_regtest(
        dir.path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(100))),
    )
    .await?;
    let addr = node
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    let params = ChainParams::regtest();

    let post = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(10),
        kind: TxKind::PostJob {
            spec: spec(),
            bounty: Amount(5_000),
            expires_at: Height(1_000),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    let job = JobId::from(post.id()?);
    match rpc_client::call(&addr, &RpcRequest::SubmitTx(post), TIMEOUT).await? {
        RpcResponse::TxAccepted(_) => {}
        other => anyhow::bail!("job refused: {other:?}"),
    }
    wait_until("the job mined", Duration::from_secs(60), || {
        let chain = node.chain().clone();
        async move { matches!(chain.job(job).await, Ok(Some(_))) }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let node_arg = addr.to_string();
    let id = job.to_string();
    let view = json_of(&["rpc", "--node", &node_arg, "job", &id, "--json"])?;
    assert_eq!(view["id"], serde_json::json!(id));
    assert_eq!(view["status"], serde_json::json!("open"));
    assert_eq!(view["bounty"], serde_json::json!(5_000));
    assert_eq!(
        view["dataset"],
        serde_json::json!(Digest([7; 32]).to_string())
    );
    assert_eq!(view["poster"], serde_json::json!(params.faucet.to_string()));
    for key in ["worker", "weights_digest", "fulfilled_at"] {
        assert!(
            view.get(key).is_some_and(serde_json::Value::is_null),
            "{key} in {view}"
        );
    }
    let all = json_of(&["rpc", "--node", &node_arg, "jobs", "--json"])?;
    assert_eq!(all["jobs"].as_array().map(Vec::len), Some(1));
    let open = json_of(&["rpc", "--node", &node_arg, "jobs", "--open", "--json"])?;
    assert_eq!(open["jobs"][0]["id"], serde_json::json!(id));

    let unknown = JobId([9; 32]);
    match rpc_client::call(&addr, &RpcRequest::Job(unknown), TIMEOUT).await? {
        RpcResponse::Error(err) => {
            assert_eq!(err.code, RpcErrorCode::NotFound);
            assert!(
                err.message.contains(&unknown.to_string()),
                "{}",
                err.message
            );
        }
        other => anyhow::bail!("expected NotFound, got {other:?}"),
    }

    let worker = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let result = TxBody {
        from: Address::ZERO,
        nonce: 0,
        fee: Amount(1),
        kind: TxKind::SubmitResult {
            job,
            result: JobResult {
                weights: Digest([1; 32]),
                checkpoints: Digest([2; 32]),
                train_loss: F32Bits::from_f32(0.1),
                metric: TestMetric::Accuracy {
                    correct: 29,
                    total: 30,
                },
            },
        },
    }
    .sign(&worker, params.chain_id)?;
    match rpc_client::call(&addr, &RpcRequest::SubmitTx(result), TIMEOUT).await? {
        RpcResponse::Error(err) => {
            assert_eq!(err.code, RpcErrorCode::TxRejected);
            assert!(
                err.message.contains("no training engine in this build"),
                "{}",
                err.message
            );
        }
        other => anyhow::bail!("a result was accepted without an engine: {other:?}"),
    }

    node.stop().await;
    Ok(())
}
