//! The speed benchmark: the same training jobs timed on the reproducible
//! engine and on stock candle (candle-nn `Linear`, `loss::cross_entropy` and
//! `AdamW`) at each thread count asked for, with PyTorch's figures for the
//! same jobs when a run of it is supplied, reported as steps per second, the
//! engine's ratio to each baseline and to itself on one thread, and the
//! engine's GFLOP/s beside the core's multiply-and-add peak measured in the
//! same run.
//!
//! Timing is measured here only to be printed; it must never be asserted in
//! a test or reach a training result. Stock candle is the baseline because
//! it is what the engine replaces: it is fast but not reproducible. Each
//! figure is the best of several rounds, the engines taking turns within a
//! round, so that a noisy neighbour on a shared machine slows both alike
//! and the ratios stay meaningful.

use std::time::Instant;

use candle_core::{Device, Tensor, Var};
use candle_nn::{Module, Optimizer as _};
use protocol::{F32Bits, Optimizer};

use crate::kernels;
use crate::model::{Mlp, ModelError};
use crate::optim::OptimizerState;
use crate::rng::SplitMix64;
use crate::step::{BatchTargets, StepWorkspace};

/// A classification job to time: data, layer widths, batch size, steps.
#[derive(Clone, Debug)]
pub struct BenchJob {
    /// What the job is, for the report.
    pub name: String,
    /// A short name, the key of the job in a PyTorch run's figures.
    pub key: String,
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

/// One job at one thread count: steps per second of each engine.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchRow {
    /// The job.
    pub name: String,
    /// Engine threads (and candle's, and PyTorch's).
    pub threads: usize,
    /// The reproducible engine.
    pub reproducible: f64,
    /// The engine's CPU time per step in that round, milliseconds, all
    /// threads together (`None` where the process's CPU time is unknown):
    /// on a busy machine, where steps/s at several threads says little,
    /// this shows what splitting a step costs.
    pub cpu_ms_per_step: Option<f64>,
    /// Stock candle (`None` when not timed).
    pub stock: Option<f64>,
    /// PyTorch, from a run supplied to the report (`None` when absent).
    pub pytorch: Option<f64>,
    /// Floating-point operations of one step's products (a multiply and an
    /// add count as two).
    pub flops_per_step: f64,
}

impl BenchRow {
    /// The engine's GFLOP/s in its products.
    pub fn gflops(&self) -> f64 {
        self.reproducible * self.flops_per_step / 1e9
    }
}

/// Multiplies and adds of one training step's matrix products for an MLP
/// of `widths` at `batch` rows, counted as two operations each: every
/// layer's forward product and weight gradient, and the input gradient of
/// every layer above the first.
pub fn flops_per_step(widths: &[usize], batch: usize) -> f64 {
    let mut macs = 0usize;
    for (i, pair) in widths.windows(2).enumerate() {
        if let [fan_in, fan_out] = pair {
            let product = batch.saturating_mul(*fan_in).saturating_mul(*fan_out);
            let products = if i == 0 { 2 } else { 3 };
            macs = macs.saturating_add(product.saturating_mul(products));
        }
    }
    2.0 * macs as f64
}

/// The core's multiply-and-add peak on one thread, GFLOP/s, on the tile
/// path the kernels dispatch to: the best of a few timed rounds of
/// [`kernels::mul_add_peak`].
pub fn mul_add_peak_gflops() -> f64 {
    let path = kernels::TilePath::detect();
    let mut best = 0.0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let (flops, keep) = kernels::mul_add_peak(path, 2_000_000);
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        std::hint::black_box(keep);
        best = best.max(flops as f64 / seconds / 1e9);
    }
    best
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

/// CPU time this process has used so far, user and system, all threads,
/// in seconds: from `/proc/self/stat` on Linux (in the kernel's 100 Hz
/// ticks), `None` elsewhere.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14, stime 15.
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / 100.0)
}

/// Steps per second of the reproducible engine on `job` with `threads`
/// engine threads.
pub fn time_reproducible(job: &BenchJob, threads: usize) -> Result<f64, ModelError> {
    time_reproducible_with_cpu(job, threads).map(|(rate, _)| rate)
}

/// [`time_reproducible`] and the CPU milliseconds per step it took (see
/// [`BenchRow::cpu_ms_per_step`]).
pub fn time_reproducible_with_cpu(
    job: &BenchJob,
    threads: usize,
) -> Result<(f64, Option<f64>), ModelError> {
    crate::pool::set_threads(threads);
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
    let cpu_start = process_cpu_seconds();
    let start = Instant::now();
    for i in 0..job.steps {
        step(i)?;
    }
    let rate = job.steps as f64 / start.elapsed().as_secs_f64().max(1e-9);
    let cpu = cpu_start
        .zip(process_cpu_seconds())
        .map(|(a, b)| 1e3 * (b - a) / job.steps.max(1) as f64);
    Ok((rate, cpu))
}

/// Steps per second of stock candle on `job` with `threads` threads:
/// candle-nn `Linear` layers with ReLU, `candle_nn::loss::cross_entropy`
/// and `AdamW` without weight decay.
pub fn time_stock(job: &BenchJob, threads: usize) -> Result<f64, ModelError> {
    // Candle's matrix product reads this on every call.
    std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
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

/// Times `job` at each of `threads`, best of `rounds` rounds, the engines
/// taking turns within a round (stock candle first unless `stock` is
/// false).
pub fn run(
    job: &BenchJob,
    threads: &[usize],
    rounds: usize,
    stock: bool,
) -> Result<Vec<BenchRow>, ModelError> {
    let mut rows = Vec::with_capacity(threads.len());
    for &n in threads {
        let mut best_stock = stock.then_some(0.0f64);
        let mut best = 0.0f64;
        let mut cpu = None;
        for _ in 0..rounds.max(1) {
            if let Some(b) = best_stock.as_mut() {
                *b = b.max(time_stock(job, n)?);
            }
            let (rate, round_cpu) = time_reproducible_with_cpu(job, n)?;
            if rate > best {
                (best, cpu) = (rate, round_cpu);
            }
        }
        rows.push(BenchRow {
            name: job.name.clone(),
            threads: n,
            reproducible: best,
            cpu_ms_per_step: cpu,
            stock: best_stock,
            pytorch: None,
            flops_per_step: flops_per_step(&job.widths, job.batch),
        });
    }
    Ok(rows)
}

/// The report: one line per job and thread count, then the peak.
pub fn table(rows: &[BenchRow], peak_gflops: f64, pytorch_note: Option<&str>) -> String {
    let figure = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
    let ratio = |a: f64, b: Option<f64>| {
        b.filter(|b| *b > 0.0)
            .map_or("-".to_string(), |b| format!("{:.2}x", a / b))
    };
    let mut lines = vec![format!(
        "{:<34} {:>3} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>5}",
        "job (steps/s)",
        "thr",
        "engine",
        "cpu ms/st",
        "candle",
        "pytorch",
        "vs cndl",
        "vs torch",
        "vs 1 thr",
        "GFLOP/s",
        "%peak"
    )];
    for row in rows {
        let single = rows
            .iter()
            .find(|r| r.name == row.name && r.threads == 1)
            .map(|r| r.reproducible);
        let peak_share = if row.threads == 1 && peak_gflops > 0.0 {
            format!("{:.0}%", 100.0 * row.gflops() / peak_gflops)
        } else {
            "-".to_string()
        };
        lines.push(format!(
            "{:<34} {:>3} {:>9.1} {:>9} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7.1} {:>5}",
            row.name,
            row.threads,
            row.reproducible,
            row.cpu_ms_per_step
                .map_or("-".to_string(), |c| format!("{c:.3}")),
            figure(row.stock),
            figure(row.pytorch),
            ratio(row.reproducible, row.stock),
            ratio(row.reproducible, row.pytorch),
            ratio(row.reproducible, single),
            row.gflops(),
            peak_share,
        ));
    }
    lines.push(format!(
        "core peak, separate multiply and add, one thread ({}): {peak_gflops:.1} GFLOP/s",
        kernels::kernel_name()
    ));
    if let Some(note) = pytorch_note {
        lines.push(format!("pytorch: {note}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_engines_run_a_tiny_job() {
        let (x, labels) = synthetic_mnist(16, 3);
        let job = BenchJob {
            name: "tiny".into(),
            key: "tiny".into(),
            widths: vec![784, 8, 10],
            x,
            labels,
            batch: 8,
            steps: 2,
        };
        let rows = run(&job, &[1, 2], 1, true).unwrap();
        assert_eq!(rows.len(), 2);
        for r in &rows {
            assert!(r.reproducible > 0.0 && r.stock.is_some_and(|s| s > 0.0));
        }
        let table = table(&rows, 1.0, Some("not run"));
        assert_eq!(table.lines().count(), 5, "{table}");
    }

    #[test]
    fn flops_count_every_product_of_a_step() {
        // The 784-256-256-10 job at batch 128: about 155 MFLOP a step.
        let f = flops_per_step(&[784, 256, 256, 10], 128);
        assert_eq!(
            f,
            2.0 * 128.0 * (2.0 * 784.0 * 256.0 + 3.0 * 256.0 * 256.0 + 3.0 * 2560.0)
        );
        assert!((f / 1e6 - 155.0).abs() < 1.0);
    }
}
