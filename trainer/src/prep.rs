//! Preprocessing: the deterministic train/validation/test split of a dataset
//! and the standardization of features (and regression targets) by
//! statistics of the training part.
//!
//! Which rows go where depends only on the job's base seed, so every worker
//! and every verifier trains on the same rows. Statistics are summed in row
//! order in f64, a fixed sequence of IEEE operations. This module must never
//! look at validation or test rows to compute statistics: that would leak
//! them into training.

use protocol::{Split, Task};

use crate::dataset::{Dataset, Targets};
use crate::rng::SplitMix64;

/// One part of a split, standardized.
#[derive(Clone, Debug)]
pub struct Part {
    /// Number of rows.
    pub rows: usize,
    /// Standardized features, row-major.
    pub x: Vec<f32>,
    /// Class labels, for classification.
    pub labels: Vec<u32>,
    /// Standardized targets, for regression (what the model learns).
    pub targets: Vec<f32>,
    /// Targets on their original scale, for regression (what metrics use).
    pub raw_targets: Vec<f32>,
}

/// Per-feature mean and standard deviation of the training rows, and the same
/// for the regression target; kept with the trained weights so predictions
/// can standardize their inputs the same way.
#[derive(Clone, Debug, PartialEq)]
pub struct Scaling {
    /// Mean of each feature.
    pub feature_mean: Vec<f32>,
    /// Standard deviation of each feature (1 where it is 0).
    pub feature_std: Vec<f32>,
    /// Mean and standard deviation of the regression target; `None` for
    /// classification.
    pub target: Option<(f32, f32)>,
}

impl Scaling {
    /// Standardizes one feature value of column `column`.
    pub fn feature(&self, column: usize, value: f32) -> f32 {
        let mean = self.feature_mean.get(column).copied().unwrap_or(0.0);
        let std = self.feature_std.get(column).copied().unwrap_or(1.0);
        (value - mean) / std
    }

    /// Maps a model output back to the target's scale.
    pub fn target_value(&self, output: f32) -> f32 {
        match self.target {
            Some((mean, std)) => output * std + mean,
            None => output,
        }
    }
}

/// A dataset split into parts and standardized.
#[derive(Clone, Debug)]
pub struct Prepared {
    /// Feature columns.
    pub features: usize,
    /// The rows that train.
    pub train: Part,
    /// The rows held out for validation.
    pub validation: Part,
    /// The rows held out for the test metric.
    pub test: Part,
    /// The standardization, from the training rows.
    pub scaling: Scaling,
}

/// Why a dataset cannot be split as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrepError {
    /// The split leaves no training or no test rows.
    #[error("split of {validation_permille}/1000 validation and {test_permille}/1000 test of {rows} rows leaves {train} to train and {test} to test, expected at least 1 of each")]
    BadSplit {
        /// Rows in the dataset.
        rows: u32,
        /// Validation share.
        validation_permille: u16,
        /// Test share.
        test_permille: u16,
        /// Training rows left.
        train: u32,
        /// Test rows left.
        test: u32,
    },
}

/// Splits `dataset` by `split` with the permutation drawn from `base_seed`:
/// the first `test` rows of the permutation test, the next `validation` rows
/// validate, the rest train. Then standardizes every part by the training
/// rows' statistics.
pub fn prepare(dataset: &Dataset, split: &Split, base_seed: u64) -> Result<Prepared, PrepError> {
    let rows = dataset.rows();
    let bad = |train: u32, test: u32| PrepError::BadSplit {
        rows,
        validation_permille: split.validation_permille,
        test_permille: split.test_permille,
        train,
        test,
    };
    let sizes = split.sizes(rows).map_err(|_| bad(0, 0))?;
    if sizes.train == 0 || sizes.test == 0 {
        return Err(bad(sizes.train, sizes.test));
    }
    let mut order: Vec<usize> = (0..rows as usize).collect();
    SplitMix64::for_purpose(base_seed, "split").shuffle(&mut order);
    let test_end = sizes.test as usize;
    let validation_end = test_end + sizes.validation as usize;
    let (test_rows, rest) = order.split_at(test_end.min(order.len()));
    let (validation_rows, train_rows) = rest.split_at((validation_end - test_end).min(rest.len()));

    let features = dataset.features() as usize;
    let scaling = statistics(dataset, train_rows, features);
    let part = |indices: &[usize]| gather(dataset, indices, features, &scaling);
    Ok(Prepared {
        features,
        train: part(train_rows),
        validation: part(validation_rows),
        test: part(test_rows),
        scaling,
    })
}

/// Mean and population standard deviation per column over `rows`, summed in
/// row order in f64.
fn statistics(dataset: &Dataset, rows: &[usize], features: usize) -> Scaling {
    let x = dataset.x();
    let n = rows.len().max(1) as f64;
    let column = |j: usize| {
        rows.iter()
            .map(move |&i| f64::from(x.get(i * features + j).copied().unwrap_or(0.0)))
    };
    let moments = |values: &mut dyn Iterator<Item = f64>, again: &mut dyn Iterator<Item = f64>| {
        let mut sum = 0.0f64;
        for v in values {
            sum += v;
        }
        let mean = sum / n;
        let mut squares = 0.0f64;
        for v in again {
            let d = v - mean;
            squares += d * d;
        }
        let std = (squares / n).sqrt();
        // A constant column carries no information; dividing by 1 keeps it 0.
        let std = if std > 1e-12 { std } else { 1.0 };
        (mean as f32, std as f32)
    };
    let (feature_mean, feature_std): (Vec<f32>, Vec<f32>) = (0..features)
        .map(|j| moments(&mut column(j), &mut column(j)))
        .unzip();
    let target = match dataset.targets() {
        Targets::Values(values) => {
            let pick = || {
                rows.iter()
                    .map(|&i| f64::from(values.get(i).copied().unwrap_or(0.0)))
            };
            Some(moments(&mut pick(), &mut pick()))
        }
        Targets::Classes(_) => None,
    };
    Scaling {
        feature_mean,
        feature_std,
        target,
    }
}

fn gather(dataset: &Dataset, indices: &[usize], features: usize, scaling: &Scaling) -> Part {
    let x = dataset.x();
    let mut out = Vec::with_capacity(indices.len() * features);
    for &i in indices {
        let row = x.get(i * features..(i + 1) * features).unwrap_or_default();
        out.extend(row.iter().enumerate().map(|(j, v)| scaling.feature(j, *v)));
    }
    let (labels, targets, raw_targets) = match dataset.targets() {
        Targets::Classes(all) => (
            indices
                .iter()
                .map(|&i| all.get(i).copied().unwrap_or(0))
                .collect(),
            Vec::new(),
            Vec::new(),
        ),
        Targets::Values(all) => {
            let raw: Vec<f32> = indices
                .iter()
                .map(|&i| all.get(i).copied().unwrap_or(0.0))
                .collect();
            let (mean, std) = scaling.target.unwrap_or((0.0, 1.0));
            let standardized = raw.iter().map(|v| (v - mean) / std).collect();
            (Vec::new(), standardized, raw)
        }
    };
    Part {
        rows: indices.len(),
        x: out,
        labels,
        targets,
        raw_targets,
    }
}

/// Whether `task` is classification.
pub fn is_classification(task: Task) -> bool {
    matches!(task, Task::Classification { .. })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{parse_csv, DatasetLimits, TaskKind};

    fn dataset() -> Dataset {
        let mut text = String::from("a,b,y\n");
        for i in 0..20 {
            text.push_str(&format!("{},{},{}\n", i, 7, i * 2));
        }
        parse_csv(&text, TaskKind::Regression, &DatasetLimits::default()).unwrap()
    }

    #[test]
    fn split_is_deterministic_disjoint_and_sized() {
        let ds = dataset();
        let split = Split {
            validation_permille: 100,
            test_permille: 200,
        };
        let a = prepare(&ds, &split, 5).unwrap();
        let b = prepare(&ds, &split, 5).unwrap();
        let c = prepare(&ds, &split, 6).unwrap();
        assert_eq!((a.train.rows, a.validation.rows, a.test.rows), (14, 2, 4));
        assert_eq!(a.test.raw_targets, b.test.raw_targets);
        assert_ne!(a.test.raw_targets, c.test.raw_targets);
        let mut all: Vec<f32> = [&a.train, &a.validation, &a.test]
            .iter()
            .flat_map(|p| p.raw_targets.clone())
            .collect();
        all.sort_by(f32::total_cmp);
        let expected: Vec<f32> = (0..20).map(|i| (i * 2) as f32).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn train_part_is_standardized() {
        let ds = dataset();
        let split = Split {
            validation_permille: 0,
            test_permille: 500,
        };
        let p = prepare(&ds, &split, 1).unwrap();
        let n = p.train.rows as f32;
        let mean: f32 = p.train.x.iter().step_by(2).sum::<f32>() / n;
        let var: f32 = p
            .train
            .x
            .iter()
            .step_by(2)
            .map(|v| (v - mean) * (v - mean))
            .sum::<f32>()
            / n;
        assert!(mean.abs() < 1e-5, "{mean}");
        assert!((var - 1.0).abs() < 1e-4, "{var}");
        // The constant column stays finite (0) rather than dividing by zero.
        assert!(p.train.x.iter().skip(1).step_by(2).all(|v| *v == 0.0));
        let mean_t: f32 = p.train.targets.iter().sum::<f32>() / n;
        assert!(mean_t.abs() < 1e-5);
    }

    #[test]
    fn bad_split_is_an_error() {
        let ds = dataset();
        let split = Split {
            validation_permille: 0,
            test_permille: 10,
        };
        assert!(matches!(
            prepare(&ds, &split, 1),
            Err(PrepError::BadSplit { test: 0, .. })
        ));
        let split = Split {
            validation_permille: 600,
            test_permille: 600,
        };
        assert!(prepare(&ds, &split, 1).is_err());
    }
}
