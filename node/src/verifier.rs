//! The node's training verifier: the trainer's [`ReplayVerifier`] reading
//! datasets from the node's [`BlobStore`], behind a cache of verdicts so
//! that mempool admission, block templates and block validation replay a
//! given result once.
//!
//! The cache key is the SHA-256 of the canonical encoding of everything a
//! replay depends on: job id, spec, worker and the claimed result. A
//! `SubmitResult` transaction's id commits to exactly these (plus fee,
//! nonce and signature, which a replay does not read), so keying on them
//! gives the "cached by tx id" property while also sharing the verdict
//! between two transactions carrying the same claim. Verdicts are kept for
//! valid and forged claims alike (a forged one is never replayed twice);
//! "dataset unavailable" is not cached, because fetching the dataset can
//! change it. This module must never accept a claim without a replay that
//! reproduced it bit for bit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use protocol::{codec, Address, JobId, JobResult, JobSpec, TrainingVerifier, VerifyError};
use trainer::{DatasetLimits, ReplayVerifier};

use crate::blobs::BlobStore;

/// Most verdicts kept; the oldest go first.
pub const MAX_CACHED_VERDICTS: usize = 4096;

#[derive(Default)]
struct Verdicts {
    by_key: HashMap<[u8; 32], Result<(), VerifyError>>,
    order: VecDeque<[u8; 32]>,
    /// Claims being replayed right now; a second asker waits for the first.
    in_flight: HashSet<[u8; 32]>,
}

/// Replays results on datasets from the blob store, caching verdicts.
pub struct CachingVerifier {
    replay: ReplayVerifier<BlobStore>,
    verdicts: Mutex<Verdicts>,
    replayed: Condvar,
}

impl std::fmt::Debug for CachingVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachingVerifier").finish_non_exhaustive()
    }
}

impl CachingVerifier {
    /// A verifier over `store`.
    pub fn new(store: BlobStore) -> Arc<Self> {
        Arc::new(Self {
            replay: ReplayVerifier::new(store, DatasetLimits::default()),
            verdicts: Mutex::new(Verdicts::default()),
            replayed: Condvar::new(),
        })
    }

    fn key(job: &JobId, spec: &JobSpec, worker: &Address, claimed: &JobResult) -> Option<[u8; 32]> {
        codec::encode(&(job, spec, worker, claimed))
            .ok()
            .map(|bytes| protocol::sha256(&bytes))
    }

    /// The cached verdict for a claim, if it was replayed before.
    pub fn cached(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        claimed: &JobResult,
    ) -> Option<Result<(), VerifyError>> {
        let key = Self::key(job, spec, worker, claimed)?;
        self.verdicts
            .lock()
            .ok()
            .and_then(|v| v.by_key.get(&key).cloned())
    }

    /// How many verdicts are cached.
    pub fn cached_count(&self) -> usize {
        self.verdicts.lock().map(|v| v.by_key.len()).unwrap_or(0)
    }
}

impl TrainingVerifier for CachingVerifier {
    fn verify(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        claimed: &JobResult,
    ) -> Result<(), VerifyError> {
        let key = Self::key(job, spec, worker, claimed);
        if let Some(key) = key {
            // Take the claim, or wait for whoever is replaying it.
            let Ok(mut verdicts) = self.verdicts.lock() else {
                return Err(VerifyError::Replay("verdict cache poisoned".into()));
            };
            loop {
                if let Some(verdict) = verdicts.by_key.get(&key) {
                    return verdict.clone();
                }
                if verdicts.in_flight.insert(key) {
                    break;
                }
                verdicts = match self.replayed.wait(verdicts) {
                    Ok(guard) => guard,
                    Err(_) => return Err(VerifyError::Replay("verdict cache poisoned".into())),
                };
            }
        }
        let started = Instant::now();
        let verdict = self.replay.verify(job, spec, worker, claimed);
        let replay_ms = started.elapsed().as_millis();
        match &verdict {
            Ok(()) => tracing::info!(
                %job, %worker, weights = %claimed.weights, metric = %claimed.metric,
                replay_ms, "result verified"
            ),
            Err(reason) => tracing::warn!(
                %job, %worker, %reason, replay_ms, "result rejected"
            ),
        }
        let cacheable = !matches!(verdict, Err(VerifyError::DatasetUnavailable(_)));
        if let Some(key) = key {
            if let Ok(mut verdicts) = self.verdicts.lock() {
                verdicts.in_flight.remove(&key);
                if cacheable && verdicts.by_key.insert(key, verdict.clone()).is_none() {
                    verdicts.order.push_back(key);
                }
                while verdicts.order.len() > MAX_CACHED_VERDICTS {
                    if let Some(old) = verdicts.order.pop_front() {
                        verdicts.by_key.remove(&old);
                    }
                }
            }
            self.replayed.notify_all();
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blobs::BLOB_FILE;
    use protocol::rpc::BlobKind;
    use protocol::Digest;

    #[test]
    fn verdicts_are_cached_but_a_missing_dataset_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join(BLOB_FILE)).unwrap();
        let csv =
            "a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n2,1,0\n4,3,1\n6,5,0\n8,7,1\n1,1,0\n9,9,1\n";
        let dataset = trainer::parse_csv(
            csv,
            trainer::TaskKind::Classification,
            &DatasetLimits::default(),
        )
        .unwrap();
        let spec = trainer::TrainSettings {
            hidden: vec![4],
            epochs: 2,
            batch: 4,
            ..trainer::TrainSettings::default()
        }
        .job_spec(&dataset)
        .unwrap();
        let job = JobId([1; 32]);
        let worker = Address([2; 32]);
        let seed = protocol::job::worker_seed(&job, &worker, spec.base_seed);
        let honest = trainer::train(&spec, &dataset, seed, &mut |_| {})
            .unwrap()
            .result;
        let mut forged = honest;
        forged.weights = Digest([9; 32]);

        let verifier = CachingVerifier::new(store.clone());
        assert_eq!(
            verifier.verify(&job, &spec, &worker, &honest),
            Err(VerifyError::DatasetUnavailable(spec.dataset.digest))
        );
        assert_eq!(verifier.cached_count(), 0);

        store.put(BlobKind::Dataset, &dataset.to_blob()).unwrap();
        assert_eq!(verifier.verify(&job, &spec, &worker, &honest), Ok(()));
        let refused = verifier.verify(&job, &spec, &worker, &forged);
        assert!(matches!(refused, Err(VerifyError::WeightsMismatch { .. })));
        assert_eq!(verifier.cached_count(), 2);
        assert_eq!(
            verifier.cached(&job, &spec, &worker, &forged),
            Some(refused)
        );
        assert_eq!(
            verifier.cached(&job, &spec, &Address([3; 32]), &honest),
            None,
            "another worker's claim is a different key"
        );
    }
}
