//! Partition and heal: two groups mine apart, then reconnect. Every node
//! ends on the branch with more work, state roots agree, and a transaction
//! mined only on the losing side is back in that side's mempool.

use std::time::Duration;

use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::params::faucet_key;
use protocol::{Address, Amount, ChainParams, TxBody, TxKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_side_with_more_work_wins_after_a_partition_heals() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    // Group one (A mines fast, B follows) and group two (C mines slowly, D
    // follows) never dial each other until the heal.
    let mut a = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(100))),
    )
    .await?;
    let b = start_regtest(
        dirs[1].path(),
        vec![a.p2p_addr().ok_or_else(|| anyhow::anyhow!("no addr"))?],
        None,
    )
    .await?;
    let mut c = start_regtest(
        dirs[2].path(),
        vec![],
        Some((Address([0xc3; 32]), Duration::from_millis(400))),
    )
    .await?;
    let d = start_regtest(
        dirs[3].path(),
        vec![c.p2p_addr().ok_or_else(|| anyhow::anyhow!("no addr"))?],
        None,
    )
    .await?;
    wait_until("D connected to C", Duration::from_secs(60), || {
        let peers = d.network().peer_count();
        async move { peers >= 1 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // A transfer that only the losing side sees and mines.
    let params = ChainParams::regtest();
    let recipient = Address([0x55; 32]);
    let tx = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: recipient,
            amount: Amount(1_000),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    let txid = tx.id()?;
    match d.chain().submit_tx(tx.clone()).await? {
        Ok(_) => d.network().publish(
            node::net::network::Topic::Txs,
            protocol::codec::encode(&tx)?,
        ),
        Err(err) => anyhow::bail!("transfer refused: {err}"),
    }
    wait_until(
        "the transfer mined on the losing side",
        Duration::from_secs(120),
        || {
            let chain = d.chain().clone();
            async move {
                chain
                    .balance(recipient)
                    .await
                    .map(|i| i.account.balance == Amount(1_000))
                    .unwrap_or(false)
            }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    wait_until("group one well ahead", Duration::from_secs(120), || {
        let (ha, hc) = (a.chain().height(), c.chain().height());
        async move { ha.0 >= hc.0 + 5 && ha.0 >= 10 }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    a.stop_mining().await;
    c.stop_mining().await;
    let winner = a.chain().tip();
    let loser = c.chain().tip();
    assert!(winner.total_work > loser.total_work);

    // Heal: B dials C.
    b.network()
        .connect(c.p2p_addr().ok_or_else(|| anyhow::anyhow!("no addr"))?);
    for (name, node) in [("a", &a), ("b", &b), ("c", &c), ("d", &d)] {
        wait_until(
            &format!("{name} on the winning tip"),
            Duration::from_secs(120),
            || {
                let tip = node.chain().tip();
                async move { tip.tip == winner.tip }
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
        assert_eq!(
            node.chain().tip().state_root,
            winner.state_root,
            "{name} state root"
        );
    }
    // The losing side's transfer was disconnected and is waiting again.
    for (name, node) in [("c", &c), ("d", &d)] {
        let pending = node.chain().mempool_ids().await?;
        let mined = node.chain().balance(recipient).await?.account.balance == Amount(1_000);
        assert!(
            pending.contains(&txid) || mined,
            "{name}: transfer neither pending nor mined"
        );
    }
    assert!(c.chain().mempool_ids().await?.contains(&txid));

    d.stop().await;
    c.stop().await;
    b.stop().await;
    a.stop().await;
    Ok(())
}
