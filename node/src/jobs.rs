//! Job work off the chain task: fetching the data a job transaction needs
//! before it is admitted ([`prepare_tx`]) and the data parked blocks wait
//! for, and auditing pending results. Gossip, the HTTP API and sync reach
//! job data through here.
//!
//! - **Parked blocks.** A block whose fraud proof needs a state or dataset
//!   this node does not hold is parked by the chain (never marked invalid).
//!   [`run_data_fetcher`] asks the chain what is missing, fetches it from
//!   peers and has the chain judge the parked blocks again. The block
//!   reached this point only after its proof of work, header, structure and
//!   every cheap transaction check passed, so a download is only ever spent
//!   on a block that cost its miner real work.
//! - **Audits.** [`run_auditor`] replays a random sample of the segments of
//!   every pending result, chosen with local randomness the worker cannot
//!   predict, fetching the states it needs from peers (when one is withheld
//!   the replay starts from an earlier state, `S_0` at worst). A mismatch
//!   becomes a fraud proof signed with the audit key. Audits run one at a
//!   time on tokio's blocking pool, never on the chain thread or the async
//!   executor, and never delay block relay.
//! - **Pruning.** [`run_state_pruner`] drops, on every new tip, the training
//!   states no pending result names any more.
//!
//! This module never decides validity: it only fetches, replays off
//! consensus, and submits transactions that the chain then judges.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::SigningKey;
use protocol::api::BlockRef;
use protocol::blob::{BlobKind, BlobName};
use protocol::segments::merkle_path;
use protocol::{
    codec, Address, ChainParams, Digest, FraudClaim, JobId, JobRecord, JobStatus, OpenedLeaf,
    SegmentLeaf, Transaction, TxBody, TxId, TxKind,
};
use tokio::sync::{watch, Semaphore};

use crate::blobs::{self, BlobStore};
use crate::chain_task::ChainHandle;
use crate::metrics::label;
use crate::net::blob_fetch;
use crate::net::network::{NetworkClient, Topic};
use crate::observe::Observer;
use protocol::api::AuditView;

/// How often parked blocks are retried and pending results looked for,
/// besides every new tip.
pub const JOBS_POLL: Duration = Duration::from_secs(2);

/// What the fetcher and the auditor need.
#[derive(Clone, Debug)]
pub struct JobsContext {
    /// The chain task.
    pub chain: ChainHandle,
    /// The network, for fetching blobs and gossiping fraud proofs.
    pub network: NetworkClient,
    /// Datasets and states.
    pub blobs: BlobStore,
    /// The chain parameters.
    pub params: Arc<ChainParams>,
}

/// Counters of the auditor, for logs, tests and metrics.
#[derive(Debug, Default)]
pub struct AuditStats {
    /// Results audited to the end.
    pub audits: AtomicU64,
    /// Segments replayed by audits (a withheld state costs more than one).
    pub segments_replayed: AtomicU64,
    /// Fraud proofs this node submitted.
    pub fraud_proofs: AtomicU64,
}

/// How this node audits.
#[derive(Clone)]
pub struct AuditConfig {
    /// Share of each result's segments replayed, in (0, 1].
    pub fraction: f64,
    /// The key that signs and bonds fraud proofs; `None` audits without
    /// challenging (a mismatch is only logged).
    pub key: Option<Arc<SigningKey>>,
}

impl std::fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditConfig")
            .field("fraction", &self.fraction)
            .field("challenger", &self.key.as_ref().map(|k| address_of(k)))
            .finish()
    }
}

fn address_of(key: &SigningKey) -> Address {
    Address::from_verifying_key(&key.verifying_key())
}

/// Fetches what parked blocks miss and has the chain judge them again,
/// until shutdown. Every node runs it, so it runs [`run_state_pruner`]
/// alongside, in the same task (stopping one stops both).
pub async fn run_data_fetcher(ctx: JobsContext, shutdown: watch::Receiver<bool>) {
    tokio::join!(
        fetch_parked_data(ctx.clone(), shutdown.clone()),
        run_state_pruner(ctx, shutdown)
    );
}

async fn fetch_parked_data(ctx: JobsContext, mut shutdown: watch::Receiver<bool>) {
    let mut poll = tokio::time::interval(JOBS_POLL);
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            _ = poll.tick() => {}
        }
        let Ok(parked) = ctx.chain.parked().await else {
            break;
        };
        if parked.is_empty() {
            continue;
        }
        for digest in parked.iter().filter_map(|(_, digest)| *digest) {
            if let Err(err) =
                blob_fetch::fetch(&ctx.blobs, &ctx.network, BlobName::Content(digest)).await
            {
                tracing::info!(blob = %digest, reason = %err, "data for a parked block not found yet");
            }
        }
        if let Err(err) = ctx.chain.retry_parked().await {
            tracing::debug!(reason = %err, "retrying parked blocks failed");
        }
    }
}

/// Drops the training states no pending result needs, on every new tip,
/// until shutdown. A state is needed while a pending result's leaves (in
/// its `SubmitResult`, in the block that admitted it) name it: a fraud proof
/// or an audit may open it until the result settles or is proven false.
/// States stored within [`blobs::STATE_GRACE`] stay too, since results are
/// uploaded before they are mined and fraud proofs' states before the proof
/// is. When the leaves of a pending result cannot be read (a reorg under
/// way), nothing is dropped that round.
pub async fn run_state_pruner(ctx: JobsContext, mut shutdown: watch::Receiver<bool>) {
    let mut tips = ctx.chain.watch_tip();
    // The states each pending result names, by its transaction: the id
    // commits to the leaves, so they never need reading twice.
    let mut named: HashMap<TxId, Vec<Digest>> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = tips.changed() => if changed.is_err() { break },
        }
        match prune_states(&ctx, &mut named).await {
            Ok(report) if report.dropped > 0 => {
                tracing::info!(
                    states = report.dropped,
                    bytes = report.bytes,
                    "settled states pruned"
                );
            }
            Ok(_) => {}
            Err(reason) => tracing::debug!(%reason, "states not pruned this time"),
        }
    }
}

async fn prune_states(
    ctx: &JobsContext,
    named: &mut HashMap<TxId, Vec<Digest>>,
) -> Result<blobs::PruneReport, String> {
    let jobs = ctx.chain.jobs(false).await.map_err(|e| e.to_string())?;
    let mut pending = HashMap::new();
    for result in pending_results(jobs) {
        let states = match named.get(&result.tx) {
            Some(states) => states.clone(),
            None => leaves_of(&ctx.chain, result.height, result.tx)
                .await?
                .iter()
                .map(|leaf| leaf.state)
                .collect(),
        };
        pending.insert(result.tx, states);
    }
    *named = pending;
    let keep: HashSet<Digest> = named.values().flatten().copied().collect();
    let stored_before = SystemTime::now()
        .checked_sub(blobs::STATE_GRACE)
        .ok_or("the clock is before the grace period")?;
    let store = ctx.blobs.clone();
    tokio::task::spawn_blocking(move || store.prune_states(stored_before, |d| keep.contains(d)))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

/// Makes sure the node can judge `tx` before it reaches the mempool. Only a
/// `PostJob` needs anything: its dataset, held or fetched from peers, so that
/// this node relays only jobs that can be trained. The fetch is a download,
/// so it runs after the transaction's stateless checks (size, fee, spec,
/// signature) have passed; the sender pays nothing for a refusal, so a
/// refusal must cost this node almost nothing. Results and fraud proofs
/// need nothing here: the mempool admits them on cheap checks alone.
pub async fn prepare_tx(
    params: &protocol::ChainParams,
    blobs: &BlobStore,
    network: &NetworkClient,
    tx: &protocol::SignedTx,
) -> Result<(), String> {
    let TxKind::PostJob { spec, .. } = &tx.body.kind else {
        return Ok(());
    };
    protocol::validation::check_tx_stateless(tx, params).map_err(|e| e.to_string())?;
    let digest = spec.dataset.digest;
    blob_fetch::fetch(blobs, network, BlobName::Content(digest))
        .await
        .map(|_| ())
        .map_err(|err| {
            format!(
                "job refused: this node does not hold dataset {digest} and cannot fetch it: {err}"
            )
        })
}

/// Fetches what judging the fraud proof `tx` will need (the job's dataset
/// and the state the proof opens), so that a block template can include it
/// and a block carrying it need not park. Called only after the proof passed
/// mempool admission: its signature, its sender's bond, and the Merkle paths
/// that tie the opened state to a pending result. So the states fetched are
/// always ones a worker committed to, each fetched once however many proofs
/// name it.
pub async fn prefetch_proof_data(
    chain: &ChainHandle,
    network: &NetworkClient,
    store: &BlobStore,
    tx: &protocol::SignedTx,
) {
    let TxKind::FraudProof { job, claim } = &tx.body.kind else {
        return;
    };
    let Ok(Some(record)) = chain.job(*job).await else {
        return;
    };
    let mut wanted = vec![record.spec.dataset.digest];
    match claim {
        FraudClaim::Segment { index, prev, .. } if *index > 1 => wanted.push(prev.leaf.state),
        FraudClaim::Final { last } => wanted.push(last.leaf.state),
        _ => {}
    }
    for digest in wanted {
        if let Err(err) = blob_fetch::fetch(store, network, BlobName::Content(digest)).await {
            tracing::info!(%job, blob = %digest, reason = %err, "data for a fraud proof not found yet");
        }
    }
}

/// A pending result as the auditor sees it.
#[derive(Clone, Debug)]
struct Pending {
    job: JobId,
    record: JobRecord,
    worker: Address,
    tx: TxId,
    height: protocol::Height,
    result: protocol::JobResult,
}

fn pending_results(jobs: Vec<(JobId, JobRecord)>) -> Vec<Pending> {
    jobs.into_iter()
        .filter_map(|(job, record)| match record.status {
            JobStatus::Pending {
                worker,
                tx,
                height,
                result,
                ..
            } => Some(Pending {
                job,
                worker,
                tx,
                height,
                result,
                record,
            }),
            _ => None,
        })
        .collect()
}

/// Audits every pending result once, until shutdown.
pub async fn run_auditor(
    ctx: JobsContext,
    config: AuditConfig,
    stats: Arc<AuditStats>,
    observer: Arc<Observer>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tips = ctx.chain.watch_tip();
    let mut poll = tokio::time::interval(JOBS_POLL);
    let mut started: HashSet<TxId> = HashSet::new();
    // One audit at a time: the node's cores belong to mining and validation
    // first; audits only need to finish within a challenge window.
    let pool = Arc::new(Semaphore::new(1));
    let (retry_tx, mut retry_rx) = tokio::sync::mpsc::unbounded_channel::<TxId>();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            changed = tips.changed() => if changed.is_err() { break },
            _ = poll.tick() => {}
        }
        while let Ok(tx) = retry_rx.try_recv() {
            started.remove(&tx);
        }
        let Ok(jobs) = ctx.chain.jobs(false).await else {
            break;
        };
        let pending = pending_results(jobs);
        // Forget results no longer pending, so the set stays as small as
        // the pending list.
        started.retain(|tx| pending.iter().any(|p| p.tx == *tx));
        for pending in pending {
            if !started.insert(pending.tx) {
                continue;
            }
            let (ctx, config, stats, pool, retry, observer) = (
                ctx.clone(),
                config.clone(),
                stats.clone(),
                pool.clone(),
                retry_tx.clone(),
                observer.clone(),
            );
            tokio::spawn(async move {
                let Ok(_permit) = pool.acquire_owned().await else {
                    return;
                };
                let tx = pending.tx;
                let job = pending.job;
                if let Err(reason) = audit_one(&ctx, &config, &stats, &observer, pending).await {
                    tracing::info!(result = %tx, %reason, "audit postponed");
                    observer
                        .metrics
                        .audits
                        .get_or_create(&label("outcome", "postponed"))
                        .inc();
                    observer.audit(
                        job,
                        AuditView {
                            state: "waiting_for_data".into(),
                            tx: Some(tx.to_string()),
                            ..AuditView::default()
                        },
                    );
                    let _ = retry.send(tx);
                }
            });
        }
    }
}

/// The leaves of the `SubmitResult` `tx` in the main-chain block at `height`.
async fn leaves_of(
    chain: &ChainHandle,
    height: protocol::Height,
    tx: TxId,
) -> Result<Vec<SegmentLeaf>, String> {
    let info = chain
        .block(BlockRef::Height(height))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no main-chain block at height {height}"))?;
    info.block
        .txs
        .iter()
        .find_map(|t| match t {
            Transaction::Signed(signed) if signed.id().ok() == Some(tx) => {
                match &signed.body.kind {
                    TxKind::SubmitResult { leaves, .. } => Some(leaves.clone()),
                    _ => None,
                }
            }
            _ => None,
        })
        .ok_or_else(|| format!("result {tx} not found in block {height}"))
}

fn opened(leaves: &[SegmentLeaf], index: u32) -> Result<OpenedLeaf, String> {
    let leaf = usize::try_from(index)
        .ok()
        .and_then(|i| leaves.get(i))
        .copied()
        .ok_or_else(|| format!("no leaf {index}"))?;
    let path = merkle_path(leaves, index).ok_or_else(|| format!("no path to leaf {index}"))?;
    Ok(OpenedLeaf { leaf, path })
}

/// Audits one pending result; `Err` means "try again later" (the dataset
/// is not held yet, the chain is busy), never that the result is wrong.
async fn audit_one(
    ctx: &JobsContext,
    config: &AuditConfig,
    stats: &AuditStats,
    observer: &Observer,
    pending: Pending,
) -> Result<(), String> {
    let spec = pending.record.spec.clone();
    let leaves = leaves_of(&ctx.chain, pending.height, pending.tx).await?;
    let dataset_digest = spec.dataset.digest;
    blob_fetch::fetch(&ctx.blobs, &ctx.network, BlobName::Content(dataset_digest))
        .await
        .map_err(|e| format!("dataset {dataset_digest}: {e}"))?;
    // Local randomness: the worker cannot know which segments are replayed.
    let sample = trainer::verify::sample_segments(spec.segments, config.fraction, rand::random());
    let sampled = u32::try_from(sample.len()).unwrap_or(u32::MAX);
    let mut view = AuditView {
        state: "auditing".into(),
        tx: Some(pending.tx.to_string()),
        sampled,
        ..AuditView::default()
    };
    observer.audit(pending.job, view.clone());
    // The states the sample starts from, fetched ahead so the blocking
    // replay reads only the local store; a state nobody serves is replayed
    // from an earlier one instead.
    for index in &sample {
        let Some(prev) = usize::try_from(index.saturating_sub(1))
            .ok()
            .and_then(|i| leaves.get(i))
        else {
            continue;
        };
        if *index > 1 {
            let _ =
                blob_fetch::fetch(&ctx.blobs, &ctx.network, BlobName::Content(prev.state)).await;
        }
    }
    let store = ctx.blobs.clone();
    let seed = protocol::job::worker_seed(&pending.job, &pending.worker, spec.base_seed);
    let claimed = pending.result;
    let audit_spec = spec.clone();
    let audit_leaves = leaves.clone();
    let audit_sample = sample.clone();
    let started = Instant::now();
    let report = tokio::task::spawn_blocking(move || {
        let blob = store
            .get(&dataset_digest)
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("dataset {dataset_digest} vanished"))?;
        let dataset = trainer::Dataset::from_blob(&blob, &trainer::DatasetLimits::default())
            .map_err(|e| format!("dataset {dataset_digest} does not decode: {e}"))?;
        let mut fetch = |digest: &protocol::Digest| store.get(digest).ok().flatten();
        trainer::verify::audit(
            &audit_spec,
            &dataset,
            seed,
            &claimed,
            &audit_leaves,
            &audit_sample,
            &mut fetch,
        )
        .map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())??;
    let elapsed_ms = started.elapsed().as_millis();
    observer
        .metrics
        .audit_seconds
        .observe(started.elapsed().as_secs_f64());
    view.replayed = report.segments_replayed;
    stats.audits.fetch_add(1, Ordering::Relaxed);
    stats
        .segments_replayed
        .fetch_add(u64::from(report.segments_replayed), Ordering::Relaxed);
    let Some(fault) = report.fault else {
        tracing::info!(
            job = %pending.job, worker = %pending.worker, sampled = sample.len(),
            segments = spec.segments, replayed = report.segments_replayed, elapsed_ms,
            "audit passed"
        );
        view.state = "passed".into();
        view.agreed = report.segments_replayed;
        observer.audit(pending.job, view);
        observer
            .metrics
            .audits
            .get_or_create(&label("outcome", "passed"))
            .inc();
        return Ok(());
    };
    let claim = match &fault {
        trainer::verify::AuditFault::InitialState => FraudClaim::InitialState {
            first: opened(&leaves, 0)?,
        },
        trainer::verify::AuditFault::Segment {
            index,
            prev_state_bytes,
        } => {
            // Serve the honest state the proof opens, so every node can
            // replay the segment.
            let store = ctx.blobs.clone();
            let bytes = prev_state_bytes.clone();
            tokio::task::spawn_blocking(move || store.put(BlobKind::State, &bytes))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            FraudClaim::Segment {
                index: *index,
                prev: opened(&leaves, index.saturating_sub(1))?,
                leaf: opened(&leaves, *index)?,
            }
        }
        trainer::verify::AuditFault::Final { final_state_bytes } => {
            let store = ctx.blobs.clone();
            let bytes = final_state_bytes.clone();
            tokio::task::spawn_blocking(move || store.put(BlobKind::State, &bytes))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            FraudClaim::Final {
                last: opened(&leaves, spec.segments)?,
            }
        }
    };
    let segment = claim.segment(spec.segments);
    tracing::warn!(
        job = %pending.job, worker = %pending.worker, segment, replayed = report.segments_replayed,
        elapsed_ms, "audit found a false result"
    );
    view.state = "fraud_found".into();
    view.fault_segment = Some(segment);
    view.agreed = report.segments_replayed.saturating_sub(1);
    observer
        .metrics
        .audits
        .get_or_create(&label("outcome", "fraud_found"))
        .inc();
    let Some(key) = &config.key else {
        tracing::warn!(job = %pending.job, "no audit key: not challenging");
        observer.audit(pending.job, view);
        return Ok(());
    };
    let sent = submit_fraud_proof(ctx, key, pending.job, claim).await?;
    if let Some(id) = sent {
        stats.fraud_proofs.fetch_add(1, Ordering::Relaxed);
        observer
            .metrics
            .fraud_proofs
            .get_or_create(&label("outcome", "sent"))
            .inc();
        view.fraud_proof = Some(id.to_string());
    }
    observer.audit(pending.job, view);
    Ok(())
}

/// Signs a fraud proof with `key`, offers it to the mempool and gossips it;
/// its id when the mempool took it.
async fn submit_fraud_proof(
    ctx: &JobsContext,
    key: &SigningKey,
    job: JobId,
    claim: FraudClaim,
) -> Result<Option<TxId>, String> {
    let challenger = address_of(key);
    let nonce = ctx
        .chain
        .next_nonce(challenger)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = TxBody {
        from: challenger,
        nonce,
        fee: protocol::Amount::ZERO,
        kind: TxKind::FraudProof { job, claim },
    };
    body.fee = body
        .min_fee_at(ctx.params.min_fee_rate)
        .map_err(|e| e.to_string())?
        .ok_or("the chain's fee rate overflows a fee")?;
    let tx = body
        .sign(key, ctx.params.chain_id)
        .map_err(|e| e.to_string())?;
    let bytes = codec::encode(&tx).map_err(|e| e.to_string())?;
    match ctx.chain.submit_tx(tx).await.map_err(|e| e.to_string())? {
        Ok(id) => {
            tracing::warn!(%job, %challenger, tx = %id, bond = ctx.params.fraud_proof_bond.0, "fraud proof submitted");
            ctx.network.publish(Topic::Txs, bytes);
            Ok(Some(id))
        }
        Err(err) => {
            tracing::warn!(%job, %challenger, reason = %err, "fraud proof refused by the mempool");
            Ok(None)
        }
    }
}
