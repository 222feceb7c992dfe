//! The engine's thread count never reaches a result: a job whose products
//! are large enough to be split across the pool trains to the same weights
//! digest, segments root and loss bits on 1, 2, 3, 7 and 16 threads, and a
//! replayed segment on another count matches the leaf the first run
//! committed to.

mod common;

use common::dataset_path;
use trainer::{Dataset, DatasetLimits, Session, TaskKind, TrainSettings};

fn digits() -> Dataset {
    Dataset::from_csv_file(
        &dataset_path("digits.csv"),
        TaskKind::Classification,
        &DatasetLimits::default(),
    )
    .expect("the shipped digits.csv parses")
}

/// Wide layers at a 128-row batch: the 128 × 256 × 256 products (8M
/// multiply-adds) are over the size at which the engine splits a product,
/// so every thread count above 1 cuts them differently.
fn settings() -> TrainSettings {
    TrainSettings {
        hidden: vec![256, 256],
        batch: 128,
        epochs: 1,
        segments: 4,
        seed: 5,
        l1: 1e-4,
        l2: 1e-3,
        ..TrainSettings::default()
    }
}

#[test]
fn every_thread_count_trains_the_same_bits() {
    let dataset = digits();
    let settings = settings();
    let spec = settings
        .job_spec(&dataset)
        .expect("the settings fit digits");
    let mut results = Vec::new();
    for threads in [1, 2, 3, 7, 16] {
        trainer::pool::set_threads(threads);
        assert_eq!(trainer::pool::threads(), threads);
        let outcome =
            trainer::train(&spec, &dataset, settings.seed, &mut |_| {}).expect("training runs");
        results.push((threads, outcome.result));
    }
    let (_, first) = &results[0];
    for (threads, result) in &results[1..] {
        assert_eq!(result, first, "{threads} threads against 1");
    }
}

#[test]
fn a_segment_replayed_on_other_thread_counts_gives_the_committed_state() {
    let dataset = digits();
    let settings = settings();
    let spec = settings
        .job_spec(&dataset)
        .expect("the settings fit digits");
    trainer::pool::set_threads(1);
    let mut session = Session::new(&spec, &dataset, settings.seed).expect("a session starts");
    session.run_segment(1, &mut |_| {}).expect("segment 1 runs");
    let before = session.state_bytes().expect("state encodes");
    session.run_segment(2, &mut |_| {}).expect("segment 2 runs");
    let after = session.state_digest().expect("state hashes");
    for threads in [2, 3, 7] {
        trainer::pool::set_threads(threads);
        let mut replay = Session::from_state(&spec, &dataset, &before).expect("state decodes");
        replay.run_segment(2, &mut |_| {}).expect("the replay runs");
        assert_eq!(
            replay.state_digest().expect("state hashes"),
            after,
            "segment 2 replayed on {threads} threads"
        );
    }
}
