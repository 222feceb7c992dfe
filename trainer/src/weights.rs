//! Weights files as bytes: the safetensors blob a worker uploads and a node
//! serves predictions from, and the link between its file digest (SHA-256 of
//! the bytes, the blob store's key) and its tensor digest (docs/DESIGN.md §3, the
//! `weights` digest a job result carries).
//!
//! This module only parses and hashes; it must never decide whether a result
//! is valid (that is replay's job in [`crate::verify`]).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use protocol::Digest;

use crate::model::{ModelError, TrainedModel};

/// Rebuilds a trained model from the bytes of a safetensors weights file.
pub fn model_from_safetensors(bytes: &[u8]) -> Result<TrainedModel, ModelError> {
    let map: BTreeMap<String, Tensor> = candle_core::safetensors::load_buffer(bytes, &Device::Cpu)?
        .into_iter()
        .collect();
    TrainedModel::from_tensors(&map)
}

/// The safetensors file of `model`, built in memory: a worker uploads it
/// without writing it anywhere first.
pub fn safetensors_bytes(model: &TrainedModel) -> Result<Vec<u8>, ModelError> {
    let tensors = model.tensors()?;
    safetensors::tensor::serialize(tensors.iter(), None)
        .map_err(|e| ModelError::from(candle_core::Error::Msg(e.to_string())))
}

/// The tensor digest of the weights in a safetensors file: what a job
/// result's `weights` field must equal for these bytes to be its weights.
pub fn tensor_digest_of_file(bytes: &[u8]) -> Result<Digest, ModelError> {
    model_from_safetensors(bytes)?.digest()
}
