//! What a training run is held to and what it reports, below the
//! [`crate::session::Session`] that steps it and the [`crate::train`] run
//! that drives the session: the check of a job spec against the dataset and
//! this engine, the errors of a run and of a training state's bytes, the
//! progress reported after each step, and the metric of a trained model.

use protocol::job::ENGINE_VERSION;
use protocol::{F32Bits, JobSpec, Loss, Task, TestMetric};

use crate::dataset::Dataset;
use crate::model::{argmax, ModelError, TrainedModel};
use crate::prep::{Part, PrepError};

/// Why bytes are not the encoding of a training state of a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The bytes end inside a field.
    #[error("training state ends at byte {at} inside {what}, expected {needed} more byte(s)")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        at: usize,
        /// Bytes it needs.
        needed: usize,
    },
    /// A field holds a value no run of this spec and dataset can reach.
    #[error("training state {what}: got {got}, expected {expected}")]
    Field {
        /// The field.
        what: &'static str,
        /// Its value.
        got: String,
        /// What the spec, the dataset or the other fields require.
        expected: String,
    },
    /// Bytes after the last field.
    #[error("training state has {got} byte(s) after its end, expected none")]
    Trailing {
        /// How many.
        got: usize,
    },
}

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
    /// Bytes that are not a training state of this spec and dataset.
    #[error(transparent)]
    State(#[from] StateError),
    /// A segment asked of a session that does not stand at its first step.
    #[error("segment {index} starts at step {expected}, but the session is at step {step}")]
    SegmentOrder {
        /// The segment.
        index: u32,
        /// Steps the session has done.
        step: u64,
        /// Steps before the segment.
        expected: u64,
    },
    /// A run asked for its result before taking all its steps.
    #[error("the run has taken {step} steps, expected all {total} before its result")]
    Unfinished {
        /// Steps done.
        step: u64,
        /// Steps in the run.
        total: u64,
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

pub(crate) fn spec_error(
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
pub(crate) fn check(spec: &JobSpec, dataset: &Dataset) -> Result<(), TrainError> {
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

/// Accuracy counts or the mean squared error (on the target's scale, summed
/// in row order in f64) of `model` on `part`.
pub(crate) fn evaluate(model: &TrainedModel, part: &Part) -> Result<TestMetric, TrainError> {
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
