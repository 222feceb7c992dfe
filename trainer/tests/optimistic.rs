//! Optimistic verification end to end on iris: the segment verifier's three
//! kinds of answer (a value, an impossibility, a node-local error), and an
//! audit that passes an honest worker and pins a lazy worker's first
//! fabricated segment, with the states after it withheld.

mod common;

use std::collections::HashMap;

use common::dataset_path;
use protocol::job::worker_seed;
use protocol::{
    Address, Digest, FinalOutcome, JobId, JobSpec, Judged, SegmentVerifier, VerifyError,
};
use trainer::cheat::cheat;
use trainer::{
    audit, sample_segments, AuditError, AuditFault, AuditReport, Dataset, DatasetLimits,
    ReplayVerifier, TaskKind, TrainOutcome, TrainSettings,
};

const JOB: JobId = JobId([7; 32]);
const WORKER: Address = Address([9; 32]);

fn iris() -> Dataset {
    Dataset::from_csv_file(
        &dataset_path("iris.csv"),
        TaskKind::Classification,
        &DatasetLimits::default(),
    )
    .expect("the shipped iris.csv parses")
}

/// 105 training rows in batches of 16: 7 steps an epoch, 28 in all, in 8
/// segments of 3 or 4 steps.
fn spec(ds: &Dataset) -> JobSpec {
    TrainSettings {
        hidden: vec![8],
        epochs: 4,
        batch: 16,
        l2: 1e-3,
        segments: 8,
        seed: 2,
        ..TrainSettings::default()
    }
    .job_spec(ds)
    .expect("the settings fit iris")
}

fn seed(spec: &JobSpec) -> u64 {
    worker_seed(&JOB, &WORKER, spec.base_seed)
}

type Blobs = HashMap<Digest, Vec<u8>>;

/// An honest run, with its dataset and every state in a blob map.
fn honest(ds: &Dataset, spec: &JobSpec) -> (TrainOutcome, Blobs) {
    let mut blobs = Blobs::new();
    blobs.insert(ds.digest(), ds.to_blob());
    let outcome = trainer::train_keeping_states(spec, ds, seed(spec), &mut |_| {}, &mut |_, b| {
        blobs.insert(Digest(protocol::sha256(b)), b.to_vec());
    })
    .expect("an honest run trains");
    (outcome, blobs)
}

fn verifier(blobs: Blobs) -> ReplayVerifier<impl Fn(&Digest) -> Option<Vec<u8>>> {
    ReplayVerifier::new(
        move |d: &Digest| blobs.get(d).cloned(),
        DatasetLimits::default(),
    )
}

fn put(blobs: &mut Blobs, bytes: Vec<u8>) -> Digest {
    let digest = Digest(protocol::sha256(&bytes));
    blobs.insert(digest, bytes);
    digest
}

/// Overwrites every parameter value of an encoded state with `value`,
/// walking the documented layout.
fn set_parameters(state: &mut [u8], value: f32) {
    let u32_at =
        |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4 bytes"));
    let rows = u32_at(state, 36) as usize;
    let losses_at = 40 + 4 * rows;
    let losses = u32_at(state, losses_at) as usize;
    let tensors_at = losses_at + 4 + 4 * losses + 1;
    let mut at = tensors_at + 4;
    for _ in 0..u32_at(state, tensors_at) {
        let count = u64::from_le_bytes(state[at..at + 8].try_into().expect("8 bytes")) as usize;
        at += 8;
        for _ in 0..count {
            state[at..at + 4].copy_from_slice(&value.to_le_bytes());
            at += 4;
        }
    }
}

#[test]
fn an_honest_claim_replays_to_computed_values() {
    let ds = iris();
    let spec = spec(&ds);
    let (outcome, blobs) = honest(&ds, &spec);
    let leaves = outcome.leaves.clone();
    // S_0 is derived from the seed, so segment 1 needs no stored state.
    let mut without_s0 = blobs.clone();
    without_s0.remove(&leaves[0].state);
    let v = verifier(without_s0);
    assert_eq!(
        v.initial_state(&JOB, &spec, &WORKER),
        Ok(Judged::Computed(leaves[0].state))
    );
    for j in 1..=spec.segments {
        assert_eq!(
            v.replay_segment(&JOB, &spec, &WORKER, j, &leaves[j as usize - 1].state),
            Ok(Judged::Computed(leaves[j as usize])),
            "segment {j}"
        );
    }
    assert_eq!(
        v.final_result(&JOB, &spec, &WORKER, &leaves[8].state),
        Ok(Judged::Computed(FinalOutcome {
            weights: outcome.result.weights,
            train_loss: outcome.result.train_loss,
            metric: outcome.result.metric,
        }))
    );
}

#[test]
fn what_the_node_lacks_or_garbles_is_its_own_error() {
    let ds = iris();
    let spec = spec(&ds);
    let (outcome, blobs) = honest(&ds, &spec);
    let s3 = outcome.leaves[3].state;

    let mut no_dataset = blobs.clone();
    no_dataset.remove(&ds.digest());
    let v = verifier(no_dataset);
    assert_eq!(
        v.initial_state(&JOB, &spec, &WORKER),
        Err(VerifyError::DataUnavailable(ds.digest()))
    );
    assert_eq!(
        v.replay_segment(&JOB, &spec, &WORKER, 4, &s3),
        Err(VerifyError::DataUnavailable(ds.digest()))
    );

    let mut no_state = blobs.clone();
    no_state.remove(&s3);
    let v = verifier(no_state);
    assert_eq!(
        v.replay_segment(&JOB, &spec, &WORKER, 4, &s3),
        Err(VerifyError::DataUnavailable(s3))
    );
    assert_eq!(
        v.final_result(&JOB, &spec, &WORKER, &s3),
        Err(VerifyError::DataUnavailable(s3))
    );

    // A store that answers with other bytes is broken, whoever's claim it is.
    let mut swapped = blobs.clone();
    let s2_bytes = swapped[&outcome.leaves[2].state].clone();
    swapped.insert(s3, s2_bytes);
    let v = verifier(swapped);
    assert!(matches!(
        v.replay_segment(&JOB, &spec, &WORKER, 4, &s3),
        Err(VerifyError::Internal(_))
    ));

    // A segment index outside the job is the caller's mistake.
    let v = verifier(blobs);
    for index in [0, 9] {
        assert!(matches!(
            v.replay_segment(&JOB, &spec, &WORKER, index, &s3),
            Err(VerifyError::Internal(_))
        ));
    }
}

#[test]
fn committed_inputs_that_cannot_be_trained_from_are_impossible() {
    let ds = iris();
    let spec = spec(&ds);
    let (outcome, mut blobs) = honest(&ds, &spec);
    let leaves = &outcome.leaves;

    // Garbage that hashes to the committed digest.
    let garbage = put(&mut blobs, b"not a training state".to_vec());
    // A real state, but not the one before segment 4.
    let s2 = leaves[2].state;
    // A state whose parameters make the loss overflow.
    let mut huge = blobs[&leaves[3].state].clone();
    set_parameters(&mut huge, 3e38);
    let huge = put(&mut blobs, huge);
    let v = verifier(blobs.clone());
    for (prev, why) in [(garbage, "magic"), (s2, "step"), (huge, "diverged")] {
        match v.replay_segment(&JOB, &spec, &WORKER, 4, &prev) {
            Ok(Judged::Impossible(reason)) => assert!(reason.contains(why), "{reason}"),
            other => panic!("{why}: {other:?}"),
        }
    }
    assert!(matches!(
        v.final_result(&JOB, &spec, &WORKER, &leaves[7].state),
        Ok(Judged::Impossible(_))
    ));

    // A dataset that does not fit the spec: no state of it exists.
    let mut wrong_rows = spec.clone();
    wrong_rows.dataset.rows += 1;
    assert!(matches!(
        v.initial_state(&JOB, &wrong_rows, &WORKER),
        Ok(Judged::Impossible(_))
    ));
    // Nor does a dataset blob that does not parse.
    let mut broken = spec.clone();
    broken.dataset.digest = put(&mut blobs, b"GCDSET01 and then nothing".to_vec());
    let v = verifier(blobs);
    assert!(matches!(
        v.replay_segment(&JOB, &broken, &WORKER, 1, &leaves[0].state),
        Ok(Judged::Impossible(_))
    ));
}

fn served(states: &[Vec<u8>]) -> impl FnMut(&Digest) -> Option<Vec<u8>> + '_ {
    move |d: &Digest| {
        states
            .iter()
            .find(|s| Digest(protocol::sha256(s)) == *d)
            .cloned()
    }
}

#[test]
fn an_audit_passes_an_honest_worker() {
    let ds = iris();
    let spec = spec(&ds);
    let (outcome, blobs) = honest(&ds, &spec);
    let states: Vec<Vec<u8>> = outcome
        .leaves
        .iter()
        .map(|l| blobs[&l.state].clone())
        .collect();
    let run = |sample: &[u32], fetch: &mut dyn FnMut(&Digest) -> Option<Vec<u8>>| {
        audit(
            &spec,
            &ds,
            seed(&spec),
            &outcome.result,
            &outcome.leaves,
            sample,
            fetch,
        )
        .unwrap()
    };
    let all: Vec<u32> = (1..=8).collect();
    assert_eq!(
        run(&all, &mut served(&states)),
        AuditReport {
            segments_replayed: 8,
            fault: None
        }
    );
    assert_eq!(run(&[3, 8], &mut served(&states)).segments_replayed, 2);
    // Everything withheld: segment 5 is reached from S_0.
    assert_eq!(
        run(&[5], &mut |_| None),
        AuditReport {
            segments_replayed: 5,
            fault: None
        }
    );
    // Only S_2 served: from there.
    let only_s2 = vec![states[2].clone()];
    assert_eq!(run(&[5], &mut served(&only_s2)).segments_replayed, 3);
}

#[test]
fn an_audit_pins_a_lazy_workers_first_fabricated_segment() {
    let ds = iris();
    let spec = spec(&ds);
    let seed = seed(&spec);
    let mut blobs = Blobs::new();
    blobs.insert(ds.digest(), ds.to_blob());
    for honest_segments in [1, 3, 7] {
        let lazy = cheat(&spec, &ds, seed, honest_segments).unwrap();
        assert_eq!(lazy.leaves.len(), 9);
        assert_eq!(lazy.states.len(), honest_segments as usize + 1);
        protocol::job::check_acceptance(&spec, &lazy.result.metric).unwrap();
        // The worker serves S_0..=S_J and withholds the rest (it has none).
        for sample in [vec![8], (1..=8).collect(), sample_segments(8, 0.25, 11)] {
            let report = audit(
                &spec,
                &ds,
                seed,
                &lazy.result,
                &lazy.leaves,
                &sample,
                &mut served(&lazy.states),
            )
            .unwrap();
            let index = honest_segments + 1;
            assert_eq!(
                report.fault,
                Some(AuditFault::Segment {
                    index,
                    prev_state_bytes: lazy.states[honest_segments as usize].clone(),
                }),
                "J = {honest_segments}, sample {sample:?}"
            );
            assert!(report.segments_replayed >= 1);
        }
        // The node's verifier agrees once the challenger serves S_J.
        let prev = lazy.leaves[honest_segments as usize].state;
        let mut with_prev = blobs.clone();
        with_prev.insert(prev, lazy.states[honest_segments as usize].clone());
        let replayed = verifier(with_prev)
            .replay_segment(&JOB, &spec, &WORKER, honest_segments + 1, &prev)
            .unwrap();
        assert!(matches!(replayed, Judged::Computed(leaf)
            if leaf != lazy.leaves[honest_segments as usize + 1]));
    }
}

#[test]
fn an_audit_finds_made_up_initial_states_and_final_results() {
    let ds = iris();
    let spec = spec(&ds);
    let seed = seed(&spec);

    let lazy = cheat(&spec, &ds, seed, 0).unwrap();
    assert!(lazy.states.is_empty());
    let report = audit(
        &spec,
        &ds,
        seed,
        &lazy.result,
        &lazy.leaves,
        &[4],
        &mut |_| None,
    )
    .unwrap();
    assert_eq!(
        report,
        AuditReport {
            segments_replayed: 0,
            fault: Some(AuditFault::InitialState)
        }
    );

    // Every segment honest, the weights and metric made up.
    let lazy = cheat(&spec, &ds, seed, 8).unwrap();
    let report = audit(
        &spec,
        &ds,
        seed,
        &lazy.result,
        &lazy.leaves,
        &[2, 8],
        &mut served(&lazy.states),
    )
    .unwrap();
    assert_eq!(
        report.fault,
        Some(AuditFault::Final {
            final_state_bytes: lazy.states[8].clone()
        })
    );
    let mut blobs = Blobs::new();
    blobs.insert(ds.digest(), ds.to_blob());
    let last = put(&mut blobs, lazy.states[8].clone());
    match verifier(blobs).final_result(&JOB, &spec, &WORKER, &last) {
        Ok(Judged::Computed(outcome)) => assert_ne!(outcome.weights, lazy.result.weights),
        other => panic!("{other:?}"),
    }
    // Without segment 8 in the sample the made-up result goes unseen.
    let report = audit(
        &spec,
        &ds,
        seed,
        &lazy.result,
        &lazy.leaves,
        &[1, 2, 3],
        &mut served(&lazy.states),
    )
    .unwrap();
    assert_eq!(report.fault, None);
}

#[test]
fn an_audit_refuses_a_malformed_claim_before_replaying() {
    let ds = iris();
    let spec = spec(&ds);
    let seed = seed(&spec);
    let lazy = cheat(&spec, &ds, seed, 2).unwrap();
    let run = |leaves: &[protocol::SegmentLeaf], sample: &[u32]| {
        audit(&spec, &ds, seed, &lazy.result, leaves, sample, &mut |_| {
            None
        })
    };
    assert_eq!(
        run(&lazy.leaves[..8], &[1]),
        Err(AuditError::LeafCount {
            got: 8,
            expected: 9
        })
    );
    let mut other = lazy.leaves.clone();
    other[5].loss = protocol::F32Bits::from_f32(1.0);
    assert!(matches!(run(&other, &[1]), Err(AuditError::Root { .. })));
    for sample in [vec![0], vec![9], vec![3, 3], vec![4, 2]] {
        assert!(matches!(
            run(&lazy.leaves, &sample),
            Err(AuditError::Sample { .. })
        ));
    }
}

#[test]
fn samples_are_sorted_in_range_and_always_check_the_result() {
    assert_eq!(sample_segments(8, 1.0, 5), (1..=8).collect::<Vec<_>>());
    assert_eq!(sample_segments(8, 0.0, 5), vec![8]);
    assert_eq!(sample_segments(8, f64::NAN, 5), vec![8]);
    assert_eq!(sample_segments(0, 1.0, 5), Vec::<u32>::new());
    let mut differ = false;
    for seed in 0..50 {
        let s = sample_segments(64, 0.1, seed);
        assert_eq!(s.len(), 7);
        assert!(s.windows(2).all(|w| w[0] < w[1]));
        assert!(s.iter().all(|j| (1..=64).contains(j)));
        assert_eq!(s.last(), Some(&64));
        assert_eq!(s, sample_segments(64, 0.1, seed));
        differ |= s != sample_segments(64, 0.1, seed + 1);
    }
    assert!(differ, "the seed chooses the sample");
    assert_eq!(sample_segments(u32::MAX, 1e-9, 1).len(), 5);
}
