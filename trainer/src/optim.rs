//! The optimizers: SGD with momentum and Adam, each a single fused pass over
//! the raw parameter, gradient and state buffers, applied in place through a
//! candle in-place op.
//!
//! Stock candle-nn's optimizers chain a dozen tensor ops per parameter (each
//! allocating); here one loop reads the gradient and state once and writes
//! the parameter and state once. Every element sees a fixed sequence of
//! IEEE operations, including Adam's bias corrections, which are running
//! products of the betas in f32. This module must never use `powf`/`exp`
//! from the platform or reorder the per-element formula: the training state
//! a worker commits to carries these buffers, so their bits are consensus.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]

use std::cell::RefCell;
use std::sync::{Mutex, PoisonError};

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp1, Layout, Storage, Var};
use protocol::Optimizer;

type CandleResult<T> = candle_core::Result<T>;

fn error(message: impl std::fmt::Display) -> candle_core::Error {
    candle_core::Error::Msg(message.to_string())
}

/// Optimizer hyper-parameters and state, one state buffer per parameter in
/// the model's parameter order.
#[derive(Clone, Debug)]
pub enum OptimizerState {
    /// `v = μ·v + g; p = p − lr·v`.
    Sgd {
        /// Learning rate.
        lr: f32,
        /// Momentum μ.
        momentum: f32,
        /// Velocity per parameter.
        velocity: Vec<Vec<f32>>,
    },
    /// Adam (Kingma and Ba) with bias correction.
    Adam {
        /// Learning rate.
        lr: f32,
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Denominator epsilon.
        eps: f32,
        /// `beta1^t`, as a running product.
        beta1_power: f32,
        /// `beta2^t`, as a running product.
        beta2_power: f32,
        /// First moments.
        m: Vec<Vec<f32>>,
        /// Second moments.
        v: Vec<Vec<f32>>,
    },
}

/// One state buffer per parameter.
type Buffers = Vec<Vec<f32>>;

/// Coefficients of one update, fixed for all elements of a step.
#[derive(Clone, Copy, Debug)]
enum Update {
    Sgd {
        lr: f32,
        momentum: f32,
    },
    Adam {
        beta1: f32,
        one_minus_beta1: f32,
        beta2: f32,
        one_minus_beta2: f32,
        step_size: f32,
        sqrt_correction2: f32,
        eps: f32,
    },
}

/// The fused in-place update of one parameter tensor from its gradient.
struct FusedStep<'a> {
    update: Update,
    grads: &'a [f32],
    first: RefCell<&'a mut [f32]>,
    second: RefCell<&'a mut [f32]>,
}

impl InplaceOp1 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "gradchain-fused-optimizer-step"
    }

    fn cpu_fwd(&self, s1: &mut CpuStorage, l1: &Layout) -> CandleResult<()> {
        let (start, end) = l1
            .contiguous_offsets()
            .ok_or_else(|| error("parameter is not contiguous"))?;
        let params = match s1 {
            CpuStorage::F32(data) => data
                .get_mut(start..end)
                .ok_or_else(|| error("parameter layout out of range"))?,
            other => {
                return Err(error(format!(
                    "parameter is {:?}, expected f32",
                    other.dtype()
                )))
            }
        };
        let grads = self.grads;
        if grads.len() != params.len() {
            return Err(error(format!(
                "gradient has {} values, expected {}",
                grads.len(),
                params.len()
            )));
        }
        let mut first = self.first.borrow_mut();
        let mut second = self.second.borrow_mut();
        let (first, second) = (&mut **first, &mut **second);
        let update = self.update;
        // Each element's update is independent of the others and made of
        // correctly rounded operations, so any vector width, and any cut of
        // the elements into ranges run on different threads, gives its bits.
        let parts = crate::pool::parts_for(params.len(), ELEMENT_COST);
        apply_in_parts(update, params, grads, first, second, parts);
        Ok(())
    }
}

/// One thread's share of an update: parameters, gradients, first and
/// second state (empty for SGD), the same index range of each.
type Range<'a> = (&'a mut [f32], &'a [f32], &'a mut [f32], &'a mut [f32]);

/// Cost of one element's update in multiply-adds, for sizing the threads'
/// shares: Adam's square root and divisions, and four streams of memory
/// per element, cost about as much as 40 of the kernels' multiply-adds
/// (measured with `bench` on the 784-256-256-10 job: about 0.4 ns per
/// element on one thread, against 0.01 ns per multiply-add). So the first
/// layer's 200K-element update is split and updates under about 50K
/// elements stay on the calling thread.
const ELEMENT_COST: usize = 40;

/// Elements per 512-bit vector: shares are cut on multiples of it so that
/// no vector loop is left with a ragged middle.
const VECTOR_LANES: usize = 16;

/// [`apply`] over `parts` contiguous ranges of the elements, run on the
/// engine's pool, each compiled for the widest vectors the CPU has.
fn apply_in_parts(
    update: Update,
    params: &mut [f32],
    grads: &[f32],
    first: &mut [f32],
    second: &mut [f32],
    parts: usize,
) {
    let per_part = crate::pool::chunk_len(params.len(), VECTOR_LANES, parts);
    let mut seconds = second.chunks_mut(per_part);
    let ranges: Vec<Mutex<Range<'_>>> = params
        .chunks_mut(per_part)
        .zip(grads.chunks(per_part))
        .zip(first.chunks_mut(per_part))
        .map(|((p, g), f)| Mutex::new((p, g, f, seconds.next().unwrap_or_default())))
        .collect();
    crate::pool::run_parts(ranges.len(), |part| {
        if let Some(range) = ranges.get(part) {
            let mut range = range.lock().unwrap_or_else(PoisonError::into_inner);
            let (params, grads, first, second) = &mut *range;
            crate::kernels::with_wide_vectors(|| apply(update, params, grads, first, second));
        }
    });
}

/// The update of every element, in place.
#[inline(always)]
fn apply(update: Update, params: &mut [f32], grads: &[f32], first: &mut [f32], second: &mut [f32]) {
    match update {
        Update::Sgd { lr, momentum } => {
            for ((p, g), v) in params.iter_mut().zip(grads).zip(first.iter_mut()) {
                *v = momentum * *v + *g;
                *p -= lr * *v;
            }
        }
        Update::Adam {
            beta1,
            one_minus_beta1,
            beta2,
            one_minus_beta2,
            step_size,
            sqrt_correction2,
            eps,
        } => {
            for (((p, g), m), v) in params
                .iter_mut()
                .zip(grads)
                .zip(first.iter_mut())
                .zip(second.iter_mut())
            {
                *m = beta1 * *m + one_minus_beta1 * *g;
                *v = beta2 * *v + one_minus_beta2 * (*g * *g);
                // sqrt is correctly rounded by IEEE 754 on every CPU.
                let denom = v.sqrt() / sqrt_correction2 + eps;
                *p -= step_size * (*m / denom);
            }
        }
    }
}

impl OptimizerState {
    /// Fresh state for parameters of the given element counts.
    pub fn new(spec: &Optimizer, sizes: &[usize]) -> Self {
        let zeros = || sizes.iter().map(|n| vec![0.0f32; *n]).collect::<Vec<_>>();
        match *spec {
            Optimizer::Sgd { lr, momentum } => Self::Sgd {
                lr: lr.to_f32(),
                momentum: momentum.to_f32(),
                velocity: zeros(),
            },
            Optimizer::Adam {
                lr,
                beta1,
                beta2,
                eps,
            } => Self::Adam {
                lr: lr.to_f32(),
                beta1: beta1.to_f32(),
                beta2: beta2.to_f32(),
                eps: eps.to_f32(),
                beta1_power: 1.0,
                beta2_power: 1.0,
                m: zeros(),
                v: zeros(),
            },
        }
    }

    /// One update of every parameter from candle's `grads`. A parameter
    /// without a gradient (it did not affect the loss) is left alone, state
    /// included.
    pub fn step(&mut self, params: &[&Var], grads: &GradStore) -> CandleResult<()> {
        let mut tensors = Vec::with_capacity(params.len());
        for param in params {
            tensors.push(
                grads
                    .get(param.as_tensor())
                    .map(|g| g.contiguous())
                    .transpose()?,
            );
        }
        let guards: Vec<_> = tensors
            .iter()
            .map(|t| t.as_ref().map(|t| t.storage_and_layout()))
            .collect();
        let mut slices: Vec<Option<&[f32]>> = Vec::with_capacity(params.len());
        for guard in &guards {
            slices.push(match guard {
                None => None,
                Some((storage, layout)) => {
                    let (start, end) = layout
                        .contiguous_offsets()
                        .ok_or_else(|| error("gradient is not contiguous"))?;
                    match &**storage {
                        Storage::Cpu(CpuStorage::F32(data)) => Some(
                            data.get(start..end)
                                .ok_or_else(|| error("gradient layout out of range"))?,
                        ),
                        _ => return Err(error("gradient is not f32 on the CPU")),
                    }
                }
            });
        }
        self.step_slices(params, &slices)
    }

    /// One update of every parameter from its gradient values, given in the
    /// same order (`None`: left alone, state included).
    pub fn step_slices(&mut self, params: &[&Var], grads: &[Option<&[f32]>]) -> CandleResult<()> {
        let largest = grads
            .iter()
            .flatten()
            .map(|g| g.len().saturating_mul(ELEMENT_COST))
            .max()
            .unwrap_or(0);
        crate::pool::install_for(largest, || self.step_slices_here(params, grads))
    }

    /// [`Self::step_slices`] on the calling thread.
    fn step_slices_here(&mut self, params: &[&Var], grads: &[Option<&[f32]>]) -> CandleResult<()> {
        if grads.len() != params.len() {
            return Err(error(format!(
                "got {} gradients for {} parameters",
                grads.len(),
                params.len()
            )));
        }
        let (update, first, second): (Update, &mut Buffers, Option<&mut Buffers>) = match self {
            Self::Sgd {
                lr,
                momentum,
                velocity,
            } => (
                Update::Sgd {
                    lr: *lr,
                    momentum: *momentum,
                },
                velocity,
                None,
            ),
            Self::Adam {
                lr,
                beta1,
                beta2,
                eps,
                beta1_power,
                beta2_power,
                m,
                v,
            } => {
                *beta1_power *= *beta1;
                *beta2_power *= *beta2;
                let correction1 = 1.0 - *beta1_power;
                let correction2 = 1.0 - *beta2_power;
                (
                    Update::Adam {
                        beta1: *beta1,
                        one_minus_beta1: 1.0 - *beta1,
                        beta2: *beta2,
                        one_minus_beta2: 1.0 - *beta2,
                        step_size: *lr / correction1,
                        sqrt_correction2: correction2.sqrt(),
                        eps: *eps,
                    },
                    m,
                    Some(v),
                )
            }
        };
        if first.len() != params.len() {
            return Err(error(format!(
                "optimizer holds state for {} parameters, got {}",
                first.len(),
                params.len()
            )));
        }
        let mut unused: Vec<f32> = Vec::new();
        let mut seconds = second.map(|s| s.iter_mut());
        for ((param, grad), first) in params.iter().zip(grads).zip(first.iter_mut()) {
            let second: &mut [f32] = match seconds.as_mut().and_then(|it| it.next()) {
                Some(s) => s,
                None => &mut unused,
            };
            let Some(grad) = grad else {
                continue;
            };
            let op = FusedStep {
                update,
                grads: grad,
                first: RefCell::new(first.as_mut_slice()),
                second: RefCell::new(second),
            };
            param.as_tensor().inplace_op1(&op)?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::as_conversions)]
mod tests {
    use super::*;
    use candle_core::Device;
    use protocol::F32Bits;

    fn quadratic_grads(p: &Var) -> GradStore {
        // d/dp of Σ p²/2 is p; candle's sqr/sum only build this test's loss.
        let loss = (p.as_tensor().sqr().unwrap().sum_all().unwrap() * 0.5).unwrap();
        loss.backward().unwrap()
    }

    #[test]
    fn sgd_with_momentum_follows_the_formula() {
        let p = Var::from_vec(vec![1.0f32, -2.0], 2, &Device::Cpu).unwrap();
        let spec = Optimizer::Sgd {
            lr: F32Bits::from_f32(0.1),
            momentum: F32Bits::from_f32(0.5),
        };
        let mut opt = OptimizerState::new(&spec, &[2]);
        opt.step(&[&p], &quadratic_grads(&p)).unwrap();
        // v = g = p; p = p - 0.1 p
        assert_eq!(
            p.as_tensor().to_vec1::<f32>().unwrap(),
            vec![1.0 - 0.1 * 1.0, -2.0 - 0.1 * -2.0]
        );
        opt.step(&[&p], &quadratic_grads(&p)).unwrap();
        let v0 = 0.5f32 * 1.0 + 0.9;
        assert_eq!(p.as_tensor().to_vec1::<f32>().unwrap()[0], 0.9 - 0.1 * v0);
    }

    #[test]
    fn adam_first_step_moves_by_about_lr_and_matches_candle_nn() {
        let start = vec![1.0f32, -2.0, 0.5];
        let p = Var::from_vec(start.clone(), 3, &Device::Cpu).unwrap();
        let spec = Optimizer::Adam {
            lr: F32Bits::from_f32(0.01),
            beta1: F32Bits::from_f32(0.9),
            beta2: F32Bits::from_f32(0.999),
            eps: F32Bits::from_f32(1e-8),
        };
        let mut opt = OptimizerState::new(&spec, &[3]);
        let reference = Var::from_vec(start.clone(), 3, &Device::Cpu).unwrap();
        let mut stock = <candle_nn::AdamW as candle_nn::Optimizer>::new(
            vec![reference.clone()],
            candle_nn::ParamsAdamW {
                lr: 0.01,
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.0,
            },
        )
        .unwrap();
        for _ in 0..5 {
            opt.step(&[&p], &quadratic_grads(&p)).unwrap();
            candle_nn::Optimizer::step(&mut stock, &quadratic_grads(&reference)).unwrap();
        }
        let ours = p.as_tensor().to_vec1::<f32>().unwrap();
        let theirs = reference.as_tensor().to_vec1::<f32>().unwrap();
        for ((a, b), s) in ours.iter().zip(&theirs).zip(&start) {
            assert!((a - b).abs() < 1e-5, "{a} vs candle-nn {b}");
            assert!((s - a).abs() > 0.04, "moved {}", s - a);
        }
    }

    #[test]
    fn wide_vectors_give_the_bits_of_the_scalar_loop() {
        // Subnormal gradients and moments included: some CPUs take a slow
        // path on them, none may round them differently.
        let n = 1000;
        let value = |i: usize, scale: f32| {
            let x = ((i * 7919) % 1013) as f32 / 1013.0 - 0.5;
            if i.is_multiple_of(5) {
                x * 1e-39
            } else {
                x * scale
            }
        };
        let grads: Vec<f32> = (0..n).map(|i| value(i, 1e-3)).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
        let update = Update::Adam {
            beta1: 0.9,
            one_minus_beta1: 0.1,
            beta2: 0.999,
            one_minus_beta2: 1.0 - 0.999,
            step_size: 1e-3 / 0.1,
            sqrt_correction2: 0.001f32.sqrt(),
            eps: 1e-8,
        };
        let start = || {
            (
                (0..n).map(|i| value(i + 1, 1.0)).collect::<Vec<f32>>(),
                (0..n).map(|i| value(i + 2, 1e-2)).collect::<Vec<f32>>(),
                (0..n)
                    .map(|i| value(i + 3, 1e-4).abs())
                    .collect::<Vec<f32>>(),
            )
        };
        for parts in [2, 3, 7, 16] {
            let (mut p1, mut m1, mut v1) = start();
            let (mut p2, mut m2, mut v2) = start();
            for update in [
                update,
                Update::Sgd {
                    lr: 0.01,
                    momentum: 0.9,
                },
            ] {
                apply(update, &mut p1, &grads, &mut m1, &mut v1);
                apply_in_parts(update, &mut p2, &grads, &mut m2, &mut v2, parts);
            }
            assert_eq!(bits(&p1), bits(&p2), "{parts} parts");
            assert_eq!(bits(&m1), bits(&m2), "{parts} parts");
            assert_eq!(bits(&v1), bits(&v2), "{parts} parts");
        }
        // SGD has no second state: its ranges get none.
        let (mut p1, mut m1, _) = start();
        let (mut p2, mut m2, _) = start();
        let sgd = Update::Sgd {
            lr: 0.01,
            momentum: 0.9,
        };
        apply(sgd, &mut p1, &grads, &mut m1, &mut []);
        apply_in_parts(sgd, &mut p2, &grads, &mut m2, &mut [], 3);
        assert_eq!((bits(&p1), bits(&m1)), (bits(&p2), bits(&m2)));
        let (mut p1, mut m1, mut v1) = start();
        let (mut p2, mut m2, mut v2) = start();
        for update in [
            update,
            Update::Sgd {
                lr: 0.01,
                momentum: 0.9,
            },
        ] {
            apply(update, &mut p1, &grads, &mut m1, &mut v1);
            crate::kernels::with_wide_vectors(|| apply(update, &mut p2, &grads, &mut m2, &mut v2));
        }
        assert_eq!(bits(&p1), bits(&p2));
        assert_eq!(bits(&m1), bits(&m2));
        assert_eq!(bits(&v1), bits(&v2));
        match crate::kernels::wide_vectors_name() {
            "baseline" => println!(
                "SKIP wide vectors: this CPU lacks avx and avx512f; compared the scalar loop with itself only"
            ),
            wide => println!("compared the loop compiled for {wide} against the scalar loop"),
        }
        assert_ne!(
            bits(&p1),
            bits(&start().0),
            "the updates moved the parameters"
        );
    }
}
