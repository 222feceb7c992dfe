//! Crash safety: the real binary, mining, is killed with SIGKILL at random
//! moments and restarted on the same data dir several times. Before each
//! restart the store is read in-process, and the node is first started with
//! no peer at all: it must resume exactly on that stored tip, at or above the
//! last height it reported, so a block lost by the kill cannot be hidden by a
//! peer resyncing it. Only then is it connected to its peer again, and at the
//! end it catches up with the peer's tip.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use libp2p::Multiaddr;
use node::chain::{Chain, NoTrainingEngine};
use node::mempool::MempoolLimits;
use node::node::STORE_FILE;
use node::testkit::{init_test_logging, start_regtest};
use protocol::api::BlockRef;
use protocol::api::{BlockView, StatusView};
use protocol::{Address, BlockHash, ChainParams, Height};
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

/// Starts the node binary on `data_dir`, dialling `peer` when given (with
/// none it has no way to learn of any other node).
fn spawn_node(
    data_dir: &Path,
    log: &Path,
    peer: Option<&Multiaddr>,
    mine: bool,
) -> anyhow::Result<Process> {
    let port = free_port()?;
    let listen = format!("/ip4/127.0.0.1/tcp/{port}");
    let http = format!("127.0.0.1:{}", free_port()?);
    let mut command = Command::new(env!("CARGO_BIN_EXE_gradchain-node"));
    command.args(["run", "--chain", "regtest", "--listen", &listen]);
    if let Some(peer) = peer {
        command.arg("--bootstrap").arg(peer.to_string());
    }
    command
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

/// Polls the node's status until `done` holds for its height, within
/// `timeout`.
async fn poll_status(
    api: &NodeClient,
    timeout: Duration,
    done: impl Fn(Height) -> bool,
) -> anyhow::Result<StatusView> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = status_of(api).await {
            if done(Height(status.height)) {
                return Ok(status);
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

/// Polls the node's height until `done` holds for it, within `timeout`.
async fn poll_height(
    api: &NodeClient,
    timeout: Duration,
    done: impl Fn(Height) -> bool,
) -> anyhow::Result<Height> {
    Ok(Height(poll_status(api, timeout, done).await?.height))
}

async fn block_at(api: &NodeClient, height: Height) -> anyhow::Result<BlockView> {
    call(api, move |api| api.block(&height.to_string()))
        .await
        .map_err(|e| anyhow::anyhow!("no block at {height}: {e}"))
}

/// What a stopped node's store holds, read in-process.
struct Stored {
    height: Height,
    tip: BlockHash,
    /// Whether the store knows the block the node last reported as its tip.
    has_reported_tip: bool,
}

/// Opens the store of a stopped node in this process, with no network,
/// exactly as the node opens it on start.
async fn read_store(data_dir: &Path, reported_tip: Option<BlockHash>) -> anyhow::Result<Stored> {
    let path = data_dir.join(STORE_FILE);
    tokio::task::spawn_blocking(move || {
        let chain = Chain::open(
            &path,
            ChainParams::regtest(),
            Arc::new(NoTrainingEngine),
            MempoolLimits::default(),
        )?;
        anyhow::Ok(Stored {
            height: chain.height(),
            tip: chain.tip(),
            has_reported_tip: reported_tip.is_none_or(|hash| chain.has_block(&hash)),
        })
    })
    .await?
}

/// Starts the node with no peer and no mining, checks that it resumes on
/// exactly the stored tip and that its chain links from the tip down, and
/// stops it. Nothing it reports can have come from another node.
async fn resume_alone(
    data_dir: &Path,
    log: &Path,
    stored: &Stored,
    what: &str,
) -> anyhow::Result<()> {
    let mut process = spawn_node(data_dir, log, None, false)?;
    let checked = async {
        let status = poll_status(&process.api, Duration::from_secs(60), |_| true).await?;
        anyhow::ensure!(
            status.peers == 0,
            "{what}: started with no bootstrap, yet {} peers",
            status.peers
        );
        anyhow::ensure!(
            (Height(status.height), status.tip.as_str()) == (stored.height, stored.tip.to_string().as_str()),
            "{what}: alone, the node resumed at height {} tip {}, but its store holds height {} tip {}",
            status.height,
            status.tip,
            stored.height,
            stored.tip
        );
        let mut child = block_at(&process.api, stored.height).await?;
        anyhow::ensure!(child.hash == stored.tip.to_string(), "{what}: block at the tip height is {}", child.hash);
        for _ in 0..5 {
            let Some(below) = Height(child.height).prev() else {
                break;
            };
            let parent = block_at(&process.api, below).await?;
            anyhow::ensure!(
                child.prev == parent.hash,
                "{what}: broken link at {}",
                child.height
            );
            child = parent;
        }
        anyhow::Ok(())
    }
    .await;
    process.child.kill()?;
    process.child.wait()?;
    checked.map_err(|e| {
        anyhow::anyhow!(
            "{e}; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        )
    })
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
    // The height and tip the node last reported before being killed.
    let mut last_seen: Option<(Height, BlockHash)> = None;
    let mut peer_id = None;
    for round in 0..ROUNDS {
        if let Some((seen, seen_tip)) = last_seen {
            let what = format!("after kill {round}");
            let stored = read_store(&data_dir, Some(seen_tip)).await?;
            assert!(
                stored.height >= seen,
                "{what}: the store holds height {}, below the {seen} the node reported before the kill",
                stored.height
            );
            assert!(
                stored.has_reported_tip,
                "{what}: the store lacks {seen_tip}, the tip the node reported at {seen}"
            );
            resume_alone(&data_dir, &log, &stored, &what).await?;
            println!(
                "{what}: store and peerless restart both at height {} tip {} (last reported {seen})",
                stored.height, stored.tip
            );
        }
        let mut process = spawn_node(&data_dir, &log, Some(&peer_addr), true)?;
        let addr = process.api.clone();
        let status = poll_status(&addr, Duration::from_secs(60), |_| true)
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "round {round}: {e}; log: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                )
            })?;
        let resumed = Height(status.height);
        if let Some((seen, _)) = last_seen {
            assert!(
                resumed >= seen,
                "round {round}: resumed at {resumed}, below the {seen} it reported before the kill"
            );
        }
        if let Some(previous) = &peer_id {
            assert_eq!(
                previous, &status.peer_id,
                "the peer id is stable across restarts"
            );
        }
        peer_id = Some(status.peer_id);

        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let extra = 1 + (seed >> 33) % 6;
        let goal = resumed.0 + extra;
        let reached = poll_status(&addr, Duration::from_secs(120), |h| h.0 >= goal)
            .await
            .map_err(|e| anyhow::anyhow!("round {round}: {e}"))?;
        last_seen = Some((Height(reached.height), reached.tip.parse()?));
        process.child.kill()?;
        process.child.wait()?;
    }

    // The last kill, checked the same way before any peer is reachable.
    let (seen, seen_tip) = last_seen.ok_or_else(|| anyhow::anyhow!("no round ran"))?;
    let stored = read_store(&data_dir, Some(seen_tip)).await?;
    assert!(
        stored.height >= seen && stored.has_reported_tip,
        "after the last kill: the store holds height {} (reported {seen}), knows the reported tip {seen_tip}: {}",
        stored.height,
        stored.has_reported_tip
    );
    resume_alone(&data_dir, &log, &stored, "after the last kill").await?;
    println!(
        "after the last kill: store and peerless restart both at height {} tip {} (last reported {seen})",
        stored.height, stored.tip
    );

    // Last start without mining: it must catch up with the peer, which keeps
    // mining so that an equal-work fork left by the kill (first seen wins
    // ties) is settled by the peer's next block.
    let mut process = spawn_node(&data_dir, &log, Some(&peer_addr), false)?;
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
    // A peer that never mines: only the process under test makes blocks, but
    // the peer holds every block it relayed and could resync it.
    let peer = start_regtest(peer_dir.path(), vec![], None).await?;
    let peer_addr = peer
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;

    let mut process = spawn_node(&data_dir, &log, Some(&peer_addr), true)?;
    let reached = poll_status(&process.api, Duration::from_secs(60), |h| h.0 >= 5).await?;
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

    // What the node had when it stopped, from its own store; it kept mining
    // between the last poll and the signal, so at or above that height.
    let reached_tip: BlockHash = reached.tip.parse()?;
    let stored = read_store(&data_dir, Some(reached_tip)).await?;
    assert!(
        stored.height.0 >= reached.height && stored.has_reported_tip,
        "after SIGTERM the store holds height {} (reported {}), knows the reported tip {reached_tip}: {}",
        stored.height,
        reached.height,
        stored.has_reported_tip
    );
    resume_alone(&data_dir, &log, &stored, "after SIGTERM").await?;
    println!(
        "after SIGTERM: store and peerless restart both at height {} tip {} (last reported {})",
        stored.height, stored.tip, reached.height
    );

    // Back with its peer, it keeps that chain.
    let mut process = spawn_node(&data_dir, &log, Some(&peer_addr), false)?;
    let resumed = poll_status(&process.api, Duration::from_secs(60), |_| true).await;
    process.child.kill()?;
    process.child.wait()?;
    let resumed = resumed?;
    assert_eq!(
        (Height(resumed.height), resumed.tip),
        (stored.height, stored.tip.to_string()),
        "with its peer back, the node left its stored tip"
    );
    peer.stop().await;
    Ok(())
}
