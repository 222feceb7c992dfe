//! A transfer submitted over one node's HTTP API is gossiped, mined by
//! another, and shows in the recipient's balance on every node.

use std::time::Duration;

use gradchain_tests::{api_of, call};
use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::params::faucet_key;
use protocol::{Address, Amount, ChainParams, TxBody, TxKind};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_http_transfer_is_gossiped_mined_and_visible_everywhere() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let miner = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(200))),
    )
    .await?;
    let seed = miner
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    let b = start_regtest(dirs[1].path(), vec![seed.clone()], None).await?;
    let c = start_regtest(dirs[2].path(), vec![seed], None).await?;
    wait_until(
        "both peers connected to the miner",
        Duration::from_secs(60),
        || {
            let peers = miner.network().peer_count();
            async move { peers >= 2 }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    let recipient = Address([0x77; 32]);
    let params = ChainParams::regtest();
    let c_api = api_of(&c)?;
    let faucet = params.faucet;
    let nonce = call(&c_api, move |api| api.address(&faucet))
        .await??
        .next_nonce;
    let tx = TxBody {
        from: params.faucet,
        nonce,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: recipient,
            amount: Amount(4_242),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    let expected_id = tx.id()?;
    let id = call(&c_api, move |api| api.submit_tx(&tx))
        .await?
        .map_err(|e| anyhow::anyhow!("transfer refused: {e}"))?;
    assert_eq!(id, expected_id);
    let pending = call(&c_api, move |api| api.tx(&id)).await??;
    assert!(pending.in_mempool || pending.block.is_some(), "{pending:?}");
    assert_eq!(pending.tx.id, expected_id.to_string());

    for (name, node) in [("miner", &miner), ("b", &b), ("c", &c)] {
        wait_until(
            &format!("the transfer visible on {name}"),
            Duration::from_secs(120),
            || {
                let chain = node.chain().clone();
                async move {
                    chain
                        .balance(recipient)
                        .await
                        .map(|info| info.account.balance == Amount(4_242))
                        .unwrap_or(false)
                }
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    // The block that holds it is the same on every node.
    let on_c = c.chain().balance(params.faucet).await?;
    let on_miner = miner.chain().balance(params.faucet).await?;
    assert_eq!(on_c.account.nonce, nonce + 1);
    assert_eq!(on_miner.account.nonce, nonce + 1);

    c.stop().await;
    b.stop().await;
    miner.stop().await;
    Ok(())
}
