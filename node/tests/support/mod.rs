//! Shared pieces of the job tests: the iris dataset and job specs, signed
//! transactions, calls to a node's HTTP API, and workers (honest and lazy)
//! that train, serve their states to a node and submit.
#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use node::jobs::AuditConfig;
use node::RunningNode;
use protocol::blob::BlobKind;
use protocol::job::worker_seed;
use protocol::params::faucet_key;
use protocol::state::JobStatus;
use protocol::{
    Acceptance, Address, Amount, ChainParams, FraudClaim, Height, JobId, JobRecord, JobResult,
    JobSpec, SegmentLeaf, SignedTx, TxBody, TxKind,
};
use trainer::client::{ClientError, NodeClient};
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

/// The fee these tests pay: over the regtest minimum (1 a byte) for any of
/// their transactions (results and proofs of a 64-segment job run to a few
/// KB).
pub const FEE: u64 = 10_000;

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
        FEE,
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

/// A client of `node`'s HTTP API.
pub fn api_of(node: &RunningNode) -> anyhow::Result<NodeClient> {
    let url = node
        .http_url()
        .ok_or_else(|| anyhow::anyhow!("the node serves no HTTP API"))?;
    Ok(NodeClient::new(&url)?.with_timeout(TIMEOUT))
}

/// Runs a call of the blocking client on a thread of its own, so that the
/// runtime's workers keep serving the nodes; the outer error is only the
/// thread's.
pub async fn call<T, F>(api: &NodeClient, f: F) -> anyhow::Result<Result<T, ClientError>>
where
    T: Send + 'static,
    F: FnOnce(&NodeClient) -> Result<T, ClientError> + Send + 'static,
{
    let api = api.clone();
    Ok(tokio::task::spawn_blocking(move || f(&api)).await?)
}

/// Submits `tx` to `api`; fails with the node's message if refused.
pub async fn submit(api: &NodeClient, tx: SignedTx) -> anyhow::Result<()> {
    call(api, move |api| api.submit_tx(&tx))
        .await?
        .map_err(|e| anyhow::anyhow!("transaction refused: {e}"))?;
    Ok(())
}

/// Stores a blob on `api`; fails with the node's message if refused.
pub async fn put_blob(api: &NodeClient, kind: BlobKind, bytes: Vec<u8>) -> anyhow::Result<()> {
    call(api, move |api| api.put_blob(kind, &bytes))
        .await?
        .map_err(|e| anyhow::anyhow!("blob refused: {e}"))?;
    Ok(())
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
            FEE,
            TxKind::SubmitResult {
                job,
                result: self.result,
                leaves: self.leaves.clone(),
            },
        )
    }

    /// Puts every state the worker holds on the node `api` reaches.
    pub async fn serve(&self, api: &NodeClient) -> anyhow::Result<()> {
        for state in &self.states {
            put_blob(api, BlobKind::State, state.clone()).await?;
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
