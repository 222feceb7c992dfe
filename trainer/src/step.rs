//! The training step's forward and backward pass over an [`Mlp`], written
//! out by hand over buffers that live across steps.
//!
//! Candle's autograd over the ops of [`crate::ops`] computes the same
//! gradients, but it allocates a fresh tensor per op and, for every
//! gradient, a zero tensor plus a sum; at these sizes the allocation,
//! zeroing and page faults cost as much as the arithmetic. Here each buffer
//! is reused and each gradient is written once, by the same slice functions
//! and kernels the ops use, so every element sees the same sequence of IEEE
//! operations as under autograd (a test holds the two bit-identical). This
//! module must never compute a value by a different formula or order than
//! the ops define: the ops are the specification, this is the fast path.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]

use candle_core::{CpuStorage, Storage, Tensor};

use crate::kernels::{self, MatRef};
use crate::model::{Mlp, ModelError};
use crate::ops::{self, WeightPenalty};

/// What a batch is trained towards.
#[derive(Clone, Copy, Debug)]
pub enum BatchTargets<'a> {
    /// One class label per row (cross-entropy).
    Labels(&'a [u32]),
    /// One value per output element (mean squared error).
    Values(&'a [f32]),
}

/// Activations and gradients of one step, kept for the next.
#[derive(Debug, Default)]
pub struct StepWorkspace {
    /// Each layer's output (after ReLU for hidden layers), row-major.
    outputs: Vec<Vec<f32>>,
    /// The loss gradient at the current layer's output.
    delta: Vec<f32>,
    /// The loss gradient at the previous layer's output, being computed.
    delta_below: Vec<f32>,
    /// `d loss / d weight`, per layer, `[in, out]` row-major.
    weight_grads: Vec<Vec<f32>>,
    /// `d loss / d bias`, per layer.
    bias_grads: Vec<Vec<f32>>,
}

fn engine_error(message: impl std::fmt::Display) -> ModelError {
    ModelError::Engine(message.to_string())
}

/// Runs `f` on the contiguous f32 values of each tensor.
fn with_values<R>(
    tensors: &[&Tensor],
    f: impl FnOnce(&[&[f32]]) -> Result<R, ModelError>,
) -> Result<R, ModelError> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let mut slices = Vec::with_capacity(guards.len());
    for (storage, layout) in &guards {
        let (start, end) = layout
            .contiguous_offsets()
            .ok_or_else(|| engine_error("parameter is not contiguous"))?;
        match &**storage {
            Storage::Cpu(CpuStorage::F32(data)) => slices.push(
                data.get(start..end)
                    .ok_or_else(|| engine_error("parameter layout out of range"))?,
            ),
            _ => return Err(engine_error("parameters must be f32 on the CPU")),
        }
    }
    f(&slices)
}

impl StepWorkspace {
    /// Empty buffers; they grow on the first step.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forward and backward pass for a `rows × inputs` batch `x`: returns
    /// the data loss and leaves the gradient of the objective (data loss
    /// plus `penalty` over the weight matrices) in [`Self::weight_grad`] and
    /// [`Self::bias_grad`].
    pub fn gradients(
        &mut self,
        mlp: &Mlp,
        x: &[f32],
        rows: usize,
        targets: BatchTargets<'_>,
        penalty: Option<WeightPenalty>,
    ) -> Result<f32, ModelError> {
        // Every product of the step is `rows × fan_in × fan_out` for some
        // layer, forwards or backwards.
        let largest = mlp
            .layers()
            .iter()
            .map(|l| l.weight.elem_count().saturating_mul(rows))
            .max()
            .unwrap_or(0);
        crate::pool::install_for(largest, || {
            self.gradients_here(mlp, x, rows, targets, penalty)
        })
    }

    /// [`Self::gradients`] on the calling thread.
    fn gradients_here(
        &mut self,
        mlp: &Mlp,
        x: &[f32],
        rows: usize,
        targets: BatchTargets<'_>,
        penalty: Option<WeightPenalty>,
    ) -> Result<f32, ModelError> {
        let layers = mlp.layers();
        let count = layers.len();
        if count == 0 {
            return Err(engine_error("the network has no layers"));
        }
        let mut tensors = Vec::with_capacity(count.saturating_mul(2));
        for layer in layers {
            tensors.push(layer.weight.as_tensor());
            tensors.push(layer.bias.as_tensor());
        }
        let mut widths = vec![mlp.inputs()];
        for (i, layer) in layers.iter().enumerate() {
            let fan_in = widths.last().copied().unwrap_or(0);
            match (layer.weight.dims(), layer.bias.dims()) {
                (&[rows, cols], &[bias]) if rows == fan_in && bias == cols => widths.push(cols),
                (w, b) => {
                    return Err(engine_error(format!(
                        "layer {i}: got weight {w:?} and bias {b:?}, expected [{fan_in}, n] and [n]"
                    )))
                }
            }
        }
        if Some(x.len()) != rows.checked_mul(mlp.inputs()) {
            return Err(ModelError::InputWidth {
                got: x.len().checked_div(rows).unwrap_or(0),
                expected: mlp.inputs(),
            });
        }
        self.outputs.resize_with(count, Vec::new);
        self.weight_grads.resize_with(count, Vec::new);
        self.bias_grads.resize_with(count, Vec::new);
        with_values(&tensors, |values| {
            let (weights, biases): (Vec<&[f32]>, Vec<&[f32]>) = values
                .chunks_exact(2)
                .filter_map(|pair| match pair {
                    [w, b] => Some((*w, *b)),
                    _ => None,
                })
                .unzip();
            self.forward(x, rows, &widths, &weights, &biases)?;
            let loss = self.loss_gradient(rows, &widths, targets)?;
            self.backward(x, rows, &widths, &weights, penalty)?;
            Ok(loss)
        })
    }

    /// `outputs[i] = act(input · W_i + b_i)`, as [`crate::ops::Linear`] and
    /// [`crate::ops::Relu`] compute it.
    fn forward(
        &mut self,
        x: &[f32],
        rows: usize,
        widths: &[usize],
        weights: &[&[f32]],
        biases: &[&[f32]],
    ) -> Result<(), ModelError> {
        let last = weights.len().saturating_sub(1);
        for (i, ((w, b), pair)) in weights
            .iter()
            .zip(biases)
            .zip(widths.windows(2))
            .enumerate()
        {
            let &[fan_in, fan_out] = pair else {
                return Err(engine_error("layer widths out of step"));
            };
            let (below, here) = self.outputs.split_at_mut(i);
            let input = match below.last() {
                Some(prev) => prev.as_slice(),
                None => x,
            };
            let Some(out) = here.first_mut() else {
                return Err(engine_error("layer buffers out of step"));
            };
            let relu = i < last;
            // The bias and ReLU, per element, on each band of whole rows as
            // soon as its product is done.
            kernels::matmul_into_then(
                MatRef::row_major(input, rows, fan_in).map_err(engine_error)?,
                MatRef::row_major(w, fan_in, fan_out).map_err(engine_error)?,
                out,
                |_, band| {
                    kernels::add_rows(band, b);
                    if relu {
                        for v in band.iter_mut() {
                            *v = if *v > 0.0 { *v } else { 0.0 };
                        }
                    }
                },
            )
            .map_err(engine_error)?;
        }
        Ok(())
    }

    /// The data loss, and its gradient at the network output in `delta`
    /// (the upstream gradient of the loss in the objective is 1).
    fn loss_gradient(
        &mut self,
        rows: usize,
        widths: &[usize],
        targets: BatchTargets<'_>,
    ) -> Result<f32, ModelError> {
        let outputs = widths.last().copied().unwrap_or(0);
        let logits = self
            .outputs
            .last()
            .ok_or_else(|| engine_error("the network has no layers"))?;
        match targets {
            BatchTargets::Labels(labels) => {
                if labels.len() != rows {
                    return Err(engine_error(format!(
                        "cross-entropy: got {} labels, expected {rows} (one per row)",
                        labels.len()
                    )));
                }
                if let Some(bad) = labels.iter().find(|l| ops::label_index(**l) >= outputs) {
                    return Err(engine_error(format!(
                        "cross-entropy: label {bad}, expected below {outputs}"
                    )));
                }
                let scale = 1.0f32 / ops::count_f32(rows.max(1));
                Ok(ops::cross_entropy_loss_and_grad(
                    logits,
                    outputs,
                    labels,
                    scale,
                    &mut self.delta,
                ))
            }
            BatchTargets::Values(values) => {
                if values.len() != logits.len() {
                    return Err(engine_error(format!(
                        "mse: got {} targets, expected {}",
                        values.len(),
                        logits.len()
                    )));
                }
                let loss = ops::mse_loss(logits, values);
                let scale = 2.0 * 1.0f32 / ops::count_f32(logits.len().max(1));
                ops::mse_grad(logits, values, scale, &mut self.delta);
                Ok(loss)
            }
        }
    }

    /// From the output gradient in `delta` down to the first layer, as
    /// [`crate::ops::Linear`], [`crate::ops::Relu`] and
    /// [`crate::ops::WeightPenalty`] differentiate.
    fn backward(
        &mut self,
        x: &[f32],
        rows: usize,
        widths: &[usize],
        weights: &[&[f32]],
        penalty: Option<WeightPenalty>,
    ) -> Result<(), ModelError> {
        for (i, (pair, weight)) in widths.windows(2).zip(weights).enumerate().rev() {
            let &[fan_in, fan_out] = pair else {
                return Err(engine_error("layer widths out of step"));
            };
            let input = match i.checked_sub(1).and_then(|j| self.outputs.get(j)) {
                Some(prev) => prev.as_slice(),
                None => x,
            };
            let delta = MatRef::row_major(&self.delta, rows, fan_out).map_err(engine_error)?;
            let (Some(grad_w), Some(grad_b)) =
                (self.weight_grads.get_mut(i), self.bias_grads.get_mut(i))
            else {
                return Err(engine_error("gradient buffers out of step"));
            };
            kernels::matmul_into(
                MatRef::row_major(input, rows, fan_in)
                    .map_err(engine_error)?
                    .t(),
                delta,
                grad_w,
            )
            .map_err(engine_error)?;
            if let Some(op) = penalty {
                // Autograd sums the data and penalty contributions into a
                // zero tensor; `0 + a` only turns -0 into +0, and a matrix
                // product never yields -0, so adding directly is the same.
                let twice_l2 = 2.0 * op.l2;
                for (g, w) in grad_w.iter_mut().zip(weight.iter()) {
                    *g += op.gradient(*w, twice_l2, 1.0);
                }
            }
            kernels::column_sums_into(&self.delta, fan_out, grad_b);
            if i > 0 {
                // ReLU's derivative, per element, on each band of whole rows
                // as soon as its product is done; `offset` is the band's
                // first element, the same index in the layer's input.
                kernels::matmul_into_then(
                    delta,
                    MatRef::row_major(weight, fan_in, fan_out)
                        .map_err(engine_error)?
                        .t(),
                    &mut self.delta_below,
                    |offset, band| {
                        let below = input.get(offset..).unwrap_or_default();
                        for (g, y) in band.iter_mut().zip(below) {
                            *g = if *y > 0.0 { *g } else { 0.0 };
                        }
                    },
                )
                .map_err(engine_error)?;
                std::mem::swap(&mut self.delta, &mut self.delta_below);
            }
        }
        Ok(())
    }

    /// The objective's gradient for layer `i`'s weight matrix.
    pub fn weight_grad(&self, layer: usize) -> Option<&[f32]> {
        self.weight_grads.get(layer).map(Vec::as_slice)
    }

    /// The objective's gradient for layer `i`'s bias.
    pub fn bias_grad(&self, layer: usize) -> Option<&[f32]> {
        self.bias_grads.get(layer).map(Vec::as_slice)
    }

    /// The gradient of each parameter in [`Mlp::named_params`] order.
    pub fn named_grads(&self, mlp: &Mlp) -> Vec<Option<&[f32]>> {
        mlp.named_param_slots()
            .into_iter()
            .map(|(layer, is_bias)| {
                if is_bias {
                    self.bias_grad(layer)
                } else {
                    self.weight_grad(layer)
                }
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::ops::{CrossEntropy, MeanSquaredError};
    use crate::rng::SplitMix64;
    use candle_core::Device;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.unit_f32() * 2.0 - 1.0).collect()
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// Candle autograd over the ops, the definition of the gradients.
    fn autograd(
        mlp: &Mlp,
        x: &[f32],
        rows: usize,
        targets: BatchTargets<'_>,
        penalty: Option<WeightPenalty>,
    ) -> (f32, Vec<Vec<f32>>) {
        let xt = Tensor::from_slice(x, (rows, mlp.inputs()), &Device::Cpu).unwrap();
        let out = mlp.forward(&xt).unwrap();
        let data_loss = match targets {
            BatchTargets::Labels(l) => out
                .apply_op2(
                    &Tensor::from_slice(l, rows, &Device::Cpu).unwrap(),
                    CrossEntropy,
                )
                .unwrap(),
            BatchTargets::Values(v) => out
                .apply_op2(
                    &Tensor::from_slice(v, out.dims(), &Device::Cpu).unwrap(),
                    MeanSquaredError,
                )
                .unwrap(),
        };
        let mut objective = data_loss.clone();
        if let Some(op) = penalty {
            for layer in mlp.layers() {
                objective = (objective + layer.weight.as_tensor().apply_op1(op).unwrap()).unwrap();
            }
        }
        let grads = objective.backward().unwrap();
        let named = mlp
            .named_params()
            .into_iter()
            .map(|(_, v)| {
                grads
                    .get(v.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
            .collect();
        (data_loss.to_scalar::<f32>().unwrap(), named)
    }

    #[test]
    fn fused_gradients_are_bitwise_those_of_autograd() {
        let penalties = [None, Some(WeightPenalty { l1: 1e-3, l2: 1e-2 })];
        for (widths, rows) in [(vec![13, 20, 9, 4], 11), (vec![40, 33, 1], 7)] {
            let mlp = Mlp::init(&widths, 3).unwrap();
            let x = random(rows * widths[0], 4);
            let outputs = widths.last().copied().unwrap();
            let labels: Vec<u32> = (0..rows).map(|r| (r * 7 % outputs) as u32).collect();
            let values = random(rows * outputs, 5);
            let cases = if outputs == 1 {
                vec![BatchTargets::Values(&values)]
            } else {
                vec![BatchTargets::Labels(&labels), BatchTargets::Values(&values)]
            };
            let mut workspace = StepWorkspace::new();
            for targets in cases {
                for penalty in penalties {
                    let (want_loss, want) = autograd(&mlp, &x, rows, targets, penalty);
                    let loss = workspace
                        .gradients(&mlp, &x, rows, targets, penalty)
                        .unwrap();
                    assert_eq!(loss.to_bits(), want_loss.to_bits());
                    let got = workspace.named_grads(&mlp);
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(bits(g.unwrap()), bits(w), "{widths:?} {penalty:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn bad_batches_are_errors() {
        let mlp = Mlp::init(&[3, 4, 2], 1).unwrap();
        let mut workspace = StepWorkspace::new();
        let x = random(6, 1);
        assert!(workspace
            .gradients(&mlp, &x, 2, BatchTargets::Labels(&[0, 2]), None)
            .is_err());
        assert!(workspace
            .gradients(&mlp, &x, 2, BatchTargets::Labels(&[0]), None)
            .is_err());
        assert!(workspace
            .gradients(&mlp, &x[..5], 2, BatchTargets::Labels(&[0, 1]), None)
            .is_err());
        assert!(workspace
            .gradients(&mlp, &x, 2, BatchTargets::Values(&[0.0; 3]), None)
            .is_err());
        assert!(workspace
            .gradients(&mlp, &x, 2, BatchTargets::Labels(&[0, 1]), None)
            .is_ok());
    }
}
