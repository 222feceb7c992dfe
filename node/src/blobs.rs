//! The blob store: datasets, weights files and training states kept by the
//! SHA-256 of their
//! bytes in their own redb file (`blobs.redb`), and the fetching of blobs
//! from peers over `/gradchain/blob/1` in capped chunks.
//!
//! Weights files are also indexed by their tensor digest (the `weights`
//! digest a job result carries, DESIGN §3), which the store recomputes from
//! the bytes itself: a worker uploads the safetensors file, the node checks
//! it parses and hashes to some tensor digest, and `predict` finds the file
//! of a fulfilled job through that index. So the chain only ever carries the
//! tensor digest, and no one has to be trusted for the mapping.
//!
//! Every blob is checked before it is stored: its digest (or tensor digest)
//! must be the one asked for, its size under [`MAX_BLOB_BYTES`], and a
//! dataset must parse. A peer that sends bytes that fail the check is
//! penalised. This module must never store unchecked bytes, and it never
//! decides whether a job or result is valid.

use std::path::Path;
use std::sync::Arc;

use libp2p::PeerId;
use protocol::codec;
use protocol::rpc::{BlobChunk, BlobKind, BlobName, MAX_BLOB_BYTES};
use protocol::Digest;
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use trainer::verify::BlobSource;
use trainer::{Dataset, DatasetLimits};

use crate::net::network::NetworkClient;
use crate::net::wire::{BlobRequest, BlobResponse, BLOB_CHUNK_BYTES, MAX_BLOB_FRAME};

/// Blob bytes by SHA-256.
const BLOBS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blobs");
/// Weights file SHA-256 by tensor digest.
const WEIGHTS: TableDefinition<&[u8; 32], &[u8; 32]> = TableDefinition::new("weights");

/// File name of the blob store inside the data dir.
pub const BLOB_FILE: &str = "blobs.redb";

/// Penalty for a peer that sent bytes not matching the digest asked for.
pub const WRONG_BLOB_PENALTY: u32 = 50;

/// Why a blob was refused or could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The database failed.
    #[error("blob store: {0}")]
    Database(String),
    /// The blob is larger than the store takes.
    #[error("blob of {got} bytes, expected at most {max}")]
    TooLarge {
        /// Its size.
        got: usize,
        /// The cap.
        max: usize,
    },
    /// The bytes are not what the name promised.
    #[error("blob bytes hash to {got}, expected {expected}")]
    WrongDigest {
        /// What the bytes hash to.
        got: Digest,
        /// What was asked for.
        expected: Digest,
    },
    /// The bytes are not a valid dataset blob.
    #[error("not a valid dataset blob: {0}")]
    BadDataset(String),
    /// The bytes are not a valid safetensors weights file.
    #[error("not a valid weights file: {0}")]
    BadWeights(String),
}

fn db_error(err: impl std::fmt::Display) -> BlobError {
    BlobError::Database(err.to_string())
}

/// The node's blob store; cheap to clone, safe to share across threads
/// (redb serialises writers itself).
#[derive(Clone)]
pub struct BlobStore {
    db: Arc<Database>,
    limits: DatasetLimits,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore").finish_non_exhaustive()
    }
}

impl BlobStore {
    /// Opens or creates the store at `path`.
    pub fn open(path: &Path) -> Result<Self, BlobError> {
        let db = Database::create(path).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(BLOBS).map_err(db_error)?;
        txn.open_table(WEIGHTS).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Self {
            db: Arc::new(db),
            limits: DatasetLimits::default(),
        })
    }

    /// Checks `bytes` as a blob of `kind` and stores it; returns the SHA-256
    /// of the bytes (for weights, the tensor digest is indexed as well).
    pub fn put(&self, kind: BlobKind, bytes: &[u8]) -> Result<Digest, BlobError> {
        if bytes.len() > MAX_BLOB_BYTES {
            return Err(BlobError::TooLarge {
                got: bytes.len(),
                max: MAX_BLOB_BYTES,
            });
        }
        let digest = Digest(protocol::sha256(bytes));
        let tensor = match kind {
            BlobKind::Dataset => {
                Dataset::from_blob(bytes, &self.limits)
                    .map_err(|e| BlobError::BadDataset(e.to_string()))?;
                None
            }
            BlobKind::Weights => Some(
                trainer::weights::tensor_digest_of_file(bytes)
                    .map_err(|e| BlobError::BadWeights(e.to_string()))?,
            ),
            // A state is checked by whoever replays from it, against the
            // spec of its job; here it is only content-addressed.
            BlobKind::State => None,
        };
        self.write(digest, bytes, tensor)?;
        Ok(digest)
    }

    /// Stores bytes fetched under `name`, after checking they are what the
    /// name promises. Returns the SHA-256 of the bytes.
    pub fn put_named(&self, name: BlobName, bytes: &[u8]) -> Result<Digest, BlobError> {
        match name {
            BlobName::Content(expected) => {
                let got = Digest(protocol::sha256(bytes));
                if got != expected {
                    return Err(BlobError::WrongDigest { got, expected });
                }
                if bytes.len() > MAX_BLOB_BYTES {
                    return Err(BlobError::TooLarge {
                        got: bytes.len(),
                        max: MAX_BLOB_BYTES,
                    });
                }
                self.write(got, bytes, None)?;
                Ok(got)
            }
            BlobName::Weights(expected) => {
                let got = trainer::weights::tensor_digest_of_file(bytes)
                    .map_err(|e| BlobError::BadWeights(e.to_string()))?;
                if got != expected {
                    return Err(BlobError::WrongDigest { got, expected });
                }
                self.put(BlobKind::Weights, bytes)
            }
        }
    }

    fn write(&self, digest: Digest, bytes: &[u8], tensor: Option<Digest>) -> Result<(), BlobError> {
        let mut txn = self.db.begin_write().map_err(db_error)?;
        txn.set_durability(Durability::Immediate)
            .map_err(db_error)?;
        {
            let mut blobs = txn.open_table(BLOBS).map_err(db_error)?;
            blobs.insert(&digest.0, bytes).map_err(db_error)?;
            if let Some(tensor) = tensor {
                let mut weights = txn.open_table(WEIGHTS).map_err(db_error)?;
                weights.insert(&tensor.0, &digest.0).map_err(db_error)?;
            }
        }
        txn.commit().map_err(db_error)
    }

    /// The blob whose SHA-256 is `digest`, if held.
    pub fn get(&self, digest: &Digest) -> Result<Option<Vec<u8>>, BlobError> {
        let txn = self.db.begin_read().map_err(db_error)?;
        let table = txn.open_table(BLOBS).map_err(db_error)?;
        Ok(table
            .get(&digest.0)
            .map_err(db_error)?
            .map(|v| v.value().to_vec()))
    }

    /// Whether the blob whose SHA-256 is `digest` is held.
    pub fn has(&self, digest: &Digest) -> bool {
        matches!(self.get(digest), Ok(Some(_)))
    }

    /// The SHA-256 of the held blob that `name` names, if any.
    pub fn resolve(&self, name: BlobName) -> Result<Option<Digest>, BlobError> {
        match name {
            BlobName::Content(digest) => Ok(self.has(&digest).then_some(digest)),
            BlobName::Weights(tensor) => {
                let txn = self.db.begin_read().map_err(db_error)?;
                let table = txn.open_table(WEIGHTS).map_err(db_error)?;
                Ok(table
                    .get(&tensor.0)
                    .map_err(db_error)?
                    .map(|v| Digest(*v.value())))
            }
        }
    }

    /// A slice of the blob `name` names, at most `max_len` bytes from
    /// `offset`; `None` when the blob is not held.
    pub fn chunk(
        &self,
        name: BlobName,
        offset: u64,
        max_len: u32,
    ) -> Result<Option<BlobChunk>, BlobError> {
        let Some(digest) = self.resolve(name)? else {
            return Ok(None);
        };
        let Some(bytes) = self.get(&digest)? else {
            return Ok(None);
        };
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(bytes.len());
        let len = usize::try_from(max_len).unwrap_or(usize::MAX);
        let end = start.saturating_add(len).min(bytes.len());
        let slice = bytes.get(start..end).unwrap_or_default().to_vec();
        Ok(Some(BlobChunk {
            digest,
            total: u64::try_from(bytes.len()).unwrap_or(u64::MAX),
            offset,
            bytes: slice,
        }))
    }
}

impl BlobSource for BlobStore {
    fn blob(&self, digest: &Digest) -> Option<Vec<u8>> {
        self.get(digest).ok().flatten()
    }
}

/// Why a blob could not be fetched from peers.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No connected peer holds it (or every one that claimed to sent bad bytes).
    #[error("no peer holds blob {name} ({peers} peers asked)")]
    NotFound {
        /// What was asked for, in words.
        name: String,
        /// How many peers were asked.
        peers: usize,
    },
    /// The local store failed.
    #[error(transparent)]
    Store(#[from] BlobError),
}

fn describe(name: BlobName) -> String {
    match name {
        BlobName::Content(digest) => digest.to_string(),
        BlobName::Weights(tensor) => format!("weights {tensor}"),
    }
}

/// Fetches the blob `name` from connected peers in chunks of at most
/// [`BLOB_CHUNK_BYTES`], checks it and stores it. A peer whose bytes fail
/// the check is penalised and the next one is asked.
pub async fn fetch(
    store: &BlobStore,
    network: &NetworkClient,
    name: BlobName,
) -> Result<Digest, FetchError> {
    if let Some(digest) = store.resolve(name)? {
        return Ok(digest);
    }
    let peers = network.peers().await.unwrap_or_default();
    for peer in &peers {
        match fetch_from(network, *peer, name).await {
            Ok(Some(bytes)) => {
                let put_store = store.clone();
                let checked =
                    tokio::task::spawn_blocking(move || put_store.put_named(name, &bytes))
                        .await
                        .map_err(|e| BlobError::Database(e.to_string()))?;
                match checked {
                    Ok(digest) => {
                        tracing::info!(blob = %describe(name), %peer, "blob fetched");
                        return Ok(digest);
                    }
                    Err(BlobError::Database(reason)) => {
                        return Err(BlobError::Database(reason).into())
                    }
                    Err(err) => {
                        tracing::warn!(blob = %describe(name), %peer, reason = %err, "peer sent a bad blob");
                        network.penalise(*peer, WRONG_BLOB_PENALTY, format!("bad blob: {err}"));
                    }
                }
            }
            Ok(None) => {}
            Err(reason) => {
                tracing::debug!(blob = %describe(name), %peer, %reason, "blob fetch failed");
            }
        }
    }
    Err(FetchError::NotFound {
        name: describe(name),
        peers: peers.len(),
    })
}

/// Downloads one blob from one peer; `None` when it does not hold it.
async fn fetch_from(
    network: &NetworkClient,
    peer: PeerId,
    name: BlobName,
) -> Result<Option<Vec<u8>>, String> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut total: Option<u64> = None;
    loop {
        let offset = u64::try_from(bytes.len()).map_err(|e| e.to_string())?;
        if total.is_some_and(|t| offset >= t) {
            return Ok(Some(bytes));
        }
        let request = codec::encode(&BlobRequest {
            name,
            offset,
            max_len: BLOB_CHUNK_BYTES,
        })
        .map_err(|e| e.to_string())?;
        let answer = network
            .blob_request(peer, request)
            .await
            .map_err(|e| e.to_string())?;
        let chunk = match codec::decode_with_limit::<BlobResponse>(&answer, MAX_BLOB_FRAME) {
            Ok(BlobResponse::Chunk(chunk)) => chunk,
            Ok(BlobResponse::NotFound) => return Ok(None),
            Err(err) => {
                network.penalise(
                    peer,
                    WRONG_BLOB_PENALTY,
                    format!("undecodable blob chunk: {err}"),
                );
                return Err(err.to_string());
            }
        };
        let max_total = u64::try_from(MAX_BLOB_BYTES).unwrap_or(u64::MAX);
        let consistent = chunk.offset == offset
            && chunk.total <= max_total
            && total.is_none_or(|t| t == chunk.total)
            && chunk.bytes.len() <= usize::try_from(BLOB_CHUNK_BYTES).unwrap_or(usize::MAX)
            && (!chunk.bytes.is_empty() || offset >= chunk.total);
        if !consistent {
            network.penalise(
                peer,
                WRONG_BLOB_PENALTY,
                format!(
                    "blob chunk at offset {} of {} with {} bytes, expected offset {offset}",
                    chunk.offset,
                    chunk.total,
                    chunk.bytes.len()
                ),
            );
            return Err("inconsistent blob chunk".into());
        }
        total = Some(chunk.total);
        bytes.extend_from_slice(&chunk.bytes);
        if u64::try_from(bytes.len()).unwrap_or(u64::MAX) > chunk.total {
            network.penalise(peer, WRONG_BLOB_PENALTY, "blob longer than announced");
            return Err("blob longer than announced".into());
        }
    }
}

/// Answers a peer's blob request from the store.
pub async fn serve(
    store: BlobStore,
    network: NetworkClient,
    peer: PeerId,
    ticket: u64,
    data: Vec<u8>,
) {
    let request = match codec::decode_with_limit::<BlobRequest>(&data, MAX_BLOB_FRAME) {
        Ok(request) => request,
        Err(err) => {
            network.penalise(
                peer,
                WRONG_BLOB_PENALTY,
                format!("undecodable blob request: {err}"),
            );
            return;
        }
    };
    let max_len = request.max_len.min(BLOB_CHUNK_BYTES);
    let answer =
        tokio::task::spawn_blocking(move || store.chunk(request.name, request.offset, max_len))
            .await;
    let response = match answer {
        Ok(Ok(Some(chunk))) => BlobResponse::Chunk(chunk),
        Ok(Ok(None)) => BlobResponse::NotFound,
        Ok(Err(err)) => {
            tracing::error!(reason = %err, "cannot read a blob for a peer");
            BlobResponse::NotFound
        }
        Err(err) => {
            tracing::error!(reason = %err, "blob read task failed");
            BlobResponse::NotFound
        }
    };
    match codec::encode(&response) {
        Ok(bytes) => network.respond_blob(ticket, bytes),
        Err(err) => tracing::error!(reason = %err, "cannot encode a blob response"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_checks_and_get_returns_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&dir.path().join(BLOB_FILE)).unwrap();
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
        let mut wrong = blob.clone();
        if let Some(last) = wrong.last_mut() {
            *last ^= 1;
        }
        assert!(matches!(
            store.put_named(BlobName::Content(digest), &wrong),
            Err(BlobError::WrongDigest { .. })
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
}
