//! Training jobs as consensus sees them: the reproducibility manifest
//! ([`JobSpec`]), the result a worker claims ([`JobResult`]), the rules that
//! bound a job's cost, the derivation of a worker's training seed, and the
//! [`TrainingVerifier`] through which block validation asks for a replay.
//!
//! Training itself lives in the `trainer` crate; this module only describes
//! and checks. Floats are carried as [`F32Bits`] and must be finite.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::hash::sha256_parts;
use crate::types::{Address, Digest, F32Bits, JobId};

/// The version of the training engine whose results this chain accepts.
pub const ENGINE_VERSION: u32 = 1;

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
    /// Optimizer steps between checkpoints; 0 for none.
    pub checkpoint_interval: u32,
    /// The training engine version the result must come from.
    pub engine_version: u32,
    /// The bar for the bounty.
    pub acceptance: Acceptance,
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
    /// Digest of the sequence of checkpoint digests.
    pub checkpoints: Digest,
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
    /// Largest training cost (epochs x training rows x parameters).
    pub max_cost: u64,
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

    /// Training cost: epochs x training rows x parameters, `None` on overflow.
    pub fn training_cost(&self) -> Option<u64> {
        let train = self.split.sizes(self.dataset.rows).ok()?.train;
        u64::from(self.epochs)
            .checked_mul(u64::from(train))?
            .checked_mul(self.parameter_count()?)
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
        let cost = self.training_cost().unwrap_or(u64::MAX);
        if cost > limits.max_cost {
            return Err(JobSpecError::TooCostly {
                cost,
                max: limits.max_cost,
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

/// Why a replay did not confirm a claimed result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The replayed weights differ from the claim.
    #[error("weights digest {got} does not match the replay's {expected}")]
    WeightsMismatch {
        /// What the replay produced.
        expected: Digest,
        /// What was claimed.
        got: Digest,
    },
    /// The replayed checkpoints differ from the claim.
    #[error("checkpoints digest {got} does not match the replay's {expected}")]
    CheckpointsMismatch {
        /// What the replay produced.
        expected: Digest,
        /// What was claimed.
        got: Digest,
    },
    /// The replayed metric or loss differs from the claim.
    #[error("claimed {got} (train loss {got_loss}) but the replay gives {expected} (train loss {expected_loss})")]
    MetricMismatch {
        /// Replayed metric.
        expected: TestMetric,
        /// Claimed metric.
        got: TestMetric,
        /// Replayed train loss.
        expected_loss: F32Bits,
        /// Claimed train loss.
        got_loss: F32Bits,
    },
    /// The verifier does not hold the dataset.
    #[error("dataset {0} is not available for replay")]
    DatasetUnavailable(Digest),
    /// The replay itself failed.
    #[error("replay failed: {0}")]
    Replay(String),
}

/// Re-executes a job's training for a worker and checks the claimed result.
/// `protocol` defines it so that block validation can ask for a replay
/// without linking a training engine; the `trainer` crate implements it.
pub trait TrainingVerifier {
    /// `Ok` when replaying `spec` with `worker`'s seed for `job` reproduces
    /// `claimed` exactly.
    fn verify(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        claimed: &JobResult,
    ) -> Result<(), VerifyError>;
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
            max_cost: 10_000_000_000,
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
            checkpoint_interval: 100,
            engine_version: ENGINE_VERSION,
            acceptance: Acceptance::MinAccuracy { ppm: 900_000 },
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
        assert_eq!(spec.training_cost(), Some(30 * 1259 * 26122));
        spec.validate(&limits()).unwrap();
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
