//! The network simulation at test size: 8 nodes with 3 to 4 peers each,
//! blocks at random gaps from random finders, transfers at a steady rate,
//! then a partition and its heal. Every main-chain block reaches every
//! node, most transfers reach every mempool before they are mined, and the
//! network ends on one tip with one state root. The full-size run (32
//! nodes) is `scripts/bench-network`.

use std::time::Duration;

use node::simnet::{simulate, SimConfig};
use node::testkit::init_test_logging;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_nodes_spread_blocks_and_transfers_and_heal_a_partition() -> anyhow::Result<()> {
    init_test_logging();
    let dir = tempfile::tempdir()?;
    let config = SimConfig {
        nodes: 8,
        min_peers: 3,
        max_peers: 4,
        miners: 4,
        block_interval: Duration::from_secs(1),
        tx_rate: 10.0,
        steady: Duration::from_secs(15),
        partition: Duration::from_secs(8),
        seed: 7,
    };
    let report = simulate(&config, dir.path()).await?;
    println!("{report}");

    assert!(
        report.converged,
        "one tip and one state root after the heal"
    );
    assert!(report.found >= 3, "blocks were found: {}", report.found);
    assert!(report.stale <= report.found);
    assert_eq!(
        report.blocks.all.len() + report.blocks.incomplete,
        report.found - report.stale,
        "every main-chain block is counted once"
    );
    assert_eq!(
        report.blocks.incomplete, 0,
        "every main-chain block reached every node"
    );
    assert!(
        report.txs_sent >= 100,
        "transfers sent: {}",
        report.txs_sent
    );
    assert!(
        report.txs.all.len() * 2 >= report.txs_sent,
        "most transfers reached every mempool before being mined: {} of {}",
        report.txs.all.len(),
        report.txs_sent
    );
    assert!(report.cut_links >= 1, "the partition cut at least one link");
    assert!(
        report.partition_blocks.0 + report.partition_blocks.1 >= 1,
        "blocks were found while apart"
    );
    assert_eq!(report.lost_events, 0, "the harness saw every event");
    Ok(())
}
