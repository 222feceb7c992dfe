//! The training run: from a job spec, a dataset and a seed to trained
//! weights, checkpoints, losses and metrics.
//!
//! Everything that influences the result is in the spec, the dataset blob and
//! the seed; the run reads no clock, environment or thread count, so a replay
//! anywhere gives the same [`JobResult`]. This module must never let a
//! progress callback, a log line or a timing feed back into the computation.

use protocol::job::ENGINE_VERSION;
use protocol::{Digest, F32Bits, JobResult, JobSpec, Loss, Task, TestMetric};
use sha2::{Digest as _, Sha256};

use crate::dataset::Dataset;
use crate::model::{argmax, hash_tensor, Mlp, ModelError, TrainedModel};
use crate::ops::WeightPenalty;
use crate::optim::OptimizerState;
use crate::prep::{prepare, Part, PrepError, Prepared};
use crate::rng::SplitMix64;
use crate::step::{BatchTargets, StepWorkspace};

/// Why a training run could not start or finish.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TrainError {
    /// The spec does not fit the dataset or this engine.
    #[error("job spec {what}: got {got}, expected {expected}")]
    Spec {
        /// The field.
        what: &'static str,
        /// Its value.
        got: String,
        /// What the dataset or engine needs.
        expected: String,
    },
    /// The split is impossible.
    #[error(transparent)]
    Prep(#[from] PrepError),
    /// The engine failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The loss became NaN or infinite.
    #[error("training diverged at step {step}: loss is {loss}, expected a finite number")]
    Diverged {
        /// Optimizer step.
        step: u64,
        /// The loss.
        loss: f32,
    },
}

impl From<candle_core::Error> for TrainError {
    fn from(e: candle_core::Error) -> Self {
        Self::Model(ModelError::from(e))
    }
}

/// Where a run is, reported after each optimizer step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Progress {
    /// Epoch, from 1.
    pub epoch: u32,
    /// Epochs in the run.
    pub epochs: u32,
    /// Steps done.
    pub step: u64,
    /// Steps in the run.
    pub total_steps: u64,
    /// This step's data loss.
    pub batch_loss: f32,
    /// The epoch's mean data loss, on its last step.
    pub epoch_loss: Option<f32>,
}

/// Everything a run produces.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The weights and scaling.
    pub model: TrainedModel,
    /// What a worker puts on chain.
    pub result: JobResult,
    /// The checkpoint digests, in step order.
    pub checkpoints: Vec<Digest>,
    /// The metric on the validation part (`Accuracy { 0, 0 }` when it is empty).
    pub validation: TestMetric,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Trainable parameters.
    pub params: u64,
}

impl TrainOutcome {
    /// Test accuracy as a fraction, for classification.
    pub fn test_accuracy(&self) -> Option<f64> {
        accuracy(&self.result.metric)
    }
}

/// A metric's accuracy as a fraction.
pub fn accuracy(metric: &TestMetric) -> Option<f64> {
    match metric {
        TestMetric::Accuracy { correct, total } if *total > 0 => {
            Some(f64::from(*correct) / f64::from(*total))
        }
        _ => None,
    }
}

fn spec_error(
    what: &'static str,
    got: impl std::fmt::Debug,
    expected: impl std::fmt::Display,
) -> TrainError {
    TrainError::Spec {
        what,
        got: format!("{got:?}"),
        expected: expected.to_string(),
    }
}

/// The most trainable values a run may have (1 GiB of f32).
pub const MAX_PARAMETERS: u64 = 1 << 28;

/// Checks what this engine needs of the spec and the dataset it is given.
fn check(spec: &JobSpec, dataset: &Dataset) -> Result<(), TrainError> {
    if spec.engine_version != ENGINE_VERSION {
        return Err(spec_error(
            "engine version",
            spec.engine_version,
            ENGINE_VERSION,
        ));
    }
    if spec.dataset.rows != dataset.rows() {
        return Err(spec_error(
            "dataset rows",
            spec.dataset.rows,
            dataset.rows(),
        ));
    }
    if spec.dataset.features != dataset.features() {
        return Err(spec_error(
            "dataset features",
            spec.dataset.features,
            dataset.features(),
        ));
    }
    if spec.task != dataset.task() {
        return Err(spec_error(
            "task",
            spec.task,
            format!("{:?}", dataset.task()),
        ));
    }
    match (spec.task, spec.loss) {
        (Task::Classification { .. }, Loss::CrossEntropy) | (Task::Regression, Loss::Mse) => {}
        (task, loss) => return Err(spec_error("loss", loss, format!("the loss of {task:?}"))),
    }
    if spec.batch_size == 0 {
        return Err(spec_error("batch size", 0, "at least 1"));
    }
    if spec.epochs == 0 {
        return Err(spec_error("epochs", 0, "at least 1"));
    }
    if let Some(w) = spec.model.hidden.iter().find(|w| **w == 0) {
        return Err(spec_error("hidden width", w, "at least 1"));
    }
    // Chain specs are bounded by consensus limits before they get here; this
    // keeps a direct caller from asking for more memory than exists.
    match spec.parameter_count() {
        Some(count) if count <= MAX_PARAMETERS => {}
        count => {
            return Err(TrainError::Spec {
                what: "parameter count",
                got: count.map_or_else(|| "more than 2^64".to_string(), |c| c.to_string()),
                expected: format!("at most {MAX_PARAMETERS}"),
            })
        }
    }
    let floats = [("l1", spec.l1), ("l2", spec.l2)];
    if let Some((name, value)) = floats
        .iter()
        .find(|(_, v)| !v.is_finite() || v.to_f32() < 0.0)
    {
        return Err(spec_error(name, value.to_f32(), "a finite number >= 0"));
    }
    Ok(())
}

/// Trains `spec` on `dataset` with training seed `seed` (for a chain job:
/// `protocol::job::worker_seed(job, worker, spec.base_seed)`).
///
/// The run: split and standardize by `spec.base_seed`; initialise from
/// `seed`; each epoch, reshuffle the training rows (the seed's "batches"
/// stream), take batches of `batch_size` in that order (the last may be
/// short), minimise the data loss plus `l1·Σ|w| + l2·Σw²` over weight
/// matrices (not biases), and every `checkpoint_interval` steps record the
/// digest of weights and optimizer state. Then measure validation and test.
pub fn train(
    spec: &JobSpec,
    dataset: &Dataset,
    seed: u64,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome, TrainError> {
    check(spec, dataset)?;
    let prepared = prepare(dataset, &spec.split, spec.base_seed)?;
    let Prepared {
        features,
        train: train_part,
        validation,
        test,
        scaling,
    } = prepared;
    let outputs = spec.outputs() as usize;
    let widths: Vec<usize> = std::iter::once(features)
        .chain(spec.model.hidden.iter().map(|w| *w as usize))
        .chain(std::iter::once(outputs))
        .collect();
    let mlp = Mlp::init(&widths, seed)?;
    let sizes: Vec<usize> = mlp
        .named_params()
        .iter()
        .map(|(_, v)| v.elem_count())
        .collect();
    let mut optimizer = OptimizerState::new(&spec.optimizer, &sizes);
    let (l1, l2) = (spec.l1.to_f32(), spec.l2.to_f32());
    let penalty = (l1 != 0.0 || l2 != 0.0).then_some(WeightPenalty { l1, l2 });

    let batch = spec.batch_size as usize;
    let batches_per_epoch = train_part.rows.div_ceil(batch) as u64;
    let total_steps = batches_per_epoch * u64::from(spec.epochs);
    let mut order: Vec<usize> = (0..train_part.rows).collect();
    let mut order_rng = SplitMix64::for_purpose(seed, "batches");
    let mut checkpoints = Vec::new();
    let mut step = 0u64;
    let mut train_loss = 0.0f32;
    let mut x_batch = Vec::with_capacity(batch.min(train_part.rows) * features);
    let mut labels_batch = Vec::new();
    let mut targets_batch = Vec::new();
    let mut workspace = StepWorkspace::new();
    let params: Vec<_> = mlp.named_params().into_iter().map(|(_, v)| v).collect();
    for epoch in 1..=spec.epochs {
        order_rng.shuffle(&mut order);
        let mut epoch_losses = Vec::with_capacity(batches_per_epoch as usize);
        for rows in order.chunks(batch) {
            x_batch.clear();
            for &r in rows {
                x_batch.extend_from_slice(
                    train_part
                        .x
                        .get(r * features..(r + 1) * features)
                        .unwrap_or_default(),
                );
            }
            let loss = match spec.loss {
                Loss::CrossEntropy => {
                    labels_batch.clear();
                    labels_batch.extend(
                        rows.iter()
                            .map(|&r| train_part.labels.get(r).copied().unwrap_or(0)),
                    );
                    workspace.gradients(
                        &mlp,
                        &x_batch,
                        rows.len(),
                        BatchTargets::Labels(&labels_batch),
                        penalty,
                    )?
                }
                Loss::Mse => {
                    targets_batch.clear();
                    targets_batch.extend(
                        rows.iter()
                            .map(|&r| train_part.targets.get(r).copied().unwrap_or(0.0)),
                    );
                    workspace.gradients(
                        &mlp,
                        &x_batch,
                        rows.len(),
                        BatchTargets::Values(&targets_batch),
                        penalty,
                    )?
                }
            };
            step += 1;
            if !loss.is_finite() {
                return Err(TrainError::Diverged { step, loss });
            }
            optimizer.step_slices(&params, &workspace.named_grads(&mlp))?;
            epoch_losses.push(loss);
            if spec.checkpoint_interval > 0
                && step.is_multiple_of(u64::from(spec.checkpoint_interval))
            {
                checkpoints.push(checkpoint_digest(step, &mlp, &optimizer)?);
            }
            let last = epoch_losses.len() as u64 == batches_per_epoch;
            if last {
                train_loss =
                    crate::kernels::sum(epoch_losses.iter().copied()) / epoch_losses.len() as f32;
            }
            on_progress(&Progress {
                epoch,
                epochs: spec.epochs,
                step,
                total_steps,
                batch_loss: loss,
                epoch_loss: last.then_some(train_loss),
            });
        }
    }
    let model = TrainedModel {
        task: spec.task,
        mlp,
        scaling,
    };
    let metric = evaluate(&model, &test)?;
    let validation = evaluate(&model, &validation)?;
    let result = JobResult {
        weights: model.digest()?,
        checkpoints: combine_checkpoints(&checkpoints),
        train_loss: F32Bits::from_f32(train_loss),
        metric,
    };
    Ok(TrainOutcome {
        params: model.mlp.parameter_count() as u64,
        model,
        result,
        checkpoints,
        validation,
        steps: step,
    })
}

/// SHA-256 over a domain tag, the step, every parameter (digest encoding,
/// sorted by name) and the optimizer state.
fn checkpoint_digest(
    step: u64,
    mlp: &Mlp,
    optimizer: &OptimizerState,
) -> Result<Digest, TrainError> {
    let mut hasher = Sha256::new();
    hasher.update(b"gradchain/checkpoint/v1");
    hasher.update(step.to_le_bytes());
    for (name, var) in mlp.named_params() {
        hash_tensor(&mut hasher, &name, var.as_tensor())?;
    }
    optimizer.hash_into(&mut hasher);
    Ok(Digest(hasher.finalize().into()))
}

/// The `checkpoints` digest of a result: SHA-256 over a domain tag, the
/// count (u64 LE) and each checkpoint digest in order.
pub fn combine_checkpoints(checkpoints: &[Digest]) -> Digest {
    let mut hasher = Sha256::new();
    hasher.update(b"gradchain/checkpoints/v1");
    hasher.update((checkpoints.len() as u64).to_le_bytes());
    for c in checkpoints {
        hasher.update(c.as_bytes());
    }
    Digest(hasher.finalize().into())
}

/// Accuracy counts or the mean squared error (on the target's scale, summed
/// in row order in f64) of `model` on `part`.
fn evaluate(model: &TrainedModel, part: &Part) -> Result<TestMetric, TrainError> {
    let outputs = model.outputs(&part.x)?;
    let total = u32::try_from(part.rows).unwrap_or(u32::MAX);
    match model.task {
        Task::Classification { classes } => {
            let width = (classes as usize).max(1);
            let correct = outputs
                .chunks(width)
                .zip(&part.labels)
                .filter(|(row, label)| argmax(row) == **label)
                .count();
            Ok(TestMetric::Accuracy {
                correct: u32::try_from(correct).unwrap_or(u32::MAX),
                total,
            })
        }
        Task::Regression => {
            let mut squares = 0.0f64;
            for (out, target) in outputs.iter().zip(&part.raw_targets) {
                let d = f64::from(model.scaling.target_value(*out)) - f64::from(*target);
                squares += d * d;
            }
            let mse = if part.rows == 0 {
                0.0
            } else {
                squares / part.rows as f64
            };
            Ok(TestMetric::Mse(F32Bits::from_f32(mse as f32)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{parse_csv, DatasetLimits, TaskKind};
    use crate::settings::TrainSettings;

    fn tiny() -> Dataset {
        let mut text = String::from("a,b,y\n");
        for i in 0..40 {
            let (a, b) = (i % 7, i % 5);
            text.push_str(&format!("{a},{b},{}\n", u32::from(a > 3)));
        }
        parse_csv(&text, TaskKind::Classification, &DatasetLimits::default()).unwrap()
    }

    fn settings() -> TrainSettings {
        TrainSettings {
            hidden: vec![4],
            epochs: 3,
            batch: 8,
            checkpoint_interval: 2,
            ..TrainSettings::default()
        }
    }

    #[test]
    fn the_spec_must_fit_the_dataset_and_the_engine() {
        let ds = tiny();
        let good = settings().job_spec(&ds).unwrap();
        let run = |spec: &JobSpec| train(spec, &ds, 1, &mut |_| {});
        assert!(run(&good).is_ok());

        let mut spec = good.clone();
        spec.dataset.rows = 41;
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec {
                what: "dataset rows",
                ..
            })
        ));
        let mut spec = good.clone();
        spec.loss = Loss::Mse;
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec { what: "loss", .. })
        ));
        let mut spec = good.clone();
        spec.engine_version += 1;
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec {
                what: "engine version",
                ..
            })
        ));
        let mut spec = good.clone();
        spec.model.hidden = vec![1 << 20, 1 << 20];
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec {
                what: "parameter count",
                ..
            })
        ));
        let mut spec = good.clone();
        spec.batch_size = u32::MAX;
        assert!(run(&spec).is_ok(), "one batch of every row");
        let mut spec = good;
        spec.split.test_permille = 0;
        assert!(matches!(run(&spec), Err(TrainError::Prep(_))));
    }

    #[test]
    fn progress_steps_and_checkpoints_follow_the_spec() {
        let ds = tiny();
        let spec = settings().job_spec(&ds).unwrap();
        let mut seen = Vec::new();
        let outcome = train(&spec, &ds, 1, &mut |p| seen.push(*p)).unwrap();
        // 40 rows: 8 test, 4 validation, 28 train in batches of 8 -> 4 steps
        // an epoch, 12 in all, a checkpoint every 2.
        assert_eq!(outcome.steps, 12);
        assert_eq!(seen.len(), 12);
        assert!(seen.iter().all(|p| p.total_steps == 12));
        let epoch_ends: Vec<u32> = seen
            .iter()
            .filter(|p| p.epoch_loss.is_some())
            .map(|p| p.epoch)
            .collect();
        assert_eq!(epoch_ends, vec![1, 2, 3]);
        assert_eq!(outcome.checkpoints.len(), 6);
        assert_eq!(
            outcome.result.checkpoints,
            combine_checkpoints(&outcome.checkpoints)
        );
        assert_eq!(
            seen.last().and_then(|p| p.epoch_loss),
            Some(outcome.result.train_loss.to_f32())
        );
        assert!(matches!(
            outcome.validation,
            TestMetric::Accuracy { total: 4, .. }
        ));
        assert!(matches!(
            outcome.result.metric,
            TestMetric::Accuracy { total: 8, .. }
        ));
    }
}
