//! A job's life beyond the happy path, on real regtest nodes on loopback:
//! expiry refunds the poster exactly; a peer serving a dataset blob whose
//! bytes do not match its digest is penalised and the job stays out of the
//! mempool with a clear error; and a reorg that removes the blocks that
//! admitted and settled a result reopens the job and takes the bounty and
//! the bond's return back, after which the result is mined again, settles,
//! and is paid once.

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use libp2p::Multiaddr;
use node::testkit::{init_test_logging, start_regtest, wait_until};
use node::RunningNode;
use protocol::api::ErrorCode;
use protocol::blob::BlobKind;
use protocol::job::worker_seed;
use protocol::params::faucet_key;
use protocol::state::JobStatus;
use protocol::{
    Acceptance, Address, Amount, ChainParams, Height, JobId, JobSpec, SignedTx, TxBody, TxKind,
};
use trainer::client::{ClientError, NodeClient};
use trainer::{Dataset, DatasetLimits, TaskKind, TrainSettings};

mod support;
use support::{api_of, call};

const WAIT: Duration = Duration::from_secs(120);

fn iris() -> anyhow::Result<Dataset> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../datasets/iris.csv");
    Ok(Dataset::from_csv_file(
        Path::new(path),
        TaskKind::Classification,
        &DatasetLimits::default(),
    )?)
}

fn spec(dataset: &Dataset) -> anyhow::Result<JobSpec> {
    let mut spec = TrainSettings {
        hidden: vec![8],
        epochs: 5,
        batch: 16,
        ..TrainSettings::default()
    }
    .job_spec(dataset)?;
    spec.acceptance = Acceptance::MinAccuracy { ppm: 0 };
    // 35 steps: 16 segments of two or three steps.
    spec.segments = 16;
    spec.bond = ChainParams::regtest().job_limits.min_bond;
    spec.challenge_window = ChainParams::regtest().job_limits.min_challenge_window;
    Ok(spec)
}

/// Over the regtest minimum (1 a byte) for these jobs' posts.
const POST_FEE: u64 = 2_000;

/// Over the regtest minimum for these jobs' results.
const RESULT_FEE: u64 = 5_000;

fn post(spec: &JobSpec, bounty: u64, expires_at: u64) -> anyhow::Result<SignedTx> {
    let params = ChainParams::regtest();
    Ok(TxBody {
        from: params.faucet,
        nonce: 0,
        fee: Amount(POST_FEE),
        kind: TxKind::PostJob {
            spec: spec.clone(),
            bounty: Amount(bounty),
            expires_at: Height(expires_at),
        },
    }
    .sign(&faucet_key(), params.chain_id)?)
}

fn addr_of(node: &RunningNode) -> anyhow::Result<Multiaddr> {
    node.p2p_addr()
        .ok_or_else(|| anyhow::anyhow!("no listen address"))
}

async fn put_dataset(api: &NodeClient, dataset: &Dataset) -> anyhow::Result<()> {
    let blob = dataset.to_blob();
    let digest = call(api, move |api| api.put_blob(BlobKind::Dataset, &blob))
        .await?
        .map_err(|e| anyhow::anyhow!("dataset refused: {e}"))?;
    anyhow::ensure!(digest == dataset.digest(), "stored as {digest}");
    Ok(())
}

async fn submit(api: &NodeClient, tx: SignedTx) -> anyhow::Result<()> {
    call(api, move |api| api.submit_tx(&tx))
        .await?
        .map_err(|e| anyhow::anyhow!("refused: {e}"))?;
    Ok(())
}

async fn job_status(node: &RunningNode, job: JobId) -> Option<JobStatus> {
    node.chain().job(job).await.ok().flatten().map(|r| r.status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_job_refunds_the_poster_exactly() -> anyhow::Result<()> {
    init_test_logging();
    let params = ChainParams::regtest();
    let dir = tempfile::tempdir()?;
    let node = start_regtest(
        dir.path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(100))),
    )
    .await?;
    let api = api_of(&node)?;
    let dataset = iris()?;
    put_dataset(&api, &dataset).await?;
    let before = node.chain().balance(params.faucet).await?.account.balance;
    let expires_at = node.chain().tip().height.0 + 8;
    let tx = post(&spec(&dataset)?, 2_500, expires_at)?;
    let job = JobId::from(tx.id()?);
    submit(&api, tx).await?;
    wait_until("the job posted", WAIT, || {
        let chain = node.chain().clone();
        async move { matches!(chain.job(job).await, Ok(Some(_))) }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let escrowed = node.chain().balance(params.faucet).await?.account.balance;
    let charge = params.entry_charge.0;
    assert_eq!(escrowed, Amount(before.0 - 2_500 - POST_FEE - charge));
    wait_until("the job expired", WAIT, || {
        let chain = node.chain().clone();
        async move {
            matches!(chain.job(job).await,
                Ok(Some(r)) if matches!(r.status, JobStatus::Expired { .. }))
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    let after = node.chain().balance(params.faucet).await?.account.balance;
    assert_eq!(
        after,
        Amount(before.0 - POST_FEE - charge),
        "bounty back, fee and entry charge spent"
    );
    match job_status(&node, job).await {
        Some(JobStatus::Expired { height }) => assert_eq!(height, Height(expires_at)),
        other => anyhow::bail!("job is {other:?}"),
    }
    node.stop().await;
    Ok(())
}

/// Writes `bytes` under `digest` straight into a blob store file, as a
/// corrupted or malicious node would hold them.
fn plant_blob(data_dir: &Path, digest: [u8; 32], bytes: &[u8]) -> anyhow::Result<()> {
    const BLOBS: redb::TableDefinition<&[u8; 32], &[u8]> = redb::TableDefinition::new("blobs");
    std::fs::create_dir_all(data_dir)?;
    let db = redb::Database::create(data_dir.join(node::blobs::BLOB_FILE))?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(BLOBS)?;
        table.insert(&digest, bytes)?;
    }
    txn.commit()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_serving_wrong_dataset_bytes_is_penalised_and_the_job_stays_out(
) -> anyhow::Result<()> {
    init_test_logging();
    let dataset = iris()?;
    let mut wrong = dataset.to_blob();
    if let Some(byte) = wrong.last_mut() {
        *byte ^= 0xff;
    }
    let liar_dir = tempfile::tempdir()?;
    plant_blob(liar_dir.path(), dataset.digest().0, &wrong)?;
    let liar = start_regtest(liar_dir.path(), vec![], None).await?;
    let honest_dir = tempfile::tempdir()?;
    let honest = start_regtest(honest_dir.path(), vec![addr_of(&liar)?], None).await?;
    wait_until("connected", WAIT, || {
        let peers = honest.network().peer_count();
        async move { peers >= 1 }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    let tx = post(&spec(&dataset)?, 1_000, 100)?;
    let txid = tx.id()?;
    let message = match call(&api_of(&honest)?, move |api| api.submit_tx(&tx)).await? {
        Err(ClientError::Api {
            status,
            code,
            message,
        }) => {
            assert_eq!((status, code), (400, ErrorCode::TxRejected));
            message
        }
        other => anyhow::bail!("a job with an unverifiable dataset was admitted: {other:?}"),
    };
    assert!(
        message.contains("does not hold dataset")
            && message.contains(&dataset.digest().to_string()),
        "{message}"
    );
    assert!(!honest.chain().mempool_ids().await?.contains(&txid));
    assert!(!honest.blobs().has(&dataset.digest()));
    let (points, _) = honest.network().penalty(liar.peer_id()).await?;
    assert!(points > 0, "the liar was not penalised");

    honest.stop().await;
    liar.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reorg_removing_the_paying_block_reopens_the_job_and_pays_once() -> anyhow::Result<()> {
    init_test_logging();
    let params = ChainParams::regtest();
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    // Two sides that do not know each other: A mines fast, C slowly.
    let mut a = start_regtest(
        dirs[0].path(),
        vec![],
        Some((Address([0xa1; 32]), Duration::from_millis(100))),
    )
    .await?;
    let mut c = start_regtest(
        dirs[1].path(),
        vec![],
        Some((Address([0xc3; 32]), Duration::from_millis(400))),
    )
    .await?;
    let a_addr = addr_of(&a)?;
    let (a_api, c_api) = (api_of(&a)?, api_of(&c)?);
    let dataset = iris()?;
    let spec = spec(&dataset)?;
    // The same job is posted, and the worker funded for its bond, on both
    // sides.
    let worker = SigningKey::from_bytes(&[0x51; 32]);
    let worker_address = Address::from_verifying_key(&worker.verifying_key());
    const FUNDS: u64 = 100_000;
    let tx = post(&spec, 4_000, 1_000)?;
    let job = JobId::from(tx.id()?);
    let fund = TxBody {
        from: params.faucet,
        nonce: 1,
        fee: Amount(500),
        kind: TxKind::Transfer {
            to: worker_address,
            amount: Amount(FUNDS),
        },
    }
    .sign(&faucet_key(), params.chain_id)?;
    for api in [&a_api, &c_api] {
        put_dataset(api, &dataset).await?;
        submit(api, tx.clone()).await?;
        submit(api, fund.clone()).await?;
    }
    // The result is mined, and settles, on C's side only.
    let seed = worker_seed(&job, &worker_address, spec.base_seed);
    let outcome = trainer::train(&spec, &dataset, seed, &mut |_| {})?;
    let result_tx = TxBody {
        from: worker_address,
        nonce: 0,
        fee: Amount(RESULT_FEE),
        kind: TxKind::SubmitResult {
            job,
            result: outcome.result,
            leaves: outcome.leaves,
        },
    }
    .sign(&worker, params.chain_id)?;
    wait_until("the worker funded on C", WAIT, || {
        let chain = c.chain().clone();
        async move {
            matches!(chain.balance(worker_address).await, Ok(b) if b.account.balance.0 == FUNDS)
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    wait_until("the job open on C", WAIT, || {
        let chain = c.chain().clone();
        async move { matches!(chain.job(job).await, Ok(Some(r)) if r.is_open()) }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    submit(&c_api, result_tx.clone()).await?;
    wait_until("the bounty paid on C", WAIT, || {
        let chain = c.chain().clone();
        async move {
            matches!(chain.job(job).await,
                Ok(Some(r)) if matches!(r.status, JobStatus::Fulfilled { .. }))
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    assert_eq!(
        c.chain().balance(worker_address).await?.account.balance,
        Amount(FUNDS + 4_000 - RESULT_FEE),
        "bounty paid and bond returned"
    );
    wait_until("A well ahead of C", WAIT, || {
        let (ha, hc) = (a.chain().height(), c.chain().height());
        async move { ha.0 >= hc.0 + 5 }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    a.stop_mining().await;
    c.stop_mining().await;
    let winner = a.chain().tip();
    assert!(matches!(job_status(&a, job).await, Some(JobStatus::Open)));
    wait_until("the worker funded on A", WAIT, || {
        let chain = a.chain().clone();
        async move {
            matches!(chain.balance(worker_address).await, Ok(b) if b.account.balance.0 == FUNDS)
        }
    })
    .await
    .map_err(anyhow::Error::msg)?;

    // Heal: C learns A's heavier chain and reorgs the paying block away.
    c.network().connect(a_addr.clone());
    wait_until("C on A's tip", WAIT, || {
        let tip = c.chain().tip();
        async move { tip.tip == winner.tip }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    assert!(
        matches!(job_status(&c, job).await, Some(JobStatus::Open)),
        "the job should be open again after the reorg"
    );
    assert_eq!(
        c.chain().balance(worker_address).await?.account,
        protocol::Account {
            balance: Amount(FUNDS),
            nonce: 0
        },
        "the bounty and the bond's round trip should be taken back"
    );
    assert!(c.chain().mempool_ids().await?.contains(&result_tx.id()?));

    // A new miner joins; the result is submitted again and paid once.
    let m = start_regtest(
        dirs[2].path(),
        vec![a_addr.clone()],
        Some((Address([0xd4; 32]), Duration::from_millis(100))),
    )
    .await?;
    wait_until("M synced to A", WAIT, || {
        let (hm, ha) = (m.chain().height(), a.chain().height());
        let peers = m.network().peer_count();
        async move { peers >= 1 && hm.0 >= ha.0 }
    })
    .await
    .map_err(anyhow::Error::msg)?;
    submit(&a_api, result_tx.clone()).await?;
    for node in [&a, &c, &m] {
        wait_until("the bounty paid again", WAIT, || {
            let chain = node.chain().clone();
            async move {
                matches!(chain.job(job).await,
                    Ok(Some(r)) if matches!(r.status, JobStatus::Fulfilled { .. }))
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        assert_eq!(
            node.chain().balance(worker_address).await?.account.balance,
            Amount(FUNDS + 4_000 - RESULT_FEE),
            "paid exactly once"
        );
    }
    m.stop().await;
    c.stop().await;
    a.stop().await;
    Ok(())
}
