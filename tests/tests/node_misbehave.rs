//! A raw libp2p client that gossips garbage, an oversized message, a block
//! with bad proof of work, a block with an invalid transaction and a forged
//! transaction is penalised (and banned for the invalid blocks), while an
//! honest peer keeps syncing.

use std::time::Duration;

use gradchain_tests::{forged_block, raw_client};
use node::net::wire::{BLOCKS_TOPIC, TXS_TOPIC};
use node::testkit::{init_test_logging, start_regtest, wait_until};
use protocol::api::BlockRef;
use protocol::params::faucet_key;
use protocol::{codec, Address, Amount, ChainParams, SignedTx, Transaction, TxBody, TxKind};

fn forged_tx() -> anyhow::Result<SignedTx> {
    let params = ChainParams::regtest();
    let mut tx = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: Address([0x99; 32]),
            amount: Amount(1),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    // Changing the signed body breaks the signature.
    tx.body.fee = Amount(501);
    Ok(tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_misbehaving_peer_is_penalised_while_honest_peers_keep_syncing() -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let a = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(300))),
    )
    .await?;
    let a_addr = a
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    let b = start_regtest(dirs[1].path(), vec![a_addr.clone()], None).await?;
    wait_until(
        "a few blocks on the honest chain",
        Duration::from_secs(60),
        || {
            let height = b.chain().height();
            async move { height.0 >= 3 }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    let tip_height = a.chain().height();
    let parent = a
        .chain()
        .block(BlockRef::Height(tip_height))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tip block"))?
        .block;
    let next = tip_height.0 + 1;

    let garbage = raw_client(a_addr.clone())?;
    garbage
        .publish
        .send((BLOCKS_TOPIC, b"definitely not a block".to_vec()))?;
    let oversized = raw_client(a_addr.clone())?;
    oversized.publish.send((TXS_TOPIC, vec![7u8; 200 * 1024]))?;
    let bad_pow = raw_client(a_addr.clone())?;
    bad_pow.publish.send((
        BLOCKS_TOPIC,
        codec::encode(&forged_block(
            parent.hash(),
            parent.header.time,
            next,
            vec![],
            false,
        )?)?,
    ))?;
    let bad_tx_block = raw_client(a_addr.clone())?;
    let invalid = forged_block(
        parent.hash(),
        parent.header.time,
        next,
        vec![Transaction::Signed(forged_tx()?)],
        true,
    )?;
    bad_tx_block
        .publish
        .send((BLOCKS_TOPIC, codec::encode(&invalid)?))?;
    let bad_tx = raw_client(a_addr.clone())?;
    bad_tx
        .publish
        .send((TXS_TOPIC, codec::encode(&forged_tx()?)?))?;

    let expectations = [
        ("garbage", &garbage, 50, false),
        ("oversized", &oversized, 50, false),
        ("bad proof of work", &bad_pow, 100, true),
        ("invalid transaction in a block", &bad_tx_block, 100, true),
        ("forged transaction", &bad_tx, 25, false),
    ];
    for (what, client, points, banned) in expectations {
        let network = a.network().clone();
        let peer = client.peer_id;
        wait_until(
            &format!("a penalty for {what}"),
            Duration::from_secs(60),
            || {
                let network = network.clone();
                async move {
                    network
                        .penalty(peer)
                        .await
                        .map(|(score, is_banned)| score >= points && is_banned == banned)
                        .unwrap_or(false)
                }
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }
    assert!(
        a.chain()
            .block(BlockRef::Hash(invalid.hash()))
            .await?
            .is_none(),
        "the invalid block was not stored"
    );

    // The honest peer keeps following the honest miner.
    let target = a.chain().height().0 + 3;
    wait_until(
        "the honest peer to keep syncing",
        Duration::from_secs(120),
        || {
            let height = b.chain().height();
            async move { height.0 >= target }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(
        b.network().penalty(a.peer_id()).await?.0,
        0,
        "the honest miner was never penalised"
    );

    for client in [garbage, oversized, bad_pow, bad_tx_block, bad_tx] {
        client.task.abort();
    }
    b.stop().await;
    a.stop().await;
    Ok(())
}
