//! One rejection test per consensus rule, each asserting the specific error
//! variant, and the optimistic job contract end to end: a result is
//! admitted on cheap checks with a bond, waits out its challenge window and
//! is paid bounty plus bond; a fraud proof either slashes the worker and
//! reopens the job or burns the challenger's bond. Balances, the burn
//! address included, are asserted exactly, and so is the guarantee that no
//! replay runs before every cheap check has passed.
#![allow(
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use ed25519_dalek::SigningKey;
use protocol::job::{AcceptanceError, JobSpecError};
use protocol::segments::{segments_root, MAX_PATH_LEN, MAX_SEGMENTS};
use protocol::state::Journal;
use protocol::tx::SignatureError;
use protocol::validation::{
    apply_transaction, check_header, check_tx_stateless, BlockError, HeaderError, JobError, TxError,
};
use protocol::{
    Amount, BlockHash, ChainParams, Challenge, ChallengeOutcome, DeferReplays, Digest, F32Bits,
    FraudClaim, Height, JobId, JobStatus, MerkleRoot, OpenedLeaf, SegmentLeaf, SegmentVerifier,
    StateRoot, TestMetric, Transaction, VerifyError, BURN_ADDRESS,
};

fn tx_error(err: BlockError) -> TxError {
    match err {
        BlockError::Tx { source, .. } => *source,
        other => panic!("expected a transaction error, got {other:?}"),
    }
}

fn job_error(err: BlockError) -> JobError {
    match tx_error(err) {
        TxError::Job(job) => job,
        other => panic!("expected a job error, got {other:?}"),
    }
}

#[test]
fn header_with_hash_above_target_is_rejected() {
    let mut chain = TestChain::new();
    let mut block = chain.template(vec![]).unwrap();
    let target = block.header.bits.to_target().unwrap();
    let mut hasher = block.header.hasher();
    block.header.nonce = (0..)
        .find(|n| !target.is_met_by(&BlockHash(hasher.hash_with_nonce(*n))))
        .unwrap();
    let err = chain.connect(block).unwrap_err();
    assert!(
        matches!(err, BlockError::Header(HeaderError::BadProofOfWork { .. })),
        "{err}"
    );
}

#[test]
fn header_with_wrong_target_bits_is_rejected() {
    let mut chain = TestChain::new();
    let mut block = chain.template(vec![]).unwrap();
    block.header.bits = protocol::CompactTarget(0x1f7f_ffff);
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert!(
        matches!(err, BlockError::Header(HeaderError::WrongTargetBits { expected, got })
            if expected == chain.params.pow_limit && got.0 == 0x1f7f_ffff),
        "{err}"
    );
}

#[test]
fn header_target_easier_than_the_limit_is_rejected() {
    let chain = TestChain::new();
    let mut header = chain.tip().header;
    header.bits = protocol::CompactTarget(0x2100_ffff);
    let err = protocol::validation::check_proof_of_work(&header.seal(), &chain.params).unwrap_err();
    assert!(matches!(err, HeaderError::TargetAboveLimit { .. }), "{err}");
}

#[test]
fn time_at_median_time_past_is_rejected() {
    let mut chain = TestChain::new();
    for _ in 0..11 {
        chain.mine(vec![]).unwrap();
    }
    let mtp = chain.context(u32::MAX).median_time_past;
    let mut block = chain.template(vec![]).unwrap();
    block.header.time = mtp;
    TestChain::solve(&mut block);
    let err = check_header(
        &block.sealed_header(),
        &chain.context(mtp + 100),
        &chain.params,
    )
    .unwrap_err();
    assert_eq!(
        err,
        HeaderError::TimeTooOld {
            time: mtp,
            median_time_past: mtp
        }
    );
    // One second later is fine.
    block.header.time = mtp + 1;
    TestChain::solve(&mut block);
    check_header(
        &block.sealed_header(),
        &chain.context(mtp + 100),
        &chain.params,
    )
    .unwrap();
}

#[test]
fn time_too_far_in_the_future_is_rejected() {
    let mut chain = TestChain::new();
    let mut block = chain.template(vec![]).unwrap();
    let now = block.header.time;
    block.header.time = now + chain.params.max_future_drift + 1;
    TestChain::solve(&mut block);
    let err = check_header(&block.sealed_header(), &chain.context(now), &chain.params).unwrap_err();
    assert!(matches!(err, HeaderError::TimeTooNew { .. }), "{err}");
    block.header.time = now + chain.params.max_future_drift;
    TestChain::solve(&mut block);
    check_header(&block.sealed_header(), &chain.context(now), &chain.params).unwrap();
}

#[test]
fn bad_merkle_root_is_rejected() {
    let mut chain = TestChain::new();
    let mut block = chain
        .template(vec![transfer(
            &faucet(),
            0,
            addr(&key(1)),
            100,
            TRANSFER_FEE,
        )])
        .unwrap();
    block.header.merkle_root = MerkleRoot([3; 32]);
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert!(
        matches!(err, BlockError::BadMerkleRoot { got, .. } if got == MerkleRoot([3; 32])),
        "{err}"
    );
}

#[test]
fn bad_state_root_is_rejected_and_state_is_unchanged() {
    let mut chain = TestChain::new();
    let before = chain.state.clone();
    let mut block = chain
        .template(vec![transfer(
            &faucet(),
            0,
            addr(&key(1)),
            100,
            TRANSFER_FEE,
        )])
        .unwrap();
    block.header.state_root = StateRoot([9; 32]);
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert!(
        matches!(err, BlockError::BadStateRoot { got, .. } if got == StateRoot([9; 32])),
        "{err}"
    );
    assert_eq!(chain.state, before);
}

#[test]
fn bad_signature_is_rejected() {
    let mut chain = TestChain::new();
    let mut tx = transfer(&faucet(), 0, addr(&key(1)), 100, TRANSFER_FEE);
    tx.signature.0[5] ^= 1;
    let err = chain.template(vec![tx]).unwrap_err();
    assert!(matches!(
        tx_error(err),
        TxError::Signature(SignatureError::BadSignature(_))
    ));
}

#[test]
fn signature_from_another_chain_is_rejected() {
    let mut chain = TestChain::new();
    let tx = protocol::TxBody {
        from: protocol::Address::ZERO,
        nonce: 0,
        fee: Amount(TRANSFER_FEE),
        kind: protocol::TxKind::Transfer {
            to: addr(&key(1)),
            amount: Amount(100),
        },
    }
    .sign(&faucet(), ChainParams::devnet().chain_id)
    .unwrap();
    let err = chain.template(vec![tx]).unwrap_err();
    assert!(matches!(
        tx_error(err),
        TxError::Signature(SignatureError::BadSignature(_))
    ));
}

#[test]
fn invalid_public_key_is_rejected() {
    let mut chain = TestChain::new();
    let mut tx = transfer(&faucet(), 0, addr(&key(1)), 100, TRANSFER_FEE);
    // y = 2 is not on the curve.
    let mut bad = [0u8; 32];
    bad[0] = 2;
    tx.body.from = protocol::Address(bad);
    let err = chain.template(vec![tx]).unwrap_err();
    assert!(matches!(
        tx_error(err),
        TxError::Signature(SignatureError::BadPublicKey(_))
    ));
}

#[test]
fn replayed_nonce_is_rejected() {
    let mut chain = TestChain::new();
    let tx = transfer(&faucet(), 0, addr(&key(1)), 100, TRANSFER_FEE);
    chain.mine(vec![tx.clone()]).unwrap();
    let err = chain.template(vec![tx]).unwrap_err();
    assert!(matches!(
        tx_error(err),
        TxError::NonceMismatch {
            expected: 1,
            got: 0,
            ..
        }
    ));
}

#[test]
fn insufficient_balance_is_rejected() {
    let mut chain = TestChain::new();
    chain
        .mine(vec![transfer(
            &faucet(),
            0,
            addr(&key(1)),
            100,
            TRANSFER_FEE,
        )])
        .unwrap();
    let err = chain
        .template(vec![transfer(&key(1), 0, addr(&key(2)), 100, TRANSFER_FEE)])
        .unwrap_err();
    // Amount, fee and the charge for creating key 2's account.
    let needed = 100 + TRANSFER_FEE + chain.params.entry_charge.0;
    assert!(matches!(
        tx_error(err),
        TxError::InsufficientBalance {
            needed: Amount(n),
            available: Amount(100),
            ..
        } if n == needed
    ));
}

#[test]
fn double_spend_inside_one_block_is_rejected() {
    let mut chain = TestChain::new();
    chain
        .mine(vec![transfer(
            &faucet(),
            0,
            addr(&key(1)),
            1_000_000,
            TRANSFER_FEE,
        )])
        .unwrap();
    // The same transaction twice.
    let spend = transfer(&key(1), 0, addr(&key(2)), 600_000, TRANSFER_FEE);
    let mut block = chain.template(vec![spend.clone()]).unwrap();
    block.txs.push(Transaction::Signed(spend.clone()));
    let ids: Vec<_> = block.txs.iter().map(|t| t.id().unwrap()).collect();
    block.header.merkle_root = protocol::merkle_root(&ids);
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert_eq!(err, BlockError::DuplicateTx(spend.id().unwrap()));
    // Two different spends of the same coins, one nonce.
    let other = transfer(&key(1), 0, addr(&key(3)), 600_000, TRANSFER_FEE);
    let err = chain.template(vec![spend.clone(), other]).unwrap_err();
    assert!(matches!(&err, BlockError::Tx { index: 2, .. }), "{err}");
    assert!(matches!(
        tx_error(err),
        TxError::NonceMismatch {
            expected: 1,
            got: 0,
            ..
        }
    ));
    // Two spends in nonce order that together exceed the balance (each
    // creating an account: 300,200 needed after the first, 299,800 left).
    let second = transfer(&key(1), 1, addr(&key(3)), 200_000, TRANSFER_FEE);
    let err = chain.template(vec![spend, second]).unwrap_err();
    assert!(matches!(tx_error(err), TxError::InsufficientBalance { .. }));
}

#[test]
fn coinbase_above_subsidy_plus_fees_is_rejected() {
    let mut chain = TestChain::new();
    let mut block = chain
        .template(vec![transfer(
            &faucet(),
            0,
            addr(&key(1)),
            100,
            TRANSFER_FEE,
        )])
        .unwrap();
    let max = chain.params.subsidy(Height(1)).0 + TRANSFER_FEE;
    if let Transaction::Coinbase(cb) = &mut block.txs[0] {
        cb.amount = Amount(max + 1);
    }
    let ids: Vec<_> = block.txs.iter().map(|t| t.id().unwrap()).collect();
    block.header.merkle_root = protocol::merkle_root(&ids);
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert_eq!(
        err,
        BlockError::CoinbaseTooLarge {
            amount: Amount(max + 1),
            max: Amount(max)
        }
    );
}

#[test]
fn coinbase_must_come_first_and_only_once() {
    let mut chain = TestChain::new();
    let mut block = chain.template(vec![]).unwrap();
    let cb = block.txs[0].clone();
    block.txs.push(cb);
    let err = protocol::validation::check_block_body(&block, Height(1), &chain.params).unwrap_err();
    assert_eq!(err, BlockError::ExtraCoinbase { index: 1 });
    block.txs.clear();
    let err = protocol::validation::check_block_body(&block, Height(1), &chain.params).unwrap_err();
    assert_eq!(err, BlockError::NoCoinbase);
    let block = chain.template(vec![]).unwrap();
    let err = protocol::validation::check_block_body(&block, Height(5), &chain.params).unwrap_err();
    assert!(matches!(err, BlockError::CoinbaseHeight { .. }));
}

#[test]
fn bounty_the_poster_cannot_pay_is_rejected() {
    let mut chain = TestChain::new();
    chain
        .mine(vec![transfer(
            &faucet(),
            0,
            addr(&key(1)),
            500_000,
            TRANSFER_FEE,
        )])
        .unwrap();
    // One unit more than the balance once the fee and the job's entry
    // charge are counted.
    let fee = post_job(&key(1), 0, 1, 10).body.fee;
    let charge = chain.params.entry_charge;
    let bounty = 500_000 - fee.0 - charge.0 + 1;
    let err = chain
        .template(vec![post_job(&key(1), 0, bounty, 10)])
        .unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::BountyUnaffordable {
            bounty: Amount(bounty),
            fee,
            charge,
            balance: Amount(500_000)
        }
    );
    chain
        .mine(vec![post_job(&key(1), 0, bounty - 1, 10)])
        .unwrap();
    assert_eq!(chain.state.account(&addr(&key(1))).balance, Amount::ZERO);
}

#[test]
fn fee_below_minimum_and_zero_transfer_are_rejected() {
    let mut chain = TestChain::new();
    let err = chain
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 100, 0)])
        .unwrap_err();
    assert!(matches!(tx_error(err), TxError::FeeTooLow { .. }));
    let err = chain
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 0, TRANSFER_FEE)])
        .unwrap_err();
    assert_eq!(tx_error(err), TxError::ZeroAmount);
}

// The job contract.

const BOUNTY: u64 = 1000;
const EXPIRES_AT: u64 = 10;
const WORKER_FUNDS: u64 = 50_000;
const CHALLENGER_FUNDS: u64 = 1_000_000;
/// The fee of every `submit`, `submit_leaves` and `fraud_proof`.
const TX_FEE: u64 = JOB_TX_FEE;

fn worker() -> SigningKey {
    key(50)
}

fn second_worker() -> SigningKey {
    key(51)
}

fn challenger() -> SigningKey {
    key(60)
}

/// The worker bond of [`spec`].
fn bond() -> u64 {
    spec().bond.0
}

fn proof_bond() -> u64 {
    ChainParams::regtest().fraud_proof_bond.0
}

fn window() -> u64 {
    u64::from(spec().challenge_window)
}

fn balance(chain: &TestChain, who: &SigningKey) -> u64 {
    chain.state.account(&addr(who)).balance.0
}

/// What the job contract burned (slashed bonds, refuted challengers'
/// bonds): the burn address's balance less the entry charges of the
/// accounts and jobs created so far, which `state_growth.rs` pins on its
/// own. Every account but the faucet's, the burn address's and the miner's
/// (credited by coinbases, which pay no charge) was created by a transfer.
fn burned(chain: &TestChain) -> u64 {
    let free = [chain.params.faucet, BURN_ADDRESS, chain.miner];
    let accounts = chain
        .state
        .accounts()
        .filter(|(address, _)| !free.contains(address))
        .count();
    let jobs = chain
        .blocks
        .iter()
        .flat_map(|block| &block.txs)
        .filter(|tx| {
            matches!(tx, Transaction::Signed(signed)
                if matches!(signed.body.kind, protocol::TxKind::PostJob { .. }))
        })
        .count();
    chain.state.account(&BURN_ADDRESS).balance.0
        - (accounts + jobs) as u64 * chain.params.entry_charge.0
}

fn status(chain: &TestChain, job: &JobId) -> JobStatus {
    chain.state.job(job).unwrap().status
}

fn outcomes(chain: &TestChain, job: &JobId) -> Vec<(u32, ChallengeOutcome)> {
    chain
        .state
        .job(job)
        .unwrap()
        .challenges
        .iter()
        .map(|c| (c.segment, c.outcome))
        .collect()
}

fn faucet_nonce(chain: &TestChain) -> u64 {
    chain.state.account(&addr(&faucet())).nonce
}

fn mine_to(chain: &mut TestChain, height: u64) {
    while chain.height() < Height(height) {
        chain.mine(vec![]).unwrap();
    }
}

fn assert_coins_conserved(chain: &TestChain) {
    assert_eq!(chain.state.total_supply(), Some(minted(chain)));
}

fn final_claim(leaves: &[SegmentLeaf]) -> FraudClaim {
    FraudClaim::Final {
        last: opened(leaves, spec().segments),
    }
}

/// Block 1: the faucet posts one job (bounty 1000, expiring at height 10)
/// and funds two workers and a challenger. Returns the chain and the job.
fn chain_with_job() -> (TestChain, JobId) {
    let mut chain = TestChain::new();
    let post = post_job(&faucet(), 0, BOUNTY, EXPIRES_AT);
    let job = JobId::from(post.id().unwrap());
    chain
        .mine(vec![
            post,
            transfer(&faucet(), 1, addr(&worker()), WORKER_FUNDS, TRANSFER_FEE),
            transfer(
                &faucet(),
                2,
                addr(&second_worker()),
                WORKER_FUNDS,
                TRANSFER_FEE,
            ),
            transfer(
                &faucet(),
                3,
                addr(&challenger()),
                CHALLENGER_FUNDS,
                TRANSFER_FEE,
            ),
        ])
        .unwrap();
    (chain, job)
}

/// [`chain_with_job`] plus, in block 2, `worker()`'s result over `leaves`
/// (the result that follows from them). Settles at height 6.
fn chain_with_pending(leaves: &[SegmentLeaf]) -> (TestChain, JobId) {
    let (mut chain, job) = chain_with_job();
    let result = result_for(&spec(), leaves);
    chain
        .mine(vec![submit_leaves(
            &worker(),
            0,
            job,
            result,
            leaves.to_vec(),
        )])
        .unwrap();
    (chain, job)
}

fn honest(job: &JobId) -> Vec<SegmentLeaf> {
    honest_leaves(job, &addr(&worker()), &spec())
}

/// The job id [`chain_with_job`] posts, for building leaves before the chain.
fn the_job() -> JobId {
    JobId::from(post_job(&faucet(), 0, BOUNTY, EXPIRES_AT).id().unwrap())
}

#[test]
fn a_result_waits_out_its_window_and_settles_with_bounty_and_bond() {
    let (mut chain, job) = chain_with_job();
    let poster = balance(&chain, &faucet());
    assert_eq!(status(&chain, &job), JobStatus::Open);
    assert_eq!(chain.state.job(&job).unwrap().escrowed(), Some(BOUNTY));
    let tx = submit(&worker(), 0, job);
    let txid = tx.id().unwrap();
    chain.mine(vec![tx]).unwrap();
    let escrowed = WORKER_FUNDS - bond() - TX_FEE;
    assert_eq!(
        balance(&chain, &worker()),
        escrowed,
        "bond and fee escrowed"
    );
    let result = honest_result(&job, &addr(&worker()), &spec());
    let settles_at = Height(2 + window());
    assert_eq!(
        status(&chain, &job),
        JobStatus::Pending {
            worker: addr(&worker()),
            result,
            tx: txid,
            height: Height(2),
            settles_at,
            bond: spec().bond,
        }
    );
    assert_eq!(
        chain.state.job(&job).unwrap().escrowed(),
        Some(BOUNTY + bond())
    );
    assert_coins_conserved(&chain);
    // Not one block early.
    mine_to(&mut chain, settles_at.0 - 1);
    assert!(chain.state.job(&job).unwrap().is_pending());
    assert_eq!(balance(&chain, &worker()), escrowed);
    chain.mine(vec![]).unwrap();
    assert_eq!(chain.height(), settles_at);
    assert_eq!(
        balance(&chain, &worker()),
        escrowed + BOUNTY + bond(),
        "paid exactly bounty plus bond"
    );
    assert_eq!(
        status(&chain, &job),
        JobStatus::Fulfilled {
            worker: addr(&worker()),
            result,
            tx: txid,
            height: settles_at,
            submitted_at: Height(2),
            bond: spec().bond,
        }
    );
    assert_eq!(chain.state.job(&job).unwrap().escrowed(), Some(0));
    assert_eq!(balance(&chain, &faucet()), poster);
    assert_eq!(burned(&chain), 0);
    assert_coins_conserved(&chain);
}

#[test]
fn unchallenged_results_are_admitted_and_settled_without_a_replay() {
    // Admission never replays, not even for a made-up result: only a fraud
    // proof does. Unchallenged, the lazy worker is paid.
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 2);
    let (mut chain, job) = chain_with_pending(&lazy);
    assert!(chain.state.job(&job).unwrap().is_pending());
    mine_to(&mut chain, 2 + window());
    assert!(matches!(
        status(&chain, &job),
        JobStatus::Fulfilled { worker: paid, .. } if paid == addr(&worker())
    ));
    assert_eq!(balance(&chain, &worker()), WORKER_FUNDS - TX_FEE + BOUNTY);
    assert_eq!(chain.verifier.replays.get(), 0);
}

#[test]
fn result_whose_worker_cannot_escrow_the_bond_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let broke = key(70);
    let unaffordable = |chain: &mut TestChain, balance: u64| {
        let err = chain.template(vec![submit(&broke, 0, job)]).unwrap_err();
        assert_eq!(
            job_error(err),
            JobError::BondUnaffordable {
                address: addr(&broke),
                bond: spec().bond,
                fee: Amount(TX_FEE),
                balance: Amount(balance),
            }
        );
    };
    // A worker with nothing, then with one unit short of bond plus fee.
    unaffordable(&mut chain, 0);
    let short = bond() + TX_FEE - 1;
    let nonce = faucet_nonce(&chain);
    chain
        .mine(vec![transfer(
            &faucet(),
            nonce,
            addr(&broke),
            short,
            TRANSFER_FEE,
        )])
        .unwrap();
    unaffordable(&mut chain, short);
    let nonce = faucet_nonce(&chain);
    chain
        .mine(vec![transfer(
            &faucet(),
            nonce,
            addr(&broke),
            1,
            TRANSFER_FEE,
        )])
        .unwrap();
    chain.mine(vec![submit(&broke, 0, job)]).unwrap();
    assert_eq!(balance(&chain, &broke), 0);
    assert!(chain.state.job(&job).unwrap().is_pending());
}

#[test]
fn result_for_an_unknown_job_is_rejected() {
    let (mut chain, _) = chain_with_job();
    let missing = JobId([0xee; 32]);
    let err = chain
        .template(vec![submit(&worker(), 0, missing)])
        .unwrap_err();
    assert_eq!(job_error(err), JobError::UnknownJob(missing));
}

#[test]
fn result_for_an_expired_job_is_rejected_and_the_poster_refunded() {
    let (mut chain, job) = chain_with_job();
    let poster_before = balance(&chain, &faucet());
    mine_to(&mut chain, EXPIRES_AT - 1);
    assert_eq!(status(&chain, &job), JobStatus::Open);
    chain.mine(vec![]).unwrap();
    assert_eq!(
        status(&chain, &job),
        JobStatus::Expired {
            height: Height(EXPIRES_AT)
        }
    );
    assert_eq!(
        balance(&chain, &faucet()),
        poster_before + BOUNTY,
        "refunded exactly the bounty"
    );
    let err = chain.template(vec![submit(&worker(), 0, job)]).unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::Expired {
            job,
            expires_at: Height(EXPIRES_AT)
        }
    );
}

#[test]
fn result_below_the_threshold_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let leaves = honest(&job);
    let mut result = result_for(&spec(), &leaves);
    result.metric = TestMetric::Accuracy {
        correct: 20,
        total: 30,
    };
    let err = chain
        .template(vec![submit_leaves(&worker(), 0, job, result, leaves)])
        .unwrap_err();
    assert!(matches!(
        job_error(err),
        JobError::NotAccepted {
            reason: AcceptanceError::BelowThreshold { .. },
            ..
        }
    ));
}

#[test]
fn second_result_while_one_is_pending_or_paid_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let settles_at = Height(2 + window());
    let first = submit(&worker(), 0, job);
    let late = submit(&second_worker(), 0, job);
    // In the same block: the second loses.
    let err = chain
        .template(vec![first.clone(), late.clone()])
        .unwrap_err();
    assert!(matches!(&err, BlockError::Tx { index: 2, .. }), "{err}");
    assert_eq!(job_error(err), JobError::AlreadyPending { job, settles_at });
    // In a later block.
    chain.mine(vec![first]).unwrap();
    let err = chain.template(vec![late.clone()]).unwrap_err();
    assert_eq!(job_error(err), JobError::AlreadyPending { job, settles_at });
    // Once paid.
    mine_to(&mut chain, settles_at.0);
    let err = chain.template(vec![late]).unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::AlreadyFulfilled {
            job,
            height: settles_at
        }
    );
}

#[test]
fn result_with_the_wrong_number_of_leaves_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let leaves = honest(&job);
    let mut extra = leaves.clone();
    extra.push(leaves[3]);
    for wrong in [extra, leaves[..leaves.len() - 1].to_vec()] {
        let got = wrong.len();
        let result = result_for(&spec(), &wrong);
        let err = chain
            .template(vec![submit_leaves(&worker(), 0, job, result, wrong)])
            .unwrap_err();
        assert_eq!(
            job_error(err),
            JobError::LeafCount {
                got,
                expected: spec().segments as usize + 1
            }
        );
    }
    // More leaves than any job may have: refused by count, before hashing.
    let most = MAX_SEGMENTS as usize + 1;
    let huge = vec![leaves[0]; most + 1];
    // Paying for its size, so that the count is what refuses it.
    let tx = paying(
        submit_leaves(&worker(), 0, job, result_for(&spec(), &leaves), huge),
        &worker(),
        100_000,
    );
    assert_eq!(
        check_tx_stateless(&tx, &chain.params).unwrap_err(),
        TxError::Job(JobError::LeafCount {
            got: most + 1,
            expected: most
        })
    );
    let err = chain.template(vec![tx]).unwrap_err();
    assert!(matches!(job_error(err), JobError::LeafCount { .. }));
}

#[test]
fn result_whose_leaves_do_not_hash_to_its_root_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let leaves = honest(&job);
    let mut result = result_for(&spec(), &leaves);
    result.segments_root = Digest([0xab; 32]);
    let err = chain
        .template(vec![submit_leaves(
            &worker(),
            0,
            job,
            result,
            leaves.clone(),
        )])
        .unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::SegmentsRoot {
            computed: segments_root(&leaves),
            claimed: Digest([0xab; 32]),
        }
    );
    // One leaf's loss changed under the honest root.
    let mut changed = leaves.clone();
    changed[3].loss = F32Bits::from_f32(9.0);
    let result = result_for(&spec(), &leaves);
    let err = chain
        .template(vec![submit_leaves(
            &worker(),
            0,
            job,
            result,
            changed.clone(),
        )])
        .unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::SegmentsRoot {
            computed: segments_root(&changed),
            claimed: segments_root(&leaves),
        }
    );
}

#[test]
fn copied_result_is_admitted_then_caught_by_an_initial_state_proof() {
    let (mut chain, job) = chain_with_job();
    // The honest worker's leaves are public once its transaction is; the
    // copier sends them, and the result, under its own name first.
    let copier = second_worker();
    let leaves = honest(&job);
    let copy = submit_leaves(
        &copier,
        0,
        job,
        result_for(&spec(), &leaves),
        leaves.clone(),
    );
    chain.mine(vec![copy]).unwrap();
    assert!(matches!(
        status(&chain, &job),
        JobStatus::Pending { worker: w, .. } if w == addr(&copier)
    ));
    let proof = fraud_proof(
        &challenger(),
        0,
        job,
        FraudClaim::InitialState {
            first: opened(&leaves, 0),
        },
    );
    let proof_id = proof.id().unwrap();
    chain.mine(vec![proof]).unwrap();
    let reward = bond() / 2;
    assert_eq!(balance(&chain, &copier), WORKER_FUNDS - bond() - TX_FEE);
    assert_eq!(
        balance(&chain, &challenger()),
        CHALLENGER_FUNDS - TX_FEE + reward,
        "own bond back plus half the worker's"
    );
    assert_eq!(burned(&chain), bond() - reward);
    assert_eq!(status(&chain, &job), JobStatus::Open);
    assert_eq!(chain.state.job(&job).unwrap().escrowed(), Some(BOUNTY));
    assert_eq!(
        chain.state.job(&job).unwrap().challenges,
        vec![Challenge {
            challenger: addr(&challenger()),
            worker: addr(&copier),
            segment: 0,
            tx: proof_id,
            height: Height(3),
            outcome: ChallengeOutcome::Proven,
        }]
    );
    assert_coins_conserved(&chain);
}

#[test]
fn copied_result_is_caught_by_a_proof_of_its_first_segment() {
    // Every segment of a copy replays as its leaves say; segment 1 is still
    // wrong, because it starts from someone else's initial state.
    let copier = second_worker();
    let leaves = honest(&the_job());
    let (mut chain, job) = chain_with_job();
    let copy = submit_leaves(
        &copier,
        0,
        job,
        result_for(&spec(), &leaves),
        leaves.clone(),
    );
    chain.mine(vec![copy]).unwrap();
    chain
        .mine(vec![
            fraud_proof(&challenger(), 0, job, segment_claim(&leaves, 2)),
            fraud_proof(&challenger(), 1, job, segment_claim(&leaves, 1)),
        ])
        .unwrap();
    assert_eq!(
        outcomes(&chain, &job),
        vec![
            (2, ChallengeOutcome::Refuted),
            (1, ChallengeOutcome::Proven)
        ]
    );
    assert_eq!(status(&chain, &job), JobStatus::Open);
    assert_eq!(burned(&chain), proof_bond() + bond() - bond() / 2);
}

#[test]
fn inflated_metric_is_admitted_then_caught_by_a_final_proof() {
    let job = the_job();
    let leaves = honest(&job);
    let (mut chain, job) = chain_with_job();
    let mut result = result_for(&spec(), &leaves);
    result.metric = TestMetric::Accuracy {
        correct: 30,
        total: 30,
    };
    chain
        .mine(vec![submit_leaves(
            &worker(),
            0,
            job,
            result,
            leaves.clone(),
        )])
        .unwrap();
    // Every segment is honest: a proof against one is refuted.
    let last = spec().segments;
    chain
        .mine(vec![fraud_proof(
            &challenger(),
            0,
            job,
            segment_claim(&leaves, last),
        )])
        .unwrap();
    assert!(chain.state.job(&job).unwrap().is_pending());
    assert_eq!(burned(&chain), proof_bond());
    chain
        .mine(vec![fraud_proof(
            &challenger(),
            1,
            job,
            final_claim(&leaves),
        )])
        .unwrap();
    assert_eq!(status(&chain, &job), JobStatus::Open);
    assert_eq!(
        outcomes(&chain, &job),
        vec![
            (last, ChallengeOutcome::Refuted),
            (last + 1, ChallengeOutcome::Proven)
        ]
    );
    assert_eq!(burned(&chain), proof_bond() + bond() - bond() / 2);
    assert_eq!(
        balance(&chain, &challenger()),
        CHALLENGER_FUNDS - 2 * TX_FEE - proof_bond() + bond() / 2
    );
    assert_eq!(balance(&chain, &worker()), WORKER_FUNDS - bond() - TX_FEE);
    assert_coins_conserved(&chain);
}

#[test]
fn wrong_weights_or_training_loss_are_caught_by_a_final_proof() {
    let job = the_job();
    let leaves = honest(&job);
    let honest_result = result_for(&spec(), &leaves);
    let mut weights = honest_result;
    weights.weights.0[0] ^= 0x80;
    let mut loss = honest_result;
    loss.train_loss = F32Bits::from_f32(0.125);
    for wrong in [weights, loss] {
        let (mut chain, job) = chain_with_job();
        chain
            .mine(vec![submit_leaves(
                &worker(),
                0,
                job,
                wrong,
                leaves.clone(),
            )])
            .unwrap();
        chain
            .mine(vec![fraud_proof(
                &challenger(),
                0,
                job,
                final_claim(&leaves),
            )])
            .unwrap();
        assert_eq!(status(&chain, &job), JobStatus::Open);
        assert_eq!(
            outcomes(&chain, &job),
            vec![(spec().segments + 1, ChallengeOutcome::Proven)]
        );
    }
}

#[test]
fn lazy_worker_is_caught_at_the_first_made_up_segment() {
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 3);
    let (mut chain, job) = chain_with_pending(&lazy);
    // The last honest segment is refuted, and so is the final check: the
    // result does follow from the made-up last state. Segment 4, the first
    // made-up one, is proven.
    let c = challenger();
    let proofs = vec![
        fraud_proof(&c, 0, job, segment_claim(&lazy, 3)),
        fraud_proof(&c, 1, job, final_claim(&lazy)),
        fraud_proof(&c, 2, job, segment_claim(&lazy, 4)),
    ];
    // After the proven proof the job is open again: nothing to challenge.
    let mut too_many = proofs.clone();
    too_many.push(fraud_proof(&c, 3, job, segment_claim(&lazy, 5)));
    let err = chain.template(too_many).unwrap_err();
    assert!(matches!(&err, BlockError::Tx { index: 4, .. }), "{err}");
    assert_eq!(job_error(err), JobError::NotPending { job });
    chain.mine(proofs).unwrap();
    assert_eq!(
        outcomes(&chain, &job),
        vec![
            (3, ChallengeOutcome::Refuted),
            (spec().segments + 1, ChallengeOutcome::Refuted),
            (4, ChallengeOutcome::Proven),
        ]
    );
    assert_eq!(status(&chain, &job), JobStatus::Open);
    assert_eq!(burned(&chain), 2 * proof_bond() + bond() - bond() / 2);
    assert_eq!(
        balance(&chain, &c),
        CHALLENGER_FUNDS - 3 * TX_FEE - 2 * proof_bond() + bond() / 2
    );
    assert_eq!(balance(&chain, &worker()), WORKER_FUNDS - bond() - TX_FEE);
    assert_coins_conserved(&chain);
}

#[test]
fn proven_proof_reopens_the_job_and_a_second_worker_is_paid() {
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 0);
    let (mut chain, job) = chain_with_pending(&lazy);
    let poster = balance(&chain, &faucet());
    chain
        .mine(vec![fraud_proof(
            &challenger(),
            0,
            job,
            segment_claim(&lazy, 1),
        )])
        .unwrap();
    assert_eq!(status(&chain, &job), JobStatus::Open);
    let tx = submit(&second_worker(), 0, job);
    let txid = tx.id().unwrap();
    chain.mine(vec![tx]).unwrap();
    let settles_at = Height(4 + window());
    mine_to(&mut chain, settles_at.0 - 1);
    assert!(chain.state.job(&job).unwrap().is_pending());
    chain.mine(vec![]).unwrap();
    assert_eq!(
        status(&chain, &job),
        JobStatus::Fulfilled {
            worker: addr(&second_worker()),
            result: honest_result(&job, &addr(&second_worker()), &spec()),
            tx: txid,
            height: settles_at,
            submitted_at: Height(4),
            bond: spec().bond,
        }
    );
    assert_eq!(
        balance(&chain, &second_worker()),
        WORKER_FUNDS - TX_FEE + BOUNTY
    );
    assert_eq!(balance(&chain, &worker()), WORKER_FUNDS - bond() - TX_FEE);
    assert_eq!(
        balance(&chain, &challenger()),
        CHALLENGER_FUNDS - TX_FEE + bond() / 2
    );
    assert_eq!(burned(&chain), bond() - bond() / 2);
    assert_eq!(
        balance(&chain, &faucet()),
        poster,
        "the bounty was paid once"
    );
    assert_coins_conserved(&chain);
}

#[test]
fn an_odd_bond_burns_the_odd_unit() {
    let mut odd = spec();
    odd.bond = Amount(bond() + 1);
    let post = post_job_with(&faucet(), 0, odd.clone(), BOUNTY, EXPIRES_AT);
    let job = JobId::from(post.id().unwrap());
    let mut chain = TestChain::new();
    chain
        .mine(vec![
            post,
            transfer(&faucet(), 1, addr(&worker()), WORKER_FUNDS, TRANSFER_FEE),
            transfer(
                &faucet(),
                2,
                addr(&challenger()),
                CHALLENGER_FUNDS,
                TRANSFER_FEE,
            ),
        ])
        .unwrap();
    let lazy = lazy_leaves(&job, &addr(&worker()), &odd, 0);
    let result = result_for(&odd, &lazy);
    chain
        .mine(vec![submit_leaves(&worker(), 0, job, result, lazy.clone())])
        .unwrap();
    chain
        .mine(vec![fraud_proof(
            &challenger(),
            0,
            job,
            segment_claim(&lazy, 1),
        )])
        .unwrap();
    assert_eq!(status(&chain, &job), JobStatus::Open);
    assert_eq!(
        balance(&chain, &challenger()),
        CHALLENGER_FUNDS - TX_FEE + bond() / 2
    );
    assert_eq!(burned(&chain), bond() / 2 + 1);
    assert_coins_conserved(&chain);
}

#[test]
fn refuted_proofs_burn_exactly_the_challenger_bond_and_the_worker_is_still_paid() {
    let job = the_job();
    let leaves = honest(&job);
    let (mut chain, job) = chain_with_pending(&leaves);
    let c = challenger();
    let claims = [
        FraudClaim::InitialState {
            first: opened(&leaves, 0),
        },
        segment_claim(&leaves, 1),
        segment_claim(&leaves, 5),
        final_claim(&leaves),
    ];
    assert_eq!(claims.len(), chain.params.max_block_fraud_proofs);
    let proofs = claims
        .into_iter()
        .zip(0..)
        .map(|(claim, nonce)| fraud_proof(&c, nonce, job, claim))
        .collect();
    chain.mine(proofs).unwrap();
    assert_eq!(burned(&chain), 4 * proof_bond());
    assert_eq!(
        balance(&chain, &c),
        CHALLENGER_FUNDS - 4 * (proof_bond() + TX_FEE)
    );
    assert!(chain.state.job(&job).unwrap().is_pending());
    let refuted = ChallengeOutcome::Refuted;
    assert_eq!(
        outcomes(&chain, &job),
        vec![(0, refuted), (1, refuted), (5, refuted), (9, refuted)]
    );
    assert_eq!(balance(&chain, &worker()), WORKER_FUNDS - bond() - TX_FEE);
    mine_to(&mut chain, 2 + window());
    assert!(matches!(status(&chain, &job), JobStatus::Fulfilled { .. }));
    assert_eq!(balance(&chain, &worker()), WORKER_FUNDS - TX_FEE + BOUNTY);
    assert_eq!(burned(&chain), 4 * proof_bond());
    assert_coins_conserved(&chain);
}

#[test]
fn job_reopened_after_its_expiry_expires_on_the_next_block() {
    let (mut chain, job) = chain_with_job();
    let poster = balance(&chain, &faucet());
    mine_to(&mut chain, 7);
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 0);
    let result = result_for(&spec(), &lazy);
    chain
        .mine(vec![submit_leaves(&worker(), 0, job, result, lazy.clone())])
        .unwrap();
    // A pending result holds the job past its expiry height.
    mine_to(&mut chain, EXPIRES_AT);
    assert!(chain.state.job(&job).unwrap().is_pending());
    chain
        .mine(vec![fraud_proof(
            &challenger(),
            0,
            job,
            segment_claim(&lazy, 1),
        )])
        .unwrap();
    assert_eq!(status(&chain, &job), JobStatus::Open);
    let err = chain
        .template(vec![submit(&second_worker(), 0, job)])
        .unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::Expired {
            job,
            expires_at: Height(EXPIRES_AT)
        }
    );
    chain.mine(vec![]).unwrap();
    assert_eq!(
        status(&chain, &job),
        JobStatus::Expired {
            height: Height(EXPIRES_AT + 2)
        }
    );
    assert_eq!(balance(&chain, &faucet()), poster + BOUNTY);
    assert_eq!(chain.state.job(&job).unwrap().escrowed(), Some(0));
    assert_coins_conserved(&chain);
}

#[test]
fn fraud_proof_against_a_job_without_a_pending_result_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let leaves = honest(&job);
    let c = challenger();
    let err = chain
        .template(vec![fraud_proof(&c, 0, job, final_claim(&leaves))])
        .unwrap_err();
    assert_eq!(job_error(err), JobError::NotPending { job });
    let missing = JobId([0xee; 32]);
    let err = chain
        .template(vec![fraud_proof(&c, 0, missing, final_claim(&leaves))])
        .unwrap_err();
    assert_eq!(job_error(err), JobError::UnknownJob(missing));
    chain.mine(vec![submit(&worker(), 0, job)]).unwrap();
    // The window's last block still takes a proof; the block at
    // `settles_at` pays the result before any transaction runs.
    let settles_at = 2 + window();
    mine_to(&mut chain, settles_at - 2);
    chain
        .template(vec![fraud_proof(&c, 0, job, final_claim(&leaves))])
        .unwrap();
    chain.mine(vec![]).unwrap();
    assert_eq!(chain.height(), Height(settles_at - 1));
    let err = chain
        .template(vec![fraud_proof(&c, 0, job, final_claim(&leaves))])
        .unwrap_err();
    assert_eq!(job_error(err), JobError::NotPending { job });
}

#[test]
fn fraud_proof_whose_sender_cannot_escrow_the_bond_is_rejected() {
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 0);
    let (mut chain, job) = chain_with_pending(&lazy);
    let poor = key(61);
    let funds = proof_bond() + TX_FEE - 1;
    let nonce = faucet_nonce(&chain);
    chain
        .mine(vec![transfer(
            &faucet(),
            nonce,
            addr(&poor),
            funds,
            TRANSFER_FEE,
        )])
        .unwrap();
    let err = chain
        .template(vec![fraud_proof(&poor, 0, job, segment_claim(&lazy, 1))])
        .unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::BondUnaffordable {
            address: addr(&poor),
            bond: chain.params.fraud_proof_bond,
            fee: Amount(TX_FEE),
            balance: Amount(funds),
        }
    );
    assert_eq!(chain.verifier.replays.get(), 0);
}

#[test]
fn fraud_proof_outside_the_segments_is_rejected() {
    let job = the_job();
    let leaves = honest(&job);
    let (mut chain, job) = chain_with_pending(&leaves);
    let segments = spec().segments;
    for (index, prev, leaf) in [
        (0, 0, 0),
        (segments + 1, segments, segments),
        (u32::MAX, 7, 8),
    ] {
        let claim = FraudClaim::Segment {
            index,
            prev: opened(&leaves, prev),
            leaf: opened(&leaves, leaf),
        };
        let err = chain
            .template(vec![fraud_proof(&challenger(), 0, job, claim)])
            .unwrap_err();
        assert_eq!(job_error(err), JobError::SegmentIndex { index, segments });
    }
    assert_eq!(chain.verifier.replays.get(), 0);
}

#[test]
fn fraud_proof_whose_leaf_does_not_open_the_root_is_rejected() {
    let job = the_job();
    let leaves = honest(&job);
    let (mut chain, job) = chain_with_pending(&leaves);
    // Another worker's tree.
    let other = honest_leaves(&job, &addr(&second_worker()), &spec());
    // A changed leaf under its honest path.
    let mut changed = opened(&leaves, 0);
    changed.leaf.loss = F32Bits::from_f32(1.0);
    // The right leaf with the path of its neighbour.
    let neighbours_path = OpenedLeaf {
        leaf: leaves[4],
        path: opened(&leaves, 5).path,
    };
    // A path with one node too many, within the length bound.
    let mut padded = opened(&leaves, 8);
    padded.path.push(Digest([1; 32]));
    assert!(padded.path.len() <= MAX_PATH_LEN);
    let cases = [
        (final_claim(&other), 8),
        (FraudClaim::InitialState { first: changed }, 0),
        (
            FraudClaim::Segment {
                index: 4,
                prev: opened(&leaves, 3),
                leaf: neighbours_path,
            },
            4,
        ),
        (
            FraudClaim::Segment {
                index: 4,
                prev: opened(&leaves, 2),
                leaf: opened(&leaves, 4),
            },
            3,
        ),
        (FraudClaim::Final { last: padded }, 8),
    ];
    for (claim, index) in cases {
        let err = chain
            .template(vec![fraud_proof(&challenger(), 0, job, claim)])
            .unwrap_err();
        assert!(!err.is_node_local(), "{err}");
        assert_eq!(job_error(err), JobError::BadLeafPath { index });
    }
    assert_eq!(
        chain.verifier.replays.get(),
        0,
        "no replay before the paths"
    );
}

#[test]
fn fraud_proof_with_an_overlong_path_is_rejected() {
    let job = the_job();
    let leaves = honest(&job);
    let (mut chain, job) = chain_with_pending(&leaves);
    let mut first = opened(&leaves, 0);
    first.path = vec![Digest([1; 32]); MAX_PATH_LEN + 1];
    let too_long = JobError::PathTooLong {
        len: MAX_PATH_LEN + 1,
        max: MAX_PATH_LEN,
    };
    let proof = fraud_proof(
        &challenger(),
        0,
        job,
        FraudClaim::InitialState {
            first: first.clone(),
        },
    );
    assert_eq!(
        check_tx_stateless(&proof, &chain.params).unwrap_err(),
        TxError::Job(too_long.clone())
    );
    // Either opened leaf of a segment claim.
    let segment = FraudClaim::Segment {
        index: 1,
        prev: opened(&leaves, 0),
        leaf: OpenedLeaf {
            leaf: leaves[1],
            path: first.path,
        },
    };
    let err = chain
        .template(vec![fraud_proof(&challenger(), 0, job, segment)])
        .unwrap_err();
    assert_eq!(job_error(err), too_long);
}

#[test]
fn more_fraud_proofs_than_a_block_may_carry_are_rejected() {
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 0);
    let (mut chain, job) = chain_with_pending(&lazy);
    let max = chain.params.max_block_fraud_proofs;
    // Refuted claims, so that none closes the job for the next.
    let proofs: Vec<_> = (0..=max as u64)
        .map(|nonce| fraud_proof(&challenger(), nonce, job, final_claim(&lazy)))
        .collect();
    let err = chain.template(proofs.clone()).unwrap_err();
    assert_eq!(
        err,
        BlockError::TooManyFraudProofs {
            count: max + 1,
            max
        }
    );
    assert_eq!(chain.verifier.replays.get(), 0, "counted before any replay");
    chain.template(proofs[..max].to_vec()).unwrap();
}

#[test]
fn cheap_checks_run_before_any_replay() {
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 0);
    let (mut chain, job) = chain_with_pending(&lazy);
    assert_eq!(chain.verifier.replays.get(), 0, "admission replays nothing");
    // A provable claim whose path is wrong: refused without a replay.
    let mut leaf = opened(&lazy, 1);
    leaf.path[0].0[0] ^= 1;
    let claim = FraudClaim::Segment {
        index: 1,
        prev: opened(&lazy, 0),
        leaf,
    };
    let err = chain
        .template(vec![fraud_proof(&challenger(), 0, job, claim)])
        .unwrap_err();
    assert_eq!(job_error(err), JobError::BadLeafPath { index: 1 });
    assert_eq!(chain.verifier.replays.get(), 0);
    // With its path right, the claim is judged: one final-state check.
    chain
        .template(vec![fraud_proof(&challenger(), 0, job, final_claim(&lazy))])
        .unwrap();
    assert_eq!(chain.verifier.replays.get(), 1);
}

#[test]
fn fraud_proof_that_cannot_be_judged_yet_is_node_local_and_changes_nothing() {
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 3);
    let (mut chain, job) = chain_with_pending(&lazy);
    let proof = fraud_proof(&challenger(), 0, job, segment_claim(&lazy, 4));
    let mut block = chain.template(vec![proof]).unwrap();
    TestChain::solve(&mut block);
    // The state the challenger serves has not reached this node.
    chain.verifier.missing = Some(lazy[3].state);
    let before = chain.state.clone();
    let err = chain.connect(block.clone()).unwrap_err();
    assert!(err.is_node_local(), "{err}");
    assert_eq!(
        job_error(err),
        JobError::CannotJudge {
            job,
            reason: VerifyError::DataUnavailable(lazy[3].state),
        }
    );
    assert_eq!(chain.state, before);
    assert_eq!(chain.height(), Height(2));
    // Once it has, the same block is valid.
    chain.verifier.missing = None;
    chain.connect(block).unwrap();
    assert_eq!(status(&chain, &job), JobStatus::Open);
    // Without the dataset no claim can be judged, the initial state's
    // neither.
    let (mut chain, job) = chain_with_pending(&lazy);
    chain.verifier.missing = Some(spec().dataset.digest);
    let first = FraudClaim::InitialState {
        first: opened(&lazy, 0),
    };
    let err = chain
        .template(vec![fraud_proof(&challenger(), 0, job, first)])
        .unwrap_err();
    assert!(err.is_node_local(), "{err}");
    assert_eq!(
        job_error(err),
        JobError::CannotJudge {
            job,
            reason: VerifyError::DataUnavailable(spec().dataset.digest),
        }
    );
}

#[test]
fn deferred_replays_judge_a_fraud_proof_as_refuted() {
    let job = the_job();
    let lazy = lazy_leaves(&job, &addr(&worker()), &spec(), 3);
    let (chain, job) = chain_with_pending(&lazy);
    let proof = fraud_proof(&challenger(), 0, job, segment_claim(&lazy, 4));
    let txid = check_tx_stateless(&proof, &chain.params).unwrap();
    let height = chain.height().next().unwrap();
    let judged = |verifier: &dyn SegmentVerifier| {
        let mut state = chain.state.clone();
        let mut journal = Journal::default();
        let fee = apply_transaction(
            &mut state,
            &mut journal,
            &proof,
            txid,
            height,
            &chain.params,
            verifier,
        )
        .unwrap();
        assert_eq!(fee, Amount(TX_FEE));
        state
    };
    let deferred = judged(&DeferReplays);
    let record = deferred.job(&job).unwrap();
    assert!(record.is_pending());
    assert_eq!(
        record.challenges.last().unwrap().outcome,
        ChallengeOutcome::Refuted
    );
    assert_eq!(
        deferred.account(&BURN_ADDRESS).balance.0 - chain.state.account(&BURN_ADDRESS).balance.0,
        chain.params.fraud_proof_bond.0
    );
    // The same proof, replayed, is proven.
    let replayed = judged(&chain.verifier);
    let record = replayed.job(&job).unwrap();
    assert!(record.is_open());
    assert_eq!(
        record.challenges.last().unwrap().outcome,
        ChallengeOutcome::Proven
    );
}

#[test]
fn job_with_invalid_spec_or_expiry_is_rejected() {
    let mut chain = TestChain::new();
    let limits = chain.params.job_limits;
    let mut infinite = spec();
    infinite.l2 = F32Bits::from_f32(f32::INFINITY);
    let mut cheap = spec();
    cheap.bond = Amount(limits.min_bond.0 - 1);
    // 105 training rows in batches of 16 for 20 epochs: 140 steps.
    let mut fine = spec();
    fine.segments = MAX_SEGMENTS;
    let mut coarse = spec();
    coarse.segments = 7;
    let mut hasty = spec();
    hasty.challenge_window = limits.min_challenge_window - 1;
    let cases = [
        (
            infinite,
            JobSpecError::NotFinite {
                field: "l2",
                value: F32Bits::from_f32(f32::INFINITY),
            },
        ),
        (
            cheap,
            JobSpecError::BondTooSmall {
                bond: Amount(limits.min_bond.0 - 1),
                min: limits.min_bond,
            },
        ),
        (
            fine,
            JobSpecError::TooFewSteps {
                steps: 140,
                segments: MAX_SEGMENTS,
            },
        ),
        (
            coarse,
            JobSpecError::Bound {
                field: "segments",
                value: 7,
                min: 8,
                max: u64::from(MAX_SEGMENTS),
            },
        ),
        (
            hasty,
            JobSpecError::Bound {
                field: "challenge window",
                value: u64::from(limits.min_challenge_window - 1),
                min: u64::from(limits.min_challenge_window),
                max: u64::from(limits.max_challenge_window),
            },
        ),
    ];
    for (bad, expected) in cases {
        let err = chain
            .template(vec![post_job_with(&faucet(), 0, bad, 100, 10)])
            .unwrap_err();
        assert_eq!(job_error(err), JobError::InvalidSpec(expected));
    }
    // The smallest bond and window are fine.
    let mut least = spec();
    least.bond = limits.min_bond;
    least.challenge_window = limits.min_challenge_window;
    chain
        .template(vec![post_job_with(&faucet(), 0, least, 100, 10)])
        .unwrap();
    let err = chain
        .template(vec![post_job(&faucet(), 0, 100, 1)])
        .unwrap_err();
    assert!(matches!(job_error(err), JobError::BadExpiry { .. }));
}

// Header fields and block and transaction limits.

#[test]
fn header_with_another_version_is_rejected() {
    let mut chain = TestChain::new();
    let mut block = chain.template(vec![]).unwrap();
    block.header.version = chain.params.block_version + 1;
    TestChain::solve(&mut block);
    let err = chain.connect(block.clone()).unwrap_err();
    assert_eq!(
        err,
        BlockError::Header(HeaderError::Version {
            got: chain.params.block_version + 1,
            expected: chain.params.block_version,
        })
    );
    // The same block with the chain's version connects.
    block.header.version = chain.params.block_version;
    TestChain::solve(&mut block);
    chain.connect(block).unwrap();
}

#[test]
fn header_on_another_parent_is_rejected() {
    let mut chain = TestChain::new();
    chain.mine(vec![]).unwrap();
    let genesis = chain.blocks[0].hash();
    let tip = chain.tip().hash();
    // A block for height 2 that names genesis, not block 1, as its parent.
    let mut block = chain.template(vec![]).unwrap();
    block.header.prev = genesis;
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert_eq!(
        err,
        BlockError::Header(HeaderError::WrongParent {
            expected: tip,
            got: genesis,
        })
    );
    assert_eq!(chain.height(), Height(1));
}

/// A `PostJob` from the faucet whose spec has `layers` hidden layers: four
/// encoded bytes each, so its size can be set to within four bytes.
fn post_job_with_layers(layers: usize) -> protocol::SignedTx {
    let mut wide = spec();
    wide.model.hidden = vec![16; layers];
    post_job_with(&faucet(), 0, wide, 100, 10)
}

#[test]
fn transaction_over_the_size_limit_is_rejected() {
    let mut chain = TestChain::new();
    let max = chain.params.max_tx_bytes;
    // The most layers that still fit, and one more.
    let base = post_job_with_layers(1).encoded_len().unwrap();
    let fits = 1 + (max - base) / 4;
    let at_limit = post_job_with_layers(fits);
    let over = post_job_with_layers(fits + 1);
    let size = over.encoded_len().unwrap();
    assert!(at_limit.encoded_len().unwrap() <= max && size > max);

    let err = chain.template(vec![over.clone()]).unwrap_err();
    assert_eq!(tx_error(err), TxError::TooLarge { size, max });
    assert_eq!(
        check_tx_stateless(&over, &chain.params),
        Err(TxError::TooLarge { size, max })
    );
    // At the limit the size check passes; the spec check then refuses that
    // many layers, which shows the size was not what failed.
    let err = chain.template(vec![at_limit]).unwrap_err();
    assert!(
        matches!(
            job_error(err),
            JobError::InvalidSpec(JobSpecError::Bound {
                field: "hidden layers",
                ..
            })
        ),
        "expected the spec check to be reached"
    );
}

#[test]
fn block_with_too_many_transactions_is_rejected() {
    let mut chain = TestChain::new();
    chain.params.max_block_txs = 3;
    let to = addr(&key(1));
    let txs: Vec<_> = (0..3)
        .map(|nonce| transfer(&faucet(), nonce, to, 100, TRANSFER_FEE))
        .collect();
    // A coinbase and three transfers: one over the bound.
    let mut block = chain.template(txs.clone()).unwrap();
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert_eq!(err, BlockError::TooManyTxs { count: 4, max: 3 });
    assert_eq!(chain.height(), Height::GENESIS);
    // A coinbase and two transfers: at the bound, connected.
    chain.mine(txs[..2].to_vec()).unwrap();
    assert_eq!(chain.state.account(&to).balance, Amount(200));
}

#[test]
fn block_over_the_size_limit_is_rejected() {
    let mut chain = TestChain::new();
    let txs = vec![
        transfer(&faucet(), 0, addr(&key(1)), 100, TRANSFER_FEE),
        transfer(&faucet(), 1, addr(&key(2)), 100, TRANSFER_FEE),
    ];
    let mut block = chain.template(txs).unwrap();
    TestChain::solve(&mut block);
    let size = block.encode().unwrap().len();
    chain.params.max_block_bytes = size - 1;
    let err = chain.connect(block.clone()).unwrap_err();
    assert_eq!(
        err,
        BlockError::TooLarge {
            size,
            max: size - 1
        }
    );
    assert_eq!(chain.height(), Height::GENESIS);
    // Exactly at the bound is fine.
    chain.params.max_block_bytes = size;
    chain.connect(block).unwrap();
}

#[test]
fn job_with_zero_bounty_is_rejected() {
    let mut chain = TestChain::new();
    let zero = post_job(&faucet(), 0, 0, 10);
    assert_eq!(
        check_tx_stateless(&zero, &chain.params),
        Err(TxError::Job(JobError::ZeroBounty))
    );
    let err = chain.template(vec![zero]).unwrap_err();
    assert_eq!(job_error(err), JobError::ZeroBounty);
    // The smallest positive bounty is posted.
    let one = post_job(&faucet(), 0, 1, 10);
    let job = JobId::from(one.id().unwrap());
    chain.mine(vec![one]).unwrap();
    assert_eq!(chain.state.job(&job).unwrap().bounty, Amount(1));
}
