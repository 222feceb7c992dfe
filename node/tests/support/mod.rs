//! Shared pieces of the job tests: the iris dataset and job specs, signed
//! transactions, RPC calls, and workers (honest and lazy) that train, serve
//! their states to a node and submit.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use node::jobs::AuditConfig;
use node::rpc_client;
use node::RunningNode;
use protocol::job::worker_seed;
use protocol::params::faucet_key;
use protocol::rpc::{BlobKind, RpcRequest, RpcResponse};
use protocol::state::JobStatus;
use protocol::{
    Acceptance, Address, Amount, ChainParams, FraudClaim, Height, JobId, JobRecord, JobResult,
    JobSpec, SegmentLeaf, SignedTx, TxBody, TxKind,
};
use trainer::{Dataset, DatasetLimits, TaskKind, TrainSettings};

pub const TIMEOUT: Duration = Duration::from_secs(30);
pub const WAIT: Duration = Duration::from_secs(120);

pub fn iris() -> anyhow::Result<Dataset> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/iris.csv");
    Ok(Dataset::from_csv_file(
        Path::new(path),
        TaskKind::Classification,
        &DatasetLimits::default(),
    )?)
}

/// An iris job: one hidden layer of 16, `epochs` epochs in batches of 16
/// (7 steps an epoch), 64 segments, the chain's smallest bond and a
/// challenge window of `window` blocks.
pub fn iris_spec(dataset: &Dataset, epochs: u32, ppm: u32, window: u32) -> anyhow::Result<JobSpec> {
    let mut spec = TrainSettings {
        hidden: vec![16],
        epochs,
        batch: 16,
        ..TrainSettings::default()
    }
    .job_spec(dataset)?;
    spec.acceptance = Acceptance::MinAccuracy { ppm };
    spec.bond = ChainParams::regtest().job_limits.min_bond;
    spec.challenge_window = window;
    Ok(spec)
}

pub fn key(byte: u8) -> SigningKey {
    SigningKey::from_bytes(&[byte; 32])
}

pub fn address(key: &SigningKey) -> Address {
    Address::from_verifying_key(&key.verifying_key())
}

/// An audit config that challenges with `key`.
pub fn auditing(fraction: f64, key: &SigningKey) -> AuditConfig {
    AuditConfig {
        fraction,
        key: Some(Arc::new(key.clone())),
    }
}

pub fn sign(key: &SigningKey, nonce: u64, fee: u64, kind: TxKind) -> anyhow::Result<SignedTx> {
    Ok(TxBody {
        from: Address::ZERO,
        nonce,
        fee: Amount(fee),
        kind,
    }
    .sign(key, ChainParams::regtest().chain_id)?)
}

pub fn post(nonce: u64, spec: &JobSpec, bounty: u64, expires_at: u64) -> anyhow::Result<SignedTx> {
    sign(
        &faucet_key(),
        nonce,
        10,
        TxKind::PostJob {
            spec: spec.clone(),
            bounty: Amount(bounty),
            expires_at: Height(expires_at),
        },
    )
}

pub fn addr_of(node: &RunningNode) -> anyhow::Result<Multiaddr> {
    node.p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))
}

pub async fn ask(addr: &Multiaddr, request: RpcRequest) -> anyhow::Result<RpcResponse> {
    Ok(rpc_client::call(addr, &request, TIMEOUT).await?)
}

/// Submits `tx` at `addr`; fails with the node's message if refused.
pub async fn submit(addr: &Multiaddr, tx: SignedTx) -> anyhow::Result<()> {
    match ask(addr, RpcRequest::SubmitTx(tx)).await? {
        RpcResponse::TxAccepted(_) => Ok(()),
        other => anyhow::bail!("transaction refused: {other:?}"),
    }
}

pub async fn put_blob(addr: &Multiaddr, kind: BlobKind, bytes: Vec<u8>) -> anyhow::Result<()> {
    match ask(addr, RpcRequest::PutBlob { kind, bytes }).await? {
        RpcResponse::BlobStored(_) => Ok(()),
        other => anyhow::bail!("blob refused: {other:?}"),
    }
}

/// What a worker claims, and the states it can serve.
pub struct Claim {
    pub result: JobResult,
    pub leaves: Vec<SegmentLeaf>,
    pub states: Vec<Vec<u8>>,
}

impl Claim {
    pub fn tx(&self, worker: &SigningKey, nonce: u64, job: JobId) -> anyhow::Result<SignedTx> {
        sign(
            worker,
            nonce,
            1,
            TxKind::SubmitResult {
                job,
                result: self.result,
                leaves: self.leaves.clone(),
            },
        )
    }

    /// Puts every state the worker holds on the node at `addr`.
    pub async fn serve(&self, addr: &Multiaddr) -> anyhow::Result<()> {
        for state in &self.states {
            put_blob(addr, BlobKind::State, state.clone()).await?;
        }
        Ok(())
    }
}

/// An honest worker's claim for `job`.
pub fn honest(
    job: &JobId,
    worker: &Address,
    spec: &JobSpec,
    dataset: &Dataset,
) -> anyhow::Result<Claim> {
    let seed = worker_seed(job, worker, spec.base_seed);
    let mut states = Vec::new();
    let outcome =
        trainer::train_keeping_states(spec, dataset, seed, &mut |_| {}, &mut |_, bytes| {
            states.push(bytes.to_vec())
        })?;
    Ok(Claim {
        result: outcome.result,
        leaves: outcome.leaves,
        states,
    })
}

/// A lazy worker's claim: honest for `honest_segments` segments.
pub fn lazy(
    job: &JobId,
    worker: &Address,
    spec: &JobSpec,
    dataset: &Dataset,
    honest_segments: u32,
) -> anyhow::Result<Claim> {
    let seed = worker_seed(job, worker, spec.base_seed);
    let claim = trainer::cheat::cheat(spec, dataset, seed, honest_segments)?;
    Ok(Claim {
        result: claim.result,
        leaves: claim.leaves,
        states: claim.states,
    })
}

/// Waits until `node` holds job `job` and `pred` holds of it.
pub async fn wait_job(
    node: &RunningNode,
    job: JobId,
    what: &str,
    pred: impl Fn(&JobRecord) -> bool + Clone,
) -> anyhow::Result<JobRecord> {
    let chain = node.chain().clone();
    node::testkit::wait_until(what, WAIT, || {
        let (chain, pred) = (chain.clone(), pred.clone());
        async move { matches!(chain.job(job).await, Ok(Some(record)) if pred(&record)) }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    node.chain()
        .job(job)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job {job} vanished"))
}

pub fn is_pending(record: &JobRecord) -> bool {
    matches!(record.status, JobStatus::Pending { .. })
}

pub fn is_fulfilled(record: &JobRecord) -> bool {
    matches!(record.status, JobStatus::Fulfilled { .. })
}

pub async fn balance(node: &RunningNode, who: Address) -> anyhow::Result<u64> {
    Ok(node.chain().balance(who).await?.account.balance.0)
}

/// A segment claim against `leaves` at `index`.
pub fn segment_claim(leaves: &[SegmentLeaf], index: u32) -> anyhow::Result<FraudClaim> {
    let open = |i: u32| -> anyhow::Result<protocol::OpenedLeaf> {
        Ok(protocol::OpenedLeaf {
            leaf: leaves[i as usize],
            path: protocol::segments::merkle_path(leaves, i)
                .ok_or_else(|| anyhow::anyhow!("no leaf {i}"))?,
        })
    };
    Ok(FraudClaim::Segment {
        index,
        prev: open(index - 1)?,
        leaf: open(index)?,
    })
}
