//! gradchain's trainer: datasets, the reproducible training engine, resumable
//! training sessions, segment replay for optimistic verification, and
//! prediction.
//!
//! A worker trains a job and commits on chain to the digest of the weights
//! and of the training state after every segment; any node may replay a
//! segment from the state before it and must get the same bits. So everything here
//! is deterministic in the job spec, the dataset blob and the seed, on any
//! x86-64 CPU, thread count, build profile and `-C target-cpu`: candle
//! tensors hold the parameters, every operator whose stock implementation
//! depends on the machine is replaced by a custom op with a fixed order of
//! IEEE operations ([`ops`], [`kernels`]), and the training step runs those
//! ops' forward and backward passes fused over reused buffers ([`step`]),
//! bit for bit what candle autograd over the ops gives. The node's HTTP
//! API is reached only through [`client`], which the CLIs use; training,
//! replay and verification must never call it, and must never let time,
//! threads or the environment reach a result.

pub mod bench;
pub mod bench_verify;
pub mod cheat;
pub mod client;
pub mod dataset;
pub mod kernels;
pub mod keyfile;
pub mod logging;
pub mod model;
pub mod ops;
pub mod optim;
pub mod pool;
pub mod prep;
pub mod rng;
pub mod run;
pub mod session;
pub mod settings;
pub mod step;
pub mod train;
pub mod verify;
pub mod weights;

pub use dataset::{
    parse_csv, parse_csv_reader, Dataset, DatasetError, DatasetLimits, Targets, TaskKind,
};
pub use model::{predict, ModelError, Prediction, TrainedModel};
pub use run::StateError;
pub use session::{FinishedRun, Session, STATE_MAGIC};
pub use settings::{OptimizerKind, TrainSettings};
pub use train::{train, train_keeping_states, Progress, TrainError, TrainOutcome};
pub use verify::{
    audit, sample_segments, AuditError, AuditFault, AuditReport, BlobSource, ReplayVerifier,
};
