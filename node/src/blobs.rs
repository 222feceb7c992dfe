//! The blob store: datasets, weights files and training states kept by the
//! SHA-256 of their bytes in their own redb file (`blobs.redb`), in chunks
//! of [`BLOB_CHUNK_BYTES`]; and the moving of blobs between peers over
//! `/gradchain/blob/2`, chunk by chunk; HTTP API clients upload blobs
//! into it ([`BlobStore::begin_upload`], [`BlobStore::put`]).
//!
//! A blob is stored as its chunks, keyed by (digest, index), and one record:
//! its kind, length, the SHA-256 of each chunk (its [`BlobManifest`]) and
//! when it was stored. A blob is held exactly when its record exists, so
//! [`BlobStore::has`] reads the record alone, and storing, serving and
//! fetching a blob never need it whole in memory: a fetch asks a peer for
//! the manifest, then for each chunk, checks each chunk against the manifest
//! as it arrives, writes it and hashes the whole incrementally.
//!
//! Weights files are also indexed by their tensor digest (the `weights`
//! digest a job result carries, docs/DESIGN.md §3), which the store recomputes from
//! the bytes itself: a worker uploads the safetensors file, the node checks
//! it parses and hashes to some tensor digest, and `predict` finds the file
//! of a fulfilled job through that index. So the chain only ever carries the
//! tensor digest, and no one has to be trusted for the mapping.
//!
//! Every blob is checked before its record is written: its digest (or
//! tensor digest) must be the one asked for, its size under its kind's cap
//! ([`BlobKind::max_bytes`]), and a dataset must parse. Chunks still being
//! written have no record: nothing reads them as a blob, and they are
//! deleted when the check fails, when an upload is abandoned, or at the next
//! start after a crash. A peer that sends bytes that fail a check is
//! penalised. Uploads are bounded by quotas ([`CLIENT_UPLOAD_QUOTA`],
//! [`PEER_FETCH_QUOTA`]); training states no pending result needs are
//! pruned ([`BlobStore::prune_states`]). This module must never give out
//! unchecked bytes as a blob, and it never decides whether a job or result
//! is valid.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use protocol::blob::{
    chunk_len, BlobChunk, BlobKind, BlobManifest, BlobName, ManifestError, BLOB_CHUNK_BYTES,
    MAX_BLOB_BYTES,
};
use protocol::codec;
use protocol::Digest;
use redb::{
    Database, Durability, ReadOnlyTable, ReadableDatabase, ReadableTable, Table, TableDefinition,
    TableError, WriteTransaction,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use trainer::verify::BlobSource;
use trainer::{Dataset, DatasetLimits};

/// Chunks by blob and index. The key is the digest then the index in
/// big-endian, so a blob's chunks sit together and in order.
const CHUNKS: TableDefinition<&[u8; 36], &[u8]> = TableDefinition::new("blob_chunks");
/// The [`BlobRecord`] of every held blob, by SHA-256.
const RECORDS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blob_records");
/// Blobs whose chunks are being written and not yet checked, with the unix
/// time writing began; what a crash leaves here is deleted at open.
const STAGING: TableDefinition<&[u8; 32], u64> = TableDefinition::new("blob_staging");
/// Weights file SHA-256 by tensor digest.
const WEIGHTS: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("weights");
/// Whole blobs by SHA-256, as stores kept them before chunking; moved into
/// chunks when such a store is opened.
const LEGACY_BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");

/// File name of the blob store inside the data dir.
pub const BLOB_FILE: &str = "blobs.redb";

/// How long a training state is kept after it was stored even when no
/// pending result names it: a worker uploads its states before its result
/// is mined, an auditor stores the honest state before its fraud proof is
/// mined, and the data fetcher stores states a parked block waits for
/// before the block is judged again. An hour covers training at `max_cost`
/// (about a minute) on a slow machine and a long wait in the mempool.
pub const STATE_GRACE: Duration = Duration::from_secs(60 * 60);

/// A budget of bytes: at most `in_flight` being written and not yet checked
/// at once, and at most `per_window` taken in each `window`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaPolicy {
    /// Bytes of unfinished transfers at once, counted at their announced
    /// length when they start.
    pub in_flight: u64,
    /// Bytes taken per window, counted when a transfer starts.
    pub per_window: u64,
    /// The window.
    pub window: Duration,
}

/// What each HTTP API client may upload, by its address
/// ([`Uploader::Client`]): a connection costs nothing to open, so a budget
/// per connection would bound nothing. On a loopback bind every local
/// client comes from the same address and they all share one budget; off
/// loopback the write routes need the node's token anyway, so only clients
/// of its operator reach this quota. In flight: two blobs at the cap, so a
/// worker can upload while a stalled upload still holds its share;
/// unfinished uploads are written to disk, and this bounds what they occupy
/// until their connection ends and their writer deletes them. Per window:
/// 4 GiB each 10 minutes. A result commits `n + 1` states: at the default
/// 64 segments a 784-256-256-10 MLP (3.2 MB states) uploads 210 MB, about
/// twenty results a window; the largest model (152 MB states) needs about
/// three windows. States are kept [`STATE_GRACE`] even when no result names
/// them, and an hour overlaps at most seven windows: one client address
/// can fill at most 28 GiB with states nobody needs before pruning catches
/// up.
pub const CLIENT_UPLOAD_QUOTA: QuotaPolicy = QuotaPolicy {
    in_flight: 2 * MAX_BLOB_BYTES as u64,
    per_window: 4 << 30,
    window: Duration::from_secs(600),
};

/// What one peer may have this node write unchecked at once: two blobs at
/// the cap. This node only fetches blobs the chain or its own API clients
/// name, so a peer cannot push bytes at it; what a peer controls is the
/// manifest, and a lying manifest is only caught when the whole blob fails
/// its digest. So the bound is on unchecked bytes at once, and a peer whose
/// blob fails is penalised ([`WRONG_BLOB_PENALTY`]): two failures ban it.
/// The window is not what bounds peers (fetches are asked for, not
/// offered), so it is left open.
pub const PEER_FETCH_QUOTA: QuotaPolicy = QuotaPolicy {
    in_flight: 2 * MAX_BLOB_BYTES as u64,
    per_window: u64::MAX,
    window: Duration::from_secs(600),
};

/// Who is sending bytes to the store, for quotas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Uploader {
    /// An HTTP API client, by address.
    Client(IpAddr),
    /// A peer serving a blob this node fetches.
    Peer(PeerId),
}

/// Which bound of a quota refused a transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaLimit {
    /// [`QuotaPolicy::in_flight`].
    InFlight,
    /// [`QuotaPolicy::per_window`].
    PerWindow,
}

/// A transfer refused by a quota, naming the limit.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} refused by the {} limit: {used} bytes counted, {asked} more asked, expected at most {max}", uploader_name(.uploader), limit_name(.uploader, .limit, .window))]
pub struct QuotaExceeded {
    /// Whose quota.
    pub uploader: Uploader,
    /// Which bound.
    pub limit: QuotaLimit,
    /// Bytes already counted against it.
    pub used: u64,
    /// Bytes the refused transfer asked for.
    pub asked: u64,
    /// The bound.
    pub max: u64,
    /// The window of a per-window limit.
    pub window: Duration,
}

fn uploader_name(uploader: &Uploader) -> String {
    match uploader {
        Uploader::Client(ip) => format!("an upload from {ip}"),
        Uploader::Peer(peer) => format!("a fetch from peer {peer}"),
    }
}

fn limit_name(uploader: &Uploader, limit: &QuotaLimit, window: &Duration) -> String {
    let quota = match uploader {
        Uploader::Client(_) => "CLIENT_UPLOAD_QUOTA",
        Uploader::Peer(_) => "PEER_FETCH_QUOTA",
    };
    match limit {
        QuotaLimit::InFlight => format!("{quota} in-flight"),
        QuotaLimit::PerWindow => format!("{quota} per-{}s-window", window.as_secs()),
    }
}

/// Why a blob was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The database failed.
    #[error("blob store: {0}")]
    Database(String),
    /// The blob is larger than the store takes for its kind.
    #[error("a {kind:?} blob of {got} bytes, expected at most {max}")]
    TooLarge {
        /// Its kind.
        kind: BlobKind,
        /// Its size.
        got: u64,
        /// The cap.
        max: u64,
    },
    /// The bytes are not what the name promised.
    #[error("blob bytes hash to {got}, expected {expected}")]
    WrongDigest {
        /// What the bytes hash to.
        got: Digest,
        /// What was asked for.
        expected: Digest,
    },
    /// A chunk does not hash to what the manifest says.
    #[error("chunk {index} hashes to {got}, expected {expected}")]
    WrongChunk {
        /// Which chunk.
        index: u32,
        /// What it hashes to.
        got: Digest,
        /// What the manifest says.
        expected: Digest,
    },
    /// A chunk has the wrong length for its place in the blob.
    #[error("chunk {index} of a {total}-byte blob has {got} bytes, expected {expected}")]
    ChunkLength {
        /// Which chunk.
        index: u64,
        /// The blob's length.
        total: u64,
        /// Its length.
        got: u64,
        /// The length chunk `index` of such a blob has (0: there is none).
        expected: u64,
    },
    /// Another transfer is writing this blob.
    #[error("blob {0} is being written by another transfer; retry when it ends")]
    Busy(Digest),
    /// A stored chunk is missing or does not match its record.
    #[error("stored chunk {index} of blob {digest} is missing or corrupt")]
    Corrupt {
        /// The blob.
        digest: Digest,
        /// The chunk.
        index: u32,
    },
    /// A manifest does not describe a blob this store takes.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// An upload quota refused the transfer.
    #[error(transparent)]
    Quota(#[from] Box<QuotaExceeded>),
    /// The bytes are not a valid dataset blob.
    #[error("not a valid dataset blob: {0}")]
    BadDataset(String),
    /// The bytes are not a valid safetensors weights file.
    #[error("not a valid weights file: {0}")]
    BadWeights(String),
}

/// Refuses a blob of `kind` that is larger than that kind may be: the
/// first check on anything put or uploaded, before any hashing or quota.
fn check_size(kind: BlobKind, total: u64) -> Result<(), BlobError> {
    let max = kind.max_bytes();
    if total > max {
        return Err(BlobError::TooLarge {
            kind,
            got: total,
            max,
        });
    }
    Ok(())
}

fn db_error(err: impl std::fmt::Display) -> BlobError {
    BlobError::Database(err.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state whole, so a panic elsewhere
    // while holding the lock does not make the state unusable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn chunk_key(digest: &Digest, index: u32) -> [u8; 36] {
    let mut key = [0u8; 36];
    let (head, tail) = key.split_at_mut(32);
    head.copy_from_slice(&digest.0);
    tail.copy_from_slice(&index.to_be_bytes());
    key
}

fn sha256(bytes: &[u8]) -> Digest {
    Digest(protocol::sha256(bytes))
}

/// What the store keeps about each held blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct BlobRecord {
    kind: BlobKind,
    total: u64,
    chunks: Vec<Digest>,
    /// Unix seconds of the last store of these bytes.
    stored_at: u64,
}

impl BlobRecord {
    fn decode(digest: &Digest, bytes: &[u8]) -> Result<Self, BlobError> {
        codec::decode(bytes)
            .map_err(|e| BlobError::Database(format!("record of blob {digest}: {e}")))
    }

    fn encode(&self) -> Result<Vec<u8>, BlobError> {
        codec::encode(self).map_err(db_error)
    }

    fn manifest(self, digest: Digest) -> BlobManifest {
        BlobManifest {
            digest,
            kind: self.kind,
            total: self.total,
            chunks: self.chunks,
        }
    }
}

/// Counters of the store, for tests and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlobMetrics {
    /// Chunks read from the database.
    pub chunks_read: u64,
    /// Chunks written to the database.
    pub chunks_written: u64,
}

/// What [`BlobStore::prune_states`] dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// States dropped.
    pub dropped: u32,
    /// Their bytes.
    pub bytes: u64,
}

#[derive(Debug)]
struct Usage {
    in_flight: u64,
    window_start: Instant,
    window_used: u64,
}

#[derive(Debug)]
struct Quotas {
    client_policy: QuotaPolicy,
    peer_policy: QuotaPolicy,
    usage: HashMap<Uploader, Usage>,
}

struct Shared {
    /// Blobs a [`BlobWriter`] is open for: one writer per blob, so two
    /// transfers never interleave their chunks.
    writing: Mutex<HashSet<Digest>>,
    quotas: Mutex<Quotas>,
    /// One fetch at a time per name: a second asker waits for the first
    /// and then finds the blob held, instead of downloading it again.
    fetches: Mutex<HashMap<BlobName, Arc<tokio::sync::Mutex<()>>>>,
    chunks_read: AtomicU64,
    chunks_written: AtomicU64,
}

/// The node's blob store; cheap to clone, safe to share across threads
/// (redb serialises writers itself).
#[derive(Clone)]
pub struct BlobStore {
    db: Arc<Database>,
    limits: DatasetLimits,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").finish_non_exhaustive()
    }
}

/// Counted bytes of a transfer, given back to its quota when dropped (the
/// in-flight bytes; the window keeps them). It holds the store weakly, so
/// a transfer outliving the store does not keep it alive.
pub struct Reservation {
    shared: Weak<Shared>,
    uploader: Uploader,
    bytes: u64,
}

impl std::fmt::Debug for Reservation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reservation")
            .field("uploader", &self.uploader)
            .field("bytes", &self.bytes)
            .finish()
    }
}

impl Reservation {
    /// Gives the bytes back whole, window included: for a transfer that
    /// wrote nothing.
    fn refund(self) {
        if let Some(shared) = self.shared.upgrade() {
            let mut quotas = lock(&shared.quotas);
            if let Some(usage) = quotas.usage.get_mut(&self.uploader) {
                usage.window_used = usage.window_used.saturating_sub(self.bytes);
            }
        }
        // Dropping it gives back the in-flight bytes.
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut quotas = lock(&shared.quotas);
        if let Some(usage) = quotas.usage.get_mut(&self.uploader) {
            usage.in_flight = usage.in_flight.saturating_sub(self.bytes);
        }
    }
}

impl BlobStore {
    /// Opens or creates the store at `path`, moves whole blobs of an older
    /// store into chunks, and deletes chunks a crash left unchecked.
    pub fn open(path: &Path) -> Result<Self, BlobError> {
        let db = Database::create(path).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(CHUNKS).map_err(db_error)?;
        txn.open_table(RECORDS).map_err(db_error)?;
        txn.open_table(STAGING).map_err(db_error)?;
        txn.open_table(WEIGHTS).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        let store = Self {
            db: Arc::new(db),
            limits: DatasetLimits::default(),
            shared: Arc::new(Shared {
                writing: Mutex::default(),
                quotas: Mutex::new(Quotas {
                    client_policy: CLIENT_UPLOAD_QUOTA,
                    peer_policy: PEER_FETCH_QUOTA,
                    usage: HashMap::new(),
                }),
                fetches: Mutex::default(),
                chunks_read: AtomicU64::new(0),
                chunks_written: AtomicU64::new(0),
            }),
        };
        store.migrate_whole_blobs()?;
        store.drop_staged()?;
        Ok(store)
    }

    /// Replaces the upload quotas (tests use small ones).
    pub fn set_quotas(&self, client: QuotaPolicy, peer: QuotaPolicy) {
        let mut quotas = lock(&self.shared.quotas);
        quotas.client_policy = client;
        quotas.peer_policy = peer;
    }

    /// Counters since the store was opened.
    pub fn metrics(&self) -> BlobMetrics {
        BlobMetrics {
            chunks_read: self.shared.chunks_read.load(Ordering::Relaxed),
            chunks_written: self.shared.chunks_written.load(Ordering::Relaxed),
        }
    }

    /// Bytes of the blobs held (records of finished blobs; unfinished
    /// transfers are bounded by the quotas instead).
    pub fn held_bytes(&self) -> Result<u64, BlobError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        let mut total = 0u64;
        for row in records.iter().map_err(db_error)? {
            let (key, value) = row.map_err(db_error)?;
            let record = BlobRecord::decode(&Digest(*key.value()), value.value())?;
            total = total.saturating_add(record.total);
        }
        Ok(total)
    }

    /// Counts `bytes` against `uploader`'s quota until the returned
    /// reservation is dropped; refuses when a bound would be passed.
    pub fn reserve(
        &self,
        uploader: Uploader,
        bytes: u64,
    ) -> Result<Reservation, Box<QuotaExceeded>> {
        let now = Instant::now();
        let mut guard = lock(&self.shared.quotas);
        let quotas = &mut *guard;
        let policy = match uploader {
            Uploader::Client(_) => quotas.client_policy,
            Uploader::Peer(_) => quotas.peer_policy,
        };
        // Forget peers with nothing in flight and a spent window, so the
        // book does not grow with every peer ever seen.
        quotas.usage.retain(|who, usage| {
            *who == uploader
                || usage.in_flight > 0
                || now.duration_since(usage.window_start) < policy.window
        });
        let usage = quotas.usage.entry(uploader).or_insert(Usage {
            in_flight: 0,
            window_start: now,
            window_used: 0,
        });
        if now.duration_since(usage.window_start) >= policy.window {
            usage.window_start = now;
            usage.window_used = 0;
        }
        let refuse = |limit, used, max| {
            Box::new(QuotaExceeded {
                uploader,
                limit,
                used,
                asked: bytes,
                max,
                window: policy.window,
            })
        };
        if usage.in_flight.saturating_add(bytes) > policy.in_flight {
            return Err(refuse(
                QuotaLimit::InFlight,
                usage.in_flight,
                policy.in_flight,
            ));
        }
        if usage.window_used.saturating_add(bytes) > policy.per_window {
            return Err(refuse(
                QuotaLimit::PerWindow,
                usage.window_used,
                policy.per_window,
            ));
        }
        usage.in_flight = usage.in_flight.saturating_add(bytes);
        usage.window_used = usage.window_used.saturating_add(bytes);
        Ok(Reservation {
            shared: Arc::downgrade(&self.shared),
            uploader,
            bytes,
        })
    }

    /// Checks `bytes` as a blob of `kind` and stores it; returns the SHA-256
    /// of the bytes (for weights, the tensor digest is indexed as well).
    /// Storing a held blob again refreshes when it was stored.
    pub fn put(&self, kind: BlobKind, bytes: &[u8]) -> Result<Digest, BlobError> {
        let total = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        check_size(kind, total)?;
        let digest = sha256(bytes);
        let tensor = self.check_kind(kind, bytes)?;
        let chunks: Vec<&[u8]> = bytes.chunks(chunk_size()).collect();
        let record = BlobRecord {
            kind,
            total,
            chunks: chunks.iter().map(|c| sha256(c)).collect(),
            stored_at: unix_seconds(SystemTime::now()),
        };
        let txn = self.write_txn(Durability::Immediate)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(db_error)?;
            if !refresh_record(&mut records, &digest, Some(kind))? {
                // Written with the record in one transaction, over any chunk
                // an unfinished transfer of the same blob left: a writer
                // finds the record and stops (see `BlobWriter`).
                let mut table = txn.open_table(CHUNKS).map_err(db_error)?;
                for (index, chunk) in chunks.iter().enumerate() {
                    let index = u32::try_from(index).map_err(db_error)?;
                    table
                        .insert(&chunk_key(&digest, index), *chunk)
                        .map_err(db_error)?;
                }
                records
                    .insert(&digest.0, record.encode()?.as_slice())
                    .map_err(db_error)?;
                self.count_written(chunks.len());
            }
            if let Some(tensor) = tensor {
                let mut weights = txn.open_table(WEIGHTS).map_err(db_error)?;
                weights.insert(&tensor.0, &digest.0).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)?;
        Ok(digest)
    }

    /// Starts an upload of the blob `digest` of `kind` and `total` bytes
    /// from the HTTP API client at `client`, to be written with
    /// [`BlobWriter::write_chunk`] and ended with [`BlobWriter::finish`];
    /// `None` when the blob is held already (its stored time refreshed, as
    /// [`Self::put`] does for a held blob), and then nothing is charged.
    ///
    /// Costs, cheapest first, each paid only when the one before passed:
    /// 1. `total` against the kind's cap ([`BlobError::TooLarge`]): free;
    /// 2. whether the blob is held (one read): `None`;
    /// 3. `total` charged to `client`'s [`CLIENT_UPLOAD_QUOTA`], in flight
    ///    and in its window ([`BlobError::Quota`]);
    /// 4. [`Self::begin`]: when it opens no writer (another transfer is
    ///    writing the blob, [`BlobError::Busy`], or it became held
    ///    meanwhile) nothing was written, and the charge is given back
    ///    whole, window included.
    ///
    /// The writer holds the reservation: the in-flight bytes come back when
    /// it finishes, aborts or is dropped (a client gone mid-body), and the
    /// window keeps them.
    pub fn begin_upload(
        &self,
        client: IpAddr,
        digest: Digest,
        kind: BlobKind,
        total: u64,
    ) -> Result<Option<BlobWriter>, BlobError> {
        check_size(kind, total)?;
        if self.has(&digest) && self.refresh(&digest)? {
            return Ok(None);
        }
        let reservation = self.reserve(Uploader::Client(client), total)?;
        match self.begin(digest, kind, total) {
            Ok(Some(mut writer)) => {
                writer.hold(reservation);
                Ok(Some(writer))
            }
            other => {
                reservation.refund();
                other
            }
        }
    }

    /// Marks a held blob as stored now (its kind unchecked, so unchanged);
    /// false when it is not held.
    fn refresh(&self, digest: &Digest) -> Result<bool, BlobError> {
        let txn = self.write_txn(Durability::Immediate)?;
        let held = {
            let mut records = txn.open_table(RECORDS).map_err(db_error)?;
            refresh_record(&mut records, digest, None)?
        };
        txn.commit().map_err(db_error)?;
        Ok(held)
    }

    /// Checks `bytes` fit `kind`; the tensor digest of a weights file.
    fn check_kind(&self, kind: BlobKind, bytes: &[u8]) -> Result<Option<Digest>, BlobError> {
        match kind {
            BlobKind::Dataset => {
                Dataset::from_blob(bytes, &self.limits)
                    .map_err(|e| BlobError::BadDataset(e.to_string()))?;
                Ok(None)
            }
            BlobKind::Weights => trainer::weights::tensor_digest_of_file(bytes)
                .map(Some)
                .map_err(|e| BlobError::BadWeights(e.to_string())),
            // A state is checked by whoever replays from it, against the
            // spec of its job; here it is only content-addressed.
            BlobKind::State => Ok(None),
        }
    }

    /// Starts writing the blob `digest` of `kind` and `total` bytes chunk
    /// by chunk; `None` when it is held already. The chunks are kept only
    /// if [`BlobWriter::finish`] accepts the whole.
    pub fn begin(
        &self,
        digest: Digest,
        kind: BlobKind,
        total: u64,
    ) -> Result<Option<BlobWriter>, BlobError> {
        check_size(kind, total)?;
        if self.has(&digest) {
            return Ok(None);
        }
        if !lock(&self.shared.writing).insert(digest) {
            return Err(BlobError::Busy(digest));
        }
        let writer = BlobWriter {
            db: self.db.clone(),
            shared: Arc::downgrade(&self.shared),
            limits: self.limits,
            digest,
            kind,
            total,
            chunks: Vec::new(),
            written: 0,
            hasher: Sha256::new(),
            tensor: None,
            reservation: None,
            done: false,
        };
        // The marker is committed before any chunk, so a chunk on disk
        // always has one; the chunk commits are not durable on their own,
        // and a later durable commit makes the marker durable first.
        let txn = self.write_txn(Durability::None)?;
        {
            let mut staging = txn.open_table(STAGING).map_err(db_error)?;
            staging
                .insert(&digest.0, unix_seconds(SystemTime::now()))
                .map_err(db_error)?;
        }
        txn.commit().map_err(db_error)?;
        Ok(Some(writer))
    }

    fn write_txn(&self, durability: Durability) -> Result<WriteTransaction, BlobError> {
        write_txn(&self.db, durability)
    }

    fn count_read(&self) {
        self.shared.chunks_read.fetch_add(1, Ordering::Relaxed);
    }

    fn count_written(&self, chunks: usize) {
        let chunks = u64::try_from(chunks).unwrap_or(u64::MAX);
        self.shared
            .chunks_written
            .fetch_add(chunks, Ordering::Relaxed);
    }

    fn record(&self, digest: &Digest) -> Result<Option<BlobRecord>, BlobError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        let Some(bytes) = records.get(&digest.0).map_err(db_error)? else {
            return Ok(None);
        };
        BlobRecord::decode(digest, bytes.value()).map(Some)
    }

    /// The blob whose SHA-256 is `digest`, whole, if held. For callers that
    /// need the bytes at once (a dataset to train on, a state to replay);
    /// [`Self::chunks`] streams them instead.
    pub fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, BlobError> {
        let Some(chunks) = self.chunks(digest)? else {
            return Ok(None);
        };
        let mut bytes = Vec::with_capacity(usize::try_from(chunks.total).unwrap_or(0));
        for chunk in chunks {
            bytes.extend_from_slice(&chunk?);
        }
        Ok(Some(bytes))
    }

    /// The chunks of the blob `digest`, read and checked one at a time, if
    /// held.
    pub fn chunks(&self, digest: &Digest) -> Result<Option<BlobChunks>, BlobError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        let Some(bytes) = records.get(&digest.0).map_err(db_error)? else {
            return Ok(None);
        };
        let record = BlobRecord::decode(digest, bytes.value())?;
        Ok(Some(BlobChunks {
            store: self.clone(),
            table: txn.open_table(CHUNKS).map_err(db_error)?,
            digest: *digest,
            total: record.total,
            expected: record.chunks.into_iter(),
            index: 0,
        }))
    }

    /// Chunk `index` of the blob `digest`, checked against its record;
    /// `None` when the blob is not held or has no such chunk.
    pub fn read_chunk(&self, digest: &Digest, index: u32) -> Result<Option<Vec<u8>>, BlobError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let records = txn.open_table(RECORDS).map_err(db_error)?;
        let Some(bytes) = records.get(&digest.0).map_err(db_error)? else {
            return Ok(None);
        };
        let record = BlobRecord::decode(digest, bytes.value())?;
        let Some(expected) = usize::try_from(index)
            .ok()
            .and_then(|i| record.chunks.get(i))
        else {
            return Ok(None);
        };
        let table = txn.open_table(CHUNKS).map_err(db_error)?;
        self.read_checked(&table, digest, index, expected).map(Some)
    }

    fn read_checked(
        &self,
        table: &ReadOnlyTable<&'static [u8; 36], &'static [u8]>,
        digest: &Digest,
        index: u32,
        expected: &Digest,
    ) -> Result<Vec<u8>, BlobError> {
        let corrupt = || BlobError::Corrupt {
            digest: *digest,
            index,
        };
        let bytes = table
            .get(&chunk_key(digest, index))
            .map_err(db_error)?
            .ok_or_else(corrupt)?
            .value()
            .to_vec();
        self.count_read();
        // Every read is checked (a hash per chunk, cheap next to the read):
        // a chunk damaged on disk must never be served to a peer, who would
        // penalise this node for it, nor replayed.
        if sha256(&bytes) != *expected {
            return Err(corrupt());
        }
        Ok(bytes)
    }

    /// Whether the blob whose SHA-256 is `digest` is held. Reads its record
    /// only, never its chunks.
    pub fn has(&self, digest: &Digest) -> bool {
        let held = || -> Result<bool, BlobError> {
            let txn = self.db.begin_read().map_err(db_error)?;
            let records = txn.open_table(RECORDS).map_err(db_error)?;
            Ok(records.get(&digest.0).map_err(db_error)?.is_some())
        };
        held().unwrap_or(false)
    }

    /// The SHA-256 of the held blob that `name` names, if any.
    pub fn resolve(&self, name: BlobName) -> Result<Option<Digest>, BlobError> {
        match name {
            BlobName::Content(digest) => Ok(self.has(&digest).then_some(digest)),
            BlobName::Weights(tensor) => {
                let txn = self.db.begin_read().map_err(db_error)?;
                let table = txn.open_table(WEIGHTS).map_err(db_error)?;
                let Some(file) = table.get(&tensor.0).map_err(db_error)? else {
                    return Ok(None);
                };
                let file = Digest(*file.value());
                Ok(self.has(&file).then_some(file))
            }
        }
    }

    /// The manifest of the held blob `name` names, if any.
    pub fn manifest(&self, name: BlobName) -> Result<Option<BlobManifest>, BlobError> {
        let Some(digest) = self.resolve(name)? else {
            return Ok(None);
        };
        Ok(self.record(&digest)?.map(|r| r.manifest(digest)))
    }

    /// A slice of the blob `name` names, at most `max_len` bytes from
    /// `offset`; `None` when the blob is not held. Reads only the chunks the
    /// slice overlaps.
    pub fn chunk(
        &self,
        name: BlobName,
        offset: u64,
        max_len: u32,
    ) -> Result<Option<BlobChunk>, BlobError> {
        let Some(digest) = self.resolve(name)? else {
            return Ok(None);
        };
        let Some(record) = self.record(&digest)? else {
            return Ok(None);
        };
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(CHUNKS).map_err(db_error)?;
        let size = u64::from(BLOB_CHUNK_BYTES);
        let start = offset.min(record.total);
        let end = start.saturating_add(u64::from(max_len)).min(record.total);
        let mut bytes = Vec::with_capacity(usize::try_from(end.saturating_sub(start)).unwrap_or(0));
        let mut at = start;
        while at < end {
            let index = u32::try_from(at / size).map_err(db_error)?;
            let expected = record
                .chunks
                .get(usize::try_from(index).map_err(db_error)?)
                .ok_or(BlobError::Corrupt { digest, index })?;
            let chunk = self.read_checked(&table, &digest, index, expected)?;
            let chunk_start = u64::from(index).saturating_mul(size);
            let from = usize::try_from(at.saturating_sub(chunk_start)).map_err(db_error)?;
            let to = usize::try_from(
                end.min(chunk_start.saturating_add(size))
                    .saturating_sub(chunk_start),
            )
            .map_err(db_error)?;
            let piece = chunk
                .get(from..to)
                .ok_or(BlobError::Corrupt { digest, index })?;
            bytes.extend_from_slice(piece);
            at = chunk_start.saturating_add(u64::try_from(to).map_err(db_error)?);
        }
        Ok(Some(BlobChunk {
            digest,
            total: record.total,
            offset,
            bytes,
        }))
    }

    /// Drops every training state stored before `stored_before` for which
    /// `keep` is false; datasets and weights are always kept. Candidates are
    /// looked for in a read transaction (most calls find none and write
    /// nothing), then judged again and dropped in one write transaction, so
    /// a state stored again meanwhile (which refreshes its time) is judged
    /// on its new time.
    pub fn prune_states(
        &self,
        stored_before: SystemTime,
        keep: impl Fn(&Digest) -> bool,
    ) -> Result<PruneReport, BlobError> {
        let cutoff = unix_seconds(stored_before);
        let prunable = |digest: &Digest, bytes: &[u8]| -> Option<u64> {
            let record = BlobRecord::decode(digest, bytes).ok()?;
            let old_state = record.kind == BlobKind::State && record.stored_at < cutoff;
            (old_state && !keep(digest)).then_some(record.total)
        };
        let candidates: Vec<Digest> = {
            let txn = self.db.begin_read().map_err(db_error)?;
            let records = txn.open_table(RECORDS).map_err(db_error)?;
            let mut candidates = Vec::new();
            for entry in records.iter().map_err(db_error)? {
                let (key, value) = entry.map_err(db_error)?;
                let digest = Digest(*key.value());
                if prunable(&digest, value.value()).is_some() {
                    candidates.push(digest);
                }
            }
            candidates
        };
        let mut report = PruneReport::default();
        if candidates.is_empty() {
            return Ok(report);
        }
        let txn = self.write_txn(Durability::Immediate)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(db_error)?;
            let mut chunks = txn.open_table(CHUNKS).map_err(db_error)?;
            for digest in candidates {
                let total = match records.get(&digest.0).map_err(db_error)? {
                    Some(bytes) => prunable(&digest, bytes.value()),
                    None => None,
                };
                let Some(total) = total else {
                    continue;
                };
                records.remove(&digest.0).map_err(db_error)?;
                remove_chunks(&mut chunks, &digest)?;
                report.dropped = report.dropped.saturating_add(1);
                report.bytes = report.bytes.saturating_add(total);
            }
        }
        txn.commit().map_err(db_error)?;
        Ok(report)
    }

    /// Moves the whole blobs of a store written before chunking into
    /// chunks. Their kind was not recorded: a file the weights index names
    /// is weights, one that parses as a dataset is a dataset, anything else
    /// a state.
    fn migrate_whole_blobs(&self) -> Result<(), BlobError> {
        {
            let txn = self.db.begin_read().map_err(db_error)?;
            match txn.open_table(LEGACY_BLOBS) {
                Ok(_) => {}
                Err(TableError::TableDoesNotExist(_)) => return Ok(()),
                Err(err) => return Err(db_error(err)),
            }
        }
        let mut moved = 0usize;
        let txn = self.write_txn(Durability::Immediate)?;
        {
            let weights: HashSet<Digest> = {
                let table = txn.open_table(WEIGHTS).map_err(db_error)?;
                let files = table
                    .iter()
                    .map_err(db_error)?
                    .map(|entry| entry.map(|(_, file)| Digest(*file.value())))
                    .collect::<Result<_, _>>()
                    .map_err(db_error)?;
                files
            };
            let legacy = txn.open_table(LEGACY_BLOBS).map_err(db_error)?;
            let mut records = txn.open_table(RECORDS).map_err(db_error)?;
            let mut chunks = txn.open_table(CHUNKS).map_err(db_error)?;
            for entry in legacy.iter().map_err(db_error)? {
                let (key, value) = entry.map_err(db_error)?;
                let digest = Digest(*key.value());
                let bytes = value.value();
                let kind = if weights.contains(&digest) {
                    BlobKind::Weights
                } else if Dataset::from_blob(bytes, &self.limits).is_ok() {
                    BlobKind::Dataset
                } else {
                    BlobKind::State
                };
                let mut hashes = Vec::new();
                for (index, chunk) in bytes.chunks(chunk_size()).enumerate() {
                    let index = u32::try_from(index).map_err(db_error)?;
                    chunks
                        .insert(&chunk_key(&digest, index), chunk)
                        .map_err(db_error)?;
                    hashes.push(sha256(chunk));
                }
                let record = BlobRecord {
                    kind,
                    total: u64::try_from(bytes.len()).map_err(db_error)?,
                    chunks: hashes,
                    stored_at: unix_seconds(SystemTime::now()),
                };
                records
                    .insert(&digest.0, record.encode()?.as_slice())
                    .map_err(db_error)?;
                moved = moved.saturating_add(1);
            }
        }
        txn.delete_table(LEGACY_BLOBS).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        tracing::info!(blobs = moved, "whole blobs moved into chunks");
        Ok(())
    }

    /// Deletes the chunks of transfers a crash interrupted.
    fn drop_staged(&self) -> Result<(), BlobError> {
        let txn = self.write_txn(Durability::Immediate)?;
        {
            let mut staging = txn.open_table(STAGING).map_err(db_error)?;
            let records = txn.open_table(RECORDS).map_err(db_error)?;
            let mut chunks = txn.open_table(CHUNKS).map_err(db_error)?;
            let staged: Vec<Digest> = staging
                .iter()
                .map_err(db_error)?
                .map(|entry| entry.map(|(key, _)| Digest(*key.value())))
                .collect::<Result<_, _>>()
                .map_err(db_error)?;
            for digest in staged {
                if records.get(&digest.0).map_err(db_error)?.is_none() {
                    remove_chunks(&mut chunks, &digest)?;
                }
                staging.remove(&digest.0).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }

    /// The gate that lets one fetch of `name` run at a time.
    pub(crate) fn fetch_gate(&self, name: BlobName) -> Arc<tokio::sync::Mutex<()>> {
        let mut gates = lock(&self.shared.fetches);
        gates.retain(|_, gate| Arc::strong_count(gate) > 1);
        gates.entry(name).or_default().clone()
    }
}

fn write_txn(db: &Database, durability: Durability) -> Result<WriteTransaction, BlobError> {
    let mut txn = db.begin_write().map_err(db_error)?;
    txn.set_durability(durability).map_err(db_error)?;
    Ok(txn)
}

fn chunk_size() -> usize {
    usize::try_from(BLOB_CHUNK_BYTES).unwrap_or(usize::MAX)
}

/// Refreshes the record of `digest` if held: stored now, and a state
/// `checked` as a dataset or weights file becomes one (those are never
/// pruned). Returns whether it was held.
fn refresh_record(
    records: &mut Table<'_, &'static [u8; 32], &'static [u8]>,
    digest: &Digest,
    checked: Option<BlobKind>,
) -> Result<bool, BlobError> {
    let Some(bytes) = records.get(&digest.0).map_err(db_error)? else {
        return Ok(false);
    };
    let mut record = BlobRecord::decode(digest, bytes.value())?;
    drop(bytes);
    if let (BlobKind::State, Some(kind)) = (record.kind, checked) {
        record.kind = kind;
    }
    record.stored_at = unix_seconds(SystemTime::now());
    records
        .insert(&digest.0, record.encode()?.as_slice())
        .map_err(db_error)?;
    Ok(true)
}

fn remove_chunks(
    chunks: &mut Table<'_, &'static [u8; 36], &'static [u8]>,
    digest: &Digest,
) -> Result<(), BlobError> {
    let first = chunk_key(digest, 0);
    let last = chunk_key(digest, u32::MAX);
    chunks
        .retain_in::<&[u8; 36], _>(&first..=&last, |_, _| false)
        .map_err(db_error)
}

/// The chunks of a held blob, read and checked against its record one at
/// a time; from [`BlobStore::chunks`].
pub struct BlobChunks {
    store: BlobStore,
    table: ReadOnlyTable<&'static [u8; 36], &'static [u8]>,
    digest: Digest,
    total: u64,
    expected: std::vec::IntoIter<Digest>,
    index: u32,
}

impl BlobChunks {
    /// The blob's length in bytes.
    pub fn total(&self) -> u64 {
        self.total
    }
}

impl Iterator for BlobChunks {
    type Item = Result<Vec<u8>, BlobError>;

    fn next(&mut self) -> Option<Self::Item> {
        let expected = self.expected.next()?;
        let index = self.index;
        self.index = self.index.saturating_add(1);
        Some(
            self.store
                .read_checked(&self.table, &self.digest, index, &expected),
        )
    }
}

/// A blob being written chunk by chunk, from [`BlobStore::begin`]. Its
/// chunks are written as they come and hashed into the whole; the blob is
/// held only once [`Self::finish`] has checked the whole. Dropped without
/// finishing, it deletes what it wrote.
///
/// A writer never touches a blob that became held meanwhile (a whole
/// [`BlobStore::put`] of the same bytes): each of its writes and its
/// clean-up first look for the record in the same transaction. It holds the
/// store weakly, so a writer outliving the store does not keep it alive; it
/// needs only the database to clean up.
pub struct BlobWriter {
    db: Arc<Database>,
    shared: Weak<Shared>,
    limits: DatasetLimits,
    digest: Digest,
    kind: BlobKind,
    total: u64,
    chunks: Vec<Digest>,
    written: u64,
    hasher: Sha256,
    tensor: Option<Digest>,
    reservation: Option<Reservation>,
    done: bool,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("digest", &self.digest)
            .field("kind", &self.kind)
            .field("total", &self.total)
            .field("written", &self.written)
            .finish_non_exhaustive()
    }
}

impl BlobWriter {
    fn store(&self) -> Result<BlobStore, BlobError> {
        let shared = self
            .shared
            .upgrade()
            .ok_or_else(|| BlobError::Database("the blob store is closed".into()))?;
        Ok(BlobStore {
            db: self.db.clone(),
            limits: self.limits,
            shared,
        })
    }

    /// Where the next chunk starts.
    pub fn next_offset(&self) -> u64 {
        self.written
    }

    /// The blob being written.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Requires a weights file to hash to tensor digest `tensor`.
    pub fn expect_tensor(&mut self, tensor: Digest) {
        self.tensor = Some(tensor);
    }

    /// Keeps `reservation` until the writer ends.
    pub fn hold(&mut self, reservation: Reservation) {
        self.reservation = Some(reservation);
    }

    /// Writes the next chunk, refusing it when its length is not the one
    /// its place in the blob has, or when it does not hash to `expected`.
    pub fn write_chunk(
        &mut self,
        bytes: &[u8],
        expected: Option<&Digest>,
    ) -> Result<(), BlobError> {
        let index = u64::try_from(self.chunks.len()).unwrap_or(u64::MAX);
        let got = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
        let want = chunk_len(self.total, index).unwrap_or(0);
        if got != want || want == 0 {
            return Err(BlobError::ChunkLength {
                index,
                total: self.total,
                got,
                expected: want,
            });
        }
        let index = u32::try_from(index).map_err(db_error)?;
        let hash = sha256(bytes);
        if let Some(expected) = expected.filter(|e| **e != hash) {
            return Err(BlobError::WrongChunk {
                index,
                got: hash,
                expected: *expected,
            });
        }
        let store = self.store()?;
        let txn = store.write_txn(Durability::None)?;
        {
            let records = txn.open_table(RECORDS).map_err(db_error)?;
            if records.get(&self.digest.0).map_err(db_error)?.is_none() {
                let mut table = txn.open_table(CHUNKS).map_err(db_error)?;
                table
                    .insert(&chunk_key(&self.digest, index), bytes)
                    .map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)?;
        store.count_written(1);
        self.hasher.update(bytes);
        self.chunks.push(hash);
        self.written = self.written.saturating_add(got);
        Ok(())
    }

    /// Checks the whole blob (every chunk written, its SHA-256 the digest
    /// asked for, a dataset that parses, a weights file with the tensor
    /// digest asked for) and makes it held. Any failure deletes what was
    /// written.
    pub fn finish(mut self) -> Result<Digest, BlobError> {
        if self.written != self.total {
            return Err(BlobError::ChunkLength {
                index: u64::try_from(self.chunks.len()).unwrap_or(u64::MAX),
                total: self.total,
                got: 0,
                expected: chunk_len(
                    self.total,
                    u64::try_from(self.chunks.len()).unwrap_or(u64::MAX),
                )
                .unwrap_or(0),
            });
        }
        let got = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if got != self.digest {
            return Err(BlobError::WrongDigest {
                got,
                expected: self.digest,
            });
        }
        // Datasets and weights are checked whole, as their users read them.
        let tensor = match self.kind {
            BlobKind::State => None,
            kind => {
                let bytes = self.read_written()?;
                let tensor = self.store()?.check_kind(kind, &bytes)?;
                if let (Some(got), Some(expected)) = (tensor, self.tensor) {
                    if got != expected {
                        return Err(BlobError::WrongDigest { got, expected });
                    }
                }
                tensor
            }
        };
        let record = BlobRecord {
            kind: self.kind,
            total: self.total,
            chunks: std::mem::take(&mut self.chunks),
            stored_at: unix_seconds(SystemTime::now()),
        };
        let txn = write_txn(&self.db, Durability::Immediate)?;
        {
            let mut records = txn.open_table(RECORDS).map_err(db_error)?;
            if records.get(&self.digest.0).map_err(db_error)?.is_none() {
                records
                    .insert(&self.digest.0, record.encode()?.as_slice())
                    .map_err(db_error)?;
                if let Some(tensor) = tensor {
                    let mut weights = txn.open_table(WEIGHTS).map_err(db_error)?;
                    weights
                        .insert(&tensor.0, &self.digest.0)
                        .map_err(db_error)?;
                }
            }
            let mut staging = txn.open_table(STAGING).map_err(db_error)?;
            staging.remove(&self.digest.0).map_err(db_error)?;
        }
        txn.commit().map_err(db_error)?;
        self.done = true;
        Ok(self.digest)
    }

    fn read_written(&self) -> Result<Vec<u8>, BlobError> {
        let store = self.store()?;
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(CHUNKS).map_err(db_error)?;
        let mut bytes = Vec::with_capacity(usize::try_from(self.total).unwrap_or(0));
        for (index, expected) in self.chunks.iter().enumerate() {
            let index = u32::try_from(index).map_err(db_error)?;
            bytes.extend_from_slice(&store.read_checked(&table, &self.digest, index, expected)?);
        }
        Ok(bytes)
    }

    /// Deletes what was written (unless the blob became held meanwhile).
    pub fn abort(mut self) {
        self.discard();
    }

    fn discard(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        let discard = || -> Result<(), BlobError> {
            let txn = write_txn(&self.db, Durability::None)?;
            {
                let records = txn.open_table(RECORDS).map_err(db_error)?;
                if records.get(&self.digest.0).map_err(db_error)?.is_none() {
                    let mut chunks = txn.open_table(CHUNKS).map_err(db_error)?;
                    remove_chunks(&mut chunks, &self.digest)?;
                }
                let mut staging = txn.open_table(STAGING).map_err(db_error)?;
                staging.remove(&self.digest.0).map_err(db_error)?;
            }
            txn.commit().map_err(db_error)
        };
        if let Err(err) = discard() {
            // The staging marker stays, so the next start deletes them.
            tracing::error!(blob = %self.digest, reason = %err, "cannot drop the chunks of an unfinished blob");
        }
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        self.discard();
        if let Some(shared) = self.shared.upgrade() {
            lock(&shared.writing).remove(&self.digest);
        }
    }
}

impl BlobSource for BlobStore {
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self.get(digest).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use protocol::blob::chunk_count;
    use protocol::job::JobSpec;
    use protocol::{ChainParams, Task};

    use super::*;

    const CHUNK: usize = BLOB_CHUNK_BYTES as usize;

    fn open() -> (tempfile::TempDir, BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join(BLOB_FILE)).unwrap();
        (dir, store)
    }

    /// Bytes that differ from chunk to chunk and blob to blob.
    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i % 251) as u8 ^ (i / CHUNK) as u8 ^ seed)
            .collect()
    }

    fn iris() -> Dataset {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/iris.csv");
        Dataset::from_csv_file(
            Path::new(path),
            trainer::TaskKind::Classification,
            &DatasetLimits::default(),
        )
        .unwrap()
    }

    /// Chunk rows the table holds for `digest`, with a record or not.
    fn stored_chunks(store: &BlobStore, digest: &Digest) -> usize {
        let txn = store.db.begin_read().unwrap();
        let table = txn.open_table(CHUNKS).unwrap();
        let (first, last) = (chunk_key(digest, 0), chunk_key(digest, u32::MAX));
        table.range::<&[u8; 36]>(&first..=&last).unwrap().count()
    }

    /// The address of the tests' HTTP client.
    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    /// Uploads `bytes` from `client` the way the HTTP route does, chunk by
    /// chunk.
    fn upload(
        store: &BlobStore,
        client: IpAddr,
        kind: BlobKind,
        bytes: &[u8],
    ) -> Result<Digest, BlobError> {
        let digest = sha256(bytes);
        let Some(mut writer) = store.begin_upload(client, digest, kind, bytes.len() as u64)? else {
            return Ok(digest);
        };
        for chunk in bytes.chunks(CHUNK) {
            writer.write_chunk(chunk, None)?;
        }
        writer.finish()
    }

    #[test]
    fn put_checks_and_get_returns_the_bytes() {
        let (_dir, store) = open();
        let csv = "a,b,label\n1,2,0\n3,4,1\n5,6,0\n7,8,1\n";
        let dataset = trainer::parse_csv(
            csv,
            trainer::TaskKind::Classification,
            &DatasetLimits::default(),
        )
        .unwrap();
        let blob = dataset.to_blob();
        let digest = store.put(BlobKind::Dataset, &blob).unwrap();
        assert_eq!(digest, dataset.digest());
        assert_eq!(store.get(&digest).unwrap(), Some(blob.clone()));
        assert!(matches!(
            store.put(BlobKind::Dataset, b"not a dataset"),
            Err(BlobError::BadDataset(_))
        ));
        assert!(matches!(
            store.put(BlobKind::Weights, b"not weights"),
            Err(BlobError::BadWeights(_))
        ));
        let too_large = vec![0; MAX_BLOB_BYTES + 1];
        assert!(matches!(
            store.put(BlobKind::State, &too_large),
            Err(BlobError::TooLarge { got, max, .. }) if got == max + 1
        ));
        let chunk = store
            .chunk(BlobName::Content(digest), 2, 3)
            .unwrap()
            .unwrap();
        assert_eq!(chunk.bytes, blob.get(2..5).unwrap());
        assert_eq!(chunk.total, u64::try_from(blob.len()).unwrap());
        assert!(store
            .chunk(BlobName::Content(Digest([9; 32])), 0, 3)
            .unwrap()
            .is_none());
    }

    #[test]
    fn blobs_round_trip_across_chunk_boundaries() {
        let (_dir, store) = open();
        let sizes = [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 3 * CHUNK + 5];
        for (seed, len) in sizes.into_iter().enumerate() {
            let bytes = pattern(len, seed as u8);
            let digest = store.put(BlobKind::State, &bytes).unwrap();
            assert_eq!(digest, sha256(&bytes));
            assert!(store.has(&digest), "{len} bytes");
            assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&bytes[..]));
            let manifest = store.manifest(BlobName::Content(digest)).unwrap().unwrap();
            assert_eq!(manifest.total, len as u64);
            assert_eq!(manifest.chunks.len() as u64, chunk_count(len as u64));
            assert_eq!(manifest.check(), Ok(()));
            let chunks: Vec<Vec<u8>> = store
                .chunks(&digest)
                .unwrap()
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(chunks.concat(), bytes, "{len} bytes");
            assert!(chunks.iter().all(|c| !c.is_empty() && c.len() <= CHUNK));
            for (index, chunk) in chunks.iter().enumerate() {
                assert_eq!(
                    store.read_chunk(&digest, index as u32).unwrap().as_ref(),
                    Some(chunk)
                );
                assert_eq!(manifest.chunks[index], sha256(chunk));
            }
            assert_eq!(
                store.read_chunk(&digest, chunks.len() as u32).unwrap(),
                None
            );
            // A slice across a boundary reads from both sides of it.
            for offset in [0, CHUNK.saturating_sub(3), len.saturating_sub(2), len] {
                let slice = store
                    .chunk(BlobName::Content(digest), offset as u64, 7)
                    .unwrap()
                    .unwrap();
                let end = (offset + 7).min(len);
                assert_eq!(
                    slice.bytes,
                    bytes[offset.min(len)..end],
                    "{len} at {offset}"
                );
            }
            // The same bytes written chunk by chunk, as a fetch does.
            let other = store.clone();
            other
                .prune_states(SystemTime::now() + Duration::from_secs(1), |_| false)
                .unwrap();
            assert!(!other.has(&digest));
            assert_eq!(stored_chunks(&store, &digest), 0);
            let mut writer = store
                .begin(digest, BlobKind::State, len as u64)
                .unwrap()
                .unwrap();
            for chunk in bytes.chunks(CHUNK) {
                writer.write_chunk(chunk, Some(&sha256(chunk))).unwrap();
            }
            assert_eq!(writer.finish().unwrap(), digest);
            assert_eq!(store.get(&digest).unwrap().as_deref(), Some(&bytes[..]));
            assert_eq!(
                store.manifest(BlobName::Content(digest)).unwrap(),
                Some(manifest)
            );
        }
    }

    #[test]
    fn chunks_of_the_wrong_length_are_refused() {
        let (_dir, store) = open();
        let bytes = pattern(CHUNK + 10, 1);
        let digest = sha256(&bytes);
        let mut writer = store
            .begin(digest, BlobKind::State, bytes.len() as u64)
            .unwrap()
            .unwrap();
        assert!(matches!(
            writer.write_chunk(&bytes[..CHUNK - 1], None),
            Err(BlobError::ChunkLength { index: 0, got, expected, .. })
                if got == CHUNK as u64 - 1 && expected == CHUNK as u64
        ));
        writer.write_chunk(&bytes[..CHUNK], None).unwrap();
        assert!(matches!(
            writer.write_chunk(&bytes[CHUNK..CHUNK + 9], None),
            Err(BlobError::ChunkLength { index: 1, .. })
        ));
        writer.write_chunk(&bytes[CHUNK..], None).unwrap();
        assert!(matches!(
            writer.write_chunk(&bytes[..1], None),
            Err(BlobError::ChunkLength {
                index: 2,
                expected: 0,
                ..
            })
        ));
        assert_eq!(writer.finish().unwrap(), digest);
        // One writer per blob: a second transfer waits for the first.
        let other = pattern(10, 2);
        let first = store.begin(sha256(&other), BlobKind::State, 10).unwrap();
        assert!(matches!(
            store.begin(sha256(&other), BlobKind::State, 10),
            Err(BlobError::Busy(_))
        ));
        drop(first);
        assert!(store
            .begin(sha256(&other), BlobKind::State, 10)
            .unwrap()
            .is_some());
    }

    #[test]
    fn a_corrupted_chunk_is_refused_and_nothing_of_it_is_kept() {
        let (_dir, store) = open();
        let bytes = pattern(2 * CHUNK + 100, 3);
        let digest = sha256(&bytes);
        let hashes: Vec<Digest> = bytes.chunks(CHUNK).map(sha256).collect();
        let mut corrupted = bytes[CHUNK..2 * CHUNK].to_vec();
        corrupted[17] ^= 0x40;

        // A chunk that does not match the manifest is refused on arrival.
        let mut writer = store
            .begin(digest, BlobKind::State, bytes.len() as u64)
            .unwrap()
            .unwrap();
        writer
            .write_chunk(&bytes[..CHUNK], Some(&hashes[0]))
            .unwrap();
        assert!(matches!(
            writer.write_chunk(&corrupted, Some(&hashes[1])),
            Err(BlobError::WrongChunk { index: 1, got, expected }) if got == sha256(&corrupted) && expected == hashes[1]
        ));
        assert_eq!(stored_chunks(&store, &digest), 1);
        writer.abort();
        assert_eq!(stored_chunks(&store, &digest), 0);
        assert!(!store.has(&digest));

        // A chunk that matches a lying manifest is caught by the whole.
        let mut writer = store
            .begin(digest, BlobKind::State, bytes.len() as u64)
            .unwrap()
            .unwrap();
        writer.write_chunk(&bytes[..CHUNK], None).unwrap();
        writer.write_chunk(&corrupted, None).unwrap();
        writer.write_chunk(&bytes[2 * CHUNK..], None).unwrap();
        assert!(matches!(
            writer.finish(),
            Err(BlobError::WrongDigest { expected, .. }) if expected == digest
        ));
        assert_eq!(stored_chunks(&store, &digest), 0);
        assert!(!store.has(&digest));
        assert_eq!(store.get(&digest).unwrap(), None);

        // A chunk damaged on disk is never served.
        store.put(BlobKind::State, &bytes).unwrap();
        {
            let txn = store.db.begin_write().unwrap();
            {
                let mut table = txn.open_table(CHUNKS).unwrap();
                table
                    .insert(&chunk_key(&digest, 1), corrupted.as_slice())
                    .unwrap();
            }
            txn.commit().unwrap();
        }
        assert!(matches!(
            store.read_chunk(&digest, 1),
            Err(BlobError::Corrupt { index: 1, .. })
        ));
        assert!(matches!(store.get(&digest), Err(BlobError::Corrupt { .. })));
        assert_eq!(
            store.read_chunk(&digest, 0).unwrap().as_deref(),
            Some(&bytes[..CHUNK])
        );
    }

    #[test]
    fn has_reads_no_chunk_and_unfinished_blobs_are_not_held() {
        let (_dir, store) = open();
        let bytes = pattern(3 * CHUNK, 4);
        let digest = store.put(BlobKind::State, &bytes).unwrap();
        let before = store.metrics();
        assert_eq!(before.chunks_written, 3);
        assert!(store.has(&digest));
        assert_eq!(
            store.resolve(BlobName::Content(digest)).unwrap(),
            Some(digest)
        );
        assert!(store.manifest(BlobName::Content(digest)).unwrap().is_some());
        assert_eq!(
            store.metrics(),
            before,
            "has, resolve and manifest read no chunk"
        );
        store.get(&digest).unwrap();
        assert_eq!(store.metrics().chunks_read, before.chunks_read + 3);

        let partial = pattern(2 * CHUNK, 5);
        let partial_digest = sha256(&partial);
        let mut writer = store
            .begin(partial_digest, BlobKind::State, partial.len() as u64)
            .unwrap()
            .unwrap();
        writer.write_chunk(&partial[..CHUNK], None).unwrap();
        assert!(!store.has(&partial_digest));
        assert_eq!(store.get(&partial_digest).unwrap(), None);
        assert_eq!(store.read_chunk(&partial_digest, 0).unwrap(), None);
        drop(writer);
        assert_eq!(stored_chunks(&store, &partial_digest), 0);
    }

    #[test]
    fn a_whole_put_during_a_transfer_is_never_damaged_by_it() {
        let (_dir, store) = open();
        let bytes = pattern(2 * CHUNK, 6);
        let digest = sha256(&bytes);
        let garbage = pattern(2 * CHUNK, 7);
        let mut writer = store
            .begin(digest, BlobKind::State, bytes.len() as u64)
            .unwrap()
            .unwrap();
        writer.write_chunk(&garbage[..CHUNK], None).unwrap();
        store.put(BlobKind::State, &bytes).unwrap();
        writer.write_chunk(&garbage[CHUNK..], None).unwrap();
        assert!(matches!(
            writer.finish(),
            Err(BlobError::WrongDigest { .. })
        ));
        assert_eq!(store.get(&digest).unwrap(), Some(bytes));
    }

    #[test]
    fn pruning_drops_only_old_states_no_pending_result_names() {
        let (_dir, store) = open();
        let named = store.put(BlobKind::State, &pattern(CHUNK + 1, 8)).unwrap();
        let settled = store.put(BlobKind::State, &pattern(2 * CHUNK, 9)).unwrap();
        let dataset = iris();
        let data = store.put(BlobKind::Dataset, &dataset.to_blob()).unwrap();
        let keep = |digest: &Digest| *digest == named;

        // Stored within the grace period: everything stays.
        let report = store
            .prune_states(SystemTime::now() - STATE_GRACE, keep)
            .unwrap();
        assert_eq!(report, PruneReport::default());
        assert!(store.has(&named) && store.has(&settled) && store.has(&data));

        let later = SystemTime::now() + Duration::from_secs(1);
        let report = store.prune_states(later, keep).unwrap();
        assert_eq!(
            report,
            PruneReport {
                dropped: 1,
                bytes: 2 * CHUNK as u64
            }
        );
        assert!(!store.has(&settled));
        assert_eq!(store.get(&settled).unwrap(), None);
        assert_eq!(stored_chunks(&store, &settled), 0);
        assert!(store.has(&named));
        assert_eq!(store.get(&data).unwrap(), Some(dataset.to_blob()));

        // A dataset stored as a state first becomes a dataset, kept for good.
        let other = trainer::parse_csv(
            "a,label\n1,0\n2,1\n",
            trainer::TaskKind::Classification,
            &DatasetLimits::default(),
        )
        .unwrap()
        .to_blob();
        let digest = store.put(BlobKind::State, &other).unwrap();
        store.put(BlobKind::Dataset, &other).unwrap();
        store
            .prune_states(later + Duration::from_secs(1), |_| false)
            .unwrap();
        assert!(store.has(&digest));
        assert!(!store.has(&named));
    }

    #[test]
    fn client_uploads_are_checked_ordered_and_bounded() {
        let (_dir, store) = open();
        let chunk = CHUNK as u64;
        store.set_quotas(
            QuotaPolicy {
                in_flight: 3 * chunk,
                per_window: 7 * chunk,
                window: Duration::from_secs(600),
            },
            PEER_FETCH_QUOTA,
        );
        let other_client = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));
        let first = pattern(2 * CHUNK + 1, 10);
        let digest = sha256(&first);
        let total = first.len() as u64;
        assert!(matches!(
            store.begin_upload(CLIENT, digest, BlobKind::State, MAX_BLOB_BYTES as u64 + 1),
            Err(BlobError::TooLarge { .. })
        ));
        let mut writer = store
            .begin_upload(CLIENT, digest, BlobKind::State, total)
            .unwrap()
            .unwrap();
        // Each chunk must have the length of its place in the blob.
        assert!(matches!(
            writer.write_chunk(&first[..1], None),
            Err(BlobError::ChunkLength { index: 0, got: 1, expected, .. }) if expected == chunk
        ));
        writer.write_chunk(&first[..CHUNK], None).unwrap();
        assert_eq!(writer.next_offset(), chunk);
        assert!(matches!(
            writer.write_chunk(&first[2 * CHUNK..], None),
            Err(BlobError::ChunkLength { index: 1, got: 1, expected, .. }) if expected == chunk
        ));
        assert_eq!(writer.next_offset(), chunk);
        // One upload per blob at once, whoever sends it; the refused one
        // is charged nothing (the window below counts it out).
        let small = pattern(10, 16);
        let theirs = store
            .begin_upload(other_client, sha256(&small), BlobKind::State, 10)
            .unwrap()
            .unwrap();
        assert!(matches!(
            store.begin_upload(CLIENT, sha256(&small), BlobKind::State, 10),
            Err(BlobError::Busy(busy)) if busy == sha256(&small)
        ));
        drop(theirs);

        // A second upload would pass the bytes in flight.
        let second = pattern(2 * CHUNK, 11);
        let refused = upload(&store, CLIENT, BlobKind::State, &second).unwrap_err();
        let BlobError::Quota(quota) = &refused else {
            panic!("expected a quota refusal, got {refused}");
        };
        assert_eq!(
            (
                quota.uploader,
                quota.limit,
                quota.used,
                quota.asked,
                quota.max
            ),
            (
                Uploader::Client(CLIENT),
                QuotaLimit::InFlight,
                2 * chunk + 1,
                2 * chunk,
                3 * chunk
            )
        );
        assert!(
            refused
                .to_string()
                .contains("CLIENT_UPLOAD_QUOTA in-flight"),
            "{refused}"
        );
        assert!(!store.has(&sha256(&second)));
        // Another address has a budget of its own.
        assert_eq!(
            upload(&store, other_client, BlobKind::State, &second).unwrap(),
            sha256(&second)
        );

        writer.write_chunk(&first[CHUNK..2 * CHUNK], None).unwrap();
        writer.write_chunk(&first[2 * CHUNK..], None).unwrap();
        assert_eq!(writer.finish().unwrap(), digest);
        assert_eq!(store.get(&digest).unwrap(), Some(first.clone()));
        // Held already: answered at once, nothing counted.
        assert!(store
            .begin_upload(CLIENT, digest, BlobKind::State, total)
            .unwrap()
            .is_none());

        // Wrong bytes: refused at the end, nothing kept, quota given back.
        let lie_digest = sha256(&first[..CHUNK]);
        let mut writer = store
            .begin_upload(CLIENT, lie_digest, BlobKind::State, second.len() as u64)
            .unwrap()
            .unwrap();
        for piece in second.chunks(CHUNK) {
            writer.write_chunk(piece, None).unwrap();
        }
        assert_eq!(stored_chunks(&store, &lie_digest), 2);
        assert!(matches!(
            writer.finish(),
            Err(BlobError::WrongDigest { got, expected }) if got == sha256(&second) && expected == lie_digest
        ));
        assert!(!store.has(&lie_digest));
        assert_eq!(stored_chunks(&store, &lie_digest), 0);
        let third = pattern(2 * CHUNK, 12);
        assert_eq!(
            upload(&store, CLIENT, BlobKind::State, &third).unwrap(),
            sha256(&third)
        );

        // The window counted the first (2 MiB + 1), the lie and the third
        // (2 MiB each), and nothing for the busy, refused and held ones.
        let refused = upload(&store, CLIENT, BlobKind::State, &pattern(CHUNK, 13)).unwrap_err();
        assert!(matches!(
            &refused,
            BlobError::Quota(quota)
                if quota.limit == QuotaLimit::PerWindow && quota.used == 6 * chunk + 1
        ));
        assert!(refused.to_string().contains("per-600s-window"), "{refused}");
        // The other address's window is its own.
        let fourth = pattern(CHUNK, 14);
        assert_eq!(
            upload(&store, other_client, BlobKind::State, &fourth).unwrap(),
            sha256(&fourth)
        );
    }

    #[test]
    fn a_store_of_whole_blobs_is_moved_into_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BLOB_FILE);
        let dataset = iris().to_blob();
        let state = pattern(CHUNK + 3, 13);
        {
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut blobs = txn.open_table(LEGACY_BLOBS).unwrap();
                blobs
                    .insert(&sha256(&dataset).0, dataset.as_slice())
                    .unwrap();
                blobs.insert(&sha256(&state).0, state.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = BlobStore::open(&path).unwrap();
        assert_eq!(store.get(&sha256(&dataset)).unwrap(), Some(dataset.clone()));
        assert_eq!(store.get(&sha256(&state)).unwrap(), Some(state.clone()));
        let kind = |bytes: &[u8]| {
            store
                .manifest(BlobName::Content(sha256(bytes)))
                .unwrap()
                .unwrap()
                .kind
        };
        assert_eq!(kind(&dataset), BlobKind::Dataset);
        assert_eq!(kind(&state), BlobKind::State);
        drop(store);
        let store = BlobStore::open(&path).unwrap();
        assert!(store.has(&sha256(&state)));
    }

    #[test]
    fn chunks_a_crash_left_are_deleted_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BLOB_FILE);
        let bytes = pattern(2 * CHUNK, 14);
        let digest = sha256(&bytes);
        {
            let store = BlobStore::open(&path).unwrap();
            let mut writer = store
                .begin(digest, BlobKind::State, bytes.len() as u64)
                .unwrap()
                .unwrap();
            writer.write_chunk(&bytes[..CHUNK], None).unwrap();
            // A crash: the writer never cleans up.
            writer.done = true;
            drop(writer);
            assert_eq!(stored_chunks(&store, &digest), 1);
        }
        let store = BlobStore::open(&path).unwrap();
        assert_eq!(stored_chunks(&store, &digest), 0);
        assert!(!store.has(&digest));
    }

    #[test]
    fn an_abandoned_upload_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(BLOB_FILE);
        let bytes = pattern(2 * CHUNK, 15);
        let digest = sha256(&bytes);
        let total = bytes.len() as u64;
        {
            let store = BlobStore::open(&path).unwrap();
            store.set_quotas(
                QuotaPolicy {
                    in_flight: total,
                    ..CLIENT_UPLOAD_QUOTA
                },
                PEER_FETCH_QUOTA,
            );
            let mut writer = store
                .begin_upload(CLIENT, digest, BlobKind::State, total)
                .unwrap()
                .unwrap();
            writer.write_chunk(&bytes[..CHUNK], None).unwrap();
            assert_eq!(stored_chunks(&store, &digest), 1);
            // The client goes away mid-body: its writer is dropped, with
            // what it wrote and its bytes in flight.
            drop(writer);
            assert_eq!(stored_chunks(&store, &digest), 0);
            assert!(!store.has(&digest));
            let mut writer = store
                .begin_upload(CLIENT, digest, BlobKind::State, total)
                .unwrap()
                .unwrap();
            writer.write_chunk(&bytes[..CHUNK], None).unwrap();
            // The store closes with the upload still open.
            drop(store);
            drop(writer);
        }
        let store = BlobStore::open(&path).unwrap();
        assert_eq!(stored_chunks(&store, &digest), 0);
        assert!(!store.has(&digest));
    }

    /// The most bytes a state of `spec` takes with `train` training rows
    /// (trainer/src/session.rs): 12 a parameter (weights and two Adam
    /// moments), 8 for each tensor's length in each of the three, 4 a
    /// training row (the row order), 4 a batch of the epoch (its losses)
    /// and 57 of fixed fields.
    fn state_bound(spec: &JobSpec, train: u64) -> u64 {
        let params = spec.parameter_count().unwrap();
        let tensors = 2 * (spec.model.hidden.len() as u64 + 1);
        let batches = train.div_ceil(u64::from(spec.batch_size));
        12 * params + 3 * 8 * tensors + 4 * train + 4 * batches + 57
    }

    #[test]
    fn the_cap_holds_the_states_of_the_largest_valid_job() {
        // The bound is exact but for the losses of batches not yet run.
        let dataset = iris();
        let spec = trainer::TrainSettings {
            hidden: vec![16, 8],
            epochs: 2,
            batch: 16,
            segments: 8,
            ..trainer::TrainSettings::default()
        }
        .job_spec(&dataset)
        .unwrap();
        let train = u64::from(spec.split.sizes(spec.dataset.rows).unwrap().train);
        let bound = state_bound(&spec, train);
        let mut lengths = Vec::new();
        trainer::train_keeping_states(&spec, &dataset, 7, &mut |_| {}, &mut |_, bytes| {
            lengths.push(bytes.len() as u64)
        })
        .unwrap();
        assert_eq!(lengths.len(), 9);
        let batches = train.div_ceil(16);
        for length in lengths {
            assert!(
                length <= bound && bound - length <= 4 * batches,
                "{length} of {bound}"
            );
        }

        // The largest model every preset allows, on a job within its cost
        // bounds: its states need more than 128 MiB and fit the cap.
        let mut largest = spec.clone();
        largest.dataset.features = 4096;
        largest.dataset.rows = 1000;
        largest.task = Task::Classification { classes: 1000 };
        largest.model.hidden = vec![1024; 8];
        largest.epochs = 1;
        largest.batch_size = 64;
        largest.segments = 8;
        assert_eq!(largest.parameter_count(), Some(12_567_528));
        for params in [ChainParams::devnet(), ChainParams::regtest()] {
            let limits = params.job_limits;
            largest.challenge_window = limits.min_challenge_window;
            largest.bond = limits.min_bond;
            largest.validate(&limits).unwrap();
            assert_eq!(limits.max_width, 1024);
            assert_eq!(limits.max_hidden_layers, 8);
            assert_eq!(limits.max_features, 4096);
            assert_eq!(limits.max_classes, 1000);
            let most = state_bound(&largest, u64::from(limits.max_rows));
            assert!(most > 128 << 20, "{most}");
            assert!(most <= MAX_BLOB_BYTES as u64, "{most}");
        }
        // 3.2·10^10 and 5.1·10^9 units, well under every preset's bounds.
        assert_eq!(largest.cost(), Some(31_724_536_672));
        assert_eq!(largest.segment_cost(), Some(5_131_647_424));
    }
}
