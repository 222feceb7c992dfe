//! Crash safety of a deep invalidation: the real binary is killed with
//! SIGKILL at random moments while it invalidates a 200-block branch, and
//! the data dir always reopens on the honest chain.
//!
//! The data dir is built in-process first: an honest main chain of
//! [`HONEST`] blocks and, stored directly with the store API, a branch of
//! [`BRANCH`] blocks from genesis with more work, whose first block commits
//! to a wrong state root (found only by connecting it). Started on that data
//! dir, the node's `Chain::open` switches to the heavier branch: it
//! disconnects the honest chain down to genesis, fails to connect the
//! branch's first block, forgets that block with its 199 descendants, and
//! connects the honest chain again, all before it logs "chain loaded".
//!
//! A first round lets the binary get that far and measures how long it
//! takes; it also checks that the binary did forget the whole branch. Each
//! later round starts from a fresh copy of the prepared data dir and kills
//! the binary after a random delay within that time (plus a margin), so the
//! kill lands at different points of start-up: before the store is opened,
//! while the honest chain is disconnected, around the forgetting, or while
//! the honest chain is connected again. A delay cannot be aimed at the one
//! commit that forgets the branch, so each round prints where its kill
//! landed (how many branch blocks and which main-chain height the killed
//! node left), and the rounds assert what must hold wherever it landed:
//!
//! - the branch is stored whole or not at all (forgetting it is one
//!   transaction, so a kill never leaves descendants of a forgotten block);
//! - the main chain left on disk is a prefix of the honest chain;
//! - `Chain::open` on the data dir succeeds, on the honest tip, with the
//!   whole branch gone from the store.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use node::chain::{BlockOutcome, Chain, NoTrainingEngine};
use node::mempool::MempoolLimits;
use node::node::STORE_FILE;
use node::store::{Store, StoredIndex};
use protocol::{
    merkle_root, Address, Block, BlockHash, ChainParams, Coinbase, Header, Height, StateRoot,
    Transaction,
};
use rand::Rng;

/// Blocks in the honest main chain.
const HONEST: u64 = 30;
/// Blocks in the invalid branch: the bad one and its descendants.
const BRANCH: u64 = 200;
/// Rounds killed at a random moment, after the measuring round.
const KILL_ROUNDS: usize = 60;
/// How long the measuring round may take to load the chain.
const LOAD_TIMEOUT: Duration = Duration::from_secs(30);

const NOW: u32 = 1_767_225_600 + 10_000;

fn open_chain(path: &Path) -> Result<Chain, node::chain::ChainError> {
    Chain::open(
        path,
        ChainParams::regtest(),
        Arc::new(NoTrainingEngine),
        MempoolLimits::default(),
    )
}

fn mine(header: &mut Header) {
    let Ok(target) = header.bits.to_target() else {
        panic!("regtest bits are a valid target");
    };
    while !target.is_met_by(&header.hash()) {
        header.nonce += 1;
    }
}

/// A mined coinbase-only block on `parent` committing to `state_root`,
/// right or wrong.
fn branch_block(parent: &Header, height: u64, state_root: StateRoot) -> anyhow::Result<Block> {
    let params = ChainParams::regtest();
    let coinbase = Transaction::Coinbase(Coinbase {
        height: Height(height),
        miner: Address([0xee; 32]),
        amount: params.subsidy(Height(height)),
    });
    let mut header = Header {
        version: params.block_version,
        prev: parent.hash(),
        merkle_root: merkle_root(&[coinbase.id()?]),
        state_root,
        time: parent.time + 1,
        bits: params.pow_limit,
        nonce: 0,
    };
    mine(&mut header);
    Ok(Block {
        header,
        txs: vec![coinbase],
    })
}

/// What the prepared data dir holds.
struct Prepared {
    store: PathBuf,
    /// The honest main chain, genesis first.
    honest: Vec<BlockHash>,
    /// The invalid branch, its first (bad) block first.
    branch: Vec<BlockHash>,
}

fn prepare(dir: &Path) -> anyhow::Result<Prepared> {
    let store_path = dir.join(STORE_FILE);
    let params = ChainParams::regtest();
    let genesis = params.genesis_block()?;
    let mut honest = vec![genesis.hash()];
    {
        let mut chain = open_chain(&store_path)?;
        for i in 0..HONEST {
            let now = NOW + u32::try_from(i)?;
            let mut block = chain.template(Address([0x11; 32]), now)?.block;
            mine(&mut block.header);
            let outcome = chain.process_block(block, now)?;
            anyhow::ensure!(
                matches!(outcome, BlockOutcome::NewTip { .. }),
                "honest block {i}: {outcome:?}"
            );
            honest.push(chain.tip());
        }
    }
    let store = Store::open(&store_path, params.name, &genesis, &params.genesis_state())?;
    let per_block = params.pow_limit.to_target()?.work();
    let mut work = per_block;
    let mut parent = genesis.header;
    let mut branch = Vec::new();
    for height in 1..=BRANCH {
        // The first block's root is wrong; the others' do not matter, as
        // nothing ever connects them.
        let block = branch_block(&parent, height, StateRoot([0xbb; 32]))?;
        work = work
            .checked_add(per_block)
            .ok_or_else(|| anyhow::anyhow!("work overflow"))?;
        store.put_block(
            &block,
            &StoredIndex {
                header: block.header,
                height: Height(height),
                work,
                seq: 1_000 + height,
            },
        )?;
        parent = block.header;
        branch.push(block.hash());
    }
    Ok(Prepared {
        store: store_path,
        honest,
        branch,
    })
}

fn spawn(data_dir: &Path, log: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_gradchain-node"))
        .args([
            "run",
            "--chain",
            "regtest",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--no-http",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

/// A fresh data dir holding a copy of the prepared store.
fn fresh_data_dir(root: &Path, round: usize, prepared: &Prepared) -> anyhow::Result<PathBuf> {
    let data_dir = root.join(format!("round-{round}"));
    std::fs::create_dir_all(&data_dir)?;
    std::fs::copy(&prepared.store, data_dir.join(STORE_FILE))?;
    Ok(data_dir)
}

/// What a killed node left: branch blocks still stored, and the main-chain
/// height.
fn inspect(data_dir: &Path, prepared: &Prepared) -> anyhow::Result<(usize, u64)> {
    let params = ChainParams::regtest();
    let store = Store::open(
        &data_dir.join(STORE_FILE),
        params.name,
        &params.genesis_block()?,
        &params.genesis_state(),
    )?;
    let mut left = 0usize;
    for hash in &prepared.branch {
        if store.block(hash)?.is_some() {
            left += 1;
        }
    }
    let mut height = 0u64;
    while let Some(hash) = store.main_hash(Height(height + 1))? {
        height += 1;
        anyhow::ensure!(
            prepared.honest.get(usize::try_from(height)?) == Some(&hash),
            "main-chain block {hash} at height {height} is not the honest one"
        );
    }
    Ok((left, height))
}

/// Reopens the data dir in-process: it must open on the honest tip, the
/// branch gone.
fn reopen(data_dir: &Path, prepared: &Prepared) -> anyhow::Result<()> {
    let chain = open_chain(&data_dir.join(STORE_FILE))
        .map_err(|e| anyhow::anyhow!("the data dir does not reopen: {e}"))?;
    anyhow::ensure!(
        Some(&chain.tip()) == prepared.honest.last() && chain.height() == Height(HONEST),
        "reopened on {} at {}, not on the honest tip",
        chain.tip(),
        chain.height()
    );
    for hash in &prepared.branch {
        anyhow::ensure!(
            !chain.has_block(hash) && chain.block(hash)?.is_none(),
            "branch block {hash} is still stored after reopening"
        );
    }
    Ok(())
}

fn wait_for_line(log: &Path, child: &mut Child, line: &str) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(log)?.contains(line) {
            return Ok(start.elapsed());
        }
        if let Some(status) = child.try_wait()? {
            anyhow::bail!(
                "the node exited ({status}) before logging {line:?}: {}",
                std::fs::read_to_string(log)?
            );
        }
        if start.elapsed() > LOAD_TIMEOUT {
            anyhow::bail!(
                "no {line:?} within {LOAD_TIMEOUT:?}: {}",
                std::fs::read_to_string(log)?
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn sigkill_during_a_deep_invalidation_always_reopens_on_the_honest_chain() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let prepared_dir = root.path().join("prepared");
    std::fs::create_dir_all(&prepared_dir)?;
    let started = Instant::now();
    let prepared = prepare(&prepared_dir)?;
    eprintln!(
        "prepared {HONEST} honest blocks and a {BRANCH}-block invalid branch in {:?}",
        started.elapsed()
    );

    // Measuring round: the node gets through the invalidation and loads.
    let data_dir = fresh_data_dir(root.path(), 0, &prepared)?;
    let log = root.path().join("round-0.log");
    let mut child = spawn(&data_dir, &log)?;
    let loaded = wait_for_line(&log, &mut child, "chain loaded");
    child.kill()?;
    child.wait()?;
    let loaded = loaded?;
    let text = std::fs::read_to_string(&log)?;
    let forgot = format!("descendants={}", BRANCH - 1);
    anyhow::ensure!(
        text.contains("forgot an invalid block and its descendants") && text.contains(&forgot),
        "the node did not forget the branch on start-up: {text}"
    );
    let (left, height) = inspect(&data_dir, &prepared)?;
    anyhow::ensure!(
        left == 0 && height == HONEST,
        "after loading, {left} branch blocks are stored and the main chain is at {height}"
    );
    reopen(&data_dir, &prepared)?;
    eprintln!("round 0: loaded {loaded:?} after the spawn, the branch forgotten");

    let window = loaded + loaded / 5;
    let mut rng = rand::thread_rng();
    let mut landed: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for round in 1..=KILL_ROUNDS {
        let data_dir = fresh_data_dir(root.path(), round, &prepared)?;
        let log = root.path().join(format!("round-{round}.log"));
        let delay = rng.gen_range(Duration::ZERO..=window);
        let mut child = spawn(&data_dir, &log)?;
        std::thread::sleep(delay);
        child.kill()?;
        child.wait()?;
        let (left, height) = inspect(&data_dir, &prepared)?;
        let place = match left {
            0 if height == HONEST => "after the invalidation",
            0 => "while reconnecting the honest chain",
            l if usize::try_from(BRANCH).ok() == Some(l) && height == HONEST => {
                "before the honest chain was disconnected"
            }
            l if usize::try_from(BRANCH).ok() == Some(l) => {
                "while disconnecting, before forgetting"
            }
            _ => "half way through forgetting the branch",
        };
        eprintln!(
            "round {round}: killed after {delay:?}: {left} of {BRANCH} branch blocks stored, \
             main chain at {height} ({place})"
        );
        anyhow::ensure!(
            left == 0 || usize::try_from(BRANCH).ok() == Some(left),
            "round {round}: the kill after {delay:?} left {left} of the {BRANCH} branch blocks: \
             the branch was forgotten one piece at a time; log: {}",
            std::fs::read_to_string(&log)?
        );
        reopen(&data_dir, &prepared).map_err(|e| {
            anyhow::anyhow!(
                "round {round} (killed after {delay:?}, {place}): {e}; log: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        *landed.entry(place).or_default() += 1;
    }
    eprintln!(
        "kills landed (where: rounds): {landed:?}; total {:?}",
        started.elapsed()
    );
    Ok(())
}
