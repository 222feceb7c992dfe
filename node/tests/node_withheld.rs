//! Withheld data delays a node but never splits it. The poster serves the
//! dataset to one node only (W), and the training states a fraud proof
//! opens live only where the worker put them (W too). C starts with no peer
//! and is handed the chain's blocks one by one: the block carrying the
//! fraud proof cannot be judged without the dataset and the state, so C
//! parks it (and what builds on it), marks nothing invalid and blames
//! nobody. Once C meets a peer that has the data, it fetches it, connects
//! the parked blocks and converges on the same tip, state root and job
//! outcome as everyone else.

use std::time::Duration;

use node::chain_task::BlockSource;
use node::testkit::{init_test_logging, start_regtest_auditing, wait_until};
use protocol::api::BlockRef;
use protocol::blob::BlobKind;
use protocol::params::faucet_key;
use protocol::state::ChallengeOutcome;
use protocol::{Address, Amount, Height, TxKind};

mod support;
use support::*;

fn quiet() -> node::jobs::AuditConfig {
    node::jobs::AuditConfig {
        fraction: 0.0,
        key: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn withheld_data_parks_blocks_and_everyone_converges_once_it_is_served() -> anyhow::Result<()>
{
    init_test_logging();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let w_node = start_regtest_auditing(dirs[0].path(), vec![], None, quiet()).await?;
    let w = api_of(&w_node)?;
    let a_node = start_regtest_auditing(
        dirs[1].path(),
        vec![addr_of(&w_node)?],
        Some((Address([0xa1; 32]), Duration::from_millis(200))),
        quiet(),
    )
    .await?;
    let a = api_of(&a_node)?;
    let c_node = start_regtest_auditing(dirs[2].path(), vec![], None, quiet()).await?;
    wait_until("A and W connected", WAIT, || {
        let n = w_node.network().clone();
        async move { n.peer_count() >= 1 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let worker = key(0x71);
    let liar = key(0x72);
    for (nonce, who) in [&worker, &liar].into_iter().enumerate() {
        let tx = sign(
            &faucet_key(),
            nonce as u64,
            FEE,
            TxKind::Transfer {
                to: address(who),
                amount: Amount(1_000_000),
            },
        )?;
        submit(&a, tx).await?;
    }
    // The poster serves the dataset to W only and posts there.
    let dataset = iris()?;
    let spec = iris_spec(&dataset, 30, 0, 12)?;
    put_blob(&w, BlobKind::Dataset, dataset.to_blob()).await?;
    let tx = post(2, &spec, 4_000, 10_000)?;
    let job = protocol::JobId::from(tx.id()?);
    submit(&w, tx).await?;
    wait_job(&a_node, job, "the job on A", |r| r.is_open()).await?;
    // The worker serves its states on W only.
    let claim = honest(&job, &address(&worker), &spec, &dataset)?;
    claim.serve(&w).await?;
    submit(&w, claim.tx(&worker, 0, job)?).await?;
    wait_job(&a_node, job, "the result pending on A", is_pending).await?;
    // A wrong challenge: judging it needs the dataset and state S_4.
    let wrong = segment_claim(&claim.leaves, 5)?;
    submit(
        &w,
        sign(&liar, 0, FEE, TxKind::FraudProof { job, claim: wrong })?,
    )
    .await?;
    let settled = wait_job(&a_node, job, "the result settled on A", |r| {
        is_fulfilled(r) && r.challenges.len() == 1
    })
    .await?;
    assert_eq!(settled.challenges[0].outcome, ChallengeOutcome::Refuted);
    assert!(!c_node.blobs().has(&spec.dataset.digest));

    // C, alone, is handed every block A has.
    let tip = a_node.chain().height();
    let mut parked_at = None;
    for height in 1..=tip.0 {
        let block = a_node
            .chain()
            .block(BlockRef::Height(Height(height)))
            .await?
            .ok_or_else(|| anyhow::anyhow!("no block {height} on A"))?
            .block;
        match c_node
            .chain()
            .submit_block(block, BlockSource::Peer("test".into()))
            .await
        {
            Ok(_) => {}
            Err(node::chain_task::ServiceError::Chain(err)) => {
                assert!(
                    !err.is_peer_fault(),
                    "block {height} was judged a peer's fault: {err}"
                );
                parked_at.get_or_insert(height);
            }
            Err(other) => anyhow::bail!("chain task failed: {other}"),
        }
    }
    let parked_at = parked_at.ok_or_else(|| anyhow::anyhow!("nothing was parked"))?;
    let parked = c_node.chain().parked().await?;
    assert!(!parked.is_empty());
    assert!(
        parked
            .iter()
            .any(|(_, missing)| *missing == Some(spec.dataset.digest)),
        "{parked:?}"
    );
    assert_eq!(
        c_node.chain().height().0,
        parked_at - 1,
        "C stopped before the parked block"
    );
    assert!(
        c_node
            .chain()
            .job(job)
            .await?
            .is_some_and(|r| is_pending(&r)),
        "C holds the job pending, not judged"
    );
    // Handing the parked block again: stored, not known-invalid.
    let again = a_node
        .chain()
        .block(BlockRef::Height(Height(parked_at)))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no block"))?
        .block;
    assert!(matches!(
        c_node
            .chain()
            .submit_block(again, BlockSource::Peer("test".into()))
            .await,
        Ok(node::chain::BlockOutcome::AlreadyKnown)
    ));

    // C meets A, which has the data: it fetches, connects and converges.
    c_node.network().connect(addr_of(&a_node)?);
    wait_until("C on A's chain", WAIT, || {
        let (c, a) = (c_node.chain().clone(), a_node.chain().clone());
        async move {
            let at = |chain: node::chain_task::ChainHandle| async move {
                chain
                    .block(BlockRef::Height(tip))
                    .await
                    .ok()
                    .flatten()
                    .filter(|b| b.main_chain)
                    .map(|b| b.hash)
            };
            let mine = at(c).await;
            mine.is_some() && mine == at(a).await
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    assert!(c_node.blobs().has(&spec.dataset.digest));
    let record = wait_job(&c_node, job, "the job settled on C", is_fulfilled).await?;
    assert_eq!(record.challenges, settled.challenges);
    assert_eq!(
        balance(&c_node, address(&worker)).await?,
        balance(&a_node, address(&worker)).await?
    );
    assert_eq!(c_node.network().penalty(a_node.peer_id()).await?.0, 0);
    assert_eq!(a_node.network().penalty(c_node.peer_id()).await?.0, 0);
    assert_eq!(a_node.network().penalty(w_node.peer_id()).await?.0, 0);

    for node in [c_node, a_node, w_node] {
        node.stop().await;
    }
    Ok(())
}
