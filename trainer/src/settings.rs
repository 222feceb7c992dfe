//! The trainer CLI's settings and their defaults, turned into a
//! [`JobSpec`] for a dataset.
//!
//! The defaults are chosen to train the shipped datasets well (digits test
//! accuracy ≥ 0.95). This module only builds values; it must never read
//! files, the environment or a clock.

use protocol::job::ENGINE_VERSION;
use protocol::{
    Acceptance, Activation, Amount, F32Bits, JobSpec, Loss, ModelSpec, Optimizer, Split, Task,
};

use crate::dataset::Dataset;

/// Which optimizer to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OptimizerKind {
    /// SGD with momentum.
    Sgd,
    /// Adam.
    Adam,
}

/// Settings of a local training run; `None` means the default for the task
/// or optimizer.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainSettings {
    /// Hidden layer widths.
    pub hidden: Vec<u32>,
    /// The loss; defaults to cross-entropy for classification, MSE for
    /// regression.
    pub loss: Option<Loss>,
    /// The optimizer.
    pub optimizer: OptimizerKind,
    /// Learning rate; defaults to [`DEFAULT_ADAM_LR`] or [`DEFAULT_SGD_LR`].
    pub lr: Option<f32>,
    /// SGD momentum.
    pub momentum: f32,
    /// L1 coefficient.
    pub l1: f32,
    /// L2 coefficient.
    pub l2: f32,
    /// Rows per batch.
    pub batch: u32,
    /// Passes over the training rows.
    pub epochs: u32,
    /// Seed of the split and of training.
    pub seed: u64,
    /// Segments the run's steps are cut into; a worker commits to the state
    /// after each.
    pub segments: u32,
}

/// Adam's default learning rate.
pub const DEFAULT_ADAM_LR: f32 = 0.003;
/// SGD's default learning rate.
pub const DEFAULT_SGD_LR: f32 = 0.05;
/// Held-out shares, in thousandths.
pub const DEFAULT_SPLIT: Split = Split {
    validation_permille: 100,
    test_permille: 200,
};

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            hidden: vec![64, 64],
            loss: None,
            optimizer: OptimizerKind::Adam,
            lr: None,
            momentum: 0.9,
            l1: 0.0,
            // Weight decay keeps the small datasets from overfitting
            // (diabetes in particular) at no cost to digits.
            l2: 0.01,
            batch: 32,
            epochs: 40,
            seed: 0,
            segments: protocol::segments::DEFAULT_SEGMENTS,
        }
    }
}

/// A setting out of range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what} is {got}, expected {expected}")]
pub struct SettingsError {
    /// The setting.
    pub what: &'static str,
    /// Its value.
    pub got: String,
    /// The allowed range.
    pub expected: &'static str,
}

fn range(
    what: &'static str,
    value: f32,
    ok: bool,
    expected: &'static str,
) -> Result<F32Bits, SettingsError> {
    if value.is_finite() && ok {
        Ok(F32Bits::from_f32(value))
    } else {
        Err(SettingsError {
            what,
            got: value.to_string(),
            expected,
        })
    }
}

impl TrainSettings {
    /// The job spec these settings describe for `dataset`; its base seed is
    /// the settings' seed.
    pub fn job_spec(&self, dataset: &Dataset) -> Result<JobSpec, SettingsError> {
        let task = dataset.task();
        let loss = self.loss.unwrap_or(match task {
            Task::Classification { .. } => Loss::CrossEntropy,
            Task::Regression => Loss::Mse,
        });
        let fits = matches!(
            (task, loss),
            (Task::Classification { .. }, Loss::CrossEntropy) | (Task::Regression, Loss::Mse)
        );
        if !fits {
            return Err(SettingsError {
                what: "loss",
                got: format!("{loss:?} for {task:?}"),
                expected: "ce for classification, mse for regression",
            });
        }
        if let Some(w) = self.hidden.iter().find(|w| **w == 0 || **w > 65_536) {
            return Err(SettingsError {
                what: "a hidden width",
                got: w.to_string(),
                expected: "1..=65536",
            });
        }
        for (what, value) in [
            ("batch", self.batch),
            ("epochs", self.epochs),
            ("segments", self.segments),
        ] {
            if value == 0 {
                return Err(SettingsError {
                    what,
                    got: "0".into(),
                    expected: "at least 1",
                });
            }
        }
        let lr_default = match self.optimizer {
            OptimizerKind::Adam => DEFAULT_ADAM_LR,
            OptimizerKind::Sgd => DEFAULT_SGD_LR,
        };
        let lr = self.lr.unwrap_or(lr_default);
        let lr = range("lr", lr, lr > 0.0 && lr <= 10.0, "in (0, 10]")?;
        let optimizer = match self.optimizer {
            OptimizerKind::Adam => Optimizer::Adam {
                lr,
                beta1: F32Bits::from_f32(0.9),
                beta2: F32Bits::from_f32(0.999),
                eps: F32Bits::from_f32(1e-8),
            },
            OptimizerKind::Sgd => Optimizer::Sgd {
                lr,
                momentum: range(
                    "momentum",
                    self.momentum,
                    (0.0..1.0).contains(&self.momentum),
                    "in [0, 1)",
                )?,
            },
        };
        let l1 = range("l1", self.l1, (0.0..=1.0).contains(&self.l1), "in [0, 1]")?;
        let l2 = range("l2", self.l2, (0.0..=1.0).contains(&self.l2), "in [0, 1]")?;
        Ok(JobSpec {
            dataset: dataset.dataset_ref(),
            task,
            split: DEFAULT_SPLIT,
            model: ModelSpec {
                hidden: self.hidden.clone(),
                activation: Activation::Relu,
            },
            loss,
            optimizer,
            l1,
            l2,
            batch_size: self.batch,
            epochs: self.epochs,
            base_seed: self.seed,
            segments: self.segments,
            engine_version: ENGINE_VERSION,
            acceptance: match task {
                Task::Classification { .. } => Acceptance::MinAccuracy { ppm: 0 },
                Task::Regression => Acceptance::MaxMse {
                    mse: F32Bits::from_f32(f32::MAX),
                },
            },
            // Chain-only terms: training ignores them, `job post` sets them.
            bond: Amount(0),
            challenge_window: 0,
        })
    }
}
