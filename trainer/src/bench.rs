//! The speed benchmark: the same training job timed on the reproducible
//! engine and on stock candle (candle-nn `Linear`, `loss::cross_entropy` and
//! `AdamW`), reported as steps per second and their ratio.
//!
//! Timing is measured here only to be printed; it must never be asserted in
//! a test or reach a training result. Stock candle is the baseline because
//! it is what the engine replaces: it is fast but not reproducible.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{Module, Optimizer as _};
use protocol::{F32Bits, Optimizer};

use crate::model::{Mlp, ModelError};
use crate::optim::OptimizerState;
use crate::rng::SplitMix64;
use crate::step::{BatchTargets, StepWorkspace};

/// A classification job to time: data, layer widths, batch size, steps.
#[derive(Clone, Debug)]
pub struct BenchJob {
    /// What the job is, for the report.
    pub name: String,
    /// Layer widths, input first.
    pub widths: Vec<usize>,
    /// Features, row-major.
    pub x: Vec<f32>,
    /// Labels.
    pub labels: Vec<u32>,
    /// Rows per batch.
    pub batch: usize,
    /// Steps to time (after a short warm-up).
    pub steps: usize,
}

/// Steps per second of each engine.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchResult {
    /// The job.
    pub name: String,
    /// The reproducible engine.
    pub reproducible: f64,
    /// Stock candle.
    pub stock: f64,
}

impl BenchResult {
    /// `reproducible / stock`.
    pub fn ratio(&self) -> f64 {
        self.reproducible / self.stock
    }
}

const WARMUP_STEPS: usize = 3;
const LR: f32 = 1e-3;

/// Synthetic MNIST-shaped data: `rows` rows of 784 values in [0, 1) and
/// labels in 0..10, from `seed`.
pub fn synthetic_mnist(rows: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = SplitMix64::new(seed);
    let x = (0..rows * 784).map(|_| rng.unit_f32()).collect();
    let labels = (0..rows).map(|_| rng.below(10) as u32).collect();
    (x, labels)
}

impl BenchJob {
    fn features(&self) -> usize {
        self.widths.first().copied().unwrap_or(1).max(1)
    }

    fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Batch `i` (cycling through the data): features and labels.
    fn batch_slices(&self, i: usize) -> (&[f32], &[u32]) {
        let f = self.features();
        let batches = (self.rows() / self.batch).max(1);
        let start = (i % batches) * self.batch;
        let end = (start + self.batch).min(self.rows());
        let x = self.x.get(start * f..end * f).unwrap_or_default();
        let y = self.labels.get(start..end).unwrap_or_default();
        (x, y)
    }

    /// Batch `i` (cycling through the data) as tensors.
    fn batch_tensors(&self, i: usize) -> Result<(Tensor, Tensor), ModelError> {
        let (x, y) = self.batch_slices(i);
        let (rows, f) = (y.len(), self.features());
        Ok((
            Tensor::from_slice(x, (rows, f), &Device::Cpu)?,
            Tensor::from_slice(y, rows, &Device::Cpu)?,
        ))
    }
}

fn adam() -> Optimizer {
    Optimizer::Adam {
        lr: F32Bits::from_f32(LR),
        beta1: F32Bits::from_f32(0.9),
        beta2: F32Bits::from_f32(0.999),
        eps: F32Bits::from_f32(1e-8),
    }
}

/// Steps per second of the reproducible engine on `job`.
pub fn time_reproducible(job: &BenchJob) -> Result<f64, ModelError> {
    let mlp = Mlp::init(&job.widths, 1)?;
    let sizes: Vec<usize> = mlp
        .named_params()
        .iter()
        .map(|(_, v)| v.elem_count())
        .collect();
    let mut optimizer = OptimizerState::new(&adam(), &sizes);
    let params: Vec<&Var> = mlp.named_params().into_iter().map(|(_, v)| v).collect();
    let mut workspace = StepWorkspace::new();
    let mut step = |i: usize| -> Result<(), ModelError> {
        let (x, y) = job.batch_slices(i);
        workspace.gradients(&mlp, x, y.len(), BatchTargets::Labels(y), None)?;
        optimizer.step_slices(&params, &workspace.named_grads(&mlp))?;
        Ok(())
    };
    for i in 0..WARMUP_STEPS {
        step(i)?;
    }
    let start = Instant::now();
    for i in 0..job.steps {
        step(i)?;
    }
    Ok(job.steps as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// Steps per second of stock candle on `job`: candle-nn `Linear` layers with
/// ReLU, `candle_nn::loss::cross_entropy` and `AdamW` without weight decay.
pub fn time_stock(job: &BenchJob) -> Result<f64, ModelError> {
    let mut rng = SplitMix64::new(1);
    let mut vars = Vec::new();
    let mut layers = Vec::new();
    for pair in job.widths.windows(2) {
        let (fan_in, fan_out) = match pair {
            [a, b] => (*a, *b),
            _ => continue,
        };
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let w: Vec<f32> = (0..fan_in * fan_out)
            .map(|_| (rng.unit_f32() * 2.0 - 1.0) * bound)
            .collect();
        let w = Var::from_vec(w, (fan_out, fan_in), &Device::Cpu)?;
        let b = Var::from_vec(vec![0.0f32; fan_out], fan_out, &Device::Cpu)?;
        layers.push(candle_nn::Linear::new(
            w.as_tensor().clone(),
            Some(b.as_tensor().clone()),
        ));
        vars.push(w);
        vars.push(b);
    }
    let mut optimizer = candle_nn::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr: f64::from(LR),
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?;
    let last = layers.len().saturating_sub(1);
    let mut step = |i: usize| -> Result<(), ModelError> {
        let (x, y) = job.batch_tensors(i)?;
        let mut h = x;
        for (j, layer) in layers.iter().enumerate() {
            h = layer.forward(&h)?;
            if j < last {
                h = h.relu()?;
            }
        }
        let loss = candle_nn::loss::cross_entropy(&h, &y)?;
        optimizer.backward_step(&loss)?;
        Ok(())
    };
    for i in 0..WARMUP_STEPS {
        step(i)?;
    }
    let start = Instant::now();
    for i in 0..job.steps {
        step(i)?;
    }
    Ok(job.steps as f64 / start.elapsed().as_secs_f64().max(1e-9))
}

/// Times `job` on both engines, stock first.
pub fn run(job: &BenchJob) -> Result<BenchResult, ModelError> {
    let stock = time_stock(job)?;
    let reproducible = time_reproducible(job)?;
    Ok(BenchResult {
        name: job.name.clone(),
        reproducible,
        stock,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_run_a_tiny_job() {
        let (x, labels) = synthetic_mnist(16, 3);
        let job = BenchJob {
            name: "tiny".into(),
            widths: vec![784, 8, 10],
            x,
            labels,
            batch: 8,
            steps: 2,
        };
        let r = run(&job).unwrap();
        assert!(r.reproducible > 0.0 && r.stock > 0.0);
        assert!(r.ratio().is_finite());
    }
}
