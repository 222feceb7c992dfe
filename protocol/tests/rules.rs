//! One rejection test per consensus rule, each asserting the specific error
//! variant, plus the job contract's happy paths (bounty paid, expiry
//! refunded) and the guarantee that a rejected block leaves the state as it
//! was.
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
use protocol::job::AcceptanceError;
use protocol::tx::SignatureError;
use protocol::validation::{check_header, BlockError, HeaderError, JobError, TxError};
use protocol::{
    Amount, BlockHash, ChainParams, F32Bits, Height, JobId, JobStatus, MerkleRoot, StateRoot,
    TestMetric, Transaction,
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

/// A chain where the faucet has posted one job (bounty 1000, expiring at
/// height 10) in block 1; returns the chain and the job id.
fn chain_with_job() -> (TestChain, JobId) {
    let mut chain = TestChain::new();
    let post = post_job(&faucet(), 0, 1000, 10);
    let job = JobId::from(post.id().unwrap());
    chain.mine(vec![post]).unwrap();
    (chain, job)
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
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 100, 1)])
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
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 100, 1)])
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
    let mut tx = transfer(&faucet(), 0, addr(&key(1)), 100, 1);
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
        fee: Amount(1),
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
    let mut tx = transfer(&faucet(), 0, addr(&key(1)), 100, 1);
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
    let tx = transfer(&faucet(), 0, addr(&key(1)), 100, 1);
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
        .mine(vec![transfer(&faucet(), 0, addr(&key(1)), 100, 1)])
        .unwrap();
    let err = chain
        .template(vec![transfer(&key(1), 0, addr(&key(2)), 100, 1)])
        .unwrap_err();
    assert!(matches!(
        tx_error(err),
        TxError::InsufficientBalance {
            needed: Amount(101),
            available: Amount(100),
            ..
        }
    ));
}

#[test]
fn double_spend_inside_one_block_is_rejected() {
    let mut chain = TestChain::new();
    chain
        .mine(vec![transfer(&faucet(), 0, addr(&key(1)), 100, 1)])
        .unwrap();
    // The same transaction twice.
    let spend = transfer(&key(1), 0, addr(&key(2)), 90, 1);
    let mut block = chain.template(vec![spend.clone()]).unwrap();
    block.txs.push(Transaction::Signed(spend.clone()));
    let ids: Vec<_> = block.txs.iter().map(|t| t.id().unwrap()).collect();
    block.header.merkle_root = protocol::merkle_root(&ids);
    TestChain::solve(&mut block);
    let err = chain.connect(block).unwrap_err();
    assert_eq!(err, BlockError::DuplicateTx(spend.id().unwrap()));
    // Two different spends of the same coins, one nonce.
    let other = transfer(&key(1), 0, addr(&key(3)), 90, 1);
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
    // Two spends in nonce order that together exceed the balance.
    let second = transfer(&key(1), 1, addr(&key(3)), 9, 1);
    let err = chain.template(vec![spend, second]).unwrap_err();
    assert!(matches!(tx_error(err), TxError::InsufficientBalance { .. }));
}

#[test]
fn coinbase_above_subsidy_plus_fees_is_rejected() {
    let mut chain = TestChain::new();
    let mut block = chain
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 100, 7)])
        .unwrap();
    let max = chain.params.subsidy(Height(1)).0 + 7;
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
fn posting_escrows_the_bounty_and_a_valid_result_pays_it() {
    let (mut chain, job) = chain_with_job();
    let faucet_before = chain.state.account(&addr(&faucet()));
    assert_eq!(chain.state.job(&job).unwrap().status, JobStatus::Open);
    let worker = key(50);
    let result = honest_result(&job, &addr(&worker), &spec());
    chain.mine(vec![submit(&worker, 0, job, result)]).unwrap();
    let account = chain.state.account(&addr(&worker));
    assert_eq!(account.balance, Amount(1000 - 5), "bounty minus the fee");
    assert_eq!(account.nonce, 1);
    assert!(matches!(
        chain.state.job(&job).unwrap().status,
        JobStatus::Fulfilled { worker: w, height: Height(2), .. } if w == addr(&worker)
    ));
    assert_eq!(chain.state.account(&addr(&faucet())), faucet_before);
}

#[test]
fn result_for_an_unknown_job_is_rejected() {
    let (mut chain, _) = chain_with_job();
    let missing = JobId([0xee; 32]);
    let worker = key(50);
    let result = honest_result(&missing, &addr(&worker), &spec());
    let err = chain
        .template(vec![submit(&worker, 0, missing, result)])
        .unwrap_err();
    assert_eq!(job_error(err), JobError::UnknownJob(missing));
}

#[test]
fn result_for_an_expired_job_is_rejected_and_the_poster_refunded() {
    let (mut chain, job) = chain_with_job();
    let poster_before = chain.state.account(&addr(&faucet())).balance;
    while chain.height() < Height(9) {
        chain.mine(vec![]).unwrap();
    }
    assert_eq!(chain.state.job(&job).unwrap().status, JobStatus::Open);
    chain.mine(vec![]).unwrap(); // height 10: expiry
    assert_eq!(
        chain.state.job(&job).unwrap().status,
        JobStatus::Expired { height: Height(10) }
    );
    assert_eq!(
        chain.state.account(&addr(&faucet())).balance,
        Amount(poster_before.0 + 1000),
        "refunded exactly the bounty"
    );
    let worker = key(50);
    let result = honest_result(&job, &addr(&worker), &spec());
    let err = chain
        .template(vec![submit(&worker, 0, job, result)])
        .unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::Expired {
            job,
            expires_at: Height(10)
        }
    );
}

#[test]
fn result_below_the_threshold_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let worker = key(50);
    let mut result = honest_result(&job, &addr(&worker), &spec());
    result.metric = TestMetric::Accuracy {
        correct: 20,
        total: 30,
    };
    let err = chain
        .template(vec![submit(&worker, 0, job, result)])
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
fn result_whose_replay_digest_differs_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let worker = key(50);
    let mut result = honest_result(&job, &addr(&worker), &spec());
    result.weights.0[0] ^= 0x80;
    let err = chain
        .template(vec![submit(&worker, 0, job, result)])
        .unwrap_err();
    assert!(matches!(
        job_error(err),
        JobError::ResultRejected {
            reason: protocol::VerifyError::WeightsMismatch { .. },
            ..
        }
    ));
}

#[test]
fn result_copied_from_another_worker_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let honest = key(50);
    let copier = key(51);
    let result = honest_result(&job, &addr(&honest), &spec());
    let err = chain
        .template(vec![submit(&copier, 0, job, result)])
        .unwrap_err();
    assert!(matches!(job_error(err), JobError::ResultRejected { .. }));
}

#[test]
fn inflated_metric_is_rejected_by_the_replay() {
    let (mut chain, job) = chain_with_job();
    let worker = key(50);
    let mut result = honest_result(&job, &addr(&worker), &spec());
    result.metric = TestMetric::Accuracy {
        correct: 30,
        total: 30,
    };
    let err = chain
        .template(vec![submit(&worker, 0, job, result)])
        .unwrap_err();
    assert!(matches!(
        job_error(err),
        JobError::ResultRejected {
            reason: protocol::VerifyError::MetricMismatch { .. },
            ..
        }
    ));
}

#[test]
fn second_result_for_a_fulfilled_job_is_rejected() {
    let (mut chain, job) = chain_with_job();
    let first = key(50);
    let second = key(51);
    chain
        .mine(vec![submit(
            &first,
            0,
            job,
            honest_result(&job, &addr(&first), &spec()),
        )])
        .unwrap();
    let late = submit(
        &second,
        0,
        job,
        honest_result(&job, &addr(&second), &spec()),
    );
    let err = chain.template(vec![late.clone()]).unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::AlreadyFulfilled {
            job,
            height: Height(2)
        }
    );
    // Two results in the same block: the second loses.
    let (mut chain, job) = chain_with_job();
    let a = submit(&first, 0, job, honest_result(&job, &addr(&first), &spec()));
    let err = chain.template(vec![a, late]).unwrap_err();
    assert!(matches!(job_error(err), JobError::AlreadyFulfilled { .. }));
}

#[test]
fn bounty_the_poster_cannot_pay_is_rejected() {
    let mut chain = TestChain::new();
    chain
        .mine(vec![transfer(&faucet(), 0, addr(&key(1)), 500, 1)])
        .unwrap();
    let err = chain
        .template(vec![post_job(&key(1), 0, 495, 10)])
        .unwrap_err();
    assert_eq!(
        job_error(err),
        JobError::BountyUnaffordable {
            bounty: Amount(495),
            fee: Amount(10),
            balance: Amount(500)
        }
    );
}

#[test]
fn job_with_invalid_spec_or_expiry_is_rejected() {
    let mut chain = TestChain::new();
    let mut tx = post_job(&faucet(), 0, 100, 10);
    if let protocol::TxKind::PostJob { spec, .. } = &mut tx.body.kind {
        spec.l2 = F32Bits::from_f32(f32::INFINITY);
    }
    let tx = tx.body.sign(&faucet(), chain.params.chain_id).unwrap();
    let err = chain.template(vec![tx]).unwrap_err();
    assert!(matches!(job_error(err), JobError::InvalidSpec(_)));
    let err = chain
        .template(vec![post_job(&faucet(), 0, 100, 1)])
        .unwrap_err();
    assert!(matches!(job_error(err), JobError::BadExpiry { .. }));
}

#[test]
fn results_over_the_block_training_cost_are_rejected() {
    let mut params = ChainParams::regtest();
    params.max_block_training_cost = spec().training_cost().unwrap() - 1;
    let mut chain = TestChain::with_params(params);
    let post = post_job(&faucet(), 0, 1000, 10);
    let job = JobId::from(post.id().unwrap());
    chain.mine(vec![post]).unwrap();
    let worker = key(50);
    let err = chain
        .template(vec![submit(
            &worker,
            0,
            job,
            honest_result(&job, &addr(&worker), &spec()),
        )])
        .unwrap_err();
    assert!(
        matches!(err, BlockError::TrainingCostTooHigh { .. }),
        "{err}"
    );
}

#[test]
fn fee_below_minimum_and_zero_transfer_are_rejected() {
    let mut chain = TestChain::new();
    let err = chain
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 100, 0)])
        .unwrap_err();
    assert!(matches!(tx_error(err), TxError::FeeTooLow { .. }));
    let err = chain
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 0, 1)])
        .unwrap_err();
    assert_eq!(tx_error(err), TxError::ZeroAmount);
}
