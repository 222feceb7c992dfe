//! The trainer's network commands (docs/DESIGN.md §5): `dataset put`, `job post`,
//! `work` and `predict`, all over the HTTP API of one node.
//!
//! This is the binary's edge: it parses flags, talks to the node through
//! [`trainer::client`], prints results and turns failures into one clear
//! error line. Training, hashing and replay stay in the library; this
//! module must never sign with a key it was not given or submit a result it
//! did not train itself.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use ed25519_dalek::SigningKey;
use protocol::api::ErrorCode;
use protocol::blob::BlobKind;
use protocol::job::{check_acceptance, worker_seed};
use protocol::{
    Acceptance, Address, Amount, Digest, F32Bits, Height, JobId, JobSpec, TxBody, TxKind,
};
use trainer::client::{with_fee, ClientError, JobFilter, NodeArgs, NodeClient};
use trainer::{Dataset, DatasetLimits, TaskKind};

use crate::train_flags::TrainFlags;

/// How often the worker looks for open jobs.
const POLL: Duration = Duration::from_secs(1);

/// `dataset put` arguments.
#[derive(clap::Args, Debug)]
pub struct DatasetPutArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// CSV file: header row, numeric columns, target last.
    #[arg(value_name = "FILE.csv")]
    file: PathBuf,
    /// What the target column holds.
    #[arg(long, value_parser = ["classification", "regression"])]
    task: String,
}

/// The `dataset` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum DatasetCommand {
    /// Store a CSV dataset on a node as a canonical blob; prints its digest.
    Put(DatasetPutArgs),
}

/// `job post` arguments.
#[derive(clap::Args, Debug)]
pub struct JobPostArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Key file of the poster (64 hex characters).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Digest of a dataset the node holds (from `dataset put`).
    #[arg(long, value_name = "DIGEST")]
    dataset: String,
    #[command(flatten)]
    flags: TrainFlags,
    /// The reward, in base units.
    #[arg(long)]
    bounty: u64,
    /// What a worker escrows with its result, slashed if a fraud proof
    /// shows it false [default: the bounty, at least the chain's minimum].
    #[arg(long)]
    bond: Option<u64>,
    /// Blocks a result stays open to fraud proofs before it is paid
    /// [default: the chain's minimum].
    #[arg(long)]
    challenge_window: Option<u32>,
    /// Fee in base units [default: the chain's minimum for the
    /// transaction's size].
    #[arg(long)]
    fee: Option<u64>,
    /// Blocks until the job expires.
    #[arg(long, default_value_t = 1000)]
    expires_in: u64,
    /// Least test accuracy for the bounty (classification).
    #[arg(long, conflicts_with = "max_mse")]
    min_accuracy: Option<f64>,
    /// Largest test MSE for the bounty (regression).
    #[arg(long)]
    max_mse: Option<f32>,
}

/// The `job` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum JobCommand {
    /// Post a training job with a bounty; prints the job id.
    Post(Box<JobPostArgs>),
}

/// `work` arguments.
#[derive(clap::Args, Debug)]
pub struct WorkArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// Key file of the worker (64 hex characters); the bounty goes to it.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Stop after submitting one result.
    #[arg(long)]
    once: bool,
    /// Fee in base units [default: the chain's minimum for the
    /// transaction's size].
    #[arg(long)]
    fee: Option<u64>,
    /// Give up after this many seconds without reaching the node.
    #[arg(long, default_value_t = 60)]
    unreachable_secs: u64,
    /// For tests and demos of fraud proofs: train honestly for this many
    /// segments, then make up the rest of the claim (a lazy worker; 0 makes
    /// up everything). Its bond is slashed when an auditor catches it.
    #[arg(long, value_name = "J")]
    cheat_from_segment: Option<u32>,
}

/// `predict` arguments.
#[derive(clap::Args, Debug)]
pub struct PredictArgs {
    #[command(flatten)]
    node: NodeArgs,
    /// The fulfilled job whose model answers.
    #[arg(long, value_name = "JOB_ID")]
    job: String,
    /// One input row, comma-separated; repeat for more rows.
    #[arg(long, required = true, allow_hyphen_values = true)]
    input: Vec<String>,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

fn parse_digest(text: &str, what: &str) -> anyhow::Result<[u8; 32]> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut bytes)
        .map_err(|_| anyhow!("{what} {text:?} is not 64 hex characters"))?;
    Ok(bytes)
}

/// Loads a signing key file in the one key-file format
/// ([`trainer::keyfile`]); refuses a file open to group or others.
pub fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    Ok(trainer::keyfile::read(path)?)
}

/// `dataset put`.
pub fn dataset_put(args: DatasetPutArgs) -> anyhow::Result<()> {
    let kind = if args.task == "regression" {
        TaskKind::Regression
    } else {
        TaskKind::Classification
    };
    let client = args.node.client()?;
    let dataset = Dataset::from_csv_file(&args.file, kind, &DatasetLimits::default())
        .map_err(|e| anyhow!("{}: {e}", args.file.display()))?;
    let blob = dataset.to_blob();
    let expected = dataset.digest();
    let stored = client.put_blob(BlobKind::Dataset, &blob)?;
    if stored != expected {
        bail!("node stored the dataset as {stored}, expected {expected}");
    }
    tracing::info!(dataset = %stored, rows = dataset.rows(), features = dataset.features(), "dataset stored");
    println!("{stored}");
    Ok(())
}

/// The chain id transactions sign over, and the nonce `from`'s next
/// transaction carries (counting those waiting in the mempool).
fn chain_and_nonce(client: &NodeClient, from: &Address) -> anyhow::Result<(u32, u64, Amount)> {
    let status = client.status()?;
    let nonce = client.address(from)?.next_nonce;
    Ok((status.chain_id, nonce, Amount(status.min_fee_rate)))
}

/// `job post`.
pub fn job_post(args: JobPostArgs) -> anyhow::Result<()> {
    let key = load_key(&args.key)?;
    let digest = Digest(parse_digest(&args.dataset, "dataset digest")?);
    let client = args.node.client()?;
    let blob = client.get_blob(&digest)?;
    let dataset = Dataset::from_blob(&blob, &DatasetLimits::default())?;
    let settings = args.flags.settings();
    let mut spec: JobSpec = settings.job_spec(&dataset)?;
    spec.acceptance = match (spec.acceptance, args.min_accuracy, args.max_mse) {
        (Acceptance::MinAccuracy { .. }, Some(x), None) if (0.0..=1.0).contains(&x) => {
            let ppm = (x * 1_000_000.0).round();
            Acceptance::MinAccuracy {
                ppm: format!("{ppm:.0}").parse::<u32>().unwrap_or(1_000_000),
            }
        }
        (Acceptance::MaxMse { .. }, None, Some(x)) if x.is_finite() && x >= 0.0 => {
            Acceptance::MaxMse {
                mse: F32Bits::from_f32(x),
            }
        }
        (a, None, None) => a,
        (_, accuracy, mse) => bail!(
            "--min-accuracy {accuracy:?} / --max-mse {mse:?} do not fit a {:?} dataset, expected --min-accuracy in [0, 1] for classification or --max-mse >= 0 for regression",
            spec.task
        ),
    };
    let from = Address::from_verifying_key(&key.verifying_key());
    let status = client.status()?;
    let chain = status.chain;
    let limits = protocol::ChainParams::by_name(&chain)
        .ok_or_else(|| anyhow!("the node runs chain {chain:?}, which this trainer does not know"))?
        .job_limits;
    spec.bond = Amount(args.bond.unwrap_or(args.bounty.max(limits.min_bond.0)));
    spec.challenge_window = args.challenge_window.unwrap_or(limits.min_challenge_window);
    spec.validate(&limits)
        .map_err(|e| anyhow!("the job does not fit chain {chain}: {e}"))?;
    let nonce = client.address(&from)?.next_nonce;
    let expires_at = status
        .height
        .checked_add(args.expires_in)
        .ok_or_else(|| anyhow!("--expires-in {} overflows the height", args.expires_in))?;
    let body = TxBody {
        from,
        nonce,
        fee: Amount::ZERO,
        kind: TxKind::PostJob {
            spec,
            bounty: Amount(args.bounty),
            expires_at: Height(expires_at),
        },
    };
    let tx = with_fee(body, args.fee, Amount(status.min_fee_rate))?.sign(&key, status.chain_id)?;
    let id = client.submit_tx(&tx)?;
    let job = JobId::from(id);
    tracing::info!(%job, dataset = %digest, bounty = args.bounty, "job posted");
    println!("{job}");
    Ok(())
}

/// Whether a failed call may succeed if tried again later.
fn transient(err: &ClientError) -> bool {
    matches!(
        err,
        ClientError::Unreachable { .. }
            | ClientError::Api {
                code: ErrorCode::NotSynced,
                ..
            }
    )
}

/// `work`: watch open jobs, train each with this worker's seed, upload the
/// weights and submit the result.
pub fn work(args: WorkArgs) -> anyhow::Result<()> {
    let key = load_key(&args.key)?;
    let worker = Address::from_verifying_key(&key.verifying_key());
    let client = args.node.client()?;
    tracing::info!(%worker, node = %client.url(), "worker started");
    let mut tried: HashSet<JobId> = HashSet::new();
    let mut last_contact = Instant::now();
    loop {
        let jobs = match client.all_jobs(Some(JobFilter::Open)) {
            Ok(jobs) => {
                last_contact = Instant::now();
                jobs
            }
            Err(err) if transient(&err) => {
                if last_contact.elapsed() > Duration::from_secs(args.unreachable_secs) {
                    bail!("giving up after {}s: {err}", args.unreachable_secs);
                }
                tracing::warn!(reason = %err, "node unreachable, retrying");
                std::thread::sleep(POLL);
                continue;
            }
            Err(err) => return Err(err).context("listing open jobs"),
        };
        let next = jobs.iter().find_map(|view| {
            let id = view.id.parse::<JobId>().ok()?;
            (!tried.contains(&id)).then_some(id)
        });
        let Some(job) = next else {
            std::thread::sleep(POLL);
            continue;
        };
        tried.insert(job);
        let outcome = match client.job_record(&job) {
            Ok(Some(record)) => work_one(&args, &client, &key, worker, job, &record.spec),
            Ok(None) => Err(anyhow!("the node no longer knows job {job}")),
            Err(err) => Err(anyhow::Error::new(err).context(format!("fetching job {job}"))),
        };
        match outcome {
            Ok(true) if args.once => return Ok(()),
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%job, reason = %format!("{err:#}"), "job failed");
                if args.once {
                    return Err(err);
                }
            }
        }
    }
}

/// Trains one job and submits the result; `false` when the model missed
/// the job's bar and nothing was submitted.
fn work_one(
    args: &WorkArgs,
    client: &NodeClient,
    key: &SigningKey,
    worker: Address,
    job: JobId,
    spec: &JobSpec,
) -> anyhow::Result<bool> {
    let digest = spec.dataset.digest;
    tracing::info!(%job, dataset = %digest, "fetching dataset");
    let blob = client.get_blob(&digest)?;
    let dataset = Dataset::from_blob(&blob, &DatasetLimits::default())?;
    let seed = worker_seed(&job, &worker, spec.base_seed);
    tracing::info!(%job, seed, epochs = spec.epochs, segments = spec.segments, "training");
    let started = Instant::now();
    // The worker keeps every state S_0..S_n to serve challengers.
    let (result, leaves, states, model) = if let Some(honest) = args.cheat_from_segment {
        let claim = trainer::cheat::cheat(spec, &dataset, seed, honest)?;
        (claim.result, claim.leaves, claim.states, None)
    } else {
        let mut states = Vec::new();
        let outcome =
            trainer::train_keeping_states(spec, &dataset, seed, &mut |_| {}, &mut |_, bytes| {
                states.push(bytes.to_vec())
            })?;
        (outcome.result, outcome.leaves, states, Some(outcome.model))
    };
    tracing::info!(%job, weights = %result.weights, metric = %result.metric, seconds = started.elapsed().as_secs_f64(), "trained");
    if let Some(honest) = args.cheat_from_segment {
        tracing::warn!(%job, honest_segments = honest, segments = spec.segments, "claiming a made-up result: this worker is lazy on purpose");
    }
    if let Err(err) = check_acceptance(spec, &result.metric) {
        tracing::warn!(%job, reason = %err, "model misses the job's bar, not submitting");
        return Ok(false);
    }
    let served = states.len();
    for (index, bytes) in states.iter().enumerate() {
        client
            .put_blob(BlobKind::State, bytes)
            .with_context(|| format!("storing training state S_{index} on the node"))?;
    }
    tracing::info!(%job, states = served, "training states served");
    if let Some(model) = model {
        // Written from memory: no file on disk that another user could
        // swap or read.
        let bytes = trainer::weights::safetensors_bytes(&model)?;
        let file = client
            .put_blob(BlobKind::Weights, &bytes)
            .context("storing the weights on the node")?;
        tracing::info!(%job, file = %file, weights = %result.weights, "weights uploaded");
    }
    let (chain_id, nonce, rate) = chain_and_nonce(client, &worker)?;
    let body = TxBody {
        from: worker,
        nonce,
        fee: Amount::ZERO,
        kind: TxKind::SubmitResult {
            job,
            result,
            leaves,
        },
    };
    let tx = with_fee(body, args.fee, rate)?.sign(key, chain_id)?;
    let id = client.submit_tx(&tx)?;
    tracing::info!(%job, tx = %id, "result submitted");
    println!("{id}");
    Ok(true)
}

/// `predict`.
pub fn predict(args: PredictArgs) -> anyhow::Result<()> {
    let job = JobId(parse_digest(&args.job, "job id")?);
    let mut rows = Vec::new();
    for (index, row) in args.input.iter().enumerate() {
        let values = row
            .split(',')
            .map(|v| match v.trim().parse::<f32>() {
                Ok(x) if x.is_finite() => Ok(x),
                Ok(_) => Err(anyhow!("input row {index}: {v:?} is not a finite number")),
                Err(_) => Err(anyhow!("input row {index}: {v:?} is not a number")),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        rows.push(values);
    }
    let client = args.node.client()?;
    let predictions = client.predict(&job, rows)?;
    if args.json {
        println!("{}", serde_json::to_string(&predictions)?);
        return Ok(());
    }
    for p in &predictions.predictions {
        match (p.class, &p.probabilities, p.value) {
            (Some(class), probabilities, _) => {
                let best = probabilities
                    .as_ref()
                    .and_then(|ps| ps.get(usize::try_from(class).unwrap_or(usize::MAX)))
                    .copied()
                    .unwrap_or(0.0);
                println!("class {class} (probability {best:.4})");
            }
            (None, _, Some(v)) => println!("value {v}"),
            (None, _, None) => {
                bail!("the node answered a prediction with neither a class nor a value")
            }
        }
    }
    Ok(())
}
