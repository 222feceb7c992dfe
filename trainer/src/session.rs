//! A resumable training run: the state S_j after each segment of a job, its
//! canonical bytes and digest, and the optimizer steps from one state to the
//! next.
//!
//! Optimistic verification cuts a job's T optimizer steps into
//! `spec.segments` segments ([`protocol::segments::segment_steps`]). A worker
//! commits to the digest of the state after every segment, and a challenger
//! proves fraud by replaying one segment from the state before it. So a
//! [`Session`] rebuilt from the bytes of S_j must continue bit for bit as the
//! run that wrote them: the state holds every value a later step reads
//! (parameters, optimizer buffers and running beta powers, the step, epoch and
//! batch counters, the epoch's row order, the "batches" generator and the
//! epoch's losses so far). This module must never let anything but those
//! bytes, the spec and the dataset (and, for S_0 only, the seed) reach a step,
//! and never accept bytes it could not have written itself:
//! [`Session::from_state`] refuses anything that is not the canonical encoding
//! of a state of this spec and dataset, and never panics or allocates on a
//! length it has not checked against the spec.
//!
//! # State encoding (version 1)
//!
//! Little-endian throughout; every f32 as its IEEE bits.
//!
//! | field          | type                    | meaning                                              |
//! |----------------|-------------------------|------------------------------------------------------|
//! | magic          | 8 bytes `GCSTAT01`      | format and version                                   |
//! | engine version | u32                     | [`protocol::job::ENGINE_VERSION`]                    |
//! | step           | u64                     | optimizer steps done                                 |
//! | epoch          | u32                     | epochs begun: 0 in S_0, then `1..=epochs`            |
//! | position       | u32                     | batches of that epoch done: 0 in S_0, then `1..=B`   |
//! | batch rng      | u64                     | state of the seed's "batches" SplitMix64 stream      |
//! | rows           | u32, then u32 × rows    | the epoch's row order (S_0: `0, 1, 2, …`)            |
//! | losses         | u32, then f32 × count   | the epoch's batch losses so far (count = position)   |
//! | optimizer      | u8                      | 0 SGD, 1 Adam: the spec's                            |
//! | parameters     | u32, then per tensor    | tensors in name order, each u64 count + f32 values   |
//! | SGD            | per tensor              | velocity: u64 count + f32 values                     |
//! | Adam           | f32, f32, per tensor ×2 | `beta1^t`, `beta2^t`, then every first moment, then every second moment |
//!
//! `B` is the number of batches per epoch, and `step = (epoch − 1)·B +
//! position` once training has begun. The state's digest is SHA-256 of these
//! bytes, computed by streaming them into the hash.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::arithmetic_side_effects,
    clippy::as_conversions
)]

use std::fmt;
use std::ops::Range;

use candle_core::{CpuStorage, Device, Storage, Tensor, Var};
use protocol::job::ENGINE_VERSION;
use protocol::segments::segment_steps;
use protocol::{Digest, F32Bits, FinalOutcome, JobSpec, Loss, Optimizer, SegmentLeaf, TestMetric};
use sha2::{Digest as _, Sha256};

use crate::dataset::Dataset;
use crate::model::{param_slots, Mlp, ModelError, TrainedModel};
use crate::ops::WeightPenalty;
use crate::optim::OptimizerState;
use crate::prep::{prepare, Part, Prepared, Scaling};
use crate::rng::SplitMix64;
use crate::run::{check, evaluate, spec_error, Progress, StateError, TrainError};
use crate::step::{BatchTargets, StepWorkspace};

/// The first bytes of an encoded state: a format name and version, so that a
/// future layout can never be mistaken for this one.
pub const STATE_MAGIC: &[u8; 8] = b"GCSTAT01";
const OPTIMIZER_SGD: u8 = 0;
const OPTIMIZER_ADAM: u8 = 1;

fn field(what: &'static str, got: impl fmt::Display, expected: impl fmt::Display) -> StateError {
    StateError::Field {
        what,
        got: got.to_string(),
        expected: expected.to_string(),
    }
}

/// Where encoded bytes go: a buffer, or straight into a hash so that a
/// digest never needs the whole state in memory twice.
trait Sink {
    fn put(&mut self, bytes: &[u8]);
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

impl Sink for Sha256 {
    fn put(&mut self, bytes: &[u8]) {
        self.update(bytes);
    }
}

/// Values per write: large enough that the hash sees long runs, small
/// enough to live on the stack.
const CHUNK: usize = 1024;

/// A u32 from the spec or the state bytes as a length or index (lossless on
/// the 64-bit targets the engine runs on).
fn as_index(value: u32) -> usize {
    usize::try_from(value).unwrap_or(usize::MAX)
}

/// A length as the u64 the encoding counts in (lossless on 64-bit targets).
fn wide_count(len: usize) -> u64 {
    u64::try_from(len).unwrap_or(u64::MAX)
}

/// A row, position or count as the u32 the encoding holds. Rows and
/// positions are below the dataset's u32 row count, so this never
/// saturates; were it to, the count would disagree with what follows and
/// the state would be refused on reading, never silently truncated.
fn narrow_count(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn put_f32s(out: &mut impl Sink, values: &[f32]) {
    let mut buffer = [0u8; 4 * CHUNK];
    for chunk in values.chunks(CHUNK) {
        for (dst, v) in buffer.chunks_exact_mut(4).zip(chunk) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        out.put(
            buffer
                .get(..chunk.len().saturating_mul(4))
                .unwrap_or_default(),
        );
    }
}

fn put_u32s(out: &mut impl Sink, values: impl ExactSizeIterator<Item = u32>) {
    let mut buffer = [0u8; 4 * CHUNK];
    let mut filled = 0usize;
    for v in values {
        // `filled` stays at most the buffer's length: it is reset on
        // reaching it.
        if let Some(dst) = buffer.get_mut(filled..filled.saturating_add(4)) {
            dst.copy_from_slice(&v.to_le_bytes());
        }
        filled = filled.saturating_add(4);
        if filled == buffer.len() {
            out.put(&buffer);
            filled = 0;
        }
    }
    out.put(buffer.get(..filled).unwrap_or_default());
}

/// A counted f32 array: u64 count, then the values.
fn put_tensor(out: &mut impl Sink, values: &[f32]) {
    out.put(&wide_count(values.len()).to_le_bytes());
    put_f32s(out, values);
}

/// Reads fields front to back, checking every length against what is left
/// before taking or allocating anything.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, what: &'static str, len: usize) -> Result<&'a [u8], StateError> {
        let slice = self
            .at
            .checked_add(len)
            .and_then(|end| self.bytes.get(self.at..end))
            .ok_or(StateError::Truncated {
                what,
                at: self.at,
                needed: len,
            })?;
        // `at + len` was just checked to be within the bytes.
        self.at = self.at.saturating_add(len);
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], StateError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(what, N)?);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, StateError> {
        Ok(u8::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, StateError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, StateError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn f32(&mut self, what: &'static str) -> Result<f32, StateError> {
        Ok(f32::from_le_bytes(self.array(what)?))
    }

    /// `count` f32 values; `count` comes from the spec, and the bytes are
    /// taken (so known to exist) before the vector is allocated.
    fn f32s(&mut self, what: &'static str, count: usize) -> Result<Vec<f32>, StateError> {
        let len = count.checked_mul(4).ok_or(StateError::Truncated {
            what,
            at: self.at,
            needed: usize::MAX,
        })?;
        let bytes = self.take(what, len)?;
        Ok(bytes
            .chunks_exact(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b.copy_from_slice(c);
                f32::from_le_bytes(b)
            })
            .collect())
    }

    /// A counted f32 array whose count must be `expected`.
    fn tensor(&mut self, what: &'static str, expected: usize) -> Result<Vec<f32>, StateError> {
        let count = self.u64(what)?;
        if u64::try_from(expected).ok() != Some(count) {
            return Err(field(
                what,
                format!("{count} values"),
                format!("{expected}"),
            ));
        }
        self.f32s(what, expected)
    }

    fn finish(self) -> Result<(), StateError> {
        match self.bytes.len().saturating_sub(self.at) {
            0 => Ok(()),
            got => Err(StateError::Trailing { got }),
        }
    }
}

/// What the spec and the dataset fix before any state exists.
struct Setup {
    features: usize,
    train: Part,
    validation: Part,
    test: Part,
    scaling: Scaling,
    widths: Vec<usize>,
    batches_per_epoch: u32,
    total_steps: u64,
    penalty: Option<WeightPenalty>,
}

impl Setup {
    fn new(spec: &JobSpec, dataset: &Dataset) -> Result<Self, TrainError> {
        check(spec, dataset)?;
        let Prepared {
            features,
            train,
            validation,
            test,
            scaling,
        } = prepare(dataset, &spec.split, spec.base_seed)?;
        let widths: Vec<usize> = std::iter::once(features)
            .chain(spec.model.hidden.iter().map(|w| as_index(*w)))
            .chain(std::iter::once(as_index(spec.outputs())))
            .collect();
        let batches = train.rows.div_ceil(as_index(spec.batch_size).max(1));
        // Training rows come from a u32 row count, so this always fits.
        let batches_per_epoch = u32::try_from(batches)
            .map_err(|_| spec_error("batches per epoch", batches, "below 2^32"))?;
        // Two u32 factors: the product cannot wrap a u64.
        let total_steps = u64::from(batches_per_epoch).wrapping_mul(u64::from(spec.epochs));
        if spec.segments == 0 || u64::from(spec.segments) > total_steps {
            return Err(spec_error(
                "segments",
                spec.segments,
                format!("1..={total_steps} (at least one of the job's {total_steps} steps each)"),
            ));
        }
        let (l1, l2) = (spec.l1.to_f32(), spec.l2.to_f32());
        Ok(Self {
            features,
            train,
            validation,
            test,
            scaling,
            widths,
            batches_per_epoch,
            total_steps,
            penalty: (l1 != 0.0 || l2 != 0.0).then_some(WeightPenalty { l1, l2 }),
        })
    }

    fn layers(&self) -> usize {
        self.widths.len().saturating_sub(1)
    }

    /// Element count of each parameter, in [`Mlp::named_params`] order.
    fn param_sizes(&self) -> Vec<usize> {
        param_slots(self.layers())
            .into_iter()
            .map(|(layer, is_bias)| {
                let fan_in = self.widths.get(layer).copied().unwrap_or(0);
                let fan_out = self
                    .widths
                    .get(layer.saturating_add(1))
                    .copied()
                    .unwrap_or(0);
                if is_bias {
                    fan_out
                } else {
                    // The size of a tensor the model already holds.
                    fan_in.saturating_mul(fan_out)
                }
            })
            .collect()
    }
}

/// `beta^steps` as the optimizer's running product computes it, step by
/// step in f32 (a `powf` would round differently).
fn running_power(beta: f32, steps: u64) -> f32 {
    let mut power = 1.0f32;
    for _ in 0..steps {
        power *= beta;
    }
    power
}

/// Runs `f` on a parameter's values in place, without copying them.
fn with_values<R>(var: &Var, f: impl FnOnce(&[f32]) -> R) -> Result<R, ModelError> {
    let (storage, layout) = var.as_tensor().storage_and_layout();
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| ModelError::Engine("parameter is not contiguous".into()))?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(data)) => data
            .get(start..end)
            .map(f)
            .ok_or_else(|| ModelError::Engine("parameter layout out of range".into())),
        _ => Err(ModelError::Engine(
            "parameters must be f32 on the CPU".into(),
        )),
    }
}

/// What a finished run yields: the model, what a worker claims on chain for
/// it, and the validation metric (`Accuracy { 0, 0 }` when that part is
/// empty).
#[derive(Debug)]
pub struct FinishedRun {
    /// The weights and scaling.
    pub model: TrainedModel,
    /// Weights digest, last-epoch mean train loss and test metric.
    pub outcome: FinalOutcome,
    /// The metric on the validation part.
    pub validation: TestMetric,
}

/// A training run that can stop after any segment and resume from the
/// bytes of its state. After an error it must be dropped: a failed step may
/// have moved part of the state.
pub struct Session {
    spec: JobSpec,
    setup: Setup,
    mlp: Mlp,
    optimizer: OptimizerState,
    /// Optimizer steps done.
    step: u64,
    /// Epochs begun; 0 before the first step.
    epoch: u32,
    /// Batches of the current epoch done.
    position: u32,
    /// The current epoch's row order, reshuffled in place at each epoch.
    order: Vec<usize>,
    batch_rng: SplitMix64,
    /// The current epoch's batch losses so far.
    epoch_losses: Vec<f32>,
    // Reused buffers; never part of the state.
    workspace: StepWorkspace,
    x_batch: Vec<f32>,
    labels_batch: Vec<u32>,
    targets_batch: Vec<f32>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("step", &self.step)
            .field("total_steps", &self.setup.total_steps)
            .field("epoch", &self.epoch)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// S_0 of `spec` on `dataset` with training seed `seed` (for a chain job:
    /// `protocol::job::worker_seed(job, worker, spec.base_seed)`): weights
    /// from the seed's "init" stream, zero optimizer state, rows in dataset
    /// order and the seed's "batches" stream untouched.
    pub fn new(spec: &JobSpec, dataset: &Dataset, seed: u64) -> Result<Self, TrainError> {
        let setup = Setup::new(spec, dataset)?;
        let mlp = Mlp::init(&setup.widths, seed)?;
        let optimizer = OptimizerState::new(&spec.optimizer, &setup.param_sizes());
        let order = (0..setup.train.rows).collect();
        Ok(Self::assemble(
            spec,
            setup,
            mlp,
            optimizer,
            (0, 0, 0),
            order,
            SplitMix64::for_purpose(seed, "batches"),
            Vec::new(),
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        spec: &JobSpec,
        setup: Setup,
        mlp: Mlp,
        optimizer: OptimizerState,
        (step, epoch, position): (u64, u32, u32),
        order: Vec<usize>,
        batch_rng: SplitMix64,
        epoch_losses: Vec<f32>,
    ) -> Self {
        Self {
            spec: spec.clone(),
            setup,
            mlp,
            optimizer,
            step,
            epoch,
            position,
            order,
            batch_rng,
            epoch_losses,
            workspace: StepWorkspace::new(),
            x_batch: Vec::new(),
            labels_batch: Vec::new(),
            targets_batch: Vec::new(),
        }
    }

    /// Resumes from the bytes of a state of `spec` on `dataset` (written by
    /// [`Self::state_bytes`]). Anything else is refused with a
    /// [`StateError`]: wrong magic or engine, truncated or trailing bytes,
    /// counters that do not fit the spec or each other, a row order that is
    /// not a permutation of the training rows, non-finite losses, tensors of
    /// the wrong size, another optimizer, or beta powers that are not those
    /// of the step.
    pub fn from_state(spec: &JobSpec, dataset: &Dataset, bytes: &[u8]) -> Result<Self, TrainError> {
        let setup = Setup::new(spec, dataset)?;
        let mut r = Reader { bytes, at: 0 };
        let magic = r.take("magic", STATE_MAGIC.len())?;
        if magic != STATE_MAGIC {
            return Err(field("magic", hex::encode(magic), hex::encode(STATE_MAGIC)).into());
        }
        let engine = r.u32("engine version")?;
        if engine != ENGINE_VERSION {
            return Err(field("engine version", engine, ENGINE_VERSION).into());
        }
        let step = r.u64("step")?;
        let epoch = r.u32("epoch")?;
        let position = r.u32("position")?;
        let batch_rng = SplitMix64::new(r.u64("batch generator")?);
        let per_epoch = setup.batches_per_epoch;
        if epoch > spec.epochs {
            return Err(field("epoch", epoch, format!("at most {}", spec.epochs)).into());
        }
        if epoch == 0 {
            if step != 0 || position != 0 {
                return Err(field(
                    "step and position",
                    format!("{step} and {position} in epoch 0"),
                    "0 and 0 before the first epoch",
                )
                .into());
            }
        } else {
            if position == 0 || position > per_epoch {
                return Err(field("position", position, format!("1..={per_epoch}")).into());
            }
            // `epoch` is at least 1 here, and (u32 × u32) + u32 fits a u64.
            let expected = u64::from(epoch.saturating_sub(1))
                .wrapping_mul(u64::from(per_epoch))
                .wrapping_add(u64::from(position));
            if step != expected {
                return Err(field(
                    "step",
                    step,
                    format!("{expected} (epoch {epoch}, batch {position} of {per_epoch})"),
                )
                .into());
            }
        }

        let rows = setup.train.rows;
        let declared = r.u32("row count")?;
        if usize::try_from(declared).ok() != Some(rows) {
            return Err(field("row count", declared, rows).into());
        }
        // Take the bytes first: the allocations below are then bounded by
        // the input, as well as by the spec.
        let order_bytes = r.take("row order", rows.saturating_mul(4))?;
        let mut seen = vec![false; rows];
        let mut order = Vec::with_capacity(rows);
        for (at, chunk) in order_bytes.chunks_exact(4).enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(chunk);
            let row = as_index(u32::from_le_bytes(b));
            match seen.get_mut(row) {
                Some(slot) if !*slot => *slot = true,
                _ => {
                    return Err(field(
                        "row order",
                        format!("row {row} at position {at}"),
                        format!("each of the {rows} training rows once"),
                    )
                    .into())
                }
            }
            order.push(row);
        }
        if epoch == 0 && order.iter().enumerate().any(|(i, row)| i != *row) {
            return Err(field(
                "row order",
                "a shuffled order",
                "0, 1, 2, … before the first epoch",
            )
            .into());
        }

        let count = r.u32("loss count")?;
        if count != position {
            return Err(field("loss count", count, position).into());
        }
        let epoch_losses = r.f32s("losses", as_index(position))?;
        if let Some((i, loss)) = epoch_losses
            .iter()
            .enumerate()
            .find(|(_, l)| !l.is_finite())
        {
            return Err(field(
                "losses",
                format!("{loss} at batch {}", i.saturating_add(1)),
                "finite",
            )
            .into());
        }

        let tag = r.u8("optimizer")?;
        let expected_tag = match spec.optimizer {
            Optimizer::Sgd { .. } => OPTIMIZER_SGD,
            Optimizer::Adam { .. } => OPTIMIZER_ADAM,
        };
        if tag != expected_tag {
            return Err(field("optimizer", tag, expected_tag).into());
        }
        let sizes = setup.param_sizes();
        let tensors = r.u32("tensor count")?;
        if usize::try_from(tensors).ok() != Some(sizes.len()) {
            return Err(field("tensor count", tensors, sizes.len()).into());
        }
        let read_all = |r: &mut Reader<'_>, what| -> Result<Vec<Vec<f32>>, StateError> {
            sizes.iter().map(|n| r.tensor(what, *n)).collect()
        };
        let params = read_all(&mut r, "parameter")?;
        let mut optimizer = OptimizerState::new(&spec.optimizer, &sizes);
        match &mut optimizer {
            OptimizerState::Sgd { velocity, .. } => *velocity = read_all(&mut r, "velocity")?,
            OptimizerState::Adam {
                beta1,
                beta2,
                beta1_power,
                beta2_power,
                m,
                v,
                ..
            } => {
                for (what, beta, power) in [
                    ("beta1 power", *beta1, &mut *beta1_power),
                    ("beta2 power", *beta2, &mut *beta2_power),
                ] {
                    let got = r.f32(what)?;
                    let expected = running_power(beta, step);
                    if got.to_bits() != expected.to_bits() {
                        return Err(
                            field(what, got, format!("{expected} after {step} steps")).into()
                        );
                    }
                    *power = got;
                }
                *m = read_all(&mut r, "first moment")?;
                *v = read_all(&mut r, "second moment")?;
            }
        }
        r.finish()?;

        let mlp = rebuild_mlp(&setup, params)?;
        Ok(Self::assemble(
            spec,
            setup,
            mlp,
            optimizer,
            (step, epoch, position),
            order,
            batch_rng,
            epoch_losses,
        ))
    }

    /// Optimizer steps done.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// Optimizer steps in the whole run.
    pub fn total_steps(&self) -> u64 {
        self.setup.total_steps
    }

    /// The job this session trains.
    pub fn spec(&self) -> &JobSpec {
        &self.spec
    }

    /// Trainable parameters.
    pub fn params(&self) -> u64 {
        wide_count(self.mlp.parameter_count())
    }

    /// The steps of segment `index` (`1..=spec.segments`).
    pub fn segment_range(&self, index: u32) -> Result<Range<u64>, TrainError> {
        segment_steps(self.setup.total_steps, self.spec.segments, index).ok_or_else(|| {
            spec_error(
                "segment index",
                index,
                format!("1..={}", self.spec.segments),
            )
        })
    }

    fn encode(&self, out: &mut impl Sink) -> Result<(), TrainError> {
        out.put(STATE_MAGIC);
        out.put(&ENGINE_VERSION.to_le_bytes());
        out.put(&self.step.to_le_bytes());
        out.put(&self.epoch.to_le_bytes());
        out.put(&self.position.to_le_bytes());
        out.put(&self.batch_rng.state().to_le_bytes());
        // Rows and positions are below the dataset's u32 row count.
        out.put(&narrow_count(self.order.len()).to_le_bytes());
        put_u32s(out, self.order.iter().map(|r| narrow_count(*r)));
        out.put(&narrow_count(self.epoch_losses.len()).to_le_bytes());
        put_f32s(out, &self.epoch_losses);
        let named = self.mlp.named_params();
        let tag = match self.optimizer {
            OptimizerState::Sgd { .. } => OPTIMIZER_SGD,
            OptimizerState::Adam { .. } => OPTIMIZER_ADAM,
        };
        out.put(&[tag]);
        out.put(&narrow_count(named.len()).to_le_bytes());
        for (_, var) in &named {
            with_values(var, |values| put_tensor(out, values))?;
        }
        match &self.optimizer {
            OptimizerState::Sgd { velocity, .. } => {
                velocity.iter().for_each(|b| put_tensor(out, b));
            }
            OptimizerState::Adam {
                beta1_power,
                beta2_power,
                m,
                v,
                ..
            } => {
                out.put(&beta1_power.to_le_bytes());
                out.put(&beta2_power.to_le_bytes());
                m.iter().chain(v).for_each(|b| put_tensor(out, b));
            }
        }
        Ok(())
    }

    /// The canonical bytes of the current state.
    pub fn state_bytes(&self) -> Result<Vec<u8>, TrainError> {
        let values = self.setup.param_sizes().iter().sum::<usize>();
        let buffers = match self.optimizer {
            OptimizerState::Sgd { .. } => 2usize,
            OptimizerState::Adam { .. } => 3,
        };
        let mut out = Vec::with_capacity(
            // Only a capacity hint: saturating is harmless.
            buffers
                .saturating_mul(values)
                .saturating_add(self.order.len())
                .saturating_add(self.epoch_losses.len())
                .saturating_mul(4)
                .saturating_add(64),
        );
        self.encode(&mut out)?;
        Ok(out)
    }

    /// SHA-256 of [`Self::state_bytes`], without building them.
    pub fn state_digest(&self) -> Result<Digest, TrainError> {
        let mut hasher = Sha256::new();
        self.encode(&mut hasher)?;
        Ok(Digest(hasher.finalize().into()))
    }

    /// Runs segment `index` (exactly the steps of
    /// [`protocol::segments::segment_steps`]; the session must stand at its
    /// first step) and returns its leaf: the digest of the state after it
    /// and the mean of its batch losses.
    pub fn run_segment(
        &mut self,
        index: u32,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<SegmentLeaf, TrainError> {
        let loss = self.advance(index, on_progress)?;
        Ok(SegmentLeaf {
            state: self.state_digest()?,
            loss,
        })
    }

    /// Runs segment `index` and returns the mean of its batch losses.
    pub(crate) fn advance(
        &mut self,
        index: u32,
        on_progress: &mut dyn FnMut(&Progress),
    ) -> Result<F32Bits, TrainError> {
        let range = self.segment_range(index)?;
        if range.start != self.step {
            return Err(TrainError::SegmentOrder {
                index,
                step: self.step,
                expected: range.start,
            });
        }
        let Self {
            spec,
            setup,
            mlp,
            optimizer,
            step,
            epoch,
            position,
            order,
            batch_rng,
            epoch_losses,
            workspace,
            x_batch,
            labels_batch,
            targets_batch,
        } = self;
        let features = setup.features;
        let train = &setup.train;
        let batch = as_index(spec.batch_size).max(1);
        let params: Vec<&Var> = mlp.named_params().into_iter().map(|(_, v)| v).collect();
        let mut segment_losses =
            Vec::with_capacity(usize::try_from(range.end.saturating_sub(range.start)).unwrap_or(0));
        while *step < range.end {
            if *epoch == 0 || *position == setup.batches_per_epoch {
                // Epochs and steps are bounded by the spec's u32 epochs and
                // its u64 step count, checked when the session was made.
                *epoch = epoch.saturating_add(1);
                batch_rng.shuffle(order);
                *position = 0;
                epoch_losses.clear();
            }
            let start = as_index(*position).saturating_mul(batch);
            let rows = order
                .get(start..start.saturating_add(batch).min(order.len()))
                .unwrap_or_default();
            x_batch.clear();
            for &r in rows {
                x_batch.extend_from_slice(
                    train
                        .x
                        .get(
                            r.saturating_mul(features)
                                ..r.saturating_add(1).saturating_mul(features),
                        )
                        .unwrap_or_default(),
                );
            }
            let targets = match spec.loss {
                Loss::CrossEntropy => {
                    labels_batch.clear();
                    labels_batch.extend(
                        rows.iter()
                            .map(|&r| train.labels.get(r).copied().unwrap_or(0)),
                    );
                    BatchTargets::Labels(labels_batch)
                }
                Loss::Mse => {
                    targets_batch.clear();
                    targets_batch.extend(
                        rows.iter()
                            .map(|&r| train.targets.get(r).copied().unwrap_or(0.0)),
                    );
                    BatchTargets::Values(targets_batch)
                }
            };
            let loss = workspace.gradients(mlp, x_batch, rows.len(), targets, setup.penalty)?;
            *step = step.saturating_add(1);
            if !loss.is_finite() {
                return Err(TrainError::Diverged { step: *step, loss });
            }
            optimizer.step_slices(&params, &workspace.named_grads(mlp))?;
            epoch_losses.push(loss);
            segment_losses.push(loss);
            *position = position.saturating_add(1);
            let last = *position == setup.batches_per_epoch;
            on_progress(&Progress {
                epoch: *epoch,
                epochs: spec.epochs,
                step: *step,
                total_steps: setup.total_steps,
                batch_loss: loss,
                epoch_loss: last.then(|| mean(epoch_losses)),
            });
        }
        Ok(F32Bits::from_f32(mean(&segment_losses)))
    }

    /// Ends a run that has taken all its steps: the weights digest, the mean
    /// batch loss of the last epoch, and the test and validation metrics.
    pub fn finish(self) -> Result<FinishedRun, TrainError> {
        if self.step != self.setup.total_steps {
            return Err(TrainError::Unfinished {
                step: self.step,
                total: self.setup.total_steps,
            });
        }
        let train_loss = mean(&self.epoch_losses);
        let model = TrainedModel {
            task: self.spec.task,
            mlp: self.mlp,
            scaling: self.setup.scaling,
        };
        let metric = evaluate(&model, &self.setup.test)?;
        let validation = evaluate(&model, &self.setup.validation)?;
        Ok(FinishedRun {
            outcome: FinalOutcome {
                weights: model.digest()?,
                train_loss: F32Bits::from_f32(train_loss),
                metric,
            },
            validation,
            model,
        })
    }
}

/// The mean of batch losses: a left-to-right f32 sum over the count.
fn mean(losses: &[f32]) -> f32 {
    crate::kernels::sum(losses.iter().copied()) / crate::ops::count_f32(losses.len().max(1))
}

/// The network from decoded parameter values in [`Mlp::named_params`] order.
fn rebuild_mlp(setup: &Setup, params: Vec<Vec<f32>>) -> Result<Mlp, TrainError> {
    let layers = setup.layers();
    let mut weights: Vec<Option<Vec<f32>>> = vec![None; layers];
    let mut biases: Vec<Option<Vec<f32>>> = vec![None; layers];
    for ((layer, is_bias), values) in param_slots(layers).into_iter().zip(params) {
        let slot = if is_bias {
            biases.get_mut(layer)
        } else {
            weights.get_mut(layer)
        };
        if let Some(slot) = slot {
            *slot = Some(values);
        }
    }
    let mut pairs = Vec::with_capacity(layers);
    for (layer, (w, b)) in weights.into_iter().zip(biases).enumerate() {
        let fan_in = setup.widths.get(layer).copied().unwrap_or(0);
        let fan_out = setup
            .widths
            .get(layer.saturating_add(1))
            .copied()
            .unwrap_or(0);
        let (Some(w), Some(b)) = (w, b) else {
            return Err(ModelError::Engine(format!("layer {layer} lost its parameters")).into());
        };
        pairs.push((
            Tensor::from_vec(w, (fan_in, fan_out), &Device::Cpu)?,
            Tensor::from_vec(b, fan_out, &Device::Cpu)?,
        ));
    }
    Ok(Mlp::from_tensors(pairs)?)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects, clippy::as_conversions)]
mod tests {
    use super::*;
    use crate::dataset::{parse_csv, DatasetLimits, TaskKind};
    use crate::settings::{OptimizerKind, TrainSettings};
    use proptest::prelude::*;

    fn dataset(kind: TaskKind) -> Dataset {
        let mut text = String::from("a,b,c,y\n");
        for i in 0..50u32 {
            let (a, b, c) = (i % 7, i % 5, (i * 3) % 11);
            let y = match kind {
                TaskKind::Classification => (a + b) % 3,
                TaskKind::Regression => a * 2 + c,
            };
            text.push_str(&format!("{a},{b},{c},{y}\n"));
        }
        parse_csv(&text, kind, &DatasetLimits::default()).unwrap()
    }

    /// 50 rows: 10 test, 5 validation, 35 train in batches of 8 -> 5 steps
    /// an epoch (the last short), 15 in all, cut into 4 segments of 3, 4, 4
    /// and 4 steps, so segments end mid-epoch and at an epoch's end.
    fn spec(kind: TaskKind, optimizer: OptimizerKind) -> (JobSpec, Dataset) {
        let ds = dataset(kind);
        let spec = TrainSettings {
            hidden: vec![6, 5],
            epochs: 3,
            batch: 8,
            optimizer,
            l1: 1e-3,
            l2: 1e-2,
            segments: 4,
            ..TrainSettings::default()
        }
        .job_spec(&ds)
        .unwrap();
        (spec, ds)
    }

    fn all_kinds() -> Vec<(JobSpec, Dataset)> {
        vec![
            spec(TaskKind::Classification, OptimizerKind::Adam),
            spec(TaskKind::Regression, OptimizerKind::Sgd),
        ]
    }

    /// Every state's bytes and leaf of one uninterrupted run.
    fn uninterrupted(spec: &JobSpec, ds: &Dataset, seed: u64) -> Vec<(Vec<u8>, SegmentLeaf)> {
        let mut session = Session::new(spec, ds, seed).unwrap();
        let mut out = vec![(
            session.state_bytes().unwrap(),
            SegmentLeaf {
                state: session.state_digest().unwrap(),
                loss: F32Bits::from_f32(0.0),
            },
        )];
        for index in 1..=spec.segments {
            let leaf = session.run_segment(index, &mut |_| {}).unwrap();
            out.push((session.state_bytes().unwrap(), leaf));
        }
        out
    }

    #[test]
    fn a_session_resumed_from_any_state_continues_bit_for_bit() {
        for (spec, ds) in all_kinds() {
            let run = uninterrupted(&spec, &ds, 7);
            let mut whole = Session::new(&spec, &ds, 7).unwrap();
            for index in 1..=spec.segments {
                whole.advance(index, &mut |_| {}).unwrap();
            }
            let expected = whole.finish().unwrap().outcome;
            for j in 0..spec.segments {
                let mut resumed = Session::from_state(&spec, &ds, &run[j as usize].0).unwrap();
                assert_eq!(resumed.state_bytes().unwrap(), run[j as usize].0);
                for index in j + 1..=spec.segments {
                    let leaf = resumed.run_segment(index, &mut |_| {}).unwrap();
                    assert_eq!(leaf, run[index as usize].1, "from S_{j}, segment {index}");
                    assert_eq!(resumed.state_bytes().unwrap(), run[index as usize].0);
                }
                assert_eq!(resumed.finish().unwrap().outcome, expected, "from S_{j}");
            }
            // The final state alone gives the final result.
            let last = Session::from_state(&spec, &ds, &run[spec.segments as usize].0).unwrap();
            assert_eq!(last.finish().unwrap().outcome, expected);
        }
    }

    #[test]
    fn digest_is_the_hash_of_the_bytes_and_bytes_round_trip() {
        for (spec, ds) in all_kinds() {
            for (bytes, leaf) in uninterrupted(&spec, &ds, 3) {
                assert_eq!(Digest(protocol::sha256(&bytes)), leaf.state);
                let back = Session::from_state(&spec, &ds, &bytes).unwrap();
                assert_eq!(back.state_bytes().unwrap(), bytes);
                assert_eq!(back.state_digest().unwrap(), leaf.state);
            }
        }
    }

    #[test]
    fn segments_cover_every_step_once_in_order() {
        for segments in [1, 4, 7, 15] {
            let (mut spec, ds) = spec(TaskKind::Classification, OptimizerKind::Adam);
            spec.segments = segments;
            let mut session = Session::new(&spec, &ds, 1).unwrap();
            assert_eq!(session.total_steps(), 15);
            assert_eq!(spec.total_steps(), Some(15));
            let mut steps = Vec::new();
            for index in 1..=segments {
                let range = session.segment_range(index).unwrap();
                let mut here = Vec::new();
                session
                    .run_segment(index, &mut |p| here.push(p.step))
                    .unwrap();
                assert!(!here.is_empty(), "segment {index} of {segments} is empty");
                assert_eq!(here, (range.start + 1..=range.end).collect::<Vec<_>>());
                steps.extend(here);
            }
            assert_eq!(steps, (1..=15).collect::<Vec<_>>());
            assert!(session.segment_range(segments + 1).is_err());
            assert!(session.segment_range(0).is_err());
        }
    }

    #[test]
    fn segments_must_be_run_in_order_and_all_before_the_result() {
        let (spec, ds) = spec(TaskKind::Classification, OptimizerKind::Adam);
        let mut session = Session::new(&spec, &ds, 1).unwrap();
        assert_eq!(
            session.run_segment(2, &mut |_| {}).unwrap_err(),
            TrainError::SegmentOrder {
                index: 2,
                step: 0,
                expected: 3
            }
        );
        session.run_segment(1, &mut |_| {}).unwrap();
        assert!(matches!(
            session.run_segment(1, &mut |_| {}),
            Err(TrainError::SegmentOrder {
                index: 1,
                step: 3,
                ..
            })
        ));
        assert_eq!(
            session.finish().unwrap_err(),
            TrainError::Unfinished { step: 3, total: 15 }
        );
    }

    #[test]
    fn the_initial_state_depends_on_the_seed_only_through_init_and_batches() {
        let (spec, ds) = spec(TaskKind::Classification, OptimizerKind::Adam);
        let a = Session::new(&spec, &ds, 1).unwrap();
        assert_eq!(
            a.state_digest().unwrap(),
            Session::new(&spec, &ds, 1).unwrap().state_digest().unwrap()
        );
        assert_ne!(
            a.state_digest().unwrap(),
            Session::new(&spec, &ds, 2).unwrap().state_digest().unwrap()
        );
    }

    /// Reads a state's header fields, for the layout test.
    fn le_u32(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn encoding_follows_the_documented_layout() {
        let (spec, ds) = spec(TaskKind::Classification, OptimizerKind::Adam);
        let mut session = Session::new(&spec, &ds, 5).unwrap();
        session.run_segment(1, &mut |_| {}).unwrap();
        let bytes = session.state_bytes().unwrap();

        let mut expected = Vec::new();
        expected.extend_from_slice(b"GCSTAT01");
        expected.extend_from_slice(&ENGINE_VERSION.to_le_bytes());
        expected.extend_from_slice(&3u64.to_le_bytes()); // step
        expected.extend_from_slice(&1u32.to_le_bytes()); // epoch
        expected.extend_from_slice(&3u32.to_le_bytes()); // position
        expected.extend_from_slice(&session.batch_rng.state().to_le_bytes());
        expected.extend_from_slice(&35u32.to_le_bytes());
        for row in &session.order {
            expected.extend_from_slice(&(*row as u32).to_le_bytes());
        }
        expected.extend_from_slice(&3u32.to_le_bytes());
        for loss in &session.epoch_losses {
            expected.extend_from_slice(&loss.to_le_bytes());
        }
        expected.push(OPTIMIZER_ADAM);
        // layers.0.bias, layers.0.weight, ..., layers.2.weight
        expected.extend_from_slice(&6u32.to_le_bytes());
        let named = session.mlp.named_params();
        let sizes = [6usize, 3 * 6, 5, 6 * 5, 3, 5 * 3];
        for ((_, var), size) in named.iter().zip(sizes) {
            let values = var
                .as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            assert_eq!(values.len(), size);
            expected.extend_from_slice(&(size as u64).to_le_bytes());
            for v in values {
                expected.extend_from_slice(&v.to_le_bytes());
            }
        }
        let OptimizerState::Adam {
            beta1_power,
            beta2_power,
            m,
            v,
            ..
        } = &session.optimizer
        else {
            panic!("the spec asks for Adam");
        };
        assert_eq!(beta1_power.to_bits(), (0.9f32 * 0.9 * 0.9).to_bits());
        expected.extend_from_slice(&beta1_power.to_le_bytes());
        expected.extend_from_slice(&beta2_power.to_le_bytes());
        for buffer in m.iter().chain(v) {
            expected.extend_from_slice(&(buffer.len() as u64).to_le_bytes());
            for x in buffer {
                expected.extend_from_slice(&x.to_le_bytes());
            }
        }
        assert_eq!(bytes, expected);
        // The first epoch's order is a shuffle, not the dataset order.
        assert_ne!(session.order, (0..35).collect::<Vec<_>>());
        assert_eq!(le_u32(&bytes, 36), 35);
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_refused() {
        let (spec, ds) = spec(TaskKind::Regression, OptimizerKind::Sgd);
        let mut session = Session::new(&spec, &ds, 5).unwrap();
        session.run_segment(1, &mut |_| {}).unwrap();
        let bytes = session.state_bytes().unwrap();
        for len in 0..bytes.len() {
            assert!(
                matches!(
                    Session::from_state(&spec, &ds, &bytes[..len]),
                    Err(TrainError::State(StateError::Truncated { .. }))
                ),
                "{len} of {} bytes",
                bytes.len()
            );
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Session::from_state(&spec, &ds, &longer).unwrap_err(),
            TrainError::State(StateError::Trailing { got: 1 })
        );
    }

    /// Changes `bytes` at `at` and expects the decoder to name `what`.
    fn refused(spec: &JobSpec, ds: &Dataset, bytes: &[u8], at: usize, value: &[u8], what: &str) {
        let mut bad = bytes.to_vec();
        bad[at..at + value.len()].copy_from_slice(value);
        match Session::from_state(spec, ds, &bad) {
            Err(TrainError::State(StateError::Field { what: got, .. })) => {
                assert_eq!(got, what, "byte {at}")
            }
            other => panic!("byte {at} ({what}): {other:?}"),
        }
    }

    #[test]
    fn fields_that_fit_no_run_are_refused_by_name() {
        let (spec, ds) = spec(TaskKind::Classification, OptimizerKind::Adam);
        let mut session = Session::new(&spec, &ds, 5).unwrap();
        let zero = session.state_bytes().unwrap();
        session.run_segment(1, &mut |_| {}).unwrap();
        let bytes = session.state_bytes().unwrap();
        // Offsets: magic 0, engine 8, step 12, epoch 20, position 24, rng 28,
        // rows 36, order 40, losses 40 + 4·35 = 180, loss values 184.
        refused(&spec, &ds, &bytes, 0, b"GCSTAT02", "magic");
        refused(&spec, &ds, &bytes, 8, &1u32.to_le_bytes(), "engine version");
        refused(&spec, &ds, &bytes, 12, &4u64.to_le_bytes(), "step");
        refused(&spec, &ds, &bytes, 20, &4u32.to_le_bytes(), "epoch");
        refused(&spec, &ds, &bytes, 24, &6u32.to_le_bytes(), "position");
        refused(&spec, &ds, &bytes, 24, &0u32.to_le_bytes(), "position");
        refused(&spec, &ds, &bytes, 36, &34u32.to_le_bytes(), "row count");
        refused(&spec, &ds, &bytes, 40, &35u32.to_le_bytes(), "row order");
        let second = bytes[44..48].to_vec();
        refused(&spec, &ds, &bytes, 40, &second, "row order");
        refused(&spec, &ds, &bytes, 180, &2u32.to_le_bytes(), "loss count");
        refused(&spec, &ds, &bytes, 184, &f32::NAN.to_le_bytes(), "losses");
        let optimizer_at = 184 + 3 * 4;
        refused(
            &spec,
            &ds,
            &bytes,
            optimizer_at,
            &[OPTIMIZER_SGD],
            "optimizer",
        );
        refused(
            &spec,
            &ds,
            &bytes,
            optimizer_at + 1,
            &5u32.to_le_bytes(),
            "tensor count",
        );
        refused(
            &spec,
            &ds,
            &bytes,
            optimizer_at + 5,
            &7u64.to_le_bytes(),
            "parameter",
        );
        let params: usize = [6usize, 18, 5, 30, 3, 15].iter().map(|n| 8 + 4 * n).sum();
        let powers_at = optimizer_at + 5 + params;
        refused(
            &spec,
            &ds,
            &bytes,
            powers_at,
            &0.5f32.to_le_bytes(),
            "beta1 power",
        );
        refused(
            &spec,
            &ds,
            &bytes,
            powers_at + 4,
            &1.0f32.to_le_bytes(),
            "beta2 power",
        );
        refused(
            &spec,
            &ds,
            &bytes,
            powers_at + 8,
            &0u64.to_le_bytes(),
            "first moment",
        );
        // Before the first epoch: counters at zero, rows in dataset order.
        refused(
            &spec,
            &ds,
            &zero,
            12,
            &1u64.to_le_bytes(),
            "step and position",
        );
        let mut swapped = zero.clone();
        swapped.copy_within(40..44, 44);
        swapped[40..44].copy_from_slice(&1u32.to_le_bytes());
        refused(&spec, &ds, &swapped, 40, &1u32.to_le_bytes(), "row order");
        // A state of another optimizer's job.
        let (sgd, _) = self::spec(TaskKind::Classification, OptimizerKind::Sgd);
        assert!(matches!(
            Session::from_state(&sgd, &ds, &bytes),
            Err(TrainError::State(StateError::Field {
                what: "optimizer",
                ..
            }))
        ));
        // A parameter value is just a value: it decodes, to another state.
        let mut other = bytes.clone();
        other[optimizer_at + 5 + 8] ^= 1;
        let session = Session::from_state(&spec, &ds, &other).unwrap();
        assert_ne!(
            session.state_digest().unwrap(),
            Digest(protocol::sha256(&bytes))
        );
    }

    #[test]
    fn a_state_must_fit_the_dataset() {
        let (spec, ds) = spec(TaskKind::Classification, OptimizerKind::Adam);
        let bytes = Session::new(&spec, &ds, 5).unwrap().state_bytes().unwrap();
        let mut wider = spec.clone();
        wider.model.hidden = vec![7, 5];
        assert!(matches!(
            Session::from_state(&wider, &ds, &bytes),
            Err(TrainError::State(StateError::Field {
                what: "parameter",
                ..
            }))
        ));
        let mut more = spec.clone();
        more.split.test_permille = 100;
        assert!(matches!(
            Session::from_state(&more, &ds, &bytes),
            Err(TrainError::State(StateError::Field {
                what: "row count",
                ..
            }))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_mutation_is_refused_or_decodes_to_itself(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
            truncate in any::<bool>(),
        ) {
            let (spec, ds) = spec(TaskKind::Regression, OptimizerKind::Adam);
            let mut session = Session::new(&spec, &ds, 9).unwrap();
            session.run_segment(1, &mut |_| {}).unwrap();
            let mut bytes = session.state_bytes().unwrap();
            for (at, value) in flips {
                let i = at.index(bytes.len());
                bytes[i] ^= value;
            }
            if truncate {
                bytes.truncate(cut.index(bytes.len()));
            }
            // Never a panic; whatever decodes re-encodes to the same bytes.
            if let Ok(back) = Session::from_state(&spec, &ds, &bytes) {
                prop_assert_eq!(back.state_bytes().unwrap(), bytes);
            }
        }
    }
}
