//! The node's segment verifier: the trainer's [`ReplayVerifier`] reading
//! datasets and training states from the node's [`BlobStore`], behind a
//! cache of answers so that a fraud proof met in the mempool's block
//! template, in template selection and in block validation is replayed once.
//!
//! Only fraud proofs reach it: results are admitted without a replay. The
//! cache key is the SHA-256 of the canonical encoding of everything a replay
//! reads (the question, job id, spec, worker, segment and input state), so
//! two proofs asking the same question share one replay. Answers are cached
//! whether they prove or refute; "data unavailable" and internal failures
//! are not, because fetching the data or retrying can change them. Every
//! replay is counted ([`NodeVerifier::replays`]) so tests and metrics can see
//! that a free-to-send message caused none. This module must never answer a
//! question without a replay that computed it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::job::{FinalOutcome, Judged};
use protocol::{codec, Address, Digest, JobId, JobSpec, SegmentLeaf, SegmentVerifier, VerifyError};
use trainer::{DatasetLimits, ReplayVerifier};

use crate::blobs::BlobStore;

/// Most answers kept; the oldest go first.
pub const MAX_CACHED_ANSWERS: usize = 4096;

/// A cached answer of one of the three questions.
#[derive(Clone, Debug)]
enum Answer {
    Initial(Judged<Digest>),
    Segment(Judged<SegmentLeaf>),
    Final(Judged<FinalOutcome>),
}

#[derive(Default)]
struct Answers {
    by_key: HashMap<[u8; 32], Answer>,
    order: VecDeque<[u8; 32]>,
}

/// Replays segments on blobs from the store, caching answers.
pub struct NodeVerifier {
    replay: ReplayVerifier<BlobStore>,
    answers: Mutex<Answers>,
    replays: AtomicU64,
    seconds: std::sync::OnceLock<prometheus_client::metrics::histogram::Histogram>,
}

impl std::fmt::Debug for NodeVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeVerifier")
            .field("replays", &self.replays())
            .finish_non_exhaustive()
    }
}

fn key(
    question: u8,
    job: &JobId,
    spec: &JobSpec,
    worker: &Address,
    index: u32,
    state: &Digest,
) -> Option<[u8; 32]> {
    codec::encode(&(question, job, spec, worker, index, state))
        .ok()
        .map(|bytes| protocol::sha256(&bytes))
}

impl NodeVerifier {
    /// A verifier over `store`.
    pub fn new(store: BlobStore) -> Arc<Self> {
        Arc::new(Self {
            replay: ReplayVerifier::new(store, DatasetLimits::default()),
            answers: Mutex::new(Answers::default()),
            replays: AtomicU64::new(0),
            seconds: std::sync::OnceLock::new(),
        })
    }

    /// Records the seconds of every replay into `histogram` from now on
    /// (the first histogram given stays).
    pub fn record_into(&self, histogram: prometheus_client::metrics::histogram::Histogram) {
        let _ = self.seconds.set(histogram);
    }

    /// How many replays (of any of the three kinds) ran, cached ones not
    /// counted.
    pub fn replays(&self) -> u64 {
        self.replays.load(Ordering::Relaxed)
    }

    /// How many answers are cached.
    pub fn cached_count(&self) -> usize {
        self.answers.lock().map(|a| a.by_key.len()).unwrap_or(0)
    }

    fn cached(&self, key: Option<[u8; 32]>) -> Option<Answer> {
        let key = key?;
        self.answers
            .lock()
            .ok()
            .and_then(|a| a.by_key.get(&key).cloned())
    }

    fn remember(&self, key: Option<[u8; 32]>, answer: Answer) {
        let Some(key) = key else { return };
        let Ok(mut answers) = self.answers.lock() else {
            return;
        };
        if answers.by_key.insert(key, answer).is_none() {
            answers.order.push_back(key);
        }
        while answers.order.len() > MAX_CACHED_ANSWERS {
            if let Some(old) = answers.order.pop_front() {
                answers.by_key.remove(&old);
            }
        }
    }

    fn run<T>(
        &self,
        what: &'static str,
        job: &JobId,
        index: u32,
        replay: impl FnOnce() -> Result<Judged<T>, VerifyError>,
    ) -> Result<Judged<T>, VerifyError> {
        let started = Instant::now();
        let answer = replay();
        let replay_ms = started.elapsed().as_millis();
        if !matches!(answer, Err(VerifyError::DataUnavailable(_))) {
            self.replays.fetch_add(1, Ordering::Relaxed);
            if let Some(histogram) = self.seconds.get() {
                histogram.observe(started.elapsed().as_secs_f64());
            }
        }
        match &answer {
            Ok(Judged::Computed(_)) => {
                tracing::info!(%job, segment = index, replay_ms, "{what} replayed")
            }
            Ok(Judged::Impossible(reason)) => {
                tracing::info!(%job, segment = index, %reason, replay_ms, "{what} cannot be trained from")
            }
            Err(reason) => tracing::debug!(%job, segment = index, %reason, "{what} not replayed"),
        }
        answer
    }
}

impl SegmentVerifier for NodeVerifier {
    fn initial_state(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
    ) -> Result<Judged<Digest>, VerifyError> {
        let key = key(0, job, spec, worker, 0, &Digest::ZERO);
        if let Some(Answer::Initial(answer)) = self.cached(key) {
            return Ok(answer);
        }
        let answer = self.run("initial state", job, 0, || {
            self.replay.initial_state(job, spec, worker)
        })?;
        self.remember(key, Answer::Initial(answer.clone()));
        Ok(answer)
    }

    fn replay_segment(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        index: u32,
        prev_state: &Digest,
    ) -> Result<Judged<SegmentLeaf>, VerifyError> {
        let key = key(1, job, spec, worker, index, prev_state);
        if let Some(Answer::Segment(answer)) = self.cached(key) {
            return Ok(answer);
        }
        let answer = self.run("segment", job, index, || {
            self.replay
                .replay_segment(job, spec, worker, index, prev_state)
        })?;
        self.remember(key, Answer::Segment(answer.clone()));
        Ok(answer)
    }

    fn final_result(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        final_state: &Digest,
    ) -> Result<Judged<FinalOutcome>, VerifyError> {
        let key = key(2, job, spec, worker, spec.segments, final_state);
        if let Some(Answer::Final(answer)) = self.cached(key) {
            return Ok(answer);
        }
        let answer = self.run("final state", job, spec.segments, || {
            self.replay.final_result(job, spec, worker, final_state)
        })?;
        self.remember(key, Answer::Final(answer.clone()));
        Ok(answer)
    }
}
