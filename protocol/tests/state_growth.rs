//! What it costs to grow the live state: fees priced per byte, a burned
//! charge for every new entry (account or job), and settled jobs pruned
//! after their retention. Each test prints the figure it pins down.
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
use protocol::validation::{BlockError, JobError, TxError};
use protocol::{Amount, ChainParams, Height, JobId, JobStatus, TxBody, TxKind, BURN_ADDRESS};

fn tx_error(err: BlockError) -> TxError {
    match err {
        BlockError::Tx { source, .. } => *source,
        other => panic!("expected a transaction error, got {other}"),
    }
}

fn burned(chain: &TestChain) -> u64 {
    chain.state.account(&BURN_ADDRESS).balance.0
}

fn balance(chain: &TestChain, address: &protocol::Address) -> u64 {
    chain.state.account(address).balance.0
}

/// The least fee the regtest chain takes for `body` once signed.
fn least_fee(body: &TxBody) -> u64 {
    body.min_fee_at(ChainParams::regtest().min_fee_rate)
        .unwrap()
        .unwrap()
        .0
}

fn transfer_body(to: protocol::Address, amount: u64) -> TxBody {
    TxBody {
        from: protocol::Address::ZERO,
        nonce: 0,
        fee: Amount::ZERO,
        kind: TxKind::Transfer {
            to,
            amount: Amount(amount),
        },
    }
}

#[test]
fn the_minimum_fee_is_priced_per_encoded_byte() {
    let mut chain = TestChain::new();
    let params = chain.params.clone();
    let least = least_fee(&transfer_body(addr(&key(1)), 100));
    let exact = transfer(&faucet(), 0, addr(&key(1)), 100, least);
    let size = exact.encoded_len().unwrap();
    assert_eq!(least, params.min_fee_rate.0 * size as u64);
    // One unit short is refused, naming the size and the rate.
    let err = chain
        .template(vec![transfer(&faucet(), 0, addr(&key(1)), 100, least - 1)])
        .unwrap_err();
    assert_eq!(
        tx_error(err),
        TxError::FeeTooLow {
            fee: Amount(least - 1),
            min: Amount(least),
            size,
            rate: params.min_fee_rate,
        }
    );
    // A larger transaction paying a transfer's minimum is refused too.
    let mut post = TxBody {
        from: protocol::Address::ZERO,
        nonce: 1,
        fee: Amount(least),
        kind: TxKind::PostJob {
            spec: spec(),
            bounty: Amount(1_000),
            expires_at: Height(10),
        },
    };
    let post_least = least_fee(&post);
    assert!(post_least > least);
    let signed = post.clone().sign(&faucet(), params.chain_id).unwrap();
    let err = chain.template(vec![signed]).unwrap_err();
    assert!(
        matches!(tx_error(err), TxError::FeeTooLow { min, .. } if min == Amount(post_least)),
        "a job pays for its own bytes"
    );
    post.fee = Amount(post_least);
    let signed = post.sign(&faucet(), params.chain_id).unwrap();
    chain.mine(vec![exact, signed]).unwrap();
    println!(
        "minimum fee: {} a byte; a transfer ({size} bytes) pays at least {least}, a job post at least {post_least}",
        params.min_fee_rate
    );
}

#[test]
fn a_transfer_creating_an_account_burns_the_entry_charge_once() {
    let mut chain = TestChain::new();
    let charge = chain.params.entry_charge.0;
    let fee = least_fee(&transfer_body(addr(&key(1)), 500));
    let faucet_before = balance(&chain, &addr(&faucet()));
    chain
        .mine(vec![transfer(&faucet(), 0, addr(&key(1)), 500, fee)])
        .unwrap();
    assert_eq!(
        faucet_before - balance(&chain, &addr(&faucet())),
        500 + fee + charge,
        "amount, fee and the entry charge"
    );
    assert_eq!(burned(&chain), charge);
    assert_eq!(balance(&chain, &addr(&key(1))), 500);
    // The account exists now: a second transfer to it pays no charge.
    chain
        .mine(vec![transfer(&faucet(), 1, addr(&key(1)), 500, fee)])
        .unwrap();
    assert_eq!(burned(&chain), charge);
    assert_eq!(balance(&chain, &addr(&key(1))), 1_000);
    // A sender that can pay amount and fee but not the charge is refused,
    // and told the whole amount it needed.
    let err = chain
        .template(vec![transfer(&key(1), 0, addr(&key(2)), 10, fee)])
        .unwrap_err();
    assert_eq!(
        tx_error(err),
        TxError::InsufficientBalance {
            address: addr(&key(1)),
            needed: Amount(10 + fee + charge),
            available: Amount(1_000),
        }
    );
    // Undo gives the charge back: the burn address is as before.
    chain.disconnect();
    chain.disconnect();
    assert_eq!(burned(&chain), 0);
    assert!(!chain.state.has_account(&addr(&key(1))));
}

#[test]
fn filling_the_state_costs_a_stated_amount_per_entry() {
    // An attacker with funds creates as many accounts as it can pay for,
    // then posts jobs. Every new entry burns the entry charge whoever mines
    // (fees may go back to an attacker that mines; the charge never does),
    // and a job's entry leaves the state once it has expired and its
    // retention has run out, while its charge stays burned.
    let mut params = ChainParams::regtest();
    params.job_retention = 3;
    let mut chain = TestChain::with_params(params.clone());
    let attacker = key(90);
    let funds = 100 * params.entry_charge.0;
    let fee = least_fee(&transfer_body(addr(&attacker), funds));
    chain
        .mine(vec![transfer(&faucet(), 0, addr(&attacker), funds, fee)])
        .unwrap();
    let accounts_before = chain.state.accounts().count();
    let burned_before = burned(&chain);
    let spent_before = balance(&chain, &addr(&attacker));
    const ACCOUNTS: u64 = 40;
    let per_fee = least_fee(&transfer_body(addr(&key(1)), 1));
    let txs = (0..ACCOUNTS)
        .map(|i| {
            let mut seed = [0u8; 32];
            seed[..8].copy_from_slice(&(1_000 + i).to_le_bytes());
            let victim = ed25519_dalek::SigningKey::from_bytes(&seed);
            transfer(&attacker, i, addr(&victim), 1, per_fee)
        })
        .collect();
    chain.mine(txs).unwrap();
    let created = (chain.state.accounts().count() - accounts_before) as u64;
    assert_eq!(created, ACCOUNTS);
    let spent = spent_before - balance(&chain, &addr(&attacker));
    let per_account = spent / ACCOUNTS;
    assert_eq!(spent % ACCOUNTS, 0);
    assert_eq!(per_account, params.entry_charge.0 + per_fee + 1);
    assert_eq!(
        burned(&chain) - burned_before,
        ACCOUNTS * params.entry_charge.0
    );
    println!(
        "account entry: {per_account} base units each ({} burned entry charge, {per_fee} fee, 1 sent)",
        params.entry_charge
    );

    // Jobs: each burns the charge and pays its fee; the bounty comes back
    // at expiry, and the entry is pruned `job_retention` blocks later.
    const JOBS: u64 = 5;
    let expires_at = chain.height().0 + 3;
    let posts: Vec<_> = (0..JOBS)
        .map(|i| post_job(&attacker, ACCOUNTS + i, 1, expires_at))
        .collect();
    let job_fee = posts[0].body.fee.0;
    let ids: Vec<JobId> = posts.iter().map(|p| JobId::from(p.id().unwrap())).collect();
    let before_jobs = balance(&chain, &addr(&attacker));
    chain.mine(posts).unwrap();
    assert_eq!(chain.state.jobs().count() as u64, JOBS);
    while chain.height().0 < expires_at {
        chain.mine(vec![]).unwrap();
    }
    for id in &ids {
        assert!(matches!(
            chain.state.job(id).unwrap().status,
            JobStatus::Expired { .. }
        ));
    }
    let per_job = (before_jobs - balance(&chain, &addr(&attacker))) / JOBS;
    assert_eq!(
        per_job,
        params.entry_charge.0 + job_fee,
        "the bounty was refunded"
    );
    while chain.height().0 < expires_at + params.job_retention - 1 {
        chain.mine(vec![]).unwrap();
    }
    assert_eq!(
        chain.state.jobs().count() as u64,
        JOBS,
        "kept through retention"
    );
    chain.mine(vec![]).unwrap();
    assert_eq!(
        chain.state.jobs().count(),
        0,
        "pruned once retention ran out"
    );
    println!(
        "job entry: {per_job} base units each ({} burned entry charge, {job_fee} fee; bounty refunded), \
         live at most max_job_lifetime + job_retention = {} blocks",
        params.entry_charge,
        params.max_job_lifetime + ChainParams::regtest().job_retention
    );
}

#[test]
fn a_settled_job_is_pruned_after_its_retention_and_undo_restores_it() {
    let mut params = ChainParams::regtest();
    params.job_retention = 2;
    let mut chain = TestChain::with_params(params.clone());
    let worker = key(50);
    let post = post_job(&faucet(), 0, 1_000, 50);
    let job = JobId::from(post.id().unwrap());
    chain
        .mine(vec![
            post,
            transfer(&faucet(), 1, addr(&worker), 100_000, 1_000),
        ])
        .unwrap();
    chain.mine(vec![submit(&worker, 0, job)]).unwrap();
    let settles_at = 2 + u64::from(spec().challenge_window);
    while chain.height().0 < settles_at {
        chain.mine(vec![]).unwrap();
    }
    let fulfilled = chain.state.job(&job).unwrap().clone();
    assert!(matches!(fulfilled.status, JobStatus::Fulfilled { .. }));
    chain.mine(vec![]).unwrap();
    assert!(
        chain.state.job(&job).is_some(),
        "kept one block after settling"
    );
    chain.mine(vec![]).unwrap();
    assert!(
        chain.state.job(&job).is_none(),
        "pruned at settled + retention"
    );
    // The worker was paid, and the job's history is still in the blocks:
    // pruning removed the entry, not the coins.
    assert!(balance(&chain, &addr(&worker)) > 100_000 - 10_000);
    // A result for the pruned job names it as unknown.
    let err = chain.template(vec![submit(&worker, 1, job)]).unwrap_err();
    assert_eq!(tx_error(err), TxError::Job(JobError::UnknownJob(job)));
    // Undoing the pruning block brings the entry back exactly.
    let pruned_root = chain.tip().header.state_root;
    chain.disconnect();
    assert_eq!(chain.state.job(&job), Some(&fulfilled));
    assert_ne!(chain.tip().header.state_root, pruned_root);
}

#[test]
fn an_account_proof_verifies_against_the_header_and_fails_when_tampered() {
    let mut chain = TestChain::new();
    let fee = least_fee(&transfer_body(addr(&key(1)), 5_000));
    chain
        .mine(vec![
            transfer(&faucet(), 0, addr(&key(1)), 5_000, fee),
            transfer(&faucet(), 1, addr(&key(2)), 7_000, fee),
        ])
        .unwrap();
    let root = chain.tip().header.state_root;
    let proof = chain.state.account_proof(&addr(&key(1)));
    assert_eq!(proof.account.map(|a| a.balance), Some(Amount(5_000)));
    assert!(proof.verify(&root), "a member, against the header's root");
    let mut richer = proof.clone();
    if let Some(account) = richer.account.as_mut() {
        account.balance = Amount(5_001);
    }
    assert!(!richer.verify(&root), "a tampered balance");
    let mut elsewhere = proof.clone();
    elsewhere.address = addr(&key(2));
    assert!(!elsewhere.verify(&root), "another address");
    let mut forged = proof;
    forged.account = None;
    assert!(!forged.verify(&root), "a member claimed absent");
    let absent = chain.state.account_proof(&addr(&key(3)));
    assert_eq!(absent.account, None);
    assert!(absent.verify(&root), "an absent account");
    // A proof from an earlier state does not verify against a later root.
    let old_root = chain.blocks[0].header.state_root;
    assert!(!chain.state.account_proof(&addr(&key(1))).verify(&old_root));
}
