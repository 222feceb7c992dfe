//! Side-chain spam: a peer gossips 1,000 valid-proof-of-work siblings of a
//! block 20 below the tip (on regtest every block is minimum work, as an
//! hour-old block's siblings are on a chain whose difficulty fell back to
//! the limit). The victim stores none of them and relays none, its disk and
//! memory stay flat, and it keeps following the honest chain.

use std::time::Duration;

use gradchain_tests::{forged_block, raw_client};
use node::net::wire::BLOCKS_TOPIC;
use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::api::BlockRef;
use protocol::{codec, Height};

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_cheap_siblings_are_neither_stored_nor_relayed() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let victim = start_regtest(
        dirs[0].path(),
        vec![],
        Some((protocol::Address([0xd1; 32]), Duration::from_millis(250))),
    )
    .await?;
    let addr = victim
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no address"))?;
    let follower = start_regtest(dirs[1].path(), vec![addr.clone()], None).await?;
    wait_until("25 blocks on both", Duration::from_secs(120), || {
        let (v, f) = (victim.chain().height(), follower.chain().height());
        async move { v.0 >= 25 && f.0 >= 25 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let fork = Height(victim.chain().height().0 - 20);
    let parent = victim
        .chain()
        .block(BlockRef::Height(fork))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no block at {fork}"))?
        .block;
    let siblings: Vec<protocol::Block> = (0..1000u32)
        .map(|i| {
            forged_block(
                parent.hash(),
                parent.header.time + i,
                fork.0 + 1,
                vec![],
                true,
            )
        })
        .collect::<anyhow::Result<_>>()?;
    let disk_before = dir_bytes(dirs[0].path());
    let rss_before = rss_kib();
    let attacker = raw_client(addr)?;
    for block in &siblings {
        attacker
            .publish
            .send((BLOCKS_TOPIC, codec::encode(block)?))?;
    }
    // The honest chain goes on meanwhile.
    let goal = victim.chain().height().0 + 8;
    wait_until(
        "the honest chain to go on",
        Duration::from_secs(120),
        || {
            let (v, f) = (victim.chain().height(), follower.chain().height());
            async move { v.0 >= goal && f.0 >= goal }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let mut stored = 0;
    let mut relayed = 0;
    for block in &siblings {
        if victim
            .chain()
            .block(BlockRef::Hash(block.hash()))
            .await?
            .is_some()
        {
            stored += 1;
        }
        if follower
            .chain()
            .block(BlockRef::Hash(block.hash()))
            .await?
            .is_some()
        {
            relayed += 1;
        }
    }
    let disk_after = dir_bytes(dirs[0].path());
    let rss_after = rss_kib();
    println!(
        "1000 siblings of height {fork}: stored {stored}, relayed {relayed}; victim data dir {disk_before} -> {disk_after} bytes; test process RSS {rss_before} -> {rss_after} KiB (two nodes, {} honest blocks mined meanwhile)",
        goal - fork.0 - 20
    );
    assert_eq!(stored, 0, "no sibling is stored");
    assert_eq!(relayed, 0, "no sibling is relayed");
    // Eight honest blocks cost far less than a megabyte; a thousand stored
    // blocks would cost more.
    assert!(
        disk_after.saturating_sub(disk_before) < 4 << 20,
        "the data dir grew by {} bytes",
        disk_after.saturating_sub(disk_before)
    );
    attacker.task.abort();
    follower.stop().await;
    victim.stop().await;
    Ok(())
}
