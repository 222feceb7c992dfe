//! Property tests of the trainer's decoders of untrusted bytes: the CSV
//! reader (a dataset a user uploads over HTTP), the canonical dataset blob
//! (fetched from peers), the safetensors weights reader (uploaded by a
//! worker, served for predictions) and the training state (served by
//! workers and challengers for a replay).
//!
//! Beyond never panicking: generated values come back exactly; a CSV is
//! accepted only when every row has the header's column count, and its
//! digest does not depend on how the file was written (quotes, CRLF, a BOM,
//! spacing, blank lines); a blob or state decodes only from its canonical
//! bytes, and none of its strict prefixes decodes; lengths announced far
//! beyond the input are refused without being allocated, which a counting
//! allocator in this test binary measures.
#![allow(unsafe_code)]
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Read;

use proptest::prelude::*;
use proptest::sample::Index;
use protocol::job::worker_seed;
use protocol::{Address, JobId, Task};
use trainer::model::{Mlp, TrainedModel};
use trainer::prep::Scaling;
use trainer::weights::{model_from_safetensors, safetensors_bytes, tensor_digest_of_file};
use trainer::{
    parse_csv, parse_csv_reader, predict, Dataset, DatasetError, DatasetLimits, Session, Targets,
    TaskKind, TrainSettings,
};

// ---------------------------------------------------------------------------
// The largest single allocation a thread makes, measured around a decode.

/// The system allocator, noting per thread the largest block asked for.
struct Measuring;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // `try_with`: the slot is gone while a thread is being torn down.
    let _ = LARGEST.try_with(|largest| {
        if size > largest.get() {
            largest.set(size);
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; the only addition
// is a thread-local counter that never allocates.
unsafe impl GlobalAlloc for Measuring {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Measuring = Measuring;

/// Runs `f`, returning its value and the largest single allocation it made
/// on this thread.
fn largest_allocation<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|largest| largest.set(0));
    let value = f();
    (value, LARGEST.with(Cell::get))
}

// ---------------------------------------------------------------------------
// Byte mutations, shared by the binary formats.

/// One change to an encoding.
#[derive(Clone, Debug)]
enum Mutation {
    /// Overwrite one byte.
    Set(Index, u8),
    /// Flip one bit.
    Flip(Index, u8),
    /// Insert bytes.
    Insert(Index, Vec<u8>),
    /// Remove up to this many bytes.
    Remove(Index, usize),
    /// Overwrite up to four bytes with a little-endian value likely to be a
    /// count, a tag or a float's interesting bits.
    Word(Index, u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let word = prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(u32::MAX),
        Just(0x7fc0_0000), // NaN
        Just(0x7f80_0000), // infinity
        Just(0x8000_0000), // -0.0
        0u32..300,
        any::<u32>(),
    ];
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Mutation::Set(at, byte)),
        (any::<Index>(), 0u8..8).prop_map(|(at, bit)| Mutation::Flip(at, bit)),
        (any::<Index>(), prop::collection::vec(any::<u8>(), 1..9))
            .prop_map(|(at, bytes)| Mutation::Insert(at, bytes)),
        (any::<Index>(), 1usize..9).prop_map(|(at, n)| Mutation::Remove(at, n)),
        (any::<Index>(), word).prop_map(|(at, word)| Mutation::Word(at, word)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    prop::collection::vec(mutation(), 1..4)
}

fn mutate(bytes: &mut Vec<u8>, mutations: &[Mutation]) {
    for mutation in mutations {
        let len = bytes.len();
        match mutation {
            Mutation::Insert(at, new) => {
                let at = at.index(len + 1);
                bytes.splice(at..at, new.iter().copied());
            }
            _ if len == 0 => {}
            Mutation::Set(at, byte) => bytes[at.index(len)] = *byte,
            Mutation::Flip(at, bit) => bytes[at.index(len)] ^= 1 << bit,
            Mutation::Remove(at, n) => {
                let at = at.index(len);
                bytes.drain(at..(at + n).min(len));
            }
            Mutation::Word(at, word) => {
                let at = at.index(len);
                for (dst, src) in bytes[at..].iter_mut().zip(word.to_le_bytes()) {
                    *dst = src;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Generated datasets.

/// Finite floats, with the awkward ones (zero's sign, subnormals, extremes)
/// well represented.
fn finite_f32() -> impl Strategy<Value = f32> {
    prop_oneof![
        (-1000i32..1000).prop_map(|v| v as f32 / 10.0),
        any::<f32>().prop_filter("finite", |v| v.is_finite()),
        Just(-0.0f32),
        Just(f32::MIN_POSITIVE / 4.0),
        Just(f32::MAX),
        Just(f32::MIN),
        Just(f32::EPSILON),
    ]
}

/// A dataset as a table of numbers.
#[derive(Clone, Debug)]
struct Table {
    features: usize,
    x: Vec<f32>,
    targets: Targets,
}

impl Table {
    fn rows(&self) -> usize {
        match &self.targets {
            Targets::Classes(labels) => labels.len(),
            Targets::Values(values) => values.len(),
        }
    }

    fn kind(&self) -> TaskKind {
        match self.targets {
            Targets::Classes(_) => TaskKind::Classification,
            Targets::Values(_) => TaskKind::Regression,
        }
    }

    /// The dataset the table is, with the class count a CSV reader finds:
    /// the largest label plus one.
    fn dataset(&self) -> Dataset {
        let task = match &self.targets {
            Targets::Classes(labels) => Task::Classification {
                classes: labels.iter().max().unwrap() + 1,
            },
            Targets::Values(_) => Task::Regression,
        };
        Dataset::new(
            task,
            self.features as u32,
            self.x.clone(),
            self.targets.clone(),
        )
        .unwrap()
    }
}

fn arb_table() -> impl Strategy<Value = Table> {
    (1usize..6, 1usize..10, any::<bool>()).prop_flat_map(|(features, rows, classify)| {
        let x = prop::collection::vec(finite_f32(), features * rows);
        let targets = if classify {
            prop::collection::vec(0u32..6, rows)
                .prop_map(|mut labels| {
                    // At least two classes, as a classification dataset needs.
                    if labels.iter().all(|l| *l == 0) {
                        *labels.last_mut().unwrap() = 1;
                    }
                    Targets::Classes(labels)
                })
                .boxed()
        } else {
            prop::collection::vec(finite_f32(), rows)
                .prop_map(Targets::Values)
                .boxed()
        };
        (x, targets).prop_map(move |(x, targets)| Table {
            features,
            x,
            targets,
        })
    })
}

// ---------------------------------------------------------------------------
// Writing a table as CSV, the way different programs do.

/// How a CSV file is written. None of it may change the dataset.
#[derive(Clone, Debug)]
struct Style {
    /// Every numeric cell in double quotes, as spreadsheets export.
    quote_numbers: bool,
    /// The header's names in double quotes.
    quote_header: bool,
    /// Lines end in CRLF.
    crlf: bool,
    /// A UTF-8 byte order mark first.
    bom: bool,
    /// Spaces around each value (inside the quotes when quoted).
    pad: usize,
    /// Blank lines after these data rows (by index; modulo the row count).
    blank_after: Vec<usize>,
    /// The last line ends in a line break.
    final_break: bool,
    /// How each number is spelled: 0 `Display`, 1 `LowerExp`, 2 `Debug`;
    /// labels as `2`, `2.0`, `2e0` or `+20e-1`.
    spelling: u8,
}

fn arb_style() -> impl Strategy<Value = Style> {
    (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0usize..3,
        prop::collection::vec(0usize..12, 0..3),
        any::<bool>(),
        0u8..4,
    )
        .prop_map(
            |(quote_numbers, quote_header, crlf, bom, pad, blank_after, final_break, spelling)| {
                Style {
                    quote_numbers,
                    quote_header,
                    crlf,
                    bom,
                    pad,
                    blank_after,
                    final_break,
                    spelling,
                }
            },
        )
}

/// The plainest spelling: Rust's `Display`, LF, no quotes, no spaces.
fn plain() -> Style {
    Style {
        quote_numbers: false,
        quote_header: false,
        crlf: false,
        bom: false,
        pad: 0,
        blank_after: Vec::new(),
        final_break: true,
        spelling: 0,
    }
}

fn spell_number(value: f32, spelling: u8) -> String {
    match spelling % 3 {
        0 => format!("{value}"),
        1 => format!("{value:e}"),
        _ => format!("{value:?}"),
    }
}

fn spell_label(label: u32, spelling: u8) -> String {
    match spelling {
        0 => format!("{label}"),
        1 => format!("{label}.0"),
        2 => format!("{label}e0"),
        _ => format!("+{label}0e-1"),
    }
}

fn cell(text: &str, quoted: bool, pad: usize) -> String {
    let spaces = " ".repeat(pad);
    if quoted {
        format!("\"{spaces}{text}{spaces}\"")
    } else {
        format!("{spaces}{text}{spaces}")
    }
}

/// The rows of the table as lists of cell texts, header first.
fn cells(table: &Table, style: &Style) -> Vec<Vec<String>> {
    let mut header: Vec<String> = (0..table.features)
        .map(|i| cell(&format!("f{i}"), style.quote_header, 0))
        .collect();
    header.push(cell("target", style.quote_header, 0));
    let mut lines = vec![header];
    for row in 0..table.rows() {
        let mut line: Vec<String> = table.x[row * table.features..(row + 1) * table.features]
            .iter()
            .map(|v| {
                cell(
                    &spell_number(*v, style.spelling),
                    style.quote_numbers,
                    style.pad,
                )
            })
            .collect();
        let target = match &table.targets {
            Targets::Classes(labels) => spell_label(labels[row], style.spelling),
            Targets::Values(values) => spell_number(values[row], style.spelling),
        };
        line.push(cell(&target, style.quote_numbers, style.pad));
        lines.push(line);
    }
    lines
}

/// Joins rows of cells into a file in `style`.
fn join(lines: &[Vec<String>], style: &Style) -> String {
    let end = if style.crlf { "\r\n" } else { "\n" };
    let mut text = String::new();
    if style.bom {
        text.push('\u{feff}');
    }
    let data_rows = lines.len() - 1;
    for (i, line) in lines.iter().enumerate() {
        text.push_str(&line.join(","));
        if i + 1 < lines.len() || style.final_break {
            text.push_str(end);
        }
        let blank = i >= 1
            && i + 1 < lines.len()
            && style.blank_after.iter().any(|b| b % data_rows == i - 1);
        if blank {
            text.push_str(if i % 2 == 0 { "  " } else { "" });
            text.push_str(end);
        }
    }
    text
}

fn csv_text(table: &Table, style: &Style) -> String {
    join(&cells(table, style), style)
}

fn parse(text: &str, kind: TaskKind) -> Result<Dataset, DatasetError> {
    parse_csv(text, kind, &DatasetLimits::default())
}

// ---------------------------------------------------------------------------
// An independent reading of a CSV text, to judge what the parser accepted.

/// The cells of each non-blank row, read with the `csv` crate configured as
/// the format says: no header handling, any cell count, LF ends a line.
fn oracle_rows(text: &str) -> Vec<Vec<Vec<u8>>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .terminator(csv::Terminator::Any(b'\n'))
        .from_reader(text.as_bytes());
    let mut rows = Vec::new();
    for record in reader.byte_records() {
        let Ok(record) = record else { break };
        let cells: Vec<Vec<u8>> = record.iter().map(<[u8]>::to_vec).collect();
        let blank = match cells.as_slice() {
            [] => true,
            [only] => std::str::from_utf8(only).is_ok_and(|t| t.trim().is_empty()),
            _ => false,
        };
        if !blank {
            rows.push(cells);
        }
    }
    rows
}

/// What a parser that accepted `text` must have read: every row as wide as
/// the header, and each cell's trimmed text as the value.
fn agrees_with_oracle(text: &str, dataset: &Dataset) -> Result<(), TestCaseError> {
    let rows = oracle_rows(text);
    prop_assert!(!rows.is_empty());
    let width = rows[0].len();
    prop_assert_eq!(width, dataset.features() as usize + 1);
    prop_assert_eq!(rows.len() - 1, dataset.rows() as usize);
    let features = dataset.features() as usize;
    for (r, row) in rows[1..].iter().enumerate() {
        prop_assert_eq!(row.len(), width, "row {} has another cell count", r + 1);
        for (c, cell) in row[..features].iter().enumerate() {
            let value: f32 = std::str::from_utf8(cell).unwrap().trim().parse().unwrap();
            prop_assert_eq!(
                value.to_bits(),
                dataset.x()[r * features + c].to_bits(),
                "row {} column {}",
                r + 1,
                c + 1
            );
        }
        let target = std::str::from_utf8(&row[features]).unwrap().trim();
        match dataset.targets() {
            Targets::Classes(labels) => {
                let value: f64 = target.parse().unwrap();
                prop_assert_eq!(value, f64::from(labels[r]));
            }
            Targets::Values(values) => {
                let value: f32 = target.parse().unwrap();
                prop_assert_eq!(value.to_bits(), values[r].to_bits());
            }
        }
    }
    Ok(())
}

/// Invariants of any dataset, wherever it came from.
fn well_formed(dataset: &Dataset) -> Result<(), TestCaseError> {
    prop_assert!(dataset.rows() >= 1 && dataset.features() >= 1);
    prop_assert_eq!(
        dataset.x().len(),
        dataset.rows() as usize * dataset.features() as usize
    );
    prop_assert!(dataset.x().iter().all(|v| v.is_finite()));
    match (dataset.task(), dataset.targets()) {
        (Task::Classification { classes }, Targets::Classes(labels)) => {
            prop_assert!(classes >= 2);
            prop_assert!(labels.iter().all(|l| *l < classes));
        }
        (Task::Regression, Targets::Values(values)) => {
            prop_assert!(values.iter().all(|v| v.is_finite()));
        }
        (task, _) => prop_assert!(false, "targets of another kind than {:?}", task),
    }
    let blob = dataset.to_blob();
    prop_assert_eq!(
        &Dataset::from_blob(&blob, &DatasetLimits::default()).unwrap(),
        dataset
    );
    Ok(())
}

const IRIS: &str = include_str!("../../datasets/iris.csv");

/// CSV-ish text: mostly the characters a CSV file is made of.
fn csvish_text() -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        8 => prop::sample::select(vec![
            '0', '1', '2', '5', '9', '.', ',', ',', '-', '+', 'e', 'E', ' ', '"', '\n', '\n',
            '\r', '\t', 'n', 'a', 'i', 'f',
        ]),
        1 => any::<char>(),
    ];
    prop::collection::vec(ch, 0..200).prop_map(|chars| chars.into_iter().collect())
}

/// Table-shaped text whose rows are not all as wide as the header and
/// whose cells are not all numbers: most of it is refused, some is read.
fn tableish_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        12 => prop::sample::select(vec![
            "0", "1", "2", "1.0", "-0", "2.5", "-3e2", "+4", "1e-50", "\"4\"", " 5 ", "\" 6 \"",
        ]),
        1 => prop::sample::select(vec![
            "", " ", "x", "nan", "inf", "1e40", "0x10", "1,5", "\"1\n2\"", "\"7", "8\"",
            "\u{feff}9", "1_0", "\t3",
        ]),
    ];
    let row = (0usize..12, prop::collection::vec(token, 1..7));
    let end = prop::sample::select(vec!["\n", "\r\n", "\r", "\n\n", "\n  \n"]);
    (
        1usize..6,
        prop::collection::vec((row, end), 1..8),
        any::<bool>(),
    )
        .prop_map(|(width, rows, bom)| {
            let mut text = if bom {
                "\u{feff}".to_string()
            } else {
                String::new()
            };
            let header: Vec<String> = (0..width).map(|i| format!("c{i}")).collect();
            text.push_str(&header.join(","));
            text.push('\n');
            for ((skew, cells), end) in rows {
                // Mostly as wide as the header; sometimes one cell off.
                let want = match skew {
                    0 => width.saturating_sub(1),
                    1 => width + 1,
                    _ => width,
                };
                let mut cells: Vec<&str> = cells.into_iter().cycle().take(want).collect();
                if cells.len() < want {
                    cells.resize(want, "1");
                }
                text.push_str(&cells.join(","));
                text.push_str(end);
            }
            text
        })
}

/// A text change: characters a CSV file is made of, in or out.
#[derive(Clone, Debug)]
enum Edit {
    Insert(Index, char),
    Remove(Index),
    Replace(Index, char),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let ch = prop::sample::select(vec![
        '0', '1', '7', '.', ',', '-', 'e', ' ', '"', '\n', '\r', 'x', '\u{feff}', '\u{e9}',
    ]);
    let edit = prop_oneof![
        (any::<Index>(), ch.clone()).prop_map(|(at, c)| Edit::Insert(at, c)),
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), ch).prop_map(|(at, c)| Edit::Replace(at, c)),
    ];
    prop::collection::vec(edit, 1..5)
}

fn edit(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for edit in edits {
        let len = chars.len();
        match edit {
            Edit::Insert(at, c) => chars.insert(at.index(len + 1), *c),
            _ if len == 0 => {}
            Edit::Remove(at) => {
                chars.remove(at.index(len));
            }
            Edit::Replace(at, c) => chars[at.index(len)] = *c,
        }
    }
    chars.into_iter().collect()
}

/// Reads its bytes a few at a time, as a socket or a pipe may.
struct Trickle<'a> {
    bytes: &'a [u8],
    steps: Vec<usize>,
    calls: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let step = self.steps[self.calls % self.steps.len()];
        self.calls += 1;
        let n = step.min(buf.len()).min(self.bytes.len());
        buf[..n].copy_from_slice(&self.bytes[..n]);
        self.bytes = &self.bytes[n..];
        Ok(n)
    }
}

// ---------------------------------------------------------------------------
// CSV properties.

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// A table written as CSV, in any style, reads back as exactly its
    /// numbers, with the digest of the plain file; quoting every numeric
    /// cell (a spreadsheet export) in particular changes nothing.
    #[test]
    fn a_csv_reads_back_exactly_and_its_digest_ignores_formatting(
        table in arb_table(),
        style in arb_style(),
    ) {
        let expected = table.dataset();
        let plain_text = csv_text(&table, &plain());
        let read = parse(&plain_text, table.kind()).unwrap();
        prop_assert_eq!(&read, &expected);
        prop_assert_eq!(
            read.x().iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            table.x.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let styled = csv_text(&table, &style);
        let restyled = parse(&styled, table.kind());
        prop_assert_eq!(restyled.as_ref().map(Dataset::digest), Ok(expected.digest()), "{}", styled);
        let quoted = csv_text(&table, &Style { quote_numbers: true, ..plain() });
        prop_assert_eq!(parse(&quoted, table.kind()).unwrap().digest(), expected.digest());
        well_formed(&read)?;
    }

    /// A row with one cell too few or too many is refused, naming that row,
    /// however the file is written.
    #[test]
    fn a_row_of_the_wrong_width_is_refused(
        table in arb_table(),
        style in arb_style(),
        which in any::<Index>(),
        extra in any::<bool>(),
    ) {
        let mut lines = cells(&table, &style);
        let row = 1 + which.index(table.rows());
        if extra {
            lines[row].push(cell("0", style.quote_numbers, style.pad));
        } else {
            lines[row].pop();
        }
        let text = join(&lines, &style);
        let expected = table.features + 1;
        match parse(&text, table.kind()) {
            Err(DatasetError::Ragged { row: at, got, expected: width, .. }) => {
                prop_assert_eq!(at, row);
                prop_assert_eq!(width, expected);
                prop_assert_eq!(got, if extra { expected + 1 } else { expected - 1 });
            }
            other => prop_assert!(false, "{:?} for {}", other, text),
        }
        // The same with a header of the wrong width: the first row is ragged.
        let mut lines = cells(&table, &style);
        lines[0].push("extra".to_string());
        let text = join(&lines, &style);
        let refused = matches!(
            parse(&text, table.kind()),
            Err(DatasetError::Ragged { row: 1, .. })
        );
        prop_assert!(refused);
    }

    /// Whatever the reader accepts, an independent reading agrees with:
    /// every row as wide as the header, every value the cell's number.
    #[test]
    fn arbitrary_text_is_refused_or_read_as_written(
        text in prop_oneof![csvish_text(), tableish_text()],
        classify in any::<bool>(),
    ) {
        let kind = if classify { TaskKind::Classification } else { TaskKind::Regression };
        if let Ok(dataset) = parse(&text, kind) {
            well_formed(&dataset)?;
            agrees_with_oracle(&text, &dataset)?;
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// The shipped iris file, edited: refused with an error, or read as
    /// written (so never with a ragged row).
    #[test]
    fn edited_iris_is_refused_or_read_as_written(edits in edits(), classify in any::<bool>()) {
        let text = edit(IRIS, &edits);
        let kind = if classify { TaskKind::Classification } else { TaskKind::Regression };
        if let Ok(dataset) = parse(&text, kind) {
            well_formed(&dataset)?;
            agrees_with_oracle(&text, &dataset)?;
        }
    }

    /// Reading a stream a few bytes at a time gives what reading the whole
    /// text gives, dataset or error, under any row-length cap.
    #[test]
    fn a_trickled_stream_reads_like_the_whole_text(
        table in arb_table(),
        style in arb_style(),
        edits in prop::option::of(edits()),
        steps in prop::collection::vec(1usize..9, 1..4),
        max_row_bytes in prop_oneof![Just(1u32 << 20), 8u32..200],
        extra_boms in prop_oneof![3 => Just(0usize), 1 => 1usize..4],
    ) {
        let mut text = csv_text(&table, &style);
        if let Some(edits) = &edits {
            text = edit(&text, edits);
        }
        // A run of BOMs first, which a reader of small steps hands over
        // one at a time or cut across reads.
        text.insert_str(0, &"\u{feff}".repeat(extra_boms));
        let limits = DatasetLimits { max_row_bytes, ..DatasetLimits::default() };
        let whole = parse_csv(&text, table.kind(), &limits);
        let trickle = Trickle { bytes: text.as_bytes(), steps, calls: 0 };
        let streamed = parse_csv_reader(trickle, table.kind(), &limits);
        prop_assert_eq!(&streamed, &whole);
        if max_row_bytes as usize >= text.len() + 2 {
            let too_long = matches!(whole, Err(DatasetError::RowTooLong { .. }));
            prop_assert!(!too_long);
        }
    }

    /// The row, feature, class and blob-size caps hold while reading: the
    /// first row past a cap is the one refused, and a file within every cap
    /// reads as without them.
    #[test]
    fn the_caps_refuse_the_first_row_past_them(
        table in arb_table(),
        max_rows in 1u32..10,
        max_features in 1u32..6,
        max_classes in 2u32..7,
        blob_rows in 1u64..11,
    ) {
        let text = csv_text(&table, &plain());
        let features = table.features;
        let row_bytes = 4 * (features as u64 + 1);
        let limits = DatasetLimits {
            max_rows,
            max_features,
            max_classes,
            max_blob_bytes: 21 + blob_rows * row_bytes,
            ..DatasetLimits::default()
        };
        let got = parse_csv(&text, table.kind(), &limits);
        if features > max_features as usize {
            prop_assert_eq!(got, Err(DatasetError::TooManyFeatures { got: features, max: max_features }));
            return Ok(());
        }
        let label_over = |row: usize| match &table.targets {
            Targets::Classes(labels) => labels[row - 1] >= max_classes,
            Targets::Values(_) => false,
        };
        let first = (1..=table.rows())
            .find(|row| *row > max_rows as usize || *row as u64 > blob_rows || label_over(*row));
        match first {
            None => prop_assert_eq!(got, Ok(table.dataset())),
            Some(row) if row > max_rows as usize => {
                prop_assert_eq!(got, Err(DatasetError::TooManyRows { row, max: max_rows }));
            }
            Some(row) if row as u64 > blob_rows => {
                prop_assert_eq!(got, Err(DatasetError::BlobTooLarge {
                    row,
                    got: 21 + row as u64 * row_bytes,
                    max: limits.max_blob_bytes,
                }));
            }
            Some(row) => {
                let refused = matches!(got, Err(DatasetError::BadLabel { row: at, .. }) if at == row);
                prop_assert!(refused, "{:?}", got);
            }
        }
    }
}

/// A file that starts with a run of UTF-8 BOMs reads as the same file with
/// none, whether the reader hands it over whole or a few bytes at a time.
/// The `csv` crate strips a BOM only when one starts its first buffer
/// whole; the second of two BOMs arriving alone as that buffer was
/// stripped and the emptied buffer taken for the end of the input, so the
/// file read as empty. The run is dropped before the crate sees it, and a
/// BOM never shows up in a column's name.
#[test]
fn a_second_bom_read_alone_reads_like_the_whole_text() {
    let limits = DatasetLimits::default();
    let plain = parse_csv("a,y\n1,2\n", TaskKind::Regression, &limits);
    assert_eq!(plain.as_ref().map(Dataset::rows), Ok(1));
    let bad = "a,y\nx,2\n";
    let bad_plain = parse_csv(bad, TaskKind::Regression, &limits);
    assert_eq!(
        bad_plain,
        Err(DatasetError::NotNumber {
            row: 1,
            line: 2,
            column: 1,
            name: "a".to_string(),
            value: "x".to_string(),
        })
    );
    for boms in 1..5 {
        let run = "\u{feff}".repeat(boms);
        for (body, expected) in [("a,y\n1,2\n", &plain), (bad, &bad_plain)] {
            let text = format!("{run}{body}");
            let whole = parse_csv(&text, TaskKind::Regression, &limits);
            assert_eq!(&whole, expected, "{boms} BOMs, read whole");
            for step in 1..9 {
                let trickle = Trickle {
                    bytes: text.as_bytes(),
                    steps: vec![step],
                    calls: 0,
                };
                let streamed = parse_csv_reader(trickle, TaskKind::Regression, &limits);
                assert_eq!(&streamed, expected, "{boms} BOMs, {step} bytes a read");
            }
        }
    }
    // A BOM that is not at the start is text like any other.
    let inner = parse_csv("a,y\n\u{feff}1,2\n", TaskKind::Regression, &limits);
    assert!(
        matches!(&inner, Err(DatasetError::NotNumber { value, .. }) if value == "\u{feff}1"),
        "{inner:?}"
    );
}

// ---------------------------------------------------------------------------
// The dataset blob.

fn check_blob(bytes: &[u8], limits: &DatasetLimits) -> Result<Option<Dataset>, TestCaseError> {
    match Dataset::from_blob(bytes, limits) {
        Ok(dataset) => {
            prop_assert_eq!(
                &dataset.to_blob()[..],
                bytes,
                "a blob decodes from non-canonical bytes"
            );
            well_formed(&dataset)?;
            prop_assert!(dataset.rows() <= limits.max_rows);
            prop_assert!(dataset.features() <= limits.max_features);
            Ok(Some(dataset))
        }
        Err(DatasetError::BadBlob { .. }) => Ok(None),
        Err(other) => Err(TestCaseError::fail(format!(
            "a blob refused with {other:?}"
        ))),
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// A dataset's blob decodes to it, and none of its strict prefixes nor
    /// any extension decodes.
    #[test]
    fn blobs_round_trip_and_prefixes_and_extensions_fail(
        table in arb_table(),
        extra in prop::collection::vec(any::<u8>(), 1..9),
    ) {
        let dataset = table.dataset();
        let blob = dataset.to_blob();
        let limits = DatasetLimits::default();
        prop_assert_eq!(check_blob(&blob, &limits)?, Some(dataset));
        for cut in 0..blob.len() {
            prop_assert!(Dataset::from_blob(&blob[..cut], &limits).is_err(), "{} bytes", cut);
        }
        let mut longer = blob.clone();
        longer.extend_from_slice(&extra);
        prop_assert!(Dataset::from_blob(&longer, &limits).is_err());
    }

    /// A mutated blob is refused or is the canonical blob of the dataset it
    /// decodes to, under any caps.
    #[test]
    fn mutated_blobs_are_refused_or_canonical(
        table in arb_table(),
        mutations in mutations(),
        max_rows in prop_oneof![Just(1_000_000u32), 1u32..10],
        max_features in prop_oneof![Just(4096u32), 1u32..6],
        max_classes in prop_oneof![Just(1000u32), 2u32..7],
    ) {
        let mut blob = table.dataset().to_blob();
        mutate(&mut blob, &mutations);
        let limits = DatasetLimits { max_rows, max_features, max_classes, ..DatasetLimits::default() };
        if let Some(dataset) = check_blob(&blob, &limits)? {
            if let Task::Classification { classes } = dataset.task() {
                prop_assert!(classes <= max_classes);
            }
        }
    }

    /// Arbitrary bytes after the blob's magic are refused or canonical.
    #[test]
    fn arbitrary_blobs_are_refused_or_canonical(
        body in prop::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..120),
        magic in any::<bool>(),
    ) {
        let mut blob = if magic { b"GCDSET01".to_vec() } else { Vec::new() };
        blob.extend_from_slice(&body);
        check_blob(&blob, &DatasetLimits::default())?;
    }

    /// A header announcing rows and features far beyond the bytes given is
    /// refused before anything of that size is allocated.
    #[test]
    fn announced_rows_and_features_are_not_allocated(
        table in arb_table(),
        rows in prop_oneof![Just(u32::MAX), 1u32..2_000_000],
        features in prop_oneof![Just(u32::MAX), 1u32..5000],
    ) {
        let mut blob = table.dataset().to_blob();
        // magic (8) | task tag (1) | classes (4) | rows (4) | features (4)
        blob[13..17].copy_from_slice(&rows.to_le_bytes());
        blob[17..21].copy_from_slice(&features.to_le_bytes());
        let (result, largest) =
            largest_allocation(|| Dataset::from_blob(&blob, &DatasetLimits::default()));
        let announced_len = 21 + 4 * u128::from(rows) * (u128::from(features) + 1);
        if announced_len != blob.len() as u128 {
            let refused = matches!(result, Err(DatasetError::BadBlob { .. }));
            prop_assert!(refused);
        }
        prop_assert!(largest <= blob.len() + 4096, "{} bytes for a blob of {}", largest, blob.len());
    }
}

// ---------------------------------------------------------------------------
// Safetensors weights files.

/// A small trained-looking model: `widths` layers from the seed, scaling
/// from the table's numbers.
fn model(widths: &[usize], seed: u64, regression: bool, scale: &[f32]) -> TrainedModel {
    let mlp = Mlp::init(widths, seed).unwrap();
    let features = widths[0];
    let pick = |i: usize| scale.get(i % scale.len().max(1)).copied().unwrap_or(0.5);
    TrainedModel {
        task: if regression {
            Task::Regression
        } else {
            Task::Classification {
                classes: *widths.last().unwrap() as u32,
            }
        },
        mlp,
        scaling: Scaling {
            feature_mean: (0..features).map(pick).collect(),
            feature_std: (0..features).map(|i| pick(i + 1).abs() + 1.0).collect(),
            target: regression.then(|| (pick(0), pick(1).abs() + 1.0)),
        },
    }
}

fn arb_model() -> impl Strategy<Value = TrainedModel> {
    (
        1usize..5,
        prop::collection::vec(1usize..6, 0..3),
        any::<u64>(),
        any::<bool>(),
        prop::collection::vec(finite_f32(), 1..4),
    )
        .prop_map(|(inputs, hidden, seed, regression, scale)| {
            let mut widths = vec![inputs];
            widths.extend(hidden);
            widths.push(if regression { 1 } else { 3 });
            model(&widths, seed, regression, &scale)
        })
}

/// A weights file that loads: the tensor digest it holds survives being
/// written again, and the model answers (or refuses) a prediction without
/// panicking.
fn check_loaded(bytes: &[u8]) -> Result<(), TestCaseError> {
    let Ok(model) = model_from_safetensors(bytes) else {
        prop_assert!(tensor_digest_of_file(bytes).is_err());
        return Ok(());
    };
    let digest = model.digest().unwrap();
    prop_assert_eq!(tensor_digest_of_file(bytes), Ok(digest));
    let again = safetensors_bytes(&model).unwrap();
    prop_assert_eq!(tensor_digest_of_file(&again), Ok(digest));
    let inputs = vec![0.5f32; model.mlp.inputs().max(1) * 2];
    let _ = predict(&model, &inputs);
    Ok(())
}

/// The JSON header and data section of a safetensors file.
fn split_safetensors(bytes: &[u8]) -> (serde_json::Value, Vec<u8>) {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (header, bytes[8 + n..].to_vec())
}

fn join_safetensors(header: &serde_json::Value, data: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

/// A change to one tensor's entry in the header: what a hand-made file
/// that still parses as safetensors can say.
#[derive(Clone, Debug)]
enum EntryEdit {
    Dtype(&'static str),
    Shape(Vec<u64>),
    Offsets(u64, u64),
    Rename(&'static str),
    Drop,
    /// Another dtype, the shape changed to cover the same bytes.
    Retype(&'static str, usize),
    /// The dimensions reversed: the same values, another shape.
    Transpose,
}

fn entry_edit() -> impl Strategy<Value = EntryEdit> {
    prop_oneof![
        prop::sample::select(vec![
            "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "I8", "BOOL", "U32", "F8_E4M3"
        ])
        .prop_map(EntryEdit::Dtype),
        prop::collection::vec(
            prop_oneof![0u64..8, Just(u64::MAX), Just(1 << 32), Just(1 << 62)],
            0..4
        )
        .prop_map(EntryEdit::Shape),
        (0u64..400, 0u64..400).prop_map(|(a, b)| EntryEdit::Offsets(a, b)),
        prop::sample::select(vec![
            "layers.0.weight",
            "layers.0.bias",
            "layers.1.weight",
            "layers.5.weight",
            "scaling.feature_mean",
            "scaling.target_mean",
            "scaling.target_std",
            "other",
        ])
        .prop_map(EntryEdit::Rename),
        Just(EntryEdit::Drop),
        prop::sample::select(vec![
            ("F16", 2),
            ("BF16", 2),
            ("F64", 8),
            ("U8", 1),
            ("I64", 8),
            ("U32", 4)
        ])
        .prop_map(|(dtype, size)| EntryEdit::Retype(dtype, size)),
        Just(EntryEdit::Transpose),
    ]
}

fn edit_header(header: &mut serde_json::Value, at: Index, change: &EntryEdit) {
    let map = header.as_object_mut().unwrap();
    let names: Vec<String> = map
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    if names.is_empty() {
        return;
    }
    let name = names[at.index(names.len())].clone();
    match change {
        EntryEdit::Dtype(dtype) => map[&name]["dtype"] = (*dtype).into(),
        EntryEdit::Shape(shape) => map[&name]["shape"] = shape.clone().into(),
        EntryEdit::Offsets(a, b) => map[&name]["data_offsets"] = vec![*a, *b].into(),
        EntryEdit::Rename(new) => {
            let entry = map.remove(&name).unwrap();
            map.insert((*new).to_string(), entry);
        }
        EntryEdit::Drop => {
            map.remove(&name);
        }
        EntryEdit::Retype(dtype, size) => {
            let offsets = &map[&name]["data_offsets"];
            let bytes = offsets[1]
                .as_u64()
                .unwrap()
                .saturating_sub(offsets[0].as_u64().unwrap());
            let elements = bytes / *size as u64;
            if !bytes.is_multiple_of(*size as u64) {
                return;
            }
            let rows = map[&name]["shape"][0].as_u64().unwrap_or(1).max(1);
            let shape = match map[&name]["shape"].as_array().map(Vec::len) {
                Some(2) if elements.is_multiple_of(rows) => vec![rows, elements / rows],
                _ => vec![elements],
            };
            map[&name]["dtype"] = (*dtype).into();
            map[&name]["shape"] = shape.into();
        }
        EntryEdit::Transpose => {
            let mut shape = map[&name]["shape"].as_array().unwrap().clone();
            shape.reverse();
            map[&name]["shape"] = shape.into();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// A model's weights file loads back to the same tensor digest, writes
    /// back to the same bytes, and no strict prefix of it loads.
    #[test]
    fn weights_files_round_trip_and_prefixes_fail(model in arb_model(), cuts in prop::collection::vec(any::<Index>(), 8)) {
        let bytes = safetensors_bytes(&model).unwrap();
        let digest = model.digest().unwrap();
        let loaded = model_from_safetensors(&bytes).unwrap();
        prop_assert_eq!(loaded.digest().unwrap(), digest);
        prop_assert_eq!(loaded.task, model.task);
        prop_assert_eq!(&loaded.scaling, &model.scaling);
        prop_assert_eq!(safetensors_bytes(&loaded).unwrap(), bytes.clone());
        prop_assert_eq!(tensor_digest_of_file(&bytes), Ok(digest));
        let mut prefixes = vec![0, 7, 8, bytes.len() - 1];
        prefixes.extend(cuts.iter().map(|cut| cut.index(bytes.len())));
        for cut in prefixes {
            prop_assert!(model_from_safetensors(&bytes[..cut]).is_err(), "{} of {} bytes", cut, bytes.len());
        }
    }

    /// Every value bit is committed to: a flipped bit in the data section
    /// is refused or changes the tensor digest.
    #[test]
    fn a_flipped_data_bit_changes_the_tensor_digest(model in arb_model(), at in any::<Index>(), bit in 0u8..8) {
        let bytes = safetensors_bytes(&model).unwrap();
        let (_, data) = split_safetensors(&bytes);
        let mut flipped = bytes.clone();
        let start = bytes.len() - data.len();
        flipped[start + at.index(data.len())] ^= 1 << bit;
        if let Ok(digest) = tensor_digest_of_file(&flipped) {
            prop_assert_ne!(digest, model.digest().unwrap());
        }
        check_loaded(&flipped)?;
    }

    /// Byte mutations anywhere in a weights file never panic the reader,
    /// and what loads keeps its digest through a rewrite.
    #[test]
    fn mutated_weights_files_are_refused_or_load_consistently(model in arb_model(), mutations in mutations()) {
        let mut bytes = safetensors_bytes(&model).unwrap();
        mutate(&mut bytes, &mutations);
        check_loaded(&bytes)?;
    }

    /// Hand-edited headers that still parse as JSON (other dtypes, shapes,
    /// offsets, names, missing tensors) never panic the reader.
    #[test]
    fn edited_weights_headers_are_refused_or_load_consistently(
        model in arb_model(),
        changes in prop::collection::vec((any::<Index>(), entry_edit()), 1..4),
    ) {
        let (mut header, data) = split_safetensors(&safetensors_bytes(&model).unwrap());
        for (at, change) in &changes {
            edit_header(&mut header, *at, change);
        }
        check_loaded(&join_safetensors(&header, &data))?;
    }

    /// A header length far beyond the file is refused without allocating it.
    #[test]
    fn an_announced_header_length_is_not_allocated(
        model in arb_model(),
        announced in prop_oneof![Just(u64::MAX), (1u64 << 20)..u64::MAX],
    ) {
        let mut bytes = safetensors_bytes(&model).unwrap();
        bytes[..8].copy_from_slice(&announced.to_le_bytes());
        let (result, largest) = largest_allocation(|| model_from_safetensors(&bytes));
        prop_assert!(result.is_err());
        prop_assert!(largest <= bytes.len() + 4096, "{} bytes for a file of {}", largest, bytes.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_not_weights(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        json in "\\{[\"a-z0-9_.:,\\[\\] ]{0,80}\\}",
    ) {
        check_loaded(&bytes)?;
        let mut framed = (json.len() as u64).to_le_bytes().to_vec();
        framed.extend_from_slice(json.as_bytes());
        framed.extend_from_slice(&bytes);
        check_loaded(&framed)?;
    }
}

// ---------------------------------------------------------------------------
// Training states.

/// A small job on iris and the states of an honest run of it: before the
/// first step and after each segment.
fn states() -> &'static (protocol::JobSpec, Dataset, Vec<Vec<u8>>) {
    static STATES: std::sync::OnceLock<(protocol::JobSpec, Dataset, Vec<Vec<u8>>)> =
        std::sync::OnceLock::new();
    STATES.get_or_init(|| {
        let dataset = parse(IRIS, TaskKind::Classification).unwrap();
        let spec = TrainSettings {
            hidden: vec![4],
            epochs: 2,
            batch: 32,
            segments: 8,
            seed: 5,
            ..TrainSettings::default()
        }
        .job_spec(&dataset)
        .unwrap();
        let seed = worker_seed(&JobId([1; 32]), &Address([2; 32]), spec.base_seed);
        let mut session = Session::new(&spec, &dataset, seed).unwrap();
        let mut states = vec![session.state_bytes().unwrap()];
        for index in 1..=spec.segments {
            session.run_segment(index, &mut |_| {}).unwrap();
            states.push(session.state_bytes().unwrap());
        }
        (spec, dataset, states)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// A mutated training state is refused, or is the canonical encoding
    /// of the session it resumes.
    #[test]
    fn mutated_training_states_are_refused_or_canonical(which in any::<Index>(), mutations in mutations()) {
        let (spec, dataset, states) = states();
        let mut bytes = states[which.index(states.len())].clone();
        mutate(&mut bytes, &mutations);
        if let Ok(session) = Session::from_state(spec, dataset, &bytes) {
            prop_assert_eq!(session.state_bytes().unwrap(), bytes);
        }
    }

    /// Every state resumes to itself, and no strict prefix of it resumes.
    #[test]
    fn training_states_round_trip_and_prefixes_fail(
        which in any::<Index>(),
        cuts in prop::collection::vec(any::<Index>(), 8),
    ) {
        let (spec, dataset, states) = states();
        let bytes = &states[which.index(states.len())];
        let session = Session::from_state(spec, dataset, bytes).unwrap();
        prop_assert_eq!(&session.state_bytes().unwrap(), bytes);
        for cut in cuts.iter().map(|cut| cut.index(bytes.len())).chain([0, bytes.len() - 1]) {
            prop_assert!(Session::from_state(spec, dataset, &bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        prop_assert!(Session::from_state(spec, dataset, &longer).is_err());
    }
}

#[test]
fn arbitrary_bytes_are_not_a_training_state() {
    let (spec, dataset, states) = states();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 3000,
        ..ProptestConfig::default()
    });
    let magic_then_bytes = (
        any::<bool>(),
        prop::collection::vec(any::<u8>(), 0..states[0].len() + 16),
    );
    runner
        .run(&magic_then_bytes, |(magic, body)| {
            let mut bytes = if magic {
                trainer::STATE_MAGIC.to_vec()
            } else {
                Vec::new()
            };
            bytes.extend_from_slice(&body);
            if let Ok(session) = Session::from_state(spec, dataset, &bytes) {
                prop_assert_eq!(session.state_bytes().unwrap(), bytes);
            }
            Ok(())
        })
        .unwrap();
}
