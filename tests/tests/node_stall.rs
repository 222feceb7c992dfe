//! A stalled sync peer is dropped and sync resumes from another: a raw
//! libp2p peer that advertises the sync protocol but never answers a request
//! is disconnected, and the node still reaches the honest miner's tip.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{identify, noise, tcp, yamux, Multiaddr, StreamProtocol};
use node::net::wire::{FrameCodec, IDENTIFY_PROTOCOL, MAX_SYNC_FRAME, SYNC_PROTOCOL};
use node::testkit::{init_test_logging, loopback, start_regtest, wait_until};
use protocol::Address;

#[derive(NetworkBehaviour)]
struct Staller {
    identify: identify::Behaviour,
    sync: request_response::Behaviour<FrameCodec>,
}

/// Starts the staller; returns its address and a count of connections that
/// were closed on it.
async fn staller() -> anyhow::Result<(Multiaddr, Arc<AtomicUsize>, tokio::task::JoinHandle<()>)> {
    let mut swarm = libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|key| Staller {
            identify: identify::Behaviour::new(identify::Config::new(
                IDENTIFY_PROTOCOL.into(),
                key.public(),
            )),
            sync: request_response::Behaviour::with_codec(
                FrameCodec::new(MAX_SYNC_FRAME),
                [(StreamProtocol::new(SYNC_PROTOCOL), ProtocolSupport::Full)],
                request_response::Config::default(),
            ),
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build();
    swarm.listen_on(loopback())?;
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            break address;
        }
    };
    let closed = Arc::new(AtomicUsize::new(0));
    let counter = closed.clone();
    let task = tokio::spawn(async move {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionClosed { .. } => {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
                // Requests are taken and never answered: the channel is
                // dropped, so the asking node sees the request fail.
                SwarmEvent::Behaviour(StallerEvent::Sync(request_response::Event::Message {
                    ..
                })) => {}
                _ => {}
            }
        }
    });
    Ok((addr, closed, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_sync_peer_is_dropped_and_sync_moves_on() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let miner = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(200))),
    )
    .await?;
    let miner_addr = miner
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    wait_until("a few blocks", Duration::from_secs(60), || {
        let height = miner.chain().height();
        async move { height.0 >= 5 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let (stall_addr, closed, task) = staller().await?;
    let node = start_regtest(dirs[1].path(), vec![stall_addr, miner_addr], None).await?;
    wait_until(
        "the staller to be dropped",
        Duration::from_secs(120),
        || {
            let count = closed.load(Ordering::SeqCst);
            async move { count >= 1 }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let target = miner.chain().height().0 + 2;
    wait_until(
        "sync to carry on from the honest miner",
        Duration::from_secs(120),
        || {
            let height = node.chain().height();
            async move { height.0 >= target }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    task.abort();
    node.stop().await;
    miner.stop().await;
    Ok(())
}
