//! Early relay: three nodes in a line (A-B-C) that all hold a transfer in
//! their mempools. A block carrying it, right in every cheap check but wrong
//! in a state rule, is forwarded hop by hop before its validation, refused
//! by every node, and nobody who forwarded it is blamed. A valid block
//! crosses the line the same way and becomes everyone's tip.

use std::time::Duration;

use gradchain_tests::{forged_block, raw_client};
use node::chain_task::BlockSource;
use node::net::network::Topic;
use node::net::wire::BLOCKS_TOPIC;
use node::testkit::{init_test_logging, start_regtest, wait_until};
use node::RunningNode;
use protocol::api::BlockRef;
use protocol::params::faucet_key;
use protocol::{codec, Address, Amount, BlockHash, ChainParams, Transaction, TxBody, TxKind};

/// Blocks `node` relayed before validating them, and how many of those
/// then failed validation.
fn relayed_early(node: &RunningNode) -> (u64, u64) {
    let metrics = &node.observer().metrics;
    (
        metrics.blocks_relayed_early.get(),
        metrics.blocks_relayed_early_invalid.get(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_block_is_forwarded_before_validation_and_an_invalid_one_blames_nobody(
) -> anyhow::Result<()> {
    init_test_logging();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let a = start_regtest(dirs[0].path(), vec![], None).await?;
    let a_addr = a.p2p_addr().ok_or_else(|| anyhow::anyhow!("no addr"))?;
    let b = start_regtest(dirs[1].path(), vec![a_addr.clone()], None).await?;
    let b_addr = b.p2p_addr().ok_or_else(|| anyhow::anyhow!("no addr"))?;
    let c = start_regtest(dirs[2].path(), vec![b_addr], None).await?;
    wait_until("the line A-B-C", Duration::from_secs(60), || {
        let (pb, pc) = (b.network().peer_count(), c.network().peer_count());
        async move { pb >= 2 && pc >= 1 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // A transfer every node verified on admission.
    let params = ChainParams::regtest();
    let tx = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(1_000),
        kind: TxKind::Transfer {
            to: Address([0x77; 32]),
            amount: Amount(5_000_000),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    if let Err(err) = a.chain().submit_tx(tx.clone()).await? {
        anyhow::bail!("transfer refused: {err}");
    }
    a.network().publish(Topic::Txs, codec::encode(&tx)?);
    for (name, node) in [("b", &b), ("c", &c)] {
        wait_until(
            &format!("{name} holding the transfer"),
            Duration::from_secs(60),
            || {
                let pending = node.chain().tip().mempool;
                async move { pending >= 1 }
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
    }

    // Valid proof of work, merkle root and transactions; a made-up state
    // root. A raw peer hands it to A.
    let genesis = a
        .chain()
        .block(BlockRef::Height(protocol::Height::GENESIS))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no genesis"))?
        .block;
    let invalid = forged_block(
        genesis.hash(),
        genesis.header.time,
        1,
        vec![Transaction::Signed(tx)],
        true,
    )?;
    let attacker = raw_client(a_addr)?;
    attacker
        .publish
        .send((BLOCKS_TOPIC, codec::encode(&invalid)?))?;
    wait_until(
        "the invalid block forwarded early to C and refused there",
        Duration::from_secs(60),
        || {
            let (_, invalid) = relayed_early(&c);
            async move { invalid >= 1 }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;
    for (name, node) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(
            relayed_early(node),
            (1, 1),
            "{name} relayed it early once, then refused it"
        );
        assert_eq!(
            node.chain().tip().height,
            protocol::Height::GENESIS,
            "{name} tip"
        );
    }
    assert_eq!(
        b.network().penalty(a.peer_id()).await?.0,
        0,
        "B does not blame A"
    );
    assert_eq!(
        c.network().penalty(b.peer_id()).await?.0,
        0,
        "C does not blame B"
    );
    assert_eq!(
        a.network().penalty(attacker.peer_id).await?.0,
        0,
        "its first sender may have relayed it early too"
    );

    // A valid block, mined on A, crosses the line early too.
    let mut block = a.chain().template(Address([0xa1; 32])).await?.block;
    let target = block.header.bits.to_target()?;
    while !target.is_met_by(&BlockHash(
        block.header.hasher().hash_with_nonce(block.header.nonce),
    )) {
        block.header.nonce += 1;
    }
    let hash = block.hash();
    let bytes = codec::encode(&block)?;
    a.chain().submit_block(block, BlockSource::Mined).await?;
    a.network().publish(Topic::Blocks, bytes);
    wait_until("C on the valid block", Duration::from_secs(60), || {
        let tip = c.chain().tip().tip;
        async move { tip == hash }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    wait_until(
        "B and C counting it as relayed early and valid",
        Duration::from_secs(10),
        || {
            let (nb, nc) = (relayed_early(&b), relayed_early(&c));
            async move { nb == (2, 1) && nc == (2, 1) }
        },
    )
    .await
    .map_err(anyhow::Error::msg)?;

    attacker.task.abort();
    c.stop().await;
    b.stop().await;
    a.stop().await;
    Ok(())
}
