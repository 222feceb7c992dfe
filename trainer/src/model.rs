//! The model: a multi-layer perceptron whose parameters are candle `Var`s,
//! its seeded initialisation, the weights digest of docs/DESIGN.md §3, safetensors
//! files, and prediction.
//!
//! The forward pass uses only the reproducible ops of [`crate::ops`]. The
//! digest is SHA-256 over every tensor sorted by name, each as its name
//! length (u32 LE), name (UTF-8), rank (u32 LE), dimensions (u64 LE each)
//! and values (f32 LE); it must never depend on anything but those bytes
//! (no file layout, no map iteration order).

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use protocol::{Digest, Task};
use sha2::{Digest as _, Sha256};

use crate::ops::{Linear, Relu};
use crate::prep::Scaling;
use crate::rng::SplitMix64;

/// Why a model could not be built, loaded, saved or run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ModelError {
    /// A candle operation failed.
    #[error("tensor operation failed: {0}")]
    Engine(String),
    /// A weights file lacks a tensor or has one of the wrong shape.
    #[error("weights: {what}: got {got}, expected {expected}")]
    BadWeights {
        /// Which tensor or property.
        what: String,
        /// What was found.
        got: String,
        /// What was expected.
        expected: String,
    },
    /// Input rows of the wrong width.
    #[error("input has {got} values per row, expected {expected} features")]
    InputWidth {
        /// Values given per row.
        got: usize,
        /// Features the model takes.
        expected: usize,
    },
    /// A non-finite input value.
    #[error("input value {index} is {value}, expected a finite number")]
    NotFinite {
        /// Position in the flattened input.
        index: usize,
        /// The value.
        value: f32,
    },
}

impl From<candle_core::Error> for ModelError {
    fn from(e: candle_core::Error) -> Self {
        Self::Engine(e.to_string())
    }
}

/// One fully connected layer: `y = x · weight + bias`, weight `[in, out]`.
#[derive(Debug)]
pub struct Layer {
    /// `[inputs, outputs]`.
    pub weight: Var,
    /// `[outputs]`.
    pub bias: Var,
}

/// A multi-layer perceptron with ReLU between layers and none after the
/// last.
#[derive(Debug)]
pub struct Mlp {
    layers: Vec<Layer>,
}

impl Mlp {
    /// Layers of `widths[i] → widths[i+1]`, weights uniform in
    /// `±1/sqrt(fan_in)` from the seed's "init" stream (drawn layer by layer,
    /// row by row), biases zero.
    pub fn init(widths: &[usize], seed: u64) -> Result<Self, ModelError> {
        let mut rng = SplitMix64::for_purpose(seed, "init");
        let mut layers = Vec::new();
        for pair in widths.windows(2) {
            let (fan_in, fan_out) = match pair {
                [a, b] => (*a, *b),
                _ => continue,
            };
            let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
            let w: Vec<f32> = (0..fan_in * fan_out)
                .map(|_| (rng.unit_f32() * 2.0 - 1.0) * bound)
                .collect();
            layers.push(Layer {
                weight: Var::from_vec(w, (fan_in, fan_out), &Device::Cpu)?,
                bias: Var::from_vec(vec![0.0f32; fan_out], fan_out, &Device::Cpu)?,
            });
        }
        Ok(Self { layers })
    }

    /// Rebuilds a network from weight and bias tensors, input side first.
    pub fn from_tensors(pairs: Vec<(Tensor, Tensor)>) -> Result<Self, ModelError> {
        let layers = pairs
            .into_iter()
            .map(|(w, b)| {
                Ok(Layer {
                    weight: Var::from_tensor(&w.contiguous()?)?,
                    bias: Var::from_tensor(&b.contiguous()?)?,
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        Ok(Self { layers })
    }

    /// The layers, input side first.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Input width.
    pub fn inputs(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |l| l.weight.dims().first().copied().unwrap_or(0))
    }

    /// Output width.
    pub fn outputs(&self) -> usize {
        self.layers
            .last()
            .map_or(0, |l| l.weight.dims().get(1).copied().unwrap_or(0))
    }

    /// Logits (classification) or standardized values (regression) for a
    /// `[rows, inputs]` batch.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor, ModelError> {
        let mut h = x.clone();
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            h = h.apply_op3(
                layer.weight.as_tensor(),
                layer.bias.as_tensor(),
                Linear { input_grad: i > 0 },
            )?;
            if i < last {
                h = h.apply_op1(Relu)?;
            }
        }
        Ok(h)
    }

    /// Every parameter with its name, sorted by name: the order of the
    /// digest, of the optimizer state and of the training state.
    pub fn named_params(&self) -> Vec<(String, &Var)> {
        self.named_slots()
            .into_iter()
            .filter_map(|(name, layer, is_bias)| {
                let layer = self.layers.get(layer)?;
                Some((name, if is_bias { &layer.bias } else { &layer.weight }))
            })
            .collect()
    }

    /// `(layer, is_bias)` of each parameter in [`Self::named_params`] order.
    pub fn named_param_slots(&self) -> Vec<(usize, bool)> {
        self.named_slots()
            .into_iter()
            .map(|(_, layer, is_bias)| (layer, is_bias))
            .collect()
    }

    fn named_slots(&self) -> Vec<(String, usize, bool)> {
        named_slots(self.layers.len())
    }

    /// Number of trainable values.
    pub fn parameter_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weight.elem_count() + l.bias.elem_count())
            .sum()
    }
}

/// `(name, layer, is_bias)` of every parameter of a `layers`-layer network,
/// sorted by name ("layers.10" sorts before "layers.2"): the one order of
/// the digest, the optimizer state and the training state.
fn named_slots(layers: usize) -> Vec<(String, usize, bool)> {
    let mut named: Vec<(String, usize, bool)> = (0..layers)
        .flat_map(|i| {
            [
                (format!("layers.{i}.weight"), i, false),
                (format!("layers.{i}.bias"), i, true),
            ]
        })
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
}

/// `(layer, is_bias)` of each parameter of a `layers`-layer network in
/// [`Mlp::named_params`] order, without building the network.
pub fn param_slots(layers: usize) -> Vec<(usize, bool)> {
    named_slots(layers)
        .into_iter()
        .map(|(_, layer, is_bias)| (layer, is_bias))
        .collect()
}

/// Appends one tensor's digest encoding to `hasher`.
pub fn hash_tensor(hasher: &mut Sha256, name: &str, tensor: &Tensor) -> Result<(), ModelError> {
    let name_len = u32::try_from(name.len()).map_err(|_| ModelError::BadWeights {
        what: "tensor name length".into(),
        got: name.len().to_string(),
        expected: "below 2^32".into(),
    })?;
    hasher.update(name_len.to_le_bytes());
    hasher.update(name.as_bytes());
    let rank = u32::try_from(tensor.rank()).unwrap_or(u32::MAX);
    hasher.update(rank.to_le_bytes());
    for d in tensor.dims() {
        hasher.update((*d as u64).to_le_bytes());
    }
    let values = tensor.flatten_all()?.to_vec1::<f32>()?;
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for v in values {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    hasher.update(&bytes);
    Ok(())
}

/// The weights digest over named tensors (sorted here by name).
pub fn weights_digest(tensors: &BTreeMap<String, Tensor>) -> Result<Digest, ModelError> {
    let mut hasher = Sha256::new();
    for (name, tensor) in tensors {
        hash_tensor(&mut hasher, name, tensor)?;
    }
    Ok(Digest(hasher.finalize().into()))
}

/// One prediction.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[serde(untagged)]
pub enum Prediction {
    /// The most probable class (lowest index on ties) and every class's
    /// softmax probability.
    Class {
        /// The predicted class.
        class: u32,
        /// Probabilities, by class.
        probabilities: Vec<f32>,
    },
    /// A regression value on the target's scale.
    Value {
        /// The value.
        value: f32,
    },
}

/// A trained network with the standardization it was trained under: all a
/// node needs to serve predictions.
#[derive(Debug)]
pub struct TrainedModel {
    /// The task.
    pub task: Task,
    /// The network.
    pub mlp: Mlp,
    /// Input (and regression target) standardization.
    pub scaling: Scaling,
}

impl TrainedModel {
    /// Every tensor of the weights file, by name: the network's parameters
    /// and the scaling (`scaling.feature_mean`, `scaling.feature_std`, and for
    /// regression `scaling.target_mean`, `scaling.target_std` of shape [1]).
    pub fn tensors(&self) -> Result<BTreeMap<String, Tensor>, ModelError> {
        let mut map = BTreeMap::new();
        for (name, var) in self.mlp.named_params() {
            map.insert(name, var.as_tensor().detach());
        }
        let features = self.scaling.feature_mean.len();
        map.insert(
            "scaling.feature_mean".into(),
            Tensor::from_slice(&self.scaling.feature_mean, features, &Device::Cpu)?,
        );
        map.insert(
            "scaling.feature_std".into(),
            Tensor::from_slice(&self.scaling.feature_std, features, &Device::Cpu)?,
        );
        if let Some((mean, std)) = self.scaling.target {
            map.insert(
                "scaling.target_mean".into(),
                Tensor::from_slice(&[mean], 1, &Device::Cpu)?,
            );
            map.insert(
                "scaling.target_std".into(),
                Tensor::from_slice(&[std], 1, &Device::Cpu)?,
            );
        }
        Ok(map)
    }

    /// The weights digest of docs/DESIGN.md §3.
    pub fn digest(&self) -> Result<Digest, ModelError> {
        weights_digest(&self.tensors()?)
    }

    /// Writes the weights as a safetensors file.
    pub fn save(&self, path: &Path) -> Result<(), ModelError> {
        let tensors: std::collections::HashMap<String, Tensor> =
            self.tensors()?.into_iter().collect();
        candle_core::safetensors::save(&tensors, path)?;
        Ok(())
    }

    /// Reads a weights file written by [`Self::save`].
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let map: BTreeMap<String, Tensor> = candle_core::safetensors::load(path, &Device::Cpu)?
            .into_iter()
            .collect();
        Self::from_tensors(&map)
    }

    /// Rebuilds a model from its named tensors, checking that the layers
    /// chain and the scaling fits the input width.
    pub fn from_tensors(map: &BTreeMap<String, Tensor>) -> Result<Self, ModelError> {
        let get = |name: &str| {
            map.get(name)
                .cloned()
                .ok_or_else(|| ModelError::BadWeights {
                    what: name.to_string(),
                    got: "nothing".into(),
                    expected: "a tensor".into(),
                })
        };
        let vector = |name: &str| -> Result<Vec<f32>, ModelError> {
            Ok(get(name)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let mut pairs = Vec::new();
        let mut width: Option<usize> = None;
        for i in 0.. {
            let w_name = format!("layers.{i}.weight");
            if !map.contains_key(&w_name) {
                break;
            }
            let w = get(&w_name)?.to_dtype(candle_core::DType::F32)?;
            let b = get(&format!("layers.{i}.bias"))?.to_dtype(candle_core::DType::F32)?;
            let (fan_in, fan_out) = match w.dims() {
                [a, b] => (*a, *b),
                dims => {
                    return Err(ModelError::BadWeights {
                        what: w_name,
                        got: format!("shape {dims:?}"),
                        expected: "a matrix".into(),
                    })
                }
            };
            if width.is_some_and(|prev| prev != fan_in) || b.dims() != [fan_out] {
                return Err(ModelError::BadWeights {
                    what: w_name,
                    got: format!("{:?} with bias {:?}", w.dims(), b.dims()),
                    expected: format!("[{}, n] with bias [n]", width.unwrap_or(fan_in)),
                });
            }
            width = Some(fan_out);
            pairs.push((w, b));
        }
        let mlp = Mlp::from_tensors(pairs)?;
        if mlp.layers().is_empty() {
            return Err(ModelError::BadWeights {
                what: "layers".into(),
                got: "none".into(),
                expected: "layers.0.weight and onwards".into(),
            });
        }
        let feature_mean = vector("scaling.feature_mean")?;
        let feature_std = vector("scaling.feature_std")?;
        if feature_mean.len() != mlp.inputs() || feature_std.len() != mlp.inputs() {
            return Err(ModelError::BadWeights {
                what: "scaling".into(),
                got: format!(
                    "{} means and {} deviations",
                    feature_mean.len(),
                    feature_std.len()
                ),
                expected: format!("{} of each", mlp.inputs()),
            });
        }
        let target = if map.contains_key("scaling.target_mean") {
            let mean = vector("scaling.target_mean")?
                .first()
                .copied()
                .unwrap_or(0.0);
            let std = vector("scaling.target_std")?
                .first()
                .copied()
                .unwrap_or(1.0);
            Some((mean, std))
        } else {
            None
        };
        let task = match target {
            Some(_) => Task::Regression,
            None => Task::Classification {
                classes: u32::try_from(mlp.outputs()).unwrap_or(u32::MAX),
            },
        };
        Ok(Self {
            task,
            mlp,
            scaling: Scaling {
                feature_mean,
                feature_std,
                target,
            },
        })
    }

    /// Raw network outputs for already standardized rows, computed in
    /// chunks (each output element's chain does not depend on the chunking).
    pub fn outputs(&self, standardized: &[f32]) -> Result<Vec<f32>, ModelError> {
        let inputs = self.mlp.inputs().max(1);
        let mut out = Vec::new();
        for chunk in standardized.chunks(inputs * 512) {
            let x = Tensor::from_slice(chunk, (chunk.len() / inputs, inputs), &Device::Cpu)?;
            out.extend(self.mlp.forward(&x)?.flatten_all()?.to_vec1::<f32>()?);
        }
        Ok(out)
    }
}

/// Predictions for raw (unstandardized) input rows, row-major.
pub fn predict(model: &TrainedModel, inputs: &[f32]) -> Result<Vec<Prediction>, ModelError> {
    let features = model.mlp.inputs();
    if features == 0 || !inputs.len().is_multiple_of(features) {
        return Err(ModelError::InputWidth {
            got: inputs.len(),
            expected: features,
        });
    }
    if let Some((index, value)) = inputs.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(ModelError::NotFinite {
            index,
            value: *value,
        });
    }
    let standardized: Vec<f32> = inputs
        .iter()
        .enumerate()
        .map(|(i, v)| model.scaling.feature(i % features, *v))
        .collect();
    let outputs = model.outputs(&standardized)?;
    let width = model.mlp.outputs().max(1);
    Ok(outputs
        .chunks(width)
        .map(|row| match model.task {
            Task::Classification { .. } => {
                let probabilities = softmax(row);
                Prediction::Class {
                    class: argmax(row),
                    probabilities,
                }
            }
            Task::Regression => Prediction::Value {
                value: model
                    .scaling
                    .target_value(row.first().copied().unwrap_or(0.0)),
            },
        })
        .collect())
}

/// Index of the largest value, the lowest one on ties.
pub fn argmax(row: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, v) in row.iter().enumerate() {
        if *v > row.get(best).copied().unwrap_or(f32::NEG_INFINITY) {
            best = i;
        }
    }
    u32::try_from(best).unwrap_or(u32::MAX)
}

fn softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = row.iter().map(|z| libm::expf(*z - max)).collect();
    let total = crate::kernels::sum(exps.iter().copied());
    exps.iter().map(|e| e / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(task: Task, outputs: usize) -> TrainedModel {
        TrainedModel {
            task,
            mlp: Mlp::init(&[3, 5, outputs], 1).unwrap(),
            scaling: Scaling {
                feature_mean: vec![1.0, 2.0, 3.0],
                feature_std: vec![1.0, 2.0, 0.5],
                target: match task {
                    Task::Regression => Some((10.0, 2.0)),
                    Task::Classification { .. } => None,
                },
            },
        }
    }

    #[test]
    fn init_depends_on_the_seed_and_is_bounded() {
        let a = Mlp::init(&[4, 8, 2], 1).unwrap();
        let b = Mlp::init(&[4, 8, 2], 1).unwrap();
        let c = Mlp::init(&[4, 8, 2], 2).unwrap();
        let w = |m: &Mlp| {
            m.layers()[0]
                .weight
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(w(&a), w(&b));
        assert_ne!(w(&a), w(&c));
        assert!(w(&a).iter().all(|v| v.abs() <= 0.5));
        assert_eq!(a.parameter_count(), 4 * 8 + 8 + 8 * 2 + 2);
        let names: Vec<String> = a.named_params().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "layers.0.bias",
                "layers.0.weight",
                "layers.1.bias",
                "layers.1.weight"
            ]
        );
    }

    #[test]
    fn digest_pins_the_encoding() {
        let mut map = BTreeMap::new();
        map.insert(
            "b".to_string(),
            Tensor::from_slice(&[1.0f32], 1, &Device::Cpu).unwrap(),
        );
        map.insert(
            "a".to_string(),
            Tensor::from_slice(&[2.0f32, -0.5], (1, 2), &Device::Cpu).unwrap(),
        );
        let mut expected = Vec::new();
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(b"a");
        expected.extend_from_slice(&2u32.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&2u64.to_le_bytes());
        expected.extend_from_slice(&2.0f32.to_le_bytes());
        expected.extend_from_slice(&(-0.5f32).to_le_bytes());
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(b"b");
        expected.extend_from_slice(&1u32.to_le_bytes());
        expected.extend_from_slice(&1u64.to_le_bytes());
        expected.extend_from_slice(&1.0f32.to_le_bytes());
        assert_eq!(
            weights_digest(&map).unwrap(),
            Digest(protocol::sha256(&expected))
        );
    }

    #[test]
    fn safetensors_round_trip_keeps_the_digest_and_predictions() {
        let dir = std::env::temp_dir().join(format!("gradchain-model-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for (task, outputs) in [
            (Task::Classification { classes: 4 }, 4),
            (Task::Regression, 1),
        ] {
            let m = model(task, outputs);
            let path = dir.join("w.safetensors");
            m.save(&path).unwrap();
            let back = TrainedModel::load(&path).unwrap();
            assert_eq!(back.task, task);
            assert_eq!(back.digest().unwrap(), m.digest().unwrap());
            let input = [0.5, 1.0, -2.0, 3.0, 3.0, 3.0];
            assert_eq!(
                predict(&back, &input).unwrap(),
                predict(&m, &input).unwrap()
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn predictions_have_the_right_form() {
        let m = model(Task::Classification { classes: 4 }, 4);
        let p = predict(&m, &[0.0, 1.0, 2.0]).unwrap();
        match &p[0] {
            Prediction::Class {
                class,
                probabilities,
            } => {
                assert!(*class < 4);
                assert_eq!(probabilities.len(), 4);
                assert!((probabilities.iter().sum::<f32>() - 1.0).abs() < 1e-5);
                assert_eq!(argmax(probabilities), *class);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            predict(&m, &[0.0, 1.0]).unwrap_err(),
            ModelError::InputWidth {
                got: 2,
                expected: 3
            }
        );
        assert!(matches!(
            predict(&m, &[0.0, f32::NAN, 1.0]),
            Err(ModelError::NotFinite { index: 1, .. })
        ));
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
    }
}
