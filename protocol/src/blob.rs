//! Blobs: datasets, weights files and training states, stored and
//! transferred in chunks of [`BLOB_CHUNK_BYTES`] and named by their SHA-256
//! (or, for weights, by the tensor digest of a job result). These are the
//! values the node's blob store keeps and the peer blob protocol and the
//! HTTP API move; this module never opens a socket or a file.

use serde::{Deserialize, Serialize};

use crate::types::Digest;

/// The size of the chunks a blob is stored, served, fetched and uploaded
/// in: 1 MiB. Every chunk of a blob has this size but the last, which holds
/// the rest (a blob of 0 bytes has no chunk). One chunk and its envelope fit
/// a peer's blob frame with room to spare.
pub const BLOB_CHUNK_BYTES: u32 = 1024 * 1024;

/// The largest dataset or training-state blob a node stores: 160 MiB.
///
/// A training state (`trainer/src/session.rs`) holds 12 bytes a parameter
/// with Adam (the weights and two moments; SGD needs 8), 4 bytes a training
/// row (the epoch's row order), 4 bytes a batch of the epoch (its losses so
/// far) and a header of under 100 bytes. The largest model the job limits
/// of every preset allow (4096 features, 8 hidden layers of 1024, 1000
/// classes) has 12,567,528 parameters, and it fits the cost bounds easily:
/// one epoch over a thousand rows in batches of 64 costs 3.2·10^10 units
/// against `max_cost` 2·10^12, a segment of it 5.1·10^9 against
/// `max_segment_cost` 3.2·10^10 (node/src/blobs.rs checks this). Its
/// states are 150,810,336 bytes of tensors plus at most 1.6 MB for 200,000
/// rows: 152.4 MB (145.4 MiB). A result whose states nodes refused to store
/// could never be challenged, so the cap covers the largest state with a
/// tenth to spare. Datasets share it (a larger dataset is refused
/// by the nodes asked to admit its job).
pub const MAX_BLOB_BYTES: usize = 160 * 1024 * 1024;

/// The largest weights file a node stores: 3 MiB. Weights are fetched by
/// tensor digest and parsed whole to check that digest, and are only ever
/// needed to serve predictions, never to judge a result.
pub const MAX_WEIGHTS_BYTES: usize = 3 * 1024 * 1024;

/// What a blob holds, which decides how the node checks and indexes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobKind {
    /// A canonical dataset blob; its SHA-256 is the dataset digest of a job.
    Dataset,
    /// A safetensors weights file. It is stored under its SHA-256 and also
    /// indexed by the trainer's tensor digest (the `weights` digest of a
    /// job result), which the node recomputes from the bytes.
    Weights,
    /// A training state `S_j` of a pending result; its SHA-256 is the
    /// state digest in segment leaf `j`. Kept until the result settles.
    State,
}

impl BlobKind {
    /// The largest blob of this kind a node stores.
    pub fn max_bytes(self) -> u64 {
        let max = match self {
            Self::Dataset | Self::State => MAX_BLOB_BYTES,
            Self::Weights => MAX_WEIGHTS_BYTES,
        };
        u64::try_from(max).unwrap_or(u64::MAX)
    }
}

/// How many chunks of [`BLOB_CHUNK_BYTES`] a blob of `total` bytes has.
pub fn chunk_count(total: u64) -> u64 {
    total.div_ceil(u64::from(BLOB_CHUNK_BYTES))
}

/// The length of chunk `index` of a blob of `total` bytes; `None` past its
/// last chunk.
pub fn chunk_len(total: u64, index: u64) -> Option<u64> {
    let start = index.checked_mul(u64::from(BLOB_CHUNK_BYTES))?;
    let rest = total.checked_sub(start).filter(|rest| *rest > 0)?;
    Some(rest.min(u64::from(BLOB_CHUNK_BYTES)))
}

/// How a blob is named when it is fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BlobName {
    /// By the SHA-256 of its bytes.
    Content(Digest),
    /// A weights file by the tensor digest of the weights it holds.
    Weights(Digest),
}

/// What a blob is made of: its digest, kind, length and the SHA-256 of
/// each of its chunks. A node keeps one for every blob it holds and sends it
/// before any chunk, so that a fetcher can check each chunk as it arrives.
/// Only the digest is ever trusted: the chunk hashes come from whoever sent
/// the manifest, and the whole blob must still hash to the digest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobManifest {
    /// SHA-256 of the whole blob.
    pub digest: Digest,
    /// What it holds.
    pub kind: BlobKind,
    /// Its length in bytes.
    pub total: u64,
    /// SHA-256 of each chunk of [`BLOB_CHUNK_BYTES`], in order.
    pub chunks: Vec<Digest>,
}

/// Why a manifest cannot describe a blob this node would store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Longer than its kind's cap.
    #[error("a {kind:?} blob of {total} bytes, expected at most {max}")]
    TooLarge {
        /// The kind.
        kind: BlobKind,
        /// Its announced length.
        total: u64,
        /// The cap for the kind.
        max: u64,
    },
    /// The chunk list does not match the length.
    #[error("{got} chunk hashes for {total} bytes, expected {expected}")]
    ChunkCount {
        /// Hashes listed.
        got: u64,
        /// Its announced length.
        total: u64,
        /// Chunks a blob that long has.
        expected: u64,
    },
}

impl BlobManifest {
    /// Checks the length against the kind's cap and the chunk list against
    /// the length.
    pub fn check(&self) -> Result<(), ManifestError> {
        let max = self.kind.max_bytes();
        if self.total > max {
            return Err(ManifestError::TooLarge {
                kind: self.kind,
                total: self.total,
                max,
            });
        }
        let got = u64::try_from(self.chunks.len()).unwrap_or(u64::MAX);
        let expected = chunk_count(self.total);
        if got != expected {
            return Err(ManifestError::ChunkCount {
                got,
                total: self.total,
                expected,
            });
        }
        Ok(())
    }
}

/// One slice of a blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobChunk {
    /// SHA-256 of the whole blob.
    pub digest: Digest,
    /// Length of the whole blob in bytes.
    pub total: u64,
    /// Where this slice starts in the blob.
    pub offset: u64,
    /// The bytes.
    pub bytes: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_cover_a_blob_exactly() {
        let chunk = u64::from(BLOB_CHUNK_BYTES);
        for (total, count, last) in [
            (0, 0, None),
            (1, 1, Some(1)),
            (chunk - 1, 1, Some(chunk - 1)),
            (chunk, 1, Some(chunk)),
            (chunk + 1, 2, Some(1)),
            (3 * chunk, 3, Some(chunk)),
        ] {
            assert_eq!(chunk_count(total), count, "{total} bytes");
            let lens: Vec<u64> = (0..count).filter_map(|i| chunk_len(total, i)).collect();
            assert_eq!(lens.iter().sum::<u64>(), total, "{total} bytes");
            assert_eq!(lens.last().copied(), last, "{total} bytes");
            assert_eq!(chunk_len(total, count), None, "{total} bytes");
        }
        assert_eq!(chunk_len(u64::MAX, u64::MAX), None);
    }

    #[test]
    fn a_manifest_must_fit_its_kind_and_its_length() {
        let chunk = u64::from(BLOB_CHUNK_BYTES);
        let manifest = |kind, total, chunks: usize| BlobManifest {
            digest: Digest([1; 32]),
            kind,
            total,
            chunks: vec![Digest([2; 32]); chunks],
        };
        assert_eq!(manifest(BlobKind::State, 0, 0).check(), Ok(()));
        assert_eq!(manifest(BlobKind::State, chunk + 1, 2).check(), Ok(()));
        assert_eq!(
            manifest(BlobKind::State, chunk + 1, 1).check(),
            Err(ManifestError::ChunkCount {
                got: 1,
                total: chunk + 1,
                expected: 2
            })
        );
        let max = BlobKind::State.max_bytes();
        assert_eq!(
            manifest(BlobKind::State, max + 1, 161).check(),
            Err(ManifestError::TooLarge {
                kind: BlobKind::State,
                total: max + 1,
                max
            })
        );
        let weights = BlobKind::Weights.max_bytes();
        assert!(weights < max);
        assert!(matches!(
            manifest(BlobKind::Weights, weights + 1, 4).check(),
            Err(ManifestError::TooLarge { .. })
        ));
    }
}
