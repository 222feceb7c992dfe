//! Training jobs as consensus sees them: the reproducibility manifest
//! ([`JobSpec`]), the result a worker claims ([`JobResult`]), the cost model
//! that bounds what a job and a single segment of it may cost to replay, the
//! derivation of a worker's training seed, and the [`SegmentVerifier`]
//! through which a fraud proof asks for a one-segment replay.
//!
//! Training itself lives in the `trainer` crate; this module only describes
//! and checks. Floats are carried as [`F32Bits`] and must be finite. Results
//! are optimistic: nothing here replays a whole job (see `segments` and the
//! fraud-proof rules in `validation`).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::sha256_parts;
use crate::segments::{SegmentLeaf, MAX_SEGMENTS, MIN_SEGMENTS};
use crate::types::{Address, Amount, Digest, F32Bits, JobId};

/// The version of the training engine whose results this chain accepts.
pub const ENGINE_VERSION: u32 = 2;

/// Cost units: one unit is one parameter touched for one row, so a forward
/// pass of one row costs `parameters` units and a training step of `b` rows
/// (forward, backward, weight gradients) about `3·b·parameters`.
pub const TRAIN_ROW_UNITS: u64 = 3;
/// What an optimizer step costs beyond its rows, in rows: the update of every
/// parameter and its moments, and the step's fixed overhead. Without it a
/// batch of one row would be priced as nearly free.
pub const STEP_OVERHEAD_ROWS: u64 = 8;
/// What committing one state costs, in rows: encoding and hashing the
/// weights and the optimizer moments (three values a parameter).
pub const STATE_COMMIT_ROWS: u64 = 4;

/// What is learned from the dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Task {
    /// Predict one of `classes` labels `0..classes`.
    Classification {
        /// Number of classes.
        classes: u32,
    },
    /// Predict one real value.
    Regression,
}

/// How the dataset's rows are divided; the rest trains. Which rows go where is
/// drawn from the job's base seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Thousandths of the rows held out for validation.
    pub validation_permille: u16,
    /// Thousandths of the rows held out for the test metric.
    pub test_permille: u16,
}

/// Row counts of the three parts of a split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitSizes {
    /// Rows used for training.
    pub train: u32,
    /// Rows used for validation.
    pub validation: u32,
    /// Rows used for the test metric.
    pub test: u32,
}

impl Split {
    /// The number of rows in each part for a dataset of `rows` rows:
    /// `floor(rows * permille / 1000)` for validation and test, the rest
    /// for training.
    pub fn sizes(&self, rows: u32) -> Result<SplitSizes, JobSpecError> {
        let part = |permille: u16| -> u32 {
            let scaled = u64::from(rows).saturating_mul(u64::from(permille)) / 1000;
            u32::try_from(scaled).unwrap_or(u32::MAX)
        };
        let validation = part(self.validation_permille);
        let test = part(self.test_permille);
        let train = rows
            .checked_sub(validation)
            .and_then(|rest| rest.checked_sub(test))
            .ok_or(JobSpecError::BadSplit {
                validation_permille: self.validation_permille,
                test_permille: self.test_permille,
            })?;
        Ok(SplitSizes {
            train,
            validation,
            test,
        })
    }
}

/// The nonlinearity between hidden layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `max(0, x)`.
    Relu,
}

/// A multi-layer perceptron: input width from the dataset, these hidden
/// widths, output width from the task.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Widths of the hidden layers, input side first.
    pub hidden: Vec<u32>,
    /// Activation after each hidden layer.
    pub activation: Activation,
}

/// The training loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Loss {
    /// Softmax cross-entropy, for classification.
    CrossEntropy,
    /// Mean squared error, for regression.
    Mse,
}

/// The optimizer and its hyper-parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Optimizer {
    /// Stochastic gradient descent with momentum.
    Sgd {
        /// Learning rate.
        lr: F32Bits,
        /// Momentum in `[0, 1)`.
        momentum: F32Bits,
    },
    /// Adam.
    Adam {
        /// Learning rate.
        lr: F32Bits,
        /// First-moment decay in `[0, 1)`.
        beta1: F32Bits,
        /// Second-moment decay in `[0, 1)`.
        beta2: F32Bits,
        /// Denominator epsilon, positive.
        eps: F32Bits,
    },
}

/// The bar a result must clear on the test part to earn the bounty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Acceptance {
    /// Test accuracy of at least `ppm / 1_000_000`.
    MinAccuracy {
        /// Parts per million.
        ppm: u32,
    },
    /// Test mean squared error of at most this value.
    MaxMse {
        /// The bound.
        mse: F32Bits,
    },
}

/// The dataset a job trains on, with the shape the poster declares; the
/// trainer checks the shape against the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetRef {
    /// SHA-256 of the canonical dataset blob.
    pub digest: Digest,
    /// Number of rows.
    pub rows: u32,
    /// Number of feature columns.
    pub features: u32,
}

/// The reproducibility manifest of a training job: everything needed to
/// re-run the training bit for bit, given the worker's seed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// The data.
    pub dataset: DatasetRef,
    /// What is learned.
    pub task: Task,
    /// How rows are held out.
    pub split: Split,
    /// The network.
    pub model: ModelSpec,
    /// The loss.
    pub loss: Loss,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// L1 penalty coefficient on weights.
    pub l1: F32Bits,
    /// L2 penalty coefficient on weights.
    pub l2: F32Bits,
    /// Rows per mini-batch.
    pub batch_size: u32,
    /// Passes over the training rows.
    pub epochs: u32,
    /// Seed of the split; the training seed is derived per worker.
    pub base_seed: u64,
    /// Segments the optimizer steps are cut into; the result commits to
    /// the state after each.
    pub segments: u32,
    /// The training engine version the result must come from.
    pub engine_version: u32,
    /// The bar for the bounty.
    pub acceptance: Acceptance,
    /// What a worker escrows with its result, slashed by a valid fraud proof.
    pub bond: Amount,
    /// Blocks a result stays pending, open to fraud proofs, before it is paid.
    pub challenge_window: u32,
}

/// The test-set metric of a result.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TestMetric {
    /// `correct` of `total` test rows classified correctly.
    Accuracy {
        /// Rows classified correctly.
        correct: u32,
        /// Rows in the test part.
        total: u32,
    },
    /// Mean squared error over the test part.
    Mse(F32Bits),
}

impl fmt::Display for TestMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accuracy { correct, total } => write!(f, "accuracy {correct}/{total}"),
            Self::Mse(mse) => write!(f, "mse {mse}"),
        }
    }
}

/// What a worker claims its training produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// Digest of the trained weights.
    pub weights: Digest,
    /// Merkle root over the segment leaves `0..=segments`
    /// ([`crate::segments::segments_root`]).
    pub segments_root: Digest,
    /// Mean training loss of the last epoch.
    pub train_loss: F32Bits,
    /// The test metric.
    pub metric: TestMetric,
}

/// Bounds on what a single job may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JobLimits {
    /// Most hidden layers.
    pub max_hidden_layers: u32,
    /// Widest hidden layer.
    pub max_width: u32,
    /// Most feature columns.
    pub max_features: u32,
    /// Most dataset rows.
    pub max_rows: u32,
    /// Most classes.
    pub max_classes: u32,
    /// Most epochs.
    pub max_epochs: u32,
    /// Largest mini-batch.
    pub max_batch: u32,
    /// Largest cost of a whole job ([`JobSpec::cost`]).
    pub max_cost: u64,
    /// Largest cost of replaying one segment ([`JobSpec::segment_cost`]):
    /// what one fraud proof costs every node.
    pub max_segment_cost: u64,
    /// Smallest worker bond.
    pub min_bond: Amount,
    /// Shortest challenge window, in blocks: long enough for an auditor on a
    /// modest machine to replay a whole job at the largest cost.
    pub min_challenge_window: u32,
    /// Longest challenge window, in blocks.
    pub max_challenge_window: u32,
}

/// Why a job spec is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSpecError {
    /// A float field is NaN or infinite.
    #[error("{field} is {value}, expected a finite number")]
    NotFinite {
        /// The field.
        field: &'static str,
        /// Its value.
        value: F32Bits,
    },
    /// A float field is outside its range.
    #[error("{field} is {value}, expected {expected}")]
    OutOfRange {
        /// The field.
        field: &'static str,
        /// Its value.
        value: F32Bits,
        /// The allowed range, in words.
        expected: &'static str,
    },
    /// An integer field is outside its range.
    #[error("{field} is {value}, expected {min}..={max}")]
    Bound {
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// The split leaves no training rows or no test rows.
    #[error("split of {validation_permille}/1000 validation and {test_permille}/1000 test leaves no rows to train or test on")]
    BadSplit {
        /// Validation share.
        validation_permille: u16,
        /// Test share.
        test_permille: u16,
    },
    /// Task, loss and acceptance do not fit together.
    #[error("task {task:?} does not go with loss {loss:?} and acceptance {acceptance:?}")]
    Mismatch {
        /// The task.
        task: Task,
        /// The loss.
        loss: Loss,
        /// The acceptance rule.
        acceptance: Acceptance,
    },
    /// The engine version is not the one this chain runs.
    #[error("engine version {got}, expected {expected}")]
    EngineVersion {
        /// Claimed version.
        got: u32,
        /// Supported version.
        expected: u32,
    },
    /// The training cost overflowed or exceeds the bound.
    #[error("training cost {cost} exceeds the per-job bound {max}")]
    TooCostly {
        /// The cost (saturated at u64::MAX).
        cost: u64,
        /// The bound.
        max: u64,
    },
    /// One segment would cost more to replay than a fraud proof may.
    #[error("one segment costs {cost} to replay, more than the bound {max}: ask for more segments or fewer steps")]
    SegmentTooCostly {
        /// The cost of the longest segment (saturated at u64::MAX).
        cost: u64,
        /// The bound.
        max: u64,
    },
    /// Fewer optimizer steps than segments.
    #[error("{steps} optimizer steps cannot be cut into {segments} segments, expected at least one step a segment")]
    TooFewSteps {
        /// Steps of the run.
        steps: u64,
        /// Segments asked for.
        segments: u32,
    },
    /// The bond is below the chain's minimum.
    #[error("worker bond {bond} is below the minimum {min}")]
    BondTooSmall {
        /// The spec's bond.
        bond: Amount,
        /// The chain's minimum.
        min: Amount,
    },
}

fn bound(field: &'static str, value: u32, min: u32, max: u32) -> Result<(), JobSpecError> {
    if value < min || value > max {
        return Err(JobSpecError::Bound {
            field,
            value: u64::from(value),
            min: u64::from(min),
            max: u64::from(max),
        });
    }
    Ok(())
}

fn finite_in(
    field: &'static str,
    value: F32Bits,
    ok: impl Fn(f32) -> bool,
    expected: &'static str,
) -> Result<(), JobSpecError> {
    if !value.is_finite() {
        return Err(JobSpecError::NotFinite { field, value });
    }
    if !ok(value.to_f32()) {
        return Err(JobSpecError::OutOfRange {
            field,
            value,
            expected,
        });
    }
    Ok(())
}

impl JobSpec {
    /// Width of the output layer: one logit per class, or one value.
    pub fn outputs(&self) -> u32 {
        match self.task {
            Task::Classification { classes } => classes,
            Task::Regression => 1,
        }
    }

    /// Number of trainable parameters (weights and biases of every layer).
    pub fn parameter_count(&self) -> Option<u64> {
        let widths = std::iter::once(self.dataset.features)
            .chain(self.model.hidden.iter().copied())
            .chain(std::iter::once(self.outputs()));
        let mut total = 0u64;
        let mut previous: Option<u32> = None;
        for width in widths {
            if let Some(inputs) = previous {
                let layer = u64::from(inputs)
                    .checked_mul(u64::from(width))?
                    .checked_add(u64::from(width))?;
                total = total.checked_add(layer)?;
            }
            previous = Some(width);
        }
        Some(total)
    }

    /// Optimizer steps of the run: `epochs · ceil(train rows / batch)`.
    pub fn total_steps(&self) -> Option<u64> {
        let train = self.split.sizes(self.dataset.rows).ok()?.train;
        let batch = self.batch_size.max(1);
        u64::from(self.epochs).checked_mul(u64::from(train.div_ceil(batch)))
    }

    /// What a whole run costs, in parameter-row units: every step's rows
    /// (`3·rows`) plus its overhead ([`STEP_OVERHEAD_ROWS`]), every committed
    /// state ([`STATE_COMMIT_ROWS`] for each of `segments + 1`), the forward
    /// passes over the validation and test rows, and standardizing the
    /// dataset. `None` on overflow.
    pub fn cost(&self) -> Option<u64> {
        let sizes = self.split.sizes(self.dataset.rows).ok()?;
        let params = self.parameter_count()?;
        let steps = self.total_steps()?;
        let train_rows = u64::from(self.epochs)
            .checked_mul(u64::from(sizes.train))?
            .checked_mul(TRAIN_ROW_UNITS)?;
        let overhead = steps.checked_mul(STEP_OVERHEAD_ROWS)?;
        let commits = u64::from(self.segments)
            .checked_add(1)?
            .checked_mul(STATE_COMMIT_ROWS)?;
        let evaluation = u64::from(sizes.validation).checked_add(u64::from(sizes.test))?;
        train_rows
            .checked_add(overhead)?
            .checked_add(commits)?
            .checked_add(evaluation)?
            .checked_mul(params)?
            .checked_add(self.preparation_cost()?)
    }

    /// Standardizing the dataset before any step: every value once.
    fn preparation_cost(&self) -> Option<u64> {
        u64::from(self.dataset.rows).checked_mul(u64::from(self.dataset.features))
    }

    /// What replaying the longest segment costs, the work one fraud proof
    /// puts on every node: its steps at a full batch each, loading and
    /// committing a state, and preparing the dataset. The final-state check
    /// (a forward pass over the test rows) is bounded by it as well.
    /// `None` on overflow or without segments.
    pub fn segment_cost(&self) -> Option<u64> {
        let params = self.parameter_count()?;
        let steps = self
            .total_steps()?
            .div_ceil(u64::from(self.segments).max(1));
        let rows = u64::from(self.batch_size)
            .checked_mul(TRAIN_ROW_UNITS)?
            .checked_add(STEP_OVERHEAD_ROWS)?;
        let sizes = self.split.sizes(self.dataset.rows).ok()?;
        let replay = steps.checked_mul(rows)?;
        let final_check = u64::from(sizes.validation).checked_add(u64::from(sizes.test))?;
        replay
            .max(final_check)
            .checked_add(STATE_COMMIT_ROWS.checked_mul(2)?)?
            .checked_mul(params)?
            .checked_add(self.preparation_cost()?)
    }

    /// Checks every field against `limits`: finite floats in range, bounded
    /// sizes, a split that leaves rows to train and test, a consistent task,
    /// the supported engine version and a bounded training cost.
    pub fn validate(&self, limits: &JobLimits) -> Result<(), JobSpecError> {
        bound("dataset rows", self.dataset.rows, 1, limits.max_rows)?;
        bound(
            "dataset features",
            self.dataset.features,
            1,
            limits.max_features,
        )?;
        let layers = u32::try_from(self.model.hidden.len()).unwrap_or(u32::MAX);
        bound("hidden layers", layers, 0, limits.max_hidden_layers)?;
        for width in &self.model.hidden {
            bound("hidden width", *width, 1, limits.max_width)?;
        }
        bound("epochs", self.epochs, 1, limits.max_epochs)?;
        bound("batch size", self.batch_size, 1, limits.max_batch)?;
        if self.engine_version != ENGINE_VERSION {
            return Err(JobSpecError::EngineVersion {
                got: self.engine_version,
                expected: ENGINE_VERSION,
            });
        }
        let consistent = match (self.task, self.loss, self.acceptance) {
            (
                Task::Classification { classes },
                Loss::CrossEntropy,
                Acceptance::MinAccuracy { ppm },
            ) => {
                bound("classes", classes, 2, limits.max_classes)?;
                bound("min accuracy ppm", ppm, 0, 1_000_000)?;
                true
            }
            (Task::Regression, Loss::Mse, Acceptance::MaxMse { mse }) => {
                finite_in("max mse", mse, |v| v >= 0.0, "at least 0")?;
                true
            }
            _ => false,
        };
        if !consistent {
            return Err(JobSpecError::Mismatch {
                task: self.task,
                loss: self.loss,
                acceptance: self.acceptance,
            });
        }
        let sizes = self.split.sizes(self.dataset.rows)?;
        if sizes.train == 0 || sizes.test == 0 {
            return Err(JobSpecError::BadSplit {
                validation_permille: self.split.validation_permille,
                test_permille: self.split.test_permille,
            });
        }
        let unit = |v: f32| (0.0..1.0).contains(&v);
        match self.optimizer {
            Optimizer::Sgd { lr, momentum } => {
                finite_in("learning rate", lr, |v| v > 0.0 && v <= 10.0, "in (0, 10]")?;
                finite_in("momentum", momentum, unit, "in [0, 1)")?;
            }
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => {
                finite_in("learning rate", lr, |v| v > 0.0 && v <= 10.0, "in (0, 10]")?;
                finite_in("beta1", beta1, unit, "in [0, 1)")?;
                finite_in("beta2", beta2, unit, "in [0, 1)")?;
                finite_in("epsilon", eps, |v| v > 0.0 && v <= 1.0, "in (0, 1]")?;
            }
        }
        finite_in("l1", self.l1, |v| (0.0..=1.0).contains(&v), "in [0, 1]")?;
        finite_in("l2", self.l2, |v| (0.0..=1.0).contains(&v), "in [0, 1]")?;
        bound("segments", self.segments, MIN_SEGMENTS, MAX_SEGMENTS)?;
        let steps = self.total_steps().unwrap_or(0);
        if steps < u64::from(self.segments) {
            return Err(JobSpecError::TooFewSteps {
                steps,
                segments: self.segments,
            });
        }
        bound(
            "challenge window",
            self.challenge_window,
            limits.min_challenge_window,
            limits.max_challenge_window,
        )?;
        if self.bond < limits.min_bond {
            return Err(JobSpecError::BondTooSmall {
                bond: self.bond,
                min: limits.min_bond,
            });
        }
        let cost = self.cost().unwrap_or(u64::MAX);
        if cost > limits.max_cost {
            return Err(JobSpecError::TooCostly {
                cost,
                max: limits.max_cost,
            });
        }
        let cost = self.segment_cost().unwrap_or(u64::MAX);
        if cost > limits.max_segment_cost {
            return Err(JobSpecError::SegmentTooCostly {
                cost,
                max: limits.max_segment_cost,
            });
        }
        Ok(())
    }
}

/// The seed a worker must train with: SHA-256 over a domain tag, the job id,
/// the worker's address and the job's base seed. A result copied from
/// another worker's transaction was trained with that worker's seed, so a
/// replay with the copier's seed does not reproduce it.
pub fn worker_seed(job: &JobId, worker: &Address, base_seed: u64) -> u64 {
    let digest = sha256_parts(&[
        b"gradchain/worker-seed/v1",
        job.as_bytes(),
        worker.as_bytes(),
        &base_seed.to_le_bytes(),
    ]);
    let mut first = [0u8; 8];
    for (dst, src) in first.iter_mut().zip(digest) {
        *dst = src;
    }
    u64::from_le_bytes(first)
}

/// Whether `metric` clears `spec`'s acceptance bar, given the number of test
/// rows the split yields.
pub fn check_acceptance(spec: &JobSpec, metric: &TestMetric) -> Result<(), AcceptanceError> {
    let test_rows = spec
        .split
        .sizes(spec.dataset.rows)
        .map_err(|_| AcceptanceError::WrongKind)?
        .test;
    match (spec.acceptance, metric) {
        (Acceptance::MinAccuracy { ppm }, TestMetric::Accuracy { correct, total }) => {
            if *total != test_rows || correct > total {
                return Err(AcceptanceError::BadCounts {
                    correct: *correct,
                    total: *total,
                    test_rows,
                });
            }
            // correct / total >= ppm / 1e6, in integers.
            let lhs = u64::from(*correct).saturating_mul(1_000_000);
            let rhs = u64::from(ppm).saturating_mul(u64::from(*total));
            if lhs < rhs {
                return Err(AcceptanceError::BelowThreshold {
                    metric: *metric,
                    threshold: spec.acceptance,
                });
            }
            Ok(())
        }
        (Acceptance::MaxMse { mse: max }, TestMetric::Mse(mse)) => {
            if !mse.is_finite() || mse.to_f32() < 0.0 || mse.to_f32() > max.to_f32() {
                return Err(AcceptanceError::BelowThreshold {
                    metric: *metric,
                    threshold: spec.acceptance,
                });
            }
            Ok(())
        }
        _ => Err(AcceptanceError::WrongKind),
    }
}

/// Why a claimed metric does not earn the bounty.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AcceptanceError {
    /// The metric misses the job's bar.
    #[error("{metric} misses the job's bar {threshold:?}")]
    BelowThreshold {
        /// The claimed metric.
        metric: TestMetric,
        /// The bar.
        threshold: Acceptance,
    },
    /// Accuracy counts that cannot come from this job's test part.
    #[error("accuracy {correct}/{total} is impossible: the test part has {test_rows} rows")]
    BadCounts {
        /// Claimed correct rows.
        correct: u32,
        /// Claimed total.
        total: u32,
        /// Rows in the test part.
        test_rows: u32,
    },
    /// An accuracy for a regression job or an MSE for a classification job.
    #[error("metric kind does not match the job's task")]
    WrongKind,
}

/// Why a verifier cannot judge a replay now. Each is a condition of the
/// node, never of the claim: a block waiting on one is parked and retried,
/// never marked invalid, and nobody is penalised for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A dataset or state blob is not held here (yet).
    #[error("blob {0} is not available here yet")]
    DataUnavailable(Digest),
    /// The verifier itself failed (a store error, a poisoned lock).
    #[error("verifier failed: {0}")]
    Internal(String),
    /// The caller admits transactions only and replays nothing
    /// ([`DeferReplays`]).
    #[error("replays are deferred to block validation")]
    Deferred,
}

/// What a deterministic replay yields: a value, or the finding that the
/// inputs the worker committed to cannot be trained from at all (a state
/// blob that does not decode for this spec, a dataset that does not fit it,
/// a loss that diverges). Both are facts every node reaches alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged<T> {
    /// The replay ran and produced this.
    Computed(T),
    /// The committed inputs admit no honest continuation; why, in words.
    Impossible(String),
}

/// What follows from a final state: the claimed part of a [`JobResult`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinalOutcome {
    /// Digest of the trained weights.
    pub weights: Digest,
    /// Mean training loss of the last epoch.
    pub train_loss: F32Bits,
    /// The test metric.
    pub metric: TestMetric,
}

/// Replays single segments of a job for fraud proofs. `protocol` defines it
/// so that block validation can ask for a replay without linking a training
/// engine; the `trainer` crate implements it over the node's blob store.
pub trait SegmentVerifier {
    /// The digest of `S_0`, derived from `worker`'s seed for `job`.
    fn initial_state(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
    ) -> Result<Judged<Digest>, VerifyError>;

    /// Replays segment `index` (`1..=spec.segments`) from the state whose
    /// digest is `prev_state` and returns the leaf of the state after it.
    fn replay_segment(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        index: u32,
        prev_state: &Digest,
    ) -> Result<Judged<SegmentLeaf>, VerifyError>;

    /// The weights digest, last-epoch loss and test metric that follow from
    /// the final state `final_state`.
    fn final_result(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        final_state: &Digest,
    ) -> Result<Judged<FinalOutcome>, VerifyError>;
}

/// A verifier for callers that only admit transactions (the mempool): it
/// replays nothing and answers every question with
/// [`VerifyError::Deferred`], which the rules read as "judge a fraud proof
/// as refuted", the outcome its sender can least count on. Block validation
/// never uses it.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeferReplays;

impl SegmentVerifier for DeferReplays {
    fn initial_state(
        &self,
        _: &JobId,
        _: &JobSpec,
        _: &Address,
    ) -> Result<Judged<Digest>, VerifyError> {
        Err(VerifyError::Deferred)
    }

    fn replay_segment(
        &self,
        _: &JobId,
        _: &JobSpec,
        _: &Address,
        _: u32,
        _: &Digest,
    ) -> Result<Judged<SegmentLeaf>, VerifyError> {
        Err(VerifyError::Deferred)
    }

    fn final_result(
        &self,
        _: &JobId,
        _: &JobSpec,
        _: &Address,
        _: &Digest,
    ) -> Result<Judged<FinalOutcome>, VerifyError> {
        Err(VerifyError::Deferred)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn limits() -> JobLimits {
        JobLimits {
            max_hidden_layers: 4,
            max_width: 512,
            max_features: 1024,
            max_rows: 100_000,
            max_classes: 100,
            max_epochs: 500,
            max_batch: 4096,
            max_cost: 1_000_000_000_000,
            max_segment_cost: 3_000_000_000,
            min_bond: Amount(100),
            min_challenge_window: 4,
            max_challenge_window: 10_000,
        }
    }

    fn digits() -> JobSpec {
        JobSpec {
            dataset: DatasetRef {
                digest: Digest([1; 32]),
                rows: 1797,
                features: 64,
            },
            task: Task::Classification { classes: 10 },
            split: Split {
                validation_permille: 100,
                test_permille: 200,
            },
            model: ModelSpec {
                hidden: vec![128, 128],
                activation: Activation::Relu,
            },
            loss: Loss::CrossEntropy,
            optimizer: Optimizer::Adam {
                lr: F32Bits::from_f32(1e-3),
                beta1: F32Bits::from_f32(0.9),
                beta2: F32Bits::from_f32(0.999),
                eps: F32Bits::from_f32(1e-8),
            },
            l1: F32Bits::from_f32(0.0),
            l2: F32Bits::from_f32(1e-4),
            batch_size: 64,
            epochs: 30,
            base_seed: 7,
            segments: 64,
            engine_version: ENGINE_VERSION,
            acceptance: Acceptance::MinAccuracy { ppm: 900_000 },
            bond: Amount(1000),
            challenge_window: 20,
        }
    }

    #[test]
    fn parameter_count_and_cost() {
        let spec = digits();
        assert_eq!(
            spec.parameter_count(),
            Some(64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10)
        );
        let sizes = spec.split.sizes(1797).unwrap();
        assert_eq!(
            (sizes.train, sizes.validation, sizes.test),
            (1259, 179, 359)
        );
        // 1259 rows in batches of 64: 20 steps an epoch.
        assert_eq!(spec.total_steps(), Some(30 * 20));
        let params = 26122u64;
        let expected = (30 * 1259 * TRAIN_ROW_UNITS
            + 600 * STEP_OVERHEAD_ROWS
            + 65 * STATE_COMMIT_ROWS
            + 179
            + 359)
            * params
            + 1797 * 64;
        assert_eq!(spec.cost(), Some(expected));
        // 600 steps in 64 segments: at most 10 steps a segment.
        let segment = (10 * (64 * TRAIN_ROW_UNITS + STEP_OVERHEAD_ROWS) + 2 * STATE_COMMIT_ROWS)
            * params
            + 1797 * 64;
        assert_eq!(spec.segment_cost(), Some(segment));
        spec.validate(&limits()).unwrap();
    }

    #[test]
    fn the_cost_model_prices_what_a_replay_really_does() {
        let base = digits();
        let base_cost = base.cost().unwrap();
        // Batch 1 is not free: the same rows in 32x the steps cost more.
        let mut tiny_batches = base.clone();
        tiny_batches.batch_size = 1;
        let per_step = tiny_batches.cost().unwrap() - base_cost;
        assert_eq!(
            per_step,
            (tiny_batches.total_steps().unwrap() - base.total_steps().unwrap())
                * STEP_OVERHEAD_ROWS
                * 26122
        );
        // Committing a state after every step is priced per state.
        let mut every_step = base.clone();
        every_step.segments = 600;
        assert_eq!(
            every_step.cost().unwrap() - base_cost,
            (600 - 64) * STATE_COMMIT_ROWS * 26122
        );
        // Validation rows are forward passes and are priced as such; at
        // 99.8 % the split leaves no rows to test on and is refused.
        let mut validating = base.clone();
        validating.split.validation_permille = 700;
        validating.split.test_permille = 100;
        let sizes = validating.split.sizes(1797).unwrap();
        assert!(validating.cost().unwrap() > sizes.validation as u64 * 26122);
        let mut all_validation = base.clone();
        all_validation.split.validation_permille = 998;
        all_validation.split.test_permille = 2;
        assert!(all_validation.validate(&limits()).is_err());
        // A job too long for its segments is refused until it has more.
        let mut long = base.clone();
        long.epochs = 500;
        long.segments = 8;
        assert!(matches!(
            long.validate(&limits()),
            Err(JobSpecError::SegmentTooCostly { .. })
        ));
        long.segments = 1024;
        long.validate(&limits()).unwrap();
        // Fewer steps than segments, a small bond, a short window.
        let mut short = base.clone();
        short.epochs = 1;
        short.segments = 64;
        assert!(matches!(
            short.validate(&limits()),
            Err(JobSpecError::TooFewSteps {
                steps: 20,
                segments: 64
            })
        ));
        let mut cheap = base.clone();
        cheap.bond = Amount(1);
        assert!(matches!(
            cheap.validate(&limits()),
            Err(JobSpecError::BondTooSmall { .. })
        ));
        let mut hasty = base;
        hasty.challenge_window = 1;
        assert!(matches!(
            hasty.validate(&limits()),
            Err(JobSpecError::Bound {
                field: "challenge window",
                ..
            })
        ));
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let mut spec = digits();
        spec.l2 = F32Bits::from_f32(f32::NAN);
        assert!(matches!(
            spec.validate(&limits()),
            Err(JobSpecError::NotFinite { field: "l2", .. })
        ));

        let mut spec = digits();
        spec.model.hidden = vec![100_000];
        assert!(matches!(
            spec.validate(&limits()),
            Err(JobSpecError::Bound {
                field: "hidden width",
                ..
            })
        ));

        let mut spec = digits();
        spec.loss = Loss::Mse;
        assert!(matches!(
            spec.validate(&limits()),
            Err(JobSpecError::Mismatch { .. })
        ));

        let mut spec = digits();
        spec.epochs = 500;
        spec.model.hidden = vec![512, 512, 512];
        assert!(matches!(
            spec.validate(&limits()),
            Err(JobSpecError::TooCostly { .. })
        ));

        let mut spec = digits();
        spec.split.test_permille = 0;
        assert!(matches!(
            spec.validate(&limits()),
            Err(JobSpecError::BadSplit { .. })
        ));
    }

    #[test]
    fn worker_seed_depends_on_job_worker_and_base_seed() {
        let job = JobId([1; 32]);
        let a = Address([2; 32]);
        let b = Address([3; 32]);
        assert_eq!(worker_seed(&job, &a, 0), worker_seed(&job, &a, 0));
        assert_ne!(worker_seed(&job, &a, 0), worker_seed(&job, &b, 0));
        assert_ne!(
            worker_seed(&job, &a, 0),
            worker_seed(&JobId([9; 32]), &a, 0)
        );
        assert_ne!(worker_seed(&job, &a, 0), worker_seed(&job, &a, 1));
    }

    #[test]
    fn acceptance_in_integers() {
        let spec = digits();
        let pass = TestMetric::Accuracy {
            correct: 324,
            total: 359,
        }; // 0.9025
        let fail = TestMetric::Accuracy {
            correct: 323,
            total: 359,
        }; // 0.8997
        assert_eq!(check_acceptance(&spec, &pass), Ok(()));
        assert!(matches!(
            check_acceptance(&spec, &fail),
            Err(AcceptanceError::BelowThreshold { .. })
        ));
        let forged = TestMetric::Accuracy {
            correct: 400,
            total: 400,
        };
        assert!(matches!(
            check_acceptance(&spec, &forged),
            Err(AcceptanceError::BadCounts { .. })
        ));
        assert_eq!(
            check_acceptance(&spec, &TestMetric::Mse(F32Bits::from_f32(1.0))),
            Err(AcceptanceError::WrongKind)
        );
    }
}
