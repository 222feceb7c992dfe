//! Three regtest nodes on loopback, two of them mining, converge on the same
//! tip and state root once mining stops.

use std::time::Duration;

use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::Address;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_nodes_two_mining_converge_on_one_tip_and_state_root() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let interval = Duration::from_millis(150);
    let mut a = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), interval)),
    )
    .await?;
    let a_addr = a
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    // B dials A without the /p2p/ suffix, C with it.
    let plain = a
        .listen_addrs()
        .first()
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    let mut b = start_regtest(
        dirs[1].path(),
        vec![plain],
        Some((Address([0xb2; 32]), interval)),
    )
    .await?;
    let c = start_regtest(dirs[2].path(), vec![a_addr], None).await?;

    wait_until(
        "every node past height 15",
        Duration::from_secs(120),
        || {
            let heights = [a.chain().height(), b.chain().height(), c.chain().height()];
            async move { heights.iter().all(|h| h.0 >= 15) }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    // With both miners stopped at once an equal-work fork could stand
    // forever (first seen wins ties), so B stops first and A's next block
    // settles any tie.
    b.stop_mining().await;
    let settled = a.chain().height().0 + 2;
    wait_until("A to mine past any tie", Duration::from_secs(120), || {
        let height = a.chain().height();
        async move { height.0 >= settled }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    a.stop_mining().await;
    wait_until("all three on one tip", Duration::from_secs(120), || {
        let tips = [a.chain().tip(), b.chain().tip(), c.chain().tip()];
        async move { tips[0].tip == tips[1].tip && tips[1].tip == tips[2].tip }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let (ta, tb, tc) = (a.chain().tip(), b.chain().tip(), c.chain().tip());
    assert_eq!(ta.state_root, tb.state_root);
    assert_eq!(tb.state_root, tc.state_root);
    assert_eq!(ta.total_work, tc.total_work);
    // Both miners' coinbases made it into the shared chain or lost a race;
    // either way both see the same balances.
    for miner in [Address([0xa1; 32]), Address([0xb2; 32])] {
        let on_a = a.chain().balance(miner).await?;
        let on_c = c.chain().balance(miner).await?;
        assert_eq!(on_a.account, on_c.account);
    }
    assert!(a.network().peer_count() >= 2, "A sees both peers");

    c.stop().await;
    b.stop().await;
    a.stop().await;
    Ok(())
}
