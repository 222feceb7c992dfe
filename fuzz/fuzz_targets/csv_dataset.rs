//! Datasets as a user uploads them (CSV text over HTTP) and as peers serve
//! them (the canonical blob). CSV: the result is the same read whole or in
//! pieces of a size the input picks, and a dataset read writes a blob that
//! reads back to it. Blob: decode, then encode gives the same bytes.
#![no_main]

use gradchain_fuzz::Pieces;
use libfuzzer_sys::fuzz_target;
use trainer::{parse_csv_reader, Dataset, DatasetLimits, TaskKind};

fuzz_target!(|data: &[u8]| {
    let Some((&control, text)) = data.split_first() else {
        return;
    };
    let limits = DatasetLimits::default();
    let kind = if control & 1 == 0 {
        TaskKind::Regression
    } else {
        TaskKind::Classification
    };
    let step = usize::from(control >> 1).max(1);
    let whole = parse_csv_reader(text, kind, &limits);
    let pieced = parse_csv_reader(Pieces::new(text, step), kind, &limits);
    assert_eq!(whole, pieced, "read {step} bytes at a time");
    if let Ok(dataset) = &whole {
        let blob = dataset.to_blob();
        assert_eq!(Dataset::from_blob(&blob, &limits).as_ref(), Ok(dataset));
    }

    if let Ok(dataset) = Dataset::from_blob(data, &limits) {
        assert_eq!(dataset.to_blob(), data);
    }
});
