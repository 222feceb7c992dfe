//! The optimizers: SGD with momentum and Adam, each a single fused pass over
//! the raw parameter, gradient and state buffers, applied in place through a
//! candle in-place op.
//!
//! Stock candle-nn's optimizers chain a dozen tensor ops per parameter (each
//! allocating); here one loop reads the gradient and state once and writes
//! the parameter and state once. Every element sees a fixed sequence of
//! IEEE operations, including Adam's bias corrections, which are running
//! products of the betas in f32. This module must never use `powf`/`exp`
//! from the platform or reorder the per-element formula: checkpoints hash the
//! state, so its bits are consensus.

use std::cell::RefCell;

use candle_core::backend::BackendStorage;
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp2, Layout, Var};
use protocol::Optimizer;
use sha2::{Digest as _, Sha256};

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
    first: RefCell<&'a mut [f32]>,
    second: RefCell<&'a mut [f32]>,
}

impl InplaceOp2 for FusedStep<'_> {
    fn name(&self) -> &'static str {
        "gradchain-fused-optimizer-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CandleResult<()> {
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
        let (gs, ge) = l2
            .contiguous_offsets()
            .ok_or_else(|| error("gradient is not contiguous"))?;
        let grads = match s2 {
            CpuStorage::F32(data) => data
                .get(gs..ge)
                .ok_or_else(|| error("gradient layout out of range"))?,
            other => {
                return Err(error(format!(
                    "gradient is {:?}, expected f32",
                    other.dtype()
                )))
            }
        };
        if grads.len() != params.len() {
            return Err(error(format!(
                "gradient has {} values, expected {}",
                grads.len(),
                params.len()
            )));
        }
        let mut first = self.first.borrow_mut();
        let mut second = self.second.borrow_mut();
        match self.update {
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
        Ok(())
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

    /// One update of every parameter from `grads`. A parameter without a
    /// gradient (it did not affect the loss) is left alone, state included.
    pub fn step(&mut self, params: &[&Var], grads: &GradStore) -> CandleResult<()> {
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
        for (param, first) in params.iter().zip(first.iter_mut()) {
            let second: &mut [f32] = match seconds.as_mut().and_then(|it| it.next()) {
                Some(s) => s,
                None => &mut unused,
            };
            let Some(grad) = grads.get(param.as_tensor()) else {
                continue;
            };
            let op = FusedStep {
                update,
                first: RefCell::new(first.as_mut_slice()),
                second: RefCell::new(second),
            };
            param.as_tensor().inplace_op2(grad, &op)?;
        }
        Ok(())
    }

    /// Feeds the state (step products and every buffer in parameter order,
    /// f32 LE) to a checkpoint hash.
    pub fn hash_into(&self, hasher: &mut Sha256) {
        let mut put = |buffers: &[Vec<f32>]| {
            for buffer in buffers {
                hasher.update((buffer.len() as u64).to_le_bytes());
                let mut bytes = Vec::with_capacity(buffer.len() * 4);
                for v in buffer {
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                hasher.update(&bytes);
            }
        };
        match self {
            Self::Sgd { velocity, .. } => {
                put(velocity);
            }
            Self::Adam {
                beta1_power,
                beta2_power,
                m,
                v,
                ..
            } => {
                put(m);
                put(v);
                hasher.update(beta1_power.to_le_bytes());
                hasher.update(beta2_power.to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
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
    fn state_hash_changes_with_the_state() {
        let p = Var::from_vec(vec![1.0f32], 1, &Device::Cpu).unwrap();
        let spec = Optimizer::Sgd {
            lr: F32Bits::from_f32(0.1),
            momentum: F32Bits::from_f32(0.9),
        };
        let mut opt = OptimizerState::new(&spec, &[1]);
        let hash = |o: &OptimizerState| {
            let mut h = Sha256::new();
            o.hash_into(&mut h);
            h.finalize()
        };
        let before = hash(&opt);
        opt.step(&[&p], &quadratic_grads(&p)).unwrap();
        assert_ne!(hash(&opt), before);
    }
}
