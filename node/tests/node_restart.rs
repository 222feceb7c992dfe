//! Crash safety: the real binary, mining, is killed with SIGKILL at random
//! moments and restarted on the same data dir several times. Each restart
//! resumes on an intact chain at or above the last height it reported, and
//! at the end it catches up with its peer's tip.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use libp2p::Multiaddr;
use node::testkit::{init_test_logging, start_regtest};
use protocol::api::BlockRef;
use protocol::api::{BlockView, StatusView};
use protocol::{Address, Height};
use trainer::client::{ClientError, NodeClient};

const ROUNDS: u64 = 4;

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

struct Process {
    child: Child,
    api: NodeClient,
}

fn spawn_node(
    data_dir: &std::path::Path,
    log: &std::path::Path,
    peer: &Multiaddr,
    mine: bool,
) -> anyhow::Result<Process> {
    let port = free_port()?;
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(env!("CARGO_BIN_EXE_gradchain-node"));
    command
        .args([
            "run",
            "--chain",
            "regtest",
            "--listen",
            &listen,
            "--bootstrap",
        ])
        .arg(peer.to_string())
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--http", &http])
        .stdout(Stdio::null())
        .stderr(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)?,
        );
    if mine {
        command.args([
            "--mine",
            "--miner-address",
            &Address([0x4b; 32]).to_string(),
            "--mine-interval-ms",
            "60",
        ]);
    }
    Ok(Process {
        child: command.spawn()?,
        api: NodeClient::new(&format!("http://{http}"))?,
    })
}

/// Runs a call of the blocking client on a thread of its own.
async fn call<T: Send + 'static>(
    api: &NodeClient,
    f: impl FnOnce(&NodeClient) -> Result<T, ClientError> + Send + 'static,
) -> anyhow::Result<T> {
    let api = api.clone();
    Ok(tokio::task::spawn_blocking(move || f(&api)).await??)
}

async fn status_of(api: &NodeClient) -> Option<StatusView> {
    let api = api.clone().with_timeout(Duration::from_secs(5));
    call(&api, |api| api.status()).await.ok()
}

/// Polls the node's height until `done` holds for it, within `timeout`.
async fn poll_height(
    api: &NodeClient,
    timeout: Duration,
    done: impl Fn(Height) -> bool,
) -> anyhow::Result<Height> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = status_of(api).await {
            if done(Height(status.height)) {
                return Ok(Height(status.height));
            }
        }
        if Instant::now() >= deadline {
            anyhow::bail!(
                "timed out after {timeout:?} polling the height of {}",
                api.url()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn block_at(api: &NodeClient, height: Height) -> anyhow::Result<BlockView> {
    call(api, move |api| api.block(&height.to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("no block at {height}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_while_mining_restarts_on_an_intact_chain_and_catches_up(
) -> anyhow::Result<()> {
    init_test_logging();
    let peer_dir = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("node.log");
    let data_dir = dir.path().join("data");
    let peer = start_regtest(
        peer_dir.path(),
        vec![],
        Some((Address([0x50; 32]), Duration::from_millis(250))),
    )
    .await?;
    let peer_addr = peer
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;

    // Kill points vary from run to run.
    let mut seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)?
        .subsec_nanos() as u64
        | 1;
    let mut last_seen = Height(0);
    let mut peer_id = None;
    for round in 0..ROUNDS {
        let mut process = spawn_node(&data_dir, &log, &peer_addr, true)?;
        let addr = process.api.clone();
        let resumed = poll_height(&addr, Duration::from_secs(60), |_| true)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "round {round}: {e}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
        assert!(resumed >= last_seen, "round {round}: resumed at {resumed}, below the {last_seen} it reported before the kill");
        if let Some(status) = status_of(&addr).await {
            if let Some(previous) = &peer_id {
                assert_eq!(
                    previous, &status.peer_id,
                    "the peer id is stable across restarts"
                );
            }
            peer_id = Some(status.peer_id);
        }
        // The stored chain links from the tip down.
        let mut child = block_at(&addr, resumed).await?;
        assert_eq!(child.height, resumed.0);
        for _ in 0..5 {
            let Some(below) = Height(child.height).prev() else {
                break;
            };
            let parent = block_at(&addr, below).await?;
            assert_eq!(
                child.prev, parent.hash,
                "round {round}: broken link at {}",
                child.height
            );
            child = parent;
        }

        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let extra = 1 + (seed >> 33) % 6;
        let goal = resumed.0 + extra;
        last_seen = poll_height(&addr, Duration::from_secs(120), |h| h.0 >= goal)
            .await
            .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        process.child.kill()?;
        process.child.wait()?;
    }

    // Last start without mining: it must catch up with the peer, which keeps
    // mining so that an equal-work fork left by the kill (first seen wins
    // ties) is settled by the peer's next block.
    let mut process = spawn_node(&data_dir, &log, &peer_addr, false)?;
    let addr = process.api.clone();
    let goal = Height(peer.chain().height().0 + 3);
    let caught_up = async {
        poll_height(&addr, Duration::from_secs(120), |h| h >= goal).await?;
        let which = goal.to_string();
        let theirs = call(&addr, move |api| api.block_raw(&which)).await?;
        let ours = peer
            .chain()
            .block(BlockRef::Height(goal))
            .await?
            .ok_or_else(|| anyhow::anyhow!("the peer has no block at {goal}"))?;
        anyhow::ensure!(
            theirs.hash() == ours.hash,
            "the restarted node is on another branch at {goal}"
        );
        anyhow::Ok(())
    }
    .await;
    process.child.kill()?;
    process.child.wait()?;
    caught_up.map_err(|e| {
        anyhow::anyhow!(
            "{e}; log: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    })?;
    peer.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_node_cleanly_and_it_resumes_where_it_stopped() -> anyhow::Result<()> {
    init_test_logging();
    let peer_dir = tempfile::tempdir()?;
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("node.log");
    let data_dir = dir.path().join("data");
    // A peer that never mines: only the process under test makes blocks.
    let peer = start_regtest(peer_dir.path(), vec![], None).await?;
    let peer_addr = peer
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;

    let mut process = spawn_node(&data_dir, &log, &peer_addr, true)?;
    let reached = poll_height(&process.api, Duration::from_secs(60), |h| h.0 >= 5).await?;
    let status = Command::new("kill")
        .args(["-TERM", &process.child.id().to_string()])
        .status()?;
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Some(exit) = process.child.try_wait()? {
            break exit;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the node did not exit after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let text = std::fs::read_to_string(&log)?;
    assert!(exit.success(), "exit {exit:?}; log: {text}");
    assert!(text.contains("node stopped"), "{text}");

    let mut process = spawn_node(&data_dir, &log, &peer_addr, false)?;
    let resumed = poll_height(&process.api, Duration::from_secs(60), |_| true).await;
    process.child.kill()?;
    process.child.wait()?;
    assert!(resumed? >= reached);
    peer.stop().await;
    Ok(())
}
