//! Blobs larger than one message, on real regtest nodes on loopback.
//!
//! - A training state of over 4 MiB, five chunks, is put on A over HTTP in
//!   one streamed upload, as the trainer does.
//! - C fetches it chunk by chunk: every response is at most one chunk and
//!   its envelope, one response per chunk after the manifest.
//! - A rogue peer that announces the right manifest but serves a corrupted
//!   chunk is asked first: its chunk is refused as it arrives (nothing after
//!   it is asked for), it is penalised, and the same fetch succeeds from A.
//! - C then serves the whole blob to its own HTTP clients.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol};
use node::net::blob_fetch::{self, WRONG_BLOB_PENALTY};
use node::net::wire::{
    BlobRequest, BlobResponse, FrameCodec, SyncResponse, BLOB_PROTOCOL, IDENTIFY_PROTOCOL,
    MAX_BLOB_FRAME, MAX_SYNC_FRAME, SYNC_PROTOCOL,
};
use node::testkit::{init_test_logging, start_regtest, wait_until};
use node::RunningNode;
use protocol::blob::{BlobKind, BlobManifest, BlobName, BLOB_CHUNK_BYTES};
use protocol::codec;
use protocol::Digest;

mod support;
use support::{api_of, call};

const TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: usize = BLOB_CHUNK_BYTES as usize;
/// The chunk the rogue corrupts.
const BAD_CHUNK: u32 = 2;

/// State-like bytes: 4 MiB and a bit, five chunks, none alike.
fn big_state() -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..4 * CHUNK + 12_345)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

fn addr_of(node: &RunningNode) -> anyhow::Result<Multiaddr> {
    node.p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))
}

async fn wait_peer(node: &RunningNode, peer: PeerId) -> anyhow::Result<()> {
    let network = node.network().clone();
    wait_until("the peer to connect", TIMEOUT, || {
        let network = network.clone();
        async move { network.peers().await.unwrap_or_default().contains(&peer) }
    })
    .await
    .map_err(anyhow::Error::msg)
}

#[derive(NetworkBehaviour)]
struct RogueBehaviour {
    identify: identify::Behaviour,
    sync: request_response::Behaviour<FrameCodec>,
    blob: request_response::Behaviour<FrameCodec>,
}

/// A peer that looks like a full node, holds `bytes`, announces their true
/// manifest and serves chunk [`BAD_CHUNK`] with one bit flipped. Counts the
/// chunk requests it gets.
fn spawn_rogue(
    target: Multiaddr,
    bytes: Vec<u8>,
    manifest: BlobManifest,
    chunk_requests: Arc<AtomicU32>,
) -> anyhow::Result<(PeerId, tokio::task::JoinHandle<()>)> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| RogueBehaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.into(),
                key.public(),
            )),
            sync: request_response::Behaviour::with_codec(
                FrameCodec::new(MAX_SYNC_FRAME),
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
            blob: request_response::Behaviour::with_codec(
                FrameCodec::new(MAX_BLOB_FRAME),
                [(StreamProtocol::new(BLOB_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    let peer = *swarm.local_peer_id();
    swarm.dial(target)?;
    let task = tokio::spawn(async move {
        while let Some(event) = swarm.next().await {
            let SwarmEvent::Behaviour(event) = event else {
                continue;
            };
            match event {
                RogueBehaviourEvent::Sync(request_response::Event::Message {
                    message: request_response::Message::Request { channel, .. },
                    ..
                }) => {
                    if let Ok(answer) = codec::encode(&SyncResponse::Headers(Vec::new())) {
                        let _ = swarm.behaviour_mut().sync.send_response(channel, answer);
                    }
                }
                RogueBehaviourEvent::Blob(request_response::Event::Message {
                    message:
                        request_response::Message::Request {
                            request, channel, ..
                        },
                    ..
                }) => {
                    let answer = match codec::decode::<BlobRequest>(&request) {
                        Ok(BlobRequest::Manifest(_)) => BlobResponse::Manifest(manifest.clone()),
                        Ok(BlobRequest::Chunk { index, .. }) => {
                            chunk_requests.fetch_add(1, Ordering::SeqCst);
                            let start = index as usize * CHUNK;
                            let mut chunk = bytes[start..(start + CHUNK).min(bytes.len())].to_vec();
                            if index == BAD_CHUNK {
                                chunk[100] ^= 1;
                            }
                            BlobResponse::Chunk {
                                index,
                                bytes: chunk,
                            }
                        }
                        Err(_) => BlobResponse::NotFound,
                    };
                    if let Ok(answer) = codec::encode(&answer) {
                        let _ = swarm.behaviour_mut().blob.send_response(channel, answer);
                    }
                }
                _ => {}
            }
        }
    });
    Ok((peer, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_large_state_is_fetched_chunk_by_chunk_and_a_lying_peer_is_penalised(
) -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a_node = start_regtest(dirs[0].path(), vec![], None).await?;
    let a = addr_of(&a_node)?;
    let c_node = start_regtest(dirs[1].path(), vec![a.clone()], None).await?;
    let c = addr_of(&c_node)?;
    wait_peer(&c_node, a_node.peer_id()).await?;

    let state = big_state();
    let digest = Digest(protocol::sha256(&state));
    let upload = state.clone();
    let stored = call(&api_of(&a_node)?, move |api| {
        api.put_blob(BlobKind::State, &upload)
    })
    .await??;
    assert_eq!(stored, digest);
    let manifest = a_node
        .blobs()
        .manifest(BlobName::Content(digest))?
        .ok_or_else(|| anyhow::anyhow!("A does not hold the state"))?;
    assert_eq!(manifest.chunks.len(), 5);
    assert!(!c_node.blobs().has(&digest));

    let chunk_requests = Arc::new(AtomicU32::new(0));
    let (rogue, rogue_task) = spawn_rogue(
        c.clone(),
        state.clone(),
        manifest.clone(),
        chunk_requests.clone(),
    )?;
    wait_peer(&c_node, rogue).await?;

    let report = blob_fetch::fetch_from_peers(
        c_node.blobs(),
        c_node.network(),
        BlobName::Content(digest),
        &[rogue, a_node.peer_id()],
    )
    .await?;
    assert_eq!(report.digest, digest);
    assert_eq!(report.from, Some(a_node.peer_id()));
    assert_eq!(report.refused, vec![rogue]);
    // The bad chunk was refused on arrival: nothing after it was asked.
    assert_eq!(chunk_requests.load(Ordering::SeqCst), BAD_CHUNK + 1);
    // One frame for the manifest, one per chunk, none above a chunk and
    // its envelope: the fetch never held more than a chunk of the blob.
    assert_eq!(report.responses, 1 + 5);
    assert!(report.largest_response >= CHUNK, "{report:?}");
    assert!(report.largest_response <= CHUNK + 64, "{report:?}");
    assert_eq!(c_node.blobs().get(&digest)?, Some(state.clone()));
    assert_eq!(
        c_node.blobs().manifest(BlobName::Content(digest))?,
        Some(manifest)
    );
    let (score, _) = c_node.network().penalty(rogue).await?;
    assert!(score >= WRONG_BLOB_PENALTY, "rogue scored {score}");
    let (score, _) = c_node.network().penalty(a_node.peer_id()).await?;
    assert_eq!(score, 0);

    // C now serves it whole to its own clients.
    let served = call(&api_of(&c_node)?, move |api| api.get_blob(&digest)).await??;
    assert_eq!(served.len(), state.len());
    assert!(served == state, "C served other bytes");

    rogue_task.abort();
    c_node.stop().await;
    a_node.stop().await;
    Ok(())
}
