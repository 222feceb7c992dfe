//! Floods that cost their sender nothing get no training. A node auditing
//! every segment receives, through gossip and through its HTTP API, 200
//! `SubmitResult`s with bad signatures; through gossip, a block of forged
//! results on an unknown parent, and a block of results with bad signatures
//! at the regtest minimum work on its tip. No replay and no audit runs, the
//! sender of the invalid block is penalised, the job stays open, and an
//! honest peer keeps syncing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use gradchain_tests::{api_of, call, forged_block, raw_client};
use node::jobs::AuditConfig;
use node::net::wire::{BLOCKS_TOPIC, TXS_TOPIC};
use node::testkit::{init_test_logging, start_regtest, start_regtest_auditing, wait_until};
use protocol::api::BlockRef;
use protocol::api::ErrorCode;
use protocol::blob::BlobKind;
use protocol::params::faucet_key;
use protocol::segments::segments_root;
use protocol::{
    codec, Acceptance, Address, Amount, BlockHash, ChainParams, Digest, F32Bits, Height, JobId,
    JobResult, SegmentLeaf, SignedTx, TestMetric, Transaction, TxBody, TxKind,
};

use trainer::client::ClientError;

const WAIT: Duration = Duration::from_secs(120);

/// A result for `job` with made-up leaves, signed by `worker`; `break_sig`
/// changes the body after signing.
fn forged_result(
    worker: &SigningKey,
    job: JobId,
    n: u32,
    salt: u32,
    break_sig: bool,
) -> anyhow::Result<SignedTx> {
    let leaves: Vec<SegmentLeaf> = (0..=n)
        .map(|i| SegmentLeaf {
            state: Digest(protocol::sha256(
                &[salt.to_le_bytes(), i.to_le_bytes()].concat(),
            )),
            loss: F32Bits::from_f32(1.0),
        })
        .collect();
    let result = JobResult {
        weights: Digest([salt as u8; 32]),
        segments_root: segments_root(&leaves),
        train_loss: F32Bits::from_f32(0.1),
        metric: TestMetric::Accuracy {
            correct: 30,
            total: 30,
        },
    };
    let mut tx = TxBody {
        from: Address::ZERO,
        nonce: 0,
        fee: Amount(5_000),
        kind: TxKind::SubmitResult {
            job,
            result,
            leaves,
        },
    }
    .sign(worker, ChainParams::regtest().chain_id)?;
    if break_sig {
        tx.body.fee = Amount(5_001);
    }
    Ok(tx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_that_cost_nothing_get_no_training() -> anyhow::Result<()> {
    init_test_logging();
    let params = ChainParams::regtest();
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let auditor = SigningKey::from_bytes(&[0x61; 32]);
    let a = start_regtest_auditing(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(300))),
        AuditConfig {
            fraction: 1.0,
            key: Some(Arc::new(auditor)),
        },
    )
    .await?;
    let a_addr = a
        .p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))?;
    let b = start_regtest(dirs[1].path(), vec![a_addr.clone()], None).await?;

    // A job to aim the floods at.
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/iris.csv");
    let dataset = trainer::Dataset::from_csv_file(
        std::path::Path::new(path),
        trainer::TaskKind::Classification,
        &trainer::DatasetLimits::default(),
    )?;
    a.blobs().put(BlobKind::Dataset, &dataset.to_blob())?;
    let mut spec = trainer::TrainSettings {
        hidden: vec![8],
        epochs: 20,
        batch: 16,
        ..trainer::TrainSettings::default()
    }
    .job_spec(&dataset)?;
    spec.acceptance = Acceptance::MinAccuracy { ppm: 0 };
    spec.bond = params.job_limits.min_bond;
    spec.challenge_window = 8;
    let post = TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(2_000),
        kind: TxKind::PostJob {
            spec: spec.clone(),
            bounty: Amount(1_000),
            expires_at: Height(10_000),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    let job = JobId::from(post.id()?);
    let a_api = api_of(&a)?;
    call(&a_api, move |api| api.submit_tx(&post))
        .await?
        .map_err(|e| anyhow::anyhow!("job refused: {e}"))?;
    wait_until("the job on both nodes", WAIT, || {
        let (ca, cb) = (a.chain().clone(), b.chain().clone());
        async move {
            matches!(ca.job(job).await, Ok(Some(_))) && matches!(cb.job(job).await, Ok(Some(_)))
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let worker = SigningKey::from_bytes(&[0x62; 32]);
    // 200 results with bad signatures through the HTTP API: each refused.
    for salt in 0..200u32 {
        let tx = forged_result(&worker, job, spec.segments, salt, true)?;
        match call(&a_api, move |api| api.submit_tx(&tx)).await? {
            Err(ClientError::Api {
                status,
                code,
                message,
            }) => {
                assert_eq!((status, code), (400, ErrorCode::TxRejected));
                assert!(message.contains("signature"), "{message}");
            }
            other => anyhow::bail!("a forged result was admitted: {other:?}"),
        }
    }
    // And 200 through gossip.
    let spammer = raw_client(a_addr.clone())?;
    for salt in 200..400u32 {
        let tx = forged_result(&worker, job, spec.segments, salt, true)?;
        spammer.publish.send((TXS_TOPIC, codec::encode(&tx)?))?;
    }
    // A block of validly signed forged results on a parent nobody has.
    let orphan_sender = raw_client(a_addr.clone())?;
    let txs = (400..450u32)
        .map(|salt| {
            forged_result(
                &SigningKey::from_bytes(&[salt as u8; 32]),
                job,
                spec.segments,
                salt,
                false,
            )
            .map(Transaction::Signed)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let orphan = forged_block(BlockHash([0x5a; 32]), 1_767_225_700, 99, txs, true)?;
    orphan_sender
        .publish
        .send((BLOCKS_TOPIC, codec::encode(&orphan)?))?;
    // A block at minimum work on the tip whose results carry bad signatures.
    let tip = a.chain().height();
    let parent = a
        .chain()
        .block(BlockRef::Height(tip))
        .await?
        .ok_or_else(|| anyhow::anyhow!("no tip"))?
        .block;
    let bad_sender = raw_client(a_addr.clone())?;
    let txs = (450..460u32)
        .map(|salt| forged_result(&worker, job, spec.segments, salt, true).map(Transaction::Signed))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let bad = forged_block(parent.hash(), parent.header.time, tip.0 + 1, txs, true)?;
    bad_sender
        .publish
        .send((BLOCKS_TOPIC, codec::encode(&bad)?))?;

    for (what, peer, points) in [
        ("the tx spammer", spammer.peer_id, 25),
        ("the sender of the bad block", bad_sender.peer_id, 100),
    ] {
        let network = a.network().clone();
        wait_until(&format!("a penalty for {what}"), WAIT, || {
            let network = network.clone();
            async move {
                network
                    .penalty(peer)
                    .await
                    .map(|(score, _)| score >= points)
                    .unwrap_or(false)
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
    }
    // The honest peer keeps syncing.
    let target = a.chain().height().0 + 3;
    wait_until("the honest peer syncing", WAIT, || {
        let height = b.chain().height();
        async move { height.0 >= target }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(a.replay().replays(), 0, "a replay ran for free input");
    assert_eq!(a.audit_stats().audits.load(Ordering::Relaxed), 0);
    assert_eq!(a.audit_stats().segments_replayed.load(Ordering::Relaxed), 0);
    let record = a
        .chain()
        .job(job)
        .await?
        .ok_or_else(|| anyhow::anyhow!("job gone"))?;
    assert!(record.is_open(), "{:?}", record.status);
    assert!(
        a.chain().block(BlockRef::Hash(bad.hash())).await?.is_none(),
        "the invalid block was stored"
    );
    assert_eq!(b.network().penalty(a.peer_id()).await?.0, 0);

    for client in [spammer, orphan_sender, bad_sender] {
        client.task.abort();
    }
    b.stop().await;
    a.stop().await;
    Ok(())
}
