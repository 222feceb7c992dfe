//! The reproducible operators, as candle custom ops with their backward
//! passes: a linear layer (matrix product plus bias), ReLU, softmax
//! cross-entropy, mean squared error and the L1/L2 weight penalty.
//!
//! Stock candle's matrix product (gemm) picks kernels by CPU features at run
//! time, its sums may follow compile-time SIMD paths, and `f32::exp`/`ln`
//! come from the platform libm; any of them can change a weight digest from
//! one machine to the next. These ops compute on the CPU slices with the
//! fixed-order kernels of [`crate::kernels`] and the pure-Rust `libm`
//! functions. They must never call back into a candle operator whose result
//! depends on the machine (matmul, sum, exp, log, softmax).

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]

use std::borrow::Cow;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Shape, Storage, Tensor};

use crate::kernels::{self, MatRef};

type CandleResult<T> = candle_core::Result<T>;

/// A class label as an index into a row of logits (a `u32` always fits a
/// usize on the 64-bit targets the engine runs on; were it not to, the
/// label would match no column).
pub(crate) fn label_index(label: u32) -> usize {
    usize::try_from(label).unwrap_or(usize::MAX)
}

/// A count (rows, elements) as the f32 a mean divides by: rounded to
/// nearest, as Rust's `as` defines it, which is the conversion every digest
/// so far was computed with (exact below 2^24).
pub(crate) fn count_f32(count: usize) -> f32 {
    #[allow(clippy::as_conversions)]
    let value = count as f32;
    value
}

fn error(message: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(message.to_string())
}

fn f32_slice<'a>(storage: &'a CpuStorage, op: &str) -> CandleResult<&'a [f32]> {
    match storage {
        CpuStorage::F32(data) => Ok(data),
        other => Err(error(format!(
            "{op}: got {:?} data, expected f32",
            other.dtype()
        ))),
    }
}

/// A rank-2 view of f32 storage under `layout`.
fn matrix<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> CandleResult<MatRef<'a>> {
    let data = f32_slice(storage, op)?;
    match (layout.dims(), layout.stride()) {
        (&[rows, cols], &[row_stride, col_stride]) => MatRef::new(
            data,
            layout.start_offset(),
            rows,
            cols,
            row_stride,
            col_stride,
        )
        .map_err(error),
        (dims, _) => Err(error(format!(
            "{op}: got shape {dims:?}, expected a matrix"
        ))),
    }
}

/// The elements of f32 storage under `layout`, in logical order.
fn elements<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> CandleResult<Cow<'a, [f32]>> {
    let data = f32_slice(storage, op)?;
    if let Some((start, end)) = layout.contiguous_offsets() {
        return data
            .get(start..end)
            .map(Cow::Borrowed)
            .ok_or_else(|| error(format!("{op}: layout past the end of its storage")));
    }
    // A strided view: walk the indices in row-major order like an odometer.
    let dims = layout.dims();
    let strides = layout.stride();
    let count: usize = dims.iter().product();
    let mut index = vec![0usize; dims.len()];
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        // Saturating: an offset past usize is past the storage and fails
        // the `get` below like any other out-of-range index.
        let at = index
            .iter()
            .zip(strides)
            .fold(layout.start_offset(), |at, (i, s)| {
                at.saturating_add(i.saturating_mul(*s))
            });
        out.push(
            data.get(at)
                .copied()
                .ok_or_else(|| error(format!("{op}: index {at} out of range")))?,
        );
        for (i, d) in index.iter_mut().zip(dims).rev() {
            // `i` stays below its dimension, itself a usize.
            *i = i.saturating_add(1);
            if *i < *d {
                break;
            }
            *i = 0;
        }
    }
    Ok(Cow::Owned(out))
}

/// Runs `f` on a tensor's CPU storage and layout.
fn with_storage<R>(
    tensor: &Tensor,
    f: impl FnOnce(&CpuStorage, &Layout) -> CandleResult<R>,
) -> CandleResult<R> {
    let (storage, layout) = tensor.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(cpu, layout),
        _ => Err(error("the reproducible engine runs on the CPU only")),
    }
}

fn scalar(tensor: &Tensor) -> CandleResult<f32> {
    with_storage(tensor, |s, l| {
        elements(s, l, "gradient")?
            .first()
            .copied()
            .ok_or_else(|| error("empty gradient"))
    })
}

/// `y = x · w + b` for `x: [batch, in]`, `w: [in, out]`, `b: [out]`.
#[derive(Clone, Copy, Debug)]
pub struct Linear {
    /// Whether the backward pass computes the gradient of `x`; the first
    /// layer's input is data, and skipping it saves a third of its work.
    pub input_grad: bool,
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "gradchain-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CandleResult<(CpuStorage, Shape)> {
        let x = matrix(s1, l1, "linear input")?;
        let w = matrix(s2, l2, "linear weight")?;
        let b = elements(s3, l3, "linear bias")?;
        if b.len() != w.cols() {
            return Err(error(format!(
                "linear bias has {} values, expected {}",
                b.len(),
                w.cols()
            )));
        }
        let mut y = kernels::matmul(x, w).map_err(error)?;
        kernels::add_rows(&mut y, &b);
        Ok((CpuStorage::F32(y), Shape::from((x.rows(), w.cols()))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let device = x.device();
        with_storage(grad, |gs, gl| {
            let g = matrix(gs, gl, "linear gradient")?;
            let grad_x = if self.input_grad {
                let gx = with_storage(w, |ws, wl| {
                    let w = matrix(ws, wl, "linear weight")?;
                    kernels::matmul(g, w.t()).map_err(error)
                })?;
                Some(Tensor::from_vec(gx, x.dims(), device)?)
            } else {
                None
            };
            let gw = with_storage(x, |xs, xl| {
                let x = matrix(xs, xl, "linear input")?;
                kernels::matmul(x.t(), g).map_err(error)
            })?;
            let gb = kernels::column_sums(&g.to_row_major(), g.cols());
            Ok((
                grad_x,
                Some(Tensor::from_vec(gw, w.dims(), device)?),
                Some(Tensor::from_vec(gb, g.cols(), device)?),
            ))
        })
    }
}

/// `max(x, 0)`, elementwise.
#[derive(Clone, Copy, Debug)]
pub struct Relu;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "gradchain-relu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CandleResult<(CpuStorage, Shape)> {
        let x = elements(storage, layout, "relu")?;
        let y = x.iter().map(|v| if *v > 0.0 { *v } else { 0.0 }).collect();
        Ok((CpuStorage::F32(y), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> CandleResult<Option<Tensor>> {
        let gx = with_storage(res, |rs, rl| {
            let y = elements(rs, rl, "relu output")?;
            with_storage(grad, |gs, gl| {
                let g = elements(gs, gl, "relu gradient")?;
                Ok(y.iter()
                    .zip(g.iter())
                    .map(|(y, g)| if *y > 0.0 { *g } else { 0.0 })
                    .collect::<Vec<f32>>())
            })
        })?;
        Ok(Some(Tensor::from_vec(gx, res.dims(), res.device())?))
    }
}

/// Per row of logits: the shift by its maximum, `Σ exp(z - max)`, and
/// `ln` of that sum, with pure-Rust `expf`/`logf`.
fn row_softmax_parts(row: &[f32]) -> (f32, f32, f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum_exp = kernels::sum(row.iter().map(|z| libm::expf(*z - max)));
    (max, sum_exp, libm::logf(sum_exp))
}

/// Mean softmax cross-entropy of row-major `logits` (`cols` classes)
/// against one label per row (checked by the caller): the value of
/// [`CrossEntropy`] and of the fused training step.
pub(crate) fn cross_entropy_loss(logits: &[f32], cols: usize, labels: &[u32]) -> f32 {
    let total = kernels::sum(
        logits
            .chunks_exact(cols.max(1))
            .zip(labels)
            .map(|(row, label)| {
                let (max, _, log_sum) = row_softmax_parts(row);
                let picked = row.get(label_index(*label)).copied().unwrap_or(0.0);
                log_sum - (picked - max)
            }),
    );
    total / count_f32(labels.len().max(1))
}

/// `scale · (softmax(z) − onehot(label))` per element into `out`: the
/// gradient of [`cross_entropy_loss`] when `scale` is the upstream gradient
/// over the row count.
pub(crate) fn cross_entropy_grad(
    logits: &[f32],
    cols: usize,
    labels: &[u32],
    scale: f32,
    out: &mut Vec<f32>,
) {
    out.clear();
    for (row, label) in logits.chunks_exact(cols.max(1)).zip(labels) {
        let (max, sum_exp, _) = row_softmax_parts(row);
        for (j, v) in row.iter().enumerate() {
            let p = libm::expf(*v - max) / sum_exp;
            let d = if j == label_index(*label) { p - 1.0 } else { p };
            out.push(d * scale);
        }
    }
}

/// [`cross_entropy_loss`] and [`cross_entropy_grad`] in one pass: each
/// `expf` is computed once and used for the row's sum, its loss term and its
/// gradient, the same values the two separate passes compute.
pub(crate) fn cross_entropy_loss_and_grad(
    logits: &[f32],
    cols: usize,
    labels: &[u32],
    scale: f32,
    out: &mut Vec<f32>,
) -> f32 {
    out.clear();
    let mut terms = Vec::with_capacity(labels.len());
    for (row, label) in logits.chunks_exact(cols.max(1)).zip(labels) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let start = out.len();
        out.extend(row.iter().map(|z| libm::expf(*z - max)));
        let exps = out.get(start..).unwrap_or_default();
        let sum_exp = kernels::sum(exps.iter().copied());
        let picked = row.get(label_index(*label)).copied().unwrap_or(0.0);
        terms.push(libm::logf(sum_exp) - (picked - max));
        for (j, e) in out.iter_mut().skip(start).enumerate() {
            let p = *e / sum_exp;
            let d = if j == label_index(*label) { p - 1.0 } else { p };
            *e = d * scale;
        }
    }
    kernels::sum(terms) / count_f32(labels.len().max(1))
}

/// Mean squared error of predictions against targets of the same length.
pub(crate) fn mse_loss(pred: &[f32], target: &[f32]) -> f32 {
    let total = kernels::sum(pred.iter().zip(target).map(|(p, t)| (p - t) * (p - t)));
    total / count_f32(pred.len().max(1))
}

/// `(p − t) · scale` per element into `out`: the gradient of [`mse_loss`]
/// when `scale` is twice the upstream gradient over the element count.
pub(crate) fn mse_grad(pred: &[f32], target: &[f32], scale: f32, out: &mut Vec<f32>) {
    out.clear();
    out.extend(pred.iter().zip(target).map(|(p, t)| (p - t) * scale));
}

/// Mean softmax cross-entropy of `logits: [batch, classes]` against
/// `labels: [batch]` (u32), a scalar.
#[derive(Clone, Copy, Debug)]
pub struct CrossEntropy;

fn labels<'a>(storage: &'a CpuStorage, layout: &Layout) -> CandleResult<&'a [u32]> {
    match storage {
        CpuStorage::U32(data) => layout
            .contiguous_offsets()
            .and_then(|(start, end)| data.get(start..end))
            .ok_or_else(|| error("labels must be contiguous")),
        other => Err(error(format!(
            "labels: got {:?}, expected u32",
            other.dtype()
        ))),
    }
}

impl CrossEntropy {
    fn check<'a>(logits: &MatRef<'a>, labels: &[u32]) -> CandleResult<()> {
        if labels.len() != logits.rows() {
            return Err(error(format!(
                "cross-entropy: got {} labels, expected {} (one per row)",
                labels.len(),
                logits.rows()
            )));
        }
        if let Some(bad) = labels.iter().find(|l| label_index(**l) >= logits.cols()) {
            return Err(error(format!(
                "cross-entropy: label {bad}, expected below {}",
                logits.cols()
            )));
        }
        Ok(())
    }
}

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "gradchain-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CandleResult<(CpuStorage, Shape)> {
        let logits = matrix(s1, l1, "logits")?;
        let labels = labels(s2, l2)?;
        Self::check(&logits, labels)?;
        let mean = cross_entropy_loss(&logits.to_row_major(), logits.cols(), labels);
        Ok((CpuStorage::F32(vec![mean]), Shape::from(())))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        labels_t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>)> {
        let scale = scalar(grad)? / count_f32(logits.dims().first().copied().unwrap_or(1).max(1));
        let gz = with_storage(logits, |s1, l1| {
            let m = matrix(s1, l1, "logits")?;
            with_storage(labels_t, |s2, l2| {
                let labels = labels(s2, l2)?;
                Self::check(&m, labels)?;
                let mut out = Vec::new();
                cross_entropy_grad(&m.to_row_major(), m.cols(), labels, scale, &mut out);
                Ok(out)
            })
        })?;
        Ok((
            Some(Tensor::from_vec(gz, logits.dims(), logits.device())?),
            None,
        ))
    }
}

/// Mean squared error of predictions against targets of the same element
/// count, a scalar.
#[derive(Clone, Copy, Debug)]
pub struct MeanSquaredError;

impl CustomOp2 for MeanSquaredError {
    fn name(&self) -> &'static str {
        "gradchain-mse"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CandleResult<(CpuStorage, Shape)> {
        let p = elements(s1, l1, "predictions")?;
        let t = elements(s2, l2, "targets")?;
        if p.len() != t.len() {
            return Err(error(format!(
                "mse: got {} targets, expected {}",
                t.len(),
                p.len()
            )));
        }
        Ok((CpuStorage::F32(vec![mse_loss(&p, &t)]), Shape::from(())))
    }

    fn bwd(
        &self,
        pred: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CandleResult<(Option<Tensor>, Option<Tensor>)> {
        let scale = 2.0 * scalar(grad)? / count_f32(pred.elem_count().max(1));
        let gp = with_storage(pred, |s1, l1| {
            let p = elements(s1, l1, "predictions")?;
            with_storage(target, |s2, l2| {
                let t = elements(s2, l2, "targets")?;
                let mut out = Vec::new();
                mse_grad(&p, &t, scale, &mut out);
                Ok(out)
            })
        })?;
        Ok((
            Some(Tensor::from_vec(gp, pred.dims(), pred.device())?),
            None,
        ))
    }
}

/// `l1 · Σ|w| + l2 · Σw²` over a weight tensor, a scalar.
#[derive(Clone, Copy, Debug)]
pub struct WeightPenalty {
    /// L1 coefficient.
    pub l1: f32,
    /// L2 coefficient.
    pub l2: f32,
}

impl WeightPenalty {
    /// The (sub)gradient at one weight `v` times the upstream gradient `g`,
    /// with `twice_l2 = 2·l2`.
    #[inline]
    pub(crate) fn gradient(&self, v: f32, twice_l2: f32, g: f32) -> f32 {
        // The subgradient 0 at 0 keeps exact zeros at zero.
        let sign = if v > 0.0 {
            1.0
        } else if v < 0.0 {
            -1.0
        } else {
            0.0
        };
        (self.l1 * sign + twice_l2 * v) * g
    }
}

impl CustomOp1 for WeightPenalty {
    fn name(&self) -> &'static str {
        "gradchain-weight-penalty"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> CandleResult<(CpuStorage, Shape)> {
        let w = elements(storage, layout, "penalty")?;
        let abs = kernels::sum(w.iter().map(|v| v.abs()));
        let squares = kernels::sum(w.iter().map(|v| v * v));
        Ok((
            CpuStorage::F32(vec![self.l1 * abs + self.l2 * squares]),
            Shape::from(()),
        ))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CandleResult<Option<Tensor>> {
        let g = scalar(grad)?;
        let twice_l2 = 2.0 * self.l2;
        let gw = with_storage(arg, |s, l| {
            let w = elements(s, l, "penalty")?;
            Ok(w.iter()
                .map(|v| self.gradient(*v, twice_l2, g))
                .collect::<Vec<f32>>())
        })?;
        Ok(Some(Tensor::from_vec(gw, arg.dims(), arg.device())?))
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::as_conversions)]
mod tests {
    //! Each backward pass against central finite differences of its forward
    //! pass, through candle's autograd.
    use super::*;
    use crate::rng::SplitMix64;
    use candle_core::{Device, Var};

    fn random(shape: &[usize], seed: u64) -> Var {
        let mut rng = SplitMix64::new(seed);
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.unit_f32() * 2.0 - 1.0).collect();
        Var::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    /// Values at least 0.1 away from 0, for ops with a kink there (ReLU,
    /// |w|), where a finite difference across the kink means nothing.
    fn away_from_zero(shape: &[usize], seed: u64) -> Var {
        let v = random(shape, seed)
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let moved: Vec<f32> = v
            .iter()
            .map(|x| if *x < 0.0 { x - 0.1 } else { x + 0.1 })
            .collect();
        Var::from_vec(moved, shape, &Device::Cpu).unwrap()
    }

    /// A scalar objective: Σ c·y with fixed random weights c (so every
    /// output element matters), summed in f64 from the values.
    fn objective(y: &Tensor, c: &[f32]) -> f64 {
        let values = y.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        values
            .iter()
            .zip(c)
            .map(|(y, c)| f64::from(*y) * f64::from(*c))
            .sum()
    }

    /// Checks d(objective)/d(input) of `f` at `vars[which]` against central
    /// differences.
    fn check_gradient(vars: &[Var], which: usize, f: &dyn Fn(&[Tensor]) -> Tensor) {
        let inputs: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y = f(&inputs);
        let n = y.elem_count();
        let mut rng = SplitMix64::new(99);
        let c: Vec<f32> = (0..n).map(|_| rng.unit_f32() - 0.5).collect();
        let ct = Tensor::from_vec(c.clone(), y.dims(), &Device::Cpu).unwrap();
        // candle's mul and sum only build the test objective here.
        let loss = (y * ct).unwrap().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        let analytic = grads
            .get(vars[which].as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let base = vars[which]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let eps = 1e-2f32;
        for idx in 0..base.len() {
            let at = |delta: f32| {
                let mut moved = base.clone();
                moved[idx] += delta;
                let t = Tensor::from_vec(moved, vars[which].dims(), &Device::Cpu).unwrap();
                let mut ins = inputs.clone();
                ins[which] = t;
                objective(&f(&ins), &c)
            };
            let numeric = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
            let got = f64::from(analytic[idx]);
            assert!(
                (numeric - got).abs() <= 2e-3 + 2e-2 * numeric.abs(),
                "input {which} element {idx}: analytic {got}, numeric {numeric}"
            );
        }
    }

    #[test]
    fn linear_gradients_match_finite_differences() {
        let vars = [random(&[5, 4], 1), random(&[4, 3], 2), random(&[3], 3)];
        let f = |t: &[Tensor]| {
            t[0].apply_op3(&t[1], &t[2], Linear { input_grad: true })
                .unwrap()
        };
        for which in 0..3 {
            check_gradient(&vars, which, &f);
        }
    }

    #[test]
    fn linear_forward_on_a_transposed_input() {
        let x = random(&[3, 2], 4);
        let w = random(&[3, 4], 5);
        let b = Tensor::zeros(4, candle_core::DType::F32, &Device::Cpu).unwrap();
        let xt = x.as_tensor().t().unwrap();
        let y = xt
            .apply_op3(w.as_tensor(), &b, Linear { input_grad: true })
            .unwrap();
        let dense = xt
            .contiguous()
            .unwrap()
            .apply_op3(w.as_tensor(), &b, Linear { input_grad: true })
            .unwrap();
        assert_eq!(y.to_vec2::<f32>().unwrap(), dense.to_vec2::<f32>().unwrap());
        assert_eq!(y.dims(), &[2, 4]);
    }

    #[test]
    fn relu_gradient_matches_finite_differences() {
        let vars = [away_from_zero(&[4, 5], 6)];
        check_gradient(&vars, 0, &|t: &[Tensor]| t[0].apply_op1(Relu).unwrap());
    }

    #[test]
    fn cross_entropy_value_and_gradient() {
        let logits =
            Tensor::from_vec(vec![0.0f32, 0.0, 0.0, 1.0, 2.0, 3.0], (2, 3), &Device::Cpu).unwrap();
        let labels = Tensor::from_vec(vec![1u32, 2], 2, &Device::Cpu).unwrap();
        let loss = logits
            .apply_op2(&labels, CrossEntropy)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let row2 = (1.0f64.exp() + 2.0f64.exp() + 3.0f64.exp()).ln() - 3.0;
        let want = (3.0f64.ln() + row2) / 2.0;
        assert!((f64::from(loss) - want).abs() < 1e-6, "{loss} vs {want}");

        let vars = [random(&[4, 3], 7)];
        let labels = Tensor::from_vec(vec![0u32, 2, 1, 2], 4, &Device::Cpu).unwrap();
        check_gradient(&vars, 0, &|t: &[Tensor]| {
            t[0].apply_op2(&labels, CrossEntropy).unwrap()
        });

        let bad = Tensor::from_vec(vec![0u32, 3, 1, 2], 4, &Device::Cpu).unwrap();
        assert!(vars[0].as_tensor().apply_op2(&bad, CrossEntropy).is_err());
    }

    #[test]
    fn mse_gradient_matches_finite_differences() {
        let vars = [random(&[6, 1], 8)];
        let target =
            Tensor::from_vec(vec![0.5f32, -1.0, 0.0, 2.0, 0.1, 0.3], (6, 1), &Device::Cpu).unwrap();
        check_gradient(&vars, 0, &|t: &[Tensor]| {
            t[0].apply_op2(&target, MeanSquaredError).unwrap()
        });
    }

    #[test]
    fn penalty_gradient_matches_finite_differences() {
        let vars = [away_from_zero(&[3, 4], 9)];
        let op = WeightPenalty { l1: 0.3, l2: 0.7 };
        check_gradient(&vars, 0, &|t: &[Tensor]| t[0].apply_op1(op).unwrap());
        let value = vars[0]
            .as_tensor()
            .apply_op1(op)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let w = vars[0]
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let want: f32 = 0.3 * w.iter().map(|v| v.abs()).sum::<f32>()
            + 0.7 * w.iter().map(|v| v * v).sum::<f32>();
        assert!((value - want).abs() < 1e-5);
    }
}
