//! The verification benchmark: what optimistic verification costs each
//! party, measured in one run on one job and reported against the worker's
//! training time.
//!
//! A regtest chain is set up with the job posted and a worker funded. The
//! worker trains with its chain seed, keeping every state (the baseline).
//! Auditors then replay a sample of its segments at fractions 0.1 and 1.0
//! with every state served; a fraud proof's replay of one middle segment and
//! the final check run through [`ReplayVerifier`], as block validation runs
//! them; and admission of the worker's `SubmitResult` (stateless checks, then
//! apply and roll back) is timed against a plain transfer. Every replay must
//! agree with the worker: an honest run that an auditor or verifier rejects is
//! an error here, never a figure.
//!
//! Timing is measured only to be printed; it must never be asserted in a test
//! or reach a training result or a chain state.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use protocol::job::{worker_seed, JobSpecError};
use protocol::params::{faucet_key, COIN};
use protocol::state::Journal;
use protocol::validation::{apply_transaction, check_tx_stateless};
use protocol::{
    Address, Amount, ChainParams, CodecError, DeferReplays, Digest, FinalOutcome, Height, JobId,
    Judged, SegmentVerifier, SignedTx, State, TxBody, TxError, TxKind, VerifyError,
};
use serde_json::json;

use crate::dataset::{Dataset, DatasetLimits};
use crate::settings::{SettingsError, TrainSettings};
use crate::train::{train_keeping_states, TrainError};
use crate::verify::{audit, sample_segments, AuditError, ReplayVerifier};

/// Epochs of the default job: digits with two hidden layers of 512 trains
/// for about 30 s on one core of the reference machine.
pub const DEFAULT_EPOCHS: u32 = 620;
/// Hidden widths of the default job.
pub const DEFAULT_HIDDEN: [u32; 2] = [512, 512];
/// Batch size of the default job.
pub const DEFAULT_BATCH: u32 = 64;
/// Admissions timed per repetition: enough for each repetition to span
/// about a hundred ticks of the CPU clock.
pub const DEFAULT_ADMISSION_ITERATIONS: usize = 10_000;
/// Repetitions of the admission timing; the median is reported.
pub const DEFAULT_ADMISSION_REPETITIONS: usize = 5;
/// The audit fractions timed: a node's default and a full audit.
pub const AUDIT_FRACTIONS: [f64; 2] = [0.1, 1.0];
/// Each fraud-proof replay is repeated until the calls fill this many
/// seconds: the CPU clock advances in scheduler ticks (a few milliseconds),
/// coarser than one final check.
pub const DEFAULT_FRAUD_PROOF_SECONDS: f64 = 0.5;

/// The benchmark worker's key seed: public, like the faucet's, and only ever
/// used on a throwaway regtest state (the ASCII text
/// `gradchain bench-verify worker 01`).
const WORKER_SEED: [u8; 32] = *b"gradchain bench-verify worker 01";
/// Fee of every benchmark transaction.
const FEE: Amount = Amount(1_000);
/// The bounty of the posted job.
const BOUNTY: Amount = Amount(COIN);
/// Height of the block that posts the job and funds the worker.
const POSTED_AT: Height = Height(1);
/// Height at which the worker's result and the transfer are admitted.
const ADMITTED_AT: Height = Height(2);
/// Blocks until the posted job expires.
const JOB_LIFETIME: u64 = 1_000;

/// The job and how the measurement runs.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyBenchConfig {
    /// Hidden layer widths.
    pub hidden: Vec<u32>,
    /// Rows per batch.
    pub batch: u32,
    /// Passes over the training rows.
    pub epochs: u32,
    /// Segments the steps are cut into.
    pub segments: u32,
    /// Seed of the auditors' samples (a node draws it from the OS; fixed
    /// here so that runs replay the same segments).
    pub audit_seed: u64,
    /// Admissions of each transaction timed per repetition.
    pub admission_iterations: usize,
    /// Repetitions of the admission timing.
    pub admission_repetitions: usize,
    /// Seconds each fraud-proof replay is repeated for (at least one call;
    /// taken as 0 to 60).
    pub fraud_proof_seconds: f64,
}

impl Default for VerifyBenchConfig {
    fn default() -> Self {
        Self {
            hidden: DEFAULT_HIDDEN.to_vec(),
            batch: DEFAULT_BATCH,
            epochs: DEFAULT_EPOCHS,
            segments: protocol::segments::DEFAULT_SEGMENTS,
            audit_seed: 1,
            admission_iterations: DEFAULT_ADMISSION_ITERATIONS,
            admission_repetitions: DEFAULT_ADMISSION_REPETITIONS,
            fraud_proof_seconds: DEFAULT_FRAUD_PROOF_SECONDS,
        }
    }
}

/// Why the benchmark could not run, or found an honest run rejected.
#[derive(Debug, thiserror::Error)]
pub enum VerifyBenchError {
    /// The settings do not describe a job for the dataset.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The job is not one the devnet accepts.
    #[error("the benchmark job is not valid on devnet: {0}")]
    Spec(JobSpecError),
    /// Training or a replay failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// An audit could not judge the claim.
    #[error(transparent)]
    Audit(#[from] AuditError),
    /// A fraud-proof replay could not judge the claim.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// A benchmark transaction was refused.
    #[error("benchmark transaction refused: {0}")]
    Tx(TxError),
    /// A benchmark transaction could not be encoded.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// A replay of the honest run did not agree with it.
    #[error("{what} of the honest run: got {got}, expected {expected}")]
    Disagrees {
        /// The replay.
        what: String,
        /// What it found.
        got: String,
        /// What the worker committed to.
        expected: String,
    },
    /// The counter `/proc/self/task/*/schedstat` stopped being readable.
    #[error("process CPU time became unreadable in /proc/self/task/*/schedstat")]
    Clock,
    /// A setting is zero where at least one is needed.
    #[error("{what} is 0, expected at least 1")]
    Zero {
        /// The setting.
        what: &'static str,
    },
}

/// The clock every figure of a run is measured on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Clock {
    /// CPU time of the process's threads (user and system), summed from
    /// `/proc/self/task/*/schedstat`: what another process on the same cores
    /// does not inflate. Counted in nanoseconds but brought up to date at
    /// scheduler ticks, so only spans of many ticks are timed on it.
    ProcessCpu,
    /// Wall-clock time, where that counter cannot be read.
    Wall,
}

impl Clock {
    /// Process CPU time where `/proc` has it, wall time otherwise.
    pub fn detect() -> Self {
        if process_cpu_time().is_some() {
            Self::ProcessCpu
        } else {
            Self::Wall
        }
    }

    /// The clock, in words.
    pub fn describe(self) -> &'static str {
        match self {
            Self::ProcessCpu => "process CPU time (/proc/self/task/*/schedstat, tick-granular)",
            Self::Wall => "wall time (process CPU time not readable)",
        }
    }

    /// The clock's name in JSON.
    pub fn key(self) -> &'static str {
        match self {
            Self::ProcessCpu => "process_cpu",
            Self::Wall => "wall",
        }
    }

    fn start(self) -> Result<Stopwatch, VerifyBenchError> {
        let cpu = match self {
            Self::ProcessCpu => Some(process_cpu_time().ok_or(VerifyBenchError::Clock)?),
            Self::Wall => None,
        };
        Ok(Stopwatch {
            cpu,
            wall: Instant::now(),
        })
    }
}

struct Stopwatch {
    cpu: Option<Duration>,
    wall: Instant,
}

impl Stopwatch {
    fn seconds(&self) -> Result<f64, VerifyBenchError> {
        let elapsed = match self.cpu {
            Some(start) => process_cpu_time()
                .ok_or(VerifyBenchError::Clock)?
                .saturating_sub(start),
            None => self.wall.elapsed(),
        };
        Ok(elapsed.as_secs_f64())
    }
}

/// The CPU time of the process's live threads: the first field of each
/// thread's `schedstat` (nanoseconds on a CPU). A thread that exits between
/// listing and reading is skipped; at least one must be read.
fn process_cpu_time() -> Option<Duration> {
    let mut total = 0u64;
    let mut read = false;
    for entry in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path().join("schedstat")) else {
            continue;
        };
        let nanos: u64 = text.split_whitespace().next()?.parse().ok()?;
        total = total.checked_add(nanos)?;
        read = true;
    }
    read.then(|| Duration::from_nanos(total))
}

/// The shape of the job measured.
#[derive(Clone, Debug, PartialEq)]
pub struct JobShape {
    /// Hidden layer widths.
    pub hidden: Vec<u32>,
    /// Rows per batch.
    pub batch: u32,
    /// Passes over the training rows.
    pub epochs: u32,
    /// Segments, each ending in a committed state.
    pub segments: u32,
    /// Optimizer steps.
    pub steps: u64,
    /// Trainable parameters.
    pub params: u64,
    /// Bytes of the final state.
    pub state_bytes: usize,
    /// The consensus cost of its longest segment ([`JobSpec::segment_cost`]).
    pub segment_cost: u64,
    /// The most a segment may cost on the devnet (`max_segment_cost`).
    pub max_segment_cost: u64,
}

/// One auditor's run.
#[derive(Clone, Debug, PartialEq)]
pub struct AuditTiming {
    /// The audit fraction.
    pub fraction: f64,
    /// Segments in the sample.
    pub sampled: usize,
    /// Segments the audit replayed.
    pub segments_replayed: u32,
    /// Time taken.
    pub seconds: f64,
}

/// Admission of the worker's result against a plain transfer.
#[derive(Clone, Debug, PartialEq)]
pub struct AdmissionTiming {
    /// Leaves the `SubmitResult` carries.
    pub leaves: usize,
    /// Encoded size of the `SubmitResult`, bytes.
    pub submit_bytes: usize,
    /// Encoded size of the transfer, bytes.
    pub transfer_bytes: usize,
    /// Admissions timed per repetition (at least; more where the clock had
    /// not moved).
    pub iterations: usize,
    /// Repetitions; each figure is their median.
    pub repetitions: usize,
    /// Microseconds per `SubmitResult` admission.
    pub submit_result_us: f64,
    /// Microseconds per transfer admission (the baseline).
    pub transfer_us: f64,
}

impl AdmissionTiming {
    /// `submit_result_us / transfer_us`.
    pub fn ratio(&self) -> f64 {
        ratio(self.submit_result_us, self.transfer_us)
    }
}

/// Everything one run measured.
#[derive(Clone, Debug, PartialEq)]
pub struct VerifyBenchReport {
    /// The clock of every figure.
    pub clock: Clock,
    /// The job.
    pub job: JobShape,
    /// The worker's `train_keeping_states` (the baseline).
    pub train_seconds: f64,
    /// One auditor per fraction of [`AUDIT_FRACTIONS`], in that order.
    pub audits: Vec<AuditTiming>,
    /// The segment a fraud proof replays.
    pub replayed_segment: u32,
    /// `ReplayVerifier::replay_segment` of that segment, per call.
    pub replay_segment_seconds: f64,
    /// Calls of `replay_segment` timed.
    pub replay_segment_calls: u64,
    /// `ReplayVerifier::final_result`, per call.
    pub final_result_seconds: f64,
    /// Calls of `final_result` timed.
    pub final_result_calls: u64,
    /// Admission of the result against a transfer.
    pub admission: AdmissionTiming,
}

fn ratio(value: f64, baseline: f64) -> f64 {
    if baseline > 0.0 {
        value / baseline
    } else {
        0.0
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0
/// for none).
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    let upper = values.get(mid).copied().unwrap_or(0.0);
    match values.get(mid.wrapping_sub(1)) {
        Some(lower) if values.len().is_multiple_of(2) => (lower + upper) / 2.0,
        _ => upper,
    }
}

impl VerifyBenchReport {
    /// What replaying the most expensive segment the rules allow takes,
    /// projected from this run's replay rate (cost units a second).
    pub fn max_segment_seconds(&self) -> f64 {
        let rate = ratio(self.job.segment_cost as f64, self.replay_segment_seconds);
        ratio(self.job.max_segment_cost as f64, rate)
    }

    /// `seconds` as a share of the training time.
    pub fn of_training(&self, seconds: f64) -> f64 {
        ratio(seconds, self.train_seconds)
    }

    /// The report as a table, one figure a line beside its ratio to the
    /// baseline.
    pub fn table(&self) -> String {
        let job = &self.job;
        let n = job.segments;
        let hidden: Vec<String> = job.hidden.iter().map(u32::to_string).collect();
        let row = |what: String, seconds: f64, segments: u32| {
            let share = self.of_training(seconds);
            format!("{what:<52} {seconds:>9.3} {share:>9.4} {segments:>9}")
        };
        let mut lines = vec![
            format!(
                "job: digits, hidden {}, batch {}, {} epochs, {} steps in {n} segments, \
                 {} parameters, {} KiB a state",
                hidden.join(","),
                job.batch,
                job.epochs,
                job.steps,
                job.params,
                job.state_bytes / 1024,
            ),
            format!("clock: {}", self.clock.describe()),
            String::new(),
            format!(
                "{:<52} {:>9} {:>9} {:>9}",
                "party", "seconds", "÷ train", "segments"
            ),
            row(
                format!("worker: train, keeping {} states (baseline)", n + 1),
                self.train_seconds,
                n,
            ),
        ];
        lines.extend(self.audits.iter().map(|a| {
            row(
                format!("auditor f={:.1}: {} of {n} sampled", a.fraction, a.sampled),
                a.seconds,
                a.segments_replayed,
            )
        }));
        lines.push(row(
            format!(
                "fraud proof: replay segment {} (1/n {:.4}), x{}",
                self.replayed_segment,
                1.0 / f64::from(n.max(1)),
                self.replay_segment_calls
            ),
            self.replay_segment_seconds,
            1,
        ));
        lines.push(row(
            format!("fraud proof: final check, x{}", self.final_result_calls),
            self.final_result_seconds,
            0,
        ));
        lines.push(format!(
            "{:<52} {:>9.3}   (this job's segment: {:.2e} units in {:.3} s)",
            format!(
                "largest segment allowed ({:.1e} units), projected",
                self.job.max_segment_cost as f64
            ),
            self.max_segment_seconds(),
            self.job.segment_cost as f64,
            self.replay_segment_seconds,
        ));
        let a = &self.admission;
        lines.push(String::new());
        lines.push(format!(
            "{:<52} {:>9} {:>9}",
            format!("admission, median of {}x{}", a.repetitions, a.iterations),
            "µs/tx",
            "÷ transfer"
        ));
        lines.push(format!(
            "{:<52} {:>9.2} {:>9.2}",
            format!("transfer, {} bytes (baseline)", a.transfer_bytes),
            a.transfer_us,
            1.0
        ));
        lines.push(format!(
            "{:<52} {:>9.2} {:>9.2}",
            format!(
                "submit result, {} leaves, {} bytes",
                a.leaves, a.submit_bytes
            ),
            a.submit_result_us,
            a.ratio()
        ));
        lines.join("\n")
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let job = &self.job;
        let a = &self.admission;
        json!({
            "clock": self.clock.key(),
            "job": {
                "dataset": "digits",
                "hidden": job.hidden,
                "batch": job.batch,
                "epochs": job.epochs,
                "segments": job.segments,
                "steps": job.steps,
                "params": job.params,
                "state_bytes": job.state_bytes,
            },
            "train": { "seconds": self.train_seconds, "states_kept": job.segments + 1 },
            "audits": self.audits.iter().map(|a| json!({
                "fraction": a.fraction,
                "sampled": a.sampled,
                "segments_replayed": a.segments_replayed,
                "seconds": a.seconds,
                "ratio_to_train": self.of_training(a.seconds),
            })).collect::<Vec<_>>(),
            "fraud_proof": {
                "replay_segment": {
                    "index": self.replayed_segment,
                    "calls": self.replay_segment_calls,
                    "seconds": self.replay_segment_seconds,
                    "ratio_to_train": self.of_training(self.replay_segment_seconds),
                },
                "max_segment": {
                    "cost": self.job.max_segment_cost,
                    "this_job_segment_cost": self.job.segment_cost,
                    "projected_seconds": self.max_segment_seconds(),
                },
                "final_result": {
                    "calls": self.final_result_calls,
                    "seconds": self.final_result_seconds,
                    "ratio_to_train": self.of_training(self.final_result_seconds),
                },
                "one_over_n": 1.0 / f64::from(job.segments.max(1)),
            },
            "admission": {
                "leaves": a.leaves,
                "submit_bytes": a.submit_bytes,
                "transfer_bytes": a.transfer_bytes,
                "iterations": a.iterations,
                "repetitions": a.repetitions,
                "submit_result_us": a.submit_result_us,
                "transfer_us": a.transfer_us,
                "ratio_to_transfer": a.ratio(),
            },
        })
    }
}

/// A regtest state where the faucet has posted the job and funded the
/// worker, as after block [`POSTED_AT`].
struct PostedJob {
    params: ChainParams,
    state: State,
    job: JobId,
    worker: SigningKey,
}

fn admit(
    state: &mut State,
    journal: &mut Journal,
    tx: &SignedTx,
    height: Height,
    params: &ChainParams,
) -> Result<protocol::TxId, VerifyBenchError> {
    let txid = check_tx_stateless(tx, params).map_err(VerifyBenchError::Tx)?;
    apply_transaction(state, journal, tx, txid, height, params, &DeferReplays)
        .map_err(VerifyBenchError::Tx)?;
    Ok(txid)
}

fn post_job(spec: &protocol::JobSpec) -> Result<PostedJob, VerifyBenchError> {
    let params = ChainParams::regtest();
    let mut state = params.genesis_state();
    let faucet = faucet_key();
    let worker = SigningKey::from_bytes(&WORKER_SEED);
    let body = |nonce: u64, kind: TxKind| TxBody {
        from: params.faucet,
        nonce,
        fee: FEE,
        kind,
    };
    let post = body(
        0,
        TxKind::PostJob {
            spec: spec.clone(),
            bounty: BOUNTY,
            expires_at: Height(POSTED_AT.0.saturating_add(JOB_LIFETIME)),
        },
    )
    .sign(&faucet, params.chain_id)?;
    let fund = body(
        1,
        TxKind::Transfer {
            to: Address::from_verifying_key(&worker.verifying_key()),
            amount: Amount(COIN),
        },
    )
    .sign(&faucet, params.chain_id)?;
    // The block's journal is dropped: these changes stay.
    let mut journal = Journal::default();
    let job = JobId::from(admit(&mut state, &mut journal, &post, POSTED_AT, &params)?);
    admit(&mut state, &mut journal, &fund, POSTED_AT, &params)?;
    Ok(PostedJob {
        params,
        state,
        job,
        worker,
    })
}

/// Admits `tx` (stateless checks, then apply with replays deferred, as the
/// mempool does) and rolls the state back, so that every call admits into
/// the same state.
fn admit_and_roll_back(chain: &mut PostedJob, tx: &SignedTx) -> Result<(), VerifyBenchError> {
    let mut journal = Journal::default();
    let admitted = admit(
        &mut chain.state,
        &mut journal,
        tx,
        ADMITTED_AT,
        &chain.params,
    );
    chain.state.rollback(journal);
    std::hint::black_box(admitted?);
    Ok(())
}

/// Times `call` in batches of `batch` calls until they fill `min_seconds`
/// and the clock has moved (the CPU clock moves in ticks, so a shorter span
/// reads as zero): seconds per call, and the calls made.
fn time_batches(
    clock: Clock,
    batch: u64,
    min_seconds: f64,
    mut call: impl FnMut() -> Result<(), VerifyBenchError>,
) -> Result<(f64, u64), VerifyBenchError> {
    let batch = batch.max(1);
    let watch = clock.start()?;
    let mut calls = 0u64;
    loop {
        for _ in 0..batch {
            call()?;
        }
        calls = calls.saturating_add(batch);
        let seconds = watch.seconds()?;
        if seconds > 0.0 && seconds >= min_seconds {
            return Ok((seconds / calls as f64, calls));
        }
    }
}

fn disagrees(
    what: String,
    got: impl std::fmt::Debug,
    expected: impl std::fmt::Debug,
) -> VerifyBenchError {
    VerifyBenchError::Disagrees {
        what,
        got: format!("{got:?}"),
        expected: format!("{expected:?}"),
    }
}

/// Runs the benchmark on `dataset` (a classification dataset; the report
/// names it digits) with the job and timing of `config`.
pub fn run(
    dataset: &Dataset,
    config: &VerifyBenchConfig,
) -> Result<VerifyBenchReport, VerifyBenchError> {
    for (what, value) in [
        ("admission iterations", config.admission_iterations),
        ("admission repetitions", config.admission_repetitions),
    ] {
        if value == 0 {
            return Err(VerifyBenchError::Zero { what });
        }
    }
    let clock = Clock::detect();
    let devnet = ChainParams::devnet().job_limits;
    let mut spec = TrainSettings {
        hidden: config.hidden.clone(),
        batch: config.batch,
        epochs: config.epochs,
        segments: config.segments,
        ..TrainSettings::default()
    }
    .job_spec(dataset)?;
    spec.bond = devnet.min_bond;
    spec.challenge_window = devnet.min_challenge_window;
    spec.validate(&devnet).map_err(VerifyBenchError::Spec)?;
    let n = spec.segments;
    let fraud_proof_seconds = if config.fraud_proof_seconds.is_nan() {
        0.0
    } else {
        config.fraud_proof_seconds.clamp(0.0, 60.0)
    };

    let mut chain = post_job(&spec)?;
    let worker = Address::from_verifying_key(&chain.worker.verifying_key());
    let seed = worker_seed(&chain.job, &worker, spec.base_seed);

    // 1. The worker: the baseline every other figure is divided by.
    let mut kept: Vec<Vec<u8>> = Vec::with_capacity(n as usize + 1);
    let watch = clock.start()?;
    let outcome = train_keeping_states(&spec, dataset, seed, &mut |_| {}, &mut |_, bytes| {
        kept.push(bytes.to_vec())
    })?;
    let train_seconds = watch.seconds()?;
    // Keyed by the leaves' digests, which the run computed from these bytes.
    let states: HashMap<Digest, Vec<u8>> = outcome
        .leaves
        .iter()
        .map(|leaf| leaf.state)
        .zip(kept)
        .collect();
    let state_bytes = outcome
        .leaves
        .last()
        .and_then(|leaf| states.get(&leaf.state))
        .map_or(0, Vec::len);

    // 2. Auditors, every state served.
    let mut audits = Vec::new();
    for fraction in AUDIT_FRACTIONS {
        let sample = sample_segments(n, fraction, config.audit_seed);
        let mut fetch = |digest: &Digest| states.get(digest).cloned();
        let watch = clock.start()?;
        let report = audit(
            &spec,
            dataset,
            seed,
            &outcome.result,
            &outcome.leaves,
            &sample,
            &mut fetch,
        )?;
        let seconds = watch.seconds()?;
        if let Some(fault) = report.fault {
            return Err(disagrees(
                format!("audit at fraction {fraction}"),
                fault,
                "no fault",
            ));
        }
        audits.push(AuditTiming {
            fraction,
            sampled: sample.len(),
            segments_replayed: report.segments_replayed,
            seconds,
        });
    }

    // 3. Fraud-proof validation: what every node replays for one proof,
    // from the blobs alone (dataset decoding and preparation included).
    let dataset_blob = dataset.to_blob();
    let source = |digest: &Digest| {
        if *digest == spec.dataset.digest {
            Some(dataset_blob.clone())
        } else {
            states.get(digest).cloned()
        }
    };
    let verifier = ReplayVerifier::new(source, DatasetLimits::default());
    let middle = (n / 2).max(1);
    let leaf = |i: u32| outcome.leaves.get(i as usize).copied();
    let prev = leaf(middle - 1).map(|l| l.state).unwrap_or_default();
    let (replay_segment_seconds, replay_segment_calls) =
        time_batches(clock, 1, fraud_proof_seconds, || {
            match verifier.replay_segment(&chain.job, &spec, &worker, middle, &prev)? {
                Judged::Computed(got) if Some(got) == leaf(middle) => Ok(()),
                got => Err(disagrees(
                    format!("replay of segment {middle}"),
                    got,
                    leaf(middle),
                )),
            }
        })?;
    let last = leaf(n).map(|l| l.state).unwrap_or_default();
    let claimed = FinalOutcome {
        weights: outcome.result.weights,
        train_loss: outcome.result.train_loss,
        metric: outcome.result.metric,
    };
    let (final_result_seconds, final_result_calls) =
        time_batches(clock, 1, fraud_proof_seconds, || {
            match verifier.final_result(&chain.job, &spec, &worker, &last)? {
                Judged::Computed(got) if got == claimed => Ok(()),
                got => Err(disagrees("final check".into(), got, claimed)),
            }
        })?;

    // 4. Admission: the result with its n + 1 leaves against a transfer,
    // both from the funded worker into the same state.
    let from_worker = |kind: TxKind| {
        TxBody {
            from: worker,
            nonce: 0,
            fee: FEE,
            kind,
        }
        .sign(&chain.worker, chain.params.chain_id)
    };
    let submit = from_worker(TxKind::SubmitResult {
        job: chain.job,
        result: outcome.result,
        leaves: outcome.leaves.clone(),
    })?;
    let transfer = from_worker(TxKind::Transfer {
        to: chain.params.faucet,
        amount: Amount(1),
    })?;
    let iterations = u64::try_from(config.admission_iterations).unwrap_or(u64::MAX);
    let (mut submit_us, mut transfer_us) = (Vec::new(), Vec::new());
    for _ in 0..config.admission_repetitions {
        for (tx, micros) in [(&transfer, &mut transfer_us), (&submit, &mut submit_us)] {
            let (seconds, _) = time_batches(clock, iterations, 0.0, || {
                admit_and_roll_back(&mut chain, tx)
            })?;
            micros.push(seconds * 1e6);
        }
    }

    Ok(VerifyBenchReport {
        clock,
        job: JobShape {
            hidden: spec.model.hidden.clone(),
            batch: spec.batch_size,
            epochs: spec.epochs,
            segments: n,
            steps: outcome.steps,
            params: outcome.params,
            state_bytes,
            segment_cost: spec.segment_cost().unwrap_or(0),
            max_segment_cost: protocol::ChainParams::devnet().job_limits.max_segment_cost,
        },
        train_seconds,
        audits,
        replayed_segment: middle,
        replay_segment_seconds,
        replay_segment_calls,
        final_result_seconds,
        final_result_calls,
        admission: AdmissionTiming {
            leaves: outcome.leaves.len(),
            submit_bytes: submit.encoded_len()?,
            transfer_bytes: transfer.encoded_len()?,
            iterations: config.admission_iterations,
            repetitions: config.admission_repetitions,
            submit_result_us: median(submit_us),
            transfer_us: median(transfer_us),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{parse_csv, TaskKind};

    /// 60 rows, three classes: 42 train rows in batches of 8, 6 steps an
    /// epoch.
    fn tiny() -> Dataset {
        let mut text = String::from("a,b,c,y\n");
        for i in 0..60u32 {
            let (a, b, c) = (i % 7, i % 5, i % 3);
            text.push_str(&format!("{a},{b},{c},{}\n", (a + b) % 3));
        }
        parse_csv(&text, TaskKind::Classification, &DatasetLimits::default()).unwrap()
    }

    fn tiny_config() -> VerifyBenchConfig {
        VerifyBenchConfig {
            hidden: vec![6],
            batch: 8,
            epochs: 4,
            segments: 10,
            audit_seed: 3,
            admission_iterations: 5,
            admission_repetitions: 3,
            fraud_proof_seconds: 0.0,
        }
    }

    #[test]
    fn a_tiny_job_reports_every_party() {
        let report = run(&tiny(), &tiny_config()).unwrap();
        let n = report.job.segments;
        assert_eq!(n, 10);
        assert_eq!(report.job.steps, 24);
        assert!(report.job.params > 0 && report.job.state_bytes > 0);

        let fractions: Vec<f64> = report.audits.iter().map(|a| a.fraction).collect();
        assert_eq!(fractions, AUDIT_FRACTIONS.to_vec());
        let (tenth, full) = (&report.audits[0], &report.audits[1]);
        // ceil(0.1 · 10) = 1: segment n alone.
        assert_eq!((tenth.sampled, tenth.segments_replayed), (1, 1));
        assert_eq!(full.sampled, n as usize);
        assert_eq!(full.segments_replayed, n);
        assert!(full.segments_replayed > tenth.segments_replayed);
        assert!(report.audits.iter().all(|a| a.seconds >= 0.0));
        assert_eq!(report.replayed_segment, 5);
        // Repeated until the clock moved: every figure is positive.
        assert!(report.replay_segment_calls >= 1 && report.final_result_calls >= 1);
        assert!(report.replay_segment_seconds > 0.0 && report.final_result_seconds > 0.0);

        let a = &report.admission;
        assert_eq!(a.leaves, n as usize + 1);
        assert!(a.submit_bytes > a.transfer_bytes + 32 * a.leaves);
        assert!(a.submit_result_us > 0.0 && a.transfer_us > 0.0);
        assert!(a.ratio() > 0.0 && a.ratio().is_finite());
        assert!(report.train_seconds >= 0.0);

        let json = report.to_json();
        assert_eq!(json["job"]["segments"], 10);
        assert_eq!(json["audits"].as_array().map(Vec::len), Some(2));
        assert_eq!(json["audits"][1]["segments_replayed"], 10);
        assert_eq!(json["admission"]["leaves"], 11);
        assert_eq!(json["fraud_proof"]["replay_segment"]["index"], 5);
        let table = report.table();
        assert!(table.contains("auditor f=0.1: 1 of 10 sampled"));
        assert!(table.contains("submit result, 11 leaves"));
    }

    #[test]
    fn a_job_the_devnet_refuses_is_an_error() {
        let config = VerifyBenchConfig {
            // 24 steps cannot be cut into 25 segments.
            segments: 25,
            ..tiny_config()
        };
        assert!(matches!(
            run(&tiny(), &config),
            Err(VerifyBenchError::Spec(JobSpecError::TooFewSteps { .. }))
        ));
        let config = VerifyBenchConfig {
            admission_iterations: 0,
            ..tiny_config()
        };
        assert!(matches!(
            run(&tiny(), &config),
            Err(VerifyBenchError::Zero { .. })
        ));
    }

    #[test]
    fn the_median_takes_the_middle() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0]), 3.0);
        assert_eq!(median(vec![5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn the_clock_reads_forward() {
        let clock = Clock::detect();
        let watch = clock.start().unwrap();
        let mut x = 0u64;
        for i in 0..100_000u64 {
            x = std::hint::black_box(x.wrapping_add(i));
        }
        assert!(watch.seconds().unwrap() >= 0.0);
    }
}
