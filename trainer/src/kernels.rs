//! Reproducible CPU kernels on plain slices: matrix product, column sums,
//! and the reductions the custom candle ops are built from.
//!
//! The one rule: every output element is computed by the same sequence of
//! IEEE-754 single-precision operations on every CPU, build profile, target
//! feature set and thread count. The matrix product therefore accumulates
//! each element as `((0 + a0*b0) + a1*b1) + ...` in `k` order, with a
//! separate multiply and add. Vector instructions are used only *across*
//! independent output elements, so SSE, AVX and AVX-512 give the same bits:
//! the explicit AVX and AVX-512 tiles (chosen at run time, in the one
//! module allowed `unsafe`) issue `vmulps` then `vaddps` per step, exactly
//! the operations of the portable tile they are tested against. This
//! module must never call `mul_add`, a platform math function, or a library
//! kernel (gemm, BLAS) whose accumulation order depends on the CPU, and must
//! never split one element's sum across threads.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]

use std::borrow::Cow;
use std::cell::RefCell;

/// A read-only view of a `rows × cols` matrix with arbitrary strides over a
/// slice, as candle layouts describe them (a transposed view swaps strides).
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

/// A shape or bounds problem in a kernel call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KernelError {
    /// The view reaches past its buffer.
    #[error("matrix view of {rows}x{cols} at offset {offset} with strides ({row_stride}, {col_stride}) needs {needed} elements, the buffer has {len}")]
    OutOfBounds {
        /// Rows of the view.
        rows: usize,
        /// Columns of the view.
        cols: usize,
        /// First element.
        offset: usize,
        /// Row stride.
        row_stride: usize,
        /// Column stride.
        col_stride: usize,
        /// Elements needed.
        needed: usize,
        /// Elements present.
        len: usize,
    },
    /// Inner or output dimensions disagree.
    #[error("shape mismatch in {what}: got {got}, expected {expected}")]
    Shape {
        /// Which dimension.
        what: &'static str,
        /// What was given.
        got: usize,
        /// What it must be.
        expected: usize,
    },
}

impl<'a> MatRef<'a> {
    /// A view, checked to lie inside `data`.
    pub fn new(
        data: &'a [f32],
        offset: usize,
        rows: usize,
        cols: usize,
        row_stride: usize,
        col_stride: usize,
    ) -> Result<Self, KernelError> {
        let last = if rows == 0 || cols == 0 {
            Some(offset)
        } else {
            rows.saturating_sub(1)
                .checked_mul(row_stride)
                .and_then(|r| {
                    cols.saturating_sub(1)
                        .checked_mul(col_stride)
                        .and_then(|c| r.checked_add(c))
                })
                .and_then(|rc| rc.checked_add(offset))
                .and_then(|end| end.checked_add(1))
        };
        match last {
            Some(needed) if needed <= data.len() || rows == 0 || cols == 0 => Ok(Self {
                data,
                offset,
                rows,
                cols,
                row_stride,
                col_stride,
            }),
            _ => Err(KernelError::OutOfBounds {
                rows,
                cols,
                offset,
                row_stride,
                col_stride,
                needed: last.unwrap_or(usize::MAX),
                len: data.len(),
            }),
        }
    }

    /// A contiguous row-major view of `data`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Result<Self, KernelError> {
        Self::new(data, 0, rows, cols, cols, 1)
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows `first..first + rows` of the view (callers stay inside).
    fn row_band(self, first: usize, rows: usize) -> Self {
        Self {
            // Inside a view checked by `new`: cannot overflow.
            offset: self
                .offset
                .saturating_add(first.saturating_mul(self.row_stride)),
            rows,
            ..self
        }
    }

    /// The transposed view (no copy).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Element `(i, j)`; 0 outside the view (callers stay inside).
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data
            // Saturating: an index past usize is past the data, and `get`
            // answers None for it like for any index outside.
            .get(
                self.offset
                    .saturating_add(i.saturating_mul(self.row_stride))
                    .saturating_add(j.saturating_mul(self.col_stride)),
            )
            .copied()
            .unwrap_or(0.0)
    }

    /// The elements in row-major order, borrowed when already laid out so.
    pub fn to_row_major(&self) -> Cow<'a, [f32]> {
        // At most the checked view's extent.
        let len = self.rows.saturating_mul(self.cols);
        if self.col_stride == 1 && (self.row_stride == self.cols || self.rows <= 1) {
            if let Some(slice) = self.data.get(self.offset..self.offset.saturating_add(len)) {
                return Cow::Borrowed(slice);
            }
        }
        let mut out = Vec::with_capacity(len);
        for i in 0..self.rows {
            for j in 0..self.cols {
                out.push(self.at(i, j));
            }
        }
        Cow::Owned(out)
    }
}

/// `a · b` as a new row-major `a.rows × b.cols` buffer.
pub fn matmul(a: MatRef<'_>, b: MatRef<'_>) -> Result<Vec<f32>, KernelError> {
    let mut out = Vec::new();
    matmul_into(a, b, &mut out)?;
    Ok(out)
}

/// `a · b` into `out`, resized to `a.rows × b.cols` (row-major). Every
/// element is overwritten, so a buffer reused from an earlier step needs no
/// clearing and, once grown, no allocation.
pub fn matmul_into(a: MatRef<'_>, b: MatRef<'_>, out: &mut Vec<f32>) -> Result<(), KernelError> {
    matmul_into_then(a, b, out, |_, _| {})
}

/// [`matmul_into`], then `finish(offset, rows)` on each band of whole
/// output rows (`offset` is the band's first element in `out`) on the
/// thread that computed it, right after it: an element-wise pass on the
/// product (a bias, an activation) runs with the product's threads and
/// while the band is still in cache. `finish` must treat every element on
/// its own, with nothing carried from one element or band to another, so
/// that where the bands are cut never reaches a bit.
pub fn matmul_into_then(
    a: MatRef<'_>,
    b: MatRef<'_>,
    out: &mut Vec<f32>,
    finish: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<(), KernelError> {
    if a.cols != b.rows {
        return Err(KernelError::Shape {
            what: "inner dimension of a matrix product",
            got: b.rows,
            expected: a.cols,
        });
    }
    let len = a.rows.checked_mul(b.cols).ok_or(KernelError::Shape {
        what: "output rows of a matrix product (rows × columns overflows)",
        got: a.rows,
        expected: usize::MAX.checked_div(b.cols).unwrap_or(usize::MAX),
    })?;
    out.resize(len, 0.0);
    if !out.is_empty() {
        dispatch(a, b, out, finish);
    }
    Ok(())
}

/// The tile loops a CPU can run, fastest first. All of them give the same
/// bits; they differ only in how many independent output elements advance
/// together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TilePath {
    /// 8 rows × 32 columns in 512-bit registers (AVX-512F).
    Avx512,
    /// 6 rows × 16 columns in 256-bit registers (AVX).
    Avx,
    /// 4 rows × 8 columns in plain arrays, vectorised by the compiler for
    /// the build's baseline (SSE2 on x86-64).
    Baseline,
}

impl TilePath {
    /// The fastest path this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Self::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx") {
                return Self::Avx;
            }
        }
        Self::Baseline
    }

    /// Every path this CPU supports (for tests that compare them).
    pub fn available() -> Vec<Self> {
        let best = Self::detect();
        [Self::Avx512, Self::Avx, Self::Baseline]
            .into_iter()
            .skip_while(|p| *p != best)
            .collect()
    }

    /// Rows of one tile panel: bands of a threaded product are cut on
    /// multiples of it.
    fn panel_rows(self) -> usize {
        match self {
            Self::Avx512 => 8,
            Self::Avx => 6,
            Self::Baseline => 4,
        }
    }

    /// The path's name, for reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Avx512 => "avx512 8x32",
            Self::Avx => "avx 6x16",
            Self::Baseline => "baseline 4x8",
        }
    }
}

/// Which tile loop this CPU runs, for logs (the result is the same for all).
pub fn kernel_name() -> &'static str {
    TilePath::detect().name()
}

/// The vector unit [`with_wide_vectors`] compiles its closure for on this
/// CPU, for logs and tests: `"avx512f"`, `"avx"`, or `"baseline"` when it
/// just calls the closure.
pub fn wide_vectors_name() -> &'static str {
    match TilePath::detect() {
        TilePath::Avx512 => "avx512f",
        TilePath::Avx => "avx",
        TilePath::Baseline => "baseline",
    }
}

/// Runs the product on the engine's pool: the output's rows are cut into
/// contiguous bands (whole tile panels, so no tile is split), one per part,
/// and each band is the product of the same rows of `a` with all of `b`.
/// An element's sum runs over the whole inner dimension inside one band,
/// in the same order as on one thread, so the cut never changes a bit.
fn dispatch(
    a: MatRef<'_>,
    b: MatRef<'_>,
    out: &mut [f32],
    finish: impl Fn(usize, &mut [f32]) + Sync,
) {
    let path = TilePath::detect();
    let panel = path.panel_rows();
    let panels = a.rows.div_ceil(panel);
    let parts = crate::pool::parts_for(panels, panel.saturating_mul(a.cols).saturating_mul(b.cols));
    matmul_in_bands(path, a, b, out, parts, finish);
}

/// `a · b` into `out` on `path`, the output's rows cut into `parts` bands
/// of whole panels run on the pool (see [`dispatch`]), each followed by
/// `finish` (see [`matmul_into_then`]). `b` is packed once, on the calling
/// thread, and every band reads that one copy: packing is a copy, so the
/// bands see the same values as if each had packed its own.
fn matmul_in_bands(
    path: TilePath,
    a: MatRef<'_>,
    b: MatRef<'_>,
    out: &mut [f32],
    parts: usize,
    finish: impl Fn(usize, &mut [f32]) + Sync,
) {
    let n = b.cols;
    let shape = Shape::for_product(path, n);
    with_scratch(&PACKED_B, |buffer| {
        let packed = pack_b(shape, b, buffer);
        if parts <= 1 || n == 0 {
            matmul_packed(a, packed, out);
            finish(0, out);
            return;
        }
        crate::pool::for_each_chunk(out, shape.mr().saturating_mul(n), parts, |offset, band| {
            // `n` is not 0 here.
            let rows = band.len().checked_div(n).unwrap_or(0);
            let first = offset.checked_div(n).unwrap_or(0);
            matmul_packed(a.row_band(first, rows), packed, band);
            finish(offset, band);
        });
    });
}

/// `a · b` into `out` on a given path, on this thread; a path the CPU lacks
/// falls back to the baseline (same bits, only slower).
#[cfg(test)]
fn matmul_on(path: TilePath, a: MatRef<'_>, b: MatRef<'_>, out: &mut [f32]) {
    matmul_in_bands(path, a, b, out, 1, |_, _| {});
}

/// The tile a product runs on: its rows (`MR`) and columns (`NR`), and the
/// registers it uses. Every shape gives the same bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// 8 × 32 in zmm registers.
    Avx512Wide,
    /// 8 × 16 in zmm registers, for products at most 16 wide (a
    /// classifier's logits), which would waste most of a 32-wide tile on
    /// padding.
    Avx512Narrow,
    /// 6 × 16 in ymm registers.
    Avx,
    /// 4 × 8 in plain arrays.
    Baseline,
}

impl Shape {
    /// The shape `path` runs an `n`-column product on, on this CPU.
    fn for_product(path: TilePath, n: usize) -> Self {
        #[cfg(target_arch = "x86_64")]
        match path {
            TilePath::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                return if n <= 16 {
                    Self::Avx512Narrow
                } else {
                    Self::Avx512Wide
                };
            }
            TilePath::Avx if std::arch::is_x86_feature_detected!("avx") => return Self::Avx,
            _ => {}
        }
        let _ = (path, n);
        Self::Baseline
    }

    fn mr(self) -> usize {
        match self {
            Self::Avx512Wide | Self::Avx512Narrow => 8,
            Self::Avx => 6,
            Self::Baseline => 4,
        }
    }
}

/// `b` packed for one tile shape: blocks of `NR` columns laid out
/// `[block][p][c]`, `k × NR` values per block (see [`pack_columns`]).
#[derive(Clone, Copy, Debug)]
struct PackedB<'p> {
    shape: Shape,
    data: &'p [f32],
    cols: usize,
}

/// Packs all of `b` into `buffer` for `shape`.
fn pack_b<'p>(shape: Shape, b: MatRef<'_>, buffer: &'p mut Vec<f32>) -> PackedB<'p> {
    match shape {
        Shape::Avx512Wide => pack_all_columns::<32>(&b, buffer),
        Shape::Avx512Narrow | Shape::Avx => pack_all_columns::<16>(&b, buffer),
        Shape::Baseline => pack_all_columns::<8>(&b, buffer),
    }
    PackedB {
        shape,
        data: buffer,
        cols: b.cols,
    }
}

/// `a · b` into `out` from `b` packed for its shape.
fn matmul_packed(a: MatRef<'_>, b: PackedB<'_>, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::matmul_packed(a, b, out) {
        return;
    }
    match b.shape {
        Shape::Avx512Wide => tiles_on_packed::<8, 32>(a, b, out, tile_portable::<8, 32>),
        Shape::Avx512Narrow => tiles_on_packed::<8, 16>(a, b, out, tile_portable::<8, 16>),
        Shape::Avx => tiles_on_packed::<6, 16>(a, b, out, tile_portable::<6, 16>),
        Shape::Baseline => tiles_on_packed::<4, 8>(a, b, out, tile_portable::<4, 8>),
    }
}

/// Runs `f`, inlined into a function compiled for the widest vector unit
/// this CPU has, so that an elementwise loop inside it can use 512- or
/// 256-bit vectors. Only for loops whose elements are independent and each
/// see a fixed sequence of correctly rounded operations (add, multiply,
/// divide, sqrt): the width changes how many elements advance together,
/// never what happens to one. The compiler never fuses a multiply and an add
/// on its own, whatever the target features.
pub(crate) fn with_wide_vectors<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        simd::with_wide_vectors(f)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        f()
    }
}

/// The core's multiply-and-add throughput, for comparing the kernels with:
/// runs independent chains of separate multiplies and adds (the kernels'
/// rule, no fused multiply-add) on `path`'s registers for `iterations`
/// rounds and returns the floating-point operations done (a multiply and an
/// add count as two) and a value that keeps the loop from being optimised
/// away. The caller times it.
pub fn mul_add_peak(path: TilePath, iterations: usize) -> (usize, f32) {
    #[cfg(target_arch = "x86_64")]
    if let Some(done) = simd::mul_add_peak(path, iterations) {
        return done;
    }
    let _ = path;
    let zero = std::hint::black_box(0.0f32);
    let mut acc = [[1.0f32; 4]; 8];
    for _ in 0..iterations {
        for chain in acc.iter_mut() {
            for a in chain.iter_mut() {
                *a += *a * zero;
            }
        }
    }
    (
        iterations.saturating_mul(64),
        sum(acc.into_iter().flatten()),
    )
}

/// One `MR × NR` tile in plain arrays: `acc[r][c] += a[r] * b[c]` for every
/// step in order. The reference for the vector tiles, which must perform
/// exactly these operations.
// `r < MR` and `c < NR` index arrays of exactly `MR` and `NR`: the
// indexing cannot panic, and bounds-checked iterators here would hide the
// formula the vector tiles are tested against.
#[allow(clippy::indexing_slicing)]
#[inline(always)]
fn tile_portable<const MR: usize, const NR: usize>(
    a_steps: &[[f32; MR]],
    b_steps: &[[f32; NR]],
) -> [[f32; NR]; MR] {
    let mut acc = [[0.0f32; NR]; MR];
    for (a_step, b_step) in a_steps.iter().zip(b_steps) {
        for r in 0..MR {
            let av = a_step[r];
            for c in 0..NR {
                acc[r][c] += av * b_step[c];
            }
        }
    }
    acc
}

/// The explicit vector tiles. Each lane of each accumulator is one output
/// element; it starts at +0.0 and gets `acc + a*b` per step with a separate
/// multiply and add (`vmulps` then `vaddps`, never `vfmadd`), exactly the
/// operations of [`tile_portable`].
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod simd {
    use super::{MatRef, PackedB, Shape};
    use core::arch::x86_64::{
        __m256, __m512, _mm256_add_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps,
        _mm256_setzero_ps, _mm256_storeu_ps, _mm512_add_ps, _mm512_loadu_ps, _mm512_mul_ps,
        _mm512_set1_ps, _mm512_setzero_ps, _mm512_storeu_ps,
    };

    /// `a · b` on the vector tiles of `b`'s shape; false (nothing
    /// written) for the baseline shape or when the CPU lacks the shape's
    /// feature.
    pub(super) fn matmul_packed(a: MatRef<'_>, b: PackedB<'_>, out: &mut [f32]) -> bool {
        match b.shape {
            Shape::Avx512Wide | Shape::Avx512Narrow
                if std::arch::is_x86_feature_detected!("avx512f") =>
            {
                // SAFETY: the CPU was just checked to support AVX-512F, the
                // only feature `avx512_tiles` is compiled for.
                unsafe { avx512_tiles(a, b, out) };
                true
            }
            Shape::Avx if std::arch::is_x86_feature_detected!("avx") => {
                // SAFETY: the CPU was just checked to support AVX, the only
                // feature `avx_tiles` is compiled for.
                unsafe { avx_tiles(a, b, out) };
                true
            }
            _ => false,
        }
    }

    /// See [`super::with_wide_vectors`].
    pub(super) fn with_wide_vectors<R>(f: impl FnOnce() -> R) -> R {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU was just checked to support AVX-512F, the only
            // feature `call_avx512` is compiled for.
            unsafe { call_avx512(f) }
        } else if std::arch::is_x86_feature_detected!("avx") {
            // SAFETY: the CPU was just checked to support AVX, the only
            // feature `call_avx` is compiled for.
            unsafe { call_avx(f) }
        } else {
            f()
        }
    }

    /// See [`super::mul_add_peak`]: `None` when the CPU lacks the path's
    /// feature.
    pub(super) fn mul_add_peak(path: super::TilePath, iterations: usize) -> Option<(usize, f32)> {
        match path {
            super::TilePath::Avx512 if std::arch::is_x86_feature_detected!("avx512f") => {
                // SAFETY: the CPU was just checked to support AVX-512F, the
                // only feature `peak_512` is compiled for.
                Some(unsafe { peak_512(iterations) })
            }
            super::TilePath::Avx if std::arch::is_x86_feature_detected!("avx") => {
                // SAFETY: the CPU was just checked to support AVX, the only
                // feature `peak_256` is compiled for.
                Some(unsafe { peak_256(iterations) })
            }
            _ => None,
        }
    }

    /// 16 independent chains of `acc = acc + acc * zero` in zmm registers:
    /// each step depends on the last (nothing can be hoisted or folded;
    /// `zero` is opaque to the compiler), and 16 chains are more than
    /// enough to hide the latency, so the loop runs at the multiply and add
    /// throughput of the core.
    #[target_feature(enable = "avx512f")]
    fn peak_512(iterations: usize) -> (usize, f32) {
        let zero = _mm512_set1_ps(std::hint::black_box(0.0));
        let mut acc = [_mm512_set1_ps(1.0); 16];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm512_add_ps(*a, _mm512_mul_ps(*a, zero));
            }
        }
        let mut out = [0.0f32; 16];
        let mut total = _mm512_setzero_ps();
        for a in acc {
            total = _mm512_add_ps(total, a);
        }
        store_512(&mut out, total);
        let [first, ..] = out;
        (iterations.saturating_mul(16 * 16 * 2), first)
    }

    /// [`peak_512`] in ymm registers (12 chains).
    #[target_feature(enable = "avx")]
    fn peak_256(iterations: usize) -> (usize, f32) {
        let zero = _mm256_set1_ps(std::hint::black_box(0.0));
        let mut acc = [_mm256_set1_ps(1.0); 12];
        for _ in 0..iterations {
            for a in acc.iter_mut() {
                *a = _mm256_add_ps(*a, _mm256_mul_ps(*a, zero));
            }
        }
        let mut out = [0.0f32; 8];
        let mut total = _mm256_setzero_ps();
        for a in acc {
            total = _mm256_add_ps(total, a);
        }
        store_256(&mut out, total);
        let [first, ..] = out;
        (iterations.saturating_mul(12 * 8 * 2), first)
    }

    #[target_feature(enable = "avx512f")]
    fn call_avx512<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx")]
    fn call_avx<R>(f: impl FnOnce() -> R) -> R {
        f()
    }

    #[target_feature(enable = "avx512f")]
    fn avx512_tiles(a: MatRef<'_>, b: PackedB<'_>, out: &mut [f32]) {
        if b.shape == Shape::Avx512Narrow {
            super::tiles_on_packed::<8, 16>(a, b, out, |a_steps, b_steps| {
                tile_512::<8, 16, 1>(a_steps, b_steps)
            });
        } else {
            super::tiles_on_packed::<8, 32>(a, b, out, |a_steps, b_steps| {
                tile_512::<8, 32, 2>(a_steps, b_steps)
            });
        }
    }

    #[target_feature(enable = "avx")]
    fn avx_tiles(a: MatRef<'_>, b: PackedB<'_>, out: &mut [f32]) {
        super::tiles_on_packed::<6, 16>(a, b, out, |a_steps, b_steps| tile_256(a_steps, b_steps));
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn load_512(v: &[f32; 16]) -> __m512 {
        // SAFETY: `v` is 16 readable f32s; the load has no alignment need.
        unsafe { _mm512_loadu_ps(v.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    fn store_512(dst: &mut [f32; 16], v: __m512) {
        // SAFETY: `dst` is 16 writable f32s; the store has no alignment need.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), v) }
    }

    #[inline]
    #[target_feature(enable = "avx")]
    fn load_256(v: &[f32; 8]) -> __m256 {
        // SAFETY: `v` is 8 readable f32s; the load has no alignment need.
        unsafe { _mm256_loadu_ps(v.as_ptr()) }
    }

    #[inline]
    #[target_feature(enable = "avx")]
    fn store_256(dst: &mut [f32; 8], v: __m256) {
        // SAFETY: `dst` is 8 writable f32s; the store has no alignment need.
        unsafe { _mm256_storeu_ps(dst.as_mut_ptr(), v) }
    }

    /// `MR × NR` accumulators in `NV·MR` zmm registers (`NR = 16·NV`).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn tile_512<const MR: usize, const NR: usize, const NV: usize>(
        a_steps: &[[f32; MR]],
        b_steps: &[[f32; NR]],
    ) -> [[f32; NR]; MR] {
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for (a_step, b_step) in a_steps.iter().zip(b_steps) {
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, chunk) in bv.iter_mut().zip(b_step.as_chunks::<16>().0) {
                *v = load_512(chunk);
            }
            for (acc_row, av) in acc.iter_mut().zip(a_step) {
                let av = _mm512_set1_ps(*av);
                for (acc_v, b_v) in acc_row.iter_mut().zip(&bv) {
                    *acc_v = _mm512_add_ps(*acc_v, _mm512_mul_ps(av, *b_v));
                }
            }
        }
        let mut out = [[0.0f32; NR]; MR];
        for (row, acc_row) in out.iter_mut().zip(&acc) {
            let (chunks, _) = row.as_chunks_mut::<16>();
            for (chunk, v) in chunks.iter_mut().zip(acc_row) {
                store_512(chunk, *v);
            }
        }
        out
    }

    /// `MR × 16` accumulators in `2·MR` ymm registers.
    #[inline]
    #[target_feature(enable = "avx")]
    fn tile_256<const MR: usize>(a_steps: &[[f32; MR]], b_steps: &[[f32; 16]]) -> [[f32; 16]; MR] {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        for (a_step, b_step) in a_steps.iter().zip(b_steps) {
            let (halves, _) = b_step.as_chunks::<8>();
            let (Some(lo), Some(hi)) = (halves.first(), halves.get(1)) else {
                continue;
            };
            let (b0, b1) = (load_256(lo), load_256(hi));
            for (acc_row, av) in acc.iter_mut().zip(a_step) {
                let av = _mm256_set1_ps(*av);
                acc_row[0] = _mm256_add_ps(acc_row[0], _mm256_mul_ps(av, b0));
                acc_row[1] = _mm256_add_ps(acc_row[1], _mm256_mul_ps(av, b1));
            }
        }
        let mut out = [[0.0f32; 16]; MR];
        for (row, acc_row) in out.iter_mut().zip(&acc) {
            let (halves, _) = row.as_chunks_mut::<8>();
            for (half, v) in halves.iter_mut().zip(acc_row) {
                store_256(half, *v);
            }
        }
        out
    }
}

thread_local! {
    /// Packing buffers, reused across calls: a training step runs a dozen
    /// products, and fresh multi-megabyte buffers would cost page faults.
    /// `a`'s rows are packed by the thread that runs their band; `b` by the
    /// thread that starts the product, for all its bands.
    static PACKED_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PACKED_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on a thread's packing buffer, or on a fresh one when the
/// thread's is in use further up its stack. `f` is called from one place
/// only, so that it is inlined into the caller and the tile loops inside it
/// are compiled for the caller's vector unit.
#[inline(always)]
fn with_scratch<R>(
    buffer: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    f: impl FnOnce(&mut Vec<f32>) -> R,
) -> R {
    buffer.with(|cell| {
        let mut fresh = Vec::new();
        let mut reused = cell.try_borrow_mut();
        let scratch = match reused.as_deref_mut() {
            Ok(reused) => reused,
            Err(_) => &mut fresh,
        };
        f(scratch)
    })
}

/// Copies `a` into panels of `MR` rows laid out `[panel][p][r]`, so that the
/// `MR` values one step of the tile loop needs are adjacent. Rows past the
/// end are zero.
// Index arithmetic inside a view that `MatRef::new` checked with checked
// arithmetic (offset + (rows - 1)·row_stride + (cols - 1)·col_stride fits
// the data), or inside buffers sized here from the same dimensions: no sum
// or product below can overflow, and every access goes through `get`, so a
// mistake would drop a value, never read out of bounds. Checked arithmetic
// in these loops would cost the kernels a branch per element.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
#[inline(always)]
fn pack_rows<const MR: usize>(a: &MatRef<'_>, packed: &mut Vec<f32>) {
    let (m, k) = (a.rows, a.cols);
    // Full panels are overwritten below, so the buffer is not cleared; only
    // the padding rows of a short last panel must be zero.
    packed.resize(m.div_ceil(MR) * k * MR, 0.0);
    for (panel, dst) in packed.chunks_exact_mut(k * MR).enumerate() {
        let i0 = panel * MR;
        let rows = MR.min(m - i0);
        if rows < MR {
            dst.fill(0.0);
        }
        if a.row_stride == 1 && rows == MR {
            // A transposed view: the MR values of step p are contiguous.
            let (steps, _) = dst.as_chunks_mut::<MR>();
            for (p, step) in steps.iter_mut().enumerate() {
                let at = a.offset + i0 + p * a.col_stride;
                if let Some(src) = a
                    .data
                    .get(at..at + MR)
                    .and_then(|s| s.as_chunks::<MR>().0.first())
                {
                    *step = *src;
                }
            }
        } else if a.row_stride == 1 {
            for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                let at = a.offset + i0 + p * a.col_stride;
                if let (Some(src), Some(step)) = (a.data.get(at..at + rows), step.get_mut(..rows)) {
                    step.copy_from_slice(src);
                }
            }
        } else if a.col_stride == 1 {
            // Row-major rows: read the panel's rows side by side so that
            // both the reads and the writes run forwards.
            let panel_rows: [&[f32]; MR] = std::array::from_fn(|r| {
                let start = a.offset + (i0 + r) * a.row_stride;
                if r < rows {
                    a.data.get(start..start + k).unwrap_or_default()
                } else {
                    &[]
                }
            });
            let (steps, _) = dst.as_chunks_mut::<MR>();
            // Blocks of eight steps as fixed-size transposes (no per-element
            // bounds checks), then the remainder one element at a time.
            let mut blocks = steps.chunks_exact_mut(8);
            for (block, out) in (&mut blocks).enumerate() {
                let p0 = block * 8;
                let src: [[f32; 8]; MR] = std::array::from_fn(|r| {
                    panel_rows[r]
                        .get(p0..p0 + 8)
                        .and_then(|s| s.first_chunk::<8>())
                        .copied()
                        .unwrap_or([0.0; 8])
                });
                for (q, step) in out.iter_mut().enumerate() {
                    for (slot, row) in step.iter_mut().zip(&src) {
                        *slot = row[q];
                    }
                }
            }
            let done = k - blocks.into_remainder().len();
            for (p, step) in steps.iter_mut().enumerate().skip(done) {
                for (slot, row) in step.iter_mut().zip(&panel_rows) {
                    if let Some(v) = row.get(p) {
                        *slot = *v;
                    }
                }
            }
        } else {
            for r in 0..rows {
                let row_start = a.offset + (i0 + r) * a.row_stride;
                for (p, step) in dst.chunks_exact_mut(MR).enumerate() {
                    if let (Some(v), Some(slot)) =
                        (a.data.get(row_start + p * a.col_stride), step.get_mut(r))
                    {
                        *slot = *v;
                    }
                }
            }
        }
    }
}

/// Copies all of `b` into blocks of `NR` columns, `[block][p][c]`, `k × NR`
/// values per block (padding columns of a short last block keep whatever
/// they held: their results are discarded).
// Block offsets inside a buffer sized here from the view's dimensions.
#[allow(clippy::arithmetic_side_effects)]
#[inline(always)]
fn pack_all_columns<const NR: usize>(b: &MatRef<'_>, packed: &mut Vec<f32>) {
    let (k, n) = (b.rows, b.cols);
    packed.resize(n.div_ceil(NR) * k * NR, 0.0);
    if k == 0 {
        return;
    }
    for (block, dst) in packed.chunks_exact_mut(k * NR).enumerate() {
        let j0 = block * NR;
        pack_columns::<NR>(b, j0, NR.min(n - j0), dst);
    }
}

/// Copies columns `j0..j0 + width` of `b` into `[p][c]` rows of `NR`
/// (columns past `width` keep whatever they held: their results are
/// discarded).
// Index arithmetic inside a view that `MatRef::new` checked with checked
// arithmetic (offset + (rows - 1)·row_stride + (cols - 1)·col_stride fits
// the data), or inside buffers sized here from the same dimensions: no sum
// or product below can overflow, and every access goes through `get`, so a
// mistake would drop a value, never read out of bounds. Checked arithmetic
// in these loops would cost the kernels a branch per element.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
#[inline(always)]
fn pack_columns<const NR: usize>(b: &MatRef<'_>, j0: usize, width: usize, packed: &mut [f32]) {
    if b.col_stride == 1 && width == NR {
        // The common case, as fixed-size copies (a memcpy call per row of
        // eight floats would cost more than the copy).
        let (rows, _) = packed.as_chunks_mut::<NR>();
        for (p, dst) in rows.iter_mut().enumerate() {
            let at = b.offset + p * b.row_stride + j0;
            if let Some(src) = b
                .data
                .get(at..at + NR)
                .and_then(|s| s.as_chunks::<NR>().0.first())
            {
                *dst = *src;
            }
        }
    } else if b.col_stride == 1 {
        for (p, dst) in packed.chunks_exact_mut(NR).enumerate() {
            let at = b.offset + p * b.row_stride + j0;
            if let (Some(src), Some(dst)) = (b.data.get(at..at + width), dst.get_mut(..width)) {
                dst.copy_from_slice(src);
            }
        }
    } else if b.row_stride == 1 {
        // A transposed row-major matrix (a weight matrix in the input
        // gradient): each column is contiguous, read in one pass per column
        // and scattered down the packed rows.
        let k = b.rows;
        for c in 0..width {
            let column = b.offset + (j0 + c) * b.col_stride;
            let Some(src) = b.data.get(column..column + k) else {
                continue;
            };
            for (dst, v) in packed.chunks_exact_mut(NR).zip(src) {
                if let Some(slot) = dst.get_mut(c) {
                    *slot = *v;
                }
            }
        }
    } else {
        // Any other strides, one element at a time.
        for c in 0..width {
            let column = b.offset + (j0 + c) * b.col_stride;
            for (p, dst) in packed.chunks_exact_mut(NR).enumerate() {
                if let (Some(v), Some(slot)) =
                    (b.data.get(column + p * b.row_stride), dst.get_mut(c))
                {
                    *slot = *v;
                }
            }
        }
    }
}

/// Register-blocked product: `MR × NR` accumulators stay in registers while
/// `p` runs over the whole inner dimension, so each element's sum is one
/// unbroken left-to-right chain. Edges are handled by padding the packed
/// panels and discarding the padded results: padding never enters a kept
/// element's chain.
// Index arithmetic inside a view that `MatRef::new` checked with checked
// arithmetic (offset + (rows - 1)·row_stride + (cols - 1)·col_stride fits
// the data), or inside buffers sized here from the same dimensions: no sum
// or product below can overflow, and every access goes through `get`, so a
// mistake would drop a value, never read out of bounds. Checked arithmetic
// in these loops would cost the kernels a branch per element.
#[allow(clippy::arithmetic_side_effects, clippy::indexing_slicing)]
#[inline(always)]
fn tiles_on_packed<const MR: usize, const NR: usize>(
    a: MatRef<'_>,
    b: PackedB<'_>,
    out: &mut [f32],
    tile: impl Fn(&[[f32; MR]], &[[f32; NR]]) -> [[f32; NR]; MR],
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if k == 0 {
        // Empty sums: +0.
        out.iter_mut().take(m * n).for_each(|v| *v = 0.0);
        return;
    }
    with_scratch(&PACKED_A, |a_packed| {
        pack_rows::<MR>(&a, a_packed);
        for (block, b_block) in b.data.chunks_exact(k * NR).enumerate() {
            let j0 = block * NR;
            let width = NR.min(n.saturating_sub(j0));
            let (b_steps, _) = b_block.as_chunks::<NR>();
            for (panel, a_panel) in a_packed.chunks_exact(k * MR).enumerate() {
                let (a_steps, _) = a_panel.as_chunks::<MR>();
                let acc = tile(a_steps, b_steps);
                let i0 = panel * MR;
                for (r, acc_row) in acc.iter().enumerate().take(m.saturating_sub(i0)) {
                    let start = (i0 + r) * n + j0;
                    if width == NR {
                        // A fixed-size copy, not a memcpy call per row.
                        if let Some(dst) = out
                            .get_mut(start..start + NR)
                            .and_then(|d| d.first_chunk_mut::<NR>())
                        {
                            *dst = *acc_row;
                        }
                    } else if let (Some(dst), Some(src)) =
                        (out.get_mut(start..start + width), acc_row.get(..width))
                    {
                        dst.copy_from_slice(src);
                    }
                }
            }
        }
    });
}

/// [`tiles_on_packed`] after packing `b` for `NR`-wide tiles, on this
/// thread (for tests of tile shapes no CPU path uses).
#[cfg(test)]
fn matmul_tiles<const MR: usize, const NR: usize>(
    a: MatRef<'_>,
    b: MatRef<'_>,
    out: &mut [f32],
    tile: impl Fn(&[[f32; MR]], &[[f32; NR]]) -> [[f32; NR]; MR],
) {
    let mut buffer = Vec::new();
    pack_all_columns::<NR>(&b, &mut buffer);
    let packed = PackedB {
        shape: Shape::Baseline,
        data: &buffer,
        cols: b.cols,
    };
    tiles_on_packed::<MR, NR>(a, packed, out, tile);
}

/// Sum of each column of a row-major `rows × cols` matrix, rows added in
/// order (vectorised across columns only).
pub fn column_sums(data: &[f32], cols: usize) -> Vec<f32> {
    let mut out = Vec::new();
    column_sums_into(data, cols, &mut out);
    out
}

/// [`column_sums`] into a reused buffer.
pub fn column_sums_into(data: &[f32], cols: usize, out: &mut Vec<f32>) {
    out.clear();
    out.resize(cols, 0.0);
    if cols == 0 {
        return;
    }
    for row in data.chunks_exact(cols) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += *v;
        }
    }
}

/// Adds `bias` to every row of a row-major matrix.
pub fn add_rows(data: &mut [f32], bias: &[f32]) {
    if bias.is_empty() {
        return;
    }
    for row in data.chunks_exact_mut(bias.len()) {
        for (o, b) in row.iter_mut().zip(bias) {
            *o += *b;
        }
    }
}

/// Left-to-right sum.
pub fn sum(values: impl IntoIterator<Item = f32>) -> f32 {
    values.into_iter().fold(0.0f32, |acc, v| acc + v)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = SplitMix64::new(seed);
        (0..n).map(|_| rng.unit_f32() * 2.0 - 1.0).collect()
    }

    /// The definition, one element at a time, in the documented order:
    /// plain nested loops sharing no code with the tiles, a rounded
    /// multiply then a rounded add per step (Rust never contracts the two
    /// into a fused multiply-add).
    fn reference(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
        let mut out = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f32;
                for p in 0..k {
                    let product = a[i * k + p] * b[p * n + j];
                    acc += product;
                }
                out[i * n + j] = acc;
            }
        }
        out
    }

    /// The tile paths this CPU runs, after printing for `test` each path it
    /// lacks and why, and which paths are compared with the reference.
    fn paths_compared(test: &str) -> Vec<TilePath> {
        let available = TilePath::available();
        for (path, feature) in [(TilePath::Avx512, "avx512f"), (TilePath::Avx, "avx")] {
            if !available.contains(&path) {
                println!(
                    "{test}: SKIP {}: this CPU lacks {feature}; that path is not compared",
                    path.name()
                );
            }
        }
        let names: Vec<&str> = available.iter().map(|p| p.name()).collect();
        println!(
            "{test}: compared {} (dispatch picks {}) against the scalar reference",
            names.join(", "),
            kernel_name()
        );
        available
    }

    #[test]
    fn matmul_is_bitwise_the_sequential_sum_for_every_tile_path() {
        let paths = paths_compared("matmul");
        assert!(
            paths.contains(&TilePath::Baseline),
            "the portable path always runs"
        );
        for &(m, k, n) in &[
            (1, 1, 1),
            (3, 5, 7),
            (7, 13, 17),
            (13, 64, 33),
            (6, 3, 16),
            (130, 20, 10),
            (17, 40, 70),
            (9, 1, 33),
        ] {
            let a = random(m * k, 1);
            let b = random(k * n, 2);
            let want = reference(&a, &b, m, k, n);
            let am = MatRef::row_major(&a, m, k).unwrap();
            let bm = MatRef::row_major(&b, k, n).unwrap();
            let got = matmul(am, bm).unwrap();
            assert_eq!(bits(&got), bits(&want), "{m}x{k}x{n}");
            for &path in &paths {
                let mut c = vec![0.0; m * n];
                matmul_on(path, am, bm, &mut c);
                assert_eq!(bits(&c), bits(&want), "{path:?} {m}x{k}x{n}");
                // Transposed operands take the other packing branches.
                let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
                let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
                let mut c = vec![0.0; m * n];
                matmul_on(
                    path,
                    MatRef::row_major(&at, k, m).unwrap().t(),
                    MatRef::row_major(&bt, n, k).unwrap().t(),
                    &mut c,
                );
                assert_eq!(bits(&c), bits(&want), "{path:?} transposed {m}x{k}x{n}");
            }
            for (mr, nr, got) in [
                (6, 16, {
                    let mut c = vec![0.0; m * n];
                    matmul_tiles::<6, 16>(am, bm, &mut c, tile_portable::<6, 16>);
                    c
                }),
                (8, 32, {
                    let mut c = vec![0.0; m * n];
                    matmul_tiles::<8, 32>(am, bm, &mut c, tile_portable::<8, 32>);
                    c
                }),
            ] {
                assert_eq!(bits(&got), bits(&want), "{mr}x{nr} tiles {m}x{k}x{n}");
            }
        }
        println!("matmul: compared the portable 6x16 and 8x32 tiles against the scalar reference");
    }

    #[test]
    fn every_band_cut_gives_the_bits_of_the_sequential_sum() {
        // Row counts not divisible by the part count or the panel height,
        // a one-row batch, more parts than panels, and transposed views.
        let paths = paths_compared("bands");
        for &(m, k, n) in &[
            (1, 9, 33),
            (2, 5, 3),
            (7, 13, 17),
            (13, 64, 10),
            (25, 3, 40),
            (61, 17, 70),
            (128, 20, 33),
        ] {
            let a = random(m * k, 5);
            let b = random(k * n, 6);
            let want = reference(&a, &b, m, k, n);
            let am = MatRef::row_major(&a, m, k).unwrap();
            let bm = MatRef::row_major(&b, k, n).unwrap();
            let at: Vec<f32> = (0..k * m).map(|x| a[(x % m) * k + x / m]).collect();
            let bt: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
            let atm = MatRef::row_major(&at, k, m).unwrap().t();
            let btm = MatRef::row_major(&bt, n, k).unwrap().t();
            for &path in &paths {
                for parts in [1, 2, 3, 7, 16] {
                    for (av, bv, what) in [(am, bm, "plain"), (atm, btm, "transposed")] {
                        let mut c = vec![f32::NAN; m * n];
                        matmul_in_bands(path, av, bv, &mut c, parts, |_, _| {});
                        assert_eq!(
                            bits(&c),
                            bits(&want),
                            "{path:?} {what} {m}x{k}x{n} in {parts} parts"
                        );
                    }
                }
            }
        }
        // And through the pool at every thread count it may be given.
        let (m, k, n) = (77, 300, 90);
        let a = random(m * k, 7);
        let b = random(k * n, 8);
        let want = reference(&a, &b, m, k, n);
        for threads in [1, 2, 3, 7, 16] {
            crate::pool::set_threads(threads);
            let got = matmul(
                MatRef::row_major(&a, m, k).unwrap(),
                MatRef::row_major(&b, k, n).unwrap(),
            )
            .unwrap();
            assert_eq!(bits(&got), bits(&want), "{threads} threads");
        }
    }

    #[test]
    fn the_finishing_pass_sees_every_band_once_at_its_offset() {
        // A bias and a ReLU applied band by band give the bits of the same
        // pass over the whole product, for every cut.
        let (m, k, n) = (61, 30, 40);
        let a = random(m * k, 9);
        let b = random(k * n, 10);
        let bias = random(n, 11);
        let mut want = reference(&a, &b, m, k, n);
        add_rows(&mut want, &bias);
        want.iter_mut().for_each(|v| *v = v.max(0.0));
        let am = MatRef::row_major(&a, m, k).unwrap();
        let bm = MatRef::row_major(&b, k, n).unwrap();
        for path in TilePath::available() {
            for parts in [1, 2, 3, 7, 16] {
                let calls = std::sync::atomic::AtomicUsize::new(0);
                let mut c = vec![f32::NAN; m * n];
                matmul_in_bands(path, am, bm, &mut c, parts, |offset, band| {
                    assert_eq!(offset % n, 0);
                    assert_eq!(band.len() % n, 0);
                    calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    add_rows(band, &bias);
                    band.iter_mut().for_each(|v| *v = v.max(0.0));
                });
                assert_eq!(bits(&c), bits(&want), "{path:?} in {parts} parts");
                assert!(calls.into_inner() <= parts.max(1));
            }
        }
        for threads in [1, 2, 3] {
            crate::pool::set_threads(threads);
            let mut c = Vec::new();
            matmul_into_then(am, bm, &mut c, |offset, band| {
                let columns = bias.iter().cycle().skip(offset % n);
                for (v, b) in band.iter_mut().zip(columns) {
                    *v = (*v + *b).max(0.0);
                }
            })
            .unwrap();
            assert_eq!(bits(&c), bits(&want), "{threads} threads");
        }
    }

    #[test]
    fn an_empty_inner_dimension_gives_zeros() {
        let a: [f32; 0] = [];
        for path in TilePath::available() {
            let mut c = vec![f32::NAN; 6];
            matmul_on(
                path,
                MatRef::row_major(&a, 2, 0).unwrap(),
                MatRef::row_major(&a, 0, 3).unwrap(),
                &mut c,
            );
            assert_eq!(bits(&c), bits(&[0.0; 6]), "{path:?}");
        }
    }

    #[test]
    fn a_fused_multiply_add_on_any_path_would_be_caught() {
        // Two steps per element: -(1 + 2^-11) * 1, then (1 + 2^-12)^2, whose
        // exact value 1 + 2^-11 + 2^-24 rounds (ties to even) to 1 + 2^-11.
        // Multiply then add gives exactly 0; a fused multiply-add keeps the
        // 2^-24.
        let x = 1.0 + f32::EPSILON * 2048.0; // 1 + 2^-12
        let y = 1.0 + f32::EPSILON * 4096.0; // 1 + 2^-11
        let first = -y;
        let fused = x.mul_add(x, first);
        assert_eq!(fused, f32::EPSILON / 2.0, "the inputs tell FMA apart");
        assert_eq!(first + x * x, 0.0);
        // Every row and column gets the pair, in lanes and tile edges alike.
        let (m, k, n) = (19, 2, 45);
        let a: Vec<f32> = (0..m).flat_map(|_| [first, x]).collect();
        let b: Vec<f32> = [vec![1.0; n], vec![x; n]].concat();
        let want = reference(&a, &b, m, k, n);
        assert_eq!(bits(&want), bits(&vec![0.0; m * n]), "the reference");
        let am = MatRef::row_major(&a, m, k).unwrap();
        let bm = MatRef::row_major(&b, k, n).unwrap();
        for path in paths_compared("fma") {
            let mut c = vec![f32::NAN; m * n];
            matmul_on(path, am, bm, &mut c);
            assert_eq!(bits(&c), bits(&want), "{path:?}");
        }
        for (mr, nr, got) in [
            (6, 16, {
                let mut c = vec![f32::NAN; m * n];
                matmul_tiles::<6, 16>(am, bm, &mut c, tile_portable::<6, 16>);
                c
            }),
            (8, 32, {
                let mut c = vec![f32::NAN; m * n];
                matmul_tiles::<8, 32>(am, bm, &mut c, tile_portable::<8, 32>);
                c
            }),
        ] {
            assert_eq!(bits(&got), bits(&want), "portable {mr}x{nr} tiles");
        }
    }

    #[test]
    fn transposed_views_match_explicit_transposes() {
        let (m, k, n) = (5, 7, 9);
        let at = random(k * m, 3); // stored k x m
        let bt = random(n * k, 4); // stored n x k
        let a: Vec<f32> = (0..m * k).map(|x| at[(x % k) * m + x / k]).collect();
        let b: Vec<f32> = (0..k * n).map(|x| bt[(x % n) * k + x / n]).collect();
        let got = matmul(
            MatRef::row_major(&at, k, m).unwrap().t(),
            MatRef::row_major(&bt, n, k).unwrap().t(),
        )
        .unwrap();
        assert_eq!(bits(&got), bits(&reference(&a, &b, m, k, n)));
    }

    #[test]
    fn bad_shapes_are_errors() {
        let a = [0.0f32; 6];
        assert!(MatRef::row_major(&a, 2, 4).is_err());
        let am = MatRef::row_major(&a, 2, 3).unwrap();
        assert!(matches!(matmul(am, am), Err(KernelError::Shape { .. })));
    }

    #[test]
    fn column_sums_add_rows_in_order() {
        let data = [1.0, 2.0, 1e8, 3.0, -1e8, 4.0];
        // (1 + 1e8) - 1e8 = 0 in f32: the order is visible in the result.
        assert_eq!(column_sums(&data, 2), vec![0.0, 9.0]);
        let mut m = [1.0, 2.0, 3.0, 4.0];
        add_rows(&mut m, &[10.0, 20.0]);
        assert_eq!(m, [11.0, 22.0, 13.0, 24.0]);
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}
