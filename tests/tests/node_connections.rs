//! A peer opening 500 connections to a node: the node keeps at most
//! `MAX_PENDING_INCOMING` of them waiting in their handshake (it closes the
//! rest) and keeps serving an honest peer that was connected before.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use node::net::network::MAX_PENDING_INCOMING;
use node::testkit::{init_test_logging, start_regtest, wait_until};

fn socket_addr(addr: &libp2p::Multiaddr) -> Option<SocketAddr> {
    let mut ip = None;
    let mut port = None;
    for part in addr.iter() {
        match part {
            Protocol::Ip4(v) => ip = Some(std::net::IpAddr::V4(v)),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    Some(SocketAddr::new(ip?, port?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_connections_are_bounded_and_honest_peers_still_served() -> anyhow::Result<()>
{
    init_test_logging();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let miner = start_regtest(
        dirs[0].path(),
        vec![],
        Some((protocol::Address([0xc1; 32]), Duration::from_millis(300))),
    )
    .await?;
    let addr = miner
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let honest = start_regtest(dirs[1].path(), vec![addr.clone()], None).await?;
    wait_until("the honest peer to sync", Duration::from_secs(60), || {
        let height = honest.chain().height();
        async move { height.0 >= 2 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let target = socket_addr(&addr).ok_or_else(|| anyhow::anyhow!("not a TCP address: {addr}"))?;
    // 500 sockets that connect and never speak.
    let (open, closed) = tokio::task::spawn_blocking(move || -> anyhow::Result<(usize, usize)> {
        let mut sockets = Vec::new();
        for _ in 0..500 {
            if let Ok(socket) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                socket.set_read_timeout(Some(Duration::from_millis(20)))?;
                sockets.push(socket);
            }
        }
        // Give the node time to sort them, then see which it closed.
        std::thread::sleep(Duration::from_secs(3));
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut closed = 0;
        let mut buf = [0u8; 64];
        for socket in &mut sockets {
            loop {
                match socket.read(&mut buf) {
                    Ok(0) | Err(_) if Instant::now() > deadline => break,
                    Ok(0) => {
                        closed += 1;
                        break;
                    }
                    // The node's side of the handshake: keep reading.
                    Ok(_) => continue,
                    Err(e)
                        if e.kind() == std::io::ErrorKind::WouldBlock
                            || e.kind() == std::io::ErrorKind::TimedOut =>
                    {
                        break
                    }
                    Err(_) => {
                        closed += 1;
                        break;
                    }
                }
            }
        }
        Ok((sockets.len(), closed))
    })
    .await??;
    let kept = open - closed;
    println!("{open} sockets connected, {closed} closed by the node, {kept} kept open (limit {MAX_PENDING_INCOMING} in handshake)");
    assert!(open >= 400, "the kernel accepted most connections ({open})");
    assert!(
        kept <= MAX_PENDING_INCOMING as usize,
        "the node keeps at most {MAX_PENDING_INCOMING} unauthenticated connections, kept {kept}"
    );

    // The honest peer, connected before, is still served new blocks.
    let goal = miner.chain().height().0 + 3;
    wait_until(
        "the honest peer to keep syncing",
        Duration::from_secs(60),
        || {
            let height = honest.chain().height();
            async move { height.0 >= goal }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    honest.stop().await;
    miner.stop().await;
    Ok(())
}
