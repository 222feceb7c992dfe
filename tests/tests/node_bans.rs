//! A peer banned for an invalid block is refused when it comes back, and
//! stays refused after the node restarts (bans persist in the data dir),
//! while a peer with a clean record connects as before.

use std::time::Duration;

use futures::StreamExt;
use gradchain_tests::{forged_block, raw_client_as};
use libp2p::swarm::SwarmEvent;
use libp2p::{identity::Keypair, noise, ping, tcp, yamux, Multiaddr};
use node::net::wire::BLOCKS_TOPIC;
use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::api::BlockRef;
use protocol::codec;

/// Dials `target` as `keypair` and reports whether a connection was still
/// up two seconds after it was established (ping keeps it busy).
async fn stays_connected(keypair: Keypair, target: Multiaddr) -> anyhow::Result<bool> {
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| ping::Behaviour::default())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build();
    swarm.dial(target)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut established_at = None;
    loop {
        let next = match established_at {
            Some(at) => at + Duration::from_secs(2),
            None => deadline,
        };
        match tokio::time::timeout_at(next, swarm.select_next_some()).await {
            Err(_) => return Ok(established_at.is_some()),
            Ok(SwarmEvent::ConnectionEstablished { .. }) => {
                established_at = Some(tokio::time::Instant::now());
            }
            Ok(
                SwarmEvent::ConnectionClosed { .. } | SwarmEvent::OutgoingConnectionError { .. },
            ) => return Ok(false),
            Ok(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_banned_peer_is_refused_and_stays_banned_across_a_restart() -> anyhow::Result<()> {
    init_test_logging();
    let dir = tempfile::tempdir()?;
    let node = start_regtest(
        dir.path(),
        vec![],
        Some((protocol::Address([0xb1; 32]), Duration::from_millis(300))),
    )
    .await?;
    let addr = node
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    wait_until("a block", Duration::from_secs(60), || {
        let height = node.chain().height();
        async move { height.0 >= 1 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // A clean peer connects and stays.
    let clean = Keypair::generate_ed25519();
    assert!(
        stays_connected(clean.clone(), addr.clone()).await?,
        "a clean peer is let in"
    );

    // The bad peer gossips a block with invalid proof of work: banned.
    let bad = Keypair::generate_ed25519();
    let bad_peer = bad.public().to_peer_id();
    let tip = node.chain().height();
    let parent = node
        .chain()
        .block(BlockRef::Height(tip))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tip"))?
        .block;
    let client = raw_client_as(bad.clone(), addr.clone())?;
    client.publish.send((
        BLOCKS_TOPIC,
        codec::encode(&forged_block(
            parent.hash(),
            parent.header.time,
            tip.0 + 1,
            vec![],
            false,
        )?)?,
    ))?;
    let network = node.network().clone();
    wait_until("the ban", Duration::from_secs(60), || {
        let network = network.clone();
        async move {
            network
                .penalty(bad_peer)
                .await
                .map(|(_, banned)| banned)
                .unwrap_or(false)
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    client.task.abort();
    assert!(
        !stays_connected(bad.clone(), addr.clone()).await?,
        "a banned peer is refused when it comes back"
    );

    // Restart on the same data dir: the ban holds, the clean peer is welcome.
    node.stop().await;
    let node = start_regtest(dir.path(), vec![], None).await?;
    let addr = node
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let (_, banned) = node.network().penalty(bad_peer).await?;
    assert!(banned, "the ban was read back from the data dir");
    assert!(
        !stays_connected(bad, addr.clone()).await?,
        "still refused after a restart"
    );
    assert!(
        stays_connected(clean, addr).await?,
        "the clean peer still connects"
    );
    node.stop().await;
    Ok(())
}
