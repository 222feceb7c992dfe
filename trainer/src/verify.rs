//! Verification by replay under optimistic verification: the trainer's
//! [`protocol::SegmentVerifier`], which judges the one disputed step of a
//! claim (S_0, a segment, or the final result), and [`audit`], with which a
//! node replays a sample of a worker's segments and finds the first one that
//! does not follow from the state before it.
//!
//! A claim is a result plus the leaves 0..=n under its `segments_root`;
//! states are fetched by digest from a [`BlobSource`] (the node's blob store,
//! fed by the worker or a challenger). Verdicts split three ways: a value
//! ([`Judged::Computed`]), proof that the worker's committed inputs cannot be
//! trained from ([`Judged::Impossible`]: a state that hashes right but does
//! not decode or fit the spec, a dataset that does not fit, a replay that
//! diverges), or a node-local reason it cannot judge now ([`VerifyError`]:
//! a blob not held, a store returning the wrong bytes, an engine failure).
//! This module must never accept a leaf by any shortcut (a claimed field, a
//! cache keyed on less than the full input, a tolerance), and never blame the
//! worker for the node's own trouble.

use std::collections::BTreeSet;

use protocol::job::worker_seed;
use protocol::segments::{segment_steps, segments_root};
use protocol::{
    Address, Digest, F32Bits, FinalOutcome, JobId, JobResult, JobSpec, Judged, SegmentLeaf,
    SegmentVerifier, VerifyError,
};

use crate::dataset::{Dataset, DatasetLimits};
use crate::rng::SplitMix64;
use crate::session::Session;
use crate::train::TrainError;

/// Where a verifier finds blobs (datasets and training states) by digest.
pub trait BlobSource {
    /// The blob whose SHA-256 is `digest`, if held.
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>>;
}

impl<F> BlobSource for F
where
    F: Fn(&Digest) -> Option<Vec<u8>>,
{
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self(digest)
    }
}

/// Sorts a training failure: an engine failure is this machine's (`Err`);
/// anything else follows from the inputs alone, so no honest worker could
/// have produced a leaf from them.
fn classify<T>(result: Result<T, TrainError>) -> Result<Judged<T>, String> {
    match result {
        Ok(value) => Ok(Judged::Computed(value)),
        Err(TrainError::Model(e)) => Err(e.to_string()),
        Err(other) => Ok(Judged::Impossible(other.to_string())),
    }
}

fn judge<T>(result: Result<T, TrainError>) -> Result<Judged<T>, VerifyError> {
    classify(result).map_err(VerifyError::Internal)
}

/// The computed value, or an early return with the impossibility.
macro_rules! computed {
    ($judged:expr) => {
        match $judged {
            Judged::Computed(value) => value,
            Judged::Impossible(why) => return Ok(Judged::Impossible(why)),
        }
    };
}

/// Replays segments of jobs on datasets and states from `source`.
#[derive(Clone, Debug)]
pub struct ReplayVerifier<S> {
    source: S,
    limits: DatasetLimits,
}

impl<S: BlobSource> ReplayVerifier<S> {
    /// A verifier reading blobs from `source`, refusing datasets over
    /// `limits` (which must be at least the chain's job limits: a dataset
    /// over them is judged impossible to train).
    pub fn new(source: S, limits: DatasetLimits) -> Self {
        Self { source, limits }
    }

    /// The bytes of `digest`, checked: a store that returns other bytes is
    /// broken, which is no verdict on anyone's claim.
    fn fetch(&self, digest: &Digest) -> Result<Vec<u8>, VerifyError> {
        let blob = self
            .source
            .blob(digest)
            .ok_or(VerifyError::DataUnavailable(*digest))?;
        let held = Digest(protocol::sha256(&blob));
        if held != *digest {
            return Err(VerifyError::Internal(format!(
                "blob store returned bytes with digest {held}, expected {digest}"
            )));
        }
        Ok(blob)
    }

    fn dataset(&self, spec: &JobSpec) -> Result<Judged<Dataset>, VerifyError> {
        let blob = self.fetch(&spec.dataset.digest)?;
        Ok(match Dataset::from_blob(&blob, &self.limits) {
            Ok(dataset) => Judged::Computed(dataset),
            Err(e) => Judged::Impossible(format!("dataset {}: {e}", spec.dataset.digest)),
        })
    }

    /// A session standing at the state `digest`, which must be the state
    /// after `segment` (0 for S_0, `n` for the final state).
    fn session_at(
        &self,
        spec: &JobSpec,
        dataset: &Dataset,
        digest: &Digest,
        segment: u32,
    ) -> Result<Judged<Session>, VerifyError> {
        let bytes = self.fetch(digest)?;
        let session = computed!(judge(Session::from_state(spec, dataset, &bytes))?);
        let step = match segment {
            0 => 0,
            j => computed!(judge(session.segment_range(j))?).end,
        };
        if session.step() != step {
            return Ok(Judged::Impossible(format!(
                "state {digest} is after step {}, expected the state after segment {segment}, step {step}",
                session.step()
            )));
        }
        Ok(Judged::Computed(session))
    }
}

impl<S: BlobSource> SegmentVerifier for ReplayVerifier<S> {
    fn initial_state(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
    ) -> Result<Judged<Digest>, VerifyError> {
        let dataset = computed!(self.dataset(spec)?);
        let seed = worker_seed(job, worker, spec.base_seed);
        let session = computed!(judge(Session::new(spec, &dataset, seed))?);
        judge(session.state_digest())
    }

    fn replay_segment(
        &self,
        job: &JobId,
        spec: &JobSpec,
        worker: &Address,
        index: u32,
        prev_state: &Digest,
    ) -> Result<Judged<SegmentLeaf>, VerifyError> {
        if index == 0 || index > spec.segments {
            // Which segment is disputed is the caller's choice, never the
            // worker's.
            return Err(VerifyError::Internal(format!(
                "segment {index} asked, expected 1..={}",
                spec.segments
            )));
        }
        let dataset = computed!(self.dataset(spec)?);
        let derived = if index == 1 {
            // S_0 follows from the seed: deriving it spares everyone storing
            // it, and a derived S_0 that is not `prev_state` falls through to
            // the store like any other state.
            let seed = worker_seed(job, worker, spec.base_seed);
            let start = computed!(judge(Session::new(spec, &dataset, seed))?);
            let digest = computed!(judge(start.state_digest())?);
            (digest == *prev_state).then_some(start)
        } else {
            None
        };
        let mut session = match derived {
            Some(start) => start,
            None => computed!(self.session_at(spec, &dataset, prev_state, index - 1)?),
        };
        judge(session.run_segment(index, &mut |_| {}))
    }

    fn final_result(
        &self,
        _job: &JobId,
        spec: &JobSpec,
        _worker: &Address,
        final_state: &Digest,
    ) -> Result<Judged<FinalOutcome>, VerifyError> {
        let dataset = computed!(self.dataset(spec)?);
        let session = computed!(self.session_at(spec, &dataset, final_state, spec.segments)?);
        judge(session.finish().map(|finished| finished.outcome))
    }
}

/// The first thing an audit found that does not follow from the job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditFault {
    /// Leaf 0 is not `{ digest of S_0, loss 0.0 }` for the worker's seed,
    /// or the job cannot be trained at all.
    InitialState,
    /// Segment `index` replayed from the committed S_{index−1} does not
    /// give leaf `index` (or diverges).
    Segment {
        /// The segment, `1..=n`.
        index: u32,
        /// The committed S_{index−1}, whose digest is leaf `index − 1`'s:
        /// what a challenger serves for the replay.
        prev_state_bytes: Vec<u8>,
    },
    /// Every leaf checked out but the result does not follow from S_n.
    Final {
        /// The committed S_n.
        final_state_bytes: Vec<u8>,
    },
}

/// What an audit did and found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditReport {
    /// Segments replayed, including those replayed to reach a sampled one
    /// whose preceding state was withheld.
    pub segments_replayed: u32,
    /// The first fault, if any.
    pub fault: Option<AuditFault>,
}

/// Why an audit could not judge a claim.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// Not one leaf per state S_0..=S_n.
    #[error("claim has {got} leaves, expected {expected} (S_0 and one per segment)")]
    LeafCount {
        /// Leaves given.
        got: usize,
        /// `spec.segments + 1`.
        expected: usize,
    },
    /// The leaves are not those the result commits to.
    #[error("leaves hash to root {got}, but the result commits to {expected}")]
    Root {
        /// Root of the leaves given.
        got: Digest,
        /// The result's `segments_root`.
        expected: Digest,
    },
    /// The sample is not strictly increasing segment indices.
    #[error("sample {got:?}, expected strictly increasing segment indices in 1..={segments}")]
    Sample {
        /// The sample.
        got: Vec<u32>,
        /// Segments in the job.
        segments: u32,
    },
    /// The engine failed on this machine.
    #[error("replay failed on this machine: {0}")]
    Engine(String),
}

fn engine(e: TrainError) -> AuditError {
    AuditError::Engine(e.to_string())
}

/// Checks a worker's claim (`claimed` with `leaves` 0..=n) for `spec` on
/// `dataset` with the worker's training `seed` by replaying the segments in
/// `sample` (sorted, from [`sample_segments`]).
///
/// Leaf 0 is compared with S_0 derived from the seed. For each sampled j,
/// S_{j−1} comes from `fetch_state` (checked against leaf j−1's digest);
/// when it is withheld or not a state of this job, the audit replays forward
/// from the nearest earlier state it has (S_0 at worst), comparing every leaf
/// on the way. Then segment j is replayed and compared with leaf j, and for
/// j = n the weights digest, train loss and metric with `claimed`. Replay is
/// the expensive part and the caller pays for it, so the cheap checks of the
/// claim's shape come first and the audit stops at the first fault.
pub fn audit(
    spec: &JobSpec,
    dataset: &Dataset,
    seed: u64,
    claimed: &JobResult,
    leaves: &[SegmentLeaf],
    sample: &[u32],
    fetch_state: &mut dyn FnMut(&Digest) -> Option<Vec<u8>>,
) -> Result<AuditReport, AuditError> {
    let n = spec.segments;
    let expected = n as usize + 1;
    if leaves.len() != expected {
        return Err(AuditError::LeafCount {
            got: leaves.len(),
            expected,
        });
    }
    let root = segments_root(leaves);
    if root != claimed.segments_root {
        return Err(AuditError::Root {
            got: root,
            expected: claimed.segments_root,
        });
    }
    let increasing = sample.windows(2).all(|w| w.first() < w.get(1));
    if !increasing || sample.iter().any(|j| *j == 0 || *j > n) {
        return Err(AuditError::Sample {
            got: sample.to_vec(),
            segments: n,
        });
    }
    let leaf = |i: u32| leaves.get(i as usize).copied();
    let mut report = AuditReport {
        segments_replayed: 0,
        fault: None,
    };
    let fault = |report: AuditReport, found: AuditFault| AuditReport {
        fault: Some(found),
        ..report
    };

    let start = match classify(Session::new(spec, dataset, seed)).map_err(AuditError::Engine)? {
        Judged::Computed(session) => session,
        Judged::Impossible(_) => return Ok(fault(report, AuditFault::InitialState)),
    };
    let initial = SegmentLeaf {
        state: start.state_digest().map_err(engine)?,
        loss: F32Bits::from_f32(0.0),
    };
    if leaf(0) != Some(initial) {
        return Ok(fault(report, AuditFault::InitialState));
    }

    // `held` stands at a state whose digest is leaf `at`'s.
    let (mut at, mut held) = (0u32, start);
    for &j in sample {
        let before = j - 1;
        if at < before {
            // The nearest committed state the worker serves, searched from
            // S_{j−1} down; each miss costs one more segment of replay.
            for i in (at + 1..=before).rev() {
                if let Some(session) = fetch_committed(spec, dataset, leaves, i, fetch_state) {
                    (at, held) = (i, session);
                    break;
                }
            }
        }
        while at < j {
            let i = at + 1;
            let prev_state_bytes = held.state_bytes().map_err(engine)?;
            report.segments_replayed += 1;
            let replayed =
                classify(held.run_segment(i, &mut |_| {})).map_err(AuditError::Engine)?;
            match replayed {
                Judged::Computed(got) if Some(got) == leaf(i) => at = i,
                _ => {
                    return Ok(fault(
                        report,
                        AuditFault::Segment {
                            index: i,
                            prev_state_bytes,
                        },
                    ));
                }
            }
        }
        if j == n {
            let final_state_bytes = held.state_bytes().map_err(engine)?;
            let finished = held.finish().map_err(engine)?;
            let outcome = finished.outcome;
            let honest = outcome.weights == claimed.weights
                && outcome.train_loss == claimed.train_loss
                && outcome.metric == claimed.metric;
            let found = (!honest).then_some(AuditFault::Final { final_state_bytes });
            return Ok(AuditReport {
                fault: found,
                ..report
            });
        }
    }
    Ok(report)
}

/// A session at the state of leaf `i`, if `fetch_state` has bytes that hash
/// to it and decode to a state after segment `i`.
fn fetch_committed(
    spec: &JobSpec,
    dataset: &Dataset,
    leaves: &[SegmentLeaf],
    i: u32,
    fetch_state: &mut dyn FnMut(&Digest) -> Option<Vec<u8>>,
) -> Option<Session> {
    let want = leaves.get(i as usize)?.state;
    let bytes = fetch_state(&want)?;
    if Digest(protocol::sha256(&bytes)) != want {
        return None;
    }
    let session = Session::from_state(spec, dataset, &bytes).ok()?;
    let end = segment_steps(session.total_steps(), spec.segments, i)?.end;
    (session.step() == end).then_some(session)
}

/// The segments an audit replays: `ceil(fraction · n)` of `1..=n` (at least
/// one; `fraction` 1.0 or more gives all), drawn from `rng_seed` (the caller
/// passes OS randomness, so a worker cannot know which segments will be
/// checked), sorted. Segment n is always in: it is the only one whose replay
/// checks the weights and metric the bounty pays for.
pub fn sample_segments(n: u32, fraction: f64, rng_seed: u64) -> Vec<u32> {
    if n == 0 {
        return Vec::new();
    }
    let share = if fraction.is_nan() {
        0.0
    } else {
        fraction.clamp(0.0, 1.0)
    };
    let wanted = (share * f64::from(n)).ceil();
    // `wanted` is in 0..=n, so the conversion is exact.
    let count = (wanted as u32).clamp(1, n);
    // Floyd's algorithm: `count − 1` distinct draws from 1..n−1 in O(count)
    // memory, whatever n is.
    let mut rng = SplitMix64::new(rng_seed);
    let pool = n - 1;
    let mut picked = BTreeSet::new();
    for top in (pool - (count - 1) + 1)..=pool {
        let t = rng.below(top as usize) as u32 + 1;
        if !picked.insert(t) {
            picked.insert(top);
        }
    }
    picked.insert(n);
    picked.into_iter().collect()
}
