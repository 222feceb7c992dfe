//! Reading CSV text into a [`Dataset`]: the `csv` crate splits the text
//! into rows and cells (quoting, BOM, line endings), and this module turns
//! cells into numbers and labels under [`DatasetLimits`], one row at a time.
//!
//! How a file was written (quotes, spacing, CRLF, a BOM, `2.0` for class 2)
//! never reaches the dataset: the same numbers give the same blob. This
//! module must never panic on its input, and never take memory past the
//! limits: a row's text is cut off at `max_row_bytes`, and a row past
//! `max_rows` or the blob cap is refused before room is made for it.

use std::collections::VecDeque;
use std::io::{self, Read};

use protocol::Task;

use super::{Dataset, DatasetError, DatasetLimits, Targets, TaskKind, BLOB_HEADER};

/// Parses CSV text (see [`parse_csv_reader`], which this calls on the
/// text's bytes).
pub fn parse_csv(
    text: &str,
    kind: TaskKind,
    limits: &DatasetLimits,
) -> Result<Dataset, DatasetError> {
    parse_csv_reader(text.as_bytes(), kind, limits)
}

/// Parses CSV text from a reader, one row at a time: a header row, then rows
/// of numeric cells separated by commas, the target in the last column.
///
/// The text is UTF-8, with or without a BOM (a run of them at the start is
/// dropped the same as one), lines end in LF or CRLF, and the last line
/// break is optional. Any cell may be quoted (`"5.1"`, as spreadsheets and
/// R write), and whitespace around a value, inside quotes or out, is
/// dropped. Blank lines (empty or whitespace only) are skipped
/// and are not rows, but count as lines: errors name the data row (from 1,
/// the header not counted), the line in the file where it starts, and the
/// column by number (from 1) and header name.
///
/// Numbers are read with Rust's correctly rounded decimal parser, so the
/// same text gives the same bits everywhere; NaN, infinities and values
/// beyond the f32 range are refused. A classification label is an integer
/// below `limits.max_classes`, written as an integer or as a decimal whose
/// exact value is one ("2", "2.0", "2e0"; not "1.5", "-1" or
/// "1.0000000001"); the class count is the largest label plus one.
/// Regression targets are any finite number.
///
/// Every limit applies while reading: a row is refused once its text runs
/// past `max_row_bytes`, and a row past `max_rows` or past `max_blob_bytes`
/// before room is made for its numbers.
pub fn parse_csv_reader<R: Read>(
    reader: R,
    kind: TaskKind,
    limits: &DatasetLimits,
) -> Result<Dataset, DatasetError> {
    let mut records = CsvRows::new(reader, limits.max_row_bytes);

    let names = loop {
        let line = records.next(0)?.ok_or(DatasetError::Empty)?;
        if !records.is_blank() {
            break records.header_names(line)?;
        }
    };
    if names.len() < 2 {
        return Err(DatasetError::TooFewColumns { got: names.len() });
    }
    let feature_count = names.len().saturating_sub(1);
    if feature_count > limits.max_features as usize {
        return Err(DatasetError::TooManyFeatures {
            got: feature_count,
            max: limits.max_features,
        });
    }
    let features = u32::try_from(feature_count).map_err(|_| DatasetError::TooManyFeatures {
        got: feature_count,
        max: limits.max_features,
    })?;

    // The blob grows by 4 bytes per cell; the rows that fit under its cap.
    let row_blob_bytes = 4u64.saturating_mul(u64::from(features).saturating_add(1));
    let blob_header = BLOB_HEADER as u64;
    let blob_rows = limits.max_blob_bytes.saturating_sub(blob_header) / row_blob_bytes;
    let rows_allowed =
        usize::try_from(blob_rows.min(u64::from(limits.max_rows))).unwrap_or(usize::MAX);

    let mut x = Vec::new();
    let mut labels = Vec::new();
    let mut values = Vec::new();
    let mut row = 0usize;
    while let Some(line) = records.next(row.saturating_add(1))? {
        if records.is_blank() {
            continue;
        }
        row = row.saturating_add(1);
        if row > limits.max_rows as usize {
            return Err(DatasetError::TooManyRows {
                row,
                max: limits.max_rows,
            });
        }
        if row > rows_allowed {
            let rows = u64::try_from(row).unwrap_or(u64::MAX);
            return Err(DatasetError::BlobTooLarge {
                row,
                got: blob_header.saturating_add(rows.saturating_mul(row_blob_bytes)),
                max: limits.max_blob_bytes,
            });
        }
        let record = records.record();
        let at = |column: usize| CellAt {
            row,
            line,
            column,
            name: names.get(column).map(String::as_str).unwrap_or_default(),
        };
        // An open quote swallows line breaks, and with them the cell counts
        // of the rows after it: say so before counting cells.
        if let Some(column) = record.iter().position(spans_lines) {
            return Err(at(column).spans_lines());
        }
        if record.len() != names.len() {
            return Err(DatasetError::Ragged {
                row,
                line,
                got: record.len(),
                expected: names.len(),
            });
        }
        reserve_within(
            &mut x,
            feature_count,
            rows_allowed.saturating_mul(feature_count),
        );
        for (column, cell) in record.iter().enumerate() {
            let at = at(column);
            let text = at.text(cell)?;
            if column < feature_count {
                x.push(at.number(text)?);
            } else if kind == TaskKind::Classification {
                reserve_within(&mut labels, 1, rows_allowed);
                labels.push(at.label(text, limits.max_classes)?);
            } else {
                reserve_within(&mut values, 1, rows_allowed);
                values.push(at.number(text)?);
            }
        }
    }
    if row == 0 {
        return Err(DatasetError::NoRows);
    }
    match kind {
        TaskKind::Classification => {
            let classes = labels.iter().copied().max().unwrap_or(0).saturating_add(1);
            if classes < 2 {
                return Err(DatasetError::TooFewClasses { got: classes });
            }
            Dataset::new(
                Task::Classification { classes },
                features,
                x,
                Targets::Classes(labels),
            )
        }
        TaskKind::Regression => {
            Dataset::new(Task::Regression, features, x, Targets::Values(values))
        }
    }
}

/// Whether a cell holds a line break. Numbers never do: an LF inside a cell
/// was quoted, by a quote that was not closed where it should have been,
/// and a CR before the cell's end is a line ending of a CR-only file (only
/// the CR of a CRLF ends a cell).
fn spans_lines(cell: &[u8]) -> bool {
    cell.contains(&b'\n') || cell.trim_ascii_end().contains(&b'\r')
}

/// Makes room for `width` more values, never for more than `max_len` in
/// all: a `Vec` left to double could reserve nearly twice the rows the
/// limits allow.
fn reserve_within<T>(values: &mut Vec<T>, width: usize, max_len: usize) {
    let needed = values.len().saturating_add(width);
    if needed <= values.capacity() {
        return;
    }
    let target = values.capacity().saturating_mul(2).min(max_len).max(needed);
    values.reserve_exact(target.saturating_sub(values.len()));
}

/// A cell's place, for the errors about it.
struct CellAt<'a> {
    row: usize,
    line: usize,
    /// From 0.
    column: usize,
    name: &'a str,
}

impl CellAt<'_> {
    /// The cell as text, without the whitespace around it.
    fn text<'c>(&self, cell: &'c [u8]) -> Result<&'c str, DatasetError> {
        let text = std::str::from_utf8(cell)
            .map_err(|_| self.not_number(&String::from_utf8_lossy(cell)))?
            .trim();
        if text.is_empty() {
            return Err(DatasetError::EmptyCell {
                row: self.row,
                line: self.line,
                column: self.column.saturating_add(1),
                name: self.name.to_string(),
            });
        }
        Ok(text)
    }

    /// A feature or a regression target.
    fn number(&self, text: &str) -> Result<f32, DatasetError> {
        let value = text.parse::<f32>().map_err(|_| self.not_number(text))?;
        if !value.is_finite() {
            return Err(DatasetError::NotFinite {
                row: self.row,
                line: self.line,
                column: self.column.saturating_add(1),
                name: self.name.to_string(),
                value: text.to_string(),
            });
        }
        Ok(value)
    }

    /// A classification label.
    fn label(&self, text: &str, max_classes: u32) -> Result<u32, DatasetError> {
        class_label(text, max_classes).ok_or_else(|| DatasetError::BadLabel {
            row: self.row,
            line: self.line,
            column: self.column.saturating_add(1),
            name: self.name.to_string(),
            value: text.to_string(),
            max_classes,
        })
    }

    fn not_number(&self, text: &str) -> DatasetError {
        DatasetError::NotNumber {
            row: self.row,
            line: self.line,
            column: self.column.saturating_add(1),
            name: self.name.to_string(),
            value: text.to_string(),
        }
    }

    fn spans_lines(&self) -> DatasetError {
        DatasetError::SpansLines {
            row: self.row,
            line: self.line,
            column: self.column.saturating_add(1),
            name: self.name.to_string(),
        }
    }
}

/// The class a label cell names. The decimal is taken at its exact value,
/// not rounded to a float first, so "1.0", "1e0" and "100e-2" name class 1
/// while "0.99999999999" names none (as an f32 it would round to 1.0).
fn class_label(text: &str, max_classes: u32) -> Option<u32> {
    // Rust's float grammar decides what is a number at all, as for features.
    text.parse::<f64>().ok()?;
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, exponent),
        None => (unsigned, ""),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    // The decimal point sits `point` digits into `whole` then `fraction`.
    let point = i64::try_from(whole.len())
        .ok()?
        .saturating_add(saturating_exponent(exponent)?);
    let mut value = 0u32;
    let mut digits = 0i64;
    for byte in whole.bytes().chain(fraction.bytes()) {
        // Not a digit: "inf" and "nan" pass the grammar but name no class.
        let digit = char::from(byte).to_digit(10)?;
        if digits < point {
            value = value.checked_mul(10)?.checked_add(digit)?;
        } else if digit != 0 {
            return None;
        }
        digits = digits.saturating_add(1);
    }
    // Zeros the exponent puts after the last digit. A nonzero value
    // overflows within ten of them, so a huge exponent ends the loop early.
    if value != 0 {
        let mut zeros = digits;
        while zeros < point {
            value = value.checked_mul(10)?;
            zeros = zeros.saturating_add(1);
        }
    }
    if negative && value != 0 {
        return None;
    }
    (value < max_classes).then_some(value)
}

/// An exponent's digits (after `e`), saturated: only its sign and whether it
/// is small matter to [`class_label`].
fn saturating_exponent(text: &str) -> Option<i64> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let mut exponent = 0i64;
    for byte in digits.bytes() {
        let digit = char::from(byte).to_digit(10)?;
        exponent = exponent.saturating_mul(10).saturating_add(i64::from(digit));
    }
    Some(if negative { -exponent } else { exponent })
}

/// The rows of a CSV text, read with the `csv` crate one at a time into one
/// reused record.
struct CsvRows<R: Read> {
    reader: csv::Reader<CsvText<R>>,
    record: csv::ByteRecord,
    max_row_bytes: u32,
}

impl<R: Read> CsvRows<R> {
    fn new(text: R, max_row_bytes: u32) -> Self {
        let reader = csv::ReaderBuilder::new()
            // The header is read as a row, so that blank lines before it are
            // skipped like any others.
            .has_headers(false)
            // Ragged rows come back as rows, for an error naming them.
            .flexible(true)
            // Only LF ends a line: a CRLF leaves a CR that trimming drops,
            // and blank CRLF lines reach `is_blank` with their line count.
            .terminator(csv::Terminator::Any(b'\n'))
            .from_reader(CsvText::new(text, max_row_bytes));
        Self {
            reader,
            record: csv::ByteRecord::new(),
            max_row_bytes,
        }
    }

    /// Reads the next row, blank or not; returns the line where it starts,
    /// or `None` at the end. `row` is the data row being read (0 for the
    /// header), for errors.
    fn next(&mut self, row: usize) -> Result<Option<usize>, DatasetError> {
        let read = self.reader.read_byte_record(&mut self.record);
        let text = self.reader.get_ref();
        let line = text.line();
        match read {
            Ok(false) => Ok(None),
            Ok(true) => {
                let end = self.reader.position().byte();
                self.reader.get_mut().row_ended(end);
                Ok(Some(line))
            }
            Err(_) if text.overlong => Err(DatasetError::RowTooLong {
                row,
                line,
                max: self.max_row_bytes,
            }),
            Err(e) => match e.kind() {
                csv::ErrorKind::Io(io) => Err(DatasetError::Read {
                    row,
                    message: io.to_string(),
                }),
                _ => Err(DatasetError::Csv {
                    row,
                    line,
                    message: e.to_string(),
                }),
            },
        }
    }

    fn record(&self) -> &csv::ByteRecord {
        &self.record
    }

    /// Whether the row read last is a blank line: one cell of whitespace
    /// (a CR, spaces), not a quoted line break.
    fn is_blank(&self) -> bool {
        match (self.record.len(), self.record.get(0)) {
            (0, _) => true,
            (1, Some(cell)) => {
                !spans_lines(cell) && std::str::from_utf8(cell).is_ok_and(|t| t.trim().is_empty())
            }
            _ => false,
        }
    }

    /// The row read last as the header's column names.
    fn header_names(&self, line: usize) -> Result<Vec<String>, DatasetError> {
        self.record
            .iter()
            .enumerate()
            .map(|(column, cell)| {
                if spans_lines(cell) {
                    return Err(DatasetError::SpansLines {
                        row: 0,
                        line,
                        column: column.saturating_add(1),
                        name: String::new(),
                    });
                }
                Ok(String::from_utf8_lossy(cell).trim().to_string())
            })
            .collect()
    }
}

/// The byte stream the CSV reader parses, keeping what that reader does not:
/// the line where each row starts, and how long the row being read has
/// grown. It drops the UTF-8 BOMs that lead the input and adds a line break at the end, so
/// that a last row without one still ends and a quote left open at the end
/// of the file shows as a cell spanning lines. It never passes on more than
/// `max_row_bytes` past the start of the row being read: the reader buffers
/// a whole row, and a file with no line break would otherwise fill memory.
struct CsvText<R> {
    inner: R,
    /// Bytes read from the start while looking for a BOM, to pass on first.
    head: VecDeque<u8>,
    /// Whether the start was looked at for a BOM.
    started: bool,
    /// Whether the closing line break was passed on.
    finished: bool,
    /// Bytes passed on, the closing line break included.
    passed: u64,
    /// Where the row being read starts, past any blank lines before it.
    row_start: u64,
    max_row_bytes: u64,
    /// Offsets of the line breaks passed on at or after `row_start`.
    breaks: VecDeque<u64>,
    /// Line breaks before `row_start`.
    lines_before: u64,
    /// Set once a row ran past `max_row_bytes`.
    overlong: bool,
}

const UTF8_BOM: [u8; 3] = [0xef, 0xbb, 0xbf];

impl<R: Read> CsvText<R> {
    fn new(inner: R, max_row_bytes: u32) -> Self {
        Self {
            inner,
            head: VecDeque::new(),
            started: false,
            finished: false,
            passed: 0,
            row_start: 0,
            max_row_bytes: u64::from(max_row_bytes),
            breaks: VecDeque::new(),
            lines_before: 0,
            overlong: false,
        }
    }

    /// The line where the row being read starts (or the last row read, until
    /// [`Self::row_ended`]), from 1.
    fn line(&self) -> usize {
        usize::try_from(self.lines_before.saturating_add(1)).unwrap_or(usize::MAX)
    }

    /// The reader has returned a row that ends at byte `end`: the next row
    /// starts there.
    fn row_ended(&mut self, end: u64) {
        while self.breaks.front().is_some_and(|at| *at < end) {
            self.breaks.pop_front();
            self.lines_before = self.lines_before.saturating_add(1);
        }
        self.row_start = end.max(self.row_start);
        self.skip_blank_lines();
    }

    /// The CSV reader skips empty lines where a row would start; so does
    /// the row start here, counting them as lines.
    fn skip_blank_lines(&mut self) {
        while self.breaks.front() == Some(&self.row_start) {
            self.breaks.pop_front();
            self.lines_before = self.lines_before.saturating_add(1);
            self.row_start = self.row_start.saturating_add(1);
        }
    }

    /// Drops every UTF-8 BOM at the start of the input, however many and
    /// however the reader cuts them, and keeps the first bytes that are not
    /// one to pass on first.
    ///
    /// All of them, not only the first: the `csv` crate also strips a BOM,
    /// but only one that starts its first buffer and arrives there whole.
    /// Read in one piece, a file starting with two BOMs lost both (one
    /// here, one there); handed over three bytes at a time, the crate's
    /// first buffer was the second BOM alone, which it stripped and then
    /// took the empty buffer for the end of the input. With the run dropped
    /// here the crate never sees a leading BOM, so what a file reads as
    /// does not depend on the size of the reads.
    fn drop_leading_boms(&mut self) -> io::Result<()> {
        loop {
            let mut head = [0u8; 3];
            let mut got = 0;
            while let Some(rest) = head.get_mut(got..).filter(|rest| !rest.is_empty()) {
                match self.read_inner(rest)? {
                    0 => break,
                    n => got = got.saturating_add(n),
                }
            }
            let head = head.get(..got).unwrap_or_default();
            if head != UTF8_BOM {
                self.head.extend(head);
                return Ok(());
            }
        }
    }

    fn read_inner(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }
}

impl<R: Read> Read for CsvText<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.started {
            self.started = true;
            self.drop_leading_boms()?;
        }
        if self.finished && self.head.is_empty() {
            return Ok(0);
        }
        let allowed = self
            .row_start
            .saturating_add(self.max_row_bytes)
            .saturating_sub(self.passed);
        if allowed == 0 {
            self.overlong = true;
            return Err(io::Error::other(format!(
                "a row runs past {} bytes",
                self.max_row_bytes
            )));
        }
        let want = usize::try_from(allowed).map_or(buf.len(), |allowed| allowed.min(buf.len()));
        let buf = buf.get_mut(..want).unwrap_or_default();
        let n = if !self.head.is_empty() {
            let n = self.head.len().min(buf.len());
            for (slot, byte) in buf.iter_mut().zip(self.head.drain(..n)) {
                *slot = byte;
            }
            n
        } else {
            match self.read_inner(buf)? {
                0 => match buf.first_mut() {
                    Some(first) => {
                        *first = b'\n';
                        self.finished = true;
                        1
                    }
                    None => 0,
                },
                n => n,
            }
        };
        for (offset, byte) in (self.passed..).zip(buf.iter().take(n)) {
            if *byte == b'\n' {
                self.breaks.push_back(offset);
            }
        }
        self.passed = self
            .passed
            .saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
        self.skip_blank_lines();
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fmt::Write as _;
    use std::path::Path;

    fn parse(text: &str, kind: TaskKind) -> Result<Dataset, DatasetError> {
        parse_csv(text, kind, &DatasetLimits::default())
    }

    /// The shipped datasets' digests, computed before the parser moved to
    /// the `csv` crate: job specs name these datasets by them.
    const SHIPPED: [(&str, TaskKind, &str); 3] = [
        (
            "iris.csv",
            TaskKind::Classification,
            "852a85ab482a322d08945e0b644261e68158b1398631dad3f51a1e63d5da34e5",
        ),
        (
            "digits.csv",
            TaskKind::Classification,
            "477c8249f54a55503407846a0d920315f181d62e542d176cfa7669ccbe186b95",
        ),
        (
            "diabetes.csv",
            TaskKind::Regression,
            "de192b48de914ab1f1433d286fe62581306dbfaebebdb3799f9fda011819588a",
        ),
    ];

    fn shipped_path(file: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../datasets")
            .join(file)
    }

    /// `text` the way a spreadsheet might save it: a BOM, CRLF, every cell
    /// quoted with spaces inside the quotes, labels as decimals, blank lines.
    fn spreadsheet_style(text: &str, labels_as_decimals: bool) -> String {
        let mut out = String::from("\u{feff}");
        for (index, line) in text.lines().enumerate() {
            let cells: Vec<&str> = line.split(',').collect();
            let last = cells.len() - 1;
            let quoted: Vec<String> = cells
                .iter()
                .enumerate()
                .map(|(column, cell)| {
                    if index > 0 && column == last && labels_as_decimals {
                        format!("\" {cell}.0 \"")
                    } else {
                        format!("\" {cell}\"")
                    }
                })
                .collect();
            out.push_str(&quoted.join(","));
            out.push_str("\r\n");
            if index % 7 == 3 {
                out.push_str("\r\n");
            }
        }
        out
    }

    #[test]
    fn shipped_datasets_keep_their_digests() {
        let limits = DatasetLimits::default();
        for (file, kind, digest) in SHIPPED {
            let path = shipped_path(file);
            let streamed = Dataset::from_csv_file(&path, kind, &limits).unwrap();
            assert_eq!(streamed.digest().to_hex(), digest, "{file}");

            let text = std::fs::read_to_string(&path).unwrap();
            let whole = parse_csv(&text, kind, &limits).unwrap();
            assert_eq!(whole, streamed, "{file}");

            let labels_as_decimals = kind == TaskKind::Classification;
            let exported =
                parse_csv(&spreadsheet_style(&text, labels_as_decimals), kind, &limits).unwrap();
            assert_eq!(exported.digest().to_hex(), digest, "{file} as exported");
        }
    }

    #[test]
    fn the_blob_does_not_depend_on_how_the_csv_was_written() {
        let plain = "sepal,petal,label\n5.1,3.5,0\n4.9,3,1\n6.2,-0.5,2\n";
        let written = [
            // Fully quoted, as R's write.csv does.
            "\"sepal\",\"petal\",\"label\"\n\"5.1\",\"3.5\",\"0\"\n\"4.9\",\"3\",\"1\"\n\"6.2\",\"-0.5\",\"2\"\n",
            // CRLF, no final line break.
            "sepal,petal,label\r\n5.1,3.5,0\r\n4.9,3,1\r\n6.2,-0.5,2",
            // A BOM.
            "\u{feff}sepal,petal,label\n5.1,3.5,0\n4.9,3,1\n6.2,-0.5,2\n",
            // Spaces and tabs around values, inside quotes and out.
            "sepal , petal,label\n 5.1,\t3.5 ,\" 0 \"\n4.9 ,\" 3\"  ,1\n6.2,-0.5 , 2\n",
            // Labels as integral decimals; features in other notations.
            "sepal,petal,label\n5.10,35e-1,0.0\n4.9,3.000,1e0\n+6.2,-.5,2.000\n",
            // Blank lines, whitespace-only lines and CRLF blank lines.
            "\n\nsepal,petal,label\n\n5.1,3.5,0\n   \n4.9,3,1\r\n\r\n6.2,-0.5,2\n\n\n",
            // All of it at once.
            "\u{feff}\"sepal\",\"petal\",\"label\"\r\n\r\n\" 5.1 \",\"3.5\",\"0.0\"\r\n4.9,\"3\" ,\"1.000\"\r\n\"6.2\",-0.5,\"2e0\"",
        ];
        let expected = parse(plain, TaskKind::Classification).unwrap();
        assert_eq!(expected.task(), Task::Classification { classes: 3 });
        for text in written {
            let ds = parse(text, TaskKind::Classification).unwrap();
            assert_eq!(ds.to_blob(), expected.to_blob(), "{text:?}");
            assert_eq!(ds.digest(), expected.digest(), "{text:?}");
        }

        let plain = "a,y\n1,0.25\n2,-3\n";
        let quoted = "\u{feff}\"a\",\"y\"\r\n\" 1 \",\"0.25\"\r\n\"2\",\"-3.0\"\r\n";
        assert_eq!(
            parse(quoted, TaskKind::Regression).unwrap().to_blob(),
            parse(plain, TaskKind::Regression).unwrap().to_blob()
        );
    }

    #[test]
    fn labels_are_integers_however_written() {
        for (text, class) in [
            ("0", 0),
            ("7", 7),
            ("1.0", 1),
            ("2.000", 2),
            ("1e0", 1),
            ("1E+1", 10),
            ("100e-2", 1),
            ("0.1e1", 1),
            ("+3", 3),
            ("3.", 3),
            ("007", 7),
            ("0.0", 0),
            ("-0", 0),
            ("-0.0e5", 0),
            ("0e999999999999999999999", 0),
            ("0.000e-99999999999999999999", 0),
            ("999", 999),
        ] {
            assert_eq!(class_label(text, 1000), Some(class), "{text}");
        }
        for text in [
            "1.5",
            "-1",
            "-1.0",
            "0.99999999999",
            "1.0000000001",
            "1e-1",
            "1e99999999999999999999",
            "1e-99999999999999999999",
            "1000",
            "1e3",
            "99999999999",
            "inf",
            "NaN",
            "infinity",
            "abc",
            "",
            ".",
            "1e",
            "1.0.0",
            "0x1",
        ] {
            assert_eq!(class_label(text, 1000), None, "{text}");
        }

        let ds = parse(
            "a,label\n1,0.0\n2,2e0\n3,\"1.000\"\n",
            TaskKind::Classification,
        )
        .unwrap();
        assert_eq!(ds.targets(), &Targets::Classes(vec![0, 2, 1]));
        assert_eq!(ds.task(), Task::Classification { classes: 3 });
        let err = parse("a,label\n1,0\n2,\" 1.5 \"\n", TaskKind::Classification).unwrap_err();
        assert_eq!(
            err,
            DatasetError::BadLabel {
                row: 2,
                line: 3,
                column: 2,
                name: "label".into(),
                value: "1.5".into(),
                max_classes: 1000
            }
        );
        assert!(
            err.to_string().starts_with(
                "row 2 (line 3), column 2 (label): label \"1.5\" is not a class number"
            ),
            "{err}"
        );
    }

    #[test]
    fn quoting_and_layout_errors_name_row_line_and_column() {
        // A quote left open in the middle swallows the rows after it.
        let err = parse("a,y\n1,0\n2,\"1\n3,0\n", TaskKind::Classification).unwrap_err();
        assert_eq!(
            err,
            DatasetError::SpansLines {
                row: 2,
                line: 3,
                column: 2,
                name: "y".into()
            }
        );
        assert!(
            err.to_string()
                .starts_with("row 2 (line 3), column 2 (y): "),
            "{err}"
        );
        // At the very end, with or without a line break, it is refused too,
        // although the cell would read as "1" once trimmed.
        for text in ["a,y\n1,0\n2,\"1", "a,y\n1,0\n2,\"1\n", "a,y\n1,0\n\"2,1\n"] {
            let err = parse(text, TaskKind::Classification).unwrap_err();
            assert!(
                matches!(
                    err,
                    DatasetError::SpansLines {
                        row: 2,
                        line: 3,
                        ..
                    }
                ),
                "{text:?}: {err}"
            );
        }
        // A closed quote around a line break is no number either.
        let err = parse("a,y\n\"1\n\",0\n", TaskKind::Regression).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::SpansLines {
                    row: 1,
                    line: 2,
                    column: 1,
                    ..
                }
            ),
            "{err}"
        );
        // In the header.
        let err = parse("a,\"y\n1,0\n", TaskKind::Regression).unwrap_err();
        assert_eq!(
            err,
            DatasetError::SpansLines {
                row: 0,
                line: 1,
                column: 2,
                name: String::new()
            }
        );
        assert!(
            err.to_string().starts_with("the header (line 1), column 2"),
            "{err}"
        );
        // A quote opens a quoted cell only as its first byte (RFC 4180, and
        // the csv crate): after a space it is a character of the cell.
        let err = parse("a,y\n1, \"0\"\n", TaskKind::Regression).unwrap_err();
        assert!(
            matches!(err, DatasetError::NotNumber { row: 1, column: 2, ref value, .. } if value == "\"0\""),
            "{err}"
        );
        // Lines ended by CR alone (classic Mac OS) are one line.
        let err = parse("a,y\r1,0\r2,1\r", TaskKind::Regression).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::SpansLines {
                    row: 0,
                    line: 1,
                    column: 2,
                    ..
                }
            ),
            "{err}"
        );
        // Text after a closing quote stays in the cell.
        let err = parse("a,y\n\"1\"x,0\n", TaskKind::Regression).unwrap_err();
        assert!(
            matches!(err, DatasetError::NotNumber { row: 1, column: 1, ref value, .. } if value == "1x"),
            "{err}"
        );

        // Empty cells, quoted or not.
        for text in ["a,b,y\n1,,0\n", "a,b,y\n1,\"\" ,0\n", "a,b,y\n1,\"  \",0\n"] {
            let err = parse(text, TaskKind::Regression).unwrap_err();
            assert_eq!(
                err,
                DatasetError::EmptyCell {
                    row: 1,
                    line: 2,
                    column: 2,
                    name: "b".into()
                },
                "{text:?}"
            );
            assert_eq!(
                err.to_string(),
                "row 1 (line 2), column 2 (b) is empty, expected a number"
            );
        }
        let err = parse("a,y\n1,\n", TaskKind::Classification).unwrap_err();
        assert!(
            matches!(err, DatasetError::EmptyCell { column: 2, .. }),
            "{err}"
        );

        // Ragged rows, short and long, and a quoted comma that makes one.
        for (text, got) in [
            ("a,b,y\n1,2,0\n1,2\n", 2),
            ("a,b,y\n1,2,0\n1,2,0,4\n", 4),
            ("a,b,y\n1,2,0\n1,\"2,0\"\n", 2),
        ] {
            let err = parse(text, TaskKind::Classification).unwrap_err();
            assert_eq!(
                err,
                DatasetError::Ragged {
                    row: 2,
                    line: 3,
                    got,
                    expected: 3
                },
                "{text:?}"
            );
        }

        // Lines count blank lines, CRLF blank lines and lines before the
        // header, after a BOM; rows do not.
        let err = parse(
            "\u{feff}\n\na,y\r\n\r\n1,0\r\n\n  \n2,x\r\n",
            TaskKind::Classification,
        )
        .unwrap_err();
        assert_eq!(
            err,
            DatasetError::BadLabel {
                row: 2,
                line: 8,
                column: 2,
                name: "y".into(),
                value: "x".into(),
                max_classes: 1000
            }
        );

        // Not UTF-8, and beyond f32.
        let err = parse_csv_reader(
            &b"a,y\n1,\xff0\n"[..],
            TaskKind::Regression,
            &DatasetLimits::default(),
        )
        .unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::NotNumber {
                    row: 1,
                    column: 2,
                    ..
                }
            ),
            "{err}"
        );
        let err = parse("a,y\n1e39,0\n", TaskKind::Regression).unwrap_err();
        assert!(
            matches!(err, DatasetError::NotFinite { row: 1, column: 1, ref value, .. } if value == "1e39"),
            "{err}"
        );
        assert!(err.to_string().contains("beyond ±3.4e38"), "{err}");
    }

    /// Endless text: `head` once, then `body` over and over.
    struct Endless {
        head: &'static [u8],
        body: &'static [u8],
        at: usize,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let mut n = 0;
            for slot in buf.iter_mut() {
                *slot = match self.head.get(self.at) {
                    Some(byte) => *byte,
                    None => self.body[(self.at - self.head.len()) % self.body.len()],
                };
                self.at += 1;
                n += 1;
            }
            Ok(n)
        }
    }

    #[test]
    fn limits_hold_on_an_endless_stream() {
        let limits = DatasetLimits {
            max_rows: 1000,
            max_row_bytes: 64,
            ..DatasetLimits::default()
        };
        let rows = Endless {
            head: b"a,y\n",
            body: b"1,0\n2,1\n",
            at: 0,
        };
        let err = parse_csv_reader(rows, TaskKind::Classification, &limits).unwrap_err();
        assert_eq!(
            err,
            DatasetError::TooManyRows {
                row: 1001,
                max: 1000
            }
        );

        let row = Endless {
            head: b"a,y\n\n1,0\n",
            body: b"1234567890",
            at: 0,
        };
        let err = parse_csv_reader(row, TaskKind::Classification, &limits).unwrap_err();
        assert_eq!(
            err,
            DatasetError::RowTooLong {
                row: 2,
                line: 4,
                max: 64
            }
        );
        assert_eq!(
            err.to_string(),
            "row 2 (line 4) runs past 64 bytes, expected at most 64 bytes in one row"
        );

        let header = Endless {
            head: b"",
            body: b"a,",
            at: 0,
        };
        let err = parse_csv_reader(header, TaskKind::Regression, &limits).unwrap_err();
        assert_eq!(
            err,
            DatasetError::RowTooLong {
                row: 0,
                line: 1,
                max: 64
            }
        );
        assert!(err.to_string().starts_with("the header (line 1)"), "{err}");

        // An open quote would otherwise read to the end of the file.
        let quote = Endless {
            head: b"a,y\n\"",
            body: b"1,0\n",
            at: 0,
        };
        let err = parse_csv_reader(quote, TaskKind::Regression, &limits).unwrap_err();
        assert!(
            matches!(
                err,
                DatasetError::RowTooLong {
                    row: 1,
                    line: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn the_row_cap_is_exact_and_ignores_blank_lines() {
        let limits = DatasetLimits {
            max_row_bytes: 8,
            ..DatasetLimits::default()
        };
        // "12345,0\n" is 8 bytes; a missing last line break counts as one.
        for text in [
            "a,y\n12345,0\n1,1\n",
            "a,y\n1,1\n12345,0",
            "a,y\n\n\n\n\n\n\n\n\n\n1,1\n12345,0\n",
            "\u{feff}abc,efg\n1,1\n12345,0\n",
        ] {
            assert!(
                parse_csv(text, TaskKind::Classification, &limits).is_ok(),
                "{text:?}"
            );
        }
        for (text, row, line) in [
            ("a,y\n123456,0\n1,1\n", 1, 2),
            ("a,y\n1,1\n\n123456,0", 2, 4),
            ("a,y\n1,1\r\n12345,0\r\n", 2, 3),
            ("abc,efgh\n1,1\n", 0, 1),
        ] {
            assert_eq!(
                parse_csv(text, TaskKind::Classification, &limits).unwrap_err(),
                DatasetError::RowTooLong { row, line, max: 8 },
                "{text:?}"
            );
        }
    }

    #[test]
    fn the_blob_cap_is_checked_row_by_row() {
        // Two rows of one feature and a target: 21 + 2 * 8 bytes.
        let limits = DatasetLimits {
            max_blob_bytes: 37,
            ..DatasetLimits::default()
        };
        let two = parse_csv("a,y\n1,0\n2,1\n", TaskKind::Classification, &limits).unwrap();
        assert_eq!(two.to_blob().len(), 37);
        assert_eq!(Dataset::from_blob(&two.to_blob(), &limits).unwrap(), two);
        let err = parse_csv("a,y\n1,0\n2,1\n3,1\n", TaskKind::Classification, &limits).unwrap_err();
        assert_eq!(
            err,
            DatasetError::BlobTooLarge {
                row: 3,
                got: 45,
                max: 37
            }
        );
        let smaller = DatasetLimits {
            max_blob_bytes: 36,
            ..limits
        };
        assert!(matches!(
            Dataset::from_blob(&two.to_blob(), &smaller),
            Err(DatasetError::BadBlob { what: "length", .. })
        ));
        // The endless stream stops at the cap too.
        let rows = Endless {
            head: b"a,y\n",
            body: b"1,0\n2,1\n",
            at: 0,
        };
        let err = parse_csv_reader(rows, TaskKind::Classification, &limits).unwrap_err();
        assert!(
            matches!(err, DatasetError::BlobTooLarge { row: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn room_is_never_reserved_past_the_cap() {
        let (width, max_rows) = (3, 1000);
        let mut values: Vec<f32> = Vec::new();
        let mut growths = 0;
        for _ in 0..max_rows {
            let before = values.capacity();
            reserve_within(&mut values, width, max_rows * width);
            values.extend([0.0; 3]);
            assert!(
                values.capacity() <= max_rows * width,
                "{}",
                values.capacity()
            );
            if values.capacity() != before {
                growths += 1;
            }
        }
        assert_eq!(values.len(), max_rows * width);
        // Still amortised: room doubles rather than growing row by row.
        assert!(growths <= 12, "{growths} reallocations");
    }

    /// Gives `text`, then fails.
    struct FailingAfter(&'static [u8]);

    impl Read for FailingAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Err(io::Error::other("disk on fire"));
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn read_failures_are_typed() {
        let err = parse_csv_reader(
            FailingAfter(b"a,y\n1,0\n2,"),
            TaskKind::Classification,
            &DatasetLimits::default(),
        )
        .unwrap_err();
        assert_eq!(
            err,
            DatasetError::Read {
                row: 2,
                message: "disk on fire".into()
            }
        );

        let limits = DatasetLimits::default();
        let missing = shipped_path("no-such-file.csv");
        let err = Dataset::from_csv_file(&missing, TaskKind::Regression, &limits).unwrap_err();
        assert!(
            matches!(err, DatasetError::Io { ref path, .. } if path.ends_with("no-such-file.csv")),
            "{err}"
        );
        // A directory opens but does not read.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
        let err = Dataset::from_csv_file(dir, TaskKind::Regression, &limits).unwrap_err();
        assert!(
            matches!(err, DatasetError::Io { ref message, .. } if message.contains("reading the header")),
            "{err}"
        );
    }

    /// `ds` as plain CSV: generic names, numbers in Rust's shortest
    /// round-trip form, LF.
    fn render_plain(ds: &Dataset) -> String {
        let features = ds.features() as usize;
        let mut out = String::new();
        for column in 0..features {
            write!(out, "f{column},").unwrap();
        }
        out.push_str("y\n");
        for (row, cells) in ds.x().chunks(features).enumerate() {
            for v in cells {
                write!(out, "{v},").unwrap();
            }
            match ds.targets() {
                Targets::Classes(labels) => writeln!(out, "{}", labels[row]).unwrap(),
                Targets::Values(values) => writeln!(out, "{}", values[row]).unwrap(),
            }
        }
        out
    }

    /// Whatever the parser accepts reads back to the same blob from its
    /// plain rendering.
    fn assert_round_trips(ds: &Dataset, kind: TaskKind) -> Result<(), TestCaseError> {
        let again = parse(&render_plain(ds), kind);
        prop_assert_eq!(again.map(|d| d.to_blob()), Ok(ds.to_blob()));
        Ok(())
    }

    /// Bytes that matter to a CSV parser, and some that do not.
    fn csv_byte() -> impl Strategy<Value = u8> {
        prop_oneof![
            3 => proptest::sample::select(b"0123456789.,-+eE\"\n\r \t".to_vec()),
            1 => any::<u8>(),
        ]
    }

    /// CSV-ish text: lines of two or three cells, mostly numbers in some
    /// notation, some broken, with any line breaks; or stray bytes.
    fn csv_soup() -> impl Strategy<Value = Vec<u8>> {
        let cell = prop_oneof![
            12 => proptest::sample::select(vec![
                "0", "1", "2", "1.0", "2e0", "-3.5", "+.5", "7.", "\"1\"", "\" 2.0 \"", " 1 ",
            ]),
            1 => proptest::sample::select(vec![
                "", "\"", "x", "nan", "1e39", "\"a\"\"b\"", "\u{feff}", "\"1\n2\"", "1\"",
            ]),
        ];
        let line = proptest::collection::vec(cell, 2..4).prop_map(|cells| cells.join(","));
        let lines = proptest::collection::vec(
            (
                line,
                proptest::sample::select(vec!["\n", "\r\n", "\r", "\n\n", ""]),
            ),
            0..8,
        );
        prop_oneof![
            3 => lines.prop_map(|lines| {
                let text: String = lines.into_iter().map(|(line, end)| line + end).collect();
                text.into_bytes()
            }),
            1 => proptest::collection::vec(csv_byte(), 0..300),
        ]
    }

    fn finite_f32() -> impl Strategy<Value = f32> {
        prop_oneof![
            any::<f32>().prop_filter("finite", |v| v.is_finite()),
            (-800i32..800).prop_map(|v| v as f32 / 8.0),
        ]
    }

    /// A small dataset: features per row, and a label per row (the first at
    /// least 1, so that there are two classes).
    fn small_dataset() -> impl Strategy<Value = (Vec<Vec<f32>>, Vec<u32>)> {
        (1usize..4, 1usize..6).prop_flat_map(|(features, rows)| {
            (
                proptest::collection::vec(proptest::collection::vec(finite_f32(), features), rows),
                proptest::collection::vec(0u32..5, rows).prop_map(|mut labels| {
                    labels[0] = labels[0].max(1);
                    labels
                }),
            )
        })
    }

    /// Writes one cell in the style `style` picks: quoted or not, padded or
    /// not (a quote opens a quoted cell only as its first byte).
    fn styled_cell(out: &mut String, text: &str, style: u8) {
        let pad = [" ", "", "\t", "  "][usize::from(style >> 1) % 4];
        if style & 1 == 1 {
            write!(out, "\"{pad}{text}{pad}\"{pad}").unwrap();
        } else {
            write!(out, "{pad}{text}{pad}").unwrap();
        }
    }

    /// The dataset as a spreadsheet might write it, and plainly.
    fn write_both(
        rows: &[Vec<f32>],
        labels: &[u32],
        kind: TaskKind,
        styles: &[u8],
        bom: bool,
        crlf: bool,
        final_break: bool,
    ) -> (String, String) {
        let features = rows[0].len();
        let eol = if crlf { "\r\n" } else { "\n" };
        let mut styled = String::from(if bom { "\u{feff}" } else { "" });
        let mut plain = String::new();
        let mut style = styles.iter().copied().cycle();
        for column in 0..features {
            styled_cell(&mut styled, &format!("f{column}"), style.next().unwrap());
            styled.push(',');
            write!(plain, "f{column},").unwrap();
        }
        styled.push('y');
        styled.push_str(eol);
        plain.push_str("y\n");
        for (index, (cells, label)) in rows.iter().zip(labels).enumerate() {
            for v in cells {
                let s = style.next().unwrap();
                let text = if s & 8 == 8 {
                    format!("{v:e}")
                } else {
                    format!("{v}")
                };
                styled_cell(&mut styled, &text, s);
                styled.push(',');
                write!(plain, "{v},").unwrap();
            }
            let s = style.next().unwrap();
            let text = match kind {
                TaskKind::Classification => match (s >> 4) % 5 {
                    0 => format!("{label}"),
                    1 => format!("{label}.0"),
                    2 => format!("{label}e0"),
                    3 => format!("{label}.000"),
                    _ => format!("+{label}"),
                },
                TaskKind::Regression => format!("{}", *label as f32 / 4.0),
            };
            styled_cell(&mut styled, &text, s);
            writeln!(plain, "{text}").unwrap();
            if index + 1 < rows.len() || final_break {
                styled.push_str(eol);
            }
            if s & 0x80 == 0x80 && index + 1 < rows.len() {
                styled.push_str(eol);
            }
        }
        (styled, plain)
    }

    fn kind_of(classification: bool) -> TaskKind {
        if classification {
            TaskKind::Classification
        } else {
            TaskKind::Regression
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_and_what_parses_round_trips(
            bytes in csv_soup(),
            classification: bool,
        ) {
            let kind = kind_of(classification);
            if let Ok(ds) = parse_csv_reader(&bytes[..], kind, &DatasetLimits::default()) {
                assert_round_trips(&ds, kind)?;
            }
        }

        #[test]
        fn formatting_never_changes_the_blob(
            (rows, labels) in small_dataset(),
            classification: bool,
            styles in proptest::collection::vec(any::<u8>(), 1..40),
            bom: bool,
            crlf: bool,
            final_break: bool,
        ) {
            let kind = kind_of(classification);
            let (styled, plain) = write_both(&rows, &labels, kind, &styles, bom, crlf, final_break);
            let expected = parse(&plain, kind).unwrap();
            prop_assert_eq!(expected.rows() as usize, rows.len());
            let got = parse(&styled, kind);
            prop_assert_eq!(got.map(|d| d.to_blob()), Ok(expected.to_blob()), "{:?}", styled);
        }

        #[test]
        fn mutated_csv_never_panics_and_what_parses_round_trips(
            (rows, labels) in small_dataset(),
            classification: bool,
            styles in proptest::collection::vec(any::<u8>(), 1..40),
            crlf: bool,
            edits in proptest::collection::vec((any::<proptest::sample::Index>(), 0u8..3, csv_byte()), 1..6),
        ) {
            let kind = kind_of(classification);
            let (styled, _) = write_both(&rows, &labels, kind, &styles, false, crlf, true);
            let mut bytes = styled.into_bytes();
            for (at, edit, byte) in edits {
                let index = at.index(bytes.len() + 1);
                match edit {
                    0 if index < bytes.len() => bytes[index] = byte,
                    1 => bytes.insert(index, byte),
                    _ if index < bytes.len() => {
                        bytes.remove(index);
                    }
                    _ => {}
                }
            }
            if let Ok(ds) = parse_csv_reader(&bytes[..], kind, &DatasetLimits::default()) {
                assert_round_trips(&ds, kind)?;
            }
        }
    }
}
