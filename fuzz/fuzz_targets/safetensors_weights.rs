//! Weights files as a worker uploads them and the node serves them for
//! predictions: a file that loads has a tensor digest, writing the model
//! back gives a file that loads to the same digest and writes back to the
//! same bytes, and a prediction on it answers or refuses without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use trainer::predict;
use trainer::weights::{model_from_safetensors, safetensors_bytes, tensor_digest_of_file};

fuzz_target!(|data: &[u8]| {
    let Ok(model) = model_from_safetensors(data) else {
        assert!(tensor_digest_of_file(data).is_err());
        return;
    };
    let Ok(digest) = model.digest() else {
        return;
    };
    assert_eq!(tensor_digest_of_file(data).ok(), Some(digest));
    let again = safetensors_bytes(&model).expect("a loaded model writes");
    let reloaded = model_from_safetensors(&again).expect("a written model loads");
    assert_eq!(reloaded.digest().ok(), Some(digest));
    assert_eq!(safetensors_bytes(&reloaded).expect("writes again"), again);
    let inputs = vec![0.5f32; model.mlp.inputs().clamp(1, 4096) * 2];
    let _ = predict(&model, &inputs);
});
