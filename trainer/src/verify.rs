//! Verification by replay: the trainer's implementation of
//! [`protocol::TrainingVerifier`].
//!
//! A node re-runs the job with the worker's seed on the dataset it holds and
//! accepts the claim only if weights digest, checkpoints digest, train loss
//! and test metric are bit-for-bit equal. Datasets come from a
//! [`DatasetSource`] (the node's blob store), looked up by digest. This
//! module must never accept a result by any shortcut (trusting a claimed
//! field, a cache keyed on anything but the full spec, or a tolerance).

use protocol::job::worker_seed;
use protocol::{Address, Digest, JobId, JobResult, JobSpec, TrainingVerifier, VerifyError};

use crate::dataset::{Dataset, DatasetLimits};
use crate::train::train;

/// Where a verifier finds dataset blobs by their digest.
pub trait DatasetSource {
    /// The canonical blob whose SHA-256 is `digest`, if held.
    fn dataset_blob(&self, digest: &Digest) -> Option<Vec<u8>>;
}

impl<F> DatasetSource for F
where
    F: Fn(&Digest) -> Option<Vec<u8>>,
{
    fn dataset_blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self(digest)
    }
}

/// Replays jobs on datasets from `source`.
#[derive(Clone, Debug)]
pub struct ReplayVerifier<S> {
    source: S,
    limits: DatasetLimits,
}

impl<S: DatasetSource> ReplayVerifier<S> {
    /// A verifier reading datasets from `source`, refusing blobs over `limits`.
    pub fn new(source: S, limits: DatasetLimits) -> Self {
        Self { source, limits }
    }
}

impl<S: DatasetSource> TrainingVerifier for ReplayVerifier<S> {
    fn verify(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        claimed: &JobResult,
    ) -> Result<(), VerifyError> {
        let digest = spec.dataset.digest;
        let blob = self
            .source
            .dataset_blob(&digest)
            .ok_or(VerifyError::DatasetUnavailable(digest))?;
        let held = Digest(protocol::sha256(&blob));
        if held != digest {
            // The store handed back the wrong bytes: not the worker's fault.
            return Err(VerifyError::Replay(format!(
                "dataset store returned a blob with digest {held}, expected {digest}"
            )));
        }
        let dataset = Dataset::from_blob(&blob, &self.limits)
            .map_err(|e| VerifyError::Replay(e.to_string()))?;
        verify(spec, job, worker, &dataset, claimed)
    }
}

/// Replays `spec` on `dataset` with `worker`'s seed for `job` and compares
/// with `claimed`: weights first, then checkpoints, then loss and metric.
pub fn verify(
    spec: &JobSpec,
    job: &JobId,
    worker: &Address,
    dataset: &Dataset,
    claimed: &JobResult,
) -> Result<(), VerifyError> {
    let seed = worker_seed(job, worker, spec.base_seed);
    let outcome =
        train(spec, dataset, seed, &mut |_| {}).map_err(|e| VerifyError::Replay(e.to_string()))?;
    compare(&outcome.result, claimed)
}

/// Compares a replayed result with a claimed one, exactly.
pub fn compare(replayed: &JobResult, claimed: &JobResult) -> Result<(), VerifyError> {
    if replayed.weights != claimed.weights {
        return Err(VerifyError::WeightsMismatch {
            expected: replayed.weights,
            got: claimed.weights,
        });
    }
    if replayed.checkpoints != claimed.checkpoints {
        return Err(VerifyError::CheckpointsMismatch {
            expected: replayed.checkpoints,
            got: claimed.checkpoints,
        });
    }
    if replayed.metric != claimed.metric || replayed.train_loss != claimed.train_loss {
        return Err(VerifyError::MetricMismatch {
            expected: replayed.metric,
            got: claimed.metric,
            expected_loss: replayed.train_loss,
            got_loss: claimed.train_loss,
        });
    }
    Ok(())
}
