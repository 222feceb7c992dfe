//! A lazy worker, for tests and demos of optimistic verification: it trains
//! honestly for the first J segments, then makes up the rest of its claim.
//!
//! The made-up leaves are deterministic in the seed, the weights digest is
//! made up too, and the metric is exactly the job's acceptance bar's best
//! (every test row right, or an MSE of 0), so the claim passes every check
//! that does not replay. An audit that samples a segment after J must find
//! segment J + 1 (or, with J = n, the final result) at fault. It is reached
//! only through the explicit `work --cheat-from-segment J` flag, for demos
//! and tests of fraud proofs: the worker's own bond pays for the lie. This
//! module must never be used by a default code path.

use protocol::segments::segments_root;
use protocol::{Digest, F32Bits, JobResult, JobSpec, SegmentLeaf, Task, TestMetric};

use crate::dataset::Dataset;
use crate::run::{spec_error, TrainError};
use crate::session::Session;

/// What a lazy worker claims and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct LazyClaim {
    /// The claimed result; `segments_root` is the root of `leaves`.
    pub result: JobResult,
    /// Leaves 0..=n: honest up to J, made up after (all made up for J = 0).
    pub leaves: Vec<SegmentLeaf>,
    /// The bytes of S_0..=S_J, each hashing to its leaf (empty for J = 0):
    /// all the states the worker can serve.
    pub states: Vec<Vec<u8>>,
}

fn made_up(what: &str, index: u32, seed: u64) -> Digest {
    Digest(protocol::sha256(
        &[
            b"gradchain/lazy-worker/".as_slice(),
            what.as_bytes(),
            &index.to_le_bytes(),
            &seed.to_le_bytes(),
        ]
        .concat(),
    ))
}

/// Trains `spec` on `dataset` with `seed` for `honest_segments` (J) segments
/// and fabricates the rest of the claim: made-up state digests, losses that
/// keep falling, made-up weights and a metric at the top of the acceptance
/// bar. With J = 0 even leaf 0 is made up.
pub fn cheat(
    spec: &JobSpec,
    dataset: &Dataset,
    seed: u64,
    honest_segments: u32,
) -> Result<LazyClaim, TrainError> {
    let n = spec.segments;
    if honest_segments > n {
        return Err(spec_error(
            "honest segments",
            honest_segments,
            format!("at most the job's {n} segments"),
        ));
    }
    let mut session = Session::new(spec, dataset, seed)?;
    let mut leaves = Vec::with_capacity(n as usize + 1);
    let mut states = Vec::new();
    if honest_segments > 0 {
        for index in 0..=honest_segments {
            let loss = if index == 0 {
                F32Bits::from_f32(0.0)
            } else {
                session.advance(index, &mut |_| {})?
            };
            let bytes = session.state_bytes()?;
            leaves.push(SegmentLeaf {
                state: Digest(protocol::sha256(&bytes)),
                loss,
            });
            states.push(bytes);
        }
    }
    let mut loss = leaves.last().map_or(2.0, |l| l.loss.to_f32().max(0.01));
    for index in leaves.len() as u32..=n {
        loss *= 0.9;
        leaves.push(SegmentLeaf {
            state: made_up("state", index, seed),
            loss: F32Bits::from_f32(if index == 0 { 0.0 } else { loss }),
        });
    }
    let test = spec
        .split
        .sizes(spec.dataset.rows)
        .map_err(|e| spec_error("split", spec.split, e))?
        .test;
    let metric = match spec.task {
        Task::Classification { .. } => TestMetric::Accuracy {
            correct: test,
            total: test,
        },
        Task::Regression => TestMetric::Mse(F32Bits::from_f32(0.0)),
    };
    Ok(LazyClaim {
        result: JobResult {
            weights: made_up("weights", n, seed),
            segments_root: segments_root(&leaves),
            train_loss: F32Bits::from_f32(loss),
            metric,
        },
        leaves,
        states,
    })
}
