//! Datasets: parsing a CSV file into rows of features and a target, and the
//! canonical binary blob whose SHA-256 is the dataset digest on chain.
//!
//! The blob is the only form that is hashed or stored: it carries the task,
//! the shape, the features as f32 little-endian bits and the labels, and
//! nothing else (no column names, no quoting, BOM, line endings or spacing),
//! so two CSV files with the same numbers give the same digest. CSV text is
//! read with the `csv` crate as a stream, row by row. This module must never
//! panic on bad input, and never hold more than [`DatasetLimits`] allows
//! (one row of text, the rows and the blob size are checked before the
//! memory for them is taken): every problem in a file or blob is a
//! [`DatasetError`] naming where it is and what was expected.

use std::path::Path;

use protocol::{DatasetRef, Digest, Task};

mod csv_text;

pub use csv_text::{parse_csv, parse_csv_reader};

/// What the target column holds, as the user declares it; the number of
/// classes is read from the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskKind {
    /// Class numbers `0..k`.
    Classification,
    /// Real values.
    Regression,
}

/// Caps on what a dataset may hold, checked while parsing so that a huge
/// file is refused before it is held in memory as floats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DatasetLimits {
    /// Most data rows.
    pub max_rows: u32,
    /// Most feature columns (the target column not counted).
    pub max_features: u32,
    /// Most classes; labels must be below this.
    pub max_classes: u32,
    /// Most bytes of the canonical blob, the dataset's total size.
    pub max_blob_bytes: u64,
    /// Most bytes of CSV text in one row (the header included), its line
    /// break included: the parser holds a whole row in memory at once.
    pub max_row_bytes: u32,
}

impl Default for DatasetLimits {
    fn default() -> Self {
        Self {
            max_rows: 1_000_000,
            max_features: 4096,
            max_classes: 1000,
            // A larger dataset could be parsed here but never stored or
            // fetched by a node.
            max_blob_bytes: protocol::blob::BlobKind::Dataset.max_bytes(),
            // 4097 cells of 250 characters each: far more than any number
            // needs, and a bounded buffer however long a broken line is.
            max_row_bytes: 1 << 20,
        }
    }
}

/// The target of every row.
#[derive(Clone, Debug, PartialEq)]
pub enum Targets {
    /// Class numbers, each below the dataset's class count.
    Classes(Vec<u32>),
    /// Regression targets, all finite.
    Values(Vec<f32>),
}

/// A parsed dataset: `rows × features` finite f32 features in row-major
/// order and one target per row.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    task: Task,
    rows: u32,
    features: u32,
    x: Vec<f32>,
    targets: Targets,
}

/// Why a CSV file or a dataset blob was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatasetError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: String,
        /// The operating system's words.
        message: String,
    },
    /// The file holds no header row.
    #[error("the file is empty, expected a header row and data rows")]
    Empty,
    /// The file has a header but no data.
    #[error("the file has a header but no data rows, expected at least one")]
    NoRows,
    /// The header names fewer than two columns.
    #[error("the header has {got} column(s), expected at least 2 (features, then the target)")]
    TooFewColumns {
        /// Columns in the header.
        got: usize,
    },
    /// The header or a row runs across more bytes than the cap (a file with no
    /// line breaks, or a quote left open).
    #[error("{} (line {line}) runs past {max} bytes, expected at most {max} bytes in one row", row_name(.row))]
    RowTooLong {
        /// Data row, from 1; 0 for the header.
        row: usize,
        /// Line in the file where the row starts, from 1.
        line: usize,
        /// The cap.
        max: u32,
    },
    /// A cell holds a line break. Numbers never do: a quote was opened and
    /// not closed where it should have been (or lines end in CR alone).
    #[error("{} (line {line}), column {column} ({name}): the cell runs across a line break (an unclosed quote?), expected one number on one line", row_name(.row))]
    SpansLines {
        /// Data row, from 1; 0 for the header.
        row: usize,
        /// Line in the file where the row starts, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// The column's header (empty where the header itself is read, or
        /// the row has more cells than the header).
        name: String,
    },
    /// The CSV reader refused the text.
    #[error("{} (line {line}): {message}", row_name(.row))]
    Csv {
        /// Data row, from 1; 0 for the header.
        row: usize,
        /// Line in the file where the row starts, from 1.
        line: usize,
        /// The CSV reader's words.
        message: String,
    },
    /// Reading the text failed part way (see [`DatasetError::Io`] for a file).
    #[error("cannot read the CSV text at {}: {message}", row_name(.row))]
    Read {
        /// Data row being read, from 1; 0 for the header.
        row: usize,
        /// The operating system's words.
        message: String,
    },
    /// A row has a different number of cells from the header.
    #[error("row {row} (line {line}) has {got} cells, expected {expected} like the header")]
    Ragged {
        /// Data row, from 1.
        row: usize,
        /// Line in the file, from 1.
        line: usize,
        /// Cells in the row.
        got: usize,
        /// Cells in the header.
        expected: usize,
    },
    /// A cell holds nothing but whitespace.
    #[error("row {row} (line {line}), column {column} ({name}) is empty, expected a number")]
    EmptyCell {
        /// Data row, from 1.
        row: usize,
        /// Line in the file, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// The column's header.
        name: String,
    },
    /// A cell is not a number.
    #[error("row {row} (line {line}), column {column} ({name}): {value:?} is not a number")]
    NotNumber {
        /// Data row, from 1.
        row: usize,
        /// Line in the file, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// The column's header.
        name: String,
        /// The cell.
        value: String,
    },
    /// A cell is NaN or infinite, or beyond the range of an f32.
    #[error("row {row} (line {line}), column {column} ({name}): {value:?} is not finite as an f32 (NaN, infinity, or beyond ±3.4e38), expected a finite number")]
    NotFinite {
        /// Data row, from 1.
        row: usize,
        /// Line in the file, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// The column's header.
        name: String,
        /// The cell.
        value: String,
    },
    /// A class label that is not a small non-negative integer.
    #[error("row {row} (line {line}), column {column} ({name}): label {value:?} is not a class number, expected an integer in 0..{max_classes} (written as 2, 2.0 or 2e0)")]
    BadLabel {
        /// Data row, from 1.
        row: usize,
        /// Line in the file, from 1.
        line: usize,
        /// Column, from 1.
        column: usize,
        /// The column's header.
        name: String,
        /// The cell.
        value: String,
        /// The class cap.
        max_classes: u32,
    },
    /// A classification dataset whose labels name a single class.
    #[error("labels name {got} class(es), expected at least 2")]
    TooFewClasses {
        /// Classes found (largest label plus one).
        got: u32,
    },
    /// More data rows than the cap.
    #[error("more than {max} data rows (row {row} is over the cap)")]
    TooManyRows {
        /// The first row over the cap, from 1.
        row: usize,
        /// The cap.
        max: u32,
    },
    /// The dataset grew past the blob size cap.
    #[error("row {row} makes the dataset blob {got} bytes, expected at most {max}")]
    BlobTooLarge {
        /// The first row over the cap, from 1.
        row: usize,
        /// Blob bytes with that row.
        got: u64,
        /// The cap.
        max: u64,
    },
    /// More feature columns than the cap.
    #[error("{got} feature columns, expected at most {max}")]
    TooManyFeatures {
        /// Feature columns in the header.
        got: usize,
        /// The cap.
        max: u32,
    },
    /// A blob that is not a canonical dataset blob.
    #[error("dataset blob: {what}: got {got}, expected {expected}")]
    BadBlob {
        /// Which part is wrong.
        what: &'static str,
        /// What was found.
        got: String,
        /// What was expected.
        expected: String,
    },
}

/// How an error names a row: data rows count from 1 after the header.
fn row_name(row: &usize) -> String {
    match row {
        0 => "the header".to_string(),
        row => format!("row {row}"),
    }
}

/// The blob's first bytes: a format name and version, so that a future
/// layout can never be mistaken for this one.
const BLOB_MAGIC: &[u8; 8] = b"GCDSET01";
const TAG_CLASSIFICATION: u8 = 0;
const TAG_REGRESSION: u8 = 1;
/// Magic, task tag, classes, rows, features.
const BLOB_HEADER: usize = 8 + 1 + 4 + 4 + 4;

impl Dataset {
    /// A dataset from parts, checked: shape, finite features, targets of the
    /// right kind and range.
    pub fn new(
        task: Task,
        features: u32,
        x: Vec<f32>,
        targets: Targets,
    ) -> Result<Self, DatasetError> {
        let rows = match &targets {
            Targets::Classes(labels) => labels.len(),
            Targets::Values(values) => values.len(),
        };
        let expected_cells = rows.checked_mul(features as usize);
        if expected_cells != Some(x.len()) {
            return Err(bad_blob(
                "feature count",
                x.len(),
                format!("{rows} rows x {features} features"),
            ));
        }
        if let Some(index) = x.iter().position(|v| !v.is_finite()) {
            return Err(bad_blob(
                "feature value",
                index,
                "finite values".to_string(),
            ));
        }
        match (&task, &targets) {
            (Task::Classification { classes }, Targets::Classes(labels)) => {
                if let Some(label) = labels.iter().find(|l| **l >= *classes) {
                    return Err(bad_blob("label", label, format!("below {classes}")));
                }
            }
            (Task::Regression, Targets::Values(values)) => {
                if let Some(index) = values.iter().position(|v| !v.is_finite()) {
                    return Err(bad_blob("target value at", index, "finite".to_string()));
                }
            }
            _ => {
                return Err(bad_blob(
                    "targets",
                    "a different kind",
                    format!("targets for {task:?}"),
                ))
            }
        }
        let rows =
            u32::try_from(rows).map_err(|_| bad_blob("rows", rows, "at most 2^32-1".into()))?;
        Ok(Self {
            task,
            rows,
            features,
            x,
            targets,
        })
    }

    /// The task, with the number of classes for classification.
    pub fn task(&self) -> Task {
        self.task
    }

    /// Number of data rows.
    pub fn rows(&self) -> u32 {
        self.rows
    }

    /// Number of feature columns.
    pub fn features(&self) -> u32 {
        self.features
    }

    /// Features, row-major.
    pub fn x(&self) -> &[f32] {
        &self.x
    }

    /// One target per row.
    pub fn targets(&self) -> &Targets {
        &self.targets
    }

    /// The canonical blob: magic, task tag (u8), classes, rows, features
    /// (u32 LE each), the features as f32 LE row-major, then the labels as
    /// u32 LE (classification) or f32 LE (regression).
    pub fn to_blob(&self) -> Vec<u8> {
        let target_bytes = 4 * self.rows as usize;
        let mut blob = Vec::with_capacity(BLOB_HEADER + 4 * self.x.len() + target_bytes);
        blob.extend_from_slice(BLOB_MAGIC);
        let (tag, classes) = match self.task {
            Task::Classification { classes } => (TAG_CLASSIFICATION, classes),
            Task::Regression => (TAG_REGRESSION, 0),
        };
        blob.push(tag);
        blob.extend_from_slice(&classes.to_le_bytes());
        blob.extend_from_slice(&self.rows.to_le_bytes());
        blob.extend_from_slice(&self.features.to_le_bytes());
        for v in &self.x {
            blob.extend_from_slice(&v.to_le_bytes());
        }
        match &self.targets {
            Targets::Classes(labels) => {
                for l in labels {
                    blob.extend_from_slice(&l.to_le_bytes());
                }
            }
            Targets::Values(values) => {
                for v in values {
                    blob.extend_from_slice(&v.to_le_bytes());
                }
            }
        }
        blob
    }

    /// SHA-256 of the canonical blob.
    pub fn digest(&self) -> Digest {
        Digest(protocol::sha256(&self.to_blob()))
    }

    /// The reference a job spec carries for this dataset.
    pub fn dataset_ref(&self) -> DatasetRef {
        DatasetRef {
            digest: self.digest(),
            rows: self.rows,
            features: self.features,
        }
    }

    /// Parses a canonical blob back, refusing anything that [`Self::to_blob`]
    /// could not have written (wrong magic, tag, length, non-finite values,
    /// labels out of range) or that breaks `limits`.
    pub fn from_blob(blob: &[u8], limits: &DatasetLimits) -> Result<Self, DatasetError> {
        if u64::try_from(blob.len()).map_or(true, |len| len > limits.max_blob_bytes) {
            return Err(bad_blob(
                "length",
                blob.len(),
                format!("at most {}", limits.max_blob_bytes),
            ));
        }
        let header = blob
            .get(..BLOB_HEADER)
            .ok_or_else(|| bad_blob("length", blob.len(), format!("at least {BLOB_HEADER}")))?;
        let (magic, rest) = header.split_at(8);
        if magic != BLOB_MAGIC {
            return Err(bad_blob(
                "magic",
                hex::encode(magic),
                hex::encode(BLOB_MAGIC),
            ));
        }
        let (tag, rest) = rest.split_at(1);
        let word = |bytes: &[u8], at: usize| -> u32 {
            let mut four = [0u8; 4];
            for (dst, src) in four.iter_mut().zip(bytes.iter().skip(at)) {
                *dst = *src;
            }
            u32::from_le_bytes(four)
        };
        let classes = word(rest, 0);
        let rows = word(rest, 4);
        let features = word(rest, 8);
        let task = match tag.first().copied() {
            Some(TAG_CLASSIFICATION) => {
                if classes < 2 || classes > limits.max_classes {
                    return Err(bad_blob(
                        "classes",
                        classes,
                        format!("2..={}", limits.max_classes),
                    ));
                }
                Task::Classification { classes }
            }
            Some(TAG_REGRESSION) => {
                if classes != 0 {
                    return Err(bad_blob("classes of a regression", classes, "0".into()));
                }
                Task::Regression
            }
            other => return Err(bad_blob("task tag", format!("{other:?}"), "0 or 1".into())),
        };
        if rows == 0 || rows > limits.max_rows {
            return Err(bad_blob("rows", rows, format!("1..={}", limits.max_rows)));
        }
        if features == 0 || features > limits.max_features {
            return Err(bad_blob(
                "features",
                features,
                format!("1..={}", limits.max_features),
            ));
        }
        // Checked: the limits may allow more cells than a usize of bytes
        // can count, and no blob that long can exist.
        let lengths = (rows as usize)
            .checked_mul(features as usize)
            .and_then(|cells| {
                let features_len = cells.checked_mul(4)?;
                let len = BLOB_HEADER
                    .checked_add(features_len)?
                    .checked_add((rows as usize).checked_mul(4)?)?;
                Some((cells, len))
            });
        let Some((cells, expected_len)) = lengths else {
            return Err(bad_blob(
                "length",
                blob.len(),
                format!("{rows} rows of {features} features, which no blob can hold"),
            ));
        };
        if blob.len() != expected_len {
            return Err(bad_blob("length", blob.len(), expected_len.to_string()));
        }
        let body = blob.get(BLOB_HEADER..).unwrap_or_default();
        let (feature_bytes, target_bytes) = body.split_at(4 * cells);
        let x: Vec<f32> = feature_bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let targets = match task {
            Task::Classification { .. } => Targets::Classes(
                target_bytes
                    .chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
            Task::Regression => Targets::Values(
                target_bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            ),
        };
        Self::new(task, features, x, targets)
    }

    /// Reads and parses a CSV file as a stream (see [`parse_csv_reader`]);
    /// the file is never held in memory whole.
    pub fn from_csv_file(
        path: &Path,
        kind: TaskKind,
        limits: &DatasetLimits,
    ) -> Result<Self, DatasetError> {
        let io_error = |message: String| DatasetError::Io {
            path: path.display().to_string(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| io_error(e.to_string()))?;
        parse_csv_reader(file, kind, limits).map_err(|e| match e {
            DatasetError::Read { row, message } => {
                io_error(format!("{message} (reading {})", row_name(&row)))
            }
            other => other,
        })
    }
}

fn bad_blob(what: &'static str, got: impl ToString, expected: String) -> DatasetError {
    DatasetError::BadBlob {
        what,
        got: got.to_string(),
        expected,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, kind: TaskKind) -> Result<Dataset, DatasetError> {
        parse_csv(text, kind, &DatasetLimits::default())
    }

    #[test]
    fn a_blob_announcing_more_cells_than_can_be_counted_is_refused() {
        let limits = DatasetLimits {
            max_rows: u32::MAX,
            max_features: u32::MAX,
            ..DatasetLimits::default()
        };
        let mut blob = BLOB_MAGIC.to_vec();
        blob.push(TAG_REGRESSION);
        blob.extend_from_slice(&0u32.to_le_bytes());
        blob.extend_from_slice(&u32::MAX.to_le_bytes());
        blob.extend_from_slice(&u32::MAX.to_le_bytes());
        blob.extend_from_slice(&[0u8; 64]);
        match Dataset::from_blob(&blob, &limits) {
            Err(DatasetError::BadBlob { what, .. }) => assert_eq!(what, "length"),
            other => panic!("expected a length refusal, got {other:?}"),
        }
    }

    #[test]
    fn parses_and_round_trips_through_the_blob() {
        let ds = parse("a,b,label\n1,2.5,0\n\n3,-4,2\n", TaskKind::Classification).unwrap();
        assert_eq!(ds.task(), Task::Classification { classes: 3 });
        assert_eq!((ds.rows(), ds.features()), (2, 2));
        assert_eq!(ds.x(), &[1.0, 2.5, 3.0, -4.0]);
        let blob = ds.to_blob();
        assert_eq!(blob.len(), BLOB_HEADER + 4 * 4 + 2 * 4);
        let back = Dataset::from_blob(&blob, &DatasetLimits::default()).unwrap();
        assert_eq!(back, ds);
        assert_eq!(back.digest(), ds.digest());

        let reg = parse("a,y\n1,0.5\n2,1.5\n", TaskKind::Regression).unwrap();
        assert_eq!(reg.targets(), &Targets::Values(vec![0.5, 1.5]));
        let back = Dataset::from_blob(&reg.to_blob(), &DatasetLimits::default()).unwrap();
        assert_eq!(back, reg);
    }

    #[test]
    fn the_digest_ignores_formatting_but_not_values() {
        let a = parse("x,y\n1.0,0\n2,1\n", TaskKind::Classification).unwrap();
        let b = parse(
            "feature , label\r\n1, 0\r\n2.000,1\r\n",
            TaskKind::Classification,
        )
        .unwrap();
        let c = parse("x,y\n1.0,0\n2.5,1\n", TaskKind::Classification).unwrap();
        assert_eq!(a.digest(), b.digest());
        assert_ne!(a.digest(), c.digest());
    }

    #[test]
    fn csv_errors_name_row_and_column() {
        let err = parse("a,b,y\n1,2,0\n1,2\n", TaskKind::Classification).unwrap_err();
        assert_eq!(
            err,
            DatasetError::Ragged {
                row: 2,
                line: 3,
                got: 2,
                expected: 3
            }
        );
        assert!(err.to_string().contains("row 2"), "{err}");

        let err = parse("a,b,y\n1,x,0\n", TaskKind::Classification).unwrap_err();
        assert!(
            matches!(err, DatasetError::NotNumber { row: 1, column: 2, ref name, .. } if name == "b")
        );
        assert!(err.to_string().contains("column 2 (b)"), "{err}");

        for bad in ["NaN", "inf", "-inf"] {
            let err = parse(&format!("a,y\n{bad},1\n1,0\n"), TaskKind::Regression).unwrap_err();
            assert!(
                matches!(
                    err,
                    DatasetError::NotFinite {
                        row: 1,
                        column: 1,
                        ..
                    }
                ),
                "{err}"
            );
        }
        let err = parse("a,y\n1,1\n1,nan\n", TaskKind::Regression).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::NotFinite {
                    row: 2,
                    column: 2,
                    ..
                }
            ),
            "{err}"
        );

        assert_eq!(
            parse("", TaskKind::Classification).unwrap_err(),
            DatasetError::Empty
        );
        assert_eq!(
            parse("\n \n", TaskKind::Regression).unwrap_err(),
            DatasetError::Empty
        );
        assert_eq!(
            parse("a,y\n", TaskKind::Regression).unwrap_err(),
            DatasetError::NoRows
        );
        assert_eq!(
            parse("y\n1\n", TaskKind::Regression).unwrap_err(),
            DatasetError::TooFewColumns { got: 1 }
        );

        for bad in ["-1", "1.5", "abc", "1000", "99999999999"] {
            let err = parse(
                &format!("a,label\n1,0\n2,{bad}\n"),
                TaskKind::Classification,
            )
            .unwrap_err();
            assert!(
                matches!(err, DatasetError::BadLabel { row: 2, column: 2, ref value, .. } if value == bad),
                "{bad}: {err}"
            );
        }
        assert_eq!(
            parse("a,y\n1,0\n2,0\n", TaskKind::Classification).unwrap_err(),
            DatasetError::TooFewClasses { got: 1 }
        );
    }

    #[test]
    fn caps_on_rows_and_columns() {
        let limits = DatasetLimits {
            max_rows: 2,
            max_features: 2,
            max_classes: 10,
            ..DatasetLimits::default()
        };
        let err = parse_csv("a,y\n1,0\n2,1\n3,1\n", TaskKind::Classification, &limits).unwrap_err();
        assert_eq!(err, DatasetError::TooManyRows { row: 3, max: 2 });
        let err = parse_csv("a,b,c,y\n1,2,3,0\n", TaskKind::Classification, &limits).unwrap_err();
        assert_eq!(err, DatasetError::TooManyFeatures { got: 3, max: 2 });
        let err = parse_csv("a,y\n1,10\n", TaskKind::Classification, &limits).unwrap_err();
        assert!(matches!(
            err,
            DatasetError::BadLabel {
                max_classes: 10,
                ..
            }
        ));
    }

    #[test]
    fn bad_blobs_are_refused() {
        let ds = parse("a,y\n1,0\n2,1\n", TaskKind::Classification).unwrap();
        let limits = DatasetLimits::default();
        let blob = ds.to_blob();
        for cut in 0..blob.len() {
            assert!(Dataset::from_blob(&blob[..cut], &limits).is_err());
        }
        let mut longer = blob.clone();
        longer.push(0);
        assert!(Dataset::from_blob(&longer, &limits).is_err());
        let mut bad_label = blob.clone();
        let last = bad_label.len() - 4;
        bad_label[last..].copy_from_slice(&7u32.to_le_bytes());
        assert!(matches!(
            Dataset::from_blob(&bad_label, &limits),
            Err(DatasetError::BadBlob { what: "label", .. })
        ));
        let mut nan = blob.clone();
        nan[BLOB_HEADER..BLOB_HEADER + 4].copy_from_slice(&f32::NAN.to_le_bytes());
        assert!(Dataset::from_blob(&nan, &limits).is_err());
        let mut magic = blob;
        magic[0] = b'X';
        assert!(matches!(
            Dataset::from_blob(&magic, &limits),
            Err(DatasetError::BadBlob { what: "magic", .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn from_blob_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = Dataset::from_blob(&bytes, &DatasetLimits::default());
        }
    }
}
