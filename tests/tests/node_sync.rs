//! A node started after 500 blocks syncs all of them headers-first and ends
//! on the same tip hash.

use std::time::Duration;

use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::{Address, Height};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_late_node_syncs_five_hundred_blocks() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let mut a = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::ZERO)),
    )
    .await?;
    wait_until("500 blocks mined", Duration::from_secs(300), || {
        let height = a.chain().height();
        async move { height.0 >= 500 }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    a.stop_mining().await;
    let source = a.chain().tip();
    assert!(source.height >= Height(500));

    let addr = a
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    let b = start_regtest(dirs[1].path(), vec![addr], None).await?;
    wait_until(
        "the late node to reach the source tip",
        Duration::from_secs(300),
        || {
            let tip = b.chain().tip();
            async move { tip.tip == source.tip }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let synced = b.chain().tip();
    assert_eq!(synced.height, source.height);
    assert_eq!(synced.state_root, source.state_root);
    assert_eq!(synced.total_work, source.total_work);

    b.stop().await;
    a.stop().await;
    Ok(())
}
