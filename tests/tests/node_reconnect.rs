//! Reconnect with backoff: a node whose bootstrap peer goes away (dialed by
//! a plain address, no `/p2p/` suffix) dials it again when it comes back on
//! the same address, with the same peer id, and resumes following it.

use std::time::Duration;

use node::testkit::{init_test_logging, regtest_config, wait_until};
use protocol::Address;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_redials_its_bootstrap_peer_after_it_restarts() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let listen: libp2p::Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse()?;
    let mut miner_config = regtest_config(dirs[0].path(), vec![]);
    miner_config.listen = vec![listen.clone()];
    miner_config.mine = Some(Address([0xa1; 32]));
    miner_config.mine_interval = Duration::from_millis(150);

    let miner = node::start(miner_config.clone()).await?;
    let miner_id = miner.peer_id();
    let follower = node::start(regtest_config(dirs[1].path(), vec![listen])).await?;
    wait_until(
        "the follower to sync a few blocks",
        Duration::from_secs(60),
        || {
            let height = follower.chain().height();
            async move { height.0 >= 3 }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    miner.stop().await;
    wait_until(
        "the follower to see the miner leave",
        Duration::from_secs(60),
        || {
            let peers = follower.network().peer_count();
            async move { peers == 0 }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let before = follower.chain().height();

    let miner = node::start(miner_config).await?;
    assert_eq!(
        miner.peer_id(),
        miner_id,
        "the peer id comes from the data dir"
    );
    wait_until(
        "the follower to reconnect and follow again",
        Duration::from_secs(120),
        || {
            let (peers, height) = (follower.network().peer_count(), follower.chain().height());
            async move { peers >= 1 && height.0 >= before.0 + 3 }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let peers = follower.network().peers().await?;
    assert!(peers.contains(&miner_id));

    follower.stop().await;
    miner.stop().await;
    Ok(())
}
