//! The engine's worker threads: one persistent pool that the kernels and
//! the optimizer hand disjoint parts of an output to.
//!
//! Threads change how fast a step runs, never its bits: work is only ever
//! split by *output* (rows of a product, ranges of an element-wise update),
//! each part is computed by the same code whichever thread runs it, and no
//! floating-point sum is ever split or combined across parts. So the
//! partition may depend on the thread count and the sizes, and a part may
//! run on any thread in any order. This module must never hand out work
//! whose result depends on another part's result, on which thread runs it,
//! or on timing.
//!
//! The pool is process-wide: the CLIs set its size once from `--threads`,
//! the node from its replay-thread setting; until then it has one thread
//! per available core. Concurrent callers (a node replaying several
//! segments, parallel tests) share it; a worker waiting for a part may run
//! another caller's work meanwhile, which can delay a result but never
//! change it.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// A pool of `threads` workers. Work started with [`install`] runs on one
/// of them, and its parts on it and the others; other callers hand parts to
/// the workers and take parts themselves.
struct Pool {
    threads: usize,
    workers: Option<Arc<rayon::ThreadPool>>,
}

static POOL: Mutex<Option<Pool>> = Mutex::new(None);

/// One thread per core this process may use (1 when that is unknown).
pub fn available_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn build(threads: usize) -> Pool {
    let threads = threads.max(1);
    let workers = if threads > 1 {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("engine-{i}"))
            .build()
            .ok()
            .map(Arc::new)
    } else {
        None
    };
    // A pool that could not be started leaves the engine on one thread:
    // slower, the same bits.
    let threads = if workers.is_some() { threads } else { 1 };
    Pool { threads, workers }
}

/// Sets the engine's thread count (0 is taken as 1). Results are the same
/// for every count; only speed changes. Work already running finishes on
/// the pool it started on.
pub fn set_threads(threads: usize) {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    if pool.as_ref().is_some_and(|p| p.threads == threads.max(1)) {
        return;
    }
    *pool = Some(build(threads));
}

/// The engine's thread count.
pub fn threads() -> usize {
    current().0
}

fn current() -> (usize, Option<Arc<rayon::ThreadPool>>) {
    let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
    let pool = pool.get_or_insert_with(|| build(available_threads()));
    (pool.threads, pool.workers.clone())
}

/// Runs `f` on one of the pool's workers and returns its result (on the
/// calling thread when the pool has one thread). A step's forward and
/// backward pass and its optimizer update run this way, so that the thread
/// that splits each product is itself a worker: it pushes the parts it
/// hands out onto its own queue and takes back any that no other worker
/// has started, instead of waiting, as a thread outside the pool must, for
/// a worker to be scheduled and run them. On a busy machine, where a
/// sleeping worker may wait a scheduler slice for a core, that wait came
/// with every product. Where `f` runs never reaches a bit.
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    match current().1 {
        Some(workers) => workers.install(f),
        None => f(),
    }
}

/// [`install`] when `largest_cost`, the operations of the largest piece of
/// work `f` may split, is enough for [`parts_for`] to split it; otherwise
/// `f` on the calling thread. Handing `f` to a worker costs a wake-up of
/// its own, more than a small job's whole step.
pub fn install_for<R: Send>(largest_cost: usize, f: impl FnOnce() -> R + Send) -> R {
    if parts_for(largest_cost, 1) > 1 {
        install(f)
    } else {
        f()
    }
}

/// How many parts to cut `units` independent units of work into, each unit
/// costing about `unit_cost` operations: at most one per thread, at most one
/// per unit, and none smaller than [`MIN_PART_COST`] operations (below that
/// waking a worker costs more than it saves). Never 0.
pub fn parts_for(units: usize, unit_cost: usize) -> usize {
    let total = units.saturating_mul(unit_cost.max(1));
    let by_size = (total / MIN_PART_COST).max(1);
    threads().min(units.max(1)).min(by_size)
}

/// The smallest share of an operation worth a thread, in multiply-adds (or
/// weighted element updates for element-wise work), about 20 µs of one
/// core's work: handing a part to a sleeping worker and waiting for it
/// costs some microseconds on an idle machine and far more on a busy one,
/// where a woken worker may wait for a core. Measured with `bench`: the
/// digits job's products (64 rows, at most 128 × 128, about 1M
/// multiply-adds) ran slower on two threads than on one, so they stay
/// below it and run on the calling thread; the 784-256-256-10 job's
/// products (4M to 26M) are split.
pub const MIN_PART_COST: usize = 1 << 21;

/// Runs `work(part)` for every part in `0..parts`, spread over the pool,
/// and returns when all are done. The calling thread and up to
/// `parts - 1` workers each claim the next unclaimed part until none is
/// left, so a worker that is slow to wake (a busy machine) costs only the
/// parts it did not take: the caller goes on with them. Which thread runs
/// a part never matters, since a part's work is fixed by its index.
pub fn run_parts(parts: usize, work: impl Fn(usize) + Sync) {
    if parts <= 1 {
        if parts == 1 {
            work(0);
        }
        return;
    }
    let (threads, workers) = current();
    let Some(workers) = workers else {
        (0..parts).for_each(&work);
        return;
    };
    let next = AtomicUsize::new(0);
    let claim = || loop {
        let part = next.fetch_add(1, Ordering::Relaxed);
        if part >= parts {
            break;
        }
        work(part);
    };
    let claim = &claim;
    let helpers = threads.min(parts).saturating_sub(1);
    workers.in_place_scope(|scope| {
        for _ in 0..helpers {
            scope.spawn(move |_| claim());
        }
        claim();
    });
}

/// The length of each of the `parts` chunks [`for_each_chunk`] cuts `len`
/// elements into (the last may be shorter): a multiple of `align`, never 0.
pub fn chunk_len(len: usize, align: usize, parts: usize) -> usize {
    let align = align.max(1);
    let units = len.div_ceil(align).max(1);
    units.div_ceil(parts.clamp(1, units)).saturating_mul(align)
}

/// Splits `data` into `parts` contiguous chunks whose lengths are multiples
/// of `align` (the last takes the rest) and runs `work(offset, chunk)` on
/// each, spread over the pool. `offset` is the chunk's first index in
/// `data`. The cut depends only on the lengths and `parts`.
pub fn for_each_chunk<T: Send>(
    data: &mut [T],
    align: usize,
    parts: usize,
    work: impl Fn(usize, &mut [T]) + Sync,
) {
    let align = align.max(1);
    let units = data.len().div_ceil(align);
    let parts = parts.clamp(1, units.max(1));
    if parts == 1 {
        work(0, data);
        return;
    }
    let per_part = chunk_len(data.len(), align, parts);
    let chunks: Vec<(usize, Mutex<&mut [T]>)> = data
        .chunks_mut(per_part)
        .enumerate()
        .map(|(i, c)| (i.saturating_mul(per_part), Mutex::new(c)))
        .collect();
    run_parts(chunks.len(), |part| {
        if let Some((offset, chunk)) = chunks.get(part) {
            let mut chunk = chunk.lock().unwrap_or_else(PoisonError::into_inner);
            work(*offset, &mut chunk);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installed_work_runs_once_and_splits_as_from_outside() {
        for threads in [1, 2, 3] {
            set_threads(threads);
            for cost in [0, MIN_PART_COST, 64 * MIN_PART_COST] {
                let hits: Vec<Mutex<u32>> = (0..7).map(|_| Mutex::new(0)).collect();
                let got = install_for(cost, || {
                    run_parts(hits.len(), |p| *hits[p].lock().unwrap() += 1);
                    cost + 1
                });
                assert_eq!(got, cost + 1);
                assert!(
                    hits.iter().all(|h| *h.lock().unwrap() == 1),
                    "{threads} {cost}"
                );
            }
        }
    }

    #[test]
    fn every_part_runs_once_and_chunks_tile_the_data() {
        for parts in [1, 2, 3, 7, 16] {
            let hits: Vec<Mutex<u32>> = (0..parts).map(|_| Mutex::new(0)).collect();
            run_parts(parts, |p| *hits[p].lock().unwrap() += 1);
            assert!(hits.iter().all(|h| *h.lock().unwrap() == 1), "{parts}");
            for (len, align) in [(0, 1), (1, 8), (10, 3), (100, 8), (129, 8)] {
                let mut data = vec![usize::MAX; len];
                for_each_chunk(&mut data, align, parts, |offset, chunk| {
                    assert_eq!(offset % align, 0);
                    for (i, v) in chunk.iter_mut().enumerate() {
                        *v = offset + i;
                    }
                });
                assert_eq!(data, (0..len).collect::<Vec<_>>(), "{len} {align} {parts}");
            }
        }
    }
}
