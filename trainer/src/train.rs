//! The training run: from a job spec, a dataset and a seed to trained
//! weights, the segment leaves a worker commits to, losses and metrics.
//!
//! A run is a [`Session`] driven through every segment of the spec; the leaf
//! of segment j is the digest of the state after it and its mean batch loss,
//! and the result carries the root over leaves 0..=n. Everything that
//! influences the result is in the spec, the dataset blob and the seed; the
//! run reads no clock, environment or thread count, so a replay anywhere
//! gives the same [`JobResult`]. This module must never let a progress or
//! state callback, a log line or a timing feed back into the computation.

use protocol::segments::segments_root;
use protocol::{Digest, F32Bits, JobResult, JobSpec, SegmentLeaf, TestMetric};

use crate::dataset::Dataset;
use crate::model::TrainedModel;
pub use crate::run::{Progress, TrainError, MAX_PARAMETERS};
use crate::session::Session;

/// Everything a run produces.
#[derive(Debug)]
pub struct TrainOutcome {
    /// The weights and scaling.
    pub model: TrainedModel,
    /// What a worker puts on chain.
    pub result: JobResult,
    /// The leaves under `result.segments_root`: S_0 and each segment's.
    pub leaves: Vec<SegmentLeaf>,
    /// The metric on the validation part (`Accuracy { 0, 0 }` when it is empty).
    pub validation: TestMetric,
    /// Optimizer steps taken.
    pub steps: u64,
    /// Trainable parameters.
    pub params: u64,
}

impl TrainOutcome {
    /// Test accuracy as a fraction, for classification.
    pub fn test_accuracy(&self) -> Option<f64> {
        accuracy(&self.result.metric)
    }

    /// The loss curve: each segment's mean batch loss, segment 1 first.
    pub fn segment_losses(&self) -> Vec<f32> {
        self.leaves
            .iter()
            .skip(1)
            .map(|l| l.loss.to_f32())
            .collect()
    }
}

/// A metric's accuracy as a fraction.
pub fn accuracy(metric: &TestMetric) -> Option<f64> {
    match metric {
        TestMetric::Accuracy { correct, total } if *total > 0 => {
            Some(f64::from(*correct) / f64::from(*total))
        }
        _ => None,
    }
}

/// Trains `spec` on `dataset` with training seed `seed` (for a chain job:
/// `protocol::job::worker_seed(job, worker, spec.base_seed)`).
///
/// The run: split and standardize by `spec.base_seed`; initialise from
/// `seed`; each epoch, reshuffle the training rows (the seed's "batches"
/// stream), take batches of `batch_size` in that order (the last may be
/// short) and minimise the data loss plus `l1·Σ|w| + l2·Σw²` over weight
/// matrices (not biases). The T steps are cut into `spec.segments` segments
/// (at least one step each, so T < segments is a [`TrainError::Spec`]), and
/// the digest of the state after each is a leaf. Then measure validation and
/// test.
pub fn train(
    spec: &JobSpec,
    dataset: &Dataset,
    seed: u64,
    on_progress: &mut dyn FnMut(&Progress),
) -> Result<TrainOutcome, TrainError> {
    run(spec, dataset, seed, on_progress, None)
}

/// [`train`], handing the bytes of every state S_0..=S_n to `on_state` with
/// its index as it is reached: what a worker keeps to serve a challenger.
/// The session never holds them; each is hashed from the same bytes.
pub fn train_keeping_states(
    spec: &JobSpec,
    dataset: &Dataset,
    seed: u64,
    on_progress: &mut dyn FnMut(&Progress),
    on_state: &mut dyn FnMut(u32, &[u8]),
) -> Result<TrainOutcome, TrainError> {
    run(spec, dataset, seed, on_progress, Some(on_state))
}

/// Takes the bytes of state S_index as a run reaches it.
type OnState<'a> = dyn FnMut(u32, &[u8]) + 'a;

fn run(
    spec: &JobSpec,
    dataset: &Dataset,
    seed: u64,
    on_progress: &mut dyn FnMut(&Progress),
    mut on_state: Option<&mut OnState<'_>>,
) -> Result<TrainOutcome, TrainError> {
    let mut session = Session::new(spec, dataset, seed)?;
    // Without a taker for the bytes, the digest streams them into the hash.
    let mut leaf =
        |session: &Session, index: u32, loss: F32Bits| -> Result<SegmentLeaf, TrainError> {
            let state = match on_state.as_mut() {
                Some(keep) => {
                    let bytes = session.state_bytes()?;
                    keep(index, &bytes);
                    Digest(protocol::sha256(&bytes))
                }
                None => session.state_digest()?,
            };
            Ok(SegmentLeaf { state, loss })
        };
    let mut leaves = Vec::with_capacity(spec.segments as usize + 1);
    leaves.push(leaf(&session, 0, F32Bits::from_f32(0.0))?);
    for index in 1..=spec.segments {
        let loss = session.advance(index, on_progress)?;
        leaves.push(leaf(&session, index, loss)?);
    }
    let steps = session.step();
    let finished = session.finish()?;
    let result = JobResult {
        weights: finished.outcome.weights,
        segments_root: segments_root(&leaves),
        train_loss: finished.outcome.train_loss,
        metric: finished.outcome.metric,
    };
    Ok(TrainOutcome {
        params: finished.model.mlp.parameter_count() as u64,
        model: finished.model,
        result,
        leaves,
        validation: finished.validation,
        steps,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{parse_csv, DatasetLimits, TaskKind};
    use crate::settings::TrainSettings;
    use protocol::Loss;

    fn tiny() -> Dataset {
        let mut text = String::from("a,b,y\n");
        for i in 0..40 {
            let (a, b) = (i % 7, i % 5);
            text.push_str(&format!("{a},{b},{}\n", u32::from(a > 3)));
        }
        parse_csv(&text, TaskKind::Classification, &DatasetLimits::default()).unwrap()
    }

    fn settings() -> TrainSettings {
        TrainSettings {
            hidden: vec![4],
            epochs: 3,
            batch: 8,
            segments: 5,
            ..TrainSettings::default()
        }
    }

    #[test]
    fn the_spec_must_fit_the_dataset_and_the_engine() {
        let ds = tiny();
        let good = settings().job_spec(&ds).unwrap();
        let run = |spec: &JobSpec| train(spec, &ds, 1, &mut |_| {});
        assert!(run(&good).is_ok());

        let mut spec = good.clone();
        spec.dataset.rows = 41;
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec {
                what: "dataset rows",
                ..
            })
        ));
        let mut spec = good.clone();
        spec.loss = Loss::Mse;
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec { what: "loss", .. })
        ));
        let mut spec = good.clone();
        spec.engine_version += 1;
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec {
                what: "engine version",
                ..
            })
        ));
        let mut spec = good.clone();
        spec.model.hidden = vec![1 << 20, 1 << 20];
        assert!(matches!(
            run(&spec),
            Err(TrainError::Spec {
                what: "parameter count",
                ..
            })
        ));
        let mut spec = good.clone();
        spec.batch_size = u32::MAX;
        spec.segments = 3;
        assert!(
            run(&spec).is_ok(),
            "one batch of every row, one step an epoch"
        );
        let mut spec = good;
        spec.split.test_permille = 0;
        assert!(matches!(run(&spec), Err(TrainError::Prep(_))));
    }

    #[test]
    fn progress_steps_and_leaves_follow_the_spec() {
        let ds = tiny();
        let spec = settings().job_spec(&ds).unwrap();
        let mut seen = Vec::new();
        let outcome = train(&spec, &ds, 1, &mut |p| seen.push(*p)).unwrap();
        // 40 rows: 8 test, 4 validation, 28 train in batches of 8 -> 4 steps
        // an epoch, 12 in all, in 5 segments.
        assert_eq!(outcome.steps, 12);
        assert_eq!(spec.total_steps(), Some(12));
        assert_eq!(seen.len(), 12);
        assert!(seen.iter().all(|p| p.total_steps == 12));
        assert_eq!(
            seen.iter().map(|p| p.step).collect::<Vec<_>>(),
            (1..=12).collect::<Vec<_>>()
        );
        let epoch_ends: Vec<u32> = seen
            .iter()
            .filter(|p| p.epoch_loss.is_some())
            .map(|p| p.epoch)
            .collect();
        assert_eq!(epoch_ends, vec![1, 2, 3]);
        assert_eq!(outcome.leaves.len(), 6);
        assert_eq!(outcome.leaves[0].loss, F32Bits::from_f32(0.0));
        assert_eq!(outcome.result.segments_root, segments_root(&outcome.leaves));
        // Each leaf's loss is the mean of its segment's batch losses.
        let mut start = 0;
        for (j, leaf) in outcome.leaves.iter().enumerate().skip(1) {
            let range =
                protocol::segments::segment_steps(12, 5, u32::try_from(j).unwrap()).unwrap();
            assert_eq!(range.start, start);
            start = range.end;
            let losses: Vec<f32> = seen[range.start as usize..range.end as usize]
                .iter()
                .map(|p| p.batch_loss)
                .collect();
            let mean = crate::kernels::sum(losses.iter().copied()) / losses.len() as f32;
            assert_eq!(leaf.loss, F32Bits::from_f32(mean), "segment {j}");
        }
        assert_eq!(start, 12);
        let mut states: Vec<Digest> = outcome.leaves.iter().map(|l| l.state).collect();
        states.dedup();
        assert_eq!(states.len(), 6, "every state differs from the one before");
        assert_eq!(
            seen.last().and_then(|p| p.epoch_loss),
            Some(outcome.result.train_loss.to_f32())
        );
        assert_eq!(outcome.segment_losses().len(), 5);
        assert!(matches!(
            outcome.validation,
            TestMetric::Accuracy { total: 4, .. }
        ));
        assert!(matches!(
            outcome.result.metric,
            TestMetric::Accuracy { total: 8, .. }
        ));
    }

    #[test]
    fn kept_states_hash_to_the_leaves_and_change_nothing() {
        let ds = tiny();
        let spec = settings().job_spec(&ds).unwrap();
        let plain = train(&spec, &ds, 4, &mut |_| {}).unwrap();
        let mut kept: Vec<(u32, Vec<u8>)> = Vec::new();
        let keeping = train_keeping_states(&spec, &ds, 4, &mut |_| {}, &mut |i, bytes| {
            kept.push((i, bytes.to_vec()))
        })
        .unwrap();
        assert_eq!(plain.result, keeping.result);
        assert_eq!(plain.leaves, keeping.leaves);
        assert_eq!(
            kept.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            (0..=5).collect::<Vec<_>>()
        );
        for ((_, bytes), leaf) in kept.iter().zip(&plain.leaves) {
            assert_eq!(Digest(protocol::sha256(bytes)), leaf.state);
        }
    }

    #[test]
    fn more_segments_than_steps_is_a_spec_error() {
        let ds = tiny();
        let mut spec = settings().job_spec(&ds).unwrap();
        spec.segments = 12;
        assert!(train(&spec, &ds, 1, &mut |_| {}).is_ok());
        for segments in [13, 0] {
            spec.segments = segments;
            assert!(matches!(
                train(&spec, &ds, 1, &mut |_| {}),
                Err(TrainError::Spec {
                    what: "segments",
                    ..
                })
            ));
        }
    }
}
