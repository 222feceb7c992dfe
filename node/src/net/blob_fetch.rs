//! The network half of the blob store: fetching a blob from peers into the
//! [`BlobStore`] (manifest first, then chunk by chunk, each checked before
//! it is kept) and serving the store's blobs to peers. The store itself
//! (`crate::blobs`) knows nothing of the network.

use libp2p::PeerId;
use protocol::blob::{BlobKind, BlobName};
use protocol::codec;
use protocol::Digest;

use crate::blobs::{BlobError, BlobStore, BlobWriter, Uploader};
use crate::net::network::NetworkClient;
use crate::net::wire::{BlobRequest, BlobResponse, MAX_BLOB_FRAME};

/// Penalty for a peer that sent bytes not matching the digest asked for.
/// Two refused blobs reach the ban score.
pub const WRONG_BLOB_PENALTY: u32 = 50;

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

/// How a fetch went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchReport {
    /// SHA-256 of the blob now held.
    pub digest: Digest,
    /// The peer that served it; `None` when it was held already.
    pub from: Option<PeerId>,
    /// Responses that peer sent: the manifest and one per chunk.
    pub responses: u32,
    /// The largest of those responses, in bytes.
    pub largest_response: usize,
    /// Peers whose bytes failed a check, penalised, in the order asked.
    pub refused: Vec<PeerId>,
}

/// Fetches the blob `name` from the connected peers.
pub async fn fetch(
    store: &BlobStore,
    network: &NetworkClient,
    name: BlobName,
) -> Result<Digest, FetchError> {
    if let Some(digest) = store.resolve(name)? {
        return Ok(digest);
    }
    let peers = network.peers().await.unwrap_or_default();
    fetch_from_peers(store, network, name, &peers)
        .await
        .map(|report| report.digest)
}

/// Fetches the blob `name`, asking `peers` in turn: the manifest first, then
/// each chunk, checked against the manifest as it arrives and written to
/// the store. The whole must hash to the digest asked for (a weights file:
/// to the manifest's digest, and its tensors to the tensor digest asked
/// for). A peer whose bytes fail a check is penalised, what it sent is
/// dropped, and the next peer is asked.
pub async fn fetch_from_peers(
    store: &BlobStore,
    network: &NetworkClient,
    name: BlobName,
    peers: &[PeerId],
) -> Result<FetchReport, FetchError> {
    let held = |digest| FetchReport {
        digest,
        from: None,
        responses: 0,
        largest_response: 0,
        refused: Vec::new(),
    };
    if let Some(digest) = store.resolve(name)? {
        return Ok(held(digest));
    }
    let gate = store.fetch_gate(name);
    let _turn = gate.lock().await;
    if let Some(digest) = store.resolve(name)? {
        return Ok(held(digest));
    }
    let mut refused = Vec::new();
    for peer in peers {
        let mut frames = Frames::default();
        match fetch_from(store, network, *peer, name, &mut frames).await {
            Ok(Attempt::Fetched(digest)) => {
                tracing::info!(blob = %describe(name), %peer, chunks = frames.count.saturating_sub(1), "blob fetched");
                return Ok(FetchReport {
                    digest,
                    from: Some(*peer),
                    responses: frames.count,
                    largest_response: frames.largest,
                    refused,
                });
            }
            Ok(Attempt::NotHeld) => {}
            Ok(Attempt::Skipped(reason)) => {
                tracing::debug!(blob = %describe(name), %peer, %reason, "blob fetch failed");
            }
            Ok(Attempt::Refused(reason)) => {
                tracing::warn!(blob = %describe(name), %peer, %reason, "peer sent a bad blob");
                network.penalise(*peer, WRONG_BLOB_PENALTY, format!("bad blob: {reason}"));
                refused.push(*peer);
            }
            Err(err) => return Err(err.into()),
        }
    }
    Err(FetchError::NotFound {
        name: describe(name),
        peers: peers.len(),
    })
}

/// The responses of one peer during a fetch.
#[derive(Debug, Default)]
struct Frames {
    count: u32,
    largest: usize,
}

/// How asking one peer went.
enum Attempt {
    Fetched(Digest),
    NotHeld,
    /// Not the peer's fault, or not provably (unreachable, a quota, a
    /// concurrent transfer): ask the next.
    Skipped(String),
    /// Bytes that failed a check: penalise.
    Refused(String),
}

async fn ask(
    network: &NetworkClient,
    peer: PeerId,
    request: &BlobRequest,
    frames: &mut Frames,
) -> Result<BlobResponse, Attempt> {
    let request = codec::encode(request).map_err(|e| Attempt::Skipped(e.to_string()))?;
    let answer = network
        .blob_request(peer, request)
        .await
        .map_err(|e| Attempt::Skipped(e.to_string()))?;
    frames.count = frames.count.saturating_add(1);
    frames.largest = frames.largest.max(answer.len());
    codec::decode_with_limit::<BlobResponse>(&answer, MAX_BLOB_FRAME)
        .map_err(|e| Attempt::Refused(format!("undecodable blob response: {e}")))
}

/// Runs `work` on the writer off the executor and hands the writer back.
async fn on_writer<T: Send + 'static>(
    mut writer: BlobWriter,
    work: impl FnOnce(&mut BlobWriter) -> T + Send + 'static,
) -> Result<(BlobWriter, T), BlobError> {
    tokio::task::spawn_blocking(move || {
        let out = work(&mut writer);
        (writer, out)
    })
    .await
    .map_err(|e| BlobError::Database(e.to_string()))
}

/// Fetches one blob from one peer into the store.
async fn fetch_from(
    store: &BlobStore,
    network: &NetworkClient,
    peer: PeerId,
    name: BlobName,
    frames: &mut Frames,
) -> Result<Attempt, BlobError> {
    let manifest = match ask(network, peer, &BlobRequest::Manifest(name), frames).await {
        Ok(BlobResponse::Manifest(manifest)) => manifest,
        Ok(BlobResponse::NotFound) => return Ok(Attempt::NotHeld),
        Ok(BlobResponse::Chunk { .. }) => {
            return Ok(Attempt::Refused(
                "a chunk where a manifest was asked".into(),
            ))
        }
        Err(attempt) => return Ok(attempt),
    };
    let named = match name {
        BlobName::Content(digest) => manifest.digest == digest,
        BlobName::Weights(_) => manifest.kind == BlobKind::Weights,
    };
    if !named {
        return Ok(Attempt::Refused(format!(
            "a manifest of a {:?} blob {} for {}",
            manifest.kind,
            manifest.digest,
            describe(name)
        )));
    }
    if let Err(err) = manifest.check() {
        return Ok(Attempt::Refused(err.to_string()));
    }
    let reservation = match store.reserve(Uploader::Peer(peer), manifest.total) {
        Ok(reservation) => reservation,
        Err(err) => return Ok(Attempt::Skipped(err.to_string())),
    };
    let begin = {
        let store = store.clone();
        let (digest, kind, total) = (manifest.digest, manifest.kind, manifest.total);
        tokio::task::spawn_blocking(move || store.begin(digest, kind, total))
            .await
            .map_err(|e| BlobError::Database(e.to_string()))?
    };
    let mut writer = match begin {
        Ok(Some(writer)) => writer,
        Ok(None) => return Ok(Attempt::Fetched(manifest.digest)),
        Err(BlobError::Database(reason)) => return Err(BlobError::Database(reason)),
        Err(err) => return Ok(Attempt::Skipped(err.to_string())),
    };
    writer.hold(reservation);
    if let BlobName::Weights(tensor) = name {
        writer.expect_tensor(tensor);
    }
    for (index, expected) in manifest.chunks.iter().copied().enumerate() {
        let index = u32::try_from(index).map_err(|e| BlobError::Database(e.to_string()))?;
        let request = BlobRequest::Chunk {
            digest: manifest.digest,
            index,
        };
        let bytes = match ask(network, peer, &request, frames).await {
            Ok(BlobResponse::Chunk { index: got, bytes }) if got == index => bytes,
            Ok(BlobResponse::NotFound) => {
                // Not proof of a lie: the peer may have pruned it since.
                discard(writer).await;
                return Ok(Attempt::Skipped(format!(
                    "chunk {index} gone from a blob it announced"
                )));
            }
            Ok(_) => {
                discard(writer).await;
                return Ok(Attempt::Refused(format!(
                    "something else where chunk {index} was asked"
                )));
            }
            Err(attempt) => {
                discard(writer).await;
                return Ok(attempt);
            }
        };
        let (back, written) =
            on_writer(writer, move |w| w.write_chunk(&bytes, Some(&expected))).await?;
        writer = back;
        match written {
            Ok(()) => {}
            Err(BlobError::Database(reason)) => {
                discard(writer).await;
                return Err(BlobError::Database(reason));
            }
            Err(err) => {
                discard(writer).await;
                return Ok(Attempt::Refused(err.to_string()));
            }
        }
    }
    let finished = tokio::task::spawn_blocking(move || writer.finish())
        .await
        .map_err(|e| BlobError::Database(e.to_string()))?;
    match finished {
        Ok(digest) => Ok(Attempt::Fetched(digest)),
        Err(BlobError::Database(reason)) => Err(BlobError::Database(reason)),
        Err(err) => Ok(Attempt::Refused(err.to_string())),
    }
}

/// Drops an unfinished writer off the executor.
async fn discard(writer: BlobWriter) {
    let _ = tokio::task::spawn_blocking(move || writer.abort()).await;
}

/// Answers a peer's blob request from the store: a manifest or one chunk.
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
    let answer = tokio::task::spawn_blocking(move || match request {
        BlobRequest::Manifest(name) => store
            .manifest(name)
            .map(|m| m.map_or(BlobResponse::NotFound, BlobResponse::Manifest)),
        BlobRequest::Chunk { digest, index } => store.read_chunk(&digest, index).map(|bytes| {
            bytes.map_or(BlobResponse::NotFound, |bytes| BlobResponse::Chunk {
                index,
                bytes,
            })
        }),
    })
    .await;
    let response = match answer {
        Ok(Ok(response)) => response,
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
